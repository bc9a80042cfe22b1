"""The gate lives in the send path: no dispatch for a campaign that is not approved and unchanged."""

import pytest

from campaigns.services.lifecycle import campaign_approve, campaign_submit
from delivery.models import Dispatch
from delivery.services.dispatches import GateClosed, dispatch_create


def _direct_send(campaign, kind="campaign"):
    return dispatch_create(
        app_id=campaign.app_id,
        kind=kind,
        spec=campaign.content.spec(),
        content_id=campaign.content_id,
        segment_id=campaign.segment_id,
        source_id=campaign.pk,
    )


def test_draft_campaign_cannot_be_sent_by_a_direct_service_call(make_campaign):
    campaign = make_campaign()
    with pytest.raises(GateClosed, match="not approved"):
        _direct_send(campaign)
    assert not Dispatch.objects.exists()


def test_campaign_in_review_cannot_be_sent(make_campaign, manager_alice):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(GateClosed):
        _direct_send(campaign)


def test_other_content_than_the_approved_one_is_refused(make_campaign, manager_alice, approver_bob):
    campaign = make_campaign(kind="api_triggered", segment=None)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    forged = {**campaign.content.spec(), "body": "Not what was approved"}
    with pytest.raises(GateClosed):
        dispatch_create(app_id=campaign.app_id, kind="api_trigger", spec=forged, profile_ids=[], source_id=campaign.pk)


def test_scheduled_campaign_cannot_be_sent_as_an_api_trigger(make_campaign, manager_alice, approver_bob):
    import datetime as dt

    from django.utils import timezone

    campaign = make_campaign(schedule_kind="at", send_at=timezone.now() + dt.timedelta(days=1))
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    with pytest.raises(GateClosed, match="API-triggered"):
        dispatch_create(
            app_id=campaign.app_id,
            kind="api_trigger",
            spec=campaign.content.spec(),
            profile_ids=[],
            source_id=campaign.pk,
        )


def test_forged_approval_post_by_the_requester_is_refused(client, make_campaign, manager_alice):
    from accounts.models import ApprovalRequest

    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    client.force_login(manager_alice)
    response = client.post(f"/admin/accounts/approvalrequest/{request.pk}/review/", {"_approve": "1", "comment": ""})
    assert response.status_code == 403
    campaign.refresh_from_db()
    assert campaign.status == "in_review"
    assert not Dispatch.objects.exists()


def test_approver_approves_from_the_inbox(client, make_campaign, manager_alice, approver_bob):
    from accounts.models import ApprovalRequest

    campaign = make_campaign(kind="api_triggered", segment=None)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    client.force_login(approver_bob)
    inbox = client.get("/admin/accounts/approvalrequest/")
    assert campaign.name.encode() in inbox.content
    review = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/")
    assert review.status_code == 200
    assert b"Approve and activate" in review.content
    assert b"phone-ios" in review.content and b"phone-android" in review.content
    response = client.post(f"/admin/accounts/approvalrequest/{request.pk}/review/", {"_approve": "1", "comment": "ok"})
    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == "live"


