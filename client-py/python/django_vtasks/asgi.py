"""Embedded mode: run the vtasks worker (and schedule registration) inside an ASGI server.

    # asgi.py
    from django.core.asgi import get_asgi_application
    from django_vtasks.asgi import get_worker_application

    application = get_worker_application(get_asgi_application())

The returned app handles the ASGI ``lifespan`` scope: on startup it starts a
:class:`django_vtasks.worker.Worker` on the server's event loop (no signal handlers of its own);
on shutdown it stops fetching, waits for the in-flight tasks to finish and their acks to be
flushed, then completes the shutdown. Every other scope goes to the wrapped app unchanged. When
the wrapped app has a lifespan of its own (Starlette, a middleware stack...), it is driven too:
its startup runs before the worker starts and its shutdown after the worker drained. Django's
``ASGIHandler`` has none, which is detected and fine.

The server must run lifespan (uvicorn ``--lifespan on``/auto, granian ``--interface asgi`` with
lifespan, hypercorn, daphne ≥ 4). Some servers deliver the lifespan shutdown only after every open
HTTP connection closed; to stop taking new tasks at once, SIGTERM/SIGINT are chained (the
server's own handler still runs) so the worker stops fetching as soon as the signal arrives.

Settings: the worker's usual ones (``VTASKS_QUEUES``, default the backend's
``TASKS[...]["QUEUES"]``, ``VTASKS_CONCURRENCY``, ``VTASKS_BACKEND``, ``VTASKS_BATCH_QUEUES``...),
``VTASKS_RUN_SCHEDULER`` (register ``VTASKS_SCHEDULE``; the broker fires
each tick exactly once whatever the number of processes) and ``VTASKS_SHUTDOWN_TIMEOUT`` (seconds
to wait for the drain before cancelling what is still running; default: wait).

For worker-only processes, :func:`prune_installed_apps` and ``django_vtasks.empty_urls`` cut the
memory a worker pays for apps it never uses.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when the worker starts (after Django's setup)
    from .worker import Worker

logger = logging.getLogger("django_vtasks.asgi")

__all__ = ["UNNEEDED_APPS", "get_worker_application", "prune_installed_apps"]

#: apps a worker process does not need (admin UI, static files, request-bound state, toolbars)
UNNEEDED_APPS = (
    "django.contrib.admin",
    "django.contrib.admindocs",
    "django.contrib.staticfiles",
    "django.contrib.sessions",
    "django.contrib.messages",
    "debug_toolbar",
)


def prune_installed_apps(
    installed_apps: Iterable[str], remove: Iterable[str] = UNNEEDED_APPS
) -> list[str]:
    """INSTALLED_APPS without the apps a worker does not need, to cut its memory::

        # settings.py
        if os.environ.get("VTASKS_WORKER"):
            INSTALLED_APPS = prune_installed_apps(INSTALLED_APPS)
            ROOT_URLCONF = "django_vtasks.empty_urls"

    Entries are matched by module path or by their AppConfig path
    (``"django.contrib.admin.apps.SimpleAdminConfig"`` counts as ``django.contrib.admin``).
    Only prune apps your tasks do not import models or signals from."""
    drop = set(remove)

    def needed(entry: str) -> bool:
        if entry in drop:
            return False
        return not any(entry.startswith(app + ".apps.") for app in drop)

    return [app for app in installed_apps if needed(app)]


def _shutdown_timeout() -> float | None:
    from django.conf import settings

    value = getattr(settings, "VTASKS_SHUTDOWN_TIMEOUT", None)
    return None if value is None else float(value)


class _InnerLifespan:
    """Drives the wrapped app's own lifespan through queues; detects apps without lifespan."""

    def __init__(self, app, scope):
        self.to_app: asyncio.Queue = asyncio.Queue()
        self.from_app: asyncio.Queue = asyncio.Queue()
        self.task = asyncio.create_task(app(scope, self.to_app.get, self.from_app.put))
        self.supported = True

    async def send(self, message: dict) -> dict | None:
        """Send a lifespan event; returns the app's answer, or None when it has no lifespan."""
        if not self.supported:
            return None
        await self.to_app.put(message)
        reply = asyncio.create_task(self.from_app.get())
        done, _ = await asyncio.wait({reply, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if reply in done:
            return reply.result()
        reply.cancel()
        self.supported = False
        exc = None if self.task.cancelled() else self.task.exception()
        if exc is not None:
            logger.debug("the wrapped ASGI app has no lifespan support (%r)", exc)
        return None

    async def close(self) -> None:
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class _EmbeddedWorker:
    """One worker started on lifespan startup and drained on lifespan shutdown."""

    def __init__(self, options: dict):
        self.options = options
        self.worker: Worker | None = None
        self.task: asyncio.Task | None = None
        self.stopping = False
        self._stop_task: asyncio.Task | None = None
        self._previous_handlers: dict = {}

    def start(self) -> None:
        from .conf import settings
        from .worker import Worker

        opts = dict(self.options)
        if opts.get("scheduler") is None:
            opts["scheduler"] = bool(settings.VTASKS_RUN_SCHEDULER and settings.VTASKS_SCHEDULE)
        self.worker = worker = Worker(**opts)
        self.task = asyncio.create_task(
            worker.run(handle_signals=False), name="vtasks-embedded-worker"
        )
        self.task.add_done_callback(self._on_exit)
        self._chain_signals(asyncio.get_running_loop())
        logger.info(
            "embedded vtasks worker %s started (queues=%s, concurrency=%d%s)",
            worker.worker_id,
            worker.queues,
            worker.concurrency,
            ", scheduler" if worker.scheduler else "",
        )

    def _on_exit(self, task: asyncio.Task) -> None:
        if task.cancelled():
            if not self.stopping:
                logger.error("embedded vtasks worker was cancelled")
            return
        exc = task.exception()
        if exc is not None:
            logger.error("embedded vtasks worker crashed", exc_info=exc)
        elif not self.stopping:
            logger.error("embedded vtasks worker exited unexpectedly")

    # SIGTERM/SIGINT: stop fetching now, let the server's own handler run too.
    def _chain_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal only works there; lifespan shutdown still stops the worker
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous = signal.getsignal(sig)
            except (ValueError, OSError):
                continue

            def handler(signum, frame, _previous=previous):
                loop.call_soon_threadsafe(self._request_stop)
                if callable(_previous):
                    _previous(signum, frame)
                elif _previous == signal.SIG_DFL:
                    _exit_default(signum)

            try:
                signal.signal(sig, handler)
                self._previous_handlers[sig] = (previous, handler)
            except (ValueError, OSError):
                pass

    def _restore_signals(self) -> None:
        for sig, (previous, ours) in self._previous_handlers.items():
            try:
                # only if nobody replaced ours in the meantime
                if signal.getsignal(sig) is ours:
                    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass
        self._previous_handlers.clear()

    def _request_stop(self) -> None:
        if self.worker is not None and not self.stopping:
            self.stopping = True
            logger.info("embedded vtasks worker: stop signal, finishing in-flight tasks")
            self.worker.request_stop()

    async def stop(self) -> None:
        self.stopping = True
        try:
            if self.task is None or self.worker is None:
                return
            # run() must have created its events for stop() to reach it (see tools-needs.md)
            while self.worker._stop_event is None and not self.task.done():
                await asyncio.sleep(0)
            self.worker.request_stop()
            timeout = _shutdown_timeout()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
            except TimeoutError:
                logger.warning(
                    "embedded vtasks worker did not drain in %.1fs; cancelling its "
                    "tasks (they return to the queue when their lease expires)",
                    timeout,
                )
                for t in list(self.worker._tasks):
                    t.cancel()
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
            except Exception:
                pass  # logged by _on_exit
            logger.info(
                "embedded vtasks worker stopped (%d processed, %d failed)",
                self.worker.processed,
                self.worker.failed,
            )
        finally:
            self._restore_signals()


def _exit_default(signum) -> None:
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def get_worker_application(
    asgi_app,
    *,
    backend_alias: str | None = None,
    queues: list[str] | None = None,
    concurrency: int | None = None,
    scheduler: bool | None = None,
    worker_id: str | None = None,
):
    """Wrap ``asgi_app`` so the ASGI server's event loop also runs a vtasks worker.

    Keyword arguments override the settings the worker reads by default (``VTASKS_BACKEND``,
    ``VTASKS_QUEUES``, ``VTASKS_CONCURRENCY``, ``VTASKS_RUN_SCHEDULER``)."""
    options = {
        "backend_alias": backend_alias,
        "queues": queues,
        "concurrency": concurrency,
        "scheduler": scheduler,
        "worker_id": worker_id,
    }

    async def lifespan(scope, receive, send):
        inner = _InnerLifespan(asgi_app, scope)
        embedded = _EmbeddedWorker(options)
        started = False
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "lifespan.startup":
                    reply = await inner.send(message)
                    if reply is not None and reply["type"] == "lifespan.startup.failed":
                        await send(reply)
                        return
                    try:
                        embedded.start()
                        started = True
                    except Exception as e:
                        logger.exception("starting the embedded vtasks worker failed")
                        await send(
                            {"type": "lifespan.startup.failed", "message": f"vtasks worker: {e}"}
                        )
                        return
                    # let run() begin before anything can ask it to stop
                    await asyncio.sleep(0)
                    await send({"type": "lifespan.startup.complete"})
                elif kind == "lifespan.shutdown":
                    if started:
                        await embedded.stop()
                    reply = await inner.send(message)
                    if reply is not None and reply["type"] == "lifespan.shutdown.failed":
                        await send(reply)
                    else:
                        await send({"type": "lifespan.shutdown.complete"})
                    return
        finally:
            if started and embedded.task is not None and not embedded.task.done():
                # the server went away without a shutdown event
                await embedded.stop()
            await inner.close()

    async def application(scope, receive, send):
        if scope["type"] == "lifespan":
            await lifespan(scope, receive, send)
        else:
            await asgi_app(scope, receive, send)

    application.wrapped_app = asgi_app  # type: ignore[attr-defined]  # a function attribute
    return application
