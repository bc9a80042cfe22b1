"""Winner mode in the admin and the API: set with forms and a PUT, refused for API-triggered
campaigns naming the field, reviewed by the approver, its status on the page, the API and the
report; a Viewer (or a role that may not edit campaigns) sets nothing."""

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from accounts.models import ApprovalRequest
from campaigns.api import winner_status_out
from campaigns.models import Campaign, WinnerTest
from campaigns.services.lifecycle import campaign_submit
from campaigns.services.winner import WinnerInput, campaign_winner_set
from delivery.models import Dispatch
from tests.campaigns.helpers import change_form, variants_set


def _with_variants(campaign, by, contents, shares=(45, 45), holdout=10):
    return variants_set(campaign, by, contents, shares, holdout)


def _form(campaign, variants, holdout=10, **winner):
    defaults = {
        "conversion_window_hours": 24,
        "conversion_anchor": "accepted",
        "winner_sample_share": 20,
        "winner_wait_minutes": 120,
        "winner_metric": "open_rate",
        "winner_confidence": 95,
        "winner_fallback": "all_variants",
        "winner_fallback_variant": "",
    }
    return change_form(campaign, variants, holdout, **{**defaults, **winner})


def test_manager_sets_winner_mode_in_the_campaign_form(client, make_campaign, manager_alice, abc):
    campaign = make_campaign(content=abc[0])
    client.force_login(manager_alice)
    response = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/",
        _form(
            campaign,
            [(abc[0], 30), (abc[1], 30), (abc[2], 30)],
            winner_mode="on",
            winner_sample_share=25,
            winner_wait_minutes=90,
            winner_confidence=90,
            winner_fallback="default_variant",
            winner_fallback_variant=2,
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.winner_settings() == {
        "sample_share": 25,
        "wait_minutes": 90,
        "metric": "open_rate",
        "confidence": 90,
        "fallback": "default_variant",
        "fallback_variant": 2,
    }
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'id="winner-status" data-outcome="not_sent"' in page and "a sample of 25% gets the variants" in page
    # Off again, with the variants removed in the same save.
    response = client.post(f"/admin/campaigns/campaign/{campaign.pk}/change/", _form(campaign, [], holdout=0))
    assert response.status_code == 302, response.content.decode()[:3000]
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert not campaign.winner_mode and not campaign.variants.exists()


@pytest.mark.parametrize(
    ("change", "variants", "message"),
    [
        ({"kind": "api_triggered", "segment": ""}, 2, "API-triggered campaigns cannot use winner mode"),
        ({"winner_metric": "conversion_rate"}, 2, "The conversion rate needs a conversion goal"),
        ({"winner_sample_share": 95}, 2, "The sample is a percentage from 1 to 89"),
        ({"winner_fallback": "default_variant"}, 2, "Choose the default variant the rest get, A to J"),
        ({}, 0, "Winner mode: Winner mode needs variants"),
        ({"winner_fallback": "default_variant", "winner_fallback_variant": 3}, 2, "Choose the default variant"),
    ],
)
def test_winner_settings_are_answered_on_the_form(client, make_campaign, manager_alice, abc, change, variants, message):
    campaign = make_campaign(content=abc[0])
    client.force_login(manager_alice)
    pairs = [(abc[0], 45), (abc[1], 45)][:variants]
    data = _form(campaign, pairs, holdout=10 if variants else 0, winner_mode="on", **change)
    response = client.post(f"/admin/campaigns/campaign/{campaign.pk}/change/", data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Campaign.objects.get(pk=campaign.pk).winner_mode


def test_a_viewer_cannot_set_winner_mode_in_the_admin(client, make_campaign, manager_alice, viewer_carol, abc):
    campaign = _with_variants(make_campaign(content=abc[0]), manager_alice, abc[:2])
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'name="winner_mode"' not in page
    response = client.post(
        f"/admin/campaigns/campaign/{campaign.pk}/change/",
        _form(campaign, [(abc[0], 45), (abc[1], 45)], winner_mode="on"),
    )
    assert response.status_code == 403
    assert not Campaign.objects.get(pk=campaign.pk).winner_mode


def test_the_approver_reviews_the_winner_settings(client, make_campaign, manager_alice, approver_bob, abc):
    campaign = _with_variants(make_campaign(content=abc[0]), manager_alice, abc[:2])
    campaign_winner_set(
        campaign_id=campaign.pk,
        by=manager_alice,
        settings=WinnerInput(sample_share=20, wait_minutes=120, fallback="default_variant", fallback_variant=2),
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    page = client.get(f"/admin/accounts/approvalrequest/{ApprovalRequest.objects.get().pk}/review/").content.decode()
    assert "Winner mode" in page
    assert "a sample of 20% gets the variants; after 2 h the winner by open rate" in page
    assert "two-proportion z-test at 95% confidence" in page and "no winner: the default variant B" in page


WINNER_BODY = {"winner_mode": True, "sample_share": 20, "wait_minutes": 60, "metric": "open_rate", "confidence": 95}


def test_winner_mode_is_set_through_the_api_and_shown_in_the_campaign(make_campaign, manager_alice, abc, api_key_for):
    campaign = _with_variants(make_campaign(content=abc[0]), manager_alice, abc[:2])
    api = api_key_for(manager_alice, scopes=["campaigns", "read"])
    body = {**WINNER_BODY, "fallback": "default_variant", "fallback_variant": "B"}
    response = api.put(f"/api/v1/campaigns/{campaign.pk}/winner/", body, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["winner"] == {
        "sample_share": 20,
        "wait_minutes": 60,
        "metric": "open_rate",
        "confidence": 95,
        "fallback": "default_variant",
        "fallback_variant": "B",
    }
    assert response.json()["winner_status"]["outcome"] == "not_sent"
    assert Campaign.objects.get(pk=campaign.pk).winner_fallback_variant == 2
    off = api.put(f"/api/v1/campaigns/{campaign.pk}/winner/", {"winner_mode": False}, format="json")
    assert off.status_code == 200 and off.json()["winner"] is None and off.json()["winner_status"] is None


def test_a_winner_test_not_started_is_shown_as_not_sent_without_a_test_on_the_campaign(
    make_campaign, manager_alice, abc
):
    campaign = _with_variants(make_campaign(content=abc[0]), manager_alice, abc[:2])
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=WinnerInput(metric="open_rate"))
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert winner_status_out(campaign) == {
        "outcome": "not_sent",
        "due_at": None,
        "picked_at": None,
        "winner": None,
        "metric": "open_rate",
        "confidence": 95,
        "reason": "",
        "figures": [],
        "comparisons": [],
        "sample_dispatch": None,
        "remainder_dispatch": None,
    }
    # No test started, and showing it leaves none behind on the campaign for a later reader.
    with pytest.raises(WinnerTest.DoesNotExist):
        campaign.winner_test  # noqa: B018 (the access is what is tested)
    assert not WinnerTest.objects.filter(campaign=campaign).exists()


def test_the_api_refuses_winner_mode_for_an_api_triggered_campaign_naming_the_field(
    make_campaign, manager_alice, abc, api_key_for
):
    campaign = _with_variants(make_campaign(content=abc[0], kind="api_triggered", segment=None), manager_alice, abc[:2])
    api = api_key_for(manager_alice, scopes=["campaigns"])
    response = api.put(f"/api/v1/campaigns/{campaign.pk}/winner/", WINNER_BODY, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "winner_mode"
    assert "API-triggered campaigns cannot use winner mode" in response.json()["detail"]
    wait = api.put(
        f"/api/v1/campaigns/{campaign.pk}/winner/", {**WINNER_BODY, "wait_minutes": -1}, format="json"
    ).json()
    assert wait["errors"][0]["field"] == "wait_minutes"


def test_the_api_refuses_winner_mode_to_roles_and_keys_that_may_not_set_it(
    make_campaign, manager_alice, viewer_carol, abc, api_key_for
):
    from django.contrib.auth.models import Group

    from accounts.services import access_grant, api_key_create
    from tests.factories import UserFactory

    campaign = _with_variants(make_campaign(content=abc[0]), manager_alice, abc[:2])
    url = f"/api/v1/campaigns/{campaign.pk}/winner/"
    read_only = api_key_for(manager_alice, scopes=["read"]).put(url, WINNER_BODY, format="json")
    assert read_only.status_code == 403 and read_only.json()["code"] == "insufficient_scope"
    with pytest.raises((PermissionDenied, ValidationError)):  # a Viewer holds no API key
        api_key_create(user=viewer_carol, name="viewer", scopes=["campaigns"], by=viewer_carol)
    # A key made while its user was a Manager stops working once they are a Viewer (who own none).
    demoted = UserFactory(username="manager_erin", role="Manager")
    access_grant(obj=campaign.app, to=demoted, by=None)
    key = api_key_for(demoted, scopes=["campaigns"])
    demoted.groups.set([Group.objects.get(name="Viewer")])
    refused = key.put(url, WINNER_BODY, format="json")
    assert refused.status_code == 401 and refused.json()["code"] == "account_role"
    stranger = UserFactory(username="manager_stranger", role="Manager")  # no access to the campaign's app
    assert api_key_for(stranger, scopes=["campaigns"]).put(url, WINNER_BODY, format="json").status_code == 404
    assert not Campaign.objects.get(pk=campaign.pk).winner_mode


def test_the_winner_status_is_on_the_page_in_the_api_and_the_report(
    client, make_campaign, manager_alice, viewer_carol, abc, api_key_for
):
    campaign = _with_variants(make_campaign(content=abc[0]), manager_alice, abc[:2])
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=WinnerInput())
    sample = Dispatch.objects.create(
        app=campaign.app, kind="campaign", source_id=campaign.pk, content_spec=abc[0].spec(), status="done"
    )
    rest = Dispatch.objects.create(
        app=campaign.app,
        kind="campaign",
        source_id=campaign.pk,
        content_spec=abc[1].spec(),
        label="Spring sale v1: the rest (winner B)",
        status="done",
        total=80,
        accepted=78,
    )
    due = dt.datetime(2030, 3, 1, 11, 0, tzinfo=dt.UTC)
    test = WinnerTest.objects.create(
        campaign=campaign,
        version=1,
        fingerprint="f",
        settings=Campaign.objects.get(pk=campaign.pk).winner_settings(),
        sample_dispatch=sample,
        due_at=due,
    )
    api = api_key_for(manager_alice, scopes=["read"])
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'data-outcome="waiting"' in page and "the winner is picked at 2030-03-01 11:00 (UTC)" in page
    assert api.get(f"/api/v1/campaigns/{campaign.pk}/").json()["winner_status"]["due_at"] == "2030-03-01T11:00:00Z"
    WinnerTest.objects.filter(pk=test.pk).update(
        outcome="winner",
        winner=2,
        picked_at=due,
        figures=[
            {"variant": "A", "number": 1, "trials": 1200, "successes": 120, "rate": 0.1},
            {"variant": "B", "number": 2, "trials": 1200, "successes": 156, "rate": 0.13},
        ],
        comparisons=[{"variant": "A", "z": 2.303, "p": 0.0213, "significant": True}],
        reason="B won at 95% with a open rate of 13.0%: better than A (z = 2.30, p = 0.0213).",
        remainder_dispatch=rest,
    )
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'data-outcome="winner"' in page and "<strong>Winner: B</strong>" in page
    assert "(picked 2030-03-01 11:00 (UTC) from " in page
    assert "13.0%" in page and "2.303" in page and "0.0213" in page
    assert "Spring sale v1: the rest (winner B)" in page and "78 accepted" in page
    status = api.get(f"/api/v1/campaigns/{campaign.pk}/report/").json()["winner"]
    assert status["outcome"] == "winner" and status["winner"] == "B" and status["remainder_dispatch"] == rest.pk
    assert status["comparisons"] == [{"variant": "A", "z": 2.303, "p": 0.0213, "significant": True}]
    assert status["figures"][1] == {"variant": "B", "trials": 1200, "successes": 156, "rate": 0.13}


@pytest.mark.parametrize("confidence", ["95", 95.0, True, 94])
def test_the_api_refuses_a_confidence_that_is_not_one_of_the_numbers(
    make_campaign, manager_alice, abc, api_key_for, confidence
):
    """The schema's confidence is a whole number (80, 90, 95 or 99): text, a float or a boolean is
    refused as any other typed field is (DRF's choice field took "95" for 95)."""
    campaign = _with_variants(make_campaign(content=abc[0]), manager_alice, abc[:2])
    api = api_key_for(manager_alice, scopes=["campaigns"])
    answer = api.put(
        f"/api/v1/campaigns/{campaign.pk}/winner/", {**WINNER_BODY, "confidence": confidence}, format="json"
    )
    assert answer.status_code == 400, answer.json()
    assert [e["field"] for e in answer.json()["errors"]] == ["confidence"]
    assert not Campaign.objects.get(pk=campaign.pk).winner_mode


def test_the_winner_status_says_its_times_in_the_zone_the_approved_schedule_was_entered_in(
    client, make_campaign, manager_alice, approver_bob, viewer_carol, abc
):
    """A pending revision's zone sends nothing yet: the pick of the sample the approved version sent
    is said in the approved version's zone, as its occurrences and Next send are."""
    from zoneinfo import ZoneInfo

    from campaigns.services.lifecycle import campaign_approve, campaign_update
    from campaigns.services.scheduling import campaign_fire_due

    nine = dt.datetime(2030, 3, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = _with_variants(
        make_campaign(content=abc[0], schedule_kind="at", send_at=nine, time_zone="Europe/Paris"),
        manager_alice,
        abc[:2],
    )
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=WinnerInput(wait_minutes=120))
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=1))
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=nine)
    assert occurrence.dispatch_id is not None
    campaign_update(campaign_id=campaign.pk, by=manager_alice, time_zone="America/New_York")
    assert Campaign.objects.get(pk=campaign.pk).has_pending_revision
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'data-outcome="waiting"' in page and "the winner is picked at 2030-03-01 11:00 (Europe/Paris)" in page


