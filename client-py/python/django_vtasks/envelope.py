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

from . import _native
from .conf import settings
from .tasks import task_options

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def compress_threshold() -> int:
    return int(settings.VTASKS_COMPRESS_THRESHOLD)


def build_envelope(task, args: list, kwargs: dict, id: str, backend: str) -> dict[str, Any]:
    return {
        "func": task.module_path,
        "args": args,
        "kwargs": kwargs,
        "queue": task.queue_name,
        "ts": time.time(),
        "id": id,
        "priority": task.priority,
        "run_after": task.run_after.isoformat() if task.run_after is not None else None,
        "backend": backend,
        "takes_context": task.takes_context,
        **({"options": options} if (options := task_options(task)) else {}),
    }


def run_at_ms(run_after: datetime) -> int:
    """``run_after`` as the broker's unix milliseconds, rounded up: a deferred task never
    starts early (a naive datetime is local time, like datetime.timestamp())."""
    aware = run_after if run_after.tzinfo is not None else run_after.astimezone()
    return -(-((aware - _EPOCH) // _US) // 1000)


def encode_envelope(envelope: dict[str, Any], threshold: int | None = None) -> bytes:
    data = orjson.dumps(envelope)
    return _native.encode_payload(data, compress_threshold() if threshold is None else threshold)


def decode_envelope(payload: bytes) -> dict[str, Any]:
    """Decode a payload; raises ValueError when it is not a valid envelope."""
    data = _native.decode_payload(bytes(payload))
    obj = orjson.loads(data)
    if not isinstance(obj, dict) or not isinstance(obj.get("func"), str):
        raise ValueError("payload is not a task envelope (no 'func')")
    return obj
