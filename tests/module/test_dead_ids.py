"""The dead-letter id index (VT.GET / VT.DELETE / VT.RETRYDEAD with ids): same answers as a scan of
the list, through duplicates, eviction at the cap, RDB reload, AOF rewrite and a replica. (Its cost
is measured by benchmarks/dlq_ids.py, not asserted here.)"""

import pytest

from conftest import fetch, info, rec, rewrite_aof, wait_until

Q = "vt:{dead}"


def kill(c, *ids, error="boom", worker="w"):
    """Enqueues these ids (MAXATTEMPTS 1) and fails each once: one dead entry per id, in order."""
    for i in ids:
        c.execute_command("VT.ENQUEUE", Q, "MAXATTEMPTS", 1, "ID", i, "PAYLOAD", f"p-{i}")
        ((_, tid, tok, _, _),) = fetch(c, Q, count=1, worker=worker)
        assert tid == i.encode()
        assert c.execute_command("VT.FAIL", Q, tid, tok, f"{error}-{i}") == b"dead"


def dead_ids(c):
    """The dead list, oldest first, as (id, error) pairs."""
    return [
        (x["id"].decode(), x["error"].decode())
        for x in reversed([rec(y) for y in c.execute_command("VT.PEEK", Q, "DEAD", "COUNT", 1000)])
    ]


def test_duplicate_ids_get_newest_delete_all_retry_newest(r):
    kill(r, "a", "b", error="first")
    kill(r, "a", "c", error="second")
    kill(r, "a", error="third")
    assert dead_ids(r) == [
        ("a", "first-a"),
        ("b", "first-b"),
        ("a", "second-a"),
        ("c", "second-c"),
        ("a", "third-a"),
    ]
    assert rec(r.execute_command("VT.GET", Q, "a"))["error"] == b"third-a"
    # RETRYDEAD revives the newest entry of an id; its older entries stay dead (the id is live)
    assert r.execute_command("VT.RETRYDEAD", Q, "a", "a", "nope") == 1
    assert rec(r.execute_command("VT.GET", Q, "a"))["state"] == b"ready"
    assert r.execute_command("VT.RETRYDEAD", Q, "a") == 0
    assert dead_ids(r) == [("a", "first-a"), ("b", "first-b"), ("a", "second-a"), ("c", "second-c")]
    # DELETE removes the live (ready) task and every dead entry with the id
    assert r.execute_command("VT.DELETE", Q, "a") == 3
    assert r.execute_command("VT.GET", Q, "a") is None
    assert dead_ids(r) == [("b", "first-b"), ("c", "second-c")]
    # revived in the order they died, whatever the order of the arguments
    assert r.execute_command("VT.RETRYDEAD", Q, "c", "b") == 2
    got = fetch(r, Q, count=2)
    assert [g[1] for g in got] == [b"b", b"c"]
    assert info(r, Q)["dead"] == 0


def test_retrydead_all_takes_the_newest_entry_of_each_id(r):
    kill(r, "a", "b", error="old")
    kill(r, "a", error="new")
    r.execute_command("VT.ENQUEUE", Q, "ID", "b", "PAYLOAD", "live again")  # b is live: stays dead
    assert r.execute_command("VT.RETRYDEAD", Q, "ALL") == 1
    assert rec(r.execute_command("VT.GET", Q, "a"))["error"] == b"new-a"
    assert dead_ids(r) == [("a", "old-a"), ("b", "old-b")]


def test_eviction_at_the_cap_keeps_the_index(r):
    r.config_set("vtasks.dlq-cap", 3)
    kill(r, "a", "b", "a", "c", "d")  # evicts the first a, then b
    assert info(r, Q)["dead_evicted"] == 2
    assert dead_ids(r) == [("a", "boom-a"), ("c", "boom-c"), ("d", "boom-d")]
    assert r.execute_command("VT.GET", Q, "b") is None
    assert r.execute_command("VT.DELETE", Q, "b") == 0
    assert r.execute_command("VT.DELETE", Q, "a") == 1
    r.config_set("vtasks.dlq-cap", 1)
    kill(r, "e")  # shrinking cap: evicts c and d
    assert dead_ids(r) == [("e", "boom-e")]
    assert [r.execute_command("VT.GET", Q, i) for i in ("c", "d")] == [None, None]
    assert r.execute_command("VT.RETRYDEAD", Q, "c", "d", "e") == 1


def test_many_ids_over_a_large_list(r):
    n = 3000
    r.config_set("vtasks.dlq-cap", n)
    ids = [f"t{i:05d}" for i in range(n)]
    r.execute_command(
        "VT.ENQUEUE", Q, "MAXATTEMPTS", 1, "ENTRIES", *[x for i in ids for x in (i, "p")]
    )
    p = r.pipeline(transaction=False)
    for _, tid, tok, _, _ in fetch(r, Q, count=n):
        p.execute_command("VT.FAIL", Q, tid, tok, "x")
    assert p.execute() == [b"dead"] * n
    assert r.execute_command("VT.DELETE", Q, *ids[::3]) == len(ids[::3])
    assert r.execute_command("VT.RETRYDEAD", Q, *ids[1::3], "missing") == len(ids[1::3])
    gone = [r.execute_command("VT.GET", Q, i) for i in ids[:30:3]]
    assert gone == [None] * 10
    assert {rec(r.execute_command("VT.GET", Q, i))["state"] for i in ids[1:30:3]} == {b"ready"}
    assert {rec(r.execute_command("VT.GET", Q, i))["state"] for i in ids[2:30:3]} == {b"dead"}
    assert info(r, Q)["dead"] == len(ids[2::3])


def scenario(c):
    kill(c, "a", "b", error="first")
    kill(c, "a", error="second")


def check_after_load(c):
    assert dead_ids(c) == [("a", "first-a"), ("b", "first-b"), ("a", "second-a")]
    assert rec(c.execute_command("VT.GET", Q, "a"))["error"] == b"second-a"
    assert c.execute_command("VT.RETRYDEAD", Q, "a") == 1
    assert dead_ids(c) == [("a", "first-a"), ("b", "first-b")]
    assert c.execute_command("VT.DELETE", Q, "a", "b") == 3  # the revived task and both entries
    assert info(c, Q)["dead"] == 0


def test_index_rebuilt_on_debug_reload(r):
    scenario(r)
    r.execute_command("DEBUG", "RELOAD")
    check_after_load(r)


@pytest.mark.parametrize("preamble", ["yes", "no"])
def test_index_rebuilt_from_aof(server_factory, preamble):
    s = server_factory("--appendonly", "yes", "--aof-use-rdb-preamble", preamble)
    c = s.client()
    scenario(c)
    rewrite_aof(c)
    s.restart()
    check_after_load(s.client())


def test_replica_applies_the_same_id_operations(replica_pair):
    primary, replica = replica_pair
    p, rp = primary.client(), replica.client()
    scenario(p)
    assert p.execute_command("VT.RETRYDEAD", Q, "a") == 1
    assert p.execute_command("VT.DELETE", Q, "b") == 1
    p.execute_command("WAIT", 1, 5000)
    want = dead_ids(p)
    wait_until(lambda: dead_ids(rp) == want, timeout=10, msg="replica dead list")
    assert rec(rp.execute_command("VT.GET", Q, "a"))["state"] == b"ready"
