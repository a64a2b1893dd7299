"""What the benchmark scripts share: the event stream, the databases, Django, timing.

Not a benchmark itself: the benchmarks import it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import multiprocessing
import os
import queue
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT / "src", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(1, str(path))

#: Task names with the argument and result reprs they send, like a small project's tasks.
TASK_KINDS = (
    (
        "proj.tasks.add",
        lambda r: (f"({r.randrange(1000)}, {r.randrange(1000)})", "{}"),
        lambda r: str(r.randrange(2000)),
    ),
    (
        "proj.tasks.send_email",
        lambda r: (
            f"('user{r.randrange(10**6)}@example.com',)",
            f"{{'template': 'welcome', 'lang': 'en', 'campaign_id': {r.randrange(10**5)}}}",
        ),
        lambda r: (
            f"{{'status': 'sent', 'message_id': '<{r.getrandbits(64):x}@mail.example.com>'}}"
        ),
    ),
    (
        "proj.tasks.resize_image",
        lambda r: (
            f"('s3://bucket/uploads/{r.getrandbits(64):016x}.jpg', (800, 600))",
            "{'quality': 85}",
        ),
        lambda r: f"'s3://bucket/thumbs/{r.getrandbits(64):016x}.jpg'",
    ),
    (
        "proj.tasks.sync_account",
        lambda r: (f"({r.randrange(10**6)},)", "{'full': False}"),
        lambda r: "None",
    ),
)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/.venv/lib/python3.12/site-packages/celery/app/trace.py", line 453,'
    " in trace_task\n"
    "    R = retval = fun(*args, **kwargs)\n"
    '  File "/app/.venv/lib/python3.12/site-packages/celery/app/trace.py", line 736,'
    " in __protected_call__\n"
    "    return self.run(*args, **kwargs)\n"
    '  File "/app/proj/tasks.py", line 88, in sync_account\n'
    "    account = client.fetch(account_id, timeout=10)\n"
    '  File "/app/proj/client.py", line 41, in fetch\n'
    "    raise ValueError(f'invalid account {account_id}')\n"
)


class Stream:
    """A synthetic event stream of a busy cluster, built lazily and deterministically.

    ``n_tasks`` tasks spread over ``workers`` workers, each of which reserves up to
    ``concurrency * prefetch`` tasks and runs ``concurrency`` at once, so many tasks are in
    flight together and their events interleave. Every task is received, started, and
    succeeds (or fails, ``fail_rate`` of them); each worker sends a heartbeat every
    ``heartbeat_every`` of its events, and comes online first. Timestamps advance by about
    ``step`` seconds an event and end near now, or are the wall clock with ``wall``.
    Iterating notes each task's final state in ``outcomes`` (unless ``record`` is false).
    """

    def __init__(
        self,
        n_tasks: int,
        *,
        workers: int = 4,
        concurrency: int = 4,
        prefetch: int = 4,
        fail_rate: float = 0.05,
        heartbeat_every: int = 200,
        seed: int = 1,
        step: float = 0.0005,
        start: float | None = None,
        wall: bool = False,
        record: bool = True,
    ) -> None:
        self.n_tasks = n_tasks
        self.workers = workers
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.fail_rate = fail_rate
        self.heartbeat_every = heartbeat_every
        self.seed = seed
        self.step = step
        self.wall = wall
        self.record = record
        if start is None:
            start = time.time() - self.expected_events() * step - 1.0
        self.start = start
        self.outcomes: dict[str, str] = {}

    def expected_events(self) -> int:
        """About how many events the stream has."""
        return self.workers + 3 * self.n_tasks + (3 * self.n_tasks) // self.heartbeat_every

    def hostnames(self) -> list[str]:
        return [f"celery@worker{i + 1}.example.com" for i in range(self.workers)]

    def params(self) -> dict[str, Any]:
        """Keyword arguments that make the same stream again (in another process)."""
        names = ("workers", "concurrency", "prefetch", "fail_rate", "heartbeat_every", "seed")
        return {
            "n_tasks": self.n_tasks,
            "step": self.step,
            "start": self.start,
            "wall": self.wall,
            **{name: getattr(self, name) for name in names},
        }

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(self.seed)
        clock = 1000
        now = self.start
        step, wall = self.step, self.wall
        record, outcomes = self.record, self.outcomes
        cap, concurrency = self.concurrency * self.prefetch, self.concurrency
        hosts = [
            {
                "hostname": h,
                "pid": 1000 + i,
                "reserved": deque(),
                "running": [],
                "events": 0,
                "processed": 0,
            }
            for i, h in enumerate(self.hostnames())
        ]

        def common(type_: str, host: dict) -> dict:
            nonlocal clock, now
            clock += 1
            now = time.time() if wall else now + step * (0.5 + rng.random())
            return {
                "type": type_,
                "hostname": host["hostname"],
                "timestamp": now,
                "local_received": now + 0.0003,
                "clock": clock,
                "utcoffset": 0,
                "pid": host["pid"],
            }

        def worker_event(kind: str, host: dict) -> dict:
            return {
                **common(f"worker-{kind}", host),
                "freq": 2.0,
                "sw_ident": "py-celery",
                "sw_ver": "5.7.0",
                "sw_sys": "Linux",
                "active": len(host["running"]),
                "processed": host["processed"],
                "loadavg": [round(rng.uniform(0, 4), 2) for _ in range(3)],
            }

        for host in hosts:
            yield worker_event("online", host)
        to_send = self.n_tasks
        in_flight = 0
        while to_send or in_flight:
            host = hosts[rng.randrange(len(hosts))]
            reserved, running = host["reserved"], host["running"]
            actions = []
            if to_send and len(reserved) + len(running) < cap:
                actions.append(0)
            if reserved and len(running) < concurrency:
                actions.append(1)
            if running:
                actions.append(2)
            if not actions:
                continue
            action = rng.choice(actions)
            if action == 0:
                task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                name, make_args, make_result = TASK_KINDS[rng.randrange(len(TASK_KINDS))]
                args, kwargs = make_args(rng)
                event = {
                    **common("task-received", host),
                    "uuid": task_id,
                    "name": name,
                    "args": args,
                    "kwargs": kwargs,
                    "root_id": task_id,
                    "parent_id": None,
                    "retries": 0,
                    "eta": None,
                    "expires": None,
                }
                reserved.append((task_id, make_result, now))
                to_send -= 1
                in_flight += 1
            elif action == 1:
                item = reserved.popleft()
                running.append(item)
                event = {**common("task-started", host), "uuid": item[0]}
            else:
                task_id, make_result, received = running.pop(rng.randrange(len(running)))
                in_flight -= 1
                host["processed"] += 1
                if rng.random() < self.fail_rate:
                    event = {
                        **common("task-failed", host),
                        "uuid": task_id,
                        "exception": f"ValueError('invalid account {rng.randrange(10**6)}')",
                        "traceback": TRACEBACK,
                    }
                    state = "FAILURE"
                else:
                    event = {
                        **common("task-succeeded", host),
                        "uuid": task_id,
                        "result": make_result(rng),
                        "runtime": round(now - received, 6),
                    }
                    state = "SUCCESS"
                if record:
                    outcomes[task_id] = state
            yield event
            host["events"] += 1
            if host["events"] >= self.heartbeat_every:
                host["events"] = 0
                yield worker_event("heartbeat", host)


def queued_events(
    n_tasks: int, started_fraction: float = 0.2, workers: int = 4, seed: int = 2
) -> Iterator[dict]:
    """Events of ``n_tasks`` unfinished tasks: each received, ``started_fraction`` started."""
    rng = random.Random(seed)
    hostnames = Stream(0, workers=workers).hostnames()
    now = time.time() - 2 * n_tasks * 0.0001 - 1.0
    clock = 0
    for _ in range(n_tasks):
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        hostname = hostnames[rng.randrange(workers)]
        name, make_args, _result = TASK_KINDS[rng.randrange(len(TASK_KINDS))]
        args, kwargs = make_args(rng)
        kinds = ("received", "started") if rng.random() < started_fraction else ("received",)
        for kind in kinds:
            now += 0.0001
            clock += 1
            event = {
                "type": f"task-{kind}",
                "hostname": hostname,
                "timestamp": now,
                "local_received": now + 0.0003,
                "clock": clock,
                "utcoffset": 0,
                "pid": 1000,
                "uuid": task_id,
            }
            if kind == "received":
                event.update(
                    name=name,
                    args=args,
                    kwargs=kwargs,
                    root_id=task_id,
                    parent_id=None,
                    retries=0,
                    eta=None,
                    expires=None,
                )
            yield event


# -- Django and the databases ----------------------------------------------------------------

BACKENDS = ("sqlite", "postgresql", "mariadb")
PG = {
    "HOST": os.environ.get("PGHOST", "127.0.0.1"),
    "PORT": os.environ.get("PGPORT", "5439"),
    "USER": os.environ.get("PGUSER", "postgres"),
    "PASSWORD": os.environ.get("PGPASSWORD", ""),
}
MARIADB = {
    "HOST": os.environ.get("MARIADB_HOST", "127.0.0.1"),
    "PORT": os.environ.get("MARIADB_PORT", "3319"),
    "USER": os.environ.get("MARIADB_USER", "root"),
    "PASSWORD": os.environ.get("MARIADB_PASSWORD", ""),
}


SQLITE_JOURNALS = ("wal", "delete")


def sqlite_options(journal: str) -> dict[str, Any]:
    """The OPTIONS of a SQLite database with ``journal`` (see ``--sqlite-journal``)."""
    import django

    # Several processes may write the file at once: wait for the lock.
    options: dict[str, Any] = {"timeout": 30}
    if journal == "wal":
        if django.VERSION < (5, 1):
            raise SystemExit(
                "--sqlite-journal wal needs Django 5.1 or later: use --sqlite-journal delete"
            )
        options["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL"
        options["transaction_mode"] = "IMMEDIATE"
    return options


def journal_note(backend: str, journal: str) -> str:
    """What a header line says of SQLite's journal (nothing on the other databases)."""
    if backend != "sqlite":
        return ""
    if journal == "wal":
        return "; SQLite in WAL mode, synchronous=NORMAL"
    return "; SQLite's rollback journal, synchronous=FULL"


