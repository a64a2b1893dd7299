"""The camera: a snapshot of Celery's State becomes one batched write."""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from datetime import timedelta
from unittest import mock

import pytest
from celery.events.state import State
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_celery_monitor.camera import Camera
from django_celery_monitor.models import RollupMark, TaskState, WorkerState
from tests import events
from tests.sessions import cut_on_the_server

pytestmark = pytest.mark.django_db


def new_id() -> str:
    return str(uuidlib.uuid4())


@pytest.fixture
def state():
    return State()


@pytest.fixture
def camera(state, app):
    return Camera(state, app=app)


def feed(state, *evs):
    for event in evs:
        state.event(event)


def shutter(camera):
    """A shot, as the camera's timer takes it."""
    camera.capture()


def row(task_id) -> TaskState:
    return TaskState.objects.get(task_id=task_id)


@pytest.mark.parametrize("split", ["shots", "cameras"])
def test_a_task_revoked_by_two_workers_keeps_the_later_revoke_however_the_events_split(
    state, camera, app, split
):
    """The later of two task-revoked events decides the row's time and worker, whether the
    earlier one comes after it in another shot, or to another camera writing after it."""
    tid, now = new_id(), time.time()
    feed(state, events.received(tid, ts=now - 9))
    feed(state, events.task_event("revoked", tid, hostname="w1@h", ts=now - 4, terminated=True))
    shutter(camera)
    late = events.task_event("revoked", tid, hostname="w2@h", ts=now - 5, terminated=False)
    if split == "shots":
        feed(state, late)
        shutter(camera)
    else:
        other_state = State()
        other = Camera(other_state, app=app)
        feed(other_state, late)
        shutter(other)
    task = row(tid)
    assert task.state == "REVOKED"
    assert task.tstamp.timestamp() == pytest.approx(now - 4)
    assert task.worker.hostname == "w1@h"


def test_camera_without_app_uses_the_current_app(state, app):
    app.set_current()
    assert Camera(state).app is app


def test_models_are_the_app_models(camera):
    assert camera.TaskState is TaskState
    assert camera.WorkerState is WorkerState


def test_a_task_is_written_with_everything_its_events_carry(state, camera):
    tid, parent = new_id(), new_id()
    now = time.time()
    feed(
        state,
        events.received(tid, ts=now - 3, parent_id=parent, root_id=parent, eta=None),
        events.started(tid, ts=now - 2),
        events.succeeded(tid, ts=now - 1, result="'done'", runtime=1.25),
    )
    shutter(camera)
    task = row(tid)
    assert task.state == "SUCCESS"
    assert task.name == "proj.add"
    assert (task.args, task.kwargs, task.result) == ("(1, 2)", "{}", "'done'")
    assert task.runtime == 1.25
    assert task.worker.hostname == events.WORKER
    assert task.received.timestamp() == pytest.approx(now - 3)
    assert task.started.timestamp() == pytest.approx(now - 2)
    assert task.tstamp.timestamp() == pytest.approx(now - 1)
    assert (task.parent_id, task.root_id) == (parent, parent)
    assert task.retries == 0


def test_states_move_forward_across_shutters(state, camera):
    tid = new_id()
    feed(state, events.received(tid))
    shutter(camera)
    assert row(tid).state == "RECEIVED"
    feed(state, events.started(tid))
    shutter(camera)
    assert row(tid).state == "STARTED"
    feed(state, events.failed(tid, exception="KeyError('k')"))
    shutter(camera)
    task = row(tid)
    assert task.state == "FAILURE"
    assert task.exception == "KeyError('k')"
    assert task.result == "KeyError('k')"  # as 1.1.2 stored it
    assert task.traceback == "Traceback..."
    assert task.name == "proj.add"  # not blanked by the events without a name


def test_a_late_event_never_regresses_a_finished_task(state, camera):
    tid = new_id()
    now = time.time()
    feed(state, events.started(tid, ts=now - 1), events.succeeded(tid, ts=now))
    shutter(camera)
    task = row(tid)
    assert task.state == "SUCCESS"
    assert task.name is None  # the camera never saw task-received

    # task-received and task-started arrive late, in a later snapshot.
    feed(state, events.received(tid, ts=now - 2, name="proj.late"), events.started(tid))
    shutter(camera)
    task = row(tid)
    assert task.state == "SUCCESS"
    assert task.name == "proj.late"  # the late event fills in what it alone carries
    assert task.args == "(1, 2)"
    assert task.result == "3"
    assert task.tstamp.timestamp() == pytest.approx(now)


@pytest.mark.parametrize("together", [True, False])
def test_a_clients_task_sent_timed_after_the_workers_events_never_wins(state, camera, together):
    """Celery times task-sent after the message went, by the client's clock: it may come
    later than the worker's received and started, in the same shot or a later one."""
    tid, now = new_id(), time.time()
    feed(state, events.received(tid, ts=now + 0.002), events.started(tid, ts=now + 0.003))
    if not together:
        shutter(camera)
    feed(state, events.task_event("sent", tid, "client@web", now + 0.005, name="proj.add"))
    shutter(camera)
    task = row(tid)
    assert (task.state, task.worker.hostname) == ("STARTED", events.WORKER)
    assert task.tstamp.timestamp() == pytest.approx(now + 0.003)
    # The worker's later events, timed before the client's, still move the task on.
    feed(state, events.succeeded(tid, ts=now + 0.004))
    shutter(camera)
    assert row(tid).state == "SUCCESS"