@pytest.mark.presses("campaigns.campaign:transition/stop")
def test_stop_of_a_campaign_waiting_for_its_winner_says_the_rest_gets_nothing(
    client, make_campaign, manager_alice, approver_bob, viewer_carol, abc
):
    """Its sample was sent and the pick is due: stopping it sends nothing to the rest of its audience,
    which the page asking again must say (it said only that a send under way stops)."""
    import re
    from zoneinfo import ZoneInfo

    from campaigns.services.lifecycle import campaign_approve
    from campaigns.services.scheduling import campaign_fire_due

    nine = dt.datetime(2030, 3, 1, 9, 0, tzinfo=ZoneInfo("Europe/Paris"))
    campaign = _with_variants(
        make_campaign(content=abc[0], schedule_kind="at", send_at=nine, time_zone="Europe/Paris"),
        manager_alice,
        abc[:2],
    )
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=WinnerInput(sample_share=20))
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=nine - dt.timedelta(days=1))
    campaign_fire_due(campaign_id=campaign.pk, now=nine)
    url = f"/admin/campaigns/campaign/{campaign.pk}/transition/stop/"

    client.force_login(viewer_carol)
    assert client.post(url).status_code == 403
    client.force_login(manager_alice)
    asked = client.post(url)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", asked.content.decode()))
    assert (
        "Its winner, due to be picked at 2030-03-01 11:00 (Europe/Paris), is not picked: the rest of its audience "
        "(all but the 20% sample) gets nothing." in text
    )
    assert client.post(url, {"confirmed": "yes"}).status_code == 302
    assert Campaign.objects.get(pk=campaign.pk).status == "stopped"


