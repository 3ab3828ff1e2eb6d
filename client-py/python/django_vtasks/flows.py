"""Flows: chains and groups of tasks whose order the broker keeps.

A **chain** runs each step after the previous one succeeded, with its return value as the first
argument; a **group** runs its tasks in parallel, and the step after it (its callback) once all
of them succeeded, with the list of their return values (in group order) as the first argument::

    from django_vtasks.flows import chain, group, step

    chain(step(fetch, url), parse, step(store, table="pages")).enqueue()
    # fetch(url) -> parse(<fetch's value>) -> store(<parse's value>, table="pages")

    group([step(resize, 1), step(resize, 2)]).then(step(notify, "done")).enqueue()
    # resize(1), resize(2) in parallel -> notify([<value 1>, <value 2>], "done")

The whole flow is sent in one atomic command (``VT.FLOW`` on Valkey, one statement on
Postgres): the tasks that wait are stored by the broker, not fetchable, and released by the
same command that acks the last task they wait for, so no crash of a worker or a client can
lose or double a follow-up. A task that fails for good (dead-lettered) takes the tasks waiting
for it to the dead-letter list, with an error naming it; ``retry_dead`` them once it succeeded.
PROTOCOL.md, "Flows", is the contract.

Rules: every task of a flow is in one queue and one backend (one atomic command; on a Valkey
Cluster, one hash slot), a flow has at most ``LIMITS["max_flow_tasks"]`` tasks, tasks with a
unique key cannot be part of one, and the tasks whose value is passed on must store results
(``RESULT_TTL`` > 0, no ``ignore_result``). ``enqueue()`` returns the TaskResult of every task
in flow order (``[-1]`` is the last step); ``get_result(id)`` reads each, a waiting task is
READY until it runs. Inside ``transaction.atomic()`` the flow is sent when the transaction
commits (on both backends).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.tasks import task_backends
from django.tasks.base import Task, TaskResult

from .broker import BrokerError, EnqueueRequest, check_flow
from .envelope import build_envelope, encode_envelope

__all__ = ["Flow", "Step", "chain", "group", "step"]


@dataclass(frozen=True, slots=True)
class Step:
    """One run of a task in a flow: the task and its own arguments (the value of the tasks it
    waits for is passed before them)."""

    task: Task
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def step(task: Task, *args, **kwargs) -> Step:
    """``task`` with these arguments, as a step of a flow."""
    if not isinstance(task, Task):
        raise TypeError(f"step() takes a task (a @task function), not {type(task).__name__}")
    return Step(task, args, kwargs)


@dataclass(frozen=True, slots=True)
class _Node:
    step: Step
    #: indexes of the nodes this one waits for
    parents: tuple[int, ...]
    #: pass the parents' values as one list (after a group) rather than the one value
    collect: bool


class Flow:
    """Tasks and what each waits for. Build one with :func:`chain` or :func:`group`."""

    __slots__ = ("nodes", "tail", "tail_is_group")

    def __init__(self, nodes: list[_Node], tail: tuple[int, ...], tail_is_group: bool):
        self.nodes = nodes
        #: the nodes a next step waits for
        self.tail = tail
        #: the next step gets the tail's values as a list
        self.tail_is_group = tail_is_group

    @classmethod
    def of(cls, part: Flow | Step | Task) -> Flow:
        if isinstance(part, Flow):
            return part
        if isinstance(part, Task):
            part = Step(part)
        if not isinstance(part, Step):
            raise TypeError(
                f"a flow is made of tasks, step(task, ...) and flows, not {type(part).__name__}"
            )
        return cls([_Node(part, (), False)], (0,), False)

    def then(self, part: Flow | Step | Task) -> Flow:
        """This flow, then ``part`` (a task, a step, a chain or a group): its first tasks wait
        for this flow's last ones and get their value (the list of values after a group)."""
        other = Flow.of(part)
        base = len(self.nodes)
        nodes = list(self.nodes)
        for n in other.nodes:
            if n.parents:
                nodes.append(_Node(n.step, tuple(p + base for p in n.parents), n.collect))
            else:
                nodes.append(_Node(n.step, self.tail, self.tail_is_group))
        return Flow(nodes, tuple(t + base for t in other.tail), other.tail_is_group)

    # ---- enqueue ------------------------------------------------------------------------------
    def _prepare(self):
        if not self.nodes:
            raise ValueError("an empty flow")
        aliases = {n.step.task.backend for n in self.nodes}
        if len(aliases) > 1:
            raise ValueError(f"a flow runs on one task backend, this one names {sorted(aliases)}")
        from .backends.base import VTasksBackend

        backend = task_backends[aliases.pop()]
        if not isinstance(backend, VTasksBackend):
            raise TypeError(
                f"task backend {backend.alias!r} is not a django_vtasks backend: flows need one"
            )
        broker = backend.broker
        if not broker.supports_flows:
            raise BrokerError(
                f"the broker of task backend {backend.alias!r} ({type(broker).__name__}) does "
                "not support flows"
            )
        passed = {p for n in self.nodes for p in n.parents}
        if passed and backend.result_ttl_ms <= 0:
            raise ValueError(
                f"task backend {backend.alias!r} keeps no results (RESULT_TTL = 0): a flow "
                "passes each task's return value on through its stored result"
            )
        from .result_store import _policy

        ignored = _policy(backend.alias)[4]
        for i in passed:
            task = self.nodes[i].step.task
            if getattr(task, "ignore_result", False) or (ignored and task.queue_name in ignored):
                raise ValueError(
                    f"task {task.module_path} stores no result (ignore_result or "
                    "IGNORE_RESULT_QUEUES) but a task of the flow waits for its value"
                )
        ctx = backend._context()
        results: list[TaskResult] = []
        requests: list[EnqueueRequest] = []
        parents: list[tuple[str, ...]] = []
        for n in self.nodes:
            result, request = backend._prepare(n.step.task, list(n.step.args), n.step.kwargs, ctx)
            ps = tuple(results[p].id for p in n.parents)
            if ps:
                assert result.enqueued_at is not None  # _prepare stamps every result
                env = build_envelope(
                    n.step.task,
                    result.args,
                    result.kwargs,
                    result.id,
                    backend.alias,
                    result.enqueued_at.timestamp(),
                )
                env["after"] = list(ps)
                env["collect"] = n.collect
                request = request._replace(payload=encode_envelope(env))
            results.append(result)
            requests.append(request)
            parents.append(ps)
        check_flow(requests, parents)
        return backend, results, requests, parents

    def enqueue(self) -> list[TaskResult]:
        """Send the flow (at commit inside ``transaction.atomic()``); the TaskResult of every
        task, in flow order."""
        backend, results, requests, parents = self._prepare()

        def send():
            ids = backend.broker.enqueue_flow(requests, parents)
            backend._sent(results, ids or [r.id for r in results], requests)

        if backend._in_atomic_block():
            from django.db import transaction

            transaction.on_commit(backend._after_commit(send, results), using=backend.database)
        else:
            send()
        return results

    async def aenqueue(self) -> list[TaskResult]:
        """``enqueue()`` from async code (sent at once)."""
        backend, results, requests, parents = self._prepare()
        ids = await backend.broker.aenqueue_flow(requests, parents)
        await backend._asent(results, ids or [r.id for r in results], requests)
        return results

    def __repr__(self) -> str:
        names = ", ".join(n.step.task.module_path for n in self.nodes[:5])
        return (
            f"<Flow of {len(self.nodes)} task(s): {names}{', ...' if len(self.nodes) > 5 else ''}>"
        )


