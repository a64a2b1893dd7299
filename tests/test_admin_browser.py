"""The admin in a real browser (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from django_celery_monitor import admin as monitor_admin
from django_celery_monitor.models import TaskState, WorkerState
from tests import tasks
from tests.conftest import REQUIRE_SERVICES, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        message = f"No Chromium at {CHROMIUM}; install it with scripts/services.sh."
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread while the browser is open; the
    # ORM calls of the tests (and the database flush after each) are still synchronous.
    previous = os.environ.get(ASYNC_UNSAFE)
    os.environ[ASYNC_UNSAFE] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            del os.environ[ASYNC_UNSAFE]
        else:
            os.environ[ASYNC_UNSAFE] = previous


@pytest.fixture
def page(browser, live_server, django_user_model, monkeypatch, app):
    # The live server answers in another thread, where the test app is not the current app.
    monkeypatch.setattr(monitor_admin.ModelMonitor, "celery_app", app)
    django_user_model.objects.create_superuser("admin", "admin@example.com", "password")
    context = browser.new_context(viewport={"width": 1680, "height": 1000}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    yield page
    context.close()


def screenshot(page, name):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sample_data():
    now = timezone.now()
    online = WorkerState.objects.create(
        hostname="celery@web-1", last_heartbeat=now, freq=2.0, sw_ident="py-celery",
        sw_ver="5.5.0", sw_sys="Linux", processed=1042, active=2, loadavg=[0.42, 0.38, 0.3],
    )  # fmt: skip
    WorkerState.objects.create(
        hostname="celery@web-2", last_heartbeat=now - timedelta(hours=3), freq=2.0,
        sw_ver="5.5.0", processed=87, active=0, loadavg=[0.0, 0.01, 0.05], offline=True,
    )  # fmt: skip
    rows = [
        ("SUCCESS", "proj.tasks.add", "(2, 3)", "{}", "5", None, 0.004),
        ("FAILURE", "proj.tasks.fail", "('kaput',)", "{'retry': False}", None,
         "ValueError('kaput')", 0.01),
        ("STARTED", "proj.tasks.sleep", "(30,)", "{}", None, None, None),
        ("RECEIVED", "proj.tasks.send_report",
         "({'user_id': 42, 'items': [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]},)",
         "{'format': 'pdf', 'locale': 'en'}", None, None, None),
        ("RETRY", "proj.tasks.fetch", "('https://example.com/feed',)", "{'timeout': 5}", None,
         "ConnectionError('timed out')", 5.0),
        ("REVOKED", "proj.tasks.sleep", "(600,)", "{}", None, None, None),
    ]  # fmt: skip
    created = []
    for n, (state, name, args, kwargs, result, exception, runtime) in enumerate(rows):
        created.append(
            TaskState.objects.create(
                task_id=str(uuid.uuid4()), state=state, name=name, args=args, kwargs=kwargs,
                result=result or exception, exception=exception, runtime=runtime,
                tstamp=now - timedelta(minutes=5 * n),
                received=now - timedelta(minutes=5 * n, seconds=2),
                started=now - timedelta(minutes=5 * n, seconds=1) if state != "RECEIVED" else None,
                worker=online, retries=1 if state == "RETRY" else 0,
                traceback=(
                    "Traceback (most recent call last):\n"
                    '  File "/app/proj/tasks.py", line 12, in fail\n'
                    "    raise ValueError(message)\nValueError: kaput"
                ) if state == "FAILURE" else None,
            )
        )  # fmt: skip
    failed = created[1]
    TaskState.objects.create(
        task_id=str(uuid.uuid4()), state="SUCCESS", name="proj.tasks.cleanup", args="()",
        kwargs="{}", tstamp=now, parent_id=failed.task_id, root_id=failed.task_id,
        worker=online, runtime=0.2,
    )  # fmt: skip
    return failed


def test_browse_tasks_and_workers(page, live_server):
    failed = sample_data()

    page.goto(f"{live_server.url}/admin/")
    page.click("text=Celery Monitor")
    page.click("#content-main a:text-is('Tasks')")
    page.wait_for_selector("#result_list")
    page.click("#toggle-nav-sidebar")  # room for every column
    assert page.title().startswith("Tasks")
    assert page.locator("#result_list tbody tr").count() == 7
    screenshot(page, "task_list")

    page.click("#changelist-filter a:text-is('FAILURE')")
    page.wait_for_url("**state=FAILURE**")
    assert page.locator("#result_list tbody tr").count() == 1
    assert page.locator("#result_list .cm-badge").inner_text() == "FAILURE"

    page.click(f"#result_list a:has(code[title='{failed.task_id}'])")
    page.wait_for_selector(".cm-timeline")
    assert "ValueError: kaput" in page.locator(".cm-traceback").inner_text()
    assert page.locator("text=proj.tasks.cleanup").count() == 1
    screenshot(page, "task_detail")

    page.click("a:text-is('celery@web-1')")
    page.wait_for_selector("text=Tasks of this worker")
    page.goto(f"{live_server.url}/admin/celery_monitor/workerstate/")
    assert page.locator("#result_list .cm-badge-green").inner_text().lower() == "online"
    assert page.locator("#result_list .cm-badge-gray").inner_text().lower() == "offline"
    screenshot(page, "worker_list")

    page.emulate_media(color_scheme="dark")
    page.goto(f"{live_server.url}/admin/celery_monitor/taskstate/")
    screenshot(page, "task_list_dark")


def test_rate_limit_confirmation(page, live_server, redis_url):
    sample_data()

    page.goto(f"{live_server.url}/admin/celery_monitor/taskstate/?name=proj.tasks.sleep")
    page.check("#action-toggle")
    page.select_option("select[name=action]", "rate_limit_tasks")
    page.click("button[name=index]")
    page.wait_for_selector("input[name=rate_limit]")
    screenshot(page, "rate_limit_confirmation")
    page.fill("input[name=rate_limit]", "10/m")
    page.click("input[type=submit].default")
    message = page.locator("ul.messagelist li").inner_text()
    assert message == "Rate limit set to 10/m for 1 task type; no worker answered."


@pytest.mark.e2e
def test_revoke_a_task_waiting_on_a_real_worker(page, live_server, camera, celery_worker):
    worker = celery_worker("browser-1@test")
    result = tasks.sleep.apply_async((1,), countdown=8)
    wait_for(
        lambda: TaskState.objects.filter(task_id=result.id, state="RECEIVED").exists(),
        message="the camera to record the waiting task",
    )

    page.goto(f"{live_server.url}/admin/celery_monitor/taskstate/?q={result.id}")
    page.check("input[name=_selected_action]")
    page.select_option("select[name=action]", "revoke_tasks")
    page.click("button[name=index]")
    message = page.locator("ul.messagelist li").inner_text()
    assert message == "Revoked 1 task; 1 worker acknowledged."

    wait_for(
        lambda: TaskState.objects.filter(task_id=result.id, state="REVOKED").exists(),
        timeout=30,
        message="the task to be revoked",
    )
    page.goto(f"{live_server.url}/admin/celery_monitor/taskstate/?q={result.id}")
    assert page.locator("#result_list .cm-badge").inner_text() == "REVOKED"
    assert worker.hostname in page.locator("#result_list").inner_text()


@pytest.mark.e2e
def test_shut_a_real_worker_down(page, live_server, camera, celery_worker):
    worker = celery_worker("browser-2@test")
    wait_for(
        lambda: WorkerState.objects.filter(hostname=worker.hostname).exists(),
        message="the camera to record the worker",
    )

    page.goto(f"{live_server.url}/admin/celery_monitor/workerstate/")
    assert page.locator("#result_list .cm-badge").inner_text().lower() == "online"
    page.check("input[name=_selected_action]")
    page.select_option("select[name=action]", "ping_workers")
    page.click("button[name=index]")
    assert (
        page.locator("ul.messagelist li")
        .inner_text()
        .startswith(f"1 of 1 worker answered: {worker.hostname} in ")
    )

    page.check("input[name=_selected_action]")
    page.select_option("select[name=action]", "shutdown_nodes")
    page.click("button[name=index]")
    assert page.locator("ul.messagelist li").inner_text() == "Shutdown sent to 1 worker."

    worker.process.wait(20)
    wait_for(
        lambda: WorkerState.objects.filter(hostname=worker.hostname, offline=True).exists(),
        message="the worker to be recorded offline",
    )
    page.goto(f"{live_server.url}/admin/celery_monitor/workerstate/")
    assert page.locator("#result_list .cm-badge").inner_text().lower() == "offline"
