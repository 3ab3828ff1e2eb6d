"""Operator actions on live traffic: every way Valkey pauses writes (CLIENT PAUSE, FAILOVER,
CLUSTER FAILOVER, an orderly SHUTDOWN / SIGTERM of a primary with a replica), a takeover, and
maxmemory.

While writes are paused the server asserts that nothing is propagated; a module that changes
data from a timer or a blocked-client wake-up then aborts the server. Each test runs a producer,
a consumer (which "crashes" on some tasks so their leases expire), delayed tasks and a 10 ms
schedule, and keeps a ledger: afterwards the servers are alive, every acknowledged enqueue was
delivered and acked (nothing lost), and nothing acked was delivered again (nothing doubled).
"""

from __future__ import annotations

import signal
import threading
import time
import zlib
from collections import Counter

import pytest
import valkey

from conftest import fetch, free_port, info, snapshot, wait_until

Q = "vt:{op}"
# Errors a client sees while the server pauses, restarts, fails over or refuses (READONLY, MOVED,
# UNBLOCKED, LOADING, OOM): the load retries; anything else stays visible in `errors`.
TRANSIENT = (
    valkey.exceptions.ConnectionError,
    valkey.exceptions.TimeoutError,
    valkey.exceptions.ResponseError,
)


def assert_alive(*servers):
    for s in servers:
        assert s.alive(), (
            f"server {s.port} died (exit {s.proc.returncode}):\n{s.log.read_text()[-3000:]}"
        )


def role(s) -> str:
    try:
        return s.client(socket_timeout=5).info("replication")["role"]
    except TRANSIENT:
        return "?"


