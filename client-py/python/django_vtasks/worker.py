"""The asyncio worker.

    worker = Worker(backend_alias="default", queues=["default"], concurrency=20)
    await worker.run()                  # until SIGTERM/SIGINT (or worker.request_stop())

Embedded (ASGI lifespan): ``task = asyncio.create_task(worker.run(handle_signals=False))`` then
``await worker.stop()`` on shutdown (drains in-flight tasks, flushes acks).

How it works
- One fetcher serves the non-batch queues in the given order with VT.FETCHBATCH (or the Postgres
  equivalent) for exactly as many tasks as it has free slots, parked server-side while idle.
- Sync tasks run on a bounded ThreadPoolExecutor of its own (VTASKS_SYNC_THREADS, default the
  concurrency) with ``close_old_connections()`` around each; async tasks run on the loop.
- Successes are acked in batches (with their results, one round trip per queue per flush).
- Leases of running tasks are extended every lease/4 by a heartbeat *thread*, so a busy event loop
  never makes a live worker's tasks look abandoned.
- Failures: dead-lettered with the traceback (fail-fast), or retried with exponential backoff when
  the task (``@task(retries=3, retry_backoff=1.0)``) or VTASKS_RETRIES[queue] asks for it.
- SIGTERM/SIGINT: stop fetching, finish in-flight tasks, flush acks, exit. A second signal: return
  this worker's tasks to the queue (best effort) and exit at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from inspect import iscoroutinefunction
from traceback import format_exception

import orjson
from django.conf import settings as django_settings
from django.db import close_old_connections
from django.tasks import task_backends
from django.tasks.base import TaskContext, TaskError, TaskResult, TaskResultStatus
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from .broker import Delivery
from .allowlist import TaskRefused
from .conf import default_queues, settings
from .diagnostics import RetryLog
from .envelope import build_envelope, decode_envelope, encode_envelope
from .result_store import count_not_stored
from .result_store import read as read_stored
from .results import make_result, result_to_json, resolve_task
from .scheduler import schedule_spec
from .signals import asend_many, schedule_run
from .retry import RetryPolicy

logger = logging.getLogger("django_vtasks.worker")

#: a VT.FAIL reason is at most this many characters: at most 64,000 bytes of UTF-8, under the
#: broker's 64 KiB limit (PROTOCOL.md), whatever the characters
MAX_ERROR_CHARS = 16_000
#: seconds a task runs before its worker records it as RUNNING (a result with started_at): tasks
#: that finish sooner cost no extra write (TRACK_RUNNING records every task before it starts)
RUNNING_RECORD_AFTER = 0.2


def clean_text(text: str) -> str:
    """``text`` that encodes as UTF-8: lone surrogates (an undecodable file name in an exception
    message, say) become ``\\udcxx`` escapes instead of making every write of it fail."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()


def fail_reason(text: str) -> str:
    """The one rule for every reason sent with VT.FAIL (dead-letter or retry, single or batch
    tasks): valid UTF-8, at most MAX_ERROR_CHARS characters (the rest cut, and said so)."""
    text = clean_text(text)
    if len(text) > MAX_ERROR_CHARS:
        keep = MAX_ERROR_CHARS - 48
        text = f"{text[:keep]}\n... [{len(text) - keep} characters cut]"
    return text


class ResultNotStorable(TypeError):
    """A task's return value cannot be stored as its JSON result."""


def default_worker_id() -> str:
    return settings.VTASKS_WORKER_ID or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _call_sync(func, args, kwargs):
    close_old_connections()
    try:
        return func(*args, **kwargs)
    finally:
        close_old_connections()


def _exception_path(e: BaseException) -> str:
    t = type(e)
    return f"{t.__module__}.{t.__qualname__}"


class _Job:
    """A fetched task, decoded and ready to run."""

    __slots__ = ("delivery", "envelope", "task", "result", "done")

    def __init__(self, delivery: Delivery, envelope, task, result):
        self.delivery = delivery
        self.envelope = envelope
        self.task = task
        self.result = result
        self.done = False  # finished (its final or retry result is on its way)


