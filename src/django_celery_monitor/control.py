"""The Celery remote control calls the admin makes: one small function per command.

Every function takes the Celery app (the current app by default), talks to the broker over a
fresh connection with short timeouts, and raises :class:`ControlError` when the broker cannot
be reached, so the caller has one exception to catch. Commands that workers answer are sent
with ``reply=True`` and return the replies by hostname, so the caller can tell how many
workers were reached.
"""

from __future__ import annotations

import ast
import functools
import math
import re
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from kombu.exceptions import EncodeError, KombuError

from .conf import CONTROL_TIMEOUT, MonitorSettings, get_celery_app

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Connection

    from .models import TaskState

__all__ = [
    "INSPECT_ARGUMENTS",
    "INSPECT_COMMANDS",
    "TIMEOUT",
    "Answer",
    "ControlError",
    "RetryError",
    "add_consumer",
    "autoscale",
    "broker_connection",
    "cancel_consumer",
    "disable_events",
    "enable_events",
    "inspect",
    "parse_autoscale",
    "parse_queue",
    "parse_rate",
    "parse_registered",
    "parse_time_limits",
    "ping",
    "pool_grow",
    "pool_restart",
    "pool_shrink",
    "rate_limit",
    "rate_limits",
    "reply_text",
    "reply_timeout",
    "retry",
    "revoke",
    "revoke_waiting",
    "shutdown",
    "time_limit",
    "worker_rate_limit",
]

#: Seconds to wait for the broker connection.
TIMEOUT = 1.0
#: Seconds one read or write of the broker's socket may block: a broker that took the
#: connection but does not answer (overloaded, stopped) is then an error, not a hang.
SOCKET_TIMEOUT = 5.0

#: A Celery rate limit: tasks per second, or per ``s``, ``m`` or ``h``; ``0`` removes it.
RATE_RE = re.compile(r"^\s*\d+(\.\d+)?\s*(/\s*[smh])?\s*$")

#: A queue name a worker can be told to consume from: what AMQP and Redis both accept, and
#: nothing a shell or a URL would read differently.
QUEUE_RE = re.compile(r"^[\w.:@/+-]{1,200}$", re.ASCII)

#: The inspect commands the worker's page asks, in the order it shows their answers.
INSPECT_COMMANDS = (
    "stats",
    "active_queues",
    "active",
    "reserved",
    "scheduled",
    "revoked",
    "registered",
    "conf",
)

#: The arguments the worker's page asks an inspect command with: the registered tasks come
#: with the limits the worker holds for them, ``"proj.add [rate_limit=10/m time_limit=5]"``.
INSPECT_ARGUMENTS: dict[str, dict[str, Any]] = {
    "registered": {"taskinfoitems": ["rate_limit", "soft_time_limit", "time_limit"]},
}

#: One entry of a ``registered`` answer: the task name, then its attributes in brackets.
_REGISTERED_RE = re.compile(r"^(?P<name>\S+)(?: \[(?P<info>.*)\])?$", re.DOTALL)

#: The most processes an autoscale command may ask for.
MAX_AUTOSCALE = 1000
#: The most task types :func:`rate_limits` sets at once (a broadcast each, all in flight).
MAX_RATE_LIMIT_NAMES = 20
#: The longest time limit accepted, in seconds (a week).
MAX_TIME_LIMIT = 7 * 24 * 3600.0

#: An exception's repr as a worker replies it, ``ValueError('Pool restarts not enabled')``.
_ERROR_REPR_RE = re.compile(r"""^[A-Za-z_][\w.]*\((['"])(.*)\1\)$""", re.DOTALL)


class ControlError(Exception):
    """The broker could not be reached, or refused the command."""


class RetryError(ValueError):
    """A recorded task cannot be sent again; the message says why."""


def _app(app: Celery | None) -> Celery:
    return get_celery_app(app)


def reply_timeout(app: Celery | None = None) -> float:
    """Seconds to wait for the workers' replies: ``monitor_control_timeout`` (its default
    when it is wrong, which the system checks report)."""
    try:
        return MonitorSettings(app).control_timeout
    except ImproperlyConfigured:
        return float(CONTROL_TIMEOUT.default)


