"""The control calls: what they send, what they return, and how they fail."""

from __future__ import annotations

import time

import pytest
from django.test import override_settings

from django_celery_monitor import control
from django_celery_monitor.models import TaskState
from tests.conftest import wait_for

pytestmark = pytest.mark.broker

UNREACHABLE = "redis://127.0.0.1:1/0"


@pytest.fixture
def broker_down(app, monkeypatch):
    monkeypatch.setattr(app.conf, "broker_url", UNREACHABLE)
    return app


def task(**fields):
    fields.setdefault("name", "tests.tasks.add")
    fields.setdefault("args", "(2, 3)")
    fields.setdefault("kwargs", "{}")
    return TaskState(task_id="t-1", state="FAILURE", **fields)


# -- retry: parsing the recorded arguments


class Sent:
    def __init__(self):
        self.calls = []

    def __call__(self, name, **options):
        self.calls.append((name, options))
        return type("Result", (), {"id": "new-id"})()


@pytest.fixture
def sent(app, redis_url, monkeypatch):
    recorder = Sent()
    monkeypatch.setattr(app, "send_task", recorder)
    return recorder


@pytest.mark.parametrize(
    ("args", "kwargs", "expected_args", "expected_kwargs"),
    [
        ("(2, 3)", "{}", (2, 3), {}),
        ("[2, 3]", "{'y': [1, {'z': None}]}", (2, 3), {"y": [1, {"z": None}]}),
        ("()", None, (), {}),
        (None, "", (), {}),
        ("('a',)", "{'b': b'x', 'c': 1.5}", ("a",), {"b": b"x", "c": 1.5}),
    ],
)
def test_retry_sends_the_parsed_arguments(app, sent, args, kwargs, expected_args, expected_kwargs):
    new_id = control.retry(task(args=args, kwargs=kwargs), app=app)

    assert new_id == "new-id"
    name, options = sent.calls[0]
    assert name == "tests.tasks.add"
    assert options["args"] == expected_args
    assert options["kwargs"] == expected_kwargs
    assert options["retry"] is False


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"args": "('" + "x" * 1020 + "..."}, "cut short"),
        ({"kwargs": "{'a': " + "1, " * 400 + "..."}, "cut short"),
        ({"args": "(<object object at 0x7f>,)"}, "cannot be read back"),
        ({"args": "__import__('os').system('true')"}, "cannot be read back"),
        ({"args": "42"}, "not a tuple"),
        ({"kwargs": "[1]"}, "not a dict"),
        ({"name": None}, "name was not recorded"),
        ({"name": ""}, "name was not recorded"),
    ],
)
def test_retry_refuses_what_it_cannot_parse(app, sent, fields, reason):
    with pytest.raises(control.RetryError, match=reason) as info:
        control.retry(task(**fields), app=app)

    assert isinstance(info.value, ValueError)
    assert sent.calls == []


def test_retry_really_sends(app, redis_url):
    with app.connection_for_write() as conn:
        conn.default_channel.client.delete("celery")
    new_id = control.retry(task(), app=app)

    with app.connection_for_write() as conn:
        queued = conn.default_channel.client.lrange("celery", 0, -1)
    assert any(new_id.encode() in message for message in queued)


# -- commands against a real broker with no worker: nobody answers, quickly


def test_revoke_with_no_worker_returns_no_reply(app, redis_url):
    start = time.monotonic()
    assert control.revoke(["a", "b"], app=app) == {}
    assert time.monotonic() - start < 5  # its timeout (1 s), not a wait without end


def test_revoke_of_nothing_sends_nothing(broker_down):
    assert control.revoke([], app=broker_down) == {}


def test_commands_to_no_worker_send_nothing(broker_down):
    assert control.enable_events([], app=broker_down) == {}
    assert control.ping([], app=broker_down) == {}
    assert control.shutdown([], app=broker_down) == []


@pytest.mark.parametrize(
    "call",
    [control.enable_events, control.disable_events, control.pool_grow, control.pool_shrink],
)
def test_worker_commands_to_absent_workers(app, redis_url, call):
    assert call(["nobody@test"], app=app) == {}


def test_ping_absent_worker(app, redis_url):
    assert control.ping(["nobody@test"], timeout=0.2, app=app) == {}


