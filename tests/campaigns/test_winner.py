"""Winner mode: the sample gets the test, the winner is picked after the wait by a two-proportion
z-test and sent to the rest exactly once (two workers racing), the fallback when nothing wins, the
gate, the settings' rules and their place in the approval."""

import datetime as dt
import threading

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.db.models import Count
from django.urls import reverse

from accounts.services import TransitionError, access_grant
from audiences.models import Event
from audiences.services.profiles import profiles_delete
from campaigns.models import Campaign, WinnerTest
from campaigns.services.conversions import campaign_conversion_set
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit, campaign_update
from campaigns.services.scheduling import campaign_fire_due, campaigns_tick
from campaigns.services.variants import VariantInput, campaign_variants_set
from campaigns.services.winner import WinnerInput, campaign_winner_set, winner_pick
from campaigns.winner import two_proportion_z, winner_decide
from delivery.models import Delivery, Device, Dispatch
from delivery.reasons import reason_label
from delivery.services.devices import device_register
from delivery.services.dispatches import GateClosed, dispatch_create, dispatch_prepare
from delivery.services.sending import dispatch_send
from delivery.variants import sample_bucket, variant_for
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


def _phones(n: int, shop, prefix="w-") -> dict[int, object]:
    phones = {}
    for i in range(n):
        profile = ProfileFactory(external_id=f"{prefix}{i}")
        phones[profile.pk] = DeviceFactory(profile=profile, app=shop, platform="ios" if i % 2 else "android")
    return phones


def _campaign(by, app, contents, *, shares=(45, 45), holdout=10, winner=None, prefix="w-", **fields):
    segment = SegmentFactory(
        name=f"Cohort {prefix}", rules={"all": [{"field": "external_id", "op": "starts_with", "value": prefix}]}
    )
    access_grant(obj=segment, to=by, by=None)
    campaign = campaign_create(
        by=by,
        name="Spring test",
        app=app,
        kind="scheduled",
        segment=segment,
        content=contents[0],
        **{"schedule_kind": "at", "send_at": T0, **fields},
    )
    campaign_variants_set(
        campaign_id=campaign.pk,
        by=by,
        variants=[VariantInput(content_id=c.pk, share=s) for c, s in zip(contents, shares, strict=False)],
        holdout_share=holdout,
    )
    if winner is not None:
        campaign_winner_set(campaign_id=campaign.pk, by=by, settings=winner)
    return Campaign.objects.get(pk=campaign.pk)


def _approve(campaign, manager, approver):
    campaign_submit(campaign_id=campaign.pk, by=manager)
    campaign_approve(campaign_id=campaign.pk, by=approver, now=T0 - dt.timedelta(hours=1))
    return Campaign.objects.get(pk=campaign.pk)


def _send(dispatch_id: int) -> Dispatch:
    dispatch_prepare(dispatch_id=dispatch_id)
    dispatch_send(dispatch_id=dispatch_id, time_budget=20)
    return Dispatch.objects.get(pk=dispatch_id)


def _sample(campaign) -> Dispatch:
    (occurrence,) = [o for o in campaign_fire_due(campaign_id=campaign.pk, now=T0) if o.dispatch_id]
    return _send(occurrence.dispatch_id)


def _open(dispatch, variant: int, share: float = 1.0) -> None:
    rows = list(Delivery.objects.filter(dispatch=dispatch, variant=variant, status="accepted").order_by("id"))
    opened = rows[: round(len(rows) * share)]
    Delivery.objects.filter(pk__in=[r.pk for r in opened]).update(opened_at=T0 + dt.timedelta(minutes=5))


WINNER = WinnerInput(sample_share=40, wait_minutes=120, metric="open_rate", confidence=95)