class Load:
    """Live traffic against `self.primary` (a conftest Server; tests repoint it after a failover).

    Ledger: `enqueued` = ids whose VT.ENQUEUE was answered (with `durable`, only those a replica
    confirmed through WAIT); `acks` = id -> successful VT.ACKs; `unsure` = ids whose ack outcome is
    unknown (the connection broke) or, with `durable`, not confirmed by a replica.
    """

    def __init__(self, primary, q=Q, every=10, lease=1000, durable=False):
        self.primary, self.q, self.every, self.lease, self.durable = (
            primary,
            q,
            every,
            lease,
            durable,
        )
        self.enqueued: set[str] = set()
        self.acks: Counter = Counter()
        self.unsure: set[str] = set()
        self.errors: Counter = Counter()
        self.sched_window = [0.0, 0.0]
        self._producing = threading.Event()
        self._running = threading.Event()
        self._threads = [
            threading.Thread(target=self._produce, daemon=True),
            threading.Thread(target=self._consume, daemon=True),
        ]

    def _client(self):
        return self.primary.client(socket_timeout=20)

    def _retry(self, e):
        self.errors[str(e).split(" ")[0] or type(e).__name__] += 1
        time.sleep(0.05)

    def _produce(self):
        c, n = None, 0
        while self._producing.is_set():
            n += 1
            args = ["VT.ENQUEUE", self.q]
            if n % 3 == 0:
                args += ["DELAY", 50 + 50 * (n % 6)]
            ids = [f"p{n}-{k}" for k in range(4)]
            args += ["ENTRIES", *[x for i in ids for x in (i, "x" * 64)]]
            try:
                c = c or self._client()
                got = c.execute_command(*args)
                if self.durable and c.execute_command("WAIT", 1, 2000) < 1:
                    continue  # not known to be on the replica: not counted as acknowledged
                self.enqueued.update(x.decode() for x in got if x is not None)
            except TRANSIENT as e:
                c = None
                self._retry(e)
            time.sleep(0.003)

    def _consume(self):
        c = None
        while self._running.is_set():
            try:
                c = c or self._client()
                got = c.execute_command(
                    "VT.FETCHBATCH",
                    1,
                    self.q,
                    "WORKER",
                    "w",
                    "COUNT",
                    50,
                    "LEASE",
                    self.lease,
                    "BLOCK",
                    100,
                )
            except TRANSIENT as e:
                c = None
                self._retry(e)
                continue
            todo = []
            for _q, tid, tok, attempt, _p in got or []:
                tid = tid.decode()
                if attempt == 1 and zlib.crc32(tid.encode()) % 50 == 0:
                    continue  # a "crashed" worker: the lease expires and the timer rescues the task
                todo.append((tid, tok))
            if not todo:
                continue
            try:
                p = c.pipeline(transaction=False)
                for tid, tok in todo:
                    p.execute_command("VT.ACK", self.q, tid, tok)
                res = p.execute(raise_on_error=False)
                ok = [tid for (tid, _), n in zip(todo, res, strict=True) if n == 1]
                if self.durable and ok and c.execute_command("WAIT", 1, 2000) < 1:
                    self.unsure.update(ok)
                for tid in ok:
                    self.acks[tid] += 1
            except TRANSIENT as e:
                self.unsure.update(t for t, _ in todo)
                c = None
                self._retry(e)

    def start(self):
        c = self._client()
        self.sched_window[0] = time.monotonic()
        c.execute_command(
            "VT.SCHEDULE", "SET", self.q, "tick", "EVERY", self.every, "PAYLOAD", "tick"
        )
        self._producing.set()
        self._running.set()
        for t in self._threads:
            t.start()
        self.wait_progress(200)
        return self

    def wait_progress(self, n=100, timeout=30):
        """Waits until `n` more tasks were acked (traffic flows on the current primary)."""
        target = sum(self.acks.values()) + n
        wait_until(
            lambda: sum(self.acks.values()) >= target,
            timeout=timeout,
            msg=f"{n} more acks (errors so far: {dict(self.errors)})",
        )

    def finish(self, timeout=40):
        """Stops producing and the schedule, lets the consumer drain the queue, returns VT.INFO."""
        self._producing.clear()
        self._threads[0].join(30)

        def del_schedule():
            try:
                self._client().execute_command("VT.SCHEDULE", "DEL", self.q, "tick")
                return True
            except TRANSIENT:
                return False

        wait_until(del_schedule, timeout=20, msg="schedule deleted")
        self.sched_window[1] = time.monotonic()

        def drained():
            i = info(self._client(), self.q)
            return i if i["ready"] + i["delayed"] + i["inflight"] == 0 else None

        final = wait_until(drained, timeout=timeout, interval=0.05, msg="queue drained")
        self._running.clear()
        self._threads[1].join(30)
        return final

    def check(self, final):
        lost = self.enqueued - set(self.acks) - self.unsure
        doubled = sorted(t for t, n in self.acks.items() if n > 1 and t not in self.unsure)
        assert not lost, f"{len(lost)} acknowledged enqueues lost, e.g. {sorted(lost)[:5]}"
        assert not doubled, f"delivered again after a successful ack: {doubled[:5]}"
        assert final["dead"] == 0, final
        assert len(self.enqueued) >= 400, (len(self.enqueued), dict(self.errors))
        assert final["rescued_total"] >= 1, final  # expired leases were rescued by the timer
        ticks = [t for t in self.acks if not t.startswith("p")]
        span_ms = (self.sched_window[1] - self.sched_window[0]) * 1000
        # each tick fired at most once (failover, restart and catch-up never repeat one)
        assert 3 <= len(ticks) <= span_ms / self.every + 3, (len(ticks), span_ms)


def start_replica(server_factory, primary, *args, name):
    rep = server_factory(*args, name=name)
    rep.client().execute_command("REPLICAOF", "127.0.0.1", primary.port)
    wait_until(
        lambda: rep.client().info("replication").get("master_link_status") == "up",
        timeout=20,
        msg="replica link up",
    )
    return rep


def in_sync(primary, replica, q=Q):
    """Waits until the replica processed everything the primary sent; both snapshots."""
    p, rp = primary.client(), replica.client()
    off = p.info("replication")["master_repl_offset"]
    wait_until(
        lambda: rp.info("replication").get("slave_repl_offset", -1) >= off,
        timeout=20,
        msg="replica offset",
    )
    # the whole value, as the server digests it (tasks, leases, dead entries, schedules, counters)
    assert p.execute_command("DEBUG", "DIGEST-VALUE", q) == rp.execute_command(
        "DEBUG", "DIGEST-VALUE", q
    )
    return snapshot(p, q), snapshot(rp, q)


# ------------------------------------------------------------------ timers and wake-ups, exactly


