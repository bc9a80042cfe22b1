"""Indexes only PostgreSQL has: GIN on profile attributes (containment: ``attributes @> {...}``)
and a pattern index for prefix search on external ids. SQLite gets nothing here."""

from django.db import migrations

CREATE = [
    "CREATE INDEX IF NOT EXISTS profile_attributes_gin ON audiences_profile USING gin (attributes jsonb_path_ops)",
    "CREATE INDEX IF NOT EXISTS profile_external_id_prefix ON audiences_profile (external_id varchar_pattern_ops)",
]
DROP = [
    "DROP INDEX IF EXISTS profile_attributes_gin",
    "DROP INDEX IF EXISTS profile_external_id_prefix",
]


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in CREATE:
            schema_editor.execute(sql, params=None)


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in DROP:
            schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):
    dependencies = [("audiences", "0001_initial")]

    operations = [migrations.RunPython(create, drop)]
