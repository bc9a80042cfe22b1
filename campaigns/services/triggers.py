"""API triggers of campaigns: checks, rate limit, the per-process cache of live campaigns and its stamps, idempotent requests and the send."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.http import Http404
from django.utils import timezone

from accounts.models import User
from accounts.selectors import in_scope
from campaigns.models import Campaign, approved_app_id
from campaigns.services.lifecycle import Status
from campaigns.services.scheduling import campaign_gate, content_refusal
from config.db import text_array
from config.reporting import SaidOnceEvery, left_out_said
from delivery.reports import UNREACHABLE_REASONS

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 1000


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
    queued: int
    problems: list[dict] = field(default_factory=list)
    deliveries: list[dict] = field(default_factory=list)

    def answer(self) -> dict:
        """The 202 body: the stream it joined, what will be sent, per-recipient problems, the rows made.

        ``queued`` counts the rows made to be sent (now, or when quiet hours end); whether the
        provider accepted each is its delivery's status. ``accepted`` is the same count under the
        name API v1 first gave it, kept for the integrations that read it: it never meant accepted
        by the provider."""
        return {
            "dispatch": self.dispatch_id,
            "queued": self.queued,
            "accepted": self.queued,
            "problems": self.problems,
            "deliveries": self.deliveries,
        }


def trigger_rate_take(*, api_key) -> float | None:
    """Count one trigger against the key's rate limit; None when allowed, else seconds to wait.

    The API reads this limit with its version stamps in one round trip; this is the path for the
    database-kept limiter (the embedded mode) and direct callers. A rate of 0 is no limit.
    """
    from delivery.throttle import throttle

    if settings.PUSHDESK_TRIGGER_RATE_PER_KEY <= 0:
        return None
    granted, wait = throttle().take(
        key=f"trigger:{api_key.prefix}", rate=settings.PUSHDESK_TRIGGER_RATE_PER_KEY, count=1
    )
    return None if granted else max(wait, 0.001)


def _payload_problem(spec: dict, *, profile: dict, context: dict, source: str = "this context") -> str | None:
    """Render the content for one recipient and say what is wrong with it, if anything; ``source``
    words what made it so."""
    from liquid.exceptions import LiquidError

    from delivery.payloads import APNS_LIMIT, FCM_LIMIT, payload_sizes

    try:
        apns, fcm = payload_sizes(spec, profile=profile, context=context)
    except LiquidError as exc:
        return f"The content cannot be rendered with {source}: {exc}"
    if apns > APNS_LIMIT:
        return f"With {source} the iOS payload is {apns} bytes, {apns - APNS_LIMIT} over the {APNS_LIMIT}-byte limit."
    if fcm > FCM_LIMIT:
        return f"With {source} the Android payload is {fcm} bytes, {fcm - FCM_LIMIT} over the {FCM_LIMIT}-byte limit."
    return None


def _recipient_problem(
    spec: dict, *, index: int, profile: dict, context: dict, sent: dict, own_context: bool = True
) -> tuple[str, str] | None:
    """The field and the words of what is wrong with one recipient's message, if anything: their
    context when it makes the payload too large or unrenderable (the call's shared ``context``
    when they sent none of their own: it alone made it so), the recipient themselves when their
    profile alone makes it too large (no context they send could help). ``context`` is the call's
    (shared merged with theirs); ``sent`` what the stream gives every row (``_Approved.context``):
    each is rendered as the send renders the row (``recipient_context``)."""
    from liquid.exceptions import LiquidError

    from delivery.payloads import APNS_LIMIT, FCM_LIMIT, payload_sizes, recipient_context

    problem = _payload_problem(spec, profile=profile, context=recipient_context(sent, None, own=context))
    if problem is None:
        return None
    context_field = f"recipients[{index}].context" if own_context else "context"
    alone = recipient_context(sent, None)  # what the send gives a row without the call's values
    try:
        apns, fcm = payload_sizes(spec, profile=profile, context=alone)
    except LiquidError:  # it fails without the context too: which of the two is at fault is not known
        return context_field, problem
    if apns > APNS_LIMIT or fcm > FCM_LIMIT:
        return f"recipients[{index}]", _payload_problem(
            spec, profile=profile, context=alone, source="this recipient's profile"
        )
    return context_field, problem


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
    variants: list = field(default_factory=list)  # the approved variants (empty: one content)
    context: dict = field(default_factory=dict)  # what its stream gives the content: the approved version's
    holdout_share: int = 0
    time_zone: str = ""  # the approved version's: its stream's content reads ``now`` in it
    variant_problems: dict = field(default_factory=dict)  # variant number -> payload problem, as above
    # For personalized content, when it is known without reading the profile: how large each
    # content it sends can grow with a profile (``delivery.payloads.ProfileBound``), with the room
    # it leaves the attributes when that does not depend on the call's context; and, derived from
    # them once per approved version for every call, each attribute's most bytes per byte of its
    # value in any of those contents.
    profile_bounds: list = field(default_factory=list)  # (spec, ProfileBound, room or None)
    bound_times: dict | None = None  # None: not known

    def variant_of(self, profile_id: int) -> int | None:
        """The recipient's variant (0: the holdout), as the bulk send computes it in SQL."""
        from delivery.variants import variant_for

        return variant_for(profile_id, salt=self.campaign_id, variants=self.variants, holdout_share=self.holdout_share)

    def spec_of(self, variant: int | None) -> dict:
        for frozen in self.variants:
            if frozen["number"] == variant:
                return frozen["spec"]
        return self.spec

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
                context=self.context,
                by=by,
                now=now,
                variants=self.variants,
                holdout_share=self.holdout_share,
                time_zone=self.time_zone,
            )
        return self.stream_id


