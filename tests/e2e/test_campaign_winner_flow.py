"""Winner mode in a real browser: a Manager builds a three-variant campaign with a 10% holdout in
winner mode, the Approver reviews and approves it, the simulator receives the sample, the beat picks
the winner when the wait is over and sends it to the rest, and the report shows per-variant opens,
conversions and uplift. And the conversion goal's form: a condition and a window, saved and reported."""

import datetime as dt

import pytest

from accounts.services import access_grant
from audiences.models import Event, Segment
from campaigns.models import Campaign, WinnerTest
from campaigns.services.scheduling import campaigns_tick
from delivery.models import Delivery
from delivery.services.opens import delivery_open_report
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = pytest.mark.browser

TITLES = {1: "Spring is here", 2: "SPRING SALE -20%", 3: "Last call"}


def test_manager_builds_a_winner_mode_campaign_and_the_winner_goes_to_the_rest(
    login, page, live_server, manager_alice, approver_bob, pushsim, pushsim_app, screenshot
):
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    phones = {}
    for n in range(120):
        profile = ProfileFactory(external_id=f"wm-{n}")
        phones[profile.pk] = DeviceFactory(profile=profile, app=pushsim_app, platform=("ios", "android")[n % 2])
    segment = Segment.objects.create(
        name="Winner cohort", rules={"all": [{"field": "external_id", "op": "starts_with", "value": "wm-"}]}
    )
    access_grant(obj=segment, to=manager_alice, by=None)
    contents = [
        PushContentFactory(app=pushsim_app, name=name, title=TITLES[n], body="Take a look")
        for n, name in ((1, "Calm"), (2, "Loud"), (3, "Urgent"))
    ]
    for content in contents:
        access_grant(obj=content, to=manager_alice, by=None)

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    page.fill("#id_name", "Spring winner")
    page.select_option("#id_app", str(pushsim_app.pk))
    page.select_option("#id_kind", "scheduled")
    page.select_option("#id_segment", str(segment.pk))
    page.select_option("#id_content", str(contents[0].pk))
    page.select_option("#id_schedule_kind", "now")
    page.fill("#id_conversion_event", "purchase")
    page.fill("#id_holdout_share", "10")
    for index, content in enumerate(contents):
        page.click("#variants-group .add-row a")
        page.select_option(f"#id_variants-{index}-content", str(content.pk))
        page.fill(f"#id_variants-{index}-share", "30")
    page.check("#id_winner_mode")
    page.fill("#id_winner_sample_share", "50")
    page.fill("#id_winner_wait_minutes", "0")
    page.select_option("#id_winner_metric", "open_rate")
    page.select_option("#id_winner_confidence", "95")
    page.select_option("#id_winner_fallback", "default_variant")
    page.click("input[name=_continue]")
    # No default variant chosen: the form names the field and keeps what was typed.
    page.wait_for_selector(".field-winner_fallback_variant .errorlist")
    assert "Choose the default variant" in page.locator(".field-winner_fallback_variant").inner_text()
    assert not Campaign.objects.filter(name="Spring winner").exists()
    page.select_option("#id_winner_fallback_variant", "1")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    campaign = Campaign.objects.get(name="Spring winner")
    assert campaign.winner_mode and campaign.winner_settings()["sample_share"] == 50
    assert len(campaign.variant_list()) == 3 and campaign.holdout_share == 10
    assert "a sample of 50% gets the variants" in page.locator("#winner-status").inner_text()
    page.click("button[value=submit]")
    page.wait_for_selector(".messagelist .success")

    login(approver_bob)
    page.goto(f"{live_server.url}/admin/accounts/approvalrequest/")
    page.click("#result_list a:has-text('Spring winner')")
    page.wait_for_url("**/review/")
    review = page.locator("#approval-review").inner_text()
    assert "Winner mode" in review and "a sample of 50% gets the variants" in review
    assert "no winner: the default variant A" in review
    screenshot("campaign-winner-review")
    page.click("input[name=_approve]")
    page.click("input[name=_send_confirmed]")  # sent when approved: asked first
    page.wait_for_selector(".messagelist .success")

    # The approval fired the first send: the sample only.
    test = WinnerTest.objects.get(campaign=campaign)
    sample_rows = {d.profile_id: d for d in Delivery.objects.filter(dispatch_id=test.sample_dispatch_id)}
    assert 30 < len(sample_rows) < 90
    for profile_id, phone in phones.items():
        row = sample_rows.get(profile_id)
        expected = 1 if row is not None and row.variant else 0
        assert pushsim.state.count(phone.token) == expected, (profile_id, row and row.variant)
    # The app reports opens of B's pushes, and some of its readers buy.
    for row in sample_rows.values():
        if row.variant == 2:
            delivery_open_report(delivery_id=row.pk, app_id=pushsim_app.pk, by=manager_alice)
            Event.objects.create(
                profile_id=row.profile_id, name="purchase", occurred_at=row.finished_at + dt.timedelta(minutes=3)
            )

    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    assert page.locator("#winner-status").get_attribute("data-outcome") == "waiting"
    # The wait (0 minutes) is over: the beat picks the winner and sends it to the rest.
    assert campaigns_tick()["winners"] == 1
    test.refresh_from_db()
    assert (test.outcome, test.winner) == ("winner", 2), test.reason
    rest_rows = {d.profile_id: d for d in Delivery.objects.filter(dispatch_id=test.remainder_dispatch_id)}
    assert not set(rest_rows) & set(sample_rows) and set(rest_rows) | set(sample_rows) == set(phones)
    received = {}
    for r in pushsim.state.recent(limit=500):
        received.setdefault(r["token"], []).append(r["title"])
    for profile_id, row in rest_rows.items():
        token = phones[profile_id].token
        if row.variant == 0:
            assert token not in received  # the holdout stays held out
        else:
            assert (row.status, received[token]) == ("accepted", [TITLES[2]])
    assert campaigns_tick()["winners"] == 0  # once

    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    status = page.locator("#winner-status")
    assert status.get_attribute("data-outcome") == "winner"
    assert "Winner: B" in status.inner_text() and "B won at 95%" in status.inner_text()
    assert "the rest (winner B)" in status.inner_text()
    variant_report = page.locator("#variant-report")
    opened_b = variant_report.locator("tr[data-variant='B'] td").nth(5).inner_text()
    assert int(opened_b) == sum(1 for r in sample_rows.values() if r.variant == 2)
    assert variant_report.locator("tr[data-variant='A'] td").nth(5).inner_text() == "0"
    conversions = page.locator("#campaign-conversions").inner_text()
    assert "purchase" in conversions and "holdout" in conversions and "%" in conversions
    screenshot("campaign-winner-report")


