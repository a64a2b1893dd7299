"""Natural dates: "just now", "5 minutes ago", "yesterday at 14:05"..."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from django_celery_monitor import humanize
from django_celery_monitor.humanize import (
    naturaldate,
    pluralize_day,
    pluralize_month,
    pluralize_week,
    pluralize_year,
)

BERLIN = ZoneInfo("Europe/Berlin")
#: Saturday 2024-06-15 12:00 in Berlin (10:00 UTC).
NOW = datetime(2024, 6, 15, 10, 0, tzinfo=dt_timezone.utc)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=dt_timezone.utc)


@pytest.fixture
def freeze(monkeypatch):
    """Freeze ``timezone.now()`` at ``NOW``, or at the given datetime."""

    def set_now(value: datetime = NOW) -> datetime:
        monkeypatch.setattr(humanize.timezone, "now", lambda: value)
        return value

    set_now()
    return set_now


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def test_none_and_empty_are_empty():
    assert naturaldate(None) == ""


def test_just_now():
    assert naturaldate(timezone.now()) == "just now"
    assert naturaldate(timezone.now() - timedelta(seconds=5)) == "just now"


def test_seconds_only_with_include_seconds(freeze):
    assert naturaldate(ago(seconds=1), include_seconds=True) == "1 second ago"
    assert naturaldate(ago(seconds=42), include_seconds=True) == "42 seconds ago"
    assert naturaldate(ago(seconds=42)) == "just now"
    assert naturaldate(NOW, include_seconds=True) == "just now"


def test_minutes(freeze):
    assert naturaldate(ago(seconds=60)) == "1 minute ago"
    assert naturaldate(ago(minutes=5, seconds=30)) == "5 minutes ago"
    assert naturaldate(ago(minutes=59, seconds=59)) == "59 minutes ago"


def test_hours_today(freeze):
    assert naturaldate(ago(hours=1)) == "1 hour ago"
    assert naturaldate(ago(hours=3, minutes=20)) == "3 hours ago"
    # 00:30 in Berlin is still today, although it is yesterday (22:30) in UTC.
    assert naturaldate(utc(2024, 6, 14, 22, 30)) == "11 hours ago"


def test_yesterday_is_counted_in_the_current_time_zone(freeze):
    # 23:30 UTC on the 13th is 01:30 on the 14th in Berlin: yesterday, not two days ago.
    assert naturaldate(utc(2024, 6, 13, 23, 30)) == "yesterday at 01:30"
    assert naturaldate(ago(hours=14)) == "yesterday at 22:00"


def test_yesterday_in_another_activated_time_zone(freeze):
    # In Kolkata (UTC+5:30) it is 15:30 on the 15th; 2024-06-14 20:00 UTC is 01:30 today there.
    with timezone.override(ZoneInfo("Asia/Kolkata")):
        assert naturaldate(utc(2024, 6, 14, 20, 0)) == "14 hours ago"
        assert naturaldate(utc(2024, 6, 14, 18, 0)) == "yesterday at 23:30"


def test_yesterday_shortly_after_midnight(freeze):
    now = freeze(datetime(2024, 6, 15, 0, 30, tzinfo=BERLIN))
    assert naturaldate(now - timedelta(minutes=40)) == "40 minutes ago"
    assert naturaldate(now - timedelta(hours=2)) == "yesterday at 22:30"
    # 24 hours and 20 minutes ago: still yesterday, by the calendar.
    assert naturaldate(now - timedelta(hours=24, minutes=20)) == "yesterday at 00:10"


def test_days(freeze):
    assert naturaldate(utc(2024, 6, 12, 10, 0)) == "3 days ago"
    assert naturaldate(utc(2024, 6, 13, 21, 0)) == "2 days ago"


def test_weeks(freeze):
    assert naturaldate(ago(days=7)) == "1 week ago"
    assert naturaldate(ago(days=14)) == "2 weeks ago"


def test_months(freeze):
    assert naturaldate(ago(days=30)) == "1 month ago"
    assert naturaldate(ago(days=60)) == "2 months ago"


def test_years(freeze):
    assert naturaldate(ago(days=365)) == "1 year ago"
    assert naturaldate(ago(days=800)) == "2 years ago"


def test_a_future_date_is_just_now(freeze):
    assert naturaldate(NOW + timedelta(minutes=5)) == "just now"
    assert naturaldate(NOW + timedelta(days=3)) == "just now"


def test_a_naive_value_is_taken_as_utc_with_use_tz(freeze):
    assert naturaldate(datetime(2024, 6, 15, 9, 0)) == "1 hour ago"
    assert naturaldate(datetime(2024, 6, 13, 23, 30)) == "yesterday at 01:30"


def test_elapsed_time_across_the_end_of_summer_time(freeze):
    # 2024-10-27: Berlin's clocks go back from 03:00 CEST to 02:00 CET at 01:00 UTC.
    freeze(utc(2024, 10, 27, 1, 30))  # 02:30 CET
    assert naturaldate(utc(2024, 10, 27, 0, 15)) == "1 hour ago"  # 02:15 CEST, 75 min ago


def test_elapsed_time_across_the_start_of_summer_time(freeze):
    # 2024-03-31: Berlin's clocks go forward from 02:00 CET to 03:00 CEST at 01:00 UTC.
    freeze(utc(2024, 3, 31, 1, 30))  # 03:30 CEST
    assert naturaldate(utc(2024, 3, 31, 0, 45)) == "45 minutes ago"  # 01:45 CET


class TestWithoutUseTz:
    """Naive values in TIME_ZONE, as Django stores them with USE_TZ off."""

    NOW = datetime(2024, 6, 15, 12, 0)

    @pytest.fixture(autouse=True)
    def naive_now(self, settings, freeze):
        settings.USE_TZ = False
        freeze(self.NOW)

    def test_just_now_and_seconds(self):
        assert naturaldate(self.NOW) == "just now"
        assert naturaldate(self.NOW - timedelta(seconds=9), include_seconds=True) == (
            "9 seconds ago"
        )

    def test_minutes_and_hours(self):
        assert naturaldate(self.NOW - timedelta(minutes=2)) == "2 minutes ago"
        assert naturaldate(self.NOW - timedelta(hours=11, minutes=30)) == "11 hours ago"

    def test_yesterday(self):
        assert naturaldate(datetime(2024, 6, 14, 1, 30)) == "yesterday at 01:30"

    def test_older(self):
        assert naturaldate(datetime(2024, 6, 12, 12, 0)) == "3 days ago"
        assert naturaldate(self.NOW - timedelta(days=14)) == "2 weeks ago"
        assert naturaldate(self.NOW - timedelta(days=60)) == "2 months ago"
        assert naturaldate(self.NOW - timedelta(days=800)) == "2 years ago"

    def test_future(self):
        assert naturaldate(self.NOW + timedelta(hours=1)) == "just now"

    def test_an_aware_value_is_read_in_time_zone(self):
        # 2024-06-14 23:30 UTC is 01:30 on the 15th in Berlin: today, 10 hours 30 ago.
        assert naturaldate(utc(2024, 6, 14, 23, 30)) == "10 hours ago"
        assert naturaldate(utc(2024, 6, 13, 23, 30)) == "yesterday at 01:30"

    def test_with_the_real_clock(self, monkeypatch):
        monkeypatch.undo()
        assert naturaldate(timezone.now()) == "just now"
        assert naturaldate(timezone.now() - timedelta(minutes=3)) == "3 minutes ago"


@pytest.mark.parametrize(
    ("pluralize", "singular", "plural"),
    [
        (pluralize_year, "{num} year ago", "{num} years ago"),
        (pluralize_month, "{num} month ago", "{num} months ago"),
        (pluralize_week, "{num} week ago", "{num} weeks ago"),
        (pluralize_day, "{num} day ago", "{num} days ago"),
    ],
)
def test_pluralize(pluralize, singular, plural):
    assert pluralize(1) == singular
    assert pluralize(2) == plural
    assert pluralize(0) == plural
    assert pluralize(5).format(num=5) == plural.format(num=5)