def test_the_first_send_reaches_the_sample_only(shop, contents, manager_alice, approver_bob, pushsim):
    phones = _phones(150, shop)
    # A holdout of 25 %: the sample's ~60 profiles all missed a 10 % one in about one run of 500.
    campaign = _approve(
        _campaign(manager_alice, shop, contents, shares=(40, 35), holdout=25, winner=WINNER),
        manager_alice,
        approver_bob,
    )
    sample = _sample(campaign)
    assert sample.sample == {"part": "sample", "share": 40, "test": campaign.winner_test.pk}
    rows = {d.profile_id: d for d in Delivery.objects.filter(dispatch=sample)}
    in_sample = {pk for pk in phones if sample_bucket(pk, campaign.pk) < 4000}
    assert set(rows) == in_sample and 30 < len(in_sample) < 90
    for profile_id, phone in phones.items():
        row = rows.get(profile_id)
        expected = variant_for(profile_id, salt=campaign.pk, variants=sample.variants, holdout_share=25)
        if row is None or row.variant == 0:
            assert pushsim.state.count(phone.token) == 0
            assert row is None or (row.status, row.reason) == ("skipped", "holdout")
        else:
            assert (row.status, row.variant) == ("accepted", expected)
            assert pushsim.state.count(phone.token) == 1
    assert {r.variant for r in rows.values()} == {0, 1, 2}
    test = WinnerTest.objects.get(campaign=campaign)
    assert (test.outcome, test.due_at, test.sample_dispatch_id) == ("waiting", T0 + dt.timedelta(hours=2), sample.pk)
    # Waiting for the pick, the campaign is not completed by the beat, and nothing is picked early.
    assert campaigns_tick(now=T0 + dt.timedelta(minutes=119))["winners"] == 0
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.LIVE


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_pick_once_and_the_rest_gets_the_winner_once(
    shop, contents, manager_alice, approver_bob, pushsim
):
    phones = _phones(150, shop)
    campaign = _approve(_campaign(manager_alice, shop, contents, winner=WINNER), manager_alice, approver_bob)
    sample = _sample(campaign)
    _open(sample, 2, 0.6)
    _open(sample, 1, 0.1)
    due = T0 + dt.timedelta(hours=2)
    barrier, picked, errors = threading.Barrier(2), [], []

    def worker():
        try:
            barrier.wait()
            picked.append(winner_pick(campaign_id=campaign.pk, now=due))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    decided = [t for t in picked if t is not None]
    assert len(decided) == 1
    test = WinnerTest.objects.get(campaign=campaign)
    assert (test.outcome, test.winner) == ("winner", 2)
    assert test.reason.startswith("B won at 95% with a open rate") or test.reason.startswith("B won at 95%")
    (comparison,) = test.comparisons
    assert comparison["variant"] == "A" and comparison["significant"] and comparison["p"] < 0.05
    rest = Dispatch.objects.filter(kind="campaign", source_id=campaign.pk).exclude(pk=sample.pk)
    assert list(rest.values_list("pk", flat=True)) == [test.remainder_dispatch_id]
    remainder = _send(test.remainder_dispatch_id)
    assert remainder.sample["part"] == "rest" and [v["number"] for v in remainder.variants] == [2]
    # Again, and by the beat: nothing more.
    assert winner_pick(campaign_id=campaign.pk, now=due) is None
    assert campaigns_tick(now=due)["winners"] == 0
    assert rest.count() == 1
    received = {}
    for r in pushsim.state.recent(limit=1000):
        received.setdefault(r["token"], []).append(r["title"])
    sample_rows = dict(Delivery.objects.filter(dispatch=sample).values_list("profile_id", "variant"))
    rest_rows = dict(Delivery.objects.filter(dispatch=remainder).values_list("profile_id", "variant"))
    assert not set(sample_rows) & set(rest_rows)
    assert set(sample_rows) | set(rest_rows) == set(phones)
    for profile_id, phone in phones.items():
        variant = sample_rows.get(profile_id, rest_rows.get(profile_id))
        if variant == 0:
            assert phone.token not in received  # the holdout stays held out, in the sample and the rest
        elif profile_id in rest_rows:
            assert received[phone.token] == ["Title B"]
        else:
            assert len(received[phone.token]) == 1
    # The rest is sent: the beat completes the campaign.
    campaigns_tick(now=due + dt.timedelta(minutes=1))
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.COMPLETED


@pytest.mark.parametrize(
    ("fallback", "fallback_variant", "rest_variants"),
    [("default_variant", 2, [2]), ("all_variants", None, [1, 2])],
)
def test_the_fallback_applies_when_no_variant_wins(
    shop, contents, manager_alice, approver_bob, pushsim, fallback, fallback_variant, rest_variants
):
    _phones(120, shop)
    settings = WinnerInput(sample_share=40, wait_minutes=0, fallback=fallback, fallback_variant=fallback_variant)
    campaign = _approve(_campaign(manager_alice, shop, contents, winner=settings), manager_alice, approver_bob)
    sample = _sample(campaign)
    _open(sample, 1, 0.5)
    _open(sample, 2, 0.5)
    test = winner_pick(campaign_id=campaign.pk, now=T0)
    assert (test.outcome, test.winner) == ("fallback", fallback_variant)
    assert test.reason.startswith("No winner at 95%: ") and "Fallback: " in test.reason
    (comparison,) = test.comparisons
    assert not comparison["significant"] and comparison["p"] > 0.05
    assert [f["trials"] for f in test.figures] == [
        Delivery.objects.filter(dispatch=sample, variant=n, status="accepted").count() for n in (1, 2)
    ]
    remainder = Dispatch.objects.get(pk=test.remainder_dispatch_id)
    assert [v["number"] for v in remainder.variants] == rest_variants
    dispatch_prepare(dispatch_id=remainder.pk)
    sent = set(Delivery.objects.filter(dispatch=remainder).exclude(variant=0).values_list("variant", flat=True))
    assert sent == set(rest_variants)


def test_the_report_gives_each_variant_its_approved_share_after_the_rest_is_sent(
    shop, contents, manager_alice, approver_bob, pushsim
):
    from campaigns.reports import campaign_report

    _phones(120, shop)
    campaign = _approve(_campaign(manager_alice, shop, contents, winner=WINNER), manager_alice, approver_bob)
    sample = _sample(campaign)
    _open(sample, 2, 0.9)
    test = winner_pick(campaign_id=campaign.pk, now=T0 + dt.timedelta(hours=2))
    assert (test.outcome, test.winner) == ("winner", 2)
    _send(test.remainder_dispatch_id)
    report = campaign_report(campaign)
    # B went to the rest too, with every share but the holdout's; approved, it had 45%, as A.
    assert [(v["variant"], v["content"], v["share"]) for v in report["variants"]] == [
        ("A", "Sale A", 45),
        ("B", "Sale B", 45),
    ]
    rest = Delivery.objects.filter(dispatch_id=test.remainder_dispatch_id, variant=2).values("profile_id")
    assert report["variants"][1]["profiles"] == (
        Delivery.objects.filter(dispatch=sample, variant=2).values("profile_id").union(rest).count()
    )


