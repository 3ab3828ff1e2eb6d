"""Valkey 9 atomic slot migration (`CLUSTER MIGRATESLOTS`) of live queues between two primaries
of a real 3-primary cluster.

The source sends the slot as an AOF-format snapshot (the queue type's `aof_rewrite`: `VT._LOAD`
records), then streams every effect on the slot (clients' commands and the source's own timer
effects, `VT._FX`) until it pauses writes and hands the slot over. The target must apply all of
it, must not run its own timers on a queue it is still importing (that would fire a schedule
tick twice or rescue a lease the source still owns), and must take over the timers once it owns
the slot. Fetchers blocked on the source get a redirect, never a hang.
"""

from __future__ import annotations

import threading
import time

import pytest
import valkey
from test_operator import Load, assert_alive

from conftest import fetch, free_port, info, snapshot, wait_until


def make_cluster(server_factory, n=3, *args):
    nodes = [
        server_factory(
            *args,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "3000",
            "--cluster-port",
            str(free_port()),
            name=f"n{i}",
        )
        for i in range(n)
    ]
    cs = [s.client() for s in nodes]
    per = 16384 // n
    for i, c in enumerate(cs):
        c.execute_command(
            "CLUSTER", "ADDSLOTSRANGE", i * per, 16383 if i == n - 1 else (i + 1) * per - 1
        )
    for s in nodes[1:]:
        cs[0].execute_command(
            "CLUSTER",
            "MEET",
            "127.0.0.1",
            s.port,
            int(s.client().config_get("cluster-port")["cluster-port"]),
        )
    wait_until(
        lambda: all(
            "cluster_state:ok" in c.execute_command("CLUSTER", "INFO").decode()
            and c.execute_command("CLUSTER", "INFO").decode().count(f"cluster_known_nodes:{n}")
            for c in cs
        ),
        timeout=30,
        msg="cluster ok",
    )
    return nodes


def add_replica(server_factory, nodes, primary):
    """A 4th node, replica of `primary`, link up."""
    rep = server_factory(
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "3000",
        "--cluster-port",
        str(free_port()),
        name="rep",
    )
    c0 = nodes[0].client()
    c0.execute_command(
        "CLUSTER",
        "MEET",
        "127.0.0.1",
        rep.port,
        int(rep.client().config_get("cluster-port")["cluster-port"]),
    )
    pid = primary.client().execute_command("CLUSTER", "MYID").decode()
    wait_until(
        lambda: pid.encode() in rep.client().execute_command("CLUSTER", "NODES"),
        timeout=30,
        msg="replica knows the primary",
    )
    rep.client().execute_command("CLUSTER", "REPLICATE", pid)
    wait_until(
        lambda: rep.client().info("replication").get("master_link_status") == "up",
        timeout=30,
        msg="replica link up",
    )
    return rep


def registry_keys(c) -> int:
    """Queue keys the node's timer registry holds (INFO vtasks)."""
    return next(v for k, v in c.info("vtasks").items() if k.endswith("registry_keys"))


def queue_on(node, prefix="vt:{m") -> str:
    """A queue name whose slot `node` serves."""
    c = node.client()
    mine = {tuple(r[:2]) for r in c.execute_command("CLUSTER", "SLOTS") if r[2][1] == node.port}
    for i in range(10_000):
        q = f"{prefix}{i}}}"
        slot = c.execute_command("CLUSTER", "KEYSLOT", q)
        if any(a <= slot <= b for a, b in mine):
            return q
    raise AssertionError("no slot found")


def migration(c) -> dict:
    jobs = c.execute_command("CLUSTER", "GETSLOTMIGRATIONS")
    if not jobs:
        return {}
    it = iter(jobs[0])
    return {
        k.decode(): (v.decode() if isinstance(v, bytes) else v) for k, v in zip(it, it, strict=True)
    }


def migrate(source, target, q, hold=False):
    """Starts moving q's slot from source to target; with `hold`, the source does not pause (it
    keeps streaming) until `release(source)`."""
    c = source.client()
    slot = c.execute_command("CLUSTER", "KEYSLOT", q)
    c.execute_command("DEBUG", "SLOTMIGRATION", "PREVENT-PAUSE", 1 if hold else 0)
    tid = target.client().execute_command("CLUSTER", "MYID").decode()
    assert (
        c.execute_command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slot, slot, "NODE", tid) == b"OK"
    )
    if hold:
        wait_until(
            lambda: migration(c).get("state") in ("replicating", "waiting-to-pause"),
            timeout=30,
            interval=0.05,
            msg=f"streaming (job: {migration(c)})",
        )


