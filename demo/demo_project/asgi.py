"""ASGI entry point with the vtasks worker embedded (uvicorn demo_project.asgi:application)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

from django_vtasks.asgi import get_worker_application

application = get_worker_application(get_asgi_application())
