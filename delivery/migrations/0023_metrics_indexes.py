"""What a metrics scrape reads, by index: the dispatches not finished, those finished since a time,
and the devices a provider refused (per app), so a scrape no longer walks every dispatch and device.

On PostgreSQL the indexes are built CONCURRENTLY, so sends and registrations keep writing while
they build. If a build fails it leaves an invalid index behind; drop it
(``DROP INDEX CONCURRENTLY <name>``) and migrate again.
"""

from django.db import migrations, models

from config.db import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("delivery", "0022_delivery_profile_index_finished_only")]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="device",
            index=models.Index(
                condition=models.Q(("invalidated_at__isnull", False)),
                fields=["app"],
                include=("invalidated_reason",),
                name="device_invalidated_idx",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="dispatch",
            index=models.Index(
                condition=models.Q(("finished_at__isnull", True)), fields=["status"], name="dispatch_unfinished_idx"
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="dispatch",
            index=models.Index(fields=["finished_at"], name="dispatch_finished_idx"),
        ),
    ]