def test_the_conversion_rate_picks_by_the_goal_frozen_at_approval(shop, contents, manager_alice, approver_bob, pushsim):
    _phones(150, shop)
    campaign = _campaign(manager_alice, shop, contents)
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="purchase", where=[], window_hours=24)
    settings = WinnerInput(sample_share=40, wait_minutes=60, metric="conversion_rate", confidence=90)
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=settings)
    campaign = _approve(Campaign.objects.get(pk=campaign.pk), manager_alice, approver_bob)
    sample = _sample(campaign)
    accepted = Delivery.objects.filter(dispatch=sample, status="accepted")
    finished = accepted.first().finished_at
    for row in accepted.filter(variant=1):
        Event.objects.create(profile_id=row.profile_id, name="purchase", occurred_at=finished + dt.timedelta(minutes=9))
    test = winner_pick(campaign_id=campaign.pk, now=T0 + dt.timedelta(hours=1))
    assert (test.outcome, test.winner) == ("winner", 1), test.reason
    a, b = test.figures
    assert a["successes"] == a["trials"] > 0 and b["successes"] == 0
    assert "conversion rate of 100.0%" in test.reason


def test_the_statistics_match_the_worked_example():
    z, p = two_proportion_z((156, 1200), (120, 1200))
    assert round(z, 2) == 2.30 and round(p, 4) == 0.0213
    decision = winner_decide({1: (120, 1200), 2: (156, 1200)}, numbers=[1, 2], confidence=95, metric="open_rate")
    assert decision.winner == 2
    decision = winner_decide({1: (120, 1200), 2: (156, 1200)}, numbers=[1, 2], confidence=99, metric="open_rate")
    assert decision.winner is None and "p must be below 0.01" in decision.reason
    nobody = winner_decide({1: (3, 10)}, numbers=[1, 2], confidence=95, metric="open_rate")
    assert nobody.winner is None and "B reached nobody" in nobody.reason


def test_the_gate_allows_the_rest_only_against_the_recorded_pick(shop, contents, manager_alice, approver_bob):
    _phones(20, shop)
    campaign = _approve(
        _campaign(manager_alice, shop, contents, winner=WinnerInput(sample_share=40, wait_minutes=0)),
        manager_alice,
        approver_bob,
    )
    approved = campaign.approved()
    common = dict(
        app_id=shop.pk,
        kind="campaign",
        spec=approved.spec,
        segment_id=campaign.segment_id,
        source_id=campaign.pk,
        variants=approved.variants,
        holdout_share=10,
    )
    with pytest.raises(GateClosed, match="winner mode"):
        dispatch_create(**common)  # everyone at once
    with pytest.raises(GateClosed, match="no such sample"):
        dispatch_create(**common, sample={"part": "sample", "share": 90})
    sample = _send(campaign_fire_due(campaign_id=campaign.pk, now=T0)[0].dispatch_id)
    test = WinnerTest.objects.get(campaign=campaign)
    rest = {"part": "rest", "share": 40, "test": test.pk}
    with pytest.raises(GateClosed, match="waiting"):
        dispatch_create(**common, sample=rest)  # nothing picked yet
    test = winner_pick(campaign_id=campaign.pk, now=T0)
    assert test.remainder_dispatch_id is not None and sample.status == "done"
    with pytest.raises(GateClosed):
        dispatch_create(**common, sample=rest)  # a second remainder
    # A second occurrence (e.g. a moved date) is refused: winner mode sends once.
    Campaign.objects.filter(pk=campaign.pk).update(next_occurrence_at=T0 + dt.timedelta(days=1))
    (refused,) = campaign_fire_due(campaign_id=campaign.pk, now=T0 + dt.timedelta(days=1))
    assert refused.outcome == "refused" and "sends once" in refused.note


def test_a_stopped_campaign_sends_nothing_to_the_rest(shop, contents, manager_alice, approver_bob):
    from campaigns.services.lifecycle import campaign_stop

    _phones(20, shop)
    campaign = _approve(
        _campaign(manager_alice, shop, contents, winner=WinnerInput(sample_share=40, wait_minutes=0)),
        manager_alice,
        approver_bob,
    )
    _sample(campaign)
    campaign_stop(campaign_id=campaign.pk, by=manager_alice)
    test = winner_pick(campaign_id=campaign.pk, now=T0)
    assert (test.outcome, test.remainder_dispatch_id) == ("cancelled", None)
    assert "stopped" in test.reason


