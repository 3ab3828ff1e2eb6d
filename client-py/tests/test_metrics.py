"""Prometheus metrics scraped from a real run: runworker --processes 2 --metrics-port, and the
Django view, checked against what happened (tasks succeeded/failed, depths, slots, schedules)."""

import urllib.request
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import schedule_env, wait_for
from tests.testapp.ops_tasks import gated
from tests.testapp.tasks import add, fail
from tests.tools_helpers import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def samples(text: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels) -> float:
    """Sum of the samples ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(
        s.value
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


@pytest.mark.parametrize(
    ("alias", "processes"), [("valkey", 2), ("postgres", 1)], indirect=["alias"]
)
def test_metrics_endpoint_during_a_real_run(
    alias, processes, backend, broker, queue, workers, tmp_path, out
):
    """Valkey: a supervisor's sum over 2 children; Postgres: a single worker's own endpoint."""
    port = free_port()
    ticks, other = queue + "s", queue + "x"
    env = schedule_env(
        {"tick": {"task": "tests.testapp.tasks.add", "every": 1, "args": [1, 2], "queue": ticks}}
    )
    sup = workers(
        [queue, ticks],
        concurrency=3,
        scheduler=True,
        env=env,
        extra=[
            "--processes",
            str(processes),
            "--metrics-port",
            str(port),
            "--metrics-addr",
            "127.0.0.1",
        ],
    )
    text = wait_for(lambda: scrape(port), timeout=60, message=f"/metrics\n{sup.output()}")
    assert value(text, "vtasks_broker_up", backend=alias) == 1

    # every process's slots, summed: 3 free each, then 2 busy while 2 gated tasks run
    slots = 3 * processes
    wait_for(
        lambda: value(scrape(port), "vtasks_worker_slots_free") == slots,
        timeout=60,
        message=f"{slots} free slots\n{scrape(port)}",
    )
    gate = tmp_path / "gate"
    g = gated.using(backend=alias, queue_name=queue)
    held = [g.enqueue(out, str(gate), i) for i in range(2)]
    wait_for(
        lambda: value(scrape(port), "vtasks_worker_slots_busy") == 2,
        timeout=60,
        message="2 busy slots",
    )
    text = scrape(port)
    assert value(text, "vtasks_worker_slots_free") == slots - 2
    assert value(text, "vtasks_queue_inflight", backend=alias, queue=queue) == 2
    gate.touch()

    # 5 successes, 3 failures (fail-fast: dead-lettered), 2 delayed, 3 ready on an idle queue
    ok = [add.using(backend=alias, queue_name=queue).enqueue(i, 1) for i in range(5)]
    bad = [fail.using(backend=alias, queue_name=queue).enqueue("boom") for _ in range(3)]
    later = timezone.now() + timedelta(hours=1)
    for _ in range(2):
        add.using(backend=alias, queue_name=queue, run_after=later).enqueue(0, 0)
    for _ in range(3):
        add.using(backend=alias, queue_name=other).enqueue(0, 0)
    for r in ok + held:
        wait_for(
            lambda r=r: backend.get_result(r.id).status == "SUCCESSFUL",
            timeout=60,
            message=f"task {r.id} to succeed\n{sup.output()}",
        )
    for r in bad:
        wait_for(
            lambda r=r: backend.get_result(r.id).status == "FAILED",
            timeout=60,
            message=f"task {r.id} to fail",
        )
    wait_for(
        lambda: value(scrape(port), "vtasks_worker_slots_busy") == 0,
        timeout=30,
        message="the slots to be free",
    )
    # a scheduled tick ran
    wait_for(
        lambda: (
            value(scrape(port), "vtasks_schedule_runs_total", queue=ticks, schedule="tick") >= 1
        ),
        timeout=60,
        message="a schedule tick to run",
    )

    text = scrape(port)
    add_path, fail_path, gated_path = (t.module_path for t in (add, fail, gated))
    assert value(text, "vtasks_tasks_succeeded_total", queue=queue, task=add_path) == 5
    assert value(text, "vtasks_tasks_succeeded_total", queue=queue, task=gated_path) == 2
    assert value(text, "vtasks_tasks_failed_total", queue=queue, task=fail_path) == 3
    assert value(text, "vtasks_tasks_failed_total", queue=queue, task=add_path) == 0
    assert value(text, "vtasks_tasks_started_total", queue=queue) == 10
    assert value(text, "vtasks_task_duration_seconds_count", queue=queue) == 10
    assert value(text, "vtasks_task_latency_seconds_count", queue=queue) == 10
    assert value(text, "vtasks_task_duration_seconds_sum", queue=queue, task=gated_path) > 0
    # the broker's view of the same run
    q = {"backend": alias, "queue": queue}
    assert value(text, "vtasks_queue_ready", **q) == 0
    assert value(text, "vtasks_queue_delayed", **q) == 2
    assert value(text, "vtasks_queue_inflight", **q) == 0
    assert value(text, "vtasks_queue_dead", **q) == 3
    assert value(text, "vtasks_queue_acked_total", **q) == 7
    assert value(text, "vtasks_queue_failed_total", **q) == 3
    assert value(text, "vtasks_queue_dead_total", **q) == 3
    assert value(text, "vtasks_queue_enqueued_total", **q) == 12
    assert value(text, "vtasks_queue_ready", backend=alias, queue=other) == 3
    assert value(text, "vtasks_queue_schedules", backend=alias, queue=ticks) == 1
    assert (
        value(
            text,
            "vtasks_schedule_next_run_timestamp_seconds",
            backend=alias,
            queue=ticks,
            schedule="tick",
        )
        > 1e9
    )
    ran = value(text, "vtasks_tasks_succeeded_total", queue=ticks)
    assert ran >= value(text, "vtasks_schedule_runs_total", queue=ticks) >= 1

    sup.signal(__import__("signal").SIGTERM)
    assert sup.wait(60) == 0, sup.output()


@pytest.mark.parametrize("alias", ["valkey"], indirect=True)
def test_metrics_view(alias, broker, queue, admin_stack, client):
    admin_stack.ROOT_URLCONF = "tests.ops_urls"
    for _ in range(3):
        add.using(backend=alias, queue_name=queue).enqueue(1, 1)
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/plain")
    text = r.content.decode()
    assert value(text, "vtasks_queue_ready", backend=alias, queue=queue) == 3
    assert value(text, "vtasks_queue_enqueued_total", backend=alias, queue=queue) == 3
    assert value(text, "vtasks_broker_up", backend="postgres") == 1
