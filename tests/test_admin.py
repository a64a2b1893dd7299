"""The admin: lists, filters, search, details, actions, permissions, escaping, query cost."""

from __future__ import annotations

import datetime
import re
import uuid
import zoneinfo
from datetime import timedelta
from html import unescape

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import connection
from django.http import QueryDict
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from django_celery_monitor import admin as monitor_admin
from django_celery_monitor.models import TaskState, WorkerState

pytestmark = pytest.mark.django_db

TASKS = reverse("admin:celery_monitor_taskstate_changelist")
WORKERS = reverse("admin:celery_monitor_workerstate_changelist")
UNREACHABLE = "redis://127.0.0.1:1/0"

XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


def task_url(task):
    return reverse("admin:celery_monitor_taskstate_change", args=[task.pk])


def worker_url(worker):
    return reverse("admin:celery_monitor_workerstate_change", args=[worker.pk])


def make_worker(hostname="w1@test", alive=True, **fields):
    heartbeat = timezone.now() if alive else timezone.now() - timedelta(hours=1)
    fields.setdefault("freq", 2.0)
    return WorkerState.objects.create(hostname=hostname, last_heartbeat=heartbeat, **fields)


def make_task(state="SUCCESS", name="tests.tasks.add", **fields):
    fields.setdefault("task_id", str(uuid.uuid4()))
    fields.setdefault("tstamp", timezone.now())
    return TaskState.objects.create(state=state, name=name, **fields)


def messages_of(response):
    return [str(m) for m in get_messages(response.wsgi_request)]


def levels_of(response):
    return [m.level_tag for m in get_messages(response.wsgi_request)]


def staff(django_user_model, *codenames, username="staff"):
    user = django_user_model.objects.create_user(username, password="pw", is_staff=True)
    perms = Permission.objects.filter(
        content_type__app_label="celery_monitor", codename__in=codenames
    )
    assert perms.count() == len(codenames)
    user.user_permissions.set(perms)
    return User.objects.get(pk=user.pk)  # a fresh object: no cached permissions


VIEW = ("view_taskstate", "view_workerstate")


@pytest.fixture
def viewer_client(client, django_user_model):
    client.force_login(staff(django_user_model, *VIEW, username="viewer"))
    return client


@pytest.fixture
def celery(app, monkeypatch):
    """The admin uses the test project's Celery app."""
    monkeypatch.setattr(monitor_admin.ModelMonitor, "celery_app", app)
    return app


@pytest.fixture
def broker_down(celery, monkeypatch):
    monkeypatch.setattr(celery.conf, "broker_url", UNREACHABLE)
    return celery


def post_action(client, url, action, objects, **extra):
    data = {"action": action, "index": "0", "_selected_action": [o.pk for o in objects]}
    data.update(extra)
    return client.post(url, data, follow=True)


# -- lists


def test_task_list_columns(admin_client):
    worker = make_worker("celery@worker-production-eu-west-1a")
    task = make_task(
        name="proj.reports.tasks.generate_monthly_report",
        args="(2, 3)",
        kwargs="{'x': 1}",
        runtime=0.25,
        retries=2,
        eta=timezone.now() + timedelta(hours=1),
        worker=worker,
    )
    make_task(state="FAILURE", name="tests.tasks.fail", args="()", kwargs="{}")

    response = admin_client.get(TASKS)

    assert response.status_code == 200
    html = response.content.decode()
    assert response.context["cl"].title == "Tasks"
    assert "<title>Tasks |" in html
    headers = re.findall(r'<th scope="col"\s+class="[^"]*column-(\w+)', html)
    assert headers == ["state_badge", "task_id_display", "task_display", "when", "worker_link"]
    assert 'class="cm-badge cm-badge-green"' in html
    assert 'class="cm-badge cm-badge-red"' in html
    assert f'title="{task.task_id}">{task.task_id[:8]}…</code>' in html
    # The name may wrap after its dots; the arguments, both kinds, are on the line below.
    assert "proj.<wbr>reports.<wbr>tasks." in html and "generate_<wbr>monthly_<wbr>report" in html
    assert "(2, 3) {&#x27;x&#x27;: 1}</code>" in html
    assert "ran 250.0 ms" in html
    assert f'href="{worker_url(worker)}"' in html
    assert "celery@worker-production-eu-west-1a" in html
    assert "just now" in html
    assert "django_celery_monitor/style.css" in html
    assert "Add task" not in html
    # The ETA and the retries are on the task's page only.
    assert "column-eta" not in html and "column-retries" not in html
    detail = admin_client.get(task_url(task)).content.decode()
    assert "ETA" in detail and "Number of retries" in detail and "{&#x27;x&#x27;: 1}" in detail


def test_pages_work_with_use_tz_off(admin_client, settings):
    settings.USE_TZ = False
    now = datetime.datetime.now()
    worker = WorkerState.objects.create(hostname="naive@test", last_heartbeat=now, freq=2.0)
    task = TaskState.objects.create(
        task_id=str(uuid.uuid4()), state="SUCCESS", tstamp=now, received=now, worker=worker
    )
    assert "just now" in admin_client.get(TASKS).content.decode()
    # The worker's page asks the (absent) worker for a second: after the list.
    for url in (TASKS, task_url(task), worker_url(worker)):
        response = admin_client.get(url)
        assert response.status_code == 200


def test_long_args_are_shortened_with_the_full_value_on_hover(admin_client):
    long_args = "(" + ", ".join(str(n) for n in range(100)) + ")"
    make_task(args=long_args)

    html = admin_client.get(TASKS).content.decode()

    assert f'title="{long_args}"' in html
    assert f'class="cm-fixedwidth cm-args" title="{long_args}">{long_args[:200]}…</code>' in html


def test_worker_list_columns(admin_client):
    online = make_worker("up@test", sw_ver="5.5.0", processed=42, active=3, loadavg=[0.5, 1.0, 2])
    make_worker("down@test", alive=False)

    response = admin_client.get(WORKERS)

    html = response.content.decode()
    assert response.status_code == 200
    assert response.context["cl"].title == "Workers"
    assert re.search(r'cm-badge-green"[^>]*>online<', html)
    assert re.search(r'cm-badge-gray"[^>]*>offline<', html)
    assert "5.5.0" in html and ">42<" in html and ">3<" in html
    assert "0.50 1.00 2" in html
    assert f'href="{worker_url(online)}"' in html


def test_lists_are_read_only(admin_client):
    task = make_task()
    worker = make_worker()

    assert admin_client.get(TASKS + "add/").status_code == 403
    html = admin_client.get(task_url(task)).content.decode()
    assert 'name="_save"' not in html
    assert admin_client.post(task_url(task), {"state": "FAILURE"}).status_code == 403
    assert admin_client.get(task_url(task) + "delete/").status_code == 403
    assert admin_client.get(worker_url(worker) + "delete/").status_code == 403
    task.refresh_from_db()
    assert task.state == "SUCCESS"
    response = admin_client.get(TASKS)
    assert "delete_selected" not in response.content.decode()


# -- filters and search


def state_filter(response):
    """The state filter as a user reads it: each state and the count shown next to it."""
    return dict(
        re.findall(
            r'class="cm-state-choice[^"]*">([^<]+) <span class="cm-count">\(([^)]*)\)</span>',
            response.content.decode(),
        )
    )


def greyed_states(response):
    return re.findall(r'class="cm-state-choice cm-state-none">([^<]+) ', response.content.decode())


def test_filter_by_state(admin_client):
    ok, failed = make_task("SUCCESS"), make_task("FAILURE")

    response = admin_client.get(TASKS, {"state": "FAILURE"})

    assert list(response.context["cl"].result_list) == [failed]
    assert ok.task_id not in response.content.decode()
    assert {"REVOKED", "RECEIVED", "PENDING", "REJECTED"} <= set(state_filter(response))


def test_the_state_filter_counts_the_tasks_of_each_state(admin_client):
    for state, count in (("SUCCESS", 3), ("FAILURE", 2), ("STARTED", 1)):
        for _ in range(count):
            make_task(state)

    response = admin_client.get(TASKS)

    counts = state_filter(response)
    assert counts == {
        "FAILURE": "2", "PENDING": "0", "RECEIVED": "0", "REJECTED": "0", "RETRY": "0",
        "REVOKED": "0", "STARTED": "1", "SUCCESS": "3",
    }  # fmt: skip
    assert greyed_states(response) == ["PENDING", "RECEIVED", "REJECTED", "RETRY", "REVOKED"]


@pytest.mark.parametrize("few_rows", [0, 3, 4, 2000])
def test_a_short_list_is_counted_from_its_rows_a_long_one_a_state_at_a_time(
    admin_client, monkeypatch, few_rows
):
    monkeypatch.setattr(monitor_admin.StateFilter, "few_rows", few_rows)
    for n, state in enumerate(["SUCCESS", "STARTED", "STARTED", "RECEIVED", "SUCCESS"]):
        make_task(state, lost=n > 0)

    with CaptureQueriesContext(connection) as queries:
        counts = state_filter(admin_client.get(TASKS, {"lost": "1"}))

    assert (counts["STARTED"], counts["RECEIVED"], counts["SUCCESS"]) == ("2", "1", "1")
    assert counts["FAILURE"] == "0"
    grouped = any("cm_few GROUP BY" in q["sql"] for q in queries)
    per_state = any("cm_count_" in q["sql"] for q in queries)
    assert (grouped, per_state) == ((True, False) if few_rows >= 4 else (True, True))


