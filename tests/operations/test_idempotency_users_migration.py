"""The upgrade that gives each Idempotency-Key record its API key's user (audiences 0029/0030, campaigns
0020/0021) on a table of thousands of records: every record gets its key's user, a user's later
record of the same key is deleted, and the records are written a batch at a time, each batch its own
transaction, so that calls carrying a key never wait for the whole table; stopped half way, it is run
again and finishes."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from tests.factories import AppFactory, PushContentFactory, SegmentFactory, UserFactory

pytestmark = [pytest.mark.django_db(transaction=True)]

RECORDS = 25_000  # the batches are of 10,000 records: three of them

UPGRADES = {
    "audiences": ("0028_segment_definition_version", "0030_eventbulkrequest_user_unique", "eventbulkrequest"),
    "campaigns": ("0019_approved_version_name", "0021_triggerrequest_user_unique", "triggerrequest"),
}


@pytest.fixture(autouse=True)
def _migrated_again_after():
    """Whatever the test left, the next one finds every migration applied."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def _migrate(app: str, name: str) -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([(app, name)])


def _records_made(app: str, before: str, table: str) -> tuple[dict[int, int], list[int], list[int]]:
    """At the migration before the upgrade, ``RECORDS`` records under three users' keys (one user with
    two keys, who sent the same Idempotency-Key under both): each key's user, the ids the upgrade keeps
    of the repeated key and those it deletes."""
    from accounts.models import ApiKey

    _migrate(app, before)
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    keys = [
        ApiKey.objects.create(user=user, name=name, prefix=name, key_hash="0" * 64, scopes=["ingest", "trigger"])
        for user, name in ((alice, "alice-1"), (alice, "alice-2"), (bob, "bob-1"))
    ]
    columns, extra = "api_key_id, idempotency_key, body_hash, finished, created_at", ""
    if app == "campaigns":  # a trigger call's record names its campaign
        from campaigns.models import Campaign

        shop = AppFactory()
        campaign = Campaign.objects.create(
            name="Orders",
            app=shop,
            kind="api_triggered",
            content=PushContentFactory(app=shop),
            segment=SegmentFactory(),
            owner=alice,
        )
        columns, extra = f"{columns}, campaign_id", f", {int(campaign.pk)}"
    with connection.cursor() as cursor:
        rows = [(keys[n % 3].pk, f"key-{n}") for n in range(RECORDS)]
        rows += [(keys[0].pk, "repeated"), (keys[1].pk, "repeated"), (keys[2].pk, "repeated")]
        values = ", ".join([f"(%s, %s, '', false, now(){extra})"] * len(rows))
        cursor.execute(
            f"INSERT INTO {app}_{table} ({columns}) VALUES {values} RETURNING id",  # noqa: S608
            [value for row in rows for value in row],
        )
        ids = [row[0] for row in cursor.fetchall()]
    repeated = ids[-3:]
    return {key.pk: key.user_id for key in keys}, [repeated[0], repeated[2]], [repeated[1]]


@pytest.mark.parametrize("app", sorted(UPGRADES))
def test_the_upgrade_sets_every_record_s_user_a_batch_at_a_time_and_finishes_when_run_again(app):
    before, last, table = UPGRADES[app]
    users, kept, deleted = _records_made(app, before, table)
    # A record of the second batch that cannot be written: the upgrade stops there.
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id FROM {app}_{table} ORDER BY id OFFSET 15000 LIMIT 1")  # noqa: S608
        (stopper,) = cursor.fetchone()
        cursor.execute(
            "CREATE FUNCTION pushdesk_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER pushdesk_test_refuse BEFORE UPDATE ON {app}_{table} "
            f"FOR EACH ROW WHEN (OLD.id = {int(stopper)}) EXECUTE FUNCTION pushdesk_test_refuse()"
        )
    try:
        with pytest.raises(Exception, match="refused for the test"):
            _migrate(app, last)
        with connection.cursor() as cursor:
            columns = [c.name for c in connection.introspection.get_table_description(cursor, f"{app}_{table}")]
            written = 0  # no column: nothing of the upgrade stayed
            if "user_id" in columns:
                cursor.execute(f"SELECT count(*) FROM {app}_{table} WHERE user_id IS NOT NULL")  # noqa: S608
                (written,) = cursor.fetchone()
        # The first batch stayed written: it was its own transaction, over before the second began.
        assert written == 10_000, written
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS pushdesk_test_refuse ON {app}_{table}")
            cursor.execute("DROP FUNCTION IF EXISTS pushdesk_test_refuse()")

    _migrate(app, last)  # run again: takes up where it stopped

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, api_key_id, user_id FROM {app}_{table}")  # noqa: S608
        rows = cursor.fetchall()
    assert len(rows) == RECORDS + 2
    assert all(user_id == users[api_key_id] for _, api_key_id, user_id in rows)
    ids = {row[0] for row in rows}
    assert set(kept) <= ids and not set(deleted) & ids
