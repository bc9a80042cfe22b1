"""Approve and activate of a campaign it sends at once (sent when approved): the review asks its
approver first, saying what starts, and only the confirmation's Yes approves."""

import datetime as dt
import html

import pytest
from django.utils import timezone

from accounts.models import ApprovalRequest
from accounts.services import access_grant
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_submit
from delivery.services.contents import pushcontent_save
from tests.campaigns.test_review_read import page_fields
from tests.factories import DeviceFactory, ProfileFactory
from tests.pages import page_form

YES = {"_send_confirmed": "Yes, approve and send now"}


def _url(request) -> str:
    return f"/admin/accounts/approvalrequest/{request.pk}/review/"


def _confirmation(answer) -> dict:
    """The confirmation's form, as its Yes posts it (without the Yes itself)."""
    page = answer.content.decode()
    assert answer.status_code == 200 and 'id="send-confirmation"' in page
    start = page.index('id="send-confirmation"')
    form = page_form("<form " + page[start : page.index("</form>", start)])
    fields = {name: values[0] for name, values in form.data.items()}
    fields.pop("csrfmiddlewaretoken", None)
    return fields


def _undecided(campaign, request):
    campaign.refresh_from_db()
    request.refresh_from_db()
    return (campaign.status, bool(campaign.approved_version), request.status) == (
        Campaign.Status.IN_REVIEW,
        False,
        ApprovalRequest.Status.PENDING,
    )


@pytest.fixture
def three_phones(team):
    """Three profiles opted in to the Shop app, and one that is not."""
    for platform in ("ios", "ios", "android"):
        DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform=platform)
    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="ios", push_enabled=False)


@pytest.mark.presses("accounts.approvalrequest:review")
def test_approve_of_a_campaign_sent_when_approved_asks_first_and_its_yes_approves_and_sends(
    client, make_campaign, three_phones, manager_alice, approver_bob, django_capture_on_commit_callbacks
):
    """A campaign sent when approved started sending to its whole audience on the one press of
    Approve and activate, a slip of the mouse away from Request changes. The press answers a page
    saying what starts, approving nothing; its Yes posts the review's fields again and approves."""
    campaign = make_campaign()
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    review = client.get(_url(request))

    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = client.post(_url(request), {**page_fields(review), "_approve": "1", "comment": "Go ahead"})

    said = html.unescape(answer.content.decode())
    assert "'Spring sale' sends now to the phones of about 3 profiles." in said
    assert "Everyone: 4 profiles → 4 reachable (iOS 3 / Android 1) → 3 opted in" in said
    fields = _confirmation(answer)
    assert fields == {"shown": page_fields(review)["shown"], "comment": "Go ahead", "_approve": "1"}
    assert _undecided(campaign, request) and not queued
    assert not campaign.occurrences.exists()

    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = client.post(_url(request), {**fields, **YES})

    assert answer.status_code == 302
    campaign.refresh_from_db()
    request.refresh_from_db()
    assert campaign.status == Campaign.Status.LIVE and campaign.next_occurrence_at is not None
    assert (request.status, request.decided_by, request.comment) == ("approved", approver_bob, "Go ahead")
    assert queued  # its send, fired once the approval commits


def test_no_goes_back_to_the_review_and_changes_nothing(client, make_campaign, manager_alice, approver_bob):
    campaign = make_campaign()
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    answer = client.post(_url(request), {**page_fields(client.get(_url(request))), "_approve": "1", "comment": ""})
    page = answer.content.decode()
    assert f'href="{_url(request)}" class="button cancel-link" id="send-not-confirmed"' in page

    back = client.get(_url(request))

    assert back.status_code == 200 and 'name="_approve"' in back.content.decode()
    assert _undecided(campaign, request)


def test_a_forged_approval_without_the_confirmation_starts_no_send(
    client, make_campaign, manager_alice, approver_bob, django_capture_on_commit_callbacks
):
    """Posted straight to the review, without the page's fields or the Yes: the confirmation, and
    nothing approved."""
    campaign = make_campaign()
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)

    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = client.post(_url(request), {"_approve": "1"})

    assert _confirmation(answer) == {"_approve": "1"}
    assert _undecided(campaign, request) and not queued