@pytest.mark.parametrize("press", ["_approve", "_request_changes"])
def test_a_decision_whose_comment_is_not_utf8_is_refused_under_it(
    client, make_campaign, manager_alice, approver_bob, press
):
    """Django read the bytes as U+FFFD, and the comment was kept so in the request's record."""
    from accounts.models import ApprovalRequest

    campaign = make_campaign(kind="api_triggered", segment=None)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    client.force_login(approver_bob)
    response = client.post(
        f"/admin/accounts/approvalrequest/{request.pk}/review/",
        f"{press}=1&comment=caf%FF",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200
    assert "Holds bytes that are not UTF-8" in response.content.decode()
    campaign.refresh_from_db()
    request.refresh_from_db()
    assert (campaign.status, request.status) == ("in_review", "pending")


@pytest.mark.parametrize("second", ["_approve", "_request_changes"])
def test_a_decision_sent_again_from_a_page_left_open_changes_nothing_and_says_why(
    client, make_campaign, manager_alice, approver_bob, second
):
    """A double click, or a second approver's page open since before the first decided: the
    page again with the request's status (it answered 500 once the campaign was live)."""
    from accounts.models import ApprovalRequest, AuditEvent

    campaign = make_campaign(kind="api_triggered", segment=None)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    client.force_login(approver_bob)
    url = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    assert client.post(url, {"_approve": "1", "comment": "ok"}).status_code == 302
    events = AuditEvent.objects.count()
    again = client.post(url, {second: "1", "comment": "once more"})
    assert again.status_code == 200
    assert b"This request is approved: nothing is left to decide." in again.content
    assert b"Approve and activate" not in again.content
    campaign.refresh_from_db()
    request.refresh_from_db()
    assert (campaign.status, request.status, request.comment) == ("live", "approved", "ok")
    assert AuditEvent.objects.count() == events


def test_forged_transition_post_by_a_viewer_is_refused(client, make_campaign, viewer_carol):
    campaign = make_campaign()
    client.force_login(viewer_carol)
    response = client.post(f"/admin/campaigns/campaign/{campaign.pk}/transition/submit/")
    assert response.status_code == 403
    campaign.refresh_from_db()
    assert campaign.status == "draft"


def _approved_for_tomorrow(make_campaign, manager_alice, approver_bob, **fields):
    import datetime as dt

    from django.utils import timezone

    campaign = make_campaign(schedule_kind="at", send_at=timezone.now() + dt.timedelta(days=1), **fields)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign.refresh_from_db()
    return campaign


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({"segment_id": None, "profile_ids": "outsider"}, id="a list of profiles for its segment"),
        pytest.param({"segment_id": "other"}, id="another segment"),
        pytest.param({"purpose": "transactional"}, id="transactional for marketing (no caps, no quiet hours)"),
        pytest.param({"rate_limit_per_second": 100_000}, id="another throttle"),
        pytest.param({"context": {"promo": "words nobody approved"}}, id="a context its content may show"),
        pytest.param({"time_zone": "Pacific/Kiritimati"}, id="another zone for the time its content may show"),
        pytest.param(
            {"local_time": "2030-01-07T09:00:00", "local_default_timezone": "UTC", "local_late_minutes": 60},
            id="at each profile's local time for a send in its zone",
        ),
    ],
)
def test_a_direct_call_cannot_send_the_approved_content_otherwise_than_approved(
    make_campaign, manager_alice, approver_bob, forged
):
    """The approval covers the audience, the purpose and the throttle as well as the content: a
    dispatch of the approved content to a list of profiles, another segment, as transactional (past
    the frequency caps and quiet hours), at another rate, with a context of its own (which a
    ``{{ context.promo | default: … }}`` would show), or reading ``now`` in another zone than the
    approved schedule's (a ``{{ 'now' | date: … }}`` would show another hour, or day) is refused
    by the gate, not made; so is one at each profile's local time when the approved schedule is not."""
    from tests.factories import ProfileFactory, SegmentFactory

    campaign = _approved_for_tomorrow(make_campaign, manager_alice, approver_bob, throttle_per_second=10)
    approved = campaign.approved()
    asked = {
        "segment_id": approved.segment_id,
        "profile_ids": None,
        "purpose": approved.purpose,
        "rate_limit_per_second": approved.throttle_per_second,
        "context": campaign.send_context(),
        **forged,
    }
    if asked["profile_ids"] == "outsider":
        asked["profile_ids"] = [ProfileFactory().pk]
    if asked["segment_id"] == "other":
        asked["segment_id"] = SegmentFactory(name="Someone else's").pk
    with pytest.raises(GateClosed, match="approved"):
        dispatch_create(
            app_id=campaign.app_id,
            kind="campaign",
            spec=approved.spec,
            content_id=approved.content_id,
            source_id=campaign.pk,
            **asked,
        )
    assert not Dispatch.objects.exists()


