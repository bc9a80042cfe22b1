"""The list of every occurrence, newest first (``occurrence_due_idx``): a campaign recurring every
minute records 1,440 a day, and the list sorted them all to show a page. One campaign's list reads
the unique (campaign, due_at) index, as before.

On PostgreSQL the index is built CONCURRENTLY, so the scheduler keeps recording occurrences while
it builds. If the build fails it leaves an invalid index behind; drop it (``DROP INDEX CONCURRENTLY
occurrence_due_idx``) and migrate again.
"""

from django.db import migrations, models

from config.db import AddIndexConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("campaigns", "0013_occurrence_at_local_time")]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="occurrence",
            index=models.Index(fields=["due_at", "id"], name="occurrence_due_idx"),
        ),
    ]
