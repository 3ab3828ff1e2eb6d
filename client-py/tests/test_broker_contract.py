"""One protocol suite, two engines: the cases of PROTOCOL.md that the Valkey module and the
Postgres adapter must answer alike, written once against the Python Broker API and run against
both (River's driver test suite is the model). A divergence between the engines is a failing test
here; the conformance suite (test_conformance.py) covers the behaviour both already share.
"""

import os
import random
import string

import pytest
from django.tasks import task_backends

from django_vtasks.broker import BrokerError, EnqueueRequest

pytestmark = pytest.mark.django_db(transaction=True)

STATES = ["ready", "delayed", "inflight", "dead"]
#: vtasks.max-payload's default and the adapter's limit (PROTOCOL.md, VT.ENQUEUE)
MAX_PAYLOAD = 16 * 1024 * 1024


@pytest.fixture(params=["valkey", "postgres"])
def engine(request):
    if request.param == "valkey" and not os.environ.get("VTASKS_TEST_VALKEY_URL"):
        pytest.skip("Valkey module not built (cargo build --release -p vtasks-module)")
    return request.param


@pytest.fixture
def b(engine):
    return task_backends[engine].broker


def name(n: int) -> str:
    """A queue name of n bytes that no compression shrinks (as real long names would be)."""
    return "".join(random.choices(string.ascii_letters + string.digits, k=n))


def enqueue_one(b, queue, payload=b"x", **kw) -> str:
    rid = f"t-{name(12)}"
    assert b.enqueue([EnqueueRequest(queue, rid, payload, **kw)]) == [rid]
    return rid


def test_peek_count_zero_is_an_empty_page(b, queue):
    enqueue_one(b, queue)
    b.fetch([queue], "w", 1)
    enqueue_one(b, queue)
    for state in STATES:
        assert b.peek(queue, state, 0, 0) == [], state
    assert [r.state for r in b.peek(queue, "ready", 0, 1)] == ["ready"]
    assert [r.state for r in b.peek(queue, "inflight", 0, 1000)] == ["inflight"]


@pytest.mark.parametrize("offset,count", [(0, 1001), (0, -1), (-1, 10)])
def test_peek_out_of_range_is_refused(b, queue, offset, count):
    enqueue_one(b, queue)
    with pytest.raises(Exception, match="(?i)count|offset"):
        b.peek(queue, "ready", offset, count)


def test_queue_names_up_to_1000_bytes_work(b):
    q = name(1000)
    rid = enqueue_one(b, q)
    got = b.fetch([q], "w", 5, block_ms=2000)
    assert [(d.queue, d.id) for d in got] == [(q, rid)]
    assert b.info(q)["inflight"] == 1
    assert [r.id for r in b.peek(q, "inflight")] == [rid]
    assert b.ack(q, [(got[0].id, got[0].token)]) == 1
    assert q in b.queues()
    b.schedule_set(q, "s", b"p", every_ms=3_600_000)
    assert [s.name for s in b.schedule_list(q)] == ["s"]
    assert b.schedule_del(q, "s")
    b.clear(q, "all")


@pytest.mark.parametrize("size", [2800, 8200])
def test_queue_names_over_the_limit_are_refused_cleanly(engine, b, size):
    """Over ~2.7 KB a Postgres index entry no longer fits and over 8 KB pg_notify breaks: both
    engines refuse names over 1024 bytes with a clear error, and nothing is stored."""
    q = name(size)
    with pytest.raises(BrokerError, match="(?i)queue"):
        b.enqueue([EnqueueRequest(q, "x1", b"x")])
    with pytest.raises(Exception, match="(?i)queue"):
        b.fetch([q], "w", 1, block_ms=10)
    with pytest.raises(Exception, match="(?i)queue"):
        b.schedule_set(q, "s", b"p", every_ms=3_600_000)
    assert q not in b.queues()


def test_oversized_payload_is_a_broker_error_and_adds_nothing(b, queue):
    enqueue_one(b, queue, b"y" * MAX_PAYLOAD)  # the limit itself is allowed
    with pytest.raises(BrokerError, match="(?i)payload"):
        b.enqueue([EnqueueRequest(queue, "big", b"x" * (MAX_PAYLOAD + 1))])
    assert b.info(queue)["ready"] == 1
    assert b.get(queue, "big") is None


@pytest.mark.parametrize(
    "field,request_kw,pattern",
    [
        ("priority", {"priority": 101}, "(?i)priority"),
        ("id", {"id": "i" * 129}, "(?i)id"),
        ("unique key", {"unique": ("k" * 1025, 1000)}, "(?i)unique"),
    ],
)
def test_enqueue_limits_are_broker_errors(b, queue, field, request_kw, pattern):
    req = EnqueueRequest(queue, "ok-id", b"x")._replace(**request_kw)
    with pytest.raises(BrokerError, match=pattern):
        b.enqueue([req])
    assert b.info(queue)["ready"] == 0, field


