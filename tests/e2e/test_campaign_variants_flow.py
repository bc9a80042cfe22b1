"""Variants in a real browser: a Manager adds two variants and a holdout, the Approver reviews each
variant's phones and approves, the simulator receives each variant and nothing for the holdout."""

import pytest

from accounts.services import access_grant
from audiences.models import Segment
from campaigns.models import Campaign
from delivery.models import Delivery
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = pytest.mark.browser


def test_manager_builds_a_two_variant_campaign_with_a_holdout_and_the_holdout_gets_nothing(
    login, page, live_server, manager_alice, approver_bob, pushsim, pushsim_app, screenshot
):
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    phones = [
        DeviceFactory(
            profile=ProfileFactory(external_id=f"ab-{n}"), app=pushsim_app, platform=("ios", "android")[n % 2]
        )
        for n in range(24)
    ]
    segment = Segment.objects.create(
        name="A/B cohort", rules={"all": [{"field": "external_id", "op": "starts_with", "value": "ab-"}]}
    )
    access_grant(obj=segment, to=manager_alice, by=None)
    first = PushContentFactory(app=pushsim_app, name="Calm", title="Spring is here", body="Take a look")
    second = PushContentFactory(app=pushsim_app, name="Loud", title="SPRING SALE -20%", body="Today only")
    for content in (first, second):
        access_grant(obj=content, to=manager_alice, by=None)

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Spring A/B")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_kind", "scheduled")
    page.select_option("#id_segment", str(segment.pk))
    page.select_option("#id_content", str(first.pk))
    page.select_option("#id_schedule_kind", "now")
    page.fill("#id_holdout_share", "25")
    for index, (content, share) in enumerate(((first, "40"), (second, "40"))):
        page.click("#variants-group .add-row a")
        page.select_option(f"#id_variants-{index}-content", str(content.pk))
        page.fill(f"#id_variants-{index}-share", share)
    page.click("input[name=_continue]")
    # 40 + 40 + 25: the form names the rule and keeps what was typed.
    page.wait_for_selector("#variants-group .errorlist")
    assert "add up to 105%" in page.locator("#variants-group").inner_text()
    assert not Campaign.objects.filter(name="Spring A/B").exists()
    page.fill("#id_holdout_share", "20")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    campaign = Campaign.objects.get(name="Spring A/B")
    assert [(v.content_id, v.share) for v in campaign.variant_list()] == [(first.pk, 40), (second.pk, 40)]
    assert page.locator(".variant-preview").count() == 2
    screenshot("campaign-variants")
    page.click("button[value=submit]")
    page.wait_for_selector(".messagelist .success")

    login(approver_bob)
    page.goto(f"{live_server.url}/admin/accounts/approvalrequest/")
    page.click("#result_list a:has-text('Spring A/B')")
    page.wait_for_url("**/review/")
    review = page.locator("#approval-review")
    assert review.locator(".variant-preview").count() == 2
    assert "SPRING SALE -20%" in review.inner_text() and "20% of the audience get nothing" in review.inner_text()
    page.click("input[name=_approve]")
    page.click("input[name=_send_confirmed]")  # sent when approved: asked first
    page.wait_for_selector(".messagelist .success")

    rows = {d.device_id: d for d in Delivery.objects.filter(dispatch__source_id=campaign.pk)}
    received = {r["token"]: r for r in pushsim.state.recent(limit=100)}
    for phone in phones:
        row = rows[phone.pk]
        if row.variant == 0:
            assert (row.status, row.reason) == ("skipped", "holdout")
            assert pushsim.state.count(phone.token) == 0
        else:
            assert pushsim.state.count(phone.token) == 1
            assert received[phone.token]["title"] == {1: "Spring is here", 2: "SPRING SALE -20%"}[row.variant]

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    report = page.locator("#variant-report").inner_text()
    held_out = len({r.profile_id for r in rows.values() if r.variant == 0})
    assert "Calm" in report and "Loud" in report and f"holdout\tgets nothing\t{held_out}" in report, report
    screenshot("campaign-variant-report")
