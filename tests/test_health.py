"""The health check: 200 while a camera records, 503 otherwise; details for staff only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.test import override_settings
from django.utils import timezone

from django_celery_monitor import stats
from django_celery_monitor.models import CameraState

pytestmark = pytest.mark.django_db

HEALTH = "/monitor/health/"


def make_camera(key="host:1", age=0.0, frequency=1.0, **fields):
    """A camera whose last shot was ``age`` seconds ago."""
    now = timezone.now()
    fields.setdefault("last_shot", now - timedelta(seconds=age))
    return CameraState.objects.create(
        key=key,
        hostname=key.split(":")[0],
        pid=1,
        version="2.0",
        frequency=frequency,
        started=now - timedelta(hours=1),
        **fields,
    )


def test_ok_with_a_fresh_camera(client):
    make_camera(age=0)
    response = client.get(HEALTH)
    assert response.status_code == 200
    body = response.json()
    assert body.keys() == {"status", "reason", "last_shot_age"}
    assert body["status"] == "ok"
    assert body["reason"] == "a camera shot within its last periods"
    assert 0 <= body["last_shot_age"] < 5
    assert response["Cache-Control"] == "no-store"


def test_unavailable_with_a_stale_camera(client):
    make_camera(age=600)
    response = client.get(HEALTH)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["reason"].startswith("the last shot was 6")  # 600 s, or a second more
    assert body["reason"].endswith(" s ago (every 1 s expected)")
    assert 600 <= body["last_shot_age"] < 605
    assert response["Cache-Control"] == "no-store"


def test_unavailable_without_a_camera(client):
    response = client.get(HEALTH)
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "reason": "no camera has run in the last day",
        "last_shot_age": None,
    }


def test_unavailable_when_the_camera_stopped(client):
    make_camera(age=0, stopped=timezone.now())
    response = client.get(HEALTH)
    assert response.status_code == 503
    assert response.json()["reason"] == "the camera stopped"


def test_the_age_is_that_of_the_latest_shot(client):
    make_camera("old:1", age=600)
    make_camera("new:2", age=0)
    make_camera("waiting:3", last_shot=None)  # started, no shot yet
    body = client.get(HEALTH).json()
    assert body["status"] == "ok"
    assert 0 <= body["last_shot_age"] < 5


def test_a_database_error_is_a_503(client, monkeypatch):
    def broken(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(stats, "camera_health", broken)
    response = client.get(HEALTH)
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "reason": "database unavailable: OperationalError",
        "last_shot_age": None,
    }


def test_staff_also_get_the_cameras(admin_client):
    make_camera("host:1", age=0)
    make_camera("other:2", age=600)
    body = admin_client.get(HEALTH).json()
    cameras = body["cameras"]
    assert [camera["key"] for camera in cameras] == ["host:1", "other:2"]
    assert [camera["healthy"] for camera in cameras] == [True, False]
    assert cameras[0]["frequency"] == 1.0
    assert cameras[0]["stopped"] is None
    assert cameras[0]["last_shot"].endswith("Z")  # ISO 8601, in UTC


@override_settings(CELERY_MONITOR_API_TOKENS=["s3cret"])
def test_a_token_also_gets_the_cameras(client):
    make_camera(age=0)
    assert "cameras" in client.get(HEALTH, HTTP_AUTHORIZATION="Bearer s3cret").json()
    assert "cameras" not in client.get(HEALTH, HTTP_AUTHORIZATION="Bearer wrong").json()


def test_a_user_who_is_not_staff_gets_the_short_answer(client, django_user_model):
    make_camera(age=0)
    client.force_login(django_user_model.objects.create_user("someone", password="pw"))
    response = client.get(HEALTH)
    assert response.status_code == 200
    assert "cameras" not in response.json()


def test_head_for_probes_and_no_post(client):
    make_camera(age=0)
    assert client.head(HEALTH).status_code == 200
    assert client.post(HEALTH).status_code == 405
