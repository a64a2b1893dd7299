"""On MySQL and MariaDB, compare task ids and hostnames byte for byte.

Their default collations ignore case, accents and trailing spaces, so the unique keys took
``abc`` and ``ABC`` (two tasks to Celery) for one row, and merged them. Other databases
compare text exactly already; the model does not change.
"""

from django.db import migrations

COLUMNS = (
    ("celery_monitor_taskstate", "task_id"),
    ("celery_monitor_workerstate", "hostname"),
)


def binary_keys(apps, schema_editor):
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    quote = connection.ops.quote_name
    # A binary collation that does not pad: "abc " is not "abc" either.
    if connection.mysql_is_mariadb:
        collation = "utf8mb4_nopad_bin"
    elif connection.mysql_version >= (8,):
        collation = "utf8mb4_0900_bin"
    else:
        collation = "utf8mb4_bin"
    for table, column in COLUMNS:
        schema_editor.execute(
            f"ALTER TABLE {quote(table)} MODIFY {quote(column)} varchar(255) "
            f"CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL"
        )


class Migration(migrations.Migration):
    dependencies = [("celery_monitor", "0005_task_note")]

    operations = [migrations.RunPython(binary_keys, migrations.RunPython.noop, atomic=False)]
