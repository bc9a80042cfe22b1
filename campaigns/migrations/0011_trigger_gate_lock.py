"""The trigger gate's lock without a write per call.

A trigger's append checked the campaign row ``FOR SHARE`` under its gate's conditions, so that a
stop or a voided approval (which update the row) waits for calls in flight. Locking a row shared
writes it: concurrent calls share it through a new multixact each, and every call dirtied the
campaign's page and wrote WAL for it. Now the append takes a shared advisory lock on
(``GATE_LOCK_CLASS``, campaign id) and reads the row plainly; this trigger takes that lock
exclusively whenever an update changes what the gate reads (status, kind, approved fingerprint),
whoever writes it (a service, the admin, a data migration): the update waits for the calls in
flight to commit, and calls after it wait for its commit. On SQLite nothing is added: its write
lock serialises the two.
"""

from django.db import migrations

GATE_LOCK_CLASS = 0x50C5  # campaigns.services.triggers.GATE_LOCK_CLASS

FORWARDS = f"""
CREATE FUNCTION campaigns_trigger_gate_lock() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status OR NEW.kind IS DISTINCT FROM OLD.kind
       OR NEW.approved_fingerprint IS DISTINCT FROM OLD.approved_fingerprint THEN
        PERFORM pg_advisory_xact_lock({GATE_LOCK_CLASS}, mod(OLD.id, 2147483648)::int);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER campaigns_trigger_gate_lock BEFORE UPDATE ON campaigns_campaign
    FOR EACH ROW EXECUTE FUNCTION campaigns_trigger_gate_lock();
"""

BACKWARDS = """
DROP TRIGGER IF EXISTS campaigns_trigger_gate_lock ON campaigns_campaign;
DROP FUNCTION IF EXISTS campaigns_trigger_gate_lock();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARDS, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARDS, params=None)


class Migration(migrations.Migration):
    dependencies = [("campaigns", "0010_winner_mode")]

    operations = [migrations.RunPython(forwards, backwards)]
