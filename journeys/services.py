"""Every write of journeys: the lifecycle and approvals, entries, exits, and the engine.

Transitions lock the journey row, check the state they start from, write an audit event and
queue follow-up work on commit (STYLE rule 2). The approval subject is the journey; the request's
fingerprint pins the version under review (entry, exit, re-entry, graph, each push's content).

The engine (``journeys_run_due``) takes due enrollments with ``SELECT … FOR UPDATE SKIP LOCKED``
in batches, so any number of workers share the work and an enrollment is only ever run by the
worker holding its row lock. It runs each enrollment to its next wait, evaluating each step for
the whole batch at once (one query per condition branch, one Dispatch per push step), and
writes the batch back in one statement; pushes are created in the same transaction as the
enrollments that move past them, so a push is sent once per enrollment, whoever crashes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from accounts.models import ApprovalRequest, User
from accounts.selectors import approval_current, visible_to
from accounts.services import (
    TransitionError,
    access_grant,
    approval_request_cancel,
    approval_request_decide,
    approval_request_open,
    audit,
    lock_for,
)
from journeys.graph import contents_of, entry_of, exits_of, graph_validate, segments_of
from journeys.models import Enrollment, Journey, JourneyVersion

log = logging.getLogger(__name__)

Status = Journey.Status
VStatus = JourneyVersion.Status
EStatus = Enrollment.Status

VERSION_FIELDS = (
    "entry_kind",
    "entry_segment",
    "entry_every_hours",
    "entry_event",
    "reentry",
    "reentry_wait_seconds",
    "exit_event",
    "graph",
)


def _lock(journey_id: int, by: User, perm: str) -> Journey:
    return lock_for(Journey, journey_id, by=by, perm=perm, label="journey")


def _transition(journey: Journey, to: str, *, by: User | None, action: str, summary: dict | None = None) -> None:
    before = journey.status
    journey.status = to
    journey.status_changed_at = timezone.now()
    journey.updated_at = journey.status_changed_at
    journey.save(update_fields=["status", "status_changed_at", "updated_at", "live_version", "next_entry_at"])
    audit(actor=by, action=f"journey_{action}", obj=journey, summary={"from": before, "to": to, **(summary or {})})


def _open_version(journey: Journey) -> JourneyVersion | None:
    """The version being edited or reviewed (draft / in review), if any."""
    return journey.versions.filter(status__in=(VStatus.DRAFT, VStatus.IN_REVIEW)).order_by("-number").first()


# --- validation -------------------------------------------------------------------------------


def version_reference_checks(*, app_id: int, by: User | None):
    """The functions graph_validate uses to check segments, contents and rule trees (access of ``by``)."""
    from audiences.models import Segment
    from audiences.rules import RulesInvalid, rules_validate, segment_references
    from audiences.selectors import segments_visible_to
    from delivery.models import PushContent

    def check_segment(segment_id: int) -> str:
        if not Segment.objects.filter(pk=segment_id).exists():
            return f"segment {segment_id} does not exist (was it deleted?)."
        if by is not None and not segments_visible_to(by).filter(pk=segment_id).exists():
            return f"you have no access to segment {segment_id}."
        return ""

    def check_content(content_id: int) -> str:
        content = PushContent.objects.filter(pk=content_id).first()
        if content is None:
            return f"push content {content_id} does not exist."
        if content.app_id != app_id:
            return f"push content '{content}' belongs to another app."
        if by is not None and not visible_to(by, PushContent.objects.filter(pk=content_id)).exists():
            return f"you have no access to push content '{content}'."
        return ""

    def check_rules(tree) -> str:
        try:
            rules_validate(tree)
        except RulesInvalid as exc:
            return "the rule is invalid: " + "; ".join(exc.messages)
        for segment_id in segment_references(tree):
            if message := check_segment(segment_id):
                return f"the rule refers to {message}"
        return ""

    return {"check_segment": check_segment, "check_content": check_content, "check_rules": check_rules}


def _validate_version(version: JourneyVersion, *, by: User | None) -> None:
    """Raise ValidationError naming the field, or GraphInvalid naming each broken step."""
    from audiences.selectors import segments_visible_to

    errors: dict[str, str] = {}
    if version.entry_kind == JourneyVersion.EntryKind.SEGMENT:
        if version.entry_segment_id is None:
            errors["entry_segment"] = "A segment entry needs a segment."
        elif by is not None and not segments_visible_to(by).filter(pk=version.entry_segment_id).exists():
            errors["entry_segment"] = "Choose a segment you have access to."
    elif version.entry_kind == JourneyVersion.EntryKind.EVENT:
        if not version.entry_event.strip():
            errors["entry_event"] = "An event entry needs the event's name."
    else:
        errors["entry_kind"] = f"Use one of {', '.join(JourneyVersion.EntryKind.values)}."
    if version.reentry not in JourneyVersion.Reentry.values:
        errors["reentry"] = f"Use one of {', '.join(JourneyVersion.Reentry.values)}."
    elif version.reentry == JourneyVersion.Reentry.AFTER_WAIT and version.reentry_wait_seconds < 0:
        errors["reentry_wait_seconds"] = "The re-entry wait is 0 seconds or more."
    if errors:
        raise ValidationError(errors)
    graph_validate(version.graph, **version_reference_checks(app_id=version.journey.app_id, by=by))


def _content_fingerprints(version: JourneyVersion) -> dict[str, str]:
    from delivery.models import PushContent

    contents = contents_of(version.graph)
    by_id = {c.pk: c for c in PushContent.objects.filter(pk__in=set(contents.values()))}
    return {step: (by_id[cid].fingerprint() if cid in by_id else "missing") for step, cid in contents.items()}


def version_fingerprint(version: JourneyVersion) -> str:
    """What an approval of this version covers, with the push contents as they are now."""
    return version.fingerprint(content_fingerprints=_content_fingerprints(version))


# --- lifecycle --------------------------------------------------------------------------------


def journey_create(*, by: User, name: str, app, graph: dict | None = None, **version_fields) -> Journey:
    """Create a draft journey owned by ``by`` (who gets object access), with a first draft version.

    ``version_fields``: entry_kind, entry_segment, entry_every_hours, entry_event, reentry,
    reentry_wait_seconds, exit_event. The graph is validated now (errors name the step).
    Raises PermissionDenied when the role may not author journeys, ValidationError otherwise.
    """
    from delivery.models import App

    if not by.has_perm("journeys.add_journey"):
        raise PermissionDenied("Your role may not create journeys.")
    unknown = set(version_fields) - set(VERSION_FIELDS)
    if unknown:
        raise ValidationError({f: "Not a journey field." for f in unknown})
    if not (name or "").strip():
        raise ValidationError({"name": "A journey needs a name."})
    if app is None or not visible_to(by, App.objects.filter(pk=app.pk)).exists():
        raise ValidationError({"app": "Choose an app you have access to."})
    with transaction.atomic():
        journey = Journey.objects.create(name=name.strip(), app=app, owner=by)
        version = JourneyVersion(journey=journey, number=1, created_by=by, graph=graph or {}, **version_fields)
        _validate_version(version, by=by)
        version.save()
        access_grant(obj=journey, to=by, by=None)
        audit(actor=by, action="journey_created", obj=journey, summary={"version": 1})
    return journey


def journey_rename(*, journey_id: int, by: User, name: str) -> Journey:
    """Change a journey's name (not part of what is approved)."""
    if not (name or "").strip():
        raise ValidationError({"name": "A journey needs a name."})
    with transaction.atomic():
        journey = _lock(journey_id, by, "journeys.change_journey")
        journey.name = name.strip()
        journey.updated_at = timezone.now()
        journey.save(update_fields=["name", "updated_at"])
        audit(actor=by, action="journey_renamed", obj=journey, summary={"name": journey.name})
    return journey


