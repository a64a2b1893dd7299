"""The filesystem broker: whole messages, none lost, none twice, across processes."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import random
import time
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from django_celery_monitor.transport import (
    FilesystemChannel,
    FilesystemTransport,
    queue_folder_name,
)

pytestmark = pytest.mark.nodb

TRANSPORT = "django_celery_monitor.transport:FilesystemTransport"
#: Processes are spawned, not forked: the test process may run threads.
spawn = multiprocessing.get_context("spawn")


def connect(root: str) -> Connection:
    folder = str(Path(root) / "messages")
    return Connection(
        "filesystem://",
        transport=TRANSPORT,
        transport_options={
            "data_folder_in": folder,
            "data_folder_out": folder,
            "control_folder": str(Path(root) / "control"),
            "polling_interval": 0.005,
        },
    )


def fanout() -> Exchange:
    return Exchange("stress", type="fanout", durable=False)


def produce(root: str, producer: int, count: int) -> None:
    """Publish ``count`` messages of random sizes, each carrying the digest of its body."""
    rng = random.Random(producer)
    with connect(root) as conn:
        publisher = Producer(conn.channel(), exchange=fanout())
        for seq in range(count):
            blob = rng.randbytes(rng.choice([8, 200, 4000, 60_000])).hex()
            digest = hashlib.sha256(blob.encode()).hexdigest()
            publisher.publish(
                {"producer": producer, "seq": seq, "blob": blob, "digest": digest},
                serializer="json",
            )


def consume(root: str, queue: str, out: str, done_flag: str) -> None:
    """Take messages from ``queue`` until the producers are done and it stays empty."""
    seen = []

    def on_message(body, message):
        whole = hashlib.sha256(body["blob"].encode()).hexdigest() == body["digest"]
        seen.append([body["producer"], body["seq"], whole])
        message.ack()

    with (
        connect(root) as conn,
        Consumer(conn, [Queue(queue, fanout())], callbacks=[on_message], accept=["json"]),
    ):
        idle_since = None
        while True:
            try:
                conn.drain_events(timeout=0.2)
                idle_since = None
            except TimeoutError:
                if not Path(done_flag).exists():
                    continue
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > 1.0:
                    break
    Path(out).write_text(json.dumps(seen))


def bind_many(root: str, worker: int, count: int) -> None:
    with connect(root) as conn:
        channel = conn.channel()
        for n in range(count):
            Queue(f"q-{worker}-{n}", fanout())(channel).declare()


def run_all(processes, timeout: float = 240.0) -> None:
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(deadline - time.monotonic(), 1))
        assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"


def test_many_producers_and_consumers_see_every_message_once_and_whole(tmp_path):
    producers, per_producer = 3, 1000
    queues = {"alpha": 2, "beta": 2}  # two queues on the fanout, two competing consumers each
    root = str(tmp_path)
    with connect(root) as conn:  # bind the queues before anything is sent
        channel = conn.channel()
        for queue in queues:
            Queue(queue, fanout())(channel).declare()
    done = tmp_path / "producers-done"
    consumers = [
        spawn.Process(
            target=consume,
            args=(root, queue, str(tmp_path / f"{queue}-{n}.json"), str(done)),
            name=f"consumer {queue}-{n}",
        )
        for queue, count in queues.items()
        for n in range(count)
    ]
    for consumer in consumers:
        consumer.start()
    run_all(
        [
            spawn.Process(target=produce, args=(root, p, per_producer), name=f"producer {p}")
            for p in range(producers)
        ]
    )
    done.touch()
    for consumer in consumers:
        consumer.join(120)
        assert consumer.exitcode == 0, f"{consumer.name} exited with {consumer.exitcode}"

    expected = {(p, seq) for p in range(producers) for seq in range(per_producer)}
    for queue, count in queues.items():
        seen = []
        for n in range(count):
            seen += json.loads((tmp_path / f"{queue}-{n}.json").read_text())
        assert all(whole for _p, _seq, whole in seen), f"{queue}: a message was torn"
        keys = [(p, seq) for p, seq, _whole in seen]
        assert len(keys) == len(set(keys)), f"{queue}: a message was taken twice"
        assert set(keys) == expected, f"{queue}: {len(expected - set(keys))} messages lost"
        # Both consumers of each queue took a share: they really competed.
        shares = [len(json.loads((tmp_path / f"{queue}-{n}.json").read_text())) for n in range(2)]
        assert all(shares), shares
    leftovers = [
        path
        for path in (tmp_path / "messages").rglob("*")
        if path.is_file() and ".incoming" not in path.parts
    ]
    assert leftovers == []


def test_concurrent_bindings_are_all_kept(tmp_path):
    root = str(tmp_path)
    run_all([spawn.Process(target=bind_many, args=(root, w, 25)) for w in range(6)])
    with connect(root) as conn:
        table = conn.default_channel.get_table("stress")
    assert sorted(binding.queue for binding in table) == sorted(
        f"q-{w}-{n}" for w in range(6) for n in range(25)
    )


def test_an_auto_delete_queue_goes_with_its_channel(tmp_path):
    with connect(str(tmp_path)) as conn:
        channel = conn.channel()
        kept = Queue("kept", fanout())(channel)
        kept.declare()
        receiver = conn.channel()
        gone = Queue("receiver", fanout(), auto_delete=True)(receiver)
        gone.declare()
        Producer(channel, exchange=fanout()).publish({"n": 1})
        assert channel._size("receiver") == 1
        receiver.close()
        assert [binding.queue for binding in channel.get_table("stress")] == ["kept"]
        assert channel._size("receiver") == 0
        Producer(channel, exchange=fanout()).publish({"n": 2})
        assert channel._size("kept") == 2
        assert channel._size("receiver") == 0


def test_an_undecodable_message_is_put_aside_and_the_next_one_read(tmp_path, caplog):
    with connect(str(tmp_path)) as conn:
        channel = conn.channel()
        queue = Queue("work", Exchange("work"), routing_key="work")(channel)
        queue.declare()
        folder = tmp_path / "messages" / "work"
        (folder / "00000000000000000000-bad.msg").write_bytes(b"")
        Producer(channel).publish({"n": 1}, exchange="work", routing_key="work")
        message = queue.get(no_ack=True)
        assert message.payload == {"n": 1}
        assert list((tmp_path / "messages" / ".rejected").iterdir())
        assert "cannot be decoded" in caplog.text


def test_purge_and_size(tmp_path):
    with connect(str(tmp_path)) as conn:
        channel = conn.channel()
        queue = Queue("work", Exchange("work"), routing_key="work")(channel)
        queue.declare()
        for n in range(5):
            Producer(channel).publish({"n": n}, exchange="work", routing_key="work")
        assert queue.queue_declare(passive=True).message_count == 5
        assert queue.purge() == 5
        assert queue.get() is None


@pytest.mark.parametrize(
    ("queue", "folder"),
    [
        ("celery", "celery"),
        ("demo@host.celery.pidbox", "demo@host.celery.pidbox"),
        ("a/b", "a%2Fb"),
        ("..", "%2E."),
        (".incoming", "%2Eincoming"),
        ("", "%"),
    ],
)
def test_queue_folder_names_stay_inside_the_data_folder(queue, folder):
    assert queue_folder_name(queue) == folder


def test_long_queue_names_are_shortened_uniquely():
    first, second = queue_folder_name("q" * 300 + "a"), queue_folder_name("q" * 300 + "b")
    assert first != second
    assert len(first) <= 200


def test_celery_takes_the_transport_by_its_dotted_path():
    from celery import Celery

    app = Celery("transport-test", set_as_current=False)
    app.conf.broker_url = "filesystem://"
    app.conf.broker_transport = TRANSPORT
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, FilesystemTransport)
        assert isinstance(conn.default_channel, FilesystemChannel)
