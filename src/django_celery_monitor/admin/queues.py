"""The queues page: each broker queue's length now, its consumers, and its backlog over time.

Its entry in the admin is the ``Queue`` proxy model, listed in the Celery Monitor section
like the tasks and the workers. The samples are the camera's (see
:mod:`django_celery_monitor.queues`); this page reads them with
:func:`django_celery_monitor.stats.queues` and asks the broker nothing.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext

from .. import stats
from ..models import Queue
from . import charts
from .base import ReadOnly
from .dashboard import REFRESH_SECONDS, WINDOW_LABELS


@admin.register(Queue)
class QueueMonitor(ReadOnly, admin.ModelAdmin):
    """The queues page, and its JSON for the live refresh."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Whoever may view the tasks may view the queues."""
        user = request.user
        return user.is_active and (
            user.has_perm("celery_monitor.view_queue")
            or user.has_perm("celery_monitor.view_queuesample")
            or user.has_perm("celery_monitor.view_taskstate")
        )

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

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        window = self._window(request)
        context = {
            **self.admin_site.each_context(request),
            **self.body_context(window),
            "title": gettext("Queues"),
            "opts": self.opts,
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
        return TemplateResponse(request, "admin/django_celery_monitor/queues.html", context)

    def data_view(self, request: HttpRequest) -> HttpResponse:
        """The page's body for the live refresh, as JSON: ``{"html": ...}``."""
        if not self.has_view_permission(request):
            return JsonResponse({"error": "permission denied"}, status=403)
        window = self._window(request)
        html = render_to_string(
            "admin/django_celery_monitor/queues_body.html",
            self.body_context(window),
            request=request,
        )
        response = JsonResponse({"window": window, "html": html})
        response["Cache-Control"] = "no-store"
        return response

    def body_context(self, window: str) -> dict[str, Any]:
        data = stats.queues(window)
        found = []
        for queue in data["queues"]:
            found.append(
                {
                    **queue,
                    "chart": charts.backlog_chart(
                        queue["points"], gettext("Messages in %(queue)s") % queue
                    ),
                    "stale": queue["age"] > 120,
                }
            )
        return {
            "window": window,
            "window_label": WINDOW_LABELS[window],
            "queues": found,
            "start": data["start"],
            "end": data["end"],
        }