def release(source):
    source.client().execute_command("DEBUG", "SLOTMIGRATION", "PREVENT-PAUSE", 0)


def finished(source, target, q):
    c = source.client()
    wait_until(
        lambda: migration(c).get("state") in ("success", "failed", "cancelled"),
        timeout=30,
        interval=0.05,
        msg="migration finished",
    )
    assert migration(c)["state"] == "success", migration(c)
    wait_until(
        lambda: (
            target.client().execute_command(
                "CLUSTER", "COUNTKEYSINSLOT", c.execute_command("CLUSTER", "KEYSLOT", q)
            )
            >= 1
        ),
        timeout=10,
        msg="target owns the queue",
    )


class Blocked(threading.Thread):
    def __init__(self, server, q):
        super().__init__(daemon=True)
        self.c, self.q = server.client(socket_timeout=30), q
        self.reply, self.error = "unset", None

    def run(self):
        try:
            self.reply = fetch(self.c, self.q, count=1, block=0)  # forever
        except Exception as e:
            self.error = e


def test_migration_carries_the_exact_queue_and_its_timer_effects(server_factory):
    """Snapshot + streamed effects: while the source keeps streaming (its pause held off), its
    timer promotes delayed tasks, rescues expired leases and fires a 50 ms schedule; the target
    must apply exactly those effects and run none of its own. Then the source is frozen (CLIENT
    PAUSE WRITE: its timer stops too), the slot handed over, and the target's value must digest
    the same as the source's last one."""
    nodes = make_cluster(server_factory)
    src, dst = nodes[0], nodes[1]
    rep = add_replica(server_factory, nodes, dst)
    q = queue_on(src)
    c = src.client()
    c.execute_command(
        "VT.ENQUEUE", q, "ENTRIES", *[x for i in range(40) for x in (f"r{i}", "x" * 32)]
    )
    c.execute_command(
        "VT.ENQUEUE", q, "DELAY", 600, "ENTRIES", *[x for i in range(5) for x in (f"d{i}", "d")]
    )
    got = fetch(c, q, count=10, lease=500)
    for _q, tid, tok, _a, _p in got[:3]:
        c.execute_command("VT.FAIL", q, tid, tok, "boom")  # dead-lettered
    # a cancelled lease: the snapshot carries the flag, so the target buries it as the source does
    assert c.execute_command("VT.CANCEL", q, got[3][1], "REASON", "moving") == b"flagged"
    c.execute_command("VT.SCHEDULE", "SET", q, "tick", "EVERY", 50, "PAYLOAD", "t")
    # runtime state moves with the queue: a rate limit's bucket and a paused schedule
    c.execute_command("VT.RATELIMIT", "SET", q, 1, "PER", 86_400_000, "BURST", 1000)
    c.execute_command("VT.SCHEDULE", "SET", q, "held", "EVERY", 50, "PAYLOAD", "h")
    c.execute_command("VT.SCHEDULE", "PAUSE", q, "held")
    before = info(c, q)

    migrate(src, dst, q, hold=True)
    # a fetcher blocked on another queue of the slot is served by a wake-up (not a command)
    q2 = q + "b"
    waiter = Blocked(src, q2)
    waiter.start()
    wait_until(lambda: c.info("clients")["blocked_clients"] == 1, msg="fetcher blocked")
    c.execute_command("VT.ENQUEUE", q2, "ID", "w1", "PAYLOAD", "x")
    c.execute_command("VT.ENQUEUE", q2, "ID", "w2", "PAYLOAD", "x")
    waiter.join(10)
    assert waiter.reply[0][1] == b"w1", (waiter.reply, waiter.error)
    # the source keeps serving the slot while it streams; its timer does the work
    wait_until(
        lambda: (
            (i := info(c, q))["delayed"] == 0
            and i["inflight"] == 0
            and i["enqueued_total"] >= before["enqueued_total"] + 10
        ),
        timeout=20,
        msg="promotions, rescues and ticks on the source during the migration",
    )
    c.execute_command("VT.ENQUEUE", q, "ID", "during", "PAYLOAD", "x")  # a client write, streamed
    c.execute_command("VT.SCHEDULE", "DEL", q, "tick")
    c.execute_command("CLIENT", "PAUSE", 20_000, "WRITE")  # freezes the source (timer included)
    try:
        time.sleep(0.2)
        want_digest = c.execute_command("DEBUG", "DIGEST-VALUE", q)
        want = snapshot(c, q)
        want2 = c.execute_command("DEBUG", "DIGEST-VALUE", q2)
        release(src)
        finished(src, dst, q)
    finally:
        c.execute_command("CLIENT", "UNPAUSE")
    d = dst.client()
    assert snapshot(d, q) == want
    assert want["rate"] is not None and [r[5] for r in want["schedules"]] == [1]  # "held" paused
    assert d.execute_command("DEBUG", "DIGEST-VALUE", q) == want_digest
    assert d.execute_command("DEBUG", "DIGEST-VALUE", q2) == want2  # the wake-up's lease moved too
    assert info(d, q2)["inflight"] == 1
    assert want["info"]["rescued_total"] == 6 and want["info"]["dead"] == 4
    # the target's replica got the same value through the target's replication stream
    off = d.info("replication")["master_repl_offset"]
    rc = rep.client()
    wait_until(
        lambda: rc.info("replication").get("slave_repl_offset", -1) >= off,
        timeout=20,
        msg="target's replica in sync",
    )
    assert rc.execute_command("DEBUG", "DIGEST-VALUE", q) == want_digest
    # the source dropped the moved key, and its timer registry forgot it; the target knows it
    assert c.execute_command("DBSIZE") == 0
    assert registry_keys(c) == 0
    assert registry_keys(d) == 2
    with pytest.raises(valkey.exceptions.ResponseError, match="MOVED"):
        c.execute_command("VT.INFO", q)
    assert_alive(*nodes, rep)