def journey_version_edit(*, journey_id: int, by: User, **changes) -> JourneyVersion:
    """Edit the journey's draft version; on a live journey, the first edit makes a new draft version
    (a copy of the live one) that replaces it when approved. The live version is never changed.

    Raises TransitionError while a version is in review (cancel the request first) or when the
    journey is finished; ValidationError / GraphInvalid naming the field or the step.
    """
    unknown = set(changes) - set(VERSION_FIELDS)
    if unknown:
        raise ValidationError({f: "Not a journey field." for f in unknown})
    with transaction.atomic():
        journey = _lock(journey_id, by, "journeys.change_journey")
        if journey.status not in (Status.DRAFT, Status.IN_REVIEW, Status.LIVE):
            raise TransitionError(journey, "edited")
        version = _open_version(journey)
        if version is not None and version.status == VStatus.IN_REVIEW:
            raise TransitionError(journey, "edited", "A version is in review: cancel the request first.")
        if version is None:
            source = journey.live_version
            number = (journey.versions.aggregate(n=Max("number"))["n"] or 0) + 1
            version = JourneyVersion(journey=journey, number=number, created_by=by)
            if source is not None:
                for name in VERSION_FIELDS:
                    setattr(version, name, getattr(source, name))
        for name, value in changes.items():
            setattr(version, name, value)
        _validate_version(version, by=by)
        version.updated_at = timezone.now()
        version.save()
        journey.updated_at = version.updated_at
        journey.save(update_fields=["updated_at"])
        audit(
            actor=by,
            action="journey_version_edited",
            obj=journey,
            summary={"version": version.number, "fields": sorted(changes)},
        )
    return version


def journey_delete(*, journey_id: int, by: User) -> None:
    """Delete a journey that never went live. Raises TransitionError otherwise (stop and archive it)."""
    with transaction.atomic():
        journey = _lock(journey_id, by, "journeys.delete_journey")
        if journey.status != Status.DRAFT or journey.versions.exclude(status=VStatus.DRAFT).exists():
            raise TransitionError(journey, "deleted", "Only drafts that never went live can be deleted.")
        audit(actor=by, action="journey_deleted", obj=journey)
        journey.delete()


