"""The export of the task list: what it exports, who may, bad filters, and bounded memory."""

from __future__ import annotations

import asyncio
import csv
import datetime
import io
import json
import logging
import socket
import threading
import time
import tracemalloc
import warnings
from datetime import timedelta
from http.client import HTTPConnection

import django
import pytest
from django.db import connection, transaction
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone

from django_celery_monitor.admin.export import COLUMNS
from django_celery_monitor.models import TaskState
from tests.test_admin import (
    CRAFTED_TASK_PARAMS,
    TASKS,
    make_task,
    make_worker,
    staff,
    viewer_client,  # noqa: F401  (a fixture)
)

pytestmark = pytest.mark.django_db

EXPORT = reverse("admin:celery_monitor_taskstate_export")


def export(client, fmt="csv", **params):
    return client.get(EXPORT, {"format": fmt, **params})


def body(response) -> str:
    return b"".join(response.streaming_content).decode()


def csv_rows(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body(response), newline="")))


def jsonl_rows(response) -> list[dict]:
    return [json.loads(line) for line in body(response).splitlines()]


def listed_ids(client, **params) -> list[str]:
    """The task ids the task list shows for these parameters, in its order."""
    response = client.get(TASKS, params)
    assert response.status_code == 200
    return [task.task_id for task in response.context["cl"].result_list]


@pytest.fixture
def tasks():
    """Tasks of two names, three states and two workers, a second apart, and a hidden one."""
    now = timezone.now().replace(microsecond=0)
    w1, w2 = make_worker("celery@alpha"), make_worker("celery@beta")
    made = []
    for n in range(12):
        made.append(
            make_task(
                task_id=f"task-{n:02d}",
                state=("SUCCESS", "FAILURE", "STARTED")[n % 3],
                name=("proj.tasks.add", "proj.tasks.report")[n % 2],
                worker=(w1, w2)[n % 2],
                tstamp=now - timedelta(seconds=n),
            )
        )
    make_task(task_id="task-hidden", hidden=True, tstamp=now)
    return made


FILTERED_LISTS = [
    {},
    {"state": "SUCCESS"},
    {"name": "proj.tasks.report"},
    {"q": "proj.tasks.add"},
    {"q": "celery@beta", "state": "FAILURE"},
    {"state": "STARTED", "o": "2"},
]


@pytest.mark.parametrize("params", FILTERED_LISTS)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_the_export_has_the_rows_of_the_list_in_its_order(admin_client, tasks, params, fmt):
    expected = listed_ids(admin_client, **params)
    assert expected  # every case lists something

    response = export(admin_client, fmt, **params)

    assert response.status_code == 200
    rows = csv_rows(response) if fmt == "csv" else jsonl_rows(response)
    assert [row["task_id"] for row in rows] == expected
    assert "task-hidden" not in [row["task_id"] for row in rows]


def test_the_default_order_is_the_latest_first_then_the_last_recorded(admin_client):
    now = timezone.now()
    first = make_task(task_id="same-time-1", tstamp=now)
    second = make_task(task_id="same-time-2", tstamp=now)
    older = make_task(task_id="older", tstamp=now - timedelta(minutes=1))
    ids = [row["task_id"] for row in jsonl_rows(export(admin_client, "jsonl"))]
    assert ids == [second.task_id, first.task_id, older.task_id]


def test_every_page_of_the_list_is_exported(admin_client, tasks):
    ids = [row["task_id"] for row in csv_rows(export(admin_client, p="2"))]
    assert len(ids) == len(tasks)


def test_the_date_drill_down_is_exported_as_the_list_shows_it(admin_client):
    make_task(task_id="this-year")
    make_task(task_id="long-ago", tstamp=timezone.now().replace(year=2001))
    params = {"tstamp__year": "2001"}
    assert listed_ids(admin_client, **params) == ["long-ago"]
    assert [row["task_id"] for row in csv_rows(export(admin_client, **params))] == ["long-ago"]


def full_task():
    worker = make_worker("celery@höst")
    started = timezone.now().replace(microsecond=123456)
    return make_task(
        task_id="full-task",
        name="proj.tasks.résumé",
        state="FAILURE",
        worker=worker,
        tstamp=started + timedelta(seconds=2),
        received=started - timedelta(seconds=1),
        started=started,
        runtime=1.5,
        retries=2,
        eta=started + timedelta(hours=1),
        args="(1, 'ü')",
        kwargs="{'to': 'a@b.c'}",
        result="ValueError('no')",
        exception="ValueError('no')",
        traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError: no',
        parent_id="parent-task",
        root_id="root-task",
        lost=True,
        note="from the result backend",
    )


