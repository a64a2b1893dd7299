"""The admin: read-only lists and details of tasks and workers, and their control actions."""

from __future__ import annotations

import ast
import contextlib
import datetime
import sys
from collections import Counter
from collections.abc import Sequence
from pprint import pformat
from typing import Any

from celery import states
from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import EmptyResultSet
from django.core.paginator import Paginator
from django.db import connections, models
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import capfirst, smart_split, unescape_string_literal
from django.utils.translation import gettext, ngettext, ngettext_lazy
from django.utils.translation import gettext_lazy as _

from . import control
from .conf import get_celery_app
from .humanize import naturaldate
from .models import ALL_STATES, TaskState, WorkerState

try:
    from django.contrib.admin.utils import build_q_object_from_lookup_parameters
except ImportError:  # pragma: no cover  (Django < 5.0)
    build_q_object_from_lookup_parameters = None

__all__ = [
    "NODE_STATE_COLORS",
    "TASK_STATE_COLORS",
    "CappedPaginator",
    "ModelMonitor",
    "MonitorList",
    "TaskMonitor",
    "WorkerMonitor",
]

#: The badge color of each task state (a CSS class ``cm-badge-<color>``).
TASK_STATE_COLORS = {
    states.SUCCESS: "green",
    states.FAILURE: "red",
    states.REVOKED: "magenta",
    states.STARTED: "yellow",
    states.RETRY: "orange",
    "RECEIVED": "blue",
}
#: The badge color of a worker that is online or offline.
NODE_STATE_COLORS = {"ONLINE": "green", "OFFLINE": "gray"}

#: The most tasks one action handles: a larger selection is refused with a message.
MAX_ACTION_TASKS = 1000
#: The most tasks "retry" sends again at once.
MAX_RETRY_TASKS = 100
#: How many children a task's detail page lists.
MAX_CHILDREN = 50
#: How many characters of a task's arguments its row in the task list sends (the cell
#: shows what fits its width, with an ellipsis).
ARGS_LENGTH = 200
#: The most task names a search compares its words with, whatever their case (the names are
#: read with a loose index scan); with more names in the table, a word matches the names
#: that start with it as typed or in lower case.
MAX_SEARCH_NAMES = 1000
#: The most workers whose hostname a word of a search may match; with more, the search
#: joins the workers' table instead.
MAX_SEARCH_WORKERS = 1000


def _log(request: HttpRequest, objects: Sequence[models.Model], message: str) -> None:
    """Write one admin LogEntry (a change) per object, in one statement where possible."""
    if not objects:
        return
    manager = LogEntry.objects
    if hasattr(manager, "log_actions"):
        manager.log_actions(
            user_id=request.user.pk, queryset=objects, action_flag=CHANGE, change_message=message
        )
    else:  # pragma: no cover  (Django < 5.1)
        for obj in objects:
            manager.log_action(
                user_id=request.user.pk,
                content_type_id=_content_type_id(obj),
                object_id=obj.pk,
                object_repr=str(obj)[:200],
                action_flag=CHANGE,
                change_message=message,
            )


def _log_each(request: HttpRequest, entries: Sequence[tuple[models.Model, str]]) -> None:
    """Write one admin LogEntry per object with its own message: a statement per message."""
    by_message: dict[str, list[models.Model]] = {}
    for obj, message in entries:
        by_message.setdefault(message, []).append(obj)
    for message, objects in by_message.items():
        _log(request, objects, message)


def _content_type_id(obj: models.Model) -> int:  # pragma: no cover  (Django < 5.1)
    from django.contrib.contenttypes.models import ContentType

    return ContentType.objects.get_for_model(obj, for_concrete_model=False).pk


def _badge(text: Any, color: str, title: Any = "") -> str:
    return format_html(
        '<span class="cm-badge cm-badge-{}" title="{}">{}</span>', color, title or text, text
    )


def _when(value: datetime.datetime | None) -> str:
    """The time in natural words, the exact time on hover."""
    if value is None:
        return ""
    local = timezone.localtime(value) if timezone.is_aware(value) else value  # USE_TZ off
    exact = formats.date_format(local, "DATETIME_FORMAT")
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        exact,
        naturaldate(value, include_seconds=True),
    )


def _short_id(task_id: str) -> str:
    """The first 8 characters of a task id, enough to tell tasks apart at a glance."""
    return task_id if len(task_id) <= 13 else task_id[:8] + "…"


def _breakable(value: str, separator: str) -> str:
    """A text that may wrap after each ``separator`` (and only there) when space is short."""
    parts = value.split(separator)
    pieces = [part + separator for part in parts[:-1]] + parts[-1:]
    return format_html_join(mark_safe("<wbr>"), "{}", ((piece,) for piece in pieces))


def _task_name(name: str) -> str:
    """A task's name that wraps between its module and its function before anywhere else.

    The module may wrap after its dots and, only when it is still too wide, the function
    after its underscores.
    """
    module, dot, function = name.rpartition(".")
    return format_html(
        '<span class="cm-name"><span class="cm-module">{}</span><wbr>'
        '<span class="cm-function">{}</span></span>',
        _breakable(module + dot, "."),
        _breakable(function, "_"),
    )


def _pretty(value: str | None) -> str:
    """A recorded repr, pretty-printed when it is a Python literal, in a ``<pre>`` block."""
    if value is None or value == "":
        return "-"
    text = value
    with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        text = pformat(ast.literal_eval(value), width=88, sort_dicts=False)
    return format_html('<pre class="cm-pre">{}</pre>', text)


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return gettext("%(ms).1f ms") % {"ms": value * 1000}
    return gettext("%(s).3f s") % {"s": value}


def _change_url(obj: models.Model) -> str:
    opts = obj._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])


def _changelist_url(model: type[models.Model]) -> str:
    opts = model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")


