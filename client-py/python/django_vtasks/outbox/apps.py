from django.apps import AppConfig


class VTasksOutboxConfig(AppConfig):
    name = "django_vtasks.outbox"
    label = "django_vtasks_outbox"
    verbose_name = "vtasks (transactional outbox)"
    default_auto_field = "django.db.models.BigAutoField"
