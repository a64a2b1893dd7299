"""The most events a second one camera keeps up with, and ``--shards`` camera processes.

The stream of ``ingest.py`` (``--tasks`` tasks over ``--workers`` workers) is fed at a
steady rate, in ticks of 10 ms, to one camera, then to ``--shards`` camera processes
(``--shard 1/N`` to ``N/N``, one database, each fed the whole stream), each taking a shot
a second as ``manage.py celery_monitor --frequency 1`` does. At each of ``--rates``: the
rate each took (the events over the time they took to feed: a camera that cannot keep up
takes them later than their clock), how long after its last event its rows were all
written, its longest shot, and whether it kept up: fed within 3% of its clock, no shot
longer than two shots' time, and its rows all written within two shots' time after the
last event. It prints the highest rate each kept up with. The rows are checked after each
run. Where ``ingest.py`` times a stream fed as fast as it goes, this says how busy a
cluster each keeps up with.

    .venv/bin/python benchmarks/rate.py                      # SQLite file in a temp dir
    .venv/bin/python benchmarks/rate.py --postgresql --rates 20000,30000,40000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def run_rate(
    db: common.Database, stream: common.Stream, events: int, rate: int, count: int, every: float
):
    """``count`` cameras fed ``stream`` at ``rate``: the rate taken, the time from the last
    event until the rows were written, and the longest shot (of any of them)."""
    _, _, reports = common.camera_processes(db, stream, count, common.paced_process, rate, every)
    return (
        events / max(report["fed"] for report in reports),
        max(report["after"] for report in reports),
        max(report["longest"] for report in reports),
    )


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
                    took, after, longest = run_rate(db, stream, events, rate, count, options.every)
                    # Kept up: fed on time (3% slack), no shot longer than two periods, and
                    # the rows written within two periods after the last event.
                    limit = 2 * options.every
                    up = took >= 0.97 * rate and longest <= limit and after <= limit
                    kept.setdefault((rate, count), []).append(up)
                    print(
                        f"  {rate:>7,} ev/s  {count} camera(s) took {common.rate(took)} ev/s, "
                        f"rows written {after:.2f} s after the last event, longest shot "
                        f"{longest:.2f} s  {'kept up' if up else 'behind'}",
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