def test_paused_timer_changes_nothing_then_catches_up(server_factory):
    """AOF on, no replica: the issue's one-line repro, plus a lease and a schedule."""
    s = server_factory("--appendonly", "yes")
    c = s.client()
    c.execute_command("VT.ENQUEUE", Q, "DELAY", 300, "ID", "d", "PAYLOAD", "x")
    c.execute_command("VT.ENQUEUE", Q, "ID", "f", "PAYLOAD", "x")
    fetch(c, Q, lease=300)
    c.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 100, "PAYLOAD", "tick")
    # reads are served during a write pause: the state is taken once the pause holds, and the
    # pause outlasts the sleep by far (a loaded machine can be slow between these commands)
    c.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
    before = info(c, Q)
    aof = c.info("persistence")["aof_current_size"]
    time.sleep(0.8)  # the delay, the lease and several ticks fall due inside the pause
    assert_alive(s)
    assert info(c, Q) == before  # nothing promoted, rescued or fired
    assert c.info("persistence")["aof_current_size"] == aof  # nothing propagated
    # afterwards it catches up: promoted, rescued, fired (late, once)
    wait_until(
        lambda: (
            (i := info(c, Q))["delayed"] == 0
            and i["rescued_total"] == 1
            and i["enqueued_total"] > before["enqueued_total"]
        ),
        timeout=10,
        msg="catch-up",
    )
    assert info(c, Q)["ready"] >= 3
    assert_alive(s)


class Waiter(threading.Thread):
    def __init__(self, server, block=8000):
        super().__init__(daemon=True)
        self.c = server.client()
        self.cid = self.c.client_id()
        self.block = block
        self.reply, self.error, self.done_at = "unset", None, None

    def run(self):
        try:
            self.reply = fetch(self.c, Q, count=1, block=self.block)
        except Exception as e:
            self.error = e
        self.done_at = time.monotonic()


def test_blocked_fetcher_stays_parked_while_paused(server_factory):
    """A key signalled while writes are paused (an EXEC that ran CLIENT PAUSE, then enqueued)
    must not lease: the fetcher is served once the pause ends."""
    s = server_factory("--appendonly", "yes")
    c = s.client()
    w = Waiter(s)
    w.start()
    wait_until(lambda: c.info("clients")["blocked_clients"] == 1, msg="fetcher blocked")
    p = c.pipeline(transaction=True)
    p.execute_command("CLIENT", "PAUSE", 1200, "WRITE")
    p.execute_command("VT.ENQUEUE", Q, "ID", "x", "PAYLOAD", "x")
    p.execute()
    paused_at = time.monotonic()
    time.sleep(0.5)
    assert_alive(s)
    assert w.reply == "unset" and info(c, Q)["ready"] == 1  # parked, nothing leased
    w.join(10)
    assert w.error is None and w.reply[0][1] == b"x", (w.error, w.reply)
    assert w.done_at - paused_at >= 1.0  # served after the pause, not during it
    assert info(c, Q)["inflight"] == 1
    assert_alive(s)


def test_client_unblock_while_paused(server_factory):
    s = server_factory("--appendonly", "yes")
    c = s.client()
    c.execute_command("VT.ENQUEUE", Q, "DELAY", 200, "ID", "d", "PAYLOAD", "x")
    w1, w2 = Waiter(s), Waiter(s)
    w1.start()
    w2.start()
    wait_until(lambda: c.info("clients")["blocked_clients"] == 2, msg="fetchers blocked")
    c.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
    time.sleep(0.4)  # "d" falls due inside the pause
    assert c.execute_command("CLIENT", "UNBLOCK", w1.cid) == 1
    assert c.execute_command("CLIENT", "UNBLOCK", w2.cid, "ERROR") == 1
    w1.join(5)
    w2.join(5)
    assert w1.reply is None and w1.error is None  # like a BLOCK timeout
    assert "UNBLOCKED" in str(w2.error)
    assert info(c, Q)["delayed"] == 1 and info(c, Q)["inflight"] == 0
    wait_until(lambda: info(c, Q)["ready"] == 1, timeout=10, msg="promoted after the pause")
    assert_alive(s)


# ------------------------------------------------------------------ live traffic


