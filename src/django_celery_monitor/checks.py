"""System checks for the monitor's settings."""

from __future__ import annotations

from typing import Any

from celery import Celery
from django.core.checks import Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

from . import conf


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Report settings of the wrong type, so a typo fails at start-up, not at the first purge."""
    try:
        app = conf.get_celery_app()
    except Exception as exc:  # an import error of the project's own module, say
        return [
            Error(
                f"CELERY_MONITOR_APP names no Celery app that can be imported: "
                f"{type(exc).__name__}: {exc}",
                hint='A dotted path to the app, such as "proj.celery:app".',
                id="celery_monitor.E005",
            )
        ]
    if not isinstance(app, Celery):
        return [
            Error(
                f"CELERY_MONITOR_APP must name a Celery app, not {app!r}.",
                id="celery_monitor.E005",
            )
        ]
    errors = []
    for setting in conf.EXPIRES_SETTINGS:
        where, value = setting.raw()
        if value == conf.FOLLOW_PENDING:
            continue  # the custom states' default: the pending expiry, checked on its own
        try:
            conf.to_expires(where, value)
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="celery_monitor.E001"))
    for setting, check in conf.REDACT_SETTINGS:
        try:
            check(*setting.raw())
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="celery_monitor.E003"))
    for setting, check in conf.SIZE_CHECKS:
        try:
            check(*setting.raw())
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="celery_monitor.E002"))
    for name in conf.OTHER_CHECKED:
        try:
            getattr(conf.monitor_settings, name)
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), id="celery_monitor.E004"))
    return errors
