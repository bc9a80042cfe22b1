"""Winner mode: send the variants to a sample, pick the winner after a wait, send it to the rest.

The settings (``campaign_winner_set``) are part of what an approval covers. The first occurrence
of an approved winner-mode campaign sends only to its sample (``campaign_fire_due`` opens the
``WinnerTest`` row with the sample's dispatch). After the wait, ``winner_pick`` (from the beat)
records the pick on that row, under its lock, and creates the remainder's dispatch in the same
transaction: the gate lets "the recorded winner to the rest" through only against that row, once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from accounts.models import User
from accounts.services import audit
from campaigns.models import Campaign, WinnerTest, variant_label
from campaigns.services.lifecycle import lock_editable
from campaigns.winner import winner_decide

MAX_WAIT_MINUTES = 7 * 24 * 60
CONFIDENCES = (80, 90, 95, 99)


@dataclass(frozen=True)
class WinnerInput:
    """Winner mode's settings as asked for (see the ``winner_*`` fields of Campaign)."""

    sample_share: int = 20
    wait_minutes: int = 120
    metric: str = Campaign.WinnerMetric.OPEN_RATE
    confidence: int = 95
    fallback: str = Campaign.WinnerFallback.ALL_VARIANTS
    fallback_variant: int | None = None


def winner_check(
    *,
    settings: WinnerInput,
    kind: str,
    schedule_kind: str,
    at_local_time: bool,
    variant_count: int,
    holdout_share: int,
    has_goal: bool,
) -> None:
    """Check winner mode's settings against the campaign; raises ValidationError naming the field and the rule."""
    if kind == Campaign.Kind.API_TRIGGERED:
        raise ValidationError(
            {
                "winner_mode": "API-triggered campaigns cannot use winner mode: each call names its recipients, so "
                "there is no rest to send the winner to. They may use variants and a holdout."
            }
        )
    if variant_count < 2:
        raise ValidationError({"winner_mode": "Winner mode needs variants: add at least two."})
    if schedule_kind == Campaign.ScheduleKind.RECURRING:
        raise ValidationError(
            {"winner_mode": "Winner mode sends once: choose 'Send when approved' or 'At a date and time'."}
        )
    if at_local_time:
        raise ValidationError(
            {"winner_mode": "Winner mode cannot send at each profile's local time: the sample would take a day."}
        )
    if not 1 <= settings.sample_share <= 100 - holdout_share - 1:
        raise ValidationError(
            {
                "winner_sample_share": f"The sample is a percentage from 1 to {99 - holdout_share} "
                f"(the holdout takes {holdout_share}%, and some must be left for the rest)."
            }
        )
    if not 0 <= settings.wait_minutes <= MAX_WAIT_MINUTES:
        raise ValidationError({"winner_wait_minutes": f"The wait is 0 to {MAX_WAIT_MINUTES} minutes (a week)."})
    if settings.metric not in Campaign.WinnerMetric.values:
        raise ValidationError({"winner_metric": f"Use one of {', '.join(Campaign.WinnerMetric.values)}."})
    if settings.metric == Campaign.WinnerMetric.CONVERSION_RATE and not has_goal:
        raise ValidationError(
            {"winner_metric": "The conversion rate needs a conversion goal: name the campaign's conversion event."}
        )
    if settings.confidence not in CONFIDENCES:
        raise ValidationError({"winner_confidence": f"Use one of {', '.join(map(str, CONFIDENCES))} (percent)."})
    if settings.fallback not in Campaign.WinnerFallback.values:
        raise ValidationError({"winner_fallback": f"Use one of {', '.join(Campaign.WinnerFallback.values)}."})
    if settings.fallback == Campaign.WinnerFallback.DEFAULT_VARIANT and not (
        settings.fallback_variant and 1 <= settings.fallback_variant <= variant_count
    ):
        raise ValidationError(
            {
                "winner_fallback_variant": f"Choose the default variant the rest get, "
                f"A to {variant_label(variant_count)}."
            }
        )


def campaign_winner_check(campaign: Campaign) -> None:
    """Check a campaign's own winner settings as they stand (nothing when winner mode is off)."""
    if not campaign.winner_mode:
        return
    winner_check(
        settings=winner_input_of(campaign),
        kind=campaign.kind,
        schedule_kind=campaign.schedule_kind,
        at_local_time=campaign.at_local_time,
        variant_count=len(campaign.variant_list()),
        holdout_share=campaign.holdout_share,
        has_goal=bool(campaign.conversion_event),
    )


def winner_input_of(campaign: Campaign) -> WinnerInput:
    return WinnerInput(**{name.removeprefix("winner_"): getattr(campaign, name) for name in Campaign.WINNER_FIELDS})


