"""The dashboard: the cluster at a glance for a chosen window, inside the admin.

Its entry in the admin is the ``Dashboard`` proxy model, so it is listed in the Celery
Monitor section and the sidebar like the tasks and the workers, with the admin's header,
sidebar and theme. Its numbers come from :mod:`django_celery_monitor.stats`; its live
refresh asks ``data/`` (JSON holding the page's body, rendered and escaped on the server)
every few seconds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from celery import states
from django.contrib import admin
from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.translation import gettext, gettext_lazy

from .. import stats
from ..models import Dashboard, Queue, TaskState, WorkerState
from . import charts
from .base import ReadOnly
from .filters import NO_EXCEPTION
from .helpers import NODE_STATE_COLORS, TASK_STATE_COLORS, _seconds

#: The windows offered, with their labels.
WINDOW_LABELS = {
    "15m": gettext_lazy("15 minutes"),
    "1h": gettext_lazy("1 hour"),
    "24h": gettext_lazy("24 hours"),
    "7d": gettext_lazy("7 days"),
}
#: Seconds between two refreshes of a live page.
REFRESH_SECONDS = 5


def _change(delta_now: float | None, before: float | None) -> dict[str, Any] | None:
    """How a figure moved against the previous window: a sign and a percentage."""
    if delta_now is None or before is None:
        return None
    if before == 0:
        return {
            "direction": "up" if delta_now > 0 else "flat",
            "text": "" if not delta_now else "new",
        }
    ratio = (delta_now - before) / before
    direction = "up" if ratio > 0.005 else "down" if ratio < -0.005 else "flat"
    return {"direction": direction, "text": f"{ratio:+.0%}"}


#: The units a throughput is shown in, each with its minutes; the first in which the
#: larger of the two windows' rates reaches 1 is used.
RATE_UNITS = (
    (1, gettext_lazy("%(rate)s tasks/min")),
    (60, gettext_lazy("%(rate)s tasks/h")),
    (1440, gettext_lazy("%(rate)s tasks/day")),
)


def _rates(*per_minute: float) -> list[str]:
    """The throughputs (tasks a minute), in one unit that shows the larger of them as 1 or
    more: 150 tasks in a week are 21.4 tasks/day, not 0.0 tasks/min."""
    top = max(per_minute, default=0.0)
    units = [unit for unit in RATE_UNITS if top * unit[0] >= 1]
    minutes, words = units[0] if units else RATE_UNITS[-1 if top else 0]
    # number_format cuts the digits off (2.99 would show 2.9): round first.
    return [
        str(words) % {"rate": formats.number_format(round(rate * minutes, 1), 1)}
        for rate in per_minute
    ]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


class WindowPage(ReadOnly, admin.ModelAdmin):
    """A page of the monitor for a chosen window, with its JSON for the live refresh.

    The entry of a proxy model: its changelist is the page (``template`` around
    ``body_template``), and ``data/`` answers ``{"window", "html", ...}`` with the body
    alone. Subclasses give the title, the permissions that let a user see it, and
    :meth:`body_context`.
    """

    page_title = ""
    body_template = ""
    #: Any of these permissions lets a user see the page.
    view_permissions: tuple[str, ...] = ()

    class Media:
        css = {"all": ("django_celery_monitor/style.css",)}
        js = ("django_celery_monitor/live.js",)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        user = request.user
        return user.is_active and any(user.has_perm(perm) for perm in self.view_permissions)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "data/",
                self.admin_site.admin_view(self.data_view),
                name="{}_{}_data".format(*info),
            ),
            path(
                "",
                self.admin_site.admin_view(self.changelist_view),
                name="{}_{}_changelist".format(*info),
            ),
        ]

    def _window(self, request: HttpRequest) -> str:
        window = request.GET.get("window", stats.DEFAULT_WINDOW)
        return window if window in stats.WINDOWS else stats.DEFAULT_WINDOW

    def body_context(self, request: HttpRequest, window: str) -> dict[str, Any]:
        raise NotImplementedError

    def data_extra(self, body: dict[str, Any]) -> dict[str, Any]:
        """What the live refresh's JSON carries besides the body."""
        return {}

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        window = self._window(request)
        context = {
            **self.admin_site.each_context(request),
            **self.body_context(request, window),
            "title": self.page_title,
            "opts": self.opts,
            "media": self.media,
            "body_template": self.body_template,
            "body_id": f"cm-{self.opts.model_name}-body",
            "windows": [
                {"key": key, "label": label, "selected": key == window}
                for key, label in WINDOW_LABELS.items()
            ],
            "data_url": reverse(
                admin_urlname(self.opts, "data"), current_app=self.admin_site.name
            ),
            "refresh_seconds": REFRESH_SECONDS,
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/django_celery_monitor/window_page.html", context)

    def data_view(self, request: HttpRequest) -> HttpResponse:
        """The page's body for the live refresh, as JSON."""
        if not self.has_view_permission(request):
            return JsonResponse({"error": "permission denied"}, status=403)
        window = self._window(request)
        body = self.body_context(request, window)
        html = render_to_string(self.body_template, body, request=request)
        response = JsonResponse({"window": window, "html": html, **self.data_extra(body)})
        response["Cache-Control"] = "no-store"
        return response


@admin.register(Dashboard)
class DashboardMonitor(WindowPage):
    """The dashboard page: whoever may view the tasks may view it."""

    page_title = gettext_lazy("Dashboard")
    body_template = "admin/django_celery_monitor/dashboard_body.html"
    view_permissions = ("celery_monitor.view_dashboard", "celery_monitor.view_taskstate")

    def data_extra(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"monitor_ok": body["health"]["ok"]}

    # -- the page's content ----------------------------------------------------------------

    def body_context(self, request: HttpRequest, window: str) -> dict[str, Any]:
        data = stats.dashboard(window)
        current_app = self.admin_site.name
        tasks_url = reverse(admin_urlname(TaskState._meta, "changelist"), current_app=current_app)
        workers_url = reverse(
            admin_urlname(WorkerState._meta, "changelist"), current_app=current_app
        )
        start, end = data["start"], data["end"]

        def tasks_link(**params: Any) -> str:
            query = {"tstamp__gte": start.isoformat(), "tstamp__lt": end.isoformat(), **params}
            return f"{tasks_url}?{urlencode(query)}"

        totals, previous = data["totals"]["current"], data["totals"]["previous"]

        def moved(count: float, before: float) -> dict[str, Any] | None:
            # The window in progress against the whole one before, by their rates.
            return _change(count / totals["seconds"], before / previous["seconds"])

        state_cards = []
        for state in (*stats.FINISHED, *stats.UNFINISHED):
            count = totals["states"].get(state, 0)
            before = previous["states"].get(state, 0)
            if not count and not before and state not in stats.FINISHED:
                continue
            state_cards.append(
                {
                    "state": state,
                    "color": TASK_STATE_COLORS.get(state, "gray"),
                    "count": count,
                    "previous": before,
                    "change": moved(count, before),
                    "bad_when_up": state in (states.FAILURE, states.REVOKED, states.RETRY),
                    "url": tasks_link(state=state),
                }
            )
        rates = _rates(totals["throughput_per_minute"], previous["throughput_per_minute"])
        summary = [
            {
                "label": gettext("Throughput"),
                "value": rates[0],
                "previous": rates[1],
                "change": _change(
                    totals["throughput_per_minute"], previous["throughput_per_minute"]
                ),
            },
            {
                "label": gettext("Failure rate"),
                "value": _percent(totals["failure_rate"]),
                "previous": _percent(previous["failure_rate"]),
                "change": _change(totals["failure_rate"], previous["failure_rate"]),
                "bad_when_up": True,
            },
            {
                "label": gettext("Retried"),
                "value": formats.number_format(totals["retried"], force_grouping=True),
                "previous": formats.number_format(previous["retried"], force_grouping=True),
                "change": moved(totals["retried"], previous["retried"]),
                "bad_when_up": True,
            },
        ]
        names = []
        for entry in data["task_names"]:
            named = {"name": entry["name"]} if entry["name"] else {"unnamed": "1"}
            names.append(
                {
                    **entry,
                    "url": tasks_link(**named),
                    "failed_url": tasks_link(**named, state="FAILURE"),
                    "failure_rate_text": _percent(entry["failure_rate"]),
                    "runtime_p50": _seconds(entry["runtime"]["p50"]),
                    "runtime_p95": _seconds(entry["runtime"]["p95"]),
                    "runtime_max": _seconds(entry["runtime"]["max"]),
                    "wait_p50": _seconds(entry["wait"]["p50"]),
                    "wait_p95": _seconds(entry["wait"]["p95"]),
                }
            )
        examples = dict(
            TaskState.objects.filter(
                task_id__in=[f["latest_task_id"] for f in data["failure_types"]]
            ).values_list("task_id", "pk")
        )
        failures = []
        for failure in data["failure_types"]:
            pk = examples.get(failure["latest_task_id"])
            failures.append(
                {
                    **failure,
                    "example_url": (
                        reverse(
                            admin_urlname(TaskState._meta, "change"),
                            args=[pk],
                            current_app=current_app,
                        )
                        if pk is not None
                        else None
                    ),
                    "url": tasks_link(
                        state="FAILURE",
                        exception=failure["exception_type"] or NO_EXCEPTION,
                    ),
                }
            )
        workers = [
            {
                **worker,
                "color": NODE_STATE_COLORS["ONLINE" if worker["online"] else "OFFLINE"],
                "url": reverse(
                    admin_urlname(WorkerState._meta, "change"),
                    args=[worker["id"]],
                    current_app=current_app,
                ),
                "tasks_url": f"{tasks_url}?worker={worker['id']}",
                "loadavg_text": " ".join(
                    f"{value:.2f}" if isinstance(value, float) else str(value)
                    for value in (worker["loadavg"] or [])
                ),
            }
            for worker in data["workers"]
        ]
        stuck = [
            {
                **task,
                "url": reverse(
                    admin_urlname(TaskState._meta, "change"),
                    args=[task["id"]],
                    current_app=current_app,
                ),
                "color": TASK_STATE_COLORS.get(task["state"], "gray"),
            }
            for task in data["stuck"]["tasks"]
        ]
        health = data["cameras"]
        now = timezone.now()
        latest = health["cameras"][0] if health["cameras"] else None
        threshold = data["stuck"]["threshold"]
        return {
            "window": window,
            "window_label": WINDOW_LABELS[window],
            "start": start,
            "end": end,
            "generated": now,
            "state_cards": state_cards,
            "summary": summary,
            "count_chart": charts.count_chart(data["series"], data["interval"]),
            "runtime_chart": charts.runtime_chart(data["series"], data["interval"]),
            "count_legend": charts.legend(
                [
                    ("cm-bar-ok", gettext("succeeded")),
                    ("cm-bar-fail", gettext("failed")),
                    ("cm-bar-retry", gettext("retried")),
                ]
            ),
            "runtime_legend": charts.legend(
                [("cm-line-p50", gettext("p50")), ("cm-line-p95", gettext("p95"))]
            ),
            "interval_text": _interval_text(data["interval"]),
            "names": names,
            "failures": failures,
            "workers": workers,
            "workers_url": workers_url,
            "workers_online": data["worker_totals"]["online"],
            "workers_total": data["worker_totals"]["total"],
            "stuck": stuck,
            "stuck_after": _interval_text(int(threshold.total_seconds())) if threshold else None,
            "health": health,
            "camera": latest,
            "cameras": health["cameras"],
            "events_missed": data["worker_totals"]["events_missed"],
            "queues": data["queues"],
            "queues_url": reverse(
                admin_urlname(Queue._meta, "changelist"), current_app=current_app
            ),
        }


def _interval_text(seconds: int) -> str:
    delta = timedelta(seconds=seconds)
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return gettext("%(n)d h") % {"n": hours}
    if seconds % 60 == 0:
        return gettext("%(n)d min") % {"n": delta.seconds // 60 + delta.days * 1440}
    return gettext("%(n)d s") % {"n": seconds}
