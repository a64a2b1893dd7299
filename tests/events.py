"""Build Celery events the way workers send them, to feed ``celery.events.state.State``."""

from __future__ import annotations

import itertools
import time
from typing import Any

_clock = itertools.count(1)

WORKER = "worker1@example.com"


def _event(type_: str, hostname: str, ts: float | None, **fields: Any) -> dict:
    ts = time.time() if ts is None else ts
    return {
        "type": type_,
        "hostname": hostname,
        "timestamp": ts,
        "local_received": ts,
        "clock": next(_clock),
        "utcoffset": 0,
        "pid": 1234,
        **fields,
    }


def task_event(kind: str, uuid: str, hostname: str = WORKER, ts: float | None = None, **fields):
    """A ``task-<kind>`` event of task ``uuid``."""
    return _event(f"task-{kind}", hostname, ts, uuid=uuid, **fields)


def received(uuid: str, name="proj.add", args="(1, 2)", kwargs="{}", retries=0, **fields):
    return task_event(
        "received", uuid, name=name, args=args, kwargs=kwargs, retries=retries, **fields
    )


def started(uuid: str, **fields):
    return task_event("started", uuid, **fields)


def succeeded(uuid: str, result="3", runtime=0.5, **fields):
    return task_event("succeeded", uuid, result=result, runtime=runtime, **fields)


def failed(uuid: str, exception="ValueError('x')", traceback="Traceback...", **fields):
    return task_event("failed", uuid, exception=exception, traceback=traceback, **fields)


def worker_event(kind: str, hostname: str = WORKER, ts: float | None = None, **fields: Any):
    """A ``worker-<kind>`` event (online, heartbeat, offline)."""
    defaults = {
        "freq": 2.0,
        "sw_ident": "py-celery",
        "sw_ver": "5.7.0",
        "sw_sys": "Linux",
        "active": 1,
        "processed": 10,
        "loadavg": [0.5, 0.25, 0.1],
    }
    return _event(f"worker-{kind}", hostname, ts, **{**defaults, **fields})
