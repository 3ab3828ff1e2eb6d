"""TimeLimits: the one statement of how long a run may take.

``time_limit`` (hard): at that many seconds the worker ends the run: an async task is cancelled,
a sync task is abandoned (a thread cannot be killed: it runs on to its end, holding its worker
slot so the worker never runs more threads than its concurrency; its late result is discarded),
and the run fails with ``TimeLimitExceeded`` (retried like any failure while retries are left).
``soft_time_limit``: from then on ``context.soft_time_limit_exceeded`` is True, for the task to
wind down before the hard limit. A task's options win over ``VTASKS_TIME_LIMITS[queue]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.tasks import Task


@dataclass(frozen=True, slots=True)
class TimeLimits:
    #: seconds until the run is ended (None: no limit)
    hard: float | None = None
    #: seconds until context.soft_time_limit_exceeded (None: none)
    soft: float | None = None

    @classmethod
    def of(cls, task: Task, queue: str, queue_settings: dict | None = None) -> TimeLimits:
        if queue_settings is None:
            from .conf import settings

            queue_settings = settings.VTASKS_TIME_LIMITS or {}
        conf = queue_settings.get(queue) or {}
        hard = getattr(task, "time_limit", None)
        if hard is None:
            hard = conf.get("time_limit")
        soft = getattr(task, "soft_time_limit", None)
        if soft is None:
            soft = conf.get("soft_time_limit")
        return cls(float(hard) if hard else None, float(soft) if soft else None)

    def __bool__(self) -> bool:
        return self.hard is not None or self.soft is not None
