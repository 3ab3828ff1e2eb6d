"""``manage.py benchmark_vtasks``: enqueue N tasks, process them with an in-process worker, print
the enqueue and process rates.

    manage.py benchmark_vtasks --count 10000 --concurrency 50 --task-type noop

Phase 1 enqueues with ``--producers`` concurrent ``aenqueue()`` calls (async views dispatching
tasks), or ``enqueue_many`` batches with ``--batch N``. Phase 2 starts a
:class:`django_vtasks.worker.Worker` on this process' event loop for the benchmark queue and
measures until every task finished. The benchmark queue (``--queue``, default
``vtasks-benchmark``) is emptied before and after the run: do not point it at a queue in use.
A progress bar goes to stderr. Django's per-task log lines (``django.tasks`` at INFO, printed
when DEBUG=True) are silenced during the run unless ``-v 2``.
"""

import asyncio
import logging
import time
import uuid
from contextlib import contextmanager

from django.core.management.base import BaseCommand, CommandError

from django_vtasks.tasks import task

from ._backend_option import STEALTH, add_backend_argument, backend_alias, vtasks_backend


@task
async def noop(payload=None):
    """Benchmark task: does nothing (async: no thread hop)."""
    return None


@task
async def sleep(seconds, payload=None):
    """Benchmark task: waits ``seconds`` (async I/O stand-in)."""
    await asyncio.sleep(seconds)


@task
def sync_noop(payload=None):
    """Benchmark task: does nothing on the worker's thread pool."""
    return None


@task
def sync_sleep(seconds, payload=None):
    """Benchmark task: blocks a pool thread ``seconds``."""
    time.sleep(seconds)


@contextmanager
def quiet_task_log(verbosity: int):
    """Django logs every task start and finish on the ``django.tasks`` logger at INFO (its signal
    receivers), which the default LOGGING prints to the console when DEBUG=True: 2 lines per
    benchmark task. Below ``-v 2`` the benchmark keeps that logger at WARNING for its run, so its
    output is the summary (failures are still logged: ERROR)."""
    log = logging.getLogger("django.tasks")
    previous = log.level
    if verbosity < 2 and log.getEffectiveLevel() < logging.WARNING:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(previous)


