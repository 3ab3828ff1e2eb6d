"""Postgres backend: the same queue semantics as the Valkey module, in Postgres (pg-adapter).

    INSTALLED_APPS = [..., "django_vtasks", "django_vtasks.postgres"]
    TASKS = {"default": {"BACKEND": "django_vtasks.backends.postgres.PostgresTaskBackend"}}

The queue lives in the database of ``OPTIONS["DATABASE"]`` (default "default"), whose schema the
``django_vtasks.postgres`` migration creates. ``enqueue()`` writes the task row on Django's own
connection, inside the caller's transaction: a rolled-back ``atomic()`` never runs its task.
Workers use the native pool (``OPTIONS["DSN"]``, default: built from the Django database's
HOST, PORT, NAME, USER, PASSWORD and its OPTIONS, so ``sslmode``, ``sslrootcert``, ``sslcert``,
``sslkey``, ``connect_timeout``, ``options`` ... apply to the workers as to Django itself).
"""

from __future__ import annotations

from django.core import checks
from django.db import connections, transaction

from ..broker import BrokerError
from ..brokers.postgres import PostgresBroker
from ..conf import queue_checks, settings
from .base import VTasksBackend

# (PostgresBroker lives in django_vtasks.brokers.postgres; importable from here as it always was)
__all__ = ["PostgresBroker", "PostgresTaskBackend"]

# Keys of DATABASES[...]["OPTIONS"] that are Django's or psycopg's own, not libpq connection
# settings (Django pops or passes them to psycopg.connect() as Python arguments). client_encoding:
# the native pool always speaks UTF-8, as Django does.
_NOT_CONNINFO = frozenset(
    {
        "assume_role",
        "isolation_level",
        "pool",
        "server_side_binding",
        "cursor_factory",
        "context",
        "prepare_threshold",
        "autocommit",
        "row_factory",
        "client_encoding",
    }
)


def _dsn_from_django(settings_dict: dict) -> str:
    """A key=value DSN with the same connection settings as Django's own connection.

    Like Django's PostgreSQL backend: the libpq keys of OPTIONS (sslmode, sslrootcert, sslcert,
    sslkey, connect_timeout, options, application_name, ...), then NAME (None: "postgres"), USER,
    PASSWORD, HOST and PORT over them. A key the native pool does not support is refused with a
    clear error when the pool is made, rather than dropped.
    """

    def q(v) -> str:
        v = str(v)
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"

    params = {
        k: v
        for k, v in (settings_dict.get("OPTIONS") or {}).items()
        if k not in _NOT_CONNINFO and v is not None
    }
    name = settings_dict.get("NAME")
    params["dbname"] = "postgres" if name is None else name
    for key, param in (
        ("USER", "user"),
        ("PASSWORD", "password"),
        ("HOST", "host"),
        ("PORT", "port"),
    ):
        if settings_dict.get(key):
            params[param] = settings_dict[key]
    return " ".join(f"{k}={q(v)}" for k, v in params.items() if v != "")