def test_a_rest_the_settings_no_longer_allow_is_cancelled_saying_why(
    shop, contents, manager_alice, approver_bob, settings
):
    # The deep link's scheme was allowed when the variants were approved and the sample sent; the
    # operator has since taken it off the list: the pick is kept, the rest is refused and said.
    settings.PUSHDESK_DEEP_LINK_SCHEMES = ["https", "shop"]
    for content in contents:
        content.tap_action, content.tap_url = "deep_link", "shop://sale"
        content.save()
    _phones(20, shop)
    campaign = _approve(
        _campaign(manager_alice, shop, contents, winner=WinnerInput(sample_share=40, wait_minutes=0)),
        manager_alice,
        approver_bob,
    )
    _sample(campaign)
    settings.PUSHDESK_DEEP_LINK_SCHEMES = ["https"]
    test = winner_pick(campaign_id=campaign.pk, now=T0)
    assert (test.outcome, test.remainder_dispatch_id) == ("cancelled", None)
    assert "URL scheme 'shop' is not allowed" in test.reason


def test_api_triggered_campaigns_refuse_winner_mode(shop, contents, manager_alice):
    campaign = campaign_create(
        by=manager_alice, name="Order shipped", app=shop, kind="api_triggered", content=contents[0]
    )
    campaign_variants_set(
        campaign_id=campaign.pk,
        by=manager_alice,
        variants=[VariantInput(content_id=contents[0].pk, share=50), VariantInput(content_id=contents[1].pk, share=50)],
    )
    with pytest.raises(ValidationError) as refused:
        campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=WINNER)
    assert "API-triggered" in refused.value.message_dict["winner_mode"][0]
    # Nor may a winner-mode campaign become API-triggered.
    scheduled = _campaign(manager_alice, shop, contents, winner=WINNER)
    with pytest.raises(ValidationError) as refused:
        campaign_update(campaign_id=scheduled.pk, by=manager_alice, kind="api_triggered", segment=None)
    assert "winner_mode" in refused.value.message_dict


@pytest.mark.parametrize(
    ("asked", "field"),
    [
        (WinnerInput(sample_share=95), "winner_sample_share"),
        (WinnerInput(wait_minutes=99_999), "winner_wait_minutes"),
        (WinnerInput(metric="conversion_rate"), "winner_metric"),
        (WinnerInput(confidence=42), "winner_confidence"),
        (WinnerInput(fallback="default_variant", fallback_variant=3), "winner_fallback_variant"),
    ],
)
def test_winner_settings_are_checked_naming_the_field(shop, contents, manager_alice, asked, field):
    campaign = _campaign(manager_alice, shop, contents)
    with pytest.raises(ValidationError) as refused:
        campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=asked)
    assert field in refused.value.message_dict


def test_winner_mode_needs_variants_and_a_one_off_schedule(shop, contents, manager_alice):
    single = _campaign(manager_alice, shop, contents, shares=(), holdout=0)
    with pytest.raises(ValidationError, match="needs variants"):
        campaign_winner_set(campaign_id=single.pk, by=manager_alice, settings=WINNER)
    recurring = _campaign(manager_alice, shop, contents, schedule_kind="recurring", recurrence="daily")
    with pytest.raises(ValidationError, match="sends once"):
        campaign_winner_set(campaign_id=recurring.pk, by=manager_alice, settings=WINNER)
    campaign = _campaign(manager_alice, shop, contents, winner=WINNER)
    with pytest.raises(ValidationError, match="turn it off first"):
        campaign_variants_set(campaign_id=campaign.pk, by=manager_alice, variants=[])


def test_the_fingerprint_covers_the_winner_settings(shop, contents, manager_alice, approver_bob):
    campaign = _campaign(manager_alice, shop, contents)
    without = campaign.fingerprint()
    campaign = campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=WINNER)
    with_winner = campaign.fingerprint()
    assert with_winner != without
    for change in ({"wait_minutes": 60}, {"confidence": 99}, {"sample_share": 30}, {"fallback": "default_variant"}):
        settings = WinnerInput(**{**WINNER.__dict__, "fallback_variant": 1, **change})
        changed = campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=settings)
        assert changed.fingerprint() != with_winner, change
        campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=WINNER)
    assert Campaign.objects.get(pk=campaign.pk).fingerprint() == with_winner
    # An approved campaign's change is a pending revision: the approved settings keep sending.
    campaign = _approve(Campaign.objects.get(pk=campaign.pk), manager_alice, approver_bob)
    assert campaign.approved().winner["wait_minutes"] == 120
    campaign_winner_set(
        campaign_id=campaign.pk, by=manager_alice, settings=WinnerInput(**{**WINNER.__dict__, "wait_minutes": 5})
    )
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.has_pending_revision and campaign.approved().winner["wait_minutes"] == 120


def test_a_viewer_cannot_set_winner_mode(shop, contents, manager_alice, viewer_carol):
    campaign = _campaign(manager_alice, shop, contents)
    with pytest.raises(PermissionDenied):
        campaign_winner_set(campaign_id=campaign.pk, by=viewer_carol, settings=WINNER)
    assert not Campaign.objects.get(pk=campaign.pk).winner_mode