def journey_submit(*, journey_id: int, by: User, message: str = "") -> ApprovalRequest:
    """Send the draft version for review: it is locked until approved, sent back, or cancelled.

    Raises TransitionError when there is no draft version to submit, ValidationError naming
    the step when the graph no longer holds (e.g. a segment it uses was deleted).
    """
    with transaction.atomic():
        journey = _lock(journey_id, by, "journeys.submit_journey")
        version = _open_version(journey)
        if journey.status not in (Status.DRAFT, Status.LIVE) or version is None or version.status != VStatus.DRAFT:
            raise TransitionError(journey, "submitted for review", "There is no draft version to submit.")
        _validate_version(version, by=by)
        request = approval_request_open(
            subject=journey,
            context={"type": "journey", "app_id": journey.app_id},
            fingerprint=version_fingerprint(version),
            approve_perm="journeys.approve_journey",
            by=by,
            message=message,
        )
        version.status = VStatus.IN_REVIEW
        version.save(update_fields=["status"])
        if journey.status == Status.DRAFT:
            _transition(journey, Status.IN_REVIEW, by=by, action="submitted", summary={"version": version.number})
        else:
            audit(actor=by, action="journey_version_submitted", obj=journey, summary={"version": version.number})
    return request


def _pending_request(journey: Journey) -> ApprovalRequest:
    request = approval_current(journey)
    if request is None or request.status != ApprovalRequest.Status.PENDING:
        raise TransitionError(journey, "decided", "It has no pending approval request.")
    return request


def _version_in_review(journey: Journey) -> JourneyVersion:
    version = journey.versions.filter(status=VStatus.IN_REVIEW).first()
    if version is None:
        raise TransitionError(journey, "decided", "No version is in review.")
    return version


def _back_to_draft(journey: Journey, version: JourneyVersion, *, by: User, action: str, summary: dict) -> None:
    version.status = VStatus.DRAFT
    version.save(update_fields=["status"])
    if journey.status == Status.IN_REVIEW:
        _transition(journey, Status.DRAFT, by=by, action=action, summary=summary)
    else:
        audit(actor=by, action=f"journey_version_{action}", obj=journey, summary=summary)


def journey_cancel_request(*, journey_id: int, by: User) -> Journey:
    """The requester takes the version out of review, back to draft (a live version keeps running)."""
    with transaction.atomic():
        journey = _lock(journey_id, by, "journeys.submit_journey")
        version = _version_in_review(journey)
        approval_request_cancel(request_id=_pending_request(journey).pk, by=by)
        _back_to_draft(journey, version, by=by, action="request_cancelled", summary={"version": version.number})
    return journey


def journey_request_changes(*, journey_id: int, by: User, comment: str) -> Journey:
    """An approver sends the version back to draft with a comment the requester sees."""
    with transaction.atomic():
        journey = _lock(journey_id, by, "journeys.approve_journey")
        version = _version_in_review(journey)
        approval_request_decide(request_id=_pending_request(journey).pk, by=by, approve=False, comment=comment)
        summary = {"version": version.number, "comment": comment}
        _back_to_draft(journey, version, by=by, action="changes_requested", summary=summary)
    return journey


def journey_approve(*, journey_id: int, by: User, comment: str = "", now: dt.datetime | None = None) -> JourneyVersion:
    """Approve and publish the version in review: it becomes the live version (the previous live
    one is retired; profiles inside it finish on it), its push contents are frozen as approved,
    and a segment entry is read at once.

    Raises ValidationError when what would run changed since it was submitted (e.g. its push
    content was edited) or no longer holds; PermissionDenied when ``by`` may not approve it.
    """
    from delivery.models import PushContent

    now = now or timezone.now()
    with transaction.atomic():
        journey = _lock(journey_id, by, "journeys.approve_journey")
        version = _version_in_review(journey)
        request = _pending_request(journey)
        fingerprints = _content_fingerprints(version)
        if version.fingerprint(content_fingerprints=fingerprints) != request.fingerprint:
            raise ValidationError("What would run changed since it was submitted: ask for changes and resubmit.")
        _validate_version(version, by=None)
        approval_request_decide(request_id=request.pk, by=by, approve=True, comment=comment)
        contents = {c.pk: c for c in PushContent.objects.filter(pk__in=set(contents_of(version.graph).values()))}
        version.frozen_specs = {
            step: {"content_id": cid, "fingerprint": fingerprints[step], "spec": contents[cid].spec()}
            for step, cid in contents_of(version.graph).items()
        }
        version.approved_fingerprint = request.fingerprint
        previous = journey.live_version
        if previous is not None:
            previous.status = VStatus.RETIRED
            previous.retired_at = now
            previous.save(update_fields=["status", "retired_at"])
        version.status = VStatus.LIVE
        version.live_at = now
        version.save(update_fields=["frozen_specs", "approved_fingerprint", "status", "live_at"])
        journey.live_version = version
        journey.next_entry_at = now if version.entry_kind == JourneyVersion.EntryKind.SEGMENT else None
        summary = {"version": version.number, "comment": comment}
        if previous is not None:
            summary["replaces"] = previous.number
        _transition(journey, Status.LIVE, by=by, action="approved", summary=summary)
        if journey.next_entry_at is not None:
            transaction.on_commit(lambda: _queue("journeys.tasks.journey_enter_task", journey.pk))
    return version


