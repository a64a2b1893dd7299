"""The worker's page: what the worker answers when it is opened, and its remote controls."""

from __future__ import annotations

import re
import time

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from django_celery_monitor import control
from django_celery_monitor.models import TaskState, WorkerState
from tests import tasks, test_admin
from tests.conftest import wait_for
from tests.test_admin import (
    VIEW,
    WORKERS,
    XSS,
    history,
    levels_of,
    make_task,
    make_worker,
    messages_of,
    staff,
    worker_url,
)

pytestmark = [pytest.mark.django_db, pytest.mark.broker]

# The admin's fixtures: the admin uses the test app (celery), whose broker may be down.
celery = test_admin.celery
broker_down = test_admin.broker_down

COMMANDS = list(control.INSPECT_COMMANDS)


def control_url(worker):
    return reverse("admin:celery_monitor_workerstate_control", args=[worker.pk])


def post_control(client, worker, command, follow=True, **fields):
    """Post one control form of the worker's page, its fields named as the form names them."""
    data = {"command": command, **{f"{command}-{name}": value for name, value in fields.items()}}
    return client.post(control_url(worker), data, follow=follow)


def forms_of(html):
    """The commands whose control form the page shows."""
    return set(re.findall(r'<input type="hidden" name="command" value="([a-z_]+)">', html))


WORKER_FORMS = {"add_consumer", "cancel_consumer", "autoscale", "pool_restart", "time_limit"}
ALL_FORMS = WORKER_FORMS | {"rate_limit", "revoke_waiting"}


def answers(hostname, **values):
    """What ``control.inspect`` returns when the worker answered ``values`` (by command)."""
    return {
        command: control.Answer({hostname: values[command]}, {hostname: 2.5})
        if command in values
        else control.Answer()
        for command in COMMANDS
    }


@pytest.fixture
def inspected(celery, monkeypatch):
    """The worker answers what the test sets: ``inspected.update(stats={...})``."""
    calls = []
    values: dict = {}

    def inspect(hostname, commands=control.INSPECT_COMMANDS, timeout=control.TIMEOUT, app=None):
        calls.append((hostname, list(commands)))
        canned = answers(hostname, **values)
        return {command: canned[command] for command in commands}

    monkeypatch.setattr(control, "inspect", inspect)
    values["calls"] = calls
    return values


@pytest.fixture
def sent(celery, monkeypatch):
    """The control calls the page makes, answered ok by the worker in 3.1 ms."""
    calls = []

    def fake(name):
        def call(hostname, *args, app=None, **kwargs):
            calls.append((name, hostname, args, kwargs))
            return control.Answer({hostname: {"ok": f"{name} done"}}, {hostname: 3.1})

        return call

    for name in ("add_consumer", "cancel_consumer", "autoscale", "pool_restart", "time_limit"):
        monkeypatch.setattr(control, name, fake(name))
    monkeypatch.setattr(control, "worker_rate_limit", fake("worker_rate_limit"))
    return calls


STATS = {
    "pid": 4242,
    "uptime": 3725,
    "prefetch_count": 8,
    "pool": {
        "implementation": "celery.concurrency.prefork:TaskPool",
        "max-concurrency": 2,
        "processes": [4243, 4244],
        "max-tasks-per-child": "N/A",
    },
    "broker": {"transport": "redis", "hostname": "10.0.0.5", "port": 6379, "virtual_host": "0"},
    "total": {"proj.add": 12},
}


# -- the page asks the worker, the list does not


