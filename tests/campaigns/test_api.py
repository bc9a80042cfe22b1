"""The campaigns API's list and detail: what each campaign answers, to the keys that may read it."""

from django.db import connection
from django.test.utils import CaptureQueriesContext

from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_approve, campaign_submit, campaign_update


def _approved(make_campaign, manager_alice, approver_bob, **fields):
    campaign = make_campaign(kind="api_triggered", segment=None, **fields)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    return Campaign.objects.get(pk=campaign.pk)


def test_a_renamed_campaign_answers_the_name_its_sends_give_as_approved(
    make_campaign, manager_alice, approver_bob, manager_mallory, api_key_for
):
    """A rename of a campaign whose content does not show its name is no revision: its sends give
    the name the approved version was approved with, which the API says beside the row's."""
    campaign = _approved(make_campaign, manager_alice, approver_bob)
    campaign_update(campaign_id=campaign.pk, by=manager_alice, name="Autumn sale")
    draft = make_campaign(name="Winter sale")
    client = api_key_for(manager_mallory)

    detail = client.get(f"/api/v1/campaigns/{campaign.pk}/").json()
    assert (detail["name"], detail["approved_name"]) == ("Autumn sale", "Spring sale")
    listed = {c["id"]: (c["name"], c["approved_name"]) for c in client.get("/api/v1/campaigns/").json()["results"]}
    assert listed == {campaign.pk: ("Autumn sale", "Spring sale"), draft.pk: ("Winter sale", None)}


def test_a_campaign_approved_before_versions_were_kept_answers_its_own_name(
    make_campaign, manager_alice, approver_bob, manager_mallory, api_key_for
):
    """Approved before versions were kept, the row is what was approved: its sends give its name."""
    campaign = _approved(make_campaign, manager_alice, approver_bob)
    legacy = campaign.fingerprint(missed_window=False, name=False)
    Campaign.objects.filter(pk=campaign.pk).update(approved_version={}, approved_fingerprint=legacy)
    assert (
        api_key_for(manager_mallory).get(f"/api/v1/campaigns/{campaign.pk}/").json()["approved_name"] == "Spring sale"
    )


def test_a_reader_without_access_to_the_campaign_is_told_nothing_of_it(
    make_campaign, manager_alice, approver_bob, api_key_for
):
    from tests.factories import UserFactory

    campaign = _approved(make_campaign, manager_alice, approver_bob)
    stranger = api_key_for(UserFactory(username="manager_erin", role="Manager"))
    assert stranger.get(f"/api/v1/campaigns/{campaign.pk}/").status_code == 404
    assert stranger.get("/api/v1/campaigns/").json()["results"] == []


def test_the_list_costs_the_same_queries_for_one_approved_campaign_or_five(
    make_campaign, manager_alice, approver_bob, manager_mallory, api_key_for
):
    """Each campaign's approved name is read from its row: no query a campaign, even for one
    approved before versions were kept (whose approval the row itself is)."""
    client = api_key_for(manager_mallory)
    first = _approved(make_campaign, manager_alice, approver_bob)
    client.get("/api/v1/campaigns/")  # the key and its access are read once, then kept
    with CaptureQueriesContext(connection) as one:
        assert client.get("/api/v1/campaigns/").status_code == 200
    for _ in range(3):
        _approved(make_campaign, manager_alice, approver_bob)
    legacy = first.fingerprint(missed_window=False, name=False)
    Campaign.objects.filter(pk=first.pk).update(approved_version={}, approved_fingerprint=legacy)
    make_campaign(name="Draft")
    client.get("/api/v1/campaigns/")  # the key and its access read again, as the approvals changed them
    with CaptureQueriesContext(connection) as five:
        answer = client.get("/api/v1/campaigns/")
    assert [c["approved_name"] for c in answer.json()["results"]] == [None, *["Spring sale"] * 4]
    assert len(five) == len(one)
