"""The report charts' figures: summed from a set of dispatches' rollup."""

import datetime as dt
import zoneinfo

import pytest

from delivery.models import Delivery, Dispatch
from delivery.reports import conversions_html, report_charts, step_series
from delivery.services.opens import delivery_open_report
from delivery.services.rollups import rollup_rebuild
from tests.delivery.reporting import T0, sent_dispatch
from tests.factories import AppFactory, DeviceFactory

pytestmark = pytest.mark.django_db


def test_figures_of_a_send_per_platform_funnel_and_reason(django_assert_max_num_queries):
    dispatch = sent_dispatch(AppFactory())
    with django_assert_max_num_queries(5):
        charts = report_charts(dispatch_ids=[dispatch.pk], tz=dt.UTC)
    assert charts["funnel"] == {"labels": ["targeted", "opted in", "accepted", "opened"], "values": [7, 5, 3, 2]}
    assert charts["platforms"] == {
        "labels": ["iOS", "Android", "no phone"],
        "series": {
            "targeted": [3, 3, 1],
            "accepted": [2, 1, 0],
            "failed": [0, 1, 0],
            "skipped": [1, 1, 1],
            "opened": [1, 1, 0],
        },
    }
    assert [{k: r[k] for k in ("outcome", "reason", "count")} for r in charts["reasons"]] == [
        {"outcome": "failed", "reason": "Unregistered", "count": 1},
        {"outcome": "skipped", "reason": "frequency_cap", "count": 1},
        {"outcome": "skipped", "reason": "no_device", "count": 1},
        {"outcome": "skipped", "reason": "not_opted_in", "count": 1},
    ]
    assert charts["timeline"] == {
        "unit": "hour",
        "labels": ["2026-11-28 10:00", "2026-11-28 11:00", "2026-11-28 12:00"],
        "accepted": [2, 1, 0],
        "opened": [0, 1, 1],
    }


def test_the_timeline_is_in_the_time_zone_given_and_per_day_beyond_two_days():
    app = AppFactory()
    dispatch = sent_dispatch(app)
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    hourly = report_charts(dispatch_ids=[dispatch.pk], tz=paris)["timeline"]
    assert hourly["labels"] == ["2026-11-28 11:00", "2026-11-28 12:00", "2026-11-28 13:00"]

    late = DeviceFactory(app=app, platform="ios")
    Delivery.objects.create(
        dispatch=dispatch, device=late, profile=late.profile, status="accepted", finished_at=T0 + dt.timedelta(days=3)
    )
    rollup_rebuild(dispatch_ids=[dispatch.pk])  # as the send pipeline would have counted it
    daily = report_charts(dispatch_ids=[dispatch.pk], tz=paris)["timeline"]
    assert daily == {
        "unit": "day",
        "labels": ["2026-11-28", "2026-11-29", "2026-11-30", "2026-12-01"],
        "accepted": [3, 0, 0, 1],
        "opened": [2, 0, 0, 0],
    }


@pytest.mark.embedded
def test_a_long_timeline_is_summed_per_local_day_across_a_change_of_offset(django_assert_max_num_queries):
    """Past two days the buckets are local days summed in SQL: the quarter hours either side of a
    local midnight, on the night the clocks go back (Paris, 25 October 2026: 03:00 CEST is 02:00
    CET), fall in their own day; the days between with nothing are drawn empty."""
    app = AppFactory()
    dispatch = sent_dispatch(app)  # 2026-11-28, 11:15-13:15 in Paris (CET)
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    times = [
        dt.datetime(2026, 10, 24, 21, 50, tzinfo=dt.UTC),  # 23:50 CEST on the 24th
        dt.datetime(2026, 10, 24, 22, 10, tzinfo=dt.UTC),  # 00:10 CEST on the 25th
        dt.datetime(2026, 10, 25, 22, 55, tzinfo=dt.UTC),  # 23:55 CET on the 25th
        dt.datetime(2026, 10, 25, 23, 5, tzinfo=dt.UTC),  # 00:05 CET on the 26th
        dt.datetime(2026, 10, 25, 23, 20, tzinfo=dt.UTC),  # 00:20 CET on the 26th
    ]
    for when in times:
        device = DeviceFactory(app=app, platform="android")
        Delivery.objects.create(
            dispatch=dispatch, device=device, profile=device.profile, status="accepted", finished_at=when
        )
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    with django_assert_max_num_queries(2):  # the totals with their span, then the days
        timeline = report_charts(dispatch_ids=[dispatch.pk], tz=paris)["timeline"]
    assert timeline["unit"] == "day"
    assert timeline["labels"][:3] == ["2026-10-24", "2026-10-25", "2026-10-26"]
    assert timeline["labels"][-1] == "2026-11-28" and len(timeline["labels"]) == 36
    assert timeline["accepted"][:4] == [1, 2, 2, 0]
    assert timeline["accepted"][-1] == 3 and sum(timeline["accepted"]) == 8
    assert timeline["opened"][-1] == 2 and sum(timeline["opened"]) == 2


