"""RetryPolicy: the one statement of how a failed task is retried.

A task fails; while its ``retries`` are not used up it runs again after ``backoff`` seconds,
doubled per attempt (1 s, 2 s, 4 s ...), else it is dead-lettered. The broker enforces a ceiling
too: an enqueue asks for ``max_attempts`` = retries + 1 + CRASH_ATTEMPTS, so a task whose worker
was killed mid-run (which costs an attempt without a failure) still gets its retries.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.tasks import Task

#: extra attempts a retried task keeps for crash recovery (a worker killed mid-task)
CRASH_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: failures retried this many times (0: fail fast, the default)
    retries: int = 0
    #: seconds before the first retry, doubled per attempt
    backoff: float = 1.0

    @classmethod
    def of(cls, task: Task, queue: str, queue_settings: dict | None = None) -> RetryPolicy:
        """The policy of ``task`` on ``queue``: the task's options (``@task(retries=3,
        retry_backoff=2.0)``, ``.using(...)``) over VTASKS_RETRIES[queue] (``queue_settings``:
        that setting, when the caller read it already) over the defaults."""
        if queue_settings is None:
            from .conf import settings

            queue_settings = settings.VTASKS_RETRIES or {}
        conf = queue_settings.get(queue) or {}
        retries = getattr(task, "retries", None)
        if retries is None:
            retries = conf.get("retries", 0)
        backoff = getattr(task, "retry_backoff", None)
        if backoff is None:
            backoff = conf.get("backoff", 1.0)
        return cls(int(retries or 0), float(backoff))

    @property
    def max_attempts(self) -> int | None:
        """The broker's attempt ceiling for an enqueue (None: the broker's default)."""
        return _ceiling(self.retries)

    @staticmethod
    def max_attempts_of(task: Task, queue: str, queue_settings: dict) -> int | None:
        """``RetryPolicy.of(task, queue, queue_settings).max_attempts`` without building the
        policy (every enqueue asks)."""
        retries = getattr(task, "retries", None)
        if retries is None:
            retries = (queue_settings.get(queue) or {}).get("retries", 0)
        return _ceiling(int(retries or 0))

    def retry_ms(self, attempt: int) -> int | None:
        """Milliseconds until the next run after ``attempt`` (1 = the first run) failed; None
        when the retries are used up (dead-letter it)."""
        if attempt > self.retries:
            return None
        return int(self.backoff * 1000 * (2 ** (attempt - 1)))


def _ceiling(retries: int) -> int | None:
    return retries + 1 + CRASH_ATTEMPTS if retries else None
