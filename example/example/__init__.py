# Load the Celery app with Django, so tasks and the monitor use it.
from .celery import app as celery_app

__all__ = ["celery_app"]
