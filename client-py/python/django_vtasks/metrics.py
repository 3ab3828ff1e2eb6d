"""Prometheus metrics of vtasks (``prometheus_client``; install ``django-vtasks[metrics]``).

Two sources, both named ``vtasks_*``:

- **Worker metrics**, counted by each worker process from Django's ``task_started`` /
  ``task_finished`` signals: ``vtasks_tasks_started_total``, ``vtasks_tasks_succeeded_total``,
  ``vtasks_tasks_failed_total`` (labels ``queue``, ``task``), the histograms
  ``vtasks_task_duration_seconds`` and ``vtasks_task_latency_seconds`` (enqueue → first start),
  ``vtasks_worker_slots_busy`` / ``vtasks_worker_slots_free`` and
  ``vtasks_schedule_runs_total`` (tasks fired by a schedule that a worker started, labels
  ``queue``, ``schedule``).
- **Broker metrics**, read from the broker at scrape time (``info()`` = VT.INFO or the Postgres
  counters, so they count every worker, wherever it runs), labels ``backend``, ``queue``:
  ``vtasks_queue_ready``, ``_delayed``, ``_inflight``, ``_dead`` (depth by state),
  ``vtasks_queue_schedules``, the counters ``vtasks_queue_enqueued_total``, ``_acked_total``,
  ``_failed_total``, ``_retried_total``, ``_rescued_total``, ``_dead_total``,
  ``_dead_evicted_total``, ``vtasks_schedule_next_run_timestamp_seconds`` (label ``schedule``)
  and ``vtasks_broker_up`` (0 when the broker could not be read).

Where they are served:

- ``manage.py runworker --metrics-port 9108``: ``http://host:9108/metrics``. With
  ``--processes N`` the children use prometheus_client's multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR``, a private directory unless set) and the supervisor serves their
  sum; the busy/free slot gauges count live children only.
- ``path("metrics", django_vtasks.metrics.view)`` in a project's urls: the broker metrics of every
  vtasks backend, plus the worker metrics of this process (a worker embedded through
  ``django_vtasks.asgi``), or of every process writing to ``PROMETHEUS_MULTIPROC_DIR`` when it is
  set. Protect it as you would any internal endpoint (it lists queue names).
"""

from __future__ import annotations

import logging
import os
import threading

from django.http import HttpResponse
from django.tasks.base import TaskResultStatus
from django.tasks.signals import task_finished, task_started

try:
    import prometheus_client  # noqa: F401 - only checks that it is installed
except ImportError as e:  # an optional extra, depending on how vtasks was installed
    raise ImportError(
        "vtasks metrics need prometheus_client: pip install prometheus_client "
        "(or the django-vtasks extra that brings it)"
    ) from e
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .signals import schedule_run

logger = logging.getLogger("django_vtasks.metrics")

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

TASKS_STARTED = Counter(
    "vtasks_tasks_started", "Tasks started by this worker (every attempt).", ["queue", "task"]
)
TASKS_SUCCEEDED = Counter(
    "vtasks_tasks_succeeded", "Tasks that returned a result.", ["queue", "task"]
)
TASKS_FAILED = Counter(
    "vtasks_tasks_failed",
    "Tasks that failed for good (dead-lettered; retried attempts are in "
    "vtasks_queue_retried_total).",
    ["queue", "task"],
)
TASK_DURATION = Histogram(
    "vtasks_task_duration_seconds",
    "Run time of a finished attempt (start to success or failure).",
    ["queue", "task"],
)
TASK_LATENCY = Histogram(
    "vtasks_task_latency_seconds",
    "Enqueue to first start (queueing delay, incl. a requested run_after).",
    ["queue"],
    buckets=_LATENCY_BUCKETS,
)
SLOTS_BUSY = Gauge(
    "vtasks_worker_slots_busy",
    "Task slots in use (live worker processes).",
    multiprocess_mode="livesum",
)
SLOTS_FREE = Gauge(
    "vtasks_worker_slots_free",
    "Task slots free (live worker processes).",
    multiprocess_mode="livesum",
)
SCHEDULE_RUNS = Counter(
    "vtasks_schedule_runs",
    "Tasks fired by a schedule (ticks) that a worker started.",
    ["queue", "schedule"],
)

#: VT.INFO fields → (metric suffix, kind)
_INFO_GAUGES = {
    "ready": "Tasks ready to run.",
    "delayed": "Tasks waiting for their run time.",
    "inflight": "Tasks leased to a worker.",
    "dead": "Tasks in the dead-letter list.",
    "schedules": "Schedules of the queue.",
    "waiting": "Tasks of flows waiting for the tasks before them (chains, group callbacks).",
}
_INFO_COUNTERS = {
    "enqueued_total": "Tasks enqueued (incl. schedule ticks).",
    "acked_total": "Tasks acknowledged (succeeded).",
    "failed_total": "Failures reported by workers (retried or dead-lettered).",
    "retried_total": "Failures that were retried.",
    "rescued_total": "Leases returned to ready (worker died or lease expired).",
    "dead_total": "Dead-letterings (incl. evicted ones).",
    "dead_evicted": "Dead entries evicted by the dead-letter cap.",
}


# ---- worker side --------------------------------------------------------------------------------
def _queue_task(result) -> tuple[str, str]:
    task = result.task
    return task.queue_name, task.module_path


