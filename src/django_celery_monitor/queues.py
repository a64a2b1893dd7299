"""The lengths of the broker's queues, measured now and then and kept over time.

Which queues: those the workers consume from (their ``active_queues``, asked with one
short broadcast every :data:`WORKER_QUEUES_EVERY` seconds) and those the project configures
(``task_queues``, or ``task_default_queue``).

How: on Redis and the other transports Kombu emulates (the folder broker of the demo
among them), the channel's own count of a queue's messages, every priority level of it
and with ``global_keyprefix`` (Kombu's client adds the prefix). On RabbitMQ, a passive
declare of the queue, which answers the message and consumer counts without the
management plugin. A transport that cannot count is reported "not supported", never as
zero; a queue the broker refuses to count (another client's exclusive queue, a key of
another type on Redis) gets a note of its own, and the others their counts. Each measure
runs in a thread of its own and is given :data:`TIMEOUT` seconds (and the time the workers
are given to answer, when they are asked): the queues the broker did not answer for in
time are a gap (a sample without a length, whose note says why), never a stalled camera.
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
from .control import broker_connection, connect

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
    """The queues the project configures: ``task_queues``, else the default queue.

    Broadcast queues are left out: each consumer declares one of its own, under a name
    made anew at each start.
    """
    queues = list(app.conf.task_queues or ())
    names = [
        getattr(queue, "name", queue)
        for queue in queues
        if getattr(getattr(queue, "exchange", None), "type", None) != "fanout"
    ]
    if not queues:
        names = [app.conf.task_default_queue]
    return [name for name in names if isinstance(name, str) and name]


#: Seconds the workers are given to say which queues they consume.
WORKER_QUEUES_TIMEOUT = 1.0


#: How long the queues a worker named stay measured when it does not answer (a busy solo
#: worker answers nothing while it runs a task).
WORKER_QUEUES_KEPT = 600.0


def worker_queue_names(
    app: Celery, timeout: float = WORKER_QUEUES_TIMEOUT
) -> dict[str, list[str]]:
    """The queues each worker that answered in ``timeout`` seconds consumes from.

    One broadcast of ``active_queues``. Broadcast queues (``celery.pidbox``...) and
    exclusive ones are left out.
    """
    with broker_connection(app, timeout) as connection:
        # One try a URL: a broker that is down answers at once, not after Kombu's retries.
        connect(connection, timeout)
        inspect = app.control.inspect(timeout=timeout, connection=connection)
        replies = inspect.active_queues() or {}
    answers: dict[str, list[str]] = {}
    for hostname, queues in replies.items():
        names = answers.setdefault(str(hostname), [])
        for queue in queues or ():
            name = queue.get("name") if isinstance(queue, dict) else None
            if not isinstance(name, str) or not name or queue.get("exclusive"):
                continue
            exchange = queue.get("exchange")
            if isinstance(exchange, dict) and exchange.get("type") == "fanout":
                continue
            if name not in names:
                names.append(name)
    return answers


def _consumer_counts(answers: Iterable[list[str]]) -> dict[str, int]:
    consumers: dict[str, int] = {}
    for names in answers:
        for name in names:
            consumers[name] = consumers.get(name, 0) + 1
    return consumers


def worker_queues(app: Celery, timeout: float = WORKER_QUEUES_TIMEOUT) -> dict[str, int]:
    """The queues the workers consume from, with how many workers consume each (those that
    answered in ``timeout`` seconds: see :func:`worker_queue_names`)."""
    return _consumer_counts(worker_queue_names(app, timeout).values())


def measure_queues(
    app: Celery, names: Iterable[str], measures: list[Measure] | None = None
) -> list[Measure]:
    """Count the messages of each queue in ``names`` on the app's broker, now.

    Each measure is appended to ``measures`` (a new list by default, returned) as soon as
    it is known. Raises on a broker that cannot be reached. On RabbitMQ a queue the broker
    does not know is recorded with a note ("not declared") and no length (and is not
    created); on Redis it has no messages. A queue the broker refuses to count gets a
    note with the broker's error, and the others are counted.
    """
    names = list(names)
    measures = [] if measures is None else measures
    with broker_connection(app, TIMEOUT, read=True) as connection:
        connect(connection, TIMEOUT)
        transport = connection.transport
        if not isinstance(transport, VirtualTransport):
            if getattr(transport, "driver_type", "") == "amqp":
                _declare_passively(connection, names, measures)
            else:
                measures.extend(Measure(name, note=NOT_SUPPORTED) for name in names)
            return measures
        channel = connection.default_channel
        size = getattr(channel, "_size", None)
        if size is None:
            measures.extend(Measure(name, note=NOT_SUPPORTED) for name in names)
            return measures
        for name in names:
            try:
                measures.append(Measure(name, messages=int(size(name))))
            except NotImplementedError:
                measures.append(Measure(name, note=NOT_SUPPORTED))
            except connection.connection_errors:
                raise
            except Exception as exc:  # this queue's: a key of another type (WRONGTYPE)
                measures.append(Measure(name, note=_refused(exc)))
        return measures


def _refused(exc: BaseException) -> str:
    return f"the broker refused to count it: {exc.__class__.__name__}"


def _declare_passively(connection: Any, names: list[str], measures: list[Measure]) -> None:
    """RabbitMQ: the counts of a passive declare of each queue, on one channel until a
    queue the broker refuses closes it (a queue that does not exist, another client's
    exclusive queue), then on a new one."""
    channel = None
    try:
        for name in names:
            if len(name.encode("utf-8", "surrogatepass")) > 255:
                measures.append(Measure(name, note="a name longer than AMQP's 255 bytes"))
                continue
            if channel is None:
                channel = connection.channel()
            try:
                ok = channel.queue_declare(queue=name, passive=True)
            except connection.channel_errors as exc:
                with contextlib.suppress(Exception):  # the broker closed it already
                    channel.close()
                channel = None
                if "NOT_FOUND" in str(exc) or getattr(exc, "code", None) == 404:
                    measures.append(Measure(name, note="not declared on the broker"))
                else:
                    measures.append(Measure(name, note=_refused(exc)))
                continue
            measures.append(Measure(name, messages=ok.message_count, consumers=ok.consumer_count))
    finally:
        if channel is not None:
            with contextlib.suppress(Exception):
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
        #: Each worker's last answer: when, and its queues.
        self._answers: dict[str, tuple[float, list[str]]] = {}
        self._asked_workers = -float("inf")
        self._busy = threading.Lock()

    def queue_names(self) -> list[str]:
        names = dict.fromkeys(configured_queues(self.app))
        names.update(dict.fromkeys(sorted(self._consumers)))
        found = list(names)
        if len(found) > MAX_QUEUES:
            logger.warning("Measuring the first %d of %d queues.", MAX_QUEUES, len(found))
        return found[:MAX_QUEUES]

    def _measure(self, result: dict, ask_workers: bool) -> None:
        try:
            if ask_workers:
                try:
                    self._heard_from(worker_queue_names(self.app))
                except Exception:  # the broker is down: measured (and reported) below
                    logger.debug("Could not ask the workers for their queues.", exc_info=True)
            names = self.queue_names()
            result["names"] = names
            measure_queues(self.app, names, result.setdefault("measures", []))
        except Exception as exc:
            result["error"] = exc
        finally:
            self._busy.release()

    def _heard_from(self, answers: dict[str, list[str]]) -> None:
        """Note the workers' answers. A worker that did not answer keeps its last queues
        measured for :data:`WORKER_QUEUES_KEPT` seconds (a busy solo worker, silent while
        it runs a task, leaves no gap in its queues' samples), but counts as a consumer
        only while it answers (one stopped, or gone under a new name, is not one)."""
        now = time.monotonic()
        for hostname, names in answers.items():
            self._answers[hostname] = (now, names)
        for hostname, (heard, _names) in list(self._answers.items()):
            if now - heard > WORKER_QUEUES_KEPT:
                del self._answers[hostname]
        kept = {name: 0 for _heard, names in self._answers.values() for name in names}
        self._consumers = {**kept, **_consumer_counts(answers.values())}

    def measure(self) -> list[Measure]:
        """The queues now; each queue with a note and no length when there is no answer."""
        if not self._busy.acquire(blocking=False):
            return [Measure(name, note="the previous measure is still waiting for the broker")
                    for name in self.queue_names()]  # fmt: skip
        now = time.monotonic()
        ask_workers = now - self._asked_workers >= WORKER_QUEUES_EVERY
        if ask_workers:
            self._asked_workers = now
        result: dict[str, Any] = {}
        thread = threading.Thread(
            target=self._measure, args=(result, ask_workers), name="queue-sampler", daemon=True
        )
        thread.start()
        # The workers' answers take their whole time: it is not the queues'.
        thread.join(self.timeout + (WORKER_QUEUES_TIMEOUT if ask_workers else 0.0))
        # What was measured in time is kept (a copy: the thread may still add to it).
        measured = list(result.get("measures", ()))
        if thread.is_alive():
            note = f"no answer from the broker in {self.timeout:g} s"
        elif "error" in result:
            note = f"the broker could not be asked: {result['error'].__class__.__name__}"
        else:
            note = ""
        known = {measure.queue for measure in measured}
        names = result.get("names") or self.queue_names()
        measured += [Measure(name, note=note) for name in names if name not in known]
        for measure in measured:
            if measure.consumers is None and measure.messages is not None:
                measure.consumers = self._consumers.get(measure.queue, 0)
        return measured

    def sample(self, using: str | None = None) -> list[Measure]:
        """Measure the queues and write one sample each (in ``using``, by default the
        database the routers write the samples to); return the measures."""
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
