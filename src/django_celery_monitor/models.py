"""The data models for the task and worker states."""

from __future__ import annotations

import time

from celery import states
from celery.events.state import heartbeat_expires
from django.db import models
from django.utils.translation import gettext_lazy as _

from . import managers
from .conf import monitor_settings
from .indexes import PartialIndex
from .utils import posix_timestamp

ALL_STATES = sorted(states.ALL_STATES | {states.REJECTED})
TASK_STATE_CHOICES = sorted(zip(ALL_STATES, ALL_STATES, strict=True))

#: The default of ``monitor_worker_alive_grace``: seconds added to Celery's own heartbeat
#: expiry (two heartbeat periods) before a worker row counts as offline, since the row is
#: only as fresh as the camera's last shot.
HEARTBEAT_GRACE = 10.0

#: The heartbeat period assumed for rows written before the period was recorded.
DEFAULT_HEARTBEAT_FREQ = 60.0
#: The longest heartbeat period taken at a worker's word (a day): a longer one, announced
#: by a broken worker, is judged as this, so that its expiry stays a date.
MAX_HEARTBEAT_FREQ = 86_400.0


def heartbeat_window(freq: float | None) -> float:
    """Seconds a worker of heartbeat period ``freq`` stays alive after a heartbeat:
    Celery's expiry window (two periods), the grace of ``monitor_worker_alive_grace`` not
    included. A missing, zero or negative period is the default one."""
    if freq is None or not freq > 0:
        freq = DEFAULT_HEARTBEAT_FREQ
    return heartbeat_expires(0.0, min(freq, MAX_HEARTBEAT_FREQ))


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
    #: How many of the worker's tasks the camera never heard start: the growth of the
    #: worker's ``processed`` count between heartbeats, less the task-started events the
    #: camera received from it meanwhile (since the camera or the worker last started).
    events_missed = models.BigIntegerField(_("events missed"), null=True, blank=True)

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
        grace = monitor_settings.worker_alive_grace
        return time.time() < self.heartbeat_timestamp + heartbeat_window(self.freq) + grace

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
    #: The task name. Indexed by the (name, tstamp) index, whose first column it is; on
    #: PostgreSQL also for LIKE 'prefix%' (the pattern index its first migration made).
    name = models.CharField(_("name"), max_length=200, null=True)
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
    #: Indexed by the partial hidden index: only the rows the purge looks for.
    hidden = models.BooleanField(editable=False, default=False)
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
            # Every index costs each write of a task row. These three index the few rows
            # their lookups look for (hidden, lost, children): the others skip them.
            # The purge reads the hidden rows in key order, each batch from where the last
            # one ended (MySQL's whole index of hidden ends with the key too).
            PartialIndex(
                fields=["id"],
                name="cm_task_hidden_idx",
                where=models.Q(hidden=True),
                whole_fields=["hidden"],
            ),
            # By time ascending: read backwards, SQLite's index then gives the list's order
            # (the latest first, then the highest key), which it does not when descending.
            PartialIndex(
                fields=["tstamp"],
                name="cm_task_lost_idx",
                where=models.Q(lost=True),
                whole_fields=["lost", "-tstamp"],
            ),
            PartialIndex(
                fields=["parent_id"],
                name="cm_task_parent_idx",
                where=models.Q(parent_id__isnull=False),
            ),
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

    def get_state_display(self) -> str:
        """The state as 1.1.2's field choices showed it: the state itself (the field has
        no choices now, so that a custom state is no invalid value)."""
        return self.state


class TaskRollup(models.Model):
    """The finished tasks of one minute or one hour, by name, state and exception type.

    Written from the task table by :func:`django_celery_monitor.stats.roll_up` once a
    minute has passed, so that the dashboard, the API and the metrics read a handful of
    rows per bucket instead of every task of a long window. Runtimes and queue waits are
    kept as log-scale histograms (see :mod:`django_celery_monitor.stats`).
    """

    #: The length of the bucket in seconds: 60 or 3600.
    period = models.IntegerField(_("period"))
    #: When the bucket starts.
    bucket = models.DateTimeField(_("bucket"))
    name = models.CharField(_("name"), max_length=200, default="", blank=True)
    state = models.CharField(_("state"), max_length=64)
    #: The exception's type, for failed tasks ("" otherwise).
    exception_type = models.CharField(_("exception type"), max_length=200, default="", blank=True)
    count = models.BigIntegerField(_("count"), default=0)
    #: How many of them had been retried before they finished.
    retried = models.BigIntegerField(_("retried"), default=0)
    runtime_count = models.BigIntegerField(default=0)
    runtime_sum = models.FloatField(default=0.0)
    runtime_max = models.FloatField(null=True, blank=True)
    #: Histogram bucket index -> count (see ``stats.bucket_index``).
    runtime_hist = models.JSONField(default=dict, blank=True)
    #: The wait from received to started, as for the runtime.
    wait_count = models.BigIntegerField(default=0)
    wait_sum = models.FloatField(default=0.0)
    wait_max = models.FloatField(null=True, blank=True)
    wait_hist = models.JSONField(default=dict, blank=True)
    #: The latest task of the group: the example the dashboard links to.
    latest_task_id = models.CharField(max_length=255, default="", blank=True)
    latest_tstamp = models.DateTimeField(null=True, blank=True)

    class Meta:
        """Model meta-data."""

        verbose_name = _("task rollup")
        verbose_name_plural = _("task rollups")
        constraints = [
            models.UniqueConstraint(
                fields=["period", "bucket", "name", "state", "exception_type"],
                name="cm_rollup_unique_group",
            )
        ]

    def __str__(self) -> str:
        return f"{self.bucket} {self.period}s {self.name} {self.state} {self.count}"


