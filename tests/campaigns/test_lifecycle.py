"""The campaign lifecycle: every transition through its service, with locks, states and audit."""

import datetime as dt

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from accounts.models import ApprovalRequest, AuditEvent
from accounts.services import TransitionError
from campaigns.models import Campaign
from campaigns.services.lifecycle import (
    campaign_approve,
    campaign_archive,
    campaign_cancel_request,
    campaign_delete,
    campaign_request_changes,
    campaign_submit,
    campaign_update,
)

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def _reload(campaign):
    return Campaign.objects.get(pk=campaign.pk)


def test_new_campaign_is_a_draft_owned_by_its_creator(make_campaign, manager_alice):
    campaign = make_campaign()
    assert campaign.status == "draft"
    assert campaign.owner == manager_alice
    assert AuditEvent.objects.filter(action="campaign_created", object_id=str(campaign.pk)).exists()


def test_viewer_cannot_create(make_campaign, viewer_carol):
    with pytest.raises(PermissionDenied):
        make_campaign(by=viewer_carol)


def test_scheduled_campaign_needs_a_segment(make_campaign):
    with pytest.raises(ValidationError) as error:
        make_campaign(segment=None)
    assert "segment" in error.value.message_dict


def test_bad_schedule_names_the_field(make_campaign):
    with pytest.raises(ValidationError) as error:
        make_campaign(schedule_kind="recurring", send_at=NOW, recurrence="cron", cron="every tuesday")
    assert "cron" in error.value.message_dict
    with pytest.raises(ValidationError) as error:
        make_campaign(time_zone="Mars/Olympus")
    assert "time_zone" in error.value.message_dict


def test_a_scheduled_campaign_whose_content_shows_a_call_context_is_refused_naming_the_field(make_campaign, team):
    """Only an API trigger's call gives a context: a scheduled send would show those parts empty
    ("Order  is on its way"). An API-triggered campaign may show them."""
    from tests.factories import PushContentFactory

    shipped = PushContentFactory(
        app=team, name="Shipped", title="Shipped", body="Order {{ context.order_id }} is on its way"
    )
    with pytest.raises(ValidationError) as error:
        make_campaign(content=shipped)
    (message,) = error.value.message_dict["content"]
    assert message.startswith("'Shipped' shows {{ context.order_id }} in its body")
    assert "a scheduled campaign sends it empty" in message
    assert make_campaign(content=shipped, kind="api_triggered", segment=None).kind == "api_triggered"


def test_a_call_context_shown_with_a_default_or_read_in_a_condition_is_accepted(make_campaign, team):
    """What the marketer wrote for a send without the value shows: a default, the other branch;
    and every send of a campaign gives its id and name."""
    from tests.factories import PushContentFactory

    shared = PushContentFactory(
        app=team,
        title="{{ context.campaign.name }}",
        body="Everything in {{ context.category | default: 'the shop' }}{% if context.code %} with {{ '' }}{% endif %}",
        data={"campaign": "{{ context.campaign.id }}"},
    )
    assert make_campaign(content=shared).kind == "scheduled"


def test_a_call_context_is_refused_on_submit_and_on_making_the_campaign_scheduled(
    make_campaign, manager_alice, content, segment
):
    """The content is edited after the campaign was saved, or the campaign changes kind: the next
    save or the submit says so, naming the field."""
    campaign = make_campaign()
    content.variants = {"fr": {"title": "Commande {{ context.order_id }}"}}
    content.save()
    with pytest.raises(ValidationError) as error:
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    assert "{{ context.order_id }} in its variants.fr.title" in error.value.message_dict["content"][0]
    assert _reload(campaign).status == "draft"

    content.variants = {}
    content.data = {"order": "{{ context.order_id }}"}
    content.save()
    trigger = make_campaign(name="Order shipped", kind="api_triggered", segment=None)
    with pytest.raises(ValidationError) as error:
        campaign_update(campaign_id=trigger.pk, by=manager_alice, kind="scheduled", segment=segment)
    assert "{{ context.order_id }} in its data.order" in error.value.message_dict["content"][0]
    assert _reload(trigger).kind == "api_triggered"


