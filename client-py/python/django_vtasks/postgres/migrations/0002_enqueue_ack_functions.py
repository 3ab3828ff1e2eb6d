"""Native migration 0002_enqueue_ack_functions (pg-adapter/migrations)."""

from django.db import migrations

from django_vtasks.postgres.schema import apply_native


class Migration(migrations.Migration):
    dependencies = [("django_vtasks_postgres", "0001_initial")]
    operations = [apply_native(2)]
