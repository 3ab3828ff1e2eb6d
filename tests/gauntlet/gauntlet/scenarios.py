"""The scenarios. Each takes a Ctx, drives traffic and faults, and fills ctx.result.

Pacing between faults uses the seeded RNG (deterministic schedule); every *outcome* is awaited by
bounded polling (util.wait_until), never by a fixed sleep.
"""

from __future__ import annotations

import base64
import signal
import time
from itertools import pairwise

from .core import QUEUE, Ctx, Skip, Vacuous
from .hbroker import PREFIX
from .hostile import run_hostile
from .pg_burst import pg_burst
from .util import wait_until


def pace(seconds: float):
    """Deliberate spacing between injected faults (not a wait for an outcome)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def _running_on(ctx: Ctx, pid: int) -> list[str]:
    return [
        g for g, exs in ctx.ledger.read().items() for e in exs if e.pid == pid and not e.finished
    ]


def _server_fault_explainer(ctx: Ctx, margin: float = 2.0):
    """A duplicate is explained when its previous execution ended around a server fault (the ack
    was in flight when the connection/server died) or the fault hit while it ran, or when the
    feeder re-sent the task after a failed enqueue and the previous execution had ended before
    that re-send was acknowledged (the re-send enqueued it again: see feeder.py)."""

    def explained(prev, nxt):
        for f in ctx.feeders:
            if prev.gid in f.resent and prev.end is not None and prev.end <= f.fed.get(prev.gid, 0):
                return True
        for tf in ctx.fault_times:
            end = prev.end if prev.end is not None else nxt.start
            if prev.start - margin <= tf <= end + margin:
                return True
        return False

    return explained


# --------------------------------------------------------------------------------------------------
def _check_after_server_fault(
    ctx: Ctx, base: float, lease: float, bound: float, margin: float = 2.0, lossy: bool = False
):
    """After a server-side fault: throughput back within ``bound``, drain (two leases + slack for
    redeliveries), then every invariant, re-executions near a fault being explained by it.
    ``lossy``: see Ctx.quiesce."""
    ctx.wait_recovery_window(bound, base)
    ctx.stop_feeding()
    expected = set(ctx.fed())
    ctx.quiesce(expected, timeout=lease * 2 + 40, lossy=lossy)
    ctx.recovery(base, bound)
    ctx.check(expected, explained_dup=_server_fault_explainer(ctx, margin=margin))


def sigkill(ctx: Ctx):
    """Worker SIGKILL mid-batch, repeatedly; a replacement (new id) is started after each kill."""
    q = ctx.quick
    lease = 3.0 if q else 5.0
    ctx.start_backend()
    fleet = ctx.start_fleet(3, lease=lease, concurrency=16)
    ctx.feeder(rate=150, ms=100)
    ctx.feeder(rate=10, ms=100, batch=1, unique=True, tag="U")  # unique keys must be released
    ctx.wait_flowing()
    base = ctx.baseline(2.0 if q else 5.0)
    kills = 3 if q else 10
    mid = 0
    for _ in range(kills):
        w = ctx.rng.choice(fleet.live())
        try:  # aim mid-batch: bounded wait until the victim runs something
            running = wait_until(
                lambda w=w: _running_on(ctx, w.pid), 3.0, interval=0.02, what="victim busy"
            )
        except Exception:
            running = []
        mid += bool(running)
        fleet.sigkill(w)
        ctx.fault(f"SIGKILL {w.tag} pid {w.pid} with {len(running)} task(s) running")
        fleet.spawn()
        pace(ctx.rng.uniform(1.0, 2.0))
    bound = 10.0
    ctx.wait_recovery_window(bound)
    ctx.stop_feeding()
    expected = set(ctx.fed())
    ctx.quiesce(expected, timeout=lease * 3 + 40)
    ctx.recovery(base, bound)
    ctx.check(expected)
    redelivered = sum(
        1 for exs in ctx.ledger.read().values() if len(exs) > 1 and exs[0].pid in fleet.faulted
    )
    rescued = ctx.result.notes.get("final_info", {}).get("rescued_total", 0)
    ctx.result.notes.update(
        kills_mid_task=mid, redelivered_after_kill=redelivered, rescued_total=rescued
    )
    if mid == 0 and redelivered == 0 and not rescued:
        raise Vacuous("no kill hit a worker with tasks in flight")


def sigterm(ctx: Ctx):
    """SIGTERM drains: in-flight tasks finish and are acked once, the worker exits 0."""
    lease = 5.0
    ctx.start_backend()
    fleet = ctx.start_fleet(2, lease=lease, concurrency=32)
    ctx.feeder(rate=60, ms=400)
    ctx.wait_flowing(n=10)
    base = ctx.baseline(3.0)
    drained = 0
    for _ in range(1 if ctx.quick else 3):
        # a drain test needs a worker that is up (signal handlers installed): one that ran tasks
        def ready():
            return [
                x
                for x in fleet.live()
                if any(e.pid == x.pid for v in ctx.ledger.read().values() for e in v)
            ]

        w = ctx.rng.choice(wait_until(ready, 30, what="a booted worker"))
        running = _running_on(ctx, w.pid)
        drained += len(running)
        w.signal(signal.SIGTERM)
        ctx.fault(f"SIGTERM {w.tag} pid {w.pid} with {len(running)} task(s) running")
        rc = w.wait(lease + 15)
        if rc is None:
            ctx.result.violations.append(
                f"{w.tag} did not exit within {lease + 15:.0f}s of SIGTERM"
            )
            w.kill()
        elif rc != 0:
            ctx.result.violations.append(
                f"{w.tag} exited {rc} after SIGTERM (expected 0); log: {w.log_tail(5)}"
            )
        unfinished = [g for g in running if g not in ctx.ledger.finished_gids()]
        if unfinished and rc == 0:
            # its tasks must have finished (drained) by the time it exited
            mine = {
                g
                for g, exs in ctx.ledger.read().items()
                for e in exs
                if e.pid == w.pid and e.finished
            }
            left = [g for g in running if g not in mine]
            if left:
                ctx.result.violations.append(
                    f"{len(left)} task(s) running at SIGTERM were not finished by the draining "
                    f"worker: {left[:3]}"
                )
        fleet.spawn()
        pace(1.0)
    bound = 10.0
    ctx.wait_recovery_window(bound)
    ctx.stop_feeding()
    expected = set(ctx.fed())
    ctx.quiesce(expected, timeout=40)
    ctx.recovery(base, bound)
    ctx.check(expected)  # a drained worker is not "faulted": any duplicate is a violation
    ctx.result.notes["tasks_running_at_sigterm"] = drained
    if drained == 0:
        raise Vacuous("SIGTERM never hit a worker with tasks running")


def rename(ctx: Ctx):
    """A worker restarted under the same id rescues its tasks at once; one restarted under a
    different id leaves them to lease expiry (the server's rescue): nothing leaks, nothing lost."""
    lease = 3.0
    ctx.start_backend()
    fleet = ctx.start_fleet(0, lease=lease, concurrency=64)
    wa = fleet.spawn(args=["--id", f"{ctx.run_id}-A"], tag="A")
    wb = fleet.spawn(args=["--id", f"{ctx.run_id}-B"], tag="B")
    ctx.feeder(rate=40, ms=1000, batch=4)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    notes = ctx.result.notes
    # same id: B killed, B restarted -> VT.RESCUE WORKER at start-up
    running_b = _running_on(ctx, wb.pid)
    fleet.sigkill(wb)
    ctx.fault(f"SIGKILL B (pid {wb.pid}, {len(running_b)} running), restart as the same id")
    t_b = time.time()
    fleet.spawn(args=["--id", f"{ctx.run_id}-B"], tag="B2")
    pace(2.0)
    # different id: A killed, started again as A2
    running_a = _running_on(ctx, wa.pid)
    fleet.sigkill(wa)
    ctx.fault(f"SIGKILL A (pid {wa.pid}, {len(running_a)} running), restart as a new id A2")
    t_a = time.time()
    fleet.spawn(args=["--id", f"{ctx.run_id}-A2"], tag="A2")
    bound = lease + 10
    ctx.wait_recovery_window(bound)
    ctx.stop_feeding()
    expected = set(ctx.fed())
    ctx.quiesce(expected, timeout=lease * 3 + 40)
    ctx.recovery(base, bound)
    ctx.check(expected)
    led = ctx.ledger.read()

    def redelivery_delay(gids, t):
        ds = []
        for g in gids:
            after = [
                e.start - t for e in led.get(g, []) if e.start > t
            ]  # executions after the kill
            if after:
                ds.append(min(after))
        return (round(min(ds), 2), round(max(ds), 2), len(ds)) if ds else None

    notes["same_id_redelivery_s(min,max,n)"] = redelivery_delay(running_b, t_b)
    notes["new_id_redelivery_s(min,max,n)"] = redelivery_delay(running_a, t_a)
    if not running_a and not running_b:
        raise Vacuous("neither killed worker had tasks running")
    d = redelivery_delay(running_a, t_a)
    if d and d[0] < 0.7 * lease:
        ctx.result.violations.append(
            f"tasks of the renamed worker came back after {d[0]}s, before their lease ({lease}s) "
            "could expire"
        )


def sigstop(ctx: Ctx):
    """A worker SIGSTOPped past its lease, then SIGCONTinued: its tasks are redelivered only after
    the lease expires; its late acks (stale tokens) must not delete the redelivered tasks; tasks
    longer than the lease on live workers are never redelivered (the lease is extended)."""
    lease = 2.0
    ctx.start_backend()
    fleet = ctx.start_fleet(2, lease=lease, concurrency=16)
    ctx.feeder(rate=80, ms=30)
    ctx.feeder(rate=3, ms=int(lease * 1500), batch=1, tag="L")  # 1.5x the lease
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    w = ctx.rng.choice(fleet.live())
    wait_until(lambda: len(_running_on(ctx, w.pid)) > 0, 10, what="the victim to run something")
    # let the victim go idle so its next VT.FETCHBATCH is parked in the server when it stops, then
    # feed at once: the server leases tasks to the stopped worker's parked fetch (a GC pause or a
    # frozen VM looks the same)
    for f in ctx.feeders:
        f.pause(True)
    pace(0.3)
    held = _running_on(ctx, w.pid)
    fleet.sigstop(w)
    for f in ctx.feeders:
        f.pause(False)
    ctx.fault(f"SIGSTOP {w.tag} pid {w.pid} holding {len(held)} running task(s)")
    t_stop = time.time()
    pace(lease * 2.5)
    fleet.sigcont(w)
    ctx.result.notes["stopped_s"] = round(time.time() - t_stop, 2)
    bound = lease * 2 + 8
    ctx.wait_recovery_window(bound)
    ctx.stop_feeding()
    expected = set(ctx.fed())
    ctx.quiesce(expected, timeout=40)
    ctx.recovery(base, bound)
    ctx.check(expected)
    led = ctx.ledger.read()
    redelivered = [g for g in held if any(e.pid != w.pid for e in led.get(g, []))]
    rescued = ctx.result.notes.get("final_info", {}).get("rescued_total", 0)
    ctx.result.notes.update(
        held_when_stopped=len(held), redelivered=len(redelivered), rescued_total=rescued
    )
    if not w.alive():
        ctx.result.violations.append(f"the stopped worker died after SIGCONT: {w.log_tail(5)}")
    if not redelivered and not rescued:
        raise Vacuous("nothing the stopped worker held was redelivered")


def poison(ctx: Ctx):
    """Unknown task path, undecodable payload, raising task, sys.exit task, 10 MB payload: the four
    failures land in the DLQ with their error, the big one runs once, normal traffic keeps flowing,
    and no worker dies."""
    ctx.start_backend()
    fleet = ctx.start_fleet(2, lease=10.0, concurrency=8)
    ctx.feeder(rate=100, ms=10)
    ctx.wait_flowing()
    base = ctx.baseline(1.5)
    rid = ctx.run_id
    items, dead = [], {}
    g = f"{rid}-p-unknown"
    items.append((g, ctx.task_payload("gauntlet_app.tasks.does_not_exist", [g], g)))
    dead[g] = "does_not_exist"
    g = f"{rid}-p-undecodable"
    items.append((g, b"zstd:\x00\x01garbage-not-zstd" + ctx.rng.randbytes(32)))
    dead[g] = "undecodable"
    g2 = f"{rid}-p-notjson"
    items.append((g2, b"{not json" + ctx.rng.randbytes(16)))
    dead[g2] = ""
    g = f"{rid}-p-boom"
    items.append((g, ctx.task_payload("gauntlet_app.tasks.boom", [g], g)))
    dead[g] = "gauntlet boom"
    g = f"{rid}-p-exit"
    items.append((g, ctx.task_payload("gauntlet_app.tasks.exit_task", [g], g)))
    dead[g] = "SystemExit"
    ctx.hb.enqueue(QUEUE, items, max_attempts=3)
    ctx.fault("poison batch enqueued (unknown path, undecodable x2, raises, sys.exit)")
    big = f"{rid}-p-big"
    blob = base64.b64encode(ctx.rng.randbytes(7_500_000)).decode()  # 10 MB of incompressible text
    ctx.hb.enqueue(
        QUEUE, [(big, ctx.task_payload("gauntlet_app.tasks.big", [big, blob], big))], max_attempts=3
    )
    ctx.fault("10 MB payload enqueued")
    ctx.result.notes["fed_extra"] = len(items) + 1
    bound = 10.0
    ctx.wait_recovery_window(bound)
    ctx.stop_feeding()
    expected = set(ctx.fed()) | {big}
    ctx.quiesce(expected, timeout=60, expect_dead=set(dead))
    ctx.recovery(base, bound)
    ctx.check(expected, expect_dead=dead)
    led = ctx.ledger.read()
    for g in (f"{rid}-p-boom", f"{rid}-p-exit"):
        n = len(led.get(g, []))
        if n != 1:
            ctx.result.violations.append(f"{g} ran {n} times (fail-fast: once)")
    dead_workers = [w.tag for w in fleet.workers if not w.alive()]
    if dead_workers:
        ctx.result.violations.append(
            f"worker(s) died on poison: {dead_workers}: {fleet.workers[0].log_tail(5)}"
        )
    size = (led.get(big) or [None])[0]
    ctx.result.notes["big_payload_ran"] = bool(size and size.finished)


def valkey_restart(ctx: Ctx):
    """Valkey SIGKILLed under load with AOF (appendfsync always) and restarted on the same port:
    nothing acknowledged is lost, workers reconnect, the health file goes stale while no consumer
    can make progress and fresh again after."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    lease = 15.0
    down = 4.0 if ctx.quick else 6.0
    ctx.start_backend(aof=True)
    hfile = ctx.dir / "health"
    fleet = ctx.start_fleet(0, lease=lease, concurrency=32)
    fleet.spawn(args=["--health-check-file", str(hfile)])
    fleet.spawn()
    ctx.feeder(rate=100, ms=200)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    info = ctx.hb.info(QUEUE)
    ctx.valkey.kill(signal.SIGKILL)
    ctx.fault(f"valkey SIGKILL (inflight {info.get('inflight')}, acked {info.get('acked_total')})")
    t_down = time.time()
    pace(down)
    age_down = time.time() - hfile.stat().st_mtime if hfile.exists() else None
    ctx.valkey.start()
    ctx.result.notes["downtime_s"] = round(time.time() - t_down, 2)
    wait_until(
        lambda: time.time() - hfile.stat().st_mtime < 2.5,
        20,
        what="health file fresh after restart",
    )
    ctx.result.notes["health_age_at_end_of_outage_s"] = round(age_down or -1, 2)
    if age_down is None or age_down < down - 2.5:
        ctx.result.violations.append(
            f"health check dishonest: file touched {age_down}s before the end of a {down}s outage"
        )
    _check_after_server_fault(ctx, base, lease, bound=10.0)
    if not info.get("inflight"):
        ctx.result.notes["warning"] = "no task in flight at the crash"


def debug_reload(ctx: Ctx):
    """DEBUG RELOAD (save + reload the RDB in place) under load: state and counters survive, no
    duplicate, no loss."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    ctx.start_backend()
    ctx.start_fleet(2, lease=10.0, concurrency=8)
    ctx.feeder(rate=150, ms=20)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    c = ctx.valkey.client(timeout=30)
    hit = 0
    for _ in range(3 if ctx.quick else 10):
        before = ctx.hb.info(QUEUE)
        c.execute_command("DEBUG", "RELOAD")
        after = ctx.hb.info(QUEUE)
        hit += bool(before.get("inflight"))
        ctx.fault(f"DEBUG RELOAD (inflight {before.get('inflight')})")
        for k in ("enqueued_total", "acked_total"):
            if after.get(k, 0) < before.get(k, 0):
                ctx.result.violations.append(
                    f"counter {k} went back across DEBUG RELOAD: {before[k]} -> {after[k]}"
                )
        pace(ctx.rng.uniform(0.5, 1.0))
    c.close()
    bound = 5.0
    ctx.wait_recovery_window(bound)
    ctx.stop_feeding()
    expected = set(ctx.fed())
    ctx.quiesce(expected, timeout=40)
    ctx.recovery(base, bound)
    ctx.check(expected)
    if not ctx.valkey.alive():
        ctx.result.violations.append("server died")
    if not hit:
        raise Vacuous("no reload happened with tasks in flight")


def pg_terminate(ctx: Ctx):
    """pg_terminate_backend of every client connection, repeatedly, under load."""
    if ctx.backend != "postgres":
        raise Skip("Postgres only")
    lease = 10.0
    ctx.start_backend()
    ctx.start_fleet(2, lease=lease, concurrency=8)
    ctx.feeder(rate=150, ms=20)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    total = 0
    for _ in range(3 if ctx.quick else 8):
        n = ctx.pg.terminate_clients()
        total += n
        ctx.fault(f"pg_terminate_backend x{n}")
        pace(ctx.rng.uniform(1.0, 2.0))
    ctx.hb.reset()
    _check_after_server_fault(ctx, base, lease, bound=10.0)
    ctx.result.notes["connections_terminated"] = total
    if total == 0:
        raise Vacuous("no client connection was terminated")


def pg_restart(ctx: Ctx):
    """The database restarted (immediate mode: crash recovery) under load."""
    if ctx.backend != "postgres":
        raise Skip("Postgres only")
    lease = 15.0
    ctx.start_backend()
    ctx.pg.durable()
    # the harness's own pool connected (migrate) before: those sessions still commit with
    # synchronous_commit=off, and the feeder's last acknowledged enqueues would die with them
    ctx.hb.reset()
    ctx.result.notes["synchronous_commit"] = "on"
    ctx.start_fleet(2, lease=lease, concurrency=8)
    ctx.feeder(rate=150, ms=20)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    for _ in range(1 if ctx.quick else 3):
        ctx.fault("postgres restart -m immediate")
        d = ctx.pg.restart("immediate")
        ctx.result.notes.setdefault("downtime_s", []).append(round(d, 2))
        ctx.hb.reset()
        pace(2.0)
    _check_after_server_fault(ctx, base, lease, bound=15.0, margin=3.0)


def pg_xmin(ctx: Ctx):
    """A REPEATABLE READ transaction holds xmin (quick 10 s, full 60 s) under load: throughput must
    stay >= 50 % of the baseline while it is held (stated bound) and recover after."""
    if ctx.backend != "postgres":
        raise Skip("Postgres only")
    hold = 10.0 if ctx.quick else 60.0
    ctx.start_backend()
    ctx.start_fleet(2, lease=10.0, concurrency=16)
    ctx.feeder(rate=300, ms=0, batch=20)
    ctx.wait_flowing()
    base = ctx.baseline(3.0)
    conn = ctx.pg.connect()
    conn.autocommit = False
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    conn.execute("SELECT txid_current(), count(*) FROM pg_class").fetchone()
    t0 = time.time()
    ctx.fault(f"transaction holding xmin for {hold:.0f}s")
    pace(hold)
    conn.rollback()
    conn.close()
    t1 = time.time()
    during = ctx.rate(t0 + 1, t1)
    ctx.result.notes.update(
        held_s=round(t1 - t0, 1),
        rate_during_hold=round(during, 1),
        ratio_during_hold=round(during / max(base, 1e-6), 2),
    )
    if during < 0.5 * base:
        ctx.result.violations.append(
            f"throughput {during:.0f}/s while xmin was held, below 50% of baseline {base:.0f}/s"
        )
    bound = 10.0
    ctx.fault_times = [t1]
    ctx.wait_recovery_window(bound)
    ctx.stop_feeding()
    expected = set(ctx.fed())
    ctx.quiesce(expected, timeout=60)
    ctx.recovery(base, bound)
    ctx.check(expected)


FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def scheduler(ctx: Ctx):
    """Three workers with --scheduler and a 500 ms schedule; scheduler workers are killed (on
    Postgres the tick is client-driven). Clocks are not trusted: when libfaketime is installed, two
    of the three run with their wall clock skewed by +1 h and -30 min. Every tick fires once: no
    double fire, no missing tick, no stall."""
    import os

    every = 0.5
    ctx.start_backend()
    fleet = ctx.start_fleet(
        0,
        lease=5.0,
        concurrency=4,
        args=["--scheduler"],
        env={"GAUNTLET_SCHEDULE_EVERY": str(every)},
    )
    skews = ["+3600", "-1800"] if os.path.exists(FAKETIME) else []
    ctx.result.notes["clock_skews"] = skews or "libfaketime not installed: clocks not skewed"

    def skewed_env(i):
        if i >= len(skews):
            return {}
        return {
            "LD_PRELOAD": FAKETIME,
            "FAKETIME": skews[i],
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "FAKETIME_NO_CACHE": "1",
        }

    for i in range(3):
        fleet.spawn(extra_env=skewed_env(i))

    def ticks():
        out = []
        for g, exs in ctx.ledger.read().items():
            if g.startswith("tick-"):
                out.append((exs[0].extra.get("mono", exs[0].start), g, len(exs)))
        return sorted(out)

    wait_until(lambda: len(ticks()) >= 3, 60, what="the schedule to fire (workers --scheduler)")
    t_first = time.monotonic()
    pace(3.0 if ctx.quick else 8.0)
    for _ in range(1 if ctx.quick else 3):
        w = ctx.rng.choice(fleet.live())
        fleet.sigkill(w)
        ctx.fault(f"SIGKILL scheduler worker {w.tag}")
        fleet.spawn(extra_env=skewed_env(ctx.rng.randrange(3)))
        pace(3.0 if ctx.quick else 8.0)
    t_last = time.monotonic()
    stopped = fleet.stop_all(timeout=15)
    ctx.result.notes["worker_exit"] = stopped
    # ticks fired after the last stop may stay queued: only judge [t_first, t_last)
    tk = [t for t in ticks() if t_first <= t[0] < t_last]
    led = ctx.ledger.read()
    dup_exec = [
        g for (_, g, n) in ticks() if n > 1 and not any(e.pid in fleet.faulted for e in led[g][:-1])
    ]
    expected = (t_last - t_first) / every
    gaps = [b[0] - a[0] for a, b in pairwise(tk)]
    close = [round(gap, 3) for gap in gaps if gap < every * 0.3]
    ctx.result.fed = len(tk)
    ctx.result.executed = len(tk)
    ctx.result.notes.update(
        ticks=len(tk),
        expected_ticks=round(expected, 1),
        min_gap_s=round(min(gaps), 3) if gaps else None,
        max_gap_s=round(max(gaps), 3) if gaps else None,
    )
    if dup_exec:
        ctx.result.violations.append(f"tick(s) executed twice: {dup_exec[:3]}")
    if len(tk) > expected + 3:
        ctx.result.violations.append(
            f"{len(tk)} ticks in {t_last - t_first:.1f}s, expected ~{expected:.0f}: double fire "
            f"({len(close)} gaps < {every * 0.3}s: {close[:5]})"
        )
    if len(tk) < expected * 0.8 - 2:
        ctx.result.violations.append(
            f"only {len(tk)} ticks in {t_last - t_first:.1f}s, expected ~{expected:.0f}: "
            "ticks missed"
        )
    big_gap = [g for g in gaps if g > every * 2 + 4.0]
    if big_gap:
        ctx.result.violations.append(
            f"schedule stalled for {max(big_gap):.1f}s after a scheduler worker died"
        )
    ctx.result.duplicated = len(dup_exec)


def hostile(ctx: Ctx):
    """Random/truncated VT.* argument vectors and RESP garbage for a bounded time."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    ctx.start_backend()
    dur = 15.0 if ctx.quick else 120.0
    stats = run_hostile(ctx.valkey, ctx.seed, dur, ctx.dir)
    ctx.result.violations += stats.pop("violations")
    ctx.result.notes.update(stats)
    ctx.result.fed = stats["sends"]
    ctx.fault(f"{stats['sends']} hostile sends")
    if stats["sends"] < 100:
        raise Vacuous("the hostile client sent almost nothing")


# --------------------------------------------------------------------------------------------------
# Operator actions that pause writes (issue 11): the module must change nothing while Valkey pauses
# writes, or the server aborts on its propagation assertion.

TIMER_KEY = f"{PREFIX}{{{QUEUE}}}:timers"  # a side queue in the queue's slot, consumed by nobody


class TimerWork:
    """Keeps the module's timer busy on TIMER_KEY — a 20 ms schedule and delayed tasks falling due
    all along — so timer work is due whenever writes get paused. ``check`` (on the final primary):
    nothing lost (every task still there), no tick fired twice, ticks resumed after the faults."""

    EVERY_MS = 20
    DELAYED = 300

    def __init__(self, ctx: Ctx, client):
        self.ctx = ctx
        p = client.pipeline(transaction=False)
        for i in range(self.DELAYED):
            p.execute_command(
                "VT.ENQUEUE", TIMER_KEY, "DELAY", 100 * i, "ID", f"d{i}", "PAYLOAD", "d"
            )
        p.execute()
        self.t0 = time.monotonic()
        client.execute_command(
            "VT.SCHEDULE", "SET", TIMER_KEY, "tick", "EVERY", self.EVERY_MS, "PAYLOAD", "t"
        )

    def check(self, client):
        fired_before = int(self._info(client)["enqueued_total"])
        wait_until(
            lambda: int(self._info(client)["enqueued_total"]) > fired_before + 5,
            20,
            what="schedule ticks after the faults",
        )
        client.execute_command("VT.SCHEDULE", "DEL", TIMER_KEY, "tick")
        span_ms = (time.monotonic() - self.t0) * 1000
        i = self._info(client)
        ticks = int(i["enqueued_total"]) - self.DELAYED
        held = int(i["ready"]) + int(i["delayed"])
        self.ctx.result.notes["timer_ticks"] = ticks
        if held != int(i["enqueued_total"]):
            self.ctx.result.violations.append(
                f"timer side queue lost tasks: {held} held of {i['enqueued_total']} enqueued"
            )
        if ticks > span_ms / self.EVERY_MS + 2:
            self.ctx.result.violations.append(
                f"schedule fired {ticks} ticks in {span_ms:.0f} ms: ticks doubled"
            )

    @staticmethod
    def _info(client):
        v = client.execute_command("VT.INFO", TIMER_KEY)
        d = v if isinstance(v, dict) else dict(zip(v[::2], v[1::2], strict=True))
        return {(k.decode() if isinstance(k, bytes) else k): x for k, x in d.items()}


def _server_alive(ctx: Ctx, srv, what: str):
    if not srv.alive():
        ctx.result.violations.append(f"{what} died (exit {srv.proc.returncode}): {srv.log_tail(8)}")
        return False
    return True


def _start_replica(ctx: Ctx, prim, aof: bool = False):
    from .servers import ValkeyServer

    rep = ValkeyServer(
        ctx.dir / "replica",
        aof=aof,
        extra=["--replicaof", "127.0.0.1", str(prim.port)],
        name="replica",
    ).start()
    ctx.replica = rep
    wait_until(
        lambda: rep.client().info("replication").get("master_link_status") == "up",
        20,
        what="replica link up",
    )
    return rep


def client_pause(ctx: Ctx):
    """CLIENT PAUSE WRITE for 2 s, repeatedly, on a primary with AOF and a replica, under load and
    with timer work due: the server survives, the timer catches up, nothing is lost or doubled."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    lease = 10.0
    ctx.start_backend(aof=True)
    prim = ctx.valkey
    rep = _start_replica(ctx, prim)
    ctx.start_fleet(2, lease=lease, concurrency=8)
    ctx.feeder(rate=150, ms=20)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    pc = prim.client(timeout=30)
    tw = TimerWork(ctx, pc)
    for _ in range(2 if ctx.quick else 3):
        pace(0.5 + ctx.rng.random())
        pc.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
        ctx.fault("CLIENT PAUSE 2000 WRITE")
        pace(2.5)
        if not _server_alive(ctx, prim, "primary"):
            return
    _check_after_server_fault(ctx, base, lease, bound=10.0)
    tw.check(pc)
    _server_alive(ctx, rep, "replica")


def shutdown_replica(ctx: Ctx):
    """An orderly SHUTDOWN, then a SIGTERM, of a primary (AOF) that has a replica, under load with
    timer work due: each time the primary pauses writes until the replica caught up, exits 0, and
    restarted from its own AOF it has every acknowledged task (workers reconnect)."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    import valkey

    lease = 10.0
    ctx.start_backend(aof=True)
    prim = ctx.valkey
    rep = _start_replica(ctx, prim)
    ctx.start_fleet(2, lease=lease, concurrency=8)
    ctx.feeder(rate=150, ms=20)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    tw = TimerWork(ctx, prim.client())
    for how in ("SHUTDOWN", "SIGTERM"):
        pace(0.5 + ctx.rng.random())
        ctx.fault(f"{how} of the primary (replica attached)")
        if how == "SHUTDOWN":
            try:
                prim.client(timeout=30).execute_command("SHUTDOWN")
            except valkey.exceptions.ConnectionError:
                pass  # the server closes the connection as it exits
        else:
            prim.proc.send_signal(signal.SIGTERM)
        rc = prim.proc.wait(30)
        if rc != 0:
            ctx.result.violations.append(f"{how}: primary exited {rc}: {prim.log_tail(8)}")
            return
        prim.start()
        ctx.wait_recovery_window(10.0, base)
    if "Waiting for replicas before shutting down" not in (prim.dir / f"{prim.name}.log").read_text(
        errors="replace"
    ):
        raise Vacuous("the primary never waited for its replica (writes were not paused)")
    _check_after_server_fault(ctx, base, lease, bound=10.0)
    tw.check(prim.client())
    _server_alive(ctx, rep, "replica")


def failover_alive(ctx: Ctx):
    """FAILOVER (the primary pauses writes until its replica caught up, then they swap roles) with
    the old primary kept alive as the new replica; workers follow through a proxy."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    from .proxy import Proxy

    lease = 10.0
    ctx.start_backend(aof=True)
    prim = ctx.valkey
    rep = _start_replica(ctx, prim, aof=True)
    px = Proxy(prim.port)
    ctx.extra_closers.append(px.close)
    ctx.hb.retarget(px.port)
    fleet = ctx.start_fleet(0, lease=lease, concurrency=8)
    fleet.env["GAUNTLET_VALKEY_URL"] = f"valkey://127.0.0.1:{px.port}/0"
    fleet.spawn()
    fleet.spawn()
    ctx.feeder(rate=150, ms=20)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    tw = TimerWork(ctx, prim.client())
    pace(0.5 + ctx.rng.random())
    prim.client(timeout=30).execute_command("FAILOVER")
    ctx.fault("FAILOVER (old primary kept alive)")
    wait_until(
        lambda: (
            rep.client().info("replication").get("role") == "master"
            and prim.client().info("replication").get("role") == "slave"
        ),
        30,
        what="the roles to swap",
    )
    px.switch(rep.port)
    _check_after_server_fault(ctx, base, lease, bound=10.0)
    tw.check(rep.client())
    if _server_alive(ctx, prim, "old primary"):
        wait_until(
            lambda: prim.client().info("replication").get("master_link_status") == "up",
            20,
            what="the old primary to replicate the new one",
        )
    _server_alive(ctx, rep, "new primary")


# OPTIONS["DURABLE"] = {"replicas": 1, "timeout": 1} as the broker takes it: (replicas, aof, ms)
DURABLE = (1, False, 1000)
#: an acknowledged enqueue lost at an unannounced primary crash must have been acknowledged
#: within this many seconds before the crash (asynchronous replication's window); older = a bug
LOSS_WINDOW_S = 1.0
#: one-way latency of the replication link in the *_lagged / *_durable variants (a replica in
#: another zone); on loopback the replica is microseconds behind and a crash rarely loses anything
REPL_DELAY_S = 0.010


def _repl_offset(client) -> int:
    return int(client.info("replication").get("master_repl_offset", 0))


def _link_to(ctx: Ctx, primary, delay: float):
    """(port, link) a replica of ``primary`` connects to: the primary's own (link None), or a
    DelayProxy's."""
    if not delay:
        return primary.port, None
    from .proxy import DelayProxy

    px = DelayProxy(primary.port, delay)
    ctx.extra_closers.append(px.close)
    return px.port, px


def _restart_as_replica_of(ctx: Ctx, srv, primary, delay: float = 0.0):
    """What an operator does with a crashed former primary: start it again as a replica of the
    new primary, and wait until it is linked and in sync (state online on the primary)."""
    argv, skip = [], 0
    for x in srv.extra:  # drop a previous --replicaof <host> <port>
        if skip:
            skip -= 1
        elif x == "--replicaof":
            skip = 2
        else:
            argv.append(x)
    port, link = _link_to(ctx, primary, delay)
    srv.extra = argv + ["--replicaof", "127.0.0.1", str(port)]
    srv.start()
    pc, sc = primary.client(), srv.client()

    def rejoined():
        s0 = pc.info("replication").get("slave0")
        return (
            sc.info("replication").get("master_link_status") == "up"
            and isinstance(s0, dict)
            and s0.get("state") == "online"
        )

    try:
        wait_until(
            rejoined,
            30,
            what=f"{srv.name} to rejoin as a replica of :{primary.port} (state online)",
        )
    finally:
        pc.close()
        sc.close()
    return link


def primary_kill(ctx: Ctx, durable: bool, delay: float = 0.0):
    """The primary SIGKILLed under load (feeder + workers), its replica promoted with REPLICAOF
    NO ONE and clients moved to it (through a proxy), the killed server restarted as a replica of
    the new primary; repeated (full: 3 crashes, the rejoined server is the next one promoted).
    ``delay``: one-way latency of the replication link (a DelayProxy); the crash is then a host
    crash: the link is severed with what was in flight, then the process SIGKILLed (a process
    crash alone leaves the kernel to deliver what the primary had written).

    ``durable``: the feeder enqueues through ValkeyBroker with OPTIONS["DURABLE"] (WAIT 1 replica
    before enqueue returns): no acknowledged enqueue may be lost, and the feed must have overlapped
    a crash (an enqueue lost its connection, or the replica was behind), else it proved nothing.
    Without it, the acknowledged enqueues lost at each crash are counted with how far behind the
    replica was (the loss window of asynchronous replication); a loss acknowledged more than
    LOSS_WINDOW_S before a crash is a violation."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    from .hbroker import BrokerHB
    from .proxy import Proxy
    from .servers import ValkeyServer

    lease = 10.0
    ctx.start_backend()
    prim = ctx.valkey
    port, link = _link_to(ctx, prim, delay)
    rep = ValkeyServer(
        ctx.dir / "replica", extra=["--replicaof", "127.0.0.1", str(port)], name="replica"
    ).start()
    ctx.replica = rep
    ctx.extra_closers += [prim.stop, rep.stop]  # they swap roles: stop both whatever happens
    wait_until(
        lambda: rep.client().info("replication").get("master_link_status") == "up",
        20,
        what="replica link up",
    )
    px = Proxy(prim.port)
    ctx.extra_closers.append(px.close)
    ctx.hb.close()
    ctx.hb = BrokerHB(px.port, DURABLE if durable else None)
    ctx.result.notes["durable"] = "replicas=1, timeout=1s" if durable else "off"
    ctx.result.notes["replication_link_delay_ms"] = delay * 1000
    fleet = ctx.start_fleet(0, lease=lease, concurrency=16)
    fleet.env["GAUNTLET_VALKEY_URL"] = f"valkey://127.0.0.1:{px.port}/0"
    fleet.spawn()
    fleet.spawn()
    ctx.feeder(rate=1000, ms=5, batch=50)
    # tasks that wait 2 s in the delayed set, enqueued every 4 ms: at a crash, an acknowledged one
    # the replica never got cannot have run yet (the fast feed is mostly fetched within a
    # millisecond of its enqueue: it runs on the old primary). A durable enqueue waits a round
    # trip to the replica (2 x the link delay), so that feed goes in batches of 10 every 40 ms.
    ctx.feeder(
        rate=250 if durable else 500, ms=0, batch=10 if durable else 2, delay_ms=2000, tag="D"
    )
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    crashes = []
    # durable: enqueues wait for a replica, so the feed is slow until the crashed server rejoined
    bound = 20.0 if durable else 10.0
    for _ in range(1 if ctx.quick else 3):
        pace(1.0 + ctx.rng.random())
        inflight = wait_until(lambda: ctx.hb.info(QUEUE), 10, what="VT.INFO").get("inflight")
        pc, rc = prim.client(), rep.client()
        offset = _repl_offset(pc)
        t_kill = time.time()
        if link:
            link.sever()
        prim.kill(signal.SIGKILL)
        pc.close()
        # how much of the stream the primary had written just before the crash the replica missed
        behind = offset - _repl_offset(rc)
        ctx.fault(
            f"{'host crash (link severed) + ' if link else ''}"
            f"SIGKILL primary {prim.name} :{prim.port} "
            f"(replica {behind} B behind, inflight {inflight})"
        )
        rc.execute_command("REPLICAOF", "NO", "ONE")
        px.switch(rep.port)
        t_promoted = time.time()
        rc.close()
        link = _restart_as_replica_of(ctx, prim, rep, delay)
        crashes.append(
            {
                "t": t_kill,
                "lag_bytes": behind,
                "promoted_after_s": round(t_promoted - t_kill, 3),
                "rejoined_after_s": round(time.time() - t_kill, 2),
            }
        )
        prim, rep = rep, prim
        ctx.wait_recovery_window(bound, base)
    ctx.replica = rep  # both servers are stopped at close (ctx.valkey is the other one)
    ctx.valkey = prim
    _check_after_server_fault(ctx, base, lease, bound=bound, lossy=True)
    _judge_crash_losses(ctx, crashes, durable)
    ctx.result.notes["feeder_errors"] = {
        k: v for f in ctx.feeders for k, v in f.error_kinds.items()
    }
    for s in (prim, rep):
        _server_alive(ctx, s, s.name)
    if (
        durable
        and not ctx.result.notes["feeder_errors"].get("BrokerError")
        and not any(c["lag_bytes"] > 0 for c in crashes)
    ):
        raise Vacuous(
            "the feed did not overlap a crash "
            "(no enqueue lost its connection, the replica was never behind)"
        )


def _judge_crash_losses(ctx: Ctx, crashes: list[dict], durable: bool):
    """After ctx.check: the acknowledged enqueues lost, by crash (``crashes``: dicts with the
    crash time ``t`` and ``lag_bytes``). Durable: a loss stays a violation. Otherwise a loss
    acknowledged within LOSS_WINDOW_S before a crash is the measured window of asynchronous
    replication (notes), any other loss a violation. ``lag_bytes``: how much of the replication
    stream the primary had written just before the crash the replica never received."""
    fed = ctx.fed()
    lost = sorted(set(fed) - ctx.ledger.finished_gids())
    for c in crashes:
        mine = [g for g in lost if c["t"] - LOSS_WINDOW_S <= fed[g] <= c["t"] + 0.5]
        c["lost"] = len(mine)
        c["lost_acked_before_crash_ms"] = [round((c["t"] - fed[g]) * 1000, 1) for g in mine[:5]]
        del c["t"]
    ctx.result.notes["crashes"] = crashes
    ctx.result.notes["lost_per_crash"] = [c["lost"] for c in crashes]
    ctx.result.notes["lag_bytes_before_crash"] = [c["lag_bytes"] for c in crashes]
    if not durable:
        in_window = sum(c["lost"] for c in crashes)
        ctx.result.violations = [v for v in ctx.result.violations if "task(s) lost" not in v]
        if in_window != len(lost):
            ctx.result.violations.append(
                f"{len(lost) - in_window} acknowledged enqueue(s) lost "
                f"outside the {LOSS_WINDOW_S}s before a crash "
                f"(asynchronous replication does not explain them), e.g. {lost[:5]}"
            )


def failover(ctx: Ctx):
    """Failover to a replica: writes paused on the primary, the replica caught up, REPLICAOF NO
    ONE, workers (through a proxy) moved to it, the old primary killed. Nothing acknowledged is
    lost; the new primary's timers take over (expired leases, schedules)."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    from .proxy import Proxy
    from .servers import ValkeyServer

    lease = 10.0
    ctx.start_backend()
    prim = ctx.valkey
    rep = ValkeyServer(
        ctx.dir / "replica", extra=["--replicaof", "127.0.0.1", str(prim.port)], name="replica"
    ).start()
    ctx.replica = rep
    wait_until(
        lambda: rep.client().info("replication").get("master_link_status") == "up",
        20,
        what="replica link up",
    )
    px = Proxy(prim.port)
    ctx.extra_closers.append(px.close)
    ctx.hb.retarget(px.port)
    fleet = ctx.start_fleet(0, lease=lease, concurrency=8)
    fleet.env["GAUNTLET_VALKEY_URL"] = f"valkey://127.0.0.1:{px.port}/0"
    fleet.spawn()
    fleet.spawn()
    ctx.feeder(rate=150, ms=20)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    pc, rc = prim.client(), rep.client()
    info = ctx.hb.info(QUEUE)
    pc.execute_command("CLIENT", "PAUSE", 10000, "WRITE")
    ctx.fault(f"failover: primary paused (inflight {info.get('inflight')})")
    target = int(pc.info("replication")["master_repl_offset"])
    wait_until(
        lambda: int(rc.info("replication").get("master_repl_offset", 0)) >= target,
        10,
        what="the replica to catch up",
    )
    rc.execute_command("REPLICAOF", "NO", "ONE")
    px.switch(rep.port)
    prim.kill(signal.SIGKILL)
    ctx.result.notes["replica_offset_at_failover"] = target
    pc.close()
    _check_after_server_fault(ctx, base, lease, bound=10.0)
    if not info.get("inflight"):
        ctx.result.notes["warning"] = "no task in flight at the failover"
    rc.close()


def _cluster_with_replica(ctx: Ctx, lease: float, concurrency: int = 8):
    """A Valkey Cluster of 3 primaries with the module (node0-2) and node3 replicating the shard
    of the gauntlet queue's slot; ctx.hb enters through another node and two workers through a
    third, on cluster clients that follow MOVED. Returns (nodes, clients, owner index, slot)."""
    from valkey.crc import key_slot

    from .hbroker import ValkeyHB
    from .servers import ValkeyServer
    from .util import free_port

    nodes = []
    for i in range(4):
        bus = free_port()
        extra = [
            "--cluster-enabled",
            "yes",
            "--cluster-port",
            str(bus),
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]
        n = ValkeyServer(ctx.dir / f"node{i}", extra=extra, name=f"node{i}").start()
        n.bus = bus
        nodes.append(n)
        ctx.extra_closers.append(n.stop)
    clients = [n.client() for n in nodes]
    for i, c in enumerate(clients[:3]):
        c.execute_command(
            "CLUSTER", "ADDSLOTSRANGE", i * 5461, 16383 if i == 2 else i * 5461 + 5460
        )
    for n in nodes[1:]:
        clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", n.port, n.bus)
    slot = key_slot(f"{PREFIX}{{{QUEUE}}}".encode())
    owner = min(slot // 5461, 2)
    wait_until(
        lambda: all(
            b"cluster_known_nodes:4" in c.execute_command("CLUSTER", "INFO") for c in clients
        ),
        30,
        what="the cluster to know its 4 nodes",
    )
    owner_id = clients[owner].execute_command("CLUSTER", "MYID").decode()
    # gossip may not have told node3 about the owner yet ("Unknown node"): retry until it has
    wait_until(
        lambda: clients[3].execute_command("CLUSTER", "REPLICATE", owner_id),
        30,
        what="node3 to replicate the queue's shard",
    )
    wait_until(
        lambda: (
            all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in clients)
            and clients[3].info("replication").get("master_link_status") == "up"
        ),
        30,
        what="cluster ok, replica linked",
    )
    ctx.hb = ValkeyHB(nodes[(owner + 1) % 3].port, cluster=True)  # enters through another node
    fleet = ctx.start_fleet(
        0,
        lease=lease,
        concurrency=concurrency,
        env={"GAUNTLET_VALKEY_URL": nodes[(owner + 2) % 3].url, "GAUNTLET_VALKEY_CLUSTER": "1"},
    )
    fleet.spawn()
    fleet.spawn()
    return nodes, clients, owner, slot


def cluster_failover(ctx: Ctx, kill_old: bool = True):
    """A Valkey Cluster (3 primaries with the module, a replica for the queue's shard) under
    load, with timer work due; `CLUSTER FAILOVER` on the replica (coordinated: the primary pauses
    writes until the replica caught up), then the old primary is SIGKILLed (``kill_old``) or kept
    alive as the new replica. Workers and the feeder use cluster clients that follow the MOVED
    redirections; the new primary's timers take over leases."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    lease = 10.0
    nodes, clients, owner, slot = _cluster_with_replica(ctx, lease)
    prim, rep = nodes[owner], nodes[3]
    ctx.feeder(rate=150, ms=20)
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    info = ctx.hb.info(QUEUE)
    tw = TimerWork(ctx, clients[owner])
    pace(0.5 + ctx.rng.random())
    ctx.fault(f"cluster failover of slot {slot}'s shard (inflight {info.get('inflight')})")
    clients[3].execute_command("CLUSTER", "FAILOVER")
    wait_until(
        lambda: clients[3].info("replication").get("role") == "master",
        20,
        what="the replica to become primary",
    )
    if kill_old:
        prim.kill(signal.SIGKILL)
    else:
        wait_until(
            lambda: (
                not _server_alive(ctx, prim, "old primary")
                or clients[owner].info("replication").get("master_link_status") == "up"
            ),
            30,
            what="the old primary to replicate the new one",
        )
    ctx.result.notes["failover"] = f"node{owner} -> node3, slot {slot}" + (
        "" if kill_old else ", old primary alive"
    )
    _check_after_server_fault(ctx, base, lease, bound=10.0)
    tw.check(clients[3])
    for n in ([] if kill_old else [prim]) + [rep]:
        _server_alive(ctx, n, n.name)
    if not info.get("inflight"):
        ctx.result.notes["warning"] = "no task in flight at the failover"
    for c in clients:
        c.close()


def cluster_takeover(ctx: Ctx):
    """Valkey Cluster: the primary of the queue's shard SIGKILLed under load (feeder + workers
    on cluster clients), `CLUSTER FAILOVER TAKEOVER` on its replica at once (no agreement, no
    catch-up: what an operator does when the primary is gone), then the killed node restarted
    from its nodes.conf: it must rejoin as a replica of the new primary. OPTIONS["DURABLE"] is
    refused with CLUSTER (django_vtasks.E007), so acknowledged enqueues may be lost: they are
    counted by crash, as in ``primary_kill``; a loss outside the window is a violation."""
    if ctx.backend != "valkey":
        raise Skip("Valkey only")
    lease = 10.0
    nodes, clients, owner, slot = _cluster_with_replica(ctx, lease, concurrency=16)
    prim = nodes[owner]
    pc, rc = clients[owner], clients[3]
    ctx.feeder(rate=1000, ms=5, batch=20)
    ctx.feeder(rate=500, ms=0, batch=2, delay_ms=2000, tag="D")  # see primary_kill
    ctx.wait_flowing()
    base = ctx.baseline(2.0)
    pace(1.0 + ctx.rng.random())
    inflight = ctx.hb.info(QUEUE).get("inflight")
    offset = _repl_offset(pc)
    t_kill = time.time()
    prim.kill(signal.SIGKILL)
    lag = offset - _repl_offset(rc)
    ctx.fault(
        f"SIGKILL node{owner} (primary of slot {slot}; replica {lag} B behind, inflight {inflight})"
    )
    rc.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    wait_until(
        lambda: rc.info("replication").get("role") == "master", 20, what="the replica to take over"
    )
    t_promoted = time.time()
    prim.start()  # same dir: its nodes.conf; the cluster's newer epoch makes it a replica
    wait_until(
        lambda: (
            pc.info("replication").get("role") == "slave"
            and pc.info("replication").get("master_link_status") == "up"
        ),
        60,
        what=f"node{owner} to rejoin as a replica of node3",
    )
    crashes = [
        {
            "t": t_kill,
            "lag_bytes": lag,
            "promoted_after_s": round(t_promoted - t_kill, 3),
            "rejoined_after_s": round(time.time() - t_kill, 2),
        }
    ]
    ctx.result.notes["takeover"] = (
        f"node{owner} -> node3, slot {slot}, node{owner} rejoined as replica"
    )
    _check_after_server_fault(ctx, base, lease, bound=10.0, lossy=True)
    _judge_crash_losses(ctx, crashes, durable=False)
    for n in nodes:
        _server_alive(ctx, n, n.name)
    for c in clients:
        c.close()


# name -> (function, backends)
SCENARIOS = {
    "sigkill": (sigkill, ("valkey", "postgres")),
    "sigterm": (sigterm, ("valkey", "postgres")),
    "rename": (rename, ("valkey", "postgres")),
    "sigstop": (sigstop, ("valkey", "postgres")),
    "poison": (poison, ("valkey", "postgres")),
    "valkey_restart": (valkey_restart, ("valkey",)),
    "debug_reload": (debug_reload, ("valkey",)),
    "failover": (failover, ("valkey",)),
    "cluster_failover": (cluster_failover, ("valkey",)),
    "cluster_failover_alive": (lambda ctx: cluster_failover(ctx, kill_old=False), ("valkey",)),
    "client_pause": (client_pause, ("valkey",)),
    "shutdown_replica": (shutdown_replica, ("valkey",)),
    "failover_alive": (failover_alive, ("valkey",)),
    "primary_kill": (lambda ctx: primary_kill(ctx, durable=False), ("valkey",)),
    "primary_kill_lagged": (
        lambda ctx: primary_kill(ctx, durable=False, delay=REPL_DELAY_S),
        ("valkey",),
    ),
    "primary_kill_durable": (
        lambda ctx: primary_kill(ctx, durable=True, delay=REPL_DELAY_S),
        ("valkey",),
    ),
    "cluster_takeover": (cluster_takeover, ("valkey",)),
    "pg_terminate": (pg_terminate, ("postgres",)),
    "pg_restart": (pg_restart, ("postgres",)),
    "pg_xmin": (pg_xmin, ("postgres",)),
    "pg_burst": (pg_burst, ("postgres",)),
    "scheduler": (scheduler, ("valkey", "postgres")),
    "hostile": (hostile, ("valkey",)),
}
