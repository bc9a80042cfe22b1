"""A campaign's report over many sends: the figures counted per profile (profiles per variant and
the holdout, conversions per variant against the holdout) are those a recount of the rows gives,
however many sends there are."""

import datetime as dt
import re

import pytest
from django.core.cache import cache

from audiences.models import Event
from campaigns.models import Campaign
from campaigns.reports import campaign_report
from campaigns.services.conversions import campaign_conversion_set
from delivery.models import Delivery, Dispatch
from delivery.services.rollups import rollup_rebuild
from tests.factories import DeviceFactory, EventFactory, ProfileFactory, UserFactory

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
WINDOW = 24 * HOUR
VARIANTS = [
    {"number": 1, "label": "A", "content_id": None, "content": "Sale A", "share": 45, "spec": {"title": "A"}},
    {"number": 2, "label": "B", "content_id": None, "content": "Sale B", "share": 45, "spec": {"title": "B"}},
]


@pytest.fixture
def sends(make_campaign, manager_alice, team):
    """A maker of a campaign with variants A and B, a holdout and a purchase goal, and ``n`` sends
    of it, a day apart, the last still sending: each send reaches four of twelve profiles (A, B,
    the holdout, and a row that failed), overlapping from one send to the next; some of them buy
    within the window, some after it."""
    profiles = ProfileFactory.create_batch(12)
    for profile in profiles:
        DeviceFactory(profile=profile, app=team)

    def make(n: int, *, name: str) -> Campaign:
        campaign = make_campaign(name=name, kind="api_triggered", segment=None)
        campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="purchase")
        for day in range(n):
            send(campaign, profiles, day=day, status="sending" if day == n - 1 else "done")
        return Campaign.objects.get(pk=campaign.pk)

    return make, profiles


def send(campaign, profiles, *, day: int, status: str = "done") -> Dispatch:
    at = T0 + day * 24 * HOUR
    dispatch = Dispatch.objects.create(
        app=campaign.app,
        kind=Dispatch.Kind.API_TRIGGER,
        source_id=campaign.pk,
        content_spec={"title": "Hi"},
        variants=VARIANTS,
        holdout_share=10,
        standing=True,
        status=status,
        total=4,
        created_at=at,
        finished_at=at + 23 * HOUR if status == "done" else None,
    )
    rows = [
        (profiles[day % 12], 1, "accepted", ""),
        (profiles[(day + 3) % 12], 2, "accepted", ""),
        (profiles[(day + 5) % 12], 0, "skipped", "holdout"),
        (profiles[(day + 7) % 12], 2, "failed", "Unregistered"),
    ]
    for profile, variant, row_status, reason in rows:
        Delivery.objects.create(
            dispatch=dispatch,
            device=profile.devices.first(),
            profile=profile,
            variant=variant,
            status=row_status,
            reason=reason,
            queued_at=at,
            finished_at=at + 10 * dt.timedelta(minutes=1),
            opened_at=at + HOUR if variant == 1 and day % 2 else None,
        )
    Dispatch.objects.filter(pk=dispatch.pk).update(accepted=2, failed=1, skipped=1, opened=day % 2)
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    for index, hours in ((day % 12, 2), ((day + 5) % 12, 5), ((day + 3) % 12, 30)):  # the last after the window
        EventFactory(profile=profiles[index], name="purchase", occurred_at=at + hours * HOUR)
    return dispatch


def recount(campaign) -> dict:
    """Row by row in Python: profiles per variant; reached (accepted, or held out with a device) and
    converted (a purchase within 24 hours of the row's settling) per variant."""
    rows = list(
        Delivery.objects.filter(dispatch__source_id=campaign.pk, dispatch__kind=Dispatch.Kind.API_TRIGGER).values(
            "variant", "profile_id", "status", "reason", "device_id", "finished_at"
        )
    )
    purchases: dict[int, list] = {}
    for profile_id, at in Event.objects.filter(name="purchase").values_list("profile_id", "occurred_at"):
        purchases.setdefault(profile_id, []).append(at)
    profiles, reached, converted = {}, {}, {}
    for row in rows:
        variant = row["variant"]
        profiles.setdefault(variant, set()).add(row["profile_id"])
        held = variant == 0 and row["status"] == "skipped" and row["reason"] == "holdout" and row["device_id"]
        if row["status"] == "accepted" or held:
            reached.setdefault(variant, set()).add(row["profile_id"])
            end = row["finished_at"] + WINDOW
            if any(row["finished_at"] <= at < end for at in purchases.get(row["profile_id"], [])):
                converted.setdefault(variant, set()).add(row["profile_id"])
    label = {0: "holdout", 1: "A", 2: "B"}
    return {
        "profiles": {label[v]: len(p) for v, p in profiles.items()},
        "reached": {label[v]: len(p) for v, p in reached.items()},
        "converted": {label[v]: len(converted.get(v, ())) for v in reached},
    }


