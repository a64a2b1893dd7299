"""After the camera starts: what became of the tasks it last saw unfinished.

Redis sends events by PUB/SUB, and Celery's receiver queue goes with the camera on other
brokers too: the events of a task that ended while no camera listened are gone. When the
project has a result backend, the camera reads the end of those tasks from it (the row gets
the final state, the result or the exception, and a note that says where they came from);
without one, the rows are left as they are, with a note that their state may be stale. A
later event of the task replaces either.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any

from celery import states
from celery.backends.base import DisabledBackend
from celery.utils.saferepr import saferepr

from .models import TaskState
from .redaction import Redactor
from .sanitize import clean_datetime, clean_text
from .utils import fromtimestamp
from .writer import RECONCILED_NOTE, STALE_NOTE, write_snapshot

__all__ = ["reconcile_unfinished"]

logger = logging.getLogger(__name__)

#: How many rows one write of the reconciliation carries.
BATCH = 500


def _backend(app: Any) -> Any:
    backend = app.backend
    return None if isinstance(backend, DisabledBackend) else backend


def _row(meta: dict, limit: int) -> dict[str, Any]:
    status, result = meta["status"], meta.get("result")
    row: dict[str, Any] = {
        "state": status,
        "tstamp": clean_datetime(meta.get("date_done")) or fromtimestamp(time.time()),
        "traceback": clean_text(meta.get("traceback"), limit),
        "note": RECONCILED_NOTE,
    }
    text = clean_text(saferepr(result), limit) if result is not None else None
    if status == states.FAILURE:
        row["exception"] = row["result"] = text
    else:
        row["result"] = text
    return row


def reconcile_unfinished(
    app: Any, started_at: datetime, settings: Any, events_kept: bool = False
) -> tuple[int, int]:
    """Settle the tasks recorded unfinished before ``started_at``; return (settled, stale).

    Looks up at most ``monitor_reconcile_max_tasks`` of the latest in the result backend.
    The rest are noted as possibly stale, unless the broker kept the events meanwhile
    (``events_kept``: the camera's durable queue on RabbitMQ).
    """
    unfinished = (
        TaskState.objects.filter(hidden=False, tstamp__lt=started_at)
        .exclude(state__in=sorted(states.READY_STATES))
        .order_by("-tstamp")
    )
    backend = _backend(app)
    settled = 0
    if backend is not None:
        limit = settings.max_text_length
        # The backend's results are redacted as the camera redacts the events' own.
        redactor = Redactor.from_settings(settings)
        names = dict(unfinished.values_list("task_id", "name")[: settings.reconcile_max_tasks])
        task_ids = list(names)
        for start in range(0, len(task_ids), BATCH):
            rows = {}
            for task_id in task_ids[start : start + BATCH]:
                try:
                    meta = backend.get_task_meta(task_id, cache=False)
                except Exception:
                    logger.warning(
                        "The result backend did not answer for %s.", task_id, exc_info=True
                    )
                    continue
                if meta.get("status") in states.READY_STATES:
                    row = _row(meta, limit)
                    if redactor:
                        redactor.apply(names[task_id], row)
                    rows[task_id] = row
            if rows:
                settled += write_snapshot({}, rows)[1]
    stale = 0
    if not events_kept:
        stale = TaskState.objects.all()._in_batches(
            unfinished.filter(note=None).order_by(), lambda rows: rows.update(note=STALE_NOTE)
        )
    if settled or stale:
        logger.warning(
            "Since the camera last ran: %d unfinished tasks were settled from the result "
            "backend; %d may be stale.",
            settled,
            stale,
        )
    return settled, stale
