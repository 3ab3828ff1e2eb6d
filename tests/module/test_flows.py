"""VT.FLOW: chains and groups held by the broker. Waiting tasks are released by the ack of their
last parent (same command), dead-lettered with their failed parent, removed with a deleted one;
they replicate, persist (RDB, AOF rewrite) and digest like every other part of a queue."""

import pytest
import valkey
from test_replication import digest, synced

from conftest import fetch, info, rec, rewrite_aof, wait_until

Q = "vt:{f}"


def node(id, parents=(), payload=None, priority=0, maxatt=0, at=0):
    return [id, priority, maxatt, at, len(parents), *parents, payload or f"p-{id}"]


def flow(c, *nodes, q=Q):
    return c.execute_command("VT.FLOW", q, len(nodes), *[x for n in nodes for x in n])


def run_one(c, q=Q, worker="w1"):
    """Fetches one task and acks it; returns its id."""
    (got,) = fetch(c, q, worker=worker, count=1)
    assert c.execute_command("VT.ACK", q, got[1], got[2]) == 1
    return got[1].decode()


def state(c, id, q=Q):
    r = rec(c.execute_command("VT.GET", q, id))
    return r and r["state"].decode()


def test_chain_runs_in_order_each_step_released_by_the_ack(r):
    assert flow(r, node("a"), node("b", ["a"]), node("c", ["b"])) == [b"a", b"b", b"c"]
    assert (state(r, "a"), state(r, "b"), state(r, "c")) == ("ready", "waiting", "waiting")
    g = rec(r.execute_command("VT.GET", Q, "b"))
    assert g["waiting_for"] == [b"a"] and g["payload"] == b"p-b"
    i = info(r, Q)
    assert (i["ready"], i["waiting"], i["enqueued_total"]) == (1, 2, 3)
    listed = [rec(x) for x in r.execute_command("VT.PEEK", Q, "WAITING", "COUNT", 10)]
    assert [(x["id"], x["state"], x["waiting_for"]) for x in listed] == [
        (b"b", b"waiting", [b"a"]),
        (b"c", b"waiting", [b"b"]),
    ]
    (a,) = fetch(r, Q, count=10)  # only the root is fetchable
    assert a[1] == b"a"
    assert fetch(r, Q, count=10) == []
    # an enqueue with a waiting task's id is refused like one with a live id
    assert r.execute_command("VT.ENQUEUE", Q, "ID", "c", "PAYLOAD", "x") == [None]
    assert r.execute_command("VT.ACK", Q, "a", a[2]) == 1
    assert state(r, "b") == "ready"
    assert run_one(r) == "b"
    assert run_one(r) == "c"
    i = info(r, Q)
    assert (i["ready"], i["waiting"], i["acked_total"]) == (0, 0, 3)


def test_group_callback_released_by_the_last_ack_only(r):
    n = 50
    members = [node(f"m{i}") for i in range(n)]
    flow(r, *members, node("cb", [f"m{i}" for i in range(n)]))
    got = fetch(r, Q, count=100)
    assert len(got) == n
    for e in got[:-1]:
        r.execute_command("VT.ACK", Q, e[1], e[2])
        assert state(r, "cb") == "waiting"
    assert rec(r.execute_command("VT.GET", Q, "cb"))["waiting_for"] == [got[-1][1]]
    r.execute_command("VT.ACK", Q, got[-1][1], got[-1][2])
    assert state(r, "cb") == "ready"
    assert run_one(r) == "cb"


def test_a_dependent_delay_applies_after_its_release(r):
    import time

    at = int(time.time() * 1000) + 3_600_000
    flow(r, node("a"), node("b", ["a"], at=at))
    run_one(r)
    g = rec(r.execute_command("VT.GET", Q, "b"))
    assert g["state"] == b"delayed" and g["run_at"] == at


def test_failed_parent_dead_letters_its_dependents_with_the_reason(r):
    flow(r, node("m1"), node("m2"), node("cb", ["m1", "m2"]), node("after", ["cb"]))
    (m1, m2) = fetch(r, Q, count=10)
    assert r.execute_command("VT.FAIL", Q, "m1", m1[2], "boom") == b"dead"
    for id in ("cb", "after"):
        d = rec(r.execute_command("VT.GET", Q, id))
        assert d["state"] == b"dead" and b"task m1 that it waits for failed" in d["error"], d
    i = info(r, Q)
    assert (i["waiting"], i["dead"], i["dead_total"]) == (0, 3, 3)
    # the other parent's ack releases nothing
    assert r.execute_command("VT.ACK", Q, "m2", m2[2]) == 1
    assert fetch(r, Q, count=10) == []
    # a retried failure does not cascade: only a final one does
    flow(r, node("x"), node("y", ["x"]))
    (x,) = fetch(r, Q, count=1)
    assert r.execute_command("VT.FAIL", Q, "x", x[2], "again", "RETRY", 0) == b"retry"
    assert state(r, "y") == "waiting"


def test_expired_leases_that_dead_letter_cascade(r):
    flow(r, node("a", maxatt=1), node("b", ["a"]))
    fetch(r, Q, count=1, lease=1)
    wait_until(lambda: state(r, "b") == "dead", timeout=10, msg="cascade after the timer's rescue")
    assert state(r, "a") == "dead"


