"""The life of a campaign: create, edit, submit, approve, stop, archive, duplicate.

Each transition locks the campaign row, checks the state it starts from, writes an audit
event, and queues follow-up work on commit (STYLE rule 2).
"""

from __future__ import annotations

import datetime as dt

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import ApprovalRequest, User
from accounts.selectors import approval_current, in_scope, visible_named
from accounts.services import (
    SendNotConfirmed,
    TransitionError,
    access_grant,
    approval_request_as_read,
    approval_request_cancel,
    approval_request_close,
    approval_request_decide,
    approval_request_lock_for_decision,
    approval_request_open,
    approval_request_record,
    audit,
    lock_for,
    status_transition,
)
from campaigns.models import Campaign
from campaigns.schedule import (
    MAX_MISSED_WINDOW_MINUTES,
    SCHEDULE_FIELDS,
    at_local_time,
    lateness_allowed,
    local_look_back,
    local_occurrence_open,
    next_occurrence,
    schedule_check,
)
from config.labels import numbered
from config.zones import zoned
from delivery.services.contents import pushcontent_duplicate

Status = Campaign.Status

EDITABLE_FIELDS = (
    "name",
    "app",
    "kind",
    "purpose",
    "segment",
    "content",
    "schedule_kind",
    "send_at",
    "time_zone",
    "recurrence",
    "cron",
    "ends_at",
    "at_local_time",
    "missed_window_minutes",
    "throttle_per_second",
)


# What a transition saves with the status: the fields the steps change along with it.
SAVED_WITH_STATUS = ("approved_fingerprint", "approved_version", "activated_at", "next_occurrence_at")


def _check_references(campaign: Campaign, *, by: User, changed: set[str]) -> None:
    """The app, segment and content fit together; those the user sets now must be in their scope
    (``in_scope``: one they only read through a review is not theirs to use)."""
    from audiences.models import Segment
    from delivery.models import App, PushContent

    errors = {}
    app, segment, content = campaign.app, campaign.segment, campaign.content
    if app is None:
        errors["app"] = "Choose an app."
    elif "app" in changed and not in_scope(by, App.objects.filter(pk=app.pk)).exists():
        errors["app"] = "Choose an app you have access to."
    if content is None:
        errors["content"] = "Choose push content."
    elif "content" in changed and not in_scope(by, PushContent.objects.filter(pk=content.pk)).exists():
        errors["content"] = "Choose push content you have access to."
    elif app is not None and content.app_id != app.pk:
        # The campaign's app, kept on a campaign granted alone, is named as its page names it.
        named = f"'{app}'" if visible_named(by, App, [app.pk]) else numbered("app", app.pk)
        errors["content"] = f"This content belongs to another app than {named}."
    if campaign.kind == Campaign.Kind.SCHEDULED:
        if segment is None:
            errors["segment"] = "A scheduled campaign needs an audience segment."
        elif "segment" in changed and not in_scope(by, Segment.objects.filter(pk=segment.pk)).exists():
            errors["segment"] = "Choose a segment you have access to."
    if errors:
        raise ValidationError(errors)


# What a scheduled send gives its content as ``context`` (``campaign_fire_due``): no call's values.
SCHEDULED_CONTEXT = {"campaign": {"id": 0, "name": ""}}


def campaign_context_check(campaign: Campaign, *, by: User | None = None) -> None:
    """Refuse a scheduled campaign whose content, or a variant's, shows a ``context.*`` value
    without a default: only an API trigger's call gives a context, so a scheduled send would show
    it empty ("Order  is on its way"). A default, or a condition on the value, says what shows
    without it. Raises ValidationError naming ``content`` (``variants`` for another variant's).

    ``by``: whom the refusal is said to. A content they may not see (a colleague's, kept on a
    campaign granted to them alone) is named by its number, as the campaign's page names it."""
    from delivery.models import PushContent
    from delivery.payloads import spec_context_gaps

    if campaign.kind != Campaign.Kind.SCHEDULED or campaign.content is None:
        return
    contents = [("content", "", campaign.content)]
    contents += [
        ("variants", f"Variant {v.label}'s content ", v.content)
        for v in campaign.variant_list()
        if v.content_id != campaign.content_id
    ]
    for field, whose, content in contents:
        shown = spec_context_gaps(content.spec(), given=SCHEDULED_CONTEXT)
        if shown:
            if by is None or visible_named(by, PushContent, [content.pk]):
                named = f"{whose}'{content}'"
            else:
                named = f"{whose}#{content.pk}" if whose else numbered("content", content.pk)
            raise ValidationError(
                {
                    field: f"{named} shows {shown}: only an API trigger's call gives a context, "
                    "so a scheduled campaign sends it empty. Give it a default "
                    "({{ context.… | default: '…' }}), show a profile attribute instead, or make the "
                    "campaign API-triggered."
                }
            )