def test_target_takes_over_the_timers(server_factory):
    """Once it owns the slot the target arms the timers of the queues it imported: a delayed
    task falls due, a lease expires and a schedule ticks, with no client touching the queue.
    With AOF on, the target's AOF holds the imported queue: a reload from it gives the same
    value."""
    nodes = make_cluster(server_factory, 3, "--appendonly", "yes", "--aof-use-rdb-preamble", "no")
    src, dst = nodes[0], nodes[2]
    q = queue_on(src)
    c = src.client()
    c.execute_command("VT.ENQUEUE", q, "DELAY", 1500, "ID", "late", "PAYLOAD", "x")
    c.execute_command("VT.ENQUEUE", q, "ID", "held", "PAYLOAD", "x")
    fetch(c, q, count=1, lease=1500)
    c.execute_command("VT.SCHEDULE", "SET", q, "tick", "EVERY", 1000, "PAYLOAD", "t")
    migrate(src, dst, q)
    finished(src, dst, q)
    d = dst.client()
    wait_until(
        lambda: (
            (i := info(d, q))["delayed"] == 0
            and i["rescued_total"] == 1
            and i["enqueued_total"] >= 4
        ),
        timeout=15,
        msg="timers on the target",
    )
    assert info(d, q)["inflight"] == 0
    d.execute_command("VT.SCHEDULE", "DEL", q, "tick")
    want = d.execute_command("DEBUG", "DIGEST-VALUE", q)
    d.execute_command("DEBUG", "LOADAOF")
    assert d.execute_command("DEBUG", "DIGEST-VALUE", q) == want
    assert_alive(*nodes)


def test_migration_under_load_loses_and_doubles_nothing(server_factory):
    """A producer, a consumer (some of whose leases expire), delayed tasks and a 10 ms schedule
    run against the source; the slot moves while they run (held in the streaming phase for a
    second), the load follows the redirect to the target. Every acknowledged enqueue is acked,
    nothing acked is delivered again, each tick fired once. A fetcher blocked forever on the
    source for a queue of the moved slot gets a redirect."""
    nodes = make_cluster(server_factory)
    src, dst = nodes[1], nodes[2]
    q = queue_on(src)
    idle = q + "idle"  # same hash tag, same slot; always empty
    waiter = Blocked(src, idle)
    waiter.start()
    wait_until(lambda: src.client().info("clients")["blocked_clients"] >= 1, msg="fetcher blocked")
    load = Load(src, q=q).start()
    migrate(src, dst, q, hold=True)
    load.wait_progress(100)  # traffic keeps flowing on the source while it streams
    release(src)
    finished(src, dst, q)
    load.primary = dst  # clients follow the MOVED redirect
    load.wait_progress(300)
    waiter.join(20)
    assert not waiter.is_alive(), "a fetcher blocked on a moved queue hangs"
    assert "MOVED" in str(waiter.error), (waiter.reply, waiter.error)
    final = load.finish()
    load.check(final)
    assert load.errors.get("MOVED", 0) >= 1  # the load really crossed the handover
    assert_alive(*nodes)


