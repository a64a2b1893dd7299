"""What one camera and each of ``--shards`` cameras spend per event, on a real broker.

``ingest.py`` and ``rate.py`` hand the events to the cameras' State. Through a broker, each
camera also reads and decodes the event messages it gets. Shards get every one: Redis sends
each message to every subscriber (PUB/SUB), RabbitMQ to every shard's queue; each shard pays
for all of them, then keeps its own tasks. On RabbitMQ, cameras given one queue name
(``--split queue``) share that queue instead: each gets some of the messages, and decodes
only those.
Here the stream of ``ingest.py`` (``--tasks`` tasks over ``--workers`` workers) is
published to the broker (``--broker``: a Redis or RabbitMQ URL) at ``--rate`` events a
second, as busy prefork workers send it: each worker's task events of a 10 ms tick in one
message (up to 24, Celery's buffer), its worker events alone. It goes to one camera, then
to ``--shards`` camera processes, each run as ``manage.py celery_monitor --frequency 1``
runs it (the receiver, the guard, the shard or the shared queue, a shot a second).

Each camera process reports the CPU time it used from the moment the stream began until
its last rows were written (its last shot, taken when its last message came), per event of
the stream, and how much of it went to the shots. One camera's figure over the busiest
shard's is what the shards gain with a core each: the machine here has two, shared with
the publisher and the database server, so its wall time says less. The rate should be one
that one camera keeps up with (the time from the last message to the last rows is
printed); the rows are checked after each run.

    .venv/bin/python benchmarks/broker.py               # SQLite; Redis at BENCH_REDIS_URL
    .venv/bin/python benchmarks/broker.py --postgresql --rounds 3
    .venv/bin/python benchmarks/broker.py --broker amqp://guest:guest@127.0.0.1:5673//
    .venv/bin/python benchmarks/broker.py --split queue --broker amqp://127.0.0.1:5673//
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

DEFAULT_BROKER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/8")
#: The most task events a worker puts in one message (Celery's ``buffer_limit``).
BUFFER = 24
#: The publisher's tick: a worker's task events of a tick go in one message.
TICK = 0.01


def messages(events: list[dict], rate: int) -> list[tuple[float, str, Any]]:
    """``(due, routing key, body)`` of each message of ``events`` published at ``rate``: per
    tick, each worker's task events in messages of up to :data:`BUFFER` (a list), and each
    worker event alone, as a prefork worker sends them."""
    out: list[tuple[float, str, Any]] = []
    per_tick = max(1, int(rate * TICK))
    for index in range(0, len(events), per_tick):
        due = index / rate
        buffered: dict[str, list[dict]] = {}
        for event in events[index : index + per_tick]:
            if event["type"].startswith("task-"):
                buffered.setdefault(event["hostname"], []).append(event)
            else:
                out.append((due, event["type"].replace("-", "."), event))
        for batch in buffered.values():
            for start in range(0, len(batch), BUFFER):
                chunk = batch[start : start + BUFFER]
                if len(chunk) == 1:
                    out.append((due, chunk[0]["type"].replace("-", "."), chunk[0]))
                else:
                    out.append((due, "task.multi", chunk))
    return out


def broker_name(url: str) -> str:
    return "RabbitMQ" if url.startswith(("amqp", "pyamqp")) else "Redis"


def reachable(url: str) -> str | None:
    """Why the broker at ``url`` cannot be used, or None."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as exc:
        return f"no {broker_name(url)} at {url} ({type(exc).__name__}: {exc})"
    return None


#: Published until every camera has heard one: Redis drops what is published before a
#: receiver subscribes, which it does only as it starts to listen (and RabbitMQ what is
#: published before its queue is bound).
PROBE = {"type": "benchmark-probe"}


def exchange_of(queue: str) -> str:
    """The event exchange of a run (named after its queue): the events other clients of
    the broker send (tests beside it, a real cluster) never reach its cameras."""
    return f"{queue}.events"


def publisher(url: str, queue: str) -> Any:
    """A producer on the event exchange of the run of ``queue`` on the broker at ``url``
    (close its connection after)."""
    from celery import Celery
    from celery.events.event import get_exchange

    app = Celery("publisher", broker=url, set_as_current=False)
    app.conf.event_exchange = exchange_of(queue)
    connection = app.connection_for_write()
    exchange = get_exchange(connection, name=app.conf.event_exchange)
    return connection.Producer(exchange=exchange, serializer="json")


