"""Django settings of the gauntlet's worker subprocesses (never loaded by the harness itself).

Environment: GAUNTLET_BACKEND (valkey|postgres), GAUNTLET_VALKEY_URL, GAUNTLET_PG_DSN,
GAUNTLET_LEDGER, GAUNTLET_QUEUE, GAUNTLET_LEASE (s), GAUNTLET_CONCURRENCY, GAUNTLET_HEALTH_FILE,
GAUNTLET_SCHEDULE_EVERY (s; adds a `tick` schedule), GAUNTLET_WORKER_ID, GAUNTLET_VALKEY_CLUSTER (1:
the URL is a node of a Valkey Cluster).
"""

import os
from urllib.parse import urlparse

SECRET_KEY = "gauntlet-not-secret"
USE_TZ = True
TIME_ZONE = "UTC"
DEBUG = False
BACKEND = os.environ.get("GAUNTLET_BACKEND", "valkey")
QUEUE = os.environ.get("GAUNTLET_QUEUE", "gauntlet")

INSTALLED_APPS = ["django_vtasks", "gauntlet_app"]

if BACKEND == "postgres":
    INSTALLED_APPS.append("django_vtasks.postgres")
    u = urlparse(os.environ["GAUNTLET_PG_DSN"])
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": u.path.lstrip("/") or "postgres",
            "USER": u.username or "postgres",
            "PASSWORD": u.password or "",
            "HOST": u.hostname,
            "PORT": str(u.port or 5432),
            "CONN_MAX_AGE": 0,
        }
    }
    TASKS = {
        "default": {
            "BACKEND": "django_vtasks.backends.postgres.PostgresTaskBackend",
            "QUEUES": [],
            "OPTIONS": {"DSN": os.environ["GAUNTLET_PG_DSN"]},
        }
    }
else:
    DATABASES = {}
    TASKS = {
        "default": {
            "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
            "QUEUES": [],
            "OPTIONS": {
                "BROKER_URL": os.environ.get("GAUNTLET_VALKEY_URL", "valkey://127.0.0.1:6379/0"),
                "CLUSTER": os.environ.get("GAUNTLET_VALKEY_CLUSTER") == "1",
            },
        }
    }

VTASKS_QUEUES = [QUEUE]
VTASKS_CONCURRENCY = int(os.environ.get("GAUNTLET_CONCURRENCY", "8"))
VTASKS_LEASE = float(os.environ.get("GAUNTLET_LEASE", "30"))
VTASKS_HEALTH_CHECK_FILE = os.environ.get("GAUNTLET_HEALTH_FILE") or None
# the poison scenario expects an unknown task path in the DLQ at once (no rolling-deploy grace)
VTASKS_UNKNOWN_TASK_GRACE = 0
if os.environ.get("GAUNTLET_WORKER_ID"):
    VTASKS_WORKER_ID = os.environ["GAUNTLET_WORKER_ID"]
VTASKS_SCHEDULE = {}
if os.environ.get("GAUNTLET_SCHEDULE_EVERY"):
    VTASKS_SCHEDULE["gauntlet-tick"] = {
        "task": "gauntlet_app.tasks.tick",
        "schedule": float(os.environ["GAUNTLET_SCHEDULE_EVERY"]),
        "args": ["every"],
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("GAUNTLET_LOG_LEVEL", "WARNING")},
    "loggers": {"django_vtasks": {"level": "INFO"}},
}
