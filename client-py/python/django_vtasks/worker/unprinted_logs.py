"""Skip building log records that no handler would print.

Django's task signals have receivers that log every task at INFO on ``django.tasks``
(``log_task_started``, ``log_task_finished``). Under Django's default logging (``DEFAULT_LOGGING``:
the ``django`` logger at INFO, its console handler filtered by ``RequireDebugTrue``) those records
are built and then dropped whenever ``DEBUG`` is False: about a quarter of the worker's per-task
time in the profile (benchmarks/README.md, "Worker CPU per task"). When no handler could print
them, the worker raises the logger's level just above INFO; the signals are still sent, WARNING and
ERROR records (a failed task) still reach their handlers, and a project that prints them (DEBUG
True, or its own handler) is left alone."""

from __future__ import annotations

import logging

from django.conf import settings
from django.utils.log import RequireDebugTrue

TASK_LOGGER = "django.tasks"


def _prints(handler: logging.Handler, level: int) -> bool:
    if handler.level > level:
        return False
    if not settings.DEBUG and any(isinstance(f, RequireDebugTrue) for f in handler.filters):
        return False
    return True


def printable(name: str, level: int) -> bool:
    """Whether a record of ``level`` on logger ``name`` could reach a handler that prints it
    (the loggers' levels and the handlers' levels and RequireDebugTrue filters; no handler at
    all means logging's last resort, which prints WARNING and above)."""
    start = logging.getLogger(name)
    if not start.isEnabledFor(level):
        return False
    logger: logging.Logger | None = start
    found = False
    while logger is not None:
        for handler in logger.handlers:
            found = True
            if _prints(handler, level):
                return True
        if not logger.propagate:
            break
        logger = logger.parent
    return not found and logging.lastResort is not None and logging.lastResort.level <= level


def skip_unprinted_task_logs() -> bool:
    """Raise ``django.tasks`` above INFO when its INFO records are printed nowhere; returns
    whether it did."""
    if printable(TASK_LOGGER, logging.INFO):
        return False
    logger = logging.getLogger(TASK_LOGGER)
    if logger.getEffectiveLevel() > logging.INFO:
        return False
    logger.setLevel(logging.INFO + 1)
    return True
