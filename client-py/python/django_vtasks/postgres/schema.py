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


def pending(dsn: str) -> list[str]:
    """Names of the native migrations the database at ``dsn`` has not applied (the system check
    says to run ``migrate``). Raises ValueError when an applied one was edited since."""
    import psycopg

    from django_vtasks import _native

    with psycopg.connect(dsn, connect_timeout=3, autocommit=True) as conn:
        applied: list[tuple[int, str | None]]
        row = conn.execute("SELECT to_regclass('vtasks_schema')").fetchone()
        if row is None or row[0] is None:
            applied = []
        elif conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = "
            "'vtasks_schema' AND column_name = 'checksum'"
        ).fetchone():
            applied = conn.execute("SELECT version, checksum FROM vtasks_schema").fetchall()
        else:  # written by a release before checksums
            applied = [(v, None) for (v,) in conn.execute("SELECT version FROM vtasks_schema")]
    versions = {v for v, _ in applied}
    return [
        f"{v:04d}_{name}"
        for v, name, _sql, _rec in _native.migration_plan(applied)
        if v not in versions or dict(applied)[v] is None
    ]
