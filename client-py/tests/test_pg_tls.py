"""The Postgres backend over TLS, configured the Django way: a TLS-only server with its own CA
(scripts/pg-tls-server), the TLS settings only in DATABASES OPTIONS (tests/settings_tls.py),
`manage.py migrate`, a real `runworker` and a task enqueued from Django."""

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from .conftest import CLIENT_DIR, read_lines, wait_for

ROOT = CLIENT_DIR.parent


@pytest.fixture(scope="module")
def tls_dir():
    with tempfile.TemporaryDirectory(prefix="vtasks-pg-tls-") as tmp:
        os.chmod(tmp, 0o755)  # as root the server runs as `postgres`, which must reach it
        d = Path(tmp) / "pg"
        out = subprocess.run(
            [str(ROOT / "scripts/pg-tls-server"), "start", str(d)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, f"pg-tls-server start failed: {out.stderr}"
        try:
            # Django's own connection (psycopg) with the same OPTIONS creates the schema
            _django(d, "migrate", "-v", "0")
            yield d
        finally:
            subprocess.run([str(ROOT / "scripts/pg-tls-server"), "stop", str(d)], timeout=60)


def _env(tls_dir) -> dict:
    env = dict(os.environ)
    env["VTASKS_TEST_TLS_DIR"] = str(tls_dir)
    env["PYTHONPATH"] = str(CLIENT_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _django(tls_dir, *args, timeout=120) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "django", *args, "--settings=tests.settings_tls"],
        cwd=CLIENT_DIR,
        env=_env(tls_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, f"manage.py {args[0]} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _settings_dict(tls_dir, **options) -> dict:
    t = tls_dir / "tls"
    return {
        "NAME": "postgres",
        "USER": "postgres",
        "PASSWORD": (tls_dir / "password").read_text().strip(),
        "HOST": "localhost",
        "PORT": (tls_dir / "port").read_text().strip(),
        "OPTIONS": {"sslrootcert": str(t / "ca.crt"), "connect_timeout": 3, **options},
    }


def test_worker_runs_a_task_over_tls_with_settings_from_database_options(tls_dir, tmp_path):
    out_file = tmp_path / "out.txt"
    log_path = tmp_path / "worker.log"
    worker_id = f"tls-{uuid.uuid4().hex[:6]}"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "django",
                "runworker",
                "--settings=tests.settings_tls",
                "--queue",
                "tls",
                "--concurrency",
                "2",
                "--id",
                worker_id,
            ],
            cwd=CLIENT_DIR,
            env=_env(tls_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _django(
                tls_dir,
                "shell",
                "-c",
                "from tests.testapp.tasks import record; "
                f"record.using(queue_name='tls').enqueue({str(out_file)!r}, 'over-tls')",
            )
            wait_for(
                lambda: read_lines(out_file) == ["over-tls"],
                timeout=60,
                message=f"the task to run; worker log:\n{log_path.read_text(errors='replace')}",
            )
            # The worker's pool: TLS, as the certificate user, with OPTIONS' application_name.
            import psycopg

            t = tls_dir / "tls"
            with psycopg.connect(
                host="localhost",
                port=(tls_dir / "port").read_text().strip(),
                user="vtcert",
                dbname="postgres",
                sslmode="verify-full",
                sslrootcert=str(t / "ca.crt"),
                sslcert=str(t / "client.crt"),
                sslkey=str(t / "client.key"),
            ) as c:
                rows = c.execute(
                    "SELECT s.ssl, a.usename FROM pg_stat_activity a "
                    "JOIN pg_stat_ssl s USING (pid) "
                    "WHERE a.application_name = 'vtasks-tls-test' AND a.pid <> pg_backend_pid()"
                ).fetchall()
            assert rows and all(ssl and user == "vtcert" for ssl, user in rows), rows
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    assert "Traceback" not in log_path.read_text(errors="replace")


def test_database_options_reach_the_native_pool_and_errors_say_what_to_check(tls_dir):
    from django_vtasks.backends.postgres import PostgresBroker, _dsn_from_django
    from django_vtasks.broker import BrokerError

    password = (tls_dir / "password").read_text().strip()
    ok = PostgresBroker(_dsn_from_django(_settings_dict(tls_dir, sslmode="verify-full")))
    ok.ping()
    ok.close()

    other_ca = str(tls_dir / "tls" / "other-ca.crt")
    cases = [
        # sslrootcert from OPTIONS is used: a CA that did not sign the server's certificate
        (
            dict(sslmode="verify-full", sslrootcert=other_ca),
            "UnknownIssuer",
            "point sslrootcert at the CA",
        ),
        # sslmode from OPTIONS is used: plaintext against a TLS-only server
        (dict(sslmode="disable"), "no encryption", "only accepts TLS"),
    ]
    for options, cause, hint in cases:
        broker = PostgresBroker(_dsn_from_django(_settings_dict(tls_dir, **options)))
        with pytest.raises(BrokerError) as exc:
            broker.ping()
        msg = str(exc.value)
        assert f"localhost:{(tls_dir / 'port').read_text().strip()}" in msg, msg
        assert cause in msg and hint in msg, msg
        assert password not in msg, msg
        broker.close()

    # a key the native pool does not support is refused by name, not dropped
    with pytest.raises(BrokerError, match="`service` is not supported"):
        PostgresBroker(_dsn_from_django(_settings_dict(tls_dir, service="x"))).ping()
    # Django's own keys are not connection settings
    dsn = _dsn_from_django(
        _settings_dict(
            tls_dir, isolation_level=1, assume_role="r", server_side_binding=True, sslmode="require"
        )
    )
    assert "isolation_level" not in dsn and "assume_role" not in dsn and "sslmode='require'" in dsn


def test_a_dead_server_is_reported_within_connect_timeout():
    """A closed port: the workers' pool says so in about connect_timeout (2 s here), with the
    address and what to check, not after the pool's 15 s, and without the password."""
    import socket
    import time

    from django_vtasks.backends.postgres import PostgresBroker, _dsn_from_django
    from django_vtasks.broker import BrokerError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = PostgresBroker(
        _dsn_from_django(
            {
                "NAME": "app",
                "USER": "app",
                "PASSWORD": "sekrit-pw",
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "OPTIONS": {"connect_timeout": 2},
            }
        )
    )
    started = time.monotonic()
    with pytest.raises(BrokerError) as exc:
        broker.ping()
    took = time.monotonic() - started
    msg = str(exc.value)
    assert f"127.0.0.1:{port}" in msg and "refused" in msg and "is Postgres running" in msg, msg
    assert "sekrit-pw" not in msg, msg
    assert took < 12, f"{took:.1f}s (the pool used to wait 15 s)"
