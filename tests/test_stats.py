"""The aggregates: checked against values computed by hand on small fixtures."""

from __future__ import annotations

import io
import math
import uuid as uuidlib
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from celery.events.state import State
from django.db.models import QuerySet
from django.utils import timezone

from django_celery_monitor import stats
from django_celery_monitor.camera import Camera
from django_celery_monitor.models import (
    CameraState,
    QueueSample,
    RollupMark,
    TaskRollup,
    TaskState,
    WorkerState,
)
from tests import events

UTC = dt_timezone.utc  # datetime.UTC from Python 3.11 on

pytestmark = pytest.mark.django_db

#: A fixed "now": 10:30:20 UTC, 20 s into a minute.
NOW = datetime(2026, 3, 2, 10, 30, 20, tzinfo=UTC)


def task(
    state, at, name="proj.add", runtime=None, wait=None, retries=0, exception=None, worker=None
):
    """A task row whose latest event was ``at`` seconds before NOW."""
    tstamp = NOW - timedelta(seconds=at)
    received = started = None
    if wait is not None:
        started = tstamp - timedelta(seconds=runtime or 0)
        received = started - timedelta(seconds=wait)
    return TaskState(
        task_id=str(uuidlib.uuid4()),
        state=state,
        name=name,
        tstamp=tstamp,
        runtime=runtime,
        retries=retries,
        exception=exception,
        received=received,
        started=started,
        worker=worker,
    )


@pytest.fixture
def fixture_rows():
    """In the last hour: 6 add (4 ok, 2 failed), 3 mul (3 ok, one retried), 1 revoked;
    an hour before: 2 add ok; and unfinished tasks."""
    rows = [
        task("SUCCESS", 30, runtime=0.1, wait=0.01),
        task("SUCCESS", 90, runtime=0.2, wait=0.02),
        task("SUCCESS", 150, runtime=0.4, wait=0.04),
        task("SUCCESS", 1000, runtime=0.8, wait=0.08),
        task("FAILURE", 200, runtime=None, exception="ValueError('a')"),
        task("FAILURE", 2000, exception="KeyError('k')"),
        task("SUCCESS", 400, name="proj.mul", runtime=2.0, retries=1),
        task("SUCCESS", 500, name="proj.mul", runtime=3.0),
        task("SUCCESS", 600, name="proj.mul", runtime=4.0),
        task("REVOKED", 700, name="proj.mul"),
        # the window before
        task("SUCCESS", 3600 + 100, runtime=1.0),
        task("SUCCESS", 3600 + 200, runtime=1.0),
        # unfinished
        task("STARTED", 20),
        task("RECEIVED", 25),
        task("RECEIVED", 26),
    ]
    TaskState.objects.bulk_create(rows)
    return rows


def test_histogram_buckets_hold_their_values():
    for value in (0.0, 0.0005, 0.001, 0.0011, 0.5, 1.0, 3.7, 1000.0):
        index = stats.bucket_index(value)
        assert value <= stats.bucket_upper(index) * (1 + 1e-9)
        if index:
            assert value > stats.bucket_upper(index - 1)
    assert stats.bucket_index(1e12) == stats.HIST_SIZE - 1
    assert stats.bucket_index(float("nan")) == 0
    # Durations a broken event may carry, too large to divide by the base.
    for value in (1e306, 1.7e308, float("inf")):
        assert stats.bucket_index(value) == stats.HIST_SIZE - 1


def test_quantiles_are_within_one_bucket_and_never_above_the_max():
    digest = stats.Digest()
    values = [0.1] * 50 + [1.0] * 45 + [10.0] * 5
    for value in values:
        digest.add(value)
    # Exact: p50 0.1, p95 1.0, max 10.
    ratio = 2 ** (1 / stats.HIST_STEPS)
    # The estimate is in the bucket of the exact value: within one bucket's ratio of it.
    assert 0.1 / ratio <= digest.quantile(0.5) <= 0.1 * ratio
    assert 1.0 / ratio <= digest.quantile(0.95) <= 1.0 * ratio
    assert digest.quantile(1.0) == 10.0
    assert digest.max == 10.0
    assert digest.mean == pytest.approx(sum(values) / 100)
    assert stats.Digest().quantile(0.5) is None
    # Stored and loaded: the same.
    loaded = stats.Digest.load(digest.count, digest.total, digest.max, digest.dump())
    assert loaded == digest


