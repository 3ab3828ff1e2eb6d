"""URLconf of the operations tests: the admin (with the vtasks dashboard) and the metrics view."""

from django.contrib import admin
from django.http import HttpResponse
from django.urls import path

from django_vtasks import metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics.view),
    # browsers request it on their own; a project serves its icon (an unanswered request would
    # be a console error in the browser test)
    path("favicon.ico", lambda request: HttpResponse(status=204)),
]
