"""Rate limits measured against the real brokers (not a test: numbers for the record).

    .venv/bin/python benchmarks/rate_limit.py --valkey-url valkey://127.0.0.1:PORT/0 \
        --pg-dsn postgres://postgres@127.0.0.1:PORT/postgres

For each engine: (1) accuracy — 8 fetcher threads drain a queue limited to LIMIT per second for
SECONDS; starts are counted by the broker (in-flight count) and compared with the bound
``burst + limit x elapsed``; (2) cost — the time of 2,000 single-task fetches from an unlimited
queue and from a limited one (a limit too high to bind), as a ratio — round trips included, so
on a busy machine mostly noise; (3, Valkey) the module's own time per VT.FETCHBATCH
(``INFO commandstats``, 20,000 pipelined fetches of one task) on an unlimited and a limited queue.
"""

import argparse
import threading
import time

from django_vtasks.broker import EnqueueRequest
from django_vtasks.brokers.postgres import PostgresBroker
from django_vtasks.brokers.valkey import ValkeyBroker


def fill(b, q, n):
    for i in range(0, n, 1000):
        b.enqueue([EnqueueRequest(q, f"{q}-{j}", b"x") for j in range(i, min(n, i + 1000))])


def accuracy(b, q, limit, seconds, threads=8):
    fill(b, q, int(limit * seconds * 2 + 100))
    b.rate_limit_set(q, limit, 1000)
    stop = threading.Event()

    def run(i):
        while not stop.is_set():
            b.fetch([q], f"w{i}", 10, block_ms=200)

    t0 = time.monotonic()
    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    started = b.info(q)["inflight"]
    return started, elapsed, limit + limit * elapsed


def cost(b, q, n=2000):
    out = {}
    for label, limited in (("unlimited", False), ("limited", True)):
        qq = f"{q}-{label}"
        fill(b, qq, n)
        if limited:
            b.rate_limit_set(qq, 1_000_000, 1000)
        t0 = time.perf_counter()
        for _ in range(n):
            b.fetch([qq], "w", 1)
        out[label] = (time.perf_counter() - t0) / n * 1e6
    return out


def valkey_server_cost(url, n=20_000):
    import valkey

    c = valkey.Valkey.from_url(url)
    out = {}
    for label, limited in (("unlimited", False), ("limited", True)):
        q = f"bench:{{srv-{label}-{time.time()}}}"
        for _ in range(0, n, 1000):
            c.execute_command("VT.ENQUEUE", q, "PAYLOAD", *["x"] * 1000)
        if limited:
            c.execute_command("VT.RATELIMIT", "SET", q, 1_000_000, "PER", 1000)
        c.config_resetstat()
        p = c.pipeline(transaction=False)
        for i in range(n):
            p.execute_command("VT.FETCHBATCH", 1, q, "WORKER", "w", "COUNT", 1)
            if i % 500 == 499:
                p.execute()
        p.execute()
        out[label] = c.info("commandstats")["cmdstat_vt.fetchbatch"]["usec_per_call"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--valkey-url")
    ap.add_argument("--pg-dsn")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    tag = f"rl{int(time.time())}"
    engines = []
    if a.valkey_url:
        engines.append(("valkey", ValkeyBroker(a.valkey_url, prefix="bench:")))
    if a.pg_dsn:
        pg = PostgresBroker(a.pg_dsn, pool_size=12)
        pg.q.migrate()
        engines.append(("postgres", pg))
    for name, b in engines:
        started, elapsed, bound = accuracy(b, f"{tag}-acc", a.limit, a.seconds)
        c = cost(b, f"{tag}-cost")
        print(
            f"{name}: limit {a.limit}/s, {started} starts in {elapsed:.2f} s = "
            f"{started / elapsed:.1f}/s (bound {bound:.0f}); single fetch "
            f"{c['unlimited']:.0f} us unlimited, {c['limited']:.0f} us limited "
            f"(x{c['limited'] / c['unlimited']:.2f})"
        )
    if a.valkey_url:
        sc = valkey_server_cost(a.valkey_url)
        print(
            f"valkey: VT.FETCHBATCH server time {sc['unlimited']} us unlimited, "
            f"{sc['limited']} us limited"
        )


if __name__ == "__main__":
    main()
