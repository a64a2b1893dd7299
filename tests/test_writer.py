"""The writer: the merge rules in SQL do what the same rules do in Python, on every database."""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid as uuidlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_celery_monitor.models import TaskState
from django_celery_monitor.writer import (
    STALE_NOTE,
    SnapshotWriter,
    merge_task_values,
    task_upsert_sql,
    write_snapshot,
)

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=dt_timezone.utc)
STATES = ["PENDING", "RECEIVED", "STARTED", "RETRY", "REJECTED", "PROGRESS", "SUCCESS",
          "FAILURE", "REVOKED"]  # fmt: skip
times = st.integers(0, 4).map(lambda s: T0 + timedelta(seconds=s))

rows = st.fixed_dictionaries(
    {"state": st.sampled_from(STATES), "tstamp": times},
    optional={
        "name": st.none() | st.sampled_from(["proj.a", "proj.b"]),
        "args": st.none() | st.sampled_from(["(1,)", "(2,)"]),
        "result": st.none() | st.sampled_from(["1", "2", "boom"]),
        "exception": st.none() | st.sampled_from(["ValueError()", "KeyError()"]),
        "runtime": st.none() | st.sampled_from([0.5, 1.25]),
        "retries": st.none() | st.integers(0, 3),
        "received": st.none() | times,
        "started": st.none() | times,
        "worker": st.none() | st.sampled_from(["w1@h", "w2@h"]),
        "note": st.none() | st.sampled_from([STALE_NOTE, "read from the result backend"]),
    },
)

COMPARED = ("state", "tstamp", "name", "args", "result", "exception", "runtime", "retries",
            "received", "started", "note", "hidden", "lost")  # fmt: skip


def recorded(task_id: str) -> dict:
    obj = TaskState.objects.select_related("worker").get(task_id=task_id)
    values = {field: getattr(obj, field) for field in COMPARED}
    values["worker"] = obj.worker.hostname if obj.worker else None
    return values


def expected(sequence: list[dict], hidden_first: bool) -> dict:
    current: dict | None = None
    for incoming in sequence:
        if current is None:
            current = {"retries": 0, "hidden": hidden_first, "lost": hidden_first}
            current.update((k, v) for k, v in incoming.items() if v is not None)
        else:
            current.update(merge_task_values(current, incoming))
    assert current is not None
    return {field: current.get(field) for field in (*COMPARED, "worker")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(rows, min_size=1, max_size=5), hidden_first=st.booleans())
def test_sql_merge_is_the_python_merge(sequence, hidden_first):
    """Any sequence of rows merged one write at a time ends where the Python rules end."""
    task_id = str(uuidlib.uuid4())
    write_snapshot({}, {task_id: sequence[0]})
    if hidden_first:
        TaskState.objects.filter(task_id=task_id).update(hidden=True, lost=True)
    for incoming in sequence[1:]:
        write_snapshot({}, {task_id: incoming})
    assert recorded(task_id) == expected(sequence, hidden_first)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequence=st.lists(rows, min_size=2, max_size=4))
def test_writing_a_row_twice_changes_nothing(sequence):
    """The merge is idempotent: a batch written again after a failure does no harm."""
    task_id = str(uuidlib.uuid4())
    for incoming in sequence:
        write_snapshot({}, {task_id: incoming})
    once = recorded(task_id)
    for incoming in sequence:
        write_snapshot({}, {task_id: incoming})
    assert recorded(task_id) == once


@pytest.mark.parametrize("state", ["SUCCESS", "FAILURE", "REVOKED"])
@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_the_same_finished_state_twice_keeps_the_later_event_in_any_order(state, order):
    """A task revoked by two workers, or run again: whichever row is written last, the row
    keeps the later event's time, worker and outcome, as one shot of all the events does."""
    rows = [
        {"state": state, "tstamp": T0 + timedelta(seconds=1), "worker": "w1@h", "result": "1"},
        {"state": state, "tstamp": T0 + timedelta(seconds=3), "worker": "w2@h", "result": "2"},
        {"state": state, "tstamp": T0 + timedelta(seconds=2), "worker": "w1@h", "result": "x"},
    ]
    task_id = str(uuidlib.uuid4())
    for index in order:
        write_snapshot({}, {task_id: rows[index]})
    got = recorded(task_id)
    assert (got["tstamp"], got["worker"], got["result"]) == (rows[1]["tstamp"], "w2@h", "2")
    assert got == expected([rows[index] for index in order], hidden_first=False)


