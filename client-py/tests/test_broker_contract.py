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


# ---- rate limits (PROTOCOL.md "Rate limits"): Valkey, Valkey Cluster and Postgres alike -------


def _enqueue_n(b, queue, n):
    b.enqueue([EnqueueRequest(queue, f"r-{name(10)}-{i}", b"x") for i in range(n)])


def test_rate_limit_caps_fetches_and_wakes_a_blocked_fetcher(broker, queue):
    _enqueue_n(broker, queue, 10)
    assert broker.rate_limit_get(queue) is None
    assert broker.rate_limit_set(queue, 3, 400) is True
    assert broker.rate_limit_set(queue, 3, 400) is False, "the same limit again changes nothing"
    assert broker.rate_limit_get(queue) == {"limit": 3, "per_ms": 400, "burst": 3, "tokens": 3}
    assert len(broker.fetch([queue], "w", 10)) == 3
    assert broker.fetch([queue], "w", 10) == []
    assert broker.info(queue)["ready"] == 7
    # a blocked fetch is answered when a token refills (without the wake-up it would time out
    # with nothing)
    got = broker.fetch([queue], "w", 10, block_ms=20_000)
    assert 1 <= len(got) <= 3
    assert broker.rate_limit_off(queue) is True
    assert broker.rate_limit_off(queue) is False
    assert len(broker.fetch([queue], "w", 10)) == 7 - len(got)


@pytest.mark.parametrize(
    "args,pattern",
    [
        ((0, 1000), "(?i)limit|1\\.\\.|between"),
        ((5, 0), "(?i)per|period|between"),
        ((5, 1000, 0), "(?i)burst|between"),
        ((5, 86_400_001), "(?i)per|period|between"),
    ],
)
def test_rate_limit_bad_input_is_refused_and_sets_nothing(broker, queue, args, pattern):
    with pytest.raises(BrokerError, match=pattern):
        broker.rate_limit_set(queue, *args)
    assert broker.rate_limit_get(queue) is None


def test_rate_limit_holds_across_several_fetchers(broker, queue):
    """Starts counted by the broker over a window never exceed limit x window + burst."""
    import threading
    import time

    limit, per_ms = 20, 1000
    _enqueue_n(broker, queue, 400)
    broker.rate_limit_set(queue, limit, per_ms)
    taken: list[int] = []
    stop = threading.Event()

    def fetcher(i):
        while not stop.is_set():
            taken.append(len(broker.fetch([queue], f"w{i}", 7, block_ms=200)))

    start = time.monotonic()
    threads = [threading.Thread(target=fetcher, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(30)
    elapsed_ms = (time.monotonic() - start) * 1000
    total = sum(taken)
    assert total <= limit + limit * elapsed_ms / per_ms + 1, (total, elapsed_ms)
    assert total > limit, "refilled tokens were handed out (not only the first burst)"
    assert broker.info(queue)["inflight"] == total


# ---- schedules at runtime: pause, resume, run now ---------------------------------------------


def test_schedule_pause_resume_and_run(broker, queue):
    broker.schedule_set(queue, "nightly", b"job", cron="0 3 * * *")
    [s] = broker.schedule_list(queue)
    assert s.paused is False
    assert broker.schedule_pause(queue, "nightly") is True
    # settings re-applied (a scheduler starting): the pause is runtime state and stays
    broker.schedule_set(queue, "nightly", b"job2", cron="0 4 * * *")
    [s] = broker.schedule_list(queue)
    assert s.paused is True and s.spec == "0 4 * * *"
    rid = broker.schedule_run(queue, "nightly")
    assert rid and broker.get(queue, rid).payload == b"job2"
    assert broker.info(queue)["ready"] == 1, "run now enqueues exactly one task"
    assert broker.schedule_list(queue)[0].next_run_ms == s.next_run_ms, "run leaves ticks alone"
    assert broker.schedule_resume(queue, "nightly") is True
    assert broker.schedule_list(queue)[0].paused is False
    assert broker.schedule_pause(queue, "nope") is False
    assert broker.schedule_resume(queue, "nope") is False
    assert broker.schedule_run(queue, "nope") is None
    assert broker.info(queue)["ready"] == 1


def test_paused_schedule_fires_no_tick(broker, queue):
    import time

    from .conftest import wait_for

    broker.schedule_set(queue, "tick", b"t", every_ms=100)
    broker.schedule_pause(queue, "tick")
    time.sleep(0.6)  # six ticks would have been due
    broker.tick()  # Postgres: the worker's tick (Valkey fires by itself: 0)
    assert broker.info(queue)["ready"] == 0
    broker.schedule_resume(queue, "tick")

    def fired():
        broker.tick()
        return broker.info(queue)["ready"] >= 1

    wait_for(fired, timeout=15, message="a tick after resume")
