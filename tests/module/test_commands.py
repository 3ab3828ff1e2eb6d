"""Every VT.* command and option, against a real server."""

import time

import pytest
import valkey

from conftest import fetch, info, rec, wait_until

Q = "vt:{t}"


def ids(reply):
    return [None if x is None else x.decode() for x in reply]


# ------------------------------------------------------------------ ENQUEUE


def test_enqueue_payloads_generate_uuid7_ids(r):
    out = r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "a", "b", "c")
    assert len(out) == 3
    got = ids(out)
    assert all(len(i) == 36 and i[14] == "7" for i in got)  # UUIDv7
    assert got == sorted(got)  # time ordered
    i = info(r, Q)
    assert i["ready"] == 3 and i["enqueued_total"] == 3


def test_enqueue_id_is_idempotent(r):
    assert ids(r.execute_command("VT.ENQUEUE", Q, "ID", "job-1", "PAYLOAD", "x")) == ["job-1"]
    assert ids(r.execute_command("VT.ENQUEUE", Q, "ID", "job-1", "PAYLOAD", "y")) == [None]
    assert rec(r.execute_command("VT.GET", Q, "job-1"))["payload"] == b"x"
    assert info(r, Q)["ready"] == 1


def test_enqueue_entries(r):
    out = r.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "pa", "b", "pb", "a", "dup")
    assert ids(out) == ["a", "b", None]
    got = fetch(r, Q, count=10)
    assert [(e[1], e[4]) for e in got] == [(b"a", b"pa"), (b"b", b"pb")]


def test_priority_then_fifo(r):
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", "low1", "x", "low2", "x")
    r.execute_command("VT.ENQUEUE", Q, "PRIORITY", 10, "ENTRIES", "hi1", "x", "hi2", "x")
    r.execute_command("VT.ENQUEUE", Q, "PRIORITY", -5, "ENTRIES", "neg", "x")
    r.execute_command("VT.ENQUEUE", Q, "PRIORITY", 100, "ID", "top", "PAYLOAD", "x")
    order = [e[1].decode() for e in fetch(r, Q, count=100)]
    assert order == ["top", "hi1", "hi2", "low1", "low2", "neg"]


def test_delay_and_at(r):
    now = int(time.time() * 1000)
    r.execute_command("VT.ENQUEUE", Q, "DELAY", 60000, "ID", "d", "PAYLOAD", "x")
    r.execute_command("VT.ENQUEUE", Q, "AT", now + 120000, "ID", "a", "PAYLOAD", "x")
    r.execute_command("VT.ENQUEUE", Q, "AT", now - 1000, "ID", "past", "PAYLOAD", "x")
    i = info(r, Q)
    assert (i["delayed"], i["ready"]) == (2, 1)
    delayed = [rec(x) for x in r.execute_command("VT.PEEK", Q, "DELAYED")]
    assert [d["id"] for d in delayed] == [b"d", b"a"]
    assert delayed[1]["run_at"] == now + 120000
    assert delayed[0]["state"] == b"delayed"
    assert [e[1] for e in fetch(r, Q)] == [b"past"]


def test_unique(r):
    assert ids(
        r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "k1", 60000, "ID", "u1", "PAYLOAD", "x")
    ) == ["u1"]
    assert ids(r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "k1", 60000, "PAYLOAD", "y")) == [None]
    # several payloads: only the first may take the key
    out = ids(r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "k2", 60000, "PAYLOAD", "a", "b"))
    assert out[0] is not None and out[1] is None
    assert info(r, Q)["unique_keys"] == 2
    # released early by ACK
    e = fetch(r, Q, count=1)[0]
    assert e[1] == b"u1"
    assert r.execute_command("VT.ACK", Q, e[1], e[2]) == 1
    assert ids(
        r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "k1", 60000, "ID", "u2", "PAYLOAD", "z")
    ) == ["u2"]
    # expires by ttl
    r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "short", 50, "PAYLOAD", "x")
    assert ids(r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "short", 50, "PAYLOAD", "x")) == [None]
    time.sleep(0.08)
    assert (
        ids(r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "short", 50, "PAYLOAD", "x"))[0]
        is not None
    )


