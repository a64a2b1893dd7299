"""The dashboard's charts, drawn on the server as SVG: no script, no library, works offline.

Every text in them goes through ``format_html``; the colors are CSS classes, so the admin's
dark mode restyles them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import datetime

from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext

#: The drawing's size in SVG units; it scales to the width of its box.
WIDTH, HEIGHT = 720, 200
#: Room for the axis labels: left, right, top, bottom.
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 10, 26


def _local(value: datetime) -> datetime:
    return timezone.localtime(value) if timezone.is_aware(value) else value


def _time_label(value: datetime, span: float) -> str:
    """A time under the chart: with its day when the chart spans a day or more."""
    local = _local(value)
    if span >= 24 * 3600:
        return formats.date_format(local, "M j H:i")
    return formats.time_format(local, "H:i")


def _count(value: float) -> str:
    """A grid line's count: whole, or with one decimal (the middle of a top of 1 or 5)."""
    if value == int(value):
        return formats.number_format(int(value), force_grouping=True)
    return formats.number_format(value, 1)


def nice_ceiling(value: float) -> float:
    """The least "round" number (1, 2 or 5 times a power of ten) at or above ``value``."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power  # pragma: no cover


def _frame(
    top: float, bins: Sequence[dict], interval: int, unit: Callable[[float], str]
) -> list[SafeString]:
    """Grid lines with their values, and a time label under every few bars."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    parts = []
    for fraction in (0, 0.5, 1):
        y = TOP + plot_h * (1 - fraction)
        parts.append(
            format_html(
                '<line class="cm-grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
                '<text class="cm-axis" x="{}" y="{}" text-anchor="end">{}</text>',
                LEFT,
                WIDTH - RIGHT,
                f"{y:.1f}",
                f"{y:.1f}",
                LEFT - 6,
                f"{y + 4:.1f}",
                unit(top * fraction),
            )
        )
    if bins:
        step = max(1, math.ceil(len(bins) / 6))
        width = plot_w / len(bins)
        for index in range(0, len(bins), step):
            parts.append(
                format_html(
                    '<text class="cm-axis" x="{}" y="{}" text-anchor="middle">{}</text>',
                    f"{LEFT + width * (index + 0.5):.1f}",
                    HEIGHT - 8,
                    _time_label(bins[index]["start"], interval * len(bins)),
                )
            )
    return parts


def _svg(label: str, parts: Sequence[SafeString]) -> SafeString:
    return format_html(
        '<svg class="cm-chart" viewBox="0 0 {} {}" role="img" aria-label="{}">{}</svg>',
        WIDTH,
        HEIGHT,
        label,
        format_html_join("", "{}", ((part,) for part in parts)),
    )


def count_chart(series: Sequence[dict], interval: int) -> SafeString:
    """Bars per interval: the tasks that succeeded and failed, stacked, and beside them the
    finished tasks that had been retried (they are among the first two, so not stacked)."""
    highest = max(
        (max(point["succeeded"] + point["failed"], point["retried"]) for point in series),
        default=0,
    )
    top = nice_ceiling(highest)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    width = plot_w / max(len(series), 1)
    gap = 1 if width > 4 else 0
    main_w = max((width - 2 * gap) * 0.7, 1)
    side_w = max(width - 2 * gap - main_w, 1)
    parts = _frame(top, series, interval, _count)
    for index, point in enumerate(series):
        title = gettext("%(ok)s succeeded, %(failed)s failed, %(retried)s retried") % {
            "ok": point["succeeded"],
            "failed": point["failed"],
            "retried": point["retried"],
        }
        when = formats.date_format(_local(point["start"]), "DATETIME_FORMAT")
        x = LEFT + width * index + gap
        bars = [
            ("cm-bar-ok", x, main_w, point["succeeded"], 0),
            ("cm-bar-fail", x, main_w, point["failed"], point["succeeded"]),
            ("cm-bar-retry", x + main_w, side_w, point["retried"], 0),
        ]
        for css, left, bar_w, value, below in bars:
            if not value:
                continue
            height = plot_h * value / top
            y = TOP + plot_h - plot_h * below / top - height
            parts.append(
                format_html(
                    '<rect class="{}" x="{}" y="{}" width="{}" height="{}">'
                    "<title>{}: {}</title></rect>",
                    css,
                    f"{left:.1f}",
                    f"{y:.1f}",
                    f"{bar_w:.1f}",
                    f"{height:.1f}",
                    when,
                    title,
                )
            )
    return _svg(gettext("Tasks per interval"), parts)


