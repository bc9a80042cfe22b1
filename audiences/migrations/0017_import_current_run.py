from django.db import migrations, models
from django.db.models import F


def forwards(apps, schema_editor):
    """An import running now began its run when it first started, as far as is known; one queued or
    stopped starts a new run when a worker takes it up."""
    Import = apps.get_model("audiences", "Import")
    Import.objects.filter(status="running", run_started_at__isnull=True).update(
        run_started_at=F("started_at"), run_bytes_from=0
    )


class Migration(migrations.Migration):
    dependencies = [
        ("audiences", "0016_import_error_help"),
    ]

    operations = [
        migrations.AddField(
            model_name="import",
            name="run_bytes_from",
            field=models.BigIntegerField(default=0, editable=False),
        ),
        migrations.AddField(
            model_name="import",
            name="run_started_at",
            field=models.DateTimeField(
                blank=True,
                help_text=(
                    "When a worker took up the import this time (its first start, or after it failed or stalled): "
                    "the time left is estimated from this run's pace."
                ),
                null=True,
                verbose_name="current run started at",
            ),
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