def publish(
    url: str, queue: str, stream: list[tuple[float, str, Any]], stop_probing: threading.Event
) -> None:
    """Publish ``stream`` to the event exchange on its clock (the probes stop first)."""
    stop_probing.set()
    producer = publisher(url, queue)
    try:
        start = time.perf_counter()
        for due, key, body in stream:
            ahead = start + due - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
            producer.publish(body, routing_key=key)
    finally:
        producer.connection.close()


def probe(url: str, queue: str, stop: threading.Event) -> None:
    """Publish :data:`PROBE` every 20 ms until ``stop``."""
    producer = publisher(url, queue)
    try:
        while not stop.wait(0.02):
            producer.publish(PROBE, routing_key="worker.heartbeat")
    finally:
        producer.connection.close()


def camera_process(
    database, stream_params, shard, url, queue, received, expected, ready, go, results
) -> None:
    """One camera, run as the command runs it, reading the event queue ``queue`` (on
    RabbitMQ), until the cameras together counted ``expected`` messages in ``received`` (each
    of them all of them, or their share of one queue) and its last rows are written: its CPU
    time (and its shots'), and when its rows were written."""

    def prepare():
        common.configure_django(database)
        from celery import Celery

        from django_celery_monitor.runner import MonitorRunner, tune_garbage_collector

        # The process settings the command makes (its garbage collector's threshold): this
        # process runs a camera alone, until it ends.
        tune_garbage_collector()

        counts = {"messages": 0, "shots": 0.0}
        heard = threading.Event()

        class Runner(MonitorRunner):
            def receiver(self, connection: Any) -> Any:
                receiver = super().receiver(connection)
                receive = receiver._receive

                def counted(body: Any, message: Any) -> None:
                    if body == PROBE:
                        heard.set()
                        return
                    receive(body, message)
                    counts["messages"] += 1
                    with received.get_lock():
                        received.value += 1

                receiver._receive = counted  # the consumer is made after this
                return receiver

        app = Celery("bench", broker=url, set_as_current=False)
        app.conf.event_exchange = exchange_of(queue)
        runner = Runner(
            app,
            freq=1.0,
            shard=f"{shard[0]}/{shard[1]}" if shard else None,
            queue_name=queue_of(queue, shard),
        )
        capture = runner.camera.capture

        def timed_capture(force: bool = False) -> int:
            began = time.thread_time()
            try:
                return capture(force=force)
            finally:
                counts["shots"] += time.thread_time() - began

        runner.camera.capture = timed_capture  # the timer takes this one
        thread = threading.Thread(target=runner.run, name="camera", daemon=True)
        thread.start()
        if not heard.wait(30):
            raise RuntimeError(f"the camera heard nothing from the broker at {url} in 30 s")

        def work() -> dict[str, float]:
            cpu = time.process_time()
            # Every camera counts its messages in ``received``: it is whole when each shard
            # has counted all of them, or when the cameras of one queue have between them.
            # A minute without a message: a camera failed (the parent says which).
            count, moved = received.value, time.monotonic()
            while count < expected:
                time.sleep(0.005)
                if received.value != count:
                    count, moved = received.value, time.monotonic()
                elif time.monotonic() - moved > 60:
                    raise RuntimeError(f"the stream stalled at {count} of {expected} messages")
            last = time.perf_counter()
            timed_capture(force=True)
            report = {
                "cpu": time.process_time() - cpu,
                "shots": counts["shots"],
                "after": time.perf_counter() - last,
            }
            runner.stop()
            thread.join(60)
            return report

        return work

    common._timed_process(prepare, ready, go, results, finish=common.close_connections)


def run(db, stream, published, url, count, split) -> tuple[list[dict], float]:
    """``count`` cameras fed ``published`` through the broker: each one's report, and the
    database server's CPU time meanwhile. With ``split`` "queue" (and more than one camera)
    they share one queue, otherwise each is a shard."""
    shared = split == "queue" and count > 1
    # The queues of this run alone (RabbitMQ keeps them a while after their readers leave).
    queue = f"celery_monitor.benchmark.{os.getpid()}.{time.monotonic_ns()}"
    received = multiprocessing.get_context("spawn").Value("q", 0)
    expected = len(published) * (1 if shared else count)
    stop_probing = threading.Event()
    probing = threading.Thread(target=probe, args=(url, queue, stop_probing), daemon=True)
    probing.start()
    try:
        _, _, server, reports = common.camera_processes(
            db,
            stream,
            count,
            camera_process,
            url,
            queue,
            received,
            expected,
            started=lambda: publish(url, queue, published, stop_probing),
            shards=not shared,
        )
    finally:
        stop_probing.set()
        probing.join()
        delete_queues(url, queue, count)
    return reports, server


