"""Management command papercuts (issue 14): one backend flag with two spellings on every command,
and benchmark_vtasks' output under DEBUG=True with Django's default logging."""

import io
import subprocess
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command, get_commands, load_command_class

from tests.testapp.tasks import add
from tests.tools_helpers import PYTHON, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

CLIENT_DIR = Path(__file__).resolve().parents[1]


def vtasks_commands() -> dict:
    """{name: Command} of every management command django_vtasks ships."""
    return {
        name: load_command_class(app, name)
        for name, app in get_commands().items()
        if app == "django_vtasks"
    }


def backend_action(command):
    parser = command.create_parser("manage.py", command.__module__.rsplit(".", 1)[-1])
    return next((a for a in parser._actions if a.dest == "backend"), None), parser


def test_every_backend_command_takes_both_spellings():
    commands = vtasks_commands()
    with_backend = {name for name, cmd in commands.items() if backend_action(cmd)[0]}
    # vtasks_valkey starts a server: it has no backend to name
    assert {"runworker", "clear_queue", "benchmark_vtasks"} <= with_backend, with_backend
    for name in with_backend:
        action, parser = backend_action(commands[name])
        assert set(action.option_strings) == {"--backend", "--backend-alias"}, name
        for flag in ("--backend", "--backend-alias"):
            assert vars(parser.parse_args([flag, "postgres"]))["backend"] == "postgres", (
                name,
                flag,
            )
        # no other spelling of the same thing
        assert not [a for a in parser._actions if "alias" in a.dest], name


@pytest.mark.parametrize("spelling", ["backend", "backend_alias"])
def test_clear_queue_call_command_with_either_keyword(spelling):
    queue = f"q{uuid.uuid4().hex[:10]}"
    task = add.using(backend="postgres", queue_name=queue)
    for _ in range(2):
        task.enqueue(1, 2)
    out = io.StringIO()
    call_command("clear_queue", queue=queue, force=True, stdout=out, **{spelling: "postgres"})
    assert "Cleared 2 queued task(s)" in out.getvalue()
    assert "backend 'postgres'" in out.getvalue()


@pytest.mark.parametrize("flag", ["--backend", "--backend-alias"])
def test_clear_queue_command_line_with_either_flag(flag):
    queue = f"q{uuid.uuid4().hex[:10]}"
    add.using(backend="postgres", queue_name=queue).enqueue(1, 2)
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "django",
            "clear_queue",
            flag,
            "postgres",
            "--queue",
            queue,
            "--force",
            "--skip-checks",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=CLIENT_DIR,
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "Cleared 1 queued task(s)" in done.stdout


@pytest.mark.parametrize("flag", ["--backend", "--backend-alias"])
def test_runworker_reports_an_unknown_backend_with_either_flag(flag):
    """Both spellings reach the backend lookup, whose error names the alias and the known ones
    (a CommandError, not a traceback)."""
    done = subprocess.run(
        [PYTHON, "-m", "django", "runworker", flag, "nope-alias"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=CLIENT_DIR,
        env=subprocess_env(),
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "CommandError: Backend 'nope-alias' not found in TASKS" in done.stderr
    assert "Pass --backend with one of: default, postgres" in done.stderr


# ---- benchmark_vtasks under DEBUG=True -----------------------------------------------------------
# A project as `startproject` makes it: DEBUG = True and no LOGGING (Django's default logging,
# whose console handler prints the "django" loggers at INFO when DEBUG is on).
DEBUG_SETTINGS = """
from tests.settings import *  # noqa: F403 - the servers of the test run
DEBUG = True
LOGGING = {}
"""


def run_benchmark(tmp_path, *extra) -> subprocess.CompletedProcess:
    (tmp_path / "debug_settings.py").write_text(DEBUG_SETTINGS)
    env = subprocess_env({"DJANGO_SETTINGS_MODULE": "debug_settings"})
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    queue = f"bench{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "django",
            "benchmark_vtasks",
            "--backend",
            "valkey",
            "--queue",
            queue,
            "--count",
            "300",
            "--concurrency",
            "20",
            "--no-progress",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=CLIENT_DIR,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "300 ok, 0 failed" in done.stdout
    return done


def test_benchmark_output_stays_short_with_debug_on(tmp_path):
    done = run_benchmark(tmp_path)
    lines = (done.stdout + done.stderr).splitlines()
    assert len(lines) < 30, "\n".join(lines[:20])
    assert not [line for line in lines if line.startswith("Task id=")]
    # the same project at -v 2 shows Django's per-task lines: the setup above does reproduce
    # them (2 per task: started, finished), so the short output is the command's doing
    verbose = run_benchmark(tmp_path, "-v", "2")
    task_lines = [line for line in verbose.stderr.splitlines() if line.startswith("Task id=")]
    assert len(task_lines) >= 600, verbose.stderr[-2000:]