def test_the_sample_splits_across_the_variants_in_their_shares(shop, contents, manager_alice, approver_bob):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at) "
            "SELECT 'big-' || n, '{}'::jsonb, '', '', now(), now() FROM generate_series(1, 20000) n"
        )
    campaign = _approve(
        _campaign(manager_alice, shop, contents, shares=(60, 30), holdout=10, winner=WINNER, prefix="big-"),
        manager_alice,
        approver_bob,
    )
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)
    counts = dict(
        Delivery.objects.filter(dispatch_id=occurrence.dispatch_id)
        .values_list("variant")
        .annotate(n=Count("id"))
        .order_by()
    )
    total = sum(counts.values())
    assert abs(total / 20_000 - 0.40) < 0.015
    for variant, share in ((0, 10), (1, 60), (2, 30)):
        assert abs(counts[variant] / total - share / 100) < 0.03, counts


def test_the_database_and_python_draw_the_same_sample(db):
    from delivery.variants import in_sample_sql

    with connection.cursor() as cursor:
        for profile_id in (1, 2, 77, 123_456, 9_876_543_210):
            expected = sample_bucket(profile_id, 42) < 2000
            cursor.execute(f"SELECT {in_sample_sql('%s', vendor=connection.vendor, salt=42, share=20)}", [profile_id])
            assert cursor.fetchone()[0] is expected
            sql = in_sample_sql("%s", vendor=connection.vendor, salt=42, share=20, rest=True)
            cursor.execute(f"SELECT {sql}", [profile_id])
            assert cursor.fetchone()[0] is not expected


def test_the_goal_a_conversion_pick_needs_cannot_be_cleared(shop, contents, manager_alice):
    campaign = _campaign(manager_alice, shop, contents)
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="purchase", where=[], window_hours=24)
    settings = WinnerInput(sample_share=40, wait_minutes=60, metric="conversion_rate", confidence=90)
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=settings)
    with pytest.raises(ValidationError) as refused:
        campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="")
    assert "open rate" in refused.value.message_dict["event"][0]
    assert Campaign.objects.get(pk=campaign.pk).conversion_event == "purchase"
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=WinnerInput(sample_share=40))
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="")
    assert Campaign.objects.get(pk=campaign.pk).conversion_event == ""


@pytest.mark.parametrize(("late_minutes", "rest_sent"), [(30, True), (61, False)])
def test_a_pick_later_than_the_missed_window_keeps_the_winner_and_sends_nothing_to_the_rest(
    shop, contents, manager_alice, approver_bob, late_minutes, rest_sent
):
    """Workers down for days past the wait: the rest went out days late, as no late occurrence would
    (the window, 60 minutes here, skips those)."""
    _phones(20, shop)
    campaign = _approve(_campaign(manager_alice, shop, contents, winner=WINNER), manager_alice, approver_bob)
    sample = _sample(campaign)
    _open(sample, 1)
    test = winner_pick(campaign_id=campaign.pk, now=T0 + dt.timedelta(minutes=WINNER.wait_minutes + late_minutes))
    assert test.figures and test.picked_at is not None  # the pick (a winner or the fallback) is kept either way
    if rest_sent:
        assert test.outcome in ("winner", "fallback") and test.remainder_dispatch_id is not None
        return
    assert (test.outcome, test.remainder_dispatch_id) == ("cancelled", None)
    assert test.reason.startswith(
        "Nothing sent to the rest: its pick was due at 2030-03-01 11:00 (UTC) and came 61 minutes late, "
        "more than the campaign's missed window of 60 minutes."
    )
    assert not Dispatch.objects.filter(source_id=campaign.pk).exclude(pk=sample.pk).exists()


def test_a_sample_refused_when_its_audience_is_read_ends_the_test_and_sends_nothing_to_the_rest(
    client, shop, contents, manager_alice, approver_bob, api_key_for
):
    """The sample's prepare task found the segment changed since the approval and wrote no row; the
    segment back as approved by the pick, the rest went out on a sample of nobody (the fallback).
    Nothing went out to test: the test ends at once without a winner, saying why, and the campaign,
    which sent nothing, fails."""
    from audiences.services.segments import segment_update

    _phones(20, shop)
    campaign = _approve(_campaign(manager_alice, shop, contents, winner=WINNER), manager_alice, approver_bob)
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    approved_rules = campaign.segment.rules
    segment_update(
        segment_id=campaign.segment_id,
        by=manager_alice,
        rules={"all": [{"field": "external_id", "op": "starts_with", "value": "w-1"}]},
    )
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)
    sample = Dispatch.objects.get(pk=occurrence.dispatch_id)
    assert sample.status == "failed" and not Delivery.objects.filter(dispatch=sample).exists()
    segment_update(segment_id=campaign.segment_id, by=manager_alice, rules=approved_rules)

    assert campaigns_tick(now=T0 + dt.timedelta(minutes=1))["winners"] == 1
    test = WinnerTest.objects.get(campaign=campaign)
    assert (test.outcome, test.winner, test.figures, test.remainder_dispatch_id) == ("cancelled", None, [], None)
    assert test.reason.startswith(
        "Nothing sent to the rest: the sample never went out, its dispatch failed before any push was queued "
        "(The audience of 'Spring test' is defined otherwise than when it was approved"
    )
    assert Campaign.objects.get(pk=campaign.pk).status == "failed"
    campaigns_tick(now=T0 + dt.timedelta(minutes=WINNER.wait_minutes))
    assert list(Dispatch.objects.filter(source_id=campaign.pk)) == [sample]

    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'data-outcome="cancelled"' in page and "<strong>Nothing sent to the rest</strong>" in page
    assert "the sample never went out" in page and 'id="winner-figures"' not in page
    status = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/campaigns/{campaign.pk}/").json()
    assert status["winner_status"]["outcome"] == "cancelled"
    assert status["winner_status"]["reason"] == test.reason