def test_the_state_filter_of_an_empty_table(admin_client):
    response = admin_client.get(TASKS)

    assert response.status_code == 200
    assert set(state_filter(response).values()) == {"0"}
    assert len(greyed_states(response)) == 8


def test_the_state_filter_shows_the_cap_when_a_state_has_more_tasks(admin_client, monkeypatch):
    monkeypatch.setattr(monitor_admin.StateFilter, "count_cap", 3)
    TaskState.objects.bulk_create(
        TaskState(state=state, task_id=str(uuid.uuid4()), tstamp=timezone.now())
        for state in ["SUCCESS"] * 5 + ["FAILURE"] * 3 + ["RETRY"] * 4
    )

    counts = state_filter(admin_client.get(TASKS))

    assert (counts["SUCCESS"], counts["RETRY"], counts["FAILURE"]) == ("3+", "3+", "3")


def test_the_cap_is_shown_with_a_thousands_separator(admin_client, monkeypatch):
    monkeypatch.setattr(monitor_admin.StateFilter, "count_cap", 1000)
    monkeypatch.setattr(monitor_admin.filters, "few_counts", lambda *args: None)
    monkeypatch.setattr(monitor_admin.filters, "capped_counts", lambda qs, field, values, cap: {
        value: 1001 if value == "SUCCESS" else 999 for value in values
    })  # fmt: skip

    counts = state_filter(admin_client.get(TASKS))

    assert (counts["SUCCESS"], counts["FAILURE"]) == ("1,000+", "999")


def test_the_state_counts_follow_the_other_filters_and_the_search(admin_client):
    worker = make_worker("w1@test")
    make_task("SUCCESS", name="proj.a", worker=worker)
    make_task("SUCCESS", name="proj.a")
    make_task("FAILURE", name="proj.a")
    make_task("SUCCESS", name="proj.b")
    make_task("RETRY", name="proj.b", tstamp=timezone.now() - timedelta(days=400))

    by_name = state_filter(admin_client.get(TASKS, {"name": "proj.a"}))
    assert (by_name["SUCCESS"], by_name["FAILURE"], by_name["RETRY"]) == ("2", "1", "0")
    by_search = state_filter(admin_client.get(TASKS, {"q": "proj.b"}))
    assert (by_search["SUCCESS"], by_search["FAILURE"], by_search["RETRY"]) == ("1", "0", "1")
    by_worker = state_filter(admin_client.get(TASKS, {"worker": worker.pk}))
    assert (by_worker["SUCCESS"], by_worker["FAILURE"]) == ("1", "0")
    stamp = timezone.localtime()
    this_year = state_filter(admin_client.get(TASKS, {"tstamp__year": stamp.year}))
    assert (this_year["SUCCESS"], this_year["RETRY"]) == ("3", "0")
    # The state's own filter does not narrow its counts: the other states stay reachable.
    failed = state_filter(admin_client.get(TASKS, {"state": "FAILURE", "name": "proj.a"}))
    assert (failed["SUCCESS"], failed["FAILURE"]) == ("2", "1")
    # Nor does a lookup of the state in the query string.
    exact = state_filter(admin_client.get(TASKS, {"state__exact": "FAILURE", "name": "proj.a"}))
    assert (exact["SUCCESS"], exact["FAILURE"]) == ("2", "1")
    # Nothing matches: every state shows 0.
    nothing = admin_client.get(TASKS, {"name": "proj.nothing"})
    assert set(state_filter(nothing).values()) == {"0"}


def test_the_state_filter_offers_the_custom_states_in_the_table(admin_client, monkeypatch):
    make_task("PROGRESS")
    make_task("PROGRESS")
    make_task("AWAITING_APPROVAL")
    make_task("SUCCESS")

    response = admin_client.get(TASKS)

    counts = state_filter(response)
    assert (counts["PROGRESS"], counts["AWAITING_APPROVAL"], counts["SUCCESS"]) == ("2", "1", "1")
    assert list(counts) == sorted(counts)
    progress = admin_client.get(TASKS, {"state": "PROGRESS"})
    assert [t.state for t in progress.context["cl"].result_list] == ["PROGRESS", "PROGRESS"]

    monkeypatch.setattr(monitor_admin.StateFilter, "max_custom_states", 1)
    assert "PROGRESS" not in state_filter(admin_client.get(TASKS))  # the first one only


def test_the_state_filter_costs_a_bounded_number_of_queries(
    admin_client, django_assert_max_num_queries, monkeypatch
):
    monkeypatch.setattr(monitor_admin.StateFilter, "few_rows", 50)  # 300 rows: a long list
    worker = make_worker()
    states = ["SUCCESS", "FAILURE", "STARTED", "RETRY"] + [f"CUSTOM{n}" for n in range(30)]
    TaskState.objects.bulk_create(
        TaskState(state=states[n % len(states)], task_id=str(uuid.uuid4()), name=f"t{n % 5}",
                  tstamp=timezone.now(), worker=worker)
        for n in range(300)
    )  # fmt: skip
    admin_client.get(TASKS)  # warm the session and content type caches

    for params in ({}, {"state": "SUCCESS"}, {"name": "t1", "q": "t"}, {"state": "CUSTOM7"}):
        # The session, the user, the filters' choices, the search's lookups, the count, the
        # rows, the dates: the same few statements whatever the rows.
        with django_assert_max_num_queries(14) as queries:
            response = admin_client.get(TASKS, params)
        offered = state_filter(response)
        # Celery's 8 states and the first 20 custom ones, and the one chosen if not among them.
        assert len(offered) == 8 + 20 + (params == {"state": "CUSTOM7"})
        assert params.get("state", "SUCCESS") in offered
        counting = [q["sql"] for q in queries.captured_queries if "cm_count_" in q["sql"]]
        assert len(counting) == 1, counting  # one statement for every state
        assert counting[0].count("LIMIT") == len(offered), counting[0]  # each count capped


def test_filter_by_worker_and_name(admin_client):
    w1, w2 = make_worker("w1@test"), make_worker("w2@test")
    a = make_task(worker=w1, name="tests.tasks.add")
    b = make_task(worker=w2, name="tests.tasks.add")
    c = make_task(worker=w2, name="tests.tasks.sleep")

    by_worker = admin_client.get(TASKS, {"worker": w2.pk}).context["cl"].result_list
    assert set(by_worker) == {b, c}
    by_name = admin_client.get(TASKS, {"name": "tests.tasks.add"}).context["cl"].result_list
    assert set(by_name) == {a, b}
    both = admin_client.get(TASKS, {"name": "tests.tasks.add", "worker": w1.pk})
    assert list(both.context["cl"].result_list) == [a]
    assert admin_client.get(TASKS, {"worker": "nope"}).url.endswith("?e=1")  # not a key


def test_clearing_the_filters_keeps_the_date_drill_down(admin_client):
    make_task(
        state="FAILURE", tstamp=datetime.datetime(2024, 5, 3, 12, tzinfo=datetime.timezone.utc)
    )
    params = {"state": "FAILURE", "tstamp__year": "2024", "tstamp__month": "5"}

    cl = admin_client.get(TASKS, params).context["cl"]

    cleared = QueryDict(cl.clear_all_filters_qs.lstrip("?"))
    assert dict(cleared.items()) == {"tstamp__year": "2024", "tstamp__month": "5"}


def test_filter_by_date_and_drill_down(admin_client):
    old = make_task(tstamp=timezone.now() - timedelta(days=30))
    new = make_task()

    cl = admin_client.get(TASKS).context["cl"]
    date_filter = next(spec for spec in cl.filter_specs if spec.title == "event received at")
    today = next(c for c in date_filter.choices(cl) if c["display"] == "Today")
    assert list(admin_client.get(TASKS + today["query_string"]).context["cl"].result_list) == [new]

    stamp = timezone.localtime(old.tstamp)
    params = {"tstamp__year": stamp.year, "tstamp__month": stamp.month, "tstamp__day": stamp.day}
    response = admin_client.get(TASKS, params)
    assert list(response.context["cl"].result_list) == [old]
    html = admin_client.get(TASKS).content.decode()
    assert 'class="toplinks"' in html


@pytest.mark.parametrize("parts", [("year",), ("year", "month"), ("year", "month", "day")])
def test_the_date_drill_down_reads_a_range_of_the_local_time(admin_client, parts):
    # Just after midnight in Berlin on the 1st of January: the day before in UTC.
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    inside = make_task(tstamp=datetime.datetime(2025, 1, 1, 0, 30, tzinfo=berlin))
    make_task(tstamp=datetime.datetime(2024, 12, 31, 23, 30, tzinfo=berlin))
    make_task(tstamp=datetime.datetime(2026, 1, 1, 0, 30, tzinfo=berlin))
    if len(parts) > 1:
        make_task(tstamp=datetime.datetime(2025, 2, 1, 0, 30, tzinfo=berlin))
    if len(parts) > 2:
        make_task(tstamp=datetime.datetime(2025, 1, 2, 0, 30, tzinfo=berlin))
    params = {f"tstamp__{part}": {"year": 2025, "month": 1, "day": 1}[part] for part in parts}

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(TASKS, params)

    assert list(response.context["cl"].result_list) == [inside]
    listed = [q["sql"] for q in queries if 'FROM "celery_monitor_taskstate"' in q["sql"]]
    listed += [q["sql"] for q in queries if "FROM `celery_monitor_taskstate`" in q["sql"]]
    assert listed
    for sql in listed:
        assert "extract" not in sql.lower(), sql


