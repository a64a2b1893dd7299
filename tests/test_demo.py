"""The demo's supervisor (``manage.py rundemo`` of the example project), with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.request import urlopen

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.nodb]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_of(data_dir: Path) -> list[int]:
    marker = f"DEMO_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def demo(tmp_path):
    """Start the example project's ``rundemo`` in a data folder of its own."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example.settings",
        "PYTHONPATH": str(ROOT / "example"),
        "DEMO_DATA_DIR": str(tmp_path),
    }
    manage = [sys.executable, str(ROOT / "example" / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=env, check=True)
    output = tmp_path / "demo.out"
    started = []

    def start(port: int | None = None) -> subprocess.Popen:
        start.port = port or free_port()
        with open(output, "wb") as out:
            process = subprocess.Popen(
                [*manage, "rundemo", "--port", str(start.port), "--status-every", "2"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        return process

    start.output = output
    start.data_dir = tmp_path
    start.env, start.manage = env, manage
    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    for pid in processes_of(tmp_path):
        os.kill(pid, signal.SIGKILL)


def test_the_demo_records_tasks_and_stops_cleanly_on_ctrl_c(demo):
    process = demo()
    wait_for(
        lambda: (
            "tasks recorded in this run" in demo.output.read_text()
            and "online" in demo.output.read_text()
        ),
        timeout=60,
        message="the demo to record tasks and show its worker online",
    )
    # The links are printed once the web server answers, and it listens on this machine
    # only (the admin's login is admin / admin).
    assert f"Dashboard: http://127.0.0.1:{demo.port}/" in demo.output.read_text()
    assert f"runserver 127.0.0.1:{demo.port}" in " ".join(
        Path(f"/proc/{pid}/cmdline").read_bytes().decode().replace("\0", " ")
        for pid in processes_of(demo.data_dir)
    )
    # The camera's heartbeat says it records: the health check answers 200.
    health = json.loads(urlopen(f"http://127.0.0.1:{demo.port}/monitor/health/").read())
    assert health["status"] == "ok", health
    assert health["last_shot_age"] < 10
    # A browser's request for the site's icon is not a 404 in the log.
    assert urlopen(f"http://127.0.0.1:{demo.port}/favicon.ico").status == 204
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0
    assert "The demo stopped." in demo.output.read_text()
    wait_for(lambda: processes_of(demo.data_dir) == [], timeout=5, message="no process left")


CONTROL_WHILE_BUSY = """
import json, time
from celery import states
from example.celery import app
from demo.tasks import sleep
ids = [sleep.apply_async(args=[60]).id for _ in range(3)]  # the pool's 2, and one more
# The demo's own sleeps (up to 8 s) may hold a process first: wait until ours fill the pool.
inspector = app.control.inspect(timeout=3)
deadline = time.monotonic() + 45
while True:
    active = [t["id"] for tasks in (inspector.active() or {}).values() for t in tasks]
    if sum(i in active for i in ids) >= 2 or time.monotonic() > deadline:
        break
    time.sleep(0.5)
pings = app.control.ping(timeout=3)
replies = app.control.revoke(ids, terminate=True, reply=True, timeout=3)
print(json.dumps({"active": [i for i in ids if i in active], "pings": pings,
                  "revoke": replies}))
"""


def test_the_demos_worker_answers_control_commands_while_its_pool_is_busy(demo):
    """Terminate is for tasks that keep the pool busy: the worker must read the command
    then, not once a task ends (which it did on the folder broker, whose worker has no
    event loop, until it stopped waiting for a free process before handing a task on)."""
    process = demo()
    wait_for(
        lambda: "online" in demo.output.read_text(),
        timeout=60,
        message="the demo's worker to be online",
    )
    done = subprocess.run(
        [*demo.manage, "shell", "-c", CONTROL_WHILE_BUSY],
        env=demo.env, capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(answers["pings"]) == 1, answers  # answered at once
    assert len(answers["active"]) == 2, answers  # while the pool was full
    assert answers["revoke"] and "ok" in next(iter(answers["revoke"][0].values())), answers
    # The terminated sleeps end at once: a warm shutdown does not wait a minute for them.
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 0


def test_the_demo_says_which_process_stopped_and_stops_the_others(demo):
    process = demo()
    wait_for(
        lambda: "tasks recorded in this run" in demo.output.read_text(),
        timeout=60,
        message="the demo to record tasks",
    )
    worker_log = demo.data_dir / "logs" / "worker.log"
    worker = next(
        pid
        for pid in processes_of(demo.data_dir)
        if b"worker" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        and os.getpgid(pid) == pid
    )
    os.kill(worker, signal.SIGKILL)
    assert process.wait(60) == 1
    text = demo.output.read_text()
    assert "The Celery worker stopped by itself (signal 9)" in text
    assert f"The last lines of {worker_log}" in text
    assert "The demo stopped because the Celery worker stopped" in text
    wait_for(lambda: processes_of(demo.data_dir) == [], timeout=5, message="no process left")


def test_the_demo_says_when_its_port_is_taken(demo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        process = demo(taken.getsockname()[1])
        assert process.wait(30) == 1
    text = demo.output.read_text()
    assert f"Port {demo.port} on 127.0.0.1 is not free" in text
    assert f"PORT={demo.port + 1} scripts/demo" in text
    assert processes_of(demo.data_dir) == []
