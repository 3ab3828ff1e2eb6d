"""The heartbeat: a thread that extends the leases of the tasks a worker holds every lease/4.

A thread, not a coroutine, so a busy event loop (a task that blocks it) never makes a live
worker's tasks look abandoned. Where the broker supports cancel, the same call leaves the leases
of cancelled tasks alone and names them (VT.EXTEND ... WITHCANCELLED): the job runner is told on
the loop, so a cancel reaches a running task within lease/4 with no extra round trip."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from ..broker import Broker
from .slots import Slots

logger = logging.getLogger("django_vtasks.worker")


class Heartbeat:
    def __init__(
        self,
        broker: Broker,
        worker_id: str,
        lease: float,
        lease_ms: int,
        slots: Slots,
        on_cancelled: Callable[[str, list[str]], None] | None = None,
        overdue: Callable[[float], list[tuple[str, str, float]]] | None = None,
    ):
        self.broker = broker
        #: called on the loop with (queue, ids) of cancelled tasks this worker holds
        self.on_cancelled = on_cancelled
        #: runs past their hard time limit that the loop could not end (JobRunner.overdue)
        self.overdue = overdue
        self._loop: asyncio.AbstractEventLoop | None = None
        self.worker_id = worker_id
        self.interval = max(0.05, lease / 4)
        self.lease_ms = lease_ms
        self.slots = slots
        self._stop = threading.Event()

    def start(self) -> None:
        """Start the thread (from the worker's running loop)."""
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, name="vtasks-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._cancel_overdue()
            for queue, n in list(self.slots.inflight.items()):
                if n <= 0:
                    continue
                try:
                    if self.on_cancelled is None or not self.broker.supports_cancel:
                        self.broker.extend(queue, self.worker_id, self.lease_ms)
                        continue
                    _, cancelled = self.broker.extend_cancelled(
                        queue, self.worker_id, self.lease_ms
                    )
                    if cancelled and self._loop is not None:
                        self._loop.call_soon_threadsafe(self.on_cancelled, queue, cancelled)
                except Exception:
                    logger.warning("extending leases on %s failed", queue, exc_info=True)

    def _cancel_overdue(self) -> None:
        """A run past its hard time limit by a heartbeat interval is one the event loop could
        not end (an async task blocking it): cancel it in the broker, so its lease is extended no
        more and it ends, dead-lettered as cancelled, when the lease runs out."""
        if self.overdue is None or not self.broker.supports_cancel:
            return
        for queue, id, limit in self.overdue(self.interval):
            logger.error(
                "task %s on %s ran past its time limit (%gs) and the worker could not end it "
                "(is an async task blocking the event loop?): cancelled, its lease runs out",
                id,
                queue,
                limit,
            )
            try:
                self.broker.cancel(queue, id, f"time limit of {limit:g}s exceeded")
            except Exception:
                logger.warning("cancelling overdue task %s failed", id, exc_info=True)
                continue
            if self.on_cancelled is not None and self._loop is not None:
                # its late result must not be stored as a success (JobRunner._ack_after_cancel)
                self._loop.call_soon_threadsafe(self.on_cancelled, queue, [id])
