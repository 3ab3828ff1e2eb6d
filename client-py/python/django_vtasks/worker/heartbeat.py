"""The heartbeat: a thread that extends the leases of the tasks a worker holds every lease/4.

A thread, not a coroutine, so a busy event loop (a task that blocks it) never makes a live
worker's tasks look abandoned."""

from __future__ import annotations

import logging
import threading

from ..broker import Broker
from .slots import Slots

logger = logging.getLogger("django_vtasks.worker")


class Heartbeat:
    def __init__(self, broker: Broker, worker_id: str, lease: float, lease_ms: int, slots: Slots):
        self.broker = broker
        self.worker_id = worker_id
        self.interval = max(0.05, lease / 4)
        self.lease_ms = lease_ms
        self.slots = slots
        self._stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._run, name="vtasks-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for queue, n in list(self.slots.inflight.items()):
                if n <= 0:
                    continue
                try:
                    self.broker.extend(queue, self.worker_id, self.lease_ms)
                except Exception:
                    logger.warning("extending leases on %s failed", queue, exc_info=True)