def test_a_batch_is_a_handful_of_statements_with_no_read_of_the_tasks():
    tasks = {str(uuidlib.uuid4()): {"state": "SUCCESS", "tstamp": T0, "worker": "w1@h"}
             for _ in range(300)}  # fmt: skip
    with CaptureQueriesContext(connection) as queries:
        write_snapshot({"w1@h": {"last_heartbeat": T0}}, tasks)
    sql = [q["sql"] for q in queries.captured_queries]
    task_statements = [s for s in sql if "celery_monitor_taskstate" in s]
    reads = [s for s in task_statements if s.lstrip().upper().startswith("SELECT")]
    # None of these tasks was written before: not even MySQL reads a key (next tests).
    assert not reads
    assert not any("FOR UPDATE" in s.upper() for s in sql)
    assert len(sql) <= 12, sql
    assert TaskState.objects.filter(state="SUCCESS").count() == 300


def test_mysql_reads_the_keys_of_the_unfinished_tasks_it_wrote_and_of_no_other():
    if connection.vendor != "mysql":
        pytest.skip("MySQL's merge names the recorded rows by their keys")
    writer = SnapshotWriter()
    writer.write({}, {"t1": {"state": "RECEIVED", "tstamp": T0},
                      "t2": {"state": "SUCCESS", "tstamp": T0}})  # fmt: skip
    later = T0 + timedelta(seconds=1)
    with CaptureQueriesContext(connection) as queries:
        writer.write({}, {"t1": {"state": "SUCCESS", "tstamp": later},
                          "t2": {"state": "STARTED", "tstamp": later},
                          "t3": {"state": "STARTED", "tstamp": later}})  # fmt: skip
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT `task_id`")]
    assert len(reads) == 1 and "IN ('t1')" in reads[0], reads
    assert "FOR UPDATE" not in reads[0] and "SHARE" not in reads[0]
    # By the states written: t1 finished; t2's late event is remembered (a hint, bounded).
    assert writer._unfinished["default"] == {"t2": None, "t3": None}
    assert dict(TaskState.objects.values_list("task_id", "state")) == {
        "t1": "SUCCESS", "t2": "SUCCESS", "t3": "STARTED"
    }  # fmt: skip


def test_the_unfinished_tasks_remembered_are_bounded_the_oldest_forgotten_first(monkeypatch):
    from django_celery_monitor import writer as writer_module

    monkeypatch.setattr(writer_module, "MAX_UNFINISHED", 10)
    writer = SnapshotWriter()
    state_at = writer_module.TASK_COLUMNS.index("state")

    def row(task_id: str, state: str) -> list:
        values = [None] * len(writer_module.TASK_COLUMNS)
        values[0], values[state_at] = task_id, state
        return values

    writer._note_unfinished("db", [row(f"t{n:02d}", "STARTED") for n in range(11)])
    assert list(writer._unfinished["db"]) == [f"t{n:02d}" for n in range(6, 11)]
    writer._note_unfinished("db", [row("t07", "FAILURE"), row("t11", "RECEIVED")])
    assert list(writer._unfinished["db"]) == ["t06", "t08", "t09", "t10", "t11"]


@contextlib.contextmanager
def another_camera_writing(tasks: dict[str, dict]) -> Iterator[None]:
    """Run the block while another thread's write of ``tasks`` holds its transaction open,
    with this connection waiting a second at most for a lock (then the write fails)."""
    import threading

    from django.db import connections, transaction

    holding, release, failed = threading.Event(), threading.Event(), []

    def other_camera() -> None:
        try:
            with transaction.atomic():
                write_snapshot({}, tasks)
                holding.set()
                release.wait(30)
        except BaseException as exc:
            failed.append(exc)
            holding.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=other_camera)
    thread.start()
    try:
        assert holding.wait(30) and not failed, failed
        with connection.cursor() as cursor:
            if connection.vendor == "mysql":
                cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
            else:
                cursor.execute("SET lock_timeout = '1s'")
        yield
    finally:
        release.set()
        thread.join(30)
        connection.close()  # the session's lock timeout goes with it
    assert not failed, failed


