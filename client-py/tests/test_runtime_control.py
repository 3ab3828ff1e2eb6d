"""Issue 17's runtime controls with real workers and real servers (Valkey, Valkey Cluster,
Postgres): rate limits from OPTIONS["RATE_LIMITS"], VTASKS_ROUTES, and schedules paused, resumed
and run from ``manage.py vtasks_schedules``."""

import json
import time
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from tests.conftest import read_lines, schedule_env, wait_for
from tests.testapp import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)


# ---- rate limits from OPTIONS -----------------------------------------------------------------


def test_worker_applies_rate_limits_and_tasks_still_all_run(alias, broker, queue, workers, out):
    env = {"VTASKS_TEST_RATE_LIMITS": json.dumps({queue: "4/s"})}
    for i in range(10):
        t.record.using(queue_name=queue, backend=alias).enqueue(out, i)
    w = workers([queue], env=env)
    wait_for(lambda: broker.rate_limit_get(queue) is not None, timeout=30, message="limit set")
    assert broker.rate_limit_get(queue)["limit"] == 4
    wait_for(lambda: len(read_lines(out)) == 10, timeout=30, message="all tasks ran")
    # a second worker with the same settings keeps the bucket as it is (no fresh burst)
    before = broker.rate_limit_get(queue)
    w2 = workers([queue], env=env)
    time.sleep(1.0)
    assert broker.rate_limit_get(queue)["burst"] == before["burst"]
    w.stop()
    w2.stop()


def test_bad_rate_limits_fail_the_system_check(backend):
    from django_vtasks.ratelimits import parse_rate, rate_limit_checks

    assert parse_rate("100/s") == (100, 1000, 100)
    assert parse_rate("30/5s") == (30, 5000, 30)
    assert parse_rate({"limit": 5, "per": "500ms", "burst": 20}) == (5, 500, 20)
    backend.options["RATE_LIMITS"] = {"emails": "100 per second"}
    try:
        [e] = rate_limit_checks(backend)
        assert e.id == "django_vtasks.E021" and "emails" in e.msg
    finally:
        backend.options["RATE_LIMITS"] = {}


# ---- VTASKS_ROUTES ----------------------------------------------------------------------------


def test_routes_pick_queue_and_priority_and_explicit_wins(alias, broker, queue, out):
    other = queue + "x"
    routes = {
        "tests.testapp.tasks.nothing": {"queue": "never"},
        "tests.testapp.tasks.rec*": {"queue": queue, "priority": 7},
    }
    with override_settings(VTASKS_ROUTES=routes):
        r = t.record.using(backend=alias).enqueue(out, 1)
        assert r.task.queue_name == queue and r.task.priority == 7
        [rec] = broker.peek(queue, "ready")
        assert rec.id == r.id and rec.priority == 7
        # named on the call: the route does not apply (the priority given wins too)
        r2 = t.record.using(backend=alias, queue_name=other, priority=3).enqueue(out, 2)
        assert [x.id for x in broker.peek(other, "ready")] == [r2.id]
        assert broker.peek(other, "ready")[0].priority == 3
        # enqueue_many routes alike
        from django.tasks import task_backends

        many = task_backends[alias].enqueue_many(
            [(t.record.using(backend=alias), (out, i), {}) for i in range(3)]
        )
        assert {m.task.queue_name for m in many} == {queue}
        assert broker.info(queue)["ready"] == 4
    with override_settings(VTASKS_ROUTES={}):
        r3 = t.record.using(backend=alias).enqueue(out, 3)
        assert r3.task.queue_name == "default"
        broker.delete("default", [r3.id])


@pytest.mark.parametrize(
    "routes,words",
    [
        (["x"], "must be a dict"),
        ({"a.*": "emails"}, "must be a dict like"),
        ({"a.*": {"queue": ""}}, "queue"),
        ({"a.*": {"priority": 500}}, "priority"),
        ({"a.*": {"qeue": "x"}}, "unknown"),
    ],
)
def test_bad_routes_fail_the_system_check(backend, routes, words):
    from django_vtasks.routes import route_checks

    with override_settings(VTASKS_ROUTES=routes):
        [e] = route_checks(backend)
    assert e.id == "django_vtasks.E020" and words in e.msg