def campaign_winner_set(*, campaign_id: int, by: User, settings: WinnerInput | None) -> Campaign:
    """Turn winner mode on with ``settings``, or off (None). An edit like any other: the approval
    covers the settings, so an approved campaign's change is a revision waiting for its own approval.

    Raises Http404 outside ``by``'s access, PermissionDenied when the role may not edit campaigns,
    TransitionError in a state that forbids edits, ValidationError naming the field and the rule.
    """
    with transaction.atomic():
        campaign = lock_editable(campaign_id, by=by)
        if settings is not None:
            winner_check(
                settings=settings,
                kind=campaign.kind,
                schedule_kind=campaign.schedule_kind,
                at_local_time=campaign.at_local_time,
                variant_count=len(campaign.variant_list()),
                holdout_share=campaign.holdout_share,
                has_goal=bool(campaign.conversion_event),
            )
            if settings.fallback != Campaign.WinnerFallback.DEFAULT_VARIANT:
                settings = WinnerInput(**{**asdict(settings), "fallback_variant": None})
        before = (campaign.winner_mode, winner_input_of(campaign))
        after = (settings is not None, settings or before[1])
        if before == after:
            return campaign
        campaign.winner_mode = settings is not None
        for name, value in asdict(after[1]).items():
            setattr(campaign, f"winner_{name}", value)
        campaign.updated_at = timezone.now()
        campaign.save(update_fields=["winner_mode", *Campaign.WINNER_FIELDS, "updated_at"])
        revision = campaign.is_active and campaign.has_pending_revision
        audit(
            actor=by,
            action="campaign_revision_edited" if revision else "campaign_winner_set",
            obj=campaign,
            summary={"winner_mode": campaign.winner_mode, **(asdict(settings) if settings else {})},
        )
    return campaign


def winner_test_open(*, campaign: Campaign, approved, now: dt.datetime) -> WinnerTest:
    """The test row of a winner-mode campaign's first send (call it in the transaction that creates
    the sample's dispatch). Raises GateClosed when its test already ran: winner mode sends once."""
    from delivery.services.dispatches import GateClosed

    if WinnerTest.objects.filter(campaign=campaign).exists():
        raise GateClosed(f"'{campaign}' is in winner mode and its test already ran: it sends once.")
    return WinnerTest.objects.create(
        campaign=campaign,
        version=approved.number,
        fingerprint=approved.fingerprint,
        settings=approved.winner,
        due_at=now + dt.timedelta(minutes=approved.winner["wait_minutes"]),
    )


def rest_variants(approved, winner: int | None) -> list[dict]:
    """The variants the rest get: the winner alone, with every share but the holdout's (the same
    holdout buckets stay held out), or, without a winner, every variant in its share."""
    if winner is None:
        return list(approved.variants)
    chosen = next(v for v in approved.variants if v["number"] == winner)
    return [{**chosen, "share": 100 - approved.holdout_share}]


def _sample_counts(test: WinnerTest) -> tuple[dict[int, tuple[int, int]], str]:
    """Per variant of the sample: (successes, trials) of the metric; and why there are none, if so."""
    from delivery.conversions import Goal, conversions_by
    from delivery.models import Delivery

    if test.sample_dispatch_id is None:
        return {}, "the sample's dispatch is gone"
    if test.settings["metric"] == Campaign.WinnerMetric.CONVERSION_RATE:
        goal = test.settings.get("goal") or {}
        if not goal.get("event"):
            return {}, "the approved version names no conversion event"
        counts = conversions_by(
            dispatch_ids=[test.sample_dispatch_id],
            goal=Goal(
                event=goal["event"],
                where=tuple(goal.get("where") or ()),
                window_hours=goal["window_hours"],
                anchor=goal["anchor"],
            ),
            group="variant",
            group_key="variant",
        )
        return {n: (row["converted"], row["reached"]) for n, row in counts.items() if n}, ""
    rows = (
        Delivery.objects.filter(Delivery.of_dispatches([test.sample_dispatch_id]), variant__gt=0)
        .values("variant")
        .annotate(
            trials=Count("id", filter=Q(status=Delivery.Status.ACCEPTED)),
            successes=Count("id", filter=Q(status=Delivery.Status.ACCEPTED, opened_at__isnull=False)),
        )
        .order_by()
    )
    return {row["variant"]: (row["successes"], row["trials"]) for row in rows}, ""