def some_tasks_of_several_states():
    """Tasks of five states, some at the same time, of two names."""
    start = timezone.now() - timedelta(hours=1)
    states_ = ["SUCCESS", "FAILURE", "STARTED", "RETRY", "PROGRESS"]
    for n in range(40):
        make_task(
            state=states_[(n * 7) % 5 if n % 3 else 0],
            name=f"tests.tasks.n{n % 2}",
            tstamp=start + timedelta(seconds=n // 4),  # four tasks a second: ties
        )


@pytest.mark.parametrize(
    "ordering",
    [
        ("state", "-tstamp", "-pk"),
        ("-state", "-tstamp", "-pk"),
        ("state", "tstamp", "pk"),
        ("-state", "tstamp", "-pk"),
        ("-state", "-tstamp", "-tstamp", "-pk"),
    ],
)
def test_a_page_sorted_by_state_is_read_a_state_at_a_time_in_the_same_order(ordering):
    from django_celery_monitor.admin.queries import value_page

    some_tasks_of_several_states()
    for queryset in (
        TaskState.objects.filter(hidden=False),
        TaskState.objects.filter(hidden=False, name="tests.tasks.n1"),
        TaskState.objects.filter(hidden=False, state="FAILURE"),
        TaskState.objects.filter(name="nothing"),
    ):
        ordered = queryset.order_by(*ordering)
        everything = list(ordered.values_list("pk", flat=True))
        for bottom, top in [(0, 3), (0, 100), (2, 9), (5, 21), (17, 18), (30, 60), (45, 50)]:
            page = value_page(ordered, "state", bottom, top)
            assert page is not None
            assert [task.pk for task in page] == everything[bottom:top], (bottom, top)


def test_a_page_sorted_otherwise_is_left_to_the_database():
    from django_celery_monitor.admin.queries import value_page

    tasks = TaskState.objects.all()
    assert value_page(tasks.order_by("-tstamp", "-pk"), "state", 0, 10) is None
    assert value_page(tasks.order_by("state", "name"), "state", 0, 10) is None
    assert value_page(tasks.order_by("state", "-tstamp")[:5], "state", 0, 10) is None
    assert value_page(tasks.order_by("name", "-pk"), "name", 0, 10) is None  # nullable


@pytest.mark.parametrize("order", ["1.-4", "-1.-4", "1.4", "-1.4"])
def test_the_list_sorted_by_state_shows_the_rows_in_that_order(admin_client, order):
    some_tasks_of_several_states()
    first, *_rest = order.split(".")
    by_time = "tstamp" if order.endswith(".4") else "-tstamp"
    state = "-state" if first.startswith("-") else "state"
    for params, rows in [
        ({}, TaskState.objects.all()),
        ({"name": "tests.tasks.n0"}, TaskState.objects.filter(name="tests.tasks.n0")),
    ]:
        expected = list(rows.order_by(state, by_time, "-pk").values_list("pk", flat=True))
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(TASKS, {"o": order, **params})
        assert [task.pk for task in response.context["cl"].result_list] == expected
        assert any("UNION ALL" in query["sql"] for query in queries)


def test_a_column_the_list_does_not_sort_by_is_not_sorted_by_from_the_query_string(
    admin_client,
):
    # The later event first, though its row was made first (the key's order is not the list's).
    later = make_task(worker=make_worker("b@test"), tstamp=timezone.now())
    earlier = make_task(worker=make_worker("a@test"), tstamp=timezone.now() - timedelta(hours=1))

    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(TASKS, {"o": "5"})  # the worker's column

    assert list(response.context["cl"].result_list) == [later, earlier]
    assert list(admin_client.get(TASKS, {"o": "2"}).context["cl"].result_list) == [later, earlier]
    assert not any("hostname" in q["sql"].split("ORDER BY")[-1] for q in queries)
    names = [task.name for task in admin_client.get(TASKS, {"o": "-3"}).context["cl"].result_list]
    assert names == sorted(names, reverse=True)


def test_search_by_task_id_name_and_hostname(admin_client):
    worker = make_worker("search-me@test")
    a = make_task(name="proj.tasks.alpha")
    b = make_task(name="proj.tasks.beta", worker=worker)

    assert list(admin_client.get(TASKS, {"q": a.task_id}).context["cl"].result_list) == [a]
    assert list(admin_client.get(TASKS, {"q": "proj.tasks.be"}).context["cl"].result_list) == [b]
    assert list(admin_client.get(TASKS, {"q": "search-me"}).context["cl"].result_list) == [b]
    workers = admin_client.get(WORKERS, {"q": "search"}).context["cl"].result_list
    assert list(workers) == [worker]
    workers = admin_client.get(WORKERS, {"q": "SEARCH-m"}).context["cl"].result_list
    assert list(workers) == [worker]  # whatever the case, on every database
    assert not admin_client.get(WORKERS, {"q": "me@"}).context["cl"].result_list


@pytest.mark.parametrize(
    ("max_names", "max_workers"), [(1000, 1000), (1, 1000), (1000, 1), (1000, 0)]
)
def test_search_matches_as_described_whatever_the_number_of_names(
    admin_client, monkeypatch, max_names, max_workers
):
    # With more names than MAX_SEARCH_NAMES, names are matched by prefix in the database;
    # with more workers than MAX_SEARCH_WORKERS, hostnames too, in the workers' table, and
    # when more than that many match, across the join.
    monkeypatch.setattr(monitor_admin.tasks, "MAX_SEARCH_NAMES", max_names)
    monkeypatch.setattr(monitor_admin.tasks, "MAX_SEARCH_WORKERS", max_workers)
    alpha, beta = make_worker("Alpha-1@host"), make_worker("beta-2@host")
    tasks = [
        make_task(task_id="0a1b2c3d-0000-4000-8000-000000000001", name="proj.Mail.send",
                  worker=alpha),
        make_task(task_id="0A1Bxx", name="proj.mail.batch", worker=beta),
        make_task(task_id="ffff-1", name="other.job", worker=beta),
        make_task(task_id="my-own id", name="alpha.report"),
    ]  # fmt: skip

    def found(q):
        response = admin_client.get(TASKS, {"q": q})
        assert response.status_code == 200
        return {task.task_id for task in response.context["cl"].result_list}

    def expected(q, names_fold_case=True):
        # Each word: the id starts with it (as typed or lower-cased), or the name or the
        # worker's hostname starts with it, whatever the case; every word must match.
        words = [w.strip("\"'") for w in q.split()] if '"' not in q else [q.strip('"')]

        def by_name(name, word):
            if names_fold_case:
                return name.lower().startswith(word.lower())
            return name.startswith(word) or name.startswith(word.lower())

        def matches(task, word):
            hostname = task.worker.hostname if task.worker else ""
            return (task.task_id.startswith(word) or task.task_id.startswith(word.lower())
                    or by_name(task.name or "", word)
                    or hostname.lower().startswith(word.lower()))  # fmt: skip

        return {t.task_id for t in tasks if all(matches(t, w) for w in words)}

    for q in ["0a1b", "0A1B", "0a1b2c3d-0000-4000-8000-000000000001", "proj.mail",
              "PROJ.MAIL.S", "alpha", "ALPHA-1", "beta proj", "beta other", "ffff",
              '"my-own id"', "my-own", "nothing-like-it", "proj.mail.batch 0a1b"]:  # fmt: skip
        if max_names > len(tasks):
            assert found(q) == expected(q), q
        else:
            # Past the limit a name matches as typed or in lower case (and whatever the case
            # where the database's collation ignores it, as MySQL's does).
            assert expected(q, names_fold_case=False) <= found(q) <= expected(q), q


@pytest.mark.parametrize("max_workers", [1000, 1, 0])
def test_a_hostname_with_letters_beyond_ascii_is_found_as_typed(
    admin_client, monkeypatch, max_workers
):
    monkeypatch.setattr(monitor_admin.tasks, "MAX_SEARCH_WORKERS", max_workers)
    accented, other = make_worker("Nöde-0@hÉ"), make_worker("node-1@host")
    task = make_task(task_id="t-accented", worker=accented)
    make_task(task_id="t-other", worker=other)
    for q in ("Nöde-0@hÉ", "nöde", "Nöde-0"):
        response = admin_client.get(TASKS, {"q": q})
        assert [t.task_id for t in response.context["cl"].result_list] == [task.task_id], q


def test_a_search_of_several_names_and_workers_pages_as_one_ordered_list(
    admin_client, monkeypatch
):
    # A page of a search matching by several indexes is read a branch at a time: each page,
    # in each order, with a filter or not, must be the page of the whole ordered list.
    import random

    from django_celery_monitor.admin import queries

    rng = random.Random(8)
    monkeypatch.setattr(monitor_admin.tasks.TaskMonitor, "list_per_page", 4)
    workers = [make_worker("mail-1@host"), make_worker("mail-2@host"), make_worker("x@host")]
    start = timezone.now() - timedelta(hours=1)
    for number in range(60):
        make_task(
            task_id=f"{rng.choice(['ma', 'b', 'c'])}{number:04d}",
            state=rng.choice(["SUCCESS", "FAILURE", "STARTED"]),
            name=rng.choice(["mail.send", "mail.batch", "Mail.digest", "other.job"]),
            worker=rng.choice([*workers, None]),
            tstamp=start + timedelta(seconds=rng.randrange(20)),  # with ties
            runtime=rng.choice([None, 0.5, 1.5]),
        )

    def pages(params):
        listed, page = [], 0
        while True:
            response = admin_client.get(TASKS, {**params, "p": page + 1})
            assert response.status_code == 200, params
            changelist = response.context["cl"]
            listed.append([task.task_id for task in changelist.result_list])
            page += 1
            if page >= changelist.paginator.num_pages:
                return listed

    branched = []
    real_page = queries.branch_page

    def spy(*args):
        rows = real_page(*args)
        branched.append(rows is not None)
        return rows

    monkeypatch.setattr(monitor_admin.lists, "branch_page", spy)
    searches = [{"q": "mail"}, {"q": "MA"}, {"q": "mail", "o": "4.-1"},
                {"q": "mail", "o": "1"}, {"q": "mail", "state": "FAILURE"},
                {"q": "other mail"}, {"q": "b mail"}]  # fmt: skip
    for params in searches:
        branched.clear()
        found = pages(params)
        assert any(branched), params  # the pages were read a branch at a time
        monkeypatch.setattr(queries, "MAX_BRANCHES", 1)  # no branches: one ordered query
        assert found == pages(params), params
        monkeypatch.setattr(queries, "MAX_BRANCHES", 16)
        assert sum(len(page) for page in found) == len({t for page in found for t in page})


def test_a_branched_search_is_paged_only_as_the_list_it_was_noted_for():
    import pickle

    from django.db.models import Q

    from django_celery_monitor.admin.queries import branch_page, with_branches

    start = timezone.now()
    for number in range(12):
        make_task(
            name=["a.one", "a.two", "b.three"][number % 3],
            tstamp=start + timedelta(seconds=number),
        )
    base = TaskState.objects.filter(hidden=False)
    branches = [Q(name="a.one"), Q(name="a.two")]
    searched = with_branches(base.filter(name__in=["a.one", "a.two"]), base, branches)
    listed = searched.order_by("-tstamp", "-pk")
    assert list(branch_page(listed, 2, 5)) == list(listed[2:5])
    # Anything done to the rows after the search: no page by branches, the plain query's.
    assert branch_page(listed.filter(state="FAILURE"), 0, 3) is None
    assert branch_page(listed.reverse(), 0, 3) is None
    assert branch_page(listed[:4], 0, 3) is None
    assert branch_page(listed.distinct(), 0, 3) is None
    assert branch_page(base.order_by("-tstamp"), 0, 3) is None  # no branches noted
    one = with_branches(base.filter(name="a.one"), base, branches[:1])
    assert branch_page(one.order_by("-tstamp"), 0, 3) is None  # one index serves it whole
    # The note keeps no queryset, which pickling would run (a cache of the list's query).
    with CaptureQueriesContext(connection) as queries:
        restored = pickle.loads(pickle.dumps(listed.query))
    assert not queries.captured_queries
    listed.query = restored
    assert list(branch_page(listed, 2, 5)) == list(listed[2:5])


# -- detail


def test_task_detail(admin_client):
    worker = make_worker()
    now = timezone.now()
    root = make_task(name="proj.root")
    root.root_id = root.task_id
    root.save()
    task = make_task(
        state="FAILURE",
        name="tests.tasks.fail",
        args="('kaput', [1, 2, 3])",
        kwargs="{'a': {'b': 1}}",
        result="ValueError('kaput')",
        exception="ValueError('kaput')",
        traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError: kaput',
        received=now - timedelta(seconds=3),
        started=now - timedelta(seconds=2),
        tstamp=now,
        runtime=1.5,
        worker=worker,
        parent_id=root.task_id,
        root_id=root.task_id,
    )
    child = make_task(name="proj.child", parent_id=task.task_id, root_id=root.task_id)

    response = admin_client.get(task_url(task))

    html = response.content.decode()
    assert response.status_code == 200
    assert '<pre class="cm-pre">(&#x27;kaput&#x27;, [1, 2, 3])</pre>' in html
    assert "{&#x27;a&#x27;: {&#x27;b&#x27;: 1}}" in html
    assert '<pre class="cm-pre cm-traceback">Traceback (most recent call last):\n' in html
    assert 'class="cm-timeline"' in html
    assert "Received" in html and "Started" in html and "Finished" in html
    assert "waited: 1.000 s" in html and "ran: 1.500 s" in html
    assert f'href="{worker_url(worker)}"' in html
    assert f'href="{task_url(root)}"' in html
    assert f'href="{task_url(child)}"' in html
    assert "cm-badge-red" in html

    root_html = admin_client.get(task_url(root)).content.decode()
    assert "this task" in root_html


def test_the_task_page_is_headed_by_its_name_and_id(admin_client):
    eta = timezone.now() + timedelta(hours=1)
    task = make_task(state="RECEIVED", name="proj.<later>", eta=eta)

    html = admin_client.get(task_url(task)).content.decode()

    assert f"<h2>proj.&lt;later&gt; {task.task_id}</h2>" in html
    # The breadcrumbs end with the same words (escaped), not with the model's str().
    crumbs = re.search(r'class="breadcrumbs">(.*?)</(?:div|ol)>', html, re.S).group(1)
    assert crumbs.rstrip().removesuffix("</li>").endswith(f"proj.&lt;later&gt; {task.task_id}")
    assert "RECEIVED" not in crumbs and "<later>" not in crumbs
    assert "Tasks</a>" in crumbs
    nameless = make_task(state="RECEIVED", name=None)
    html = admin_client.get(task_url(nameless)).content.decode()
    assert f"<h2>UNKNOWN {nameless.task_id}</h2>" in html


def test_the_task_history_page_names_the_task_as_its_page_does(admin_client):
    task = make_task(state="RECEIVED", name="proj.<later>", eta=timezone.now())
    url = reverse("admin:celery_monitor_taskstate_history", args=[task.pk])

    html = admin_client.get(url).content.decode()

    heading = f"proj.&lt;later&gt; {task.task_id}"
    assert f"<h1>Change history: {heading}</h1>" in html
    crumbs = re.search(r'class="breadcrumbs">(.*?)</(?:div|ol)>', html, re.S).group(1)
    assert f'href="{task_url(task)}">{heading}</a>' in crumbs
    assert "RECEIVED" not in crumbs and "<later>" not in html


def test_a_projects_own_task_change_form_comes_first(admin_client, settings):
    # A project that overrides the task page the way Django documents keeps its override,
    # and can extend the monitor's page.
    templates = {
        "admin/celery_monitor/taskstate/change_form.html": (
            '{% extends "admin/django_celery_monitor/task_change_form.html" %}'
            "{% block object-tools %}<p>project override</p>{{ block.super }}{% endblock %}"
        )
    }
    settings.TEMPLATES = [
        {
            **settings.TEMPLATES[0],
            "APP_DIRS": False,
            "OPTIONS": {
                **settings.TEMPLATES[0]["OPTIONS"],
                "loaders": [
                    ("django.template.loaders.locmem.Loader", templates),
                    "django.template.loaders.app_directories.Loader",
                ],
            },
        }
    ]
    task = make_task(state="RECEIVED", name="proj.add")

    html = admin_client.get(task_url(task)).content.decode()

    assert "<p>project override</p>" in html
    assert f"<h2>proj.add {task.task_id}</h2>" in html


def test_task_detail_of_a_task_whose_parent_was_not_recorded(admin_client):
    task = make_task(state="STARTED", parent_id="gone-1234", received=timezone.now())

    html = admin_client.get(task_url(task)).content.decode()

    assert "gone-1234" in html and "not recorded" in html
    assert "Last event" in html


def test_worker_detail(admin_client):
    worker = make_worker(sw_ident="py-celery", sw_ver="5.5.0", sw_sys="Linux", loadavg=[1, 2, 3])

    response = admin_client.get(worker_url(worker))

    html = response.content.decode()
    assert response.status_code == 200
    assert "py-celery" in html and "Linux" in html
    assert f"{TASKS}?worker={worker.pk}" in html
    assert readonly_field(html, "Heartbeat every") == "2 s"
    assert readonly_field(html, "Signed off") == "no"

    worker.offline, worker.freq = True, None
    worker.save()
    html = admin_client.get(worker_url(worker)).content.decode()
    assert readonly_field(html, "Signed off") == "yes: it said it was stopping (worker-offline)"
    assert readonly_field(html, "Heartbeat every") == "-"


def readonly_field(html, label):
    """The text of the read-only field ``label`` of an admin page."""
    found = re.search(
        rf"<label>{re.escape(label)}:</label>\s*<div class=\"readonly\">(.*?)</div>", html, re.S
    )
    assert found, f"no read-only field {label!r}"
    return found.group(1)


# -- permissions


TASK_ACTIONS = ["revoke_tasks", "terminate_tasks", "kill_tasks", "rate_limit_tasks", "retry_tasks"]
WORKER_ACTIONS = [
    "shutdown_nodes",
    "enable_events",
    "disable_events",
    "pool_grow",
    "pool_shrink",
    "ping_workers",
]


def action_names(response):
    return set(re.findall(r'<option value="([a-z_]+)"', response.content.decode())) - {""}


def test_view_only_staff_sees_lists_and_details_and_no_action(viewer_client):
    task, worker = make_task(), make_worker()

    tasks_page = viewer_client.get(TASKS)
    workers_page = viewer_client.get(WORKERS)

    assert tasks_page.status_code == workers_page.status_code == 200
    assert action_names(tasks_page) == set()
    assert action_names(workers_page) == set()
    assert 'name="action"' not in tasks_page.content.decode()
    assert viewer_client.get(task_url(task)).status_code == 200
    assert viewer_client.get(worker_url(worker)).status_code == 200


@pytest.mark.parametrize("action", TASK_ACTIONS)
def test_view_only_staff_cannot_post_a_task_action(viewer_client, celery, action):
    task = make_task()

    response = post_action(viewer_client, TASKS, action, [task], rate_limit="1/s", apply="yes")

    assert response.status_code == 200
    assert not LogEntry.objects.exists()
    assert not any("acknowledged" in m or "answered" in m for m in messages_of(response))


@pytest.mark.parametrize("action", WORKER_ACTIONS)
def test_view_only_staff_cannot_post_a_worker_action(viewer_client, celery, action):
    worker = make_worker()

    response = post_action(viewer_client, WORKERS, action, [worker])

    assert response.status_code == 200
    assert not LogEntry.objects.exists()
    assert not any("answered" in m or "sent" in m for m in messages_of(response))


@pytest.mark.parametrize(
    ("codename", "model", "expected"),
    [
        ("revoke_taskstate", "task", {"revoke_tasks", "terminate_tasks", "kill_tasks"}),
        ("rate_limit_taskstate", "task", {"rate_limit_tasks"}),
        ("retry_taskstate", "task", {"retry_tasks"}),
        ("control_workerstate", "worker", set(WORKER_ACTIONS)),
    ],
)
def test_each_permission_shows_its_actions(client, django_user_model, codename, model, expected):
    client.force_login(staff(django_user_model, *VIEW, codename))

    response = client.get(TASKS if model == "task" else WORKERS)

    assert action_names(response) == expected


def test_revoke_permission_does_not_allow_the_rate_limit(client, django_user_model, celery):
    client.force_login(staff(django_user_model, *VIEW, "revoke_taskstate"))
    task = make_task()

    response = post_action(client, TASKS, "rate_limit_tasks", [task])

    assert "rate_limit" not in response.content.decode().split("<select")[0]
    assert not LogEntry.objects.exists()


# -- actions, with a real broker and no worker listening


def unanswered(command: str, count: int) -> str:
    """What a revoke, terminate or kill that no worker answered says."""
    from django_celery_monitor.control import reply_timeout

    noun = "task" if count == 1 else "tasks"
    return (
        f"{command} sent for {count} {noun}, but no worker answered in {reply_timeout():g} s: "
        "nothing says it was applied. A worker that reads it later applies it then."
    )


@pytest.mark.parametrize(
    ("action", "command"),
    [
        ("revoke_tasks", "Revoke"),
        ("terminate_tasks", "Terminate (SIGTERM)"),
        ("kill_tasks", "Kill (SIGKILL)"),
    ],
)
def test_revoke_actions_no_worker_answered(
    client, django_user_model, redis_url, celery, action, command
):
    """Sent, but not acknowledged: neither the message nor the history says it was done
    (a worker that is away, or whose full pool blocks its main loop, reads it later)."""
    user = staff(django_user_model, *VIEW, "revoke_taskstate")
    client.force_login(user)
    tasks = [make_task("RECEIVED"), make_task("STARTED")]

    response = post_action(client, TASKS, action, tasks)

    log = f"{command} sent; no worker answered"
    told = [unanswered(command, 2)]
    if action == "revoke_tasks":  # a revoke does not stop the one that runs
        told.append(
            "1 of them had started: a revoked task that runs goes on to its end. "
            "Terminate stops it (not in a solo or threads pool)."
        )
    assert messages_of(response) == told
    assert levels_of(response) == ["warning"] * len(told)
    entries = LogEntry.objects.filter(user=user, action_flag=CHANGE)
    assert sorted(int(e.object_id) for e in entries) == sorted(t.pk for t in tasks)
    assert {e.change_message for e in entries} == {log}


def test_revoke_one_task_says_task(admin_client, redis_url, celery):
    response = post_action(admin_client, TASKS, "revoke_tasks", [make_task("RECEIVED")])

    assert messages_of(response) == [unanswered("Revoke", 1)]


def test_revoking_running_tasks_says_they_go_on(admin_client, redis_url, celery):
    tasks = [make_task("STARTED"), make_task("STARTED"), make_task("RETRY")]

    response = post_action(admin_client, TASKS, "revoke_tasks", tasks)

    assert messages_of(response) == [
        unanswered("Revoke", 3),
        "2 of them had started: a revoked task that runs goes on to its end. "
        "Terminate stops them (not in a solo or threads pool).",
    ]


def test_revoking_the_one_task_that_runs_says_it_goes_on(admin_client, redis_url, celery):
    response = post_action(admin_client, TASKS, "revoke_tasks", [make_task("STARTED")])

    assert messages_of(response) == [
        unanswered("Revoke", 1),
        "The task had started: a revoked task that runs goes on to its end. "
        "Terminate stops it (not in a solo or threads pool).",
    ]


@pytest.fixture
def revoke_calls(celery, monkeypatch):
    """The task ids each revoke sends to the broker (a real one, with no worker listening)."""
    calls = []
    revoke = monitor_admin.control.revoke

    def spy(task_ids, **kwargs):
        calls.append(sorted(task_ids))
        spy.expected.append(kwargs.get("expected"))
        return revoke(task_ids, **kwargs)

    spy.expected = []
    monkeypatch.setattr(monitor_admin.control, "revoke", spy)
    return calls


@pytest.mark.parametrize("action", ["revoke_tasks", "terminate_tasks", "kill_tasks"])
def test_revoking_a_finished_task_says_so(admin_client, redis_url, revoke_calls, action):
    task = make_task("SUCCESS")

    response = post_action(admin_client, TASKS, action, [task])

    assert messages_of(response) == [
        f"Task {task.task_id[:8]}… already SUCCESS; nothing to revoke."
    ]
    assert levels_of(response) == ["info"]
    assert revoke_calls == []
    assert not LogEntry.objects.exists()


def test_revoking_finished_tasks_counts_them_by_state(admin_client, redis_url, revoke_calls):
    tasks = [make_task("SUCCESS"), make_task("FAILURE"), make_task("SUCCESS")]

    response = post_action(admin_client, TASKS, "revoke_tasks", tasks)

    assert messages_of(response) == [
        "3 tasks had already finished (2 SUCCESS, 1 FAILURE); nothing to revoke for them."
    ]
    assert revoke_calls == []
    assert not LogEntry.objects.exists()


def test_revoking_finished_and_unfinished_tasks(admin_client, redis_url, revoke_calls):
    waiting, running = make_task("RECEIVED"), make_task("STARTED")
    done = [make_task("SUCCESS"), make_task("REVOKED")]

    response = post_action(admin_client, TASKS, "kill_tasks", [waiting, running, *done])

    assert messages_of(response) == [
        unanswered("Kill (SIGKILL)", 2),
        "2 tasks had already finished (1 REVOKED, 1 SUCCESS); nothing to revoke for them.",
    ]
    assert levels_of(response) == ["warning", "info"]
    assert revoke_calls == [sorted([waiting.task_id, running.task_id])]
    # No worker is online: the replies are awaited for the whole timeout.
    assert monitor_admin.control.revoke.expected == [None]
    logged = LogEntry.objects.values_list("object_id", flat=True)
    assert sorted(logged) == sorted([str(waiting.pk), str(running.pk)])


def test_revoking_awaits_as_many_replies_as_workers_online(admin_client, redis_url, revoke_calls):
    make_worker("w1@test"), make_worker("w2@test"), make_worker("gone@test", alive=False)

    post_action(admin_client, TASKS, "revoke_tasks", [make_task("RECEIVED")])

    assert monitor_admin.control.revoke.expected == [2]


def test_revoking_finished_tasks_needs_no_broker(admin_client, broker_down):
    response = post_action(admin_client, TASKS, "terminate_tasks", [make_task("FAILURE")])

    assert levels_of(response) == ["info"]
    assert messages_of(response)[0].endswith("already FAILURE; nothing to revoke.")
    assert not LogEntry.objects.exists()


def test_revoking_with_the_broker_down_still_tells_about_the_finished_tasks(
    admin_client, broker_down
):
    tasks = [make_task("STARTED"), make_task("SUCCESS")]

    response = post_action(admin_client, TASKS, "revoke_tasks", tasks)

    assert levels_of(response) == ["error", "info"]
    assert messages_of(response)[0].startswith("Could not reach the message broker")
    assert not LogEntry.objects.exists()


def test_rate_limit_asks_for_confirmation_then_applies(
    client, django_user_model, redis_url, celery
):
    user = staff(django_user_model, *VIEW, "rate_limit_taskstate")
    client.force_login(user)
    tasks = [
        make_task(name="tests.tasks.add"),
        make_task(name="tests.tasks.add"),
        make_task(name="tests.tasks.sleep"),
    ]

    confirm = post_action(client, TASKS, "rate_limit_tasks", tasks)

    assert confirm.templates[0].name == "django_celery_monitor/confirm_rate_limit.html"
    html = confirm.content.decode()
    assert "tests.tasks.add" in html and "tests.tasks.sleep" in html
    assert 'name="rate_limit"' in html
    assert not LogEntry.objects.exists()

    data = {"action": "rate_limit_tasks", "_selected_action": [t.pk for t in tasks]}
    invalid = client.post(TASKS, {**data, "apply": "yes", "rate_limit": "fast"})
    assert invalid.status_code == 200
    assert "Enter a number" in invalid.content.decode()
    assert not LogEntry.objects.exists()

    done = client.post(TASKS, {**data, "apply": "yes", "rate_limit": "10/m"}, follow=True)

    assert messages_of(done) == ["Rate limit set to 10/m for 2 task types; no worker answered."]
    entries = LogEntry.objects.filter(user=user)
    assert sorted(entries.values_list("object_id", "change_message")) == sorted(
        [
            (str(tasks[0].pk), "Rate limit set to 10/m for tests.tasks.add (no answer)"),
            (str(tasks[1].pk), "Rate limit set to 10/m for tests.tasks.add (no answer)"),
            (str(tasks[2].pk), "Rate limit set to 10/m for tests.tasks.sleep (no answer)"),
        ]
    )


def test_retry_sends_the_task_again(client, django_user_model, redis_url, celery, monkeypatch):
    user = staff(django_user_model, *VIEW, "retry_taskstate")
    client.force_login(user)
    sent = []
    monkeypatch.setattr(
        celery, "send_task", lambda name, **kw: sent.append((name, kw)) or _Result()
    )
    good = make_task("FAILURE", name="tests.tasks.add", args="(2, 3)", kwargs="{}")
    cut = make_task("FAILURE", name="tests.tasks.add", args="('" + "x" * 40 + "...", kwargs="{}")

    response = post_action(client, TASKS, "retry_tasks", [good, cut])

    assert [(name, kw["args"], kw["kwargs"]) for name, kw in sent] == [
        ("tests.tasks.add", (2, 3), {})
    ]
    msgs = messages_of(response)
    assert msgs[0] == "Sent 1 task again."
    assert msgs[1].startswith(f"1 task could not be sent again: {cut.task_id}: ")
    assert "cut short" in msgs[1]
    assert list(LogEntry.objects.values_list("object_id", flat=True)) == [str(good.pk)]


class _Result:
    id = "new-id"


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("enable_events", "Events enabled: 0 of 2 workers answered."),
        ("disable_events", "Events disabled: 0 of 2 workers answered."),
        ("pool_grow", "Pool grown: 0 of 2 workers answered."),
        ("pool_shrink", "Pool shrunk: 0 of 2 workers answered."),
        ("ping_workers", "0 of 2 workers answered: no answer from a@test, b@test."),
        ("shutdown_nodes", "Shutdown sent to 2 workers."),
    ],
)
def test_worker_actions(client, django_user_model, redis_url, celery, action, message):
    user = staff(django_user_model, *VIEW, "control_workerstate")
    client.force_login(user)
    workers = [make_worker("a@test"), make_worker("b@test")]

    response = post_action(client, WORKERS, action, workers)

    assert messages_of(response) == [message]
    assert LogEntry.objects.filter(user=user).count() == 2


