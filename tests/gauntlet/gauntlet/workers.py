"""Worker subprocesses: ``python -m django runworker`` with the gauntlet settings."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from . import paths


class Worker:
    def __init__(self, tag: str, env: dict[str, str], logdir: Path, args: list[str] | None = None):
        self.tag = tag
        self.env = env
        self.args = list(args or [])
        self.logdir = Path(logdir)
        self.proc: subprocess.Popen | None = None
        self.pids: list[int] = []

    def start(self) -> Worker:
        env = dict(os.environ)
        env.update(self.env)
        env["GAUNTLET_WORKER_TAG"] = self.tag
        env["DJANGO_SETTINGS_MODULE"] = "gauntlet_settings"
        env["PYTHONPATH"] = paths.subprocess_pythonpath()
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTEST_CURRENT_TEST", None)
        log = open(self.logdir / f"worker-{self.tag}.log", "ab")
        self.proc = subprocess.Popen(
            [paths.PYTHON, "-m", "django", "runworker", *self.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=str(paths.GAUNTLET_DIR),
        )
        log.close()
        self.pids.append(self.proc.pid)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill(self):
        self.signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0):
        """SIGTERM (drain), SIGKILL when it does not exit in time. Returns the exit code."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        rc = self.wait(timeout)
        if rc is None:
            self.kill()
            return "killed"
        return rc

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(
                (self.logdir / f"worker-{self.tag}.log")
                .read_text(errors="replace")
                .splitlines()[-n:]
            )
        except OSError:
            return ""


class Fleet:
    """The workers of one scenario, plus a record of every fault applied to a process."""

    def __init__(self, env: dict[str, str], logdir: Path, args: list[str] | None = None):
        self.env = env
        self.logdir = Path(logdir)
        self.args = list(args or [])
        self.workers: list[Worker] = []
        self.n = 0
        # pid -> (time, "kill"|"stop"): when the process stopped making progress, for duplicate
        # judgement
        self.faulted: dict[int, tuple[float, str]] = {}

    def spawn(
        self,
        extra_env: dict[str, str] | None = None,
        args: list[str] | None = None,
        tag: str | None = None,
    ) -> Worker:
        self.n += 1
        env = dict(self.env)
        env.update(extra_env or {})
        w = Worker(tag or f"w{self.n}", env, self.logdir, self.args + list(args or []))
        self.workers.append(w.start())
        return w

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def sigkill(self, w: Worker):
        self.faulted[w.pid] = (time.time(), "kill")
        w.kill()

    def sigstop(self, w: Worker):
        self.faulted[w.pid] = (time.time(), "stop")
        w.signal(signal.SIGSTOP)

    def sigcont(self, w: Worker):
        w.signal(signal.SIGCONT)

    def stop_all(self, timeout: float = 15.0) -> dict[str, object]:
        out = {}
        for w in self.workers:
            if w.alive():
                w.signal(signal.SIGCONT)
                w.signal(signal.SIGTERM)
        for w in self.workers:
            if w.proc is not None:
                rc = w.wait(timeout) if w.alive() else w.proc.returncode
                if rc is None:
                    w.kill()
                    rc = "killed"
                out[w.tag] = rc
        return out
