"""The Celery events camera."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import states
from celery.events.snapshot import Polaroid
from celery.utils.imports import symbol_by_name
from celery.utils.log import get_logger

from .conf import MonitorSettings
from .sanitize import (
    clean_datetime,
    clean_id,
    clean_int,
    clean_loadavg,
    clean_number,
    clean_text,
    clean_timestamp,
)
from .utils import fromtimestamp

#: Seconds between two heartbeat writes of one worker.
WORKER_UPDATE_FREQ = 5
#: The timestamps Celery's State keeps per task; any of them changing means a new event.
EVENT_TIMESTAMPS = (
    "sent", "received", "started", "succeeded", "failed", "retried", "revoked", "rejected",
)  # fmt: skip

logger = get_logger(__name__)


def _signature(task: Any) -> tuple:
    """What a task looked like when it was written; a new event changes it."""
    worker = task.worker.hostname if task.worker is not None else None
    return (
        task.state,
        task.timestamp,
        task.name,
        task.retries,
        worker,
        *(getattr(task, name) for name in EVENT_TIMESTAMPS),
    )


class Camera(Polaroid):
    """The Celery events Polaroid snapshot camera.

    Every shutter turns what changed in the cluster state since the previous one into one
    batched write. What could not be written (the database was down) is kept and written
    with the next shutter, so no finished task is lost when Celery clears its state.
    """

    clear_after = True
    worker_update_freq = WORKER_UPDATE_FREQ

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = MonitorSettings(self.app)
        #: Rows collected but not yet written: task id -> values, hostname -> values.
        self.pending_tasks: dict[str, dict[str, Any]] = {}
        self.pending_workers: dict[str, dict[str, Any]] = {}
        #: The signature each unfinished task had when it was last collected.
        self._collected: dict[str, tuple] = {}
        #: When each worker's heartbeat was last collected (monotonic), and its offline flag.
        self._worker_written: dict[str, tuple[float, bool]] = {}
        #: Changes seen by the event callback, when it could be installed.
        self._dirty_tasks: set[str] | None = None
        self._last_worker_event: dict[str, str] = {}
        self._install_event_callback()

    # -- models ------------------------------------------------------------------------

    @property
    def TaskState(self) -> Any:
        """Return the data model to store task state in."""
        return symbol_by_name("django_celery_monitor.models.TaskState")

    @property
    def WorkerState(self) -> Any:
        """Return the data model to store worker state in."""
        return symbol_by_name("django_celery_monitor.models.WorkerState")

    def django_setup(self) -> None:
        import django

        django.setup()

    def install(self) -> None:
        """Set Django up, then schedule the shutter and the cleanup."""
        self.django_setup()
        super().install()

    @property
    def expire_task_states(self) -> tuple[tuple[frozenset[str], Any], ...]:
        """Return a twople of Celery task states and expiration timedeltas."""
        return self.settings.expire_task_states

    # -- seeing what changed ---------------------------------------------------------------

    def _install_event_callback(self) -> None:
        """Have the state tell us which tasks and workers each event touches.

        Possible only before the state handled its first event (it builds its dispatcher
        then); otherwise every shutter compares all tasks in the state instead.
        """
        if "_event" in vars(self.state):
            return
        previous: Callable | None = self.state.event_callback
        dirty: set[str] = set()
        last_worker_event = self._last_worker_event

        def on_event(state: Any, event: dict) -> None:
            group, _, subject = str(event.get("type", "")).partition("-")
            if group == "task":
                dirty.add(event.get("uuid"))
            elif group == "worker" and "hostname" in event:
                last_worker_event[event["hostname"]] = subject
            if previous is not None:
                previous(state, event)

        self.state.event_callback = on_event
        self._dirty_tasks = dirty

    def _changed_tasks(self, state: Any) -> list[tuple[str, Any]]:
        if self._dirty_tasks is None:
            candidates = list(state.tasks.items())
        else:
            tasks = state.tasks.data if hasattr(state.tasks, "data") else state.tasks
            candidates = [(uuid, tasks[uuid]) for uuid in self._dirty_tasks if uuid in tasks]
            self._dirty_tasks.clear()
        changed = []
        for uuid, task in candidates:
            signature = _signature(task)
            if self._collected.get(uuid) == signature:
                continue
            if task.state in states.READY_STATES:
                # Celery drops finished tasks from the state after the shutter.
                self._collected.pop(uuid, None)
            else:
                self._collected[uuid] = signature
            changed.append((uuid, task))
        if len(self._collected) > 2 * max(len(state.tasks), 1000):
            self._collected = {u: s for u, s in self._collected.items() if u in state.tasks}
        return changed

    # -- rows ------------------------------------------------------------------------------

    def get_heartbeat(self, worker: Any) -> Any:
        """Return the time of the worker's last heartbeat (aware with USE_TZ), or None."""
        try:
            heartbeat = worker.heartbeats[-1]
        except (IndexError, AttributeError, TypeError):
            return None
        return clean_timestamp(heartbeat)

    def worker_row(self, worker: Any) -> dict[str, Any]:
        """Return the WorkerState values of a worker of Celery's State."""
        row = {
            "last_heartbeat": self.get_heartbeat(worker),
            "freq": clean_number(getattr(worker, "freq", None)),
            "sw_ident": clean_text(getattr(worker, "sw_ident", None), 255),
            "sw_ver": clean_text(getattr(worker, "sw_ver", None), 64),
            "sw_sys": clean_text(getattr(worker, "sw_sys", None), 64),
            "processed": clean_int(getattr(worker, "processed", None)),
            "active": clean_int(getattr(worker, "active", None)),
            "loadavg": clean_loadavg(getattr(worker, "loadavg", None)),
        }
        if row["sw_ident"] is None:
            # Only worker events carry these; a worker known from task events alone has
            # Celery's default period, not its own.
            row["freq"] = None
        event = self._last_worker_event.get(worker.hostname)
        if event == "offline":
            row["offline"] = True
        elif row["last_heartbeat"] is not None:
            row["offline"] = False
        return row

    def task_row(self, task: Any, limit: int | None = None) -> dict[str, Any]:
        """Return the TaskState values of a task of Celery's State, cleaned for the database.

        Texts are cut at ``limit`` characters (default: ``monitor_max_text_length``).
        """
        limit = limit or self.settings.max_text_length
        exception = clean_text(task.exception, limit)
        result = clean_text(task.result, limit)
        worker = task.worker.hostname if task.worker is not None else None
        return {
            "state": clean_text(task.state, 64) or states.PENDING,
            "name": clean_text(task.name, 200),
            "tstamp": clean_timestamp(task.timestamp) or fromtimestamp(time.time()),
            "args": clean_text(task.args, limit),
            "kwargs": clean_text(task.kwargs, limit),
            "eta": clean_datetime(task.eta),
            "expires": clean_datetime(task.expires),
            # 1.1.2 stored a failed task's exception as its result; keep that.
            "result": result if result is not None else exception,
            "exception": exception,
            "traceback": clean_text(task.traceback, limit),
            "runtime": clean_number(task.runtime),
            "retries": clean_int(task.retries),
            "worker": clean_id(worker) if worker else None,
            "received": clean_timestamp(task.received),
            "started": clean_timestamp(task.started),
            "parent_id": clean_id(task.parent_id),
            "root_id": clean_id(task.root_id),
        }

    def collect(self, state: Any) -> None:
        """Add what changed in ``state`` since the last shutter to the pending rows."""
        from .managers import merge_task_values

        now = time.monotonic()
        workers = dict(state.workers.items())
        # Celery's State forgets a worker that says goodbye when it was not in the state.
        for hostname, event in self._last_worker_event.items():
            if event == "offline" and hostname not in workers:
                workers[hostname] = state.Worker(hostname)
        for hostname, worker in workers.items():
            key = clean_id(hostname)
            if not key:
                continue
            row = self.worker_row(worker)
            written_at, was_offline = self._worker_written.get(key, (None, None))
            offline = row.get("offline", was_offline)
            due = written_at is None or now - written_at >= self.worker_update_freq
            if due or offline != was_offline:
                self.pending_workers[key] = {**self.pending_workers.get(key, {}), **row}
                self._worker_written[key] = (now, offline)
        self._last_worker_event.clear()

        limit = self.settings.max_text_length
        for uuid, task in self._changed_tasks(state):
            task_id = clean_id(uuid)
            if not task_id:
                continue
            row = self.task_row(task, limit)
            pending = self.pending_tasks.get(task_id)
            if pending is not None:
                row = {**pending, **merge_task_values(pending, row)}
            self.pending_tasks[task_id] = row

    # -- writing ---------------------------------------------------------------------------

    def flush(self) -> int:
        """Write the pending rows in one batch; keep them when the write fails.

        Returns how many task rows changed. A batch the database refuses because of one of
        its rows (not because it is unreachable) is written row by row, and only the rows
        it still refuses are dropped, with an error in the log.
        """
        from django.db import DatabaseError, InterfaceError, OperationalError

        from .managers import write_snapshot

        if not self.pending_tasks and not self.pending_workers:
            return 0
        try:
            _, written = write_snapshot(self.pending_workers, self.pending_tasks)
        except (OperationalError, InterfaceError):
            logger.exception(
                "Could not write %d tasks and %d workers; keeping them for the next shutter.",
                len(self.pending_tasks),
                len(self.pending_workers),
            )
            self._close_broken_connection()
            return 0
        except (DatabaseError, ValueError, TypeError):
            logger.exception("The database refused a batch; writing it row by row.")
            written = self._flush_one_by_one()
        self.pending_tasks.clear()
        self.pending_workers.clear()
        return written

    def _flush_one_by_one(self) -> int:
        from django.db import DatabaseError

        from .managers import write_snapshot

        written = 0
        for hostname, values in self.pending_workers.items():
            try:
                write_snapshot({hostname: values}, {})
            except (DatabaseError, ValueError, TypeError):
                logger.exception("Dropping worker %r the database refuses: %r", hostname, values)
        for task_id, values in self.pending_tasks.items():
            try:
                written += write_snapshot({}, {task_id: values})[1]
            except (DatabaseError, ValueError, TypeError):
                logger.exception("Dropping task %r the database refuses: %r", task_id, values)
        return written

    def _close_broken_connection(self) -> None:
        from django.db import connections

        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()

    # -- Polaroid hooks ----------------------------------------------------------------------

    def shutter(self) -> None:
        """Take a shot; when ``maxrate`` skips the write, still keep what the shot saw."""
        if self.maxrate is None or self.maxrate.can_consume():
            super().shutter()
        else:
            self.collect(self.state)

    def on_shutter(self, state: Any) -> None:
        """Write what changed since the last shutter, in one batch."""
        self.collect(state)
        written = self.flush()
        if written:
            logger.debug("Shutter: wrote %d tasks.", written)

    def handle_worker(self, hostname_worker: tuple[str, Any]) -> Any:
        """Write one worker now and return its WorkerState."""
        from .managers import write_snapshot

        hostname, worker = hostname_worker
        key = clean_id(hostname)
        ids, _ = write_snapshot({key: self.worker_row(worker)}, {})
        offline = self._last_worker_event.get(key) == "offline"
        self._worker_written[key] = (time.monotonic(), offline)
        return self.WorkerState.objects.get(pk=ids[key])

    def handle_task(self, uuid_task: tuple[str, Any], worker: Any = None) -> Any:
        """Write one task now and return its TaskState, or None when nothing was written.

        ``worker`` (a WorkerState or hostname) is used when the task names none.
        """
        from .managers import write_snapshot

        uuid, task = uuid_task
        task_id = clean_id(uuid)
        if not task_id:
            return None
        row = self.task_row(task)
        if row["worker"] is None and worker is not None:
            row["worker"] = getattr(worker, "hostname", worker)
        _, written = write_snapshot({}, {task_id: row})
        if not written:
            return None
        return self.TaskState.objects.get(task_id=task_id)

    def on_cleanup(self) -> int:
        """Hide the expired tasks of each state group, purge the hidden ones.

        Returns how many rows were expired.
        """
        manager = self.TaskState.objects
        expired = (manager.expire_by_states(s, expires) for s, expires in self.expire_task_states)
        dirty = sum(count for count in expired if count is not None)
        if dirty:
            logger.debug("Cleanup: Marked %s objects as dirty.", dirty)
            purged = manager.purge()
            logger.debug("Cleanup: %s objects purged.", purged)
        return dirty
