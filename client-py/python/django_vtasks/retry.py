"""RetryPolicy: the one statement of how a failed task is retried.

A task fails; while its ``retries`` are not used up it runs again after ``backoff`` seconds,
doubled per attempt (1 s, 2 s, 4 s ...), else it is dead-lettered. Only the exceptions of
``retry_on`` are retried when the task names them (others fail at once); a task that raises
``Retry(delay=...)`` is retried after that delay (within the same ``retries``); a cancelled task
(``TaskCancelled``, or any failure after ``backend.cancel()``) is never retried. The broker
enforces a ceiling too: an enqueue asks for ``max_attempts`` = retries + 1 + CRASH_ATTEMPTS, so
a task whose worker was killed mid-run (which costs an attempt without a failure) still gets its
retries.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.tasks import Task

from .exceptions import Retry, TaskCancelled

#: extra attempts a retried task keeps for crash recovery (a worker killed mid-task)
CRASH_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: failures retried this many times (0: fail fast, the default)
    retries: int = 0
    #: seconds before the first retry, doubled per attempt
    backoff: float = 1.0
    #: the exceptions retried (None: every exception); ``@task(retry_on=(ConnectionError,))``
    retry_on: tuple[type[BaseException], ...] | None = None

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
        retry_on = getattr(task, "retry_on", None)
        return cls(int(retries or 0), float(backoff), tuple(retry_on) if retry_on else None)

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

    def retry_ms_after(
        self, attempt: int, error: BaseException, cancelled: bool = False
    ) -> int | None:
        """Milliseconds until the next run after ``attempt`` failed with ``error``; None when it
        is not retried (dead-letter it): retries used up, a cancelled task, or an exception
        outside ``retry_on``. ``Retry(delay=...)`` chooses the delay."""
        if cancelled or isinstance(error, TaskCancelled) or attempt > self.retries:
            return None
        if isinstance(error, Retry):
            return self.retry_ms(attempt) if error.delay is None else int(error.delay * 1000)
        if self.retry_on is not None and not isinstance(error, self.retry_on):
            return None
        return self.retry_ms(attempt)

    def retry_ms(self, attempt: int) -> int | None:
        """Milliseconds until the next run after ``attempt`` (1 = the first run) failed; None
        when the retries are used up (dead-letter it)."""
        if attempt > self.retries:
            return None
        return int(self.backoff * 1000 * (2 ** (attempt - 1)))


def _ceiling(retries: int) -> int | None:
    return retries + 1 + CRASH_ATTEMPTS if retries else None
