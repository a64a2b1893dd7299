"""The monitor's settings: defaults, where they are read, and their types."""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal

import pytest
from celery import Celery, states
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from django_celery_monitor.conf import MonitorSettings, monitor_settings

DAY = timedelta(days=1)


def fresh_settings(config: object | None = None, **conf) -> MonitorSettings:
    """The settings of a new Celery app (not made current) configured with ``conf``."""
    app = Celery("conf-test", set_as_current=False)
    if config is not None:
        app.config_from_object(config, namespace="CELERY")
    app.conf.update(conf)
    return MonitorSettings(app)


def test_expiry_defaults():
    conf = fresh_settings()
    assert conf.task_success_expires == 1 * DAY
    assert conf.task_error_expires == 3 * DAY
    assert conf.task_pending_expires == 5 * DAY


def test_defaults_of_the_current_app():
    assert monitor_settings.task_success_expires == 1 * DAY
    assert monitor_settings.task_error_expires == 3 * DAY
    assert monitor_settings.task_pending_expires == 5 * DAY
    assert MonitorSettings().task_pending_expires == 5 * DAY


def test_size_defaults():
    conf = fresh_settings()
    assert conf.write_batch_size == 2000
    assert conf.purge_batch_size == 5000
    assert conf.max_text_length == 65536


def test_the_control_timeout():
    with override_settings():
        del settings.CELERY_MONITOR_CONTROL_TIMEOUT  # the tests' own, 1 s
        assert fresh_settings().control_timeout == 2.0
        assert fresh_settings(monitor_control_timeout=5).control_timeout == 5.0
        assert fresh_settings(monitor_control_timeout=0.25).control_timeout == 0.25
        for wrong in (0, -1, 10.5, 30, math.inf, math.nan, "2", None, False):
            with pytest.raises(ImproperlyConfigured, match="monitor_control_timeout"):
                _ = fresh_settings(monitor_control_timeout=wrong).control_timeout
    assert fresh_settings().control_timeout == 1.0


def test_a_wrong_control_timeout_waits_the_default():
    from django_celery_monitor import control

    app = Celery("conf-test", set_as_current=False)
    with override_settings(CELERY_MONITOR_CONTROL_TIMEOUT="soon"):
        assert control.reply_timeout(app) == 2.0
    with override_settings(CELERY_MONITOR_CONTROL_TIMEOUT=3):
        assert control.reply_timeout(app) == 3.0


def test_a_value_in_the_celery_configuration_wins():
    conf = fresh_settings(
        monitor_task_success_expires=timedelta(hours=2),
        monitor_task_error_expires=timedelta(days=10),
        monitor_task_pending_expires=timedelta(minutes=30),
    )
    assert conf.task_success_expires == timedelta(hours=2)
    assert conf.task_error_expires == timedelta(days=10)
    assert conf.task_pending_expires == timedelta(minutes=30)


@pytest.mark.parametrize(
    "name",
    ["monitor_task_success_expires", "monitor_task_error_expires", "monitor_task_pending_expires"],
)
def test_none_means_never_and_wins_over_the_default(name):
    conf = fresh_settings(**{name: None})
    attribute = name.removeprefix("monitor_")
    assert getattr(conf, attribute) is None


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (60, timedelta(minutes=1)),
        (0, timedelta(0)),
        (1.5, timedelta(seconds=1.5)),
        (86400 * 7, timedelta(days=7)),
    ],
)
def test_seconds_become_a_timedelta(seconds, expected):
    value = fresh_settings(monitor_task_success_expires=seconds).task_success_expires
    assert isinstance(value, timedelta)
    assert value == expected


@pytest.mark.parametrize(
    ("legacy", "attribute"),
    [
        ("monitors_expire_success", "task_success_expires"),
        ("monitors_expire_error", "task_error_expires"),
        ("monitors_expire_pending", "task_pending_expires"),
    ],
)
def test_the_names_of_1_1_2_are_read(legacy, attribute):
    assert getattr(fresh_settings(**{legacy: timedelta(hours=6)}), attribute) == timedelta(hours=6)
    assert getattr(fresh_settings(**{legacy: 120}), attribute) == timedelta(minutes=2)
    assert getattr(fresh_settings(**{legacy: None}), attribute) is None


def test_the_documented_name_wins_over_the_1_1_2_name():
    conf = fresh_settings(monitor_task_success_expires=10, monitors_expire_success=20)
    assert conf.task_success_expires == timedelta(seconds=10)


def test_django_settings_through_the_celery_namespace():
    class Config:
        CELERY_MONITOR_TASK_SUCCESS_EXPIRES = 3600
        CELERY_MONITORS_EXPIRE_ERROR = None
        CELERY_MONITOR_PURGE_BATCH_SIZE = 100

    conf = fresh_settings(Config)
    assert conf.task_success_expires == timedelta(hours=1)
    assert conf.task_error_expires is None
    assert conf.task_pending_expires == 5 * DAY
    assert conf.purge_batch_size == 100


@override_settings(CELERY_MONITOR_TASK_SUCCESS_EXPIRES=timedelta(hours=12))
def test_the_django_setting_is_read_and_wins():
    conf = fresh_settings(monitor_task_success_expires=timedelta(hours=1))
    assert conf.task_success_expires == timedelta(hours=12)
    assert monitor_settings.task_success_expires == timedelta(hours=12)


