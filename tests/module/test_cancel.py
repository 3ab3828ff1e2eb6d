"""VT.CANCEL and VT.EXTEND ... WITHCANCELLED (PROTOCOL.md): a waiting task is dead-lettered at once,
a running one is flagged (its lease no longer extended, never retried nor run again); the flag
replicates, persists and is refused nothing by a paused server's rules."""

import threading
import time

import pytest
import valkey
from test_replication import synced

from conftest import fetch, info, rec, rewrite_aof, wait_until

Q = "vt:{c}"


def get(c, id):
    return rec(c.execute_command("VT.GET", Q, id))


def test_waiting_tasks_are_dead_lettered_with_the_reason(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "ready", "PAYLOAD", "x")
    r.execute_command("VT.ENQUEUE", Q, "ID", "later", "DELAY", 3_600_000, "PAYLOAD", "y")
    assert r.execute_command("VT.CANCEL", Q, "ready", "REASON", "not needed") == b"removed"
    assert r.execute_command("VT.CANCEL", Q, "later") == b"removed"
    assert (
        get(r, "ready")["state"] == b"dead" and get(r, "ready")["error"] == b"cancelled: not needed"
    )
    assert get(r, "later")["error"] == b"cancelled"
    i = info(r, Q)
    assert (i["ready"], i["delayed"], i["dead"], i["dead_total"]) == (0, 0, 2, 2)
    assert r.execute_command("VT.CANCEL", Q, "ready") is None  # dead: nothing to cancel
    assert r.execute_command("VT.CANCEL", Q, "nope") is None
    assert r.execute_command("VT.CANCEL", "vt:{c}missing", "nope") is None


def test_running_task_is_flagged_and_extend_leaves_it(r):
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "1", "b", "2")
    got = {e[1]: e[2] for e in fetch(r, Q, worker="w", lease=60_000)}
    deadline = get(r, "a")["deadline"]
    assert r.execute_command("VT.CANCEL", Q, "a", "REASON", "stop") == b"flagged"
    assert r.execute_command("VT.CANCEL", Q, "a") == b"flagged"
    assert r.execute_command("VT.EXTEND", Q, "w", 120_000) == 1  # b only
    assert r.execute_command("VT.EXTEND", Q, "w", 120_000, "WITHCANCELLED") == [1, [b"a"]]
    assert r.execute_command("VT.EXTEND", Q, "w", 90_000, "withcancelled") == [1, [b"a"]]
    assert get(r, "a")["deadline"] == deadline
    # FAIL ... RETRY of a cancelled task dead-letters it
    assert r.execute_command("VT.FAIL", Q, "a", got[b"a"], "TaskCancelled", "RETRY", 0) == b"dead"
    assert get(r, "a")["state"] == b"dead"
    assert r.execute_command("VT.EXTEND", Q, "w", 60_000, "WITHCANCELLED") == [1, []]


def test_expired_cancelled_lease_is_dead_lettered_by_the_timer(r):
    # the cancel must land inside the lease: a longer one when the machine is too slow for it
    for lease in (100, 1000, 5000):
        r.execute_command("VT.ENQUEUE", Q, "ID", "t", "MAXATTEMPTS", 9, "PAYLOAD", "x")
        fetch(r, Q, lease=lease)
        if r.execute_command("VT.CANCEL", Q, "t", "REASON", "bye") == b"flagged":
            break
        r.execute_command("VT.DELETE", Q, "t")
    else:
        pytest.fail("the lease expired before the cancel every time")
    rescued = info(r, Q)["rescued_total"]
    wait_until(lambda: get(r, "t")["state"] == b"dead", timeout=10, msg="timer buried it")
    assert get(r, "t")["error"] == b"cancelled: bye"
    assert info(r, Q)["rescued_total"] == rescued and info(r, Q)["ready"] == 0


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["VT.CANCEL", Q], "syntax"),
        (["VT.CANCEL", Q, "t", "REASON"], "syntax"),
        (["VT.CANCEL", Q, "t", "WHY", "x"], "unknown option"),
        (["VT.CANCEL", Q, "i" * 129], "task id"),
        (["VT.CANCEL", Q, "t", "REASON", "x" * 70_000], "reason"),
        (["VT.EXTEND", Q, "w", 100, "WITHSOMETHING"], "unknown option"),
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(r, argv, msg):
    r.execute_command("VT.ENQUEUE", Q, "ID", "t", "PAYLOAD", "x")
    with pytest.raises(valkey.exceptions.ResponseError, match=msg):
        r.execute_command(*argv)
    assert get(r, "t")["state"] == b"ready"