def test_a_campaign_sent_later_is_approved_on_the_press_without_asking(
    client, make_campaign, manager_alice, approver_bob
):
    campaign = make_campaign(schedule_kind="at", send_at=timezone.now() + dt.timedelta(days=2))
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)

    answer = client.post(_url(request), {**page_fields(client.get(_url(request))), "_approve": "1", "comment": ""})

    assert answer.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SCHEDULED


@pytest.mark.presses("accounts.approvalrequest:review")
def test_yes_is_refused_to_a_viewer_and_a_manager(
    client, make_campaign, manager_alice, manager_mallory, viewer_carol, django_capture_on_commit_callbacks
):
    campaign = make_campaign()
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    for user in (viewer_carol, manager_mallory):
        client.force_login(user)
        with django_capture_on_commit_callbacks(execute=False) as queued:
            refused = client.post(_url(request), {"_approve": "1", "comment": "", **YES})
            asked = client.post(_url(request), {"_approve": "1", "comment": ""})
        # Neither asked to decide it: not even told the request exists, or refused.
        assert refused.status_code in (403, 404) and asked.status_code in (403, 404), user
        assert 'id="send-confirmation"' not in asked.content.decode()
        assert _undecided(campaign, request) and not queued, user


@pytest.mark.presses("accounts.approvalrequest:review")
def test_yes_keeps_the_ban_on_approving_ones_own_request(
    client, make_campaign, segment, approver_bob, django_capture_on_commit_callbacks
):
    access_grant(obj=segment, to=approver_bob, by=None)
    campaign = make_campaign(by=approver_bob)
    request = campaign_submit(campaign_id=campaign.pk, by=approver_bob)
    client.force_login(approver_bob)

    with django_capture_on_commit_callbacks(execute=False) as queued:
        answer = client.post(_url(request), {"_approve": "1", "comment": "Mine is fine", **YES})

    assert answer.status_code == 403
    assert _undecided(campaign, request) and not queued


@pytest.mark.presses("accounts.approvalrequest:review")
def test_yes_approves_only_what_the_review_showed(client, make_campaign, content, manager_alice, approver_bob):
    """Reworded between the confirmation and its Yes: refused as the review's own press is."""
    campaign = make_campaign()
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    fields = _confirmation(
        client.post(_url(request), {**page_fields(client.get(_url(request))), "_approve": "1", "comment": ""})
    )
    content.body = "Everything is free today"
    pushcontent_save(content=content, by=manager_alice)

    answer = client.post(_url(request), {**fields, **YES})

    assert answer.status_code == 200
    assert "changed since it was submitted" in answer.content.decode()
    assert _undecided(campaign, request)


def test_a_one_off_whose_time_passed_within_its_window_asks_too(client, make_campaign, manager_alice, approver_bob):
    """Approved after its time, within its missed-send window, a one-off is sent at once (as its
    review says): asked first, as one sent when approved is."""
    campaign = make_campaign(schedule_kind="at", send_at=timezone.now() - dt.timedelta(minutes=10))
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)

    answer = client.post(_url(request), {**page_fields(client.get(_url(request))), "_approve": "1", "comment": ""})

    assert _confirmation(answer)
    assert _undecided(campaign, request)


def test_the_service_approves_nothing_unconfirmed_that_would_send_at_once(make_campaign, manager_alice, approver_bob):
    """The gate is in the service, not only in the page: asked unconfirmed, it raises and writes
    nothing (no approval, no audit line, no send queued)."""
    from accounts.models import AuditEvent
    from accounts.services import SendNotConfirmed
    from campaigns.services.lifecycle import campaign_approve

    campaign = make_campaign()
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    events = AuditEvent.objects.count()

    with pytest.raises(SendNotConfirmed):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, request_id=request.pk, send_confirmed=False)

    assert _undecided(campaign, request) and AuditEvent.objects.count() == events
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at is None and campaign.activated_at is None