def campaign_name_fits_check(campaign: Campaign) -> None:
    """Refuse a campaign whose name, which every send gives its content (``context.campaign.name``:
    ``Campaign.send_context``), makes a message of its content or a variant's content too large for
    APNs' or FCM's 4,096 bytes: the content's own check counts a value at 100 bytes, a name may take
    more, and every message of it would fail at send. Measured for a profile without attributes, in
    each of the content's locales. Raises ValidationError naming ``name``."""
    from liquid.exceptions import LiquidError

    from delivery.payloads import APNS_LIMIT, FCM_LIMIT, payload_sizes, spec_reads

    if campaign.content is None:
        return
    contents = [campaign.content]
    contents += [v.content for v in campaign.variant_list() if v.content_id != campaign.content_id]
    context = campaign.send_context()
    for content in contents:
        spec = content.spec()
        if not spec_reads(spec, "context.campaign"):
            continue
        for locale in ("", *(spec.get("variants") or {})):
            try:
                apns, fcm = payload_sizes(spec, profile={"locale": locale, "attributes": {}}, context=context)
            except LiquidError:  # said where the content is checked
                continue
            over = max(apns - APNS_LIMIT, fcm - FCM_LIMIT)
            if over > 0:
                platform, size, limit = (
                    ("iOS", apns, APNS_LIMIT) if apns - APNS_LIMIT == over else ("Android", fcm, FCM_LIMIT)
                )
                raise ValidationError(
                    {
                        "name": f"Its content shows the campaign's name (context.campaign.name): with this "
                        f"name its {platform} payload is {size} bytes, {over} over the {limit}-byte limit, "
                        "so every message would fail at send. Shorten the name or the content."
                    }
                )


def throttle_check(throttle: int | None) -> None:
    """Refuse a campaign throttle under 1 message a second: 0 reads as no throttle (the send goes at
    its app's full rate), and empty already says the app's limit. Raises ValidationError naming
    ``throttle_per_second``."""
    if throttle is not None and throttle < 1:
        raise ValidationError(
            {"throttle_per_second": "A throttle is at least 1 message per second: leave it empty for the app's limit."}
        )


def missed_window_check(minutes: int | None) -> None:
    """Refuse a missed-send window over ``MAX_MISSED_WINDOW_MINUTES`` (7 days), or under 0: the
    scheduler sends an occurrence missed during downtime at most a week late, and looks back that far
    for a send at each profile's local time. Raises ValidationError naming ``missed_window_minutes``."""
    if minutes is None or not 0 <= minutes <= MAX_MISSED_WINDOW_MINUTES:
        raise ValidationError(
            {
                "missed_window_minutes": f"The missed-send window is at most {MAX_MISSED_WINDOW_MINUTES:,} minutes "
                "(7 days), and not negative: an occurrence missed during downtime for longer is recorded "
                "skipped, not sent that late."
            }
        )