def test_unique_released_on_dead_letter(r):
    r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "k", 60000, "ID", "t", "PAYLOAD", "x")
    e = fetch(r, Q)[0]
    assert r.execute_command("VT.FAIL", Q, "t", e[2], "boom") == b"dead"
    assert ids(
        r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "k", 60000, "ID", "t2", "PAYLOAD", "x")
    ) == ["t2"]


def test_get_unique_names_the_holder(r):
    assert r.execute_command("VT.GET", Q, "UNIQUE", "k") is None  # no queue yet
    r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "k", 60000, "ID", "holder", "PAYLOAD", "x")
    assert ids(r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "k", 60000, "PAYLOAD", "y")) == [None]
    got = rec(r.execute_command("VT.GET", Q, "UNIQUE", "k"))
    assert got["id"] == b"holder" and got["state"] == b"ready" and got["payload"] == b"x"
    e = fetch(r, Q)[0]
    assert rec(r.execute_command("VT.GET", Q, "UNIQUE", "k"))["state"] == b"inflight"
    assert r.execute_command("VT.GET", Q, "UNIQUE", "other") is None
    assert r.execute_command("VT.ACK", Q, e[1], e[2]) == 1  # released with the task
    assert r.execute_command("VT.GET", Q, "UNIQUE", "k") is None
    r.execute_command("VT.ENQUEUE", Q, "UNIQUE", "short", 30, "ID", "s", "PAYLOAD", "x")
    time.sleep(0.06)  # expired: free, whatever the task does
    assert r.execute_command("VT.GET", Q, "UNIQUE", "short") is None
    with pytest.raises(valkey.ResponseError, match="wrong number"):
        r.execute_command("VT.GET", Q, "a", "b")


def test_maxattempts_option_and_config(r):
    r.execute_command("VT.ENQUEUE", Q, "MAXATTEMPTS", 7, "ID", "m", "PAYLOAD", "x")
    assert rec(r.execute_command("VT.GET", Q, "m"))["max_attempts"] == 7
    r.config_set("vtasks.max-attempts", 2)
    r.execute_command("VT.ENQUEUE", Q, "ID", "d", "PAYLOAD", "x")
    assert rec(r.execute_command("VT.GET", Q, "d"))["max_attempts"] == 2


def test_max_payload(r):
    r.config_set("vtasks.max-payload", 10)
    with pytest.raises(valkey.ResponseError, match="max-payload"):
        r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "ok", "x" * 11)
    assert info(r, Q)["enqueued_total"] == 0  # whole command failed
    assert r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x" * 10)


@pytest.mark.parametrize(
    "args",
    [
        [],
        [Q],
        [Q, "PAYLOAD"],
        [Q, "ENTRIES", "a"],
        [Q, "PRIORITY", 101, "PAYLOAD", "x"],
        [Q, "PRIORITY", "x", "PAYLOAD", "x"],
        [Q, "DELAY", -1, "PAYLOAD", "x"],
        [Q, "DELAY", 1, "AT", 1, "PAYLOAD", "x"],
        [Q, "ID", "a", "PAYLOAD", "x", "y"],
        [Q, "ID", "a", "ENTRIES", "b", "x"],
        [Q, "ID", "x" * 129, "PAYLOAD", "x"],
        [Q, "UNIQUE", "k", 0, "PAYLOAD", "x"],
        [Q, "MAXATTEMPTS", 0, "PAYLOAD", "x"],
        [Q, "BOGUS", "PAYLOAD", "x"],
        [Q, "ID", "a"],
    ],
)
def test_enqueue_errors(r, args):
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.ENQUEUE", *args)
    assert not r.exists(Q)


def test_wrongtype(r):
    r.set("plain", "x")
    for cmd in (
        ["VT.ENQUEUE", "plain", "PAYLOAD", "x"],
        ["VT.INFO", "plain"],
        ["VT.ACK", "plain", "a", "b"],
        ["VT.PEEK", "plain", "READY"],
        ["VT.FETCHBATCH", 1, "plain", "WORKER", "w", "COUNT", 1],
    ):
        with pytest.raises(valkey.ResponseError, match="WRONGTYPE"):
            r.execute_command(*cmd)
    # a failing queue in a multi-queue fetch leases nothing
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    with pytest.raises(valkey.ResponseError, match="WRONGTYPE"):
        fetch(r, Q, "plain")
    assert info(r, Q)["ready"] == 1


