"""The admin of workers: the list, the worker's page, and the control actions.

The worker's page asks the worker itself (Celery's ``inspect``) what it runs, consumes and
knows when it is opened, and has the forms of the remote controls that act on one worker.
"""

from __future__ import annotations

import copy
import datetime
import math
from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.templatetags.admin_urls import admin_urlname
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.db.models.functions import Lower
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.functional import Promise
from django.utils.html import format_html
from django.utils.text import format_lazy
from django.utils.translation import gettext, ngettext, ngettext_lazy
from django.utils.translation import gettext_lazy as _

from .. import control
from ..models import TaskState, WorkerState
from ..sanitize import in_calendar
from .base import ModelMonitor
from .helpers import (
    MAX_ACTION_TASKS,
    MAX_ACTION_WORKERS,
    NODE_STATE_COLORS,
    _badge,
    _changelist_url,
    _log,
    _log_each,
    _refusal_text,
    _refusals,
    _reply_text,
    _short_id,
    _when,
)
from .queries import TooManyWords, search_terms

#: The worker actions that differ only in the control call they broadcast and what they say:
#: the action's name, its description, the name of the function of ``control`` it calls
#: (looked up when the action runs), the entry in each worker's history, and the message.
BROADCAST_ACTIONS: tuple[tuple[str, Promise, str, Promise, Promise], ...] = (
    (
        "enable_events",
        _("Enable events on selected workers"),
        "enable_events",
        _("Events enabled"),
        ngettext_lazy(
            "Events enabled: %(answered)d of %(count)d worker answered.",
            "Events enabled: %(answered)d of %(count)d workers answered.",
            "count",
        ),
    ),
    (
        "disable_events",
        _("Disable events on selected workers"),
        "disable_events",
        _("Events disabled"),
        ngettext_lazy(
            "Events disabled: %(answered)d of %(count)d worker answered.",
            "Events disabled: %(answered)d of %(count)d workers answered.",
            "count",
        ),
    ),
    (
        "pool_grow",
        _("Grow the pool of selected workers by one"),
        "pool_grow",
        _("Pool grown by 1"),
        ngettext_lazy(
            "Pool grown: %(answered)d of %(count)d worker answered.",
            "Pool grown: %(answered)d of %(count)d workers answered.",
            "count",
        ),
    ),
    (
        "pool_shrink",
        _("Shrink the pool of selected workers by one"),
        "pool_shrink",
        _("Pool shrunk by 1"),
        ngettext_lazy(
            "Pool shrunk: %(answered)d of %(count)d worker answered.",
            "Pool shrunk: %(answered)d of %(count)d workers answered.",
            "count",
        ),
    ),
)


#: How many tasks of each live list (running, reserved, scheduled) the worker's page shows.
MAX_LIVE_TASKS = 100
#: How many ids of revoked tasks the worker's page lists (a worker remembers up to 50,000).
MAX_REVOKED_SHOWN = 100
#: How many characters of a task's arguments, or of a setting's value, the page shows.
LIVE_TEXT_LENGTH = 160
#: The states of a task that no worker has started yet, which "revoke by name" revokes.
WAITING_STATES = ("RECEIVED", "PENDING")


# -- the forms of the worker's remote controls


