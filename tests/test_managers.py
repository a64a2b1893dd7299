"""The querysets: the 1.1.2 API and the batch writer."""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from datetime import timedelta

import pytest
from celery import states
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_celery_monitor.models import RollupMark, TaskState, WorkerState
from django_celery_monitor.writer import incoming_state_wins, merge_task_values, write_snapshot

pytestmark = pytest.mark.django_db


def new_id() -> str:
    return str(uuidlib.uuid4())


def make_task(state="SUCCESS", age=timedelta(0), **fields) -> TaskState:
    return TaskState.objects.create(
        task_id=new_id(), state=state, tstamp=timezone.now() - age, **fields
    )


@pytest.mark.parametrize(
    ("current", "incoming", "wins"),
    [
        (None, "RECEIVED", True),
        ("RECEIVED", "STARTED", True),
        ("STARTED", "SUCCESS", True),
        ("STARTED", "RECEIVED", False),
        ("SUCCESS", "STARTED", False),
        ("SUCCESS", "RECEIVED", False),
        ("FAILURE", "RETRY", False),  # a finished task never goes back
        ("RETRY", "RECEIVED", True),  # a retried task is received again
        ("STARTED", "RETRY", True),
        ("SUCCESS", "FAILURE", False),  # SUCCESS has the higher precedence
        ("REVOKED", "SUCCESS", True),
        ("STARTED", "STARTED", True),
        ("STARTED", "PROGRESS", True),  # custom states rank above STARTED in Celery
        ("PENDING", "RECEIVED", True),
    ],
)
def test_incoming_state_wins(current, incoming, wins):
    assert incoming_state_wins(current, incoming) is wins


def test_merge_never_blanks_and_late_events_only_fill_in():
    current = {"state": "SUCCESS", "name": None, "result": "3", "received": None, "args": None}
    late = {"state": "RECEIVED", "name": "proj.add", "result": None, "args": "(1,)"}
    assert merge_task_values(current, late) == {"name": "proj.add", "args": "(1,)"}
    newer = {"state": "SUCCESS", "result": None, "name": None}
    assert merge_task_values({"state": "STARTED", "name": "n", "result": None}, newer) == {
        "state": "SUCCESS"
    }


def test_expire_by_states_never_when_expires_is_none():
    make_task(age=timedelta(days=100))
    assert TaskState.objects.expire_by_states([states.SUCCESS], None) is None
    assert TaskState.objects.active().count() == 1


