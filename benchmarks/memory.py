"""How much memory the camera keeps while a long stream goes through it.

``--tasks`` tasks (1,000,000 by default: about 3 million events, made one at a time, never
all in memory) go through Celery's State and the camera, with a shot every ``--shot``
events. The run is in a child process of its own, so its resident memory is the camera's
(plus Python, Django and Celery); it prints the resident memory at each tenth of the stream,
at half and at the end, and the peak. The memory should stay bounded: the target is a peak
under 250 MB and no growth from the half to the end.

The sizes of the containers the camera and its State hold are printed at each checkpoint,
so a structure that grows shows itself; ``--tracemalloc`` also compares the Python
allocations at the half and at the end, by line (slower: about 3 times).

    .venv/bin/python benchmarks/memory.py                  # SQLite file in a temp dir
    .venv/bin/python benchmarks/memory.py --tasks 200000 --tracemalloc
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

#: The targets: peak resident memory, and growth from the half to the end of the stream.
PEAK_TARGET_MB = 250.0
FLAT_MB = 10.0
#: Containers this long are listed at each checkpoint (with their change since the last).
LARGE = 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_database_options(parser, allow_all=False)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--shot", type=int, default=2_000, help="events between two shots")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="compare Python's allocations at the half and at the end",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(options)
        return

    if common.skipped(options.backend):
        return
    command = [sys.executable, __file__, "--child", *sys.argv[1:]]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    result = None
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
        else:
            print(line, end="", flush=True)
    if process.wait() or result is None:
        print(f"ERROR: the measuring process failed (exit code {process.returncode})")
        sys.exit(1)
    half, end, peak = result["half"], result["end"], result["peak"]
    growth = end - half
    peak_ok = "met" if peak < PEAK_TARGET_MB else "NOT MET"
    flat_ok = "met" if growth <= FLAT_MB else "NOT MET"
    n = options.tasks
    print(
        f"{options.backend:<11}peak RSS {peak:.0f} MB (target < {PEAK_TARGET_MB:.0f} MB: "
        f"{peak_ok}); RSS at {n // 2:,} tasks {half:.0f} MB, at {n:,} {end:.0f} MB: "
        f"growth {growth:+.1f} MB (flat within {FLAT_MB:.0f} MB: {flat_ok}); "
        f"{result['rate']:,.0f} ev/s",
        flush=True,
    )
    print(
        f"summary: {options.backend}: {n:,} tasks, peak {peak:.0f} MB, "
        f"{half:.0f} -> {end:.0f} MB from half to end ({peak_ok}, {flat_ok})",
        flush=True,
    )


def sizes(objects: dict[str, Any]) -> dict[str, int]:
    """The lengths of the containers the given objects hold as attributes."""
    found = {}
    for prefix, obj in objects.items():
        for name, value in vars(obj).items():
            if isinstance(value, Sized) and not isinstance(value, str | bytes):
                try:
                    found[f"{prefix}.{name}"] = len(value)
                except TypeError:
                    continue
    return found


def child(options: argparse.Namespace) -> None:
    from celery.events.state import State

    db = common.Database(options.backend, options.sqlite_journal)
    db.setup()
    try:
        db.fresh()
        camera = common.make_camera(State(), common.celery_app())
        common.camera_process().__enter__()  # this process is the camera's from now on
        baseline = common.rss_mb()[0]
        print(
            f"{options.backend}: {options.tasks:,} tasks over {options.workers} workers, a shot "
            f"every {options.shot:,} events; RSS after setting up {baseline:.0f} MB",
            flush=True,
        )
        measure(camera, options)
    finally:
        db.teardown()


def measure(camera: Any, options: argparse.Namespace) -> None:
    import tracemalloc

    n = options.tasks
    stream = common.Stream(n, workers=options.workers, wall=True, record=False)
    handle, capture, shot = camera.state.event, camera.capture, options.shot
    checkpoints = sorted({n * k // 10 for k in range(1, 11)} | {n // 2, n})
    trace_from = n // 4 if options.tracemalloc else None
    finished = events = 0
    at: dict[int, float] = {}
    snapshots = {}
    previous: dict[str, int] = {}
    next_checkpoint = checkpoints.pop(0)
    start = time.perf_counter()
    for event in stream:
        handle(event)
        events += 1
        if events % shot == 0:
            capture(force=True)
        if event["type"] in ("task-succeeded", "task-failed"):
            finished += 1
            if finished == trace_from:
                tracemalloc.start(6)
            if finished == next_checkpoint:
                if finished == n:
                    capture(force=True)
                rss = common.rss_mb()[0]
                at[finished] = rss
                now = sizes({"camera": camera, "state": camera.state, "guard": camera.guard})
                grown = {k: v for k, v in now.items() if v >= LARGE}
                shown = ", ".join(
                    f"{k} {v:,}" + (f" ({v - previous[k]:+,})" if k in previous else "")
                    for k, v in sorted(grown.items())
                )
                previous = now
                elapsed = time.perf_counter() - start
                print(
                    f"  {finished:>9,} tasks: RSS {rss:6.1f} MB, {events / elapsed:,.0f} ev/s; "
                    f"containers of {LARGE:,}+ items: {shown or 'none'}",
                    flush=True,
                )
                if options.tracemalloc and finished in (n // 2, n):
                    gc.collect()  # what is left is held, not garbage waiting for the collector
                    snapshots[finished] = tracemalloc.take_snapshot()
                if checkpoints:
                    next_checkpoint = checkpoints.pop(0)
    capture(force=True)
    elapsed = time.perf_counter() - start
    peak = common.rss_mb()[1]
    if len(snapshots) == 2:
        report_allocations(snapshots[n // 2], snapshots[n])
    result = {"half": at.get(n // 2), "end": at.get(n), "peak": peak, "rate": events / elapsed}
    print("RESULT " + json.dumps(result), flush=True)


def report_allocations(before: Any, after: Any) -> None:
    """Print where Python's allocations grew between two tracemalloc snapshots."""
    import tracemalloc

    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    before, after = before.filter_traces(keep), after.filter_traces(keep)
    stats = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in stats)
    print(f"  tracemalloc, from the half to the end: {total / 2**20:+.2f} MB in all; by line:")
    for stat in stats[:12]:
        frame = stat.traceback[0]
        print(
            f"    {stat.size_diff / 2**20:+8.2f} MB {stat.count_diff:+9,} blocks  "
            f"{frame.filename}:{frame.lineno}"
        )
    grown = [s for s in after.compare_to(before, "traceback") if s.size_diff > 1 << 20]
    for stat in grown[:3]:
        print(f"    {stat.size_diff / 2**20:+.2f} MB allocated at:")
        for line in stat.traceback.format(limit=8):
            print(f"      {line}")


if __name__ == "__main__":
    main()
