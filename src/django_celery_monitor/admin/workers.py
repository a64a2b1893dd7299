"""The admin of workers: the list, the worker's page, and the control actions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.db.models.functions import Lower
from django.http import HttpRequest
from django.utils.functional import Promise
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext, ngettext_lazy
from django.utils.translation import gettext_lazy as _

from .. import control
from ..models import TaskState, WorkerState
from .base import ModelMonitor
from .helpers import NODE_STATE_COLORS, _badge, _changelist_url, _log, _log_each, _when
from .queries import search_terms

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
        url = f"{_changelist_url(TaskState, self.admin_site.name)}?worker={obj.pk}"
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
