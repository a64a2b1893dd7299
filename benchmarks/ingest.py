"""How many events a second the camera records, against Flower, 1.1.2 and Celery's State.

A synthetic stream of a busy cluster (``--tasks`` tasks over ``--workers`` workers, several
in flight at once, heartbeats) is built before timing, then fed, event by event, to:

* state:  a plain ``celery.events.state.State``: the ceiling of anything built on it;
* flower: Flower's ``EventsState`` (its State with counters, metrics and search index),
  fed the way Flower feeds it (skipped when Flower is not installed);
* ours:   ``django_celery_monitor.camera.Camera``, a forced shot every ``--shot`` events
  and one at the end; the rows are checked afterwards (every task in its final state);
* 1.1.2:  django_celery_monitor 1.1.2's camera, re-implemented below on today's models:
  every shutter writes every task of the state, each in its own transaction with a locked
  get-or-create and a save. It is slow, so it runs on ``--legacy-tasks`` tasks; all
  figures are events a second, so the rates compare.

The shots of ours and of 1.1.2 run on a thread of their own, as their timer takes them
in a running camera, while the events keep coming; the time ends when the last shot is
written. 1.1.2 holds the state's lock while it writes, so the events wait for its shots;
ours writes after releasing it. ``--inline-shots`` takes the shots on the feeding thread.

``--shards N`` also times N camera processes (``--shard 1/N`` to ``N/N``, one database)
against one camera, each fed the whole stream. In the same rounds it measures the
machine's own ceiling: N processes of independent CPU-bound work (the stream into a bare
State) against one. Virtual cores shared with other machines often give much less than N
times the work of one; no split of the camera can gain more than that. Nor can it gain
back the part of the second core one camera already keeps busy (its shots and the
database server work while its events are handled): it prints how many cores one camera
kept busy (the CPU time of its process and of the database servers running here, over
the wall time), and the bound both make, the ceiling over those cores. And it times a
split that costs the cameras nothing: N cameras each fed only its own shard's events
(picked out before the clock starts), with their shots after the same events. Its gain
over one camera is what splitting this camera's work gains here; the shards' against it,
what reading and dropping the other shards' events costs them (both write every worker).

Runs are interleaved (one of each per round, in a rotating order) and the medians of
``--rounds`` rounds are printed, with the median of the per-round ratios. Each run of
ours and 1.1.2 starts from an empty, migrated database.

    .venv/bin/python benchmarks/ingest.py                  # SQLite file in a temp dir
    .venv/bin/python benchmarks/ingest.py --postgresql     # PGHOST/PGPORT/PGUSER
    .venv/bin/python benchmarks/ingest.py --all --rounds 5
    .venv/bin/python benchmarks/ingest.py --shards 2       # 2 camera processes, one database
    .venv/bin/python benchmarks/ingest.py --profile        # where ours spends its time
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

MEASURES = ("ours", "flower", "1.1.2", "state")


# -- django_celery_monitor 1.1.2's camera, on today's models -----------------------------------


def legacy_camera_class() -> type:
    """1.1.2's ``Camera`` and the queryset methods it calls, as they were (camera.py and
    managers.py of django_celery_monitor 1.1.2), written against today's models."""
    from celery import states
    from celery.events.snapshot import Polaroid
    from celery.events.state import Task
    from celery.utils.time import maybe_iso8601
    from django.db import IntegrityError, transaction
    from django.db.models.functions import Now

    from django_celery_monitor.models import TaskState, WorkerState
    from django_celery_monitor.utils import correct_awareness, fromtimestamp

    not_saved_attributes = frozenset(["name", "args", "kwargs", "eta"])

    def select_for_update_or_create(queryset, defaults=None, **lookup):
        # ExtendedQuerySet.select_for_update_or_create (a backport of Django 1.11's).
        defaults = defaults or {}
        with transaction.atomic():
            try:
                obj = queryset.select_for_update().get(**lookup)
            except queryset.model.DoesNotExist:
                # Django 1.11's QuerySet._create_object_from_params.
                try:
                    with transaction.atomic():
                        params = {k: v() if callable(v) else v for k, v in defaults.items()}
                        return queryset.create(**lookup, **params), True
                except IntegrityError:
                    obj = queryset.get(**lookup)
            for key, value in defaults.items():
                setattr(obj, key, value() if callable(value) else value)
            obj.save()
        return obj, False

    def update_heartbeat(hostname, heartbeat, update_freq):
        # WorkerStateQuerySet.update_heartbeat.
        with transaction.atomic():
            recent = WorkerState.objects.filter(
                hostname=hostname, last_update__gte=Now() - timedelta(seconds=update_freq)
            )
            if recent.exists():
                obj = recent.get()
            else:
                obj, _ = select_for_update_or_create(
                    WorkerState.objects, hostname=hostname, defaults={"last_heartbeat": heartbeat}
                )
        return obj

    def update_state(state, task_id, defaults):
        # TaskStateQuerySet.update_state.
        with transaction.atomic():
            obj, created = select_for_update_or_create(
                TaskState.objects, task_id=task_id, defaults=defaults
            )
            if created:
                return obj
            if states.state(state) < states.state(obj.state):
                keep = Task.merge_rules[states.RECEIVED]
            else:
                keep = {}
            for key, value in defaults.items():
                if key not in keep:
                    setattr(obj, key, value)
            obj.save(update_fields=tuple(defaults.keys()))
            return obj

    class LegacyCamera(Polaroid):
        clear_after = True
        worker_update_freq = 60

        def get_heartbeat(self, worker):
            try:
                heartbeat = worker.heartbeats[-1]
            except IndexError:
                return None
            return fromtimestamp(heartbeat)

        def handle_worker(self, hostname_worker):
            hostname, worker = hostname_worker
            return update_heartbeat(
                hostname, heartbeat=self.get_heartbeat(worker), update_freq=self.worker_update_freq
            )

        def handle_task(self, uuid_task, worker=None):
            uuid, task = uuid_task
            if task.worker and task.worker.hostname:
                worker = self.handle_worker((task.worker.hostname, task.worker))
            defaults = {
                "name": task.name,
                "args": task.args,
                "kwargs": task.kwargs,
                "eta": correct_awareness(maybe_iso8601(task.eta)),
                "expires": correct_awareness(maybe_iso8601(task.expires)),
                "state": task.state,
                "tstamp": fromtimestamp(task.timestamp),
                "result": task.result or task.exception,
                "traceback": task.traceback,
                "runtime": task.runtime,
                "worker": worker,
            }
            for attr in not_saved_attributes:
                if defaults[attr] is None:
                    defaults.pop(attr)
            if not defaults.get("name"):
                return None
            return update_state(task.state, task_id=uuid, defaults=defaults)

        def on_shutter(self, state):
            for worker in state.workers.items():
                self.handle_worker(worker)
            for task in state.tasks.items():
                self.handle_task(task)

    return LegacyCamera


