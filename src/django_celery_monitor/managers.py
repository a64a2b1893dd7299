"""The model managers: the querysets of 1.1.2 and the expiry.

The camera writes its snapshots with :mod:`~django_celery_monitor.writer`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from celery import states
from celery.utils.time import maybe_timedelta
from django.db import IntegrityError, connections, models, router, transaction
from django.db.models.constants import LOOKUP_SEP
from django.db.models.sql.where import AND, WhereNode
from django.utils import timezone

from .conf import KNOWN_STATES, monitor_settings
from .utils import posix_timestamp
from .writer import writes_first

#: The longest pause between two batches of a cleanup on SQLite (see ``_in_batches``).
MAX_BATCH_PAUSE = 0.5
#: How long a batch of a cleanup on SQLite waits at most for the writes of its process.
MAX_WRITES_WAIT = 5.0
#: The expiry's batches: the first one's rows, the fewest, and the time one statement of
#: them should take (see ``_in_batches``). ``monitor_purge_batch_size`` is the most.
FIRST_BATCH = 1000
MIN_BATCH = 50
BATCH_SECONDS = 0.25
#: The most distinct states the expiry of custom states looks for by the state index.
MAX_CUSTOM_STATES = 100
#: How long the purge keeps expired finished rows the rollups have not counted yet.
PURGE_WAITS_FOR_ROLLUPS = timedelta(hours=1)


def values_present(queryset: models.QuerySet, field: str, limit: int) -> list[str]:
    """The distinct values of ``field`` in the table of ``queryset``, in order, at most ``limit``.

    A loose index scan: each step asks the index on ``field`` for the next value after the
    one before (``MIN(field) WHERE field > ...``), so the cost is one index descent per value
    whatever the number of rows, where ``SELECT DISTINCT`` would read every row. NULL is
    left out.
    """
    connection = connections[queryset.db]
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    column = connection.ops.quote_name(queryset.model._meta.get_field(field).column)
    sql = (
        f"WITH RECURSIVE present (value, n) AS ("
        f" SELECT MIN({column}), 1 FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT MIN(t.{column}) FROM {table} t WHERE t.{column} > present.value),"
        f" present.n + 1 FROM present WHERE present.value IS NOT NULL AND present.n < %s"
        f") SELECT value FROM present WHERE value IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [value for (value,) in cursor.fetchall()]


class ExtendedQuerySet(models.QuerySet):
    """A custom model queryset that implements a few helpful methods."""

    @property
    def write_db(self) -> str:
        """The database this queryset's writes go to: the one it was given (``using``),
        else the router's for writes (``self.db`` is the router's for reads, a replica's)."""
        return self._db or router.db_for_write(self.model, **self._hints)

    def select_for_update_or_create(
        self, defaults: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> tuple[models.Model, bool]:
        """Extend update_or_create with select_for_update.

        Look up an object with the given kwargs, updating one with defaults if it exists,
        otherwise create a new one. Return a tuple ``(object, created)``, where created is
        a boolean specifying whether an object was created. The row stays locked until the
        surrounding transaction ends.
        """
        values = {k: v() if callable(v) else v for k, v in (defaults or {}).items()}
        db = self.write_db
        # A lookup of a field (hostname__iexact) finds a row, but makes none: as Django's
        # update_or_create, a new row takes the plain fields only.
        plain = {key: value for key, value in kwargs.items() if LOOKUP_SEP not in key}
        with transaction.atomic(using=db):
            obj, created = self._lock_or_create(db, kwargs, {**plain, **values})
            if created:
                return obj, True
            for key, value in values.items():
                setattr(obj, key, value)
            obj.save(using=db)
        return obj, False

    def _lock_or_create(
        self, db: str, lookup: Mapping[str, Any], params: Mapping[str, Any]
    ) -> tuple[models.Model, bool]:
        """Lock the row ``lookup`` finds, or create it from ``params``; in a transaction.

        When another writer creates the row first, lock theirs instead.
        """
        obj = self.using(db).select_for_update().filter(**lookup).first()
        if obj is not None:
            return obj, False
        try:
            with transaction.atomic(using=db):
                return self.using(db).create(**params), True
        except IntegrityError:
            return self.using(db).select_for_update().get(**lookup), False

    def _in_batches(
        self, rows: models.QuerySet, act: Any, pause: bool = True, onwards: str | None = None
    ) -> int:
        """Apply ``act`` to ``rows``, at most ``monitor_purge_batch_size`` primary keys at a time.

        ``act`` gets a queryset of one batch and returns how many rows it changed; the total
        is returned. Each batch is its own short statement or transaction. ``pause=False``
        for the camera's own work in a shot, which no write of the camera waits for.

        The batches start at :data:`FIRST_BATCH` rows and double while ``act`` takes less
        than a quarter of :data:`BATCH_SECONDS`, up to the setting; one that takes longer
        than it makes the next ones smaller in proportion. So a statement stays short on a
        slow or busy database too, where the setting's size could hold its locks for seconds.

        ``onwards`` names a field to read the rows in the order of: each batch starts at the
        value where the previous one ended, so an index on it is read once in all. ``act``
        must take the rows it changed out of ``rows`` (those of the last value are read
        again).

        The batch ``act`` gets keeps the conditions of ``rows``: a row a camera wrote
        between the read of the batch's keys and the batch's statement (a task that
        finished, no longer expired or lost) is left as it now is. Keys and statements go
        to the database the writes go to.
        """
        db = self.write_db
        rows = rows.using(db).order_by()
        matching = rows
        if onwards is not None:
            rows = rows.order_by(onwards)
        most = monitor_settings.purge_batch_size
        batch = min(most, FIRST_BATCH)
        # SQLite has one writer at a time, and its readers hold writers back: batches back
        # to back would keep a camera writing meanwhile from the lock (its busy handler
        # sleeps between tries, and missed every gap). Pausing as long as a batch took lets
        # it in: the cleanup takes up to twice as long, and no write waits for all of it.
        # The writes of this process (the camera's shots) go first: each batch waits for
        # those under way, unless the cleanup runs in a transaction, which holds the lock.
        connection = connections[db]
        pause = pause and connection.vendor == "sqlite"
        total = 0
        start: Any = None
        while True:
            if pause and not connection.in_atomic_block:
                writes_first.wait(db, MAX_WRITES_WAIT)
            started = time.monotonic()
            batch_rows = rows if start is None else rows.filter(**{f"{onwards}__gte": start})
            if onwards is None:
                ids = list(batch_rows.values_list("pk", flat=True)[:batch])
            else:
                keyed = list(batch_rows.values_list("pk", onwards)[:batch])
                ids = [pk for pk, _value in keyed]
                if keyed:
                    start = keyed[-1][1]
            if not ids:
                return total
            acting = time.monotonic()
            total += act(_by_keys(matching, ids, connection.vendor))
            if len(ids) < batch:
                return total
            took = time.monotonic() - acting
            if took > BATCH_SECONDS:
                batch = max(MIN_BATCH, int(batch * BATCH_SECONDS / took))
            elif took < BATCH_SECONDS / 4:  # room for a database that slows down
                batch = min(most, batch * 2)
            if pause:
                time.sleep(min(time.monotonic() - started, MAX_BATCH_PAUSE))


class WorkerStateQuerySet(ExtendedQuerySet):
    """A custom model queryset for the WorkerState model with some helpers."""

    def update_heartbeat(self, hostname: str, heartbeat: Any, update_freq: float) -> Any:
        """Record a heartbeat of ``hostname``, at most once every ``update_freq`` seconds.

        Returns the worker's row. A heartbeat older than the recorded one is ignored.
        """
        db = self.write_db
        # last_update is written by this process's clock (auto_now), so read by it too:
        # the database's own NOW() is UTC on SQLite, and a naive column is local time.
        recent = (
            self.using(db)
            .filter(
                hostname=hostname, last_update__gte=timezone.now() - timedelta(seconds=update_freq)
            )
            .first()
        )
        if recent is not None:
            return recent
        with transaction.atomic(using=db):
            obj, _ = self.select_for_update_or_create(hostname=hostname)
            if heartbeat is not None and (
                obj.last_heartbeat is None
                or posix_timestamp(heartbeat) > posix_timestamp(obj.last_heartbeat, stored=True)
            ):
                obj.last_heartbeat = heartbeat
                obj.offline = False
            obj.save(using=db)
        return obj


def _by_keys(rows: models.QuerySet, ids: list[Any], vendor: str) -> models.QuerySet:
    """The rows of ``ids`` that still match ``rows``' conditions, found by their keys.

    SQLite's planner may read them by the index of the conditions (the state and time of
    the expiry: a range as long as every row of the state, the hidden ones too) rather than
    by the keys: a batch of 5,000 took 2.3 s instead of 50 ms. Wrapped in NOT (NOT ...),
    the conditions only check the rows the keys find.
    """
    if vendor != "sqlite":
        return rows.filter(pk__in=ids)
    batch = rows.model._default_manager.using(rows.db).filter(pk__in=ids)
    inner = rows.query.where.clone()
    inner.negate()
    outer = WhereNode([inner], AND)
    outer.negate()
    batch.query.where.add(outer, AND)
    return batch


def _hide(batch: models.QuerySet) -> int:
    return batch.update(hidden=True)


class TaskStateQuerySet(ExtendedQuerySet):
    """A custom model queryset for the TaskState model with some helpers."""

    def active(self) -> TaskStateQuerySet:
        """Return all active task states (not hidden by the expiry)."""
        return self.filter(hidden=False)

    def expired(self, states: Iterable[str], expires: Any) -> TaskStateQuerySet:
        """Return the task states in ``states`` older than ``expires`` (a timedelta or seconds)."""
        return self.filter(
            state__in=list(states), tstamp__lte=timezone.now() - maybe_timedelta(expires)
        )

    def expire_by_states(self, states: Iterable[str], expires: Any) -> int | None:
        """Hide the tasks with one of the given states older than ``expires``.

        Returns how many rows were hidden, or None when ``expires`` is None (never expire).
        Rows are hidden in short transactions of at most ``monitor_purge_batch_size`` rows,
        so a large expiry never holds a long lock.
        """
        if expires is None:
            return None
        return self._hide_states(states, timezone.now() - maybe_timedelta(expires))

    def _hide_states(self, states: Iterable[str], cutoff: Any) -> int:
        """Hide the rows of ``states`` as old as ``cutoff`` or older; return how many.

        One state at a time, oldest first, each batch going on from the time where the last
        one ended: the index on (state, tstamp) then reads each row once, where every batch
        of an unordered read would first pass over all the rows hidden before it.
        """
        total = 0
        for state in sorted(set(states)):
            expired = self.filter(state=state, tstamp__lte=cutoff, hidden=False)
            total += self._in_batches(expired, _hide, onwards="tstamp")
        return total

    def expire_custom_states(self, expires: Any) -> int | None:
        """Hide the tasks in a state Celery does not define (PROGRESS) older than ``expires``.

        Such a state is in none of the groups of :meth:`expire_by_states`; a task left in
        one (its worker died) would otherwise stay forever. Returns how many rows were
        hidden, or None when ``expires`` is None (never expire).
        """
        if expires is None:
            return None
        # The states present, by the state index (one lookup each), then those of them
        # Celery does not define, each by the (state, tstamp) index.
        present = values_present(self, "state", MAX_CUSTOM_STATES + 1)
        if len(present) <= MAX_CUSTOM_STATES:
            custom = [state for state in present if state not in KNOWN_STATES]
            return self._hide_states(custom, timezone.now() - maybe_timedelta(expires))
        expired = self.expired_custom(expires).filter(hidden=False)
        return self._in_batches(expired, _hide, onwards="tstamp")

    def expired_custom(self, expires: Any) -> TaskStateQuerySet:
        """Return the tasks in a state Celery does not define, older than ``expires``."""
        return self.exclude(state__in=sorted(KNOWN_STATES)).filter(
            tstamp__lte=timezone.now() - maybe_timedelta(expires)
        )

    def mark_lost(self, worker_ids: Iterable[int]) -> int:
        """Mark lost the unfinished tasks of workers that stopped; return how many.

        Unfinished means running (started, or in a custom state): a task waiting for a
        retry or requeued is still in the broker, and will be received again; so is one
        received but not started, whose message the worker has not acknowledged yet (a
        warm shutdown gives it back at once, the broker after its visibility timeout).
        """
        waiting = [
            states.PENDING,
            states.RECEIVED,
            states.RETRY,
            states.REJECTED,
            *states.READY_STATES,
        ]
        rows = self.filter(worker_id__in=list(worker_ids), lost=False).exclude(state__in=waiting)
        return self._in_batches(
            rows.order_by(), lambda batch: batch.update(lost=True), pause=False
        )

    def purgeable(self) -> TaskStateQuerySet:
        """The rows :meth:`purge` deletes: the hidden ones, but the finished tasks the
        rollups have not counted yet (their minute is after the last one rolled up).

        Those stay hidden until the rollups have counted them, so that an expiry shorter
        than a few minutes never takes a task out of the metrics' counters; for
        :data:`PURGE_WAITS_FOR_ROLLUPS` at most, so that roll-ups that stopped (no camera)
        never stop the purge.
        """
        from django.utils import timezone

        from .models import RollupMark

        expired = self.filter(hidden=True)
        rolled_up = (
            RollupMark.objects.using(self.write_db)
            .filter(period=60)
            .values_list("until", flat=True)
            .first()
        )
        if rolled_up is not None:
            keep_since = max(rolled_up, timezone.now() - PURGE_WAITS_FOR_ROLLUPS)
            expired = expired.exclude(state__in=states.READY_STATES, tstamp__gte=keep_since)
        return expired

    def purge(self) -> int:
        """Purge the expired (hidden) task states :meth:`purgeable` names, in batches.
        Returns how many were deleted."""
        db = self.write_db

        def delete(batch: models.QuerySet) -> int:
            with transaction.atomic(using=db):
                return batch.delete()[0]

        # In key order, each batch from where the last ended: the index of the hidden rows
        # is read once, not again past the entries of the rows deleted before.
        return self._in_batches(self.purgeable(), delete, onwards="pk")

    def update_state(self, state: str, task_id: str, defaults: Mapping[str, Any]) -> Any:
        """Create or update one task row, following Celery's state precedence.

        Returns the row. A late event (say, task-received after task-succeeded) only fills
        in the fields Celery takes from task-received and never changes the state. The row
        is merged in the database by :mod:`~django_celery_monitor.writer`, as the camera's are.
        """
        from .writer import SnapshotWriter

        incoming = {**defaults, "state": state}
        if "worker" in incoming:
            worker = incoming.pop("worker")
            incoming["worker_id"] = getattr(worker, "pk", worker)
        db = self.write_db
        SnapshotWriter(db).write({}, {task_id: incoming})
        return self.using(db).get(task_id=task_id)
