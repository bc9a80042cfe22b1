"""Every write of campaigns: the lifecycle, approvals, firing occurrences, API triggers.

Each transition locks the campaign row, checks the state it starts from, writes an audit
event, and queues follow-up work on commit (STYLE rule 2).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.http import Http404
from django.utils import timezone

from accounts.models import ApprovalRequest, User
from accounts.selectors import approval_current, can, visible_to
from accounts.services import (
    TransitionError,
    access_grant,
    approval_request_cancel,
    approval_request_close,
    approval_request_decide,
    approval_request_open,
    audit,
    lock_for,
)
from campaigns.models import Campaign, Occurrence
from campaigns.schedule import local_wall_time, next_occurrence, schedule_check
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


def _lock(campaign_id: int, by: User, perm: str) -> Campaign:
    return lock_for(Campaign, campaign_id, by=by, perm=perm, label="campaign")


def _transition(campaign: Campaign, to: str, *, by: User | None, action: str, summary: dict | None = None) -> None:
    before = campaign.status
    campaign.status = to
    campaign.status_changed_at = timezone.now()
    campaign.updated_at = campaign.status_changed_at
    campaign.save(
        update_fields=[
            "status",
            "status_changed_at",
            "updated_at",
            "approved_fingerprint",
            "approved_version",
            "activated_at",
            "next_occurrence_at",
        ]
    )
    audit(actor=by, action=f"campaign_{action}", obj=campaign, summary={"from": before, "to": to, **(summary or {})})


def _check_references(campaign: Campaign, *, by: User, changed: set[str]) -> None:
    """The app, segment and content fit together; those the user sets now must be within their access."""
    from audiences.selectors import segments_visible_to
    from delivery.models import App, PushContent

    errors = {}
    app, segment, content = campaign.app, campaign.segment, campaign.content
    if app is None:
        errors["app"] = "Choose an app."
    elif "app" in changed and not visible_to(by, App.objects.filter(pk=app.pk)).exists():
        errors["app"] = "Choose an app you have access to."
    if content is None:
        errors["content"] = "Choose push content."
    elif "content" in changed and not visible_to(by, PushContent.objects.filter(pk=content.pk)).exists():
        errors["content"] = "Choose push content you have access to."
    elif app is not None and content.app_id != app.pk:
        errors["content"] = f"This content belongs to another app than '{app}'."
    if campaign.kind == Campaign.Kind.SCHEDULED:
        if segment is None:
            errors["segment"] = "A scheduled campaign needs an audience segment."
        elif "segment" in changed and not segments_visible_to(by).filter(pk=segment.pk).exists():
            errors["segment"] = "Choose a segment you have access to."
    if errors:
        raise ValidationError(errors)


def _validate(campaign: Campaign, *, by: User, changed: set[str] = frozenset()) -> None:
    if not (campaign.name or "").strip():
        raise ValidationError({"name": "A campaign needs a name."})
    if campaign.kind not in Campaign.Kind.values:
        raise ValidationError({"kind": f"Use one of {', '.join(Campaign.Kind.values)}."})
    if campaign.purpose not in Campaign.Purpose.values:
        raise ValidationError({"purpose": f"Use one of {', '.join(Campaign.Purpose.values)}."})
    _check_references(campaign, by=by, changed=changed)
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


def campaign_update(*, campaign_id: int, by: User, **changes) -> Campaign:
    """Edit a campaign. A draft stays a draft. On a scheduled or live campaign, an edit of its
    content, audience or schedule is a pending revision: the approved version (``approved_version``)
    keeps sending until the revision is approved (submit it with ``campaign_submit``); only
    ``campaign_stop`` takes the campaign off the air.

    Raises TransitionError when it is in review (locked: a draft, or a revision waiting for
    approval) or finished, ValidationError naming the field.
    """
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationError({field: "Not a campaign field." for field in unknown})
    with transaction.atomic():
        campaign = _lock(campaign_id, by, "campaigns.change_campaign")
        if campaign.status == Status.IN_REVIEW:
            raise TransitionError(campaign, "edited", "Cancel the approval request first.")
        if campaign.status not in (Status.DRAFT, Status.SCHEDULED, Status.LIVE):
            raise TransitionError(campaign, "edited", "Duplicate it to make a new draft.")
        if campaign.is_active and revision_waiting(campaign) is not None:
            raise TransitionError(campaign, "edited", "Its revision is waiting for approval: cancel the request first.")
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
        campaign = _lock(campaign_id, by, "campaigns.delete_campaign")
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
        campaign = _lock(campaign_id, by, "campaigns.submit_campaign")
        revision = campaign.is_active and campaign.has_pending_revision and revision_waiting(campaign) is None
        if campaign.status != Status.DRAFT and not revision:
            hint = "It has no revision to submit: edit it first." if campaign.is_active else ""
            raise TransitionError(campaign, "submitted for review", hint)
        _validate(campaign, by=by)
        request = approval_request_open(
            subject=campaign,
            context=campaign.approval_context(),
            fingerprint=campaign.fingerprint(),
            approve_perm="campaigns.approve_campaign",
            by=by,
            message=message,
        )
        if revision:
            audit(actor=by, action="campaign_revision_submitted", obj=campaign, summary={"request": request.pk})
        else:
            _transition(campaign, Status.IN_REVIEW, by=by, action="submitted")
    return request


def _pending_request(campaign: Campaign) -> ApprovalRequest:
    request = approval_current(campaign)
    if request is None or request.status != ApprovalRequest.Status.PENDING:
        raise TransitionError(campaign, "decided", "It has no pending approval request.")
    return request


def campaign_cancel_request(*, campaign_id: int, by: User) -> Campaign:
    """The requester takes a campaign out of review, back to draft; or a revision back to a pending
    edit (the approved version keeps sending)."""
    with transaction.atomic():
        campaign = _lock(campaign_id, by, "campaigns.submit_campaign")
        if campaign.is_active and revision_waiting(campaign) is not None:
            approval_request_cancel(request_id=_pending_request(campaign).pk, by=by)
            audit(actor=by, action="campaign_revision_request_cancelled", obj=campaign)
            return campaign
        if campaign.status != Status.IN_REVIEW:
            raise TransitionError(campaign, "taken out of review")
        approval_request_cancel(request_id=_pending_request(campaign).pk, by=by)
        _transition(campaign, Status.DRAFT, by=by, action="request_cancelled")
    return campaign


def campaign_request_changes(*, campaign_id: int, by: User, comment: str) -> Campaign:
    """An approver sends the campaign back to draft with a comment the requester sees; a revision
    goes back to a pending edit, and the approved version keeps sending."""
    with transaction.atomic():
        campaign = _lock(campaign_id, by, "campaigns.approve_campaign")
        if campaign.is_active and revision_waiting(campaign) is not None:
            approval_request_decide(request_id=_pending_request(campaign).pk, by=by, approve=False, comment=comment)
            audit(actor=by, action="campaign_revision_changes_requested", obj=campaign, summary={"comment": comment})
            return campaign
        if campaign.status != Status.IN_REVIEW:
            raise TransitionError(campaign, "sent back for changes")
        approval_request_decide(request_id=_pending_request(campaign).pk, by=by, approve=False, comment=comment)
        _transition(campaign, Status.DRAFT, by=by, action="changes_requested", summary={"comment": comment})
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
    campaign.approved_fingerprint = request.fingerprint
    return snapshot


def _approve_revision(campaign: Campaign, request: ApprovalRequest, *, by: User, comment: str, now: dt.datetime):
    """The revision of a scheduled or live campaign takes over from the approved version. A changed
    schedule moves the next occurrence; a send that already happened is not repeated."""
    before = campaign.approved()
    snapshot = _approve_version(campaign, request, by=by, now=now)
    schedule_fields = ("schedule_kind", "send_at", "time_zone", "recurrence", "cron", "ends_at", "at_local_time")
    if campaign.kind == Campaign.Kind.SCHEDULED and (
        before is None or any(getattr(before, f) != getattr(campaign, f) for f in schedule_fields)
    ):
        fired = campaign.occurrences.exists()
        if campaign.schedule_kind == Campaign.ScheduleKind.NOW:
            campaign.next_occurrence_at = None if fired else now
        else:
            campaign.next_occurrence_at = next_occurrence(campaign.approved(), after=now)
    campaign.updated_at = now
    campaign.save(update_fields=["approved_version", "approved_fingerprint", "next_occurrence_at", "updated_at"])
    audit(
        actor=by,
        action="campaign_revision_approved",
        obj=campaign,
        summary={"version": snapshot["number"], "replaces": before.number if before else None, "comment": comment},
    )
    if campaign.next_occurrence_at is not None and campaign.next_occurrence_at <= now:
        transaction.on_commit(lambda: _queue_fire(campaign.pk))


def campaign_approve(*, campaign_id: int, by: User, comment: str = "", now: dt.datetime | None = None) -> Campaign:
    """Approve and activate: the campaign becomes scheduled (a future send) or live. For the
    revision of a scheduled or live campaign, the revision becomes the approved version that sends.

    Raises ValidationError when what would be sent differs from what was submitted (e.g. its push
    content was edited meanwhile: ask for changes), PermissionDenied when ``by`` may not approve
    this request (own request, not an approver of its policy, no access).
    """
    now = now or timezone.now()
    with transaction.atomic():
        campaign = _lock(campaign_id, by, "campaigns.approve_campaign")
        revision = campaign.is_active and revision_waiting(campaign) is not None
        if campaign.status != Status.IN_REVIEW and not revision:
            raise TransitionError(campaign, "approved")
        request = _pending_request(campaign)
        if campaign.fingerprint() != request.fingerprint:
            raise ValidationError("What would be sent changed since it was submitted: ask for changes and resubmit.")
        approval_request_decide(request_id=request.pk, by=by, approve=True, comment=comment)
        if revision:
            _approve_revision(campaign, request, by=by, comment=comment, now=now)
            return campaign
        _approve_version(campaign, request, by=by, now=now)
        campaign.activated_at = now
        if campaign.kind == Campaign.Kind.API_TRIGGERED:
            campaign.next_occurrence_at = None
            to = Status.LIVE
        else:
            campaign.next_occurrence_at = next_occurrence(campaign, after=now - dt.timedelta(microseconds=1))
            to = Status.SCHEDULED if campaign.next_occurrence_at and campaign.next_occurrence_at > now else Status.LIVE
        _transition(campaign, to, by=by, action="approved", summary={"comment": comment, "version": 1})
        if campaign.next_occurrence_at is not None and campaign.next_occurrence_at <= now:
            transaction.on_commit(lambda: _queue_fire(campaign.pk))
    return campaign


def _queue_fire(campaign_id: int) -> None:
    from django_q.tasks import async_task

    async_task("campaigns.tasks.campaign_fire_due_task", campaign_id, q_options={"timeout": 120})


def campaign_stop(*, campaign_id: int, by: User) -> Campaign:
    """Stop a scheduled or live campaign: no further occurrence, and its queued deliveries are stopped."""
    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_stop

    with transaction.atomic():
        campaign = _lock(campaign_id, by, "campaigns.stop_campaign")
        if campaign.status not in (Status.SCHEDULED, Status.LIVE):
            raise TransitionError(campaign, "stopped")
        campaign.next_occurrence_at = None
        _transition(campaign, Status.STOPPED, by=by, action="stopped")
        if (request := revision_waiting(campaign)) is not None:
            approval_request_close(request_id=request.pk, by=by, reason="The campaign was stopped.")
        running = Dispatch.objects.filter(
            source_id=campaign.pk,
            kind__in=(Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER),
            status__in=(Dispatch.Status.PREPARING, Dispatch.Status.SENDING),
        ).values_list("pk", flat=True)
        for dispatch_id in list(running):
            dispatch_stop(dispatch_id=dispatch_id, by=by)
    return campaign


def campaign_archive(*, campaign_id: int, by: User) -> Campaign:
    """Archive a finished campaign (completed, stopped, failed): hidden from the default list."""
    with transaction.atomic():
        campaign = _lock(campaign_id, by, "campaigns.archive_campaign")
        if campaign.status not in (Status.COMPLETED, Status.STOPPED, Status.FAILED):
            hint = "Stop it first." if campaign.is_active else "Delete a draft instead."
            raise TransitionError(campaign, "archived", hint)
        _transition(campaign, Status.ARCHIVED, by=by, action="archived")
    return campaign


def campaign_duplicate(*, campaign_id: int, by: User) -> Campaign:
    """A new draft with the same settings and a copy of the content, owned by ``by``, from any state.

    The copy keeps the source's app and segment, as a colleague editing the source could, even
    when ``by`` was never given access to them. Raises Http404 when the campaign is outside
    ``by``'s access, PermissionDenied when their role may not create campaigns (both checked
    before anything is written).
    """
    with transaction.atomic():
        source = _lock(campaign_id, by, "campaigns.view_campaign")
        if not by.has_perm("campaigns.add_campaign"):
            raise PermissionDenied("Your role may not create campaigns.")
        content = None
        if source.content_id is not None:
            content = pushcontent_duplicate(content_id=source.content_id, by=by)
        fields = {field: getattr(source, field) for field in EDITABLE_FIELDS if field not in ("name", "content")}
        copy = _create(by=by, changed={"content"}, name=f"{source.name} (copy)"[:200], content=content, **fields)
        audit(actor=by, action="campaign_duplicated", obj=copy, summary={"from": source.pk})
    return copy


# --- the send path ---------------------------------------------------------------------------------


def campaign_gate(*, app, source_id: int | None, spec: dict, by: User | None, api_triggered: bool = False) -> None:
    """The campaigns' gate in the delivery pipeline: a dispatch only for an approved, active campaign,
    sending exactly the content of its approved version (a pending revision never reaches a send).

    Raises GateClosed otherwise, whoever calls: a forged admin POST or a direct service call alike.
    """
    from delivery.services.dispatches import GateClosed

    campaign = Campaign.objects.select_related("content").filter(pk=source_id).first()
    if campaign is None or campaign.app_id != app.pk:
        raise GateClosed("No such campaign for this app.")
    if campaign.kind != (Campaign.Kind.API_TRIGGERED if api_triggered else Campaign.Kind.SCHEDULED):
        raise GateClosed(f"'{campaign}' is not {'an API-triggered' if api_triggered else 'a scheduled'} campaign.")
    if not campaign.is_active:
        raise GateClosed(f"'{campaign}' is {campaign.get_status_display().lower()}, not approved and active.")
    approved = campaign.approved()
    if approved is None or approved.fingerprint != campaign.approved_fingerprint:
        raise GateClosed(f"'{campaign}' changed since it was approved.")
    if spec != approved.spec:
        raise GateClosed("The content to send is not the approved content.")
    if approved.segment_id is not None and not api_triggered:
        from audiences.models import Segment

        segment = Segment.objects.filter(pk=approved.segment_id).first()
        wanted = approved.snapshot.get("audience_fingerprint")
        if segment is None or (wanted and segment.definition_fingerprint() != wanted):
            raise GateClosed(
                f"The audience of '{campaign}' is defined otherwise than when it was approved: "
                "approve the campaign's revision to send to it."
            )


def campaign_api_gate(**kwargs) -> None:
    campaign_gate(api_triggered=True, **kwargs)


# The scheduler beats every minute: an occurrence fired later than this was missed (downtime).
LATE_AFTER = dt.timedelta(minutes=5)


def campaign_fire_due(*, campaign_id: int, now: dt.datetime | None = None) -> list[Occurrence]:
    """Fire the campaign's due occurrence(s), each exactly once, however many workers race for it.

    The campaign row is taken with SKIP LOCKED (another worker holding it is firing it), and each
    occurrence is a row unique per (campaign, due time), written in the same transaction as its
    Dispatch: a worker killed midway rolls both back and the next tick fires it. Occurrences missed
    during downtime for longer than the campaign's window are recorded as skipped; the latest one
    within the window is sent late. What is sent is the approved version, whatever revision is
    pending; an occurrence the gate refuses is recorded with the reason, and the next one stays due.
    """
    from delivery.models import Dispatch
    from delivery.services.dispatches import GateClosed, dispatch_create

    now = now or timezone.now()
    fired: list[Occurrence] = []
    with transaction.atomic():
        campaign = (
            Campaign.objects.select_for_update(skip_locked=True)
            .select_related("content")
            .filter(pk=campaign_id, status__in=(Status.SCHEDULED, Status.LIVE), next_occurrence_at__lte=now)
            .first()
        )
        if campaign is None:
            return fired
        approved = campaign.approved()  # what sends, whatever revision is pending
        if approved is None:
            return fired
        window = dt.timedelta(minutes=approved.missed_window_minutes)
        for _ in range(10_000):  # bounded: a daily campaign down for years still ends
            due = campaign.next_occurrence_at
            if due is None or due > now:
                break
            later = next_occurrence(approved, after=due)
            if later is not None and later <= now:
                # A newer occurrence is due too: this one was missed; only the newest may be sent.
                fired.append(_occurrence(campaign, due, Occurrence.Outcome.SKIPPED_MISSED, note="a later one was due"))
                campaign.next_occurrence_at = later
                continue
            if now - due > window:
                note = f"missed by {now - due}, longer than the {window} window"
                fired.append(_occurrence(campaign, due, Occurrence.Outcome.SKIPPED_MISSED, note=note))
                campaign.next_occurrence_at = later
                break
            outcome = Occurrence.Outcome.SENT if now - due <= LATE_AFTER else Occurrence.Outcome.SENT_LATE
            local = approved.at_local_time and approved.schedule_kind != Campaign.ScheduleKind.NOW
            try:
                with transaction.atomic():
                    dispatch = dispatch_create(
                        app_id=approved.app_id,
                        kind=Dispatch.Kind.CAMPAIGN,
                        spec=approved.spec,
                        content_id=approved.content_id,
                        segment_id=approved.segment_id,
                        source_id=campaign.pk,
                        label=f"{campaign.name} v{approved.number} @ {due:%Y-%m-%d %H:%M} UTC",
                        rate_limit_per_second=approved.throttle_per_second,
                        purpose=approved.purpose,
                        local_time=local_wall_time(approved, due) if local else "",
                        local_default_timezone=approved.time_zone if local else "",
                        context={"campaign": {"id": campaign.pk, "name": campaign.name}},
                    )
            except GateClosed as exc:
                # Said on the campaign's page; the campaign stays on the air for its next occurrence.
                fired.append(_occurrence(campaign, due, Occurrence.Outcome.REFUSED, note=str(exc)[:300]))
                campaign.next_occurrence_at = later
                break
            fired.append(_occurrence(campaign, due, outcome, dispatch=dispatch))
            campaign.next_occurrence_at = later
            break
        if campaign.status == Status.SCHEDULED and any(o.dispatch_id for o in fired):
            campaign.status = Status.LIVE
            campaign.status_changed_at = now
        campaign.save(update_fields=["next_occurrence_at", "status", "status_changed_at"])
    return fired


def _occurrence(campaign: Campaign, due: dt.datetime, outcome: str, *, dispatch=None, note: str = "") -> Occurrence:
    occurrence = Occurrence.objects.create(campaign=campaign, due_at=due, outcome=outcome, dispatch=dispatch, note=note)
    audit(
        actor=None,
        action=f"campaign_occurrence_{outcome}",
        obj=campaign,
        summary={"due_at": due.isoformat(), "note": note},
    )
    return occurrence


def campaigns_tick(*, now: dt.datetime | None = None) -> dict:
    """The scheduler's beat: fire every due campaign, and complete those with nothing left to send.

    Safe to run on every worker at once (each campaign is fired under its own row lock).
    """
    from delivery.models import Dispatch
    from operations.instance import instance_refuses

    if instance_refuses(action="run the campaigns tick"):
        return {"due": 0, "occurrences": 0, "completed": 0, "refused": True}
    now = now or timezone.now()
    due_ids = list(
        Campaign.objects.filter(status__in=(Status.SCHEDULED, Status.LIVE), next_occurrence_at__lte=now)
        .order_by("next_occurrence_at")
        .values_list("pk", flat=True)[:500]
    )
    fired = sum(len(campaign_fire_due(campaign_id=pk, now=now)) for pk in due_ids)
    completed = 0
    running = Dispatch.objects.filter(
        kind=Dispatch.Kind.CAMPAIGN, status__in=(Dispatch.Status.PREPARING, Dispatch.Status.SENDING)
    ).values("source_id")
    finished = (
        Campaign.objects.filter(kind=Campaign.Kind.SCHEDULED, status=Status.LIVE, next_occurrence_at__isnull=True)
        .exclude(pk__in=running)
        .values_list("pk", flat=True)
    )
    for pk in list(finished):
        with transaction.atomic():
            campaign = Campaign.objects.select_for_update(skip_locked=True).filter(pk=pk, status=Status.LIVE).first()
            if campaign is not None and campaign.next_occurrence_at is None:
                outcomes = set(
                    Dispatch.objects.filter(kind=Dispatch.Kind.CAMPAIGN, source_id=pk).values_list("status", flat=True)
                )
                # Failed when every send of it failed (e.g. its app's credentials were refused).
                to = Status.FAILED if outcomes == {Dispatch.Status.FAILED} else Status.COMPLETED
                _transition(campaign, to, by=None, action="failed" if to == Status.FAILED else "completed")
                completed += 1
    return {"due": len(due_ids), "occurrences": fired, "completed": completed}


def campaign_test_send(*, campaign_id: int, by: User):
    """Send the campaign's content as it is now to its app's test devices, in any state, no approval needed."""
    from delivery.services.contents import pushcontent_test_send

    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None or not visible_to(by, Campaign.objects.filter(pk=campaign_id)).exists():
        raise Http404(f"No campaign {campaign_id}.")
    if not can(by, "delivery.test_send_pushcontent", campaign):
        raise PermissionDenied("Your role may not send tests.")
    return pushcontent_test_send(content_id=campaign.content_id, by=by)


# --- API triggers ---------------------------------------------------------------------------------

MAX_RECIPIENTS = 1000
# A TriggerRequest still unfinished after this long belonged to a request that died: retry it.
TRIGGER_ABANDONED_AFTER = dt.timedelta(minutes=5)


class TriggerRefused(Exception):
    """The campaign cannot be triggered now (not API-triggered, not live...)."""

    def __init__(self, detail: str, *, code: str, status: int = 409):
        super().__init__(detail)
        self.detail, self.code, self.status = detail, code, status

    def as_api(self):
        from rest_framework.exceptions import APIException

        error = APIException(self.detail, code=self.code)
        error.status_code = self.status
        return error


@dataclass
class TriggerResult:
    dispatch_id: int | None
    accepted: int
    problems: list[dict] = field(default_factory=list)
    deliveries: list[dict] = field(default_factory=list)

    def answer(self) -> dict:
        """The 202 body: the stream it joined, what will be sent, per-recipient problems, the rows made."""
        return {
            "dispatch": self.dispatch_id,
            "accepted": self.accepted,
            "problems": self.problems,
            "deliveries": self.deliveries,
        }


def trigger_rate_take(*, api_key) -> float | None:
    """Count one trigger against the key's rate limit; None when allowed, else seconds to wait.

    The API reads this limit with its version stamps in one round trip; this is the path for the
    database-kept limiter (the embedded mode) and direct callers.
    """
    from delivery.throttle import throttle

    granted, wait = throttle().take(
        key=f"trigger:{api_key.prefix}", rate=settings.PUSHDESK_TRIGGER_RATE_PER_KEY, count=1
    )
    return None if granted else max(wait, 0.001)


def _payload_problem(spec: dict, *, profile: dict, context: dict) -> str | None:
    """Render the content for one recipient and say what is wrong with it, if anything."""
    from liquid.exceptions import LiquidError

    from delivery.payloads import (
        APNS_LIMIT,
        FCM_LIMIT,
        RenderedMessage,
        apns_payload,
        encode,
        fcm_message,
        fcm_payload_bytes,
        message_render,
    )

    try:
        message: RenderedMessage = message_render(spec, profile=profile, context=context)
    except LiquidError as exc:
        return f"The content cannot be rendered with this context: {exc}"
    apns = len(encode(apns_payload(spec, message, delivery_id=2**53)))
    fcm = fcm_payload_bytes(fcm_message(spec, message, token="x" * 200, delivery_id=2**53))
    if apns > APNS_LIMIT:
        return (
            f"With this context the iOS payload is {apns} bytes, {apns - APNS_LIMIT} over the {APNS_LIMIT}-byte limit."
        )
    if fcm > FCM_LIMIT:
        return (
            f"With this context the Android payload is {fcm} bytes, {fcm - FCM_LIMIT} over the {FCM_LIMIT}-byte limit."
        )
    return None


@dataclass
class _Approved:
    """What the trigger path keeps of a live API-triggered campaign per process, behind its stamp."""

    campaign_id: int
    app_id: int
    name: str
    purpose: str
    fingerprint: str  # the approved one: what the stream's rows are checked against, under lock
    spec: dict
    personalized: bool
    rules: object | None  # the app's DeliveryRules, for marketing campaigns
    content_id: int
    throttle_per_second: int | None
    stream_day: dt.date
    stamp: str | None
    loaded_at: float
    payload_problem: str | None = None  # for content that renders the same for everyone
    stream_id: int | None = None  # today's standing dispatch, opened by the first call with rows

    def stream(self, *, by: User | None, now: dt.datetime) -> int:
        """Today's standing dispatch of this approved version, opened when the first rows come."""
        from delivery.models import Dispatch
        from delivery.services.streams import stream_open

        if self.stream_id is None:
            self.stream_id = stream_open(
                kind=Dispatch.Kind.API_TRIGGER,
                source_id=self.campaign_id,
                version=self.fingerprint,
                app_id=self.app_id,
                spec=self.spec,
                content_id=self.content_id,
                label=f"{self.name}: API triggers",
                purpose=self.purpose,
                rate_limit_per_second=self.throttle_per_second,
                context={"campaign": {"id": self.campaign_id, "name": self.name}},
                by=by,
                now=now,
            )
        return self.stream_id


