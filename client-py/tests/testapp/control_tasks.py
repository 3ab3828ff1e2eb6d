"""Tasks that control their own run: time limits, cancellation, retry_on and Retry
(test_control.py)."""

import asyncio
import time

import django_vtasks
from django_vtasks.exceptions import Retry, TaskCancelled


def _append(path, line):
    with open(path, "a") as f:
        f.write(f"{line}\n")


@django_vtasks.task
def quick(a, b):
    return a + b


@django_vtasks.task(time_limit=0.5, soft_time_limit=0.2, takes_context=True)
def sync_overrun(context, path, seconds):
    """Sleeps past its limits in small steps, writing what it saw; 'late' when its thread ends."""
    _append(path, "start")
    end = time.monotonic() + seconds
    soft_seen = False
    while time.monotonic() < end:
        if context.soft_time_limit_exceeded and not soft_seen:
            soft_seen = True
            _append(path, f"soft {context.time_left() is not None}")
        time.sleep(0.02)
    _append(path, "late")
    return "late"


@django_vtasks.task(time_limit=0.5)
async def async_overrun(path):
    _append(path, "start")
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        _append(path, "cancelled")
        raise
    return "never"


@django_vtasks.task(takes_context=True)
def sync_until_cancelled(context, path, seconds):
    """Runs until cancel is requested (then raises TaskCancelled), or ``seconds``."""
    _append(path, "start")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if context.cancel_requested:
            _append(path, "saw cancel")
            raise TaskCancelled("stopped on request")
        time.sleep(0.02)
    return "finished"


@django_vtasks.task
async def async_until_cancelled(path, seconds):
    _append(path, "start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _append(path, "cancelled")
        raise
    return "finished"


@django_vtasks.task(retries=3, retry_backoff=0.05, retry_on=(ConnectionError,))
def fails_with(kind):
    raise {"connection": ConnectionError, "value": ValueError}[kind](kind)


@django_vtasks.task(retries=2, retry_backoff=30.0, takes_context=True)
def asks_retry(context, path):
    """Raises Retry(delay=0.1) on its first attempt (not the 30 s backoff); the second records
    its attempt number and the previous error."""
    prev = context.previous_error
    _append(path, f"attempt {context.attempt} prev {prev.exception_class_path if prev else None}")
    if context.attempt == 1:
        raise Retry(delay=0.1, reason="not yet")
    return context.attempt


@django_vtasks.task(time_limit=0.3)
async def blocks_the_loop(path, seconds):
    """An async task that never yields: the worker's loop cannot cancel it at its limit."""
    _append(path, "start")
    time.sleep(seconds)
    _append(path, "unblocked")
    return "late"
