"""The Valkey backend's transactional outbox (OPTIONS["OUTBOX"]): a committed transaction never
loses its tasks, a rolled-back one never sends them, and each task reaches Valkey once, whether the
committing process relays it, Valkey is down at commit, or a relay dies half-way. Real Valkey (and
Cluster), real Postgres, real workers."""

import asyncio
import os

import pytest
from django.db import transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import TaskResultDoesNotExist

from django_vtasks.backends.valkey import ValkeyTaskBackend
from django_vtasks.broker import BrokerError
from django_vtasks.outbox import relay
from django_vtasks.outbox.models import OutboxTask
from tests.conftest import WorkerProc, read_lines, wait_for
from tests.testapp import tasks as t
from tests.vtasks_servers import free_port, start_valkey, stop_process

pytestmark = pytest.mark.django_db(transaction=True)

OUTBOX_ALIASES = ["valkey_outbox", "valkey_cluster_outbox"]


@pytest.fixture(params=OUTBOX_ALIASES)
def outbox_alias(request):
    env = {
        "valkey_outbox": "VTASKS_TEST_VALKEY_URL",
        "valkey_cluster_outbox": "VTASKS_TEST_VALKEY_CLUSTER_URL",
    }[request.param]
    if not os.environ.get(env):
        pytest.skip("Valkey module not built (cargo build --release -p vtasks-module)")
    return request.param


@pytest.fixture
def start_worker(tmp_path, django_db_setup):
    started = []

    def start(alias, queues):
        w = WorkerProc(alias, queues, tmp_path)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def rows(alias=None):
    qs = OutboxTask.objects.all()
    return list(qs.filter(backend=alias)) if alias else list(qs)


def test_commit_relays_at_once_and_rollback_sends_nothing(outbox_alias, queue):
    backend = task_backends[outbox_alias]
    broker = backend.broker
    with transaction.atomic():
        r = t.add.using(backend=outbox_alias, queue_name=queue).enqueue(1, 2)
        # in the caller's transaction: the row, not Valkey
        assert [row.id for row in rows(outbox_alias)] == [r.id]
        assert broker.get(queue, r.id) is None
        assert backend.get_result(r.id).status == TaskResultStatus.READY
    assert rows(outbox_alias) == []
    assert broker.get(queue, r.id).state == "ready"
    assert backend.get_result(r.id) == r
    marker = relay.marker_key(broker, _request(queue, r.id))
    assert not broker.client.exists(marker)  # removed after the commit

    try:
        with transaction.atomic():
            gone = t.add.using(backend=outbox_alias, queue_name=queue).enqueue(3, 4)
            raise ZeroDivisionError
    except ZeroDivisionError:
        pass
    assert rows(outbox_alias) == []
    assert broker.get(queue, gone.id) is None
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(gone.id)
    assert [rec.id for rec in broker.peek(queue, "ready")] == [r.id]


def _request(queue, rid):
    from django_vtasks.broker import EnqueueRequest

    return EnqueueRequest(queue=queue, id=rid, payload=b"")


def test_valkey_down_at_commit_then_relayed_once(tmp_path, queue, out):
    """The order commits although Valkey is down; the task waits in the outbox, reads READY, and
    reaches Valkey exactly once when it is back."""
    port = free_port()
    url = f"valkey://127.0.0.1:{port}/0"
    backend = ValkeyTaskBackend(
        "outbox_down", {"QUEUES": [], "OPTIONS": {"BROKER_URL": url, "OUTBOX": True}}
    )
    task = t.record.using(queue_name=queue)
    with transaction.atomic():
        results = [backend.enqueue(task, [out, f"v{i}"], {}) for i in range(3)]
        OutboxTask.objects.using("default").count()  # the caller's own work in the transaction
    # committed without an error: the tasks wait in the outbox
    assert sorted(row.id for row in rows("outbox_down")) == sorted(r.id for r in results)
    with pytest.raises(BrokerError):
        relay.relay(backend)  # Valkey still down: nothing leaves the outbox
    assert len(rows("outbox_down")) == 3
    proc, _ = start_valkey(str(tmp_path), port=port)
    try:
        # while waiting, the result reads READY from the outbox row
        assert backend.get_result(results[0].id).status == TaskResultStatus.READY
        assert asyncio.run(backend.aget_result(results[0].id)).status == TaskResultStatus.READY
        done = relay.relay(backend)
        assert done == {r.id: True for r in results}
        assert rows("outbox_down") == []
        assert relay.relay(backend) == {}
        ready = backend.broker.peek(queue, "ready")
        assert sorted(rec.id for rec in ready) == sorted(r.id for r in results)
        assert backend.broker.info(queue)["enqueued_total"] == 3
    finally:
        backend.broker.close()
        stop_process(proc)


