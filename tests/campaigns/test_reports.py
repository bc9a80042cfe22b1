"""The campaign report over many sends (an hourly campaign runs 8,760 a year, an API-triggered one a
stream a day): its figures are summed over the campaign's dispatches by the database, not over a
list of their ids read first; its page reads as many queries for thirty sends as for three and
names none but the latest; the CSV and the API still list every send."""

import datetime as dt

import pytest
from django.utils import timezone

from campaigns.models import Campaign
from campaigns.reports import campaign_report
from campaigns.services.conversions import campaign_conversion_set
from campaigns.services.lifecycle import campaign_submit
from delivery.models import Delivery, Dispatch
from delivery.services.rollups import rollup_rebuild
from operations.services import retention_apply
from tests.factories import DeviceFactory, EventFactory, ProfileFactory

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def _variants(a: str, share: int) -> list[dict]:
    return [
        {"number": 1, "label": "A", "content_id": None, "content": a, "share": share, "spec": {"title": a}},
        {"number": 2, "label": "B", "content_id": None, "content": "Sale B", "share": share, "spec": {"title": "B"}},
    ]


def _send(campaign, profiles, *, kind, at, rows, status="done", variants=(), holdout=0, label="") -> Dispatch:
    """A dispatch of ``rows``: (profile index, variant, status, reason, opened), counted in its rollup."""
    dispatch = Dispatch.objects.create(
        app=campaign.app,
        kind=kind,
        source_id=campaign.pk,
        label=label,
        content_spec={"title": "Hi"},
        variants=list(variants),
        holdout_share=holdout,
        status=status,
        total=len(rows),
        created_at=at,
        finished_at=at + HOUR if status == "done" else None,
    )
    for index, variant, row_status, reason, opened in rows:
        profile = profiles[index]
        Delivery.objects.create(
            dispatch=dispatch,
            device=profile.devices.first() if profile.devices.exists() else None,
            profile=profile,
            variant=variant,
            status=row_status,
            reason=reason,
            queued_at=at if row_status == "queued" else None,
            finished_at=None if row_status == "queued" else at + dt.timedelta(minutes=10),
            opened_at=at + dt.timedelta(minutes=30) if opened else None,
        )
    counts = {s: sum(1 for r in rows if r[2] == s) for s in ("accepted", "failed", "skipped")}
    Dispatch.objects.filter(pk=dispatch.pk).update(**counts, opened=sum(1 for r in rows if r[4]))
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    return dispatch


@pytest.fixture
def several_sends(make_campaign, manager_alice, team):
    """A campaign with a conversion goal and four sends of its own: two runs and a day's stream of
    variants A and B with a holdout (A's content changed after the first), the first's rows deleted
    by retention, and a run still sending; beside them, a test send and a journey step's batch under
    the same source id, which its report does not count."""
    campaign = make_campaign(name="Hourly")
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="purchase")
    profiles = ProfileFactory.create_batch(9)
    for index, profile in enumerate(profiles[:8]):  # by position: ids' parity depends on the tests run before
        DeviceFactory(profile=profile, app=team, platform="android" if index % 2 else "ios")
    first = _send(
        campaign,
        profiles,
        kind="campaign",
        at=T0,
        label="First run",
        variants=_variants("Sale A", 45),
        holdout=10,
        rows=[
            (0, 1, "accepted", "", True),
            (1, 1, "accepted", "", False),
            (2, 2, "accepted", "", True),
            (3, 2, "failed", "Unregistered", False),
            (4, 0, "skipped", "holdout", False),
            (5, 1, "skipped", "frequency_cap", False),
            (8, 2, "skipped", "no_device", False),
        ],
    )
    _send(
        campaign,
        profiles,
        kind="api_trigger",
        at=T0 + DAY,
        label="Stream",
        variants=_variants("Sale A (new)", 40),
        holdout=20,
        rows=[(0, 1, "accepted", "", False), (6, 2, "accepted", "", True), (7, 0, "skipped", "holdout", False)],
    )
    _send(
        campaign,
        profiles,
        kind="campaign",
        at=T0 + 2 * DAY,
        label="Second run",
        variants=_variants("Sale A (new)", 40),
        holdout=20,
        rows=[(1, 1, "accepted", "", True), (2, 2, "unknown", "", False), (3, 2, "accepted", "", False)],
    )
    _send(
        campaign,
        profiles,
        kind="campaign",
        at=T0 + 3 * DAY,
        status="sending",
        label="Third run",
        variants=_variants("Sale A (new)", 40),
        holdout=20,
        rows=[(5, 1, "queued", "", False), (6, 2, "accepted", "", False)],
    )
    for kind in ("test", "journey"):  # not the campaign's sends
        _send(campaign, profiles, kind=kind, at=T0, variants=_variants("Other", 50), rows=[(0, 1, "accepted", "", 1)])
    for index, hours in ((0, 2), (2, 3), (4, 5), (6, 26)):
        EventFactory(profile=profiles[index], name="purchase", occurred_at=T0 + hours * HOUR)
    Dispatch.objects.exclude(pk=first.pk).filter(finished_at__isnull=False).update(finished_at=T0 + 200 * DAY)
    assert retention_apply(now=T0 + 190 * DAY, delivery_days=180)["deliveries"] == 7
    return Campaign.objects.get(pk=campaign.pk), first


