"""The home page in a browser: an Administrator's and a Manager's, with the chart's series read back."""

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from accounts.services import access_grant
from campaigns.services.lifecycle import campaign_create, campaign_request_changes, campaign_submit
from delivery.models import Delivery
from tests.factories import AppFactory, PushContentFactory, SegmentFactory
from tests.test_home import make_sends

pytestmark = pytest.mark.browser

SERIES = "() => Object.fromEntries(document.getElementById('pd-sends-chart').chart.data.datasets.map(d => [d.label, d.data.reduce((a, b) => a + b, 0)]))"


@pytest.fixture
def sends(manager_alice, approver_bob):
    shop, bank = AppFactory(name="Shop"), AppFactory(name="Bank")
    for user in (manager_alice, approver_bob):
        access_grant(obj=shop, to=user, by=None)
    now = timezone.now()
    for hours, accepted in ((20, 30), (9, 55), (2, 80)):
        make_sends(
            shop,
            [("accepted", "", "ios")] * accepted
            + [("failed", "BadDeviceToken", "android")] * 3
            + [("skipped", "frequency_cap", "ios")] * 5,
            finished_at=now - dt.timedelta(hours=hours),
            label=f"Shop run {hours}h ago",
            opened=accepted // 4,
        )
    make_sends(bank, [("accepted", "", "ios")] * 40, finished_at=now - dt.timedelta(minutes=20), label="Bank run")
    make_sends(
        bank,
        [("accepted", "", "android")] * 6 + [("failed", "credentials: UNAUTHENTICATED", "android")] * 2,
        finished_at=now - dt.timedelta(minutes=5),
        label="Bank live run",
        status="sending",
    )
    content = PushContentFactory(app=shop)
    segment = SegmentFactory(name="Everyone", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    campaign = campaign_create(
        by=manager_alice, name="Spring sale", app=shop, segment=segment, content=content, kind="scheduled"
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    autumn = campaign_create(
        by=manager_alice, name="Autumn sale", app=shop, segment=segment, content=content, kind="scheduled"
    )
    request = campaign_submit(campaign_id=autumn.pk, by=manager_alice)
    campaign_request_changes(
        campaign_id=autumn.pk, by=approver_bob, comment="Use the <autumn> palette.", request_id=request.pk
    )
    return shop, bank


def test_administrator_home_shows_operations_and_every_app(login, page, live_server, admin_erin, sends, screenshot):
    login(admin_erin)
    page.wait_for_function("() => document.getElementById('pd-sends-chart').chart !== undefined")
    totals = page.evaluate(SERIES)
    assert totals == {"targeted": 237, "accepted": 211, "failed": 11, "unknown": 0, "skipped": 15, "opened": 40}
    labels = page.evaluate("() => document.getElementById('pd-sends-chart').chart.data.labels")
    assert len(labels) == 25  # the 24 full hours before this one, and this one so far
    health = page.locator(".pd-health-row").all_inner_texts()
    assert any(row.startswith("Bank\tAndroid\t6\t2\t25.0%") and "credentials refused" in row for row in health)
    assert page.locator("#pd-queue-depth").inner_text() == "0"
    assert page.locator("#pd-dispatches .pd-item").all_inner_texts()[0].startswith("Bank live run")
    assert "Spring sale" in page.locator(".pd-section", has_text="Waiting for my approval").inner_text()
    screenshot("home")
    page.click("#pd-dispatches a:text('Bank live run')")
    page.wait_for_url("**/admin/delivery/dispatch/*/change/")
    assert "Bank live run" in page.locator("#content").inner_text()


def test_manager_home_shows_their_apps_and_leads_to_their_pages(
    login, page, live_server, manager_alice, sends, screenshot
):
    login(manager_alice)
    page.wait_for_function("() => document.getElementById('pd-sends-chart').chart !== undefined")
    totals = page.evaluate(SERIES)
    assert totals == {
        "targeted": 189,
        "accepted": 165,
        "failed": 9,
        "unknown": 0,
        "skipped": 15,
        "opened": 40,
    }  # Shop only
    assert page.locator("#pd-health").count() == 0 and page.locator("#pd-queue").count() == 0
    assert "Bank" not in page.locator("#pd-home").inner_text()
    assert page.locator("[data-skip-reason=frequency_cap]").inner_text() == (
        "the profile had its share of pushes (frequency cap) frequency_cap 15"
    )
    back = page.locator(".pd-section", has_text="Sent back to me")
    screenshot("home-manager")
    assert "Autumn sale sent back by approver_bob on " in back.locator(".pd-item").inner_text()
    assert back.locator(".pd-comment").inner_text() == "Use the <autumn> palette."
    back.locator("a", has_text="All").click()
    page.wait_for_url("**/admin/accounts/approvalrequest/?show=sent_back")
    assert page.locator("#result_list tbody tr").all_inner_texts()[0].startswith("Autumn sale")
    page.goto(f"{live_server.url}/admin/")
    mine = page.locator(".pd-section", has_text="My requests awaiting others")
    mine.locator("a", has_text="Spring sale").click()
    page.wait_for_url("**/admin/accounts/approvalrequest/*/change/")
    assert "Spring sale" in page.locator("#content").inner_text()
    page.goto(f"{live_server.url}/admin/")  # by its address: a click during a history navigation can be lost
    page.click("#pd-all-models")
    page.wait_for_url("**/admin/models/")
    assert page.locator("#content-main .app-campaigns").count() == 1


@pytest.mark.browser_context_args(timezone_id="America/New_York")
def test_the_sends_chart_reads_in_the_viewers_zone_and_names_it(login, page, live_server, manager_alice, sends):
    """A marketer in New York read the chart's hours in UTC, unnamed on the bars: a send of 21:30 in
    New York stood at 02:00, the next day. The bars are labelled in the browser's zone, the day
    named where it changes, and the heading and the axis say which zone."""
    login(manager_alice)
    page.wait_for_function("() => document.getElementById('pd-sends-chart').chart !== undefined")
    chart = page.evaluate(
        "() => { const c = document.getElementById('pd-sends-chart').chart;"
        " return {labels: c.data.labels, accepted: c.data.datasets.find(d => d.label === 'accepted').data,"
        " axis: c.options.scales.x.title.text,"
        " hours: JSON.parse(document.getElementById('pd-sends-data').textContent).hours}; }"
    )
    new_york = ZoneInfo("America/New_York")
    # The window's hours as the page drew them (the hour it was drawn in ends it), read in New York.
    hours = [dt.datetime.fromisoformat(hour).astimezone(new_york) for hour in chart["hours"]]
    assert len(hours) == 25 and hours[-1] <= timezone.now() < hours[-1] + dt.timedelta(hours=1, minutes=5)
    # Each bar reads its New York hour; the first and each one starting a new day name the day too.
    expected = [
        [f"{h:%H:%M}", f"{h:%a} {h.day} {h:%b}"] if i == 0 or h.date() != hours[i - 1].date() else f"{h:%H:%M}"
        for i, h in enumerate(hours)
    ]
    assert chart["labels"] == expected
    finished = Delivery.objects.filter(dispatch__label="Shop run 2h ago").values_list("finished_at", flat=True)[0]
    at = max(i for i, hour in enumerate(hours) if hour <= finished)
    assert chart["accepted"][at] == 80
    assert "America/New_York" in chart["axis"]
    heading = page.locator("#pd-sends h2").inner_text()
    assert heading.startswith(f"Sends, last 24 hours ({hours[0]:%Y-%m-%d %H:%M} – now, ")
    assert heading.endswith("; times in America/New_York, your browser's time zone)")
