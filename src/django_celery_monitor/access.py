"""Who may read the JSON API and the metrics: a staff session, or a bearer token.

Tokens come from the ``monitor_api_tokens`` setting (``CELERY_MONITOR_API_TOKENS``); a
request sends one as ``Authorization: Bearer <token>``. Tokens are compared in constant
time. A staff user also needs the view permission of the tasks (or the workers) to read
them, as in the admin.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from .conf import monitor_settings

__all__ = ["has_token", "staff_or_token"]

#: The permissions that let a staff user read the monitor's data.
VIEW_PERMISSIONS = ("celery_monitor.view_taskstate", "celery_monitor.view_workerstate")


def has_token(request: HttpRequest) -> bool:
    """Whether the request carries one of the configured bearer tokens."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    given = token.strip().encode()
    return any(hmac.compare_digest(given, known.encode()) for known in monitor_settings.api_tokens)


def may_read(request: HttpRequest) -> bool:
    """A bearer token, or an active staff user with a view permission of the monitor."""
    if has_token(request):
        return True
    user = getattr(request, "user", None)
    if user is None or not user.is_active or not user.is_staff:
        return False
    return any(user.has_perm(permission) for permission in VIEW_PERMISSIONS)


def staff_or_token(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Let ``view`` answer staff with the view permission and bearer tokens; 401/403 else.

    The answer to a refused request is JSON, never a login page: the callers are scripts
    and scrapers.
    """

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if may_read(request):
            return view(request, *args, **kwargs)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return JsonResponse({"error": "permission denied"}, status=403)
        response = JsonResponse(
            {"error": "authentication required: a staff session or a bearer token"},
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="celery-monitor"'
        return response

    return wrapped
