"""How fast the admin's pages answer with a million tasks, and what purging them costs.

Seeds ``--rows`` tasks (default 1,000,000: about 20 task names, 10 workers, states mostly
SUCCESS with some FAILURE, RETRY, STARTED, RECEIVED, REVOKED and a custom PROGRESS, over
7 days), runs ANALYZE, then loads each admin page once to warm up and 5 times more as a
logged-in superuser (Django's test client), and prints the median against the 300 ms
target. Then it expires every row and runs the camera's cleanup (expire by state groups,
then purge) while another thread writes a new task every 0.1 s through the camera's batch
writer, and prints the longest single SQL statement of the cleanup (target: under 1 s),
the writer's longest stall and the total time.

    .venv/bin/python benchmarks/admin.py                     # SQLite in a temp dir
    .venv/bin/python benchmarks/admin.py --postgresql        # PGHOST/PGPORT/PGUSER
    .venv/bin/python benchmarks/admin.py --all --rows 50000  # both, a quick run
    .venv/bin/python benchmarks/admin.py --rows 50000 --explain   # the SQL of each page
    .venv/bin/python benchmarks/admin.py --workers 20000 --no-purge  # many workers
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402

#: The time one page may take (median of the loads), and one statement of the purge.
PAGE_TARGET_MS = 300.0
STATEMENT_TARGET_S = 1.0
LOADS = 5
WRITE_EVERY = 0.1

TASK_NAMES = [
    ("shop.orders.tasks.process_order", 20),
    ("shop.orders.tasks.send_confirmation_email", 18),
    ("shop.payments.tasks.capture_payment", 10),
    ("shop.payments.tasks.refund_payment", 2),
    ("shop.inventory.tasks.reserve_stock", 10),
    ("shop.inventory.tasks.release_stock", 3),
    ("shop.search.tasks.reindex_product", 8),
    ("shop.search.tasks.rebuild_index", 1),
    ("shop.notifications.tasks.send_push", 6),
    ("shop.notifications.tasks.send_sms", 3),
    ("shop.reports.tasks.generate_daily_report", 1),
    ("shop.reports.tasks.export_csv", 1),
    ("shop.images.tasks.make_thumbnails", 5),
    ("shop.images.tasks.optimize_image", 3),
    ("shop.accounts.tasks.sync_crm_contact", 3),
    ("shop.accounts.tasks.cleanup_sessions", 1),
    ("shop.shipping.tasks.request_label", 2),
    ("shop.shipping.tasks.track_parcel", 2),
    ("celery.chord_unlock", 1),
    ("celery.backend_cleanup", 1),
]
WORKERS = [f"celery@worker-{n}.prod.shop.internal" for n in range(1, 11)]
STATES = [
    ("SUCCESS", 880),
    ("FAILURE", 40),
    ("RETRY", 20),
    ("STARTED", 20),
    ("RECEIVED", 20),
    ("REVOKED", 10),
    ("PROGRESS", 10),
]
COLUMNS = (
    "state", "task_id", "name", "tstamp", "args", "kwargs", "eta", "expires", "result",
    "traceback", "runtime", "retries", "worker_id", "hidden", "received", "started",
    "exception", "parent_id", "root_id", "note", "lost",
)  # fmt: skip
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/venv/lib/python3.12/site-packages/celery/app/trace.py", line 453, '
    "in trace_task\n    R = retval = fun(*args, **kwargs)\n"
    '  File "/srv/app/venv/lib/python3.12/site-packages/celery/app/trace.py", line 736, '
    "in __protected_call__\n    return self.run(*args, **kwargs)\n"
    '  File "/srv/app/shop/payments/tasks.py", line 88, in {function}\n'
    "    response = client.post(url, json=payload, timeout=10)\n"
    '  File "/srv/app/shop/payments/client.py", line 41, in post\n'
    "    raise GatewayError(f'{{response.status_code}}: {{response.text[:200]}}')\n"
    "shop.payments.client.GatewayError: 502: upstream connect error or disconnect/reset "
    "before headers. reset reason: connection termination (order {order})\n"
)


# -- setting up ------------------------------------------------------------------------


def configure(backend: str, tmp: str, database: str) -> None:
    if backend == "postgresql":
        db = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": database,
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5439"),
        }
    else:
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": database or f"{tmp}/admin.sqlite3"}
    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-only",
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        TIME_ZONE="Europe/Berlin",
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django.contrib.staticfiles",
            "django_celery_monitor",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        ROOT_URLCONF="tests.urls",
        STATIC_URL="/static/",
        DATABASES={"default": db},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        CELERY_BROKER_URL="memory://",
    )
    django.setup()


def create_database(backend: str, keep: bool) -> None:
    """A new, empty database (PostgreSQL), migrated; an existing one is kept with ``keep``."""
    if backend == "postgresql" and not keep:
        import psycopg

        db = settings.DATABASES["default"]
        with psycopg.connect(
            dbname="postgres", user=db["USER"], password=db["PASSWORD"] or None,
            host=db["HOST"], port=db["PORT"], autocommit=True,
        ) as conn:  # fmt: skip
            conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}"')
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def generate_rows(n: int, worker_ids: list[int], now: datetime, seed: int = 1):
    """``n`` task rows in the order the camera would have written them (oldest first)."""
    rng = random.Random(seed)
    names = [name for name, _ in TASK_NAMES]
    name_weights = [weight for _, weight in TASK_NAMES]
    state_names = [state for state, _ in STATES]
    state_weights = [weight for _, weight in STATES]
    span = timedelta(days=7).total_seconds()
    start = now - timedelta(days=7)
    roots: list[str] = []
    chunk = 10_000
    for base in range(0, n, chunk):
        size = min(chunk, n - base)
        picked_names = rng.choices(names, name_weights, k=size)
        picked_states = rng.choices(state_names, state_weights, k=size)
        for offset in range(size):
            i = base + offset
            task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            name, state = picked_names[offset], picked_states[offset]
            function = name.rsplit(".", 1)[-1]
            tstamp = start + timedelta(seconds=span * i / n + rng.random())
            runtime = round(rng.lognormvariate(-1.5, 1.2), 6)
            received = tstamp - timedelta(seconds=runtime + rng.random() * 2)
            started = received + timedelta(seconds=rng.random() * 0.5)
            order = rng.randrange(10**6, 10**7)
            args = f"({order}, '{rng.choice(('web', 'api', 'batch', 'mobile'))}')"
            kwargs = (
                f"{{'customer_id': {rng.randrange(10**5, 10**6)}, 'currency': 'EUR', "
                f"'items': {[rng.randrange(1000, 9999) for _ in range(rng.randrange(1, 8))]}, "
                f"'priority': {rng.randrange(0, 10)}, 'request_id': '{uuid.UUID(int=rng.getrandbits(128), version=4)}'}}"  # noqa: E501
            )
            result = traceback = exception = None
            if state == "SUCCESS":
                result = (
                    f"{{'status': 'ok', 'order': {order}, 'duration_ms': {int(runtime * 1000)}, "
                    f"'processed': {rng.randrange(1, 500)}, 'etag': '{rng.getrandbits(64):016x}'}}"
                )
            elif state in ("FAILURE", "RETRY"):
                exception = f"GatewayError('502: upstream connect error (order {order})')"
                result = exception
                traceback = TRACEBACK.format(function=function, order=order)
            parent_id = root_id = None
            if roots and rng.random() < 0.1:  # a subtask of a recent workflow
                parent_id = root_id = rng.choice(roots)
            elif rng.random() < 0.02:  # a workflow starts
                root_id = task_id
                roots.append(task_id)
                del roots[:-200]
            unfinished = state in ("STARTED", "RECEIVED", "PROGRESS")
            yield (
                state,
                task_id,
                name,
                tstamp,
                args,
                kwargs,
                None,  # eta
                tstamp + timedelta(hours=1) if rng.random() < 0.05 else None,
                result,
                traceback,
                None if unfinished else runtime,
                rng.randrange(1, 4) if state == "RETRY" else 0,
                None if state == "RECEIVED" and rng.random() < 0.5 else rng.choice(worker_ids),
                False,
                received,
                None if state == "RECEIVED" else started,
                exception,
                parent_id,
                root_id,
                None,
                False,
            )


def seed(n: int) -> float:
    """Insert the workers and ``n`` tasks with the backend's fastest bulk insert."""
    from django.db import connection, transaction
    from django.utils import timezone

    from django_celery_monitor.models import TaskState, WorkerState

    started = time.perf_counter()
    now = timezone.now()
    WorkerState.objects.bulk_create(
        WorkerState(
            hostname=hostname,
            last_heartbeat=now - timedelta(seconds=n_ * 3 if n_ < 8 else 3600 * n_),
            last_update=now,
            freq=2.0,
            sw_ident="py-celery",
            sw_ver="5.5.3",
            sw_sys="Linux",
            processed=100_000 + n_,
            active=n_ % 4,
            loadavg=[0.5, 0.42, 0.4],
        )
        for n_, hostname in enumerate(WORKERS)
    )
    worker_ids = list(WorkerState.objects.order_by("pk").values_list("pk", flat=True))
    table = TaskState._meta.db_table
    rows = generate_rows(n, worker_ids, now)
    if connection.vendor == "postgresql":
        with transaction.atomic(), connection.cursor() as cursor:
            copy_sql = f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN"
            with cursor.cursor.copy(copy_sql) as copy:
                for row in rows:
                    copy.write_row(row)
    else:
        adapt = connection.ops.adapt_datetimefield_value
        datetimes = [COLUMNS.index(c) for c in ("tstamp", "expires", "received", "started")]
        marks = ", ".join("?" for _ in COLUMNS)
        sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks})"
        connection.ensure_connection()
        raw = connection.connection
        raw.execute("PRAGMA synchronous = OFF")
        raw.execute("PRAGMA cache_size = -262144")
        batch: list[tuple] = []

        def flush() -> None:
            with transaction.atomic():
                raw.executemany(sql, batch)
            batch.clear()

        for row in rows:
            row = list(row)
            for index in datetimes:
                row[index] = adapt(row[index])
            batch.append(tuple(row))
            if len(batch) == 50_000:
                flush()
        flush()
        raw.execute("PRAGMA synchronous = FULL")
        raw.execute("PRAGMA cache_size = -2000")
    return time.perf_counter() - started


