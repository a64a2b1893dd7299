"""The partial indexes of the task table: made, served, and migrated both ways."""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone

import pytest
from django.db import connection, models
from django.db.migrations.executor import MigrationExecutor

from django_celery_monitor.admin.queries import prefix_q
from django_celery_monitor.indexes import PartialIndex, unnamed_field_indexes
from django_celery_monitor.models import TaskState

APP = "celery_monitor"
TABLE = "celery_monitor_taskstate"
INSTANT = datetime(2026, 11, 26, 8, 0, tzinfo=dt_timezone.utc)
PARTIAL = {
    "cm_task_hidden_idx": ["id"],
    "cm_task_lost_idx": ["tstamp"],
    "cm_task_parent_idx": ["parent_id"],
}
#: Where the database cannot index part of a table: the columns of the condition first.
WHOLE = {"cm_task_hidden_idx": ["hidden"], "cm_task_lost_idx": ["lost", "tstamp"]}


def constraints() -> dict:
    with connection.cursor() as cursor:
        return connection.introspection.get_constraints(cursor, TABLE)


def field_indexes(column: str, but: tuple[str, ...] = ()) -> list[str]:
    """The indexes of ``column`` alone that the model does not declare by name (but those
    whose names end with one of ``but``)."""
    editor = connection.SchemaEditorClass(connection, collect_sql=True)
    return unnamed_field_indexes(editor, TaskState, column, but)


def plain_name_indexes() -> list[str]:
    """The indexes of the name alone, but PostgreSQL's pattern index for LIKE 'prefix%'."""
    return field_indexes("name", but=("_like",))


def migrate(target: tuple[str, str] | None = None) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target] if target else executor.loader.graph.leaf_nodes())