def add_database_options(parser: argparse.ArgumentParser, allow_all: bool = True) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--sqlite",
        dest="backend",
        action="store_const",
        const="sqlite",
        help="a SQLite file in a temporary directory (the default)",
    )
    group.add_argument(
        "--postgresql",
        dest="backend",
        action="store_const",
        const="postgresql",
        help="PostgreSQL at PGHOST:PGPORT (127.0.0.1:5439), user PGUSER",
    )
    group.add_argument(
        "--mariadb",
        dest="backend",
        action="store_const",
        const="mariadb",
        help="MariaDB/MySQL at MARIADB_HOST:MARIADB_PORT (127.0.0.1:3319)",
    )
    if allow_all:
        group.add_argument(
            "--all",
            dest="backend",
            action="store_const",
            const="all",
            help="each of the databases that is available, one after the other",
        )
    parser.set_defaults(backend="sqlite")
    parser.add_argument(
        "--sqlite-journal",
        choices=SQLITE_JOURNALS,
        default="delete",
        help="SQLite's journal: delete (SQLite's own default, a rollback journal synced at "
        "every commit; the default here) or wal (with synchronous=NORMAL and BEGIN "
        "IMMEDIATE, as the README advises for the camera's database)",
    )


def unavailable(backend: str) -> str | None:
    """Why ``backend`` cannot be used here, or None when it can."""
    if backend == "postgresql":
        try:
            import psycopg
        except ImportError:
            return "psycopg is not installed (pip install 'psycopg[binary]')"
        try:
            psycopg.connect(dbname="postgres", connect_timeout=3, **_pg_params()).close()
        except psycopg.Error as exc:
            return f"no PostgreSQL server at {PG['HOST']}:{PG['PORT']} ({str(exc).strip()})"
    elif backend == "mariadb":
        try:
            import MySQLdb
        except ImportError:
            return "the mysqlclient driver is not installed (pip install mysqlclient)"
        try:
            MySQLdb.connect(connect_timeout=3, **_mariadb_params()).close()
        except MySQLdb.Error as exc:
            return f"no MariaDB server at {MARIADB['HOST']}:{MARIADB['PORT']} ({exc})"
    return None


