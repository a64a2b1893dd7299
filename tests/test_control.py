"""The control calls: what they send, what they return, and how they fail."""

from __future__ import annotations

import time

import pytest

from django_celery_monitor import control
from django_celery_monitor.models import TaskState

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
    assert time.monotonic() - start < 3


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
    assert "ok" in control.enable_events([worker.hostname], app=app)[worker.hostname]
    assert "ok" in control.pool_grow([worker.hostname], app=app)[worker.hostname]
    assert "ok" in control.pool_shrink([worker.hostname], app=app)[worker.hostname]
    reply = control.rate_limit("tests.tasks.add", "10/m", app=app)
    assert "ok" in reply[worker.hostname]

    assert control.shutdown([worker.hostname], app=app) == [worker.hostname]
    worker.process.wait(20)
    assert control.ping([worker.hostname], timeout=0.5, app=app) == {}
