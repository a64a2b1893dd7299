"""The JSON API: filters, search, cursor pages, details, workers, dashboard and access."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.contrib.auth.models import Permission
from django.db import connection, models
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_celery_monitor import stats
from django_celery_monitor.api import decode_cursor, encode_cursor
from django_celery_monitor.models import TaskState, WorkerState

pytestmark = pytest.mark.django_db

TASKS = "/monitor/api/tasks/"
WORKERS = "/monitor/api/workers/"
DASHBOARD = "/monitor/api/dashboard/"

#: A fixed time for the rows of the task lists: 10:00 UTC, 11:00 in the site's zone (Berlin).
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=dt_timezone.utc)


def make_worker(hostname="w1@test", **fields):
    fields.setdefault("last_heartbeat", timezone.now())
    fields.setdefault("freq", 2.0)
    return WorkerState.objects.create(hostname=hostname, **fields)


def make_task(state="SUCCESS", name="proj.add", at=0.0, **fields):
    """A task row whose latest event was ``at`` seconds after T0."""
    fields.setdefault("task_id", str(uuid.uuid4()))
    fields.setdefault("tstamp", T0 + timedelta(seconds=at))
    return TaskState.objects.create(state=state, name=name, **fields)


def task_ids(response):
    assert response.status_code == 200, response.content
    return [item["task_id"] for item in response.json()["results"]]


def ids_of(*tasks):
    return [task.task_id for task in tasks]


# -- the list and its filters


def test_a_task_in_the_list(admin_client):
    worker = make_worker("celery@host1")
    task = make_task(
        worker=worker,
        args="(2, 2)",
        kwargs="{}",
        result="4",
        runtime=0.25,
        received=T0 - timedelta(seconds=1),
        started=T0 - timedelta(microseconds=250_000),
        root_id="root-1",
        parent_id="parent-1",
        traceback="Traceback...",
        note="from the result backend",
    )
    body = admin_client.get(TASKS).json()
    assert body == {
        "results": [
            {
                "id": task.pk,
                "task_id": task.task_id,
                "name": "proj.add",
                "state": "SUCCESS",
                "worker": "celery@host1",
                "tstamp": "2026-03-02T10:00:00Z",
                "received": "2026-03-02T09:59:59Z",
                "started": "2026-03-02T09:59:59.750Z",
                "runtime": 0.25,
                "retries": 0,
                "eta": None,
                "expires": None,
                "lost": False,
                "note": "from the result backend",
                "args": "(2, 2)",
                "kwargs": "{}",
                "result": "4",
                "exception": None,
                "parent_id": "parent-1",
                "root_id": "root-1",
            }
        ],
        "next": None,
    }


def test_the_list_is_newest_first_without_hidden_rows(admin_client):
    old, new = make_task(at=0), make_task(at=10)
    make_task(at=20, hidden=True)
    assert task_ids(admin_client.get(TASKS)) == ids_of(new, old)


def test_filter_by_state_and_name(admin_client):
    add_ok = make_task("SUCCESS", "proj.add", at=1)
    add_failed = make_task("FAILURE", "proj.add", at=2)
    mul_ok = make_task("SUCCESS", "proj.mul", at=3)
    assert task_ids(admin_client.get(TASKS, {"state": "SUCCESS"})) == ids_of(mul_ok, add_ok)
    assert task_ids(admin_client.get(TASKS, {"name": "proj.add"})) == ids_of(add_failed, add_ok)
    both = {"state": "SUCCESS", "name": "proj.add"}
    assert task_ids(admin_client.get(TASKS, both)) == ids_of(add_ok)
    assert task_ids(admin_client.get(TASKS, {"state": "NO-SUCH-STATE"})) == []
    assert task_ids(admin_client.get(TASKS, {"name": "proj"})) == []  # exact, no prefix
    # An empty parameter is ignored, as a form sends it.
    assert len(task_ids(admin_client.get(TASKS, {"state": "", "name": ""}))) == 3


def test_filter_by_worker_id_and_hostname(admin_client):
    one, two = make_worker("celery@one"), make_worker("celery@two")
    on_one, on_two = make_task(worker=one, at=1), make_task(worker=two, at=2)
    make_task(at=3)
    assert task_ids(admin_client.get(TASKS, {"worker": one.pk})) == ids_of(on_one)
    assert task_ids(admin_client.get(TASKS, {"hostname": "celery@two"})) == ids_of(on_two)
    assert task_ids(admin_client.get(TASKS, {"hostname": "celery@nobody"})) == []
    assert task_ids(admin_client.get(TASKS, {"worker": two.pk + 100})) == []


def test_filter_by_lost(admin_client):
    lost, kept = make_task("STARTED", lost=True, at=1), make_task(at=2)
    assert task_ids(admin_client.get(TASKS, {"lost": "1"})) == ids_of(lost)
    assert task_ids(admin_client.get(TASKS, {"lost": "0"})) == ids_of(kept)


def test_filter_by_since_and_until(admin_client):
    tasks = [make_task(at=minutes * 60) for minutes in range(4)]  # 10:00 to 10:03 UTC
    since = {"since": "2026-03-02T10:01:00Z"}
    assert task_ids(admin_client.get(TASKS, since)) == ids_of(*reversed(tasks[1:]))
    until = {"until": "2026-03-02T10:02:00+00:00"}  # before it, not at it
    assert task_ids(admin_client.get(TASKS, until)) == ids_of(tasks[1], tasks[0])
    both = {"since": "2026-03-02T10:01:00Z", "until": "2026-03-02T10:02:00.000001Z"}
    assert task_ids(admin_client.get(TASKS, both)) == ids_of(tasks[2], tasks[1])


def test_a_time_without_offset_is_in_the_site_time_zone(admin_client, settings):
    assert settings.TIME_ZONE == "Europe/Berlin"  # UTC+1 in March
    tasks = [make_task(at=minutes * 60) for minutes in range(3)]
    local = {"since": "2026-03-02T11:01:00"}  # 10:01 UTC
    assert task_ids(admin_client.get(TASKS, local)) == ids_of(tasks[2], tasks[1])
    day = {"until": "2026-03-02"}  # midnight in Berlin
    assert task_ids(admin_client.get(TASKS, day)) == []
    assert len(task_ids(admin_client.get(TASKS, {"since": "2026-03-02"}))) == 3


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("0a1b2c3d", ["alpha-add"]),  # a task id's beginning
        ("0A1B2C3D", ["alpha-add"]),  # as Celery's ids are: lower case
        ("proj.mail", ["beta-mail"]),  # a name's beginning, whatever the case
        ("Alpha", ["alpha-mul", "alpha-add"]),  # a hostname's beginning
        ("beta-2 proj.Mail", ["beta-mail"]),  # every word matches
        ("nothing", []),
    ],
)
def test_search(admin_client, q, expected):
    alpha, beta = make_worker("Alpha-1@host"), make_worker("beta-2@host")
    rows = {
        "alpha-add": make_task(
            name="proj.add", worker=alpha, at=1, task_id="0a1b2c3d-0000-4000-8000-000000000001"
        ),
        "alpha-mul": make_task(name="proj.mul", worker=alpha, at=2),
        "beta-mail": make_task(name="proj.Mail.send", worker=beta, at=3),
    }
    names = {task.task_id: label for label, task in rows.items()}
    found = task_ids(admin_client.get(TASKS, {"q": q}))
    assert [names[task_id] for task_id in found] == expected


def test_search_and_filters_combine(admin_client):
    alpha = make_worker("alpha@host")
    ok = make_task("SUCCESS", "proj.add", worker=alpha, at=1)
    make_task("FAILURE", "proj.add", worker=alpha, at=2)
    make_task("SUCCESS", "other.add", at=3)
    assert task_ids(admin_client.get(TASKS, {"q": "alpha", "state": "SUCCESS"})) == ids_of(ok)


# -- pages


def walk(client, params):
    """Every page from the first: the task ids in order, and the cursors followed."""
    found, cursors = [], []
    response = client.get(TASKS, params)
    while True:
        body = response.json()
        assert response.status_code == 200, body
        found += [item["task_id"] for item in body["results"]]
        if body["next"] is None:
            return found, cursors
        assert body["next"].startswith("http://testserver/monitor/api/tasks/?")
        cursors.append(body["next"])
        response = client.get(body["next"])


def test_cursor_pages_give_every_task_once_in_order(admin_client):
    # 250 tasks in 10 tstamps (some on a whole second), 25 each: ties decided by id.
    TaskState.objects.bulk_create(
        TaskState(
            task_id=f"task-{i:03}",
            state="SUCCESS",
            name="proj.add",
            tstamp=T0 + timedelta(seconds=i % 10, microseconds=(i % 10 % 2) * 500_000),
        )
        for i in range(250)
    )
    expected = list(TaskState.objects.order_by("-tstamp", "-pk").values_list("task_id", flat=True))
    found, cursors = walk(admin_client, {"limit": 100})
    assert found == expected
    assert len(set(found)) == 250
    assert len(cursors) == 2
    # The same page gives the same cursor, and the filters are kept in the next URL.
    assert walk(admin_client, {"limit": 100})[1] == cursors
    assert "limit=100" in cursors[0]


def test_the_pages_of_a_search_of_several_names_read_each_one_from_its_index(admin_client):
    shop = make_worker("shop-host@host")
    TaskState.objects.bulk_create(
        TaskState(
            task_id=f"task-{i:03}",
            state="SUCCESS",
            name=["shop.search.one", "shop.search.two", "other.task"][i % 3],
            worker=shop if i % 7 == 0 else None,
            tstamp=T0 + timedelta(seconds=i % 9),
        )
        for i in range(120)
    )
    matching = TaskState.objects.filter(
        models.Q(name__startswith="shop.") | models.Q(worker=shop)
    ).order_by("-tstamp", "-pk")
    expected = list(matching.values_list("task_id", flat=True))

    with CaptureQueriesContext(connection) as queries:
        found, cursors = walk(admin_client, {"q": "shop", "limit": 25})

    assert found == expected
    assert len(cursors) == len(expected) // 25
    assert sum("cm_branch_" in q["sql"] for q in queries) == len(cursors) + 1


def test_the_next_page_does_not_move_when_newer_tasks_come(admin_client):
    tasks = [make_task(at=i) for i in range(5)]
    first = admin_client.get(TASKS, {"limit": 2}).json()
    assert [item["task_id"] for item in first["results"]] == ids_of(tasks[4], tasks[3])
    make_task(at=100)
    second = admin_client.get(first["next"]).json()
    assert [item["task_id"] for item in second["results"]] == ids_of(tasks[2], tasks[1])


def test_pages_keep_the_filters(admin_client):
    failed = [make_task("FAILURE", at=i * 2) for i in range(5)]
    for i in range(5):
        make_task("SUCCESS", at=i * 2 + 1)
    found, cursors = walk(admin_client, {"state": "FAILURE", "limit": 2})
    assert found == ids_of(*reversed(failed))
    assert all("state=FAILURE" in cursor for cursor in cursors)


def test_pages_and_dates_with_use_tz_off(admin_client, settings):
    settings.USE_TZ = False
    local = datetime(2026, 3, 2, 11, 0)  # naive: in the site's zone, Berlin
    TaskState.objects.bulk_create(
        TaskState(task_id=f"t{i}", state="SUCCESS", tstamp=local + timedelta(seconds=i // 2))
        for i in range(5)
    )
    found, _cursors = walk(admin_client, {"limit": 2})
    assert found == ["t4", "t3", "t2", "t1", "t0"]
    assert task_ids(admin_client.get(TASKS, {"since": "2026-03-02T11:00:01"})) == [
        "t4",
        "t3",
        "t2",
    ]
    utc = {"since": "2026-03-02T10:00:02Z"}  # 11:00:02 in Berlin
    assert task_ids(admin_client.get(TASKS, utc)) == ["t4"]


def test_the_last_full_page_has_no_next(admin_client):
    for i in range(4):
        make_task(at=i)
    body = admin_client.get(TASKS, {"limit": 4}).json()
    assert len(body["results"]) == 4 and body["next"] is None


def test_limit_bounds(admin_client):
    TaskState.objects.bulk_create(
        TaskState(task_id=f"t{i}", state="SUCCESS", tstamp=T0 + timedelta(seconds=i))
        for i in range(1005)
    )
    assert len(task_ids(admin_client.get(TASKS))) == 100
    assert len(task_ids(admin_client.get(TASKS, {"limit": 1}))) == 1
    assert len(task_ids(admin_client.get(TASKS, {"limit": 1000}))) == 1000
    assert len(task_ids(admin_client.get(TASKS, {"limit": 5000}))) == 1000
    assert len(task_ids(admin_client.get(TASKS, {"limit": str(10**30)}))) == 1000


def test_a_cursor_round_trips():
    at = datetime(2026, 3, 2, 10, 0, 0, 123456, tzinfo=dt_timezone.utc)
    assert decode_cursor(encode_cursor(at, 42)) == (at, 42)
    assert decode_cursor(encode_cursor(at.replace(microsecond=0), 7)) == (
        at.replace(microsecond=0),
        7,
    )


def tampered_cursors():
    good = encode_cursor(T0, 42)
    raw = base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)).decode()

    def b64(text):
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    return [
        good[:-3],  # cut
        good + "A",
        good[:5] + "!" + good[6:],  # not base64
        good + "==",  # padded: not as it was given
        b64(raw.replace("|42", "|forty-two")),
        b64(raw.replace("|42", "|+42")),
        b64(raw.replace("|42", f"|{2**64}")),
        b64(raw.replace("2026-03-02", "2026-02-30")),
        b64("hello"),
        # Offsets that move the time out of the years a datetime holds.
        b64("0001-01-01T00:00:00+01:00|5"),
        b64("9999-12-31T23:59:59-01:00|5"),
        b64(raw.replace("+00:00", "")),  # no offset: not what the API makes
    ]


@pytest.mark.parametrize("cursor", tampered_cursors())
def test_a_tampered_cursor_is_refused(admin_client, cursor):
    make_task()
    response = admin_client.get(TASKS, {"cursor": cursor})
    assert response.status_code == 400
    assert response.json() == {"error": "invalid cursor: use the next URL of the previous page"}


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"limit": "ten"}, "limit must be an integer, not 'ten'"),
        ({"limit": "0"}, "limit must be at least 1, not 0"),
        ({"limit": "-5"}, "limit must be at least 1, not -5"),
        ({"worker": "w1"}, "worker must be an integer, not 'w1'"),
        ({"worker": str(2**70)}, "worker is out of range"),
        ({"lost": "yes"}, "lost must be 0 or 1, not 'yes'"),
        ({"since": "yesterday"}, "since must be an ISO 8601 date and time, not 'yesterday'"),
        ({"until": "2026-02-30T10:00"}, "until must be an ISO 8601 date and time, not "
         "'2026-02-30T10:00'"),
        # An unencoded + arrives as a space.
        ({"since": "2026-03-02T10:00:00 01:00"}, "since must be an ISO 8601 date and time, "
         "not '2026-03-02T10:00:00 01:00' (encode + as %2B)"),
        ({"since": "0001-01-01T00:00:00"}, "since is out of range"),
        ({"name": "proj\x00add"}, "the query contains a NUL character"),
        ({"q": "\x00"}, "the query contains a NUL character"),
        ({"state\x00": "SUCCESS"}, "the query contains a NUL character"),
        ({"q": " ".join(["a"] * 21)}, "A search takes at most 20 words."),
        ({"q": " ".join(["a"] * 500)}, "A search takes at most 20 words."),
    ],
)  # fmt: skip
def test_bad_input_is_a_400(admin_client, params, error):
    make_task()
    response = admin_client.get(TASKS, params)
    assert response.status_code == 400
    assert response.json() == {"error": error}


# -- one task


def test_task_detail(admin_client):
    worker = make_worker("celery@host1")
    parent = make_task(worker=worker, traceback="Traceback (most recent call last): ...")
    children = [
        make_task(at=i + 1, parent_id=parent.task_id, root_id=parent.task_id) for i in range(3)
    ]
    make_task(at=10, parent_id=parent.task_id, hidden=True)
    body = admin_client.get(f"{TASKS}{parent.task_id}/").json()
    assert body["task_id"] == parent.task_id
    assert body["worker"] == "celery@host1"
    assert body["traceback"] == "Traceback (most recent call last): ..."
    assert body["children"] == ids_of(*children)
    assert body["children_truncated"] is False
    listed = admin_client.get(TASKS, {"limit": 1000}).json()["results"]
    (in_list,) = [item for item in listed if item["task_id"] == parent.task_id]
    assert "traceback" not in in_list
    assert {key: body[key] for key in in_list} == in_list


def test_task_detail_lists_the_first_50_children(admin_client):
    parent = make_task()
    TaskState.objects.bulk_create(
        TaskState(
            task_id=f"child-{i:02}",
            state="SUCCESS",
            tstamp=T0 + timedelta(seconds=i + 1),
            parent_id=parent.task_id,
        )
        for i in range(60)
    )
    body = admin_client.get(f"{TASKS}{parent.task_id}/").json()
    assert body["children"] == [f"child-{i:02}" for i in range(50)]
    assert body["children_truncated"] is True


def test_task_detail_of_an_id_with_a_slash(admin_client):
    task = make_task(task_id="chord/unlock:1")
    assert admin_client.get(f"{TASKS}chord/unlock:1/").json()["id"] == task.pk


def test_unknown_task_is_a_404(admin_client):
    make_task(task_id="hidden", hidden=True)
    for task_id in ("no-such-task", "hidden"):
        response = admin_client.get(f"{TASKS}{task_id}/")
        assert response.status_code == 404
        assert response.json() == {"error": f"no task {task_id!r} was recorded"}


def test_task_detail_with_a_nul_is_a_400(admin_client):
    response = admin_client.get(f"{TASKS}abc%00def/")
    assert response.status_code == 400
    assert response.json() == {"error": "the task id contains a NUL character"}


# -- workers and the dashboard


def test_workers(admin_client):
    now = timezone.now()
    online = make_worker("celery@up", last_heartbeat=now, processed=10, loadavg=[0.5, 0.2, 0.1])
    make_worker("celery@down", last_heartbeat=now - timedelta(hours=1))
    body = admin_client.get(WORKERS).json()
    assert [w["hostname"] for w in body["results"]] == ["celery@up", "celery@down"]
    assert [w["online"] for w in body["results"]] == [True, False]
    first = body["results"][0]
    assert first["id"] == online.pk
    assert first["processed"] == 10 and first["loadavg"] == [0.5, 0.2, 0.1]
    assert first["last_heartbeat"].startswith(now.strftime("%Y-%m-%dT%H:%M:%S"))


@pytest.mark.parametrize("window", sorted(stats.WINDOWS))
def test_dashboard_of_each_window(admin_client, window):
    now = timezone.now()
    TaskState.objects.create(
        task_id="ok", state="SUCCESS", name="proj.add", tstamp=now - timedelta(seconds=30),
        runtime=0.5,
    )  # fmt: skip
    TaskState.objects.create(
        task_id="failed", state="FAILURE", name="proj.add", exception="ValueError('x')",
        tstamp=now - timedelta(seconds=40),
    )  # fmt: skip
    response = admin_client.get(DASHBOARD, {"window": window})
    assert response.status_code == 200
    body = response.json()
    length, _period, interval = stats.WINDOWS[window]
    assert body["window"] == window
    assert body["interval"] == interval
    assert len(body["series"]) == length.total_seconds() // interval
    assert body["totals"]["current"]["states"] == {"SUCCESS": 1, "FAILURE": 1}
    assert body["totals"]["current"]["failure_rate"] == 0.5
    assert sum(point["succeeded"] for point in body["series"]) == 1
    assert body["task_names"][0]["name"] == "proj.add"
    assert body["task_names"][0]["runtime"]["max"] == 0.5
    assert body["failure_types"][0]["exception_type"] == "ValueError"
    assert body["failure_types"][0]["latest_task_id"] == "failed"
    # Durations in seconds, times in ISO 8601.
    assert body["stuck"]["threshold"] == 3600.0
    start = datetime.fromisoformat(body["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(body["end"].replace("Z", "+00:00"))
    assert end - start == length
    assert body["cameras"] == {
        "ok": False,
        "reason": "no camera has run in the last day",
        "cameras": [],
    }


def test_dashboard_defaults_to_one_hour(admin_client):
    assert admin_client.get(DASHBOARD).json()["window"] == "1h"


def test_dashboard_of_an_unknown_window_is_a_400(admin_client):
    response = admin_client.get(DASHBOARD, {"window": "2h"})
    assert response.status_code == 400
    assert response.json() == {"error": "window must be one of 15m, 1h, 24h, 7d, not '2h'"}


# -- access


ENDPOINTS = [TASKS, WORKERS, DASHBOARD, f"{TASKS}some-task/"]


@pytest.mark.parametrize("url", ENDPOINTS)
def test_anonymous_is_a_401(client, url):
    response = client.get(url)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="celery-monitor"'
    assert response["Cache-Control"] == "no-store"
    assert "error" in response.json()


@override_settings(CELERY_MONITOR_API_TOKENS=["s3cret"])
@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_wrong_token_is_a_401(client, url):
    assert client.get(url, HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get(url, HTTP_AUTHORIZATION="Basic s3cret").status_code == 401


@override_settings(CELERY_MONITOR_API_TOKENS=["s3cret"])
def test_the_right_token_reads(client):
    make_task(task_id="some-task")
    for url in ENDPOINTS:
        assert client.get(url, HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200, url
    assert task_ids(client.get(TASKS, HTTP_AUTHORIZATION="Bearer s3cret")) == ["some-task"]


@override_settings(CELERY_MONITOR_API_TOKENS=["s3cret", "tökén", "two words", ""])
def test_tokens_that_could_never_match_leave_the_good_ones_working(client):
    # The system check reports them; a server started without the checks still answers.
    make_task(task_id="some-task")
    assert task_ids(client.get(TASKS, HTTP_AUTHORIZATION="Bearer s3cret")) == ["some-task"]
    assert client.get(TASKS, HTTP_AUTHORIZATION="Bearer two words").status_code == 401
    with override_settings(CELERY_MONITOR_API_TOKENS=12345):
        assert client.get(TASKS, HTTP_AUTHORIZATION="Bearer 12345").status_code == 401


@pytest.mark.parametrize("url", ENDPOINTS)
def test_a_user_who_is_not_staff_is_a_403(client, django_user_model, url):
    client.force_login(django_user_model.objects.create_user("someone", password="pw"))
    assert client.get(url).status_code == 403


def test_staff_needs_the_view_permission(client, django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    assert client.get(TASKS).status_code == 403
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="celery_monitor", codename="view_taskstate")
    )
    assert client.get(TASKS).status_code == 200


@pytest.mark.parametrize(
    ("codename", "readable"),
    [
        ("view_taskstate", {"tasks", "task", "dashboard", "metrics"}),
        ("view_workerstate", {"workers"}),
        ("view_dashboard", {"dashboard", "metrics"}),
    ],
)
def test_each_endpoint_asks_the_permission_the_admin_asks_for_its_data(
    client, django_user_model, codename, readable
):
    """A user who may view only the workers in the admin reads no task through the API (their
    args and tracebacks), and one who may view only the tasks no worker list."""
    task = make_task(
        "FAILURE", "billing.charge", kwargs="{'password': 'hunter2'}", traceback="SECRET"
    )
    make_worker("secret-host@prod")
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="celery_monitor", codename=codename)
    )
    client.force_login(user)
    urls = {
        "tasks": TASKS,
        "task": f"{TASKS}{task.task_id}/",
        "workers": "/monitor/api/workers/",
        "dashboard": "/monitor/api/dashboard/",
        "metrics": "/monitor/metrics",
    }
    answers = {name: client.get(url) for name, url in urls.items()}
    assert {name for name, answer in answers.items() if answer.status_code == 200} == readable
    for name in set(urls) - readable:
        assert answers[name].status_code == 403
        assert b"hunter2" not in answers[name].content
        assert b"secret-host" not in answers[name].content


@override_settings(CELERY_MONITOR_API_TOKENS=["s3cret"])
@pytest.mark.parametrize("url", ENDPOINTS)
def test_only_get(client, url):
    for method in (client.post, client.put, client.delete):
        assert method(url, HTTP_AUTHORIZATION="Bearer s3cret").status_code == 405
    # HEAD answers as GET does, without the body (a monitoring probe's check).
    head = client.head(url, HTTP_AUTHORIZATION="Bearer s3cret")
    get = client.get(url, HTTP_AUTHORIZATION="Bearer s3cret")
    assert head.status_code == get.status_code != 405 and head.content == b""
    assert client.head(url).status_code == 401


def test_answers_are_not_cached(admin_client):
    assert admin_client.get(TASKS)["Cache-Control"] == "no-store"


@pytest.mark.parametrize("freq", [1e11, 1e300])
@pytest.mark.parametrize("runtime", [1e306, 1.7e308])
def test_absurd_values_a_broken_worker_sent_are_answered(admin_client, freq, runtime):
    now = timezone.now()
    make_worker("broken@test", last_heartbeat=now, freq=freq, sw_ident="py-celery")
    make_worker("fine@test", last_heartbeat=now, freq=2.0, sw_ident="py-celery")
    for n in range(3):
        TaskState.objects.create(
            task_id=f"huge-{n}", state="SUCCESS", name="proj.slow", tstamp=now, runtime=runtime
        )
    stats.roll_up()
    workers = admin_client.get(WORKERS)
    assert workers.status_code == 200
    # Its period is taken as a day at most: it heartbeat now, it is online.
    assert workers.json()["online"] == 2
    assert admin_client.get(DASHBOARD).status_code == 200
    assert admin_client.get(TASKS).status_code == 200
    metrics = admin_client.get("/monitor/metrics")
    assert metrics.status_code in (200, 501)  # 501: prometheus_client is not installed
