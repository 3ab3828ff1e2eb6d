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


# ---- flows (PROTOCOL.md "Flows"): VT.FLOW and vtasks_enqueue_flow answer alike ----------------


def flow_of(queue, *nodes):
    """(requests, parents) of a flow given as (id, parent ids) pairs."""
    reqs = [EnqueueRequest(queue, i, f"p-{i}".encode()) for i, _ in nodes]
    return reqs, [tuple(ps) for _, ps in nodes]


def test_flow_waits_and_each_ack_releases_the_next(b, queue):
    assert b.supports_flows
    reqs, parents = flow_of(queue, ("a", ()), ("b", ("a",)), ("c", ("a", "b")))
    assert b.enqueue_flow(reqs, parents) == ["a", "b", "c"]
    assert [b.get(queue, i).state for i in "abc"] == ["ready", "waiting", "waiting"]
    assert (b.info(queue)["ready"], b.info(queue)["waiting"]) == (1, 2)
    assert [r.id for r in b.peek(queue, "waiting", 0, 10)] == ["b", "c"]
    assert [r.state for r in b.peek(queue, "waiting", 1, 1)] == ["waiting"]
    assert b.get(queue, "c").payload == b"p-c"
    # an id a waiting task holds is taken, for a flow (nothing added) and for an enqueue
    assert b.enqueue_flow(*flow_of(queue, ("new", ()), ("c", ("new",)))) is None
    assert b.get(queue, "new") is None
    assert b.enqueue([EnqueueRequest(queue, "b", b"x")]) == [None]
    (d,) = b.fetch([queue], "w", 10)
    assert d.id == "a" and b.fetch([queue], "w", 10) == []
    assert b.ack(queue, [(d.id, d.token)]) == 1
    assert b.get(queue, "b").state == "ready" and b.get(queue, "c").state == "waiting"
    (d,) = b.fetch([queue], "w", 10)
    b.ack(queue, [(d.id, d.token)])
    (d,) = b.fetch([queue], "w", 10)
    assert d.id == "c" and d.payload == b"p-c"
    b.ack(queue, [(d.id, d.token)])
    info = b.info(queue)
    assert (info["ready"], info["inflight"], info["dead"], info["enqueued_total"]) == (0, 0, 0, 3)
    assert (info["acked_total"], info["waiting"]) == (3, 0)


def test_flow_failed_parent_dead_letters_deleted_parent_removes(b, queue):
    b.enqueue_flow(*flow_of(queue, ("m1", ()), ("m2", ()), ("cb", ("m1", "m2")), ("z", ("cb",))))
    got = {d.id: d for d in b.fetch([queue], "w", 10)}
    assert set(got) == {"m1", "m2"}
    assert b.fail(queue, "m1", got["m1"].token, "boom") == "dead"
    for i in ("cb", "z"):
        rec = b.get(queue, i)
        assert rec.state == "dead" and "task m1 that it waits for failed" in rec.error
    assert b.info(queue)["dead"] == 3
    assert b.ack(queue, [("m2", got["m2"].token)]) == 1
    assert b.fetch([queue], "w", 10) == []
    # a deleted task takes what waits for it; a retried failure does not
    b.enqueue_flow(*flow_of(queue, ("x", ()), ("y", ("x",)), ("q", ()), ("r", ("q",))))
    assert b.delete(queue, ["x"]) == 2
    assert b.get(queue, "y") is None
    (d,) = b.fetch([queue], "w", 10)
    assert b.fail(queue, "q", d.token, "again", retry_ms=0) == "retry"
    assert b.get(queue, "r").state == "waiting"
    assert b.clear(queue, "ready") == 2  # q and the waiting r


def test_flow_refusals_change_nothing(b, queue):
    bad = [
        (flow_of(queue, ("a", ()), ("b", ("zz",))), "not an earlier task"),
        (flow_of(queue, ("a", ()), ("a", ())), "appears twice"),
    ]
    reqs, parents = flow_of(queue, ("a", ()), ("b", ("a",)))
    mixed = [reqs[0], reqs[1]._replace(queue=queue + "x")]
    with pytest.raises(BrokerError, match="a flow lives in one queue"):
        b.enqueue_flow(mixed, parents)
    for (reqs, parents), msg in bad:
        with pytest.raises(BrokerError, match=msg):
            b.enqueue_flow(reqs, parents)
    big = [EnqueueRequest(queue, f"m{i}", b"x") for i in range(10_001)]
    with pytest.raises(BrokerError, match="over the limit of 10000"):
        b.enqueue_flow(big, [()] * len(big))
    with pytest.raises(BrokerError, match="payload"):
        b.enqueue_flow([EnqueueRequest(queue, "p", b"x" * (MAX_PAYLOAD + 1))], [()])
    assert b.info(queue)["enqueued_total"] == 0


def test_flow_parents_acked_at_once_release_the_callback_once(b, queue):
    """Two workers ack the two parents of a callback at the same moment (Postgres: two
    transactions, each decrementing the callback's pending count under its row lock): every
    callback is released exactly once, never zero or two times."""
    import threading

    n = 60
    for k in range(n):
        b.enqueue_flow(
            *flow_of(queue, (f"a{k}", ()), (f"b{k}", ()), (f"cb{k}", (f"a{k}", f"b{k}")))
        )
    got = {d.id: d for d in b.fetch([queue], "w", 2 * n)}
    assert len(got) == 2 * n
    barrier = threading.Barrier(2)
    acked = {"a": 0, "b": 0}

    def ack_all(side):
        for k in range(n):
            barrier.wait()
            d = got[f"{side}{k}"]
            acked[side] += b.ack(queue, [(d.id, d.token)])

    threads = [threading.Thread(target=ack_all, args=(s,)) for s in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert acked == {"a": n, "b": n}
    released = b.fetch([queue], "w", 10 * n)
    assert sorted(d.id for d in released) == sorted(f"cb{k}" for k in range(n))
    info = b.info(queue)
    assert (info["ready"], info["waiting"], info["inflight"]) == (0, 0, n)


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