FIGURES = {
    "targeted": 15,
    "accepted": 8,
    "failed": 1,
    "skipped": 4,
    "unknown": 1,
    "pending": 1,
    "opened": 4,
    "open_rate": 0.5,
    "failed_by_reason": {"Unregistered": 1},
    "skipped_by_reason": {"holdout": 2, "frequency_cap": 1, "no_device": 1},
    "variants": [
        {"variant": "A", "content": "Sale A (new)", "content_id": None, "share": 40, "profiles": 3, "sent": 4}
        | {"accepted": 4, "opened": 2, "open_rate": 0.5},
        {"variant": "B", "content": "Sale B", "content_id": None, "share": 40, "profiles": 4, "sent": 6}
        | {"accepted": 4, "opened": 2, "open_rate": 0.5},
    ],
    "holdout": {"profiles": 2},
    "conversions": {
        "goal": {"event": "purchase", "where": [], "window_hours": 24, "anchor": "accepted"},
        "overall": {"reached": 5, "conversions": 3, "conversion_rate": 0.6, "rate_low": 0.2307, "rate_high": 0.8824},
        "variants": [
            {"variant": "A", "reached": 2, "conversions": 1, "conversion_rate": 0.5, "rate_low": 0.0945}
            | {"rate_high": 0.9055, "uplift": 0.0, "difference": 0.0, "difference_low": -0.5734}
            | {"difference_high": 0.5734},
            {"variant": "B", "reached": 3, "conversions": 2, "conversion_rate": 0.6667, "rate_low": 0.2077}
            | {"rate_high": 0.9385, "uplift": 0.3333, "difference": 0.1667, "difference_low": -0.4458}
            | {"difference_high": 0.6548},
        ],
        "holdout": {"reached": 2, "conversions": 1, "conversion_rate": 0.5, "rate_low": 0.0945, "rate_high": 0.9055},
    },
}
# What each send made, the newest first: (label, status, targeted, accepted, opened).
SENDS = [
    ("Third run", "sending", 2, 1, 0),
    ("Second run", "done", 3, 2, 1),
    ("Stream", "done", 3, 2, 1),
    ("First run", "done", 7, 3, 2),
]
CHARTS = {
    "timeline": {
        "unit": "day",
        "labels": ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05"],
        "accepted": [3, 2, 2, 1],
        "opened": [2, 1, 1, 0],
    },
    "platforms": {
        "labels": ["iOS", "Android", "no phone"],
        "series": {
            "targeted": [7, 7, 1],
            "accepted": [5, 3, 0],
            "failed": [0, 1, 0],
            "skipped": [1, 2, 1],
            "opened": [3, 1, 0],
        },
    },
    "funnel": {"labels": ["targeted", "opted in", "accepted", "opened"], "values": [15, 14, 8, 4]},
    "reasons": [  # each with its label, as the admin shows it beside the code, and its bar in words
        {
            "outcome": "skipped",
            "reason": "holdout",
            "label": "in the holdout, kept from the send to measure it",
            "bar": "skipped: in the holdout, kept from the send to measure it",
            "count": 2,
        },
        {
            "outcome": "failed",
            "reason": "Unregistered",
            "label": "the app was uninstalled or the token is no longer valid (APNs)",
            "bar": "failed: the app was uninstalled or the token is no longer valid (APNs)",
            "count": 1,
        },
        {
            "outcome": "skipped",
            "reason": "frequency_cap",
            "label": "the profile had its share of pushes (frequency cap)",
            "bar": "skipped: the profile had its share of pushes (frequency cap)",
            "count": 1,
        },
        {
            "outcome": "skipped",
            "reason": "no_device",
            "label": "no phone registered for the app",
            "bar": "skipped: no phone registered for the app",
            "count": 1,
        },
    ],
    "time_zone": "UTC",
}


