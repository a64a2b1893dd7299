"""The forms of a worker's remote controls: one per command, each with its permission.

The worker's page shows them in :data:`CONTROL_GROUPS`; what a form sends, and what the
history and the message say of the answer, is the worker admin's (:mod:`.workers`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django import forms
from django.utils.functional import Promise
from django.utils.text import format_lazy
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from .. import control
from .helpers import MAX_ACTION_TASKS, RateField


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
    rate = RateField(label=_("Rate"), widget=forms.TextInput(attrs={"class": "cm-short"}))


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
