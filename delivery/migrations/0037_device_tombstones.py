"""Tombstones of deleted devices a winner-mode sample reached, kept by triggers on ``delivery_device``.

A device deleted (in the admin, with its profile, by any bulk deletion) that a winner sample still
waiting for its rest had a row for (any but skipped) leaves a ``delivery_devicetombstone`` row: its
app, its token's SHA-256 (hexadecimal) and its id. A device inserted later with a token of a
tombstone (the app registering the phone again) becomes that tombstone's successor, so the rest's
resolve leaves the phone out (``delivery.services.dispatches._sent_in_sample_sql``).

The triggers are the database's, as the reach's are (0015): every path that deletes or inserts
devices, set-based ones included, keeps the table, and Django never has to load a device to delete
it. PostgreSQL runs them once per statement over its transition table, reading the open samples
once (``dispatch_sample_idx``) and each deleted device's rows in them through the (dispatch, device)
index; with no open sample, or no tombstone, they read nothing more. SQLite runs them per row, with
Django's own SHA256 function (registered on each of its connections).
"""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

# A sample still waiting for its rest: no rest of its test is past its resolve.
PG_TRIGGERS = """
CREATE FUNCTION delivery_device_tombstone_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    samples bigint[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        samples := ARRAY(
            SELECT d.id FROM delivery_dispatch d
            WHERE d.app_id IN (SELECT DISTINCT app_id FROM old_rows) AND (d.sample -> 'part') = '"sample"'::jsonb
              AND NOT EXISTS (
                  SELECT 1 FROM delivery_dispatch r
                  WHERE r.kind = d.kind AND r.source_id = d.source_id AND (r.sample -> 'part') = '"rest"'::jsonb
                    AND (r.sample -> 'test') = (d.sample -> 'test') AND r.status <> 'preparing'));
        IF cardinality(samples) = 0 THEN
            RETURN NULL;
        END IF;
        INSERT INTO delivery_devicetombstone (app_id, token_digest, device_id, deleted_at)
        SELECT o.app_id, encode(sha256(convert_to(o.token, 'UTF8')), 'hex'), o.id, now()
        FROM old_rows o
        WHERE EXISTS (
            SELECT 1 FROM delivery_delivery s
            WHERE s.dispatch_id = ANY(samples) AND s.device_id = o.id AND s.queued_at IS NULL
              AND s.status <> 'skipped');
    ELSIF EXISTS (SELECT 1 FROM delivery_devicetombstone) THEN
        UPDATE delivery_devicetombstone t SET successor_id = n.id
        FROM new_rows n
        WHERE t.app_id = n.app_id AND t.token_digest = encode(sha256(convert_to(n.token, 'UTF8')), 'hex');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER delivery_device_tombstone_delete AFTER DELETE ON delivery_device
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_device_tombstone_trigger();
CREATE TRIGGER delivery_device_tombstone_insert AFTER INSERT ON delivery_device
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_device_tombstone_trigger();
"""
PG_BACKWARDS = """
DROP TRIGGER delivery_device_tombstone_insert ON delivery_device;
DROP TRIGGER delivery_device_tombstone_delete ON delivery_device;
DROP FUNCTION delivery_device_tombstone_trigger();
"""
SQLITE_TRIGGERS = [
    """
CREATE TRIGGER delivery_device_tombstone_delete AFTER DELETE ON delivery_device
WHEN EXISTS (
    SELECT 1 FROM delivery_dispatch d
    WHERE d.app_id = OLD.app_id AND json_extract(d.sample, '$.part') = 'sample'
      AND NOT EXISTS (
          SELECT 1 FROM delivery_dispatch r
          WHERE r.kind = d.kind AND r.source_id = d.source_id AND json_extract(r.sample, '$.part') = 'rest'
            AND json_extract(r.sample, '$.test') = json_extract(d.sample, '$.test') AND r.status <> 'preparing')
      AND EXISTS (
          SELECT 1 FROM delivery_delivery s
          WHERE s.dispatch_id = d.id AND s.device_id = OLD.id AND s.queued_at IS NULL AND s.status <> 'skipped'))
BEGIN
    INSERT INTO delivery_devicetombstone (app_id, token_digest, device_id, successor_id, deleted_at)
    VALUES (OLD.app_id, SHA256(OLD.token), OLD.id, NULL, strftime('%Y-%m-%d %H:%M:%f', 'now'));
END
""",
    """
CREATE TRIGGER delivery_device_tombstone_insert AFTER INSERT ON delivery_device
WHEN EXISTS (SELECT 1 FROM delivery_devicetombstone WHERE app_id = NEW.app_id)
BEGIN
    UPDATE delivery_devicetombstone SET successor_id = NEW.id
    WHERE app_id = NEW.app_id AND token_digest = SHA256(NEW.token);
END
""",
]
SQLITE_BACKWARDS = [
    "DROP TRIGGER delivery_device_tombstone_insert",
    "DROP TRIGGER delivery_device_tombstone_delete",
]


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_TRIGGERS, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_TRIGGERS:
            schema_editor.execute(statement, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_BACKWARDS, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_BACKWARDS:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0036_delivery_held_until"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeviceTombstone",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("token_digest", models.CharField(help_text="SHA-256 of the token, hexadecimal.", max_length=64)),
                ("device_id", models.BigIntegerField(help_text="The device deleted.")),
                (
                    "successor_id",
                    models.BigIntegerField(
                        blank=True, help_text="The device that registered the same token since, if any.", null=True
                    ),
                ),
                ("deleted_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "app",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="delivery.app",
                    ),
                ),
            ],
            options={
                "indexes": [
                    models.Index(fields=["app", "token_digest"], name="device_tombstone_token_idx"),
                    models.Index(fields=["deleted_at"], name="device_tombstone_deleted_idx"),
                ],
            },
        ),
        migrations.AddIndex(
            model_name="dispatch",
            index=models.Index(
                condition=models.Q(("sample__part", "sample")), fields=["app"], name="dispatch_sample_idx"
            ),
        ),
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
