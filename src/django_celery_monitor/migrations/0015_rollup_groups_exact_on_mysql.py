"""On MySQL and MariaDB, tell the rollups' groups apart byte for byte, as the tasks are.

Their default collations took task names or exception types that differ only by case,
accents or trailing spaces for one value, so two such groups of the same minute collided on
the rollups' unique key and the roll-up wrote nothing, then or after. Other databases
compare text exactly already; the model does not change.
"""

from django.db import migrations

from django_celery_monitor.indexes import exact_text_columns

COLUMNS = (
    ("celery_monitor_taskrollup", "name", 200),
    ("celery_monitor_taskrollup", "state", 64),
    ("celery_monitor_taskrollup", "exception_type", 200),
)


def binary_groups(apps, schema_editor):
    exact_text_columns(schema_editor, COLUMNS)


class Migration(migrations.Migration):
    dependencies = [("celery_monitor", "0014_rollup_counts_64_bit")]

    operations = [migrations.RunPython(binary_groups, migrations.RunPython.noop, atomic=False)]
