"""Queue lengths: measured on real brokers, sampled with gaps, shown and exported."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from celery import Celery
from django.urls import reverse
from kombu import Exchange, Producer
from kombu import Queue as KombuQueue

from django_celery_monitor import queues, stats
from django_celery_monitor.models import QueueSample
from tests.conftest import wait_for
from tests.test_admin import XSS, staff

UTC = dt_timezone.utc  # datetime.UTC from Python 3.11 on

NOW = datetime(2026, 3, 2, 10, 30, tzinfo=UTC)


def broker_app(url: str, **options) -> Celery:
    app = Celery(f"queues-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.conf.broker_url = url
    app.conf.broker_transport_options = options
    app.conf.broker_connection_retry_on_startup = False
    return app


def publish(app: Celery, queue: str, count: int, priorities=(None,)) -> None:
    exchange = Exchange(queue, type="direct")
    declared = KombuQueue(queue, exchange, routing_key=queue, max_priority=10)
    with app.connection_for_write() as connection:
        producer = Producer(connection.default_channel)
        for n in range(count):
            producer.publish(
                {"n": n},
                exchange=exchange,
                routing_key=queue,
                declare=[declared],
                priority=priorities[n % len(priorities)],
            )


@pytest.mark.nodb
def test_redis_counts_every_priority_and_honours_the_key_prefix(redis_url):
    import redis

    prefix = f"pfx-{uuid.uuid4().hex[:6]}:"
    app = broker_app(
        redis_url,
        global_keyprefix=prefix,
        priority_steps=list(range(10)),
        queue_order_strategy="priority",
    )
    queue = f"reports-{uuid.uuid4().hex[:6]}"
    publish(app, queue, 17, priorities=(0, 3, 9))
    publish(app, f"{queue}-other", 2)
    # What was put there: 17 messages in three priority lists, under the prefix.
    client = redis.Redis.from_url(redis_url)
    keys = {
        key.decode() for key in client.keys(f"{prefix}{queue}*") if not key.endswith(b"-other")
    }
    assert len(keys) == 3
    assert sum(client.llen(key) for key in keys) == 17

    measured = {m.queue: m for m in queues.measure_queues(app, [queue, f"{queue}-other", "nope"])}
    assert measured[queue].messages == 17
    assert measured[f"{queue}-other"].messages == 2
    assert measured["nope"].messages == 0
    # Without the prefix, the same names are other keys: nothing there.
    plain = broker_app(redis_url, priority_steps=list(range(10)))
    assert queues.measure_queues(plain, [queue])[0].messages == 0
    client.delete(*client.keys(f"{prefix}*"))


@pytest.mark.nodb
def test_rabbitmq_answers_a_passive_declare(rabbitmq_url):
    # Each publish waits for the broker's confirm: the messages are in the queue before
    # the declare, which another connection sends.
    app = broker_app(rabbitmq_url, confirm_publish=True)
    queue = f"cm-test-{uuid.uuid4().hex[:6]}"
    publish(app, queue, 5)
    try:
        measured = {m.queue: m for m in queues.measure_queues(app, [queue, f"{queue}-none"])}
        assert (measured[queue].messages, measured[queue].consumers) == (5, 0)
        assert measured[f"{queue}-none"].messages is None
        assert measured[f"{queue}-none"].note == "not declared on the broker"
    finally:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)


@pytest.mark.nodb
def test_a_transport_that_cannot_count_says_so(monkeypatch):
    from kombu.transport import memory

    app = broker_app("memory://")

    def cannot(self, queue):
        raise NotImplementedError

    monkeypatch.setattr(memory.Channel, "_size", cannot)
    [measure] = queues.measure_queues(app, ["celery"])
    assert measure.messages is None
    assert measure.note == queues.NOT_SUPPORTED


@pytest.mark.django_db
def test_a_broker_that_does_not_answer_leaves_a_gap(monkeypatch, redis_url):
    app = broker_app(redis_url)
    release = threading.Event()

    def stuck(app, names, measures=None):
        release.wait(10)
        measures = [] if measures is None else measures
        measures.extend(queues.Measure(name, messages=1) for name in names)
        return measures

    monkeypatch.setattr(queues, "measure_queues", stuck)
    monkeypatch.setattr(queues, "worker_queue_names", lambda app, timeout=1.0: {})
    sampler = queues.QueueSampler(app, timeout=0.3)
    started = time.monotonic()
    measures = sampler.sample()
    assert time.monotonic() - started < 5  # its timeout (0.3 s), not the stuck broker's 10 s
    assert [(m.queue, m.messages) for m in measures] == [("celery", None)]
    assert measures[0].note == "no answer from the broker in 0.3 s"
    # The next one does not pile another thread on the stuck broker.
    again = sampler.measure()
    assert again[0].note == "the previous measure is still waiting for the broker"
    release.set()
    wait_for(lambda: not sampler._busy.locked(), timeout=10, message="the stuck measure to end")
    assert sampler.measure()[0].messages == 1
    row = QueueSample.objects.get()
    assert (row.queue, row.messages, row.note) == ("celery", None, measures[0].note)


@pytest.mark.nodb
def test_a_queue_redis_cannot_count_does_not_hide_the_others(redis_url):
    import redis

    app = broker_app(redis_url)
    queue, odd = (f"cm-{name}-{uuid.uuid4().hex[:6]}" for name in ("ok", "str"))
    publish(app, queue, 2)
    client = redis.Redis.from_url(redis_url)
    client.set(odd, "not a list")  # WRONGTYPE for a count
    try:
        measured = {m.queue: m for m in queues.measure_queues(app, [odd, queue])}
        assert measured[queue].messages == 2
        assert measured[odd].messages is None
        assert measured[odd].note == "the broker refused to count it: ResponseError"
    finally:
        client.delete(odd, queue)


@pytest.mark.nodb
def test_a_queue_rabbitmq_refuses_does_not_hide_the_others(rabbitmq_url):
    app = broker_app(rabbitmq_url, confirm_publish=True)
    queue, locked = (f"cm-test-{name}-{uuid.uuid4().hex[:6]}" for name in ("ok", "excl"))
    publish(app, queue, 3)
    with app.connection_for_write() as owner:
        # Another client's exclusive queue: a passive declare of it is refused (405).
        owner.default_channel.queue_declare(locked, exclusive=True)
        try:
            names = [locked, queue, "x" * 256, f"{queue}-none", queue]
            measured = queues.measure_queues(app, names)
            assert [m.queue for m in measured] == names
            assert measured[0].note.startswith("the broker refused to count it")
            assert measured[1].messages == measured[4].messages == 3
            assert measured[2].note == "a name longer than AMQP's 255 bytes"
            assert measured[3].note == "not declared on the broker"
        finally:
            with app.connection_for_write() as connection:
                connection.default_channel.queue_delete(queue)


@pytest.mark.nodb
def test_a_failover_broker_url_is_followed(redis_url):
    app = broker_app(f"redis://127.0.0.1:1/0;{redis_url}")
    queue = f"cm-failover-{uuid.uuid4().hex[:6]}"
    publish(broker_app(redis_url), queue, 4)
    assert queues.measure_queues(app, [queue])[0].messages == 4


@pytest.mark.nodb
def test_broadcast_queues_are_not_measured():
    from kombu.common import Broadcast

    app = broker_app("memory://")
    app.conf.task_queues = [KombuQueue("tasks"), Broadcast("everyone")]
    assert queues.configured_queues(app) == ["tasks"]
    app.conf.task_queues = [Broadcast("everyone")]
    assert queues.configured_queues(app) == []


@pytest.mark.django_db
def test_the_queues_measured_before_the_broker_stalled_are_kept(monkeypatch, redis_url):
    app = broker_app(redis_url)
    app.conf.task_queues = [KombuQueue(name) for name in ("a", "b", "c")]
    release = threading.Event()

    def slow(app, names, measures=None):
        measures.append(queues.Measure(names[0], messages=7))
        release.wait(10)  # then the broker stalls
        return measures

    monkeypatch.setattr(queues, "measure_queues", slow)
    monkeypatch.setattr(queues, "worker_queue_names", lambda app, timeout=1.0: {})
    monkeypatch.setattr(queues, "WORKER_QUEUES_TIMEOUT", 0.0)
    measures = queues.QueueSampler(app, timeout=0.3).measure()
    release.set()
    assert [(m.queue, m.messages) for m in measures] == [("a", 7), ("b", None), ("c", None)]
    assert measures[1].note == "no answer from the broker in 0.3 s"


@pytest.mark.django_db
def test_a_broker_that_is_down_leaves_a_gap():
    app = broker_app("redis://127.0.0.1:1/0")
    sampler = queues.QueueSampler(app, timeout=5)
    [measure] = sampler.sample()
    assert measure.messages is None
    assert measure.note.startswith("the broker could not be asked")


@pytest.mark.e2e
@pytest.mark.broker
@pytest.mark.django_db
def test_the_workers_queues_are_measured_with_their_consumers(app, celery_worker):
    worker = celery_worker("queues-1@test")
    app.control.add_consumer("extra-queue", destination=[worker.hostname], reply=True)
    consumers = queues.worker_queues(app, timeout=2)
    assert consumers.get("celery") == 1
    assert consumers.get("extra-queue") == 1
    sampler = queues.QueueSampler(app)
    measured = {m.queue: m for m in sampler.sample()}
    assert measured["celery"].consumers == 1
    assert measured["extra-queue"].messages == 0
    assert set(QueueSample.objects.values_list("queue", flat=True)) >= {"celery", "extra-queue"}


@pytest.mark.django_db
def test_the_backlog_over_a_window_with_its_gaps():
    # One sample a minute for the last hour, a gap from 20 to 10 minutes ago.
    for minutes in range(60):
        when = NOW - timedelta(minutes=minutes, seconds=5)
        gap = 10 <= minutes < 20
        QueueSample.objects.create(
            queue="celery",
            sampled=when,
            messages=None if gap else 100 - minutes,
            consumers=2,
            note="no answer from the broker in 3 s" if gap else "",
        )
    QueueSample.objects.create(
        queue="gone", sampled=NOW - timedelta(hours=1), messages=5, consumers=0
    )
    data = stats.queues("1h", now=NOW)
    [celery] = data["queues"]  # "gone" was not sampled in the last 10 minutes
    assert (celery["queue"], celery["messages"], celery["consumers"]) == ("celery", 100, 2)
    assert celery["age"] == 5
    points = celery["points"]
    assert len(points) == stats.QUEUE_POINTS
    assert points[-1] == (NOW, 100)
    values = dict(points)
    assert values[NOW - timedelta(minutes=5)] == 95  # the sample at 5 min 5 s ago
    assert values[NOW - timedelta(minutes=15)] is None  # the gap
    assert stats.queue_lengths(now=NOW)[0]["messages"] == 100


@pytest.mark.django_db
def test_a_longer_sampling_period_leaves_no_false_gaps(settings):
    # A sample every 30 s, each answered: the 15-minute chart (a point every 15 s) has
    # no gap; sampled every 15 minutes, a queue stays listed, and fresh, for its period.
    settings.CELERY_MONITOR_QUEUE_SAMPLE_EVERY = 30
    for n in range(40):
        QueueSample.objects.create(
            queue="celery", sampled=NOW - timedelta(seconds=30 * n + 1), messages=n, consumers=1
        )
    [celery] = stats.queues("15m", now=NOW)["queues"]
    assert None not in [value for _when, value in celery["points"]]
    settings.CELERY_MONITOR_QUEUE_SAMPLE_EVERY = 900
    QueueSample.objects.all().delete()
    QueueSample.objects.create(
        queue="slow", sampled=NOW - timedelta(minutes=11), messages=3, consumers=1
    )
    [slow] = stats.queue_lengths(now=NOW)
    assert slow["queue"] == "slow"
    assert slow["age"] < stats.queue_stale_after().total_seconds()


@pytest.mark.django_db
def test_the_queues_page(admin_client, client, django_user_model):
    now = datetime.now(UTC)
    for text in XSS:
        QueueSample.objects.create(queue=text, sampled=now, messages=3, consumers=1)
    QueueSample.objects.create(
        queue="folders", sampled=now, messages=None, note=queues.NOT_SUPPORTED
    )
    url = reverse("admin:celery_monitor_queue_changelist")
    for window in ("15m", "1h", "24h", "7d"):
        response = admin_client.get(url, {"window": window})
        assert response.status_code == 200
        html = response.content.decode()
        for text in XSS:
            assert text not in html
        assert "not supported by this broker" in html
        assert '<svg class="cm-chart"' in html
    data = admin_client.get(reverse("admin:celery_monitor_queue_data")).json()
    assert "folders" in data["html"]
    # The dashboard lists them and links here.
    dashboard = admin_client.get(reverse("admin:celery_monitor_dashboard_changelist"))
    assert url in dashboard.content.decode()
    client.force_login(staff(django_user_model, username="nobody"))
    assert client.get(url).status_code == 403
    client.force_login(staff(django_user_model, "view_taskstate", username="viewer"))
    assert client.get(url).status_code == 200


@pytest.mark.django_db
def test_the_metrics_export_the_queue_lengths(admin_client):
    from prometheus_client.parser import text_string_to_metric_families

    now = datetime.now(UTC)
    QueueSample.objects.create(queue="celery", sampled=now, messages=42, consumers=3)
    QueueSample.objects.create(queue="slow", sampled=now, messages=None, note="no answer")
    text = admin_client.get("/monitor/metrics").content.decode()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    lengths = {s.labels["queue"]: s.value for s in families["celery_monitor_queue_length"].samples}
    assert lengths == {"celery": 42}
    consumers = families["celery_monitor_queue_consumers"].samples
    assert [(s.labels["queue"], s.value) for s in consumers] == [("celery", 3)]


def test_an_answer_with_a_null_exchange_counts_its_queue(monkeypatch):
    from django_celery_monitor import queues

    class Inspect:
        def active_queues(self):
            return {
                "w1@h": [{"name": "a", "exchange": None}, {"name": "b"}],
                "w2@h": [
                    {"name": "a", "exchange": {"type": "direct"}},
                    {"name": "x", "exchange": {"type": "fanout"}},
                ],
            }

    class App:
        conf = type("Conf", (), {"broker_transport_options": {}})()
        control = type("Control", (), {"inspect": staticmethod(lambda **kw: Inspect())})()

        @staticmethod
        def connection_for_write(**kwargs):
            from kombu import Connection

            return Connection("memory://")

    assert queues.worker_queues(App()) == {"a": 2, "b": 1}


def test_a_worker_that_does_not_answer_keeps_its_queues_a_while(monkeypatch):
    # A solo worker busy with a long task answers nothing: its queues are still measured
    # until it has been silent for WORKER_QUEUES_KEPT, but it counts as a consumer only
    # while it answers.
    from django_celery_monitor import queues

    clock = [1000.0]
    monkeypatch.setattr(queues.time, "monotonic", lambda: clock[0])
    sampler = queues.QueueSampler(
        type("App", (), {"conf": type("Conf", (), {"task_queues": None,
                                                   "task_default_queue": "celery"})()})()
    )  # fmt: skip
    sampler._heard_from({"w1@h": ["celery", "media"], "w2@h": ["celery"]})
    assert sampler._consumers == {"celery": 2, "media": 1}
    clock[0] += 300
    sampler._heard_from({"w2@h": ["celery"]})  # w1 is busy: measured, not counted
    assert sampler._consumers == {"celery": 1, "media": 0}
    assert "media" in sampler.queue_names()
    clock[0] += queues.WORKER_QUEUES_KEPT
    sampler._heard_from({"w2@h": ["celery"]})  # w1 silent for longer than that: gone
    assert sampler._consumers == {"celery": 1}
    assert "media" not in sampler.queue_names()