class RollupMark(models.Model):
    """How far the rollups of one period are written: every bucket before ``until``."""

    period = models.IntegerField(_("period"), unique=True)
    until = models.DateTimeField(_("rolled up until"))

    class Meta:
        """Model meta-data."""

        verbose_name = _("rollup mark")
        verbose_name_plural = _("rollup marks")

    def __str__(self) -> str:
        return f"{self.period}s until {self.until}"


class CameraState(models.Model):
    """The heartbeat of a running camera, written with each of its shots.

    Any web process reads it: the health check, the dashboard and the metrics tell from it
    whether a camera is recording, and how well it keeps up.
    """

    #: Seconds between two heartbeats of a camera whose shots write nothing (a shot that
    #: writes rows writes the heartbeat too).
    idle_heartbeat_every = 5.0

    #: ``hostname:pid`` of the camera's process.
    key = models.CharField(_("camera"), max_length=255, unique=True)
    hostname = models.CharField(_("hostname"), max_length=255)
    pid = models.IntegerField(_("process id"))
    version = models.CharField(_("version"), max_length=32)
    #: Seconds between two shots.
    frequency = models.FloatField(_("frequency"))
    #: ``K/N`` for a camera that keeps one shard of the tasks.
    shard = models.CharField(_("shard"), max_length=32, default="", blank=True)
    started = models.DateTimeField(_("started"))
    last_shot = models.DateTimeField(_("last shot"), null=True, blank=True)
    #: Set when the camera stopped cleanly.
    stopped = models.DateTimeField(_("stopped"), null=True, blank=True)
    #: Events received, refused as invalid, and repaired, since the camera started.
    events = models.BigIntegerField(_("events"), default=0)
    events_invalid = models.BigIntegerField(_("events refused"), default=0)
    events_repaired = models.BigIntegerField(_("events repaired"), default=0)
    #: Events per second between the last two heartbeats.
    events_per_second = models.FloatField(_("events per second"), default=0.0)
    tasks_written = models.BigIntegerField(_("task rows written"), default=0)
    #: Seconds the last write of a shot took.
    write_seconds = models.FloatField(_("write latency"), default=0.0)
    #: Rows collected but not written yet (the database was unreachable).
    rows_pending = models.IntegerField(_("rows pending"), default=0)

    class Meta:
        """Model meta-data."""

        verbose_name = _("camera")
        verbose_name_plural = _("cameras")
        ordering = ["-last_shot"]

    def __str__(self) -> str:
        return self.key

    @property
    def allowed_silence(self) -> float:
        """Seconds without a heartbeat after which the camera counts as not recording."""
        return max(3 * self.frequency, self.idle_heartbeat_every + 2 * self.frequency)


class Dashboard(TaskState):
    """The dashboard's entry in the admin: a proxy of the tasks, with no table of its own.

    Its admin page is the dashboard (see ``admin.dashboard``); a user who may view the
    tasks may view it.
    """

    class Meta:
        """Model meta-data."""

        proxy = True
        verbose_name = _("dashboard")
        verbose_name_plural = _("dashboard")


class QueueSample(models.Model):
    """The length of one broker queue at one moment, measured by the camera's sampler.

    ``messages`` is None when the broker did not answer in time (a gap in the chart) or
    cannot tell (``note`` says which).
    """

    queue = models.CharField(_("queue"), max_length=255)
    sampled = models.DateTimeField(_("sampled"))
    #: Messages waiting in the queue (every priority of it on Redis).
    messages = models.BigIntegerField(_("messages"), null=True, blank=True)
    #: Consumers of the queue: the broker's count (RabbitMQ), else the workers that
    #: consume from it as their ``active_queues`` say.
    consumers = models.IntegerField(_("consumers"), null=True, blank=True)
    note = models.CharField(_("note"), max_length=255, default="", blank=True)

    class Meta:
        """Model meta-data."""

        verbose_name = _("queue sample")
        verbose_name_plural = _("queue samples")
        indexes = [
            models.Index(fields=["queue", "-sampled"], name="cm_queue_sampled_idx"),
            models.Index(fields=["sampled"], name="cm_queue_sampled_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.queue} {self.messages} at {self.sampled}"


class Queue(QueueSample):
    """The queues' entry in the admin: a proxy of the samples (see ``admin.queues``)."""

    class Meta:
        """Model meta-data."""

        proxy = True
        verbose_name = _("queue")
        verbose_name_plural = _("queues")