def winner_pick(*, campaign_id: int, now: dt.datetime | None = None) -> WinnerTest | None:
    """Pick the winner of a campaign whose wait is over, record it, and create the remainder's dispatch.

    Runs once per test, however many workers race: the campaign row is taken with SKIP LOCKED and
    the test row locked; the pick (winner or fallback, the figures, z and p, the reason) is written
    on the row first, then the remainder's dispatch is created in the same transaction (the gate
    checks it against the row). A worker killed before the commit leaves the test waiting and
    nothing created; after it, the remainder follows the send pipeline's guarantees. A sample still
    sending is waited for. A campaign no longer on the air sends nothing to the rest, and neither
    does a sample that never went out (its dispatch ended before any row was written): that test
    ends at once, without a pick.
    Returns the test when it was decided now, else None.
    """
    from delivery.models import Dispatch
    from delivery.services.dispatches import GateClosed, dispatch_create

    now = now or timezone.now()
    with transaction.atomic():
        campaign = Campaign.objects.select_for_update(skip_locked=True).filter(pk=campaign_id).first()
        if campaign is None:
            return None
        test = (
            WinnerTest.objects.select_for_update(of=("self",))
            .select_related("sample_dispatch")
            .filter(campaign=campaign, outcome=WinnerTest.Outcome.WAITING)
            .first()
        )
        if test is None:
            return None
        sample = test.sample_dispatch
        if sample is not None and sample.status in Dispatch.RUNNING_STATUSES:
            return None  # the wait starts over the sample's figures: let it finish
        if sample is not None and _sample_answers_may_come(sample, now):
            return None  # a slow worker's answers would change the figures: let them land
        unsent = _sample_unsent(sample)
        if not unsent and test.due_at > now:
            return None
        test.picked_at = now
        approved = campaign.approved()
        if not campaign.is_active or approved is None or unsent:
            # A sample that never went out tests nothing: no pick, and the rest is not sent on it.
            test.outcome = WinnerTest.Outcome.CANCELLED
            test.reason = (
                unsent
                if campaign.is_active and approved is not None
                else f"Nothing sent to the rest: the campaign is {campaign.get_status_display().lower()}."
            )
            test.save()
            audit(actor=None, action="campaign_winner_cancelled", obj=campaign, summary={"reason": test.reason})
            return test
        settings = test.settings
        numbers = [v["number"] for v in approved.variants]
        counts, missing = _sample_counts(test)
        decision = winner_decide(counts, numbers=numbers, confidence=settings["confidence"], metric=settings["metric"])
        if missing:
            decision.winner, decision.reason = None, f"No winner: {missing}."
        test.figures, test.comparisons = decision.figures, decision.comparisons
        if decision.winner is not None:
            test.outcome, test.winner, test.reason = WinnerTest.Outcome.WINNER, decision.winner, decision.reason
        else:
            test.outcome = WinnerTest.Outcome.FALLBACK
            if settings["fallback"] == Campaign.WinnerFallback.DEFAULT_VARIANT:
                test.winner = settings["fallback_variant"]
                then = f"the default variant {variant_label(test.winner)} goes to the rest."
            else:
                test.winner = None
                then = "all variants go to the rest, in their shares."
            test.reason = f"{decision.reason} Fallback: {then}"[:300]
        missed = _rest_missed(test, sample, approved, campaign, now)
        if missed:
            # The pick is kept (the report says which variant won); the rest is not sent days late.
            test.outcome = WinnerTest.Outcome.CANCELLED
            test.reason = f"{missed} {test.reason}"[:300]  # what happened first: the pick's reason may be cut
            test.save()
            audit(actor=None, action="campaign_winner_cancelled", obj=campaign, summary={"reason": test.reason})
            return test
        # The pick is on the row before the remainder exists: the gate reads it there.
        test.save()
        variants = rest_variants(approved, test.winner)
        spec = variants[0]["spec"] if test.winner is not None else approved.spec
        what = f"winner {variant_label(test.winner)}" if test.winner is not None else "all variants"
        try:
            with transaction.atomic():
                remainder = dispatch_create(
                    app_id=approved.app_id,
                    kind=Dispatch.Kind.CAMPAIGN,
                    spec=spec,
                    content_id=variants[0]["content_id"] if test.winner is not None else approved.content_id,
                    segment_id=approved.segment_id,
                    source_id=campaign.pk,
                    label=f"{campaign.name} v{approved.number}: the rest ({what})",
                    rate_limit_per_second=approved.throttle_per_second,
                    purpose=approved.purpose,
                    time_zone=approved.time_zone,
                    context=approved.send_context(),
                    variants=variants,
                    holdout_share=approved.holdout_share,
                    sample={"part": "rest", "share": settings["sample_share"], "test": test.pk},
                )
        except (GateClosed, ValidationError) as exc:
            # A ValidationError: the approved content no longer passes the send's checks (a URL
            # scheme the settings no longer allow, say); the beat goes on with the other tests.
            from campaigns.services.scheduling import content_refusal

            refused = f"The gate refused the rest: {exc}" if isinstance(exc, GateClosed) else content_refusal(exc)
            test.outcome = WinnerTest.Outcome.CANCELLED
            test.reason = f"{test.reason} {refused}"[:300]
            test.save(update_fields=["outcome", "reason"])
            audit(actor=None, action="campaign_winner_cancelled", obj=campaign, summary={"reason": test.reason})
            return test
        test.remainder_dispatch = remainder
        test.save(update_fields=["remainder_dispatch"])
        audit(
            actor=None,
            action=f"campaign_winner_{test.outcome}",
            obj=campaign,
            summary={"winner": variant_label(test.winner) if test.winner else None, "reason": test.reason},
        )
    return test