class Worker:
    def __init__(self, backend_alias: str | None = None, queues: list[str] | None = None,
                 concurrency: int | None = None, worker_id: str | None = None,
                 scheduler: bool = False, health_check_file: str | None = None,
                 batch_config: dict | None = None, lease: float | None = None,
                 block_ms: int = 1000, flush_interval: float = 0.002):
        self.alias = backend_alias or settings.VTASKS_BACKEND or "default"
        self.backend = task_backends[self.alias]
        self.broker = self.backend.broker
        self.queues = list(queues or default_queues(self.alias))
        self.concurrency = max(1, int(concurrency or settings.VTASKS_CONCURRENCY))
        self.worker_id = worker_id or default_worker_id()
        self.scheduler = scheduler
        self.health_check_file = health_check_file or settings.VTASKS_HEALTH_CHECK_FILE
        self.batch_config = dict(batch_config if batch_config is not None
                                 else settings.VTASKS_BATCH_QUEUES or {})
        self.lease = float(lease or settings.VTASKS_LEASE)
        self.lease_ms = max(100, int(self.lease * 1000))
        self.block_ms = block_ms
        # Deliveries read later than lease - margin after their fetch was sent are dropped
        # (their lease may have expired: see _lease_lapsed). A blocked fetch must return well
        # before that, so the plain fetch loop blocks at most half of it.
        lease_s = self.lease_ms / 1000
        self.lease_margin = min(2.0, lease_s * 0.2)
        self._fetch_block_ms = block_ms
        cap = max(1, int((lease_s - self.lease_margin) * 500))
        if block_ms is not None and (block_ms <= 0 or block_ms > cap):
            self._fetch_block_ms = cap
        self.dropped_stale = 0
        self.flush_interval = flush_interval
        self.result_ttl_ms = self.backend.result_ttl_ms
        threads = int(settings.VTASKS_SYNC_THREADS or self.concurrency)
        self.executor = ThreadPoolExecutor(max_workers=max(1, threads),
                                           thread_name_prefix="vtasks-sync")
        self.batch_queues = [q for q in self.queues if q in self.batch_config]
        self.plain_queues = [q for q in self.queues if q not in self.batch_config]
        self.broker.check_queues(self.plain_queues)  # one fetch reads them all

        self._busy = 0
        self._task_cache: dict[tuple, object] = {}
        #: store a RUNNING result when a task starts (else get_result reads RUNNING from the
        #: queue record; retried tasks always store one)
        self.track_running = bool(self.backend.options.get("TRACK_RUNNING", False))
        self._tasks: set[asyncio.Task] = set()
        self._inflight: dict[str, int] = defaultdict(int)  # read by the heartbeat thread
        self._acks: list[tuple[str, str, str, bytes | None]] = []
        #: jobs running for RUNNING_RECORD_AFTER, whose RUNNING result the flusher writes
        self._running_due: list[_Job] = []
        #: the flusher's RUNNING write in progress: a failure's result waits for it (else the
        #: RUNNING write could land after, and overwrite, the newer result)
        self._running_write: asyncio.Future | None = None
        #: seconds a task whose path this code does not know is retried before dead-lettering
        self.unknown_task_grace = float(settings.VTASKS_UNKNOWN_TASK_GRACE or 0)
        #: seconds between two checks that the broker still has this scheduler's schedules
        self.schedule_reconcile = float(settings.VTASKS_SCHEDULE_RECONCILE or 0)
        # asyncio.Event binds to a loop on first use only, so stop() is safe before run()
        self._stop_event = asyncio.Event()
        self._slot_event = asyncio.Event()
        self._ack_event = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._signals = 0
        self._last_touch = 0.0
        self._heartbeat_stop = threading.Event()
        self.processed = 0
        self.failed = 0

    # ---- lifecycle ------------------------------------------------------------------------------
    async def run(self, handle_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if self._started:
            raise RuntimeError("Worker.run() can only be called once")
        self._started = True
        if self._stop_event.is_set():
            self._done.set()
            return
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        logger.info("worker %s starting: backend=%s (%s) queues=%s concurrency=%d lease=%.1fs%s",
                    self.worker_id, self.alias, self.broker.kind, self.queues, self.concurrency,
                    self.lease, " scheduler" if self.scheduler else "")
        heartbeat = threading.Thread(target=self._heartbeat_thread, name="vtasks-heartbeat",
                                     daemon=True)
        heartbeat.start()
        background = [asyncio.create_task(self._ack_flusher(), name="vtasks-acks")]
        try:
            await self._startup()
            if not self.broker.supports_server_timers:
                background.append(asyncio.create_task(self._maintenance_loop()))
            if self.scheduler and self.schedule_reconcile > 0:
                background.append(asyncio.create_task(self._reconcile_loop()))
            consumers = []
            if self.plain_queues:
                consumers.append(asyncio.create_task(self._fetch_loop(), name="vtasks-fetch"))
            for queue in self.batch_queues:
                consumers.append(asyncio.create_task(self._batch_loop(queue)))
            await asyncio.gather(*consumers)
            # drain: in-flight tasks, then their acks
            if self._tasks:
                logger.info("worker %s draining %d in-flight task(s)", self.worker_id,
                            len(self._tasks))
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            flusher = background.pop(0)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._flush_acks(final=True)
        finally:
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self._heartbeat_stop.set()
            self.executor.shutdown(wait=False, cancel_futures=True)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            try:
                await self.broker.aclose()
            except Exception:
                logger.debug("closing the broker failed", exc_info=True)
            self._done.set()
            logger.info("worker %s stopped (%d processed, %d failed)", self.worker_id,
                        self.processed, self.failed)

    def request_stop(self) -> None:
        """Stop fetching; run() returns once in-flight tasks finished and were acked.
        Safe at any time, also before run() started (run() then returns at once)."""
        self._stop_event.set()
        self._slot_event.set()

    async def stop(self) -> None:
        """request_stop(), then wait for run() to return (if it was started)."""
        self.request_stop()
        if self._started:
            await self._done.wait()

    def _on_signal(self, sig) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("worker %s: %s received, finishing in-flight tasks (again to exit now)",
                        self.worker_id, signal.Signals(sig).name)
            self.request_stop()
            return
        logger.warning("worker %s: second signal, exiting now", self.worker_id)
        self._abandon()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    def _abandon(self) -> None:
        """Best effort: hand this worker's tasks back to the queue before exiting."""
        def rescue():
            # a fetch still parked in the broker may take a handed-back task again: repeat
            # (the event loop is held by this handler, so no new fetch can start)
            for _ in range(3):
                total = 0
                for q in list(self._inflight):
                    try:
                        total += self.broker.rescue(q, self.worker_id)
                    except Exception as e:
                        logger.warning("could not hand tasks back to %s: %s", q, e)
                if total == 0:
                    return
                logger.warning("handed %d task(s) of %s back", total, self.worker_id)
                time.sleep(0.05)

        t = threading.Thread(target=rescue, daemon=True)
        t.start()
        t.join(2.0)

    async def _startup(self) -> None:
        backoff = 0.2
        log = RetryLog(logger, f"worker {self.worker_id} start-up")
        while True:
            try:
                for q in self.queues:
                    n = await self.broker.arescue(q, self.worker_id)
                    if n:
                        logger.info("rescued %d task(s) of %s on %s", n, self.worker_id, q)
                if self.scheduler:
                    await self.register_schedules()
                await self._apply_dlq_cap()
                self._progress()
                log.ok()
                return
            except Exception as e:
                if self._stop_event.is_set():
                    return
                log.failed(e, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _apply_dlq_cap(self) -> None:
        if not hasattr(django_settings, "VTASKS_DLQ_CAP") or not self.broker.supports_dlq_cap:
            return  # unset: keep the server's config; else the broker got it when built
        try:
            await self.broker.aset_dlq_cap(django_settings.VTASKS_DLQ_CAP)
        except Exception as e:  # e.g. CONFIG disabled on a managed server
            logger.warning("could not apply VTASKS_DLQ_CAP=%s: %s", django_settings.VTASKS_DLQ_CAP, e)

    # ---- helpers --------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    @property
    def busy_slots(self) -> int:
        """Task slots in use (a batch takes one); ``concurrency`` is the total."""
        return self._busy

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except TimeoutError:
            pass

    def _progress(self) -> None:
        if not self.health_check_file:
            return
        now = time.monotonic()
        if now - self._last_touch < 1.0:
            return
        self._last_touch = now
        try:
            with open(self.health_check_file, "a"):
                os.utime(self.health_check_file, None)
        except OSError:
            logger.warning("cannot touch health check file %s", self.health_check_file)

    def _heartbeat_thread(self) -> None:
        interval = max(0.05, self.lease / 4)
        while not self._heartbeat_stop.wait(interval):
            for queue, n in list(self._inflight.items()):
                if n <= 0:
                    continue
                try:
                    self.broker.extend(queue, self.worker_id, self.lease_ms)
                except Exception:
                    logger.warning("extending leases on %s failed", queue, exc_info=True)

    def _take(self, queue: str, n: int = 1) -> None:
        self._busy += n
        self._inflight[queue] += n

    def _release_slot(self, n: int = 1) -> None:
        self._busy -= n
        self._slot_event.set()

    def _spawn(self, coro) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ---- fetching -------------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        backoff = 0.1
        log = RetryLog(logger, f"fetch from {self.plain_queues}")
        while not self.stopping:
            free = self.concurrency - self._busy
            if free <= 0:
                self._slot_event.clear()
                if self.concurrency - self._busy <= 0:
                    await self._slot_event.wait()
                continue
            sent = time.monotonic()
            try:
                deliveries = await self.broker.afetch(self.plain_queues, self.worker_id, free,
                                                      self.lease_ms, self._fetch_block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.failed(e, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            log.ok()
            backoff = 0.1
            self._progress()
            if deliveries and self._lease_lapsed(sent, deliveries, "fetched"):
                continue
            if deliveries:
                for d in deliveries:
                    self._take(d.queue)
                try:
                    await self._start_jobs(deliveries, sent)
                except Exception:
                    logger.exception("starting fetched tasks failed")

    def _lease_lapsed(self, sent: float, deliveries: list[Delivery], what: str) -> bool:
        """True when the leases of ``deliveries`` (granted no earlier than ``sent``, the
        monotonic time their fetch was sent) may have expired: e.g. the process was stopped
        (SIGSTOP, VM pause) with a fetch parked in the server, whose reply it reads only on
        resume. The server re-queued (and maybe redelivered) them at expiry: running them would
        duplicate work. They are dropped, neither run nor acked (a late ack would be a no-op)."""
        elapsed = time.monotonic() - sent
        if elapsed <= self.lease_ms / 1000 - self.lease_margin:
            return False
        logger.warning(
            "dropping %d %s task(s) (%s): their fetch was sent %.1fs ago, longer than the lease "
            "(%.1fs) minus %.1fs: the broker re-queues them on lease expiry",
            len(deliveries), what, ", ".join(f"{d.queue}/{d.id}" for d in deliveries[:5])
            + (" ..." if len(deliveries) > 5 else ""), elapsed, self.lease_ms / 1000, self.lease_margin)
        self.dropped_stale += len(deliveries)
        return True

    async def _start_jobs(self, deliveries: list[Delivery], sent: float | None = None) -> None:
        jobs = []
        for d in deliveries:
            try:
                job = await self._prepare(d)
            except Exception as e:
                # a worker-side error, not the task's: hand it back for a later attempt
                logger.exception("could not start task %s on %s", d.id, d.queue)
                try:
                    await self._fail(d, f"worker error before start: {e!r}", self.lease_ms, None)
                finally:
                    self._release_slot()
                continue
            if job is not None:
                jobs.append(job)
        if jobs and sent is not None and self._lease_lapsed(
                sent, [j.delivery for j in jobs], "prepared"):
            for j in jobs:
                self._inflight[j.delivery.queue] -= 1
            self._release_slot(len(jobs))
            return
        running, lazy = [], []
        for j in jobs:
            (running if self.track_running or j.delivery.attempt > 1 else lazy).append(j)
        if lazy and self.result_ttl_ms > 0:
            # one timer per fetch (not per task): those still running then are recorded RUNNING
            asyncio.get_running_loop().call_later(RUNNING_RECORD_AFTER, self._running_is_due,
                                                  lazy)
        if running and self.result_ttl_ms > 0:
            try:
                await self.broker.astore_results(
                    [(j.delivery.id, result_to_json(j.result), self.result_ttl_ms)
                     for j in running])
            except Exception as e:
                count_not_stored(len(running), f"RUNNING results: {e}")
        for job in jobs:
            self._spawn(self._run_job(job))

    async def _prepare(self, d: Delivery) -> _Job | None:
        """Decode and resolve a delivery; dead-letters it (and frees its slot) when impossible."""
        try:
            envelope = decode_envelope(d.payload)
        except Exception as e:
            await self._dead_letter(d, f"undecodable payload: {e}")
            return None
        func_path = envelope.get("func")
        run_after = None
        try:
            if envelope.get("run_after"):
                run_after = datetime.fromisoformat(envelope["run_after"])
            options = envelope.get("options")
            key = (func_path, d.queue, envelope.get("priority"), envelope.get("run_after"),
                   tuple(sorted(options.items())) if options else None)
            task = self._task_cache.get(key)
            if task is None:
                task = resolve_task(func_path, queue=d.queue, priority=envelope.get("priority"),
                                    run_after=run_after, backend=self.alias, strict=True,
                                    options=options)
                if len(self._task_cache) > 10_000:
                    self._task_cache.clear()
                self._task_cache[key] = task
        except Exception as e:
            if isinstance(e, TaskRefused):
                reason = str(e)
            else:
                reason = f"unknown task path {func_path!r}: {e}"
                if isinstance(e, ImportError) and await self._retry_unknown(d, envelope, reason):
                    self._release_slot()
                    return None
                reason = self._unknown_reason(reason, e)
            placeholder = resolve_task(func_path, queue=d.queue, backend=self.alias,
                                       strict=False)
            result = self._new_result(d, envelope, placeholder, None)
            result.errors.append(TaskError(exception_class_path=_exception_path(e),
                                           traceback=clean_text(reason)))
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            object.__setattr__(result, "finished_at", timezone.now())
            await self._dead_letter(d, reason, result)
            return None
        await self._fill_enqueued_at(d, envelope)
        prior = None
        if d.attempt > 1 and self.result_ttl_ms > 0:
            try:
                raw = await self.broker.aget_result(d.id)
                prior = orjson.loads(read_stored(raw)) if raw else None
            except Exception:
                logger.warning("reading the previous result of %s failed", d.id, exc_info=True)
        try:
            result = self._new_result(d, envelope, task, prior)
        except Exception as e:  # args that cannot be normalised (hand-made payload)
            await self._dead_letter(d, f"invalid task arguments: {e}")
            return None
        return _Job(d, envelope, task, result)

    async def _fill_enqueued_at(self, d: Delivery, envelope: dict) -> None:
        """A task fired by a schedule has no client time ("ts"): its enqueued_at is the broker's
        (what get_result() reads before it runs), one VT.GET per scheduled task."""
        if envelope.get("ts"):
            return
        try:
            record = await self.broker.aget(d.queue, d.id)
        except Exception as e:
            logger.warning("reading task %s failed: %s", d.id, e)
            return
        if record is not None and record.enqueued_at:
            envelope["ts"] = record.enqueued_at / 1000

    def _new_result(self, d: Delivery, envelope: dict, task, prior: dict | None) -> TaskResult:
        now = timezone.now()
        enqueued_at = None
        if envelope.get("ts"):
            enqueued_at = datetime.fromtimestamp(float(envelope["ts"]), UTC)
        started_at = now
        errors = []
        worker_ids = []
        if prior:
            if prior.get("started_at"):
                started_at = datetime.fromisoformat(prior["started_at"])
            errors = [TaskError(**e) for e in prior.get("errors") or []]
            worker_ids = list(prior.get("worker_ids") or [])
        # attempts == len(worker_ids): deliveries lost to a crash count too
        while len(worker_ids) < d.attempt - 1:
            worker_ids.append("unknown")
        worker_ids.append(self.worker_id)
        if enqueued_at is not None and not django_settings.USE_TZ:
            enqueued_at = timezone.make_naive(enqueued_at)
        return make_result(task, d.id, TaskResultStatus.RUNNING, enqueued_at or now, started_at,
                           now, None, envelope.get("args") or [],
                           envelope.get("kwargs") or {}, self.alias, errors, worker_ids)

    # ---- running --------------------------------------------------------------------------------
    async def _send_task_signal(self, signal, *results: TaskResult) -> None:
        """task_started / task_finished: user sync receivers run in the task threads (where the
        ORM works), Django's log receivers and async receivers on the loop."""
        loop = asyncio.get_running_loop()
        await asend_many(signal, type(self.backend), results,
                         lambda fn: loop.run_in_executor(self.executor, _call_sync, fn, (), {}))

    async def _run_job(self, job: _Job) -> None:
        d, task, result = job.delivery, job.task, job.result
        released = False
        try:
            if job.envelope.get("schedule"):
                try:
                    schedule_run.send(type(self.backend), queue=d.queue,
                                      schedule=job.envelope["schedule"])
                except Exception:
                    logger.exception("a schedule_run receiver failed")
            try:
                await self._send_task_signal(task_started, result)
            except Exception:
                logger.exception("a task_started receiver failed")
            args = list(result.args)
            if task.takes_context:
                args.insert(0, TaskContext(task_result=result))
            try:
                if iscoroutinefunction(task.func):
                    value = await task.func(*args, **result.kwargs)
                else:
                    value = await asyncio.get_running_loop().run_in_executor(
                        self.executor, _call_sync, task.func, args, result.kwargs)
                value = normalize_json(value)
                object.__setattr__(result, "_return_value", value)
                object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
                object.__setattr__(result, "finished_at", timezone.now())
                data = self._success_json(result) if self.result_ttl_ms > 0 else None
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                self._unfinish(job)
                await self._task_failed(job, sys.exc_info()[1])
            except BaseException as e:
                # any exception of the task is its failure: SystemExit (like Django's immediate
                # backend) and KeyboardInterrupt too, which would otherwise take down this
                # worker, then the next one that runs the task again
                self._unfinish(job)
                await self._task_failed(job, e)
            else:
                self._finish(job)
                self.processed += 1
                try:
                    await self._send_task_signal(task_finished, result)
                except Exception:
                    logger.exception("a task_finished receiver failed")
                self._release_slot()
                released = True
                self._queue_ack(d, data)
                self._progress()
        finally:
            self._finish(job)
            if not released:
                self._release_slot()

    @staticmethod
    def _success_json(result: TaskResult) -> bytes:
        try:
            return result_to_json(result)
        except (TypeError, ValueError) as e:  # orjson: ints over 64 bits, lone surrogates
            raise ResultNotStorable(
                f"the return value of {result.task.module_path} cannot be stored as JSON ({e}): "
                "return integers within 64 bits and strings that are valid Unicode (no lone "
                "surrogates), or convert them (e.g. str(value))") from e

    def _unfinish(self, job: _Job) -> None:
        """The task failed after all (or raised): no return value, and no RUNNING record may be
        written from now on (it would overwrite the failure's result)."""
        object.__setattr__(job.result, "_return_value", None)
        object.__setattr__(job.result, "status", TaskResultStatus.RUNNING)
        self._finish(job)

    @staticmethod
    def _finish(job: _Job) -> None:
        job.done = True

    def _running_is_due(self, jobs: list[_Job]) -> None:
        due = [j for j in jobs if not j.done]
        if due:
            self._running_due.extend(due)
            self._ack_event.set()

    async def _record_running(self) -> None:
        """Write the RUNNING results of the jobs that have run for RUNNING_RECORD_AFTER (best
        effort: a failed write is logged, get_result() then reads RUNNING from the broker)."""
        due, self._running_due = self._running_due, []
        items = []
        for job in due:
            if job.done:
                continue
            try:
                items.append((job.delivery.id, result_to_json(job.result), self.result_ttl_ms))
            except (TypeError, ValueError):
                logger.warning("the RUNNING result of %s cannot be encoded", job.delivery.id,
                               exc_info=True)
        if not items:
            return
        write = self._running_write = asyncio.ensure_future(self.broker.astore_results(items))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.warning("recording %d running task(s) failed: %s", len(items), e)
        finally:
            self._running_write = None

    async def _task_failed(self, job: _Job, e: BaseException) -> None:
        d, result = job.delivery, job.result
        tb = clean_text("".join(format_exception(e)))
        result.errors.append(TaskError(exception_class_path=_exception_path(e), traceback=tb))
        object.__setattr__(result, "finished_at", timezone.now())
        retry_ms = RetryPolicy.of(job.task, d.queue).retry_ms(d.attempt)
        if retry_ms is not None:
            object.__setattr__(result, "status", TaskResultStatus.READY)
            logger.warning("task %s %s failed (attempt %d), retrying in %dms: %s", d.id,
                           job.task.module_path, d.attempt, retry_ms, e)
        else:
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            self.failed += 1
            try:
                await self._send_task_signal(task_finished, result)  # inside the except
            except Exception:
                logger.exception("a task_finished receiver failed")
        outcome = await self._fail(d, f"{_exception_path(e)}: {e}\n{tb}", retry_ms, result)
        if retry_ms is not None and outcome == "dead":
            # no attempts left in the broker (crash redeliveries used them)
            object.__setattr__(result, "status", TaskResultStatus.FAILED)
            self.failed += 1
            await self._store(result)
            try:
                await self._send_task_signal(task_finished, result)
            except Exception:
                logger.exception("a task_finished receiver failed")

    async def _store(self, result: TaskResult) -> None:
        if self.result_ttl_ms <= 0:
            return
        data = self._result_json(result)
        if data is not None:
            await self._store_raw(result.id, data)

    def _result_json(self, result: TaskResult) -> bytes | None:
        """A failure's result as JSON; None (logged) when it cannot be encoded."""
        try:
            return result_to_json(result)
        except (TypeError, ValueError) as e:
            logger.error("the result of %s cannot be encoded, not stored: %s", result.id, e)
            return None

    async def _store_raw(self, rid: str, data: bytes) -> bool:
        """Store one result once (best effort, logged); whether it was stored."""
        write = self._running_write
        if write is not None:  # let a RUNNING write in flight land first
            await asyncio.wait([write])
        try:
            await self.broker.astore_result(rid, data, self.result_ttl_ms)
        except Exception as e:
            count_not_stored(1, f"task {rid}: {e}")
            return False
        return True

    async def _fail(self, d: Delivery, error: str, retry_ms: int | None,
                    result: TaskResult | None) -> str | None:
        """Store the result, then VT.FAIL (the reason under fail_reason's rule); retried until
        the broker answers. A result that cannot be stored does not hold the task: its failure
        still reaches the broker (get_result then reads the broker's record)."""
        error = fail_reason(error)
        data = (self._result_json(result)
                if result is not None and self.result_ttl_ms > 0 else None)
        backoff = 0.1
        while True:
            if data is not None and await self._store_raw(d.id, data):
                data = None
            try:
                outcome = await self.broker.afail(d.queue, d.id, d.token, error, retry_ms)
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.error("failing task %s failed: %s (retrying in %.1fs)", d.id, e, backoff)
                if backoff > 5 and self.stopping:
                    outcome = None  # give up: the lease expires and the task comes back
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        self._inflight[d.queue] -= 1
        return outcome

    async def _dead_letter(self, d: Delivery, reason: str, result: TaskResult | None = None):
        reason = fail_reason(reason)
        logger.error("task %s on %s dead-lettered: %s", d.id, d.queue, reason)
        self.failed += 1
        try:
            await self._fail(d, reason, None, result)
        finally:
            self._release_slot()

    def _unknown_reason(self, reason: str, e: Exception) -> str:
        if isinstance(e, ImportError) and self.unknown_task_grace > 0:
            return (f"{reason} (still unknown after VTASKS_UNKNOWN_TASK_GRACE="
                    f"{self.unknown_task_grace:g}s)")
        return reason

    async def _retry_unknown(self, d: Delivery, envelope: dict, reason: str) -> bool:
        """A task path this code cannot import, within VTASKS_UNKNOWN_TASK_GRACE of the enqueue:
        in a rolling deploy an old worker sees a task only the new code has. Hand it back for a
        later attempt (spread so the last attempt falls at the end of the grace) and return True;
        False once the grace or the attempts are used up (the caller dead-letters it)."""
        grace = self.unknown_task_grace
        if grace <= 0:
            return False
        try:
            record = await self.broker.aget(d.queue, d.id)
        except Exception as e:
            logger.warning("reading task %s failed: %s", d.id, e)
            record = None
        if record is None:
            return False
        enqueued = float(envelope.get("ts") or record.enqueued_at / 1000)
        left = grace - (time.time() - enqueued)
        attempts_left = record.max_attempts - d.attempt
        if left <= 0 or attempts_left <= 0:
            return False
        retry_ms = max(1, int(left * 1000 / attempts_left))
        logger.warning("task %s on %s: %s; retrying in %.1fs (a deploy in progress? "
                       "VTASKS_UNKNOWN_TASK_GRACE leaves %.0fs)", d.id, d.queue, reason,
                       retry_ms / 1000, left)
        await self._fail(d, f"{reason} (retried for VTASKS_UNKNOWN_TASK_GRACE={grace:g}s)",
                         retry_ms, None)
        return True

    # ---- acks -----------------------------------------------------------------------------------
    def _queue_ack(self, d: Delivery, result_json: bytes | None) -> None:
        self._acks.append((d.queue, d.id, d.token, result_json))
        self._ack_event.set()

    async def _ack_flusher(self) -> None:
        while True:
            await self._ack_event.wait()
            if len(self._acks) < self.concurrency:
                await asyncio.sleep(self.flush_interval)
            await self._flush_acks()

    async def _flush_acks(self, final: bool = False) -> None:
        backoff = 0.1
        while self._acks or self._running_due:
            self._ack_event.clear()
            if self._running_due:
                await self._record_running()
            if not self._acks:
                break
            batch, self._acks = self._acks, []
            by_queue: dict[str, list] = defaultdict(list)
            for item in batch:
                by_queue[item[0]].append(item)
            try:
                for queue, items in by_queue.items():
                    try:
                        await self._ack(queue, items)
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:
                        # one task's result the broker refuses (too large, say) must not hold
                        # the others: ack them one by one (items shrinks as they go)
                        await self._ack_each(queue, items, e)
                    items.clear()
            except asyncio.CancelledError:
                self._acks[:0] = [i for items in by_queue.values() for i in items]
                raise
            except Exception as e:
                self._acks[:0] = [i for items in by_queue.values() for i in items]
                logger.error("ack failed: %s (retrying in %.1fs)", e, backoff)
                if final and backoff > 5:
                    logger.error("giving up on %d ack(s); the tasks will be redelivered",
                                 len(self._acks))
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            self._progress()

    async def _ack(self, queue: str, items: list) -> None:
        pairs = [(i, t) for _, i, t, _ in items]
        results = [(i, r, self.result_ttl_ms) for _, i, _, r in items if r]
        await self.broker.aack_with_results(queue, pairs, results)
        self._inflight[queue] -= len(items)

    async def _ack_each(self, queue: str, items: list, error: Exception) -> None:
        """Ack ``items`` one by one after their batch failed with ``error``. One that fails
        while the broker answers is failed (dead-lettered) with the broker's refusal; when the
        broker does not answer, the error propagates and the rest are retried later."""
        await self.broker.ainfo(queue)  # raises when the broker is unreachable: retry later
        logger.warning("acking %d task(s) of %s together failed (%s): acking them one by one",
                       len(items), queue, error)
        while items:
            item = items[0]
            try:
                await self._ack(queue, [item])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                await self.broker.ainfo(queue)  # raises when the broker is unreachable
                try:  # the broker answers: once more, in case that was a passing failure
                    await self._ack(queue, [item])
                    items.pop(0)
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as again:
                    e = again
                _, rid, token, data = item
                reason = fail_reason(
                    f"the result of task {rid} ({len(data or b''):,} bytes) could not be stored "
                    f"while the broker took the others ({e}): a result larger than the broker "
                    "accepts (Valkey's proto-max-bulk-len, say)? Return less (e.g. store large "
                    "data elsewhere and return its key)")
                logger.error("task %s on %s failed: %s", rid, queue, reason)
                self.failed += 1
                await self.broker.afail(queue, rid, token, reason, None)
                self._inflight[queue] -= 1
            items.pop(0)

    # ---- batch queues ---------------------------------------------------------------------------
    async def _batch_loop(self, queue: str) -> None:
        conf = self.batch_config.get(queue) or {}
        count = max(1, int(conf.get("count", 100)))
        timeout = float(conf.get("timeout", 1.0))
        backoff = 0.1
        while not self.stopping:
            if self._busy >= self.concurrency:
                self._slot_event.clear()
                await self._slot_event.wait()
                continue
            deliveries: list[Delivery] = []
            try:
                got = await self.broker.afetch([queue], self.worker_id, count, self.lease_ms,
                                               self.block_ms)
                self._progress()
                if not got:
                    continue
                deliveries.extend(got)
                self._inflight[queue] += len(got)
                deadline = time.monotonic() + timeout
                while len(deliveries) < count and not self.stopping:
                    remaining = int((deadline - time.monotonic()) * 1000)
                    if remaining < 1:
                        break
                    more = await self.broker.afetch([queue], self.worker_id,
                                                    count - len(deliveries), self.lease_ms,
                                                    remaining)
                    if more:
                        deliveries.extend(more)
                        self._inflight[queue] += len(more)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.error("batch fetch from %s failed: %s", queue, e)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                if not deliveries:
                    continue
            backoff = 0.1
            self._busy += 1
            self._spawn(self._run_batch(queue, deliveries))

    async def _run_batch(self, queue: str, deliveries: list[Delivery]) -> None:
        try:
            groups: dict[str, list] = defaultdict(list)
            for d in deliveries:
                try:
                    env = decode_envelope(d.payload)
                except Exception as e:
                    await self._batch_dead(d, f"undecodable payload: {e}")
                    continue
                env["id"] = d.id
                await self._fill_enqueued_at(d, env)
                groups[env["func"]].append((d, env))
            for func_path, items in groups.items():
                try:
                    task = resolve_task(func_path, queue=queue, backend=self.alias, strict=True)
                except Exception as e:
                    reason = f"unknown task path {func_path!r}: {e}"
                    for d, env in items:
                        if not (isinstance(e, ImportError)
                                and await self._retry_unknown(d, env, reason)):
                            await self._batch_dead(d, self._unknown_reason(reason, e))
                    continue
                results, valid = [], []
                for d, env in items:
                    try:
                        results.append(self._new_result(d, env, task, None))
                        valid.append((d, env))
                    except Exception as e:  # args that cannot be normalised (hand-made payload)
                        await self._batch_dead(d, f"invalid task arguments: {e}")
                if not valid:
                    continue
                items = valid
                payloads = [env for _, env in items]
                try:
                    await self._send_task_signal(task_started, *results)
                except Exception:
                    logger.exception("a task_started receiver failed")
                try:
                    if iscoroutinefunction(task.func):
                        await task.func(payloads)
                    else:
                        await asyncio.get_running_loop().run_in_executor(
                            self.executor, _call_sync, task.func, [payloads], {})
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
                    await self._batch_failed(task, items, results, sys.exc_info()[1])
                except BaseException as e:  # KeyboardInterrupt/SystemExit too: see _run_job
                    await self._batch_failed(task, items, results, e)
                else:
                    self.processed += len(items)
                    now = timezone.now()
                    for result in results:
                        object.__setattr__(result, "finished_at", now)
                        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
                    try:
                        await self._send_task_signal(task_finished, *results)
                    except Exception:
                        logger.exception("a task_finished receiver failed")
                    for (d, _), result in zip(items, results):
                        self._queue_ack(d, self._result_json(result)
                                        if self.result_ttl_ms > 0 else None)
            self._progress()
        finally:
            self._release_slot()

    async def _batch_failed(self, task, items, results: list[TaskResult], e: BaseException) -> None:
        """Called inside the except: task_finished receivers see the exception."""
        logger.error("batch %s of %d task(s) failed: %s", task.module_path, len(items), e)
        policy = RetryPolicy.of(task, items[0][0].queue)
        tb = clean_text("".join(format_exception(e)))
        error = f"{_exception_path(e)}: {e}\n{tb}"
        task_error = TaskError(exception_class_path=_exception_path(e), traceback=tb)
        now = timezone.now()
        dead = []
        for (d, _), result in zip(items, results):
            retry_ms = policy.retry_ms(d.attempt)
            result.errors.append(task_error)
            object.__setattr__(result, "finished_at", now)
            object.__setattr__(result, "status", TaskResultStatus.READY if retry_ms is not None
                               else TaskResultStatus.FAILED)
            outcome = await self._fail(d, error, retry_ms, result)
            if retry_ms is None or outcome == "dead":
                if retry_ms is not None:  # no attempts left after all
                    object.__setattr__(result, "status", TaskResultStatus.FAILED)
                    await self._store(result)
                object.__setattr__(result, "status", TaskResultStatus.FAILED)
                self.failed += 1
                dead.append(result)
        try:
            await self._send_task_signal(task_finished, *dead)
        except Exception:
            logger.exception("a task_finished receiver failed")

    async def _batch_dead(self, d: Delivery, reason: str) -> None:
        reason = fail_reason(reason)
        logger.error("task %s on %s dead-lettered: %s", d.id, d.queue, reason)
        self.failed += 1
        await self._fail(d, reason, None, None)

    # ---- scheduler / maintenance ----------------------------------------------------------------
    def schedule_entries(self) -> dict[str, tuple[str, bytes, str | None, int | None, int]]:
        """{name: (queue, payload, cron, every_ms, priority)} from VTASKS_SCHEDULE."""
        out = {}
        for name, entry in (settings.VTASKS_SCHEDULE or {}).items():
            try:
                task = resolve_task(entry["task"], backend=self.alias, strict=True)
                queue = entry.get("queue") or task.queue_name
                priority = int(entry.get("priority", task.priority))
                args = normalize_json(list(entry.get("args") or []))
                kwargs = normalize_json(dict(entry.get("kwargs") or {}))
                env = build_envelope(task, args, kwargs, "", self.alias)
                env["queue"] = queue
                env["priority"] = priority
                env["ts"] = None  # enqueued_at comes from the fired task
                env["schedule"] = name
                cron, every_ms = schedule_spec(entry["schedule"])
                out[name] = (queue, encode_envelope(env), cron, every_ms, priority)
            except Exception:
                logger.exception("VTASKS_SCHEDULE entry %r is invalid; skipped", name)
        return out

    async def register_schedules(self) -> None:
        entries = self.schedule_entries()
        await self._set_schedules(entries)
        # entries removed from settings (or moved to another queue) stop firing
        queues = set(await self.broker.aqueues()) | set(self.queues) | {
            e[0] for e in entries.values()}
        for queue in sorted(queues):
            for s in await self.broker.aschedule_list(queue):
                if s.name not in entries or entries[s.name][0] != queue:
                    await self.broker.aschedule_del(queue, s.name)
                    logger.info("schedule %s removed from %s", s.name, queue)

    async def _set_schedules(self, entries: dict, reconcile: bool = False) -> int:
        """SET the entries the broker lacks or has with another spec/payload: one LIST per
        queue, a SET only where something differs. Returns the number set."""
        by_queue: dict[str, list] = defaultdict(list)
        for name, entry in entries.items():
            by_queue[entry[0]].append((name, entry))
        n = 0
        for queue, named in by_queue.items():
            current = {s.name: s for s in await self.broker.aschedule_list(queue)}
            for name, (_, payload, cron, every_ms, priority) in named:
                have = current.get(name)
                spec = cron if cron is not None else str(every_ms)
                if have is not None and have.payload == payload and have.spec == spec:
                    continue
                await self.broker.aschedule_set(queue, name, payload, cron=cron,
                                                every_ms=every_ms, priority=priority)
                n += 1
                what = f"cron {cron}" if cron else f"every {every_ms}ms"
                if reconcile:
                    logger.warning("schedule %s was %s on %s (the broker lost its data, or "
                                   "another scheduler has other settings): registered again "
                                   "(%s)", name, "missing" if have is None else "different",
                                   queue, what)
                else:
                    logger.info("schedule %s registered on %s (%s)", name, queue, what)
        return n

    async def _reconcile_loop(self) -> None:
        """Schedules live in the broker: one that restarted without persistence (or was
        flushed) has none, and nothing would fire. Check every VTASKS_SCHEDULE_RECONCILE seconds
        (one SCHEDULE LIST per queue) and register again what is missing."""
        entries = self.schedule_entries()
        while not self.stopping:
            await self._sleep(self.schedule_reconcile)
            if self.stopping:
                return
            try:
                await self._set_schedules(entries, reconcile=True)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("checking the schedules failed: %s", e)

    async def _maintenance_loop(self) -> None:
        """Postgres: client-driven timers (exactly-once schedule ticks, expired-lease rescue)."""
        last_maintain = 0.0
        log = RetryLog(logger, "Postgres maintenance (lease rescue, schedules)")
        backoff = 0.0
        while not self.stopping:
            try:
                if self.scheduler:
                    n = await self.broker.atick()
                    if n:
                        logger.debug("schedules fired %d task(s)", n)
                now = time.monotonic()
                if now - last_maintain >= max(0.5, min(5.0, self.lease / 4)):
                    last_maintain = now
                    await self.broker.amaintain()
                log.ok()
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                backoff = min(max(1.0, backoff * 2), 30.0)
                log.failed(e, backoff)
            await self._sleep(backoff or (0.25 if self.scheduler else 1.0))


def format_tb() -> str:
    return traceback.format_exc()
