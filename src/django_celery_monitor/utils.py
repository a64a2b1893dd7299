"""Utilities.

This module is imported by the camera before Django is set up: it must not import models or
translation machinery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from datetime import timezone as dt_timezone
from pprint import pformat
from typing import Any, TypeVar

from django.conf import settings
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "action",
    "correct_awareness",
    "display_field",
    "fixedwidth",
    "fromtimestamp",
    "make_aware",
    "posix_timestamp",
]


def make_aware(value: datetime) -> datetime:
    """Make the given datetime aware of a timezone.

    With ``USE_TZ`` on, a naive value is taken as UTC and the result is in the current
    time zone. With ``USE_TZ`` off the value is returned unchanged.
    """
    if settings.USE_TZ:
        if timezone.is_naive(value):
            value = timezone.make_aware(value, dt_timezone.utc)
        value = timezone.localtime(value)
    return value


def correct_awareness(value: Any) -> Any:
    """Fix the given datetime timezone awareness.

    Return an aware datetime with ``USE_TZ`` on, and a naive datetime in the default time
    zone with it off; anything that is not a datetime is returned unchanged.
    """
    if isinstance(value, datetime):
        if settings.USE_TZ:
            return make_aware(value)
        if timezone.is_aware(value):
            return timezone.make_naive(value, timezone.get_default_timezone())
    return value


def fromtimestamp(value: float) -> datetime:
    """Return an aware or naive datetime from the given POSIX timestamp.

    Aware (in the current time zone) with ``USE_TZ`` on; naive in the default time zone
    (``TIME_ZONE``) with it off, which is how Django stores naive datetimes.
    """
    aware = datetime.fromtimestamp(value, tz=dt_timezone.utc)
    if settings.USE_TZ:
        return timezone.localtime(aware)
    return timezone.make_naive(aware, timezone.get_default_timezone())


def posix_timestamp(value: datetime, stored: bool = False) -> float:
    """Return the POSIX timestamp of an aware datetime, or of a naive one in ``TIME_ZONE``.

    A naive time in the hour a daylight saving clock repeats names two instants.
    ``fromtimestamp`` marks the second with ``fold=1``, but the database keeps no fold: for a
    value read back from it (``stored``), the later instant is taken unless it is still to
    come, so a heartbeat written after the clock went back does not look an hour old.
    """
    if value.tzinfo is not None and value.utcoffset() is not None:
        return value.timestamp()
    zone = timezone.get_default_timezone()
    if not stored:
        return value.replace(tzinfo=zone).timestamp()
    first = value.replace(tzinfo=zone, fold=0).timestamp()
    second = value.replace(tzinfo=zone, fold=1).timestamp()
    if second > first and second <= time.time() + 60:
        return second
    return first


def _attrs(**kwargs: Any) -> Callable[[F], F]:
    def _inner(fun: F) -> F:
        for attr_name, attr_value in kwargs.items():
            setattr(fun, attr_name, attr_value)
        return fun

    return _inner


def display_field(
    short_description: Any, admin_order_field: str | None, allow_tags: bool = True, **kwargs: Any
) -> Callable[[F], F]:
    """Set some ``display_field`` attributes.

    ``allow_tags`` is accepted for compatibility and ignored: Django no longer reads it, and
    display functions return ``format_html`` output instead.
    """
    return _attrs(
        short_description=short_description, admin_order_field=admin_order_field, **kwargs
    )


def action(short_description: Any, **kwargs: Any) -> Callable[[F], F]:
    """Set some admin action attributes."""
    return _attrs(short_description=short_description, **kwargs)


def fixedwidth(
    field: str,
    name: Any = None,
    pt: int = 6,
    width: int = 16,
    maxlen: int = 64,
    pretty: bool = False,
) -> Callable[[Any], str]:
    """Render a field with a fixed width.

    The value is shortened to ``maxlen`` characters, broken after each comma, shown in a
    fixed-width font, and given in full (up to 255 characters) on hover. Everything is
    escaped.
    """

    @display_field(name or field, field)
    def f(obj: Any) -> str:
        val = getattr(obj, field)
        if val is None:
            return ""
        if pretty:
            val = pformat(val, width=width)
        val = str(val)
        if val[:2] in ("u'", 'u"'):
            val = val[2:-1]
        shortval = val if len(val) <= maxlen else val[:maxlen] + "..."
        lines = shortval.replace(",", ",\n").split("\n")
        return format_html(
            '<span title="{}" class="cm-fixedwidth" style="font-size: {}pt;">{}</span>',
            val[:255],
            pt,
            format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines)),
        )

    return f
