"""Server-free checks: schedules, settings normalisation, the task class."""

from datetime import UTC

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
    from datetime import datetime

    from django_vtasks import _native

    jan1 = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)  # a Thursday
    nxt = _native.cron_next(crontab("0 9 * * 1").to_cron(), jan1)
    assert datetime.fromtimestamp(nxt / 1000, UTC) == datetime(2026, 1, 5, 9, tzinfo=UTC)


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
    from django_vtasks.retry import RetryPolicy
    from django_vtasks.tasks import VTask
    from tests.testapp import tasks as t

    assert isinstance(t.flaky, VTask) and t.flaky.retries == 2  # Django 6.1 forwards @task kwargs
    u = t.add.using(unique=True, retries=4, priority=3)
    assert u.unique is True and u.retries == 4 and u.priority == 3
    assert RetryPolicy.of(u, "default") == RetryPolicy(4, 1.0)
    assert RetryPolicy.of(t.add, "default") == RetryPolicy(0, 1.0)
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
    r = make_result(
        t.add,
        "a" * 32,
        TaskResultStatus.SUCCESSFUL,
        now,
        now,
        now,
        now,
        [1, 2],
        {},
        "default",
        [],
        ["worker-1"],
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [result_to_json(r) for _ in range(200)]
        per_item = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert per_item < 2 * len(kept[0]) + 200, (per_item, len(kept[0]))


def test_envelope_template_is_the_dict_form_byte_for_byte():
    """One envelope, two writers: the %-template every enqueue uses and build_envelope's dict
    (schedules, tools) give the same bytes, whatever the task's options and arguments."""
    from datetime import UTC, datetime

    import orjson

    from django_vtasks.envelope import build_envelope, envelope_template, template_for
    from tests.testapp.tasks import add, flaky, with_context

    tasks = [
        add,
        with_context,
        add.using(
            priority=-7,
            queue_name="q%s%%",
            run_after=datetime(2030, 1, 2, 3, 4, 5, 678, tzinfo=UTC),
        ),
        flaky,
        add.using(retries=3, retry_backoff=0.5, unique="k%1"),
        flaky.using(retries=0, queue_name="ünï"),
    ]
    cases = [
        ([], {}),
        ([1, "a%sb", None, 2.5], {"k": "v%d", "é": [1, {"x": True}]}),
        (["\u2028", '"q"\\'], {}),
    ]
    for task in tasks:
        template = envelope_template(task, "alias%")
        assert template_for(task, "alias%") == template
        for ts in (1_765_000_000.123456, 0.1, 1e-7):
            for args, kwargs in cases:
                rid = "0123abcd" * 4
                assert template % (
                    orjson.dumps(args),
                    orjson.dumps(kwargs),
                    orjson.dumps(ts),
                    rid.encode(),
                ) == orjson.dumps(build_envelope(task, args, kwargs, rid, "alias%", ts))


def test_retry_policy_is_the_one_rule():
    from django.test import override_settings

    from django_vtasks.retry import CRASH_ATTEMPTS, RetryPolicy
    from tests.testapp.tasks import add

    assert RetryPolicy.of(add, "q") == RetryPolicy(0, 1.0)
    assert RetryPolicy().max_attempts is None and RetryPolicy().retry_ms(1) is None
    p = RetryPolicy.of(add.using(retries=3, retry_backoff=0.5), "q")
    assert p.max_attempts == 3 + 1 + CRASH_ATTEMPTS
    assert RetryPolicy.max_attempts_of(add.using(retries=3), "q", {}) == p.max_attempts
    assert RetryPolicy.max_attempts_of(add, "q", {"q": {"retries": 2}}) == 2 + 1 + CRASH_ATTEMPTS
    assert [p.retry_ms(a) for a in (1, 2, 3, 4)] == [500, 1000, 2000, None]
    with override_settings(VTASKS_RETRIES={"q": {"retries": 2, "backoff": 3}}):
        assert RetryPolicy.of(add, "q") == RetryPolicy(2, 3.0)
        assert RetryPolicy.of(add, "other") == RetryPolicy(0, 1.0)
        assert RetryPolicy.of(add.using(retries=0), "q").retries == 0  # the task's option wins


def test_protocol_md_limits_table_is_the_shared_crates():
    """PROTOCOL.md's "Limits" table and VT.INFO's field list say what the vtasks-protocol crate
    defines (which the native extension exposes and the Postgres adapter uses)."""
    import re
    from pathlib import Path

    from django_vtasks import _native
    from django_vtasks.broker import INFO_FIELDS

    text = (Path(__file__).resolve().parents[2] / "PROTOCOL.md").read_text()
    section = text.split("\n### Limits\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (-?\d+) \|", section, re.M)
    assert len(rows) == len(_native.LIMITS)
    assert {name: int(value) for name, value in rows} == _native.LIMITS
    info = text.split("\n### VT.INFO\n", 1)[1].split("\n#", 1)[0]
    listed = re.findall(r"`(\w+)`", info.split("Reply:", 1)[1].split(". A\n", 1)[0])
    assert tuple(listed[: len(INFO_FIELDS)]) == INFO_FIELDS == _native.INFO_FIELDS