# -- the runs ----------------------------------------------------------------------------------


def feed(handle, events: list[dict]) -> None:
    for event in events:
        handle(event)


def run_state(events: list[dict]) -> float:
    from celery.events.state import State

    state = State()
    return common.timed(lambda: feed(state.event, events))


def run_flower(events: list[dict]) -> float:
    from flower.events import EventsState

    # Flower's Events thread makes its state with --max-tasks (100,000 by default) and hands
    # it each event from the IO loop: EventsState.event(event).
    state = EventsState(max_tasks_in_memory=100_000)
    return common.timed(lambda: feed(state.event, events))


def run_ours(
    db: common.Database, stream: common.Stream, events: list[dict], shot: int, inline: bool
) -> float:
    from celery.events.state import State

    db.fresh()
    camera = common.make_camera(State(), APP)
    seconds = common.timed(lambda: common.feed_camera(camera, events, shot, inline))
    camera.close()
    problems = common.check_rows(stream.outcomes, stream.hostnames())
    if problems:
        print(f"ERROR: ours did not record the stream: {'; '.join(problems)}", flush=True)
        sys.exit(1)
    return seconds


def run_legacy(
    db: common.Database, stream: common.Stream, events: list[dict], shot: int, inline: bool
) -> float:
    from celery.events.state import State

    db.fresh()
    camera = LEGACY(State(), app=APP)
    seconds = common.timed(
        lambda: common.feed_with_shots(camera.state.event, camera.capture, events, shot, inline)
    )
    problems = common.check_rows(stream.outcomes, stream.hostnames())
    if problems:
        print(f"  (1.1.2 left the database incomplete: {'; '.join(problems)})", flush=True)
    return seconds


def flower_missing() -> str | None:
    try:
        import flower.events  # noqa: F401
    except ImportError as exc:
        return f"Flower is not installed ({exc}): pip install flower"
    return None


