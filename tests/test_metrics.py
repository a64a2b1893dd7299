"""The Prometheus metrics: exact values of a small fixture, the access rules, the escaping."""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.test import RequestFactory, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from django_celery_monitor import metrics, stats
from django_celery_monitor.models import CameraState, TaskState, WorkerState
from tests.test_stats import NOW, task

pytestmark = pytest.mark.django_db

TOKEN = "s3cret"


@pytest.fixture
def now(monkeypatch):
    """The stats read NOW as the current time (the workers' liveness reads the clock)."""
    monkeypatch.setattr(stats, "_now", lambda: NOW)
    return NOW


@pytest.fixture
def recorded(now):
    """proj.add: 2 ok, 3 failed (2 ValueError, 1 KeyError), one retried; proj.mul: 1 ok
    (retried), 1 revoked; 3 unfinished; a worker online and one offline; a recording camera
    and a stopped one."""
    TaskState.objects.bulk_create(
        [
            task("SUCCESS", 30, runtime=0.3, wait=0.01),
            task("SUCCESS", 60, runtime=0.1, wait=0.02),
            task("FAILURE", 90, runtime=0.5, retries=1, exception="ValueError('a')"),
            task("FAILURE", 120, exception="KeyError('k')"),
            task("FAILURE", 150, runtime=2.0, exception="ValueError('b')"),
            task("SUCCESS", 200, name="proj.mul", runtime=4.0, retries=2),
            task("REVOKED", 300, name="proj.mul"),
            task("STARTED", 10),
            task("RECEIVED", 15),
            task("RECEIVED", 16),
        ]
    )
    beat = timezone.now()
    WorkerState.objects.create(
        hostname="w1@host", last_heartbeat=beat, freq=2.0, processed=10, active=2, events_missed=3
    )
    WorkerState.objects.create(
        hostname="w2@host", last_heartbeat=beat - timedelta(hours=1), freq=2.0, processed=5,
        active=3,
    )  # fmt: skip
    CameraState.objects.create(
        key="host:1", hostname="host", pid=1, version="2", frequency=1.0,
        started=now - timedelta(minutes=5), last_shot=now - timedelta(seconds=1), events=120,
        events_invalid=2, events_repaired=1, events_per_second=4.5, tasks_written=60,
        write_seconds=0.25, rows_pending=7,
    )  # fmt: skip
    CameraState.objects.create(
        key="host:2", hostname="host", pid=2, version="2", frequency=1.0,
        started=now - timedelta(minutes=5), last_shot=now - timedelta(seconds=30),
        stopped=now - timedelta(seconds=30),
    )  # fmt: skip


def get(user=None, token=None):
    """The view's answer to a GET, as ``user`` (anonymous by default) or with ``token``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = RequestFactory().get("/monitor/metrics", headers=headers)
    request.user = user or AnonymousUser()
    return metrics.metrics_view(request)


def superuser() -> User:
    found = User.objects.filter(username="root").first()
    return found or User.objects.create_superuser("root", "root@example.com", "pw")


def scrape() -> dict[str, dict[tuple, float]]:
    """The metrics, as {sample name: {sorted label items: value}}."""
    response = get(user=superuser())
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


def parse(text: str) -> dict[str, dict[tuple, float]]:
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                sample.value
            )
    return samples


def by(samples: dict[tuple, float], label: str) -> dict[str, float]:
    """The samples of one label (the others must not vary)."""
    return {dict(labels)[label]: value for labels, value in samples.items()}


def buckets(samples: dict[tuple, float], name: str) -> dict[str, float]:
    """The ``le`` buckets of one task name's histogram."""
    return {
        dict(labels)["le"]: value
        for labels, value in samples.items()
        if dict(labels)["name"] == name
    }


def test_task_counters(recorded):
    samples = scrape()
    assert samples["celery_monitor_tasks_total"] == {
        (("name", "proj.add"), ("state", "SUCCESS")): 2,
        (("name", "proj.add"), ("state", "FAILURE")): 3,
        (("name", "proj.mul"), ("state", "SUCCESS")): 1,
        (("name", "proj.mul"), ("state", "REVOKED")): 1,
    }
    assert samples["celery_monitor_task_failures_total"] == {
        (("exception_type", "KeyError"), ("name", "proj.add")): 1,
        (("exception_type", "ValueError"), ("name", "proj.add")): 2,
    }
    assert by(samples["celery_monitor_task_retried_total"], "name") == {
        "proj.add": 1,
        "proj.mul": 1,
    }
    assert by(samples["celery_monitor_tasks_unfinished"], "state") == {
        "PENDING": 0,
        "RECEIVED": 2,
        "STARTED": 1,
        "RETRY": 0,
        "REJECTED": 0,
    }
    assert samples["celery_monitor_task_names_omitted"] == {(): 0}


