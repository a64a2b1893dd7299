"""System checks: a wrong setting fails at start-up, with a stable id."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.core.checks import Error, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_celery_monitor.checks import check_settings

# From Django 6 on, the system checks ask every database what it supports (JSONField).
pytestmark = pytest.mark.django_db(databases="__all__")


def ids(errors: list[Error]) -> list[str]:
    return [error.id for error in errors]


def test_no_errors_by_default():
    assert check_settings() == []
    assert [m for m in run_checks() if m.id and m.id.startswith("celery_monitor.")] == []


@override_settings(
    CELERY_MONITOR_TASK_SUCCESS_EXPIRES=60,
    CELERY_MONITOR_TASK_ERROR_EXPIRES=None,
    CELERY_MONITOR_WRITE_BATCH_SIZE=100,
)
def test_no_errors_for_good_values():
    assert check_settings() == []


@pytest.mark.parametrize(
    "value",
    [
        "1 day",
        -1,
        True,
        [1],
        timedelta(days=-1),  # would expire every row, the newest too
        timedelta.max,  # "forever": that is None
        10**11,
        timedelta(days=366_000),
    ],
)
def test_e001_for_a_wrong_expiry(value):
    with override_settings(CELERY_MONITOR_TASK_SUCCESS_EXPIRES=value):
        errors = check_settings()
    assert ids(errors) == ["celery_monitor.E001"]
    assert "CELERY_MONITOR_TASK_SUCCESS_EXPIRES" in errors[0].msg
    assert repr(value) in errors[0].msg


@override_settings(CELERY_MONITOR_TASK_PENDING_EXPIRES=math.inf)
def test_e001_for_an_infinite_expiry():
    assert ids(check_settings()) == ["celery_monitor.E001"]


@override_settings(CELERY_MONITORS_EXPIRE_ERROR="3 days")
def test_e001_for_a_wrong_expiry_under_the_1_1_2_name():
    errors = check_settings()
    assert ids(errors) == ["celery_monitor.E001"]
    assert "CELERY_MONITORS_EXPIRE_ERROR" in errors[0].msg


@override_settings(
    CELERY_MONITOR_TASK_SUCCESS_EXPIRES="1 day", CELERY_MONITOR_TASK_ERROR_EXPIRES="3 days"
)
def test_one_error_per_wrong_setting():
    assert ids(check_settings()) == ["celery_monitor.E001", "celery_monitor.E001"]


@pytest.mark.parametrize(
    "name",
    [
        "CELERY_MONITOR_WRITE_BATCH_SIZE",
        "CELERY_MONITOR_PURGE_BATCH_SIZE",
        "CELERY_MONITOR_MAX_TEXT_LENGTH",
    ],
)
@pytest.mark.parametrize("value", [0, -1, "500", 2.5, None])
def test_e002_for_a_bad_size(name, value):
    with override_settings(**{name: value}):
        errors = check_settings()
    assert ids(errors) == ["celery_monitor.E002"]
    assert name in errors[0].msg


def test_the_check_is_registered():
    with override_settings(CELERY_MONITOR_PURGE_BATCH_SIZE=0):
        assert "celery_monitor.E002" in ids(run_checks())


def test_check_command_fails_with_the_error_id():
    with (
        override_settings(CELERY_MONITOR_TASK_SUCCESS_EXPIRES="1 day"),
        pytest.raises(SystemCheckError, match=r"celery_monitor\.E001"),
    ):
        call_command("check")


def test_check_command_fails_for_a_bad_batch_size():
    with (
        override_settings(CELERY_MONITOR_WRITE_BATCH_SIZE=0),
        pytest.raises(SystemCheckError, match=r"celery_monitor\.E002"),
    ):
        call_command("check")


def test_check_command_passes_by_default(capsys):
    call_command("check")
    assert "no issues" in capsys.readouterr().out


@pytest.mark.parametrize(
    "overrides",
    [
        {"CELERY_MONITOR_REDACT_FIELDS": "args"},
        {"CELERY_MONITOR_REDACT_FIELDS": ["password"]},
        {"CELERY_MONITOR_REDACT_TASKS": ["billing.*"]},
        {"CELERY_MONITOR_REDACT_TASKS": {"billing.*": ["secret"]}},
        {"CELERY_MONITOR_REDACT_HOOK": "no.such.module.hook"},
        {"CELERY_MONITOR_REDACT_HOOK": 42},
    ],
)
def test_e003_for_a_wrong_redaction_setting(overrides):
    with override_settings(**overrides):
        assert ids(check_settings()) == ["celery_monitor.E003"]


@override_settings(
    CELERY_MONITOR_REDACT_FIELDS=("kwargs",),
    CELERY_MONITOR_REDACT_TASKS={"billing.*": ["args", "result"]},
    CELERY_MONITOR_REDACT_HOOK="django_celery_monitor.utils.fixedwidth",
)
def test_valid_redaction_settings_pass():
    assert check_settings() == []


@pytest.mark.parametrize("value", [-1, "64", 2.5, True])
def test_e002_for_a_bad_sqlite_cache_size(value):
    with override_settings(CELERY_MONITOR_SQLITE_CACHE_SIZE=value):
        errors = check_settings()
    assert ids(errors) == ["celery_monitor.E002"]
    assert "CELERY_MONITOR_SQLITE_CACHE_SIZE" in errors[0].msg
    assert "MiB" in errors[0].msg


@pytest.mark.parametrize("value", [None, 0, 1, 256])
def test_a_sqlite_cache_size_of_mib_or_none_passes(value):
    with override_settings(CELERY_MONITOR_SQLITE_CACHE_SIZE=value):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("CELERY_MONITOR_STUCK_AFTER", "1 hour"),
        ("CELERY_MONITOR_API_TOKENS", 12345),
        ("CELERY_MONITOR_API_TOKENS", ["", "t"]),
        ("CELERY_MONITOR_API_TOKENS", ["s3cret", "tökén"]),
        ("CELERY_MONITOR_API_TOKENS", ["two words"]),
        ("CELERY_MONITOR_API_TOKENS", [" padded"]),
        ("CELERY_MONITOR_QUEUE_SAMPLE_EVERY", "10"),
        ("CELERY_MONITOR_QUEUE_SAMPLES_EXPIRES", "7 days"),
        ("CELERY_MONITOR_QUEUE_SAMPLES_EXPIRES", timedelta(seconds=-1)),
        ("CELERY_MONITOR_CONTROL_TIMEOUT", 0),
        ("CELERY_MONITOR_CONTROL_TIMEOUT", "2"),
        ("CELERY_MONITOR_CONTROL_TIMEOUT", float("nan")),
        ("CELERY_MONITOR_CONTROL_TIMEOUT", 11),
        ("CELERY_MONITOR_CONTROL_TIMEOUT", True),
    ],
)
def test_e004_for_the_other_settings(setting, value):
    with override_settings(**{setting: value}):
        errors = check_settings()
    assert ids(errors) == ["celery_monitor.E004"]
    assert setting in errors[0].msg


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("no.such.module:app", "ModuleNotFoundError"),
        ("tests.celery_app:no_such_app", "AttributeError"),
        ("math:pi", "3.14"),
    ],
)
def test_e005_for_an_app_that_is_not_one(value, found):
    with override_settings(CELERY_MONITOR_APP=value):
        errors = check_settings()
    assert ids(errors) == ["celery_monitor.E005"]
    assert found in errors[0].msg
