"""The Prometheus ``/metrics`` view: the recorded tasks, the workers and the camera's health.

Everything is read through :mod:`~django_celery_monitor.stats`, so a scrape reads rollups and
a few minutes of task rows, never the whole task table. The task counters and histograms
come from :func:`~django_celery_monitor.stats.cumulative_groups`, which never decreases
while the camera runs (but for a finished task that runs again and ends otherwise within
minutes, see :mod:`~django_celery_monitor.stats`): they are proper Prometheus counters.

At most :data:`MAX_TASK_NAMES` task names are exported (those with the most finished tasks),
so a cluster whose task names are unbounded does not make every scrape bigger; how many were
left out is exported as ``celery_monitor_task_names_omitted``. The per-worker series are
those of the :data:`MAX_WORKERS` workers heard from last (all of them, but on a cluster
whose workers are named anew at each start); how many were left out is exported as
``celery_monitor_workers_omitted``.

The view needs ``prometheus_client`` (the ``metrics`` extra); without it, it answers 501.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from celery import states
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

from . import stats
from .access import DASHBOARD, staff_or_token

__all__ = ["MAX_TASK_NAMES", "MAX_WORKERS", "MonitorCollector", "metrics_view"]

#: The most task names exported, those with the most finished tasks.
MAX_TASK_NAMES = 500
#: The most workers with series of their own, those heard from last.
MAX_WORKERS = 5_000
#: The histograms' bounds: one a doubling of the stats histogram, from 1 ms. The last
#: bucket of :mod:`stats` also holds every value above its bound, so its bound is left to
#: ``+Inf``.
BUCKET_INDEXES = tuple(range(0, stats.HIST_SIZE - 1, stats.HIST_STEPS))
#: The database the metrics read.
DATABASE = "default"

MISSING = (
    "The metrics need prometheus_client: install django-celery-monitor's metrics extra, or "
    "pip install prometheus_client\n"
)

#: The help text of the camera's own metrics.
CAMERA_DOCS = {
    "events": "Events the camera received since it started.",
    "events_invalid": "Events the camera refused as invalid since it started.",
    "events_repaired": "Events the camera repaired since it started.",
    "tasks_written": "Task rows the camera wrote since it started.",
    "events_per_second": "Events per second the camera received between its last heartbeats.",
    "write_seconds": "Seconds the camera's last write took.",
    "rows_pending": "Rows the camera collected but has not written yet.",
}


def _buckets(digest: stats.Digest) -> list[tuple[str, float]]:
    """The cumulative Prometheus buckets of ``digest``, ending with ``+Inf``."""
    from prometheus_client.utils import floatToGoString

    hist = sorted(digest.hist.items())
    buckets = []
    position = seen = 0
    for index in BUCKET_INDEXES:
        while position < len(hist) and hist[position][0] <= index:
            seen += hist[position][1]
            position += 1
        buckets.append((floatToGoString(stats.bucket_upper(index)), seen))
    buckets.append(("+Inf", sum(count for _index, count in hist)))
    return buckets


class MonitorCollector:
    """A ``prometheus_client`` collector reading :mod:`stats` of one database on collect."""

    def __init__(
        self,
        using: str = DATABASE,
        max_task_names: int | None = None,
        max_workers: int | None = None,
    ) -> None:
        self.using = using
        self.max_task_names = MAX_TASK_NAMES if max_task_names is None else max_task_names
        self.max_workers = MAX_WORKERS if max_workers is None else max_workers

    def collect(self) -> Iterator[Any]:
        yield from self.task_metrics()
        yield from self.worker_metrics()
        yield from self.camera_metrics()
        yield from self.queue_metrics()

    def task_metrics(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        groups = stats.cumulative_groups(self.using)
        by_name: dict[str, int] = {}
        for (name, _state, _exc), group in groups.items():
            by_name[name] = by_name.get(name, 0) + group.count
        ranked = sorted(by_name, key=lambda name: (-by_name[name], name))
        kept = set(ranked[: self.max_task_names])

        by_state: dict[tuple[str, str], int] = {}
        failures: dict[tuple[str, str], int] = {}
        retried: dict[str, int] = {}
        runtimes: dict[str, stats.Digest] = {}
        waits: dict[str, stats.Digest] = {}
        for (name, state, exc), group in groups.items():
            if name not in kept:
                continue
            by_state[(name, state)] = by_state.get((name, state), 0) + group.count
            if state == states.FAILURE:
                failures[(name, exc)] = failures.get((name, exc), 0) + group.count
            retried[name] = retried.get(name, 0) + group.retried
            runtimes.setdefault(name, stats.Digest()).merge(group.runtime)
            waits.setdefault(name, stats.Digest()).merge(group.wait)

        tasks = CounterMetricFamily(
            "celery_monitor_tasks",
            "Finished tasks (SUCCESS, FAILURE, REVOKED) by task name and state.",
            labels=["name", "state"],
        )
        for (name, state), count in sorted(by_state.items()):
            tasks.add_metric([name, state], count)
        yield tasks

        failed = CounterMetricFamily(
            "celery_monitor_task_failures",
            "Failed tasks by task name and exception type.",
            labels=["name", "exception_type"],
        )
        for (name, exc), count in sorted(failures.items()):
            failed.add_metric([name, exc], count)
        yield failed

        retries = CounterMetricFamily(
            "celery_monitor_task_retried",
            "Finished tasks that were retried at least once, by task name.",
            labels=["name"],
        )
        for name, count in sorted(retried.items()):
            retries.add_metric([name], count)
        yield retries

        for metric, documentation, digests in (
            ("celery_monitor_task_runtime_seconds", "Runtime of finished tasks.", runtimes),
            (
                "celery_monitor_task_queue_wait_seconds",
                "Time finished tasks waited between received and started.",
                waits,
            ),
        ):
            histogram = HistogramMetricFamily(metric, documentation, labels=["name"])
            for name, digest in sorted(digests.items()):
                histogram.add_metric([name], _buckets(digest), digest.total)
            yield histogram

        omitted = GaugeMetricFamily(
            "celery_monitor_task_names_omitted",
            f"Task names left out of the task metrics (only the {self.max_task_names} with "
            "the most finished tasks are exported).",
        )
        omitted.add_metric([], len(by_name) - len(kept))
        yield omitted

        unfinished = GaugeMetricFamily(
            "celery_monitor_tasks_unfinished",
            "Tasks in each unfinished state now.",
            labels=["state"],
        )
        for state, count in stats.unfinished_counts(self.using).items():
            unfinished.add_metric([state], count)
        yield unfinished

    def worker_metrics(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        workers = stats.workers(self.using, limit=self.max_workers)
        totals = stats.worker_totals(self.using)
        online = GaugeMetricFamily("celery_monitor_workers_online", "Workers online.")
        online.add_metric([], totals["online"])
        yield online
        known = GaugeMetricFamily(
            "celery_monitor_workers", "Workers recorded, online or not (until deleted)."
        )
        known.add_metric([], totals["total"])
        yield known
        omitted = GaugeMetricFamily(
            "celery_monitor_workers_omitted",
            f"Workers left out of the per-worker metrics (only the {self.max_workers} heard "
            "from last are exported).",
        )
        omitted.add_metric([], max(0, totals["total"] - len(workers)))
        yield omitted

        def per_worker(family: Any, key: str, rows: Iterable[dict[str, Any]]) -> Any:
            for worker in rows:
                value = worker[key]
                if value is not None:
                    family.add_metric([worker["hostname"]], float(value))
            return family

        labels = ["hostname"]
        yield per_worker(
            GaugeMetricFamily(
                "celery_monitor_worker_up", "1 if the worker is online.", labels=labels
            ),
            "online",
            workers,
        )
        # An offline worker runs nothing the camera knows of: its last count would stay in
        # every sum of the series until the worker's row goes.
        yield per_worker(
            GaugeMetricFamily(
                "celery_monitor_worker_active_tasks",
                "Tasks the online worker is running, as of its last heartbeat.",
                labels=labels,
            ),
            "active",
            [worker for worker in workers if worker["online"]],
        )
        yield per_worker(
            CounterMetricFamily(
                "celery_monitor_worker_processed",
                "Tasks the worker processed since it started, as of its last heartbeat.",
                labels=labels,
            ),
            "processed",
            workers,
        )
        yield per_worker(
            GaugeMetricFamily(
                "celery_monitor_worker_events_missed",
                "Tasks of the worker whose started event the camera never received.",
                labels=labels,
            ),
            "events_missed",
            workers,
        )
        # A gauge: each worker's count starts again when the camera restarts, and leaves
        # the sum with the worker's row.
        missed = GaugeMetricFamily(
            "celery_monitor_events_missed",
            "Tasks whose started event the camera never received, over all workers, as "
            "counted since each camera started.",
        )
        missed.add_metric([], totals["events_missed"])
        yield missed

    def queue_metrics(self) -> Iterator[Any]:
        """The latest length and consumers of each queue sampled in the last minutes.

        A queue the broker did not answer for, or cannot count, has no value (a gap).
        """
        from prometheus_client.core import GaugeMetricFamily

        found = stats.queue_lengths(self.using)
        length = GaugeMetricFamily(
            "celery_monitor_queue_length",
            "Messages waiting in the queue, as last sampled.",
            labels=["queue"],
        )
        consumers = GaugeMetricFamily(
            "celery_monitor_queue_consumers",
            "Consumers of the queue, as last sampled.",
            labels=["queue"],
        )
        age = GaugeMetricFamily(
            "celery_monitor_queue_sample_age_seconds",
            "Seconds since the queue was last sampled.",
            labels=["queue"],
        )
        for queue in found:
            if queue["messages"] is not None:
                length.add_metric([queue["queue"]], queue["messages"])
            if queue["consumers"] is not None:
                consumers.add_metric([queue["queue"]], queue["consumers"])
            age.add_metric([queue["queue"]], queue["age"])
        yield length
        yield consumers
        yield age

    def camera_metrics(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        health = stats.camera_health(using=self.using)
        cameras = health["cameras"]
        healthy = GaugeMetricFamily(
            "celery_monitor_monitor_healthy",
            "1 if a camera is recording (it shot within its last periods).",
        )
        healthy.add_metric([], 1 if health["ok"] else 0)
        yield healthy

        labels = ["camera"]
        up = GaugeMetricFamily(
            "celery_monitor_camera_up", "1 if the camera shot recently.", labels=labels
        )
        last_shot = GaugeMetricFamily(
            "celery_monitor_camera_last_shot_timestamp_seconds",
            "When the camera last wrote its heartbeat (Unix time).",
            labels=labels,
        )
        for camera in cameras:
            up.add_metric([camera["key"]], 1 if camera["healthy"] else 0)
            if camera["last_shot"] is not None:
                last_shot.add_metric([camera["key"]], camera["last_shot"].timestamp())
        yield up
        yield last_shot

        for family, key in (
            (CounterMetricFamily, "events"),
            (CounterMetricFamily, "events_invalid"),
            (CounterMetricFamily, "events_repaired"),
            (CounterMetricFamily, "tasks_written"),
            (GaugeMetricFamily, "events_per_second"),
            (GaugeMetricFamily, "write_seconds"),
            (GaugeMetricFamily, "rows_pending"),
        ):
            metric = family(f"celery_monitor_camera_{key}", CAMERA_DOCS[key], labels=labels)
            for camera in cameras:
                metric.add_metric([camera["key"]], float(camera[key] or 0))
            yield metric


@staff_or_token(DASHBOARD)
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The monitor's metrics in the Prometheus text format.

    Staff with the view permission or a bearer token of ``CELERY_MONITOR_API_TOKENS`` may
    read them; 501 when ``prometheus_client`` is not installed. Only the
    :data:`MAX_TASK_NAMES` task names with the most finished tasks are exported.
    """
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    except ImportError:
        return HttpResponse(MISSING, status=501, content_type="text/plain; charset=utf-8")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
