import os

from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "vtasks_testapp"

    def ready(self):
        from django.tasks.signals import task_enqueued, task_finished, task_started

        log = os.environ.get("VTASKS_TEST_SIGNAL_LOG")
        if not log:
            return

        def writer(kind):
            def receiver(sender, task_result, **kwargs):
                import sys

                from django.db import connection

                exc = sys.exc_info()[0]
                # a receiver may use the ORM (an event-loop caller would raise
                # SynchronousOnlyOperation here)
                with connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                with open(log, "a") as f:
                    f.write(
                        f"{kind} {task_result.id} {task_result.status} "
                        f"{','.join(task_result.worker_ids)} {sender.__name__} "
                        f"{exc.__name__ if exc else '-'}\n"
                    )

            return receiver

        for kind, sig in (
            ("enqueued", task_enqueued),
            ("started", task_started),
            ("finished", task_finished),
        ):
            r = writer(kind)
            sig.connect(r, weak=False)
