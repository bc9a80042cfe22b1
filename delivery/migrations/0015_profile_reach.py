"""Each profile's reach per app, kept on the profile row by PostgreSQL from the devices.

``audiences_profile.reach`` is an array of small integers indexed by app id, ``reach[app id]``
holding the profile's reach in that app: 1 when it has an active device there (reachable), plus 2
for an iOS one, 4 for an Android one and 8 for one that allows notifications; 0 or out of the
array's bounds when it has none. (Reading an element is a fixed offset, several times cheaper
than a JSON key when a million profiles are counted.) Triggers on ``delivery_device`` recompute the entries of every
profile a statement touched (inserted, deleted, or changed in profile, app, platform, activity or
opt-in) from the devices themselves, so every write path keeps it exact: registrations, provider
deactivations, bulk writes, deletions of profiles and apps. Counting an audience's reach is then
one scan of its profiles (``audiences.selectors.audience_reach``).

The column is not a model field: Django never writes it, so saving a profile cannot overwrite it
with a stale copy. On SQLite nothing is added; the reach is counted from the devices there.
"""

from django.db import migrations, transaction

# One profile's array, from its active devices (read through the profile_id index): its bounds are
# the lowest and highest app ids the profile has a device in, the apps between without one hold 0.
PROFILE_REACH = """
CREATE FUNCTION delivery_profile_reach(profile bigint) RETURNS smallint[]
LANGUAGE sql STABLE AS $$
    WITH apps AS (
        SELECT app_id, 1 | bit_or(CASE platform WHEN 'ios' THEN 2 WHEN 'android' THEN 4 ELSE 0 END
                                  | CASE WHEN push_enabled THEN 8 ELSE 0 END) AS bits
        FROM delivery_device WHERE profile_id = profile AND active GROUP BY app_id
    )
    SELECT coalesce(
        (SELECT format('[%s:%s]=%s', lo, hi,
                       (SELECT array_agg(coalesce(apps.bits, 0) ORDER BY g)
                        FROM generate_series(lo, hi) AS g LEFT JOIN apps ON apps.app_id = g))::smallint[]
         FROM (SELECT min(app_id) AS lo, max(app_id) AS hi FROM apps) AS bounds WHERE lo IS NOT NULL),
        '{}'::smallint[])
$$;
"""

# The arrays of many profiles at once, in one pass over their devices: a profile whose apps are
# consecutive ids (one app, nearly always) gets its array from the aggregate, the others from
# delivery_profile_reach. The profiles are locked first, in id order (as an events call locks the
# profiles whose last seen time moves: the two never deadlock), and recomputed by a later
# statement, which reads with a new snapshot: of two transactions adding devices to one profile at
# once, the second waits for the first's lock, then counts the first's committed device too.
PROFILES_REFRESH = """
CREATE FUNCTION delivery_profiles_reach_refresh(profiles bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM audiences_profile WHERE id IN (SELECT unnest(profiles)) ORDER BY id FOR NO KEY UPDATE;
    UPDATE audiences_profile p SET reach = r.reach
    FROM (
        SELECT t.id, coalesce(a.reach, '{}'::smallint[]) AS reach
        FROM unnest(profiles) AS t (id)
        LEFT JOIN (
            SELECT profile_id,
                   CASE WHEN count(*) = max(app_id) - min(app_id) + 1
                        THEN format('[%s:%s]=%s', min(app_id), max(app_id), array_agg(bits ORDER BY app_id))::smallint[]
                        ELSE delivery_profile_reach(profile_id) END AS reach
            FROM (SELECT d.profile_id, d.app_id,
                         1 | bit_or(CASE d.platform WHEN 'ios' THEN 2 WHEN 'android' THEN 4 ELSE 0 END
                                    | CASE WHEN d.push_enabled THEN 8 ELSE 0 END) AS bits
                  FROM delivery_device d WHERE d.active AND d.profile_id IN (SELECT unnest(profiles))
                  GROUP BY d.profile_id, d.app_id) AS apps
            GROUP BY profile_id
        ) AS a ON a.profile_id = t.id
    ) AS r
    WHERE p.id = r.id AND p.reach IS DISTINCT FROM r.reach;
END
$$;
"""

