"""Record Celery tasks and workers in the Django database and show them in the admin."""

__version__ = "2.0.0.dev0"
