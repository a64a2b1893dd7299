"""The model managers: the querysets of 1.1.2, and the batch writer the camera uses."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from celery import states
from celery.utils.time import maybe_timedelta
from django.db import IntegrityError, connections, models, router, transaction
from django.db.models.functions import Now
from django.utils import timezone

from .conf import KNOWN_STATES, monitor_settings
from .sanitize import MAX_CLOCK_SKEW
from .utils import posix_timestamp

#: The fields a task-received carries (``celery.events.state.Task.merge_rules``): an event
#: that does not decide the state fills them in when they are still empty.
MERGE_FIELDS = ("name", "args", "kwargs", "parent_id", "root_id", "eta", "expires")
#: The worker: an event that does not decide the state fills it in when it is still empty.
FILL_FIELDS = ("worker_id", "worker")
#: When the task was last received and started: the latest time wins, whichever event
#: decides the state (a retried task is received and started again).
LATEST_FIELDS = ("received", "started")
#: The note of a task the camera may have missed events of (it restarted meanwhile).
STALE_NOTE = (
    "The camera restarted while this task was unfinished, and no result backend could say "
    "how it ended: its state may be stale."
)
#: The note of a task whose final state was read from the result backend.
RECONCILED_NOTE = "Finished while the camera was away: its end was read from the result backend."
#: How often the batch writer starts over when another writer inserted the same row first.
WRITE_ATTEMPTS = 3


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
    or redelivered event never takes a finished task back. Among unfinished states the later
    event wins (a retried task is received and started again; a late task-retried of an
    earlier attempt loses to the attempt that followed it), and at the same time, or when the
    times are unknown, Celery's rules: the higher precedence wins and RETRY always moves on.
    """
    if current is None:
        return True
    current_ready = current in states.READY_STATES
    if current_ready != (incoming in states.READY_STATES):
        return not current_ready
    if current_ready:
        return states.precedence(incoming) <= states.precedence(current)
    then, now = _instant(current_tstamp), _instant(incoming_tstamp)
    if then is not None and now is not None and then != now:
        return now > then
    if states.RETRY in (current, incoming) and then is None:
        return True
    return states.precedence(incoming) <= states.precedence(current)


