"""Which task paths a worker may run: only the project's code.

A task payload names its function by dotted path, and whoever can enqueue can write any path. A
worker therefore imports (and runs) a path only when its module belongs to the project:

- a module of an installed app (``INSTALLED_APPS``: the app's package and everything below it);
- or a module under a prefix of ``VTASKS_TASK_MODULES`` (e.g. ``["myproject.jobs"]``), for task
  modules outside any app.

Anything else is refused before its module is imported (no import side effects), with an error
saying how to allow it; the worker dead-letters such a task with that reason. The path must then
also name a ``Task`` object (a plain function or class is refused too: ``results.resolve_task``).
"""

from __future__ import annotations

from django.apps import apps
from django.core.signals import setting_changed

from .conf import settings

_PREFIXES: tuple[str, ...] | None = None


class TaskRefused(ImportError):
    """A task path outside the project's code (see the module docstring)."""


def _prefixes() -> tuple[str, ...]:
    global _PREFIXES
    if _PREFIXES is None:
        names = [c.name for c in apps.get_app_configs()]
        names += [str(p) for p in settings.VTASKS_TASK_MODULES or ()]
        _PREFIXES = tuple(sorted({n.rstrip(".") for n in names if n}))
    return _PREFIXES


def _clear(setting=None, **kwargs) -> None:
    global _PREFIXES
    if setting in (None, "INSTALLED_APPS", "VTASKS_TASK_MODULES"):
        _PREFIXES = None


setting_changed.connect(_clear, dispatch_uid="django_vtasks.allowlist")


def is_allowed(path: str) -> bool:
    module = path.rpartition(".")[0]
    return any(module == p or module.startswith(p + ".") for p in _prefixes())


def check_task_path(path: str) -> None:
    """Raise TaskRefused unless ``path``'s module is part of the project (module docstring)."""
    if not isinstance(path, str) or not is_allowed(path):
        raise TaskRefused(
            f"task path {path!r} refused: its module is not in an installed app nor under "
            "VTASKS_TASK_MODULES, and a worker only runs the project's own tasks; add the module "
            "(or a package above it) to VTASKS_TASK_MODULES if it is yours"
        )
