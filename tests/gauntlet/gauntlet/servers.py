"""Real servers under test: valkey-server with the vtasks module, throwaway Postgres."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from . import paths
from .util import free_port, wait_until


class ValkeyServer:
    """valkey-server --loadmodule libvtasks.so on a free loopback port, in its own dir."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        aof: bool = False,
        appendfsync: str = "always",
        extra: list[str] | None = None,
        name: str = "valkey",
    ):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.aof = aof
        self.appendfsync = appendfsync
        self.extra = list(extra or [])
        self.name = name
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        if not paths.MODULE_SO.exists():
            raise RuntimeError(
                f"module not built: {paths.MODULE_SO} (cargo build --release -p vtasks-module)"
            )
        a = [
            paths.valkey_server_bin(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--protected-mode",
            "no",
            "--enable-debug-command",
            "yes",
            "--logfile",
            str(self.dir / f"{self.name}.log"),
            "--loadmodule",
            str(paths.MODULE_SO),
        ]
        if self.aof:
            a += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        return a + self.extra

    def start(self, timeout: float = 15.0) -> ValkeyServer:
        self.proc = subprocess.Popen(
            self.argv(),
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / f"{self.name}.stderr", "ab"),
            start_new_session=True,
        )
        self.starts += 1
        wait_until(self.ping, timeout, what=f"{self.name} to answer PING on :{self.port}")
        return self

    def client(self, timeout: float = 5.0):
        import valkey

        return valkey.Valkey(
            host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout
        )

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        c = self.client(2.0)
        try:
            if not c.ping():
                return False
            # still loading (AOF replay) answers -LOADING to everything but PING
            return c.info("persistence").get("loading", 0) == 0
        finally:
            c.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self, sig=signal.SIGKILL, timeout: float = 15.0):
        if not self.alive():
            return
        os.kill(self.proc.pid, sig)
        self.proc.wait(timeout)

    def stop(self):
        if self.alive():
            try:
                self.kill(signal.SIGTERM, 10)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)

    def restart(self, sig=signal.SIGKILL) -> float:
        """Kill with ``sig`` and start again on the same port/dir; returns seconds of downtime."""
        t0 = time.monotonic()
        self.kill(sig)
        self.start()
        return time.monotonic() - t0

    def used_memory(self) -> int:
        c = self.client()
        try:
            return int(c.info("memory")["used_memory"])
        finally:
            c.close()

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def log_tail(self, n: int = 30) -> str:
        p = self.dir / f"{self.name}.log"
        try:
            return "\n".join(p.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _as_pg(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.getuid() == 0 else argv


class PgServer:
    """A throwaway cluster through scripts/pg-server (start → DSN, stop by PID file)."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.dsn: str | None = None

    def start(self) -> PgServer:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [str(paths.PG_SERVER), "start", str(self.dir)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg-server start failed: {out.stderr[-2000:]}")
        self.dsn = out.stdout.strip().splitlines()[-1]
        return self

    def stop(self):
        subprocess.run(
            [str(paths.PG_SERVER), "stop", str(self.dir)], capture_output=True, timeout=60
        )

    def connect(self, **kw):
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=5, **kw)

    def ping(self) -> bool:
        with self.connect() as c:
            return c.execute("select 1").fetchone()[0] == 1

    def restart(self, mode: str = "immediate") -> float:
        """Restart the cluster (``immediate`` = crash-like, recovery on start); seconds of
        downtime."""
        t0 = time.monotonic()
        r = subprocess.run(
            _as_pg(
                [
                    "pg_ctl",
                    "-D",
                    str(self.dir / "data"),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    "60",
                    "restart",
                    "-l",
                    str(self.dir / "postgres.log"),
                ]
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {r.stdout} {r.stderr}")
        wait_until(self.ping, 30, what="postgres to accept connections after restart")
        return time.monotonic() - t0

    def durable(self):
        """scripts/pg-server runs with synchronous_commit=off (fast tests): a crash then loses the
        last acknowledged commits, which would be blamed on vtasks. Crash scenarios turn it on
        (for sessions opened from now on: reconnect the ones already open)."""
        with self.connect() as c:
            # a per-database setting beats the postmaster's command-line -c synchronous_commit=off
            dbname = c.execute("SELECT current_database()").fetchone()[0]
            c.execute(f'ALTER DATABASE "{dbname}" SET synchronous_commit = on')
        wait_until(
            lambda: self._setting("synchronous_commit") == "on", 10, what="synchronous_commit on"
        )

    def _setting(self, name: str) -> str:
        with self.connect() as c:
            return c.execute(f"SHOW {name}").fetchone()[0]

    def terminate_clients(self) -> int:
        """pg_terminate_backend every other client connection; returns how many."""
        with self.connect() as c:
            rows = c.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                "where pid <> pg_backend_pid() and backend_type = 'client backend' "
                "and datname is not null"
            ).fetchall()
        return sum(1 for (ok,) in rows if ok)

    def client_connections(self) -> int:
        with self.connect() as c:
            return c.execute(
                "select count(*) from pg_stat_activity "
                "where pid <> pg_backend_pid() and backend_type = 'client backend'"
            ).fetchone()[0]
