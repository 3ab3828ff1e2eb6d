"""Worker: the lifecycle (start-up, run, drain, stop, signals) and the state its parts share."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings as django_settings
from django.tasks import task_backends

from .. import ratelimits
from ..backends.base import VTasksBackend
from ..conf import default_queues, settings
from ..diagnostics import RetryLog
from .acks import AckBatcher
from .fetcher import Fetcher
from .heartbeat import Heartbeat
from .jobs import JobRunner
from .maintenance import Maintenance
from .outbox_relay import OutboxRelay
from .schedules import ScheduleRegistrar
from .slots import Slots
from .unprinted_logs import skip_unprinted_task_logs

logger = logging.getLogger("django_vtasks.worker")


def default_worker_id() -> str:
    return (
        settings.VTASKS_WORKER_ID or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )


class Worker:
    def __init__(
        self,
        backend_alias: str | None = None,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        worker_id: str | None = None,
        scheduler: bool = False,
        health_check_file: str | None = None,
        batch_config: dict | None = None,
        lease: float | None = None,
        block_ms: int = 1000,
        flush_interval: float = 0.002,
    ):
        self.alias = backend_alias or settings.VTASKS_BACKEND or "default"
        backend = task_backends[self.alias]
        if not isinstance(backend, VTasksBackend):
            raise TypeError(
                f"Task backend {self.alias!r} ({type(backend).__name__}) is not a vtasks backend: "
                "a worker needs TASKS[...]['BACKEND'] = django_vtasks.backends.valkey."
                "ValkeyTaskBackend or django_vtasks.backends.postgres.PostgresTaskBackend."
            )
        self.backend = backend
        self.broker = backend.broker
        self.queues = list(queues or default_queues(self.alias))
        self.concurrency = max(1, int(concurrency or settings.VTASKS_CONCURRENCY))
        self.worker_id = worker_id or default_worker_id()
        self.scheduler = scheduler
        self.health_check_file = health_check_file or settings.VTASKS_HEALTH_CHECK_FILE
        self.batch_config = dict(
            batch_config if batch_config is not None else settings.VTASKS_BATCH_QUEUES or {}
        )
        self.lease = float(lease or settings.VTASKS_LEASE)
        self.lease_ms = max(100, int(self.lease * 1000))
        self.result_ttl_ms = self.backend.result_ttl_ms
        threads = int(settings.VTASKS_SYNC_THREADS or self.concurrency)
        self.executor = ThreadPoolExecutor(
            max_workers=max(1, threads), thread_name_prefix="vtasks-sync"
        )
        self.batch_queues = [q for q in self.queues if q in self.batch_config]
        self.plain_queues = [q for q in self.queues if q not in self.batch_config]
        self.broker.check_queues(self.plain_queues)  # one fetch reads them all
        #: store a RUNNING result when a task starts (else get_result reads RUNNING from the
        #: queue record; retried tasks always store one)
        self.track_running = bool(self.backend.options.get("TRACK_RUNNING", False))

        # the parts
        self.slots = Slots(self.concurrency)
        self.fetcher = Fetcher(self, block_ms)
        self.jobs = JobRunner(self)
        self.acks = AckBatcher(self, flush_interval)
        self.heartbeat = Heartbeat(
            self.broker,
            self.worker_id,
            self.lease,
            self.lease_ms,
            self.slots,
            self.jobs.cancel_requested,
            self.jobs.overdue,
        )
        self.schedules = ScheduleRegistrar(self)

        self._tasks: set[asyncio.Task] = set()
        # asyncio.Event binds to a loop on first use only, so stop() is safe before run()
        self._stop_event = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._signals = 0
        self._last_touch = 0.0
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
        logger.info(
            "worker %s starting: backend=%s (%s) queues=%s concurrency=%d lease=%.1fs%s",
            self.worker_id,
            self.alias,
            self.broker.kind,
            self.queues,
            self.concurrency,
            self.lease,
            " scheduler" if self.scheduler else "",
        )
        if skip_unprinted_task_logs():
            logger.debug("django.tasks INFO records are printed by no handler: not built")
        self.heartbeat.start()
        background = [asyncio.create_task(self.acks.run(), name="vtasks-acks")]
        try:
            await self._startup()
            if not self.broker.supports_server_timers:
                background.append(asyncio.create_task(Maintenance(self).run()))
            if self.backend.outbox:
                background.append(asyncio.create_task(OutboxRelay(self).run()))
            if self.scheduler and self.schedules.reconcile_every > 0:
                background.append(asyncio.create_task(self.schedules.reconcile()))
            consumers = []
            if self.plain_queues:
                consumers.append(
                    asyncio.create_task(self.fetcher.run(self.plain_queues), name="vtasks-fetch")
                )
            for queue in self.batch_queues:
                conf = self.batch_config.get(queue) or {}
                consumers.append(
                    asyncio.create_task(
                        self.fetcher.run_batch(
                            queue,
                            max(1, int(conf.get("count", 100))),
                            float(conf.get("timeout", 1.0)),
                        )
                    )
                )
            await asyncio.gather(*consumers)
            # drain: in-flight tasks, then their acks
            if self._tasks:
                logger.info(
                    "worker %s draining %d in-flight task(s)", self.worker_id, len(self._tasks)
                )
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            flusher = background.pop(0)
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self.acks.flush(final=True)
        finally:
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.heartbeat.stop()
            self.executor.shutdown(wait=False, cancel_futures=True)
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            try:
                await self.broker.aclose()
            except Exception:
                logger.debug("closing the broker failed", exc_info=True)
            self._done.set()
            logger.info(
                "worker %s stopped (%d processed, %d failed)",
                self.worker_id,
                self.processed,
                self.failed,
            )

    def request_stop(self) -> None:
        """Stop fetching; run() returns once in-flight tasks finished and were acked.
        Safe at any time, also before run() started (run() then returns at once)."""
        self._stop_event.set()
        self.slots.wake()

    async def stop(self) -> None:
        """request_stop(), then wait for run() to return (if it was started)."""
        self.request_stop()
        if self._started:
            await self._done.wait()

    def _on_signal(self, sig) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info(
                "worker %s: %s received, finishing in-flight tasks (again to exit now)",
                self.worker_id,
                signal.Signals(sig).name,
            )
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
                for q in list(self.slots.inflight):
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
                    await self.schedules.register()
                await self._apply_dlq_cap()
                await self._apply_rate_limits()
                self.progress()
                log.ok()
                return
            except Exception as e:
                if self.stopping:
                    return
                log.failed(e, backoff)
                await self.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _apply_dlq_cap(self) -> None:
        if not hasattr(django_settings, "VTASKS_DLQ_CAP") or not self.broker.supports_dlq_cap:
            return  # unset: keep the server's config; else the broker got it when built
        try:
            await self.broker.aset_dlq_cap(django_settings.VTASKS_DLQ_CAP)
        except Exception as e:  # e.g. CONFIG disabled on a managed server
            logger.warning(
                "could not apply VTASKS_DLQ_CAP=%s: %s", django_settings.VTASKS_DLQ_CAP, e
            )

    async def _apply_rate_limits(self) -> None:
        try:
            await ratelimits.apply(self.broker, self.backend.options)
        except Exception as e:  # e.g. an ACL user without VT.RATELIMIT: serve anyway, and say so
            logger.warning("could not apply OPTIONS['RATE_LIMITS'] of %s: %s", self.alias, e)

    # ---- what the parts share -------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self._stop_event.is_set()

    @property
    def busy_slots(self) -> int:
        """Task slots in use (a batch takes one); ``concurrency`` is the total."""
        return self.slots.busy

    @property
    def dropped_stale(self) -> int:
        """Fetched tasks dropped because their lease may have lapsed (Fetcher.lease_lapsed)."""
        return self.fetcher.dropped_stale

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the worker is asked to stop."""
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except TimeoutError:
            pass

    def progress(self) -> None:
        """Touch the health-check file (at most once a second)."""
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

    def spawn(self, coro) -> None:
        """Run ``coro`` as a task the worker drains before it stops."""
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
