"""Client-driven timers, for brokers without ``supports_server_timers`` (Postgres): fire due
schedules (exactly once across workers: the broker arbitrates) and rescue expired leases."""

from __future__ import annotations

import asyncio
import logging
import time

from ..diagnostics import RetryLog

logger = logging.getLogger("django_vtasks.worker")


class Maintenance:
    def __init__(self, worker):
        self.w = worker

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
                    await w.broker.amaintain()
                log.ok()
                backoff = 0.0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                backoff = min(max(1.0, backoff * 2), 30.0)
                log.failed(e, backoff)
            await w.sleep(backoff or (0.25 if w.scheduler else 1.0))
