"""Valkey backend: the VT.* commands of the vtasks module (PROTOCOL.md).

TASKS = {"default": {
    "BACKEND": "django_vtasks.backends.valkey.ValkeyTaskBackend",
    "OPTIONS": {"BROKER_URL": "valkey://localhost:6379/0"},
}}
"""

from __future__ import annotations

import logging
from typing import Any

import valkey.asyncio as avalkey
from django.apps import apps
from django.core import checks
from django.db import transaction

from ..broker import BrokerError, EnqueueFailed, TaskRecord
from ..brokers.valkey import ValkeyBroker, queue_key
from ..brokers.valkey_cluster import CROSSSLOT_HINT, ValkeyClusterBroker, in_one_slot
from ..brokers.valkey_errors import (
    AccessDenied,
    ModuleMissing,
    NotDurable,
    describe_error,
    module_path_hint,
    server_words,
)
from ..conf import queue_checks, settings, valkey_prefix
from ..redact import redact_url
from .base import VTasksBackend

logger = logging.getLogger("django_vtasks")

# the Django backend, its OPTIONS parsers, and the names this module always had (the broker and
# its errors now live in django_vtasks.brokers)
__all__ = [
    "AccessDenied",
    "ModuleMissing",
    "NotDurable",
    "ValkeyBroker",
    "ValkeyTaskBackend",
    "connection_options",
    "describe_error",
    "durable_option",
    "module_path_hint",
    "queue_key",
    "server_words",
]


def connection_options(url: str | None, options: dict | None = None) -> dict[str, Any]:
    """Keyword arguments for valkey-py's ``from_url`` besides the URL, from a backend's OPTIONS:

    - ``PASSWORD`` (and ``USERNAME``): credentials kept out of BROKER_URL, so Django's error
      pages (which hide settings named like ``*PASS*``) never show them; a password in the URL
      wins, as valkey-py lets URL parts win over keyword arguments;
    - TLS (``valkeys://``, ``rediss://``): the certificate's host name is checked by default;
      ``OPTIONS["SSL_CHECK_HOSTNAME"] = False`` (or ``?ssl_check_hostname=false`` in the URL)
      turns it off, e.g. for a server reached by IP address.
    """
    options = options or {}
    kwargs: dict[str, Any] = {}
    if options.get("PASSWORD"):
        kwargs["password"] = str(options["PASSWORD"])
    if options.get("USERNAME"):
        kwargs["username"] = str(options["USERNAME"])
    if url and url.split("://", 1)[0].lower() in ("valkeys", "rediss"):
        kwargs["ssl_check_hostname"] = bool(options.get("SSL_CHECK_HOSTNAME", True))
    return kwargs


def durable_option(value) -> tuple[int, bool, int] | None:
    """OPTIONS["DURABLE"] = {"replicas": N, "aof": bool, "timeout": seconds} as
    (replicas, aof, timeout ms); None when absent or asking for nothing."""
    if not value:
        return None
    if not isinstance(value, dict) or set(value) - {"replicas", "aof", "timeout"}:
        raise ValueError("OPTIONS['DURABLE'] must be a dict with keys replicas, aof, timeout")
    replicas = int(value.get("replicas", 0) or 0)
    aof = bool(value.get("aof", False))
    timeout_ms = max(1, int(float(value.get("timeout", 1.0)) * 1000))
    if replicas < 0:
        raise ValueError("OPTIONS['DURABLE']['replicas'] must be >= 0")
    return (replicas, aof, timeout_ms) if (replicas or aof) else None