def test_a_retried_task_moves_on_and_keeps_its_retries(state, camera):
    tid = new_id()
    feed(
        state,
        events.received(tid),
        events.started(tid),
        events.task_event("retried", tid, exception="RuntimeError()", traceback="tb"),
    )
    shutter(camera)
    assert row(tid).state == "RETRY"
    feed(state, events.received(tid, retries=1), events.started(tid), events.succeeded(tid))
    shutter(camera)
    task = row(tid)
    assert task.state == "SUCCESS"
    assert task.retries == 1
    assert task.exception == "RuntimeError()"


def test_unfinished_tasks_are_not_rewritten_by_each_shutter(state, camera):
    ids = [new_id() for _ in range(50)]
    feed(state, *(events.received(tid) for tid in ids))
    shutter(camera)
    assert TaskState.objects.filter(state="RECEIVED").count() == 50
    assert len(state.tasks) == 50  # Celery keeps unfinished tasks after the shutter

    with CaptureQueriesContext(connection) as queries:
        shutter(camera)
    assert len(queries) == 0

    feed(state, events.started(ids[0]))
    with CaptureQueriesContext(connection) as queries:
        shutter(camera)
    # On PostgreSQL the merge runs as a statement the connection prepared.
    task_updates = [q for q in queries
                    if "celery_monitor_taskstate" in q["sql"] or "_merge" in q["sql"]]  # fmt: skip
    assert task_updates, "the changed task was written"
    assert row(ids[0]).state == "STARTED"


def test_a_shutter_costs_a_handful_of_statements_not_one_per_task(state, camera):
    ids = [new_id() for _ in range(300)]
    feed(state, *(events.received(tid) for tid in ids))
    with CaptureQueriesContext(connection) as queries:
        shutter(camera)
    assert TaskState.objects.count() == 300
    # Django's own statements (SQLite's staging INSERTs go to the driver directly).
    assert len(queries) <= 16

    feed(state, *(events.succeeded(tid) for tid in ids))
    with CaptureQueriesContext(connection) as queries:
        shutter(camera)
    assert TaskState.objects.filter(state="SUCCESS").count() == 300
    assert len(queries) <= 16


def test_a_failed_write_keeps_the_batch_for_the_next_shutter(state, camera):
    tid = new_id()
    feed(state, events.received(tid), events.started(tid), events.succeeded(tid))
    with mock.patch(
        "django_celery_monitor.writer.write_snapshot",
        side_effect=OperationalError("database is down"),
    ):
        shutter(camera)
    assert not TaskState.objects.filter(task_id=tid).exists()
    assert tid not in state.tasks  # Celery dropped the finished task from its state

    shutter(camera)
    assert row(tid).state == "SUCCESS"
    assert camera.pending_tasks == {}


def test_events_seen_while_the_database_is_down_are_merged_in_order(state, camera):
    tid = new_id()
    feed(state, events.received(tid))
    with mock.patch(
        "django_celery_monitor.writer.write_snapshot", side_effect=OperationalError("down")
    ):
        shutter(camera)
        feed(state, events.started(tid), events.succeeded(tid, result="42"))
        shutter(camera)
    shutter(camera)
    task = row(tid)
    assert (task.state, task.result, task.name) == ("SUCCESS", "42", "proj.add")


@pytest.mark.parametrize(
    ("freq", "maxrate", "period"),
    [(2.0, None, 2.0), (2.0, "6/m", 10.0), (2.0, "1/s", 2.0), (1.0, "1/m", 60.0)],
)
def test_the_heartbeat_says_how_often_shots_are_taken(state, app, freq, maxrate, period):
    # The health check expects a heartbeat a period: maxrate makes the period longer.
    from django_celery_monitor.models import CameraState

    camera = Camera(state, app=app, freq=freq, maxrate=maxrate)
    camera.record_heartbeat()
    beat = CameraState.objects.get()
    assert beat.frequency == period
    assert beat.allowed_silence >= 3 * period


def test_a_shot_skipped_by_maxrate_is_written_with_the_next(state, app):
    camera = Camera(state, app=app, maxrate="1/h")
    first, second = new_id(), new_id()
    feed(state, events.received(first), events.succeeded(first))
    shutter(camera)  # takes the one token of the hour
    assert row(first).state == "SUCCESS"
    feed(state, events.received(second), events.succeeded(second))
    shutter(camera)  # skipped by maxrate: Celery still clears the state
    assert not TaskState.objects.filter(task_id=second).exists()
    assert second not in state.tasks
    camera.maxrate = None
    shutter(camera)
    assert row(second).state == "SUCCESS"


def test_the_last_shot_writes_what_just_happened(state, app):
    camera = Camera(state, app=app, freq=3600, cleanup_freq=3600)
    camera.install()
    try:
        tid = new_id()
        feed(state, events.received(tid), events.succeeded(tid))
        camera.cancel()  # a second after install: no timer shot was due
        assert row(tid).state == "SUCCESS"
    finally:
        camera.close()


