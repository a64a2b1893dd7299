"""Whether a backlog of unfinished tasks slows the camera's shots down.

A camera first takes in ``--backlog`` unfinished tasks (received, ``--started`` of them
started too), which its first shot writes. Then shots of ``--events`` new events each (new
tasks received, started and finished) are timed on that camera, against the same shots on a
fresh camera with no backlog writing to the same database (so the tables are the same size).
The two alternate, and the medians of ``--rounds`` shots are compared: a camera that rewrote
its unfinished tasks at every shot (1.1.2 did) would be the backlog's size slower.

Celery's ``State`` itself walks all the tasks it holds when a snapshot camera clears it after
a shot (``clear_after``): that part of each shot is timed apart (the State given to the
camera times its own clear), so the camera's own part of the shot shows too.

    .venv/bin/python benchmarks/backlog.py                 # SQLite file in a temp dir
    .venv/bin/python benchmarks/backlog.py --postgresql
    .venv/bin/python benchmarks/backlog.py --backlog 50000 --rounds 9
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

#: The target: a shot with the backlog at most this many times a shot without.
TARGET = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_database_options(parser, allow_all=False)
    parser.add_argument("--backlog", type=int, default=200_000, help="unfinished tasks")
    parser.add_argument(
        "--started", type=float, default=0.2, help="the share of the backlog that started"
    )
    parser.add_argument("--events", type=int, default=100, help="new events per shot")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workers", type=int, default=4)
    options = parser.parse_args()

    if common.skipped(options.backend):
        return
    db = common.Database(options.backend, options.sqlite_journal)
    db.setup()
    try:
        with common.camera_process():  # the cameras run here as in their own process
            run(db, options)
    finally:
        db.teardown()


def timed_state_class() -> type:
    """Celery's State, timing what its clear after each shot costs (``clear_after``)."""
    from celery.events.state import State

    class TimedState(State):
        clear_seconds = 0.0

        def _clear(self, ready: bool = True) -> None:
            start = time.perf_counter()
            try:
                super()._clear(ready)
            finally:
                self.clear_seconds += time.perf_counter() - start

    return TimedState


def run(db: common.Database, options: argparse.Namespace) -> None:
    from django_celery_monitor.models import TaskState

    State = timed_state_class()
    db.fresh()
    app = common.celery_app()
    backlog = options.backlog
    # Held whole: a State smaller than the backlog would forget the oldest tasks.
    camera = common.make_camera(State(max_tasks_in_memory=backlog + 50_000), app)
    queued = list(common.queued_events(backlog, options.started, options.workers))
    handle = camera.state.event
    start = time.perf_counter()
    for event in queued:
        handle(event)
    fed = time.perf_counter() - start
    del queued
    camera.capture(force=True)
    first = time.perf_counter() - start - fed
    recorded = TaskState.objects.count()
    started = int(backlog * options.started)
    print(
        f"{options.backend}: a backlog of {backlog:,} unfinished tasks (about {started:,} "
        f"started): fed in {fed:.1f} s, written by the first shot in {first:.1f} s; then "
        f"shots of {options.events} new events, {options.rounds} rounds"
        f"{common.journal_note(options.backend, options.sqlite_journal)}",
        flush=True,
    )
    lost = backlog - recorded
    if lost:
        print(
            f"  WARNING: the first shot recorded {recorded:,} of the {backlog:,} tasks: "
            f"{lost:,} were dropped",
            flush=True,
        )
    fresh = common.make_camera(State(), app)
    # New work for each camera: whole tasks, from streams of their own, timed from now.
    new_work = {"record": False, "start": time.time() - 5}
    streams = {
        "backlog": iter(common.Stream(10**9, workers=options.workers, seed=11, **new_work)),
        "fresh": iter(common.Stream(10**9, workers=options.workers, seed=12, **new_work)),
    }
    cameras = {"backlog": camera, "fresh": fresh}
    for cam in cameras.values():
        # The backlog's workers sent their heartbeats when it was built, minutes before the
        # shots: the camera would mark its 200,000 tasks lost during one of them (a single
        # UPDATE of every row), which is not what a shot costs with live workers.
        cam.lost_after = float("inf")
    times: dict[str, list[float]] = {"backlog": [], "fresh": []}
    clears: dict[str, list[float]] = {"backlog": [], "fresh": []}
    rows: dict[str, list[int]] = {"backlog": [], "fresh": []}

    def shot(which: str) -> None:
        cam = cameras[which]
        for event in itertools.islice(streams[which], options.events):
            cam.state.event(event)
        written = []
        cleared = cam.state.clear_seconds
        times[which].append(common.timed(lambda: written.append(cam.capture(force=True))))
        clears[which].append(cam.state.clear_seconds - cleared)
        rows[which].append(written[0])

    shot("fresh")  # a first shot writes the worker rows: not a shot like the others
    for values in (times["fresh"], clears["fresh"], rows["fresh"]):
        values.clear()
    for round_ in range(options.rounds):
        for which in ("backlog", "fresh") if round_ % 2 == 0 else ("fresh", "backlog"):
            shot(which)
        print(
            f"  round {round_ + 1}: with the backlog {ms(times['backlog'][-1])} "
            f"({rows['backlog'][-1]} rows; Celery's clear {ms(clears['backlog'][-1])}), "
            f"without {ms(times['fresh'][-1])} ({rows['fresh'][-1]} rows; Celery's clear "
            f"{ms(clears['fresh'][-1])})",
            flush=True,
        )
    with_backlog, without = common.median(times["backlog"]), common.median(times["fresh"])
    ratio = common.median([a / b for a, b in zip(times["backlog"], times["fresh"], strict=True)])
    verdict = "met" if ratio <= TARGET else "NOT MET"
    # The shots less Celery's clear: what the camera itself costs.
    own = {
        which: [t - c for t, c in zip(times[which], clears[which], strict=True)] for which in times
    }
    own_ratio = common.median([a / b for a, b in zip(own["backlog"], own["fresh"], strict=True)])
    if len(camera.state.tasks) < backlog:
        print(
            f"  note: the camera's state holds {len(camera.state.tasks):,} tasks, not the "
            f"backlog's {backlog:,}"
        )
    print(
        f"{options.backend:<11}shot of {options.events} events: with a backlog of {backlog:,} "
        f"{ms(with_backlog)}, without {ms(without)}: {common.ratio(ratio)} (target within "
        f"{TARGET:g}x: {verdict}); of which Celery's State clear "
        f"{ms(common.median(clears['backlog']))} vs {ms(common.median(clears['fresh']))}; "
        f"the camera's own part {ms(common.median(own['backlog']))} vs "
        f"{ms(common.median(own['fresh']))}: {common.ratio(own_ratio)}",
        flush=True,
    )
    dropped = f"; the first shot dropped {lost:,} tasks" if lost else ""
    print(
        f"summary: {options.backend}: backlog {backlog:,}, shot {ms(with_backlog)} vs "
        f"{ms(without)} without, {common.ratio(ratio)} ({verdict}); the camera's own part "
        f"{common.ratio(own_ratio)}; first shot {first:.1f} s{dropped}",
        flush=True,
    )


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms"


if __name__ == "__main__":
    main()
