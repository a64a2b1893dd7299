"""The dashboard in the admin: what it shows, who may see it, and its live data."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from django_celery_monitor.admin import charts
from django_celery_monitor.models import CameraState
from tests.test_admin import XSS, make_task, make_worker, staff

pytestmark = pytest.mark.django_db

DASHBOARD = reverse("admin:celery_monitor_dashboard_changelist")
DATA = reverse("admin:celery_monitor_dashboard_data")


@pytest.fixture
def data():
    now = timezone.now()
    up = make_worker("celery@up", processed=120, active=2, loadavg=[0.5, 0.25, 0.125])
    down = make_worker("celery@down", alive=False, events_missed=7)
    for n in range(6):
        make_task(
            "SUCCESS",
            "proj.add",
            tstamp=now - timedelta(seconds=20 + n),
            runtime=0.1 * (n + 1),
            worker=up,
        )
    make_task("FAILURE", "proj.fail", tstamp=now, exception="KeyError('k')", worker=up)
    make_task("FAILURE", "proj.fail", tstamp=now, exception="KeyError('j')", worker=up)
    stuck = make_task("STARTED", "proj.sleep", tstamp=now, worker=down)
    CameraState.objects.create(
        key="cam:1",
        hostname="cam",
        pid=1,
        version="2.0",
        frequency=1.0,
        started=now,
        last_shot=now,
        events=1000,
        events_per_second=250.0,
    )
    return {"up": up, "down": down, "stuck": stuck}


def test_the_dashboard_shows_the_window(admin_client, data):
    response = admin_client.get(DASHBOARD)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Dashboard" in html
    assert 'id="nav-sidebar"' in html  # the admin's chrome
    assert "recording" in html and "last shot" in html
    # The state cards, linked to the task list filtered the same way.
    cards = re.findall(r'class="cm-card" href="([^"]+)"', html)
    assert any("state=SUCCESS" in url and "tstamp__gte=" in url for url in cards)
    assert re.search(r'cm-card-value">6<', html)
    # Names, failures, stuck tasks, workers.
    assert "proj.add" in html and "KeyError" in html
    assert "worker offline" in html and "proj.sleep" in html
    assert "celery@up" in html and "celery@down" in html
    assert "1 of 2 online" in html
    assert '<svg class="cm-chart"' in html


@pytest.mark.parametrize("window", ["15m", "1h", "24h", "7d", "nonsense"])
def test_every_window(admin_client, data, window):
    response = admin_client.get(DASHBOARD, {"window": window})
    assert response.status_code == 200
    data_response = admin_client.get(DATA, {"window": window})
    payload = data_response.json()
    assert payload["window"] == (window if window != "nonsense" else "1h")
    assert "proj.add" in payload["html"]
    assert payload["monitor_ok"] is True
    assert "no-store" in data_response["Cache-Control"]


def test_the_app_index_links_the_dashboard(admin_client):
    html = admin_client.get(reverse("admin:app_list", args=["celery_monitor"])).content.decode()
    assert DASHBOARD in html


def test_who_may_see_it(client, django_user_model, data):
    assert client.get(DASHBOARD).status_code == 302  # to the login
    assert client.get(DATA).status_code == 302
    client.force_login(staff(django_user_model, username="nobody"))
    assert client.get(DASHBOARD).status_code == 403
    assert client.get(DATA).status_code == 403
    client.force_login(staff(django_user_model, "view_taskstate", username="viewer"))
    assert client.get(DASHBOARD).status_code == 200
    assert client.get(DATA).status_code == 200


def test_everything_is_escaped(admin_client):
    for n, text in enumerate(XSS):
        worker = make_worker(f"{text}@{n}", events_missed=1)
        make_task("FAILURE", f"proj.{text}", exception=f"{text}('x')", worker=worker)
        make_task(
            "STARTED", f"proj.{text}", worker=worker, tstamp=timezone.now() - timedelta(days=1)
        )
    for url in (DASHBOARD, DATA):
        body = admin_client.get(url).content.decode()
        for text in XSS:
            assert text not in body
            assert text.replace("/", "\\/") not in body


def test_without_a_camera_it_says_how_to_start_one(admin_client):
    html = admin_client.get(DASHBOARD).content.decode()
    assert "not recording" in html
    assert "manage.py celery_monitor" in html


def test_a_stale_camera_is_reported(admin_client):
    long_ago = timezone.now() - timedelta(minutes=5)
    CameraState.objects.create(
        key="cam:2", hostname="cam", pid=2, version="2.0", frequency=1.0,
        started=long_ago, last_shot=long_ago,
    )  # fmt: skip
    html = admin_client.get(DASHBOARD).content.decode()
    assert "not recording" in html
    assert "The last shot was 300 s ago" in html


def test_charts_scale_and_label():
    start = timezone.now().replace(second=0, microsecond=0)
    series = [
        {"start": start + timedelta(minutes=n), "succeeded": n, "failed": 1, "revoked": 0,
         "retried": 0, "runtime_p50": 0.1 * n or None, "runtime_p95": 0.2 * n or None}
        for n in range(10)
    ]  # fmt: skip
    bars = charts.count_chart(series, 60)
    assert bars.count("<rect") == 9 + 10  # a bar for each figure that is not 0
    assert "9 succeeded, 1 failed, 0 retried" in bars
    lines = charts.runtime_chart(series, 60)
    assert lines.count("<polyline") == 2
    assert charts.nice_ceiling(7) == 10 and charts.nice_ceiling(0.3) == 0.5
    assert charts.nice_ceiling(0) == 1


@pytest.mark.parametrize(
    ("peak", "grid"),
    [
        (1, ["0", "0.5", "1"]),
        (5, ["0", "2.5", "5"]),
        (50, ["0", "25", "50"]),
        (3000, ["0", "2,500", "5,000"]),
    ],
)
def test_the_grid_lines_say_their_counts(peak, grid, settings):
    settings.USE_THOUSAND_SEPARATOR = True
    start = timezone.now().replace(second=0, microsecond=0)
    series = [
        {"start": start + timedelta(minutes=n), "succeeded": peak if n == 0 else 0, "failed": 0,
         "revoked": 0, "retried": 0}
        for n in range(30)
    ]  # fmt: skip
    svg = str(charts.count_chart(series, 60))
    assert re.findall(r'text-anchor="end">([^<]*)</text>', svg) == grid


@pytest.mark.parametrize(("seconds", "with_day"), [(60, False), (10080, True), (21600, True)])
def test_the_time_under_a_chart_has_its_day_when_it_spans_days(seconds, with_day):
    start = timezone.now().replace(second=0, microsecond=0)
    points = [(start + timedelta(seconds=seconds * n), 5) for n in range(60)]
    labels = re.findall(
        r'text-anchor="middle">([^<]*)</text>', str(charts.backlog_chart(points, "q"))
    )
    assert labels and all((" " in label) == with_day for label in labels)


def test_each_link_lists_the_tasks_it_counts(admin_client):
    import html

    worker = make_worker("w@h")
    now = timezone.now()

    def failed(name, exception, age):
        make_task("FAILURE", name, tstamp=now - timedelta(seconds=age), exception=exception,
                  worker=worker)  # fmt: skip

    for age in (1, 2, 3):
        failed("proj.fail", "KeyError('k')", age)
    failed("proj.fail", "ValueError('v')", 30)
    failed("proj.other", "ValueError: v", 40)
    failed("proj.other", "ValueErrorish('v')", 45)
    failed("proj.other", None, 50)
    # What only a forged event carries: each listed under the type it is counted under.
    failed("proj.odd", "ValueError\tc", 55)
    failed("proj.odd", "valueerror('d')", 56)  # another type on SQLite too
    failed("proj.odd", "  ValueError('b')", 57)  # no type
    failed("proj.odd", "- boom", 58)
    failed("proj.odd", "T" * 210, 59)
    make_task("SUCCESS", None, tstamp=now - timedelta(seconds=5), worker=worker)
    make_task("SUCCESS", "proj.named", tstamp=now - timedelta(seconds=5), worker=worker)
    page = admin_client.get(DASHBOARD).content.decode()

    def listed(url):
        response = admin_client.get(html.unescape(url))
        assert response.status_code == 200 and "e=1" not in response.request["QUERY_STRING"]
        return response.content.decode().count('class="action-select"')

    failures = re.findall(
        r'<td><a href="([^"]+)">(?:<code>([^<]+)</code>|(None recorded))</a></td>\s*'
        r'<td class="cm-num">(\d+)</td>',
        page,
    )
    counted = {code or text: int(count) for _url, code, text, count in failures}
    assert counted == {
        "KeyError": 3, "ValueError": 3, "ValueErrorish": 1, "None recorded": 2,
        "valueerror": 1, "-": 1, "T" * 200: 1,
    }  # fmt: skip
    for url, _code, _text, count in failures:
        assert listed(url) == int(count)
    names = re.findall(
        r'<td><a href="([^"]+)">([^<]+)</a></td>\s*<td class="cm-num">(\d+)</td>', page
    )
    assert {name for _url, name, _count in names} >= {"(no name)", "proj.named", "proj.fail"}
    for url, _name, count in names:
        assert listed(url) == int(count)


def test_failures_without_a_type_are_not_merged_with_a_type_named_so(admin_client):
    # A failure that recorded no exception, and one whose exception type reads "?": two
    # rows, each linking to its own tasks.
    now = timezone.now()
    plain = make_task("FAILURE", "proj.a", tstamp=now, exception="")
    odd = make_task("FAILURE", "proj.a", tstamp=now, exception="?: odd")
    response = admin_client.get(DASHBOARD)
    failures = response.context["failures"]
    assert sorted(f["exception_type"] for f in failures) == ["", "?"]
    for failure in failures:
        listed = admin_client.get(failure["url"]).context["cl"].result_list
        expected = odd if failure["exception_type"] else plain
        assert [task.pk for task in listed] == [expected.pk]
    assert "None recorded" in response.content.decode()


def test_the_throughput_takes_a_unit_that_shows_it():
    from django_celery_monitor.admin.dashboard import _rates

    assert _rates(12.34, 3.0) == ["12.3 tasks/min", "3.0 tasks/min"]
    # 150 tasks in a week: a day's worth, in both windows alike.
    assert _rates(150 / (7 * 1440), 0.0) == ["21.4 tasks/day", "0.0 tasks/day"]
    assert _rates(0.5, 0.002) == ["30.0 tasks/h", "0.1 tasks/h"]
    assert _rates(0.0, 0.0) == ["0.0 tasks/min", "0.0 tasks/min"]
    # Rounded, not cut: 2.99 tasks a minute show as 3.0.
    assert _rates(2.99, 1.96) == ["3.0 tasks/min", "2.0 tasks/min"]


def test_a_week_of_few_tasks_shows_their_rate_and_the_window_until_now(admin_client, data):
    html = admin_client.get(DASHBOARD, {"window": "7d"}).content.decode()

    assert re.search(r"[\d.]+ tasks/day", html)
    assert "0.0 tasks/min" not in html
    assert "until now, against the 7 days before" in html
