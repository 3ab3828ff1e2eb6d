from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path

from django_vtasks import metrics

urlpatterns = [
    path("admin/", admin.site.urls),  # vtasks: /admin/django_vtasks/dashboard/
    path("metrics", metrics.view),  # Prometheus (needs prometheus_client)
]
# DEBUG only (empty otherwise): the admin's CSS/JS under uvicorn too, not only under runserver
urlpatterns += staticfiles_urlpatterns()