def test_exception_types():
    assert stats.exception_type("ValueError('boom')") == "ValueError"
    assert stats.exception_type("proj.errors.Timeout: slow") == "proj.errors.Timeout"
    assert stats.exception_type("") == ""
    assert stats.exception_type(None) == ""
    assert stats.exception_type("ValueError\tc") == "ValueError"
    assert stats.exception_type("  ValueError('b')") == ""
    assert stats.exception_type("T" * 300) == "T" * 200


def check_hour(data):
    totals = data["totals"]["current"]
    assert totals["states"] == {
        "SUCCESS": 7,
        "FAILURE": 2,
        "REVOKED": 1,
        "STARTED": 1,
        "RECEIVED": 2,
    }
    assert totals["finished"] == 10
    assert totals["retried"] == 1
    # Per minute of the window so far: it began at 9:32, and it is 10:30:20.
    assert totals["seconds"] == (NOW - data["start"]).total_seconds() == 3500
    assert totals["throughput_per_minute"] == pytest.approx(10 / (3500 / 60))
    assert totals["failure_rate"] == pytest.approx(2 / 9)
    previous = data["totals"]["previous"]
    assert previous["states"] == {"SUCCESS": 2}
    assert previous["failure_rate"] == 0

    by_name = {entry["name"]: entry for entry in data["task_names"]}
    assert list(by_name) == ["proj.add", "proj.mul"]  # the most tasks first
    add, mul = by_name["proj.add"], by_name["proj.mul"]
    assert (add["count"], add["succeeded"], add["failed"], add["revoked"]) == (6, 4, 2, 0)
    assert add["failure_rate"] == pytest.approx(2 / 6)
    assert (mul["count"], mul["succeeded"], mul["revoked"], mul["retried"]) == (4, 3, 1, 1)
    assert mul["failure_rate"] == 0
    ratio = 2 ** (1 / stats.HIST_STEPS)
    # add's runtimes 0.1 0.2 0.4 0.8: p50 is 0.2 (nearest rank), p95 0.8, max 0.8.
    assert 0.2 / ratio <= add["runtime"]["p50"] <= 0.2 * ratio
    assert 0.8 / ratio <= add["runtime"]["p95"] <= 0.8
    assert add["runtime"]["max"] == pytest.approx(0.8)
    assert add["runtime"]["count"] == 4
    # waits 10, 20, 40, 80 ms
    assert 0.02 / ratio <= add["wait"]["p50"] <= 0.02 * ratio
    assert add["wait"]["max"] == pytest.approx(0.08)
    assert mul["runtime"]["max"] == pytest.approx(4.0)
    assert mul["wait"]["count"] == 0

    failures = {f["exception_type"]: f for f in data["failure_types"]}
    assert set(failures) == {"ValueError", "KeyError"}
    assert failures["ValueError"]["count"] == 1
    assert failures["ValueError"]["latest_name"] == "proj.add"

    series = data["series"]
    assert len(series) == 30  # 2-minute intervals
    assert sum(point["succeeded"] for point in series) == 7
    assert sum(point["failed"] for point in series) == 2
    assert sum(point["retried"] for point in series) == 1
    # The last interval is the current one, 10:30-10:32: nothing finished in it yet. The
    # successes 30 s and 90 s ago (10:29:50, 10:28:50) are in 10:28-10:30, the one 150 s
    # ago (10:27:50) in the interval before.
    assert series[-1]["start"] == datetime(2026, 3, 2, 10, 30, tzinfo=UTC)
    assert series[-1]["succeeded"] == 0
    assert series[-1]["runtime_p50"] is None
    assert series[-2]["succeeded"] == 2
    assert series[-3]["succeeded"] == 1
    assert series[-2]["runtime_p50"] == pytest.approx(0.1, rel=0.2)


def test_the_window_from_the_rows_alone(fixture_rows):
    data = stats.dashboard("1h", now=NOW)
    assert data["start"] == datetime(2026, 3, 2, 9, 32, tzinfo=UTC)
    assert data["end"] == datetime(2026, 3, 2, 10, 32, tzinfo=UTC)
    check_hour(data)


