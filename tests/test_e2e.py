"""End to end: a real Redis broker, real worker processes, the camera, the database."""

from __future__ import annotations

import time

import pytest

from django_celery_monitor.events import Shard
from django_celery_monitor.models import TaskState, WorkerState
from tests import tasks
from tests.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def task_in_state(task_id, *states):
    def check():
        return TaskState.objects.filter(task_id=task_id, state__in=states).first()

    return check


def test_tasks_and_workers_are_recorded(camera, celery_worker):
    worker = celery_worker("e2e-1@test")

    ok = tasks.add.delay(2, 3)
    failed = tasks.fail.delay("kaput")
    retried = tasks.retry_then_succeed.delay(until=1)
    # Revoked below, before its countdown ends (which a slow machine must not miss).
    waiting = tasks.sleep.apply_async((30,), countdown=12)
    running = tasks.sleep.delay(30)

    row = wait_for(task_in_state(ok.id, "SUCCESS"), message="the add task to succeed")
    assert row.name == "tests.tasks.add"
    assert row.args == "(2, 3)"
    assert row.result == "5"
    assert row.runtime is not None and row.runtime >= 0
    assert row.worker.hostname == worker.hostname
    assert row.received is not None and row.started is not None
    assert row.received <= row.started <= row.tstamp

    row = wait_for(task_in_state(failed.id, "FAILURE"), message="the fail task to fail")
    assert row.name == "tests.tasks.fail"
    assert row.exception == "ValueError('kaput')"
    assert "ValueError: kaput" in row.traceback
    assert row.kwargs == "{}"

    row = wait_for(task_in_state(retried.id, "SUCCESS"), message="the retried task to succeed")
    assert row.retries == 1
    assert row.result == "1"
    assert "RuntimeError" in row.exception  # from the retry, never blanked

    row = wait_for(task_in_state(waiting.id, "RECEIVED"), message="the countdown task")
    assert row.eta is not None
    celery_app = tasks.add.app
    celery_app.control.revoke(waiting.id)  # revoked when its countdown is over
    row = wait_for(task_in_state(waiting.id, "REVOKED"), timeout=40, message="the revoke")
    assert row.name == "tests.tasks.sleep"  # the late event did not blank it

    wait_for(task_in_state(running.id, "STARTED"), message="the sleep task to start")
    celery_app.control.revoke(running.id, terminate=True)
    row = wait_for(task_in_state(running.id, "REVOKED"), message="the terminate")
    assert row.started is not None

    state = wait_for(lambda: WorkerState.objects.filter(hostname=worker.hostname).first())
    wait_for(lambda: WorkerState.objects.get(pk=state.pk).sw_ident, message="a heartbeat")
    state.refresh_from_db()
    assert state.is_alive()
    assert state.sw_ident == "py-celery"
    assert state.freq == 2.0
    wait_for(
        lambda: (WorkerState.objects.get(pk=state.pk).processed or 0) >= 3,
        message="a heartbeat that counts the processed tasks",
    )

    worker.stop()
    wait_for(
        lambda: not WorkerState.objects.get(pk=state.pk).is_alive(),
        message="the worker to go offline",
    )
    state.refresh_from_db()
    assert state.offline


def test_a_worker_killed_mid_task_shows_offline_and_its_task_lost(camera, celery_worker, settings):
    import os
    import signal

    settings.CELERY_MONITOR_WORKER_ALIVE_GRACE = 1  # offline 2 heartbeats + 1 s after
    camera.camera.lost_after = 0
    camera.camera.lost_check_every = 0.2
    worker = celery_worker("e2e-killed@test")
    running = tasks.sleep.delay(60)
    wait_for(task_in_state(running.id, "STARTED"), message="the task to start")

    os.kill(worker.process.pid, signal.SIGKILL)  # no goodbye, no more heartbeats
    worker.process.wait(10)
    row = wait_for(
        lambda: TaskState.objects.filter(task_id=running.id, lost=True).first(),
        timeout=30,
        message="the running task to be marked lost",
    )
    assert row.state == "STARTED"  # its last known state, not a made-up one
    assert not WorkerState.objects.get(hostname=worker.hostname).is_alive()


def expected_states(results) -> dict[str, str]:
    return {result.id: state for result, state in results}


def send_mix(count: int) -> list[tuple]:
    """Tasks that succeed, fail and retry, with the state each must end in."""
    sent = []
    for n in range(count):
        if n % 10 == 0:
            sent.append((tasks.fail.delay(f"n{n}"), "FAILURE"))
        elif n % 10 == 1:
            sent.append((tasks.retry_then_succeed.delay(until=1), "SUCCESS"))
        else:
            sent.append((tasks.add.delay(n, n), "SUCCESS"))
    return sent


