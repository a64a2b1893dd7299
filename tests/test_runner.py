"""The runner: events in, snapshots out, through broker outages."""

from __future__ import annotations

import gc
import shutil
import socket
import subprocess
import threading
import uuid as uuidlib

import pytest
from celery import Celery

from django_celery_monitor.camera import Camera
from django_celery_monitor.models import TaskState
from django_celery_monitor.runner import MonitorRunner, tune_garbage_collector
from tests import events
from tests.conftest import REQUIRE_SERVICES, wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server process that a test can stop and start again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self._answers, timeout=10, message="redis-server to start")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def redis_server():
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed; run scripts/services.sh."
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(free_port())
    yield server
    server.stop()


def test_bad_events_are_repaired_or_dropped_never_fatal(app, caplog):
    runner = MonitorRunner(app)
    runner.on_event(events.task_event("received", "t1", ts=float("nan")))
    runner.on_event({"type": "task-received", "hostname": "w"})  # no uuid
    runner.on_event(events.received("t2"))
    assert set(runner.state.tasks) == {"t1", "t2"}
    assert (runner.camera.guard.repaired, runner.camera.guard.refused) == (1, 1)
    assert "bad events" in caplog.text


@pytest.mark.parametrize("shard", [None, "1/2", "2/2"])
def test_the_receiver_checks_each_event_once_before_the_state_takes_it(app, monkeypatch, shard):
    """What the runner's receiver hands on (checked, repaired, of its shard) reaches the
    state without a second check; what it refuses or drops never reaches it."""
    runner = MonitorRunner(app, shard=shard)
    guard = runner.camera.guard
    checked: list = []
    check = guard.check
    monkeypatch.setattr(
        guard, "check", lambda event: checked.append(event.get("uuid")) or check(event)
    )
    ids = [f"task-{n}" for n in range(40)]
    body = [events.received(task_id) for task_id in ids]
    body += [events.task_event("started", "nan", ts=float("nan")), {"type": "task-received"}]
    ids.append("nan")
    mine = [task_id for task_id in ids if runner.shard is None or task_id in runner.shard]
    with app.connection_for_read("memory://") as connection:
        receiver = runner.receiver(connection)
        receiver._receive(body, message=None)
        receiver._receive(events.worker_event("heartbeat"), message=None)
    assert 0 < len(mine) < len(ids) or shard is None
    assert sorted(runner.state.tasks) == sorted(mine)
    assert runner.state.workers  # every camera takes the workers' events
    # Each kept event once, and the events the shard keeps for the guard to judge.
    assert sorted(checked, key=str) == sorted([*mine, None, None], key=str)
    assert (guard.repaired, guard.refused) == (int("nan" in mine), 1)


def test_a_camera_without_a_checked_entry_takes_the_receivers_events_by_its_state(app):
    """A camera class that watches the events its own way: its ``handle_checked`` hands the
    receiver's events to ``state.event``."""

    class OwnWay(Camera):
        def _watch_events(self) -> None:
            pass

    runner = MonitorRunner(app, camera_class=OwnWay)
    with app.connection_for_read("memory://") as connection:
        receiver = runner.receiver(connection)
        receiver._receive([events.received("t1"), events.started("t1")], message=None)
    assert runner.state.tasks["t1"].state == "STARTED"


def test_a_task_id_the_guard_repairs_is_kept_by_one_shard_of_two(app):
    """A lone surrogate in a task id: each shard judges the id as it came, so exactly one
    keeps the task (as repaired: escaped, and apart from an id that spells it out)."""
    kept = []
    for shard in ("1/2", "2/2"):
        runner = MonitorRunner(app, shard=shard)
        with app.connection_for_read("memory://") as connection:
            runner.receiver(connection)._receive(events.received("t\ud800x"), message=None)
        kept += list(runner.state.tasks)
    assert len(kept) == 1 and kept[0].startswith("t\\ud800x~")