@pytest.mark.django_db(transaction=True)  # two connections, each with its transaction
def test_a_new_task_does_not_wait_for_another_writers_merge_of_the_task_next_to_it():
    """Another camera's transaction, still open, merged into a recorded task: a new task
    whose id comes just before that one's goes in without waiting for it. (Found by its
    task id alone, MySQL and MariaDB locked the recorded row with the gap before it.)"""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite lets one writer in at a time")
    recorded_id, new_id = "task-b", "task-a"
    # Written unfinished by the writer the other camera's thread uses too (the process's):
    # it knows the row, as a camera knows the rows it wrote.
    write_snapshot({}, {recorded_id: {"state": "RECEIVED", "tstamp": T0}})
    with another_camera_writing({recorded_id: {"state": "STARTED", "tstamp": T0}}):
        write_snapshot({}, {new_id: {"state": "SUCCESS", "tstamp": T0}})
    assert dict(TaskState.objects.values_list("task_id", "state")) == {
        recorded_id: "STARTED",
        new_id: "SUCCESS",
    }


@pytest.mark.parametrize("stale", ["deleted", "missing"])
def test_a_row_deleted_or_made_again_since_its_key_was_read_is_merged_by_its_task_id(
    monkeypatch, stale
):
    """The key a write read may be gone when it merges (the purge deleted the row, or
    another camera recorded the task again under a new key): the row is still merged."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL's merge names the recorded rows by their keys")
    write_snapshot({}, {"t1": {"state": "RECEIVED", "tstamp": T0, "name": "proj.a"}})
    old_key = TaskState.objects.get().pk
    if stale == "deleted":
        TaskState.objects.all().delete()
    else:
        TaskState.objects.filter(pk=old_key).update(id=old_key + 1000)
    monkeypatch.setattr(SnapshotWriter, "_task_keys", lambda self, *args: {"t1": old_key})
    write_snapshot({}, {"t1": {"state": "SUCCESS", "tstamp": T0 + timedelta(seconds=1)}})
    row = TaskState.objects.get(task_id="t1")
    assert row.state == "SUCCESS"
    assert row.name == (None if stale == "deleted" else "proj.a")
    assert TaskState.objects.count() == 1


def test_the_statement_is_compiled_once_per_connection():
    writer = SnapshotWriter()
    writer.write({}, {"a": {"state": "RECEIVED", "tstamp": T0}})
    compiled = dict(writer._compiled)
    writer.write({}, {"b": {"state": "RECEIVED", "tstamp": T0}})
    assert writer._compiled == compiled
    assert task_upsert_sql(connection, "t").count("INSERT") == 1


@pytest.mark.parametrize(
    "values",
    [
        {"runtime": "fast"},
        {"runtime": 10**400},
        {"retries": 2**31},
        {"retries": -(2**31) - 1},
        {"retries": 2**70},
        {"retries": float("inf")},
        {"received": "yesterday"},
    ],
)
def test_values_of_the_wrong_kind_or_that_do_not_fit_are_refused_not_stored(values):
    # Refused on every database alike (the camera then writes the batch row by row): not
    # cut to the column's 32 bits, nor an error the camera does not know.
    with pytest.raises((ValueError, TypeError)):
        write_snapshot({}, {"x": {"state": "SUCCESS", "tstamp": T0, **values}})
    assert not TaskState.objects.filter(task_id="x").exists()


def test_the_largest_numbers_the_columns_hold_are_stored_as_they_are():
    write_snapshot({}, {"x": {"state": "SUCCESS", "tstamp": T0, "retries": 2**31 - 1}})
    assert TaskState.objects.get(task_id="x").retries == 2**31 - 1


@pytest.mark.parametrize(
    ("zone", "local"),
    [
        ("America/New_York", datetime(2026, 3, 1, 7, 30, 15, 250000)),
        ("Asia/Kolkata", datetime(2026, 3, 1, 7, 30, 15, 250000)),
        # The hour Europe/Berlin's clock repeats (either pass), and the hour it skips.
        ("Europe/Berlin", datetime(2026, 10, 25, 2, 30)),
        ("Europe/Berlin", datetime(2026, 10, 25, 2, 30, fold=1)),
        ("Europe/Berlin", datetime(2026, 3, 29, 2, 30)),
        ("Europe/Berlin", datetime(2026, 3, 29, 2, 30, fold=1)),
    ],
)
def test_naive_times_without_use_tz_name_the_instant_the_orm_stores(settings, zone, local):
    settings.USE_TZ = False
    settings.TIME_ZONE = zone
    times = {"tstamp": local, "received": local, "started": local}
    write_snapshot({}, {"written": {"state": "SUCCESS", **times}})
    TaskState.objects.create(task_id="saved", state="SUCCESS", **times)
    table = connection.ops.quote_name(TaskState._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(DISTINCT tstamp), COUNT(DISTINCT received) FROM {table}")
        assert cursor.fetchone() == (1, 1)  # the same instants in the database
    written, saved = (TaskState.objects.get(task_id=t) for t in ("written", "saved"))
    read = (written.tstamp, written.received, written.started)
    assert read == (saved.tstamp, saved.received, saved.started)
    if local.month != 3 or local.hour != 2:  # a time the clock skipped reads an hour on
        assert read == (local, local, local)


@pytest.mark.django_db
def test_behind_a_transaction_pooler_nothing_is_prepared():
    # DISABLE_SERVER_SIDE_CURSORS is what Django asks of a database behind PgBouncer in
    # transaction mode: the writer then prepares no statement either.
    connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"] = True
    try:
        with CaptureQueriesContext(connection) as queries:
            write_snapshot({}, {"tid-pooled": {"state": "SUCCESS", "name": "t"}})
    finally:
        del connection.settings_dict["DISABLE_SERVER_SIDE_CURSORS"]
    assert not [q for q in queries if q["sql"].startswith(("PREPARE", "EXECUTE"))]
    assert TaskState.objects.get(task_id="tid-pooled").state == "SUCCESS"


@pytest.mark.django_db(transaction=True)  # the session is cut: no test transaction to keep
def test_a_session_cut_on_the_server_is_djangos_operational_error():
    """The camera keeps the rows of a shot on Django's OperationalError: every statement of
    a task batch, the driver's own included (COPY on psycopg 3), must raise that one."""
    from django.db import OperationalError

    from tests.sessions import cut_on_the_server

    if connection.vendor == "sqlite":
        pytest.skip("SQLite has no server to cut a connection")
    write_snapshot({}, {str(uuidlib.uuid4()): {"state": "RECEIVED", "tstamp": T0}})
    cut_on_the_server(connection)
    tid = str(uuidlib.uuid4())
    with pytest.raises(OperationalError):
        write_snapshot({}, {tid: {"state": "SUCCESS", "tstamp": T0}})
    connection.close()
    write_snapshot({}, {tid: {"state": "SUCCESS", "tstamp": T0}})
    assert TaskState.objects.get(task_id=tid).state == "SUCCESS"


