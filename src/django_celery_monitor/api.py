"""The read-only JSON API: the recorded tasks and workers, and the dashboard's figures.

Every view answers ``GET`` and ``HEAD`` only (405 otherwise) and reads for a staff user
with the view permission the admin asks for the same data (the tasks' for the tasks, the
workers' for the workers, the dashboard's or the tasks' for the dashboard), or for a caller
that sends one of the tokens of ``CELERY_MONITOR_API_TOKENS`` as ``Authorization: Bearer
<token>`` (401 without either, 403 for a user who may not read them; see
:mod:`django_celery_monitor.access`). Times are ISO 8601 (``2026-03-02T10:30:20.123Z``),
durations seconds. A request the API cannot answer (a malformed date, limit or cursor, a
NUL character) gets 400 and ``{"error": "..."}``.

With ``path("monitor/", include("django_celery_monitor.urls"))``:

``GET /monitor/api/tasks/``
    The tasks, the latest event first (then the highest ``id``), without the rows the
    expiry has hidden. Filters, all optional (an empty one is ignored)::

        state=SUCCESS           the state (an unknown one matches nothing)
        name=proj.add           the task name, exactly
        worker=3                the worker's id (``id`` in /api/workers/)
        hostname=celery@host1   the worker's hostname, exactly
        lost=1                  1: only lost tasks; 0: none of them
        since=2026-03-02T10:00:00Z     latest event at or after (ISO 8601: a date, or a
        until=2026-03-02T11:00+01:00   date and time, without an offset in the site's
                                       TIME_ZONE) -- before ``until``; encode ``+`` as %2B
        q=...                   the admin's search: each word matches a task id, a task
                                name or a worker hostname that starts with it
        limit=100               tasks a page, 1 to 1000 (more is taken as 1000)
        cursor=...              the page after the one whose ``next`` gave it

    The answer::

        {"results": [{"id": 42, "task_id": "3f0c...", "name": "proj.add",
                      "state": "SUCCESS", "worker": "celery@host1",
                      "tstamp": "...", "received": "...", "started": "...",
                      "runtime": 0.25, "retries": 0, "eta": null, "expires": null,
                      "lost": false, "note": null, "args": "(2, 2)", "kwargs": "{}",
                      "result": "4", "exception": null,
                      "parent_id": null, "root_id": "3f0c..."}, ...],
         "next": "https://host/monitor/api/tasks/?state=SUCCESS&cursor=..." or null}

    ``next`` is the URL of the following page (the same filters), null on the last one.
    The cursor marks a position (the ``tstamp`` and ``id`` of the last task of the page),
    so new tasks (which come first, on the first page) do not shift the pages. A task is
    ordered by the time of the event of its recorded state. A walk through the pages gives
    each task that did not change meanwhile exactly once; one that gets a new state while
    you walk them moves, most often to the front, ahead of the cursor (read them with
    ``since=``), and one whose new state's event carries an earlier time (its worker's
    clock behind the others') can move behind the cursor, where the walk meets it again.
    There is no total: it would count the table.

``GET /monitor/api/tasks/<task_id>/``
    One task (404 and ``{"error": ...}`` if it was not recorded): the fields above, plus
    ``traceback``, ``children`` (the ids of the tasks it sent, the first 50 by time) and
    ``children_truncated`` (whether it sent more).

``GET /monitor/api/workers/``
    ``{"count": 250, "online": 240, "results": [...]}``: the 200 workers heard from last,
    the latest heartbeat first (those never heard from last), each ``{"id", "hostname",
    "online", "last_heartbeat", "processed", "active", "loadavg", "events_missed",
    "sw_ver"}``; ``count`` and ``online`` count every worker.

``GET /monitor/api/dashboard/?window=1h``
    What the dashboard shows for the window ``15m``, ``1h`` (the default), ``24h`` or
    ``7d`` (400 for another)::

        {"window": "1h", "start": "...", "end": "...", "interval": 120, "now": "...",
         "totals": {"window": "1h", "start": "...", "end": "...",
                    "current": {"states": {"SUCCESS": 120, "STARTED": 3, ...},
                                "finished": 130, "retried": 4, "seconds": 3540.0,
                                "throughput_per_minute": 2.2, "failure_rate": 0.05},
                    "previous": {...the same, for the window before}},
         (the current window's last interval is still going on: ``seconds`` is how much
         of the window has passed, which the throughput is per; the previous window's is
         its whole length)
         "series": [{"start": "...", "succeeded": 10, "failed": 1, "revoked": 0,
                     "retried": 0, "runtime_p50": 0.2, "runtime_p95": 0.9}, ...],
         "task_names": [{"name": "proj.add", "count": 80, "succeeded": 76, "failed": 4,
                         "revoked": 0, "retried": 1, "failure_rate": 0.05,
                         "runtime": {"p50", "p95", "max", "mean", "count"},
                         "wait": {...the same, received to started}}, ...],
         "failure_types": [{"exception_type": "ValueError", "count": 4,
                            "latest_task_id": "...", "latest_tstamp": "...",
                            "latest_name": "proj.add"}, ...],
           (an exception_type of "" counts the failures that recorded no exception)
         "workers": [...as "results" of /api/workers/],
         "worker_totals": {"total": 12, "online": 10, "events_missed": 0},
         "stuck": {"threshold": 3600.0 or null,
                   "tasks": [{"id", "task_id", "name", "state", "worker", "since",
                              "reason"}, ...]},
         "cameras": {"ok": true, "reason": "...", "cameras": [...as in /health/]},
         "queues": [{"queue": "celery", "sampled": "...", "messages": 12, "consumers": 2,
                     "note": null, "age": 4.2}, ...]}
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from django.views.decorators.http import require_safe

from . import access, stats
from .access import staff_or_token
from .admin.helpers import MAX_CHILDREN
from .admin.queries import TooManyWords, branch_page
from .admin.tasks import TaskMonitor
from .models import TaskState, WorkerState

__all__ = ["dashboard", "jsonable", "task_detail", "task_list", "worker_list"]

#: Tasks a page by default, and at most.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: The range of the databases' (big) integer keys: a larger id is no row's.
MAX_ID = 2**63 - 1

#: The fields of a task in the list; the detail adds the traceback and the children.
TASK_FIELDS = (
    "id",
    "task_id",
    "name",
    "state",
    "worker",
    "tstamp",
    "received",
    "started",
    "runtime",
    "retries",
    "eta",
    "expires",
    "lost",
    "note",
    "args",
    "kwargs",
    "result",
    "exception",
    "parent_id",
    "root_id",
)


class BadQuery(ValueError):
    """A request the API cannot answer: its message is the 400's ``error``."""


