"""VT.RATELIMIT: at most N tasks start per period across all fetchers, enforced by VT.FETCHBATCH;
a fetcher blocked for lack of tokens is woken by the server when they refill; the bucket is
persisted (RDB, AOF) and a replica applies the primary's decisions (same digest)."""

import threading
import time

import pytest
import valkey
from test_replication import digest, synced

from conftest import fetch, info, rewrite_aof, wait_until

Q = "vt:{rl}"


def enqueue(c, n, q=Q):
    for i in range(0, n, 500):
        c.execute_command("VT.ENQUEUE", q, "PAYLOAD", *[f"p{j}" for j in range(i, min(n, i + 500))])


def get(c, q=Q):
    r = c.execute_command("VT.RATELIMIT", "GET", q)
    if r is None:
        return None
    if isinstance(r, list):
        r = dict(zip(r[::2], r[1::2], strict=True))
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in r.items()}


def test_set_get_off_and_bad_input(r):
    assert get(r) is None
    assert r.execute_command("VT.RATELIMIT", "SET", Q, 5, "PER", 1000) == 1
    # the same limit again: nothing changes (a worker applies its settings at every start)
    assert r.execute_command("VT.RATELIMIT", "SET", Q, 5, "PER", 1000) == 0
    assert get(r) == {"limit": 5, "per_ms": 1000, "burst": 5, "tokens": 5}
    assert r.execute_command("VT.RATELIMIT", "SET", Q, 5, "PER", 1000, "BURST", 2) == 1
    assert get(r)["tokens"] == 2, "a changed limit keeps the tokens there are, up to the new burst"
    for bad, msg in [
        (["SET", Q, 0, "PER", 1000], "limit"),
        (["SET", Q, 5, "PER", 0], "PER"),
        (["SET", Q, 5, "EVERY", 10], "syntax"),
        (["SET", Q, 5, "PER", 10, "BURST", 0], "BURST"),
        (["SET", Q, 5, "PER", 86_400_001], "PER"),
        (["SET", Q, "x", "PER", 10], "limit"),
    ]:
        with pytest.raises(valkey.ResponseError, match=msg):
            r.execute_command("VT.RATELIMIT", *bad)
    assert get(r)["limit"] == 5, "a refused SET changes nothing"
    assert r.execute_command("VT.RATELIMIT", "OFF", Q) == 1
    assert r.execute_command("VT.RATELIMIT", "OFF", Q) == 0
    assert get(r) is None


def test_fetch_hands_out_at_most_the_tokens(r):
    enqueue(r, 50)
    r.execute_command("VT.RATELIMIT", "SET", Q, 10, "PER", 3_600_000)
    assert len(fetch(r, Q, count=50)) == 10
    assert fetch(r, Q, count=50) == []
    assert info(r, Q)["ready"] == 40
    # other queues of the same fetch are served from their own (unlimited) supply
    enqueue(r, 3, q="vt:{rl}free")
    got = fetch(r, Q, "vt:{rl}free", count=50)
    assert len(got) == 3 and {g[0] for g in got} == {b"vt:{rl}free"}
    r.execute_command("VT.RATELIMIT", "OFF", Q)
    assert len(fetch(r, Q, count=50)) == 40, "lifting the limit lets the rest go"


def test_blocked_fetcher_is_woken_when_tokens_refill(server):
    c = server.client()
    c.execute_command("VT.RATELIMIT", "SET", Q, 1, "PER", 400)
    enqueue(c, 3)
    assert len(fetch(c, Q, count=3)) == 1
    # tasks are ready but no token is: the blocked fetch is answered by the refill wake-up (a
    # missing wake-up would end in the BLOCK timeout's nil reply)
    other = server.client()
    got = fetch(other, Q, count=3, block=20_000)
    assert got is not None and len(got) == 1
    got = fetch(other, Q, count=3, block=20_000)
    assert got is not None and len(got) == 1


def test_rate_is_never_exceeded_by_several_fetchers(server):
    """Starts counted by the broker over a window stay within limit x window + burst."""
    c = server.client()
    limit, per = 20, 1000
    enqueue(c, 2000)
    c.execute_command("VT.RATELIMIT", "SET", Q, limit, "PER", per)
    taken: list[int] = []
    stop = threading.Event()

    def worker(i):
        cl = server.client()
        while not stop.is_set():
            got = fetch(cl, Q, worker=f"w{i}", count=7, block=200)
            if got:
                taken.append(len(got))

    start = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(10)
    elapsed_ms = (time.monotonic() - start) * 1000
    total = sum(taken)
    assert total <= limit + limit * elapsed_ms / per + 1, (total, elapsed_ms)
    assert total > limit, "the refills were handed out too (not only the first burst)"
    assert info(c, Q)["inflight"] == total


def test_bucket_survives_reload_and_replica_applies_the_same_decisions(replica_pair):
    primary, replica = replica_pair
    p = primary.client()
    p.execute_command("VT.RATELIMIT", "SET", Q, 5, "PER", 3_600_000, "BURST", 8)
    enqueue(p, 20)
    assert len(fetch(p, Q, count=6)) == 6
    synced(primary, replica, Q)
    rp = replica.client()
    assert get(rp) == {"limit": 5, "per_ms": 3_600_000, "burst": 8, "tokens": 2}
    p.execute_command("DEBUG", "RELOAD")
    assert get(p)["tokens"] == 2
    assert len(fetch(p, Q, count=6)) == 2
    p.execute_command("VT.RATELIMIT", "OFF", Q)
    synced(primary, replica, Q)
    assert get(rp) is None


def test_bucket_survives_aof_restart(server_factory):
    s = server_factory(
        "--appendonly", "yes", "--appendfsync", "always", "--aof-use-rdb-preamble", "no"
    )
    c = s.client()
    c.execute_command("VT.RATELIMIT", "SET", Q, 4, "PER", 3_600_000)
    enqueue(c, 10)
    assert len(fetch(c, Q, count=3)) == 3
    rewrite_aof(c)
    assert len(fetch(c, Q, count=3)) == 1  # after the rewrite: an incremental effect
    before = digest(c, Q)
    s.restart()
    c = s.client()
    assert digest(c, Q) == before
    assert get(c)["tokens"] == 0


def test_refill_during_client_pause_waits_for_the_pause_to_end(server_factory):
    """Tokens that refill while writes are paused wake nobody then (a lease is a write, and
    nothing may be propagated): the blocked fetcher is served once the pause ends."""
    s = server_factory("--appendonly", "yes")
    c = s.client()
    c.execute_command("VT.RATELIMIT", "SET", Q, 1, "PER", 300)
    enqueue(c, 2)
    assert len(fetch(c, Q, count=2)) == 1
    got = {}

    def waiter():
        got["reply"] = fetch(s.client(), Q, count=2, block=10_000)
        got["at"] = time.monotonic()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    wait_until(lambda: c.info("clients")["blocked_clients"] == 1, msg="fetcher blocked")
    c.execute_command("CLIENT", "PAUSE", 1200, "WRITE")
    paused_at = time.monotonic()
    aof = c.info("persistence")["aof_current_size"]
    time.sleep(0.6)  # the token refills inside the pause
    assert "reply" not in got and info(c, Q)["ready"] == 1, "leased while writes were paused"
    assert c.info("persistence")["aof_current_size"] == aof, "propagated while paused"
    t.join(15)
    assert got["reply"] is not None and len(got["reply"]) == 1
    assert got["at"] - paused_at >= 1.0, "served during the pause"
    assert s.alive()
