"""The admin in a real browser (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from django_celery_monitor import admin as monitor_admin
from django_celery_monitor.control import reply_timeout
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
def open_page(browser, live_server, django_user_model, monkeypatch, app):
    """Log a superuser in, in a window of the given size: ``open_page(1280, 900)``."""
    # The live server answers in another thread, where the test app is not the current app.
    monkeypatch.setattr(monitor_admin.ModelMonitor, "celery_app", app)
    django_user_model.objects.create_superuser("admin", "admin@example.com", "password")
    contexts = []

    def open_(width=1680, height=1000):
        context = browser.new_context(viewport={"width": width, "height": height}, locale="en-US")
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "password")
        page.click("input[type=submit]")
        page.wait_for_selector("#site-name")
        return page

    yield open_
    for context in contexts:
        context.close()


@pytest.fixture
def page(open_page):
    return open_page()


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

    assert page.locator("#changelist-filter a[href='?state=FAILURE']").inner_text() == (
        "FAILURE (1)"
    )
    page.click("#changelist-filter a[href='?state=FAILURE']")
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


def realistic_data(rows=24):
    """Tasks as a production cluster records them: long names, arguments and hostnames."""
    now = timezone.now()
    workers = [
        WorkerState.objects.create(
            hostname=f"celery@worker-production-{zone}", last_heartbeat=now, freq=2.0
        )
        for zone in ("eu-west-1a", "eu-west-1b", "us-east-2c")
    ]
    kinds = [
        ("proj.reports.tasks.generate_monthly_report",
         "({'customer_id': 918273, 'period': '2024-05', 'currency': 'EUR'},)",
         "{'include_drafts': False, 'format': 'pdf', 'locale': 'de-DE'}"),
        ("proj.billing.tasks.charge_subscription_renewal", "(5512093, 'sub_1PqR2sT3uV4wX5yZ')",
         "{'idempotency_key': 'a3f1c9e2-7b4d-4e8a-9c1f-2d3e4f5a6b7c'}"),
        ("proj.notifications.tasks.send_push_notification_batch",
         "(['d1f3...', 'e5a7...', 'c9b2...'],)", "{}"),
        ("proj.etl.tasks.import_customer_events_from_s3",
         "('s3://acme-data-lake/events/2024/05/17/part-00042.parquet',)", "{'dry_run': False}"),
        ("proj.search.tasks.reindex_products", "()", "{'since': '2024-05-17T00:00:00+00:00'}"),
        ("proj.media.tasks.transcode_video", "(77812, '1080p')", "{}"),
    ]  # fmt: skip
    task_states = ["SUCCESS", "SUCCESS", "FAILURE", "STARTED", "RECEIVED", "RETRY",
                   "REVOKED", "SUCCESS", "PROGRESS", "SUCCESS", "FAILURE", "SUCCESS"]  # fmt: skip
    for n in range(rows):
        name, args, kwargs = kinds[n % len(kinds)]
        state = task_states[n % len(task_states)]
        TaskState.objects.create(
            task_id=str(uuid.uuid4()), state=state, name=name, args=args, kwargs=kwargs,
            tstamp=now - timedelta(minutes=7 * n, seconds=n), worker=workers[n % 3],
            runtime=(12.5 + n * 3.25) if state in ("SUCCESS", "FAILURE", "RETRY") else None,
            retries=n % 4, eta=now + timedelta(hours=1) if state == "RECEIVED" else None,
        )  # fmt: skip


def overflow(page):
    """How far the page and the results table stick out of their boxes, in pixels."""
    return page.evaluate(
        """() => {
            const results = document.querySelector('#changelist .results');
            return {
                page: document.documentElement.scrollWidth - window.innerWidth,
                results: results.scrollWidth - results.clientWidth,
            };
        }"""
    )


def test_the_task_list_fits_a_1280_px_window(open_page, live_server):
    realistic_data()
    page = open_page(1280, 900)

    page.goto(f"{live_server.url}/admin/celery_monitor/taskstate/")
    page.wait_for_selector("#result_list")

    # A newcomer's admin: the navigation sidebar open, the filters shown.
    assert page.locator("#nav-sidebar").is_visible()
    assert page.locator("#changelist-filter").is_visible()
    assert overflow(page) == {"page": 0, "results": 0}
    headers = [text.strip() for text in page.locator("#result_list thead th").all_inner_texts()]
    assert headers == ["", "STATE", "UUID", "TASK", "WHEN", "WORKER"]
    first = page.locator("#result_list tbody tr").first
    assert first.locator(".cm-function").inner_text() == "generate_monthly_report"
    assert first.locator(".cm-runtime").inner_text() == "ran 12.500 s"
    # The arguments are cut to the column with an ellipsis, in full on hover.
    args = first.locator(".cm-args")
    assert args.evaluate("e => e.scrollWidth > e.clientWidth")
    assert "'include_drafts': False" in args.get_attribute("title")
    assert first.locator(".cm-host a").get_attribute("title") == (
        "celery@worker-production-eu-west-1a"
    )
    # The state filter says how many tasks each state has.
    states = page.locator("#changelist-filter details").first
    assert "SUCCESS (10)" in states.inner_text()
    assert "PROGRESS (2)" in states.inner_text()
    assert states.locator(".cm-state-none").all_inner_texts() == ["PENDING (0)", "REJECTED (0)"]
    screenshot(page, "task_list_1280")
    states.screenshot(path=str(SCREENSHOTS / "state_filter_counts.png"))

    page.emulate_media(color_scheme="dark")
    page.reload()
    assert overflow(page) == {"page": 0, "results": 0}
    screenshot(page, "task_list_1280_dark")


def test_the_history_of_a_task_names_the_action(page, live_server, redis_url):
    task = TaskState.objects.create(
        task_id=str(uuid.uuid4()), state="STARTED", name="proj.reports.tasks.generate",
        tstamp=timezone.now(),
    )  # fmt: skip

    page.goto(f"{live_server.url}/admin/celery_monitor/taskstate/?q={task.task_id}")
    page.check("input[name=_selected_action]")
    page.select_option("select[name=action]", "terminate_tasks")
    page.click("button[name=index]")
    assert page.locator("ul.messagelist li").inner_text() == (
        "Terminate (SIGTERM) sent for 1 task, but no worker answered in "
        f"{reply_timeout():g} s: nothing says it was applied. A worker that reads it later "
        "applies it then."
    )

    # From the admin's Recent actions to the task, then to its History.
    page.goto(f"{live_server.url}/admin/")
    page.click(f"#recent-actions-module a:has-text('{task.task_id}')")
    page.click("a.historylink")
    page.wait_for_selector("#change-history")
    assert page.locator("#change-history tbody td").last.inner_text() == (
        "Terminate (SIGTERM) sent; no worker answered"
    )
    screenshot(page, "task_history")


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
    result = tasks.sleep.apply_async((1,), countdown=12)
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


def dashboard_data():
    """An hour of tasks of a small cluster, with failures, retries and a stuck task."""
    from django_celery_monitor.models import CameraState

    now = timezone.now()
    workers = [
        WorkerState.objects.create(
            hostname=f"celery@worker-{n}",
            last_heartbeat=now if n < 2 else now - timedelta(hours=1), freq=2.0,
            processed=1000 * (n + 1), active=n, loadavg=[0.4, 0.3, 0.2],
            events_missed=3 if n == 1 else 0,
        )
        for n in range(3)
    ]  # fmt: skip
    names = ["proj.tasks.add", "proj.billing.charge", "proj.media.transcode", "proj.etl.load"]
    for n in range(240):
        state = "FAILURE" if n % 9 == 0 else "SUCCESS"
        tstamp = now - timedelta(seconds=15 * n + 5)
        runtime = 0.05 * (1 + n % 7) * (1 + names.index(names[n % 4]))
        TaskState.objects.create(
            task_id=str(uuid.uuid4()), state=state, name=names[n % 4], tstamp=tstamp,
            runtime=runtime, retries=1 if n % 11 == 0 else 0, worker=workers[n % 2],
            received=tstamp - timedelta(seconds=runtime + 0.02 * (n % 5)),
            started=tstamp - timedelta(seconds=runtime),
            exception=("TimeoutError('upstream')" if n % 2 else "ValueError('bad input')")
            if state == "FAILURE" else None,
        )  # fmt: skip
    TaskState.objects.create(
        task_id=str(uuid.uuid4()), state="STARTED", name="proj.media.transcode",
        tstamp=now - timedelta(minutes=3), worker=workers[2],
    )  # fmt: skip
    CameraState.objects.create(
        key="camera-host:4242", hostname="camera-host", pid=4242, version="2.0.0",
        frequency=1.0, started=now - timedelta(hours=2), last_shot=now, events=123456,
        events_per_second=310.0, write_seconds=0.012, tasks_written=41000,
    )  # fmt: skip


def test_the_dashboard_in_light_and_dark(open_page, live_server):
    dashboard_data()
    page = open_page(1280, 900)
    page.goto(f"{live_server.url}/admin/")
    page.click("#content-main >> text=Dashboard")
    page.wait_for_selector(".cm-dashboard")
    # The badge's capitals come from the stylesheet, which may not be applied yet.
    assert page.locator(".cm-monitor .cm-badge").text_content().strip() == "recording"
    assert page.locator(".cm-chart").count() == 2
    assert page.locator(".cm-chart rect").count() > 20
    assert page.locator(".cm-chart polyline").count() == 2
    names = page.locator(".cm-panel table").first.locator("tbody tr td:first-child a")
    assert sorted(names.all_inner_texts()) == sorted(
        ["proj.tasks.add", "proj.billing.charge", "proj.media.transcode", "proj.etl.load"]
    )
    assert page.locator("text=worker offline").count() == 1
    screenshot(page, "dashboard_1280")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow == 0
    page.emulate_media(color_scheme="dark")
    page.reload()
    screenshot(page, "dashboard_1280_dark")
    # A window's card links to the task list filtered the same way.
    card = page.locator("a.cm-card", has_text="FAILURE")
    shown = int(card.locator(".cm-card-value").inner_text())
    assert 20 < shown <= 27  # the window's start moves with the clock
    card.click()
    page.wait_for_selector("#result_list")
    assert "state=FAILURE" in page.url
    assert page.locator("#result_list tbody tr").count() == shown


@pytest.mark.e2e
def test_live_refresh_shows_a_task_finishing_on_a_real_worker(
    page, live_server, camera, celery_worker
):
    celery_worker("live-1@test")
    page.goto(f"{live_server.url}/admin/celery_monitor/dashboard/?window=15m")
    page.check("input[data-cm-live]")
    assert page.evaluate("localStorage.getItem('django-celery-monitor:live')") == "1"
    page.evaluate("window.cmMarker = 'kept'")  # gone if the page reloads

    result = tasks.add.delay(40, 2)
    wait_for(lambda: TaskState.objects.filter(task_id=result.id, state="SUCCESS").exists())
    page.wait_for_selector("#cm-dashboard-body >> text=tests.tasks.add", timeout=30_000)
    assert page.evaluate("window.cmMarker") == "kept"
    assert "updated at" in page.locator(".cm-live-status").inner_text()

    # The task list refreshes itself too (the toggle is remembered).
    page.goto(f"{live_server.url}/admin/celery_monitor/taskstate/")
    assert page.locator("input[data-cm-live]").is_checked()
    page.evaluate("window.cmMarker = 'kept'")
    second = tasks.fail.delay("live")
    page.wait_for_selector(f"#result_list >> text={second.id[:8]}", timeout=30_000)
    assert page.evaluate("window.cmMarker") == "kept"
    # A selected row pauses the refresh, so an action is never lost.
    page.check("input[name=_selected_action]")
    third = tasks.add.delay(1, 1)
    wait_for(lambda: TaskState.objects.filter(task_id=third.id, state="SUCCESS").exists())
    page.wait_for_timeout(6_000)
    assert page.locator(f"#result_list >> text={third.id[:8]}").count() == 0
    assert "paused" in page.locator(".cm-live-status").inner_text()
    page.uncheck("input[name=_selected_action]")
    page.wait_for_selector(f"#result_list >> text={third.id[:8]}", timeout=15_000)


@pytest.mark.e2e
def test_the_page_of_a_real_worker(open_page, live_server, camera, celery_worker):
    node = celery_worker("browser-3@test")
    # Long enough for a slow machine: the page must see the one running, the other held.
    running = tasks.sleep.delay(30)
    held = tasks.add.apply_async((2, 2), countdown=12)
    wait_for(
        lambda: (
            TaskState.objects.filter(task_id=running.id, state="STARTED").exists()
            and TaskState.objects.filter(task_id=held.id, state="RECEIVED").exists()
        ),
        message="the camera to record the running and the held task",
    )
    worker = WorkerState.objects.get(hostname=node.hostname)
    page = open_page(1280, 900)

    page.goto(f"{live_server.url}/admin/celery_monitor/workerstate/{worker.pk}/change/")
    stats = page.locator("#cm-stats")
    assert str(node.process.pid) in stats.inner_text()
    assert "prefork" in stats.inner_text()
    assert "tests.tasks.sleep" in page.locator("#cm-registered").inner_text()
    assert page.locator("#cm-active tbody tr").count() == 1
    assert page.locator("#cm-scheduled tbody tr").count() == 1
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") == 0
    screenshot(page, "worker_detail")
    # The ids of recorded tasks lead to their page.
    page.click("#cm-scheduled tbody a")
    page.wait_for_selector(".cm-timeline")
    assert held.id in page.locator("#content").inner_text()
    page.go_back()

    page.fill("#id_add_consumer-queue", "reports")
    page.click("#cm-control-add_consumer button[type=submit]")
    message = page.locator("ul.messagelist li").inner_text()
    assert message.startswith("Consumer added: queue reports: browser-3@test answered in ")
    assert message.endswith(" ms: add consumer reports.")

    def consumed():
        page.reload()
        return "reports" in page.locator("#cm-queues").inner_text()

    wait_for(consumed, interval=0.5, message="the page to show the new queue")
    page.emulate_media(color_scheme="dark")
    page.reload()
    screenshot(page, "worker_detail_dark")
    wait_for(
        lambda: TaskState.objects.filter(task_id=held.id, state="SUCCESS").exists(),
        timeout=30,
        message="the held task to run",
    )
    tasks.add.app.control.revoke(running.id, terminate=True)  # the worker stops at once


def test_a_live_list_that_was_empty_fills_and_a_logged_out_one_says_so(page, live_server):
    page.goto(f"{live_server.url}/admin/celery_monitor/taskstate/")
    assert page.locator("#result_list").count() == 0  # the admin renders no table for none
    page.check("input[data-cm-live]")
    task = TaskState.objects.create(
        task_id=str(uuid.uuid4()), state="SUCCESS", name="proj.first", tstamp=timezone.now()
    )
    page.wait_for_selector(f"#result_list >> text={task.task_id[:8]}", timeout=15_000)
    # A collapsed filter stays collapsed.
    page.locator("#changelist-filter details").first.evaluate("d => d.open = false")
    TaskState.objects.create(
        task_id=str(uuid.uuid4()), state="FAILURE", name="proj.second", tstamp=timezone.now()
    )
    page.wait_for_selector("#result_list >> text=proj.second", timeout=15_000)
    assert page.locator("#changelist-filter details").first.evaluate("d => d.open") is False
    # The session ends: the admin answers with its login page, which is not swapped in.
    page.context.clear_cookies()
    page.wait_for_function(
        "document.querySelector('.cm-live-status').textContent.includes('logged out')",
        timeout=15_000,
    )
    assert page.locator("#result_list >> text=proj.second").count() == 1


def test_a_live_list_binds_its_new_rows_and_counts_once(page, live_server):
    now = timezone.now()
    TaskState.objects.bulk_create(
        TaskState(
            task_id=str(uuid.uuid4()),
            state="SUCCESS",
            name="proj.old",
            tstamp=now - timedelta(minutes=10, seconds=n),
        )
        for n in range(60)
    )
    page.goto(f"{live_server.url}/admin/celery_monitor/taskstate/")
    session = page.context.new_cdp_session(page)

    def listeners():
        found = {}
        for name in ("document", "window"):
            target = session.send("Runtime.evaluate", {"expression": name})["result"]
            answer = session.send(
                "DOMDebugger.getEventListeners", {"objectId": target["objectId"]}
            )
            # Those the admin's actions script adds (Playwright adds its own to the window).
            found[name] = sorted(
                listener["type"]
                for listener in answer["listeners"]
                if listener["type"] in ("keydown", "keyup", "pageshow")
            )
        return found

    before = listeners()
    # The admin's actions script bound the rows.
    assert before == {"document": ["keydown", "keyup"], "window": ["pageshow"]}
    question = page.locator("div.actions span.question a").first
    assert "60" in question.text_content()
    page.check("input[data-cm-live]")
    for n in range(2):
        TaskState.objects.create(
            task_id=str(uuid.uuid4()), state="FAILURE", name=f"proj.new{n}", tstamp=timezone.now()
        )
        page.wait_for_selector(f"#result_list >> text=proj.new{n}", timeout=15_000)
    # Each refresh bound the new rows in place of the old: nothing added up.
    assert listeners() == before
    assert "62" in question.text_content()  # the count of "Select all" is the new one
    # The page's own checkboxes are the ones the actions work on.
    page.check("#action-toggle")
    assert page.locator("tr input.action-select:checked").count() == 50
    assert page.locator("span.action-counter").inner_text() == "50 of 50 selected"
    page.click("div.actions span.question a >> nth=0")
    assert page.locator("div.actions span.all").first.is_visible()
    assert page.locator("input.select-across").first.input_value() == "1"
    page.click("div.actions span.clear a >> nth=0")
    assert page.locator("tr input.action-select:checked").count() == 0
    # The status is spoken when it changes kind, not at each refresh.
    page.wait_for_function(
        "document.querySelector('.cm-live-status').getAttribute('aria-live') === 'off'",
        timeout=15_000,
    )
    # The list of actions being chosen from (pressed, nothing chosen yet): the list is not
    # swapped under the pointer, and is once it is left.
    select = page.locator("select[name=action]").first
    select.focus()
    select.press("ArrowDown")  # walks the choices; "---------" is chosen again below
    select.select_option("")
    chosen = select.element_handle()
    TaskState.objects.create(
        task_id=str(uuid.uuid4()), state="FAILURE", name="proj.later", tstamp=timezone.now()
    )
    page.wait_for_function(
        "document.querySelector('.cm-live-status').textContent.includes('paused')",
        timeout=15_000,
    )
    assert chosen.evaluate("e => e.isConnected && document.activeElement === e")
    assert page.locator("#result_list >> text=proj.later").count() == 0
    chosen.evaluate("e => e.blur()")
    page.wait_for_selector("#result_list >> text=proj.later", timeout=15_000)
    # A list left with no rows drops the listeners of the rows it had.
    TaskState.objects.all().delete()
    page.wait_for_selector("#result_list", state="detached", timeout=15_000)
    assert listeners() == {"document": [], "window": []}