# -- the admin history names each action


def history(client, obj):
    """The rows of an object's History page: (user, action) as the page shows them."""
    opts = obj._meta
    url = reverse(f"admin:{opts.app_label}_{opts.model_name}_history", args=[obj.pk])
    response = client.get(url)
    assert response.status_code == 200
    rows = re.findall(
        r"<tr>\s*<th scope=\"row\">[^<]*</th>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>",
        response.content.decode(),
    )
    return [(user.strip(), unescape(action).strip()) for user, action in rows]


@pytest.mark.parametrize(
    ("action", "words"),
    [
        ("revoke_tasks", "Revoke sent; no worker answered"),
        ("terminate_tasks", "Terminate (SIGTERM) sent; no worker answered"),
        ("kill_tasks", "Kill (SIGKILL) sent; no worker answered"),
    ],
)
def test_the_history_of_a_task_names_the_revoke(
    client, django_user_model, redis_url, celery, action, words
):
    # Only the permissions to see tasks and to revoke them: the history is theirs to read.
    client.force_login(staff(django_user_model, *VIEW, "revoke_taskstate"))
    task = make_task("STARTED")
    post_action(client, TASKS, action, [task])

    assert history(client, task) == [("staff", words)]
    detail = client.get(task_url(task)).content.decode()
    history_url = reverse("admin:celery_monitor_taskstate_history", args=[task.pk])
    assert f'<a href="{history_url}" class="historylink">History</a>' in detail


