"""Event validation: bad events are refused or repaired, and never harm the others."""

from __future__ import annotations

import hashlib
import logging
import math

import pytest
from celery.events.state import State

from django_celery_monitor.events import EventGuard, SafeEventReceiver, clean_event
from tests import events

pytestmark = pytest.mark.nodb


def sha1_of(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def guarded_state() -> tuple[State, EventGuard]:
    state = State()
    guard = EventGuard()
    state.event = guard.wrap(state.event)
    return state, guard


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (None, "not a mapping"),
        (["task-received"], "not a mapping"),
        ({"hostname": "w"}, "unknown event type"),
        ({**events.received("a"), "type": "task-"}, "unknown event type"),
        ({**events.received("a"), "type": "task-" + "x" * 100}, "unknown event type"),
        ({**events.received("a"), "type": "other-thing"}, "unknown event type"),
        ({**events.received("a"), "type": 7}, "unknown event type"),
        ({k: v for k, v in events.received("a").items() if k != "uuid"}, "no usable task id"),
        ({**events.received("a"), "uuid": ""}, "no usable task id"),
        ({**events.received("a"), "uuid": ["a"]}, "no usable task id"),
        ({**events.received("a"), "uuid": "u" * 2000}, "no usable task id"),
        ({**events.received("a"), "hostname": None}, "no usable hostname"),
        ({**events.worker_event("heartbeat"), "hostname": 5}, "no usable hostname"),
    ],
)
def test_events_that_cannot_be_celery_events_are_refused(event, problem):
    clean, why = clean_event(event)
    assert clean is None
    assert why.startswith(problem)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"clock": "12"}, {"clock": 0}),
        ({"clock": [1]}, {"clock": 0}),
        ({"clock": 3.7}, {"clock": 3}),
        ({"clock": True}, {"clock": 0}),
        ({"timestamp": math.nan, "local_received": 1700000000.5}, {"timestamp": 1700000000.5}),
        ({"timestamp": "yesterday", "local_received": 1700000000.5}, {"timestamp": 1700000000.5}),
        ({"name": 42}, {"name": "42"}),
        ({"parent_id": ["x"]}, {"parent_id": None}),
        ({"utcoffset": "+2"}, {"utcoffset": None}),
        ({"worker": "w9", "event": 1, "_secret": 2}, {"worker": None, "event": None}),
        # Lone surrogates (JSON can carry them): no encoding or log file takes them. An id
        # ends with a hash of itself: it stays apart from one that spells the escape out.
        ({"hostname": "w\ud800"}, {"hostname": "w\\ud800~" + sha1_of("w\ud800")}),
        ({"uuid": "a\udc80"}, {"uuid": "a\\udc80~" + sha1_of("a\udc80")}),
        ({"root_id": "\udfff"}, {"root_id": "\\udfff~" + sha1_of("\udfff")}),
        ({"name": "n\udfff"}, {"name": "n\\udfff"}),
    ],
)
def test_what_can_be_repaired_is(fields, expected):
    original = {**events.received("a"), **fields}
    before = dict(original)
    clean, why = clean_event(original)
    assert why.startswith("repaired")
    for key, value in expected.items():
        if value is None:
            assert key not in clean
        else:
            assert clean[key] == value
    assert "_secret" not in clean
    assert original == before  # the incoming event is left as it was


def test_a_valid_event_passes_unchanged():
    event = events.received("a")
    clean, why = clean_event(event)
    assert clean == event and why is None


def test_custom_task_events_are_kept():
    clean, _why = clean_event(events.task_event("progress", "a", current=3))
    assert clean["type"] == "task-progress"


def test_a_non_numeric_clock_does_not_blind_the_state_to_later_events():
    state, guard = guarded_state()
    state.event({**events.received("bad"), "clock": "not a clock"})
    for n in range(5):
        state.event(events.received(f"t{n}"))
        state.event(events.started(f"t{n}"))
        state.event(events.succeeded(f"t{n}"))
    assert all(state.tasks[f"t{n}"].state == "SUCCESS" for n in range(5))
    assert state.tasks["bad"].state == "RECEIVED"
    assert guard.repaired == 1 and guard.refused == 0


def test_an_event_without_a_uuid_is_counted_and_dropped():
    state, guard = guarded_state()
    event = events.received("a")
    del event["uuid"]
    assert state.event(event) is None
    state.event(events.received("b"))
    assert list(state.tasks) == ["b"]
    assert guard.refused == 1
    assert guard.reasons == {"no usable task id": 1}


