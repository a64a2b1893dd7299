"""The aggregates of the recorded tasks and workers: one source for the dashboard, the JSON
API, the metrics and the health check.

Finished tasks (SUCCESS, FAILURE, REVOKED) are counted from per-minute and per-hour rollups
(:class:`~django_celery_monitor.models.TaskRollup`), written from the task table once a
minute has passed (:func:`roll_up`, run by the camera), plus the rows of the last minutes
that are not rolled up yet, read from the table. A window of 7 days at a million rows then
reads about ten thousand rollup rows and a few minutes of tasks, where aggregating the task
table itself would read every row of the window. A finished row never changes state again
(see ``writer``), so what a rollup counted stays true; a row written more than
:data:`REROLL` after its minute (the database was down longer) is counted in the window's
live part until its minute is rolled up, and missed by the rollups after that.

Runtimes and queue waits are kept as log-scale histograms of :data:`HIST_SIZE` buckets, four
a doubling from 1 ms, so a percentile is known within one bucket (19 %) and never above the
largest value seen. Unfinished tasks are counted live, per state, from the (state, tstamp)
index.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import states
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.db.models.functions import Substr
from django.utils import timezone

from .conf import monitor_settings
from .models import CameraState, RollupMark, TaskRollup, TaskState, WorkerState

__all__ = [
    "WINDOWS",
    "Digest",
    "camera_health",
    "cumulative_groups",
    "dashboard",
    "roll_up",
    "stuck_tasks",
    "unfinished_counts",
    "window_totals",
    "workers",
]

#: The finished states: a row in one of them never changes state again.
FINISHED = (states.SUCCESS, states.FAILURE, states.REVOKED)
#: The unfinished states the dashboard counts.
UNFINISHED = (states.PENDING, "RECEIVED", states.STARTED, states.RETRY, states.REJECTED)

#: A window: its length, the rollup period it reads, and its chart's interval (seconds).
WINDOWS: dict[str, tuple[timedelta, int, int]] = {
    "15m": (timedelta(minutes=15), 60, 60),
    "1h": (timedelta(hours=1), 60, 120),
    "24h": (timedelta(hours=24), 3600, 3600),
    "7d": (timedelta(days=7), 3600, 6 * 3600),
}
DEFAULT_WINDOW = "1h"

#: A minute is rolled up once it ended this long ago (its rows are written by then).
SETTLE = timedelta(seconds=60)
#: Each roll-up computes again the minutes this far back from its end, for rows written late.
REROLL = timedelta(minutes=10)
#: The most minutes one roll-up reads from the task table (a first roll-up catches up in
#: several steps).
MAX_ROLL = timedelta(hours=6)
#: How far back a first roll-up starts.
BACKFILL = timedelta(days=7)
#: How long minute rollups are kept (hours are made from them), and hour rollups.
MINUTE_ROLLUPS_KEEP = timedelta(days=2)
HOUR_ROLLUPS_KEEP = timedelta(days=35)
#: The period of the all-time rows, into which hours older than that are folded.
ARCHIVE = 0

#: The histogram: bucket ``i`` holds the values up to ``HIST_BASE * 2 ** (i / HIST_STEPS)``
#: seconds (bucket 0 everything up to 1 ms, the last everything above its lower bound).
HIST_BASE = 0.001
HIST_STEPS = 4
HIST_SIZE = 4 * 28 + 1  # up to 2 ** 28 ms: three days

#: The most task names and exception types the dashboard lists.
MAX_NAMES = 50
MAX_FAILURE_TYPES = 20
#: The most stuck tasks and workers listed.
MAX_STUCK = 20
MAX_WORKERS = 200


def bucket_index(value: float) -> int:
    """The histogram bucket of a duration in seconds."""
    if not value > HIST_BASE:  # NaN and negatives too
        return 0
    return min(math.ceil(HIST_STEPS * math.log2(value / HIST_BASE) - 1e-9), HIST_SIZE - 1)


def bucket_upper(index: int) -> float:
    """The upper bound of histogram bucket ``index``, in seconds."""
    return HIST_BASE * 2 ** (index / HIST_STEPS)


@dataclass
class Digest:
    """A count, sum, maximum and log-scale histogram of durations."""

    count: int = 0
    total: float = 0.0
    max: float | None = None
    hist: dict[int, int] = field(default_factory=dict)

    def add(self, value: float | None) -> None:
        if value is None or not math.isfinite(value) or value < 0:
            return
        self.count += 1
        self.total += value
        if self.max is None or value > self.max:
            self.max = value
        index = bucket_index(value)
        self.hist[index] = self.hist.get(index, 0) + 1

    def merge(self, other: Digest) -> None:
        self.count += other.count
        self.total += other.total
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max
        for index, count in other.hist.items():
            self.hist[index] = self.hist.get(index, 0) + count

    @classmethod
    def load(cls, count: int, total: float, maximum: float | None, hist: Any) -> Digest:
        """A digest from its stored columns (JSON keys are strings)."""
        parsed = {int(k): int(v) for k, v in (hist or {}).items()}
        return cls(count or 0, total or 0.0, maximum, parsed)

    def dump(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(self.hist.items())}

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile, interpolated within its bucket; None without values."""
        if not self.count:
            return None
        target = q * self.count
        seen = 0
        for index in sorted(self.hist):
            count = self.hist[index]
            if seen + count >= target and count:
                fraction = max(0.0, min(1.0, (target - seen) / count))
                upper = bucket_upper(index)
                if index == 0:
                    value = upper * fraction
                else:
                    lower = bucket_upper(index - 1)
                    value = lower * (upper / lower) ** fraction
                return min(value, self.max) if self.max is not None else value
            seen += count
        return self.max

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