def test_a_sample_stopped_before_any_row_was_written_sends_nothing_to_the_rest(
    shop, contents, manager_alice, approver_bob
):
    from delivery.services.dispatches import dispatch_stop

    _phones(20, shop)
    campaign = _approve(_campaign(manager_alice, shop, contents, winner=WINNER), manager_alice, approver_bob)
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    dispatch_stop(dispatch_id=occurrence.dispatch_id, by=manager_alice)
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)
    test = winner_pick(campaign_id=campaign.pk, now=T0 + dt.timedelta(minutes=WINNER.wait_minutes))
    assert (test.outcome, test.remainder_dispatch_id) == ("cancelled", None)
    assert test.reason.startswith("Nothing sent to the rest: the sample never went out, its dispatch stopped")


def test_a_phone_moved_from_the_sample_to_the_rest_gets_the_campaign_once(
    shop, contents, manager_alice, approver_bob, admin_erin, pushsim
):
    """The rest leaves out the sample's profiles; a phone the sample reached and that was registered
    again under a profile of the rest before the rest was resolved is left out too, its row saying why."""
    phones = _phones(80, shop)
    settings = WinnerInput(sample_share=40, wait_minutes=0)
    campaign = _approve(_campaign(manager_alice, shop, contents, winner=settings), manager_alice, approver_bob)
    sample = _sample(campaign)
    access_grant(obj=shop, to=admin_erin, by=None)
    sent = Delivery.objects.filter(dispatch=sample, status="accepted").order_by("id")
    moved, opted_out = (phones[row.profile_id] for row in sent[:2])
    sent_profiles = set(Delivery.objects.filter(dispatch=sample).values_list("profile_id", flat=True))
    rest = [
        pk
        for pk in phones
        if pk not in sent_profiles and variant_for(pk, salt=campaign.pk, variants=sample.variants, holdout_share=10)
    ]
    # The phone re-registers under a profile of the rest: its device row moves there.
    to = ProfileFactory._meta.model.objects.get(pk=rest[0])
    device_register(
        app_id=shop.pk, external_id=to.external_id, platform=moved.platform, token=moved.token, by=admin_erin
    )
    # Another moves there and turns notifications off: not sent either, for that reason.
    device_register(
        app_id=shop.pk,
        external_id=to.external_id,
        platform=opted_out.platform,
        token=opted_out.token,
        by=admin_erin,
        push_enabled=False,
    )

    test = winner_pick(campaign_id=campaign.pk, now=T0)
    remainder = _send(test.remainder_dispatch_id)

    assert pushsim.state.count(moved.token) == 1
    assert pushsim.state.count(phones[to.pk].token) == 1  # the rest profile's own phone gets the winner
    rows = Delivery.objects.filter(dispatch=remainder)
    assert rows.get(device_id=moved.pk).profile_id == to.pk
    assert (rows.get(device_id=moved.pk).status, rows.get(device_id=moved.pk).reason) == ("skipped", "sent_in_sample")
    assert rows.get(device_id=opted_out.pk).reason == "not_opted_in"
    assert reason_label("sent_in_sample")
    assert remainder.skipped == rows.filter(status="skipped").count()
    assert remainder.total == rows.count()
    received = {}
    for r in pushsim.state.recent(limit=1000):
        received[r["token"]] = received.get(r["token"], 0) + 1
    assert set(received.values()) == {1}


def _delete_in_admin(client, device, by):
    client.force_login(by)
    client.post(reverse("admin:delivery_device_delete", args=[device.pk]), {"post": "yes"})


def _delete_selected_in_admin(client, device, by):
    client.force_login(by)
    client.post(
        reverse("admin:delivery_device_changelist"),
        {"action": "delete_selected", "_selected_action": [device.pk], "post": "yes"},
    )


def _delete_its_profile(client, device, by):
    profiles_delete(profile_ids=[device.profile_id], by=by)


def _delete_in_bulk(client, device, by):
    Device.objects.filter(app_id=device.app_id, token=device.token).delete()