def test_the_page_shows_what_the_worker_answered(admin_client, inspected):
    worker = make_worker("w1@test")
    recorded = make_task("STARTED", name="proj.add")
    inspected.update(
        stats=STATS,
        registered=["proj.add", "proj.mail"],
        active_queues=[{"name": "celery", "exchange": {"name": "celery", "type": "direct"}}],
        active=[
            {"id": recorded.task_id, "name": "proj.add", "args": [2, 3], "kwargs": {"x": 1},
             "time_start": time.time() - 3},
            {"id": "not-recorded-1", "name": "proj.mail", "args": [], "kwargs": {}},
        ],
        scheduled=[{"eta": "2030-01-01T10:00:00+00:00", "priority": 6,
                    "request": {"id": "later-1", "name": "proj.add", "args": [1, 1]}}],
        revoked=["gone-1", recorded.task_id],
        conf={"worker_prefetch_multiplier": 4, "CELERY_BROKER_URL": "redis://b",
              "INSTALLED_APPS": ["shop"], "DEBUG": True},
    )  # fmt: skip

    response = admin_client.get(worker_url(worker))

    html = response.content.decode()
    assert response.status_code == 200
    assert inspected["calls"] == [("w1@test", COMMANDS)]
    for text in ("4242", "prefork", "4243 4244", "1 h 2 min", "redis://10.0.0.5:6379/0"):
        assert text in html, text
    assert "proj.mail" in html and ">12<" in html  # registered, with the total done
    assert "2, 3, x=1" in html
    # Celery's settings; not the Django settings its answer holds too.
    assert "worker_prefetch_multiplier" in html and "CELERY_BROKER_URL" in html
    assert "INSTALLED_APPS" not in html and "shop" not in html
    assert (
        "2 Celery settings differ from their defaults (secrets masked by the worker); "
        "2 other settings of its configuration (Django's, say) are left out"
    ) in html
    # Recorded ids link to their task's page; the others say they were not recorded.
    task_page = reverse("admin:celery_monitor_taskstate_change", args=[recorded.pk])
    assert html.count(f'href="{task_page}"') == 2  # running, and revoked
    assert 'title="not-recorded-1 (not recorded)"' in html
    assert "answered in 2.5 ms" in html
    assert "Reserved" in html and "no answer in 1 s" in html  # reserved did not answer


def test_the_task_ids_are_looked_up_in_one_query(admin_client, inspected):
    worker = make_worker("w1@test")
    ids = [make_task("STARTED").task_id for _ in range(5)]
    inspected.update(
        active=[{"id": task_id, "name": "proj.add"} for task_id in ids[:2]],
        reserved=[{"id": ids[2], "name": "proj.add"}],
        scheduled=[{"eta": None, "request": {"id": ids[3]}}],
        revoked=ids[3:] + ["x"] * 500,
    )

    with CaptureQueriesContext(connection) as queries:
        html = admin_client.get(worker_url(worker)).content.decode()

    lookups = [q["sql"] for q in queries.captured_queries if "task_id" in q["sql"]]
    assert len(lookups) == 1
    assert html.count("/taskstate/") >= 6
    assert "and 402 more" in html


def test_the_worker_list_asks_nothing(admin_client, celery, monkeypatch):
    make_worker("w1@test")
    make_worker("w2@test")

    def refuse(*args, **kwargs):
        raise AssertionError("the list asked the workers")

    monkeypatch.setattr(control, "inspect", refuse)
    response = admin_client.get(WORKERS)
    assert response.status_code == 200
    assert "w2@test" in response.content.decode()


@pytest.mark.parametrize("payload", XSS)
def test_what_the_worker_answers_is_escaped(admin_client, inspected, payload):
    worker = make_worker("w1@test")
    inspected.update(
        stats={**STATS, "pid": payload, "pool": {"implementation": payload}},
        registered=[payload],
        active_queues=[{"name": payload, "exchange": {"name": payload, "type": payload}}],
        active=[{"id": payload, "name": payload, "args": [payload], "kwargs": {payload: payload}}],
        scheduled=[{"eta": payload, "request": {"id": payload, "name": payload}}],
        revoked=[payload],
        conf={"broker_url": payload, f"CELERY_MONITOR_{payload}": 1},
    )

    html = admin_client.get(worker_url(worker)).content.decode()

    assert "<script>alert(1)" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html or "&lt;img src=x" in html


