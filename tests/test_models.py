"""The models: worker liveness, their text forms, meta-data and permissions."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission
from django.utils import timezone

from django_celery_monitor import models
from django_celery_monitor.models import TaskState, WorkerState

#: 2023-11-14 22:13:20 UTC.
TIMESTAMP = 1_700_000_000
INSTANT = datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt_timezone.utc)


def worker(age: float | None = 0.0, **fields) -> WorkerState:
    """An unsaved worker whose last heartbeat was ``age`` seconds ago (None: never)."""
    if "last_heartbeat" not in fields:
        fields["last_heartbeat"] = None if age is None else timezone.now() - timedelta(seconds=age)
    fields.setdefault("hostname", "celery@host1")
    return WorkerState(**fields)


def task(**fields) -> TaskState:
    values = {
        "state": "SUCCESS",
        "task_id": "d5b2f1c6-3f6e-4b8f-9c8e-2b7f1d6e9a10",
        "name": "proj.add",
        "tstamp": INSTANT,
    }
    return TaskState(**{**values, **fields})


# WorkerState.is_alive


def test_a_worker_without_heartbeat_is_not_alive():
    assert worker(age=None, freq=2.0).is_alive() is False


def test_a_worker_with_a_fresh_heartbeat_is_alive():
    assert worker(age=0, freq=2.0).is_alive() is True
    assert worker(age=1, freq=2.0).is_alive() is True


def test_a_worker_is_alive_until_two_periods_and_the_grace_have_passed():
    window = 2 * 2.0 + models.HEARTBEAT_GRACE
    assert worker(age=window - 1, freq=2.0).is_alive() is True
    assert worker(age=window + 1, freq=2.0).is_alive() is False
    assert worker(age=3600, freq=2.0).is_alive() is False


def test_a_worker_that_said_goodbye_is_not_alive():
    assert worker(age=0, freq=2.0, offline=True).is_alive() is False


def test_a_worker_without_frequency_uses_the_default():
    window = 2 * models.DEFAULT_HEARTBEAT_FREQ + models.HEARTBEAT_GRACE
    assert worker(age=window - 5, freq=None).is_alive() is True
    assert worker(age=window + 5, freq=None).is_alive() is False


def test_a_worker_with_a_heartbeat_in_the_future_is_alive():
    assert worker(age=-30, freq=2.0).is_alive() is True


def test_is_alive_without_use_tz(settings):
    settings.USE_TZ = False
    assert timezone.is_naive(worker(age=0).last_heartbeat)
    assert worker(age=1, freq=2.0).is_alive() is True
    assert worker(age=60, freq=2.0).is_alive() is False


# WorkerState.heartbeat_timestamp


def test_heartbeat_timestamp_of_an_aware_value():
    assert worker(last_heartbeat=INSTANT).heartbeat_timestamp == TIMESTAMP
    berlin = timezone.localtime(INSTANT)
    assert worker(last_heartbeat=berlin).heartbeat_timestamp == TIMESTAMP


@pytest.mark.parametrize(
    ("zone", "local"),
    [
        ("Europe/Berlin", datetime(2023, 11, 14, 23, 13, 20)),
        ("America/New_York", datetime(2023, 11, 14, 17, 13, 20)),
        ("Asia/Kolkata", datetime(2023, 11, 15, 3, 43, 20)),
    ],
)
def test_heartbeat_timestamp_of_a_naive_value_without_use_tz(settings, zone, local):
    settings.USE_TZ = False
    settings.TIME_ZONE = zone
    assert worker(last_heartbeat=local).heartbeat_timestamp == TIMESTAMP


# __str__ and __repr__


def test_worker_text():
    state = worker(hostname="celery@host1")
    assert str(state) == "celery@host1"
    assert repr(state) == "<WorkerState: celery@host1>"


def test_task_text():
    state = task()
    assert str(state) == f"SUCCESS    {state.task_id} proj.add"
    assert repr(state) == (
        f"<TaskState: SUCCESS proj.add[{state.task_id}] ts:2023-11-14 22:13:20+00:00>"
    )


def test_task_text_without_name_and_with_eta():
    state = task(name=None, state="PENDING", task_id="short", eta=INSTANT)
    assert str(state) == f"PENDING    {'short':<36} UNKNOWN eta:2023-11-14 22:13:20+00:00"
    assert repr(state).startswith("<TaskState: PENDING UNKNOWN[short] ts:")


def test_text_of_empty_models():
    assert str(TaskState()).startswith(" " * 10)
    assert repr(TaskState()) == "<TaskState:  UNKNOWN[] ts:None>"
    assert str(WorkerState()) == ""


# Meta-data


def test_task_meta():
    meta = TaskState._meta
    assert meta.ordering == ["-tstamp"]
    assert meta.get_latest_by == "tstamp"
    assert meta.db_table == "celery_monitor_taskstate"
    assert meta.app_label == "celery_monitor"


def test_worker_meta():
    meta = WorkerState._meta
    assert meta.ordering == ["-last_heartbeat"]
    assert meta.get_latest_by == "last_heartbeat"
    assert meta.db_table == "celery_monitor_workerstate"
    assert meta.app_label == "celery_monitor"


def test_the_app():
    config = apps.get_app_config("celery_monitor")
    assert config.name == "django_celery_monitor"
    assert str(config.verbose_name) == "Celery Monitor"
    assert type(config).__module__ == "django_celery_monitor.apps"
    assert type(config).__name__ == "CeleryMonitorConfig"
    assert apps.get_model("celery_monitor", "TaskState") is TaskState
    assert apps.get_model("celery_monitor", "WorkerState") is WorkerState


@pytest.mark.django_db
def test_the_custom_permissions_exist_after_migrate():
    codenames = set(
        Permission.objects.filter(content_type__app_label="celery_monitor").values_list(
            "codename", flat=True
        )
    )
    assert {
        "revoke_taskstate",
        "rate_limit_taskstate",
        "retry_taskstate",
        "control_workerstate",
    } <= codenames
    assert Permission.objects.get(codename="revoke_taskstate").content_type.model == "taskstate"
    assert (
        Permission.objects.get(codename="control_workerstate").content_type.model == "workerstate"
    )


@pytest.mark.django_db
def test_get_latest_by_and_ordering_in_queries():
    host1 = WorkerState.objects.create(
        hostname="celery@host1", last_heartbeat=INSTANT - timedelta(minutes=5)
    )
    host2 = WorkerState.objects.create(hostname="celery@host2", last_heartbeat=INSTANT)
    assert list(WorkerState.objects.all()) == [host2, host1]
    assert WorkerState.objects.latest() == host2
    old = TaskState.objects.create(task_id="old", state="SUCCESS", tstamp=INSTANT - timedelta(1))
    new = TaskState.objects.create(task_id="new", state="SUCCESS", tstamp=INSTANT, worker=host1)
    assert list(TaskState.objects.all()) == [new, old]
    assert TaskState.objects.latest() == new
    assert TaskState.objects.earliest() == old


@pytest.mark.django_db
def test_is_alive_grace_is_a_setting(settings):
    heartbeat = timezone.now() - timedelta(seconds=30)
    worker = WorkerState.objects.create(hostname="slow@test", last_heartbeat=heartbeat, freq=2.0)
    assert not worker.is_alive()
    settings.CELERY_MONITOR_WORKER_ALIVE_GRACE = 60
    assert worker.is_alive()


# Daylight saving time with USE_TZ off: Europe/Berlin's clock goes from 03:00 back to 02:00
# on 2026-10-25 at 01:00 UTC, so the naive local times 02:00-03:00 happen twice.
AUTUMN_SWITCH = datetime(2026, 10, 25, 1, 0, tzinfo=dt_timezone.utc).timestamp()


@pytest.mark.parametrize("after_switch", [1, 10 * 60, 59 * 60])
def test_a_worker_stays_alive_when_the_clock_goes_back(settings, monkeypatch, after_switch):
    settings.USE_TZ = False
    settings.TIME_ZONE = "Europe/Berlin"
    now = AUTUMN_SWITCH + after_switch
    monkeypatch.setattr(models.time, "time", lambda: now)
    stored = datetime(2026, 10, 25, 2, 0) + timedelta(seconds=after_switch - 1)  # fold lost
    assert worker(last_heartbeat=stored, freq=2.0).is_alive() is True


def test_a_heartbeat_from_before_the_switch_still_reads_as_before(settings, monkeypatch):
    settings.USE_TZ = False
    settings.TIME_ZONE = "Europe/Berlin"
    monkeypatch.setattr(models.time, "time", lambda: AUTUMN_SWITCH - 85)
    stored = datetime(2026, 10, 25, 2, 58, 30)  # 00:58:30 UTC, the first 02:58:30
    assert worker(last_heartbeat=stored).heartbeat_timestamp == AUTUMN_SWITCH - 90
    assert worker(last_heartbeat=stored, freq=2.0).is_alive() is True


def test_the_state_displays_as_in_1_1_2():
    assert TaskState(state="SUCCESS").get_state_display() == "SUCCESS"
    assert TaskState(state="PROGRESS").get_state_display() == "PROGRESS"