def test_the_history_of_a_task_names_the_rate_limit(client, django_user_model, redis_url, celery):
    client.force_login(staff(django_user_model, *VIEW, "rate_limit_taskstate"))
    task = make_task(name="tests.tasks.add")
    data = {"action": "rate_limit_tasks", "_selected_action": [task.pk], "apply": "yes"}
    client.post(TASKS, {**data, "rate_limit": "10/m"})

    assert history(client, task) == [
        ("staff", "Rate limit set to 10/m for tests.tasks.add (no answer)")
    ]


def test_the_history_of_a_task_names_the_new_task(
    client, django_user_model, redis_url, celery, monkeypatch
):
    client.force_login(staff(django_user_model, *VIEW, "retry_taskstate"))
    monkeypatch.setattr(celery, "send_task", lambda name, **kw: _Result())
    task = make_task("FAILURE", args="(2, 3)", kwargs="{}")
    post_action(client, TASKS, "retry_tasks", [task])

    assert history(client, task) == [("staff", "Sent again as new-id")]


@pytest.mark.parametrize(
    ("action", "words"),
    [
        ("shutdown_nodes", "Shut down"),
        ("enable_events", "Events enabled (no answer)"),
        ("disable_events", "Events disabled (no answer)"),
        ("pool_grow", "Pool grown by 1 (no answer)"),
        ("pool_shrink", "Pool shrunk by 1 (no answer)"),
        ("ping_workers", "Pinged (no answer)"),
    ],
)
def test_the_history_of_a_worker_names_the_action(
    client, django_user_model, redis_url, celery, action, words
):
    client.force_login(staff(django_user_model, *VIEW, "control_workerstate"))
    worker = make_worker("a@test")
    post_action(client, WORKERS, action, [worker])

    assert history(client, worker) == [("staff", words)]


