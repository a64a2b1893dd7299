from django.db import migrations, models

from django_celery_monitor.indexes import drop_field_index, restore_field_index

# Every index of the task table costs each write of a task row. The index of the name alone
# served nothing the (name, tstamp) index does not: a name's tasks, a prefix of names, the
# loose scan of the distinct names all read that one. It is dropped by itself (Django would
# copy the whole table on SQLite to change the field's db_index). PostgreSQL keeps the
# pattern index Django made with it ("..._like", varchar_pattern_ops): the search's LIKE
# 'prefix%' of names is served by that one alone.


#: PostgreSQL's pattern index of the name ends so.
KEPT = ('_like',)


def drop_name_field_index(apps, schema_editor):
    model = apps.get_model('celery_monitor', 'TaskState')
    drop_field_index(schema_editor, model, 'name', but=KEPT)


def add_name_field_index(apps, schema_editor):
    model = apps.get_model('celery_monitor', 'TaskState')
    restore_field_index(schema_editor, model, 'name', but=KEPT)


class Migration(migrations.Migration):

    dependencies = [
        ('celery_monitor', '0011_partial_task_indexes'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name='taskstate',
                    name='name',
                    field=models.CharField(max_length=200, null=True, verbose_name='name'),
                ),
            ],
            database_operations=[
                migrations.RunPython(drop_name_field_index, add_name_field_index),
            ],
        ),
    ]
