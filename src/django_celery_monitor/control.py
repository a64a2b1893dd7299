"""The Celery remote control calls the admin makes: one small function per command.

Every function takes the Celery app (the current app by default), talks to the broker over a
fresh connection with short timeouts, and raises :class:`ControlError` when the broker cannot
be reached, so the caller has one exception to catch. Commands that workers answer are sent
with ``reply=True`` and return the replies by hostname, so the caller can tell how many
workers were reached.
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kombu.exceptions import KombuError

from .conf import get_celery_app

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Connection

    from .models import TaskState

__all__ = [
    "TIMEOUT",
    "ControlError",
    "RetryError",
    "disable_events",
    "enable_events",
    "parse_rate",
    "ping",
    "pool_grow",
    "pool_shrink",
    "rate_limit",
    "retry",
    "revoke",
    "shutdown",
]

#: Seconds to wait for the broker connection and for the workers' replies.
TIMEOUT = 1.0

#: A Celery rate limit: tasks per second, or per ``s``, ``m`` or ``h``; ``0`` removes it.
RATE_RE = re.compile(r"^\s*\d+(\.\d+)?\s*(/\s*[smh])?\s*$")


class ControlError(Exception):
    """The broker could not be reached, or refused the command."""


class RetryError(ValueError):
    """A recorded task cannot be sent again; the message says why."""


def _app(app: Celery | None) -> Celery:
    return get_celery_app(app)


@contextmanager
def _connection(app: Celery | None) -> Iterator[Connection]:
    """Yield a connected broker connection; turn any broker failure into ControlError."""
    app = _app(app)
    try:
        with app.connection_for_write(connect_timeout=TIMEOUT) as conn:
            conn.ensure_connection(max_retries=0, timeout=TIMEOUT)
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
    """Turn Celery's list of ``{hostname: reply}`` dicts into one dict."""
    merged: dict[str, Any] = {}
    for reply in replies or ():
        merged.update(reply)
    return merged


def _destination(hostnames: Iterable[str]) -> list[str]:
    return sorted(set(hostnames))


def revoke(
    task_ids: Iterable[str],
    terminate: bool = False,
    signal: str | None = None,
    app: Celery | None = None,
) -> dict[str, Any]:
    """Revoke tasks on every worker, and terminate them with ``signal`` if asked.

    Returns the workers' replies by hostname (empty when no worker answered in time).
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
                task_ids, connection=conn, reply=True, timeout=TIMEOUT, **options
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
) -> dict[str, Any]:
    """Set the rate limit of a task type on every (or the given) worker.

    Returns the workers' replies by hostname.
    """
    rate = parse_rate(rate)
    dest = _destination(destination) if destination else None
    with _connection(app) as conn:
        return _merge(
            _app(app).control.rate_limit(
                task_name, rate, destination=dest, connection=conn, reply=True, timeout=TIMEOUT
            )
        )


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
                timeout=TIMEOUT,
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
    hostnames: Iterable[str], timeout: float = TIMEOUT, app: Celery | None = None
) -> dict[str, float]:
    """Ping workers; return the round trip in milliseconds of each worker that answered."""
    dest = _destination(hostnames)
    if not dest:
        return {}
    answered: dict[str, float] = {}
    start = time.monotonic()

    def on_reply(body: dict[str, Any]) -> None:
        elapsed = (time.monotonic() - start) * 1000.0
        for hostname in body:
            answered.setdefault(hostname, round(elapsed, 1))

    with _connection(app) as conn:
        start = time.monotonic()
        _app(app).control.ping(
            destination=dest, timeout=timeout, connection=conn, callback=on_reply
        )
    return answered


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
        result = _app(app).send_task(
            task.name, args=args, kwargs=kwargs, connection=conn, retry=False
        )
    return result.id