def _duration(seconds: float) -> str:
    if seconds == 0:
        return "0"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    return f"{seconds / 60:.3g} min"


def _moment(when: datetime) -> str:
    return formats.date_format(_local(when), "DATETIME_FORMAT")


def _line(
    points: Sequence[tuple[datetime, float | None]],
    top: float,
    css: str,
    radius: float,
    title: Callable[[datetime, float], str],
    area: bool = False,
) -> list[SafeString]:
    """A line through the points that have a value, broken where one has none: a dot with
    ``title(time, value)`` on hover at each point, and the area under it if asked."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    width = plot_w / max(len(points), 1)
    parts = []
    runs: list[list[tuple[float, float]]] = [[]]
    for index, (when, value) in enumerate(points):
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        x = LEFT + width * (index + 0.5)
        y = TOP + plot_h * (1 - min(value / top, 1))
        runs[-1].append((x, y))
        parts.append(
            format_html(
                '<circle class="{}" cx="{}" cy="{}" r="{}"><title>{}</title></circle>',
                css,
                f"{x:.1f}",
                f"{y:.1f}",
                radius,
                title(when, value),
            )
        )
    base = TOP + plot_h
    for run in runs:
        if len(run) > 1:
            line = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
            if area:
                under = f"{run[0][0]:.1f},{base:.1f} {line} {run[-1][0]:.1f},{base:.1f}"
                parts.append(format_html('<polygon class="cm-area-queue" points="{}"/>', under))
            parts.append(format_html('<polyline class="{}" points="{}"/>', css, line))
    return parts


def runtime_chart(series: Sequence[dict], interval: int) -> SafeString:
    """Lines of the runtime's p50 and p95 per interval (a gap where no task finished)."""
    values = [
        point[key] for point in series for key in ("runtime_p50", "runtime_p95") if point[key]
    ]
    top = nice_ceiling(max(values, default=0.0) or 1.0)
    parts = _frame(top, series, interval, _duration)
    for key, css, name in (
        ("runtime_p95", "cm-line-p95", "p95"),
        ("runtime_p50", "cm-line-p50", "p50"),
    ):
        points = [(point["start"], point[key]) for point in series]
        parts += _line(
            points,
            top,
            css,
            2.5,
            lambda when, value, name=name: f"{_moment(when)} {name}: {_duration(value)}",
        )
    return _svg(gettext("Runtime p50 and p95 per interval"), parts)


def legend(items: Sequence[tuple[str, str]]) -> SafeString:
    """A legend: ``(css class, label)`` pairs."""
    return format_html(
        '<ul class="cm-legend">{}</ul>',
        format_html_join(
            "",
            '<li><span class="cm-swatch {}"></span>{}</li>',
            ((css, label) for css, label in items),
        ),
    )


def backlog_chart(points: Sequence[tuple[datetime, int | None]], label: str) -> SafeString:
    """A queue's length over time: a line with a gap where no sample was taken, and an
    area under it."""
    values = [value for _when, value in points if value is not None]
    top = nice_ceiling(max(values, default=0))
    seconds = int((points[1][0] - points[0][0]).total_seconds()) if len(points) > 1 else 60
    bins = [{"start": when} for when, _value in points]
    parts = _frame(top, bins, seconds, _count)
    parts += _line(
        points,
        top,
        "cm-line-queue",
        2,
        lambda when, value: (
            f"{_moment(when)}: {formats.number_format(value, force_grouping=True)}"
        ),
        area=True,
    )
    return _svg(label, parts)