@pytest.mark.django_db(transaction=True)  # SQLite stages a batch in a transaction of its own
def test_the_tasks_follow_a_worker_made_again_under_a_new_key():
    from django_celery_monitor.models import WorkerState

    first, second = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    task = {"state": "STARTED", "tstamp": T0, "worker": "w@host"}
    write_snapshot({"w@host": {"freq": 2.0}}, {first: task})
    old = WorkerState.objects.get(hostname="w@host").pk
    assert TaskState.objects.get(task_id=first).worker_id == old
    WorkerState.objects.filter(pk=old).delete()  # the writer still knows the old key
    write_snapshot({}, {second: {**task, "state": "SUCCESS"}})
    new = WorkerState.objects.get(hostname="w@host").pk
    assert new != old
    assert TaskState.objects.get(task_id=second).worker_id == new


def test_a_write_of_several_batches_in_one_transaction_merges_each_once():
    from django.db import transaction
    from django.test import override_settings

    first = {str(uuidlib.uuid4()): {"state": "RECEIVED", "tstamp": T0} for _ in range(10)}
    later = {
        task_id: {"state": "SUCCESS", "tstamp": T0 + timedelta(seconds=1), "result": "1"}
        for task_id in list(first)[:7]
    }
    with override_settings(CELERY_MONITOR_WRITE_BATCH_SIZE=3), transaction.atomic():
        writer = SnapshotWriter()
        assert writer.write({}, first)[1] == 10  # batches of 3, 3, 3 and 1
        assert writer.write({}, later)[1] == 7 or connection.vendor == "mysql"
    states = dict(TaskState.objects.values_list("task_id", "state"))
    assert states == {t: "SUCCESS" if t in later else "RECEIVED" for t in first}


