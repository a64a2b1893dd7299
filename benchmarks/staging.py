"""How long a small write takes on PostgreSQL, by how its temporary table is emptied.

The camera's writer puts each batch in a temporary table (by COPY) and merges it from there.
It empties the table by DELETE and truncates it once every few thousand rows. The form it
replaced emptied it at every commit (``ON COMMIT DELETE ROWS``), which cuts the table's file
down each time: a change of the file system's metadata, which waits for its journal while
the disk is busy (a purge, a checkpoint, another program).

Both forms write the same batches through the camera's writer (workers, COPY, merge,
commit), ``--batches`` writes of ``--rows`` new tasks each, ``--pause`` apart as the shots
of a camera under light load are, in alternating rounds, each on a session of its own. The
rounds run once with the disk left alone, and once while another process writes a large
file and syncs it to the same file system as the database (``--no-disk-load`` skips that).
Prints each form's write times (median, p90, p99, longest) and their ratios.

    .venv/bin/python benchmarks/staging.py                  # PGHOST/PGPORT/PGUSER
    .venv/bin/python benchmarks/staging.py --batches 500 --rounds 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

FORMS = ("ours", "on commit")
LABELS = {
    "ours": "DELETE, TRUNCATE every few thousand rows",
    "on commit": "ON COMMIT DELETE ROWS",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=300, help="writes per form and round")
    parser.add_argument("--rows", type=int, default=50, help="new tasks per write")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between writes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--no-disk-load", action="store_true", help="only the rounds with the disk left alone"
    )
    options = parser.parse_args()

    if common.skipped("postgresql"):
        return
    db = common.Database("postgresql")
    db.setup()
    try:
        db.fresh()
        run(options)
    finally:
        db.teardown()


def writers() -> dict[str, Any]:
    """The camera's writer, and the same writer with the table emptied at every commit."""
    from django_celery_monitor.writer import SnapshotWriter

    class EmptiedOnCommit(SnapshotWriter):
        def _copy_statements(self, connection: Any) -> tuple[str, str, str, list[str]]:
            empty, _truncate, copy, types = super()._copy_statements(connection)
            create, _, delete = empty.partition("; ")
            # The form it replaced: emptied by PostgreSQL at every commit, never truncated.
            empty = f"{create} ON COMMIT DELETE ROWS; {delete}"
            return empty, empty, copy, types

    return {"ours": SnapshotWriter(), "on commit": EmptiedOnCommit()}


def write_times(writer: Any, options: argparse.Namespace) -> list[float]:
    """``--batches`` writes of new tasks on a new session: the time of each."""
    from django.db import connection

    from django_celery_monitor.utils import fromtimestamp

    connection.close()  # a session, and a temporary table, of this form's own
    now = time.time()
    times = []
    for _ in range(options.batches):
        tasks = {
            str(uuid.uuid4()): {
                "state": "SUCCESS",
                "tstamp": fromtimestamp(now),
                "name": "shop.orders.tasks.process_order",
                "args": "(1234, 'express')",
                "result": "'ok'",
                "worker": "celery@worker1.example.com",
            }
            for _ in range(options.rows)
        }
        start = time.perf_counter()
        writer.write({}, tasks)
        times.append(time.perf_counter() - start)
        time.sleep(options.pause)
    return times


def data_directory() -> str:
    """A folder on the database's file system: the one that holds its data directory when
    this user can write there (a server run here), else a temporary folder."""
    from django.db import connection

    with connection.cursor() as cursor:
        try:
            cursor.execute("SHOW data_directory")
            folder = cursor.fetchone()[0]
        except Exception:  # not a superuser: the server's folders are not for us
            folder = ""
    parent = os.path.dirname(folder.rstrip("/"))
    if parent and os.access(parent, os.W_OK):
        return parent
    return tempfile.gettempdir()


def load_disk(folder: str, stop: Any) -> None:
    """Write a file of 512 MiB and sync it, again and again, until ``stop`` is set."""
    path = Path(folder) / f"cm_disk_load_{os.getpid()}"
    block = os.urandom(1 << 20)
    try:
        while not stop.is_set():
            with open(path, "wb") as file:
                for _ in range(512):
                    file.write(block)
                    if stop.is_set():
                        break
                file.flush()
                os.fsync(file.fileno())
            path.unlink()
    finally:
        path.unlink(missing_ok=True)


def run(options: argparse.Namespace) -> None:
    forms = writers()
    print(
        f"postgresql: writes of {options.rows} new tasks, {options.batches} per form and "
        f"round, {options.pause * 1000:.0f} ms apart; {options.rounds} rounds",
        flush=True,
    )
    phases = ["disk left alone"] + ([] if options.no_disk_load else ["disk busy"])
    results = {}
    for phase in phases:
        stop = loader = None
        if phase == "disk busy":
            context = multiprocessing.get_context("spawn")
            stop = context.Event()
            loader = context.Process(target=load_disk, args=(data_directory(), stop))
            loader.start()
            time.sleep(1.0)  # the disk's queue filled
        times: dict[str, list[float]] = {form: [] for form in FORMS}
        try:
            for round_ in range(options.rounds):
                for form in FORMS if round_ % 2 == 0 else reversed(FORMS):
                    times[form] += write_times(forms[form], options)
        finally:
            if loader is not None:
                stop.set()
                loader.join()
        print(f"  {phase}:", flush=True)
        for form in FORMS:
            ms = [t * 1000 for t in times[form]]
            print(
                f"    {LABELS[form]:<42} p50 {common.percentile(ms, 50):6.1f}  "
                f"p90 {common.percentile(ms, 90):6.1f}  p99 {common.percentile(ms, 99):6.1f}  "
                f"longest {max(ms):6.1f} ms",
                flush=True,
            )
        ratios = {
            name: common.percentile(times["on commit"], p) / common.percentile(times["ours"], p)
            for name, p in (("p50", 50), ("p99", 99))
        }
        print(
            f"    on commit/ours: p50 {common.ratio(ratios['p50'])}  "
            f"p99 {common.ratio(ratios['p99'])}",
            flush=True,
        )
        results[phase] = (common.percentile(times["ours"], 99), ratios["p99"])
    text = "; ".join(
        f"{phase}: p99 {p99 * 1000:.1f} ms, on commit/ours {common.ratio(ratio)}"
        for phase, (p99, ratio) in results.items()
    )
    print(f"summary: postgresql: write of {options.rows} tasks, {text}")


if __name__ == "__main__":
    main()