@pytest.mark.parametrize(
    ("action", "call", "replies", "words"),
    [
        ("ping_workers", "ping", {"a@test": 3.2}, "Pinged (answered in 3.2 ms)"),
        ("enable_events", "enable_events", {"a@test": {"ok": "events enabled"}}, "Events enabled"),
        ("pool_grow", "pool_grow", {"a@test": {"ok": "pool will grow"}}, "Pool grown by 1"),
    ],
)
def test_the_history_says_which_workers_answered(
    admin_client, celery, monkeypatch, action, call, replies, words
):
    monkeypatch.setattr(monitor_admin.control, call, lambda hostnames, **kw: replies)
    answered, silent = make_worker("a@test"), make_worker("b@test")
    post_action(admin_client, WORKERS, action, [answered, silent])

    assert history(admin_client, answered) == [("admin", words)]
    assert history(admin_client, silent)[0][1].endswith("(no answer)")


# -- the broker is down


@pytest.mark.parametrize("action", TASK_ACTIONS)
def test_task_actions_with_the_broker_down(admin_client, broker_down, action):
    task = make_task("STARTED", args="(1, 2)", kwargs="{}")
    data = {"rate_limit": "1/s", "apply": "yes"} if action == "rate_limit_tasks" else {}
    if data:
        data["_selected_action"] = [task.pk]
        response = admin_client.post(TASKS, {"action": action, **data}, follow=True)
    else:
        response = post_action(admin_client, TASKS, action, [task])

    assert response.status_code == 200
    assert levels_of(response) == ["error"]
    assert messages_of(response)[0].startswith("Could not reach the message broker")
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize("action", WORKER_ACTIONS)
def test_worker_actions_with_the_broker_down(admin_client, broker_down, action):
    response = post_action(admin_client, WORKERS, action, [make_worker()])

    assert response.status_code == 200
    assert levels_of(response) == ["error"]
    assert not LogEntry.objects.exists()


# -- a real worker answers


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_actions_reach_a_real_worker(admin_client, celery, celery_worker):
    node = celery_worker("admin-1@test")
    worker = make_worker(node.hostname)

    ping = post_action(admin_client, WORKERS, "ping_workers", [worker])
    assert re.fullmatch(
        r"1 of 1 worker answered: admin-1@test in \d+\.\d ms\.", messages_of(ping)[0]
    )
    events = post_action(admin_client, WORKERS, "enable_events", [worker])
    assert messages_of(events) == ["Events enabled: 1 of 1 worker answered."]
    revoke = post_action(admin_client, TASKS, "revoke_tasks", [make_task("RECEIVED")])
    assert messages_of(revoke) == ["Revoked 1 task; 1 worker acknowledged."]


# -- escaping


@pytest.mark.parametrize("payload", XSS)
def test_every_page_escapes_recorded_values(admin_client, payload):
    worker = make_worker(payload, sw_ver=payload, sw_ident=payload, sw_sys=payload)
    parent = make_task(name=payload)
    task = make_task(
        state="FAILURE",
        name=payload,
        args=payload,
        kwargs=payload,
        result=payload,
        exception=payload,
        traceback=payload,
        worker=worker,
        parent_id=parent.task_id,
        root_id=payload,
    )
    make_task(name=payload, parent_id=task.task_id, args=repr((payload,)))
    pages = [
        TASKS,
        TASKS + "?name=" + payload,
        TASKS + "?q=" + payload,
        task_url(task),
        task_url(parent),
        WORKERS,
        worker_url(worker),
    ]
    for url in pages:
        html = admin_client.get(url).content.decode()
        assert "<script>alert(1)" not in html, url
        assert "<img src=x" not in html, url
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html or "&lt;img src=x" in html, url