def jsonable(value: Any) -> Any:
    """``value`` with durations as seconds and floats that JSON cannot hold (NaN) as None.

    Datetimes are left to :class:`DjangoJSONEncoder` (ISO 8601).
    """
    if isinstance(value, Mapping):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_response(data: Any, status: int = 200) -> JsonResponse:
    """A JSON answer that no cache keeps (it is live, and may be private)."""
    response = JsonResponse(jsonable(data), status=status, encoder=DjangoJSONEncoder, safe=False)
    response["Cache-Control"] = "no-store"
    return response


def _error(message: str, status: int) -> JsonResponse:
    return json_response({"error": message}, status=status)


def _answers_bad_queries(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Turn a :class:`BadQuery` (and a NUL character in the query) into a 400."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            # No database stores a NUL in a text column (PostgreSQL refuses it outright).
            for key, values in request.GET.lists():
                if "\x00" in key or any("\x00" in value for value in values):
                    raise BadQuery("the query contains a NUL character")
            return view(request, *args, **kwargs)
        except BadQuery as exc:
            return _error(str(exc), 400)

    return wrapped


def api_view(
    permissions: tuple[str, ...],
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """GET (and HEAD) only, for bearer tokens and staff with one of ``permissions`` (see
    ``access``), with a 400 for a query it cannot answer."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        return require_safe(staff_or_token(permissions)(_answers_bad_queries(view)))

    return decorate


# -- parameters ---------------------------------------------------------------------------


def _param(request: HttpRequest, name: str) -> str | None:
    """The value of parameter ``name``, None when it is missing or empty."""
    return request.GET.get(name) or None


def _integer(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadQuery(f"{name} must be an integer, not {text!r}") from None
    if abs(value) > MAX_ID:  # SQLite (and Django before 5.0) cannot even compare it
        raise BadQuery(f"{name} is out of range")
    return value


def _datetime(name: str, text: str) -> datetime.datetime:
    """An ISO 8601 date or date and time; without an offset, in the current time zone."""
    try:
        value = parse_datetime(text)
        if value is None:
            day = parse_date(text)
            if day is not None:
                value = datetime.datetime.combine(day, datetime.time())
    except ValueError:  # well formed, but no such day or time
        value = None
    if value is None:
        hint = " (encode + as %2B)" if " " in text else ""
        raise BadQuery(f"{name} must be an ISO 8601 date and time, not {text!r}{hint}")
    return _stored_time(name, value)


def _stored_time(name: str, value: datetime.datetime) -> datetime.datetime:
    """``value`` as the database compares it: aware with USE_TZ, naive (local) without."""
    try:
        if settings.USE_TZ:
            if timezone.is_naive(value):
                value = timezone.make_aware(value)
            value.astimezone(datetime.timezone.utc)  # as the database adapter will
        elif timezone.is_aware(value):
            value = timezone.make_naive(value)
    except OverflowError:  # the first or last day of year 1 or 9999, moved out of range
        raise BadQuery(f"{name} is out of range") from None
    return value


def _limit(request: HttpRequest) -> int:
    text = _param(request, "limit")
    if text is None:
        return DEFAULT_LIMIT
    try:
        limit = int(text)
    except ValueError:
        raise BadQuery(f"limit must be an integer, not {text!r}") from None
    if limit < 1:
        raise BadQuery(f"limit must be at least 1, not {limit}")
    return min(limit, MAX_LIMIT)


# -- the cursor ---------------------------------------------------------------------------


def encode_cursor(tstamp: datetime.datetime, pk: int) -> str:
    """The position after the task of ``tstamp`` and ``pk``, as url-safe base64."""
    if timezone.is_aware(tstamp):
        tstamp = tstamp.astimezone(datetime.timezone.utc)
    raw = f"{tstamp.isoformat()}|{pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime.datetime, int]:
    """The ``(tstamp, pk)`` of a cursor made by :func:`encode_cursor`; BadQuery otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, _, pk = raw.decode().partition("|")
        tstamp, position = datetime.datetime.fromisoformat(stamp), int(pk)
        if abs(position) > MAX_ID:
            raise ValueError(position)
        # Only what encode_cursor makes: an edited cursor is refused, not half-understood
        # (a time without its offset, or one whose offset moves it out of range).
        if settings.USE_TZ and timezone.is_naive(tstamp):
            raise ValueError(stamp)
        if encode_cursor(tstamp, position) != cursor:
            raise ValueError(cursor)
    except (ValueError, OverflowError, binascii.Error, UnicodeError):
        raise BadQuery("invalid cursor: use the next URL of the previous page") from None
    return _stored_time("cursor", tstamp), position


def _after(tstamp: datetime.datetime, pk: int) -> models.Q:
    """The tasks after ``(tstamp, pk)`` in the order (-tstamp, -id).

    ``tstamp <= T`` first, so that an index on tstamp (alone, or after state, name, worker
    or lost) bounds the range it reads; the OR then only decides the ties.
    """
    return models.Q(tstamp__lte=tstamp) & (
        models.Q(tstamp__lt=tstamp) | models.Q(tstamp=tstamp, pk__lt=pk)
    )


# -- tasks --------------------------------------------------------------------------------


def _tasks(request: HttpRequest, after: models.Q | None = None) -> models.QuerySet:
    """The tasks that the filters of the request select (and ``after``), in no order."""
    tasks = TaskState.objects.filter(hidden=False)
    if after is not None:
        tasks = tasks.filter(after)
    state, name = _param(request, "state"), _param(request, "name")
    if state is not None:
        tasks = tasks.filter(state=state)
    if name is not None:
        tasks = tasks.filter(name=name)
    worker = _param(request, "worker")
    if worker is not None:
        tasks = tasks.filter(worker_id=_integer("worker", worker))
    hostname = _param(request, "hostname")
    if hostname is not None:
        # The worker's id first: the tasks are then read from the (worker, tstamp) index.
        pk = WorkerState.objects.filter(hostname=hostname).values_list("pk", flat=True).first()
        tasks = tasks.filter(worker_id=pk) if pk is not None else tasks.none()
    lost = _param(request, "lost")
    if lost is not None:
        if lost not in ("0", "1"):
            raise BadQuery(f"lost must be 0 or 1, not {lost!r}")
        tasks = tasks.filter(lost=lost == "1")
    since, until = _param(request, "since"), _param(request, "until")
    if since is not None:
        tasks = tasks.filter(tstamp__gte=_datetime("since", since))
    if until is not None:
        tasks = tasks.filter(tstamp__lt=_datetime("until", until))
    search = _param(request, "q")
    if search is not None:
        try:
            tasks, _duplicates = TaskMonitor(TaskState, admin.site).get_search_results(
                request, tasks, search
            )
        except TooManyWords as exc:
            raise BadQuery(str(exc)) from None
    return tasks


def _task(task: TaskState) -> dict[str, Any]:
    item = {field: getattr(task, field) for field in TASK_FIELDS if field != "worker"}
    item["worker"] = task.worker.hostname if task.worker is not None else None
    return {field: item[field] for field in TASK_FIELDS}


def _next_url(request: HttpRequest, cursor: str) -> str:
    query = request.GET.copy()
    query["cursor"] = cursor
    return request.build_absolute_uri(f"{request.path}?{query.urlencode()}")


@api_view(access.TASKS)
def task_list(request: HttpRequest) -> HttpResponse:
    """A page of the tasks the filters select, the latest first (see the module's text)."""
    limit = _limit(request)
    cursor = _param(request, "cursor")
    # The cursor's bound before the search: a search of several task names or workers then
    # reads each one's tasks from its own index (``branch_page``), as the admin's list does.
    tasks = _tasks(request, _after(*decode_cursor(cursor)) if cursor is not None else None)
    ordered = tasks.select_related("worker").defer("traceback").order_by("-tstamp", "-pk")
    branches = branch_page(ordered, 0, limit + 1)
    page = list(branches if branches is not None else ordered[: limit + 1])
    next_url = None
    if len(page) > limit:
        page = page[:limit]
        next_url = _next_url(request, encode_cursor(page[-1].tstamp, page[-1].pk))
    return json_response({"results": [_task(task) for task in page], "next": next_url})


@api_view(access.TASKS)
def task_detail(request: HttpRequest, task_id: str) -> HttpResponse:
    """One task with its traceback and the ids of the tasks it sent."""
    if "\x00" in task_id:
        raise BadQuery("the task id contains a NUL character")
    task = TaskState.objects.filter(task_id=task_id, hidden=False).select_related("worker").first()
    if task is None:
        return _error(f"no task {task_id!r} was recorded", 404)
    children = list(
        TaskState.objects.filter(parent_id=task.task_id, hidden=False)
        .exclude(pk=task.pk)
        .order_by("tstamp", "pk")
        .values_list("task_id", flat=True)[: MAX_CHILDREN + 1]
    )
    item = _task(task)
    item["traceback"] = task.traceback
    item["children"] = children[:MAX_CHILDREN]
    item["children_truncated"] = len(children) > MAX_CHILDREN
    return json_response(item)


# -- workers and the dashboard ------------------------------------------------------------


@api_view(access.WORKERS)
def worker_list(request: HttpRequest) -> HttpResponse:
    """The workers heard from last (at most ``stats.MAX_WORKERS``), the latest heartbeat
    first; ``count`` and ``online`` count them all."""
    totals = stats.worker_totals()
    return json_response(
        {"count": totals["total"], "online": totals["online"], "results": stats.workers()}
    )


@api_view(access.DASHBOARD)
def dashboard(request: HttpRequest) -> HttpResponse:
    """The dashboard's figures of one window (``?window=``, 1h by default)."""
    window = _param(request, "window") or stats.DEFAULT_WINDOW
    if window not in stats.WINDOWS:
        raise BadQuery(f"window must be one of {', '.join(stats.WINDOWS)}, not {window!r}")
    return json_response(stats.dashboard(window))
