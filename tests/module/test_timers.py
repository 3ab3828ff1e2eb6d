"""Server-side timers: lease expiry + rescue, delayed promotion, periodic schedules."""

import time

import pytest
import valkey

from conftest import fetch, info, rec, wait_until

Q = "vt:{tm}"


def now_ms():
    return int(time.time() * 1000)


def test_expired_lease_is_rescued_automatically(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    [e] = fetch(r, Q, lease=100)
    deadline = rec(r.execute_command("VT.GET", Q, "a"))["deadline"]
    wait_until(lambda: info(r, Q)["ready"] == 1, timeout=3, msg="automatic rescue")
    assert now_ms() >= deadline
    i = info(r, Q)
    assert (i["inflight"], i["rescued_total"]) == (0, 1)
    # the stale token can no longer ack or fail the redelivered task
    [e2] = fetch(r, Q, lease=60000)
    assert e2[1] == b"a" and e2[3] == 2 and e2[2] != e[2]
    assert r.execute_command("VT.ACK", Q, "a", e[2]) == 0
    assert r.execute_command("VT.FAIL", Q, "a", e[2], "late") is None
    assert rec(r.execute_command("VT.GET", Q, "a"))["state"] == b"inflight"
    assert r.execute_command("VT.ACK", Q, "a", e2[2]) == 1


def test_not_rescued_before_deadline_while_extended(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    fetch(r, Q, worker="w", lease=200)
    end = time.monotonic() + 0.8
    while time.monotonic() < end:  # heartbeat well inside the lease
        assert r.execute_command("VT.EXTEND", Q, "w", 200) == 1
        time.sleep(0.05)
    assert info(r, Q)["rescued_total"] == 0
    assert rec(r.execute_command("VT.GET", Q, "a"))["state"] == b"inflight"
    wait_until(lambda: info(r, Q)["rescued_total"] == 1, timeout=3)  # stops heartbeating -> rescued


def test_rescue_past_max_attempts_dead_letters(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "MAXATTEMPTS", 2, "PAYLOAD", "x")
    for _ in range(2):
        wait_until(lambda: fetch(r, Q, lease=50), timeout=3, msg="fetch")
    wait_until(lambda: info(r, Q)["dead"] == 1, timeout=3)
    d = rec(r.execute_command("VT.PEEK", Q, "DEAD")[0])
    assert d["error"] == b"lease expired after 2 attempts" and d["attempt"] == 2
    i = info(r, Q)
    assert (i["rescued_total"], i["dead_total"]) == (1, 1)


def test_max_attempts_config_dead_letters(r):
    r.config_set("vtasks.max-attempts", 1)
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    e = fetch(r, Q)[0]
    assert r.execute_command("VT.FAIL", Q, "a", e[2], "x", "RETRY", 0) == b"dead"


def test_delayed_promoted_on_time(r):
    t = now_ms() + 250
    r.execute_command("VT.ENQUEUE", Q, "AT", t, "ID", "a", "PAYLOAD", "x")
    r.execute_command("VT.ENQUEUE", Q, "DELAY", 60000, "ID", "later", "PAYLOAD", "x")
    assert info(r, Q)["delayed"] == 2
    # poll VT.GET (read-only: it cannot promote by itself) until the server's timer moved it
    wait_until(
        lambda: rec(r.execute_command("VT.GET", Q, "a"))["state"] == b"ready",
        timeout=3,
        interval=0.002,
    )
    late = now_ms() - t
    assert -5 <= late < 50, late
    i = info(r, Q)
    assert (i["ready"], i["delayed"]) == (1, 1)


def test_many_delayed_promoted_in_order(r):
    base = now_ms() + 100
    r.execute_command("VT.ENQUEUE", Q, "AT", base + 100, "ID", "second", "PAYLOAD", "x")
    r.execute_command("VT.ENQUEUE", Q, "AT", base, "ID", "first", "PAYLOAD", "x")
    wait_until(lambda: info(r, Q)["ready"] == 2, timeout=3)
    assert [e[1] for e in fetch(r, Q, count=5)] == [b"first", b"second"]


def test_schedule_every_fires_once_per_tick(r):
    assert (
        r.execute_command(
            "VT.SCHEDULE", "SET", Q, "tick", "EVERY", 200, "PRIORITY", 7, "PAYLOAD", "job"
        )
        == b"OK"
    )
    [[name, kind, spec, next_run, payload, _]] = r.execute_command("VT.SCHEDULE", "LIST", Q)
    assert (name, kind, spec, payload) == (b"tick", b"every", b"200", b"job")
    assert abs(next_run - (now_ms() + 200)) < 100
    start = time.monotonic()
    wait_until(lambda: info(r, Q)["enqueued_total"] >= 5, timeout=5, msg="5 ticks")
    elapsed = time.monotonic() - start
    n = info(r, Q)["enqueued_total"]
    # exactly one task per elapsed tick: ~elapsed/0.2 (+-1 for the edges)
    assert abs(n - elapsed / 0.2) <= 1.5, (n, elapsed)
    es = fetch(r, Q, count=100)
    assert all(e[4] == b"job" for e in es)
    assert len({e[1] for e in es}) == len(es)  # fresh id per tick
    assert rec(r.execute_command("VT.GET", Q, es[0][1]))["priority"] == 7
    assert r.execute_command("VT.SCHEDULE", "DEL", Q, "tick") == 1
    assert r.execute_command("VT.SCHEDULE", "DEL", Q, "tick") == 0
    settled = info(r, Q)["enqueued_total"]
    time.sleep(0.5)
    assert info(r, Q)["enqueued_total"] == settled
    assert info(r, Q)["schedules"] == 0


def test_schedule_cron_every_second(r):
    r.execute_command("VT.SCHEDULE", "SET", Q, "sec", "CRON", "* * * * * *", "PAYLOAD", "c")
    [[_, kind, spec, next_run, _, _]] = r.execute_command("VT.SCHEDULE", "LIST", Q)
    assert kind == b"cron" and spec == b"* * * * * *"
    assert next_run % 1000 == 0 and next_run > now_ms() - 5
    wait_until(lambda: info(r, Q)["enqueued_total"] >= 2, timeout=5)
    es = fetch(r, Q, count=10)
    times = sorted(rec(r.execute_command("VT.GET", Q, e[1]))["enqueued_at"] for e in es)
    # each tick fired once, right after its second boundary
    assert all(t % 1000 < 100 for t in times), times
    assert len({t // 1000 for t in times}) == len(times)


def test_schedule_cron_five_fields_and_errors(r):
    r.execute_command("VT.SCHEDULE", "SET", Q, "m", "CRON", "*/5 * * * *", "PAYLOAD", "x")
    [[_, _, _, next_run, _, _]] = r.execute_command("VT.SCHEDULE", "LIST", Q)
    assert next_run % 300000 == 0
    for bad in (["CRON", "nope"], ["CRON", "* * *"], ["EVERY", 0], ["EVERY", "x"], ["HOURLY", 1]):
        with pytest.raises(valkey.ResponseError):
            r.execute_command("VT.SCHEDULE", "SET", Q, "b", *bad, "PAYLOAD", "x")
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.SCHEDULE", "SET", Q, "b", "EVERY", 10)
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.SCHEDULE", "SET", Q, "b", "EVERY", 10, "PAYLOAD", "x", "extra")
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.SCHEDULE", "NOPE", Q)
    assert r.execute_command("VT.SCHEDULE", "LIST", "vt:{none}") == []


def test_schedule_replace(r):
    r.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 3600000, "PAYLOAD", "a")
    r.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 7200000, "PAYLOAD", "b")
    [[_, _, spec, _, payload, _]] = r.execute_command("VT.SCHEDULE", "LIST", Q)
    assert (spec, payload) == (b"7200000", b"b")


def test_timers_survive_rename(r):
    r.execute_command("VT.ENQUEUE", Q, "DELAY", 200, "ID", "a", "PAYLOAD", "x")
    r.rename(Q, "vt:{tm}new")
    wait_until(
        lambda: rec(r.execute_command("VT.GET", "vt:{tm}new", "a"))["state"] == b"ready", timeout=3
    )


def test_timers_handle_deleted_and_flushed_keys(r):
    r.execute_command("VT.ENQUEUE", Q, "DELAY", 100, "PAYLOAD", "x")
    r.delete(Q)
    r.set(Q, "now a string")  # the timer's registry still points here: it must re-check the type
    runs = r.info("vtasks")["vtasks_timer_runs"]
    wait_until(lambda: r.info("vtasks")["vtasks_timer_runs"] > runs + 1, timeout=3)
    time.sleep(0.2)
    assert r.get(Q) == b"now a string"
    r.execute_command("VT.ENQUEUE", "vt:{tm}2", "DELAY", 100, "PAYLOAD", "x")
    r.flushall()
    time.sleep(0.3)
    assert r.ping() and r.dbsize() == 0
    assert r.info("vtasks")["vtasks_queues"] == 0 and r.info("vtasks")["vtasks_tasks_delayed"] == 0