# One function for the three statement triggers: the profiles whose devices a statement added,
# removed or changed in what the reach reads.
DEVICE_TRIGGER = """
CREATE FUNCTION delivery_device_reach_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    touched bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        touched := ARRAY(SELECT DISTINCT profile_id FROM new_rows WHERE active ORDER BY 1);
    ELSIF TG_OP = 'DELETE' THEN
        touched := ARRAY(SELECT DISTINCT profile_id FROM old_rows WHERE active ORDER BY 1);
    ELSE
        touched := ARRAY(
            SELECT DISTINCT p FROM new_rows n JOIN old_rows o ON o.id = n.id,
                LATERAL (VALUES (n.profile_id), (o.profile_id)) AS t (p)
            WHERE (n.active OR o.active)
              AND (n.profile_id, n.app_id, n.platform, n.active, n.push_enabled)
                  IS DISTINCT FROM (o.profile_id, o.app_id, o.platform, o.active, o.push_enabled)
            ORDER BY 1);
    END IF;
    IF cardinality(touched) = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM delivery_profiles_reach_refresh(touched);
    RETURN NULL;
END
$$;
CREATE TRIGGER delivery_device_reach_insert AFTER INSERT ON delivery_device
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_device_reach_trigger();
CREATE TRIGGER delivery_device_reach_update AFTER UPDATE ON delivery_device
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_device_reach_trigger();
CREATE TRIGGER delivery_device_reach_delete AFTER DELETE ON delivery_device
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION delivery_device_reach_trigger();
CREATE FUNCTION delivery_device_truncate_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audiences_profile SET reach = '{}' WHERE reach <> '{}';
    RETURN NULL;
END
$$;
CREATE TRIGGER delivery_device_reach_truncate AFTER TRUNCATE ON delivery_device
    FOR EACH STATEMENT EXECUTE FUNCTION delivery_device_truncate_trigger();
"""

FORWARDS = "ALTER TABLE audiences_profile ADD COLUMN reach smallint[] NOT NULL DEFAULT '{}';" + PROFILE_REACH
FORWARDS += PROFILES_REFRESH + DEVICE_TRIGGER
BACKFILL_BATCH = 20_000  # profiles per transaction
BACKWARDS = """
DROP TRIGGER delivery_device_reach_truncate ON delivery_device;
DROP TRIGGER delivery_device_reach_delete ON delivery_device;
DROP TRIGGER delivery_device_reach_update ON delivery_device;
DROP TRIGGER delivery_device_reach_insert ON delivery_device;
DROP FUNCTION delivery_device_truncate_trigger();
DROP FUNCTION delivery_device_reach_trigger();
DROP FUNCTION delivery_profiles_reach_refresh(bigint[]);
DROP FUNCTION delivery_profile_reach(bigint);
ALTER TABLE audiences_profile DROP COLUMN reach;
"""


def forwards(apps, schema_editor):
    """The column, functions and triggers in one transaction; then every profile with a device, a
    batch per transaction, so registrations and sends keep writing while the backfill runs (the
    triggers keep the profiles they touch exact meanwhile)."""
    if schema_editor.connection.vendor != "postgresql":
        return
    alias = schema_editor.connection.alias
    with transaction.atomic(using=alias):
        schema_editor.execute(FORWARDS, params=None)
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT min(profile_id), max(profile_id) FROM delivery_device")
        low, high = cursor.fetchone()
        while low is not None and low <= high:
            with transaction.atomic(using=alias):
                cursor.execute(
                    "SELECT delivery_profiles_reach_refresh(ARRAY(SELECT DISTINCT profile_id FROM delivery_device "
                    "WHERE profile_id >= %s AND profile_id < %s ORDER BY 1))",
                    [low, low + BACKFILL_BATCH],
                )
            low += BACKFILL_BATCH


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARDS, params=None)


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("delivery", "0014_device_reach_index"),
        ("audiences", "0008_segment_last_reach"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
