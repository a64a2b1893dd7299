"""The admin of tasks: the list, its search, the task's page, and the task actions."""

from __future__ import annotations

from collections import Counter
from typing import Any

from celery import states
from django import forms
from django.contrib import admin, messages
from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.db import connections, models
from django.db.models.functions import Lower
from django.db.models.lookups import StartsWith
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from .. import control
from ..models import TaskState, WorkerState
from .base import ModelMonitor, field_filter_lookups
from .export import TaskExportMixin
from .filters import (
    ExceptionTypeFilter,
    LostFilter,
    StateFilter,
    TaskNameFilter,
    UnnamedFilter,
    WorkerFilter,
)
from .helpers import (
    ARGS_LENGTH,
    MAX_ACTION_TASKS,
    MAX_CHILDREN,
    MAX_RATE_LIMIT_NAMES,
    MAX_RETRY_TASKS,
    MAX_SEARCH_NAMES,
    MAX_SEARCH_WORKERS,
    TASK_STATE_COLORS,
    RateField,
    _badge,
    _change_url,
    _log,
    _log_each,
    _pretty,
    _refusal_text,
    _refusals,
    _seconds,
    _short_id,
    _task_name,
    _timeout,
    _when,
)
from .lists import CappedPaginator
from .queries import hostnames_starting, prefix_q, search_terms, values_present, with_branches


class RateLimitForm(forms.Form):
    """The confirmation form of the rate limit action."""

    rate_limit = RateField(
        label=_("Rate limit"),
        help_text=_(
            "Tasks per second, or per minute or hour: 10, 10/s, 100/m, 1000/h. "
            "0 removes the limit."
        ),
    )


class TaskPaginator(CappedPaginator):
    """The task list's pages: sorted by state, read a state at a time."""

    value_field = "state"


