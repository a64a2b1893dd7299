"""What one worker answered Celery's ``inspect`` commands, made ready for its page."""

from __future__ import annotations

import datetime
import math
from typing import Any

from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from .. import control
from ..models import TaskState
from ..sanitize import in_calendar
from .helpers import _short_id, _when

#: How many tasks of each live list (running, reserved, scheduled) the worker's page shows.
MAX_LIVE_TASKS = 100
#: How many ids of revoked tasks the worker's page lists (a worker remembers up to 50,000).
MAX_REVOKED_SHOWN = 100
#: How many characters of a task's arguments, or of a setting's value, the page shows.
LIVE_TEXT_LENGTH = 160


def _text(value: Any, length: int = LIVE_TEXT_LENGTH) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= length else text[: length - 1] + "…"


def _call_args(request: dict[str, Any]) -> str:
    """A task's arguments as a call would write them: ``2, 3, retry=False``."""
    args, kwargs = request.get("args"), request.get("kwargs")
    parts: list[str] = []
    if isinstance(args, list | tuple):
        parts.extend(repr(arg) for arg in args)
    elif args not in (None, "", "()", "[]"):
        parts.append(str(args))
    if isinstance(kwargs, dict):
        parts.extend(f"{key}={value!r}" for key, value in kwargs.items())
    elif kwargs not in (None, "", "{}"):
        parts.append(str(kwargs))
    return _text(", ".join(parts))