def test_worker_relays_what_a_dead_process_left(outbox_alias, queue, start_worker, out):
    """A process that committed and died before relaying: the backend's worker relays the task
    and runs it once."""
    backend = task_backends[outbox_alias]
    task = t.record.using(backend=outbox_alias, queue_name=queue)
    result, request = backend._prepare(task, [out, "from-outbox"], {})
    with transaction.atomic():
        relay.store(backend, [request])  # the commit happens, the on-commit relay never runs
    assert len(rows(outbox_alias)) == 1
    w = start_worker(outbox_alias, [queue])
    wait_for(lambda: read_lines(out) == ["from-outbox"], message="the relayed task ran")
    wait_for(lambda: backend.get_result(result.id).status == TaskResultStatus.SUCCESSFUL)
    assert rows(outbox_alias) == []
    wait_for(lambda: "outbox: relayed 1 committed task(s)" in w.output(), message="the relay's log")
    w.stop()
    assert read_lines(out) == ["from-outbox"]


def test_a_relay_that_died_after_sending_is_not_repeated(outbox_alias, queue, start_worker, out):
    """A relay sent the task (with its marker) and died before deleting the row: the task runs and
    is acked; the next relay finds the marker and only deletes the row (no second run)."""
    backend = task_backends[outbox_alias]
    broker = backend.broker
    task = t.record.using(backend=outbox_alias, queue_name=queue)
    result, request = backend._prepare(task, [out, "once"], {})
    with transaction.atomic():
        relay.store(backend, [request])
    outcome, refused = relay._send(broker, [request])  # sent; its transaction never commits
    assert outcome == {request.id: True} and refused == {}
    w = start_worker(outbox_alias.replace("_outbox", ""), [queue])
    wait_for(lambda: backend.get_result(result.id).status == TaskResultStatus.SUCCESSFUL)
    w.stop()
    assert broker.get(queue, request.id) is None  # acked: VT.ENQUEUE would add it again
    assert relay.relay(backend) == {request.id: True}
    assert rows(outbox_alias) == []
    assert broker.get(queue, request.id) is None
    assert broker.info(queue)["enqueued_total"] == 1
    assert read_lines(out) == ["once"]


def test_check_requires_the_outbox_app(settings):
    backend = ValkeyTaskBackend(
        "outbox_check",
        {
            "QUEUES": [],
            "OPTIONS": {"BROKER_URL": f"valkey://127.0.0.1:{free_port()}/0", "OUTBOX": True},
        },
    )
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_vtasks.outbox"]
    ids = [e.id for e in backend.check()]
    assert "django_vtasks.E022" in ids


def test_unique_suppressed_in_the_outbox_reads_its_holder(outbox_alias, queue):
    backend = task_backends[outbox_alias]
    task = t.add.using(backend=outbox_alias, queue_name=queue, unique=True)
    first = task.enqueue(1, 2)  # outside atomic(): sent at once
    with transaction.atomic():
        late = task.enqueue(1, 2)
        assert late.id != first.id  # not known before the relay
    assert late.id == first.id  # the relay found the key held: the result is the holder's
    assert rows(outbox_alias) == []
    assert backend.broker.info(queue)["enqueued_total"] == 1
