"""``runworker --processes N``: one supervisor process, N worker processes.

    manage.py runworker --processes 4 --id web-1      # children web-1-0 .. web-1-3
    manage.py runworker --processes auto              # one child per CPU

Each child is a plain ``runworker`` (a fresh interpreter: no broker connection or thread is
shared through ``fork``) with the stable worker id ``<id>-<index>``. The id is what makes a
restart safe: a worker rescues the tasks leased to its own id when it starts (``VT.RESCUE
<queue> WORKER <id>``), so a child that crashed and is restarted hands the tasks it held back
at once instead of waiting for their leases to expire.

- A child that exits while the set is running is restarted after a backoff (1 s, doubling up to
  30 s; back to 1 s once a child has run for a minute), and the exit is logged.
- SIGTERM / SIGINT: forwarded to every child (each stops fetching, finishes its in-flight tasks and
  flushes its acks), then the supervisor exits 0 once all of them did (1 if one of them failed).
  A second signal is forwarded too: children hand their tasks back and exit at once.
- Children run in their own session (a terminal's Ctrl-C reaches the supervisor only, which
  forwards it once) and stop on their own when the supervisor disappears (SIGKILL).
- ``--health-check-file``: each child touches a private file; the supervisor gives the set's file
  the *oldest* of their times, so it is fresh only while every child makes progress (the same
  meaning as a single worker's file).
- ``--metrics-port``: the children write their metrics to ``PROMETHEUS_MULTIPROC_DIR``
  (prometheus_client's multiprocess mode) and the supervisor serves the sum, plus the queue
  depths it reads from the broker. See :mod:`django_vtasks.metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

logger = logging.getLogger("django_vtasks.supervisor")

#: Restart backoff of a child that exited (seconds): first, cap, and the uptime that resets it.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0


def parse_processes(value: str | int | None) -> int:
    """``--processes`` value: a positive integer or ``auto`` (the CPUs this process may use)."""
    if value is None:
        return 1
    if isinstance(value, int):
        n = value
    elif str(value).strip().lower() == "auto":
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            n = os.cpu_count() or 1
    else:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(
                f"--processes must be a positive integer or 'auto', not {value!r}"
            ) from None
    if n < 1:
        raise ValueError(f"--processes must be at least 1, not {n}")
    return n


def child_worker_id(base: str, index: int) -> str:
    """The stable id of child ``index`` of the set ``base`` (the same after every restart)."""
    return f"{base}-{index}"


@dataclass
class _Child:
    index: int
    worker_id: str
    health_file: str | None
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    backoff: float = BACKOFF_FIRST
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Starts, watches and stops ``processes`` worker children. ``child_args``: the runworker
    options every child gets (``--id``/``--health-check-file`` are added per child)."""

    def __init__(
        self,
        processes: int,
        base_id: str,
        child_args: list[str],
        health_check_file: str | None = None,
        metrics_port: int | None = None,
        metrics_addr: str = "",
        backend_alias: str = "default",
        queues: list[str] | None = None,
    ):
        self.processes = processes
        self.base_id = base_id
        self.child_args = list(child_args)
        self.health_check_file = health_check_file
        self.metrics_port = metrics_port
        self.metrics_addr = metrics_addr
        self.backend_alias = backend_alias
        self.queues = queues
        self.stopping = False
        self._signals = 0
        self._private_dir = tempfile.mkdtemp(prefix="vtasks-supervisor-")
        self._metrics_dir: str | None = None
        self._owns_metrics_dir = False
        self.children = [
            _Child(
                i,
                child_worker_id(base_id, i),
                os.path.join(self._private_dir, f"health-{i}") if health_check_file else None,
            )
            for i in range(processes)
        ]

    # ---- children -------------------------------------------------------------------------------
    def _command(self, child: _Child) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "django",
            "runworker",
            *self.child_args,
            "--id",
            child.worker_id,
            "--supervised",
        ]
        if child.health_file:
            args += ["--health-check-file", child.health_file]
        if self._metrics_dir:
            args.append("--metrics-child")
        return args

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # the child imports what this process imports (manage.py's directory is on sys.path
        # here, not necessarily in the child's working directory)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        if self._metrics_dir:
            env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
        return env

    def _start(self, child: _Child) -> None:
        child.proc = subprocess.Popen(self._command(child), env=self._env(), start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None
        logger.info("worker %s started (pid %d)", child.worker_id, child.proc.pid)

    def _reap(self, child: _Child, proc: subprocess.Popen) -> None:
        """Handle a child that exited (``proc``, its process): restart it later, unless the set
        is stopping."""
        code = proc.returncode
        pid = proc.pid
        child.exit_codes.append(code)
        child.proc = None
        self._metrics_process_dead(pid)
        if self.stopping:
            logger.info("worker %s (pid %d) stopped with exit code %s", child.worker_id, pid, code)
            return
        how = (
            f"was killed by {signal.Signals(-code).name}"
            if code < 0
            else f"exited with code {code}"
        )
        if time.monotonic() - child.started_at >= STABLE_AFTER:
            child.backoff = BACKOFF_FIRST
        logger.warning(
            "worker %s (pid %d) %s; restarting it in %.0fs (it rescues its own tasks)",
            child.worker_id,
            pid,
            how,
            child.backoff,
        )
        child.restart_at = time.monotonic() + child.backoff
        child.backoff = min(child.backoff * 2, BACKOFF_MAX)

    # ---- signals --------------------------------------------------------------------------------
    def _on_signal(self, sig, _frame) -> None:
        self._signals += 1
        self.stopping = True
        name = signal.Signals(sig).name
        if self._signals == 1:
            logger.info(
                "supervisor: %s received, stopping %d worker(s) (they finish their "
                "in-flight tasks; again to exit now)",
                name,
                self.processes,
            )
        else:
            logger.warning("supervisor: second signal, workers hand their tasks back and exit")
        for child in self.children:
            child.restart_at = None
            if child.proc is not None and child.proc.poll() is None:
                try:
                    child.proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    # ---- health ---------------------------------------------------------------------------------
    def _update_health(self) -> None:
        """The set's health file gets the oldest progress time of the children (all running)."""
        if not self.health_check_file:
            return
        times = []
        for child in self.children:
            if child.proc is None or child.health_file is None:
                return
            try:
                times.append(os.stat(child.health_file).st_mtime)
            except OSError:
                return  # not started yet
        oldest = min(times)
        try:
            with open(self.health_check_file, "a"):
                pass
            os.utime(self.health_check_file, (oldest, oldest))
        except OSError as e:
            logger.warning("cannot touch health check file %s: %s", self.health_check_file, e)

    # ---- metrics --------------------------------------------------------------------------------
    def _start_metrics(self) -> None:
        if self.metrics_port is None:
            return
        from . import metrics

        self._metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not self._metrics_dir:
            self._metrics_dir = os.path.join(self._private_dir, "metrics")
            os.makedirs(self._metrics_dir)
            self._owns_metrics_dir = True
        metrics.serve_multiprocess(
            self.metrics_port, self.metrics_addr, self._metrics_dir, self.backend_alias, self.queues
        )
        logger.info(
            "metrics of the %d worker(s) on http://%s:%d/metrics",
            self.processes,
            self.metrics_addr or "0.0.0.0",
            self.metrics_port,
        )

    def _metrics_process_dead(self, pid: int) -> None:
        if self._metrics_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, self._metrics_dir)

    # ---- main loop ------------------------------------------------------------------------------
    def run(self) -> int:
        """Run the set until a signal stopped every child; the exit code of the supervisor."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            self._start_metrics()
            logger.info(
                "supervisor (pid %d) starting %d worker(s): %s",
                os.getpid(),
                self.processes,
                ", ".join(c.worker_id for c in self.children),
            )
            for child in self.children:
                if not self.stopping:
                    self._start(child)
            while True:
                now = time.monotonic()
                for child in self.children:
                    if child.proc is not None and child.proc.poll() is not None:
                        self._reap(child, child.proc)
                    if (
                        child.proc is None
                        and child.restart_at is not None
                        and now >= child.restart_at
                        and not self.stopping
                    ):
                        self._start(child)
                if self.stopping and all(c.proc is None for c in self.children):
                    break
                self._update_health()
                time.sleep(0.2)
        finally:
            for child in self.children:  # only on an unexpected error: do not orphan children
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            shutil.rmtree(self._private_dir, ignore_errors=True)
        last = [c.exit_codes[-1] for c in self.children if c.exit_codes]
        failed = [c for c in last if c != 0]
        logger.info(
            "supervisor: all %d worker(s) stopped%s",
            self.processes,
            f" ({len(failed)} with a non-zero exit code)" if failed else "",
        )
        return 1 if failed else 0


def from_options(processes: int, alias: str, options: dict) -> Supervisor:
    """The supervisor of ``runworker --processes N`` with the command's parsed options."""
    import socket

    from .conf import settings

    base_id = (
        options.get("worker_id")
        or settings.VTASKS_WORKER_ID
        or f"{socket.gethostname()}-{os.getpid()}"
    )
    args = ["--backend", alias, "-v", str(options.get("verbosity", 1))]
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        args.append(f"--settings={os.environ['DJANGO_SETTINGS_MODULE']}")
    if options.get("concurrency") is not None:
        args += ["--concurrency", str(options["concurrency"])]
    for queue in options.get("queues") or ():
        args += ["--queue", queue]
    if options.get("scheduler"):
        args.append("--scheduler")  # safe on any number of workers
    if options.get("lease") is not None:
        args += ["--lease", str(options["lease"])]
    return Supervisor(
        processes,
        base_id,
        args,
        health_check_file=options.get("health_check_file") or settings.VTASKS_HEALTH_CHECK_FILE,
        metrics_port=options.get("metrics_port"),
        metrics_addr=options.get("metrics_addr") or "",
        backend_alias=alias,
        queues=options.get("queues"),
    )


async def run_supervised(worker) -> None:
    """Run a supervised child's worker; stop it (draining) when the supervisor disappears."""
    parent = os.getppid()

    async def watch_parent():
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != parent:
                logger.warning(
                    "worker %s: its supervisor (pid %d) is gone, stopping", worker.worker_id, parent
                )
                worker.request_stop()
                return

    watcher = asyncio.create_task(watch_parent())
    try:
        await worker.run()
    finally:
        watcher.cancel()
