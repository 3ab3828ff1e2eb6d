"""Tools over both backends against real servers: clear_queue, benchmark_vtasks, vtasks_valkey,
the admin pages, prune_installed_apps, and the embedded worker under a real ASGI server."""

import builtins
import io
import re
import signal
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.conftest import read_lines, wait_for
from tests.testapp.tasks import add, record, sleep_record
from tests.tools_helpers import PYTHON, free_port, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)


def enqueue(alias, queue, n=3, task=add, args=(1, 2)):
    t = task.using(backend=alias, queue_name=queue)
    return [t.enqueue(*args).id for _ in range(n)]


def make_dead(alias, broker, queue, n=2):
    """n tasks in the dead-letter queue of ``queue`` (fetched and failed through the broker)."""
    ids = enqueue(alias, queue, n)
    got = wait_for(lambda: broker.fetch([queue], "tools-test", n, 30_000) or None, message="fetch")
    assert {d.id for d in got} == set(ids)
    for d in got:
        assert broker.fail(queue, d.id, d.token, "RuntimeError: boom\ntraceback...") == "dead"
    return ids


def counts(broker, queue):
    i = broker.info(queue)
    return {k: i[k] for k in ("ready", "delayed", "inflight", "dead")}


# ---- prune_installed_apps / empty_urls ---------------------------------------------------------
def test_prune_installed_apps():
    from django_vtasks.asgi import prune_installed_apps

    apps = [
        "django.contrib.admin.apps.SimpleAdminConfig",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.staticfiles",
        "debug_toolbar",
        "django_vtasks",
        "shop",
    ]
    assert prune_installed_apps(apps) == [
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django_vtasks",
        "shop",
    ]
    assert prune_installed_apps(apps, remove=["shop"])[-1] == "django_vtasks"
    from django_vtasks import empty_urls

    assert empty_urls.urlpatterns == []


# ---- clear_queue ---------------------------------------------------------------------------------
def test_clear_queue_force(alias, broker, queue):
    enqueue(alias, queue, 3)
    other = queue + "x"
    enqueue(alias, other, 2)
    out = io.StringIO()
    call_command("clear_queue", backend_alias=alias, queue=queue, force=True, stdout=out)
    assert "Cleared 3 queued task(s)" in out.getvalue()
    assert counts(broker, queue)["ready"] == 0
    assert counts(broker, other)["ready"] == 2  # other queues untouched
    out = io.StringIO()
    call_command("clear_queue", backend_alias=alias, queue=queue, force=True, stdout=out)
    assert "nothing to clear" in out.getvalue()


def test_clear_queue_prompt(alias, broker, queue, monkeypatch):
    enqueue(alias, queue, 2)
    prompts = []

    def answer(reply):
        def fake_input(prompt=""):
            prompts.append(prompt)
            return reply

        return fake_input

    monkeypatch.setattr(builtins, "input", answer("no"))
    out = io.StringIO()
    with pytest.raises(CommandError, match="Operation cancelled: nothing was cleared"):
        call_command("clear_queue", backend_alias=alias, queue=queue, stdout=out)
    assert "This will delete 2 queued task(s)" in out.getvalue()
    assert counts(broker, queue)["ready"] == 2
    monkeypatch.setattr(builtins, "input", answer("yes"))
    out = io.StringIO()
    call_command("clear_queue", backend_alias=alias, queue=queue, stdout=out)
    assert "Cleared 2 queued task(s)" in out.getvalue()
    assert counts(broker, queue)["ready"] == 0
    assert len(prompts) == 2 and "Type 'yes'" in prompts[0]