def shown(campaign) -> dict:
    """The report's figures counted per profile, in the shape of ``recount``."""
    report = campaign_report(Campaign.objects.get(pk=campaign.pk))
    conversions = report["conversions"]
    groups = [(v["variant"], v) for v in conversions["variants"]] + [("holdout", conversions["holdout"])]
    return {
        "profiles": {v["variant"]: v["profiles"] for v in report["variants"]}
        | {"holdout": report["holdout"]["profiles"]},
        "reached": {name: figures["reached"] for name, figures in groups},
        "converted": {name: figures["conversions"] for name, figures in groups},
    }


def test_the_figures_per_profile_are_a_recount_of_the_rows_over_many_sends(sends):
    make, profiles = sends
    campaign = make(9, name="Daily")
    expected = recount(campaign)
    assert expected == {
        "profiles": {"A": 9, "B": 12, "holdout": 9},
        "reached": {"A": 9, "B": 9, "holdout": 9},
        "converted": {"A": 9, "B": 0, "holdout": 9},
    }
    assert shown(campaign) == expected
    assert shown(campaign) == expected, "viewed again: the figures kept"

    # The send under way settles, and two more come (the last under way): the kept figures grow.
    Dispatch.objects.filter(source_id=campaign.pk, status="sending").update(
        status="done", finished_at=T0 + 9 * 24 * HOUR
    )
    send(campaign, profiles, day=9)
    send(campaign, profiles, day=10, status="sending")
    Event.objects.create(profile=profiles[4], name="purchase", occurred_at=T0 + 4 * 24 * HOUR + 6 * HOUR)  # late
    expected = recount(campaign)
    assert expected["profiles"] == {"A": 11, "B": 12, "holdout": 11}
    assert shown(campaign) == expected
    cache.clear()
    assert shown(campaign) == expected, "counted whole: the same figures"


def _rolled_up_sends(campaign, count: int) -> list[int]:
    """``count`` finished sends of the campaign, an hour apart, each with its rollup: 4 targeted,
    3 accepted, 1 opened."""
    from delivery.models import DeliveryRollup

    made = Dispatch.objects.bulk_create(
        Dispatch(
            app=campaign.app,
            kind="api_trigger",
            source_id=campaign.pk,
            label=f"Send {i}",
            content_spec={"title": "Hi"},
            status="done",
            total=4,
            accepted=3,
            opened=1,
            created_at=T0 + i * HOUR,
            finished_at=T0 + i * HOUR + dt.timedelta(minutes=5),
        )
        for i in range(count)
    )
    DeliveryRollup.objects.bulk_create(
        DeliveryRollup(dispatch=send, period=send.created_at, platform="ios", outcome=outcome, reason="", rows=n)
        for send in made
        for outcome, n in (("targeted", 4), ("accepted", 3), ("opened", 1))
    )
    return [send.pk for send in made]


def test_the_api_report_lists_the_newest_sends_and_links_to_the_paged_list_of_all(
    make_campaign, api_key_for, manager_alice
):
    campaign = make_campaign(name="Streams", kind="api_triggered", segment=None)
    ids = _rolled_up_sends(campaign, 105)
    api = api_key_for(manager_alice, scopes=["read"])
    report = api.get(f"/api/v1/campaigns/{campaign.pk}/report/").json()
    assert report["targeted"] == 420 and report["accepted"] == 315 and report["opened"] == 105, "every send"
    assert report["dispatches_count"] == 105
    assert [d["id"] for d in report["dispatches"]] == ids[::-1][:100]
    assert report["dispatches"][0] == {
        "id": ids[-1],
        "label": "Send 104",
        "status": "done",
        "created_at": "2026-05-08T17:00:00Z",
        "finished_at": "2026-05-08T17:05:00Z",
        "targeted": 4,
        "accepted": 3,
        "opened": 1,
    }
    rest = api.get(report["dispatches_next"]).json()
    assert rest["count"] == 105 and rest["next"] is None
    assert [d["id"] for d in rest["results"]] == ids[::-1][100:]
    assert rest["results"][-1] | {"id": None} == report["dispatches"][0] | {
        "id": None,
        "label": "Send 0",
        "created_at": "2026-05-04T09:00:00Z",
        "finished_at": "2026-05-04T09:05:00Z",
    }

    second = api.get(f"/api/v1/campaigns/{campaign.pk}/dispatches/?limit=40&offset=40").json()
    assert [d["id"] for d in second["results"]] == ids[::-1][40:80]
    walked, url = [], f"/api/v1/campaigns/{campaign.pk}/dispatches/?paging=cursor&limit=40"
    while url:
        page = api.get(url).json()
        walked += [d["id"] for d in page["results"]]
        url = page["next"]
    assert walked == ids[::-1], "a cursor walk reads every send once"

    few = make_campaign(name="Few sends", kind="api_triggered", segment=None)
    _rolled_up_sends(few, 3)
    report = api.get(f"/api/v1/campaigns/{few.pk}/report/").json()
    assert report["dispatches_count"] == 3 and len(report["dispatches"]) == 3 and report["dispatches_next"] is None

    stranger = api_key_for(UserFactory(username="manager_stranger", role="Manager"), scopes=["read"])  # no access
    assert stranger.get(f"/api/v1/campaigns/{campaign.pk}/dispatches/").status_code == 404
    assert stranger.get(f"/api/v1/campaigns/{campaign.pk}/report/").status_code == 404