def journey_stop(*, journey_id: int, by: User) -> Journey:
    """Stop a live journey: no more entries, every profile inside exits, queued pushes are stopped."""
    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_stop

    with transaction.atomic():
        journey = _lock(journey_id, by, "journeys.stop_journey")
        if journey.status != Status.LIVE:
            raise TransitionError(journey, "stopped")
        journey.next_entry_at = None
        _transition(journey, Status.STOPPED, by=by, action="stopped")
        now = timezone.now()
        # Waits for any engine batch holding these rows, so nothing moves on after the stop.
        exited = Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).update(
            status=EStatus.EXITED, exit_reason="journey stopped", finished_at=now, updated_at=now, due_at=None
        )
        version_ids = list(journey.versions.values_list("pk", flat=True))
        running = Dispatch.objects.filter(
            kind=Dispatch.Kind.JOURNEY,
            source_id__in=version_ids,
            status__in=(Dispatch.Status.PREPARING, Dispatch.Status.SENDING),
        ).values_list("pk", flat=True)
        for dispatch_id in list(running):
            dispatch_stop(dispatch_id=dispatch_id, by=by)
        audit(actor=by, action="journey_enrollments_exited", obj=journey, summary={"count": exited})
    return journey


def journey_archive(*, journey_id: int, by: User) -> Journey:
    """Archive a stopped or closed journey (hidden from the default list)."""
    with transaction.atomic():
        journey = _lock(journey_id, by, "journeys.archive_journey")
        if journey.status not in (Status.STOPPED, Status.CLOSED):
            raise TransitionError(journey, "archived", "Stop it first." if journey.is_live else "")
        _transition(journey, Status.ARCHIVED, by=by, action="archived")
    return journey


# --- the gate ------------------------------------------------------------------------------------


def journey_gate(*, app, source_id: int | None, spec: dict, by: User | None) -> None:
    """The journeys' gate in the delivery pipeline: a dispatch only for a push step of an approved
    version (live, or retired with profiles finishing on it) of a live journey, whose graph is the
    approved one, sending exactly the content that was approved.

    Raises GateClosed otherwise, whoever calls.
    """
    from delivery.services.dispatches import GateClosed

    version = JourneyVersion.objects.select_related("journey").filter(pk=source_id).first()
    if version is None or version.journey.app_id != app.pk:
        raise GateClosed("No such journey version for this app.")
    journey = version.journey
    if journey.status != Status.LIVE:
        raise GateClosed(f"'{journey}' is {journey.get_status_display().lower()}, not live.")
    if version.status not in (VStatus.LIVE, VStatus.RETIRED) or not version.approved_fingerprint:
        raise GateClosed(f"Version {version.number} of '{journey}' is not approved.")
    approved = {step: item["fingerprint"] for step, item in (version.frozen_specs or {}).items()}
    if version.fingerprint(content_fingerprints=approved) != version.approved_fingerprint:
        raise GateClosed(f"Version {version.number} of '{journey}' changed since it was approved.")
    if not any(item["spec"] == spec for item in version.frozen_specs.values()):
        raise GateClosed("The content to send is not the approved content of this journey.")


# --- entries ------------------------------------------------------------------------------------


def _queue(func: str, *args) -> None:
    from django_q.tasks import async_task

    async_task(func, *args, q_options={"timeout": 240})


def _dt(value: dt.datetime | None):
    return connection.ops.adapt_datetimefield_value(value) if value is not None else None


