"""Duration of a Valkey 9 atomic slot migration (`CLUSTER MIGRATESLOTS`) of one queue (issue 11 §5).
Not a test: numbers depend on the machine.

    .venv/bin/python benchmarks/slot_migration.py [--tasks 1000000]

Starts a throwaway 3-primary cluster with the module (tests/module/conftest.py's servers: free
loopback ports, stopped by PID), fills one queue with `--tasks` ready tasks (16-byte payloads),
moves its slot to another primary, and prints the time from `CLUSTER MIGRATESLOTS` to the source
reporting success, and whether the target's `DEBUG DIGEST-VALUE` equals the source's.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests/module"))
from conftest import Server, free_port, wait_until  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1_000_000)
    n = ap.parse_args().tasks
    with tempfile.TemporaryDirectory() as tmp:
        nodes = [
            Server(
                pathlib.Path(tmp) / f"n{i}",
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "3000",
                    "--cluster-port",
                    str(free_port()),
                ],
            ).start()
            for i in range(3)
        ]
        try:
            cs = [s.client() for s in nodes]
            for i, c in enumerate(cs):
                c.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", i * 5461, 16383 if i == 2 else i * 5461 + 5460
                )
            for s in nodes[1:]:
                cs[0].execute_command(
                    "CLUSTER",
                    "MEET",
                    "127.0.0.1",
                    s.port,
                    int(s.client().config_get("cluster-port")["cluster-port"]),
                )
            wait_until(
                lambda: all(
                    "cluster_state:ok" in c.execute_command("CLUSTER", "INFO").decode() for c in cs
                ),
                timeout=30,
                msg="cluster ok",
            )
            q = next(
                f"vt:{{m{i}}}"
                for i in range(100)
                if cs[0].execute_command("CLUSTER", "KEYSLOT", f"vt:{{m{i}}}") < 5461
            )
            slot = cs[0].execute_command("CLUSTER", "KEYSLOT", q)
            p = cs[0].pipeline(transaction=False)
            for i in range(0, n, 1000):
                p.execute_command(
                    "VT.ENQUEUE",
                    q,
                    "ENTRIES",
                    *[x for j in range(i, min(i + 1000, n)) for x in (f"t{j}", "p" * 16)],
                )
            p.execute()
            want = cs[0].execute_command("DEBUG", "DIGEST-VALUE", q)
            target = cs[1].execute_command("CLUSTER", "MYID").decode()

            def state():
                job = iter(cs[0].execute_command("CLUSTER", "GETSLOTMIGRATIONS")[0])
                return dict(zip(job, job, strict=True))[b"state"].decode()

            t0 = time.monotonic()
            cs[0].execute_command(
                "CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slot, slot, "NODE", target
            )
            wait_until(
                lambda: state() in ("success", "failed", "cancelled"),
                timeout=600,
                interval=0.01,
                msg="migration finished",
            )
            dt = time.monotonic() - t0
            same = cs[1].execute_command("DEBUG", "DIGEST-VALUE", q) == want
            print(
                f"tasks={n} state={state()} seconds={dt:.2f} tasks_per_second={n / dt:,.0f} "
                f"digest_equal={same}"
            )
        finally:
            for s in nodes:
                s.stop()


if __name__ == "__main__":
    main()
