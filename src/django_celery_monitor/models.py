"""The data models for the task and worker states."""

from __future__ import annotations

import time

from celery import states
from celery.events.state import heartbeat_expires
from django.db import models
from django.utils.translation import gettext_lazy as _

from . import managers
from .conf import monitor_settings
from .utils import posix_timestamp

ALL_STATES = sorted(states.ALL_STATES | {states.REJECTED})
TASK_STATE_CHOICES = sorted(zip(ALL_STATES, ALL_STATES, strict=True))

#: The default of ``monitor_worker_alive_grace``: seconds added to Celery's own heartbeat
#: expiry (two heartbeat periods) before a worker row counts as offline, since the row is
#: only as fresh as the camera's last shot.
HEARTBEAT_GRACE = 10.0

#: The heartbeat period assumed for rows written before the period was recorded.
DEFAULT_HEARTBEAT_FREQ = 60.0


class WorkerState(models.Model):
    """The data model to store the worker state in."""

    #: The hostname of the Celery worker.
    hostname = models.CharField(_("hostname"), max_length=255, unique=True)
    #: A :class:`~datetime.datetime` describing when the worker was last seen.
    last_heartbeat = models.DateTimeField(_("last heartbeat"), null=True, db_index=True)
    #: When the camera last wrote this row.
    last_update = models.DateTimeField(_("last update"), auto_now=True)
    #: The heartbeat period the worker announced, in seconds.
    freq = models.FloatField(_("heartbeat frequency"), null=True, blank=True)
    #: The software the worker runs (``py-celery``) and its version.
    sw_ident = models.CharField(_("software"), max_length=255, null=True, blank=True)
    sw_ver = models.CharField(_("software version"), max_length=64, null=True, blank=True)
    sw_sys = models.CharField(_("operating system"), max_length=64, null=True, blank=True)
    #: How many tasks the worker has processed and is processing, as of its last heartbeat.
    processed = models.BigIntegerField(_("processed"), null=True, blank=True)
    active = models.IntegerField(_("active"), null=True, blank=True)
    #: The 1, 5 and 15 minute load averages of the worker's host.
    loadavg = models.JSONField(_("load average"), null=True, blank=True)
    #: Whether the worker said goodbye (a ``worker-offline`` event) after its last heartbeat.
    offline = models.BooleanField(_("offline"), default=False)

    objects = managers.WorkerStateQuerySet.as_manager()

    class Meta:
        """Model meta-data."""

        verbose_name = _("worker")
        verbose_name_plural = _("workers")
        get_latest_by = "last_heartbeat"
        ordering = ["-last_heartbeat"]
        permissions = [
            ("control_workerstate", _("Can control workers (shutdown, events, pool, ping)")),
        ]

    def __str__(self) -> str:
        return self.hostname

    def __repr__(self) -> str:
        return f"<WorkerState: {self.hostname}>"

    def is_alive(self) -> bool:
        """Return whether the worker is currently alive or not.

        A worker is alive while its last heartbeat is younger than Celery's expiry window
        (two heartbeat periods) plus ``monitor_worker_alive_grace`` seconds for the camera's
        snapshot delay, and it has not said goodbye since.
        """
        if not self.last_heartbeat or self.offline:
            return False
        freq = self.freq or DEFAULT_HEARTBEAT_FREQ
        grace = monitor_settings.worker_alive_grace
        expires = heartbeat_expires(self.heartbeat_timestamp, freq) + grace
        return time.time() < expires

    @property
    def heartbeat_timestamp(self) -> float:
        """The last heartbeat as a POSIX timestamp.

        A naive value (``USE_TZ`` off) is a time in ``TIME_ZONE``; in the hour its clock
        repeats in autumn, the later of the two instants it can name is taken unless that is
        still to come.
        """
        return posix_timestamp(self.last_heartbeat, stored=True)


