"""ACL: every VT.* command is in the categories its behaviour implies and in @vtasks, the internal
commands are unusable by clients, VT.QUEUES hides keys the caller may not read, and the ready-made
users of PROTOCOL.md can do their job and nothing more."""

import re

import pytest
import valkey

from conftest import ROOT, fetch, info

Q = "vt:{acl}"

# name -> the categories PROTOCOL.md promises (besides @vtasks)
CATEGORIES = {
    "vt.enqueue": {"write", "fast"},
    "vt.fetchbatch": {"write", "slow", "blocking"},
    "vt.ack": {"write", "fast"},
    "vt.fail": {"write", "fast"},
    "vt.rescue": {"write", "slow"},
    "vt.extend": {"write", "fast"},
    "vt.cancel": {"write", "fast"},
    "vt.info": {"read", "fast"},
    "vt.queues": {"read", "slow", "keyspace"},
    "vt.peek": {"read", "slow"},
    "vt.get": {"read", "fast"},
    "vt.retrydead": {"write", "slow"},
    "vt.delete": {"write", "slow", "dangerous"},
    "vt.clear": {"write", "slow", "dangerous"},
    "vt.schedule|set": {"write", "fast"},
    "vt.schedule|del": {"write", "fast"},
    "vt.schedule|list": {"read", "slow"},
    "vt.schedule|pause": {"write", "fast"},
    "vt.schedule|resume": {"write", "fast"},
    "vt.schedule|run": {"write", "fast"},
    "vt.ratelimit|set": {"write", "fast"},
    "vt.ratelimit|off": {"write", "fast"},
    "vt.ratelimit|get": {"read", "fast"},
    "vt._fx": {"write", "slow", "admin", "dangerous"},
    "vt._load": {"write", "slow", "admin", "dangerous"},
    "vt._aligncheck": {"slow", "admin", "dangerous"},
}


def user(server, name, *rules):
    """A connection as a fresh user with these ACL rules (password 'pw')."""
    server.client().execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", *rules)
    return server.client(username=name, password="pw")


def refused(c, *argv):
    with pytest.raises(valkey.exceptions.NoPermissionError):
        c.execute_command(*argv)
    return True


def s(v):
    return v.decode() if isinstance(v, bytes) else v


def test_every_command_has_its_categories(r):
    listed = {s(x) for x in r.execute_command("ACL", "CAT", "vtasks")}
    assert set(CATEGORIES) <= listed, set(CATEGORIES) - listed
    for name, cats in CATEGORIES.items():
        for cat in cats | {"vtasks"}:
            members = {s(x) for x in r.execute_command("ACL", "CAT", cat)}
            assert name in members, f"{name} not in @{cat}"
        for cat in {"read", "write", "dangerous", "admin", "blocking", "fast", "slow"} - cats:
            members = {s(x) for x in r.execute_command("ACL", "CAT", cat)}
            assert name not in members, f"{name} must not be in @{cat}"


def test_minus_write_forbids_every_change(server):
    server.client().execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    c = user(server, "nowrite", "~*", "+@all", "-@write")
    for argv in (
        ["VT.ENQUEUE", Q, "PAYLOAD", "x"],
        ["VT.CLEAR", Q, "ALL"],
        ["VT.ACK", Q, "i", "0" * 16],
        ["VT.FETCHBATCH", 1, Q, "WORKER", "w", "COUNT", 1],
        ["VT.SCHEDULE", "SET", Q, "n", "EVERY", 1000, "PAYLOAD", "p"],
        ["VT.RETRYDEAD", Q, "ALL"],
    ):
        refused(c, *argv)
    assert info(c, Q)["ready"] == 1  # reads stay allowed, and nothing changed


def test_plus_read_allows_the_read_commands(server):
    server.client().execute_command("VT.ENQUEUE", Q, "ID", "t1", "PAYLOAD", "x")
    c = user(server, "reader", "~*", "+@read")
    assert c.execute_command("VT.INFO", Q)
    assert c.execute_command("VT.GET", Q, "t1")
    assert len(c.execute_command("VT.PEEK", Q, "READY")) == 1
    assert c.execute_command("VT.QUEUES") == [Q.encode()]
    assert c.execute_command("VT.SCHEDULE", "LIST", Q) == []
    refused(c, "VT.ENQUEUE", Q, "PAYLOAD", "x")
    refused(c, "VT.SCHEDULE", "DEL", Q, "n")


