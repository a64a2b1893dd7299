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
    "state", "monitor_events", "monitor_retries",  # the task's state, the camera's notes
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


def good_task(camera: Camera, task_id: str) -> None:
    for event in (
        events.received(task_id, name="proj.good"),
        events.started(task_id),
        events.succeeded(task_id, result="'ok'"),
    ):
        camera.state.event(event)


@pytest.mark.parametrize(
    "late",
    [
        events.received("bad", monitor_events="x"),
        events.received("bad", monitor_events={"succeeded": [NOW, "evil@h", {"result": "'x'"}]}),
        events.received("bad", monitor_retries="x"),
        events.task_event("sent", "bad", state=[]),  # after task-started: all fields copied
        events.task_event("sent", "bad", state="SUCCESS"),
    ],
)
def test_event_fields_named_like_the_tasks_state_or_the_cameras_notes_are_dropped(app, late):
    """Celery's State copies a task event's fields onto its task: such a field would
    replace the camera's notes or the task's state (a shot raised, and lost its rows)."""
    camera = Camera(State(), app=app)
    good_task(camera, "good")
    camera.state.event(events.received("bad", name="proj.bad"))
    camera.state.event(events.started("bad"))
    camera.state.event(late)
    camera.capture()
    camera.capture()
    assert not camera.pending_tasks
    assert camera.guard.repaired == 1
    rows = dict(TaskState.objects.values_list("task_id", "state"))
    assert rows == {"good": "SUCCESS", "bad": "STARTED"}


def test_a_task_whose_row_cannot_be_made_is_left_out_alone(app, monkeypatch, caplog):
    """Whatever Celery's State holds, one task the camera cannot make a row of (here its
    signature, then its row, raise) leaves the others' rows in the shot."""
    from django_celery_monitor import camera as camera_module

    camera = Camera(State(), app=app)
    for task_id in ("a", "b", "c"):
        camera.state.event(events.received(task_id))
    signature, task_row = camera_module._signature, Camera.task_row

    def failing_signature(task):
        if task.uuid == "a":
            raise RuntimeError("no signature")
        return signature(task)

    def failing_row(self, task, *args):
        if task.uuid == "b":
            raise RuntimeError("no row")
        return task_row(self, task, *args)

    monkeypatch.setattr(camera_module, "_signature", failing_signature)
    monkeypatch.setattr(Camera, "task_row", failing_row)
    camera.capture()
    assert list(TaskState.objects.values_list("task_id", flat=True)) == ["c"]
    assert "Could not make the row of task 'a'" in caplog.text
    assert "Could not make the row of task 'b'" in caplog.text


def test_a_processed_count_past_64_bits_is_left_and_events_missed_fit_the_column(app):
    camera = Camera(State(), app=app)
    top = 2**63 - 1
    for processed in (0, 2**64, top, 0, top):  # 2**64: ignored; then a restart
        camera.state.event(events.worker_event("heartbeat", processed=processed))
        camera.worker_update_freq = 0
        camera.capture()
    assert not camera.pending_workers
    assert WorkerState.objects.get(hostname=events.WORKER).events_missed == top


def test_a_batch_the_driver_refuses_by_an_overflow_is_written_row_by_row(app, monkeypatch):
    """SQLite's driver raises OverflowError for an integer past 64 bits: a refused batch."""
    from django_celery_monitor import writer

    write_snapshot = writer.write_snapshot

    def refusing_batches(workers, tasks):
        if len(tasks) > 1:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return write_snapshot(workers, tasks)

    monkeypatch.setattr(writer, "write_snapshot", refusing_batches)
    camera = Camera(State(), app=app)
    for task_id in ("a", "b"):
        camera.state.event(events.received(task_id))
    camera.capture()
    assert not camera.pending_tasks
    assert TaskState.objects.count() == 2


def test_workers_not_heard_of_for_an_hour_are_forgotten_past_a_bound(app, monkeypatch):
    """Workers named anew at each start leave nothing behind in the camera for ever."""
    from django_celery_monitor import camera as camera_module

    monkeypatch.setattr(camera_module, "REMEMBERED_WORKERS", 3)
    camera = Camera(State(), app=app)

    def beat(hostname: str, processed: int) -> None:
        camera.state.event(events.worker_event("heartbeat", hostname, processed=processed))
        camera.state.event(events.started(f"{hostname}-task", hostname=hostname))

    for n in range(3):
        beat(f"old{n}@h", 1)
    camera.capture()
    for key, (written_at, offline) in list(camera._worker_written.items()):
        camera._worker_written[key] = (written_at - 3601, offline)  # an hour ago
    beat("new@h", 1)
    camera.capture()  # 4 remembered: the old ones, quiet for an hour, are forgotten
    assert set(camera._worker_written) == {"new@h"}
    assert set(camera._missed) == set(camera._started_seen) == {"new@h"}
    assert WorkerState.objects.count() == 4  # their rows stay
    beat("old0@h", 5)  # back: counted from here on
    camera.capture()
    assert set(camera._worker_written) == {"new@h", "old0@h"}
