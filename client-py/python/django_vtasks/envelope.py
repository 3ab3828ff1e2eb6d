"""The task envelope: the JSON object stored as a task's payload.

Compatible with the original django-vtasks wire format (``func, args, kwargs, queue, ts, id``,
then ``priority, run_after``; vtasks adds ``backend, takes_context`` and ``options``, the VTask
options given at enqueue, see tasks.task_options), compressed by the native codec (``b"zstd:"``
+ zstd over VTASKS_COMPRESS_THRESHOLD bytes).
"""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.core.signals import setting_changed

from . import _native
from .conf import settings
from .tasks import task_options

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


#: settings read for every task (decode, encode): cached, cleared when a setting changes
_CACHED: dict[str, int] = {}


def _clear_cache(**kwargs) -> None:
    _CACHED.clear()


setting_changed.connect(_clear_cache, dispatch_uid="django_vtasks.envelope")


def compress_threshold() -> int:
    v = _CACHED.get("VTASKS_COMPRESS_THRESHOLD")
    if v is None:
        v = _CACHED["VTASKS_COMPRESS_THRESHOLD"] = int(settings.VTASKS_COMPRESS_THRESHOLD)
    return v


def build_envelope(
    task, args: list, kwargs: dict, id: str, backend: str, ts: float | None = None
) -> dict[str, Any]:
    """The envelope of one run of ``task`` as a dict (``ts``: the enqueue time, default now).
    Enqueues write the same bytes with envelope_template (tested byte-identical)."""
    return {
        "func": task.module_path,
        "args": args,
        "kwargs": kwargs,
        "queue": task.queue_name,
        "ts": time.time() if ts is None else ts,
        "id": id,
        "priority": task.priority,
        "run_after": task.run_after.isoformat() if task.run_after is not None else None,
        "backend": backend,
        "takes_context": task.takes_context,
        **({"options": options} if (options := task_options(task)) else {}),
    }


def envelope_template(task, backend: str) -> bytes:
    """The JSON envelope of ``task`` (enqueued through the backend ``backend``) as a
    ``%``-template around what changes per run: ``template % (args_json, kwargs_json, ts_json,
    id)`` is byte-identical to ``orjson.dumps(build_envelope(task, args, kwargs, id, backend,
    ts))`` (``ts_json`` = ``orjson.dumps(ts)``). The id goes in as it is (no JSON escaping: task
    ids are hex). Enqueues take it from template_for(), which builds it once per task object."""
    dumps = orjson.dumps
    run_after = task.run_after

    def j(v) -> bytes:
        return dumps(v).replace(b"%", b"%%")

    options = task_options(task)
    return b"".join(
        (
            b'{"func":',
            j(task.module_path),
            b',"args":%b,"kwargs":%b,"queue":',
            j(task.queue_name),
            b',"ts":%b,"id":"%b","priority":',
            j(task.priority),
            b',"run_after":',
            j(run_after.isoformat() if run_after is not None else None),
            b',"backend":',
            j(backend),
            b',"takes_context":',
            j(task.takes_context),
            b',"options":' + j(options) if options else b"",
            b"}",
        )
    )


# id(task) -> (task, backend, template). Tasks are frozen and the entry holds its task, so an id
# cannot be reused while cached; tasks made per call (.using() in a view) just miss.
_TEMPLATES: dict[int, tuple[Any, str, bytes]] = {}


def template_for(task, backend: str) -> bytes:
    """envelope_template(task, backend), built once per task object."""
    entry = _TEMPLATES.get(id(task))
    if entry is not None and entry[0] is task and entry[1] == backend:
        return entry[2]
    template = envelope_template(task, backend)
    if len(_TEMPLATES) >= 4096:
        _TEMPLATES.clear()
    _TEMPLATES[id(task)] = (task, backend, template)
    return template


def run_at_ms(run_after: datetime) -> int:
    """``run_after`` as the broker's unix milliseconds, rounded up: a deferred task never
    starts early (a naive datetime is local time, like datetime.timestamp())."""
    aware = run_after if run_after.tzinfo is not None else run_after.astimezone()
    return -(-((aware - _EPOCH) // _US) // 1000)


def max_payload() -> int:
    v = _CACHED.get("VTASKS_MAX_PAYLOAD")
    if v is None:
        v = _CACHED["VTASKS_MAX_PAYLOAD"] = int(settings.VTASKS_MAX_PAYLOAD)
    return v


class PayloadTooLarge(ValueError):
    """A task's encoded arguments exceed VTASKS_MAX_PAYLOAD (decoded bytes)."""


def check_size(data: bytes, func: str) -> None:
    """Refuse, at enqueue, an envelope no worker would decode (it names the task, not the
    arguments)."""
    limit = max_payload()
    if len(data) > limit:
        raise PayloadTooLarge(
            f"task {func}: its arguments encode to {len(data)} bytes, over VTASKS_MAX_PAYLOAD "
            f"({limit} bytes); pass a reference (a database id, a file name) instead of the data"
        )


def encode_envelope(envelope: dict[str, Any], threshold: int | None = None) -> bytes:
    data = orjson.dumps(envelope)
    check_size(data, str(envelope.get("func")))
    return _native.encode_payload(data, compress_threshold() if threshold is None else threshold)


def decode_envelope(payload: bytes) -> dict[str, Any]:
    """Decode a payload (inflating at most VTASKS_MAX_PAYLOAD bytes) and check its shape;
    raises ValueError saying what is wrong."""
    data = _native.decode_payload(
        payload if type(payload) is bytes else bytes(payload), max_payload()
    )
    obj = orjson.loads(data)
    if not isinstance(obj, dict) or not isinstance(obj.get("func"), str):
        raise ValueError("payload is not a task envelope (no 'func')")
    validate_envelope(obj)
    return obj


def validate_envelope(env: dict[str, Any]) -> None:
    """The fields a worker reads have the types it needs (a hand-made or foreign payload):
    "args" a list, "kwargs" an object, "run_after" null or an ISO 8601 date-time."""
    args = env.get("args")
    if args is not None and not isinstance(args, list):
        raise ValueError(f"envelope 'args' must be a JSON array, not {type(args).__name__}")
    kwargs = env.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise ValueError(f"envelope 'kwargs' must be a JSON object, not {type(kwargs).__name__}")
    run_after = env.get("run_after")
    if run_after is not None:
        try:
            datetime.fromisoformat(run_after)
        except (TypeError, ValueError):
            raise ValueError(
                f"envelope 'run_after' must be null or an ISO 8601 date-time, not "
                f"{str(run_after)[:64]!r}"
            ) from None


def preview(payload: bytes, limit: int = 2048) -> tuple[str, bool]:
    """The start of a payload's JSON text, decoding at most ``limit`` bytes (listings never
    inflate whole payloads), and whether it was cut."""
    data = _native.decode_payload_prefix(bytes(payload), limit + 1)
    cut = len(data) > limit
    return data[:limit].decode("utf-8", "replace"), cut
