"""Check every event before Celery's receiver and State see it.

Anything that can publish to the broker can send events, and Celery trusts them: a clock
that is not a number breaks the receiver's Lamport clock and, once in the State's event
heap, every later task event; an event without a uuid or hostname raises in the State; a
field named like one of the State's own attributes (``worker``, ``event``, ``heartbeats``)
replaces it. :func:`clean_event` refuses what cannot be a Celery event and repairs what can
be repaired; :class:`EventGuard` counts both and logs them at most once a minute; and
:class:`SafeEventReceiver` is Celery's receiver with the guard in front of it. A bad event
is never fatal and never harms the events around it.
"""

from __future__ import annotations

import inspect
import logging
import math
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from celery.events.receiver import EventReceiver
from celery.events.state import Task, Worker

from .sanitize import encodable as _encodable
from .sanitize import escape_id

__all__ = ["EventGuard", "SafeEventReceiver", "Shard", "clean_event"]

logger = logging.getLogger(__name__)

#: ``task-<subject>`` or ``worker-<subject>``; a subject Celery does not know is a custom
#: state (``task-progress`` sets PROGRESS).
TYPE_RE = re.compile(r"\A(task|worker)-[A-Za-z0-9_.]{1,64}\Z")
#: The longest task id or hostname taken (the database keeps a hash past its column).
MAX_ID_LENGTH = 1024
#: Seconds between two log lines about refused or repaired events.
LOG_EVERY = 60.0
#: Fields that are ids: the State uses them as dict keys, so they must be strings.
ID_FIELDS = ("name", "parent_id", "root_id")


def _own_attributes(cls: type, extra: set[str]) -> frozenset[str]:
    """The names of ``cls``'s methods and properties: an event field must not shadow them."""
    names = set(extra)
    for name in dir(cls):
        value = inspect.getattr_static(cls, name)
        if callable(value) or isinstance(value, property | staticmethod | classmethod):
            names.add(name)
    return frozenset(names)


#: The attributes the camera keeps on Celery's Task objects: its notes of the latest event of
#: each kind, and the highest ``retries`` a task-received carried.
TASK_NOTES, TASK_RETRIES = "monitor_events", "monitor_retries"
#: Attributes of Celery's Task that an event's fields would overwrite (the State copies a
#: task event's fields onto the task). ``state`` too: an event that comes after a later
#: state's, of a state without merge rules (task-sent, a custom state), has all its fields
#: copied, and a field named ``state`` would set the task's state to anything.
TASK_RESERVED = _own_attributes(
    Task,
    {"worker", "cluster_state", "children", "merge_rules", "state", TASK_NOTES, TASK_RETRIES},
)
#: The same for Celery's Worker (it copies every field of a worker event).
WORKER_RESERVED = _own_attributes(Worker, {"heartbeats", "event"})


def _finite(value: Any) -> bool:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer past a float's range
        return False


