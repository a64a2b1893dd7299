"""The filters of the task list: state (with counts), worker, lost, task name, no name
recorded, and the exception type of a failure (the dashboard links to it)."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.db import connections
from django.db.models import Q
from django.utils import formats
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from ..models import ALL_STATES, TaskState, WorkerState
from ..stats import MAX_TYPE, TYPE_ENDS
from .lists import MonitorList
from .queries import capped_counts, few_counts, prefix_q, states_present


class StateFilter(admin.SimpleListFilter):
    """Filter by task state, with how many tasks each state has.

    Offers Celery's states and the custom states (PROGRESS...) found in the table. The
    counts follow the other filters and the search, and each stops at :attr:`count_cap`.
    """

    title = _("state")
    parameter_name = "state"
    #: The most tasks counted per state; above, the filter shows "1,000+".
    count_cap = 1000
    #: A list of at most this many rows is counted from its rows (``few_counts``).
    few_rows = 2000
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
        few = few_counts(queryset, "state", self.few_rows)
        if few is not None:
            return {state: few.get(state, 0) for state in states_}
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
                raise IncorrectLookupParameters(f"Not a worker's key: {self.value()!r}")
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
        if self.value():
            raise IncorrectLookupParameters(f"lost is 0 or 1, not {self.value()!r}")
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


class UnnamedFilter(admin.SimpleListFilter):
    """Tasks whose name the camera never learnt (it missed their task-received event)."""

    title = _("name recorded")
    parameter_name = "unnamed"

    def lookups(self, request, model_admin):
        return [("1", _("No name recorded"))]

    def queryset(self, request, queryset):
        if self.value() == "1":
            return queryset.filter(Q(name=None) | Q(name=""))
        if self.value():
            raise IncorrectLookupParameters(f"unnamed is 1, not {self.value()!r}")
        return queryset


#: The :class:`ExceptionTypeFilter` value of the failures with no exception type recorded
#: (no type holds a space).
NO_EXCEPTION = "(none)"


class ExceptionTypeFilter(admin.SimpleListFilter):
    """Tasks whose exception is of one type (``ValueError`` for ``ValueError('boom')``).

    Offered only once given (the dashboard's failure types link to it): listing every type
    would read every failure.
    """

    title = _("exception type")
    parameter_name = "exception"

    def lookups(self, request, model_admin):
        value = self.value()
        if not value:
            return []
        return [(value, _("None recorded") if value == NO_EXCEPTION else value)]

    def queryset(self, request, queryset):
        # The tasks stats.exception_type gives this type: the text up to the first of
        # TYPE_ENDS (as typed, on SQLite too, whose LIKE ignores the case), cut.
        value = self.value()
        if not value:
            return queryset
        vendor = connections[queryset.db].vendor

        def starts(prefix: str) -> Q:
            # As typed: on SQLite a range (its LIKE ignores the case), elsewhere Django's
            # startswith (LIKE, and LIKE BINARY on MySQL, whose collations ignore the case).
            if vendor == "sqlite":
                return prefix_q("exception", prefix, vendor)
            return Q(exception__startswith=prefix)

        if value == NO_EXCEPTION:
            q = Q(exception=None) | Q(exception="")
            for end in TYPE_ENDS:
                q |= starts(end)
            return queryset.filter(q)
        if len(value) > MAX_TYPE or any(end in value for end in TYPE_ENDS):
            return queryset.none()  # no type is so
        if len(value) == MAX_TYPE:
            return queryset.filter(starts(value))
        q = Q(exception=value) & starts(value)  # equal, in the case typed too
        for end in TYPE_ENDS:
            q |= starts(value + end)
        return queryset.filter(q)