def broker_connection(app: Celery, timeout: float = TIMEOUT, read: bool = False) -> Connection:
    """A connection (not yet made) to the app's broker whose socket reads and writes end.

    Kombu's Redis transport waits forever for an answer by default, and py-amqp's sockets
    too: a broker that accepted the connection and then stalled hung the admin's request.
    The broker's own transport options win where they set a time.
    """
    opener = app.connection_for_read if read else app.connection_for_write
    connection = opener(connect_timeout=timeout)
    driver = getattr(connection.transport, "driver_type", "")
    if driver == "redis":
        times = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": timeout}
    elif driver == "amqp":
        times = {"read_timeout": SOCKET_TIMEOUT, "write_timeout": SOCKET_TIMEOUT}
    else:
        return connection
    given = app.conf.broker_transport_options or {}
    options = {key: value for key, value in times.items() if given.get(key) is None}
    if not options:
        return connection
    connection.release()
    return opener(connect_timeout=timeout, transport_options=options)


def connect(connection: Connection, timeout: float = TIMEOUT) -> None:
    """Make ``connection``: one try of each of the broker's URLs (a failover list, ``a;b``,
    goes to the next on a failure), without Kombu's waits between the tries."""
    hosts = len(getattr(connection, "alt", None) or ()) or 1
    connection.ensure_connection(
        max_retries=hosts - 1, interval_start=0, interval_step=0, interval_max=0, timeout=timeout
    )


@contextmanager
def _connection(app: Celery | None) -> Iterator[Connection]:
    """Yield a connected broker connection; turn any broker failure into ControlError."""
    app = _app(app)
    try:
        with broker_connection(app) as conn:
            connect(conn)
            yield conn
    except ControlError:
        raise
    except (KombuError, OSError) as exc:
        raise ControlError(f"The message broker is unreachable: {exc}") from exc
    except Exception as exc:
        # The transport's own error classes (redis, amqp) do not share a base class.
        if _is_broker_error(app, exc):
            raise ControlError(f"The message broker is unreachable: {exc}") from exc
        raise


def _is_broker_error(app: Celery, exc: Exception) -> bool:
    try:
        conn = app.connection_for_write()
        errors = tuple(conn.connection_errors) + tuple(conn.channel_errors)
    except Exception:  # pragma: no cover  (an unknown transport)
        return False
    return isinstance(exc, errors)


def _merge(replies: Iterable[dict[str, Any]] | None) -> dict[str, Any]:
    """Turn Celery's list of ``{hostname: reply}`` dicts into one dict.

    Kombu takes any message on the reply queue without a ticket for a reply: a body that
    is not such a dict (a stray message, a client that is no Celery worker) is left out.
    """
    merged: dict[str, Any] = {}
    for reply in replies or ():
        merged.update(_reply_body(reply))
    return merged


def _reply_body(body: Any) -> dict[str, Any]:
    """The ``{hostname: reply}`` of one reply message, or nothing when it is not one."""
    if not isinstance(body, dict):
        return {}
    return {hostname: reply for hostname, reply in body.items() if isinstance(hostname, str)}


def _destination(hostnames: Iterable[str]) -> list[str]:
    return sorted(set(hostnames))


@dataclass(frozen=True)
class Answer:
    """What the workers answered one command.

    ``replies`` holds each answering worker's reply by hostname, ``ms`` the round trip of
    each reply in milliseconds (from sending the command to its reply arriving). A worker
    that did not answer within the timeout is in neither.
    """

    replies: dict[str, Any] = field(default_factory=dict)
    ms: dict[str, float] = field(default_factory=dict)


def reply_text(reply: Any) -> tuple[bool, str]:
    """Whether a worker's reply to a control command says ok, and what it says.

    Workers answer ``{"ok": text}`` or ``{"error": text}``; a command that raised answers
    the exception's repr, which is shortened to its message.
    """
    if isinstance(reply, dict) and "ok" in reply:
        return True, str(reply["ok"])
    if isinstance(reply, dict) and "error" in reply:
        text = str(reply["error"])
        match = _ERROR_REPR_RE.match(text)
        return False, match.group(2) if match else text
    return False, str(reply)


