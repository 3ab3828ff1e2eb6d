"""The one ``--backend`` option of every vtasks management command that acts on a task backend.

``--backend`` is the canonical spelling (the supervisor passes it to its children);
``--backend-alias`` (the spelling of django-vtasks 3.x's ``clear_queue`` and ``benchmark_vtasks``)
is accepted as an alias. ``call_command(..., backend=...)`` and
``call_command(..., backend_alias=...)`` both work.
(A leading underscore: Django does not list this module as a command.)
"""

from django_vtasks.conf import settings

#: the keyword call_command() accepts for the 3.x spelling (argparse keeps one dest: "backend")
STEALTH = ("backend_alias",)


def add_backend_argument(parser) -> None:
    parser.add_argument(
        "--backend",
        "--backend-alias",
        dest="backend",
        default=None,
        help="TASKS alias of the backend (default: VTASKS_BACKEND, 'default'); "
        "--backend-alias is the same option",
    )


def backend_alias(options: dict) -> str:
    """The alias the user named (either spelling), else VTASKS_BACKEND."""
    return options.get("backend") or options.get("backend_alias") or settings.VTASKS_BACKEND


def vtasks_backend(alias: str):
    """The task backend ``alias`` of TASKS, which must be a vtasks one; CommandError (saying
    what to fix) otherwise, never a traceback."""
    from django.core.management.base import CommandError
    from django.tasks import task_backends
    from django.tasks.exceptions import InvalidTaskBackend

    try:
        backend = task_backends[alias]
    except InvalidTaskBackend as e:
        raise CommandError(
            f"Backend {alias!r} not found in TASKS: {e} Pass --backend with one "
            f"of: {', '.join(sorted(task_backends.settings))}."
        ) from e
    if getattr(backend, "broker", None) is None:
        raise CommandError(f"Backend {alias!r} ({type(backend).__name__}) is not a vtasks backend.")
    return backend
