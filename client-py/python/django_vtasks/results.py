"""TaskResult <-> JSON (the stored result document) and Task reconstruction from a path."""

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from django.tasks import Task
from django.tasks.base import TaskError, TaskResult, TaskResultStatus
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from .allowlist import TaskRefused, check_task_path
from .result_store import clip, stored_form
from .result_store import read as read_stored
from .tasks import VTask, task_options

_PLAIN = frozenset({str, int, float, bool, type(None)})
_new = object.__new__
_set = object.__setattr__


def _normalize_args(args) -> list:
    """normalize_json(args), without the recursion when every argument is a plain scalar."""
    if type(args) is list or type(args) is tuple:
        for a in args:
            if type(a) not in _PLAIN:
                return cast(list, normalize_json(args))
        return list(args)
    return cast(list, normalize_json(args))


def _normalize_kwargs(kwargs) -> dict:
    """normalize_json(kwargs), without the recursion for str keys and plain scalar values."""
    if type(kwargs) is dict:
        for k, v in kwargs.items():
            if type(k) is not str or type(v) not in _PLAIN:
                return cast(dict, normalize_json(kwargs))
        return dict(kwargs)
    return cast(dict, normalize_json(kwargs))


# TaskResult is a frozen dataclass with slots: writing through the slot descriptors directly is
# about twice as fast as object.__setattr__, and results are built per task on the hot paths.
(
    _task,
    _id,
    _status,
    _enqueued_at,
    _started_at,
    _finished_at,
    _last_attempted_at,
    _args,
    _kwargs,
    _backend,
    _errors,
    _worker_ids,
    _return_value,
) = (
    TaskResult.__dict__[f].__set__
    for f in (
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
    )
)


def build_result(
    task,
    id,
    status,
    enqueued_at,
    started_at,
    last_attempted_at,
    finished_at,
    args: list,
    kwargs: dict,
    backend,
    errors,
    worker_ids,
) -> TaskResult:
    """A TaskResult from fields already normalised (no dataclass __init__, no validation)."""
    r = _new(TaskResult)
    _task(r, task)
    _id(r, id)
    _status(r, status)
    _enqueued_at(r, enqueued_at)
    _started_at(r, started_at)
    _finished_at(r, finished_at)
    _last_attempted_at(r, last_attempted_at)
    _args(r, args)
    _kwargs(r, kwargs)
    _backend(r, backend)
    _errors(r, errors)
    _worker_ids(r, worker_ids)
    _return_value(r, None)
    return r


def make_result(
    task,
    id,
    status,
    enqueued_at,
    started_at,
    last_attempted_at,
    finished_at,
    args,
    kwargs,
    backend,
    errors,
    worker_ids,
) -> TaskResult:
    """TaskResult(...) with the same fields and the same normalised args/kwargs as Django's
    __post_init__ (unsupported arguments raise the same errors), built without the dataclass
    __init__ + normalize_json recursion for plain scalar arguments."""
    return build_result(
        task,
        id,
        status,
        enqueued_at,
        started_at,
        last_attempted_at,
        finished_at,
        _normalize_args(args),
        _normalize_kwargs(kwargs),
        backend,
        errors,
        worker_ids,
    )


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _jdt(value: datetime | None):
    """A datetime for orjson: UTC and naive ones are formatted natively by orjson (the same text
    as isoformat()); any other zone goes through isoformat()."""
    if value is None:
        return None
    if type(value) is datetime:
        tz = value.tzinfo
        if tz is None or tz is UTC:
            return value
    return value.isoformat()


def _parse_dt(value) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value)


def ms_to_dt(ms: int | None) -> datetime | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC)


def result_to_dict(result: TaskResult) -> dict[str, Any]:
    task = result.task
    return {
        "id": result.id,
        "func": task.module_path,
        "queue": task.queue_name,
        "priority": task.priority,
        "run_after": _dt(task.run_after),
        "takes_context": task.takes_context,
        **({"options": options} if (options := task_options(task)) else {}),
        "backend": result.backend,
        "status": str(result.status),
        "enqueued_at": _dt(result.enqueued_at),
        "started_at": _dt(result.started_at),
        "finished_at": _dt(result.finished_at),
        "last_attempted_at": _dt(result.last_attempted_at),
        "args": result.args,
        "kwargs": result.kwargs,
        "errors": [
            {"exception_class_path": e.exception_class_path, "traceback": e.traceback}
            for e in result.errors
        ],
        "worker_ids": list(result.worker_ids),
        "return_value": result._return_value,  # type: ignore[attr-defined]  # Django's private field, not in django-stubs
    }


def result_to_json(result: TaskResult) -> bytes | None:
    """The bytes a broker stores for ``result``: its JSON, bounded and compressed, or None when
    its task/queue stores no result (result_store.py). Read back with result_from_json."""
    return stored_form(result, _result_json)