def _id(value: Any) -> str | None:
    """An id field as a string (the State hashes it), or None when it is unusable."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


#: The field names (in their order) of events already seen to need no change in their
#: names, by event group: most events of a cluster come in a handful of such shapes. At
#: most ``MAX_KNOWN_FIELDS`` are kept.
_KNOWN_FIELDS: dict[tuple[str, tuple], bool] = {}
MAX_KNOWN_FIELDS = 4096
#: Event types already seen to be well formed, and their group (``task`` or ``worker``).
_KNOWN_TYPES: dict[str, str] = {}


def _is_number(value: Any) -> bool:
    kind = value.__class__
    return (kind is float and math.isfinite(value)) or kind is int


def clean_event(event: Any) -> tuple[dict | None, str | None]:
    """Return ``(event, problem)`` for an incoming event.

    ``event`` is None when the event is refused, with ``problem`` saying why; otherwise it
    is the event as Celery may take it (itself when it is fine, or a repaired copy), and
    ``problem`` says what was repaired (None when nothing was).
    """
    if event.__class__ is not dict and not isinstance(event, Mapping):
        return None, f"not a mapping ({type(event).__name__})"
    kind = event.get("type")
    group = _KNOWN_TYPES.get(kind) if kind.__class__ is str else None
    if group is None:
        if not isinstance(kind, str) or not TYPE_RE.match(kind):
            return None, f"unknown event type {str(kind)[:80]!r}"
        group = kind.partition("-")[0]
        if len(_KNOWN_TYPES) < MAX_KNOWN_FIELDS:
            _KNOWN_TYPES[kind] = group
    hostname = event.get("hostname")
    if hostname.__class__ is not str or not hostname or len(hostname) > MAX_ID_LENGTH:
        return None, "no usable hostname"
    encodable = hostname.isascii() or _encodable(hostname)
    if group == "task":
        uuid = event.get("uuid")
        if uuid.__class__ is not str or not uuid or len(uuid) > MAX_ID_LENGTH:
            return None, "no usable task id"
        encodable = encodable and (uuid.isascii() or _encodable(uuid))
    if encodable and event.__class__ is dict and _is_well_formed(group, event):
        return event, None
    return _repaired(group, event)


def _encoded(text: str) -> str:
    """``text`` with each lone surrogate written as its escape (distinct ids stay distinct)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _is_well_formed(group: str, event: dict) -> bool:
    """Whether an event needs no change: the common case, checked quickly."""
    shape = (group, tuple(event))
    known = _KNOWN_FIELDS.get(shape)
    if known is None:
        reserved = TASK_RESERVED if group == "task" else WORKER_RESERVED
        known = not (event.keys() & reserved) and all(
            key.__class__ is str and not key.startswith("_") for key in event
        )
        if len(_KNOWN_FIELDS) < MAX_KNOWN_FIELDS:
            _KNOWN_FIELDS[shape] = known
    if not known:
        return False
    get = event.get
    timestamp, received, clock = get("timestamp"), get("local_received"), get("clock")
    if clock.__class__ is not int:
        return False
    if not (_is_number(timestamp) and _is_number(received)):
        return False
    offset = get("utcoffset", 0)
    if not (_is_number(offset) and -24 <= offset <= 24):
        return False
    if group == "task":
        for value in (get("name"), get("parent_id"), get("root_id")):  # ID_FIELDS
            if value is not None and (
                value.__class__ is not str or not (value.isascii() or _encodable(value))
            ):
                return False
    return True


def _repaired(group: str, event: Mapping) -> tuple[dict, str | None]:
    """A copy of ``event`` with what Celery cannot take repaired or dropped."""
    fixes: list[str] = []
    fixed: dict[str, Any] = {}
    reserved = TASK_RESERVED if group == "task" else WORKER_RESERVED
    dropped = [key for key in event if not isinstance(key, str) or key.startswith("_")]
    dropped += [key for key in event.keys() & reserved if isinstance(key, str)]
    if dropped:
        fixes.append(f"dropped fields {sorted(map(str, dropped))[:5]}")
    if not _finite(event.get("timestamp")):
        received = event.get("local_received")
        fixed["timestamp"] = received if _finite(received) else time.time()
        fixes.append("timestamp")
    if not _finite(event.get("local_received")):  # the State needs it
        fixed["local_received"] = time.time()
        if "local_received" in event:
            fixes.append("local_received")
    clock = event.get("clock")
    if not (isinstance(clock, int) and not isinstance(clock, bool)):  # the State needs it
        fixed["clock"] = int(clock) if _finite(clock) and abs(clock) < 2**62 else 0
        if "clock" in event:
            fixes.append("clock")
    if "utcoffset" in event and not (
        _finite(event["utcoffset"]) and abs(event["utcoffset"]) <= 24
    ):
        dropped.append("utcoffset")
        fixes.append("utcoffset")
    for key in ("hostname", "uuid"):  # checked by clean_event: strings
        value = event.get(key)
        if isinstance(value, str) and not _encodable(value):
            fixed[key] = escape_id(value)
            fixes.append(key)
    if group == "task":
        for key in ID_FIELDS:
            if key in event and not (event[key] is None or isinstance(event[key], str)):
                value = _id(event[key])
                if value is None:
                    dropped.append(key)
                else:
                    fixed[key] = value
                fixes.append(key)
            elif isinstance(event.get(key), str) and not _encodable(event[key]):
                # A parent's or root's id is repaired as the task id it names was.
                fixed[key] = _encoded(event[key]) if key == "name" else escape_id(event[key])
                fixes.append(key)
    clean = {key: value for key, value in event.items() if key not in dropped}
    clean.update(fixed)
    return clean, ("repaired " + ", ".join(fixes)) if fixes else None


