"""Types of the pyo3 extension ``django_vtasks._native`` (client-py/native/src/lib.rs), and the
contract between it and the Django package: extend it, do not break it.

Keep in step with lib.rs: a method added there is added here (mypy reads only this file).

- The task-envelope codec, shared with the original django-vtasks wire format: JSON over
  ``threshold`` bytes becomes ``b"zstd:"`` + zstd (level 3).
- ``PgQueue`` (sync, r2d2 pool; releases the GIL while it waits on Postgres) and
  ``AsyncPgQueue`` (tokio-postgres; the same constructor and methods, each returning an
  ``asyncio.Future`` of the running loop: create the object inside the loop that uses it;
  cancelling a future aborts the Rust task) implement the queue semantics of the Valkey module
  (PROTOCOL.md) in Postgres (pg-adapter).
- Errors: bad arguments raise ``ValueError`` (nothing sent); Postgres, connection and pool
  failures raise ``PgError`` (a ``RuntimeError``). A statement that fails because its connection
  died (killed backend, restart) is retried on a fresh pooled connection up to 3 times first.
- ``migrations()`` is the single source of the schema (the Django migration applies it).
"""

import asyncio
from collections.abc import Iterable
from typing import Any, TypedDict, final

__all__ = [
    "encode_payload",
    "decode_payload",
    "decode_payload_prefix",
    "cron_check",
    "cron_next",
    "migrations",
    "migration_sql",
    "migration_plan",
    "PgQueue",
    "AsyncPgQueue",
    "PgError",
    "DEFAULT_COMPRESS_THRESHOLD",
    "LIMITS",
    "INFO_FIELDS",
    "CANCELLED",
    "_drain",
]

DEFAULT_COMPRESS_THRESHOLD: int
#: the protocol's limits (vtasks-protocol, PROTOCOL.md "Limits"): max_fetch, max_id_len,
#: max_name_len, max_worker_len, max_payload, min_priority, max_priority, max_peek,
#: max_enqueue_items, max_fetch_queues, min_attempts, max_attempts
LIMITS: dict[str, int]
#: the field names of VT.INFO / info(), in reply order
INFO_FIELDS: tuple[str, ...]
#: the error of a cancelled task, alone or before ": <reason>" (PROTOCOL.md, VT.CANCEL)
CANCELLED: str

class PgError(RuntimeError):
    """An error from Postgres or its connection pool."""

def encode_payload(data: bytes, threshold: int = 1024) -> bytes:
    """``data`` (JSON) as it is up to ``threshold`` bytes, else ``b"zstd:"`` + zstd of it."""

def decode_payload(data: bytes, max_size: int = ...) -> bytes:
    """Inverse of encode_payload; ValueError on a corrupt frame or when the decoded bytes would
    exceed ``max_size`` (decompression never grows its buffer past it)."""

def decode_payload_prefix(data: bytes, limit: int) -> bytes:
    """The first ``limit`` bytes decode_payload would return (previews); never errors on size."""

def cron_check(expr: str) -> None:
    """ValueError with the reason when a cron expression does not parse or never fires (the
    rule both backends share: the vtasks-protocol crate)."""

def cron_next(expr: str, after_ms: int) -> int:
    """The first tick of ``expr`` strictly after ``after_ms`` (unix ms, UTC)."""

def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every schema migration."""

def migration_sql() -> tuple[str, str]:
    """(prelude_sql, applied_sql) of a migration run, for Django's migrations."""

def migration_plan(
    applied: list[tuple[int, str | None]], upto: int | None = None
) -> list[tuple[int, str, str, str]]:
    """(version, name, sql, record_sql) to apply; ValueError when a shipped migration was edited."""

def pack_ack_results(
    result_prefix: str,
    key: str,
    pairs: Iterable[tuple[str | bytes, str | bytes]],
    results: Iterable[tuple[str | bytes, bytes | None, int]],
) -> tuple[bytes, int]:
    """(packed, n): the RESP of ``SET <result_prefix><id> <data> PX <ttl>`` for each result with
    ``ttl > 0`` and data not None, then of ``VT.ACK <key> id token ...`` when ``pairs`` is not
    empty; ``n`` commands (the replies to read). The worker's ack flush (brokers/resp.py)."""

def _drain() -> None:
    """atexit hook: no tokio completion enters Python any more (registered on import)."""

# (queue, id, token, attempt, payload)
_Delivery = tuple[str, str, str, int, bytes]
# (name, kind, spec, next_run_ms, payload)
_Schedule = tuple[str, str, str, int, bytes, bool]  # name kind spec next_run_ms payload paused
# (id, result_json, ttl_ms)
_ResultRow = tuple[str, bytes, int]

