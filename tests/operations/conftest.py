import pytest

from tests.campaigns.conftest import content, make_campaign, segment, shop, team  # noqa: F401


@pytest.fixture
def approve(manager_alice, approver_bob):
    from campaigns.models import Campaign
    from campaigns.services.lifecycle import campaign_approve, campaign_submit

    def run(campaign, now=None):
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=now)
        return Campaign.objects.get(pk=campaign.pk)

    return run


@pytest.fixture
def beat(db):
    """The beat's schedules as the migrations write them. A transactional test elsewhere in the run
    empties every table, migration data included, so they are written again where a test needs them."""
    import importlib

    from django.apps import apps

    for module, create in (
        ("campaigns.migrations.0002_scheduler_beat", "create_beat"),
        ("delivery.migrations.0004_send_watchdog", "create_watchdog"),
        ("journeys.migrations.0002_engine_beat", "create_beat"),
    ):
        getattr(importlib.import_module(module), create)(apps, None)