def _validate(campaign: Campaign, *, by: User, changed: set[str] = frozenset()) -> None:
    if not (campaign.name or "").strip():
        raise ValidationError({"name": "A campaign needs a name."})
    if campaign.kind not in Campaign.Kind.values:
        raise ValidationError({"kind": f"Use one of {', '.join(Campaign.Kind.values)}."})
    if campaign.purpose not in Campaign.Purpose.values:
        raise ValidationError({"purpose": f"Use one of {', '.join(Campaign.Purpose.values)}."})
    if campaign.pk is None or "throttle_per_second" in changed:
        # Checked when it is set: a throttle saved before this rule (0, read as none) sends as approved.
        throttle_check(campaign.throttle_per_second)
    if campaign.pk is None or "missed_window_minutes" in changed:
        missed_window_check(campaign.missed_window_minutes)
    _check_references(campaign, by=by, changed=changed)
    campaign_context_check(campaign, by=by)
    campaign_name_fits_check(campaign)
    if campaign.winner_mode:
        from campaigns.services.winner import campaign_winner_check

        campaign_winner_check(campaign)  # e.g. made API-triggered or recurring while in winner mode
    schedule_check(
        kind=campaign.kind,
        schedule_kind=campaign.schedule_kind,
        send_at=campaign.send_at,
        time_zone=campaign.time_zone,
        recurrence=campaign.recurrence,
        cron=campaign.cron,
        ends_at=campaign.ends_at,
    )


def campaign_create(*, by: User, **fields) -> Campaign:
    """Create a draft campaign owned by ``by``, who gets object access to it.

    ``fields`` are the editable fields (name, app, kind, purpose, segment, content, schedule...).
    Raises PermissionDenied when the role may not author campaigns, ValidationError naming the field.
    """
    return _create(by=by, changed={"app", "segment", "content"}, **fields)


def _create(*, by: User, changed: set[str], **fields) -> Campaign:
    """``changed``: the references ``by`` sets now, which must be within their access."""
    if not by.has_perm("campaigns.add_campaign"):
        raise PermissionDenied("Your role may not create campaigns.")
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationError({field: "Not a campaign field." for field in unknown})
    campaign = Campaign(owner=by, **fields)
    _validate(campaign, by=by, changed=changed)
    with transaction.atomic():
        campaign.save()
        access_grant(obj=campaign, to=by, by=None)
        audit(actor=by, action="campaign_created", obj=campaign)
    return campaign


def lock_editable(campaign_id: int, *, by: User) -> Campaign:
    """Lock a campaign that ``by`` may edit now: a draft, or a scheduled or live one without a
    revision in review. Call inside ``transaction.atomic()``.

    Raises Http404 outside their access, PermissionDenied without the role, TransitionError otherwise.
    """
    campaign = lock_for(Campaign, campaign_id, by=by, perm="campaigns.change_campaign")
    editable_check(campaign)
    return campaign


def editable_check(campaign: Campaign) -> None:
    """Check that a campaign (locked by the caller) may be edited now: a draft, or a scheduled or
    live one without a revision in review. Raises TransitionError otherwise."""
    if campaign.status == Status.IN_REVIEW:
        raise TransitionError(campaign, "edited", "Cancel the approval request first.")
    if campaign.status not in (Status.DRAFT, Status.SCHEDULED, Status.LIVE):
        raise TransitionError(campaign, "edited", "Duplicate it to make a new draft.")
    if campaign.is_active and revision_waiting(campaign) is not None:
        raise TransitionError(campaign, "edited", "Its revision is waiting for approval: cancel the request first.")


def campaign_update(*, campaign_id: int, by: User, **changes) -> Campaign:
    """Edit a campaign. A draft stays a draft. On a scheduled or live campaign, an edit of its
    content, audience or schedule is a pending revision: the approved version (``approved_version``)
    keeps sending until the revision is approved (submit it with ``campaign_submit``); only
    ``campaign_stop`` takes the campaign off the air. Its missed-send window too: it decides whether
    a missed occurrence goes out late. And its name when its content shows it (``Campaign.shows_name``):
    the approved version sends the name it was approved with; otherwise a rename is no revision.

    Raises TransitionError when it is in review (locked: a draft, or a revision waiting for
    approval) or finished, ValidationError naming the field.
    """
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationError({field: "Not a campaign field." for field in unknown})
    with transaction.atomic():
        campaign = lock_editable(campaign_id, by=by)
        changed = {
            field
            for field, value in changes.items()
            if getattr(campaign, f"{field}_id" if field in ("app", "segment", "content") else field)
            != (getattr(value, "pk", value))
        }
        for field, value in changes.items():
            setattr(campaign, field, value)
        _validate(campaign, by=by, changed=changed)
        campaign.updated_at = timezone.now()
        campaign.save()
        revision = campaign.is_active and campaign.has_pending_revision
        audit(
            actor=by,
            action="campaign_revision_edited" if revision else "campaign_changed",
            obj=campaign,
            summary={"fields": sorted(changed)},
        )
    return campaign