def test_the_csv_header_and_values(admin_client):
    task = full_task()
    make_task(task_id="bare-task", state="RECEIVED", name=None)

    response = export(admin_client, "csv")

    text = body(response)
    assert text.splitlines()[0] == ",".join(COLUMNS)
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [row["task_id"] for row in rows] == ["full-task", "bare-task"]
    assert rows[0] == {
        "task_id": "full-task",
        "name": "proj.tasks.résumé",
        "state": "FAILURE",
        "worker": "celery@höst",
        "tstamp": task.tstamp.isoformat(),
        "received": task.received.isoformat(),
        "started": task.started.isoformat(),
        "runtime": "1.5",
        "retries": "2",
        "eta": task.eta.isoformat(),
        "expires": "",
        "args": "(1, 'ü')",
        "kwargs": "{'to': 'a@b.c'}",
        "result": "ValueError('no')",
        "exception": "ValueError('no')",
        "traceback": task.traceback,
        "parent_id": "parent-task",
        "root_id": "root-task",
        "lost": "true",
        "note": "from the result backend",
    }
    # A task without a name or a worker: empty cells, not "None".
    assert rows[1]["name"] == "" and rows[1]["worker"] == "" and rows[1]["lost"] == "false"
    # ISO 8601, with the offset: times as stored (UTC).
    assert datetime.datetime.fromisoformat(rows[0]["tstamp"]) == task.tstamp


def test_the_jsonl_values(admin_client):
    task = full_task()
    make_task(task_id="bare-task", state="RECEIVED", name=None)

    response = export(admin_client, "jsonl")

    text = body(response)
    assert "résumé" in text  # not escaped: ensure_ascii=False
    assert text.endswith("\n") and text.count("\n") == 2  # the traceback's newlines escaped
    full, bare = (json.loads(line) for line in text.splitlines())
    assert list(full) == list(COLUMNS)
    assert full == {
        "task_id": "full-task",
        "name": "proj.tasks.résumé",
        "state": "FAILURE",
        "worker": "celery@höst",
        "tstamp": task.tstamp.isoformat(),
        "received": task.received.isoformat(),
        "started": task.started.isoformat(),
        "runtime": 1.5,
        "retries": 2,
        "eta": task.eta.isoformat(),
        "expires": None,
        "args": "(1, 'ü')",
        "kwargs": "{'to': 'a@b.c'}",
        "result": "ValueError('no')",
        "exception": "ValueError('no')",
        "traceback": task.traceback,
        "parent_id": "parent-task",
        "root_id": "root-task",
        "lost": True,
        "note": "from the result backend",
    }
    assert "T" in full["tstamp"]
    assert bare["name"] is None and bare["worker"] is None and bare["lost"] is False


def test_a_jsonl_row_is_one_line_for_every_reader(admin_client):
    odd = "a\u2028b\u2029c\x85d\x0be\rf"
    make_task(task_id="odd-task", args=odd)
    text = body(export(admin_client, "jsonl"))
    assert len(text.splitlines()) == 1
    assert json.loads(text)["args"] == odd


def test_the_response_is_a_streamed_attachment(admin_client, tasks):
    for fmt, content_type, extension in (
        ("csv", "text/csv; charset=utf-8", "csv"),
        ("jsonl", "application/x-ndjson; charset=utf-8", "jsonl"),
    ):
        response = export(admin_client, fmt)
        assert isinstance(response, StreamingHttpResponse)
        assert response["Content-Type"] == content_type
        disposition = response["Content-Disposition"]
        assert disposition.startswith('attachment; filename="celery-tasks-')
        stamp = timezone.localtime().strftime("%Y%m%d-")
        assert f"celery-tasks-{stamp}" in disposition and disposition.endswith(f'.{extension}"')
        assert "no-store" in response["Cache-Control"]
        body(response)