_APPROVED: dict[int, _Approved] = {}
# What this process has told the operator's log of campaigns refused for credentials it cannot
# decrypt, by campaign: an integrator's traffic is refused at every call, for as long as the key
# is missing, so a campaign is named once an hour while it lasts (a line missed, or rotated away,
# comes again), and at once when it is refused again after its credentials were read, or for
# other credentials than its last line named.
_UNREADABLE_LOG_SECONDS = 3600.0
_UNREADABLE_SAID = SaidOnceEvery(_UNREADABLE_LOG_SECONDS)


def campaign_caches_forget() -> None:
    """Drop this process's cached campaigns (tests that change rows behind the services' back), and
    what it has logged of them."""
    _APPROVED.clear()
    _UNREADABLE_SAID.forget_all()


def _campaign_stamp(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


def _refuse_unless_triggerable(campaign: Campaign, approved) -> None:
    """Refuse the calls of a campaign whose approved version is not API-triggered (the row's
    kind before any approval), or that is not live. A revision changing the kind waits for its
    approval: the approved version keeps taking calls meanwhile."""
    kind = approved.kind if approved is not None else campaign.kind
    if kind != Campaign.Kind.API_TRIGGERED:
        raise TriggerRefused(
            f"'{campaign}' is a scheduled campaign, not an API-triggered one.", code="not_api_triggered"
        )
    if campaign.status != Status.LIVE:
        raise TriggerRefused(
            f"'{campaign}' is {campaign.get_status_display().lower()}: only a live campaign can be triggered.",
            code="campaign_not_live",
        )


def _refuse_unless_sendable(campaign: Campaign, approved) -> None:
    """Refuse the calls of a campaign whose approved content (each variant's) no longer passes the
    send's checks (a URL scheme since taken off the settings, say), as a scheduled occurrence of it
    is refused. Raises TriggerRefused naming the variant, the field and the rule."""
    from campaigns.models import variant_label
    from delivery.payloads import spec_validate

    # With variants, the campaign's own content is variant A's: each content is checked once.
    sent = [(f"variant {variant_label(v['number'])}: ", v["spec"]) for v in approved.variants]
    for where, spec in sent or [("", approved.spec)]:
        try:
            spec_validate(spec)
        except ValidationError as exc:
            raise TriggerRefused(
                f"'{campaign}' cannot be triggered. {content_refusal(exc, where=where)}", code="content_refused"
            ) from exc


def _refuse_unless_credentials_read(campaign: Campaign, app) -> None:
    """Refuse the calls of a campaign whose app (its approved version's) has credentials that cannot
    be decrypted (a database restored under another PUSHDESK_ENCRYPTION_KEY): nothing is queued that
    could not be sent. The operator's log names the app and what cannot be decrypted, once an hour at
    most with the calls refused since, and says when they are read again; the integrator is told no
    more than that. Raises TriggerRefused (503)."""
    from delivery.services.apps import app_secrets_read

    unreadable = app_secrets_read(app)
    if not unreadable:
        if _UNREADABLE_SAID.forget(str(campaign.pk)):
            log.warning("Campaign %s can be triggered again: its app's credentials can be decrypted", campaign.pk)
        return
    refused = _UNREADABLE_SAID.now_or_never(str(campaign.pk), counting_this=True, saying="; ".join(unreadable))
    if refused is not None:
        since = left_out_said(refused, what="calls refused since the last line")
        log.error("Campaign %s cannot be triggered: %s%s", campaign.pk, "; ".join(unreadable), since)
    raise TriggerRefused(
        f"'{campaign}' cannot be triggered now: its app's credentials cannot be decrypted on this server, "
        "so nothing was queued. An operator must set the encryption key they were stored under.",
        code="credentials_undecryptable",
        status=503,
    )


def _approved_for(campaign_id: int, *, stamp: str | None, by: User | None, now: dt.datetime) -> _Approved:
    """The cached approved campaign, (re)loaded when its stamp moved, its day passed or it is old.

    Loading runs the full gate (``campaign_gate``: approved, live, fingerprint unchanged) and the
    send's checks of the approved content (a scheduled send runs them on each occurrence; a call
    only when its process loads the campaign), and opens today's stream of the approved version.
    Raises TriggerRefused when it cannot be triggered.
    """
    import time

    from delivery.models import App, DeliveryRules
    from delivery.payloads import profile_bound_budget, spec_is_personalized, spec_profile_bound
    from delivery.services.dispatches import GateClosed

    entry = _APPROVED.get(campaign_id)
    fresh = entry is not None and time.monotonic() - entry.loaded_at < settings.PUSHDESK_CACHE_SECONDS
    if fresh and entry.stamp == stamp and entry.stream_day == now.astimezone(dt.UTC).date():
        return entry
    campaign = Campaign.objects.select_related("app", "content").filter(pk=campaign_id).first()
    if campaign is None:
        raise Http404(f"No campaign {campaign_id}.")
    approved = campaign.approved()  # what sends, whatever revision is pending
    _refuse_unless_triggerable(campaign, approved)
    if approved is None:
        raise TriggerRefused(f"'{campaign}' has no approved version.", code="campaign_not_live")
    # The approved version's app: a revision moving the campaign to another app waits for approval.
    app = campaign.app if approved.app_id == campaign.app_id else App.objects.get(pk=approved.app_id)
    spec = approved.spec
    try:
        campaign_gate(
            app=app,
            source_id=campaign.pk,
            spec=spec,
            by=by,
            api_triggered=True,
            variants=approved.variants,
            holdout_share=approved.holdout_share,
        )
    except GateClosed as exc:
        raise TriggerRefused(str(exc), code="gate_closed") from exc
    _refuse_unless_sendable(campaign, approved)
    _refuse_unless_credentials_read(campaign, app)
    rules = None
    if approved.purpose == Campaign.Purpose.MARKETING:
        rules = DeliveryRules.objects.filter(app_id=app.pk).first()
    entry = _Approved(
        campaign_id=campaign.pk,
        app_id=app.pk,
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
        variants=approved.variants,
        holdout_share=approved.holdout_share,
        context=approved.send_context(),
        time_zone=approved.time_zone,
    )
    specs = [spec, *(v["spec"] for v in entry.variants)]
    entry.personalized = any(spec_is_personalized(s) for s in specs)
    if entry.personalized:
        sent = [v["spec"] for v in entry.variants] or [spec]  # with variants, the campaign's own is not sent
        bounds = [spec_profile_bound(s) for s in sent]
        if all(b is not None for b in bounds):
            entry.profile_bounds = [
                (s, b, None if b.reads_context else profile_bound_budget(s, b, context={}))
                for s, b in zip(sent, bounds, strict=True)
            ]
            entry.bound_times = {}
            for b in bounds:
                for name, times in b.times.items():
                    entry.bound_times[name] = max(times, entry.bound_times.get(name, 0))
    if not entry.personalized:
        entry.payload_problem = _payload_problem(spec, profile={"attributes": {}}, context=entry.context)
        for frozen in entry.variants:
            entry.variant_problems[frozen["number"]] = _payload_problem(
                frozen["spec"], profile={"attributes": {}}, context=entry.context
            )
    _APPROVED[campaign_id] = entry
    return entry


def _may_trigger(by: User, campaign_id: int, stamp: str | None) -> None:
    """Raise Http404 outside the user's access, PermissionDenied when their role may not trigger
    or they were granted the campaign but not its app: a trigger answers with the deliveries it
    made, which are read through the app (``GET /api/v1/deliveries/{id}/``). The app must be in
    their scope: an approver who reads it through the review of a pending revision may not.

    The app is the one the approved version sends to (``Campaign.sending_app_id``), not the row's:
    while a revision moving the campaign to another app waits for approval, the calls send to the
    approved version's app's devices, so whoever has access to that app may trigger it, and a key
    with access to the revision's app alone is answered as outside its access.

    The answer is kept on the user object, which the API keeps per process behind the ``access``
    stamp; it is also keyed by the campaign's stamp (an edit, an approval)."""
    from delivery.models import App

    decided = by.__dict__.setdefault("_pushdesk_may_trigger", {})
    verdict = decided.get((campaign_id, stamp))
    if verdict is None:
        one = Campaign.objects.filter(pk=campaign_id).annotate(sending_app_id=Campaign.sending_app_id())
        if not in_scope(by, one, scope_id="sending_app_id").exists():
            raise Http404(f"No campaign {campaign_id}.")
        # In scope, the role alone decides: read from the permissions Django keeps on the user, no query.
        if not by.has_perm("campaigns.trigger_campaign"):
            verdict = "role"
        elif not in_scope(by, App.objects.filter(pk__in=one.values("sending_app_id"))).exists():
            verdict = "app"
        else:
            verdict = "yes"
        decided[(campaign_id, stamp)] = verdict
    if verdict == "role":
        raise PermissionDenied("Your role may not trigger campaigns.")
    if verdict == "app":
        raise PermissionDenied("Triggering a campaign needs access to its app, through which its deliveries are read.")


def campaign_trigger_allowed(*, campaign_id: int, by: User, stamps=None) -> None:
    """Check, before anything is recorded, that ``by`` may trigger this campaign (cached per process).

    Raises Http404 outside the user's access, PermissionDenied when the role may not trigger.
    """
    from accounts.stamps import stamps_read

    stamps = stamps or stamps_read(["access", _campaign_stamp(campaign_id)])
    _may_trigger(by, campaign_id, stamps[_campaign_stamp(campaign_id)])


# The advisory lock class of the trigger gate (campaigns/migrations/0011_trigger_gate_lock.py).
GATE_LOCK_CLASS = 0x50C5


def _recipient_source_lock(entry: _Approved) -> tuple[str, list]:
    """The campaign row under its gate's conditions (live, under the approved fingerprint the entry
    was loaded with: the approved version's kind and app were checked then, and a revision changing
    the row's kind or app while it waits leaves that fingerprint, and the calls, as they are),
    behind the gate's lock taken shared: an
    update that changes what the gate reads (a stop, a voided or replaced approval) takes it
    exclusively from a database trigger, so it waits for calls in flight, and calls after it
    wait for its commit. An advisory lock, not ``FOR SHARE`` on the row: locking a row shared
    writes it (a multixact per concurrent call, its page dirtied, WAL), which every call paid.
    A call whose statement began before such an update committed reads the row as it was; the
    stream's dispatch, which a stop closes in that transaction, is locked after the gate and
    read as it is then, so it writes nothing (``StreamClosed``)."""
    conditions = [Status.LIVE, entry.fingerprint]
    if connection.vendor != "postgresql":  # SQLite: the write lock serialises the append and a stop
        return (
            "SELECT id FROM campaigns_campaign WHERE id = %s AND status = %s AND approved_fingerprint = %s",
            [entry.campaign_id, *conditions],
        )
    return (
        "SELECT c.id FROM (SELECT pg_advisory_xact_lock_shared(%s, mod(%s::bigint, 2147483648)::int)) AS gate, "
        "campaigns_campaign c WHERE c.id = %s AND c.status = %s AND c.approved_fingerprint = %s",
        [GATE_LOCK_CLASS, entry.campaign_id, entry.campaign_id, *conditions],
    )


# What every send of a campaign gives its content under ``context`` itself (``ApprovedVersion.send_context``).
SEND_CONTEXT_KEY = "campaign"


def _context_check(*, context: dict, recipients: list[dict]) -> None:
    """Refuse a call whose context, shared or a recipient's, names ``campaign``: every send gives its
    content ``context.campaign`` itself (its id, and the name its approved version sends), and a call's
    value laid over it showed the phones a name no approver read. Raises ValidationError naming each."""
    said = (
        f"'{SEND_CONTEXT_KEY}' is given by the campaign itself (its id, and the name its approved version "
        "sends): leave it out of the call's context."
    )
    errors = {}
    if SEND_CONTEXT_KEY in (context or {}):
        errors[f"context.{SEND_CONTEXT_KEY}"] = said
    for index, recipient in enumerate(recipients):
        if SEND_CONTEXT_KEY in (recipient.get("context") or {}):
            errors[f"recipients[{index}].context.{SEND_CONTEXT_KEY}"] = said
    if errors:
        raise ValidationError(errors)


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
    in a transaction that holds the campaign's gate lock shared and reads its row under the gate's
    conditions (a stop waits for it, or it finds the campaign stopped) and, with ``request_record`` (an Idempotency-Key's
    TriggerRequest), stores the answer and the dispatch on that record: a retry replays it.
    Recipients that are unknown are reported and left out; those without a reachable device are
    reported and still targeted (their delivery records the skip). Each recipient's context is
    merged over the shared one. ``stamps`` are the version stamps the API read for this request.
    When nothing is decided per profile before its rows are made, the profiles are looked up by
    the append itself (``_trigger_by_external_id``), content showing attributes bounded there.
    Raises Http404 outside the user's access, PermissionDenied without the role, TriggerRefused
    when the campaign is not a live API-triggered one or its approved content no longer passes
    the send's checks, ValidationError naming
    ``recipients[i].context`` when a context makes the payload too large or unrenderable (the
    shared ``context`` when that recipient sent none),
    ``recipients[i]`` when that recipient's profile alone makes it too large, or
    ``context.campaign`` (``recipients[i].context.campaign``) when a context names what the
    campaign gives itself (``_context_check``).
    """
    from accounts.stamps import stamps_read
    from delivery.models import Dispatch
    from delivery.services.stream_senders import streams_wake
    from delivery.services.streams import Recipient, StreamClosed, stream_append

    now = timezone.now()
    stamps = stamps or stamps_read(["access", _campaign_stamp(campaign_id)])
    stamp = stamps[_campaign_stamp(campaign_id)]
    _may_trigger(by, campaign_id, stamp)
    entry = _approved_for(campaign_id, stamp=stamp, by=by, now=now)
    if len(recipients) > MAX_RECIPIENTS:
        raise ValidationError({"recipients": f"At most {MAX_RECIPIENTS} recipients per call."})
    _context_check(context=context, recipients=recipients)
    if _appends_by_external_id(entry):
        try:
            result = _trigger_by_external_id(
                entry, recipients=recipients, context=context, request_record=request_record, now=now
            )
            if result is not None:
                return result
        except StreamClosed:
            _APPROVED.pop(campaign_id, None)  # as below: load it again, then the path that opens streams
            entry = _approved_for(campaign_id, stamp=stamp, by=by, now=now)
    profiles = _profiles_with_reach(app_id=entry.app_id, external_ids=[r["external_id"] for r in recipients])
    problems, targeted, errors = [], [], {}
    seen: set[str] = set()
    index_of: dict[int, int] = {}  # a targeted profile's id: its recipient's index
    for index, recipient in enumerate(recipients):
        external_id = recipient["external_id"]
        profile = profiles.get(external_id)
        if external_id in seen:
            problems.append(_problem(index, external_id, "duplicate"))
            continue
        seen.add(external_id)
        if profile is None:
            problems.append(_problem(index, external_id, "unknown_profile"))
            continue
        merged = {**context, **(recipient.get("context") or {})}
        variant = entry.variant_of(profile["id"])
        if variant == 0:
            problem = None  # the holdout gets nothing: its row records the skip
        elif entry.personalized:
            problem = _recipient_problem(
                entry.spec_of(variant),
                index=index,
                profile=profile,
                context=merged,
                sent=entry.context,
                own_context=bool(recipient.get("context")),
            )
        else:
            problem = entry.variant_problems.get(variant) if variant else entry.payload_problem
            problem = problem and (f"recipients[{index}].context", problem)
        if problem:
            errors[problem[0]] = problem[1]
            continue
        index_of[profile["id"]] = index
        targeted.append(Recipient(profile["id"], profile["timezone"] or "", merged or None, variant))
    if errors:
        raise ValidationError(errors)
    if not targeted:
        result = TriggerResult(dispatch_id=None, queued=0, problems=problems)
        if request_record is not None:
            trigger_request_finish(record=request_record, status_code=202, body=result.answer())
        return result
    external_ids = {p["id"]: p["external_id"] for p in profiles.values()}
    for _ in range(2):
        stream_id = entry.stream(by=by, now=now)
        try:
            with nullcontext() if _alone(entry, request_record) else transaction.atomic():
                rows = stream_append(
                    dispatch_id=stream_id,
                    kind=Dispatch.Kind.API_TRIGGER,
                    app_id=entry.app_id,
                    recipients=targeted,
                    source_lock=_recipient_source_lock(entry),
                    rules=entry.rules,
                    now=now,
                )
                result = TriggerResult(
                    dispatch_id=stream_id,
                    queued=sum(1 for r in rows if r.status == "queued"),
                    problems=_with_unreached(problems, rows, lambda row: index_of[row.profile_id], external_ids),
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


_PROBLEMS = {
    "duplicate": "Listed twice: sent once.",
    "unknown_profile": "No profile has this external id.",
    "no_device": "No active device for this app.",
    "not_opted_in": "No device for this app has opted in to push.",
}


def _with_unreached(problems: list[dict], rows, index_of: Callable, external_ids: dict | None) -> list[dict]:
    """The problems, with each recipient none of whose rows can reach it: its rows' own reason
    (``no_device`` or ``not_opted_in``), so the problem and the rows say the same. A row queued, held
    back by a rule (``frequency_cap``, ``quiet_hours``) or in the holdout is no problem of reach."""
    problems, reasons = list(problems), {}
    for row in rows:
        reasons.setdefault(index_of(row), set()).add(
            row.reason if row.status == "skipped" and row.reason in UNREACHABLE_REASONS else ""
        )
    for row in rows:
        index = index_of(row)
        kept = reasons.pop(index, {""})
        if "" not in kept:
            external_id = external_ids[row.profile_id] if external_ids is not None else row.external_id
            problems.append(_problem(index, external_id, "not_opted_in" if "not_opted_in" in kept else "no_device"))
    return sorted(problems, key=lambda problem: problem["index"])


def _problem(index: int, external_id: str, code: str) -> dict:
    """A recipient's problem in the answer: the call goes on without it (or sends it a skip)."""
    return {"index": index, "external_id": external_id, "code": code, "detail": _PROBLEMS[code]}


def _alone(entry: _Approved, request_record) -> bool:
    """Whether the append, one statement on PostgreSQL, may run alone in autocommit (two round
    trips fewer): no Idempotency-Key record to store with it, no frequency cap to apply after it."""
    return (
        connection.vendor == "postgresql"
        and request_record is None
        and not (entry.rules is not None and entry.rules.frequency_cap)
    )


def _appends_by_external_id(entry: _Approved) -> bool:
    """Whether a call's recipients can be appended by their external ids in one statement, with
    no profile read before it: nothing is decided per profile before its rows are made (content
    that fits, whatever the profile, or whose size the statement bounds from the attributes it
    shows; variants the statement assigns; no quiet hours), on PostgreSQL, to a stream already
    open (a call that names only unknown profiles opens none)."""
    if entry.personalized:
        fits = entry.bound_times is not None
    else:
        fits = not any(entry.variant_problems.values()) if entry.variants else entry.payload_problem is None
    return (
        connection.vendor == "postgresql"
        and entry.stream_id is not None
        and fits
        and not (entry.rules is not None and entry.rules.has_quiet_hours)
    )


def _trigger_by_external_id(
    entry: _Approved, *, recipients: list[dict], context: dict, request_record, now: dt.datetime
) -> TriggerResult | None:
    """``campaign_trigger``'s call in one statement (see ``_appends_by_external_id``): the append
    looks the profiles up, and what the lookup would have reported is read off the rows made
    (no row: no profile has the id; no row queued before the frequency cap, and not held out: no
    opted-in device). The statement assigns each profile its variant, as ``variant_of`` does.
    Personalized content is checked first, per recipient, for every content and locale, with the
    context and with each attribute it shows at one character; the statement then checks each
    profile's attributes against the least room left (``delivery.payloads.ProfileBound``). None, with nothing
    written, when a recipient may not fit either way: the call then takes the path that renders
    each known profile's own message and words the error for it (which is the answer in the end,
    as this path turns away only what might fail)."""
    from delivery.models import Dispatch
    from delivery.services.stream_senders import streams_wake
    from delivery.services.streams import Named, OverBudget, stream_append

    problems: list[dict] = []
    index_of: dict[str, int] = {}
    named = []
    bound = (entry.bound_times or None) if entry.personalized else None  # the attributes it shows
    for index, recipient in enumerate(recipients):
        external_id = recipient["external_id"]
        if external_id in index_of:
            problems.append(_problem(index, external_id, "duplicate"))
            continue
        index_of[external_id] = index
        merged = {**context, **(recipient.get("context") or {})}
        budget = None
        if entry.personalized:
            budget = _recipient_budget(entry, context=merged)
            if budget is None or budget < 0:
                return None
        named.append(Named(external_id, merged or None, budget if bound else None))
    with nullcontext() if _alone(entry, request_record) else transaction.atomic():
        try:
            rows = stream_append(
                dispatch_id=entry.stream_id,
                kind=Dispatch.Kind.API_TRIGGER,
                app_id=entry.app_id,
                named=named,
                source_lock=_recipient_source_lock(entry),
                rules=entry.rules,
                now=now,
                bound=bound,
                split=(entry.campaign_id, entry.variants, entry.holdout_share) if entry.variants else None,
            )
        except OverBudget:
            return None  # a profile's attributes may make its message too large: rendered one by one
        made = {r.external_id for r in rows}
        problems += [
            _problem(index, external_id, "unknown_profile")
            for external_id, index in index_of.items()
            if external_id not in made
        ]
        problems = _with_unreached(problems, rows, lambda row: index_of[row.external_id], None)
        result = TriggerResult(
            dispatch_id=entry.stream_id if rows else None,
            queued=sum(1 for r in rows if r.status == "queued"),
            problems=problems,
            deliveries=[
                {"id": r.id, "external_id": r.external_id, "status": r.status, "reason": r.reason} for r in rows
            ],
        )
        if request_record is not None:
            if rows:
                _trigger_request_answer(record=request_record, result=result)
            else:
                trigger_request_finish(record=request_record, status_code=202, body=result.answer())
        if rows:
            transaction.on_commit(lambda d=entry.stream_id: streams_wake(d))
    return result


def _recipient_budget(entry: _Approved, *, context: dict) -> int | None:
    """The least room any content it sends leaves a recipient's attributes with the call's context
    (``delivery.payloads.profile_bound_budget``), rendered as the send renders the row, under the
    stream's own (``recipient_context``); None when one cannot be rendered with it."""
    from delivery.payloads import profile_bound_budget, recipient_context

    sent = recipient_context(entry.context, None, own=context)
    least = None
    for spec, bound, room in entry.profile_bounds:
        budget = profile_bound_budget(spec, bound, context=sent) if bound.reads_context else room
        if budget is None:
            return None
        least = budget if least is None else min(least, budget)
    return least


_PROFILES_WITH_REACH = (
    "SELECT p.id, p.external_id, p.locale, p.timezone, p.attributes, EXISTS (SELECT 1 FROM delivery_device d "
    "WHERE d.profile_id = p.id AND d.app_id = %s AND d.active AND d.push_enabled) "
    "FROM audiences_profile p WHERE "
)
# One recipient, most calls: ``= $2``, whose kept plan PostgreSQL runs. For ``= ANY($2)`` it guesses
# ten elements, prices its kept plan above a plan for the values at hand, and plans every call again.
_ONE_PROFILE_WITH_REACH = _PROFILES_WITH_REACH + "p.external_id = %s"
_MANY_PROFILES_WITH_REACH = _PROFILES_WITH_REACH + "p.external_id = ANY(%s::text[])"


def _profiles_with_reach(*, app_id: int, external_ids: list[str]) -> dict[str, dict]:
    """One query: the profiles of these external ids, each with whether it has an opted-in device of
    the app. On PostgreSQL a fixed statement (building it with the ORM cost as much as running it),
    prepared once per connection (for one recipient, planned once per connection too)."""
    from audiences.models import Profile
    from delivery.models import Device

    columns = ("id", "external_id", "locale", "timezone", "attributes", "reachable")
    if connection.vendor == "postgresql":
        from config.db import prepared_cursor

        with prepared_cursor() as cursor:
            if len(external_ids) == 1:
                cursor.execute(_ONE_PROFILE_WITH_REACH, [app_id, external_ids[0]])
            else:
                cursor.execute(_MANY_PROFILES_WITH_REACH, [app_id, text_array(external_ids)])
            rows = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:
            if isinstance(row["attributes"], str):
                row["attributes"] = json.loads(row["attributes"])
            row["attributes"] = row["attributes"] or {}
        return {row["external_id"]: row for row in rows}
    reachable = Device.objects.filter(profile_id=OuterRef("pk"), app_id=app_id, active=True, push_enabled=True)
    return {
        row["external_id"]: row
        for row in Profile.objects.filter(external_id__in=external_ids)
        .annotate(reachable=Exists(reachable))
        .values(*columns)
    }


def _trigger_request_answer(*, record, result: TriggerResult) -> None:
    """Store the answer and the dispatch on the Idempotency-Key's record, in the rows' transaction."""
    from accounts.idempotency import idempotent_request_answer

    idempotent_request_answer(record=record, status_code=202, body=result.answer(), dispatch_id=result.dispatch_id)


def trigger_request_finish(*, record, status_code: int | None, body: dict | None) -> None:
    """Store an answer that sent nothing (bad input, no one to send to), to replay it.

    ``status_code=None`` (the request failed) frees the key for a retry, unless the record holds
    an answer: a record written with its dispatch's rows is never deleted.
    """
    from accounts.idempotency import idempotent_request_answer, idempotent_request_free

    if status_code is None:
        idempotent_request_free(record=record)
        return
    idempotent_request_answer(record=record, status_code=status_code, body=body)


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
        *[
            _campaign_stamp(pk)
            for pk in Campaign.objects.filter(Q(content_id=instance.pk) | Q(variants__content_id=instance.pk))
            .values_list("pk", flat=True)
            .distinct()
        ]
    )


def campaign_rules_changed(sender, instance, **kwargs) -> None:
    from accounts.stamps import stamps_bump

    # The campaigns of the app, and those whose approved version sends to it while a revision
    # moving them to another app waits (their calls apply its rules): the row's app or the approved
    # version's, each read through its index (``Campaign.sending_app_id`` is one of the two).
    of_app = (
        Campaign.objects.alias(approved_app_id=approved_app_id())
        .filter(Q(app_id=instance.app_id) | Q(approved_app_id=instance.app_id))
        .order_by()
    )
    stamps_bump(*[_campaign_stamp(pk) for pk in of_app.values_list("pk", flat=True)])


def campaign_stream_is_current(source_id: int, version: str) -> bool:
    """A campaign's stream still takes calls while the campaign is live under that approved fingerprint."""
    return Campaign.objects.filter(pk=source_id, status=Status.LIVE, approved_fingerprint=version).exists()
