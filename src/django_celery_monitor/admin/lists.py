"""The changelist of the monitor's admins and its paginator, which never count a whole table."""

from __future__ import annotations

import datetime
from typing import Any

from django.conf import settings
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import NotRelationField, get_fields_from_path
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.core.paginator import Paginator
from django.db import models
from django.http import HttpRequest, QueryDict
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.text import capfirst
from django.utils.translation import gettext

from .queries import branch_page, value_page

try:
    from django.contrib.admin.utils import build_q_object_from_lookup_parameters
except ImportError:  # pragma: no cover  (Django < 5.0)
    build_q_object_from_lookup_parameters = None

#: The lookups of a date or time filter whose value is a date or a time ("": exact).
TIME_LOOKUPS = frozenset({"", "exact", "gt", "gte", "lt", "lte"})


def _storable(moment: Any) -> None:
    """Raise ValueError or OverflowError for a time the database cannot be given: as
    Django's ``DateTimeField`` prepares it (a naive time in the project's time zone), then
    in UTC; with ``USE_TZ = False``, one that names a time zone."""
    if not isinstance(moment, datetime.datetime):
        return
    if not settings.USE_TZ:
        if timezone.is_aware(moment):
            raise ValueError("a time with a time zone, and USE_TZ is False")
        return
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    moment.astimezone(datetime.timezone.utc)


class CappedPaginator(Paginator):
    """A paginator that counts at most ``cap`` rows, so a page never counts a whole table."""

    cap = 10_000
    #: A column of few values whose sorted pages are read a value at a time (``value_page``).
    value_field: str | None = None

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

    def page(self, number: Any) -> Any:
        """A page; of a search of several branches, read a branch at a time (``branch_page``)."""
        if not isinstance(self.object_list, models.QuerySet):
            return super().page(number)
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        rows = branch_page(self.object_list, bottom, top)
        if rows is None and self.value_field is not None:
            rows = value_page(self.object_list, self.value_field, bottom, top)
        if rows is None:
            return super().page(number)
        return self._get_page(rows, number, self)


