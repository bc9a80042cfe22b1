"""Way-finding as a Viewer: from a campaign to its dispatches and back, and to the card of who made them."""

import pytest

from accounts.services import access_grant
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit
from campaigns.services.triggers import campaign_trigger
from delivery.models import Dispatch, PushContent
from delivery.services.contents import pushcontent_save
from tests.factories import DeviceFactory, ProfileFactory

pytestmark = pytest.mark.browser


def test_viewer_goes_from_a_campaign_to_its_dispatch_and_back(
    login, page, live_server, manager_alice, approver_bob, viewer_carol, pushsim_app
):
    for user in (manager_alice, approver_bob, viewer_carol):
        access_grant(obj=pushsim_app, to=user, by=None)
    DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=pushsim_app)
    content = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Ping", title="Ping", body="Pong"), by=manager_alice
    )
    campaign = campaign_create(by=manager_alice, name="Pings", app=pushsim_app, kind="api_triggered", content=content)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    result = campaign_trigger(
        campaign_id=campaign.pk, by=manager_alice, recipients=[{"external_id": "zoe"}], context={}
    )
    dispatch = Dispatch.objects.get(pk=result.dispatch_id)

    login(viewer_carol)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    assert "manager_alice" in page.locator(".user-card").inner_text()
    page.click(f"#campaign-sends a[href$='/delivery/dispatch/{dispatch.pk}/change/']")
    page.wait_for_url(f"**/admin/delivery/dispatch/{dispatch.pk}/change/")
    assert page.locator(".field-content_shown .phone, .field-content_shown div").count() > 0
    assert "Ping" in page.locator(".field-content_shown").inner_text()
    page.click(".field-created_by a")  # who started it: a card, not a bare 403
    assert "manager_alice" in page.locator("#user-card").inner_text()
    # Back to the dispatch by its address: a click landing while the history navigation was still
    # going was lost now and then.
    page.goto(f"{live_server.url}/admin/delivery/dispatch/{dispatch.pk}/change/")
    page.click("a.dispatch-source")
    page.wait_for_url(f"**/admin/campaigns/campaign/{campaign.pk}/change/")
