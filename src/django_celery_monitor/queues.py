"""The lengths of the broker's queues, measured now and then and kept over time.

Which queues: those the workers consume from (their ``active_queues``, asked with one
short broadcast every :data:`WORKER_QUEUES_EVERY` seconds) and those the project configures
(``task_queues``, or ``task_default_queue``).

How: on Redis and the other transports Kombu emulates (the folder broker of the demo
among them), the channel's own count of a queue's messages, every priority level of it
and with ``global_keyprefix`` (Kombu's client adds the prefix). On RabbitMQ, a passive
declare of the queue, which answers the message and consumer counts without the
management plugin. A transport that cannot count is reported "not supported", never as
zero. Each measure runs in a thread of its own and is given :data:`TIMEOUT` seconds: a
broker that does not answer in time leaves a gap (a sample without a length, whose note
says why), never a stalled camera.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu.transport.virtual import Transport as VirtualTransport

from .conf import get_celery_app
from .control import broker_connection

__all__ = ["Measure", "QueueSampler", "configured_queues", "measure_queues"]

logger = logging.getLogger(__name__)

#: Seconds a measure of every queue may take before its queues are recorded as a gap.
TIMEOUT = 3.0
#: Seconds between two questions to the workers about the queues they consume.
WORKER_QUEUES_EVERY = 60.0
#: The most queues measured (a cluster with more is cut, with a warning).
MAX_QUEUES = 200

NOT_SUPPORTED = "not supported by this broker"


@dataclass
class Measure:
    """What is known of one queue at one moment."""

    queue: str
    messages: int | None = None
    consumers: int | None = None
    note: str = ""


def configured_queues(app: Celery) -> list[str]:
    """The queues the project configures: ``task_queues``, else the default queue."""
    queues = app.conf.task_queues
    names = [getattr(queue, "name", queue) for queue in queues or ()]
    if not names:
        names = [app.conf.task_default_queue]
    return [name for name in names if isinstance(name, str) and name]


def worker_queues(app: Celery, timeout: float = 1.0) -> dict[str, int]:
    """The queues the workers consume from, with how many workers consume each.

    One broadcast of ``active_queues``; a worker that does not answer in ``timeout``
    seconds is left out. Broadcast queues (``celery.pidbox``...) are not counted.
    """
    with broker_connection(app, timeout) as connection:
        # One try: a broker that is down answers at once, not after Kombu's retries.
        connection.ensure_connection(max_retries=0, timeout=timeout)
        inspect = app.control.inspect(timeout=timeout, connection=connection)
        replies = inspect.active_queues() or {}
    consumers: dict[str, int] = {}
    for queues in replies.values():
        for queue in queues or ():
            name = queue.get("name") if isinstance(queue, dict) else None
            if not isinstance(name, str) or not name or queue.get("exclusive"):
                continue
            exchange = queue.get("exchange")
            if isinstance(exchange, dict) and exchange.get("type") == "fanout":
                continue
            consumers[name] = consumers.get(name, 0) + 1
    return consumers


def measure_queues(app: Celery, names: Iterable[str]) -> list[Measure]:
    """Count the messages of each queue in ``names`` on the app's broker, now.

    Raises on a broker that cannot be reached; a queue the broker does not know is
    recorded with a note ("not declared") and no length.
    """
    names = list(names)
    with broker_connection(app, TIMEOUT, read=True) as connection:
        connection.ensure_connection(max_retries=0, timeout=TIMEOUT)
        transport = connection.transport
        if not isinstance(transport, VirtualTransport):
            if getattr(transport, "driver_type", "") == "amqp":
                return [_declare_passively(connection, name) for name in names]
            return [Measure(name, note=NOT_SUPPORTED) for name in names]
        channel = connection.default_channel
        size = getattr(channel, "_size", None)
        if size is None:
            return [Measure(name, note=NOT_SUPPORTED) for name in names]
        measures = []
        for name in names:
            try:
                measures.append(Measure(name, messages=int(size(name))))
            except NotImplementedError:
                measures.append(Measure(name, note=NOT_SUPPORTED))
        return measures


def _declare_passively(connection: Any, name: str) -> Measure:
    """RabbitMQ: the counts of a passive declare, on a channel of its own (a queue that
    does not exist closes the channel)."""
    channel = connection.channel()
    try:
        ok = channel.queue_declare(queue=name, passive=True)
        return Measure(name, messages=ok.message_count, consumers=ok.consumer_count)
    except connection.channel_errors as exc:
        if "NOT_FOUND" in str(exc) or getattr(exc, "code", None) == 404:
            return Measure(name, note="not declared on the broker")
        raise
    finally:
        with contextlib.suppress(Exception):  # a channel the broker closed already
            channel.close()


class QueueSampler:
    """Measures the queues on a thread of its own and writes the samples.

    :meth:`sample` never blocks its caller longer than ``timeout`` seconds and never
    raises: a broker that is slow or down leaves a gap, one measure at a time (the next
    waits while the previous is still stuck in the broker).
    """

    def __init__(self, app: Celery | None = None, timeout: float = TIMEOUT) -> None:
        self.app = get_celery_app(app)
        self.timeout = timeout
        self._consumers: dict[str, int] = {}
        self._asked_workers = -float("inf")
        self._busy = threading.Lock()

    def queue_names(self) -> list[str]:
        names = dict.fromkeys(configured_queues(self.app))
        names.update(dict.fromkeys(sorted(self._consumers)))
        found = list(names)
        if len(found) > MAX_QUEUES:
            logger.warning("Measuring the first %d of %d queues.", MAX_QUEUES, len(found))
        return found[:MAX_QUEUES]

    def _measure(self, result: dict) -> None:
        try:
            now = time.monotonic()
            if now - self._asked_workers >= WORKER_QUEUES_EVERY:
                self._asked_workers = now
                try:
                    self._consumers = worker_queues(self.app)
                except Exception:  # the broker is down: measured (and reported) below
                    logger.debug("Could not ask the workers for their queues.", exc_info=True)
            names = self.queue_names()
            result["names"] = names
            result["measures"] = measure_queues(self.app, names)
        except Exception as exc:
            result["error"] = exc
        finally:
            self._busy.release()

    def measure(self) -> list[Measure]:
        """The queues now; each queue with a note and no length when there is no answer."""
        if not self._busy.acquire(blocking=False):
            return [Measure(name, note="the previous measure is still waiting for the broker")
                    for name in self.queue_names()]  # fmt: skip
        result: dict[str, Any] = {}
        thread = threading.Thread(
            target=self._measure, args=(result,), name="queue-sampler", daemon=True
        )
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            return [Measure(name, note=f"no answer from the broker in {self.timeout:g} s")
                    for name in self.queue_names()]  # fmt: skip
        if "error" in result:
            error = result["error"]
            note = f"the broker could not be asked: {error.__class__.__name__}"
            return [Measure(name, note=note) for name in result.get("names") or self.queue_names()]
        measures = result["measures"]
        for measure in measures:
            if measure.consumers is None and measure.messages is not None:
                measure.consumers = self._consumers.get(measure.queue, 0)
        return measures

    def sample(self, using: str = "default") -> list[Measure]:
        """Measure the queues and write one sample each; return the measures."""
        from django.db import DatabaseError
        from django.utils import timezone

        from .models import QueueSample

        measures = self.measure()
        now = timezone.now()
        try:
            QueueSample.objects.using(using).bulk_create(
                QueueSample(
                    queue=measure.queue[:255],
                    sampled=now,
                    messages=measure.messages,
                    consumers=measure.consumers,
                    note=measure.note[:255],
                )
                for measure in measures
            )
        except DatabaseError:
            logger.warning("Could not write the queue samples.", exc_info=True)
        return measures
