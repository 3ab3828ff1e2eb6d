"""VT.SCHEDULE PAUSE / RESUME / RUN: schedules controlled at runtime. A paused schedule fires no
tick (and stays paused when SET again, across reloads and on replicas); RUN enqueues one task."""

import time

import pytest
import valkey
from test_replication import synced

from conftest import info, rec, wait_until

Q = "vt:{sc}"


def listed(c, q=Q):
    return {row[0].decode(): row for row in c.execute_command("VT.SCHEDULE", "LIST", q)}


def test_pause_stops_ticks_and_resume_restarts_them(r):
    r.execute_command("VT.SCHEDULE", "SET", Q, "tick", "EVERY", 100, "PAYLOAD", "p")
    wait_until(lambda: info(r, Q)["ready"] >= 1, timeout=10, msg="a first tick")
    assert r.execute_command("VT.SCHEDULE", "PAUSE", Q, "tick") == 1
    assert listed(r)["tick"][5] == 1
    n = info(r, Q)["ready"]
    time.sleep(0.6)  # six ticks would have fired
    assert info(r, Q)["ready"] == n, "a paused schedule fired"
    # settings re-applied (a worker start): the schedule stays paused
    r.execute_command("VT.SCHEDULE", "SET", Q, "tick", "EVERY", 100, "PAYLOAD", "p2")
    assert listed(r)["tick"][5] == 1
    assert r.execute_command("VT.SCHEDULE", "RESUME", Q, "tick") == 1
    row = listed(r)["tick"]
    assert row[5] == 0 and row[3] > int(time.time() * 1000) - 1000, "missed ticks are not made up"
    wait_until(lambda: info(r, Q)["ready"] > n, timeout=10, msg="ticks after resume")


def test_run_enqueues_exactly_one_task_paused_or_not(r):
    r.execute_command("VT.SCHEDULE", "SET", Q, "nightly", "CRON", "0 3 * * *", "PAYLOAD", "job")
    r.execute_command("VT.SCHEDULE", "PAUSE", Q, "nightly")
    next_run = listed(r)["nightly"][3]
    tid = r.execute_command("VT.SCHEDULE", "RUN", Q, "nightly")
    assert tid
    t = rec(r.execute_command("VT.GET", Q, tid))
    assert t["state"] == b"ready" and t["payload"] == b"job"
    assert info(r, Q)["ready"] == 1
    assert listed(r)["nightly"][3] == next_run, "RUN leaves the ticks alone"
    assert listed(r)["nightly"][5] == 1


def test_unknown_schedule_and_bad_arguments(r):
    assert r.execute_command("VT.SCHEDULE", "PAUSE", Q, "nope") == 0
    assert r.execute_command("VT.SCHEDULE", "RESUME", Q, "nope") == 0
    assert r.execute_command("VT.SCHEDULE", "RUN", Q, "nope") is None
    assert info(r, Q)["ready"] == 0
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.SCHEDULE", "RUN", Q)
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.SCHEDULE", "PAUSE", Q, "a", "b")


def test_pause_and_run_replicate_and_persist(replica_pair):
    primary, replica = replica_pair
    p = primary.client()
    p.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 3_600_000, "PAYLOAD", "x")
    p.execute_command("VT.SCHEDULE", "PAUSE", Q, "s")
    p.execute_command("VT.SCHEDULE", "RUN", Q, "s")
    synced(primary, replica, Q)
    assert listed(replica.client())["s"][5] == 1
    p.execute_command("DEBUG", "RELOAD")
    assert listed(p)["s"][5] == 1
    p.execute_command("VT.SCHEDULE", "RESUME", Q, "s")
    synced(primary, replica, Q)
    assert listed(replica.client())["s"][5] == 0
