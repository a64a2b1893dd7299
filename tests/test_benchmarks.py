"""The benchmark scripts run, on a few hundred tasks, and print their summary.

Only that they run and check what they record: their timings are not asserted (they are
benchmarks, not timed tests). Each uses a SQLite file of its own, never the test database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.nodb

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
#: ingest.py's options that skip every rate: it times the shards alone.
SHARDS_ONLY = [option for measure in ("ours", "1.1.2", "flower", "state")
               for option in ("--skip", measure)]  # fmt: skip


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    assert "ERROR" not in done.stdout, done.stdout
    return done.stdout


def summary(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("summary: ")]
    assert len(lines) == 1, output
    return lines[0]


def test_ingest_runs_each_measurement_and_checks_the_rows():
    output = run(
        "ingest.py", "--tasks", "300", "--legacy-tasks", "60", "--shot", "200", "--rounds", "1"
    )
    line = summary(output)
    assert line.startswith("summary: sqlite: ours ")
    assert "ours/1.1.2" in line and "ours/state" in line
    result = next(line for line in output.splitlines() if line.startswith("sqlite "))
    assert " ours " in result and " state " in result and " 1.1.2 " in result
    assert "ours/flower" in result or "skipped Flower" in output
    assert "SQLite's rollback journal" in output  # SQLite's default


def test_backlog_compares_shots_with_and_without_a_backlog():
    output = run("backlog.py", "--backlog", "500", "--rounds", "1", "--sqlite-journal", "wal")
    assert summary(output).startswith("summary: sqlite: backlog 500, shot ")
    assert "SQLite in WAL mode" in output  # as the README advises for the camera


def test_memory_reports_the_resident_memory():
    line = summary(run("memory.py", "--tasks", "400"))
    assert line.startswith("summary: sqlite: 400 tasks, peak ")


def test_ingest_compares_shards_with_one_camera_and_the_machines_ceiling():
    # Every rate skipped: the shards alone.
    output = run("ingest.py", "--tasks", "200", "--rounds", "1", "--shards", "2", *SHARDS_ONLY)
    line = summary(output)
    assert line.startswith("summary: sqlite, shards speed-up "), line
    assert " ev/s" not in output
    assert "shards: 1 camera" in output
    assert "machine: 2 processes of independent work did" in output
    assert "one camera kept " in output and "the most 2 shards can gain here is" in output
    # The split that costs the cameras nothing recorded every task too (else ERROR).
    assert "a free split: 2 cameras fed only their own shard's events" in output
    assert "shards speed-up" in line and "the machine's ceiling" in line
    assert "a free split" in line


def test_shots_come_after_every_shot_events_or_after_those_due():
    sys.path.insert(0, str(BENCHMARKS))
    import common

    seen: list[int] = []
    shots: list[int] = []
    taken, threaded = threading.Event(), False

    def handle(event: int) -> None:
        if threaded and len(seen) == 1:
            # On a thread of their own the shots come while the events go on: the second
            # event waits here for the first shot, which then sees the first event only.
            assert taken.wait(10), "no shot was taken"
        seen.append(event)

    def capture() -> None:
        shots.append(len(seen))
        taken.set()

    def feed(**kwargs):
        seen.clear()
        shots.clear()
        taken.clear()
        common.feed_with_shots(handle, capture, list(range(10)), 4, **kwargs)
        return shots

    assert feed(inline=True) == [4, 8, 10]
    assert feed(inline=True, due={1, 7}) == [1, 7, 10]
    threaded = True
    assert feed(due={1, 7})[0] == 1 and shots[-1] == 10 and len(shots) <= 3


def test_rate_finds_the_highest_rate_one_camera_and_two_shards_keep_up_with():
    output = run("rate.py", "--tasks", "300", "--rates", "1000,2000", "--every", "0.2")
    runs = [line for line in output.splitlines() if " camera(s) took " in line]
    assert len(runs) == 4, output  # each rate, one camera then two
    assert all(line.endswith(("kept up", "behind")) for line in runs)
    line = summary(output)
    assert line.startswith("summary: sqlite: kept up with 1 camera "), line
    assert ", 2 cameras " in line


def test_admin_times_each_page_and_the_purge():
    output = run("admin.py", "--sqlite", "--rows", "3000")
    pages = [line for line in output.splitlines() if line.endswith((" ok", " SLOW"))]
    for page in ("task list", "search task id prefix", "page 50", "task detail", "worker list"):
        assert any(line.startswith(page) for line in pages), output
    assert "purge: longest statement" in output
    assert ", 0 failed" in output  # the camera's writes during the purge all went through


def test_a_benchmark_stopped_by_sigterm_removes_what_it_made(tmp_path):
    """``kill`` or ``timeout`` stops a benchmark as Ctrl-C does: its temporary files (and
    databases) go, and the camera processes it started end with it."""
    command = [sys.executable, str(BENCHMARKS / "ingest.py"), "--tasks", "50000",
               "--shards", "2", "--rounds", "20", *SHARDS_ONLY]  # fmt: skip
    process = subprocess.Popen(
        command,
        cwd=BENCHMARKS.parent,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # Migrated, and its camera processes started (their databases copied from it).
        while not list(tmp_path.glob("cm_bench_*/run-*.sqlite3")):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the benchmark did not start"
            time.sleep(0.05)
        process.terminate()
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, output
    assert list(tmp_path.iterdir()) == [], output


def test_staging_compares_the_two_ways_of_emptying_postgresqls_temporary_table():
    from tests.conftest import REQUIRE_SERVICES

    output = run("staging.py", "--batches", "20", "--rounds", "1", "--no-disk-load")
    line = summary(output)
    if line == "summary: postgresql: skipped":
        if REQUIRE_SERVICES:
            pytest.fail(f"No PostgreSQL server for the benchmark: {output}")
        pytest.skip("no PostgreSQL server")
    assert line.startswith("summary: postgresql: write of 50 tasks, disk left alone: p99 ")
    assert "ON COMMIT DELETE ROWS" in output and "on commit/ours: p50 " in output


@pytest.mark.e2e
def test_lag_runs_a_real_worker_and_records_every_task(redis_url):
    output = run("lag.py", "--tasks", "150", "--senders", "2", "--database", "sqlite",
                 "--broker", redis_url, "--stall", "30")  # fmt: skip
    line = next(line for line in output.splitlines() if line.startswith("sqlite  lag median"))
    assert "(150/150 tasks" in line, output


@pytest.mark.e2e
def test_broker_times_one_camera_and_two_shards_through_redis(redis_url):
    output = run("broker.py", "--tasks", "300", "--rate", "2000", "--rounds", "1",
                 "--broker", redis_url)  # fmt: skip
    runs = [line for line in output.splitlines() if line.startswith("  round 1: ")]
    assert len(runs) == 2, output  # one camera, then two shards
    assert summary(output).startswith("summary: sqlite: through Redis, 1 camera/busiest shard ")


@pytest.mark.e2e
@pytest.mark.parametrize("split", ["shards", "queue"])
def test_broker_times_one_camera_and_two_through_rabbitmq(rabbitmq_url, split):
    """On RabbitMQ each shard reads a queue of its own, or the cameras share one queue (each
    gets some of the messages): either way the rows of every task are checked."""
    output = run("broker.py", "--tasks", "300", "--rate", "2000", "--rounds", "1",
                 "--broker", rabbitmq_url, "--split", split)  # fmt: skip
    runs = [line for line in output.splitlines() if line.startswith("  round 1: ")]
    assert len(runs) == 2, output
    way = "RabbitMQ" if split == "shards" else "RabbitMQ, one queue"
    each = "shard" if split == "shards" else "camera"
    assert summary(output).startswith(f"summary: sqlite: through {way}, 1 camera/busiest {each} ")


def test_broker_refuses_to_share_a_queue_on_redis(redis_url):
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "broker.py"), "--split", "queue", "--broker", redis_url],
        cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and "only RabbitMQ lets cameras share a queue" in done.stderr
