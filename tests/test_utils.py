"""The utilities: time zone helpers and the admin display helpers."""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from django.test import override_settings
from django.utils import timezone
from django.utils.safestring import SafeString

from django_celery_monitor.utils import (
    action,
    correct_awareness,
    display_field,
    fixedwidth,
    fromtimestamp,
    make_aware,
)

#: 2023-11-14 22:13:20 UTC.
TIMESTAMP = 1_700_000_000
INSTANT = datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt_timezone.utc)

ZONES = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "UTC"]


def naive(*args: int) -> datetime:
    return datetime(*args)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=dt_timezone.utc)


def render(field: str, value, **options) -> str:
    """Render ``value`` as ``fixedwidth(field, ...)`` shows it in the admin."""
    return fixedwidth(field, **options)(SimpleNamespace(**{field: value}))


# make_aware


@pytest.mark.parametrize("zone", ZONES)
def test_make_aware_takes_a_naive_value_as_utc_and_returns_it_in_the_current_zone(zone):
    with override_settings(TIME_ZONE=zone):
        value = make_aware(naive(2023, 11, 14, 22, 13, 20))
        assert timezone.is_aware(value)
        assert value == INSTANT
        assert value.tzinfo == ZoneInfo(zone)
        assert value.utcoffset() == INSTANT.astimezone(ZoneInfo(zone)).utcoffset()


def test_make_aware_keeps_the_instant_of_an_aware_value():
    value = make_aware(INSTANT.astimezone(ZoneInfo("Asia/Kolkata")))
    assert value == INSTANT
    assert value.tzinfo == ZoneInfo("Europe/Berlin")
    assert (value.hour, value.minute) == (23, 13)


def test_make_aware_follows_the_activated_time_zone():
    with timezone.override(ZoneInfo("America/New_York")):
        value = make_aware(naive(2023, 11, 14, 22, 13, 20))
    assert value == INSTANT
    assert (value.day, value.hour) == (14, 17)


@override_settings(USE_TZ=False)
def test_make_aware_returns_the_value_unchanged_without_use_tz():
    value = naive(2023, 11, 14, 22, 13, 20)
    assert make_aware(value) is value


# correct_awareness


@pytest.mark.parametrize("zone", ZONES)
def test_correct_awareness_gives_an_aware_value_with_use_tz(zone):
    with override_settings(TIME_ZONE=zone):
        assert correct_awareness(naive(2023, 11, 14, 22, 13, 20)) == INSTANT
        value = correct_awareness(INSTANT)
        assert value == INSTANT
        assert timezone.is_aware(value)


@pytest.mark.parametrize(
    ("zone", "local"),
    [
        ("Europe/Berlin", naive(2023, 11, 14, 23, 13, 20)),
        ("America/New_York", naive(2023, 11, 14, 17, 13, 20)),
        ("Asia/Kolkata", naive(2023, 11, 15, 3, 43, 20)),
    ],
)
def test_correct_awareness_gives_a_naive_value_in_time_zone_without_use_tz(zone, local):
    with override_settings(USE_TZ=False, TIME_ZONE=zone):
        assert correct_awareness(INSTANT) == local
        assert timezone.is_naive(correct_awareness(INSTANT))
        value = naive(2020, 1, 1, 12, 0)
        assert correct_awareness(value) is value


@pytest.mark.parametrize("value", [None, "2023-11-14", 1_700_000_000, 1.5])
def test_correct_awareness_returns_other_values_unchanged(value):
    assert correct_awareness(value) is value


# fromtimestamp


@pytest.mark.parametrize("zone", ZONES)
def test_fromtimestamp_with_use_tz_is_the_same_instant_in_the_current_zone(zone):
    with override_settings(TIME_ZONE=zone):
        value = fromtimestamp(TIMESTAMP)
        assert timezone.is_aware(value)
        assert value == INSTANT
        assert value.timestamp() == TIMESTAMP
        assert value.tzinfo == ZoneInfo(zone)


def test_fromtimestamp_keeps_fractions_of_a_second():
    value = fromtimestamp(TIMESTAMP + 0.25)
    assert value == INSTANT + timedelta(milliseconds=250)


def test_fromtimestamp_follows_the_activated_time_zone():
    with timezone.override(ZoneInfo("Asia/Kolkata")):
        value = fromtimestamp(TIMESTAMP)
    assert value == INSTANT
    assert (value.day, value.hour, value.minute) == (15, 3, 43)