def test_schedule_names_over_1024_bytes_are_refused(b, queue):
    with pytest.raises(Exception, match="(?i)name"):
        b.schedule_set(queue, "n" * 1025, b"p", every_ms=3_600_000)
    b.schedule_set(queue, "n" * 1024, b"p", every_ms=3_600_000)
    assert [len(s.name) for s in b.schedule_list(queue)] == [1024]


def test_non_canonical_tokens_match_nothing(request, engine, b, queue):
    """Only the 16-lowercase-hex form names a token (PROTOCOL.md, Concepts): ACK counts 0 and FAIL
    replies nil for any other spelling, and the task stays in flight."""
    rid = enqueue_one(b, queue)
    (d,) = b.fetch([queue], "w", 1)
    tok = d.token
    variants = {
        tok.upper(),
        "+" + tok[1:],
        " " + tok[1:],
        tok[1:],
        tok + "0",
        tok.upper()[:8] + tok[8:],
    }
    variants.discard(tok)  # an all-digit token has no upper case
    for bad in sorted(variants):
        assert b.ack(queue, [(rid, bad)]) == 0, repr(bad)
        assert b.fail(queue, rid, bad, "boom") is None, repr(bad)
    assert b.info(queue)["inflight"] == 1
    assert b.ack(queue, [(rid, tok)]) == 1


def test_async_operator_forms_answer_as_the_sync_ones(b, queue):
    """The async forms of the operator methods (written once in the Broker contract as the sync
    form run in a thread, unless a broker writes its own) see and change the same state."""
    import asyncio

    ids = [enqueue_one(b, queue) for _ in range(3)]

    async def run():
        try:
            assert [r.id for r in await b.apeek(queue, "ready", 0, 10)] == [
                r.id for r in b.peek(queue, "ready", 0, 10)
            ]
            assert (await b.aget(queue, ids[0])).id == ids[0]
            assert (await b.ainfo(queue))["ready"] == 3
            assert queue in await b.aqueues()
            assert await b.adelete(queue, [ids[0]]) == 1
            await b.aschedule_set(queue, "s", b"p", every_ms=3_600_000)
            assert [s.name for s in await b.aschedule_list(queue)] == ["s"]
            assert await b.aschedule_del(queue, "s") is True
            assert await b.aretry_dead(queue, None) == 0
            assert await b.aclear(queue, "all") == 2
        finally:
            await b.aclose()

    asyncio.run(run())
    assert b.info(queue)["ready"] == 0


def test_client_errors_reach_the_caller_as_broker_errors(engine):
    """Broker.py's promise: whatever the client library raises (here: nothing listens), the
    caller gets a BrokerError, from the sync and the async forms alike."""
    import asyncio

    from tests.vtasks_servers import free_port

    port = free_port()
    if engine == "valkey":
        from django_vtasks.brokers.valkey import ValkeyBroker

        broker = ValkeyBroker(f"valkey://127.0.0.1:{port}/0")
    else:
        from django_vtasks.brokers.postgres import PostgresBroker

        broker = PostgresBroker(
            f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=2", pool_size=1
        )
    # (a few of each kind: each call against Postgres waits for a refused connection pool)
    calls = [
        ("fetch", (["q"], "w", 1)),
        ("fail", ("q", "i", "t", "e")),
        ("info", ("q",)),
        ("get_result", ("i",)),
    ]
    for method, args in calls:
        with pytest.raises(BrokerError):
            getattr(broker, method)(*args)

    async def run():
        for method, args in calls:
            with pytest.raises(BrokerError):
                await getattr(broker, "a" + method)(*args)
        with pytest.raises(BrokerError):
            await broker.aenqueue([EnqueueRequest("q", "i", b"x")])
        await broker.aclose()

    asyncio.run(run())


# ---- VT.CANCEL (PROTOCOL.md) ---------------------------------------------------------------------


def test_cancel_dead_letters_ready_and_delayed_tasks(b, queue):
    import time

    ready = enqueue_one(b, queue)
    delayed = enqueue_one(b, queue, at_ms=int(time.time() * 1000) + 3_600_000)
    assert b.cancel(queue, ready, "no longer needed") == "removed"
    assert b.cancel(queue, delayed) == "removed"
    assert b.get(queue, ready).state == "dead"
    assert b.get(queue, ready).error == "cancelled: no longer needed"
    assert b.get(queue, delayed).error == "cancelled"
    info = b.info(queue)
    assert (info["ready"], info["delayed"], info["dead"], info["dead_total"]) == (0, 0, 2, 2)
    assert b.fetch([queue], "w", 10) == []
    # dead, or unknown: nothing to cancel
    assert b.cancel(queue, ready) is None
    assert b.cancel(queue, "no-such-id") is None
    # a cancelled task can be brought back like any dead one
    assert b.retry_dead(queue, [ready]) == 1
    assert b.get(queue, ready).state == "ready"


