"""The monitor's JSON API, health check and Prometheus metrics.

Include it under any prefix::

    path("monitor/", include("django_celery_monitor.urls"))
"""

from django.urls import path

from . import api, health, metrics

app_name = "celery_monitor"

urlpatterns = [
    path("api/tasks/", api.task_list, name="api-task-list"),
    path("api/tasks/<path:task_id>/", api.task_detail, name="api-task-detail"),
    path("api/workers/", api.worker_list, name="api-worker-list"),
    path("api/dashboard/", api.dashboard, name="api-dashboard"),
    path("health/", health.health, name="health"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # Prometheus scrapes /metrics; Django's habit of a closing slash finds it too.
    path("metrics/", metrics.metrics_view, name="metrics-slash"),
]