@pytest.mark.embedded  # the statements run on SQLite too
def test_the_report_sums_the_campaigns_sends_and_no_other_as_when_it_listed_them_first(
    several_sends, client, viewer_carol, manager_alice, api_key_for
):
    """The figures are those the report gave when it read every send into a list and summed their
    rollup by id (taken from it before it joined them): every field, the CSV line for line, the API."""
    from campaigns.reports import campaign_charts, campaign_report_sends

    campaign, first = several_sends
    report = campaign_report(campaign)
    assert report == FIGURES | {"rows_deleted": {"sends": 1, "last_finished_at": first.finished_at}}
    assert campaign_charts(campaign) == CHARTS
    lines = list(campaign_report_sends(campaign))
    assert [(d["label"], d["status"], d["targeted"], d["accepted"], d["opened"]) for d in lines] == SENDS
    assert lines[-1] == {
        "id": first.pk,
        "label": "First run",
        "status": "done",
        "created_at": T0,
        "finished_at": T0 + HOUR,
        "targeted": 7,
        "accepted": 3,
        "opened": 2,
    }

    client.force_login(viewer_carol)
    exported = client.get(f"/admin/campaigns/campaign/{campaign.pk}/report.csv").content.decode()
    ids = [d["id"] for d in lines]
    assert exported == (
        "campaign,targeted,accepted,failed,skipped,unknown,pending,opened,open_rate\r\nHourly,15,8,1,4,1,1,4,0.5\r\n"
        "\r\noutcome,reason,count\r\nfailed,Unregistered,1\r\nskipped,holdout,2\r\nskipped,frequency_cap,1\r\n"
        "skipped,no_device,1\r\n\r\nvariant,content,share,profiles,sent,accepted,opened,open_rate\r\n"
        "A,Sale A (new),40,3,4,4,2,0.5\r\nB,Sale B,40,4,6,4,2,0.5\r\nholdout,,,2,0,0,0,\r\n\r\n"
        "conversion_event,window_hours,anchor,conditions\r\npurchase,24,accepted,0\r\n"
        "group,reached,conversions,conversion_rate,rate_low,rate_high,uplift,difference,difference_low,"
        "difference_high\r\nall,5,3,0.6,0.2307,0.8824,,,,\r\nA,2,1,0.5,0.0945,0.9055,0.0,0.0,-0.5734,0.5734\r\n"
        "B,3,2,0.6667,0.2077,0.9385,0.3333,0.1667,-0.4458,0.6548\r\nholdout,2,1,0.5,0.0945,0.9055,,,,\r\n\r\n"
        "dispatch,label,status,created_at,targeted,accepted,opened\r\n"
        f"{ids[0]},Third run,sending,2026-03-05T10:00:00+00:00,2,1,0\r\n"
        f"{ids[1]},Second run,done,2026-03-04T10:00:00+00:00,3,2,1\r\n"
        f"{ids[2]},Stream,done,2026-03-03T10:00:00+00:00,3,2,1\r\n"
        f"{ids[3]},First run,done,2026-03-02T10:00:00+00:00,7,3,2\r\n"
    )
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert "<tr><th>Targeted</th><td>15</td></tr>" in page and "<tr><th>Still sending</th><td>1</td></tr>" in page

    api = api_key_for(manager_alice).get(f"/api/v1/campaigns/{campaign.pk}/report/").json()
    assert api["targeted"] == 15 and api["variants"][0]["content"] == "Sale A (new)"
    assert [(d["label"], d["status"], d["targeted"], d["accepted"], d["opened"]) for d in api["dispatches"]] == SENDS
    assert api["dispatches"][0] == {
        "id": ids[0],
        "label": "Third run",
        "status": "sending",
        "created_at": "2026-03-05T10:00:00Z",
        "finished_at": None,
        "targeted": 2,
        "accepted": 1,
        "opened": 0,
    }


