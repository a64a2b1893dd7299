"""The lag on a real cluster: from each task's final event to its final row in the database.

A Redis broker, one prefork ``celery worker -E`` of the test project (``tests/``) at its full
rate (``add`` tasks, concurrency = the CPUs), several sender processes publishing as fast as
they can, and the camera (``manage.py celery_monitor --frequency 1``, run as
``python -m django celery_monitor`` with ``benchmarks.lag_settings``) as its own process, on a
SQLite file in WAL mode and on PostgreSQL.

Two independent observers measure it:

- a listener process, with an event receiver of its own on the same broker, notes the local
  time at which each task's final event (task-succeeded or task-failed) arrives; when Flower
  is installed it also feeds ``flower.events.EventsState`` with the same events and notes
  how long after the event's arrival Flower's in-memory state shows the final state;
- a poller process reads the table every 0.1 s (rows in a final state with ``tstamp`` at or
  after the latest one seen, less a margin: a range the ``tstamp`` index serves) and notes
  when each task's row first shows its final state.

Lag = row time - event time, per task. Every task sent must be recorded, or the script
prints an error and exits 1.

    .venv/bin/python benchmarks/lag.py                      # 30,000 tasks, SQLite then PostgreSQL
    .venv/bin/python benchmarks/lag.py --tasks 3000 --database sqlite
    .venv/bin/python benchmarks/lag.py --database sqlite --sqlite-journal delete

LAG_REDIS_URL (default redis://127.0.0.1:6390/9) is the broker; the PostgreSQL server is
PGHOST/PGPORT/PGUSER/PGPASSWORD (default 127.0.0.1:5439, postgres) and the database,
dropped and created anew for each run, ``--pg-database`` (default cm_lag).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
DEFAULT_BROKER = os.environ.get("LAG_REDIS_URL", "redis://127.0.0.1:6390/9")
TASK_NAME = "tests.tasks.add"
FINAL_EVENTS = ("task-succeeded", "task-failed")
FINAL_STATES = ("SUCCESS", "FAILURE")
#: The p95 lag aimed at, in seconds.
TARGET_P95 = 2.0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _die_with_parent() -> None:
    """In a child, before exec: get SIGTERM when the benchmark itself dies (Linux)."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


# -- The child processes: listener, poller, sender ------------------------------------------


def _progress_thread(counter: Any, stop: threading.Event) -> None:
    def report() -> None:
        while not stop.wait(0.5):
            _say(f"progress {counter()}")

    threading.Thread(target=report, daemon=True).start()


