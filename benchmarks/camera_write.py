"""How fast the camera writes snapshots, against one-transaction-per-task writing.

The baseline writes each task of the snapshot on its own, with the 1.1.2-compatible
``TaskState.objects.update_state`` (a locked read and a write in one transaction per task),
as django_celery_monitor 1.1.2 did on every shutter. Both run in the same process on the
same database, so the ratios hold on a noisy machine even when the absolute times do not.

    .venv/bin/python benchmarks/camera_write.py                 # SQLite in a temp file
    .venv/bin/python benchmarks/camera_write.py --postgresql    # PGHOST/PGPORT/PGUSER
    .venv/bin/python benchmarks/camera_write.py --tasks 20000 --backlog 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import django
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def configure(postgresql: bool, tmp: str) -> None:
    if postgresql:
        database = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("PGDATABASE", "celery_monitor_bench"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5439"),
        }
    else:
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": f"{tmp}/bench.sqlite3"}
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                        "django_celery_monitor"],
        DATABASES={"default": database},
        USE_TZ=True,
    )  # fmt: skip
    django.setup()


def create_database(postgresql: bool) -> None:
    if postgresql:
        import psycopg

        name = settings.DATABASES["default"]["NAME"]
        params = {k: settings.DATABASES["default"][k] for k in ("USER", "HOST", "PORT")}
        with psycopg.connect(
            dbname="postgres", user=params["USER"], host=params["HOST"], port=params["PORT"],
            autocommit=True,
        ) as conn:  # fmt: skip
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def events_for(task_ids, kinds, hostname="bench@host"):
    from tests import events

    for task_id in task_ids:
        for kind in kinds:
            if kind == "received":
                yield events.received(task_id, hostname=hostname)
            else:
                yield events.task_event(kind, task_id, hostname=hostname, result="1", runtime=0.1)


def timed(fun) -> float:
    start = time.perf_counter()
    fun()
    return time.perf_counter() - start


def per_task_baseline(state) -> None:
    """1.1.2's shutter: every task in the state, each in its own transaction."""
    from django_celery_monitor.camera import Camera
    from django_celery_monitor.models import TaskState, WorkerState

    camera = Camera(state)
    worker = WorkerState.objects.get_or_create(hostname="bench@host")[0]
    for task_id, task in state.tasks.items():
        row = camera.task_row(task)
        row.pop("worker")
        row = {k: v for k, v in row.items() if v is not None}
        row["worker"] = worker
        TaskState.objects.update_state(row.pop("state"), task_id, row)


def reset() -> None:
    from django_celery_monitor.models import TaskState

    TaskState.objects.all().delete()


def run(n_tasks: int, backlog: int) -> None:
    from celery.events.state import State

    from django_celery_monitor.camera import Camera
    from django_celery_monitor.models import TaskState

    def new_ids(n):
        return [str(uuid.uuid4()) for _ in range(n)]

    print(f"database: {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}")

    def fed(ids, kinds, state=None):
        state = state or State(max_tasks_in_memory=max(len(ids) * 2, 10000))
        for event in events_for(ids, kinds):
            state.event(event)
        return state

    def compare(label, recorded_first):
        """Camera against per-task writes for n_tasks finishing in one snapshot."""
        ids = new_ids(n_tasks)
        finish = ("started", "succeeded")
        camera = Camera(fed(ids, ("received",) if recorded_first else ()))
        if recorded_first:
            camera.capture()
        state = fed(ids, finish if recorded_first else ("received", *finish), camera.state)
        ours = timed(camera.capture)
        assert TaskState.objects.filter(state="SUCCESS").count() == n_tasks
        reset()
        if recorded_first:
            per_task_baseline(fed(ids, ("received",)))
        state = fed(ids, ("received", *finish))
        base = timed(lambda: per_task_baseline(state))
        assert TaskState.objects.filter(state="SUCCESS").count() == n_tasks
        reset()
        print(
            f"{n_tasks} {label}: camera {ours:.3f} s ({n_tasks / ours:,.0f} tasks/s), "
            f"per-task writes {base:.3f} s ({n_tasks / base:,.0f} tasks/s); "
            f"camera is {base / ours:.1f}x faster"
        )

    # 1. Tasks received, started and finished within one snapshot: inserts.
    compare("finished tasks in one snapshot", recorded_first=False)
    # 2. Tasks received in one snapshot and finished in the next: updates.
    compare("recorded tasks finishing in one snapshot", recorded_first=True)

    # 3. A backlog of queued tasks, of which a few move on per snapshot.
    queued = new_ids(backlog)
    camera = Camera(fed(queued, ("received",)))
    first = timed(camera.capture)
    fed(queued[:100], ("started",), camera.state)
    ours = timed(camera.capture)
    base = timed(lambda: per_task_baseline(camera.state))
    print(
        f"backlog of {backlog} queued tasks (first snapshot {first:.2f} s), then 100 start: "
        f"camera {ours * 1000:.1f} ms per snapshot, per-task rewrite of the backlog "
        f"{base:.2f} s; camera is {base / ours:,.0f}x faster"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgresql", action="store_true")
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--backlog", type=int, default=20000)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        configure(options.postgresql, tmp)
        create_database(options.postgresql)
        run(options.tasks, options.backlog)


if __name__ == "__main__":
    main()
