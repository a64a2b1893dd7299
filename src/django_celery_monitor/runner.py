"""Run the event receiver and the camera until told to stop, reconnecting to the broker."""

from __future__ import annotations

import gc
import socket
import threading
from typing import Any

from celery import Celery
from celery.utils.log import get_logger
from django.db import connections

from .camera import Camera
from .events import SafeEventReceiver, Shard

logger = get_logger(__name__)

#: Seconds to wait before reconnecting: doubles after each failure, up to the maximum.
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0


#: The allocations between two collections of the youngest generation, in a camera process.
GC_THRESHOLD = 50_000


def tune_garbage_collector(threshold: int = GC_THRESHOLD) -> tuple[int, ...]:
    """Collect garbage less often, in a process that runs a camera; return the old thresholds.

    Celery's State keeps tens of thousands of objects alive, and with Python's default
    threshold (700 allocations) the collector walks them again and again: it took half of
    the time of ``State.event`` in the ingest benchmark. The camera and Celery's State make
    few reference cycles, so waiting longer between collections costs little memory.
    Called by ``manage.py celery_monitor``, not by the runner, which may run in someone
    else's process.
    """
    previous = gc.get_threshold()
    gc.set_threshold(max(threshold, previous[0]), *previous[1:])
    return previous


def default_queue_name(shard: Shard | None = None) -> str:
    """A receiver queue name fixed for this host (and shard), so a restart reuses its queue."""
    name = f"celery_monitor.{socket.gethostname()}"
    return name if shard is None else f"{name}.shard{shard.index}of{shard.count}"


class MonitorRunner:
    """Consume the event stream into a State and let the camera write it to the database.

    The camera takes a shot every ``freq`` seconds and cleans up every ``cleanup_freq``
    seconds. With a ``shard`` ("K/N") it keeps only the tasks of that shard. When the broker
    connection is lost the runner reconnects, waiting longer after each failure; the camera
    keeps writing what it already has in the meantime. ``stop()`` (from a signal handler or
    another thread) ends ``run()``, which takes a last shot.
    """

    def __init__(
        self,
        app: Celery,
        freq: float = 2.0,
        maxrate: str | None = None,
        cleanup_freq: float = 3600.0,
        enable_events_every: float | None = None,
        queue_name: str | None = None,
        max_tasks_in_memory: int = 100_000,
        camera_class: type[Camera] = Camera,
        shard: Shard | str | None = None,
    ) -> None:
        self.app = app
        self.enable_events_every = enable_events_every
        self.shard = Shard.parse(shard) if isinstance(shard, str) else shard
        self.queue_name = queue_name or default_queue_name(self.shard)
        self.state = app.events.State(max_tasks_in_memory=max_tasks_in_memory)
        self.camera = camera_class(
            self.state,
            freq=freq,
            maxrate=maxrate,
            cleanup_freq=cleanup_freq,
            app=app,
            shard=self.shard,
        )
        with app.connection_for_read() as connection:  # not connected: the transport only
            self.camera.events_kept_while_away = connection.transport.driver_type == "amqp"
        self.reconnects = 0
        self.connected = threading.Event()
        self._stopping = threading.Event()
        self._receiver: Any = None

    def stop(self) -> None:
        """Ask ``run()`` to return; it does within about a second."""
        self._stopping.set()
        if self._receiver is not None:
            self._receiver.should_stop = True

    def on_event(self, event: dict) -> None:
        """Hand an event to the state, through the camera's guard (which never raises)."""
        self.state.event(event)

    def on_checked_event(self, event: dict) -> None:
        """Hand the state an event the receiver has checked, and kept for this camera's
        shard, already: each event is checked once (:meth:`on_event` checks it again)."""
        self.camera.handle_checked(event)

    def enable_events(self) -> None:
        """Ask every worker to send task events (they do not by default)."""
        try:
            self.app.control.enable_events()
        except Exception:  # the broker is down: the receiver loop reports it
            logger.debug("Could not broadcast enable_events.", exc_info=True)

    def run(self) -> None:
        """Capture events until ``stop()``; then take a last shot and return."""
        self.camera.install()
        if self.enable_events_every:
            self.camera.timer.call_repeatedly(self.enable_events_every, self.enable_events)
        backoff = BACKOFF_START
        try:
            while not self._stopping.is_set():
                try:
                    self._capture()
                    backoff = BACKOFF_START
                except Exception as exc:
                    if self._stopping.is_set():
                        break
                    self.connected.clear()
                    self.reconnects += 1
                    logger.warning(
                        "Lost the broker connection (%s: %s); reconnecting in %.0f s.",
                        type(exc).__name__,
                        exc,
                        backoff,
                    )
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
        finally:
            self.camera.cancel()
            self.camera.close()
            connections.close_all()
            logger.info("Stopped.")

    def receiver(self, connection: Any) -> SafeEventReceiver:
        """The event receiver: on RabbitMQ, reading a durable queue that outlives the camera.

        Events sent while the camera restarts wait in its queue, which is named after the
        host (``--queue-name``), kept ``monitor_event_queue_expires`` seconds after its
        last reader left, with at most ``monitor_event_queue_max_length`` events. Other
        transports (Redis sends events by PUB/SUB) keep Celery's options. What the receiver
        refuses counts with the camera's guard; a shard's receiver drops the other shards'
        task events first.
        """
        settings, options = self.camera.settings, {}
        if self.camera.events_kept_while_away:
            expires = float(settings.event_queue_expires)
            options = {
                "queue_durable": True,
                "queue_exclusive": False,
                "queue_expires": expires,
                "queue_ttl": expires,
            }
        receiver = SafeEventReceiver(
            connection,
            handlers={"*": self.on_checked_event},
            node_id=self.queue_name,
            app=self.app,
            **options,
        )
        if self.camera.events_kept_while_away:
            receiver.queue.max_length = settings.event_queue_max_length
        receiver.guard, receiver.shard = self.camera.guard, self.camera.shard
        return receiver

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1)
            receiver = self.receiver(connection)
            self._receiver = receiver
            if self._stopping.is_set():
                return
            consume_ready = receiver.on_consume_ready

            def on_consume_ready(*args: Any, **kwargs: Any) -> None:
                consume_ready(*args, **kwargs)
                # The queue is bound now: events sent from here on reach the camera.
                logger.info("Connected to %s; capturing events.", connection.as_uri())
                self.connected.set()
                if self.enable_events_every:
                    self.enable_events()

            receiver.on_consume_ready = on_consume_ready
            receiver.capture(limit=None, timeout=None, wakeup=True)
