"""Native migration 0001_initial (pg-adapter/migrations): the queue schema. See
django_vtasks.postgres.schema for how each native migration reaches the database."""

from django.db import migrations

from django_vtasks.postgres.schema import apply_native


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [apply_native(1)]