class EventGuard:
    """Checks events, counts the refused and repaired ones, and logs them now and then."""

    def __init__(self, log_every: float = LOG_EVERY) -> None:
        self.log_every = log_every
        #: Events refused, and events repaired, since the guard was made.
        self.refused = 0
        self.repaired = 0
        #: Refused events by reason.
        self.reasons: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._unlogged = 0
        self._last_log = -math.inf
        self._last_problem = ""

    def check(self, event: Any) -> dict | None:
        """Return the event fit for Celery's State, or None when it must be dropped."""
        clean, problem = clean_event(event)
        if problem is not None:
            self._count(problem, refused=clean is None, event=event)
        return clean

    def refuse(self, problem: str, event: Any) -> None:
        """Count an event that Celery itself could not take."""
        self._count(problem, refused=True, event=event)

    def _count(self, problem: str, refused: bool, event: Any) -> None:
        with self._lock:
            if refused:
                self.refused += 1
                self.reasons[problem.split(" (")[0]] += 1
            else:
                self.repaired += 1
            self._unlogged += 1
            now = time.monotonic()
            if now - self._last_log < self.log_every:
                return
            count, self._unlogged, self._last_log = self._unlogged, 0, now
        try:
            shown = repr(event)[:300]
        except Exception:
            shown = "<unprintable>"
        logger.warning(
            "%d bad events since the last report (%d refused, %d repaired in all); the latest "
            "was %s: %s",
            count,
            self.refused,
            self.repaired,
            "refused" if refused else "repaired",
            f"{problem}: {shown}",
        )

    def wrap(self, handler: Callable[[dict], Any]) -> Callable[[Any], Any]:
        """Return ``handler`` (a State's ``event``) behind the guard.

        A refused event never reaches it; an event it raises on is counted and dropped.
        """

        def guarded(event: Any) -> Any:
            clean = self.check(event)
            if clean is None:
                return None
            try:
                return handler(clean)
            except Exception as exc:
                self._refused_by_state(exc, event)
                return None

        guarded.__wrapped__ = handler  # type: ignore[attr-defined]
        return guarded

    def shield(self, handler: Callable[[dict], Any]) -> Callable[[dict], Any]:
        """Return ``handler`` for events this guard has already checked (those of a
        :class:`SafeEventReceiver` with this guard): an event it raises on is counted and
        dropped, as by :meth:`wrap`, but the event is not checked a second time."""

        def shielded(event: dict) -> Any:
            try:
                return handler(event)
            except Exception as exc:
                self._refused_by_state(exc, event)
                return None

        shielded.__wrapped__ = handler  # type: ignore[attr-defined]
        return shielded

    def _refused_by_state(self, exc: Exception, event: Any) -> None:
        self.refuse(f"Celery's State refused it ({type(exc).__name__}: {exc})", event)


