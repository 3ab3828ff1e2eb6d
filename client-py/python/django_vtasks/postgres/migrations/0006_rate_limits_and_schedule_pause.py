"""Native migration 0006_rate_limits_and_schedule_pause (pg-adapter/migrations)."""

from django.db import migrations

from django_vtasks.postgres.schema import apply_native


class Migration(migrations.Migration):
    dependencies = [("django_vtasks_postgres", "0005_flows")]
    operations = [apply_native(6)]
