"""The queues page: each broker queue's length now, its consumers, and its backlog over time.

Its entry in the admin is the ``Queue`` proxy model, listed in the Celery Monitor section
like the tasks and the workers. The samples are the camera's (see
:mod:`django_celery_monitor.queues`); this page reads them with
:func:`django_celery_monitor.stats.queues` and asks the broker nothing.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.translation import gettext, gettext_lazy

from .. import stats
from ..models import Queue
from . import charts
from .dashboard import WINDOW_LABELS, WindowPage


@admin.register(Queue)
class QueueMonitor(WindowPage):
    """The queues page: whoever may view the tasks may view it."""

    page_title = gettext_lazy("Queues")
    body_template = "admin/django_celery_monitor/queues_body.html"
    view_permissions = (
        "celery_monitor.view_queue",
        "celery_monitor.view_queuesample",
        "celery_monitor.view_taskstate",
    )

    def body_context(self, request: HttpRequest, window: str) -> dict[str, Any]:
        data = stats.queues(window)
        found = []
        stale_after = stats.queue_stale_after().total_seconds()
        for queue in data["queues"]:
            found.append(
                {
                    **queue,
                    "chart": charts.backlog_chart(
                        queue["points"], gettext("Messages in %(queue)s") % queue
                    ),
                    "stale": queue["age"] > stale_after,
                }
            )
        return {
            "window": window,
            "window_label": WINDOW_LABELS[window],
            "queues": found,
            "start": data["start"],
            "end": data["end"],
        }
