"""Application configuration."""

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _

__all__ = ["CeleryMonitorConfig"]


class CeleryMonitorConfig(AppConfig):
    """Default configuration for the django_celery_monitor app."""

    name = "django_celery_monitor"
    label = "celery_monitor"
    verbose_name = _("Celery Monitor")
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
