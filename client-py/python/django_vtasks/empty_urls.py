"""An empty URLconf for worker processes: ``ROOT_URLCONF = "django_vtasks.empty_urls"`` keeps a
worker from importing every view module of the project (see ``asgi.prune_installed_apps``)."""

urlpatterns: list = []
