"""The send path of campaigns: the gates, firing due occurrences, the scheduler's beat and test sends."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.http import Http404
from django.utils import timezone

from accounts.models import User
from accounts.selectors import can, visible_to
from accounts.services import (
    approval_request_close,
    audit,
    status_transition,
)
from campaigns.models import Campaign, Occurrence, WinnerTest
from campaigns.schedule import (
    EARLIEST_ZONE,
    LATE_AFTER,
    LOCAL_SPAN,
    at_local_time,
    lateness_allowed,
    local_wall_time,
    localize,
    next_occurrence,
    occurrence_when,
    skipped_time_text,
)
from campaigns.services.lifecycle import SAVED_WITH_STATUS, Status, revision_waiting
from campaigns.services.winner import winner_test_open, winners_pick_due
from config.zones import zone

if TYPE_CHECKING:
    from delivery.models import Dispatch


def campaign_gate(
    *,
    app,
    source_id: int | None,
    spec: dict,
    by: User | None,
    api_triggered: bool = False,
    variants: list[dict] | None = None,
    holdout_share: int = 0,
    sample: dict | None = None,
    context: dict | None = None,
    sends: dict | None = None,
) -> None:
    """The campaigns' gate in the delivery pipeline: a dispatch only for an approved, active campaign,
    sending exactly the content of its approved version (a pending revision never reaches a send):
    its variants, their shares and its holdout too. In winner mode, first its sample, then only
    "the recorded winner to the rest", against the campaign's ``WinnerTest`` row, once.
    The app and the kind are the approved version's (a revision moving them waits for its approval,
    and the approved version keeps sending from its own app). ``sends`` (``dispatch_create``'s),
    when given, must be the approved version's too: its segment (no list of profiles), its purpose
    (transactional passes the frequency caps and quiet hours), its throttle, its schedule's time
    zone (which its content's ``now`` is read in) and its local time: none unless the approved
    schedule sends at each profile's local time, else the wall-clock time of one of its occurrences,
    its zone for the profiles without one and its missed window for a zone reached late; an API-triggered
    campaign sends to the recipients each call names, never to a segment. A scheduled campaign's
    ``context`` is the one its approved version's sends give (``ApprovedVersion.send_context``, under
    the name it was approved with): content may show a context value (with a default), so another
    context would send words nobody approved. So is an API-triggered campaign's stream's; each call
    adds its own values on its rows.

    Raises GateClosed otherwise, whoever calls: a forged admin POST or a direct service call alike.
    """
    from delivery.services.dispatches import GateClosed

    campaign = Campaign.objects.select_related("content").filter(pk=source_id).first()
    if campaign is None:
        raise GateClosed("No such campaign for this app.")
    if not campaign.is_active:
        raise GateClosed(f"'{campaign}' is {campaign.get_status_display().lower()}, not approved and active.")
    approved = campaign.approved()
    if approved is None or approved.fingerprint != campaign.approved_fingerprint:
        raise GateClosed(f"'{campaign}' changed since it was approved.")
    if approved.app_id != app.pk:
        raise GateClosed("No such campaign for this app.")
    if approved.kind != (Campaign.Kind.API_TRIGGERED if api_triggered else Campaign.Kind.SCHEDULED):
        raise GateClosed(f"'{campaign}' is not {'an API-triggered' if api_triggered else 'a scheduled'} campaign.")
    expected_spec, expected_variants = _winner_gate(campaign, approved, sample or {})
    if spec != expected_spec:
        raise GateClosed("The content to send is not the approved content.")
    if (variants or []) != expected_variants or holdout_share != approved.holdout_share:
        raise GateClosed("The variants or shares to send are not the approved ones.")
    if sends is not None:
        _sends_gate(campaign, approved, sends, context=context, api_triggered=api_triggered)
    if approved.segment_id is not None and not api_triggered:
        _audience_gate(campaign, approved)


def _sends_gate(campaign: Campaign, approved, sends: dict, *, context: dict | None, api_triggered: bool) -> None:
    """GateClosed unless a dispatch sends as the approved version does (``campaign_gate``)."""
    from delivery.services.dispatches import GateClosed

    if api_triggered:
        audience_approved = sends.get("segment_id") is None
    else:
        audience_approved = sends.get("segment_id") == approved.segment_id and sends.get("profile_ids") is None
    if not audience_approved:
        raise GateClosed(f"The audience to send to is not the approved audience of '{campaign}'.")
    if sends.get("purpose") != approved.purpose:
        raise GateClosed(f"'{campaign}' was approved as {approved.purpose}, not {sends.get('purpose')}.")
    if sends.get("rate_limit_per_second") != approved.throttle_per_second:
        raise GateClosed(f"The throttle to send at is not the approved throttle of '{campaign}'.")
    # The zone its content's ``now`` is read in ("": UTC): another would show another hour, or day.
    if (sends.get("time_zone") or "UTC") != (approved.time_zone or "UTC"):
        raise GateClosed(f"The time zone to send in is not the one the approved schedule of '{campaign}' names.")
    _local_time_gate(campaign, approved, sends, api_triggered=api_triggered)
    # An API trigger's stream too: its context is what every call's rows read ``context.campaign`` from
    # (each call's own values go on its rows, and may not name it).
    if (context or {}) != approved.send_context():
        raise GateClosed(f"The context to send with is not the one the approved sends of '{campaign}' give.")


def _local_time_gate(campaign: Campaign, approved, sends: dict, *, api_triggered: bool) -> None:
    """GateClosed unless a dispatch holds its rows to each profile's local time as the approved
    schedule does (``campaign_fire_due``'s): not at all, or at the wall-clock time of one of its
    occurrences, the profiles without a zone at the schedule's zone's, a zone reached late sent
    within its missed window."""
    from delivery.services.dispatches import GateClosed

    wall = sends.get("local_time") or ""
    default_zone = sends.get("local_default_timezone") or ""
    late = sends.get("local_late_minutes")
    if api_triggered or not at_local_time(approved):
        if wall or default_zone or late is not None:
            raise GateClosed(f"'{campaign}' was approved to send at its time, not at each profile's local time.")
        return
    if (
        not _approved_wall_time(approved, wall)
        or (default_zone or "UTC") != (approved.time_zone or "UTC")
        or late != int(lateness_allowed(approved).total_seconds() // 60)
    ):
        raise GateClosed(f"The local time to send at is not the one the approved schedule of '{campaign}' names.")


def _approved_wall_time(approved, wall: str) -> bool:
    """Is ``wall`` (ISO, no zone) the wall-clock time of an occurrence of the approved local-time
    schedule (``local_wall_time``)?"""
    try:
        naive = dt.datetime.fromisoformat(wall)
    except ValueError:
        return False
    if naive.tzinfo is not None:
        return False
    # An occurrence is when the earliest zone reaches its wall time (``next_occurrence``).
    moment = localize(naive, zone(EARLIEST_ZONE))
    due = next_occurrence(approved, after=moment - dt.timedelta(seconds=1))
    return due is not None and local_wall_time(approved, due) == wall


def _audience_gate(campaign: Campaign, approved) -> None:
    """GateClosed unless the approved segment is defined as it was when the campaign was approved."""
    from audiences.models import Segment
    from delivery.services.dispatches import GateClosed

    segment = Segment.objects.filter(pk=approved.segment_id).first()
    wanted = approved.snapshot.get("audience_fingerprint")
    if segment is None or (wanted and segment.definition_fingerprint() != wanted):
        raise GateClosed(
            f"The audience of '{campaign}' is defined otherwise than when it was approved: "
            "approve the campaign's revision to send to it."
        )


def campaign_audience_check(dispatch: Dispatch) -> None:
    """A campaign's dispatch about to read its segment: GateClosed unless that segment is still the
    approved version's, defined as it was approved (the gate judged it when the dispatch was made).
    Call it in the transaction that writes the rows: the segments it reads stay held until then
    (``_audience_hold``)."""
    from delivery.services.dispatches import GateClosed

    campaign = Campaign.objects.filter(pk=dispatch.source_id).first()
    approved = campaign.approved() if campaign is not None else None
    if approved is None or approved.segment_id != dispatch.segment_id:
        raise GateClosed(f"The audience of '{campaign}' is no longer the approved one.")
    _audience_hold(approved)
    _audience_gate(campaign, approved)


def _audience_hold(approved) -> None:
    """Hold the approved version's segment and those its rules use, at any depth (as approved, and
    as referenced now), ``FOR SHARE`` until the transaction ends (``segments_hold``): a change of
    one waits for the rows read from its definition as checked (a sliced resolve's each begin apart).
    Sends of the same segment share the lock."""
    from audiences.models import segments_hold

    segments_hold({approved.segment_id, *(int(pk) for pk in approved.snapshot.get("audience_definition") or {})})


def campaign_dispatch_refused(dispatch: Dispatch, reason: str) -> None:
    """A campaign's dispatch refused when its audience was read (``campaign_audience_check``), in the
    transaction that ends it failed: the occurrence that made it, recorded as sent, says it was
    refused, and why, as an occurrence the gate refuses when it fires does. A dispatch no occurrence
    made (a winner test's remainder) has no occurrence to correct."""
    occurrence = (
        Occurrence.objects.select_for_update(of=("self",))
        .select_related("campaign")
        .filter(dispatch_id=dispatch.pk)
        .first()
    )
    if occurrence is None:
        return
    occurrence.outcome = Occurrence.Outcome.REFUSED
    occurrence.note = f"Refused when its audience was read: {reason}"[:300]
    occurrence.save(update_fields=["outcome", "note"])
    audit(
        actor=None,
        action=f"campaign_occurrence_{occurrence.outcome}",
        obj=occurrence.campaign,
        summary={"due_at": occurrence.due_at.isoformat(), "note": occurrence.note},
    )


def _winner_gate(campaign: Campaign, approved, sample: dict) -> tuple[dict, list[dict]]:
    """The spec and variants a send of this part of a winner-mode campaign may carry; GateClosed
    for a part it may not send (the whole audience of a winner-mode campaign, a second remainder)."""
    from campaigns.models import WinnerTest
    from campaigns.services.winner import rest_variants
    from delivery.services.dispatches import GateClosed

    winner = approved.winner
    if not sample:
        if winner:
            raise GateClosed(f"'{campaign}' is in winner mode: it sends to its sample, then the winner to the rest.")
        return approved.spec, approved.variants
    if not winner or sample.get("share") != winner["sample_share"]:
        raise GateClosed(f"The approved version of '{campaign}' sends no such sample.")
    if sample.get("part") == "sample":
        return approved.spec, approved.variants
    test = WinnerTest.objects.filter(pk=sample.get("test"), campaign_id=campaign.pk).first()
    if test is None or sample.get("part") != "rest":
        raise GateClosed(f"No winner was recorded for '{campaign}'.")
    if test.outcome not in (WinnerTest.Outcome.WINNER, WinnerTest.Outcome.FALLBACK) or test.remainder_dispatch_id:
        raise GateClosed(
            f"The rest of '{campaign}' is not to be sent: its test is {test.get_outcome_display().lower()}."
        )
    if test.fingerprint != approved.fingerprint:
        raise GateClosed(f"'{campaign}' was approved anew since its sample was sent: its winner is not this version's.")
    expected = rest_variants(approved, test.winner)
    return (expected[0]["spec"] if test.winner is not None else approved.spec), expected


def campaign_api_gate(**kwargs) -> None:
    campaign_gate(api_triggered=True, **kwargs)


def campaign_fire_due(*, campaign_id: int, now: dt.datetime | None = None) -> list[Occurrence]:
    """Fire the campaign's due occurrence(s), each exactly once, however many workers race for it.

    The campaign row is taken with SKIP LOCKED (another worker holding it is firing it), and each
    occurrence is a row unique per (campaign, due time), written in the same transaction as its
    Dispatch: a worker killed midway rolls both back and the next tick fires it. Occurrences missed
    during downtime for longer than the campaign's window are recorded as skipped; the latest one
    within the window is sent late (at the approval, when that came after its time, said so). What
    is sent is the approved version, whatever revision is pending; an occurrence the gate refuses is
    recorded with the reason, and the next one stays due.
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
        limit = lateness_allowed(approved)
        local = at_local_time(approved)
        for _ in range(10_000):  # bounded: a daily campaign down for years still ends
            due = campaign.next_occurrence_at
            if due is None or due > now:
                break
            later = next_occurrence(approved, after=due)
            if later is not None and later <= now:
                # A newer occurrence is due too: this one was missed; only the newest may be sent.
                fired.append(
                    _occurrence(
                        campaign,
                        due,
                        Occurrence.Outcome.SKIPPED_MISSED,
                        local=local,
                        note="a later one was due",
                        schedule=approved,
                    )
                )
                campaign.next_occurrence_at = later
                continue
            # At each profile's local time the occurrence lasts until the last time zone gets there;
            # each zone is judged by its own time when the rows are resolved (``local_time_apply``).
            span = LOCAL_SPAN if local else dt.timedelta(0)
            if now - due > limit + span:
                late = int((now - due - span).total_seconds() // 60)
                note = f"missed by {late:,} minutes, more than its window of {approved.missed_window_minutes:,} minutes"
                if local:
                    note += " in every time zone"
                fired.append(
                    _occurrence(
                        campaign, due, Occurrence.Outcome.SKIPPED_MISSED, local=local, note=note, schedule=approved
                    )
                )
                campaign.next_occurrence_at = later
                break
            outcome = _sent_outcome(approved, due=due, now=now)
            late_note = ""
            window = f"within its window of {limit.total_seconds() // 60:,.0f} minutes"
            if local and outcome != Occurrence.Outcome.SENT:
                late_note = (
                    f"begun after UTC+14 reached its time: time zones past it by more than "
                    f"{limit.total_seconds() // 60:,.0f} minutes are skipped (missed_local_time)"
                )
            elif outcome == Occurrence.Outcome.SENT_AT_APPROVAL:
                late = int((_approved_at(approved) - due).total_seconds() // 60)
                late_note = f"approved {late:,} minutes after its time, {window}"
            elif outcome == Occurrence.Outcome.SENT_LATE:
                late = int((now - due).total_seconds() // 60)
                late_note = f"sent {late:,} minutes late, {window}"
            # The dispatch's label (Sends, the dispatches, the home page) says when it sends as the
            # schedule was entered: in the zone named, or the wall time of each profile's zone.
            when = occurrence_when(due, time_zone=approved.time_zone, local=local)
            try:
                with transaction.atomic():
                    # Winner mode: this send is the sample; its test row is written with its dispatch.
                    test = winner_test_open(campaign=campaign, approved=approved, now=now) if approved.winner else None
                    dispatch = dispatch_create(
                        app_id=approved.app_id,
                        kind=Dispatch.Kind.CAMPAIGN,
                        spec=approved.spec,
                        content_id=approved.content_id,
                        segment_id=approved.segment_id,
                        source_id=campaign.pk,
                        label=f"{campaign.name} v{approved.number} @ {when}",
                        rate_limit_per_second=approved.throttle_per_second,
                        purpose=approved.purpose,
                        local_time=local_wall_time(approved, due) if local else "",
                        local_default_timezone=approved.time_zone if local else "",
                        local_late_minutes=int(limit.total_seconds() // 60) if local else None,
                        time_zone=approved.time_zone,
                        context=approved.send_context(),
                        variants=approved.variants,
                        holdout_share=approved.holdout_share,
                        sample={"part": "sample", "share": approved.winner["sample_share"], "test": test.pk}
                        if test
                        else None,
                    )
                    if test is not None:
                        test.sample_dispatch = dispatch
                        test.save(update_fields=["sample_dispatch"])
            except (GateClosed, ValidationError) as exc:
                # Said on the campaign's page; the campaign stays on the air for its next occurrence.
                # A ValidationError: the approved content no longer passes the send's checks (a URL
                # scheme the settings no longer allow, say); the campaigns due after it still fire.
                note = str(exc) if isinstance(exc, GateClosed) else content_refusal(exc)
                fired.append(
                    _occurrence(campaign, due, Occurrence.Outcome.REFUSED, local=local, note=note, schedule=approved)
                )
                campaign.next_occurrence_at = later
                break
            fired.append(
                _occurrence(campaign, due, outcome, local=local, dispatch=dispatch, note=late_note, schedule=approved)
            )
            campaign.next_occurrence_at = later
            break
        if campaign.status == Status.SCHEDULED and any(o.dispatch_id for o in fired):
            campaign.status = Status.LIVE
            campaign.status_changed_at = now
        campaign.save(update_fields=["next_occurrence_at", "status", "status_changed_at"])
    return fired


def _approved_at(approved) -> dt.datetime | None:
    """When the version that sends was approved (None: approved before the time was kept)."""
    return dt.datetime.fromisoformat(approved.approved_at) if approved.approved_at else None


def _sent_outcome(approved, *, due: dt.datetime, now: dt.datetime) -> str:
    """How an occurrence due at ``due`` and sent at ``now`` went: on time (on the beat's minute);
    at its approval, when the version that sends was approved after its time and it went then (no
    downtime: the approval came late); otherwise late, missed while the scheduler was down."""
    if now - due <= LATE_AFTER:
        return Occurrence.Outcome.SENT
    approved_at = _approved_at(approved)
    if approved_at is not None and due < approved_at and now - approved_at <= LATE_AFTER:
        return Occurrence.Outcome.SENT_AT_APPROVAL
    return Occurrence.Outcome.SENT_LATE


def content_refusal(exc: ValidationError, *, where: str = "") -> str:
    """What the send's checks found wrong with the approved content, each field named (``where``:
    the variant it is, as ``variant B: ``)."""
    found = (
        "; ".join(f"{field}: {' '.join(messages)}" for field, messages in exc.message_dict.items())
        if hasattr(exc, "error_dict")
        else " ".join(exc.messages)
    )
    return f"The approved content does not pass the send's checks: {where}{found}"


def _occurrence(
    campaign: Campaign,
    due: dt.datetime,
    outcome: str,
    *,
    local: bool,
    dispatch=None,
    note: str = "",
    schedule=None,
) -> Occurrence:
    """Record the occurrence with whether the approved version sent it at each profile's local time
    (how its row reads, whatever a revision says later). With the ``schedule`` that fired it (the
    approved version), the note first says what its time of day became on a night the clocks skipped it."""
    if schedule is not None:
        note = "; ".join(part for part in (skipped_time_text(schedule, due), note) if part)[:300]
    occurrence = Occurrence.objects.create(
        campaign=campaign, due_at=due, outcome=outcome, dispatch=dispatch, note=note, at_local_time=local
    )
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
    picked = winners_pick_due(now=now)
    completed = 0
    running = Dispatch.objects.filter(kind=Dispatch.Kind.CAMPAIGN, status__in=Dispatch.RUNNING_STATUSES).values(
        "source_id"
    )
    # Scheduled ones too: a campaign whose only occurrences were refused or skipped never went live.
    finished = (
        Campaign.objects.filter(
            kind=Campaign.Kind.SCHEDULED, status__in=(Status.SCHEDULED, Status.LIVE), next_occurrence_at__isnull=True
        )
        .exclude(pk__in=running)
        .exclude(winner_test__outcome=WinnerTest.Outcome.WAITING)  # the rest is still to be sent
        .values_list("pk", flat=True)
    )
    for pk in list(finished):
        with transaction.atomic():
            campaign = (
                Campaign.objects.select_for_update(skip_locked=True)
                .filter(pk=pk, status__in=(Status.SCHEDULED, Status.LIVE))
                .first()
            )
            if campaign is not None and campaign.next_occurrence_at is None:
                _campaign_finish(campaign)
                completed += 1
    completed += campaigns_failed_judge_again()
    return {"due": len(due_ids), "occurrences": fired, "winners": picked, "completed": completed}


def _campaign_finish(campaign: Campaign) -> None:
    """End a scheduled or live campaign with nothing left to send (locked by the caller): failed
    when nothing of it went out (no send made, every occurrence refused or skipped, or every send
    failed: its app's credentials refused, say), the audit line saying why; completed otherwise.
    A revision waiting for approval is closed: there is nothing left for it to send."""
    from delivery.models import Dispatch

    outcomes = set(
        Dispatch.objects.filter(kind=Dispatch.Kind.CAMPAIGN, source_id=campaign.pk).values_list("status", flat=True)
    )
    failed = outcomes <= {Dispatch.Status.FAILED}
    summary = {"reason": _nothing_sent_reason(campaign, sent_any=bool(outcomes))} if failed else None
    request = revision_waiting(campaign)
    status_transition(
        campaign,
        Status.FAILED if failed else Status.COMPLETED,
        by=None,
        action="failed" if failed else "completed",
        also_saved=SAVED_WITH_STATUS,
        summary=summary,
    )
    if request is not None:
        reason = "The campaign failed: nothing of it was sent." if failed else "The campaign completed."
        approval_request_close(request_id=request.pk, by=None, reason=reason)


def campaign_dispatch_accepted_late(dispatch) -> None:
    """Complete the campaign the tick ended ``failed`` (every send of it failed) now that one of its
    sends, ``dispatch``, is ``done``: answers that came after its rows' lease ran out were accepted
    (``dispatch_accepted_late``). Should this not run (the worker killed between the two commits),
    the tick does it (``campaigns_failed_judge_again``)."""
    campaign_failed_judge_again(campaign_id=dispatch.source_id)


def campaign_failed_judge_again(*, campaign_id: int) -> bool:
    """Complete a campaign ended ``failed`` once one of its sends no longer is: answers that came
    after its rows' lease ran out were accepted (``dispatch_accepted_late``). Its status, lists and
    API then say what its sends did, the audit line naming those sends. A campaign in any other
    state (stopped, archived, still on the air) is left as it is. Locks the campaign; True when it
    changed."""
    from delivery.models import Dispatch

    with transaction.atomic():
        campaign = Campaign.objects.select_for_update().filter(pk=campaign_id, status=Status.FAILED).first()
        if campaign is None:
            return False
        sends = Dispatch.objects.filter(kind=Dispatch.Kind.CAMPAIGN, source_id=campaign.pk)
        revived = sorted(sends.exclude(status=Dispatch.Status.FAILED).values_list("pk", flat=True))
        if not revived:
            return False
        status_transition(
            campaign,
            Status.COMPLETED,
            by=None,
            action="completed",
            summary={
                "answered_late": revived,
                "reason": "A send of it that had failed was accepted after all: its answers came late.",
            },
        )
    return True


def campaigns_failed_judge_again() -> int:
    """The tick's part: ``campaign_failed_judge_again`` for each failed campaign with a send that
    is not failed (whose late answers' follow-up was lost); how many completed. One query finds them
    (an index probe per failed campaign)."""
    from delivery.models import Dispatch

    sends = Dispatch.objects.filter(kind=Dispatch.Kind.CAMPAIGN, source_id=OuterRef("pk")).exclude(
        status=Dispatch.Status.FAILED
    )
    found = Campaign.objects.filter(status=Status.FAILED).filter(Exists(sends)).values_list("pk", flat=True)
    return sum(campaign_failed_judge_again(campaign_id=pk) for pk in list(found[:500]))


def _nothing_sent_reason(campaign: Campaign, *, sent_any: bool) -> str:
    """Why a campaign sent nothing, for its audit line: every send of it failed, or none was made;
    and when its last occurrence was refused or skipped, that, with its note (as its page lists it)."""
    said = "Every send of it failed" if sent_any else "Nothing of it was sent"
    last = campaign.occurrences.order_by("-due_at").first()
    named = {Occurrence.Outcome.REFUSED: "refused by the gate", Occurrence.Outcome.SKIPPED_MISSED: "skipped"}
    if last is None or last.outcome not in named:
        return f"{said}."
    said = f"{said}: its last occurrence was {named[last.outcome]}"
    return f"{said}: {last.note}" if last.note else f"{said}."


def campaign_test_send(*, campaign_id: int, by: User) -> list[Dispatch]:
    """Send the campaign's content as it is now to its app's test devices, in any state, no approval
    needed, rendered with the context its sends give it (``Campaign.send_context``): one test send
    per variant's content, in the variants' order (the testers see each the audience may get), or
    one of its content; its ``now`` in the campaign's time zone, as its sends read it. Returns the
    dispatches; none is made when one is refused.
    """
    from delivery.services.contents import pushcontent_test_send

    campaign = Campaign.objects.filter(pk=campaign_id).first()
    if campaign is None or not visible_to(by, Campaign.objects.filter(pk=campaign_id)).exists():
        raise Http404(f"No campaign {campaign_id}.")
    if not can(by, "delivery.test_send_pushcontent", campaign):
        raise PermissionDenied("Your role may not send tests.")
    variants = campaign.variant_list()
    sends = [(v.content, f"Test of {campaign.name}, variant {v.label} ({v.content.name})") for v in variants]
    if not variants:
        sends = [(campaign.content, f"Test of {campaign.name}")]
    with transaction.atomic():
        return [
            pushcontent_test_send(
                content_id=content.pk,
                by=by,
                context=campaign.send_context(),
                label=label,
                time_zone=campaign.time_zone,
            )
            for content, label in sends
        ]
