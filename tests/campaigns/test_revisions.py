"""An edit of a scheduled or live campaign is a pending revision: the approved version keeps sending
until the revision is approved, and only Stop takes the campaign off the air."""

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied

from accounts.models import ApprovalRequest
from accounts.services import TransitionError
from campaigns.models import Campaign
from campaigns.selectors import campaign_actions
from campaigns.services.lifecycle import (
    campaign_approve,
    campaign_cancel_request,
    campaign_create,
    campaign_request_changes,
    campaign_stop,
    campaign_submit,
    campaign_update,
)
from delivery.models import Dispatch, PushContent
from delivery.services.dispatches import GateClosed, dispatch_create


@pytest.fixture
def live_api_campaign(make_campaign, manager_alice, approver_bob):
    campaign = make_campaign(kind="api_triggered", segment=None)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    return Campaign.objects.get(pk=campaign.pk)


def _send(campaign, spec):
    """A direct API-trigger dispatch of ``spec``, with what every send of the approved version gives it."""
    return dispatch_create(
        app_id=campaign.app_id,
        kind="api_trigger",
        spec=spec,
        profile_ids=[],
        source_id=campaign.pk,
        context=campaign.approved().send_context(),
    )


def test_swapping_the_content_of_a_live_campaign_keeps_the_approved_one_sending(live_api_campaign, manager_alice, team):
    approved_spec = live_api_campaign.content.spec()
    other = PushContent.objects.create(app=team, name="Other", title="New title", body="New body")
    campaign = campaign_update(campaign_id=live_api_campaign.pk, by=manager_alice, content=other)
    assert campaign.status == "live"
    assert campaign.has_pending_revision
    assert campaign.approved().spec == approved_spec
    assert _send(campaign, approved_spec).kind == Dispatch.Kind.API_TRIGGER
    with pytest.raises(GateClosed, match="not the approved content"):
        _send(campaign, other.spec())


def test_approved_revision_takes_over(live_api_campaign, manager_alice, approver_bob, team):
    other = PushContent.objects.create(app=team, name="Other", title="New title", body="New body")
    edited = campaign_update(campaign_id=live_api_campaign.pk, by=manager_alice, content=other)
    assert ("submit", "Submit revision for review") in campaign_actions(manager_alice, edited)
    request = campaign_submit(campaign_id=live_api_campaign.pk, by=manager_alice)
    campaign = Campaign.objects.get(pk=live_api_campaign.pk)
    assert campaign.status == "live" and request.status == "pending"
    assert ("cancel_request", "Cancel request") in campaign_actions(manager_alice, campaign)
    with pytest.raises(TransitionError, match="waiting for approval"):
        campaign_update(campaign_id=campaign.pk, by=manager_alice, throttle_per_second=10)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, comment="ok")
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.status == "live"
    assert campaign.approved().number == 2
    assert campaign.approved().spec == other.spec()
    assert not campaign.has_pending_revision
    assert _send(campaign, other.spec())
    with pytest.raises(GateClosed):
        _send(campaign, live_api_campaign.content.spec())


def test_changes_requested_on_a_revision_keep_the_campaign_live(live_api_campaign, manager_alice, approver_bob):
    campaign_update(campaign_id=live_api_campaign.pk, by=manager_alice, throttle_per_second=5)
    campaign_submit(campaign_id=live_api_campaign.pk, by=manager_alice)
    campaign_request_changes(campaign_id=live_api_campaign.pk, by=approver_bob, comment="Too slow")
    campaign = Campaign.objects.get(pk=live_api_campaign.pk)
    assert campaign.status == "live" and campaign.has_pending_revision
    assert campaign.approved().throttle_per_second is None
    assert ApprovalRequest.objects.order_by("-pk").first().status == "changes_requested"
    # Edited again and resubmitted; the requester may also withdraw it.
    campaign_update(campaign_id=campaign.pk, by=manager_alice, throttle_per_second=50)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_cancel_request(campaign_id=campaign.pk, by=manager_alice)
    assert Campaign.objects.get(pk=campaign.pk).status == "live"
    assert ApprovalRequest.objects.order_by("-pk").first().status == "cancelled"


def test_a_live_campaign_without_an_edit_has_no_revision_to_submit(live_api_campaign, manager_alice):
    with pytest.raises(TransitionError, match="no revision to submit"):
        campaign_submit(campaign_id=live_api_campaign.pk, by=manager_alice)