def _approved_at_local_time(make_campaign, manager_alice, approver_bob):
    """A campaign approved to send tomorrow at 09:00 (Paris) in each profile's zone, and how its
    occurrence sends: the ``dispatch_create`` arguments ``campaign_fire_due`` gives it."""
    import datetime as dt
    from zoneinfo import ZoneInfo

    from django.utils import timezone

    from campaigns.schedule import lateness_allowed

    paris = ZoneInfo("Europe/Paris")
    nine = (timezone.now().astimezone(paris) + dt.timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    campaign = make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris", at_local_time=True)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign.refresh_from_db()
    approved = campaign.approved()
    sends = {
        "app_id": campaign.app_id,
        "kind": "campaign",
        "spec": approved.spec,
        "content_id": approved.content_id,
        "source_id": campaign.pk,
        "segment_id": approved.segment_id,
        "purpose": approved.purpose,
        "rate_limit_per_second": approved.throttle_per_second,
        "context": campaign.send_context(),
        "time_zone": "Europe/Paris",
        "local_time": nine.replace(tzinfo=None).isoformat(),
        "local_default_timezone": "Europe/Paris",
        "local_late_minutes": int(lateness_allowed(approved).total_seconds() // 60),
    }
    return campaign, sends


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(
            {"local_time": "", "local_default_timezone": "", "local_late_minutes": None},
            id="at once in every zone, not at each profile's local time",
        ),
        pytest.param({"local_time": "shifted"}, id="another wall-clock time in each zone"),
        pytest.param({"local_default_timezone": "Pacific/Kiritimati"}, id="another zone for profiles without one"),
        pytest.param({"local_default_timezone": ""}, id="UTC for profiles without a zone"),
        pytest.param({"local_late_minutes": None}, id="sent to a zone however late"),
        pytest.param({"local_late_minutes": 7 * 24 * 60}, id="another window for a zone reached late"),
    ],
)
def test_a_direct_call_cannot_send_a_local_time_campaign_at_other_times_than_approved(
    make_campaign, manager_alice, approver_bob, forged
):
    """The approval covers when a campaign at each profile's local time reaches each profile: a
    dispatch of its approved content at once (in no profile's local time), at another wall-clock
    time, holding the profiles without a zone to another zone's clock, or sending to a zone later than
    its missed window allows (or however late) is refused by the gate, not made."""
    import datetime as dt

    campaign, sends = _approved_at_local_time(make_campaign, manager_alice, approver_bob)
    if forged.get("local_time") == "shifted":
        forged = {"local_time": (dt.datetime.fromisoformat(sends["local_time"]) - dt.timedelta(hours=6)).isoformat()}
    with pytest.raises(GateClosed, match="approved"):
        dispatch_create(**{**sends, **forged})
    assert not Dispatch.objects.exists()


def test_the_approved_local_time_sends_pass_the_gate(make_campaign, manager_alice, approver_bob):
    campaign, sends = _approved_at_local_time(make_campaign, manager_alice, approver_bob)
    dispatch = dispatch_create(**sends)
    assert (dispatch.local_time, dispatch.local_default_timezone) == (sends["local_time"], "Europe/Paris")


def test_the_approved_audience_purpose_and_throttle_pass_the_gate(make_campaign, manager_alice, approver_bob):
    campaign = _approved_for_tomorrow(make_campaign, manager_alice, approver_bob, throttle_per_second=10)
    approved = campaign.approved()
    dispatch = dispatch_create(
        app_id=campaign.app_id,
        kind="campaign",
        spec=approved.spec,
        content_id=approved.content_id,
        segment_id=approved.segment_id,
        source_id=campaign.pk,
        purpose=approved.purpose,
        rate_limit_per_second=approved.throttle_per_second,
        context=campaign.send_context(),
    )
    assert dispatch.segment_id == approved.segment_id


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({"segment_id": "everyone"}, id="a segment for the recipients each call names"),
        pytest.param({"purpose": "transactional"}, id="transactional for marketing"),
        pytest.param(
            {"local_time": "2030-01-07T09:00:00", "local_default_timezone": "UTC"},
            id="held to a wall-clock time in each profile's zone",
        ),
    ],
)
def test_an_api_triggered_campaign_cannot_be_sent_to_a_segment_or_as_another_purpose(
    make_campaign, manager_alice, approver_bob, segment, forged
):
    from tests.factories import ProfileFactory

    campaign = make_campaign(kind="api_triggered", segment=None)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign.refresh_from_db()
    approved = campaign.approved()
    # The approved sends' context: each forged case is refused for what it forges alone.
    asked = {
        "profile_ids": [ProfileFactory().pk],
        "purpose": approved.purpose,
        "context": campaign.send_context(),
        **forged,
    }
    if asked.get("segment_id") == "everyone":
        asked.update(segment_id=segment.pk, profile_ids=None)
    with pytest.raises(GateClosed, match="approved"):
        dispatch_create(app_id=campaign.app_id, kind="api_trigger", spec=approved.spec, source_id=campaign.pk, **asked)
    assert not Dispatch.objects.exists()
