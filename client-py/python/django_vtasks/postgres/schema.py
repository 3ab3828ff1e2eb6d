"""The native schema (pg-adapter/migrations/*.sql) applied through Django migrations.

Each native migration has one Django migration of the same name in ``postgres/migrations``, whose
operation is ``ApplyNative(version)``: ``manage.py migrate`` applies the pending ones in order and
``showmigrations`` lists them. ``ApplyNative`` runs the adapter's own rule on Django's connection,
inside the migration's transaction (``_native.migration_sql`` / ``migration_plan``, see
vtasks_pg::migrate): every native migration up to its version that this database has not applied
yet, each once, checksums recorded, an edited shipped migration refused. So an install migrated by
the workers' ``migrate()`` first, or the other way round, ends in the same state.
"""

from django.db import migrations


class ApplyNative:
    """RunPython code: brings the database to native schema ``version``."""

    def __init__(self, version: int):
        self.version = version

    def __call__(self, apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return
        from django_vtasks import _native

        prelude, applied_sql = _native.migration_sql()
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(prelude)
            cursor.execute(applied_sql)
            applied = [(v, c) for v, c in cursor.fetchall()]
            for _version, _name, sql, record in _native.migration_plan(applied, self.version):
                cursor.execute(sql)
                cursor.execute(record)


def apply_native(version: int) -> migrations.RunPython:
    """The operation of the Django migration for native migration ``version``."""
    return migrations.RunPython(ApplyNative(version), migrations.RunPython.noop)