def test_closing_drops_what_the_timers_still_had_to_do(state, app, monkeypatch):
    """A call a timer ran after close() had closed its thread's connections would open one
    again, left open when the thread ends: here the settling of unfinished tasks, due while
    the thread closing the camera is slow to stop the timer."""
    from django.db import connections

    from django_celery_monitor import camera as camera_module

    closed: set[str] = set()
    close_all = connections.close_all

    def noting_close_all():
        closed.add(threading.current_thread().name)
        close_all()

    monkeypatch.setattr(connections, "close_all", noting_close_all)
    monkeypatch.setattr(camera_module, "RECONCILE_AFTER", 1.0)
    settled: list[bool] = []  # whether its thread's connections were closed already
    camera = Camera(state, app=app, freq=3600, cleanup_freq=3600)
    camera.reconcile = lambda: settled.append(threading.current_thread().name in closed)
    camera.install()
    stop = camera.cleanup_timer.stop

    def slow_stop():
        time.sleep(1.5)  # the settling comes due meanwhile
        stop()

    camera.cleanup_timer.stop = slow_stop
    camera.close()
    assert True not in settled


def capture_and_close(camera):
    """A shot on a thread of its own, which closes the connections it opened."""
    from django.db import connections

    try:
        camera.capture()
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)  # the shot's thread writes on its own connection
def test_the_receiver_is_not_blocked_while_a_shot_is_written(state, camera):
    writing, release = threading.Event(), threading.Event()

    def slow_write(*args, **kwargs):
        writing.set()
        release.wait(10)
        raise OperationalError("slow and then down")

    feed(state, events.received(new_id()))
    with mock.patch("django_celery_monitor.writer.write_snapshot", side_effect=slow_write):
        shot = threading.Thread(target=capture_and_close, args=(camera,))
        shot.start()
        assert writing.wait(10)
        handled = threading.Thread(target=state.event, args=(events.received(new_id()),))
        handled.start()
        handled.join(2)
        blocked = handled.is_alive()
        release.set()
        shot.join(10)
        handled.join(10)
    assert not blocked, "the state's lock was held during the write"
    assert len(camera.pending_tasks) == 1  # kept for the next shot


def test_an_unexpected_error_of_the_write_keeps_the_rows(state, camera):
    tid = new_id()
    feed(state, events.received(tid), events.succeeded(tid))
    with (
        mock.patch(
            "django_celery_monitor.writer.write_snapshot", side_effect=RuntimeError("a bug")
        ),
        pytest.raises(RuntimeError),
    ):
        shutter(camera)
    assert tid in camera.pending_tasks
    shutter(camera)
    assert row(tid).state == "SUCCESS"


@pytest.mark.django_db(transaction=True)  # the session is cut: no test transaction to keep
def test_a_connection_cut_by_the_server_between_shots_loses_no_row(state, camera):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no server to cut a connection")
    first, second = new_id(), new_id()
    feed(state, events.received(first), events.succeeded(first))
    shutter(camera)
    cut_on_the_server(connection)
    feed(state, events.received(second), events.succeeded(second))
    shutter(camera)  # its first statement finds the session gone (test_writer: each one)
    assert second in camera.pending_tasks
    shutter(camera)  # on a new connection
    assert row(second).state == "SUCCESS"
    assert camera.pending_tasks == {}


def test_a_task_evicted_from_celerys_state_is_still_written(app):
    state = State(max_tasks_in_memory=10)
    camera = Camera(state, app=app)
    first, *others = [new_id() for _ in range(10)]
    feed(state, events.received(first), *(events.received(tid) for tid in others))
    shutter(camera)
    feed(state, events.started(first), events.succeeded(first))
    feed(state, *(events.received(new_id()) for _ in range(10)))  # evicts the oldest
    assert first not in state.tasks
    shutter(camera)
    assert row(first).state == "SUCCESS"


def test_an_outage_during_the_row_by_row_write_keeps_the_rows(state, camera):
    from django.db import DataError

    from django_celery_monitor.writer import write_snapshot

    ids = [new_id() for _ in range(3)]
    feed(state, *(events.received(tid) for tid in ids))
    calls = iter(["refuse", "write", "down"])

    def flaky(workers, tasks, **kwargs):
        step = next(calls, "write")
        if step == "refuse":
            raise DataError("one row is bad")
        if step == "down":
            raise OperationalError("the database went away")
        return write_snapshot(workers, tasks, **kwargs)

    with mock.patch("django_celery_monitor.writer.write_snapshot", side_effect=flaky):
        shutter(camera)
    assert len(camera.pending_tasks) == 3  # the whole batch, written rows included
    shutter(camera)
    assert TaskState.objects.filter(task_id__in=ids).count() == 3
    assert camera.pending_tasks == {}


def test_a_shot_larger_than_the_cap_is_written_whole(state, camera, settings):
    # The cap bounds what a failed write keeps, not a shot of a backlog.
    settings.CELERY_MONITOR_MAX_PENDING_TASKS = 3
    ids = [new_id() for _ in range(10)]
    feed(state, *(events.received(tid) for tid in ids))
    shutter(camera)
    assert set(TaskState.objects.values_list("task_id", flat=True)) == set(ids)
    assert camera.pending_tasks == {}