@pytest.fixture
def pieces_read(monkeypatch):
    """The pieces of CSV each export reads (a line each), and the thread that closed their
    generator (that of the view, whose database connection holds the cursor). The
    generators are kept here: one the response left open is not closed by the collector."""
    from django_celery_monitor.admin import export as export_module

    monkeypatch.setattr(export_module, "BUFFER_SIZE", 1)
    buffered = export_module._buffered
    noted: dict = {"read": [], "closed": None, "generators": []}

    def pieces(lines):
        try:
            for piece in buffered(lines):
                noted["read"].append(piece)
                yield piece
        finally:
            noted["closed"] = threading.get_ident()

    def counted(lines):
        generator = pieces(lines)
        noted["generators"].append(generator)
        return generator

    monkeypatch.setattr(export_module, "_buffered", counted)
    return noted


def serve_asgi(client, settings, pieces_read, leave_after: int | None = None):
    """The CSV export served by Django's ASGI application to ``client``'s session: the
    status, and each body sent with how many pieces had been read by then. The client
    leaves (disconnects) once ``leave_after`` bodies have come."""
    from asgiref.sync import async_to_sync
    from django.core import signals
    from django.core.asgi import get_asgi_application
    from django.db import close_old_connections

    session = client.cookies[settings.SESSION_COOKIE_NAME].value
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": EXPORT,
        "raw_path": EXPORT.encode(),
        "query_string": b"format=csv",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"cookie", f"{settings.SESSION_COOKIE_NAME}={session}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    requests = [{"type": "http.request", "body": b"", "more_body": False}]
    sent: list[tuple[int, bytes]] = []
    status: list[int] = []
    left = asyncio.Event()

    async def receive():
        if requests:
            return requests.pop()
        await left.wait()  # the handler stops listening when the response ends
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message.get("body"):
            sent.append((len(pieces_read["read"]), message["body"]))
            if leave_after is not None and len(sent) >= leave_after:
                left.set()

    # As Django's test client does: the test's connection (and its transaction) stays open.
    ends = (signals.request_started, signals.request_finished)
    for signal in ends:
        signal.disconnect(close_old_connections)
    try:
        with warnings.catch_warnings():
            # Django warns when it has to read a synchronous iterator whole.
            warnings.simplefilter("error")
            async_to_sync(get_asgi_application())(scope, receive, send)
    finally:
        for signal in ends:
            signal.connect(close_old_connections)
    return status, sent


def test_under_asgi_the_export_is_sent_as_it_is_read(admin_client, tasks, settings, pieces_read):
    # Django reads a synchronous iterator whole before an ASGI server sends any of it: the
    # export gives it pieces it reads one at a time, on the thread that ran the view.
    expected = b"".join(export(admin_client).streaming_content)
    pieces_read.update(read=[], closed=None)
    status, sent = serve_asgi(admin_client, settings, pieces_read)
    assert status == [200]
    assert b"".join(piece for _, piece in sent) == expected
    assert len(pieces_read["read"]) == expected.count(b"\n") == 13  # the header, 12 tasks
    # Each piece went out before the next was read; the rows' generator was closed on the
    # thread that ran the view (the test's: async_to_sync runs it there).
    assert [count for count, _ in sent] == list(range(1, 14))
    assert pieces_read["closed"] == threading.get_ident()


@pytest.mark.skipif(django.VERSION < (5, 0), reason="Django 4.2 does not listen for it")
def test_under_asgi_a_client_that_leaves_stops_the_export(
    admin_client, tasks, settings, pieces_read
):
    status, sent = serve_asgi(admin_client, settings, pieces_read, leave_after=2)
    assert status == [200]
    assert 2 <= len(sent) < 13 and len(pieces_read["read"]) < 13
    assert pieces_read["closed"] == threading.get_ident()


def test_csv_injection_is_neutralised(admin_client):
    formulas = [
        "=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", '=HYPERLINK("http://x")',
        " =1+1", "\n=1+1", "  +1", "\uff1d1+1",  # behind spaces, full-width
        "\u200b=1+1", "\ufeff\u200b +1", "\x01@x",  # behind what shows nothing
    ]  # fmt: skip
    for n, formula in enumerate(formulas):
        make_task(task_id=f"{formula}-{n}", name=formula, args=formula, tstamp=timezone.now())
    make_task(task_id="plain", name="a=b", args="(-1,)", note=" x-1")

    rows = csv_rows(export(admin_client, "csv"))

    cells = {row["args"]: row for row in rows}
    for formula in formulas:
        row = cells["'" + formula]
        assert row["name"] == "'" + formula and row["task_id"].startswith("'" + formula)
    plain = cells["(-1,)"]
    assert (plain["name"], plain["note"], plain["task_id"]) == ("a=b", " x-1", "plain")
    # JSON lines are data, not a spreadsheet: the values are exported as they are.
    names = {row["name"] for row in jsonl_rows(export(admin_client, "jsonl"))}
    assert set(formulas) <= names