def _hourly_sends(campaign, *, count: int, first_hour: int) -> list[int]:
    """``count`` finished hourly runs of the campaign, each with its rollup: 4 targeted, 3 accepted
    and 1 opened."""
    from delivery.models import DeliveryRollup

    sends = Dispatch.objects.bulk_create(
        Dispatch(
            app=campaign.app,
            kind="campaign",
            source_id=campaign.pk,
            content_spec={"title": "Hi"},
            status="done",
            total=4,
            accepted=3,
            skipped=1,
            opened=1,
            created_at=T0 + (first_hour + i) * HOUR,
            finished_at=T0 + (first_hour + i) * HOUR + dt.timedelta(minutes=5),
        )
        for i in range(count)
    )
    DeliveryRollup.objects.bulk_create(
        DeliveryRollup(dispatch=send, period=send.created_at, platform="ios", outcome=outcome, reason=reason, rows=n)
        for send in sends
        for outcome, reason, n in (("targeted", "", 4), ("accepted", "", 3), ("skipped", "no_device", 1))
        + (("opened", "", 1),)
    )
    return [send.pk for send in sends]


def test_the_campaign_page_reads_as_much_for_thirty_sends_as_for_three(
    make_campaign, client, viewer_carol, django_assert_max_num_queries
):
    """An hourly campaign makes 8,760 sends a year: its page sums them in the database and lists the
    latest 10 (the rest are a link away), so it runs the same queries whatever their number, and
    names none of the older sends in them."""
    import re

    from django.core.cache import cache
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from campaigns.admin import LATEST_SENDS

    campaign = make_campaign(name="Hourly")
    client.force_login(viewer_carol)
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"

    def viewed() -> tuple[str, list[str]]:
        cache.clear()  # a first view: nothing kept
        with CaptureQueriesContext(connection) as captured:
            page = client.get(url).content.decode()
        return page, [q["sql"] for q in captured.captured_queries]

    _hourly_sends(campaign, count=3, first_hour=0)
    viewed()  # what a first page of the process reads once (the content types)
    page, few = viewed()
    assert "<tr><th>Targeted</th><td>12</td></tr>" in page

    older = _hourly_sends(campaign, count=27, first_hour=3)[:-LATEST_SENDS]
    with django_assert_max_num_queries(len(few)):
        page, many = viewed()
    assert len(many) == len(few)
    assert "<tr><th>Targeted</th><td>120</td></tr>" in page and "<tr><th>Opened</th><td>30</td></tr>" in page
    assert "Dispatches, newest first: the latest 10 of 30" in page
    named = [
        {int(pk) for pk in listed.split(",") if pk}
        for sql in many
        for listed in re.findall(r"'\{([0-9,]*)\}'::bigint\[\]", sql)
    ]
    assert not [ids for ids in named if ids & set(older)], "a query named the older sends one by one"


