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
of :class:`TaskRecord`.
"""

from __future__ import annotations

import asyncio
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "STATES",
    "Broker",
    "BrokerError",
    "Delivery",
    "EnqueueFailed",
    "EnqueueRequest",
    "ScheduleRecord",
    "TaskRecord",
    "get_broker",
]

#: Task states a broker can list (``peek``).
STATES = ("ready", "delayed", "inflight", "dead")

#: Keys of the ``info()`` dict (same as VT.INFO).
INFO_FIELDS = (
    "ready",
    "delayed",
    "inflight",
    "dead",
    "dead_evicted",
    "enqueued_total",
    "acked_total",
    "failed_total",
    "retried_total",
    "rescued_total",
    "dead_total",
    "schedules",
    "unique_keys",
)


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
            "this error's .results holds them (retry only the others).")


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
    state: str  # ready | delayed | inflight | dead
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


class Broker(ABC):
    """Sync + async queue operations. See the module docstring and .notes/broker-api.md."""

    #: "valkey" or "postgres"
    kind: str = ""

    def check_queues(self, queues: list[str]) -> None:
        """Raise BrokerError if one worker cannot fetch from all ``queues`` at once (a Valkey
        cluster needs them in one hash slot). Called when a worker starts."""

    # ---- producer -----------------------------------------------------------------------------
    @abstractmethod
    def enqueue(self, requests: list[EnqueueRequest]) -> list[str | None]:
        """Enqueue tasks, one round trip per queue. Returns, in order, the id or None where a
        task was not added (unique key held or id already present)."""

    @abstractmethod
    async def aenqueue(self, requests: list[EnqueueRequest]) -> list[str | None]: ...

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

    # ---- operator -----------------------------------------------------------------------------
    @abstractmethod
    def info(self, queue: str) -> dict[str, int]:
        """Counters of a queue; keys = INFO_FIELDS (zeros for an unknown queue)."""

    @abstractmethod
    async def ainfo(self, queue: str) -> dict[str, int]: ...

    @abstractmethod
    def queues(self) -> list[str]:
        """Logical names of the queues that exist in the broker."""

    @abstractmethod
    async def aqueues(self) -> list[str]: ...

    @abstractmethod
    def peek(self, queue: str, state: str, offset: int = 0, count: int = 10) -> list[TaskRecord]:
        """List tasks in a state (STATES), in fetch/due/deadline/newest-first order."""

    @abstractmethod
    async def apeek(
        self, queue: str, state: str, offset: int = 0, count: int = 10
    ) -> list[TaskRecord]: ...

    @abstractmethod
    def get(self, queue: str, id: str) -> TaskRecord | None: ...

    @abstractmethod
    async def aget(self, queue: str, id: str) -> TaskRecord | None: ...

    def unique_holder(self, queue: str, key: str) -> TaskRecord | None:
        """The live task holding unique ``key`` on ``queue`` (None when the key is free or
        the broker cannot tell)."""
        return None

    async def aunique_holder(self, queue: str, key: str) -> TaskRecord | None:
        return None

    @abstractmethod
    def retry_dead(self, queue: str, ids: list[str] | None = None) -> int:
        """Move dead tasks (all when ids is None) back to ready."""

    @abstractmethod
    async def aretry_dead(self, queue: str, ids: list[str] | None = None) -> int: ...

    @abstractmethod
    def delete(self, queue: str, ids: list[str]) -> int:
        """Remove ready/delayed/dead tasks by id (in-flight ones are kept)."""

    @abstractmethod
    async def adelete(self, queue: str, ids: list[str]) -> int: ...

    @abstractmethod
    def clear(self, queue: str, what: str) -> int:
        """what: "ready" (ready+delayed), "dead", or "all" (also in-flight). Schedules stay."""

    @abstractmethod
    async def aclear(self, queue: str, what: str) -> int: ...

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

    @abstractmethod
    async def aschedule_set(
        self,
        queue: str,
        name: str,
        payload: bytes,
        cron: str | None = None,
        every_ms: int | None = None,
        priority: int = 0,
    ) -> None: ...

    @abstractmethod
    def schedule_del(self, queue: str, name: str) -> bool: ...

    @abstractmethod
    async def aschedule_del(self, queue: str, name: str) -> bool: ...

    @abstractmethod
    def schedule_list(self, queue: str) -> list[ScheduleRecord]: ...

    @abstractmethod
    async def aschedule_list(self, queue: str) -> list[ScheduleRecord]: ...

    def tick(self) -> int:
        """Client-driven timer duties (Postgres: fire due schedules, rescue expired leases).
        No-op on Valkey, where the server does it. Returns tasks enqueued by schedules."""
        return 0

    async def atick(self) -> int:
        return 0

    def maintain(self) -> None:
        """Client-driven lease rescue on every queue (Postgres); no-op on Valkey."""

    async def amaintain(self) -> None:
        """See maintain()."""

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

    def close(self) -> None:
        """Release connections (sync side)."""

    async def aclose(self) -> None:
        """Release connections of the async side bound to the running loop."""


class _EnqueueBatcher:
    """Collects the aenqueue() calls of one event-loop tick into one round trip."""

    def __init__(self, broker: "Broker", loop: asyncio.AbstractEventLoop):
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
            ids = await self.broker._aenqueue_now(requests)
        except EnqueueFailed as e:  # each caller gets the outcome of its own tasks
            i = 0
            for reqs, fut in batch:
                n = len(reqs)
                refused = {j - i: r for j, r in e.refused.items() if i <= j < i + n}
                if not fut.done():
                    if refused:
                        fut.set_exception(EnqueueFailed(reqs, e.ids[i:i + n], refused))
                    else:
                        fut.set_result(e.ids[i:i + n])
                i += n
            return
        except BaseException as e:  # noqa: BLE001 - handed to every waiting caller
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            if isinstance(e, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            return
        i = 0
        for reqs, fut in batch:
            if not fut.done():
                fut.set_result(ids[i:i + len(reqs)])
            i += len(reqs)


_BATCHERS: "weakref.WeakKeyDictionary" = None  # loop -> {id(broker): _EnqueueBatcher}


async def coalesced_enqueue(broker: Broker, requests) -> list[str | None]:
    """Run ``broker._aenqueue_now`` for the enqueues of one event-loop tick together."""
    global _BATCHERS
    if _BATCHERS is None:
        _BATCHERS = weakref.WeakKeyDictionary()
    loop = asyncio.get_running_loop()
    per_loop = _BATCHERS.setdefault(loop, {})
    batcher = per_loop.get(id(broker))
    if batcher is None or batcher.broker is not broker:
        batcher = per_loop[id(broker)] = _EnqueueBatcher(broker, loop)
    return await batcher.submit(list(requests))


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
