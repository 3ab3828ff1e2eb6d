"""The conformance suite: every behaviour, on both backends (alias "valkey" and "postgres").

Workers are real `python -m django runworker` subprocesses; waits are bounded polls.
"""

import asyncio
import os
import signal
import time
import uuid
from datetime import datetime, timedelta

import orjson
import pytest
from django.db import connections, transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.test import override_settings
from django.utils import timezone

from django_vtasks.broker import EnqueueRequest, get_broker
from django_vtasks.envelope import decode_envelope, encode_envelope
from tests.conftest import read_lines, schedule_env, wait_for
from tests.testapp import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)


def on(task, alias, queue, **kw):
    return task.using(backend=alias, queue_name=queue, **kw)


def finished(backend, rid):
    def check():
        r = backend.get_result(rid)
        return r if r.is_finished else None

    return check


# ---- enqueue: the Django contract ----------------------------------------------------------------


def test_enqueue_returns_ready_result(backend, broker, alias, queue):
    r = on(t.add, alias, queue).enqueue((1, 2), b=(3, 4))
    assert r.status == TaskResultStatus.READY
    assert r.id and r.enqueued_at is not None and r.started_at is None
    assert r.args == [[1, 2]] and r.kwargs == {"b": [3, 4]}  # normalised like Django
    assert r.backend == alias and r.worker_ids == [] and r.attempts == 0
    info = broker.info(queue)
    assert info["ready"] == 1
    # readable before any worker ran it, from the queue itself
    got = backend.get_result(r.id)
    assert got.status == TaskResultStatus.READY and got.args == [[1, 2]]
    assert got.task.func is t.add.func
    assert got.task == on(t.add, alias, queue)  # same queue, backend, priority, run_after
    assert on(t.add, alias, queue).get_result(r.id).id == r.id


def test_bad_arguments_raise_synchronously(broker, alias, queue):
    with pytest.raises(TypeError):
        on(t.add, alias, queue).enqueue(datetime.now(), 1)
    with pytest.raises(TypeError):
        on(t.add, alias, queue).enqueue(uuid.uuid4(), 1)
    assert broker.info(queue)["ready"] == 0


def test_validate_task_on_enqueue(alias, queue, settings):
    task = on(t.add, alias, queue)
    tasks = dict(settings.TASKS)
    tasks[alias] = {**tasks[alias], "QUEUES": ["only-this-one"]}
    with override_settings(TASKS=tasks):
        with pytest.raises(InvalidTask, match="is not valid for backend"):
            task.enqueue(1, 2)
        with pytest.raises(InvalidTask):
            asyncio.run(task.aenqueue(1, 2))


def test_invalid_priority_rejected(alias, queue):
    with pytest.raises(InvalidTask):
        on(t.add, alias, queue, priority=101)


def test_flags(backend):
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_priority and backend.supports_get_result


def test_unknown_result_id(backend):
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("no-such-id")
    with pytest.raises(TaskResultDoesNotExist):
        asyncio.run(backend.aget_result("no-such-id"))


def test_enqueued_signal(alias, queue):
    from django.tasks.signals import task_enqueued

    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((sender, task_result.id, task_result.status))

    task_enqueued.connect(receiver)
    try:
        r = on(t.add, alias, queue).enqueue(1, 2)
    finally:
        task_enqueued.disconnect(receiver)
    assert seen == [(type(task_backends[alias]), r.id, TaskResultStatus.READY)]


def test_enqueued_signal_from_async_code_and_async_receivers(alias, queue):
    from django.tasks.signals import task_enqueued

    seen_sync, seen_async = [], []

    def sync_receiver(sender, task_result, **kwargs):
        with connections["default"].cursor() as cursor:  # not on the event loop: the ORM works
            cursor.execute("SELECT 1")
        connections["default"].close()
        seen_sync.append(task_result.id)

    async def async_receiver(sender, task_result, **kwargs):
        await asyncio.sleep(0)
        seen_async.append(task_result.id)

    async def enqueue_async():
        one = await on(t.add, alias, queue).aenqueue(1, 2)
        many = await task_backends[alias].aenqueue_many(
            [(on(t.add, alias, queue), (i, i), {}) for i in range(3)]
        )
        return [one, *many]

    task_enqueued.connect(sync_receiver)
    task_enqueued.connect(async_receiver)
    try:
        results = asyncio.run(enqueue_async())
        results.append(on(t.add, alias, queue).enqueue(5, 6))  # sync caller, async receiver
    finally:
        task_enqueued.disconnect(sync_receiver)
        task_enqueued.disconnect(async_receiver)
    ids = [r.id for r in results]
    assert seen_sync == ids and seen_async == ids


