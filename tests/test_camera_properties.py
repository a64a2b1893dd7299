"""Properties of the camera's merge, over every order and duplication of a task's events.

A task runs in one to three attempts, each on any of three workers; every attempt but the
last is retried, the last one ends (succeeded, failed, revoked) or is still received or
running. A client may send an attempt (task-sent), by a clock of its own: its event may
be timed after the worker's (the client's clock runs ahead, or it sent the event after the
message went, as Celery does). Its events arrive in any order, some twice, with shots
after random prefixes. The row must end in the state Celery's precedence gives the final
attempt, on that attempt's worker, with everything the events carried.
"""

from __future__ import annotations

import time
import uuid as uuidlib
from dataclasses import dataclass, field

import pytest
from celery.events.state import State
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_celery_monitor.camera import Camera
from django_celery_monitor.models import TaskState
from tests import events

pytestmark = pytest.mark.django_db

WORKERS = ("w1@host", "w2@host", "w3@host")
CLIENT = "client@web"
ENDINGS = ("succeeded", "failed", "revoked", "started", "received")
EXPECTED_STATE = {
    "succeeded": "SUCCESS",
    "failed": "FAILURE",
    "revoked": "REVOKED",
    "started": "STARTED",
    "received": "RECEIVED",
}


@dataclass
class History:
    """A task's events in their true order, and the row they must leave."""

    task_id: str
    events: list[dict] = field(default_factory=list)
    state: str = ""
    worker: str = ""
    retries: int = 0
    tstamp: float = 0.0
    received: float = 0.0
    started: float | None = None


@st.composite
def histories(draw) -> History:
    attempts = draw(st.integers(1, 3))
    ending = draw(st.sampled_from(ENDINGS))
    hosts = [draw(st.sampled_from(WORKERS)) for _ in range(attempts)]
    history = History(str(uuidlib.uuid4()))
    clock = time.time() - 1000

    def add(kind: str, host: str, **fields) -> float:
        nonlocal clock
        clock += draw(st.sampled_from([0.001, 0.5, 3.0]))
        history.events.append(events.task_event(kind, history.task_id, host, clock, **fields))
        return clock

    for attempt, host in enumerate(hosts):
        final = attempt == attempts - 1
        received = add(
            "received", host, name="proj.fetch", args="('url',)", kwargs="{}", retries=attempt
        )
        if draw(st.booleans()):
            # The client's clock: behind, or ahead of the worker's by up to seconds.
            skew = draw(st.sampled_from([-0.4, 0.0005, 0.002, 4.0]))
            history.events.append(
                events.task_event(
                    "sent", history.task_id, CLIENT, received + skew, name="proj.fetch",
                    args="('url',)", kwargs="{}", retries=attempt,
                )
            )  # fmt: skip
        if not final:
            add("started", host)
            add("retried", host, exception=f"IOError({attempt})", traceback="tb")
            continue
        history.received = history.tstamp = received
        if ending != "received":
            history.started = history.tstamp = add("started", host)
        if ending == "succeeded":
            history.tstamp = add("succeeded", host, result="'42'", runtime=1.5)
        elif ending == "failed":
            history.tstamp = add("failed", host, exception="KeyError('k')", traceback="tb")
        elif ending == "revoked":
            history.tstamp = add("revoked", host, terminated=True, signum=15)
        history.state = EXPECTED_STATE[ending]
        history.worker = host
        history.retries = attempt
    return history


@st.composite
def deliveries(draw) -> tuple[History, list[dict], set[int]]:
    """A history, its events in the order they arrive (some twice), and where shots fall."""
    history = draw(histories())
    arriving = draw(st.permutations(history.events))
    for duplicate in draw(st.lists(st.sampled_from(history.events), max_size=3)):
        arriving.insert(draw(st.integers(0, len(arriving))), dict(duplicate))
    shots = draw(st.sets(st.integers(0, len(arriving) - 1), max_size=4))
    return history, arriving, shots


def deliver(app, arriving: list[dict], shots: set[int], cameras: int = 1) -> None:
    """Feed the events, with a shot at each position in ``shots``, and a last shot.

    With several cameras, each shot is taken by a new camera with an empty state (the
    camera restarted, or another camera got those events).
    """
    camera = Camera(State(), app=app)
    for position, event in enumerate(arriving):
        if position in shots:
            camera.capture()
            if cameras > 1:
                camera = Camera(State(), app=app)
        camera.state.event(dict(event))
    camera.capture()


def check(history: History) -> None:
    row = TaskState.objects.select_related("worker").get(task_id=history.task_id)
    assert row.state == history.state
    assert row.worker.hostname == history.worker
    assert row.retries == history.retries
    assert row.tstamp.timestamp() == pytest.approx(history.tstamp, abs=1e-3)
    assert row.received.timestamp() == pytest.approx(history.received, abs=1e-3)
    if history.started is not None:
        assert row.started.timestamp() == pytest.approx(history.started, abs=1e-3)
    assert (row.name, row.args, row.kwargs) == ("proj.fetch", "('url',)", "{}")
    if history.state == "SUCCESS":
        assert (row.result, row.runtime) == ("'42'", 1.5)
    if history.state == "FAILURE":
        assert row.exception == "KeyError('k')"
    assert not row.hidden


SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(deliveries())
def test_any_order_and_duplication_ends_in_the_final_attempts_state(app, delivery):
    history, arriving, shots = delivery
    deliver(app, arriving, shots)
    check(history)


@SETTINGS
@given(deliveries())
def test_the_same_across_camera_restarts_between_shots(app, delivery):
    history, arriving, shots = delivery
    deliver(app, arriving, shots, cameras=2)
    check(history)
