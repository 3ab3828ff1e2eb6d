"""Chains and groups (django_vtasks.flows) with real workers on Valkey, Valkey Cluster and
Postgres: values passed on, the broker's release on ack, exactly one follow-up after a worker is
SIGKILLed, dead-lettered follow-ups of a failed task, refused flows that leave nothing behind."""

import asyncio
import time

import pytest
from django.tasks import TaskResultStatus

from django_vtasks.broker import LIMITS, BrokerError
from django_vtasks.flows import chain, group, step
from tests.conftest import read_lines, wait_for
from tests.testapp import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)


def on(task, alias, queue):
    return task.using(backend=alias, queue_name=queue)


def finished(backend, rid):
    def check():
        r = backend.get_result(rid)
        return r if r.is_finished else None

    return check


def test_chain_of_three_passes_each_value_on(alias, backend, broker, queue, workers):
    add = on(t.add, alias, queue)
    results = chain(step(add, 1, 2), step(add, 10), step(add, 100)).enqueue()
    assert [r.args for r in results] == [[1, 2], [10], [100]]
    # the later steps wait in the broker: not fetchable, READY to get_result
    assert [broker.get(queue, r.id).state for r in results] == ["ready", "waiting", "waiting"]
    assert backend.get_result(results[2].id).status == TaskResultStatus.READY
    assert broker.fetch([queue], "probe", 10) != []  # the root only (then handed back)
    assert broker.rescue(queue, "probe") == 1
    workers([queue])
    last = wait_for(finished(backend, results[2].id), timeout=30)
    assert last.status == TaskResultStatus.SUCCESSFUL and last.return_value == 113
    assert last.args == [13, 100]  # the value the step before returned comes first
    assert [backend.get_result(r.id).return_value for r in results] == [3, 13, 113]
    info = broker.info(queue)
    assert (info["ready"], info["inflight"], info["dead"], info["acked_total"]) == (0, 0, 0, 3)


def test_group_then_callback_gets_values_in_group_order(alias, backend, broker, queue, workers):
    add = on(t.add, alias, queue)
    n = 30
    flow = group([step(add, i, i) for i in range(n)]).then(step(on(t.total, alias, queue), plus=1))
    flow = flow.then(step(add, 1000))
    results = asyncio.run(flow.aenqueue())
    assert len(results) == n + 2
    workers([queue], concurrency=8)
    last = wait_for(finished(backend, results[-1].id), timeout=60)
    cb = backend.get_result(results[n].id)
    assert cb.args == [[2 * i for i in range(n)]] and cb.return_value == n * (n - 1) + 1
    assert last.return_value == n * (n - 1) + 1 + 1000
    # the callback started after every member finished
    members = [backend.get_result(r.id) for r in results[:n]]
    assert max(m.finished_at for m in members) <= cb.started_at


def test_a_failed_task_dead_letters_what_waits_for_it(alias, backend, broker, queue, workers):
    add, total = on(t.add, alias, queue), on(t.total, alias, queue)
    results = group([step(add, 1, 1), step(on(t.fail, alias, queue), "boom")]).then(total).enqueue()
    workers([queue])
    cb = wait_for(finished(backend, results[2].id), timeout=30)
    assert cb.status == TaskResultStatus.FAILED
    assert f"task {results[1].id} that it waits for failed" in cb.errors[-1].traceback
    assert backend.get_result(results[0].id).status == TaskResultStatus.SUCCESSFUL
    assert broker.get(queue, results[2].id).state == "dead"


def test_sigkill_mid_flow_runs_the_follow_up_exactly_once(
    alias, backend, broker, queue, workers, out, tmp_path
):
    after = str(tmp_path / "after.txt")
    results = chain(
        step(on(t.slow_first_attempt, alias, queue), out, 60), step(on(t.note, alias, queue), after)
    ).enqueue()
    first = workers([queue], lease=1.0)
    wait_for(lambda: "start 1" in read_lines(out), message="the first step to start")
    first.kill()  # SIGKILL mid-flow: its lease expires, the step runs again elsewhere
    assert broker.get(queue, results[1].id).state == "waiting"
    workers([queue], lease=1.0)
    done = wait_for(finished(backend, results[1].id), timeout=30)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 2
    time.sleep(1.5)  # a second release would have run by now
    assert read_lines(after) == ["2"]
    assert read_lines(out) == ["start 1", "start 2", "done 2"]
    info = broker.info(queue)
    assert (info["ready"], info["inflight"], info["acked_total"]) == (0, 0, 2)


def test_refused_flows_send_nothing(alias, broker, queue):
    add = on(t.add, alias, queue)
    other = on(t.add, alias, queue + "x")
    with pytest.raises(BrokerError, match="a flow lives in one queue"):
        chain(add, other).enqueue()
    limit = LIMITS["max_flow_tasks"]
    with pytest.raises(BrokerError, match=f"over the limit of {limit}"):
        group([step(add, i, 0) for i in range(limit)]).then(on(t.total, alias, queue)).enqueue()
    for q in (queue, queue + "x"):
        assert broker.info(q)["enqueued_total"] == 0


def test_a_flow_inside_atomic_is_sent_at_commit(alias, backend, broker, queue):
    from django.db import transaction

    add = on(t.add, alias, queue)
    with transaction.atomic():
        results = chain(step(add, 1, 1), step(add, 1)).enqueue()
        assert broker.get(queue, results[0].id) is None  # not sent yet
        assert backend.get_result(results[1].id).status == TaskResultStatus.READY
    assert [broker.get(queue, r.id).state for r in results] == ["ready", "waiting"]
    with pytest.raises(RuntimeError), transaction.atomic():
        rolled = chain(step(add, 2, 2), step(add, 2)).enqueue()
        raise RuntimeError("rolled back")
    assert all(broker.get(queue, r.id) is None for r in rolled)
