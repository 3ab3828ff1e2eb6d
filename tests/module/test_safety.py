"""Hostile input never kills the server; aligned allocations on the libc-malloc server; cluster
routing (CROSSSLOT)."""

import os
import random
import socket
import time

import pytest
import valkey

from conftest import fetch, free_port, wait_until

COMMANDS = [
    "VT.ENQUEUE",
    "VT.FETCHBATCH",
    "VT.ACK",
    "VT.FAIL",
    "VT.RESCUE",
    "VT.EXTEND",
    "VT.INFO",
    "VT.QUEUES",
    "VT.PEEK",
    "VT.GET",
    "VT.RETRYDEAD",
    "VT.DELETE",
    "VT.CLEAR",
    "VT.SCHEDULE",
    "VT._FX",
    "VT._LOAD",
    "VT._ALIGNCHECK",
]
WORDS = [
    "ID",
    "PRIORITY",
    "DELAY",
    "AT",
    "UNIQUE",
    "MAXATTEMPTS",
    "PAYLOAD",
    "ENTRIES",
    "WORKER",
    "COUNT",
    "LEASE",
    "BLOCK",
    "OFFSET",
    "READY",
    "DELAYED",
    "INFLIGHT",
    "DEAD",
    "ALL",
    "RETRY",
    "SET",
    "DEL",
    "LIST",
    "CRON",
    "EVERY",
    "ENQ",
    "FETCH",
    "PROMOTE",
    "SCHEDSET",
    "H",
    "T",
    "payload",
    "id",
]
NUMBERS = [
    "0",
    "1",
    "-1",
    "2",
    "3",
    "100",
    "101",
    "-100",
    "10000",
    "10001",
    "1000",
    "1001",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "18446744073709551616",
    "1e3",
    "0x10",
    " 1",
    "+1",
    "",
    "00",
    "-0",
    "3.5",
]
QUEUES = ["vt:{p}", "vt:{p}2", "plainkey", ""]
CRONS = [
    "* * * * * *",
    "*/5 * * * *",
    "0 0 30 2 *",
    "61 * * * * *",
    "a b c d e f",
    "* * * * * * * *",
    "0 0 0 1 1 * 2020",
    "@daily",
    "1-2/0 * * * * *",
]


def random_arg(rng: random.Random):
    k = rng.random()
    if k < 0.3:
        return rng.choice(WORDS) if rng.random() < 0.8 else rng.choice(WORDS).lower()
    if k < 0.55:
        return rng.choice(NUMBERS)
    if k < 0.7:
        return rng.choice(QUEUES)
    if k < 0.75:
        return rng.choice(CRONS)
    if k < 0.8:
        return f"{rng.getrandbits(64):016x}"
    if k < 0.97:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
    return os.urandom(rng.choice([129, 300, 5000]))


def random_argv(rng: random.Random, cmd: str):
    argv = [cmd]
    if cmd == "VT.SCHEDULE" and rng.random() < 0.8:
        argv.append(rng.choice(["SET", "DEL", "LIST", "set"]))
    if rng.random() < 0.85:
        argv.append(rng.choice(QUEUES))
    if cmd == "VT.FETCHBATCH" and rng.random() < 0.7:
        argv[1:1] = [rng.choice(["1", "2", "0", "-1", "1000", "1001", "x"])]
    argv += [random_arg(rng) for _ in range(rng.randint(0, 12))]
    # keep BLOCK short so a vector cannot park the test client for long
    for i, a in enumerate(argv[:-1]):
        if isinstance(a, str) and a.upper() == "BLOCK":
            argv[i + 1] = rng.choice(["1", "2", "-5", "abc", "99999999999999999999"])
    return argv


def test_poisoned_input_corpus(server):
    seed = int(os.environ.get("VTASKS_POISON_SEED", random.randrange(2**32)))
    print(f"poison corpus seed: {seed} (rerun with VTASKS_POISON_SEED={seed})")
    rng = random.Random(seed)
    c = server.client(socket_timeout=5)
    # some real state to hit: tasks in every state, a schedule
    c.execute_command("VT.ENQUEUE", "vt:{p}", "ENTRIES", "id", "x", "payload", "y", "1", "z")
    c.execute_command("VT.ENQUEUE", "vt:{p}", "DELAY", 100000, "PAYLOAD", "d")
    fetch(c, "vt:{p}", count=1, worker="WORKER")
    c.set("plainkey", "v")
    errors = ok = 0
    for n in range(4000):
        cmd = rng.choice(COMMANDS)
        argv = random_argv(rng, cmd)
        try:
            c.execute_command(*argv)
            ok += 1
        except valkey.ResponseError as e:
            assert "internal error" not in str(e), (seed, n, argv, e)
            errors += 1
        except valkey.exceptions.TimeoutError:
            c = server.client(socket_timeout=5)
        assert server.alive(), f"server died on vector {n} {argv!r} (seed {seed})"
    assert c.ping()
    assert server.client().info("vtasks")["vtasks_internal_errors"] == 0
    assert errors > 1000 and ok > 100, (ok, errors)