def merge_task_values(current: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> dict:
    """Return the fields of a task row that ``incoming`` changes.

    ``current`` is the recorded row (None when there is none); ``incoming`` the values a
    snapshot saw. The values of the event that decides the state win; a value of None
    never blanks one recorded before; an event that does not decide the state only fills
    in what is still empty; ``retries`` only grows, and the received and started times keep
    the latest.
    """
    if current is None:
        return {key: value for key, value in incoming.items() if value is not None}
    changes = {}
    if incoming_state_wins(
        current.get("state"), incoming["state"], current.get("tstamp"), incoming.get("tstamp")
    ):
        fields: Iterable[str] = incoming.keys()
        if current.get("hidden"):
            changes["hidden"] = False  # expired, then moved on: keep it
        if current.get("lost"):
            changes["lost"] = False  # it moved on after all (redelivered, or events late)
        if current.get("note") == STALE_NOTE and incoming.get("note") is None:
            changes["note"] = None  # an event arrived: the state is no longer stale
    else:
        fields = [f for f in (*MERGE_FIELDS, *FILL_FIELDS) if current.get(f) is None]
    for key in fields:
        value = incoming.get(key)
        if key in LATEST_FIELDS or key == "retries":
            continue
        if value is not None and current.get(key) != value:
            changes[key] = value
    for key in LATEST_FIELDS:
        value, recorded = incoming.get(key), current.get(key)
        if value is not None and (recorded is None or _instant(value) > _instant(recorded)):
            changes[key] = value
    retries = incoming.get("retries")
    if retries is not None and retries > (current.get("retries") or 0):
        changes["retries"] = retries
    return changes


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ExtendedQuerySet(models.QuerySet):
    """A custom model queryset that implements a few helpful methods."""

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
        db = router.db_for_write(self.model)
        with transaction.atomic(using=db):
            obj, created = self._lock_or_create(db, kwargs, {**kwargs, **values})
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

    def _in_batches(self, rows: models.QuerySet, act: Any) -> int:
        """Apply ``act`` to ``rows``, ``monitor_purge_batch_size`` primary keys at a time.

        ``act`` gets a queryset of one batch and returns how many rows it changed; the total
        is returned. Each batch is its own short statement or transaction.
        """
        batch = monitor_settings.purge_batch_size
        total = 0
        while True:
            ids = list(rows.values_list("pk", flat=True)[:batch])
            if not ids:
                return total
            total += act(self.filter(pk__in=ids))
            if len(ids) < batch:
                return total


class WorkerStateQuerySet(ExtendedQuerySet):
    """A custom model queryset for the WorkerState model with some helpers."""

    def update_heartbeat(self, hostname: str, heartbeat: Any, update_freq: float) -> Any:
        """Record a heartbeat of ``hostname``, at most once every ``update_freq`` seconds.

        Returns the worker's row. A heartbeat older than the recorded one is ignored.
        """
        recent = self.filter(
            hostname=hostname, last_update__gte=Now() - timedelta(seconds=update_freq)
        ).first()
        if recent is not None:
            return recent
        db = router.db_for_write(self.model)
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

    def merge_rows(self, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        """Write worker rows (hostname -> field values) and return hostname -> primary key.

        Must run inside a transaction. A hostname mapped to an empty dict is only created
        when missing (a task names a worker the camera has no heartbeat of). A heartbeat
        never goes back in time.
        """
        if not rows:
            return {}
        hostnames = sorted(rows)
        now = timezone.now()
        existing = {
            w.hostname: w
            for chunk in _chunks(hostnames, monitor_settings.write_batch_size)
            for w in self.select_for_update().filter(hostname__in=chunk).order_by("hostname")
        }
        missing = [h for h in hostnames if h not in existing]
        if missing:
            self.bulk_create(
                [self.model(hostname=h, last_update=now, **rows[h]) for h in missing],
                ignore_conflicts=True,
            )
            existing.update(
                (w.hostname, w)
                for w in self.select_for_update().filter(hostname__in=missing).order_by("hostname")
            )
        changed, fields = [], {"last_update"}
        for hostname in hostnames:
            worker, values = existing[hostname], dict(rows[hostname])
            if hostname in missing or not values:
                continue
            heartbeat = values.get("last_heartbeat")
            recorded = worker.last_heartbeat
            # Compared as instants: with USE_TZ off, naive local times go back an hour when
            # a daylight saving clock does.
            recorded_at = None if recorded is None else posix_timestamp(recorded, stored=True)
            if recorded_at is not None and recorded_at > time.time() + MAX_CLOCK_SKEW:
                recorded_at = None  # written from a clock that ran ahead: not a reference
            if (
                heartbeat is not None
                and recorded_at is not None
                and posix_timestamp(heartbeat) < recorded_at
            ):
                values.pop("last_heartbeat")
                values.pop("offline", None)
            updated = {
                k: v for k, v in values.items() if v is not None and getattr(worker, k) != v
            }
            if updated:
                for key, value in updated.items():
                    setattr(worker, key, value)
                worker.last_update = now
                fields.update(updated)
                changed.append(worker)
        if changed:
            self.bulk_update(changed, sorted(fields), batch_size=monitor_settings.write_batch_size)
        return {hostname: worker.pk for hostname, worker in existing.items()}


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
        expired = self.expired(states, expires).filter(hidden=False).order_by()
        return self._in_batches(expired, lambda batch: batch.update(hidden=True))

    def expire_custom_states(self, expires: Any) -> int | None:
        """Hide the tasks in a state Celery does not define (PROGRESS) older than ``expires``.

        Such a state is in none of the groups of :meth:`expire_by_states`; a task left in
        one (its worker died) would otherwise stay forever. Returns how many rows were
        hidden, or None when ``expires`` is None (never expire).
        """
        if expires is None:
            return None
        expired = self.expired_custom(expires).filter(hidden=False).order_by()
        return self._in_batches(expired, lambda batch: batch.update(hidden=True))

    def expired_custom(self, expires: Any) -> TaskStateQuerySet:
        """Return the tasks in a state Celery does not define, older than ``expires``."""
        return self.exclude(state__in=sorted(KNOWN_STATES)).filter(
            tstamp__lte=timezone.now() - maybe_timedelta(expires)
        )

    def mark_lost(self, worker_ids: Iterable[int]) -> int:
        """Mark lost the unfinished tasks of workers that stopped; return how many.

        Unfinished means received or running (or in a custom state): a task waiting for a
        retry or requeued is still in the broker, and will be received again.
        """
        waiting = [states.PENDING, states.RETRY, states.REJECTED, *states.READY_STATES]
        rows = self.filter(worker_id__in=list(worker_ids), lost=False).exclude(state__in=waiting)
        return self._in_batches(rows.order_by(), lambda batch: batch.update(lost=True))

    def purge(self) -> int:
        """Purge all expired (hidden) task states, in batches. Returns how many were deleted."""
        db = router.db_for_write(self.model)

        def delete(batch: models.QuerySet) -> int:
            with transaction.atomic(using=db):
                return batch.using(db).delete()[0]

        return self._in_batches(self.using(db).filter(hidden=True).order_by(), delete)

    def update_state(self, state: str, task_id: str, defaults: Mapping[str, Any]) -> Any:
        """Create or update one task row, following Celery's state precedence.

        Returns the row. A late event (say, task-received after task-succeeded) only fills
        in the fields Celery takes from task-received and never changes the state.
        """
        incoming = {**defaults, "state": state}
        if "worker" in incoming:
            worker = incoming.pop("worker")
            incoming["worker_id"] = getattr(worker, "pk", worker)
        db = router.db_for_write(self.model)
        with transaction.atomic(using=db):
            lookup = {"task_id": task_id}
            obj, created = self._lock_or_create(db, lookup, {**lookup, **_with_defaults(incoming)})
            if created:
                return obj
            changes = merge_task_values(_task_values(obj), incoming)
            if changes:
                for key, value in changes.items():
                    setattr(obj, key, value)
                obj.save(using=db, update_fields=list(changes))
            return obj

    def merge_rows(self, rows: Mapping[str, Mapping[str, Any]]) -> int:
        """Write a batch of task rows (task id -> field values) and return how many changed.

        Must run inside a transaction. Reads the recorded rows of the batch with one query
        per ``monitor_write_batch_size`` ids (locked, in id order, so concurrent writers
        never deadlock), then inserts the new rows in bulk and writes the merged values of
        the changed ones back with an UPSERT.
        Raises IntegrityError when another writer inserted one of the new rows first:
        run it again and the row is merged.
        """
        if not rows:
            return 0
        batch = monitor_settings.write_batch_size
        task_ids = sorted(rows)
        existing: dict[str, Any] = {}
        for chunk in _chunks(task_ids, batch):
            for obj in self.select_for_update().filter(task_id__in=chunk).order_by("task_id"):
                existing[obj.task_id] = obj
        new, changed, fields = [], [], set()
        for task_id in task_ids:
            obj = existing.get(task_id)
            if obj is None:
                new.append(self.model(task_id=task_id, **_with_defaults(rows[task_id])))
                continue
            changes = merge_task_values(_task_values(obj), rows[task_id])
            if changes:
                for key, value in changes.items():
                    setattr(obj, key, value)
                fields.update(changes)
                changed.append(obj)
        if new:
            # A plain insert: a row another writer inserted meanwhile raises IntegrityError,
            # and the retry merges it instead of overwriting it.
            self.bulk_create(new, batch_size=batch)
        if changed:
            # The rows are locked and merged: write them back with one UPSERT per batch,
            # much cheaper than bulk_update's CASE expression per field and row.
            with_target = connections[self.db].features.supports_update_conflicts_with_target
            self.bulk_create(
                [self.model(task_id=obj.task_id, **_task_values(obj)) for obj in changed],
                batch_size=batch,
                update_conflicts=True,
                # MySQL's ON DUPLICATE KEY takes no target (task_id is its only other key).
                unique_fields=["task_id"] if with_target else None,
                update_fields=sorted(fields),
            )
        return len(new) + len(changed)


TASK_FIELDS = (
    "state", "name", "tstamp", "args", "kwargs", "eta", "expires", "result", "traceback",
    "runtime", "retries", "worker_id", "received", "started", "exception", "parent_id",
    "root_id", "hidden", "lost", "note",
)  # fmt: skip


def _task_values(obj: Any) -> dict[str, Any]:
    return {field: getattr(obj, field) for field in TASK_FIELDS}


def _with_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    row = {key: value for key, value in values.items() if value is not None}
    row.setdefault("retries", 0)
    row.setdefault("tstamp", timezone.now())
    return row


def write_snapshot(
    workers: Mapping[str, Mapping[str, Any]],
    tasks: Mapping[str, Mapping[str, Any]],
    using: str | None = None,
) -> tuple[dict[str, int], int]:
    """Write one snapshot: worker rows, then task rows, in one transaction.

    ``workers`` maps hostnames to WorkerState field values; ``tasks`` maps task ids to
    TaskState field values, with the worker given by hostname under ``"worker"``. Returns
    ``(hostname -> worker primary key, number of task rows written)``. Retries when a
    concurrent writer created one of the rows first; any other error propagates, and
    nothing of the snapshot is written.
    """
    from .models import TaskState, WorkerState

    db = using or router.db_for_write(TaskState)
    worker_rows = {hostname: dict(values) for hostname, values in workers.items()}
    for values in tasks.values():
        hostname = values.get("worker")
        if hostname and hostname not in worker_rows:
            worker_rows[hostname] = {}
    for attempt in range(WRITE_ATTEMPTS):
        try:
            with transaction.atomic(using=db):
                worker_ids = WorkerState.objects.using(db).merge_rows(worker_rows)
                task_rows = {
                    task_id: _with_worker_id(values, worker_ids)
                    for task_id, values in tasks.items()
                }
                written = TaskState.objects.using(db).merge_rows(task_rows)
            return worker_ids, written
        except IntegrityError:
            if attempt == WRITE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _with_worker_id(values: Mapping[str, Any], worker_ids: Mapping[str, int]) -> dict:
    row = dict(values)
    hostname = row.pop("worker", None)
    row["worker_id"] = worker_ids.get(hostname) if hostname else None
    return row