def _timestamp(value: Any) -> datetime.datetime | None:
    """A worker's time: a POSIX timestamp (``time_start``) or an ISO 8601 text (``eta``)."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            parsed = datetime.datetime.fromtimestamp(value, tz=datetime.timezone.utc)
        elif isinstance(value, str) and value:
            parsed = datetime.datetime.fromisoformat(value)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    # Shown in the page's time zone: a time at either end of the calendar is none.
    return parsed if timezone.is_aware(parsed) and in_calendar(parsed) else None


def _at(value: datetime.datetime | None) -> str:
    """A time to come: the time of day when it is today, else the date and time."""
    if value is None:
        return ""
    local = timezone.localtime(value)
    today = timezone.localtime(datetime.datetime.now(tz=datetime.timezone.utc)).date()
    same_day = local.date() == today
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        formats.date_format(local, "DATETIME_FORMAT"),
        formats.time_format(local, "H:i:s")
        if same_day
        else formats.date_format(local, "SHORT_DATETIME_FORMAT"),
    )


def _duration(seconds: Any) -> str:
    """An uptime in its two largest units: ``3 d 4 h``, ``2 h 5 min``, ``12 s``."""
    if (
        not isinstance(seconds, int | float)
        or isinstance(seconds, bool)
        or not 0 <= seconds < math.inf  # NaN too
    ):
        return "-"
    seconds = int(seconds)
    units = ((gettext("d"), 86400), (gettext("h"), 3600), (gettext("min"), 60), (gettext("s"), 1))
    parts: list[str] = []
    for label, size in units:
        if seconds >= size or parts:
            parts.append(f"{seconds // size} {label}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts) or f"0 {gettext('s')}"


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Live:
    """What one worker answered the inspect commands, in the shape its page shows."""

    def __init__(
        self,
        hostname: str,
        answers: dict[str, control.Answer],
        current_app: str | None,
        namespace: str | None = None,
    ) -> None:
        self.hostname = hostname
        self.current_app = current_app
        self.namespace = namespace  # the Celery app's settings namespace ("CELERY")
        self.answers = {
            command: {
                "answered": hostname in answer.replies,
                "ms": answer.ms.get(hostname),
            }
            for command, answer in answers.items()
        }
        self.values = {
            command: answer.replies.get(hostname) for command, answer in answers.items()
        }
        self._links: dict[str, str] = {}

    def context(self) -> dict[str, Any]:
        # Celery's answer holds all of its configuration source (Django's settings too).
        conf, conf_others = control.celery_settings(self.values.get("conf"), self.namespace)
        scheduled = [
            {**_dict(entry.get("request")), "eta": entry.get("eta")}
            for entry in map(_dict, _list(self.values.get("scheduled")))
        ]
        lists = {
            "active": _list(self.values.get("active"))[:MAX_LIVE_TASKS],
            "reserved": _list(self.values.get("reserved"))[:MAX_LIVE_TASKS],
            "scheduled": scheduled[:MAX_LIVE_TASKS],
        }
        revoked = [str(task_id) for task_id in _list(self.values.get("revoked"))]
        self._link_ids(
            [
                str(_dict(request).get("id"))
                for requests in lists.values()
                for request in requests
                if _dict(request).get("id")
            ]
            + revoked[:MAX_REVOKED_SHOWN]
        )
        totals = _dict(_dict(self.values.get("stats")).get("total"))
        return {
            "answers": self.answers,
            "stats": self._stats(),
            "queues": self._queues(),
            "tasks": [
                {
                    "command": command,
                    "title": title,
                    "when_label": when_label,
                    "rows": [self._task_row(_dict(request), when) for request in lists[command]],
                    "count": len(_list(self.values.get(command))),
                    "answer": self.answers.get(command),
                }
                for command, title, when_label, when in (
                    ("active", _("Running"), _("started"), "time_start"),
                    ("reserved", _("Reserved"), None, None),
                    ("scheduled", _("Scheduled (ETA or countdown)"), _("ETA"), "eta"),
                )
            ],
            "revoked": {
                "count": len(revoked),
                "ids": [self._task_id(task_id) for task_id in revoked[:MAX_REVOKED_SHOWN]],
                "more": max(0, len(revoked) - MAX_REVOKED_SHOWN),
            },
            "registered": [
                {
                    "name": name,
                    "rate_limit": info.get("rate_limit"),
                    "soft_time_limit": info.get("soft_time_limit"),
                    "time_limit": info.get("time_limit"),
                    "done": totals.get(name, 0),
                }
                for name, info in sorted((self.registered_info() or {}).items())
            ],
            "conf": [(key, _text(value)) for key, value in sorted(conf.items())],
            "conf_others": conf_others,
        }

    def registered_info(self) -> dict[str, dict[str, str]] | None:
        """The worker's tasks with the limits it holds for them; None when it did not answer."""
        if not self.answers.get("registered", {}).get("answered"):
            return None
        return control.parse_registered(self.values.get("registered"))

    def registered(self) -> list[str] | None:
        """The names of the worker's tasks, or None when it did not answer."""
        info = self.registered_info()
        return None if info is None else sorted(info)

    def _link_ids(self, task_ids: list[str]) -> None:
        if not task_ids:
            return
        change = admin_urlname(TaskState._meta, "change")
        # Ids a row can hold: any client may revoke "a\x00b", which PostgreSQL's driver
        # refuses to send.
        longest = TaskState._meta.get_field("task_id").max_length
        ids = {
            i
            for i in task_ids
            if isinstance(i, str) and i and "\x00" not in i and len(i) <= longest
        }
        recorded = TaskState.objects.filter(task_id__in=ids).values_list("task_id", "pk")
        self._links = {
            task_id: reverse(change, args=[quote(pk)], current_app=self.current_app)
            for task_id, pk in recorded
        }

    def _task_id(self, task_id: str) -> dict[str, Any]:
        return {"id": task_id, "short": _short_id(task_id), "url": self._links.get(task_id)}

    def _task_row(self, request: dict[str, Any], when: str | None) -> dict[str, Any]:
        moment = _timestamp(request.get(when)) if when else None
        return {
            **self._task_id(str(request.get("id") or "")),
            "name": _text(request.get("name") or request.get("type") or "", 200),
            "args": _call_args(request),
            # A start is in the past ("3 seconds ago"), an ETA in the future: its time.
            "when": _when(moment) if when == "time_start" else _at(moment),
        }

    def _stats(self) -> list[tuple[Any, Any]]:
        stats = _dict(self.values.get("stats"))
        if not stats:
            return []
        pool = _dict(stats.get("pool"))
        autoscaler = _dict(stats.get("autoscaler"))
        implementation = str(pool.get("implementation") or "")
        rows: list[tuple[Any, Any]] = [
            (_("PID"), stats.get("pid")),
            (_("pool"), implementation.rpartition(".")[2].split(":")[0] or "-"),
            (_("concurrency"), pool.get("max-concurrency")),
        ]
        if autoscaler:
            rows.append(
                (
                    _("autoscale"),
                    gettext("%(current)s now, min %(min)s, max %(max)s")
                    % {
                        "current": autoscaler.get("qty", "?"),
                        "min": autoscaler.get("min", "?"),
                        "max": autoscaler.get("max", "?"),
                    },
                )
            )
        processes = _list(pool.get("processes"))
        rows += [
            (_("processes"), " ".join(str(pid) for pid in processes) or "-"),
            (_("max tasks per child"), pool.get("max-tasks-per-child")),
            (_("prefetch count"), stats.get("prefetch_count")),
            (_("uptime"), _duration(stats.get("uptime"))),
            (_("broker"), self._broker(_dict(stats.get("broker")))),
        ]
        return [(label, "-" if value in (None, "") else value) for label, value in rows]

    def _broker(self, broker: dict[str, Any]) -> str:
        if not broker:
            return ""
        # Built from the parts the worker tells: never its credentials.
        port = f":{broker['port']}" if broker.get("port") else ""
        vhost = broker.get("virtual_host") or ""
        return f"{broker.get('transport', '?')}://{broker.get('hostname', '')}{port}/{vhost}"

    def _queues(self) -> list[dict[str, Any]]:
        queues = []
        for queue in map(_dict, _list(self.values.get("active_queues"))):
            exchange = _dict(queue.get("exchange"))
            queues.append(
                {
                    "name": str(queue.get("name", "")),
                    "exchange": str(exchange.get("name") or ""),
                    "type": str(exchange.get("type") or ""),
                    "routing_key": str(queue.get("routing_key") or ""),
                }
            )
        return queues