def test_a_name_its_content_shows_too_large_for_the_payload_is_refused_on_save_and_on_submit(
    make_campaign, manager_alice, team
):
    """Every send gives its content the campaign's name (``context.campaign.name``); the content's own
    check counts a value at 100 bytes, so a longer name made every message of it too large at send,
    though it was approved. Saving or submitting such a campaign is refused naming the name; a
    shorter one is taken."""
    from tests.factories import PushContentFactory

    near_the_limit = PushContentFactory(app=team, title="{{ context.campaign.name }}", body="x" * 3800)
    with pytest.raises(ValidationError) as error:
        make_campaign(name="N" * 200, content=near_the_limit)
    (message,) = error.value.message_dict["name"]
    assert "over the 4096-byte limit" in message
    campaign = make_campaign(name="N" * 20, content=near_the_limit)
    with pytest.raises(ValidationError) as error:
        campaign_update(campaign_id=campaign.pk, by=manager_alice, name="N" * 200)
    assert "name" in error.value.message_dict

    long_named = make_campaign(name="N" * 200)
    long_named.content.title = near_the_limit.title
    long_named.content.body = near_the_limit.body
    long_named.content.save()
    with pytest.raises(ValidationError) as error:
        campaign_submit(campaign_id=long_named.pk, by=manager_alice)
    assert "name" in error.value.message_dict
    assert _reload(long_named).status == "draft"
    assert campaign_submit(campaign_id=campaign.pk, by=manager_alice).pk


def test_submit_locks_and_opens_a_request(make_campaign, manager_alice):
    campaign = make_campaign()
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice, message="please")
    assert _reload(campaign).status == "in_review"
    assert request.fingerprint == campaign.fingerprint()
    with pytest.raises(TransitionError, match="Cancel the approval request"):
        campaign_update(campaign_id=campaign.pk, by=manager_alice, name="Renamed")


def test_cancel_request_returns_to_draft(make_campaign, manager_alice):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_cancel_request(campaign_id=campaign.pk, by=manager_alice)
    assert _reload(campaign).status == "draft"
    assert ApprovalRequest.objects.get().status == "cancelled"


def test_request_changes_returns_to_draft_with_the_comment(make_campaign, manager_alice, approver_bob):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_request_changes(campaign_id=campaign.pk, by=approver_bob, comment="Shorter title")
    assert _reload(campaign).status == "draft"
    assert ApprovalRequest.objects.get().comment == "Shorter title"


def test_manager_cannot_approve_own_campaign(make_campaign, manager_alice):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(PermissionDenied):
        campaign_approve(campaign_id=campaign.pk, by=manager_alice)


def test_approver_cannot_approve_own_campaign(make_campaign, approver_bob, segment):
    from accounts.services import access_grant

    access_grant(obj=segment, to=approver_bob, by=None)
    campaign = make_campaign(by=approver_bob)
    campaign_submit(campaign_id=campaign.pk, by=approver_bob)
    with pytest.raises(PermissionDenied, match="own request"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)


def test_approve_schedules_a_future_send(make_campaign, manager_alice, approver_bob):
    campaign = make_campaign(schedule_kind="at", send_at=NOW + dt.timedelta(days=1))
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=NOW)
    campaign = _reload(campaign)
    assert campaign.status == "scheduled"
    assert campaign.next_occurrence_at == NOW + dt.timedelta(days=1)
    assert campaign.approved_fingerprint == campaign.fingerprint()


def test_approve_api_triggered_makes_it_live(make_campaign, manager_alice, approver_bob):
    campaign = make_campaign(kind="api_triggered", segment=None)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=NOW)
    assert _reload(campaign).status == "live"


def test_edit_after_approval_is_a_pending_revision_and_keeps_the_approval(make_campaign, manager_alice, approver_bob):
    campaign = make_campaign(schedule_kind="at", send_at=NOW + dt.timedelta(days=1))
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=NOW)
    campaign_update(campaign_id=campaign.pk, by=manager_alice, send_at=NOW + dt.timedelta(days=2))
    campaign = _reload(campaign)
    assert campaign.status == "scheduled"
    assert campaign.has_pending_revision
    assert campaign.next_occurrence_at == NOW + dt.timedelta(days=1)  # the approved schedule still holds
    assert campaign.approved().send_at == NOW + dt.timedelta(days=1)
    assert ApprovalRequest.objects.get().status == "approved"
    assert AuditEvent.objects.filter(action="campaign_revision_edited").exists()