def test_rollups_give_the_same_aggregates(fixture_rows):
    written = stats.roll_up(now=NOW)
    assert written > 0
    minutes = RollupMark.objects.get(period=60).until
    assert minutes == datetime(2026, 3, 2, 10, 29, tzinfo=UTC)  # 10:30:20 less a minute
    # Longer periods are written up to the minutes' mark, their last bucket in progress.
    assert RollupMark.objects.get(period=3600).until == minutes
    assert RollupMark.objects.get(period=6 * 3600).until == minutes
    # The rows are gone from the table: what the rollups hold is what is counted.
    assert TaskRollup.objects.filter(period=60).count() > 0
    # Rolling up again changes nothing.
    before = sorted(TaskRollup.objects.values_list("period", "bucket", "name", "state", "count"))
    stats.roll_up(now=NOW)
    after = sorted(TaskRollup.objects.values_list("period", "bucket", "name", "state", "count"))
    assert before == after
    # The rolled-up rows gone from the table: what the rollups hold is what is counted.
    TaskState.objects.filter(tstamp__lt=minutes, state__in=stats.FINISHED).delete()
    check_hour(stats.dashboard("1h", now=NOW))


def test_long_windows_read_hours(fixture_rows):
    later = NOW + timedelta(hours=2)
    stats.roll_up(now=later)
    hours = TaskRollup.objects.filter(period=3600)
    assert sum(hours.values_list("count", flat=True)) == 12
    quarters = TaskRollup.objects.filter(period=6 * 3600)  # 06:00-12:00 ended at 12:00
    assert sum(quarters.values_list("count", flat=True)) == 12
    TaskState.objects.filter(state__in=stats.FINISHED).delete()
    data = stats.dashboard("24h", now=later)
    assert data["totals"]["current"]["finished"] == 12
    assert len(data["series"]) == 24
    assert sum(p["succeeded"] for p in data["series"]) == 9
    week = stats.dashboard("7d", now=later)
    assert week["totals"]["current"]["finished"] == 12
    assert len(week["series"]) == 28


def test_unknown_window():
    with pytest.raises(ValueError, match="Unknown window"):
        stats.dashboard("2y")


def test_stuck_tasks(settings):
    online = WorkerState.objects.create(hostname="up@x", last_heartbeat=datetime.now(UTC), freq=2)
    gone = WorkerState.objects.create(
        hostname="down@x", last_heartbeat=datetime.now(UTC) - timedelta(hours=1), freq=2
    )
    now = datetime.now(UTC)
    long_ago = TaskState.objects.create(
        task_id="long", state="STARTED", tstamp=now - timedelta(hours=2), worker=online
    )
    TaskState.objects.create(task_id="short", state="STARTED", tstamp=now, worker=online)
    orphan = TaskState.objects.create(task_id="orphan", state="RECEIVED", tstamp=now, worker=gone)
    TaskState.objects.create(task_id="done", state="SUCCESS", tstamp=now, worker=gone)
    stuck = stats.stuck_tasks(now)
    assert [(t["task_id"], t["reason"]) for t in stuck["tasks"]] == [
        ("orphan", "worker offline"),
        ("long", "running long"),
    ]
    assert stuck["threshold"] == timedelta(hours=1)
    settings.CELERY_MONITOR_STUCK_AFTER = None
    assert [t["task_id"] for t in stats.stuck_tasks(now)["tasks"]] == [orphan.task_id]
    settings.CELERY_MONITOR_STUCK_AFTER = 3 * 3600
    assert long_ago.task_id not in [t["task_id"] for t in stats.stuck_tasks(now)["tasks"]]


