"""Results tell the truth, and no task gets stuck (issue 13), on every backend with real workers.

Each test checks what a user reads (get_result, refresh, the broker's records) while real
`runworker` subprocesses run, crash or meet tasks that cannot be stored.
"""

import asyncio
import dataclasses
import importlib
import os
import pickle
import signal
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from django.tasks import TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils import timezone

from django_vtasks.broker import EnqueueRequest
from django_vtasks.envelope import encode_envelope
from tests.conftest import CLIENT_DIR, read_lines, schedule_env, wait_for
from tests.testapp import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)


def on(task, alias, queue, **kw):
    return task.using(backend=alias, queue_name=queue, **kw)


def finished(backend, rid):
    def check():
        r = backend.get_result(rid)
        return r if r.is_finished else None

    return check


# ---- what enqueue() returns is what everyone reads -----------------------------------------------


def test_enqueue_result_reads_the_same_everywhere(backend, broker, alias, queue):
    r = on(t.add, alias, queue).enqueue(1, b=2)
    got = backend.get_result(r.id)
    assert got == r  # every field, the task (and its options) included
    assert asyncio.run(backend.aget_result(r.id)) == r
    before = dataclasses.asdict(r)
    r.refresh()
    assert dataclasses.asdict(r) == before  # nothing touched it: refresh() changes nothing
    asyncio.run(r.arefresh())
    assert dataclasses.asdict(r) == before
    assert pickle.loads(pickle.dumps(got)) == got == r
    # options given at enqueue travel with the task, and read back the same
    o = on(t.flaky, alias, queue, retries=0, retry_backoff=0.25).enqueue(1)
    got = backend.get_result(o.id)
    assert got == o and got.task.retries == 0 and got.task.retry_backoff == 0.25
    assert broker.get(queue, o.id).envelope["options"]["retries"] == 0
    # the plain task's envelope carries no options (nothing to override)
    assert "options" not in broker.get(queue, r.id).envelope


def test_run_after_is_never_early(broker, alias, queue):
    base = (timezone.now() + timedelta(seconds=30)).replace(microsecond=0)
    for us in (1, 400, 999, 999_001, 999_999):
        when = base + timedelta(microseconds=us)
        r = on(t.add, alias, queue, run_after=when).enqueue(1, 2)
        run_at_ms = broker.get(queue, r.id).run_at
        want_us = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        assert run_at_ms * 1000 >= want_us, (us, run_at_ms)  # never before run_after
        assert run_at_ms * 1000 - want_us < 1000  # and at most the rounding later


def test_get_result_inside_the_enqueuing_atomic_block(backend, broker, alias, queue):
    with transaction.atomic():
        r = on(t.add, alias, queue).enqueue(1, 2)
        got = backend.get_result(r.id)
        assert got == r and got.status == TaskResultStatus.READY
        r.refresh()
        assert r.status == TaskResultStatus.READY
        assert t.add.get_result(r.id).id == r.id
        try:
            with transaction.atomic():
                gone = on(t.add, alias, queue).enqueue(3, 4)
                assert backend.get_result(gone.id) == gone
                raise ZeroDivisionError
        except ZeroDivisionError:
            pass
        # the rolled-back savepoint took its task with it
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(gone.id)
    # committed: the broker has it
    assert backend.get_result(r.id) == r
    assert [rec.id for rec in broker.peek(queue, "ready")] == [r.id]


# ---- a task whose worker died reads what the broker knows ----------------------------------------


