"""On PostgreSQL, events by (name, occurred_at) also carry profile_id, so "who did X in the last
N days" is answered from the index alone (an index-only scan), without visiting the table."""

from django.db import migrations


def create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS event_name_time_idx", params=None)
        schema_editor.execute(
            "CREATE INDEX event_name_time_idx ON audiences_event (name, occurred_at) INCLUDE (profile_id)", params=None
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP INDEX IF EXISTS event_name_time_idx", params=None)
        schema_editor.execute("CREATE INDEX event_name_time_idx ON audiences_event (name, occurred_at)", params=None)


class Migration(migrations.Migration):
    dependencies = [("audiences", "0003_import_resume_position")]

    operations = [migrations.RunPython(create, drop)]