def test_the_list_shows_the_export_links_with_its_query_string(admin_client, tasks):
    year = str(timezone.localtime().year)
    params = {"state": "SUCCESS", "q": "proj", "o": "2", "p": "2", "tstamp__year": year}
    response = admin_client.get(TASKS, {**params, "p": "1"})
    html = response.content.decode()
    links = response.context["cm_export_links"]
    assert [link["label"] for link in links] == ["Export CSV", "Export JSON lines"]
    for link, fmt in zip(links, ("csv", "jsonl"), strict=True):
        url = link["url"]
        assert url.startswith(EXPORT + "?")
        assert f"format={fmt}" in url and "p=" not in url
        for key in ("state=SUCCESS", "q=proj", "o=2", f"tstamp__year={year}"):
            assert key in url
        assert f'href="{url.replace("&", "&amp;")}"' in html
    # The links lead to what the list shows.
    ids = [row["task_id"] for row in csv_rows(admin_client.get(links[0]["url"]))]
    assert ids == [task.task_id for task in response.context["cl"].result_list]


def test_the_worker_list_has_no_export_links(admin_client):
    make_worker()
    html = admin_client.get(reverse("admin:celery_monitor_workerstate_changelist")).content
    assert b"cm-export" not in html


def test_a_viewer_may_export(viewer_client, tasks):  # noqa: F811
    response = export(viewer_client)
    assert response.status_code == 200
    assert len(csv_rows(response)) == len(tasks)
    assert b"cm-export" in viewer_client.get(TASKS).content


def test_staff_without_the_view_permission_gets_403(client, django_user_model, tasks):
    client.force_login(staff(django_user_model, "view_workerstate"))
    assert export(client).status_code == 403


def test_anonymous_and_non_staff_are_sent_to_the_login(client, django_user_model, tasks):
    response = export(client)
    assert response.status_code == 302 and "/admin/login/" in response.url
    user = django_user_model.objects.create_user("plain", password="pw", is_staff=False)
    client.force_login(user)
    response = export(client)
    assert response.status_code == 302 and "/admin/login/" in response.url


@pytest.mark.parametrize(
    "params",
    [
        {"state": "\x00"},
        {"q": "abc\x00def"},
        {"tstamp__year": "abc"},
        {"tstamp__month": "5"},
        {"tstamp__gte": "garbage"},
        {"retries__gt": "many"},
        {"no_such_field": "1"},
        {"tstamp__gte": "0001-01-01"},  # before year 1 in UTC
        {"q": " ".join(["a"] * 21)},
    ],
)
def test_a_bad_filter_gives_400(admin_client, tasks, params):
    for fmt in ("csv", "jsonl"):
        response = export(admin_client, fmt, **params)
        assert response.status_code == 400
        assert not isinstance(response, StreamingHttpResponse)


def test_an_unknown_format_gives_400(admin_client, tasks):
    assert export(admin_client, "xlsx").status_code == 400
    # Without a format, CSV.
    response = admin_client.get(EXPORT)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")


@pytest.mark.parametrize("params", CRAFTED_TASK_PARAMS)
def test_the_export_refuses_what_the_list_refuses(admin_client, params):
    make_task()
    # The page and "show all" are the list's own: the export has every page.
    listed = {k: v for k, v in params.items() if k not in ("p", "all")}
    refused = admin_client.get(TASKS, listed).status_code == 302
    response = export(admin_client, **params)
    assert response.status_code == (400 if refused else 200), params
    if not refused:
        body(response)


@pytest.mark.parametrize("query", ["q=%ED%A0%80", "state=%FF%FE", "name=%C0%AF"])
def test_query_strings_that_are_not_utf_8_never_make_a_server_error(admin_client, query):
    make_task()
    response = admin_client.get(f"{EXPORT}?format=csv&{query}")
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        body(response)


