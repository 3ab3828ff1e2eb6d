"""Tasks that control their run, through a real worker on every engine (Valkey, Valkey Cluster,
Postgres): hard and soft time limits, cancel by id (waiting and running tasks, async and sync),
retry_on and Retry(delay=...). Broker-level cancel semantics are in test_broker_contract.py."""

from datetime import timedelta

import pytest
from django.tasks import TaskResultStatus
from django.utils import timezone

from tests.conftest import read_lines, wait_for
from tests.testapp import control_tasks as ct
from tests.testapp import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)

CANCELLED = "django_vtasks.exceptions.TaskCancelled"
#: the worker-side features (time limits, retry control) are the same on any Valkey: the
#: cluster runs the cancel tests (VT.CANCEL is a keyed command), the others run on one node
ONE_NODE = pytest.mark.parametrize("alias", ["valkey", "postgres"], indirect=True)
TIME_LIMIT = "django_vtasks.exceptions.TimeLimitExceeded"


def on(task, alias, queue, **kw):
    return task.using(backend=alias, queue_name=queue, **kw)


def finished(backend, rid):
    def check():
        r = backend.get_result(rid)
        return r if r.is_finished else None

    return check


def test_cancel_waiting_tasks_fails_them_at_once(backend, broker, alias, queue):
    ready = on(t.add, alias, queue).enqueue(1, 2)
    later = on(t.add, alias, queue, run_after=timezone.now() + timedelta(hours=1)).enqueue(3, 4)
    assert backend.cancel(ready.id, "not needed") == "removed"
    assert backend.cancel(later.id) == "removed"
    for rid, reason in ((ready.id, "cancelled: not needed"), (later.id, "cancelled")):
        r = backend.get_result(rid)
        assert r.status == TaskResultStatus.FAILED, rid
        assert [e.exception_class_path for e in r.errors] == [CANCELLED]
        assert r.errors[0].traceback == reason
        assert broker.get(queue, rid).state == "dead"
    info = broker.info(queue)
    assert (info["ready"], info["delayed"], info["dead"]) == (0, 0, 2)
    # nothing left to cancel: finished (dead) and unknown ids
    assert backend.cancel(ready.id) is None
    assert backend.cancel("no-such-task") is None


def test_acancel_is_the_async_form(backend, broker, alias, queue):
    import asyncio

    r = on(t.add, alias, queue).enqueue(1, 2)

    async def run():
        try:
            return await backend.acancel(r.id, "async"), await backend.aget_result(r.id)
        finally:
            await broker.aclose()

    outcome, result = asyncio.run(run())
    assert outcome == "removed"
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].traceback == "cancelled: async"


def test_cancel_running_tasks(backend, broker, alias, queue, workers, out, tmp_path):
    """A running task is flagged; its worker learns it at its next heartbeat (lease/4): an async
    task is cancelled, a sync task sees context.cancel_requested, and a sync task that ignores
    the flag loses its lease (no longer extended) and is dead-lettered as cancelled, never run
    again, even though its thread runs to its end."""
    a_out, s_out, o_out = (str(tmp_path / n) for n in ("a", "s", "o"))
    ra = on(ct.async_until_cancelled, alias, queue).enqueue(a_out, 60)
    rs = on(ct.sync_until_cancelled, alias, queue).enqueue(s_out, 60)
    ro = on(t.sleep_record, alias, queue).enqueue(o_out, "x", 3)
    workers([queue], lease=1)
    for path in (a_out, s_out, o_out):
        wait_for(lambda p=path: read_lines(p), message=f"{path} started")
    assert [backend.cancel(r.id, "stop") for r in (ra, rs, ro)] == ["flagged"] * 3
    for r, lines, path in ((ra, "cancelled", a_out), (rs, "saw cancel", s_out)):
        done = wait_for(finished(backend, r.id), timeout=20)
        assert done.status == TaskResultStatus.FAILED
        assert done.errors[-1].exception_class_path == CANCELLED
        assert lines in read_lines(path)
        assert done.attempts == 1  # never retried
    # the oblivious one: its lease ran out unextended, so the broker buried it as cancelled
    done = wait_for(finished(backend, ro.id), timeout=20)
    assert done.status == TaskResultStatus.FAILED
    assert done.errors[-1].traceback == "cancelled: stop"
    wait_for(lambda: "done x" in read_lines(o_out), timeout=20, message="its thread ended")
    # its late success changes nothing
    assert backend.get_result(ro.id).status == TaskResultStatus.FAILED
    assert broker.info(queue)["inflight"] == 0
    assert broker.get(queue, ro.id).state == "dead"


