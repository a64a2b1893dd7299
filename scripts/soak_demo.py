#!/usr/bin/env python3
"""Start and stop the demo many times, or run it long, and check that it stays healthy.

    python3 scripts/soak_demo.py --runs 20 --seconds 25    # 20 short runs in a row
    python3 scripts/soak_demo.py --runs 1 --seconds 600    # one run of 10 minutes

Each run starts ``scripts/demo`` as a user would, then checks, every few seconds, that the
demo is still running, that new tasks keep being recorded, that the worker shows online, and
that the admin answers; then it presses Ctrl-C (SIGINT) and checks that the demo exits with
0 and leaves no process behind. The database is kept between runs, as for a user. Exits
with 1 if any check failed, and prints a line per run (and per minute of a long run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Seconds the first task may take to show up after the demo starts (its imports, migrate).
FIRST_TASK_TIMEOUT = 60.0
#: A worker whose heartbeat is older than this shows as a failure.
HEARTBEAT_STALE = 15.0
#: How long new tasks may stop arriving before it counts as a failure.
QUIET_LIMIT = 30.0


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def stamp(value: datetime.datetime) -> str:
    """A datetime as Django stores it in SQLite (UTC, naive, space-separated)."""
    return value.isoformat(sep=" ")


class Database:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _query(self, sql: str, params=()):
        if not self.path.exists():
            return None
        connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return connection.execute(sql, params).fetchone()
        except sqlite3.OperationalError:
            return None  # not migrated yet, or busy
        finally:
            connection.close()

    def tasks_since(self, since: datetime.datetime) -> int:
        row = self._query(
            "SELECT COUNT(*) FROM celery_monitor_taskstate WHERE tstamp >= ?", (stamp(since),)
        )
        return row[0] if row else 0

    def worker_heartbeat_age(self) -> float | None:
        row = self._query(
            "SELECT MAX(last_heartbeat) FROM celery_monitor_workerstate WHERE offline = 0"
        )
        if not row or not row[0]:
            return None
        last = datetime.datetime.fromisoformat(row[0]).replace(tzinfo=None)
        return (utcnow() - last).total_seconds()


def processes_of(data_dir: Path) -> list[int]:
    """The processes whose environment names this demo's data folder."""
    marker = f"DEMO_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def admin_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def run_once(number: int, seconds: float, port: int, data_dir: Path, log_dir: Path) -> dict:
    """Run the demo once; return its figures and the problems seen."""
    env = {**os.environ, "PORT": str(port), "DEMO_DATA_DIR": str(data_dir)}
    output = log_dir / f"run-{number:02d}.log"
    database = Database(data_dir / "db.sqlite3")
    problems: list[str] = []
    started_at = utcnow()
    start = time.monotonic()
    with open(output, "wb") as out:
        demo = subprocess.Popen(
            [str(ROOT / "scripts" / "demo")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    first_task = None
    last_count, last_growth = 0, time.monotonic()
    minutes: list[str] = []
    next_minute = start + 60
    web_ok = False
    while time.monotonic() - start < seconds:
        time.sleep(2)
        now = time.monotonic()
        if demo.poll() is not None:
            problems.append(f"the demo exited by itself with {demo.returncode}")
            break
        count = database.tasks_since(started_at)
        if count > last_count:
            last_count, last_growth = count, now
            if first_task is None:
                first_task = now - start
        elif first_task is None and now - start > FIRST_TASK_TIMEOUT:
            problems.append(f"no task recorded {FIRST_TASK_TIMEOUT:.0f} s after the start")
            break
        elif first_task is not None and now - last_growth > QUIET_LIMIT:
            problems.append(f"no new task recorded for {now - last_growth:.0f} s")
            break
        age = database.worker_heartbeat_age()
        if first_task is not None and (age is None or age > HEARTBEAT_STALE):
            problems.append(f"the worker shows offline (last heartbeat {age} s ago)")
            break
        if not web_ok and first_task is not None:
            web_ok = admin_answers(port)
        if now >= next_minute:
            minutes.append(
                f"    {round((now - start) / 60):>3} min: {count} tasks, heartbeat {age:.1f} s old"
            )
            print(minutes[-1], flush=True)
            next_minute += 60
    if not problems and not web_ok:
        problems.append("the admin did not answer")

    stop_start = time.monotonic()
    if demo.poll() is None:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            problems.append("the demo did not stop within 60 s of Ctrl-C")
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        else:
            if demo.returncode != 0 and not problems:
                problems.append(f"the demo exited with {demo.returncode} after Ctrl-C")
    stop_seconds = time.monotonic() - stop_start
    time.sleep(0.5)
    left = processes_of(data_dir)
    if left:
        problems.append(f"processes left behind: {left}")
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    text = output.read_text(errors="replace")
    if "stopped by itself" in text or "Unrecoverable error" in text or "Traceback" in text:
        problems.append(f"the demo reported a failure; see {output}")
    return {
        "run": number,
        "first_task": first_task,
        "tasks": database.tasks_since(started_at),
        "stop": stop_seconds,
        "code": demo.returncode,
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=25.0, help="Length of each run.")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--data-dir", type=Path, help="Default: a new temporary folder.")
    args = parser.parse_args()

    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="demo-soak-"))).resolve()
    log_dir = data_dir / "soak"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"Soaking the demo: {args.runs} runs of {args.seconds:.0f} s, data in {data_dir}")
    results = []
    for number in range(1, args.runs + 1):
        result = run_once(number, args.seconds, args.port, data_dir, log_dir)
        results.append(result)
        first = f"{result['first_task']:.1f} s" if result["first_task"] is not None else "never"
        verdict = "ok" if not result["problems"] else "FAILED: " + "; ".join(result["problems"])
        print(
            f"run {number:2d}: first task after {first}, {result['tasks']} tasks recorded, "
            f"stopped in {result['stop']:.1f} s with exit code {result['code']}: {verdict}",
            flush=True,
        )
    failed = [r for r in results if r["problems"]]
    firsts = [r["first_task"] for r in results if r["first_task"] is not None]
    print(
        f"\n{len(results) - len(failed)} of {len(results)} runs ok; "
        f"{sum(r['tasks'] for r in results)} tasks recorded in all; "
        + (
            f"first task after {min(firsts):.1f}-{max(firsts):.1f} s; "
            if firsts
            else "no task recorded; "
        )
        + f"stops took {min(r['stop'] for r in results):.1f}-"
        f"{max(r['stop'] for r in results):.1f} s."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
