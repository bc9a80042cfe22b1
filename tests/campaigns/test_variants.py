"""Content variants and holdout: assignment by hash, stable across retries and occurrences, in the
shares asked; the holdout receives nothing; the send path and the gate carry every variant."""

import datetime as dt

import pytest
from django.db import connection
from django.db.models import Count

from accounts.services import access_grant
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit
from campaigns.services.scheduling import campaign_fire_due
from campaigns.services.variants import VariantInput, campaign_variants_set
from delivery.models import Delivery, Dispatch
from delivery.services.dispatches import GateClosed, dispatch_create, dispatch_prepare
from delivery.services.sending import dispatch_send
from delivery.variants import bucket, bucket_sql, variant_for
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory, SegmentFactory

T0 = dt.datetime(2030, 3, 1, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def shop(pushsim_app, manager_alice, approver_bob, viewer_carol):
    for user in (manager_alice, approver_bob, viewer_carol):
        access_grant(obj=pushsim_app, to=user, by=None)
    return pushsim_app


@pytest.fixture
def contents(shop):
    return [PushContentFactory(app=shop, name=f"Sale {label}", title=f"Title {label}") for label in "ABC"]


def _segment(by, prefix: str):
    segment = SegmentFactory(
        name=f"Cohort {prefix}", rules={"all": [{"field": "external_id", "op": "starts_with", "value": prefix}]}
    )
    access_grant(obj=segment, to=by, by=None)
    return segment


def _campaign(by, app, contents, *, shares, holdout=0, prefix="v-", **fields):
    campaign = campaign_create(
        by=by,
        name="Spring test",
        app=app,
        kind="scheduled",
        segment=_segment(by, prefix),
        content=contents[0],
        **{"schedule_kind": "at", "send_at": T0, **fields},
    )
    return campaign_variants_set(
        campaign_id=campaign.pk,
        by=by,
        variants=[VariantInput(content_id=c.pk, share=s) for c, s in zip(contents, shares, strict=False)],
        holdout_share=holdout,
    )


def _approve(campaign, manager, approver):
    campaign_submit(campaign_id=campaign.pk, by=manager)
    campaign_approve(campaign_id=campaign.pk, by=approver, now=T0 - dt.timedelta(hours=1))
    return Campaign.objects.get(pk=campaign.pk)


def _fire(campaign, now) -> Dispatch:
    (occurrence,) = [o for o in campaign_fire_due(campaign_id=campaign.pk, now=now) if o.dispatch_id]
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)
    return Dispatch.objects.get(pk=occurrence.dispatch_id)


def test_the_database_and_python_draw_the_same_bucket(db):
    ids = [1, 2, 77, 123_456, 9_876_543_210]
    with connection.cursor() as cursor:
        for profile_id in ids:
            cursor.execute(f"SELECT {bucket_sql('%s', vendor=connection.vendor, salt=42)}", [profile_id])
            assert cursor.fetchone()[0] == bucket(profile_id, 42)


def test_shares_hold_within_tolerance_on_100000_profiles(shop, contents, manager_alice, approver_bob):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at) "
            "SELECT 'big-' || n, '{}'::jsonb, '', '', now(), now() FROM generate_series(1, 100000) n"
        )
    campaign = _approve(
        _campaign(manager_alice, shop, contents, shares=[50, 30, 10], holdout=10, prefix="big-"),
        manager_alice,
        approver_bob,
    )
    dispatch = _fire(campaign, T0)
    counts = dict(Delivery.objects.filter(dispatch=dispatch).values_list("variant").annotate(n=Count("id")).order_by())
    assert sum(counts.values()) == 100_000
    for variant, share in ((0, 10), (1, 50), (2, 30), (3, 10)):
        assert abs(counts[variant] / 100_000 - share / 100) < 0.01, (variant, counts)
    # None has a phone: in the holdout as in the variants, a profile no push could reach is
    # skipped for that, and the holdout (measured against those reached) holds none of them.
    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "reason").distinct()) == {
        ("skipped", "no_device")
    }


