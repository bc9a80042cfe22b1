"""A live campaign edited in the browser: the edit waits as a pending revision, the approver reviews a
diff against the approved version, and the approved version keeps sending until then."""

import pytest

from accounts.services import access_grant
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit
from campaigns.services.triggers import campaign_trigger
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from tests.factories import DeviceFactory, ProfileFactory

pytestmark = pytest.mark.browser


def test_edit_of_a_live_campaign_waits_for_approval_and_the_approver_sees_the_diff(
    login, page, live_server, manager_alice, approver_bob, pushsim_app, screenshot
):
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=pushsim_app, platform="ios")
    shipped = pushcontent_save(
        content=PushContent(
            app=pushsim_app,
            name="Shipped",
            title="Your order shipped",
            body="Order {{ context.order_id }} is on its way",
        ),
        by=manager_alice,
    )
    delayed = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Delayed", title="Your order is late", body="Sorry"),
        by=manager_alice,
    )
    campaign = campaign_create(
        by=manager_alice, name="Order updates", app=pushsim_app, kind="api_triggered", content=shipped
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)

    # The manager opens the live campaign: the page says what saving will do, before saving.
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    # The page shows the endpoint and an example call, with the context its content uses.
    api_call = page.locator("#api-call").inner_text()
    assert f"POST {live_server.url}/api/v1/campaigns/{campaign.pk}/trigger/" in api_call
    assert "curl -X POST" in api_call and '"order_id": "sample order_id"' in api_call
    warning = page.locator(".messagelist .warning").first.inner_text()
    assert "pending revision" in warning and "keeps sending" in warning
    page.select_option("#id_content", str(delayed.pk))
    page.click("input[name=_continue]")
    page.wait_for_selector("#pending-revision")
    assert "Saved as a pending revision" in page.locator(".messagelist").inner_text()
    assert "Live" in page.locator(".field-status").inner_text()
    assert "Version 1" in page.locator("#approved-version").inner_text()
    changed = page.locator("#pending-revision #approval-diff tr.changed").all_inner_texts()
    assert any("Your order shipped" in row and "Your order is late" in row for row in changed)
    screenshot("campaign-pending-revision")

    # Production triggers still send the approved version meanwhile.
    result = campaign_trigger(
        campaign_id=campaign.pk, by=manager_alice, recipients=[{"external_id": "zoe"}], context={"order_id": "A-1"}
    )
    from delivery.models import Dispatch

    assert Dispatch.objects.get(pk=result.dispatch_id).content_spec["title"] == "Your order shipped"

    page.click("button[value=submit]")
    page.wait_for_selector(".messagelist .success")
    assert Campaign.objects.get(pk=campaign.pk).status == "live"

    # The approver reviews the revision as a diff against the approved version.
    login(approver_bob)
    page.goto(f"{live_server.url}/admin/accounts/approvalrequest/")
    page.click("#result_list a:has-text('Order updates')")
    page.wait_for_url("**/review/")
    diff = page.locator("#approval-review #approval-diff")
    assert "What changed since the approved version" in diff.locator("caption").inner_text()
    title_row = diff.locator("tr.changed", has_text="Title").first.inner_text()
    assert "Your order shipped" in title_row and "Your order is late" in title_row
    assert diff.locator("tr.unchanged", has_text="Kind and purpose").count() == 1
    screenshot("approval-review-diff")
    page.fill("#id_comment", "Fine")
    page.click("input[name=_approve]")
    page.wait_for_selector(".messagelist .success")

    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.status == "live" and campaign.approved().number == 2
    assert campaign.approved().spec["title"] == "Your order is late"
