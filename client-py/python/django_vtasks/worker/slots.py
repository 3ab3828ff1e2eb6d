"""The worker's task slots: ``concurrency`` of them, one per running task (a batch takes one),
and the tasks it holds per queue (what the heartbeat extends, what a second signal hands back)."""

from __future__ import annotations

import asyncio
from collections import defaultdict


class Slots:
    def __init__(self, concurrency: int):
        self.concurrency = concurrency
        #: slots in use
        self.busy = 0
        #: leased tasks per queue (read by the heartbeat thread)
        self.inflight: dict[str, int] = defaultdict(int)
        # asyncio.Event binds to a loop on first use only, so a Worker can be built off-loop
        self.freed = asyncio.Event()

    @property
    def free(self) -> int:
        return self.concurrency - self.busy

    def take(self, queue: str, n: int = 1) -> None:
        """``n`` tasks of ``queue`` start: a slot each, and leases held."""
        self.busy += n
        self.inflight[queue] += n

    def release(self, n: int = 1) -> None:
        """``n`` slots are free again (their tasks finished or were handed back)."""
        self.busy -= n
        self.freed.set()

    def settled(self, queue: str, n: int = 1) -> None:
        """``n`` leases of ``queue`` ended (acked or failed in the broker)."""
        self.inflight[queue] -= n

    async def wait_free(self) -> None:
        """Return once a slot is free (or wake() was called)."""
        self.freed.clear()
        if self.free <= 0:
            await self.freed.wait()

    def wake(self) -> None:
        """Wake whoever waits for a slot (the worker is stopping)."""
        self.freed.set()