def test_after_a_shot_the_state_forgets_the_finished_tasks_only(state, camera):
    done, failed, running, waiting = new_id(), new_id(), new_id(), new_id()
    feed(state, events.received(done), events.started(done), events.succeeded(done),
         events.received(failed), events.failed(failed), events.received(running),
         events.started(running), events.received(waiting),
         events.worker_event("heartbeat"))  # fmt: skip
    shutter(camera)
    assert set(state.tasks) == {running, waiting}  # as Celery's clear() leaves it
    assert not state.workers and not state.event_count and not state.task_count
    assert list(state.tasks_by_time()) == []

    # A task finishing later is forgotten by the shot that writes it; the rest stay.
    feed(state, events.succeeded(running))
    shutter(camera)
    assert set(state.tasks) == {waiting}
    assert row(running).state == "SUCCESS" and row(waiting).state == "RECEIVED"
    # A late event of a forgotten task: Celery's State sees a started task (and keeps it,
    # as its clear() would); the row keeps its final state.
    feed(state, events.started(done))
    shutter(camera)
    assert set(state.tasks) == {waiting, done}
    assert row(done).state == "SUCCESS"


def test_a_forgotten_task_is_freed_without_the_garbage_collector(state, camera):
    # Celery's Task refers to itself; a camera with thousands of finished tasks a second
    # would leave them all to the collector, which then walks them again and again.
    import gc
    import weakref

    parent, child = new_id(), new_id()
    feed(state, events.received(parent), events.started(parent), events.succeeded(parent),
         events.received(child, parent_id=parent, root_id=parent),
         events.succeeded(child))  # fmt: skip
    refs = [weakref.ref(state.tasks[parent]), weakref.ref(state.tasks[child])]
    kept = state.tasks[child]  # held by someone else: it still works
    gc.disable()
    try:
        shutter(camera)
        assert refs[0]() is None
        assert kept.as_dict()["uuid"] == child
    finally:
        gc.enable()
    del kept
    assert refs[1]() is None
    assert row(child).state == "SUCCESS" and row(parent).state == "SUCCESS"


def test_a_camera_that_keeps_finished_tasks_keeps_them(state, app):
    camera = Camera(state, app=app)
    camera.clear_after = False
    tid = new_id()
    feed(state, events.received(tid), events.succeeded(tid))
    shutter(camera)
    assert tid in state.tasks and camera._finished == []


def test_pending_rows_are_capped_while_the_database_is_down(state, camera, settings):
    settings.CELERY_MONITOR_MAX_PENDING_TASKS = 3
    ids = [new_id() for _ in range(5)]
    with mock.patch(
        "django_celery_monitor.writer.write_snapshot", side_effect=OperationalError("down")
    ):
        for tid in ids:
            feed(state, events.received(tid), events.succeeded(tid))
            shutter(camera)
    assert list(camera.pending_tasks) == ids[2:]  # the newest are kept
    shutter(camera)
    assert set(TaskState.objects.values_list("task_id", flat=True)) == set(ids[2:])


def test_an_expired_task_that_moves_on_is_shown_again(state, camera):
    tid = new_id()
    feed(state, events.received(tid))
    shutter(camera)
    TaskState.objects.filter(task_id=tid).update(hidden=True)
    feed(state, events.started(tid))
    shutter(camera)
    assert not row(tid).hidden


def test_times_from_a_clock_far_ahead_are_not_trusted(state, camera):
    ahead = time.time() + 365 * 86400
    tid = new_id()
    feed(state, events.worker_event("heartbeat"))
    shutter(camera)
    camera.worker_update_freq = 0
    feed(state, events.received(tid, ts=ahead))  # also a heartbeat of its worker
    shutter(camera)
    assert row(tid).tstamp.timestamp() < time.time() + 60
    worker = WorkerState.objects.get()
    assert worker.last_heartbeat.timestamp() < time.time() + 60


def test_untrusted_event_values_are_stored_safely(state, camera):
    nul, surrogate, huge, long_id = new_id(), new_id(), new_id(), "x" * 300
    feed(
        state,
        events.received(nul, args="('a\x00b',)", name="proj.\x00nul"),
        events.received(surrogate, args="('\ud800',)", kwargs="{'k': '\udcff'}"),
        events.received(huge),
        events.succeeded(huge, result="r" * 2_000_000),
        events.received(long_id),
        events.received(new_id(), ts=1e15),
        events.task_event("started", new_id(), ts=None),
    )
    shutter(camera)
    assert TaskState.objects.count() == 6
    assert "\x00" not in row(nul).args
    assert row(nul).name == "proj.\\x00nul"
    assert row(surrogate).args == "('?',)"
    result = row(huge).result
    assert len(result) == camera.settings.max_text_length
    assert "more characters cut" in result
    stored = TaskState.objects.get(task_id__startswith="x" * 100)
    assert len(stored.task_id) == 255
    assert TaskState.objects.filter(tstamp__isnull=True).count() == 0


def test_a_batch_with_a_row_the_database_refuses_still_writes_the_others(state, camera):
    good, bad = new_id(), new_id()
    feed(state, events.received(good), events.received(bad))
    camera.collect(state)
    camera.pending_tasks[bad]["retries"] = 10**12  # too big for its column on PostgreSQL
    camera.pending_tasks[bad]["runtime"] = "not a number"  # refused everywhere
    camera.flush()
    assert row(good).state == "RECEIVED"
    assert not TaskState.objects.filter(task_id=bad).exists()
    assert camera.pending_tasks == {}


