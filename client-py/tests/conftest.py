import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# the admin and subprocess fixtures (admin_stack, superuser_client, procs), for every test module
pytest_plugins = ["tests.tools_helpers"]

CLIENT_DIR = Path(__file__).resolve().parents[1]
BACKENDS = ["valkey", "valkey_cluster", "postgres"]


def wait_for(predicate, timeout=30.0, interval=0.02, message="condition"):
    """Bounded polling: returns the first truthy value of predicate(), fails after timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as e:
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {message}"
                + (f" (last error: {last_exc!r})" if last_exc else "")
            )
        time.sleep(interval)


def read_lines(path) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


class WorkerProc:
    def __init__(
        self,
        alias,
        queues,
        tmp_path,
        *,
        concurrency=4,
        lease=None,
        scheduler=False,
        worker_id=None,
        env=None,
        health_check_file=None,
        extra=(),
    ):
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:8]}"
        self.log_path = Path(tmp_path) / f"worker-{self.worker_id}.log"
        args = [
            sys.executable,
            "-m",
            "django",
            "runworker",
            "--settings=tests.settings",
            "--backend",
            alias,
            "--concurrency",
            str(concurrency),
            "--id",
            self.worker_id,
        ]
        for q in queues:
            args += ["--queue", q]
        if lease is not None:
            args += ["--lease", str(lease)]
        if scheduler:
            args.append("--scheduler")
        if health_check_file:
            args += ["--health-check-file", str(health_check_file)]
        args += list(extra)
        full_env = dict(os.environ)
        from django.db import connections

        full_env["VTASKS_TEST_DB_NAME"] = connections["default"].settings_dict["NAME"]
        full_env["PYTHONPATH"] = str(CLIENT_DIR) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=CLIENT_DIR, env=full_env, stdout=self.log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self):
        return self.proc.pid

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout=20):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit in {timeout}s:\n{self.output()}") from None

    def stop(self, timeout=20):
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session", autouse=True)
def _close_brokers(django_db_setup, django_db_blocker):
    """Close the brokers' pools before pytest-django drops the test database."""
    yield
    import gc

    from django_vtasks.backends import base

    for broker in list(base._BROKERS.values()):
        try:
            broker.close()
        except Exception:
            pass
    base._BROKERS.clear()
    gc.collect()
    # pools may linger a moment (listener threads): end their sessions so the DB can be dropped
    from django.db import connections

    with django_db_blocker.unblock(), connections["default"].cursor() as c:
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(params=BACKENDS)
def alias(request):
    if request.param == "valkey" and not os.environ.get("VTASKS_TEST_VALKEY_URL"):
        pytest.skip("Valkey module not built (cargo build --release -p vtasks-module)")
    if request.param == "valkey_cluster" and not os.environ.get("VTASKS_TEST_VALKEY_CLUSTER_URL"):
        pytest.skip("Valkey module not built (cargo build --release -p vtasks-module)")
    return request.param


@pytest.fixture
def backend(alias):
    from django.tasks import task_backends

    return task_backends[alias]


@pytest.fixture
def broker(backend):
    return backend.broker


@pytest.fixture
def queue():
    return f"q{uuid.uuid4().hex[:10]}"


@pytest.fixture
def workers(alias, tmp_path, django_db_setup):
    started: list[WorkerProc] = []

    def start(queues, **kwargs):
        w = WorkerProc(kwargs.pop("alias", alias), queues, tmp_path, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()
    for w in started:
        if os.environ.get("VTASKS_TEST_SHOW_WORKER_LOGS"):
            print(f"--- worker {w.worker_id} ---\n{w.output()}")


@pytest.fixture
def out(tmp_path):
    """A file tasks append to (visible across processes)."""
    return str(tmp_path / "out.txt")


def schedule_env(entries: dict) -> dict:
    return {"VTASKS_TEST_SCHEDULE": json.dumps(entries)}