@pytest.mark.parametrize(
    "values",
    [
        {"stats": "nonsense", "active": {"not": "a list"}, "registered": [1, None]},
        {"stats": {"pool": [], "uptime": -5, "broker": "x"}, "scheduled": [None, 3]},
        {"active_queues": [None, {"exchange": "direct"}], "conf": ["a"], "revoked": None},
        {"active": [{"id": 1, "args": "(1,)", "kwargs": "{}", "time_start": "soon"}]},
        # Ids no row can hold: PostgreSQL's driver refuses a NUL.
        {"revoked": ["a\x00b", "x" * 300], "active": [{"id": "c\x00d", "name": "proj.add"}]},
        # What kombu's JSON decodes too, and times at the ends of the calendar.
        {"stats": {"uptime": float("nan")}},
        {"stats": {"uptime": float("inf")}},
        {"active": [{"id": "a", "name": "proj.add", "time_start": 253402300799.0}]},
        {"scheduled": [{"eta": "0001-01-01T00:00:00+14:00", "request": {"id": "b"}}]},
        {"scheduled": [{"eta": "9999-12-31T23:30:00+00:00", "request": {"id": "c"}}]},
    ],
)
def test_odd_answers_never_make_a_server_error(admin_client, inspected, values):
    worker = make_worker("w1@test")
    inspected.update(values)

    assert admin_client.get(worker_url(worker)).status_code == 200


def test_the_page_with_the_broker_down(admin_client, broker_down):
    worker = make_worker("w1@test")

    start = time.monotonic()
    response = admin_client.get(worker_url(worker))

    assert response.status_code == 200
    html = response.content.decode()
    assert "Could not reach the message broker, so the worker was not asked" in html
    assert forms_of(html) == ALL_FORMS  # the controls are still there, and say so when used
    assert time.monotonic() - start < 5


def test_a_worker_that_does_not_answer(admin_client, redis_url, celery):
    worker = make_worker("nobody@test")

    start = time.monotonic()
    html = admin_client.get(worker_url(worker)).content.decode()

    # Every command asked at once: one timeout (1 s), not one a command.
    assert time.monotonic() - start < 4
    assert html.count("no answer in 1 s") == len(COMMANDS)


# -- permissions


def test_view_only_staff_sees_no_control_and_cannot_post_one(
    client, django_user_model, inspected, sent
):
    client.force_login(staff(django_user_model, *VIEW, username="viewer"))
    worker = make_worker("w1@test")

    html = client.get(worker_url(worker)).content.decode()

    assert forms_of(html) == set()
    assert 'id="cm-control"' not in html
    for command, fields in FIELDS.items():
        response = post_control(client, worker, command, follow=False, **fields)
        assert response.status_code == 403, command
    assert sent == [] and not LogEntry.objects.exists()


FIELDS = {
    "add_consumer": {"queue": "reports"},
    "cancel_consumer": {"queue": "reports"},
    "autoscale": {"maximum": "4", "minimum": "1"},
    "pool_restart": {},
    "time_limit": {"task_name": "proj.add", "soft": "1", "hard": "2"},
    "rate_limit": {"task_name": "proj.add", "rate": "10/m"},
    "revoke_waiting": {"task_name": "proj.add"},
}


@pytest.mark.parametrize(
    ("codename", "shown"),
    [
        ("control_workerstate", WORKER_FORMS),
        ("rate_limit_taskstate", {"rate_limit"}),
        ("revoke_taskstate", {"revoke_waiting"}),
    ],
)
def test_each_permission_shows_its_controls_only(
    client, django_user_model, inspected, sent, codename, shown
):
    client.force_login(staff(django_user_model, *VIEW, codename))
    worker = make_worker("w1@test")
    inspected.update(registered=["proj.add"])

    assert forms_of(client.get(worker_url(worker)).content.decode()) == shown
    for command in ALL_FORMS - shown:
        response = post_control(client, worker, command, follow=False, **FIELDS[command])
        assert response.status_code == 403, command
    assert sent == [] and not LogEntry.objects.exists()


def test_the_controls_need_the_csrf_token(admin_user, sent):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    worker = make_worker("w1@test")

    response = post_control(client, worker, "add_consumer", follow=False, queue="reports")

    assert response.status_code == 403
    assert sent == [] and not LogEntry.objects.exists()


# -- each control: its call, its message, its history


