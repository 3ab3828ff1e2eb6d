"""RDB (DEBUG RELOAD, restart) and AOF (with and without the RDB preamble) keep everything."""

import time

import pytest

from conftest import fetch, info, rec, rewrite_aof, snapshot, wait_until

Q = "vt:{p}"


def populate(c, q=Q):
    """A queue in every state: ready (priorities), delayed, in flight, dead (with eviction),
    retried, unique keys, schedules (one paused), a rate limit and counters."""
    c.config_set("vtasks.dlq-cap", 2)
    c.execute_command(
        "VT.ENQUEUE", q, "ENTRIES", *[x for i in range(6) for x in (f"t{i}", f"payload-{i}")]
    )
    c.execute_command("VT.ENQUEUE", q, "PRIORITY", 9, "ID", "hi", "PAYLOAD", b"\x00binary\xff")
    c.execute_command("VT.ENQUEUE", q, "DELAY", 3_600_000, "ID", "later", "PAYLOAD", "d")
    c.execute_command(
        "VT.ENQUEUE", q, "UNIQUE", "uk", 3_600_000, "ID", "uniq", "MAXATTEMPTS", 9, "PAYLOAD", "u"
    )
    es = fetch(c, q, worker="wA", count=5, lease=3_600_000)
    for e in es[:3]:
        c.execute_command(
            "VT.FAIL", q, e[1], e[2], f"boom {e[1].decode()}"
        )  # 3 dead, cap 2 -> 1 evicted
    c.execute_command("VT.FAIL", q, es[3][1], es[3][2], "retry me", "RETRY", 3_600_000)
    c.execute_command("VT.ACK", q, es[4][1], es[4][2])
    # a rate limit (1 a day, so the tokens left do not change during a test) with a token taken
    c.execute_command("VT.RATELIMIT", "SET", q, 1, "PER", 86_400_000, "BURST", 50)
    fetch(c, q, worker="wB", count=1, lease=3_600_000)
    c.execute_command(
        "VT.SCHEDULE",
        "SET",
        q,
        "hourly",
        "CRON",
        "0 0 * * * *",
        "PRIORITY",
        3,
        "PAYLOAD",
        "cronjob",
    )
    c.execute_command("VT.SCHEDULE", "SET", q, "every", "EVERY", 3_600_000, "PAYLOAD", "everyjob")
    c.execute_command("VT.SCHEDULE", "PAUSE", q, "hourly")
    s = snapshot(c, q)
    assert all(s[k] for k in ("READY", "DELAYED", "INFLIGHT", "DEAD")), s
    assert s["info"]["dead_evicted"] == 1 and s["info"]["acked_total"] == 1
    assert s["rate"] is not None and [row[5] for row in s["schedules"]] == [0, 1]  # every, hourly
    return s


def test_debug_reload_keeps_everything(server):
    c = server.client()
    before = populate(c)
    assert c.execute_command("DEBUG", "RELOAD") == b"OK"
    assert snapshot(c, Q) == before
    assert info(c, Q)["unique_keys"] == 1
    assert c.execute_command("VT.ENQUEUE", Q, "UNIQUE", "uk", 1000, "PAYLOAD", "dup") == [None]
    # the in-flight token still acks after the reload
    e = rec(c.execute_command("VT.PEEK", Q, "INFLIGHT", "COUNT", 1)[0])
    assert c.execute_command("VT.ACK", Q, e["id"], e["token"]) == 1


def test_reload_rearms_timers(server):
    c = server.client()
    c.execute_command("VT.ENQUEUE", Q, "DELAY", 400, "ID", "d", "PAYLOAD", "x")
    c.execute_command("VT.ENQUEUE", Q, "ID", "f", "PAYLOAD", "x")
    fetch(c, Q, lease=400)
    c.execute_command("DEBUG", "RELOAD")
    wait_until(lambda: info(c, Q)["ready"] == 2, timeout=3, msg="promotion and rescue after reload")


def test_restart_from_rdb(server):
    c = server.client()
    before = populate(c)
    c.save()
    server.restart()
    assert snapshot(server.client(), Q) == before