def copies(events: list[dict]) -> list[dict]:
    return [dict(event) for event in events]


def run_backend(options: argparse.Namespace) -> dict[str, Any]:
    backend = options.backend
    db = common.Database(backend, options.sqlite_journal)
    db.setup()
    global APP, LEGACY
    APP = common.celery_app()
    LEGACY = legacy_camera_class()
    try:
        return measure(options, db)
    finally:
        db.teardown()


def measure(options: argparse.Namespace, db: common.Database) -> dict[str, Any]:
    backend = options.backend
    stream = common.Stream(options.tasks, workers=options.workers, seed=options.seed)
    events = list(stream)
    legacy_stream = common.Stream(options.legacy_tasks, workers=options.workers, seed=options.seed)
    legacy_events = [] if "1.1.2" in options.skip else list(legacy_stream)
    legacy = (
        f"; 1.1.2 on {options.legacy_tasks:,} tasks, {len(legacy_events):,} events (it is slow: "
        f"compare the rates)"
        if legacy_events
        else ""
    )
    print(
        f"{backend}: {options.tasks:,} tasks, {len(events):,} events over {options.workers} "
        f"workers{legacy}; a shot every {options.shot:,} events "
        f"({'inline' if options.inline_shots else 'on a thread of its own'}); "
        f"{options.rounds} rounds{common.journal_note(backend, options.sqlite_journal)}",
        flush=True,
    )
    if options.profile:
        return profile(db, stream, events, options)

    measures = [m for m in MEASURES if m not in options.skip]
    missing = flower_missing()
    if "flower" in measures and missing:
        print(f"  skipped Flower: {missing}", flush=True)
        measures.remove("flower")
    runs = {
        "state": lambda: len(events) / run_state(copies(events)),
        "flower": lambda: len(events) / run_flower(copies(events)),
        "ours": lambda: (
            len(events) / run_ours(db, stream, copies(events), options.shot, options.inline_shots)
        ),
        "1.1.2": lambda: (
            len(legacy_events)
            / run_legacy(
                db, legacy_stream, copies(legacy_events), options.shot, options.inline_shots
            )
        ),
    }
    rates: dict[str, list[float]] = {m: [] for m in measures}
    # With every rate skipped (``--shards`` alone), no rounds of rates.
    for round_ in range(options.rounds if measures else 0):
        order = measures[round_ % len(measures) :] + measures[: round_ % len(measures)]
        for name in order:
            rates[name].append(runs[name]())
        line = "  ".join(f"{name} {common.rate(rates[name][-1])} ev/s" for name in measures)
        print(f"  round {round_ + 1}: {line}", flush=True)

    medians = {name: common.median(values) for name, values in rates.items()}
    ratios = {}
    if "ours" in rates:
        for other in ("flower", "1.1.2", "state"):
            if other in rates:
                ratios[f"ours/{other}"] = common.median(
                    [a / b for a, b in zip(rates["ours"], rates[other], strict=True)]
                )
    figures = "  ".join(f"{name} {common.rate(medians[name])} ev/s" for name in measures)
    compared = "  ".join(f"{key} {common.ratio(value)}" for key, value in ratios.items())
    if measures:
        print(f"{backend:<11}{figures}  {compared}", flush=True)
    result = {"backend": backend, "medians": medians, "ratios": ratios}
    if options.shards > 1:
        result["shards"] = measure_shards(db, stream, options)
    return result