class CappedPaginator(Paginator):
    """A paginator that counts at most ``cap`` rows, so a page never counts a whole table."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        object_list = self.object_list
        if not isinstance(object_list, models.QuerySet):
            return len(object_list)
        # Unordered: any index that serves the filters counts them, without a sort.
        found = object_list.order_by()[: self.cap + 1].count()
        self.capped = found > self.cap
        return min(found, self.cap)

    capped = False


class MonitorList(ChangeList):
    """The changelist of the monitor: titled after the model, with a bounded date drill-down."""

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        self.title = capfirst(self.opts.verbose_name_plural)

    @property
    def count_capped(self) -> bool:
        return getattr(self.paginator, "capped", False)

    def get_filters(self, request: HttpRequest) -> Any:
        if any("\x00" in value for values in request.GET.lists() for value in values[1]):
            # No database stores a NUL byte, and PostgreSQL refuses even to compare with one.
            raise IncorrectLookupParameters("A NUL character in the query string.")
        self._check_drilldown(request)
        filters = super().get_filters(request)
        self.remaining_lookup_params = filters[2]
        return filters

    def queryset_without(self, request: HttpRequest, parameters: list[str]) -> models.QuerySet:
        """The rows of the list, filtered and searched, but not by the filter of ``parameters``.

        What a filter counts its choices in (Django's facets do the same, but build every
        filter again, with the queries their choices cost).
        """
        queryset = self.root_queryset
        for spec in self.filter_specs:
            if spec.expected_parameters() != parameters:
                filtered = spec.queryset(request, queryset)
                if filtered is not None:
                    queryset = filtered
        remaining = self.remaining_lookup_params
        if remaining:
            if build_q_object_from_lookup_parameters is not None:
                queryset = queryset.filter(build_q_object_from_lookup_parameters(remaining))
            else:  # pragma: no cover  (Django < 5.0: one value per parameter)
                queryset = queryset.filter(**remaining)
        queryset, _duplicates = self.model_admin.get_search_results(request, queryset, self.query)
        return queryset

    def _check_drilldown(self, request: HttpRequest) -> None:
        """Refuse a date drill-down that names no real date (the admin answers ``?e=1``).

        A year, then a month, then a day: each a number, together a date between 1970 and
        9998 (the database's date arithmetic overflows near the ends of the calendar).
        """
        field = self.model_admin.date_drilldown
        if not field:
            return
        parts: dict[str, int] = {}
        for part in ("year", "month", "day"):
            value = request.GET.get(f"{field}__{part}")
            if value is None:
                continue
            try:
                parts[part] = int(value)
            except (TypeError, ValueError):
                raise IncorrectLookupParameters(f"{field}__{part}={value!r}") from None
        if not parts:
            return
        if ("day" in parts and "month" not in parts) or "year" not in parts:
            raise IncorrectLookupParameters("A day needs a month, and a month a year.")
        try:
            datetime.date(parts["year"], parts.get("month", 1), parts.get("day", 1))
        except (ValueError, OverflowError) as exc:
            raise IncorrectLookupParameters(str(exc)) from None
        if not 1970 <= parts["year"] <= 9998:
            raise IncorrectLookupParameters(f"The year {parts['year']} is out of range.")

    def date_bounds(self, field: str, year: str | None, month: str | None) -> tuple[Any, Any]:
        """The first and the last date of the table's rows, in the chosen year or month.

        Read from the table, not from the filtered list: each is one step into the index on
        the date whatever the filters and the search, where the first row of a filtered list
        can take sorting every row it matches (and SQLite's ``MIN`` under a filter reads
        every row).
        """
        dates = self.root_queryset.order_by().values_list(field, flat=True)
        if year:
            start = datetime.datetime(int(year), int(month or 1), 1)
            if month:
                end = (start + datetime.timedelta(days=31)).replace(day=1)
            else:
                end = start.replace(year=start.year + 1)
            if settings.USE_TZ:
                start, end = timezone.make_aware(start), timezone.make_aware(end)
            dates = dates.filter(**{f"{field}__gte": start, f"{field}__lt": end})
        return dates.order_by(field).first(), dates.order_by(f"-{field}").first()

    def date_choices(self) -> dict[str, Any]:
        """The date drill-down, built from the first and last date only.

        Django's own ``date_hierarchy`` runs ``SELECT DISTINCT`` over the dates of every
        row; this one reads the first and the last date (see :meth:`date_bounds`) and
        offers every year, month or day in between.
        """
        field = self.model_admin.date_drilldown
        if not field:
            return {"show": False}
        params = {part: self.params.get(f"{field}__{part}") for part in ("year", "month", "day")}
        generic = f"{field}__"

        def link(year=None, month=None, day=None) -> str:
            values = {"year": year, "month": month, "day": day}
            new = {f"{field}__{k}": v for k, v in values.items() if v is not None}
            return self.get_query_string(new, [generic])

        year, month, day = params["year"], params["month"], params["day"]
        if year and month and day:
            date = datetime.date(int(year), int(month), int(day))
            return {
                "show": True,
                "back": {
                    "link": link(year, month),
                    "title": capfirst(formats.date_format(date, "YEAR_MONTH_FORMAT")),
                },
                "choices": [{"title": capfirst(formats.date_format(date, "MONTH_DAY_FORMAT"))}],
            }
        first, last = self.date_bounds(field, year, month)
        if first is None or last is None:
            return {"show": False}
        if timezone.is_aware(first):
            first, last = timezone.localtime(first), timezone.localtime(last)
        first_d, last_d = first.date(), last.date()
        if year and month:
            year, month = int(year), int(month)
            days = [
                first_d + datetime.timedelta(days=n)
                for n in range((last_d - first_d).days + 1)
                if (first_d + datetime.timedelta(days=n)).month == month
            ]
            return {
                "show": True,
                "back": {"link": link(year), "title": str(year)},
                "choices": [
                    {
                        "link": link(year, month, d.day),
                        "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT")),
                    }
                    for d in days
                ],
            }
        if year:
            year = int(year)
            months = range(first_d.month, last_d.month + 1) if first_d.year == last_d.year else []
            return {
                "show": True,
                "back": {"link": link(), "title": gettext("All dates")},
                "choices": [
                    {
                        "link": link(year, m),
                        "title": capfirst(
                            formats.date_format(datetime.date(year, m, 1), "YEAR_MONTH_FORMAT")
                        ),
                    }
                    for m in months
                ],
            }
        return {
            "show": True,
            "back": None,
            "choices": [
                {"link": link(y), "title": str(y)} for y in range(first_d.year, last_d.year + 1)
            ],
        }


class ModelMonitor(admin.ModelAdmin):
    """Base of the monitor's admins: read-only, no counting of whole tables."""

    #: The Celery app the control actions use; ``None`` means the current app.
    celery_app = None
    #: The date field of the bounded date drill-down (see :meth:`MonitorList.date_choices`).
    date_drilldown: str | None = None

    show_full_result_count = False
    paginator = CappedPaginator
    list_per_page = 50
    list_max_show_all = 200
    actions_selection_counter = True

    class Media:
        css = {"all": ("django_celery_monitor/style.css",)}

    if hasattr(admin, "ShowFacets"):
        show_facets = admin.ShowFacets.NEVER

    def get_celery_app(self):
        return get_celery_app(self.celery_app)

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        # Django before 5.0 lets an id too large for the database's integers raise.
        try:
            return super().get_object(request, object_id, from_field)
        except OverflowError:
            return None

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return MonitorList

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _has_perm(self, request: HttpRequest, codename: str) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def _control(self, request: HttpRequest, call, *args: Any, **kwargs: Any) -> Any:
        """Run a control call; on a broker failure, tell the user and return None."""
        try:
            return call(*args, app=self.get_celery_app(), **kwargs)
        except control.ControlError as exc:
            self.message_user(
                request,
                gettext("Could not reach the message broker: nothing was sent (%(error)s).")
                % {"error": exc.__cause__ or exc},
                messages.ERROR,
            )
            return None


def values_present(queryset: models.QuerySet, field: str, limit: int) -> list[str]:
    """The distinct values of ``field`` in the table of ``queryset``, in order, at most ``limit``.

    A loose index scan: each step asks the index on ``field`` for the next value after the
    one before (``MIN(field) WHERE field > ...``), so the cost is one index descent per value
    whatever the number of rows, where ``SELECT DISTINCT`` would read every row. NULL is
    left out.
    """
    connection = connections[queryset.db]
    table = connection.ops.quote_name(queryset.model._meta.db_table)
    column = connection.ops.quote_name(queryset.model._meta.get_field(field).column)
    sql = (
        f"WITH RECURSIVE present (value, n) AS ("
        f" SELECT MIN({column}), 1 FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT MIN(t.{column}) FROM {table} t WHERE t.{column} > present.value),"
        f" present.n + 1 FROM present WHERE present.value IS NOT NULL AND present.n < %s"
        f") SELECT value FROM present WHERE value IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [limit])
        return [value for (value,) in cursor.fetchall()]


def states_present(queryset: models.QuerySet, limit: int) -> list[str]:
    """The distinct states of the table of ``queryset``, at most ``limit`` of them."""
    return values_present(queryset, "state", limit)


def _after_prefix(prefix: str) -> str | None:
    """The least string greater than every string that starts with ``prefix``.

    None when there is none (the prefix is made of the last code point only).
    """
    while prefix:
        following = ord(prefix[-1]) + 1
        if 0xD800 <= following <= 0xDFFF:  # surrogates are no characters of UTF-8
            following = 0xE000
        if following <= sys.maxunicode:
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


def prefix_q(field: str, prefix: str, vendor: str) -> models.Q:
    """The rows whose ``field`` starts with ``prefix``, in a form an index on it serves.

    PostgreSQL: ``LIKE 'prefix%'``, served by the ``varchar_pattern_ops`` index Django adds
    to unique and indexed character columns. SQLite: a range, ``field >= prefix AND field <
    prefix_next``, which its default (binary) collation makes an exact, case-sensitive
    prefix match (its ``LIKE`` ignores ASCII case, and then uses no index). Others (MySQL,
    MariaDB): their ``LIKE``, which their indexes serve, with their collation's case rules.
    """
    if vendor == "postgresql":
        return models.Q(**{f"{field}__startswith": prefix})
    if vendor == "sqlite":
        q = models.Q(**{f"{field}__gte": prefix})
        following = _after_prefix(prefix)
        if following is not None:
            q &= models.Q(**{f"{field}__lt": following})
        return q
    return models.Q(**{f"{field}__istartswith": prefix})


def hostnames_starting(workers: models.QuerySet, term: str, limit: int) -> list[int] | None:
    """The keys of the workers whose hostname starts with ``term``, whatever the case.

    Compared here, not by the database, whose comparison of hostnames may heed the case (on
    MySQL and MariaDB they are compared byte for byte). None when there are more than
    ``limit`` workers to compare.
    """
    rows = list(workers.order_by().values_list("pk", "hostname")[: limit + 1])
    if len(rows) > limit:
        return None
    folded = term.casefold()
    return [pk for pk, hostname in rows if hostname.casefold().startswith(folded)]


def search_terms(search_term: str) -> list[str]:
    """The words of a search, quoted phrases kept whole (as Django's admin splits them)."""
    terms = []
    for bit in smart_split(search_term):
        if bit.startswith(('"', "'")) and bit[0] == bit[-1]:
            bit = unescape_string_literal(bit)
        if bit:
            terms.append(bit)
    return terms


def capped_counts(
    queryset: models.QuerySet, field: str, values: Sequence[str], cap: int
) -> dict[str, int]:
    """How many rows of ``queryset`` have each of ``values`` in ``field``, up to ``cap + 1``.

    One statement of one capped subquery per value (``SELECT COUNT(*) FROM (... WHERE
    field = value LIMIT cap + 1)``): each reads at most ``cap + 1`` entries of the index on
    ``field`` whatever the size of the table, where one ``GROUP BY`` would read every row
    the other filters let through.
    """
    counts = dict.fromkeys(values, 0)
    db = queryset.db
    base = queryset.order_by().values_list("pk")
    counted, parts, params = [], [], []
    for value in values:
        subquery = base.filter(**{field: value})[: cap + 1]
        try:
            sql, subquery_params = subquery.query.get_compiler(using=db).as_sql()
        except EmptyResultSet:  # a filter that matches nothing (queryset.none())
            continue
        parts.append(f"(SELECT COUNT(*) FROM ({sql}) cm_count_{len(parts)})")
        params.extend(subquery_params)
        counted.append(value)
    if parts:
        with connections[db].cursor() as cursor:
            cursor.execute("SELECT " + ", ".join(parts), params)
            counts.update(zip(counted, cursor.fetchone(), strict=True))
    return counts


class StateFilter(admin.SimpleListFilter):
    """Filter by task state, with how many tasks each state has.

    Offers Celery's states and the custom states (PROGRESS...) found in the table. The
    counts follow the other filters and the search, and each stops at :attr:`count_cap`.
    """

    title = _("state")
    parameter_name = "state"
    #: The most tasks counted per state; above, the filter shows "1,000+".
    count_cap = 1000
    #: The most states outside Celery's own the filter offers.
    max_custom_states = 20

    def __init__(self, request, params, model, model_admin) -> None:
        self.request = request  # kept by Django >= 5.0 too; not by 4.2
        super().__init__(request, params, model, model_admin)

    def lookups(self, request, model_admin):
        known = set(ALL_STATES)
        limit = len(known) + self.max_custom_states
        present = states_present(model_admin.get_queryset(request), limit)
        custom = [state for state in present if state not in known][: self.max_custom_states]
        value = self.value()
        if value and value not in known and value not in custom:
            custom.append(value)
        return [(state, state) for state in sorted(known.union(custom))]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(state=self.value())
        return queryset

    def counts(self, changelist: MonitorList) -> dict[str, int]:
        """How many tasks of each state the list would show, each up to ``count_cap + 1``."""
        queryset = changelist.queryset_without(self.request, self.expected_parameters())
        states_ = [state for state, _title in self.lookup_choices]
        return capped_counts(queryset, "state", states_, self.count_cap)

    def choices(self, changelist):
        counts = self.counts(changelist)
        choices = super().choices(changelist)
        yield next(choices)  # "All"
        for (state, _title), choice in zip(self.lookup_choices, choices, strict=True):
            count = counts[state]
            if count > self.count_cap:
                shown = formats.number_format(self.count_cap, force_grouping=True) + "+"
            else:
                shown = formats.number_format(count, force_grouping=True)
            # A state without tasks stays a link (the list is then empty), greyed out.
            choice["display"] = format_html(
                '<span class="{}">{} <span class="cm-count">({})</span></span>',
                "cm-state-choice" if count else "cm-state-choice cm-state-none",
                choice["display"],
                shown,
            )
            yield choice


class WorkerFilter(admin.SimpleListFilter):
    """Filter by worker, offering the workers seen last (a bounded query)."""

    title = _("worker")
    parameter_name = "worker"
    limit = 50

    def worker_pk(self) -> int | None:
        """The chosen worker's primary key, or None when the value cannot be one."""
        value = self.value() or ""
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            return None
        return int(value)

    def lookups(self, request, model_admin):
        workers = list(WorkerState.objects.values_list("pk", "hostname")[: self.limit])
        pk = self.worker_pk()
        if pk is not None and all(known != pk for known, _name in workers):
            workers += list(WorkerState.objects.filter(pk=pk).values_list("pk", "hostname"))
        return [(str(pk), hostname) for pk, hostname in workers]

    def queryset(self, request, queryset):
        if self.value():
            pk = self.worker_pk()
            if pk is None:
                return queryset.none()
            return queryset.filter(worker_id=pk)
        return queryset


class LostFilter(admin.SimpleListFilter):
    """Tasks whose worker stopped while they were unfinished (served by the lost index)."""

    title = _("lost")
    parameter_name = "lost"

    def lookups(self, request, model_admin):
        return [("1", _("Lost: the worker stopped")), ("0", _("Not lost"))]

    def queryset(self, request, queryset):
        if self.value() in ("0", "1"):
            return queryset.filter(lost=self.value() == "1")
        return queryset


class TaskNameFilter(admin.SimpleListFilter):
    """Filter by task name, offering the names of the latest tasks (a bounded query).

    Names not seen lately are reached by searching for them.
    """

    title = _("task name")
    parameter_name = "name"
    sample = 2000

    def lookups(self, request, model_admin):
        latest = TaskState.objects.order_by("-tstamp").values_list("name", flat=True)
        names = {name for name in latest[: self.sample] if name}
        if self.value():
            names.add(self.value())
        return [(name, name) for name in sorted(names)]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(name=self.value())
        return queryset


class RateLimitForm(forms.Form):
    """The confirmation form of the rate limit action."""

    rate_limit = forms.CharField(
        label=_("Rate limit"),
        max_length=32,
        help_text=_(
            "Tasks per second, or per minute or hour: 10, 10/s, 100/m, 1000/h. "
            "0 removes the limit."
        ),
    )

    def clean_rate_limit(self) -> str:
        try:
            return control.parse_rate(self.cleaned_data["rate_limit"])
        except ValueError:
            raise forms.ValidationError(
                _("Enter a number, optionally followed by /s, /m or /h."), code="invalid"
            ) from None


@admin.register(TaskState)
class TaskMonitor(ModelMonitor):
    """Tasks: what ran where, when, with what, and how it ended."""

    date_drilldown = "tstamp"
    # What a user scans for, in a list that fits a 1280 px window with the admin's navigation
    # sidebar and the filters open (about 630 px for the table): the name with its
    # arguments below it, and the time with the runtime below it. The ETA, the expiry, the
    # retries and the arguments in full are on the task's page.
    list_display = (
        "state_badge",
        "task_id_display",
        "task_display",
        "when",
        "worker_link",
    )
    list_display_links = ("task_id_display",)
    list_filter = (
        StateFilter,
        LostFilter,
        WorkerFilter,
        TaskNameFilter,
        ("tstamp", admin.DateFieldListFilter),
    )
    #: What the search matches; :meth:`get_search_results` serves these with indexes.
    search_fields = ("^task_id", "^name", "^worker__hostname")
    search_help_text = _(
        "A task id or its beginning, the beginning of a task name, or the beginning of a "
        "worker hostname."
    )
    ordering = ("-tstamp",)
    # Each served by an index; sorting millions of rows by runtime or hostname is not.
    sortable_by = ("state_badge", "task_display", "when")
    list_select_related = ("worker",)
    actions = [
        "revoke_tasks",
        "terminate_tasks",
        "kill_tasks",
        "rate_limit_tasks",
        "retry_tasks",
    ]
    change_list_template = "admin/django_celery_monitor/change_list.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "state_badge",
                    "note",
                    "task_id",
                    "name",
                    "worker_link",
                    "retries",
                    "eta",
                    "expires",
                    "tstamp",
                )
            },
        ),
        (_("Timeline"), {"fields": ("timeline",)}),
        (_("Arguments"), {"fields": ("args_pretty", "kwargs_pretty")}),
        (_("Outcome"), {"fields": ("result_pretty", "exception_pretty", "traceback_pretty")}),
        (_("Workflow"), {"fields": ("parent_link", "root_link", "children_links")}),
    )
    readonly_fields = tuple(field for _title, options in fieldsets for field in options["fields"])

    def get_queryset(self, request):
        # Rows the expiry has hidden are on their way out (the next purge deletes them).
        return super().get_queryset(request).filter(hidden=False).select_related("worker")

    # -- search

    def get_search_results(self, request, queryset, search_term):
        """The tasks each word of the search matches, found with indexes only.

        A word matches a task whose id starts with it (as typed, or in lower case: Celery's
        ids are lower-case UUIDs), whose name starts with it, or whose worker's hostname
        starts with it (both whatever the case). The names and the workers are looked up
        first (a loose index scan of the names; the small workers' table), so the tasks are
        found by the indexes on their id, name and worker, where Django's case-insensitive
        lookups across a join would read every row.
        """
        fields = tuple(self.get_search_fields(request))
        if fields != TaskMonitor.search_fields or not search_term:
            return super().get_search_results(request, queryset, search_term)
        # The list and its counts search alike: the words are looked up once a request.
        looked_up = request.__dict__.setdefault("_celery_monitor_search", {})
        for term in search_terms(search_term):
            key = (queryset.db, term)
            if key not in looked_up:
                looked_up[key] = self._search_q(queryset.db, term)
            queryset = queryset.filter(looked_up[key])
        return queryset, False

    def _search_q(self, db: str, term: str) -> models.Q:
        """What one word of the search matches: the ways it matches nothing are left out.

        A condition on a single index lets the database read the list in date order from
        a composite index, and count the states with the index on (name or worker, state);
        an OR of conditions on several indexes makes it collect and sort every match.
        """
        vendor = connections[db].vendor
        spellings = dict.fromkeys((term, term.lower()))
        q = models.Q()
        for spelling in spellings:
            by_id = prefix_q("task_id", spelling, vendor)
            if TaskState.objects.using(db).filter(by_id).exists():
                q |= by_id
        names = values_present(TaskState.objects.using(db), "name", MAX_SEARCH_NAMES + 1)
        if len(names) > MAX_SEARCH_NAMES:
            for spelling in spellings:
                q |= prefix_q("name", spelling, vendor)
        else:
            folded = term.casefold()
            matched = [name for name in names if name.casefold().startswith(folded)]
            if matched:
                q |= models.Q(name__in=matched)
        workers = hostnames_starting(WorkerState.objects.using(db), term, MAX_SEARCH_WORKERS)
        if workers is None:
            q |= models.Q(worker__hostname__istartswith=term)
        elif workers:
            q |= models.Q(worker_id__in=workers)
        return q if q else models.Q(pk__in=[])

    # -- list columns

    @admin.display(description=_("state"), ordering="state")
    def state_badge(self, obj: TaskState) -> str:
        badge = _badge(obj.state, TASK_STATE_COLORS.get(obj.state, "gray"))
        if obj.lost:
            lost = _badge(
                gettext("lost"),
                "red",
                gettext("Its worker stopped while the task was unfinished."),
            )
            badge = format_html('{}<br><span class="cm-lost">{}</span>', badge, lost)
        if obj.note:
            label = (
                gettext("from the result backend")
                if obj.state in states.READY_STATES
                else (gettext("may be stale"))
            )
            note = _badge(label, "gray", obj.note)
            badge = format_html('{}<br><span class="cm-note">{}</span>', badge, note)
        return badge

    @admin.display(description=_("UUID"), ordering="task_id")
    def task_id_display(self, obj: TaskState) -> str:
        return format_html(
            '<code class="cm-fixedwidth cm-id" title="{}">{}</code>',
            obj.task_id,
            _short_id(obj.task_id),
        )

    @admin.display(description=_("task"), ordering="name")
    def task_display(self, obj: TaskState) -> str:
        """The name, which may wrap after its dots, and the arguments shortened below it."""
        name = _task_name(obj.name) if obj.name else "-"
        arguments = " ".join(
            value for value in (obj.args, obj.kwargs) if value and value not in ("()", "{}")
        )
        if not arguments:
            return name
        return format_html(
            '{}<code class="cm-fixedwidth cm-args" title="{}">{}</code>',
            name,
            arguments[:1000],
            arguments if len(arguments) <= ARGS_LENGTH else arguments[:ARGS_LENGTH] + "…",
        )

    @admin.display(description=_("when"), ordering="tstamp")
    def when(self, obj: TaskState) -> str:
        """When the last event happened and, below it, how long the task ran."""
        if obj.runtime is None:
            return _when(obj.tstamp)
        return format_html(
            '{}<span class="cm-runtime">{}</span>',
            _when(obj.tstamp),
            gettext("ran %(runtime)s") % {"runtime": _seconds(obj.runtime)},
        )

    @admin.display(description=_("worker"), ordering="worker__hostname")
    def worker_link(self, obj: TaskState) -> str:
        if obj.worker is None:
            return ""
        # Shortened at its start when the column is narrow: the end of a hostname is what
        # tells workers apart (celery@worker-production-eu-west-1a, -1b).
        return format_html(
            '<span class="cm-host"><a href="{}" title="{}">{}</a></span>',
            _change_url(obj.worker),
            obj.worker.hostname,
            obj.worker.hostname,
        )

    # -- detail fields

    @admin.display(description=_("timeline"))
    def timeline(self, obj: TaskState) -> str:
        finished = obj.tstamp if obj.state in states.READY_STATES else None
        steps = [
            (_("received"), obj.received),
            (_("started"), obj.started),
            (_("finished") if finished else _("last event"), finished or obj.tstamp),
        ]
        items = format_html_join(
            "",
            '<li class="{}"><span class="cm-step">{}</span> {}</li>',
            (
                ("cm-done" if value else "cm-missing", capfirst(label), _when(value) or "-")
                for label, value in steps
            ),
        )
        waited = (
            (obj.started - obj.received).total_seconds() if obj.started and obj.received else None
        )
        ran = obj.runtime
        if ran is None and finished and obj.started:
            ran = (finished - obj.started).total_seconds()
        return format_html(
            '<ol class="cm-timeline">{}</ol><p class="cm-durations">{}: {} &middot; {}: {}</p>',
            items,
            gettext("waited"),
            _seconds(waited) or "-",
            gettext("ran"),
            _seconds(ran) or "-",
        )

    @admin.display(description=_("Arguments"))
    def args_pretty(self, obj: TaskState) -> str:
        return _pretty(obj.args)

    @admin.display(description=_("Keyword arguments"))
    def kwargs_pretty(self, obj: TaskState) -> str:
        return _pretty(obj.kwargs)

    @admin.display(description=_("result"))
    def result_pretty(self, obj: TaskState) -> str:
        return _pretty(obj.result)

    @admin.display(description=_("exception"))
    def exception_pretty(self, obj: TaskState) -> str:
        return _pretty(obj.exception)

    @admin.display(description=_("traceback"))
    def traceback_pretty(self, obj: TaskState) -> str:
        if not obj.traceback:
            return "-"
        return format_html('<pre class="cm-pre cm-traceback">{}</pre>', obj.traceback)

    def _task_link(self, task_id: str | None) -> str:
        if not task_id:
            return "-"
        pk = TaskState.objects.filter(task_id=task_id).values_list("pk", flat=True).first()
        if pk is None:
            return format_html(
                '<code class="cm-fixedwidth">{}</code> <span class="cm-muted">({})</span>',
                task_id,
                gettext("not recorded"),
            )
        url = reverse("admin:celery_monitor_taskstate_change", args=[pk])
        return format_html('<a href="{}"><code class="cm-fixedwidth">{}</code></a>', url, task_id)

    @admin.display(description=_("parent task"))
    def parent_link(self, obj: TaskState) -> str:
        return self._task_link(obj.parent_id)

    @admin.display(description=_("root task"))
    def root_link(self, obj: TaskState) -> str:
        if obj.root_id == obj.task_id:
            return gettext("this task")
        return self._task_link(obj.root_id)

    @admin.display(description=_("children"))
    def children_links(self, obj: TaskState) -> str:
        children = list(
            TaskState.objects.filter(parent_id=obj.task_id)
            .exclude(pk=obj.pk)
            .order_by("tstamp")
            .values_list("pk", "task_id", "name", "state")[: MAX_CHILDREN + 1]
        )
        if not children:
            return "-"
        more = len(children) > MAX_CHILDREN
        items = format_html_join(
            "",
            '<li>{} <a href="{}"><code class="cm-fixedwidth">{}</code></a> {}</li>',
            (
                (
                    _badge(state, TASK_STATE_COLORS.get(state, "gray")),
                    reverse("admin:celery_monitor_taskstate_change", args=[pk]),
                    task_id,
                    name or "",
                )
                for pk, task_id, name, state in children[:MAX_CHILDREN]
            ),
        )
        if more:
            return format_html(
                '<ul class="cm-children">{}<li>{}</li></ul>',
                items,
                gettext("and more (the first %(n)d are shown)") % {"n": MAX_CHILDREN},
            )
        return format_html('<ul class="cm-children">{}</ul>', items)

    # -- actions

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return self._has_perm(request, "revoke_taskstate")

    def has_rate_limit_permission(self, request: HttpRequest) -> bool:
        return self._has_perm(request, "rate_limit_taskstate")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return self._has_perm(request, "retry_taskstate")

    def _selected(self, request: HttpRequest, queryset, cap: int) -> list[TaskState] | None:
        tasks = list(queryset.order_by()[: cap + 1])
        if len(tasks) > cap:
            self.message_user(
                request,
                ngettext(
                    "Select at most %(count)d task for this action.",
                    "Select at most %(count)d tasks for this action.",
                    cap,
                )
                % {"count": cap},
                messages.ERROR,
            )
            return None
        return tasks

    def _revoke(self, request, queryset, terminate=False, signal=None) -> None:
        tasks = self._selected(request, queryset, MAX_ACTION_TASKS)
        if not tasks:
            return
        # A finished task has nothing left to revoke: the workers are not asked about it.
        finished = [task for task in tasks if task.state in states.READY_STATES]
        tasks = [task for task in tasks if task.state not in states.READY_STATES]
        if tasks:
            self._revoke_unfinished(request, tasks, terminate, signal)
        if finished:
            self._report_finished(request, finished)

    def _revoke_unfinished(self, request, tasks, terminate, signal) -> None:
        replies = self._control(
            request,
            control.revoke,
            [task.task_id for task in tasks],
            terminate=terminate,
            signal=signal,
        )
        if replies is None:
            return
        if signal:
            verb = gettext("Killed") if signal == "SIGKILL" else gettext("Terminated")
        else:
            verb = gettext("Revoked")
        _log(request, tasks, f"{verb} ({signal})" if signal else verb)
        text = ngettext("%(verb)s %(count)d task", "%(verb)s %(count)d tasks", len(tasks)) % {
            "verb": verb,
            "count": len(tasks),
        }
        self._report_replies(request, text, replies)

    def _report_finished(self, request, finished: list[TaskState]) -> None:
        if len(finished) == 1:
            text = gettext("Task %(id)s already %(state)s; nothing to revoke.") % {
                "id": _short_id(finished[0].task_id),
                "state": finished[0].state,
            }
        else:
            by_state = Counter(task.state for task in finished)
            text = gettext(
                "%(count)d tasks had already finished (%(states)s); nothing to revoke for them."
            ) % {
                "count": len(finished),
                "states": ", ".join(
                    f"{count} {state}"
                    for state, count in sorted(by_state.items(), key=lambda i: (-i[1], i[0]))
                ),
            }
        self.message_user(request, text, messages.INFO)

    def _report_replies(self, request, text: str, replies: dict[str, Any]) -> None:
        answered = len(replies)
        if answered:
            text += ngettext(
                "; %(workers)d worker acknowledged.",
                "; %(workers)d workers acknowledged.",
                answered,
            ) % {"workers": answered}
            self.message_user(request, text, messages.SUCCESS)
        else:
            text += gettext("; no worker answered.")
            self.message_user(request, text, messages.WARNING)

    @admin.action(description=_("Revoke selected tasks"), permissions=["revoke"])
    def revoke_tasks(self, request, queryset):
        self._revoke(request, queryset)

    @admin.action(
        description=_("Terminate selected tasks (revoke, and SIGTERM the running ones)"),
        permissions=["revoke"],
    )
    def terminate_tasks(self, request, queryset):
        self._revoke(request, queryset, terminate=True, signal="SIGTERM")

    @admin.action(
        description=_("Kill selected tasks (revoke, and SIGKILL the running ones)"),
        permissions=["revoke"],
    )
    def kill_tasks(self, request, queryset):
        self._revoke(request, queryset, terminate=True, signal="SIGKILL")

    @admin.action(description=_("Rate limit selected task types"), permissions=["rate_limit"])
    def rate_limit_tasks(self, request, queryset) -> HttpResponse | None:
        tasks = self._selected(request, queryset, MAX_ACTION_TASKS)
        if not tasks:
            return None
        names = sorted({task.name for task in tasks if task.name})
        if not names:
            self.message_user(
                request, gettext("The selected tasks have no recorded name."), messages.ERROR
            )
            return None
        form = RateLimitForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            rate = form.cleaned_data["rate_limit"]
            reached: dict[str, Any] = {}
            for name in names:
                replies = self._control(request, control.rate_limit, name, rate)
                if replies is None:
                    return None
                reached.update(replies)
            _log_each(
                request,
                [
                    (
                        task,
                        gettext("Rate limit set to %(rate)s for %(name)s")
                        % {"rate": rate, "name": task.name},
                    )
                    for task in tasks
                    if task.name
                ],
            )
            text = ngettext(
                "Rate limit set to %(rate)s for %(count)d task type",
                "Rate limit set to %(rate)s for %(count)d task types",
                len(names),
            ) % {"rate": rate, "count": len(names)}
            self._report_replies(request, text, reached)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Rate limit task types"),
            "opts": self.opts,
            "form": form,
            "names": names,
            "tasks": tasks,
            "action": "rate_limit_tasks",
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "selected": request.POST.getlist(admin.helpers.ACTION_CHECKBOX_NAME),
            "media": self.media + forms.Media(),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "django_celery_monitor/confirm_rate_limit.html", context)

    @admin.action(description=_("Send selected tasks again"), permissions=["retry"])
    def retry_tasks(self, request, queryset):
        tasks = self._selected(request, queryset, MAX_RETRY_TASKS)
        if not tasks:
            return
        sent: list[tuple[TaskState, str]] = []
        refused: list[str] = []
        for task in tasks:
            try:
                new_id = self._control(request, control.retry, task)
            except control.RetryError as exc:
                refused.append(f"{task.task_id}: {exc}")
                continue
            if new_id is None:
                break
            sent.append((task, gettext("Sent again as %(id)s") % {"id": new_id}))
        if sent:
            _log_each(request, sent)
            self.message_user(
                request,
                ngettext("Sent %(count)d task again.", "Sent %(count)d tasks again.", len(sent))
                % {"count": len(sent)},
                messages.SUCCESS,
            )
        if refused:
            self.message_user(
                request,
                ngettext(
                    "%(count)d task could not be sent again: %(reason)s",
                    "%(count)d tasks could not be sent again; the first: %(reason)s",
                    len(refused),
                )
                % {"count": len(refused), "reason": refused[0]},
                messages.WARNING,
            )


