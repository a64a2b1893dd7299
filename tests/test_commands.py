"""The management commands, and the camera as the 1.1.2 manual runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from django_celery_monitor.models import TaskState
from tests.celery_app import app as celery_app
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def make_task(state, age):
    return TaskState.objects.create(
        task_id=str(uuidlib.uuid4()), state=state, tstamp=timezone.now() - age
    )


@pytest.mark.django_db
def test_purge_dry_run_counts_and_changes_nothing():
    make_task("SUCCESS", timedelta(days=2))
    make_task("FAILURE", timedelta(days=4))
    make_task("SUCCESS", timedelta(hours=1))
    out = StringIO()
    call_command("celery_monitor_purge", "--dry-run", stdout=out)
    assert "SUCCESS: 1 would expire" in out.getvalue()
    assert "FAILURE, RETRY, REVOKED: 1 would expire" in out.getvalue()
    assert TaskState.objects.active().count() == 3


@pytest.mark.django_db
def test_purge_dry_run_counts_what_the_purge_deletes():
    from django_celery_monitor.models import RollupMark

    # Hidden rows: one the rollups counted, one finished after their mark (kept for now).
    now = timezone.now()
    RollupMark.objects.create(period=60, until=now - timedelta(minutes=5))
    make_task("SUCCESS", timedelta(minutes=30))
    make_task("SUCCESS", timedelta(minutes=2))
    TaskState.objects.update(hidden=True)
    out = StringIO()
    call_command("celery_monitor_purge", "--dry-run", stdout=out)
    assert "1 already hidden would be purged." in out.getvalue()
    assert "1 already hidden are kept until the rollups have counted them" in out.getvalue()
    assert TaskState.objects.count() == 2
    out = StringIO()
    call_command("celery_monitor_purge", stdout=out)
    assert out.getvalue().strip().endswith("purged 1.")


@pytest.mark.django_db
def test_purge_expires_and_deletes(settings):
    settings.CELERY_MONITOR_TASK_PENDING_EXPIRES = None
    make_task("SUCCESS", timedelta(days=2))
    make_task("STARTED", timedelta(days=20))
    out = StringIO()
    call_command("celery_monitor_purge", stdout=out)
    assert out.getvalue().strip() == "Expired 1 task states; purged 1."
    assert list(TaskState.objects.values_list("state", flat=True)) == ["STARTED"]


@pytest.mark.django_db(databases=["default", "other"])
def test_purge_of_another_database_works_there_only():
    old = timezone.now() - timedelta(days=2)
    for db in ("default", "other"):
        TaskState.objects.using(db).create(task_id=f"{db}-old", state="SUCCESS", tstamp=old)
        TaskState.objects.using(db).create(task_id=f"{db}-hidden", state="STARTED", hidden=True,
                                           tstamp=timezone.now())  # fmt: skip
    out = StringIO()
    call_command("celery_monitor_purge", "--database", "other", stdout=out)
    assert out.getvalue().strip() == "Expired 1 task states; purged 2."
    assert not TaskState.objects.using("other").exists()
    assert set(TaskState.objects.values_list("task_id", "hidden")) == {
        ("default-old", False),
        ("default-hidden", True),
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--frequency", "0"], "positive"),
        (["--app", "no.such.module:app"], "Cannot load"),
        (["--app", "math:pi"], "not a Celery app"),
        (["--max-tasks-in-memory", "0"], "at least 1"),
        (["--enable-events=-1"], "positive number of seconds"),
        (["--maxrate", "abc"], "positive rate"),
        (["--maxrate", "1/x"], "positive rate"),
        (["--maxrate=-1/s"], "positive rate"),
    ],
)
def test_monitor_command_refuses_bad_options(options, message):
    with pytest.raises(CommandError, match=message):
        call_command("celery_monitor", *options)


@pytest.mark.parametrize("name", ["tests.celery_app", "tests.celery_app:app"])
def test_monitor_command_finds_the_app_as_celery_does(monkeypatch, name):
    from django_celery_monitor.runner import MonitorRunner

    found = []
    monkeypatch.setattr(MonitorRunner, "run", lambda runner: found.append(runner.app))
    call_command("celery_monitor", "--app", name, "--maxrate", "10/m", stdout=StringIO())
    assert found == [celery_app]


def subprocess_env() -> dict:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONUNBUFFERED": "1"}
    # The test database (a test process of its own under pytest-xdist has its own name).
    variable = {"postgresql": "PGDATABASE", "mysql": "MARIADB_DATABASE"}.get(
        connection.vendor, "SQLITE_NAME"
    )
    env[variable] = connection.settings_dict["NAME"]
    return env


def send_events(task_id: str, hostname: str = "w@commands") -> None:
    with celery_app.connection_for_write() as conn:
        dispatcher = celery_app.events.Dispatcher(conn, hostname=hostname, enabled=True)
        dispatcher.send("task-received", uuid=task_id, name="proj.cmd", args="(1,)")
        dispatcher.send("task-succeeded", uuid=task_id, result="2", runtime=0.01)
        dispatcher.close()


class Process:
    """A command running in the background with its output in a file."""

    def __init__(self, command, tmp_path):
        self.log_path = tmp_path / "output.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115  (closed in end())
        self.popen = subprocess.Popen(
            command, cwd=ROOT, env=subprocess_env(), stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self):
        return self.log_path.read_text()

    def end(self):
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(30)
        self._log.close()


def wait_for_output(output, text, timeout=30):
    wait_for(lambda: text in output(), timeout=timeout, message=f"{text!r} in the output")


def start_celery_events_camera(tmp_path) -> Process:
    """Run the camera the way the manual of 1.1.2 says, until it takes snapshots."""
    process = Process(
        [sys.executable, "-m", "celery", "-A", "tests.celery_app", "events", "-l", "info",
         "--camera", "django_celery_monitor.camera.Camera", "--frequency=0.5"],
        tmp_path,
    )  # fmt: skip
    try:
        wait_for_output(process.output, "Taking snapshots with django_celery_monitor.camera")
    except BaseException:
        process.end()
        raise
    return process


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_monitor_command_writes_a_last_snapshot_on_sigterm(redis_url, tmp_path):
    process = Process(
        [sys.executable, "-m", "django", "celery_monitor", "--app", "tests.celery_app:app",
         "--frequency", "3600", "--queue-name", f"celery_monitor.cmd-{uuidlib.uuid4().hex[:6]}",
         "-v", "2"],
        tmp_path,
    )  # fmt: skip
    try:
        wait_for_output(process.output, "capturing events")
        task_id = str(uuidlib.uuid4())
        # Sent for two seconds: on Redis the receiver subscribes when it first reads, a
        # moment after it says it captures, and what is published before is gone.
        for _ in range(10):
            send_events(task_id)
            time.sleep(0.2)
        assert not TaskState.objects.filter(task_id=task_id).exists()  # no shot for an hour
        process.popen.send_signal(signal.SIGTERM)
        assert process.popen.wait(30) == 0, process.output()
    finally:
        process.end()
    assert TaskState.objects.get(task_id=task_id).state == "SUCCESS"


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_celery_events_with_the_camera_as_the_manual_says(redis_url, tmp_path):
    process = start_celery_events_camera(tmp_path)
    try:
        task_id = str(uuidlib.uuid4())

        def recorded():
            send_events(task_id)  # until the receiver's queue is bound
            return TaskState.objects.filter(task_id=task_id, state="SUCCESS").first()

        row = wait_for(recorded, timeout=30, interval=1, message="the camera to write")
        assert row.name == "proj.cmd"
        assert row.worker.hostname == "w@commands"
    finally:
        process.popen.terminate()
        process.end()


def publish_raw_events(*bodies: dict) -> None:
    """Publish event bodies as they are, as anything with access to the broker can."""
    from celery.events.event import get_exchange
    from kombu import Producer

    with celery_app.connection_for_write() as conn:
        producer = Producer(conn.channel(), exchange=get_exchange(conn))
        for body in bodies:
            key = str(body.get("type", "x") if isinstance(body, dict) else "x").replace("-", ".")
            producer.publish(body, routing_key=key, serializer="json")


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_celery_events_with_the_camera_survives_bad_events(redis_url, tmp_path):
    process = start_celery_events_camera(tmp_path)
    try:
        task_id = str(uuidlib.uuid4())
        base = {"hostname": "w@bad", "timestamp": time.time(), "utcoffset": 0, "pid": 1}

        def recorded():
            publish_raw_events(
                {**base, "type": "task-received", "name": "proj.no_uuid", "clock": 1},
                {**base, "type": "task-received", "uuid": "x1", "clock": "not a clock"},
                {**base, "type": "task-started", "uuid": "x2", "clock": [1, 2]},
                {**base, "type": "task-received", "uuid": "x3", "utcoffset": "two"},
                ["not", "an", "event"],
            )
            send_events(task_id)
            return TaskState.objects.filter(task_id=task_id, state="SUCCESS").first()

        wait_for(recorded, timeout=30, interval=1, message="the camera to write")
        assert process.popen.poll() is None, process.output()
        wait_for(
            lambda: TaskState.objects.filter(task_id__in=["x1", "x2", "x3"]).count() == 3,
            message="the repaired events to be recorded",
        )
        assert not TaskState.objects.filter(name="proj.no_uuid").exists()
    finally:
        process.popen.terminate()
        process.end()