@pytest.mark.parametrize(
    "delete",
    [_delete_in_admin, _delete_selected_in_admin, _delete_its_profile, _delete_in_bulk],
    ids=lambda f: f.__name__,
)
def test_a_phone_deleted_after_the_sample_and_registered_again_in_the_rest_gets_the_campaign_once(
    client, shop, contents, manager_alice, approver_bob, admin_erin, pushsim, delete
):
    """A phone the sample reached whose device was deleted (in the admin, with its profile, by a bulk
    deletion) and that the app registered again, token unchanged, under a profile of the rest, is a
    new device: the rest knows it by its token and leaves it out, its row saying why."""
    phones = _phones(80, shop)
    settings = WinnerInput(sample_share=40, wait_minutes=0)
    campaign = _approve(_campaign(manager_alice, shop, contents, winner=settings), manager_alice, approver_bob)
    sample = _sample(campaign)
    access_grant(obj=shop, to=admin_erin, by=None)
    reached = phones[Delivery.objects.filter(dispatch=sample, status="accepted").order_by("id")[0].profile_id]
    sent_profiles = set(Delivery.objects.filter(dispatch=sample).values_list("profile_id", flat=True))
    rest = [
        pk
        for pk in phones
        if pk not in sent_profiles and variant_for(pk, salt=campaign.pk, variants=sample.variants, holdout_share=10)
    ]
    assert pushsim.state.count(reached.token) == 1

    delete(client, reached, admin_erin)
    assert not Device.objects.filter(pk=reached.pk).exists()
    to = ProfileFactory._meta.model.objects.get(pk=rest[0])
    again, created = device_register(
        app_id=shop.pk, external_id=to.external_id, platform=reached.platform, token=reached.token, by=admin_erin
    )
    assert created and again.pk != reached.pk

    test = winner_pick(campaign_id=campaign.pk, now=T0)
    remainder = _send(test.remainder_dispatch_id)

    assert pushsim.state.count(reached.token) == 1
    assert pushsim.state.count(phones[to.pk].token) == 1  # the rest profile's own phone gets the winner
    row = Delivery.objects.get(dispatch=remainder, device_id=again.pk)
    assert (row.profile_id, row.status, row.reason) == (to.pk, "skipped", "sent_in_sample")
    assert remainder.skipped == Delivery.objects.filter(dispatch=remainder, status="skipped").count()


def test_an_approver_who_set_the_winner_mode_cannot_approve_the_campaign(shop, contents, manager_alice, approver_bob):
    """Winner mode decides what the rest of the audience gets, and the approval covers it: an
    approver who turned it on (or changed it) on a colleague's campaign leaves the decision to another."""
    from django.core.exceptions import PermissionDenied

    from tests.factories import UserFactory

    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    access_grant(obj=shop, to=approver_zoe, by=None)
    campaign = _campaign(manager_alice, shop, contents)
    campaign_winner_set(campaign_id=campaign.pk, by=approver_bob, settings=WINNER)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 - dt.timedelta(hours=1))
    campaign_approve(campaign_id=campaign.pk, by=approver_zoe, now=T0 - dt.timedelta(hours=1))


def test_an_approver_who_changed_the_goal_the_winner_is_picked_by_cannot_approve_the_campaign(
    shop, contents, manager_alice, approver_bob
):
    """With the conversion rate as winner mode's metric, the goal decides what the rest get and the
    approval covers it: an approver who changed it leaves the decision to another."""
    from django.core.exceptions import PermissionDenied

    from campaigns.services.conversions import campaign_conversion_set
    from tests.factories import UserFactory

    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    access_grant(obj=shop, to=approver_zoe, by=None)
    campaign = _campaign(manager_alice, shop, contents)
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="purchase")
    settings = WinnerInput(sample_share=40, wait_minutes=60, metric="conversion_rate", confidence=90)
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=settings)
    campaign_conversion_set(campaign_id=campaign.pk, by=approver_bob, event="signup")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 - dt.timedelta(hours=1))
    campaign_approve(campaign_id=campaign.pk, by=approver_zoe, now=T0 - dt.timedelta(hours=1))


CONVERSION_WINNER = WinnerInput(sample_share=40, wait_minutes=60, metric="conversion_rate", confidence=90)


def _goal_picked(manager, approver, shop, contents, *, settings=CONVERSION_WINNER):
    """An approved campaign whose winner mode picks by the rate of its goal, 'purchase'."""
    campaign = _campaign(manager, shop, contents)
    campaign_conversion_set(campaign_id=campaign.pk, by=manager, event="purchase")
    campaign_winner_set(campaign_id=campaign.pk, by=manager, settings=settings)
    return _approve(Campaign.objects.get(pk=campaign.pk), manager, approver)


def test_a_goal_change_of_a_campaign_whose_winner_is_picked_by_it_is_a_pending_revision(
    shop, contents, manager_alice, approver_bob, pushsim
):
    """The approval covers the goal its winner is picked by: a change of it is a revision like any
    other covered edit; the approved version sends, and its winner is picked by the approved goal."""
    from accounts.models import AuditEvent

    _phones(150, shop)
    campaign = _goal_picked(manager_alice, approver_bob, shop, contents)
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="signup")
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.has_pending_revision
    assert campaign.approved().winner["goal"]["event"] == "purchase"
    line = AuditEvent.objects.filter(object_id=str(campaign.pk)).latest("id")
    assert line.action == "campaign_revision_edited"
    # The approved version keeps sending, and its winner is picked by the approved goal.
    sample = _sample(campaign)
    accepted = Delivery.objects.filter(dispatch=sample, status="accepted")
    finished = accepted.first().finished_at
    for row in accepted.filter(variant=2):
        Event.objects.create(profile_id=row.profile_id, name="purchase", occurred_at=finished + dt.timedelta(minutes=9))
    for row in accepted.filter(variant=1):
        Event.objects.create(profile_id=row.profile_id, name="signup", occurred_at=finished + dt.timedelta(minutes=9))
    test = winner_pick(campaign_id=campaign.pk, now=T0 + dt.timedelta(hours=1))
    assert (test.outcome, test.winner) == ("winner", 2), test.reason
    # The revision is submitted and approved as any other.
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(TransitionError, match="waiting for approval"):
        campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="open_app")