_APPROVED: dict[int, _Approved] = {}


def campaign_caches_forget() -> None:
    """Drop this process's cached campaigns (tests that change rows behind the services' back)."""
    _APPROVED.clear()


def _campaign_stamp(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


def _refuse_unless_triggerable(campaign: Campaign) -> None:
    if campaign.kind != Campaign.Kind.API_TRIGGERED:
        raise TriggerRefused(
            f"'{campaign}' is a scheduled campaign, not an API-triggered one.", code="not_api_triggered"
        )
    if campaign.status != Status.LIVE:
        raise TriggerRefused(
            f"'{campaign}' is {campaign.get_status_display().lower()}: only a live campaign can be triggered.",
            code="campaign_not_live",
        )


def _approved_for(campaign_id: int, *, stamp: str | None, by: User | None, now: dt.datetime) -> _Approved:
    """The cached approved campaign, (re)loaded when its stamp moved, its day passed or it is old.

    Loading runs the full gate (``campaign_gate``: approved, live, fingerprint unchanged) and opens
    today's stream of the approved version. Raises TriggerRefused when it cannot be triggered.
    """
    import time

    from delivery.models import DeliveryRules
    from delivery.payloads import spec_is_personalized
    from delivery.services.dispatches import GateClosed

    entry = _APPROVED.get(campaign_id)
    fresh = entry is not None and time.monotonic() - entry.loaded_at < settings.PUSHDESK_CACHE_SECONDS
    if fresh and entry.stamp == stamp and entry.stream_day == now.astimezone(dt.UTC).date():
        return entry
    campaign = Campaign.objects.select_related("app", "content").filter(pk=campaign_id).first()
    if campaign is None:
        raise Http404(f"No campaign {campaign_id}.")
    _refuse_unless_triggerable(campaign)
    approved = campaign.approved()  # what sends, whatever revision is pending
    if approved is None:
        raise TriggerRefused(f"'{campaign}' has no approved version.", code="campaign_not_live")
    spec = approved.spec
    try:
        campaign_gate(app=campaign.app, source_id=campaign.pk, spec=spec, by=by, api_triggered=True)
    except GateClosed as exc:
        raise TriggerRefused(str(exc), code="gate_closed") from exc
    rules = None
    if approved.purpose == Campaign.Purpose.MARKETING:
        rules = DeliveryRules.objects.filter(app_id=campaign.app_id).first()
    entry = _Approved(
        campaign_id=campaign.pk,
        app_id=campaign.app_id,
        name=campaign.name,
        purpose=approved.purpose,
        fingerprint=campaign.approved_fingerprint,
        spec=spec,
        personalized=spec_is_personalized(spec),
        rules=rules,
        content_id=approved.content_id,
        throttle_per_second=approved.throttle_per_second,
        stream_day=now.astimezone(dt.UTC).date(),
        stamp=stamp,
        loaded_at=time.monotonic(),
    )
    if not entry.personalized:
        entry.payload_problem = _payload_problem(spec, profile={"attributes": {}}, context={})
    _APPROVED[campaign_id] = entry
    return entry


def _may_trigger(by: User, campaign_id: int, stamp: str | None) -> None:
    """Raise Http404 outside the user's access, PermissionDenied when their role may not trigger.

    The answer is kept on the user object, which the API keeps per process behind the ``access``
    stamp; it is also keyed by the campaign's stamp (a campaign moved to another app)."""
    decided = by.__dict__.setdefault("_pushdesk_may_trigger", {})
    verdict = decided.get((campaign_id, stamp))
    if verdict is None:
        one = Campaign.objects.filter(pk=campaign_id)
        if visible_to(by, one, perm="campaigns.trigger_campaign").exists():
            verdict = "yes"
        elif visible_to(by, one).exists():
            verdict = "role"
        else:
            raise Http404(f"No campaign {campaign_id}.")
        decided[(campaign_id, stamp)] = verdict
    if verdict == "role":
        raise PermissionDenied("Your role may not trigger campaigns.")


def campaign_trigger_allowed(*, campaign_id: int, by: User, stamps=None) -> None:
    """Check, before anything is recorded, that ``by`` may trigger this campaign (cached per process).

    Raises Http404 outside the user's access, PermissionDenied when the role may not trigger.
    """
    from accounts.stamps import stamps_read

    stamps = stamps or stamps_read(["access", _campaign_stamp(campaign_id)])
    _may_trigger(by, campaign_id, stamps[_campaign_stamp(campaign_id)])


def _recipient_source_lock(entry: _Approved) -> tuple[str, list]:
    """The campaign row under its gate's conditions, locked shared: a stop or a voided approval
    (FOR UPDATE) waits for calls in flight, and calls after it find no row."""
    return (
        "SELECT id FROM campaigns_campaign WHERE id = %s AND status = %s AND kind = %s "
        "AND approved_fingerprint = %s FOR SHARE",
        [entry.campaign_id, Status.LIVE, Campaign.Kind.API_TRIGGERED, entry.fingerprint],
    )


def campaign_trigger(
    *,
    campaign_id: int,
    by: User,
    recipients: list[dict],
    context: dict,
    stamps=None,
    request_record=None,
) -> TriggerResult:
    """Send a live API-triggered campaign to the named recipients (external ids), now.

    The call's rows join the campaign's standing dispatch (``delivery.services.streams``) in one statement,
    in a transaction that locks the campaign row shared under the gate's conditions (a stop waits
    for it, or it finds the campaign stopped) and, with ``request_record`` (an Idempotency-Key's
    TriggerRequest), stores the answer and the dispatch on that record: a retry replays it.
    Recipients that are unknown are reported and left out; those without a reachable device are
    reported and still targeted (their delivery records the skip). Each recipient's context is
    merged over the shared one. ``stamps`` are the version stamps the API read for this request.
    Raises Http404 outside the user's access, PermissionDenied without the role, TriggerRefused
    when the campaign is not a live API-triggered one, ValidationError naming
    ``recipients[i].context`` when a context makes the payload too large or unrenderable.
    """
    from accounts.stamps import stamps_read
    from audiences.models import Profile
    from delivery.models import Device
    from delivery.services.streams import Recipient, StreamClosed, stream_append, streams_wake

    now = timezone.now()
    stamps = stamps or stamps_read(["access", _campaign_stamp(campaign_id)])
    stamp = stamps[_campaign_stamp(campaign_id)]
    _may_trigger(by, campaign_id, stamp)
    entry = _approved_for(campaign_id, stamp=stamp, by=by, now=now)
    if len(recipients) > MAX_RECIPIENTS:
        raise ValidationError({"recipients": f"At most {MAX_RECIPIENTS} recipients per call."})
    # One query: the profiles, and whether each has an opted-in device of the app.
    reachable = Device.objects.filter(profile_id=OuterRef("pk"), app_id=entry.app_id, active=True, push_enabled=True)
    profiles = {
        row["external_id"]: row
        for row in Profile.objects.filter(external_id__in=[r["external_id"] for r in recipients])
        .annotate(reachable=Exists(reachable))
        .values("id", "external_id", "locale", "timezone", "attributes", "reachable")
    }
    problems, targeted, errors = [], [], {}
    seen: set[str] = set()
    for index, recipient in enumerate(recipients):
        external_id = recipient["external_id"]
        profile = profiles.get(external_id)
        if external_id in seen:
            problems.append(
                {"index": index, "external_id": external_id, "code": "duplicate", "detail": "Listed twice: sent once."}
            )
            continue
        seen.add(external_id)
        if profile is None:
            problems.append(
                {
                    "index": index,
                    "external_id": external_id,
                    "code": "unknown_profile",
                    "detail": "No profile has this external id.",
                }
            )
            continue
        merged = {**context, **(recipient.get("context") or {})}
        if entry.personalized:
            problem = _payload_problem(entry.spec, profile=profile, context=merged)
        else:
            problem = entry.payload_problem
        if problem:
            errors[f"recipients.{index}.context"] = problem
            continue
        if not profile["reachable"]:
            problems.append(
                {
                    "index": index,
                    "external_id": external_id,
                    "code": "no_device",
                    "detail": "No opted-in device for this app.",
                }
            )
        targeted.append(Recipient(profile["id"], profile["timezone"] or "", merged or None))
    if errors:
        raise ValidationError(errors)
    if not targeted:
        result = TriggerResult(dispatch_id=None, accepted=0, problems=problems)
        if request_record is not None:
            trigger_request_finish(record=request_record, status_code=202, body=result.answer())
        return result
    external_ids = {p["id"]: p["external_id"] for p in profiles.values()}
    for _ in range(2):
        stream_id = entry.stream(by=by, now=now)
        try:
            with transaction.atomic():
                rows = stream_append(
                    dispatch_id=stream_id,
                    app_id=entry.app_id,
                    recipients=targeted,
                    source_lock=_recipient_source_lock(entry),
                    rules=entry.rules,
                    now=now,
                )
                result = TriggerResult(
                    dispatch_id=stream_id,
                    accepted=sum(1 for r in rows if r.status == "queued"),
                    problems=problems,
                    deliveries=[
                        {"id": r.id, "external_id": external_ids[r.profile_id], "status": r.status, "reason": r.reason}
                        for r in rows
                    ],
                )
                if request_record is not None:
                    _trigger_request_answer(record=request_record, result=result)
                transaction.on_commit(lambda d=stream_id: streams_wake(d))
            return result
        except StreamClosed:
            # The campaign was stopped, its approval voided or replaced, or the stream closed since
            # this process cached it: load it again (which refuses, or opens the current stream).
            _APPROVED.pop(campaign_id, None)
            entry = _approved_for(campaign_id, stamp=stamp, by=by, now=now)
    raise TriggerRefused("The campaign changed while this call ran: try again.", code="gate_closed")


def _trigger_request_answer(*, record, result: TriggerResult) -> None:
    """Store the answer and the dispatch on the Idempotency-Key's record, in the rows' transaction."""
    from campaigns.models import TriggerRequest

    TriggerRequest.objects.filter(pk=record.pk).update(
        finished=True, response_status=202, response_body=result.answer(), dispatch_id=result.dispatch_id
    )


def trigger_request_start(*, api_key, idempotency_key: str, campaign_id: int, body_hash: str):
    """Claim an Idempotency-Key for this API key. Returns (record, what to do):

    ``new`` (run it), ``done`` (replay the stored answer), ``in_progress`` (409),
    ``different_body`` (422). The claim commits at once, so a concurrent twin sees it.
    """
    from django.db import IntegrityError

    from campaigns.models import TriggerRequest

    try:
        with transaction.atomic():
            return (
                TriggerRequest.objects.create(
                    api_key=api_key, idempotency_key=idempotency_key, campaign_id=campaign_id, body_hash=body_hash
                ),
                "new",
            )
    except IntegrityError:
        record = TriggerRequest.objects.get(api_key=api_key, idempotency_key=idempotency_key)
    if record.body_hash != body_hash or record.campaign_id != campaign_id:
        return record, "different_body"
    if record.finished:
        return record, "done"
    stale = timezone.now() - TRIGGER_ABANDONED_AFTER
    if TriggerRequest.objects.filter(pk=record.pk, finished=False, created_at__lt=stale).update(
        created_at=timezone.now()
    ):
        return record, "new"
    return record, "in_progress"


def trigger_request_finish(*, record, status_code: int | None, body: dict | None) -> None:
    """Store an answer that sent nothing (a refusal, bad input, no one to send to), to replay it.

    ``status_code=None`` (the request failed) frees the key for a retry, unless the record holds
    an answer: a record written with its dispatch's rows is never deleted.
    """
    from campaigns.models import TriggerRequest

    if status_code is None:
        TriggerRequest.objects.filter(pk=record.pk, finished=False, dispatch__isnull=True).delete()
        return
    TriggerRequest.objects.filter(pk=record.pk, finished=False).update(
        finished=True, response_status=status_code, response_body=body
    )


# --- cache coherence --------------------------------------------------------------------------------
#
# The trigger path keeps live campaigns per process behind the ``campaign:<id>`` stamp. These
# receivers bump it whenever what it caches may have changed, whoever wrote it (a service, the
# admin, a data migration): the campaign row, its push content, its app's delivery rules.


def campaign_changed(sender, instance, **kwargs) -> None:
    from accounts.stamps import stamps_bump

    stamps_bump(_campaign_stamp(instance.pk))


def campaign_content_changed(sender, instance, **kwargs) -> None:
    from accounts.stamps import stamps_bump

    stamps_bump(
        *[_campaign_stamp(pk) for pk in Campaign.objects.filter(content_id=instance.pk).values_list("pk", flat=True)]
    )


def campaign_rules_changed(sender, instance, **kwargs) -> None:
    from accounts.stamps import stamps_bump

    stamps_bump(
        *[_campaign_stamp(pk) for pk in Campaign.objects.filter(app_id=instance.app_id).values_list("pk", flat=True)]
    )


def campaign_stream_is_current(source_id: int, version: str) -> bool:
    """A campaign's stream still takes calls while the campaign is live under that approved fingerprint."""
    return Campaign.objects.filter(pk=source_id, status=Status.LIVE, approved_fingerprint=version).exists()