# ---- running: results, statuses, signals ---------------------------------------------------------


def test_run_sync_and_async_tasks_and_results(backend, broker, alias, queue, workers):
    r1 = on(t.add, alias, queue).enqueue(2, 3)
    r2 = asyncio.run(on(t.aadd, alias, queue).aenqueue(4, 5))
    w = workers([queue])
    done1 = wait_for(finished(backend, r1.id), message="sync task result")
    done2 = wait_for(finished(backend, r2.id), message="async task result")
    assert done1.status == TaskResultStatus.SUCCESSFUL and done1.return_value == 5
    assert done2.status == TaskResultStatus.SUCCESSFUL and done2.return_value == 9
    assert done1.worker_ids == [w.worker_id] and done1.attempts == 1
    assert done1.started_at and done1.finished_at and done1.last_attempted_at
    assert done1.enqueued_at <= done1.started_at <= done1.finished_at
    # refresh() / arefresh() on the original result, from another process's writes
    r1.refresh()
    assert r1.status == TaskResultStatus.SUCCESSFUL and r1.return_value == 5
    asyncio.run(r2.arefresh())
    assert r2.return_value == 9
    got = asyncio.run(backend.aget_result(r1.id))
    assert got.return_value == 5
    wait_for(lambda: broker.info(queue)["inflight"] == 0 and broker.info(queue)["ready"] == 0)
    assert w.stop() == 0


def test_failures_are_dead_lettered_with_tracebacks(backend, broker, alias, queue, workers):
    rf = on(t.fail, alias, queue).enqueue("boom")
    rx = on(t.exit_task, alias, queue).enqueue()
    rn = on(t.non_json, alias, queue).enqueue()
    ok = on(t.add, alias, queue).enqueue(1, 1)
    workers([queue])
    f = wait_for(finished(backend, rf.id))
    x = wait_for(finished(backend, rx.id))
    n = wait_for(finished(backend, rn.id))
    assert wait_for(finished(backend, ok.id)).return_value == 2  # the worker kept going
    assert f.status == TaskResultStatus.FAILED
    assert f.errors[0].exception_class_path == "builtins.ValueError"
    assert "boom" in f.errors[0].traceback and "Traceback" in f.errors[0].traceback
    assert f.errors[0].exception_class is ValueError
    with pytest.raises(ValueError, match="Task failed"):
        f.return_value  # noqa: B018 - the property raises
    assert x.status == TaskResultStatus.FAILED
    assert x.errors[0].exception_class_path == "builtins.SystemExit"
    assert n.status == TaskResultStatus.FAILED
    assert n.errors[0].exception_class_path == "builtins.TypeError"
    wait_for(lambda: broker.info(queue)["dead"] == 3, message="3 dead tasks")
    dead = {d.id: d for d in broker.peek(queue, "dead", count=10)}
    assert set(dead) == {rf.id, rx.id, rn.id}
    assert "ValueError: boom" in dead[rf.id].error
    assert dead[rf.id].envelope["func"] == t.fail.module_path


def test_signals_in_worker(alias, queue, workers, tmp_path):
    log = str(tmp_path / "signals.txt")
    w = workers([queue], env={"VTASKS_TEST_SIGNAL_LOG": log})
    ok = on(t.add, alias, queue).enqueue(1, 2)
    bad = on(t.fail, alias, queue).enqueue("x")
    backend = task_backends[alias]
    wait_for(finished(backend, ok.id))
    wait_for(finished(backend, bad.id))
    lines = wait_for(
        lambda: [ln for ln in read_lines(log) if ln.startswith("finished")] and read_lines(log)
    )
    wait_for(lambda: len([ln for ln in read_lines(log) if ln.startswith("finished")]) == 2)
    lines = read_lines(log)
    cls = type(backend).__name__
    assert f"started {ok.id} RUNNING {w.worker_id} {cls} -" in lines
    assert f"finished {ok.id} SUCCESSFUL {w.worker_id} {cls} -" in lines
    assert f"started {bad.id} RUNNING {w.worker_id} {cls} -" in lines
    # sent inside the except: Django's log receiver gets exc_info
    assert f"finished {bad.id} FAILED {w.worker_id} {cls} ValueError" in lines


