"""The life of a journey: validation, create, edit, discard a draft, submit, approve, pause, resume, stop,
archive and the gate.

Transitions lock the journey row, check the state they start from, write an audit event and
queue follow-up work on commit (STYLE rule 2). The approval subject is the journey; the request's
fingerprint pins the version under review (entry, exit, re-entry, graph, each push's content, the
definition of each segment it reads).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections import Counter

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import ApprovalRequest, User
from accounts.selectors import approval_current, can, in_scope, visible_named, visible_to
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
from config.labels import numbered
from journeys.graph import DAY_SECONDS, EVENT_NAME_MAX, contents_of, exits_of, graph_validate, rules_of, segments_of
from journeys.models import Enrollment, Journey, JourneyPause, JourneyVersion
from journeys.services.step_stats import step_stats_add

Status = Journey.Status
VStatus = JourneyVersion.Status
MAX_WHOLE_NUMBER = 2**31 - 1  # the range of the version's whole-number columns
# A segment read again at most a year apart: its next read is a date (millions of hours overflow it).
MAX_ENTRY_EVERY_HOURS = 365 * 24
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


# What a transition saves with the status: the fields the steps change along with it.
SAVED_WITH_STATUS = ("live_version", "next_entry_at")


def _open_version(journey: Journey) -> JourneyVersion | None:
    """The version being edited or reviewed (draft / in review), if any."""
    return journey.versions.filter(status__in=(VStatus.DRAFT, VStatus.IN_REVIEW)).order_by("-number").first()


# What a journey's push gives its content as ``context`` (``journeys.services.engine``): its event
# entries carry no event's values.
JOURNEY_PUSH_CONTEXT = {"journey": {"id": 0, "name": "", "version": 0, "step": ""}}
# What a content reads to show the journey's name, which every push gives it (``Journey.send_context``).
NAME_READ = "context.journey.name"


def version_shows_name(version: JourneyVersion) -> bool:
    """Does a push step of the version show the journey's name (``NAME_READ``)? Its contents as
    approved (``frozen_specs``) once it is, as they are now before. Then its approval covers the
    name: it gives its pushes the name the journey has then (``approved_name``)."""
    from delivery.models import PushContent
    from delivery.payloads import spec_reads

    if version.approved_fingerprint:
        specs = [item["spec"] for item in (version.frozen_specs or {}).values()]
    else:
        specs = [c.spec() for c in PushContent.objects.filter(pk__in=set(contents_of(version.graph).values()))]
    return any(spec_reads(spec, NAME_READ) for spec in specs)


def name_unapproved_text(journey: Journey) -> str:
    """What the page of an on-air journey renamed since its live version was approved says, when that
    version's pushes show the name: they keep saying the name it was approved with until a new
    version is approved, whose approval covers the new name. "" otherwise."""
    live = journey.live_version
    if journey.status not in Journey.ON_AIR or live is None or live.approved_name in ("", journey.name):
        return ""
    if not version_shows_name(live):
        return ""
    said = (
        f"Its pushes show the journey's name: version {live.number} sends them as '{live.approved_name}', the name "
        "it was approved with, until a new version is approved."
    )
    draft = _open_version(journey)
    if draft is None:
        return f"{said} A new version's approval gives them '{journey.name}'."
    return f"{said} Version {draft.number} gives them '{journey.name}' once approved."


def version_reference_checks(*, app_id: int, by: User | None, kept: JourneyVersion | None = None):
    """The functions graph_validate uses to check segments, contents and rule trees (access of ``by``);
    a content may not show a ``context.*`` value a journey's push does not give, without a default.

    ``kept``: the version as it stood before this change. What it named already is only checked to
    exist (and a content to be of the app), not against ``by``'s access: a colleague keeps what they
    were not granted; what they name now must be theirs to use, as for a campaign, and one that is not
    is refused as a missing one is (its name, its app and its very existence stay untold)."""
    from audiences.models import Segment
    from audiences.rules.schema import RulesInvalid, segment_references
    from audiences.rules.validation import rules_validate_for
    from audiences.rules.words import rules_invalid_text
    from delivery.models import PushContent
    from delivery.payloads import spec_context_gaps

    kept_graph = kept.graph if kept is not None else {}
    kept_segments = segments_of(kept_graph)
    kept_contents = set(contents_of(kept_graph).values())
    kept_rules = {json.dumps(tree, sort_keys=True) for tree in rules_of(kept_graph)}

    answers: dict[tuple, str] = {}  # a segment or content named by many branches is looked up once

    def check_segment(segment_id: int, *, who: User | None = by) -> str:
        key = ("segment", segment_id, who is None)
        if key not in answers:
            answers[key] = _check_segment(segment_id, who)
        return answers[key]

    def _check_segment(segment_id: int, who: User | None) -> str:
        # One named anew outside access reads as a missing one: which ids exist is not told.
        if (
            who is not None
            and segment_id not in kept_segments
            and not in_scope(who, Segment.objects.filter(pk=segment_id)).exists()
        ):
            return f"there is no segment {segment_id} you may use."
        if not Segment.objects.filter(pk=segment_id).exists():
            return f"segment {segment_id} does not exist (was it deleted?)."
        return ""

    def check_content(content_id: int) -> str:
        if ("content", content_id) not in answers:
            answers[("content", content_id)] = _check_content(content_id)
        return answers[("content", content_id)]

    def _check_content(content_id: int) -> str:
        # One named anew outside access reads as a missing one, before its name or app is said.
        if (
            by is not None
            and content_id not in kept_contents
            and not in_scope(by, PushContent.objects.filter(pk=content_id)).exists()
        ):
            return f"there is no push content {content_id} you may use."
        content = PushContent.objects.filter(pk=content_id).first()
        if content is None:
            return f"push content {content_id} does not exist."

        def named() -> str:
            # A kept one ``by`` may not see (a colleague's, on a journey granted alone) is named by
            # its number, as the journey's page names it.
            if by is not None and content_id in kept_contents and not visible_named(by, PushContent, [content_id]):
                return numbered("content", content_id)
            return f"push content '{content}'"

        if content.app_id != app_id:
            return f"{named()} belongs to another app."
        shown = spec_context_gaps(content.spec(), given=JOURNEY_PUSH_CONTEXT)
        if shown:
            return (
                f"{named()} shows {shown}: a journey's push has no call's context (only an "
                "API trigger's call gives one), so it would send that part empty. Give it a default "
                "({{ context.… | default: '…' }}) or show a profile attribute instead."
            )
        return ""

    def check_rules(tree) -> str:
        who = None if json.dumps(tree, sort_keys=True) in kept_rules else by
        try:
            rules_validate_for(tree, by=who)
        except RulesInvalid as exc:
            return "the rule is invalid: " + rules_invalid_text(tree, exc.errors)
        for segment_id in segment_references(tree):
            if message := check_segment(segment_id, who=who):
                return f"the rule refers to {message}"
        return ""

    return {"check_segment": check_segment, "check_content": check_content, "check_rules": check_rules}


def version_entry_fields_clear(version: JourneyVersion) -> None:
    """Clear what the chosen entry does not use (a form sends the segment still chosen when the
    entry becomes an event): kept, it went unseen by the approver and held the segment from deletion."""
    if version.entry_kind == JourneyVersion.EntryKind.EVENT:
        version.entry_segment = None
        version.entry_every_hours = 0
    elif version.entry_kind == JourneyVersion.EntryKind.SEGMENT:
        version.entry_event = ""


def _validate_version(version: JourneyVersion, *, by: User | None, kept: JourneyVersion | None = None) -> None:
    """Raise ValidationError naming the field, or GraphInvalid naming each broken step. ``kept``: the
    version as it stood before this change (what it named already is not checked against ``by``'s access)."""
    from audiences.models import Segment

    errors: dict[str, str] = {}
    if version.entry_kind == JourneyVersion.EntryKind.SEGMENT:
        if version.entry_segment_id is None:
            errors["entry_segment"] = "A segment entry needs a segment."
        elif (
            by is not None
            and version.entry_segment_id != (kept.entry_segment_id if kept is not None else None)
            and not in_scope(by, Segment.objects.filter(pk=version.entry_segment_id)).exists()
        ):
            errors["entry_segment"] = "Choose a segment you have access to."
    elif version.entry_kind == JourneyVersion.EntryKind.EVENT:
        if not version.entry_event.strip():
            errors["entry_event"] = "An event entry needs the event's name."
    else:
        errors["entry_kind"] = f"Use one of {', '.join(JourneyVersion.EntryKind.values)}."
    for field in ("entry_event", "exit_event"):  # a longer name is no event's, and the column refuses it
        if len(getattr(version, field)) > EVENT_NAME_MAX:
            length = len(getattr(version, field))
            errors[field] = f"An event's name is at most {EVENT_NAME_MAX} characters (this one has {length:,})."
    if not 0 <= version.entry_every_hours <= MAX_ENTRY_EVERY_HOURS:
        errors["entry_every_hours"] = f"Between 0 and {MAX_ENTRY_EVERY_HOURS:,} hours (a year)."
    if version.reentry not in JourneyVersion.Reentry.values:
        errors["reentry"] = f"Use one of {', '.join(JourneyVersion.Reentry.values)}."
    elif version.reentry == JourneyVersion.Reentry.AFTER_WAIT and version.reentry_wait_seconds < 0:
        errors["reentry_wait_seconds"] = "The re-entry wait is 0 seconds or more."
    if version.reentry_wait_seconds > MAX_WHOLE_NUMBER:
        errors["reentry_wait_seconds"] = f"The re-entry wait is at most {MAX_WHOLE_NUMBER // DAY_SECONDS:,} days."
    if errors:
        raise ValidationError(errors)
    graph_validate(version.graph, **version_reference_checks(app_id=version.journey.app_id, by=by, kept=kept))


def _content_fingerprints(version: JourneyVersion) -> dict[str, str]:
    from delivery.models import PushContent

    contents = contents_of(version.graph)
    by_id = {c.pk: c for c in PushContent.objects.filter(pk__in=set(contents.values()))}
    return {step: (by_id[cid].fingerprint() if cid in by_id else "missing") for step, cid in contents.items()}


def journey_read_mark(journey: Journey) -> str:
    """What a review of the journey shows now, as ``journey_approve`` checks it (``read_mark``): the
    fingerprint of its version in review as it stands; "" when none is."""
    version = journey.versions.filter(status=VStatus.IN_REVIEW).first()
    return version_fingerprint(version) if version is not None else ""


def journey_changed_since_submitted(journey: Journey, request) -> bool:
    """Does its version in review differ from what ``request`` (its approval request) was submitted
    as, as ``journey_approve`` checks it (a push's content edited meanwhile, say)? Its approval would
    be refused. False when no version is in review."""
    version = journey.versions.filter(status=VStatus.IN_REVIEW).first()
    if version is None:
        return False
    if request.fingerprint == version_fingerprint(version):
        return False
    # Submitted before approvals covered the segments: approved now, it covers them as they are.
    return request.fingerprint != version.fingerprint(content_fingerprints=_content_fingerprints(version))


def version_fingerprint(version: JourneyVersion) -> str:
    """What an approval of this version covers, with the push contents and the segments as they are now."""
    return version.fingerprint(
        content_fingerprints=_content_fingerprints(version), segment_fingerprints=segment_fingerprints(version)
    )


def segments_read(version: JourneyVersion) -> set[int]:
    """The segments the version reads live: its entry segment, its conditions' segments and those
    their rules name (the segments these use are in each one's definition)."""
    from audiences.models import segments_used as rules_segments

    ids = segments_used(version)
    for rules in rules_of(version.graph):
        ids |= rules_segments(rules)
    return ids


def segment_fingerprints(version: JourneyVersion, ids: set[int] | None = None) -> dict[str, str]:
    """The definition's fingerprint now (``Segment.definition_fingerprint``) of each segment the
    version reads (or of ``ids``), by segment id: what an approval of the version freezes."""
    from audiences.models import Segment

    ids = segments_read(version) if ids is None else ids
    found = {segment.pk: segment for segment in Segment.objects.filter(pk__in=ids)}
    return {str(pk): found[pk].definition_fingerprint() if pk in found else "missing" for pk in sorted(ids)}


def segments_unfrozen_text(version: JourneyVersion) -> str:
    """What an approved version made before approvals covered the segments says of them: it froze
    none, so it reads them as they are now (an edit reaches it unapproved) until a new version is
    approved; "" for a version whose approval froze them, one not approved, or one reading none."""
    if not version.approved_fingerprint or version.approved_segments or not segments_read(version):
        return ""
    return (
        f"Version {version.number} was approved before its segments were part of approvals: the segments it "
        "reads are used as they are now; approve a new version to freeze them."
    )


def segments_changed_text(
    version: JourneyVersion, ids: set[int] | None = None, *, reader: User | None = None, by_number: bool = False
) -> str:
    """Why the version may not read its segments (or ``ids``) now: each one edited since the version
    was approved (its rules, a segment they use, a kept list's members), named; "" when none was.
    For a ``reader`` (a page's), only the segments they may see are named, the others read
    "The segment #12 is…"; ``by_number``, none is named (what an enrollment records: whoever reads it may
    not see them); else each is named (what the log records, for its Administrators).

    A version approved before approvals covered the segments froze none, and reads them as it did.
    A segment that no longer exists is not said here: it holds for no one (its deletion is refused
    while a journey uses it)."""
    from audiences.models import Segment

    approved = version.approved_segments or {}
    ids = {int(pk) for pk in approved} if ids is None else {pk for pk in ids if str(pk) in approved}
    if not ids:
        return ""
    now = segment_fingerprints(version, ids)
    changed = [int(pk) for pk, value in now.items() if value not in ("missing", approved[pk])]
    if not changed:
        return ""
    found = Segment.objects.filter(pk__in=changed)
    if by_number:
        found = found.none()
    elif reader is not None:
        found = visible_to(reader, found)
    named = dict(found.values_list("pk", "name"))
    said = sorted(f"'{named[pk]}'" for pk in named) + [f"#{pk}" for pk in sorted(set(changed) - set(named))]
    names = ", ".join(said)
    return (
        f"The segment{'s' if len(changed) > 1 else ''} {names} {'are' if len(changed) > 1 else 'is'} defined otherwise "
        f"than when version {version.number} was approved: approve a new version to read "
        f"{'them' if len(changed) > 1 else 'it'}."
    )


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
    if app is None or not in_scope(by, App.objects.filter(pk=app.pk)).exists():
        raise ValidationError({"app": "Choose an app you have access to."})
    with transaction.atomic():
        journey = Journey.objects.create(name=name.strip(), app=app, owner=by)
        version = JourneyVersion(journey=journey, number=1, created_by=by, graph=graph or {}, **version_fields)
        version_entry_fields_clear(version)
        _validate_version(version, by=by)
        version.save()
        access_grant(obj=journey, to=by, by=None)
        audit(actor=by, action="journey_created", obj=journey, summary={"version": 1})
    return journey


def journey_rename(*, journey_id: int, by: User, name: str) -> Journey:
    """Change a journey's name. Its pushes give it to their content (``context.journey.name``), and
    the approval of a version whose pushes show it covers it (``version_shows_name``): the version
    sends the name the journey had when it was approved (``approved_name``). So while such a version
    is in review, a rename is refused (its approver would approve a name the review did not show);
    an on-air journey whose live version shows it keeps sending the approved name, and the rename
    opens a new version (the live one's copy, unless one is open) whose approval gives the new one.
    A journey whose pushes do not show its name renames freely.

    Raises ValidationError for an empty name, TransitionError while a version showing it is in review.
    """
    if not (name or "").strip():
        raise ValidationError({"name": "A journey needs a name."})
    with transaction.atomic():
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.change_journey")
        name = name.strip()
        version = _open_version(journey)
        if name == journey.name:
            return journey
        if version is not None and version.status == VStatus.IN_REVIEW and version_shows_name(version):
            raise TransitionError(
                journey,
                "renamed",
                f"Version {version.number} in review shows the journey's name in its pushes (context.journey.name), "
                "and its approval covers the name the review shows: cancel the request first.",
            )
        summary = {"name": name}
        live = journey.live_version
        if version is None and journey.status in Journey.ON_AIR and live is not None and version_shows_name(live):
            if name != live.approved_name:
                version = _new_version(journey, by=by)
                version.save()
                summary["version"] = version.number  # to submit: its approval gives the pushes the name
        journey.name = name
        journey.updated_at = timezone.now()
        journey.save(update_fields=["name", "updated_at"])
        audit(actor=by, action="journey_renamed", obj=journey, summary=summary)
    return journey


def _new_version(journey: Journey, *, by: User) -> JourneyVersion:
    """A new draft version of the journey (locked by the caller), a copy of its live one when it
    has one; not saved."""
    source = journey.live_version
    version = JourneyVersion(journey=journey, number=_next_version_number(journey), created_by=by)
    if source is not None:
        for name in VERSION_FIELDS:
            setattr(version, name, getattr(source, name))
    return version


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
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.change_journey")
        if journey.status not in (Status.DRAFT, Status.IN_REVIEW, *Journey.ON_AIR):
            raise TransitionError(journey, "edited")
        version = _open_version(journey)
        if version is not None and version.status == VStatus.IN_REVIEW:
            raise TransitionError(journey, "edited", "A version is in review: cancel the request first.")
        if version is None:
            version = _new_version(journey, by=by)
        kept = JourneyVersion(entry_segment_id=version.entry_segment_id, graph=copy.deepcopy(version.graph))
        for name, value in changes.items():
            setattr(version, name, value)
        version_entry_fields_clear(version)
        _validate_version(version, by=by, kept=kept)
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


def _next_version_number(journey: Journey) -> int:
    """Give the journey (locked by the caller) its next version number: after every number given
    before, a discarded draft's included (``Journey.last_version_number``), so that a number in the
    audit log or an earlier approval request names one version only."""
    journey.last_version_number += 1
    journey.save(update_fields=["last_version_number"])
    return journey.last_version_number


def journey_draft_discard(*, journey_id: int, by: User) -> Journey:
    """Throw away the draft version of a journey that went live: the live version (or, on a stopped or
    closed journey, the one that was live) stays what the journey is, as it was before the first edit.

    The draft never ran (no enrollment, counter or send names it), so it is deleted; its number is
    not given again (``_next_version_number``). Raises TransitionError when the journey never went
    live (delete the journey instead), when its version is in review (cancel the request first),
    or when it has no draft; PermissionDenied when ``by`` may not change the journey.
    """
    with transaction.atomic():
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.change_journey")
        if journey.live_version_id is None:
            raise TransitionError(
                journey,
                "returned to its live version",
                "It never went live: there is no live version to go back to. Delete the journey instead.",
            )
        version = _open_version(journey)
        if version is not None and version.status == VStatus.IN_REVIEW:
            raise TransitionError(
                journey,
                "returned to its live version",
                f"Version {version.number} is in review: cancel the request first, then discard the draft.",
            )
        if version is None:
            raise TransitionError(journey, "returned to its live version", "It has no draft version to discard.")
        number = version.number
        audit(
            actor=by,
            action="journey_draft_discarded",
            obj=journey,
            summary={"version": number, "live_version": journey.live_version.number},
        )
        version.delete()
        journey.updated_at = timezone.now()
        journey.save(update_fields=["updated_at"])
    return journey


def journey_delete(*, journey_id: int, by: User) -> None:
    """Delete a journey that never went live. Raises TransitionError otherwise (stop and archive it)."""
    with transaction.atomic():
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.delete_journey")
        if journey.status != Status.DRAFT or journey.versions.exclude(status=VStatus.DRAFT).exists():
            raise TransitionError(journey, "deleted", "Only drafts that never went live can be deleted.")
        audit(actor=by, action="journey_deleted", obj=journey)
        journey.delete()


def journey_submit(*, journey_id: int, by: User, message: str = "") -> ApprovalRequest:
    """Send the draft version for review: it is locked until approved, sent back, or cancelled.

    Raises TransitionError when there is no draft version to submit, ValidationError naming
    the step when the graph no longer holds (e.g. a segment it uses was deleted).
    """
    from journeys.review import submitted_snapshot

    with transaction.atomic():
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.submit_journey")
        version = _open_version(journey)
        if journey.status not in (Status.DRAFT, *Journey.ON_AIR) or version is None or version.status != VStatus.DRAFT:
            raise TransitionError(journey, "submitted for review", "There is no draft version to submit.")
        _validate_version(version, by=by, kept=version)  # it all still exists; access was checked as it was set
        request = approval_request_open(
            subject=journey,
            context={"type": "journey", "app_id": journey.app_id},
            fingerprint=version_fingerprint(version),
            approve_perm="journeys.approve_journey",
            by=by,
            message=message,
            snapshot=submitted_snapshot(journey, version),
        )
        version.status = VStatus.IN_REVIEW
        version.save(update_fields=["status"])
        if journey.status == Status.DRAFT:
            status_transition(
                journey,
                Status.IN_REVIEW,
                by=by,
                action="submitted",
                summary={"version": version.number},
                also_saved=SAVED_WITH_STATUS,
            )
        else:
            audit(actor=by, action="journey_version_submitted", obj=journey, summary={"version": version.number})
    return request


def _pending_request(journey: Journey, *, read_id: int | None = None) -> ApprovalRequest:
    request = approval_current(journey)
    if request is None or request.status != ApprovalRequest.Status.PENDING:
        raise TransitionError(journey, "decided", "It has no pending approval request.")
    return approval_request_as_read(request, read_id=read_id)


def _version_in_review(journey: Journey) -> JourneyVersion:
    version = journey.versions.filter(status=VStatus.IN_REVIEW).first()
    if version is None:
        raise TransitionError(journey, "decided", "No version is in review.")
    return version


def _back_to_draft(journey: Journey, version: JourneyVersion, *, by: User, action: str, summary: dict) -> None:
    version.status = VStatus.DRAFT
    version.save(update_fields=["status"])
    if journey.status == Status.IN_REVIEW:
        status_transition(journey, Status.DRAFT, by=by, action=action, summary=summary, also_saved=SAVED_WITH_STATUS)
    else:
        audit(actor=by, action=f"journey_version_{action}", obj=journey, summary=summary)


def journey_cancel_request(*, journey_id: int, by: User) -> Journey:
    """The requester takes the version out of review, back to draft (a live version keeps running)."""
    with transaction.atomic():
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.submit_journey")
        version = _version_in_review(journey)
        approval_request_cancel(request_id=_pending_request(journey).pk, by=by)
        _back_to_draft(journey, version, by=by, action="request_cancelled", summary={"version": version.number})
    return journey


def journey_request_changes(*, journey_id: int, by: User, comment: str, request_id: int | None = None) -> Journey:
    """An approver sends the version back to draft with a comment the requester sees.

    With ``request_id`` (the request the approver read), raises ApprovalError when another request
    waits now.
    """
    with transaction.atomic():
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.approve_journey")
        version = _version_in_review(journey)
        request = _pending_request(journey, read_id=request_id)
        approval_request_decide(request_id=request.pk, by=by, approve=False, comment=comment)
        summary = {"version": version.number, "comment": comment}
        _back_to_draft(journey, version, by=by, action="changes_requested", summary=summary)
    return journey


def journey_approve(
    *,
    journey_id: int,
    by: User,
    comment: str = "",
    now: dt.datetime | None = None,
    request_id: int | None = None,
    read_mark: str | None = None,
    send_confirmed: bool = True,
) -> JourneyVersion:
    """Approve and publish the version in review: it becomes the live version (the previous live
    one is retired; profiles inside it finish on it), its push contents are frozen as approved,
    and a segment entry is read at once. ``read_mark`` (the review page's: ``journey_read_mark`` as
    the page was drawn) is what the approver read: the approval freezes that, or nothing. A segment
    entry read at once (the journey not paused) approves nothing unless ``send_confirmed``: the
    review's first press, which asks its approver first, passes False.

    Raises ValidationError when what would run changed since it was submitted (e.g. its push
    content was edited) or since the page of ``read_mark`` showed it (edited and put back since),
    or no longer holds; PermissionDenied when ``by`` may not approve it;
    TransitionError when the journey is stopped, closed or archived, or nothing is in review;
    ApprovalError when ``request_id`` (the request the approver read) is given and another
    request waits now; SendNotConfirmed when its segment would enter at once and ``send_confirmed``
    is False (checked last: every other refusal comes first). A paused journey stays paused: the
    version runs once it is resumed.
    """
    from delivery.models import PushContent, spec_fingerprint

    now = now or timezone.now()
    with transaction.atomic():
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.approve_journey")
        if journey.status not in (Status.IN_REVIEW, *Journey.ON_AIR):  # a stopped journey stays stopped
            raise TransitionError(journey, "approved")
        version = _version_in_review(journey)
        # Refused the request before anything else is said of it, as a campaign's approval is.
        request = approval_request_lock_for_decision(request_id=_pending_request(journey, read_id=request_id).pk, by=by)
        # One read of the contents, held until commit: what is checked against the submission is
        # what is frozen, and a save of a content waits until it is frozen.
        steps = contents_of(version.graph)
        specs = {
            c.pk: c.spec()
            for c in PushContent.objects.select_for_update().filter(pk__in=set(steps.values())).order_by("pk")
        }
        fingerprints = {
            step: spec_fingerprint(specs[cid]) if cid in specs else "missing" for step, cid in steps.items()
        }
        segments = segment_fingerprints(version)
        approved = version.fingerprint(content_fingerprints=fingerprints, segment_fingerprints=segments)
        if request.fingerprint != approved and request.fingerprint != version.fingerprint(
            content_fingerprints=fingerprints
        ):  # the second: submitted before approvals covered the segments; approved now, it covers them as they are
            raise ValidationError("What would run changed since it was submitted: ask for changes and resubmit.")
        if read_mark is not None and read_mark != approved:
            # Submitted as it is now, but the page the approver read was drawn while it was otherwise.
            raise ValidationError(
                f"'{journey}' changed since this page showed it: nothing was approved. Read it again as it is now."
            )
        _validate_version(version, by=None)
        if (
            not send_confirmed
            and version.entry_kind == JourneyVersion.EntryKind.SEGMENT
            and journey.status != Status.PAUSED
        ):
            raise SendNotConfirmed(f"Approving '{journey}' enters its segment at once: confirm it first.")
        approval_request_record(request=request, by=by, approve=True, comment=comment)
        version.frozen_specs = {
            step: {"content_id": cid, "fingerprint": fingerprints[step], "spec": specs[cid]}
            for step, cid in steps.items()
        }
        version.approved_segments = segments
        version.approved_fingerprint = approved
        version.approved_name = journey.name  # its pushes' context.journey.name, as the approver read it
        previous = journey.live_version
        if previous is not None:
            previous.status = VStatus.RETIRED
            previous.retired_at = now
            previous.save(update_fields=["status", "retired_at"])
        version.status = VStatus.LIVE
        version.live_at = now
        version.save(
            update_fields=[
                "frozen_specs",
                "approved_segments",
                "approved_fingerprint",
                "approved_name",
                "status",
                "live_at",
            ]
        )
        journey.live_version = version
        journey.next_entry_at = now if version.entry_kind == JourneyVersion.EntryKind.SEGMENT else None
        summary = {"version": version.number, "comment": comment}
        if previous is not None:
            summary["replaces"] = previous.number
        if journey.status == Status.PAUSED:  # whoever paused it resumes it; its first read waits until then
            journey.updated_at = now
            journey.save(update_fields=[*SAVED_WITH_STATUS, "updated_at"])
            audit(actor=by, action="journey_approved", obj=journey, summary={**summary, "paused": True})
            return version
        status_transition(journey, Status.LIVE, by=by, action="approved", summary=summary, also_saved=SAVED_WITH_STATUS)
        if journey.next_entry_at is not None:
            transaction.on_commit(lambda: _queue("journeys.tasks.journey_enter_task", journey.pk))
    return version


def journey_stop(*, journey_id: int, by: User) -> Journey:
    """Stop a live or paused journey: no more entries, every profile inside exits, queued pushes are
    stopped, and a version in review goes back to draft, its request closed (no approval makes it
    live again).

    Whoever may stop the journey (its role, and access to it: its app, or a grant on the journey
    itself) stops its own sends with it, without being asked for access to their app (a stop only
    ever sends less). Raises Http404 outside their access, PermissionDenied without the role,
    TransitionError unless it is live or paused."""
    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_stop
    from journeys.selectors import journey_for

    with transaction.atomic():
        if not can(by, "journeys.stop_journey", journey_for(by, journey_id)):
            raise PermissionDenied("Your role may not do this to a journey.")
        # Its open enrollments first, then the journey: the order an engine batch takes them in (the
        # rows it claimed, then the journey, shared, to append to a step's stream). The other way
        # round, a stop pressed while a batch pushed waited for the batch's rows while the batch
        # waited for the journey, and one of them was aborted.
        _lock_everyone_inside(journey_id)
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.stop_journey")
        if journey.status not in Journey.ON_AIR:
            raise TransitionError(journey, "stopped")
        if journey.status == Status.PAUSED:
            JourneyPause.objects.filter(journey=journey, ended_at__isnull=True).update(ended_at=timezone.now())
        journey.next_entry_at = None
        journey.paused_at = None
        status_transition(
            journey, Status.STOPPED, by=by, action="stopped", also_saved=(*SAVED_WITH_STATUS, "paused_at")
        )
        in_review = journey.versions.filter(status=VStatus.IN_REVIEW).first()
        if in_review is not None:  # an approval of it would make the journey live again
            request = approval_current(journey)
            if request is not None:
                approval_request_close(request_id=request.pk, by=by, reason="The journey was stopped.")
            in_review.status = VStatus.DRAFT
            in_review.save(update_fields=["status"])
        exited = _exit_everyone_inside(journey, now=timezone.now())
        version_ids = list(journey.versions.values_list("pk", flat=True))
        running = (
            Dispatch.objects.running()
            .filter(kind=Dispatch.Kind.JOURNEY, source_id__in=version_ids)
            .values_list("pk", flat=True)
        )
        for dispatch_id in list(running):
            dispatch_stop(dispatch_id=dispatch_id, by=by, source_stopped=True)
        audit(actor=by, action="journey_enrollments_exited", obj=journey, summary={"count": exited})
    return journey


# The entry step's counters of what a pause held back: the entry events that came while it was
# paused (one per profile and call: an event entry), and the segment reads it skipped.
SKIPPED_PAUSED = "skipped_paused"
READS_SKIPPED_PAUSED = "reads_skipped_paused"
# And of a replay's entry events that a journey on the air now did not take then (one per profile
# and replay): it was not live, or its version entered on another event.
SKIPPED_NOT_LIVE = "skipped_not_live"


def journey_pause(*, journey_id: int, by: User, now: dt.datetime | None = None) -> Journey:
    """Hold a live journey where everyone is: the engine runs none of its profiles (a wait that
    ends meanwhile ends at the resume), its push steps start no batch, no one enters (entry events
    are counted on the entry step, ``skipped_paused``), and its segment is not read. A batch a push
    step made before the pause goes out as approved (its rows were made with the profiles that
    passed the step); an exit event still ends a profile's passage. ``journey_resume`` undoes it.
    The pause is kept (``JourneyPause``), so that events stored during it and replayed after the
    resume enter no one either.

    Locks the open enrollments (waiting for an engine batch holding some, as a stop does), then the
    journey. Raises TransitionError unless it is live, PermissionDenied when ``by``'s role may not
    pause it (``journeys.pause_journey``), Http404 outside their access.
    """
    from journeys.selectors import journey_for

    now = now or timezone.now()
    with transaction.atomic():
        if not can(by, "journeys.pause_journey", journey_for(by, journey_id)):
            raise PermissionDenied("Your role may not do this to a journey.")
        _lock_everyone_inside(journey_id)  # the stop's order: the enrollments, then the journey
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.pause_journey")
        if journey.status != Status.LIVE:
            raise TransitionError(journey, "paused", "Only a live journey can be paused.")
        held = _hold_everyone_inside(journey.pk)
        journey.paused_at = now
        JourneyPause.objects.create(journey=journey, paused_at=now)
        status_transition(
            journey, Status.PAUSED, by=by, action="paused", summary={"held": held}, also_saved=("paused_at",)
        )
    return journey


def journey_resume(*, journey_id: int, by: User, now: dt.datetime | None = None) -> Journey:
    """Put a paused journey back on the air, on the same approved version (no new approval): each
    profile held goes on from where it was, due when it was due (a wait that ended during the pause
    is due now; the engine takes them in due order, a batch at a time); entries are taken again.
    A recurring segment read the pause skipped is not made up for: its next read is the first
    occurrence after now (the skipped ones counted, ``reads_skipped_paused``); a read not made yet
    (a one-off entry's, or a version's first) is made now.

    Raises TransitionError unless it is paused, PermissionDenied when ``by``'s role may not resume
    it (``journeys.pause_journey``), Http404 outside their access.
    """
    from journeys.selectors import journey_for

    now = now or timezone.now()
    with transaction.atomic():
        if not can(by, "journeys.pause_journey", journey_for(by, journey_id)):
            raise PermissionDenied("Your role may not do this to a journey.")
        # The pause's and the stop's order, the enrollments then the journey: a stop pressed at the
        # same moment waits for the resume (or the resume for it), neither for the other's second lock.
        _lock_everyone_inside(journey_id)
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.pause_journey")
        if journey.status != Status.PAUSED:
            raise TransitionError(journey, "resumed", "Only a paused journey can be resumed.")
        released = _release_everyone_held(journey.pk)
        version = journey.live_version
        skipped = _reads_skipped(journey, version, now=now)
        if skipped:
            step_stats_add(Counter({(version.pk, version.entry_step(), READS_SKIPPED_PAUSED): skipped}))
            journey.next_entry_at += dt.timedelta(hours=version.entry_every_hours * skipped)
        summary = {"released": released, "paused_at": journey.paused_at.isoformat() if journey.paused_at else None}
        if skipped:
            summary["reads_skipped"] = skipped
        journey.paused_at = None
        JourneyPause.objects.filter(journey=journey, ended_at__isnull=True).update(ended_at=now)
        status_transition(
            journey, Status.LIVE, by=by, action="resumed", summary=summary, also_saved=(*SAVED_WITH_STATUS, "paused_at")
        )
        if released:
            transaction.on_commit(lambda: _queue("journeys.tasks.journeys_run_due_task"))
        if journey.next_entry_at is not None and journey.next_entry_at <= now:
            transaction.on_commit(lambda: _queue("journeys.tasks.journey_enter_task", journey.pk))
    return journey


def _reads_skipped(journey: Journey, version: JourneyVersion | None, *, now: dt.datetime) -> int:
    """How many reads of a recurring segment entry fell due during the pause and are not made up
    for. A read due before the pause began, or the version's first (approved while paused: its
    first read is due at its going live), is made at the resume instead."""
    when = journey.next_entry_at
    if version is None or when is None or when > now or not version.entry_every_hours:
        return 0
    if when == version.live_at or (journey.paused_at is not None and when < journey.paused_at):
        return 0
    every = dt.timedelta(hours=version.entry_every_hours)
    return (now - when) // every + 1


def _hold_everyone_inside(journey_id: int) -> int:
    """Take the journey's open enrollments off the engine's due list, keeping when each was due
    (``held_due_at``). Returns how many."""
    return Enrollment.objects.filter(
        journey_id=journey_id, status__in=Enrollment.OPEN_STATUSES, due_at__isnull=False
    ).update(held_due_at=F("due_at"), due_at=None)


def _release_everyone_held(journey_id: int) -> int:
    """Give the journey's held enrollments back their due times. Returns how many."""
    return Enrollment.objects.filter(
        journey_id=journey_id, status__in=Enrollment.OPEN_STATUSES, held_due_at__isnull=False
    ).update(due_at=F("held_due_at"), held_due_at=None)


def _lock_everyone_inside(journey_id: int) -> None:
    """Lock the journey's open enrollments, in id order (waits for an engine batch holding some)."""
    if connection.vendor != "postgresql":
        return  # SQLite writes one transaction at a time
    table = Enrollment._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM {table} WHERE journey_id = %s AND status IN (%s, %s) "  # noqa: S608 (the table's name)
            "ORDER BY id FOR UPDATE) inside",
            [journey_id, *Enrollment.OPEN_STATUSES],
        )


