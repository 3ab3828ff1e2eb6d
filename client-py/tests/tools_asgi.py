"""ASGI app of the embedded-worker test: Django + vtasks worker (alias/queue from the
environment)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

from django.core.asgi import get_asgi_application

from django_vtasks.asgi import get_worker_application

application = get_worker_application(
    get_asgi_application(),
    backend_alias=os.environ["VTASKS_TOOLS_ALIAS"],
    queues=[os.environ["VTASKS_TOOLS_QUEUE"]],
    concurrency=4,
    worker_id=os.environ.get("VTASKS_TOOLS_WORKER_ID"),
)
