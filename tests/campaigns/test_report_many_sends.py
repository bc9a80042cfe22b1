"""A report over many sends (an API-triggered campaign's daily streams, a journey's batches) counts
its profiles per variant without counting every row again each time a send settles: the figure kept
over the sends settled before grows by the new send's profiles that they did not reach. The figures
stay those of a recount: sends reaching the same profiles, a send still under way, retention keeping
a send's profiles before its rows go, a send cleared before anyone looked."""

import datetime as dt

import pytest

from campaigns.models import Campaign
from campaigns.reports import VARIANT_PROFILES, campaign_report
from delivery.models import Delivery, Dispatch, KeptProfile
from delivery.services.rollups import rollup_rebuild
from operations.services import retention_apply
from tests.factories import ProfileFactory

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]  # the statements run on SQLite too

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


@pytest.fixture
def daily(make_campaign):
    """An API-triggered campaign, eight profiles, and a maker of its daily sends: ``send(day,
    {profile index: variant})`` (variant 0: the holdout), settled unless told."""
    campaign = make_campaign(kind="api_triggered", segment=None)
    profiles = ProfileFactory.create_batch(8)

    def send(day: int, reached: dict[int, int], *, status: str = "done") -> Dispatch:
        at = T0 + day * DAY
        dispatch = Dispatch.objects.create(
            app=campaign.app,
            kind=Dispatch.Kind.API_TRIGGER,
            source_id=campaign.pk,
            content_spec=campaign.content.spec(),
            standing=True,
            status=status,
            total=len(reached),
            created_at=at,
            finished_at=at + dt.timedelta(hours=23) if status == "done" else None,
        )
        Delivery.objects.bulk_create(
            Delivery(
                dispatch=dispatch,
                profile=profiles[index],
                variant=variant,
                status="skipped" if variant == 0 else "accepted",
                reason="holdout" if variant == 0 else "",
                queued_at=at,
                finished_at=at + dt.timedelta(hours=1),
            )
            for index, variant in reached.items()
        )
        Dispatch.objects.filter(pk=dispatch.pk).update(
            accepted=sum(1 for v in reached.values() if v), skipped=sum(1 for v in reached.values() if v == 0)
        )
        rollup_rebuild(dispatch_ids=[dispatch.pk])
        return dispatch

    def figures() -> dict:
        report = campaign_report(Campaign.objects.get(pk=campaign.pk))
        return {v["variant"]: v["profiles"] for v in report["variants"]} | {"holdout": report["holdout"]["profiles"]}

    def recount() -> dict:
        """Row by row in Python: each (variant, profile) of the campaign's rows and kept profiles once."""
        pairs = set(
            Delivery.objects.filter(dispatch__source_id=campaign.pk, variant__isnull=False).values_list(
                "variant", "profile_id"
            )
        )
        pairs |= {
            (int(grp), profile)
            for grp, profile in KeptProfile.objects.filter(
                figure__scope=f"campaign:{campaign.pk}", figure__name=VARIANT_PROFILES
            ).values_list("figure__grp", "profile_id")
        }
        counts = {"A": 0, "B": 0, "holdout": 0}
        for variant, _ in pairs:
            counts[{0: "holdout", 1: "A", 2: "B"}[variant]] += 1
        return counts

    return campaign, send, figures, recount


def test_a_new_send_adds_the_profiles_the_settled_ones_did_not_reach_without_counting_them_again(daily):
    campaign, send, figures, recount = daily
    first = send(0, {0: 1, 1: 1, 2: 2, 3: 0})
    send(1, {0: 1, 2: 2, 4: 2})  # two profiles again, in the same variants
    assert figures() == recount() == {"A": 2, "B": 2, "holdout": 1}

    # The settled sends' rows no longer change: rows that went behind the report's back (as if they
    # had) show that a new send's figure grows from the one kept, not from every row counted again.
    Delivery.objects.filter(dispatch=first).delete()
    assert recount() == {"A": 1, "B": 2, "holdout": 0}
    send(2, {5: 1, 6: 0, 4: 2})  # 4 was reached before, in B
    assert figures() == {"A": 3, "B": 2, "holdout": 2}, "grown by 5 (A) and 6 (the holdout) only"
    assert recount() == {"A": 2, "B": 2, "holdout": 1}, "what counting every row again would say"

    # A send under way adds what no settled one reached, as before.
    under_way = send(3, {7: 2, 5: 1}, status="sending")
    assert figures() == {"A": 3, "B": 3, "holdout": 2}
    Dispatch.objects.filter(pk=under_way.pk).update(status="done")
    assert figures() == {"A": 3, "B": 3, "holdout": 2}, "it settled: grown by its own new profile once"


def test_retention_and_new_sends_keep_the_figures_a_recount_gives(daily, settings):
    campaign, send, figures, recount = daily
    days = [send(0, {0: 1, 1: 2, 2: 0}), send(1, {0: 1, 3: 2}), send(2, {1: 2, 4: 1})]
    assert figures() == recount() == {"A": 2, "B": 2, "holdout": 1}

    # Retention keeps the first send's profiles and deletes its rows: the figure stays, counted
    # over the rows left and the kept profiles; then a new send grows it.
    cut = T0 + 180 * DAY
    assert retention_apply(now=cut + dt.timedelta(hours=23, minutes=30), delivery_days=180)["deliveries"] == 3
    assert not Delivery.objects.filter(dispatch=days[0]).exists()
    assert figures() == recount() == {"A": 2, "B": 2, "holdout": 1}
    send(3, {2: 1, 5: 1})  # 2 was in the holdout, not in A
    assert figures() == recount() == {"A": 4, "B": 2, "holdout": 1}

    # The next day's retention moves the second send's pairs to the kept ones: nothing changes.
    assert retention_apply(now=cut + DAY + dt.timedelta(hours=23, minutes=30), delivery_days=180)["deliveries"] == 2
    assert figures() == recount() == {"A": 4, "B": 2, "holdout": 1}

    # A send that settled and was cleared before anyone looked: its profiles are among the kept
    # ones only, and the figure counts them.
    late = send(4, {6: 2, 7: 0, 0: 1})
    Dispatch.objects.filter(pk=late.pk).update(finished_at=T0 + dt.timedelta(days=2, hours=12))
    # (the third send, finished before that cut too, goes with it: 2 rows, and 3 of the late one)
    assert retention_apply(now=cut + 2 * DAY + dt.timedelta(hours=23, minutes=30), delivery_days=180)["deliveries"] == 5
    assert not Delivery.objects.filter(dispatch=late).exists()
    assert figures() == recount() == {"A": 4, "B": 3, "holdout": 2}
