"""Make the untrusted values of Celery events fit the database columns.

Events come from any process that can publish to the broker: a value may be of the wrong
type, carry NUL bytes (PostgreSQL refuses them) or lone surrogates (no encoding accepts
them), be megabytes long, or be a timestamp from the year 50000. Each function here returns
something every supported database stores, or ``None``, and never raises.
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal
from typing import Any

from celery.utils.time import maybe_iso8601
from django.conf import settings

from .utils import correct_awareness, fromtimestamp

#: The largest POSIX timestamp kept: 9999-12-30 23:59:59 UTC, a day short of the last one
#: every database and Python datetime can hold, so that its local time in any time zone
#: (a page shown in another zone) is a date too.
MAX_TIMESTAMP = 253402214399.0
#: The first and last times kept (see :func:`in_calendar`).
FIRST_TIME = datetime(1, 1, 2, tzinfo=dt_timezone.utc)
LAST_TIME = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=dt_timezone.utc)
#: How far ahead of this machine's clock an event's time may be (the sender's clock runs
#: fast); anything later is taken as wrong.
MAX_CLOCK_SKEW = 60.0
#: Integers stored in 32-bit columns.
MAX_INT = 2**31 - 1


def _to_str(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


def clean_text(value: Any, max_length: int | None = None) -> str | None:
    """Return ``value`` as valid unicode without NUL characters, cut to ``max_length``.

    A cut value ends with a marker that says how many characters were dropped.
    """
    if value is None:
        return None
    if value.__class__ is str and value.isascii():  # the common case, without a copy
        if "\x00" in value:
            value = value.replace("\x00", "\\x00")
        if max_length is not None and len(value) > max_length:
            return _cut(value, max(max_length, 0))
        return value
    try:
        text = _to_str(value)
    except Exception:  # a repr that raises: store that it could not be shown
        text = "<unprintable value>"
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    if max_length is not None and len(text) > max_length:
        text = _cut(text, max(max_length, 0))
    return text


def _cut(text: str, max_length: int) -> str:
    """Cut ``text`` to ``max_length`` characters, ending with a marker of what was cut."""
    keep = max_length
    for _ in range(3):  # the marker's length depends on the count it shows
        marker = f"... [{len(text) - keep} more characters cut]"
        keep = max_length - len(marker)
    if keep < 0:  # no room for the marker
        return text[:max_length]
    marker = f"... [{len(text) - keep} more characters cut]"
    return text[:keep] + marker[: max_length - keep]


def escape_id(text: str) -> str:
    """``text``, an id, with NUL and lone surrogates written as escapes, fit for any database.

    An id that needed escaping ends with ``~`` and a hash of the id as it came: it never
    names the same row as an id that spells those escapes out (``abc\\x00``).
    """
    if "\x00" not in text and (text.isascii() or encodable(text)):
        return text
    escaped = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    whole = text.encode("utf-8", "surrogatepass")
    return f"{escaped}~{hashlib.sha1(whole, usedforsecurity=False).hexdigest()}"


def encodable(text: str) -> bool:
    """Whether ``text`` has no lone surrogate (no encoding, and no log file, takes one)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean_id(value: Any, max_length: int = 255) -> str | None:
    """Return a task id or hostname that fits ``max_length`` and stays unique.

    An id too long for the column keeps its start and ends with a hash of the whole id,
    so two long ids never share a row; so does an id with NUL or a lone surrogate
    (:func:`escape_id`).
    """
    text = escape_id(value) if value.__class__ is str else clean_text(value)
    if text is None or len(text) <= max_length:
        return text
    digest = hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()
    prefix = max(max_length - len(digest) - 1, 0)
    return f"{text[:prefix]}~{digest}"[:max_length]


def clean_number(value: Any) -> float | None:
    """Return a finite float, or None."""
    if value.__class__ is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value) if isinstance(value, int | float | Decimal | str) else None
    except (TypeError, ValueError, OverflowError):
        return None
    if number is None or not math.isfinite(number):
        return None
    return number


def clean_int(value: Any, default: int | None = None) -> int | None:
    """Return an integer that fits a 32-bit column, or ``default``."""
    number = clean_number(value)
    if number is None or abs(number) > MAX_INT:
        return default
    return int(number)


def clean_timestamp(value: Any, future: bool = False) -> datetime | None:
    """Return the datetime of a POSIX timestamp, or None when it is missing or absurd.

    A time more than ``MAX_CLOCK_SKEW`` seconds ahead of now counts as absurd unless
    ``future`` (an ETA may be years ahead).
    """
    number = clean_number(value)
    latest = MAX_TIMESTAMP if future else time.time() + MAX_CLOCK_SKEW
    if number is None or not 0 < number <= latest:
        return None
    try:
        if settings.USE_TZ:  # the same instant as fromtimestamp(), without the zone lookup
            return datetime.fromtimestamp(number, tz=dt_timezone.utc)
        return fromtimestamp(number)
    except (OverflowError, OSError, ValueError):
        return None


def in_calendar(value: datetime) -> bool:
    """Whether ``value`` is a day or more inside the years a datetime holds: its local
    time in any time zone is a date too (a naive one is taken as UTC)."""
    try:
        if value.tzinfo is not None:
            value = value.astimezone(dt_timezone.utc)
        return FIRST_TIME <= value.replace(tzinfo=dt_timezone.utc) <= LAST_TIME
    except (OverflowError, ValueError):
        return False


def clean_datetime(value: Any) -> datetime | None:
    """Return an ISO 8601 string or datetime as a datetime fit for the database, or None
    (a time within a day of the first or last the database holds, too)."""
    if value is None or value == "":
        return None
    if not isinstance(value, datetime):
        try:
            value = maybe_iso8601(_to_str(value))
        except Exception:  # not a time; or a value whose str() raises (nested too deep)
            return None
    if not in_calendar(value):
        return None
    try:
        return correct_awareness(value)
    except (OverflowError, ValueError):
        return None


def clean_loadavg(value: Any) -> list[float] | None:
    """Return up to three finite load averages, or None."""
    if not isinstance(value, list | tuple):
        return None
    numbers = [clean_number(v) for v in value[:3]]
    return [round(n, 2) for n in numbers if n is not None] or None
