"""Who may read the JSON API and the metrics: a staff session, or a bearer token.

Tokens come from the ``monitor_api_tokens`` setting (``CELERY_MONITOR_API_TOKENS``); a
request sends one as ``Authorization: Bearer <token>``. Tokens are compared in constant
time. A staff user also needs the permission the admin asks for the same data: the tasks'
view permission to read tasks, the workers' to read workers, and the dashboard's (or the
tasks') for the dashboard's figures and the metrics.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from .conf import monitor_settings

__all__ = ["has_token", "staff_or_token"]

#: Any of these lets a staff user read the tasks.
TASKS = ("celery_monitor.view_taskstate",)
#: Any of these lets a staff user read the workers.
WORKERS = ("celery_monitor.view_workerstate",)
#: Any of these lets a staff user read the dashboard's figures (tasks and workers counted,
#: the stuck tasks, the cameras), as on the admin's dashboard page.
DASHBOARD = ("celery_monitor.view_dashboard", "celery_monitor.view_taskstate")


def has_token(request: HttpRequest) -> bool:
    """Whether the request carries one of the configured bearer tokens."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    given = token.strip().encode()
    return any(
        hmac.compare_digest(given, known.encode()) for known in monitor_settings.usable_api_tokens
    )


def may_read(request: HttpRequest, permissions: tuple[str, ...] = DASHBOARD) -> bool:
    """A bearer token, or an active staff user with one of ``permissions``."""
    if has_token(request):
        return True
    user = getattr(request, "user", None)
    if user is None or not user.is_active or not user.is_staff:
        return False
    return any(user.has_perm(permission) for permission in permissions)


def staff_or_token(
    permissions: tuple[str, ...],
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Let a view answer bearer tokens, and staff with one of ``permissions``; 401/403 else.

    The answer to a refused request is JSON, never a login page: the callers are scripts
    and scrapers.
    """
    return functools.partial(_staff_or_token, permissions=permissions)


def _staff_or_token(
    view: Callable[..., HttpResponse], permissions: tuple[str, ...]
) -> Callable[..., HttpResponse]:
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if may_read(request, permissions):
            return view(request, *args, **kwargs)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            response = JsonResponse({"error": "permission denied"}, status=403)
        else:
            response = JsonResponse(
                {"error": "authentication required: a staff session or a bearer token"},
                status=401,
            )
            response["WWW-Authenticate"] = 'Bearer realm="celery-monitor"'
        response["Cache-Control"] = "no-store"  # a refusal is for this caller, now
        return response

    return wrapped