def test_a_profile_keeps_its_variant_on_every_occurrence(shop, contents, manager_alice, approver_bob):
    profiles = [ProfileFactory(external_id=f"v-{n}") for n in range(60)]
    campaign = _approve(
        _campaign(
            manager_alice, shop, contents, shares=[40, 40], holdout=20, schedule_kind="recurring", recurrence="daily"
        ),
        manager_alice,
        approver_bob,
    )
    first = _fire(campaign, T0)
    second = _fire(Campaign.objects.get(pk=campaign.pk), T0 + dt.timedelta(days=1))
    assert first.pk != second.pk
    one = dict(Delivery.objects.filter(dispatch=first).values_list("profile_id", "variant"))
    two = dict(Delivery.objects.filter(dispatch=second).values_list("profile_id", "variant"))
    assert one == two
    assert set(one.values()) == {0, 1, 2}
    expected = {p.pk: variant_for(p.pk, salt=campaign.pk, variants=first.variants, holdout_share=20) for p in profiles}
    assert one == expected


def test_holdout_receives_nothing_and_each_variant_its_own_content(
    shop,
    contents,
    manager_alice,
    approver_bob,
    pushsim,
    settings,
):
    settings.PUSHDESK_SEND_BACKOFF_SECONDS = 0.05
    phones = {}
    for n in range(40):
        profile = ProfileFactory(external_id=f"v-{n}")
        phones[profile.pk] = DeviceFactory(profile=profile, app=shop, platform="ios" if n % 2 else "android")
    campaign = _approve(
        _campaign(manager_alice, shop, contents, shares=[30, 30, 20], holdout=20), manager_alice, approver_bob
    )
    dispatch = _fire(campaign, T0)
    # A retried push sends its variant again: the first attempt of one phone fails with a 503.
    retried = Delivery.objects.filter(dispatch=dispatch, variant__gte=1).select_related("device").first().device
    pushsim.state.fail_token(token=retried.token, failures=[503])
    report = dispatch_send(dispatch_id=dispatch.pk, time_budget=10)
    # Which profiles fall in the holdout depends on their ids: every other row is claimed.
    assert report.claimed >= Delivery.objects.filter(dispatch=dispatch, variant__gte=1).count()
    rows = {d.profile_id: d for d in Delivery.objects.filter(dispatch=dispatch)}
    titles = {1: "Title A", 2: "Title B", 3: "Title C"}
    received = {r["token"]: r for r in pushsim.state.recent(limit=500)}
    for profile_id, phone in phones.items():
        row = rows[profile_id]
        if row.variant == 0:
            assert (row.status, row.reason) == ("skipped", "holdout")
            assert pushsim.state.count(phone.token) == 0
        else:
            assert row.status == "accepted"
            assert pushsim.state.count(phone.token) == 1
            assert received[phone.token]["title"] == titles[row.variant]
    assert {r.variant for r in rows.values()} == {0, 1, 2, 3}
    assert rows[retried.profile_id].attempts == 2


def test_the_gate_refuses_variants_or_shares_other_than_the_approved_ones(shop, contents, manager_alice, approver_bob):
    ProfileFactory(external_id="v-1")
    campaign = _approve(_campaign(manager_alice, shop, contents, shares=[50, 50]), manager_alice, approver_bob)
    approved = campaign.approved()
    common = dict(
        app_id=shop.pk,
        kind="campaign",
        spec=approved.spec,
        segment_id=campaign.segment_id,
        source_id=campaign.pk,
        context=campaign.send_context(),
    )
    with pytest.raises(GateClosed, match="variants"):
        dispatch_create(**common)  # the variants left out: everyone would get A
    swapped = [{**approved.variants[0], "share": 90}, {**approved.variants[1], "share": 10}]
    with pytest.raises(GateClosed, match="variants"):
        dispatch_create(**common, variants=swapped)
    with pytest.raises(GateClosed, match="variants"):
        dispatch_create(**common, variants=approved.variants, holdout_share=10)
    assert dispatch_create(**common, variants=approved.variants).variants == approved.variants