def revision_waiting(campaign: Campaign) -> ApprovalRequest | None:
    """The pending request of a scheduled or live campaign's revision, if one waits."""
    request = approval_current(campaign)
    return request if request is not None and request.status == ApprovalRequest.Status.PENDING else None


def campaign_delete(*, campaign_id: int, by: User) -> None:
    """Delete a draft. Raises TransitionError for any other state (archive it instead)."""
    with transaction.atomic():
        campaign = lock_for(Campaign, campaign_id, by=by, perm="campaigns.delete_campaign")
        if campaign.status != Status.DRAFT:
            raise TransitionError(campaign, "deleted", "Only drafts can be deleted.")
        audit(actor=by, action="campaign_deleted", obj=campaign)
        campaign.delete()


def campaign_submit(*, campaign_id: int, by: User, message: str = "") -> ApprovalRequest:
    """Send a draft, or the pending revision of a scheduled or live campaign, for review: it is
    locked until approved, sent back, or the request is cancelled. A revision's approved version
    keeps sending meanwhile.

    Raises TransitionError in any other state (no revision to submit, already waiting).
    """
    with transaction.atomic():
        campaign = lock_for(Campaign, campaign_id, by=by, perm="campaigns.submit_campaign")
        revision = campaign.is_active and campaign.has_pending_revision and revision_waiting(campaign) is None
        if campaign.status != Status.DRAFT and not revision:
            hint = "It has no revision to submit: edit it first." if campaign.is_active else ""
            raise TransitionError(campaign, "submitted for review", hint)
        _validate(campaign, by=by)
        request = approval_request_open(
            subject=campaign,
            context=campaign.approval_context(),
            source_context=campaign.approval_source_context(),
            fingerprint=campaign.fingerprint(),
            approve_perm="campaigns.approve_campaign",
            by=by,
            message=message,
            snapshot=campaign.snapshot(),
        )
        if revision:
            audit(actor=by, action="campaign_revision_submitted", obj=campaign, summary={"request": request.pk})
        else:
            status_transition(campaign, Status.IN_REVIEW, by=by, action="submitted", also_saved=SAVED_WITH_STATUS)
    return request


def _pending_request(campaign: Campaign, *, read_id: int | None = None) -> ApprovalRequest:
    request = approval_current(campaign)
    if request is None or request.status != ApprovalRequest.Status.PENDING:
        raise TransitionError(campaign, "decided", "It has no pending approval request.")
    return approval_request_as_read(request, read_id=read_id)


def _lock_for_decision(campaign_id: int, *, by: User) -> Campaign:
    """Lock a campaign an approver decides: one they read (a revision moving it to another app is
    read by both apps' people), their role approving. Whether they may decide its request (access
    to its app, to both apps of a move, the four eyes) is the request's to say
    (``approval_request_lock_for_decision``, ``approval_request_decide``).

    Raises Http404 outside their access, PermissionDenied without the role."""
    campaign = lock_for(Campaign, campaign_id, by=by, perm="campaigns.view_campaign")
    if not by.has_perm("campaigns.approve_campaign"):
        raise PermissionDenied("Your role may not do this to a campaign.")
    return campaign


def campaign_cancel_request(*, campaign_id: int, by: User) -> Campaign:
    """The requester takes a campaign out of review, back to draft; or a revision back to a pending
    edit (the approved version keeps sending)."""
    with transaction.atomic():
        campaign = lock_for(Campaign, campaign_id, by=by, perm="campaigns.submit_campaign")
        if campaign.is_active and revision_waiting(campaign) is not None:
            approval_request_cancel(request_id=_pending_request(campaign).pk, by=by)
            audit(actor=by, action="campaign_revision_request_cancelled", obj=campaign)
            return campaign
        if campaign.status != Status.IN_REVIEW:
            raise TransitionError(campaign, "taken out of review")
        approval_request_cancel(request_id=_pending_request(campaign).pk, by=by)
        status_transition(campaign, Status.DRAFT, by=by, action="request_cancelled", also_saved=SAVED_WITH_STATUS)
    return campaign