def analyze() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("VACUUM ANALYZE")
        else:
            cursor.execute("ANALYZE")


# -- the pages ---------------------------------------------------------------------------


def pages() -> list[tuple[str, str, str | None]]:
    """(label, url, a text the page must contain) of each page timed."""
    from django.db.models import Max, Min
    from django.urls import reverse
    from django.utils import timezone

    from django_celery_monitor.models import TaskState, WorkerState

    tasks = reverse("admin:celery_monitor_taskstate_changelist")
    workers = reverse("admin:celery_monitor_workerstate_changelist")
    bounds = TaskState.objects.aggregate(first=Min("pk"), last=Max("pk"))
    middle = (bounds["first"] + bounds["last"]) // 2
    task = TaskState.objects.filter(pk__gte=middle).order_by("pk").first()
    failed = TaskState.objects.filter(pk__gte=middle, state="FAILURE").order_by("pk").first()
    worker = WorkerState.objects.get(hostname=WORKERS[3])
    name = TASK_NAMES[4][0]
    when = timezone.localtime(task.tstamp)
    # As the filter's "Past 7 days" link has it: local midnights, with their offset.
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    since, until = quote(str(today - timedelta(days=7))), quote(str(today + timedelta(days=1)))
    week = f"tstamp__gte={since}&tstamp__lt={until}"
    day = f"tstamp__year={when.year}&tstamp__month={when.month}&tstamp__day={when.day}"
    return [
        ("task list", tasks, None),
        ("filter state=FAILURE", f"{tasks}?state=FAILURE", None),
        ("filter name", f"{tasks}?name={name}", name),
        ("filter worker", f"{tasks}?worker={worker.pk}", worker.hostname),
        ("search full task id", f"{tasks}?q={task.task_id}", task.task_id),
        ("search task id prefix", f"{tasks}?q={task.task_id[:8]}", task.task_id),
        ("search id prefix, upper", f"{tasks}?q={task.task_id[:13].upper()}", task.task_id),
        ("search name prefix", f"{tasks}?q=shop.search", "shop.search.tasks"),
        ("search hostname prefix", f"{tasks}?q=celery@worker-4", worker.hostname),
        ("search every name: shop", f"{tasks}?q=shop", "shop."),
        ("search every host: celery", f"{tasks}?q=celery", "celery@"),
        ("page 50", f"{tasks}?p=49", None),
        # The column headers, as their links sort (o: the columns' places in the list, the
        # checkbox first; the list's own order, by time, follows the one clicked).
        ("sort by state", f"{tasks}?o=1.-4", None),
        ("sort by state, descending", f"{tasks}?o=-1.-4", None),
        ("sort by name", f"{tasks}?o=3.-4", None),
        ("sort by name, descending", f"{tasks}?o=-3.-4", None),
        ("sort by time, oldest first", f"{tasks}?o=4", None),
        ("sort by state, oldest first", f"{tasks}?o=1.4", None),
        ("filter name, sort by state", f"{tasks}?name={name}&o=-1.-4", name),
        ("filter name and state", f"{tasks}?name={name}&state=FAILURE", name),
        ("filter worker and state", f"{tasks}?worker={worker.pk}&state=SUCCESS", worker.hostname),
        ("filter lost", f"{tasks}?lost=1", None),
        ("filter past 7 days", f"{tasks}?{week}", None),
        ("drill down to a day", f"{tasks}?{day}", None),
        ("task detail", reverse("admin:celery_monitor_taskstate_change", args=[failed.pk]),
         failed.task_id),
        ("worker list", workers, WORKERS[0]),
        *dashboard_pages(),
    ]  # fmt: skip