def all_recorded(expected: dict[str, str]):
    def check():
        rows = dict(
            TaskState.objects.filter(task_id__in=list(expected)).values_list("task_id", "state")
        )
        return rows == expected

    return check


class DatabaseOutage:
    """Make the database unusable for the camera for a while, as an outage would."""

    def __init__(self, connection):
        self.connection = connection

    def __enter__(self):
        import sqlite3
        import threading

        self.stop = threading.Event()
        if self.connection.vendor == "sqlite":
            # Another process holds the write lock: every write times out ("locked").
            self.blocker = sqlite3.connect(self.connection.settings_dict["NAME"], timeout=30)
            self.blocker.execute("BEGIN EXCLUSIVE")
            return self
        self.thread = threading.Thread(target=self._terminate, daemon=True)
        self.thread.start()
        return self

    def _terminate(self):
        from django.db import connections

        # Kill every other connection to the test database (the camera's), again and again.
        with connections["default"].cursor() as cursor:
            while not self.stop.wait(0.1):
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        connections["default"].close()

    def __exit__(self, *exc):
        self.stop.set()
        if self.connection.vendor == "sqlite":
            self.blocker.rollback()
            self.blocker.close()
        else:
            self.thread.join(10)


def test_tasks_run_during_a_database_outage_are_all_stored_after_it(
    camera, celery_worker, settings, caplog
):
    from django.db import connection

    settings.CELERY_MONITOR_WORKER_ALIVE_GRACE = 60
    celery_worker("e2e-outage@test", concurrency=2)
    if connection.vendor == "sqlite":
        connection.close()  # the test's own connection must not hold the database open
    with DatabaseOutage(connection):
        sent = send_mix(60)
        time.sleep(8)  # many shots fail meanwhile (SQLite gives up a write after 5 s)
        assert camera.thread.is_alive()
    connection.close()  # it may have been cut too: connect again
    expected = expected_states(sent)
    wait_for(all_recorded(expected), timeout=60, message="every task of the outage")
    assert camera.thread.is_alive()
    assert "keeping them for the next shot" in caplog.text  # the outage did stop writes


def test_two_cameras_on_one_database_lose_nothing_and_regress_nothing(start_camera, celery_worker):
    first, second = start_camera(), start_camera(freq=0.35)
    celery_worker("e2e-two-cameras@test", concurrency=2)
    sent = send_mix(300)
    expected = expected_states(sent)
    wait_for(all_recorded(expected), timeout=90, message="every task, once")
    assert TaskState.objects.filter(task_id__in=list(expected)).count() == len(expected)
    assert first.camera.guard.refused == second.camera.guard.refused == 0


def test_two_shards_of_a_real_workers_events_record_every_task_once(start_camera, celery_worker):
    """Each shard reads every event message (a prefork worker sends its task events in lists)
    and keeps the tasks of its shard: together they record every task, once."""
    first, second = start_camera(shard="1/2"), start_camera(freq=0.35, shard="2/2")
    seen: dict[Shard, set[str]] = {first.shard: set(), second.shard: set()}
    for runner in (first, second):
        # What the receiver hands the camera's state, once it has checked it.
        handle = runner.camera.handle_checked

        def noting(event, handle=handle, kept=seen[runner.shard]):
            kept.add(event.get("uuid"))
            return handle(event)

        runner.camera.handle_checked = noting
    celery_worker("e2e-shards@test", concurrency=2)
    sent = send_mix(300)
    expected = expected_states(sent)
    wait_for(all_recorded(expected), timeout=90, message="every task, once")
    assert TaskState.objects.filter(task_id__in=list(expected)).count() == len(expected)
    for shard, task_ids in seen.items():
        mine = {task_id for task_id in expected if task_id in shard}
        assert mine and task_ids & set(expected) == mine  # its own tasks, and no other
    assert first.camera.guard.refused == second.camera.guard.refused == 0


@pytest.mark.load
def test_ten_thousand_tasks_of_a_real_worker_are_all_recorded(camera, celery_worker):
    celery_worker("e2e-load@test", concurrency=2)
    app = tasks.add.app
    with app.producer_or_acquire() as producer:
        ids = [tasks.add.apply_async((n, n), producer=producer).id for n in range(10_000)]

    def recorded() -> int:
        return sum(
            TaskState.objects.filter(
                task_id__in=ids[start : start + 1000], state="SUCCESS"
            ).count()
            for start in range(0, len(ids), 1000)
        )

    wait_for(lambda: recorded() == len(ids), timeout=240, interval=2, message="10,000 rows")
    assert TaskState.objects.filter(task_id__in=ids[:1000]).exclude(result=None).count() == 1000
