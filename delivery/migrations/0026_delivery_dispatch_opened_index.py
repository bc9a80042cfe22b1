"""A report's opens by send (``delivery_dispatch_opened_idx``): conversions anchored at the open
read the latest open of each of a report's sends and the rows opened since a time through it,
instead of walking every send's opens by time. Opened rows only, so the send path writes nothing
more.

On PostgreSQL the index is built CONCURRENTLY, so opens keep being recorded while it builds. If the
build fails it leaves an invalid index behind; drop it (``DROP INDEX CONCURRENTLY
delivery_dispatch_opened_idx``) and migrate again.
"""

from django.db import migrations, models

from config.db import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("delivery", "0025_kept_profiles")]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="delivery",
            index=models.Index(
                condition=models.Q(("opened_at__isnull", False)),
                fields=["dispatch", "opened_at"],
                name="delivery_dispatch_opened_idx",
            ),
        ),
    ]