@pytest.mark.parametrize("variant", ["aof", "replica"])
def test_client_pause_write_under_load(server_factory, variant):
    """CLIENT PAUSE WRITE for 2 s: AOF on without a replica, or AOF off with a replica."""
    primary = server_factory(*(["--appendonly", "yes"] if variant == "aof" else []), name="p")
    replica = start_replica(server_factory, primary, name="r") if variant == "replica" else None
    load = Load(primary).start()
    admin = primary.client()
    admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
    time.sleep(0.3)
    i1, off1 = info(admin, Q), admin.info("replication")["master_repl_offset"]
    time.sleep(1.2)
    assert_alive(primary)
    # nothing changed and nothing was propagated inside the pause
    assert info(admin, Q) == i1
    assert admin.info("replication")["master_repl_offset"] == off1
    load.wait_progress(200)  # resumes after the pause
    final = load.finish()
    load.check(final)
    assert_alive(primary, *([replica] if replica else []))
    if replica:
        a, b = in_sync(primary, replica)
        assert a == b


@pytest.mark.parametrize("how", ["SHUTDOWN+aof", "SIGTERM+rdb"])
def test_orderly_shutdown_of_primary_with_replica(server_factory, how):
    """The primary waits (writes paused) for its replica, saves, exits 0; restarted from its own
    AOF / RDB it has every acknowledged enqueue."""
    persist = ["--appendonly", "yes"] if how.endswith("aof") else ["--save", "3600 1"]
    primary = server_factory(*persist, name="p")
    replica = start_replica(server_factory, primary, name="r")
    load = Load(primary).start()
    if how.startswith("SHUTDOWN"):
        try:
            primary.client(socket_timeout=20).execute_command("SHUTDOWN")
        except valkey.exceptions.ConnectionError:
            pass  # the server closes the connection when it exits
    else:
        primary.proc.send_signal(signal.SIGTERM)
    rc = primary.proc.wait(30)
    assert rc == 0, f"primary exited {rc}:\n{primary.log.read_text()[-3000:]}"
    assert "Waiting for replicas before shutting down" in primary.log.read_text()
    primary.proc = None
    primary.start()  # same port and dir: loads its own AOF / RDB; the load reconnects
    load.wait_progress(200)
    final = load.finish()
    load.check(final)
    assert_alive(primary, replica)


@pytest.mark.parametrize("aof", ["yes", "no"])
def test_failover_with_old_primary_alive(server_factory, aof):
    """FAILOVER: the old primary pauses writes until the replica caught up, then becomes its
    replica; the clients follow the new primary."""
    old = server_factory("--appendonly", aof, name="p")
    new = start_replica(server_factory, old, "--appendonly", aof, name="r")
    load = Load(old).start()
    assert old.client().execute_command("FAILOVER") == b"OK"
    wait_until(
        lambda: role(new) == "master" and role(old) == "slave", timeout=20, msg="roles swapped"
    )
    load.primary = new
    load.wait_progress(200)
    assert_alive(old, new)
    final = load.finish()
    load.check(final)
    wait_until(
        lambda: old.client().info("replication").get("master_link_status") == "up", timeout=20
    )
    a, b = in_sync(new, old)
    assert a == b
    assert_alive(old, new)


# ------------------------------------------------------------------ cluster


def cluster_node_id(s) -> str:
    return s.client().execute_command("CLUSTER", "MYID").decode()


