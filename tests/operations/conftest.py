import pytest

from tests.campaigns.conftest import content, make_campaign, segment, shop, team  # noqa: F401
from tests.delivery.sending import sim, sim_app, sim_session  # noqa: F401 (fixtures: the push simulator)


@pytest.fixture
def approve(manager_alice, approver_bob):
    from campaigns.models import Campaign
    from campaigns.services.lifecycle import campaign_approve, campaign_submit

    def run(campaign, now=None):
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=now)
        return Campaign.objects.get(pk=campaign.pk)

    return run
