"""Client-driven timers, for brokers without ``supports_server_timers`` (Postgres): fire due
schedules (exactly once across workers: the broker arbitrates) and rescue expired leases."""

from __future__ import annotations

import asyncio
import logging
import time

from ..diagnostics import RetryLog

logger = logging.getLogger("django_vtasks.worker")


#: rows one vtasks_maintain call purges at most, per kind (the LIMIT of its purges in the
#: native migration that defines it; client-py/tests/test_pg_maintenance.py checks they agree)
PURGE_BATCH = 10_000
#: extra calls per period while calls purge full batches (results expiring faster than one call
#: a period purges: 10,000 per 5 s is below what one worker acks)
MAX_CATCH_UP = 50
PURGED = ("results_purged", "uniques_purged", "ticks_purged")


class Maintenance:
    def __init__(self, worker):
        self.w = worker

    async def _maintain(self) -> None:
        """One maintain call, and more at once while the last one purged a full batch of some
        kind (so expired rows never pile up faster than they are purged)."""
        w = self.w
        done = await w.broker.amaintain()
        for _ in range(MAX_CATCH_UP):
            if not done or w.stopping or max(done.get(k, 0) for k in PURGED) < PURGE_BATCH:
                return
            done = await w.broker.amaintain()

    async def run(self) -> None:
        w = self.w
        last_maintain = 0.0
        log = RetryLog(logger, "Postgres maintenance (lease rescue, schedules)")
        backoff = 0.0
        while not w.stopping:
            try:
                if w.scheduler:
                    n = await w.broker.atick()
                    if n:
                        logger.debug("schedules fired %d task(s)", n)
                now = time.monotonic()
                if now - last_maintain >= max(0.5, min(5.0, w.lease / 4)):
                    last_maintain = now
                    await self._maintain()
                log.ok()
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                backoff = min(max(1.0, backoff * 2), 30.0)
                log.failed(e, backoff)
            await w.sleep(backoff or (0.25 if w.scheduler else 1.0))
