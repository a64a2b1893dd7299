"""What the admin's pages show and write: badges, times, names, links, history entries.

Also the colors of the states and the limits the task admin keeps to.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
from collections.abc import Iterable, Sequence
from pprint import pformat
from typing import Any

from celery import states
from django import forms
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.db import models
from django.http import HttpRequest
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from .. import control
from ..humanize import naturaldate

#: The badge color of each task state (a CSS class ``cm-badge-<color>``).
TASK_STATE_COLORS = {
    states.SUCCESS: "green",
    states.FAILURE: "red",
    states.REVOKED: "magenta",
    states.STARTED: "yellow",
    states.RETRY: "orange",
    "RECEIVED": "blue",
}
#: The badge color of a worker that is online or offline.
NODE_STATE_COLORS = {"ONLINE": "green", "OFFLINE": "gray"}

#: The most tasks one action handles: a larger selection is refused with a message.
MAX_ACTION_TASKS = 1000
#: The most tasks "retry" sends again at once.
MAX_RETRY_TASKS = 100
#: The most task types one rate limit action sets (a broadcast each, all at once).
MAX_RATE_LIMIT_NAMES = control.MAX_RATE_LIMIT_NAMES
#: The most workers one worker action sends its command to.
MAX_ACTION_WORKERS = 200
#: How many refusals a message quotes.
MAX_REFUSALS_SHOWN = 5
#: How many characters of a worker's reply to a control the message and the history keep.
REPLY_TEXT_LENGTH = 500
#: How many children a task's detail page lists.
MAX_CHILDREN = 50
#: How many characters of a task's arguments its row in the task list sends (the cell
#: shows what fits its width, with an ellipsis).
ARGS_LENGTH = 200
#: The most task names a search compares its words with, whatever their case (the names are
#: read with a loose index scan); with more names in the table, a word matches the names
#: that start with it as typed or in lower case.
MAX_SEARCH_NAMES = 1000
#: The most workers whose hostname a word of a search may match; with more, the search
#: joins the workers' table instead.
MAX_SEARCH_WORKERS = 1000


def _log(request: HttpRequest, objects: Sequence[models.Model], message: str) -> None:
    """Write one admin LogEntry (a change) per object, in one statement where possible."""
    if not objects:
        return
    manager = LogEntry.objects
    if hasattr(manager, "log_actions"):
        manager.log_actions(
            user_id=request.user.pk, queryset=objects, action_flag=CHANGE, change_message=message
        )
    else:  # pragma: no cover  (Django < 5.1)
        for obj in objects:
            manager.log_action(
                user_id=request.user.pk,
                content_type_id=_content_type_id(obj),
                object_id=obj.pk,
                object_repr=str(obj)[:200],
                action_flag=CHANGE,
                change_message=message,
            )


def _log_each(request: HttpRequest, entries: Sequence[tuple[models.Model, str]]) -> None:
    """Write one admin LogEntry per object with its own message: a statement per message."""
    by_message: dict[str, list[models.Model]] = {}
    for obj, message in entries:
        by_message.setdefault(message, []).append(obj)
    for message, objects in by_message.items():
        _log(request, objects, message)


def _content_type_id(obj: models.Model) -> int:  # pragma: no cover  (Django < 5.1)
    from django.contrib.contenttypes.models import ContentType

    return ContentType.objects.get_for_model(obj, for_concrete_model=False).pk


def _badge(text: Any, color: str, title: Any = "") -> str:
    return format_html(
        '<span class="cm-badge cm-badge-{}" title="{}">{}</span>', color, title or text, text
    )


def _when(value: datetime.datetime | None) -> str:
    """The time in natural words, the exact time on hover."""
    if value is None:
        return ""
    local = timezone.localtime(value) if timezone.is_aware(value) else value  # USE_TZ off
    exact = formats.date_format(local, "DATETIME_FORMAT")
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        exact,
        naturaldate(value, include_seconds=True),
    )


def _short_id(task_id: str) -> str:
    """The first 8 characters of a task id, enough to tell tasks apart at a glance."""
    return task_id if len(task_id) <= 13 else task_id[:8] + "…"


def _breakable(value: str, separator: str) -> str:
    """A text that may wrap after each ``separator`` (and only there) when space is short."""
    parts = value.split(separator)
    pieces = [part + separator for part in parts[:-1]] + parts[-1:]
    return format_html_join(mark_safe("<wbr>"), "{}", ((piece,) for piece in pieces))


def _task_name(name: str) -> str:
    """A task's name that wraps between its module and its function before anywhere else.

    The module may wrap after its dots and, only when it is still too wide, the function
    after its underscores.
    """
    module, dot, function = name.rpartition(".")
    return format_html(
        '<span class="cm-name"><span class="cm-module">{}</span><wbr>'
        '<span class="cm-function">{}</span></span>',
        _breakable(module + dot, "."),
        _breakable(function, "_"),
    )


def _pretty(value: str | None) -> str:
    """A recorded repr, pretty-printed when it is a Python literal, in a ``<pre>`` block."""
    if value is None or value == "":
        return "-"
    text = value
    with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        text = pformat(ast.literal_eval(value), width=88, sort_dicts=False)
    return format_html('<pre class="cm-pre">{}</pre>', text)


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return gettext("%(ms).1f ms") % {"ms": value * 1000}
    return gettext("%(s).3f s") % {"s": value}


def _change_url(obj: models.Model, current_app: str | None = None) -> str:
    return reverse(admin_urlname(obj._meta, "change"), args=[obj.pk], current_app=current_app)


def _changelist_url(model: type[models.Model], current_app: str | None = None) -> str:
    return reverse(admin_urlname(model._meta, "changelist"), current_app=current_app)


def _refusals(replies: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    """``(who, reason)`` of each reply that says the command failed (``{"error": ...}``, or
    ``{"nok": ...}`` and anything else that is not ``{"ok": ...}``)."""
    refused = []
    for who, reply in replies:
        ok, text = _reply_text(reply)
        if not ok:
            refused.append((who, text))
    return refused


def _reply_text(reply: Any) -> tuple[bool, str]:
    """Whether a worker's reply says ok, and what it says, cut to
    :data:`REPLY_TEXT_LENGTH` characters for a message or a history entry."""
    ok, text = control.reply_text(reply)
    if len(text) > REPLY_TEXT_LENGTH:
        text = text[: REPLY_TEXT_LENGTH - 1] + "…"
    return ok, text


def _refusal_text(refused: Sequence[tuple[str, str]]) -> str:
    """A sentence that quotes the first refusals."""
    shown = "; ".join(f"{who}: {reason}" for who, reason in refused[:MAX_REFUSALS_SHOWN])
    if len(refused) > MAX_REFUSALS_SHOWN:
        shown += "; ..."
    return ngettext(
        "%(count)d refused (%(reasons)s).", "%(count)d refused (%(reasons)s).", len(refused)
    ) % {"count": len(refused), "reasons": shown}


def _timeout(app: Any = None) -> str:
    """How long an answer is awaited, in seconds: ``2``."""
    return f"{control.reply_timeout(app):g}"


class RateField(forms.CharField):
    """A task's rate limit as Celery takes it (``10``, ``10/s``, ``100/m``, ``1000/h``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 32)
        super().__init__(**kwargs)

    def clean(self, value: Any) -> str:
        try:
            return control.parse_rate(super().clean(value))
        except ValueError:
            raise forms.ValidationError(
                _("Enter a number, optionally followed by /s, /m or /h."), code="invalid"
            ) from None