def test_figures_follow_a_new_open_at_once_from_the_rollup_in_two_queries(admin_erin, django_assert_max_num_queries):
    app = AppFactory()
    dispatch = sent_dispatch(app)
    assert report_charts(dispatch_ids=[dispatch.pk])["funnel"]["values"] == [7, 5, 3, 2]
    unopened = Delivery.objects.filter(dispatch=dispatch, status="accepted", opened_at__isnull=True).get()
    delivery_open_report(delivery_id=unopened.pk, app_id=app.pk, by=admin_erin, when=T0 + dt.timedelta(hours=1))
    with django_assert_max_num_queries(
        2
    ):  # the rollup, summed (totals, then the timeline's quarter hours): no delivery is counted
        charts = report_charts(dispatch_ids=[dispatch.pk], tz=dt.UTC)
    assert charts["funnel"]["values"] == [7, 5, 3, 3]
    assert charts["timeline"]["opened"] == [0, 2, 1]


def test_the_timeline_is_exact_in_a_time_zone_half_an_hour_off_utc():
    app = AppFactory()
    dispatch = sent_dispatch(app)
    late = DeviceFactory(app=app, platform="ios")  # 10:40 UTC is 16:10 in Kolkata, past the hour 10:00 UTC began
    Delivery.objects.create(
        dispatch=dispatch,
        device=late,
        profile=late.profile,
        status="accepted",
        finished_at=T0 + dt.timedelta(minutes=25),
    )
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    timeline = report_charts(dispatch_ids=[dispatch.pk], tz=zoneinfo.ZoneInfo("Asia/Kolkata"))["timeline"]
    assert timeline == {
        "unit": "hour",
        "labels": ["2026-11-28 15:00", "2026-11-28 16:00", "2026-11-28 17:00"],
        "accepted": [2, 2, 0],
        "opened": [0, 1, 1],
    }


def test_no_send_draws_empty_charts():
    charts = report_charts(dispatch_ids=[])
    assert charts["timeline"]["labels"] == [] and charts["funnel"]["values"] == [0, 0, 0, 0]
    assert charts["platforms"]["labels"] == [] and charts["reasons"] == []


def test_a_dispatch_that_targeted_no_one_yet_says_so_in_its_report_without_empty_charts(client, admin_erin):
    dispatch = Dispatch.objects.create(app=AppFactory(), kind="campaign", content_spec={"title": "Hi"})
    client.force_login(admin_erin)
    page = client.get(f"/admin/delivery/dispatch/{dispatch.pk}/change/").content.decode()
    assert page.count("<p>Nothing targeted yet.</p>") == 2  # the funnel and the platforms
    assert "<p>Nothing accepted yet.</p>" in page and "<p>No failure and no skip.</p>" in page
    assert "<canvas" not in page and "As a table" not in page


def test_step_series_sum_the_skips_of_each_step():
    stats = {
        "push1": {"entered": 4, "waiting": 0, "sent": 4, "accepted": 2, "skipped": {"no_device": 1, "x": 1}},
        "end": {"entered": 4, "exited": 4},
    }
    assert step_series(stats) == {
        "labels": ["push1", "end"],
        "series": {
            "entered": [4, 4],
            "waiting": [0, 0],
            "sent": [4, 0],
            "accepted": [2, 0],
            "skipped": [2, 0],
            "exited": [0, 4],
        },
    }