def test_routes_to_a_queue_the_backend_does_not_allow_fail_the_check(backend):
    from django_vtasks.routes import route_checks

    backend.queues = {"default"}
    try:
        with override_settings(VTASKS_ROUTES={"*": {"queue": "emails"}}):
            [e] = route_checks(backend)
        assert "emails" in e.msg
    finally:
        backend.queues = set()


# ---- schedules at runtime: the management command and a real scheduler -------------------------


def _cmd(*args, alias):
    buf = StringIO()
    call_command("vtasks_schedules", *args, backend=alias, stdout=buf)
    return buf.getvalue()


def test_pause_survives_a_scheduler_restart_and_run_enqueues_once(
    alias, broker, queue, workers, out
):
    env = schedule_env(
        {
            "tick": {
                "task": "tests.testapp.tasks.record",
                "every": 0.3,
                "queue": queue,
                "args": [out, "t"],
            }
        }
    )
    sched = {
        "tick": {
            "task": "tests.testapp.tasks.record",
            "schedule": 0.3,
            "queue": queue,
            "args": [out, "t"],
        }
    }
    w = workers([queue], scheduler=True, env=env)
    wait_for(lambda: len(read_lines(out)) >= 1, timeout=30, message="a first tick")
    with override_settings(VTASKS_SCHEDULE=sched):
        assert "Paused schedule 'tick'" in _cmd("pause", "tick", alias=alias)
        listed = _cmd("list", alias=alias)
        assert "tick" in listed and "paused" in listed
        w.stop()
        # changed settings are registered again by a new scheduler: the pause stays
        env2 = schedule_env(
            {
                "tick": {
                    "task": "tests.testapp.tasks.record",
                    "every": 0.25,
                    "queue": queue,
                    "args": [out, "t"],
                }
            }
        )
        w2 = workers([queue], scheduler=True, env=env2)
        wait_for(
            lambda: "schedule tick registered" in w2.output(), timeout=30, message="re-registered"
        )
        assert broker.schedule_list(queue)[0].spec == "250"
        time.sleep(0.5)
        n = len(read_lines(out))
        time.sleep(1.5)  # five ticks would be due
        assert len(read_lines(out)) == n, "a paused schedule fired"
        assert broker.schedule_list(queue)[0].paused
        assert "Enqueued task" in _cmd("run", "tick", alias=alias)
        wait_for(lambda: len(read_lines(out)) == n + 1, timeout=30, message="the run-now task")
        assert "Resumed" in _cmd("resume", "tick", alias=alias)
        wait_for(lambda: len(read_lines(out)) >= n + 3, timeout=30, message="ticks after resume")
        with pytest.raises(CommandError, match="No schedule 'nope'"):
            _cmd("pause", "nope", alias=alias)
        with pytest.raises(CommandError, match="NAME"):
            _cmd("run", alias=alias)
    w2.stop()


def test_schedule_entries_without_a_queue_follow_the_routes(alias):
    from types import SimpleNamespace

    from django_vtasks.scheduler import schedule_queue
    from django_vtasks.worker.schedules import ScheduleRegistrar

    entry = {"task": "tests.testapp.tasks.record", "schedule": 5, "args": ["/dev/null", 1]}
    routes = {"tests.testapp.tasks.rec*": {"queue": "routed", "priority": 4}}
    with override_settings(
        VTASKS_ROUTES=routes, VTASKS_SCHEDULE={"s": entry, "mine": {**entry, "queue": "own"}}
    ):
        assert schedule_queue(entry, alias) == "routed"
        got = ScheduleRegistrar(SimpleNamespace(alias=alias)).entries()
        assert (got["s"][0], got["s"][4]) == ("routed", 4)
        assert got["mine"][0] == "own"