@pytest.mark.django_db(transaction=True)  # each write commits, as the camera's do
def test_postgresql_keeps_its_staging_table_small_without_cutting_it_at_each_commit(
    monkeypatch,
):
    from django_celery_monitor import writer as writer_module
    from django_celery_monitor.writer import STAGE_TABLE

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's temporary table")
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if not is_psycopg3:
        pytest.skip("psycopg 3 stages by COPY")
    monkeypatch.setattr(writer_module, "TRUNCATE_STAGE_AFTER", 10)
    writer = SnapshotWriter()
    # Five rows to a page: kept in the row (under TOAST's 2 kB), and not compressible.
    big = os.urandom(752).hex()  # 1,504 characters

    def stage() -> tuple[int, int, int]:
        with connection.cursor() as cursor:
            table = f"pg_temp.{STAGE_TABLE}"
            cursor.execute(
                f"SELECT pg_relation_filenode(%s), pg_relation_size(%s), count(*) FROM {table}",
                [table, table],
            )
            return cursor.fetchone()

    task_ids = [str(uuidlib.uuid4()) for _ in range(120)]
    files, sizes = [], []
    for n in range(30):
        batch = task_ids[n * 4 : n * 4 + 4]
        writer.write({}, {t: {"state": "RECEIVED", "tstamp": T0, "args": big} for t in batch})
        files.append(stage()[0])
        sizes.append(stage()[1])
        assert stage()[2] == 4  # the last batch only: a DELETE emptied it before
    # Truncated every third write (4 + 4 + 4 rows reach 10): a new file each time.
    assert len(set(files)) == 10, files
    assert max(sizes) <= 3 * 8192, sizes  # at most 12 rows, dead or alive (else 120)
    done = {t: {"state": "SUCCESS", "tstamp": T0 + timedelta(seconds=1)} for t in task_ids}
    assert writer.write({}, done)[1] == 120  # the prepared merge, planned again, still merges
    assert set(TaskState.objects.values_list("state", flat=True)) == {"SUCCESS"}
    assert TaskState.objects.filter(args=big).count() == 120


def test_many_workers_are_merged_by_a_few_statements_each_row_by_its_own_values():
    from django_celery_monitor.models import WorkerState

    hostnames = [f"w{n:04d}@host" for n in range(700)]  # more than one statement takes
    # Recorded: offline, with a heartbeat a minute ahead of the incoming one for every
    # third worker (kept), a minute behind for the others (replaced).
    for n, hostname in enumerate(hostnames):
        late = n % 3 == 0
        WorkerState.objects.create(
            hostname=hostname,
            offline=True,
            processed=1,
            last_heartbeat=T0 + timedelta(minutes=1 if late else -1),
        )
    rows = {}
    for n, hostname in enumerate(hostnames):
        if n % 7 == 3:  # says nothing of its heartbeat nor of being offline
            rows[hostname] = {"processed": 1000 + n}
        else:
            beat = T0 + timedelta(milliseconds=n)
            rows[hostname] = {"last_heartbeat": beat, "offline": False, "processed": 1000 + n}
    with CaptureQueriesContext(connection) as queries:
        write_snapshot(rows, {})
    upserts = [q for q in queries.captured_queries if q["sql"].lstrip().startswith("INSERT")]
    assert len(upserts) <= 2 * 200, len(upserts)  # one a shape's run of rows (7 apart)
    recorded = {w.hostname: w for w in WorkerState.objects.all()}
    for n, hostname in enumerate(hostnames):
        worker = recorded[hostname]
        if n % 7 == 3:
            assert worker.processed == 1000 + n  # no heartbeat to compare: taken
            assert worker.offline is True  # the row did not say: the flag stays
            continue
        if n % 3 == 0:  # the recorded heartbeat is later: its flag and counts go with it
            assert (worker.last_heartbeat, worker.offline) == (T0 + timedelta(minutes=1), True)
            assert worker.processed == 1
        else:
            assert worker.processed == 1000 + n
            assert (worker.last_heartbeat, worker.offline) == (
                T0 + timedelta(milliseconds=n),
                False,
            )


@pytest.mark.parametrize(("most", "statements"), [(500, 1), (16, 4), (24, 3)])
def test_workers_of_one_shape_are_merged_by_one_statement_of_many_rows(
    monkeypatch, most, statements
):
    from django_celery_monitor import writer as writer_module
    from django_celery_monitor.models import WorkerState

    monkeypatch.setattr(writer_module, "STAGE_ROWS", most)  # rows a statement takes at most
    beats = {f"w{n:03d}@host": T0 + timedelta(seconds=n) for n in range(64)}
    WorkerState.objects.create(hostname="w005@host", last_heartbeat=T0 - timedelta(hours=1))
    rows = {
        h: {"last_heartbeat": beat, "offline": False, "freq": 2.0} for h, beat in beats.items()
    }
    with CaptureQueriesContext(connection) as queries:
        SnapshotWriter().write(rows, {})
    upserts = [q for q in queries.captured_queries if q["sql"].lstrip().startswith("INSERT")]
    assert len(upserts) == statements, [q["sql"][:80] for q in upserts]
    assert dict(WorkerState.objects.values_list("hostname", "last_heartbeat")) == beats
    assert set(WorkerState.objects.values_list("freq", "offline")) == {(2.0, False)}