def test_the_export_is_logged(admin_client, tasks, caplog):
    with caplog.at_level(logging.INFO, logger="django_celery_monitor.admin.export"):
        body(export(admin_client, "jsonl", state="SUCCESS", name="proj.tasks.add", q="task"))
    [record] = caplog.records
    assert record.levelno == logging.INFO
    assert record.getMessage() == (
        "admin exported the task list as jsonl (2 filter parameters, searched)"
    )


# -- memory

ROWS = 100_000


def insert_tasks(count: int) -> None:
    """``count`` finished tasks, a millisecond apart, inserted with one ``executemany``.

    Plain SQL: building 100,000 model instances for ``bulk_create`` takes ten times longer.
    """
    worker = make_worker("celery@bulk")
    start = timezone.now() - timedelta(days=1)
    args = "(" + ", ".join(str(n) for n in range(20)) + ")"
    adapt = connection.ops.adapt_datetimefield_value
    meta = TaskState._meta
    values = {
        "task_id": None,
        "name": "proj.tasks.bulk",
        "state": "SUCCESS",
        "worker": worker.pk,
        "tstamp": None,
        "received": adapt(start),
        "started": adapt(start),
        "runtime": None,
        "retries": 0,
        "args": args,
        "kwargs": "{'user': 'someone@example.com'}",
        "result": "{'ok': True, 'rows': 42}",
        "hidden": False,
        "lost": False,
    }
    columns = [meta.get_field(name).column for name in values]
    quote = connection.ops.quote_name
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        quote(meta.db_table), ", ".join(map(quote, columns)), ", ".join(["%s"] * len(columns))
    )

    def rows():
        for n in range(count):
            values["task_id"] = f"bulk-{n:08d}-0000-0000-0000-000000000000"
            values["tstamp"] = adapt(start + timedelta(milliseconds=n))
            values["runtime"] = 0.001 * n
            yield tuple(values.values())

    with connection.cursor() as cursor:
        cursor.executemany(sql, rows())


# About 25 s on SQLite and 50 s on PostgreSQL, most of it tracemalloc's tracing of every
# allocation: run once, with the load tests.
@pytest.mark.load
def test_a_large_export_streams_in_bounded_memory(admin_client):
    insert_tasks(ROWS)
    started = time.perf_counter()
    tracemalloc.start()
    try:
        response = export(admin_client, "csv")
        assert isinstance(response, StreamingHttpResponse)
        lines = 0
        size = 0
        for chunk in response.streaming_content:
            lines += chunk.count(b"\r\n")  # no value here has a line break
            size += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - started
    print(f"\n{ROWS} rows, {size / 1e6:.1f} MB, in {seconds:.1f} s: peak {peak / 1e6:.1f} MB")
    assert lines == ROWS + 1  # and the header
    # Measured: a peak of 4.3 MB on SQLite, 4.7 MB on PostgreSQL, for a response of 33 MB;
    # a list of the 100,000 rows as tuples peaks at 125 MB. The bound is about three times
    # the measure.
    assert peak < 15_000_000


