# The schema of django_celery_monitor 1.1.2, kept so that its databases migrate forward.
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("celery_monitor", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="workerstate",
            name="last_update",
            field=models.DateTimeField(
                auto_now=True, default=django.utils.timezone.now, verbose_name="last update"
            ),
            preserve_default=False,
        ),
    ]