@dataclass
class Group:
    """The finished tasks of one bucket, name, state and exception type."""

    count: int = 0
    retried: int = 0
    runtime: Digest = field(default_factory=Digest)
    wait: Digest = field(default_factory=Digest)
    latest_tstamp: datetime | None = None
    latest_task_id: str = ""

    def add_row(self, tstamp, task_id, retries, runtime, received, started) -> None:
        self.count += 1
        if retries:
            self.retried += 1
        self.runtime.add(runtime)
        if received is not None and started is not None:
            self.wait.add((started - received).total_seconds())
        if self.latest_tstamp is None or tstamp > self.latest_tstamp:
            self.latest_tstamp, self.latest_task_id = tstamp, task_id

    def merge(self, other: Group) -> None:
        self.count += other.count
        self.retried += other.retried
        self.runtime.merge(other.runtime)
        self.wait.merge(other.wait)
        if other.latest_tstamp is not None and (
            self.latest_tstamp is None or other.latest_tstamp > self.latest_tstamp
        ):
            self.latest_tstamp, self.latest_task_id = other.latest_tstamp, other.latest_task_id


#: (bucket start, name, state, exception type)
Key = tuple[datetime, str, str, str]


def exception_type(text: str | None) -> str:
    """The type of a recorded exception: ``ValueError`` of ``ValueError('boom')``."""
    if not text:
        return ""
    head = text.split("(", 1)[0].split(":", 1)[0].strip()
    words = head.split()
    return words[0][:200] if words else ""


def floor_time(value: datetime, seconds: int) -> datetime:
    """``value`` rounded down to a multiple of ``seconds`` since the epoch (in its zone)."""
    epoch = datetime(1970, 1, 1, tzinfo=value.tzinfo)
    offset = (value - epoch).total_seconds()
    return epoch + timedelta(seconds=math.floor(offset / seconds) * seconds)


def _now() -> datetime:
    return timezone.now()


# -- rolling up -------------------------------------------------------------------------


