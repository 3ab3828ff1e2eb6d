"""The asyncio worker.

    worker = Worker(backend_alias="default", queues=["default"], concurrency=20)
    await worker.run()                  # until SIGTERM/SIGINT (or worker.request_stop())

Embedded (ASGI lifespan): ``task = asyncio.create_task(worker.run(handle_signals=False))`` then
``await worker.stop()`` on shutdown (drains in-flight tasks, flushes acks).

How it works: a small :class:`Worker` (``worker.py``: lifecycle, signals, start-up) wires parts
with one job each:

- ``fetcher.py``: one fetch loop serves the non-batch queues in the given order with
  VT.FETCHBATCH (or the Postgres equivalent) for exactly as many tasks as it has free slots
  (``slots.py``), parked server-side while idle; one loop per batch queue gathers batches.
- ``jobs.py``: the job runner, for single and batch tasks alike: decode, resolve, run (sync tasks
  on a bounded ThreadPoolExecutor of its own, VTASKS_SYNC_THREADS, default the concurrency, with
  ``close_old_connections()`` around each; async tasks on the loop), and settle: failures are
  dead-lettered with the traceback (fail-fast), or retried with exponential backoff when the task
  (``@task(retries=3, retry_backoff=1.0)``) or VTASKS_RETRIES[queue] asks for it (``retry.py``).
- ``acks.py``: successes are acked in batches (with their results, one round trip per queue per
  flush).
- ``heartbeat.py``: leases of running tasks are extended every lease/4 by a *thread*, so a busy
  event loop never makes a live worker's tasks look abandoned.
- ``schedules.py``: with ``scheduler=True``, VTASKS_SCHEDULE is registered in the broker.
- ``maintenance.py``: for brokers without server timers (Postgres), the client-driven ticks.

SIGTERM/SIGINT: stop fetching, finish in-flight tasks, flush acks, exit. A second signal: return
this worker's tasks to the queue (best effort) and exit at once.
"""

from .jobs import RUNNING_RECORD_AFTER, ResultNotStorable
from .reasons import MAX_ERROR_CHARS, clean_text, fail_reason
from .worker import Worker, default_worker_id

__all__ = [
    "MAX_ERROR_CHARS",
    "RUNNING_RECORD_AFTER",
    "ResultNotStorable",
    "Worker",
    "clean_text",
    "default_worker_id",
    "fail_reason",
]