def test_specific_hostile_vectors(server):
    c = server.client()
    hostile = [
        ["VT.FETCHBATCH", "9223372036854775807", "q", "WORKER", "w", "COUNT", "1"],
        ["VT.FETCHBATCH", "1", "q", "WORKER", "w", "COUNT", "99999999999"],
        ["VT.FETCHBATCH", "1", "q", "WORKER", "", "COUNT", "1"],
        ["VT.FETCHBATCH", "1", "q", "WORKER", "w" * 257, "COUNT", "1"],
        ["VT.ENQUEUE", "q", "AT", "9223372036854775807", "PAYLOAD", "x"],
        ["VT.ENQUEUE", "q", "DELAY", "9223372036854775807", "PAYLOAD", "x"],
        ["VT.ENQUEUE", "q", "UNIQUE", "k", "9223372036854775807", "PAYLOAD", "x"],
        ["VT.PEEK", "q", "READY", "OFFSET", "9223372036854775807"],
        ["VT.PEEK", "q", "READY", "COUNT", "-1"],
        ["VT.EXTEND", "q", "w", "9223372036854775807"],
        ["VT.FAIL", "q", "id", "tok", "e", "RETRY", "9223372036854775807"],
        ["VT.SCHEDULE", "SET", "q", "n", "EVERY", "9223372036854775807", "PAYLOAD", "x"],
        ["VT.SCHEDULE", "SET", "q", "n", "CRON", "0 0 30 2 *", "PAYLOAD", "x"],
        ["VT.SCHEDULE", "SET", "q", "n", "CRON", "\xff\xfe", "PAYLOAD", "x"],
        ["VT.SCHEDULE"],
        ["VT._ALIGNCHECK", "100001"],
    ]
    for argv in hostile:
        try:
            c.execute_command(*argv)
        except valkey.ResponseError as e:
            assert "internal error" not in str(e), argv
        assert server.alive() and c.ping(), argv
    # a client blocked forever and then disconnected is cleaned up
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(
        b"*8\r\n$13\r\nVT.FETCHBATCH\r\n$1\r\n1\r\n$1\r\nz\r\n$6\r\nWORKER\r\n$1\r\nw\r\n$5\r\nCOUNT\r\n$1\r\n1\r\n"
    )
    s.sendall(b"")
    time.sleep(0.05)
    s.close()
    wait_until(lambda: c.info("clients")["blocked_clients"] == 0)
    assert c.ping()


def test_alignment_regression(server):
    """Over-aligned allocations (32..4096 bytes) inside the server: the crate allocator alone
    returns misaligned blocks on this libc-malloc server; the module's wrapper must not."""
    c = server.client()
    assert c.info("memory")["mem_allocator"].startswith("libc")
    for _ in range(40):
        assert c.execute_command("VT._ALIGNCHECK", 2000) == 10000
    # interleave with ordinary traffic (other allocation sizes) and check again
    for i in range(200):
        c.execute_command("VT.ENQUEUE", "vt:{a}", "PAYLOAD", "x" * (i * 37 % 500))
    fetch(c, "vt:{a}", count=200)
    assert c.execute_command("VT._ALIGNCHECK", 5000) == 25000
    assert server.alive()


def test_crossslot_in_cluster_mode(server_factory):
    # The bus port defaults to port + 10000, which overflows for ephemeral ports above 55535.
    s = server_factory(
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        str(free_port()),
    )
    c = s.client()
    c.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    wait_until(
        lambda: c.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") >= 0,
        timeout=10,
    )
    c.execute_command("VT.ENQUEUE", "vt:{a}1", "PAYLOAD", "x")
    c.execute_command("VT.ENQUEUE", "vt:{a}2", "PAYLOAD", "y")
    assert len(fetch(c, "vt:{a}1", "vt:{a}2")) == 2  # same hash tag: one slot
    with pytest.raises(valkey.ResponseError, match="CROSSSLOT"):
        fetch(c, "vt:{a}1", "vt:{b}1")
    assert c.execute_command("CLUSTER", "KEYSLOT", "vt:{a}1") == c.execute_command(
        "CLUSTER", "KEYSLOT", "vt:{a}2"
    )
