"""The send engine: batches, provider calls and retries, between a claim and its write-back.

``dispatch_send`` claims ``queued`` rows in batches (``UPDATE … RETURNING``, ``SKIP LOCKED`` on
PostgreSQL), under the app's and the dispatch's rate limits, renders and sends them through
the providers (APNs and FCM batches at once), and writes the outcomes back in bulk.
Transient failures go back to ``queued`` with a backoff that honours ``Retry-After``, within
the attempts limit and the TTL; dead tokens deactivate their device. A request that timed out
after it was sent (the provider may have it) ends ``unknown``, not retried: a duplicate push is
worse than a missing one.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from liquid.exceptions import LiquidError

from accounts.services import audit
from config.db import write_pacer
from delivery.models import App, Delivery, Device, Dispatch, Platform
from delivery.payloads import (
    APNS_LIMIT,
    RECIPIENT_CONTEXTS,
    RenderedMessage,
    apns_options,
    apns_payload,
    collapse_key_sendable,
    encode,
    fcm_message,
    fcm_payload_fits,
    image_refused_for_app,
    message_render,
    message_render_in,
    recipient_context,
    spec_is_personalized,
    spec_reads_now,
)
from delivery.providers import Outcome, OutcomeKind
from delivery.providers.apns import ApnsClient, ApnsMessage
from delivery.providers.fcm import FcmClient, FcmMessage
from delivery.reasons import NOT_SENT, handed_over
from delivery.rules import profile_zone, quiet_at_claim
from delivery.services.apps import app_secrets_read
from delivery.services.claims import Claimed, Result, deliveries_claim, deliveries_write_back
from delivery.services.devices import devices_invalidate
from delivery.services.dispatches import (
    DS,
    NO_PLATFORM,
    _enqueue,
    dispatch_complete_if_done,
    platform_counts_add,
)
from delivery.services.rollups import deliveries_finish
from delivery.throttle import throttle_acquire, throttle_release
from delivery.transport import Http2Transport
from operations.instance import instance_refuses
from operations.shutdown import stop_requested

log = logging.getLogger(__name__)


@dataclass
class SendReport:
    """What one ``dispatch_send`` call did (for logs, tests and the benchmark)."""

    claimed: int = 0
    outcomes: Counter = field(default_factory=Counter)
    batches: int = 0


class _Clients:
    """The provider clients of this worker process, kept per app so connections stay open."""

    def __init__(self):
        self._by_key: dict[tuple, object] = {}

    def get(self, app: App, platform: str):

        fingerprint = (
            app.apns_private_key_fingerprint if platform == Platform.IOS else app.fcm_service_account_fingerprint
        )
        # Everything the client is built from: a corrected key or team id takes effect at the next send.
        key = (
            app.pk,
            platform,
            fingerprint,
            app.uses_simulator,
            app.apns_environment,
            app.apns_bundle_id,
            app.apns_team_id,
            app.apns_key_id,
        )
        client = self._by_key.get(key)
        if client is None:
            for old_key in [k for k in self._by_key if k[:2] == key[:2]]:
                self._by_key.pop(old_key).close()
            transport = Http2Transport(
                timeout=settings.PUSHDESK_SEND_TIMEOUT_SECONDS,
                max_connections_per_host=settings.PUSHDESK_SEND_CONNECTIONS,
                ca_bundle=settings.PUSHDESK_CA_BUNDLE,
            )
            client = (ApnsClient if platform == Platform.IOS else FcmClient).for_app(app, transport=transport)
            self._by_key[key] = client
        return client

    def close(self) -> None:
        for client in self._by_key.values():
            client.close()
        self._by_key.clear()


CLIENTS = _Clients()
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pushdesk-send")


def _needs_profiles(spec: dict, dispatch: Dispatch) -> bool:
    # At each profile's local time, a content reading ``now`` reads it in each profile's zone.
    return (
        spec_is_personalized(spec) or bool(spec.get("variants")) or (bool(dispatch.local_time) and spec_reads_now(spec))
    )


def dispatch_needs_profiles(dispatch: Dispatch) -> bool:
    """Whether any content the dispatch sends (each variant's) renders per profile."""
    return any(_needs_profiles(spec, dispatch) for spec in dispatch.all_specs())


def message_renderer(spec: dict, dispatch: Dispatch) -> Callable[..., RenderedMessage]:
    """How a batch renders ``spec`` (as ``message_render``): a content reading ``now``
    (``spec_reads_now``) reads it in the zone its send is scheduled in, at each profile's local time
    in the profile's own (``profile_zone``, falling back as the local time does); the others pay
    nothing."""
    if not (dispatch.time_zone or dispatch.local_time) or not spec_reads_now(spec):
        return message_render
    if not dispatch.local_time:
        return functools.partial(message_render_in, zone=profile_zone(dispatch.time_zone, ""))
    default = dispatch.local_default_timezone

    def render(spec: dict, *, profile: dict, context: dict) -> RenderedMessage:
        zone = profile_zone(profile.get("timezone"), default)
        return message_render_in(spec, profile=profile, context=context, zone=zone)

    return render


def _send_platform(app: App, platform: str, messages: list, rows: list[Claimed]) -> list[Outcome]:

    try:
        client = CLIENTS.get(app, platform)
    except ValueError:
        return [Outcome(OutcomeKind.CREDENTIALS, reason=f"not_configured:{platform}") for _ in rows]
    if platform == Platform.IOS:
        return client.send([ApnsMessage(token=r.token, **m) for r, m in zip(rows, messages, strict=True)])
    return client.send([FcmMessage(message=m) for m in messages])


# A row whose image only the push simulator's phones load, its app sending to Apple and Google.
IMAGE_ON_THIS_MACHINE = "image_on_this_machine (over http: for the push simulator's phones only)"

# Transport errors after which the provider may hold the message: never sent again.
_MAYBE_DELIVERED = ("transport:timeout", "transport:connection")


def _retry_or_fail(row: Claimed, outcome: Outcome, *, now: datetime, deadline: datetime) -> Result:
    if outcome.reason in _MAYBE_DELIVERED:
        return Result(row.id, DS.UNKNOWN, reason=f"{outcome.reason} (may have been delivered)")
    if row.attempts >= settings.PUSHDESK_SEND_MAX_ATTEMPTS:
        return Result(row.id, DS.FAILED, reason=f"{outcome.reason} (gave up after {row.attempts} attempts)")
    backoff = settings.PUSHDESK_SEND_BACKOFF_SECONDS * 2 ** (row.attempts - 1)
    delay = backoff * random.uniform(1.0, 1.25)
    if outcome.retry_after_from_provider and outcome.retry_after is not None:
        delay = max(delay, outcome.retry_after)
    # Compared before a datetime is built from it: a provider may ask for any wait at all.
    if not delay <= (deadline - now).total_seconds():
        return Result(row.id, DS.FAILED, reason=f"{outcome.reason} (TTL over before a retry)")
    when = now + timedelta(seconds=delay)
    return Result(row.id, DS.QUEUED, reason=outcome.reason, next_attempt_at=when)


@dataclass
class _Batch:
    """Claimed rows on their way: rendered messages per platform, sends in flight, results so far."""

    rows: dict[str, list[Claimed]]
    messages: dict[str, list]
    results: list[Result]
    expires: dict[int, datetime]  # row id -> its expiry: no retry after it
    prepared_at: datetime  # before its requests left: a registration after it is newer
    platforms: dict[int, str] = field(default_factory=dict)  # row id -> its device's platform
    claims: dict[int, int] = field(default_factory=dict)  # row id -> its attempts: the claim that sent it
    futures: dict = field(default_factory=dict)


class _Contents:
    """What a batch renders per content: a dispatch sends one, or one per campaign variant."""

    def __init__(self, dispatch: Dispatch, own_contexts: bool, now: datetime):
        self.dispatch, self.own_contexts, self.now = dispatch, own_contexts, now
        self._by_variant: dict[int | None, tuple] = {}

    def get(self, variant: int | None) -> tuple[dict, int, datetime, dict, object, Callable[..., RenderedMessage]]:
        """(spec, ttl, the dispatch's expiry, APNs options, the message shared by all or None, how
        a row's message is rendered: ``message_renderer``)."""
        found = self._by_variant.get(variant)
        if found is None:
            dispatch = self.dispatch
            spec = dispatch.spec_for(variant)
            ttl = int(spec.get("ttl_seconds") or 0)
            render = message_renderer(spec, dispatch)
            shared = (
                None
                if _needs_profiles(spec, dispatch) or self.own_contexts
                else render(spec, profile={}, context=recipient_context(dispatch.context, None))
            )
            expires = (dispatch.started_at or self.now) + timedelta(seconds=ttl)
            found = self._by_variant[variant] = (spec, ttl, expires, apns_options(spec), shared, render)
        return found


def _batch_prepare(dispatch: Dispatch, rows: list[Claimed]) -> _Batch:
    """Render every claimed row and build its provider message; rows that cannot be sent fail here."""
    now = timezone.now()
    batch = _Batch(
        rows={Platform.IOS: [], Platform.ANDROID: []},
        messages={Platform.IOS: [], Platform.ANDROID: []},
        results=[],
        expires={},
        prepared_at=now,
    )
    results = batch.results
    own_contexts = bool((dispatch.context or {}).get(RECIPIENT_CONTEXTS)) or any(r.context for r in rows)
    contents = _Contents(dispatch, own_contexts, now)
    batch.platforms = {row.id: row.platform or NO_PLATFORM for row in rows}
    batch.claims = {row.id: row.attempts for row in rows}
    uses_simulator = dispatch.app.uses_simulator
    for row in rows:
        if not row.token:
            results.append(Result(row.id, DS.FAILED, reason="device_deleted"))
            continue
        if row.skip:  # logged out, opted out or handed to another user since the row was resolved
            results.append(Result(row.id, DS.SKIPPED, reason=row.skip))
            continue
        spec, ttl, dispatch_expires, options, shared, render = contents.get(row.variant)
        # The TTL runs once per delivery, from the dispatch's start or the end of the row's hold:
        # each attempt sends what remains. A TTL of 0 is "now or never" (APNs 0, FCM "0s").
        expires = batch.expires[row.id] = row.expires_at or dispatch_expires
        remaining = int((expires - now).total_seconds())
        if ttl and remaining <= 0:
            # Never sent, as a now-or-never push that quiet hours would hold: skipped, one code for both.
            results.append(Result(row.id, DS.SKIPPED, reason="expired"))
            continue
        expiration, ttl_left = (int(expires.timestamp()), remaining) if ttl else (0, 0)
        try:
            message = shared or render(
                spec,
                profile=row.profile or {"attributes": {}},
                context=recipient_context(dispatch.context, row.profile_id, own=row.context),
            )
        except LiquidError as exc:
            results.append(Result(row.id, DS.FAILED, reason=f"render_error: {exc.message}"[:100]))
            continue
        if image_refused_for_app(message.image_url, uses_simulator=uses_simulator):  # saved before a switch
            results.append(Result(row.id, DS.FAILED, reason=IMAGE_ON_THIS_MACHINE))
            continue
        if row.platform == Platform.IOS:
            if options["collapse_id"] and not collapse_key_sendable(options["collapse_id"]):  # saved before the rule
                results.append(Result(row.id, DS.FAILED, reason="invalid_collapse_key (APNs takes ASCII only)"))
                continue
            body = encode(apns_payload(spec, message, delivery_id=row.id))
            if len(body) > APNS_LIMIT:
                results.append(Result(row.id, DS.FAILED, reason=f"payload_too_large ({len(body)} bytes)"))
                continue
            batch.messages[Platform.IOS].append({"payload": body, **options, "expiration": expiration})
        else:
            fcm = fcm_message(spec, message, token=row.token, delivery_id=row.id, ttl_seconds=ttl_left)
            size = fcm_payload_fits(fcm)
            if size is not None:
                results.append(Result(row.id, DS.FAILED, reason=f"payload_too_large ({size} bytes)"))
                continue
            batch.messages[Platform.ANDROID].append(fcm)
        batch.rows[row.platform].append(row)
    return batch


def _batch_submit(batch: _Batch, app: App) -> None:
    """Start sending (APNs and FCM at once, in the send threads); returns without waiting."""
    batch.futures = {
        platform: _POOL.submit(_send_platform, app, platform, batch.messages[platform], platform_rows)
        for platform, platform_rows in batch.rows.items()
        if platform_rows
    }


def _batch_finish(dispatch: Dispatch, batch: _Batch, report: SendReport) -> None:
    """Wait for the batch's sends, then write every outcome back in bulk and act on dead tokens."""
    results = batch.results
    dead: dict[int, str] = {}
    credentials: dict[str, str] = {}
    outcomes = {platform: future.result() for platform, future in batch.futures.items()}
    now = timezone.now()
    for platform, platform_outcomes in outcomes.items():
        for row, outcome in zip(batch.rows[platform], platform_outcomes, strict=True):
            report.outcomes[outcome.kind] += 1
            if outcome.kind is OutcomeKind.ACCEPTED:
                results.append(Result(row.id, DS.ACCEPTED, provider_id=outcome.provider_id))
            elif outcome.kind is OutcomeKind.DEAD_TOKEN:
                results.append(Result(row.id, DS.FAILED, reason=outcome.reason))
                dead[row.device_id] = outcome.reason
            elif outcome.kind is OutcomeKind.PERMANENT_FAILURE:
                results.append(Result(row.id, DS.FAILED, reason=outcome.reason))
            elif outcome.kind is OutcomeKind.CREDENTIALS:
                results.append(Result(row.id, DS.FAILED, reason=f"credentials: {outcome.reason}"))
                credentials[platform] = outcome.reason
            else:
                results.append(_retry_or_fail(row, outcome, now=now, deadline=batch.expires[row.id]))
    written = deliveries_write_back(dispatch.pk, results, now=now, platforms=batch.platforms, claims=batch.claims)
    if log.isEnabledFor(logging.INFO):  # its words cost more than the check, per batch
        said, reasons = _reasons_said(results)
        log.info(
            "dispatch %s batch: %s%s",
            dispatch.pk,
            ", ".join(f"{status} {n}" for status, n in sorted(written.items())) or "nothing written",
            f" ({said})" if said else "",
            extra={"dispatch": dispatch.pk, "app": dispatch.app_id, "outcomes": dict(written), "reasons": reasons},
        )
    if dead:
        # A phone registered again while its push was on its way (handed to another user, say) is
        # newer than the request the provider answered: it stays active.
        devices_invalidate(reasons=dead, registered_before=batch.prepared_at)
    for platform, reason in credentials.items():
        _fail_platform(dispatch, platform, reason)


_REASONS_SAID = 3


def _reasons_said(results: list[Result]) -> tuple[str, dict[str, dict[str, int]]]:
    """Why a batch's rows failed, wait for a retry or ended unknown, for its log line: the reasons by
    status, most first (a few in words, all in ``reasons``), e.g. "failed: Unregistered 2; queued:
    transport:connect 1". The provider's reason or Pushdesk's own, never a token or a profile's data."""
    by_status: dict[str, Counter] = {}
    for result in results:
        if result.status != DS.ACCEPTED:
            reason = result.reason or "no reason"
            if reason.startswith("render_error:"):  # the template's message may quote a profile's value
                reason = "render_error"
            by_status.setdefault(result.status, Counter())[reason] += 1
    parts = []
    for status, counted in sorted(by_status.items()):
        common = counted.most_common()
        words = ", ".join(f"{reason} {n}" for reason, n in common[:_REASONS_SAID])
        if len(common) > _REASONS_SAID:
            words += f" and {sum(n for _, n in common[_REASONS_SAID:])} more"
        parts.append(f"{status}: {words}")
    return "; ".join(parts), {status: dict(counted) for status, counted in by_status.items()}


def _unsent(reason: str) -> str:
    """``reason`` for a row that fails with it without being sent: marked ``NOT_SENT`` unless it says so already."""
    return reason if not handed_over(reason) else reason[: 100 - len(NOT_SENT)] + NOT_SENT


def _fail_platform(dispatch: Dispatch, platform: str, reason: str) -> None:
    """The app's credentials for a platform were refused: fail its queued rows at once (no retry storm)."""
    failed = deliveries_finish(
        where="d.dispatch_id = %s AND d.finished_at IS NULL AND d.status = 'queued' AND d.device_id IN "
        "(SELECT id FROM delivery_device WHERE platform = %s)",
        params=[dispatch.pk, platform],
        status=DS.FAILED,
        reason=_unsent(f"credentials: {reason}"),
        now=timezone.now(),
    )
    if failed:
        with transaction.atomic():
            by_platform = (
                Dispatch.objects.select_for_update(no_key=True)
                .values_list("by_platform", flat=True)
                .get(pk=dispatch.pk)
            )
            Dispatch.objects.filter(pk=dispatch.pk).update(
                failed=F("failed") + failed,
                by_platform=platform_counts_add(by_platform or {}, {(platform, DS.FAILED): failed}),
            )
    audit(
        actor=None,
        action="dispatch_credentials_refused",
        obj=dispatch,
        summary={"platform": platform, "reason": reason, "failed": failed},
    )


def credentials_unreadable_said(dispatch: Dispatch, unreadable: list[str]) -> str:
    """Why a dispatch is not sent while its app's credentials cannot be decrypted, for the operator."""
    return (
        f"Dispatch {dispatch.pk} is not sent: {'; '.join(unreadable)}. Its rows stay queued and are sent "
        "once PUSHDESK_ENCRYPTION_KEY holds the key they were stored under (manage.py status names them)."
    )


def dispatch_send(*, dispatch_id: int, time_budget: float | None = None) -> SendReport:
    """Claim and send this dispatch's queued rows until none is ready or the time budget is spent.

    Safe to run in any number of workers at once (claims are atomic) and to run again
    (idempotent). Waits for rows whose retry is due soon; hands over to a fresh task when the
    budget is spent with work left, or when the worker is asked to stop (SIGTERM): then the
    batch in flight is finished first, so a planned stop leaves no row ``unknown``. Finishes the
    dispatch when no row is left to send. Sends nothing on a copy of another instance's database.
    Raises ImproperlyConfigured, having claimed nothing, when the app's credentials cannot be decrypted.
    """
    report = SendReport()
    if instance_refuses(action=f"send dispatch {dispatch_id}"):
        return report
    budget = settings.PUSHDESK_SEND_TASK_SECONDS if time_budget is None else time_budget
    deadline = time.monotonic() + budget
    dispatch = Dispatch.objects.select_related("app").filter(pk=dispatch_id).first()
    if dispatch is None or dispatch.status != Dispatch.Status.SENDING or dispatch.standing:
        return report  # a stream's rows are sent by its senders (delivery.services.stream_senders)
    app = dispatch.app
    unreadable = app_secrets_read(app)  # decrypted here, once, for the provider clients
    if unreadable:
        # Nothing is claimed: the rows stay queued, and the watchdog tries again each minute.
        raise ImproperlyConfigured(credentials_unreadable_said(dispatch, unreadable))
    limits = [(f"app:{app.pk}", app.rate_limit_per_second)]
    if dispatch.rate_limit_per_second:
        limits.append((f"dispatch:{dispatch.pk}", dispatch.rate_limit_per_second))
    with_profiles = dispatch_needs_profiles(dispatch)
    # Judged again at each claim: a send resolved before the quiet hours started may go on inside them.
    quiet = quiet_at_claim(dispatch)
    # One batch sends (in the send threads) while the next is claimed and rendered here.
    in_flight: _Batch | None = None
    # Each claim starts after the last one's rows; from the start again when none is left there,
    # and at least every _RESCAN_SECONDS, so rows queued again below (retries) are not held back.
    after, rescan_at = 0, time.monotonic() + _RESCAN_SECONDS

    def write_back_in_flight() -> None:
        # Before waiting for tokens: the batch's rows are leased, and the wait may outlast it.
        nonlocal in_flight
        if in_flight is not None:
            _batch_finish(dispatch, in_flight, report)
            in_flight = None

    pace = write_pacer()
    try:
        while time.monotonic() < deadline and not stop_requested():
            pace()
            granted = throttle_acquire(
                limits=limits,
                count=settings.PUSHDESK_SEND_BATCH,
                deadline=deadline,
                before_waiting=write_back_in_flight,
            )
            if not granted:
                break
            if not Dispatch.objects.filter(pk=dispatch_id, status=Dispatch.Status.SENDING).exists():
                # Stopped (or paused) while it waited: the tokens go back to the app's other sends.
                throttle_release(granted, granted)
                return report
            if time.monotonic() >= rescan_at:
                after, rescan_at = 0, time.monotonic() + _RESCAN_SECONDS
            rows = deliveries_claim(
                dispatch_id, limit=granted, now=timezone.now(), with_profiles=with_profiles, after=after, quiet=quiet
            )
            if not rows and after:
                after = 0
                rows = deliveries_claim(
                    dispatch_id, limit=granted, now=timezone.now(), with_profiles=with_profiles, quiet=quiet
                )
            all_held = False
            if rows:
                after = max(row.id for row in rows)
                if quiet is not None:
                    rows = [row for row in rows if not row.held]  # held until the quiet hours end
                    all_held = not rows
                if dispatch.kind == Dispatch.Kind.TEST:
                    _skip_untested(rows)
            going = sum(row.goes for row in rows)
            if going < granted:
                # The tokens of messages not sent now (fewer rows were ready, quiet hours held them,
                # or they are skipped at the claim) go back to the app's bucket, for its other sends.
                throttle_release(granted, granted - going)
            if all_held:
                continue  # none of the claim's rows goes now: the next claim starts after them
            if rows:
                report.claimed += len(rows)
                report.batches += 1
                batch = _batch_prepare(dispatch, rows)
                if in_flight is not None:
                    _batch_finish(dispatch, in_flight, report)
                _batch_submit(batch, app)
                in_flight = batch
                continue
            if in_flight is not None:
                _batch_finish(dispatch, in_flight, report)  # its retries may be due now
                in_flight = None
                continue
            next_retry = _next_retry(dispatch_id)
            if next_retry is None:
                break
            if time.monotonic() + (next_retry - timezone.now()).total_seconds() >= deadline:
                break
            # No row of the dispatch is due before it: a bulk dispatch gets no rows after its
            # resolve, and a sender sending it beside this one takes the retries it writes. So
            # neither claim nor read the rows until then (each is a walk over the dispatch's
            # unfinished rows: a million during a provider's outage), only the dispatch (a stop).
            while (wait := (next_retry - timezone.now()).total_seconds()) > 0:
                time.sleep(min(wait, _IDLE_CHECK_SECONDS))
                if (
                    stop_requested()
                    or not Dispatch.objects.filter(pk=dispatch_id, status=Dispatch.Status.SENDING).exists()
                ):
                    break
    finally:
        if in_flight is not None:
            _batch_finish(dispatch, in_flight, report)
    if Delivery.objects.filter(dispatch_id=dispatch_id, finished_at__isnull=True, status=DS.QUEUED).exists():
        handing_over = time.monotonic() >= deadline or stop_requested()
        if handing_over or not _only_future_retries(dispatch_id, now=timezone.now()):
            _enqueue("delivery.tasks.dispatch_send_task", dispatch_id)
        else:
            _schedule_retry(dispatch_id)
    else:
        dispatch_complete_if_done(dispatch_id=dispatch_id)
    return report


def _skip_untested(rows: list[Claimed]) -> None:
    """A test send's rows whose phone is no longer a test device are skipped (``not_test_device``):
    a test is unapproved content for the test list alone, and a row resolved for a phone then
    (marked a tester by mistake) may wait for a retry while it is taken off the list."""
    untested = set(
        Device.objects.filter(pk__in=[row.device_id for row in rows if row.device_id], is_test=False).values_list(
            "pk", flat=True
        )
    )
    for row in rows:
        if row.device_id in untested and not row.skip:
            row.skip = "not_test_device"


# How often a sender claims from its dispatch's first row again, whatever its last claim took.
_RESCAN_SECONDS = 10.0
# How often a sender waiting for its dispatch's next retry looks whether it was stopped.
_IDLE_CHECK_SECONDS = 5.0


def _next_retry(dispatch_id: int) -> datetime | None:
    """When the dispatch's earliest queued row is due (None: no row is queued)."""
    return (
        Delivery.objects.filter(dispatch_id=dispatch_id, finished_at__isnull=True, status=DS.QUEUED)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )


def _only_future_retries(dispatch_id: int, *, now: datetime) -> bool:
    """True when every queued row waits for a retry still to come (none is ready now)."""
    ready = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    return not Delivery.objects.filter(
        ready, dispatch_id=dispatch_id, finished_at__isnull=True, status=DS.QUEUED
    ).exists()


def _schedule_retry(dispatch_id: int) -> None:
    """Run the send task again when the earliest retry is due (one one-off django-q schedule per dispatch)."""
    from django_q.models import Schedule

    when = _next_retry(dispatch_id)
    if when is None:
        return
    from django_q.conf import Conf

    if Conf.SYNC:
        time.sleep(max(0.0, (when - timezone.now()).total_seconds()))
        _enqueue("delivery.tasks.dispatch_send_task", dispatch_id)
        return
    # One schedule per dispatch: django-q's names are not unique, so two send tasks finishing at
    # once are serialised on the dispatch row (the lock write-back takes first, too).
    name = f"dispatch-{dispatch_id}-retry"
    with transaction.atomic():
        Dispatch.objects.select_for_update(no_key=True).filter(pk=dispatch_id).values_list("pk").first()
        schedules = list(Schedule.objects.filter(name=name).order_by("pk"))
        for extra in schedules[1:]:
            extra.delete()
        schedule = schedules[0] if schedules else Schedule(name=name)
        schedule.func = "delivery.tasks.dispatch_send_task"
        schedule.args = repr((dispatch_id,))
        schedule.schedule_type = Schedule.ONCE
        schedule.repeats = 1
        schedule.next_run = when
        schedule.save()