def test_the_workers_tasks_name_are_made_when_missing_and_kept_when_present():
    from django_celery_monitor.models import WorkerState

    # More workers than one statement inserts; a few of them recorded already.
    hostnames = [f"w{n:04d}@host" for n in range(1203)]
    kept = {h: WorkerState.objects.create(hostname=h, freq=3.0).pk for h in hostnames[::100]}
    tasks = {
        str(uuidlib.uuid4()): {"state": "STARTED", "tstamp": T0, "worker": hostname}
        for hostname in hostnames
    }
    ids, written = write_snapshot({}, tasks)
    assert written == len(tasks)
    rows = dict(WorkerState.objects.values_list("hostname", "pk"))
    assert rows == ids and sorted(rows) == hostnames
    assert all(rows[h] == pk for h, pk in kept.items())
    assert WorkerState.objects.get(hostname=hostnames[0]).freq == 3.0  # not blanked
    for task_id, values in tasks.items():
        assert TaskState.objects.get(task_id=task_id).worker_id == rows[values["worker"]]


def test_a_write_naming_workers_that_exist_reads_them_and_inserts_none():
    from django_celery_monitor.models import WorkerState

    if connection.vendor != "mysql":
        pytest.skip("SQLite and PostgreSQL insert the workers first (DO NOTHING)")
    WorkerState.objects.create(hostname="w1@h")
    tasks = {str(uuidlib.uuid4()): {"state": "STARTED", "tstamp": T0, "worker": "w1@h"}}
    with CaptureQueriesContext(connection) as queries:
        ids, _ = write_snapshot({}, tasks)
    table = WorkerState._meta.db_table
    writes = [
        q["sql"] for q in queries.captured_queries
        if table in q["sql"] and not q["sql"].lstrip().upper().startswith("SELECT")
    ]  # fmt: skip
    assert writes == []
    assert ids == {"w1@h": WorkerState.objects.get().pk}
    assert TaskState.objects.get().worker_id == ids["w1@h"]


@pytest.mark.parametrize("spelling", ["celery@HOST1", "celery@host1", "Celery@Host1 "])
def test_hostnames_spelled_otherwise_are_other_workers_on_every_database(spelling):
    """Hostnames are compared byte for byte everywhere (on MySQL and MariaDB too, whose
    default collations ignore case and trailing spaces): each spelling is a worker of its
    own, its tasks name its row, and later shots insert nothing again."""
    from django_celery_monitor.models import WorkerState

    stored = WorkerState.objects.create(hostname="Celery@Host1")
    task = {"state": "STARTED", "tstamp": T0, "worker": spelling}
    ids, _ = write_snapshot({}, {"t1": task})
    other = WorkerState.objects.get(hostname=spelling)
    assert other.pk != stored.pk and ids == {spelling: other.pk}
    beat = {"last_heartbeat": T0, "offline": False, "freq": 2.0}
    with CaptureQueriesContext(connection) as queries:
        later, _ = write_snapshot({spelling: beat}, {"t2": {**task, "state": "SUCCESS"}})
        again, _ = write_snapshot({}, {"t3": task})
    assert later == again == ids
    assert sorted(TaskState.objects.values_list("worker_id", flat=True)) == [other.pk] * 3
    assert WorkerState.objects.get(pk=other.pk).last_heartbeat == T0
    assert WorkerState.objects.get(pk=stored.pk).last_heartbeat is None
    if connection.vendor == "mysql":  # read, found: never inserted again
        table = WorkerState._meta.db_table
        sql = [q["sql"] for q in queries.captured_queries if table in q["sql"]]
        assert not [q for q in sql if q.lstrip().upper().startswith("INSERT") and "freq" not in q]


@pytest.mark.django_db(transaction=True)  # another connection holds the write lock
def test_sqlite_a_write_naming_a_worker_waits_for_another_writers_lock_and_goes_on():
    """A SQLite transaction that read before it wrote could not wait for the write lock
    another process held: SQLite refused its write at once (database is locked)."""
    import sqlite3
    import threading

    if connection.vendor != "sqlite":
        pytest.skip("the lock of a SQLite file")
    write_snapshot({}, {str(uuidlib.uuid4()): {"state": "RECEIVED", "tstamp": T0,
                                                "worker": "w1@h"}})  # fmt: skip
    other = sqlite3.connect(connection.settings_dict["NAME"], timeout=0, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, other.rollback)
    release.start()
    task_id = str(uuidlib.uuid4())
    try:
        write_snapshot({}, {task_id: {"state": "SUCCESS", "tstamp": T0, "worker": "w1@h"}})
    finally:
        release.join()
        other.close()
    assert TaskState.objects.get(task_id=task_id).worker.hostname == "w1@h"


