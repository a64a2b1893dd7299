"""Migrations: none missing, and a database made by 1.1.2 migrates forward."""

from __future__ import annotations

import io
from datetime import datetime
from datetime import timezone as dt_timezone

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import AutoField

from django_celery_monitor.models import TaskState, WorkerState

APP = "celery_monitor"
LAST_1_1_2 = (APP, "0002_workerstate_last_update")
TASK_TABLE = "celery_monitor_taskstate"
WORKER_TABLE = "celery_monitor_workerstate"
TASK_COLUMNS_1_1_2 = {
    "id",
    "state",
    "task_id",
    "name",
    "tstamp",
    "args",
    "kwargs",
    "eta",
    "expires",
    "result",
    "traceback",
    "runtime",
    "retries",
    "hidden",
    "worker_id",
}
WORKER_COLUMNS_1_1_2 = {"id", "hostname", "last_heartbeat", "last_update"}
TASK_ID = "0f4e9c5a-8b1d-4c4e-9f5e-2a1b3c4d5e6f"
INSTANT = datetime(2017, 3, 4, 5, 6, 7, tzinfo=dt_timezone.utc)


def makemigrations_check() -> str:
    out = io.StringIO()
    call_command("makemigrations", APP, "--check", "--dry-run", stdout=out, stderr=out)
    return out.getvalue()


def columns(table: str) -> dict:
    with connection.cursor() as cursor:
        return {c.name: c for c in connection.introspection.get_table_description(cursor, table)}


def column_size(table: str, name: str) -> int | None:
    info = columns(table)[name]
    return info.internal_size or info.display_size


def migrate(*targets: tuple[str, str]) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(list(targets) or executor.loader.graph.leaf_nodes())


def sql_datetime(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


def insert(table: str, **values) -> None:
    """Insert a row with raw SQL, as a program that knows nothing of the new models would."""
    names = ", ".join(connection.ops.quote_name(name) for name in values)
    placeholders = ", ".join(["%s"] * len(values))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({names}) VALUES ({placeholders})",
            list(values.values()),
        )


def select_id(table: str, column: str, value: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {table} WHERE {column} = %s", [value])
        return cursor.fetchone()[0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "auto_field",
    [None, "django.db.models.BigAutoField", "django.db.models.AutoField"],
)
def test_no_missing_migrations(settings, auto_field):
    if auto_field:
        settings.DEFAULT_AUTO_FIELD = auto_field
    assert "No changes detected" in makemigrations_check()


def test_the_primary_keys_are_pinned_to_the_1_1_2_type():
    assert type(TaskState._meta.pk) is AutoField
    assert type(WorkerState._meta.pk) is AutoField


@pytest.mark.django_db(transaction=True)
def test_a_1_1_2_database_migrates_forward():
    try:
        migrate(LAST_1_1_2)

        # The schema 1.1.2 made.
        assert set(columns(TASK_TABLE)) == TASK_COLUMNS_1_1_2
        assert set(columns(WORKER_TABLE)) == WORKER_COLUMNS_1_1_2
        if connection.vendor != "sqlite":  # SQLite does not keep the length of a varchar
            assert column_size(TASK_TABLE, "task_id") == 36

        insert(
            WORKER_TABLE,
            hostname="celery@legacy",
            last_heartbeat=sql_datetime(INSTANT),
            last_update=sql_datetime(INSTANT),
        )
        worker_id = select_id(WORKER_TABLE, "hostname", "celery@legacy")
        insert(
            TASK_TABLE,
            state="SUCCESS",
            task_id=TASK_ID,
            name="proj.add",
            tstamp=sql_datetime(INSTANT),
            args="(2, 2)",
            kwargs="{}",
            eta=None,
            expires=None,
            result="4",
            traceback=None,
            runtime=0.25,
            retries=0,
            hidden=False,
            worker_id=worker_id,
        )

        migrate()
    finally:
        migrate()

    task = TaskState.objects.select_related("worker").get(task_id=TASK_ID)
    assert task.state == "SUCCESS"
    assert task.name == "proj.add"
    assert task.tstamp == INSTANT
    assert (task.args, task.kwargs, task.result) == ("(2, 2)", "{}", "4")
    assert task.eta is None
    assert task.traceback is None
    assert task.runtime == 0.25
    assert task.retries == 0
    assert task.hidden is False
    assert (task.received, task.exception, task.parent_id) == (None, None, None)
    assert task.worker.hostname == "celery@legacy"
    assert task.worker.last_heartbeat == INSTANT
    assert task.worker.offline is False
    assert task.worker.freq is None

    assert set(columns(TASK_TABLE)) > TASK_COLUMNS_1_1_2
    assert set(columns(WORKER_TABLE)) > WORKER_COLUMNS_1_1_2
    if connection.vendor != "sqlite":
        assert column_size(TASK_TABLE, "task_id") == 255
    long_id = "chord-unlock-" + "x" * 187
    assert len(long_id) == 200
    TaskState.objects.create(task_id=long_id, state="PENDING", tstamp=INSTANT)
    assert TaskState.objects.get(task_id=long_id).task_id == long_id


@pytest.mark.django_db
def test_the_database_is_at_the_latest_migration():
    executor = MigrationExecutor(connection)
    assert executor.migration_plan(executor.loader.graph.leaf_nodes()) == []
    assert set(columns(TASK_TABLE)) == {f.column for f in TaskState._meta.concrete_fields}
    assert set(columns(WORKER_TABLE)) == {f.column for f in WorkerState._meta.concrete_fields}
