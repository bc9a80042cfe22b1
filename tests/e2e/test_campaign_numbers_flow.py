"""Numbers that mean what they say: the audience as profiles → reachable → opted in, and every date
of a campaign in the campaign's own time zone, from the form to the approver's review."""

import datetime as dt

import pytest
from django.utils import timezone

from accounts.services import access_grant
from audiences.models import Segment
from campaigns.models import Campaign
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save
from tests.factories import DeviceFactory, ProfileFactory

pytestmark = pytest.mark.browser


@pytest.mark.presses("campaigns.campaign:count_audience")
def test_manager_sees_reachable_sizes_and_local_times_and_so_does_the_approver(
    login, page, live_server, manager_alice, approver_bob, pushsim_app, screenshot
):
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    pro = [ProfileFactory(attributes={"plan": "pro"}) for _ in range(4)]
    DeviceFactory(profile=pro[0], app=pushsim_app, platform="ios")
    DeviceFactory(profile=pro[1], app=pushsim_app, platform="android", push_enabled=False)
    segment = Segment.objects.create(
        name="Pro", rules={"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}
    )
    access_grant(obj=segment, to=manager_alice, by=None)
    content = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Xmas", title="Merry", body="Xmas"), by=manager_alice
    )
    day = (timezone.now() + dt.timedelta(days=30)).date().isoformat()

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Xmas morning")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_segment", str(segment.pk))
    page.select_option("#id_content", str(content.pk))
    assert not page.is_visible("#id_send_at_0")  # "send when approved" has no date
    page.select_option("#id_schedule_kind", "at")
    assert page.is_visible("#id_send_at_0") and not page.is_visible("#id_recurrence")
    assert not page.is_visible("#id_cron") and not page.is_visible("#id_ends_at_0")
    assert page.get_attribute("#id_send_at_0", "type") == "date"
    assert page.get_attribute("#id_send_at_1", "type") == "time"
    page.fill("#id_send_at_0", day)
    page.fill("#id_send_at_1", "07:10")
    page.fill("#id_time_zone", "Europe/Paris")
    page.click("input[name=_continue]")
    campaign = Campaign.objects.get(name="Xmas morning")
    page.wait_for_url(f"**/admin/campaigns/campaign/{campaign.pk}/change/**")
    # A view counts nothing: the size waits for Count now, which keeps it.
    assert "Pro: size not counted yet (Count now counts it)." in page.locator("#audience-size").inner_text()
    assert page.input_value("#id_send_at_1") == "07:10"  # shown as entered, in the campaign's zone
    page.click("#count-audience")
    page.wait_for_selector(".messagelist .success")
    first = "4 profiles → 2 reachable (iOS 1 / Android 1) → 1 opted in"
    assert f"{first} (counted under a minute ago)" in page.locator("#audience-size").inner_text()
    # The page shows the figure as counted, with its age, until someone counts again.
    DeviceFactory(profile=pro[2], app=pushsim_app, platform="ios")
    page.reload()
    assert f"{first} (counted " in page.locator("#audience-size").inner_text()
    page.click("#count-audience")
    page.wait_for_selector(".messagelist .success")
    reach = "4 profiles → 3 reachable (iOS 2 / Android 1) → 2 opted in"
    assert f"Audience counted: Pro: {reach}" in page.locator(".messagelist").inner_text()
    assert f"{reach} (counted " in page.locator("#audience-size").inner_text()
    page.click("button[value=submit]")
    page.wait_for_selector(".messagelist .success")

    login(approver_bob)
    page.goto(f"{live_server.url}/admin/accounts/approvalrequest/")
    page.click("#result_list a:has-text('Xmas morning')")
    page.wait_for_url("**/review/")
    review = page.locator("#approval-diff")
    assert "First review" in review.locator("caption").inner_text()
    assert f"Pro: {reach}" in review.locator("th:text-is('Audience') + td").inner_text()
    schedule = review.locator("th:text-is('Schedule') + td").inner_text()
    assert f"Sends once, at {day} 07:10 (Europe/Paris)." in schedule
    screenshot("approval-review-first")
    page.click("input[name=_approve]")
    page.wait_for_selector(".messagelist .success")

    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    assert f"{day} 07:10 (Europe/Paris)" in page.locator(".field-next_send").inner_text()
    screenshot("campaign-reach-and-zone")
    page.goto(f"{live_server.url}/admin/campaigns/campaign/")
    assert f"{day} 07:10 (Europe/Paris)" in page.locator("#result_list").inner_text()
