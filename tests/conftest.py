"""Fixtures: the Celery app, a real Redis broker, real worker processes, a running camera."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings

from tests.celery_app import app as celery_app

ROOT = Path(__file__).resolve().parent.parent
#: Set by the test command (and CI): a server that is missing fails the test, never skips it.
REQUIRE_SERVICES = bool(os.environ.get("CI") or os.environ.get("REQUIRE_SERVICES"))


def wait_for(predicate, timeout=20.0, interval=0.1, message="condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"Timed out after {timeout} s waiting for {message}.")
        time.sleep(interval)


@pytest.fixture
def app():
    """The test project's Celery app."""
    return celery_app


@pytest.fixture(scope="session")
def redis_url():
    """The URL of a running Redis server, emptied once per test session."""
    import redis

    url = settings.CELERY_BROKER_URL
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"No Redis server at {url} ({exc}); start one with scripts/services.sh."
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="session")
def rabbitmq_url():
    """The URL of a running RabbitMQ server (scripts/services.sh starts a private one)."""
    from kombu import Connection

    url = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5673//")
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        message = f"No RabbitMQ server at {url} ({exc}); start one with scripts/services.sh."
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return url


class WorkerProcess:
    """A real ``celery worker -E`` subprocess of the test project."""

    def __init__(
        self,
        hostname: str,
        log_path: Path,
        concurrency: int = 2,
        broker_url: str | None = None,
        result_backend: str | None = None,
    ) -> None:
        self.hostname = hostname
        self.log_path = log_path
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
        env["REDIS_URL"] = broker_url or settings.CELERY_BROKER_URL
        env["RESULT_BACKEND"] = result_backend or ""
        command = [
            sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-E",
            "-l", "info", "-c", str(concurrency), "--hostname", hostname,
            "--without-gossip", "--without-mingle", "-O", "fair",
        ]  # fmt: skip
        self._log = open(log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 30.0, app=None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"Worker {self.hostname} exited:\n{self.log()}")
            try:
                replies = (app or celery_app).control.ping(
                    destination=[self.hostname], timeout=0.5
                )
            except Exception:  # the broker is (re)starting: try again
                replies = None
                time.sleep(0.5)
            if replies:
                return
        pytest.fail(f"Worker {self.hostname} did not answer a ping:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM): the worker says goodbye with worker-offline."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def celery_worker(redis_url, tmp_path):
    """Start real worker processes: ``celery_worker(hostname="w1@test")``."""
    workers: list[WorkerProcess] = []

    def start(hostname: str | None = None, concurrency: int = 2) -> WorkerProcess:
        hostname = hostname or f"worker-{uuid.uuid4().hex[:8]}@test"
        worker = WorkerProcess(hostname, tmp_path / f"{hostname}.log", concurrency)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def start_camera(redis_url, transactional_db):
    """Start running cameras (receiver and shutter every 0.2 s) writing to the test database.

    Each has its own event queue, so each gets every event.
    """
    from django_celery_monitor.runner import MonitorRunner

    runners = []

    def start(freq: float = 0.2, shard: str | None = None):
        runner = MonitorRunner(
            celery_app,
            freq=freq,
            queue_name=f"celery_monitor.test-{uuid.uuid4().hex[:8]}",
            shard=shard,
        )
        runner.thread = threading.Thread(target=runner.run, name="camera", daemon=True)
        runner.thread.start()
        runners.append(runner)
        if not runner.connected.wait(20):
            pytest.fail("The camera did not connect to the broker.")
        return runner

    yield start
    for runner in runners:
        runner.stop()
    for runner in runners:
        runner.thread.join(30)
        assert not runner.thread.is_alive(), "a camera did not stop"


@pytest.fixture
def camera(start_camera):
    """A running camera (receiver and shutter every 0.2 s) writing to the test database."""
    return start_camera()
