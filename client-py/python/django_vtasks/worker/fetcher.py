"""The fetcher: takes tasks from the broker for the free slots and hands them to the job runner.

One fetch loop serves the non-batch queues in the given order with VT.FETCHBATCH (or the Postgres
equivalent) for exactly as many tasks as there are free slots, parked server-side while idle;
each batch queue has its own loop, which gathers up to ``count`` tasks for ``timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..broker import Delivery
from ..diagnostics import RetryLog

logger = logging.getLogger("django_vtasks.worker")


class Fetcher:
    def __init__(self, worker, block_ms: int | None):
        self.w = worker
        self.block_ms = block_ms
        # Deliveries read later than lease - margin after their fetch was sent are dropped
        # (their lease may have expired: see lease_lapsed). A blocked fetch must return well
        # before that, so the plain fetch loop blocks at most half of it.
        lease_s = worker.lease_ms / 1000
        self.lease_margin = min(2.0, lease_s * 0.2)
        self.fetch_block_ms = block_ms
        cap = max(1, int((lease_s - self.lease_margin) * 500))
        if block_ms is not None and (block_ms <= 0 or block_ms > cap):
            self.fetch_block_ms = cap
        self.dropped_stale = 0

    async def run(self, queues: list[str]) -> None:
        """Fetch from ``queues`` (the non-batch ones, in order) until the worker stops."""
        w = self.w
        slots = w.slots
        backoff = 0.1
        log = RetryLog(logger, f"fetch from {queues}")
        while not w.stopping:
            free = slots.free
            if free <= 0:
                await slots.wait_free()
                continue
            sent = time.monotonic()
            try:
                deliveries = await w.broker.afetch(
                    queues, w.worker_id, free, w.lease_ms, self.fetch_block_ms
                )
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.failed(e, backoff)
                await w.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            log.ok()
            backoff = 0.1
            w.progress()
            if deliveries and self.lease_lapsed(sent, deliveries, "fetched"):
                continue
            if deliveries:
                for d in deliveries:
                    slots.take(d.queue)
                try:
                    await w.jobs.start(deliveries, sent)
                except Exception:
                    logger.exception("starting fetched tasks failed")

    def lease_lapsed(self, sent: float, deliveries: list[Delivery], what: str) -> bool:
        """True when the leases of ``deliveries`` (granted no earlier than ``sent``, the
        monotonic time their fetch was sent) may have expired: e.g. the process was stopped
        (SIGSTOP, VM pause) with a fetch parked in the server, whose reply it reads only on
        resume. The server re-queued (and maybe redelivered) them at expiry: running them would
        duplicate work. They are dropped, neither run nor acked (a late ack would be a no-op)."""
        lease_s = self.w.lease_ms / 1000
        elapsed = time.monotonic() - sent
        if elapsed <= lease_s - self.lease_margin:
            return False
        logger.warning(
            "dropping %d %s task(s) (%s): their fetch was sent %.1fs ago, longer than the lease "
            "(%.1fs) minus %.1fs: the broker re-queues them on lease expiry",
            len(deliveries),
            what,
            ", ".join(f"{d.queue}/{d.id}" for d in deliveries[:5])
            + (" ..." if len(deliveries) > 5 else ""),
            elapsed,
            lease_s,
            self.lease_margin,
        )
        self.dropped_stale += len(deliveries)
        return True

    async def run_batch(self, queue: str, count: int, timeout: float) -> None:
        """Gather up to ``count`` tasks of the batch queue ``queue`` (waiting at most
        ``timeout`` seconds after the first) and run them as one batch, in one slot."""
        w = self.w
        slots = w.slots
        backoff = 0.1
        while not w.stopping:
            if slots.free <= 0:
                await slots.wait_free()
                continue
            deliveries: list[Delivery] = []
            try:
                got = await w.broker.afetch([queue], w.worker_id, count, w.lease_ms, self.block_ms)
                w.progress()
                if not got:
                    continue
                deliveries.extend(got)
                slots.inflight[queue] += len(got)
                deadline = time.monotonic() + timeout
                while len(deliveries) < count and not w.stopping:
                    remaining = int((deadline - time.monotonic()) * 1000)
                    if remaining < 1:
                        break
                    more = await w.broker.afetch(
                        [queue], w.worker_id, count - len(deliveries), w.lease_ms, remaining
                    )
                    if more:
                        deliveries.extend(more)
                        slots.inflight[queue] += len(more)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.error("batch fetch from %s failed: %s", queue, e)
                await w.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                if not deliveries:
                    continue
            backoff = 0.1
            slots.busy += 1
            w.spawn(w.jobs.run_batch(queue, deliveries))
