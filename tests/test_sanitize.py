"""Untrusted event values made safe for every database."""

from __future__ import annotations

import math
import re
import time
import uuid
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

import pytest
from django.utils import timezone

from django_celery_monitor.sanitize import (
    MAX_INT,
    MAX_TIMESTAMP,
    clean_datetime,
    clean_id,
    clean_int,
    clean_loadavg,
    clean_number,
    clean_text,
    clean_timestamp,
    escape_id,
)

MARKER = re.compile(r"\.\.\. \[(\d+) more characters cut\]$")
#: 2023-11-14 22:13:20 UTC.
TIMESTAMP = 1_700_000_000
INSTANT = datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt_timezone.utc)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=dt_timezone.utc)


def storable(text: str) -> bool:
    """Whether every database takes ``text``: valid UTF-8 and no NUL character."""
    text.encode("utf-8")
    return "\x00" not in text


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class Printable:
    def __str__(self) -> str:
        return "printable <object>"


# clean_text


def test_clean_text_none_stays_none():
    assert clean_text(None) is None
    assert clean_text(None, 10) is None


def test_clean_text_keeps_ordinary_text():
    assert clean_text("proj.add") == "proj.add"
    assert clean_text("") == ""
    assert clean_text("héllo wörld ✓ 🚀", 100) == "héllo wörld ✓ 🚀"


def test_clean_text_removes_nul_characters():
    text = clean_text("a\x00b\x00c")
    assert storable(text)
    assert text.startswith("a")
    assert text.endswith("c")
    assert text.count("b") == 1


@pytest.mark.parametrize("value", ["\ud800", "abc\udfffdef", "\udc80\x00\ud83d"])
def test_clean_text_replaces_lone_surrogates(value):
    text = clean_text(value)
    assert storable(text)
    assert len(text) >= 1


def test_clean_text_decodes_bytes():
    assert clean_text(b"caf\xc3\xa9") == "café"
    text = clean_text(b"\xff\xfe\x00bad")
    assert storable(text)
    assert text.endswith("bad")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, "42"),
        (1.5, "1.5"),
        ({"a": 1}, "{'a': 1}"),
        ((1, 2), "(1, 2)"),
        (Printable(), "printable <object>"),
    ],
)
def test_clean_text_turns_other_objects_into_text(value, expected):
    assert clean_text(value) == expected


def test_clean_text_of_an_object_that_cannot_be_shown():
    text = clean_text(Unprintable())
    assert isinstance(text, str)
    assert "unprintable" in text


def test_clean_text_of_an_object_that_cannot_be_shown_fits_max_length():
    text = clean_text(Unprintable(), max_length=10)
    assert isinstance(text, str)
    assert len(text) <= 10


def test_clean_text_leaves_text_of_exactly_max_length():
    assert clean_text("x" * 64, 64) == "x" * 64


def test_clean_text_cuts_a_megabyte_string_with_a_marker():
    value = "y" * 2_000_000
    text = clean_text(value, 65536)
    assert len(text) == 65536
    assert text.startswith("y" * 60000)
    assert MARKER.search(text)


@pytest.mark.parametrize("max_length", [50, 100, 1000, 65536])
def test_clean_text_marker_says_how_many_characters_were_cut(max_length):
    total = 1_000_000
    text = clean_text("z" * total, max_length)
    match = MARKER.search(text)
    assert match
    kept = len(text) - len(match.group(0))
    assert text[:kept] == "z" * kept
    assert int(match.group(1)) == total - kept


def test_clean_text_cuts_after_removing_nul_characters():
    text = clean_text("\x00" * 1000, 100)
    assert storable(text)
    assert len(text) <= 100


@pytest.mark.parametrize("max_length", [0, 1, 2, 3, 5, 10, 20, 27, 28, 29, 30, 40, 255])
def test_clean_text_is_never_longer_than_max_length(max_length):
    for value in ("w" * 1000, "w" * (max_length + 1), "é\x00" * 600, b"\xff" * 500):
        text = clean_text(value, max_length)
        assert len(text) <= max_length, (max_length, text)
        assert storable(text)


@pytest.mark.parametrize("max_length", [1, 2, 5, 10])
def test_clean_text_tiny_max_length_keeps_the_start(max_length):
    text = clean_text("abcdefghijklmnopqrstuvwxyz" * 4, max_length)
    assert len(text) == max_length
    assert text[0] == "a"


