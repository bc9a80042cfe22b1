"""Active devices by (app, profile), carrying platform and opt-in, so an audience's reach in an app
is read from the index alone (index-only scans), without visiting the devices table.

The devices table is among the biggest: on PostgreSQL the index is built CONCURRENTLY, so
registrations and sends keep writing while it builds. If the build fails it leaves an invalid
index behind; drop it (``DROP INDEX CONCURRENTLY device_app_profile_reach_idx``) and migrate again.
"""

from django.db import migrations, models

from config.db import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("delivery", "0013_dispatch_by_platform")]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="device",
            index=models.Index(
                condition=models.Q(("active", True)),
                fields=["app", "profile"],
                include=("platform", "push_enabled"),
                name="device_app_profile_reach_idx",
            ),
        ),
    ]
