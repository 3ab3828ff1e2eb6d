"""The benchmark Django project: a no-op task and a 10 ms sleep task, for every system."""

import os

if os.environ.get("BENCH_SYSTEM") == "celery":
    from .celery_app import app as celery_app  # noqa: F401  (Celery's Django recipe)