def campaign_request_changes(*, campaign_id: int, by: User, comment: str, request_id: int | None = None) -> Campaign:
    """An approver sends the campaign back to draft with a comment the requester sees; a revision
    goes back to a pending edit, and the approved version keeps sending.

    Raises PermissionDenied when ``by`` may not decide its request (``approval_request_decide``
    asks ``approver_standing``, once); with ``request_id`` (the request the approver read),
    ApprovalError when another request waits now.
    """
    with transaction.atomic():
        campaign = _lock_for_decision(campaign_id, by=by)
        if campaign.is_active and revision_waiting(campaign) is not None:
            request = _pending_request(campaign, read_id=request_id)
            approval_request_decide(request_id=request.pk, by=by, approve=False, comment=comment)
            audit(actor=by, action="campaign_revision_changes_requested", obj=campaign, summary={"comment": comment})
            return campaign
        if campaign.status != Status.IN_REVIEW:
            raise TransitionError(campaign, "sent back for changes")
        request = _pending_request(campaign, read_id=request_id)
        approval_request_decide(request_id=request.pk, by=by, approve=False, comment=comment)
        status_transition(
            campaign,
            Status.DRAFT,
            by=by,
            action="changes_requested",
            summary={"comment": comment},
            also_saved=SAVED_WITH_STATUS,
        )
    return campaign


def _approve_version(campaign: Campaign, request: ApprovalRequest, *, by: User, now: dt.datetime) -> dict:
    """Freeze the campaign as it stands into its approved version (the next number)."""
    previous = campaign.approved_version or {}
    snapshot = campaign.snapshot()
    snapshot.update(
        number=previous.get("number", 0) + 1,
        approved_at=now.isoformat(),
        approved_by=by.get_username(),
        request_id=request.pk,
    )
    campaign.approved_version = snapshot
    # The version's own, as it covers the campaign now: a request submitted before approvals covered
    # the window or the name holds one without them (``Campaign.submitted_as``), which the gate,
    # comparing the two, would refuse.
    campaign.approved_fingerprint = snapshot["fingerprint"]
    return snapshot


def _approve_revision(
    campaign: Campaign,
    request: ApprovalRequest,
    *,
    by: User,
    comment: str,
    now: dt.datetime,
    send_confirmed: bool = True,
):
    """The revision of a scheduled or live campaign takes over from the approved version. A changed
    schedule moves the next occurrence; a send that already happened is not repeated, and one due
    but not sent yet is sent by the new schedule if it has it, or recorded skipped (``_due_when_revised``).
    A send it starts at once needs ``send_confirmed`` (``_fire_when_due``)."""
    before = campaign.approved()
    snapshot = _approve_version(campaign, request, by=by, now=now)
    if campaign.kind == Campaign.Kind.SCHEDULED and (
        before is None or any(getattr(before, f) != getattr(campaign, f) for f in SCHEDULE_FIELDS)
    ):
        fired = campaign.occurrences.exists()
        if campaign.schedule_kind == Campaign.ScheduleKind.NOW:
            campaign.next_occurrence_at = None if fired else now
        elif campaign.schedule_kind == Campaign.ScheduleKind.AT and _one_off_sent(campaign):
            # A one-off sends once: its send went (it may still be going), so another time sends
            # nothing more to the same audience (a new send is a duplicate of the campaign).
            campaign.next_occurrence_at = None
        else:
            approved = campaign.approved()
            looked_back = local_look_back(approved)  # as far as local_occurrence_open looks
            recent = campaign.occurrences.filter(due_at__gt=now - looked_back).values_list("due_at", flat=True)
            was_due = campaign.next_occurrence_at
            campaign.next_occurrence_at = _first_due(
                approved, now=now, fired=fired, fired_dues=set(recent) if fired else set()
            )
            # At each profile's local time, either version: the occurrence under way is found above.
            if was_due is not None and was_due <= now and not at_local_time(approved) and not at_local_time(before):
                _due_when_revised(campaign, approved, was_due=was_due, now=now)
    campaign.updated_at = now
    campaign.save(update_fields=["approved_version", "approved_fingerprint", "next_occurrence_at", "updated_at"])
    audit(
        actor=by,
        action="campaign_revision_approved",
        obj=campaign,
        summary={"version": snapshot["number"], "replaces": before.number if before else None, "comment": comment},
    )
    _fire_when_due(campaign, now=now, send_confirmed=send_confirmed)