def test_takes_context_and_retries(backend, alias, queue, workers):
    rc = on(t.with_context, alias, queue).enqueue(7)
    rf = on(t.flaky, alias, queue).enqueue(2)  # fails twice, retries=2 → succeeds on attempt 3
    rd = on(t.flaky, alias, queue).enqueue(5)  # fails 3 times → dead after its 2 retries
    w = workers([queue])
    c = wait_for(finished(backend, rc.id))
    assert c.return_value == {"attempt": 1, "id": rc.id, "x": 7}
    f = wait_for(finished(backend, rf.id), timeout=20)
    assert f.status == TaskResultStatus.SUCCESSFUL and f.return_value == 3
    assert len(f.errors) == 2 and f.attempts == 3 and f.worker_ids == [w.worker_id] * 3
    d = wait_for(finished(backend, rd.id), timeout=20)
    assert d.status == TaskResultStatus.FAILED and len(d.errors) == 3


def test_retry_setting_per_queue(backend, alias, queue, workers):
    # @task(retries=...) absent: VTASKS_RETRIES[queue] applies (in the worker's settings)
    r = on(t.fail, alias, queue).enqueue("again")
    workers(
        [queue], env={"VTASKS_TEST_RETRIES": f'{{"{queue}": {{"retries": 1, "backoff": 0.05}}}}'}
    )
    d = wait_for(finished(backend, r.id), timeout=20)
    assert d.status == TaskResultStatus.FAILED and len(d.errors) == 2 and d.attempts == 2


# ---- ordering, deferral, transactions, bulk ------------------------------------------------------


def test_priority_order(alias, queue, workers, out):
    for p in (-100, 0, 50, 100, -5, 7):
        on(t.record, alias, queue, priority=p).enqueue(out, p)
    workers([queue], concurrency=1)
    wait_for(lambda: len(read_lines(out)) == 6)
    assert [int(x) for x in read_lines(out)] == [100, 50, 7, 0, -5, -100]


def test_run_after(backend, broker, alias, queue, workers, out):
    workers([queue])
    warm = on(t.add, alias, queue).enqueue(0, 0)
    wait_for(finished(backend, warm.id))  # the worker is up and fetching
    when = timezone.now() + timedelta(seconds=1.5)
    r = on(t.record, alias, queue, run_after=when).enqueue(out, "late")
    now = on(t.record, alias, queue).enqueue(out, "now")
    assert [rec.id for rec in broker.peek(queue, "delayed")] == [r.id]
    assert backend.get_result(r.id).status == TaskResultStatus.READY
    done = wait_for(finished(backend, r.id), timeout=10)
    assert read_lines(out) == ["now", "late"]
    assert done.started_at >= when
    assert wait_for(finished(backend, now.id)).started_at < when


def test_transaction_rollback_and_commit(backend, broker, alias, queue, workers, out):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with transaction.atomic():
            on(t.record, alias, queue).enqueue(out, "rolled back")
            raise Boom
    with transaction.atomic():
        r = on(t.record, alias, queue).enqueue(out, "committed")
        # not visible to a worker before the commit
        assert broker.info(queue)["ready"] == 0
    assert broker.info(queue)["ready"] == 1
    workers([queue])
    wait_for(finished(backend, r.id))
    assert read_lines(out) == ["committed"]
    assert broker.info(queue)["enqueued_total"] == 1


def test_a_resent_enqueue_is_one_task_and_counts_as_enqueued(backend, broker, alias, queue):
    # A client that lost the reply resends the same request (same id): the broker keeps one task
    # and answers nil; the backend must still count that task as enqueued (task_enqueued).
    result, request = backend._prepare(on(t.add, alias, queue), (1, 2), {})
    assert broker.enqueue([request]) == [request.id]
    resent = broker.enqueue([request])
    assert resent == [None] and broker.info(queue)["ready"] == 1
    assert backend._added([result], resent, [request]) == [result]
    # with a unique key a nil means what it says: the key is held, nothing was enqueued
    u_result, u_request = backend._prepare(on(t.add, alias, queue, unique=True), (1, 2), {})
    assert broker.enqueue([u_request]) == [u_request.id]
    u2_result, u2_request = backend._prepare(on(t.add, alias, queue, unique=True), (1, 2), {})
    held = broker.enqueue([u2_request])
    assert held == [None] and backend._added([u2_result], held, [u2_request]) == []
    assert broker.info(queue)["ready"] == 2