@pytest.fixture
def asgi_server(transactional_db):
    """A real ASGI server (uvicorn) serving the project, in a thread of this process; its
    port. Django runs the views on threads of its own, as under any ASGI server."""
    import uvicorn
    from django.core.asgi import get_asgi_application

    config = uvicorn.Config(
        get_asgi_application(), host="127.0.0.1", port=0, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(10)


def test_a_real_asgi_server_sends_the_export_while_it_reads_it(
    asgi_server, admin_user, pieces_read, monkeypatch, settings
):
    # A client that stops reading holds the export back (the server waits for it to take
    # what was sent), where Django alone would read every row before sending the first.
    from django.test import Client

    from django_celery_monitor.admin import export as export_module

    monkeypatch.setattr(export_module, "BUFFER_SIZE", 64 * 1024)
    rows = 40_000  # about 11 MB of CSV: more than the sockets' buffers hold
    with transaction.atomic():
        insert_tasks(rows)
    client = Client()
    client.force_login(admin_user)
    cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
    # A small receive buffer, set before connecting (the window is agreed then).
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect(("127.0.0.1", asgi_server))
    http = HTTPConnection("127.0.0.1", asgi_server)
    http.sock = sock
    http.request("GET", f"{EXPORT}?format=csv", headers={"Cookie": cookie})
    response = http.getresponse()
    assert response.status == 200
    received = response.read(1024)
    # The export goes on until the buffers between it and this client are full.
    read, still = len(pieces_read["read"]), 0
    deadline = time.monotonic() + 20
    while still < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(pieces_read["read"])
        read, still = now, still + 1 if now == read else 0
    received += response.read()
    http.close()
    total = len(pieces_read["read"])
    assert received.count(b"\r\n") == rows + 1  # and the header
    assert 0 < read < total / 2, (read, total)


def test_on_mysql_the_rows_stream_from_a_server_side_cursor(admin_client, monkeypatch):
    """mysqlclient's default cursor reads a whole result into memory before the first row:
    the export reads its rows from a server-side cursor there, a chunk at a time, with the
    values the ORM gives (aware times, booleans, the worker's name)."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL's driver reads a whole result first; the others read in chunks")
    from MySQLdb.cursors import SSCursor

    from django_celery_monitor.admin import export as export_module

    count = 20_000
    insert_tasks(count)
    monkeypatch.setattr(export_module, "CHUNK_SIZE", 500)
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.net_write_timeout")
        (timeout,) = cursor.fetchone()
    fetched: list[int] = []
    fetchmany = SSCursor.fetchmany

    def counted(cursor, size=None):
        rows = fetchmany(cursor, size)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(SSCursor, "fetchmany", counted)
    tracemalloc.start()
    try:
        response = export(admin_client, "jsonl")
        total, first, last = 0, None, None
        for chunk in response.streaming_content:
            lines = chunk.decode().splitlines()
            total += len(lines)
            first = first or json.loads(lines[0])
            last = json.loads(lines[-1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == count
    assert max(fetched) == 500
    assert sum(fetched) == count
    # The latest first, as the list shows them.
    assert first["task_id"] == f"bulk-{count - 1:08d}-0000-0000-0000-000000000000"
    assert last["task_id"] == f"bulk-{0:08d}-0000-0000-0000-000000000000"
    assert (first["worker"], first["state"], first["lost"]) == ("celery@bulk", "SUCCESS", False)
    assert first["tstamp"].endswith("+00:00")
    # The whole result as rows would take about 25 MB here.
    assert peak < 10_000_000
    # The connection is free again, with the server's own wait for a client.
    assert TaskState.objects.count() == count
    with connection.cursor() as cursor:
        cursor.execute("SELECT @@SESSION.net_write_timeout")
        assert cursor.fetchone()[0] == timeout


@pytest.mark.django_db(transaction=True)  # outside a transaction, as a request is
def test_on_mysql_an_export_left_early_closes_the_connection(admin_client, monkeypatch):
    """A client that goes away: the connection is closed, not made to read every row left
    of a server-side cursor first; the next query opens another."""
    if connection.vendor != "mysql":
        pytest.skip("MySQL's server-side cursor")
    from django_celery_monitor.admin import export as export_module

    count = 5_000
    insert_tasks(count)
    monkeypatch.setattr(export_module, "CHUNK_SIZE", 100)
    from MySQLdb.cursors import SSCursor

    drained: list[bool] = []
    close = SSCursor.close

    def spied(cursor):
        drained.append(True)  # the driver's close reads every row left
        return close(cursor)

    monkeypatch.setattr(SSCursor, "close", spied)
    response = export(admin_client, "csv")
    content = iter(response.streaming_content)
    assert next(content).startswith(b"task_id,")
    response.close()
    assert drained == []
    assert connection.connection is None
    assert TaskState.objects.count() == count
    assert export(admin_client, "csv").getvalue().count(b"\r\n") == count + 1


def test_on_mysql_rows_left_in_a_transaction_are_read_and_it_goes_on(monkeypatch):
    if connection.vendor != "mysql":
        pytest.skip("MySQL's server-side cursor")
    from django_celery_monitor.admin import export as export_module

    insert_tasks(1_000)
    monkeypatch.setattr(export_module, "CHUNK_SIZE", 10)
    rows = export_module.stream_rows(TaskState.objects.values_list("task_id", "lost"))
    assert next(rows)[1] is False
    rows.close()  # the driver reads the rest: the connection stays, in its transaction
    assert connection.in_atomic_block
    assert TaskState.objects.count() == 1_000
