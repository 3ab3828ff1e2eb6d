"""Exceptions a task raises or sees to control its own run: ``Retry`` (run me again later),
``TaskCancelled`` (the error of a task cancelled with ``backend.cancel()``), and
``TimeLimitExceeded`` (its hard time limit). How the worker settles each is stated once, in
:class:`django_vtasks.retry.RetryPolicy`."""

from __future__ import annotations

from . import _native

__all__ = ["CANCELLED", "Retry", "TaskCancelled", "TimeLimitExceeded", "is_cancel_error"]

#: the reason a cancelled task carries in the broker: ``cancelled`` or ``cancelled: <reason>``
#: (one definition, vtasks-protocol's cancel.rs)
CANCELLED: str = _native.CANCELLED


def is_cancel_error(error: str) -> bool:
    """Whether a dead-letter reason is a cancellation's (PROTOCOL.md, VT.CANCEL)."""
    return error == CANCELLED or error.startswith(CANCELLED + ": ")


class Retry(Exception):
    """Raise from a task to run it again after ``delay`` seconds (None: the task's backoff),
    like Celery's ``self.retry(countdown=...)``. It uses the task's ``retries`` budget: once the
    retries are used up the task fails with this exception as its error. ``retry_on`` does not
    filter it (raising it asks for a retry)."""

    def __init__(self, delay: float | None = None, reason: str = ""):
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must be >= 0 seconds")
        self.delay = delay
        self.reason = reason
        super().__init__(reason or (f"retry in {delay:g}s" if delay is not None else "retry"))


class TaskCancelled(Exception):
    """A task was cancelled (``backend.cancel(result_id)``): the error of its FAILED result. A
    running async task is cancelled with it; a sync task sees ``context.cancel_requested`` and
    may raise it itself. Never retried."""


class TimeLimitExceeded(TimeoutError):
    """A task ran past its hard ``time_limit``: an async task is cancelled, a sync task is
    abandoned by the worker (its thread runs on; its late result is discarded). Retried like
    any other failure while the task has retries."""
