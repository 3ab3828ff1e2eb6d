"""Scenario context: servers, workers, feeder, ledger, and the invariant checks at quiescence."""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

from .feeder import Feeder
from .hbroker import PgHB, ValkeyHB, encode, envelope
from .ledger import Ledger
from .servers import PgServer, ValkeyServer
from .util import Timeout, wait_until
from .workers import Fleet

QUEUE = "gauntlet"


@dataclass
class Result:
    scenario: str
    backend: str
    seed: int
    verdict: str = "PASS"  # PASS | FAIL | VACUOUS | SKIP | ERROR
    fed: int = 0
    executed: int = 0  # distinct tasks with a finished execution
    executions: int = 0  # executions started (incl. killed mid-task)
    duplicated: int = 0  # tasks with more than one finished execution
    dup_unexplained: int = 0
    lost: int = 0
    dlq: int = 0
    dlq_expected: int = 0
    faults: int = 0
    recovery_s: float | None = None
    recovery_bound_s: float | None = None
    baseline_per_s: float | None = None
    duration_s: float = 0.0
    violations: list[str] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    repro: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class Vacuous(Exception):
    pass


class Skip(Exception):
    pass


class Ctx:
    """Everything one scenario run owns; ``close()`` stops it all (by PID)."""

    def __init__(
        self,
        name: str,
        backend: str,
        seed: int,
        quick: bool,
        workdir: Path | None = None,
        keep: bool = False,
    ):
        self.name = name
        self.backend = backend
        self.seed = seed
        self.quick = quick
        self.rng = random.Random(f"{seed}:{name}:{backend}")
        self.dir = Path(workdir or tempfile.mkdtemp(prefix=f"gauntlet-{name}-{backend}-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.keep = keep
        self.ledger = Ledger(self.dir / "ledger")
        os.chmod(self.ledger.dir, 0o777)
        self.valkey: ValkeyServer | None = None
        self.replica: ValkeyServer | None = None
        self.pg: PgServer | None = None
        self.hb = None
        self.fleet: Fleet | None = None
        self.feeders: list[Feeder] = []
        self.result = Result(name, backend, seed)
        self.fault_times: list[float] = []
        self.lease = 30.0
        self.run_id = f"{name[:6]}{seed % 100000}"
        self.extra_closers = []
        self.t0 = time.time()

    # ---- setup ----------------------------------------------------------------------------------
    def start_backend(self, aof: bool = False, valkey_extra: list[str] | None = None):
        if self.backend == "valkey":
            self.valkey = ValkeyServer(self.dir / "valkey", aof=aof, extra=valkey_extra).start()
            self.hb = ValkeyHB(self.valkey.port)
        else:
            self.pg = PgServer(self.dir / "pg").start()
            self.hb = PgHB(self.pg.dsn)
            self.hb.migrate()
        return self

    def worker_env(self, lease: float, concurrency: int = 8) -> dict[str, str]:
        self.lease = lease
        env = {
            "GAUNTLET_BACKEND": self.backend,
            "GAUNTLET_LEDGER": str(self.ledger.dir),
            "GAUNTLET_QUEUE": QUEUE,
            "GAUNTLET_LEASE": str(lease),
            "GAUNTLET_CONCURRENCY": str(concurrency),
        }
        if self.valkey:
            env["GAUNTLET_VALKEY_URL"] = self.valkey.url
        if self.pg:
            env["GAUNTLET_PG_DSN"] = self.pg.dsn
        return env

    def start_fleet(
        self,
        n: int,
        lease: float,
        concurrency: int = 8,
        args: list[str] | None = None,
        env: dict | None = None,
    ) -> Fleet:
        e = self.worker_env(lease, concurrency)
        e.update(env or {})
        self.fleet = Fleet(e, self.dir, args)
        for _ in range(n):
            self.fleet.spawn()
        return self.fleet

    def feeder(
        self,
        rate: float,
        ms: int = 0,
        batch: int = 10,
        limit: int | None = None,
        max_attempts: int | None = 10,
        func: str = "gauntlet_app.tasks.record",
        tag: str = "",
        unique: bool = False,
        delay_ms: int = 0,
    ) -> Feeder:
        f = Feeder(
            self.hb,
            QUEUE,
            self.run_id + tag,
            rate=rate,
            batch=batch,
            ms=ms,
            func=func,
            max_attempts=max_attempts,
            limit=limit,
            unique=unique,
            delay_ms=delay_ms,
        )
        self.feeders.append(f)
        f.start()
        return f

    def enqueue_raw(self, items: list[tuple[str, bytes]], max_attempts: int | None = None) -> list:
        return (
            wait_until(
                lambda: self.hb.enqueue(QUEUE, items, max_attempts=max_attempts) or True,
                20,
                what="a raw enqueue",
            )
            and None
        )

    def task_payload(self, func: str, args: list, gid: str) -> bytes:
        return encode(envelope(func, args, gid, QUEUE))

    # ---- measuring ------------------------------------------------------------------------------
    def fed(self) -> dict[str, float]:
        out = {}
        for f in self.feeders:
            out.update(f.fed)
        return out

    def wait_flowing(self, timeout: float = 60.0, n: int = 20):
        """Bounded wait until workers have finished ``n`` tasks (they boot in a second or two)."""
        wait_until(
            lambda: len(self.ledger.completions()) >= n,
            timeout,
            interval=0.1,
            what=f"{n} completed tasks (are the workers running? see {self.dir}/worker-*.log)",
        )

    def rate(self, t_from: float, t_to: float, ends: list[float] | None = None) -> float:
        ends = self.ledger.completions() if ends is None else ends
        k = sum(1 for t in ends if t_from <= t < t_to)
        return k / max(1e-6, t_to - t_from)

    def baseline(self, seconds: float) -> float:
        """Completion rate over the next ``seconds`` (steady state, before any fault): first a
        bounded wait until the workers caught up with the start-up backlog."""
        # tasks a delayed feeder keeps waiting by design
        held = sum(f.rate * f.delay_ms / 1000 for f in self.feeders) * 1.5

        def caught_up():
            i = self.hb.info(QUEUE)
            return i.get("ready", 0) + i.get("delayed", 0) <= 50 + held

        wait_until(
            caught_up,
            60,
            interval=0.1,
            what="workers to catch up with the feed before the baseline",
        )
        t0 = time.time()
        wait_until(
            lambda: time.time() >= t0 + seconds, seconds + 5, interval=0.05, what="baseline window"
        )
        b = self.rate(t0, t0 + seconds)
        feed = sum(f.rate for f in self.feeders if f.limit is None)
        if feed:
            # the steady state is the feed rate: a faster window is still draining start-up backlog
            b = min(b, feed)
        self.result.baseline_per_s = round(b, 1)
        return b

    def fault(self, what: str):
        self.fault_times.append(time.time())
        self.result.faults += 1
        self.result.notes.setdefault("fault_log", []).append(f"{time.time() - self.t0:.2f}s {what}")

    def recovery(
        self,
        baseline: float,
        bound: float,
        window: float = 1.0,
        fault_times: list[float] | None = None,
    ):
        """Per fault: seconds from the fault until a ``window`` of completions reaches 80 % of the
        baseline. Returns the worst; records a violation when one is above ``bound``."""
        ends = self.ledger.completions()
        worst = 0.0
        self.result.recovery_bound_s = bound
        for tf in fault_times if fault_times is not None else self.fault_times:
            t = tf
            rec = None
            while t + window <= tf + bound + window:
                if self.rate(t, t + window, ends) >= 0.8 * baseline:
                    rec = t + window - tf
                    break
                t += 0.1
            if rec is None:
                self.result.violations.append(
                    f"throughput did not recover to 80% of baseline {baseline:.0f}/s within "
                    f"{bound:.0f}s of the fault at +{tf - self.t0:.1f}s"
                )
                rec = float("inf")
            worst = max(worst, rec)
        self.result.recovery_s = None if worst == float("inf") else round(worst, 2)
        return worst

    def wait_recovery_window(
        self, bound: float, baseline: float | None = None, window: float = 1.0
    ):
        """Keep feeding until throughput after the last fault is back to 80 % of the baseline (or
        the bound passed: recovery() then reports it), plus a short tail."""
        if not self.fault_times:
            return
        tf = self.fault_times[-1]
        b = baseline if baseline is not None else (self.result.baseline_per_s or 0)

        def recovered():
            now = time.time()
            if now >= tf + bound + window:
                return True
            if now - window < tf:
                return False
            return self.rate(now - window, now) >= 0.8 * b

        wait_until(recovered, bound + window + 10, interval=0.1, what="recovery window")
        end = time.time() + 0.5
        wait_until(lambda: time.time() >= end, 5, interval=0.05, what="tail")

    # ---- quiescence + invariants ----------------------------------------------------------------
    def stop_feeding(self):
        for f in self.feeders:
            f.stop()
            if f.exc:
                self.result.violations.append(f"feeder crashed: {f.exc!r}")

    def quiesce(
        self,
        expected_done: set[str],
        timeout: float,
        expect_dead: set[str] = frozenset(),
        lossy: bool = False,
    ):
        """Bounded wait until every task in ``expected_done`` finished, every ``expect_dead`` task
        is in the DLQ, and the queue holds nothing ready/delayed/in flight. ``lossy`` (a crash may
        have lost acknowledged tasks): done once the queue holds nothing ready/delayed/in flight
        (a task's ledger entry ends before its ack), and check() counts the missing as lost."""
        state = {}

        def done():
            fin = self.ledger.finished_gids()
            missing = expected_done - fin
            info = self.hb.info(QUEUE)
            state.update(missing=len(missing), info=info)
            if missing and not lossy:
                return False
            if info.get("ready", 0) or info.get("delayed", 0) or info.get("inflight", 0):
                return False
            if expect_dead and info.get("dead", 0) < len(expect_dead):
                return False
            return True

        try:
            wait_until(done, timeout, interval=0.2, what="quiescence")
        except Timeout as e:
            self.result.violations.append(f"no quiescence within {timeout:.0f}s: {state}")
            self.result.notes["quiescence_error"] = str(e)[:300]

    def check(
        self,
        expected_done: set[str],
        expect_dead: dict[str, str] | None = None,
        explained_dup=None,
        allow_dup_pids: bool = True,
        leak_check: bool = True,
    ):
        """Conservation, duplicates (+ lease overlap), DLQ honesty, leaked state."""
        r = self.result
        expect_dead = dict(expect_dead or {})
        ledger = self.ledger.read()
        fed = self.fed()
        r.fed = len(fed) + r.notes.get("fed_extra", 0)
        judged = set(expected_done) | set(expect_dead)
        finished_all = {g for g, exs in ledger.items() if any(e.finished for e in exs)}
        r.executed = len(finished_all & judged)
        if finished_all - judged:
            # e.g. a batch whose enqueue was never confirmed (broker unreachable when feeding
            # stopped)
            r.notes["executed_unconfirmed"] = len(finished_all - judged)
        r.executions = sum(len(v) for v in ledger.values())
        faulted = self.fleet.faulted if self.fleet else {}
        # duplicates: more than one *finished* execution of one task
        unexplained = []
        overlap = []
        dups = 0
        stale = []
        for g, exs in ledger.items():
            fin = [e for e in exs if e.finished]
            if len(fin) > 1:
                dups += 1
            exs = sorted(exs, key=lambda e: e.start)  # claim order (n) can differ from start order
            for prev, nxt in pairwise(exs):
                ntf, nkind = faulted.get(nxt.pid, (None, None))
                if nkind == "stop" and nxt.start > ntf + 0.5 and prev.pid != nxt.pid:
                    # a SIGSTOPped worker, once resumed, started a delivery it got before the stop:
                    # its lease had expired meanwhile and the task was redelivered (and ran)
                    # elsewhere
                    stale.append(
                        f"{g}: started by the resumed worker (pid {nxt.pid}) "
                        f"{nxt.start - ntf:.1f}s after its stop, "
                        f"lease {self.lease}s; already run by pid {prev.pid}"
                    )
                    continue
                tf, kind = faulted.get(prev.pid, (None, None))
                running = prev.end is None or nxt.start < prev.end
                if kind == "kill" and tf >= prev.start - 0.5:
                    # its holder died: redelivery is the point (restart-with-same-id rescues at
                    # once)
                    continue
                if kind == "stop" and tf >= prev.start - 0.5:
                    # a stopped holder keeps its lease until it expires (>= 0.75 lease after its
                    # last extend)
                    if nxt.start < tf + 0.7 * self.lease:
                        overlap.append(
                            f"{g}: exec {nxt.n} started {nxt.start - tf:.2f}s after its holder "
                            f"(pid {prev.pid}) was stopped; lease {self.lease}s"
                        )
                    continue
                if explained_dup and explained_dup(prev, nxt):
                    continue
                if running:
                    overlap.append(
                        f"{g}: exec {nxt.n} (pid {nxt.pid}) overlapped exec {prev.n} of a live "
                        f"worker (pid {prev.pid}) that extends its lease"
                    )
                else:
                    unexplained.append(
                        f"{g}: executed again (pid {nxt.pid}) after a finished execution by "
                        f"unfaulted pid {prev.pid}"
                    )
        r.duplicated = dups
        r.dup_unexplained = len(unexplained)
        if overlap:
            r.violations.append(
                f"{len(overlap)} second execution(s) while a lease was valid, e.g. {overlap[:3]}"
            )
        if unexplained:
            r.violations.append(
                f"{len(unexplained)} unexplained duplicate(s), e.g. {unexplained[:3]}"
            )
        if stale:
            r.notes["stale_starts_after_resume"] = len(stale)
            r.violations.append(
                f"{len(stale)} duplicate(s) from a resumed worker starting deliveries whose lease "
                "had expired while it was stopped (see tests/gauntlet/FINDINGS.md F3), "
                f"e.g. {stale[:2]}"
            )
        # DLQ honesty
        try:
            dead = self.hb.peek(QUEUE, "dead")
        except Exception as e:
            dead = []
            r.violations.append(f"could not read the DLQ: {e!r}")
        r.dlq = len(dead)
        r.dlq_expected = len(expect_dead)
        dead_by_id = {d.get("id"): d for d in dead}
        spurious = [i for i in dead_by_id if i not in expect_dead]
        if spurious:
            r.violations.append(
                f"{len(spurious)} spurious DLQ entries (tasks that did not fail), e.g. "
                f"{[(i, dead_by_id[i].get('error', '')[:120]) for i in spurious[:3]]}"
            )
        for i, needle in expect_dead.items():
            d = dead_by_id.get(i)
            if d is None:
                r.violations.append(f"real failure {i} is not in the DLQ")
            elif needle and needle not in d.get("error", ""):
                r.violations.append(
                    f"DLQ entry {i} lacks its error ({needle!r}): {d.get('error', '')[:200]!r}"
                )
        # conservation
        fin = {g for g, exs in ledger.items() if any(e.finished for e in exs)}
        lost = sorted(g for g in expected_done if g not in fin and g not in dead_by_id)
        r.lost = len(lost)
        if lost:
            r.violations.append(
                f"{len(lost)} task(s) lost (fed, never finished, not dead), e.g. {lost[:5]}"
            )
        # leaked state
        if leak_check:
            try:
                info = self.hb.info(QUEUE)
                r.notes["final_info"] = info
                for k in ("ready", "delayed", "inflight", "unique_keys"):
                    if info.get(k, 0):
                        r.violations.append(f"leaked state after drain: {k}={info[k]}")
            except Exception as e:
                r.violations.append(f"could not read VT.INFO after drain: {e!r}")

    # ---- teardown -------------------------------------------------------------------------------
    def close(self):
        for f in self.feeders:
            f._stop.set()
        if self.fleet:
            try:
                self.result.notes["worker_exit"] = self.fleet.stop_all(timeout=10)
            except Exception:
                pass
        for c in self.extra_closers:
            try:
                c()
            except Exception:
                pass
        for s in (self.valkey, self.replica):
            if s:
                s.stop()
        if self.hb:
            try:
                self.hb.close()
            except Exception:
                pass
        if self.pg:
            self.pg.stop()
        if not self.keep and self.result.verdict == "PASS":
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            self.result.notes["workdir"] = str(self.dir)


def write_json(path: Path, results: list[Result]):
    path.write_text(json.dumps([r.to_json() for r in results], indent=2, default=str))