def test_minus_dangerous_forbids_clear_delete_and_internal(server):
    c = user(server, "careful", "~*", "+@all", "-@dangerous")
    c.execute_command("VT.ENQUEUE", Q, "ID", "t1", "PAYLOAD", "x")  # everyday commands still work
    assert len(fetch(c, Q)) == 1
    refused(c, "VT.CLEAR", Q, "ALL")
    refused(c, "VT.DELETE", Q, "t1")
    refused(c, "VT._FX", Q, "PROMOTE", 1)
    refused(c, "VT._LOAD", Q, "H")
    refused(c, "VT._ALIGNCHECK", 10)
    assert server.client().execute_command("VT.INFO", Q)


def test_internal_commands_are_refused_to_clients_with_every_permission(server_factory):
    # enable-debug-command no (the server default): even the default (+@all) user is refused
    strict = server_factory("--enable-debug-command", "no")
    c = strict.client()
    c.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "x")
    with pytest.raises(valkey.ResponseError, match="internal command"):
        c.execute_command("VT._FX", Q, "PROMOTE", 1)
    with pytest.raises(valkey.ResponseError, match="internal command"):
        c.execute_command("VT._LOAD", Q, "H")
    with pytest.raises(valkey.ResponseError, match="enable-debug-command"):
        c.execute_command("VT._ALIGNCHECK", 100000)
    # `local`: a loopback client may run it, like DEBUG
    local = server_factory("--enable-debug-command", "local")
    assert local.client().execute_command("VT._ALIGNCHECK", 10) == 50
    assert strict.alive() and local.alive()


def test_queues_lists_only_readable_keys(server):
    admin = server.client()
    for q in ("vt:{a}", "vt:{a2}", "vt:{b}", "other:{c}"):
        admin.execute_command("VT.ENQUEUE", q, "PAYLOAD", "x")
    assert admin.execute_command("VT.QUEUES") == [b"other:{c}", b"vt:{a2}", b"vt:{a}", b"vt:{b}"]
    a_only = user(server, "a-only", "~vt:{a*", "+vt.queues")
    assert a_only.execute_command("VT.QUEUES") == [b"vt:{a2}", b"vt:{a}"]
    read_vt = user(server, "read-vt", "%R~vt:*", "+vt.queues")
    assert read_vt.execute_command("VT.QUEUES") == [b"vt:{a2}", b"vt:{a}", b"vt:{b}"]
    write_only = user(server, "write-only", "%W~*", "+vt.queues")
    assert write_only.execute_command("VT.QUEUES") == []
    none = user(server, "nokeys", "+vt.queues")
    assert none.execute_command("VT.QUEUES") == []


# ------------------------------------------------------------------ the users of PROTOCOL.md


def documented_users() -> dict[str, list[str]]:
    text = (ROOT / "PROTOCOL.md").read_text()
    block = re.search(
        r"<!-- acl-users: begin -->\n```\n(.*?)```\n<!-- acl-users: end -->", text, re.S
    ).group(1)
    users = {}
    for line in block.strip().splitlines():
        words = line.split()
        assert words[:2] == ["ACL", "SETUSER"], line
        users[words[2]] = words[3:]
    return users


@pytest.fixture
def roles(server):
    admin = server.client()
    users = documented_users()
    assert set(users) == {"vt-producer", "vt-worker", "vt-operator", "vt-dashboard"}
    out = {}
    for name, rules in users.items():
        admin.execute_command("ACL", "SETUSER", name, *rules)
        password = next(r[1:] for r in rules if r.startswith(">"))
        out[name.removeprefix("vt-")] = server.client(username=name, password=password)
    return out


def test_producer_enqueues_and_reads_its_results_only(server, roles):
    p = roles["producer"]
    assert p.ping()
    p.execute_command("VT.ENQUEUE", Q, "ID", "t1", "PAYLOAD", "x")
    assert p.execute_command("VT.GET", Q, "t1")
    assert p.execute_command("VT.INFO", Q)
    assert p.execute_command("VT.CANCEL", Q, "t1") == b"removed"
    server.client().set("vt:result:t1", "done")
    assert p.get("vt:result:t1") == b"done"
    refused(p, "VT.FETCHBATCH", 1, Q, "WORKER", "w", "COUNT", 1)
    refused(p, "VT.ACK", Q, "t1", "0" * 16)
    refused(p, "VT.CLEAR", Q, "ALL")
    refused(p, "VT.PEEK", Q, "READY")
    refused(p, "VT.QUEUES")
    refused(p, "SET", "vt:result:t1", "forged")
    refused(p, "VT.ENQUEUE", "other:{q}", "PAYLOAD", "x")  # outside its key pattern
    refused(p, "FLUSHALL")