def _sample_answers_may_come(sample, now: dt.datetime) -> bool:
    """Whether answers may still land on sample rows the watchdog ended ``unknown`` as their lease
    ran out (a worker slow, not dead: ``deliveries_write_back`` writes them late): until a send
    task's time limit after the last of them ended, when the queue has killed any worker still
    holding them. False once none is left so (the answers came)."""
    from django.db.models import Max

    from delivery.models import Delivery
    from delivery.services.dispatches import _task_timeout

    last = Delivery.objects.filter(
        Delivery.of_dispatches([sample.pk]), status=Delivery.Status.UNKNOWN, reason="lease_expired"
    ).aggregate(last=Max("finished_at"))["last"]
    return last is not None and now < last + dt.timedelta(seconds=_task_timeout())


def _sample_unsent(sample) -> str:
    """Why the sample never went out, when its dispatch ended (failed or stopped) before any row was
    written: its audience refused when the prepare task read it, say. '' when it has rows, or runs."""
    from delivery.models import Dispatch

    if sample is None or sample.status not in (Dispatch.Status.FAILED, Dispatch.Status.STOPPED):
        return ""
    if sample.rows().exists():
        return ""
    why = f" ({sample.error.strip().rstrip('.')})" if sample.error.strip() else ""
    return (
        f"Nothing sent to the rest: the sample never went out, its dispatch "
        f"{sample.get_status_display().lower()} before any push was queued{why}."
    )[:300]


def _rest_missed(test: WinnerTest, sample, approved, campaign: Campaign, now: dt.datetime) -> str:
    """Why the rest is not sent, when its pick comes later than the campaign's missed window allows
    (the workers down past it): as an occurrence missed so long, it is skipped, not sent late. Due
    when the wait is over, or the sample finished sending if that came later. '' when in time."""
    from config.zones import zoned

    ready = test.due_at
    if sample is not None and sample.finished_at is not None:
        ready = max(ready, sample.finished_at)
    late = int((now - ready).total_seconds() // 60)
    if late <= approved.missed_window_minutes:
        return ""
    return (
        f"Nothing sent to the rest: its pick was due at {zoned(ready, campaign.schedule_zone())} and came "
        f"{late:,} minutes late, more than the campaign's missed window of {approved.missed_window_minutes:,} minutes."
    )


def winners_pick_due(*, now: dt.datetime | None = None) -> int:
    """The beat's part: pick every test whose wait is over (each under its own locks), and end, without
    waiting, those whose sample never went out; how many were decided."""
    from delivery.models import Dispatch

    now = now or timezone.now()
    ended = Q(sample_dispatch__status__in=(Dispatch.Status.FAILED, Dispatch.Status.STOPPED))
    due = (
        WinnerTest.objects.filter(outcome=WinnerTest.Outcome.WAITING)
        .filter(Q(due_at__lte=now) | ended)
        .values_list("campaign_id", flat=True)
    )
    return sum(winner_pick(campaign_id=pk, now=now) is not None for pk in list(due[:500]))


def winner_samples_waiting_since() -> dt.datetime | None:
    """When the oldest winner sample whose rest may still be resolved was made: its test waits for
    the pick, or its rest's dispatch is still resolving. None when there is none. A deleted device's
    tombstone (``DeviceTombstone``) matters only to such a sample, and only if made after it."""
    from delivery.models import Dispatch

    return (
        WinnerTest.objects.filter(sample_dispatch__isnull=False)
        .filter(Q(outcome=WinnerTest.Outcome.WAITING) | Q(remainder_dispatch__status=Dispatch.Status.PREPARING))
        .order_by("sample_dispatch__created_at")
        .values_list("sample_dispatch__created_at", flat=True)
        .first()
    )
