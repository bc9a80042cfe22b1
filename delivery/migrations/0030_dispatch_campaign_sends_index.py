"""A campaign's sends, the newest first (``dispatch_campaign_sends_idx``): a campaign recurring every
minute makes 100,000 dispatches in ten weeks, and its page sorted them all to show the latest 10.
Its two kinds (its runs, its API triggers' streams) are the index's condition rather than a column,
so the newest of both come in one ordered scan; the app is included, so counting those a user may
see through the app's scope reads the index alone.

On PostgreSQL the index is built CONCURRENTLY, so sends keep being made while it builds. If the
build fails it leaves an invalid index behind; drop it (``DROP INDEX CONCURRENTLY
dispatch_campaign_sends_idx``) and migrate again.
"""

from django.db import migrations, models

from config.db import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("delivery", "0029_device_ios_token_lowercase")]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="dispatch",
            index=models.Index(
                condition=models.Q(("kind__in", ["campaign", "api_trigger"])),
                fields=["source_id", "created_at", "id"],
                include=("app",),
                name="dispatch_campaign_sends_idx",
            ),
        ),
    ]
