"""The schedule registrar of a worker started with ``scheduler=True``: puts VTASKS_SCHEDULE into
the broker (which fires the ticks), removes the entries settings no longer have, and checks
every VTASKS_SCHEDULE_RECONCILE seconds that the broker still has them."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import cast

from django.utils.json import normalize_json

from ..conf import settings
from ..envelope import build_envelope, encode_envelope
from ..results import resolve_task
from ..routes import route
from ..scheduler import schedule_spec

logger = logging.getLogger("django_vtasks.worker")


class ScheduleRegistrar:
    def __init__(self, worker):
        self.w = worker
        #: seconds between two checks that the broker still has this scheduler's schedules
        self.reconcile_every = float(settings.VTASKS_SCHEDULE_RECONCILE or 0)

    def entries(self) -> dict[str, tuple[str, bytes, str | None, int | None, int]]:
        """{name: (queue, payload, cron, every_ms, priority)} from VTASKS_SCHEDULE."""
        alias = self.w.alias
        out = {}
        for name, entry in (settings.VTASKS_SCHEDULE or {}).items():
            try:
                task = route(resolve_task(entry["task"], backend=alias, strict=True))
                queue = entry.get("queue") or task.queue_name
                priority = int(entry.get("priority", task.priority))
                args = cast(list, normalize_json(list(entry.get("args") or [])))
                kwargs = cast(dict, normalize_json(dict(entry.get("kwargs") or {})))
                env = build_envelope(task, args, kwargs, "", alias)
                env["queue"] = queue
                env["priority"] = priority
                env["ts"] = None  # enqueued_at comes from the fired task
                env["schedule"] = name
                cron, every_ms = schedule_spec(entry["schedule"])
                out[name] = (queue, encode_envelope(env), cron, every_ms, priority)
            except Exception:
                logger.exception("VTASKS_SCHEDULE entry %r is invalid; skipped", name)
        return out

    async def register(self) -> None:
        broker = self.w.broker
        entries = self.entries()
        await self._set(entries)
        # entries removed from settings (or moved to another queue) stop firing
        queues = set(await broker.aqueues()) | set(self.w.queues) | {e[0] for e in entries.values()}
        for queue in sorted(queues):
            for s in await broker.aschedule_list(queue):
                if s.name not in entries or entries[s.name][0] != queue:
                    await broker.aschedule_del(queue, s.name)
                    logger.info("schedule %s removed from %s", s.name, queue)

    async def _set(self, entries: dict, reconcile: bool = False) -> int:
        """SET the entries the broker lacks or has with another spec/payload: one LIST per
        queue, a SET only where something differs. Returns the number set."""
        broker = self.w.broker
        by_queue: dict[str, list] = defaultdict(list)
        for name, entry in entries.items():
            by_queue[entry[0]].append((name, entry))
        n = 0
        for queue, named in by_queue.items():
            current = {s.name: s for s in await broker.aschedule_list(queue)}
            for name, (_, payload, cron, every_ms, priority) in named:
                have = current.get(name)
                spec = cron if cron is not None else str(every_ms)
                if have is not None and have.payload == payload and have.spec == spec:
                    continue
                await broker.aschedule_set(
                    queue, name, payload, cron=cron, every_ms=every_ms, priority=priority
                )
                n += 1
                what = f"cron {cron}" if cron else f"every {every_ms}ms"
                if reconcile:
                    logger.warning(
                        "schedule %s was %s on %s (the broker lost its data, or "
                        "another scheduler has other settings): registered again "
                        "(%s)",
                        name,
                        "missing" if have is None else "different",
                        queue,
                        what,
                    )
                else:
                    logger.info("schedule %s registered on %s (%s)", name, queue, what)
        return n

    async def reconcile(self) -> None:
        """Schedules live in the broker: one that restarted without persistence (or was
        flushed) has none, and nothing would fire. Check every VTASKS_SCHEDULE_RECONCILE seconds
        (one SCHEDULE LIST per queue) and register again what is missing."""
        w = self.w
        entries = self.entries()
        while not w.stopping:
            await w.sleep(self.reconcile_every)
            if w.stopping:
                return
            try:
                await self._set(entries, reconcile=True)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("checking the schedules failed: %s", e)
