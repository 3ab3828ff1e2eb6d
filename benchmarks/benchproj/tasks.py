"""The benchmark tasks. Each one records its completion through a side channel that does not go
through the system under test: one O_APPEND write of `enqueued started finished` (unix seconds) to
a per-process file in $BENCH_DONE_DIR. The harness counts lines and computes rates and latencies.

asyncio workers (vtasks, django-vtasks 3.2.0) get `async def` tasks, their native and documented
form; the thread/process workers (Celery threads pool, django-tasks-db) get `def` tasks.
"""

import asyncio
import os
import time

SYSTEM = os.environ.get("BENCH_SYSTEM", "vtasks")
_DONE_DIR = os.environ.get("BENCH_DONE_DIR", "/tmp/vtasks-bench-done")
_fd = None
_fd_pid = None


def _record(enq: float, start: float) -> None:
    global _fd, _fd_pid
    pid = os.getpid()
    if _fd is None or _fd_pid != pid:
        os.makedirs(_DONE_DIR, exist_ok=True)
        _fd = os.open(
            os.path.join(_DONE_DIR, f"done-{pid}.txt"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            0o644,
        )
        _fd_pid = pid
    os.write(_fd, b"%.6f %.6f %.6f\n" % (enq, start, time.time()))


if SYSTEM in ("vtasks", "vtasks-pg", "dvt320"):
    from django_vtasks import task

    @task
    async def noop(enq: float = 0.0):
        _record(enq, time.time())

    @task
    async def sleep10(enq: float = 0.0):
        start = time.time()
        await asyncio.sleep(0.01)
        _record(enq, start)

elif SYSTEM == "celery":
    from celery import shared_task

    @shared_task(ignore_result=True)
    def noop(enq: float = 0.0):
        _record(enq, time.time())

    @shared_task(ignore_result=True)
    def sleep10(enq: float = 0.0):
        start = time.time()
        time.sleep(0.01)
        _record(enq, start)

else:  # django.tasks reference backends
    from django.tasks import task

    @task
    def noop(enq: float = 0.0):
        _record(enq, time.time())

    @task
    def sleep10(enq: float = 0.0):
        start = time.time()
        time.sleep(0.01)
        _record(enq, start)
