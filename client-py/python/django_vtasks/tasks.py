"""`VTask`: Django's Task with the vtasks options (unique, retries), and the `task` decorator.

Django 6.1 forwards extra ``@task(...)`` kwargs to the backend's ``task_class``, so with a vtasks
backend ``@django.tasks.task(retries=3)`` works too; on 6.0 use ``django_vtasks.task``.
"""

from dataclasses import dataclass, replace
from typing import Any

from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, DEFAULT_TASK_QUEUE_NAME, Task
from django.tasks.base import DEFAULT_TASK_PRIORITY

_UNSET: Any = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class VTask(Task):
    #: True: one pending run per (task, args, kwargs); a string: an explicit unique key
    unique: bool | str = False
    #: seconds the unique key is held at most (released early when the task finishes)
    unique_ttl: int = 3600
    #: failures retried this many times (None: the queue's VTASKS_RETRIES entry, else 0)
    retries: int | None = None
    #: first retry delay in seconds, doubled per attempt (None: queue setting, else 1.0)
    retry_backoff: float | None = None
    #: store no result for this task (like Celery's ignore_result; result_store.py)
    ignore_result: bool = False
    #: only these exceptions are retried (None: every exception; retry.RetryPolicy)
    retry_on: tuple[type[BaseException], ...] | None = None
    #: seconds a run may take: then an async task is cancelled, a sync one abandoned, and the
    #: run fails with TimeLimitExceeded (None: VTASKS_TIME_LIMITS[queue], else no limit)
    time_limit: float | None = None
    #: seconds after which ``context.soft_time_limit_exceeded`` turns True (None: the queue's)
    soft_time_limit: float | None = None

    def using(
        self,
        *,
        priority=None,
        queue_name=None,
        run_after=None,
        backend=None,
        unique=_UNSET,
        unique_ttl=None,
        retries=_UNSET,
        retry_backoff=_UNSET,
        time_limit=_UNSET,
        soft_time_limit=_UNSET,
    ):
        new: Task = Task.using(
            self, priority=priority, queue_name=queue_name, run_after=run_after, backend=backend
        )
        changes = {}
        if unique is not _UNSET:
            changes["unique"] = unique
        if unique_ttl is not None:
            changes["unique_ttl"] = unique_ttl
        if retries is not _UNSET:
            changes["retries"] = retries
        if retry_backoff is not _UNSET:
            changes["retry_backoff"] = retry_backoff
        if time_limit is not _UNSET:
            changes["time_limit"] = time_limit
        if soft_time_limit is not _UNSET:
            changes["soft_time_limit"] = soft_time_limit
        return replace(new, **changes) if changes else new


def task_options(task: Task) -> dict[str, Any] | None:
    """The VTask options (unique, unique_ttl, retries, retry_backoff, and time_limit /
    soft_time_limit when set) an enqueue records in its envelope ("options"), or None when they
    are all VTask's defaults (an envelope without options runs with the module-level task's
    own). What ``.using(retries=0)`` asked for travels with the
    task: the worker re-imports the task by path, whose module-level options may differ."""
    # (per task on the enqueue and result paths: no dict unless an option is set)
    if not isinstance(task, VTask):  # a plain django.tasks Task
        return None
    unique, ttl, retries, backoff = task.unique, task.unique_ttl, task.retries, task.retry_backoff
    limit, soft = task.time_limit, task.soft_time_limit
    if (
        unique is False
        and ttl == 3600
        and retries is None
        and backoff is None
        and limit is None
        and soft is None
    ):
        return None
    options = {"unique": unique, "unique_ttl": ttl, "retries": retries, "retry_backoff": backoff}
    if limit is not None:
        options["time_limit"] = limit
    if soft is not None:
        options["soft_time_limit"] = soft
    return options


def task(
    function=None,
    *,
    priority=DEFAULT_TASK_PRIORITY,
    queue_name=DEFAULT_TASK_QUEUE_NAME,
    backend=DEFAULT_TASK_BACKEND_ALIAS,
    takes_context=False,
    **kwargs,
):
    """Like ``django.tasks.task`` but always builds a VTask (unique/retries options)."""
    if "run_after" in kwargs:
        raise TypeError(
            "run_after cannot be defined statically with the @task decorator. "
            "Use .using(run_after=...) to set it dynamically."
        )

    def wrapper(f):
        # run_after given explicitly: Django 6.0's Task declares it without a default
        return VTask(
            func=f,
            priority=priority,
            queue_name=queue_name,
            backend=backend,
            takes_context=takes_context,
            run_after=None,
            **kwargs,
        )

    return wrapper(function) if function else wrapper
