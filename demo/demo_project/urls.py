from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
# DEBUG only (empty otherwise): the admin's CSS/JS under uvicorn too, not only under runserver
urlpatterns += staticfiles_urlpatterns()
