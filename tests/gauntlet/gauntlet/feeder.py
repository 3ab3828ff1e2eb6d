"""Continuous producer: enqueues `record` tasks at a steady rate, with deterministic ids.

A batch whose enqueue raised (the broker is restarting, connections were killed, a durable
enqueue's WAIT fell short...) is retried with the *same* ids until it is confirmed (enqueue is
idempotent by id while the task exists), so `fed` is exactly the set of ids the broker
acknowledged: conservation is checked against it. Such a task is in `resent`: if it already ran
and was acked before the retry, the retry enqueues it again (a producer's at-least-once).
"""

from __future__ import annotations

import threading
import time

from .hbroker import encode, envelope


class Feeder(threading.Thread):
    def __init__(
        self,
        hb,
        queue: str,
        run_id: str,
        rate: float = 200.0,
        batch: int = 10,
        ms: int = 0,
        func: str = "gauntlet_app.tasks.record",
        max_attempts: int | None = 10,
        limit: int | None = None,
        unique: bool = False,
        delay_ms: int = 0,
    ):
        super().__init__(daemon=True, name="gauntlet-feeder")
        self.hb = hb
        self.queue = queue
        self.run_id = run_id
        self.rate = rate
        self.batch = batch
        self.ms = ms
        self.func = func
        self.max_attempts = max_attempts
        self.limit = limit
        #: enqueue each task alone under UNIQUE u:<gid> (held 10 min, released when acked): the
        #: leak check then proves keys are released through crashes and redeliveries
        self.unique = unique
        #: run each task this long after its enqueue (it waits in the broker's delayed set)
        self.delay_ms = delay_ms
        self.fed: dict[str, float] = {}
        self.suppressed: list[str] = []
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.resent: set[str] = set()
        self.last_error = ""
        self.n = 0
        self._stop = threading.Event()
        self._paused = threading.Event()
        self.exc: BaseException | None = None

    def gid(self, n: int) -> str:
        return f"{self.run_id}-{n:07d}"

    def pause(self, on: bool = True):
        (self._paused.set if on else self._paused.clear)()

    def stop(self, timeout: float = 30.0):
        self._stop.set()
        self.join(timeout)

    def run(self):
        try:
            period = self.batch / self.rate
            next_t = time.monotonic()
            while not self._stop.is_set():
                if self.limit is not None and self.n >= self.limit:
                    return
                if self._paused.is_set():
                    time.sleep(0.02)
                    next_t = time.monotonic()
                    continue
                k = self.batch if self.limit is None else min(self.batch, self.limit - self.n)
                if self.unique:
                    k = 1
                gids = [self.gid(self.n + i) for i in range(k)]
                items = [
                    (g, encode(envelope(self.func, [g, self.ms], g, self.queue))) for g in gids
                ]
                t_fail = None
                while True:
                    try:
                        if self.unique:
                            ids = self.hb.enqueue(
                                self.queue,
                                items,
                                max_attempts=self.max_attempts,
                                unique=(f"u:{gids[0]}", 600_000),
                            )
                        elif self.delay_ms:
                            ids = self.hb.enqueue(
                                self.queue,
                                items,
                                max_attempts=self.max_attempts,
                                at_ms=int(time.time() * 1000) + self.delay_ms,
                            )
                        else:
                            ids = self.hb.enqueue(self.queue, items, max_attempts=self.max_attempts)
                        break
                    except Exception as e:  # retried with the same ids
                        self.errors += 1
                        self.error_kinds[type(e).__name__] = (
                            self.error_kinds.get(type(e).__name__, 0) + 1
                        )
                        self.resent.update(gids)
                        self.last_error = repr(e)[:300]
                        t_fail = t_fail or time.monotonic()
                        if self._stop.is_set() and time.monotonic() - t_fail > 15:
                            # give up on confirming this batch (it may still run: "unconfirmed")
                            return
                        time.sleep(0.05)
                t = time.time()
                for g, rid in zip(gids, ids, strict=True):
                    if rid is None:
                        # None after a retry = the first attempt landed (duplicate id): fed.
                        if self.errors:
                            self.fed[g] = t
                        else:
                            self.suppressed.append(g)
                    else:
                        self.fed[g] = t
                self.n += k
                next_t += period
                d = next_t - time.monotonic()
                if d > 0:
                    self._stop.wait(d)
                else:
                    next_t = time.monotonic()
        except BaseException as e:
            self.exc = e