def test_shutdown_returns_the_destinations(app, redis_url):
    assert control.shutdown(["b@test", "a@test", "a@test"], app=app) == ["a@test", "b@test"]


@pytest.mark.parametrize("rate", ["10", "10/s", "100/m", "1000/h", "0", "1.5/s", " 5 / m "])
def test_parse_rate_accepts_celery_rates(rate):
    assert control.parse_rate(rate) == rate.replace(" ", "")


@pytest.mark.parametrize("rate", ["", "fast", "10/d", "-1", "1/s/s", "10 per minute"])
def test_parse_rate_refuses_the_rest(rate):
    with pytest.raises(ValueError):
        control.parse_rate(rate)


def test_rate_limit_refuses_a_bad_rate_before_touching_the_broker(broker_down):
    with pytest.raises(ValueError):
        control.rate_limit("tests.tasks.add", "often", app=broker_down)


# -- the worker's page: its inputs are checked before anything is sent


@pytest.mark.parametrize("queue", ["reports", "celery.high", "a:b@c/d+e-f_1", " q "])
def test_parse_queue_accepts_queue_names(queue):
    assert control.parse_queue(queue) == queue.strip()


@pytest.mark.parametrize("queue", ["", "two words", "x" * 201, "q;rm", "é", "a\nb"])
def test_parse_queue_refuses_the_rest(queue):
    with pytest.raises(ValueError):
        control.parse_queue(queue)


@pytest.mark.parametrize(("maximum", "minimum"), [(1, 0), (4, 4), (1000, 2)])
def test_parse_autoscale_accepts_bounds(maximum, minimum):
    assert control.parse_autoscale(maximum, minimum) == (maximum, minimum)


@pytest.mark.parametrize(("maximum", "minimum"), [(0, 0), (2, 3), (1001, 1), (4, -1)])
def test_parse_autoscale_refuses_the_rest(maximum, minimum):
    with pytest.raises(ValueError):
        control.parse_autoscale(maximum, minimum)


@pytest.mark.parametrize(("soft", "hard"), [(None, None), (1, None), (None, 2), (0.5, 1)])
def test_parse_time_limits_accepts_limits(soft, hard):
    assert control.parse_time_limits(soft, hard) == (soft, hard)


@pytest.mark.parametrize(
    ("soft", "hard"), [(0, None), (-1, None), (2, 1), (1, 1), (float("inf"), None), (None, 1e9)]
)
def test_parse_time_limits_refuses_the_rest(soft, hard):
    with pytest.raises(ValueError):
        control.parse_time_limits(soft, hard)


@pytest.mark.parametrize(
    "call",
    [
        lambda app: control.add_consumer("w@test", "two words", app=app),
        lambda app: control.cancel_consumer("w@test", "", app=app),
        lambda app: control.autoscale("w@test", 1, 2, app=app),
        lambda app: control.time_limit("w@test", "tests.tasks.add", 2, 1, app=app),
        lambda app: control.worker_rate_limit("w@test", "tests.tasks.add", "often", app=app),
    ],
)
def test_bad_input_is_refused_before_touching_the_broker(broker_down, call):
    with pytest.raises(ValueError):
        call(broker_down)


def test_revoke_waiting_of_nothing_sends_nothing(broker_down):
    assert control.revoke_waiting([], app=broker_down) == control.Answer()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"ok": "add consumer reports"}, (True, "add consumer reports")),
        ({"error": "unknown task"}, (False, "unknown task")),
        (
            {"error": "ValueError('Pool restarts not enabled')"},
            (False, "Pool restarts not enabled"),
        ),
        ({"error": 'KeyError("x")'}, (False, "x")),
        ("pong", (False, "pong")),
        (None, (False, "None")),
    ],
)
def test_reply_text(reply, expected):
    assert control.reply_text(reply) == expected


def test_parse_registered():
    reply = ["proj.add [rate_limit=10/m soft_time_limit=0.5 time_limit=1.0]", "proj.mail", 3]

    assert control.parse_registered(reply) == {
        "proj.add": {"rate_limit": "10/m", "soft_time_limit": "0.5", "time_limit": "1.0"},
        "proj.mail": {},
        "3": {},
    }
    assert control.parse_registered({"not": "a list"}) == {}


def test_commands_to_an_absent_worker_get_no_answer(app, redis_url):
    answer = control.add_consumer("nobody@test", "reports", app=app)

    assert answer == control.Answer({}, {})


