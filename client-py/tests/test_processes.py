"""runworker --processes N against real servers: children run tasks, a killed child is restarted
with its id and rescues its tasks, SIGTERM drains every child and exits 0."""

import os
import re
import signal

import pytest

from tests.conftest import read_lines, wait_for
from tests.testapp.ops_tasks import gated
from tests.testapp.tasks import sleep_record

pytestmark = pytest.mark.django_db(transaction=True)


def child_pid(log: str, worker_id: str, after: int | None = None) -> int | None:
    """The pid of the latest start of child ``worker_id`` in the supervisor's log (other than
    ``after``)."""
    pids = [
        int(p) for p in re.findall(rf"worker {re.escape(worker_id)} started \(pid (\d+)\)", log)
    ]
    pids = [p for p in pids if p != after]
    return pids[-1] if pids else None


def inflight_by_worker(broker, queue) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in broker.peek(queue, "inflight", 0, 100):
        out[r.worker] = out.get(r.worker, 0) + 1
    return out


@pytest.mark.parametrize("alias", ["valkey", "postgres"], indirect=True)
def test_processes_restart_rescue_and_drain(alias, backend, broker, queue, workers, tmp_path, out):
    health = tmp_path / "health"
    sup = workers([queue], concurrency=2, health_check_file=health, extra=["--processes", "2"])
    ids = [f"{sup.worker_id}-0", f"{sup.worker_id}-1"]
    for wid in ids:
        wait_for(
            lambda wid=wid: f"worker {wid} starting" in sup.output(),
            timeout=60,
            message=f"child {wid} to start\n{sup.output()}",
        )
    # the set's health file appears once every child made progress
    wait_for(lambda: health.exists(), timeout=30, message=f"the health file\n{sup.output()}")

    # 4 tasks that wait for a gate: each child holds 2 (its concurrency)
    gate = tmp_path / "gate"
    t = gated.using(backend=alias, queue_name=queue)
    results = [t.enqueue(out, str(gate), i) for i in range(4)]
    wait_for(
        lambda: inflight_by_worker(broker, queue) == {ids[0]: 2, ids[1]: 2},
        timeout=60,
        message=f"both children to hold 2 tasks ({inflight_by_worker(broker, queue)})",
    )

    # a fetched task writes its line once its body starts (a moment after the broker's lease)
    def started_by_child0():
        held = {line.split()[1] for line in read_lines(out) if line.endswith(ids[0])}
        return held if len(held) == 2 else None

    held = wait_for(started_by_child0, timeout=30, message="child 0's two tasks to start")

    # SIGKILL child 0: restarted with the same id, it rescues its 2 tasks and runs them again
    old = child_pid(sup.output(), ids[0])
    os.kill(old, signal.SIGKILL)
    wait_for(
        lambda: child_pid(sup.output(), ids[0], after=old),
        timeout=60,
        message=f"child 0 to be restarted\n{sup.output()}",
    )
    log = sup.output()
    assert f"worker {ids[0]} (pid {old}) was killed by SIGKILL; restarting it" in log, log
    wait_for(
        lambda: f"rescued 2 task(s) of {ids[0]} on {queue}" in sup.output(),
        timeout=60,
        message=f"the restarted child to rescue its tasks\n{sup.output()}",
    )
    wait_for(
        lambda: inflight_by_worker(broker, queue) == {ids[0]: 2, ids[1]: 2},
        timeout=60,
        message="the rescued tasks to run again on the restarted child",
    )
    gate.touch()
    for r in results:
        wait_for(
            lambda r=r: backend.get_result(r.id).status == "SUCCESSFUL",
            timeout=60,
            message=f"task {r.id} to succeed\n{sup.output()}",
        )
    done = {line.split()[1] for line in read_lines(out) if line.startswith("done")}
    assert done == {"0", "1", "2", "3"}
    for value in held:  # the killed child's tasks ran again under the same worker id
        assert f"start {value} {ids[0]}" in read_lines(out)
        assert read_lines(out).count(f"start {value} {ids[0]}") == 2

    # SIGTERM the supervisor while tasks run: they finish, every child exits, exit code 0
    s = sleep_record.using(backend=alias, queue_name=queue)
    slow = [s.enqueue(out, f"slow{i}", 2.0) for i in range(2)]
    wait_for(
        lambda: {"start slow0", "start slow1"} <= set(read_lines(out)),
        timeout=60,
        message=f"the slow tasks to start\n{sup.output()}",
    )
    sup.signal(signal.SIGTERM)
    assert sup.wait(60) == 0, sup.output()
    lines = read_lines(out)
    assert "done slow0" in lines and "done slow1" in lines
    assert all(backend.get_result(r.id).status == "SUCCESSFUL" for r in slow)
    info = broker.info(queue)
    assert (info["ready"], info["inflight"], info["dead"]) == (0, 0, 0)
    log = sup.output()
    for wid in ids:
        assert re.search(rf"worker {re.escape(wid)} \(pid \d+\) stopped with exit code 0", log), log
    assert "supervisor: all 2 worker(s) stopped" in log


def exited(pid: int) -> bool:
    """True once ``pid`` is gone or a zombie (a grandchild is reaped by whoever adopted it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("alias", ["valkey"], indirect=True)
def test_children_stop_when_the_supervisor_is_killed(alias, queue, workers):
    sup = workers([queue], concurrency=1, extra=["--processes", "2"])
    ids = [f"{sup.worker_id}-0", f"{sup.worker_id}-1"]
    for wid in ids:
        wait_for(
            lambda wid=wid: f"worker {wid} starting" in sup.output(),
            timeout=60,
            message=f"child {wid} to start\n{sup.output()}",
        )
    pids = [child_pid(sup.output(), wid) for wid in ids]
    sup.kill()  # SIGKILL: no chance to stop the children
    for pid, wid in zip(pids, ids, strict=True):
        wait_for(
            lambda pid=pid: exited(pid),
            timeout=60,
            message=f"child {wid} (pid {pid}) to stop without its supervisor\n{sup.output()}",
        )
    assert "is gone, stopping" in sup.output()


def test_processes_flag_values():
    from django.core.management import CommandError, call_command

    from django_vtasks.supervisor import child_worker_id, parse_processes

    assert parse_processes("3") == 3 and parse_processes(None) == 1
    assert parse_processes("auto") == len(os.sched_getaffinity(0))
    assert child_worker_id("web-1", 0) == "web-1-0"
    for bad in ("0", "-2", "many"):
        with pytest.raises(CommandError, match="--processes must be"):
            call_command("runworker", "--backend", "postgres", "--processes", bad)
