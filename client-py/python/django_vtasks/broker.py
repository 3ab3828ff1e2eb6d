"""The broker interface both vtasks backends implement.

A *broker* is the low-level queue of a task backend: the VT.* commands of the Valkey module
(``ValkeyBroker``) or the same semantics on Postgres (``PostgresBroker``). The Django backend
(enqueue/get_result), the worker, the management commands and the admin are written against this
interface only. Every method exists in a sync form and an async form (same name prefixed with
``a``); the async form must be awaited on the running event loop.

Queue names given to and returned by a broker are *logical* names (``"default"``), never the
Valkey keys: a broker adds/strips its own key prefix.

Get the broker of a configured backend with :func:`get_broker`::

    from django_vtasks.broker import get_broker
    broker = get_broker("default")          # TASKS alias
    broker.info("default")                  # {"ready": 3, "inflight": 1, ...}

Payloads are the encoded task envelopes (bytes, possibly ``b"zstd:"``-compressed); use
:mod:`django_vtasks.envelope` (``decode_envelope``) to read them, or the ``envelope`` property
of :class:`TaskRecord`. Apps enqueue through the Django backend (``task.enqueue(...)``,
``task_backends[alias].enqueue_many(...)``), which builds the envelopes and the requests;
``enqueue`` here is the low level.

Async forms use a client bound to the running event loop (made on first use per loop), so they
are safe from any loop; call ``await broker.aclose()`` before a loop you made yourself ends.

The implementations live in :mod:`django_vtasks.brokers`; the Django backends
(:mod:`django_vtasks.backends`) build them from TASKS OPTIONS and share one per configuration.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from asgiref.sync import sync_to_async

from . import _native

__all__ = [
    "INFO_FIELDS",
    "LIMITS",
    "STATES",
    "Broker",
    "BrokerError",
    "Delivery",
    "EnqueueFailed",
    "EnqueueRequest",
    "ScheduleRecord",
    "TaskRecord",
    "check_flow",
    "get_broker",
]

#: The state of a task that waits in its flow for other tasks (``get``, ``peek``; brokers with
#: ``supports_flows``).
WAITING = "waiting"

#: Task states a broker can list (``peek``).
STATES = ("ready", "delayed", "inflight", "dead", WAITING)

#: Keys of the ``info()`` dict: the VT.INFO fields both engines report, in reply order (one
#: definition: the vtasks-protocol crate, through the native extension). A broker may add more
#: (Valkey: schedule_ticks_skipped_total).
INFO_FIELDS: tuple[str, ...] = _native.INFO_FIELDS

#: The protocol's limits (PROTOCOL.md "Limits"), e.g. LIMITS["max_peek"].
LIMITS: dict[str, int] = _native.LIMITS


class BrokerError(Exception):
    """The broker could not be reached or refused a command (wraps the client's error)."""


class EnqueueFailed(BrokerError):
    """Valkey refused some of the tasks of one enqueue_many (each queue's VT.ENQUEUE is atomic,
    queues are not atomic together): the others are enqueued. Per request, in order:
    ``ids[i]`` is the id when the task is in the broker (else None), ``refused[i]`` the reason
    when it was refused. The backend adds ``results``: the TaskResults that went in."""

    def __init__(self, requests, ids: list[str | None], refused: dict[int, str]):
        self.ids = ids
        self.refused = refused
        self.results: list = []
        reasons = sorted(set(refused.values()))
        queues = sorted({requests[i].queue for i in refused})
        some = [requests[i].id for i in sorted(refused)[:3]]
        super().__init__(
            f"{len(refused)} of {len(requests)} task(s) were not enqueued (queues {queues}, "
            f"ids {some}{' ...' if len(refused) > 3 else ''}): "
            f"{'; '.join(reasons)[:2000]}. {sum(1 for i in ids if i)} other(s) were enqueued; "
            "this error's .results holds them (retry only the others)."
        )


class EnqueueRequest(NamedTuple):
    """One task to enqueue. ``id`` is the client-chosen task id (= the TaskResult id)."""

    queue: str
    id: str
    payload: bytes
    priority: int = 0
    #: absolute run time, unix milliseconds (None = now)
    at_ms: int | None = None
    #: (unique key, ttl ms): while held, further enqueues with the key on this queue are dropped
    unique: tuple[str, int] | None = None
    max_attempts: int | None = None


class Delivery(NamedTuple):
    """A fetched task, held under a lease until acked/failed (PROTOCOL.md VT.FETCHBATCH)."""

    queue: str
    id: str
    token: str
    attempt: int  # 1 on the first delivery
    payload: bytes


@dataclass(slots=True)
class TaskRecord:
    """A task as listed by ``peek``/``get`` (fields of a VT.PEEK record)."""

    id: str
    state: str  # ready | delayed | inflight | dead | waiting (a flow's task, see WAITING)
    priority: int = 0
    attempt: int = 0
    max_attempts: int = 0
    enqueued_at: int = 0  # unix ms
    run_at: int = 0  # unix ms (0 when not delayed)
    worker: str = ""  # holder while inflight
    deadline: int = 0  # lease deadline, unix ms (inflight)
    error: str = ""  # dead-letter reason
    failed_at: int = 0  # unix ms (dead)
    payload: bytes = b""
    queue: str = ""

    @property
    def envelope(self) -> dict[str, Any] | None:
        """The decoded task envelope, or None when the payload cannot be decoded."""
        from .envelope import decode_envelope

        try:
            return decode_envelope(self.payload)
        except Exception:
            return None

    @classmethod
    def from_fields(cls, fields: dict[str, Any], queue: str = "") -> TaskRecord:
        def s(v):
            if isinstance(v, bytes):
                return v.decode("utf-8", "replace")
            return "" if v is None else str(v)

        def i(v):
            if v in (None, b"", ""):
                return 0
            return int(v)

        payload = fields.get("payload", b"")
        if isinstance(payload, str):
            payload = payload.encode()
        return cls(
            id=s(fields.get("id")),
            state=s(fields.get("state")),
            priority=i(fields.get("priority")),
            attempt=i(fields.get("attempt")),
            max_attempts=i(fields.get("max_attempts")),
            enqueued_at=i(fields.get("enqueued_at")),
            run_at=i(fields.get("run_at")),
            worker=s(fields.get("worker")),
            deadline=i(fields.get("deadline")),
            error=s(fields.get("error")),
            failed_at=i(fields.get("failed_at")),
            payload=payload or b"",
            queue=queue,
        )


@dataclass(slots=True)
class ScheduleRecord:
    name: str
    kind: str  # "cron" | "every"
    spec: str  # cron expression or interval ms
    next_run_ms: int
    payload: bytes = field(repr=False, default=b"")
    #: paused at runtime (schedule_pause): no ticks fire until schedule_resume
    paused: bool = False


class Broker(ABC):
    """Sync + async queue operations (see the module docstring).

    What a caller may rely on beyond the methods is declared by the ``supports_*`` flags (as
    Django's task backends do): a worker asks them instead of testing for a broker's type.

    Errors: every client error of a contract method reaches the caller as a
    :class:`BrokerError` (a subclass sets ``client_errors`` and ``error()``; the methods it
    defines are wrapped when the class is created), with the client's error as ``__cause__``.

    Async forms: the hot paths (enqueue, fetch, ack, fail, rescue, extend, results) are written
    twice, natively async. The operator methods have an async default here that runs the sync
    form in a thread (``sync_to_async``, as Django's BaseTaskBackend does), so a broker writes
    them once unless it has a reason to write the async form too.
    """

    #: "valkey" or "postgres": what the broker runs on, for display (not for capabilities)
    kind: str = ""

    #: The server keeps time itself: schedules fire and expired leases return to ready without
    #: any client (Valkey's module timers). False: a worker must call ``atick()`` (schedules)
    #: and ``amaintain()`` (lease rescue, purges) periodically (Postgres).
    supports_server_timers: bool = True

    #: ``aset_dlq_cap(cap)`` sets the dead-letter cap of the server (the worker applies
    #: VTASKS_DLQ_CAP at start). False: the cap is given when the broker is built (Postgres).
    supports_dlq_cap: bool = False

    #: ``cancel(queue, id)`` cancels a task atomically (PROTOCOL.md VT.CANCEL) and
    #: ``extend_cancelled`` names the cancelled leases it did not extend.
    supports_cancel: bool = False
    #: ``enqueue_flow()`` adds chains and groups that the broker itself releases (a waiting task
    #: runs once the tasks it waits for are acked, in the same atomic step; PROTOCOL.md
    #: "Flows"). False: ``enqueue_flow`` raises BrokerError.
    supports_flows: bool = False

    #: the client library's exceptions that contract methods turn into BrokerError (error())
    client_errors: tuple[type[BaseException], ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _translate_errors(cls)

    def error(self, e: BaseException, doing: str) -> BrokerError:
        """The BrokerError for the client error ``e`` raised while ``doing`` something (a verb
        phrase: "fetch", "read a task" ...): what is wrong and what to do, without secrets."""
        return BrokerError(f"cannot {doing}: {e}")

    def check_queues(self, queues: list[str]) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Raise BrokerError if one worker cannot fetch from all ``queues`` at once (a Valkey
        cluster needs them in one hash slot). Called when a worker starts."""

    # ---- producer -----------------------------------------------------------------------------
    @abstractmethod
    def enqueue(self, requests: list[EnqueueRequest]) -> list[str | None]:
        """Enqueue tasks, one round trip per queue. Returns, in order, the id or None where a
        task was not added (unique key held or id already present)."""

    async def aenqueue(self, requests: list[EnqueueRequest]) -> list[str | None]:
        """Concurrent calls on one event loop are coalesced: the enqueues of one loop tick go
        out together, through one ``aenqueue_now`` (one round trip per queue and options)."""
        return await coalesced_enqueue(self, requests)

    @abstractmethod
    async def aenqueue_now(self, requests: list[EnqueueRequest]) -> list[str | None]:
        """``enqueue`` on the running loop, at once (no coalescing). When some queues refused
        their tasks and others took theirs, raise EnqueueFailed with the outcome of each."""

    def enqueue_flow(
        self, requests: list[EnqueueRequest], parents: list[tuple[str, ...]]
    ) -> list[str] | None:
        """Add a flow atomically (brokers with ``supports_flows``): ``requests[i]`` waits in the
        broker until every task of ``parents[i]`` (ids of earlier requests) is acked, then runs
        (ready, or delayed until its ``at_ms``); a parent that is dead-lettered takes the tasks
        waiting for it to the dead-letter list. All requests are in one queue (see
        check_flow). Returns the ids in order, or None when one of the ids is already in the
        queue (nothing was added)."""
        raise BrokerError(
            f"{type(self).__name__} does not support flows (chains and groups): use a backend "
            "whose broker has supports_flows (Valkey, Valkey Cluster, Postgres)"
        )

    async def aenqueue_flow(
        self, requests: list[EnqueueRequest], parents: list[tuple[str, ...]]
    ) -> list[str] | None:
        return await _in_thread(self.enqueue_flow)(requests, parents)

    # ---- consumer -----------------------------------------------------------------------------
    @abstractmethod
    def fetch(
        self,
        queues: list[str],
        worker: str,
        count: int,
        lease_ms: int | None = None,
        block_ms: int | None = None,
    ) -> list[Delivery]:
        """Take up to ``count`` ready tasks (queues served in order, then priority, FIFO).
        ``block_ms``: wait server-side up to that long when nothing is ready (returns [])."""

    @abstractmethod
    async def afetch(
        self,
        queues: list[str],
        worker: str,
        count: int,
        lease_ms: int | None = None,
        block_ms: int | None = None,
    ) -> list[Delivery]: ...

    @abstractmethod
    def ack(self, queue: str, pairs: list[tuple[str, str]]) -> int:
        """Acknowledge (remove) tasks given as (id, token) pairs; stale tokens are no-ops."""

    @abstractmethod
    async def aack(self, queue: str, pairs: list[tuple[str, str]]) -> int: ...

    def ack_with_results(
        self, queue: str, pairs: list[tuple[str, str]], results: list[tuple[str, bytes, int]]
    ) -> int:
        """Store results [(id, json, ttl_ms)] then ack, in as few round trips as possible."""
        for rid, data, ttl in results:
            self.store_result(rid, data, ttl)
        return self.ack(queue, pairs) if pairs else 0

    async def aack_with_results(
        self, queue: str, pairs: list[tuple[str, str]], results: list[tuple[str, bytes, int]]
    ) -> int:
        await self.astore_results(results)
        return await self.aack(queue, pairs) if pairs else 0

    @abstractmethod
    def fail(
        self, queue: str, id: str, token: str, error: str, retry_ms: int | None = None
    ) -> str | None:
        """Dead-letter the task with ``error`` (or retry it after ``retry_ms`` while it has
        attempts left). Returns "retry", "dead", or None (unknown id / stale token)."""

    @abstractmethod
    async def afail(
        self, queue: str, id: str, token: str, error: str, retry_ms: int | None = None
    ) -> str | None: ...

    @abstractmethod
    def rescue(self, queue: str, worker: str | None = None) -> int:
        """Return expired leases (or every lease of ``worker``) to ready."""

    @abstractmethod
    async def arescue(self, queue: str, worker: str | None = None) -> int: ...

    @abstractmethod
    def extend(self, queue: str, worker: str, lease_ms: int) -> int:
        """Move every lease of ``worker`` on ``queue`` to now + lease_ms."""

    @abstractmethod
    async def aextend(self, queue: str, worker: str, lease_ms: int) -> int: ...

    def extend_cancelled(self, queue: str, worker: str, lease_ms: int) -> tuple[int, list[str]]:
        """``extend``, except the leases of cancelled tasks (``cancel``), whose ids it returns:
        (leases extended, ids of the worker's cancelled tasks on ``queue``)."""
        return self.extend(queue, worker, lease_ms), []

    async def aextend_cancelled(
        self, queue: str, worker: str, lease_ms: int
    ) -> tuple[int, list[str]]:
        return await self.aextend(queue, worker, lease_ms), []

    def cancel(self, queue: str, id: str, reason: str = "") -> str | None:
        """Cancel task ``id``, atomically (``supports_cancel``): "removed" (it was ready or
        delayed: now dead-lettered with the error ``cancelled[: reason]``), "flagged" (it is
        running: its lease is no longer extended, it is never retried nor run again), or None
        (no live task has that id: finished, dead, or unknown)."""
        raise NotImplementedError(f"{type(self).__name__} does not support cancel")

    async def acancel(self, queue: str, id: str, reason: str = "") -> str | None:
        return await _in_thread(self.cancel)(queue, id, reason)

    # ---- operator -----------------------------------------------------------------------------
    @abstractmethod
    def info(self, queue: str) -> dict[str, int]:
        """Counters of a queue; keys = INFO_FIELDS (zeros for an unknown queue)."""

    async def ainfo(self, queue: str) -> dict[str, int]:
        return await _in_thread(self.info)(queue)

    @abstractmethod
    def queues(self) -> list[str]:
        """Logical names of the queues that exist in the broker."""

    async def aqueues(self) -> list[str]:
        return await _in_thread(self.queues)()

    @abstractmethod
    def peek(self, queue: str, state: str, offset: int = 0, count: int = 10) -> list[TaskRecord]:
        """List tasks in a state (STATES), in fetch/due/deadline/newest-first/id order."""

    async def apeek(
        self, queue: str, state: str, offset: int = 0, count: int = 10
    ) -> list[TaskRecord]:
        return await _in_thread(self.peek)(queue, state, offset, count)

    @abstractmethod
    def get(self, queue: str, id: str) -> TaskRecord | None: ...

    async def aget(self, queue: str, id: str) -> TaskRecord | None:
        return await _in_thread(self.get)(queue, id)

    def unique_holder(self, queue: str, key: str) -> TaskRecord | None:
        """The live task holding unique ``key`` on ``queue`` (None when the key is free or
        the broker cannot tell)."""
        return None

    async def aunique_holder(self, queue: str, key: str) -> TaskRecord | None:
        return await _in_thread(self.unique_holder)(queue, key)

    @abstractmethod
    def retry_dead(self, queue: str, ids: list[str] | None = None) -> int:
        """Move dead tasks (all when ids is None) back to ready."""

    async def aretry_dead(self, queue: str, ids: list[str] | None = None) -> int:
        return await _in_thread(self.retry_dead)(queue, ids)

    @abstractmethod
    def delete(self, queue: str, ids: list[str]) -> int:
        """Remove ready/delayed/dead tasks by id (in-flight ones are kept)."""

    async def adelete(self, queue: str, ids: list[str]) -> int:
        return await _in_thread(self.delete)(queue, ids)

    @abstractmethod
    def clear(self, queue: str, what: str) -> int:
        """what: "ready" (ready+delayed), "dead", or "all" (also in-flight). Schedules stay."""

    async def aclear(self, queue: str, what: str) -> int:
        return await _in_thread(self.clear)(queue, what)

    # ---- schedules ----------------------------------------------------------------------------
    @abstractmethod
    def schedule_set(
        self,
        queue: str,
        name: str,
        payload: bytes,
        cron: str | None = None,
        every_ms: int | None = None,
        priority: int = 0,
    ) -> None: ...

    async def aschedule_set(
        self,
        queue: str,
        name: str,
        payload: bytes,
        cron: str | None = None,
        every_ms: int | None = None,
        priority: int = 0,
    ) -> None:
        return await _in_thread(self.schedule_set)(queue, name, payload, cron, every_ms, priority)

    @abstractmethod
    def schedule_del(self, queue: str, name: str) -> bool: ...

    async def aschedule_del(self, queue: str, name: str) -> bool:
        return await _in_thread(self.schedule_del)(queue, name)

    @abstractmethod
    def schedule_list(self, queue: str) -> list[ScheduleRecord]: ...

    async def aschedule_list(self, queue: str) -> list[ScheduleRecord]:
        return await _in_thread(self.schedule_list)(queue)

    @abstractmethod
    def schedule_pause(self, queue: str, name: str) -> bool:
        """Pause a schedule: no ticks fire until ``schedule_resume``; the pause survives
        restarts and ``schedule_set`` of the same name (settings re-applied). False if there is
        no such schedule."""

    async def aschedule_pause(self, queue: str, name: str) -> bool:
        return await _in_thread(self.schedule_pause)(queue, name)

    @abstractmethod
    def schedule_resume(self, queue: str, name: str) -> bool:
        """Resume a paused schedule at its next tick after now (missed ticks are not made
        up). False if there is no such schedule."""

    async def aschedule_resume(self, queue: str, name: str) -> bool:
        return await _in_thread(self.schedule_resume)(queue, name)

    @abstractmethod
    def schedule_run(self, queue: str, name: str) -> str | None:
        """Enqueue the schedule's task once, now (paused or not; its ticks are unchanged).
        Returns the task id, or None if there is no such schedule."""

    async def aschedule_run(self, queue: str, name: str) -> str | None:
        return await _in_thread(self.schedule_run)(queue, name)

    # ---- rate limits (PROTOCOL.md "Rate limits") ----------------------------------------------
    @abstractmethod
    def rate_limit_set(self, queue: str, limit: int, per_ms: int, burst: int | None = None) -> bool:
        """At most ``limit`` tasks of ``queue`` start per ``per_ms`` ms across all fetchers,
        with up to ``burst`` (default ``limit``) saved up. Returns False when the queue already
        had exactly this limit (nothing changes, its tokens are kept)."""

    async def arate_limit_set(
        self, queue: str, limit: int, per_ms: int, burst: int | None = None
    ) -> bool:
        return await _in_thread(self.rate_limit_set)(queue, limit, per_ms, burst)

    @abstractmethod
    def rate_limit_off(self, queue: str) -> bool:
        """Remove the queue's rate limit; False if it had none."""

    async def arate_limit_off(self, queue: str) -> bool:
        return await _in_thread(self.rate_limit_off)(queue)

    @abstractmethod
    def rate_limit_get(self, queue: str) -> dict[str, int] | None:
        """``{"limit", "per_ms", "burst", "tokens"}`` (tokens: how many may start now), or
        None when the queue has no limit."""

    async def arate_limit_get(self, queue: str) -> dict[str, int] | None:
        return await _in_thread(self.rate_limit_get)(queue)

    def tick(self) -> int:
        """Fire the schedules that are due, each tick exactly once whoever calls (brokers
        without ``supports_server_timers``); returns the number of tasks they enqueued. A no-op
        returning 0 where the server fires them itself. Lease rescue is ``maintain()``'s."""
        return 0

    async def atick(self) -> int:
        return 0

    def maintain(self) -> dict[str, int] | None:
        """Client-driven timer duties besides schedules: return expired leases to ready on every
        queue, purge expired unique keys and results (brokers without
        ``supports_server_timers``); a no-op where the server does it. Returns what one call
        did (e.g. ``results_purged``), or None."""
        return None

    async def amaintain(self) -> dict[str, int] | None:
        """See maintain()."""
        return None

    async def aset_dlq_cap(self, cap: int) -> None:
        """Set the server's dead-letter cap (brokers with ``supports_dlq_cap``)."""
        raise NotImplementedError(f"{type(self).__name__} does not support aset_dlq_cap")

    # ---- results ------------------------------------------------------------------------------
    @abstractmethod
    def store_result(self, id: str, data: bytes | None, ttl_ms: int) -> None:
        """Store a TaskResult's stored form (results.result_to_json: JSON, maybe zstd) for
        ttl_ms; ``data`` None (the task/queue stores no result) or ttl_ms <= 0: a no-op. The
        same holds for the results given to ack_with_results/store_results."""

    @abstractmethod
    async def astore_result(self, id: str, data: bytes, ttl_ms: int) -> None: ...

    async def astore_results(self, results: list[tuple[str, bytes, int]]) -> None:
        for rid, data, ttl in results:
            await self.astore_result(rid, data, ttl)

    @abstractmethod
    def get_result(self, id: str) -> bytes | None: ...

    @abstractmethod
    async def aget_result(self, id: str) -> bytes | None: ...

    # ---- lifecycle ----------------------------------------------------------------------------
    @abstractmethod
    def ping(self) -> None:
        """Raise BrokerError when the broker is unreachable or misconfigured."""

    async def aping(self) -> None:
        self.ping()

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections (sync side)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections of the async side bound to the running loop."""


class _EnqueueBatcher:
    """Collects the aenqueue() calls of one event-loop tick into one round trip."""

    def __init__(self, broker: Broker, loop: asyncio.AbstractEventLoop):
        self.broker = broker
        self.loop = loop
        self.pending: list[tuple[list, asyncio.Future]] = []
        self.scheduled = False
        self.sending: set[asyncio.Task] = set()

    def submit(self, requests: list) -> asyncio.Future:
        fut = self.loop.create_future()
        self.pending.append((requests, fut))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self.scheduled = False
        batch, self.pending = self.pending, []
        if batch:
            t = self.loop.create_task(self._send(batch))
            self.sending.add(t)
            t.add_done_callback(self.sending.discard)

    async def _send(self, batch) -> None:
        requests = [r for reqs, _ in batch for r in reqs]
        try:
            ids = await self.broker.aenqueue_now(requests)
        except EnqueueFailed as e:  # each caller gets the outcome of its own tasks
            i = 0
            for reqs, fut in batch:
                n = len(reqs)
                refused = {j - i: r for j, r in e.refused.items() if i <= j < i + n}
                if not fut.done():
                    if refused:
                        fut.set_exception(EnqueueFailed(reqs, e.ids[i : i + n], refused))
                    else:
                        fut.set_result(e.ids[i : i + n])
                i += n
            return
        except BaseException as e:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            return
        i = 0
        for reqs, fut in batch:
            if not fut.done():
                fut.set_result(ids[i : i + len(reqs)])
            i += len(reqs)


_BATCHERS: weakref.WeakKeyDictionary | None = None  # loop -> {id(broker): _EnqueueBatcher}


async def coalesced_enqueue(broker: Broker, requests) -> list[str | None]:
    """Run ``broker.aenqueue_now`` for the enqueues of one event-loop tick together."""
    global _BATCHERS
    if _BATCHERS is None:
        _BATCHERS = weakref.WeakKeyDictionary()
    loop = asyncio.get_running_loop()
    per_loop = _BATCHERS.setdefault(loop, {})
    batcher = per_loop.get(id(broker))
    if batcher is None or batcher.broker is not broker:
        batcher = per_loop[id(broker)] = _EnqueueBatcher(broker, loop)
    return await batcher.submit(list(requests))


def check_flow(requests: list[EnqueueRequest], parents: list[tuple[str, ...]]) -> str:
    """The queue of a flow, after the checks every broker applies before sending it: one queue
    (one atomic command; on a cluster, one hash slot), at most LIMITS["max_flow_tasks"] tasks,
    no unique keys, parents that are earlier tasks of the flow. Raises BrokerError (nothing is
    sent)."""
    if not requests or len(requests) != len(parents):
        raise BrokerError("a flow needs at least one task, and one parents tuple per task")
    limit = LIMITS["max_flow_tasks"]
    if len(requests) > limit:
        raise BrokerError(
            f"a flow has {len(requests)} tasks, over the limit of {limit}: split the work into "
            f"groups of at most {limit - 1} tasks (each with its callback)"
        )
    queues = sorted({r.queue for r in requests})
    if len(queues) > 1:
        raise BrokerError(
            f"a flow lives in one queue, this one names {queues}: the broker releases the next "
            "tasks in the same atomic step as the ack, which spans one queue (one cluster hash "
            "slot); give every task of the flow the same queue_name"
        )
    seen: set[str] = set()
    for r, ps in zip(requests, parents, strict=True):
        if r.unique is not None:
            raise BrokerError(f"task {r.id} of a flow has a unique key: flows take none")
        for p in ps:
            if p not in seen:
                raise BrokerError(f"parent {p} of task {r.id} is not an earlier task of the flow")
        seen.add(r.id)
    return queues[0]


def _in_thread(method):
    """``method`` (a broker's sync form) as a coroutine function run in a thread (the async
    default of the operator methods). Not thread-sensitive: the brokers' sync clients are
    thread-safe pools, and Django's ORM is not involved."""
    return sync_to_async(method, thread_sensitive=False)


#: contract methods whose client errors become BrokerErrors (see Broker.client_errors): name ->
#: what the message says was being done. The async form ("a" + name) is wrapped too.
TRANSLATED = {
    "enqueue": "enqueue",
    "enqueue_now": "enqueue",
    "enqueue_flow": "enqueue a flow",
    "fetch": "fetch",
    "ack": "ack",
    "ack_with_results": "ack",
    "fail": "fail a task",
    "rescue": "rescue",
    "extend": "extend leases",
    "extend_cancelled": "extend leases",
    "cancel": "cancel a task",
    "info": "read queue info",
    "queues": "list queues",
    "peek": "list tasks",
    "get": "read a task",
    "unique_holder": "read a unique key's task",
    "retry_dead": "retry dead tasks",
    "delete": "delete tasks",
    "clear": "clear a queue",
    "schedule_set": "set a schedule",
    "schedule_del": "delete a schedule",
    "schedule_list": "list schedules",
    "schedule_pause": "pause a schedule",
    "schedule_resume": "resume a schedule",
    "schedule_run": "run a schedule now",
    "rate_limit_set": "set a rate limit",
    "rate_limit_off": "remove a rate limit",
    "rate_limit_get": "read a rate limit",
    "tick": "fire schedules",
    "maintain": "run maintenance",
    "store_result": "store a result",
    "store_results": "store results",
    "get_result": "read a result",
    "set_dlq_cap": "set the DLQ cap",
}


def _translate_errors(cls) -> None:
    """Wrap the sync and async forms of the TRANSLATED methods defined on ``cls``: an error of
    ``client_errors`` becomes ``self.error(e, doing)`` (a BrokerError), the original chained as
    __cause__; BrokerErrors and other exceptions pass as they are."""
    for name, doing in TRANSLATED.items():
        for attr in (name, "a" + name):
            fn = cls.__dict__.get(attr)
            if fn is None or getattr(fn, "_translated", False):
                continue
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def wrapper(self, *args, _fn=fn, _doing=doing, **kwargs):
                    try:
                        return await _fn(self, *args, **kwargs)
                    except BrokerError:
                        raise
                    except self.client_errors as e:
                        raise self.error(e, _doing) from e
            else:

                @functools.wraps(fn)
                def wrapper(self, *args, _fn=fn, _doing=doing, **kwargs):
                    try:
                        return _fn(self, *args, **kwargs)
                    except BrokerError:
                        raise
                    except self.client_errors as e:
                        raise self.error(e, _doing) from e

            wrapper._translated = True  # type: ignore[attr-defined]  # a function attribute
            setattr(cls, attr, wrapper)


def get_broker(alias: str = "default") -> Broker:
    """The broker of the TASKS backend ``alias`` (a vtasks backend)."""
    from django.tasks import task_backends

    backend = task_backends[alias]
    broker = getattr(backend, "broker", None)
    if broker is None:
        raise TypeError(f"Task backend {alias!r} is not a django_vtasks backend.")
    return broker


def vtasks_backends() -> list[tuple[str, Any]]:
    """(alias, backend) of every configured TASKS backend that is a vtasks backend."""
    import logging

    from django.conf import settings
    from django.tasks import task_backends

    out = []
    for alias in getattr(settings, "TASKS", {}) or {}:
        try:
            backend = task_backends[alias]
            if getattr(backend, "broker", None) is not None:
                out.append((alias, backend))
        except Exception:
            logging.getLogger("django_vtasks").debug("TASKS[%r] skipped", alias, exc_info=True)
    return out
