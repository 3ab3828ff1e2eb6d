"""The admin pages under Django's permissions, against the real brokers: staff users get exactly
what their view/change/delete permissions on queued, running and failed tasks allow, retries and
deletions are logged (LogEntry), and queue names and task ids with ``/`` work."""

import re
import uuid

import pytest

from tests.conftest import wait_for
from tests.testapp.tasks import add

pytestmark = pytest.mark.django_db(transaction=True)

ADMIN = "/admin/django_vtasks"


def staff_client(client, *codenames):
    """The test client logged in as a staff user holding exactly these vtasks permissions."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    name = f"staff-{uuid.uuid4().hex[:8]}"
    user = get_user_model().objects.create_user(name, password="pw", is_staff=True)
    perms = list(
        Permission.objects.filter(content_type__app_label="django_vtasks", codename__in=codenames)
    )
    assert sorted(p.codename for p in perms) == sorted(codenames)
    user.user_permissions.set(perms)
    client.force_login(user)
    return client, user


def queued_and_dead(alias, broker, queue, dead_id=None):
    """(a queued task id, a dead task id) on ``queue``; the dead one gets ``dead_id`` if given."""
    t = add.using(backend=alias, queue_name=queue)
    if dead_id is None:
        dead_id = t.enqueue(3, 4).id
    else:  # a client-chosen id: the broker's own enqueue, with a real task's payload
        from django_vtasks.broker import EnqueueRequest

        src = add.using(backend=alias, queue_name=f"{queue}-src").enqueue(3, 4).id
        payload = broker.get(f"{queue}-src", src).payload
        assert broker.enqueue([EnqueueRequest(queue, dead_id, payload)]) == [dead_id]
    got = wait_for(lambda: broker.fetch([queue], "perm-test", 1, 30_000) or None, message="fetch")
    assert [d.id for d in got] == [dead_id]
    assert broker.fail(queue, dead_id, got[0].token, "RuntimeError: boom") == "dead"
    return t.enqueue(1, 2).id, dead_id


def page(client, model, alias, queue, **extra):
    return client.get(f"{ADMIN}/{model}/", {"backend": alias, "queue": queue, **extra})


def post(client, model, alias, queue, action, ids=(), **extra):
    return client.post(
        f"{ADMIN}/{model}/?backend={alias}&queue={queue}",
        {"action": action, "_selected_action": list(ids), **extra},
    )


def states(broker, queue, *ids):
    return [(r.state if (r := broker.get(queue, i)) else None) for i in ids]


def log_entries(user, **filters):
    from django.contrib.admin.models import LogEntry

    return list(LogEntry.objects.filter(user=user, **filters).order_by("id"))


def test_migrate_creates_the_task_permissions(admin_stack):
    from django.contrib.auth.models import Permission

    got = set(
        Permission.objects.filter(content_type__app_label="django_vtasks").values_list(
            "codename", flat=True
        )
    )
    assert got == {
        "view_queuedtask",
        "change_queuedtask",
        "delete_queuedtask",
        "view_runningtask",
        "change_runningtask",
        "view_failedtask",
        "change_failedtask",
        "delete_failedtask",
        "view_schedule",
        "change_schedule",
    }


def test_view_failed_only(alias, broker, queue, admin_stack, client):
    client, _ = staff_client(client, "view_failedtask")
    queued, dead = queued_and_dead(alias, broker, queue)

    r = page(client, "failedtask", alias, queue)
    assert r.status_code == 200
    body = r.content.decode()
    assert dead in body and "RuntimeError: boom" in body
    assert "Delete selected tasks" not in body and "Retry selected tasks" not in body
    assert page(client, "queuedtask", alias, queue).status_code == 403
    assert page(client, "runningtask", alias, queue).status_code == 403

    # no action without its permission, even posted by hand
    assert post(client, "failedtask", alias, queue, "retry", [dead]).status_code == 403
    assert post(client, "failedtask", alias, queue, "delete", [dead]).status_code == 403
    assert post(client, "queuedtask", alias, queue, "delete", [queued]).status_code == 403
    assert states(broker, queue, queued, dead) == ["ready", "dead"]

    # the detail of a failed task, without buttons; a queued task's detail is not theirs to see
    # (whichever list's URL is used)
    r = client.get(f"{ADMIN}/failedtask/{alias}/{queue}/{dead}/")
    assert r.status_code == 200 and dead in r.content.decode()
    assert "Retry this task" not in r.content.decode()
    assert "Delete this task" not in r.content.decode()
    assert client.get(f"{ADMIN}/failedtask/{alias}/{queue}/{queued}/").status_code == 403
    assert client.get(f"{ADMIN}/queuedtask/{alias}/{queue}/{queued}/").status_code == 403

    # the index lists what they may open; the dashboard opens and links only to failed lists
    index = client.get("/admin/").content.decode()
    assert "Failed tasks" in index and "Dashboard" in index
    assert "Queued tasks" not in index and "Running tasks" not in index
    r = client.get(f"{ADMIN}/dashboard/")
    assert r.status_code == 200
    assert f"{ADMIN}/failedtask/?" in r.content.decode()
    assert f"{ADMIN}/queuedtask/?" not in r.content.decode()


def test_no_vtasks_permission_no_page(admin_stack, client):
    client, _ = staff_client(client)
    for model in ("queuedtask", "runningtask", "failedtask", "dashboard", "schedule"):
        assert client.get(f"{ADMIN}/{model}/").status_code == 403, model


def test_delete_failed_but_not_queued(alias, broker, queue, admin_stack, client):
    from django.contrib.admin.models import DELETION

    client, user = staff_client(client, "view_failedtask", "delete_failedtask", "view_queuedtask")
    queued, dead = queued_and_dead(alias, broker, queue)
    # the queued page shows, but deleting there needs delete_queuedtask
    r = page(client, "queuedtask", alias, queue)
    assert r.status_code == 200 and queued in r.content.decode()
    assert "Delete selected tasks" not in r.content.decode()
    assert post(client, "queuedtask", alias, queue, "delete", [queued]).status_code == 403
    assert post(client, "queuedtask", alias, queue, "delete", select_across="1").status_code == 403
    # a queued id slipped into the failed page's delete is left alone
    r = post(client, "failedtask", alias, queue, "delete", [dead, queued])
    assert r.status_code == 302
    assert states(broker, queue, queued, dead) == ["ready", None]
    assert "1 selected task(s) are not failed tasks" in client.get(r["Location"]).content.decode()
    # retry needs change_failedtask
    assert post(client, "failedtask", alias, queue, "retry", [dead]).status_code == 403

    entries = log_entries(user)
    assert [(e.object_id, e.action_flag, e.content_type.model) for e in entries] == [
        (dead, DELETION, "failedtask")
    ]
    assert dead in entries[0].change_message and repr(queue) in entries[0].change_message
    assert alias in entries[0].change_message


def test_retry_and_delete_are_logged(alias, broker, queue, admin_stack, client):
    from django.contrib.admin.models import CHANGE, DELETION

    client, user = staff_client(client, "change_failedtask", "view_queuedtask", "delete_queuedtask")
    queued, dead = queued_and_dead(alias, broker, queue)
    # change implies view (the Django admin's rule): the detail offers retry, not delete
    r = client.get(f"{ADMIN}/failedtask/{alias}/{queue}/{dead}/")
    assert r.status_code == 200
    assert "Retry this task" in r.content.decode()
    assert "Delete this task" not in r.content.decode()
    assert post(client, "failedtask", alias, queue, "retry", [dead]).status_code == 302
    assert states(broker, queue, dead) == ["ready"]
    assert post(client, "queuedtask", alias, queue, "delete", [queued]).status_code == 302
    assert states(broker, queue, queued, dead) == [None, "ready"]
    assert post(client, "queuedtask", alias, queue, "delete", select_across="1").status_code == 302
    assert states(broker, queue, dead) == [None]

    entries = [
        (e.object_id, e.action_flag, e.content_type.model, e.change_message)
        for e in log_entries(user)
    ]
    assert entries == [
        (
            dead,
            CHANGE,
            "failedtask",
            f"Retried failed task {dead} of queue {queue!r} (backend {alias!r}).",
        ),
        (
            queued,
            DELETION,
            "queuedtask",
            f"Deleted queued task {queued} of queue {queue!r} (backend {alias!r}).",
        ),
        (
            None,
            DELETION,
            "queuedtask",
            f"Deleted all 1 queued tasks of queue {queue!r} (backend {alias!r}).",
        ),
    ]
    # the admin's "recent actions" renders them
    assert f"queued task {queued}" in client.get("/admin/").content.decode()


def test_superuser_sees_everything(alias, broker, queue, superuser_client):
    client = superuser_client
    queued, dead = queued_and_dead(alias, broker, queue)
    index = client.get("/admin/").content.decode()
    for name in ("Queued tasks", "Running tasks", "Failed tasks", "Dashboard"):
        assert name in index
    for model in ("queuedtask", "runningtask", "failedtask"):
        assert page(client, model, alias, queue).status_code == 200
    r = client.get(f"{ADMIN}/dashboard/")
    assert r.status_code == 200
    for model in ("queuedtask", "runningtask", "failedtask"):
        assert f"{ADMIN}/{model}/?" in r.content.decode()
    r = client.get(f"{ADMIN}/failedtask/{alias}/{queue}/{dead}/")
    assert "Retry this task" in r.content.decode() and "Delete this task" in r.content.decode()
    r = client.get(f"{ADMIN}/queuedtask/{alias}/{queue}/{queued}/")
    assert "Delete this task" in r.content.decode()
    assert "Retry selected tasks" in page(client, "failedtask", alias, queue).content.decode()


def test_slash_in_queue_name_and_task_id(alias, broker, queue, superuser_client):
    client = superuser_client
    queue = f"{queue}/a/b"
    dead_id = f"job/{uuid.uuid4().hex[:8]}/x_2F"
    queued, dead = queued_and_dead(alias, broker, queue, dead_id=dead_id)

    r = page(client, "failedtask", alias, queue)
    assert r.status_code == 200
    links = re.findall(r'href="(/admin/django_vtasks/failedtask/[^"?]+)"', r.content.decode())
    assert len(links) == 1
    r = client.get(links[0])  # the detail, reached through the list's own link
    assert r.status_code == 200
    body = r.content.decode()
    assert dead_id in body and "RuntimeError: boom" in body

    r = page(client, "queuedtask", alias, queue)
    assert r.status_code == 200 and queued in r.content.decode()
    links = re.findall(r'href="(/admin/django_vtasks/queuedtask/[^"?]+)"', r.content.decode())
    assert len(links) == 1 and client.get(links[0]).status_code == 200

    r = client.get(f"{ADMIN}/dashboard/")
    assert r.status_code == 200 and queue in r.content.decode()

    assert post(client, "failedtask", alias, queue, "retry", [dead_id]).status_code == 302
    assert states(broker, queue, dead_id) == ["ready"]
    assert post(client, "queuedtask", alias, queue, "delete", [dead_id]).status_code == 302
    assert states(broker, queue, dead_id, queued) == [None, "ready"]


def test_cancel_needs_change_and_is_logged(alias, broker, backend, queue, admin_stack, client):
    """*Cancel* on the queued page fails a waiting task at once (its result reads FAILED,
    TaskCancelled); on the running page it flags the task. It needs the change permission."""
    from django.contrib.admin.models import CHANGE

    client, user = staff_client(client, "view_queuedtask", "change_runningtask")
    t = add.using(backend=alias, queue_name=queue)
    queued = t.enqueue(1, 2).id
    running = t.enqueue(3, 4).id
    got = broker.fetch([queue], "admin-test", 1, 60_000)
    assert [d.id for d in got] == [queued]
    queued, running = running, queued  # the first one is in flight now
    r = page(client, "queuedtask", alias, queue)
    assert "Cancel selected tasks" not in r.content.decode()  # view only
    assert post(client, "queuedtask", alias, queue, "cancel", [queued]).status_code == 403
    assert states(broker, queue, queued) == ["ready"]
    r = client.get(f"{ADMIN}/runningtask/{alias}/{queue}/{running}/")
    assert "Cancel this task" in r.content.decode()
    r = post(client, "runningtask", alias, queue, "cancel", [running])
    assert r.status_code == 302
    assert "1 running task(s) asked to stop" in client.get(r["Location"]).content.decode()
    assert broker.extend_cancelled(queue, "admin-test", 60_000) == (0, [running])
    # select-across is refused for cancel, whatever the permission
    client2, user2 = staff_client(client, "change_queuedtask")
    post(client2, "queuedtask", alias, queue, "cancel", select_across="1")
    assert states(broker, queue, queued) == ["ready"]
    r = post(client2, "queuedtask", alias, queue, "cancel", [queued])
    assert r.status_code == 302
    result = backend.get_result(queued)
    assert result.status.name == "FAILED"
    assert result.errors[-1].exception_class_path == "django_vtasks.exceptions.TaskCancelled"
    assert "in the admin" in result.errors[-1].traceback
    assert [(e.object_id, e.action_flag) for e in log_entries(user)] == [(running, CHANGE)]
    assert [(e.object_id, e.action_flag) for e in log_entries(user2)] == [(queued, CHANGE)]


# ---- the schedules page: view lists, change pauses / resumes / runs now ------------------------


def _schedule_on(alias, broker, queue, settings):
    name = f"s-{uuid.uuid4().hex[:6]}"
    settings.VTASKS_SCHEDULE = {
        name: {"task": "tests.testapp.tasks.add", "schedule": 3600, "queue": queue, "args": [1, 2]}
    }
    payload = broker.get(queue, add.using(backend=alias, queue_name=queue).enqueue(1, 2).id).payload
    broker.clear(queue, "ready")
    broker.schedule_set(queue, name, payload, every_ms=3_600_000)
    return name


def test_schedules_page_view_only(alias, broker, queue, admin_stack, client, settings):
    name = _schedule_on(alias, broker, queue, settings)
    client, _ = staff_client(client, "view_schedule")
    r = client.get(f"{ADMIN}/schedule/")
    body = r.content.decode()
    assert r.status_code == 200 and name in body and "active" in body
    assert "Run now" not in body and "Pause" not in body
    form = {"backend": alias, "queue": queue, "name": name}
    for action in ("pause", "run"):
        assert client.post(f"{ADMIN}/schedule/", {**form, "action": action}).status_code == 403
    [s] = broker.schedule_list(queue)
    assert not s.paused and broker.info(queue)["ready"] == 0
    assert client.get(f"{ADMIN}/failedtask/").status_code == 403


def test_schedules_page_pause_run_resume_are_logged(
    alias, broker, queue, admin_stack, client, settings
):
    name = _schedule_on(alias, broker, queue, settings)
    client, user = staff_client(client, "view_schedule", "change_schedule")
    form = {"backend": alias, "queue": queue, "name": name}
    assert "Pause" in client.get(f"{ADMIN}/schedule/").content.decode()
    assert client.post(f"{ADMIN}/schedule/", {**form, "action": "pause"}).status_code == 302
    assert broker.schedule_list(queue)[0].paused
    body = client.get(f"{ADMIN}/schedule/").content.decode()
    assert "paused" in body and "Resume" in body
    assert client.post(f"{ADMIN}/schedule/", {**form, "action": "run"}).status_code == 302
    assert broker.info(queue)["ready"] == 1, "run now enqueues exactly one task"
    assert client.post(f"{ADMIN}/schedule/", {**form, "action": "resume"}).status_code == 302
    assert not broker.schedule_list(queue)[0].paused
    logged = [e.change_message for e in log_entries(user, object_id=name)]
    assert [m.split(" on ")[0] for m in logged] == ["paused", "run now", "resumed"]
    # a schedule that is gone: a warning, nothing enqueued
    r = client.post(f"{ADMIN}/schedule/", {**form, "name": "nope", "action": "run"}, follow=True)
    assert "no longer" in r.content.decode() and broker.info(queue)["ready"] == 1


def test_dashboard_shows_a_paused_schedule(alias, broker, queue, superuser_client, settings):
    name = _schedule_on(alias, broker, queue, settings)
    broker.schedule_pause(queue, name)
    body = superuser_client.get(f"{ADMIN}/dashboard/", {"backend": alias}).content.decode()
    row = re.search(rf"<th>{re.escape(name)}</th>.*?</tr>", body, re.S)
    assert row and "paused" in row.group(0)


def test_dashboard_shows_a_rate_limit(alias, broker, queue, superuser_client):
    add.using(backend=alias, queue_name=queue).enqueue(1, 2)
    broker.rate_limit_set(queue, 30, 1000, 5)
    body = superuser_client.get(f"{ADMIN}/dashboard/", {"backend": alias}).content.decode()
    row = re.search(rf'<tr data-queue="{re.escape(queue)}">.*?</tr>', body, re.S)
    assert row and "rate limit 30/s, burst 5" in row.group(0)


def test_queued_page_lists_a_flows_waiting_tasks_and_delete_takes_what_waits(
    alias, broker, queue, admin_stack, client
):
    from django_vtasks.flows import chain, step

    client, user = staff_client(client, "view_queuedtask", "delete_queuedtask")
    t = add.using(backend=alias, queue_name=queue)
    first, second, third = chain(step(t, 1, 2), step(t, 3), step(t, 4)).enqueue()
    r = page(client, "queuedtask", alias, queue)
    html = r.content.decode()
    assert r.status_code == 200 and all(x.id in html for x in (first, second, third))
    assert html.count(">waiting<") == 2
    detail = client.get(f"{ADMIN}/queuedtask/{alias}/{queue}/{second.id}/")
    assert detail.status_code == 200 and "waiting" in detail.content.decode()
    # deleting a waiting task also removes the task that waits for it
    assert post(client, "queuedtask", alias, queue, "delete", [second.id]).status_code == 302
    assert states(broker, queue, first.id, second.id, third.id) == ["ready", None, None]