def test_type_name(r):
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    assert r.type(Q) == b"vtasks-qu"


# ------------------------------------------------------------------ FETCHBATCH


def test_fetch_entry_shape_and_lease(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", b"\x00\xffbin")
    t0 = int(time.time() * 1000)
    [e] = fetch(r, Q, worker="wk", count=5)
    queue, tid, token, attempt, payload = e
    assert (queue, tid, attempt, payload) == (Q.encode(), b"a", 1, b"\x00\xffbin")
    assert len(token) == 16 and int(token, 16) >= 0
    g = rec(r.execute_command("VT.GET", Q, "a"))
    assert g["state"] == b"inflight" and g["worker"] == b"wk" and g["token"] == token
    assert t0 + 30000 - 50 <= g["deadline"] <= t0 + 30000 + 1000  # default lease
    r.execute_command("VT.ENQUEUE", Q, "ID", "b", "PAYLOAD", "x")
    fetch(r, Q, lease=1234)
    g = rec(r.execute_command("VT.GET", Q, "b"))
    assert g["deadline"] - int(time.time() * 1000) <= 1234
    r.config_set("vtasks.default-lease", 5000)
    r.execute_command("VT.ENQUEUE", Q, "ID", "c", "PAYLOAD", "x")
    fetch(r, Q)
    assert rec(r.execute_command("VT.GET", Q, "c"))["deadline"] - int(time.time() * 1000) <= 5000


def test_fetch_count_and_empty(r):
    assert fetch(r, Q) == []  # missing key, no BLOCK: empty array
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", *[str(i) for i in range(25)])
    assert len(fetch(r, Q, count=10)) == 10
    assert len(fetch(r, Q, count=100)) == 15
    assert fetch(r, Q) == []
    assert info(r, Q)["inflight"] == 25


def test_fetch_multi_queue_order(r):
    a, b = "vt:{m}a", "vt:{m}b"
    r.execute_command("VT.ENQUEUE", b, "ENTRIES", "b1", "x", "b2", "x")
    r.execute_command("VT.ENQUEUE", a, "ENTRIES", "a1", "x")
    got = fetch(r, a, b, count=2)
    assert [(e[0], e[1]) for e in got] == [(a.encode(), b"a1"), (b.encode(), b"b1")]


@pytest.mark.parametrize(
    "args",
    [
        [0, Q, "WORKER", "w", "COUNT", 1],
        [2, Q, "WORKER", "w", "COUNT", 1],
        [1, Q, "WORKER", "w", "COUNT", 0],
        [1, Q, "WORKER", "w", "COUNT", 10001],
        [1, Q, "COUNT", 1, "LEASE", 5],
        [1, Q, "WORKER", "w", "LEASE", 5],
        [1, Q, "WORKER", "w", "COUNT", 1, "LEASE", 0],
        [1, Q, "WORKER", "w", "COUNT", 1, "BLOCK", -1],
        [1, Q, "WORKER", "w", "COUNT", 1, "BLOCK"],
        [1, Q, "WORKER", "w", "COUNT", 1, "NOPE", 1],
        ["x", Q, "WORKER", "w", "COUNT", 1],
    ],
)
def test_fetch_errors(r, args):
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.FETCHBATCH", *args)
    assert info(r, Q)["ready"] == 1


def test_fetch_count_max_is_10000(r):
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", *(["p"] * 10001))
    assert len(fetch(r, Q, count=10000)) == 10000


# ------------------------------------------------------------------ ACK / FAIL


def test_ack_pairs_stale_unknown(r):
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "x", "b", "x", "c", "x")
    es = fetch(r, Q, count=3)
    tok = {e[1]: e[2] for e in es}
    assert (
        r.execute_command(
            "VT.ACK", Q, "a", tok[b"a"], "b", "0000000000000000", "zz", tok[b"c"], "c", "nothex"
        )
        == 1
    )
    assert r.execute_command("VT.ACK", Q, "a", tok[b"a"]) == 0  # already acked
    assert r.execute_command("VT.ACK", "vt:{nokey}", "a", tok[b"a"]) == 0
    assert r.execute_command("VT.ACK", Q, "b", tok[b"b"], "c", tok[b"c"]) == 2
    i = info(r, Q)
    assert i["acked_total"] == 3 and i["inflight"] == 0
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.ACK", Q, "a")


