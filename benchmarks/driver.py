"""Client side of one benchmark step, run by run_suite.py inside the venv of the system under test.

    <venv>/bin/python benchmarks/driver.py <action> [options]      (env BENCH_SYSTEM=...)

Actions (each prints one JSON object on the last line of stdout):
  enqueue-single  N enqueues from V concurrent coroutines ("async views"), each awaiting one
                  enqueue at a time: the system's own async API where it has one
                  (`task.aenqueue`), else the sync call in a thread (`sync_to_async(...,
                  thread_sensitive=False)`, what an async Django view does with Celery).
  enqueue-bulk    N tasks through the system's bulk API in batches of B (vtasks and django-vtasks
                  3.2.0: `backend.aenqueue_many`; Celery: `apply_async` reusing one producer;
                  django-tasks-db has none: B `enqueue` calls in one `transaction.atomic()`).
  prefill         like enqueue-bulk, untimed use (fills the queue before a worker starts).
  paced           N single enqueues at R per second, one at a time (for enqueue->start latency).
  reset           empties the system's queue (the harness flushes the Valkey db itself).
  versions        installed versions of the packages that matter.

Every task gets its enqueue time (time.time()) as its argument.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchproj.settings")
SYSTEM = os.environ.get("BENCH_SYSTEM", "vtasks")

import django  # noqa: E402

django.setup()

from benchproj import tasks as T  # noqa: E402

ASYNC_NATIVE = SYSTEM in ("vtasks", "vtasks-pg", "dvt320", "dtdb")


def pick(name: str):
    return getattr(T, name)


# ---- one enqueue ----------------------------------------------------------------------------
def make_async_enqueue(task):
    if SYSTEM == "celery":
        from asgiref.sync import sync_to_async

        delay = sync_to_async(task.delay, thread_sensitive=False)

        async def one(enq):
            await delay(enq)
    else:

        async def one(enq):
            await task.aenqueue(enq)

    return one


def make_sync_enqueue(task):
    if SYSTEM == "celery":
        return task.delay
    return task.enqueue


# ---- bulk -----------------------------------------------------------------------------------
async def bulk(task, n: int, batch: int) -> None:
    sent = 0
    if SYSTEM in ("vtasks", "vtasks-pg", "dvt320"):
        from django.tasks import task_backends

        backend = task_backends["default"]
        while sent < n:
            k = min(batch, n - sent)
            now = time.time()
            await backend.aenqueue_many([(task, (now,), {}) for _ in range(k)])
            sent += k
    elif SYSTEM == "celery":
        from celery import current_app

        def run():
            # Celery has no bulk enqueue: its documented fast path is one producer reused for
            # every apply_async (a group() ran ~30x slower here)
            nonlocal sent
            while sent < n:
                k = min(batch, n - sent)
                now = time.time()
                with current_app.producer_or_acquire() as producer:
                    for _ in range(k):
                        task.apply_async((now,), producer=producer)
                sent += k

        await asyncio.to_thread(run)
    else:
        from django.db import transaction

        def run():
            nonlocal sent
            while sent < n:
                k = min(batch, n - sent)
                with transaction.atomic():
                    for _ in range(k):
                        task.enqueue(time.time())
                sent += k

        await asyncio.to_thread(run)


async def enqueue_single(task, n: int, views: int) -> dict:
    one = make_async_enqueue(task)
    await one(time.time())  # warm up connections / pools (not counted)
    remaining = n

    async def view():
        nonlocal remaining
        while True:
            if remaining <= 0:
                return
            remaining -= 1
            await one(time.time())

    t0 = time.perf_counter()
    await asyncio.gather(*(view() for _ in range(views)))
    dt = time.perf_counter() - t0
    return {"n": n, "views": views, "seconds": dt, "ops_s": n / dt}


async def enqueue_bulk(task, n: int, batch: int) -> dict:
    await bulk(task, min(batch, 10), batch)  # warm-up (not counted)
    t0 = time.perf_counter()
    await bulk(task, n, batch)
    dt = time.perf_counter() - t0
    return {"n": n, "batch": batch, "seconds": dt, "ops_s": n / dt}


async def paced(task, n: int, rate: float) -> dict:
    one = make_async_enqueue(task)
    t0 = time.time()
    period = 1.0 / rate
    for i in range(n):
        target = t0 + i * period
        delay = target - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await one(time.time())
    return {"n": n, "rate": rate, "t0": t0, "seconds": time.time() - t0}


def reset() -> dict:
    if SYSTEM == "vtasks-pg":
        from django_vtasks.broker import get_broker

        broker = get_broker("default")
        removed = 0
        for q in broker.queues():
            removed += broker.clear(q, "all")
        broker.close()
        return {"removed": removed}
    if SYSTEM == "dtdb":
        from django_tasks_db.models import DBTaskResult

        removed, _ = DBTaskResult.objects.all().delete()
        return {"removed": removed}
    return {"removed": 0}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in (
        "django",
        "django-vtasks",
        "django-vcache",
        "celery",
        "kombu",
        "redis",
        "valkey",
        "django-tasks-db",
        "psycopg",
        "orjson",
        "libvalkey",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    if SYSTEM.startswith("vtasks"):
        import subprocess

        import django_vtasks

        out["vtasks"] = getattr(django_vtasks, "__version__", "?")
        try:
            from django_vtasks import _native

            native = getattr(_native, "__file__", None)
            out["_native"] = (
                "stub"
                if getattr(_native, "BENCH_DEV_STUB", False)
                else time.strftime(
                    "built %Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(native))
                )
                if native
                else "?"
            )
        except ImportError:
            pass
        try:
            out["git"] = subprocess.run(
                ["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip()
        except OSError:
            pass
    return out


async def amain(args) -> dict:
    task = pick(args.task)
    try:
        if args.action == "enqueue-single":
            return await enqueue_single(task, args.n, args.views)
        if args.action in ("enqueue-bulk", "prefill"):
            return (
                await enqueue_bulk(task, args.n, args.batch)
                if args.action == "enqueue-bulk"
                else await _prefill(task, args.n, args.batch)
            )
        if args.action == "paced":
            return await paced(task, args.n, args.rate)
        raise SystemExit(f"unknown action {args.action}")
    finally:
        await _aclose()


async def _prefill(task, n, batch):
    t0 = time.perf_counter()
    await bulk(task, n, batch)
    return {"n": n, "seconds": time.perf_counter() - t0}


async def _aclose():
    if SYSTEM in ("vtasks", "vtasks-pg"):
        try:
            from django_vtasks.broker import get_broker

            await get_broker("default").aclose()
        except Exception:
            pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("action")
    p.add_argument("--task", default="noop", choices=["noop", "sleep10"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--views", type=int, default=50)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--rate", type=float, default=200.0)
    args = p.parse_args()
    if args.action == "reset":
        out = reset()
    elif args.action == "versions":
        out = versions()
    else:
        out = asyncio.run(amain(args))
    out["system"] = SYSTEM
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
