"""``manage.py vtasks_schedules``: the periodic schedules a broker holds, controlled at runtime.

    manage.py vtasks_schedules list              # name, queue, spec, next run, paused
    manage.py vtasks_schedules pause cleanup     # no ticks until resumed (survives restarts)
    manage.py vtasks_schedules resume cleanup    # ticks again from the next one after now
    manage.py vtasks_schedules run cleanup       # enqueue its task once, now

VTASKS_SCHEDULE stays the source of truth for which schedules exist (a ``--scheduler`` worker
registers them); pausing is runtime state kept by the broker: a paused schedule stays paused when
its settings are registered again, until it is resumed.
"""

from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError

from django_vtasks.broker import BrokerError
from django_vtasks.scheduler import broker_schedules

from ._backend_option import STEALTH, add_backend_argument, backend_alias, vtasks_backend


class Command(BaseCommand):
    help = "List, pause, resume or run now the periodic schedules of a vtasks backend."
    stealth_options = STEALTH

    def add_arguments(self, parser):
        add_backend_argument(parser)
        parser.add_argument(
            "action",
            nargs="?",
            default="list",
            choices=["list", "pause", "resume", "run"],
            help="list the schedules (the default), or pause / resume / run now the one named NAME",
        )
        parser.add_argument("name", nargs="?", help="the schedule (a key of VTASKS_SCHEDULE)")
        parser.add_argument(
            "--queue",
            default=None,
            help="the schedule's queue, when schedules of the same name exist on several queues",
        )

    def handle(self, *args, **options):
        alias = backend_alias(options)
        broker = vtasks_backend(alias).broker
        action, name = options["action"], options["name"]
        if action != "list" and not name:
            raise CommandError(f"{action} needs the schedule's NAME (see: vtasks_schedules list).")
        try:
            found = broker_schedules(broker, alias)
            if action == "list":
                self._list(found)
                return
            matches = [(q, s) for q, s in found if s.name == name and options["queue"] in (None, q)]
            if not matches:
                known = ", ".join(sorted({s.name for _, s in found})) or "none"
                raise CommandError(
                    f"No schedule {name!r} on backend {alias!r} (schedules: {known}). A "
                    "VTASKS_SCHEDULE entry exists in the broker once a --scheduler worker started."
                )
            if len(matches) > 1:
                raise CommandError(
                    f"Schedule {name!r} exists on queues {[q for q, _ in matches]}: pass --queue."
                )
            [(queue, _)] = matches
            if action == "pause":
                broker.schedule_pause(queue, name)
                self.stdout.write(self.style.SUCCESS(f"Paused schedule {name!r} on {queue!r}."))
            elif action == "resume":
                broker.schedule_resume(queue, name)
                self.stdout.write(self.style.SUCCESS(f"Resumed schedule {name!r} on {queue!r}."))
            else:
                rid = broker.schedule_run(queue, name)
                if rid is None:
                    raise CommandError(
                        f"Schedule {name!r} was removed meanwhile; nothing enqueued."
                    )
                self.stdout.write(
                    self.style.SUCCESS(f"Enqueued task {rid} from schedule {name!r} on {queue!r}.")
                )
        except BrokerError as e:
            raise CommandError(f"Backend {alias!r}: {e}") from e

    def _list(self, found) -> None:
        if not found:
            self.stdout.write("No schedules (a --scheduler worker registers VTASKS_SCHEDULE).")
            return
        for queue, s in found:
            nxt = datetime.fromtimestamp(s.next_run_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            spec = f"cron {s.spec}" if s.kind == "cron" else f"every {s.spec} ms"
            state = "paused" if s.paused else f"next {nxt} UTC"
            self.stdout.write(f"{s.name}\t{queue}\t{spec}\t{state}")
