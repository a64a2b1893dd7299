"""Settling, when the camera starts, the tasks it last saw unfinished."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from celery.backends.base import DisabledBackend
from django.utils import timezone

from django_celery_monitor.conf import MonitorSettings
from django_celery_monitor.models import TaskState
from django_celery_monitor.reconcile import reconcile_unfinished
from django_celery_monitor.writer import RECONCILED_NOTE, STALE_NOTE, write_snapshot
from tests.celery_app import app as celery_app

pytestmark = pytest.mark.django_db

DONE = datetime(2026, 11, 24, 8, 0, 5, tzinfo=dt_timezone.utc)


class Backend:
    def __init__(self, metas):
        self.metas = metas
        self.asked = []

    def get_task_meta(self, task_id, cache=True):
        self.asked.append(task_id)
        if task_id == "unreachable":
            raise ConnectionError("down")
        return self.metas.get(task_id, {"status": "PENDING", "result": None})


class App:
    def __init__(self, backend):
        self.backend = backend


def task(state="STARTED", age=60, **fields):
    fields.setdefault("task_id", str(uuid.uuid4()))
    tstamp = timezone.now() - timedelta(seconds=age)
    return TaskState.objects.create(state=state, tstamp=tstamp, **fields)


def test_tasks_that_ended_while_the_camera_was_away_are_settled_from_the_backend():
    succeeded, failed, running, unknown = task(), task(state="RECEIVED"), task(), task()
    finished = task(state="SUCCESS")
    after_start = task(age=-5)
    backend = Backend(
        {
            succeeded.task_id: {"status": "SUCCESS", "result": 42, "date_done": DONE},
            failed.task_id: {
                "status": "FAILURE",
                "result": ValueError("kaput"),
                "traceback": "Traceback...",
                "date_done": DONE.isoformat(),
            },
            running.task_id: {"status": "STARTED", "result": {"pid": 1}},
        }
    )
    settled, stale = reconcile_unfinished(App(backend), timezone.now(), MonitorSettings())
    assert (settled, stale) == (2, 2)
    assert set(backend.asked) == {t.task_id for t in (succeeded, failed, running, unknown)}
    succeeded.refresh_from_db()
    assert (succeeded.state, succeeded.result, succeeded.note) == (
        "SUCCESS",
        "42",
        RECONCILED_NOTE,
    )
    assert succeeded.tstamp == DONE
    failed.refresh_from_db()
    assert (failed.state, failed.exception, failed.traceback) == (
        "FAILURE", "ValueError('kaput')", "Traceback...",
    )  # fmt: skip
    for row in (running, unknown):
        row.refresh_from_db()
        assert (row.state, row.note) == ("STARTED", STALE_NOTE)
    for row in (finished, after_start):
        row.refresh_from_db()
        assert row.note is None


def test_without_a_result_backend_unfinished_tasks_are_noted_as_stale():
    rows = [task(), task(state="PENDING"), task(state="PROGRESS")]
    settled, stale = reconcile_unfinished(
        App(DisabledBackend(app=celery_app)), timezone.now(), MonitorSettings()
    )
    assert (settled, stale) == (0, 3)
    assert {row.task_id for row in TaskState.objects.filter(note=STALE_NOTE)} == {
        row.task_id for row in rows
    }


def test_nothing_is_noted_stale_when_the_broker_kept_the_events():
    task()
    assert reconcile_unfinished(
        App(DisabledBackend(app=celery_app)), timezone.now(), MonitorSettings(), events_kept=True
    ) == (0, 0)


def test_a_backend_that_does_not_answer_leaves_the_rest_to_be_settled():
    lost = task(task_id="unreachable")
    ok = task()
    backend = Backend({ok.task_id: {"status": "SUCCESS", "result": "done"}})
    assert reconcile_unfinished(App(backend), timezone.now(), MonitorSettings()) == (1, 1)
    lost.refresh_from_db()
    assert lost.note == STALE_NOTE


def test_a_later_event_clears_the_stale_note():
    row = task(state="STARTED", note=STALE_NOTE)
    write_snapshot({}, {row.task_id: {"state": "SUCCESS", "tstamp": timezone.now()}})
    row.refresh_from_db()
    assert (row.state, row.note) == ("SUCCESS", None)


def test_at_most_the_latest_tasks_are_looked_up(settings):
    settings.CELERY_MONITOR_RECONCILE_MAX_TASKS = 2
    rows = [task(age=age) for age in (10, 20, 30)]
    backend = Backend({})
    reconcile_unfinished(App(backend), timezone.now(), MonitorSettings())
    assert backend.asked == [rows[0].task_id, rows[1].task_id]


def test_what_the_backend_tells_is_redacted_as_the_events_are(settings):
    settings.CELERY_MONITOR_REDACT_FIELDS = ["result"]
    settings.CELERY_MONITOR_REDACT_TASKS = {"proj.pay*": ["exception", "traceback"]}
    paid, failed, unnamed = task(name="proj.pay"), task(name="proj.pay"), task()
    backend = Backend(
        {
            paid.task_id: {"status": "SUCCESS", "result": {"card": "4111"}, "date_done": DONE},
            failed.task_id: {
                "status": "FAILURE", "result": ValueError("card 4111"),
                "traceback": "card 4111", "date_done": DONE,
            },
            unnamed.task_id: {
                "status": "FAILURE", "result": ValueError("card 4111"),
                "traceback": "card 4111", "date_done": DONE,
            },
        }
    )  # fmt: skip
    assert reconcile_unfinished(App(backend), timezone.now(), MonitorSettings())[0] == 3
    for row in (paid, failed, unnamed):
        row.refresh_from_db()
        stored = (row.result, row.exception, row.traceback)
        assert not any("4111" in (text or "") for text in stored), stored
    assert paid.result == "[redacted]"
