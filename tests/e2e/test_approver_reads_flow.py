"""An approver reads everything the request they decide references, read-only, even without a grant."""

import pytest

from accounts.services import access_grant
from audiences.models import Segment
from campaigns.services.lifecycle import campaign_create, campaign_submit
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save

pytestmark = pytest.mark.browser


def test_approver_opens_the_segment_and_content_of_the_campaign_under_review(
    login, page, live_server, manager_alice, approver_bob, pushsim_app
):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = Segment.objects.create(
        name="Pro users", rules={"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}
    )
    access_grant(obj=segment, to=manager_alice, by=None)  # the approver holds no grant on it
    content = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Promo", title="Hi", body="-20%"), by=manager_alice
    )
    campaign = campaign_create(by=manager_alice, name="Promo", app=pushsim_app, segment=segment, content=content)
    access_grant(obj=campaign, to=approver_bob, by=None)  # shared with the approver, not the app
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)

    login(approver_bob)
    page.goto(f"{live_server.url}/admin/accounts/approvalrequest/")
    page.click("#result_list a:has-text('Promo')")
    page.wait_for_url("**/review/")
    page.click(".review-links a:has-text('Pro users')")
    page.wait_for_url(f"**/admin/audiences/segment/{segment.pk}/change/")
    assert "View segment" in page.locator("#content h1, #content h2").first.inner_text()
    assert page.locator("input[name=_save]").count() == 0  # read-only: the approver may not edit it
    page.goto(f"{live_server.url}/admin/audiences/segment/")
    assert "Pro users" in page.locator("#result_list").inner_text()
    page.goto(f"{live_server.url}/admin/delivery/pushcontent/{content.pk}/change/")
    assert page.locator("input[name=_save]").count() == 0
    assert "Promo" in page.content()
