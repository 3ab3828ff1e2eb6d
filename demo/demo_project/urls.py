from django.contrib import admin
from django.urls import path

from django_vtasks import metrics

urlpatterns = [
    path("admin/", admin.site.urls),  # vtasks: /admin/django_vtasks/dashboard/
    path("metrics", metrics.view),  # Prometheus (needs prometheus_client)
]