@pytest.mark.parametrize(
    ("zone", "local"),
    [
        ("Europe/Berlin", naive(2023, 11, 14, 23, 13, 20)),
        ("America/New_York", naive(2023, 11, 14, 17, 13, 20)),
        ("Asia/Kolkata", naive(2023, 11, 15, 3, 43, 20)),
        ("UTC", naive(2023, 11, 14, 22, 13, 20)),
    ],
)
def test_fromtimestamp_without_use_tz_is_naive_in_time_zone(zone, local):
    with override_settings(USE_TZ=False, TIME_ZONE=zone):
        value = fromtimestamp(TIMESTAMP)
        assert timezone.is_naive(value)
        assert value == local
        # Django reads a naive value as a time in TIME_ZONE: the same instant again.
        assert timezone.make_aware(value, ZoneInfo(zone)) == INSTANT


def test_fromtimestamp_in_summer_time():
    # 2024-07-01 12:00:00 UTC: Berlin is UTC+2 in summer.
    value = fromtimestamp(1_719_835_200)
    assert value == utc(2024, 7, 1, 12)
    assert value.hour == 14


# display_field and action


def test_display_field_sets_the_admin_attributes():
    @display_field("Task name", "name", boolean=False)
    def name(obj):
        return obj.name

    assert name.short_description == "Task name"
    assert name.admin_order_field == "name"
    assert name.boolean is False
    assert not hasattr(name, "allow_tags")
    assert name(SimpleNamespace(name="proj.add")) == "proj.add"


def test_display_field_accepts_allow_tags_and_no_order_field():
    @display_field("State", None, allow_tags=True)
    def state(obj):
        return obj.state

    assert state.short_description == "State"
    assert state.admin_order_field is None
    assert not hasattr(state, "allow_tags")


def test_action_sets_the_admin_attributes():
    @action("Revoke selected tasks", allowed_permissions=("revoke",))
    def revoke(modeladmin, request, queryset):
        return "revoked"

    assert revoke.short_description == "Revoke selected tasks"
    assert revoke.allowed_permissions == ("revoke",)
    assert revoke(None, None, None) == "revoked"


# fixedwidth


def test_fixedwidth_is_a_display_function():
    show = fixedwidth("args", name="Arguments")
    assert show.short_description == "Arguments"
    assert show.admin_order_field == "args"
    assert fixedwidth("kwargs").short_description == "kwargs"


def test_fixedwidth_renders_a_short_value_in_full():
    html = render("result", "42", pt=8)
    assert isinstance(html, SafeString)
    assert html == '<span title="42" class="cm-fixedwidth" style="font-size: 8pt;">42</span>'


def test_fixedwidth_shortens_the_body_at_maxlen_and_keeps_the_full_title():
    value = "a" * 100
    html = render("result", value, maxlen=64)
    assert f'title="{value}"' in html
    assert f">{'a' * 64}...</span>" in html


def test_fixedwidth_does_not_shorten_a_value_of_exactly_maxlen():
    html = render("result", "b" * 64, maxlen=64)
    assert "..." not in html
    assert f">{'b' * 64}</span>" in html


def test_fixedwidth_title_holds_at_most_255_characters():
    html = render("result", "c" * 1000)
    title = html.split('title="', 1)[1].split('"', 1)[0]
    assert title == "c" * 255


def test_fixedwidth_escapes_html_in_title_and_body():
    html = render("result", '<script>alert("x")</script>')
    assert "<script>" not in html
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;"
    assert f'title="{escaped}"' in html
    assert f">{escaped}</span>" in html


def test_fixedwidth_title_cannot_break_out_of_the_attribute():
    html = render("result", '" onmouseover="alert(1)')
    assert 'title="&quot; onmouseover=&quot;alert(1)"' in html
    assert html.count('"') == 6  # the quotes of the three attributes only


def test_fixedwidth_of_none_is_empty():
    assert render("result", None) == ""


def test_fixedwidth_breaks_lines_after_commas():
    html = render("args", "(1, 2, 3)")
    assert ">(1,<br> 2,<br> 3)</span>" in html
    assert 'title="(1, 2, 3)"' in html


def test_fixedwidth_escapes_each_line():
    html = render("args", "('<a>', '&')")
    assert ">(&#x27;&lt;a&gt;&#x27;,<br> &#x27;&amp;&#x27;)</span>" in html


def test_fixedwidth_pretty_prints_structures():
    value = {"alpha": 1, "beta": [1, 2, 3], "gamma": "text"}
    html = render("kwargs", value, pretty=True, width=16)
    assert "&#x27;alpha&#x27;: 1,<br>" in html
    assert "{" in html
    assert "<br>" in html


def test_fixedwidth_shows_non_string_values():
    assert ">1.5</span>" in render("runtime", 1.5)
    assert ">0</span>" in render("retries", 0)
