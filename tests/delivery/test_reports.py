"""The report charts' figures: summed from a set of dispatches' rollup."""

import datetime as dt
import zoneinfo

import pytest

from delivery.models import Delivery
from delivery.reports import report_charts, step_series
from delivery.services.opens import delivery_open_report
from delivery.services.rollups import rollup_rebuild
from tests.delivery.reporting import T0, sent_dispatch
from tests.factories import AppFactory, DeviceFactory

pytestmark = pytest.mark.django_db


def test_figures_of_a_send_per_platform_funnel_and_reason(django_assert_max_num_queries):
    dispatch = sent_dispatch(AppFactory())
    with django_assert_max_num_queries(5):
        charts = report_charts(dispatch_ids=[dispatch.pk], tz=dt.UTC)
    assert charts["funnel"] == {"labels": ["targeted", "reachable", "accepted", "opened"], "values": [7, 5, 3, 2]}
    assert charts["platforms"] == {
        "labels": ["ios", "android", "none"],
        "series": {
            "targeted": [3, 3, 1],
            "accepted": [2, 1, 0],
            "failed": [0, 1, 0],
            "skipped": [1, 1, 1],
            "opened": [1, 1, 0],
        },
    }
    assert charts["reasons"] == [
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