def test_inspect_asks_every_command_at_once(app, redis_url):
    start = time.monotonic()
    answers = control.inspect("nobody@test", app=app)

    # One timeout (1 s) for all of them, not one a command (8 s).
    assert time.monotonic() - start < 4
    assert list(answers) == list(control.INSPECT_COMMANDS)
    assert all(answer == control.Answer() for answer in answers.values())


# -- the broker is down: one exception type, raised quickly


@pytest.mark.parametrize(
    "call",
    [
        lambda app: control.revoke(["x"], app=app),
        lambda app: control.revoke(["x"], terminate=True, signal="SIGKILL", app=app),
        lambda app: control.rate_limit("tests.tasks.add", "1/s", app=app),
        lambda app: control.shutdown(["w@test"], app=app),
        lambda app: control.enable_events(["w@test"], app=app),
        lambda app: control.disable_events(["w@test"], app=app),
        lambda app: control.pool_grow(["w@test"], app=app),
        lambda app: control.pool_shrink(["w@test"], n=2, app=app),
        lambda app: control.ping(["w@test"], app=app),
        lambda app: control.retry(task(), app=app),
        lambda app: control.inspect("w@test", app=app),
        lambda app: control.add_consumer("w@test", "reports", app=app),
        lambda app: control.cancel_consumer("w@test", "reports", app=app),
        lambda app: control.autoscale("w@test", 4, 1, app=app),
        lambda app: control.pool_restart("w@test", app=app),
        lambda app: control.time_limit("w@test", "tests.tasks.sleep", 1, 2, app=app),
        lambda app: control.worker_rate_limit("w@test", "tests.tasks.add", "1/s", app=app),
        lambda app: control.revoke_waiting(["x"], app=app),
    ],
)
def test_broker_down_raises_control_error(broker_down, call):
    start = time.monotonic()
    with pytest.raises(control.ControlError, match="unreachable"):
        call(broker_down)
    assert time.monotonic() - start < 5


def test_the_current_app_is_the_default(app, broker_down, monkeypatch):
    app.set_current()
    with pytest.raises(control.ControlError):
        control.ping(["w@test"])


# -- a real worker answers


@pytest.mark.e2e
def test_commands_reach_a_real_worker(app, celery_worker):
    worker = celery_worker("control-1@test")

    answered = control.ping([worker.hostname], app=app)
    assert list(answered) == [worker.hostname]
    assert 0 < answered[worker.hostname] < 1000

    assert control.revoke(["nope"], app=app)[worker.hostname]["ok"]
    with override_settings(CELERY_MONITOR_CONTROL_TIMEOUT=10):
        # The one worker online answered: not a reply more is awaited.
        start = time.monotonic()
        assert list(control.revoke(["nope"], app=app, expected=1)) == [worker.hostname]
        answer = control.revoke_waiting(["nope"], app=app, expected=1)
        assert list(answer.replies) == [worker.hostname]
        limited = control.rate_limits(["tests.tasks.add"], "10/m", app=app, expected=1)
        assert list(limited["tests.tasks.add"]) == [worker.hostname]
        # One worker named: its answer is the last awaited.
        assert list(control.rate_limit("tests.tasks.add", "0", [worker.hostname], app)) == [
            worker.hostname
        ]
        assert time.monotonic() - start < 5
    assert "ok" in control.enable_events([worker.hostname], app=app)[worker.hostname]
    assert "ok" in control.pool_grow([worker.hostname], app=app)[worker.hostname]
    assert "ok" in control.pool_shrink([worker.hostname], app=app)[worker.hostname]
    reply = control.rate_limit("tests.tasks.add", "10/m", app=app)
    assert "ok" in reply[worker.hostname]

    assert control.shutdown([worker.hostname], app=app) == [worker.hostname]
    worker.process.wait(20)
    assert control.ping([worker.hostname], timeout=0.5, app=app) == {}