def test_camera_health():
    now = datetime.now(UTC)
    health = stats.camera_health(now)
    assert health == {"ok": False, "reason": "no camera has run in the last day", "cameras": []}
    camera = CameraState.objects.create(
        key="h:1", hostname="h", pid=1, version="2", frequency=2.0, started=now, last_shot=now
    )
    assert camera.allowed_silence == 9  # an idle heartbeat every 5 s, and two shots
    assert stats.camera_health(now + timedelta(seconds=9))["ok"]
    late = stats.camera_health(now + timedelta(seconds=10))
    assert not late["ok"]
    assert late["reason"] == "the last shot was 10 s ago (every 2 s expected)"
    # A host clock ahead of this one's by more than the silence allowed.
    assert stats.camera_health(now - timedelta(seconds=9))["ok"]
    ahead = stats.camera_health(now - timedelta(seconds=40))
    assert not ahead["ok"]
    assert ahead["reason"] == (
        "the last shot is 40 s in the future: the clock of the camera's host is ahead of "
        "this server's"
    )
    # A camera that stopped since says nothing of the one that runs.
    CameraState.objects.create(
        key="h:2", hostname="h", pid=2, version="2", frequency=2.0, started=now,
        last_shot=now + timedelta(seconds=59), stopped=now + timedelta(seconds=59),
    )  # fmt: skip
    late = stats.camera_health(now + timedelta(seconds=60))
    assert late["reason"] == "the last shot was 60 s ago (every 2 s expected)"
    CameraState.objects.filter(key="h:1").update(last_shot=None)
    assert stats.camera_health(now + timedelta(seconds=60))["reason"] == (
        "no camera has taken a shot yet"
    )
    CameraState.objects.filter(key="h:1").update(stopped=now)
    assert stats.camera_health(now + timedelta(seconds=60))["reason"] == "the camera stopped"


def test_the_camera_counts_missed_events_and_records_its_heartbeat(app):
    state = State()
    camera = Camera(state, app=app, freq=1.0)
    host = events.WORKER
    state.event(events.worker_event("heartbeat", processed=10))
    ids = [str(uuidlib.uuid4()) for _ in range(5)]
    for task_id in ids[:3]:
        state.event(events.received(task_id))
        state.event(events.started(task_id))
    # The worker started 5 tasks since its heartbeat; the camera heard 3 of them start.
    state.event(events.worker_event("heartbeat", processed=15))
    camera.capture()
    assert WorkerState.objects.get(hostname=host).events_missed == 2
    # A restarted worker counts from 0 again; what was missed before is kept.
    state.event(events.worker_event("heartbeat", processed=1))
    state.event(events.started(ids[3]))
    state.event(events.worker_event("heartbeat", processed=2))
    camera.worker_update_freq = 0
    camera.capture()
    assert WorkerState.objects.get(hostname=host).events_missed == 2
    # 4 started since the restart (1 to 5), 1 heard: 3 more missed.
    state.event(events.worker_event("heartbeat", processed=5))
    camera.capture()
    assert WorkerState.objects.get(hostname=host).events_missed == 5

    camera.record_heartbeat()
    beat = CameraState.objects.get()
    assert beat.pid > 0 and beat.frequency == 1.0
    assert beat.events == camera.events_seen == 12
    assert beat.tasks_written == 4
    assert beat.last_shot is not None and beat.stopped is None
    assert math.isfinite(beat.events_per_second)
    assert stats.camera_health()["ok"]


def test_a_sharded_camera_does_not_count_missed_events(app):
    state = State()
    camera = Camera(state, app=app, shard="1/2")
    state.event(events.worker_event("heartbeat", processed=10))
    state.event(events.worker_event("heartbeat", processed=50))
    camera.capture()
    assert WorkerState.objects.get().events_missed is None


def test_cumulative_totals_survive_the_expiry_of_old_hours(fixture_rows, monkeypatch):
    monkeypatch.setattr(stats, "_now", lambda: NOW)
    before = stats.cumulative_groups()
    assert sum(g.count for g in before.values()) == 12
    assert before[("proj.add", "FAILURE", "ValueError")].count == 1
    stats.roll_up(now=NOW)
    assert {k: g.count for k, g in stats.cumulative_groups().items()} == {
        k: g.count for k, g in before.items()
    }
    stats.roll_up(now=NOW + timedelta(minutes=5))  # every row rolled up
    # Long after, every hour has been folded into the all-time rows: the totals stand.
    later = NOW + stats.KEEP[stats.LEVELS[-1]] + timedelta(days=1)
    monkeypatch.setattr(stats, "_now", lambda: later)
    TaskState.objects.all().delete()
    stats.roll_up(now=later)
    assert not TaskRollup.objects.filter(period__in=stats.LEVELS).exists()
    after = stats.cumulative_groups()
    assert {k: g.count for k, g in after.items()} == {k: g.count for k, g in before.items()}
    add_ok = after[("proj.add", "SUCCESS", "")]
    assert add_ok.runtime.max == pytest.approx(1.0)
    assert add_ok.runtime.count == 6