@override_settings(CELERY_MONITOR_TASK_ERROR_EXPIRES=None, CELERY_MONITOR_TASK_PENDING_EXPIRES=90)
def test_django_settings_none_and_seconds():
    assert monitor_settings.task_error_expires is None
    assert monitor_settings.task_pending_expires == timedelta(seconds=90)


@override_settings(CELERY_MONITORS_EXPIRE_PENDING=timedelta(days=2))
def test_the_1_1_2_name_in_django_settings():
    assert monitor_settings.task_pending_expires == timedelta(days=2)


def test_settings_are_read_when_used():
    app = Celery("conf-test", set_as_current=False)
    conf = MonitorSettings(app)
    assert conf.task_success_expires == DAY
    app.conf.monitor_task_success_expires = 5
    assert conf.task_success_expires == timedelta(seconds=5)
    with override_settings(CELERY_MONITOR_TASK_SUCCESS_EXPIRES=7):
        assert conf.task_success_expires == timedelta(seconds=7)
    assert conf.task_success_expires == timedelta(seconds=5)


@pytest.mark.parametrize(
    "value",
    ["1 day", "86400", -1, -0.5, True, math.nan, Decimal("60"), [60], math.inf, 10**20],
)
def test_a_wrong_expiry_raises_a_clear_error(value):
    conf = fresh_settings(monitor_task_success_expires=value)
    with pytest.raises(ImproperlyConfigured) as excinfo:
        conf.task_success_expires  # noqa: B018
    message = str(excinfo.value)
    assert "monitor_task_success_expires" in message
    assert repr(value) in message
    assert "timedelta" in message


@override_settings(CELERY_MONITOR_TASK_ERROR_EXPIRES="3 days")
def test_a_wrong_django_setting_names_the_django_setting():
    with pytest.raises(ImproperlyConfigured, match="CELERY_MONITOR_TASK_ERROR_EXPIRES"):
        monitor_settings.task_error_expires  # noqa: B018


def test_the_batch_sizes_are_read():
    conf = fresh_settings(
        monitor_write_batch_size=50, monitor_purge_batch_size=1000, monitor_max_text_length=1024
    )
    assert conf.write_batch_size == 50
    assert conf.purge_batch_size == 1000
    assert conf.max_text_length == 1024


@override_settings(CELERY_MONITOR_WRITE_BATCH_SIZE=10)
def test_a_batch_size_in_django_settings():
    assert monitor_settings.write_batch_size == 10


@pytest.mark.parametrize("value", [0, -5, "100", 1.5, True, None])
@pytest.mark.parametrize(
    ("name", "attribute"),
    [
        ("monitor_write_batch_size", "write_batch_size"),
        ("monitor_purge_batch_size", "purge_batch_size"),
        ("monitor_max_text_length", "max_text_length"),
    ],
)
def test_a_wrong_size_raises_a_clear_error(name, attribute, value):
    conf = fresh_settings(**{name: value})
    with pytest.raises(ImproperlyConfigured) as excinfo:
        getattr(conf, attribute)
    assert name in str(excinfo.value)
    assert "positive integer" in str(excinfo.value)


def test_expire_task_states_groups():
    conf = fresh_settings(monitor_task_error_expires=None)
    groups = dict(conf.expire_task_states)
    assert groups[frozenset([states.SUCCESS])] == DAY
    assert groups[states.EXCEPTION_STATES] is None
    assert groups[states.UNREADY_STATES] == 5 * DAY
    assert {states.FAILURE, states.RETRY, states.REVOKED} <= states.EXCEPTION_STATES
    assert {states.PENDING, states.RECEIVED, states.STARTED} <= states.UNREADY_STATES


def test_custom_states_follow_the_pending_expiry_unless_set():
    assert fresh_settings().task_custom_expires == 5 * DAY
    conf = fresh_settings(monitor_task_pending_expires=timedelta(hours=1))
    assert conf.task_custom_expires == timedelta(hours=1)
    conf = fresh_settings(monitor_task_custom_expires=600, monitor_task_pending_expires=60)
    assert conf.task_custom_expires == timedelta(minutes=10)
    assert fresh_settings(monitor_task_custom_expires=None).task_custom_expires is None
    with pytest.raises(ImproperlyConfigured, match="monitor_task_custom_expires"):
        fresh_settings(monitor_task_custom_expires="never").task_custom_expires  # noqa: B018


@override_settings(CELERY_MONITOR_TASK_CUSTOM_EXPIRES=timedelta(hours=2))
def test_custom_states_expiry_from_django_settings():
    assert monitor_settings.task_custom_expires == timedelta(hours=2)


def test_the_sqlite_cache_size():
    assert fresh_settings().sqlite_cache_size == 64
    assert fresh_settings(monitor_sqlite_cache_size=256).sqlite_cache_size == 256
    # None or 0: SQLite's own size.
    assert fresh_settings(monitor_sqlite_cache_size=None).sqlite_cache_size is None
    assert fresh_settings(monitor_sqlite_cache_size=0).sqlite_cache_size is None
    for wrong in (-5, "64", 1.5, True):
        with pytest.raises(ImproperlyConfigured, match="monitor_sqlite_cache_size"):
            fresh_settings(monitor_sqlite_cache_size=wrong).sqlite_cache_size  # noqa: B018
