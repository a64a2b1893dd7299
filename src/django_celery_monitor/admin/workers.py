"""The admin of workers: the list, the worker's page, and the control actions.

The worker's page asks the worker itself (Celery's ``inspect``) what it runs, consumes and
knows when it is opened (made ready for the page by :mod:`.worker_live`), and has the forms
of the remote controls that act on one worker (:mod:`.worker_forms`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import Promise
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext, ngettext_lazy
from django.utils.translation import gettext_lazy as _

from .. import control
from ..models import TaskState, WorkerState
from .base import ModelMonitor
from .helpers import (
    MAX_ACTION_TASKS,
    MAX_ACTION_WORKERS,
    NODE_STATE_COLORS,
    _badge,
    _changelist_url,
    _log,
    _log_each,
    _refusal_text,
    _refusals,
    _reply_text,
    _timeout,
    _when,
)
from .queries import TooManyWords, search_terms
from .worker_forms import CONTROL_FORMS, CONTROL_GROUPS, RevokeWaitingForm, WorkerControlForm
from .worker_live import Live

#: The worker actions that differ only in the control call they broadcast and what they say:
#: the action's name, its description, the name of the function of ``control`` it calls
#: (looked up when the action runs), the entry in each worker's history, and the message.
BROADCAST_ACTIONS: tuple[tuple[str, Promise, str, Promise, Promise], ...] = (
    (
        "enable_events",
        _("Enable events on selected workers"),
        "enable_events",
        _("Events enabled"),
        ngettext_lazy(
            "Events enabled: %(answered)d of %(count)d worker answered.",
            "Events enabled: %(answered)d of %(count)d workers answered.",
            "count",
        ),
    ),
    (
        "disable_events",
        _("Disable events on selected workers"),
        "disable_events",
        _("Events disabled"),
        ngettext_lazy(
            "Events disabled: %(answered)d of %(count)d worker answered.",
            "Events disabled: %(answered)d of %(count)d workers answered.",
            "count",
        ),
    ),
    (
        "pool_grow",
        _("Grow the pool of selected workers by one"),
        "pool_grow",
        _("Pool grown by 1"),
        ngettext_lazy(
            "Pool grown: %(answered)d of %(count)d worker answered.",
            "Pool grown: %(answered)d of %(count)d workers answered.",
            "count",
        ),
    ),
    (
        "pool_shrink",
        _("Shrink the pool of selected workers by one"),
        "pool_shrink",
        _("Pool shrunk by 1"),
        ngettext_lazy(
            "Pool shrunk: %(answered)d of %(count)d worker answered.",
            "Pool shrunk: %(answered)d of %(count)d workers answered.",
            "count",
        ),
    ),
)


#: The states of a task that no worker has started yet, which "revoke by name" revokes.
WAITING_STATES = ("RECEIVED", "PENDING")


def _broadcast_action(
    name: str, description: Promise, call: str, log: Promise, done: Promise
) -> Callable[..., None]:
    """The admin action ``name``: ``control.<call>`` broadcast to the selected workers."""

    @admin.action(description=description, permissions=["control"])
    def action(self: WorkerMonitor, request: HttpRequest, queryset: QuerySet) -> None:
        self._broadcast(request, queryset, getattr(control, call), str(log), done)

    action.__name__ = name
    action.__qualname__ = f"WorkerMonitor.{name}"
    return action


def _with_broadcast_actions(cls: type[WorkerMonitor]) -> type[WorkerMonitor]:
    """Set the actions of :data:`BROADCAST_ACTIONS` on the class, before it is registered."""
    for spec in BROADCAST_ACTIONS:
        setattr(cls, spec[0], _broadcast_action(*spec))
    return cls


@admin.register(WorkerState)
@_with_broadcast_actions
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
    change_form_template = "admin/django_celery_monitor/worker_change_form.html"
    # Those that only broadcast a control call are made from BROADCAST_ACTIONS.
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
        try:
            terms = search_terms(search_term)
        except TooManyWords:
            resolved = getattr(request, "resolver_match", None)
            if getattr(resolved, "url_name", None) == "autocomplete":
                # Django's autocomplete (a task's worker) answers no error but a 500.
                return queryset.none(), False
            raise
        queryset = queryset.alias(hostname_lower=Lower("hostname"))
        for term in terms:
            queryset = queryset.filter(hostname_lower__startswith=term.lower())
        return queryset, False

    fieldsets = (
        (
            None,
            {
                "fields": (
                    "hostname",
                    "status_badge",
                    "heartbeat",
                    "heartbeat_every",
                    "signed_off",
                    "tasks_link",
                )
            },
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

    @admin.display(description=_("heartbeat every"))
    def heartbeat_every(self, obj: WorkerState) -> str:
        # ``freq``: the period the worker said it sends its heartbeats at.
        if obj.freq is None:
            return "-"
        return gettext("%(s)g s") % {"s": obj.freq}

    @admin.display(description=_("signed off"))
    def signed_off(self, obj: WorkerState) -> str:
        # ``offline``: a worker-offline event came after its last heartbeat.
        if obj.offline:
            return gettext("yes: it said it was stopping (worker-offline)")
        return gettext("no")

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
        url = f"{_changelist_url(TaskState, self.admin_site.name)}?worker={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, gettext("Tasks of this worker"))

    def has_control_permission(self, request: HttpRequest) -> bool:
        return self._has_perm(request, "control_workerstate")

    def _hostnames(self, request, queryset) -> list[WorkerState] | None:
        """The selected workers, or None (and a message) when there are too many."""
        workers = list(queryset.order_by("hostname")[: MAX_ACTION_WORKERS + 1])
        if len(workers) > MAX_ACTION_WORKERS:
            self.message_user(
                request,
                ngettext(
                    "Select at most %(count)d worker for this action.",
                    "Select at most %(count)d workers for this action.",
                    MAX_ACTION_WORKERS,
                )
                % {"count": MAX_ACTION_WORKERS},
                messages.ERROR,
            )
            return None
        return workers

    def _broadcast(self, request, queryset, call, log: str, done: Any, **kwargs) -> None:
        workers = self._hostnames(request, queryset)
        if not workers:
            return
        replies = self._control(request, call, [w.hostname for w in workers], **kwargs)
        if replies is None:
            return
        refused = dict(_refusals(replies.items()))
        silent = gettext("%(action)s (no answer)") % {"action": log}
        entries = []
        for worker in workers:
            if worker.hostname in refused:
                entry = gettext("%(action)s: refused (%(reason)s)") % {
                    "action": log,
                    "reason": refused[worker.hostname],
                }
            else:
                entry = log if worker.hostname in replies else silent
            entries.append((worker, entry))
        _log_each(request, entries)
        text = str(done % {"count": len(workers), "answered": len(replies)})
        if refused:
            text += " " + _refusal_text(list(refused.items()))
        accepted = len(replies) - len(refused)
        self.message_user(
            request, text, messages.SUCCESS if accepted and not refused else messages.WARNING
        )

    @admin.action(description=_("Shut down selected workers"), permissions=["control"])
    def shutdown_nodes(self, request, queryset):
        workers = self._hostnames(request, queryset)
        if not workers:
            return
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

    @admin.action(description=_("Ping selected workers"), permissions=["control"])
    def ping_workers(self, request, queryset):
        workers = self._hostnames(request, queryset)
        if not workers:
            return
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

    # -- the worker's page: what the worker answers, and its remote controls

    def get_urls(self) -> list:
        return [
            path(
                "<path:object_id>/control/",
                self.admin_site.admin_view(self.control_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_control",
            ),
            *super().get_urls(),
        ]

    def _control_permitted(self, request: HttpRequest, form: type[WorkerControlForm]) -> bool:
        return self._has_perm(request, form.permission)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        """The worker's page: its recorded fields, then what it answers now, then controls.

        The worker is asked here, so only its own page asks it, never the list.
        """
        if obj is not None and not add:
            context.update(self._live_context(request, obj, context.get("cm_bound_form")))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _live_context(
        self, request: HttpRequest, worker: WorkerState, bound: WorkerControlForm | None
    ) -> dict[str, Any]:
        app = self.get_celery_app()
        live: dict[str, Any] = {"asked_at": timezone.now(), "timeout": _timeout(app)}
        registered: list[str] | None = None
        try:
            answers = control.inspect(worker.hostname, app=app)
        except control.ControlError as exc:
            live["error"] = str(exc.__cause__ or exc)
        else:
            state = Live(
                worker.hostname, answers, self.admin_site.name, getattr(app, "namespace", None)
            )
            live.update(state.context())
            registered = state.registered()
        groups = []
        for title, form_classes in CONTROL_GROUPS:
            shown = [
                bound
                if bound is not None and bound.command == form_class.command
                else form_class(registered=registered)
                for form_class in form_classes
                if self._control_permitted(request, form_class)
            ]
            if shown:
                groups.append({"title": title, "forms": shown})
        return {
            "cm_live": live,
            "cm_control_groups": groups,
            "cm_control_url": reverse(
                admin_urlname(self.opts, "control"),
                args=[quote(worker.pk)],
                current_app=self.admin_site.name,
            ),
            "cm_registered": registered or [],
        }

    def control_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Run one remote control of the worker's page (a POST), then show the page again."""
        worker = self.get_object(request, unquote(object_id))
        if worker is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_permission(request, worker):
            raise PermissionDenied
        page = reverse(
            admin_urlname(self.opts, "change"),
            args=[quote(worker.pk)],
            current_app=self.admin_site.name,
        )
        if request.method != "POST":
            return HttpResponseRedirect(page)
        form_class = CONTROL_FORMS.get(request.POST.get("command", ""))
        if form_class is None:
            return HttpResponseBadRequest(gettext("Unknown command."))
        if not self._control_permitted(request, form_class):
            raise PermissionDenied
        registered = None
        if form_class.checks_task_name:
            answers = self._control(request, control.inspect, worker.hostname, ["registered"])
            if answers is None:
                return HttpResponseRedirect(page)
            replies = answers["registered"].replies
            if worker.hostname not in replies:
                # A worker that does not say what it runs would not answer the command
                # either: one wait is enough.
                self._not_answered(request, worker, form_class.title)
                return HttpResponseRedirect(f"{page}#cm-control")
            registered = list(control.parse_registered(replies[worker.hostname]))
        form = form_class(request.POST, registered=registered)
        if not form.is_valid():
            # The page again, with the form's errors, as a GET would show it.
            shown = copy.copy(request)
            shown.method = "GET"
            return self.change_view(shown, object_id, extra_context={"cm_bound_form": form})
        if isinstance(form, RevokeWaitingForm):
            self._revoke_waiting(request, worker, form.cleaned_data["task_name"])
        else:
            self._run_control(request, worker, form)
        return HttpResponseRedirect(f"{page}#cm-control")

    def _not_answered(self, request: HttpRequest, worker: WorkerState, title: Any) -> None:
        """Say and record that the worker did not say what tasks it runs, so that the
        command ``title`` was not sent."""
        timeout = _timeout(self.get_celery_app())
        _log(
            request,
            [worker],
            gettext("%(title)s: not sent (no answer in %(timeout)s s)")
            % {"title": title, "timeout": timeout},
        )
        self.message_user(
            request,
            gettext(
                "%(title)s: %(host)s did not say what tasks it runs within %(timeout)s s, "
                "so nothing was sent."
            )
            % {"title": title, "host": worker.hostname, "timeout": timeout},
            messages.WARNING,
        )

    def _run_control(
        self, request: HttpRequest, worker: WorkerState, form: WorkerControlForm
    ) -> None:
        """Send one command to the worker; say and record who answered, how fast, and what."""
        answer = self._control(
            request, getattr(control, form.call), worker.hostname, **form.arguments()
        )
        if answer is None:
            return
        words = form.words()
        host = worker.hostname
        if host not in answer.replies:
            asked = str(form.asked) % words
            _log(
                request,
                [worker],
                gettext("%(asked)s (no answer in %(timeout)s s)")
                % {"asked": asked, "timeout": _timeout(self.get_celery_app())},
            )
            self.message_user(
                request,
                gettext("%(asked)s: %(host)s did not answer in %(timeout)s s.")
                % {"asked": asked, "host": host, "timeout": _timeout(self.get_celery_app())},
                messages.WARNING,
            )
            return
        ok, text = _reply_text(answer.replies[host])
        ms = answer.ms[host]
        if ok:
            done = str(form.done) % words
            _log(
                request,
                [worker],
                gettext("%(done)s (answered in %(ms).1f ms)") % {"done": done, "ms": ms},
            )
            message = gettext("%(done)s: %(host)s answered in %(ms).1f ms: %(text)s.") % {
                "done": done,
                "host": host,
                "ms": ms,
                "text": text,
            }
            if form.caveat:
                message += " " + str(form.caveat)
            self.message_user(request, message, messages.SUCCESS)
            return
        refused = str(form.refused) % words
        _log(
            request,
            [worker],
            gettext("%(refused)s: %(text)s (answered in %(ms).1f ms)")
            % {"refused": refused, "text": text, "ms": ms},
        )
        message = gettext("%(refused)s: %(host)s refused in %(ms).1f ms: %(text)s.") % {
            "refused": refused,
            "host": host,
            "ms": ms,
            "text": text,
        }
        if form.requirement:
            message += " " + str(form.requirement)
        self.message_user(request, message, messages.ERROR)

    def _revoke_waiting(self, request: HttpRequest, worker: WorkerState, name: str) -> None:
        """Revoke the tasks of ``name`` this worker received, or no worker did, not started.

        The oldest :data:`MAX_ACTION_TASKS` of them; nothing is terminated.
        """
        waiting = list(
            TaskState.objects.filter(name=name, state__in=WAITING_STATES, hidden=False)
            .filter(Q(worker=worker) | Q(worker__isnull=True))
            .order_by("tstamp")[: MAX_ACTION_TASKS + 1]
        )
        more, tasks = len(waiting) > MAX_ACTION_TASKS, waiting[:MAX_ACTION_TASKS]
        if not tasks:
            self.message_user(
                request,
                gettext("No task of %(name)s is waiting: nothing to revoke.") % {"name": name},
                messages.INFO,
            )
            return
        expected = self._online_workers()
        answer = self._control(
            request, control.revoke_waiting, [t.task_id for t in tasks], expected=expected
        )
        if answer is None:
            return
        if not answer.replies:
            self._report_unanswered_revoke_waiting(request, worker, name, tasks, more)
            return
        done = ngettext(
            "Revoked %(count)d waiting task of %(name)s",
            "Revoked %(count)d waiting tasks of %(name)s",
            len(tasks),
        ) % {"count": len(tasks), "name": name}
        if more:
            done += gettext(" (the oldest; more are waiting)")
        if worker.hostname in answer.replies:
            log = gettext("%(done)s (answered in %(ms).1f ms)") % {
                "done": done,
                "ms": answer.ms[worker.hostname],
            }
        elif expected and len(answer.replies) >= expected and worker.is_alive():
            # As many workers answered as were online, others first: the wait ended there.
            log = ngettext(
                "%(done)s (its answer not awaited: %(count)d worker answered first)",
                "%(done)s (its answer not awaited: %(count)d workers answered first)",
                len(answer.replies),
            ) % {"done": done, "count": len(answer.replies)}
        else:
            log = gettext("%(done)s (no answer in %(timeout)s s)") % {
                "done": done,
                "timeout": _timeout(self.get_celery_app()),
            }
        _log(request, [worker], log)
        _log(request, tasks, gettext("Revoked"))
        who = "; ".join(
            gettext("%(host)s in %(ms).1f ms") % {"host": host, "ms": ms}
            for host, ms in sorted(answer.ms.items(), key=lambda item: item[1])
        )
        text = ngettext(
            "%(done)s: %(count)d worker acknowledged: %(who)s.",
            "%(done)s: %(count)d workers acknowledged: %(who)s.",
            len(answer.replies),
        ) % {"done": done, "count": len(answer.replies), "who": who}
        self.message_user(request, text, messages.SUCCESS)

    def _report_unanswered_revoke_waiting(
        self,
        request: HttpRequest,
        worker: WorkerState,
        name: str,
        tasks: list[TaskState],
        more: bool,
    ) -> None:
        """No worker acknowledged the revoke: it was sent, and nothing says it was applied."""
        timeout = _timeout(self.get_celery_app())
        sent = ngettext(
            "Revoke sent for %(count)d waiting task of %(name)s",
            "Revoke sent for %(count)d waiting tasks of %(name)s",
            len(tasks),
        ) % {"count": len(tasks), "name": name}
        if more:
            sent += gettext(" (the oldest; more are waiting)")
        _log(
            request,
            [worker],
            gettext("%(sent)s; no worker answered in %(timeout)s s")
            % {"sent": sent, "timeout": timeout},
        )
        _log(request, tasks, gettext("Revoke sent; no worker answered"))
        self.message_user(
            request,
            gettext(
                "%(sent)s, but no worker answered in %(timeout)s s: nothing says it was "
                "applied. A worker that reads it later applies it then."
            )
            % {"sent": sent, "timeout": timeout},
            messages.WARNING,
        )