def _enter(version: JourneyVersion, audience_sql: str, audience_params: list, *, now: dt.datetime) -> int:
    """Enroll the audience's profiles in one INSERT … SELECT, obeying the re-entry policy.

    A profile enters when it never entered the journey, or (re-entry after a wait) when it has
    no open enrollment and its last entry is at least the wait old. The partial unique index
    "one open enrollment per (journey, profile)" settles races between concurrent entries.
    """
    entry = entry_of(version.steps())
    if entry is None:
        return 0
    reentry = version.reentry == JourneyVersion.Reentry.AFTER_WAIT
    empty = "'[]'::jsonb" if connection.vendor == "postgresql" else "'[]'"
    sql = (
        "INSERT INTO journeys_enrollment (journey_id, version_id, profile_id, entry_number, step, status, "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
        "due_at, entered_at, updated_at, exit_reason, history) "
        f"SELECT %s, %s, p.id, COALESCE(prev.n, 0) + 1, %s, 'active', %s, %s, %s, '', {empty} "
        f"FROM ({audience_sql}) p LEFT JOIN ("
        "SELECT profile_id, MAX(entry_number) AS n, MAX(entered_at) AS last_at, "
        "MAX(CASE WHEN status IN ('active', 'waiting') THEN 1 ELSE 0 END) AS busy "
        "FROM journeys_enrollment WHERE journey_id = %s GROUP BY profile_id"
        ") prev ON prev.profile_id = p.id "
        "WHERE prev.profile_id IS NULL OR (%s AND prev.busy = 0 AND prev.last_at <= %s) "
        "ON CONFLICT DO NOTHING"
    )
    params = [
        version.journey_id,
        version.pk,
        entry,
        _dt(now),
        _dt(now),
        _dt(now),
        *audience_params,
        version.journey_id,
        reentry,
        _dt(now - dt.timedelta(seconds=version.reentry_wait_seconds)),
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return max(cursor.rowcount, 0)


def journey_enter_segment(*, journey_id: int, now: dt.datetime | None = None) -> int:
    """Read a live segment-entry journey's segment now (if due): its profiles enter, set-based.

    The journey row is taken with SKIP LOCKED (another worker holding it is entering it); the
    next run is set from the version's recurrence (none for a one-off entry). Returns how many entered.
    """
    from audiences.rules import segment_profiles

    now = now or timezone.now()
    with transaction.atomic():
        journey = (
            Journey.objects.select_for_update(skip_locked=True)
            .filter(pk=journey_id, status=Status.LIVE, next_entry_at__lte=now)
            .first()
        )
        if journey is None or journey.live_version_id is None:
            return 0
        version = JourneyVersion.objects.select_related("journey", "entry_segment").get(pk=journey.live_version_id)
        entered = 0
        if version.entry_kind == JourneyVersion.EntryKind.SEGMENT and version.entry_segment is not None:
            audience = segment_profiles(version.entry_segment, now=now)
            if not audience.query.is_empty():
                sql, params = audience.order_by().values("id").query.sql_with_params()
                entered = _enter(version, sql, list(params), now=now)
        every = version.entry_every_hours
        journey.next_entry_at = now + dt.timedelta(hours=every) if every else None
        journey.save(update_fields=["next_entry_at"])
        audit(
            actor=None,
            action="journey_segment_read",
            obj=journey,
            summary={"version": version.number, "entered": entered},
        )
        if entered:
            transaction.on_commit(lambda: _queue("journeys.tasks.journeys_run_due_task"))
    return entered


def journeys_events_received(*, event_ids: list[int]) -> dict:
    """Events arrived through the API: fire exit criteria, then enter event-entry journeys.

    An exit event ends the profile's open enrollments (entered before the event) of every live
    journey whose version names it. An entry event enrolls the profile in each live journey
    whose live version enters on it (re-entry policy applies). Returns the counts.
    """
    from audiences.models import Event, Profile

    events = list(Event.objects.filter(pk__in=event_ids).values("profile_id", "name", "occurred_at"))
    if not events:
        return {"exited": 0, "entered": 0}
    now = timezone.now()
    names = {e["name"] for e in events}
    exited = entered = 0
    exit_versions = JourneyVersion.objects.filter(
        exit_event__in=names, status__in=(VStatus.LIVE, VStatus.RETIRED), journey__status=Status.LIVE
    ).values_list("pk", "exit_event")
    by_name = defaultdict(list)
    for version_id, name in exit_versions:
        by_name[name].append(version_id)
    for name, version_ids in by_name.items():
        latest = {}
        for e in events:
            if e["name"] == name:
                latest[e["profile_id"]] = max(latest.get(e["profile_id"], e["occurred_at"]), e["occurred_at"])
        with transaction.atomic():
            rows = list(
                Enrollment.objects.select_for_update()
                .filter(version_id__in=version_ids, profile_id__in=list(latest), status__in=Enrollment.OPEN_STATUSES)
                .order_by("pk")
                .values_list("pk", "profile_id", "entered_at", "version_id", "step")
            )
            ending = [
                (pk, version_id, step)
                for pk, profile_id, entered_at, version_id, step in rows
                if entered_at <= latest[profile_id]
            ]
            if ending:
                Enrollment.objects.filter(pk__in=[pk for pk, _, _ in ending]).update(
                    status=EStatus.EXITED,
                    exit_reason=f"exit event '{name}'",
                    finished_at=now,
                    updated_at=now,
                    due_at=None,
                )
                _stats_add(Counter((version_id, step, "exit_event") for _, version_id, step in ending))
                exited += len(ending)
    entry_versions = JourneyVersion.objects.filter(
        entry_kind=JourneyVersion.EntryKind.EVENT,
        entry_event__in=names,
        status=VStatus.LIVE,
        journey__status=Status.LIVE,
    ).select_related("journey")
    for version in entry_versions:
        profile_ids = sorted({e["profile_id"] for e in events if e["name"] == version.entry_event})
        sql, params = Profile.objects.filter(pk__in=profile_ids).order_by().values("id").query.sql_with_params()
        with transaction.atomic():
            entered += _enter(version, sql, list(params), now=now)
    if entered:
        transaction.on_commit(lambda: _queue("journeys.tasks.journeys_run_due_task"))
    return {"exited": exited, "entered": entered}


def journeys_on_events(*, events: list) -> None:
    """The audiences event listener: queue the journey work when a live journey cares about these events."""
    names = {e.name for e in events}
    wanted = JourneyVersion.objects.filter(
        Q(entry_kind=JourneyVersion.EntryKind.EVENT, entry_event__in=names, status=VStatus.LIVE)
        | Q(exit_event__in=names, status__in=(VStatus.LIVE, VStatus.RETIRED)),
        journey__status=Status.LIVE,
    )
    if wanted.exists():
        _queue("journeys.tasks.journeys_events_task", [e.pk for e in events])


def journeys_tick(*, now: dt.datetime | None = None, seconds: float = 40.0) -> dict:
    """The scheduler's beat: read due segment entries, close finished one-off journeys, run the engine.

    Safe on every worker at once (entries under the journey's row lock, the engine with SKIP LOCKED).
    """
    now = now or timezone.now()
    due = list(Journey.objects.filter(status=Status.LIVE, next_entry_at__lte=now).values_list("pk", flat=True)[:200])
    entered = sum(journey_enter_segment(journey_id=pk, now=now) for pk in due)
    report = journeys_run_due(now=now, seconds=seconds)
    closed = journeys_close_finished(now=now)
    return {"entries": len(due), "entered": entered, "closed": closed, **report.as_dict()}


def journeys_close_finished(*, now: dt.datetime | None = None) -> int:
    """Close live journeys that will take no one new (a one-off segment entry, read) and have no one inside."""
    now = now or timezone.now()
    candidates = Journey.objects.filter(
        status=Status.LIVE,
        next_entry_at__isnull=True,
        live_version__entry_kind=JourneyVersion.EntryKind.SEGMENT,
        live_version__entry_every_hours=0,
    ).exclude(pk__in=Enrollment.objects.filter(status__in=Enrollment.OPEN_STATUSES).values("journey_id"))
    closed = 0
    for pk in list(candidates.values_list("pk", flat=True)[:200]):
        with transaction.atomic():
            journey = Journey.objects.select_for_update(skip_locked=True).filter(pk=pk, status=Status.LIVE).first()
            if journey is None or journey.next_entry_at is not None:
                continue
            if journey.versions.filter(status=VStatus.IN_REVIEW).exists():
                continue
            if Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).exists():
                continue
            _transition(journey, Status.CLOSED, by=None, action="closed")
            closed += 1
    return closed