@ONE_NODE
def test_time_limits(backend, broker, alias, queue, workers, tmp_path):
    """Hard limit: an async task is cancelled, a sync task abandoned (its thread runs on, its
    late result is discarded); both fail with TimeLimitExceeded. The soft limit shows first."""
    s_out, a_out = str(tmp_path / "s"), str(tmp_path / "a")
    rs = on(ct.sync_overrun, alias, queue).enqueue(s_out, 2)
    ra = on(ct.async_overrun, alias, queue).enqueue(a_out)
    # a per-call limit travels with the task (.using): 60 s is never reached
    ok = on(ct.quick, alias, queue).using(time_limit=60).enqueue(1, 2)
    workers([queue])
    for r in (rs, ra):
        done = wait_for(finished(backend, r.id), timeout=20)
        assert done.status == TaskResultStatus.FAILED, r
        assert [e.exception_class_path for e in done.errors] == [TIME_LIMIT]
    assert read_lines(s_out)[:2] == ["start", "soft True"]
    assert read_lines(a_out) == ["start", "cancelled"]
    assert wait_for(finished(backend, ok.id)).return_value == 3
    wait_for(lambda: "late" in read_lines(s_out), timeout=20, message="the thread ended")
    assert backend.get_result(rs.id).status == TaskResultStatus.FAILED
    assert broker.info(queue)["inflight"] == 0


@ONE_NODE
def test_queue_time_limit_setting(backend, alias, queue, workers, tmp_path):
    path = str(tmp_path / "o")
    r = on(t.sleep_record, alias, queue).enqueue(path, "x", 3)
    workers([queue], env={"VTASKS_TEST_TIME_LIMITS": f'{{"{queue}": {{"time_limit": 0.3}}}}'})
    done = wait_for(finished(backend, r.id), timeout=20)
    assert done.status == TaskResultStatus.FAILED
    assert done.errors[-1].exception_class_path == TIME_LIMIT


@ONE_NODE
def test_retry_on_and_retry_exception(backend, alias, queue, workers, tmp_path):
    path = str(tmp_path / "o")
    conn = on(ct.fails_with, alias, queue).enqueue("connection")
    value = on(ct.fails_with, alias, queue).enqueue("value")
    asks = on(ct.asks_retry, alias, queue).enqueue(path)
    workers([queue])
    c = wait_for(finished(backend, conn.id), timeout=20)
    assert c.status == TaskResultStatus.FAILED and c.attempts == 4  # retried 3 times
    v = wait_for(finished(backend, value.id), timeout=20)
    assert v.status == TaskResultStatus.FAILED and v.attempts == 1  # not in retry_on
    assert [e.exception_class_path for e in v.errors] == ["builtins.ValueError"]
    # Retry(delay=0.1) overrides the 30 s backoff; the second attempt sees the first's error
    a = wait_for(finished(backend, asks.id), timeout=20)
    assert a.status == TaskResultStatus.SUCCESSFUL and a.return_value == 2
    assert read_lines(path) == [
        "attempt 1 prev None",
        "attempt 2 prev django_vtasks.exceptions.Retry",
    ]


@ONE_NODE
def test_a_run_the_loop_cannot_end_loses_its_lease(backend, broker, alias, queue, workers, out):
    """An async task blocking the event loop past its time limit cannot be cancelled by the
    loop: the heartbeat thread cancels it in the broker, so its lease is extended no more and it
    is dead-lettered when the lease runs out; its late success is not stored."""
    r = on(ct.blocks_the_loop, alias, queue).enqueue(out, 6)
    workers([queue], lease=1, concurrency=1)
    wait_for(lambda: read_lines(out), message="started")

    def buried():
        broker.maintain()  # (Postgres: what another worker's maintenance does; Valkey: no-op)
        record = broker.get(queue, r.id)
        return record is not None and record.state == "dead" and record

    record = wait_for(buried, timeout=20, message="dead-lettered while the loop is blocked")
    assert record.error == "cancelled: time limit of 0.3s exceeded"
    assert read_lines(out) == ["start"]  # still blocked: the broker acted, not the worker
    # once unblocked, the worker settles it (without storing its success) and runs the next task
    after = on(ct.quick, alias, queue).enqueue(1, 2)
    assert wait_for(finished(backend, after.id), timeout=20).return_value == 3
    assert read_lines(out) == ["start", "unblocked"]
    done = backend.get_result(r.id)
    assert done.status == TaskResultStatus.FAILED
    assert done.errors[-1].exception_class_path == CANCELLED