def test_unique_lock_taken_after_commit(broker, alias, queue):
    task = on(t.add, alias, queue, unique=True)
    with pytest.raises(ZeroDivisionError):
        with transaction.atomic():
            task.enqueue(1, 2)
            raise ZeroDivisionError
    # the rolled-back enqueue left no unique key behind
    task.enqueue(1, 2)
    task.enqueue(1, 2)  # suppressed: key held
    task.enqueue(1, 3)  # other arguments: another key
    assert broker.info(queue)["ready"] == 2


def test_enqueue_many(backend, broker, alias, queue, workers, out):
    q2 = queue + "b"
    if alias == "valkey_cluster":  # one worker fetch reads queues of one slot only
        from django_vtasks.backends.valkey_cluster import in_one_slot

        q2 = next(
            f"{queue}-{i}"
            for i in range(1_000_000)
            if in_one_slot(broker.prefix, [queue, f"{queue}-{i}"])
        )
    items = [(on(t.record, alias, queue), (out, i), {}) for i in range(5)]
    items += [(on(t.record, alias, q2), (out, 100 + i), {}) for i in range(3)]
    results = backend.enqueue_many(items)
    assert len(results) == 8 and all(r.status == TaskResultStatus.READY for r in results)
    more = asyncio.run(backend.aenqueue_many([(on(t.record, alias, queue), (out, 50), {})]))
    assert broker.info(queue)["ready"] == 6 and broker.info(q2)["ready"] == 3
    workers([queue, q2])
    wait_for(lambda: len(read_lines(out)) == 9)
    assert sorted(int(x) for x in read_lines(out)) == sorted([*range(5), 50, 100, 101, 102])
    assert wait_for(finished(backend, more[0].id)).return_value == 50


def test_payload_over_compression_threshold(backend, broker, alias, queue, workers):
    data = "x" * 5000
    r = on(t.size_of, alias, queue).enqueue(data)
    small = on(t.size_of, alias, queue).enqueue("y")
    recs = {rec.id: rec for rec in broker.peek(queue, "ready")}
    assert recs[r.id].payload.startswith(b"zstd:") and len(recs[r.id].payload) < 1000
    assert recs[small.id].payload.startswith(b"{")
    assert recs[r.id].envelope["args"] == [data]
    workers([queue])
    assert wait_for(finished(backend, r.id)).return_value == 5000


# ---- bad payloads --------------------------------------------------------------------------------


def test_unknown_task_path_and_garbage_payload(backend, broker, alias, queue, workers):
    env = {
        "func": "tests.testapp.tasks.does_not_exist",
        "args": [],
        "kwargs": {},
        "queue": queue,
        "ts": time.time(),
        "id": "unknown-1",
        "priority": 0,
        "run_after": None,
    }
    # a plain function of the project (a path outside it is refused before import: test_edges)
    not_a_task = dict(env, func="tests.testapp.tasks._append", id="not-a-task")
    broker.enqueue(
        [
            EnqueueRequest(queue, "unknown-1", encode_envelope(env)),
            EnqueueRequest(queue, "not-a-task", encode_envelope(not_a_task)),
            EnqueueRequest(queue, "garbage-1", b"zstd:\x00\x01garbage"),
        ]
    )
    ok = on(t.add, alias, queue).enqueue(40, 2)
    w = workers([queue])
    assert wait_for(finished(backend, ok.id)).return_value == 42
    wait_for(lambda: broker.info(queue)["dead"] == 3, message="3 dead-lettered")
    dead = {d.id: d.error for d in broker.peek(queue, "dead")}
    assert "unknown task path 'tests.testapp.tasks.does_not_exist'" in dead["unknown-1"]
    assert "not a Task" in dead["not-a-task"]
    assert "undecodable payload" in dead["garbage-1"]
    failed = backend.get_result("unknown-1")
    assert (
        failed.status == TaskResultStatus.FAILED
        and "unknown task path" in failed.errors[0].traceback
    )
    assert w.proc.poll() is None


# ---- crashes and shutdown ------------------------------------------------------------------------


def test_sigkill_tasks_come_back_after_lease(backend, broker, alias, queue, workers, out):
    r = on(t.slow_first_attempt, alias, queue).enqueue(out, 60)
    first = workers([queue], lease=1.0)
    wait_for(lambda: "start 1" in read_lines(out), message="first attempt started")
    first.kill()  # SIGKILL: no chance to ack or fail
    assert broker.info(queue)["inflight"] == 1
    second = workers([queue], lease=1.0)
    done = wait_for(finished(backend, r.id), timeout=20)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 2
    assert done.worker_ids[-1] == second.worker_id and done.attempts == 2
    assert "done 2" in read_lines(out)


