"""The export of the task list as it is filtered: CSV or JSON lines, streamed.

The export view answers ``export/?format=csv`` (or ``jsonl``) followed by the list's own
query string: its filters, search, date drill-down and ordering. It builds the list's
changelist from them, so it exports exactly the rows the list shows, on every page of it.

The rows are read in chunks from a database cursor (a server-side one on PostgreSQL, MySQL
and MariaDB) and written out as they come: a million rows never sit in memory. What is
exported is what is stored, and the camera redacts the arguments, results, exceptions and
tracebacks (the ``monitor_redact_*`` settings) before it writes them, so an export shows
nothing that redaction kept out of the database (rows written before a rule was set keep
what they had, in the list as here).
"""

from __future__ import annotations

import copy
import csv
import datetime
import functools
import json
import logging
import math
import re
import sys
import unicodedata
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.contrib.admin.views.main import ALL_VAR, IGNORED_PARAMS, PAGE_VAR
from django.core.exceptions import EmptyResultSet, PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.translation import gettext

logger = logging.getLogger(__name__)

#: The export's own parameter: ``csv`` or ``jsonl``.
FORMAT_VAR = "format"
#: The columns of an export, in order: the CSV's header and the keys of each JSON line.
COLUMNS = (
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
    "args",
    "kwargs",
    "result",
    "exception",
    "traceback",
    "parent_id",
    "root_id",
    "lost",
    "note",
)
#: What each column reads: the worker's hostname through the join, no model instances.
FIELDS = tuple("worker__hostname" if column == "worker" else column for column in COLUMNS)
#: Rows fetched from the database cursor at a time.
CHUNK_SIZE = 2000
#: About how many characters are gathered before a piece of the response is sent: one
#: write per row would cost a system call each in most WSGI servers.
BUFFER_SIZE = 64 * 1024
#: The characters that make a spreadsheet read a cell as a formula (their full-width forms
#: too), or that some spreadsheets strip before looking for one (tab, carriage return, line
#: feed); a formula behind spaces counts as well.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")


class Echo:
    """A file-like object whose ``write`` returns what it is given (Django's CSV pattern)."""

    def write(self, value: str) -> str:
        return value


def _value(value: Any) -> Any:
    """A stored value as exported: times in ISO 8601, NaN and infinities as nothing."""
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@functools.cache
def _blanks() -> re.Pattern[str]:
    """What leads a text and shows nothing: spaces, and control and format characters (a
    zero-width space, a byte order mark), which a spreadsheet may drop. Made once (a pass
    over every code point, about 0.1 s)."""
    blanks = (
        chr(code)
        for code in range(sys.maxunicode + 1)
        if chr(code).isspace() or unicodedata.category(chr(code)) in ("Cc", "Cf")
    )
    return re.compile("[" + "".join(re.escape(char) for char in blanks) + "]*")


def _formula_behind_blanks(value: str) -> bool:
    return value.startswith(FORMULA_STARTS, _blanks().match(value).end())


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str):
        # CSV injection: a text that starts like a formula gets a leading single quote, so a
        # spreadsheet shows it as text instead of running it (=HYPERLINK(...), =cmd|...).
        if value.startswith(FORMULA_STARTS) or _formula_behind_blanks(value):
            return "'" + value
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    value = _value(value)
    return "" if value is None else value


#: MySQL, MariaDB: the seconds the server waits for the export to read on, between two
#: chunks, while the previous chunk goes out to the client (the server's default: 60).
NET_WRITE_TIMEOUT = 600


