#!/usr/bin/env python3
"""Burst scenario of the Postgres backend (issue 12, section 1): consecutive bursts on one database.

    scripts/bench-pg-burst [--runs 30] [--count 30000] [--batch 1000] [--concurrency 50,200,100]

Each run enqueues --count no-op tasks with ``enqueue_many`` (batches of --batch), then starts
``manage.py runworker --concurrency C`` (C cycles through --concurrency) and polls the queue's
``acked_total`` until the whole burst is acked, then stops the worker. Every run uses the same
database, so the task table swings between empty and --count rows and the results table grows,
as in the report.

Per run it prints the ack rate (tasks / seconds from the first ack to the last) and the stalls:
gaps of at least --stall seconds during which ``acked_total`` did not move. At the end: median,
worst, worst/median, stalls, and the deadlocks (``40P01`` / ``deadlock detected``) found in the
worker logs and, when the script started the server, in the Postgres log. Exit status 1 when a
deadlock was found or worst/median < 0.7.

Uses benchmarks/benchproj (BENCH_SYSTEM=vtasks-pg, database ``bench_burst``) on $VTASKS_PG_DSN.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
QUEUE = "default"
DEADLOCK = re.compile(r"40P01|deadlock detected")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--count", type=int, default=30000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--concurrency", default="50,200,100")
    ap.add_argument(
        "--stall", type=float, default=1.0, help="gap (s) without acks counted as a stall"
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="give up a run after this many s")
    ap.add_argument("--pg-log", default=None, help="Postgres log file to scan for deadlocks")
    ap.add_argument("--logs", default="/tmp/vtasks-burst", help="directory for the worker logs")
    args = ap.parse_args()
    dsn = os.environ["VTASKS_PG_DSN"]
    concs = [int(c) for c in args.concurrency.split(",")]
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)

    env = dict(
        os.environ,
        BENCH_SYSTEM="vtasks-pg",
        BENCH_PG_DSN=dsn,
        BENCH_DONE_DIR=str(logs / "done"),
        DJANGO_SETTINGS_MODULE="benchproj.settings",
        BENCH_PG_DB="bench_burst",
    )
    env["PYTHONPATH"] = str(BENCH) + os.pathsep + env.get("PYTHONPATH", "")
    py = sys.executable
    db_dsn = dsn.rsplit("/", 1)[0] + "/bench_burst"
    _create_db(dsn, "bench_burst")
    subprocess.run([py, "manage.py", "migrate", "--noinput", "-v0"], cwd=BENCH, env=env, check=True)

    from django_vtasks import _native

    q = _native.PgQueue(db_dsn)
    rates, cpu_rates, stalls_total, deadlocks = [], [], 0, 0
    pg_log_start = Path(args.pg_log).stat().st_size if args.pg_log else 0
    for run in range(args.runs):
        c = concs[run % len(concs)]
        before = _acked(q)
        subprocess.run(
            [py, "-c", ENQUEUE, str(args.count), str(args.batch)], cwd=BENCH, env=env, check=True
        )
        log = logs / f"worker-{run:03d}.log"
        with open(log, "w") as lf:
            w = subprocess.Popen(
                [py, "manage.py", "runworker", "--concurrency", str(c)],
                cwd=BENCH,
                env=env,
                stdout=lf,
                stderr=subprocess.STDOUT,
            )
        try:
            load0, pg0 = os.getloadavg()[0], _pg_cpu()
            rate, stalls, longest = _watch(q, before, args)
            cpu, pg_cpu, load = _cpu(w.pid), _pg_cpu() - pg0, (load0 + os.getloadavg()[0]) / 2
        finally:
            w.send_signal(signal.SIGTERM)
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        dl = len(DEADLOCK.findall(log.read_text(errors="replace")))
        rates.append(rate)
        stalls_total += stalls
        deadlocks += dl
        results = _count(q, "SELECT count(*) FROM vtasks_result")
        cpu_rates.append(args.count / max(cpu + pg_cpu, 1e-3))
        print(
            f"run {run + 1:3d}  c={c:<4d} {rate:9,.0f} acked/s  stalls={stalls} "
            f"(longest {longest:.1f}s)  deadlocks={dl}  results={results:,}  "
            f"cpu: worker {cpu:.2f}s + postgres {pg_cpu:.2f}s = {cpu_rates[-1]:,.0f} tasks/cpu-s  "
            f"load {load:.1f}",
            flush=True,
        )
    if args.pg_log:
        with open(args.pg_log, errors="replace") as f:
            f.seek(pg_log_start)
            deadlocks_pg = len(re.findall(r"deadlock detected", f.read()))
    else:
        deadlocks_pg = None
    for c in concs:
        mine = [r for i, r in enumerate(rates) if concs[i % len(concs)] == c]
        if mine:
            print(
                f"c={c}: median {statistics.median(mine):,.0f}/s, worst {min(mine):,.0f}/s "
                f"({min(mine) / statistics.median(mine):.2f}x), {len(mine)} runs"
            )
    med, worst = statistics.median(rates), min(rates)
    print(
        "cpu per burst (worker + postgres): "
        f"median {statistics.median(cpu_rates):,.0f} tasks/cpu-s, "
        f"worst {min(cpu_rates):,.0f}"
    )
    print(
        f"runs={len(rates)} median={med:,.0f}/s worst={worst:,.0f}/s best={max(rates):,.0f}/s "
        f"worst/median={worst / med:.2f} stalls={stalls_total} deadlocks_in_worker_logs={deadlocks}"
        + ("" if deadlocks_pg is None else f" deadlocks_in_pg_log={deadlocks_pg}")
    )
    ok = deadlocks == 0 and not deadlocks_pg and worst / med >= 0.7
    return 0 if ok else 1


ENQUEUE = """
import sys, django
django.setup()
from django.tasks import task_backends
from benchproj.tasks import noop
n, b = int(sys.argv[1]), int(sys.argv[2])
backend = task_backends["default"]
done = 0
while done < n:
    k = min(b, n - done)
    backend.enqueue_many([(noop, [], {})] * k)
    done += k