class ValkeyTaskBackend(VTasksBackend):
    """Django task backend on Valkey with the vtasks module loaded."""

    def __init__(self, alias, params):
        super().__init__(alias, params)
        self.broker_url = self.options.get("BROKER_URL")
        pool = self.options.get("CONNECTION_POOL")
        if isinstance(pool, str):
            from django.utils.module_loading import import_string

            pool = import_string(pool)
        self.connection_pool = pool
        #: OPTIONS["CLUSTER"]: BROKER_URL names one node of a Valkey Cluster (valkey_cluster.py)
        self.cluster = bool(self.options.get("CLUSTER", False))
        #: OPTIONS["PREFIX"] overrides VTASKS_VALKEY_PREFIX for this backend (normalised to end
        #: in ':')
        self.prefix = valkey_prefix(self.options.get("PREFIX"))
        #: async connections per event loop (the worker's parked fetch holds one)
        self.max_connections = int(self.options.get("MAX_CONNECTIONS", 50))
        #: OPTIONS["PASSWORD"]/["USERNAME"]/["SSL_CHECK_HOSTNAME"] (see connection_options)
        self.connect_options = connection_options(self.broker_url, self.options)
        #: OPTIONS["DURABLE"]: enqueue() returns once N replicas / the AOF fsync confirmed the
        #: tasks (WAIT / WAITAOF on the enqueue's connection), else raises NotDurable
        self.durable = durable_option(self.options.get("DURABLE"))
        #: OPTIONS["OUTBOX"]: inside atomic(), tasks are written to the database's
        #: vtasks_outbox table in the caller's transaction and relayed after the commit
        #: (django_vtasks.outbox)
        self.outbox = bool(self.options.get("OUTBOX", False))

    def _broker_key(self):
        return (
            self.broker_url,
            id(self.connection_pool),
            self.prefix,
            self.max_connections,
            self.cluster,
            tuple(sorted(self.connect_options.items())),
            self.durable,
        )

    def _make_broker(self):
        if self.cluster:
            if not self.broker_url:  # (system check E005)
                raise BrokerError(
                    f"Task backend {self.alias!r}: CLUSTER takes OPTIONS['BROKER_URL'] (any node "
                    "of the cluster), not CONNECTION_POOL."
                )
            return ValkeyClusterBroker(
                self.broker_url, self.prefix, self.max_connections, self.connect_options
            )
        return ValkeyBroker(
            self.broker_url,
            self.connection_pool,
            self.prefix,
            self.max_connections,
            self.connect_options,
            self.durable,
        )

    def _write(self, results, requests):
        def write():
            try:
                ids = self.broker.enqueue(requests)
            except EnqueueFailed as e:  # some queues refused: say which results went in
                e.results = [r for r, rid in zip(results, e.ids, strict=True) if rid is not None]
                raise
            except NotDurable as e:
                e.results = [r for r in results if r.id in set(e.ids)]
                raise
            self._sent(results, ids, requests)
            self._adopt_holders(results, ids, requests)

        if not self._in_atomic_block():
            write()
        elif self.outbox:
            from ..outbox import relay

            relay.store(self, requests)  # committed or rolled back with the caller's rows
            transaction.on_commit(
                self._after_commit(lambda: self._relay_committed(results, requests), results),
                using=self.database,
            )
        else:
            # every side effect (unique keys included) happens after the commit
            transaction.on_commit(self._after_commit(write, results), using=self.database)

    def _relay_committed(self, results, requests) -> None:
        """After the commit of an outbox enqueue: relay its rows now; when Valkey cannot take
        them, they stay in the outbox for the backend's workers (the commit already made them
        safe, so nothing is raised into the caller's request)."""
        from ..outbox import relay

        try:
            outcome = relay.relay(self, [r.id for r in requests])
        except Exception as e:
            logger.warning(
                "%d task(s) committed to the outbox of backend %r are not in Valkey yet (%s); "
                "a worker of this backend relays them when Valkey is reachable",
                len(requests),
                self.alias,
                e,
            )
            outcome = {}
        # a row another relay took is enqueued by it; a task Valkey did not add (unique key
        # held) reads as its holder
        ids = [None if outcome.get(r.id) is False else r.id for r in requests]
        self._sent(results, ids, requests)
        if outcome:
            self._adopt_holders(results, ids, requests)

    def _unsent_result(self, result_id: str):
        """A task committed to the outbox but not relayed yet reads READY."""
        if not self.outbox:
            return None
        from ..outbox import relay

        row = relay.pending(self, result_id)
        if row is None:
            return None
        request = row.request()
        record = TaskRecord(
            id=row.id,
            state="delayed" if request.at_ms else "ready",
            priority=row.priority,
            enqueued_at=int(row.created_at.timestamp() * 1000),
            run_at=request.at_ms or 0,
            payload=request.payload,
            queue=row.queue,
        )
        return self._from_record(record)

    def check(self, **kwargs):
        errors = list(super().check(**kwargs))
        errors += queue_checks(self)
        if not self.broker_url and self.connection_pool is None:
            errors.append(
                checks.Error(
                    f"Task backend {self.alias!r} has no OPTIONS['BROKER_URL'].",
                    hint="Set OPTIONS = {'BROKER_URL': 'valkey://localhost:6379/0'}.",
                    obj=self,
                    id="django_vtasks.E001",
                )
            )
            return errors
        if self.outbox and not apps.is_installed("django_vtasks.outbox"):
            errors.append(
                checks.Error(
                    f"Task backend {self.alias!r}: OPTIONS['OUTBOX'] needs the outbox table, but "
                    "'django_vtasks.outbox' is not in INSTALLED_APPS.",
                    hint="Add 'django_vtasks.outbox' to INSTALLED_APPS and run manage.py migrate.",
                    obj=self,
                    id="django_vtasks.E022",
                )
            )
        if self.cluster and self.durable:
            errors.append(
                checks.Error(
                    f"Task backend {self.alias!r}: OPTIONS['DURABLE'] is not supported with "
                    "CLUSTER (WAIT must follow the enqueue on the shard's own connection).",
                    hint="Remove OPTIONS['DURABLE'], or use a primary with replicas (no cluster).",
                    obj=self,
                    id="django_vtasks.E007",
                )
            )
        if self.cluster:
            if self.connection_pool is not None or not self.broker_url:
                errors.append(
                    checks.Error(
                        f"Task backend {self.alias!r}: CLUSTER takes BROKER_URL (any node of the "
                        "cluster), not CONNECTION_POOL (the cluster client keeps a pool per node).",
                        hint="Remove OPTIONS['CONNECTION_POOL'] and set OPTIONS['BROKER_URL'].",
                        obj=self,
                        id="django_vtasks.E005",
                    )
                )
                return errors
            queues = sorted(set(self.queues) | set(settings.VTASKS_QUEUES or []))
            if not in_one_slot(self.prefix, queues):
                errors.append(
                    checks.Error(
                        f"Task backend {self.alias!r}: the queues {queues} fall in different "
                        f"cluster slots with the prefix {self.prefix!r}.",
                        hint=CROSSSLOT_HINT,
                        obj=self,
                        id="django_vtasks.E004",
                    )
                )
        if self.broker_url and redact_url(self.broker_url) != self.broker_url:
            errors.append(
                checks.Warning(
                    f"Task backend {self.alias!r}: OPTIONS['BROKER_URL'] contains a password, "
                    "which Django's DEBUG error page and any settings dump show in clear.",
                    hint="Move it to OPTIONS['PASSWORD'] (and OPTIONS['USERNAME']): Django hides "
                    "settings named like *PASS*; read it from the environment.",
                    obj=self,
                    id="django_vtasks.W004",
                )
            )
        if isinstance(self.connection_pool, avalkey.ConnectionPool) and not self.broker_url:
            return errors  # an async-only pool cannot be probed from a sync check
        try:
            self.broker.ping()
        except ModuleMissing as e:
            errors.append(
                checks.Error(
                    f"Valkey for task backend {self.alias!r} does not have the vtasks module "
                    f"loaded ({e}).",
                    hint=f"Start valkey-server with --loadmodule {module_path_hint()} "
                    f"(or MODULE LOAD it); `manage.py` dev command: see the README.",
                    obj=self,
                    id="django_vtasks.E003",
                )
            )
            return errors
        except AccessDenied as e:
            errors.append(
                checks.Error(
                    f"Task backend {self.alias!r}: {e}",
                    hint="Fix the credentials, or grant the Valkey user the VT.* commands and the "
                    "keys of the prefix (ACL SETUSER).",
                    obj=self,
                    id="django_vtasks.E006",
                )
            )
            return errors
        except BrokerError as e:
            errors.append(
                checks.Warning(
                    f"Task backend {self.alias!r}: {e}",
                    hint="Start Valkey (with the vtasks module) or fix OPTIONS['BROKER_URL'].",
                    obj=self,
                    id="django_vtasks.W002",
                )
            )
            return errors
        broker = self.broker
        assert isinstance(broker, ValkeyBroker)  # what _make_broker makes
        policy = broker.eviction_policy()
        if policy and policy.startswith("allkeys-"):
            errors.append(
                checks.Warning(
                    f"Task backend {self.alias!r}: Valkey's maxmemory-policy is {policy!r}: under "
                    "memory pressure it evicts whole queue keys (every task of a queue at once).",
                    hint="Use noeviction, or a volatile-* policy (volatile-lru, volatile-ttl...): "
                    "queue keys carry no TTL so only results (which do) are evicted. "
                    "README, 'Memory policy'.",
                    obj=self,
                    id="django_vtasks.W003",
                )
            )
        return errors