def stream_rows(queryset: QuerySet) -> Iterator[Any]:
    """The rows of ``queryset`` (a plain ``values_list``), read a chunk at a time.

    Django's ``iterator()`` does that on PostgreSQL (a server-side cursor) and SQLite; on
    MySQL and MariaDB, mysqlclient's default cursor first reads the whole result into
    memory, every row of a million. There the rows come from its server-side cursor
    (``SSCursor``), and Django's converters then make of each value what the ORM gives.

    The server waits while a chunk goes out to the client: it is given
    :data:`NET_WRITE_TIMEOUT` seconds for that. An export the client leaves early closes
    the connection (outside a transaction), where closing the cursor would first read
    every row left.
    """
    connection = connections[queryset.db]
    if connection.vendor != "mysql" or connection.Database.__name__ != "MySQLdb":
        yield from queryset.iterator(chunk_size=CHUNK_SIZE)
        return
    from MySQLdb.cursors import SSCursor

    compiler = queryset.query.get_compiler(using=queryset.db)
    try:
        sql, params = compiler.as_sql()
    except EmptyResultSet:
        return  # a condition nothing can match (a search that found nothing)
    width = compiler.col_count if compiler.has_extra_select else None
    connection.ensure_connection()
    with connection.wrap_database_errors:
        raw = connection.connection
        with raw.cursor() as cursor:
            cursor.execute("SELECT @@SESSION.net_write_timeout")
            (timeout,) = cursor.fetchone()
            cursor.execute("SET SESSION net_write_timeout = %s", [max(timeout, NET_WRITE_TIMEOUT)])
        cursor = raw.cursor(SSCursor)
        finished = False
        try:
            cursor.execute(sql, params)

            def chunks() -> Iterator[Sequence[Any]]:
                while chunk := cursor.fetchmany(CHUNK_SIZE):
                    # Columns selected for the order only (distinct) are not the rows'.
                    yield chunk if width is None else [row[:width] for row in chunk]

            yield from compiler.results_iter(results=chunks(), tuple_expected=True)
            finished = True
        finally:
            if finished:
                cursor.close()
                with raw.cursor() as other:
                    other.execute("SET SESSION net_write_timeout = %s", [timeout])
            elif connection.in_atomic_block:
                cursor.close()  # reads the rest: the transaction goes on
            else:
                connection.close()


