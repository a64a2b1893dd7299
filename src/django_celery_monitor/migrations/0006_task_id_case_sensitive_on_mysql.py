"""On MySQL and MariaDB, compare task ids and hostnames byte for byte.

Their default collations ignore case, accents and trailing spaces, so the unique keys took
``abc`` and ``ABC`` (two tasks to Celery) for one row, and merged them. Other databases
compare text exactly already; the model does not change.
"""

from django.db import migrations

from django_celery_monitor.indexes import exact_text_columns

COLUMNS = (
    ("celery_monitor_taskstate", "task_id", 255),
    ("celery_monitor_workerstate", "hostname", 255),
)


def binary_keys(apps, schema_editor):
    exact_text_columns(schema_editor, COLUMNS)


class Migration(migrations.Migration):
    dependencies = [("celery_monitor", "0005_task_note")]

    operations = [migrations.RunPython(binary_keys, migrations.RunPython.noop, atomic=False)]