@pytest.mark.parametrize("metric", ["conversion_rate", "open_rate"])
def test_a_goal_saved_on_the_form_is_a_revision_only_while_the_winner_is_picked_by_it(
    client, make_campaign, manager_alice, approver_bob, abc, metric
):
    from zoneinfo import ZoneInfo

    from campaigns.services.conversions import campaign_conversion_set
    from campaigns.services.lifecycle import campaign_approve

    send_at = dt.datetime(2030, 3, 1, 9, 0, tzinfo=dt.UTC)
    campaign = make_campaign(content=abc[0], schedule_kind="at", send_at=send_at)
    _with_variants(campaign, manager_alice, abc[:2])
    campaign_conversion_set(campaign_id=campaign.pk, by=manager_alice, event="purchase")
    campaign_winner_set(campaign_id=campaign.pk, by=manager_alice, settings=WinnerInput(metric=metric))
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign = Campaign.objects.get(pk=campaign.pk)
    url = f"/admin/campaigns/campaign/{campaign.pk}/change/"
    client.force_login(manager_alice)
    covered = "Winner mode picks the winner by its conversion rate: the approval covers the goal"
    assert (covered in client.get(url).content.decode()) == (metric == "conversion_rate")
    local = send_at.astimezone(ZoneInfo(campaign.time_zone))
    data = _form(
        campaign,
        [(abc[0], 45), (abc[1], 45)],
        winner_mode="on",
        winner_metric=metric,
        conversion_event="signup",
        send_at_0=local.strftime("%Y-%m-%d"),
        send_at_1=local.strftime("%H:%M"),
    )
    response = client.post(url, data, follow=True)
    assert response.status_code == 200
    page = response.content.decode()
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.conversion_event == "signup"
    if metric == "conversion_rate":
        assert campaign.has_pending_revision and campaign.approved().winner["goal"]["event"] == "purchase"
        assert "Saved as a pending revision" in page, [str(m) for m in response.context["messages"]]
        assert 'id="pending-revision"' in client.get(url).content.decode()
    else:
        assert not campaign.has_pending_revision
        assert "Saved as a pending revision" not in page
        assert 'id="pending-revision"' not in client.get(url).content.decode()