def test_manager_sets_a_conversion_goal_with_a_condition_and_a_window_and_the_report_shows_it(
    login, page, live_server, manager_alice, pushsim_app
):
    from campaigns.services.lifecycle import campaign_create

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    segment = Segment.objects.create(name="Buyers", rules={"all": [{"field": "external_id", "op": "exists"}]})
    access_grant(obj=segment, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app, name="Sale", title="Sale", body="Today")
    campaign = campaign_create(
        by=manager_alice, name="Goal form", app=pushsim_app, kind="scheduled", segment=segment, content=content
    )
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/campaigns/campaign/{campaign.pk}/change/")
    page.fill("#id_conversion_event", "purchase")
    page.fill("#id_conversion_window_hours", "48")
    page.select_option("#id_conversion_anchor", "opened")
    page.fill("#id_conversion_property_1", "amount")
    page.select_option("#id_conversion_type_1", "number")
    page.select_option("#id_conversion_op_1", "gte")
    page.fill("#id_conversion_value_1", "abc")
    page.click("input[name=_continue]")
    # A number condition with a word: answered at its field, nothing saved.
    page.wait_for_selector(".errorlist")
    assert "is not a number" in page.content()
    assert not Campaign.objects.get(pk=campaign.pk).conversion_event
    page.fill("#id_conversion_value_1", "20")
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    campaign.refresh_from_db()
    assert (campaign.conversion_event, campaign.conversion_window_hours, campaign.conversion_anchor) == (
        "purchase",
        48,
        "opened",
    )
    assert campaign.conversion_where == [{"property": "amount", "type": "number", "op": "gte", "value": 20}]
    assert page.input_value("#id_conversion_value_1") == "20"
    assert page.input_value("#id_conversion_property_1") == "amount"
    report = page.locator("#campaign-conversions").inner_text()
    assert "purchase, 1 property condition within 48 h after the push was opened" in report, report
