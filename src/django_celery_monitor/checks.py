"""System checks for the monitor's settings."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

from . import conf


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Report settings of the wrong type, so a typo fails at start-up, not at the first purge."""
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
    return errors
