"""The health check: whether a camera is recording, for load balancers and probes.

``GET /monitor/health/`` (and ``HEAD``) answers 200 while a camera shot within its last
periods and 503 otherwise, never cached::

    {"status": "ok" | "unavailable",
     "reason": "a camera shot within its last periods",
     "last_shot_age": 0.8}

``last_shot_age`` is the seconds since the most recent shot of any camera of the last day,
null without one. The reasons otherwise: ``no camera has run in the last day``, ``the camera
stopped``, ``no camera has taken a shot yet``, ``the last shot was 42 s ago (every 1 s
expected)``, or ``database unavailable: OperationalError`` when the database cannot be read.

Anyone may ask. A staff user with the view permission, or a caller with a bearer token
(see :mod:`django_celery_monitor.access`), also gets ``"cameras"``: each camera of the last
day, the latest shot first, ``{"key", "hostname", "pid", "version", "shard", "frequency",
"started", "last_shot", "last_shot_age", "stopped", "healthy", "events",
"events_per_second", "events_invalid", "events_repaired", "tasks_written",
"write_seconds", "rows_pending"}``.
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from . import stats
from .access import may_read
from .api import json_response

__all__ = ["health"]


@require_safe
def health(request: HttpRequest) -> HttpResponse:
    """200 while a camera is recording, 503 otherwise (see the module's text)."""
    try:
        found = stats.camera_health()
    except DatabaseError as exc:
        body: dict[str, Any] = {
            "status": "unavailable",
            "reason": f"database unavailable: {type(exc).__name__}",
            "last_shot_age": None,
        }
        return json_response(body, status=503)
    ages = [c["last_shot_age"] for c in found["cameras"] if c["last_shot_age"] is not None]
    body = {
        "status": "ok" if found["ok"] else "unavailable",
        "reason": found["reason"],
        "last_shot_age": min(ages) if ages else None,
    }
    try:
        if may_read(request):  # a staff session is read from the database
            body["cameras"] = found["cameras"]
    except DatabaseError:
        pass
    return json_response(body, status=200 if found["ok"] else 503)