@pytest.mark.e2e
def test_the_worker_page_commands_reach_a_real_worker(app, celery_worker):
    worker = celery_worker("control-2@test")
    host = worker.hostname

    answers = control.inspect(host, app=app)
    assert all(host in answer.replies for answer in answers.values())
    assert all(0 < answer.ms[host] < 1000 for answer in answers.values())
    stats = answers["stats"].replies[host]
    assert stats["pid"] == worker.process.pid
    assert stats["pool"]["max-concurrency"] == 2
    assert "tests.tasks.sleep" in control.parse_registered(answers["registered"].replies[host])
    assert "celery" in {queue["name"] for queue in answers["active_queues"].replies[host]}

    def queues():
        answer = control.inspect(host, ["active_queues"], app=app)["active_queues"]
        return {queue["name"] for queue in answer.replies[host]}

    added = control.add_consumer(host, "reports", app=app)
    assert control.reply_text(added.replies[host]) == (True, "add consumer reports")
    assert 0 < added.ms[host] < 1000
    wait_for(lambda: "reports" in queues(), message="the worker to consume from reports")
    cancelled = control.cancel_consumer(host, "reports", app=app)
    assert control.reply_text(cancelled.replies[host]) == (
        True,
        "no longer consuming from reports",
    )
    wait_for(lambda: "reports" not in queues(), message="the worker to stop consuming")

    # Neither --autoscale nor worker_pool_restarts: the worker says so.
    refused = control.autoscale(host, 4, 1, app=app)
    assert control.reply_text(refused.replies[host]) == (False, "Autoscale not enabled")
    refused = control.pool_restart(host, app=app)
    assert control.reply_text(refused.replies[host]) == (False, "Pool restarts not enabled")

    limited = control.time_limit(host, "tests.tasks.sleep", 0.5, 1, app=app)
    assert control.reply_text(limited.replies[host]) == (True, "time limits set successfully")
    unknown = control.time_limit(host, "tests.tasks.nope", 1, app=app)
    assert control.reply_text(unknown.replies[host]) == (False, "unknown task")
    rate = control.worker_rate_limit(host, "tests.tasks.add", "10/m", app=app)
    assert control.reply_text(rate.replies[host]) == (True, "new rate limit set successfully")
    registered = control.inspect(host, ["registered"], app=app)["registered"]
    limits = control.parse_registered(registered.replies[host])
    assert limits["tests.tasks.sleep"] == {"soft_time_limit": "0.5", "time_limit": "1.0"}
    assert limits["tests.tasks.add"] == {"rate_limit": "10/m"}

    revoked = control.revoke_waiting(["waiting-1"], app=app)
    assert control.reply_text(revoked.replies[host])[0]
    answer = control.inspect(host, ["revoked"], app=app)["revoked"]
    assert "waiting-1" in answer.replies[host]


@pytest.fixture
def stalled_broker(monkeypatch):
    """A Redis URL whose server takes connections and never answers."""
    import socket
    import threading

    from celery import Celery

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setattr(control, "SOCKET_TIMEOUT", 0.5, raising=False)
    app = Celery(
        "stalled", broker=f"redis://127.0.0.1:{server.getsockname()[1]}/0", set_as_current=False
    )
    yield app
    stop.set()
    thread.join()
    for sock in held:
        sock.close()
    server.close()


@pytest.mark.parametrize(
    "call",
    [
        lambda app: control.ping(["w@h"], app=app),
        lambda app: control.revoke(["t"], app=app),
        lambda app: control.shutdown(["w@h"], app=app),
        lambda app: control.inspect("w@h", ["stats"], app=app),
    ],
)
def test_a_broker_that_takes_the_connection_and_stalls_is_an_error(stalled_broker, call):
    started = time.monotonic()
    with pytest.raises(control.ControlError, match="unreachable"):
        call(stalled_broker)
    assert time.monotonic() - started < 5


def test_the_queue_sampler_gives_up_on_a_stalled_broker(stalled_broker):
    from django_celery_monitor import queues

    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        queues.measure_queues(stalled_broker, ["celery"])
    assert time.monotonic() - started < 5
    assert "timeout" in f"{type(raised.value).__name__} {raised.value}".lower()


def test_retry_refuses_arguments_json_cannot_carry(app, redis_url):
    # A set is a Python literal, but the JSON serializer has no form for it: the task's
    # own problem, which the admin reports for that task and goes on with the others.
    with pytest.raises(control.RetryError, match="cannot be serialized"):
        control.retry(task(args="({1, 2},)"), app=app)


