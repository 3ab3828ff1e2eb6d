"""The worker's part of the transactional outbox (a Valkey backend with OPTIONS["OUTBOX"]): relay
the tasks that committed transactions left behind because Valkey could not take them at commit
time (or the committing process died first). Every worker of the backend runs it; the rows'
SKIP LOCKED locks let them share the work and the relay's markers keep each task to one send."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from django.db import close_old_connections

from ..diagnostics import RetryLog
from ..outbox import relay

logger = logging.getLogger("django_vtasks.worker")

#: seconds between looks at an empty outbox (rows are normally relayed at commit)
IDLE_INTERVAL = 1.0


class OutboxRelay:
    def __init__(self, worker):
        self.w = worker
        # the ORM is synchronous: one thread, so one database connection, for the relay
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vtasks-outbox")

    def _relay_once(self) -> int:
        close_old_connections()
        return len(relay.relay(self.w.backend))

    async def run(self) -> None:
        w = self.w
        loop = asyncio.get_running_loop()
        log = RetryLog(logger, "outbox relay (tasks committed while Valkey was unreachable)")
        backoff = 0.0
        try:
            while not w.stopping:
                try:
                    n = await loop.run_in_executor(self._thread, self._relay_once)
                    if n:
                        logger.info("outbox: relayed %d committed task(s) to Valkey", n)
                    log.ok()
                    backoff = 0.0
                    if n >= relay.RELAY_BATCH:
                        continue  # more are waiting
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    backoff = min(max(1.0, backoff * 2), 30.0)
                    log.failed(e, backoff)
                await w.sleep(backoff or IDLE_INTERVAL)
        finally:
            self._thread.submit(close_old_connections)
            self._thread.shutdown(wait=False)