def _result_json(result: TaskResult, keep_args: bool = True, max_traceback: int = 16_000) -> bytes:
    """orjson.dumps(result_to_dict(result)), with the timestamps formatted by orjson, tracebacks
    clipped to ``max_traceback`` characters, and without argument copies unless ``keep_args``.

    Returned as a right-sized copy: orjson >= 3.12 hands back bytes that keep its whole working
    buffer (4 KiB at least, 8 KiB for a typical result; ijl/orjson does not trim it), and the
    worker holds every finished task's result until its ack is flushed."""
    task = result.task
    errors = result.errors
    doc = {
        "id": result.id,
        "func": task.module_path,
        "queue": task.queue_name,
        "priority": task.priority,
        "run_after": _jdt(task.run_after),
        "takes_context": task.takes_context,
        "backend": result.backend,
        "status": str(result.status),
        "enqueued_at": _jdt(result.enqueued_at),
        "started_at": _jdt(result.started_at),
        "finished_at": _jdt(result.finished_at),
        "last_attempted_at": _jdt(result.last_attempted_at),
        "args": result.args if keep_args else [],
        "kwargs": result.kwargs if keep_args else {},
        "errors": [
            {
                "exception_class_path": e.exception_class_path,
                "traceback": clip(e.traceback, max_traceback),
            }
            for e in errors
        ]
        if errors
        else [],
        "worker_ids": list(result.worker_ids),
        "return_value": result._return_value,  # type: ignore[attr-defined]  # Django's private field, not in django-stubs
    }
    options = task_options(task)
    if options:
        doc["options"] = options
    return bytes(memoryview(orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS)))


def _unresolvable(*args, **kwargs):  # stands in for a task function that cannot be imported
    raise RuntimeError("task function could not be imported")


def resolve_task(
    func_path: str,
    queue: str | None = None,
    priority: int | None = None,
    run_after: datetime | None = None,
    backend: str | None = None,
    strict: bool = True,
    options: dict | None = None,
) -> Task:
    """The Task for a stored path, with the enqueue-time options applied (``options``: the
    envelope's VTask options, see tasks.task_options).

    strict=True raises ImportError/TypeError for a path that is not a Task; strict=False returns a
    placeholder Task (for reading results of tasks that no longer exist)."""
    try:
        check_task_path(func_path)  # only the project's code is imported (and run)
        obj = import_string(func_path)
    except TaskRefused:
        if strict:
            raise
        obj = None
    except (ImportError, AttributeError, ValueError) as e:
        if strict:
            raise ImportError(f"cannot import task {func_path!r}: {e}") from e
        obj = None
    if obj is not None and not isinstance(obj, Task):
        if strict:
            raise TypeError(f"{func_path!r} is not a Task (got {type(obj).__name__})")
        obj = None
    if obj is None:
        task = object.__new__(Task)
        module, _, name = func_path.rpartition(".")
        func = _unresolvable
        for k, v in {
            "func": func,
            "priority": priority or 0,
            "backend": backend or "default",
            "queue_name": queue or "default",
            "run_after": run_after,
            "takes_context": False,
        }.items():
            object.__setattr__(task, k, v)
        return task
    changes: dict[str, Any] = {}
    if queue is not None and queue != obj.queue_name:
        changes["queue_name"] = queue
    if priority is not None and priority != obj.priority:
        changes["priority"] = priority
    if run_after != obj.run_after:
        changes["run_after"] = run_after
    if backend is not None and backend != obj.backend:
        changes["backend"] = backend
    if options:
        if not isinstance(obj, VTask):  # e.g. decorated while another backend was the default
            obj = _as_vtask(obj)
        for name, value in options.items():
            if name in VTask.__dataclass_fields__ and getattr(obj, name) != value:
                changes[name] = value
    if not changes:
        return obj
    try:
        return replace(obj, **changes)
    except Exception:
        # validation against the current TASKS settings failed: keep the options anyway
        task = object.__new__(type(obj))
        for f in obj.__dataclass_fields__:
            object.__setattr__(task, f, changes.get(f, getattr(obj, f)))
        return task


def _as_vtask(obj: Task) -> Task:
    task = object.__new__(VTask)
    for f in VTask.__dataclass_fields__.values():
        object.__setattr__(task, f.name, getattr(obj, f.name, f.default))
    return task


def result_from_dict(data: dict[str, Any], backend_alias: str | None = None) -> TaskResult:
    task = resolve_task(
        data["func"],
        queue=data.get("queue"),
        priority=data.get("priority"),
        run_after=_parse_dt(data.get("run_after")),
        backend=backend_alias or data.get("backend"),
        strict=False,
        options=data.get("options"),
    )
    result: TaskResult = TaskResult(
        task=task,
        id=data["id"],
        status=TaskResultStatus(data["status"]),
        enqueued_at=_parse_dt(data.get("enqueued_at")),
        started_at=_parse_dt(data.get("started_at")),
        finished_at=_parse_dt(data.get("finished_at")),
        last_attempted_at=_parse_dt(data.get("last_attempted_at")),
        args=data.get("args") or [],
        kwargs=data.get("kwargs") or {},
        backend=backend_alias or data.get("backend") or "default",
        errors=[TaskError(**e) for e in data.get("errors") or []],
        worker_ids=list(data.get("worker_ids") or []),
    )
    object.__setattr__(result, "_return_value", data.get("return_value"))
    return result


def result_from_json(raw: bytes, backend_alias: str | None = None) -> TaskResult:
    return result_from_dict(orjson.loads(read_stored(raw)), backend_alias)
