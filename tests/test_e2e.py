"""End to end: a real Redis broker, real worker processes, the camera, the database."""

from __future__ import annotations

import pytest

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
    waiting = tasks.sleep.apply_async((30,), countdown=3)
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
    row = wait_for(task_in_state(waiting.id, "REVOKED"), message="the revoke")
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
