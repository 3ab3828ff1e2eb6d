"""What an installation offers its operator: ``python -m django_vtasks module-path`` and the safety
and honesty of ``manage.py vtasks_valkey`` (password for a non-loopback bind; random port and
temporary data said in its output). The wheel itself is checked by scripts/install-check."""

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.tools_helpers import PYTHON, free_port, subprocess_env

REPO = Path(__file__).resolve().parents[2]


def _module_or_skip() -> str:
    from tests.vtasks_servers import module_path

    path = module_path()
    if not Path(path).exists():
        pytest.skip(f"{path} missing (cargo build --release -p vtasks-module)")
    return path


def _run(args, env=None, cwd=None):
    return subprocess.run(
        [PYTHON, *args], capture_output=True, text=True, timeout=120, cwd=cwd or REPO, env=env
    )


def test_module_path_prints_the_module_of_this_installation(tmp_path):
    module = _module_or_skip()
    env = {k: v for k, v in subprocess_env().items() if k != "VTASKS_MODULE_PATH"}
    # this test suite runs on the editable install: the source checkout's cargo build is used
    done = _run(["-m", "django_vtasks", "module-path", "-v"], env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str((REPO / "target/release/libvtasks.so").resolve())
    assert "source checkout" in done.stderr

    done = _run(
        ["-m", "django_vtasks", "module-path"],
        env={**env, "VTASKS_MODULE_PATH": module},
        cwd=tmp_path,
    )
    assert done.returncode == 0 and done.stdout.strip() == str(Path(module).resolve())

    # a wrong VTASKS_MODULE_PATH is an error, not a silent fallback; nothing on stdout, so
    # `--loadmodule "$(python -m django_vtasks module-path)"` cannot load something else
    done = _run(
        ["-m", "django_vtasks", "module-path"],
        env={**env, "VTASKS_MODULE_PATH": str(tmp_path / "nope.so")},
        cwd=tmp_path,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert "no such file" in done.stderr and "nope.so" in done.stderr


def test_version_is_the_distribution_version():
    import tomllib

    pyproject = tomllib.loads((REPO / "client-py" / "pyproject.toml").read_text())
    done = _run(["-m", "django_vtasks", "version"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == pyproject["project"]["version"]
    # above the django-vtasks 3.2.0 this project succeeds on PyPI (CHANGELOG.md)
    assert int(done.stdout.split(".")[0]) >= 4


def test_vtasks_valkey_refuses_a_public_bind_without_password(tmp_path):
    env = {k: v for k, v in subprocess_env().items() if k != "VTASKS_VALKEY_PASSWORD"}
    done = _run(
        ["-m", "django", "vtasks_valkey", "--bind", "0.0.0.0", "--dir", str(tmp_path)],
        env=env,
        cwd=REPO / "client-py",
    )
    assert done.returncode != 0
    assert "--bind 0.0.0.0" in done.stderr and "--password" in done.stderr
    assert not (tmp_path / "valkey.log").exists()  # no server was started


def test_vtasks_valkey_with_password_on_a_public_bind(procs, tmp_path):
    import valkey

    module = _module_or_skip()
    secret = 's3cr3t pass"word'
    p = procs(
        [PYTHON, "-m", "django", "vtasks_valkey", "--bind", "0.0.0.0"],
        tmp_path / "vtasks_valkey.log",
        env=subprocess_env({"VTASKS_MODULE_PATH": module, "VTASKS_VALKEY_PASSWORD": secret}),
    )
    url = wait_for(
        lambda: re.search(r"^BROKER_URL=(\S+)$", p.output(), re.M),
        timeout=30,
        message=f"BROKER_URL line in\n{p.output()}",
    ).group(1)
    port = int(re.search(r":(\d+)/0$", url).group(1))
    out = p.output()
    assert url == f"valkey://:<password>@127.0.0.1:{port}/0"
    assert secret not in out
    # where users look: the random port and the temporary data directory are said at startup
    assert "chosen at random" in out and "--port 6379" in out
    assert "TEMPORARY" in out and "keep tasks across restarts with --persist" in out

    with pytest.raises(valkey.AuthenticationError):
        valkey.Valkey(host="127.0.0.1", port=port).ping()
    client = valkey.Valkey(host="127.0.0.1", port=port, password=secret)
    assert client.ping()
    assert client.config_get("bind")["bind"] == "0.0.0.0"
    assert client.execute_command("VT.INFO", "vt:{x}")
    # the password is not on valkey-server's command line (readable by every local user)
    pid = int(re.search(r"\(pid (\d+)\)", out).group(1))
    assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert p.terminate() == 0, p.output()
    assert "valkey-server stopped." in p.output()


def test_vtasks_valkey_persist_keeps_tasks_across_restarts(tmp_path):
    import valkey

    module = _module_or_skip()
    env = subprocess_env({"VTASKS_MODULE_PATH": module})
    port = free_port()

    def run(n, check):
        # cwd tmp_path: --persist without --dir keeps the data in ./.vtasks-valkey
        log = tmp_path / f"run{n}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [PYTHON, "-m", "django", "vtasks_valkey", "--port", str(port), "--persist"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(
                lambda: re.search(r"^BROKER_URL=", log.read_text(), re.M),
                timeout=30,
                message=f"BROKER_URL line in\n{log.read_text()}",
            )
            result = check(valkey.Valkey(host="127.0.0.1", port=port), log.read_text())
            proc.terminate()
            assert proc.wait(30) == 0, log.read_text()
            return result
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def first(client, out):
        assert f"data: {(tmp_path / '.vtasks-valkey').resolve()} (AOF" in out, out
        return client.execute_command("VT.ENQUEUE", "vt:{keep}", "PAYLOAD", "p")[0]

    def second(client, out):
        assert client.execute_command("VT.GET", "vt:{keep}", task_id), (
            f"task {task_id!r} lost across the restart"
        )

    task_id = run(1, first)
    assert task_id
    run(2, second)