class TaskState(models.Model):
    """The data model to store the task state in."""

    #: The :mod:`task state <celery.states>` as returned by Celery.
    #: Indexed by the (state, tstamp) index, whose first column it is.
    state = models.CharField(_("state"), max_length=64)
    #: The task id (a UUID unless the caller chose its own).
    task_id = models.CharField(_("UUID"), max_length=255, unique=True)
    #: The task name.
    name = models.CharField(_("name"), max_length=200, null=True, db_index=True)
    #: A datetime describing when the task's latest state event happened.
    tstamp = models.DateTimeField(_("event received at"), db_index=True)
    #: The positional task arguments (a repr, possibly cut by Celery).
    args = models.TextField(_("Arguments"), null=True)
    #: The keyword task arguments (a repr, possibly cut by Celery).
    kwargs = models.TextField(_("Keyword arguments"), null=True)
    #: An optional datetime describing the ETA for its processing.
    eta = models.DateTimeField(_("ETA"), null=True)
    #: An optional datetime describing when the task expires.
    expires = models.DateTimeField(_("expires"), null=True)
    #: The result of the task (for a failed task without result: its exception).
    result = models.TextField(_("result"), null=True)
    #: The Python error traceback if raised.
    traceback = models.TextField(_("traceback"), null=True)
    #: The task runtime in seconds.
    runtime = models.FloatField(
        _("execution time"), null=True, help_text=_("in seconds if task succeeded")
    )
    #: The number of retries.
    retries = models.IntegerField(_("number of retries"), default=0)
    #: The worker responsible for the execution of the task.
    #: Indexed by the (worker, tstamp) index, whose first column it is.
    worker = models.ForeignKey(
        WorkerState,
        null=True,
        verbose_name=_("worker"),
        on_delete=models.CASCADE,
        db_index=False,
    )
    #: Whether the task has been expired and will be purged by the event framework.
    hidden = models.BooleanField(editable=False, default=False, db_index=True)
    #: When a worker received the task, and when it started running it.
    received = models.DateTimeField(_("received"), null=True, blank=True)
    started = models.DateTimeField(_("started"), null=True, blank=True)
    #: The exception a failed or retried task raised.
    exception = models.TextField(_("exception"), null=True, blank=True)
    #: The task that sent this one, and the first task of its workflow.
    parent_id = models.CharField(_("parent id"), max_length=255, null=True, blank=True)
    root_id = models.CharField(_("root id"), max_length=255, null=True, blank=True)
    #: Why the row may not be what the events said: its final state was read from the result
    #: backend, or the camera restarted while it was unfinished (see ``reconcile``).
    note = models.CharField(_("note"), max_length=255, null=True, blank=True)
    #: The task was received or running on a worker that stopped without finishing it (its
    #: heartbeats stopped, or it went offline). A later event of the task clears it.
    lost = models.BooleanField(
        _("lost"),
        default=False,
        help_text=_("Its worker stopped while the task was unfinished."),
    )

    objects = managers.TaskStateQuerySet.as_manager()

    class Meta:
        """Model meta-data."""

        verbose_name = _("task")
        verbose_name_plural = _("tasks")
        get_latest_by = "tstamp"
        ordering = ["-tstamp"]
        indexes = [
            models.Index(fields=["state", "-tstamp"], name="cm_task_state_tstamp_idx"),
            models.Index(fields=["name", "-tstamp"], name="cm_task_name_tstamp_idx"),
            models.Index(fields=["worker", "-tstamp"], name="cm_task_worker_tstamp_idx"),
            # The list filtered by name or worker counts the tasks of each state, and lists
            # those of one state, from these.
            models.Index(fields=["name", "state", "-tstamp"], name="cm_task_name_state_idx"),
            models.Index(fields=["worker", "state", "-tstamp"], name="cm_task_worker_state_idx"),
            models.Index(fields=["parent_id"], name="cm_task_parent_id_idx"),
            models.Index(fields=["root_id"], name="cm_task_root_id_idx"),
            models.Index(fields=["lost", "-tstamp"], name="cm_task_lost_tstamp_idx"),
        ]
        permissions = [
            ("revoke_taskstate", _("Can revoke, terminate and kill tasks")),
            ("rate_limit_taskstate", _("Can change the rate limit of task types")),
            ("retry_taskstate", _("Can send tasks again")),
        ]

    def __str__(self) -> str:
        name = self.name or "UNKNOWN"
        text = f"{self.state:<10} {self.task_id:<36} {name}"
        if self.eta:
            text += f" eta:{self.eta}"
        return text

    def __repr__(self) -> str:
        name = self.name or "UNKNOWN"
        return f"<TaskState: {self.state} {name}[{self.task_id}] ts:{self.tstamp}>"