@pytest.mark.parametrize("aof", ["yes", "no"])
def test_cluster_failover_then_takeover(server_factory, aof):
    """3 primaries + 1 replica. CLUSTER FAILOVER (coordinated: the old primary pauses writes and
    stays alive as a replica), then CLUSTER FAILOVER TAKEOVER back (uncoordinated). The load uses
    WAIT, so "acknowledged" means "on the replica" (a takeover may drop the rest)."""
    nodes = [
        server_factory(
            "--appendonly",
            aof,
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
        for i in range(4)
    ]
    cs = [n.client() for n in nodes]
    for i, c in enumerate(cs[:3]):
        c.execute_command(
            "CLUSTER", "ADDSLOTSRANGE", i * 5461, 16383 if i == 2 else i * 5461 + 5460
        )
    for n in nodes[1:]:
        cs[0].execute_command(
            "CLUSTER",
            "MEET",
            "127.0.0.1",
            n.port,
            int(n.client().config_get("cluster-port")["cluster-port"]),
        )
    wait_until(
        lambda: all(
            c.execute_command("CLUSTER", "INFO").decode().count("cluster_known_nodes:4") for c in cs
        ),
        timeout=30,
        msg="nodes met",
    )
    a, b = nodes[0], nodes[3]
    a_id = cluster_node_id(a)
    cs[3].execute_command("CLUSTER", "REPLICATE", a_id)
    wait_until(
        lambda: (
            all(f"slave {a_id}" in c.execute_command("CLUSTER", "NODES").decode() for c in cs)
            and "cluster_state:ok" in cs[0].execute_command("CLUSTER", "INFO").decode()
            and role(b) == "slave"
            and b.client().info("replication").get("master_link_status") == "up"
        ),
        timeout=30,
        msg="cluster ok with a replica",
    )
    q = next(
        f"vt:{{op{i}}}"
        for i in range(100)
        if cs[0].execute_command("CLUSTER", "KEYSLOT", f"vt:{{op{i}}}") < 5461
    )
    load = Load(a, q=q, durable=True).start()

    b.client().execute_command("CLUSTER", "FAILOVER")
    wait_until(
        lambda: role(b) == "master" and role(a) == "slave", timeout=30, msg="coordinated failover"
    )
    load.primary = b
    load.wait_progress(200)
    assert_alive(*nodes)

    a.client().execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    wait_until(lambda: role(a) == "master" and role(b) == "slave", timeout=30, msg="takeover")
    load.primary = a
    load.wait_progress(200)
    final = load.finish()
    load.check(final)
    assert_alive(*nodes)


# ------------------------------------------------------------------ maxmemory


def test_schedule_ticks_obey_maxmemory(server_factory):
    """A 10 ms schedule of 256 KiB payloads under maxmemory 30 MB (noeviction): the ticks that
    would exceed it are skipped and counted (VT.ENQUEUE is refused then too); memory stays
    bounded; once a consumer frees memory the schedule fires again."""
    s = server_factory("--maxmemory", "30mb", "--maxmemory-policy", "noeviction")
    c = s.client()
    c.execute_command("VT.SCHEDULE", "SET", Q, "big", "EVERY", 10, "PAYLOAD", b"x" * 256 * 1024)

    def skipped_enough():
        used = c.info("memory")["used_memory"]
        assert used < 40 * 1024 * 1024, f"schedule grew the server to {used / 2**20:.1f} MB"
        return info(c, Q).get("schedule_ticks_skipped_total", 0) >= 50

    wait_until(skipped_enough, timeout=30, interval=0.05, msg="ticks skipped over maxmemory")
    with pytest.raises(valkey.exceptions.ResponseError, match="maxmemory"):
        c.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x" * 1024)
    # a consumer drains: memory is freed and ticks fire again (the queue stays usable)
    fired = info(c, Q)["enqueued_total"]
    for _ in range(3):
        for _q, tid, tok, _a, _p in fetch(c, Q, count=100) or []:
            c.execute_command("VT.ACK", Q, tid, tok)
    wait_until(lambda: info(c, Q)["enqueued_total"] > fired + 5, timeout=20, msg="ticks fire again")
    c.execute_command("VT.SCHEDULE", "DEL", Q, "big")
    assert c.info("memory")["used_memory"] < 40 * 1024 * 1024
    assert c.execute_command("VT.SCHEDULE", "LIST", Q) == []
    assert_alive(s)


def test_skipped_ticks_replicate_and_persist(server_factory):
    """The skip is an effect like a fire: the replica's schedule and counter match, and the
    counter survives a reload."""
    primary = server_factory("--maxmemory", "20mb", "--maxmemory-policy", "noeviction", name="p")
    replica = start_replica(server_factory, primary, name="r")
    c = primary.client()
    c.execute_command("VT.SCHEDULE", "SET", Q, "big", "EVERY", 20, "PAYLOAD", b"x" * 256 * 1024)
    wait_until(lambda: info(c, Q)["schedule_ticks_skipped_total"] >= 5, timeout=30, msg="skips")
    c.execute_command("VT.SCHEDULE", "DEL", Q, "big")
    a, b = in_sync(primary, replica)
    assert a == b and a["info"]["schedule_ticks_skipped_total"] >= 5
    c.execute_command("VT.CLEAR", Q, "ALL")  # room for DEBUG RELOAD's copy
    before = snapshot(c, Q)
    assert c.execute_command("DEBUG", "RELOAD") == b"OK"
    assert snapshot(c, Q) == before
    assert_alive(primary, replica)
