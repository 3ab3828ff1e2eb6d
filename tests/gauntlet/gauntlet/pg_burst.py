"""Postgres bursts (issue 12) as a gauntlet scenario: benchmarks/burst.py (the one definition of
the burst: ``enqueue_many`` of a burst of no-op tasks, then ``manage.py runworker`` at C = 50, 100,
200 in turn until the burst is acked, again and again on one database) run against the scenario's
throwaway Postgres, then judged here.

Invariants: every burst acked in full (the broker's own counters: enqueued = acked, nothing ready,
in flight or dead at the end), no stall (acks stopped for >= STALL_S), no deadlock (``40P01`` /
``deadlock detected``) in the worker logs or the Postgres log. The rates (worst/median) are
reported, never asserted: speed is a benchmark's business.

The tasks are no-ops (the ledger's file per execution would be the cost measured): the counters
count each task once (a second ack of a redelivered task is refused for its stale token).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess

from . import paths
from .core import Ctx, Skip
from .hbroker import PgHB

STALL_S = 2.0
BURST_QUEUE = "default"  # benchmarks/benchproj's queue
RUN_LINE = re.compile(
    r"^run\s+(\d+)\s+c=(\d+)\s+([\d,]+) acked/s\s+"
    r"stalls=(\d+) \(longest ([\d.]+)s\)\s+deadlocks=(\d+)"
)
PG_DEADLOCKS = re.compile(r"deadlocks_in_pg_log=(\d+)")


def pg_burst(ctx: Ctx):
    if ctx.backend != "postgres":
        raise Skip("Postgres only")
    runs, count = (3, 10_000) if ctx.quick else (9, 30_000)
    ctx.start_backend()
    logs = ctx.dir / "burst-logs"
    argv = [
        paths.PYTHON,
        str(paths.ROOT / "benchmarks" / "burst.py"),
        "--runs",
        str(runs),
        "--count",
        str(count),
        "--concurrency",
        "50,100,200",
        "--stall",
        str(STALL_S),
        "--timeout",
        "120",
        "--pg-log",
        str(ctx.pg.dir / "postgres.log"),
        "--logs",
        str(logs),
    ]
    env = {"VTASKS_PG_DSN": ctx.pg.dsn, "PYTHONPATH": paths.subprocess_pythonpath()}

    out = subprocess.run(
        argv,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=runs * 150 + 120,
        check=False,
    )  # judged below from its output
    (ctx.dir / "burst.out").write_text(out.stdout + out.stderr)
    r = ctx.result
    rows = [m.groups() for m in map(RUN_LINE.match, out.stdout.splitlines()) if m]
    for run, c, rate, stalls, longest, _dl in rows:
        ctx.fault(
            f"burst {run}: {count} tasks, runworker c={c}: {rate}/s, "
            f"stalls {stalls}, longest gap {longest}s"
        )
    rates = [float(x[2].replace(",", "")) for x in rows]
    by_c = {}
    for x in rows:
        by_c.setdefault(int(x[1]), []).append(float(x[2].replace(",", "")))
    m = PG_DEADLOCKS.search(out.stdout)
    dl_pg = int(m.group(1)) if m else None
    dl_workers = sum(int(x[5]) for x in rows)
    stalls = sum(int(x[3]) for x in rows)
    r.notes.update(
        bursts=f"{len(rows)} x {count:,}",
        rate_median=round(statistics.median(rates)) if rates else None,
        rate_worst=round(min(rates)) if rates else None,
        worst_over_median=round(min(rates) / statistics.median(rates), 2) if rates else None,
        median_by_c={c: round(statistics.median(v)) for c, v in sorted(by_c.items())},
        longest_gap_s=max((float(x[4]) for x in rows), default=None),
        stalls=stalls,
        deadlocks_workers=dl_workers,
        deadlocks_pg_log=dl_pg,
    )
    if len(rows) != runs:
        tail = (out.stdout + out.stderr).strip().splitlines()[-5:]
        r.violations.append(
            f"{len(rows)} of {runs} bursts completed (exit {out.returncode}): {tail}"
        )
    if stalls:
        r.violations.append(f"{stalls} stall(s): acks stopped for >= {STALL_S}s during a burst")
    if dl_workers or dl_pg:
        r.violations.append(f"deadlocks: {dl_workers} in worker logs, {dl_pg} in the Postgres log")
    if dl_pg is None:
        r.violations.append("burst.py did not report the Postgres log's deadlocks")
    # conservation from the broker's counters of the bench database
    hb = PgHB(ctx.pg.dsn.rsplit("/", 1)[0] + "/bench_burst")
    try:
        info = hb.info(BURST_QUEUE)
    finally:
        hb.close()
    r.notes["final_info"] = info
    r.fed = info.get("enqueued_total", 0)
    r.executed = info.get("acked_total", 0)
    r.lost = max(0, runs * count - r.executed)
    r.dlq = info.get("dead", 0)
    if r.fed != runs * count:
        r.violations.append(f"enqueued_total {r.fed} != {runs} x {count}")
    if r.executed != r.fed:
        r.violations.append(f"acked_total {r.executed} != enqueued_total {r.fed}")
    for k in ("ready", "delayed", "inflight", "dead"):
        if info.get(k, 0):
            r.violations.append(f"left after the bursts: {k}={info[k]}")