def test_runtime_and_wait_histograms(recorded):
    samples = scrape()
    runtime = samples["celery_monitor_task_runtime_seconds_bucket"]
    add = buckets(runtime, "proj.add")  # runtimes 0.3, 0.1, 0.5, 2.0 (one failure has none)
    # Powers of two from 1 ms, up to the last bound below the stats histogram's open end.
    bounds = list(add)
    assert bounds == [*(repr(0.001 * 2**k) for k in range(28)), "+Inf"]
    assert (bounds[0], bounds[-2]) == ("0.001", "134217.728")
    assert add["0.064"] == 0
    assert add["0.128"] == 1  # 0.1
    assert add["0.256"] == 1  # not 0.3
    assert add["0.512"] == 3  # 0.3 and 0.5
    assert add["1.024"] == 3
    assert add["2.048"] == 4
    assert add["134217.728"] == add["+Inf"] == 4
    assert by(samples["celery_monitor_task_runtime_seconds_count"], "name") == {
        "proj.add": 4,
        "proj.mul": 1,
    }
    sums = by(samples["celery_monitor_task_runtime_seconds_sum"], "name")
    assert sums == {"proj.add": pytest.approx(2.9), "proj.mul": pytest.approx(4.0)}
    mul = buckets(runtime, "proj.mul")
    assert (mul["2.048"], mul["4.096"], mul["+Inf"]) == (0, 1, 1)

    wait = buckets(samples["celery_monitor_task_queue_wait_seconds_bucket"], "proj.add")
    assert (wait["0.008"], wait["0.016"], wait["0.032"], wait["+Inf"]) == (0, 1, 2, 2)
    assert by(samples["celery_monitor_task_queue_wait_seconds_count"], "name") == {
        "proj.add": 2,
        "proj.mul": 0,
    }
    waited = by(samples["celery_monitor_task_queue_wait_seconds_sum"], "name")
    assert waited == {"proj.add": pytest.approx(0.03), "proj.mul": 0}


def test_rolling_up_changes_no_value(recorded):
    before = scrape()
    stats.roll_up(now=NOW + timedelta(minutes=3))
    assert scrape() == before


def test_workers(recorded):
    samples = scrape()
    assert samples["celery_monitor_workers_online"] == {(): 1}
    assert by(samples["celery_monitor_worker_up"], "hostname") == {"w1@host": 1, "w2@host": 0}
    # The offline worker's last count (3) is not exported: it runs nothing known.
    assert by(samples["celery_monitor_worker_active_tasks"], "hostname") == {"w1@host": 2}
    assert by(samples["celery_monitor_worker_processed_total"], "hostname") == {
        "w1@host": 10,
        "w2@host": 5,
    }
    # w2 never had its missed events counted: no sample.
    assert by(samples["celery_monitor_worker_events_missed"], "hostname") == {"w1@host": 3}
    assert samples["celery_monitor_events_missed"] == {(): 3}
    assert samples["celery_monitor_workers"] == {(): 2}
    assert samples["celery_monitor_workers_omitted"] == {(): 0}


def test_more_workers_than_the_per_worker_series_count_those_left_out(recorded, monkeypatch):
    now = timezone.now()
    WorkerState.objects.bulk_create(
        WorkerState(hostname=f"many-{n}@host", last_heartbeat=now, freq=2.0, processed=n)
        for n in range(250)
    )
    samples = scrape()  # every worker by default
    assert len(samples["celery_monitor_worker_up"]) == 252
    assert samples["celery_monitor_workers_omitted"] == {(): 0}
    assert samples["celery_monitor_workers_online"] == {(): 251}
    monkeypatch.setattr(metrics, "MAX_WORKERS", 100)
    samples = scrape()
    up = by(samples["celery_monitor_worker_up"], "hostname")
    assert len(up) == 100 and set(up.values()) == {1}  # those heard from last
    assert samples["celery_monitor_workers_omitted"] == {(): 152}


