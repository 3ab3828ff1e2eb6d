#!/usr/bin/env python3
"""Postgres at scale (issue 12, section 2): what a big backlog, a big results table and many
bursts of churn cost the Postgres backend, through the client the worker uses
(``django_vtasks._native.PgQueue``). A measurement, not a test. Prints a markdown report.

    scripts/bench-pg-scale [--ready 1000000,5000000] [--results 5000000] [--cycles 40]
                           [--arms shipped,defaults] [--json out.json]

1. **Backlog**: ``--ready`` ready tasks loaded with one ``INSERT ... SELECT generate_series``
   of the shape ``enqueue`` writes (a uuid4 id, a real encoded envelope as payload, the column
   defaults), then ``VACUUM ANALYZE`` (what autovacuum does after a load) and a CHECKPOINT. Then
   ``--rounds`` rounds from one client: ``fetch(--batch)`` timed, then ``ack`` of that batch with
   its results timed, p50/p99/max of each, and the shared-buffer pages the rounds touched (hit or
   read, from pg_stat_database: the work done, which the box's load does not change). The same on
   a queue of 2,000 rows is the baseline.
2. **Results**: ``--results`` expired results (``id`` uuid4, ~100 B of JSON, as ``ack`` stores
   them) loaded with SQL; ``ack`` with results timed next to them; then ``maintain()`` called
   until it purges nothing: calls, ms per call (p50/p99), total; table and index sizes before,
   after, and after the VACUUM autovacuum would run.
3. **Churn**, once per ``--arms`` entry (``shipped``: the tables' autovacuum settings as the
   migrations leave them; ``defaults``: ``ALTER TABLE ... RESET`` to the server's defaults):
   ``--cycles`` bursts of ``--cycle-size`` tasks enqueued (``enqueue`` of 1,000) and drained
   (fetch 200 + ack with results, TTL 5 s) next to a backlog of ``--churn-backlog`` ready rows in
   another queue, ``maintain()`` every 5 s as the worker calls it. Every ``--sample`` cycles:
   heap and index sizes of ``vtasks_task`` and ``vtasks_result``, dead rows, the vacuums so far
   (auto and manual), and a latency probe (fetch + ack of 100, 30 rounds). At the end
   ``pgstattuple`` / ``pgstatindex`` (free space, leaf density) of each table and index.

Uses $VTASKS_PG_DSN (scripts/bench-pg-scale starts a throwaway cluster when it is unset) and a
database of its own, ``bench_scale`` (dropped and created again).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid

import orjson

DB = "bench_scale"
BIG, SMALL, CHURN = "big", "small", "churn"
# result rows as the worker stores them (django_vtasks: the TaskResult's JSON)
RESULT_JSON = (
    b'{"status":"SUCCESSFUL","return_value":null,"errors":[],'
    b'"started_at":1764590000.0,"finished_at":1764590000.01}'
)
TABLES = ("vtasks_task", "vtasks_result")
# the `tuned` arm: vtasks_result vacuumed as early as vtasks_task is (a candidate migration)
TUNED_RESULT = (
    "autovacuum_vacuum_scale_factor = 0.01",
    "autovacuum_vacuum_threshold = 1000",
    "autovacuum_vacuum_cost_delay = 0",
)
AUTOVACUUM_KEYS = (
    "fillfactor",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_threshold",
    "autovacuum_vacuum_insert_scale_factor",
    "autovacuum_analyze_scale_factor",
    "autovacuum_vacuum_cost_delay",
)


def pct(v: list[float], p: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, round((len(s) - 1) * p))]


def payload() -> bytes:
    """A real encoded envelope of a no-op task (what enqueue writes in ``payload``)."""
    from django_vtasks import _native

    env = {
        "func": "benchproj.tasks.noop",
        "args": [],
        "kwargs": {},
        "queue": "default",
        "ts": time.time(),
        "id": str(uuid.uuid4()),
        "priority": 0,
        "run_after": None,
        "backend": "default",
        "takes_context": False,
    }
    return _native.encode_payload(orjson.dumps(env), 1024)


class Bench:
    def __init__(self, dsn: str, args):
        import psycopg

        from django_vtasks import _native

        self.args = args
        admin_dsn = dsn
        with psycopg.connect(admin_dsn, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{DB}"')
        self.dsn = dsn.rsplit("/", 1)[0] + "/" + DB
        self.sql = psycopg.connect(self.dsn, autocommit=True)
        self.q = _native.PgQueue(self.dsn, pool_size=4, notify=False)
        self.q.migrate()
        # the storage parameters the migrations set, restored by the `shipped` arm
        self.shipped = {
            t: self.one(
                "SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = %s::regclass", t
            )
            for t in TABLES
        }
        self.sql.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        self.payload = payload()
        self.report: dict = {
            "server": self.one("SHOW server_version"),
            "load_avg_start": os.getloadavg()[0],
        }

    def one(self, q: str, *params):
        return self.sql.execute(q, params or None).fetchone()[0]

    # ---- pieces ---------------------------------------------------------------------------------
    def load_ready(self, queue: str, n: int) -> float:
        t0 = time.perf_counter()
        self.sql.execute(
            "INSERT INTO vtasks_task (queue, id, state, payload) "
            "SELECT %s, gen_random_uuid()::text, 'r', %s FROM generate_series(1, %s)",
            (queue, self.payload, n),
        )
        self.sql.execute("VACUUM ANALYZE vtasks_task")
        load = time.perf_counter() - t0
        self.sql.execute("CHECKPOINT")  # the load's dirty pages written now, not during the rounds
        return load

    def blocks(self) -> int:
        """Shared-buffer pages the database's backends touched so far (hit or read): a measure of
        work that the box's load does not change. An idle backend reports its counts within 10 s
        (PGSTAT_IDLE_INTERVAL), hence the wait."""
        time.sleep(11)
        self.sql.execute("SELECT pg_stat_clear_snapshot()")
        return self.one(
            "SELECT blks_hit + blks_read FROM pg_stat_database WHERE datname = current_database()"
        )

    def rounds(
        self, queue: str, n: int, batch: int, ttl_ms: int = 86_400_000, pages: bool = False
    ) -> dict:
        fetch, ack = [], []
        b0 = self.blocks() if pages else 0
        for _ in range(n):
            t0 = time.perf_counter()
            got = self.q.fetch([queue], "bench-scale", batch, 60_000)
            t1 = time.perf_counter()
            if not got:
                break
            self.q.ack(
                queue, [(d[1], d[2]) for d in got], [(d[1], RESULT_JSON, ttl_ms) for d in got]
            )
            t2 = time.perf_counter()
            fetch.append((t1 - t0) * 1000)
            ack.append((t2 - t1) * 1000)
        pages = (self.blocks() - b0) / max(1, len(fetch)) if pages else 0
        return {
            "rounds": len(fetch),
            "pages_per_round": round(pages),
            "fetch": [round(pct(fetch, 0.5), 2), round(pct(fetch, 0.99), 2), round(max(fetch), 2)],
            "ack": [round(pct(ack, 0.5), 2), round(pct(ack, 0.99), 2), round(max(ack), 2)],
        }

    def sizes(self) -> dict:
        out = {}
        for t in TABLES:
            out[t] = {
                "heap_mb": round(self.one("SELECT pg_relation_size(%s::regclass)", t) / 2**20, 1)
            }
            for (ix,) in self.sql.execute(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass "
                "ORDER BY 1",
                (t,),
            ).fetchall():
                out[t][ix] = round(self.one("SELECT pg_relation_size(%s::regclass)", ix) / 2**20, 1)
            row = self.sql.execute(
                "SELECT n_live_tup, n_dead_tup, autovacuum_count, vacuum_count FROM "
                "pg_stat_user_tables WHERE relid = %s::regclass",
                (t,),
            ).fetchone()
            out[t].update(live=row[0], dead=row[1], autovacuums=row[2], vacuums=row[3])
        return out

    def pgstat(self) -> dict:
        out = {}
        for t in TABLES:
            r = self.sql.execute(
                "SELECT table_len, tuple_count, dead_tuple_percent, free_percent "
                "FROM pgstattuple(%s::regclass)",
                (t,),
            ).fetchone()
            out[t] = {
                "mb": round(r[0] / 2**20, 1),
                "tuples": r[1],
                "dead_pct": r[2],
                "free_pct": r[3],
            }
            out[t]["expired_results"] = (
                self.one("SELECT count(*) FROM vtasks_result WHERE expires_at <= now()")
                if t == "vtasks_result"
                else None
            )
            for (ix,) in self.sql.execute(
                "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass "
                "ORDER BY 1",
                (t,),
            ).fetchall():
                s = self.sql.execute(
                    "SELECT index_size, avg_leaf_density, leaf_fragmentation FROM pgstatindex(%s)",
                    (ix,),
                ).fetchone()
                out[ix] = {
                    "mb": round(s[0] / 2**20, 1),
                    "leaf_density_pct": s[1],
                    "fragmentation_pct": s[2],
                }
        return out

    # ---- sections -------------------------------------------------------------------------------
    def backlog(self):
        a = self.args
        self.sql.execute("TRUNCATE vtasks_task, vtasks_result")
        self.load_ready(SMALL, 2000)
        out = [
            {
                "ready": 2000,
                "load_s": 0,
                **self.rounds(SMALL, min(a.rounds, 19), a.batch, pages=True),
            }
        ]
        for n in a.ready:
            self.sql.execute("TRUNCATE vtasks_task, vtasks_result")
            load = self.load_ready(BIG, n)
            mb = round(self.one("SELECT pg_total_relation_size('vtasks_task')") / 2**20)
            out.append(
                {
                    "ready": n,
                    "load_s": round(load, 1),
                    "table_mb": mb,
                    **self.rounds(BIG, a.rounds, a.batch, pages=True),
                }
            )
            print(f"backlog {n:,}: {out[-1]}", flush=True)
        self.sql.execute("TRUNCATE vtasks_task, vtasks_result")
        self.report["backlog"] = out

    def results(self):
        a = self.args
        n = a.results
        self.sql.execute("TRUNCATE vtasks_task, vtasks_result")
        t0 = time.perf_counter()
        self.sql.execute(
            "INSERT INTO vtasks_result (id, data, expires_at) "
            "SELECT gen_random_uuid()::text, %s, now() - interval '1 second' "
            "FROM generate_series(1, %s)",
            (RESULT_JSON, n),
        )
        self.sql.execute("VACUUM ANALYZE vtasks_result")
        load = time.perf_counter() - t0
        self.sql.execute("CHECKPOINT")
        before = self.sizes()["vtasks_result"]
        self.load_ready(SMALL, a.batch * 100)
        acks = self.rounds(SMALL, 100, a.batch)
        calls, purged, total = [], 0, time.perf_counter()
        while True:
            t = time.perf_counter()
            got = self.q.maintain()["results_purged"]
            calls.append((time.perf_counter() - t) * 1000)
            purged += got
            if not got:
                break
        total = time.perf_counter() - total
        after = self.sizes()["vtasks_result"]
        self.sql.execute("VACUUM vtasks_result")
        vacuumed = self.sizes()["vtasks_result"]
        self.report["results"] = {
            "rows": n,
            "load_s": round(load, 1),
            "ack_with_results_next_to_them": acks,
            "maintain_calls": len(calls),
            "purged": purged,
            "purge_total_s": round(total, 1),
            "maintain_ms": [
                round(pct(calls, 0.5), 1),
                round(pct(calls, 0.99), 1),
                round(max(calls), 1),
            ],
            "sizes_before": before,
            "sizes_after_purge": after,
            "sizes_after_vacuum": vacuumed,
        }
        print(f"results: {self.report['results']}", flush=True)
        self.sql.execute("TRUNCATE vtasks_task, vtasks_result")

    def set_arm(self, arm: str):
        for t in TABLES:
            self.sql.execute(f"ALTER TABLE {t} RESET ({', '.join(AUTOVACUUM_KEYS)})")
        if arm == "shipped":
            for t, opts in self.shipped.items():
                if opts:
                    self.sql.execute(f"ALTER TABLE {t} SET ({', '.join(opts)})")
        if arm == "tuned":
            self.set_arm("shipped")
            self.sql.execute(f"ALTER TABLE vtasks_result SET ({', '.join(TUNED_RESULT)})")
        elif arm not in ("shipped", "defaults"):
            raise SystemExit(f"unknown arm {arm!r} (shipped, defaults, tuned)")
        return self.reloptions()

    def churn(self, arm: str) -> dict:
        a = self.args
        self.sql.execute("TRUNCATE vtasks_task, vtasks_result")
        self.set_arm(arm)
        self.sql.execute("SELECT pg_stat_reset()")
        if a.churn_backlog:
            self.load_ready(BIG, a.churn_backlog)
        samples, last_maintain, t_start = [], 0.0, time.perf_counter()
        rates = []
        for cycle in range(1, a.cycles + 1):
            t0 = time.perf_counter()
            for _ in range(a.cycle_size // 1000):
                self.q.enqueue(CHURN, [self.payload] * 1000)
            done = 0
            while done < a.cycle_size:
                got = self.q.fetch([CHURN], "bench-scale", 200, 60_000)
                if not got:
                    break
                self.q.ack(
                    CHURN, [(d[1], d[2]) for d in got], [(d[1], RESULT_JSON, 5000) for d in got]
                )
                done += len(got)
                if time.perf_counter() - last_maintain >= 5.0:
                    last_maintain = time.perf_counter()
                    # --purge-all: again while a call purged a full batch (the worker calls once)
                    while self.q.maintain()["results_purged"] >= 10_000 and a.purge_all:
                        pass
            rates.append(a.cycle_size / (time.perf_counter() - t0))
            if cycle % a.sample == 0 or cycle == a.cycles:
                self.q.enqueue(SMALL, [self.payload] * 1000)  # the probe's own rows, drained by it
                probe = self.rounds(SMALL, 10, 100)
                s = {
                    "cycle": cycle,
                    "elapsed_s": round(time.perf_counter() - t_start),
                    "probe": probe,
                    "cycle_rate": round(statistics.median(rates[-a.sample :])),
                    **self.sizes(),
                }
                samples.append(s)
                t = s["vtasks_task"]
                print(
                    f"[{arm}] cycle {cycle}: task heap {t['heap_mb']} MB dead {t['dead']} "
                    f"autovac {t['autovacuums']} vac {t['vacuums']}; "
                    f"result heap {s['vtasks_result']['heap_mb']} MB "
                    f"dead {s['vtasks_result']['dead']}; "
                    f"probe fetch {probe['fetch']} ack {probe['ack']}; {s['cycle_rate']}/s",
                    flush=True,
                )
        return {
            "arm": arm,
            "reloptions": self.reloptions(),
            "purge_all": a.purge_all,
            "samples": samples,
            "pgstat_end": self.pgstat(),
        }

    def reloptions(self) -> dict:
        return {
            t: self.one(
                "SELECT coalesce(reloptions::text, '{}') FROM pg_class WHERE oid = %s::regclass", t
            )
            for t in TABLES
        }


def markdown(r: dict, args) -> str:
    L = [
        f"PostgreSQL {r['server']}, one client (`_native.PgQueue`), ms; load average at start "
        f"{r['load_avg_start']:.1f}, at end {r.get('load_avg_end', 0):.1f} (2 cores shared).",
        "",
    ]
    if "backlog" in r:
        L += [
            f"**Backlog** (fetch of {args.batch}, then its ack with results; p50 / p99 / max):",
            "",
            "| ready rows | load (s) | fetch p50 | fetch p99 | fetch max "
            "| ack p50 | ack p99 | ack max | pages per round |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for b in r["backlog"]:
            L.append(
                f"| {b['ready']:,} | {b['load_s']} | "
                + " | ".join(str(x) for x in b["fetch"] + b["ack"])
                + f" | {b['pages_per_round']:,} |"
            )
        L.append("")
    if "results" in r:
        x = r["results"]
        sb, sa, sv = x["sizes_before"], x["sizes_after_purge"], x["sizes_after_vacuum"]
        ack = x["ack_with_results_next_to_them"]["ack"]
        L += [
            f"**Results**: {x['rows']:,} expired results loaded in {x['load_s']} s "
            f"(heap {sb['heap_mb']} MB, "
            f"index on expires_at {sb.get('vtasks_result_expires')} MB). "
            f"Ack of {args.batch} with results next to them: "
            f"p50 {ack[0]}, p99 {ack[1]} ms. "
            f"Purge by `maintain()`: {x['maintain_calls']} calls, {x['purged']:,} rows, "
            f"{x['purge_total_s']} s in all, per call p50 {x['maintain_ms'][0]} "
            f"/ p99 {x['maintain_ms'][1]} / "
            f"max {x['maintain_ms'][2]} ms. Heap after the purge {sa['heap_mb']} MB "
            f"({sa['dead']:,} dead rows), "
            f"after VACUUM {sv['heap_mb']} MB (free space kept for new results).",
            "",
        ]
    for c in r.get("churn", []):
        L += [
            f"**Churn, arm `{c['arm']}`"
            f"{', maintain() until it purges less than a batch' if c['purge_all'] else ''}** "
            f"(reloptions: task `{c['reloptions']['vtasks_task']}`, result "
            f"`{c['reloptions']['vtasks_result']}`): "
            f"{args.cycles} bursts of {args.cycle_size:,} next to "
            f"{args.churn_backlog:,} ready rows; probe = fetch/ack p50 of 100.",
            "",
            "| after cycle | task heap MB "
            "| task indexes MB (pkey / ready / inflight / delayed) | task dead rows | "
            "task vacuums (auto / manual) | result heap MB | result live / dead rows "
            "| result vacuums (auto / manual) | "
            "probe fetch p50 | probe ack p50 | tasks/s |",
            "| ---: | ---: | --- | ---: | --- | ---: | --- | --- | ---: | ---: | ---: |",
        ]
        for s in c["samples"]:
            t, rs = s["vtasks_task"], s["vtasks_result"]
            ix = " / ".join(
                str(t.get(k))
                for k in (
                    "vtasks_task_pkey",
                    "vtasks_task_ready",
                    "vtasks_task_inflight",
                    "vtasks_task_delayed",
                )
            )
            L.append(
                f"| {s['cycle']} | {t['heap_mb']} | {ix} | {t['dead']:,} "
                f"| {t['autovacuums']} / {t['vacuums']} | "
                f"{rs['heap_mb']} | {rs['live']:,} / {rs['dead']:,} "
                f"| {rs['autovacuums']} / {rs['vacuums']} | "
                f"{s['probe']['fetch'][0]} | {s['probe']['ack'][0]} | "
                f"{s['cycle_rate']:,} |"
            )
        ps = c["pgstat_end"]
        L += [
            "",
            "pgstattuple at the end: "
            + "; ".join(
                f"{k} {v['mb']} MB "
                + (
                    f"{v['tuples']:,} rows"
                    + (
                        f" ({v['expired_results']:,} expired)"
                        if v["expired_results"] is not None
                        else ""
                    )
                    + f", dead {v['dead_pct']} % "
                    f"free {v['free_pct']} %"
                    if "free_pct" in v
                    else f"leaf density {v['leaf_density_pct']} %"
                )
                for k, v in ps.items()
            ),
            "",
        ]
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ready", default="1000000", help="comma-separated backlog sizes")
    ap.add_argument("--results", type=int, default=5_000_000)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--cycle-size", type=int, default=20_000)
    ap.add_argument("--churn-backlog", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=10)
    ap.add_argument(
        "--arms", default="shipped,defaults", help="shipped, defaults, tuned (see TUNED_RESULT)"
    )
    ap.add_argument(
        "--purge-all",
        action="store_true",
        help="churn: call maintain() again while it purged a full batch of results",
    )
    ap.add_argument("--sections", default="backlog,results,churn")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    args.ready = [int(x) for x in args.ready.split(",") if x]
    b = Bench(os.environ["VTASKS_PG_DSN"], args)
    sections = args.sections.split(",")
    if "backlog" in sections:
        b.backlog()
    if "results" in sections:
        b.results()
    if "churn" in sections:
        b.report["churn"] = [b.churn(arm) for arm in args.arms.split(",")]
    b.report["load_avg_end"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(b.report, f, indent=2)
    print()
    print(markdown(b.report, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