class SafeEventReceiver(EventReceiver):
    """Celery's event receiver with an :class:`EventGuard` in front of it.

    Celery's receiver adjusts its clock and the event's timestamp before any handler runs,
    and raises on a clock or offset that is not a number: the receiver would stop. This one
    checks each event first and drops, with a count, what it cannot take.
    """

    guard: EventGuard = EventGuard()
    #: The part of the tasks the camera keeps: the task events of other shards are dropped
    #: before they are checked or timed (every shard reads every event).
    shard: Shard | None = None
    #: Handlers that check events with this receiver's guard (and shard), each mapped to
    #: the form that takes them checked: given one, the receiver hands on the other, and
    #: each event is checked once.
    checked_forms: Mapping[Callable[..., Any], Callable[..., Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.checked_forms:
            self.handlers = {
                kind: self._checked_form(handler) for kind, handler in self.handlers.items()
            }

    def _checked_form(self, handler: Any) -> Any:
        try:
            return self.checked_forms.get(handler, handler)
        except TypeError:  # not hashable: not one of them
            return handler

    def event_from_message(self, body: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        if self.shard is not None and not self.shard.keeps(body):
            # Dropped, but its clock still counts: this receiver's clock stays the cluster's.
            clock = body.get("clock") if isinstance(body, Mapping) else None
            if clock.__class__ is int:
                self.adjust_clock(clock)
            return None, None
        clean = self.guard.check(body)
        if clean is None:
            return None, None
        # An event's timestamp is the sender's time.time(): the same instant in every time
        # zone. Celery's receiver would move it by the difference between the sender's UTC
        # offset and this host's, hours away for a worker in another time zone.
        kwargs["localize"] = False
        try:
            return super().event_from_message(clean, *args, **kwargs)
        except Exception as exc:
            self.guard.refuse(f"the receiver refused it ({type(exc).__name__}: {exc})", body)
            return None, None

    def process(self, type: Any, event: Any) -> None:
        if event is not None:
            super().process(type, event)


@dataclass(frozen=True)
class Shard:
    """The part ``index`` of ``count`` (1-based) of the tasks: those whose id hashes to it.

    Cameras given the shards 1/N to N/N share the tasks between them without talking to each
    other (the database merges what they write); each still sees every worker event. The hash
    is CRC-32 of the task id, the same in every process and on every machine.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.index, int) and isinstance(self.count, int)):
            raise TypeError("a shard is two integers: index and count")
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard {self.index}/{self.count}: the index goes from 1 to count")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Read ``"K/N"`` (say ``"1/2"``)."""
        index, sep, count = str(text).partition("/")
        try:
            if not sep:
                raise ValueError
            return cls(int(index), int(count))
        except (TypeError, ValueError) as exc:
            detail = str(exc) or f"{text!r} is not K/N"
            raise ValueError(f"Not a shard: {detail} (say 1/2 for the first of two).") from None

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def __reduce__(self) -> tuple[Any, tuple[int, int]]:
        # Pickled as its two numbers: not with the function :attr:`keeps` made.
        return type(self), (self.index, self.count)

    def __contains__(self, task_id: object) -> bool:
        if not isinstance(task_id, str):
            return True  # not a task id: the guard decides what to do with it
        return zlib.crc32(task_id.encode("utf-8", "surrogatepass")) % self.count == self.index - 1

    @cached_property
    def keeps(self) -> Callable[[Any], bool]:
        """``keeps(event)``: whether ``event`` is this shard's, any event but a task event of
        another shard.

        What is not a well-formed task event is kept, for the guard to judge. A plain
        function, made once: every shard runs it on every event of the cluster.
        """
        count, wanted, crc32 = self.count, self.index - 1, zlib.crc32

        def keeps(event: Any) -> bool:
            try:
                kind, task_id = event["type"], event["uuid"]
            except (KeyError, TypeError, IndexError):
                return True
            if kind.__class__ is not str and not isinstance(kind, str):
                return True
            if not kind.startswith("task-"):
                return True
            if task_id.__class__ is not str and not isinstance(task_id, str):
                return True
            return crc32(task_id.encode("utf-8", "surrogatepass")) % count == wanted

        return keeps

    def filter(self, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Return ``handler`` that drops the task events of other shards, before anything else."""
        keeps, count, wanted, crc32 = self.keeps, self.count, self.index - 1, zlib.crc32

        def in_shard(event: Any) -> Any:
            # keeps(event), its common case inlined: a task event, its type and id strings.
            try:
                kind, task_id = event["type"], event["uuid"]
            except (KeyError, TypeError, IndexError):
                return handler(event)
            if kind.__class__ is str and task_id.__class__ is str:
                if kind.startswith("task-") and (
                    crc32(task_id.encode("utf-8", "surrogatepass")) % count != wanted
                ):
                    return None
            elif not keeps(event):
                return None
            return handler(event)

        in_shard.__wrapped__ = handler  # type: ignore[attr-defined]
        return in_shard
