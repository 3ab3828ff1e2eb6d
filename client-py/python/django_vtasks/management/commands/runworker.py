import argparse
import asyncio
import logging
import sys

from django.core.management.base import BaseCommand, CommandError

from django_vtasks.broker import BrokerError

from ._backend_option import STEALTH, add_backend_argument, backend_alias, vtasks_backend


class Command(BaseCommand):
    help = "Run a vtasks worker (asyncio) for a vtasks task backend."
    # only the worker's own backend is checked (below), not every app/backend at each start
    requires_system_checks = []
    stealth_options = STEALTH

    def add_arguments(self, parser):
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="tasks run at once (default VTASKS_CONCURRENCY)",
        )
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            default=None,
            help="queue to consume, in priority order; repeatable "
            "(default: VTASKS_QUEUES if set, else the backend's "
            "TASKS[...]['QUEUES'], else 'default')",
        )
        parser.add_argument(
            "--scheduler",
            action="store_true",
            help="register VTASKS_SCHEDULE (safe on any number of workers)",
        )
        parser.add_argument(
            "--id",
            dest="worker_id",
            default=None,
            help="stable worker id: a restarted worker rescues its own tasks",
        )
        add_backend_argument(parser)
        parser.add_argument(
            "--health-check-file", default=None, help="file touched while the worker makes progress"
        )
        parser.add_argument(
            "--lease", type=float, default=None, help="task lease in seconds (default VTASKS_LEASE)"
        )
        parser.add_argument(
            "--processes",
            default="1",
            help="worker processes under one supervisor: N or 'auto' (one per "
            "CPU); child i gets the id <id>-i (default 1: no supervisor)",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="serve Prometheus metrics on this port (/metrics)",
        )
        parser.add_argument(
            "--metrics-addr", default="", help="address the metrics port binds to (default all)"
        )
        # set by the supervisor on its children (django_vtasks.supervisor)
        parser.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
        parser.add_argument("--metrics-child", action="store_true", help=argparse.SUPPRESS)

    def handle(self, *args, **options):
        from django_vtasks.worker import Worker

        log = logging.getLogger("django_vtasks")
        if not log.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            log.addHandler(handler)
            log.setLevel(
                logging.DEBUG
                if options["verbosity"] >= 3
                else logging.INFO
                if options["verbosity"] >= 1
                else logging.WARNING
            )
        from django.core import checks

        alias = backend_alias(options)
        problems = vtasks_backend(alias).check()
        for problem in problems:
            self.stderr.write(
                f"{problem.id}: {problem.msg}" + (f" ({problem.hint})" if problem.hint else "")
            )
        errors = [p for p in problems if p.level >= checks.ERROR]
        if errors:
            # a worker that cannot work (no module, refused credentials, misconfiguration)
            # must not look alive to its supervisor
            raise CommandError(
                f"refusing to start the worker: task backend {alias!r} failed "
                f"{len(errors)} system check(s) ({', '.join(p.id for p in errors)}); fix the "
                "error(s) above and start it again."
            )
        from django_vtasks import supervisor

        try:
            processes = supervisor.parse_processes(options["processes"])
        except ValueError as e:
            raise CommandError(str(e)) from e
        if processes > 1 and not options["supervised"]:
            sys.exit(supervisor.from_options(processes, alias, options).run())
        try:
            worker = Worker(
                backend_alias=alias,
                queues=options["queues"],
                concurrency=options["concurrency"],
                worker_id=options["worker_id"],
                scheduler=options["scheduler"],
                health_check_file=options["health_check_file"],
                lease=options["lease"],
            )
        except BrokerError as e:
            raise CommandError(f"cannot start the worker: {e}") from e
        if options["metrics_port"] is not None or options["metrics_child"]:
            from django_vtasks import metrics

            metrics.enable(worker, options["metrics_port"], options["metrics_addr"])
        from django_vtasks import activity

        activity.start_reporter(worker)  # workers and throughput on the admin dashboard
        asyncio.run(supervisor.run_supervised(worker) if options["supervised"] else worker.run())
