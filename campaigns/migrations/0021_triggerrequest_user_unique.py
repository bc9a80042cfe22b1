"""The trigger calls' Idempotency-Key records unique per (user, Idempotency-Key) (``trigger_idempotency_once_per_user``),
in place of (API key, Idempotency-Key) (``trigger_idempotency_once``): the keys of one user share them.

On PostgreSQL the index is built CONCURRENTLY, so calls go on while it builds. If the build fails it
leaves an invalid index behind; drop it (``DROP INDEX CONCURRENTLY trigger_idempotency_once_per_user``) and migrate
again.
"""

from django.db import migrations, models

from config.db import AddUniqueConstraintConcurrentlyOnPostgres


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("campaigns", "0020_triggerrequest_user")]

    operations = [
        AddUniqueConstraintConcurrentlyOnPostgres(
            model_name="triggerrequest",
            constraint=models.UniqueConstraint(
                fields=("user", "idempotency_key"), name="trigger_idempotency_once_per_user"
            ),
        ),
        migrations.RemoveConstraint(model_name="triggerrequest", name="trigger_idempotency_once"),
    ]