@pytest.mark.parametrize(
    ("command", "call", "arguments", "words"),
    [
        ("add_consumer", "add_consumer", {"queue": "reports"}, "Consumer added: queue reports"),
        ("cancel_consumer", "cancel_consumer", {"queue": "reports"},
         "Consumer cancelled: queue reports"),
        ("autoscale", "autoscale", {"maximum": 4, "minimum": 1},
         "Autoscale set: max 4, min 1"),
        ("pool_restart", "pool_restart", {}, "Pool restart started"),
        ("time_limit", "time_limit", {"task_name": "proj.add", "soft": 1.5, "hard": 3.0},
         "Time limits of proj.add set: soft 1.5 s, hard 3 s"),
        ("rate_limit", "worker_rate_limit", {"task_name": "proj.add", "rate": "10/m"},
         "Rate limit of proj.add set to 10/m"),
    ],
)  # fmt: skip
def test_a_control_answered(admin_client, inspected, sent, command, call, arguments, words):
    worker = make_worker("w1@test")
    inspected.update(registered=["proj.add"])
    fields = {name: str(value) for name, value in arguments.items()}

    response = post_control(admin_client, worker, command, **fields)

    assert response.status_code == 200
    assert response.redirect_chain == [(worker_url(worker) + "#cm-control", 302)]
    assert sent == [(call, "w1@test", (), arguments)]
    assert messages_of(response)[0].startswith(
        f"{words}: w1@test answered in 3.1 ms: {call} done."
    )
    assert history(admin_client, worker) == [("admin", f"{words} (answered in 3.1 ms)")]


def test_time_limits_left_empty_remove_them(admin_client, inspected, sent):
    worker = make_worker("w1@test")
    inspected.update(registered=["proj.add"])

    response = post_control(admin_client, worker, "time_limit", task_name="proj.add")

    assert sent[0][3] == {"task_name": "proj.add", "soft": None, "hard": None}
    assert messages_of(response)[0].startswith("Time limits of proj.add set: soft none, hard none")


def test_a_refusal_says_what_the_worker_needs(admin_client, inspected, monkeypatch):
    worker = make_worker("w1@test")
    refusal = {"w1@test": {"error": "ValueError('Pool restarts not enabled')"}}
    monkeypatch.setattr(
        control, "pool_restart", lambda host, app=None: control.Answer(refusal, {host: 4.0})
    )

    response = post_control(admin_client, worker, "pool_restart")

    assert levels_of(response) == ["error"]
    assert messages_of(response) == [
        "Pool not restarted: w1@test refused in 4.0 ms: Pool restarts not enabled. "
        "The worker must run with the setting worker_pool_restarts = True."
    ]
    assert history(admin_client, worker) == [
        ("admin", "Pool not restarted: Pool restarts not enabled (answered in 4.0 ms)")
    ]


@pytest.mark.parametrize("payload", XSS)
def test_what_the_worker_replies_to_a_control_is_escaped(
    admin_client, inspected, monkeypatch, payload
):
    worker = make_worker("w1@test")
    refusal = {"w1@test": {"error": payload}}
    monkeypatch.setattr(
        control, "pool_restart", lambda host, app=None: control.Answer(refusal, {host: 1.0})
    )

    html = post_control(admin_client, worker, "pool_restart").content.decode()

    assert "<script>alert(1)" not in html and "<img src=x" not in html
    assert "refused in 1.0 ms: " in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html or "&lt;img src=x" in html


def test_a_control_nobody_answered(admin_client, redis_url, celery):
    worker = make_worker("nobody@test")

    response = post_control(admin_client, worker, "add_consumer", queue="reports")

    assert levels_of(response) == ["warning"]
    assert messages_of(response) == [
        "Add consumer: queue reports: nobody@test did not answer in 1 s."
    ]
    assert history(admin_client, worker) == [
        ("admin", "Add consumer: queue reports (no answer in 1 s)")
    ]


@pytest.mark.parametrize(
    ("command", "title"), [("time_limit", "Time limits"), ("rate_limit", "Rate limit")]
)
def test_a_limit_for_a_worker_that_does_not_say_its_tasks_is_not_sent(
    admin_client, redis_url, celery, sent, command, title
):
    # The task name is checked against the worker's tasks: a worker that does not answer
    # that question is not sent the command too (a second wait for nothing).
    worker = make_worker("nobody@test")

    response = post_control(admin_client, worker, command, **FIELDS[command])

    assert sent == []
    assert levels_of(response) == ["warning"]
    assert messages_of(response) == [
        f"{title}: nobody@test did not say what tasks it runs within 1 s, so nothing was sent."
    ]
    assert history(admin_client, worker) == [("admin", f"{title}: not sent (no answer in 1 s)")]