def dashboard_pages() -> list[tuple[str, str, str | None]]:
    """The dashboard of each window, its live data, the JSON API, the metrics and health."""
    from django.urls import reverse

    dashboard = reverse("admin:celery_monitor_dashboard_changelist")
    data = reverse("admin:celery_monitor_dashboard_data")
    name = TASK_NAMES[4][0]
    found = [
        (f"dashboard {window}", f"{dashboard}?window={window}", name)
        for window in ("15m", "1h", "24h", "7d")
    ]
    found.append(("dashboard live data 7d", f"{data}?window=7d", name))
    from django.utils import timezone

    from django_celery_monitor.api import encode_cursor
    from django_celery_monitor.models import TaskState

    hour_ago = quote((timezone.now() - timedelta(hours=1)).isoformat())
    middle = TaskState.objects.order_by("-tstamp", "-pk")[500_000:500_001].first() or (
        TaskState.objects.order_by("tstamp").first()
    )
    cursor = encode_cursor(middle.tstamp, middle.pk) if middle else ""
    api = [
        ("api tasks", "/monitor/api/tasks/?limit=100", '"results"'),
        ("api tasks state=FAILURE", "/monitor/api/tasks/?state=FAILURE&limit=100", "FAILURE"),
        ("api tasks name", f"/monitor/api/tasks/?name={name}&limit=100", name),
        ("api tasks search", "/monitor/api/tasks/?q=shop.search&limit=100", "shop.search"),
        ("api tasks hostname", f"/monitor/api/tasks/?hostname={WORKERS[3]}&limit=100", WORKERS[3]),
        ("api tasks lost", "/monitor/api/tasks/?lost=1&limit=100", '"results"'),
        ("api tasks since 1 h", f"/monitor/api/tasks/?since={hour_ago}&limit=100", '"results"'),
        ("api tasks, a later page", f"/monitor/api/tasks/?limit=100&cursor={cursor}", '"results"'),
        ("api dashboard 7d", "/monitor/api/dashboard/?window=7d", name),
        ("metrics", "/monitor/metrics", "celery_monitor_tasks_total"),
        ("health", "/monitor/health/", "status"),
    ]
    try:
        from django.urls import resolve

        resolve("/monitor/metrics")
    except Exception:  # the project's URLs do not include the monitor's
        api = []
    return found + api