def test_ack_of_ready_task_is_noop(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    assert r.execute_command("VT.ACK", Q, "a", "0000000000000000") == 0
    assert info(r, Q)["ready"] == 1


def test_fail_dead(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PRIORITY", 3, "PAYLOAD", "pay")
    e = fetch(r, Q)[0]
    assert r.execute_command("VT.FAIL", Q, "a", "ffffffffffffffff", "err") is None
    assert r.execute_command("VT.FAIL", Q, "a", e[2], "Traceback: boom") == b"dead"
    assert r.execute_command("VT.FAIL", Q, "a", e[2], "again") is None
    [d] = [rec(x) for x in r.execute_command("VT.PEEK", Q, "DEAD")]
    assert d["id"] == b"a" and d["state"] == b"dead" and d["error"] == b"Traceback: boom"
    assert (
        d["attempt"] == 1 and d["payload"] == b"pay" and d["priority"] == 3 and d["failed_at"] > 0
    )
    i = info(r, Q)
    assert (i["dead"], i["failed_total"], i["dead_total"], i["inflight"]) == (1, 1, 1, 0)


def test_fail_retry_and_exhaustion(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "MAXATTEMPTS", 2, "PAYLOAD", "x")
    e = fetch(r, Q)[0]
    assert r.execute_command("VT.FAIL", Q, "a", e[2], "e1", "RETRY", 0) == b"retry"
    g = rec(r.execute_command("VT.GET", Q, "a"))
    assert g["state"] == b"ready" and g["error"] == b"e1" and g["attempt"] == 1
    e = fetch(r, Q)[0]
    assert e[3] == 2
    assert r.execute_command("VT.FAIL", Q, "a", e[2], "e2", "RETRY", 0) == b"dead"
    i = info(r, Q)
    assert (i["retried_total"], i["failed_total"], i["dead"]) == (1, 2, 1)


def test_fail_retry_delay(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    e = fetch(r, Q)[0]
    assert r.execute_command("VT.FAIL", Q, "a", e[2], "later", "RETRY", 60000) == b"retry"
    assert rec(r.execute_command("VT.GET", Q, "a"))["state"] == b"delayed"
    assert fetch(r, Q) == []


def test_fail_errors(r):
    for args in (
        [Q, "a", "t"],
        [Q, "a", "t", "e", "RETRY"],
        [Q, "a", "t", "e", "RETRY", -1],
        [Q, "a", "t", "e", "X", 1],
    ):
        with pytest.raises(valkey.ResponseError):
            r.execute_command("VT.FAIL", *args)


# ------------------------------------------------------------------ RESCUE / EXTEND


def test_rescue_worker_and_expired(r):
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "x", "b", "x", "c", "x")
    fetch(r, Q, worker="w1", count=2, lease=60000)
    fetch(r, Q, worker="w2", count=1, lease=60000)
    assert r.execute_command("VT.RESCUE", Q) == 0  # nothing expired
    assert r.execute_command("VT.RESCUE", Q, "WORKER", "w1") == 2
    assert r.execute_command("VT.RESCUE", Q, "WORKER", "nobody") == 0
    i = info(r, Q)
    assert (i["ready"], i["inflight"], i["rescued_total"]) == (2, 1, 2)
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.RESCUE", Q, "WORKER")
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.RESCUE", Q, "FOO", "w")


def test_rescue_dead_letters_after_max_attempts(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "MAXATTEMPTS", 1, "PAYLOAD", "x")
    fetch(r, Q, worker="w9", lease=60000)
    assert r.execute_command("VT.RESCUE", Q, "WORKER", "w9") == 0  # dead-lettered, not counted
    [d] = [rec(x) for x in r.execute_command("VT.PEEK", Q, "DEAD")]
    assert d["error"] == b"rescued from worker w9 after 1 attempts"


def test_extend(r):
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "x", "b", "x", "c", "x")
    fetch(r, Q, worker="w1", count=2, lease=1000)
    fetch(r, Q, worker="w2", count=1, lease=1000)
    assert r.execute_command("VT.EXTEND", Q, "w1", 90000) == 2
    assert r.execute_command("VT.EXTEND", Q, "nobody", 90000) == 0
    assert r.execute_command("VT.EXTEND", "vt:{none}", "w1", 90000) == 0
    now = int(time.time() * 1000)
    recs = {x["id"]: x for x in (rec(y) for y in r.execute_command("VT.PEEK", Q, "INFLIGHT"))}
    assert recs[b"a"]["deadline"] > now + 80000 and recs[b"b"]["deadline"] > now + 80000
    assert recs[b"c"]["deadline"] < now + 2000
    # inflight peek is in deadline order
    assert [rec(x)["id"] for x in r.execute_command("VT.PEEK", Q, "INFLIGHT")] == [b"c", b"a", b"b"]
    for bad in (["w1", 0], ["w1", "x"], ["w1"]):
        with pytest.raises(valkey.ResponseError):
            r.execute_command("VT.EXTEND", Q, *bad)


# ------------------------------------------------------------------ INFO / operator commands


def test_info_missing_key_is_zeros(r):
    i = info(r, "vt:{missing}")
    assert set(i) >= {
        "ready",
        "delayed",
        "inflight",
        "dead",
        "dead_evicted",
        "enqueued_total",
        "acked_total",
        "failed_total",
        "retried_total",
        "rescued_total",
        "dead_total",
        "schedules",
        "unique_keys",
    }
    assert all(v == 0 for v in i.values())


def test_info_resp3_map(server):
    c = server.client(protocol=3)
    c.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    v = c.execute_command("VT.INFO", Q)
    assert isinstance(v, dict) and v[b"ready"] == 1


def test_queues(r):
    r.execute_command("VT.ENQUEUE", "vt:{a}", "PAYLOAD", "x")
    r.execute_command("VT.ENQUEUE", "vt:{b}", "PAYLOAD", "x")
    r.set("other", 1)
    assert sorted(r.execute_command("VT.QUEUES")) == [b"vt:{a}", b"vt:{b}"]
    r.delete("vt:{a}")
    assert r.execute_command("VT.QUEUES") == [b"vt:{b}"]
    r.rename("vt:{b}", "vt:{c}")
    assert r.execute_command("VT.QUEUES") == [b"vt:{c}"]


def test_queues_per_db(server):
    c0 = server.client(db=0)
    c1 = server.client(db=1)
    c0.execute_command("VT.ENQUEUE", "q0", "PAYLOAD", "x")
    c1.execute_command("VT.ENQUEUE", "q1", "PAYLOAD", "x")
    assert c0.execute_command("VT.QUEUES") == [b"q0"]
    assert c1.execute_command("VT.QUEUES") == [b"q1"]


def test_peek_offset_count_limits(r):
    r.execute_command(
        "VT.ENQUEUE", Q, "ENTRIES", *[x for i in range(20) for x in (f"t{i:02}", "x")]
    )
    page = [rec(x)["id"] for x in r.execute_command("VT.PEEK", Q, "READY", "OFFSET", 5, "COUNT", 3)]
    assert page == [b"t05", b"t06", b"t07"]
    assert len(r.execute_command("VT.PEEK", Q, "ready")) == 10  # default count, case-insensitive
    assert r.execute_command("VT.PEEK", Q, "READY", "OFFSET", 100) == []
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.PEEK", Q, "READY", "COUNT", 1001)
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.PEEK", Q, "NOPE")
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.PEEK", Q, "READY", "COUNT")
    assert r.execute_command("VT.PEEK", "vt:{none}", "DEAD") == []


def test_record_fields(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    g = r.execute_command("VT.GET", Q, "a")
    assert [g[i] for i in range(0, len(g), 2)] == [
        b"id",
        b"state",
        b"priority",
        b"attempt",
        b"max_attempts",
        b"enqueued_at",
        b"run_at",
        b"worker",
        b"token",
        b"deadline",
        b"error",
        b"failed_at",
        b"payload",
    ]
    assert r.execute_command("VT.GET", Q, "nope") is None
    assert r.execute_command("VT.GET", "vt:{none}", "a") is None


def test_dead_peek_newest_first_and_get(r):
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "x", "b", "x")
    for e in fetch(r, Q, count=2):
        r.execute_command("VT.FAIL", Q, e[1], e[2], f"err-{e[1].decode()}")
    assert [rec(x)["id"] for x in r.execute_command("VT.PEEK", Q, "DEAD")] == [b"b", b"a"]
    assert rec(r.execute_command("VT.GET", Q, "a"))["state"] == b"dead"


def test_dlq_cap_and_eviction_count(r):
    r.config_set("vtasks.dlq-cap", 3)
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", *[x for i in range(5) for x in (f"t{i}", "x")])
    for e in fetch(r, Q, count=5):
        assert r.execute_command("VT.FAIL", Q, e[1], e[2], "x") == b"dead"
    i = info(r, Q)
    assert (i["dead"], i["dead_evicted"], i["dead_total"]) == (3, 2, 5)
    assert [rec(x)["id"] for x in r.execute_command("VT.PEEK", Q, "DEAD")] == [b"t4", b"t3", b"t2"]


def test_retrydead(r):
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "x", "b", "x", "c", "x")
    for e in fetch(r, Q, count=3):
        r.execute_command("VT.FAIL", Q, e[1], e[2], "x")
    assert r.execute_command("VT.RETRYDEAD", Q, "b", "nope") == 1
    g = rec(r.execute_command("VT.GET", Q, "b"))
    assert g["state"] == b"ready" and g["attempt"] == 0
    assert r.execute_command("VT.RETRYDEAD", Q, "ALL") == 2
    i = info(r, Q)
    assert (i["dead"], i["ready"]) == (0, 3)
    assert r.execute_command("VT.RETRYDEAD", "vt:{none}", "ALL") == 0