def _finished_rows(using: str, start: datetime, end: datetime) -> Iterator[tuple]:
    """The finished tasks whose row time is in ``[start, end)``: one index range a state."""
    for state in FINISHED:
        rows = (
            TaskState.objects.using(using)
            .filter(state=state, tstamp__gte=start, tstamp__lt=end)
            .order_by()
            .annotate(exception_head=Substr("exception", 1, 200))
            .values_list(
                "tstamp",
                "name",
                "state",
                "exception_head",
                "task_id",
                "retries",
                "runtime",
                "received",
                "started",
            )
        )
        yield from rows.iterator(chunk_size=5000)


def aggregate_rows(rows: Iterable[tuple], period: int) -> dict[Key, Group]:
    """Fold task rows (as :func:`_finished_rows` yields them) into groups of ``period``."""
    groups: dict[Key, Group] = {}
    for tstamp, name, state, exception, task_id, retries, runtime, received, started in rows:
        key = (
            floor_time(tstamp, period),
            name or "",
            state,
            exception_type(exception) if state == states.FAILURE else "",
        )
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group()
        group.add_row(tstamp, task_id, retries, runtime, received, started)
    return groups


def _rollup_rows(using: str, period: int, start: datetime, end: datetime) -> dict[Key, Group]:
    """The stored rollups of ``period`` in ``[start, end)``, as groups."""
    groups: dict[Key, Group] = {}
    rows = (
        TaskRollup.objects.using(using)
        .filter(period=period, bucket__gte=start, bucket__lt=end)
        .order_by()
        .values_list(
            "bucket",
            "name",
            "state",
            "exception_type",
            "count",
            "retried",
            "runtime_count",
            "runtime_sum",
            "runtime_max",
            "runtime_hist",
            "wait_count",
            "wait_sum",
            "wait_max",
            "wait_hist",
            "latest_task_id",
            "latest_tstamp",
        )
    )
    for bucket, name, state, exc, count, retried, rc, rs, rm, rh, wc, ws, wm, wh, tid, ts in rows:
        groups[(bucket, name, state, exc)] = Group(
            count, retried, Digest.load(rc, rs, rm, rh), Digest.load(wc, ws, wm, wh), ts, tid
        )
    return groups


def _store(
    using: str, period: int, start: datetime, end: datetime, groups: dict, mark: bool = True
) -> None:
    """Replace the rollups of ``period`` in ``[start, end)`` by ``groups``."""
    objects = [
        TaskRollup(
            period=period,
            bucket=bucket,
            name=name[:200],
            state=state,
            exception_type=exc,
            count=group.count,
            retried=group.retried,
            runtime_count=group.runtime.count,
            runtime_sum=group.runtime.total,
            runtime_max=group.runtime.max,
            runtime_hist=group.runtime.dump(),
            wait_count=group.wait.count,
            wait_sum=group.wait.total,
            wait_max=group.wait.max,
            wait_hist=group.wait.dump(),
            latest_task_id=group.latest_task_id,
            latest_tstamp=group.latest_tstamp,
        )
        for (bucket, name, state, exc), group in groups.items()
    ]
    with transaction.atomic(using=using):
        TaskRollup.objects.using(using).filter(
            period=period, bucket__gte=start, bucket__lt=end
        ).delete()
        TaskRollup.objects.using(using).bulk_create(objects, batch_size=500)
        if mark:
            RollupMark.objects.using(using).update_or_create(
                period=period, defaults={"until": end}
            )


def _mark(using: str, period: int) -> datetime | None:
    return (
        RollupMark.objects.using(using)
        .filter(period=period)
        .values_list("until", flat=True)
        .first()
    )


