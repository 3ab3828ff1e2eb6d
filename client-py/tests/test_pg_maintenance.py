"""Postgres maintenance keeps up: expired results are purged as fast as a worker makes them (a
maintain call purges at most one batch; the worker calls again while calls purge full
batches)."""

import asyncio
import time
import uuid

import pytest
from django.db import connections
from django.tasks import task_backends

from django_vtasks import _native
from django_vtasks.worker.maintenance import PURGE_BATCH, Maintenance

pytestmark = pytest.mark.django_db(transaction=True)


def test_purge_batch_is_the_limit_of_the_native_maintain():
    """PURGE_BATCH (Python) and vtasks_maintain's LIMIT (SQL) are one fact: the latest native
    migration that defines vtasks_maintain purges results by PURGE_BATCH rows."""
    defining = [sql for _, _, sql in _native.migrations() if "FUNCTION vtasks_maintain" in sql]
    assert defining, "no native migration defines vtasks_maintain"
    assert f"FROM vtasks_result WHERE expires_at <= now() LIMIT {PURGE_BATCH} " in defining[-1]


class _Worker:
    """What Maintenance reads of a worker: its broker, and whether it is stopping."""

    def __init__(self, broker):
        self.broker = broker
        self.stopping = False


def test_one_maintain_period_purges_more_than_one_batch():
    broker = task_backends["postgres"].broker
    prefix = f"mt-{uuid.uuid4().hex[:8]}-"
    n = 2 * PURGE_BATCH + 500
    asyncio.run(broker.astore_results([(f"{prefix}{i}", b"{}", 1) for i in range(n)]))
    time.sleep(0.05)  # every one expired

    def left():
        with connections["default"].cursor() as c:
            c.execute("SELECT count(*) FROM vtasks_result WHERE id LIKE %s", [prefix + "%"])
            return c.fetchone()[0]

    assert left() == n
    asyncio.run(Maintenance(_Worker(broker))._maintain())
    assert left() == 0  # three calls in one period, not one batch per period
