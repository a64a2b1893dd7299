"""The Celery events camera."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any

from celery import states
from celery.events.snapshot import Polaroid
from celery.events.state import TASK_EVENT_TO_STATE
from celery.utils.imports import symbol_by_name
from celery.utils.log import get_logger
from celery.utils.timer2 import Timer
from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
    connections,
    router,
    transaction,
)

from .conf import MonitorSettings
from .events import TASK_NOTES, TASK_RETRIES, EventGuard, SafeEventReceiver, Shard
from .redaction import Redactor
from .sanitize import (
    MAX_INT,
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

#: Seconds after the camera starts before it settles the tasks it last saw unfinished.
RECONCILE_AFTER = 0.5
#: The longest a timer sleeps before it looks again: how fast it stops when asked.
TIMER_TICK = 0.25
#: The least seconds between two heartbeats of the camera (``CameraState``).
HEARTBEAT_EVERY = 1.0
#: Seconds between two roll-ups of the finished minutes for the dashboard.
ROLLUP_EVERY = 30.0
#: Down, unreachable, or not migrated yet: worth trying again with the next shot.
UNAVAILABLE = (OperationalError, InterfaceError, ProgrammingError)
#: What a batch (or a row) the database, or its driver, refuses raises: the batch is written
#: row by row, and a row refused alone is dropped. A number past a column's range is an
#: OverflowError in some drivers (SQLite's).
REFUSED = (DatabaseError, ValueError, TypeError, OverflowError)
#: The largest value of a 64-bit column.
MAX_BIGINT = 2**63 - 1
#: What a forgotten task of Celery's State serializes with: nothing of its own (see
#: :meth:`Camera._forget_finished`). ``Task.as_dict`` still works, as for Celery's defaults.
_NO_SERIALIZERS: dict = {}
#: Past this many workers remembered, those not heard of for ``FORGET_WORKERS_AFTER``
#: seconds are forgotten (their rows stay).
REMEMBERED_WORKERS = 2_000
FORGET_WORKERS_AFTER = 3600.0


def _signature(task: Any) -> tuple:
    """What a task looked like when it was written; a new event changes it."""
    worker = task.worker.hostname if task.worker is not None else None
    # Celery's attributes hold the last event to arrive, which a late duplicate can set back
    # to what they were at the previous shot: the notes hold the latest of each kind.
    notes = task.__dict__.get(NOTES) or {}
    return (
        task.state,
        task.timestamp,
        task.name,
        task.retries,
        worker,
        *(getattr(task, name) for name in EVENT_TIMESTAMPS),
        tuple(sorted((kind, note[0], note[1]) for kind, note in notes.items())),
        task.__dict__.get(RETRIES),
    )


def _event_values(task: Any) -> dict[str, Any]:
    """The values of a task of Celery's State that the camera stores as text or a number.

    Times are left out: they are stored converted, and 1.1.2 returned them converted too.
    """
    return {
        "state": task.state,
        "name": task.name,
        "args": task.args,
        "kwargs": task.kwargs,
        "result": task.result if task.result is not None else task.exception,
        "exception": task.exception,
        "traceback": task.traceback,
        "runtime": task.runtime,
        "retries": task.retries,
        "parent_id": task.parent_id,
        "root_id": task.root_id,
    }


#: The wrapper billiard sends a pool's exception in (a hard time limit's, a lost worker
#: process's): its repr says nothing, its traceback's last line says what was raised.
_WRAPPED = "ExceptionWithTraceback("


def _unwrapped(exception: Any, traceback: Any) -> Any:
    """The exception a task event names, or the one its traceback ends with when the event
    names only billiard's wrapper (``ExceptionWithTraceback()``)."""
    if not (
        isinstance(exception, str)
        and exception.startswith(_WRAPPED)
        and isinstance(traceback, str)
        and traceback.lstrip().startswith("Traceback")
    ):
        return exception
    last = next((line for line in reversed(traceback.splitlines()) if line.strip()), "")
    if last.startswith((" ", "\t")) or last.startswith("Traceback ("):
        return exception  # not an exception's line
    qualified, _, message = last.partition(": ")
    name = qualified.strip().rsplit(".", 1)[-1]
    if not name.isidentifier():
        return exception
    if message.startswith(f"{name}("):
        return message  # billiard's exceptions give their repr as their message
    return f"{name}({message!r})" if message else f"{name}()"


def _holds(stored: Any, value: Any) -> bool:
    """Whether a stored field holds exactly an event's ``value``: not cut, not cleaned."""
    if value is None or isinstance(value, bool):
        return False
    if isinstance(stored, str):
        return clean_text(value) == stored
    return isinstance(value, int | float) and value == stored


#: The attribute of a Celery Task where the camera notes the latest event of each kind (the
#: guard drops an event field of that name, and of the next).
NOTES = TASK_NOTES
#: The attribute with the highest ``retries`` any task-received of the task carried.
RETRIES = TASK_RETRIES
#: What the events that can decide a task's state carry for its row.
OUTCOME_FIELDS = {
    "succeeded": ("result", "runtime"),
    "failed": ("exception", "traceback"),
    "retried": ("exception", "traceback"),
}
#: The finished states, by Celery's precedence: the first whose event arrived decides.
FINISHED = (("succeeded", states.SUCCESS), ("failed", states.FAILURE), ("revoked", states.REVOKED))
#: The outcome of an event that carries none (shared: it is only read).
_NO_OUTCOME: dict[str, Any] = {}