def roll_up(using: str = "default", now: datetime | None = None) -> int:
    """Write the rollups of the minutes and hours that ended; return how many groups.

    Idempotent: each run computes again the last :data:`REROLL` of minutes (and the hours
    they fall in), so rows written a little late are counted. Two cameras rolling up at once
    is harmless: the one that loses the race leaves the rows to the other.
    """
    now = now or _now()
    end = floor_time(now - SETTLE, 60)
    mark = _mark(using, 60)
    start = floor_time(now - BACKFILL, 60) if mark is None else min(mark, end - REROLL)
    written = 0
    try:
        while start < end:
            stop = min(end, start + MAX_ROLL)
            groups = aggregate_rows(_finished_rows(using, start, stop), 60)
            _store(using, 60, start, stop, groups)
            written += len(groups)
            start = stop
        # Hours from minutes: every hour that ended before the minutes' mark.
        minutes_until = _mark(using, 60)
        if minutes_until is not None:
            hours_end = floor_time(minutes_until, 3600)
            hour_mark = _mark(using, 3600)
            hours_start = floor_time(
                (minutes_until - BACKFILL)
                if hour_mark is None
                else min(hour_mark, minutes_until - REROLL),
                3600,
            )
            if hours_start < hours_end:
                minutes = _rollup_rows(using, 60, hours_start, hours_end)
                hours: dict[Key, Group] = {}
                for (bucket, name, state, exc), group in minutes.items():
                    key = (floor_time(bucket, 3600), name, state, exc)
                    hours.setdefault(key, Group()).merge(group)
                _store(using, 3600, hours_start, hours_end, hours)
                written += len(hours)
        TaskRollup.objects.using(using).filter(
            period=60, bucket__lt=now - MINUTE_ROLLUPS_KEEP
        ).delete()
        _archive_hours(using, floor_time(now - HOUR_ROLLUPS_KEEP, 3600))
    except IntegrityError:
        # Another camera wrote the same buckets meanwhile: they are its to finish.
        pass
    return written


def _archive_hours(using: str, before: datetime) -> None:
    """Fold the hour rollups before ``before`` into the all-time rows (period 0).

    The all-time rows keep the totals and histograms of everything rolled up since the
    first roll-up, so the metrics' counters never go down when old hours are deleted.
    """
    old = _rollup_rows(using, 3600, datetime(1970, 1, 1, tzinfo=before.tzinfo), before)
    if not old:
        return
    epoch = datetime(1970, 1, 1, tzinfo=before.tzinfo)
    archive = _rollup_rows(using, ARCHIVE, epoch, epoch + timedelta(seconds=1))
    for (_bucket, name, state, exc), group in old.items():
        archive.setdefault((epoch, name, state, exc), Group()).merge(group)
    with transaction.atomic(using=using):
        TaskRollup.objects.using(using).filter(period=3600, bucket__lt=before).delete()
        _store(using, ARCHIVE, epoch, epoch + timedelta(seconds=1), archive, mark=False)


def cumulative_groups(using: str = "default") -> dict[tuple[str, str, str], Group]:
    """Every finished task recorded since the first roll-up, by name, state and exception.

    Never decreases while the camera runs (old hours are folded into all-time rows, not
    dropped): what the metrics' counters and histograms read. The tasks that finished
    since the last rolled-up minute are read from the table.
    """
    epoch = datetime(1970, 1, 1, tzinfo=_now().tzinfo)
    groups: dict[tuple[str, str, str], Group] = {}

    def add(more: dict[Key, Group]) -> None:
        for (_bucket, name, state, exc), group in more.items():
            found = groups.get((name, state, exc))
            if found is None:
                groups[(name, state, exc)] = group
            else:
                found.merge(group)

    add(_rollup_rows(using, ARCHIVE, epoch, epoch + timedelta(seconds=1)))
    hour_mark, minute_mark = _mark(using, 3600), _mark(using, 60)
    cursor = epoch
    if hour_mark is not None:
        add(_rollup_rows(using, 3600, epoch, hour_mark))
        cursor = hour_mark
    if minute_mark is not None and minute_mark > cursor:
        add(_rollup_rows(using, 60, cursor, minute_mark))
        cursor = minute_mark
    if cursor == epoch:
        cursor = floor_time(_now() - BACKFILL, 60)  # never rolled up: the recent days
    add(aggregate_rows(_finished_rows(using, cursor, _now() + timedelta(days=1)), 60))
    return groups