# clean_id


def test_clean_id_keeps_short_ids():
    task_id = str(uuid.uuid4())
    assert clean_id(task_id) == task_id
    assert clean_id("x" * 255) == "x" * 255
    assert clean_id("celery@worker-1.example.com") == "celery@worker-1.example.com"


def test_clean_id_none_stays_none():
    assert clean_id(None) is None


def test_clean_id_cuts_long_ids_to_255_characters():
    value = "p" * 300
    cleaned = clean_id(value)
    assert len(cleaned) == 255
    assert cleaned.startswith("p" * 200)


def test_clean_id_keeps_two_long_ids_with_a_common_prefix_apart():
    prefix = "chord-" + "q" * 294
    first, second = clean_id(prefix + "-1"), clean_id(prefix + "-2")
    assert len(prefix) == 300
    assert first != second
    assert len(first) == len(second) == 255


def test_clean_id_is_deterministic():
    value = "r" * 1000
    assert clean_id(value) == clean_id("r" * 1000)
    assert clean_id(value) != clean_id("r" * 1001)


def test_clean_id_fits_a_smaller_column():
    value = "s" * 100
    cleaned = clean_id(value, max_length=36)
    assert len(cleaned) <= 36
    assert cleaned != clean_id("s" * 101, max_length=36)


@pytest.mark.parametrize(
    ("hostile", "literal"), [("abc\x00", "abc\\x00"), ("t\udc80", "t\\udc80")]
)
def test_an_id_that_needs_escaping_never_names_the_row_of_one_spelling_the_escape(
    hostile, literal
):
    assert clean_id(literal) == literal
    assert clean_id(hostile) != literal and clean_id(hostile).startswith(literal + "~")
    assert clean_id(hostile) == clean_id(hostile)  # the same id, the same row
    assert storable(clean_id(hostile)) and storable(escape_id(hostile))
    assert escape_id(escape_id(hostile)) == escape_id(hostile)


def test_clean_id_is_storable():
    assert storable(clean_id("a\x00b\ud800"))
    assert clean_id(b"bytes-id") == "bytes-id"


# clean_number and clean_int


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1.0),
        (-2.5, -2.5),
        (0, 0.0),
        ("3.25", 3.25),
        (" 7 ", 7.0),
        ("1e3", 1000.0),
        (Decimal("1.5"), 1.5),
        (10**20, 1e20),
    ],
)
def test_clean_number_accepts_finite_numbers(value, expected):
    number = clean_number(value)
    assert isinstance(number, float)
    assert number == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        math.nan,
        math.inf,
        -math.inf,
        "nan",
        "inf",
        "1e400",
        "",
        "twelve",
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        10**400,
        [1],
        {"a": 1},
        object(),
        b"12",
    ],
)
def test_clean_number_refuses_the_rest(value):
    assert clean_number(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3),
        (3.9, 3),
        ("12", 12),
        ("12.5", 12),
        (Decimal("4"), 4),
        (MAX_INT, MAX_INT),
        (-MAX_INT, -MAX_INT),
        (0, 0),
    ],
)
def test_clean_int_accepts_integers_of_32_bits(value, expected):
    number = clean_int(value)
    assert type(number) is int
    assert number == expected


@pytest.mark.parametrize(
    "value", [MAX_INT + 1, -(MAX_INT + 2), 10**30, 10**400, math.nan, math.inf, True, "x", None]
)
def test_clean_int_gives_the_default_for_the_rest(value):
    assert clean_int(value) is None
    assert clean_int(value, default=0) == 0


# clean_timestamp


def test_clean_timestamp_of_a_valid_timestamp_is_the_same_instant():
    value = clean_timestamp(TIMESTAMP)
    assert value == INSTANT
    assert timezone.is_aware(value)
    assert clean_timestamp(TIMESTAMP + 0.5) == utc(2023, 11, 14, 22, 13, 20, 500000)


@pytest.mark.parametrize("value", ["1700000000", " 1700000000.0 ", Decimal(TIMESTAMP)])
def test_clean_timestamp_accepts_numbers_in_strings(value):
    assert clean_timestamp(value) == INSTANT


@pytest.mark.parametrize(
    "value",
    [None, 0, 0.0, -1, -1e9, math.nan, math.inf, "nan", "soon", "", True, 1.5e12, 10**100],
)
def test_clean_timestamp_refuses_missing_and_absurd_values(value):
    assert clean_timestamp(value) is None