def _exit_everyone_inside(journey: Journey, *, now: dt.datetime) -> int:
    """End every open enrollment of the journey ("journey stopped"), each counted at the step it was
    at (``stopped``: the steps' counters account for every profile that entered them). Waits for
    any engine batch holding these rows, so nothing moves on after the stop. Returns how many.

    An enrollment the engine has not run yet (``active``: entered, at the first step, due) is not
    counted as entered there (the engine counts a step's arrivals as it runs them): it is counted
    entered where it stopped, so that no step ends more profiles than came in. The not yet run are
    ended first, then the waiting: a batch that runs one meanwhile leaves it waiting, for the second."""
    from collections import Counter

    table = Enrollment._meta.db_table
    counts: Counter = Counter()
    with connection.cursor() as cursor:
        for status in (EStatus.ACTIVE, EStatus.WAITING):
            cursor.execute(
                f"UPDATE {table} SET status = %s, exit_reason = %s, finished_at = %s, updated_at = %s, due_at = NULL, "  # noqa: S608 (the table's name)
                "held_due_at = NULL "
                "WHERE journey_id = %s AND status = %s RETURNING version_id, step",
                [
                    EStatus.EXITED,
                    "journey stopped",
                    connection.ops.adapt_datetimefield_value(now),
                    connection.ops.adapt_datetimefield_value(now),
                    journey.pk,
                    status,
                ],
            )
            for version_id, step in cursor.fetchall():
                counts[(version_id, step, "stopped")] += 1
                if status == EStatus.ACTIVE:
                    counts[(version_id, step, "entered")] += 1
    step_stats_add(counts)
    return sum(n for (_, _, metric), n in counts.items() if metric == "stopped")


