"""A dispatch's pushes held until the quiet hours end (``delivery_held_idx``): its page counts them
apart from those queued or in flight, and says when the first goes, reading only them. Held rows
only, so the send path writes nothing more.

On PostgreSQL the index is built CONCURRENTLY, so sends go on while it builds. If the build fails
it leaves an invalid index behind; drop it (``DROP INDEX CONCURRENTLY delivery_held_idx``) and
migrate again.
"""

from django.db import migrations, models

from config.db import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("delivery", "0031_dispatch_rows_bounds")]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("finished_at__isnull", True), ("reason", "quiet_hours")),
                fields=["dispatch", "next_attempt_at"],
                name="delivery_held_idx",
            ),
        ),
    ]