def test_rate_limits_of_several_task_types_are_sent_at_once(monkeypatch):
    import threading

    # Each broadcast waits for its replies; the most names allowed wait together, or the
    # barrier (which needs all of them at once) breaks.
    most = control.MAX_RATE_LIMIT_NAMES
    barrier = threading.Barrier(most, timeout=5)

    def rate_limit(name, rate, destination=None, app=None, expected=None):
        barrier.wait()
        return {"w@h": {"ok": f"{name} {rate} {expected}"}}

    monkeypatch.setattr(control, "rate_limit", rate_limit)
    names = [f"t{i}" for i in range(most)]
    replies = control.rate_limits([*names, "t0"], "10/m", app=object(), expected=3)
    assert replies == {name: {"w@h": {"ok": f"{name} 10/m 3"}} for name in names}

    with pytest.raises(ValueError, match="at most"):
        control.rate_limits([*names, "one more"], "10/m", app=object())


@pytest.mark.parametrize("body", [["not", "a", "dict"], "text", 7, None, {1: "x"}])
def test_a_reply_that_is_no_workers_answer_is_left_out(app, redis_url, monkeypatch, body):
    def broadcast(*args, callback=None, **kwargs):
        if callback:
            callback(body)
            callback({"w@h": {"ok": "fine"}})
        return [body, {"w@h": {"ok": "fine"}}]

    monkeypatch.setattr(app.control, "broadcast", broadcast)
    assert control.enable_events(["w@h"], app=app) == {"w@h": {"ok": "fine"}}
    assert control.pool_grow(["w@h"], app=app) == {"w@h": {"ok": "fine"}}
    assert control.ping(["w@h"], app=app) == {"w@h": pytest.approx(0, abs=1000)}


@pytest.mark.parametrize(
    ("key", "namespace", "celery"),
    [
        ("broker_url", None, True),
        ("CELERY_BROKER_URL", "CELERY", True),  # with Django's namespace
        ("CELERY_TASK_ACKS_LATE", "CELERY", True),
        ("CELERY_TASK_ACKS_LATE", None, True),  # the namespace Celery's docs give Django
        ("CELERYD_CONCURRENCY", None, True),  # an old name
        ("BROKER_URL", "CELERY", True),
        ("MYAPP_WORKER_PREFETCH_MULTIPLIER", "MYAPP", True),  # the app's own namespace
        ("MYAPP_WORKER_PREFETCH_MULTIPLIER", "CELERY", False),  # not the app's namespace
        ("CELERY_MONITOR_CONTROL_TIMEOUT", "MYAPP", True),  # the monitor's own
        ("MYAPP_MONITOR_CONTROL_TIMEOUT", "MYAPP", True),
        ("monitors_expire_success", None, True),  # 1.1.2's name
        ("CELERY_MONITORS_EXPIRE_SUCCESS", "CELERY", True),
        ("CELERY_MONITOR_NO_SUCH_THING", "CELERY", False),
        ("TIME_ZONE", "CELERY", True),  # Celery's timezone when it has none of its own
        ("SELECT2_CACHE_BACKEND", "CELERY", False),  # another app's, not a namespace
        ("SESSION_REDIS_HOST", "CELERY", False),
        ("SENTRY_MONITOR_SLUG", "CELERY", False),
        ("DEBUG", "CELERY", False),
        ("INSTALLED_APPS", "CELERY", False),
        ("deprecated_settings", "CELERY", False),
        ("CELERY_", "CELERY", False),
        ("", None, False),
    ],
)
def test_the_celery_settings_of_a_conf_answer(key, namespace, celery):
    assert control.is_celery_setting(key, namespace) is celery


def test_a_conf_answer_keeps_celery_settings_and_counts_the_others():
    reply = {
        "CELERY_BROKER_URL": "redis://",
        "TIME_ZONE": "UTC",
        "DEBUG": True,
        "SECRET_KEY": "********",
        # attributes of the configuration source, not settings: not counted
        "SETTINGS_MODULE": "proj.settings",
        "deprecated_settings": [],
        "is_overridden": "<bound method>",
        "_wrapped": "<Settings>",
    }
    assert control.celery_settings(reply, "CELERY") == (
        {"CELERY_BROKER_URL": "redis://", "TIME_ZONE": "UTC"},
        2,
    )
    assert control.celery_settings(["not", "a", "dict"]) == ({}, 0)