def journey_archive(*, journey_id: int, by: User) -> Journey:
    """Archive a stopped or closed journey (hidden from the default list)."""
    with transaction.atomic():
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.archive_journey")
        if journey.status not in (Status.STOPPED, Status.CLOSED):
            raise TransitionError(journey, "archived", "Stop it first." if journey.status in Journey.ON_AIR else "")
        status_transition(journey, Status.ARCHIVED, by=by, action="archived", also_saved=SAVED_WITH_STATUS)
    return journey


def journey_gate(
    *, app, source_id: int | None, spec: dict, by: User | None, context: dict, sends: dict | None = None
) -> None:
    """The journeys' gate in the delivery pipeline: a dispatch only for a push step of an approved
    version (live, or retired with profiles finishing on it) of a live journey, whose graph is the
    approved one, sending exactly the content that was approved for that step (the frozen specs are
    hashed again: a frozen spec that is not the approved one closes the gate). The step is the one
    ``context`` names (``Journey.send_context``): another step's content, approved as it may be, is
    not this step's. ``sends`` (``dispatch_create``'s) must be how the engine sends a batch: to its
    profiles, as marketing, at the app's rate (a journey has no purpose or throttle of its own).
    Each profile of the batch must have an open enrollment in the version at that step, where the
    engine writes those it pushes (``_batch_gate``): the step's content goes to no one else.

    Raises GateClosed otherwise, whoever calls.
    """
    from delivery.models import spec_fingerprint
    from delivery.services.dispatches import GateClosed

    version = JourneyVersion.objects.select_related("journey").filter(pk=source_id).first()
    if version is None or version.journey.app_id != app.pk:
        raise GateClosed("No such journey version for this app.")
    journey = version.journey
    if journey.status != Status.LIVE:
        raise GateClosed(f"'{journey}' is {journey.get_status_display().lower()}, not live.")
    if version.status not in (VStatus.LIVE, VStatus.RETIRED) or not version.approved_fingerprint:
        raise GateClosed(f"Version {version.number} of '{journey}' is not approved.")
    frozen = version.frozen_specs or {}
    approved = {step: spec_fingerprint(item["spec"]) for step, item in frozen.items()}
    segments = version.approved_segments or None
    if (
        version.fingerprint(content_fingerprints=approved, segment_fingerprints=segments)
        != version.approved_fingerprint
    ):
        raise GateClosed(f"Version {version.number} of '{journey}' changed since it was approved.")
    named = (context or {}).get("journey") or {}
    step = named.get("step")
    if (named.get("id"), named.get("version")) != (journey.pk, version.number) or step not in frozen:
        raise GateClosed(f"The send names no push step of version {version.number} of '{journey}'.")
    if named != journey.send_context(version=version, step=step)["journey"]:
        raise GateClosed(f"The send does not name '{journey}' as version {version.number} was approved.")
    if frozen[step]["spec"] != spec:
        raise GateClosed(f"The content to send is not the content approved for step '{step}' of this journey.")
    sends = sends or {}
    if (
        sends.get("segment_id") is not None
        or sends.get("purpose", "marketing") != "marketing"
        or sends.get("rate_limit_per_second") is not None
    ):
        raise GateClosed(
            f"Step '{step}' of '{journey}' sends to the profiles of its batch, as marketing, at the app's rate: "
            "not otherwise than as the journey sends it."
        )
    if sends.get("profile_ids"):
        _batch_gate(version, step, sends["profile_ids"])


