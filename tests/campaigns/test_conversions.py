"""Conversions of a campaign: the goal set through its service and the admin form, attribution only
inside the window after the anchor, property conditions, per-variant rates with Wilson intervals,
the holdout and each variant's uplift; the report page, CSV and API; a Viewer changes nothing."""

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from accounts.models import AuditEvent
from audiences.models import Event
from campaigns.models import Campaign
from campaigns.reports import campaign_report
from campaigns.services.conversions import campaign_conversion_set
from campaigns.services.lifecycle import campaign_approve, campaign_submit
from delivery.conversions import difference_interval, wilson_interval
from delivery.models import Delivery, Dispatch
from tests.campaigns.helpers import change_form
from tests.factories import DeviceFactory, EventFactory, ProfileFactory

T0 = dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def sent(make_campaign):
    """A campaign with a dispatch, and a maker of its deliveries (accepted at T0 unless told)."""
    campaign = make_campaign()
    dispatch = Dispatch.objects.create(
        app=campaign.app,
        kind="campaign",
        source_id=campaign.pk,
        content_spec=campaign.content.spec(),
        created_at=T0 - HOUR,  # before its rows were settled, as a real send
    )

    def deliver(*, variant=None, status="accepted", finished_at=T0, opened_at=None, profile=None):
        profile = profile or ProfileFactory()
        Delivery.objects.create(
            dispatch=dispatch,
            device=DeviceFactory(profile=profile, app=campaign.app),
            profile=profile,
            variant=variant,
            status=status,
            reason="holdout" if variant == 0 else "",
            finished_at=finished_at,
            opened_at=opened_at,
        )
        return profile

    return campaign, deliver


def _goal(campaign, by, **fields):
    return campaign_conversion_set(campaign_id=campaign.pk, by=by, **{"event": "purchase", **fields})


def _conversions(campaign):
    return campaign_report(Campaign.objects.get(pk=campaign.pk))["conversions"]


def reached_and_converted(campaign, ids) -> dict:
    """The report's profiles reached and converted per variant (0: the holdout) over dispatches ``ids``."""
    from delivery.conversions import Goal, conversions_by
    from delivery.kept import Scope

    return conversions_by(
        dispatch_ids=ids,
        goal=Goal.of(campaign),
        group="variant",
        group_key="variant",
        scope=Scope.campaign(campaign.pk),
    )


def _converted_per_variant(campaign, ids) -> dict:
    """The report's conversions per variant (0: the holdout) over dispatches ``ids``."""
    return {variant: figures["converted"] for variant, figures in reached_and_converted(campaign, ids).items()}


def _recounted_per_variant(campaign, ids) -> dict:
    """The same from nothing: the conversions' statement itself, every row joined with every event."""
    from django.db import connection

    from delivery.conversions import Goal, converted_select

    sql, params = converted_select(ids, goal=Goal.of(campaign), group="variant")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT grp, count(*) FROM ({sql}) c GROUP BY grp", params)  # noqa: S608 (the ORM's SQL)
        return dict(cursor.fetchall())