def test_delete_and_clear_take_the_waiting_tasks_with_them(r):
    flow(r, node("a"), node("b", ["a"]), node("c", ["b"]))
    assert r.execute_command("VT.DELETE", Q, "a") == 3
    assert info(r, Q)["waiting"] == 0 and state(r, "c") is None
    flow(r, node("a"), node("b", ["a"]), node("c", ["b"]))
    assert r.execute_command("VT.DELETE", Q, "b") == 2  # a waiting task and what waits for it
    assert state(r, "a") == "ready"
    flow(r, node("x"), node("y", ["x"]))
    assert r.execute_command("VT.CLEAR", Q, "READY") == 3
    assert info(r, Q)["waiting"] == 0


def test_bad_flows_get_a_clear_error_and_add_nothing(r):
    before = info(r, Q)
    bad = [
        ([node("a"), node("b", ["zz"])], "not an earlier task of this flow"),
        ([node("b", ["c"]), node("c")], "not an earlier task of this flow"),
        ([node("a"), node("a")], "appears twice"),
        ([node("a"), node("b", ["a", "a"])], "twice"),
        ([node("a", priority=101)], "PRIORITY"),
        ([node("")], "task id must be 1 to"),
    ]
    for nodes, msg in bad:
        with pytest.raises(valkey.ResponseError, match=msg):
            flow(r, *nodes)
    with pytest.raises(valkey.ResponseError, match="more arguments than"):
        r.execute_command("VT.FLOW", Q, 1, *node("a"), "extra")
    with pytest.raises(valkey.ResponseError, match="needs <id>"):
        r.execute_command("VT.FLOW", Q, 2, *node("a"))
    # the size cap: 10,000 tasks per flow
    big = [node(f"m{i}") for i in range(10_000)] + [node("cb", ["m0"])]
    with pytest.raises(valkey.ResponseError, match="between 1 and 10000"):
        flow(r, *big)
    assert info(r, Q) == before
    assert r.exists(Q) == 0
    # a flow with an id that is already live: nothing added, every element nil
    r.execute_command("VT.ENQUEUE", Q, "ID", "live", "PAYLOAD", "x")
    assert flow(r, node("new"), node("live", ["new"])) == [None, None]
    assert state(r, "new") is None and info(r, Q)["waiting"] == 0


def test_replica_persistence_and_digest_follow_every_flow_step(replica_pair):
    primary, replica = replica_pair
    c = primary.client()
    flow(c, node("a"), node("b", ["a"]), node("c", ["b"]))
    flow(c, *[node(f"m{i}") for i in range(5)], node("cb", [f"m{i}" for i in range(5)]))
    a, b = synced(primary, replica, Q)
    assert a == b
    before = digest(c, Q)
    c.execute_command("DEBUG", "RELOAD")
    assert digest(c, Q) == before
    got = {e[1].decode(): e for e in fetch(c, Q, count=10)}
    c.execute_command("VT.ACK", Q, "a", got["a"][2])  # releases b (an _FX ACK with the clock)
    c.execute_command("VT.FAIL", Q, "m2", got["m2"][2], "boom")  # cascades to cb
    synced(primary, replica, Q)
    assert state(replica.client(), "b") == "ready" and state(replica.client(), "cb") == "dead"
    assert state(replica.client(), "c") == "waiting"
    c.execute_command("COPY", Q, "vt:{f}copy")
    assert digest(c, "vt:{f}copy") == digest(c, Q)


@pytest.mark.parametrize("preamble", ["yes", "no"])
def test_flows_survive_an_aof_restart(server_factory, preamble):
    s = server_factory(
        "--appendonly", "yes", "--appendfsync", "always", "--aof-use-rdb-preamble", preamble
    )
    c = s.client()
    flow(c, node("a"), node("b", ["a"]), node("c", ["a", "b"]))
    rewrite_aof(c)
    assert run_one(c) == "a"  # an incremental effect on top of the rewrite
    before = digest(c, Q)
    s.restart()
    c = s.client()
    assert digest(c, Q) == before
    assert state(c, "c") == "waiting"
    assert run_one(c) == "b"
    assert run_one(c) == "c"


def test_slot_migration_moves_waiting_tasks_and_streams_flow_effects(server_factory):
    """CLUSTER MIGRATESLOTS: the snapshot carries waiting tasks (W records), the stream carries
    a VT.FLOW and an ack that releases (VT._FX FLOW / ACK); the target holds the identical queue
    and its acks release what waits."""
    from test_slot_migration import finished, make_cluster, migrate, queue_on, release

    nodes = make_cluster(server_factory, 3)
    src, dst = nodes[0], nodes[2]
    q = queue_on(src)
    c = src.client()
    flow(c, node("a"), node("b", ["a"]), node("c", ["b"]), q=q)
    migrate(src, dst, q, hold=True)  # the source streams until released
    flow(c, node("x"), node("y", ["x"]), q=q)
    got = {e[1].decode(): e for e in fetch(c, q, count=10)}
    c.execute_command("VT.ACK", q, "a", got["a"][2])  # releases b, streamed as VT._FX ACK
    before = c.execute_command("DEBUG", "DIGEST-VALUE", q)
    release(src)
    finished(src, dst, q)
    d = dst.client()
    assert d.execute_command("DEBUG", "DIGEST-VALUE", q) == before
    assert (state(d, "b", q), state(d, "c", q), state(d, "y", q)) == ("ready", "waiting", "waiting")
    assert d.execute_command("VT.ACK", q, "x", got["x"][2]) == 1
    assert state(d, "y", q) == "ready"
    assert [run_one(d, q) for _ in range(3)] == ["b", "y", "c"]  # c is released by b's ack
