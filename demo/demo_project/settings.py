"""Settings of the vtasks demo shop.

Environment: VTASKS_DEMO_BROKER_URL (Valkey with the vtasks module, e.g. from
`manage.py vtasks_valkey`), VTASKS_DEMO_BACKEND=valkey|postgres (postgres uses VTASKS_PG_DSN),
VTASKS_DEMO_DIR (where tasks write what they did; default .run/ next to this project).
"""

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from django_vtasks.scheduler import crontab

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("VTASKS_DEMO_DIR") or BASE_DIR / ".run")
RUN_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "vtasks-demo-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

BACKEND = os.environ.get("VTASKS_DEMO_BACKEND", "valkey")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # the admin's CSS/JS: served by runserver, and by urls.py's staticfiles_urlpatterns() under any
    # ASGI server (uvicorn demo_project.asgi:application) while DEBUG is on
    "django.contrib.staticfiles",
    "django_vtasks",
    "shop",
]
if BACKEND == "postgres":
    INSTALLED_APPS.append("django_vtasks.postgres")

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "demo_project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "static/"
STATIC_ROOT = RUN_DIR / "static"  # `manage.py collectstatic` target when served by a web server

# at most 100 newsletters start per second, across all workers (the broker enforces it)
RATE_LIMITS = {"emails": "100/s"}

if BACKEND == "postgres":
    _u = urlparse(os.environ.get("VTASKS_PG_DSN", "postgres://postgres@127.0.0.1/postgres"))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _u.path.lstrip("/") or "postgres",
            "USER": unquote(_u.username or "postgres"),
            "PASSWORD": unquote(_u.password or ""),
            "HOST": _u.hostname or "127.0.0.1",
            "PORT": str(_u.port or 5432),
        }
    }
    TASKS = {
        "default": {
            "BACKEND": "django_vtasks.backends.postgres.PostgresTaskBackend",
            "QUEUES": ["default", "emails", "vtasks-benchmark"],
            "OPTIONS": {"RATE_LIMITS": RATE_LIMITS},
        }
    }
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": RUN_DIR / "demo.sqlite3"}
    }
    TASKS = {
        "default": {
            "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
            "QUEUES": ["default", "emails", "vtasks-benchmark"],
            "OPTIONS": {
                "BROKER_URL": os.environ.get("VTASKS_DEMO_BROKER_URL", "valkey://127.0.0.1:6379/0"),
                "RATE_LIMITS": RATE_LIMITS,
            },
        }
    }

VTASKS_VALKEY_PREFIX = "demo"
VTASKS_QUEUES = ["default", "emails"]
VTASKS_CONCURRENCY = 20
# task path patterns -> queue/priority: call sites need not repeat queue names
VTASKS_ROUTES = {"shop.tasks.send_*letter": {"queue": "emails"}}
VTASKS_SCHEDULE = {
    # every 2 seconds (the broker fires it: exactly once per tick, whatever the number of workers)
    "heartbeat": {"task": "shop.tasks.heartbeat", "schedule": 2},
    # a cron entry: every day at 03:00 UTC
    "nightly-report": {
        "task": "shop.tasks.nightly_report",
        "schedule": crontab(hour="3", minute="0"),
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"short": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "short"}},
    "loggers": {
        "django_vtasks": {"handlers": ["console"], "level": "INFO"},
        # Django logs every task state change at INFO/DEBUG: too chatty for the demo
        "django.tasks": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}