def _batch_gate(version: JourneyVersion, step: str, profile_ids: list[int]) -> None:
    """GateClosed unless every profile of a push step's batch has an open enrollment in the version
    at that step, in one query: the profiles the engine brings to the step in its run. The engine
    writes them there (active) in its batch's transaction before it makes their push
    (``engine._move_to_push``); one still before the step may wait there, or take another branch,
    and one past it had its push."""
    from delivery.services.dispatches import GateClosed
    from journeys.services.engine import _among

    wanted = set(profile_ids)
    enrolled = (
        Enrollment.objects.filter(
            _among(list(wanted), "profile_id"),
            journey_id=version.journey_id,
            version_id=version.pk,
            status=EStatus.ACTIVE,
            step=step,
        )
        .values("profile_id")
        .distinct()
        .count()
    )
    if enrolled != len(wanted):
        raise GateClosed(
            f"{len(wanted) - enrolled} of the {len(wanted)} profiles of the batch are not enrolled in version "
            f"{version.number} of '{version.journey}' at step '{step}' (the journey sends its push to those it "
            "brings there): its content goes to no one else."
        )


def _queue(func: str, *args) -> None:
    from django_q.tasks import async_task

    async_task(func, *args, q_options={"timeout": 240})


# Used by the admin and the API to tell what a branch is.
def branch_labels(step: dict) -> list[str]:
    return [label for label, _ in exits_of(step)]


def segments_used(version: JourneyVersion) -> set[int]:
    ids = segments_of(version.graph)
    if version.entry_segment_id:
        ids.add(version.entry_segment_id)
    return ids