@pytest.mark.django_db(transaction=True)  # two connections, each with its transaction
def test_a_write_naming_a_worker_does_not_wait_for_another_writers_open_transaction():
    """Another camera's transaction, still open, wrote a task of the worker: on MySQL and
    MariaDB its check of the foreign key holds a lock on the worker's row. A write naming
    the same worker goes on without waiting for that transaction to end."""
    if connection.vendor == "sqlite":
        pytest.skip("SQLite lets one writer in at a time")
    write_snapshot({}, {str(uuidlib.uuid4()): {"state": "RECEIVED", "tstamp": T0,
                                                "worker": "w1@h"}})  # fmt: skip
    other = {str(uuidlib.uuid4()): {"state": "STARTED", "tstamp": T0, "worker": "w1@h"}}
    task_id = str(uuidlib.uuid4())
    with another_camera_writing(other):
        write_snapshot({}, {task_id: {"state": "SUCCESS", "tstamp": T0, "worker": "w1@h"}})
    assert TaskState.objects.get(task_id=task_id).worker.hostname == "w1@h"
    assert TaskState.objects.count() == 3


@pytest.mark.django_db(transaction=True)  # another connection holds the write lock
def test_sqlite_stages_a_batch_while_another_writer_holds_the_lock():
    import sqlite3

    from django_celery_monitor.writer import SnapshotWriter

    if connection.vendor != "sqlite":
        pytest.skip("the lock of a SQLite file")
    writer = SnapshotWriter()
    tid = str(uuidlib.uuid4())
    rows = [writer._task_params("default", tid, {"state": "SUCCESS", "tstamp": T0}, {})]
    other = sqlite3.connect(connection.settings_dict["NAME"], timeout=0)
    other.execute("BEGIN IMMEDIATE")
    try:
        writer._stage_unlocked("default", rows)  # waits for nothing: no lock of the database
    finally:
        other.rollback()
        other.close()
    assert writer._merge_staged("default") == 1
    assert TaskState.objects.get(task_id=tid).state == "SUCCESS"


@pytest.mark.django_db(transaction=True)  # statements traced on the writer's connection
def test_sqlite_a_writer_new_to_the_workers_stages_its_rows_before_it_takes_the_lock():
    """The first shot of a camera (or one naming a new worker): its workers are written in a
    transaction of their own, then its rows are made and staged, and the transaction that
    merges them holds SQLite's only write lock for the merge alone, not while Python makes
    the rows (which, beside the thread handling events, took most of that first shot)."""
    from django_celery_monitor import writer as writer_module
    from django_celery_monitor.models import WorkerState

    if connection.vendor != "sqlite":
        pytest.skip("the lock of a SQLite file")
    tasks = {
        str(uuidlib.uuid4()): {"state": "STARTED", "tstamp": T0, "worker": f"w{n % 3}@h"}
        for n in range(12)
    }
    connection.ensure_connection()
    statements: list[str] = []
    connection.connection.set_trace_callback(statements.append)
    try:
        ids, written = SnapshotWriter().write({"w0@h": {"last_heartbeat": T0}}, tasks)
    finally:
        connection.connection.set_trace_callback(None)
    table = f'INSERT INTO "{TaskState._meta.db_table}"'
    merge = next(n for n, s in enumerate(statements) if s.startswith(table))
    begin = max(n for n, s in enumerate(statements[:merge]) if s.startswith("BEGIN"))
    stage = f'INSERT INTO temp."{writer_module.STAGE_TABLE}"'
    assert not [s for s in statements[begin:merge] if s.startswith(stage)]
    assert [s for s in statements[:begin] if s.startswith(stage)]
    assert written == 12 and sorted(ids) == ["w0@h", "w1@h", "w2@h"]
    rows = TaskState.objects.select_related("worker")
    assert sorted((r.task_id, r.worker.hostname) for r in rows) == sorted(
        (task_id, values["worker"]) for task_id, values in tasks.items()
    )
    assert WorkerState.objects.get(hostname="w0@h").last_heartbeat == T0