def listener_main(argv: list[str]) -> int:
    """Note when each task's final event arrives; feed Flower's state with the same events."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from celery import Celery
    from celery.states import READY_STATES

    try:
        from flower.events import EventsState
    except ImportError:
        EventsState = None

    app = Celery("lag-listener", broker=args.broker)
    flower = EventsState(max_tasks_in_memory=100_000) if EventsState else None
    arrived: dict[str, float] = {}
    flower_delay: dict[str, float] = {}
    counts = {"events": 0}
    stop = threading.Event()
    receiver: Any = None

    def on_event(event: dict) -> None:
        now = time.time()
        counts["events"] += 1
        final = event.get("type") in FINAL_EVENTS
        if final:
            arrived.setdefault(event["uuid"], now)
        if flower is not None:
            flower.event(event)
            if final:
                task = flower.tasks.get(event["uuid"])
                if task is not None and task.state in READY_STATES:
                    flower_delay.setdefault(event["uuid"], time.time() - now)
        if final and len(arrived) >= args.expect:
            stop.set()
        if stop.is_set():
            receiver.should_stop = True

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        if receiver is not None:
            receiver.should_stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _progress_thread(lambda: len(arrived), stop)
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(
            connection, handlers={"*": on_event}, node_id=f"lag-listener-{uuid.uuid4().hex[:8]}"
        )
        consume_ready = receiver.on_consume_ready

        def on_consume_ready(*a: Any, **kw: Any) -> None:
            consume_ready(*a, **kw)
            _say("ready")

        receiver.on_consume_ready = on_consume_ready
        if not stop.is_set():
            receiver.capture(limit=None, timeout=None, wakeup=False)
    result = {
        "final": arrived,
        "flower": flower_delay if flower is not None else None,
        "events": counts["events"],
    }
    Path(args.out).write_text(json.dumps(result))
    _say(f"progress {len(arrived)}")
    return 0


def poller_main(argv: list[str]) -> int:
    """Note when each task's row first shows a final state, polling the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--margin", type=float, default=5.0)
    args = parser.parse_args(argv)

    import django

    django.setup()
    from django.db import connection

    from django_celery_monitor.models import TaskState

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    final = TaskState.objects.filter(state__in=FINAL_STATES)
    seen: dict[str, float] = {}
    latest: datetime | None = None
    margin = timedelta(seconds=args.margin)
    polls = rows_read = 0
    query_seconds = 0.0
    connection.ensure_connection()
    _progress_thread(lambda: len(seen), stop)
    _say("ready")
    while not stop.is_set() and len(seen) < args.expect:
        started = time.time()
        query = final if latest is None else final.filter(tstamp__gte=latest - margin)
        rows = list(query.values_list("task_id", "tstamp"))
        query_seconds += time.time() - started
        polls += 1
        rows_read += len(rows)
        for task_id, tstamp in rows:
            # The row was committed before this poll began.
            seen.setdefault(task_id, started)
            if latest is None or tstamp > latest:
                latest = tstamp
        stop.wait(max(0.0, args.interval - (time.time() - started)))
    # Rows the range above missed (their tstamp older than the latest seen, less the margin).
    missed = set(final.values_list("task_id", flat=True)) - seen.keys()
    now = time.time()
    for task_id in missed:
        seen[task_id] = now
    result = {
        "rows": seen,
        "missed_by_range": len(missed),
        "polls": polls,
        "rows_read": rows_read,
        "query_seconds": query_seconds,
    }
    Path(args.out).write_text(json.dumps(result))
    _say(f"progress {len(seen)}")
    return 0


def sender_main(argv: list[str]) -> int:
    """Publish ``add`` tasks as fast as one process can; write their ids."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from celery import Celery

    app = Celery("lag-sender", broker=args.broker)
    ids = [str(uuid.uuid4()) for _ in range(args.count)]
    started = time.time()
    with app.producer_or_acquire() as producer:
        for i, task_id in enumerate(ids):
            app.send_task(TASK_NAME, (i, i), task_id=task_id, producer=producer)
    ended = time.time()
    Path(args.out).write_text(json.dumps({"ids": ids, "started": started, "ended": ended}))
    return 0


ROLES = {"_listener": listener_main, "_poller": poller_main, "_sender": sender_main}


# -- The orchestration ----------------------------------------------------------------------


class BenchmarkError(Exception):
    """The run could not go on: a process died, or nothing moved for too long."""


@dataclass
class Child:
    """A process the benchmark started, in a session (process group) of its own."""

    name: str
    process: subprocess.Popen
    log: Path | None = None
    progress: int = 0
    ready: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, name: str, command: list[str], env: dict, log: Path | None = None) -> Child:
        output: Any = open(log, "wb") if log else subprocess.PIPE  # noqa: SIM115
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if log else None,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        if log:
            output.close()
        child = cls(name, process, log)
        if not log:
            threading.Thread(target=child._read, daemon=True).start()
        return child

    def _read(self) -> None:
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").strip()
            if line == "ready":
                self.ready.set()
            elif line.startswith("progress "):
                self.progress = int(line.split()[1])
            elif line:
                sys.stderr.write(f"[{self.name}] {line}\n")

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time of the process and its descendants, while it runs (Linux /proc)."""
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parents[int(entry.name)] = int(fields[1])
            times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
        total, pids = 0.0, [self.process.pid]
        while pids:
            pid = pids.pop()
            total += times.get(pid, 0.0)
            pids.extend(child for child, parent in parents.items() if parent == pid)
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Ask it to stop; past ``timeout``, kill its whole process group."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _say(f"  {self.name} did not stop in {timeout:.0f} s: killed")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: its children too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


