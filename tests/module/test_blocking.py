"""VT.FETCHBATCH ... BLOCK: a true blocking command."""

import threading
import time

from conftest import fetch, info, wait_until

Q = "vt:{b}"


class Waiter(threading.Thread):
    """Runs one blocking fetch on its own connection and records the reply and wake-up time."""

    def __init__(self, server, *queues, block=5000, count=1, worker="w"):
        super().__init__(daemon=True)
        self.c = server.client()
        self.c.ping()
        self.cid = self.c.client_id()
        self.args = dict(block=block, count=count, worker=worker)
        self.queues = queues
        self.reply = "unset"
        self.error = None
        self.done_at = None

    def run(self):
        try:
            self.reply = fetch(self.c, *self.queues, **self.args)
        except Exception as e:
            self.error = e
        self.done_at = time.monotonic()


def blocked_count(c):
    return c.info("clients")["blocked_clients"]


def test_wakes_within_milliseconds(server):
    r = server.client()
    w = Waiter(server, Q, block=10000)
    w.start()
    wait_until(lambda: blocked_count(r) == 1, msg="client blocked")
    t0 = time.monotonic()
    r.execute_command("VT.ENQUEUE", Q, "ID", "x", "PAYLOAD", "hello")
    w.join(5)
    assert w.reply and w.reply[0][1] == b"x" and w.reply[0][4] == b"hello"
    latency = w.done_at - t0
    assert latency < 0.05, latency  # typically ~1 ms; generous for a shared CI box
    assert info(r, Q)["inflight"] == 1


def test_timeout_returns_nil(server):
    r = server.client()
    t0 = time.monotonic()
    assert fetch(r, Q, block=150) is None
    assert 0.14 <= time.monotonic() - t0 < 1.0
    assert blocked_count(r) == 0


def test_block_on_several_queues(server):
    r = server.client()
    w = Waiter(server, "vt:{b}1", "vt:{b}2", block=5000, count=5)
    w.start()
    wait_until(lambda: blocked_count(r) == 1)
    r.execute_command("VT.ENQUEUE", "vt:{b}2", "PAYLOAD", "p")
    w.join(5)
    assert [e[0] for e in w.reply] == [b"vt:{b}2"]


def test_waiters_served_fifo_one_task_each(server):
    r = server.client()
    ws = []
    for i in range(3):
        w = Waiter(server, Q, block=5000, worker=f"w{i}")
        w.start()
        wait_until(lambda i=i: blocked_count(r) == i + 1)
        ws.append(w)
    r.execute_command("VT.ENQUEUE", Q, "ID", "t1", "PAYLOAD", "x")
    ws[0].join(5)
    assert ws[0].reply[0][1] == b"t1"
    time.sleep(0.05)
    assert ws[1].reply == "unset" and ws[2].reply == "unset"  # one task serves exactly one waiter
    r.execute_command("VT.ENQUEUE", Q, "ID", "t2", "PAYLOAD", "x")
    ws[1].join(5)
    assert ws[1].reply[0][1] == b"t2" and ws[2].reply == "unset"
    r.execute_command("VT.ENQUEUE", Q, "ID", "t3", "PAYLOAD", "x")
    ws[2].join(5)
    assert ws[2].reply[0][1] == b"t3"
    assert rec_worker(r, "t3") == b"w2"


def rec_worker(r, tid):
    from conftest import rec

    return rec(r.execute_command("VT.GET", Q, tid))["worker"]


def test_bulk_enqueue_serves_several_waiters(server):
    r = server.client()
    ws = [Waiter(server, Q, block=5000, count=2, worker=f"w{i}") for i in range(2)]
    for i, w in enumerate(ws):
        w.start()
        wait_until(lambda i=i: blocked_count(r) == i + 1)
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "a", "b", "c")
    for w in ws:
        w.join(5)
    assert len(ws[0].reply) == 2 and len(ws[1].reply) == 1


def test_block_zero_waits_forever_until_enqueue(server):
    r = server.client()
    w = Waiter(server, Q, block=0)
    w.start()
    wait_until(lambda: blocked_count(r) == 1)
    time.sleep(0.3)
    assert w.reply == "unset"
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    w.join(5)
    assert len(w.reply) == 1


def test_delayed_task_wakes_blocked_client(server):
    r = server.client()
    w = Waiter(server, Q, block=5000)
    w.start()
    wait_until(lambda: blocked_count(r) == 1)
    run_at = int(time.time() * 1000) + 300
    r.execute_command("VT.ENQUEUE", Q, "AT", run_at, "PAYLOAD", "later")
    w.join(5)
    assert w.reply[0][4] == b"later"
    woke_ms = time.time() * 1000
    assert woke_ms - run_at < 60  # promoted by the server's timer within a few ms


def test_client_unblock_and_kill_are_safe(server):
    r = server.client()
    w = Waiter(server, Q, block=0)
    w.start()
    wait_until(lambda: blocked_count(r) == 1)
    assert r.client_unblock(w.cid) == 1
    w.join(5)
    assert w.reply is None  # unblocked like a timeout
    w2 = Waiter(server, Q, block=0)
    w2.start()
    wait_until(lambda: blocked_count(r) == 1)
    r.client_kill_filter(_id=w2.cid)
    w2.join(5)
    assert w2.error is not None
    wait_until(lambda: blocked_count(r) == 0)
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    assert info(r, Q)["ready"] == 1  # nobody took it
    assert r.ping()


def test_no_blocking_inside_multi_or_lua(server):
    r = server.client()
    p = r.pipeline(transaction=True)
    p.execute_command("VT.FETCHBATCH", 1, Q, "WORKER", "w", "COUNT", 1, "BLOCK", 0)
    t0 = time.monotonic()
    assert p.execute() == [None]
    assert time.monotonic() - t0 < 1
    t0 = time.monotonic()
    out = r.eval(
        "return redis.call('VT.FETCHBATCH', 1, KEYS[1], 'WORKER', 'w', 'COUNT', 1, 'BLOCK', 0)",
        1,
        Q,
    )
    assert out is None
    assert time.monotonic() - t0 < 1
    # and inside MULTI a ready task is fetched normally
    r.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    p = r.pipeline(transaction=True)
    p.execute_command("VT.FETCHBATCH", 1, Q, "WORKER", "w", "COUNT", 1, "BLOCK", 0)
    assert len(p.execute()[0]) == 1


def test_blocked_fetch_replicates(replica_pair):
    primary, replica = replica_pair
    r = primary.client()
    w = Waiter(primary, Q, block=5000)
    w.start()
    wait_until(lambda: blocked_count(r) == 1)
    r.execute_command("VT.ENQUEUE", Q, "ID", "x", "PAYLOAD", "p")
    w.join(5)
    token = w.reply[0][2]
    from conftest import rec

    wait_until(
        lambda: (
            (rec(replica.client().execute_command("VT.GET", Q, "x")) or {}).get("token") == token
        ),
        msg="replica sees the lease",
    )