def plan(queryset: models.QuerySet) -> str:
    """The database's plan of ``queryset``, with sequential scans its last resort.

    PostgreSQL plans from the table's statistics: those of the test's own rows (ANALYZE),
    not whatever an earlier test, or the autovacuum after it, left.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {connection.ops.quote_name(TABLE)}")
            cursor.execute("SET LOCAL enable_seqscan = off")
    return queryset.explain()


@pytest.mark.django_db
def test_the_partial_indexes_exist_over_their_columns():
    made = constraints()
    for name, columns in PARTIAL.items():
        assert made[name]["index"], name
        if not connection.features.supports_partial_indexes:
            columns = WHOLE.get(name, columns)
        assert made[name]["columns"] == columns, name
    # Nothing looks tasks up by their root id, and the hidden field has no index of its own.
    assert not [n for n, info in made.items() if info["columns"] == ["root_id"]]
    assert field_indexes("hidden") == []


@pytest.mark.django_db
def test_the_name_has_no_index_of_its_own_but_postgresqls_pattern_index():
    assert plain_name_indexes() == []
    made = constraints()
    assert made["cm_task_name_tstamp_idx"]["columns"] == ["name", "tstamp"]
    if connection.vendor == "postgresql":
        assert [n for n in field_indexes("name") if n.endswith("_like")], made


@pytest.mark.django_db
@pytest.mark.parametrize(
    "rows",
    [
        lambda: TaskState.objects.filter(name="tasks.add").order_by("-tstamp"),
        lambda: TaskState.objects.filter(name__in=["tasks.add", "tasks.mul"]),
        # The admin's search of a prefix of names (see admin.queries.prefix_q).
        lambda: TaskState.objects.filter(prefix_q("name", "tasks.t1", connection.vendor)),
    ],
)
def test_the_lookups_of_names_use_an_index(rows):
    for n in range(40):
        TaskState.objects.create(
            task_id=f"t-{n}", state="SUCCESS", tstamp=INSTANT, name=f"tasks.t{n % 8}"
        )
    text = plan(rows())
    assert "cm_task_name" in text or "_like" in text, text


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("index", "rows"),
    [
        # The purge's batches of hidden rows.
        (
            "cm_task_hidden_idx",
            lambda: (
                TaskState.objects.filter(hidden=True, pk__gte=3).order_by("pk").values("pk")[:10]
            ),
        ),
        # The lost filter of the list, latest first.
        ("cm_task_lost_idx", lambda: TaskState.objects.filter(lost=True).order_by("-tstamp")),
        # ... as the list reads it: the latest first, then the highest key.
        (
            "cm_task_lost_idx",
            lambda: (
                TaskState.objects.filter(hidden=False, lost=True)
                .select_related("worker")
                .order_by("-tstamp", "-pk")[:100]
            ),
        ),
        # A task's children on its page and in the API.
        ("cm_task_parent_idx", lambda: TaskState.objects.filter(parent_id="a-parent")),
        (
            "cm_task_parent_idx",
            lambda: TaskState.objects.filter(parent_id="a-parent", hidden=False),
        ),
    ],
)
def test_the_lookups_use_the_partial_indexes(index, rows):
    if connection.vendor == "mysql":
        pytest.skip("MySQL and MariaDB index every row (test_mysql_indexes_every_row)")
    for n in range(20):
        TaskState.objects.create(
            task_id=f"t-{n}",
            state="SUCCESS",
            tstamp=INSTANT,
            parent_id="a-parent" if n % 10 == 1 else None,
            hidden=n % 3 == 0,
            lost=n % 5 == 0,
        )
    text = plan(rows())
    assert index in text, text


@pytest.mark.django_db
def test_mysql_indexes_every_row():
    """Where a database cannot index part of a table, the index holds every row."""
    index = PartialIndex(fields=["hidden"], name="cm_test_idx", where=models.Q(hidden=True))
    editor = connection.SchemaEditorClass(connection, collect_sql=True)
    sql = str(index.create_sql(TaskState, editor))
    if connection.features.supports_partial_indexes:
        assert "WHERE" in sql
    else:
        assert "WHERE" not in sql
        assert "cm_task_hidden_idx" in constraints()


@pytest.mark.django_db(transaction=True)
def test_the_migration_back_restores_the_hidden_field_index():
    try:
        migrate((APP, "0010_queue_samples"))
        assert len(field_indexes("hidden")) == 1
        names = set(constraints())
        assert not set(PARTIAL) & names
        assert {"cm_task_root_id_idx", "cm_task_lost_tstamp_idx"} <= names
        TaskState.objects.create(task_id="kept", state="SUCCESS", tstamp=INSTANT, hidden=True)
    finally:
        migrate()
    assert field_indexes("hidden") == []
    assert set(PARTIAL) <= set(constraints())
    assert TaskState.objects.get(task_id="kept").hidden is True
    TaskState.objects.filter(task_id="kept").delete()


@pytest.mark.django_db(transaction=True)
def test_the_migration_back_restores_the_name_field_index():
    try:
        migrate((APP, "0011_partial_task_indexes"))
        assert len(plain_name_indexes()) == 1
        TaskState.objects.create(task_id="kept", state="SUCCESS", tstamp=INSTANT, name="a.b")
    finally:
        migrate()
    assert plain_name_indexes() == []
    if connection.vendor == "postgresql":
        assert [n for n in field_indexes("name") if n.endswith("_like")]
    assert TaskState.objects.get(task_id="kept").name == "a.b"
    TaskState.objects.filter(task_id="kept").delete()


@pytest.mark.nodb
def test_a_partial_index_deconstructs_with_its_rows():
    index = PartialIndex(fields=["lost", "-tstamp"], name="cm_x_idx", where=models.Q(lost=True))
    path, _args, kwargs = index.deconstruct()
    assert path == "django_celery_monitor.indexes.PartialIndex"
    assert kwargs == {
        "fields": ["lost", "-tstamp"],
        "name": "cm_x_idx",
        "where": models.Q(lost=True),
    }
    assert index.clone() == index
    assert index != PartialIndex(
        fields=["lost", "-tstamp"], name="cm_x_idx", where=models.Q(lost=False)
    )
    assert index.condition is None  # Django's checks see no condition to warn about


@pytest.mark.nodb
def test_a_partial_index_needs_a_q():
    with pytest.raises(TypeError, match="must be a Q"):
        PartialIndex(fields=["hidden"], name="cm_x_idx", where="hidden")