def test_cancel_flags_a_running_task_and_extend_leaves_its_lease(b, queue):
    rid = enqueue_one(b, queue)
    other = enqueue_one(b, queue)
    got = {d.id: d for d in b.fetch([queue], "w", 2, lease_ms=60_000)}
    before = b.get(queue, rid).deadline
    assert b.cancel(queue, rid, "stop") == "flagged"
    assert b.cancel(queue, rid, "again") == "flagged"  # idempotent: the first reason stays
    assert b.get(queue, rid).state == "inflight"
    # extend moves the other lease only, and names the cancelled one
    assert b.extend_cancelled(queue, "w", 120_000) == (1, [rid])
    assert b.extend(queue, "w", 120_000) == 1
    assert b.get(queue, rid).deadline == before
    assert b.get(queue, other).deadline > before
    assert b.extend_cancelled(queue, "someone-else", 1000) == (0, [])
    # a failure asking for a retry is dead-lettered instead
    assert b.fail(queue, rid, got[rid].token, "TaskCancelled: stop", 0) == "dead"
    assert b.get(queue, rid).state == "dead"
    assert b.extend_cancelled(queue, "w", 1000) == (1, [])
    assert b.ack(queue, [(other, got[other].token)]) == 1


def test_a_cancelled_task_finishing_is_acked(b, queue):
    rid = enqueue_one(b, queue)
    (d,) = b.fetch([queue], "w", 1, lease_ms=60_000)
    assert b.cancel(queue, rid) == "flagged"
    assert b.ack(queue, [(rid, d.token)]) == 1
    assert b.get(queue, rid) is None and b.info(queue)["acked_total"] == 1


def test_a_cancelled_lease_ends_dead_not_ready(b, queue):
    """A flagged task whose lease ends (its worker stopped extending it, or died) is
    dead-lettered with the cancel reason: it never runs again, whatever attempts it has left."""
    import time

    # the cancel must land inside the lease: a longer one when the machine is too slow for it
    for lease_ms in (100, 1000, 5000):
        rid = enqueue_one(b, queue, max_attempts=5)
        b.fetch([queue], "w", 1, lease_ms=lease_ms)
        if b.cancel(queue, rid, "bye") == "flagged":
            break
    else:
        pytest.fail("the lease expired before the cancel every time")
    time.sleep(lease_ms / 1000 + 0.05)
    b.rescue(queue)  # (the module's timer may have done it already)
    record = b.get(queue, rid)
    assert (record.state, record.error) == ("dead", "cancelled: bye")
    # a restarted worker's rescue of its own leases does the same
    rid2 = enqueue_one(b, queue, max_attempts=5)
    b.fetch([queue], "w2", 1, lease_ms=60_000)
    b.cancel(queue, rid2)
    assert b.rescue(queue, "w2") == 0
    assert b.get(queue, rid2).state == "dead"


def test_cancel_refuses_bad_input(b, queue):
    rid = enqueue_one(b, queue)
    with pytest.raises(BrokerError, match="(?i)reason"):
        b.cancel(queue, rid, "x" * 70_000)
    with pytest.raises(BrokerError, match="(?i)id"):
        b.cancel(queue, "i" * 129)
    assert b.get(queue, rid).state == "ready"


def test_cancel_async_forms(b, queue):
    import asyncio

    rid = enqueue_one(b, queue)
    held = enqueue_one(b, queue)

    async def run():
        try:
            (d,) = await b.afetch([queue], "w", 1, lease_ms=60_000)
            assert d.id == rid
            assert await b.acancel(queue, rid, "a") == "flagged"
            assert await b.acancel(queue, held) == "removed"
            assert await b.aextend_cancelled(queue, "w", 60_000) == (0, [rid])
        finally:
            await b.aclose()

    asyncio.run(run())


def test_capabilities_are_declared_not_probed():
    """The worker asks the flags (server timers, DLQ cap) instead of testing a broker's type."""
    from django_vtasks.broker import Broker
    from django_vtasks.brokers.postgres import PostgresBroker
    from django_vtasks.brokers.valkey import ValkeyBroker
    from django_vtasks.brokers.valkey_cluster import ValkeyClusterBroker

    assert Broker.supports_server_timers and not Broker.supports_dlq_cap
    assert ValkeyBroker.supports_server_timers and ValkeyBroker.supports_dlq_cap
    assert ValkeyClusterBroker.supports_dlq_cap
    assert not PostgresBroker.supports_server_timers and not PostgresBroker.supports_dlq_cap
    assert not Broker.supports_cancel
    assert ValkeyBroker.supports_cancel and PostgresBroker.supports_cancel
