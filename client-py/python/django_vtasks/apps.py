from django.apps import AppConfig


class VTasksConfig(AppConfig):
    name = "django_vtasks"
    label = "django_vtasks"
    verbose_name = "vtasks"