def test_delete(r):
    r.execute_command("VT.ENQUEUE", Q, "ENTRIES", "a", "x", "b", "x", "c", "x")
    r.execute_command("VT.ENQUEUE", Q, "DELAY", 60000, "ID", "d", "PAYLOAD", "x")
    e = fetch(r, Q, count=2)  # a, b inflight
    r.execute_command("VT.FAIL", Q, e[0][1], e[0][2], "x")  # a dead
    assert r.execute_command("VT.DELETE", Q, "a", "b", "c", "d", "zz") == 3  # b is in flight
    i = info(r, Q)
    assert (i["ready"], i["delayed"], i["dead"], i["inflight"]) == (0, 0, 0, 1)


def test_clear(r):
    def fill():
        r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "a", "b", "c", "d")
        r.execute_command("VT.ENQUEUE", Q, "DELAY", 60000, "PAYLOAD", "e")
        es = fetch(r, Q, count=2)
        r.execute_command("VT.FAIL", Q, es[0][1], es[0][2], "x")

    fill()
    r.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 3600000, "PAYLOAD", "p")
    assert r.execute_command("VT.CLEAR", Q, "READY") == 3
    assert r.execute_command("VT.CLEAR", Q, "DEAD") == 1
    i = info(r, Q)
    assert (i["ready"], i["delayed"], i["dead"], i["inflight"]) == (0, 0, 0, 1)
    fill()
    assert r.execute_command("VT.CLEAR", Q, "all") == 3 + 1 + 2
    i = info(r, Q)
    assert (i["ready"], i["delayed"], i["dead"], i["inflight"], i["schedules"]) == (0, 0, 0, 0, 1)
    with pytest.raises(valkey.ResponseError):
        r.execute_command("VT.CLEAR", Q, "SOME")