def csv_lines(rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """The header, then one CSV line per row of :data:`FIELDS` values."""
    writer = csv.writer(Echo())
    yield writer.writerow(COLUMNS)
    for row in rows:
        yield writer.writerow([_csv_cell(value) for value in row])


#: Characters that end a line for some readers (Python's ``str.splitlines``) and that JSON
#: leaves as they are (it escapes those below U+0020): escaped in a JSON line, so that each
#: row is one line whatever splits them.
LINE_ENDS = str.maketrans({char: f"\\u{ord(char):04x}" for char in "\x85\u2028\u2029"})


def jsonl_lines(rows: Iterable[Sequence[Any]]) -> Iterator[str]:
    """One JSON object per row of :data:`FIELDS` values, keyed by :data:`COLUMNS`."""
    for row in rows:
        item = dict(zip(COLUMNS, map(_value, row), strict=True))
        yield json.dumps(item, ensure_ascii=False, default=str).translate(LINE_ENDS) + "\n"


def _buffered(lines: Iterable[str]) -> Generator[bytes, None, None]:
    """The lines gathered into pieces of about :data:`BUFFER_SIZE` characters, in UTF-8."""
    parts: list[str] = []
    size = 0
    for line in lines:
        parts.append(line)
        size += len(line)
        if size >= BUFFER_SIZE:
            # A lone surrogate (SQLite stores one) must not cut the download short.
            yield "".join(parts).encode("utf-8", "replace")
            parts, size = [], 0
    if parts:
        yield "".join(parts).encode("utf-8", "replace")


class _AsyncPieces:
    """The pieces of an export for an ASGI server, read one at a time as it sends them.

    Django serves a streamed response's synchronous iterator under ASGI by reading all of
    it into a list first: a million rows in memory, and nothing sent until the last one is
    read. Each piece is read here on the thread that ran the view (Django's thread for
    synchronous code in this request), whose database connection holds the cursor.
    Django calls :meth:`close` when the response ends, on that thread too: a download left
    early closes the cursor there.
    """

    def __init__(self, pieces: Generator[bytes, None, None]) -> None:
        self._pieces = pieces

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._read()

    async def _read(self) -> AsyncIterator[bytes]:
        read = sync_to_async(next, thread_sensitive=True)
        while (piece := await read(self._pieces, None)) is not None:
            yield piece

    def close(self) -> None:
        self._pieces.close()


#: Each format: its content type, its file extension, and how it writes rows.
FORMATS: dict[str, tuple[str, str, Callable[[Iterable[Sequence[Any]]], Iterator[str]]]] = {
    "csv": ("text/csv; charset=utf-8", "csv", csv_lines),
    "jsonl": ("application/x-ndjson; charset=utf-8", "jsonl", jsonl_lines),
}


def _file_name(extension: str) -> str:
    now = timezone.now()
    if timezone.is_aware(now):  # USE_TZ: the time of the server's time zone
        now = timezone.localtime(now)
    return f"celery-tasks-{now:%Y%m%d-%H%M}.{extension}"


class TaskExportMixin:
    """Adds the export view to the tasks' admin, and its links to the task list.

    Mixed into a :class:`~django.contrib.admin.ModelAdmin` of
    :class:`~django_celery_monitor.models.TaskState` whose changelist is the list exported.
    """

    def get_urls(self) -> list[Any]:
        info = self.opts.app_label, self.opts.model_name
        export = path(
            "export/",
            self.admin_site.admin_view(self.export_view),
            name="{}_{}_export".format(*info),
        )
        # Before the admin's own URLs, whose "<object_id>/" would take "export/".
        return [export, *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        context = {"cm_export_links": self.export_links(request), **(extra_context or {})}
        return super().changelist_view(request, context)

    def export_links(self, request: HttpRequest) -> list[dict[str, str]]:
        """The export links of the list: its query string, without the page, and a format."""
        url = reverse(admin_urlname(self.opts, "export"), current_app=self.admin_site.name)
        query = request.GET.copy()
        for name in (FORMAT_VAR, PAGE_VAR):
            query.pop(name, None)
        labels = {"csv": gettext("Export CSV"), "jsonl": gettext("Export JSON lines")}
        links = []
        for name, label in labels.items():
            query[FORMAT_VAR] = name
            links.append({"label": label, "url": f"{url}?{query.urlencode()}"})
        return links

    def export_view(self, request: HttpRequest) -> HttpResponse:
        """The rows of the list as the query string filters them, as a streamed download.

        Every page of the list, in its order. A filter the list refuses (it answers
        ``?e=1``) is answered with a 400.
        """
        if not self.has_view_permission(request):
            raise PermissionDenied
        name = request.GET.get(FORMAT_VAR, "csv")
        if name not in FORMATS:
            return HttpResponseBadRequest(
                gettext("Unknown export format: use csv or jsonl."), content_type="text/plain"
            )
        content_type, extension, lines = FORMATS[name]
        # The list's own request: its parameters without the export's (which the list
        # would take for a filter), the page (all pages are exported) and "show all".
        list_request = copy.copy(request)
        list_request.GET = request.GET.copy()
        for parameter in (FORMAT_VAR, PAGE_VAR, ALL_VAR):
            list_request.GET.pop(parameter, None)
        try:
            changelist = self.get_changelist_instance(list_request)
        except IncorrectLookupParameters:
            return HttpResponseBadRequest(
                gettext("The filters of the task list are not valid."), content_type="text/plain"
            )
        logger.info(
            "%s exported the task list as %s (%d filter parameters%s)",
            request.user.get_username(),
            name,
            sum(1 for key in list_request.GET if key not in IGNORED_PARAMS),
            ", searched" if changelist.query else "",
        )
        # The changelist's queryset: its filters, its search, the rows the expiry has not
        # hidden, in the list's order (by default the latest first: -tstamp, then -pk).
        rows = stream_rows(changelist.queryset.values_list(*FIELDS))
        pieces: Any = _buffered(lines(rows))
        if isinstance(request, ASGIRequest):
            pieces = _AsyncPieces(pieces)
        response = StreamingHttpResponse(pieces, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="{_file_name(extension)}"'
        return response