class MonitorList(ChangeList):
    """The changelist of the monitor: titled after the model, with a bounded date drill-down."""

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        self.title = capfirst(self.opts.verbose_name_plural)

    @property
    def count_capped(self) -> bool:
        return getattr(self.paginator, "capped", False)

    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any) -> models.QuerySet:
        queryset = super().get_queryset(request, *args, **kwargs)
        self._keep_drilldown_when_cleared(request)
        return queryset

    def _keep_drilldown_when_cleared(self, request: HttpRequest) -> None:
        """Keep the drill-down's year, month and day in the link that clears the filters.

        Django puts the range they were turned into there (``tstamp__gte``, ``__lt``),
        which the date filter of the list then takes for its own: the list stayed within
        the month while neither the drill-down nor the date filter showed it.
        """
        field = self.model_admin.date_drilldown
        keys = [f"{field}__{part}" for part in ("year", "month", "day")] if field else []
        drilled = {key: request.GET[key] for key in keys if key in request.GET}
        if not drilled:
            return
        query = QueryDict(self.clear_all_filters_qs.lstrip("?"), mutable=True)
        for key in (f"{field}__gte", f"{field}__lt"):
            query.pop(key, None)
        for key, value in drilled.items():
            query[key] = value
        self.clear_all_filters_qs = "?" + query.urlencode()

    def get_ordering_field(self, field_name: Any) -> Any:
        """The field a column sorts by: none for a column not in ``sortable_by``.

        The admin offers only those columns' headers, but takes any column's place from the
        query string (``?o=5``): sorted by the worker's hostname, a list of a million tasks
        is a sort of every row.
        """
        if self.sortable_by is not None and field_name not in self.sortable_by:
            return None
        return super().get_ordering_field(field_name)

    def get_filters(self, request: HttpRequest) -> Any:
        if any("\x00" in value for values in request.GET.lists() for value in values[1]):
            # No database stores a NUL byte, and PostgreSQL refuses even to compare with one.
            raise IncorrectLookupParameters("A NUL character in the query string.")
        # Only the list's own filters and drill-down: Django would take any lookup on a
        # field of the model (``?args__regex=``), each a read of every row.
        allowed = self.model_admin.allowed_lookups(request)
        for key in self.get_filters_params():
            if key not in allowed:
                raise IncorrectLookupParameters(f"Not a filter of this list: {key}")
        self._check_drilldown(request)
        self._check_times(request)
        self._check_numbers(request)
        # Django turns its own date hierarchy's year, month and day into a range of the
        # column (in the current time zone), which the column's index serves. Left as they
        # are, a month or a day is an EXTRACT of every row: on SQLite, a Python function
        # called on each of them (a day of a million rows took seconds). Django does the
        # same for this drill-down, once the list's filters have taken their parameters.
        hierarchy, self.date_hierarchy = self.date_hierarchy, self.model_admin.date_drilldown
        try:
            filters = super().get_filters(request)
        finally:
            self.date_hierarchy = hierarchy
        self.remaining_lookup_params = filters[2]
        return filters

    def queryset_without(self, request: HttpRequest, parameters: list[str]) -> models.QuerySet:
        """The rows of the list, filtered and searched, but not by the filter of ``parameters``.

        What a filter counts its choices in (Django's facets do the same, but build every
        filter again, with the queries their choices cost). Nor by a lookup of the query
        string on the filter's field (``state__exact=``): each choice would be counted under
        it, and a count of FAILURE among the SUCCESS rows, though it finds nothing, was
        planned by PostgreSQL as a scan of the table, and compiled (JIT) for a second.
        """
        queryset = self.root_queryset
        for spec in self.filter_specs:
            if spec.expected_parameters() != parameters:
                filtered = spec.queryset(request, queryset)
                if filtered is not None:
                    queryset = filtered
        fields = {parameter.split("__")[0] for parameter in parameters}
        remaining = {
            key: value
            for key, value in self.remaining_lookup_params.items()
            if key.split("__")[0] not in fields
        }
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

    def _check_times(self, request: HttpRequest) -> None:
        """Refuse a date or time of a filter (``tstamp__gte=``, ``received__in=``,
        ``started__year=``) that the database cannot take (the admin answers ``?e=1``).

        A date near either end of the calendar, read in the project's time zone, lands
        outside it on its way to UTC; without time zones, a time that names one is refused
        by the database's driver.
        """
        for key, values in request.GET.lists():
            name, _, lookup = key.partition("__")
            if lookup not in TIME_LOOKUPS and lookup not in ("in", "year"):
                continue
            try:
                field = self.model._meta.get_field(name)
            except FieldDoesNotExist:
                continue
            if not isinstance(field, models.DateField):  # a DateTimeField is one too
                continue
            for value in values:
                try:
                    if lookup == "year":
                        if not 2 <= int(value) <= 9998:
                            raise ValueError(value)
                        continue
                    for part in value.split(",") if lookup == "in" else [value]:
                        _storable(field.to_python(part))
                except (ValidationError, ValueError, OverflowError):
                    raise IncorrectLookupParameters(f"{key}={value!r}") from None

    def _check_numbers(self, request: HttpRequest) -> None:
        """Refuse a number no integer column holds (``worker__id__exact=`` and 20 digits): a
        server error on Django before 5.0 (the admin answers ``?e=1``)."""
        for key, values in request.GET.lists():
            *path, lookup = key.split("__")
            if lookup not in ("exact", "in"):
                path.append(lookup)
            try:
                field = get_fields_from_path(self.model, "__".join(path))[-1]
            except (FieldDoesNotExist, NotRelationField):
                continue
            if not isinstance(field, models.IntegerField | models.AutoField):
                continue
            for value in values:
                for part in value.split(",") if lookup == "in" else [value]:
                    try:
                        number = int(part)
                    except ValueError:
                        raise IncorrectLookupParameters(f"{key}={value!r}") from None
                    if not -(2**63) <= number < 2**63:
                        raise IncorrectLookupParameters(f"{key}={value!r}")

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
