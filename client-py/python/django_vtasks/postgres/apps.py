from django.apps import AppConfig


class VTasksPostgresConfig(AppConfig):
    name = "django_vtasks.postgres"
    label = "django_vtasks_postgres"
    verbose_name = "vtasks (Postgres queue)"