def test_workers_are_written_with_their_heartbeat(state, camera):
    now = time.time()
    feed(
        state, events.worker_event("online", ts=now - 1), events.worker_event("heartbeat", ts=now)
    )
    shutter(camera)
    worker = WorkerState.objects.get(hostname=events.WORKER)
    assert worker.last_heartbeat.timestamp() == pytest.approx(now)
    assert (worker.sw_ident, worker.sw_ver, worker.sw_sys) == ("py-celery", "5.7.0", "Linux")
    assert (worker.freq, worker.active, worker.processed) == (2.0, 1, 10)
    assert worker.loadavg == [0.5, 0.25, 0.1]
    assert worker.is_alive()
    assert not worker.offline


def test_worker_heartbeats_are_throttled(state, camera):
    feed(state, events.worker_event("heartbeat"))
    shutter(camera)
    feed(state, events.worker_event("heartbeat", processed=11))
    with CaptureQueriesContext(connection) as queries:
        shutter(camera)
    assert len(queries) == 0
    assert WorkerState.objects.get().processed == 10

    camera.worker_update_freq = 0
    feed(state, events.worker_event("heartbeat", processed=12))
    shutter(camera)
    assert WorkerState.objects.get().processed == 12


def test_a_worker_that_says_goodbye_is_offline_at_once(state, camera):
    feed(state, events.worker_event("heartbeat"))
    shutter(camera)
    assert WorkerState.objects.get().is_alive()
    feed(state, events.worker_event("offline"))
    shutter(camera)
    worker = WorkerState.objects.get()
    assert worker.offline
    assert not worker.is_alive()
    feed(state, events.worker_event("online"))
    shutter(camera)
    assert WorkerState.objects.get().is_alive()


def _two_cameras(app) -> tuple[Camera, Camera]:
    """Two cameras that share one queue's events (competing consumers): each gets a part,
    and writes its workers at every shot."""
    cameras = Camera(State(), app=app), Camera(State(), app=app)
    for camera in cameras:
        camera.worker_update_freq = 0
    return cameras


def test_a_camera_writing_an_older_heartbeat_later_changes_nothing_of_the_worker(app):
    """Camera A got a heartbeat of a busy worker, camera B the next one; B's shot is written
    first. A's later shot must not put the older heartbeat's counts and load on the row."""
    a, b = _two_cameras(app)
    now = time.time()
    feed(a.state, events.worker_event("heartbeat", ts=now - 4, active=3, processed=100,
                                      loadavg=[9.0, 9.0, 9.0]))  # fmt: skip
    feed(b.state, events.worker_event("heartbeat", ts=now - 2, active=0, processed=110,
                                      loadavg=[0.1, 0.1, 0.1], sw_ver="5.7.1"))  # fmt: skip
    shutter(b)
    shutter(a)
    worker = WorkerState.objects.get()
    assert worker.last_heartbeat.timestamp() == pytest.approx(now - 2, abs=1e-3)
    assert (worker.active, worker.processed, worker.loadavg, worker.sw_ver) == (
        0, 110, [0.1, 0.1, 0.1], "5.7.1"
    )  # fmt: skip
    # A newer heartbeat, from either camera, is taken whole.
    feed(a.state, events.worker_event("heartbeat", ts=now - 1, active=2, processed=120))
    shutter(a)
    worker = WorkerState.objects.get()
    assert (worker.active, worker.processed) == (2, 120)
    assert worker.is_alive()


def test_a_heartbeat_received_before_the_goodbye_does_not_bring_the_worker_back(app):
    """Camera A got the worker's goodbye, camera B the heartbeat sent just before it, and
    B's shot is written after A's: the worker stays offline."""
    a, b = _two_cameras(app)
    now = time.time()
    feed(a.state, events.worker_event("heartbeat", ts=now - 6))
    shutter(a)
    feed(b.state, events.worker_event("heartbeat", ts=now - 2, processed=50))
    feed(a.state, events.worker_event("offline", ts=now - 1))
    shutter(a)
    worker = WorkerState.objects.get()
    assert worker.offline and not worker.is_alive()
    assert worker.last_heartbeat.timestamp() == pytest.approx(now - 1, abs=1e-3)
    shutter(b)
    worker = WorkerState.objects.get()
    assert worker.offline and not worker.is_alive()
    assert worker.processed == 10  # the goodbye's, not the older heartbeat's
    # The worker's next start is taken.
    feed(b.state, events.worker_event("online", ts=now))
    shutter(b)
    worker = WorkerState.objects.get()
    assert not worker.offline and worker.is_alive()


def test_a_goodbye_noted_while_a_shot_runs_is_written_by_the_next(state, camera, monkeypatch):
    """The event hook notes a worker's goodbye once the state has taken it (and forgotten
    the worker), outside the state's lock: a shot may run in between."""
    camera.worker_update_freq = 0
    feed(state, events.worker_event("heartbeat"))
    shutter(camera)
    feed(state, events.worker_event("heartbeat", "w2@h"))
    type(state).event(state, events.worker_event("offline"))  # taken, not noted yet
    worker_row = camera.worker_row

    def noted_meanwhile(worker):
        camera._last_worker_event[events.WORKER] = "offline"  # as the hook does, late
        return worker_row(worker)

    monkeypatch.setattr(camera, "worker_row", noted_meanwhile)
    shutter(camera)  # w2 only: the state has forgotten the worker
    assert not WorkerState.objects.get(hostname=events.WORKER).offline
    monkeypatch.setattr(camera, "worker_row", worker_row)
    shutter(camera)
    assert WorkerState.objects.get(hostname=events.WORKER).offline