"""


def _create_db(dsn: str, name: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            c.execute(f'CREATE DATABASE "{name}"')


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pg_cpu() -> float:
    """CPU seconds used so far by the live Postgres backends of the bench database (the worker's
    connections live for the whole run, so the difference over a run is theirs)."""
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            if not cmd.startswith(b"postgres: ") or b" bench_burst " not in cmd:
                continue
            total += _cpu(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return total


_ACKED_SQL = (
    "SELECT coalesce((SELECT sum(acked_total) FROM vtasks_stats WHERE queue = %(q)s), 0)"
    " + coalesce((SELECT sum(acked) FROM vtasks_stats_delta WHERE queue = %(q)s), 0)"
)
_conn = None


def _acked(q) -> int:
    """acked_total of INFO, read from the counter tables alone: INFO also counts the queue's rows
    by state (about 10 ms with 30,000 rows), which at 20 polls a second would load the server
    the run measures."""
    global _conn
    if _conn is None:
        import psycopg

        _conn = psycopg.connect(q_dsn(q), autocommit=True)
    return int(_conn.execute(_ACKED_SQL, {"q": QUEUE}).fetchone()[0])


def _count(q, sql: str) -> int:
    import psycopg

    with psycopg.connect(q_dsn(q)) as c:
        return c.execute(sql).fetchone()[0]


def q_dsn(q) -> str:
    return os.environ["VTASKS_PG_DSN"].rsplit("/", 1)[0] + "/bench_burst"


def _watch(q, before: int, args) -> tuple[float, int, float]:
    """Polls acked_total until the burst is acked: (rate from first to last ack, stalls, longest
    gap)."""
    target = before + args.count
    deadline = time.monotonic() + args.timeout
    first = last_move = None
    last = before
    stalls, longest = 0, 0.0
    while True:
        now = time.monotonic()
        acked = _acked(q)
        if acked != last:
            if first is None:
                first = now
            elif now - last_move >= args.stall:
                stalls += 1
            if last_move is not None:
                longest = max(longest, now - last_move)
            last_move, last = now, acked
        if acked >= target:
            break
        if now > deadline:
            raise SystemExit(f"run timed out: {acked - before}/{args.count} acked")
        time.sleep(0.05)
    # the first poll that saw acks moving already missed up to one poll interval of acks
    return args.count / max(last_move - first + 0.05, 1e-3), stalls, longest


if __name__ == "__main__":
    sys.exit(main())
