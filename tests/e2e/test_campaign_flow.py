"""The whole campaign flow in a real browser: build, preview, test-send, submit, approve, watch it arrive."""

import pytest

from accounts.services import access_grant
from audiences.models import Segment
from campaigns.models import Campaign
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from tests.factories import DeviceFactory, ProfileFactory

pytestmark = pytest.mark.browser


def test_manager_builds_and_approver_approves_a_campaign(
    login, page, live_server, manager_alice, approver_bob, pushsim, pushsim_app, screenshot
):
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    zoe = ProfileFactory(external_id="zoe", attributes={"first_name": "Zoé", "plan": "pro"})
    tester = ProfileFactory(external_id="qa", attributes={"plan": "free"})
    zoe_ios = DeviceFactory(profile=zoe, app=pushsim_app, platform="ios")
    zoe_android = DeviceFactory(profile=zoe, app=pushsim_app, platform="android")
    test_phone = DeviceFactory(profile=tester, app=pushsim_app, platform="ios", is_test=True)
    segment = Segment.objects.create(
        name="Pro users", rules={"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}
    )
    access_grant(obj=segment, to=manager_alice, by=None)
    content = pushcontent_save(
        content=PushContent(
            app=pushsim_app,
            name="Spring",
            title="Hi {{ profile.attributes.first_name | default: 'there' }}",
            body="Spring sale: -20%",
        ),
        by=manager_alice,
    )

    # The manager builds the campaign.
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Spring sale")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_kind", "scheduled")
    page.select_option("#id_segment", str(segment.pk))
    page.select_option("#id_content", str(content.pk))
    page.select_option("#id_schedule_kind", "now")
    page.click("input[name=_continue]")
    campaign = Campaign.objects.get(name="Spring sale")
    page.wait_for_url(f"**/admin/campaigns/campaign/{campaign.pk}/change/**")
    screenshot("campaign-draft")

    # Test send: asked first, naming how many phones it reaches; only the app's test phone gets it,
    # before any approval.
    page.click("button[value=test_send]")
    assert "It reaches 1 phone" in page.inner_text("#lifecycle-consequences")
    page.click("#lifecycle-confirm")
    page.wait_for_selector(".messagelist .success")
    assert pushsim.state.count(test_phone.token) == 1
    assert pushsim.state.count(zoe_ios.token) == 0

    page.click("button[value=submit]")
    page.wait_for_selector(".messagelist .success")
    assert Campaign.objects.get(pk=campaign.pk).status == "in_review"

    # The approver approves from the inbox, seeing the phones side by side.
    login(approver_bob)
    page.goto(f"{live_server.url}/admin/accounts/approvalrequest/")
    screenshot("approval-inbox")
    page.click("#result_list a:has-text('Spring sale')")
    page.wait_for_url("**/review/")
    assert page.locator("#approval-review .phone-ios").count() == 1
    screenshot("approval-review")
    page.fill("#id_comment", "Looks good")
    page.click("input[name=_approve]")
    # Sent when approved: asked first, saying to whom it sends now; nothing sent before the Yes.
    assert "sends now to the phones of about 1 profile" in page.inner_text("#send-starts")
    assert pushsim.state.count(zoe_ios.token) == 0
    screenshot("approval-confirm-send")
    page.click("input[name=_send_confirmed]")
    page.wait_for_selector(".messagelist .success")

    campaign.refresh_from_db()
    assert campaign.status in ("live", "completed")
    assert pushsim.state.count(zoe_ios.token) == 1 and pushsim.state.count(zoe_android.token) == 1

    # The simulator's page shows what the phones received.
    page.goto(pushsim.url())
    page.wait_for_selector("text=Hi Zoé")
    screenshot("push-simulator")

    # The report shows the two accepted deliveries (the test send is not counted).
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    report = page.locator("#campaign-report").inner_text()
    assert "Accepted\t2" in report or "Accepted 2" in report, report
    screenshot("campaign-report")


def test_manager_writes_content_and_previews_it_for_a_profile(
    login, page, live_server, manager_alice, pushsim_app, screenshot
):
    ProfileFactory(external_id="zoe", attributes={"first_name": "Zoé"})
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/delivery/pushcontent/add/")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.fill("#id_name", "Welcome back")
    page.fill("#id_title", "Hi {{ profile.attributes.first_name | default: 'there' }}")
    page.fill("#id_body", "We kept your cart warm.")
    page.fill("#id_image_url", "javascript:alert(1)")
    page.click("input[name=_continue]")
    page.wait_for_selector(".errorlist")
    assert (
        "image_url" in page.locator(".errornote, .errorlist").first.inner_text()
        or page.locator(".field-image_url .errorlist").count()
    )
    page.fill("#id_image_url", "")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    assert "Hi there" in page.locator(".field-previews").inner_text()
    page.fill("#preview-profile", "zoe")
    page.click(".field-previews button:has-text('Show')")
    page.wait_for_selector(".field-previews:has-text('Hi Zoé')")
    screenshot("content-previews")
    assert PushContent.objects.get(name="Welcome back").title.startswith("Hi {{")