def measure_shards(db: common.Database, stream: common.Stream, options) -> dict | None:
    """``--shards`` camera processes against one, each fed the whole stream.

    In the same rounds, the machine's own ceiling: ``--shards`` processes that each feed the
    whole stream to a bare Celery State (independent CPU-bound work, nothing shared) against
    one. Its gain is the most any split of the work into processes can get here and now:
    virtual cores shared with other machines often give much less than one core each. And a
    split that costs the cameras nothing: each fed only its own shard's events, picked out
    before the clock starts (``common.split_process``). Its gain over one camera is what
    the split of this camera's work gains on this database here; the shards' against it,
    what reading and dropping the other shards' events costs them (both write every
    worker).
    """
    n = options.shards
    if not common.shards_supported():
        print("  shards: not supported by this version", flush=True)
        return None
    times: dict[int, list[float]] = {1: [], n: []}
    alone: dict[int, list[float]] = {1: [], n: []}
    split: list[float] = []
    cores: list[float] = []  # what one camera keeps busy
    runs = (1, n, "split")
    for round_ in range(options.rounds):
        for kind in runs[round_ % 3 :] + runs[: round_ % 3]:
            if kind == "split":
                split.append(
                    shard_run(
                        db, stream, n, options.shot, options.inline_shots, common.split_process
                    )[0]
                )
                continue
            seconds, busy = shard_run(db, stream, kind, options.shot, options.inline_shots)
            times[kind].append(seconds)
            if kind == 1:
                cores.append(busy)
            alone[kind].append(parallel_run(stream, kind))
        print(
            f"  shards round {round_ + 1}: 1 camera {times[1][-1]:.2f} s, "
            f"{n} cameras {times[n][-1]:.2f} s, a free split {split[-1]:.2f} s; bare State: "
            f"1 process {alone[1][-1]:.2f} s, {n} processes {alone[n][-1]:.2f} s",
            flush=True,
        )
    one, many = common.median(times[1]), common.median(times[n])
    speedup = common.median([a / b for a, b in zip(times[1], times[n], strict=True)])
    free = common.median([a / b for a, b in zip(times[1], split, strict=True)])
    # Per round: the free split's time over the shards'.
    cost = common.median([a / b for a, b in zip(split, times[n], strict=True)])
    # n processes did n times the work of one: their gain in throughput.
    ceiling = common.median([n * a / b for a, b in zip(alone[1], alone[n], strict=True)])
    print(
        f"{options.backend:<11}shards: 1 camera {one:.2f} s, {n} cameras {many:.2f} s "
        f"(wall time, whole stream)  speed-up {common.ratio(speedup)}",
        flush=True,
    )
    print(
        f"{options.backend:<11}machine: {n} processes of independent work did "
        f"{common.ratio(ceiling)} the work of one in the same time (the ceiling of any split)"
        f"  shards/ceiling {common.ratio(speedup / ceiling)}",
        flush=True,
    )
    # One camera already keeps more than a core busy when its shots (and the database
    # server) work while its events are handled: the split can only add what is left.
    busy = common.median(cores)
    bound = ceiling / max(busy, 1.0)
    print(
        f"{options.backend:<11}one camera kept {busy:.2f} cores busy (its process and the "
        f"database server): the most {n} shards can gain here is {common.ratio(bound)}"
        f"  shards/bound {common.ratio(speedup / bound)}",
        flush=True,
    )
    print(
        f"{options.backend:<11}a free split: {n} cameras fed only their own shard's events "
        f"{common.median(split):.2f} s  speed-up {common.ratio(free)}  shards/free split "
        f"{common.ratio(cost)}",
        flush=True,
    )
    return {
        "one": one,
        "many": many,
        "speedup": speedup,
        "ceiling": ceiling,
        "bound": bound,
        "free": free,
    }


def parallel_run(stream: common.Stream, count: int) -> float:
    """``count`` processes, each feeding the whole stream to a bare State: the wall time."""
    return common.spawn_and_time(common.state_process, [(stream.params(),)] * count)[0]


def shard_run(
    db: common.Database,
    stream: common.Stream,
    count: int,
    shot: int,
    inline: bool,
    target: Any = common.shard_process,
) -> tuple[float, float]:
    """``count`` camera processes (shards; ``target`` runs each) on one database: the wall
    time, and how many cores they kept busy meanwhile, with the database server's (its CPU
    time over the wall time)."""
    seconds, cpu, server, _ = common.camera_processes(db, stream, count, target, shot, inline)
    return seconds, (cpu + server) / seconds


# -- the profile -------------------------------------------------------------------------------