def _on_started(sender, task_result, **kwargs) -> None:
    queue, name = _queue_task(task_result)
    TASKS_STARTED.labels(queue, name).inc()
    if (
        len(task_result.worker_ids) <= 1
        and task_result.enqueued_at
        and task_result.last_attempted_at
    ):
        delay = (task_result.last_attempted_at - task_result.enqueued_at).total_seconds()
        TASK_LATENCY.labels(queue).observe(max(0.0, delay))


def _on_finished(sender, task_result, **kwargs) -> None:
    queue, name = _queue_task(task_result)
    if task_result.status == TaskResultStatus.SUCCESSFUL:
        TASKS_SUCCEEDED.labels(queue, name).inc()
    elif task_result.status == TaskResultStatus.FAILED:
        TASKS_FAILED.labels(queue, name).inc()
    if task_result.finished_at and task_result.last_attempted_at:
        TASK_DURATION.labels(queue, name).observe(
            max(0.0, (task_result.finished_at - task_result.last_attempted_at).total_seconds())
        )


def _on_schedule_run(sender, queue, schedule, **kwargs) -> None:
    SCHEDULE_RUNS.labels(queue, schedule).inc()


# They only touch in-memory (or mmap'ed) values: the worker may call them on its event loop.
for _receiver in (_on_started, _on_finished, _on_schedule_run):
    _receiver.vtasks_loop_safe = True  # type: ignore[union-attr]  # a function attribute


def connect() -> None:
    """Count the tasks of the workers of this process (idempotent)."""
    task_started.connect(_on_started, dispatch_uid="vtasks-metrics-started")
    task_finished.connect(_on_finished, dispatch_uid="vtasks-metrics-finished")
    schedule_run.connect(_on_schedule_run, dispatch_uid="vtasks-metrics-schedule")


def _sample_slots(worker, stop: threading.Event, interval: float = 0.5) -> None:
    while not stop.wait(interval):
        busy = worker.busy_slots
        SLOTS_BUSY.set(busy)
        SLOTS_FREE.set(max(0, worker.concurrency - busy))


def enable(worker, port: int | None = None, addr: str = "") -> None:
    """Metrics for ``worker`` (runworker --metrics-port): count its tasks, sample its slots and,
    with ``port``, serve /metrics (worker + broker metrics) from a daemon thread."""
    connect()
    SLOTS_FREE.set(worker.concurrency)
    threading.Thread(
        target=_sample_slots,
        args=(worker, threading.Event()),
        name="vtasks-metrics-slots",
        daemon=True,
    ).start()
    if port is not None:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
        registry.register(BrokerCollector([worker.alias], worker.queues))
        start_http_server(port, addr, registry=registry)
        logger.info("metrics on http://%s:%d/metrics", addr or "0.0.0.0", port)


def serve_multiprocess(
    port: int, addr: str, path: str, alias: str, queues: list[str] | None
) -> None:
    """The supervisor's /metrics: the sum of its children's files in ``path`` + the broker."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    registry.register(BrokerCollector([alias], queues))
    start_http_server(port, addr, registry=registry)


# ---- broker side --------------------------------------------------------------------------------
class _Forward:
    """Yields another registry's metrics (this process's worker metrics)."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        yield from self.registry.collect()


class BrokerCollector:
    """Queue depths and counters of vtasks backends, read when scraped. ``aliases``: TASKS
    aliases (default: every vtasks backend); ``queues``: queues always reported besides the
    ones the broker lists."""

    def __init__(self, aliases: list[str] | None = None, queues: list[str] | None = None):
        self.aliases = aliases
        self.queues = list(queues or ())

    def _backends(self):
        from django.tasks import task_backends

        from .broker import vtasks_backends

        if self.aliases is None:
            return vtasks_backends()
        return [(a, task_backends[a]) for a in self.aliases]

    def collect(self):
        labels = ["backend", "queue"]
        gauges = {
            f: GaugeMetricFamily(f"vtasks_queue_{f}", doc, labels=labels)
            for f, doc in _INFO_GAUGES.items()
        }
        counters = {
            f: CounterMetricFamily(f"vtasks_queue_{f.removesuffix('_total')}", doc, labels=labels)
            for f, doc in _INFO_COUNTERS.items()
        }
        next_run = GaugeMetricFamily(
            "vtasks_schedule_next_run_timestamp_seconds",
            "Next tick of a schedule (unix time).",
            labels=["backend", "queue", "schedule"],
        )
        up = GaugeMetricFamily(
            "vtasks_broker_up", "1 when the broker answered this scrape.", labels=["backend"]
        )
        for alias, backend in self._backends():
            broker = backend.broker
            try:
                names = sorted(
                    set(broker.queues())
                    | set(self.queues)
                    | set(getattr(backend, "queues", None) or ())
                )
                for queue in names:
                    info = broker.info(queue)
                    for f, family in gauges.items():
                        family.add_metric([alias, queue], int(info.get(f, 0)))
                    for f, counter in counters.items():
                        counter.add_metric([alias, queue], int(info.get(f, 0)))
                    if info.get("schedules"):
                        for s in broker.schedule_list(queue):
                            next_run.add_metric([alias, queue, s.name], s.next_run_ms / 1000)
                up.add_metric([alias], 1)
            except Exception as e:  # a scrape must answer even when the broker is down
                logger.warning("metrics: reading the broker of %r failed: %s", alias, e)
                up.add_metric([alias], 0)
        yield from gauges.values()
        yield from counters.values()
        yield next_run
        yield up


def view(request):
    """``path("metrics", django_vtasks.metrics.view)``: Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(BrokerCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward(REGISTRY))
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