def test_messages_escape_hostnames(admin_client, redis_url, celery):
    make_worker(XSS[0])

    response = post_action(admin_client, WORKERS, "ping_workers", list(WorkerState.objects.all()))

    html = response.content.decode()
    assert "<script>alert(1)" not in html
    assert "no answer from &lt;script&gt;alert(1)&lt;/script&gt;" in html


# -- query cost


def test_the_task_list_counts_a_bounded_number_of_rows(admin_client, settings):
    worker = make_worker()
    TaskState.objects.bulk_create(
        TaskState(state="SUCCESS", task_id=str(uuid.uuid4()), name=f"t{n % 5}",
                  tstamp=timezone.now(), worker=worker)
        for n in range(120)
    )  # fmt: skip
    admin_client.get(TASKS)  # warm the session and content type caches

    for params in ({}, {"state": "SUCCESS"}, {"q": "t1"}, {"p": "1"}, {"name": "t2"}):
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(TASKS, params)
        assert response.status_code == 200
        sql = [q["sql"].upper() for q in queries.captured_queries]
        assert len(sql) <= 13, sql  # whatever the rows (see above)
        assert not [s for s in sql if "DISTINCT" in s], sql
        counts = [s for s in sql if "COUNT(" in s]
        assert counts, sql
        for statement in counts:
            assert "LIMIT" in statement, statement


def test_the_count_is_capped(admin_client, monkeypatch):
    monkeypatch.setattr(monitor_admin.CappedPaginator, "cap", 60)
    TaskState.objects.bulk_create(
        TaskState(state="SUCCESS", task_id=str(uuid.uuid4()), tstamp=timezone.now())
        for _ in range(70)
    )

    response = admin_client.get(TASKS)

    assert response.context["cl"].result_count == 60
    assert "More than 60 match" in response.content.decode()


CRAFTED_TASK_PARAMS = [
    {"tstamp__year": "2026", "tstamp__month": "13", "tstamp__day": "1"},
    {"tstamp__year": "2026", "tstamp__month": "2", "tstamp__day": "31"},
    {"tstamp__year": "0"},
    {"tstamp__year": "1"},
    {"tstamp__year": "99999"},
    {"tstamp__year": "abc"},
    {"tstamp__year": "2026", "tstamp__day": "3"},
    {"tstamp__month": "5"},
    {"tstamp__gte": "garbage"},
    {"tstamp__lt": "2026-13-01"},
    {"state": "\x00"},
    {"state": "S" * 5000},
    {"worker": "abc"},
    {"worker": "9" * 40},
    {"name": "n" * 5000},
    {"q": "\x00"},
    {"q": "abc\x00def", "state": "SUCCESS"},
    {"name": "\x00"},
    {"tstamp__gte": "2026-01-01\x00"},
    {"o": "abc"},
    {"o": "99"},
    {"o": "-1.2.x"},
    {"p": "-1"},
    {"p": "abc"},
    {"p": "99999999999999999999"},
    {"all": "x"},
    {"hidden": "maybe"},
    {"retries__gt": "many"},
    {"_changelist_filters": "state=%00"},
    # Year 1 in the project's time zone (east of UTC) is before year 1 in UTC.
    {"tstamp__gte": "0001-01-01"},
    {"tstamp__lt": "0001-01-01 00:00:00"},
    {"tstamp": "0001-01-01 00:30:00"},
    {"last_heartbeat__gte": "0001-01-01"},
    {"tstamp__gte": "not a date"},
    {"tstamp__in": "2026-01-01 00:00:00,0001-01-01 00:00:00"},
    {"received__year": "0"},
    {"received__year": "1"},
    {"started__year": "10000"},
    {"q": " ".join(["a"] * 1000)},
]


@pytest.mark.parametrize("params", CRAFTED_TASK_PARAMS)
def test_crafted_query_parameters_never_make_a_server_error(admin_client, params):
    make_task(tstamp=timezone.now())
    for url in (TASKS, WORKERS):
        response = admin_client.get(url, params)
        assert response.status_code in (200, 302, 404), (url, params, response.status_code)
        if response.status_code == 302:
            assert response.url.endswith("?e=1")


@pytest.mark.parametrize(
    "query", ["q=%ED%A0%80", "state=%FF%FE", "tstamp__year=%ED%A0%80", "name=%C0%AF"]
)
def test_query_strings_that_are_not_utf_8_never_make_a_server_error(admin_client, query):
    for url in (TASKS, WORKERS):
        response = admin_client.get(f"{url}?{query}")
        assert response.status_code in (200, 302), (url, query)


@pytest.mark.parametrize("pk", ["abc", "0", "9" * 30, "-1", "%00"])
def test_crafted_detail_urls_never_make_a_server_error(admin_client, pk):
    for name in ("taskstate", "workerstate"):
        response = admin_client.get(f"/admin/celery_monitor/{name}/{pk}/change/")
        assert response.status_code in (302, 404)


def test_the_task_list_leaves_out_what_the_expiry_hid(admin_client):
    shown = make_task(task_id="shown-task")
    hidden = make_task(task_id="hidden-task", hidden=True)
    page = admin_client.get(TASKS).content.decode()
    assert shown.task_id[:8] in page
    assert hidden.task_id[:8] not in page
    assert admin_client.get(TASKS, {"q": hidden.task_id}).context["cl"].result_count == 0


def test_lost_tasks_are_marked_and_filtered(admin_client):
    lost = make_task(state="STARTED", lost=True, task_id="lost-task-0001")
    make_task(state="STARTED", task_id="running-task-01")
    response = admin_client.get(TASKS, {"lost": "1"})
    assert [row.pk for row in response.context["cl"].result_list] == [lost.pk]
    assert 'class="cm-lost"' in response.content.decode()
    assert admin_client.get(TASKS, {"lost": "0"}).context["cl"].result_count == 1


@pytest.mark.parametrize(
    ("url", "action", "make"),
    [
        (TASKS, "revoke_tasks", lambda: make_task("STARTED")),
        (TASKS, "kill_tasks", lambda: make_task("STARTED")),
        (WORKERS, "shutdown_nodes", lambda: make_worker()),
    ],
)
def test_control_actions_require_the_csrf_token(
    admin_user, celery, monkeypatch, url, action, make
):
    from django.test import Client

    from django_celery_monitor import control

    sent = []
    for name in ("revoke", "shutdown"):
        monkeypatch.setattr(control, name, lambda *args, **kwargs: sent.append(args) or {})
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    response = client.post(url, {"action": action, "index": "0", "_selected_action": [make().pk]})
    assert response.status_code == 403
    assert sent == [] and not LogEntry.objects.exists()


def test_a_search_takes_up_to_twenty_words(admin_client):
    from django_celery_monitor.admin.queries import MAX_SEARCH_WORDS

    task = make_task(name="proj.tasks.alpha")
    words = " ".join([task.task_id[:8]] * MAX_SEARCH_WORDS)
    for url, found in ((TASKS, [task]), (WORKERS, [])):
        assert list(admin_client.get(url, {"q": words}).context["cl"].result_list) == found
        response = admin_client.get(url, {"q": f"{words} more"})
        assert response.status_code == 302 and response.url.endswith("?e=1")


def test_a_date_filter_is_read_in_the_projects_time_zone_whatever_zone_is_active(admin_client):
    """Django reads a naive time in the project's time zone (not the active one): year 1
    in Berlin is before year 1 in UTC, even while UTC is active."""
    from django.utils import timezone as tz

    make_task(tstamp=timezone.now())
    with tz.override(zoneinfo.ZoneInfo("UTC")):
        response = admin_client.get(TASKS, {"tstamp__gte": "0001-01-01"})
    assert response.status_code == 302 and response.url.endswith("?e=1")


def test_a_time_with_a_zone_without_use_tz_is_refused(admin_client, settings):
    settings.USE_TZ = False
    response = admin_client.get(TASKS, {"tstamp__gte": "2026-01-01T00:00:00+01:00"})
    assert response.status_code == 302 and response.url.endswith("?e=1")
    assert admin_client.get(TASKS, {"tstamp__gte": "2026-01-01 00:00:00"}).status_code == 200


def test_the_workers_autocomplete_answers_a_search_of_too_many_words(admin_client):
    worker = make_worker("auto@test")
    url = reverse("admin:autocomplete")
    params = {"app_label": "celery_monitor", "model_name": "taskstate", "field_name": "worker"}
    found = admin_client.get(url, {**params, "term": "auto"})
    assert [r["id"] for r in found.json()["results"]] == [str(worker.pk)]
    response = admin_client.get(url, {**params, "term": " ".join(["auto"] * 21)})
    assert response.status_code == 200 and response.json()["results"] == []


# -- what the workers answered: refusals are not acknowledgements


