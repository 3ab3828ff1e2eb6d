"""Routing from settings (VTASKS_ROUTES): which queue and priority a task goes to, by its path,
so call sites do not repeat queue names::

    VTASKS_ROUTES = {
        "billing.tasks.*": {"queue": "billing"},
        "emails.tasks.send_*": {"queue": "emails", "priority": 10},
        "*.reports.*": {"queue": "slow", "priority": -10},
    }

Patterns are ``fnmatch`` patterns matched against the task's ``module_path``
(``"emails.tasks.send_welcome"``), in the order written: the first that matches wins. A route
applies to what the task left at Django's defaults: the queue of a task whose ``queue_name`` is
``"default"`` and the priority of a task whose ``priority`` is 0. A queue named on the task
(``@task(queue_name=...)``, ``.using(queue_name=...)``) or a priority given there wins over the
route. The system check ``django_vtasks.E020`` refuses a malformed entry when Django starts.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from django.core.signals import setting_changed
from django.tasks import DEFAULT_TASK_QUEUE_NAME
from django.tasks.base import DEFAULT_TASK_PRIORITY

from . import _native
from .conf import settings

#: (pattern, queue or None, priority or None) in setting order; None until first read
_ROUTES: list[tuple[str, str | None, int | None]] | None = None
#: id(task) -> (task, routed task): one routed Task object per task object, so the per-object
#: caches of the enqueue path (envelope templates) keep working; holds the task, so an id is
#: never reused while its entry exists
_ROUTED: dict[int, tuple[object, object]] = {}


def parse_routes(value) -> list[tuple[str, str | None, int | None]]:
    """VTASKS_ROUTES as (pattern, queue, priority) rules; ValueError says what is wrong."""
    if not value:
        return []
    if not isinstance(value, dict):
        raise ValueError(
            f"VTASKS_ROUTES must be a dict of task path pattern -> "
            f'{{"queue": ..., "priority": ...}}, not {type(value).__name__}'
        )
    rules = []
    max_name = _native.LIMITS["max_name_len"]
    lo, hi = _native.LIMITS["min_priority"], _native.LIMITS["max_priority"]
    for pattern, route in value.items():
        where = f"VTASKS_ROUTES[{pattern!r}]"
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{where}: the key must be a non-empty task path pattern")
        if not isinstance(route, dict) or not route:
            raise ValueError(f'{where} must be a dict like {{"queue": "emails", "priority": 10}}')
        unknown = set(route) - {"queue", "priority"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)} (use queue, priority)")
        queue = route.get("queue")
        if queue is not None and (
            not isinstance(queue, str) or not 0 < len(queue.encode()) <= max_name
        ):
            raise ValueError(f"{where}['queue'] must be a queue name of 1 to {max_name} bytes")
        priority = route.get("priority")
        if priority is not None and (
            isinstance(priority, bool) or not isinstance(priority, int) or not lo <= priority <= hi
        ):
            raise ValueError(f"{where}['priority'] must be an integer from {lo} to {hi}")
        rules.append((pattern, queue, priority))
    return rules


def _rules() -> list[tuple[str, str | None, int | None]]:
    global _ROUTES
    if _ROUTES is None:
        _ROUTES = parse_routes(settings.VTASKS_ROUTES)
    return _ROUTES


def match(path: str) -> tuple[str | None, int | None] | None:
    """(queue, priority) of the first route whose pattern matches ``path``, or None."""
    for pattern, queue, priority in _rules():
        if fnmatchcase(path, pattern):
            return queue, priority
    return None


def route(task):
    """``task`` with the queue and priority its route gives (the same object when no route
    applies). Called for every enqueue: one dict lookup once a task object was routed."""
    if not _rules():
        return task
    entry = _ROUTED.get(id(task))
    if entry is not None and entry[0] is task:
        return entry[1]
    routed = task
    hit = match(task.module_path)
    if hit is not None:
        queue, priority = hit
        changes: dict[str, Any] = {}
        if queue is not None and task.queue_name == DEFAULT_TASK_QUEUE_NAME:
            changes["queue_name"] = queue
        if priority is not None and task.priority == DEFAULT_TASK_PRIORITY:
            changes["priority"] = priority
        if changes:
            routed = task.using(**changes)
    if len(_ROUTED) >= 4096:
        _ROUTED.clear()
    _ROUTED[id(task)] = (task, routed)
    return routed


def route_checks(backend) -> list:
    """System-check messages about VTASKS_ROUTES for ``backend``: malformed entries, and queues
    the backend's QUEUES does not allow."""
    from django.core import checks

    try:
        rules = parse_routes(settings.VTASKS_ROUTES)
    except ValueError as e:
        return [
            checks.Error(
                str(e),
                hint='Example: VTASKS_ROUTES = {"app.tasks.send_*": {"queue": "emails", '
                '"priority": 10}}',
                id="django_vtasks.E020",
            )
        ]
    allowed = getattr(backend, "queues", None)
    if not allowed:
        return []
    bad = sorted({q for _, q, _ in rules if q is not None and q not in allowed})
    if not bad:
        return []
    return [
        checks.Error(
            f"Task backend {backend.alias!r}: VTASKS_ROUTES sends tasks to {bad}, which its QUEUES "
            f"{sorted(allowed)} does not allow: those enqueues would fail.",
            hint="Add the queues to TASKS[...]['QUEUES'], or fix the routes.",
            obj=backend,
            id="django_vtasks.E020",
        )
    ]


def _reset(setting, **kwargs) -> None:
    global _ROUTES
    if setting == "VTASKS_ROUTES":
        _ROUTES = None
        _ROUTED.clear()


setting_changed.connect(_reset, dispatch_uid="django_vtasks.routes")