# --- the engine ---------------------------------------------------------------------------------


@dataclass
class RunReport:
    batches: int = 0
    enrollments: int = 0
    transitions: int = 0
    pushed: int = 0
    dispatches: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "enrollments": self.enrollments,
            "transitions": self.transitions,
            "pushed": self.pushed,
        }


def journeys_run_due(
    *, batch: int = 1000, now: dt.datetime | None = None, seconds: float | None = None, max_batches: int | None = None
) -> RunReport:
    """Run due enrollments, a batch at a time, each to its next wait (or its end).

    Each batch is one transaction holding its enrollments' row locks (SKIP LOCKED: workers never
    wait on, or run, each other's rows). Stops when nothing is due, after ``seconds``, or after
    ``max_batches``. ``now`` fixes the clock (tests); by default each batch reads the time.
    """
    report = RunReport()
    started = time.monotonic()
    while True:
        moment = now or timezone.now()
        taken = _run_batch(batch=batch, now=moment, report=report)
        if taken:
            report.batches += 1
        if taken < batch:
            break
        if seconds is not None and time.monotonic() - started >= seconds:
            break
        if max_batches is not None and report.batches >= max_batches:
            break
    return report


_ROW_FIELDS = (
    "id",
    "journey_id",
    "version_id",
    "profile_id",
    "step",
    "status",
    "due_at",
    "entered_at",
    "finished_at",
    "exit_reason",
    "history",
)


class _Row:
    """The columns of an enrollment the engine reads and writes (cheaper than model instances)."""

    __slots__ = _ROW_FIELDS

    def __init__(self, values: tuple):
        for name, value in zip(_ROW_FIELDS, values, strict=True):
            setattr(self, name, value)

    @property
    def pk(self) -> int:
        return self.id


@dataclass
class _Run:
    """One enrollment being run in this batch."""

    row: _Row
    history: list
    running: bool = True
    changed: bool = False


def _stats_add(counts: Counter) -> None:
    """Add to the step counters in one statement (insert or increment)."""
    if not counts:
        return
    values = ", ".join(["(%s, %s, %s, %s)"] * len(counts))
    params = []
    for (version_id, step, metric), n in counts.items():
        params += [version_id, step, metric[:100], n]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO journeys_stepstat (version_id, step, metric, count) VALUES {values} "  # noqa: S608 (placeholders only)
            "ON CONFLICT (version_id, step, metric) DO UPDATE SET count = journeys_stepstat.count + excluded.count",
            params,
        )


def _run_batch(*, batch: int, now: dt.datetime, report: RunReport) -> int:
    with transaction.atomic():
        rows = [
            _Row(values)
            for values in Enrollment.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status__in=Enrollment.OPEN_STATUSES, due_at__lte=now)
            .order_by("due_at")
            .values_list(*_ROW_FIELDS)[:batch]
        ]
        if not rows:
            return 0
        versions = {
            v.pk: v
            for v in JourneyVersion.objects.select_related("journey").filter(pk__in={r.version_id for r in rows})
        }
        stats: Counter = Counter()
        runs_by_version: dict[int, list[_Run]] = defaultdict(list)
        for row in rows:
            runs_by_version[row.version_id].append(_Run(row=row, history=list(row.history or [])))
        for version_id, runs in runs_by_version.items():
            _run_version(versions[version_id], runs, now=now, stats=stats, report=report)
        _write_back([run for runs in runs_by_version.values() for run in runs], now=now)
        _stats_add(stats)
        report.enrollments += len(rows)
    return len(rows)


