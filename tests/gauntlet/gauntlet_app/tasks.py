"""Tasks the gauntlet feeds. Each records its execution in the ledger (GAUNTLET_LEDGER dir), which
is independent of the broker under test. Imported only inside worker subprocesses."""

import os
import sys
import time

from django.tasks import task
from gauntlet.ledger import record_end, record_start

LEDGER = os.environ.get("GAUNTLET_LEDGER", "/tmp/gauntlet-ledger")
QUEUE = os.environ.get("GAUNTLET_QUEUE", "gauntlet")
WORKER_TAG = os.environ.get("GAUNTLET_WORKER_TAG", "")


def _start(gid, **extra):
    return record_start(LEDGER, gid, worker=WORKER_TAG, **extra)[0]


@task(queue_name=QUEUE)
def record(gid, ms=0):
    """The workhorse: ledger start, optional work (sleep), ledger end."""
    path = _start(gid)
    if ms:
        time.sleep(ms / 1000)
    record_end(path)
    return gid


@task(queue_name=QUEUE)
async def arecord(gid, ms=0):
    import asyncio

    path = _start(gid)
    if ms:
        await asyncio.sleep(ms / 1000)
    record_end(path)
    return gid


@task(queue_name=QUEUE)
def boom(gid):
    """A real failure: must land in the DLQ with its error."""
    path = _start(gid)
    record_end(path, raised=True)
    raise RuntimeError(f"gauntlet boom {gid}")


@task(queue_name=QUEUE)
def exit_task(gid):
    """Calls sys.exit: a failure of the task, not of the worker."""
    path = _start(gid)
    record_end(path, raised=True)
    sys.exit(3)


@task(queue_name=QUEUE)
def big(gid, blob):
    path = _start(gid, size=len(blob))
    record_end(path)
    return len(blob)


@task(queue_name=QUEUE, takes_context=True)
def tick(context, name):
    """Fired by a schedule: one ledger entry per task id (a double fire = two ids, same slot)."""
    tr = context.task_result
    path = _start(
        f"tick-{name}-{tr.id}", enqueued_at=tr.enqueued_at.timestamp() if tr.enqueued_at else None
    )
    record_end(path)
