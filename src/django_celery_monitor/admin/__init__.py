"""The admin: read-only lists and details of tasks and workers, and their control actions.

One module per concern: ``helpers`` (what the pages show), ``lists`` (the changelist and its
paginator), ``queries`` (the bounded queries of the lists, filters and search), ``base`` (the
base admin), ``filters``, the admins of ``tasks`` and ``workers``, and the ``dashboard`` with
its ``charts``, the ``queues`` page, and the tasks' ``export``, registered on import.
"""

from __future__ import annotations

from .. import control as control  # the control calls, looked up when an action runs
from .base import ModelMonitor
from .dashboard import DashboardMonitor
from .filters import LostFilter, StateFilter, TaskNameFilter, WorkerFilter
from .helpers import NODE_STATE_COLORS, TASK_STATE_COLORS
from .lists import CappedPaginator, MonitorList
from .queues import QueueMonitor
from .tasks import RateLimitForm, TaskMonitor
from .workers import WorkerMonitor

__all__ = [
    "NODE_STATE_COLORS",
    "TASK_STATE_COLORS",
    "CappedPaginator",
    "DashboardMonitor",
    "LostFilter",
    "ModelMonitor",
    "MonitorList",
    "QueueMonitor",
    "RateLimitForm",
    "StateFilter",
    "TaskMonitor",
    "TaskNameFilter",
    "WorkerFilter",
    "WorkerMonitor",
]