def test_renaming_an_approved_campaign_keeps_the_approval(make_campaign, manager_alice, approver_bob):
    campaign = make_campaign(schedule_kind="at", send_at=NOW + dt.timedelta(days=1))
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=NOW)
    campaign_update(campaign_id=campaign.pk, by=manager_alice, name="Spring sale (EU)")
    assert _reload(campaign).status == "scheduled"


def test_content_edited_during_review_cannot_be_approved(make_campaign, manager_alice, approver_bob, content):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    content.body = "A different body"
    content.save()
    with pytest.raises(ValidationError, match="changed since it was submitted"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    assert _reload(campaign).status == "in_review"


def test_segment_edited_during_review_cannot_be_approved(make_campaign, manager_alice, approver_bob, segment):
    from audiences.services.segments import segment_update

    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    segment_update(segment_id=segment.pk, by=manager_alice, rules={"all": [{"field": "locale", "op": "not_exists"}]})
    with pytest.raises(ValidationError, match="changed since it was submitted"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    assert _reload(campaign).status == "in_review"


def test_the_approver_reviews_the_audiences_definition(
    client, make_campaign, manager_alice, approver_bob, segment, team
):
    from django.utils.html import escape

    from accounts.services import access_grant
    from audiences.services.segments import segment_update
    from tests.factories import SegmentFactory

    vips = SegmentFactory(name="VIPs", kind="static", rules=None)
    access_grant(obj=vips, to=manager_alice, by=None)
    rules = {
        "all": [
            {"attribute": "plan", "type": "string", "op": "eq", "value": "pro"},
            {"any": [{"segment": vips.pk}, {"event": "purchase", "min_count": 2, "within_days": 30}]},
            {"reachable": {"app": team.pk, "platform": "ios"}},
        ]
    }
    segment_update(segment_id=segment.pk, by=manager_alice, rules=rules)
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    client.force_login(approver_bob)
    review = client.get(f"/admin/accounts/approvalrequest/{ApprovalRequest.objects.get().pk}/review/")
    page = review.content.decode()
    assert "Audience definition" in page
    # The segment's rules in words, the segments and apps they use by name, as the approval covers them.
    said = (
        "Everyone: all of: plan is “pro”; any of (member of “VIPs”; did “purchase” at least 2 times in the "
        "last 30 days); has an opted-in device on Shop (iOS) · VIPs: 0 members (static)"
    )
    assert escape(said) in page
    assert "rules {" not in page and escape('"attribute"') not in page


def test_only_drafts_are_deleted(make_campaign, manager_alice):
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(TransitionError, match="Only drafts"):
        campaign_delete(campaign_id=campaign.pk, by=manager_alice)
    campaign_cancel_request(campaign_id=campaign.pk, by=manager_alice)
    campaign_delete(campaign_id=campaign.pk, by=manager_alice)
    assert not Campaign.objects.exists()


def test_archive_needs_a_finished_campaign(make_campaign, manager_alice):
    campaign = make_campaign()
    with pytest.raises(TransitionError, match="Delete a draft instead"):
        campaign_archive(campaign_id=campaign.pk, by=manager_alice)


def test_outsider_gets_404(make_campaign, outsider_dave, manager_mallory):
    campaign = make_campaign()
    with pytest.raises(Http404):
        campaign_submit(campaign_id=campaign.pk, by=outsider_dave)


def test_fingerprint_covers_content_audience_and_schedule(make_campaign, content, segment):
    campaign = make_campaign()
    before = campaign.fingerprint()
    campaign.time_zone = "Europe/Paris"
    assert campaign.fingerprint() != before
    campaign.time_zone = "UTC"
    assert campaign.fingerprint() == before
    content.title = "Other"
    assert campaign.fingerprint() != before


def test_the_review_and_the_inbox_say_when_it_was_asked_with_the_zone(
    client, make_campaign, manager_alice, approver_bob
):
    from zoneinfo import ZoneInfo

    campaign = make_campaign(
        schedule_kind="at", send_at=dt.datetime(2027, 1, 4, 9, tzinfo=dt.UTC), time_zone="Asia/Kathmandu"
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get()
    asked = dt.datetime(2026, 12, 24, 1, 25, tzinfo=dt.UTC)
    ApprovalRequest.objects.filter(pk=request.pk).update(requested_at=asked)
    client.force_login(approver_bob)
    review = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert f"on {asked.astimezone(ZoneInfo('Asia/Kathmandu')):%Y-%m-%d %H:%M} (Asia/Kathmandu)" in review
    inbox = client.get("/admin/accounts/approvalrequest/").content.decode()
    assert "2026-12-24 07:10 (Asia/Kathmandu)" in inbox and "1:25 a.m." not in inbox  # the campaign's zone


def test_an_approver_who_changed_the_campaign_or_its_content_cannot_approve_it(
    make_campaign, manager_alice, approver_bob, segment, content
):
    """Four eyes: an approver who edited a colleague's campaign, or the content it sends, since its
    last approval, did part of the work; another approver decides. Approved once, their earlier
    edits are behind it."""
    from accounts.selectors import approvals_waiting_for
    from accounts.services import access_grant
    from delivery.services.contents import pushcontent_save
    from tests.factories import UserFactory

    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    for user in (approver_bob, approver_zoe):
        access_grant(obj=segment, to=user, by=None)
        access_grant(obj=content.app, to=user, by=None)
    campaign = make_campaign()
    campaign_update(campaign_id=campaign.pk, by=approver_bob, name="Spring sale, reworded")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    request = ApprovalRequest.objects.get(status="pending")
    assert request not in approvals_waiting_for(approver_bob)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    assert _reload(campaign).status == "in_review"
    assert request in approvals_waiting_for(approver_zoe)
    campaign_approve(campaign_id=campaign.pk, by=approver_zoe)

    # The next revision: Alice's edit of its content alone, which Bob may approve; then Bob's.
    content.body = "Everything half price"
    pushcontent_save(content=content, by=manager_alice)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    assert ApprovalRequest.objects.get(status="pending") in approvals_waiting_for(approver_bob)
    campaign_cancel_request(campaign_id=campaign.pk, by=manager_alice)
    content.body = "Everything half price, today only"
    pushcontent_save(content=content, by=approver_bob)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign_approve(campaign_id=campaign.pk, by=approver_zoe)


def test_an_approver_who_changed_the_campaigns_audience_cannot_approve_it(
    make_campaign, manager_alice, approver_bob, segment, content
):
    """The audience is part of what an approval covers, as the content is: an approver who edited
    the rules of the segment a colleague's campaign sends to, or of a segment those rules use, or
    the members of a kept list it reads, since the campaign's last approval, leaves the decision to
    another approver."""
    from accounts.services import access_grant
    from audiences.services.segments import segment_members_change, segment_update
    from tests.factories import ProfileFactory, SegmentFactory, UserFactory

    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    listed = SegmentFactory(name="Kept list", kind="static", rules={})
    access_grant(obj=listed, to=manager_alice, by=None)
    for user in (approver_bob, approver_zoe):
        for obj in (segment, listed, content.app):
            access_grant(obj=obj, to=user, by=None)
    campaign = make_campaign()
    segment_update(
        segment_id=segment.pk, by=approver_bob, rules={"all": [{"field": "locale", "op": "eq", "value": "fr"}]}
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign_approve(campaign_id=campaign.pk, by=approver_zoe)

    # A revision: Alice makes the audience read the kept list, whose members Bob then changes.
    segment_update(segment_id=segment.pk, by=manager_alice, rules={"all": [{"segment": listed.pk}]})
    segment_members_change(segment_id=listed.pk, by=approver_bob, add=[ProfileFactory().external_id])
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    campaign_approve(campaign_id=campaign.pk, by=approver_zoe)


@pytest.mark.parametrize(
    ("target", "restarted"), [("add_to_segment", False), ("replace_segment", False), ("add_to_segment", True)]
)
def test_an_approver_who_imported_into_the_campaigns_kept_list_cannot_approve_it(
    make_campaign, manager_alice, admin_erin, approver_bob, django_capture_on_commit_callbacks, target, restarted
):
    """A CSV import into a kept list changes its members as an edit of them does: the Administrator
    who ran it, or ran it again, leaves the decision on a campaign sending to the list to another
    approver."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from accounts.services import access_grant
    from audiences.models import Import
    from audiences.services.imports import import_create, import_restart
    from tests.factories import SegmentFactory

    listed = SegmentFactory(name="Kept list", kind="static", rules={})
    access_grant(obj=listed, to=manager_alice, by=None)
    campaign = make_campaign(segment=listed)
    upload = SimpleUploadedFile("people.csv", b"external_id\nann\n", content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        record = import_create(upload=upload, by=manager_alice if restarted else admin_erin, target=target,
                               segment_id=listed.pk)  # fmt: skip
    if restarted:
        Import.objects.filter(pk=record.pk).update(status=Import.Status.FAILED)
        with django_capture_on_commit_callbacks(execute=True):
            import_restart(import_id=record.pk, by=admin_erin)
    assert listed.members.filter(profile__external_id="ann").exists()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        campaign_approve(campaign_id=campaign.pk, by=admin_erin)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)


def test_a_decision_naming_another_subjects_request_says_nothing_of_it(make_campaign, manager_alice, approver_bob):
    """The request an approver read is looked for among its subject's own: an id of another
    campaign's request is told as closed, without that request's status."""
    from accounts.services import ApprovalError

    other = make_campaign(name="Other team's launch")
    other_request = campaign_submit(campaign_id=other.pk, by=manager_alice)
    campaign_cancel_request(campaign_id=other.pk, by=manager_alice)
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)

    with pytest.raises(ApprovalError) as refused:
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, request_id=other_request.pk)

    assert "closed since you read it," in str(refused.value)
    assert "cancelled" not in str(refused.value)
    assert _reload(campaign).status == "in_review"


@pytest.mark.parametrize("throttle", [0, -5])
def test_a_throttle_under_one_message_a_second_is_refused_saying_empty_is_the_apps_limit(
    make_campaign, manager_alice, throttle
):
    """0 read as no throttle: the campaign went at its app's full rate, and its review said so."""
    with pytest.raises(ValidationError) as error:
        make_campaign(throttle_per_second=throttle)
    (message,) = error.value.message_dict["throttle_per_second"]
    assert "at least 1 message per second" in message and "empty for the app's limit" in message
    campaign = make_campaign(throttle_per_second=20)
    with pytest.raises(ValidationError) as error:
        campaign_update(campaign_id=campaign.pk, by=manager_alice, throttle_per_second=throttle)
    assert "throttle_per_second" in error.value.message_dict
    assert _reload(campaign).throttle_per_second == 20


@pytest.mark.parametrize("minutes", [10_081, 3 * 525_600])
def test_a_missed_window_longer_than_seven_days_is_refused_naming_the_field(make_campaign, manager_alice, minutes):
    """Years were taken: a recurring campaign down for a month sent its latest occurrence a month
    late, and the scheduler's look-back for a send at each profile's local time counted on a window
    of hours."""
    with pytest.raises(ValidationError) as error:
        make_campaign(missed_window_minutes=minutes)
    (message,) = error.value.message_dict["missed_window_minutes"]
    assert "missed-send window is at most 10,080 minutes (7 days)" in message, message
    campaign = make_campaign(missed_window_minutes=10_080)  # the longest taken
    with pytest.raises(ValidationError) as error:
        campaign_update(campaign_id=campaign.pk, by=manager_alice, missed_window_minutes=minutes)
    assert "missed_window_minutes" in error.value.message_dict
    assert _reload(campaign).missed_window_minutes == 10_080


def test_request_changes_reads_the_approvers_standing_once(make_campaign, manager_alice, approver_bob):
    """Whether the approver may decide the request is read once, however the decision goes through
    (the campaign's transition, then the request's)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.models import User

    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    bob = User.objects.get(pk=approver_bob.pk)
    with CaptureQueriesContext(connection) as queries:
        campaign_request_changes(campaign_id=campaign.pk, by=bob, comment="Shorter title")
    assert _reload(campaign).status == "draft"
    # What the approver changed since an approval (``approver_standings``) is read from the audit log.
    read_from_the_log = [q["sql"] for q in queries if q["sql"].startswith('SELECT "accounts_auditevent"')]
    assert len(read_from_the_log) == 1, read_from_the_log


def test_approve_reads_the_approvers_standing_once(make_campaign, manager_alice, approver_bob):
    """Whether the approver may decide the request is read once, before what was submitted is
    compared with what would be sent, and not again when the decision is recorded."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.models import User

    campaign = make_campaign(kind="api_triggered", segment=None)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    bob = User.objects.get(pk=approver_bob.pk)
    with CaptureQueriesContext(connection) as queries:
        campaign_approve(campaign_id=campaign.pk, by=bob)
    assert _reload(campaign).status == "live"
    # What the approver changed since an approval (``approver_standings``) is read from the audit log.
    read_from_the_log = [q["sql"] for q in queries if q["sql"].startswith('SELECT "accounts_auditevent"')]
    assert len(read_from_the_log) == 1, read_from_the_log


def test_an_approver_who_changed_the_content_in_review_is_refused_for_it_before_the_change_is_named(
    make_campaign, manager_alice, approver_bob, content
):
    """Refused for two reasons, the approver hears first that they may not decide the request (they
    changed what it asks to approve), then, were they allowed, that it changed since submitted."""
    from accounts.services import access_grant
    from delivery.services.contents import pushcontent_save

    access_grant(obj=content.app, to=approver_bob, by=None)
    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    content.body = "Everything half price"
    pushcontent_save(content=content, by=approver_bob)
    with pytest.raises(PermissionDenied, match="You changed what this request asks to approve"):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    assert _reload(campaign).status == "in_review"
    assert ApprovalRequest.objects.get().status == "pending"


@pytest.mark.django_db(transaction=True)
def test_a_variants_content_saved_during_approval_is_not_frozen_as_what_was_approved(
    make_campaign, team, manager_alice, manager_mallory, approver_bob, monkeypatch
):
    """A colleague's save of variant B's push content commits between the approval's check of the
    campaign against its request and the freeze of its approved version: the version froze the
    words no approver read, under a fingerprint the gate found its own. The approval holds the
    contents (and the audience's segments) it checks until it commits; the save waits, then makes
    a revision."""
    import threading

    from django.db import connection

    from campaigns.services import lifecycle
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save
    from tests.campaigns.helpers import variants_set
    from tests.factories import PushContentFactory

    a, b = (PushContentFactory(app=team, name=f"Sale {label}", title=f"Title {label}") for label in "AB")
    campaign = make_campaign(content=a)
    variants_set(campaign, manager_alice, [a, b], [50, 50])
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    record = lifecycle.approval_request_record

    def edit() -> None:
        try:
            content = PushContent.objects.get(pk=b.pk)
            content.title = "Something the approver never saw"
            pushcontent_save(content=content, by=manager_mallory)
        finally:
            connection.close()

    editor = threading.Thread(target=edit)

    def record_while_the_content_is_saved(**kwargs):
        answer = record(**kwargs)
        editor.start()
        editor.join(timeout=3)  # it commits here, unless the approval holds the content
        return answer

    monkeypatch.setattr(lifecycle, "approval_request_record", record_while_the_content_is_saved)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, request_id=request.pk)
    editor.join(timeout=30)

    approved = _reload(campaign).approved()
    assert [v["spec"]["title"] for v in approved.variants] == ["Title A", "Title B"]
    assert approved.fingerprint == request.fingerprint
    assert PushContent.objects.get(pk=b.pk).title == "Something the approver never saw"  # saved after
    assert _reload(campaign).has_pending_revision
