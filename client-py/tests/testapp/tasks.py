import asyncio
import os
import time

from django.tasks import task

import django_vtasks


def _append(path, line):
    with open(path, "a") as f:
        f.write(f"{line}\n")
        f.flush()


@task
def add(a, b):
    return a + b


@task
async def aadd(a, b):
    await asyncio.sleep(0)
    return a + b


@task
def record(path, value):
    _append(path, value)
    return value


@task
def fail(message):
    raise ValueError(message)


@task
def exit_task():
    raise SystemExit(3)


@task
def non_json():
    return {1, 2}


@task(takes_context=True)
def with_context(context, x):
    return {"attempt": context.attempt, "id": context.task_result.id, "x": x}


@task
def sleep_record(path, value, seconds):
    _append(path, f"start {value}")
    time.sleep(seconds)
    _append(path, f"done {value}")
    return value


@task(takes_context=True)
def slow_first_attempt(context, path, seconds):
    """Sleeps on its first attempt only (so a killed worker's task finishes when redelivered)."""
    _append(path, f"start {context.attempt}")
    if context.attempt == 1:
        time.sleep(seconds)
    _append(path, f"done {context.attempt}")
    return context.attempt


# django_vtasks.task: vtasks options on every supported Django (6.1's django.tasks.task forwards
# them too, 6.0's does not)
@django_vtasks.task(takes_context=True, retries=2, retry_backoff=0.1)
def flaky(context, fails):
    if context.attempt <= fails:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.attempt


@django_vtasks.task(ignore_result=True)
def add_no_result(a, b):
    return a + b


@task
def size_of(data):
    return len(data)


@task
def batch_sink(tasks):
    path = tasks[0]["args"][0]
    _append(path, "batch " + ",".join(str(t["args"][1]) for t in tasks))


@django_vtasks.task(retries=1, retry_backoff=0.1)
def batch_flaky(tasks):
    """A batch task whose first run fails (a marker file next to its output says it ran)."""
    path = tasks[0]["args"][0]
    if not os.path.exists(path + ".failed-once"):
        _append(path + ".failed-once", "x")
        raise RuntimeError("first batch run fails")
    _append(path, "batch " + ",".join(str(t["args"][1]) for t in tasks))


@task
def pid():
    return os.getpid()


@task
def interrupt():
    raise KeyboardInterrupt


@task
async def ainterrupt():
    raise KeyboardInterrupt


@task
def big_int():
    return 2**70


@task
def lone_surrogate():
    return "caf\udce9"  # os.fsdecode(b"caf\xe9") on a UTF-8 system


@task
def raise_lone_surrogate():
    raise FileNotFoundError(f"no such file: {'caf' + chr(0xDCE9)}")


@task
def big_string(n):
    return "x" * n


@task
def random_string(n):
    """n characters that compression cannot shrink much (base64 of random bytes)."""
    import base64
    import os

    return base64.b64encode(os.urandom(n * 3 // 4)).decode()[:n]


@task
def total(values, plus=0):
    """A group's callback: the sum of its members' values."""
    return sum(values) + plus


@task
def note(value, path):
    """A flow's step: appends the value the step before it returned."""
    _append(path, value)
    return value