def _split_bucket(journey_id: int, step_id: str, profile_id: int) -> int:
    """0–99, the same for a profile at a split of a journey every time (A/B groups are stable)."""
    digest = hashlib.sha256(f"{journey_id}:{step_id}:{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _next_time_of_day(until: str, tz_name: str, now: dt.datetime) -> dt.datetime:
    """The next ``HH:MM`` (now included) in the zone ``tz_name`` (UTC when blank or unknown)."""
    try:
        tz = ZoneInfo(tz_name) if tz_name else dt.UTC
    except (ZoneInfoNotFoundError, ValueError):
        tz = dt.UTC
    hour, minute = (int(part) for part in until.split(":"))
    local = now.astimezone(tz)
    target = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target < local:
        target = (local + dt.timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    # Round-trip through UTC so a wall time skipped by a DST change still lands after now.
    return target.astimezone(dt.UTC)


def _run_version(
    version: JourneyVersion, runs: list[_Run], *, now: dt.datetime, stats: Counter, report: RunReport
) -> None:
    journey = version.journey
    stamp = now.isoformat(timespec="seconds")
    if journey.status != Status.LIVE:
        for run in runs:
            _finish(run, EStatus.EXITED, now, reason=f"journey {journey.get_status_display().lower()}")
        return
    steps = version.step_map()

    def move(run: _Run, step_id: str, outcome: str, to: str | None) -> None:
        run.history.append([step_id, stamp, outcome])
        run.changed = True
        report.transitions += 1
        if to is not None:
            run.row.step = to
            run.row.status = EStatus.ACTIVE

    for _ in range(len(steps) + 2):
        active = [run for run in runs if run.running]
        if not active:
            break
        at_step: dict[str, list[_Run]] = defaultdict(list)
        for run in active:
            at_step[run.row.step].append(run)
        for step_id, group in at_step.items():
            step = steps.get(step_id)
            if step is None:
                for run in group:
                    _finish(run, EStatus.FAILED, now, reason=f"step '{step_id}' is not in version {version.number}")
                continue
            kind = step["type"]
            resuming = [r for r in group if r.row.status == EStatus.WAITING]
            arriving = [r for r in group if r.row.status != EStatus.WAITING]
            if arriving:
                stats[(version.pk, step_id, "entered")] += len(arriving)
            if kind == "wait":
                for run in resuming:
                    move(run, step_id, "waited", step["next"])
                    stats[(version.pk, step_id, "passed")] += 1
                if not arriving:
                    continue
                if "until" in step:
                    zones = _profile_zones([r.row.profile_id for r in arriving])
                    due = {
                        r.row.pk: _next_time_of_day(step["until"], zones.get(r.row.profile_id, ""), now)
                        for r in arriving
                    }
                else:
                    due = {r.row.pk: now + dt.timedelta(seconds=step["seconds"]) for r in arriving}
                for run in arriving:
                    when = due[run.row.pk]
                    if when <= now:
                        move(run, step_id, "passed", step["next"])
                        stats[(version.pk, step_id, "passed")] += 1
                    else:
                        run.history.append([step_id, stamp, "waiting"])
                        report.transitions += 1
                        run.row.status = EStatus.WAITING
                        run.row.due_at = when
                        run.running = False
                        run.changed = True
            elif kind == "condition":
                remaining = {r.row.profile_id: r for r in group}
                for index, branch in enumerate(step["branches"]):
                    label = str(branch.get("label") or f"branch {index + 1}")
                    holding = _branch_holds(branch, remaining)
                    for profile_id in holding:
                        run = remaining.pop(profile_id)
                        move(run, step_id, f"branch:{label}", branch["next"])
                        stats[(version.pk, step_id, f"passed:{label}")] += 1
                for run in remaining.values():
                    move(run, step_id, "branch:else", step["else"])
                    stats[(version.pk, step_id, "passed:else")] += 1
            elif kind == "split":
                for run in group:
                    bucket = _split_bucket(journey.pk, step_id, run.row.profile_id)
                    chosen, edge = step["branches"][-1], 0
                    for branch in step["branches"]:
                        edge += branch["percent"]
                        if bucket < edge:
                            chosen = branch
                            break
                    label = str(chosen.get("label") or "")
                    move(run, step_id, f"branch:{label}", chosen["next"])
                    stats[(version.pk, step_id, f"passed:{label}")] += 1
            elif kind == "push":
                dispatch_id, error = _push(version, step_id, [r.row.profile_id for r in group])
                for run in group:
                    if error:
                        run.history.append([step_id, stamp, "failed"])
                        report.transitions += 1
                        _finish(run, EStatus.FAILED, now, reason=error[:200])
                    else:
                        move(run, step_id, f"pushed:{dispatch_id}", step["next"])
                if error:
                    stats[(version.pk, step_id, "failed")] += len(group)
                else:
                    stats[(version.pk, step_id, "pushed")] += len(group)
                    report.pushed += len(group)
                    report.dispatches.append(dispatch_id)
            elif kind == "exit":
                for run in group:
                    move(run, step_id, "exit", None)
                    _finish(run, EStatus.COMPLETED, now, reason="")
                stats[(version.pk, step_id, "exited")] += len(group)
    for run in runs:
        if run.running:  # a graph longer than it should be: never leave a row due forever
            _finish(run, EStatus.FAILED, now, reason="ran more steps than the journey has")


def _finish(run: _Run, status: str, now: dt.datetime, *, reason: str) -> None:
    run.row.status = status
    run.row.due_at = None
    run.row.finished_at = now
    run.row.exit_reason = reason
    run.running = False
    run.changed = True


def _profile_zones(profile_ids: list[int]) -> dict[int, str]:
    from audiences.models import Profile

    return dict(Profile.objects.filter(_among(profile_ids)).values_list("pk", "timezone"))


def _branch_holds(branch: dict, remaining: dict[int, _Run]) -> set[int]:
    """The profiles among ``remaining`` for which the condition branch holds (one query)."""
    from audiences.models import Event, Profile, Segment
    from audiences.rules import rules_compile, segment_profiles

    ids = list(remaining)
    if not ids:
        return set()
    if "segment" in branch:
        segment = Segment.objects.filter(pk=branch["segment"]).first()
        if segment is None:
            return set()  # a deleted segment holds for no one: they take "all others"
        return set(segment_profiles(segment).filter(_among(ids)).values_list("pk", flat=True))
    if "rules" in branch:
        return set(
            Profile.objects.filter(rules_compile(branch["rules"])).filter(_among(ids)).values_list("pk", flat=True)
        )
    earliest = min(run.row.entered_at for run in remaining.values())
    latest = dict(
        Event.objects.filter(_among(ids, "profile_id"), name=branch["event"], occurred_at__gte=earliest)
        .values("profile_id")
        .annotate(last=Max("occurred_at"))
        .values_list("profile_id", "last")
    )
    return {pid for pid, last in latest.items() if last >= remaining[pid].row.entered_at}


def _push(version: JourneyVersion, step_id: str, profile_ids: list[int]) -> tuple[int | None, str]:
    """One Dispatch for every profile of the batch at this push step, with the approved content.

    Returns (dispatch id, "") or (None, the reason it was refused).
    """
    from delivery.models import Dispatch
    from delivery.services.dispatches import GateClosed, dispatch_create

    frozen = (version.frozen_specs or {}).get(step_id)
    if frozen is None:
        return None, f"step '{step_id}' has no approved content"
    journey = version.journey
    try:
        with transaction.atomic():
            dispatch = dispatch_create(
                app_id=journey.app_id,
                kind=Dispatch.Kind.JOURNEY,
                spec=frozen["spec"],
                content_id=frozen["content_id"],
                profile_ids=sorted(profile_ids),
                source_id=version.pk,
                label=f"{journey.name} v{version.number} · {step_id}",
                context={
                    "journey": {"id": journey.pk, "name": journey.name, "version": version.number, "step": step_id}
                },
            )
    except (GateClosed, ValidationError) as exc:
        log.warning("Journey %s step %s refused: %s", journey.pk, step_id, exc)
        return None, f"refused at send time: {exc}"
    return dispatch.pk, ""


def _write_back(runs: list[_Run], *, now: dt.datetime) -> None:
    """Save the batch's enrollments in one statement (UPDATE … FROM unnest(arrays) on PostgreSQL)."""
    changed = [run for run in runs if run.changed]
    if not changed:
        return
    for run in changed:
        run.row.history = run.history
    if connection.vendor != "postgresql":
        Enrollment.objects.bulk_update(
            [Enrollment(**{name: getattr(run.row, name) for name in _ROW_FIELDS}, updated_at=now) for run in changed],
            ["step", "status", "due_at", "history", "updated_at", "finished_at", "exit_reason"],
            batch_size=500,
        )
        return
    # One statement with one parameter (the batch as a JSON document): thousands of placeholders,
    # or arrays of strings, cost more to send than the update itself.
    document = json.dumps(
        [
            {
                "id": run.row.pk,
                "step": run.row.step,
                "status": run.row.status,
                "due_at": run.row.due_at.isoformat() if run.row.due_at else None,
                "history": run.history,
                "finished_at": run.row.finished_at.isoformat() if run.row.finished_at else None,
                "exit_reason": run.row.exit_reason or "",
            }
            for run in changed
        ],
        separators=(",", ":"),
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE journeys_enrollment e SET step = v.step, status = v.status, due_at = v.due_at, "
            "history = v.history, updated_at = %s, finished_at = v.finished_at, exit_reason = v.exit_reason "
            "FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, step text, status text, due_at timestamptz, "
            "history jsonb, finished_at timestamptz, exit_reason text) WHERE e.id = v.id",
            [now, document],
        )


def _among(ids: list[int], field: str = "pk") -> Q:
    """``field`` is one of ``ids``: one array parameter on PostgreSQL, not one placeholder per id."""
    if connection.vendor == "postgresql":
        from django.db.models.expressions import RawSQL

        return Q(**{f"{field}__in": RawSQL("SELECT unnest(%s::bigint[])", [list(ids)])})
    return Q(**{f"{field}__in": list(ids)})


# Used by the admin and the API to tell what a branch is.
def branch_labels(step: dict) -> list[str]:
    return [label for label, _ in exits_of(step)]


def segments_used(version: JourneyVersion) -> set[int]:
    ids = segments_of(version.graph)
    if version.entry_segment_id:
        ids.add(version.entry_segment_id)
    return ids
