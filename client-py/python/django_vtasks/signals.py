"""Django's task signals (task_enqueued, task_started, task_finished), sent correctly from sync
code and from a running event loop, with one receiver lookup per batch.

Why not plain ``Signal.send``:
- on the event loop (``aenqueue``, the worker) it runs sync receivers on the loop, where an ORM
  call raises SynchronousOnlyOperation, and async receivers through async_to_sync, which raises
  RuntimeError on a running loop;
- it resolves the live receivers on every call, which dominated bulk enqueue (1,000 sends per
  batch).
So on the loop Django's own log receivers (they only log) run inline, any other sync receiver
runs off the loop in one hop per batch, and async receivers are awaited. Receivers are called
with the same arguments as ``Signal.send``; the first exception propagates, as there.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence

from asgiref.sync import async_to_sync, sync_to_async
from django.dispatch import Signal
from django.dispatch.dispatcher import NO_RECEIVERS

# Receivers defined here only log: safe to call on the event loop.
_LOOP_SAFE_MODULE = "django.tasks.signals"

#: Sent by the worker (on its event loop) when it starts a task fired by a schedule, with
#: ``queue`` and ``schedule`` (the VTASKS_SCHEDULE name). Receivers must be fast and not block.
schedule_run = Signal()


def _loop_safe(receiver) -> bool:
    """Receivers that may run on the event loop: Django's log receivers, and receivers marked
    ``receiver.vtasks_loop_safe = True`` (they neither block nor use the ORM, e.g. metrics)."""
    return getattr(receiver, "__module__", None) == _LOOP_SAFE_MODULE or getattr(
        receiver, "vtasks_loop_safe", False
    )


def _receivers(signal: Signal, sender) -> tuple[Sequence, Sequence]:
    """(sync receivers, async receivers), as Signal.send resolves them."""
    if not signal.receivers or signal.sender_receivers_cache.get(sender) is NO_RECEIVERS:
        return (), ()
    return signal._live_receivers(sender)


def send_many(signal: Signal, sender, results: Sequence) -> None:
    """Signal.send(sender, task_result=r) for each result, from sync code."""
    if not results:
        return
    sync_receivers, async_receivers = _receivers(signal, sender)
    for result in results:
        for receiver in sync_receivers:
            receiver(signal=signal, sender=sender, task_result=result)
    if async_receivers:
        async_to_sync(_await_each)(signal, sender, async_receivers, results)


async def asend_many(
    signal: Signal,
    sender,
    results: Sequence,
    run_sync: Callable[[Callable[[], None]], Awaitable] | None = None,
) -> None:
    """The same from a running event loop. ``run_sync(fn)`` runs ``fn`` off the loop (default:
    asgiref's sync_to_async, as Signal.asend does); the worker passes its own executor."""
    if not results:
        return
    sync_receivers, async_receivers = _receivers(signal, sender)
    inline: list[Callable] = []
    off_loop: list[Callable] = []
    for receiver in sync_receivers:
        (inline if _loop_safe(receiver) else off_loop).append(receiver)
    for result in results:
        for receiver in inline:
            receiver(signal=signal, sender=sender, task_result=result)
    if off_loop:
        handling = sys.exc_info()[1]  # task_finished is sent inside the task's except

        def call_all():
            for result in results:
                for receiver in off_loop:
                    receiver(signal=signal, sender=sender, task_result=result)

        if handling is not None:
            call_all = _within_except(handling, call_all)

        if run_sync is not None:
            await run_sync(call_all)
        else:
            await sync_to_async(call_all)()
    if async_receivers:
        await _await_each(signal, sender, async_receivers, results)


async def _await_each(signal: Signal, sender, receivers: Sequence, results: Sequence) -> None:
    for result in results:
        await asyncio.gather(
            *(receiver(signal=signal, sender=sender, task_result=result) for receiver in receivers)
        )


def _within_except(exc: BaseException, fn: Callable[[], None]) -> Callable[[], None]:
    """fn, run in another thread with ``exc`` as sys.exc_info(), as it is on the sending side."""

    def run():
        tb = exc.__traceback__
        try:
            raise exc
        except BaseException:
            fn()
        finally:
            exc.__traceback__ = tb  # raising here added a frame

    return run