def test_result_of_a_task_whose_workers_died(backend, broker, alias, queue, workers, out):
    r = on(t.sleep_record, alias, queue).enqueue(out, "x", 60)

    def state(status):
        def check():
            broker.rescue(queue)  # (Postgres rescues in maintain(); Valkey's timer does too)
            got = backend.get_result(r.id)
            return got if got.status == status else None

        return check

    # attempt 1: its holder (fetched by hand) dies; a restart with its id hands its tasks back
    (d,) = broker.fetch([queue], "doomed-1", 1, lease_ms=60_000)
    held = backend.get_result(r.id)
    assert held.status == TaskResultStatus.RUNNING and held.worker_ids == ["doomed-1"]
    assert held.started_at and held.last_attempted_at  # a RUNNING result has both
    assert held.enqueued_at == r.enqueued_at
    assert broker.rescue(queue, "doomed-1") == 1
    ready = wait_for(state(TaskResultStatus.READY), timeout=20, message="READY after a crash")
    assert ready.attempts == 1
    # attempt 2: a real worker runs it (and stores a RUNNING result), then is killed mid-task
    w = workers([queue], lease=1.0)
    wait_for(lambda: "start x" in read_lines(out), message="second attempt started")
    running = wait_for(
        lambda: (x := backend.get_result(r.id)).worker_ids[-1:] == [w.worker_id] and x,
        message="RUNNING stored by the worker",
    )
    assert running.status == TaskResultStatus.RUNNING and running.attempts == 2
    assert running.enqueued_at == r.enqueued_at <= running.started_at <= running.last_attempted_at
    w.kill()  # SIGKILL: it neither acks nor fails
    # its lease expires: READY for its next attempt, not RUNNING
    ready = wait_for(state(TaskResultStatus.READY), timeout=20, message="READY after the kill")
    assert ready.attempts == 2 and ready.started_at == running.started_at
    # attempt 3: its holder dies too, its lease expires, the broker dead-letters it
    (d,) = wait_for(lambda: broker.fetch([queue], "doomed-3", 1, lease_ms=2000))
    assert d.attempt == 3
    held = backend.get_result(r.id)
    assert held.status == TaskResultStatus.RUNNING and held.worker_ids[-1] == "doomed-3"
    failed = wait_for(state(TaskResultStatus.FAILED), timeout=20, message="FAILED once dead")
    assert "lease expired after 3 attempts" in failed.errors[-1].traceback
    assert failed.finished_at is not None and failed.attempts == 3
    assert asyncio.run(backend.aget_result(r.id)).status == TaskResultStatus.FAILED
    r.refresh()
    assert r.status == TaskResultStatus.FAILED and r.errors == failed.errors


# ---- tasks that used to take workers down or get stuck -------------------------------------------


def test_tasks_that_cannot_be_stored_or_that_interrupt_end_failed(
    backend, broker, alias, queue, workers, out
):
    long = on(t.sleep_record, alias, queue).enqueue(out, "long", 3.0)
    rs = {
        "interrupt": on(t.interrupt, alias, queue).enqueue(),
        "ainterrupt": on(t.ainterrupt, alias, queue).enqueue(),
        "exit": on(t.exit_task, alias, queue).enqueue(),
        "big_int": on(t.big_int, alias, queue).enqueue(),
        "surrogate": on(t.lone_surrogate, alias, queue).enqueue(),
        "raise_surrogate": on(t.raise_lone_surrogate, alias, queue).enqueue(),
        # module-level retries=2 would run it again and succeed: .using(retries=0) must win
        "no_retry": on(t.flaky, alias, queue, retries=0).enqueue(1),
    }
    # a task as a schedule fires it (no client time in its envelope): read the same before/after
    env = {
        "func": t.add.module_path,
        "args": [2, 2],
        "kwargs": {},
        "queue": queue,
        "ts": None,
        "id": "fired",
        "priority": 0,
        "run_after": None,
        "schedule": "s",
    }
    broker.enqueue([EnqueueRequest(queue, "fired", encode_envelope(env))])
    fired = backend.get_result("fired")
    w = workers([queue], concurrency=4)
    # a first attempt that runs a while is recorded RUNNING by its worker (with its start times)
    wait_for(
        lambda: b'"RUNNING"' in (broker.get_result(long.id) or b""),
        timeout=30,
        message="RUNNING recorded (the task runs 3 s, recorded after 0.2 s)",
    )
    running = backend.get_result(long.id)
    assert running.status == TaskResultStatus.RUNNING and running.worker_ids == [w.worker_id]
    assert running.enqueued_at == long.enqueued_at <= running.started_at <= timezone.now()
    # ... and its final result is not overwritten by that record
    assert wait_for(finished(backend, long.id)).status == TaskResultStatus.SUCCESSFUL
    done = {k: wait_for(finished(backend, r.id), timeout=30, message=k) for k, r in rs.items()}
    assert all(d.status == TaskResultStatus.FAILED for d in done.values()), {
        k: d.status for k, d in done.items()
    }
    assert done["interrupt"].errors[0].exception_class_path == "builtins.KeyboardInterrupt"
    assert done["ainterrupt"].errors[0].exception_class_path == "builtins.KeyboardInterrupt"
    assert done["exit"].errors[0].exception_class_path == "builtins.SystemExit"
    assert done["exit"].errors[0].traceback.endswith("SystemExit: 3\n")  # as Django formats it
    for k in ("big_int", "surrogate"):
        err = done[k].errors[0]
        assert err.exception_class_path == "django_vtasks.worker.ResultNotStorable"
        assert "cannot be stored as JSON" in err.traceback
    assert "caf\\udce9" in done["raise_surrogate"].errors[0].traceback
    assert done["no_retry"].attempts == 1 and len(done["no_retry"].errors) == 1
    ran = wait_for(finished(backend, "fired"))
    assert ran.return_value == 4 and ran.enqueued_at == fired.enqueued_at is not None
    # the worker is still running and serving; nothing is left in flight
    assert wait_for(finished(backend, on(t.add, alias, queue).enqueue(1, 1).id)).return_value == 2
    assert w.proc.poll() is None
    info = wait_for(lambda: (i := broker.info(queue))["inflight"] == 0 and i)
    assert info["dead"] == len(rs)
    dead = {d.id: d.error for d in broker.peek(queue, "dead", count=20)}
    assert "caf\\udce9" in dead[rs["raise_surrogate"].id]


