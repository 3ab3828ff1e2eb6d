"""A replica (REPLICAOF on loopback) ends with the identical state, including ids, tokens and
deadlines; timer effects come from the primary only."""

import time

import pytest
import valkey
from test_persistence import populate

from conftest import fetch, info, rec, snapshot, wait_until

Q = "vt:{r}"


def digest(c, q) -> bytes:
    """The server's digest of the queue's value (DEBUG DIGEST-VALUE: every task, lease, dead
    entry, unique key, schedule and counter); 40 zeros would mean the type has no digest."""
    d = c.execute_command("DEBUG", "DIGEST-VALUE", q)[0]
    assert d != b"0" * 40, "the queue type contributes nothing to DEBUG DIGEST-VALUE"
    return d


def synced(primary, replica, q=Q):
    """Waits until the replica has processed everything the primary sent, then compares: the
    snapshots are returned, and the server-side digests of the whole value must be equal."""
    p = primary.client()
    rp = replica.client()
    off = p.info("replication")["master_repl_offset"]
    wait_until(
        lambda: rp.info("replication").get("slave_repl_offset", -1) >= off,
        timeout=10,
        msg="replica offset",
    )
    assert digest(p, q) == digest(rp, q), "primary and replica hold different queue values"
    assert p.execute_command("DEBUG", "DIGEST") == rp.execute_command("DEBUG", "DIGEST")
    return snapshot(p, q), snapshot(rp, q)


def test_digest_follows_every_change(server):
    """DEBUG DIGEST-VALUE changes with each kind of change (enqueue, lease, ack, fail to dead,
    schedule, counter) and is equal for equal values (a copy, a reload)."""
    c = server.client()
    seen = set()

    def step():
        d = digest(c, Q)
        assert d not in seen, "a change left the digest unchanged"
        seen.add(d)

    c.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    step()
    c.execute_command("VT.ENQUEUE", Q, "ID", "b", "PAYLOAD", "y")
    step()
    ((_q, _id, tok, _n, _p),) = fetch(c, Q, count=1)
    step()
    c.execute_command("VT.FAIL", Q, "a", tok, "boom")  # dead-lettered
    step()
    c.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 3_600_000, "PAYLOAD", "t")
    step()
    c.execute_command("VT.ACK", Q, "b", "0000000000000000")  # stale token: no change
    assert digest(c, Q) in seen
    c.execute_command("COPY", Q, "vt:{r}copy")
    assert digest(c, "vt:{r}copy") == digest(c, Q)
    before = digest(c, Q)
    c.execute_command("DEBUG", "RELOAD")
    assert digest(c, Q) == before


def test_replica_identical_state(replica_pair):
    primary, replica = replica_pair
    populate(primary.client(), Q)
    a, b = synced(primary, replica)
    assert a == b
    tokens = [x["token"] for x in a["INFLIGHT"]]
    assert tokens and all(len(t) == 16 for t in tokens)


def test_full_sync_of_existing_state(server_factory):
    primary = server_factory(name="p")
    populate(primary.client(), Q)
    replica = server_factory(name="r")
    replica.client().execute_command("REPLICAOF", "127.0.0.1", primary.port)
    wait_until(
        lambda: replica.client().info("replication").get("master_link_status") == "up", timeout=15
    )
    a, b = synced(primary, replica)
    assert a == b


def test_timer_effects_replicated(replica_pair):
    primary, replica = replica_pair
    p = primary.client()
    p.execute_command("VT.ENQUEUE", Q, "DELAY", 150, "ID", "d", "PAYLOAD", "x")
    p.execute_command("VT.ENQUEUE", Q, "ID", "f", "PAYLOAD", "x")
    fetch(p, Q, lease=150)
    p.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 100, "PAYLOAD", "tick")
    wait_until(
        lambda: info(p, Q)["enqueued_total"] >= 5 and info(p, Q)["rescued_total"] == 1, timeout=5
    )
    p.execute_command("VT.SCHEDULE", "DEL", Q, "s")
    a, b = synced(primary, replica)
    assert a == b
    assert a["info"]["rescued_total"] == 1
    assert {x["id"] for x in a["READY"]} >= {b"d", b"f"}


def test_replica_timers_do_not_act(replica_pair):
    primary, replica = replica_pair
    p, rp = primary.client(), replica.client()
    p.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    fetch(p, Q, lease=200)
    synced(primary, replica)
    # cut the link: the replica keeps the lease although its deadline passes
    rp.config_set("replica-read-only", "yes")
    p.execute_command("CLIENT", "KILL", "TYPE", "replica")
    p.execute_command("CONFIG", "SET", "repl-timeout", 60)
    primary.stop()
    time.sleep(0.6)
    assert rec(rp.execute_command("VT.GET", Q, "a"))["state"] == b"inflight"
    with pytest.raises(valkey.exceptions.ReadOnlyError):
        rp.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    # promoted, it takes over the timers at once
    rp.execute_command("REPLICAOF", "NO", "ONE")
    wait_until(lambda: rec(rp.execute_command("VT.GET", Q, "a"))["state"] == b"ready", timeout=3)


def test_replica_reads(replica_pair):
    primary, replica = replica_pair
    primary.client().execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    synced(primary, replica)
    rp = replica.client()
    assert info(rp, Q)["ready"] == 1
    assert rp.execute_command("VT.QUEUES") == [Q.encode()]
    with pytest.raises(valkey.exceptions.ReadOnlyError):
        fetch(rp, Q)


def test_replica_own_aof_matches(server_factory):
    """A replica with appendonly writes the effects to its own AOF and restarts identical."""
    primary = server_factory(name="p2")
    replica = server_factory("--appendonly", "yes", "--appendfsync", "always", name="r2")
    replica.client().execute_command("REPLICAOF", "127.0.0.1", primary.port)
    wait_until(
        lambda: replica.client().info("replication").get("master_link_status") == "up", timeout=15
    )
    populate(primary.client(), Q)
    a, b = synced(primary, replica)
    assert a == b
    primary.stop()
    replica.set_args(["--appendonly", "yes"])
    replica.restart()
    assert snapshot(replica.client(), Q) == a
