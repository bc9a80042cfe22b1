"""Audit events stay append-only, except that retention may delete events older than a year.

The trigger (accounts 0002) refused every UPDATE and DELETE. It now lets a DELETE through only
when the session has said it is applying retention (``SET LOCAL pushdesk.audit_retention = 'on'``,
which only ``retention_apply`` does) and the event is more than 365 days old: nothing can rewrite
or remove recent history, through the application or not.
"""

from django.db import migrations

RETENTION_SQL = """
CREATE OR REPLACE FUNCTION accounts_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND current_setting('pushdesk.audit_retention', true) = 'on'
       AND OLD.created_at < now() - interval '365 days' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'accounts_auditevent is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
"""
STRICT_SQL = """
CREATE OR REPLACE FUNCTION accounts_auditevent_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'accounts_auditevent is append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
"""


def allow_retention(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(RETENTION_SQL, params=None)


def strict(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(STRICT_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [("operations", "0001_initial"), ("accounts", "0002_roles_and_append_only_audit")]

    operations = [migrations.RunPython(allow_retention, strict)]
