"""Upgrades through ``manage.py migrate`` (PROTOCOL.md, "Schema migrations"): one Django migration
per native migration, and an install made by an older release reaches the current schema with
its queued tasks kept."""

import os
import uuid
from itertools import pairwise

import psycopg
import pytest
from django.db import connections
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

from django_vtasks import _native
from django_vtasks.postgres.schema import ApplyNative

APP = "django_vtasks_postgres"


def test_one_django_migration_per_native_migration_in_order():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    ours = sorted((name, m) for (app, name), m in loader.disk_migrations.items() if app == APP)
    native = _native.migrations()
    assert [name for name, _ in ours] == [f"{v:04d}_{n}" for v, n, _ in native]
    for (name, m), (v, _, _) in zip(ours, native, strict=True):
        codes = [op.code for op in m.operations]
        assert len(codes) == 1 and isinstance(codes[0], ApplyNative) and codes[0].version == v, name
    # a straight line: each depends on the one before
    for (prev, _), (name, m) in pairwise(ours):
        assert m.dependencies == [(APP, prev)], name


def test_edited_migration_is_refused_with_what_to_do():
    with pytest.raises(ValueError, match=r"0001_initial\.sql was changed.*new migration"):
        _native.migration_plan([(1, "0" * 64)])


@pytest.fixture
def scratch(django_db_blocker):
    """A Django connection to a fresh, empty database (not the test database)."""
    base = os.environ.get("VTASKS_PG_DSN")
    if not base:
        pytest.skip("VTASKS_PG_DSN is not set")
    name = f"vt_upgrade_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    alias = "vtasks_upgrade"
    connections.settings[alias] = {**connections["default"].settings_dict, "NAME": name}
    conn = connections[alias]
    try:
        with django_db_blocker.unblock():
            yield conn, base.rsplit("/", 1)[0] + "/" + name
    finally:
        conn.close()
        del connections[alias]
        del connections.settings[alias]
        with psycopg.connect(base, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_install_from_release_1_upgrades_through_migrate_with_its_tasks(scratch):
    conn, dsn = scratch
    # What the first release left: its Django 0001 (which applied the native 0001 then shipped,
    # without checksums) recorded as applied, and tasks queued with that schema.
    with conn.cursor() as c:
        c.execute(_native.migrations()[0][2])
        c.execute(
            "INSERT INTO vtasks_task (queue, id, state, payload) "
            "SELECT 'old', 'old-' || i, 'r', convert_to('p' || i, 'UTF8') "
            "FROM generate_series(1, 20) i"
        )
    MigrationRecorder(conn).ensure_schema()
    MigrationRecorder(conn).record_applied(APP, "0001_initial")

    executor = MigrationExecutor(conn)
    leaf = executor.loader.graph.leaf_nodes(APP)
    assert [m.name for m, _ in executor.migration_plan(leaf)] == [
        f"{v:04d}_{n}" for v, n, _ in _native.migrations()[1:]
    ], "pending: every later one"
    executor.migrate(leaf)
    with conn.cursor() as c:
        c.execute("SELECT version, checksum IS NOT NULL FROM vtasks_schema ORDER BY version")
        assert c.fetchall() == [(v, True) for v, _, _ in _native.migrations()]
    assert MigrationExecutor(conn).migration_plan(leaf) == [], "nothing left to apply"
    # the workers' own migrate agrees: nothing to do, nothing refused
    q = _native.PgQueue(dsn, pool_size=1)
    q.migrate()
    got = q.fetch(["old"], "w", 100)
    assert [g[4] for g in got] == [f"p{i}".encode() for i in range(1, 21)]
    assert q.ack("old", [(g[1], g[2]) for g in got]) == 20


def test_pending_migrations_are_named_until_migrate(scratch):
    from django_vtasks.postgres import schema

    conn, dsn = scratch
    names = [f"{v:04d}_{n}" for v, n, _ in _native.migrations()]
    assert schema.pending(dsn) == names
    with conn.cursor() as c:  # release 1: native 0001 only, no checksum column
        c.execute(_native.migrations()[0][2])
    assert schema.pending(dsn) == names, "a pre-checksum row is applied again"
    _native.PgQueue(dsn, pool_size=1).migrate()
    assert schema.pending(dsn) == []
