"""Settings of the example project: SQLite, and a broker in local folders (no server)."""

import os
from datetime import timedelta
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent
#: Everything the demo writes: the database, the broker's folders, the logs.
DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR", BASE_DIR / ".data")).resolve()

SECRET_KEY = "example-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_monitor",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
        # The camera, the web server and the purge write at once: wait, don't fail.
        "OPTIONS": {"timeout": 20},
    }
}
if django.VERSION >= (5, 1):
    # WAL: the admin reads while the camera writes, and a commit waits for no disk flush
    # (a power cut may lose the last commits, never the file). IMMEDIATE: a transaction
    # takes the write lock when it begins, so it never fails for want of it half-way.
    DATABASES["default"]["OPTIONS"].update(
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        transaction_mode="IMMEDIATE",
    )

STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Celery: a broker in local folders, so the demo needs no server. Kombu's own filesystem
# transport can hand a consumer a message file that is still being written (the worker then
# dies with JSONDecodeError, kombu issue #1551); the monitor's FilesystemTransport writes
# each message aside and renames it into its queue, so a reader sees it whole or not at all.
# It supports the fanout and topic exchanges that events and remote control use. Every
# process must use the same absolute folders; 0.1 s polling keeps events ~50 ms late.
BROKER_DIR = DATA_DIR / "broker"
CELERY_BROKER_URL = "filesystem://"
CELERY_BROKER_TRANSPORT = "django_celery_monitor.transport:FilesystemTransport"
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "data_folder_in": str(BROKER_DIR / "messages"),
    "data_folder_out": str(BROKER_DIR / "messages"),
    "control_folder": str(BROKER_DIR / "control"),
    "polling_interval": 0.1,
}
# The folder broker has no event loop: Celery's worker then waits, in the loop that also
# reads the control commands, for a free pool process before it hands a task on. With both
# busy, terminate, ping and the worker page went unanswered until a task ended. Without the
# wait, received tasks queue in the pool, and the worker answers at once.
CELERY_WORKER_POOL_PUTLOCKS = False
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_TASK_IGNORE_RESULT = True

# The monitor's expiry (django_celery_monitor reads these through the Celery app).
CELERY_MONITOR_TASK_SUCCESS_EXPIRES = timedelta(hours=6)
# The demo's queues fill and drain within seconds: measure them often.
CELERY_MONITOR_QUEUE_SAMPLE_EVERY = 2
CELERY_MONITOR_TASK_ERROR_EXPIRES = timedelta(days=3)
CELERY_MONITOR_TASK_PENDING_EXPIRES = timedelta(days=5)