def _cache_size() -> int:
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA cache_size")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)  # each case opens a connection of its own
@pytest.mark.parametrize(
    ("setting", "before", "after"),
    [
        (64, None, -64 * 1024),  # SQLite's own size (2 MiB): raised
        (8, None, -8 * 1024),
        (64, 1000, -64 * 1024),  # 1,000 pages (4 MiB at 4 KiB a page): raised
        (64, -128 * 1024, -128 * 1024),  # the project's larger cache is kept
        (64, 100_000, 100_000),  # 100,000 pages: about 400 MiB, kept
        (None, None, None),  # None: SQLite's own, untouched
    ],
)
def test_sqlite_writer_keeps_more_of_the_database_in_memory(setting, before, after):
    from django.test import override_settings

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's page cache")
    connection.close()
    connection.ensure_connection()
    if before is not None:
        connection.connection.execute(f"PRAGMA cache_size = {before}")
    own = _cache_size()
    tid = str(uuidlib.uuid4())
    with override_settings(CELERY_MONITOR_SQLITE_CACHE_SIZE=setting):
        SnapshotWriter().write({}, {tid: {"state": "SUCCESS", "tstamp": T0}})
        assert _cache_size() == (own if after is None else after)
        # Once a connection: the next writes do not ask again.
        statements: list[str] = []
        connection.connection.set_trace_callback(statements.append)
        try:
            SnapshotWriter().write({}, {tid: {"state": "SUCCESS", "tstamp": T0}})
        finally:
            connection.connection.set_trace_callback(None)
        assert statements
        assert not [s for s in statements if "cache_size" in s.lower()]
        # A new connection (Django's reconnects) is sized again.
        connection.close()
        SnapshotWriter().write({}, {tid: {"state": "SUCCESS", "tstamp": T0}})
        assert _cache_size() == (own if setting is None else -setting * 1024)
    assert TaskState.objects.get(task_id=tid).state == "SUCCESS"
    connection.close()  # the next test gets SQLite's own size


@contextlib.contextmanager
def sqlite_parameters(limit: int) -> Iterator[Any]:
    """Let the SQLite connection take ``limit`` parameters a statement; yield the driver's
    connection. Skips on other databases, and where Python cannot set the limit."""
    import sqlite3

    if connection.vendor != "sqlite":
        pytest.skip("SQLite's limit on the parameters of a statement")
    connection.ensure_connection()
    raw = connection.connection
    if not hasattr(raw, "setlimit"):
        pytest.skip("Python 3.11 sets a connection's limits")
    previous = raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
    try:
        yield raw
    finally:
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, previous)


@pytest.mark.django_db(transaction=True)
def test_the_missing_workers_fit_sqlites_oldest_limit_of_parameters():
    from django_celery_monitor.models import WorkerState

    hostnames = [f"w{n:04d}@host" for n in range(700)]
    with sqlite_parameters(999):
        SnapshotWriter().write({}, {f"t-{n}": {"state": "STARTED", "tstamp": T0, "worker": h}
                                    for n, h in enumerate(hostnames)})  # fmt: skip
    assert sorted(WorkerState.objects.values_list("hostname", flat=True)) == hostnames


@pytest.mark.django_db(transaction=True)  # SQLite stages a batch in a transaction of its own
def test_sqlite_stages_a_batch_in_inserts_of_as_many_rows_as_the_database_takes():
    from django_celery_monitor import writer as writer_module

    statements: list[str] = []
    tasks = {
        f"tid-{n:03d}": {
            "state": ("SUCCESS", "FAILURE", "STARTED")[n % 3],
            "tstamp": T0 + timedelta(seconds=n),
            "name": None if n % 5 == 0 else f"proj.t{n % 4}",
            "args": f"('ü{n}', 'x' * 2)",
            "runtime": n / 7,
            "retries": n % 4,
            "worker": "w1@h",
        }
        for n in range(37)
    }
    # 100 parameters: 4 rows of 21 columns a statement, where 5 would fail to run.
    with sqlite_parameters(100) as raw:
        raw.set_trace_callback(statements.append)
        try:
            # A writer of its own: it knows no worker's key yet, so it writes the worker
            # first, and then stages the batch once, before the transaction that merges it.
            SnapshotWriter().write({"w1@h": {"last_heartbeat": T0}}, tasks)
        finally:
            raw.set_trace_callback(None)
    head = f'INSERT INTO temp."{writer_module.STAGE_TABLE}"'
    staged = [s for s in statements if s.startswith(head)]
    assert len(staged) == 10  # 9 of 4 rows and the last one's
    for task_id, values in tasks.items():
        row = TaskState.objects.select_related("worker").get(task_id=task_id)
        assert (row.state, row.tstamp, row.name, row.args, row.runtime, row.retries) == (
            values["state"], values["tstamp"], values["name"], values["args"],
            values["runtime"], values["retries"],
        )  # fmt: skip
        assert row.worker.hostname == "w1@h"