def test_clear_queue_prompt_subprocess(alias, broker, queue):
    """The real prompt, answered on stdin."""
    import subprocess

    enqueue(alias, queue, 2)
    args = [
        PYTHON,
        "-m",
        "django",
        "clear_queue",
        "--backend-alias",
        alias,
        "--queue",
        queue,
        "--skip-checks",
    ]
    done = subprocess.run(
        args,
        input="yes\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        env=subprocess_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "Are you sure? Type 'yes' to continue:" in done.stdout
    assert "Cleared 2 queued task(s)" in done.stdout
    assert counts(broker, queue)["ready"] == 0


def test_clear_queue_failed_and_all_queues(alias, broker, queue):
    make_dead(alias, broker, queue, 2)
    enqueue(alias, queue, 1)
    other = queue + "y"
    make_dead(alias, broker, other, 1)
    out = io.StringIO()
    call_command(
        "clear_queue", backend_alias=alias, queue=queue, failed=True, force=True, stdout=out
    )
    assert "Cleared 2 failed task(s)" in out.getvalue()
    assert counts(broker, queue) == {"ready": 1, "delayed": 0, "inflight": 0, "dead": 0}
    assert counts(broker, other)["dead"] == 1
    # --failed without --queue: every queue's dead-letter queue
    call_command("clear_queue", backend_alias=alias, failed=True, force=True, stdout=io.StringIO())
    assert counts(broker, other)["dead"] == 0
    # --all-queues: the queued tasks of every queue
    enqueue(alias, other, 2)
    call_command(
        "clear_queue", backend_alias=alias, all_queues=True, force=True, stdout=io.StringIO()
    )
    assert counts(broker, queue)["ready"] == 0
    assert counts(broker, other)["ready"] == 0


def test_clear_queue_unknown_backend():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not found"):
        call_command("clear_queue", backend_alias="nope", force=True, stdout=io.StringIO())


# ---- benchmark_vtasks ----------------------------------------------------------------------------
@pytest.mark.parametrize("task_type", ["noop", "sleep"])
def test_benchmark_small_run(alias, broker, queue, task_type):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "benchmark_vtasks",
        backend_alias=alias,
        queue=queue,
        count=60,
        concurrency=8,
        task_type=task_type,
        sleep=0.001,
        payload_size=100,
        stdout=out,
        stderr=err,
    )
    text = out.getvalue()
    assert re.search(r"Enqueue rate: [\d,]+ tasks/s", text), text
    assert re.search(r"Process rate: [\d,]+ tasks/s", text), text
    assert "60 ok, 0 failed" in text
    assert "60/60" in err.getvalue()  # the progress bar reached the end
    assert counts(broker, queue) == {"ready": 0, "delayed": 0, "inflight": 0, "dead": 0}


def test_benchmark_batch_enqueue(alias, broker, queue):
    out = io.StringIO()
    call_command(
        "benchmark_vtasks",
        backend_alias=alias,
        queue=queue,
        count=100,
        concurrency=10,
        batch=25,
        no_progress=True,
        stdout=out,
        stderr=io.StringIO(),
    )
    assert "enqueue_many x25" in out.getvalue()
    assert "100 ok, 0 failed" in out.getvalue()


# ---- vtasks_valkey -------------------------------------------------------------------------------
def _module_or_skip() -> str:
    from tests.vtasks_servers import module_path

    path = module_path()
    if not Path(path).exists():
        pytest.skip(f"{path} missing (cargo build --release -p vtasks-module)")
    return path


def test_vtasks_valkey_starts_a_server_with_the_module(procs, tmp_path):
    import valkey

    module = _module_or_skip()
    port = free_port()
    p = procs(
        [PYTHON, "-m", "django", "vtasks_valkey", "--port", str(port)],
        tmp_path / "vtasks_valkey.log",
        env=subprocess_env({"VTASKS_MODULE_PATH": module}),
    )
    url = wait_for(
        lambda: re.search(r"^BROKER_URL=(\S+)$", p.output(), re.M),
        timeout=20,
        message=f"BROKER_URL line in\n{p.output()}",
    ).group(1)
    assert url == f"valkey://127.0.0.1:{port}/0"
    assert f"--loadmodule {Path(module).resolve()}" in p.output()
    client = valkey.Valkey.from_url(url)
    assert client.ping()
    info = client.execute_command("VT.INFO", "vt:{x}")
    assert b"ready" in info or "ready" in info
    assert p.terminate() == 0, p.output()
    with pytest.raises(valkey.ConnectionError):
        valkey.Valkey.from_url(url, socket_connect_timeout=1).ping()
    assert "valkey-server stopped." in p.output()