def unfinished_counts(using: str = "default") -> dict[str, int]:
    """How many tasks are in each unfinished state now, whatever their age."""
    counts = {}
    for state in UNFINISHED:
        counts[state] = (
            TaskState.objects.using(using).filter(state=state, hidden=False).order_by().count()
        )
    return counts


# -- reading ------------------------------------------------------------------------------


def _finished_groups(using: str, start: datetime, end: datetime, period: int) -> dict[Key, Group]:
    """The finished tasks of ``[start, end)`` in groups: rollups where written, then rows.

    ``period`` is the coarsest rollup to read (3600 reads hours, then minutes). The groups'
    bucket times are those of their source (hours, minutes).
    """
    groups: dict[Key, Group] = {}

    def add(more: dict[Key, Group]) -> None:
        for key, group in more.items():
            found = groups.get(key)
            if found is None:
                groups[key] = group
            else:
                found.merge(group)

    cursor = start
    if period == 3600:
        hour_mark = _mark(using, 3600)
        if hour_mark is not None and hour_mark > cursor and cursor == floor_time(cursor, 3600):
            upto = min(floor_time(hour_mark, 3600), end)
            add(_rollup_rows(using, 3600, cursor, upto))
            cursor = max(cursor, upto)
    minute_mark = _mark(using, 60)
    if minute_mark is not None and minute_mark > cursor:
        upto = min(minute_mark, end)
        add(_rollup_rows(using, 60, cursor, upto))
        cursor = max(cursor, upto)
    if cursor < end:
        add(aggregate_rows(_finished_rows(using, cursor, end), 60))
    return groups


def _unfinished_counts(using: str, start: datetime, end: datetime) -> dict[str, int]:
    """How many tasks of each unfinished state had their latest event in ``[start, end)``."""
    counts = {}
    for state in UNFINISHED:
        count = (
            TaskState.objects.using(using)
            .filter(state=state, tstamp__gte=start, tstamp__lt=end, hidden=False)
            .order_by()
            .count()
        )
        if count:
            counts[state] = count
    return counts


def window_bounds(window: str, now: datetime | None = None) -> tuple[datetime, datetime, int]:
    """``(start, end, interval)`` of ``window``: its chart's intervals, the last one current."""
    length, _period, interval = WINDOWS[window]
    now = now or _now()
    end = floor_time(now, interval) + timedelta(seconds=interval)
    return end - length, end, interval


def window_totals(
    window: str = DEFAULT_WINDOW, now: datetime | None = None, using: str = "default"
) -> dict[str, Any]:
    """Totals by state, throughput and failure rate of ``window`` and the one before."""
    start, end, _interval = window_bounds(window, now)
    length, period, _ = WINDOWS[window]
    current = _totals(_finished_groups(using, start, end, period), length)
    current["states"].update(_unfinished_counts(using, start, end))
    previous = _totals(_finished_groups(using, start - length, start, period), length)
    previous["states"].update(_unfinished_counts(using, start - length, start))
    return {"window": window, "start": start, "end": end, "current": current, "previous": previous}


def _totals(groups: dict[Key, Group], length: timedelta) -> dict[str, Any]:
    by_state: dict[str, int] = {}
    retried = 0
    for (_bucket, _name, state, _exc), group in groups.items():
        by_state[state] = by_state.get(state, 0) + group.count
        retried += group.retried
    finished = sum(by_state.values())
    succeeded, failed = by_state.get(states.SUCCESS, 0), by_state.get(states.FAILURE, 0)
    return {
        "states": by_state,
        "finished": finished,
        "retried": retried,
        "throughput_per_minute": finished / (length.total_seconds() / 60),
        "failure_rate": failed / (succeeded + failed) if succeeded + failed else None,
    }


def _percentiles(digest: Digest) -> dict[str, float | None]:
    return {
        "p50": digest.quantile(0.5),
        "p95": digest.quantile(0.95),
        "max": digest.max,
        "mean": digest.mean,
        "count": digest.count,
    }


