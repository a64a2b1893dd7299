"""Every setting of the monitor, in one place.

Each setting is looked up when it is read, so ``override_settings`` and late configuration
just work. A setting is found, in this order, in Django's settings under its ``CELERY_``
name (``CELERY_MONITOR_TASK_SUCCESS_EXPIRES``), then in the Celery configuration
(``monitor_task_success_expires``), then under the name django_celery_monitor 1.1.2 read
(``monitors_expire_success``), and only then falls back to its default. A value the user set,
``None`` included, always wins over the default.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery import Celery, current_app, states
from celery._state import _get_active_apps
from celery.utils.imports import symbol_by_name
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

_MISSING = object()


def get_celery_app(app: Celery | None = None) -> Celery:
    """Return the Celery app of the project.

    ``CELERY_MONITOR_APP`` in Django's settings ("proj.celery:app") names it when a process
    has several apps. Otherwise it is Celery's current app; and where that is Celery's
    unconfigured fallback (``current_app`` is per thread: a request thread of a threaded
    server sees the fallback), the one app the project created.
    """
    if app is not None:
        return app
    configured = getattr(django_settings, "CELERY_MONITOR_APP", None)
    if configured:
        return symbol_by_name(configured) if isinstance(configured, str) else configured
    current = current_app._get_current_object()
    if current.main == "default":
        created = [a for a in _get_active_apps() if a is not current and a.main != "default"]
        if len(created) == 1:
            return created[0]
    return current


@dataclass(frozen=True)
class Setting:
    """One setting: its documented name, the names it was known by, and its default."""

    name: str
    default: Any
    legacy: tuple[str, ...] = ()
    description: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.legacy)

    def django_name(self, name: str) -> str:
        return f"CELERY_{name.upper()}"

    def raw(self, app: Celery | None = None) -> tuple[str, Any]:
        """Return ``(where, value)`` of the first place that sets this, or the default."""
        app = get_celery_app(app)
        for name in self.names:
            django_name = self.django_name(name)
            if django_settings.configured and hasattr(django_settings, django_name):
                return django_name, getattr(django_settings, django_name)
            # ``get`` applies the configuration's namespace; ``in`` does not.
            value = app.conf.get(name, _MISSING)
            if value is not _MISSING:
                return name, value
        return self.name, self.default


#: The longest expiry: a time this far back is one any database holds (None never expires).
MAX_EXPIRES = timedelta(days=1000 * 365)


def to_expires(where: str, value: Any) -> timedelta | None:
    """Turn an expiry setting (a timedelta, seconds, or None for never) into a timedelta."""
    if value is None:
        return value
    found = None
    if isinstance(value, timedelta):
        found = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError, ValueError):
            found = timedelta(seconds=value)
    if found is not None and timedelta(0) <= found <= MAX_EXPIRES:
        return found
    raise ImproperlyConfigured(
        f"{where} must be a datetime.timedelta or a number of seconds, from 0 to 1000 "
        f"years, or None (never expire), not {value!r}."
    )


def to_positive_int(where: str, value: Any) -> int:
    """Check that a size setting is a positive integer."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ImproperlyConfigured(f"{where} must be a positive integer, not {value!r}.")


def to_cache_size(where: str, value: Any) -> int | None:
    """Check a cache size setting: a positive number of MiB, or None (or 0) for the default."""
    if value is None or (value == 0 and isinstance(value, int) and not isinstance(value, bool)):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ImproperlyConfigured(f"{where} must be a positive number of MiB or None, not {value!r}.")


