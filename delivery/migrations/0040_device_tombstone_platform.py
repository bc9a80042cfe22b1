"""A deleted device's platform, kept while rows of it may still be counted (``DeviceTombstone``).

A device deleted while rows of it were not final yet in a dispatch still running (queued, or held
by a worker) leaves a tombstone with its platform, as one a winner sample reached leaves one with
its token's digest (0037): the outcomes of those rows, written once the device is gone (the
watchdog's ``unknown``, a late answer, ``device_deleted``), are counted under the platform the rows
were targeted on instead of ``none``. The delete trigger now writes both kinds, one row per device,
with the platform in either; the tombstones are looked up by device when a row is counted.

PostgreSQL reads the running dispatches of the deleted devices' apps once per statement (their
unfinished index), then each deleted device's rows in them: a bulk run's through the (dispatch,
device) index, a stream's among its rows not final (its recent index). With no running dispatch
and no open sample, it reads nothing more. SQLite's per-row trigger is dropped while the column is
added (it copies the table) and made again after.
"""

import importlib

from django.db import migrations, models

tombstones = importlib.import_module("delivery.migrations.0037_device_tombstones")

PG_FUNCTION = """
CREATE OR REPLACE FUNCTION delivery_device_tombstone_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    samples bigint[];
    running bigint[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        samples := ARRAY(
            SELECT d.id FROM delivery_dispatch d
            WHERE d.app_id IN (SELECT DISTINCT app_id FROM old_rows) AND (d.sample -> 'part') = '"sample"'::jsonb
              AND NOT EXISTS (
                  SELECT 1 FROM delivery_dispatch r
                  WHERE r.kind = d.kind AND r.source_id = d.source_id AND (r.sample -> 'part') = '"rest"'::jsonb
                    AND (r.sample -> 'test') = (d.sample -> 'test') AND r.status <> 'preparing'));
        running := ARRAY(
            SELECT d.id FROM delivery_dispatch d
            WHERE d.finished_at IS NULL AND d.status IN ('preparing', 'sending')
              AND d.app_id IN (SELECT DISTINCT app_id FROM old_rows));
        IF cardinality(samples) = 0 AND cardinality(running) = 0 THEN
            RETURN NULL;
        END IF;
        INSERT INTO delivery_devicetombstone (app_id, token_digest, device_id, platform, deleted_at)
        SELECT o.app_id, encode(sha256(convert_to(o.token, 'UTF8')), 'hex'), o.id, o.platform, now()
        FROM old_rows o
        WHERE EXISTS (
            SELECT 1 FROM delivery_delivery s
            WHERE s.dispatch_id = ANY(samples) AND s.device_id = o.id AND s.queued_at IS NULL
              AND s.status <> 'skipped')
          OR EXISTS (
            SELECT 1 FROM delivery_delivery s
            WHERE s.dispatch_id = ANY(running) AND s.device_id = o.id AND s.queued_at IS NULL
              AND s.finished_at IS NULL)
          OR EXISTS (
            SELECT 1 FROM delivery_delivery s
            WHERE s.dispatch_id = ANY(running) AND s.queued_at IS NOT NULL AND s.finished_at IS NULL
              AND s.device_id = o.id);
    ELSIF EXISTS (SELECT 1 FROM delivery_devicetombstone) THEN
        UPDATE delivery_devicetombstone t SET successor_id = n.id
        FROM new_rows n
        WHERE t.app_id = n.app_id AND t.token_digest = encode(sha256(convert_to(n.token, 'UTF8')), 'hex');
    END IF;
    RETURN NULL;
END
$$;
"""
PG_FUNCTION_BEFORE = tombstones.PG_TRIGGERS.split("CREATE TRIGGER")[0].replace(
    "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"
)
SQLITE_DELETE = """
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
  OR EXISTS (
    SELECT 1 FROM delivery_dispatch d
    WHERE d.app_id = OLD.app_id AND d.finished_at IS NULL AND d.status IN ('preparing', 'sending')
      AND EXISTS (
          SELECT 1 FROM delivery_delivery s
          WHERE s.dispatch_id = d.id AND s.device_id = OLD.id AND s.finished_at IS NULL))
BEGIN
    INSERT INTO delivery_devicetombstone (app_id, token_digest, device_id, successor_id, platform, deleted_at)
    VALUES (OLD.app_id, SHA256(OLD.token), OLD.id, NULL, OLD.platform, strftime('%Y-%m-%d %H:%M:%f', 'now'));
END
"""


def sqlite_triggers_drop(apps, schema_editor):
    # SQLite adds the column by copying the table into a new one: its triggers would name a table
    # that is not there during the copy. They are made again once it is done.
    if schema_editor.connection.vendor == "sqlite":
        for statement in tombstones.SQLITE_BACKWARDS:
            schema_editor.execute(statement, params=None)


def sqlite_triggers_restore(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for statement in tombstones.SQLITE_TRIGGERS:
            schema_editor.execute(statement, params=None)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_FUNCTION, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        schema_editor.execute(SQLITE_DELETE, params=None)
        schema_editor.execute(tombstones.SQLITE_TRIGGERS[1], params=None)  # the insert trigger, as it was


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PG_FUNCTION_BEFORE, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in tombstones.SQLITE_BACKWARDS:
            schema_editor.execute(statement, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0039_device_mark_test_permission"),
    ]

    operations = [
        migrations.RunPython(sqlite_triggers_drop, sqlite_triggers_restore, elidable=False),
        migrations.AddField(
            model_name="devicetombstone",
            name="platform",
            field=models.CharField(
                blank=True,
                default="",
                help_text="Its platform, kept when it had rows not final yet: their outcomes count under it.",
                max_length=8,
            ),
        ),
        migrations.AddIndex(
            model_name="devicetombstone",
            index=models.Index(fields=["device_id"], name="device_tombstone_device_idx"),
        ),
        migrations.RunPython(forwards, backwards, elidable=False),
    ]
