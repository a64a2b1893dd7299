"""Shards: several cameras share the tasks, each keeps its own, the database merges them."""

from __future__ import annotations

import pickle
import threading
import uuid as uuidlib

import pytest
from celery import Celery
from celery.events.state import State
from django.core.management import CommandError, call_command
from django.db import connection, connections
from hypothesis import given, settings
from hypothesis import strategies as st

from django_celery_monitor.camera import Camera
from django_celery_monitor.events import Shard
from django_celery_monitor.models import TaskState, WorkerState
from django_celery_monitor.runner import MonitorRunner, default_queue_name
from tests import events


def new_id() -> str:
    return str(uuidlib.uuid4())


def stream(task_ids, hostnames=("w1@h", "w2@h")):
    """Every task received, started and finished, with heartbeats between them."""
    out = []
    for n, task_id in enumerate(task_ids):
        hostname = hostnames[n % len(hostnames)]
        finish = events.failed if n % 7 == 0 else events.succeeded
        out += [
            events.received(task_id, hostname=hostname),
            events.started(task_id, hostname=hostname),
            finish(task_id, hostname=hostname),
        ]
        if n % 50 == 0:
            out += [events.worker_event("heartbeat", hostname=h) for h in hostnames]
    return out


def test_parse_and_show():
    assert Shard.parse("2/3") == Shard(2, 3)
    assert str(Shard(1, 2)) == "1/2"
    for bad in ("0/2", "3/2", "1", "a/b", "1/0", "", "1/2/3"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)


def test_a_shard_in_use_is_pickled_as_its_numbers():
    shard = Shard(2, 3)
    assert shard.keeps({"type": "task-received", "uuid": "a"}) is False
    shard.filter(print)
    again = pickle.loads(pickle.dumps(shard))
    assert again == shard and again.keeps({"type": "task-received", "uuid": "a"}) is False


def test_the_shards_split_every_task_once_and_about_evenly():
    ids = [new_id() for _ in range(3000)]
    shards = [Shard(k, 3) for k in (1, 2, 3)]
    owners = [[s for s in shards if task_id in s] for task_id in ids]
    assert all(len(found) == 1 for found in owners)
    sizes = [sum(1 for found in owners if found[0] == s) for s in shards]
    assert all(800 < size < 1200 for size in sizes), sizes
    # The same id is in the same shard in every process: the hash is not Python's hash().
    assert "d" in Shard(1, 2) and "a" in Shard(2, 2)  # CRC-32: 0x82a34642, 0xe8b7be43


class Text(str):
    """A string of another class: what a decoder other than JSON's could give."""


ODD = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["task-received", "task-succeeded", "worker-heartbeat", "task"]),
    st.builds(Text, st.sampled_from(["task-started", "worker-online"])),
    st.builds(Text, st.text(max_size=8)),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
