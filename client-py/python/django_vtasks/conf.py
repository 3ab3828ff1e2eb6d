"""Settings of django-vtasks, read lazily from Django settings (names and shapes of the original)."""

from django.conf import settings as django_settings

DEFAULTS = {
    # queues a worker consumes when no --queue is given, in priority order
    "VTASKS_QUEUES": ["default"],
    # tasks a worker runs at once (async slots; the sync thread pool has the same size)
    "VTASKS_CONCURRENCY": 20,
    # {"queue": {"count": 100, "timeout": 2.0}}: the worker collects up to `count` tasks (waiting at
    # most `timeout` seconds) and calls each task function once with the list of task dicts
    "VTASKS_BATCH_QUEUES": {},
    # {"name": {"task": "app.tasks.fn", "schedule": crontab(...) | seconds, "args": [], "kwargs": {}}}
    "VTASKS_SCHEDULE": {},
    "VTASKS_RUN_SCHEDULER": True,
    "VTASKS_COMPRESS_THRESHOLD": 1024,
    "VTASKS_DLQ_CAP": 1000,
    "VTASKS_VALKEY_PREFIX": "vt:",
    "VTASKS_HEALTH_CHECK_FILE": None,
    "VTASKS_WORKER_ID": None,
    "VTASKS_BACKEND": "default",
    # vtasks additions
    # per-queue retry policy: {"queue": {"retries": 3, "backoff": 1.0}} (a task's own
    # @task(retries=..., retry_backoff=...) wins); default fail-fast like the original
    "VTASKS_RETRIES": {},
    # lease of a fetched task in seconds; the worker extends it every lease/4 while the task runs
    "VTASKS_LEASE": 30.0,
    # threads for sync tasks (default: VTASKS_CONCURRENCY)
    "VTASKS_SYNC_THREADS": None,
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