class PostgresTaskBackend(VTasksBackend):
    """Django task backend on Postgres (FOR UPDATE SKIP LOCKED), same semantics as Valkey."""

    def __init__(self, alias, params):
        super().__init__(alias, params)
        self.pool_size = int(self.options.get("POOL_SIZE", 10))
        self.notify = bool(self.options.get("NOTIFY", True))

    @property
    def dsn(self) -> str:
        """OPTIONS["DSN"] (plus OPTIONS["PASSWORD"], kept apart so Django's error pages hide
        it), else the Django database's settings."""
        dsn = self.options.get("DSN")
        if dsn:
            password = self.options.get("PASSWORD")
            if password and "://" in dsn:
                from urllib.parse import quote

                dsn += ("&" if "?" in dsn else "?") + "password=" + quote(str(password), safe="")
            elif password:
                dsn = (
                    f"{dsn} password='"
                    + str(password).replace("\\", "\\\\").replace("'", "\\'")
                    + "'"
                )
            return dsn
        return _dsn_from_django(connections[self.database].settings_dict)

    def _broker_key(self):
        return (self.dsn, self.pool_size, self.notify, int(settings.VTASKS_DLQ_CAP))

    def _make_broker(self):
        return PostgresBroker(
            self.dsn,
            pool_size=self.pool_size,
            dlq_cap=int(settings.VTASKS_DLQ_CAP),
            notify=self.notify,
        )

    def _write(self, results, requests):
        broker = self.broker
        assert isinstance(broker, PostgresBroker)  # what _make_broker makes
        statements = broker.enqueue_statements(requests)
        ids: list[str | None] = [None] * len(requests)
        connection = connections[self.database]
        # several statements (queues) commit together or not at all
        with (
            transaction.atomic(using=self.database, savepoint=False),
            connection.cursor() as cursor,
        ):
            for sql, params, idxs in statements:
                cursor.execute(sql, params)
                inserted = {row[0] for row in cursor.fetchall()}
                for i in idxs:
                    rid = requests[i].id
                    ids[i] = rid if rid in inserted else None
        self._adopt_holders(results, ids, requests)
        if connection.in_atomic_block:
            # (the rows are written but only this connection sees them before the commit: the
            # callback carries the results for get_result() inside the block)
            transaction.on_commit(
                self._after_commit(lambda: self._sent(results, ids, requests), results),
                using=self.database,
            )
        else:
            self._sent(results, ids, requests)

    def _unique_holder(self, request) -> str | None:
        # on Django's connection: it also sees a holder enqueued earlier in the caller's
        # transaction
        with connections[self.database].cursor() as cursor:
            cursor.execute(
                "SELECT task_id FROM vtasks_unique WHERE queue = %s AND key = %s "
                "AND expires_at > now()",
                [request.queue, request.unique[0]],
            )
            row = cursor.fetchone()
        return row[0] if row else None

    async def _aunique_holder(self, request) -> str | None:
        from asgiref.sync import sync_to_async

        return await sync_to_async(self._unique_holder)(request)

    def check(self, **kwargs):
        errors = list(super().check(**kwargs))
        errors += queue_checks(self)
        try:
            connection = connections[self.database]
        except Exception:
            errors.append(
                checks.Error(
                    f"Task backend {self.alias!r}: database {self.database!r} is not configured.",
                    obj=self,
                    id="django_vtasks.E011",
                )
            )
            return errors
        if connection.vendor != "postgresql":
            errors.append(
                checks.Error(
                    f"Task backend {self.alias!r} needs a PostgreSQL database; "
                    f"{self.database!r} is {connection.vendor}.",
                    hint="Point OPTIONS['DATABASE'] at a PostgreSQL database.",
                    obj=self,
                    id="django_vtasks.E012",
                )
            )
            return errors
        from django.apps import apps

        from ..redact import redact_url

        dsn_option = self.options.get("DSN")
        if dsn_option and redact_url(dsn_option) != dsn_option:
            errors.append(
                checks.Warning(
                    f"Task backend {self.alias!r}: OPTIONS['DSN'] contains a password, which "
                    "Django's DEBUG error page and any settings dump show in clear.",
                    hint="Move it to OPTIONS['PASSWORD'] (key/value DSNs) or to the PGPASSWORD "
                    "environment variable (the workers do not read .pgpass).",
                    obj=self,
                    id="django_vtasks.W014",
                )
            )
        if not apps.is_installed("django_vtasks.postgres"):
            errors.append(
                checks.Error(
                    f"Task backend {self.alias!r} needs 'django_vtasks.postgres' in INSTALLED_APPS "
                    "(its migration creates the queue tables).",
                    obj=self,
                    id="django_vtasks.E013",
                )
            )
        try:
            # the workers' own pool and settings; it reports a dead server within connect_timeout
            self.broker.ping()
        except BrokerError as e:
            errors.append(
                checks.Warning(
                    f"Task backend {self.alias!r}: {e}",
                    hint="Is Postgres running, and has `manage.py migrate` run?",
                    obj=self,
                    id="django_vtasks.W012",
                )
            )
            return errors
        from django_vtasks.postgres import schema

        try:
            missing = schema.pending(self.dsn)
        except Exception as e:  # an edited migration, or the probe failed: say so, do not crash
            missing, problem = [], str(e)
        else:
            problem = ""
        if missing or problem:
            errors.append(
                checks.Warning(
                    f"Task backend {self.alias!r}: "
                    + (
                        problem
                        or (
                            f"the queue schema lacks {len(missing)} migration(s) "
                            f"({', '.join(missing)})"
                        )
                    ),
                    hint="Run `manage.py migrate`: workers of this release use what they add.",
                    obj=self,
                    id="django_vtasks.W013",
                )
            )
        return errors