def test_info_vtasks_section(r):
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "a", "b")
    fetch(r, Q, count=1)
    s = r.info("vtasks")
    assert (
        s["vtasks_queues"] == 1 and s["vtasks_tasks_ready"] == 1 and s["vtasks_tasks_inflight"] == 1
    )
    assert s["vtasks_config_dlq_cap"] == 1000 and s["vtasks_config_max_attempts"] == 3
    r.delete(Q)
    s = r.info("vtasks")
    assert (
        s["vtasks_queues"] == 0 and s["vtasks_tasks_ready"] == 0 and s["vtasks_tasks_inflight"] == 0
    )


def test_configs_bounds_and_startup_args(server_factory):
    s = server_factory("--vtasks.dlq-cap", "7", "--vtasks.max-attempts", "5")
    c = s.client()
    assert c.config_get("vtasks.dlq-cap") == {"vtasks.dlq-cap": "7"}
    assert c.config_get("vtasks.max-attempts")["vtasks.max-attempts"] == "5"
    assert c.config_get("vtasks.default-lease")["vtasks.default-lease"] == "30000"
    assert c.config_get("vtasks.max-payload")["vtasks.max-payload"] == str(16 * 1024 * 1024)
    with pytest.raises(valkey.ResponseError):
        c.config_set("vtasks.max-attempts", 0)
    with pytest.raises(valkey.ResponseError):
        c.config_set("vtasks.dlq-cap", -1)