def vtasks_info(c, field) -> int:
    return next(v for k, v in c.info("vtasks").items() if k.endswith(field))


def test_cancelled_migration_leaves_the_source_in_charge_then_a_retry_moves_it(server_factory):
    """A migration cancelled while streaming: the source keeps the queue and its timers, the
    target drops its partial copy and every timer entry for it (the queue holds only ready
    tasks, so no due time would ever make the timer look at it again), and its own queues keep
    their timers. Migrating again then works, and the target's timers take over."""
    nodes = make_cluster(server_factory)
    src, dst = nodes[2], nodes[0]
    q = queue_on(src)
    c, d = src.client(), dst.client()
    c.execute_command("VT.ENQUEUE", q, "ENTRIES", *[x for i in range(20) for x in (f"r{i}", "x")])
    own = queue_on(dst, prefix="vt:{own")  # a queue the target owns all along
    d.execute_command("VT.ENQUEUE", own, "DELAY", 1500, "ID", "later", "PAYLOAD", "x")
    migrate(src, dst, q, hold=True)
    wait_until(
        lambda: vtasks_info(d, "queues") == 2 and registry_keys(d) == 2,
        timeout=10,
        msg="snapshot applied on the target",
    )
    assert c.execute_command("CLUSTER", "CANCELSLOTMIGRATIONS") == b"OK"
    wait_until(lambda: migration(c).get("state") == "cancelled", timeout=10, msg="cancelled")
    wait_until(
        lambda: vtasks_info(d, "queues") == 1, timeout=10, msg="the target dropped its partial copy"
    )
    assert d.execute_command("DBSIZE") == 1
    assert registry_keys(d) == 1
    # the target's own queue kept its timer: its delayed task falls due
    wait_until(
        lambda: info(d, own)["ready"] == 1, timeout=10, msg="the target's own queue promoted"
    )
    release(src)
    # the source is still in charge: its timer fires a schedule on the queue
    c.execute_command("VT.SCHEDULE", "SET", q, "tick", "EVERY", 100, "PAYLOAD", "t")
    wait_until(lambda: info(c, q)["enqueued_total"] >= 23, timeout=10, msg="source ticks")
    # a retry moves it; the target's timers take over (the cancelled import left no trace)
    c.execute_command("VT.ENQUEUE", q, "DELAY", 800, "ID", "late", "PAYLOAD", "x")
    migrate(src, dst, q)
    finished(src, dst, q)
    n = info(d, q)["enqueued_total"]
    wait_until(
        lambda: (i := info(d, q))["delayed"] == 0 and i["enqueued_total"] >= n + 3,
        timeout=10,
        msg="the target promotes and ticks",
    )
    assert registry_keys(c) == 0
    assert_alive(*nodes)


def test_legacy_resharding_with_setslot_and_migrate(server_factory):
    """The pre-9 way: CLUSTER SETSLOT IMPORTING/MIGRATING, MIGRATE (DUMP/RESTORE of the queue),
    SETSLOT NODE. The queue arrives intact and the target's timer picks it up."""
    nodes = make_cluster(server_factory)
    src, dst = nodes[0], nodes[1]
    q = queue_on(src)
    c, d = src.client(), dst.client()
    c.execute_command("VT.ENQUEUE", q, "ENTRIES", *[x for i in range(10) for x in (f"r{i}", "x")])
    c.execute_command("VT.ENQUEUE", q, "DELAY", 1000, "ID", "late", "PAYLOAD", "x")
    fetch(c, q, count=2, lease=1000)
    want = c.execute_command("DEBUG", "DIGEST-VALUE", q)
    slot = c.execute_command("CLUSTER", "KEYSLOT", q)
    sid, did = (x.client().execute_command("CLUSTER", "MYID").decode() for x in (src, dst))
    d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
    c.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", did)
    assert c.execute_command("MIGRATE", "127.0.0.1", dst.port, "", 0, 5000, "KEYS", q) == b"OK"
    for x in (d, c):
        x.execute_command("CLUSTER", "SETSLOT", slot, "NODE", did)
    assert d.execute_command("DEBUG", "DIGEST-VALUE", q) == want
    wait_until(
        lambda: (i := info(d, q))["delayed"] == 0 and i["rescued_total"] == 2,
        timeout=10,
        msg="the target's timer promotes and rescues",
    )
    assert info(d, q)["ready"] == 11
    assert_alive(*nodes)