def test_task_events_do_not_overwrite_the_worker_heartbeat_period(state, camera):
    feed(state, events.worker_event("heartbeat", freq=5.0))
    shutter(camera)
    camera.worker_update_freq = 0
    tid = new_id()
    feed(state, events.received(tid))  # creates the worker in the state, with freq=60
    shutter(camera)
    assert WorkerState.objects.get().freq == 5.0
    assert row(tid).worker == WorkerState.objects.get()


def test_handle_task_and_handle_worker_write_one_row_now(state, camera):
    tid = new_id()
    feed(state, events.worker_event("heartbeat"), events.received(tid))
    worker = camera.handle_worker((events.WORKER, state.workers[events.WORKER]))
    assert isinstance(worker, WorkerState)
    assert worker.last_heartbeat == camera.get_heartbeat(state.workers[events.WORKER])
    task = camera.handle_task((tid, state.tasks[tid]))
    assert isinstance(task, TaskState)
    assert (task.state, task.worker) == ("RECEIVED", worker)
    assert camera.handle_task((tid, state.tasks[tid])) is None  # nothing changed


def test_handle_task_returns_the_values_the_event_carried_as_1_1_2_did(state, camera):
    tid = new_id()
    feed(state, events.received(tid), events.started(tid), events.succeeded(tid, result=42))

    task = camera.handle_task((tid, state.tasks[tid]))

    assert task.result == 42  # the int the event carried, as 1.1.2 returned it
    assert (task.state, task.name, task.runtime) == ("SUCCESS", "proj.add", 0.5)
    assert row(tid).result == "42"  # the database stores the text, as before


def test_handle_task_of_a_late_event_returns_only_what_is_stored(state, camera):
    tid = new_id()
    feed(state, events.started(tid), events.succeeded(tid, result=42))
    assert camera.handle_task((tid, state.tasks[tid])).result == 42

    # The same task seen by a camera that only got its late events: task-received (which
    # fills in the name and arguments) and a task-failed that loses to the SUCCESS.
    late = State()
    feed(
        late,
        events.received(tid, name="proj.late", args=(7, 8)),
        events.failed(tid, exception=KeyError("k"), traceback="Traceback (late)"),
    )
    task = Camera(late, app=camera.app).handle_task((tid, late.tasks[tid]))

    stored = row(tid)
    assert (stored.state, stored.result, stored.exception) == ("SUCCESS", "42", None)
    assert (stored.name, stored.args) == ("proj.late", "(7, 8)")
    assert task.state == "SUCCESS"
    assert task.result == "42"  # not the late event's exception, which was not stored
    assert task.exception is None and task.traceback is None
    assert task.name == "proj.late"
    assert task.args == (7, 8)  # filled in from this event: its own value


def test_handle_task_does_not_overlay_a_value_that_was_cut(state, camera, settings):
    settings.CELERY_MONITOR_MAX_TEXT_LENGTH = 100
    tid = new_id()
    result = list(range(200))
    feed(state, events.received(tid), events.succeeded(tid, result=result))

    task = camera.handle_task((tid, state.tasks[tid]))

    assert task.result == row(tid).result
    assert task.result.endswith("characters cut]")


def test_get_heartbeat_without_heartbeats_is_none(state, camera):
    assert camera.get_heartbeat(state.Worker("nobody")) is None