@pytest.mark.parametrize("command", sorted(ALL_FORMS))
def test_a_control_with_the_broker_down(admin_client, broker_down, command):
    worker = make_worker("w1@test")
    make_task("RECEIVED", name="proj.add", worker=worker)

    response = post_control(admin_client, worker, command, **FIELDS[command])

    assert response.status_code == 200
    assert levels_of(response) == ["error"]
    assert messages_of(response)[0].startswith("Could not reach the message broker")
    assert not LogEntry.objects.exists()


# -- validation: the form again, with its errors


@pytest.mark.parametrize(
    ("command", "fields", "error"),
    [
        ("add_consumer", {"queue": ""}, "This field is required."),
        ("add_consumer", {"queue": "two words"}, "Use letters, digits and"),
        ("cancel_consumer", {"queue": "x" * 201}, "at most 200 characters"),
        ("autoscale", {"maximum": "0", "minimum": "0"}, "greater than or equal to 1"),
        ("autoscale", {"maximum": "2", "minimum": "3"}, "Min cannot be more than max."),
        ("autoscale", {"maximum": "many", "minimum": "1"}, "Enter a whole number."),
        ("time_limit", {"task_name": "proj.add", "soft": "5", "hard": "2"},
         "The soft limit must be shorter than the hard one."),
        ("time_limit", {"task_name": "proj.add", "soft": "-1"}, "greater than or equal to"),
        ("time_limit", {"task_name": "proj.add", "hard": "inf"}, "Enter a number."),
        ("time_limit", {"task_name": "proj.nope", "soft": "1"},
         "proj.nope is not a task registered on this worker."),
        ("rate_limit", {"task_name": "proj.add", "rate": "often"},
         "Enter a number, optionally followed by /s, /m or /h."),
        ("rate_limit", {"task_name": "proj add", "rate": "1/s"}, "A task name has no spaces."),
    ],
)  # fmt: skip
def test_invalid_input_shows_the_form_with_its_errors(
    admin_client, inspected, sent, command, fields, error
):
    worker = make_worker("w1@test")
    inspected.update(registered=["proj.add"])

    response = post_control(admin_client, worker, command, follow=False, **fields)

    assert response.status_code == 200
    html = response.content.decode()
    assert error in html.replace("&#x27;", "'")
    assert 'class="errorlist' in html
    assert forms_of(html) == ALL_FORMS
    assert sent == [] and not LogEntry.objects.exists()


def test_an_unknown_command_is_a_bad_request(admin_client, sent):
    worker = make_worker("w1@test")

    assert post_control(admin_client, worker, "explode", follow=False).status_code == 400
    assert admin_client.get(control_url(worker)).status_code == 302
    missing = reverse("admin:celery_monitor_workerstate_control", args=[999999])
    assert admin_client.post(missing, {"command": "pool_restart"}).status_code == 302


# -- revoke the waiting tasks of a name


@pytest.fixture
def revoked(celery, monkeypatch):
    calls, expecting = [], []

    def revoke_waiting(task_ids, app=None, expected=None):
        calls.append(list(task_ids))
        expecting.append(expected)
        return control.Answer({"w1@test": {"ok": "revoked"}, "w2@test": {"ok": "revoked"}},
                              {"w1@test": 2.0, "w2@test": 5.5})  # fmt: skip

    monkeypatch.setattr(control, "revoke_waiting", revoke_waiting)
    revoke_waiting.expecting = expecting
    return calls


def test_revoke_by_name_revokes_the_waiting_tasks_of_this_worker(admin_client, inspected, revoked):
    worker, other = make_worker("w1@test"), make_worker("w2@test")
    waiting = [
        make_task("RECEIVED", name="proj.add", worker=worker),
        make_task("PENDING", name="proj.add"),
    ]
    make_task("STARTED", name="proj.add", worker=worker)
    make_task("RECEIVED", name="proj.add", worker=other)
    make_task("RECEIVED", name="proj.mail", worker=worker)
    inspected.update(registered=["proj.add", "proj.mail"])

    response = post_control(admin_client, worker, "revoke_waiting", task_name="proj.add")

    assert sorted(revoked[0]) == sorted(task.task_id for task in waiting)
    assert messages_of(response) == [
        "Revoked 2 waiting tasks of proj.add: 2 workers acknowledged: "
        "w1@test in 2.0 ms; w2@test in 5.5 ms."
    ]
    assert history(admin_client, worker) == [
        ("admin", "Revoked 2 waiting tasks of proj.add (answered in 2.0 ms)")
    ]
    assert history(admin_client, waiting[0]) == [("admin", "Revoked")]
    # The workers online (both made just now) are all the replies awaited.
    assert control.revoke_waiting.expecting == [2]


