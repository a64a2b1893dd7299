from django.db import migrations, models

from django_celery_monitor.indexes import unnamed_field_indexes

# Every index of the task table costs each write of a task row. The index of the name alone
# served nothing the (name, tstamp) index does not: a name's tasks, a prefix of names, the
# loose scan of the distinct names all read that one. It is dropped by itself (Django would
# copy the whole table on SQLite to change the field's db_index). PostgreSQL keeps the
# pattern index Django made with it ("..._like", varchar_pattern_ops): the search's LIKE
# 'prefix%' of names is served by that one alone.


def _plain(schema_editor, model):
    return [
        name for name in unnamed_field_indexes(schema_editor, model, 'name')
        if not name.endswith('_like')
    ]


def drop_name_field_index(apps, schema_editor):
    model = apps.get_model('celery_monitor', 'TaskState')
    for name in _plain(schema_editor, model):
        schema_editor.remove_index(model, models.Index(fields=['name'], name=name))


def add_name_field_index(apps, schema_editor):
    model = apps.get_model('celery_monitor', 'TaskState')
    if not _plain(schema_editor, model):
        field = model._meta.get_field('name')
        schema_editor.execute(schema_editor._create_index_sql(model, fields=[field]))


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