def _timed(
    command: str,
    destination: list[str] | None,
    app: Celery | None,
    timeout: float | None = None,
    expected: int | None = None,
    **arguments: Any,
) -> Answer:
    """Broadcast ``command`` and time each reply as it arrives (for ``timeout`` seconds,
    :func:`reply_timeout` by default, or until ``expected`` workers answered)."""
    app = _app(app)
    timeout = reply_timeout(app) if timeout is None else timeout
    replies: dict[str, Any] = {}
    ms: dict[str, float] = {}
    start = time.monotonic()

    def on_reply(body: dict[str, Any]) -> None:
        elapsed = round((time.monotonic() - start) * 1000.0, 1)
        for hostname, reply in _reply_body(body).items():
            if hostname not in replies:
                replies[hostname] = reply
                ms[hostname] = elapsed

    with _connection(app) as conn:
        start = time.monotonic()
        app.control.broadcast(
            command,
            arguments=arguments,
            destination=destination,
            connection=conn,
            reply=True,
            timeout=timeout,
            limit=expected or None,
            callback=on_reply,
        )
    return Answer(replies, ms)


def revoke(
    task_ids: Iterable[str],
    terminate: bool = False,
    signal: str | None = None,
    app: Celery | None = None,
    expected: int | None = None,
) -> dict[str, Any]:
    """Revoke tasks on every worker, and terminate them with ``signal`` if asked.

    Returns the workers' replies by hostname (empty when no worker answered in time). Every
    worker gets the command; the replies are awaited for :func:`reply_timeout` seconds, or
    until ``expected`` workers answered (the ones known to be online: one that was not
    known and answers first is counted in the place of one of them).
    """
    task_ids = list(task_ids)
    if not task_ids:
        return {}
    options: dict[str, Any] = {"terminate": terminate}
    if signal:
        options["signal"] = signal
    with _connection(app) as conn:
        return _merge(
            _app(app).control.revoke(
                task_ids,
                connection=conn,
                reply=True,
                timeout=reply_timeout(app),
                limit=expected or None,
                **options,
            )
        )


def parse_rate(value: str) -> str:
    """Return a valid Celery rate limit string or raise ValueError."""
    value = (value or "").strip().replace(" ", "")
    if not RATE_RE.match(value):
        raise ValueError(value)
    return value


def rate_limit(
    task_name: str,
    rate: str,
    destination: Iterable[str] | None = None,
    app: Celery | None = None,
    expected: int | None = None,
) -> dict[str, Any]:
    """Set the rate limit of a task type on every (or the given) worker.

    Returns the workers' replies by hostname. The replies are awaited for
    :func:`reply_timeout` seconds, or until every worker of ``destination`` answered, or
    (sent to every worker) until ``expected`` workers answered, as :func:`revoke`.
    """
    rate = parse_rate(rate)
    dest = _destination(destination) if destination else None
    with _connection(app) as conn:
        return _merge(
            _app(app).control.rate_limit(
                task_name,
                rate,
                destination=dest,
                connection=conn,
                reply=True,
                timeout=reply_timeout(app),
                limit=(len(dest) if dest else expected) or None,
            )
        )


