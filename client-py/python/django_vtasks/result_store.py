"""What a stored result may hold: bounded, compressed, optional.

Results share the broker's memory with the queues, so they must never starve them:

- **bounded**: each traceback is clipped to ``VTASKS_MAX_TRACEBACK`` characters (head and tail
  kept) and the whole document to ``VTASKS_RESULT_MAX_BYTES`` (decoded). A result over it loses
  its argument copies first (``args_omitted``); if still too large it is stored FAILED with a
  ``django_vtasks.result_store.ResultTooLarge`` error saying the task ran to completion but its
  return value was not kept;
- **compressed** like payloads (``b"zstd:"`` + zstd over ``VTASKS_COMPRESS_THRESHOLD`` bytes);
- **compact on request**: ``OPTIONS["RESULT_ARGS"] = False`` stores no copy of the arguments
  (``get_result()`` of a finished task then has empty ``args``/``kwargs``);
- **optional**: a task declared ``@django_vtasks.task(ignore_result=True)``, or any task of a
  queue in ``OPTIONS["IGNORE_RESULT_QUEUES"]``, stores no result at all (like Celery's
  ``ignore_result``): ``get_result()`` then finds it while queued/running/dead-lettered only.

:func:`stored_form` returns None for a result that is not to be stored; the brokers skip those.
Results carry a TTL and queue keys do not, so a ``volatile-*`` maxmemory policy evicts results
and never queues (README, "Memory policy").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson
from django.conf import settings as django_settings
from django.core.signals import setting_changed

from . import _native
from .conf import settings

logger = logging.getLogger("django_vtasks")

RESULT_TOO_LARGE = "django_vtasks.result_store.ResultTooLarge"

_POLICIES: dict[str, tuple] = {}
_LOCK = threading.Lock()

#: results that could not be stored (refused by the broker), per process; see not_stored()
_NOT_STORED = 0


def _policy(alias: str) -> tuple:
    """(threshold, max_bytes, max_traceback, keep_args, ignored_queues) of backend ``alias``."""
    policy = _POLICIES.get(alias)
    if policy is None:
        options = ((getattr(django_settings, "TASKS", {}) or {}).get(alias) or {}).get(
            "OPTIONS"
        ) or {}
        policy = (
            int(settings.VTASKS_COMPRESS_THRESHOLD),
            int(settings.VTASKS_RESULT_MAX_BYTES),
            int(settings.VTASKS_MAX_TRACEBACK),
            bool(options.get("RESULT_ARGS", True)),
            frozenset(options.get("IGNORE_RESULT_QUEUES") or ()),
        )
        with _LOCK:
            _POLICIES[alias] = policy
    return policy


def _clear(**kwargs) -> None:
    _POLICIES.clear()


setting_changed.connect(_clear, dispatch_uid="django_vtasks.result_store")


def clip(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and its tail (where a
    traceback says what was raised)."""
    if text is None or len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return (
        f"{text[:head]}\n... [{len(text) - head - tail} characters cut: tracebacks are kept "
        f"to VTASKS_MAX_TRACEBACK={limit}] ...\n{text[-tail:]}"
    )


def stored_form(result, encode: Callable[[Any, bool, int], bytes]) -> bytes | None:
    """The bytes to store for ``result`` (encode(result, keep_args, max_traceback) gives its
    JSON), or None when its task or queue opted out of results."""
    threshold, max_bytes, max_tb, keep_args, ignored = _policy(result.backend)
    task = result.task
    if getattr(task, "ignore_result", False) or (ignored and task.queue_name in ignored):
        return None
    doc = encode(result, keep_args, max_tb)
    if len(doc) <= threshold:
        return doc
    if len(doc) > max_bytes:
        doc = _shrink(doc, max_bytes)
    return _native.encode_payload(doc, threshold)


def _shrink(doc: bytes, max_bytes: int) -> bytes:
    """An oversized result made to fit: first without its argument copies (the caller has the
    arguments; ``args_omitted`` says so), then, if still too large, FAILED without its return
    value (a ResultTooLarge error says the task ran), then with its tracebacks clipped further."""
    data = orjson.loads(doc)
    size = len(doc)
    dumps = orjson.dumps
    data["args"], data["kwargs"], data["args_omitted"] = [], {}, True
    out = dumps(data, option=orjson.OPT_NON_STR_KEYS)
    too_large = len(out) > max_bytes
    if too_large:
        ran = data.get("status") == "SUCCESSFUL"
        data["status"] = "FAILED"
        data["return_value"] = None
        note = (
            f"the stored result would take {size} bytes, over VTASKS_RESULT_MAX_BYTES "
            f"({max_bytes})"
            + (
                "; the task ran to completion but its return value was not "
                "kept: return a reference (an id, a path) to large data"
                if ran
                else ""
            )
        )
        data["errors"] = list(data.get("errors") or []) + [
            {"exception_class_path": RESULT_TOO_LARGE, "traceback": note}
        ]
        out = dumps(data, option=orjson.OPT_NON_STR_KEYS)
        limit = max(256, max_bytes // (4 * len(data["errors"])))
        while len(out) > max_bytes and limit > 64:
            for e in data["errors"][:-1]:
                e["traceback"] = clip(e.get("traceback") or "", limit)
            out = dumps(data, option=orjson.OPT_NON_STR_KEYS)
            limit //= 2
    logger.warning(
        "result of task %s (%s) took %d bytes, over VTASKS_RESULT_MAX_BYTES=%d: stored %s",
        data.get("id"),
        data.get("func"),
        size,
        max_bytes,
        "as FAILED without its return value" if too_large else "without its argument copies",
    )
    return out


def read(raw: bytes) -> bytes:
    """The JSON of a stored result (compressed or not), inflating at most the size a stored
    result can have."""
    limit = max(int(settings.VTASKS_RESULT_MAX_BYTES), int(settings.VTASKS_MAX_PAYLOAD))
    return _native.decode_payload(bytes(raw), limit)


def document(raw: bytes) -> dict:
    """A stored result as a dict (the admin's view of it)."""
    return orjson.loads(read(raw))


def count_not_stored(n: int, reason: BaseException | str) -> None:
    """Say (log + counter) that ``n`` results could not be stored: their tasks read from the
    broker until acked, then TaskResultDoesNotExist."""
    global _NOT_STORED
    _NOT_STORED += n
    logger.error(
        "%d task result(s) could not be stored (%s); %d so far in this process",
        n,
        reason,
        _NOT_STORED,
    )


def not_stored() -> int:
    """Results this process could not store (metrics)."""
    return _NOT_STORED