def test_expire_by_states_hides_old_rows_of_those_states_in_batches(settings):
    settings.CELERY_MONITOR_PURGE_BATCH_SIZE = 2
    for _ in range(5):
        make_task(age=timedelta(days=2))
    young = make_task(age=timedelta(hours=1))
    failed = make_task(state="FAILURE", age=timedelta(days=2))
    with CaptureQueriesContext(connection) as queries:
        hidden = TaskState.objects.expire_by_states([states.SUCCESS], timedelta(days=1))
    assert hidden == 5
    updates = [q for q in queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 3  # batches of 2, 2 and 1
    assert set(TaskState.objects.active()) == {young, failed}
    assert TaskState.objects.expire_by_states([states.SUCCESS], 86400) == 0  # seconds work too


def test_expire_by_states_goes_on_from_where_each_batch_ended(settings):
    """Several states, rows sharing a time across batches: each hidden once, all of them."""
    settings.CELERY_MONITOR_PURGE_BATCH_SIZE = 3
    now = timezone.now()
    same = now - timedelta(days=3)
    old = [
        TaskState.objects.create(task_id=new_id(), state=state, tstamp=tstamp)
        for state in ("SUCCESS", "FAILURE")
        for tstamp in [same] * 4 + [now - timedelta(days=2, minutes=n) for n in range(5)]
    ]
    young = make_task(age=timedelta(hours=1))
    other = make_task(state="REVOKED", age=timedelta(days=3))
    with CaptureQueriesContext(connection) as queries:
        hidden = TaskState.objects.expire_by_states(
            [states.SUCCESS, states.FAILURE, states.SUCCESS], timedelta(days=1)
        )
    assert hidden == len(old) == 18
    assert set(TaskState.objects.filter(hidden=True)) == set(old)
    assert set(TaskState.objects.active()) == {young, other}
    updates = [q for q in queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 6  # 9 rows a state: batches of 3, 3 and 3, twice


def batch_sizes(monkeypatch, rows: int, delay: float = 0.0) -> list[int]:
    """Hide ``rows`` rows with ``_in_batches``; return the size of each batch, in order."""
    for _ in range(rows):
        make_task(age=timedelta(days=2))
    sizes = []

    def hide(batch):
        sizes.append(len(batch))
        time.sleep(delay)
        return batch.update(hidden=True)

    queryset = TaskState.objects.all()
    assert queryset._in_batches(queryset.filter(hidden=False), hide, pause=False) == rows
    return sizes


def test_batches_grow_from_the_first_to_the_setting_while_they_are_quick(settings, monkeypatch):
    from django_celery_monitor import managers

    settings.CELERY_MONITOR_PURGE_BATCH_SIZE = 8
    monkeypatch.setattr(managers, "FIRST_BATCH", 2)
    assert batch_sizes(monkeypatch, 27) == [2, 4, 8, 8, 5]


def test_a_slow_batch_makes_the_next_ones_smaller(settings, monkeypatch):
    from django_celery_monitor import managers

    settings.CELERY_MONITOR_PURGE_BATCH_SIZE = 16
    monkeypatch.setattr(managers, "FIRST_BATCH", 16)
    monkeypatch.setattr(managers, "MIN_BATCH", 5)
    monkeypatch.setattr(managers, "BATCH_SECONDS", 0.05)
    # Each batch takes over 0.2 s, four times the time allowed: under a quarter, and then
    # no fewer than the fewest.
    assert batch_sizes(monkeypatch, 26, delay=0.2) == [16, 5, 5]


def test_custom_states_are_found_by_the_state_index_or_by_time(settings, monkeypatch):
    from django_celery_monitor import managers

    settings.CELERY_MONITOR_PURGE_BATCH_SIZE = 2
    custom = [make_task(state=s, age=timedelta(days=6)) for s in ("PROGRESS", "UPLOADING") * 3]
    make_task(state="PROGRESS", age=timedelta(days=1))
    make_task(state="SUCCESS", age=timedelta(days=6))
    assert TaskState.objects.expire_custom_states(timedelta(days=5)) == 6
    assert set(TaskState.objects.filter(hidden=True)) == set(custom)

    # More distinct states than it looks up one by one: by time instead, the same rows.
    TaskState.objects.update(hidden=False)
    monkeypatch.setattr(managers, "MAX_CUSTOM_STATES", 1)
    assert TaskState.objects.expire_custom_states(timedelta(days=5)) == 6
    assert set(TaskState.objects.filter(hidden=True)) == set(custom)


def test_expired_and_active():
    old = make_task(age=timedelta(days=2))
    make_task(age=timedelta(minutes=1))
    assert list(TaskState.objects.expired([states.SUCCESS], timedelta(days=1))) == [old]
    TaskState.objects.filter(pk=old.pk).update(hidden=True)
    assert old not in TaskState.objects.active()


def test_purge_deletes_hidden_rows_in_batches(settings):
    settings.CELERY_MONITOR_PURGE_BATCH_SIZE = 3
    keep = make_task()
    for _ in range(7):
        make_task(hidden=True)
    with CaptureQueriesContext(connection) as queries:
        assert TaskState.objects.purge() == 7
    deletes = [q for q in queries if q["sql"].startswith("DELETE")]
    assert len(deletes) == 3
    assert list(TaskState.objects.all()) == [keep]


def test_on_sqlite_a_cleanup_pauses_between_batches(settings, monkeypatch):
    # A writer waiting for SQLite's lock gets it between two batches.
    from django_celery_monitor import managers

    pauses = []
    monkeypatch.setattr(managers.time, "sleep", pauses.append)
    settings.CELERY_MONITOR_PURGE_BATCH_SIZE = 3
    for _ in range(7):
        make_task(hidden=True)
    assert TaskState.objects.purge() == 7
    if connection.vendor == "sqlite":
        assert len(pauses) == 2  # between the 3 batches, not after the last
        assert all(0 <= pause <= managers.MAX_BATCH_PAUSE for pause in pauses)
    else:
        assert pauses == []  # row locks: writers of other rows never wait

    # Marking tasks lost is the camera's own work, within a shot: it never pauses.
    pauses.clear()
    worker = WorkerState.objects.create(hostname="gone@test")
    for _ in range(7):
        make_task(state="STARTED", worker=worker)
    assert TaskState.objects.mark_lost([worker.pk]) == 7
    assert pauses == []


def test_a_cleanup_waits_for_the_writes_under_way_then_not_for_later_ones():
    from django_celery_monitor.writer import WritesFirst

    turns = WritesFirst()
    assert turns.wait("default", timeout=0) is True  # nothing under way
    first_in, first_out, second_in, second_out = (threading.Event() for _ in range(4))
    waited: list[bool] = []

    def write(entered, leave):
        with turns.writing("default"):
            entered.set()
            leave.wait(5)

    threading.Thread(target=write, args=(first_in, first_out)).start()
    assert first_in.wait(5)
    assert turns.wait("other", timeout=0) is True  # another database's writes do not count
    assert turns.wait("default", timeout=0.01) is False
    waiter = threading.Thread(target=lambda: waited.append(turns.wait("default", timeout=5)))
    waiter.start()
    deadline = time.monotonic() + 5
    while not turns._changed._waiters:  # until the waiter waits (CPython's Condition)
        assert time.monotonic() < deadline
        time.sleep(0.001)
    threading.Thread(target=write, args=(second_in, second_out)).start()
    assert second_in.wait(5)
    first_out.set()
    waiter.join(5)
    # The write that began after the wait did not hold it back: it is still under way.
    assert waited == [True] and not second_out.is_set()
    assert turns.wait("default", timeout=0.01) is False
    second_out.set()
    assert turns.wait("default", timeout=5) is True


@pytest.mark.django_db(transaction=True)
def test_on_sqlite_a_cleanup_lets_the_writes_of_its_process_go_first(settings):
    # The camera's shots and its cleanup share a process: a batch of the cleanup waits for
    # a shot under way, which then needs no luck of SQLite's busy handler to get the lock.
    from django_celery_monitor.writer import writes_first

    settings.CELERY_MONITOR_PURGE_BATCH_SIZE = 3
    for _ in range(4):
        make_task(hidden=True)
    entered, leave = threading.Event(), threading.Event()
    ended: list[float] = []

    def write():
        with writes_first.writing(connection.alias):
            entered.set()
            leave.wait(5)
            ended.append(time.monotonic())

    statements: list[float] = []

    def note(execute, sql, params, many, context):
        # The read of how far the rollups go comes first, and needs no lock to wait for.
        if RollupMark._meta.db_table not in sql:
            statements.append(time.monotonic())
        return execute(sql, params, many, context)

    writing = threading.Thread(target=write)
    writing.start()
    assert entered.wait(5)
    sqlite = connection.vendor == "sqlite"
    if sqlite:
        threading.Timer(0.2, leave.set).start()
    with connection.execute_wrapper(note):
        assert TaskState.objects.purge() == 4
    leave.set()
    writing.join(5)
    if sqlite:
        assert statements and min(statements) >= ended[0]
    else:
        assert statements and max(statements) < ended[0]  # row locks: nothing to wait for


def test_update_state_follows_precedence():
    tid = new_id()
    now = timezone.now()
    obj = TaskState.objects.update_state("STARTED", tid, {"tstamp": now, "name": None})
    assert obj.state == "STARTED"
    obj = TaskState.objects.update_state("SUCCESS", tid, {"tstamp": now, "result": "1"})
    assert (obj.state, obj.result) == ("SUCCESS", "1")
    obj = TaskState.objects.update_state("RECEIVED", tid, {"tstamp": now, "name": "proj.x"})
    obj.refresh_from_db()
    assert (obj.state, obj.name, obj.result) == ("SUCCESS", "proj.x", "1")


def test_select_for_update_or_create():
    worker, created = WorkerState.objects.select_for_update_or_create(
        hostname="a", defaults={"freq": 2.0}
    )
    assert created and worker.freq == 2.0
    worker, created = WorkerState.objects.select_for_update_or_create(
        hostname="a", defaults={"freq": 3.0}
    )
    assert not created and WorkerState.objects.get(hostname="a").freq == 3.0


def test_update_heartbeat_is_throttled_and_never_goes_back():
    now = timezone.now()
    worker = WorkerState.objects.update_heartbeat("w", heartbeat=now, update_freq=60)
    assert worker.last_heartbeat == now
    again = WorkerState.objects.update_heartbeat("w", now + timedelta(seconds=5), update_freq=60)
    assert again.last_heartbeat == now  # within update_freq: not written
    WorkerState.objects.update_heartbeat("w", now - timedelta(minutes=5), update_freq=0)
    assert WorkerState.objects.get(hostname="w").last_heartbeat == now


def task_values(state="RECEIVED", **fields):
    return {"state": state, "tstamp": timezone.now(), "name": "proj.t", **fields}


def test_write_snapshot_inserts_updates_and_links_workers():
    first, second = new_id(), new_id()
    ids, written = write_snapshot(
        {"w1": {"freq": 2.0}},
        {first: task_values(worker="w1"), second: task_values(worker="w2")},
    )
    assert written == 2
    assert set(ids) == {"w1", "w2"}
    assert TaskState.objects.get(task_id=second).worker.hostname == "w2"
    _, written = write_snapshot({}, {first: task_values("SUCCESS", result="ok")})
    assert written == 1
    assert TaskState.objects.get(task_id=first).result == "ok"
    _, written = write_snapshot({}, {first: task_values("STARTED")})
    assert TaskState.objects.get(task_id=first).state == "SUCCESS"  # a late STARTED loses
    if connection.vendor != "mysql":  # MySQL does not tell changed rows from unchanged
        assert written == 0


@pytest.mark.django_db(transaction=True)
def test_two_cameras_writing_at_once_lose_nothing():
    """Concurrent overlapping batches: every row is written once, with the final state."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers with a file lock; this is PostgreSQL's case.")
    ids = [new_id() for _ in range(400)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def writer(order, state):
        try:
            barrier.wait()
            for _ in range(3):
                write_snapshot(
                    {"w1": {"freq": 2.0}, "w2": {"freq": 2.0}},
                    {tid: task_values(state, worker="w1") for tid in order},
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [
        threading.Thread(target=writer, args=(ids, "RECEIVED")),
        threading.Thread(target=writer, args=(list(reversed(ids)), "SUCCESS")),
        threading.Thread(target=writer, args=(ids[::2], "STARTED")),
        threading.Thread(target=writer, args=(ids[1::2] + ids[::2], "SUCCESS")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert TaskState.objects.count() == 400
    assert set(TaskState.objects.values_list("state", flat=True)) == {"SUCCESS"}
    assert WorkerState.objects.count() == 2


def test_custom_states_expire_after_the_pending_expiry_by_default(settings):
    old = make_task(state="PROGRESS", age=timedelta(days=6))
    make_task(state="PROGRESS", age=timedelta(days=4))
    make_task(state="SUCCESS", age=timedelta(days=6))  # another group's business
    expires = timedelta(days=5)
    assert TaskState.objects.expire_custom_states(expires) == 1
    assert list(TaskState.objects.filter(hidden=True)) == [old]
    assert TaskState.objects.expire_custom_states(None) is None


def test_the_camera_expires_custom_states(settings, app):
    from celery.events.state import State

    from django_celery_monitor.camera import Camera

    settings.CELERY_MONITOR_TASK_PENDING_EXPIRES = timedelta(days=1)
    stale = make_task(state="PROGRESS", age=timedelta(days=2))
    camera = Camera(State(), app=app)
    assert camera.on_cleanup() == 1
    assert not TaskState.objects.filter(pk=stale.pk).exists()  # purged
    settings.CELERY_MONITOR_TASK_CUSTOM_EXPIRES = timedelta(days=3)
    kept = make_task(state="PROGRESS", age=timedelta(days=2))
    assert camera.on_cleanup() == 0
    assert TaskState.objects.filter(pk=kept.pk).exists()


@pytest.mark.parametrize("says_offline", [False, True])
def test_heartbeats_move_on_when_the_clock_goes_back_without_use_tz(
    settings, monkeypatch, says_offline
):
    from datetime import datetime
    from datetime import timezone as dt_timezone

    from django_celery_monitor import writer
    from django_celery_monitor.utils import fromtimestamp

    settings.USE_TZ = False
    settings.TIME_ZONE = "Europe/Berlin"
    switch = datetime(2026, 10, 25, 1, 0, tzinfo=dt_timezone.utc).timestamp()
    hostname = "celery@dst"
    for offset in (-30, -2, 2, 30, 600, 3599, 3700):  # 02:59:30 CEST ... 03:01:40 CET
        now = switch + offset
        monkeypatch.setattr(writer.time, "time", lambda now=now: now)
        row = {"last_heartbeat": fromtimestamp(now)}
        if says_offline:  # the flag goes with the heartbeat: online, then offline
            row["offline"] = offset > 0
        write_snapshot({hostname: row}, {})
        recorded = WorkerState.objects.get(hostname=hostname)
        assert recorded.last_heartbeat == fromtimestamp(now).replace(fold=0), offset
        assert recorded.offline is (says_offline and offset > 0), offset


def test_mark_lost_marks_what_was_running_on_stopped_workers():
    dead = WorkerState.objects.create(hostname="dead@test")
    alive = WorkerState.objects.create(hostname="alive@test")
    lost = [make_task(state=state, worker=dead) for state in ("STARTED", "PROGRESS")]
    # RECEIVED: its message is not acknowledged yet, and the broker delivers it again.
    kept = [
        make_task(state=s, worker=dead)
        for s in ("RECEIVED", "SUCCESS", "RETRY", "PENDING", "REJECTED")
    ]
    other = make_task(state="STARTED", worker=alive)
    assert TaskState.objects.mark_lost([dead.pk]) == 2
    assert set(TaskState.objects.filter(lost=True)) == set(lost)
    assert not any(TaskState.objects.get(pk=t.pk).lost for t in [*kept, other])
    assert TaskState.objects.mark_lost([dead.pk]) == 0  # once


def test_a_lost_task_that_moves_on_is_not_lost_any_more():
    task = make_task(state="STARTED", lost=True)
    later = {"state": "SUCCESS", "tstamp": task.tstamp + timedelta(seconds=5)}
    assert merge_task_values({"state": "STARTED", "lost": True, "tstamp": task.tstamp}, later) == {
        "state": "SUCCESS",
        "tstamp": later["tstamp"],
        "lost": False,
    }
    late = {"state": "RECEIVED", "tstamp": task.tstamp - timedelta(seconds=5)}
    assert "lost" not in merge_task_values({"state": "STARTED", "lost": True}, late)


def test_task_ids_that_differ_only_in_case_are_two_tasks():
    write_snapshot({}, {"abc": task_values("SUCCESS"), "ABC": task_values("FAILURE")})
    write_snapshot({}, {"abc ": task_values("STARTED")})
    states = dict(TaskState.objects.values_list("task_id", "state"))
    assert states == {"abc": "SUCCESS", "ABC": "FAILURE", "abc ": "STARTED"}


# -- a camera writing while the cleanup works in batches --------------------------------------


def camera_writes(task_id: str, state: str = states.SUCCESS) -> None:
    """What a camera does between the read of a batch's keys and its statement."""
    TaskState.objects.update_state(state, task_id, {"tstamp": timezone.now()})


@pytest.fixture
def camera_between_batches(monkeypatch):
    """Make the camera write ``task_ids`` after each batch's keys are read."""
    from django_celery_monitor import managers

    task_ids: list[str] = []
    real = managers.ExtendedQuerySet._in_batches

    def in_batches(self, rows, act, *args, **kwargs):
        def acting(batch):
            for task_id in task_ids:
                camera_writes(task_id)
            return act(batch)

        return real(self, rows, acting, *args, **kwargs)

    monkeypatch.setattr(managers.ExtendedQuerySet, "_in_batches", in_batches)
    return task_ids


def test_a_task_that_finishes_meanwhile_is_not_expired(camera_between_batches):
    task = make_task(states.STARTED, age=timedelta(days=10))
    other = make_task(states.STARTED, age=timedelta(days=10))
    camera_between_batches.append(task.task_id)
    assert TaskState.objects.expire_by_states({states.STARTED}, timedelta(days=5)) == 1
    task.refresh_from_db()
    assert (task.state, task.hidden) == (states.SUCCESS, False)
    assert TaskState.objects.get(pk=other.pk).hidden


def test_a_task_a_new_event_shows_again_is_not_purged(camera_between_batches):
    task = make_task(states.STARTED, age=timedelta(days=10), hidden=True)
    gone = make_task(states.STARTED, age=timedelta(days=10), hidden=True)
    camera_between_batches.append(task.task_id)
    assert TaskState.objects.purge() == 1
    task.refresh_from_db()
    assert (task.state, task.hidden) == (states.SUCCESS, False)
    assert not TaskState.objects.filter(pk=gone.pk).exists()


def test_a_task_that_finishes_meanwhile_is_not_marked_lost(camera_between_batches):
    worker = WorkerState.objects.create(hostname="w@h")
    task = make_task(states.STARTED, worker=worker)
    other = make_task(states.STARTED, worker=worker)
    camera_between_batches.append(task.task_id)
    assert TaskState.objects.mark_lost([worker.pk]) == 1
    task.refresh_from_db()
    assert (task.state, task.lost) == (states.SUCCESS, False)
    assert TaskState.objects.get(pk=other.pk).lost


# -- a router that reads from a replica ---------------------------------------------------


class PrimaryAndReplica:
    """Reads from "other" (a replica), writes to "default"."""

    def db_for_read(self, model, **hints):
        return "other"

    def db_for_write(self, model, **hints):
        return "default"


@pytest.mark.django_db(databases=["default", "other"])
def test_writes_go_to_the_database_for_writes(settings):
    settings.DATABASE_ROUTERS = [f"{__name__}.PrimaryAndReplica"]
    now = timezone.now()
    WorkerState.objects.update_heartbeat("w1@h", now, 0)
    TaskState.objects.update_state(states.SUCCESS, "t-1", {"tstamp": now})
    TaskState.objects.select_for_update_or_create(
        task_id="t-2", defaults={"state": states.STARTED, "tstamp": now}
    )
    TaskState.objects.filter(task_id="t-1").update(hidden=True)
    assert TaskState.objects.purge() == 1
    assert list(TaskState.objects.using("default").values_list("task_id", flat=True)) == ["t-2"]
    assert WorkerState.objects.using("default").filter(hostname="w1@h").exists()
    assert not TaskState.objects.using("other").exists()
    assert not WorkerState.objects.using("other").exists()


def test_a_lookup_finds_a_row_and_the_plain_fields_make_one():
    worker, created = WorkerState.objects.select_for_update_or_create(
        hostname__in=["w@h"], hostname="w@h", defaults={"freq": 2.0}
    )
    assert created and (worker.hostname, worker.freq) == ("w@h", 2.0)
    again, created = WorkerState.objects.select_for_update_or_create(
        hostname__in=["w@h"], defaults={"freq": 5.0}
    )
    assert not created and again.pk == worker.pk and again.freq == 5.0


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "America/Los_Angeles"])
def test_a_heartbeat_is_throttled_by_the_clock_that_wrote_the_last(settings, zone):
    settings.USE_TZ = False
    settings.TIME_ZONE = zone
    first = WorkerState.objects.update_heartbeat("w@h", timezone.now(), 60)
    later = timezone.now() + timedelta(seconds=1)
    # Within the minute: not written again.
    assert (
        WorkerState.objects.update_heartbeat("w@h", later, 60).last_heartbeat
        == first.last_heartbeat
    )
    WorkerState.objects.filter(pk=first.pk).update(
        last_update=timezone.now() - timedelta(seconds=2)
    )
    # Two seconds after the last write, with a period of one: written.
    assert WorkerState.objects.update_heartbeat("w@h", later, 1).last_heartbeat == later
