"""The Django backend and a real worker run as the least-privilege Valkey users of PROTOCOL.md
(section ACL): each can do its job, and a user without the right is refused by the server."""

import os
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import valkey
from django.tasks import TaskResultStatus
from django.test import override_settings

from django_vtasks.backends.valkey import AccessDenied
from django_vtasks.broker import BrokerError
from tests.conftest import WorkerProc, read_lines, schedule_env, wait_for
from tests.testapp import tasks as t

pytestmark = pytest.mark.django_db(transaction=True)

PROTOCOL = Path(__file__).resolve().parents[2] / "PROTOCOL.md"


def documented_users(prefix: str) -> dict[str, list[str]]:
    """The ACL SETUSER lines of PROTOCOL.md, with its key prefix `vt:` replaced by ours."""
    block = re.search(
        r"<!-- acl-users: begin -->\n```\n(.*?)```", PROTOCOL.read_text(), re.S
    ).group(1)
    users = {}
    for line in block.strip().splitlines():
        words = line.split()
        users[words[2]] = [w.replace("~vt:*", f"~{prefix}*") for w in words[3:]]
    return users


@pytest.fixture
def role_urls(settings):
    url = os.environ.get("VTASKS_TEST_VALKEY_URL")
    if not url:
        pytest.skip("Valkey module not built")
    admin = valkey.Valkey.from_url(url)
    users = documented_users(settings.VTASKS_VALKEY_PREFIX.rstrip(":") + ":")
    u = urlparse(url)
    out = {}
    for name, rules in users.items():
        admin.execute_command("ACL", "SETUSER", name, *rules)
        password = next(r[1:] for r in rules if r.startswith(">"))
        out[name.removeprefix("vt-")] = f"valkey://{name}:{password}@{u.hostname}:{u.port}{u.path}"
    yield out
    for name in users:
        admin.execute_command("ACL", "DELUSER", name)
    admin.close()


def as_user(settings, url):
    tasks = dict(settings.TASKS)
    tasks["valkey"] = {
        **tasks["valkey"],
        "OPTIONS": {**tasks["valkey"]["OPTIONS"], "BROKER_URL": url},
    }
    return override_settings(TASKS=tasks)


def test_producer_and_worker_users_run_tasks_end_to_end(settings, role_urls, queue, tmp_path):
    out = str(tmp_path / "out.txt")
    env = {
        "VTASKS_TEST_VALKEY_URL": role_urls["worker"],
        **schedule_env(
            {
                "tick": {
                    "task": "tests.testapp.tasks.record",
                    "every": 1,
                    "queue": queue,
                    "args": [out, "tick"],
                }
            }
        ),
    }
    w = WorkerProc("valkey", [queue], tmp_path, scheduler=True, env=env)
    try:
        with as_user(settings, role_urls["producer"]):
            from django.tasks import task_backends

            backend = task_backends["valkey"]
            ok = t.add.using(backend="valkey", queue_name=queue).enqueue(2, 3)
            bad = t.fail.using(backend="valkey", queue_name=queue).enqueue("boom")
            done = wait_for(
                lambda: (r := backend.get_result(ok.id)).is_finished and r,
                timeout=60,
                message="the worker user ran the producer user's task",
            )
            assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 5
            failed = wait_for(
                lambda: (r := backend.get_result(bad.id)).is_finished and r, timeout=60
            )
            assert failed.status == TaskResultStatus.FAILED
            # the scheduler (VT.QUEUES + VT.SCHEDULE as the worker user) fires its entry
            wait_for(lambda: "tick" in read_lines(out), timeout=60, message="a schedule tick")
            # the producer may not do a worker's or an operator's job
            with pytest.raises(AccessDenied):
                backend.broker.fetch([queue], "intruder", 1)
            with pytest.raises(AccessDenied):
                backend.broker.clear(queue, "all")
        assert w.proc.poll() is None, w.output()
        assert "NOPERM" not in w.output(), w.output()
    finally:
        assert w.stop() == 0


def test_worker_user_cannot_clear_and_dashboard_user_cannot_write(settings, role_urls, queue):
    with as_user(settings, role_urls["worker"]):
        from django.tasks import task_backends

        broker = task_backends["valkey"].broker
        t.add.using(backend="valkey", queue_name=queue).enqueue(1, 1)
        assert broker.info(queue)["ready"] == 1
        with pytest.raises(AccessDenied):
            broker.clear(queue, "all")
        with pytest.raises(AccessDenied):
            broker.delete(queue, ["x"])
    with as_user(settings, role_urls["dashboard"]):
        from django.tasks import task_backends

        broker = task_backends["valkey"].broker
        assert queue in broker.queues()
        assert len(broker.peek(queue, "ready", count=10)) == 1
        with pytest.raises(BrokerError, match="no permissions to run the 'vt.enqueue' command"):
            t.add.using(backend="valkey", queue_name=queue).enqueue(1, 1)
        with pytest.raises(AccessDenied):
            broker.retry_dead(queue, None)
    with as_user(settings, role_urls["operator"]):
        from django.tasks import task_backends

        assert task_backends["valkey"].broker.clear(queue, "all") == 1