def test_the_goal_a_winner_is_picked_by_cannot_be_changed_in_review(shop, contents, manager_alice, approver_bob):
    campaign = _campaign(manager_alice, shop, contents)
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="purchase")
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=CONVERSION_WINNER)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(TransitionError, match="is in review: it cannot be edited"):
        campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="signup")
    campaign = campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 - dt.timedelta(hours=1))
    assert Campaign.objects.get(pk=campaign.pk).approved().winner["goal"]["event"] == "purchase"


@pytest.mark.parametrize("winner", [None, WINNER], ids=["no winner mode", "open rate"])
def test_a_goal_no_winner_is_picked_by_stays_a_report_setting(shop, contents, manager_alice, approver_bob, winner):
    from accounts.models import AuditEvent

    campaign = _campaign(manager_alice, shop, contents, winner=winner)
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="purchase")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="signup")  # in review
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 - dt.timedelta(hours=1))
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="open_app")  # scheduled
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.status == Campaign.Status.SCHEDULED and not campaign.has_pending_revision
    assert campaign.conversion_event == "open_app"
    line = AuditEvent.objects.filter(object_id=str(campaign.pk)).latest("id")
    assert line.action == "campaign_conversion_set"


def test_the_pick_waits_for_the_late_answers_of_a_sample_the_watchdog_ended_unknown(
    shop, contents, manager_alice, approver_bob
):
    """A slow worker's lease ran out while the provider held the sample's pushes: the watchdog ended
    its rows unknown and the sample failed (none accepted), with no wait to sit out. The pick does
    not judge the variants on none accepted while the worker's answers may still come (a send task's
    time): it waits for them, and picks on what they say."""
    from delivery.services.claims import Result, deliveries_claim, deliveries_write_back
    from delivery.services.dispatches import deliveries_expire_leases

    _phones(40, shop)
    campaign = _approve(
        _campaign(manager_alice, shop, contents, winner=WinnerInput(sample_share=40, wait_minutes=0)),
        manager_alice,
        approver_bob,
    )
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)
    claimed = deliveries_claim(occurrence.dispatch_id, limit=1000, now=T0)
    expired_at = T0 + dt.timedelta(minutes=5)
    assert deliveries_expire_leases(now=expired_at) == len(claimed) > 0
    _ended_on_the_tests_clock(occurrence.dispatch_id, expired_at)
    sample = Dispatch.objects.get(pk=occurrence.dispatch_id)
    assert (sample.status, sample.accepted) == ("failed", 0)

    assert campaigns_tick(now=expired_at + dt.timedelta(minutes=1))["winners"] == 0
    assert WinnerTest.objects.get(campaign=campaign).outcome == "waiting"

    deliveries_write_back(
        sample.pk,
        [Result(row.id, "accepted", provider_id=f"late-{row.id}") for row in claimed],
        now=expired_at + dt.timedelta(minutes=1),
        platforms={row.id: row.platform for row in claimed},
        claims={row.id: row.attempts for row in claimed},
    )
    assert campaigns_tick(now=expired_at + dt.timedelta(minutes=2))["winners"] == 1
    test = WinnerTest.objects.get(campaign=campaign)
    assert sum(f["trials"] for f in test.figures) == len(claimed)


def test_the_pick_of_a_sample_whose_late_answers_never_came_waits_a_send_tasks_time_at_most(
    shop, contents, manager_alice, approver_bob, settings
):
    from delivery.services.claims import deliveries_claim
    from delivery.services.dispatches import deliveries_expire_leases

    _phones(20, shop)
    campaign = _approve(
        _campaign(manager_alice, shop, contents, winner=WinnerInput(sample_share=40, wait_minutes=0)),
        manager_alice,
        approver_bob,
    )
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)
    assert deliveries_claim(occurrence.dispatch_id, limit=1000, now=T0)
    assert deliveries_expire_leases(now=T0)
    _ended_on_the_tests_clock(occurrence.dispatch_id, T0)
    task = settings.PUSHDESK_SEND_TASK_SECONDS + settings.PUSHDESK_SEND_LEASE_SECONDS
    assert campaigns_tick(now=T0 + dt.timedelta(seconds=task - 1))["winners"] == 0
    assert campaigns_tick(now=T0 + dt.timedelta(seconds=task + 1))["winners"] == 1
    assert WinnerTest.objects.get(campaign=campaign).outcome == "fallback"  # none accepted: no winner


def _ended_on_the_tests_clock(dispatch_id: int, when: dt.datetime) -> None:
    """The watchdog stamps the rows it ends by the database's clock; this test's runs at ``when``."""
    Delivery.objects.filter(dispatch_id=dispatch_id, reason="lease_expired").update(finished_at=when)
