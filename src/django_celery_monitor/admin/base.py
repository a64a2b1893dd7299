"""The base of the monitor's admins: read-only, bounded lists, and the control calls."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.admin.views.main import ChangeList
from django.db import models
from django.http import HttpRequest
from django.utils.translation import gettext

from .. import control
from ..conf import get_celery_app
from .lists import CappedPaginator, MonitorList


def field_filter_lookups(model: Any, path: str, spec: Any = None) -> set[str]:
    """The query-string parameters of the admin's own filter of field ``path``.

    What Django's filter for that field writes in its links (``expected_parameters()``),
    without building the filter, which reads its choices from the table.
    """
    field = get_fields_from_path(model, path)[-1]
    if spec is None:  # the filter Django picks for the field
        if field.is_relation:
            spec = admin.RelatedFieldListFilter
        elif field.flatchoices or isinstance(field, models.BooleanField):
            spec = admin.ChoicesFieldListFilter
        elif isinstance(field, models.DateField):
            spec = admin.DateFieldListFilter
        else:
            spec = admin.AllValuesFieldListFilter
    isnull = {f"{path}__isnull"}
    if issubclass(spec, admin.DateFieldListFilter):
        return {f"{path}__gte", f"{path}__lt"} | (isnull if field.null else set())
    if issubclass(spec, admin.RelatedFieldListFilter):
        return {f"{path}__{field.target_field.name}__exact"} | isnull
    if issubclass(spec, admin.AllValuesFieldListFilter):
        return {path} | isnull
    if issubclass(spec, admin.EmptyFieldListFilter):
        return {f"{path}__isempty"}
    return {f"{path}__exact"} | isnull


class ReadOnly:
    """An admin that adds, changes and deletes nothing: what it shows was recorded."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ModelMonitor(ReadOnly, admin.ModelAdmin):
    """Base of the monitor's admins: read-only, no counting of whole tables."""

    #: The Celery app the control actions use; ``None`` means the current app.
    celery_app = None
    #: The date field of the bounded date drill-down (see :meth:`MonitorList.date_choices`).
    date_drilldown: str | None = None
    #: Query-string lookups the list takes besides its filters' and its drill-down's.
    extra_lookups: frozenset[str] = frozenset()

    show_full_result_count = False
    paginator = CappedPaginator
    list_per_page = 50
    list_max_show_all = 200
    actions_selection_counter = True

    class Media:
        # live.js is loaded by the lists' template, deferred: after the admin's actions.js.
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

    def lookup_allowed(self, lookup: str, value: Any, request: Any = None) -> bool:
        """Only the lookups of the list's own filters and drill-down, from the query string.

        Django takes any lookup on a field of the model (``?args__regex=(a+)+$``,
        ``?retries__in=99999999999999999999``): each a read of every row, or a value the
        database fails on. Any other gets a 400.
        """
        return lookup in self.allowed_lookups(request)

    def allowed_lookups(self, request: Any = None) -> frozenset[str]:
        """The query-string lookups the list takes: its filters' and its drill-down's, and
        :attr:`extra_lookups`."""
        allowed: set[str] = set(self.extra_lookups)
        entries = self.get_list_filter(request) if request is not None else self.list_filter
        for entry in entries:
            if isinstance(entry, type) and issubclass(entry, admin.SimpleListFilter):
                allowed.add(entry.parameter_name)
                continue
            field, spec = entry if isinstance(entry, list | tuple) else (entry, None)
            if isinstance(field, str):
                allowed |= field_filter_lookups(self.model, field, spec)
        if self.date_drilldown:
            allowed |= {f"{self.date_drilldown}__{part}" for part in ("year", "month", "day")}
        return frozenset(allowed)

    def _has_perm(self, request: HttpRequest, codename: str) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def _online_workers(self) -> int | None:
        """How many workers are online (a command to all of them waits for as many
        replies, not the whole timeout), or None when none is known to be."""
        from ..stats import worker_totals

        return worker_totals()["online"] or None

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
