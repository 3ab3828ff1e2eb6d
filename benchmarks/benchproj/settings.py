"""Settings of the benchmark project, per system (env BENCH_SYSTEM):

- vtasks      vtasks on Valkey (our module), BENCH_VALKEY_URL db 0
- vtasks-pg   vtasks on Postgres, BENCH_PG_DSN database bench_vtasks
- dvt320      django-vtasks 3.2.0 from PyPI on Valkey, db 1
- celery      Celery 5 (the pool is the worker's -P), Redis-protocol broker on the same Valkey,
              db BENCH_VALKEY_DB (2)
- dtdb        django-tasks-db DatabaseBackend, BENCH_PG_DSN database bench_dtdb

Every system runs with its shipped defaults except the broker location and the concurrency the
harness passes on the worker's command line.
"""

import os
from urllib.parse import unquote, urlparse

SYSTEM = os.environ.get("BENCH_SYSTEM", "vtasks")
VALKEY = os.environ.get("BENCH_VALKEY_URL", "redis://127.0.0.1:6379").rstrip("/")
PG_DSN = os.environ.get("BENCH_PG_DSN", "postgres://postgres@127.0.0.1:5432/postgres")

SECRET_KEY = "vtasks-benchmarks"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "benchproj.urls"
INSTALLED_APPS = ["benchproj"]
# LOGGING: Django's defaults (what a deployment without a LOGGING setting gets)


def _pg(dbname: str) -> dict:
    u = urlparse(PG_DSN)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": dbname,
        "USER": unquote(u.username or "postgres"),
        "PASSWORD": unquote(u.password or ""),
        "HOST": u.hostname or "127.0.0.1",
        "PORT": str(u.port or 5432),
        # persistent connections, as a tuned deployment has: with Django's default (0)
        # django-tasks-db's worker reconnects for every task (close_old_connections per loop)
        "CONN_MAX_AGE": 600,
    }


_SQLITE = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.environ.get("BENCH_SQLITE", "/tmp/vtasks-bench.sqlite3"),
}

if SYSTEM == "vtasks":
    INSTALLED_APPS += ["django_vtasks"]
    DATABASES = {"default": _SQLITE}
    TASKS = {
        "default": {
            "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
            "QUEUES": [],
            "OPTIONS": {"BROKER_URL": VALKEY.replace("redis://", "valkey://") + "/0"},
        }
    }
elif SYSTEM == "vtasks-pg":
    INSTALLED_APPS += ["django_vtasks", "django_vtasks.postgres"]
    DATABASES = {"default": _pg(os.environ.get("BENCH_PG_DB", "bench_vtasks"))}
    TASKS = {
        "default": {
            "BACKEND": "django_vtasks.backends.postgres.PostgresTaskBackend",
            "QUEUES": [],
        }
    }
elif SYSTEM == "dvt320":
    INSTALLED_APPS += ["django_vtasks"]
    DATABASES = {"default": _SQLITE}
    TASKS = {
        "default": {
            "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
            "QUEUES": [],
            "OPTIONS": {"BROKER_URL": VALKEY + "/1"},
        }
    }
elif SYSTEM == "celery":
    DATABASES = {"default": _SQLITE}
    CELERY_BROKER_URL = VALKEY + "/" + os.environ.get("BENCH_VALKEY_DB", "2")
    CELERY_TASK_IGNORE_RESULT = True
    CELERY_WORKER_HIJACK_ROOT_LOGGER = False
    CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
elif SYSTEM == "dtdb":
    INSTALLED_APPS += ["django_tasks_db"]
    DATABASES = {"default": _pg("bench_dtdb")}
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": []}}
else:
    raise RuntimeError(f"unknown BENCH_SYSTEM {SYSTEM!r}")