class _TaskRecord(TypedDict):
    """A task as VT.PEEK / VT.GET report it (times in ms since the epoch; with its lease's
    ``token``, as VT.PEEK has it)."""

    id: str
    state: str
    priority: int
    attempt: int
    max_attempts: int
    enqueued_at: int
    run_at: int
    worker: str
    token: str
    deadline: int
    error: str
    failed_at: int
    payload: bytes

@final
class PgQueue:
    """Blocking Postgres queue (the methods release the GIL)."""

    def __new__(
        cls,
        dsn: str,
        pool_size: int = 10,
        dlq_cap: int = 1000,
        max_attempts: int = 3,
        default_lease_ms: int = 30000,
        notify: bool = True,
    ) -> PgQueue: ...
    def migrate(self) -> None: ...
    def enqueue(
        self,
        queue: str,
        payloads: list[bytes],
        ids: list[str | None] | None = None,
        priority: int = 0,
        delay_ms: int | None = None,
        at_ms: int | None = None,
        unique: tuple[str, int] | None = None,
        max_attempts: int | None = None,
    ) -> list[str | None]: ...
    def enqueue_flow(
        self, queue: str, tasks: list[tuple[str, int, int | None, int | None, list[str], bytes]]
    ) -> list[str] | None:
        """Add a flow in one statement (PROTOCOL.md "Flows"): tasks as (id, priority,
        max_attempts, at_ms, parent ids, payload), parents first. The ids in order, or None when
        one of them is already a live or waiting task of the queue (nothing added)."""
    def fetch(
        self,
        queues: list[str],
        worker: str,
        count: int,
        lease_ms: int | None = None,
        block_ms: int | None = None,
    ) -> list[_Delivery] | None:
        """Without ``block_ms`` a list (maybe empty); with it, None when ``block_ms`` elapsed
        with nothing ready (``block_ms=0``: wait until something arrives)."""
    def ack(
        self, queue: str, pairs: list[tuple[str, str]], results: list[_ResultRow] | None = None
    ) -> int:
        """Ack (id, token) pairs; ``results`` [(id, result_json, ttl_ms)] are stored in the
        same statement (one round trip, one transaction), also for a stale token (the task did
        run); a repeated id keeps its last entry; ttl_ms < 1 is a ValueError; pairs may be
        empty (results only)."""
    def store_results(self, results: list[_ResultRow]) -> None:
        """The same upsert as ack's results, without an ack (one statement)."""
    def fail(
        self, queue: str, id: str, token: str, error: str, retry_ms: int | None = None
    ) -> str | None: ...
    def rescue(self, queue: str, worker: str | None = None) -> int: ...
    def extend(self, queue: str, worker: str, lease_ms: int) -> int: ...
    def extend_cancelled(self, queue: str, worker: str, lease_ms: int) -> tuple[int, list[str]]: ...
    def cancel(self, queue: str, id: str, reason: str = "") -> str | None: ...
    def info(self, queue: str) -> dict[str, int]: ...
    def queues(self) -> list[str]: ...
    def peek(
        self, queue: str, state: str, offset: int = 0, count: int = 10
    ) -> list[_TaskRecord]: ...
    def get(self, queue: str, id: str) -> _TaskRecord | None: ...
    def retry_dead(self, queue: str, ids: list[str] | None = None) -> int: ...
    def delete(self, queue: str, ids: list[str]) -> int: ...
    def clear(self, queue: str, what: str) -> int: ...
    def schedule_set(
        self,
        queue: str,
        name: str,
        payload: bytes,
        cron: str | None = None,
        every_ms: int | None = None,
        priority: int = 0,
    ) -> None: ...
    def schedule_del(self, queue: str, name: str) -> bool: ...
    def schedule_list(self, queue: str) -> list[_Schedule]: ...
    def schedule_tick(self) -> int:
        """Fire every due tick exactly once across all callers; the tasks enqueued."""
    def schedule_pause(self, queue: str, name: str) -> bool:
        """Pause a schedule (no ticks fire until resumed); False if there is none."""
    def schedule_resume(self, queue: str, name: str) -> bool:
        """Resume a schedule at its next tick after now; False if there is none."""
    def schedule_run(self, queue: str, name: str) -> str | None:
        """Enqueue one task from the schedule now; its id, or None if there is no schedule."""
    def rate_set(self, queue: str, limit: int, per_ms: int, burst: int | None = None) -> bool:
        """At most ``limit`` fetches per ``per_ms`` on ``queue`` (bucket of ``burst``, default
        ``limit``); False when the queue already had exactly this limit (tokens are kept)."""
    def rate_off(self, queue: str) -> bool: ...
    def rate_get(self, queue: str) -> tuple[int, int, int, int] | None:
        """(limit, per_ms, burst, tokens now), or None without a limit."""
    def maintain(self) -> dict[str, int]:
        """The server-side timer duties (call it periodically; the worker does): rescue expired
        leases on all queues, purge expired unique keys, results and ticks, fold the counter
        deltas INFO reads. Keys: rescued, expired_queues, uniques_purged, results_purged,
        ticks_purged, stats_folded."""
    def store_result(self, id: str, result_json: bytes, ttl_ms: int) -> None: ...
    def get_result(self, id: str) -> bytes | None: ...
    @staticmethod
    def enqueue_sql(
        queue: str,
        payloads: list[bytes],
        ids: list[str | None],
        priority: int = 0,
        delay_ms: int | None = None,
        at_ms: int | None = None,
        unique: tuple[str, int] | None = None,
        max_attempts: int | None = None,
        max_attempts_default: int = 3,
        notify: bool = True,
    ) -> tuple[str, list[Any]]:
        """One SQL statement (psycopg ``%s`` placeholders) and its params, to run on Django's
        own connection inside the caller's transaction; it returns one row (id,) per task
        inserted (a missing id was suppressed). ``notify``: it sends one
        ``pg_notify('vtasks', queue)`` when it inserts a ready task (delivered at COMMIT)."""