def test_clean_timestamp_refuses_the_year_50000():
    year_50000 = (50000 - 1970) * 365.2425 * 86400
    assert clean_timestamp(year_50000) is None


def test_clean_timestamp_at_the_end_of_time(settings):
    assert clean_timestamp(MAX_TIMESTAMP + 1, future=True) is None
    # A day short of the last: shown in any time zone (Kiritimati is 14 hours ahead), it is
    # still a date.
    settings.TIME_ZONE = "UTC"
    end = clean_timestamp(MAX_TIMESTAMP, future=True)
    assert end == utc(9999, 12, 30, 23, 59, 59)
    settings.TIME_ZONE = "Pacific/Kiritimati"
    assert timezone.localtime(end).year == 9999


def test_clean_timestamp_refuses_times_ahead_of_this_clock():
    now = time.time()
    assert clean_timestamp(now + 30) is not None  # within the allowed clock skew
    assert clean_timestamp(now + 3600) is None
    assert clean_timestamp(now + 3600, future=True) is not None


def test_clean_timestamp_without_use_tz_is_naive_in_time_zone(settings):
    settings.USE_TZ = False
    settings.TIME_ZONE = "America/New_York"
    assert clean_timestamp(TIMESTAMP) == datetime(2023, 11, 14, 17, 13, 20)


# clean_datetime


def test_clean_datetime_of_a_value_nested_too_deep_to_show_is_none():
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    assert clean_datetime(nested) is None


def test_clean_datetime_of_an_iso_string_with_an_offset():
    value = clean_datetime("2024-01-02T03:04:05+02:00")
    assert value == utc(2024, 1, 2, 1, 4, 5)
    assert timezone.is_aware(value)


def test_clean_datetime_of_an_iso_string_without_an_offset_is_utc():
    value = clean_datetime("2024-01-02T03:04:05.123456")
    assert value == utc(2024, 1, 2, 3, 4, 5, 123456)
    assert timezone.is_aware(value)


def test_clean_datetime_of_an_iso_string_in_utc():
    assert clean_datetime("2024-01-02T03:04:05Z") == utc(2024, 1, 2, 3, 4, 5)
    assert clean_datetime(b"2024-01-02T03:04:05+00:00") == utc(2024, 1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    "value",
    [None, "", "garbage", "2024-13-45T99:99:99", "tomorrow", "\x00\ud800", [], "9" * 5000],
)
def test_clean_datetime_refuses_garbage(value):
    assert clean_datetime(value) is None


@pytest.mark.parametrize(
    "value",
    ["9999-12-31T23:59:59", "9999-12-31T22:00:00+00:00", "0001-01-01T00:00:00+14:00",
     "0001-01-01T10:00:00"],
)  # fmt: skip
def test_clean_datetime_of_the_ends_of_time_is_none(value):
    # Within a day of either end, a page in another time zone could not show it.
    assert clean_datetime(value) is None
    assert clean_datetime("9999-12-29T12:00:00+00:00").year == 9999


def test_clean_datetime_of_datetimes():
    assert clean_datetime(INSTANT) == INSTANT
    assert clean_datetime(datetime(2023, 11, 14, 22, 13, 20)) == INSTANT


def test_clean_datetime_without_use_tz_is_naive_in_time_zone(settings):
    settings.USE_TZ = False
    settings.TIME_ZONE = "Asia/Kolkata"
    assert clean_datetime("2023-11-14T22:13:20+00:00") == datetime(2023, 11, 15, 3, 43, 20)
    assert clean_datetime(INSTANT) == datetime(2023, 11, 15, 3, 43, 20)


# clean_loadavg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([0.5, 1.234, 2.0], [0.5, 1.23, 2.0]),
        ((1, 2, 3), [1.0, 2.0, 3.0]),
        ([1, 2, 3, 4, 5], [1.0, 2.0, 3.0]),
        (["0.5", "x", math.nan], [0.5]),
        ([math.inf, 0.1], [0.1]),
    ],
)
def test_clean_loadavg_keeps_up_to_three_finite_numbers(value, expected):
    assert clean_loadavg(value) == expected


@pytest.mark.parametrize("value", [None, [], (), "1 2 3", 1.5, {"a": 1}, [math.nan, "x"]])
def test_clean_loadavg_refuses_the_rest(value):
    assert clean_loadavg(value) is None