def test_a_worker_that_refuses_a_pool_grow_is_said_to(admin_client, celery, monkeypatch):
    replies = {
        "a@test": {"ok": "pool will grow"},
        "b@test": {"error": "AttributeError(\"'TaskPool' object has no attribute 'grow'\")"},
    }
    monkeypatch.setattr(monitor_admin.control, "pool_grow", lambda hostnames, **kw: replies)
    grown, refusing = make_worker("a@test"), make_worker("b@test")
    response = post_action(admin_client, WORKERS, "pool_grow", [grown, refusing])

    assert levels_of(response) == ["warning"]
    assert messages_of(response) == [
        "Pool grown: 2 of 2 workers answered. 1 refused "
        "(b@test: 'TaskPool' object has no attribute 'grow')."
    ]
    assert history(admin_client, grown) == [("admin", "Pool grown by 1")]
    assert history(admin_client, refusing) == [
        ("admin", "Pool grown by 1: refused ('TaskPool' object has no attribute 'grow')")
    ]


def test_a_rate_limit_of_an_unknown_task_is_a_refusal(admin_client, celery, monkeypatch):
    make_worker("a@test"), make_worker("b@test"), make_worker("gone@test", alive=False)
    expecting = []

    def rate_limits(names, rate, expected=None, **kwargs):
        expecting.append(expected)
        return {
            "proj.known": {"a@test": {"ok": "new rate limit set successfully"}},
            "proj.unknown": {"a@test": {"error": "unknown task"}},
        }

    monkeypatch.setattr(monitor_admin.control, "rate_limits", rate_limits)
    known, unknown = make_task(name="proj.known"), make_task(name="proj.unknown")
    data = {"action": "rate_limit_tasks", "_selected_action": [known.pk, unknown.pk]}
    response = admin_client.post(
        TASKS, {**data, "apply": "yes", "rate_limit": "10/m"}, follow=True
    )

    assert levels_of(response) == ["warning"]
    assert messages_of(response) == [
        "Rate limit set to 10/m for 2 task types; 1 worker acknowledged. "
        "1 refused (a@test (proj.unknown): unknown task)."
    ]
    # Sent to every worker, the replies are awaited until the two online answered.
    assert expecting == [2]
    assert history(admin_client, known) == [("admin", "Rate limit set to 10/m for proj.known")]
    assert history(admin_client, unknown) == [
        ("admin", "Rate limit 10/m for proj.unknown: refused (unknown task)")
    ]


def test_a_rate_limit_of_too_many_task_types_is_refused(admin_client, celery, monkeypatch):
    from django_celery_monitor.admin.helpers import MAX_RATE_LIMIT_NAMES

    sent = []
    monkeypatch.setattr(monitor_admin.control, "rate_limits", lambda *a, **k: sent.append(a))
    tasks = [make_task(name=f"proj.t{i}") for i in range(MAX_RATE_LIMIT_NAMES + 1)]
    data = {"action": "rate_limit_tasks", "_selected_action": [t.pk for t in tasks]}
    response = admin_client.post(
        TASKS, {**data, "apply": "yes", "rate_limit": "10/m"}, follow=True
    )

    assert levels_of(response) == ["error"]
    assert "of 21 task types" in messages_of(response)[0]
    assert sent == [] and not LogEntry.objects.exists()


def test_a_worker_action_on_too_many_workers_is_refused(admin_client, celery, monkeypatch):
    from django_celery_monitor.admin.helpers import MAX_ACTION_WORKERS

    sent = []
    monkeypatch.setattr(monitor_admin.control, "ping", lambda *a, **k: sent.append(a))
    WorkerState.objects.bulk_create(
        [WorkerState(hostname=f"w{i}@test") for i in range(MAX_ACTION_WORKERS + 1)]
    )
    response = admin_client.post(
        WORKERS, {"action": "ping_workers", "select_across": "1", "index": "0",
                  "_selected_action": [WorkerState.objects.first().pk]}, follow=True,
    )  # fmt: skip

    assert levels_of(response) == ["error"]
    assert sent == [] and not LogEntry.objects.exists()


def test_send_again_says_what_was_sent_before_the_broker_went(admin_client, celery, monkeypatch):
    from django_celery_monitor import control

    calls = []

    def retry(task, app=None):
        calls.append(task.task_id)
        if len(calls) == 2:
            raise control.ControlError("gone") from OSError("Connection refused")
        return f"new-{len(calls)}"

    monkeypatch.setattr(monitor_admin.control, "retry", retry)
    tasks = [make_task("FAILURE", args="(1,)", kwargs="{}") for _ in range(3)]
    response = post_action(admin_client, TASKS, "retry_tasks", tasks)

    assert len(calls) == 2
    assert levels_of(response) == ["error", "success"]
    assert messages_of(response) == [
        "Could not reach the message broker after 1 task was sent again: the other 2 were "
        "not sent (Connection refused).",
        "Sent 1 task again.",
    ]


def test_a_retry_s_exception_beside_a_success_is_said_to_be_an_earlier_attempt(admin_client):
    note = "Raised by an earlier attempt, which was retried"
    succeeded = make_task(
        "SUCCESS", exception="ConnectionError('flaky')", traceback="tb", retries=2
    )
    failed = make_task("FAILURE", exception="KeyError('k')", traceback="tb")
    page = admin_client.get(task_url(succeeded)).content.decode()
    assert page.count(note) == 2  # the exception and the traceback
    assert "ConnectionError(&#x27;flaky&#x27;)" in page
    assert note not in admin_client.get(task_url(failed)).content.decode()


@pytest.mark.parametrize(
    "params",
    [
        {"args__regex": "(a+)+$"},
        {"traceback__icontains": "x"},
        {"retries__in": "9" * 20},
        {"worker__exact": "9" * 20},
        {"id__in": "9" * 20},
        {"state__regex": "("},
        {"tstamp__year__gte": "99999"},
        {"received__date__year": "99999"},
        {"exception": "x" * 50_010},
        {"worker__hostname__startswith": "a"},
    ],
)
def test_only_the_lists_own_lookups_are_taken_from_the_query_string(
    client, django_user_model, params
):
    # A user who may only view the tasks: a lookup of any field (a regular expression run
    # on every row, a number no column holds) gets the "?e=1" page, never a read of the
    # whole table or a server error.
    client.force_login(staff(django_user_model, *VIEW))
    make_task("SUCCESS", args="a" * 40 + "!")
    response = client.get(TASKS, params)
    export = client.get(reverse("admin:celery_monitor_taskstate_export"), params)
    if "exception" in params:  # the list's own filter: no type is so long, nothing listed
        assert response.status_code == 200
        assert not response.context["cl"].result_list
        assert export.status_code == 200
    else:
        assert response.status_code == 302 and response.url.endswith("?e=1")
        assert export.status_code == 400


def test_a_value_a_filter_of_the_list_cannot_take_gets_the_error_page(client, django_user_model):
    """Not a list of every task (lost=yes was ignored) nor an empty one (worker=abc): the
    admin's "?e=1" page, as for any malformed query string; the export refuses it too."""
    client.force_login(staff(django_user_model, *VIEW))
    worker = make_worker("w1@test")
    lost = make_task("STARTED", worker=worker, lost=True)
    make_task("SUCCESS", name=None)
    for params in ({"lost": "yes"}, {"worker": "abc"}, {"worker": "9" * 19}, {"unnamed": "0"}):
        response = client.get(TASKS, params)
        assert response.status_code == 302 and response.url.endswith("?e=1"), params
        export = client.get(reverse("admin:celery_monitor_taskstate_export"), params)
        assert export.status_code == 400, params
    for params, expected in (({"lost": "1"}, [lost]), ({"worker": str(worker.pk)}, [lost])):
        response = client.get(TASKS, params)
        assert [t.pk for t in response.context["cl"].result_list] == [t.pk for t in expected]


def test_the_links_of_the_earlier_release_s_filters_still_filter(client, django_user_model):
    # django_celery_monitor 1.1.2 filtered the tasks by state, name, tstamp, eta and worker
    # with Django's own filters: links and bookmarks kept from it list the same rows.
    client.force_login(staff(django_user_model, *VIEW))
    worker = make_worker("w1@test")
    now = timezone.now()
    with_eta = make_task("SUCCESS", name="proj.a", worker=worker, eta=now + timedelta(hours=1))
    failed = make_task("FAILURE", name="proj.b", worker=worker)
    nameless = make_task("PENDING", name=None)
    soon = str(now + timedelta(minutes=30))  # as Django's date filter writes them
    later = str(now + timedelta(hours=2))
    cases = [
        ({"state__exact": "FAILURE"}, [failed]),
        ({"name": "proj.a"}, [with_eta]),
        ({"name__isnull": "True"}, [nameless]),
        ({"worker__id__exact": str(worker.pk)}, [with_eta, failed]),
        ({"worker__isnull": "True"}, [nameless]),
        ({"eta__gte": soon, "eta__lt": later}, [with_eta]),
        ({"eta__isnull": "True"}, [failed, nameless]),
        ({"eta__isnull": "False"}, [with_eta]),
    ]
    for params, expected in cases:
        response = client.get(TASKS, params)
        assert response.status_code == 200, params
        listed = {task.pk for task in response.context["cl"].result_list}
        assert listed == {task.pk for task in expected}, params
    # A number no key holds, and a time out of the calendar, are refused, not a server error.
    for params in ({"worker__id__exact": "9" * 20}, {"eta__gte": "99999-01-01"}):
        response = client.get(TASKS, params)
        assert response.status_code == 302 and response.url.endswith("?e=1"), params