def _grown_or_counted(campaign, ids, expected_way: str) -> dict:
    """The conversions per variant over dispatches ``ids``, having checked how the view reached them
    (``kept``, ``grown``, ``whole``, or ``grown+whole`` when a growth's check failed) and that they
    are those of a count from nothing."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        variants = _converted_per_variant(campaign, ids)
    counts = [q["sql"] for q in captured.captured_queries if "json_agg" in q["sql"]]
    ways = ["grown" if "NOT EXISTS" in sql else "whole" for sql in counts]
    assert ("+".join(ways) or "kept") == expected_way
    assert variants == {variant: _recounted_per_variant(campaign, ids).get(variant, 0) for variant in (0, 1, 2)}
    return variants


def test_a_conversion_counts_only_inside_the_window_after_acceptance(sent, manager_alice):
    campaign, deliver = sent
    _goal(campaign, manager_alice, window_hours=24)
    inside = [deliver() for _ in range(3)]
    EventFactory(profile=inside[0], name="purchase", occurred_at=T0)  # at the anchor
    EventFactory(profile=inside[1], name="purchase", occurred_at=T0 + 5 * HOUR)
    EventFactory(profile=inside[2], name="purchase", occurred_at=T0 + 24 * HOUR - dt.timedelta(seconds=1))
    before, after, other_event, not_accepted = deliver(), deliver(), deliver(), deliver(status="failed")
    EventFactory(profile=before, name="purchase", occurred_at=T0 - dt.timedelta(seconds=1))
    EventFactory(profile=after, name="purchase", occurred_at=T0 + 24 * HOUR)
    EventFactory(profile=other_event, name="app_open", occurred_at=T0 + HOUR)
    EventFactory(profile=not_accepted, name="purchase", occurred_at=T0 + HOUR)
    overall = _conversions(campaign)["overall"]
    assert (overall["reached"], overall["conversions"]) == (6, 3)  # the failed delivery reached nobody
    assert overall["conversion_rate"] == 0.5


def test_a_profile_converting_twice_or_on_two_devices_counts_once(sent, manager_alice):
    campaign, deliver = sent
    _goal(campaign, manager_alice)
    profile = deliver()
    deliver(profile=profile, finished_at=T0 + HOUR)  # a second device
    EventFactory.create_batch(2, profile=profile, name="purchase", occurred_at=T0 + 2 * HOUR)
    overall = _conversions(campaign)["overall"]
    assert (overall["reached"], overall["conversions"]) == (1, 1)


def test_the_opened_anchor_counts_from_the_open_and_only_opened_pushes(sent, manager_alice):
    campaign, deliver = sent
    _goal(campaign, manager_alice, window_hours=2, anchor="opened")
    opened_late = deliver(opened_at=T0 + 10 * HOUR)
    EventFactory(profile=opened_late, name="purchase", occurred_at=T0 + 11 * HOUR)  # after acceptance's window
    bought_before_opening = deliver(opened_at=T0 + 10 * HOUR)
    EventFactory(profile=bought_before_opening, name="purchase", occurred_at=T0 + HOUR)
    never_opened = deliver()
    EventFactory(profile=never_opened, name="purchase", occurred_at=T0 + HOUR)
    overall = _conversions(campaign)["overall"]
    assert (overall["reached"], overall["conversions"]) == (3, 1)
    _goal(campaign, manager_alice, window_hours=2, anchor="accepted")
    overall = _conversions(campaign)["overall"]
    assert (overall["reached"], overall["conversions"]) == (3, 2)


def test_property_conditions_filter_the_conversion_events(sent, manager_alice):
    campaign, deliver = sent
    _goal(
        campaign,
        manager_alice,
        where=[
            {"property": "amount", "type": "number", "op": "gte", "value": 50},
            {"property": "currency", "type": "string", "op": "in", "value": ["EUR", "USD"]},
        ],
    )
    big, small, other_currency, no_amount = deliver(), deliver(), deliver(), deliver()
    EventFactory(profile=big, name="purchase", occurred_at=T0 + HOUR, properties={"amount": 80, "currency": "EUR"})
    EventFactory(profile=small, name="purchase", occurred_at=T0 + HOUR, properties={"amount": 20, "currency": "EUR"})
    EventFactory(
        profile=other_currency, name="purchase", occurred_at=T0 + HOUR, properties={"amount": 90, "currency": "GBP"}
    )
    EventFactory(profile=no_amount, name="purchase", occurred_at=T0 + HOUR, properties={"currency": "USD"})
    assert _conversions(campaign)["overall"]["conversions"] == 1


def test_per_variant_rates_intervals_and_uplift_against_the_holdout(sent, manager_alice):
    campaign, deliver = sent
    _goal(campaign, manager_alice)
    # A: 20 reached, 8 convert; B: 20 reached, 2 convert; holdout: 10 held out, 2 convert.
    for variant, reached, converting in ((1, 20, 8), (2, 20, 2), (0, 10, 2)):
        for index in range(reached):
            status = "skipped" if variant == 0 else "accepted"
            profile = deliver(variant=variant, status=status)
            if index < converting:
                EventFactory(profile=profile, name="purchase", occurred_at=T0 + HOUR)
    deliver(variant=1, status="failed")  # reached nobody
    conversions = _conversions(campaign)
    a, b = conversions["variants"]
    assert (a["variant"], a["reached"], a["conversions"], a["conversion_rate"]) == ("A", 20, 8, 0.4)
    assert (b["variant"], b["reached"], b["conversions"], b["conversion_rate"]) == ("B", 20, 2, 0.1)
    assert conversions["holdout"]["reached"] == 10 and conversions["holdout"]["conversion_rate"] == 0.2
    assert conversions["overall"]["reached"] == 40 and conversions["overall"]["conversions"] == 10
    low, high = wilson_interval(8, 20)
    assert (a["rate_low"], a["rate_high"]) == (round(low, 4), round(high, 4))
    assert a["rate_low"] == pytest.approx(0.2188, abs=1e-4) and a["rate_high"] == pytest.approx(0.6134, abs=1e-4)
    assert a["uplift"] == 1.0 and a["difference"] == 0.2  # 40% against 20%: twice the rate
    assert b["uplift"] == -0.5 and b["difference"] == -0.1
    low, high = difference_interval((8, 20), (2, 10))
    assert (a["difference_low"], a["difference_high"]) == (round(low, 4), round(high, 4))
    assert a["difference_low"] < 0 < a["difference_high"]  # 20 and 10 profiles: not enough to be sure


def test_the_holdout_is_anchored_when_its_row_was_settled_whatever_the_anchor(sent, manager_alice):
    campaign, deliver = sent
    _goal(campaign, manager_alice, anchor="opened", window_hours=1)
    held = deliver(variant=0, status="skipped", finished_at=T0)
    EventFactory(profile=held, name="purchase", occurred_at=T0 + dt.timedelta(minutes=30))
    late = deliver(variant=0, status="skipped", finished_at=T0)
    EventFactory(profile=late, name="purchase", occurred_at=T0 + 2 * HOUR)
    holdout = _conversions(campaign)["holdout"]
    assert (holdout["reached"], holdout["conversions"]) == (2, 1)


def test_wilson_interval_matches_the_formula_and_stays_within_0_and_1():
    assert wilson_interval(0, 0) is None
    low, high = wilson_interval(0, 10)
    assert low == 0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == pytest.approx(1) and low == pytest.approx(0.7225, abs=1e-4)
    low, high = wilson_interval(120, 1000)
    assert (low, high) == (pytest.approx(0.1013, abs=1e-4), pytest.approx(0.1416, abs=1e-4))


def test_no_goal_no_conversions_and_an_empty_event_clears_the_goal(sent, manager_alice):
    campaign, deliver = sent
    deliver()
    assert _conversions(campaign) is None
    _goal(campaign, manager_alice, where=[{"property": "amount", "type": "number", "op": "gt", "value": 1}])
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="")
    campaign.refresh_from_db()
    assert campaign.conversion_event == "" and campaign.conversion_where == []
    assert _conversions(campaign) is None
    assert AuditEvent.objects.filter(action="campaign_conversion_set").count() == 2


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"window_hours": 0}, "conversion_window_hours", "from 1 to 2160"),
        ({"anchor": "clicked"}, "conversion_anchor", "Use one of accepted, opened"),
        ({"event": "p" * 101}, "conversion_event", "at most 100 characters"),
        ({"where": [{"property": "amount", "type": "number", "op": "gte", "value": "a lot"}]}, "conversion_where", ""),
        (
            {"where": [{"property": "amount", "type": "number", "op": "gte", "value": float("nan")}]},
            "conversion_where",
            "condition [0].value: expected a finite number",
        ),
        (
            {"where": [{"property": "amount", "type": "number", "op": "between", "value": [1, 10**400]}]},
            "conversion_where",
            "condition [0].value[1]: expected a finite number",
        ),
        (
            {"where": [{"property": "amount", "type": "number", "op": "starts_with", "value": 1}]},
            "conversion_where",
            "",
        ),
        (
            {"event": "", "where": [{"property": "a", "type": "string", "op": "eq", "value": "b"}]},
            "conversion_event",
            "",
        ),
    ],
)
def test_a_goal_that_breaks_a_rule_is_refused_naming_the_field(make_campaign, manager_alice, fields, field, message):
    campaign = make_campaign()
    with pytest.raises(ValidationError) as caught:
        _goal(campaign, manager_alice, **fields)
    assert field in caught.value.message_dict
    assert message in " ".join(caught.value.message_dict[field])
    assert Campaign.objects.get(pk=campaign.pk).conversion_event == ""


def test_the_goal_is_a_report_setting_outside_the_approval(make_campaign, manager_alice, approver_bob):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    approved = Campaign.objects.get(pk=campaign.pk)
    _goal(approved, manager_alice, window_hours=48)
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.conversion_window_hours == 48
    assert campaign.fingerprint() == approved.approved_fingerprint and not campaign.has_pending_revision


def test_a_viewer_or_an_outsider_cannot_set_the_goal(make_campaign, viewer_carol, outsider_dave):
    from django.http import Http404

    campaign = make_campaign()
    with pytest.raises(PermissionDenied):
        _goal(campaign, viewer_carol)
    with pytest.raises(Http404):
        _goal(campaign, outsider_dave)
    assert Campaign.objects.get(pk=campaign.pk).conversion_event == ""


def _form(campaign, **conversion):
    data = change_form(campaign, conversion_event="", conversion_window_hours=24, conversion_anchor="accepted")
    for row in (1, 2, 3):
        data.update(
            {f"conversion_type_{row}": "string", f"conversion_op_{row}": "eq", f"conversion_property_{row}": ""}
        )
    data.update(conversion)
    return data


def test_manager_sets_the_goal_with_the_campaign_form(client, make_campaign, manager_alice):
    campaign = make_campaign()
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'name="conversion_event"' in page and 'name="conversion_property_3"' in page
    response = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/",
        _form(
            campaign,
            conversion_event="purchase",
            conversion_window_hours=48,
            conversion_anchor="opened",
            conversion_property_1="amount",
            conversion_type_1="number",
            conversion_op_1="between",
            conversion_value_1="10, 99.5",
            conversion_property_2="first",
            conversion_type_2="boolean",
            conversion_value_2="true",
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert (campaign.conversion_event, campaign.conversion_window_hours, campaign.conversion_anchor) == (
        "purchase",
        48,
        "opened",
    )
    assert campaign.conversion_where == [
        {"property": "amount", "type": "number", "op": "between", "value": [10, 99.5]},
        {"property": "first", "type": "boolean", "op": "eq", "value": True},
    ]
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'value="10, 99.5"' in page  # shown back as typed


@pytest.mark.parametrize(
    ("op", "typed", "message"),
    [
        ("gte", "plenty", "&#x27;plenty&#x27; is not a number."),
        ("gte", "nan", "&#x27;nan&#x27; is not a finite number."),
        ("gte", "inf", "&#x27;inf&#x27; is not a finite number."),
        ("gte", "1e400", "&#x27;1e400&#x27; is not a finite number."),
        ("between", "1, -Infinity", "&#x27;-Infinity&#x27; is not a finite number."),
        # Other scripts' digits: float() reads "٣" as 3, which no other number field of the product takes.
        ("gte", "\u0663", "&#x27;\u0663&#x27; is not a number."),
        ("between", "1, \uff12.5", "&#x27;\uff12.5&#x27; is not a number."),
        # float() reads an underscore between digits ("1_0.5" is 10.5), which no other number field takes.
        ("gte", "1_000", "&#x27;1_000&#x27; is not a number."),
        ("between", "1, 1_0.5", "&#x27;1_0.5&#x27; is not a number."),
    ],
)
def test_a_broken_goal_is_answered_on_the_form(client, make_campaign, manager_alice, op, typed, message):
    campaign = make_campaign()
    client.force_login(manager_alice)
    response = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/",
        _form(
            campaign,
            conversion_event="purchase",
            conversion_property_1="amount",
            conversion_type_1="number",
            conversion_op_1=op,
            conversion_value_1=typed,
        ),
    )
    assert response.status_code == 200
    assert f"Condition 1 (amount): {message}" in response.content.decode()
    assert Campaign.objects.get(pk=campaign.pk).conversion_event == ""


def test_a_viewer_sees_the_goal_but_cannot_post_it_in_the_admin(client, make_campaign, manager_alice, viewer_carol):
    campaign = make_campaign()
    _goal(campaign, manager_alice, window_hours=12)
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'name="conversion_event"' not in page
    assert "purchase within 12 h after the push was accepted by apple or google" in page
    response = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/", _form(campaign, conversion_event="signup")
    )
    assert response.status_code == 403
    assert Campaign.objects.get(pk=campaign.pk).conversion_event == "purchase"


def test_report_page_csv_and_api_show_conversions_per_variant_and_the_holdout(
    client, sent, manager_alice, manager_mallory, viewer_carol, api_key_for
):
    from tests.factories import UserFactory

    campaign, deliver = sent
    _goal(campaign, manager_alice)
    for variant, reached, converting in ((1, 4, 2), (2, 4, 1), (0, 4, 1)):
        for index in range(reached):
            profile = deliver(variant=variant, status="skipped" if variant == 0 else "accepted")
            if index < converting:
                EventFactory(profile=profile, name="purchase", occurred_at=T0 + HOUR)
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'id="campaign-conversions"' in page
    assert '<tr data-group="A"><th>A</th><td>4</td><td>2</td><td>50.0%</td>' in page
    assert "+25.0 pts" in page and "+100.0%" in page  # A: 50% against the holdout's 25%
    assert '<tr data-group="holdout"><th>holdout</th><td>4</td><td>1</td><td>25.0%</td>' in page
    csv_text = client.get(f"/admin/campaigns/campaign/{campaign.pk}/report.csv").content.decode()
    assert "conversion_event,window_hours,anchor,conditions\r\npurchase,24,accepted,0" in csv_text
    assert "A,4,2,0.5,0.15,0.85,1.0,0.25," in csv_text
    assert "holdout,4,1,0.25,0.0456,0.6994,,,," in csv_text
    api = api_key_for(manager_mallory, scopes=["read"])
    report = api.get(f"/api/v1/campaigns/{campaign.pk}/report/").json()["conversions"]
    assert report["goal"] == {"event": "purchase", "where": [], "window_hours": 24, "anchor": "accepted"}
    assert report["variants"][1]["variant"] == "B" and report["variants"][1]["uplift"] == 0.0
    assert report["holdout"]["conversions"] == 1
    detail = api.get(f"/api/v1/campaigns/{campaign.pk}/").json()
    assert detail["conversion"] == {"event": "purchase", "where": [], "window_hours": 24, "anchor": "accepted"}
    stranger = api_key_for(UserFactory(username="manager_stranger", role="Manager"), scopes=["read"])
    assert stranger.get(f"/api/v1/campaigns/{campaign.pk}/report/").status_code == 404


def test_the_reached_profiles_and_conversions_are_kept_until_the_counters_or_goal_events_move(sent, manager_alice):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from campaigns.reports import campaign_conversions

    campaign, deliver = sent
    _goal(campaign, manager_alice)
    buyer = deliver(variant=1)
    for _ in range(4):
        deliver(variant=1)
    campaign = Campaign.objects.get(pk=campaign.pk)
    ids = list(Dispatch.objects.values_list("pk", flat=True))

    def counted():
        with CaptureQueriesContext(connection) as captured:
            figures = campaign_conversions(campaign, dispatch_ids=ids)["variants"][0]
        grouped = [q["sql"] for q in captured.captured_queries if "GROUP BY" in q["sql"]]
        return (figures["reached"], figures["conversions"]), grouped

    figures, grouped = counted()
    assert figures == (5, 0) and len(grouped) == 2  # the reached profiles, then the conversions
    assert counted() == ((5, 0), [])  # a repeat view counts nothing
    EventFactory(profile=buyer, name="purchase", occurred_at=T0 + HOUR)
    figures, grouped = counted()
    assert figures == (5, 1) and len(grouped) == 1 and "audiences_event" in grouped[0]
    EventFactory(profile=buyer, name="app_open", occurred_at=T0 + HOUR)  # not the goal's event
    assert counted() == ((5, 1), [])
    # A goal event posted late, whoever's, has them counted again; so has one deleted.
    late = EventFactory(profile=ProfileFactory(), name="purchase", occurred_at=T0 + 2 * HOUR)
    figures, grouped = counted()
    assert figures == (5, 1) and len(grouped) == 1
    late.delete()
    Event.objects.filter(profile=buyer, name="purchase").delete()
    assert counted()[0] == (5, 0)  # the goal's events as they were at the first view: its figure
    EventFactory(profile=buyer, name="purchase", occurred_at=T0 + HOUR)
    assert counted()[0] == (5, 1)
    deliver(variant=1)
    Dispatch.objects.filter(pk__in=ids).update(accepted=6)  # as the send tasks record an outcome
    figures, grouped = counted()
    assert figures == (6, 1) and len(grouped) == 2
    assert counted() == ((6, 1), [])


def test_with_the_opened_anchor_an_open_has_the_kept_conversions_counted_again(sent, manager_alice):
    from delivery.conversions import Goal, conversions_by

    campaign, deliver = sent
    _goal(campaign, manager_alice, window_hours=2, anchor="opened")
    buyer = deliver(variant=1)
    EventFactory(profile=buyer, name="purchase", occurred_at=T0 + HOUR)
    campaign = Campaign.objects.get(pk=campaign.pk)
    ids = list(Dispatch.objects.values_list("pk", flat=True))

    def converted():
        figures = conversions_by(dispatch_ids=ids, goal=Goal.of(campaign), group="variant", group_key="variant")
        return figures[1]["converted"]

    assert converted() == 0  # not opened: it cannot convert
    Delivery.objects.filter(profile=buyer).update(opened_at=T0 + dt.timedelta(minutes=30))
    Dispatch.objects.filter(pk__in=ids).update(opened=1)  # as the open is recorded
    assert converted() == 1


def test_duplicating_a_campaign_keeps_its_goal(make_campaign, manager_alice):
    from campaigns.services.lifecycle import campaign_duplicate

    campaign = make_campaign()
    where = [{"property": "amount", "type": "number", "op": "gt", "value": 5}]
    _goal(campaign, manager_alice, where=where, window_hours=6, anchor="opened")
    copy = campaign_duplicate(campaign_id=campaign.pk, by=manager_alice)
    copy.refresh_from_db()
    assert (copy.conversion_event, copy.conversion_where, copy.conversion_window_hours, copy.conversion_anchor) == (
        "purchase",
        where,
        6,
        "opened",
    )


@pytest.mark.embedded  # the kept profiles' SQL runs on SQLite too
@pytest.mark.parametrize("through_a_table", [False, True])
def test_the_reports_per_profile_figures_outlive_retention(
    sent, manager_alice, client, admin_erin, monkeypatch, through_a_table
):
    """Retention deletes an old send's rows but keeps the profiles its report counts: the profiles
    per variant, the holdout and the conversions are what they were, each profile still counted once
    though a newer send (whose rows stay) reached it too. A goal set after the rows went counts the
    rows still there only. (A big send's pairs go through a temporary table: the same figures.)"""
    if through_a_table:
        monkeypatch.setattr("delivery.kept.TEMPORARY_FROM_ROWS", 0)
    from delivery.models import KeptProfile
    from delivery.services.rollups import rollup_rebuild
    from operations.services import retention_apply

    campaign, deliver = sent
    _goal(campaign, manager_alice, window_hours=24)
    old = Dispatch.objects.get(source_id=campaign.pk)
    both = deliver(variant=1)  # reached by the old send and the new one, converted after the old
    EventFactory(profile=both, name="purchase", occurred_at=T0 + HOUR)
    deliver(profile=both, variant=1, finished_at=T0 + dt.timedelta(minutes=5))  # a second device
    twice_b = deliver(variant=2)  # converted after the old send only
    EventFactory(profile=twice_b, name="purchase", occurred_at=T0 + 2 * HOUR)
    deliver(variant=2, status="failed")
    held = deliver(variant=0, status="skipped")  # the holdout, converted
    EventFactory(profile=held, name="purchase", occurred_at=T0 + 3 * HOUR)
    later = T0 + dt.timedelta(days=20)
    recent = Dispatch.objects.create(
        app=campaign.app,
        kind="campaign",
        source_id=campaign.pk,
        content_spec=campaign.content.spec(),
        created_at=later - HOUR,
    )
    fresh = ProfileFactory()
    for profile, variant in ((both, 1), (twice_b, 2), (fresh, 2)):
        Delivery.objects.create(dispatch=recent, profile=profile, variant=variant, status="accepted", finished_at=later)
    EventFactory(profile=fresh, name="purchase", occurred_at=later + HOUR)
    Dispatch.objects.filter(pk=old.pk).update(status="done", total=5, finished_at=T0 + HOUR)
    Dispatch.objects.filter(pk=recent.pk).update(status="done", total=3, finished_at=later + HOUR)
    rollup_rebuild(dispatch_ids=[old.pk, recent.pk])

    def figures():
        report = campaign_report(Campaign.objects.get(pk=campaign.pk))
        return (
            {v["variant"]: v["profiles"] for v in report["variants"]},
            report["holdout"],
            report["conversions"],
        )

    before = figures()
    profiles, holdout, conversions = before
    assert profiles == {"A": 1, "B": 3} and holdout == {"profiles": 1}
    assert (conversions["overall"]["reached"], conversions["overall"]["conversions"]) == (3, 3)
    assert [(v["variant"], v["reached"], v["conversions"]) for v in conversions["variants"]] == [
        ("A", 1, 1),
        ("B", 2, 2),
    ]
    assert (conversions["holdout"]["reached"], conversions["holdout"]["conversions"]) == (1, 1)

    assert retention_apply(now=T0 + dt.timedelta(days=190), delivery_days=180)["deliveries"] == 5
    assert not Delivery.objects.filter(dispatch=old).exists()
    assert Delivery.objects.filter(dispatch=recent).count() == 3
    assert KeptProfile.objects.filter(figure__scope=f"campaign:{campaign.pk}").exists()
    assert figures() == before
    client.force_login(admin_erin)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert '<tr data-group="B"><th>B</th><td>2</td><td>2</td><td>100.0%</td>' in page

    # A send still under way adds only the profiles that neither the rows left nor the kept ones hold.
    sending = Dispatch.objects.create(
        app=campaign.app,
        kind="campaign",
        source_id=campaign.pk,
        content_spec=campaign.content.spec(),
        created_at=later,
        status="sending",
        total=3,
    )
    newcomer = ProfileFactory()
    for profile, status in ((both, "accepted"), (newcomer, "accepted"), (ProfileFactory(), "queued")):
        finished = later + HOUR if status == "accepted" else None
        Delivery.objects.create(dispatch=sending, profile=profile, variant=1, status=status, finished_at=finished)
    rollup_rebuild(dispatch_ids=[sending.pk])
    profiles, holdout, conversions = figures()
    assert profiles == {"A": 3, "B": 3} and holdout == {"profiles": 1}
    assert [(v["variant"], v["reached"], v["conversions"]) for v in conversions["variants"]] == [
        ("A", 2, 1),
        ("B", 2, 2),
    ]

    _goal(campaign, manager_alice, window_hours=48)  # after the rows went: the rows left alone
    conversions = figures()[2]
    assert [(v["variant"], v["reached"], v["conversions"]) for v in conversions["variants"]] == [
        ("A", 2, 0),
        ("B", 2, 1),
    ]
    assert conversions["holdout"] is None
    assert figures()[0] == {"A": 3, "B": 3}  # the profiles per variant do not depend on the goal


@pytest.mark.embedded
def test_event_retention_waits_until_the_rows_conversions_are_counted_from_are_gone(sent, manager_alice):
    """Events deleted while a send's rows are kept would take its conversions out of the report:
    retention refuses, deleting nothing. Once the send's rows go in the same run (its converted
    profiles kept first, the events still there), the events may go: the report stays the same."""
    from audiences.models import Event
    from delivery.services.rollups import rollup_rebuild
    from operations.services import RetentionRefused, retention_apply

    campaign, deliver = sent
    _goal(campaign, manager_alice, window_hours=24)
    buyer = deliver(variant=1)
    EventFactory(profile=buyer, name="purchase", occurred_at=T0 + HOUR)
    deliver(variant=1)
    dispatch = Dispatch.objects.get(source_id=campaign.pk)
    Dispatch.objects.filter(pk=dispatch.pk).update(status="done", total=2, finished_at=T0 + HOUR)
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    before = _conversions(campaign)
    assert (before["overall"]["reached"], before["overall"]["conversions"]) == (2, 1)

    later = T0 + dt.timedelta(days=40)
    with pytest.raises(RetentionRefused) as refused:
        retention_apply(now=later, delivery_days=180, event_days=30)
    assert refused.value.problems[1:] == [
        f"The campaign 'Spring sale' (id {campaign.pk}) counts 'purchase' events as conversions of 1 send whose "
        "rows are still kept, the oldest from 2026-11-02: PUSHDESK_RETENTION_EVENT_DAYS=30 would delete events its "
        "report counts (keep events at least PUSHDESK_RETENTION_DELIVERY_DAYS plus its window, 181 days)."
    ]
    assert Delivery.objects.filter(dispatch=dispatch).count() == 2 and Event.objects.count() == 1

    result = retention_apply(now=later, delivery_days=35, event_days=30)
    assert (result["deliveries"], result["events"]) == (2, 1)
    assert _conversions(campaign) == before


def test_new_goal_events_grow_the_kept_conversions_and_any_other_change_counts_them_whole(sent, manager_alice):
    """On PostgreSQL, with the rows' counters unchanged, a view counts only what the events posted
    since the last count convert (a pair no earlier event converted); an event deleted, or one
    committed late below the highest id then counted, has them counted whole. Each figure is the
    one a count from nothing gives."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the conversions are grown on PostgreSQL")
    campaign, deliver = sent
    _goal(campaign, manager_alice, window_hours=24)
    first, second, third = deliver(variant=1), deliver(variant=1), deliver(variant=2)
    holdout = deliver(variant=0, status="skipped")
    campaign = Campaign.objects.get(pk=campaign.pk)
    ids = list(Dispatch.objects.values_list("pk", flat=True))

    def check(expected_way):
        return _grown_or_counted(campaign, ids, expected_way)

    assert check("whole") == {1: 0, 2: 0, 0: 0}
    assert check("kept")[1] == 0
    EventFactory(profile=first, name="purchase", occurred_at=T0 + HOUR)
    assert check("grown")[1] == 1
    EventFactory(profile=first, name="purchase", occurred_at=T0 + 2 * HOUR)  # converted already
    EventFactory(profile=second, name="purchase", occurred_at=T0 + 30 * HOUR)  # past the window
    assert check("grown")[1] == 1
    EventFactory(profile=third, name="purchase", occurred_at=T0 + 3 * HOUR)
    EventFactory(profile=holdout, name="purchase", occurred_at=T0 + 3 * HOUR)
    variants = check("grown")
    assert (variants[1], variants[2], variants[0]) == (1, 1, 1)
    # An event committed late below the highest id counted (another transaction's): counted whole.
    Event.objects.create(id=-1, profile=second, name="purchase", properties={}, occurred_at=T0 + 4 * HOUR)
    assert check("grown+whole")[1] == 2  # the stamps do not add up: counted whole
    Event.objects.filter(profile=first).delete()
    assert check("grown+whole")[1] == 1
    assert check("kept")[1] == 1


def test_opens_grow_the_kept_conversions_with_the_opened_anchor(sent, manager_alice):
    """On PostgreSQL, with the "opened" anchor, a view after opens counts only what the rows opened
    since the latest open then convert, with every event: those past the span counted too, as an
    open's window may reach there. An open committed late (its counter moved, its time not past
    that latest) has them counted whole. Each figure is the one a count from nothing gives."""
    from django.db import connection
    from django.db.models import F

    from delivery.services.rollups import rollup_rebuild

    if connection.vendor != "postgresql":
        pytest.skip("the conversions are grown on PostgreSQL")
    campaign, deliver = sent
    _goal(campaign, manager_alice, window_hours=2, anchor="opened")
    first, second = deliver(variant=1, opened_at=T0 + HOUR), deliver(variant=1)
    third, fourth, fifth = (deliver(variant=2) for _ in range(3))
    holdout = deliver(variant=0, status="skipped")
    campaign = Campaign.objects.get(pk=campaign.pk)
    ids = list(Dispatch.objects.values_list("pk", flat=True))
    EventFactory(profile=first, name="purchase", occurred_at=T0 + 2 * HOUR)
    EventFactory(profile=second, name="purchase", occurred_at=T0 + 5 * HOUR)  # once opened at T0 + 4 h
    EventFactory(profile=third, name="purchase", occurred_at=T0 + 30 * HOUR)  # once opened at T0 + 29 h
    EventFactory(profile=fourth, name="purchase", occurred_at=T0 + 2 * HOUR)  # once opened at T0 + 90 min
    EventFactory(profile=fifth, name="purchase", occurred_at=T0 + 150 * MINUTE)  # once opened at T0 + 2 h
    EventFactory(profile=holdout, name="purchase", occurred_at=T0 + HOUR)  # the holdout's anchor: T0

    def opened(profile, at):  # as an open is recorded: the row, its dispatch's counter, the rollup
        Delivery.objects.filter(profile=profile).update(opened_at=at)
        Dispatch.objects.filter(pk__in=ids).update(opened=F("opened") + 1)
        rollup_rebuild(dispatch_ids=ids)

    def check(expected_way):
        return _grown_or_counted(campaign, ids, expected_way)

    Dispatch.objects.filter(pk__in=ids).update(opened=1)
    rollup_rebuild(dispatch_ids=ids)
    assert check("whole") == {1: 1, 2: 0, 0: 1}
    assert check("kept") == {1: 1, 2: 0, 0: 1}
    opened(fifth, T0 + 2 * HOUR)  # converted by an event counted before
    assert check("grown") == {1: 1, 2: 1, 0: 1}
    opened(second, T0 + 4 * HOUR)  # its window (to T0 + 6 h) reaches past the span counted (to T0 + 3:15)
    assert check("grown") == {1: 2, 2: 1, 0: 1}
    opened(third, T0 + 29 * HOUR)
    EventFactory(profile=second, name="purchase", occurred_at=T0 + 5 * HOUR)  # an event and an open at once
    assert check("grown") == {1: 2, 2: 2, 0: 1}
    assert check("kept")[2] == 2
    opened(fourth, T0 + 90 * MINUTE)  # committed after a later open was counted
    assert check("grown+whole") == {1: 2, 2: 3, 0: 1}  # the opens do not add up: counted whole
    assert check("kept")[2] == 3


@pytest.mark.embedded
def test_a_send_under_way_adds_what_its_rows_convert_beyond_the_settled_ones(sent, manager_alice):
    """The settled dispatches' conversions are kept (and grown by new events); a dispatch still
    sending adds on each view the pairs its rows convert that no settled row does. Each figure is
    the one a count from nothing gives, through new events, new outcomes, and the send settling."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    campaign, deliver = sent
    _goal(campaign, manager_alice, window_hours=2)
    only_settled, both, only_open, queued = (deliver(variant=1) for _ in range(4))
    Dispatch.objects.filter(source_id=campaign.pk).update(status="done", total=4, accepted=4)
    sending = Dispatch.objects.create(
        app=campaign.app,
        kind="campaign",
        source_id=campaign.pk,
        content_spec=campaign.content.spec(),
        status="sending",
        created_at=T0 + 9 * HOUR,
    )
    for profile, finished_at in ((both, T0 + 10 * HOUR), (only_open, T0 + 10 * HOUR), (queued, None)):
        Delivery.objects.create(
            dispatch=sending,
            profile=profile,
            variant=1,
            status="accepted" if finished_at else "queued",
            finished_at=finished_at,
        )
    campaign = Campaign.objects.get(pk=campaign.pk)
    ids = list(Dispatch.objects.values_list("pk", flat=True))

    def check() -> int:
        converted = _converted_per_variant(campaign, ids)[1]
        assert converted == _recounted_per_variant(campaign, ids).get(1, 0)
        return converted

    assert check() == 0
    EventFactory(profile=both, name="purchase", occurred_at=T0 + HOUR)  # the settled row's window
    assert check() == 1
    EventFactory(profile=both, name="purchase", occurred_at=T0 + 11 * HOUR)  # the open row's too: once
    assert check() == 1
    EventFactory(profile=only_open, name="purchase", occurred_at=T0 + 11 * HOUR)
    assert check() == 2
    EventFactory(profile=queued, name="purchase", occurred_at=T0 + 11 * HOUR)  # not reached yet
    assert check() == 2
    Delivery.objects.filter(dispatch=sending, profile=queued).update(status="accepted", finished_at=T0 + 10 * HOUR)
    Dispatch.objects.filter(pk=sending.pk).update(accepted=3)  # as the send tasks record the outcome
    assert check() == 3
    EventFactory(profile=only_settled, name="purchase", occurred_at=T0 + HOUR)
    assert check() == 4
    Dispatch.objects.filter(pk=sending.pk).update(status="done", total=3)  # settled: all counted together
    with CaptureQueriesContext(connection) as captured:
        assert check() == 4
    counts = [q["sql"] for q in captured.captured_queries if "json_agg" in q["sql"]]
    if connection.vendor == "postgresql":  # grown by the send settled since, not counted whole
        assert len(counts) == 1 and "NOT EXISTS" in counts[0]
    EventFactory(profile=queued, name="purchase", occurred_at=T0 + 10 * HOUR + 30 * dt.timedelta(minutes=1))
    assert check() == 4
    Event.objects.filter(profile=both).delete()
    assert check() == 3


