"""The aggregates of the recorded tasks and workers: one source for the dashboard, the JSON
API, the metrics and the health check.

Finished tasks (SUCCESS, FAILURE, REVOKED) are counted from per-minute and per-hour rollups
(:class:`~django_celery_monitor.models.TaskRollup`), written from the task table once a
minute has passed (:func:`roll_up`, run by the camera), plus the rows of the last minutes
that are not rolled up yet, read from the table. A window of 7 days at a million rows then
reads about ten thousand rollup rows and a few minutes of tasks, where aggregating the task
table itself would read every row of the window. A finished row seldom changes again: only
when its task runs once more (a message delivered twice) and ends in a state of higher
precedence (SUCCESS over FAILURE or REVOKED, see ``writer``), or in the same state with a
new time. What a rollup counted stays counted: a task that changes after its minute was
rolled up for good (:data:`REROLL`) is counted again in its new state and minute, as two
ends; one that changes sooner moves between the counts (the old one goes down by it). A
row written more than :data:`REROLL` after its minute (the database was down longer) is
counted in the window's live part until its minute is rolled up, and missed by the
rollups after that.

Runtimes and queue waits are kept as log-scale histograms of :data:`HIST_SIZE` buckets, four
a doubling from 1 ms, so a percentile is known within one bucket (19 %) and never above the
largest value seen. Unfinished tasks are counted live, per state, from the (state, tstamp)
index.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from celery import states
from django.conf import settings as django_settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from .conf import monitor_settings
from .models import (
    CameraState,
    QueueSample,
    RollupMark,
    TaskRollup,
    TaskState,
    WorkerState,
)

logger = logging.getLogger(__name__)

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
    "7d": (timedelta(days=7), 6 * 3600, 6 * 3600),
}
DEFAULT_WINDOW = "1h"

#: A minute is rolled up once it ended this long ago (its rows are written by then).
SETTLE = timedelta(seconds=60)
#: Each roll-up computes again the minutes this far back from its end, for rows written late.
REROLL = timedelta(minutes=10)
#: The most minutes one roll-up reads from the task table (a first roll-up catches up in
#: several steps).
MAX_ROLL = timedelta(hours=6)
#: How far back a first roll-up starts, and how far back it writes minutes (before, hours).
BACKFILL = timedelta(days=7)
MINUTE_BACKFILL = timedelta(hours=2)
#: The periods of the rollups, in seconds: minutes, hours and quarter days, each made from
#: the one before; and how long each is kept. The longest window reads quarter days (a few
#: thousand rows for 7 days), and the shorter ones hours or minutes. Each is kept for its
#: windows and the windows before them (the 7 days before the last 7, and the quarter day
#: in progress), which the dashboard compares them with.
LEVELS = (60, 3600, 6 * 3600)
KEEP = {60: timedelta(days=2), 3600: timedelta(days=8), 6 * 3600: timedelta(days=15)}
#: The period of the all-time rows, into which the quarter days older than that are folded.
ARCHIVE = 0
#: The period of the running totals: every finished task of the quarter days no roll-up
#: writes again (those before its mark), one row a name, state and exception type. The
#: metrics read them and the few quarter days since, not two weeks of quarter days.
TOTAL = -1

#: How many times a reading of the rollups is made again when a roll-up moved their marks
#: meanwhile (see :func:`_while_marks_hold`).
MAX_READS = 5
#: Seconds between two warnings that the rollups moved under every reading.
WARN_EVERY = 600.0
_warned_at = -float("inf")

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
#: The offline workers (the latest heard first) whose unfinished tasks are looked for even
#: before the camera marks them lost.
RECENTLY_OFFLINE = 3
MAX_WORKERS = 200
#: The most distinct heartbeat periods :func:`worker_totals` counts the online workers of
#: in the database, one count each.
MAX_PERIODS = 20


def bucket_index(value: float) -> int:
    """The histogram bucket of a duration in seconds."""
    if not value > HIST_BASE:  # NaN and negatives too
        return 0
    if value >= bucket_upper(HIST_SIZE - 1):  # infinity too
        return HIST_SIZE - 1
    return math.ceil(HIST_STEPS * (math.log2(value) - math.log2(HIST_BASE)) - 1e-9)


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


#: What ends the type at the start of a recorded exception: its arguments, a message, a
#: space (the admin's exception type filter matches the same).
TYPE_ENDS = "(: \t\n\r\f\v"
#: The longest exception type kept; a longer one is cut.
MAX_TYPE = 200
_TYPE = re.compile(f"[^{re.escape(TYPE_ENDS)}]{{0,{MAX_TYPE}}}")


def exception_type(text: str | None) -> str:
    """The type of a recorded exception: ``ValueError`` of ``ValueError('boom')``, what
    comes before the first of :data:`TYPE_ENDS`, cut to :data:`MAX_TYPE` characters (none
    when the text starts with one)."""
    if not text:
        return ""
    return _TYPE.match(text).group()


def floor_time(value: datetime, seconds: int) -> datetime:
    """``value`` rounded down to a multiple of ``seconds`` since the epoch (in its zone)."""
    epoch = datetime(1970, 1, 1, tzinfo=value.tzinfo)
    offset = (value - epoch).total_seconds()
    return epoch + timedelta(seconds=math.floor(offset / seconds) * seconds)


def _now() -> datetime:
    return timezone.now()


# -- rolling up -------------------------------------------------------------------------


def _finished_rows(using: str, start: datetime, end: datetime) -> Iterator[tuple]:
    """The finished tasks whose row time is in ``[start, end)``: one index range a state.

    Read with plain SQL and the times parsed here (the ORM's conversions of three times a
    row took most of a roll-up): ``(tstamp, name, state, exception's first 200
    characters, task_id, retries, runtime, received, started)``.
    """
    connection = connections[using]
    quote = connection.ops.quote_name
    opts = TaskState._meta
    column = {name: quote(opts.get_field(name).column) for name in (
        "tstamp", "name", "state", "exception", "task_id", "retries", "runtime",
        "received", "started",
    )}  # fmt: skip
    sql = (
        f"SELECT {column['tstamp']}, {column['name']}, {column['state']},"
        f" SUBSTR({column['exception']}, 1, 200), {column['task_id']}, {column['retries']},"
        f" {column['runtime']}, {column['received']}, {column['started']}"
        f" FROM {quote(opts.db_table)}"
        f" WHERE {column['state']} = %s AND {column['tstamp']} >= %s AND {column['tstamp']} < %s"
    )
    field = opts.get_field("tstamp")
    low, high = (field.get_db_prep_value(value, connection) for value in (start, end))
    parse = _time_parser()
    for state in FINISHED:
        with connection.cursor() as cursor:
            cursor.execute(sql, [state, low, high])
            while True:
                rows = cursor.fetchmany(5000)
                if not rows:
                    break
                for (
                    tstamp,
                    name,
                    state_,
                    exc,
                    task_id,
                    retries,
                    runtime,
                    received,
                    started,
                ) in rows:
                    yield (
                        parse(tstamp), name, state_, exc, task_id, retries, runtime,
                        parse(received), parse(started),
                    )  # fmt: skip


def _time_parser():
    """A function turning a time as the database returns it into what the ORM would give.

    SQLite returns text, MySQL naive times in UTC, PostgreSQL aware times; with ``USE_TZ``
    off every time is naive, in the site's time zone.
    """
    use_tz = django_settings.USE_TZ

    def parse(value: Any) -> datetime | None:
        if value is None:
            return None
        if value.__class__ is str:
            value = datetime.fromisoformat(value)
        if use_tz:
            return value.replace(tzinfo=dt_timezone.utc) if value.tzinfo is None else value
        if value.tzinfo is not None:
            return timezone.make_naive(value)
        return value

    return parse


def aggregate_rows(rows: Iterable[tuple], period: int) -> dict[Key, Group]:
    """Fold task rows (as :func:`_finished_rows` yields them) into groups of ``period``."""
    groups: dict[Key, Group] = {}
    # The rows of one state come in time order: the bucket of the previous row is reused.
    low = high = bucket = None
    step = timedelta(seconds=period)
    for tstamp, name, state, exception, task_id, retries, runtime, received, started in rows:
        if low is None or not low <= tstamp < high:
            bucket = low = floor_time(tstamp, period)
            high = low + step
        key = (
            bucket,
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


def _fold(groups: dict[Key, Group], period: int) -> dict[Key, Group]:
    """Groups of a shorter period merged into buckets of ``period``."""
    folded: dict[Key, Group] = {}
    for (bucket, name, state, exc), group in groups.items():
        folded.setdefault((floor_time(bucket, period), name, state, exc), Group()).merge(group)
    return folded


def roll_up(using: str = "default", now: datetime | None = None) -> int:
    """Write the rollups of the minutes, hours and quarter days that ended; return how many
    groups were written.

    Minutes are counted from the task table; each longer period from the period below it
    (:data:`LEVELS`). Idempotent: each run computes again the last :data:`REROLL` of
    minutes (and the longer buckets they fall in), so rows written a little late are
    counted. Two cameras rolling up at once is harmless: the one that loses the race leaves
    the rows to the other. Old rollups are deleted, the oldest level's folded into the
    all-time rows first.
    """
    now = now or _now()
    end = floor_time(now - SETTLE, 60)
    mark = _mark(using, 60)
    written = 0
    try:
        if mark is None and _mark(using, 3600) is None:
            # The first roll-up: the hours of the last days straight from the rows, and
            # minutes only for the last hours (the windows that read minutes are short).
            start = floor_time(end - MINUTE_BACKFILL, 3600)
            written += _roll_rows(using, 3600, floor_time(now - BACKFILL, 3600), start)
        elif mark is None:
            start = _mark(using, 3600)
        else:
            start = min(mark, max(end - REROLL, _unpurged_since(now)))
        written += _roll_rows(using, 60, start, end)
        for lower, period in itertools.pairwise(LEVELS):
            lower_until = _mark(using, lower)
            if lower_until is None:
                break
            # Up to the shorter period's mark, the bucket in progress too (it is written
            # again by the next roll-up): a long window then reads its own period only.
            level_end = lower_until
            level_mark = _mark(using, period)
            since = (
                lower_until - BACKFILL
                if level_mark is None
                else min(level_mark, lower_until - REROLL)
            )
            level_start = floor_time(since, period)
            if level_start < level_end:
                groups = _fold(_rollup_rows(using, lower, level_start, level_end), period)
                _store(using, period, level_start, level_end, groups)
                written += len(groups)
        for period in LEVELS[:-1]:
            TaskRollup.objects.using(using).filter(
                period=period, bucket__lt=now - KEEP[period]
            ).delete()
        _add_to_totals(using)
        _archive(using, floor_time(now - KEEP[LEVELS[-1]], LEVELS[-1]))
    except IntegrityError:
        # Another camera wrote the same buckets meanwhile: they are its to finish.
        pass
    return written


def _unpurged_since(now: datetime) -> datetime:
    """The first minute none of whose finished tasks the cleanup may have purged yet.

    A minute is computed again from the task table only while all its rows are there: with
    an expiry shorter than :data:`REROLL`, the minutes of the rows the cleanup purged keep
    the counts they had (the metrics' counters never go down).
    """
    kept = [
        expires
        for group, expires in monitor_settings.expire_task_states
        if expires is not None and group & set(FINISHED)
    ]
    if not kept:
        return now - BACKFILL
    return floor_time(now - min(kept), 60) + timedelta(seconds=60)


def _roll_rows(using: str, period: int, start: datetime, end: datetime) -> int:
    """Write the rollups of ``period`` in ``[start, end)`` from the task rows, in steps."""
    written = 0
    while start < end:
        stop = min(end, start + MAX_ROLL)
        groups = aggregate_rows(_finished_rows(using, start, stop), period)
        _store(using, period, start, stop, groups)
        written += len(groups)
        start = stop
    return written


def _archive(using: str, before: datetime) -> None:
    """Fold the rollups of the longest period before ``before`` into the all-time rows.

    The all-time rows (period 0) keep the totals and histograms of everything rolled up
    since the first roll-up, so the metrics' counters never go down when old rollups are
    deleted.
    """
    epoch = datetime(1970, 1, 1, tzinfo=before.tzinfo)
    old = _rollup_rows(using, LEVELS[-1], epoch, before)
    if not old:
        return
    archive = _rollup_rows(using, ARCHIVE, epoch, epoch + timedelta(seconds=1))
    for (_bucket, name, state, exc), group in old.items():
        archive.setdefault((epoch, name, state, exc), Group()).merge(group)
    with transaction.atomic(using=using):
        TaskRollup.objects.using(using).filter(period=LEVELS[-1], bucket__lt=before).delete()
        _store(using, ARCHIVE, epoch, epoch + timedelta(seconds=1), archive, mark=False)


def _add_to_totals(using: str) -> None:
    """Add the quarter days that became final since the last call to the running totals.

    A roll-up writes again the quarter days from :data:`REROLL` before the hours' mark:
    those before that, less another :data:`REROLL`, are final. A mark that went back (the
    camera host's clock did) adds nothing until it passes the totals' mark again. The
    first call starts from the all-time rows and adds every quarter day before then.
    """
    hours, quarters = _mark(using, 3600), _mark(using, LEVELS[-1])
    if hours is None or quarters is None:
        return
    final = floor_time(min(hours, quarters) - 2 * REROLL, LEVELS[-1])
    epoch = datetime(1970, 1, 1, tzinfo=final.tzinfo)
    one = (epoch, epoch + timedelta(seconds=1))
    with transaction.atomic(using=using):
        # Two cameras rolling up at once: the second waits here, then finds the work done
        # (or, for the first totals, fails on the rows' unique key and leaves them).
        since = (
            RollupMark.objects.using(using)
            .select_for_update()
            .filter(period=TOTAL)
            .values_list("until", flat=True)
            .first()
        )
        if since is not None and since >= final:
            return
        totals = _rollup_rows(using, ARCHIVE if since is None else TOTAL, *one)
        for (_bucket, name, state, exc), group in _rollup_rows(
            using, LEVELS[-1], since or epoch, final
        ).items():
            totals.setdefault((epoch, name, state, exc), Group()).merge(group)
        _store(using, TOTAL, *one, totals, mark=False)
        RollupMark.objects.using(using).update_or_create(period=TOTAL, defaults={"until": final})


def cumulative_groups(using: str = "default") -> dict[tuple[str, str, str], Group]:
    """Every finished task recorded since the first roll-up, by name, state and exception.

    Never decreases while the camera runs (old rollups are folded into all-time rows, not
    dropped): what the metrics' counters and histograms read. Reads the running totals
    (:data:`TOTAL`; before the first, the all-time rows), the rollups of each period since
    up to the next period's mark, and the tasks that finished since the last rolled-up
    minute from the table: a row or two a name, state and exception type, and a few
    minutes of tasks.
    """
    now = _now()
    sums = _while_marks_hold(using, lambda marks: _cumulative_sums(using, marks, now))
    return {
        key: Group(count, retried, runtime.digest(), wait.digest())
        for key, (count, retried, runtime, wait) in sums.items()
    }


def _cumulative_sums(
    using: str, marks: dict[int, datetime], now: datetime
) -> dict[tuple[str, str, str], list]:
    """The sums :func:`cumulative_groups` returns, read with the rollups' ``marks``."""
    epoch = datetime(1970, 1, 1, tzinfo=now.tzinfo)
    totals_until = marks.get(TOTAL)
    first = ARCHIVE if totals_until is None else TOTAL
    ranges: list[tuple[int | None, datetime, datetime]] = [
        (first, epoch, epoch + timedelta(seconds=1))
    ]
    cursor = epoch if totals_until is None else totals_until
    for period in reversed(LEVELS):
        until = marks.get(period)
        if until is not None and until > cursor:
            ranges.append((period, cursor, until))
            cursor = until
    if cursor == epoch:
        cursor = floor_time(now - BACKFILL, 60)  # never rolled up: the recent days
    ranges.append((None, cursor, now + timedelta(days=1)))
    sums: dict[tuple[str, str, str], list] = {}
    for record in _records(using, ranges):
        key = record[1:4]
        found = sums.get(key)
        if found is None:
            found = sums[key] = [0, 0, _Sum(), _Sum()]
        found[0] += record[4]
        found[1] += record[5]
        found[2].add(*record[6:10])
        found[3].add(*record[10:14])
    return sums


def unfinished_counts(using: str = "default") -> dict[str, int]:
    """How many tasks are in each unfinished state now, whatever their age.

    Counted from the (state, tstamp) index alone, so rows the expiry hid a moment before
    the purge deletes them are counted too (the task list leaves them out).
    """
    counts = {}
    for state in UNFINISHED:
        counts[state] = TaskState.objects.using(using).filter(state=state).order_by().count()
    return counts


# -- reading ------------------------------------------------------------------------------


def _marks(using: str) -> dict[int, datetime]:
    """How far the rollups of each period are written (one statement for all)."""
    return dict(RollupMark.objects.using(using).values_list("period", "until"))


def _while_marks_hold(using: str, read: Callable[[dict[int, datetime]], Any]) -> Any:
    """``read(marks)``, made again while a roll-up moved the rollups' marks meanwhile.

    A reading takes several statements: the marks, then the rollups up to them and the
    task rows after them. A roll-up that commits in between (new rollups and their mark,
    or quarter days added to the running totals) would have some tasks counted twice or
    not at all, a counter that jumps and falls back. Every such commit moves a mark, so
    marks that read the same before and after mean a reading of one moment, whatever the
    database's isolation level and whether the caller is in a transaction.
    """
    marks = _marks(using)
    for _ in range(MAX_READS):
        result = read(marks)
        after = _marks(using)
        if after == marks:
            return result
        marks = after
    # Once in a while: a camera catching up moves them for minutes, and every scrape and
    # dashboard load would say it again.
    global _warned_at
    now = time.monotonic()
    level = logging.WARNING if now - _warned_at >= WARN_EVERY else logging.DEBUG
    if level == logging.WARNING:
        _warned_at = now
    logger.log(
        level,
        "The rollups moved during each of %d readings (a camera catching up?): the last "
        "one is answered, and may count a few tasks twice or not at all.",
        MAX_READS,
    )
    return result


def _sources(
    start: datetime, end: datetime, period: int, marks: dict[int, datetime]
) -> list[tuple[int | None, datetime, datetime]]:
    """Where the finished tasks of ``[start, end)`` are read: ``(period, from, to)`` ranges.

    The rollups of ``period`` (from its bucket on) up to that period's mark, then those of
    each shorter period up to theirs, then the task rows themselves (period None): what is
    not rolled up yet. ``marks`` are the rollups' marks (:func:`_marks`).
    """
    ranges: list[tuple[int | None, datetime, datetime]] = []
    cursor = start
    for level in reversed(LEVELS):
        if level > period or cursor >= end or cursor != floor_time(cursor, level):
            continue
        until = marks.get(level)
        if until is not None and until > cursor:
            # A level's buckets are whole up to its mark (the last one up to the mark).
            upto = min(until, end)
            if upto > cursor:
                ranges.append((level, cursor, upto))
                cursor = upto
    if cursor < end:
        ranges.append((None, cursor, end))
    return ranges


def _finished_counts(
    using: str, start: datetime, end: datetime, period: int, marks: dict[int, datetime]
) -> tuple[dict[str, int], int]:
    """How many tasks finished in ``[start, end)`` by state, and how many were retried.

    Summed by the database: no histogram is read.
    """
    from django.db.models import Count, Sum

    by_state: dict[str, int] = {}
    retried = 0
    for source, low, high in _sources(start, end, period, marks):
        if source is None:
            rows = (
                TaskState.objects.using(using)
                .filter(state__in=FINISHED, tstamp__gte=low, tstamp__lt=high)
                .order_by()
            )
            for state in FINISHED:
                count = rows.filter(state=state).count()
                if count:
                    by_state[state] = by_state.get(state, 0) + count
            retried += rows.filter(retries__gt=0).count()
            continue
        sums = (
            TaskRollup.objects.using(using)
            .filter(period=source, bucket__gte=low, bucket__lt=high)
            .order_by()
            .values("state")
            .annotate(total=Sum("count"), retried=Sum("retried"), groups=Count("id"))
        )
        for row in sums:
            by_state[row["state"]] = by_state.get(row["state"], 0) + (row["total"] or 0)
            retried += row["retried"] or 0
    return by_state, retried


def _unfinished_windows(
    using: str, start: datetime, length: timedelta
) -> tuple[dict[str, int], dict[str, int]]:
    """How many tasks of each unfinished state had their latest event in the window that
    starts at ``start``, and in the one before: a statement a state, from the (state,
    tstamp) index (see :func:`unfinished_counts`)."""
    from django.db.models import Count

    current: dict[str, int] = {}
    previous: dict[str, int] = {}
    for state in UNFINISHED:
        # One state at a time: each an index-only range of (state, tstamp).
        row = (
            TaskState.objects.using(using)
            .filter(state=state, tstamp__gte=start - length, tstamp__lt=start + length)
            .order_by()
            .aggregate(
                current=Count("tstamp", filter=Q(tstamp__gte=start)),
                previous=Count("tstamp", filter=Q(tstamp__lt=start)),
            )
        )
        if row["current"]:
            current[state] = row["current"]
        if row["previous"]:
            previous[state] = row["previous"]
    return current, previous


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
    current_counts, previous_counts = _while_marks_hold(
        using,
        lambda marks: (
            _finished_counts(using, start, end, period, marks),
            _finished_counts(using, start - length, start, period, marks),
        ),
    )
    current = _totals(*current_counts, _elapsed(start, now))
    previous = _totals(*previous_counts, length)
    unfinished_now, unfinished_before = _unfinished_windows(using, start, length)
    current["states"].update(unfinished_now)
    previous["states"].update(unfinished_before)
    return {"window": window, "start": start, "end": end, "current": current, "previous": previous}


def _group_counts(groups: dict[Key, Group]) -> tuple[dict[str, int], int]:
    by_state: dict[str, int] = {}
    retried = 0
    for (_bucket, _name, state, _exc), group in groups.items():
        by_state[state] = by_state.get(state, 0) + group.count
        retried += group.retried
    return by_state, retried


def _elapsed(start: datetime, now: datetime) -> timedelta:
    """How much of a window that began at ``start`` has passed: its last interval ends
    after ``now`` (:func:`window_bounds`). A minute at least."""
    return max(now - start, timedelta(minutes=1))


def _totals(by_state: dict[str, int], retried: int, length: timedelta) -> dict[str, Any]:
    """The figures of a window of which ``length`` has passed (its counts over that time:
    ``seconds``, by which the dashboard compares a window in progress with a whole one)."""
    by_state = dict(by_state)
    finished = sum(by_state.values())
    succeeded, failed = by_state.get(states.SUCCESS, 0), by_state.get(states.FAILURE, 0)
    return {
        "states": by_state,
        "finished": finished,
        "retried": retried,
        "seconds": length.total_seconds(),
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


class _Sum:
    """A digest being summed from stored histograms (their keys kept as text until the end)."""

    __slots__ = ("count", "hist", "max", "total")

    def __init__(self) -> None:
        self.count, self.total, self.max = 0, 0.0, None
        self.hist: dict[str, int] = {}

    def add(self, count: int, total: float, maximum: float | None, hist: dict) -> None:
        if not count:
            return
        self.count += count
        self.total += total or 0.0
        if maximum is not None and (self.max is None or maximum > self.max):
            self.max = maximum
        mine = self.hist
        for key, value in hist.items():
            mine[key] = mine.get(key, 0) + value

    def digest(self) -> Digest:
        return Digest(self.count, self.total, self.max, {int(k): v for k, v in self.hist.items()})


def _json(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    return json.loads(value) if value else {}


def _datetime(value: Any) -> datetime:
    """A bucket time as the database returned it, as the ORM would return it."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if django_settings.USE_TZ and timezone.is_naive(value):
        value = value.replace(tzinfo=dt_timezone.utc)
    return value


#: One group of finished tasks: bucket, name, state, exception type, count, retried, then
#: the runtime's and the wait's count, sum, max and histogram, then the latest task.
Record = tuple


def _records(using: str, ranges) -> Iterator[Record]:
    """The groups of finished tasks of ``ranges`` (see :func:`_sources`), as plain tuples.

    Rollups are read with one plain SQL statement a range, without the ORM's per-value
    conversions: a 7-day window reads about ten thousand of them.
    """
    connection = connections[using]
    quote = connection.ops.quote_name
    table = quote(TaskRollup._meta.db_table)
    columns = ", ".join(
        quote(TaskRollup._meta.get_field(name).column)
        for name in (
            "bucket", "name", "state", "exception_type", "count", "retried",
            "runtime_count", "runtime_sum", "runtime_max", "runtime_hist",
            "wait_count", "wait_sum", "wait_max", "wait_hist", "latest_task_id",
        )
    )  # fmt: skip
    bucket_field = TaskRollup._meta.get_field("bucket")
    # The latest task's time is read for failures only (the examples the page links to).
    sql = (
        f"SELECT {columns}, CASE WHEN {quote('state')} = %s THEN {quote('latest_tstamp')} END"
        f" FROM {table} WHERE {quote('period')} = %s"
        f" AND {quote('bucket')} >= %s AND {quote('bucket')} < %s"
    )
    for source, low, high in ranges:
        if source is None:
            for (bucket, name, state, exc), group in aggregate_rows(
                _finished_rows(using, low, high), 60
            ).items():
                yield (
                    bucket, name, state, exc, group.count, group.retried,
                    group.runtime.count, group.runtime.total, group.runtime.max,
                    group.runtime.dump(), group.wait.count, group.wait.total, group.wait.max,
                    group.wait.dump(), group.latest_task_id, group.latest_tstamp,
                )  # fmt: skip
            continue
        params = [
            states.FAILURE,
            source,
            bucket_field.get_db_prep_value(low, connection),
            bucket_field.get_db_prep_value(high, connection),
        ]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            times: dict[Any, datetime] = {}
            for row in cursor.fetchall():
                raw = row[0]
                bucket = times.get(raw)
                if bucket is None:
                    bucket = times[raw] = _datetime(raw)
                yield (bucket, *row[1:9], _json(row[9]), *row[10:13], _json(row[13]), *row[14:])


def dashboard(
    window: str = DEFAULT_WINDOW, now: datetime | None = None, using: str = "default"
) -> dict[str, Any]:
    """Everything the dashboard shows for ``window`` (one of :data:`WINDOWS`)."""
    if window not in WINDOWS:
        raise ValueError(f"Unknown window {window!r}: one of {', '.join(WINDOWS)}.")
    now = now or _now()
    start, end, interval = window_bounds(window, now)
    length, period, _ = WINDOWS[window]

    def read(marks: dict[int, datetime]) -> tuple:
        bins = int(length.total_seconds() // interval)
        series = [
            {
                "start": start + timedelta(seconds=i * interval),
                "succeeded": 0,
                "failed": 0,
                "revoked": 0,
                "retried": 0,
                "runtime": _Sum(),
            }
            for i in range(bins)
        ]
        kinds = {states.SUCCESS: "succeeded", states.FAILURE: "failed", states.REVOKED: "revoked"}
        names: dict[str, dict[str, Any]] = {}
        failures: dict[str, dict[str, Any]] = {}
        by_state: dict[str, int] = {}
        retried_total = 0
        bin_of: dict[datetime, int] = {}
        for record in _records(using, _sources(start, end, period, marks)):
            bucket, name, state, exc, count, retried = record[:6]
            rc, rs, rm, rh, wc, ws, wm, wh, latest_id, latest_ts = record[6:]
            by_state[state] = by_state.get(state, 0) + count
            retried_total += retried
            kind = kinds.get(state, "revoked")
            index = bin_of.get(bucket)
            if index is None:
                index = bin_of[bucket] = int((bucket - start).total_seconds() // interval)
            if 0 <= index < bins:
                point = series[index]
                point[kind] += count
                point["retried"] += retried
                point["runtime"].add(rc, rs, rm, rh)
            entry = names.get(name)
            if entry is None:
                entry = names[name] = {
                    "name": name, "count": 0, "succeeded": 0, "failed": 0, "revoked": 0,
                    "retried": 0, "runtime": _Sum(), "wait": _Sum(),
                }  # fmt: skip
            entry["count"] += count
            entry["retried"] += retried
            entry[kind] += count
            entry["runtime"].add(rc, rs, rm, rh)
            entry["wait"].add(wc, ws, wm, wh)
            if state == states.FAILURE:
                failure = failures.setdefault(
                    exc or "",
                    {"exception_type": exc or "", "count": 0, "latest_task_id": "",
                     "latest_tstamp": None, "latest_name": ""},
                )  # fmt: skip
                failure["count"] += count
                latest = _datetime(latest_ts) if latest_ts is not None else None
                if latest is not None and (
                    failure["latest_tstamp"] is None or latest > failure["latest_tstamp"]
                ):
                    failure.update(
                        latest_task_id=latest_id, latest_tstamp=latest, latest_name=name
                    )

        previous = _finished_counts(using, start - length, start, period, marks)
        return series, names, failures, by_state, retried_total, previous

    series, names, failures, by_state, retried_total, previous_counts = _while_marks_hold(
        using, read
    )
    current = _totals(by_state, retried_total, _elapsed(start, now))
    previous = _totals(*previous_counts, length)
    unfinished_now, unfinished_before = _unfinished_windows(using, start, length)
    current["states"].update(unfinished_now)
    previous["states"].update(unfinished_before)
    totals = {"window": window, "start": start, "end": end}
    totals.update(current=current, previous=previous)

    for point in series:
        digest = point.pop("runtime").digest()
        point["runtime_p50"] = digest.quantile(0.5)
        point["runtime_p95"] = digest.quantile(0.95)
    task_names = []
    for entry in sorted(names.values(), key=lambda e: (-e["count"], e["name"]))[:MAX_NAMES]:
        decided = entry["succeeded"] + entry["failed"]
        entry["failure_rate"] = entry["failed"] / decided if decided else None
        entry["runtime"] = _percentiles(entry["runtime"].digest())
        entry["wait"] = _percentiles(entry["wait"].digest())
        task_names.append(entry)
    failure_types = sorted(failures.values(), key=lambda f: (-f["count"], f["exception_type"]))
    return {
        "window": window,
        "start": start,
        "end": end,
        "interval": interval,
        "now": now,
        "totals": totals,
        "series": series,
        "task_names": task_names,
        "failure_types": failure_types[:MAX_FAILURE_TYPES],
        "workers": workers(using),
        "worker_totals": worker_totals(using),
        "stuck": stuck_tasks(now, using),
        "cameras": camera_health(now, using),
        "queues": queue_lengths(using, now),
    }


def workers(using: str = "default", limit: int = MAX_WORKERS) -> list[dict[str, Any]]:
    """The ``limit`` workers heard from last (the latest heartbeat first, those never heard
    from last), with whether each is online. :func:`worker_totals` counts all."""
    rows = WorkerState.objects.using(using).order_by(
        F("last_heartbeat").desc(nulls_last=True), "hostname"
    )[:limit]
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


def worker_totals(using: str = "default") -> dict[str, int]:
    """How many workers there are, how many are online, and the sum of the events the
    camera missed of each (however many workers there are: :func:`workers` lists some).

    Online is :meth:`WorkerState.is_alive`, counted by the database: a count of the recent
    heartbeats for each heartbeat period the workers have (a few), each period with its own
    bound; past :data:`MAX_PERIODS` periods, the recent workers are read and checked.
    """
    from django.db.models import Count, Sum

    from .models import heartbeat_window

    rows = WorkerState.objects.using(using).order_by()
    found = rows.aggregate(total=Count("id"), missed=Sum("events_missed"))
    live = rows.filter(offline=False, last_heartbeat__isnull=False)
    grace = monitor_settings.worker_alive_grace
    now = timezone.now()
    periods = list(live.values_list("freq", flat=True).distinct()[: MAX_PERIODS + 1])
    if len(periods) <= MAX_PERIODS:
        online = 0
        for freq in periods:
            window = heartbeat_window(freq) + grace
            same = live.filter(freq=freq) if freq is not None else live.filter(freq=None)
            online += same.filter(last_heartbeat__gt=now - timedelta(seconds=window)).count()
    else:
        longest = max(heartbeat_window(f) for f in periods)
        # Two hours more: a naive time's zone may be a summer hour off; each is checked.
        reach = timedelta(seconds=longest + grace, hours=2)
        recent = live.filter(last_heartbeat__gte=now - reach).only(
            "last_heartbeat", "freq", "offline"
        )
        online = sum(1 for worker in recent.iterator(chunk_size=2000) if worker.is_alive())
    return {"total": found["total"], "online": online, "events_missed": found["missed"] or 0}


def stuck_tasks(now: datetime | None = None, using: str = "default") -> dict[str, Any]:
    """Tasks that will not finish by themselves, or take too long.

    Received or started on a worker that is offline (the tasks the camera marked lost, and
    those of the :data:`RECENTLY_OFFLINE` workers heard last), and started longer than
    ``monitor_stuck_after`` seconds ago on a worker that is online. At most :data:`MAX_STUCK`
    of each, the oldest first; each read from an index, one worker and state at a time (of
    the :data:`RECENTLY_OFFLINE` workers), so no query sorts more rows than it returns.
    """
    now = now or _now()
    after = monitor_settings.stuck_after
    workers = WorkerState.objects.using(using).order_by(F("last_heartbeat").desc(nulls_last=True))[
        : MAX_WORKERS * 5
    ]
    hostnames = {worker.pk: worker.hostname for worker in workers}
    offline = [worker.pk for worker in workers if not worker.is_alive()]
    set_offline = set(offline)
    fields = ("pk", "task_id", "name", "state", "worker_id", "started", "received", "tstamp")
    tasks = TaskState.objects.using(using).filter(hidden=False).order_by("tstamp")
    # The camera marks lost the unfinished tasks of the workers that stopped (the lost
    # index); those of the workers that stopped last may not be marked yet.
    waiting = ("RECEIVED", states.STARTED)
    found = {
        task["pk"]: task
        for task in tasks.filter(lost=True, state__in=waiting).values(*fields)[:MAX_STUCK]
    }
    for pk in offline[:RECENTLY_OFFLINE]:
        for state in waiting:
            for task in tasks.filter(worker_id=pk, state=state).values(*fields)[:MAX_STUCK]:
                found[task["pk"]] = task
    on_offline = sorted(found.values(), key=lambda task: task["tstamp"])[:MAX_STUCK]
    online = [worker.pk for worker in workers if worker.pk not in set_offline]
    running_long: list[dict] = []
    if after is not None and online:
        running_long = list(
            tasks.filter(
                state=states.STARTED, tstamp__lt=now - after, worker_id__in=online
            ).values(*fields)[:MAX_STUCK]
        )

    def describe(task: dict, reason: str) -> dict[str, Any]:
        return {
            "id": task["pk"],
            "task_id": task["task_id"],
            "name": task["name"],
            "state": task["state"],
            "worker": hostnames.get(task["worker_id"]),
            "since": task["started"] or task["received"] or task["tstamp"],
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
    heartbeat period and two shots), and not further than that in the future (a camera
    whose host's clock is ahead). ``reason`` says what is wrong otherwise, of the running
    camera heard from last.
    """
    now = now or _now()
    cameras = []
    since = now - timedelta(days=1)
    recent = (
        CameraState.objects.using(using)
        .filter(Q(last_shot__gte=since) | Q(last_shot=None, started__gte=since))
        .order_by(F("last_shot").desc(nulls_last=True), "-started")[:20]
    )
    for camera in recent:
        allowed = camera.allowed_silence
        age = (now - camera.last_shot).total_seconds() if camera.last_shot else None
        # A shot in the future by more than the silence allowed: the camera's host clock is
        # ahead of this one's, and a camera that died would look alive as long.
        healthy = camera.stopped is None and age is not None and -allowed <= age <= allowed
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
        # The running camera heard from last (a stopped one says nothing of the others).
        latest = next(camera for camera in cameras if not camera["stopped"])
        age = latest["last_shot_age"]
        if age is None:
            reason = "no camera has taken a shot yet"
        elif age < 0:
            reason = (
                f"the last shot is {-age:.0f} s in the future: the clock of the camera's "
                "host is ahead of this server's"
            )
        else:
            reason = (
                f"the last shot was {age:.0f} s ago (every {latest['frequency']:g} s expected)"
            )
    return {"ok": ok, "reason": reason, "cameras": cameras}


# -- queues -----------------------------------------------------------------------------

#: Queues whose latest sample is older than this (or three sampling periods, if longer)
#: are no longer listed.
QUEUE_RECENT = timedelta(minutes=10)
#: A queue's latest sample is stale after this (or three sampling periods, if longer).
QUEUE_STALE = timedelta(minutes=2)
#: Points of a queue's backlog chart over its window.
QUEUE_POINTS = 60


def _sample_period() -> timedelta:
    """The time between two samples of the queues (``monitor_queue_sample_every``; its
    default when sampling is off: what was sampled before is still shown)."""
    try:
        every = monitor_settings.queue_sample_every
    except Exception:  # a setting the system checks report
        every = None
    return timedelta(seconds=every or 10.0)


def queue_stale_after() -> timedelta:
    """How old a queue's latest sample may be before it is shown as stale."""
    return max(QUEUE_STALE, 3 * _sample_period())


def queues(
    window: str = DEFAULT_WINDOW, now: datetime | None = None, using: str = "default"
) -> dict[str, Any]:
    """The queues sampled lately: the latest sample of each and its backlog over ``window``.

    Each point of a backlog is the latest sample at or before its time, within a point's
    step or one and a half sampling periods, whichever is longer (a gap, None, where there
    is none: the sampler was not running, or the broker did not answer), read with one
    statement a queue of :data:`QUEUE_POINTS` index lookups, whatever the number of samples
    in the window.
    """
    if window not in WINDOWS:
        raise ValueError(f"Unknown window {window!r}: one of {', '.join(WINDOWS)}.")
    now = now or _now()
    length = WINDOWS[window][0]
    step = length / QUEUE_POINTS
    times = [now - length + step * (index + 1) for index in range(QUEUE_POINTS)]
    found = queue_lengths(using, now)
    reach = max(step, 1.5 * _sample_period())
    for entry in found:
        backlog = _backlog(using, entry["queue"], times, reach)
        entry["points"] = list(zip(times, backlog, strict=True))
    return {"window": window, "start": now - length, "end": now, "queues": found, "now": now}


def _backlog(using: str, name: str, times: list[datetime], step: timedelta) -> list[int | None]:
    """The latest length of queue ``name`` at or before each of ``times`` (within ``step``
    before it, else None)."""
    connection = connections[using]
    quote = connection.ops.quote_name
    table = quote(QueueSample._meta.db_table)
    field = QueueSample._meta.get_field("sampled")
    subquery = (
        f"(SELECT {quote('messages')} FROM {table} WHERE {quote('queue')} = %s"
        f" AND {quote('sampled')} <= %s AND {quote('sampled')} > %s"
        f" ORDER BY {quote('sampled')} DESC LIMIT 1)"
    )
    parts, params = [], []
    for moment in times:
        parts.append(subquery)
        params += [
            name,
            field.get_db_prep_value(moment, connection),
            field.get_db_prep_value(moment - step, connection),
        ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(parts), params)
        return list(cursor.fetchone())


def queue_lengths(using: str = "default", now: datetime | None = None) -> list[dict[str, Any]]:
    """The latest sample of each queue sampled in the last :data:`QUEUE_RECENT` (or three
    sampling periods, if longer).

    What the metrics export, and the queues page lists.
    """
    now = now or _now()
    samples = QueueSample.objects.using(using)
    latest = samples.order_by("-sampled").values_list("sampled", flat=True).first()
    if latest is None:
        return []
    recent_for = max(QUEUE_RECENT, 3 * _sample_period())
    recent = samples.filter(sampled__gte=max(latest, now) - recent_for).order_by()
    names = list(recent.order_by("queue").values_list("queue", flat=True).distinct()[:200])
    found = []
    for name in names:
        last = (
            samples.filter(queue=name)
            .order_by("-sampled")
            .values("sampled", "messages", "consumers", "note")
            .first()
        )
        found.append({"queue": name, **last, "age": (now - last["sampled"]).total_seconds()})
    return found
