"""The report charts' figures: computed in SQL over a set of dispatches' deliveries."""

import datetime as dt
import zoneinfo

import pytest
from django.db.models import F

from delivery.models import Delivery, Dispatch
from delivery.reports import report_charts, step_series
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
    Dispatch.objects.filter(pk=dispatch.pk).update(total=F("total") + 1, accepted=F("accepted") + 1)  # as sends count
    daily = report_charts(dispatch_ids=[dispatch.pk], tz=paris)["timeline"]
    assert daily == {
        "unit": "day",
        "labels": ["2026-11-28", "2026-11-29", "2026-11-30", "2026-12-01"],
        "accepted": [3, 0, 0, 1],
        "opened": [2, 0, 0, 0],
    }


def test_figures_are_kept_until_the_dispatch_counts_a_new_outcome(django_assert_max_num_queries):
    app = AppFactory()
    dispatch = sent_dispatch(app)
    assert report_charts(dispatch_ids=[dispatch.pk])["funnel"]["values"] == [7, 5, 3, 2]
    Delivery.objects.filter(dispatch=dispatch, status="accepted", opened_at__isnull=True).update(opened_at=T0)
    with django_assert_max_num_queries(1):  # the counters only: the figures come from the cache
        assert report_charts(dispatch_ids=[dispatch.pk])["funnel"]["values"] == [7, 5, 3, 2]
    Dispatch.objects.filter(pk=dispatch.pk).update(opened=F("opened") + 1)  # the open is counted
    assert report_charts(dispatch_ids=[dispatch.pk])["funnel"]["values"] == [7, 5, 3, 3]


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