def test_unfinished_counts(fixture_rows):
    assert stats.unfinished_counts() == {
        "PENDING": 0,
        "RECEIVED": 2,
        "STARTED": 1,
        "RETRY": 0,
        "REJECTED": 0,
    }


def test_the_first_roll_up_writes_minutes_for_the_last_hours_only():
    TaskState.objects.bulk_create(
        [task("SUCCESS", 5 * 3600, runtime=0.5), task("FAILURE", 3 * 86400, exception="E()")]
        + [task("SUCCESS", 60 * n + 90, runtime=0.1) for n in range(3)]
    )
    stats.roll_up(now=NOW)
    minutes = TaskRollup.objects.filter(period=60)
    assert sum(minutes.values_list("count", flat=True)) == 3
    assert minutes.earliest("bucket").bucket >= NOW - stats.MINUTE_BACKFILL - timedelta(hours=1)
    hours = TaskRollup.objects.filter(period=3600)
    # Two straight from the rows, and the last hours' three made from their minutes.
    assert sum(hours.values_list("count", flat=True)) == 5
    assert hours.filter(bucket__lt=NOW - stats.MINUTE_BACKFILL - timedelta(hours=1)).count() == 2
    day = stats.dashboard("24h", now=NOW)["totals"]["current"]
    assert day["states"] == {"SUCCESS": 4}
    week = stats.dashboard("7d", now=NOW)["totals"]["current"]
    assert week["states"] == {"SUCCESS": 4, "FAILURE": 1}
    # The next roll-up goes on from the minutes' mark.
    stats.roll_up(now=NOW + timedelta(minutes=3))
    assert RollupMark.objects.get(period=60).until == datetime(2026, 3, 2, 10, 32, tzinfo=UTC)


@pytest.mark.django_db(transaction=True)  # as the camera's timers write it: no transaction
def test_the_camera_heartbeat_is_made_once_then_updated_by_one_statement(app):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    camera = Camera(State(), app=app, freq=1.0)
    CameraState.objects.create(
        key="other:1", hostname="other", pid=1, version="1", frequency=1.0, started=NOW
    )
    camera.record_heartbeat()
    first = CameraState.objects.get(key=camera.camera_key()[0])
    camera.tasks_written = 7
    with CaptureQueriesContext(connection) as queries:
        camera.record_heartbeat(stopped=True)
    assert len(queries) == 1 and queries[0]["sql"].startswith("UPDATE")
    beat = CameraState.objects.get(key=camera.camera_key()[0])
    assert (beat.pk, beat.started, beat.tasks_written) == (first.pk, first.started, 7)
    assert beat.stopped is not None and first.stopped is None
    assert CameraState.objects.get(key="other:1").tasks_written == 0
    assert CameraState.objects.count() == 2


def test_the_camera_heartbeat_made_meanwhile_is_updated(app, monkeypatch):
    """Should another thread make the row between the update and the insert (the last beat
    of a stopping camera), the insert's conflict turns into an update."""
    camera = Camera(State(), app=app, freq=1.0)
    key = camera.camera_key()[0]
    update = QuerySet.update
    missed = []

    def update_missing_once(self, **values):
        if not missed:  # as if the row were not there yet; another thread makes it
            missed.append(True)
            CameraState.objects.create(
                key=key, hostname="h", pid=1, version="0", frequency=9.0, started=NOW
            )
            return 0
        return update(self, **values)

    monkeypatch.setattr(QuerySet, "update", update_missing_once)
    camera.tasks_written = 5
    camera.record_heartbeat()
    beat = CameraState.objects.get()
    assert (beat.key, beat.frequency, beat.tasks_written) == (key, 1.0, 5)


def test_a_heartbeat_the_database_refuses_leaves_the_callers_transaction_usable(app):
    from django.db import transaction

    camera = Camera(State(), app=app, freq=1.0)
    key = camera.camera_key()[0]
    with transaction.atomic():
        camera.record_heartbeat()
        camera.camera_key = lambda: (key, None, 1)  # a NULL hostname: refused
        camera.record_heartbeat()
        assert CameraState.objects.get().hostname  # the transaction still answers
        camera.camera_key = Camera.camera_key
        camera.tasks_written = 3
        camera.record_heartbeat()
        assert CameraState.objects.get().tasks_written == 3


