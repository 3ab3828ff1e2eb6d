"""``manage.py clear_queue``: delete waiting (or dead-lettered) tasks of a vtasks backend.

    manage.py clear_queue                          # queued tasks of "default" (asks first)
    manage.py clear_queue --queue emails --force   # no prompt
    manage.py clear_queue --all-queues             # queued tasks of every queue
    manage.py clear_queue --failed                 # the dead-letter queue of every queue
    manage.py clear_queue --failed --queue emails  # ... of one queue

"Queued" means ready and delayed tasks; tasks a worker is running are never touched (they finish,
or return to the queue if their worker dies). Periodic schedules stay registered.
"""

from django.core.management.base import BaseCommand, CommandError

from django_vtasks.broker import BrokerError

from ._backend_option import STEALTH, add_backend_argument, backend_alias, vtasks_backend


class Command(BaseCommand):
    help = "Clear queued tasks (or failed tasks with --failed) from vtasks queues."
    stealth_options = STEALTH

    def add_arguments(self, parser):
        add_backend_argument(parser)
        parser.add_argument(
            "--queue",
            default=None,
            help="queue to clear (default: default; with --failed and no --queue: "
            "every queue's dead-letter queue)",
        )
        parser.add_argument(
            "--all-queues", action="store_true", help="clear every queue of the backend"
        )
        parser.add_argument(
            "--failed",
            action="store_true",
            help="clear failed tasks (the dead-letter queue) instead of queued ones",
        )
        parser.add_argument("--force", action="store_true", help="skip the confirmation prompt")

    def handle(self, *args, **options):
        alias = backend_alias(options)
        backend = vtasks_backend(alias)
        broker = backend.broker
        failed = options["failed"]
        what = "dead" if failed else "ready"
        label = "failed" if failed else "queued"
        try:
            if options["all_queues"] or (failed and options["queue"] is None):
                queues = broker.queues()
                scope = "all queues"
            else:
                queues = [options["queue"] or "default"]
                scope = f"queue {queues[0]!r}"
            counts = {q: self._count(broker.info(q), failed) for q in queues}
        except BrokerError as e:
            raise CommandError(f"Backend {alias!r}: {e}") from e
        total = sum(counts.values())
        where = f"on backend {alias!r} ({type(backend).__name__})"
        if total == 0:
            self.stdout.write(
                f"No {label} tasks in {'any queue' if scope == 'all queues' else scope} "
                f"{where}: nothing to clear."
            )
            return
        if not options["force"]:
            detail = ", ".join(f"{q}: {n}" for q, n in counts.items() if n)
            self.stdout.write(
                self.style.WARNING(
                    f"This will delete {total} {label} task(s) from {scope} {where} ({detail})."
                )
            )
            try:
                answer = input("Are you sure? Type 'yes' to continue: ")
            except EOFError:
                # no terminal (cron, CI, a pipe without an answer): a script must not read
                # "nothing happened" as success
                raise CommandError(
                    f"Not clearing {total} {label} task(s): no confirmation could be read "
                    "(stdin is not a terminal); pass --force to clear without asking."
                ) from None
            if answer.strip().lower() != "yes":
                raise CommandError(
                    "Operation cancelled: nothing was cleared (pass --force to "
                    "clear without asking)."
                )
        cleared = 0
        try:
            for q in queues:
                if counts[q]:
                    cleared += broker.clear(q, what)
        except BrokerError as e:
            raise CommandError(f"Backend {alias!r}: {e} ({cleared} task(s) cleared so far)") from e
        self.stdout.write(
            self.style.SUCCESS(f"Cleared {cleared} {label} task(s) from {scope} {where}.")
        )

    @staticmethod
    def _count(info: dict, failed: bool) -> int:
        if failed:
            return int(info.get("dead", 0))
        return int(info.get("ready", 0)) + int(info.get("delayed", 0))