def note_event(task: Any, subject: str, event: dict) -> None:
    """Note on ``task`` the time, worker and outcome of the latest event of each kind."""
    attributes = task.__dict__
    notes = attributes.get(NOTES)
    if notes is None:
        notes = attributes[NOTES] = {}
    timestamp = event["timestamp"]
    previous = notes.get(subject)
    if previous is None or previous[0] <= timestamp:
        hostname = None if subject == "sent" else event.get("hostname")  # a client's
        fields = OUTCOME_FIELDS.get(subject)
        outcome = {key: event[key] for key in fields if key in event} if fields else _NO_OUTCOME
        notes[subject] = (timestamp, hostname, outcome)
    retries = event.get("retries")
    if retries is None:
        return
    if retries.__class__ is not int or not 0 <= retries <= MAX_INT:
        retries = clean_int(retries)
    if retries is not None and retries > attributes.get(RETRIES, -1):
        attributes[RETRIES] = retries


def decide(task: Any) -> tuple[str, str, float, str | None, dict] | None:
    """Return ``(state, subject, time, hostname, outcome)`` of the event that decides the row.

    Celery's State lets a task-retried (and any custom state) replace a finished state, so
    a late retried event of an earlier attempt would take a finished task back. Here a
    finished event always decides (by Celery's precedence when there are several); else the
    latest event does, the higher precedence at the same time, but a client's task-sent
    (PENDING) only when there is no other: its time is the client's, and may come after the
    worker's (as :func:`~.writer.incoming_state_wins`). None when the camera saw none of the
    task's events (they reached the state before the camera watched it).
    """
    notes = task.__dict__.get(NOTES)
    if not notes:
        return None
    for subject, state in FINISHED:
        if subject in notes:
            return (state, subject, *notes[subject])

    def order(item: tuple[str, tuple]) -> tuple[bool, float, int]:
        subject, (timestamp, _hostname, _outcome) = item
        state = _state_of(subject)
        return state != states.PENDING, timestamp, -states.precedence(state)

    subject, (timestamp, hostname, outcome) = max(notes.items(), key=order)
    return _state_of(subject), subject, timestamp, hostname, outcome


def _shard(shard: Shard | tuple[int, int] | str | None) -> Shard | None:
    if shard is None or isinstance(shard, Shard):
        return shard
    if isinstance(shard, str):
        return Shard.parse(shard)
    return Shard(*shard)


def _goodbye_time(worker: Any) -> Any:
    """When a worker's last event (its goodbye) was received, as a heartbeat is timed; its
    own time when the receiver did not say; None when neither is a time."""
    for attribute in ("local_received", "timestamp"):
        stamp = clean_timestamp(getattr(worker, attribute, None))
        if stamp is not None:
            return stamp
    return None


def _state_of(subject: str) -> str:
    return TASK_EVENT_TO_STATE.get(subject) or subject.upper()


