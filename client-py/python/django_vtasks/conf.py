"""Settings of django-vtasks, read lazily from Django settings (names and shapes of the
original)."""

from typing import Any

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
    # queues a worker consumes when no --queue is given, in priority order; unset: the backend's
    # TASKS[alias]["QUEUES"] (see default_queues)
    "VTASKS_QUEUES": ["default"],
    # tasks a worker runs at once (async slots; the sync thread pool has the same size)
    "VTASKS_CONCURRENCY": 20,
    # {"queue": {"count": 100, "timeout": 2.0}}: the worker collects up to `count` tasks (waiting at
    # most `timeout` seconds) and calls each task function once with the list of task dicts
    "VTASKS_BATCH_QUEUES": {},
    # {"name": {"task": "app.tasks.fn", "schedule": crontab(...) | seconds,
    #           "args": [], "kwargs": {}}}
    "VTASKS_SCHEDULE": {},
    # task path pattern -> {"queue": ..., "priority": ...} (django_vtasks.routes)
    "VTASKS_ROUTES": {},
    "VTASKS_RUN_SCHEDULER": True,
    "VTASKS_COMPRESS_THRESHOLD": 1024,
    # bytes a task envelope (its JSON: arguments included) may take *decoded*: enqueue refuses
    # larger ones and workers/the admin never inflate more than this (the server's
    # vtasks.max-payload, same default, bounds the bytes on the wire, compressed or not)
    "VTASKS_MAX_PAYLOAD": 16 * 1024 * 1024,
    "VTASKS_DLQ_CAP": 1000,
    "VTASKS_VALKEY_PREFIX": "vt:",
    "VTASKS_HEALTH_CHECK_FILE": None,
    "VTASKS_WORKER_ID": None,
    "VTASKS_BACKEND": "default",
    # vtasks additions
    # module prefixes, besides the installed apps' packages, whose tasks a worker may run
    # (allowlist.py): e.g. ["myproject.jobs"]
    "VTASKS_TASK_MODULES": [],
    # decoded bytes a stored result may take (result_store.py), and characters per traceback
    "VTASKS_RESULT_MAX_BYTES": 1024 * 1024,
    "VTASKS_MAX_TRACEBACK": 16_000,
    # per-queue retry policy: {"queue": {"retries": 3, "backoff": 1.0}} (a task's own
    # @task(retries=..., retry_backoff=...) wins); default fail-fast like the original
    "VTASKS_RETRIES": {},
    # per-queue time limits in seconds: {"queue": {"time_limit": 300, "soft_time_limit": 240}}
    # (a task's own @task(time_limit=..., soft_time_limit=...) wins); default: no limit
    "VTASKS_TIME_LIMITS": {},
    # lease of a fetched task in seconds; the worker extends it every lease/4 while the task runs
    "VTASKS_LEASE": 30.0,
    # threads for sync tasks (default: VTASKS_CONCURRENCY)
    "VTASKS_SYNC_THREADS": None,
    # seconds a task whose path the worker cannot import is retried (spread over its attempts)
    # before it is dead-lettered: in a rolling deploy, old workers see tasks only new code has
    "VTASKS_UNKNOWN_TASK_GRACE": 300.0,
    # seconds between a --scheduler worker's checks that the broker still has its schedules
    # (re-registered when the broker lost its data); 0 turns the check off
    "VTASKS_SCHEDULE_RECONCILE": 30.0,
    # seconds between a worker's reports to the admin dashboard (django_vtasks.activity); the
    # throughput samples are taken every 2 x this
    "VTASKS_ACTIVITY_INTERVAL": 5.0,
}


class VtasksSettings:
    def __getattr__(self, name):
        if name not in DEFAULTS:
            raise AttributeError(name)
        return getattr(django_settings, name, DEFAULTS[name])


settings = VtasksSettings()


def valkey_prefix(override: str | None = None) -> str:
    prefix = str(override or settings.VTASKS_VALKEY_PREFIX or "vt:")
    return prefix if prefix.endswith(":") else prefix + ":"


def default_queues(alias: str) -> list[str]:
    """The queues a worker of backend ``alias`` serves when none are given (no ``--queue``), in
    priority order: ``VTASKS_QUEUES`` when the project sets it, else the backend's
    ``TASKS[alias]["QUEUES"]`` (the queues its tasks may use), else ``["default"]``."""
    explicit = getattr(django_settings, "VTASKS_QUEUES", None)
    if explicit:
        return list(explicit)
    configured = list((getattr(django_settings, "TASKS", {}).get(alias) or {}).get("QUEUES") or [])
    return configured or list(DEFAULTS["VTASKS_QUEUES"])


def unserved_queues(alias: str) -> list[str]:
    """Queues of ``TASKS[alias]["QUEUES"]`` that a worker started without ``--queue`` would not
    serve (VTASKS_QUEUES set and missing them): tasks sent there would wait forever."""
    configured = list((getattr(django_settings, "TASKS", {}).get(alias) or {}).get("QUEUES") or [])
    served = set(default_queues(alias))
    return [q for q in configured if q not in served]


def queue_checks(backend) -> list:
    """System-check messages about the queues a default worker serves (both backends)."""
    from django.core import checks

    missing = unserved_queues(backend.alias)
    if not missing:
        return []
    return [
        checks.Warning(
            f"Task backend {backend.alias!r}: its QUEUES {missing} are not in VTASKS_QUEUES, so a "
            "worker started without --queue does not serve them: their tasks would never run.",
            hint="Add them to VTASKS_QUEUES (or remove the setting: workers then serve the "
            "backend's QUEUES), or start a worker with --queue for them.",
            obj=backend,
            id="django_vtasks.W005",
        )
    ]
