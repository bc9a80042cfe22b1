"""Approve and activate of a journey whose segment enters at once: the review asks its approver
first, naming the segment, and only the confirmation's Yes approves."""

import html

import pytest

from accounts.models import ApprovalRequest
from journeys.services.lifecycle import journey_submit
from tests.campaigns.test_review_confirm_send import YES, _confirmation, _url
from tests.campaigns.test_review_read import page_fields
from tests.factories import DeviceFactory, ProfileFactory


def _undecided(journey, request):
    journey.refresh_from_db()
    request.refresh_from_db()
    return (journey.status, journey.live_version, request.status) == ("in_review", None, ApprovalRequest.Status.PENDING)


@pytest.mark.presses("accounts.approvalrequest:review")
def test_approve_of_a_journey_entered_by_a_segment_asks_first_and_its_yes_approves_and_enters(
    client, make_journey, team, manager_alice, approver_bob, django_capture_on_commit_callbacks
):
    """A journey entered by a segment read everyone in it into its steps on the one press of
    Approve and activate. The press answers a page naming the segment that enters now, approving
    nothing; its Yes posts the review's fields again and approves."""
    for platform in ("ios", "android"):
        DeviceFactory(profile=ProfileFactory(external_id=f"p-{platform}"), app=team, platform=platform)
    journey = make_journey()
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    client.force_login(approver_bob)
    review = client.get(_url(request))

    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = client.post(_url(request), {**page_fields(review), "_approve": "1", "comment": "Go ahead"})

    said = html.unescape(answer.content.decode())
    assert "'Onboarding' enters everyone in 'Everyone' now" in said
    assert "Everyone: 2 profiles → 2 reachable (iOS 1 / Android 1) → 2 opted in" in said
    fields = _confirmation(answer)
    assert fields == {"shown": page_fields(review)["shown"], "comment": "Go ahead", "_approve": "1"}
    assert _undecided(journey, request) and not queued

    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = client.post(_url(request), {**fields, **YES})

    assert answer.status_code == 302
    journey.refresh_from_db()
    request.refresh_from_db()
    assert journey.status == "live" and journey.next_entry_at is not None
    assert (request.status, request.decided_by, request.comment) == ("approved", approver_bob, "Go ahead")
    assert queued  # its segment's entry, read once the approval commits


def test_no_goes_back_to_the_journeys_review_and_changes_nothing(client, make_journey, manager_alice, approver_bob):
    journey = make_journey()
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    client.force_login(approver_bob)
    answer = client.post(_url(request), {**page_fields(client.get(_url(request))), "_approve": "1", "comment": ""})
    assert f'href="{_url(request)}" class="button cancel-link" id="send-not-confirmed"' in answer.content.decode()

    back = client.get(_url(request))

    assert back.status_code == 200 and 'name="_approve"' in back.content.decode()
    assert _undecided(journey, request)


def test_a_journey_entered_by_an_event_is_approved_on_the_press_without_asking(
    client, make_journey, manager_alice, approver_bob
):
    journey = make_journey(entry_kind="event", entry_event="signed_up", entry_segment=None)
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    client.force_login(approver_bob)

    answer = client.post(_url(request), {**page_fields(client.get(_url(request))), "_approve": "1", "comment": ""})

    assert answer.status_code == 302
    journey.refresh_from_db()
    assert journey.status == "live"


@pytest.mark.presses("accounts.approvalrequest:review")
def test_a_journeys_yes_is_refused_to_a_viewer_a_manager_and_its_requester(
    client, make_journey, manager_alice, manager_mallory, viewer_carol, django_capture_on_commit_callbacks
):
    journey = make_journey()
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    for user in (viewer_carol, manager_mallory, manager_alice):
        client.force_login(user)
        with django_capture_on_commit_callbacks(execute=False) as queued:
            refused = client.post(_url(request), {"_approve": "1", "comment": "", **YES})
        assert refused.status_code in (403, 404), user
        assert _undecided(journey, request) and not queued, user