EVENTS = st.one_of(
    st.dictionaries(st.sampled_from(["type", "uuid", "hostname"]), ODD, max_size=3),
    st.builds(dict, type=ODD, uuid=ODD),
    st.none(),
    st.integers(),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(event=EVENTS, index=st.integers(1, 3))
def test_the_shards_filter_drops_what_keeps_says_and_hands_on_the_rest(event, index):
    shard = Shard(index, 3)
    handed = []
    result = shard.filter(lambda e: handed.append(e) or "handled")(event)
    assert (result == "handled") == shard.keeps(event) == (handed == [event])
    # Exactly one of the shards keeps a task event whose id is a string; all keep the rest.
    keepers = [k for k in (1, 2, 3) if Shard(k, 3).keeps(event)]
    is_task = (
        isinstance(event, dict)
        and isinstance(event.get("type"), str)
        and event["type"].startswith("task-")
        and isinstance(event.get("uuid"), str)
    )
    assert len(keepers) == (1 if is_task else 3)


def test_a_sharded_camera_keeps_only_its_tasks_and_every_worker(app):
    ids = [new_id() for _ in range(200)]
    state = State()
    camera = Camera(state, app=app, shard="1/2")
    for event in stream(ids):
        state.event(event)
    mine = {task_id for task_id in ids if task_id in Shard(1, 2)}
    assert set(state.tasks) == mine
    assert set(state.workers) == {"w1@h", "w2@h"}
    assert camera.guard.refused == 0


def test_a_shards_receiver_drops_the_other_shards_task_events_before_checking_them(app):
    """Every shard reads every event message: the other shards' task events are dropped
    first, neither checked nor timed, in grouped messages as in single ones; their clocks
    still count, and a bad one is not the guard's business."""
    ids = [new_id() for _ in range(60)]
    mine = {task_id for task_id in ids if task_id in Shard(1, 2)}
    theirs = sorted(set(ids) - mine)
    runner = MonitorRunner(app, shard="1/2")
    with app.connection_for_read() as connection:
        receiver = runner.receiver(connection)
    guard, checked = runner.camera.guard, []
    check = guard.check
    guard.check = lambda event: checked.append(event.get("uuid")) or check(event)

    evs = stream(ids)
    receiver._receive(evs[:40], message=None)  # a worker's buffered events, in one message
    for event in evs[40:]:
        receiver._receive(event, message=None)
    receiver._receive({**events.received(theirs[0]), "clock": "abc"}, message=None)
    receiver._receive({**events.received(theirs[1]), "clock": 10**6}, message=None)

    assert set(runner.state.tasks) == mine
    assert set(runner.state.workers) == {"w1@h", "w2@h"}
    assert not set(checked) & set(theirs)
    assert mine <= set(checked)
    assert (guard.refused, guard.repaired) == (0, 0)
    assert receiver.clock.value > 10**6


def test_celery_events_camera_gets_a_receiver_with_the_cameras_shard():
    """``celery events --camera``: Celery makes its receiver after the camera."""
    other_app = Celery("shards", set_as_current=False)
    camera = Camera(State(), app=other_app, shard="2/3")
    receiver_class = other_app.events.receiver_cls
    assert (receiver_class.shard, receiver_class.guard) == (Shard(2, 3), camera.guard)


@pytest.mark.parametrize("shard", [None, "1/2"])
def test_celery_events_camera_checks_each_event_once(monkeypatch, shard):
    """Celery's ``evcam`` hands its receiver the state's (guarded) ``event``: the camera's
    receiver checks each event, and the state takes it without a second check."""
    other_app = Celery("once", broker="memory://", set_as_current=False)
    state = State()
    camera = Camera(state, app=other_app, shard=shard)
    checked: list = []
    check = camera.guard.check
    monkeypatch.setattr(
        camera.guard, "check", lambda event: checked.append(event.get("uuid")) or check(event)
    )
    receiver = other_app.events.Receiver(None, handlers={"*": state.event})
    ids = [f"task-{n}" for n in range(20)]  # 8 of shard 1/2, 12 of 2/2
    receiver._receive([events.received(task_id) for task_id in ids], message=None)
    receiver._receive({**events.received("repaired"), "clock": "abc"}, message=None)
    mine = {t for t in [*ids, "repaired"] if camera.shard is None or t in camera.shard}
    assert 0 < len(mine) < 21 or shard is None
    assert set(state.tasks) == mine
    assert sorted(checked) == sorted(mine)
    # A handler that is not the camera's is left as given.
    other = other_app.events.Receiver(None, handlers={"*": print})
    assert other.handlers == {"*": print}


def test_the_command_refuses_a_bad_shard():
    with pytest.raises(CommandError, match="shard"):
        call_command("celery_monitor", "--shard", "3/2")


def test_each_shard_has_its_own_default_queue():
    assert default_queue_name(Shard(1, 2)) != default_queue_name(Shard(2, 2))
    assert default_queue_name(Shard(1, 2)).startswith(default_queue_name())


@pytest.mark.django_db(transaction=True)
def test_two_shards_writing_at_once_record_every_task_once(app):
    """Two cameras, each fed the whole stream, write one database at the same time."""
    ids = [new_id() for _ in range(600)]
    evs = stream(ids)
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(shard):
        try:
            state = State()
            camera = Camera(state, app=app, shard=shard)
            barrier.wait()
            for n, event in enumerate(evs, 1):
                state.event(event)
                if n % 250 == 0:
                    camera.capture(force=True)
            camera.capture(force=True)
            assert not camera.pending_tasks
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(s,)) for s in ("1/2", "2/2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    rows = dict(TaskState.objects.values_list("task_id", "state"))
    assert set(rows) == set(ids)
    expected = {t: "FAILURE" if n % 7 == 0 else "SUCCESS" for n, t in enumerate(ids)}
    assert rows == expected
    assert set(WorkerState.objects.values_list("hostname", flat=True)) == {"w1@h", "w2@h"}
    assert TaskState.objects.filter(worker=None).count() == 0
    assert connection.vendor  # the test ran on this database