def test_command_flags_and_keys(r):
    infos = r.execute_command("COMMAND", "INFO", "vt.enqueue", "vt.info", "vt.ack", "vt.fetchbatch")
    flags = {k: set(v["flags"]) for k, v in infos.items()}
    assert {"write", "denyoom"} <= flags["vt.enqueue"]
    assert {"readonly", "fast"} <= flags["vt.info"]
    assert {"write", "fast"} <= flags["vt.ack"]
    assert "denyoom" not in flags["vt.ack"]
    assert {"write", "blocking", "movablekeys"} <= flags["vt.fetchbatch"]
    assert r.command_getkeys("VT.FETCHBATCH", 2, "x", "y", "WORKER", "w", "COUNT", 1) == ["x", "y"]
    assert r.command_getkeys("VT.ENQUEUE", "q", "PAYLOAD", "p") == ["q"]
    assert r.command_getkeys("VT.SCHEDULE", "SET", "q", "n", "EVERY", 1, "PAYLOAD", "p") == ["q"]


def test_deny_oom(server):
    c = server.client()
    c.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    c.config_set("maxmemory", 1)
    try:
        with pytest.raises(valkey.ResponseError, match="maxmemory"):
            c.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "y")
        # draining still works under OOM
        e = fetch(c, Q)[0]
        assert c.execute_command("VT.ACK", Q, e[1], e[2]) == 1
    finally:
        c.config_set("maxmemory", 0)


def test_acl_key_patterns(r):
    r.execute_command("ACL", "SETUSER", "worker", "on", ">pw", "~vt:{ok}*", "+@all")
    c = valkey.Valkey(
        host="127.0.0.1",
        port=r.connection_pool.connection_kwargs["port"],
        username="worker",
        password="pw",
    )
    assert c.execute_command("VT.ENQUEUE", "vt:{ok}", "PAYLOAD", "x")
    with pytest.raises(valkey.exceptions.NoPermissionError):
        c.execute_command("VT.ENQUEUE", "vt:{no}", "PAYLOAD", "x")
    with pytest.raises(valkey.exceptions.NoPermissionError):
        fetch(c, "vt:{ok}", "vt:{no}")


def test_internal_commands_refused_from_clients(r):
    with pytest.raises(valkey.ResponseError, match="internal"):
        r.execute_command("VT._FX", Q, "PROMOTE", 1)
    with pytest.raises(valkey.ResponseError, match="internal"):
        r.execute_command("VT._LOAD", Q, "H")
    assert not r.exists(Q)


def test_copy_and_rename_keep_queue(r):
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    fetch(r, Q, lease=60000)
    r.execute_command("VT.ENQUEUE", Q, "ID", "b", "PAYLOAD", "y")
    assert r.copy(Q, "vt:{t}copy")
    assert info(r, "vt:{t}copy")["inflight"] == 1 and info(r, "vt:{t}copy")["ready"] == 1
    r.rename("vt:{t}copy", "vt:{t}renamed")
    assert rec(r.execute_command("VT.GET", "vt:{t}renamed", "a"))["state"] == b"inflight"