TASK_SUCCESS_EXPIRES = Setting(
    "monitor_task_success_expires",
    timedelta(days=1),
    legacy=("monitors_expire_success",),
    description="How long to keep tasks that succeeded.",
)
TASK_ERROR_EXPIRES = Setting(
    "monitor_task_error_expires",
    timedelta(days=3),
    legacy=("monitors_expire_error",),
    description="How long to keep tasks that failed, were retried or revoked.",
)
TASK_PENDING_EXPIRES = Setting(
    "monitor_task_pending_expires",
    timedelta(days=5),
    legacy=("monitors_expire_pending",),
    description="How long to keep tasks that never finished.",
)
#: The default of the custom states' expiry: whatever the pending expiry is.
FOLLOW_PENDING = "follow monitor_task_pending_expires"
TASK_CUSTOM_EXPIRES = Setting(
    "monitor_task_custom_expires",
    FOLLOW_PENDING,
    description="How long to keep tasks whose last state is a custom one (PROGRESS); "
    "by default as long as the pending ones.",
)
WRITE_BATCH_SIZE = Setting(
    "monitor_write_batch_size",
    2000,
    description="How many task rows one transaction of the camera's write merges.",
)
SQLITE_CACHE_SIZE = Setting(
    "monitor_sqlite_cache_size",
    64,
    description="On SQLite: MiB of the database's pages the camera's writing connection "
    "keeps in memory (None: SQLite's own, 2 MiB); a connection that keeps more is left so.",
)
PURGE_BATCH_SIZE = Setting(
    "monitor_purge_batch_size",
    5000,
    description="How many rows one short transaction of the expiry hides or deletes.",
)
MAX_TEXT_LENGTH = Setting(
    "monitor_max_text_length",
    65536,
    description="Longer args, kwargs, results and tracebacks are cut, with a marker.",
)

MAX_PENDING_TASKS = Setting(
    "monitor_max_pending_tasks",
    100_000,
    description="How many task rows the camera keeps while the database is unreachable.",
)

WORKER_ALIVE_GRACE = Setting(
    "monitor_worker_alive_grace",
    10,
    description="Seconds a worker still counts as online past Celery's heartbeat expiry "
    "(two heartbeat periods); raise it with a camera --frequency above 5 s.",
)

#: The fields redaction can keep out of the database.
REDACTABLE_FIELDS = ("args", "kwargs", "result", "exception", "traceback")
REDACT_FIELDS = Setting(
    "monitor_redact_fields",
    (),
    description="Fields (args, kwargs, result, exception, traceback) never stored, for "
    "every task: a marker takes their place.",
)
REDACT_TASKS = Setting(
    "monitor_redact_tasks",
    {},
    description="Fields never stored for some tasks: a dict of task name (or fnmatch "
    "pattern, 'billing.*') to a list of fields.",
)
REDACT_HOOK = Setting(
    "monitor_redact_hook",
    None,
    description="A function (or its dotted path) called as hook(task_name, field, value) "
    "for each stored text field; what it returns is stored.",
)


def to_fields(where: str, value: Any) -> tuple[str, ...]:
    """Check a list of redactable field names."""
    if isinstance(value, str) or not isinstance(value, list | tuple | set | frozenset):
        raise ImproperlyConfigured(
            f"{where} must be a list of field names ({', '.join(REDACTABLE_FIELDS)}), "
            f"not {value!r}."
        )
    unknown = [field for field in value if field not in REDACTABLE_FIELDS]
    if unknown:
        raise ImproperlyConfigured(
            f"{where} names fields that cannot be redacted: {unknown!r} "
            f"(choose from {', '.join(REDACTABLE_FIELDS)})."
        )
    return tuple(value)


def to_task_fields(where: str, value: Any) -> dict[str, tuple[str, ...]]:
    """Check a dict of task name (or pattern) to redactable field names."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ImproperlyConfigured(
            f"{where} must be a dict of task name (or pattern) to a list of fields, not {value!r}."
        )
    return {name: to_fields(f"{where}[{name!r}]", fields) for name, fields in value.items()}


def to_hook(where: str, value: Any) -> Any:
    """Load the redaction hook (a callable or its dotted path), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = symbol_by_name(value)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ImproperlyConfigured(f"{where}: cannot import {value!r} ({exc}).") from exc
    if not callable(value):
        raise ImproperlyConfigured(f"{where} must be callable or a dotted path, not {value!r}.")
    return value


REDACT_SETTINGS = (
    (REDACT_FIELDS, to_fields),
    (REDACT_TASKS, to_task_fields),
    (REDACT_HOOK, to_hook),
)

