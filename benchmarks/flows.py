"""Cost of flows (issue 17) on both engines: adding a group of N tasks with its callback in one
command, and acking the N members (which releases the callback on the last ack) compared with
acking N plain tasks. Not a test: numbers depend on the machine.

    .venv/bin/python benchmarks/flows.py [--n 10000] [--batch 100] [--pg-dsn postgres://...]

Starts a throwaway valkey-server with the module (target/release/libvtasks.so) on a free loopback
port (stopped by PID). Times are wall-clock from this client, one connection, medians of
--repeat runs. Postgres is measured when --pg-dsn (or VTASKS_PG_DSN) names a server; its schema
is migrated first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "client-py" / "tests"))


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def valkey_run(url: str, n: int, batch: int) -> dict[str, float]:
    import valkey

    c = valkey.Valkey.from_url(url)
    q = f"vt:{{bench-{uuid.uuid4().hex[:8]}}}"
    ids = [f"m{i}" for i in range(n)]
    args = [x for i in ids for x in (i, 0, 0, 0, 0, b"x" * 64)]
    args += ["cb", 0, 0, 0, n, *ids, b"y" * 64]
    out = {"flow add": timed(lambda: c.execute_command("VT.FLOW", q, n + 1, *args))}

    def ack_all(queue):
        got = c.execute_command("VT.FETCHBATCH", 1, queue, "WORKER", "w", "COUNT", n)
        pairs = [(e[1], e[2]) for e in got if e[1] != b"cb"]
        for i in range(0, len(pairs), batch):
            c.execute_command("VT.ACK", queue, *[x for p in pairs[i : i + batch] for x in p])

    out["ack members"] = timed(lambda: ack_all(q))
    assert c.execute_command("VT.GET", q, "cb")[3] == b"ready", "the callback was not released"
    plain = f"vt:{{bench-{uuid.uuid4().hex[:8]}}}"
    entries = [x for i in ids for x in (i, b"x" * 64)]
    out["plain add"] = timed(lambda: c.execute_command("VT.ENQUEUE", plain, "ENTRIES", *entries))
    out["ack plain"] = timed(lambda: ack_all(plain))
    c.delete(q, plain)
    stats = c.info("commandstats")
    for cmd, name in (("vt.flow", "flow add (server)"), ("vt.enqueue", "plain add (server)")):
        s = stats[f"cmdstat_{cmd}"]
        out[name] = s["usec"] / s["calls"] / 1e6
    c.config_resetstat()
    return out


def pg_run(dsn: str, n: int, batch: int) -> dict[str, float]:
    from django_vtasks import _native

    pq = _native.PgQueue(dsn, pool_size=2)
    pq.migrate()
    q = f"bench-{uuid.uuid4().hex[:8]}"
    ids = [f"m{i}" for i in range(n)]
    tasks = [(i, 0, None, None, [], b"x" * 64) for i in ids] + [("cb", 0, None, None, ids, b"y")]
    out = {"flow add": timed(lambda: pq.enqueue_flow(q, tasks))}

    def ack_all(queue):
        got = pq.fetch([queue], "w", n)
        pairs = [(d[1], d[2]) for d in got if d[1] != "cb"]
        for i in range(0, len(pairs), batch):
            pq.ack(queue, pairs[i : i + batch])

    out["ack members"] = timed(lambda: ack_all(q))
    assert pq.get(q, "cb")["state"] == "ready", "the callback was not released"
    plain = f"bench-{uuid.uuid4().hex[:8]}"
    out["plain add"] = timed(lambda: pq.enqueue(plain, [b"x" * 64] * n, ids=ids))
    out["ack plain"] = timed(lambda: ack_all(plain))
    for x in (q, plain):
        pq.clear(x, "all")
    return out


def report(name: str, runs: list[dict[str, float]], n: int) -> None:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"{name}: group of {n} + callback, medians of {len(runs)}")
    print(
        f"  add: flow {med['flow add'] * 1000:.1f} ms, "
        f"plain enqueue {med['plain add'] * 1000:.1f} ms"
    )
    if "flow add (server)" in med:
        print(
            "  add, server side (INFO commandstats): "
            f"VT.FLOW {med['flow add (server)'] * 1000:.1f} ms, "
            f"VT.ENQUEUE {med['plain add (server)'] * 1000:.1f} ms"
        )
    print(
        f"  ack of the {n} members (releases the callback) {med['ack members'] * 1000:.1f} ms vs "
        f"{n} plain tasks {med['ack plain'] * 1000:.1f} ms "
        f"(x{med['ack members'] / med['ack plain']:.2f})"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=9_999)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--pg-dsn", default=os.environ.get("VTASKS_PG_DSN"))
    a = p.parse_args()
    from vtasks_servers import start_valkey, stop_process

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_valkey(tmp)
        try:
            report("valkey", [valkey_run(url, a.n, a.batch) for _ in range(a.repeat)], a.n)
        finally:
            stop_process(proc)
    if a.pg_dsn:
        report("postgres", [pg_run(a.pg_dsn, a.n, a.batch) for _ in range(a.repeat)], a.n)


if __name__ == "__main__":
    main()