def test_resumed_worker_does_not_run_deliveries_whose_lease_lapsed(
    backend, alias, queue, workers, out
):
    # F3: a worker stopped (SIGSTOP) with a fetch parked in the broker, longer than its lease.
    # The task enqueued meanwhile is leased to the parked fetch, expires, is re-queued; on
    # SIGCONT the worker reads the stale reply: it must drop it and run the task only once.
    w = workers([queue], lease=3.0)  # blocked fetches of 1 s
    warm = on(t.record, alias, queue).enqueue(out, "warm")
    wait_for(finished(backend, warm.id), timeout=20)
    time.sleep(0.3)  # idle: a fetch is parked
    w.signal(signal.SIGSTOP)
    try:
        r = on(t.record, alias, queue).enqueue(out, "once")
        time.sleep(4.5)  # > lease
    finally:
        w.signal(signal.SIGCONT)
    done = wait_for(finished(backend, r.id), timeout=20)
    time.sleep(1.0)  # a duplicate run would show by now
    assert read_lines(out).count("once") == 1, w.output()
    assert done.status == TaskResultStatus.SUCCESSFUL
    if done.attempts > 1:  # the parked fetch took it (Valkey): the stale delivery was dropped
        assert "dropping 1 fetched task(s)" in w.output()


def test_restarted_worker_rescues_its_own_tasks(backend, broker, alias, queue, workers, out):
    r = on(t.slow_first_attempt, alias, queue).enqueue(out, 60)
    first = workers([queue], worker_id="stable-id")  # default 30 s lease
    wait_for(lambda: "start 1" in read_lines(out))
    first.kill()
    t0 = time.monotonic()
    workers([queue], worker_id="stable-id")  # same id: VT.RESCUE WORKER at start
    done = wait_for(finished(backend, r.id), timeout=15)
    assert done.return_value == 2 and time.monotonic() - t0 < 15


def test_long_task_keeps_its_lease(backend, broker, alias, queue, workers, out):
    # lease 0.6 s, task 2 s: heartbeats extend the lease, nobody else runs it
    r = on(t.sleep_record, alias, queue).enqueue(out, "long", 2.0)
    workers([queue], lease=0.6)
    workers([queue], lease=0.6)
    wait_for(finished(backend, r.id), timeout=15)
    assert read_lines(out).count("start long") == 1


def test_sigterm_drains_in_flight_tasks(backend, broker, alias, queue, workers, out):
    rs = [on(t.sleep_record, alias, queue).enqueue(out, i, 1.5) for i in range(3)]
    w = workers([queue], concurrency=3)
    wait_for(lambda: sum(ln.startswith("start") for ln in read_lines(out)) == 3)
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    assert sum(ln.startswith("done") for ln in read_lines(out)) == 3
    for r in rs:
        assert backend.get_result(r.id).status == TaskResultStatus.SUCCESSFUL
    info = broker.info(queue)
    assert info["inflight"] == 0 and info["acked_total"] == 3


def test_second_signal_exits_at_once(broker, alias, queue, workers, out):
    on(t.sleep_record, alias, queue).enqueue(out, "x", 30)
    w = workers([queue])
    wait_for(lambda: "start x" in read_lines(out))
    w.signal(signal.SIGTERM)
    time.sleep(0.3)  # let the first signal be handled before the second one
    t0 = time.monotonic()
    w.signal(signal.SIGINT)
    assert w.wait(10) != 0 and time.monotonic() - t0 < 5
    # handed back on exit
    wait_for(lambda: broker.info(queue)["ready"] == 1, timeout=5)


def test_worker_survives_broker_connection_loss(backend, alias, queue, workers):
    w = workers([queue])
    r1 = on(t.add, alias, queue).enqueue(1, 1)
    wait_for(finished(backend, r1.id))
    if alias == "valkey":
        import valkey

        client = valkey.Valkey.from_url(os.environ["VTASKS_TEST_VALKEY_URL"])
        client.client_kill_filter(_type="normal", skipme=True)
    elif alias == "valkey_cluster":
        from valkey.cluster import ValkeyCluster

        client = ValkeyCluster.from_url(os.environ["VTASKS_TEST_VALKEY_CLUSTER_URL"])
        for node in client.get_nodes():  # every node drops its clients
            client.client_kill_filter(_type="normal", skipme=True, target_nodes=node)
    else:
        with connections["default"].cursor() as c:
            c.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database()"
            )
    r2 = on(t.add, alias, queue).enqueue(2, 2)
    assert wait_for(finished(backend, r2.id), timeout=20).return_value == 4
    assert w.proc.poll() is None