def test_the_camera_beats_at_most_once_a_second_while_it_writes(app, monkeypatch):
    from django_celery_monitor import camera as camera_module

    state = State()
    camera = Camera(state, app=app, freq=1.0)
    monkeypatch.setattr(camera_module, "HEARTBEAT_EVERY", 3600)
    state.event(events.received(str(uuidlib.uuid4())))
    camera.capture()  # the first shot beats
    assert CameraState.objects.get().tasks_written == 1
    state.event(events.received(str(uuidlib.uuid4())))
    camera.capture()  # too soon after the first
    assert CameraState.objects.get().tasks_written == 1
    monkeypatch.setattr(camera_module, "HEARTBEAT_EVERY", 0)
    state.event(events.received(str(uuidlib.uuid4())))
    camera.capture()
    assert CameraState.objects.get().tasks_written == 3


def test_the_week_before_is_counted_after_two_weeks_of_rollups():
    # A task an hour for 15 days, rolled up every day as a camera would have: the 7-day
    # window's week before reads quarter days rolled up 8 to 14 days ago.
    TaskState.objects.bulk_create([task("SUCCESS", hour * 3600 + 420) for hour in range(15 * 24)])
    for day in range(15, -1, -1):
        stats.roll_up(now=NOW - timedelta(days=day))
    totals = stats.window_totals("7d", now=NOW)
    start = totals["start"]
    rows = TaskState.objects.filter(state="SUCCESS")
    before = rows.filter(tstamp__gte=start - timedelta(days=7), tstamp__lt=start).count()
    assert before > 160
    assert totals["previous"]["states"]["SUCCESS"] == before
    assert totals["current"]["states"]["SUCCESS"] == rows.filter(tstamp__gte=start).count()


@pytest.mark.parametrize("expires", [120, 300])
def test_a_purge_sooner_than_the_reroll_never_lowers_the_counts(settings, expires):
    # Tasks expire 2 or 5 minutes after they finish, and the cleanup purges them: minutes
    # already rolled up keep their counts (the metrics' counters never go down).
    settings.CELERY_MONITOR_TASK_SUCCESS_EXPIRES = expires
    TaskState.objects.bulk_create([task("SUCCESS", 30 * i) for i in range(1, 21)])
    stats.roll_up(now=NOW + timedelta(minutes=2))

    def counted() -> int:
        return sum(group.count for group in stats.cumulative_groups().values())

    assert counted() == 20
    TaskState.objects.filter(
        tstamp__lt=NOW + timedelta(minutes=3) - timedelta(seconds=expires)
    ).delete()
    stats.roll_up(now=NOW + timedelta(minutes=3))
    stats.roll_up(now=NOW + timedelta(minutes=4))
    assert counted() == 20
    # A task that finished since is counted too.
    TaskState.objects.bulk_create([task("SUCCESS", -200)])
    stats.roll_up(now=NOW + timedelta(minutes=6))
    assert counted() == 21


def test_a_window_in_progress_is_per_its_time_so_far():
    # One task every 10 s for 40 minutes: 6 a minute, steady. At 10:30:20 the 15-minute
    # window (of minutes) began at 10:16, 14 min 20 s ago; the one before is whole.
    TaskState.objects.bulk_create([task("SUCCESS", 10 * i) for i in range(240)])
    totals = stats.window_totals("15m", now=NOW)
    current, previous = totals["current"], totals["previous"]
    assert current["seconds"] == 860 and previous["seconds"] == 900
    assert current["throughput_per_minute"] == pytest.approx(6, rel=0.02)
    assert previous["throughput_per_minute"] == pytest.approx(6, rel=0.02)