def test_revoke_by_name_says_when_this_workers_answer_was_not_awaited(
    admin_client, inspected, revoked
):
    # Two workers online, this one and w1; w2, not recorded yet, answered in its place.
    worker = make_worker("w3@test")
    make_worker("w1@test")
    make_task("RECEIVED", name="proj.add", worker=worker)

    post_control(admin_client, worker, "revoke_waiting", task_name="proj.add")

    assert control.revoke_waiting.expecting == [2]
    assert history(admin_client, worker) == [
        (
            "admin",
            "Revoked 1 waiting task of proj.add "
            "(its answer not awaited: 2 workers answered first)",
        )
    ]


def test_revoke_by_name_of_an_offline_worker_says_it_did_not_answer(
    admin_client, inspected, revoked
):
    # w1 and w2 are online and answered; this worker is offline: it did not answer.
    worker = make_worker("w3@test", alive=False)
    make_worker("w1@test")
    make_worker("w2@test")
    make_task("RECEIVED", name="proj.add", worker=worker)

    post_control(admin_client, worker, "revoke_waiting", task_name="proj.add")

    assert control.revoke_waiting.expecting == [2]
    [(_user, text)] = history(admin_client, worker)
    assert re.fullmatch(r"Revoked 1 waiting task of proj\.add \(no answer in [\d.]+ s\)", text)


def test_revoke_by_name_that_no_worker_answered_says_it_was_sent_not_done(
    admin_client, inspected, monkeypatch
):
    monkeypatch.setattr(
        control, "revoke_waiting", lambda task_ids, app=None, expected=None: control.Answer({}, {})
    )
    worker = make_worker("w1@test")
    task = make_task("RECEIVED", name="proj.add", worker=worker)

    response = post_control(admin_client, worker, "revoke_waiting", task_name="proj.add")

    [text] = messages_of(response)
    assert re.fullmatch(
        r"Revoke sent for 1 waiting task of proj\.add, but no worker answered in [\d.]+ s: "
        r"nothing says it was applied\. A worker that reads it later applies it then\.",
        text,
    ), text
    [(_user, logged)] = history(admin_client, worker)
    assert re.fullmatch(
        r"Revoke sent for 1 waiting task of proj\.add; no worker answered in [\d.]+ s", logged
    ), logged
    assert history(admin_client, task) == [("admin", "Revoke sent; no worker answered")]


def test_revoke_by_name_finds_the_tasks_without_asking_the_worker(
    admin_client, inspected, revoked
):
    # The worker does not say it runs proj.add (any more): the recorded waiting task of
    # that name is revoked all the same, and the worker is not asked anything.
    worker = make_worker("w1@test")
    task = make_task("RECEIVED", name="proj.add", worker=worker)
    inspected.update(registered=["proj.mail"])

    response = post_control(
        admin_client, worker, "revoke_waiting", follow=False, task_name="proj.add"
    )

    assert response.status_code == 302
    assert inspected["calls"] == []
    assert revoked == [[task.task_id]]
    assert history(admin_client, task) == [("admin", "Revoked")]


def test_revoke_by_name_is_bounded(admin_client, inspected, revoked, monkeypatch):
    from django_celery_monitor.admin import workers

    monkeypatch.setattr(workers, "MAX_ACTION_TASKS", 3)
    worker = make_worker("w1@test")
    for _ in range(5):
        make_task("RECEIVED", name="proj.add", worker=worker)

    response = post_control(admin_client, worker, "revoke_waiting", task_name="proj.add")

    assert len(revoked[0]) == 3
    assert messages_of(response)[0].startswith(
        "Revoked 3 waiting tasks of proj.add (the oldest; more are waiting): "
    )


