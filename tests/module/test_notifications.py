"""VT.* writes send keyspace notifications (class `d`, module events) and signal the key as
modified only when the queue really changed: a command that changes nothing (an empty fetch, an ack
of an unknown id) leaves a client's WATCH intact."""

import time

import valkey

from conftest import fetch, wait_until

Q = "vt:{n}"


def watch_survives(server, action) -> bool:
    """WATCH Q, run `action` from another connection, then MULTI/EXEC: True if EXEC ran."""
    c = server.client()
    p = c.pipeline(transaction=True)
    p.watch(Q)
    action(server.client())
    p.multi()
    p.set("side-effect", "1")
    try:
        p.execute()
        return True
    except valkey.exceptions.WatchError:
        return False
    finally:
        p.reset()


def test_no_op_commands_keep_watch_and_changes_break_it(server):
    c = server.client()
    c.execute_command("VT.ENQUEUE", Q, "ID", "t1", "PAYLOAD", "x")
    ((_, tid, tok, _, _),) = fetch(c, Q, count=1)
    no_ops = [
        lambda o: o.execute_command("VT.ACK", Q, "unknown", "0" * 16),
        lambda o: o.execute_command("VT.ACK", Q, tid, "f" * 16),  # stale token
        lambda o: fetch(o, Q, count=5),  # nothing ready
        lambda o: o.execute_command("VT.FAIL", Q, "unknown", "0" * 16, "e"),
        lambda o: o.execute_command("VT.EXTEND", Q, "nobody", 1000),
        lambda o: o.execute_command("VT.RESCUE", Q),  # no lease expired
        lambda o: o.execute_command("VT.DELETE", Q, "unknown"),
        lambda o: o.execute_command("VT.RETRYDEAD", Q, "ALL"),
        lambda o: o.execute_command("VT.CLEAR", Q, "DEAD"),
        lambda o: o.execute_command("VT.SCHEDULE", "DEL", Q, "none"),
        lambda o: o.execute_command("VT.ENQUEUE", Q, "ID", "t1", "PAYLOAD", "dup"),  # id present
        lambda o: o.execute_command("VT.INFO", Q),
    ]
    for i, action in enumerate(no_ops):
        assert watch_survives(server, action), f"no-op #{i} invalidated WATCH"
    changes = [
        lambda o: o.execute_command("VT.ENQUEUE", Q, "ID", "t2", "PAYLOAD", "x"),
        lambda o: fetch(o, Q, count=1),
        lambda o: o.execute_command("VT.EXTEND", Q, "w1", 60000),
        lambda o: o.execute_command("VT.ACK", Q, tid, tok),
        lambda o: o.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 100000, "PAYLOAD", "p"),
        lambda o: o.execute_command("VT.CLEAR", Q, "ALL"),
    ]
    for i, action in enumerate(changes):
        assert not watch_survives(server, action), f"change #{i} did not invalidate WATCH"
    assert server.alive()


def test_timer_changes_break_watch(server):
    c = server.client()
    c.execute_command("VT.ENQUEUE", Q, "DELAY", 300, "PAYLOAD", "x")
    p = c.pipeline(transaction=True)
    p.watch(Q)
    wait_until(
        lambda: server.client().execute_command("VT.PEEK", Q, "READY"),
        timeout=10,
        msg="the timer promoted the delayed task",
    )
    p.multi()
    p.set("side-effect", "1")
    try:
        p.execute()
        survived = True
    except valkey.exceptions.WatchError:
        survived = False
    assert not survived, "a promotion by the timer must invalidate WATCH"


def messages(ps, until: float):
    out = []
    while time.monotonic() < until:
        m = ps.get_message(timeout=0.1)
        if m and m["type"] in ("message", "pmessage"):
            out.append((m["channel"].decode(), m["data"].decode()))
            if m["data"] == b"end":
                break
    return out


def test_keyspace_notifications(server):
    c = server.client()
    c.config_set("notify-keyspace-events", "KEd")
    ps = server.client().pubsub()
    ps.subscribe(f"__keyspace@0__:{Q}", "__keyevent@0__:vt.enqueue")
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    c.execute_command("VT.ENQUEUE", Q, "ID", "t1", "PAYLOAD", "x")
    c.execute_command("VT.ACK", Q, "unknown", "0" * 16)  # changes nothing: no event
    fetch(c, Q, count=5, worker="w")
    fetch(c, Q, count=5, worker="w")  # empty: no event
    c.execute_command("VT.SCHEDULE", "SET", Q, "s", "EVERY", 100000, "PAYLOAD", "p")
    c.execute_command("VT.CLEAR", Q, "ALL")
    c.execute_command("VT.ENQUEUE", Q, "DELAY", 200, "PAYLOAD", "later")
    # the timer promotes it: an event from the timer
    wait_until(lambda: c.execute_command("VT.PEEK", Q, "READY"), timeout=10)
    c.publish(f"__keyspace@0__:{Q}", "end")
    got = messages(ps, time.monotonic() + 20)
    ks = f"__keyspace@0__:{Q}"
    assert got == [
        (ks, "vt.enqueue"),
        ("__keyevent@0__:vt.enqueue", Q),
        (ks, "vt.fetchbatch"),
        (ks, "vt.schedule.set"),
        (ks, "vt.clear"),
        (ks, "vt.enqueue"),
        ("__keyevent@0__:vt.enqueue", Q),
        (ks, "vt.timer"),
        (ks, "end"),
    ], got
    ps.close()


def test_replica_notifies_the_applied_effects(replica_pair):
    primary, replica = replica_pair
    replica.client().config_set("notify-keyspace-events", "Kd")
    ps = replica.client().pubsub()
    ps.subscribe(f"__keyspace@0__:{Q}")
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    p = primary.client()
    p.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    p.execute_command("VT.ACK", Q, "unknown", "0" * 16)
    fetch(p, Q, count=1)
    p.execute_command("WAIT", 1, 5000)
    got = [d for _, d in messages(ps, time.monotonic() + 3)]
    assert got == ["vt._fx", "vt._fx"], got
    ps.close()


def test_blocked_fetch_wakeup_notifies_as_fetchbatch(server):
    import threading

    c = server.client()
    c.config_set("notify-keyspace-events", "Kd")
    ps = server.client().pubsub()
    ps.subscribe(f"__keyspace@0__:{Q}")
    assert ps.get_message(timeout=5)["type"] == "subscribe"
    c.execute_command("VT.ENQUEUE", Q, "ID", "seed", "PAYLOAD", "x")
    c.execute_command("VT.CLEAR", Q, "ALL")  # the key exists, empty
    got = []
    t = threading.Thread(target=lambda: got.append(fetch(server.client(), Q, count=1, block=20000)))
    t.start()
    wait_until(lambda: c.info("clients")["blocked_clients"] == 1, timeout=10)
    c.execute_command("VT.ENQUEUE", Q, "ID", "t1", "PAYLOAD", "x")
    t.join(20)
    assert got and got[0][0][1] == b"t1"
    c.publish(f"__keyspace@0__:{Q}", "end")
    events = [d for _, d in messages(ps, time.monotonic() + 20)]
    assert events == ["vt.enqueue", "vt.clear", "vt.enqueue", "vt.fetchbatch", "end"], events
    ps.close()