def test_on_cleanup_expires_each_state_group_and_purges(state, camera, settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.CELERY_MONITOR_TASK_ERROR_EXPIRES = None  # never
    old = timezone.now() - timedelta(days=10)
    for state_name in ("SUCCESS", "FAILURE", "STARTED", "SUCCESS"):
        TaskState.objects.create(task_id=new_id(), state=state_name, tstamp=old)
    TaskState.objects.create(task_id=new_id(), state="SUCCESS", tstamp=timezone.now())
    assert camera.on_cleanup() == 3
    assert sorted(TaskState.objects.values_list("state", flat=True)) == ["FAILURE", "SUCCESS"]


def two_attempts(tid, now):
    """Attempt 1 on w1 is retried; attempt 2 on w2 succeeds (events in their true order)."""
    return [
        events.received(tid, hostname="w1", ts=now - 10),
        events.started(tid, hostname="w1", ts=now - 9),
        events.task_event("retried", tid, hostname="w1", ts=now - 8, exception="IOError()"),
        events.received(tid, hostname="w2", ts=now - 5, retries=1),
        events.started(tid, hostname="w2", ts=now - 4),
        events.succeeded(tid, hostname="w2", ts=now - 3, result="'42'"),
    ]


def test_a_late_retried_of_an_earlier_attempt_never_takes_a_success_back(state, camera):
    tid, now = new_id(), time.time()
    first, second = two_attempts(tid, now)[:2], two_attempts(tid, now)[3:]
    retried = two_attempts(tid, now)[2]
    feed(state, *first)
    shutter(camera)
    feed(state, *second, retried)  # w1's task-retried arrives last, in the same shot
    shutter(camera)
    task = row(tid)
    assert (task.state, task.result, task.worker.hostname) == ("SUCCESS", "'42'", "w2")
    assert task.tstamp.timestamp() == pytest.approx(now - 3)
    assert task.retries == 1
    assert task.received.timestamp() == pytest.approx(now - 5)


def test_a_late_retried_in_a_later_shot_never_takes_a_success_back(state, camera):
    tid, now = new_id(), time.time()
    evs = two_attempts(tid, now)
    feed(state, *evs[:2], *evs[3:])
    shutter(camera)
    feed(state, evs[2])
    shutter(camera)
    task = row(tid)
    assert (task.state, task.worker.hostname, task.retries) == ("SUCCESS", "w2", 1)


def test_a_late_retried_of_an_earlier_attempt_does_not_stop_a_running_one(state, camera):
    tid, now = new_id(), time.time()
    evs = two_attempts(tid, now)[:5]  # attempt 2 is still running
    feed(state, *evs[:2], *evs[3:])
    shutter(camera)
    feed(state, evs[2])
    shutter(camera)
    task = row(tid)
    assert (task.state, task.worker.hostname) == ("STARTED", "w2")
    # And after the camera forgot the task (a restart), the late event still loses.
    camera2 = Camera(State(), app=camera.app)
    feed(camera2.state, evs[2])
    shutter(camera2)
    assert (row(tid).state, row(tid).worker.hostname) == ("STARTED", "w2")


def test_the_worker_is_the_one_of_the_event_that_decided_the_state(state, camera):
    tid, now = new_id(), time.time()
    evs = two_attempts(tid, now)
    feed(state, *evs[3:], evs[0], evs[1])  # attempt 1's events redelivered late
    shutter(camera)
    task = row(tid)
    assert (task.state, task.worker.hostname) == ("SUCCESS", "w2")
    assert task.started.timestamp() == pytest.approx(now - 4)


def test_a_bad_event_does_not_blind_the_camera_to_its_neighbours(state, camera):
    ids = [new_id() for _ in range(3)]
    feed(state, {**events.received(ids[0]), "clock": "not a number"})
    missing_uuid = events.received(new_id())
    del missing_uuid["uuid"]
    feed(state, missing_uuid, {**events.started(ids[0]), "worker": "spoofed"})
    for tid in ids[1:]:
        feed(state, events.received(tid), events.started(tid), events.succeeded(tid))
    shutter(camera)
    assert row(ids[0]).state == "STARTED"
    assert row(ids[0]).worker.hostname == events.WORKER
    assert [row(tid).state for tid in ids[1:]] == ["SUCCESS", "SUCCESS"]
    assert camera.guard.refused == 1
    assert camera.guard.repaired == 2


def test_redacted_fields_never_reach_the_database(state, camera, settings):
    settings.CELERY_MONITOR_REDACT_FIELDS = ["kwargs"]
    settings.CELERY_MONITOR_REDACT_TASKS = {"billing.*": ["args", "result", "exception"]}
    charge, add, unnamed = new_id(), new_id(), new_id()
    feed(
        state,
        events.received(charge, name="billing.charge", args="('4111-1111',)", kwargs="{'k': 1}"),
        events.failed(charge, exception="CardError('4111-1111')"),
        events.received(add, name="proj.add", args="(1, 2)", kwargs="{'secret': 's'}"),
        events.succeeded(add, result="3"),
        events.succeeded(unnamed, result="'card 4111'"),  # its name was never seen
    )
    shutter(camera)
    billed, added, anonymous = row(charge), row(add), row(unnamed)
    assert (billed.args, billed.kwargs, billed.result, billed.exception) == (
        "[redacted]", "[redacted]", "[redacted]", "[redacted]",
    )  # fmt: skip
    assert billed.traceback == "Traceback..."
    assert (added.args, added.kwargs, added.result) == ("(1, 2)", "[redacted]", "3")
    assert anonymous.result == "[redacted]"  # when in doubt, nothing is stored


def test_a_redaction_hook_sees_every_stored_text(state, camera, settings):
    seen = []

    def hook(name, field, value):
        seen.append((name, field))
        return value.replace("s3cr3t", "***")

    settings.CELERY_MONITOR_REDACT_HOOK = hook
    tid = new_id()
    feed(state, events.received(tid, kwargs="{'token': 's3cr3t'}"), events.succeeded(tid))
    shutter(camera)
    assert row(tid).kwargs == "{'token': '***'}"
    assert ("proj.add", "kwargs") in seen and ("proj.add", "result") in seen


def test_a_failing_redaction_hook_redacts(state, camera, settings):
    settings.CELERY_MONITOR_REDACT_HOOK = lambda name, field, value: 1 / 0
    tid = new_id()
    feed(state, events.received(tid), events.succeeded(tid))
    shutter(camera)
    assert (row(tid).args, row(tid).result) == ("[redacted]", "[redacted]")


def test_a_late_duplicate_does_not_hide_the_newer_event_from_the_next_shot(state, camera):
    tid, now = new_id(), time.time() - 100
    ev = {
        "retried": events.task_event("retried", tid, ts=now + 2),
        "started": events.started(tid, ts=now + 1),
        "received": events.received(tid, ts=now),
        "received again": events.received(tid, ts=now + 3, retries=1),
        "started again": events.started(tid, ts=now + 4),
    }
    feed(state, ev["retried"], ev["started"], ev["received"], ev["received again"])
    shutter(camera)
    assert row(tid).state == "RECEIVED"
    # Celery's task attributes end where they were at the last shot; the row must not.
    feed(state, ev["started again"], dict(ev["started"]))
    shutter(camera)
    assert row(tid).state == "STARTED"
    assert row(tid).started.timestamp() == pytest.approx(now + 4)


def test_tasks_of_a_worker_that_stopped_are_marked_lost(state, camera, settings):
    from datetime import timedelta

    from django.utils import timezone

    now = time.time()
    running, done = new_id(), new_id()
    feed(
        state,
        events.worker_event("heartbeat", ts=now),
        events.received(running, ts=now),
        events.started(running, ts=now),
        events.received(done, ts=now),
        events.succeeded(done, ts=now),
    )
    shutter(camera)
    assert camera.mark_lost_tasks() == 0  # the camera just started: not sure yet
    assert camera.mark_lost_tasks(force=True) == 0  # the worker is alive
    WorkerState.objects.update(last_heartbeat=timezone.now() - timedelta(minutes=5))
    assert camera.mark_lost_tasks(force=True) == 1
    assert (row(running).lost, row(done).lost) == (True, False)
    assert camera.mark_lost_tasks(force=True) == 0  # that worker was handled

    feed(state, events.succeeded(running))  # its events were only late
    shutter(camera)
    assert (row(running).state, row(running).lost) == ("SUCCESS", False)


def test_a_retry_is_not_its_own_parent(state, app):
    # Celery sends a retry from inside the task: a task sent with no parent gets itself as
    # the retry's parent (one sent by another task keeps that one).
    camera = Camera(state, app=app)
    root = new_id()
    feed(state, events.received(root, root_id=root))
    feed(state, events.task_event("retried", root, exception="E()"))
    feed(state, events.received(root, retries=1, root_id=root, parent_id=root))
    shutter(camera)
    assert (row(root).parent_id, row(root).root_id, row(root).retries) == (None, root, 1)
    assert not TaskState.objects.filter(parent_id=root).exists()  # not its own child


def test_a_worker_that_said_goodbye_stays_offline_while_it_finishes_its_tasks(state, app):
    # A warm shutdown: worker-offline first, then the events of the tasks it finishes
    # (which Celery's State takes for heartbeats), then the process exits.
    camera = Camera(state, app=app)
    tid = new_id()
    feed(state, events.worker_event("online"), events.received(tid), events.started(tid))
    shutter(camera)
    assert not WorkerState.objects.get().offline
    feed(state, events.worker_event("offline"))
    shutter(camera)
    feed(state, events.succeeded(tid))
    shutter(camera)
    worker = WorkerState.objects.get()
    assert worker.offline and not worker.is_alive()
    assert row(tid).state == "SUCCESS"
    # Started again: its own events say so.
    feed(state, events.worker_event("online"))
    shutter(camera)
    assert not WorkerState.objects.get().offline


@pytest.mark.parametrize(
    ("last_line", "exception"),
    [
        ("billiard.exceptions.TimeLimitExceeded: TimeLimitExceeded(2,)", "TimeLimitExceeded(2,)"),
        (
            "billiard.exceptions.WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL).",
            "WorkerLostError('Worker exited prematurely: signal 9 (SIGKILL).')",
        ),
        ("    raise exc", "ExceptionWithTraceback()"),  # no exception's line: as sent
    ],
)
def test_an_exception_billiard_wrapped_is_named_by_its_traceback(state, app, last_line, exception):
    # A hard time limit: the pool sends ExceptionWithTraceback(), whose repr says nothing.
    camera = Camera(state, app=app)
    tid = new_id()
    traceback = f'Traceback (most recent call last):\n  File "pool.py", line 745\n{last_line}\n'
    feed(
        state,
        events.received(tid),
        events.failed(tid, exception="ExceptionWithTraceback()", traceback=traceback),
    )
    shutter(camera)
    assert (row(tid).exception, row(tid).traceback) == (exception, traceback)


@pytest.mark.django_db(transaction=True)  # the session is cut: no test transaction to keep
def test_the_housekeeping_recovers_from_a_connection_cut_by_the_server(camera, settings):
    # Roll-ups, the cleanup and the queue samples run on the cleanup timer's thread, with
    # a connection of their own: cut by a database restart, the next run makes a new one.
    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no server to cut a connection")
    from django.db import connection as thread_connection

    settings.CELERY_MONITOR_TASK_SUCCESS_EXPIRES = 1
    jobs = [camera.housekeeping(job) for job in (camera.cleanup, camera.roll_up)]
    cut, go = threading.Event(), threading.Event()

    def run_on_one_thread() -> None:
        try:
            for job in jobs:
                job()
            cut_on_the_server(thread_connection)
            cut.set()
            go.wait(30)
            for _round in range(2):  # with CONN_MAX_AGE, the first may find it gone
                for job in jobs:
                    job()
        finally:
            thread_connection.close()

    thread = threading.Thread(target=run_on_one_thread)
    thread.start()
    assert cut.wait(30)
    TaskState.objects.create(
        task_id=new_id(), state="SUCCESS", tstamp=timezone.now() - timedelta(hours=1)
    )
    RollupMark.objects.all().delete()
    go.set()
    thread.join(60)
    assert not TaskState.objects.exists()  # expired and purged after the cut
    assert RollupMark.objects.exists()  # rolled up after the cut