def test_the_requester_cannot_approve_their_revision(live_api_campaign, manager_alice):
    campaign_update(campaign_id=live_api_campaign.pk, by=manager_alice, throttle_per_second=5)
    campaign_submit(campaign_id=live_api_campaign.pk, by=manager_alice)
    with pytest.raises(PermissionDenied):
        campaign_approve(campaign_id=live_api_campaign.pk, by=manager_alice)


def test_only_stop_takes_it_off_the_air_and_it_closes_the_pending_revision(
    live_api_campaign, manager_alice, approver_bob
):
    campaign_update(campaign_id=live_api_campaign.pk, by=manager_alice, throttle_per_second=5)
    campaign_submit(campaign_id=live_api_campaign.pk, by=manager_alice)
    campaign_stop(campaign_id=live_api_campaign.pk, by=manager_alice)
    assert Campaign.objects.get(pk=live_api_campaign.pk).status == "stopped"
    request = ApprovalRequest.objects.order_by("-pk").first()
    assert request.status == "cancelled" and request.comment == "The campaign was stopped."
    with pytest.raises(GateClosed):
        _send(live_api_campaign, live_api_campaign.approved().spec)


@pytest.mark.parametrize("revised", ["app", "kind"])
def test_a_revision_moving_a_live_campaign_to_another_app_or_kind_leaves_the_approved_version_sending(
    make_campaign, manager_alice, approver_bob, revised
):
    """The app and the kind are part of the approved version: while a revision changing them waits,
    the approved version's occurrences still go out from its own app (the gate read the row's app and
    kind, and refused them), and the approved content is not sent through the revision's app."""
    import datetime as dt

    from accounts.services import access_grant
    from campaigns.models import Occurrence
    from campaigns.services.scheduling import campaign_fire_due
    from tests.factories import AppFactory

    t0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
    campaign = make_campaign(schedule_kind="recurring", send_at=t0, recurrence="daily")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=t0 - dt.timedelta(hours=1))
    approved = Campaign.objects.get(pk=campaign.pk).approved()
    if revised == "app":
        other_app = AppFactory(name="Other app")
        access_grant(obj=other_app, to=manager_alice, by=None)
        other_content = PushContent.objects.create(app=other_app, name="Theirs", title="Hi", body="There")
        campaign_update(campaign_id=campaign.pk, by=manager_alice, app=other_app, content=other_content)
    else:
        campaign_update(campaign_id=campaign.pk, by=manager_alice, kind="api_triggered")
    assert Campaign.objects.get(pk=campaign.pk).has_pending_revision
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=t0)
    assert (occurrence.outcome, occurrence.note) == (Occurrence.Outcome.SENT, "")
    assert occurrence.dispatch.app_id == approved.app_id
    if revised == "app":
        with pytest.raises(GateClosed):
            dispatch_create(
                app_id=other_app.pk,
                kind="campaign",
                spec=approved.spec,
                content_id=approved.content_id,
                segment_id=approved.segment_id,
                source_id=campaign.pk,
                context=campaign.send_context(),
            )


@pytest.mark.parametrize("to", ["at", "now"])
def test_a_one_off_campaign_that_sent_is_not_sent_again_by_a_revision_moving_its_time(
    make_campaign, manager_alice, approver_bob, to, django_capture_on_commit_callbacks
):
    """A one-off campaign sends once: a revision approved while its send is still going (the
    campaign still live), giving it another time or 'now', does not send it to its audience again;
    a new send is a duplicate of the campaign."""
    import datetime as dt

    from campaigns.models import Occurrence
    from campaigns.services.scheduling import campaign_fire_due

    t0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
    campaign = make_campaign(schedule_kind="at", send_at=t0)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=t0 - dt.timedelta(hours=1))
    (sent,) = campaign_fire_due(campaign_id=campaign.pk, now=t0)
    assert sent.outcome == Occurrence.Outcome.SENT
    later = t0 + dt.timedelta(days=1)
    changes = {"send_at": later} if to == "at" else {"schedule_kind": "now"}
    campaign_update(campaign_id=campaign.pk, by=manager_alice, **changes)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with django_capture_on_commit_callbacks(execute=True):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=t0 + dt.timedelta(minutes=10))
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert (campaign.status, campaign.next_occurrence_at) == ("live", None)
    assert campaign_fire_due(campaign_id=campaign.pk, now=later + dt.timedelta(minutes=1)) == []
    assert list(Occurrence.objects.filter(campaign=campaign).values_list("due_at", flat=True)) == [t0]
    assert Dispatch.objects.filter(source_id=campaign.pk, kind="campaign").count() == 1