def test_a_key_granted_the_campaign_but_not_its_app_reads_its_sends_as_its_report_counts_them(
    make_campaign, api_key_for, content
):
    """The campaign's report counted its sends and listed their ids, and the dispatches API answered
    404 for each: dispatches were seen through their app only. A campaign granted alone shows its own
    sends and their rows; not its content's test sends, nor anything else of the app. Reporting an
    open, a write, still needs the app."""
    from accounts.services import access_grant
    from tests.delivery.reporting import sent_dispatch

    campaign = make_campaign(name="Streams", kind="api_triggered", segment=None)
    stream = sent_dispatch(campaign.app, kind="api_trigger", source_id=campaign.pk)
    other = make_campaign(name="Other")
    others = [
        sent_dispatch(campaign.app, kind="campaign", source_id=other.pk),
        sent_dispatch(campaign.app, kind="test", source_id=content.pk),  # a test send of the campaign's content
        sent_dispatch(campaign.app, kind="journey", source_id=campaign.pk),  # a journey version of the same number
    ]
    approver = UserFactory(username="approver_ann", role="Approver")  # a Viewer owns no key
    manager = UserFactory(username="manager_max", role="Manager")
    for reader in (approver, manager):
        access_grant(obj=campaign, to=reader, by=None)
        api = api_key_for(reader, scopes=["read", "ingest"])
        report = api.get(f"/api/v1/campaigns/{campaign.pk}/report/").json()
        assert report["targeted"] == 7 and [d["id"] for d in report["dispatches"]] == [stream.pk]
        assert [d["id"] for d in api.get(f"/api/v1/campaigns/{campaign.pk}/dispatches/").json()["results"]] == [
            stream.pk
        ]
        assert [d["id"] for d in api.get("/api/v1/dispatches/").json()["results"]] == [stream.pk]
        assert api.get(f"/api/v1/dispatches/{stream.pk}/").json()["total"] == 7
        rows = api.get(f"/api/v1/dispatches/{stream.pk}/deliveries/").json()["results"]
        assert len(rows) == 7
        assert api.get(f"/api/v1/deliveries/{rows[0]['id']}/").status_code == 200
        for dispatch in others:
            assert api.get(f"/api/v1/dispatches/{dispatch.pk}/").status_code == 404, dispatch.kind
            assert api.get(f"/api/v1/dispatches/{dispatch.pk}/deliveries/").status_code == 404, dispatch.kind

    accepted = stream.deliveries.filter(status="accepted", opened_at__isnull=True, device__isnull=False).first()
    body = {"app": campaign.app_id, "delivery": accepted.pk, "token": accepted.device.token}
    assert api_key_for(manager, scopes=["ingest"]).post("/api/v1/opens/", body, format="json").status_code == 404
    assert stream.deliveries.get(pk=accepted.pk).opened_at is None

    stranger = api_key_for(UserFactory(username="manager_stranger", role="Manager"), scopes=["read"])
    assert stranger.get("/api/v1/dispatches/").json()["results"] == []
    assert stranger.get(f"/api/v1/dispatches/{stream.pk}/").status_code == 404


def test_the_report_runs_the_same_statements_for_3_sends_as_for_30(sends):
    """No statement lists the sends, and no view runs more of them for more sends: counted, viewed
    again, and grown by a send that settled and a new one."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make, profiles = sends
    few, many = make(3, name="Few sends"), make(30, name="Many sends")

    def statements(campaign) -> list[str]:
        with CaptureQueriesContext(connection) as captured:
            campaign_report(Campaign.objects.get(pk=campaign.pk))
        return [q["sql"] for q in captured]

    def shape(sql: str) -> str:
        # Every number as one digit: the two campaigns' ids (and their sends') differ in length with
        # the database's sequences, which other tests have moved, and an id may stand many times.
        return re.sub(r"\d+", "0", sql)

    def compared(view: str) -> None:
        of_few, of_many = statements(few), statements(many)
        assert len(of_many) == len(of_few), f"{view}: as many statements"
        grown = max(len(shape(b)) - len(shape(a)) for a, b in zip(of_few, of_many, strict=True))
        assert grown <= 1, f"{view}: a statement grew by {grown} characters"  # 'Many sends' for 'Few sends'

    cache.clear()
    compared("counted")
    compared("viewed again")
    for campaign, n in ((few, 3), (many, 30)):
        Dispatch.objects.filter(source_id=campaign.pk, status="sending").update(status="done")
        send(campaign, profiles, day=n, status="sending")
    compared("grown")
    assert shown(many) == recount(many)