def test_camera_health(recorded):
    samples = scrape()
    assert samples["celery_monitor_monitor_healthy"] == {(): 1}
    assert by(samples["celery_monitor_camera_up"], "camera") == {"host:1": 1, "host:2": 0}
    last_shots = by(samples["celery_monitor_camera_last_shot_timestamp_seconds"], "camera")
    assert last_shots == {
        "host:1": (NOW - timedelta(seconds=1)).timestamp(),
        "host:2": (NOW - timedelta(seconds=30)).timestamp(),
    }
    recording = {
        name: by(samples[f"celery_monitor_camera_{name}"], "camera")["host:1"]
        for name in (
            "events_total",
            "events_invalid_total",
            "events_repaired_total",
            "tasks_written_total",
            "events_per_second",
            "write_seconds",
            "rows_pending",
        )
    }
    assert recording == {
        "events_total": 120,
        "events_invalid_total": 2,
        "events_repaired_total": 1,
        "tasks_written_total": 60,
        "events_per_second": 4.5,
        "write_seconds": 0.25,
        "rows_pending": 7,
    }


def test_an_empty_monitor(now):
    samples = scrape()
    assert samples["celery_monitor_monitor_healthy"] == {(): 0}
    assert samples["celery_monitor_workers_online"] == {(): 0}
    assert samples["celery_monitor_events_missed"] == {(): 0}
    assert samples["celery_monitor_workers"] == {(): 0}
    assert "celery_monitor_tasks_total" not in samples


def test_label_values_are_escaped(now):
    odd = 'proj."quoted"\nname\\x'
    TaskState.objects.bulk_create(
        [task("SUCCESS", 30, name=odd, runtime=0.2), task("FAILURE", 40, name=odd)]
    )
    response = get(user=superuser())
    text = response.content.decode()
    assert '\\"quoted\\"\\nname\\\\x' in text
    samples = parse(text)
    assert by(samples["celery_monitor_tasks_total"], "state") == {"SUCCESS": 1, "FAILURE": 1}
    assert set(by(samples["celery_monitor_task_retried_total"], "name")) == {odd}


def test_only_the_busiest_task_names(now, monkeypatch):
    monkeypatch.setattr(metrics, "MAX_TASK_NAMES", 2)
    TaskState.objects.bulk_create(
        [task("SUCCESS", 30 + i, name="proj.a") for i in range(3)]
        + [task("SUCCESS", 40 + i, name="proj.b") for i in range(2)]
        + [task("SUCCESS", 50, name="proj.c")]
    )
    samples = scrape()
    assert by(samples["celery_monitor_tasks_total"], "name") == {"proj.a": 3, "proj.b": 2}
    assert samples["celery_monitor_task_names_omitted"] == {(): 1}


def test_anonymous_requests_are_refused():
    response = get()
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


@override_settings(CELERY_MONITOR_API_TOKENS=[TOKEN])
def test_a_bearer_token():
    assert get(token="wrong").status_code == 401
    response = get(token=TOKEN)
    assert response.status_code == 200
    assert "celery_monitor_workers_online 0.0" in response.content.decode()


def test_staff_with_the_view_permission_only():
    user = User.objects.create_user("someone", password="pw")
    assert get(user=user).status_code == 403
    user.is_staff = True
    user.save()
    assert get(user=User.objects.get(pk=user.pk)).status_code == 403  # no view permission
    assert get(user=superuser()).status_code == 200


def test_without_prometheus_client(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    response = get(user=superuser())
    assert response.status_code == 501
    assert "pip install prometheus_client" in response.content.decode()


@override_settings(CELERY_MONITOR_API_TOKENS=[TOKEN])
def test_the_url(client, recorded):
    assert client.get("/monitor/metrics").status_code == 401
    response = client.get("/monitor/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert parse(response.content.decode())["celery_monitor_workers_online"] == {(): 1}
    assert client.get("/monitor/metrics/").status_code == 401
    slash = client.get("/monitor/metrics/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert slash.status_code == 200
    assert parse(slash.content.decode())["celery_monitor_workers_online"] == {(): 1}


DASHBOARD = Path(__file__).resolve().parent.parent / "contrib" / "grafana" / "celery-monitor.json"


def test_the_grafana_dashboard_reads_only_exported_metrics(recorded):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    expressions = [t["expr"] for p in panels for t in p["targets"]]
    expressions += [v["definition"] for v in dashboard["templating"]["list"]]
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in panels)
    used = {name for expr in expressions for name in re.findall(r"celery_monitor_\w+", expr)}
    assert used - set(scrape()) == set()
    assert {
        "celery_monitor_tasks_total",
        "celery_monitor_task_runtime_seconds_bucket",
        "celery_monitor_task_queue_wait_seconds_bucket",
        "celery_monitor_camera_last_shot_timestamp_seconds",
    } <= used
