"""Idempotency-Key records per user (the API key's), so that a user's keys share their keys: a
retry under a rotated key replays the first answer instead of making a new call.

Each record gets its key's user (a key never changes user). Where one user sent the same
Idempotency-Key under two of their keys, the first record is kept and the later ones are deleted:
their calls ran, and a retry with the key now replays the first call's answer. The next migration
builds the (user, Idempotency-Key) unique index.

The records are rewritten in this migration's transaction, which holds the table meanwhile:
events calls with an Idempotency-Key wait for it (a few seconds a million records;
retention keeps ``PUSHDESK_RETENTION_IDEMPOTENCY_DAYS`` of them).

Web machines still on the release before (an upgrade restarts them one at a time after
``migrate``) insert records without their user: on PostgreSQL a trigger fills it in from the API
key, so their calls go on. The release's own inserts name the user, and the trigger's condition
keeps it from running for them.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import Exists, OuterRef, Subquery

PG_TRIGGER = """
CREATE FUNCTION audiences_eventbulkrequest_user_fill() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.user_id := (SELECT user_id FROM accounts_apikey WHERE id = NEW.api_key_id);
    RETURN NEW;
END
$$;
CREATE TRIGGER audiences_eventbulkrequest_user_fill BEFORE INSERT ON audiences_eventbulkrequest
    FOR EACH ROW WHEN (NEW.user_id IS NULL) EXECUTE FUNCTION audiences_eventbulkrequest_user_fill();
"""
PG_BACKWARDS = """
DROP TRIGGER audiences_eventbulkrequest_user_fill ON audiences_eventbulkrequest;
DROP FUNCTION audiences_eventbulkrequest_user_fill();
"""


def _trigger_add(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_TRIGGER, params=None)


def _trigger_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_BACKWARDS, params=None)


def _users_set(apps, schema_editor):
    Record = apps.get_model("audiences", "EventBulkRequest")
    ApiKey = apps.get_model("accounts", "ApiKey")
    Record.objects.update(user_id=Subquery(ApiKey.objects.filter(pk=OuterRef("api_key_id")).values("user_id")[:1]))
    earlier = Record.objects.filter(
        user_id=OuterRef("user_id"), idempotency_key=OuterRef("idempotency_key"), pk__lt=OuterRef("pk")
    )
    Record.objects.filter(Exists(earlier)).delete()


class Migration(migrations.Migration):
    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ("accounts", "0006_form_token_use"),
        ("audiences", "0028_segment_definition_version"),
    ]

    operations = [
        migrations.AddField(
            model_name="eventbulkrequest",
            name="user",
            field=models.ForeignKey(
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.RunPython(_trigger_add, _trigger_drop),
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
    ]