def spread(values: list[float]) -> tuple[float, float, float]:
    if not values:
        return math.nan, math.nan, math.nan
    return statistics.median(values), common.percentile(values, 95), max(values)


@dataclass
class RunResult:
    database: str
    sent: int
    recorded: int
    lags: list[float]
    flower: list[float] | None
    worker_rate: float
    line: str
    flower_line: str | None


SHOT_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG\] Shot: wrote (\d+) tasks", re.M
)


def camera_shots(log: Path) -> list[tuple[float, int]]:
    """The camera's shots (end time, rows written) from its log at verbosity 2.

    Django sets the process's time zone to TIME_ZONE: the log's times are in it.
    """
    from zoneinfo import ZoneInfo

    if str(ROOT) not in sys.path:
        sys.path.insert(1, str(ROOT))
    from tests.settings import TIME_ZONE

    zone = ZoneInfo(TIME_ZONE)
    shots = []
    for stamp, count in SHOT_LINE.findall(log.read_text(errors="replace")):
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=zone)
        shots.append((when.timestamp(), int(count)))
    return shots


def wait_until(predicate: Any, timeout: float, what: str, children: list[Child]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for child in children:
            if not child.alive():
                raise BenchmarkError(
                    f"the {child.name} exited ({child.process.returncode}) "
                    f"before {what}{_tail(child)}"
                )
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def _tail(child: Child) -> str:
    if child.log is None or not child.log.exists():
        return ""
    return ":\n" + child.log.read_text(errors="replace")[-3000:]


def base_env(args: argparse.Namespace, database: str, tmp: Path) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE", "SQLITE_NAME", "PGDATABASE", "DJANGO_SETTINGS_MODULE"}
    }
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["DJANGO_SETTINGS_MODULE"] = "benchmarks.lag_settings"
    env["REDIS_URL"] = args.broker
    env["RESULT_BACKEND"] = ""
    env["PYTHONUNBUFFERED"] = "1"
    if database == "postgresql":
        env["DATABASE"] = "postgresql"
        env["PGDATABASE"] = args.pg_database
    else:
        env["SQLITE_NAME"] = str(tmp / "lag.sqlite3")
        env["LAG_SQLITE_JOURNAL"] = args.sqlite_journal
    return env


