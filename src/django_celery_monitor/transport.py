"""A broker in local folders whose messages are never read half-written.

Kombu's own ``filesystem://`` transport (kombu 5.x) creates a message file in the queue
folder and only then locks and writes it, while a consumer moves the file away and reads it
without that lock: a consumer can take an empty or partial message, and the worker dies with
``JSONDecodeError`` (kombu issue #1551). It also moves claimed files to the system's temporary
folder, which may be another filesystem where a move is a copy, so two consumers can take one
message; and it rewrites the exchange tables in place, where a reader can find them half
written.

This transport keeps Kombu's options (``data_folder_in``, ``data_folder_out``,
``control_folder``, ``store_processed``, ``processed_folder``) and makes every change visible
at once, with a rename inside one filesystem:

- a message is written under ``<data_folder_out>/.incoming/`` and renamed into its queue's
  folder ``<data_folder_out>/<queue>/``: a consumer sees a whole file or none;
- a consumer claims a message by renaming it into ``<data_folder_in>/.claimed/``: only one
  rename of a file succeeds, so one consumer takes it, and no other;
- an exchange table is rewritten into a temporary file and renamed over the old one, under a
  lock file of its own, so readers need no lock and writers lose no binding;
- queues declared ``auto_delete`` (event receivers, reply queues) are deleted with their
  messages when the channel closes, as Kombu's Redis transport does, so a receiver that went
  away does not leave a queue collecting events.

Use it with Celery::

    broker_url = "filesystem://"
    broker_transport = "django_celery_monitor.transport:FilesystemTransport"
    broker_transport_options = {
        "data_folder_in": "/srv/broker/messages",
        "data_folder_out": "/srv/broker/messages",
        "control_folder": "/srv/broker/control",
    }

It suits development and demos on one machine (every process must see the same folders); it
is not a production broker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any
from urllib.parse import quote

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

__all__ = ["FilesystemChannel", "FilesystemTransport"]

logger = logging.getLogger(__name__)

#: Where a message is written before it is renamed into its queue's folder.
INCOMING = ".incoming"
#: Where a consumer moves the message it takes, before reading it.
CLAIMED = ".claimed"
#: Where a message that cannot be decoded is put aside, instead of stopping the consumer.
REJECTED = ".rejected"
#: The longest folder name a queue gets before its name is shortened with a hash.
MAX_NAME = 200


def queue_folder_name(queue: str) -> str:
    """The folder name of a queue: its name with unsafe characters percent-encoded.

    Names starting with a dot are encoded too, so a queue never takes the name of one of the
    transport's own folders.
    """
    name = quote(queue, safe="@_-.")
    if not name:
        name = "%"
    elif name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(queue.encode("utf-8", "surrogatepass")).hexdigest()
        name = f"{name[: MAX_NAME - 41]}~{digest}"
    return name


def message_file_name() -> str:
    """A unique message file name that sorts in the order the messages were written."""
    return f"{time.time_ns():020d}-{uuid.uuid4().hex}.msg"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _write_atomically(data: bytes, folder: Path, target: Path) -> None:
    """Write ``data`` to a new file in ``folder``, then rename it to ``target``."""
    temporary = folder / f"{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "xb") as file:
            file.write(data)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


class FilesystemChannel(filesystem.Channel):
    """A filesystem channel whose writes are renames (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Message files listed in a queue's folder and not taken yet, oldest first.
        self._listed: dict[str, deque[str]] = {}
        self._auto_delete_queues: set[str] = set()

    # -- folders -------------------------------------------------------------------------

    def _queue_path(self, base: str, queue: str) -> Path:
        return Path(base) / queue_folder_name(queue)

    def _folder(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- messages ----------------------------------------------------------------------------

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Add a message to ``queue``: written aside, then renamed into the queue's folder."""
        base = Path(self.data_folder_out)
        data = dumps(payload).encode("utf-8")
        name = message_file_name()
        try:
            incoming = self._folder(base / INCOMING)
            target = self._folder(self._queue_path(self.data_folder_out, queue)) / name
            _write_atomically(data, incoming, target)
        except OSError as exc:
            raise ChannelError(f"Cannot add a message to queue {queue!r} in {base}") from exc

    def _get(self, queue: str) -> Any:
        """Take the oldest message of ``queue`` that no other consumer took first."""
        folder = self._queue_path(self.data_folder_in, queue)
        listed = self._listed.get(queue)
        if not listed:
            try:
                names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
            except FileNotFoundError:
                raise Empty() from None
            listed = self._listed[queue] = deque(names)
        claimed = self._folder(Path(self.data_folder_in) / CLAIMED)
        while listed:
            name = listed.popleft()
            mine = claimed / f"{uuid.uuid4().hex}-{name}"
            try:
                os.rename(folder / name, mine)
            except FileNotFoundError:
                continue  # another consumer took it (or the queue was purged)
            try:
                payload = mine.read_bytes()
            except OSError as exc:
                raise ChannelError(f"Cannot read the message {mine}") from exc
            try:
                message = loads(payload.decode("utf-8"))
            except ValueError:
                self._reject(mine, queue)
                continue
            self._done(mine, name)
            return message
        raise Empty()

    def _reject(self, path: Path, queue: str) -> None:
        """Put an undecodable message aside, so that it does not stop the consumer."""
        rejected = self._folder(Path(self.data_folder_in) / REJECTED)
        os.replace(path, rejected / path.name)
        logger.error("A message of queue %r cannot be decoded; moved it to %s.", queue, rejected)

    def _done(self, path: Path, name: str) -> None:
        if self.store_processed:
            processed = self._folder(Path(self.processed_folder))
            shutil.move(str(path), str(processed / name))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _purge(self, queue: str) -> int:
        """Remove every message of ``queue``; return how many were removed."""
        self._listed.pop(queue, None)
        folder = self._queue_path(self.data_folder_in, queue)
        count = 0
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return 0
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                count += 1
        return count

    def _size(self, queue: str) -> int:
        """Return the number of messages in ``queue``."""
        try:
            return sum(1 for entry in os.scandir(self._queue_path(self.data_folder_in, queue)))
        except FileNotFoundError:
            return 0

    # -- queues and exchanges ------------------------------------------------------------------

    def _new_queue(self, queue: str, auto_delete: bool = False, **kwargs: Any) -> None:
        if auto_delete:
            self._auto_delete_queues.add(queue)
        self._folder(self._queue_path(self.data_folder_out, queue))

    def close(self) -> None:
        if not self.closed:
            for queue in list(self._auto_delete_queues):
                try:
                    self.queue_delete(queue)
                except (OSError, ChannelError):
                    logger.warning("Could not delete queue %r.", queue, exc_info=True)
            self._auto_delete_queues.clear()
        super().close()

    def get_table(self, exchange: str) -> list[filesystem.exchange_queue_t]:
        """The bindings of ``exchange``; the file is only ever replaced whole."""
        file = self._exchange_file(exchange)
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        if not data:
            return []
        return [filesystem.exchange_queue_t(*binding) for binding in loads(data.decode())]

    def _update_table(self, exchange: str, change) -> None:
        """Apply ``change`` to the bindings of ``exchange`` under its lock; write them whole."""
        file = self._exchange_file(exchange)
        folder = self._folder(self.control_folder)
        try:
            with _locked(folder / f"{file.name}.lock"):
                table = self.get_table(exchange)
                new = change(list(table))
                if new != table:
                    _write_atomically(dumps(new).encode("utf-8"), folder, file)
        except OSError as exc:
            raise ChannelError(f"Cannot update {file}") from exc

    def queue_bind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        exchange = exchange or "amq.direct"
        known = self.state.has_binding(queue, exchange, routing_key)
        super().queue_bind(queue, exchange, routing_key, arguments, **kwargs)
        if known:
            # The state is per process; the binding it remembers may since have been
            # deleted from the folder by another process (or the folder emptied).
            meta = self.typeof(exchange).prepare_bind(queue, exchange, routing_key, arguments)
            self._queue_bind(exchange, *meta)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")

        def add(table: list) -> list:
            return table if binding in table else [binding, *table]

        self._update_table(exchange, add)

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args, **kwargs):
        """Delete ``queue``: its messages, and its binding to ``exchange``."""
        self._auto_delete_queues.discard(queue)
        self._purge(queue)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda table: [b for b in table if b != binding])


class FilesystemTransport(filesystem.Transport):
    """Kombu's filesystem transport with atomic writes (see the module's docstring)."""

    Channel = FilesystemChannel
