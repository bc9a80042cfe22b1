"""The stamps behind which the trigger path keeps live campaigns per process: which campaigns a
change of an app's delivery rules refreshes, and how it finds them."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.services import access_grant
from accounts.stamps import stamps_read
from campaigns.models import Campaign
from campaigns.services.lifecycle import (
    campaign_approve,
    campaign_create,
    campaign_stop,
    campaign_submit,
)
from delivery.models import DeliveryRules
from tests.campaigns.helpers import revision_moving_to
from tests.factories import AppFactory, PushContentFactory


def _draft(app, *, by):
    return campaign_create(
        by=by, name=f"Draft of {app}", app=app, kind="api_triggered", content=PushContentFactory(app=app)
    )


def _refreshed(campaigns, change) -> set[str]:
    """The names of the ``campaigns`` whose stamp ``change()`` moved."""
    names = [f"campaign:{c.pk}" for c in campaigns]
    before = stamps_read(names)
    change()
    after = stamps_read(names)
    return {c.name for c, name in zip(campaigns, names, strict=True) if after[name] != before[name]}


@pytest.mark.embedded  # the receiver's query runs on SQLite too
def test_a_change_of_an_apps_rules_refreshes_its_campaigns_and_those_its_approved_version_sends_to_it(
    live_trigger, pushsim_app, new_app, manager_alice, approver_bob
):
    """The campaigns the app's row names, and those a revision moves out of it: their approved
    version sends to it, stopped or not. No other."""
    stopped = _draft(pushsim_app, by=manager_alice)
    campaign_submit(campaign_id=stopped.pk, by=manager_alice)
    campaign_approve(campaign_id=stopped.pk, by=approver_bob)
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    revision_moving_to(Campaign.objects.get(pk=stopped.pk), new_app, by=manager_alice)
    campaign_stop(campaign_id=stopped.pk, by=manager_alice)
    Campaign.objects.filter(pk=stopped.pk).update(name="Stopped, moving")
    other_app = AppFactory(name="Other app")
    access_grant(obj=other_app, to=manager_alice, by=None)
    new, other = _draft(new_app, by=manager_alice), _draft(other_app, by=manager_alice)
    old = _draft(pushsim_app, by=manager_alice)
    campaigns = list(Campaign.objects.filter(pk__in=[live_trigger.pk, stopped.pk, new.pk, other.pk, old.pk]))

    rules = {}

    def change_rules(app):
        rules[app] = DeliveryRules.objects.update_or_create(app=app, defaults={"frequency_cap": len(rules) + 1})[0]

    assert _refreshed(campaigns, lambda: change_rules(pushsim_app)) == {
        live_trigger.name,
        "Stopped, moving",
        old.name,
    }
    assert _refreshed(campaigns, lambda: change_rules(new_app)) == {live_trigger.name, "Stopped, moving", new.name}
    assert _refreshed(campaigns, lambda: rules[pushsim_app].delete()) == {
        live_trigger.name,
        "Stopped, moving",
        old.name,
    }


def test_a_change_of_an_apps_rules_finds_the_campaigns_to_refresh_through_indexes(
    live_trigger, pushsim_app, new_app, manager_alice
):
    """A rules save reads the campaigns of the app by the row's app and by the app the approved
    version sends to, each through its index, not by a scan of every campaign."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's plans")
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    with CaptureQueriesContext(connection) as saved:
        DeliveryRules.objects.create(app=pushsim_app, frequency_cap=1)
    reads = [q["sql"] for q in saved.captured_queries if q["sql"].startswith('SELECT "campaigns_campaign"."id"')]
    assert reads
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a plan that could use an index does
        for sql in reads:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Seq Scan" not in plan, plan
            assert "Index Cond: (app_id = " in plan and "campaign_approved_app_idx" in plan, plan