def _moved_to_another_app(campaign, *, by):
    """Edit the live campaign into a new app only ``by`` has access to (of the Shop app's people),
    and submit the revision: its approved version still sends to the Shop app."""
    from accounts.services import access_grant
    from tests.factories import AppFactory

    other = AppFactory(name="Other")
    access_grant(obj=other, to=by, by=None)
    theirs = PushContent.objects.create(app=other, name="Theirs", title="New title", body="New body")
    campaign_update(campaign_id=campaign.pk, by=by, app=other, content=theirs)
    campaign_submit(campaign_id=campaign.pk, by=by)
    return Campaign.objects.get(pk=campaign.pk)


def test_the_old_apps_manager_may_stop_a_campaign_a_revision_moves_asked_with_the_pages_reading_of_its_access(
    live_api_campaign, manager_alice, manager_mallory, viewer_carol
):
    """While a revision moving the campaign to another app waits, its approved version still sends
    to the old app: that app's Manager may stop it, not its Viewer, and the page asks it with the
    access it read to show the campaign (``can``'s answers), no read of its own."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.models import User
    from accounts.selectors import approval_current, can

    campaign = _moved_to_another_app(live_api_campaign, by=manager_alice)
    request = approval_current(campaign)
    # Mallory's other buttons (Duplicate, Test send) need the row's app: one read, for both.
    for person, offered, reads in ((manager_mallory, {"stop"}, 1), (viewer_carol, set(), 0)):
        user, answers = User.objects.get(pk=person.pk), {}
        assert can(user, "campaigns.view_campaign", campaign, answers=answers)  # the page shows it
        with CaptureQueriesContext(connection) as queries:
            actions = campaign_actions(user, campaign, answers=answers, approval_of=lambda _: request)
        assert {name for name, _ in actions} == offered, person.username
        access_read = [q["sql"] for q in queries if "objectpermission" in q["sql"]]
        assert len(access_read) == reads, (person.username, access_read)
    with pytest.raises(PermissionDenied):
        campaign_stop(campaign_id=campaign.pk, by=viewer_carol)
    campaign_stop(campaign_id=campaign.pk, by=manager_mallory)
    assert Campaign.objects.get(pk=campaign.pk).status == "stopped"


def test_the_old_apps_manager_is_refused_a_change_for_her_access_not_her_role(
    live_api_campaign, manager_alice, manager_mallory, viewer_carol
):
    """The old app's people read a campaign a revision moves, and its Managers may stop it, no more:
    a change is refused to Mallory, whose role changes campaigns, for her access (the campaign
    names an app she has no access to); to Carol, a Viewer, for her role."""
    campaign = _moved_to_another_app(live_api_campaign, by=manager_alice)
    with pytest.raises(PermissionDenied, match="^You may not do this to this campaign."):
        campaign_update(campaign_id=campaign.pk, by=manager_mallory, throttle_per_second=10)
    with pytest.raises(PermissionDenied, match="^Your role may not do this to a campaign."):
        campaign_update(campaign_id=campaign.pk, by=viewer_carol, throttle_per_second=10)


T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def named_campaign(pushsim_app, manager_alice, approver_bob):
    """A daily campaign approved an hour before its first send, whose content shows its name
    (``context.campaign.name``), and one phone of its audience (``named_campaign.phone``)."""
    from accounts.services import access_grant
    from tests.factories import DeviceFactory, PushContentFactory, SegmentFactory

    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    segment = SegmentFactory(name="Everyone", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app, title="{{ context.campaign.name }}", body="Hello")
    phone = DeviceFactory(app=pushsim_app, platform="ios", profile__locale="en")
    campaign = campaign_create(
        by=manager_alice,
        name="Spring sale",
        app=pushsim_app,
        segment=segment,
        content=content,
        schedule_kind="recurring",
        send_at=T0,
        recurrence="daily",
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 - dt.timedelta(hours=1))
    campaign = Campaign.objects.get(pk=campaign.pk)
    campaign.phone = phone
    return campaign


def _fired_titles(campaign, pushsim, capture, *, now) -> list[str]:
    """Fire the campaign's occurrence due at ``now``; the titles its phone received since, oldest first."""
    from campaigns.services.scheduling import campaign_fire_due

    before = len(pushsim.state.recent(token=campaign.phone.token))
    with capture(execute=True):
        (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=now)
    assert occurrence.outcome == "sent", occurrence.note
    received = pushsim.state.recent(token=campaign.phone.token)  # newest first
    return [push["title"] for push in reversed(received[: len(received) - before])]


