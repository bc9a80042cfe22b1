"""The zone a dispatch's content renders Liquid's ``now`` in.

On SQLite, adding a column with a default rebuilds ``delivery_dispatch`` (a new table copied, the old
one dropped, the new one renamed), and SQLite then refuses the rename while a trigger names the
table: the device tombstone triggers (``0037``) read ``delivery_dispatch``. They are dropped for the
rebuild and made again after it. A later migration rebuilding ``delivery_dispatch``,
``delivery_delivery`` or ``delivery_devicetombstone`` on SQLite does the same (``sqlite_tombstone_triggers``).
"""

import importlib

from django.db import migrations, models

tombstones = importlib.import_module("delivery.migrations.0037_device_tombstones")


def _sqlite_triggers_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for statement in tombstones.SQLITE_BACKWARDS:
            schema_editor.execute(statement, params=None)


def _sqlite_triggers_add(apps, schema_editor):
    if schema_editor.connection.vendor == "sqlite":
        for statement in tombstones.SQLITE_TRIGGERS:
            schema_editor.execute(statement, params=None)


def sqlite_tombstone_triggers(*operations):
    """``operations`` with the device tombstone triggers dropped before them and made again after, on
    SQLite (on PostgreSQL they stay: ALTER TABLE keeps the table)."""
    return [
        migrations.RunPython(_sqlite_triggers_drop, _sqlite_triggers_add),
        *operations,
        migrations.RunPython(_sqlite_triggers_add, _sqlite_triggers_drop),
    ]


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0037_device_tombstones"),
    ]

    operations = sqlite_tombstone_triggers(
        migrations.AddField(
            model_name="dispatch",
            name="time_zone",
            field=models.CharField(
                blank=True,
                help_text="The zone the send is scheduled in (its campaign's), which its content's now renders in; at a local time, each profile's own. Empty: the server's clock (UTC), as a journey's.",
                max_length=64,
            ),
        ),
    )
