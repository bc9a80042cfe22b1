"""Idempotency-Key records per user (the API key's), so that a user's keys share their keys: a
retry under a rotated key replays the first answer instead of making a new call.

This migration adds the column, empty; the next one gives each record its key's user (a key never
changes user), a batch at a time, deletes a user's later records of one Idempotency-Key (their
calls ran, and a retry with the key now replays the first call's answer), makes the column
required and builds the (user, Idempotency-Key) unique index. Until this release, it did the
first two in its own transaction, which held the table meanwhile: events calls with an
Idempotency-Key waited for it (a few seconds a million records). The database ends the same.

Web machines still on the release before (an upgrade restarts them one at a time after
``migrate``) insert records without their user: on PostgreSQL a trigger fills it in from the API
key, so their calls go on. The release's own inserts name the user, and the trigger's condition
keeps it from running for them.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

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
    ]