def test_fields_named_like_the_states_attributes_cannot_replace_them():
    state, _guard = guarded_state()
    state.event({**events.received("a"), "worker": "fake", "event": None, "children": 1})
    state.event({**events.worker_event("heartbeat"), "event": None, "heartbeats": "x"})
    state.event(events.started("a"))
    task = state.tasks["a"]
    assert task.state == "STARTED"
    assert task.worker.hostname == events.WORKER
    assert callable(task.event)
    assert isinstance(state.workers[events.WORKER].heartbeats, list)


def test_an_error_inside_the_state_is_counted_not_raised(monkeypatch):
    state, guard = guarded_state()
    monkeypatch.setattr(state.Task, "event", lambda *args, **kwargs: 1 / 0, raising=True)
    assert state.event(events.received("a")) is None
    assert guard.refused == 1
    assert guard.reasons == {"Celery's State refused it": 1}


def test_a_shielded_handler_takes_events_unchecked_and_never_raises(monkeypatch):
    """``shield`` is for events the guard has checked already: it does not check them again,
    and counts and drops what the state raises on."""
    state, guard = State(), EventGuard()
    handle = guard.shield(state.event)
    checks = []
    monkeypatch.setattr(guard, "check", lambda event: checks.append(event) or event)
    assert handle(events.received("a"))[0][0].uuid == "a"
    monkeypatch.setattr(state.Task, "event", lambda *args, **kwargs: 1 / 0, raising=True)
    assert handle(events.received("b")) is None
    assert checks == []
    assert (guard.refused, guard.repaired) == (1, 0)
    assert guard.reasons == {"Celery's State refused it": 1}


def test_an_integer_past_a_floats_range_is_repaired_not_raised(app):
    """JSON integers have no bound: a timestamp of 400 digits, in an event that needs
    repairing anyway (its clock), is replaced, and the receiver goes on."""
    receiver, handler = make_receiver(app)
    huge = 10**400
    receiver._receive({**events.received("big"), "clock": "x", "timestamp": huge}, message=None)
    receiver._receive({**events.received("big2"), "clock": huge, "utcoffset": huge}, message=None)
    assert [event["uuid"] for event in handler.events] == ["big", "big2"]
    assert all(math.isfinite(event["timestamp"]) for event in handler.events)
    assert (receiver.guard.repaired, receiver.guard.refused) == (2, 0)


def test_a_receiver_given_a_handler_that_cannot_be_hashed_keeps_it(app):
    """Handlers are looked up among a camera's checked forms; one that cannot be a key of
    a mapping is not one of them."""

    class Unhashable(FakeHandler):
        __hash__ = None  # type: ignore[assignment]

    handler = Unhashable()
    receiver_class = type("R", (SafeEventReceiver,), {"checked_forms": {print: len}})
    receiver = receiver_class(None, handlers={"*": handler, "x": print}, app=app)
    assert receiver.handlers == {"*": handler, "x": len}


def test_bad_events_are_logged_at_most_once_a_period(caplog):
    guard = EventGuard(log_every=3600)
    with caplog.at_level(logging.WARNING, logger="django_celery_monitor.events"):
        for _ in range(50):
            guard.check({"type": "task-received"})
    assert guard.refused == 50
    assert len(caplog.records) == 1
    assert "no usable hostname" in caplog.records[0].getMessage()


class FakeHandler:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)


def make_receiver(app) -> tuple[SafeEventReceiver, FakeHandler]:
    handler = FakeHandler()
    receiver = SafeEventReceiver(None, handlers={"*": handler}, app=app)
    receiver.guard = EventGuard()
    return receiver, handler


def test_the_receiver_survives_what_celerys_own_receiver_raises_on(app):
    receiver, handler = make_receiver(app)
    good = events.received("good")
    bad = [
        {**events.received("x"), "clock": "abc"},  # Celery's Lamport clock raises
        {**events.received("y"), "utcoffset": "two"},  # its timestamp adjustment raises
        {"no": "type"},
        "not even a dict",
    ]
    receiver._receive([*bad, good], message=None)
    receiver._receive(bad[0], message=None)
    assert [event["uuid"] for event in handler.events] == ["x", "y", "good", "x"]
    assert receiver.guard.refused == 2
    assert receiver.guard.repaired == 3


@pytest.mark.parametrize("hours_east", [2, -5, 9])
def test_a_workers_time_zone_does_not_move_its_events_times(app, hours_east):
    """A worker in another time zone than the camera's sends the same instants
    (time.time()): Celery's receiver would shift them by the difference of the offsets."""
    from celery.utils.time import utcoffset

    receiver, handler = make_receiver(app)
    event = events.received("tz")
    sent_at = event["timestamp"]
    # Celery's utcoffset is in hours west of UTC.
    receiver._receive({**event, "utcoffset": utcoffset() - hours_east}, message=None)
    assert [e["timestamp"] for e in handler.events] == [sent_at]
    assert receiver.guard.refused == 0