class Progress:
    """A one-line progress bar on a stream (redrawn on a TTY, a line per 25% otherwise)."""

    def __init__(self, stream, label: str, total: int, width: int = 30):
        self.stream, self.label, self.total, self.width = stream, label, max(1, total), width
        self.start = time.monotonic()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._last_draw = 0.0
        self._last_quarter = -1

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if not final and now - self._last_draw < 0.1:
                return
            self._last_draw = now
            self.stream.write("\r" + self._line(done, now) + ("\n" if final else ""))
            self.stream.flush()
            return
        quarter = min(4, done * 4 // self.total)
        if quarter > self._last_quarter or final:
            if final and quarter == self._last_quarter:
                return
            self._last_quarter = quarter
            self.stream.write(self._line(done, now) + "\n")
            self.stream.flush()

    def _line(self, done: int, now: float) -> str:
        frac = min(1.0, done / self.total)
        filled = int(frac * self.width)
        elapsed = max(now - self.start, 1e-9)
        return (
            f"{self.label:<8} [{'#' * filled}{'.' * (self.width - filled)}] "
            f"{done}/{self.total} {frac * 100:5.1f}% {done / elapsed:,.0f}/s"
        )


class Command(BaseCommand):
    help = "Benchmark a vtasks backend: enqueue rate, then process rate with an in-process worker."
    stealth_options = STEALTH

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=1000, help="tasks to run (default 1000)")
        parser.add_argument(
            "--concurrency", type=int, default=50, help="worker concurrency (default 50)"
        )
        add_backend_argument(parser)
        parser.add_argument(
            "--queue",
            default="vtasks-benchmark",
            help="queue used (emptied before and after; default vtasks-benchmark)",
        )
        parser.add_argument("--task-type", choices=["noop", "sleep"], default="noop")
        parser.add_argument(
            "--sleep", type=float, default=0.01, help="seconds a 'sleep' task waits (default 0.01)"
        )
        parser.add_argument(
            "--sync",
            action="store_true",
            help="use sync task functions (run on the worker's thread pool)",
        )
        parser.add_argument(
            "--payload-size",
            type=int,
            default=0,
            help="bytes of dummy payload per task (default 0)",
        )
        parser.add_argument(
            "--producers",
            type=int,
            default=None,
            help="concurrent aenqueue() callers (default: --concurrency)",
        )
        parser.add_argument(
            "--batch",
            type=int,
            default=0,
            help="enqueue with aenqueue_many in batches of this size instead",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=600.0,
            help="give up processing after this many seconds (default 600)",
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")

    def handle(self, *args, **options):
        if options["count"] < 1:
            raise CommandError("--count must be at least 1")
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        alias = backend_alias(options)
        backend = vtasks_backend(alias)
        queue = options["queue"]
        if backend.queues and queue not in backend.queues:
            # the benchmark queue is private to this process: let validate_task accept it
            backend.queues.add(queue)
        try:
            import uvloop

            runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            runner = asyncio.Runner()
        with runner, quiet_task_log(options["verbosity"]):
            runner.run(self._run(backend, alias, queue, options))

    def _task(self, options):
        kind = options["task_type"]
        if options["sync"]:
            return sync_noop if kind == "noop" else sync_sleep
        return noop if kind == "noop" else sleep

    async def _run(self, backend, alias, queue, options):
        from django_vtasks.worker import Worker

        broker = backend.broker
        count, concurrency = options["count"], options["concurrency"]
        bench_task = self._task(options).using(queue_name=queue, backend=alias)
        args = [options["sleep"]] if options["task_type"] == "sleep" else []
        kwargs = {"payload": "x" * options["payload_size"]} if options["payload_size"] > 0 else {}
        progress_stream = None if options["no_progress"] else self.stderr._out

        out = self.stdout.write
        out(self.style.SUCCESS("--- vtasks benchmark ---"))
        out(f"backend:      {alias} ({type(backend).__name__}, {broker.kind})")
        out(f"queue:        {queue}")
        detail = "sync" if options["sync"] else "async"
        if args:
            detail += f", {args[0]}s each"
        if kwargs:
            detail += f", payload {options['payload_size']} B"
        out(f"tasks:        {count} x {bench_task.name} ({detail})")
        out(f"concurrency:  {concurrency}")
        await broker.aclear(queue, "all")

        # ---- phase 1: enqueue ---------------------------------------------------------------
        producers = max(1, options["producers"] or concurrency)
        bar = Progress(progress_stream, "enqueue", count) if progress_stream else None
        done = 0
        start = time.monotonic()
        if options["batch"] > 0:
            size = options["batch"]
            while done < count:
                n = min(size, count - done)
                await backend.aenqueue_many([(bench_task, args, kwargs)] * n)
                done += n
                if bar:
                    bar.update(done)
        else:
            remaining = iter(range(count))

            async def producer():
                nonlocal done
                for _ in remaining:
                    await bench_task.aenqueue(*args, **kwargs)
                    done += 1
                    if bar:
                        bar.update(done)

            await asyncio.gather(*(producer() for _ in range(min(producers, count))))
        enqueue_s = time.monotonic() - start
        if bar:
            bar.update(done, final=True)
        enqueue_rate = count / enqueue_s
        mode = (
            f"enqueue_many x{options['batch']}"
            if options["batch"] > 0
            else f"{min(producers, count)} concurrent aenqueue()"
        )
        out(f"enqueued {count} tasks in {enqueue_s:.2f}s ({mode})")

        # ---- phase 2: process ---------------------------------------------------------------
        worker = Worker(
            backend_alias=alias,
            queues=[queue],
            concurrency=concurrency,
            worker_id=f"benchmark-{uuid.uuid4().hex[:8]}",
            scheduler=False,
            batch_config={},
        )
        bar = Progress(progress_stream, "process", count) if progress_stream else None
        start = time.monotonic()
        run = asyncio.create_task(worker.run(handle_signals=False))
        deadline = start + options["timeout"]
        try:
            while True:
                finished = worker.processed + worker.failed
                if bar:
                    bar.update(finished)
                if finished >= count:
                    break
                if run.done():
                    run.result()  # raises what stopped the worker
                    raise CommandError("the worker stopped before the benchmark finished")
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"timed out after {options['timeout']}s: {finished}/{count} tasks finished"
                    )
                await asyncio.sleep(0.005)
            process_s = time.monotonic() - start
        finally:
            while worker._stop_event is None and not run.done():
                await asyncio.sleep(0)
            await worker.stop()
            await asyncio.gather(run, return_exceptions=True)
        total_s = time.monotonic() - start
        if bar:
            bar.update(worker.processed + worker.failed, final=True)
        process_rate = count / process_s
        out(
            f"processed {count} tasks in {process_s:.2f}s "
            f"({worker.processed} ok, {worker.failed} failed; acks flushed after {total_s:.2f}s)"
        )
        try:
            await broker.aclear(queue, "all")
        finally:
            await broker.aclose()
        out(self.style.SUCCESS("-" * 24))
        out(f"Enqueue rate: {enqueue_rate:,.0f} tasks/s")
        out(f"Process rate: {process_rate:,.0f} tasks/s")
        if worker.failed:
            raise CommandError(f"{worker.failed} benchmark task(s) failed (see the log)")