@pytest.mark.embedded
def test_old_holdout_rows_without_a_device_are_not_reached_as_the_funnel_says_on_the_same_page(
    client, sent, manager_alice, viewer_carol
):
    """Rows a resolve wrote when the holdout took every profile, with a device or none: the funnel
    leaves those without a device out of reachable, and the conversions' holdout leaves them out of
    reached, so that the page's two figures agree (a figure kept on the send when they were counted
    is not read)."""
    import json
    import re

    from delivery.models import DispatchProfiles
    from delivery.services.rollups import rollup_rebuild

    campaign, deliver = sent
    _goal(campaign, manager_alice, window_hours=24)
    dispatch = Dispatch.objects.get(source_id=campaign.pk)
    for variant in (1, 2, 0):  # each with a phone, all converted
        profile = deliver(variant=variant, status="accepted" if variant else "skipped")
        EventFactory(profile=profile, name="purchase", occurred_at=T0 + HOUR)
    for _ in range(2):  # held out without a device, as written before; converted too
        profile = ProfileFactory()
        Delivery.objects.create(
            dispatch=dispatch, profile=profile, variant=0, status="skipped", reason="holdout", finished_at=T0
        )
        EventFactory(profile=profile, name="purchase", occurred_at=T0 + HOUR)
    Dispatch.objects.filter(pk=dispatch.pk).update(status="done", total=5, finished_at=T0 + HOUR)
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    # What the send kept when the holdout's rows without a device counted as reached.
    DispatchProfiles.objects.create(dispatch=dispatch, name="conversions_reached:variant", counts=[[0, 3], [1, 1]])

    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    funnel = json.loads(re.search(r'"funnel": (\{[^}]*\})', page).group(1))
    assert dict(zip(funnel["labels"], funnel["values"], strict=True))["opted in"] == 3
    assert '<tr data-group="holdout"><th>holdout</th><td>1</td><td>1</td><td>100.0%</td>' in page
    conversions = _conversions(campaign)
    reached = conversions["overall"]["reached"] + conversions["holdout"]["reached"]
    assert (conversions["overall"]["reached"], conversions["holdout"]["reached"], reached) == (2, 1, 3)


def test_the_goals_operators_read_in_words_on_the_form_and_the_read_only_page(
    client, make_campaign, manager_alice, viewer_carol
):
    campaign = make_campaign()
    _goal(campaign, manager_alice, where=[{"property": "plan", "type": "string", "op": "not_in", "value": ["a", "b"]}])
    client.force_login(manager_alice)
    form = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert '<option value="not_in" selected>is none of</option>' in form
    assert '<option value="starts_with">starts with</option>' in form
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert "purchase where plan is none of" in page
