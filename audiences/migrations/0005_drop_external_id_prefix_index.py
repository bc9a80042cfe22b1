"""Profiles are searched by exact external id (the unique index serves it): the prefix indexes
(ours, and the ``_like`` one Django adds to unique text columns on PostgreSQL) only slowed
writes down."""

from django.db import migrations


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS profile_external_id_prefix", params=None)
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'audiences_profile' "
                "AND indexname LIKE 'audiences_profile_external_id_%%_like'"
            )
            names = [row[0] for row in cursor.fetchall()]
        for name in names:
            schema_editor.execute(f'DROP INDEX IF EXISTS "{name}"', params=None)


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS profile_external_id_prefix ON audiences_profile (external_id varchar_pattern_ops)",
            params=None,
        )


class Migration(migrations.Migration):
    dependencies = [("audiences", "0004_event_covering_index")]

    operations = [migrations.RunPython(drop, create)]