def stop_runner(runner: MonitorRunner) -> None:
    runner.stop()
    runner.thread.join(30)
    assert not runner.thread.is_alive(), "the camera did not stop"


@pytest.fixture
def run_camera():
    """Start cameras in threads: ``run_camera(app, queue_name)``; all are stopped after."""
    runners: list[MonitorRunner] = []

    def start(app: Celery, queue_name: str) -> MonitorRunner:
        runner = MonitorRunner(app, freq=0.2, queue_name=queue_name)
        runner.thread = threading.Thread(target=runner.run, daemon=True)
        runner.thread.start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        stop_runner(runner)


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_the_runner_waits_for_the_broker_and_reconnects(redis_server, run_camera):
    app = Celery("reconnect", broker=f"redis://127.0.0.1:{redis_server.port}/0")
    app.conf.broker_connection_timeout = 1
    runner = run_camera(app, "celery_monitor.reconnect-test")
    # The broker is down: the runner retries instead of exiting.
    wait_for(lambda: runner.reconnects >= 2, timeout=30, message="two failed attempts")
    assert not runner.connected.is_set()
    assert runner.thread.is_alive()

    redis_server.start()
    assert runner.connected.wait(40), "connected once the broker is up"
    redis_server.stop()
    wait_for(lambda: not runner.connected.is_set(), timeout=30, message="the loss")
    redis_server.start()
    assert runner.connected.wait(40), "reconnected"

    task_id = str(uuidlib.uuid4())
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="w@reconnect", enabled=True)
        dispatcher.send("task-received", uuid=task_id, name="proj.after", args="()")
        dispatcher.send("task-succeeded", uuid=task_id, result="1", runtime=0.1)
        dispatcher.close()
    row = wait_for(
        lambda: TaskState.objects.filter(task_id=task_id, state="SUCCESS").first(),
        message="the events sent after the reconnect",
    )
    assert row.name == "proj.after"
    stop_runner(runner)


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_broker_restart_while_a_real_worker_runs_tasks(redis_server, tmp_path, run_camera):
    from tests.conftest import WorkerProcess

    url = f"redis://127.0.0.1:{redis_server.port}/0"
    app = Celery("restart", broker=url)
    app.conf.broker_connection_timeout = 1
    redis_server.start()
    runner = run_camera(app, "celery_monitor.restart-test")
    worker = WorkerProcess("restart@test", tmp_path / "worker.log", broker_url=url)
    try:
        assert runner.connected.wait(30)
        worker.wait_ready(app=app)
        before = [app.send_task("tests.tasks.add", (n, n)).id for n in range(20)]
        app.send_task("tests.tasks.sleep", (2,))  # running while the broker goes away
        wait_for(
            lambda: TaskState.objects.filter(task_id__in=before, state="SUCCESS").count() == 20,
            message="the tasks before the restart",
        )
        redis_server.stop()
        wait_for(lambda: not runner.connected.is_set(), timeout=30, message="the loss")
        redis_server.start()
        assert runner.connected.wait(60), "the camera reconnected"
        worker.wait_ready(timeout=60, app=app)  # the worker reconnected too

        after = [app.send_task("tests.tasks.add", (n, n)).id for n in range(20)]
        wait_for(
            lambda: TaskState.objects.filter(task_id__in=after, state="SUCCESS").count() == 20,
            timeout=60,
            message="every task sent after the restart",
        )
        assert runner.thread.is_alive()
    finally:
        worker.stop()
    stop_runner(runner)


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_on_rabbitmq_nothing_is_lost_while_the_camera_restarts(rabbitmq_url, tmp_path, run_camera):
    from tests.conftest import WorkerProcess

    app = Celery("rabbitmq-restart", broker=rabbitmq_url)
    app.conf.broker_connection_timeout = 2
    queue_name = f"celery_monitor.rabbitmq-{uuidlib.uuid4().hex[:8]}"

    def start_camera() -> MonitorRunner:
        runner = run_camera(app, queue_name)
        assert runner.connected.wait(30), "the camera connected"
        return runner

    def recorded(expected):
        def check():
            rows = TaskState.objects.filter(task_id__in=list(expected))
            return dict(rows.values_list("task_id", "state")) == expected

        return check

    worker = WorkerProcess("rabbitmq@test", tmp_path / "worker.log", broker_url=rabbitmq_url)
    second = None
    try:
        first = start_camera()
        worker.wait_ready(app=app)
        before = {app.send_task("tests.tasks.add", (n, n)).id: "SUCCESS" for n in range(5)}
        wait_for(recorded(before), message="the tasks before the restart")
        stop_runner(first)

        # The camera is away: these tasks run, and their events wait in its queue.
        away = {app.send_task("tests.tasks.add", (n, n)).id: "SUCCESS" for n in range(20)}
        away.update({app.send_task("tests.tasks.fail", ("x",)).id: "FAILURE" for _ in range(5)})
        away[app.send_task("tests.tasks.retry_then_succeed", kwargs={"until": 1}).id] = "SUCCESS"

        def processed() -> int:
            stats = app.control.inspect([worker.hostname], timeout=1).stats() or {}
            return sum(stats.get(worker.hostname, {}).get("total", {}).values())

        wait_for(lambda: processed() >= 5 + 26 + 1, timeout=60, message="the worker to finish")
        assert not TaskState.objects.filter(task_id__in=list(away)).exists()

        second = start_camera()
        wait_for(recorded(away), timeout=60, message="every task run while the camera was away")
    finally:
        worker.stop()
        if second is not None:
            stop_runner(second)  # before its queue goes: it would declare it again
        # The camera's durable queue outlives it (for a day by default), and would gather
        # every event the next tests send.
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(f"celeryev.{queue_name}")


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.django_db(transaction=True)
def test_a_task_that_ends_while_the_camera_is_away_is_settled_from_the_result_backend(
    redis_url, tmp_path, run_camera
):
    from django_celery_monitor.writer import RECONCILED_NOTE
    from tests.conftest import WorkerProcess

    # This test process's own Redis database (another test process may use and empty others).
    backend = redis_url
    app = Celery("reconcile", broker=redis_url, backend=backend)
    queue_name = f"celery_monitor.reconcile-{uuidlib.uuid4().hex[:8]}"

    def start_camera() -> MonitorRunner:
        runner = run_camera(app, queue_name)
        assert runner.connected.wait(30), "the camera connected"
        return runner

    worker = WorkerProcess(
        "reconcile@test", tmp_path / "worker.log", result_backend=backend, concurrency=1
    )
    runner = start_camera()
    try:
        worker.wait_ready(app=app)
        # Long enough for the camera to stop before it ends, on a slow machine too.
        result = app.send_task("tests.tasks.sleep", (6,))
        wait_for(
            lambda: TaskState.objects.filter(task_id=result.id, state="STARTED").exists(),
            message="the task to start",
        )
        stop_runner(runner)  # the camera goes away; on Redis, the task's last events are lost
        assert result.get(timeout=30) == 6
        assert TaskState.objects.get(task_id=result.id).state == "STARTED"

        start_camera()
        row = wait_for(
            lambda: TaskState.objects.filter(task_id=result.id, state="SUCCESS").first(),
            message="the task to be settled from the result backend",
        )
        assert (row.result, row.note) == ("6", RECONCILED_NOTE)
    finally:
        worker.stop()


def test_the_camera_process_collects_garbage_less_often():
    previous = gc.get_threshold()
    try:
        assert tune_garbage_collector(5_000) == previous
        assert gc.get_threshold() == (max(5_000, previous[0]), *previous[1:])
        tune_garbage_collector(10)  # never lower than it was
        assert gc.get_threshold()[0] == max(5_000, previous[0])
    finally:
        gc.set_threshold(*previous)