def _one_off_sent(campaign: Campaign) -> bool:
    """Did an occurrence of the campaign send (not one skipped, or refused by the gate)?"""
    from campaigns.models import Occurrence

    sent = (Occurrence.Outcome.SENT, Occurrence.Outcome.SENT_LATE, Occurrence.Outcome.SENT_AT_APPROVAL)
    return campaign.occurrences.filter(outcome__in=sent).exists()


def _due_when_revised(campaign: Campaign, approved, *, was_due: dt.datetime, now: dt.datetime) -> None:
    """The schedule changed while an occurrence (``was_due``) was due and not sent yet: the beat
    comes once a minute, or a worker was down. The new schedule's occurrence since then, within its
    window, is still due (the beat sends it, or records it skipped); the one due under the version
    replaced, when the new one has no send at that time, is recorded skipped, saying why."""
    from campaigns.models import Occurrence
    from campaigns.services.scheduling import _occurrence

    fired = set(campaign.occurrences.filter(due_at__gte=was_due).values_list("due_at", flat=True))
    owed = next_occurrence(approved, after=max(was_due, now - lateness_allowed(approved)) - dt.timedelta.resolution)
    while owed is not None and owed <= now and owed in fired:
        owed = next_occurrence(approved, after=owed)
    if owed is not None and owed <= now:
        campaign.next_occurrence_at = owed
    if was_due in fired or campaign.next_occurrence_at == was_due:
        return
    if next_occurrence(approved, after=was_due - dt.timedelta.resolution) == was_due:
        late = int((now - was_due).total_seconds() // 60)
        note = f"missed by {late:,} minutes, more than its window of {approved.missed_window_minutes:,} minutes"
    else:
        note = f"not sent: version {approved.number}, approved before it was, has no send at that time"
    _occurrence(campaign, was_due, Occurrence.Outcome.SKIPPED_MISSED, local=False, note=note)


def campaign_approve(
    *,
    campaign_id: int,
    by: User,
    comment: str = "",
    now: dt.datetime | None = None,
    request_id: int | None = None,
    read_mark: str | None = None,
    send_confirmed: bool = True,
) -> Campaign:
    """Approve and activate: the campaign becomes scheduled (a future send) or live. For the
    revision of a scheduled or live campaign, the revision becomes the approved version that sends.
    ``read_mark`` (the review page's: ``Campaign.fingerprint`` as the page was drawn) is what the
    approver read: the approval freezes that, or nothing. An approval that starts a send at once (sent
    when approved, a one-off or a recurring send already due) approves nothing unless
    ``send_confirmed``: the review's first press, which asks its approver first, passes False.

    Raises ValidationError when what would be sent differs from what was submitted (e.g. its push
    content was edited meanwhile: ask for changes) or from what the page of ``read_mark`` showed
    (edited and put back since), PermissionDenied when ``by`` may not approve
    this request (own request, not an approver of its policy, no access: to both apps for a
    revision moving it to another app), ApprovalError when
    ``request_id`` (the request the approver read) is given and another request waits now,
    SendNotConfirmed when it would start a send at once and ``send_confirmed`` is False (checked
    last: every other refusal comes first).
    """
    now = now or timezone.now()
    with transaction.atomic():
        campaign = _lock_for_decision(campaign_id, by=by)
        revision = campaign.is_active and revision_waiting(campaign) is not None
        if campaign.status != Status.IN_REVIEW and not revision:
            raise TransitionError(campaign, "approved")
        # Refused the request before anything else is said of it; its standing is read once.
        request = approval_request_lock_for_decision(
            request_id=_pending_request(campaign, read_id=request_id).pk, by=by
        )
        _hold_what_it_sends(campaign)
        if not campaign.submitted_as(request.fingerprint):
            raise ValidationError("What would be sent changed since it was submitted: ask for changes and resubmit.")
        if read_mark is not None and read_mark != campaign.fingerprint():
            # Submitted as it is now, but the page the approver read was drawn while it was otherwise.
            raise ValidationError(
                f"'{campaign}' changed since this page showed it: nothing was approved. Read it again as it is now."
            )
        _check_a_send_is_left(campaign, now=now)
        approval_request_record(request=request, by=by, approve=True, comment=comment)
        if revision:
            _approve_revision(campaign, request, by=by, comment=comment, now=now, send_confirmed=send_confirmed)
            return campaign
        _approve_version(campaign, request, by=by, now=now)
        campaign.activated_at = now
        if campaign.kind == Campaign.Kind.API_TRIGGERED:
            campaign.next_occurrence_at = None
            to = Status.LIVE
        else:
            campaign.next_occurrence_at = _first_due(campaign, now=now - dt.timedelta(microseconds=1))
            to = Status.SCHEDULED if campaign.next_occurrence_at and campaign.next_occurrence_at > now else Status.LIVE
        status_transition(
            campaign,
            to,
            by=by,
            action="approved",
            summary={"comment": comment, "version": 1},
            also_saved=SAVED_WITH_STATUS,
        )
        _fire_when_due(campaign, now=now, send_confirmed=send_confirmed)
    return campaign


def _fire_when_due(campaign: Campaign, *, now: dt.datetime, send_confirmed: bool) -> None:
    """After an approval set the campaign's next occurrence: one due already is fired once the
    approval commits. Unless ``send_confirmed``, raises SendNotConfirmed instead, in the approval's
    transaction, which rolls back all it wrote: nothing is approved, nothing sent."""
    if campaign.next_occurrence_at is None or campaign.next_occurrence_at > now:
        return
    if not send_confirmed:
        raise SendNotConfirmed(f"Approving '{campaign}' starts its send at once: confirm it first.")
    transaction.on_commit(lambda: _queue_fire(campaign.pk))


def _hold_what_it_sends(campaign: Campaign) -> None:
    """Lock the push contents (its own, its variants') and the segments (its audience, those its rules
    use) an approval checks against its request and freezes, until the approval commits: a save of
    one of them waits, and is then a revision, instead of committing between the check and the freeze
    and being frozen as approved unseen. Call in the decision's transaction, before the check."""
    from audiences.models import Segment
    from delivery.models import PushContent

    contents = PushContent.objects.select_for_update().filter(pk__in=campaign.approval_content_ids())
    list(contents.order_by("pk").values_list("pk", flat=True))
    segment_ids = Campaign.approval_segment_ids_of([campaign])[campaign.pk]
    if segment_ids:
        segments = Segment.objects.select_for_update(no_key=True).filter(pk__in=segment_ids)
        list(segments.order_by("pk").values_list("pk", flat=True))


def _check_a_send_is_left(campaign: Campaign, *, now: dt.datetime) -> None:
    """Refuse to approve a recurring schedule that ended before the approval: it would go live and
    complete at once without a send or a word. Raises ValidationError."""
    if campaign.kind != Campaign.Kind.SCHEDULED or campaign.schedule_kind != Campaign.ScheduleKind.RECURRING:
        return
    if campaign.ends_at is None or _first_due(campaign, now=now - dt.timedelta(microseconds=1)) is not None:
        return
    ended = zoned(campaign.ends_at, campaign.time_zone)
    raise ValidationError(f"'{campaign}' has no send left: its schedule ended {ended}. Ask for changes.")


def _first_due(
    campaign, *, now: dt.datetime, fired: bool = False, fired_dues: set[dt.datetime] = frozenset()
) -> dt.datetime | None:
    """The next occurrence after ``now``; for a one-off whose time passed before it was approved, that
    time, so the beat sends it late within the campaign's window or records it skipped, saying why,
    instead of the campaign completing without a word. (Not again once it has fired.) At each
    profile's local time, the occurrence under way while some time zone has not reached it yet,
    unless it fired (``fired_dues``): sent to the zones behind, the others skipped past the window."""
    due = local_occurrence_open(campaign, now=now, fired=fired_dues) or next_occurrence(campaign, after=now)
    if due is None and campaign.schedule_kind == Campaign.ScheduleKind.AT and not fired:
        due = next_occurrence(campaign, after=dt.datetime.min.replace(tzinfo=dt.UTC))
    return due


def _queue_fire(campaign_id: int) -> None:
    from django_q.tasks import async_task

    async_task("campaigns.tasks.campaign_fire_due_task", campaign_id, q_options={"timeout": 120})


def campaign_stop(*, campaign_id: int, by: User) -> Campaign:
    """Stop a scheduled or live campaign: no further occurrence, and its queued deliveries are stopped,
    in whichever app they were sent to.

    Whoever may stop it: the row's app's people, and while a revision moving it to another app
    waits, the people of the app its approved version still sends to (``Campaign.access_read_scope_perms``).
    Raises Http404 outside their access, PermissionDenied without the role, TransitionError in
    another state.
    """
    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_stop

    with transaction.atomic():
        campaign = lock_for(Campaign, campaign_id, by=by, perm="campaigns.stop_campaign")
        if campaign.status not in (Status.SCHEDULED, Status.LIVE):
            raise TransitionError(campaign, "stopped")
        campaign.next_occurrence_at = None
        status_transition(campaign, Status.STOPPED, by=by, action="stopped", also_saved=SAVED_WITH_STATUS)
        if (request := revision_waiting(campaign)) is not None:
            approval_request_close(request_id=request.pk, by=by, reason="The campaign was stopped.")
        running = (
            Dispatch.objects.running()
            .filter(source_id=campaign.pk, kind__in=(Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER))
            .values_list("pk", flat=True)
        )
        for dispatch_id in list(running):
            dispatch_stop(dispatch_id=dispatch_id, by=by, source_stopped=True)
    return campaign


def campaign_archive(*, campaign_id: int, by: User) -> Campaign:
    """Archive a finished campaign (completed, stopped, failed): hidden from the default list."""
    with transaction.atomic():
        campaign = lock_for(Campaign, campaign_id, by=by, perm="campaigns.archive_campaign")
        if campaign.status not in (Status.COMPLETED, Status.STOPPED, Status.FAILED):
            hint = "Stop it first." if campaign.is_active else "Delete a draft instead."
            raise TransitionError(campaign, "archived", hint)
        status_transition(campaign, Status.ARCHIVED, by=by, action="archived", also_saved=SAVED_WITH_STATUS)
    return campaign


def campaign_duplicate(*, campaign_id: int, by: User) -> Campaign:
    """A new draft with the same settings and a copy of the content, owned by ``by``, from any state.

    The copy keeps the source's app and segment, as a colleague editing the source could, even
    when ``by`` was never given access to them. Raises Http404 when the campaign is outside
    ``by``'s access, PermissionDenied when their role may not create campaigns (both checked
    before anything is written).
    """
    with transaction.atomic():
        source = lock_for(Campaign, campaign_id, by=by, perm="campaigns.view_campaign")
        if not by.has_perm("campaigns.add_campaign"):
            raise PermissionDenied("Your role may not create campaigns.")
        content = None
        if source.content_id is not None:
            content = pushcontent_duplicate(content_id=source.content_id, by=by)
        fields = {field: getattr(source, field) for field in EDITABLE_FIELDS if field not in ("name", "content")}
        copy = _create(by=by, changed={"content"}, name=f"{source.name} (copy)"[:200], content=content, **fields)
        variants = source.variant_list()
        if variants:
            from campaigns.models import CampaignVariant

            # The first variant is the campaign's content, copied above; the others are shared, as its segment is.
            CampaignVariant.objects.bulk_create(
                CampaignVariant(
                    campaign=copy, number=v.number, content=content if v.number == 1 else v.content, share=v.share
                )
                for v in variants
            )
            copy.holdout_share = source.holdout_share
            copy.save(update_fields=["holdout_share"])
        goal = ("conversion_event", "conversion_where", "conversion_window_hours", "conversion_anchor")
        goal += ("winner_mode", *Campaign.WINNER_FIELDS) if variants else ()
        for field in goal:
            setattr(copy, field, getattr(source, field))
        copy.save(update_fields=list(goal))
        audit(actor=by, action="campaign_duplicated", obj=copy, summary={"from": source.pk})
    return copy
