"""Creates the queue schema: the SQL of the native extension (`_native.migrations()`), the single
source of schema truth shared with the workers' pg-adapter."""

from django.db import migrations


def apply_native(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    from django_vtasks import _native

    with schema_editor.connection.cursor() as cursor:
        for _version, _name, sql in sorted(_native.migrations()):
            cursor.execute(sql)


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [migrations.RunPython(apply_native, migrations.RunPython.noop)]