def rate_limits(
    task_names: Iterable[str],
    rate: str,
    destination: Iterable[str] | None = None,
    app: Celery | None = None,
    expected: int | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`rate_limit` of several task types: the replies by hostname of each name.

    A broadcast a name (Celery's command takes one), each awaiting its replies as
    :func:`rate_limit` does: they are sent at once, each from a thread of its own, so that
    :data:`MAX_RATE_LIMIT_NAMES` names take about as long as one. More names are refused
    with ValueError.
    """
    names = list(dict.fromkeys(task_names))
    rate = parse_rate(rate)
    if not names:
        return {}
    if len(names) > MAX_RATE_LIMIT_NAMES:
        raise ValueError(f"{len(names)} task names, at most {MAX_RATE_LIMIT_NAMES} at once")
    app = _app(app)
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {
            name: pool.submit(rate_limit, name, rate, destination, app, expected) for name in names
        }
        return {name: future.result() for name, future in futures.items()}


def shutdown(hostnames: Iterable[str], app: Celery | None = None) -> list[str]:
    """Ask workers to shut down (warm shutdown).

    A worker stops before it can reply, so nothing is awaited; returns the hostnames the
    command was sent to.
    """
    dest = _destination(hostnames)
    if dest:
        with _connection(app) as conn:
            _app(app).control.shutdown(destination=dest, connection=conn)
    return dest


def _broadcast(command: str, hostnames: Iterable[str], app: Celery | None, **arguments):
    dest = _destination(hostnames)
    if not dest:
        return {}
    with _connection(app) as conn:
        return _merge(
            _app(app).control.broadcast(
                command,
                arguments=arguments,
                destination=dest,
                connection=conn,
                reply=True,
                timeout=reply_timeout(app),
            )
        )


def enable_events(hostnames: Iterable[str], app: Celery | None = None) -> dict[str, Any]:
    """Tell workers to send task events. Returns the replies by hostname."""
    return _broadcast("enable_events", hostnames, app)


def disable_events(hostnames: Iterable[str], app: Celery | None = None) -> dict[str, Any]:
    """Tell workers to stop sending task events. Returns the replies by hostname."""
    return _broadcast("disable_events", hostnames, app)


def pool_grow(hostnames: Iterable[str], n: int = 1, app: Celery | None = None) -> dict[str, Any]:
    """Add ``n`` processes to the workers' pools. Returns the replies by hostname."""
    return _broadcast("pool_grow", hostnames, app, n=n)


def pool_shrink(hostnames: Iterable[str], n: int = 1, app: Celery | None = None) -> dict[str, Any]:
    """Remove ``n`` processes from the workers' pools. Returns the replies by hostname."""
    return _broadcast("pool_shrink", hostnames, app, n=n)


def ping(
    hostnames: Iterable[str], timeout: float | None = None, app: Celery | None = None
) -> dict[str, float]:
    """Ping workers; return the round trip in milliseconds of each worker that answered
    within ``timeout`` seconds (:func:`reply_timeout` by default)."""
    dest = _destination(hostnames)
    if not dest:
        return {}
    timeout = reply_timeout(app) if timeout is None else timeout
    answered: dict[str, float] = {}
    start = time.monotonic()

    def on_reply(body: dict[str, Any]) -> None:
        elapsed = (time.monotonic() - start) * 1000.0
        for hostname in _reply_body(body):
            answered.setdefault(hostname, round(elapsed, 1))

    with _connection(app) as conn:
        start = time.monotonic()
        _app(app).control.ping(
            destination=dest, timeout=timeout, connection=conn, callback=on_reply
        )
    return answered


def inspect(
    hostname: str,
    commands: Iterable[str] = INSPECT_COMMANDS,
    timeout: float | None = None,
    app: Celery | None = None,
) -> dict[str, Answer]:
    """Ask one worker the inspect ``commands``, all at once; return the answers by command.

    Each command is sent on its own connection from its own thread, so a worker that does
    not answer costs ``timeout`` once, not once a command. A command the worker did not
    answer in time has an empty :class:`Answer`.
    """
    app = _app(app)  # the current app is per thread: look it up here, not in the threads
    timeout = reply_timeout(app) if timeout is None else timeout
    commands = list(dict.fromkeys(commands))
    if not commands:
        return {}
    with ThreadPoolExecutor(len(commands), thread_name_prefix="celery-monitor-inspect") as pool:
        futures = {
            command: pool.submit(
                _timed, command, [hostname], app, timeout, **INSPECT_ARGUMENTS.get(command, {})
            )
            for command in commands
        }
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        raise errors[0]
    return {command: future.result() for command, future in futures.items()}


@functools.cache
def _setting_names() -> frozenset[str]:
    """Celery's setting names and this monitor's, today's and the old ones, in lower case."""
    from celery.app.defaults import DEFAULTS, NAMESPACES, flatten

    from . import conf

    names = set(DEFAULTS)
    for _name, option in flatten(NAMESPACES):
        names.update(old.lower() for old in option.old)
    for setting in vars(conf).values():
        if isinstance(setting, conf.Setting):
            names.update(name.lower() for name in setting.names)
    return frozenset(names)


# Celery reads these Django settings under their own names.
_DJANGO_NAMES_CELERY_READS = frozenset({"TIME_ZONE"})
# Attributes of a configuration source that are not settings (Django's LazySettings,
# Celery's Settings).
_NOT_SETTINGS = frozenset(
    {"deprecated_settings", "is_overridden", "configured", "SETTINGS_MODULE", "settings_module"}
)


def is_celery_setting(key: str, namespace: str | None = None) -> bool:
    """Whether ``key`` of a worker's ``conf`` answer is a setting of Celery's or of this
    monitor's: ``broker_url``, ``CELERYD_CONCURRENCY``, ``TIME_ZONE`` (Celery's timezone
    when it has none), or one given with the app's ``namespace`` (``CELERY_BROKER_URL``,
    ``CELERY_MONITOR_CONTROL_TIMEOUT`` with the namespace ``CELERY``).

    Celery's answer holds everything its configuration source holds: with Django's
    settings as the source, ``DEBUG``, ``INSTALLED_APPS`` and the rest of them too. Only
    the app's own namespace is taken off: ``SELECT2_CACHE_BACKEND`` is not Celery's.
    """
    if key in _DJANGO_NAMES_CELERY_READS:
        return True
    names = _setting_names()
    if key.lower() in names:
        return True
    # CELERY_ is the namespace Celery's documentation gives Django projects, and the
    # monitor reads its own settings under it whatever the app's namespace is.
    for prefix in {"CELERY_", (namespace or "CELERY").rstrip("_").upper() + "_"}:
        if key.upper().startswith(prefix) and key[len(prefix) :].lower() in names:
            return True
    return False


def celery_settings(reply: Any, namespace: str | None = None) -> tuple[dict[str, Any], int]:
    """The settings of a worker's ``conf`` answer that are Celery's or the monitor's (see
    :func:`is_celery_setting`), and how many other settings it held (attributes of the
    configuration source that are not settings, such as ``SETTINGS_MODULE``, are not
    counted)."""
    if not isinstance(reply, dict):
        return {}, 0
    kept: dict[str, Any] = {}
    others = 0
    for key, value in reply.items():
        key = str(key)
        if is_celery_setting(key, namespace):
            kept[key] = value
        elif key not in _NOT_SETTINGS and not key.startswith("_"):
            others += 1
    return kept, others


def parse_registered(reply: Any) -> dict[str, dict[str, str]]:
    """The task names of a ``registered`` answer, each with the attributes it came with.

    ``["proj.add [rate_limit=10/m]", "proj.mail"]`` gives
    ``{"proj.add": {"rate_limit": "10/m"}, "proj.mail": {}}``.
    """
    tasks: dict[str, dict[str, str]] = {}
    for entry in reply if isinstance(reply, list) else ():
        match = _REGISTERED_RE.match(str(entry))
        if not match:
            continue
        info = dict(
            item.partition("=")[::2] for item in (match.group("info") or "").split() if "=" in item
        )
        tasks[match.group("name")] = info
    return tasks


def parse_queue(value: str) -> str:
    """Return a valid queue name or raise ValueError."""
    value = (value or "").strip()
    if not QUEUE_RE.match(value):
        raise ValueError(value)
    return value


def parse_autoscale(maximum: int, minimum: int) -> tuple[int, int]:
    """Return valid autoscale bounds (the most at least 1, the fewest at most the most)."""
    if not (1 <= maximum <= MAX_AUTOSCALE and 0 <= minimum <= maximum):
        raise ValueError((maximum, minimum))
    return maximum, minimum


def parse_time_limits(soft: float | None, hard: float | None) -> tuple[float | None, float | None]:
    """Return valid time limits in seconds (``None``: no limit); the soft one below the hard."""
    soft, hard = (None if value is None else float(value) for value in (soft, hard))
    for value in (soft, hard):
        if value is not None and not (0 < value <= MAX_TIME_LIMIT and math.isfinite(value)):
            raise ValueError(value)
    if soft is not None and hard is not None and soft >= hard:
        raise ValueError((soft, hard))
    return soft, hard


def add_consumer(hostname: str, queue: str, app: Celery | None = None) -> Answer:
    """Tell a worker to consume from ``queue`` too (declared as a direct queue if new)."""
    return _timed("add_consumer", [hostname], app, queue=parse_queue(queue))


def cancel_consumer(hostname: str, queue: str, app: Celery | None = None) -> Answer:
    """Tell a worker to stop consuming from ``queue``."""
    return _timed("cancel_consumer", [hostname], app, queue=parse_queue(queue))


def autoscale(hostname: str, maximum: int, minimum: int, app: Celery | None = None) -> Answer:
    """Set the most and the fewest processes of a worker's autoscaler.

    Only a worker started with ``--autoscale`` has one; others answer an error.
    """
    maximum, minimum = parse_autoscale(maximum, minimum)
    return _timed("autoscale", [hostname], app, max=maximum, min=minimum)


def pool_restart(hostname: str, app: Celery | None = None) -> Answer:
    """Restart a worker's pool processes (without reloading modules).

    A worker refuses (an error answer) unless its ``worker_pool_restarts`` setting is on.
    """
    return _timed("pool_restart", [hostname], app, modules=None, reload=False)


def time_limit(
    hostname: str,
    task_name: str,
    soft: float | None = None,
    hard: float | None = None,
    app: Celery | None = None,
) -> Answer:
    """Set the soft and hard time limits of a task type on a worker; ``None`` removes one."""
    soft, hard = parse_time_limits(soft, hard)
    return _timed("time_limit", [hostname], app, task_name=task_name, soft=soft, hard=hard)


def worker_rate_limit(
    hostname: str, task_name: str, rate: str, app: Celery | None = None
) -> Answer:
    """Set the rate limit of a task type on one worker (``"0"`` removes it)."""
    return _timed("rate_limit", [hostname], app, task_name=task_name, rate_limit=parse_rate(rate))


def revoke_waiting(
    task_ids: Iterable[str], app: Celery | None = None, expected: int | None = None
) -> Answer:
    """Revoke tasks that have not started, without terminating anything.

    Sent to every worker, since any of them may be the one to receive a waiting task: the
    call waits the whole timeout for their replies, or until ``expected`` workers answered
    (as :func:`revoke`).
    """
    task_ids = list(task_ids)
    if not task_ids:
        return Answer()
    return _timed("revoke", None, app, expected=expected, task_id=task_ids, terminate=False)


def _literal(value: str | None, kind: type, empty: Any, label: str) -> Any:
    if value is None or not value.strip():
        return empty
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        hint = " (it was cut short)" if value.rstrip().endswith("...") else ""
        raise RetryError(
            f"The recorded {label} cannot be read back{hint}, so the task cannot be sent again."
        ) from exc
    if kind is tuple and isinstance(parsed, list):
        parsed = tuple(parsed)
    if not isinstance(parsed, kind):
        raise RetryError(
            f"The recorded {label} are not a {kind.__name__}, so the task cannot be sent again."
        )
    return parsed


def retry(task: TaskState, app: Celery | None = None) -> str:
    """Send a recorded task again, by name, with its recorded arguments.

    Returns the id of the new task. Raises :class:`RetryError` when the name is unknown or
    the recorded arguments cannot be parsed back (Celery cuts long reprs, and reprs of
    objects are not literals), and :class:`ControlError` when the broker is unreachable.
    """
    if not task.name:
        raise RetryError("The task name was not recorded, so the task cannot be sent again.")
    args = _literal(task.args, tuple, (), "arguments")
    kwargs = _literal(task.kwargs, dict, {}, "keyword arguments")
    with _connection(app) as conn:
        try:
            result = _app(app).send_task(
                task.name, args=args, kwargs=kwargs, connection=conn, retry=False
            )
        except EncodeError as exc:
            # Literals JSON has no form for (a set, a complex number): this task's own
            # problem, not the broker's.
            raise RetryError(
                f"The recorded arguments cannot be serialized for the broker: {exc}"
            ) from exc
    return result.id