@pytest.mark.parametrize("use_tz", [True, False])
@pytest.mark.parametrize("by_the_database", [True, False])
def test_workers_are_counted_beyond_those_listed(monkeypatch, settings, by_the_database, use_tz):
    settings.USE_TZ = use_tz
    settings.TIME_ZONE = "Asia/Tokyo"
    if not by_the_database:
        monkeypatch.setattr(stats, "MAX_PERIODS", 0)  # read each recent worker instead
    now = timezone.now()  # the workers' liveness reads the clock
    ago = lambda seconds: now - timedelta(seconds=seconds)  # noqa: E731
    WorkerState.objects.bulk_create(
        [WorkerState(hostname=f"w{i}@h", last_heartbeat=now, freq=2.0) for i in range(250)]
        + [
            WorkerState(hostname="never@h"),
            WorkerState(hostname="gone@h", last_heartbeat=now, offline=True, events_missed=4),
            # Alive for two periods and the grace (10 s): 2 s -> 14 s, 60 s -> 130 s.
            WorkerState(hostname="late@h", last_heartbeat=ago(20), freq=2.0),
            WorkerState(hostname="slow@h", last_heartbeat=ago(100), freq=60.0),
            WorkerState(hostname="slower@h", last_heartbeat=ago(140), freq=60.0),
            WorkerState(hostname="default@h", last_heartbeat=ago(100), freq=None),
        ]
    )
    WorkerState.objects.filter(hostname="w0@h").update(events_missed=3)
    listed = stats.workers()
    assert len(listed) == stats.MAX_WORKERS
    # Those never heard from come last (PostgreSQL sorts NULLs first when descending).
    assert "never@h" not in {worker["hostname"] for worker in listed}
    totals = stats.worker_totals()
    assert totals == {"total": 256, "online": 252, "events_missed": 7}
    assert totals["online"] == sum(w.is_alive() for w in WorkerState.objects.all())


def test_every_queue_sampled_lately_is_listed():
    now = timezone.now()
    samples = [
        QueueSample(queue=f"q{q:03d}", sampled=now - timedelta(seconds=595 - 10 * r), messages=1)
        for r in range(60)
        for q in range(100)
    ]
    samples.append(QueueSample(queue="new", sampled=now, messages=9))
    QueueSample.objects.bulk_create(samples)
    found = {queue["queue"]: queue["messages"] for queue in stats.queue_lengths(now=now)}
    assert len(found) == 101 and found["new"] == 9


@pytest.mark.django_db
def test_an_expiry_shorter_than_the_rollups_never_takes_a_task_out_of_the_counters(settings):
    from django.core.management import call_command

    settings.CELERY_MONITOR_TASK_SUCCESS_EXPIRES = 60
    now = timezone.now()
    ages = (10, 70, 90, 100, 150, 400)
    for n, age in enumerate(ages):
        TaskState.objects.create(
            task_id=f"t{n}", state="SUCCESS", name="proj.add", runtime=0.1,
            tstamp=now - timedelta(seconds=age),
        )  # fmt: skip

    def total():
        return sum(group.count for group in stats.cumulative_groups().values())

    stats.roll_up()
    assert total() == len(ages)
    call_command("celery_monitor_purge", stdout=io.StringIO())
    assert total() == len(ages)
    # What the rollups counted is gone; what they have not counted yet waits for them.
    mark = stats._mark("default", 60)
    for task in TaskState.objects.all():
        assert task.tstamp >= mark or task.state != "SUCCESS"
    assert TaskState.objects.filter(tstamp__lt=mark).count() == 0
    stats.roll_up()
    assert total() == len(ages)
    # Roll-ups that stopped (no camera) hold the purge back an hour at most.
    RollupMark.objects.update(until=now - timedelta(days=2))
    TaskState.objects.create(
        task_id="old", state="SUCCESS", name="proj.add", hidden=True,
        tstamp=now - timedelta(hours=2),
    )  # fmt: skip
    call_command("celery_monitor_purge", stdout=io.StringIO())
    assert not TaskState.objects.filter(task_id="old").exists()


@pytest.mark.django_db
def test_the_all_time_counts_hold_more_than_32_bits():
    # A thousand tasks a second of one name passes 2**31 in 25 days.
    big = 2**31 + 12345
    TaskRollup.objects.create(
        period=0, bucket=datetime(1970, 1, 1, tzinfo=UTC), name="proj.busy", state="SUCCESS",
        count=big, retried=big, runtime_count=big, wait_count=big,
    )  # fmt: skip
    row = TaskRollup.objects.get()
    assert (row.count, row.retried, row.runtime_count, row.wait_count) == (big,) * 4