def test_revoke_by_name_with_nothing_waiting(admin_client, inspected, revoked):
    worker = make_worker("w1@test")
    make_task("SUCCESS", name="proj.add", worker=worker)

    response = post_control(admin_client, worker, "revoke_waiting", task_name="proj.add")

    assert revoked == []
    assert messages_of(response) == ["No task of proj.add is waiting: nothing to revoke."]
    assert not LogEntry.objects.exists()


# -- a real worker


def recorded_worker(node):
    return wait_for(
        lambda: WorkerState.objects.filter(hostname=node.hostname).first(),
        message="the camera to record the worker",
    )


def consumed_queues(app, hostname):
    answer = control.inspect(hostname, ["active_queues"], app=app)["active_queues"]
    return {queue["name"] for queue in answer.replies.get(hostname, [])}


ANSWERED = r"answered in \d+\.\d ms"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_page_of_a_real_worker_and_revoke_by_name(admin_client, celery, camera, celery_worker):
    node = celery_worker("detail-1@test")
    # Long enough for a slow machine: the page must see the one running and the other
    # held, and the revoke reach the held one before its countdown ends.
    running = tasks.sleep.delay(14)
    held = tasks.sleep.apply_async((1,), countdown=10)
    wait_for(
        lambda: (
            TaskState.objects.filter(task_id=running.id, state="STARTED").exists()
            and TaskState.objects.filter(task_id=held.id, state="RECEIVED").exists()
        ),
        message="the camera to record the running and the held task",
    )
    worker = recorded_worker(node)

    html = admin_client.get(worker_url(worker)).content.decode()

    # What the worker answered: its process, pool, queues and tasks.
    assert f"<td>{node.process.pid}</td>" in html
    assert "<td>prefork</td>" in html
    for name in ("tests.tasks.add", "tests.tasks.fail", "tests.tasks.sleep"):
        assert f"<td>{name}</td>" in html
    assert '<code class="cm-fixedwidth">celery</code>' in html
    for task in (running, held):
        pk = TaskState.objects.get(task_id=task.id).pk
        assert f'href="{reverse("admin:celery_monitor_taskstate_change", args=[pk])}"' in html
    assert "no answer in" not in html
    assert forms_of(html) == ALL_FORMS

    response = post_control(admin_client, worker, "revoke_waiting", task_name="tests.tasks.sleep")

    # Only the held task: the running one has started.
    message = messages_of(response)[0]
    assert re.fullmatch(
        r"Revoked 1 waiting task of tests.tasks.sleep: 1 worker acknowledged: "
        r"detail-1@test in \d+\.\d ms\.",
        message,
    ), message
    assert re.fullmatch(
        rf"Revoked 1 waiting task of tests.tasks.sleep \({ANSWERED}\)",
        history(admin_client, worker)[0][1],
    )
    held_row = TaskState.objects.get(task_id=held.id)
    assert history(admin_client, held_row) == [("admin", "Revoked")]
    page = admin_client.get(worker_url(worker)).content.decode()
    assert f'title="{held.id}"' in page.split('id="cm-revoked"')[1].split("</div>")[0]
    wait_for(
        lambda: TaskState.objects.filter(task_id=held.id, state="REVOKED").exists(),
        timeout=30,
        message="the held task to be revoked at its countdown",
    )
    wait_for(
        lambda: TaskState.objects.filter(task_id=running.id, state="SUCCESS").exists(),
        timeout=30,
        message="the running task to succeed, not revoked",
    )