@pytest.mark.parametrize("preamble", ["yes", "no"])
def test_restart_from_aof(server_factory, preamble):
    s = server_factory(
        "--appendonly", "yes", "--appendfsync", "always", "--aof-use-rdb-preamble", preamble
    )
    c = s.client()
    populate(c)
    # rewrite (exercises the aof_rewrite callback), then more incremental writes on top
    rewrite_aof(c)
    c.execute_command("VT.ENQUEUE", Q, "ID", "after-rewrite", "PAYLOAD", "x")
    e = fetch(c, "vt:{p}", worker="wC", count=1, lease=3_600_000)
    c.execute_command("VT.EXTEND", Q, "wC", 7_200_000)
    c.execute_command("VT.SCHEDULE", "DEL", Q, "every")
    c.execute_command("VT.RETRYDEAD", Q, "t1")
    before = snapshot(c, Q)
    s.restart()
    c = s.client()
    assert snapshot(c, Q) == before
    assert info(c, Q)["unique_keys"] == 1
    assert c.execute_command("VT.ACK", Q, e[0][1], e[0][2]) == 1


def test_aof_replay_of_incremental_effects(server_factory):
    """No rewrite at all: the AOF holds only the replicated effects (VT._FX ...)."""
    s = server_factory("--appendonly", "yes", "--appendfsync", "always")
    c = s.client()
    before = populate(c)
    s.restart()
    assert snapshot(s.client(), Q) == before


def test_aof_contains_explicit_effects_not_commands(server_factory, tmp_path):
    s = server_factory("--appendonly", "yes", "--aof-use-rdb-preamble", "no", name="aofcheck")
    c = s.client()
    c.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    fetch(c, Q)
    c.execute_command("BGREWRITEAOF")
    wait_until(
        lambda: (
            c.info("persistence")["aof_rewrite_in_progress"] == 0
            and c.info("persistence")["aof_rewrite_scheduled"] == 0
        ),
        timeout=10,
    )
    c.execute_command("VT.ENQUEUE", Q, "DELAY", 10, "PAYLOAD", "y")
    time.sleep(0.05)
    text = b"".join(p.read_bytes() for p in (s.dir / "appendonlydir").glob("*.aof"))
    assert b"VT._LOAD" in text and b"VT._FX" in text
    low = text.lower()
    assert b"vt.enqueue" not in low and b"vt.fetchbatch" not in low  # never the original commands


def test_missed_ticks_coalesce_after_downtime(server):
    """Ticks missed while the server was down fire once after the load, then the cadence resumes."""
    c = server.client()
    c.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 1000, "PAYLOAD", "p")
    c.save()
    server.stop()
    time.sleep(3.3)  # three ticks missed
    server.start()
    c = server.client()
    wait_until(lambda: info(c, Q)["enqueued_total"] >= 1, timeout=2, msg="catch-up tick")
    t_load = int(time.time() * 1000)
    time.sleep(0.3)
    assert info(c, Q)["enqueued_total"] == 1  # once, not three times
    [[_, _, _, next_run, _, _]] = c.execute_command("VT.SCHEDULE", "LIST", Q)
    assert t_load + 500 < next_run <= t_load + 1100  # next tick computed from now


def _resp_commands(data: bytes):
    """Parses RESP arrays of bulk strings (an AOF file) into argument lists."""
    i, out = 0, []
    while i < len(data):
        assert data[i : i + 1] == b"*", data[i : i + 20]
        j = data.index(b"\r\n", i)
        n, i, args = int(data[i + 1 : j]), j + 2, []
        for _ in range(n):
            j = data.index(b"\r\n", i)
            ln = int(data[i + 1 : j])
            args.append(data[j + 2 : j + 2 + ln])
            i = j + 2 + ln + 2
        out.append(args)
    return out


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def test_aof_rejected_header_leaves_queue_unchanged(server_factory):
    """gauntlet F1b: a VT._LOAD header record that the loader rejects (next_seq out of range) used
    to reset the queue and keep the bad next_seq, so every later save wrote a header that no longer
    loads. Now the queue is left as it was and saves/reloads keep working."""
    s = server_factory(
        "--appendonly", "yes", "--appendfsync", "always", "--aof-use-rdb-preamble", "no"
    )
    c = s.client()
    c.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "1", "b", "2")
    rewrite_aof(c)
    before = snapshot(c, Q)
    s.stop()
    aofdir = s.dir / "appendonlydir"
    base = next(aofdir.glob("*.base.aof")).read_bytes()
    header = next(
        a[2] for a in _resp_commands(base) if a[0].upper() == b"VT._LOAD" and a[2][:1] == b"H"
    )
    bad = header[:9] + (18446744065119617034).to_bytes(8, "little") + header[17:]
    incr = next(aofdir.glob("*.incr.aof"))
    with open(incr, "ab") as f:
        f.write(_resp(b"VT._LOAD", Q.encode(), bad))
    s.restart()
    c = s.client()
    assert snapshot(c, Q) == before
    assert c.execute_command("DEBUG", "RELOAD") == b"OK"
    assert snapshot(c, Q) == before
    assert len(fetch(c, Q, count=5)) == 2
