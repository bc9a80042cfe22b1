"""An upgrade on a database holding data: the migrations of the latest release run from the state
before them (the release of 2026-12-03) over rows of every kind they rewrite, as `manage.py
migrate` runs them on an operator's database, and leave the rows as the code now reads them."""

import os
import uuid

import psycopg
import pytest
from django.db import connections

from tests.processes import manage

pytestmark = pytest.mark.skipif(
    connections["default"].vendor != "postgresql", reason="a database of its own on the PostgreSQL server"
)

# The last migration of each app in the release before: every later one runs with data in place.
BEFORE = [("delivery", "0024"), ("campaigns", "0011"), ("audiences", "0015"), ("journeys", "0007")]

# Rows written through the models as they were then (the migration state), not as they are now.
SEED = """
import datetime as dt
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.utils import timezone

loader = MigrationLoader(connection)
model = loader.project_state(list(loader.applied_migrations)).apps.get_model
now = timezone.now()
user = model("accounts.User").objects.create(username="alice", email="alice@example.com")
app = model("delivery.App").objects.create(name="Shop", created_by=user)
Profile, Device = model("audiences.Profile"), model("delivery.Device")
profiles = Profile.objects.bulk_create([Profile(external_id=f"p{i}") for i in range(40)])
# One phone's APNs token registered twice in two cases: one device after the upgrade.
devices = Device.objects.bulk_create(
    [
        Device(app=app, profile=p, platform="ios", token=("AB" if i % 2 else "ab") + f"{i // 2:062x}",
               last_registered_at=now - dt.timedelta(minutes=i))
        for i, p in enumerate(profiles[:20])
    ]
    + [Device(app=app, profile=p, platform="android", token=f"Fcm{i}", last_registered_at=now)
       for i, p in enumerate(profiles[20:])]
)
content = model("delivery.PushContent").objects.create(name="Spring", app=app, title="Hi", body="Sale")
campaign = model("campaigns.Campaign").objects.create(
    name="Sale", app=app, content=content, owner=user, status="completed", time_zone="Europe/Paris",
    activated_at=now - dt.timedelta(days=2),
)
Dispatch, Delivery = model("delivery.Dispatch"), model("delivery.Delivery")
due = now.replace(second=0, microsecond=0) - dt.timedelta(days=3)
done = Dispatch.objects.create(kind="campaign", source_id=campaign.pk, app=app, content_spec={}, status="done",
                               label=f"Sale v1 @ {due:%Y-%m-%d %H:%M} UTC")
stream = Dispatch.objects.create(kind="api_trigger", source_id=campaign.pk, app=app, content_spec={},
                                 status="sending", standing=True)
Dispatch.objects.create(kind="campaign", source_id=campaign.pk, app=app, content_spec={}, status="preparing")
Delivery.objects.bulk_create(
    [Delivery(dispatch=d, device=x, profile=x.profile, status="accepted") for d in (done, stream) for x in devices]
)
Occurrence = model("campaigns.Occurrence")
Occurrence.objects.create(campaign=campaign, due_at=due, fired_at=due, outcome="sent", dispatch=done)
Occurrence.objects.create(campaign=campaign, due_at=due - dt.timedelta(days=4),
                          fired_at=campaign.activated_at + dt.timedelta(minutes=1), outcome="sent_late")
model("delivery.DeliveryRules").objects.create(app=app, frequency_cap=0, frequency_window_hours=100_000)
segment = model("audiences.Segment").objects.create(name="Imported", created_by=user, kind="imported")
model("audiences.Import").objects.create(file="imports/a.csv", segment=segment, status="running",
                                         started_at=now, created_by=user)
model("journeys.Journey").objects.create(name="Welcome", app=app, owner=user, status="live")
"""


@pytest.fixture
def old_database(django_db_setup, django_db_blocker):
    """A database of its own migrated to the release before, with rows in it; dropped afterwards."""
    settings_dict = connections["default"].settings_dict
    name = f"pushdesk_upgrade_{uuid.uuid4().hex[:8]}"
    auth = settings_dict["USER"] + (f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else "")
    server = f"postgres://{auth}@{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    env = {**os.environ, "DATABASE_URL": f"{server}/{name}"}
    try:
        # Each app to its migration in one process (a `manage.py migrate` each started Django four times).
        migrate = "from django.core.management import call_command\n" + "".join(
            f"call_command('migrate', {app_label!r}, {migration!r}, verbosity=0)\n" for app_label, migration in BEFORE
        )
        result = manage(["shell", "--no-imports", "-c", migrate], env, timeout=600)
        assert result.returncode == 0, result.stderr
        result = manage(["shell", "--no-imports", "-c", SEED], env, timeout=120)
        assert result.returncode == 0, result.stderr
        yield env, f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_the_latest_migrations_run_on_a_database_holding_rows_and_rewrite_them(old_database):
    env, url = old_database
    result = manage(["migrate", "--verbosity", "0"], env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert manage(["migrate", "--check", "--verbosity", "0"], env, timeout=120).returncode == 0

    with psycopg.connect(url) as db:
        ios = db.execute("SELECT token FROM delivery_device WHERE platform = 'ios' ORDER BY token").fetchall()
        assert len(ios) == 10 and all(token == token.lower() for (token,) in ios)
        bounds = dict(
            (status, (low is not None, high is not None))
            for status, low, high in db.execute("SELECT status, rows_after_id, rows_until_id FROM delivery_dispatch")
        )
        assert bounds == {"done": (True, True), "sending": (True, False), "preparing": (False, False)}
        (label,) = db.execute("SELECT label FROM delivery_dispatch WHERE status = 'done'").fetchone()
        assert label.endswith("(Europe/Paris)"), label
        outcomes = db.execute("SELECT outcome, at_local_time FROM campaigns_occurrence ORDER BY outcome").fetchall()
        assert outcomes == [("sent", False), ("sent_at_approval", False)]
        rules = db.execute("SELECT frequency_cap, frequency_window_hours FROM delivery_deliveryrules").fetchone()
        assert rules == (None, 366 * 24)
        run = db.execute("SELECT run_started_at = started_at, separator FROM audiences_import").fetchone()
        assert run == (True, "comma")
        assert db.execute("SELECT status, paused_at FROM journeys_journey").fetchone() == ("live", None)
        assert db.execute("SELECT count(*) FROM auth_permission WHERE codename = 'pause_journey'").fetchone() == (1,)