@pytest.mark.parametrize("during_read", [False, True], ids=["between", "during-a-read"])
def test_the_running_totals_count_every_task_once_over_weeks(monkeypatch, during_read):
    # A camera rolls up every 5 hours for 20 days while tasks finish, two an hour; the
    # metrics then read running totals and the last quarter days, not two weeks of them.
    # Each roll-up either comes before the reading, or commits in the middle of it (after
    # the reading took the rollups' marks): every task is counted once all the same.
    records = stats._records
    pending = []
    reads = []

    def records_after_a_roll_up(using, ranges):
        reads.append(ranges)
        while pending:
            stats.roll_up(now=pending.pop())
        return records(using, ranges)

    monkeypatch.setattr(stats, "_records", records_after_a_roll_up)
    start = NOW - timedelta(days=20)
    states = ("SUCCESS", "FAILURE", "REVOKED")
    made, last = 0, 0
    step = start
    while step < NOW:
        following = step + timedelta(hours=5)
        batch = []
        for minute in range(0, 300, 30):
            at = step + timedelta(minutes=minute, seconds=7)
            batch.append(
                TaskState(
                    task_id=str(uuidlib.uuid4()),
                    state=states[made % 3],
                    name=f"proj.t{made % 4}",
                    tstamp=at,
                    runtime=0.5,
                )
            )
            made += 1
        TaskState.objects.bulk_create(batch)
        monkeypatch.setattr(stats, "_now", lambda when=following: when)
        if during_read:
            pending.append(following)
        else:
            stats.roll_up(now=following)
        counted = sum(group.count for group in stats.cumulative_groups().values())
        assert not pending
        assert counted == made  # every task, once, whatever was rolled up or folded
        assert counted >= last
        last = counted
        step = following
    totals_until = stats._mark("default", stats.TOTAL)
    assert totals_until is not None and NOW - totals_until < timedelta(hours=24)
    assert TaskRollup.objects.filter(period=stats.TOTAL).count() == 4 * 3
    # Quarter days older than the totals' mark are never read again by the metrics.
    quarters = TaskRollup.objects.filter(period=stats.LEVELS[-1], bucket__gte=totals_until)
    assert quarters.count() <= 4 * 3 * 4
    # The readings a roll-up interrupted were made again.
    assert len(reads) == (2 * (made // 10) if during_read else made // 10)


def test_groups_that_differ_only_by_case_accents_or_trailing_spaces_roll_up_apart():
    # Two tasks to Celery, two groups of the rollups: on MySQL and MariaDB, whose default
    # collations take these for one value, the rollups' unique key must not merge them
    # (a roll-up that collided wrote nothing, and the marks stopped).
    names = ["proj.Add", "proj.add", "proj.add ", "proj.adé", "proj.ade"]
    types = ["ValueError('x')", "valueerror('x')", "ValueErrör('x')"]
    TaskState.objects.bulk_create(
        [task("SUCCESS", 300, name=name, runtime=0.5) for name in names]
        + [task("FAILURE", 300, name="proj.f", exception=exception) for exception in types]
    )
    stats.roll_up(now=NOW)
    assert RollupMark.objects.get(period=60).until == datetime(2026, 3, 2, 10, 29, tzinfo=UTC)
    minutes = TaskRollup.objects.filter(period=60)
    assert sorted(minutes.filter(state="SUCCESS").values_list("name", flat=True)) == sorted(names)
    assert sorted(minutes.filter(state="FAILURE").values_list("exception_type", flat=True)) == [
        "ValueError",
        "ValueErrör",
        "valueerror",
    ]
    counted = stats.cumulative_groups()
    assert {key[0] for key in counted if key[1] == "SUCCESS"} == set(names)
    assert sum(group.count for group in counted.values()) == len(names) + len(types)


def test_a_reading_the_rollups_keep_moving_under_is_answered_and_said_once(monkeypatch, caplog):
    marks = iter(range(1000))
    monkeypatch.setattr(stats, "_marks", lambda using: {60: next(marks)})
    monkeypatch.setattr(stats, "_warned_at", -float("inf"))
    reads = []
    with caplog.at_level("DEBUG", logger="django_celery_monitor.stats"):
        assert stats._while_marks_hold("default", lambda m: reads.append(m) or "last") == "last"
        stats._while_marks_hold("default", lambda m: "again")
    assert len(reads) == stats.MAX_READS
    levels = [r.levelname for r in caplog.records if "rollups moved" in r.getMessage()]
    assert levels == ["WARNING", "DEBUG"]  # not again on every scrape