def dashboard(
    window: str = DEFAULT_WINDOW, now: datetime | None = None, using: str = "default"
) -> dict[str, Any]:
    """Everything the dashboard shows for ``window`` (one of :data:`WINDOWS`)."""
    if window not in WINDOWS:
        raise ValueError(f"Unknown window {window!r}: one of {', '.join(WINDOWS)}.")
    now = now or _now()
    start, end, interval = window_bounds(window, now)
    length, period, _ = WINDOWS[window]
    groups = _finished_groups(using, start, end, period)
    totals = window_totals(window, now, using)

    bins = int(length.total_seconds() // interval)
    series = [
        {
            "start": start + timedelta(seconds=i * interval),
            "succeeded": 0,
            "failed": 0,
            "revoked": 0,
            "retried": 0,
            "runtime": Digest(),
        }
        for i in range(bins)
    ]
    names: dict[str, dict[str, Any]] = {}
    failures: dict[str, Group] = {}
    failure_names: dict[str, str] = {}
    for (bucket, name, state, exc), group in groups.items():
        index = int((bucket - start).total_seconds() // interval)
        if 0 <= index < bins:
            point = series[index]
            key = {states.SUCCESS: "succeeded", states.FAILURE: "failed"}.get(state, "revoked")
            point[key] += group.count
            point["retried"] += group.retried
            point["runtime"].merge(group.runtime)
        entry = names.setdefault(
            name,
            {"name": name, "count": 0, "succeeded": 0, "failed": 0, "revoked": 0, "retried": 0,
             "runtime": Digest(), "wait": Digest()},
        )  # fmt: skip
        entry["count"] += group.count
        entry["retried"] += group.retried
        entry[{states.SUCCESS: "succeeded", states.FAILURE: "failed"}.get(state, "revoked")] += (
            group.count
        )
        entry["runtime"].merge(group.runtime)
        entry["wait"].merge(group.wait)
        if state == states.FAILURE:
            found = failures.setdefault(exc or "?", Group())
            before = found.latest_tstamp
            found.merge(group)
            if found.latest_tstamp != before:
                failure_names[exc or "?"] = name

    for point in series:
        digest = point.pop("runtime")
        point["runtime_p50"] = digest.quantile(0.5)
        point["runtime_p95"] = digest.quantile(0.95)
    task_names = []
    for entry in sorted(names.values(), key=lambda e: (-e["count"], e["name"]))[:MAX_NAMES]:
        decided = entry["succeeded"] + entry["failed"]
        entry["failure_rate"] = entry["failed"] / decided if decided else None
        entry["runtime"] = _percentiles(entry["runtime"])
        entry["wait"] = _percentiles(entry["wait"])
        task_names.append(entry)
    failure_types = [
        {
            "exception_type": exc,
            "count": group.count,
            "latest_task_id": group.latest_task_id,
            "latest_tstamp": group.latest_tstamp,
            "latest_name": failure_names.get(exc, ""),
        }
        for exc, group in sorted(failures.items(), key=lambda i: (-i[1].count, i[0]))[
            :MAX_FAILURE_TYPES
        ]
    ]
    return {
        "window": window,
        "start": start,
        "end": end,
        "interval": interval,
        "now": now,
        "totals": totals,
        "series": series,
        "task_names": task_names,
        "failure_types": failure_types,
        "workers": workers(using),
        "stuck": stuck_tasks(now, using),
        "cameras": camera_health(now, using),
    }


def workers(using: str = "default") -> list[dict[str, Any]]:
    """The workers, the latest heartbeat first, with whether each is online."""
    rows = WorkerState.objects.using(using).order_by("-last_heartbeat", "hostname")[:MAX_WORKERS]
    return [
        {
            "id": worker.pk,
            "hostname": worker.hostname,
            "online": worker.is_alive(),
            "last_heartbeat": worker.last_heartbeat,
            "processed": worker.processed,
            "active": worker.active,
            "loadavg": worker.loadavg,
            "events_missed": worker.events_missed,
            "sw_ver": worker.sw_ver,
        }
        for worker in rows
    ]


def stuck_tasks(now: datetime | None = None, using: str = "default") -> dict[str, Any]:
    """Tasks that will not finish by themselves, or take too long.

    Received or started on a worker that is offline (or marked lost), and started longer
    than ``monitor_stuck_after`` seconds ago. Each read from an index; at most
    :data:`MAX_STUCK` of each, the oldest first.
    """
    now = now or _now()
    after = monitor_settings.stuck_after
    offline = [
        worker.pk
        for worker in WorkerState.objects.using(using).order_by()[: MAX_WORKERS * 5]
        if not worker.is_alive()
    ]
    base = TaskState.objects.using(using).filter(hidden=False).select_related("worker")
    on_offline = list(
        base.filter(state__in=("RECEIVED", states.STARTED), worker_id__in=offline).order_by(
            "tstamp"
        )[:MAX_STUCK]
    )
    running_long = []
    if after is not None:
        running_long = list(
            base.filter(state=states.STARTED, tstamp__lt=now - after)
            .exclude(worker_id__in=offline)
            .order_by("tstamp")[:MAX_STUCK]
        )

    def describe(task: TaskState, reason: str) -> dict[str, Any]:
        return {
            "id": task.pk,
            "task_id": task.task_id,
            "name": task.name,
            "state": task.state,
            "worker": task.worker.hostname if task.worker else None,
            "since": task.started or task.received or task.tstamp,
            "reason": reason,
        }

    return {
        "threshold": after,
        "tasks": [describe(t, "worker offline") for t in on_offline]
        + [describe(t, "running long") for t in running_long],
    }


def camera_health(now: datetime | None = None, using: str = "default") -> dict[str, Any]:
    """Whether a camera is recording: it shot within the last few of its periods.

    ``ok`` is true while at least one camera that has not stopped wrote its heartbeat within
    ``CameraState.allowed_silence`` (three periods, and never less than an idle camera's
    heartbeat period and two shots). ``reason`` says what is wrong otherwise.
    """
    now = now or _now()
    cameras = []
    since = now - timedelta(days=1)
    recent = (
        CameraState.objects.using(using)
        .filter(Q(last_shot__gte=since) | Q(last_shot=None, started__gte=since))
        .order_by("-last_shot")[:20]
    )
    for camera in recent:
        allowed = camera.allowed_silence
        age = (now - camera.last_shot).total_seconds() if camera.last_shot else None
        healthy = camera.stopped is None and age is not None and age <= allowed
        cameras.append(
            {
                "key": camera.key,
                "hostname": camera.hostname,
                "pid": camera.pid,
                "version": camera.version,
                "shard": camera.shard,
                "frequency": camera.frequency,
                "started": camera.started,
                "last_shot": camera.last_shot,
                "last_shot_age": age,
                "stopped": camera.stopped,
                "healthy": healthy,
                "events": camera.events,
                "events_per_second": camera.events_per_second,
                "events_invalid": camera.events_invalid,
                "events_repaired": camera.events_repaired,
                "tasks_written": camera.tasks_written,
                "write_seconds": camera.write_seconds,
                "rows_pending": camera.rows_pending,
            }
        )
    ok = any(camera["healthy"] for camera in cameras)
    if ok:
        reason = "a camera shot within its last periods"
    elif not cameras:
        reason = "no camera has run in the last day"
    elif all(camera["stopped"] for camera in cameras):
        reason = "the camera stopped"
    else:
        latest = cameras[0]
        age = latest["last_shot_age"]
        reason = (
            "no camera has taken a shot yet"
            if age is None
            else f"the last shot was {age:.0f} s ago (every {latest['frequency']:g} s expected)"
        )
    return {"ok": ok, "reason": reason, "cameras": cameras}