def test_dead_letter_reasons_are_cut_the_same_on_batch_and_single_queues(
    backend, broker, alias, queue, workers
):
    if alias == "valkey_cluster":
        from django_vtasks.backends.valkey_cluster import in_one_slot

        bq = next(
            f"{queue}-{i}"
            for i in range(1_000_000)
            if in_one_slot(broker.prefix, [queue, f"{queue}-{i}"])
        )
    else:
        bq = queue + "-batch"
    long_path = "tests.testapp.tasks.no_such_task_" + "x" * 70_000  # its reason is over 64 KiB
    requests = []
    for q in (queue, bq):
        env = {
            "func": long_path,
            "args": [],
            "kwargs": {},
            "queue": q,
            "ts": time.time(),
            "id": f"long-{q}",
            "priority": 0,
            "run_after": None,
        }
        requests.append(EnqueueRequest(q, f"long-{q}", encode_envelope(env)))
    broker.enqueue(requests)
    batch = f'{{"{bq}": {{"count": 5, "timeout": 0.2}}}}'
    workers([queue, bq], env={"VTASKS_TEST_BATCH_QUEUES": batch})
    for q in (queue, bq):
        (dead,) = wait_for(lambda q=q: broker.peek(q, "dead"), timeout=30, message=f"dead on {q}")
        assert dead.id == f"long-{q}" and len(dead.error) <= 16_000
        assert dead.error.startswith("unknown task path") and "characters cut]" in dead.error
        assert broker.info(q)["inflight"] == 0


def test_one_result_the_broker_refuses_does_not_hold_the_others(
    backend, broker, alias, queue, workers
):
    if alias != "valkey":
        pytest.skip("proto-max-bulk-len is a Valkey limit (the isolation code is shared)")
    client = broker.client
    old = client.config_get("proto-max-bulk-len")["proto-max-bulk-len"]
    client.config_set("proto-max-bulk-len", 1024 * 1024)
    try:
        # a result over the server's limit even compressed, under VTASKS_RESULT_MAX_BYTES
        big = on(t.random_string, alias, queue).enqueue(2_000_000)
        small = [on(t.add, alias, queue).enqueue(i, i) for i in range(20)]
        w = workers(
            [queue], concurrency=8, env={"VTASKS_TEST_RESULT_MAX_BYTES": str(8 * 1024 * 1024)}
        )
        for i, r in enumerate(small):
            assert wait_for(finished(backend, r.id), timeout=30).return_value == 2 * i
        failed = wait_for(finished(backend, big.id), timeout=30)
        assert failed.status == TaskResultStatus.FAILED
        assert "could not be stored" in failed.errors[-1].traceback
        wait_for(lambda: broker.info(queue)["inflight"] == 0, message="nothing left in flight")
        assert w.proc.poll() is None
    finally:
        client.config_set("proto-max-bulk-len", old)


# ---- rolling deploys, schedules ------------------------------------------------------------------


