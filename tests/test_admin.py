"""The admin: lists, filters, search, details, actions, permissions, escaping, query cost."""

from __future__ import annotations

import datetime
import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import connection
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
    worker = make_worker()
    task = make_task(args="(2, 3)", kwargs="{'x': 1}", runtime=0.25, retries=2, worker=worker)
    make_task(state="FAILURE", name="tests.tasks.fail")

    response = admin_client.get(TASKS)

    assert response.status_code == 200
    html = response.content.decode()
    assert response.context["cl"].title == "Tasks"
    assert "<title>Tasks |" in html
    assert 'class="cm-badge cm-badge-green"' in html
    assert 'class="cm-badge cm-badge-red"' in html
    assert f'title="{task.task_id}">{task.task_id[:8]}…</code>' in html
    assert "(2, 3)" in html
    assert "{&#x27;x&#x27;: 1}" in html
    assert "250.0 ms" in html
    assert f'href="{worker_url(worker)}"' in html
    assert "just now" in html
    assert "django_celery_monitor/style.css" in html
    assert "Add task" not in html


def test_pages_work_with_use_tz_off(admin_client, settings):
    settings.USE_TZ = False
    now = datetime.datetime.now()
    worker = WorkerState.objects.create(hostname="naive@test", last_heartbeat=now, freq=2.0)
    task = TaskState.objects.create(
        task_id=str(uuid.uuid4()), state="SUCCESS", tstamp=now, received=now, worker=worker
    )
    for url in (TASKS, task_url(task), worker_url(worker)):
        response = admin_client.get(url)
        assert response.status_code == 200
    assert "just now" in admin_client.get(TASKS).content.decode()


def test_long_args_are_shortened_with_the_full_value_on_hover(admin_client):
    long_args = "(" + ", ".join(str(n) for n in range(100)) + ")"
    make_task(args=long_args)

    html = admin_client.get(TASKS).content.decode()

    assert f'title="{long_args}"' in html
    assert long_args[:24] + "…</code>" in html


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


def test_filter_by_state(admin_client):
    ok, failed = make_task("SUCCESS"), make_task("FAILURE")

    response = admin_client.get(TASKS, {"state": "FAILURE"})

    assert list(response.context["cl"].result_list) == [failed]
    assert ok.task_id not in response.content.decode()
    choices = [
        c["display"]
        for c in response.context["cl"].filter_specs[0].choices(response.context["cl"])
    ]
    assert "REVOKED" in choices and "RECEIVED" in choices


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
    assert admin_client.get(TASKS, {"worker": "nope"}).context["cl"].result_count == 0


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


def test_search_by_task_id_name_and_hostname(admin_client):
    worker = make_worker("search-me@test")
    a = make_task(name="proj.tasks.alpha")
    b = make_task(name="proj.tasks.beta", worker=worker)

    assert list(admin_client.get(TASKS, {"q": a.task_id}).context["cl"].result_list) == [a]
    assert list(admin_client.get(TASKS, {"q": "proj.tasks.be"}).context["cl"].result_list) == [b]
    assert list(admin_client.get(TASKS, {"q": "search-me"}).context["cl"].result_list) == [b]
    workers = admin_client.get(WORKERS, {"q": "search"}).context["cl"].result_list
    assert list(workers) == [worker]


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


@pytest.mark.parametrize(
    ("action", "verb", "log"),
    [
        ("revoke_tasks", "Revoked", "Revoked"),
        ("terminate_tasks", "Terminated", "Terminated (SIGTERM)"),
        ("kill_tasks", "Killed", "Killed (SIGKILL)"),
    ],
)
def test_revoke_actions(client, django_user_model, redis_url, celery, action, verb, log):
    user = staff(django_user_model, *VIEW, "revoke_taskstate")
    client.force_login(user)
    tasks = [make_task("RECEIVED"), make_task("STARTED")]

    response = post_action(client, TASKS, action, tasks)

    assert messages_of(response) == [f"{verb} 2 tasks; no worker answered."]
    assert levels_of(response) == ["warning"]
    entries = LogEntry.objects.filter(user=user, action_flag=CHANGE)
    assert sorted(int(e.object_id) for e in entries) == sorted(t.pk for t in tasks)
    assert {e.change_message for e in entries} == {log}


def test_revoke_one_task_says_task(admin_client, redis_url, celery):
    response = post_action(admin_client, TASKS, "revoke_tasks", [make_task("RECEIVED")])

    assert messages_of(response) == ["Revoked 1 task; no worker answered."]


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
    assert entries.count() == 3
    assert entries.first().change_message == (
        "Rate limit of tests.tasks.add, tests.tasks.sleep set to 10/m"
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


# -- the broker is down


@pytest.mark.parametrize("action", TASK_ACTIONS)
def test_task_actions_with_the_broker_down(admin_client, broker_down, action):
    task = make_task(args="(1, 2)", kwargs="{}")
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
        assert len(sql) <= 12, sql
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
