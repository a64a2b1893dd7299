"""The most events a second one camera keeps up with, and ``--shards`` camera processes.

The stream of ``ingest.py`` (``--tasks`` tasks over ``--workers`` workers) is fed at a
steady rate, in ticks of 10 ms, to one camera, then to ``--shards`` camera processes
(``--shard 1/N`` to ``N/N``, one database, each fed the whole stream), each taking a shot
a second as ``manage.py celery_monitor --frequency 1`` does. At each of ``--rates``: the
rate each took (the events over the time they took to feed: a camera that cannot keep up
takes them later than their clock), how long after its last event its rows were all
written, its longest shot, the part of the time its shots took, and whether it kept up:
its events caught up with their clock (within :data:`CAUGHT_UP`) at some tick of the
stream's last shot period, its shots took at most :data:`BUSY` of the time (shots that
take their whole period, one after the other, grow with each: the camera only writes
later and later), none took longer than two periods, and its rows were all written within
two periods after the last event. (A shot's pause makes the events wait a moment, and
one that comes near the end of the stream lowers the rate taken by a few per cent; a
camera that keeps up then catches up, one that cannot falls further behind.) The stream
must last several periods for these to mean anything. It prints the highest rate each
kept up with in every round. The rows are checked after each run. Where ``ingest.py``
times a stream fed as fast as it goes, this says how busy a cluster each keeps up with.

    .venv/bin/python benchmarks/rate.py                      # SQLite file in a temp dir
    .venv/bin/python benchmarks/rate.py --postgresql --rates 20000,30000,40000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

#: Seconds behind its clock a feed may be and still count as caught up: two ticks.
CAUGHT_UP = 0.02
#: The most of the time a camera's shots may take: above it, they follow each other.
BUSY = 0.95


def run_rate(
    db: common.Database, stream: common.Stream, events: int, rate: int, count: int, every: float
):
    """``count`` cameras fed ``stream`` at ``rate``: the worst of them, by each of
    :func:`common.feed_at_rate`'s figures, and the rate taken."""
    *_, reports = common.camera_processes(db, stream, count, common.paced_process, rate, every)
    worst = {key: max(report[key] for report in reports) for key in reports[0]}
    return worst, events / worst["fed"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_database_options(parser, allow_all=False)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks in the stream")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--rates",
        default="20000,25000,30000,35000,40000,45000,50000,55000,60000",
        help="events a second to feed, comma-separated",
    )
    parser.add_argument("--shards", type=int, default=2, help="camera processes against one")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between shots")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    rates = [int(rate) for rate in options.rates.split(",")]
    backend, n = options.backend, options.shards
    if common.skipped(backend):
        return
    db = common.Database(backend, options.sqlite_journal)
    db.setup()
    try:
        stream = common.Stream(options.tasks, workers=options.workers, seed=options.seed)
        events = sum(1 for _ in stream)  # and the outcomes the rows are checked against
        print(
            f"{backend}: {options.tasks:,} tasks, {events:,} events over "
            f"{options.workers} workers; a shot every {options.every:g} s; 1 camera against "
            f"{n}; {options.rounds} round(s)"
            + common.journal_note(backend, options.sqlite_journal),
            flush=True,
        )
        kept: dict[tuple[int, int], list[bool]] = {}
        for round_ in range(options.rounds):
            for rate in rates:
                order = (1, n) if round_ % 2 == 0 else (n, 1)
                for count in order:
                    worst, took = run_rate(db, stream, events, rate, count, options.every)
                    limit = 2 * options.every
                    up = (
                        worst["behind"] <= CAUGHT_UP
                        and worst["busy"] <= BUSY
                        and worst["longest"] <= limit
                        and worst["after"] <= limit
                    )
                    kept.setdefault((rate, count), []).append(up)
                    clock = (
                        "caught up"
                        if worst["behind"] <= CAUGHT_UP
                        else f"{worst['behind']:.2f} s behind"
                    )
                    print(
                        f"  {rate:>7,} ev/s  {count} camera(s) took {common.rate(took)} ev/s "
                        f"({clock} at the end), shots {worst['busy']:.0%} of the time, "
                        f"longest {worst['longest']:.2f} s, rows written {worst['after']:.2f} s "
                        f"after the last event  {'kept up' if up else 'behind'}",
                        flush=True,
                    )
        # The highest rate kept up with in every round (none: 0).
        steady = {
            count: max((rate for rate in rates if all(kept[rate, count])), default=0)
            for count in (1, n)
        }
        gain = common.ratio(steady[n] / steady[1]) if steady[1] else "-"
        print(
            f"{backend:<11}kept up with: 1 camera {common.rate(steady[1])} ev/s, {n} cameras "
            f"{common.rate(steady[n])} ev/s (the highest of --rates)  {n} cameras/1 {gain}",
            flush=True,
        )
        print(
            f"summary: {backend}: kept up with 1 camera {common.rate(steady[1])} ev/s, "
            f"{n} cameras {common.rate(steady[n])} ev/s ({gain})"
        )
    finally:
        db.teardown()


if __name__ == "__main__":
    main()
