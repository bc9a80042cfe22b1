"""The events calls' Idempotency-Key records unique per (user, Idempotency-Key) (``events_idempotency_once_per_user``),
in place of (API key, Idempotency-Key) (``events_idempotency_once``): the keys of one user share them.

On PostgreSQL the index is built CONCURRENTLY, so calls go on while it builds. If the build fails it
leaves an invalid index behind; drop it (``DROP INDEX CONCURRENTLY events_idempotency_once_per_user``) and migrate
again.
"""

from django.db import migrations, models

from config.db import AddUniqueConstraintConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("audiences", "0029_eventbulkrequest_user")]

    operations = [
        AddUniqueConstraintConcurrentlyOnPostgres(
            model_name="eventbulkrequest",
            constraint=models.UniqueConstraint(
                fields=("user", "idempotency_key"), name="events_idempotency_once_per_user"
            ),
        ),
        migrations.RemoveConstraint(model_name="eventbulkrequest", name="events_idempotency_once"),
    ]