def test_a_rename_of_a_live_campaign_whose_content_shows_its_name_is_a_revision(
    named_campaign, pushsim, manager_alice, approver_bob, django_capture_on_commit_callbacks
):
    """Every send gives its content the campaign's name (``context.campaign.name``), and the approver
    read the phones showing it. When the content shows it, the name is part of what the approval
    covers: a rename is a revision like any covered edit. The approved version goes on sending under
    the name it was approved with until the revision is approved, and the new name after."""
    from accounts.models import AuditEvent

    campaign = named_campaign
    renamed = campaign_update(campaign_id=campaign.pk, by=manager_alice, name="Everything free, today only")
    assert renamed.status == "scheduled" and renamed.has_pending_revision
    assert AuditEvent.objects.filter(action="campaign_revision_edited", object_id=str(campaign.pk)).exists()
    capture = django_capture_on_commit_callbacks
    assert _fired_titles(campaign, pushsim, capture, now=T0) == ["Spring sale"]

    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(TransitionError, match="waiting for approval"):
        campaign_update(campaign_id=campaign.pk, by=manager_alice, name="Something else")
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, request_id=request.pk, now=T0 + dt.timedelta(hours=1))
    campaign = Campaign.objects.get(pk=campaign.pk)
    campaign.phone = named_campaign.phone
    assert not campaign.has_pending_revision and campaign.approved().number == 2
    assert _fired_titles(campaign, pushsim, capture, now=T0 + dt.timedelta(days=1)) == ["Everything free, today only"]


def test_a_campaign_whose_content_does_not_show_its_name_renames_freely(make_campaign, manager_alice, approver_bob):
    """Its name is not part of what the approval covers: its fingerprint is the one it was approved
    with, renamed or not, and the rename leaves nothing to submit."""
    campaign = make_campaign(kind="api_triggered", segment=None)
    assert campaign.fingerprint() == campaign.fingerprint(name=False)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    renamed = campaign_update(campaign_id=campaign.pk, by=manager_alice, name="Autumn sale")
    assert renamed.fingerprint() == renamed.approved_fingerprint == renamed.approved().fingerprint
    assert not renamed.has_pending_revision
    with pytest.raises(TransitionError, match="no revision to submit"):
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)


def test_a_campaign_approved_before_approvals_covered_its_name_keeps_sending(
    named_campaign, pushsim, manager_alice, django_capture_on_commit_callbacks
):
    """Upgrading keeps what was approved: a version approved when the fingerprint left the name out
    (and kept the name it sends, ``approved_version["name"]``) is still the campaign as it stands,
    and sends; a rename of it is then a revision, and the approved name goes on being sent."""
    campaign = named_campaign
    legacy = campaign.fingerprint(name=False)
    assert legacy != campaign.fingerprint()
    version = {k: v for k, v in campaign.approved_version.items() if k != "covers_name"}
    Campaign.objects.filter(pk=campaign.pk).update(
        approved_version={**version, "fingerprint": legacy}, approved_fingerprint=legacy
    )
    campaign.refresh_from_db()
    assert not campaign.has_pending_revision
    capture = django_capture_on_commit_callbacks
    assert _fired_titles(campaign, pushsim, capture, now=T0) == ["Spring sale"]

    campaign_update(campaign_id=campaign.pk, by=manager_alice, name="Everything free, today only")
    campaign.refresh_from_db()
    assert campaign.has_pending_revision
    assert _fired_titles(campaign, pushsim, capture, now=T0 + dt.timedelta(days=1)) == ["Spring sale"]