def roll_up() -> tuple[float, float]:
    """The camera's roll-up: the first one, over the seeded days, then one a minute later."""
    from django.utils import timezone

    from django_celery_monitor import stats

    started = time.perf_counter()
    stats.roll_up()
    first = time.perf_counter() - started
    started = time.perf_counter()
    stats.roll_up(now=timezone.now() + timedelta(minutes=1))
    return first, time.perf_counter() - started


def time_pages(explain: bool) -> list[tuple[str, float, int, bool]]:
    """(label, median ms, SQL statements, whether it shows what it should) of each page."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "bench@example.com", "bench"
    )
    client = Client()
    client.force_login(user)
    results = []
    for label, url, expected in pages():
        response = client.get(url)  # warm-up
        if response.status_code not in (200, 503):  # health: 503 without a camera
            raise SystemExit(f"{label}: {url} answered {response.status_code}")
        found = not expected or expected in response.content.decode(errors="replace")
        times = []
        for _ in range(LOADS):
            start = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - start) * 1000)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        results.append((label, statistics.median(times), len(queries.captured_queries), found))
        if explain:
            show_queries(label, url, queries.captured_queries)
    return results


def show_queries(label: str, url: str, captured: list[dict]) -> None:
    from django.db import connection

    print(f"\n== {label}: {url}")
    for query in sorted(captured, key=lambda q: -float(q["time"]))[:4]:
        print(f"-- {float(query['time']) * 1000:.1f} ms: {query['sql'][:1200]}")
        if float(query["time"]) < 0.005 or not query["sql"].lstrip().upper().startswith(
            ("SELECT", "WITH")
        ):
            continue
        prefix = "EXPLAIN QUERY PLAN " if connection.vendor == "sqlite" else "EXPLAIN "
        with connection.cursor() as cursor:
            cursor.execute(prefix + query["sql"])
            for row in cursor.fetchall():
                print("   ", row[-1])


# -- the purge ---------------------------------------------------------------------------


class Writer(threading.Thread):
    """Writes one new task every 0.1 s with the camera's batch writer; notes each stall."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        #: Writes are measured from this time on (perf_counter): the first ones open the
        #: connection and create the worker row.
        self.since = float("inf")
        self.longest = 0.0
        self.writes = 0
        self.errors: list[str] = []

    def run(self) -> None:
        from django.db import connection
        from django.utils import timezone

        try:
            from django_celery_monitor.writer import write_snapshot
        except ImportError:  # before the writer module
            from django_celery_monitor.managers import write_snapshot  # type: ignore[no-redef]

        try:
            while not self.stop.is_set():
                now = timezone.now()
                row = {
                    "state": "SUCCESS",
                    "name": TASK_NAMES[0][0],
                    "tstamp": now,
                    "received": now - timedelta(seconds=0.2),
                    "started": now - timedelta(seconds=0.1),
                    "runtime": 0.1,
                    "result": "{'status': 'ok'}",
                    "args": "(1, 'web')",
                    "kwargs": "{}",
                    "worker": WORKERS[0],
                }
                start = time.perf_counter()
                try:
                    write_snapshot({}, {str(uuid.uuid4()): row})
                    self.writes += start >= self.since
                except Exception as exc:  # a lock timeout counts as a stall too
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                took = time.perf_counter() - start
                if start >= self.since:
                    self.longest = max(self.longest, took)
                self.stop.wait(max(0.0, WRITE_EVERY - took))
        finally:
            connection.close()


