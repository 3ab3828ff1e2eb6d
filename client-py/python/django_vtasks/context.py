"""The context a task with ``takes_context=True`` receives: Django's TaskContext (``attempt``,
``task_result``) and what a vtasks worker lets a task observe about its own run."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django.tasks.base import TaskContext, TaskError


class RunControl:
    """The worker's side of one run, shared with the task (set by the worker's loop, read by
    the task's thread: plain attribute writes and reads)."""

    __slots__ = (
        "cancel_requested",
        "deadline",
        "limit",
        "overdue",
        "soft_deadline",
        "soft_reached",
    )

    def __init__(self, time_limit: float | None = None, soft_time_limit: float | None = None):
        self.cancel_requested = False
        self.limit = time_limit
        self.deadline = self.soft_deadline = None
        if time_limit or soft_time_limit:
            now = time.monotonic()
            self.deadline = now + time_limit if time_limit else None
            self.soft_deadline = now + soft_time_limit if soft_time_limit else None
        #: set by the heartbeat when the run outlived its hard limit (see Heartbeat)
        self.overdue = False
        self.soft_reached = False


@dataclass(frozen=True, slots=True, kw_only=True)
class VTaskContext(TaskContext):  # type: ignore[misc]  # frozen in Django; django-stubs says not
    """``context.attempt`` (1 on the first run), ``context.previous_error``,
    ``context.cancel_requested``, ``context.soft_time_limit_exceeded``, ``context.time_left()``."""

    control: RunControl = field(default_factory=RunControl, repr=False)

    @property
    def previous_error(self) -> TaskError | None:
        """The error of the previous attempt (None on the first run, or when the previous
        attempt's worker died without recording one)."""
        errors = self.task_result.errors
        return errors[-1] if errors else None

    @property
    def cancel_requested(self) -> bool:
        """True once ``backend.cancel()`` asked this running task to stop (its lease is no
        longer extended: finish or raise ``TaskCancelled`` soon)."""
        return self.control.cancel_requested

    @property
    def soft_time_limit_exceeded(self) -> bool:
        """True once the task ran past its ``soft_time_limit`` (clean up and return)."""
        c = self.control
        if not c.soft_reached and c.soft_deadline is not None:
            c.soft_reached = time.monotonic() >= c.soft_deadline
        return c.soft_reached

    def time_left(self) -> float | None:
        """Seconds until the hard ``time_limit`` (None without one)."""
        d = self.control.deadline
        return None if d is None else max(0.0, d - time.monotonic())