def test_a_campaign_approved_before_versions_were_kept_keeps_sending_when_its_content_shows_its_name(
    named_campaign,
):
    """Approved before versions were kept (the row is what was approved, under a fingerprint without
    the window or the name): its approval still holds."""
    campaign = named_campaign
    legacy = campaign.fingerprint(missed_window=False, name=False)
    Campaign.objects.filter(pk=campaign.pk).update(approved_version={}, approved_fingerprint=legacy)
    campaign.refresh_from_db()
    assert campaign.approved() is not None and campaign.approved().fingerprint == legacy
    assert not campaign.has_pending_revision


def test_a_request_submitted_before_approvals_covered_the_name_is_approved_and_sends(
    named_campaign, pushsim, manager_alice, approver_bob, django_capture_on_commit_callbacks
):
    """A request waiting at the upgrade holds a fingerprint without the name (which could not change
    while it waited): its approval covers the name the review showed, and the version sends."""
    campaign = named_campaign
    campaign_update(campaign_id=campaign.pk, by=manager_alice, throttle_per_second=50)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign.refresh_from_db()
    ApprovalRequest.objects.filter(pk=request.pk).update(fingerprint=campaign.fingerprint(name=False))
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 - dt.timedelta(minutes=30))
    campaign = Campaign.objects.get(pk=campaign.pk)
    campaign.phone = named_campaign.phone
    assert campaign.approved().snapshot["covers_name"] and not campaign.has_pending_revision
    assert campaign.approved_fingerprint == campaign.approved().fingerprint == campaign.fingerprint()
    assert _fired_titles(campaign, pushsim, django_capture_on_commit_callbacks, now=T0) == ["Spring sale"]


def test_the_migration_keeps_the_name_of_versions_approved_before_it_was_kept(live_api_campaign, make_campaign):
    """A version approved before read the row's name: it keeps the one the campaign has now, and a
    later rename no longer reaches its sends. A draft has no version to keep it on."""
    import importlib

    from django.apps import apps

    forwards = importlib.import_module("campaigns.migrations.0019_approved_version_name").forwards
    old = {key: value for key, value in live_api_campaign.approved_version.items() if key != "name"}
    Campaign.objects.filter(pk=live_api_campaign.pk).update(approved_version=old)
    draft = make_campaign(name="Draft")

    forwards(apps, None)

    Campaign.objects.filter(pk=live_api_campaign.pk).update(name="Renamed")
    campaign = Campaign.objects.get(pk=live_api_campaign.pk)
    assert campaign.approved().send_context() == {"campaign": {"id": campaign.pk, "name": "Spring sale"}}
    assert campaign.approved().fingerprint == live_api_campaign.approved().fingerprint
    assert Campaign.objects.get(pk=draft.pk).approved_version == {}


def test_a_contents_page_says_an_approved_campaign_keeps_sending_it_as_approved_when_it_is_edited(
    client, make_campaign, content, team, manager_alice, approver_bob
):
    """The content's *Sent by* said an edit refuses the campaigns' sends of it until they are
    approved again; a scheduled campaign sends its approved version, the content as frozen at its
    approval, until the revision is approved. The page says that, and the send does it."""
    import re

    from campaigns.services.scheduling import campaign_fire_due
    from delivery.services.contents import pushcontent_save
    from tests.factories import DeviceFactory, ProfileFactory

    DeviceFactory(profile=ProfileFactory(locale="fr"), app=team, platform="ios")
    t0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
    campaign = make_campaign(schedule_kind="at", send_at=t0)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=t0 - dt.timedelta(hours=1))
    approved_title = content.title
    content.title = "Last chance"
    pushcontent_save(content=content, by=manager_alice)

    client.force_login(manager_alice)
    page = client.get(f"/admin/delivery/pushcontent/{content.pk}/change/").content.decode()
    text = " ".join(
        re.sub(r"<[^>]+>", " ", re.search(r'<div id="content-sent-by">(.*?)</div>', page, re.S).group(1)).split()
    )
    assert "campaign “Spring sale” (scheduled)" in text
    assert "refused" not in text
    assert (
        "A scheduled or live campaign, and a live journey, keeps sending it as it was approved (a copy frozen at "
        "its approval) until a revision with the edit (a journey's new version) is submitted and approved"
    ) in text.replace("&#x27;", "'")

    (sent,) = campaign_fire_due(campaign_id=campaign.pk, now=t0)
    assert Campaign.objects.get(pk=campaign.pk).has_pending_revision
    assert Dispatch.objects.get(pk=sent.dispatch_id).content_spec["title"] == approved_title