def cleanup():
    """The camera's cleanup: expire each state group, then purge the hidden rows."""
    from celery import Celery
    from celery.events.state import State

    from django_celery_monitor.camera import Camera

    camera = Camera(State(), app=Celery("benchmark", set_as_current=False))
    return camera.on_cleanup()


def time_purge() -> dict:
    from django.db import connection
    from django.db.models import F

    from django_celery_monitor.models import TaskState

    # Every task 30 days older: all are past their expiry, whatever their state.
    start = time.perf_counter()
    aged = TaskState.objects.update(tstamp=F("tstamp") - timedelta(days=30))
    aging = time.perf_counter() - start
    analyze()

    statements: list[tuple[float, str]] = []

    def timer(execute, sql, params, many, context):
        begin = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append((time.perf_counter() - begin, sql))

    writer = Writer()
    writer.start()
    time.sleep(0.5)
    start = writer.since = time.perf_counter()
    with connection.execute_wrapper(timer):
        expired = cleanup()
    total = time.perf_counter() - start
    time.sleep(0.3)
    writer.stop.set()
    writer.join()
    left = TaskState.objects.filter(hidden=False).count()
    longest, longest_sql = max(statements, default=(0.0, ""))
    return {
        "times": [took for took, _sql in statements],
        "aged": aged,
        "aging": aging,
        "expired": expired,
        "left": left,
        "total": total,
        "statements": len(statements),
        "longest": longest,
        "longest_sql": longest_sql,
        "stall": writer.longest,
        "writes": writer.writes,
        "errors": writer.errors,
    }


# -- the report --------------------------------------------------------------------------


