"""Native migration 0005_flows (pg-adapter/migrations)."""

from django.db import migrations

from django_vtasks.postgres.schema import apply_native


class Migration(migrations.Migration):
    dependencies = [("django_vtasks_postgres", "0004_cancel")]
    operations = [apply_native(5)]