def recreate_postgresql(name: str) -> None:
    import psycopg

    with psycopg.connect(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=os.environ.get("PGPORT", "5439"),
        user=os.environ.get("PGUSER", "postgres"),
        password=os.environ.get("PGPASSWORD", ""),
        dbname="postgres",
        autocommit=True,
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def purge_broker(app: Any) -> int:
    """Empty the task queue, so only this run's tasks reach the worker."""
    with app.connection_for_write() as connection:
        return app.control.purge(connection=connection)


def run_once(args: argparse.Namespace, database: str) -> RunResult:
    from celery import Celery

    label = database if database == "postgresql" else f"sqlite ({args.sqlite_journal} journal)"
    _say(
        f"== {label}: {args.tasks} tasks, {args.senders} senders, camera every "
        f"{args.frequency} s, worker concurrency {args.concurrency}"
    )
    app = Celery("lag", broker=args.broker)
    tmp = Path(tempfile.mkdtemp(prefix="celery-monitor-lag-"))
    env = base_env(args, database, tmp)
    python = sys.executable
    children: list[Child] = []
    try:
        purged = purge_broker(app)
        if purged:
            _say(f"  purged {purged} old messages from the task queue")
        if database == "postgresql":
            recreate_postgresql(args.pg_database)
        started = time.monotonic()
        subprocess.run(
            [python, "-m", "django", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT, env=env, check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        _say(f"  migrated in {time.monotonic() - started:.1f} s")

        listener = Child.start(
            "listener",
            [python, str(SCRIPT), "_listener", "--broker", args.broker,
             "--expect", str(args.tasks), "--out", str(tmp / "listener.json")],
            env,
        )  # fmt: skip
        children.append(listener)
        camera = Child.start(
            "camera",
            [python, "-m", "django", "celery_monitor", "--frequency", str(args.frequency),
             "-v", "2", "--queue-name", f"celery_monitor.lag-{uuid.uuid4().hex[:8]}"],
            env, log=tmp / "camera.log",
        )  # fmt: skip
        children.append(camera)
        poller = Child.start(
            "poller",
            [python, str(SCRIPT), "_poller", "--expect", str(args.tasks),
             "--out", str(tmp / "poller.json"), "--interval", str(args.poll_interval),
             "--margin", str(max(5.0, 3 * args.frequency))],
            env,
        )  # fmt: skip
        children.append(poller)
        wait_until(listener.ready.is_set, 30, "the listener's receiver", children)
        wait_until(poller.ready.is_set, 30, "the poller", children)
        wait_until(
            lambda: "capturing events" in camera.log.read_text(errors="replace"),
            30, "the camera's receiver", children,
        )  # fmt: skip

        hostname = f"lag-{uuid.uuid4().hex[:6]}@benchmark"
        worker = Child.start(
            "worker",
            [python, "-m", "celery", "-A", "tests.celery_app", "worker", "-E",
             "-c", str(args.concurrency), "--hostname", hostname, "-l", "warning",
             "--without-gossip", "--without-mingle"],
            env, log=tmp / "worker.log",
        )  # fmt: skip
        children.append(worker)
        wait_until(
            lambda: app.control.ping(destination=[hostname], timeout=0.5),
            60, "the worker", children,
        )  # fmt: skip

        busy0, total0 = machine_busy()
        cpu0 = {child.name: child.cpu_seconds() for child in children}
        shares = [args.tasks // args.senders + (i < args.tasks % args.senders)
                  for i in range(args.senders)]  # fmt: skip
        senders = []
        for i, share in enumerate(shares):
            sender = Child.start(
                f"sender {i + 1}",
                [python, str(SCRIPT), "_sender", "--broker", args.broker,
                 "--count", str(share), "--out", str(tmp / f"sender{i}.json")],
                env,
            )  # fmt: skip
            senders.append(sender)
            children.append(sender)

        # Wait for every final event and every final row; give up when nothing moves.
        watched = [listener, camera, poller, worker]
        last_move, last = time.monotonic(), (-1, -1)
        cpu1: dict[str, float] = {}
        busy1 = total1 = 0.0
        while listener.alive() or poller.alive():
            for child in (camera, worker):
                if not child.alive():
                    raise BenchmarkError(
                        f"the {child.name} exited ({child.process.returncode}){_tail(child)}"
                    )
            for sender in senders:
                if sender.process.poll() not in (None, 0):
                    raise BenchmarkError(f"{sender.name} failed")
            now = (listener.progress, poller.progress)
            if now != last:
                last, last_move = now, time.monotonic()
                # The CPU each used, up to the latest progress.
                cpu1.update({c.name: c.cpu_seconds() for c in watched if c.alive()})
                busy1, total1 = machine_busy()
            elif time.monotonic() - last_move > args.stall:
                _say(
                    f"  nothing moved for {args.stall:.0f} s (events {listener.progress}, "
                    f"rows {poller.progress} of {args.tasks}): stopping"
                )
                break
            time.sleep(0.2)

        # Stop in order: no more tasks, then the camera (a last shot), then the observers.
        for sender in senders:
            sender.stop(timeout=10)
        worker.stop(timeout=30)
        camera.stop(timeout=30)
        listener.stop(timeout=20)
        poller.stop(timeout=60)

        return report(args, database, tmp, senders, camera, worker,
                      cpu0, cpu1, busy1 - busy0, total1 - total0)  # fmt: skip
    finally:
        for child in reversed(children):
            child.stop(timeout=20)
        if args.keep:
            _say(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(
    args: argparse.Namespace,
    database: str,
    tmp: Path,
    senders: list[Child],
    camera: Child,
    worker: Child,
    cpu0: dict,
    cpu1: dict,
    busy: float,
    total: float,
) -> RunResult:
    sent_ids: list[str] = []
    send_start, send_end = math.inf, 0.0
    for i in range(len(senders)):
        path = tmp / f"sender{i}.json"
        if path.exists():
            data = json.loads(path.read_text())
            sent_ids += data["ids"]
            send_start = min(send_start, data["started"])
            send_end = max(send_end, data["ended"])
    listened = json.loads((tmp / "listener.json").read_text())
    polled = json.loads((tmp / "poller.json").read_text())
    events, rows = listened["final"], polled["rows"]

    both = [task_id for task_id in sent_ids if task_id in events and task_id in rows]
    recorded = sum(1 for task_id in sent_ids if task_id in rows)
    lags = [rows[task_id] - events[task_id] for task_id in both]
    finals = sorted(events[task_id] for task_id in sent_ids if task_id in events)
    window = finals[-1] - finals[0] if len(finals) > 1 else math.nan
    rate = (len(finals) - 1) / window if window and window > 0 else math.nan
    send_rate = len(sent_ids) / (send_end - send_start) if send_end > send_start else math.nan

    _say(
        f"  sent {len(sent_ids)} tasks in {send_end - send_start:.1f} s ({send_rate:.0f}/s); "
        f"final events heard {len(finals)}, over {window:.1f} s: worker {rate:.0f} tasks/s"
    )
    if finals and send_end:
        _say(f"  the last task finished {finals[-1] - send_end:.1f} s after the last was sent "
             f"(a backlog: the worker ran at its full rate)"
             if finals[-1] - send_end > 1 else
             f"  the last task finished {finals[-1] - send_end:.1f} s after the last was sent "
             f"(no backlog: the senders limited the worker)")  # fmt: skip
    late = [lag for lag in lags if lag < 0]
    if late:
        _say(
            f"  {len(late)} rows were seen before the listener heard their final event "
            f"(by up to {-min(late):.2f} s): the listener lagged the camera"
        )
    if polled["missed_by_range"]:
        _say(
            f"  the poller's range missed {polled['missed_by_range']} rows (lag unknown: "
            "counted at the end)"
        )
    _say(
        f"  poller: {polled['polls']} polls, {polled['rows_read'] / max(1, polled['polls']):.0f}"
        f" rows and {1000 * polled['query_seconds'] / max(1, polled['polls']):.1f} ms a poll"
    )

    shots = [(when, n) for when, n in camera_shots(camera.log)]
    busy_shots = [(when, n) for when, n in shots if finals and finals[0] - 1 <= when]
    if busy_shots:
        counts = [n for _, n in busy_shots]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(busy_shots)]
        gap_text = (f", every {statistics.median(gaps):.2f} s (median; max {max(gaps):.2f} s: "
                    f"about {max(0.0, statistics.median(gaps) - args.frequency):.2f} s to "
                    "collect and write a shot)") if gaps else ""  # fmt: skip
        _say(
            f"  camera: {len(busy_shots)} shots wrote {sum(counts)} task rows "
            f"(some twice), {statistics.mean(counts):.0f} a shot (max {max(counts)}){gap_text}"
        )
    else:
        _say("  camera: no 'Shot: wrote N tasks' lines in its log")
    errors = [line for line in camera.log.read_text(errors="replace").splitlines()
              if " ERROR]" in line or " WARNING]" in line]  # fmt: skip
    if errors:
        _say(f"  camera: {len(errors)} warnings or errors, first: {errors[0][:200]}")

    if total > 0 and cpu1:
        seconds = total / cpu_count() / os.sysconf("SC_CLK_TCK")
        used = ", ".join(
            f"{name} {(cpu1[name] - cpu0.get(name, 0.0)) / seconds:.2f}"
            for name in ("worker", "camera", "listener", "poller")
            if name in cpu1
        )
        _say(
            f"  CPU over {seconds:.0f} s: machine {100 * busy / total:.0f}% busy "
            f"({cpu_count()} CPUs); cores used: {used}"
        )

    label = "sqlite" if database == "sqlite" else "postgresql"
    median, p95, worst = spread(lags)
    line = (f"{label:<7} lag median {median:.1f} s  p95 {p95:.1f} s  max {worst:.1f} s  "
            f"({recorded}/{len(sent_ids)} tasks, worker {rate:.0f} tasks/s)")  # fmt: skip
    flower_line = None
    flower: list[float] | None = None
    if listened["flower"] is not None:
        flower = [listened["flower"][task_id] for task_id in sent_ids
                  if task_id in listened["flower"]]  # fmt: skip
        f_median, f_p95, f_worst = spread(flower)
        flower_line = (f"flower  lag median {f_median:.2f} s p95 {f_p95:.2f} s max "
                       f"{f_worst:.2f} s  (Flower's in-memory state, same events, "
                       f"{len(flower)} tasks)")  # fmt: skip
    return RunResult(database, len(sent_ids), recorded, lags, flower, rate, line, flower_line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=30_000, help="tasks to send (30000)")
    parser.add_argument("--senders", type=int, default=3, help="sender processes (3)")
    parser.add_argument("--frequency", type=float, default=1.0,
                        help="seconds between the camera's shots (1)")  # fmt: skip
    parser.add_argument("--database", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--sqlite-journal", choices=("wal", "delete"), default="wal",
                        help="SQLite's journal mode (wal)")  # fmt: skip
    parser.add_argument("--concurrency", type=int, default=cpu_count(),
                        help="worker processes (the CPUs)")  # fmt: skip
    parser.add_argument("--broker", default=DEFAULT_BROKER, help=f"({DEFAULT_BROKER})")
    parser.add_argument(
        "--pg-database",
        default="cm_lag",
        help="PostgreSQL database, dropped and created anew (cm_lag)",
    )
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument(
        "--stall",
        type=float,
        default=60.0,
        help="give up after this many seconds without progress (60)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs and the SQLite file")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.senders < 1 or args.frequency <= 0:
        parser.error("--tasks, --senders and --frequency must be positive")
    args.senders = min(args.senders, args.tasks)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0, or 1 when a task sent was not recorded."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ROLES:
        return ROLES[argv[0]](argv[1:])
    args = parse_args(argv)
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    results: list[RunResult] = []
    try:
        for database in databases:
            results.append(run_once(args, database))
    except KeyboardInterrupt:
        _say("ERROR: interrupted; every process it started is stopped.")
        return 1
    except (BenchmarkError, subprocess.CalledProcessError, OSError) as exc:
        _say(f"ERROR: {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)

    status = 0
    _say("")
    for result in results:
        _say(result.line)
        if result.flower_line:
            _say(result.flower_line)
    for result in results:
        if result.recorded < result.sent or result.sent < args.tasks:
            _say(
                f"ERROR: {result.database}: {result.recorded} of {args.tasks} tasks recorded "
                f"({result.sent} sent)."
            )
            status = 1
        elif result.lags and common.percentile(result.lags, 95) > TARGET_P95:
            _say(f"note: {result.database}: p95 above the {TARGET_P95:.0f} s target.")
    return status


if __name__ == "__main__":
    sys.exit(main())