@pytest.mark.embedded
@pytest.mark.usefixtures("no_campaign_audience_check")
def test_the_funnels_opted_in_leaves_out_the_held_out_profiles_no_push_could_reach():
    """40 targeted: 10 with a phone that allows notifications, 5 with one that does not, 25 with
    none; two variants of 25% and a holdout of 50%. The holdout takes only the phones a push could
    reach (the others keep their own reason, as in the variants), so the funnel's opted in is
    those 10, and the conversions' holdout (``reached_rows``) holds only profiles a push could reach."""
    from delivery.conversions import reached_rows
    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_prepare
    from tests.factories import ProfileFactory, PushContentFactory, SegmentFactory, SegmentMemberFactory

    app = AppFactory()
    content = PushContentFactory(app=app)
    segment = SegmentFactory(kind="static", rules=None)
    phones = {}
    for n in range(40):
        profile = ProfileFactory()
        SegmentMemberFactory(segment=segment, profile=profile)
        if n < 15:
            phones[profile.pk] = DeviceFactory(profile=profile, app=app, platform="ios", push_enabled=n < 10)
    variants = [
        {"number": n, "label": label, "content_id": content.pk, "share": 25, "spec": content.spec()}
        for n, label in ((1, "A"), (2, "B"))
    ]
    dispatch = Dispatch.objects.create(
        app=app,
        kind=Dispatch.Kind.CAMPAIGN,
        source_id=content.pk,
        content_spec=content.spec(),
        segment_id=segment.pk,
        variants=variants,
        holdout_share=50,
        label="A/B",
    )
    dispatch_prepare(dispatch_id=dispatch.pk)

    rows = list(Delivery.objects.filter(dispatch=dispatch))
    assert len(rows) == 40
    for row in rows:
        phone = phones.get(row.profile_id)
        if phone is None:
            expected = ("skipped", "no_device")
        elif not phone.push_enabled:
            expected = ("skipped", "not_opted_in")
        else:
            expected = ("skipped", "holdout") if row.variant == 0 else ("queued", "")
        assert (row.status, row.reason) == expected, (row.variant, phone)
    held_out = {row.profile_id for row in rows if row.variant == 0}
    assert held_out - set(phones) and held_out & {pk for pk, phone in phones.items() if phone.push_enabled}

    funnel = report_charts(dispatch_ids=[dispatch.pk], tz=dt.UTC)["funnel"]
    assert funnel["values"][:2] == [40, 10]
    reached = set(reached_rows([dispatch.pk]).filter(variant=0).values_list("profile_id", flat=True))
    assert reached == {pk for pk in held_out if pk in phones and phones[pk].push_enabled}


@pytest.mark.embedded
def test_a_holdout_row_without_a_device_written_before_is_not_counted_reachable():
    """Rows a resolve wrote when the holdout took every profile: its rows without a device (the
    rollup's platform "none") are not reachable either."""
    from delivery.models import Dispatch
    from tests.factories import ProfileFactory

    app = AppFactory()
    dispatch = Dispatch.objects.create(app=app, kind="campaign", content_spec={"title": "Hi"}, status="done")
    phone, other = DeviceFactory(app=app, platform="ios"), DeviceFactory(app=app, platform="android")
    for device, status, reason, variant in (
        (None, "skipped", "holdout", 0),
        (phone, "skipped", "holdout", 0),
        (other, "accepted", "", 1),
    ):
        profile = device.profile if device else ProfileFactory()
        Delivery.objects.create(
            dispatch=dispatch,
            device=device,
            profile=profile,
            status=status,
            reason=reason,
            variant=variant,
            finished_at=T0,
        )
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    assert report_charts(dispatch_ids=[dispatch.pk], tz=dt.UTC)["funnel"]["values"] == [3, 2, 1, 0]


