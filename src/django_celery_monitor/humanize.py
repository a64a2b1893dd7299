"""Some helpers to humanize values."""

from __future__ import annotations

from datetime import datetime
from datetime import timezone as dt_timezone

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from .utils import correct_awareness


def pluralize_year(n: int) -> str:
    """Return a string with the number of years ago."""
    return ngettext("{num} year ago", "{num} years ago", n)


def pluralize_month(n: int) -> str:
    """Return a string with the number of months ago."""
    return ngettext("{num} month ago", "{num} months ago", n)


def pluralize_week(n: int) -> str:
    """Return a string with the number of weeks ago."""
    return ngettext("{num} week ago", "{num} weeks ago", n)


def pluralize_day(n: int) -> str:
    """Return a string with the number of days ago."""
    return ngettext("{num} day ago", "{num} days ago", n)


OLDER_CHUNKS = (
    (365.0, pluralize_year),
    (30.0, pluralize_month),
    (7.0, pluralize_week),
    (1.0, pluralize_day),
)


def _local(value: datetime) -> datetime:
    value = correct_awareness(value)
    return timezone.localtime(value) if settings.USE_TZ else value


def _utc(value: datetime) -> datetime:
    return value.astimezone(dt_timezone.utc) if timezone.is_aware(value) else value


def naturaldate(date: datetime | None, include_seconds: bool = False) -> str:
    """Convert datetime into a human natural date string.

    "just now", "5 minutes ago", "3 hours ago", "yesterday at 14:05", "2 weeks ago"... Aware
    and naive values are both accepted, whatever ``USE_TZ`` says; days are counted in the
    current time zone.
    """
    if not date:
        return ""

    right_now = _local(timezone.now())
    date = _local(date)
    today = right_now.replace(hour=0, minute=0, second=0, microsecond=0)
    # Elapsed time in UTC: wall clocks of one zone jump at daylight saving changes.
    delta = _utc(right_now) - _utc(date)
    delta_midnight = today - date

    days = delta.days
    hours = delta.seconds // 3600
    minutes = delta.seconds // 60
    seconds = delta.seconds

    if days < 0:
        return _("just now")

    if days == 0:
        if hours == 0:
            if minutes > 0:
                return ngettext("{minutes} minute ago", "{minutes} minutes ago", minutes).format(
                    minutes=minutes
                )
            if include_seconds and seconds:
                return ngettext("{seconds} second ago", "{seconds} seconds ago", seconds).format(
                    seconds=seconds
                )
            return _("just now")
        if date >= today:
            return ngettext("{hours} hour ago", "{hours} hours ago", hours).format(hours=hours)

    if delta_midnight.days == 0:
        return _("yesterday at {time}").format(time=date.strftime("%H:%M"))

    for chunk, pluralizefun in OLDER_CHUNKS:
        if days >= chunk:
            count = int(round((delta_midnight.days + 1) / chunk, 0))
            return pluralizefun(count).format(num=count)
    return ngettext("{hours} hour ago", "{hours} hours ago", hours).format(hours=hours)
