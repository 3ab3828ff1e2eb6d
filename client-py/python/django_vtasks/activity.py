"""The activity record the admin dashboard reads: workers seen recently and the throughput of
the last minutes.

Every ``runworker`` process runs a reporter thread that, every ``VTASKS_ACTIVITY_INTERVAL``
seconds (default 5), writes
two small JSON documents into the broker's result store (so it works the same on Valkey and on
Postgres, with no extra table or key type):

- ``vtasks:activity:workers`` — ``{worker id: {host, pid, queues, concurrency, busy, processed,
  failed, started, seen}}``; entries not refreshed for ``FORGET_AFTER`` seconds are dropped.
- ``vtasks:activity:samples`` — ``[{"t": unix seconds, "c": [acked_total, dead_total,
  retried_total]}]``, the broker's cumulative counters (VT.INFO) summed over its queues (a few
  KiB, whatever the number of queues), sampled at most every 2 x ``VTASKS_ACTIVITY_INTERVAL``
  seconds by whichever worker comes first, ``KEEP_SAMPLES_FOR`` seconds kept. The
  dashboard charts their differences: tasks succeeded / failed / retried per interval, over every
  worker.

Both are read-modify-write without a lock: two workers writing at the same moment may drop one
update, which the next report restores; a lost sample only widens one
chart interval. Each document expires ``TTL_S`` after the last write.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from itertools import pairwise

from .broker import Broker
from .conf import settings

logger = logging.getLogger("django_vtasks.activity")

WORKERS_ID = "vtasks:activity:workers"
SAMPLES_ID = "vtasks:activity:samples"
KEEP_SAMPLES_FOR = 30 * 60
FORGET_AFTER = 10 * 60
TTL_S = 3600
#: counters sampled per queue (indexes of a sample's list)
SAMPLED = ("acked_total", "dead_total", "retried_total")


def _load(broker: Broker, id: str, default):
    raw = broker.get_result(id)
    if not raw:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def _store(broker: Broker, id: str, value) -> None:
    broker.store_result(id, json.dumps(value, separators=(",", ":")).encode(), TTL_S * 1000)


def workers(broker: Broker) -> dict[str, dict]:
    """Workers seen in the last FORGET_AFTER seconds: {id: {..., "seen": unix seconds}}."""
    now = time.time()
    found = _load(broker, WORKERS_ID, {})
    return (
        {
            k: v
            for k, v in found.items()
            if isinstance(v, dict) and now - v.get("seen", 0) < FORGET_AFTER
        }
        if isinstance(found, dict)
        else {}
    )


def samples(broker: Broker) -> list[dict]:
    found = _load(broker, SAMPLES_ID, [])
    return (
        [s for s in found if isinstance(s, dict) and "t" in s and "c" in s]
        if isinstance(found, list)
        else []
    )


def report_worker(broker: Broker, worker, started: float) -> None:
    """Refresh this worker's entry (and drop forgotten ones)."""
    now = time.time()
    entries = workers(broker)
    entries[worker.worker_id] = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "queues": list(worker.queues),
        "concurrency": worker.concurrency,
        "busy": worker.busy_slots,
        "processed": worker.processed,
        "failed": worker.failed,
        "started": started,
        "seen": now,
    }
    _store(broker, WORKERS_ID, entries)


def report_interval() -> float:
    """Seconds between two reports of a worker (VTASKS_ACTIVITY_INTERVAL)."""
    return max(0.1, float(settings.VTASKS_ACTIVITY_INTERVAL))


def sample_interval() -> float:
    """Seconds between two throughput samples."""
    return 2 * report_interval()


def sample_counters(broker: Broker) -> bool:
    """Append a sample of every queue's counters unless one is younger than sample_interval()."""
    now = time.time()
    found = samples(broker)
    if found and now - found[-1]["t"] < sample_interval() * 0.9:
        return False
    totals = [0] * len(SAMPLED)
    for queue in broker.queues():
        info = broker.info(queue)
        for i, f in enumerate(SAMPLED):
            totals[i] += int(info.get(f, 0))
    sample = {"t": now, "c": totals}
    found = [s for s in found if now - s["t"] <= KEEP_SAMPLES_FOR] + [sample]
    _store(broker, SAMPLES_ID, found)
    return True


def rates(found: list[dict]) -> list[dict]:
    """Per interval between consecutive samples: {"t": end, "seconds", "succeeded", "failed",
    "retried"} (a counter that went down, e.g. a queue was deleted, counts as 0)."""
    out = []
    for prev, cur in pairwise(found):
        totals = [max(0, c - p) for c, p in zip(cur["c"], prev["c"], strict=False)]
        out.append(
            {
                "t": cur["t"],
                "seconds": max(0.001, cur["t"] - prev["t"]),
                "succeeded": totals[0],
                "failed": totals[1],
                "retried": totals[2],
            }
        )
    return out


def start_reporter(worker) -> threading.Thread:
    """Report ``worker`` every report_interval() seconds from a daemon thread (sync broker calls, so
    a busy event loop does not delay it) until the worker has stopped."""
    started = time.time()

    def loop():
        rounds = 0
        while True:
            try:
                report_worker(worker.broker, worker, started)
                if rounds % 2 == 0:  # every sample_interval()
                    sample_counters(worker.broker)
            except Exception as e:  # never disturbs the worker; the dashboard just lags
                logger.debug("activity report of %s failed: %s", worker.worker_id, e)
            rounds += 1
            time.sleep(report_interval())

    t = threading.Thread(target=loop, name="vtasks-activity", daemon=True)
    t.start()
    return t