@admin.register(WorkerState)
class WorkerMonitor(ModelMonitor):
    """Workers: who is online, what they run, and the buttons to control them."""

    list_display = (
        "hostname",
        "status_badge",
        "heartbeat",
        "sw_ver",
        "processed",
        "active",
        "loadavg_display",
    )
    search_fields = ("^hostname",)
    search_help_text = _("The beginning of a hostname, whatever its case.")
    ordering = ("-last_heartbeat",)
    actions = [
        "shutdown_nodes",
        "enable_events",
        "disable_events",
        "pool_grow",
        "pool_shrink",
        "ping_workers",
    ]
    change_list_template = "admin/django_celery_monitor/change_list.html"

    def get_search_results(self, request, queryset, search_term):
        """The workers whose hostname starts with each word, whatever the case.

        Compared as lower case by the database, since on MySQL and MariaDB hostnames are
        compared byte for byte (a worker's table is small: no index is needed).
        """
        if tuple(self.get_search_fields(request)) != ("^hostname",) or not search_term:
            return super().get_search_results(request, queryset, search_term)
        queryset = queryset.alias(hostname_lower=Lower("hostname"))
        for term in search_terms(search_term):
            queryset = queryset.filter(hostname_lower__startswith=term.lower())
        return queryset, False

    fieldsets = (
        (
            None,
            {"fields": ("hostname", "status_badge", "heartbeat", "freq", "offline", "tasks_link")},
        ),
        (_("Software"), {"fields": ("sw_ident", "sw_ver", "sw_sys")}),
        (_("Load"), {"fields": ("processed", "active", "loadavg_display", "last_update")}),
    )
    readonly_fields = tuple(field for _title, options in fieldsets for field in options["fields"])

    @admin.display(description=_("status"))
    def status_badge(self, obj: WorkerState) -> str:
        status = "ONLINE" if obj.is_alive() else "OFFLINE"
        label = gettext("online") if status == "ONLINE" else gettext("offline")
        return _badge(label, NODE_STATE_COLORS[status])

    @admin.display(description=_("last heartbeat"), ordering="last_heartbeat")
    def heartbeat(self, obj: WorkerState) -> str:
        return _when(obj.last_heartbeat) or "-"

    @admin.display(description=_("load average"))
    def loadavg_display(self, obj: WorkerState) -> str:
        if not obj.loadavg:
            return ""
        return format_html(
            '<code class="cm-fixedwidth">{}</code>',
            " ".join(
                f"{value:.2f}" if isinstance(value, float) else str(value) for value in obj.loadavg
            ),
        )

    @admin.display(description=_("tasks"))
    def tasks_link(self, obj: WorkerState) -> str:
        url = f"{_changelist_url(TaskState)}?worker={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, gettext("Tasks of this worker"))

    def has_control_permission(self, request: HttpRequest) -> bool:
        return self._has_perm(request, "control_workerstate")

    def _hostnames(self, queryset) -> list[WorkerState]:
        return list(queryset.order_by("hostname"))

    def _broadcast(self, request, queryset, call, log: str, done: Any, **kwargs) -> None:
        workers = self._hostnames(queryset)
        replies = self._control(request, call, [w.hostname for w in workers], **kwargs)
        if replies is None:
            return
        silent = gettext("%(action)s (no answer)") % {"action": log}
        _log_each(request, [(w, log if w.hostname in replies else silent) for w in workers])
        answered = [w for w in workers if w.hostname in replies]
        text = str(done % {"count": len(workers), "answered": len(answered)})
        self.message_user(request, text, messages.SUCCESS if answered else messages.WARNING)

    @admin.action(description=_("Shut down selected workers"), permissions=["control"])
    def shutdown_nodes(self, request, queryset):
        workers = self._hostnames(queryset)
        sent = self._control(request, control.shutdown, [w.hostname for w in workers])
        if sent is None:
            return
        _log(request, workers, gettext("Shut down"))
        self.message_user(
            request,
            ngettext(
                "Shutdown sent to %(count)d worker.",
                "Shutdown sent to %(count)d workers.",
                len(sent),
            )
            % {"count": len(sent)},
            messages.SUCCESS,
        )

    @admin.action(description=_("Enable events on selected workers"), permissions=["control"])
    def enable_events(self, request, queryset):
        self._broadcast(
            request,
            queryset,
            control.enable_events,
            gettext("Events enabled"),
            ngettext_lazy(
                "Events enabled: %(answered)d of %(count)d worker answered.",
                "Events enabled: %(answered)d of %(count)d workers answered.",
                "count",
            ),
        )

    @admin.action(description=_("Disable events on selected workers"), permissions=["control"])
    def disable_events(self, request, queryset):
        self._broadcast(
            request,
            queryset,
            control.disable_events,
            gettext("Events disabled"),
            ngettext_lazy(
                "Events disabled: %(answered)d of %(count)d worker answered.",
                "Events disabled: %(answered)d of %(count)d workers answered.",
                "count",
            ),
        )

    @admin.action(
        description=_("Grow the pool of selected workers by one"), permissions=["control"]
    )
    def pool_grow(self, request, queryset):
        self._broadcast(
            request,
            queryset,
            control.pool_grow,
            gettext("Pool grown by 1"),
            ngettext_lazy(
                "Pool grown: %(answered)d of %(count)d worker answered.",
                "Pool grown: %(answered)d of %(count)d workers answered.",
                "count",
            ),
        )

    @admin.action(
        description=_("Shrink the pool of selected workers by one"), permissions=["control"]
    )
    def pool_shrink(self, request, queryset):
        self._broadcast(
            request,
            queryset,
            control.pool_shrink,
            gettext("Pool shrunk by 1"),
            ngettext_lazy(
                "Pool shrunk: %(answered)d of %(count)d worker answered.",
                "Pool shrunk: %(answered)d of %(count)d workers answered.",
                "count",
            ),
        )

    @admin.action(description=_("Ping selected workers"), permissions=["control"])
    def ping_workers(self, request, queryset):
        workers = self._hostnames(queryset)
        answered = self._control(request, control.ping, [w.hostname for w in workers])
        if answered is None:
            return
        _log_each(
            request,
            [
                (
                    w,
                    gettext("Pinged (answered in %(ms).1f ms)") % {"ms": answered[w.hostname]}
                    if w.hostname in answered
                    else gettext("Pinged (no answer)"),
                )
                for w in workers
            ],
        )
        text = ngettext(
            "%(answered)d of %(count)d worker answered",
            "%(answered)d of %(count)d workers answered",
            len(workers),
        ) % {"answered": len(answered), "count": len(workers)}
        details = [
            gettext("%(host)s in %(ms).1f ms") % {"host": host, "ms": ms}
            for host, ms in sorted(answered.items(), key=lambda item: item[1])
        ]
        silent = [w.hostname for w in workers if w.hostname not in answered]
        if silent:
            details.append(gettext("no answer from %(hosts)s") % {"hosts": ", ".join(silent)})
        if details:
            text += ": " + "; ".join(details)
        self.message_user(request, text + ".", messages.SUCCESS if answered else messages.WARNING)