def test_a_campaign_with_one_content_sends_as_before(shop, contents, manager_alice, approver_bob):
    profile = ProfileFactory(external_id="v-1")
    DeviceFactory(profile=profile, app=shop)
    campaign = _approve(_campaign(manager_alice, shop, contents, shares=[]), manager_alice, approver_bob)
    assert campaign.variant_list() == []
    dispatch = _fire(campaign, T0)
    assert dispatch.variants == []
    assert list(Delivery.objects.filter(dispatch=dispatch).values_list("status", "variant")) == [("queued", None)]


def test_a_variant_that_shows_a_call_context_is_refused_in_a_scheduled_campaign_naming_it(
    shop, contents, manager_alice
):
    from django.core.exceptions import ValidationError

    contents[1].body = "Your code: {{ context.code }}"
    contents[1].save()
    with pytest.raises(ValidationError) as error:
        _campaign(manager_alice, shop, contents, shares=[50, 50])
    (message,) = error.value.message_dict["variants"]
    assert message.startswith("Variant B's content 'Sale B' shows {{ context.code }} in its body: ")
    assert not Campaign.objects.get().variant_list()


def test_api_triggered_campaign_sends_each_recipient_their_variant_and_the_holdout_nothing(
    shop,
    contents,
    manager_alice,
    approver_bob,
    pushsim,
    api_key_for,
    django_capture_on_commit_callbacks,
):
    campaign = campaign_create(
        by=manager_alice, name="Order shipped", app=shop, kind="api_triggered", content=contents[0]
    )
    campaign_variants_set(
        campaign_id=campaign.pk,
        by=manager_alice,
        variants=[VariantInput(content_id=contents[0].pk, share=40), VariantInput(content_id=contents[1].pk, share=35)],
        holdout_share=25,
    )
    campaign = _approve(campaign, manager_alice, approver_bob)
    phones = {}
    for n in range(30):
        profile = ProfileFactory(external_id=f"t-{n}")
        phones[profile.pk] = DeviceFactory(profile=profile, app=shop, platform="ios" if n % 2 else "android")
    client = api_key_for(manager_alice, scopes=["trigger", "read"])
    body = {"recipients": [{"external_id": f"t-{n}"} for n in range(30)]}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/api/v1/campaigns/{campaign.pk}/trigger/", body, format="json")
    assert response.status_code == 202, response.json()
    dispatch = Dispatch.objects.get(pk=response.json()["dispatch"])
    assert dispatch.variants == campaign.approved().variants and dispatch.holdout_share == 25
    rows = {d.profile_id: d for d in Delivery.objects.filter(dispatch=dispatch)}
    received = {r["token"]: r for r in pushsim.state.recent(limit=500)}
    for profile_id, phone in phones.items():
        row = rows[profile_id]
        assert row.variant == variant_for(profile_id, salt=campaign.pk, variants=dispatch.variants, holdout_share=25)
        if row.variant == 0:
            assert (row.status, row.reason) == ("skipped", "holdout")
            assert pushsim.state.count(phone.token) == 0
        else:
            assert row.status == "accepted", row.reason
            assert received[phone.token]["title"] == {1: "Title A", 2: "Title B"}[row.variant]
    assert {r.variant for r in rows.values()} == {0, 1, 2}
    assert response.json()["accepted"] == sum(1 for r in rows.values() if r.variant)
    for row in (next(r for r in rows.values() if r.variant), next(r for r in rows.values() if r.variant == 0)):
        assert client.get(f"/api/v1/deliveries/{row.pk}/").json()["variant"] == row.variant
