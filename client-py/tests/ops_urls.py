"""URLconf of the operations tests: the admin (with the vtasks dashboard) and the metrics view."""
from django.contrib import admin
from django.urls import path

from django_vtasks import metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics.view),
]