def profile(db: common.Database, stream: common.Stream, events: list[dict], options) -> dict:
    """Run ours once under pyinstrument; print where the time goes."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        print("pyinstrument is not installed: pip install pyinstrument")
        sys.exit(1)
    from celery.events.state import State

    db.fresh()
    camera = common.make_camera(State(), APP)
    events = copies(events)
    profiler = Profiler(interval=0.0005)
    profiler.start()
    # pyinstrument samples the thread it started on: the shots are taken there too.
    common.feed_camera(camera, events, options.shot, inline=True)
    profiler.stop()
    problems = common.check_rows(stream.outcomes, stream.hostnames())
    if problems:
        print(f"ERROR: ours did not record the stream: {'; '.join(problems)}")
        sys.exit(1)
    session = profiler.last_session
    root = session.root_frame()
    total = root.time
    own: dict[str, float] = {}
    inclusive: dict[str, float] = {}

    def walk(frame, stack: frozenset) -> None:
        if frame.is_synthetic:
            return
        key = f"{frame.function} ({frame.file_path_short}:{frame.line_no})"
        own[key] = own.get(key, 0.0) + frame.total_self_time
        if key not in stack:
            inclusive[key] = inclusive.get(key, 0.0) + frame.time
        for child in frame.children:
            walk(child, stack | {key})

    walk(root, frozenset())
    print(
        f"profile of ours on {options.backend}: {total:.2f} s sampled, "
        f"{len(events) / total:,.0f} ev/s under the profiler"
    )
    print("  top functions by own time:")
    for key, seconds in sorted(own.items(), key=lambda kv: -kv[1])[: options.top]:
        print(f"    {100 * seconds / total:5.1f}%  {key}")
    ours = [(k, v) for k, v in inclusive.items() if "django_celery_monitor" in k]
    print("  django_celery_monitor functions by time including callees:")
    for key, seconds in sorted(ours, key=lambda kv: -kv[1])[: options.top]:
        print(f"    {100 * seconds / total:5.1f}%  {key}")
    if options.profile_html:
        Path(options.profile_html).write_text(profiler.output_html())
        print(f"  full profile: {options.profile_html}")
    print(f"summary: profiled ours on {options.backend}", flush=True)
    return {"backend": options.backend, "profile": True}


# -- main --------------------------------------------------------------------------------------


def summary(results: list[dict], skipped: dict[str, str]) -> None:
    parts = []
    for result in results:
        ratios = result.get("ratios", {})
        figures = ", ".join(f"{k} {common.ratio(v)}" for k, v in ratios.items())
        ours = result["medians"].get("ours")
        head = f"{result['backend']}: ours {common.rate(ours)} ev/s" if ours else result["backend"]
        text = f"{head} ({figures})" if figures else head
        shards = result.get("shards")
        if shards:
            text += f", shards speed-up {common.ratio(shards['speedup'])}"
            if "ceiling" in shards:
                text += (
                    f" (the machine's ceiling {common.ratio(shards['ceiling'])}, the most "
                    f"shards can gain {common.ratio(shards['bound'])}, a free split "
                    f"{common.ratio(shards['free'])})"
                )
        parts.append(text)
    parts += [f"{backend}: skipped" for backend in skipped]
    print("summary: " + "; ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_database_options(parser)
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks in the stream")
    parser.add_argument("--legacy-tasks", type=int, default=2_000, help="tasks for 1.1.2")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--shot", type=int, default=2_000, help="events between two shots")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--inline-shots",
        action="store_true",
        help="take each shot on the feeding thread, the events waiting for it (by default "
        "the shots run on a thread of their own, as the camera's timer takes them)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--shards", type=int, default=1, help="also time this many camera processes against one"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=MEASURES,
        help="leave a measurement out (repeatable)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile ours once with pyinstrument instead"
    )
    parser.add_argument("--profile-html", help="also write pyinstrument's HTML report here")
    parser.add_argument("--top", type=int, default=10, help="functions the profile lists")
    parser.add_argument("--report", help=argparse.SUPPRESS)  # a JSON result, for --all
    options = parser.parse_args()

    backends = common.BACKENDS if options.backend == "all" else (options.backend,)
    skipped = {}
    for backend in backends:
        reason = common.unavailable(backend)
        if reason:
            print(f"{backend}: skipped: {reason}", flush=True)
            skipped[backend] = reason
    backends = [b for b in backends if b not in skipped]
    if options.backend != "all":
        if not backends:
            summary([], skipped)
            return
        options.backend = backends[0]
        result = run_backend(options)
        if options.report:
            Path(options.report).write_text(json.dumps(result))
        elif not options.profile:
            summary([result], skipped)
        return
    # One process per database: Django is configured once per process.
    results = []
    argv = [a for a in sys.argv[1:] if a != "--all"]
    for backend in backends:
        with tempfile.NamedTemporaryFile(suffix=".json") as report:
            command = [sys.executable, __file__, f"--{backend}", *argv, "--report", report.name]
            done = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if done.returncode:
                sys.exit(done.returncode)
            text = Path(report.name).read_text()
            if text:
                results.append(json.loads(text))
    if not options.profile:
        summary(results, skipped)


APP: Any = None
LEGACY: Any = None

if __name__ == "__main__":
    main()