def test_health_check_file(alias, queue, workers, tmp_path):
    path = tmp_path / "health"
    workers([queue], health_check_file=path)
    wait_for(lambda: path.exists())
    first = path.stat().st_mtime
    wait_for(lambda: path.stat().st_mtime > first, timeout=5, message="health file touched again")


# ---- batch queues --------------------------------------------------------------------------------


def test_batch_queue(backend, broker, alias, queue, workers, out, tmp_path):
    log = str(tmp_path / "signals.txt")
    results = backend.enqueue_many(
        [(on(t.batch_sink, alias, queue), (out, i), {}) for i in range(10)]
    )
    w = workers(
        [queue],
        env={
            "VTASKS_TEST_BATCH_QUEUES": f'{{"{queue}": {{"count": 10, "timeout": 1}}}}',
            "VTASKS_TEST_SIGNAL_LOG": log,
        },
    )
    wait_for(lambda: broker.info(queue)["acked_total"] == 10)
    lines = read_lines(out)
    assert len(lines) == 1 and sorted(int(x) for x in lines[0].split()[1].split(",")) == list(
        range(10)
    )
    assert backend.get_result(results[0].id).status == TaskResultStatus.SUCCESSFUL
    # each task of the batch sends task_started and task_finished, like any task
    cls = type(backend).__name__
    signals = read_lines(log)
    for r in results:
        assert f"started {r.id} RUNNING {w.worker_id} {cls} -" in signals
        assert f"finished {r.id} SUCCESSFUL {w.worker_id} {cls} -" in signals


def test_batch_retry_keeps_the_first_attempts_errors(backend, broker, alias, queue, workers, out):
    """Batch tasks go through the worker's one job runner: a retried batch task's result keeps
    the failure of its first attempt and both attempts' workers, as a single task's does."""
    results = backend.enqueue_many(
        [(on(t.batch_flaky, alias, queue), (out, i), {}) for i in range(3)]
    )
    w = workers(
        [queue], env={"VTASKS_TEST_BATCH_QUEUES": f'{{"{queue}": {{"count": 3, "timeout": 1}}}}'}
    )
    wait_for(lambda: broker.info(queue)["acked_total"] == 3, timeout=60)
    for r in results:
        result = backend.get_result(r.id)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert [e.exception_class_path for e in result.errors] == ["builtins.RuntimeError"]
        assert result.worker_ids == [w.worker_id, w.worker_id]


# ---- schedules -----------------------------------------------------------------------------------


def test_schedule_fires_once_per_tick_with_two_schedulers(broker, alias, queue, workers, out):
    env = schedule_env(
        {
            "tick": {
                "task": "tests.testapp.tasks.record",
                "every": 1,
                "queue": queue,
                "args": [out, "tick"],
            }
        }
    )
    a = workers([queue], scheduler=True, env=env)
    b = workers([queue], scheduler=True, env=env)
    wait_for(lambda: [s.name for s in broker.schedule_list(queue)] == ["tick"], timeout=30)
    wait_for(lambda: len(read_lines(out)) >= 1, timeout=20, message="first tick")
    t0 = time.monotonic()
    start = len(read_lines(out))
    wait_for(lambda: time.monotonic() - t0 > 4.2, timeout=6)
    fired = len(read_lines(out)) - start
    assert 3 <= fired <= 5, fired  # once per 1 s tick, not once per scheduler
    assert broker.info(queue)["enqueued_total"] <= len(read_lines(out)) + 2
    # a scheduler whose settings no longer have the entry removes it
    a.signal(signal.SIGTERM)
    b.signal(signal.SIGTERM)
    assert a.wait() == 0 and b.wait() == 0
    c = workers([queue], scheduler=True, env=schedule_env({}))
    wait_for(lambda: broker.schedule_list(queue) == [], timeout=30)
    c.stop()


def test_cron_schedule_registered(broker, alias, queue, workers, out):
    env = schedule_env(
        {
            "nightly": {
                "task": "tests.testapp.tasks.record",
                "cron": "0 3 * * 1-5",
                "queue": queue,
                "args": [out, "n"],
            }
        }
    )
    w = workers([queue], scheduler=True, env=env)
    s = wait_for(lambda: broker.schedule_list(queue), timeout=30)
    assert s[0].name == "nightly" and s[0].next_run_ms > time.time() * 1000
    assert decode_envelope(s[0].payload)["func"] == t.record.module_path
    w.stop()