class Camera(Polaroid):
    """The Celery events Polaroid snapshot camera.

    Every shutter turns what changed in the cluster state since the previous one into one
    batched write. What could not be written (the database was down) is kept and written
    with the next shutter, so no finished task is lost when Celery clears its state.
    """

    clear_after = True
    worker_update_freq = WORKER_UPDATE_FREQ
    #: Seconds after the camera starts before it marks tasks of silent workers lost: the
    #: time to hear the heartbeats of the workers that are alive.
    lost_after = 30.0
    #: Seconds between two looks for workers that stopped.
    lost_check_every = 10.0
    #: Whether the broker keeps the events sent while no camera runs (the runner's durable
    #: queue on RabbitMQ): then unfinished tasks are not noted as possibly stale at start.
    events_kept_while_away = False

    def __init__(
        self, *args: Any, shard: Shard | tuple[int, int] | str | None = None, **kwargs: Any
    ) -> None:
        if kwargs.get("timer") is None:
            kwargs["timer"] = Timer(max_interval=TIMER_TICK)
        super().__init__(*args, **kwargs)
        self.settings = MonitorSettings(self.app)
        #: The part of the tasks this camera keeps (``Shard``), or None for all of them.
        self.shard = _shard(shard)
        #: Rows collected but not yet written: task id -> values, hostname -> values.
        self.pending_tasks: dict[str, dict[str, Any]] = {}
        self.pending_workers: dict[str, dict[str, Any]] = {}
        #: The signature each unfinished task had when it was last collected.
        self._collected: dict[str, tuple] = {}
        #: The finished tasks collected by this shot: the state forgets them after it.
        self._finished: list[str] = []
        #: When each worker's heartbeat was last collected (monotonic), and its offline flag.
        self._worker_written: dict[str, tuple[float, bool]] = {}
        #: Checks every event before the state sees it; counts the refused and repaired.
        self.guard = EventGuard()
        #: The tasks events touched since the last shot (the objects: Celery's LRU may
        #: evict a task before the shot).
        self._dirty_tasks: dict[str, Any] = {}
        self._last_worker_event: dict[str, str] = {}
        #: The worker objects of the goodbyes noted there: Celery's State drops the worker
        #: at its goodbye, and the object keeps when the goodbye came.
        self._goodbyes: dict[str, Any] = {}
        #: Guards what the event hook notes (it runs outside the state's lock).
        self._events_lock = threading.Lock()
        self._started_at = time.monotonic()
        self._next_lost_check = 0.0
        #: The workers whose tasks were marked lost, with the heartbeat they had then.
        self._lost_workers: dict[int, Any] = {}
        #: Guards the pending rows (collected under the state's lock, written outside it),
        #: and keeps two writes (a timer shot and the last shot) from running at once.
        self._pending_lock = threading.RLock()
        self._flush_lock = threading.Lock()
        #: Events the state handled, since the camera started.
        self.events_seen = 0
        #: Task-started events seen per worker, and per worker ``[processed at the base
        #: heartbeat, started events seen then, missed before it, missed now]``: the
        #: missed-events count (see ``WorkerState.events_missed``). A shard sees a part of
        #: the tasks only, so it does not count.
        self._started_seen: dict[str, int] = {}
        self._missed: dict[str, list[int]] = {}
        #: What the camera's own heartbeat (``CameraState``) reports.
        self.tasks_written = 0
        self.write_seconds = 0.0
        self._beat_at: tuple[float, int] | None = None
        self._camera_started: Any = None
        self._sampler: Any = None
        self._watch_events()

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

    @property
    def expire_task_states(self) -> tuple[tuple[frozenset[str], Any], ...]:
        """Return a twople of Celery task states and expiration timedeltas."""
        return self.settings.expire_task_states

    # -- seeing what changed ---------------------------------------------------------------

    def handle_checked(self, event: dict) -> Any:
        """Take an event that a :class:`~.events.SafeEventReceiver` with this camera's guard
        and shard has checked already.

        :meth:`_watch_events` replaces this with the state's handler behind the guard's
        shield, without the second check; a camera that watches the events its own way
        hands them to ``state.event``.
        """
        return self.state.event(event)

    def _watch_events(self) -> None:
        """Put the guard in front of the state's ``event()``, and note what each event did.

        Events go to ``state.event``, which checks them (and drops the other shards' task
        events), or, checked already by a :class:`~.events.SafeEventReceiver` with this
        camera's guard and shard, to :attr:`handle_checked`. Both ways of running the camera
        use such a receiver: the runner's, and the one Celery makes after the camera for
        ``celery events --camera``, which Celery gives ``state.event``.
        """
        state, handle = self.state, self.state.event
        dirty, last_worker_event, goodbyes, lock = (
            self._dirty_tasks,
            self._last_worker_event,
            self._goodbyes,
            self._events_lock,
        )
        count_missed = self.shard is None
        started_seen = self._started_seen
        task_class = state.Task

        def handle_and_note(event: dict) -> Any:
            result = handle(event)
            if result:
                (obj, _created), subject = result
                with lock:
                    self.events_seen += 1
                    if isinstance(obj, task_class):
                        dirty[obj.uuid] = obj
                        note_event(obj, subject, event)
                        if count_missed and subject == "started":
                            hostname = event.get("hostname")
                            started_seen[hostname] = started_seen.get(hostname, 0) + 1
                    else:
                        last_worker_event[obj.hostname] = subject
                        if subject == "offline":
                            goodbyes[obj.hostname] = obj
                        if count_missed and "processed" in event:
                            self._note_processed(obj.hostname, event["processed"])
            return result

        state.event = self.guard.wrap(handle_and_note)
        # The entry for events this camera's receiver has checked, and kept for its shard,
        # already (the runner's): each event is checked once.
        self.handle_checked = self.guard.shield(handle_and_note)  # type: ignore[method-assign]
        if self.shard is not None:
            # The tasks of other shards never reach the state: their memory and their
            # writes are the other cameras'.
            state.event = self.shard.filter(state.event)
        events = self.app.events
        if "Receiver" not in vars(events):  # not made yet: make it check events too
            # Celery hands it the state's (guarded) event(): it hands on the checked form.
            events.receiver_cls = type(
                "CameraEventReceiver",
                (SafeEventReceiver,),
                {
                    "guard": self.guard,
                    "shard": self.shard,
                    "checked_forms": {state.event: self.handle_checked},
                },
            )

    def _note_processed(self, hostname: str, processed: Any) -> None:
        """Compare a heartbeat's ``processed`` count with the task-started events seen.

        The worker counts a task as processed when it starts it, and sends task-started
        then: what the count grew by, beyond the started events the camera received from
        the worker since its first heartbeat, never arrived. A count that went down is a
        restarted worker: counting starts again from it, keeping what was missed before.
        Hold ``_events_lock``.
        """
        if processed.__class__ is not int or not 0 <= processed <= MAX_BIGINT:
            return
        seen = self._started_seen.get(hostname, 0)
        record = self._missed.get(hostname)
        if record is None or processed < record[0]:
            before = record[3] if record is not None else 0
            self._missed[hostname] = [processed, seen, before, before]
            return
        base, seen_at_base, before, _ = record
        record[3] = before + max(0, (processed - base) - (seen - seen_at_base))

    def _changed_tasks(self, state: Any) -> list[tuple[str, Any]]:
        """The tasks events touched since the last shot that changed. Hold ``_events_lock``."""
        candidates = list(self._dirty_tasks.items())
        self._dirty_tasks.clear()
        changed = []
        collected, ready = self._collected, states.READY_STATES
        for uuid, task in candidates:
            try:
                if task.state in ready:
                    # Dropped from the state after the shot (see _forget_finished). What was
                    # collected of the task before was unfinished: it changed.
                    collected.pop(uuid, None)
                    self._finished.append(uuid)
                else:
                    signature = _signature(task)
                    if collected.get(uuid) == signature:
                        continue
                    collected[uuid] = signature
            except Exception:
                self._skip_task(uuid)
                continue
            changed.append((uuid, task))
        if len(self._collected) > 2 * max(len(state.tasks), 1000):
            self._collected = {u: s for u, s in self._collected.items() if u in state.tasks}
        return changed

    # -- rows ------------------------------------------------------------------------------

    def get_heartbeat(self, worker: Any) -> Any:
        """Return the time of the worker's last heartbeat (aware with USE_TZ), or None."""
        try:
            heartbeats = reversed(worker.heartbeats)
        except (AttributeError, TypeError):
            return None
        # The newest heartbeat that is not in the future (a worker's clock can be wrong).
        return next(filter(None, map(clean_timestamp, heartbeats)), None)

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
        missed = self._missed.get(worker.hostname)
        if missed is not None:
            row["events_missed"] = min(missed[3], MAX_BIGINT)
        # Only the worker's own events say whether it runs: a worker that said goodbye
        # (a warm shutdown) still sends the events of the tasks it finishes, and Celery's
        # State takes each for a heartbeat; it exits without another word.
        event = self._last_worker_event.get(worker.hostname)
        if event == "offline":
            row["offline"] = True
            if row["last_heartbeat"] is None:
                # Celery forgets the heartbeats at the goodbye: the goodbye's time is the
                # worker's last sign, which a heartbeat another camera received before it
                # (sharing the events with this one) must not take back.
                row["last_heartbeat"] = _goodbye_time(worker)
        elif event is not None and row["last_heartbeat"] is not None:
            row["offline"] = False
        return row

    def task_row(
        self, task: Any, limit: int | None = None, redactor: Redactor | None = None
    ) -> dict[str, Any]:
        """Return the TaskState values of a task of Celery's State, cleaned for the database.

        Texts are cut at ``limit`` characters (default: ``monitor_max_text_length``), and
        redacted by ``redactor`` (default: from the ``monitor_redact_*`` settings).
        """
        limit = limit or self.settings.max_text_length
        if redactor is None:
            redactor = Redactor.from_settings(self.settings)
        state, timestamp = task.state, task.timestamp
        worker = task.worker.hostname if task.worker is not None else None
        result, runtime, exception, traceback = (
            task.result,
            task.runtime,
            task.exception,
            task.traceback,
        )
        received, started = task.received, task.started
        decided = decide(task)
        if decided is not None:
            # The state, time, worker and outcome of the event that decides the row; the
            # latest received and started times (a retried task is received again).
            state, _subject, timestamp, hostname, outcome = decided
            if outcome:
                result = outcome.get("result", result)
                runtime = outcome.get("runtime", runtime)
                exception = outcome.get("exception", exception)
                traceback = outcome.get("traceback", traceback)
            if hostname:
                worker = hostname
            notes = task.__dict__[NOTES]
            if "received" in notes:
                received = notes["received"][0]
            if "started" in notes:
                started = notes["started"][0]
        retries = clean_int(task.retries)
        noted_retries = task.__dict__.get(RETRIES)
        if noted_retries is not None and (retries is None or noted_retries > retries):
            retries = noted_retries
        exception = clean_text(_unwrapped(exception, traceback), limit)
        result = clean_text(result, limit)
        row = {
            "state": clean_text(state, 64) or states.PENDING,
            "name": clean_text(task.name, 200),
            "tstamp": clean_timestamp(timestamp) or fromtimestamp(time.time()),
            "args": clean_text(task.args, limit),
            "kwargs": clean_text(task.kwargs, limit),
            "eta": clean_datetime(task.eta),
            "expires": clean_datetime(task.expires),
            "result": result,
            "exception": exception,
            "traceback": clean_text(traceback, limit),
            "runtime": clean_number(runtime),
            "retries": retries,
            "worker": clean_id(worker) if worker else None,
            "received": clean_timestamp(received),
            "started": clean_timestamp(started),
            # A retry is sent from the task itself: Celery names the task its own parent.
            "parent_id": clean_id(task.parent_id) if task.parent_id != task.uuid else None,
            "root_id": clean_id(task.root_id),
        }
        if redactor:
            redactor.apply(row["name"], row)
        if row["result"] is None:
            # 1.1.2 stored a failed task's exception as its result; keep that.
            row["result"] = row["exception"]
        return row

    def collect(self, state: Any) -> None:
        """Add what changed in ``state`` since the last shot to the pending rows."""
        from .writer import merge_task_values

        now = time.monotonic()
        workers = dict(state.workers.items())
        # The event hook notes a worker's last event under its own lock, once the state has
        # taken the event (and let go of its lock): a note may come while this shot runs.
        with self._events_lock:
            noted = dict(self._last_worker_event)
            goodbyes = dict(self._goodbyes)
        # Celery's State forgets a worker that says goodbye: its object at the goodbye.
        for hostname, event in noted.items():
            if event == "offline" and hostname not in workers:
                workers[hostname] = goodbyes.get(hostname) or state.Worker(hostname)
        worker_rows = {}
        for hostname, worker in workers.items():
            key = clean_id(hostname)
            if not key:
                continue
            row = self.worker_row(worker)
            written_at, was_offline = self._worker_written.get(key, (None, None))
            offline = row.get("offline", was_offline)
            due = written_at is None or now - written_at >= self.worker_update_freq
            if due or offline != was_offline:
                worker_rows[key] = row
                self._worker_written[key] = (now, offline)
        with self._events_lock:
            # What was noted since the shot read the notes is the next shot's to write (an
            # offline worker the state has forgotten already).
            for hostname, event in noted.items():
                if self._last_worker_event.get(hostname) == event:
                    del self._last_worker_event[hostname]
                    self._goodbyes.pop(hostname, None)
        if len(self._worker_written) > REMEMBERED_WORKERS:
            self._forget_quiet_workers(now)

        limit = self.settings.max_text_length
        redactor = Redactor.from_settings(self.settings)
        task_rows = {}
        # The event hook notes on the tasks outside the state's lock: read them under its own.
        with self._events_lock:
            for uuid, task in self._changed_tasks(state):
                task_id = clean_id(uuid)
                if task_id:
                    try:
                        task_rows[task_id] = self.task_row(task, limit, redactor)
                    except Exception:
                        self._skip_task(uuid)

        with self._pending_lock:
            for key, row in worker_rows.items():
                self.pending_workers[key] = {**self.pending_workers.get(key, {}), **row}
            for task_id, row in task_rows.items():
                pending = self.pending_tasks.get(task_id)
                if pending is not None:
                    row = {**pending, **merge_task_values(pending, row)}
                self.pending_tasks[task_id] = row

    def _forget_quiet_workers(self, now: float) -> None:
        """Forget what the camera keeps of each worker not heard of for an hour.

        Workers named anew at each start (containers, autoscaled hosts) would otherwise
        leave an entry each, for as long as the camera runs. A worker forgotten that comes
        back counts its missed events from then on, as after the camera's own restart.
        """
        quiet = {
            key
            for key, (written_at, _) in self._worker_written.items()
            if now - written_at > FORGET_WORKERS_AFTER
        }
        for key in quiet:
            del self._worker_written[key]
        with self._events_lock:
            for table in (self._missed, self._started_seen):
                for hostname in [h for h in table if clean_id(h) in quiet]:
                    del table[hostname]

    def _skip_task(self, uuid: Any) -> None:
        """Leave out of this shot a task whose row cannot be made, and say so: one task that
        Celery's State holds in a shape nothing expected never takes the others' rows down."""
        logger.exception("Could not make the row of task %r; leaving it out of this shot.", uuid)

    def _limit_pending(self) -> None:
        """Drop the oldest pending rows past ``monitor_max_pending_tasks`` (database down).

        Applied to what a failed write kept, never to a shot about to be written: a shot of
        a large backlog is written whole.
        """
        excess = len(self.pending_tasks) - self.settings.max_pending_tasks
        if excess > 0:
            for task_id in list(self.pending_tasks)[:excess]:
                del self.pending_tasks[task_id]
            logger.error(
                "The database has been unreachable too long: dropped the %d oldest of the "
                "tasks waiting to be written (monitor_max_pending_tasks).",
                excess,
            )

    def _restore(self, tasks: dict[str, dict], workers: dict[str, dict]) -> None:
        """Put rows that could not be written back, before what was collected meanwhile."""
        from .writer import merge_task_values

        with self._pending_lock:
            newer_tasks, newer_workers = self.pending_tasks, self.pending_workers
            for task_id, row in newer_tasks.items():
                older = tasks.get(task_id)
                tasks[task_id] = (
                    row if older is None else {**older, **merge_task_values(older, row)}
                )
            for hostname, row in newer_workers.items():
                workers[hostname] = {**workers.get(hostname, {}), **row}
            self.pending_tasks, self.pending_workers = tasks, workers
            self._limit_pending()

    # -- writing ---------------------------------------------------------------------------

    def flush(self) -> int:
        """Write the pending rows, a transaction per ``monitor_write_batch_size`` tasks.

        Returns how many task rows changed. While the database cannot be written (down,
        unreachable, not migrated yet) the rows stay pending for the next shot. A batch the
        database refuses because of one of its rows is written row by row, and only the rows
        it still refuses are dropped, with an error in the log.
        """
        from .writer import write_snapshot

        with self._flush_lock:
            with self._pending_lock:
                tasks, workers = self.pending_tasks, self.pending_workers
                self.pending_tasks, self.pending_workers = {}, {}
            if not tasks and not workers:
                return 0
            written = 0
            batch = self.settings.write_batch_size
            task_ids = list(tasks)
            try:
                for start in range(0, max(len(task_ids), 1), batch):
                    chunk = {
                        task_id: tasks[task_id] for task_id in task_ids[start : start + batch]
                    }
                    try:
                        written += write_snapshot(workers, chunk)[1]
                    except UNAVAILABLE:
                        raise
                    except REFUSED:
                        logger.exception("The database refused a batch; writing it row by row.")
                        written += self._write_one_by_one(workers, chunk)
                    workers = {}
                    for task_id in chunk:
                        del tasks[task_id]
            except UNAVAILABLE:
                logger.exception(
                    "Could not write %d tasks and %d workers; keeping them for the next shot.",
                    len(tasks),
                    len(workers),
                )
                self._restore(tasks, workers)
                self._close_broken_connection()
            except BaseException:
                # Not the database's refusal nor its absence (a bug, a driver's own error):
                # the rows are kept all the same, and the error goes to the shot's log.
                self._restore(tasks, workers)
                raise
            return written

    def _write_one_by_one(self, workers: dict[str, dict], tasks: dict[str, dict]) -> int:
        from .writer import write_snapshot

        written = 0
        rows = [({hostname: values}, {}) for hostname, values in workers.items()]
        rows += [({}, {task_id: values}) for task_id, values in tasks.items()]
        for worker_row, task_row in rows:
            try:
                written += write_snapshot(worker_row, task_row)[1]
            except UNAVAILABLE:
                raise
            except REFUSED:
                logger.exception("Dropping a row the database refuses: %r", worker_row or task_row)
        return written

    def _close_broken_connection(self) -> None:
        for connection in connections.all(initialized_only=True):
            if not connection.in_atomic_block:
                connection.close_if_unusable_or_obsolete()

    # -- Polaroid hooks ----------------------------------------------------------------------

    def install(self) -> None:
        """Set Django up, then schedule the shots, and the cleanup on a timer of its own.

        A long expiry and purge then never delays the shots (and the heartbeats they write).
        Of several shards, only the first expires, purges and settles unfinished tasks.
        """
        self.django_setup()
        from django.utils import timezone

        self._installed_at = timezone.now()
        self._tref = self.timer.call_repeatedly(self.freq, self.capture)
        self.cleanup_timer = Timer(max_interval=TIMER_TICK)
        if self.shard is None or self.shard.index == 1:
            # Shards share the rows: the first one keeps the house for all.
            timer, job = self.cleanup_timer, self.housekeeping
            self._ctref = timer.call_repeatedly(self.cleanup_freq, job(self.cleanup))
            self._reconcile_ref = timer.call_after(RECONCILE_AFTER, job(self.reconcile))
            self._rref = timer.call_repeatedly(ROLLUP_EVERY, job(self.roll_up))
            every = self.settings.queue_sample_every
            if every:
                self._qref = timer.call_repeatedly(every, job(self.sample_queues))

    def housekeeping(self, job: Any) -> Any:
        """``job`` as the cleanup timer runs it: on its thread's own database connection,
        replaced when a database restart broke it (as the shots replace theirs), before and
        after each run."""

        def run() -> Any:
            self._close_broken_connection()
            try:
                return job()
            finally:
                self._close_broken_connection()

        run.__name__ = getattr(job, "__name__", "housekeeping")
        return run

    def reconcile(self) -> tuple[int, int]:
        """Settle the tasks recorded unfinished before the camera started (see ``reconcile``).

        Returns how many were settled from the result backend, and how many were noted as
        possibly stale.
        """
        from .reconcile import reconcile_unfinished

        try:
            return reconcile_unfinished(
                self.app, self._installed_at, self.settings, self.events_kept_while_away
            )
        except DatabaseError:
            logger.warning("Could not settle the unfinished tasks.", exc_info=True)
            return 0, 0

    def capture(self, force: bool = False) -> int:
        """Take a shot: collect under the state's lock, write after releasing it.

        The receiver keeps handling events while the database write runs. Returns how many
        task rows were written. ``force`` ignores ``maxrate`` (the last shot).
        """
        due: list[bool] = []

        def shoot() -> None:
            try:
                if force or self.maxrate is None or self.maxrate.can_consume():
                    self.shutter_signal.send(sender=self.state)
                    due.append(True)
                self.collect(self.state)
            finally:
                if self.clear_after:
                    self._forget_finished(self.state)
                else:
                    self._finished.clear()

        self.state.freeze_while(shoot)
        began = time.perf_counter()
        wrote = due and bool(self.pending_tasks or self.pending_workers)
        written = self.flush() if due else 0
        if wrote:
            self.write_seconds = time.perf_counter() - began
            self.tasks_written += written
        self.mark_lost_tasks()
        if due and self._heartbeat_due(wrote):
            self.record_heartbeat()
        if written:
            logger.debug("Shot: wrote %d tasks.", written)
        return written

    @property
    def shot_period(self) -> float:
        """Seconds between two shots: the frequency, or longer when ``maxrate`` allows fewer
        (the heartbeat goes with the shots, and the health check expects one a period)."""
        period = float(self.freq)
        fill_rate = getattr(self.maxrate, "fill_rate", None)
        if fill_rate:
            period = max(period, 1.0 / float(fill_rate))
        return period

    def _heartbeat_due(self, wrote: bool) -> bool:
        """Whether this shot writes the heartbeat: at most one a second (shots can follow
        each other faster under load), and every ``idle_heartbeat_every`` seconds while
        the shots write nothing."""
        from .models import CameraState

        if self._beat_at is None:
            return True
        every = HEARTBEAT_EVERY if wrote else CameraState.idle_heartbeat_every
        return time.monotonic() - self._beat_at[0] >= every

    def record_heartbeat(self, stopped: bool = False) -> None:
        """Write the camera's own heartbeat (``CameraState``): its last shot and counters.

        Written with the shots that wrote rows (at most once a second), and every
        ``idle_heartbeat_every`` seconds by an idle camera. The health check, the
        dashboard and the metrics read it. A database that cannot be written only costs
        the heartbeat of this shot.
        """
        from django.utils import timezone

        from . import __version__
        from .models import CameraState

        now_wall, now = timezone.now(), time.monotonic()
        if self._camera_started is None:
            self._camera_started = now_wall
        events = self.events_seen
        rate = 0.0
        if self._beat_at is not None and now > self._beat_at[0]:
            rate = (events - self._beat_at[1]) / (now - self._beat_at[0])
        self._beat_at = (now, events)
        key, hostname, pid = self.camera_key()
        values = {
            "hostname": hostname,
            "pid": pid,
            "version": __version__[:32],
            "frequency": self.shot_period,
            "shard": str(self.shard) if self.shard is not None else "",
            "started": self._camera_started,
            "last_shot": now_wall,
            "stopped": now_wall if stopped else None,
            "events": events,
            "events_invalid": self.guard.refused,
            "events_repaired": self.guard.repaired,
            "events_per_second": rate,
            "tasks_written": self.tasks_written,
            "write_seconds": self.write_seconds,
            "rows_pending": len(self.pending_tasks) + len(self.pending_workers),
        }
        try:
            self._write_heartbeat(CameraState, key, values)
        except DatabaseError:
            logger.debug("Could not write the camera's heartbeat.", exc_info=True)

    @staticmethod
    def _write_heartbeat(model: Any, key: str, values: dict[str, Any]) -> None:
        """Update the camera's row in one statement; make it when there is none yet.

        Only this process writes its row (its key names the process), so nothing need be
        locked or read first: ``update_or_create`` took four round trips (a transaction, a
        locking read, the write, the commit), at every shot that wrote rows.
        """
        db = router.db_for_write(model)
        rows = model._default_manager.using(db)
        # In a caller's transaction (never the camera's own timers), a savepoint: an error
        # leaves that transaction usable, as update_or_create's did.
        inside = connections[db].in_atomic_block
        with transaction.atomic(using=db) if inside else contextlib.nullcontext():
            if rows.filter(key=key).update(**values):
                return
            try:
                with transaction.atomic(using=db):
                    rows.create(key=key, **values)
            except IntegrityError:  # made meanwhile (a last beat on stopping): update it
                rows.filter(key=key).update(**values)

    @staticmethod
    def camera_key() -> tuple[str, str, int]:
        """``(key, hostname, pid)`` of this process's camera: its ``CameraState`` row."""
        hostname, pid = socket.gethostname(), os.getpid()
        return f"{hostname}:{pid}"[:255], hostname[:255], pid

    def sample_queues(self) -> list:
        """Measure the broker's queues and write a sample each (see ``queues``)."""
        from .queues import QueueSampler

        if self._sampler is None:
            self._sampler = QueueSampler(self.app)
        try:
            return self._sampler.sample()
        except Exception:  # never the camera's end: the next sample tries again
            logger.warning("Could not sample the queues.", exc_info=True)
            return []

    def roll_up(self) -> int:
        """Write the dashboard's rollups of the minutes that ended (see ``stats.roll_up``)."""
        from .stats import roll_up

        try:
            return roll_up()
        except DatabaseError:
            logger.warning("Could not write the rollups.", exc_info=True)
            return 0

    def _forget_finished(self, state: Any) -> None:
        """Celery's clear after a shot, without its walk over every task of the state.

        ``State.clear()`` keeps the unfinished tasks by copying them all into a new
        mapping, which with a backlog of 200,000 unfinished tasks took 30 times as long as
        the rest of a shot. The finished tasks are those this shot collected (each got its
        final state by an event the camera saw): they alone are dropped. A task an event
        finishes while the shot runs is dropped by the next one. Hold the state's lock.
        """
        finished, self._finished = self._finished, []
        tasks, ready = state.tasks, states.READY_STATES
        for uuid in finished:
            # Read without moving it in Celery's LRU order, when the mapping allows it.
            task = tasks.data.get(uuid) if hasattr(tasks, "data") else tasks.get(uuid)
            if task is not None and task.state in ready:
                tasks.pop(uuid, None)
                # Celery's Task refers to itself (its serializers are its bound methods):
                # unlinked, it is freed now, not by a collection walking every such task.
                task._serializer_handlers = _NO_SERIALIZERS
        state.workers.clear()
        heap = getattr(state, "_taskheap", None)  # the events in time order (tasks_by_time)
        if isinstance(heap, list):
            heap.clear()
        state.event_count = state.task_count = 0

    def cancel(self) -> None:
        """Stop the timers and take a last shot, whatever the time since the previous one."""
        for ref in (
            self._tref,
            self._ctref,
            getattr(self, "_rref", None),
            getattr(self, "_qref", None),
            getattr(self, "_reconcile_ref", None),
        ):
            if ref is not None:
                ref.cancel()
        self._tref = self._ctref = self._rref = self._qref = self._reconcile_ref = None
        self.capture(force=True)
        self.record_heartbeat(stopped=True)
        if self.pending_tasks or self.pending_workers:
            logger.error(
                "Stopped with %d tasks and %d workers not written: the database is unreachable.",
                len(self.pending_tasks),
                len(self.pending_workers),
            )

    def close(self) -> None:
        """Close the database connections of the timer threads, then stop them.

        What a timer still has to do is dropped first: a call run after its thread's
        connections were closed (the settling of unfinished tasks, half a second after
        the camera started) would open one again, and leave it open when the thread ends.
        """
        for timer in (self.timer, getattr(self, "cleanup_timer", None)):
            if timer is None:
                continue
            # Under the timer's lock: its thread reads the schedule under it, and a schedule
            # emptied between two of its reads would end the process (Celery's timer exits
            # on any error).
            with getattr(timer, "mutex", None) or contextlib.nullcontext():
                timer.clear()
            done = threading.Event()

            def close_connections(done: threading.Event = done) -> None:
                try:
                    connections.close_all()
                finally:
                    done.set()

            timer.call_after(0, close_connections)
            done.wait(10)
            timer.stop()

    def shutter(self) -> None:
        """Polaroid's shutter: write the shot, or when ``maxrate`` skips it, keep it."""
        if self.maxrate is None or self.maxrate.can_consume():
            self.shutter_signal.send(sender=self.state)
            self.on_shutter(self.state)
        else:
            self.collect(self.state)

    def on_shutter(self, state: Any) -> None:
        """Write what changed since the last shot, in batches."""
        self.collect(state)
        self.flush()

    def handle_worker(self, hostname_worker: tuple[str, Any]) -> Any:
        """Write one worker now and return its WorkerState."""
        from .writer import write_snapshot

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
        from .writer import write_snapshot

        uuid, task = uuid_task
        task_id = clean_id(uuid)
        if not task_id:
            return None
        row = self.task_row(task)
        if row["worker"] is None and worker is not None:
            row["worker"] = getattr(worker, "hostname", worker)
        before = self.TaskState.objects.filter(task_id=task_id).values().first()
        write_snapshot({}, {task_id: row})
        obj = self.TaskState.objects.get(task_id=task_id)
        if before is not None and before == self.TaskState.objects.filter(pk=obj.pk).values()[0]:
            return None  # nothing changed
        # As 1.1.2 did, the instance carries the event's own values (a result of 42 is the
        # int 42; the database holds the text "42"), but only where the row holds exactly
        # that value: a field a late event lost to a finished state keeps the stored one.
        for field, value in _event_values(task).items():
            if _holds(getattr(obj, field), value):
                setattr(obj, field, value)
        return obj

    def mark_lost_tasks(self, force: bool = False) -> int:
        """Mark lost the unfinished tasks of workers that stopped; return how many.

        A worker stopped when it said goodbye or its heartbeats stopped (see
        :meth:`WorkerState.is_alive`). Looks every ``lost_check_every`` seconds, and only
        once the camera has run ``lost_after`` seconds (before that, a silent worker may
        just not have been heard yet).
        """
        now = time.monotonic()
        if not force and (now < self._next_lost_check or now - self._started_at < self.lost_after):
            return 0
        self._next_lost_check = now + self.lost_check_every
        try:
            stopped = [
                worker
                for worker in self.WorkerState.objects.exclude(last_heartbeat=None)
                if not worker.is_alive()
                and self._lost_workers.get(worker.pk) != worker.last_heartbeat
            ]
            if not stopped:
                return 0
            marked = self.TaskState.objects.mark_lost(worker.pk for worker in stopped)
        except DatabaseError:
            logger.warning("Could not look for tasks of stopped workers.", exc_info=True)
            return 0
        for worker in stopped:
            self._lost_workers[worker.pk] = worker.last_heartbeat
        if marked:
            logger.warning(
                "Marked %d unfinished tasks lost: their workers stopped (%s).",
                marked,
                ", ".join(sorted(worker.hostname for worker in stopped))[:500],
            )
        return marked

    def _expire_queue_samples(self) -> None:
        from django.utils import timezone

        from .models import QueueSample

        expires = self.settings.queue_samples_expires
        if expires is None:
            return
        try:
            QueueSample.objects.filter(sampled__lt=timezone.now() - expires).delete()
        except DatabaseError:
            logger.warning("Could not delete the old queue samples.", exc_info=True)

    def on_cleanup(self) -> int:
        """Hide the expired tasks of each state group, purge the hidden ones.

        Returns how many rows were expired.
        """
        manager = self.TaskState.objects
        counts = [manager.expire_by_states(s, expires) for s, expires in self.expire_task_states]
        # A state Celery does not define (PROGRESS) is in none of the groups.
        counts.append(manager.expire_custom_states(self.settings.task_custom_expires))
        self._expire_queue_samples()
        dirty = sum(count for count in counts if count is not None)
        if dirty:
            logger.debug("Cleanup: Marked %s objects as dirty.", dirty)
            purged = manager.purge()
            logger.debug("Cleanup: %s objects purged.", purged)
        return dirty