def test_wrong_type_key(r):
    r.set("vt:{c}str", "x")
    with pytest.raises(valkey.exceptions.ResponseError, match="WRONGTYPE"):
        r.execute_command("VT.CANCEL", "vt:{c}str", "t")


def test_flag_replicates_and_persists(replica_pair):
    primary, replica = replica_pair
    p = primary.client()
    p.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "1", "b", "2", "c", "3")
    fetch(p, Q, worker="w", count=2, lease=3_600_000)
    assert p.execute_command("VT.CANCEL", Q, "a", "REASON", "r") == b"flagged"
    assert p.execute_command("VT.CANCEL", Q, "c") == b"removed"
    a, b = synced(primary, replica, Q)
    assert a == b
    # the replica holds the flag: its EXTEND (were it promoted) leaves the lease alone
    rp = replica.client()
    rp.execute_command("REPLICAOF", "NO", "ONE")
    assert rp.execute_command("VT.EXTEND", Q, "w", 1000, "WITHCANCELLED") == [1, [b"a"]]
    # and a reload keeps it
    p.execute_command("DEBUG", "RELOAD")
    assert p.execute_command("VT.EXTEND", Q, "w", 1000, "WITHCANCELLED") == [1, [b"a"]]


@pytest.mark.parametrize("preamble", ["yes", "no"])
def test_flag_survives_a_restart_from_rdb_and_aof(server_factory, preamble):
    """The flag is in the task's record (RDB, AOF rewrite as VT._LOAD) and in the effect
    replayed from the AOF (VT._FX ... CANCEL)."""
    s = server_factory(
        "--appendonly", "yes", "--appendfsync", "always", "--aof-use-rdb-preamble", preamble
    )
    c = s.client()
    c.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "1", "b", "2", "c", "3")
    fetch(c, Q, worker="w", count=3, lease=3_600_000)
    c.execute_command("VT.CANCEL", Q, "a", "REASON", "before the rewrite")
    rewrite_aof(c)
    c.execute_command("VT.CANCEL", Q, "b")  # after it: an incremental effect
    s.restart()
    c = s.client()
    assert c.execute_command("VT.EXTEND", Q, "w", 1000, "WITHCANCELLED") == [1, [b"a", b"b"]]
    c.save()
    s.restart()
    c = s.client()
    assert c.execute_command("VT.EXTEND", Q, "w", 1000, "WITHCANCELLED") == [1, [b"a", b"b"]]
    # a restarted worker hands its leases back: the cancelled ones end dead, the other is ready
    assert c.execute_command("VT.RESCUE", Q, "WORKER", "w") == 1
    assert get(c, "a")["error"] == b"cancelled: before the rewrite"
    assert (get(c, "b")["state"], get(c, "c")["state"]) == (b"dead", b"ready")


def test_cancel_waits_while_writes_are_paused(server):
    """A write command: the server holds it back during CLIENT PAUSE WRITE (nothing is
    propagated inside a pause), then it runs."""
    c = server.client()
    c.execute_command("VT.ENQUEUE", Q, "ID", "t", "PAYLOAD", "x")
    out = {}

    def cancel():
        out["reply"] = server.client().execute_command("VT.CANCEL", Q, "t")
        out["at"] = time.monotonic()

    c.execute_command("CLIENT", "PAUSE", 800, "WRITE")
    paused = time.monotonic()
    th = threading.Thread(target=cancel, daemon=True)
    th.start()
    time.sleep(0.3)
    assert "reply" not in out and get(c, "t")["state"] == b"ready"
    th.join(10)
    assert out["reply"] == b"removed" and out["at"] - paused >= 0.7
