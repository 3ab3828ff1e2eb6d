"""The admin in a real browser: Debian's chromium, headless, driven by Playwright, against
runserver and a real worker (Valkey). Logs in as staff, opens the dashboard and the queued /
running / failed lists, opens a failed task, retries it and watches it succeed. Any console error,
failed request or HTTP error fails the test. Screenshots: $VTASKS_ARTIFACTS_DIR/dashboard (default:
the test's tmp_path)."""

import os
import re
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from django_vtasks import activity
from tests.conftest import schedule_env, wait_for
from tests.testapp.ops_tasks import fails_unless, gated
from tests.testapp.tasks import add
from tests.tools_helpers import PYTHON, free_port, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def succeeded_in(page) -> int:
    """Tasks succeeded in the last 30 minutes, from the dashboard's heading (Valkey backend)."""
    heading = page.locator("#backend-valkey h2:has-text('Last 30 minutes')").inner_text()
    return int(re.search(r"(\d+) succeeded", heading).group(1))


@pytest.mark.parametrize("alias", ["valkey"], indirect=True)
def test_dashboard_and_retry_in_a_browser(
    alias, backend, broker, queue, workers, tmp_path, out, monkeypatch, admin_stack, procs
):
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"{CHROMIUM} missing: scripts/setup installs Debian's chromium (apt-get "
            f"install chromium, as root); it could not be installed here"
        )
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("VTASKS_ARTIFACTS_DIR") or tmp_path) / "dashboard"
    shots.mkdir(parents=True, exist_ok=True)
    from django.contrib.auth import get_user_model

    name = f"staff-{uuid.uuid4().hex[:8]}"
    get_user_model().objects.create_superuser(name, f"{name}@example.com", "pw-browser")

    # a worker (reports itself to the dashboard) with a schedule on the queue
    env = schedule_env(
        {
            "nightly": {
                "task": "tests.testapp.tasks.add",
                "cron": "0 3 * * *",
                "args": [1, 2],
                "queue": queue,
            }
        }
    )
    env["VTASKS_TEST_ACTIVITY_INTERVAL"] = "0.5"  # throughput samples every second
    started = time.time()
    worker = workers([queue], concurrency=2, scheduler=True, env=env)
    # one task of each kind: failed (until `flag` exists), running (until `gate`), delayed
    flag, gate = tmp_path / "flag", tmp_path / "gate"
    failed = fails_unless.using(backend=alias, queue_name=queue).enqueue(str(flag))
    gated.using(backend=alias, queue_name=queue).enqueue(out, str(gate), "held")
    add.using(
        backend=alias, queue_name=queue, run_after=timezone.now() + timedelta(hours=1)
    ).enqueue(2, 3)
    wait_for(
        lambda: (broker.info(queue)["dead"], broker.info(queue)["inflight"]) == (1, 1),
        timeout=60,
        message=f"a failed and a running task\n{worker.output()}",
    )

    port = free_port()
    server = procs(
        [PYTHON, "-m", "django", "runserver", "--noreload", "--insecure", f"127.0.0.1:{port}"],
        tmp_path / "runserver.log",
        env=subprocess_env({"DJANGO_SETTINGS_MODULE": "tests.ops_settings"}),
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(
        lambda: "Quit the server" in server.output(),
        timeout=60,
        message=f"runserver\n{server.output()}",
    )

    problems: list[str] = []
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's loop runs here
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: (
                    m.type == "error" and problems.append(f"console error: {m.text} ({m.location})")
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}")
            )
            page.on(
                "response",
                lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"),
            )
            page.set_default_timeout(30_000)

            def shot(label):
                # screenshots are artifacts, not assertions: a headless compositor starved of CPU
                # sometimes cannot capture ("Unable to capture screenshot"); retry, then note it
                for attempt in range(3):
                    try:
                        page.screenshot(path=str(shots / f"{label}.png"))
                        return
                    except Exception as e:  # playwright's Error
                        print(f"screenshot {label} not taken (attempt {attempt + 1}): {e}")
                        if page.is_closed():
                            return  # the next step reports what closed it
                        time.sleep(0.5)

            page.goto(f"{base}/admin/login/?next=/admin/")
            page.fill("#id_username", name)
            page.fill("#id_password", "pw-browser")
            page.click("input[type=submit]")
            page.wait_for_url(f"{base}/admin/")
            # styled: the admin's stylesheet loaded (static files are served)
            assert page.evaluate(
                "getComputedStyle(document.querySelector('#header')).backgroundColor"
            ) not in ("", "rgba(0, 0, 0, 0)")
            shot("01-index")

            page.click("a[href='/admin/django_vtasks/dashboard/']")
            page.wait_for_url("**/admin/django_vtasks/dashboard/")
            row = page.locator(f"#backend-{alias} table.vtasks-queues tr[data-queue='{queue}']")
            row.wait_for()
            cells = row.locator("td.num").all_inner_texts()
            assert cells[:4] == ["0", "1", "1", "1"], cells  # ready, delayed, in flight, failed
            assert page.locator(f"#backend-{alias} svg.vtasks-chart").count() == 2
            schedules = page.locator(f"#backend-{alias} table.vtasks-schedules").inner_text()
            assert "nightly" in schedules and "tests.testapp.tasks.add" in schedules
            # the worker's first report (written when it starts)
            wait_for(
                lambda: (
                    worker.worker_id
                    in (broker.get_result("vtasks:activity:workers") or b"").decode()
                ),
                timeout=60,
                message="the worker's activity report",
            )
            # ... and a throughput sample of this worker (earlier tests' workers are gone)
            wait_for(
                lambda: activity.samples(broker)[-1]["t"] > started,
                timeout=60,
                message="a throughput sample",
            )
            page.reload()
            row.wait_for()
            assert (
                worker.worker_id
                in page.locator(f"#backend-{alias} table.vtasks-workers").inner_text()
            )
            # successes of the last 30 minutes so far (earlier tests may have some)
            succeeded_before = succeeded_in(page)
            shot("02-dashboard")

            row = page.locator(f"#backend-{alias} table.vtasks-queues tr[data-queue='{queue}']")
            row.locator(f"a[title='delayed tasks of {queue}']").click()
            page.wait_for_url("**/queuedtask/?*")
            assert "tests.testapp.tasks.add" in page.locator("#result_list").inner_text()
            shot("03-queued")
            page.go_back()
            page.wait_for_url("**/dashboard/")
            row.locator(f"a[title='running tasks of {queue}']").click()
            page.wait_for_url("**/runningtask/?*")
            running = page.locator("#result_list").inner_text()
            assert "tests.testapp.ops_tasks.gated" in running and worker.worker_id in running
            shot("04-running")
            page.go_back()
            page.wait_for_url("**/dashboard/")
            row.locator(f"a[title='failed tasks of {queue}']").click()
            page.wait_for_url("**/failedtask/?*")
            assert "does not exist yet" in page.locator("#result_list").inner_text()
            shot("05-failed")

            page.click(f"#result_list a:has-text('{failed.id}')")
            page.wait_for_url(f"**/{failed.id}/")
            assert "RuntimeError" in page.locator("pre.vtasks-error").inner_text()
            shot("06-failed-task")
            flag.touch()  # the retry succeeds
            page.click("button[value=retry]")
            page.wait_for_url("**/failedtask/?*")
            assert "1 task(s)" in page.locator("ul.messagelist").inner_text()
            shot("07-retried")
            wait_for(
                lambda: backend.get_result(failed.id).status == "SUCCESSFUL",
                timeout=60,
                message=f"the retried task to succeed\n{worker.output()}",
            )
            page.goto(f"{base}/admin/django_vtasks/dashboard/")
            row = page.locator(f"#backend-{alias} table.vtasks-queues tr[data-queue='{queue}']")
            row.wait_for()
            cells = row.locator("td.num").all_inner_texts()
            assert cells[3] == "0" and cells[5] == "1", cells  # no failed task, 1 succeeded
            # the chart of the last minutes shows the success (samples every second)
            section = page.locator(f"#backend-{alias}")
            for _ in range(60):
                if succeeded_in(page) > succeeded_before:
                    break
                page.wait_for_timeout(500)
                page.reload()
            assert succeeded_in(page) == succeeded_before + 1
            assert section.locator("svg.vtasks-chart title:text-matches('^succeeded: 1 ')").count()
            shot("08-dashboard-after-retry")
        except BaseException:
            shot("failure")
            (shots / "failure.html").write_text(page.content())
            raise
        finally:
            browser.close()
    gate.touch()
    assert not problems, "\n".join(problems)
    assert list(shots.glob("*.png")), "no screenshot could be taken"
    print(f"screenshots: {shots}")
    assert re.search(r"GET /admin/django_vtasks/dashboard/ HTTP/1.1\" 200", server.output())


def test_activity_rates_per_interval():
    found = [
        {"t": 100.0, "c": [10, 2, 1]},
        {"t": 110.0, "c": [25, 3, 1]},
        {"t": 130.0, "c": [5, 3, 4]},
    ]  # acked went down: a queue was deleted
    assert activity.rates(found) == [
        {"t": 110.0, "seconds": 10.0, "succeeded": 15, "failed": 1, "retried": 0},
        {"t": 130.0, "seconds": 20.0, "succeeded": 0, "failed": 0, "retried": 3},
    ]