@final
class AsyncPgQueue:
    """Asyncio Postgres queue: every method returns an awaitable; one instance per event loop."""

    def __new__(
        cls,
        dsn: str,
        pool_size: int = 10,
        dlq_cap: int = 1000,
        max_attempts: int = 3,
        default_lease_ms: int = 30000,
        notify: bool = True,
    ) -> AsyncPgQueue: ...
    def migrate(self) -> asyncio.Future[None]: ...
    def enqueue(
        self,
        queue: str,
        payloads: list[bytes],
        ids: list[str | None] | None = None,
        priority: int = 0,
        delay_ms: int | None = None,
        at_ms: int | None = None,
        unique: tuple[str, int] | None = None,
        max_attempts: int | None = None,
    ) -> asyncio.Future[list[str | None]]: ...
    def enqueue_flow(
        self, queue: str, tasks: list[tuple[str, int, int | None, int | None, list[str], bytes]]
    ) -> asyncio.Future[list[str] | None]: ...
    def fetch(
        self,
        queues: list[str],
        worker: str,
        count: int,
        lease_ms: int | None = None,
        block_ms: int | None = None,
    ) -> asyncio.Future[list[_Delivery] | None]: ...
    def ack(
        self, queue: str, pairs: list[tuple[str, str]], results: list[_ResultRow] | None = None
    ) -> asyncio.Future[int]: ...
    def store_results(self, results: list[_ResultRow]) -> asyncio.Future[None]: ...
    def fail(
        self, queue: str, id: str, token: str, error: str, retry_ms: int | None = None
    ) -> asyncio.Future[str | None]: ...
    def rescue(self, queue: str, worker: str | None = None) -> asyncio.Future[int]: ...
    def extend(self, queue: str, worker: str, lease_ms: int) -> asyncio.Future[int]: ...
    def extend_cancelled(
        self, queue: str, worker: str, lease_ms: int
    ) -> asyncio.Future[tuple[int, list[str]]]: ...
    def cancel(self, queue: str, id: str, reason: str = "") -> asyncio.Future[str | None]: ...
    def info(self, queue: str) -> asyncio.Future[dict[str, int]]: ...
    def queues(self) -> asyncio.Future[list[str]]: ...
    def peek(
        self, queue: str, state: str, offset: int = 0, count: int = 10
    ) -> asyncio.Future[list[_TaskRecord]]: ...
    def get(self, queue: str, id: str) -> asyncio.Future[_TaskRecord | None]: ...
    def retry_dead(self, queue: str, ids: list[str] | None = None) -> asyncio.Future[int]: ...
    def delete(self, queue: str, ids: list[str]) -> asyncio.Future[int]: ...
    def clear(self, queue: str, what: str) -> asyncio.Future[int]: ...
    def schedule_set(
        self,
        queue: str,
        name: str,
        payload: bytes,
        cron: str | None = None,
        every_ms: int | None = None,
        priority: int = 0,
    ) -> asyncio.Future[None]: ...
    def schedule_del(self, queue: str, name: str) -> asyncio.Future[bool]: ...
    def schedule_list(self, queue: str) -> asyncio.Future[list[_Schedule]]: ...
    def schedule_tick(self) -> asyncio.Future[int]: ...
    def maintain(self) -> asyncio.Future[dict[str, int]]: ...
    def store_result(self, id: str, result_json: bytes, ttl_ms: int) -> asyncio.Future[None]: ...
    def get_result(self, id: str) -> asyncio.Future[bytes | None]: ...
    @staticmethod
    def enqueue_sql(
        queue: str,
        payloads: list[bytes],
        ids: list[str | None],
        priority: int = 0,
        delay_ms: int | None = None,
        at_ms: int | None = None,
        unique: tuple[str, int] | None = None,
        max_attempts: int | None = None,
        max_attempts_default: int = 3,
        notify: bool = True,
    ) -> tuple[str, list[Any]]: ...
