"""The Django task backend shared by the Valkey and Postgres brokers."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterable
from datetime import UTC, datetime

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, transaction
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskError, TaskResult, TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.inspect import func_accepts_kwargs, get_func_args

from .. import _native
from ..broker import Broker, EnqueueFailed, EnqueueRequest, TaskRecord
from ..conf import settings
from ..envelope import check_size, max_payload, run_at_ms, template_for
from ..exceptions import TaskCancelled, is_cancel_error
from ..ratelimits import rate_limit_checks
from ..results import (
    _normalize_args,
    _normalize_kwargs,
    build_result,
    make_result,
    ms_to_dt,
    resolve_task,
    result_from_json,
    result_to_json,
)
from ..retry import RetryPolicy
from ..routes import route, route_checks
from ..signals import asend_many, send_many
from ..tasks import VTask

logger = logging.getLogger("django_vtasks")

_CANCELLED_PATH = f"{TaskCancelled.__module__}.{TaskCancelled.__qualname__}"

# Brokers are shared by every backend instance with the same configuration: Django keeps one
# backend instance per thread/context, and each must not open its own pool.
_BROKERS: dict[tuple, Broker] = {}
_BROKERS_LOCK = threading.Lock()

_request = EnqueueRequest

# The settings _context() needs, read once (LazySettings + defaults cost ~1 µs per read) and
# dropped whenever Django reports a settings change (override_settings, the settings fixture).
_CTX_SETTINGS: tuple | None = None


def _ctx_settings() -> tuple:
    global _CTX_SETTINGS
    cached = _CTX_SETTINGS
    if cached is None:
        cached = _CTX_SETTINGS = (
            int(settings.VTASKS_COMPRESS_THRESHOLD),
            settings.VTASKS_RETRIES or {},
        )
    return cached


def _clear_ctx_settings(**kwargs) -> None:
    global _CTX_SETTINGS
    _CTX_SETTINGS = None


setting_changed.connect(_clear_ctx_settings, dispatch_uid="django_vtasks.backends.ctx")


class VTasksBackend(BaseTaskBackend):
    task_class = VTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True
    #: tasks enqueued inside atomic() go through a transactional outbox (the Valkey backend's
    #: OPTIONS["OUTBOX"]; Postgres writes them in the caller's transaction anyway)
    outbox = False

    def __init__(self, alias, params):
        super().__init__(alias, params)
        for queue in settings.VTASKS_BATCH_QUEUES or {}:
            if self.queues:
                self.queues.add(queue)
        #: seconds results are kept (0 disables results)
        self.result_ttl = float(self.options.get("RESULT_TTL", 86400))
        #: Django database whose transactions enqueue follows
        self.database = self.options.get("DATABASE", DEFAULT_DB_ALIAS)

    def check(self, **kwargs):
        return [*super().check(**kwargs), *route_checks(self), *rate_limit_checks(self)]

    # ---- broker -------------------------------------------------------------------------------
    def _broker_key(self) -> tuple:
        raise NotImplementedError

    def _make_broker(self) -> Broker:
        raise NotImplementedError

    @property
    def broker(self) -> Broker:
        key = (type(self).__qualname__, *self._broker_key())
        broker = _BROKERS.get(key)
        if broker is None:
            with _BROKERS_LOCK:
                broker = _BROKERS.get(key)
                if broker is None:
                    broker = _BROKERS[key] = self._make_broker()
        return broker

    @property
    def result_ttl_ms(self) -> int:
        return int(self.result_ttl * 1000)

    # ---- enqueue ------------------------------------------------------------------------------
    def _context(self) -> dict:
        """Settings read once per enqueue call (not once per task)."""
        threshold, retries = _ctx_settings()
        return {
            "threshold": threshold,
            "retries": retries,
            "validated": set(),
            "now": None,
            "ts": None,
            "ids": None,
        }

    def _prepare(
        self, task: Task, args, kwargs, ctx: dict | None = None
    ) -> tuple[TaskResult, EnqueueRequest]:
        ctx = ctx if ctx is not None else self._context()
        validated = ctx["validated"]
        task = route(task)
        # each distinct task object once per call (TASKS may change between); by identity, as
        # hashing a Task dataclass hashes all its fields (each result holds its task, so no id is
        # reused within one call)
        if id(task) not in validated:
            self.validate_task(task)
            validated.add(id(task))
        now = ctx["now"]
        if now is None:
            now = timezone.now()
            ts = now.timestamp()
        else:
            ts = ctx["ts"]
        ids = ctx["ids"]
        rid = ids.pop() if ids else os.urandom(16).hex()
        # builds (and normalises) args/kwargs like Django: bad arguments raise here, synchronously
        result = make_result(
            task,
            rid,
            TaskResultStatus.READY,
            now,
            None,
            None,
            None,
            args,
            kwargs,
            self.alias,
            [],
            [],
        )
        run_after = task.run_after
        data = template_for(task, self.alias) % (
            orjson.dumps(result.args),
            orjson.dumps(result.kwargs),
            orjson.dumps(ts),
            rid.encode(),
        )
        check_size(data, task.module_path)
        payload = _native.encode_payload(data, ctx["threshold"])

        unique = None
        key = getattr(task, "unique", False)
        if key:
            if key is True:
                digest = hashlib.sha1(
                    orjson.dumps(
                        [task.module_path, result.args, result.kwargs],
                        option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS,
                    )
                ).hexdigest()
                key = f"{task.module_path}:{digest}"
            unique = (str(key), int(getattr(task, "unique_ttl", 3600) * 1000))
        request = EnqueueRequest(
            queue=task.queue_name,
            id=rid,
            payload=payload,
            priority=int(task.priority),
            at_ms=run_at_ms(run_after) if run_after is not None else None,
            unique=unique,
            max_attempts=RetryPolicy.max_attempts_of(task, task.queue_name, ctx["retries"]),
        )
        return result, request

    def _split_options(self, task: Task, kwargs: dict) -> tuple[Task, dict]:
        """enqueue_many compatibility with the original: a ``queue_name`` entry in kwargs routes
        the task when the function does not take such an argument itself."""
        if "queue_name" in kwargs:
            func = task.func
            if "queue_name" not in get_func_args(func) and not func_accepts_kwargs(func):
                kwargs = dict(kwargs)
                task = task.using(queue_name=kwargs.pop("queue_name"))
        return task, kwargs

    def _prepare_many(self, items: Iterable) -> tuple[list[TaskResult], list[EnqueueRequest]]:
        results: list[TaskResult] = []
        requests: list[EnqueueRequest] = []
        items = list(items)
        ctx = self._context()
        # one timestamp and one os.urandom() call for the tasks of one enqueue_many call
        now = ctx["now"] = timezone.now()
        ts = ctx["ts"] = now.timestamp()
        ts_json = orjson.dumps(ts)
        if len(items) > 1:
            rand = os.urandom(16 * len(items)).hex()
            ctx["ids"] = [rand[i : i + 32] for i in range(0, len(rand), 32)]
        ids = ctx["ids"]
        validated = ctx["validated"]
        threshold = ctx["threshold"]
        limit = max_payload()
        alias = self.alias
        ready = TaskResultStatus.READY
        dumps = orjson.dumps
        encode = _native.encode_payload
        build, normalize_args, normalize_kwargs = build_result, _normalize_args, _normalize_kwargs
        append_result, append_request = results.append, requests.append
        # per distinct task object of this call: the envelope around args/kwargs/id as one
        # bytes template (byte-identical to orjson.dumps of the envelope dict) and the request
        # fields; None for unique tasks (their key depends on the arguments: _prepare)
        specs: dict[int, tuple | None] = {}
        for item in items:
            task, args, kwargs = item
            task = route(task)
            if type(kwargs) is not dict:
                kwargs = dict(kwargs or {})
            spec: tuple | None = None
            if "queue_name" not in kwargs:  # else _split_options may route it elsewhere
                if id(task) in specs:
                    spec = specs[id(task)]
                else:
                    if id(task) not in validated:
                        self.validate_task(task)
                        validated.add(id(task))
                    spec = specs[id(task)] = self._envelope_spec(task, ctx["retries"])
            if spec is None:
                task, kwargs = self._split_options(task, dict(kwargs))
                result, request = self._prepare(task, list(args or ()), kwargs, ctx)
                append_result(result)
                append_request(request)
                continue
            if type(args) is not tuple and type(args) is not list:
                args = list(args or ())
            rid = ids.pop() if ids else os.urandom(16).hex()
            # the TaskResult make_result() builds (args normalised like Django's __post_init__,
            # bad arguments raise here, synchronously), inlined
            args = normalize_args(args)
            kwargs = normalize_kwargs(kwargs) if kwargs else {}
            r = build(task, rid, ready, now, None, None, None, args, kwargs, alias, [], [])
            template, queue, priority, at_ms, max_attempts = spec
            data = template % (
                dumps(args),
                dumps(kwargs) if kwargs else b"{}",
                ts_json,
                rid.encode(),
            )
            if len(data) > limit:
                check_size(data, task.module_path)
            append_result(r)
            append_request(
                _request(
                    queue,
                    rid,
                    data if len(data) <= threshold else encode(data, threshold),
                    priority,
                    at_ms,
                    None,
                    max_attempts,
                )
            )
        return results, requests

    def _envelope_spec(self, task: Task, retries_cfg: dict) -> tuple | None:
        """What _prepare puts around each task's args/kwargs/id, for a task without a unique
        key: a ``%``-template of the JSON envelope and the EnqueueRequest fields."""
        if getattr(task, "unique", False):
            return None
        run_after = task.run_after
        return (
            template_for(task, self.alias),
            task.queue_name,
            int(task.priority),
            run_at_ms(run_after) if run_after is not None else None,
            RetryPolicy.max_attempts_of(task, task.queue_name, retries_cfg),
        )

    def _added(
        self, results: list[TaskResult], ids: list[str | None], requests: list[EnqueueRequest]
    ) -> list[TaskResult]:
        """The results whose task is in the broker. A nil id means the id was already there or
        the unique key held. Ids are fresh per call, so without a unique key the id can only
        have been added by an earlier attempt of this same send (the client retried after a
        lost reply): that task is enqueued, exactly once."""
        added = []
        for result, rid, request in zip(results, ids, requests, strict=True):
            if rid is None and request.unique is not None:
                logger.debug(
                    "task %s (%s) not enqueued: unique key %r held",
                    result.id,
                    result.task.module_path,
                    request.unique[0],
                )
            else:
                added.append(result)
        return added

    def _sent(self, results, ids, requests) -> None:
        send_many(task_enqueued, type(self), self._added(results, ids, requests))

    async def _asent(self, results, ids, requests) -> None:
        await asend_many(task_enqueued, type(self), self._added(results, ids, requests))

    # A unique enqueue the broker suppressed (its key is held) returns the result of the task
    # that holds the key: its id exists, get_result()/refresh() read that task. When no live
    # holder can be found (its key expired meanwhile) the result keeps its own id, which no
    # task has (get_result raises TaskResultDoesNotExist). Inside atomic() on Valkey the send
    # happens at commit, so the result changes at commit.
    def _unique_holder(self, request: EnqueueRequest) -> str | None:
        if request.unique is None:
            return None
        record = self.broker.unique_holder(request.queue, request.unique[0])
        return record.id if record is not None else None

    async def _aunique_holder(self, request: EnqueueRequest) -> str | None:
        if request.unique is None:
            return None
        record = await self.broker.aunique_holder(request.queue, request.unique[0])
        return record.id if record is not None else None

    @staticmethod
    def _suppressed(results, ids, requests):
        return [
            (result, request)
            for result, rid, request in zip(results, ids, requests, strict=True)
            if rid is None and request.unique is not None
        ]

    def _adopt_holders(self, results, ids, requests) -> None:
        for result, request in self._suppressed(results, ids, requests):
            try:
                holder = self._unique_holder(request)
                if holder is not None:
                    _adopt(result, self.get_result(holder))
            except Exception as e:  # the enqueue itself went through: report, do not raise
                logger.warning(
                    "task %s not enqueued (unique key %r held); its holder could not be read: %s",
                    result.id,
                    request.unique[0],
                    e,
                )

    async def _aadopt_holders(self, results, ids, requests) -> None:
        for result, request in self._suppressed(results, ids, requests):
            try:
                holder = await self._aunique_holder(request)
                if holder is not None:
                    _adopt(result, await self.aget_result(holder))
            except Exception as e:
                logger.warning(
                    "task %s not enqueued (unique key %r held); its holder could not be read: %s",
                    result.id,
                    request.unique[0],
                    e,
                )

    def _write(self, results: list[TaskResult], requests: list[EnqueueRequest]) -> None:
        """Write the tasks (sync). Subclasses decide how transactions are honoured."""
        raise NotImplementedError

    def enqueue(self, task, args, kwargs):
        result, request = self._prepare(task, args, kwargs)
        self._write([result], [request])
        return result

    async def aenqueue(self, task, args, kwargs):
        result, request = self._prepare(task, args, kwargs)
        ids = await self.broker.aenqueue([request])
        await self._asent([result], ids, [request])
        await self._aadopt_holders([result], ids, [request])
        return result

    def enqueue_many(self, items) -> list[TaskResult]:
        """Enqueue ``(task, args, kwargs)`` tuples; one round trip per queue."""
        results, requests = self._prepare_many(items)
        if requests:
            self._write(results, requests)
        return results

    async def aenqueue_many(self, items) -> list[TaskResult]:
        results, requests = self._prepare_many(items)
        if requests:
            try:
                ids = await self.broker.aenqueue(requests)
            except EnqueueFailed as e:  # some queues refused: say which results went in
                e.results = [r for r, rid in zip(results, e.ids, strict=True) if rid is not None]
                raise
            await self._asent(results, ids, requests)
            await self._aadopt_holders(results, ids, requests)
        return results

    def _in_atomic_block(self) -> bool:
        return transaction.get_connection(self.database).in_atomic_block

    # ---- results ------------------------------------------------------------------------------
    #
    # A result is read from two places: the result a worker stored (started_at, errors,
    # worker_ids, the return value) and the broker's record of the task (its live state). A
    # stored result that is final (SUCCESSFUL/FAILED) is the truth; any other is brought to the
    # broker's state: READY while the task waits for an attempt, RUNNING while a worker holds it,
    # FAILED with the broker's reason once dead-lettered (e.g. its worker died on every attempt).

    def _search_queues(self, broker_queues: list[str]) -> list[str]:
        seen = []
        for q in [*sorted(self.queues), *(settings.VTASKS_QUEUES or []), *broker_queues]:
            if q not in seen:
                seen.append(q)
        return seen

    def _pending(self, result_id: str) -> TaskResult | None:
        """The READY result of a task enqueued earlier in the caller's open atomic() block.

        Valkey sends such a task at commit and Postgres wrote it on Django's connection, which the
        broker's own pool cannot see yet; the block's on-commit callbacks carry the results
        (Django drops the callbacks of a rolled-back savepoint, so these are exactly the tasks the
        block still holds)."""
        try:
            connection = transaction.get_connection(self.database)
        except Exception:
            return None
        if not connection.in_atomic_block:
            return None
        for entry in connection.run_on_commit:
            for result in getattr(entry[1], "vtasks_results", ()):
                if result.id == result_id:
                    return _copy(result)
        return None

    def _unsent_result(self, result_id: str) -> TaskResult | None:
        """The result of a task committed but not yet in the broker (a transactional outbox's
        row), or None."""
        return None

    def _after_commit(self, func, results: list[TaskResult]) -> AfterCommit:
        return AfterCommit(func, results)

    def _from_record(self, record: TaskRecord) -> TaskResult:
        """The result of a task nothing was stored for, from the broker's record alone."""
        env = record.envelope
        if env is None:
            raise TaskResultDoesNotExist(record.id)
        run_after = None
        if env.get("run_after"):
            run_after = datetime.fromisoformat(env["run_after"])
        task = resolve_task(
            env["func"],
            queue=env.get("queue", record.queue),
            priority=record.priority,
            run_after=run_after,
            backend=self.alias,
            strict=False,
            options=env.get("options"),
        )
        # the enqueuing client's own time (what enqueue() returned), not the broker's
        enqueued = (
            _local(datetime.fromtimestamp(float(env["ts"]), UTC))
            if env.get("ts")
            else _local(ms_to_dt(record.enqueued_at))
        )
        result: TaskResult = TaskResult(
            task=task,
            id=record.id,
            status=TaskResultStatus.READY,
            enqueued_at=enqueued,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=env.get("args") or [],
            kwargs=env.get("kwargs") or {},
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        return self._live(record, result)

    def _live(self, record: TaskRecord, stored: TaskResult) -> TaskResult:
        """``stored`` (not final) in the state the broker's ``record`` reports."""
        if stored.is_finished:
            return stored
        result = _copy(stored)
        worker_ids = result.worker_ids
        # attempts == deliveries so far; those lost to a crash before any store count too
        while len(worker_ids) < record.attempt - 1:
            worker_ids.append("unknown")
        if len(worker_ids) < record.attempt:
            worker_ids.append(record.worker or "unknown")
        state = record.state
        if state == "inflight":
            _set(result, "status", TaskResultStatus.RUNNING)
            _set(result, "finished_at", None)  # (a stored READY keeps its failed attempt's)
            if result.started_at is None or result.last_attempted_at is None:
                # read in the first moments of an attempt, before its worker recorded the start
                # (see Worker.RUNNING_RECORD_AFTER): the best bound the reader has is now
                now = timezone.now()
                _set(result, "started_at", result.started_at or now)
                _set(result, "last_attempted_at", result.last_attempted_at or now)
        elif state == "dead":
            _set(result, "status", TaskResultStatus.FAILED)
            _set(result, "finished_at", _local(ms_to_dt(record.failed_at)) or timezone.now())
            result.errors.append(
                TaskError(
                    exception_class_path=(
                        _CANCELLED_PATH
                        if is_cancel_error(record.error)
                        else "builtins.RuntimeError"
                    ),
                    traceback=record.error or "dead-lettered",
                )
            )
        else:  # ready / delayed: waits for its next attempt
            _set(result, "status", TaskResultStatus.READY)
        return result

    def _stored_or_live(self, raw: bytes | None, record: TaskRecord | None) -> TaskResult | None:
        if raw is not None:
            stored = result_from_json(raw, self.alias)
            return stored if record is None else self._live(record, stored)
        return self._from_record(record) if record is not None else None

    def get_result(self, result_id):
        rid = str(result_id)
        pending = self._pending(rid)
        if pending is not None:
            return pending
        broker = self.broker
        raw = broker.get_result(rid)
        if raw is not None:
            stored = result_from_json(raw, self.alias)
            if stored.is_finished:
                return stored
            record = broker.get(stored.task.queue_name, rid)
            if record is None:  # acked (or removed) since: its final result is stored by now
                return self._stored_or_live(broker.get_result(rid), None) or stored
            return self._live(record, stored)
        for queue in self._search_queues(broker.queues()):
            record = broker.get(queue, rid)
            if record is not None:
                # a worker may have stored a result since the first read
                return self._stored_or_live(broker.get_result(rid), record)
        # the task may have finished between the two lookups
        raw = broker.get_result(rid)
        if raw is None:
            unsent = self._unsent_result(rid)
            if unsent is None:
                raise TaskResultDoesNotExist(result_id)
            return unsent
        return result_from_json(raw, self.alias)

    async def aget_result(self, result_id):
        rid = str(result_id)
        broker = self.broker
        raw = await broker.aget_result(rid)
        if raw is not None:
            stored = result_from_json(raw, self.alias)
            if stored.is_finished:
                return stored
            record = await broker.aget(stored.task.queue_name, rid)
            if record is None:
                return self._stored_or_live(await broker.aget_result(rid), None) or stored
            return self._live(record, stored)
        for queue in self._search_queues(await broker.aqueues()):
            record = await broker.aget(queue, rid)
            if record is not None:
                return self._stored_or_live(await broker.aget_result(rid), record)
        raw = await broker.aget_result(rid)
        if raw is None:
            unsent = await sync_to_async(self._unsent_result)(rid)
            if unsent is None:
                raise TaskResultDoesNotExist(result_id)
            return unsent
        return result_from_json(raw, self.alias)

    # ---- cancel -------------------------------------------------------------------------------
    #
    # The broker cancels atomically (VT.CANCEL / vtasks_cancel): a waiting task is dead-lettered
    # with "cancelled[: reason]", so get_result() reads FAILED (TaskCancelled) from then on; the
    # FAILED result is also stored, so it outlives the dead-letter cap for RESULT_TTL. A running
    # task is flagged: its worker sees it at its next heartbeat (lease/4), cancels an async task
    # and shows context.cancel_requested to a sync one; the lease is no longer extended, and a
    # task whose lease ends is dead-lettered as cancelled, never run again.

    def _queue_of(self, rid: str) -> str | None:
        broker = self.broker
        raw = broker.get_result(rid)
        if raw is not None:
            return result_from_json(raw, self.alias).task.queue_name
        for queue in self._search_queues(broker.queues()):
            record = broker.get(queue, rid)
            if record is not None and record.state != "dead":
                return queue
        return None

    async def _aqueue_of(self, rid: str) -> str | None:
        broker = self.broker
        raw = await broker.aget_result(rid)
        if raw is not None:
            return result_from_json(raw, self.alias).task.queue_name
        for queue in self._search_queues(await broker.aqueues()):
            record = await broker.aget(queue, rid)
            if record is not None and record.state != "dead":
                return queue
        return None

    def _store_cancelled(self, result: TaskResult) -> None:
        data = result_to_json(result) if self.result_ttl_ms > 0 else None
        if data is not None:
            self.broker.store_result(result.id, data, self.result_ttl_ms)

    def cancel(self, result_id, reason: str = "", queue: str | None = None) -> str | None:
        """Cancel the task of ``result_id``: "removed" (it was waiting; its result now reads
        FAILED with a TaskCancelled error), "flagged" (it is running: its worker is told at its
        next heartbeat), or None (no such task waits or runs: it finished, or never existed).
        ``queue``: where it is, when the caller knows (else it is looked up)."""
        rid = str(result_id)
        queue = queue or self._queue_of(rid)
        if queue is None:
            return None
        outcome = self.broker.cancel(queue, rid, reason)
        if outcome == "removed":
            try:
                self._store_cancelled(self.get_result(rid))
            except Exception:  # the broker's dead entry says it anyway (get_result reads it)
                logger.warning("storing the cancelled result of %s failed", rid, exc_info=True)
        return outcome

    async def acancel(self, result_id, reason: str = "", queue: str | None = None) -> str | None:
        rid = str(result_id)
        queue = queue or await self._aqueue_of(rid)
        if queue is None:
            return None
        outcome = await self.broker.acancel(queue, rid, reason)
        if outcome == "removed":
            try:
                result = await self.aget_result(rid)
                data = result_to_json(result) if self.result_ttl_ms > 0 else None
                if data is not None:
                    await self.broker.astore_result(rid, data, self.result_ttl_ms)
            except Exception:
                logger.warning("storing the cancelled result of %s failed", rid, exc_info=True)
        return outcome


class AfterCommit:
    """An on-commit callback that carries the results of the tasks it sends (see _pending)."""

    __slots__ = ("func", "vtasks_results")

    def __init__(self, func, results: list[TaskResult]):
        self.func = func
        self.vtasks_results = results

    def __call__(self):
        self.func()


_set = object.__setattr__


def _copy(result: TaskResult) -> TaskResult:
    """A copy with its own errors/worker_ids lists."""
    copy = build_result(
        result.task,
        result.id,
        result.status,
        result.enqueued_at,
        result.started_at,
        result.last_attempted_at,
        result.finished_at,
        result.args,
        result.kwargs,
        result.backend,
        list(result.errors),
        list(result.worker_ids),
    )
    _set(copy, "_return_value", result._return_value)  # type: ignore[attr-defined]  # Django's private field, not in django-stubs
    return copy


def _adopt(result: TaskResult, holder: TaskResult) -> None:
    """Make ``result`` (a suppressed enqueue's) the result of the task that holds its key."""
    for name in (
        "task",
        "id",
        "status",
        "enqueued_at",
        "started_at",
        "finished_at",
        "last_attempted_at",
        "args",
        "kwargs",
        "backend",
        "errors",
        "worker_ids",
        "_return_value",
    ):
        _set(result, name, getattr(holder, name))


def _local(value: datetime | None) -> datetime | None:
    """An aware UTC datetime as the project's datetimes are (naive when USE_TZ is False)."""
    if value is not None and not django_settings.USE_TZ:
        return timezone.make_naive(value)
    return value
