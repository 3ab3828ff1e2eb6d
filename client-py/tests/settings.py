"""Settings of the conformance suite and of the worker subprocesses it starts.

Both backends are configured: alias "valkey" and alias "postgres" ("default" = $VTASKS_TEST_BACKEND,
valkey if unset). Servers come from the environment (see vtasks_servers.py); per-worker knobs
(schedule, batch queues, test database name) too, as JSON.
"""

import json
import os
from typing import Any
from urllib.parse import unquote, urlparse

SECRET_KEY = "vtasks-tests"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = [
    "django_vtasks",
    "django_vtasks.postgres",
    "django_vtasks.outbox",
    "tests.testapp",
]


def _pg(dsn: str) -> dict:
    u = urlparse(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("VTASKS_TEST_DB_NAME") or (u.path.lstrip("/") or "postgres"),
        "USER": unquote(u.username or "postgres"),
        "PASSWORD": unquote(u.password or ""),
        "HOST": u.hostname or "127.0.0.1",
        "PORT": str(u.port or 5432),
        "TEST": {"NAME": "vtasks_test"},
    }


DATABASES = {
    "default": _pg(os.environ.get("VTASKS_PG_DSN", "postgres://postgres@127.0.0.1/postgres"))
}

_VALKEY: dict[str, Any] = {
    "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
    "QUEUES": [],
    "OPTIONS": {
        "BROKER_URL": os.environ.get("VTASKS_TEST_VALKEY_URL", "valkey://127.0.0.1:6379/0"),
        "RESULT_TTL": 600,
    },
}
# Queue keys without a hash tag spread over the 3 nodes; test_enqueue_many's worker reads two
# queues of one slot.
_VALKEY_CLUSTER: dict[str, Any] = {
    "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
    "QUEUES": [],
    "OPTIONS": {
        "BROKER_URL": os.environ.get("VTASKS_TEST_VALKEY_CLUSTER_URL", "valkey://127.0.0.1:7000/0"),
        "CLUSTER": True,
        "PREFIX": "vtc",
        "RESULT_TTL": 600,
    },
}
# OPTIONS["RATE_LIMITS"] of every backend (a worker applies them at start)
_RATE_LIMITS = json.loads(os.environ.get("VTASKS_TEST_RATE_LIMITS", "{}"))
_VALKEY["OPTIONS"]["RATE_LIMITS"] = _RATE_LIMITS
_VALKEY_CLUSTER["OPTIONS"]["RATE_LIMITS"] = _RATE_LIMITS
_POSTGRES = {
    "BACKEND": "django_vtasks.backends.postgres.PostgresTaskBackend",
    "QUEUES": [],
    "OPTIONS": {"RESULT_TTL": 600, "POOL_SIZE": 4, "RATE_LIMITS": _RATE_LIMITS},
}
# the same servers with the transactional outbox (test_outbox.py)
_VALKEY_OUTBOX = dict(_VALKEY, OPTIONS=dict(_VALKEY["OPTIONS"], OUTBOX=True))
_VALKEY_CLUSTER_OUTBOX = dict(
    _VALKEY_CLUSTER, OPTIONS=dict(_VALKEY_CLUSTER["OPTIONS"], OUTBOX=True)
)
TASKS = {
    "default": _POSTGRES if os.environ.get("VTASKS_TEST_BACKEND") == "postgres" else _VALKEY,
    "valkey": _VALKEY,
    "valkey_cluster": _VALKEY_CLUSTER,
    "postgres": _POSTGRES,
    "valkey_outbox": _VALKEY_OUTBOX,
    "valkey_cluster_outbox": _VALKEY_CLUSTER_OUTBOX,
}

VTASKS_VALKEY_PREFIX = os.environ.get("VTASKS_TEST_PREFIX", "vtt")  # normalised to "vtt:"
VTASKS_LEASE = float(os.environ.get("VTASKS_TEST_LEASE", "30"))
VTASKS_COMPRESS_THRESHOLD = 1024
VTASKS_ACTIVITY_INTERVAL = float(os.environ.get("VTASKS_TEST_ACTIVITY_INTERVAL", "5"))


def _schedule():
    entries = json.loads(os.environ.get("VTASKS_TEST_SCHEDULE", "{}"))
    if not entries:
        return {}  # and no import of the compiled scheduler (mypy's django plugin loads this file)
    from django_vtasks.scheduler import crontab

    out = {}
    for name, e in entries.items():
        e = dict(e)
        e["schedule"] = crontab(e.pop("cron")) if "cron" in e else e.pop("every")
        out[name] = e
    return out


VTASKS_SCHEDULE = _schedule()
VTASKS_BATCH_QUEUES = json.loads(os.environ.get("VTASKS_TEST_BATCH_QUEUES", "{}"))
VTASKS_RETRIES = json.loads(os.environ.get("VTASKS_TEST_RETRIES", "{}"))
VTASKS_TIME_LIMITS = json.loads(os.environ.get("VTASKS_TEST_TIME_LIMITS", "{}"))
# tests see an unknown task path dead-lettered at once unless they ask for a grace
VTASKS_RESULT_MAX_BYTES = int(os.environ.get("VTASKS_TEST_RESULT_MAX_BYTES", str(1024 * 1024)))
# task modules outside installed apps that tests create on the fly (test_truth's "new code")
VTASKS_TASK_MODULES = ["vtasks_latecode"]
VTASKS_UNKNOWN_TASK_GRACE = float(os.environ.get("VTASKS_TEST_UNKNOWN_TASK_GRACE", "0"))
VTASKS_SCHEDULE_RECONCILE = float(os.environ.get("VTASKS_TEST_SCHEDULE_RECONCILE", "30"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_vtasks": {"handlers": ["console"], "level": "INFO"}},
}

if os.environ.get("VTASKS_TEST_DLQ_CAP"):
    VTASKS_DLQ_CAP = int(os.environ["VTASKS_TEST_DLQ_CAP"])