@admin.register(TaskState)
class TaskMonitor(TaskExportMixin, ModelMonitor):
    """Tasks: what ran where, when, with what, and how it ended; exported as CSV or JSON lines."""

    date_drilldown = "tstamp"
    #: The parameters of django_celery_monitor 1.1.2's filters (state, name, tstamp, eta,
    #: worker), in links kept from it; its ``?name=`` is this list's task name filter's.
    extra_lookups = frozenset(
        field_filter_lookups(TaskState, "state", admin.ChoicesFieldListFilter)
        | field_filter_lookups(TaskState, "name", admin.AllValuesFieldListFilter)
        | field_filter_lookups(TaskState, "eta")
        | field_filter_lookups(TaskState, "worker")
    )
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
        UnnamedFilter,
        ExceptionTypeFilter,
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
    paginator = TaskPaginator
    actions = [
        "revoke_tasks",
        "terminate_tasks",
        "kill_tasks",
        "rate_limit_tasks",
        "retry_tasks",
    ]
    change_list_template = "admin/django_celery_monitor/change_list.html"
    # A project's own admin/celery_monitor/taskstate/change_form.html still comes first.
    change_form_template = [
        "admin/celery_monitor/taskstate/change_form.html",
        "admin/django_celery_monitor/task_change_form.html",
    ]
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
        starts with it (both whatever the case; past :data:`MAX_SEARCH_NAMES` names, a name
        as typed or in lower case, and past :data:`MAX_SEARCH_WORKERS` workers, a hostname
        with the database's own case folding: SQLite's folds ASCII letters only). The
        names and the workers are looked up
        first (a loose index scan of the names; the small workers' table), so the tasks are
        found by the indexes on their id, name and worker, where Django's case-insensitive
        lookups across a join would read every row.
        """
        fields = tuple(self.get_search_fields(request))
        if fields != TaskMonitor.search_fields or not search_term:
            return super().get_search_results(request, queryset, search_term)
        # The list and its counts search alike: the words are looked up once a request.
        looked_up = request.__dict__.setdefault("_celery_monitor_search", {})
        base, branches = queryset, []
        for term in search_terms(search_term):
            key = (queryset.db, term)
            if key not in looked_up:
                looked_up[key] = self._search_q(queryset.db, term)
            q, branches = looked_up[key]
            base, queryset = queryset, queryset.filter(q)
        # A page of the list then reads the last word's matches a branch at a time.
        return with_branches(queryset, base, branches), False

    def _search_q(self, db: str, term: str) -> tuple[models.Q, list[models.Q]]:
        """What one word of the search matches, and the same as branches an index each.

        The ways it matches nothing are left out. A condition on a single index lets the
        database read the list in date order from a composite index, and count the states
        with the index on (name or worker, state); an OR of conditions on several indexes
        makes it collect and sort every match, so the list reads such a search a branch at
        a time (each id spelling, each name, each worker).
        """
        vendor = connections[db].vendor
        spellings = dict.fromkeys((term, term.lower()))
        q, branches = models.Q(), []
        for spelling in spellings:
            by_id = prefix_q("task_id", spelling, vendor)
            if TaskState.objects.using(db).filter(by_id).exists():
                q |= by_id
                branches.append(by_id)
        names = values_present(TaskState.objects.using(db), "name", MAX_SEARCH_NAMES + 1)
        if len(names) > MAX_SEARCH_NAMES:
            for spelling in spellings:
                q |= prefix_q("name", spelling, vendor)
                branches.append(prefix_q("name", spelling, vendor))
        else:
            folded = term.casefold()
            matched = [name for name in names if name.casefold().startswith(folded)]
            if matched:
                q |= models.Q(name__in=matched)
                branches += [models.Q(name=name) for name in matched]
        workers = hostnames_starting(WorkerState.objects.using(db), term, MAX_SEARCH_WORKERS)
        if workers is None:
            # More workers than are worth comparing here (containers named anew at each
            # start leave thousands): the database finds those that match in the workers'
            # table alone. Matched across the join, the tasks' table was read whole for any
            # word (3.6 s for a task id among a million tasks and 20,000 workers). The word
            # is folded by the database as the hostnames are (SQLite folds ASCII letters
            # only); MySQL compares hostnames byte for byte, so both are lower-cased there.
            matching = WorkerState.objects.using(db).order_by()
            if vendor == "mysql":
                matching = matching.annotate(folded=Lower("hostname")).filter(
                    folded__startswith=term.lower()
                )
            else:
                matching = matching.filter(hostname__istartswith=term)
            workers = list(matching.values_list("pk", flat=True)[: MAX_SEARCH_WORKERS + 1])
            if len(workers) > MAX_SEARCH_WORKERS:
                # A word most workers start with ("celery"): the rows in date order, their
                # worker's hostname checked one by one, find a page soonest (76 ms on SQLite
                # for 20,000 workers, where the tasks of each worker's index took 2.5 s).
                if vendor == "mysql":  # hostnames compared byte for byte
                    folded = models.Q(StartsWith(Lower("worker__hostname"), term.lower()))
                else:  # SQLite: 125 ms with its LIKE (no case for ASCII), 573 with LOWER()
                    folded = models.Q(worker__hostname__istartswith=term)
                q |= folded
                branches.append(folded)
                workers = []
        if workers:
            q |= models.Q(worker_id__in=workers)
            branches += [models.Q(worker_id=worker) for worker in workers]
        return (q, branches) if q else (models.Q(pk__in=[]), [])

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
            _change_url(obj.worker, self.admin_site.name),
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
        return _earlier_attempt(obj, obj.exception, _pretty(obj.exception))

    @admin.display(description=_("traceback"))
    def traceback_pretty(self, obj: TaskState) -> str:
        if not obj.traceback:
            return "-"
        return _earlier_attempt(
            obj,
            obj.traceback,
            format_html('<pre class="cm-pre cm-traceback">{}</pre>', obj.traceback),
        )

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
        url = reverse(
            admin_urlname(TaskState._meta, "change"), args=[pk], current_app=self.admin_site.name
        )
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
        change = admin_urlname(TaskState._meta, "change")
        items = format_html_join(
            "",
            '<li>{} <a href="{}"><code class="cm-fixedwidth">{}</code></a> {}</li>',
            (
                (
                    _badge(state, TASK_STATE_COLORS.get(state, "gray")),
                    reverse(change, args=[pk], current_app=self.admin_site.name),
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

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            # The heading under the title: the task's name and id (its str() is 1.1.2's, with
            # the state padded and the eta's microseconds, which the page shows below).
            context["subtitle"] = context["cm_heading"] = _heading(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    def history_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Its title and breadcrumbs name the task as its page does, not by its str().
        response = super().history_view(request, object_id, extra_context)
        context = getattr(response, "context_data", None)
        if context and isinstance(context.get("object"), TaskState):
            obj = context["object"]
            context["object"] = _Headed(obj, _heading(obj))
            context["title"] = gettext("Change history: %s") % context["object"]
        return response

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
            expected=self._online_workers(),
        )
        if replies is None:
            return
        if replies:
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
        else:
            # Nothing says the command was applied: a worker that is away, or busy (one
            # whose full pool blocks its main loop), reads it later, or never.
            self._report_unanswered_revoke(request, tasks, signal)
        running = sum(task.state == states.STARTED for task in tasks)
        if running and not terminate:
            # Celery's revoke only keeps a task from starting.
            if len(tasks) == 1:
                text = gettext(
                    "The task had started: a revoked task that runs goes on to its end. "
                    "Terminate stops it (not in a solo or threads pool)."
                )
            else:
                text = ngettext(
                    "%(count)d of them had started: a revoked task that runs goes on to its "
                    "end. Terminate stops it (not in a solo or threads pool).",
                    "%(count)d of them had started: a revoked task that runs goes on to its "
                    "end. Terminate stops them (not in a solo or threads pool).",
                    running,
                ) % {"count": running}
            self.message_user(request, text, messages.WARNING)

    def _report_unanswered_revoke(self, request, tasks: list[TaskState], signal) -> None:
        if signal == "SIGKILL":
            command = gettext("Kill (SIGKILL)")
        elif signal:
            command = gettext("Terminate (%(signal)s)") % {"signal": signal}
        else:
            command = gettext("Revoke")
        sent = gettext("%(command)s sent; no worker answered") % {"command": command}
        _log(request, tasks, sent)
        text = ngettext(
            "%(command)s sent for %(count)d task, but no worker answered in %(timeout)s s: "
            "nothing says it was applied. A worker that reads it later applies it then.",
            "%(command)s sent for %(count)d tasks, but no worker answered in %(timeout)s s: "
            "nothing says it was applied. A worker that reads it later applies it then.",
            len(tasks),
        ) % {
            "command": command,
            "count": len(tasks),
            "timeout": _timeout(self.get_celery_app()),
        }
        self.message_user(request, text, messages.WARNING)

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

    def _report_replies(
        self, request, text: str, replies: dict[str, Any], refused: list[tuple[str, str]] = ()
    ) -> None:
        """Say how many workers acknowledged, and quote the refusals (by default those of
        ``replies``; ``refused`` gives them, of several commands)."""
        refused = list(refused) or _refusals(replies.items())
        answered = len(replies)
        if answered:
            text += ngettext(
                "; %(workers)d worker acknowledged.",
                "; %(workers)d workers acknowledged.",
                answered,
            ) % {"workers": answered}
            if refused:
                text += " " + _refusal_text(refused)
            self.message_user(request, text, messages.WARNING if refused else messages.SUCCESS)
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
        if len(names) > MAX_RATE_LIMIT_NAMES:
            self.message_user(
                request,
                gettext(
                    "The selected tasks are of %(count)d task types: select the tasks of at "
                    "most %(most)d."
                )
                % {"count": len(names), "most": MAX_RATE_LIMIT_NAMES},
                messages.ERROR,
            )
            return None
        form = RateLimitForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            rate = form.cleaned_data["rate_limit"]
            by_name = self._control(
                request, control.rate_limits, names, rate, expected=self._online_workers()
            )
            if by_name is None:
                return None
            reached: dict[str, Any] = {}
            refused: list[tuple[str, str]] = []
            entries = []
            for name, replies in by_name.items():
                reached.update(replies)
                refusals = _refusals(replies.items())
                refused += [(f"{host} ({name})", reason) for host, reason in refusals]
                if not replies:
                    entry = gettext("Rate limit set to %(rate)s for %(name)s (no answer)")
                elif len(refusals) == len(replies):
                    entry = gettext("Rate limit %(rate)s for %(name)s: refused (%(reason)s)")
                else:
                    entry = gettext("Rate limit set to %(rate)s for %(name)s")
                reason = refusals[0][1] if refusals else ""
                entries.append((name, entry % {"rate": rate, "name": name, "reason": reason}))
            logged = dict(entries)
            _log_each(request, [(task, logged[task.name]) for task in tasks if task.name])
            text = ngettext(
                "Rate limit set to %(rate)s for %(count)d task type",
                "Rate limit set to %(rate)s for %(count)d task types",
                len(names),
            ) % {"rate": rate, "count": len(names)}
            self._report_replies(request, text, reached, refused)
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
        app = self.get_celery_app()
        for task in tasks:
            try:
                new_id = control.retry(task, app=app)
            except control.RetryError as exc:
                refused.append(f"{task.task_id}: {exc}")
                continue
            except control.ControlError as exc:
                self.message_user(
                    request,
                    ngettext(
                        "Could not reach the message broker after %(sent)d task was sent "
                        "again: the other %(left)d were not sent (%(error)s).",
                        "Could not reach the message broker after %(sent)d tasks were sent "
                        "again: the other %(left)d were not sent (%(error)s).",
                        len(sent),
                    )
                    % {
                        "sent": len(sent),
                        "left": len(tasks) - len(sent) - len(refused),
                        "error": exc.__cause__ or exc,
                    }
                    if sent
                    else gettext(
                        "Could not reach the message broker: nothing was sent (%(error)s)."
                    )
                    % {"error": exc.__cause__ or exc},
                    messages.ERROR,
                )
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


class _Headed:
    """A task as a page's breadcrumbs show it: its attributes, and its heading as text."""

    def __init__(self, obj: TaskState, heading: str) -> None:
        self._obj, self._heading = obj, heading

    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)

    def __str__(self) -> str:
        return self._heading


def _heading(obj: TaskState) -> str:
    """``proj.tasks.add 5f2c9a1e-...``: how the task's page names it."""
    return f"{obj.name or gettext('UNKNOWN')} {obj.task_id}"


def _earlier_attempt(obj: TaskState, value: str | None, shown: str) -> str:
    """``shown``, said to be an earlier attempt's when the task has not failed since.

    The exception of a retry stays with the task (as Celery's own state keeps it, and as
    1.1.2 stored it): beside a later success it is how an attempt before ended, not how
    the task did.
    """
    if not value or obj.state in (states.FAILURE, states.RETRY):
        return shown
    return format_html(
        '<p class="help">{}</p>{}',
        gettext("Raised by an earlier attempt, which was retried; the task has not failed since."),
        shown,
    )
