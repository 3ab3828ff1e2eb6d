"""The built extension django_vtasks._native against a real Postgres (no mocks).

Uses $VTASKS_PG_DSN (the tests.vtasks_servers plugin sets it, starting a throwaway cluster when
needed) and a fresh database per module, dropped at the end.
"""

import asyncio
import os
import uuid

import psycopg
import pytest

from django_vtasks import _native


@pytest.fixture(scope="module")
def dsn():
    base = os.environ.get("VTASKS_PG_DSN")
    if not base:
        pytest.skip("VTASKS_PG_DSN is not set")
    name = f"vt_native_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    url = base.rsplit("/", 1)[0] + "/" + name
    _native.PgQueue(url).migrate()
    yield url
    with psycopg.connect(base, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_codec_round_trip():
    small = b'{"func": "m.f", "args": []}'
    assert _native.encode_payload(small) == small
    big = b'{"x": "' + b"a" * 5000 + b'"}'
    enc = _native.encode_payload(big)
    assert enc.startswith(b"zstd:") and len(enc) < len(big)
    assert _native.decode_payload(enc) == big
    assert _native.decode_payload(small) == small
    assert _native.encode_payload(big, threshold=10_000) == big
    assert _native.encode_payload(small, 5).startswith(b"zstd:")
    with pytest.raises(ValueError):
        _native.decode_payload(b"zstd:not a frame")


def test_migrations_shape():
    ms = _native.migrations()
    assert [m[0] for m in ms] == sorted(m[0] for m in ms)
    version, name, sql = ms[0]
    assert (version, name) == (1, "initial") and "vtasks_task" in sql and "%" not in sql


def test_pgqueue_flow(dsn):
    q = _native.PgQueue(dsn, pool_size=2, max_attempts=2)
    q.migrate()
    ids = q.enqueue("nq", [b"a", b"b", b"c"])
    assert len(ids) == 3 and all(len(i) == 36 for i in ids)
    assert q.enqueue("nq", [b"x"], ids=["fixed"], priority=5) == ["fixed"]
    assert q.enqueue("nq", [b"x"], ids=["fixed"]) == [None]
    got = q.fetch(["nq"], "w1", 2, lease_ms=10_000)
    assert [(g[0], g[1], g[3], g[4]) for g in got] == [
        ("nq", "fixed", 1, b"x"),
        ("nq", ids[0], 1, b"a"),
    ]
    assert q.ack("nq", [(got[0][1], got[0][2]), (got[1][1], "0" * 16)]) == 1
    assert q.fail("nq", got[1][1], got[1][2], "boom", retry_ms=0) == "retry"
    assert q.fail("nq", got[1][1], got[1][2], "boom") is None  # stale token
    info = q.info("nq")
    assert info["ready"] == 3 and info["acked_total"] == 1 and info["retried_total"] == 1
    assert set(info) == {
        "ready",
        "delayed",
        "inflight",
        "dead",
        "dead_evicted",
        "enqueued_total",
        "acked_total",
        "failed_total",
        "retried_total",
        "rescued_total",
        "dead_total",
        "schedules",
        "unique_keys",
        "waiting",
    }
    rec = q.get("nq", got[1][1])
    assert rec["state"] == "ready" and rec["error"] == "boom" and rec["payload"] == b"a"
    assert [r["id"] for r in q.peek("nq", "ready", 0, 10)] == [
        ids[1],
        ids[2],
        got[1][1],
    ]  # retried: at the back
    assert q.fetch(["empty"], "w1", 5, block_ms=50) is None
    assert q.fetch(["empty"], "w1", 5) == []
    assert "nq" in q.queues()
    q.schedule_set("nq", "s", b"tick", every_ms=60_000)
    ((name, kind, spec, next_ms, payload, paused),) = q.schedule_list("nq")
    assert (
        (name, kind, spec, payload) == ("s", "every", "60000", b"tick")
        and next_ms > 0
        and paused is False
    )
    assert q.schedule_tick() == 0
    assert q.schedule_del("nq", "s") is True
    q.store_result("res-1", b'{"ok": true}', 60_000)
    assert q.get_result("res-1") == b'{"ok": true}'
    assert q.get_result("nope") is None
    assert q.ack("nq", [], [("res-2", b"2", 60_000), ("res-3", b"3", 60_000)]) == 0
    q.store_results([("res-4", b"4", 60_000)])
    assert [q.get_result(f"res-{i}") for i in (2, 3, 4)] == [b"2", b"3", b"4"]
    assert set(q.maintain()) >= {"rescued", "uniques_purged", "results_purged"}
    assert q.clear("nq", "all") == 3
    with pytest.raises(ValueError):
        q.enqueue("nq", [b"x"], priority=500)
    with pytest.raises(ValueError):
        q.peek("nq", "bogus")


def test_async_pgqueue_flow(dsn):
    async def main():
        q = _native.AsyncPgQueue(dsn, pool_size=2)
        await q.migrate()
        waiter = asyncio.ensure_future(q.fetch(["anq"], "aw", 10, block_ms=5000))
        await asyncio.sleep(0.2)
        ids = await q.enqueue("anq", [b"1", b"2"])
        got = await asyncio.wait_for(waiter, 6)
        assert [g[1] for g in got] == ids
        assert (
            await q.ack(
                "anq",
                [(g[1], g[2]) for g in got],
                results=[(g[1], b"r" + g[4], 10_000) for g in got],
            )
            == 2
        )
        assert [await q.get_result(g[1]) for g in got] == [b"r1", b"r2"]
        assert (await q.info("anq"))["acked_total"] == 2
        assert await q.fetch(["anq"], "aw", 1, block_ms=20) is None
        # Cancelling a blocked fetch does not break the client.
        t = asyncio.ensure_future(q.fetch(["anq"], "aw", 1, block_ms=10_000))
        await asyncio.sleep(0.05)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await q.store_result("ar", b"1", 10_000)
        assert await q.get_result("ar") == b"1"
        assert await q.rescue("anq") == 0
        assert (await q.maintain())["rescued"] == 0

    asyncio.run(main())


def test_enqueue_sql_in_rolled_back_transaction_leaves_nothing(dsn):
    sql, params = _native.PgQueue.enqueue_sql(
        "tx", [b"p1", b"p2"], ["tx-1", "tx-2"], priority=3, unique=None, max_attempts_default=3
    )
    assert "%s" in sql and "$1" not in sql
    with psycopg.connect(dsn) as c:
        with c.transaction(force_rollback=True):
            rows = c.execute(sql, params).fetchall()
            assert sorted(r[0] for r in rows) == ["tx-1", "tx-2"]
            n = c.execute("SELECT count(*) FROM vtasks_task WHERE queue = 'tx'").fetchone()[0]
            assert n == 2
    q = _native.PgQueue(dsn, pool_size=1)
    info = q.info("tx")
    assert info["ready"] == 0 and info["enqueued_total"] == 0
    # Committed, it is a normal enqueue; a unique key held suppresses the next one.
    sql, params = _native.PgQueue.enqueue_sql("tx", [b"u"], ["tx-u"], unique=("key", 60_000))
    with psycopg.connect(dsn) as c:
        assert c.execute(sql, params).fetchall() == [("tx-u",)]
    sql, params = _native.PgQueue.enqueue_sql("tx", [b"u"], ["tx-u2"], unique=("key", 60_000))
    with psycopg.connect(dsn) as c:
        assert c.execute(sql, params).fetchall() == []
    assert [g[1] for g in q.fetch(["tx"], "w", 10)] == ["tx-u"]