EXPIRES_SETTINGS = (
    TASK_SUCCESS_EXPIRES,
    TASK_ERROR_EXPIRES,
    TASK_PENDING_EXPIRES,
    TASK_CUSTOM_EXPIRES,
)
#: The other settings the system checks read (``celery_monitor.E004``): the properties of
#: :class:`MonitorSettings` that check them.
OTHER_CHECKED = (
    "stuck_after",
    "api_tokens",
    "queue_sample_every",
    "queue_samples_expires",
    "control_timeout",
)
#: Every state Celery defines: a task in any other state is in a custom one.
KNOWN_STATES = frozenset(states.ALL_STATES | {states.REJECTED})
EVENT_QUEUE_EXPIRES = Setting(
    "monitor_event_queue_expires",
    3600,
    description="On RabbitMQ: seconds the camera's durable event queue (and each event in "
    "it) outlives the camera; an abandoned queue is deleted after that.",
)
EVENT_QUEUE_MAX_LENGTH = Setting(
    "monitor_event_queue_max_length",
    100_000,
    description="On RabbitMQ: the most events the camera's queue keeps while no camera "
    "reads it (the oldest are dropped first).",
)

RECONCILE_MAX_TASKS = Setting(
    "monitor_reconcile_max_tasks",
    10_000,
    description="When the camera starts: how many of the latest unfinished tasks it looks "
    "up in the result backend.",
)

STUCK_AFTER = Setting(
    "monitor_stuck_after",
    timedelta(hours=1),
    description="A task started longer ago than this (a timedelta, seconds, or None) shows "
    "as stuck on the dashboard.",
)
API_TOKENS = Setting(
    "monitor_api_tokens",
    (),
    description="Bearer tokens that may read the JSON API and /metrics without a staff "
    "login (a list of strings; keep them out of the code).",
)

QUEUE_SAMPLE_EVERY = Setting(
    "monitor_queue_sample_every",
    10,
    description="Seconds between two measures of the broker's queue lengths by the camera "
    "(None: never).",
)
QUEUE_SAMPLES_EXPIRES = Setting(
    "monitor_queue_samples_expires",
    timedelta(days=7),
    description="How long queue length samples are kept (a timedelta, seconds, or None).",
)

CONTROL_TIMEOUT = Setting(
    "monitor_control_timeout",
    2.0,
    description="Seconds the admin waits for the workers' replies to a remote control "
    "command or question (a command to every worker, like revoke, waits until the workers "
    "online answered).",
)
#: The longest wait for workers' replies: an admin page waits for them, and a web server
#: stops a request that takes too long (gunicorn after 30 s).
MAX_CONTROL_TIMEOUT = 10.0

SIZE_SETTINGS = (
    WRITE_BATCH_SIZE,
    PURGE_BATCH_SIZE,
    MAX_TEXT_LENGTH,
    MAX_PENDING_TASKS,
    WORKER_ALIVE_GRACE,
    EVENT_QUEUE_EXPIRES,
    EVENT_QUEUE_MAX_LENGTH,
    RECONCILE_MAX_TASKS,
)
#: Each setting of a size, with the check of its value (``celery_monitor.E002``).
SIZE_CHECKS = (
    *((setting, to_positive_int) for setting in SIZE_SETTINGS),
    (SQLITE_CACHE_SIZE, to_cache_size),
)


