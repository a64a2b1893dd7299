"""Fuzzed events: whatever arrives, nothing crashes and the rest of the batch is stored."""

from __future__ import annotations

import math
import time
import uuid as uuidlib

import hypothesis
import pytest
from celery.events.state import State
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_celery_monitor.camera import Camera
from django_celery_monitor.models import TaskState, WorkerState
from tests import events

pytestmark = pytest.mark.django_db

HUGE = "x" * 10_000_000  # made once: a 10 MB repr
STRANGE_TEXT = st.sampled_from(
    ["", " ", "\x00", "a\x00b", "\ud800", "\udfff tail", "é", "🙂" * 50, "u" * 300, HUGE]
)
NOW = time.time()
TIMES = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0, 1e20, NOW + 1e9, NOW, NOW - 1])
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    STRANGE_TEXT,
    TIMES,
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
TYPES = st.sampled_from(
    [
        "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
        "task-retried", "task-revoked", "task-rejected", "task-progress", "task-",
        "worker-online", "worker-heartbeat", "worker-offline", "worker-", "bogus", "",
    ]
)  # fmt: skip
FIELDS = [
    "name", "args", "kwargs", "result", "exception", "traceback", "runtime", "retries",
    "eta", "expires", "parent_id", "root_id", "root", "freq", "active", "processed",
    "loadavg", "sw_ident", "sw_ver", "sw_sys", "utcoffset", "local_received",
    "worker", "event", "heartbeats", "children", "_private",
]  # fmt: skip


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A value that is usually of the right kind (so events get past the first check)."""
    return st.integers(0, 4).flatmap(lambda n: valid if n else ANYTHING)


REQUIRED = {
    "type": mostly(TYPES),
    "hostname": mostly(st.sampled_from(["w1", "w2", "w" * 300, "w\x00", "\ud800"])),
    "uuid": mostly(st.sampled_from(["u1", "u2", "u" * 300, "u\x00"])),
    "timestamp": st.one_of(st.just(NOW - 5), TIMES, ANYTHING),
    "clock": mostly(st.integers(0, 1000)),
}


@st.composite
def fuzzed_events(draw) -> dict:
    """An event whose every field may be wrong, or missing."""
    event = draw(st.fixed_dictionaries(REQUIRED, optional=dict.fromkeys(FIELDS, ANYTHING)))
    missing = draw(st.sampled_from([None, None, None, *REQUIRED]))
    event.pop(missing, None)
    return event


batches = st.lists(mostly(fuzzed_events()), min_size=1, max_size=8)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=batches, position=st.integers(0, 8))
def test_fuzzed_events_never_stop_the_camera_or_the_rest_of_the_batch(app, batch, position):
    camera = Camera(State(), app=app)
    good = str(uuidlib.uuid4())
    arriving = list(batch)
    arriving[position:position] = [
        events.received(good, name="proj.good"),
        events.started(good),
        events.succeeded(good, result="'ok'"),
    ]
    for event in arriving:
        camera.state.event(event)
    camera.capture()

    assert not camera.pending_tasks and not camera.pending_workers  # all written
    taken = len(batch) - camera.guard.refused
    hypothesis.event(f"fuzzed events taken: {min(taken, 3)}{'+' if taken >= 3 else ''}")
    hypothesis.event(f"repaired: {bool(camera.guard.repaired)}")
    row = TaskState.objects.get(task_id=good)
    assert (row.state, row.name, row.result) == ("SUCCESS", "proj.good", "'ok'")
    limit = camera.settings.max_text_length
    for task in TaskState.objects.all():
        assert len(task.task_id) <= 255 and len(task.state) <= 64
        for value in (task.args, task.kwargs, task.result, task.traceback, task.exception):
            assert value is None or (len(value) <= limit and "\x00" not in value)
        if task.args and len(task.args) == limit:
            assert task.args.endswith("more characters cut]")
    for worker in WorkerState.objects.all():
        assert len(worker.hostname) <= 255 and "\x00" not in worker.hostname