@pytest.mark.e2e
def test_the_controls_of_a_real_worker(admin_client, app, celery, celery_worker):
    node = celery_worker("detail-2@test")
    worker = make_worker(node.hostname)
    queue = f"reports-{worker.pk}"

    # A queue: consumed, then no longer.
    added = post_control(admin_client, worker, "add_consumer", queue=queue)
    assert re.fullmatch(
        rf"Consumer added: queue {queue}: detail-2@test {ANSWERED}: add consumer {queue}\.",
        messages_of(added)[0],
    )
    wait_for(lambda: queue in consumed_queues(app, node.hostname), message="the new consumer")
    page = admin_client.get(worker_url(worker)).content.decode()
    assert f'<code class="cm-fixedwidth">{queue}</code>' in page
    cancelled = post_control(admin_client, worker, "cancel_consumer", queue=queue)
    assert re.fullmatch(
        rf"Consumer cancelled: queue {queue}: detail-2@test {ANSWERED}: "
        rf"no longer consuming from {queue}\.",
        messages_of(cancelled)[0],
    )
    wait_for(lambda: queue not in consumed_queues(app, node.hostname), message="the cancel")

    # Without --autoscale and worker_pool_restarts, the worker refuses: the user is told why.
    autoscale = post_control(admin_client, worker, "autoscale", maximum="3", minimum="1")
    assert levels_of(autoscale) == ["error"]
    assert re.fullmatch(
        r"Autoscale not set: max 3, min 1: detail-2@test refused in \d+\.\d ms: "
        r"Autoscale not enabled\. The worker must run with --autoscale\.",
        messages_of(autoscale)[0],
    )
    restart = post_control(admin_client, worker, "pool_restart")
    assert levels_of(restart) == ["error"]
    assert "refused in" in messages_of(restart)[0]
    assert (
        "Pool restarts not enabled. The worker must run with the setting"
        in (messages_of(restart)[0])
    )

    # Limits by task name, checked against what the worker has registered.
    rate = post_control(
        admin_client, worker, "rate_limit", task_name="tests.tasks.add", rate="600/m"
    )
    assert re.fullmatch(
        rf"Rate limit of tests.tasks.add set to 600/m: detail-2@test {ANSWERED}: "
        r"new rate limit set successfully\.",
        messages_of(rate)[0],
    )
    unknown = post_control(
        admin_client, worker, "time_limit", follow=False, task_name="tests.tasks.nope", soft="1"
    )
    assert unknown.status_code == 200
    assert "tests.tasks.nope is not a task registered on this worker." in unknown.content.decode()
    limit = post_control(
        admin_client, worker, "time_limit", task_name="tests.tasks.sleep", soft="0.5", hard="1"
    )
    assert re.fullmatch(
        rf"Time limits of tests.tasks.sleep set: soft 0.5 s, hard 1 s: detail-2@test "
        rf"{ANSWERED}: time limits set successfully\. Celery applies new time limits to the "
        r"tasks a worker starts after its pool restarts or it reconnects to the broker\.",
        messages_of(limit)[0],
    )
    # The worker holds the new limits (and the rate limit): its page shows them.
    page = admin_client.get(worker_url(worker)).content.decode()
    row = page.split("<td>tests.tasks.sleep</td>")[1].split("</tr>")[0]
    assert '<td class="cm-num">0.5 / 1.0</td>' in row
    row = page.split("<td>tests.tasks.add</td>")[1].split("</tr>")[0]
    assert "<td>600/m</td>" in row

    entries = [action for _user, action in history(admin_client, worker)]
    expected = [
        rf"Consumer added: queue {queue} \({ANSWERED}\)",
        rf"Consumer cancelled: queue {queue} \({ANSWERED}\)",
        rf"Autoscale not set: max 3, min 1: Autoscale not enabled \({ANSWERED}\)",
        rf"Pool not restarted: Pool restarts not enabled \({ANSWERED}\)",
        rf"Rate limit of tests.tasks.add set to 600/m \({ANSWERED}\)",
        rf"Time limits of tests.tasks.sleep set: soft 0.5 s, hard 1 s \({ANSWERED}\)",
    ]
    assert len(entries) == len(expected), entries
    for entry, pattern in zip(entries, expected, strict=True):
        assert re.fullmatch(pattern, entry), entry


@pytest.mark.e2e
def test_autoscale_a_real_worker_started_with_autoscale(
    admin_client, celery, celery_worker, monkeypatch
):
    # The worker's command line reads its options from CELERY_WORKER_<OPTION> too.
    monkeypatch.setenv("CELERY_WORKER_AUTOSCALE", "3,1")
    node = celery_worker("detail-3@test")
    worker = make_worker(node.hostname)

    response = post_control(admin_client, worker, "autoscale", maximum="4", minimum="2")

    assert re.fullmatch(
        rf"Autoscale set: max 4, min 2: detail-3@test {ANSWERED}: autoscale now max=4 min=2\.",
        messages_of(response)[0],
    )
    page = admin_client.get(worker_url(worker)).content.decode()
    assert re.search(r"<td>\d+ now, min 2, max 4</td>", page)