def report_pages(results: list) -> None:
    print(f"\n{'page':<26} {'median ms':>10} {'queries':>8}  target {PAGE_TARGET_MS:.0f} ms")
    for label, median, count, found in results:
        verdict = "ok" if median < PAGE_TARGET_MS else "SLOW"
        missing = "" if found else "  (the task sought is not in the page)"
        print(f"{label:<26} {median:>10.1f} {count:>8}  {verdict}{missing}")


def run(options) -> None:
    from django.db import connection

    from django_celery_monitor.models import TaskState

    backend = "postgresql" if options.postgresql else "sqlite"
    print(f"== {backend}, {options.rows:,} tasks, {len(WORKERS):,} workers")
    if options.reuse and TaskState.objects.exists():
        print(f"reused the {TaskState.objects.count():,} tasks in the database")
    else:
        took = seed(options.rows)
        print(f"seeded {options.rows:,} tasks in {took:.1f} s")
    first, steady = roll_up()
    print(
        f"rollups: the first, over every seeded day, {first:.1f} s (once, when the camera "
        f"first runs); the next minute's {steady * 1000:.0f} ms"
    )
    if not options.no_analyze:
        analyze()
    if connection.vendor == "sqlite":
        connection.close()  # the connection of the seeding had a large cache
    if not options.no_pages:
        report_pages(time_pages(options.explain))
    if options.no_purge:
        return
    purge = time_purge()
    verdict = "ok" if purge["longest"] < STATEMENT_TARGET_S else "SLOW"
    print(
        f"\npurge: aged {purge['aged']:,} rows 30 days ({purge['aging']:.1f} s); cleanup "
        f"expired {purge['expired']:,} in {purge['total']:.1f} s, "
        f"{purge['statements']:,} statements, {purge['left']:,} rows left"
    )
    print(
        f"purge: longest statement {purge['longest'] * 1000:.0f} ms  {verdict} "
        f"(target < {STATEMENT_TARGET_S:.0f} s): {purge['longest_sql'][:160]}"
    )
    times = purge["times"]
    if times:
        spread = ", ".join(f"p{p} {common.percentile(times, p) * 1000:.0f}" for p in (50, 90, 99))
        slowest = ", ".join(f"{took * 1000:.0f}" for took in sorted(times)[:-6:-1])
        print(f"purge: statement times (ms) {spread}; the 5 longest {slowest}")
    print(
        f"purge: writer's longest stall {purge['stall'] * 1000:.0f} ms over "
        f"{purge['writes']} writes, {len(purge['errors'])} failed"
        + (f" (first: {purge['errors'][0][:120]})" if purge["errors"] else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--sqlite", action="store_true", help="SQLite in a temp dir (default)")
    where.add_argument("--postgresql", action="store_true", help="PGHOST, PGPORT, PGUSER")
    where.add_argument("--all", action="store_true", help="SQLite, then PostgreSQL")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--database",
        default=None,
        help="the PostgreSQL database (default cm_admin_bench), or the SQLite file",
    )
    parser.add_argument("--reuse", action="store_true", help="keep the database's rows")
    parser.add_argument("--explain", action="store_true", help="print each page's slow SQL")
    parser.add_argument("--no-purge", action="store_true", help="time the pages only")
    parser.add_argument("--no-pages", action="store_true", help="time the purge only")
    parser.add_argument("--no-analyze", action="store_true", help="skip ANALYZE")
    parser.add_argument(
        "--workers",
        type=int,
        default=len(WORKERS),
        help="worker rows, the tasks spread over them (containers named anew at each start "
        "leave thousands)",
    )
    options = parser.parse_args()
    if options.workers != len(WORKERS):
        WORKERS[:] = [
            f"celery@worker-{n}.prod.shop.internal" for n in range(1, options.workers + 1)
        ]
    if options.all:
        rest = [arg for arg in sys.argv[1:] if arg != "--all"]
        for flag in ("--sqlite", "--postgresql"):
            subprocess.run([sys.executable, __file__, flag, *rest], check=True)
        return
    backend = "postgresql" if options.postgresql else "sqlite"
    if backend == "postgresql":
        database = options.database or "cm_admin_bench"
    else:
        database = options.database
    with tempfile.TemporaryDirectory() as tmp:
        configure(backend, tmp, database)
        create_database(backend, keep=options.reuse)
        run(options)


if __name__ == "__main__":
    main()