def test_vtasks_valkey_explains_a_missing_module(tmp_path):
    import subprocess

    done = subprocess.run(
        [PYTHON, "-m", "django", "vtasks_valkey", "--module", str(tmp_path / "nope.so")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
        env=subprocess_env(),
    )
    assert done.returncode != 0
    assert "no such file" in done.stderr
    done = subprocess.run(
        [PYTHON, "-m", "django", "vtasks_valkey"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=subprocess_env({"VTASKS_MODULE_PATH": str(tmp_path / "missing.so")}),
    )
    assert done.returncode != 0
    assert "cargo build --release -p vtasks-module" in done.stderr


# ---- admin ---------------------------------------------------------------------------------------
def _changelist(client, model, alias, queue):
    return client.get(f"/admin/django_vtasks/{model}/", {"backend": alias, "queue": queue})


def test_admin_pages_render_tasks(alias, broker, queue, superuser_client):
    client = superuser_client
    queued = enqueue(alias, queue, 2)
    dead = make_dead(alias, broker, queue + "d", 1)[0]
    index = client.get("/admin/")
    assert index.status_code == 200
    for name in (b"Queued tasks", b"Running tasks", b"Failed tasks"):
        assert name in index.content

    r = _changelist(client, "queuedtask", alias, queue)
    assert r.status_code == 200
    body = r.content.decode()
    for tid in queued:
        assert tid in body
    assert "tests.testapp.tasks.add" in body
    assert f"Queued tasks in {queue} (2)" in body

    r = _changelist(client, "failedtask", alias, queue + "d")
    assert r.status_code == 200
    assert dead in r.content.decode()
    assert "RuntimeError: boom" in r.content.decode()

    # running: lease one task
    got = broker.fetch([queue], "admin-worker", 1, 60_000)
    r = _changelist(client, "runningtask", alias, queue)
    assert r.status_code == 200
    assert got[0].id in r.content.decode() and "admin-worker" in r.content.decode()

    # the detail page
    r = client.get(f"/admin/django_vtasks/failedtask/{alias}/{queue}d/{dead}/")
    assert r.status_code == 200
    body = r.content.decode()
    assert "traceback..." in body and "&quot;func&quot;: &quot;tests.testapp.tasks.add" in body
    assert "Retry this task" in body


def test_admin_retry_and_delete_actions(alias, broker, queue, superuser_client):
    client = superuser_client
    dead = make_dead(alias, broker, queue, 3)
    url = f"/admin/django_vtasks/failedtask/?backend={alias}&queue={queue}"
    r = client.post(
        url, {"action": "retry", "_selected_action": dead[:2], "backend": alias, "queue": queue}
    )
    assert r.status_code == 302
    assert counts(broker, queue) == {"ready": 2, "delayed": 0, "inflight": 0, "dead": 1}
    assert "2 task(s)" in client.get(r["Location"]).content.decode()
    # delete the remaining dead task from the failed page
    r = client.post(url, {"action": "delete", "_selected_action": [dead[2]]})
    assert r.status_code == 302
    assert counts(broker, queue)["dead"] == 0
    # delete one queued task from the queued page
    r = client.post(
        f"/admin/django_vtasks/queuedtask/?backend={alias}&queue={queue}",
        {"action": "delete", "_selected_action": [dead[0]]},
    )
    assert r.status_code == 302
    assert counts(broker, queue)["ready"] == 1
    assert broker.get(queue, dead[0]) is None
    # retry is not an action of the queued page
    r = client.post(
        f"/admin/django_vtasks/queuedtask/?backend={alias}&queue={queue}",
        {"action": "retry", "_selected_action": [dead[1]]},
    )
    assert counts(broker, queue)["ready"] == 1
    # "all in queue": delete every queued task
    enqueue(alias, queue, 4)
    r = client.post(
        f"/admin/django_vtasks/queuedtask/?backend={alias}&queue={queue}",
        {"action": "delete", "select_across": "1"},
    )
    assert counts(broker, queue)["ready"] == 0


def test_admin_needs_staff(alias, admin_stack, client, queue):
    r = client.get("/admin/django_vtasks/queuedtask/")
    assert r.status_code == 302 and "/login/" in r["Location"]


# ---- embedded worker under a real ASGI server ----------------------------------------------------
def test_worker_application_under_uvicorn(alias, backend, broker, queue, procs, tmp_path, out):
    port = free_port()
    worker_id = f"asgi-{uuid.uuid4().hex[:6]}"
    env = subprocess_env(
        {
            "VTASKS_TOOLS_ALIAS": alias,
            "VTASKS_TOOLS_QUEUE": queue,
            "VTASKS_TOOLS_WORKER_ID": worker_id,
        }
    )
    server = procs(
        [
            PYTHON,
            "-m",
            "uvicorn",
            "tests.tools_asgi:application",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--lifespan",
            "on",
            "--log-level",
            "info",
        ],
        tmp_path / "uvicorn.log",
        env=env,
    )
    wait_for(
        lambda: "Application startup complete" in server.output(),
        timeout=30,
        message=f"uvicorn startup\n{server.output()}",
    )
    # HTTP still goes to Django (404 from the empty test urlconf is fine: it is Django answering)
    import urllib.error
    import urllib.request

    try:
        status = urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=10).status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status in (200, 404, 500)  # Django answered (tests.settings has no ROOT_URLCONF)

    r = record.using(backend=alias, queue_name=queue).enqueue(out, "embedded")
    wait_for(
        lambda: "embedded" in read_lines(out),
        timeout=20,
        message=f"the embedded worker to run the task\n{server.output()}",
    )
    wait_for(
        lambda: backend.get_result(r.id).status == "SUCCESSFUL",
        timeout=10,
        message="a SUCCESSFUL result",
    )
    assert backend.get_result(r.id).worker_ids == [worker_id]

    # drain on shutdown: a task still running when SIGTERM arrives finishes and is acked
    slow = sleep_record.using(backend=alias, queue_name=queue).enqueue(out, "slow", 1.5)
    wait_for(lambda: "start slow" in read_lines(out), timeout=20, message="the slow task to start")
    assert server.terminate(timeout=30) in (0, -signal.SIGTERM), server.output()
    assert "done slow" in read_lines(out), server.output()
    assert backend.get_result(slow.id).status == "SUCCESSFUL"
    assert counts(broker, queue) == {"ready": 0, "delayed": 0, "inflight": 0, "dead": 0}
    log = server.output()
    assert "Application shutdown complete" in log
    assert "embedded vtasks worker stopped (2 processed, 0 failed)" in log, log