class MonitorSettings:
    """Typed access to the settings; each property reads the configuration when used.

    Pass a Celery app to read its configuration; otherwise the current app is used.
    """

    def __init__(self, app: Celery | None = None) -> None:
        self.app = app

    def _expires(self, setting: Setting) -> timedelta | None:
        return to_expires(*setting.raw(self.app))

    def _size(self, setting: Setting) -> int:
        return to_positive_int(*setting.raw(self.app))

    @property
    def task_success_expires(self) -> timedelta | None:
        return self._expires(TASK_SUCCESS_EXPIRES)

    @property
    def task_error_expires(self) -> timedelta | None:
        return self._expires(TASK_ERROR_EXPIRES)

    @property
    def task_pending_expires(self) -> timedelta | None:
        return self._expires(TASK_PENDING_EXPIRES)

    @property
    def task_custom_expires(self) -> timedelta | None:
        """The expiry of tasks in a state Celery does not define (the pending one by default)."""
        where, value = TASK_CUSTOM_EXPIRES.raw(self.app)
        if value == FOLLOW_PENDING:
            return self.task_pending_expires
        return to_expires(where, value)

    @property
    def redact_fields(self) -> tuple[str, ...]:
        return to_fields(*REDACT_FIELDS.raw(self.app))

    @property
    def redact_tasks(self) -> dict[str, tuple[str, ...]]:
        return to_task_fields(*REDACT_TASKS.raw(self.app))

    @property
    def redact_hook(self) -> Any:
        return to_hook(*REDACT_HOOK.raw(self.app))

    @property
    def reconcile_max_tasks(self) -> int:
        return self._size(RECONCILE_MAX_TASKS)

    @property
    def event_queue_expires(self) -> int:
        return self._size(EVENT_QUEUE_EXPIRES)

    @property
    def event_queue_max_length(self) -> int:
        return self._size(EVENT_QUEUE_MAX_LENGTH)

    @property
    def write_batch_size(self) -> int:
        return self._size(WRITE_BATCH_SIZE)

    @property
    def sqlite_cache_size(self) -> int | None:
        return to_cache_size(*SQLITE_CACHE_SIZE.raw(self.app))

    @property
    def purge_batch_size(self) -> int:
        return self._size(PURGE_BATCH_SIZE)

    @property
    def max_text_length(self) -> int:
        return self._size(MAX_TEXT_LENGTH)

    @property
    def max_pending_tasks(self) -> int:
        return self._size(MAX_PENDING_TASKS)

    @property
    def worker_alive_grace(self) -> int:
        return self._size(WORKER_ALIVE_GRACE)

    @property
    def queue_sample_every(self) -> float | None:
        where, value = QUEUE_SAMPLE_EVERY.raw(self.app)
        if value is None or value == 0:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ImproperlyConfigured(f"{where} must be a number of seconds or None.")
        return float(value)

    @property
    def control_timeout(self) -> float:
        where, value = CONTROL_TIMEOUT.raw(self.app)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 < value <= MAX_CONTROL_TIMEOUT
        ):
            raise ImproperlyConfigured(
                f"{where} must be a number of seconds above 0 and at most "
                f"{MAX_CONTROL_TIMEOUT:g}, not {value!r}."
            )
        return float(value)

    @property
    def queue_samples_expires(self) -> timedelta | None:
        return to_expires(*QUEUE_SAMPLES_EXPIRES.raw(self.app))

    @property
    def stuck_after(self) -> timedelta | None:
        return to_expires(*STUCK_AFTER.raw(self.app))

    @property
    def api_tokens(self) -> tuple[str, ...]:
        """The bearer tokens, checked: a token that could never match is an error."""
        tokens, problem = self._api_tokens()
        if problem:
            raise ImproperlyConfigured(problem)
        return tokens

    @property
    def usable_api_tokens(self) -> tuple[str, ...]:
        """The bearer tokens that can match a request's header, the others left out (a
        system check reports them; a server started without checks still serves the
        good tokens, not an error to every request)."""
        return self._api_tokens()[0]

    def _api_tokens(self) -> tuple[tuple[str, ...], str | None]:
        where, value = API_TOKENS.raw(self.app)
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, list | tuple | set | frozenset):
            return (), f"{where} must be a list of non-empty strings."
        tokens, problem = [], None
        for token in value:
            if not isinstance(token, str) or not token:
                problem = f"{where} must be a list of non-empty strings."
            # What an Authorization header carries as it was set: a token with a space, or
            # a letter beyond ASCII (which servers read as Latin-1), would never match.
            elif not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
                problem = problem or (
                    f"{where}: each token must be printable ASCII without spaces (a token of "
                    f"{len(token)} characters is not)."
                )
            else:
                tokens.append(token)
        return tuple(tokens), problem

    @property
    def expire_task_states(self) -> tuple[tuple[frozenset[str], timedelta | None], ...]:
        """The state groups of the expiry, each with how long its tasks are kept."""
        return (
            (frozenset([states.SUCCESS]), self.task_success_expires),
            (states.EXCEPTION_STATES, self.task_error_expires),
            (states.UNREADY_STATES, self.task_pending_expires),
        )


monitor_settings = MonitorSettings()
