from django.db import migrations

ROLES = ("Administrator", "Approver", "Manager", "Viewer")

APPEND_ONLY_SQL = """
CREATE OR REPLACE FUNCTION accounts_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'accounts_auditevent is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER accounts_auditevent_append_only
    BEFORE UPDATE OR DELETE ON accounts_auditevent
    FOR EACH ROW EXECUTE FUNCTION accounts_auditevent_append_only();
"""
DROP_APPEND_ONLY_SQL = """
DROP TRIGGER IF EXISTS accounts_auditevent_append_only ON accounts_auditevent;
DROP FUNCTION IF EXISTS accounts_auditevent_append_only();
"""


def create_roles(apps, schema_editor):
    """The four role groups. Their permissions are set from accounts.roles after every migrate."""
    Group = apps.get_model("auth", "Group")
    for name in ROLES:
        Group.objects.get_or_create(name=name)


def append_only(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND_ONLY_SQL, params=None)


def drop_append_only(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_APPEND_ONLY_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [
        migrations.RunPython(create_roles, migrations.RunPython.noop),
        migrations.RunPython(append_only, drop_append_only),
    ]
