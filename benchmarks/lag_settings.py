"""Settings of the lag benchmark (``lag.py``): the test project's, with SQLite in WAL mode.

LAG_SQLITE_JOURNAL=delete keeps SQLite's default rollback journal, for comparison.
"""

import os

import django

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

#: The camera's Celery app (the test project's Django setup does not import it).
CELERY_MONITOR_APP = "tests.celery_app:app"

_default = DATABASES["default"]
if _default["ENGINE"].endswith("sqlite3"):
    DATABASES = {"default": {**_default, "OPTIONS": {"timeout": 20}}}
    # init_command and transaction_mode exist for SQLite from Django 5.1 on.
    if os.environ.get("LAG_SQLITE_JOURNAL", "wal") == "wal" and django.VERSION >= (5, 1):
        DATABASES["default"]["OPTIONS"].update(
            {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
                "transaction_mode": "IMMEDIATE",
            }
        )