def test_reasons_carry_a_label_beside_their_code():
    """The admin shows what a reason means beside its code; the code stays as it is (the API, the CSV)."""
    dispatch = sent_dispatch(AppFactory())
    charts = report_charts(dispatch_ids=[dispatch.pk], tz=dt.UTC)
    assert {r["reason"]: r["label"] for r in charts["reasons"]} == {
        "Unregistered": "the app was uninstalled or the token is no longer valid (APNs)",
        "frequency_cap": "the profile had its share of pushes (frequency cap)",
        "no_device": "no phone registered for the app",
        "not_opted_in": "notifications are turned off on the phone",
    }


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("quiet_hours", "held back by the quiet hours"),
        ("expired", "its TTL ran out before it could be sent: never sent"),
        ("expired (TTL over before it could be sent)", "its TTL ran out before it could be sent: never sent"),
        ("payload_too_large (4200 bytes)", "the message is over the provider's size limit"),
        ("transport:timeout (may have been delivered)", "no answer in time: it may have been delivered"),
        ("credentials: not_configured:ios", "the app's credentials were refused or are missing"),
        ("SomethingNew", ""),
        ("", ""),
    ],
)
def test_a_reason_label_is_read_from_its_code_or_its_codes_head(code, label):
    from delivery.reasons import reason_label

    assert reason_label(code) == label


def test_the_hour_the_clocks_repeat_is_two_hours_on_the_timeline():
    """On the night the clocks go back (Paris, 25 October 2026: 03:00 CEST is 02:00 CET) the hour
    from 02:00 is lived twice: each is a bucket of its own, with what was accepted in it, and its
    label says which (the zone's abbreviation)."""
    app = AppFactory()
    dispatch = Dispatch.objects.create(app=app, kind="campaign", content_spec={"title": "Hi"}, status="done")
    times = [
        dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC),  # 02:30 CEST
        dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC),  # 02:30 CET
        dt.datetime(2026, 10, 25, 1, 40, tzinfo=dt.UTC),  # 02:40 CET
        dt.datetime(2026, 10, 25, 2, 30, tzinfo=dt.UTC),  # 03:30 CET
    ]
    for when in times:
        device = DeviceFactory(app=app, platform="ios")
        Delivery.objects.create(
            dispatch=dispatch, device=device, profile=device.profile, status="accepted", finished_at=when
        )
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    timeline = report_charts(dispatch_ids=[dispatch.pk], tz=zoneinfo.ZoneInfo("Europe/Paris"))["timeline"]
    assert timeline == {
        "unit": "hour",
        "labels": ["2026-10-25 02:00 CEST", "2026-10-25 02:00 CET", "2026-10-25 03:00"],
        "accepted": [1, 2, 1],
        "opened": [0, 0, 0],
    }


def test_a_day_whose_midnight_the_clocks_repeat_is_one_day_on_the_timeline():
    """Havana puts its clocks back at 01:00 to 00:00 (1 November 2026): a push accepted in the second
    00:00 hour, the first of the send, is of that day, as the days summed in SQL count it."""
    app = AppFactory()
    dispatch = Dispatch.objects.create(app=app, kind="campaign", content_spec={"title": "Hi"}, status="done")
    times = [
        dt.datetime(2026, 11, 1, 5, 10, tzinfo=dt.UTC),  # 00:10 CST, the second midnight hour
        dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 11, 4, 12, 0, tzinfo=dt.UTC),
    ]
    for when in times:
        device = DeviceFactory(app=app, platform="ios")
        Delivery.objects.create(
            dispatch=dispatch, device=device, profile=device.profile, status="accepted", finished_at=when
        )
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    timeline = report_charts(dispatch_ids=[dispatch.pk], tz=zoneinfo.ZoneInfo("America/Havana"))["timeline"]
    assert timeline["labels"] == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    assert timeline["accepted"] == [2, 0, 0, 1]


def test_the_conversions_goal_counts_its_property_conditions_one_in_the_singular_more_in_the_plural():
    def said(*properties):
        where = [{"property": p, "type": "number", "op": "gte", "value": 1} for p in properties]
        goal = {"event": "purchase", "where": where, "window_hours": 24, "anchor": "opened"}
        return conversions_html([], goal, table_id="conversions")

    assert "<strong>purchase</strong> within 24 h after the push was opened." in said()
    assert "<strong>purchase</strong>, 1 property condition within 24 h after the push was opened." in said("amount")
    assert "<strong>purchase</strong>, 2 property conditions within 24 h" in said("amount", "items")