def skipped(backend: str, problem: str | None = None) -> bool:
    """Whether ``backend`` cannot be used here (or ``problem`` stands in the way); if so,
    say why, and print the summary line of a skipped run."""
    reason = problem or unavailable(backend)
    if reason:
        print(f"{backend}: skipped: {reason}")
        print(f"summary: {backend}: skipped")
    return reason is not None


def _pg_params() -> dict[str, Any]:
    params = {"host": PG["HOST"], "port": PG["PORT"], "user": PG["USER"]}
    if PG["PASSWORD"]:
        params["password"] = PG["PASSWORD"]
    return params


def _mariadb_params() -> dict[str, Any]:
    return {
        "host": MARIADB["HOST"],
        "port": int(MARIADB["PORT"]),
        "user": MARIADB["USER"],
        "password": MARIADB["PASSWORD"],
    }


def configure_django(database: dict[str, Any]) -> None:
    """Set Django up with ``database`` as the default database."""
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django_celery_monitor",
        ],
        DATABASES={"default": database},
        USE_TZ=True,
        TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()


def celery_app() -> Any:
    """A Celery app for the cameras: no broker is ever contacted."""
    from celery import Celery

    return Celery("bench", set_as_current=False)


class Database:
    """A database of one backend that each run gets empty and migrated.

    The schema is migrated once into a template (a SQLite file, a PostgreSQL template
    database); each :meth:`fresh` copies it. MariaDB has no templates: its tables are
    emptied (TRUNCATE) instead.
    """

    def __init__(self, backend: str, sqlite_journal: str = "delete") -> None:
        exit_on_sigterm()
        self.backend = backend
        self.tmp = tempfile.mkdtemp(prefix="cm_bench_")
        self.prefix = f"cm_bench_{os.getpid()}"
        self.runs = 0
        if backend == "sqlite":
            self.template = f"{self.tmp}/template.sqlite3"
            self.settings = {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": self.template,
                "OPTIONS": sqlite_options(sqlite_journal),
            }
        elif backend == "postgresql":
            self.template = f"{self.prefix}_template"
            self.settings = {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": self.template,
                **PG,
            }
        elif backend == "mariadb":
            self.template = f"{self.prefix}"
            self.settings = {
                "ENGINE": "django.db.backends.mysql",
                "NAME": self.template,
                **MARIADB,
                "OPTIONS": {"charset": "utf8mb4"},
            }
        else:
            raise ValueError(backend)

    def setup(self) -> None:
        """Configure Django on this database and migrate the template."""
        from django.core.management import call_command

        if self.backend == "postgresql":
            self._pg(
                f'DROP DATABASE IF EXISTS "{self.template}"', f'CREATE DATABASE "{self.template}"'
            )
        elif self.backend == "mariadb":
            self._mariadb(
                f"DROP DATABASE IF EXISTS `{self.template}`",
                f"CREATE DATABASE `{self.template}` CHARACTER SET utf8mb4",
            )
        configure_django(self.settings)
        call_command("migrate", verbosity=0)
        close_connections()

    def fresh(self) -> dict[str, Any]:
        """Point Django at an empty, migrated database; return its settings."""
        from django.db import connections

        close_connections()
        self.runs += 1
        settings = connections["default"].settings_dict
        if self.backend == "sqlite":
            previous = settings["NAME"]
            name = f"{self.tmp}/run-{self.runs}.sqlite3"
            shutil.copyfile(self.template, name)
            if previous != self.template:
                for suffix in ("", "-journal", "-wal", "-shm"):
                    Path(previous + suffix).unlink(missing_ok=True)
        elif self.backend == "postgresql":
            name = f"{self.prefix}_run"
            self._pg(
                f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
                f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"',
            )
        else:
            name = self.template
            self._mariadb(
                f"USE `{name}`",
                "SET FOREIGN_KEY_CHECKS = 0",
                "TRUNCATE TABLE celery_monitor_taskstate",
                "TRUNCATE TABLE celery_monitor_workerstate",
                "SET FOREIGN_KEY_CHECKS = 1",
            )
        settings["NAME"] = name
        self.settings = {**self.settings, "NAME": name}
        return dict(settings)

    def teardown(self) -> None:
        close_connections()
        try:
            if self.backend == "postgresql":
                self._pg(
                    f'DROP DATABASE IF EXISTS "{self.prefix}_run" WITH (FORCE)',
                    f'DROP DATABASE IF EXISTS "{self.template}" WITH (FORCE)',
                )
            elif self.backend == "mariadb":
                self._mariadb(f"DROP DATABASE IF EXISTS `{self.template}`")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _pg(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(dbname="postgres", autocommit=True, **_pg_params()) as conn:
            for statement in statements:
                conn.execute(statement)

    def _mariadb(self, *statements: str) -> None:
        import MySQLdb

        conn = MySQLdb.connect(**_mariadb_params())
        try:
            cursor = conn.cursor()
            for statement in statements:
                cursor.execute(statement)
            conn.commit()
        finally:
            conn.close()


def exit_on_sigterm() -> None:
    """Make SIGTERM end this process as Ctrl-C does, by an exception: the ``finally`` of a
    benchmark then drops the databases and the files it made (``kill``, ``timeout`` and
    service managers send SIGTERM, and a process ended by it leaves them behind).

    Only when nothing else handles the signal, on the main thread (where Python runs
    handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_for_signal)


def _exit_for_signal(signum: int, frame: Any) -> None:
    sys.exit(128 + signum)


def close_connections() -> None:
    from django.db import connections

    for connection in connections.all(initialized_only=True):
        connection.close()


SERVERS = ("postgres", "mariadbd", "mysqld")


def server_cpu_seconds() -> float:
    """The CPU time the database servers running here (PostgreSQL's processes, MariaDB's or
    MySQL's) have used so far: what a camera's statements cost them, read from ``/proc``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        name, _, rest = text.partition(" (")[2].rpartition(") ")
        if name in SERVERS:
            # utime, stime, and cutime, cstime: PostgreSQL's backend of a connection ends
            # when it closes, and its CPU time is then its parent's (fields 14 to 17).
            total += sum(int(field) for field in rest.split()[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def check_rows(outcomes: dict[str, str], hostnames: list[str]) -> list[str]:
    """What the database lacks: tasks missing or not in their final state, workers missing."""
    from django_celery_monitor.models import TaskState, WorkerState

    stored = dict(TaskState.objects.values_list("task_id", "state"))
    problems = []
    missing = [task_id for task_id in outcomes if task_id not in stored]
    wrong = [
        (task_id, stored[task_id], state)
        for task_id, state in outcomes.items()
        if task_id in stored and stored[task_id] != state
    ]
    if missing:
        problems.append(f"{len(missing)} of {len(outcomes)} tasks missing, e.g. {missing[0]}")
    if wrong:
        task_id, got, want = wrong[0]
        problems.append(
            f"{len(wrong)} tasks not in their final state, e.g. {task_id}: {got} (not {want})"
        )
    extra = len(stored) - len(outcomes) + len(missing)
    if extra:
        problems.append(f"{extra} rows of unknown tasks")
    workers = set(WorkerState.objects.values_list("hostname", flat=True))
    if not set(hostnames) <= workers:
        problems.append(f"workers missing: {sorted(set(hostnames) - workers)}")
    return problems


# -- timing and printing ---------------------------------------------------------------------


def timed(fun: Callable[[], Any]) -> float:
    """Seconds ``fun`` takes, after a full garbage collection.

    What is alive when it starts (the prebuilt event stream, which no real process holds,
    and the harness) is kept out of the collector's way while it runs, whoever is timed.
    """
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        fun()
        return time.perf_counter() - start
    finally:
        gc.unfreeze()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (nearest rank: a value that is among them)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:,.1f}x"


def rss_mb() -> tuple[float, float]:
    """This process's resident memory now and at its peak, in MB (Linux /proc)."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))


def make_camera(state: Any, app: Any, shard: tuple[int, int] | None = None, **kwargs: Any) -> Any:
    """A camera on ``state``; raises TypeError when this version takes no ``shard``."""
    from django_celery_monitor.camera import Camera

    if shard is not None:
        kwargs["shard"] = shard
    return Camera(state, freq=1.0, app=app, **kwargs)


def shards_supported() -> bool:
    from celery.events.state import State

    try:
        make_camera(State(), celery_app(), shard=(1, 2))
    except TypeError:
        return False
    return True


@contextlib.contextmanager
def camera_process() -> Iterator[None]:
    """The process settings ``manage.py celery_monitor`` makes (its garbage collector's
    threshold), for as long as a camera runs here; then the defaults again, for the others."""
    try:
        from django_celery_monitor.runner import tune_garbage_collector
    except ImportError:  # a version without it
        yield
        return
    previous = tune_garbage_collector()
    try:
        yield
    finally:
        gc.set_threshold(*previous)


def feed_with_shots(
    handle: Callable[[dict], Any],
    capture: Callable[[], Any],
    events: list[dict],
    shot: int,
    inline: bool = False,
    due: Collection[int] | None = None,
) -> None:
    """Feed ``events`` to ``handle`` with a shot (``capture``) every ``shot`` events and one
    at the end; return when the last shot is written. With ``due``, the shots come after the
    events of those counts instead (1 for the first event).

    The shots run on a thread of their own, as a camera's timer takes them while its
    receiver goes on handling events: a shot that comes due while the previous one is still
    running is taken when that one ends, as the timer would take it. A camera that holds the
    state's lock while it writes (1.1.2's) makes the events wait for its shots; one that
    writes after releasing it does not. ``inline`` takes every shot on the feeding thread
    instead, with the events waiting for each.
    """
    if due is None:
        due = set(range(shot, len(events) + 1, shot))
    if inline:
        for count, event in enumerate(events, 1):
            handle(event)
            if count in due:
                capture()
        capture()
        return
    wanted, last = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def shooter() -> None:
        try:
            while True:
                wanted.wait()
                wanted.clear()
                ending = last.is_set()
                capture()
                if ending:
                    return
        except BaseException as exc:  # reported by the feeding thread
            failed.append(exc)

    thread = threading.Thread(target=shooter, name="shots", daemon=True)
    thread.start()
    for count, event in enumerate(events, 1):
        handle(event)
        if count in due:
            wanted.set()
            if failed:
                break
    last.set()
    wanted.set()
    thread.join()
    if failed:
        raise failed[0]


def feed_camera(
    camera: Any,
    events: list[dict],
    shot: int,
    inline: bool = False,
    due: Collection[int] | None = None,
) -> None:
    """Feed ``events`` to the camera's state with a forced shot every ``shot`` events (or
    after those ``due``: :func:`feed_with_shots`), in a process set up as the camera's
    command sets its own (:func:`camera_process`)."""
    with camera_process():
        feed_with_shots(
            camera.state.event, lambda: camera.capture(force=True), events, shot, inline, due
        )


def _timed_process(
    prepare: Callable[[], Callable[[], Any]],
    ready,
    go,
    results,
    finish: Callable[[], Any] | None = None,
) -> None:
    """The body of a benchmark process: ``prepare()`` returns the work; once it is ready,
    wait for ``go``, do the work, report its wall and CPU time and what it returned (or the
    error) to the parent, then ``finish()`` untimed."""
    try:
        work = prepare()
        # As timed() does: the prebuilt stream stays out of the collector's way.
        gc.collect()
        gc.freeze()
        ready.put(os.getpid())
        go.wait()
        start, cpu = time.perf_counter(), time.process_time()
        returned = work()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        results.put(("ok", wall, None, cpu, returned))
        if finish is not None:
            finish()
    except BaseException as exc:  # reported to the parent, which prints it
        ready.put(os.getpid())
        results.put(("error", 0.0, f"{type(exc).__name__}: {exc}", 0.0, None))


def spawn_and_time(
    target: Any, arguments: list[tuple], started: Callable[[], Any] | None = None
) -> tuple[float, float, list[Any]]:
    """Start a process per ``arguments``; once all are ready, let them go at once and return
    the wall time until the last one is done, the CPU time of all of them, and what each
    one's work returned (in the order they ended). ``target(*args, ready, go, results)``,
    made of :func:`_timed_process`. ``started()`` runs here once they are let go (say, to
    feed them)."""
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    # Daemons: the parent stopped (say, by SIGTERM) does not wait for them on its way out;
    # they end with it.
    processes = [
        context.Process(target=target, args=(*args, ready, go, results), daemon=True)
        for args in arguments
    ]
    for process in processes:
        process.start()
    waiting = len(processes)
    while waiting:
        try:
            ready.get(timeout=1)
            waiting -= 1
        except queue.Empty:
            if any(p.exitcode not in (None, 0) for p in processes):
                print("ERROR: a benchmark process died while starting", flush=True)
                sys.exit(1)
    start = time.perf_counter()
    go.set()
    if started is not None:
        try:
            started()
        except BaseException:
            for process in processes:  # they would wait for what never comes
                process.terminate()
            raise
    outcomes = [results.get(timeout=3600) for _ in processes]
    seconds = time.perf_counter() - start
    for process in processes:
        process.join()
    errors = [error for status, _, error, _, _ in outcomes if status != "ok"]
    if errors:
        print(f"ERROR: a benchmark process failed: {errors[0]}", flush=True)
        sys.exit(1)
    return seconds, sum(cpu for _, _, _, cpu, _ in outcomes), [r for *_, r in outcomes]


def camera_processes(
    db: Database,
    stream: Stream,
    count: int,
    target: Any,
    *args: Any,
    started: Callable[[], Any] | None = None,
    shards: bool = True,
) -> tuple[float, float, float, list[Any]]:
    """``count`` camera processes (``target``: the shards 1/count to count/count, or one
    camera without a shard; without ``shards``, cameras that are not shards) on a fresh
    database, each fed the whole stream; once the rows are checked, the wall time, the CPU
    time of the processes, that of the database servers running here meanwhile, and what
    each one's work returned. ``target(database, stream_params, shard, *args, ready, go,
    results)``; ``started`` as for :func:`spawn_and_time`."""
    database = db.fresh()
    close_connections()
    parts = [(k, count) if count > 1 and shards else None for k in range(1, count + 1)]
    server = server_cpu_seconds()
    seconds, cpu, returned = spawn_and_time(
        target, [(database, stream.params(), part, *args) for part in parts], started
    )
    # The server's CPU time also counts the few statements of the processes' start and end.
    server = server_cpu_seconds() - server
    problems = check_rows(stream.outcomes, stream.hostnames())
    if problems:
        print(f"ERROR: {count} cameras did not record the stream: {'; '.join(problems)}")
        sys.exit(1)
    return seconds, cpu, server, returned


def _prepared_camera(database, stream_params, shard) -> tuple[Any, list[dict]]:
    """In a benchmark process: Django set up on ``database``, a camera (of ``shard``) with
    its connection open, and the stream it will be fed."""
    from celery.events.state import State

    configure_django(database)
    events = list(Stream(**stream_params, record=False))
    camera = make_camera(State(), celery_app(), shard=shard)
    from django.db import connection

    connection.ensure_connection()
    return camera, events


def shard_process(database, stream_params, shard, shot, inline, ready, go, results) -> None:
    """One camera process: build the stream, wait for ``go``, feed it, report the time."""

    def prepare() -> Callable[[], None]:
        camera, events = _prepared_camera(database, stream_params, shard)
        return lambda: feed_camera(camera, events, shot, inline)

    _timed_process(prepare, ready, go, results, finish=close_connections)


def split_process(database, stream_params, shard, shot, inline, ready, go, results) -> None:
    """One camera of a split that costs the cameras nothing: as :func:`shard_process`, but
    fed only the events its shard keeps (its own tasks' and every worker's), picked out
    before the clock starts and not checked again, with its shots after the same events of
    the stream."""

    def prepare() -> Callable[[], None]:
        camera, events = _prepared_camera(database, stream_params, shard)
        # The shard's filter comes first in the state's handler: it has nothing to drop.
        if camera.state.event.__name__ != "in_shard":
            raise RuntimeError("the camera's handler does not begin with its shard's filter")
        camera.state.event = camera.state.event.__wrapped__
        keeps, own, due = camera.shard.keeps, [], set()
        for position, event in enumerate(events, 1):
            if keeps(event):
                own.append(event)
            if position % shot == 0 and own:
                due.add(len(own))
        return lambda: feed_camera(camera, own, shot, inline, due)

    _timed_process(prepare, ready, go, results, finish=close_connections)


def feed_at_rate(camera: Any, events: list[dict], rate: int, every: float) -> dict[str, float]:
    """Feed ``events`` to the camera at ``rate`` events a second (in ticks of 10 ms), while a
    thread of its own takes a shot every ``every`` seconds (as the camera's timer does:
    the next one ``every`` seconds after the last one began, or when it ends if it took
    longer), and one more after the last event. Returns how long the events took to feed,
    how far behind its clock the feed still was at its closest in the last ``every``
    seconds of the stream (0 when it caught up at some tick: a shot's pause makes the
    events wait, and a camera that keeps up then catches up; one that cannot falls further
    behind), the time from the last event until its rows were written, the longest shot
    (seconds), and the part of the feeding time its shots took (1: one shot right after
    the other, each longer than the period: a camera whose shots cannot keep to their
    period writes ever larger ones)."""
    shots: list[float] = []
    last, failed = threading.Event(), []

    def shooter() -> None:
        try:
            while True:
                began = time.perf_counter()
                ending = last.is_set()
                camera.capture(force=True)
                shots.append(time.perf_counter() - began)
                if ending:
                    return
                last.wait(max(0.0, every - shots[-1]))
        except BaseException as exc:  # reported by the feeding thread
            failed.append(exc)

    handle, per_tick = camera.state.event, max(1, rate // 100)
    last_period = len(events) / rate - every
    behind = math.inf
    with camera_process():
        start = time.perf_counter()
        thread = threading.Thread(target=shooter, name="shots", daemon=True)
        thread.start()
        for index in range(0, len(events), per_tick):
            late = time.perf_counter() - (start + index / rate)
            if late < 0:
                time.sleep(-late)
            if index / rate >= last_period:
                behind = min(behind, max(0.0, late))
            for event in events[index : index + per_tick]:
                handle(event)
            if failed:
                break
        # The last tick's 10 ms: events fed in time took as long as their clock.
        time.sleep(max(0.0, start + len(events) / rate - time.perf_counter()))
        fed = time.perf_counter() - start
        last.set()
        thread.join()
    if failed:
        raise failed[0]
    return {
        "fed": fed,
        "behind": behind,
        "after": time.perf_counter() - start - fed,
        "longest": max(shots),
        # Every shot but the one after the last event (the one under way then counts whole).
        "busy": sum(shots[:-1]) / fed,
    }


def paced_process(database, stream_params, shard, rate, every, ready, go, results) -> None:
    """One camera process fed at ``rate`` events a second (:func:`feed_at_rate`)."""

    def prepare() -> Callable[[], dict[str, float]]:
        camera, events = _prepared_camera(database, stream_params, shard)
        return lambda: feed_at_rate(camera, events, rate, every)

    _timed_process(prepare, ready, go, results, finish=close_connections)


def state_process(stream_params, ready, go, results, passes: int = 3) -> None:
    """One process of independent CPU-bound work: the whole stream into a bare State,
    ``passes`` times (a new State each time), about as long as a camera takes over it."""

    def prepare() -> Callable[[], None]:
        from celery.events.state import State

        events = list(Stream(**stream_params, record=False))

        def work() -> None:
            for _ in range(passes):
                state = State()
                for event in events:
                    state.event(event)

        return work

    _timed_process(prepare, ready, go, results)