def test_worker_runs_tasks_but_cannot_destroy_them(server, roles):
    w = roles["worker"]
    server.client().execute_command("VT.ENQUEUE", Q, "ENTRIES", "t1", "a", "t2", "b", "t3", "c")
    got = fetch(w, Q, count=3, worker="w1")
    assert len(got) == 3
    (q1, id1, tok1, _, _), (q2, id2, tok2, _, _), (q3, id3, tok3, _, _) = got
    w.set(b"vt:result:" + id1, "ok")
    assert w.execute_command("VT.ACK", Q, id1, tok1) == 1
    assert w.execute_command("VT.FAIL", Q, id2, tok2, "boom", "RETRY", 0) == b"retry"
    assert w.execute_command("VT.EXTEND", Q, "w1", 60000) == 1
    assert w.execute_command("VT.RESCUE", Q, "WORKER", "w1") == 1
    w.execute_command("VT.SCHEDULE", "SET", Q, "nightly", "CRON", "0 3 * * *", "PAYLOAD", "p")
    assert w.execute_command("VT.QUEUES") == [Q.encode()]
    assert len(w.execute_command("VT.SCHEDULE", "LIST", Q)) == 1
    assert w.execute_command("VT.SCHEDULE", "DEL", Q, "nightly") == 1
    refused(w, "VT.CLEAR", Q, "ALL")
    refused(w, "VT.DELETE", Q, "t1")
    refused(w, "VT.RETRYDEAD", Q, "ALL")
    refused(w, "VT.PEEK", Q, "READY")
    refused(w, "VT._FX", Q, "PROMOTE", 1)
    refused(w, "CONFIG", "SET", "vtasks.dlq-cap", 1)
    refused(w, "DEL", Q)
    assert server.client().execute_command("VT.INFO", Q)


def test_operator_manages_queues_but_not_internals(server, roles):
    o = roles["operator"]
    o.execute_command("VT.ENQUEUE", Q, "ID", "t1", "MAXATTEMPTS", 1, "PAYLOAD", "x")
    ((_, i, tok, _, _),) = fetch(o, Q)
    assert o.execute_command("VT.FAIL", Q, i, tok, "boom") == b"dead"
    assert len(o.execute_command("VT.PEEK", Q, "DEAD")) == 1
    assert o.execute_command("VT.RETRYDEAD", Q, "t1") == 1
    assert o.execute_command("VT.DELETE", Q, "t1") == 1
    o.execute_command("VT.ENQUEUE", Q, "PAYLOAD", "y")
    assert o.execute_command("VT.CLEAR", Q, "ALL") == 1
    refused(o, "VT._FX", Q, "PROMOTE", 1)
    refused(o, "VT._LOAD", Q, "H")
    refused(o, "VT._ALIGNCHECK", 10)
    refused(o, "CONFIG", "SET", "vtasks.dlq-cap", 1)
    refused(o, "VT.INFO", "other:{q}")


def test_dashboard_reads_everything_and_changes_nothing(server, roles):
    admin = server.client()
    admin.execute_command("VT.ENQUEUE", Q, "ID", "t1", "PAYLOAD", "x")
    admin.execute_command("VT.SCHEDULE", "SET", Q, "n", "EVERY", 100000, "PAYLOAD", "p")
    d = roles["dashboard"]
    assert d.execute_command("VT.QUEUES") == [Q.encode()]
    assert d.execute_command("VT.INFO", Q)
    assert len(d.execute_command("VT.PEEK", Q, "READY")) == 1
    assert d.execute_command("VT.GET", Q, "t1")
    assert len(d.execute_command("VT.SCHEDULE", "LIST", Q)) == 1
    for argv in (
        ["VT.ENQUEUE", Q, "PAYLOAD", "x"],
        ["VT.FETCHBATCH", 1, Q, "WORKER", "w", "COUNT", 1],
        ["VT.CLEAR", Q, "ALL"],
        ["VT.DELETE", Q, "t1"],
        ["VT.RETRYDEAD", Q, "ALL"],
        ["VT.SCHEDULE", "DEL", Q, "n"],
        ["SET", "vt:result:x", "y"],
        ["VT._ALIGNCHECK", 10],
    ):
        refused(d, *argv)
    assert admin.execute_command("VT.GET", Q, "t1")