class TaskNameField(forms.CharField):
    """A task name: one word, offered from the worker's registered tasks as it is typed."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("label", _("Task name"))
        kwargs.setdefault("max_length", 200)
        kwargs.setdefault(
            "widget",
            forms.TextInput(attrs={"list": "cm-registered-tasks", "autocomplete": "off"}),
        )
        super().__init__(**kwargs)

    def clean(self, value: Any) -> str:
        value = super().clean(value)
        if any(char.isspace() for char in value):
            raise forms.ValidationError(_("A task name has no spaces."), code="invalid")
        return value


class WorkerControlForm(forms.Form):
    """A remote control of the worker's page: the command, its permission and its words.

    ``asked``, ``done`` and ``refused`` are what the history and the message say when the
    worker does not answer, says ok, or refuses; they are formatted with :meth:`words`.
    """

    #: The command's name: the form's prefix and the value of its ``command`` field.
    command = ""
    #: The permission (a codename of this app) the command needs.
    permission = "control_workerstate"
    #: The function of :mod:`..control` the command calls, looked up when it runs.
    call = ""
    title: Promise = _("Control")
    button: Promise = _("Send")
    asked: Promise = _("Sent")
    done: Promise = _("Done")
    refused: Promise = _("Refused")
    #: What the command does, under its form.
    description: Promise | None = None
    #: What the worker needs for the command to take effect, said when it refuses.
    requirement: Promise | None = None
    #: When what the worker accepted takes effect, said with its answer when it is not now.
    caveat: Promise | None = None
    #: Whether the task name is checked against the worker's registered tasks.
    checks_task_name = False

    def __init__(self, *args: Any, registered: Iterable[str] | None = None, **kwargs: Any):
        kwargs.setdefault("prefix", self.command)
        super().__init__(*args, **kwargs)
        self.registered = set(registered) if registered is not None else None

    def clean_task_name(self) -> str:
        name = self.cleaned_data["task_name"]
        if self.registered is not None and name not in self.registered:
            raise forms.ValidationError(
                _("%(name)s is not a task registered on this worker."),
                code="unknown",
                params={"name": name},
            )
        return name

    def arguments(self) -> dict[str, Any]:
        """The keyword arguments of the control call."""
        return dict(self.cleaned_data)

    def words(self) -> dict[str, Any]:
        """The values the messages and the history are formatted with."""
        return dict(self.cleaned_data)


def _timeout(app: Any = None) -> str:
    """How long an answer is awaited, in seconds: ``2``."""
    return f"{control.reply_timeout(app):g}"


def _seconds_words(value: float | None) -> str:
    return gettext("none") if value is None else gettext("%(s)g s") % {"s": value}


class QueueForm(WorkerControlForm):
    queue = forms.CharField(
        label=_("Queue"),
        max_length=200,
        widget=forms.TextInput(attrs={"list": "cm-active-queues", "autocomplete": "off"}),
    )

    def clean_queue(self) -> str:
        try:
            return control.parse_queue(self.cleaned_data["queue"])
        except ValueError:
            raise forms.ValidationError(
                _("Use letters, digits and . _ - : @ / + only (at most 200)."), code="invalid"
            ) from None


class AddConsumerForm(QueueForm):
    command = call = "add_consumer"
    title = _("Add a consumer")
    button = _("Consume")
    asked = _("Add consumer: queue %(queue)s")
    done = _("Consumer added: queue %(queue)s")
    refused = _("Consumer not added: queue %(queue)s")
    description = _("The worker consumes from this queue too (declared if new).")


class CancelConsumerForm(QueueForm):
    command = call = "cancel_consumer"
    title = _("Cancel a consumer")
    button = _("Stop consuming")
    asked = _("Cancel consumer: queue %(queue)s")
    done = _("Consumer cancelled: queue %(queue)s")
    refused = _("Consumer not cancelled: queue %(queue)s")
    description = _("The worker stops taking tasks from this queue.")


class AutoscaleForm(WorkerControlForm):
    command = call = "autoscale"
    title = _("Autoscale")
    button = _("Set")
    asked = _("Autoscale: max %(maximum)d, min %(minimum)d")
    done = _("Autoscale set: max %(maximum)d, min %(minimum)d")
    refused = _("Autoscale not set: max %(maximum)d, min %(minimum)d")
    requirement = _("The worker must run with --autoscale.")

    maximum = forms.IntegerField(
        label=_("Max processes"),
        min_value=1,
        max_value=control.MAX_AUTOSCALE,
    )
    minimum = forms.IntegerField(
        label=_("Min processes"),
        min_value=0,
        max_value=control.MAX_AUTOSCALE,
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        maximum, minimum = data.get("maximum"), data.get("minimum")
        if maximum is not None and minimum is not None and minimum > maximum:
            raise forms.ValidationError(_("Min cannot be more than max."), code="invalid")
        return data


class PoolRestartForm(WorkerControlForm):
    command = call = "pool_restart"
    title = _("Restart the pool")
    button = _("Restart the pool")
    asked = _("Pool restart")
    done = _("Pool restart started")
    refused = _("Pool not restarted")
    description = _("The pool's processes are replaced; running tasks finish first.")
    requirement = _("The worker must run with the setting worker_pool_restarts = True.")


class TimeLimitForm(WorkerControlForm):
    command = call = "time_limit"
    title = _("Time limits")
    button = _("Set")
    asked = _("Time limits of %(task_name)s: soft %(soft)s, hard %(hard)s")
    done = _("Time limits of %(task_name)s set: soft %(soft)s, hard %(hard)s")
    refused = _("Time limits of %(task_name)s not set: soft %(soft)s, hard %(hard)s")
    description = _(
        "Empty: no limit. Past the soft limit a task gets SoftTimeLimitExceeded, past the "
        "hard one its process is killed."
    )
    caveat = _(
        "Celery applies new time limits to the tasks a worker starts after its pool restarts "
        "or it reconnects to the broker."
    )
    checks_task_name = True

    task_name = TaskNameField()
    soft = forms.FloatField(
        label=_("Soft (s)"),
        required=False,
        min_value=0.001,
        max_value=control.MAX_TIME_LIMIT,
        widget=forms.NumberInput(attrs={"step": "any"}),
    )
    hard = forms.FloatField(
        label=_("Hard (s)"),
        required=False,
        min_value=0.001,
        max_value=control.MAX_TIME_LIMIT,
        widget=forms.NumberInput(attrs={"step": "any"}),
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        soft, hard = data.get("soft"), data.get("hard")
        if soft is not None and hard is not None and soft >= hard:
            raise forms.ValidationError(
                _("The soft limit must be shorter than the hard one."), code="invalid"
            )
        return data

    def words(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "task_name": data["task_name"],
            "soft": _seconds_words(data["soft"]),
            "hard": _seconds_words(data["hard"]),
        }


class WorkerRateLimitForm(WorkerControlForm):
    command = "rate_limit"
    call = "worker_rate_limit"
    permission = "rate_limit_taskstate"
    title = _("Rate limit")
    button = _("Set")
    asked = _("Rate limit of %(task_name)s: %(rate)s")
    done = _("Rate limit of %(task_name)s set to %(rate)s")
    refused = _("Rate limit of %(task_name)s not set to %(rate)s")
    description = _("Tasks per second, minute or hour (10/s, 100/m, 1000/h); 0 removes it.")
    checks_task_name = True

    task_name = TaskNameField()
    rate = forms.CharField(
        label=_("Rate"),
        max_length=32,
        widget=forms.TextInput(attrs={"class": "cm-short"}),
    )

    def clean_rate(self) -> str:
        try:
            return control.parse_rate(self.cleaned_data["rate"])
        except ValueError:
            raise forms.ValidationError(
                _("Enter a number, optionally followed by /s, /m or /h."), code="invalid"
            ) from None


class RevokeWaitingForm(WorkerControlForm):
    command = "revoke_waiting"
    call = "revoke_waiting"
    permission = "revoke_taskstate"
    title = _("Revoke waiting tasks")
    button = _("Revoke")
    description = format_lazy(
        _(
            "The recorded tasks of this name received by this worker or pending, and not "
            "started (the oldest {count}): revoked on every worker; nothing is terminated."
        ),
        count=MAX_ACTION_TASKS,
    )
    # The recorded tasks tell whether any of the name waits: the worker is not asked first.

    task_name = TaskNameField()


#: The forms of the worker's page in the groups it shows them in.
CONTROL_GROUPS: tuple[tuple[Promise, tuple[type[WorkerControlForm], ...]], ...] = (
    (_("Queues"), (AddConsumerForm, CancelConsumerForm)),
    (_("Pool"), (AutoscaleForm, PoolRestartForm)),
    (_("Limits of a task type"), (TimeLimitForm, WorkerRateLimitForm)),
    (_("Waiting tasks"), (RevokeWaitingForm,)),
)
#: The same forms by command.
CONTROL_FORMS: dict[str, type[WorkerControlForm]] = {
    form.command: form for _title, forms_ in CONTROL_GROUPS for form in forms_
}


# -- what the worker answered, made ready for the page


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


def _broadcast_action(
    name: str, description: Promise, call: str, log: Promise, done: Promise
) -> Callable[..., None]:
    """The admin action ``name``: ``control.<call>`` broadcast to the selected workers."""

    @admin.action(description=description, permissions=["control"])
    def action(self: WorkerMonitor, request: HttpRequest, queryset: QuerySet) -> None:
        self._broadcast(request, queryset, getattr(control, call), str(log), done)

    action.__name__ = name
    action.__qualname__ = f"WorkerMonitor.{name}"
    return action


def _with_broadcast_actions(cls: type[WorkerMonitor]) -> type[WorkerMonitor]:
    """Set the actions of :data:`BROADCAST_ACTIONS` on the class, before it is registered."""
    for spec in BROADCAST_ACTIONS:
        setattr(cls, spec[0], _broadcast_action(*spec))
    return cls


@admin.register(WorkerState)
@_with_broadcast_actions
class WorkerMonitor(ModelMonitor):
    """Workers: who is online, what they run, and the buttons to control them."""

    list_display = (
        "hostname",
        "status_badge",
        "heartbeat",
        "sw_ver",
        "processed",
        "active",
        "loadavg_display",
    )
    search_fields = ("^hostname",)
    search_help_text = _("The beginning of a hostname, whatever its case.")
    ordering = ("-last_heartbeat",)
    change_form_template = "admin/django_celery_monitor/worker_change_form.html"
    # Those that only broadcast a control call are made from BROADCAST_ACTIONS.
    actions = [
        "shutdown_nodes",
        "enable_events",
        "disable_events",
        "pool_grow",
        "pool_shrink",
        "ping_workers",
    ]
    change_list_template = "admin/django_celery_monitor/change_list.html"

    def get_search_results(self, request, queryset, search_term):
        """The workers whose hostname starts with each word, whatever the case.

        Compared as lower case by the database, since on MySQL and MariaDB hostnames are
        compared byte for byte (a worker's table is small: no index is needed).
        """
        if tuple(self.get_search_fields(request)) != ("^hostname",) or not search_term:
            return super().get_search_results(request, queryset, search_term)
        try:
            terms = search_terms(search_term)
        except TooManyWords:
            resolved = getattr(request, "resolver_match", None)
            if getattr(resolved, "url_name", None) == "autocomplete":
                # Django's autocomplete (a task's worker) answers no error but a 500.
                return queryset.none(), False
            raise
        queryset = queryset.alias(hostname_lower=Lower("hostname"))
        for term in terms:
            queryset = queryset.filter(hostname_lower__startswith=term.lower())
        return queryset, False

    fieldsets = (
        (
            None,
            {
                "fields": (
                    "hostname",
                    "status_badge",
                    "heartbeat",
                    "heartbeat_every",
                    "signed_off",
                    "tasks_link",
                )
            },
        ),
        (_("Software"), {"fields": ("sw_ident", "sw_ver", "sw_sys")}),
        (_("Load"), {"fields": ("processed", "active", "loadavg_display", "last_update")}),
    )
    readonly_fields = tuple(field for _title, options in fieldsets for field in options["fields"])

    @admin.display(description=_("status"))
    def status_badge(self, obj: WorkerState) -> str:
        status = "ONLINE" if obj.is_alive() else "OFFLINE"
        label = gettext("online") if status == "ONLINE" else gettext("offline")
        return _badge(label, NODE_STATE_COLORS[status])

    @admin.display(description=_("last heartbeat"), ordering="last_heartbeat")
    def heartbeat(self, obj: WorkerState) -> str:
        return _when(obj.last_heartbeat) or "-"

    @admin.display(description=_("heartbeat every"))
    def heartbeat_every(self, obj: WorkerState) -> str:
        # ``freq``: the period the worker said it sends its heartbeats at.
        if obj.freq is None:
            return "-"
        return gettext("%(s)g s") % {"s": obj.freq}

    @admin.display(description=_("signed off"))
    def signed_off(self, obj: WorkerState) -> str:
        # ``offline``: a worker-offline event came after its last heartbeat.
        if obj.offline:
            return gettext("yes: it said it was stopping (worker-offline)")
        return gettext("no")

    @admin.display(description=_("load average"))
    def loadavg_display(self, obj: WorkerState) -> str:
        if not obj.loadavg:
            return ""
        return format_html(
            '<code class="cm-fixedwidth">{}</code>',
            " ".join(
                f"{value:.2f}" if isinstance(value, float) else str(value) for value in obj.loadavg
            ),
        )

    @admin.display(description=_("tasks"))
    def tasks_link(self, obj: WorkerState) -> str:
        url = f"{_changelist_url(TaskState, self.admin_site.name)}?worker={obj.pk}"
        return format_html('<a href="{}">{}</a>', url, gettext("Tasks of this worker"))

    def has_control_permission(self, request: HttpRequest) -> bool:
        return self._has_perm(request, "control_workerstate")

    def _hostnames(self, request, queryset) -> list[WorkerState] | None:
        """The selected workers, or None (and a message) when there are too many."""
        workers = list(queryset.order_by("hostname")[: MAX_ACTION_WORKERS + 1])
        if len(workers) > MAX_ACTION_WORKERS:
            self.message_user(
                request,
                ngettext(
                    "Select at most %(count)d worker for this action.",
                    "Select at most %(count)d workers for this action.",
                    MAX_ACTION_WORKERS,
                )
                % {"count": MAX_ACTION_WORKERS},
                messages.ERROR,
            )
            return None
        return workers

    def _broadcast(self, request, queryset, call, log: str, done: Any, **kwargs) -> None:
        workers = self._hostnames(request, queryset)
        if not workers:
            return
        replies = self._control(request, call, [w.hostname for w in workers], **kwargs)
        if replies is None:
            return
        refused = dict(_refusals(replies.items()))
        silent = gettext("%(action)s (no answer)") % {"action": log}
        entries = []
        for worker in workers:
            if worker.hostname in refused:
                entry = gettext("%(action)s: refused (%(reason)s)") % {
                    "action": log,
                    "reason": refused[worker.hostname],
                }
            else:
                entry = log if worker.hostname in replies else silent
            entries.append((worker, entry))
        _log_each(request, entries)
        text = str(done % {"count": len(workers), "answered": len(replies)})
        if refused:
            text += " " + _refusal_text(list(refused.items()))
        accepted = len(replies) - len(refused)
        self.message_user(
            request, text, messages.SUCCESS if accepted and not refused else messages.WARNING
        )

    @admin.action(description=_("Shut down selected workers"), permissions=["control"])
    def shutdown_nodes(self, request, queryset):
        workers = self._hostnames(request, queryset)
        if not workers:
            return
        sent = self._control(request, control.shutdown, [w.hostname for w in workers])
        if sent is None:
            return
        _log(request, workers, gettext("Shut down"))
        self.message_user(
            request,
            ngettext(
                "Shutdown sent to %(count)d worker.",
                "Shutdown sent to %(count)d workers.",
                len(sent),
            )
            % {"count": len(sent)},
            messages.SUCCESS,
        )

    @admin.action(description=_("Ping selected workers"), permissions=["control"])
    def ping_workers(self, request, queryset):
        workers = self._hostnames(request, queryset)
        if not workers:
            return
        answered = self._control(request, control.ping, [w.hostname for w in workers])
        if answered is None:
            return
        _log_each(
            request,
            [
                (
                    w,
                    gettext("Pinged (answered in %(ms).1f ms)") % {"ms": answered[w.hostname]}
                    if w.hostname in answered
                    else gettext("Pinged (no answer)"),
                )
                for w in workers
            ],
        )
        text = ngettext(
            "%(answered)d of %(count)d worker answered",
            "%(answered)d of %(count)d workers answered",
            len(workers),
        ) % {"answered": len(answered), "count": len(workers)}
        details = [
            gettext("%(host)s in %(ms).1f ms") % {"host": host, "ms": ms}
            for host, ms in sorted(answered.items(), key=lambda item: item[1])
        ]
        silent = [w.hostname for w in workers if w.hostname not in answered]
        if silent:
            details.append(gettext("no answer from %(hosts)s") % {"hosts": ", ".join(silent)})
        if details:
            text += ": " + "; ".join(details)
        self.message_user(request, text + ".", messages.SUCCESS if answered else messages.WARNING)

    # -- the worker's page: what the worker answers, and its remote controls

    def get_urls(self) -> list:
        return [
            path(
                "<path:object_id>/control/",
                self.admin_site.admin_view(self.control_view),
                name=f"{self.opts.app_label}_{self.opts.model_name}_control",
            ),
            *super().get_urls(),
        ]

    def _control_permitted(self, request: HttpRequest, form: type[WorkerControlForm]) -> bool:
        return self._has_perm(request, form.permission)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        """The worker's page: its recorded fields, then what it answers now, then controls.

        The worker is asked here, so only its own page asks it, never the list.
        """
        if obj is not None and not add:
            context.update(self._live_context(request, obj, context.get("cm_bound_form")))
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _live_context(
        self, request: HttpRequest, worker: WorkerState, bound: WorkerControlForm | None
    ) -> dict[str, Any]:
        app = self.get_celery_app()
        live: dict[str, Any] = {"asked_at": timezone.now(), "timeout": _timeout(app)}
        registered: list[str] | None = None
        try:
            answers = control.inspect(worker.hostname, app=app)
        except control.ControlError as exc:
            live["error"] = str(exc.__cause__ or exc)
        else:
            state = Live(
                worker.hostname, answers, self.admin_site.name, getattr(app, "namespace", None)
            )
            live.update(state.context())
            registered = state.registered()
        groups = []
        for title, form_classes in CONTROL_GROUPS:
            shown = [
                bound
                if bound is not None and bound.command == form_class.command
                else form_class(registered=registered)
                for form_class in form_classes
                if self._control_permitted(request, form_class)
            ]
            if shown:
                groups.append({"title": title, "forms": shown})
        return {
            "cm_live": live,
            "cm_control_groups": groups,
            "cm_control_url": reverse(
                admin_urlname(self.opts, "control"),
                args=[quote(worker.pk)],
                current_app=self.admin_site.name,
            ),
            "cm_registered": registered or [],
        }

    def control_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Run one remote control of the worker's page (a POST), then show the page again."""
        worker = self.get_object(request, unquote(object_id))
        if worker is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_permission(request, worker):
            raise PermissionDenied
        page = reverse(
            admin_urlname(self.opts, "change"),
            args=[quote(worker.pk)],
            current_app=self.admin_site.name,
        )
        if request.method != "POST":
            return HttpResponseRedirect(page)
        form_class = CONTROL_FORMS.get(request.POST.get("command", ""))
        if form_class is None:
            return HttpResponseBadRequest(gettext("Unknown command."))
        if not self._control_permitted(request, form_class):
            raise PermissionDenied
        registered = None
        if form_class.checks_task_name:
            answers = self._control(request, control.inspect, worker.hostname, ["registered"])
            if answers is None:
                return HttpResponseRedirect(page)
            replies = answers["registered"].replies
            if worker.hostname not in replies:
                # A worker that does not say what it runs would not answer the command
                # either: one wait is enough.
                self._not_answered(request, worker, form_class.title)
                return HttpResponseRedirect(f"{page}#cm-control")
            registered = list(control.parse_registered(replies[worker.hostname]))
        form = form_class(request.POST, registered=registered)
        if not form.is_valid():
            # The page again, with the form's errors, as a GET would show it.
            shown = copy.copy(request)
            shown.method = "GET"
            return self.change_view(shown, object_id, extra_context={"cm_bound_form": form})
        if isinstance(form, RevokeWaitingForm):
            self._revoke_waiting(request, worker, form.cleaned_data["task_name"])
        else:
            self._run_control(request, worker, form)
        return HttpResponseRedirect(f"{page}#cm-control")

    def _not_answered(self, request: HttpRequest, worker: WorkerState, title: Any) -> None:
        """Say and record that the worker did not say what tasks it runs, so that the
        command ``title`` was not sent."""
        timeout = _timeout(self.get_celery_app())
        _log(
            request,
            [worker],
            gettext("%(title)s: not sent (no answer in %(timeout)s s)")
            % {"title": title, "timeout": timeout},
        )
        self.message_user(
            request,
            gettext(
                "%(title)s: %(host)s did not say what tasks it runs within %(timeout)s s, "
                "so nothing was sent."
            )
            % {"title": title, "host": worker.hostname, "timeout": timeout},
            messages.WARNING,
        )

    def _run_control(
        self, request: HttpRequest, worker: WorkerState, form: WorkerControlForm
    ) -> None:
        """Send one command to the worker; say and record who answered, how fast, and what."""
        answer = self._control(
            request, getattr(control, form.call), worker.hostname, **form.arguments()
        )
        if answer is None:
            return
        words = form.words()
        host = worker.hostname
        if host not in answer.replies:
            asked = str(form.asked) % words
            _log(
                request,
                [worker],
                gettext("%(asked)s (no answer in %(timeout)s s)")
                % {"asked": asked, "timeout": _timeout(self.get_celery_app())},
            )
            self.message_user(
                request,
                gettext("%(asked)s: %(host)s did not answer in %(timeout)s s.")
                % {"asked": asked, "host": host, "timeout": _timeout(self.get_celery_app())},
                messages.WARNING,
            )
            return
        ok, text = _reply_text(answer.replies[host])
        ms = answer.ms[host]
        if ok:
            done = str(form.done) % words
            _log(
                request,
                [worker],
                gettext("%(done)s (answered in %(ms).1f ms)") % {"done": done, "ms": ms},
            )
            message = gettext("%(done)s: %(host)s answered in %(ms).1f ms: %(text)s.") % {
                "done": done,
                "host": host,
                "ms": ms,
                "text": text,
            }
            if form.caveat:
                message += " " + str(form.caveat)
            self.message_user(request, message, messages.SUCCESS)
            return
        refused = str(form.refused) % words
        _log(
            request,
            [worker],
            gettext("%(refused)s: %(text)s (answered in %(ms).1f ms)")
            % {"refused": refused, "text": text, "ms": ms},
        )
        message = gettext("%(refused)s: %(host)s refused in %(ms).1f ms: %(text)s.") % {
            "refused": refused,
            "host": host,
            "ms": ms,
            "text": text,
        }
        if form.requirement:
            message += " " + str(form.requirement)
        self.message_user(request, message, messages.ERROR)

    def _revoke_waiting(self, request: HttpRequest, worker: WorkerState, name: str) -> None:
        """Revoke the tasks of ``name`` this worker received, or no worker did, not started.

        The oldest :data:`MAX_ACTION_TASKS` of them; nothing is terminated.
        """
        waiting = list(
            TaskState.objects.filter(name=name, state__in=WAITING_STATES, hidden=False)
            .filter(Q(worker=worker) | Q(worker__isnull=True))
            .order_by("tstamp")[: MAX_ACTION_TASKS + 1]
        )
        more, tasks = len(waiting) > MAX_ACTION_TASKS, waiting[:MAX_ACTION_TASKS]
        if not tasks:
            self.message_user(
                request,
                gettext("No task of %(name)s is waiting: nothing to revoke.") % {"name": name},
                messages.INFO,
            )
            return
        expected = self._online_workers()
        answer = self._control(
            request, control.revoke_waiting, [t.task_id for t in tasks], expected=expected
        )
        if answer is None:
            return
        done = ngettext(
            "Revoked %(count)d waiting task of %(name)s",
            "Revoked %(count)d waiting tasks of %(name)s",
            len(tasks),
        ) % {"count": len(tasks), "name": name}
        if more:
            done += gettext(" (the oldest; more are waiting)")
        if worker.hostname in answer.replies:
            log = gettext("%(done)s (answered in %(ms).1f ms)") % {
                "done": done,
                "ms": answer.ms[worker.hostname],
            }
        elif expected and len(answer.replies) >= expected and worker.is_alive():
            # As many workers answered as were online, others first: the wait ended there.
            log = ngettext(
                "%(done)s (its answer not awaited: %(count)d worker answered first)",
                "%(done)s (its answer not awaited: %(count)d workers answered first)",
                len(answer.replies),
            ) % {"done": done, "count": len(answer.replies)}
        else:
            log = gettext("%(done)s (no answer in %(timeout)s s)") % {
                "done": done,
                "timeout": _timeout(self.get_celery_app()),
            }
        _log(request, [worker], log)
        _log(request, tasks, gettext("Revoked"))
        if answer.replies:
            who = "; ".join(
                gettext("%(host)s in %(ms).1f ms") % {"host": host, "ms": ms}
                for host, ms in sorted(answer.ms.items(), key=lambda item: item[1])
            )
            text = ngettext(
                "%(done)s: %(count)d worker acknowledged: %(who)s.",
                "%(done)s: %(count)d workers acknowledged: %(who)s.",
                len(answer.replies),
            ) % {"done": done, "count": len(answer.replies), "who": who}
            self.message_user(request, text, messages.SUCCESS)
        else:
            self.message_user(
                request,
                gettext("%(done)s: no worker answered in %(timeout)s s.")
                % {"done": done, "timeout": _timeout(self.get_celery_app())},
                messages.WARNING,
            )