def test_the_campaign_report_shows_each_reason_with_its_label_and_the_csv_its_code(several_sends, client, viewer_carol):
    campaign = Campaign.objects.get(name="Hourly")
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    report = page[page.index('<div id="campaign-report">') :]
    reasons = report[report.index('id="pd-report-reasons"') :]  # the figure's table: the report's only one
    assert (
        "<td>skipped</td><td>the profile had its share of pushes (frequency cap) <code>frequency_cap</code></td>"
        in reasons
    )
    assert (
        "<td>failed</td><td>the app was uninstalled or the token is no longer valid (APNs) <code>Unregistered</code></td>"
        in reasons
    )
    assert report.count("<th>reason</th>") == 1
    csv = client.get(f"/admin/campaigns/campaign/{campaign.pk}/report.csv").content.decode()
    assert "skipped,frequency_cap," in csv and "frequency cap)" not in csv


def _figure(page: str, name: str) -> str:
    """One figure of the report's charts, as the page wrote it."""
    figure = page[page.index(f'id="pd-report-{name}"') :]
    return figure[: figure.index("</figure>")]


def test_the_report_of_a_campaign_that_sent_nothing_says_so_without_empty_tables_or_charts(
    make_campaign, client, manager_alice
):
    """A campaign waiting for approval showed a table of reasons with its header and no row, and a
    funnel and a platforms chart drawn empty (axes 0 to 1, no bar) beside the timeline's "Nothing
    accepted yet.": the two figures say in words that nothing was targeted, and no table is headed
    over nothing."""
    send_at = timezone.now() + 3 * DAY
    campaign = make_campaign(schedule_kind="at", send_at=send_at, time_zone="Europe/Paris")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    report = page[page.index('<div id="campaign-report">') :]
    report = report[: report.index("Export as CSV")]
    assert "<th>reason</th>" not in report and "<th>Targeted</th><td>0</td>" in report
    for name in ("funnel", "platforms"):
        figure = _figure(report, name)
        assert "<p>Nothing targeted yet.</p>" in figure, figure
        assert "<canvas" not in figure and "As a table" not in figure
    assert "<p>Nothing accepted yet.</p>" in _figure(report, "timeline")
    assert "<p>No failure and no skip.</p>" in _figure(report, "reasons")


def test_the_report_of_a_campaign_that_sent_draws_its_funnel_and_platforms(several_sends, client, viewer_carol):
    campaign, _ = several_sends
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    funnel, platforms = _figure(page, "funnel"), _figure(page, "platforms")
    assert '<canvas id="pd-chart-funnel"' in funnel and "<tr><td>targeted</td><td>15</td></tr>" in funnel
    assert '<canvas id="pd-chart-platforms"' in platforms and "<tr><td>iOS</td>" in platforms
    assert "Nothing targeted yet." not in page


def test_a_variant_counts_as_sent_only_the_rows_handed_to_a_provider(make_campaign, team):
    """A's four rows: one accepted, one failed by the provider (Unregistered), and two failed by the
    pipeline before any request went (a message that could not be personalised, a phone deleted):
    A sent two, failed three."""
    campaign = make_campaign(name="Personalised")
    profiles = ProfileFactory.create_batch(4)
    for profile in profiles:
        DeviceFactory(profile=profile, app=team, platform="ios")
    _send(
        campaign,
        profiles,
        kind="campaign",
        at=T0,
        variants=_variants("Sale A", 50),
        rows=[
            (0, 1, "accepted", "", False),
            (1, 1, "failed", "Unregistered", False),
            (2, 1, "failed", "render_error: unknown variable 'first_name'", False),
            (3, 1, "failed", "device_deleted", False),
        ],
    )
    report = campaign_report(Campaign.objects.get(pk=campaign.pk))
    assert report["failed"] == 3
    assert [(v["variant"], v["sent"], v["accepted"]) for v in report["variants"]] == [("A", 2, 1)]