def queue_of(queue: str, shard: tuple[int, int] | None) -> str:
    """The name of the event queue a camera of a run reads: each shard one of its own (as
    by default), cameras that are not shards ``queue`` itself."""
    return f"{queue}.shard{shard[0]}of{shard[1]}" if shard else queue


def delete_queues(url: str, queue: str, count: int) -> None:
    """Delete the event queues of a run on RabbitMQ (the shared one, or each shard's), and
    its event exchange."""
    if broker_name(url) != "RabbitMQ":
        return
    from kombu import Connection

    parts = [None, *((k, count) for k in range(1, count + 1))]
    names = [f"celeryev.{queue_of(queue, part)}" for part in parts]  # Celery's prefix
    with Connection(url) as connection:
        channel = connection.channel()
        for name in names:
            channel.queue_delete(name)
        channel.exchange_delete(exchange_of(queue))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    common.add_database_options(parser, allow_all=False)
    parser.add_argument(
        "--broker", default=DEFAULT_BROKER, help="a Redis or RabbitMQ (amqp://) URL"
    )
    parser.add_argument(
        "--split",
        choices=("shards", "queue"),
        default="shards",
        help="how the cameras share the work: as shards (--shard K/N), or by reading one "
        "queue (RabbitMQ only)",
    )
    parser.add_argument("--tasks", type=int, default=30_000, help="tasks in the stream")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rate", type=int, default=10_000, help="events a second")
    parser.add_argument("--shards", type=int, default=2, help="camera processes against one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    backend, n, broker = options.backend, options.shards, broker_name(options.broker)
    if options.split == "queue" and broker != "RabbitMQ":
        parser.error("--split queue: only RabbitMQ lets cameras share a queue")
    if common.skipped(backend, reachable(options.broker)):
        return
    cameras = "shards" if options.split == "shards" else "cameras sharing a queue"
    db = common.Database(backend, options.sqlite_journal)
    db.setup()
    try:
        stream = common.Stream(options.tasks, workers=options.workers, seed=options.seed)
        events = list(stream)
        published = messages(events, options.rate)
        print(
            f"{backend}: {options.tasks:,} tasks, {len(events):,} events over "
            f"{options.workers} workers in {len(published):,} messages, published to "
            f"{broker} at {options.rate:,} ev/s; 1 camera against {n} {cameras}; "
            f"{options.rounds} round(s)" + common.journal_note(backend, options.sqlite_journal),
            flush=True,
        )
        per_event: dict[int, list[float]] = {1: [], n: []}
        gains: list[float] = []
        for round_ in range(options.rounds):
            figures = {}
            for count in (1, n) if round_ % 2 == 0 else (n, 1):
                reports, server = run(db, stream, published, options.broker, count, options.split)
                busiest = max(report["cpu"] for report in reports)
                figures[count] = busiest
                per_event[count].append(busiest / len(events) * 1e6)
                shown = ", ".join(
                    f"{r['cpu'] / len(events) * 1e6:.1f} us/event (shots "
                    f"{r['shots'] / len(events) * 1e6:.1f}), last rows {r['after']:.2f} s "
                    f"after the last message"
                    for r in sorted(reports, key=lambda r: -r["cpu"])
                )
                print(
                    f"  round {round_ + 1}: {count} camera(s): {shown}; database server "
                    f"{server / len(events) * 1e6:.1f} us/event",
                    flush=True,
                )
            gains.append(figures[1] / figures[n])
        one, many = common.median(per_event[1]), common.median(per_event[n])
        gain = common.median(gains)
        way = broker if options.split == "shards" else f"{broker}, one queue"
        each = "shard" if options.split == "shards" else "camera"
        print(
            f"{backend:<11}through {way}: 1 camera {one:.1f} us/event, the busiest of {n} "
            f"{cameras} {many:.1f} us/event (CPU time per event of the stream)  "
            f"1 camera/{each} {common.ratio(gain)}",
            flush=True,
        )
        print(f"summary: {backend}: through {way}, 1 camera/busiest {each} {common.ratio(gain)}")
    finally:
        db.teardown()


if __name__ == "__main__":
    main()