def chain(*parts: Flow | Step | Task) -> Flow:
    """Run ``parts`` one after the other; each gets the previous one's return value (the list
    of values after a group) as its first argument."""
    if not parts:
        raise ValueError("chain() needs at least one task")
    flow = Flow.of(parts[0])
    for p in parts[1:]:
        flow = flow.then(p)
    return flow


def group(parts: Iterable[Flow | Step | Task]) -> Flow:
    """Run ``parts`` in parallel; ``.then(callback)`` runs ``callback`` once all succeeded, with
    the list of their return values (in this order; a chain's last value) first."""
    nodes: list[_Node] = []
    tail: list[int] = []
    for part in parts:
        f = Flow.of(part)
        base = len(nodes)
        nodes += [_Node(n.step, tuple(p + base for p in n.parents), n.collect) for n in f.nodes]
        tail += [t + base for t in f.tail]
    if not nodes:
        raise ValueError("group() needs at least one task")
    return Flow(nodes, tuple(tail), True)


def parent_values(after: list[str], collect: bool, stored: dict[str, Any]) -> Any:
    """The value a waiting task gets first: its one parent's return value, or the list of its
    parents' values in order (``collect``). ``stored`` maps each parent id to its stored result
    document (result_store.document). Raises LookupError saying which is missing."""
    values = []
    for pid in after:
        doc = stored.get(pid)
        if doc is None:
            raise LookupError(
                f"the result of task {pid}, which this task waits for, is missing (expired "
                "after RESULT_TTL, or evicted): run the flow again"
            )
        if doc.get("status") != "SUCCESSFUL":
            raise LookupError(
                f"task {pid}, which this task waits for, has not succeeded "
                f"(status {doc.get('status')}): retry it first, then this task"
            )
        values.append(doc.get("return_value"))
    return values if collect else values[0]
