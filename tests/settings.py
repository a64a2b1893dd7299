"""Settings of the test project.

DATABASE=postgresql runs the suite on PostgreSQL, DATABASE=mariadb on MariaDB (the MySQL
backend); scripts/services.sh starts both servers.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "Europe/Berlin"
LANGUAGE_CODE = "en"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_monitor",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "tests.urls"

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

if os.environ.get("DATABASE") == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("PGDATABASE", "celery_monitor"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "PASSWORD": os.environ.get("PGPASSWORD", ""),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5439"),
        }
    }
elif os.environ.get("DATABASE") == "mariadb":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": os.environ.get("MARIADB_DATABASE", "celery_monitor"),
            "USER": os.environ.get("MARIADB_USER", "root"),
            "PASSWORD": os.environ.get("MARIADB_PASSWORD", ""),
            "HOST": os.environ.get("MARIADB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("MARIADB_PORT", "3319"),
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {"CHARSET": "utf8mb4", "COLLATION": "utf8mb4_unicode_ci"},
        }
    }
else:
    # SQLITE_NAME lets two test runs on one checkout keep out of each other's database.
    SQLITE_NAME = os.environ.get("SQLITE_NAME", str(BASE_DIR / "test.sqlite3"))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_NAME,
            "TEST": {"NAME": SQLITE_NAME},
        },
    }

# A second database, for the commands and querysets given one (--database), on every backend.
OTHER_SQLITE_NAME = os.environ.get("SQLITE_NAME", str(BASE_DIR / "test.sqlite3")) + "-other"
DATABASES["other"] = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": OTHER_SQLITE_NAME,
    "TEST": {"NAME": OTHER_SQLITE_NAME},
}

STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CELERY_BROKER_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6390/15")
# Under pytest-xdist each test process takes a Redis database of its own (gw0: the given
# one, gw1: the one below it...), so that their workers never take each other's tasks. The
# processes the tests start inherit it, already moved.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _XDIST_WORKER.startswith("gw") and not os.environ.get("CM_TEST_REDIS_OWN"):
    _base, _, _db = CELERY_BROKER_URL.rpartition("/")
    CELERY_BROKER_URL = f"{_base}/{int(_db or 0) - int(_XDIST_WORKER[2:])}"
    os.environ["REDIS_URL"] = CELERY_BROKER_URL
    os.environ["CM_TEST_REDIS_OWN"] = "1"
# The tests that wait for a worker that never answers wait this long (2 s by default).
CELERY_MONITOR_CONTROL_TIMEOUT = 1.0
# No result backend, unless a test's worker is given one.
CELERY_RESULT_BACKEND = os.environ.get("RESULT_BACKEND") or None