# ---- checks --------------------------------------------------------------------------------------


def test_check_ok(backend):
    assert [e for e in backend.check() if e.level >= 30] == []


def test_check_reports_problems(alias, tmp_path):
    from django_vtasks.backends.postgres import PostgresTaskBackend
    from django_vtasks.backends.valkey import ValkeyTaskBackend
    from tests.vtasks_servers import free_port, start_valkey, stop_process

    if alias == "valkey":
        missing = ValkeyTaskBackend("x", {"OPTIONS": {}})
        assert [e.id for e in missing.check()] == ["django_vtasks.E001"]
        down = ValkeyTaskBackend(
            "x", {"OPTIONS": {"BROKER_URL": f"valkey://127.0.0.1:{free_port()}/0"}}
        )
        assert [e.id for e in down.check()] == ["django_vtasks.W002"]
        proc, url = start_valkey(str(tmp_path), with_module=False)
        try:
            plain = ValkeyTaskBackend("x", {"OPTIONS": {"BROKER_URL": url}})
            errors = plain.check()
            assert [e.id for e in errors] == ["django_vtasks.E003"]
            assert "--loadmodule" in errors[0].hint and "libvtasks.so" in errors[0].hint
        finally:
            stop_process(proc)
    elif alias == "valkey_cluster":
        url = os.environ["VTASKS_TEST_VALKEY_CLUSTER_URL"]
        import valkey

        pooled = ValkeyTaskBackend(
            "x",
            {
                "OPTIONS": {
                    "BROKER_URL": url,
                    "CLUSTER": True,
                    "CONNECTION_POOL": valkey.ConnectionPool.from_url(url),
                }
            },
        )
        assert [e.id for e in pooled.check()] == ["django_vtasks.E005"]
        # "default" and "emails" hash to different slots: one worker could not fetch both
        spread = ValkeyTaskBackend(
            "x", {"QUEUES": ["default", "emails"], "OPTIONS": {"BROKER_URL": url, "CLUSTER": True}}
        )
        errors = spread.check()
        assert [e.id for e in errors] == ["django_vtasks.E004"] and "hash tag" in errors[0].hint
        tagged = ValkeyTaskBackend(
            "x",
            {
                "QUEUES": ["default", "emails"],
                "OPTIONS": {"BROKER_URL": url, "CLUSTER": True, "PREFIX": "vtc:{app}"},
            },
        )
        assert tagged.check() == [] and tagged.prefix == "vtc:{app}:"
    else:
        down = PostgresTaskBackend(
            "x",
            {
                "OPTIONS": {
                    "DSN": f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres"
                }
            },
        )
        assert [e.id for e in down.check()] == ["django_vtasks.W012"]
        other = PostgresTaskBackend("x", {"OPTIONS": {"DATABASE": "nope"}})
        assert [e.id for e in other.check()] == ["django_vtasks.E011"]


def test_get_broker_and_operator_api(broker, alias, queue):
    assert get_broker(alias) is broker
    r = on(t.add, alias, queue).enqueue(1, 2)
    assert queue in broker.queues()
    rec = broker.get(queue, r.id)
    assert rec.state == "ready" and rec.envelope["args"] == [1, 2]
    assert broker.delete(queue, [r.id]) == 1 and broker.get(queue, r.id) is None
    on(t.add, alias, queue).enqueue(1, 2)
    assert broker.clear(queue, "all") == 1
    got = broker.fetch([queue], "manual", 10)
    assert got == []
    r = on(t.add, alias, queue).enqueue(1, 2)
    (d,) = broker.fetch([queue], "manual", 10)
    assert d.id == r.id and d.attempt == 1
    assert broker.fail(queue, d.id, d.token, "by hand") == "dead"
    assert broker.retry_dead(queue) == 1
    (d,) = broker.fetch([queue], "manual", 10)
    assert broker.extend(queue, "manual", 5000) == 1
    # the batched ack stores the result with the ack (one statement on Postgres)
    assert broker.ack_with_results(queue, [(d.id, d.token)], [(d.id, b'{"r": 3}', 60_000)]) == 1
    assert broker.get_result(d.id) == b'{"r": 3}'
    assert broker.ack(queue, [(d.id, d.token)]) == 0
    r = on(t.add, alias, queue).enqueue(1, 2)
    (d,) = broker.fetch([queue], "manual", 10)
    assert (
        asyncio.run(
            broker.aack_with_results(queue, [(d.id, d.token)], [(d.id, b'{"r": 4}', 60_000)])
        )
        == 1
    )
    assert broker.get_result(d.id) == b'{"r": 4}' and broker.info(queue)["inflight"] == 0


