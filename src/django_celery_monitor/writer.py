"""The write path: the merge rules of a task row, and the batch write that applies them in SQL.

A snapshot is written as one UPSERT per batch: ``INSERT ... ON CONFLICT DO UPDATE`` on SQLite
and PostgreSQL, ``INSERT ... ON DUPLICATE KEY UPDATE`` on MySQL and MariaDB, compiled once per
database connection, and fed a batch in the database's bulk form (a temporary table, filled
by multi-row INSERTs on SQLite and by COPY on psycopg 3; arrays on psycopg 2; a multi-row
``VALUES`` on mysqlclient). Its update clause is the merge: the database applies it to the
recorded row, so no row's values are read before the write, and several cameras can write
the same rows at once (a row's merge is one atomic statement, and merging the same values
twice changes nothing). On MySQL and MariaDB the keys of some rows, and of the workers, are
read first, without a lock, so that a write locks fewer rows (:meth:`SnapshotWriter._task_keys`).

The rules (:data:`TASK_RULES`) are written once and turned both into SQL and into the Python
merge the camera applies to the rows it still holds:

- the state of the event that wins replaces the recorded one: a finished state (SUCCESS,
  FAILURE, REVOKED) beats an unfinished one and, among finished states, Celery's precedence
  decides; among unfinished states the later event wins, and at the same time the higher
  precedence (:func:`incoming_state_wins`);
- the values of the winning event replace the recorded ones, but a missing value never blanks
  one an earlier event set;
- what only task-received carries (name, args, kwargs, eta, ...) and the worker are filled in
  by any event while they are empty;
- the received and started times keep the latest, ``retries`` the highest;
- a row the expiry hid, or marked lost, comes back when a winning event arrives.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import threading
import time
import weakref
import zoneinfo
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from celery import states
from django.apps import apps
from django.conf import settings as django_settings
from django.db import (
    DatabaseError,
    IntegrityError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.utils import timezone

from .conf import MonitorSettings, monitor_settings
from .sanitize import MAX_CLOCK_SKEW, MAX_INT
from .utils import fromtimestamp, posix_timestamp

logger = logging.getLogger(__name__)

#: The note of a task the camera may have missed events of (it restarted meanwhile).
STALE_NOTE = (
    "The camera restarted while this task was unfinished, and no result backend could say "
    "how it ended: its state may be stale."
)
#: The note of a task whose final state was read from the result backend.
RECONCILED_NOTE = "Finished while the camera was away: its end was read from the result backend."

# The rules, by field. WINNER: the value of the winning event, never blanked by a missing
# one. FILL: the winner's value, and any event's while the field is empty. LATEST and MOST:
# the latest time and the highest number, whoever wins. CLEARED: false again when an event
# wins (the task moved on). NOTE: the winner's note; a winning event clears the stale note.
WINNER, FILL, LATEST, MOST, CLEARED, NOTE = "winner", "fill", "latest", "most", "cleared", "note"

TASK_RULES: dict[str, str] = {
    "name": FILL,
    "args": FILL,
    "kwargs": FILL,
    "eta": FILL,
    "expires": FILL,
    "parent_id": FILL,
    "root_id": FILL,
    "worker_id": FILL,
    "result": WINNER,
    "exception": WINNER,
    "traceback": WINNER,
    "runtime": WINNER,
    "received": LATEST,
    "started": LATEST,
    "retries": MOST,
    "hidden": CLEARED,
    "lost": CLEARED,
    "note": NOTE,
    # Last: MySQL applies its assignments in order, and these two decide the others.
    "state": WINNER,
    "tstamp": WINNER,
}
#: The columns of a task row the writer sets, in the order of its statement.
TASK_COLUMNS = ("task_id", *TASK_RULES)
_STATE_AT = TASK_COLUMNS.index("state")
#: The fields of a task row that are datetimes.
TASK_DATETIMES = frozenset({"tstamp", "eta", "expires", "received", "started"})
#: The worker of a row the camera holds is its hostname; in the database, its key.
_RULES_IN_MEMORY = {**TASK_RULES, "worker": FILL}

#: How often a batch is written again when the database chose it as a deadlock's victim.
WRITE_ATTEMPTS = 4

# The rank of a state: finished states above READY_RANK, by Celery's precedence, then the
# unfinished ones, by precedence too (a state Celery does not define ranks as Celery's None).
READY_RANK = 90


def state_rank(state: str | None) -> int:
    """Return the rank of ``state``: a higher rank wins (among unfinished: at the same time)."""
    if state is None:
        return -1
    precedence = states.precedence(state)
    return (100 if state in states.READY_STATES else 50) - precedence


def _instant(value: Any) -> float | None:
    if not isinstance(value, datetime):
        return None
    return posix_timestamp(value, stored=True)


def incoming_state_wins(
    current: str | None,
    incoming: str,
    current_tstamp: datetime | None = None,
    incoming_tstamp: datetime | None = None,
) -> bool:
    """Tell whether a task in state ``incoming`` replaces the recorded state ``current``.

    A finished state (SUCCESS, FAILURE, REVOKED) always beats an unfinished one, and among
    finished states Celery's precedence decides (SUCCESS, then FAILURE, then REVOKED): a late
    or redelivered event never takes a finished task back. Of the same finished state twice
    (a task revoked by two workers, or run again), the later event wins, as in the camera's
    own notes, however the shots or the cameras split the events. PENDING (a client's task-sent)
    beats no other state, whatever the times: the client times it by its own clock, and
    after it sent the message, so it may come later than the worker's received or started.
    Among the other unfinished states the later event wins (a retried task is received and
    started again; a late task-retried of an earlier attempt loses to the attempt that
    followed it), and at the same time, or when the times are unknown, Celery's rules: the
    higher precedence wins and RETRY always moves on.
    """
    if current is None:
        return True
    old, new = state_rank(current), state_rank(incoming)
    then, now = _instant(current_tstamp), _instant(incoming_tstamp)
    if old >= READY_RANK or new >= READY_RANK:
        if current == incoming and then is not None and now is not None:
            return now >= then
        return new >= old
    if (current == states.PENDING) != (incoming == states.PENDING):
        return incoming != states.PENDING
    if then is not None and now is not None and then != now:
        return now > then
    if states.RETRY in (current, incoming) and then is None:
        return True
    return new >= old


def merge_task_values(current: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> dict:
    """Return the fields of a task row that ``incoming`` changes, by :data:`TASK_RULES`.

    ``current`` is the recorded row (None when there is none); ``incoming`` the values a
    snapshot saw. This is what the SQL of :class:`TaskWriter` does in the database; the
    camera uses it to merge the rows it has not written yet.
    """
    if current is None:
        return {key: value for key, value in incoming.items() if value is not None}
    wins = incoming_state_wins(
        current.get("state"), incoming["state"], current.get("tstamp"), incoming.get("tstamp")
    )
    changes: dict[str, Any] = {}
    for key, rule in _RULES_IN_MEMORY.items():
        value, recorded = incoming.get(key), current.get(key)
        if rule == CLEARED:
            if wins and recorded:
                changes[key] = False
            continue
        if rule == NOTE:
            if wins and value is not None and value != recorded:
                changes[key] = value
            elif wins and value is None and recorded == STALE_NOTE:
                changes[key] = None  # an event arrived: the state is no longer stale
            continue
        if value is None or value == recorded:
            continue
        if rule == WINNER:
            take = wins
        elif rule == FILL:
            take = wins or recorded is None
        elif rule == LATEST:
            take = recorded is None or _instant(value) > _instant(recorded)
        else:  # MOST
            take = recorded is None or value > recorded
        if take:
            changes[key] = value
    return changes


# -- SQL -------------------------------------------------------------------------------------


class _Dialect:
    """How one database names the incoming and the recorded values of an UPSERT."""

    def __init__(self, connection: Any, table: str, key: str) -> None:
        self.vendor = connection.vendor
        self.quote = connection.ops.quote_name
        self.table = self.quote(table)
        self.key = key
        self.mysql = self.vendor == "mysql"

    def new(self, column: str) -> str:
        if self.mysql:
            return f"VALUES({self.quote(column)})"
        return f"excluded.{self.quote(column)}"

    def old(self, column: str) -> str:
        return f"{self.table}.{self.quote(column)}"

    def differs(self, left: str, right: str) -> str:
        if self.vendor == "sqlite":
            return f"({left}) IS NOT ({right})"
        if self.mysql:
            return f"NOT (({left}) <=> ({right}))"
        return f"({left}) IS DISTINCT FROM ({right})"

    def insert(
        self,
        columns: Iterable[str],
        assignments: list[tuple[str, str]],
        where: str,
        source: str | None = None,
    ) -> str:
        """The UPSERT of the rows of ``source`` (a SELECT), or of one row of parameters."""
        columns = list(columns)
        names = ", ".join(self.quote(c) for c in columns)
        if source is None:
            source = "VALUES (" + ", ".join("%s" for _ in columns) + ")"
        head = f"INSERT INTO {self.table} ({names}) {source}"
        sets = ", ".join(f"{self.quote(c)} = {expression}" for c, expression in assignments)
        if self.mysql:
            return f"{head} ON DUPLICATE KEY UPDATE {sets}"
        tail = f" WHERE {where}" if where else ""
        return f"{head} ON CONFLICT ({self.quote(self.key)}) DO UPDATE SET {sets}{tail}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''").replace("%", "%%") + "'"


def _rank_sql(expression: str) -> str:
    known = sorted(states.ALL_STATES | {states.REJECTED})
    cases = " ".join(f"WHEN {_literal(s)} THEN {state_rank(s)}" for s in known)
    return f"(CASE {expression} {cases} ELSE {state_rank('')} END)"


#: SQLite, PostgreSQL: the temporary table a batch is put in before one statement merges it.
STAGE_TABLE = "celery_monitor_batch"
#: PostgreSQL: the merge each connection (of any writer) has prepared.
_PREPARED: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_PER_CONNECTION_LOCK = threading.Lock()
#: SQLite: the driver's connection whose page cache each Django connection has sized.
_CACHE_SIZED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
#: PostgreSQL: the rows each connection has put in its temporary table since it was last
#: truncated (the rows a DELETE left there, dead, until then).
_STAGED_ROWS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
#: PostgreSQL: past this many rows staged, the next batch truncates the temporary table.
TRUNCATE_STAGE_AFTER = 5_000


#: MySQL: the session variable in which the state's assignment keeps, for the row being
#: merged, whether it won (the time's assignment reads it).
MYSQL_WINS = "@celery_monitor_wins"


def task_upsert_sql(
    connection: Any, table: str, source: str | None = None, key: str | None = None
) -> str:
    """Return the UPSERT that merges task rows into ``table`` by :data:`TASK_RULES`.

    The rows are those of ``source`` (a SELECT of :data:`TASK_COLUMNS`, in task id order) or,
    by default, one row of parameters; with ``key`` (MySQL), a row's primary key comes
    first: NULL where the writer does not know it (the row is then found by its task id).
    """
    d = _Dialect(connection, table, "task_id")
    new, old = d.new, d.old
    new_rank, old_rank = _rank_sql(new("state")), _rank_sql(old("state"))
    pending = _literal(states.PENDING)
    wins = (
        f"(CASE WHEN {new_rank} >= {READY_RANK} OR {old_rank} >= {READY_RANK}"
        # The same finished state twice: the later event (incoming_state_wins).
        f" THEN (CASE WHEN {new('state')} = {old('state')} THEN {new('tstamp')} >= {old('tstamp')}"
        f" ELSE {new_rank} > {old_rank} END)"
        # A client's PENDING beats no other state, whatever its time (incoming_state_wins).
        f" WHEN ({new('state')} = {pending}) <> ({old('state')} = {pending})"
        f" THEN {new('state')} <> {pending}"
        f" WHEN {new('tstamp')} <> {old('tstamp')} THEN {new('tstamp')} > {old('tstamp')}"
        f" ELSE {new_rank} >= {old_rank} END)"
    )
    assignments = []
    for column, rule in TASK_RULES.items():
        n, o = new(column), old(column)
        if rule == WINNER:
            sql = f"CASE WHEN {n} IS NULL THEN {o} WHEN {wins} THEN {n} ELSE {o} END"
        elif rule == FILL:
            sql = (
                f"CASE WHEN {n} IS NULL THEN {o} WHEN {o} IS NULL THEN {n}"
                f" WHEN {wins} THEN {n} ELSE {o} END"
            )
        elif rule in (LATEST, MOST):
            sql = (
                f"CASE WHEN {n} IS NULL THEN {o} WHEN {o} IS NULL OR {n} > {o}"
                f" THEN {n} ELSE {o} END"
            )
        elif rule == CLEARED:
            sql = f"CASE WHEN {wins} THEN FALSE ELSE {o} END"
        else:  # NOTE
            sql = (
                f"CASE WHEN {wins} AND {n} IS NOT NULL THEN {n}"
                f" WHEN {wins} AND {o} = {_literal(STALE_NOTE)} THEN NULL ELSE {o} END"
            )
        if d.mysql and column == "state":
            # MySQL applies its assignments in order, each seeing the columns before it as
            # they now are: the time, assigned after the state, can no longer tell whether
            # the incoming row won (a worker's state beats a client's PENDING of a later
            # time). The state's assignment keeps that in a variable of the session, set
            # by the condition itself (which is evaluated for every row merged).
            sql = (
                f"CASE WHEN ({MYSQL_WINS} := {wins})"
                f" THEN (CASE WHEN {n} IS NULL THEN {o} ELSE {n} END) ELSE {o} END"
            )
        elif d.mysql and column == "tstamp":
            sql = f"CASE WHEN {n} IS NULL THEN {o} WHEN {MYSQL_WINS} THEN {n} ELSE {o} END"
        assignments.append((column, sql))
    # Only rows that change are written (PostgreSQL keeps no dead copy of the others, and
    # the count of written rows means something).
    where = " OR ".join(d.differs(sql, old(column)) for column, sql in assignments)
    columns = (key, *TASK_COLUMNS) if key else TASK_COLUMNS
    return d.insert(columns, assignments, where, source)


def batch_source(connection: Any, model: Any) -> tuple[str, str]:
    """How a batch reaches the UPSERT on this database: ``(form, SELECT)``.

    The statement of the merge is long, and SQLite pays for its length on every execution:
    there a batch goes into a temporary table, and one statement merges all of it
    (``"staged"``). PostgreSQL with psycopg 3 takes the batch into a temporary table by
    ``COPY`` (``"copied"``: a third of the cost of passing it as arrays, which psycopg 2
    still does: ``"arrays"``), and merges it with one statement too. MySQL's driver turns
    ``executemany`` into multi-row ``VALUES`` (``"rows"``).
    """
    quote = connection.ops.quote_name
    names = ", ".join(quote(c) for c in TASK_COLUMNS)
    order = f" ORDER BY {quote('task_id')}"  # the order rows are locked in: no deadlock
    if connection.vendor == "sqlite":
        # One writer at a time: no lock order to keep. The staged rows, in the order they
        # were staged (sorted by task id), need no sort.
        return "staged", f"SELECT {names} FROM temp.{quote(STAGE_TABLE)} WHERE true"
    if connection.vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import is_psycopg3

        if is_psycopg3:
            return "copied", f"SELECT {names} FROM pg_temp.{quote(STAGE_TABLE)}{order}"
        fields = {f.attname: f for f in model._meta.concrete_fields}
        arrays = ", ".join(f"%s::{fields[c].db_type(connection)}[]" for c in TASK_COLUMNS)
        return "arrays", f"SELECT * FROM unnest({arrays}) AS batch ({names}){order}"
    return "rows", ""


def worker_upsert_sql(
    connection: Any,
    table: str,
    columns: tuple[str, ...],
    rows: int = 1,
    offline_given: bool = True,
    floor_given: bool = False,
) -> tuple[str, list[str]]:
    """Return the UPSERT of ``rows`` worker rows, and the names of the parameters that
    follow theirs (the ``columns`` of each row, in order).

    The recorded heartbeat is replaced when it is at most the floor (the incoming
    heartbeat; with ``floor_given``, a parameter ``floor``: later when the clock went back)
    or later than ``ahead`` (it was written from a clock that ran ahead). What a worker
    said with its heartbeat (its counters, load, software) and its offline flag go with
    the heartbeat they came with: a row of an older heartbeat than the recorded one (from
    a camera that shares the events with another, and wrote later) changes none of them.
    Without ``offline_given`` the rows do not say, and the recorded flag stays. The
    parameters that follow the rows' are at most twice as many as ``columns``.
    """
    d = _Dialect(connection, table, "hostname")
    new, old = d.new, d.old
    beat, recorded = new("last_heartbeat"), old("last_heartbeat")
    floor = "%s" if floor_given else beat
    replaces = f"{recorded} IS NULL OR {recorded} <= {floor} OR {recorded} > %s"
    taken = f"({beat} IS NOT NULL AND ({replaces}))"
    # A heartbeat older than the recorded one (MySQL applies its assignments in order:
    # all before the heartbeat's, which they read).
    older = f"{beat} IS NOT NULL AND NOT {taken}"
    taken_params = ["floor", "ahead"] if floor_given else ["ahead"]
    assignments, order = [], []
    for column in columns:
        if column in ("hostname", "last_heartbeat", "offline"):
            continue
        if column == "last_update":
            assignments.append((column, new(column)))
            continue
        merged = f"COALESCE({new(column)}, {old(column)})"
        assignments.append((column, f"CASE WHEN {older} THEN {old(column)} ELSE {merged} END"))
        order += taken_params
    if offline_given:
        # MySQL applies its assignments in order: the flag before the heartbeat it reads.
        assignments.append(
            (
                "offline",
                f"CASE WHEN {older} THEN {old('offline')} ELSE {new('offline')} END",
            )
        )
        order += taken_params
    assignments.append(("last_heartbeat", f"CASE WHEN {taken} THEN {beat} ELSE {recorded} END"))
    order += taken_params
    row = "(" + ", ".join("%s" for _ in columns) + ")"
    return d.insert(columns, assignments, "", "VALUES " + ", ".join([row] * rows)), order


# -- writing ---------------------------------------------------------------------------------


def _is_deadlock(exc: BaseException) -> bool:
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if sqlstate in ("40P01", "40001"):
        return True
    args = getattr(cause, "args", ()) or exc.args
    return bool(args) and args[0] in (1213, 1205)  # MySQL: deadlock, lock wait timeout


#: Past this many workers' keys kept (SQLite), the writer forgets them and reads them again.
MAX_KNOWN_WORKERS = 10_000
#: MySQL: the most unfinished tasks the writer remembers writing (the older half goes then).
MAX_UNFINISHED = 100_000


class WritesFirst:
    """Lets the writes of this process to a SQLite database go before its cleanup's batches.

    SQLite lets one writer in at a time, and a writer that finds the file locked sleeps
    between its tries, up to 100 ms at a time: it can sleep through the pause between two
    batches of a long cleanup, and the next one, and wait seconds for its turn although no
    batch takes half a second. The camera writes its shots and runs its cleanup on threads
    of one process: each write is noted here while it runs (:meth:`writing`), and each
    batch of a cleanup first waits for the writes under way to end (:meth:`wait`). Writers
    of other processes still take their turn by SQLite's busy handler.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._tickets = 0
        self._running: dict[str, set[int]] = {}

    @contextlib.contextmanager
    def writing(self, db: str) -> Iterator[None]:
        """Note a write to ``db`` for as long as the block runs."""
        with self._changed:
            self._tickets += 1
            ticket = self._tickets
            self._running.setdefault(db, set()).add(ticket)
        try:
            yield
        finally:
            with self._changed:
                self._running[db].discard(ticket)
                self._changed.notify_all()

    def wait(self, db: str, timeout: float) -> bool:
        """Wait until the writes to ``db`` under way now have ended, for ``timeout`` seconds
        at most; return whether they did. Writes that begin meanwhile are not waited for:
        a camera that writes without a pause does not hold the cleanup back."""
        with self._changed:
            last = self._tickets
            return self._changed.wait_for(
                lambda: all(ticket > last for ticket in self._running.get(db, ())), timeout
            )


#: The writes this process has under way, for its cleanup to let them go first.
writes_first = WritesFirst()


class SnapshotWriter:
    """Writes snapshots (worker rows, then task rows) into one database.

    The statements are compiled once per database connection; ``settings`` is the camera's
    :class:`~.conf.MonitorSettings` (the batch size).
    """

    def __init__(self, using: str | None = None, settings: MonitorSettings | None = None) -> None:
        self.using = using
        self.settings = settings or monitor_settings
        self._compiled: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        #: Per database, the workers' keys as last written (SQLite: see :meth:`_write_sqlite`).
        self._worker_ids: dict[str, dict[str, int]] = {}
        #: Per database, the unfinished tasks last written (MySQL: see :meth:`_task_keys`).
        self._unfinished: dict[str, dict[str, None]] = {}
        self._unfinished_lock = threading.Lock()

    # The models come from the app registry, not by import: the models' managers hand
    # writes to this module (``update_state``, and the cleanup waits for the writes).
    @staticmethod
    def _models() -> tuple[Any, Any]:
        config = apps.get_containing_app_config(__name__)
        return config.get_model("TaskState"), config.get_model("WorkerState")

    def database(self) -> str:
        TaskState, _ = self._models()
        return self.using or router.db_for_write(TaskState)

    def write(
        self, workers: Mapping[str, Mapping[str, Any]], tasks: Mapping[str, Mapping[str, Any]]
    ) -> tuple[dict[str, int], int]:
        """Write worker rows, then task rows; return (hostname -> key, task rows written).

        The count is of the rows inserted or changed; on MySQL and MariaDB, which do not
        tell, of the rows merged.

        ``workers`` maps hostnames to WorkerState field values; ``tasks`` maps task ids to
        TaskState field values, the worker given by hostname under ``"worker"``. The workers
        are committed first (and on their own, so that writers of other tasks do not wait on
        them), the tasks then in one transaction: a batch is written whole or not at all. A
        batch the database chose as a deadlock's victim is written again; any other error
        propagates.
        """
        db = self.database()
        worker_rows = {hostname: dict(values) for hostname, values in workers.items()}
        for values in tasks.values():
            hostname = values.get("worker")
            if hostname and hostname not in worker_rows:
                worker_rows[hostname] = {}
        _, adapters, _ = self._task_statement(db)
        if connections[db].vendor == "sqlite":
            with writes_first.writing(db):
                return self._write_sqlite(db, worker_rows, tasks, adapters)
        worker_ids = self._retrying(db, lambda: self._write_workers(db, worker_rows))
        rows = self._task_rows(db, tasks, worker_ids, adapters)
        written = self._retrying(db, lambda: self._write_tasks(db, rows)) if rows else 0
        if rows and connections[db].vendor == "mysql":
            self._note_unfinished(db, rows)
        return worker_ids, written

    def _write_sqlite(
        self,
        db: str,
        worker_rows: Mapping[str, Mapping[str, Any]],
        tasks: Mapping[str, Mapping[str, Any]],
        adapters: Sequence[Any],
    ) -> tuple[dict[str, int], int]:
        """SQLite: the workers and the tasks in one transaction (one commit), which holds
        the database's only write lock for as short a time as it can.

        The task rows are made ready, and staged in the connection's temporary table, before
        the transaction begins: that needs no lock on the database, and other writers (other
        cameras, shards) go on writing meanwhile. The rows name their workers by the keys
        the last write read (workers it did not name are written first, in a transaction of
        their own); in the transaction, the workers are written, and should a key have
        changed (a worker deleted meanwhile, and made again), the rows are made and staged
        again there.
        """
        self._size_cache(connections[db])
        known = self._worker_ids.setdefault(db, {})
        named = {values["worker"] for values in tasks.values() if values.get("worker")}
        staged = {hostname: known.get(hostname) for hostname in named}
        early = bool(tasks) and len(tasks) <= self.settings.write_batch_size
        written_first: dict[str, int] = {}
        if early and None in staged.values():
            # Workers this writer has not written yet (its first shot, a new worker): they
            # are written first, on their own, so that the rows can be staged with their
            # keys; the transaction then checks the keys only. Otherwise the rows would be
            # made in it, holding the lock while other writers wait.
            written_first = self._retrying(db, lambda: self._write_workers(db, worker_rows))
            known.update(written_first)
            worker_rows = {hostname: {} for hostname in named}
            staged = {hostname: known.get(hostname) for hostname in named}
            early = None not in staged.values()
        if early:
            self._stage_unlocked(db, self._task_rows(db, tasks, staged, adapters))

        def both() -> tuple[dict[str, int], int]:
            ids = self._write_workers(db, worker_rows)
            if early and all(ids.get(h) == key for h, key in staged.items()):
                return ids, self._merge_staged(db)
            params = self._task_rows(db, tasks, ids, adapters)
            return ids, self._write_tasks(db, params) if params else 0

        ids, written = self._retrying(db, both)
        ids = {**written_first, **ids}
        if len(known) > MAX_KNOWN_WORKERS:
            known.clear()
        known.update(ids)
        return ids, written

    def _size_cache(self, connection: Any) -> None:
        """Let a SQLite connection keep ``monitor_sqlite_cache_size`` MiB of pages, once.

        A merge changes a dozen indexes at places spread over the whole table. In SQLite's
        own 2 MiB, a batch into a table of 400,000 rows read most of those pages again from
        the file, and spilled changed ones to it before the commit: the merge took 2.7 times
        as long as with 64 MiB. A connection set to keep more (by the project's
        ``init_command``) keeps what it has.
        """
        connection.ensure_connection()
        raw = connection.connection
        with _PER_CONNECTION_LOCK:
            if _CACHE_SIZED.get(connection) is raw:
                return
        mebibytes = self.settings.sqlite_cache_size
        if mebibytes:
            with connection.wrap_database_errors:
                (pages,) = raw.execute("PRAGMA cache_size").fetchone()
                if pages >= 0:
                    (page_size,) = raw.execute("PRAGMA page_size").fetchone()
                    kibibytes = pages * page_size // 1024
                else:
                    kibibytes = -pages  # a negative size is in KiB
                if kibibytes < mebibytes * 1024:
                    raw.execute(f"PRAGMA cache_size = {-mebibytes * 1024}")
        with _PER_CONNECTION_LOCK:
            _CACHE_SIZED[connection] = raw

    def _stage_unlocked(self, db: str, rows: list[list[Any]]) -> None:
        """Stage ``rows`` outside the transaction that merges them (SQLite).

        A transaction of its own, which writes the connection's temporary database only and
        so takes no lock on the main one; inside a transaction already open (a caller's
        ``atomic``, or a connection out of autocommit), the rows are staged in that one.
        """
        connection = connections[db]
        with connection.cursor() as cursor:
            if not connection.get_autocommit():
                self._stage(cursor, rows)
                return
            cursor.execute("BEGIN DEFERRED")
            try:
                self._stage(cursor, rows)
                cursor.execute("COMMIT")
            except BaseException:
                # Never leave the connection in a transaction Django does not know of.
                if connection.connection.in_transaction:
                    connection.connection.rollback()
                raise

    def _merge_staged(self, db: str) -> int:
        """Merge the rows staged by :meth:`_stage_unlocked` into the table (SQLite)."""
        sql, _, _ = self._task_statement(db)
        with connections[db].cursor() as cursor:
            cursor.execute(sql)
            return cursor.rowcount

    def _retrying(self, db: str, write: Any) -> Any:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with transaction.atomic(using=db):
                    return write()
            except (OperationalError, IntegrityError, DatabaseError) as exc:
                if attempt == WRITE_ATTEMPTS - 1 or not _is_deadlock(exc):
                    raise
                logger.info("A write was a deadlock's victim; writing it again.")
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- tasks -----------------------------------------------------------------------------

    def _statement(self, db: str, kind: Hashable, build: Any) -> Any:
        connection = connections[db]
        # The time zone settings too: the adapters of times are made for them.
        key = (db, kind, connection.vendor, django_settings.USE_TZ, django_settings.TIME_ZONE)
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._compiled[key] = build(connection)
        return compiled

    def _task_statement(self, db: str) -> tuple[str, list[Any], str]:
        def build(connection: Any) -> tuple[str, list[Any], str]:
            TaskState, _ = self._models()
            form, source = batch_source(connection, TaskState)
            key = TaskState._meta.pk.column if connection.vendor == "mysql" else None
            sql = task_upsert_sql(connection, TaskState._meta.db_table, source or None, key)
            if form == "staged":
                # Run without parameters, which Django then sends as it is, where it would
                # search the long statement for its marks on every shot: %% stands for %.
                sql = sql.replace("%%", "%")
            adapters = [_adapter(connection, column) for column in TASK_COLUMNS]
            return sql, adapters, form

        return self._statement(db, "task", build)

    def _task_rows(
        self,
        db: str,
        tasks: Mapping[str, Mapping[str, Any]],
        worker_ids: Mapping[str, int | None],
        adapters: Sequence[Any],
    ) -> list[list[Any]]:
        """The parameters of ``tasks``' rows, in the order of their ids (the lock order)."""
        return [
            self._task_params(db, task_id, values, worker_ids, adapters)
            for task_id, values in sorted(tasks.items())
        ]

    def _task_params(
        self,
        db: str,
        task_id: str,
        values: Mapping[str, Any],
        worker_ids: Mapping[str, int],
        adapters: Sequence[Any] | None = None,
    ) -> list[Any]:
        if adapters is None:
            _, adapters, _ = self._task_statement(db)
        row = dict(values)
        hostname = row.pop("worker", None)
        if hostname is not None or "worker_id" not in row:
            row["worker_id"] = worker_ids.get(hostname) if hostname else None
        if row.get("tstamp") is None:
            row["tstamp"] = timezone.now()
        if row.get("retries") is None:
            row["retries"] = 0
        row["hidden"] = bool(row.get("hidden"))
        row["lost"] = bool(row.get("lost"))
        row["task_id"] = task_id
        return [
            adapt(row.get(column)) for column, adapt in zip(TASK_COLUMNS, adapters, strict=True)
        ]

    def _write_tasks(self, db: str, rows: list[list[Any]]) -> int:
        sql, _, form = self._task_statement(db)
        connection = connections[db]
        batch = self.settings.write_batch_size
        written = 0
        with connection.cursor() as cursor:
            for start in range(0, len(rows), batch):
                chunk = rows[start : start + batch]
                if form == "staged":
                    self._stage(cursor, chunk)
                    cursor.execute(sql)
                elif form == "copied":
                    self._copy(cursor, chunk)
                    self._execute_prepared(cursor, sql)
                elif form == "arrays":
                    cursor.execute(sql, [list(column) for column in zip(*chunk, strict=True)])
                elif connection.vendor == "mysql":
                    keys = self._task_keys(db, cursor, [row[0] for row in chunk])
                    cursor.executemany(sql, [[keys.get(row[0]), *row] for row in chunk])
                else:
                    cursor.executemany(sql, chunk)
                written += cursor.rowcount if cursor.rowcount >= 0 else len(chunk)
        if connection.vendor == "mysql":
            # Django's MySQL connections count an unchanged row as found, like a new one:
            # the count says how many rows were merged, not which of them changed.
            written = len(rows)
        return written

    def _task_keys(self, db: str, cursor: Any, task_ids: list[str]) -> dict[str, int]:
        """The primary keys of the rows of ``task_ids`` recorded already (MySQL).

        Read without a lock, for the merge to name the rows by them. A row the merge finds
        by its task id alone (the unique index) is locked with the gap before it in that
        index, until the transaction commits: a new task of another camera (another shard)
        whose id falls in that gap waits for it. Found by its primary key, the row alone
        is locked. A row recorded meanwhile by another camera, or deleted and recorded
        again, is still found by its task id. A key read here never names another task's
        row: keys are only ever given out once, and the one read for a task is its row's
        or a freed one.

        Only the tasks this writer wrote unfinished are looked up: the others are new,
        mostly (a shot of 20,000 tasks' events found 7% of its rows recorded). Reading the
        keys of all the rows took 3% of a camera's time.
        """
        with self._unfinished_lock:
            recent = self._unfinished.get(db, {})
            task_ids = [task_id for task_id in task_ids if task_id in recent]
        if not task_ids:
            return {}
        TaskState, _ = self._models()
        return _keys(cursor, TaskState, "task_id", task_ids)

    def _note_unfinished(self, db: str, rows: list[list[Any]]) -> None:
        """Remember the tasks of ``rows`` (written) that are not finished, and forget the
        others: the next rows of a task mostly follow an unfinished one (MySQL)."""
        with self._unfinished_lock:
            recent = self._unfinished.setdefault(db, {})
            for row in rows:
                # Taken out, and put back at the end while unfinished: the oldest go
                # first, by their last write.
                recent.pop(row[0], None)
                if row[_STATE_AT] not in states.READY_STATES:
                    recent[row[0]] = None
            if len(recent) > MAX_UNFINISHED:
                for task_id in list(itertools.islice(recent, len(recent) - MAX_UNFINISHED // 2)):
                    del recent[task_id]

    @staticmethod
    def _stage(cursor: Any, rows: list[list[Any]]) -> None:
        """Put a batch in the connection's (empty) temporary table (SQLite).

        By a few INSERTs of many rows each, not one a row (``executemany``): SQLite's driver
        lets go of the GIL at each step of a statement, and gets it back only when the
        thread handling the events gives it up, every ``sys.getswitchinterval()`` (5 ms).
        A row at a time, a shot of a thousand rows waited seconds for the GIL while events
        kept coming, and the rows came late. The INSERTs go to the driver as they are (its
        own ``?`` marks): Django's rewriting of ``%s`` took a third of their time.
        """
        table = f'temp."{STAGE_TABLE}"'
        names = ", ".join(f'"{column}"' for column in TASK_COLUMNS)
        cursor.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{STAGE_TABLE}" ({names})')
        cursor.execute(f"DELETE FROM {table}")
        raw = cursor.db.connection
        with cursor.db.wrap_database_errors:
            start = 0
            for count in _chunk_sizes(len(rows), _rows_per_statement(cursor.db)):
                chunk = rows[start : start + count]
                start += count
                raw.execute(
                    _multi_row_insert(table, names, count),
                    [value for row in chunk for value in row],
                ).close()

    def _execute_prepared(self, cursor: Any, sql: str) -> None:
        """Run ``sql`` (no parameters) as a statement prepared once per connection.

        Parsing and planning the merge took PostgreSQL about 5 ms, on every shot however
        few its rows. A prepared statement lives as long as the session, whatever becomes
        of the transaction it was prepared in, and is planned again by PostgreSQL when a
        table it reads is made anew.
        """
        if cursor.db.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
            # Behind a pooler in transaction mode (PgBouncer) the next transaction may run
            # on another session, which did not prepare it: plan it each time.
            cursor.execute(sql, ())
            return
        raw = cursor.db.connection
        name = f"{STAGE_TABLE}_merge"
        with _PER_CONNECTION_LOCK:
            prepared = _PREPARED.get(raw)
        if prepared != sql:
            if prepared is not None:
                cursor.execute(f"DEALLOCATE {name}")
            cursor.execute(f"PREPARE {name} AS {sql}", ())
            with _PER_CONNECTION_LOCK:
                _PREPARED[raw] = sql
        cursor.execute(f"EXECUTE {name}")

    def _copy(self, cursor: Any, rows: list[list[Any]]) -> None:
        """Put a batch in the session's (emptied) temporary table, by COPY (psycopg 3).

        The rows go in COPY's binary form: psycopg turns a row of values into it in an
        eighth of the time the text form takes (0.6 µs a row against 4.7), and the server
        reads the times and numbers as they are instead of parsing them.

        The table is emptied by DELETE, and truncated once its dead rows add up to
        :data:`TRUNCATE_STAGE_AFTER`. Not at every commit (``ON COMMIT DELETE ROWS``): that
        cuts the table's file down each time, a change of the file system's metadata which
        waits for its journal. While another process wrote to the disk, writes of 50 tasks
        then took up to 0.6 s (1 in 100 over 0.2 s), against 42 ms (19 ms) emptied by
        DELETE (``benchmarks/staging.py``). A TRUNCATE makes PostgreSQL plan the prepared
        merge again, once.
        """
        connection = cursor.db
        empty, truncate, copy_sql, types = self._statement(
            connection.alias, "copy", self._copy_statements
        )
        raw = cursor.cursor
        session = connection.connection
        with _PER_CONNECTION_LOCK:
            staged = _STAGED_ROWS.get(session, 0)
        if staged >= TRUNCATE_STAGE_AFTER:
            empty, staged = truncate, 0
        # psycopg's own errors, as Django's: a connection cut on the server is then an
        # OperationalError the camera knows, and keeps the rows for the next shot.
        with connection.wrap_database_errors:
            raw.execute(empty)
            with raw.copy(copy_sql) as copy:
                copy.set_types(types)
                for row in rows:
                    copy.write_row(row)
        with _PER_CONNECTION_LOCK:
            _STAGED_ROWS[session] = staged + len(rows)

    def _copy_statements(self, connection: Any) -> tuple[str, str, str, list[str]]:
        """:meth:`_copy`'s statements: the table made if missing and emptied by DELETE, or
        by TRUNCATE (two statements without parameters, sent at once), the COPY into it,
        and the types of its columns (without their length: ``varchar``), for the binary
        form."""
        TaskState, _ = self._models()
        db_types = {f.attname: f.db_type(connection) for f in TaskState._meta.concrete_fields}
        quote = connection.ops.quote_name
        names = ", ".join(quote(c) for c in TASK_COLUMNS)
        columns = ", ".join(f"{quote(c)} {db_types[c]}" for c in TASK_COLUMNS)
        table = f"pg_temp.{quote(STAGE_TABLE)}"
        create = f"CREATE TEMP TABLE IF NOT EXISTS {quote(STAGE_TABLE)} ({columns})"
        return (
            f"{create}; DELETE FROM {table}",
            f"{create}; TRUNCATE {table}",
            f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)",
            [db_types[c].split("(")[0] for c in TASK_COLUMNS],
        )

    # -- workers ---------------------------------------------------------------------------

    def _write_workers(self, db: str, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        if not rows:
            return {}
        _, WorkerState = self._models()
        connection = connections[db]
        hostnames = sorted(rows)
        with connection.cursor() as cursor:
            known = [h for h in hostnames if rows[h]]
            if known:
                self._upsert_workers(db, cursor, {h: rows[h] for h in known})
            if connection.vendor != "mysql":
                # Written first. On SQLite, a transaction that reads and then writes asks
                # for more than the lock it holds, which fails at once (database is locked)
                # while another process holds the write lock and waits for its readers.
                # PostgreSQL's DO NOTHING locks no row; a read first would only let the
                # snapshot of REPEATABLE READ miss a worker another camera inserts next.
                empty = [h for h in hostnames if not rows[h]]
                if empty:
                    self._insert_missing_workers(connection, cursor, empty, timezone.now())
                return _keys(cursor, WorkerState, "hostname", hostnames)
            # MySQL: the workers the tasks name are read first, and only those missing are
            # inserted. An insert of a row that exists locks it (for an update) until this
            # transaction commits, and waits for the transactions whose task rows name the
            # worker (their check of the foreign key holds a lock on it) to end: the shots
            # of two cameras waited for each other's. (At SERIALIZABLE the reads lock too;
            # a deadlock between two cameras is then written again.)
            ids = _keys(cursor, WorkerState, "hostname", hostnames)
            missing = [h for h in hostnames if h not in ids and not rows[h]]
            if missing:
                self._insert_missing_workers(connection, cursor, missing, timezone.now())
                # A worker another camera inserted since this transaction's first read:
                # MySQL's locking read sees the row as committed, not as that read did.
                ids.update(_keys(cursor, WorkerState, "hostname", missing, " LOCK IN SHARE MODE"))
        return ids

    def _upsert_workers(self, db: str, cursor: Any, rows: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge worker ``rows`` (in hostname order) by statements of many rows each.

        A statement a worker cost a round trip each: a shot that wrote 200 workers while
        the events kept the camera's other thread busy waited for the GIL after each one
        (:meth:`_stage`), some 2 seconds on PostgreSQL and 1 on SQLite. Consecutive rows of
        the same shape (whether they say they are offline or not; a heartbeat of the hour
        a clock repeats, whose floor is not itself, goes alone) share a statement, so the
        rows are still locked in hostname order, as other cameras lock them.
        """
        _, WorkerState = self._models()
        connection = connections[db]
        fields = {f.attname: f for f in WorkerState._meta.concrete_fields if not f.primary_key}
        columns = tuple(fields)
        heartbeat_field = fields["last_heartbeat"]
        now = timezone.now()
        # A heartbeat later than this was written from a clock that ran ahead.
        ahead = fromtimestamp(time.time() + MAX_CLOCK_SKEW)
        shared = {"ahead": heartbeat_field.get_db_prep_save(ahead, connection)}
        shapes: list[tuple[tuple[bool, bool], list[list[Any]], dict[str, Any]]] = []
        for hostname, given in rows.items():
            values = {**given, "hostname": hostname, "last_update": now}
            offline_given = values.get("offline") is not None
            values["offline"] = bool(values.get("offline"))
            params = [fields[c].get_db_prep_save(values.get(c), connection) for c in columns]
            heartbeat = values.get("last_heartbeat")
            floor = self._heartbeat_floor(heartbeat)
            floor_given = floor is not heartbeat
            extra = shared
            if floor_given:
                extra = {**shared, "floor": heartbeat_field.get_db_prep_save(floor, connection)}
            shape = (offline_given, floor_given)
            if shapes and shapes[-1][0] == shape and not floor_given:
                shapes[-1][1].append(params)
            else:
                shapes.append((shape, [params], extra))
        # floor and ahead, at most once for each column (worker_upsert_sql)
        most = _rows_per_statement(connection, len(columns), more=2 * len(columns))
        for (offline_given, floor_given), batch, extra in shapes:
            start = 0
            for count in _chunk_sizes(len(batch), most):
                sql, order = self._statement(
                    db,
                    ("worker", count, offline_given, floor_given),
                    lambda c, n=count, o=offline_given, f=floor_given: worker_upsert_sql(
                        c, WorkerState._meta.db_table, columns, n, o, f
                    ),
                )
                chunk = batch[start : start + count]
                start += count
                cursor.execute(sql, [v for row in chunk for v in row] + [extra[n] for n in order])

    def _insert_missing_workers(
        self, connection: Any, cursor: Any, hostnames: list[str], now: datetime
    ) -> None:
        """Insert the rows of ``hostnames`` (sorted) that are missing, by a few statements of
        many rows each: one round trip at most shots (``executemany`` took a pipeline of
        statements on psycopg 3, about a millisecond a shot)."""
        _, WorkerState = self._models()
        quote = connection.ops.quote_name
        table = quote(WorkerState._meta.db_table)
        head = (
            f"INSERT INTO {table} ({quote('hostname')}, {quote('last_update')}, "
            f"{quote('offline')}) VALUES "
        )
        if connection.vendor == "mysql":
            tail = f" ON DUPLICATE KEY UPDATE {quote('hostname')} = {quote('hostname')}"
        else:
            tail = f" ON CONFLICT ({quote('hostname')}) DO NOTHING"
        stamp = WorkerState._meta.get_field("last_update").get_db_prep_save(now, connection)
        # 300 rows of 3 parameters: within the 999 parameters a statement of older SQLite takes.
        for start in range(0, len(hostnames), 300):
            chunk = hostnames[start : start + 300]
            rows = ", ".join(["(%s, %s, %s)"] * len(chunk))
            cursor.execute(head + rows + tail, [v for h in chunk for v in (h, stamp, False)])

    @staticmethod
    def _heartbeat_floor(heartbeat: Any) -> Any:
        """The floor of :func:`worker_upsert_sql` for an incoming ``heartbeat``: itself,
        but for a naive time of the hour a clock repeats."""
        if heartbeat is not None and timezone.is_naive(heartbeat) and not django_settings.USE_TZ:
            # A naive local time: in the hour a clock repeats in autumn, a heartbeat after
            # the change reads earlier than one before it. Compared as instants instead.
            return _naive_floor(heartbeat)
        return heartbeat


#: SQLite: the most rows one INSERT stages (fewer when the database takes fewer parameters).
STAGE_ROWS = 500


def _rows_per_statement(connection: Any, width: int = len(TASK_COLUMNS), more: int = 0) -> int:
    """How many rows of ``width`` values one statement of ``connection`` (Django's) takes,
    with ``more`` parameters of its own: :data:`STAGE_ROWS`, or fewer on SQLite, within the
    parameters it takes."""
    if connection.vendor != "sqlite":
        return STAGE_ROWS
    limit = 999  # SQLite's oldest default; Python 3.10 cannot read the connection's own
    number = getattr(connection.Database, "SQLITE_LIMIT_VARIABLE_NUMBER", None)
    if number is not None and hasattr(connection.connection, "getlimit"):
        limit = connection.connection.getlimit(number)
    return max(1, min(STAGE_ROWS, (limit - more) // width))


def _keys(cursor: Any, model: Any, column: str, values: list[str], lock: str = "") -> dict:
    """The primary keys of ``model``'s rows whose ``column`` is one of ``values``, by value:
    a SELECT of 500 values at a time (with ``lock`` after it: MySQL's locking read)."""
    quote = cursor.db.ops.quote_name
    table, pk = quote(model._meta.db_table), quote(model._meta.pk.column)
    keys = {}
    for start in range(0, len(values), 500):
        chunk = values[start : start + 500]
        marks = ", ".join("%s" for _ in chunk)
        cursor.execute(
            f"SELECT {quote(column)}, {pk} FROM {table} WHERE {quote(column)} IN ({marks}){lock}",
            chunk,
        )
        keys.update(cursor.fetchall())
    return keys


def _chunk_sizes(total: int, most: int) -> Iterator[int]:
    """Split ``total`` rows into statements of at most ``most`` rows, of a few sizes only.

    Full statements, then the rest by powers of two: the driver keeps every statement it
    compiled (each of up to 10,500 parameters), and a rest of any size would compile a new
    one at nearly every shot.
    """
    full, rest = divmod(total, most)
    yield from [most] * full
    size = 1 << max(rest.bit_length() - 1, 0)
    while rest:
        if size <= rest:
            yield size
            rest -= size
        size >>= 1


@functools.lru_cache(maxsize=16)
def _multi_row_insert(table: str, names: str, count: int) -> str:
    """SQLite: the INSERT of ``count`` rows, with the driver's own parameter marks."""
    row = "(" + ", ".join("?" for _ in TASK_COLUMNS) + ")"
    return f"INSERT INTO {table} ({names}) VALUES " + ", ".join([row] * count)


def _naive_floor(heartbeat: datetime) -> datetime:
    """The latest naive local time that names an instant no later than ``heartbeat``'s.

    That is the heartbeat itself, except in the second pass of the hour a clock repeats in
    autumn (``fold=1``): every time of that hour read from the first pass came before it.
    """
    if not heartbeat.fold:
        return heartbeat
    hour = heartbeat.replace(minute=0, second=0, microsecond=0, fold=0)
    return hour + timedelta(hours=1) - timedelta(microseconds=1)


def _adapter(connection: Any, column: str) -> Any:
    """A function that turns a value of ``column`` into a parameter of this database."""
    if column in TASK_DATETIMES:
        ops, use_tz = connection.ops, django_settings.USE_TZ
        zone = timezone.get_default_timezone()

        # What the ORM stores for a UTC time on a database whose connection is in UTC
        # (SQLite and MySQL: the naive time as text), without its lookups per value.
        as_text = (
            use_tz
            and connection.vendor in ("sqlite", "mysql")
            and connection.timezone_name == "UTC"
        )
        session_zone = None
        if not use_tz and connection.vendor == "postgresql":
            # COPY's binary form takes instants: a naive time is one of the session's time
            # zone (TIME_ZONE), as PostgreSQL reads the ORM's naive values.
            session_zone = zoneinfo.ZoneInfo(connection.timezone_name)

        def adapt_datetime(value: Any) -> Any:
            if value is None:
                return None
            if not isinstance(value, datetime):
                raise TypeError(f"not a datetime: {value!r:.50}")
            if as_text and value.tzinfo is dt_timezone.utc:
                return value.isoformat(" ")[:-6]  # str() of the naive time: without "+00:00"
            if session_zone is not None and timezone.is_naive(value):
                return _as_postgresql_reads(value, session_zone)
            if use_tz and timezone.is_naive(value):
                value = timezone.make_aware(value, zone)
            return ops.adapt_datetimefield_value(value)

        return adapt_datetime
    if column in ("hidden", "lost"):
        return bool
    if column == "runtime":
        return _number(float)
    if column in ("retries", "worker_id"):
        return _number(int)
    return _text


def _as_postgresql_reads(value: datetime, zone: zoneinfo.ZoneInfo) -> datetime:
    """The instant PostgreSQL takes a naive local time of ``zone`` for: in the hour a clock
    repeats, and in the hour it skips, the one of the zone's standard time (the smaller
    offset), whatever the time's ``fold`` says."""
    first, second = value.replace(tzinfo=zone, fold=0), value.replace(tzinfo=zone, fold=1)
    return second if second.utcoffset() < first.utcoffset() else first


def _number(kind: type) -> Any:
    """An adapter to ``kind``: a value that is not a number, or an integer past what the
    32-bit columns hold, raises (and the row is refused).

    The check is the writer's own: PostgreSQL's binary COPY would take the low 32 bits of
    a larger integer without a word."""

    def adapt_number(value: Any) -> Any:
        if value is None:
            return value
        if type(value) is not kind:
            if isinstance(value, str | bytes):
                raise ValueError(f"not a number: {value[:50]!r}")
            try:
                value = kind(value)
            except OverflowError as exc:  # an infinite float, an integer past floats
                raise ValueError(f"not a number the column holds: {value!r:.50}") from exc
        if kind is int and not -MAX_INT - 1 <= value <= MAX_INT:
            raise ValueError(f"out of the range of a 32-bit column: {value}")
        return value

    return adapt_number


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return str(value)


#: The writer of the default database.
default_writer = SnapshotWriter()


def write_snapshot(
    workers: Mapping[str, Mapping[str, Any]],
    tasks: Mapping[str, Mapping[str, Any]],
    using: str | None = None,
) -> tuple[dict[str, int], int]:
    """Write one snapshot: worker rows, then task rows (see :meth:`SnapshotWriter.write`).

    Returns ``(hostname -> worker primary key, number of task rows written)``.
    """
    writer = default_writer if using is None else SnapshotWriter(using)
    return writer.write(workers, tasks)