def test_dump_restore_move_unlink(server):
    r = server.client()
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    r.execute_command("VT.ENQUEUE", Q, "DELAY", 200, "ID", "d", "PAYLOAD", "y")
    blob = r.dump(Q)
    assert r.restore("vt:{t}restored", 0, blob)
    assert info(r, "vt:{t}restored")["ready"] == 1
    # the restored copy gets its timers too
    wait_until(lambda: info(r, "vt:{t}restored")["ready"] == 2, timeout=3)
    assert r.move("vt:{t}restored", 3)
    c3 = server.client(db=3)
    assert info(c3, "vt:{t}restored")["ready"] == 2
    assert c3.execute_command("VT.QUEUES") == [b"vt:{t}restored"]
    # a big queue freed lazily (in a background thread) keeps the global stats right
    base = r.info("vtasks")["vtasks_tasks_ready"]
    assert base == 4  # a, d in Q and in the moved copy
    r.execute_command("VT.ENQUEUE", "vt:{big}", "PAYLOAD", *(["p"] * 5000))
    assert r.info("vtasks")["vtasks_tasks_ready"] == base + 5000
    assert r.unlink("vt:{big}") == 1
    wait_until(lambda: r.info("vtasks")["vtasks_tasks_ready"] == base, timeout=3)


def test_acl_read_only_key_permissions(r):
    """Key specs mark read commands RO: a user with read-only key access can inspect, not change."""
    r.execute_command("VT.ENQUEUE", Q, "ID", "a", "PAYLOAD", "x")
    r.execute_command("ACL", "SETUSER", "viewer", "on", ">pw", "%R~vt:*", "+@all")
    c = valkey.Valkey(
        host="127.0.0.1",
        port=r.connection_pool.connection_kwargs["port"],
        username="viewer",
        password="pw",
    )
    assert info(c, Q)["ready"] == 1
    assert rec(c.execute_command("VT.GET", Q, "a"))["id"] == b"a"
    assert len(c.execute_command("VT.PEEK", Q, "READY")) == 1
    assert c.execute_command("VT.SCHEDULE", "LIST", Q) == []
    for cmd in (
        ["VT.ENQUEUE", Q, "PAYLOAD", "x"],
        ["VT.ACK", Q, "a", "t"],
        ["VT.CLEAR", Q, "ALL"],
        ["VT.SCHEDULE", "SET", Q, "n", "EVERY", 10, "PAYLOAD", "p"],
        ["VT.FETCHBATCH", 1, Q, "WORKER", "w", "COUNT", 1],
    ):
        with pytest.raises(valkey.exceptions.NoPermissionError):
            c.execute_command(*cmd)


@pytest.mark.parametrize("size", [0, 1025, 8200])
def test_queue_names_outside_1_to_1024_bytes_are_refused(r, size):
    """Every command that names a queue refuses a name outside 1..1024 bytes (the Postgres
    limit) with a clear error, before touching anything; 1024 bytes is accepted."""
    bad = "q" * size
    calls = [
        ("VT.ENQUEUE", bad, "PAYLOAD", "x"),
        ("VT.FETCHBATCH", 1, bad, "WORKER", "w", "COUNT", 1),
        ("VT.FETCHBATCH", 2, "vt:ok", bad, "WORKER", "w", "COUNT", 1),
        ("VT.ACK", bad, "id", "0000000000000000"),
        ("VT.FAIL", bad, "id", "0000000000000000", "e"),
        ("VT.RESCUE", bad),
        ("VT.EXTEND", bad, "w", 1000),
        ("VT.INFO", bad),
        ("VT.PEEK", bad),
        ("VT.GET", bad, "id"),
        ("VT.RETRYDEAD", bad, "ALL"),
        ("VT.DELETE", bad, "id"),
        ("VT.CLEAR", bad, "ALL"),
        ("VT.SCHEDULE", "SET", bad, "s", "EVERY", 1000, "PAYLOAD", "p"),
        ("VT.SCHEDULE", "DEL", bad, "s"),
        ("VT.SCHEDULE", "LIST", bad),
    ]
    r.execute_command("VT.ENQUEUE", "vt:ok", "ID", "keep", "PAYLOAD", "x")
    for call in calls:
        with pytest.raises(
            valkey.exceptions.ResponseError,
            match=rf"queue name must be 1 to 1024 bytes \(got {size}\)",
        ):
            r.execute_command(*call)
    assert r.execute_command("DBSIZE") == 1  # nothing stored
    assert info(r, "vt:ok")["ready"] == 1  # the valid queue of the multi-queue fetch kept its task
    ok = "q" * 1024
    assert r.execute_command("VT.ENQUEUE", ok, "PAYLOAD", "x")
    assert info(r, ok)["ready"] == 1
