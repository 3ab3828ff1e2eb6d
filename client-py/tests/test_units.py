"""Server-free checks: schedules, settings normalisation, the task class."""

import pytest

from django_vtasks.scheduler import crontab, schedule_spec


def test_crontab_fields_and_expressions():
    assert crontab(minute="*/5").to_cron() == "0 */5 * * * *"
    # crontab's day-of-week numbers go to the broker as they are: it reads them as crontab does
    assert crontab(minute=0, hour=3, day_of_week="1-5").to_cron() == "0 0 3 * * 1-5"
    assert crontab("0 3 * * 0").to_cron() == "0 3 * * 0"
    assert crontab(" 0  3 * * 7 ").to_cron() == "0 3 * * 7"
    assert crontab("*/10 * * * * *").to_cron() == "*/10 * * * * *"
    assert crontab("@weekly").to_cron() == "@weekly"
    assert crontab(day_of_week="0,6").to_cron() == "0 * * * * 0,6"
    for bad in ("* * *", "0 9 * * 8", "@reboot", "0 0 30 2 *"):
        with pytest.raises(ValueError):
            crontab(bad).to_cron()


def test_crontab_monday_is_monday_in_both_backends_reading():
    from datetime import datetime, timezone

    from django_vtasks import _native

    jan1 = int(datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)  # a Thursday
    nxt = _native.cron_next(crontab("0 9 * * 1").to_cron(), jan1)
    assert datetime.fromtimestamp(nxt / 1000, timezone.utc) == datetime(2026, 1, 5, 9, tzinfo=timezone.utc)


def test_schedule_spec():
    from datetime import timedelta

    assert schedule_spec(30) == (None, 30000)
    assert schedule_spec(0.5) == (None, 500)
    assert schedule_spec(timedelta(minutes=1)) == (None, 60000)
    assert schedule_spec(crontab(hour=1, minute=0)) == ("0 0 1 * * *", None)
    with pytest.raises(ValueError):
        schedule_spec(-1)


def test_prefix_normalised(settings):
    from django_vtasks.conf import valkey_prefix

    settings.VTASKS_VALKEY_PREFIX = "myapp"
    assert valkey_prefix() == "myapp:"
    settings.VTASKS_VALKEY_PREFIX = "myapp:"
    assert valkey_prefix() == "myapp:"


def test_queue_keys_use_a_hash_tag():
    from django_vtasks.backends.valkey import ValkeyBroker

    b = ValkeyBroker("valkey://127.0.0.1:1/0", prefix="vt:")
    assert b.key("default") == "vt:{default}"
    assert b.queue_name(b"vt:{default}") == "default"


def test_task_decorator_options():
    from django_vtasks import task
    from django_vtasks.tasks import VTask, retry_policy
    from tests.testapp import tasks as t

    assert isinstance(t.flaky, VTask) and t.flaky.retries == 2  # Django 6.1 forwards @task kwargs
    u = t.add.using(unique=True, retries=4, priority=3)
    assert u.unique is True and u.retries == 4 and u.priority == 3
    assert retry_policy(u, "default") == (4, 1.0)
    assert retry_policy(t.add, "default") == (0, 1.0)
    with pytest.raises(TypeError):
        task(run_after=1)(lambda: None)


def test_result_json_is_right_sized():
    """The worker holds each finished task's result JSON until its ack is flushed: the bytes must
    not carry orjson's working buffer (>= 4 KiB per call since orjson 3.12), which was most of
    the worker's peak RSS at concurrency 200."""
    import tracemalloc

    from django.tasks.base import TaskResultStatus
    from django.utils import timezone

    from django_vtasks.results import make_result, result_to_json
    from tests.testapp import tasks as t

    now = timezone.now()
    r = make_result(t.add, "a" * 32, TaskResultStatus.SUCCESSFUL, now, now, now, now, [1, 2], {},
                    "default", [], ["worker-1"])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [result_to_json(r) for _ in range(200)]
        per_item = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_item < 2 * len(kept[0]) + 200, (per_item, len(kept[0]))
