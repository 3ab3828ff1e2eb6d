"""Run gauntlet scenarios and write the report.

    python -m gauntlet.run [--quick] [--seed N] [--scenario NAME[,NAME]] [--backend valkey|postgres]
                           [--json PATH] [--results PATH] [--keep]

Every run prints its seed; replay one with the same --seed and --scenario.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from pathlib import Path

from .core import Ctx, Result, Skip, Vacuous
from .scenarios import SCENARIOS


def run_one(
    name: str, backend: str, seed: int, quick: bool, keep: bool = False, log=print
) -> Result:
    fn, backends = SCENARIOS[name]
    ctx = Ctx(name, backend, seed, quick, keep=keep)
    r = ctx.result
    t0 = time.time()
    log(f"--- {name} [{backend}] seed={seed} dir={ctx.dir}")
    try:
        if backend not in backends:
            raise Skip(f"{name} does not apply to {backend}")
        fn(ctx)
        r.verdict = "FAIL" if r.violations else "PASS"
        if r.faults == 0 and not r.violations:
            r.verdict = "VACUOUS"
            r.violations.append("the scenario never exercised its fault")
    except Vacuous as e:
        r.verdict = "VACUOUS" if not r.violations else "FAIL"
        r.violations.append(f"VACUOUS: {e}")
    except Skip as e:
        r.verdict = "SKIP"
        r.notes["skip"] = str(e)
    except Exception as e:
        r.verdict = "ERROR"
        r.violations.append(f"harness error: {e!r}")
        r.notes["traceback"] = traceback.format_exc()[-3000:]
        if ctx.fleet:
            r.notes["worker_log_tail"] = (
                ctx.fleet.workers[0].log_tail(15) if ctx.fleet.workers else ""
            )
    finally:
        r.duration_s = round(time.time() - t0, 1)
        try:
            ctx.close()
        except Exception as e:
            r.notes["close_error"] = repr(e)
    r.repro = f"scripts/gauntlet --seed {seed} --scenario {name} --backend {backend}" + (
        " --quick" if quick else ""
    )
    log(
        f"    {r.verdict} fed={r.fed} executed={r.executed} dup={r.duplicated} lost={r.lost} "
        f"dlq={r.dlq} "
        f"recovery={r.recovery_s}s ({r.duration_s}s)"
    )
    for v in r.violations:
        log(f"    ! {v}")
    return r


def results_markdown(results: list[Result], seed: int, quick: bool, extra: str = "") -> str:
    lines = [
        "## Reliability: the gauntlet",
        "",
        "Tasks fed continuously through real `runworker` processes against real servers while",
        "faults are injected; invariants checked at quiescence from an O_EXCL file ledger (see",
        "tests/gauntlet/README.md). *duplicated* = tasks with more than one finished execution",
        "(legal only after the holder died; anything else is a violation), *lost* = fed and never",
        "finished nor dead-lettered, *recovery* = worst time from a fault until throughput is back",
        "to 80 % of the pre-fault baseline (bound in parentheses).",
        "",
        f"Run: `scripts/gauntlet{' --quick' if quick else ''} --seed {seed}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Replay any row with its seed.",
        "",
        "| scenario | backend | verdict | fed | executed | duplicated | lost | DLQ (expected) "
        "| faults | recovery (bound) | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for r in results:
        if r.verdict == "SKIP":
            continue
        rec = (
            "-"
            if r.recovery_s is None and r.recovery_bound_s is None
            else f"{r.recovery_s if r.recovery_s is not None else '∞'} s "
            f"({r.recovery_bound_s:.0f} s)"
        )
        note_keys = (
            "kills_mid_task",
            "redelivered",
            "redelivered_after_kill",
            "tasks_running_at_sigterm",
            "same_id_redelivery_s(min,max,n)",
            "new_id_redelivery_s(min,max,n)",
            "ratio_during_hold",
            "ticks",
            "expected_ticks",
            "sends",
            "peak_used_memory",
            "health_age_at_end_of_outage_s",
            "connections_terminated",
            "downtime_s",
            "durable",
            "lost_per_crash",
            "lag_bytes_before_crash",
            "bursts",
            "rate_median",
            "worst_over_median",
            "stalls",
            "deadlocks_workers",
            "deadlocks_pg_log",
        )
        notes = ", ".join(f"{k}={r.notes[k]}" for k in note_keys if k in r.notes)
        if r.violations:
            notes = (notes + "; " if notes else "") + " / ".join(v[:160] for v in r.violations[:2])
        lines.append(
            f"| {r.scenario} | {r.backend} | **{r.verdict}** | {r.fed} | {r.executed} "
            f"| {r.duplicated} | {r.lost} | {r.dlq} ({r.dlq_expected}) | {r.faults} | {rec} "
            f"| {notes.replace('|', '/')} |"
        )
    lines += ["", extra] if extra else []
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="gauntlet")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--scenario", default=None, help="comma-separated names (default: all)")
    p.add_argument("--backend", default=None, choices=["valkey", "postgres"])
    p.add_argument("--json", default=None)
    p.add_argument("--results", default=None, help="write the markdown table here")
    p.add_argument("--keep", action="store_true", help="keep every work dir")
    a = p.parse_args(argv)
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1, 10**9)
    print(f"gauntlet seed={seed} quick={a.quick} (replay: --seed {seed})", flush=True)
    names = a.scenario.split(",") if a.scenario else list(SCENARIOS)
    for n in names:
        if n not in SCENARIOS:
            p.error(f"unknown scenario {n!r}; known: {', '.join(SCENARIOS)}")
    results = []
    for n in names:
        for b in SCENARIOS[n][1]:
            if a.backend and b != a.backend:
                continue
            results.append(
                run_one(n, b, seed, a.quick, keep=a.keep, log=lambda s: print(s, flush=True))
            )
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_json() for r in results], indent=2, default=str))
    if a.results:
        Path(a.results).write_text(results_markdown(results, seed, a.quick))
    bad = [r for r in results if r.verdict not in ("PASS", "SKIP")]
    print(f"gauntlet seed={seed}: {len(results) - len(bad)}/{len(results)} passed", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