def test_unknown_task_path_waits_for_the_new_code(backend, broker, alias, queue, workers, tmp_path):
    # the new code: a module of a package the project allows (VTASKS_TASK_MODULES in settings)
    code = tmp_path / "newcode"
    (code / "vtasks_latecode").mkdir(parents=True)
    (code / "vtasks_latecode" / "__init__.py").write_text("")
    name = f"vtasks_latecode.late_{uuid.uuid4().hex[:8]}"
    (code / "vtasks_latecode" / f"{name.rpartition('.')[2]}.py").write_text(
        "from django.tasks import task\n\n\n@task\ndef hello(x):\n    return f'hello {x}'\n"
    )
    sys.modules.pop("vtasks_latecode", None)  # another run's package lives in another tmp dir
    sys.path.insert(0, str(code))
    try:
        late = importlib.import_module(name)
    finally:
        sys.path.remove(str(code))
    grace = {"VTASKS_TEST_UNKNOWN_TASK_GRACE": "6"}
    old = workers([queue], env=grace)  # the old code: knows neither path
    wait_for(finished(backend, on(t.add, alias, queue).enqueue(1, 1).id), message="old is up")
    # enqueued once the old worker runs: its first attempt comes early in the grace
    r = on(late.hello, alias, queue).enqueue("deploy")
    env = {
        "func": f"{name}.never",
        "args": [],
        "kwargs": {},
        "queue": queue,
        "ts": time.time(),
        "id": "never",
        "priority": 0,
        "run_after": None,
    }
    broker.enqueue([EnqueueRequest(queue, "never", encode_envelope(env))])
    wait_for(
        lambda: (
            (rec := broker.get(queue, r.id))
            and rec.attempt >= 1
            and rec.state in ("ready", "delayed")
        ),
        message="handed back, not dead-lettered",
    )
    assert backend.get_result(r.id).status == TaskResultStatus.READY
    assert broker.info(queue)["dead"] == 0
    old.stop()  # (its hand-back waits 3 s: the new code takes the next attempt)
    workers(
        [queue],
        env={
            **grace,
            "PYTHONPATH": os.pathsep.join(
                [str(CLIENT_DIR), str(code), os.environ.get("PYTHONPATH", "")]
            ),
        },
    )  # new code
    done = wait_for(finished(backend, r.id), timeout=30)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == "hello deploy"
    # a path no code knows is dead-lettered once the grace is over
    (dead,) = wait_for(lambda: broker.peek(queue, "dead"), timeout=30)
    assert dead.id == "never" and "VTASKS_UNKNOWN_TASK_GRACE=6s" in dead.error
    assert time.time() - env["ts"] >= 6


def test_scheduler_registers_again_what_the_broker_lost(broker, alias, queue, workers, out):
    env = schedule_env(
        {
            "tick": {
                "task": "tests.testapp.tasks.record",
                "every": 0.5,
                "queue": queue,
                "args": [out, "tick"],
            }
        }
    )
    w = workers([queue], scheduler=True, env={**env, "VTASKS_TEST_SCHEDULE_RECONCILE": "0.5"})
    wait_for(lambda: len(read_lines(out)) >= 1, timeout=30, message="first tick")
    # the broker loses its data (a restart without persistence): the schedule is gone
    assert broker.schedule_del(queue, "tick")
    wait_for(
        lambda: [s.name for s in broker.schedule_list(queue)] == ["tick"],
        timeout=20,
        message="schedule registered again",
    )
    seen = len(read_lines(out))
    wait_for(lambda: len(read_lines(out)) >= seen + 2, timeout=20, message="ticks again")
    assert "registered again" in w.output()
    w.signal(signal.SIGTERM)
    assert w.wait() == 0


def test_a_suppressed_unique_enqueue_returns_the_task_holding_the_key(
    backend, broker, alias, queue
):
    task = on(t.add, alias, queue, unique=True)
    first = task.enqueue(1, 2)
    again = task.enqueue(1, 2)
    assert again.id == first.id and again == backend.get_result(first.id) == first
    assert asyncio.run(task.aenqueue(1, 2)).id == first.id
    assert backend.enqueue_many([(task, (1, 2), {})])[0].id == first.id
    other = task.enqueue(1, 3)  # other arguments, another key: a task of its own
    assert other.id != first.id
    # the holder's current state, whatever it is
    (d,) = [d for d in broker.fetch([queue], "manual", 2) if d.id == first.id] or [None]
    if d is not None:
        running = task.enqueue(1, 2)
        assert running.id == first.id and running.status == TaskResultStatus.RUNNING
    # inside atomic() (Valkey sends at commit): the result is the holder's after the commit
    with transaction.atomic():
        late = task.enqueue(1, 2)
    assert late.id == first.id
    assert broker.info(queue)["enqueued_total"] == 2
