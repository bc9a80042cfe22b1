"""The demo data `make run` sets up again on each start: what it approves by itself."""

import io

import pytest

from accounts.services import access_grant
from campaigns.demo import populate as populate_campaigns
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_update
from delivery.demo import DEMO_APP, populate_devices_and_content
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from tests.factories import AppFactory, SegmentFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_app(db):
    """The demo's app, users (by the names the demo looks for) and push contents, as `make run` leaves them."""
    app = AppFactory(name=DEMO_APP, uses_simulator=True)
    manager = UserFactory(username="manager", role="Manager")
    UserFactory(username="approver", role="Approver")
    UserFactory(username="viewer", role="Viewer")
    access_grant(obj=SegmentFactory(name="Lapsed users"), to=manager, by=None)
    populate_devices_and_content(stdout=io.StringIO())
    return app


def test_demo_set_up_again_approves_no_content_a_person_rewrote(demo_app):
    """`make run` sets the demo up on every start, approving its API-triggered campaign as the demo
    approver when no campaign has its name. A Manager who rewrote the demo's "Flash sale" content and
    renamed its live campaign (a rename of a campaign whose content does not show the name is no
    revision) got, at the next start, a new live campaign sending their words, approved by nobody
    who read them. The demo approves only the content as it wrote it; another waits for approval."""
    populate_campaigns(stdout=io.StringIO())
    first = Campaign.objects.get(name="Flash sale alert")
    assert first.status == Campaign.Status.LIVE
    manager = first.owner
    flash = PushContent.objects.get(app=demo_app, name="Flash sale")
    flash.title = "Words nobody approved"
    pushcontent_save(content=flash, by=manager)
    campaign_update(campaign_id=first.pk, by=manager, name="Old flash sale alert")

    said = io.StringIO()
    populate_campaigns(stdout=said)

    again = Campaign.objects.get(name="Flash sale alert")
    assert again.pk != first.pk
    assert again.status == Campaign.Status.IN_REVIEW, said.getvalue()
    assert not again.approved_version
    assert "waiting for approval" in said.getvalue()


def test_demo_set_up_approves_its_own_content(demo_app):
    populate_campaigns(stdout=io.StringIO())
    campaign = Campaign.objects.get(name="Flash sale alert")
    assert campaign.status == Campaign.Status.LIVE
    assert campaign.approved_version["spec"]["title"] == "Flash sale: 30% off"
