"""PostgresBroker: the Broker contract (broker.py) with the queue semantics of the Valkey module,
in Postgres, through the native extension's pools (pg-adapter): ``PgQueue`` for the sync forms,
one ``AsyncPgQueue`` per event loop for the async forms."""

from __future__ import annotations

import asyncio
import re
import weakref
from typing import Any

from .. import _native
from ..broker import (
    Broker,
    BrokerError,
    Delivery,
    EnqueueFailed,
    ScheduleRecord,
    TaskRecord,
    check_flow,
)
from ..redact import redact

_DSN_PASSWORD = re.compile(r"password='((?:[^'\\]|\\.)*)'")


def _delivery(t) -> Delivery:
    q, i, tok, a, p = t
    return Delivery(q, i, tok, int(a), bytes(p))


class PostgresBroker(Broker):
    kind = "postgres"
    #: no server-side timers: the worker calls atick() / amaintain()
    supports_server_timers = False
    supports_cancel = True  # vtasks_cancel (migration 4)
    supports_flows = True  # vtasks_enqueue_flow (migration 5)
    client_errors = (_native.PgError,)

    def __init__(
        self,
        dsn: str,
        pool_size: int = 10,
        dlq_cap: int = 1000,
        max_attempts: int = 3,
        default_lease_ms: int = 30000,
        notify: bool = True,
    ):
        self.dsn = dsn
        self._kwargs: dict[str, Any] = dict(
            pool_size=pool_size,
            dlq_cap=dlq_cap,
            max_attempts=max_attempts,
            default_lease_ms=default_lease_ms,
            notify=notify,
        )
        self.max_attempts = max_attempts
        self._q: _native.PgQueue | None = None
        self._aqs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def q(self):
        if self._q is None:
            try:
                self._q = _native.PgQueue(self.dsn, **self._kwargs)
            except Exception as e:
                raise BrokerError(f"cannot connect to Postgres: {redact(e, self._password)}") from e
        return self._q

    @property
    def _password(self) -> str | None:
        """The DSN's password (key/value form, as _dsn_from_django writes it), for masking."""
        m = _DSN_PASSWORD.search(self.dsn or "")
        return m.group(1).replace("\\'", "'").replace("\\\\", "\\") if m else None

    def error(self, e, doing):
        # PgError's message says where it connected and what to check; the password is masked
        return BrokerError(f"cannot {doing}: {redact(e, self._password)}")

    @property
    def aq(self):
        loop = asyncio.get_running_loop()
        aq = self._aqs.get(loop)
        if aq is None:
            aq = self._aqs[loop] = _native.AsyncPgQueue(self.dsn, **self._kwargs)
        return aq

    # ---- producer -------------------------------------------------------------------------------
    @staticmethod
    def _groups(requests):
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = (
                r.queue,
                r.priority,
                r.at_ms,
                r.max_attempts,
                r.unique,
                r.id if r.unique else None,
            )
            groups.setdefault(key, []).append(i)
        return groups

    def enqueue(self, requests):
        out: list[str | None] = [None] * len(requests)
        for (queue, prio, at_ms, max_att, unique, _), idxs in self._groups(requests).items():
            # PgError: its message says where it connected and what to check. ValueError: the
            # arguments were refused (payload too large, name too long ...): Valkey's module
            # refuses the same ones, and the Broker contract raises BrokerError for both.
            try:
                ids = self.q.enqueue(
                    queue,
                    [requests[i].payload for i in idxs],
                    ids=[requests[i].id for i in idxs],
                    priority=prio,
                    at_ms=at_ms,
                    unique=unique,
                    max_attempts=max_att,
                )
            except (_native.PgError, ValueError) as e:
                raise BrokerError(f"enqueue failed: {e}") from e
            for i, rid in zip(idxs, ids, strict=True):
                out[i] = rid
        return out

    @staticmethod
    def _flow_tasks(requests, parents):
        queue = check_flow(requests, parents)
        tasks = [
            (r.id, r.priority, r.max_attempts, r.at_ms, list(ps), r.payload)
            for r, ps in zip(requests, parents, strict=True)
        ]
        return queue, tasks

    def enqueue_flow(self, requests, parents):
        queue, tasks = self._flow_tasks(requests, parents)
        try:
            return self.q.enqueue_flow(queue, tasks)
        except ValueError as e:
            raise BrokerError(f"enqueue of a flow refused: {e}") from e

    async def aenqueue_flow(self, requests, parents):
        queue, tasks = self._flow_tasks(requests, parents)
        try:
            return await self.aq.enqueue_flow(queue, tasks)
        except ValueError as e:
            raise BrokerError(f"enqueue of a flow refused: {e}") from e

    async def aenqueue_now(self, requests):
        out: list[str | None] = [None] * len(requests)
        groups = list(self._groups(requests).items())
        aq = self.aq
        # one statement per queue/options, each atomic, not atomic together: a refused group
        # leaves the others enqueued, which EnqueueFailed reports per task
        replies = await asyncio.gather(
            *[
                aq.enqueue(
                    queue,
                    [requests[i].payload for i in idxs],
                    ids=[requests[i].id for i in idxs],
                    priority=prio,
                    at_ms=at_ms,
                    unique=unique,
                    max_attempts=max_att,
                )
                for (queue, prio, at_ms, max_att, unique, _), idxs in groups
            ],
            return_exceptions=True,
        )
        refused: dict[int, str] = {}
        first_error = None
        for (_, idxs), ids in zip(groups, replies, strict=True):
            if isinstance(ids, BaseException):
                if not isinstance(ids, (_native.PgError, ValueError)):
                    raise ids
                first_error = first_error or ids
                for i in idxs:
                    refused[i] = f"enqueue failed: {redact(ids, self._password)}"
                continue
            for i, rid in zip(idxs, ids, strict=True):
                out[i] = rid
        if refused:
            if len(refused) == len(requests):
                raise BrokerError(refused[0]) from first_error
            raise EnqueueFailed(requests, out, refused) from first_error
        return out

    def enqueue_statements(self, requests):
        """[(sql, params, idxs)] to run on Django's connection (caller's transaction)."""
        out = []
        for (queue, prio, at_ms, max_att, unique, _), idxs in self._groups(requests).items():
            try:
                sql, params = _native.PgQueue.enqueue_sql(
                    queue,
                    [requests[i].payload for i in idxs],
                    [requests[i].id for i in idxs],
                    priority=prio,
                    at_ms=at_ms,
                    unique=unique,
                    max_attempts=max_att,
                    max_attempts_default=self.max_attempts,
                    notify=self._kwargs["notify"],
                )
            except ValueError as e:  # as in enqueue()
                raise BrokerError(f"enqueue refused: {e}") from e
            out.append((sql, params, idxs))
        return out

    # ---- consumer -------------------------------------------------------------------------------
    def fetch(self, queues, worker, count, lease_ms=None, block_ms=None):
        r = self.q.fetch(list(queues), worker, int(count), lease_ms=lease_ms, block_ms=block_ms)
        return [_delivery(t) for t in r or []]

    async def afetch(self, queues, worker, count, lease_ms=None, block_ms=None):
        r = await self.aq.fetch(
            list(queues), worker, int(count), lease_ms=lease_ms, block_ms=block_ms
        )
        return [_delivery(t) for t in r or []]

    def ack(self, queue, pairs):
        return self.q.ack(queue, list(pairs)) if pairs else 0

    async def aack(self, queue, pairs):
        return await self.aq.ack(queue, list(pairs)) if pairs else 0

    @staticmethod
    def _results(results):
        return [(rid, data, int(ttl)) for rid, data, ttl in results if ttl > 0 and data is not None]

    def ack_with_results(self, queue, pairs, results):
        # one statement: the results and the ack commit together (one round trip)
        results = self._results(results)
        if not pairs and not results:
            return 0
        return self.q.ack(queue, list(pairs), results or None)

    async def aack_with_results(self, queue, pairs, results):
        results = self._results(results)
        if not pairs and not results:
            return 0
        return await self.aq.ack(queue, list(pairs), results or None)

    async def astore_results(self, results):
        results = self._results(results)
        if results:
            await self.aq.store_results(results)  # one statement

    def fail(self, queue, id, token, error, retry_ms=None):
        return self.q.fail(queue, id, token, error, retry_ms=retry_ms)

    async def afail(self, queue, id, token, error, retry_ms=None):
        return await self.aq.fail(queue, id, token, error, retry_ms=retry_ms)

    def rescue(self, queue, worker=None):
        return self.q.rescue(queue, worker)

    async def arescue(self, queue, worker=None):
        return await self.aq.rescue(queue, worker)

    def extend(self, queue, worker, lease_ms):
        return self.q.extend(queue, worker, int(lease_ms))

    async def aextend(self, queue, worker, lease_ms):
        return await self.aq.extend(queue, worker, int(lease_ms))

    def extend_cancelled(self, queue, worker, lease_ms):
        n, ids = self.q.extend_cancelled(queue, worker, int(lease_ms))
        return n, list(ids)

    async def aextend_cancelled(self, queue, worker, lease_ms):
        n, ids = await self.aq.extend_cancelled(queue, worker, int(lease_ms))
        return n, list(ids)

    def cancel(self, queue, id, reason=""):
        try:
            return self.q.cancel(queue, id, reason)
        except ValueError as e:  # a refused argument: a BrokerError, as Valkey's refusal is
            raise BrokerError(f"cannot cancel a task: {e}") from e

    async def acancel(self, queue, id, reason=""):
        try:
            return await self.aq.cancel(queue, id, reason)
        except ValueError as e:
            raise BrokerError(f"cannot cancel a task: {e}") from e

    # ---- operator -------------------------------------------------------------------------------
    def info(self, queue):
        return dict(self.q.info(queue))

    async def ainfo(self, queue):
        return dict(await self.aq.info(queue))

    def queues(self):
        return sorted(self.q.queues())

    async def aqueues(self):
        return sorted(await self.aq.queues())

    def peek(self, queue, state, offset=0, count=10):
        return [
            TaskRecord.from_fields(d, queue)
            for d in self.q.peek(queue, state.lower(), offset, count)
        ]

    def get(self, queue, id):
        d = self.q.get(queue, id)
        return TaskRecord.from_fields(d, queue) if d else None

    async def aget(self, queue, id):
        d = await self.aq.get(queue, id)
        return TaskRecord.from_fields(d, queue) if d else None

    def retry_dead(self, queue, ids=None):
        return self.q.retry_dead(queue, ids)

    def delete(self, queue, ids):
        return self.q.delete(queue, list(ids)) if ids else 0

    def clear(self, queue, what):
        return self.q.clear(queue, what.lower())

    # ---- schedules ------------------------------------------------------------------------------
    def schedule_set(self, queue, name, payload, cron=None, every_ms=None, priority=0):
        self.q.schedule_set(queue, name, payload, cron=cron, every_ms=every_ms, priority=priority)

    async def aschedule_set(self, queue, name, payload, cron=None, every_ms=None, priority=0):
        await self.aq.schedule_set(
            queue, name, payload, cron=cron, every_ms=every_ms, priority=priority
        )

    def schedule_del(self, queue, name):
        return bool(self.q.schedule_del(queue, name))

    async def aschedule_del(self, queue, name):
        return bool(await self.aq.schedule_del(queue, name))

    @staticmethod
    def _schedules(rows):
        return [
            ScheduleRecord(n, k, s, int(nr or 0), bytes(p or b""), bool(paused))
            for n, k, s, nr, p, paused in rows
        ]

    def schedule_list(self, queue):
        return self._schedules(self.q.schedule_list(queue))

    async def aschedule_list(self, queue):
        return self._schedules(await self.aq.schedule_list(queue))

    def schedule_pause(self, queue, name):
        return bool(self.q.schedule_pause(queue, name))

    def schedule_resume(self, queue, name):
        return bool(self.q.schedule_resume(queue, name))

    def schedule_run(self, queue, name):
        return self.q.schedule_run(queue, name)

    # ---- rate limits ----------------------------------------------------------------------------
    def rate_limit_set(self, queue, limit, per_ms, burst=None):
        try:
            return bool(self.q.rate_set(queue, int(limit), int(per_ms), burst))
        except ValueError as e:  # refused arguments: a BrokerError, as Valkey's refusal is
            raise BrokerError(f"cannot set a rate limit: {e}") from e

    def rate_limit_off(self, queue):
        return bool(self.q.rate_off(queue))

    def rate_limit_get(self, queue):
        r = self.q.rate_get(queue)
        return (
            None if r is None else dict(zip(("limit", "per_ms", "burst", "tokens"), r, strict=True))
        )

    def tick(self):
        return int(self.q.schedule_tick() or 0)

    async def atick(self):
        return int(await self.aq.schedule_tick() or 0)

    def maintain(self):
        return self.q.maintain()

    async def amaintain(self):
        return await self.aq.maintain()

    # ---- results --------------------------------------------------------------------------------
    def store_result(self, id, data, ttl_ms):
        if ttl_ms > 0 and data is not None:
            self.q.store_result(id, data, int(ttl_ms))

    async def astore_result(self, id, data, ttl_ms):
        if ttl_ms > 0 and data is not None:
            await self.aq.store_result(id, data, int(ttl_ms))

    def get_result(self, id):
        r = self.q.get_result(id)
        return bytes(r) if r is not None else None

    async def aget_result(self, id):
        r = await self.aq.get_result(id)
        return bytes(r) if r is not None else None

    # ---- lifecycle ------------------------------------------------------------------------------
    def ping(self):
        try:
            self.q.info("__vtasks_check__")
        except BrokerError:
            raise
        except Exception as e:
            raise BrokerError(f"Postgres queue not usable: {e}") from e

    def close(self):
        self._q = None

    async def aclose(self):
        try:
            self._aqs.pop(asyncio.get_running_loop(), None)
        except RuntimeError:
            pass
