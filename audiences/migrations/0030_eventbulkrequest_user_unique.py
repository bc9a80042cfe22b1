"""The events calls' Idempotency-Key records unique per (user, Idempotency-Key) (``events_idempotency_once_per_user``),
in place of (API key, Idempotency-Key) (``events_idempotency_once``): the keys of one user share them.

First each record gets its API key's user, and a user's later records of one Idempotency-Key are
deleted (the first is kept), in transactions of 10,000 records (``config.db.idempotency_records_user_set``):
events calls with an Idempotency-Key wait for one batch at most, not for the whole table. Stopped half
way, ``migrate`` again takes up the records still without their user. Then the column is made
required (a moment's lock, and one read of the table on PostgreSQL).

On PostgreSQL the index is built CONCURRENTLY, so calls go on while it builds. If the build fails it
leaves an invalid index behind; drop it (``DROP INDEX CONCURRENTLY events_idempotency_once_per_user``) and migrate
again.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from config.db import AddUniqueConstraintConcurrentlyOnPostgres, idempotency_records_user_set


def _users_set(apps, schema_editor):
    idempotency_records_user_set(apps.get_model("audiences", "EventBulkRequest"), apps.get_model("accounts", "ApiKey"))


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("audiences", "0029_eventbulkrequest_user")]

    operations = [
        migrations.RunPython(_users_set, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="eventbulkrequest",
            name="user",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        AddUniqueConstraintConcurrentlyOnPostgres(
            model_name="eventbulkrequest",
            constraint=models.UniqueConstraint(
                fields=("user", "idempotency_key"), name="events_idempotency_once_per_user"
            ),
        ),
        migrations.RemoveConstraint(model_name="eventbulkrequest", name="events_idempotency_once"),
    ]