def test_envelope_is_compatible(alias, queue, broker):
    r = on(t.add, alias, queue, priority=5).enqueue(1, b=2)
    env = broker.get(queue, r.id).envelope
    assert {"func", "args", "kwargs", "queue", "ts", "id", "priority", "run_after"} <= set(env)
    assert env["func"] == "tests.testapp.tasks.add" and env["queue"] == queue
    assert env["id"] == r.id and env["priority"] == 5 and env["kwargs"] == {"b": 2}
    assert orjson.loads(orjson.dumps(env)) == env


def test_dlq_cap(backend, broker, alias, queue, workers):
    rs = [on(t.fail, alias, queue).enqueue(str(i)) for i in range(4)]
    try:
        workers([queue], env={"VTASKS_TEST_DLQ_CAP": "2"}, concurrency=1)
        for r in rs:
            wait_for(finished(backend, r.id))
        info = wait_for(lambda: (i := broker.info(queue))["dead_total"] == 4 and i)
        assert info["dead"] == 2 and info["dead_evicted"] == 2
        # newest first; the two oldest were evicted
        assert [d.id for d in broker.peek(queue, "dead")] == [rs[3].id, rs[2].id]
    finally:
        if alias != "postgres":
            asyncio.run(broker.aset_dlq_cap(1000))


def test_valkey_shared_connection_pool(queue):
    import valkey

    from django_vtasks.backends.valkey import ValkeyTaskBackend

    url = os.environ.get("VTASKS_TEST_VALKEY_URL")
    if not url:
        pytest.skip("no Valkey")
    pool = valkey.ConnectionPool.from_url(url)
    backend = ValkeyTaskBackend("pooled", {"QUEUES": [], "OPTIONS": {"CONNECTION_POOL": pool}})
    assert [e.id for e in backend.check()] == []
    r = backend.enqueue(t.add.using(backend="valkey", queue_name=queue), (1, 2), {})
    assert backend.broker.client.connection_pool is pool
    assert backend.broker.info(queue)["ready"] == 1 and backend.get_result(r.id).args == [1, 2]


def test_cluster_worker_refuses_queues_across_slots(tmp_path):
    if not os.environ.get("VTASKS_TEST_VALKEY_CLUSTER_URL"):
        pytest.skip("Valkey module not built (cargo build --release -p vtasks-module)")
    from tests.conftest import WorkerProc

    # "default" and "emails" hash to different slots without a hash tag in the prefix
    w = WorkerProc("valkey_cluster", ["default", "emails"], tmp_path)
    try:
        assert w.wait(60) != 0
        assert "different cluster slots" in w.output() and "hash tag" in w.output()
    finally:
        w.kill()


def test_enqueue_to_a_dead_broker_is_a_clear_error(alias):
    from django_vtasks.backends.postgres import PostgresTaskBackend
    from django_vtasks.backends.valkey import ValkeyTaskBackend
    from django_vtasks.broker import BrokerError
    from tests.vtasks_servers import free_port

    port = free_port()  # nothing listens there
    if alias == "postgres":
        backend = PostgresTaskBackend(
            "dead",
            {
                "QUEUES": [],
                "OPTIONS": {"DSN": f"host=127.0.0.1 port={port} user=postgres dbname=postgres"},
            },
        )
        hint = "is Postgres running"
    else:
        backend = ValkeyTaskBackend(
            "dead",
            {
                "QUEUES": [],
                "OPTIONS": {
                    "BROKER_URL": f"valkey://127.0.0.1:{port}/0",
                    "CLUSTER": alias == "valkey_cluster",
                },
            },
        )
        hint = "is valkey-server running"
    task = t.add.using(backend=alias)
    with pytest.raises(BrokerError) as info:
        asyncio.run(backend.aenqueue(task, (1, 2), {}))
    assert f"127.0.0.1:{port}" in str(info.value) and hint in str(info.value)
    if alias == "valkey":  # (Postgres' sync enqueue writes through Django's own connection)
        with pytest.raises(BrokerError, match=hint):
            backend.enqueue(task, (1, 2), {})
        # inside atomic() the send runs at commit: the error comes out of the block's exit
        entered = False
        with pytest.raises(BrokerError, match=hint):
            with transaction.atomic():
                backend.enqueue(task, (1, 2), {})
                entered = True
        assert entered
