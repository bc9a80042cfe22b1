"""The send engine: claim, batches, provider calls, write-back and retries.

``dispatch_send`` claims ``queued`` rows in batches (``UPDATE … RETURNING``, ``SKIP LOCKED`` on
PostgreSQL), under the app's and the dispatch's rate limits, renders and sends them through
the providers (APNs and FCM batches at once), and writes the outcomes back in bulk.
Transient failures go back to ``queued`` with a backoff that honours ``Retry-After``, within
the attempts limit and the TTL; dead tokens deactivate their device. A request that timed out
after it was sent (the provider may have it) ends ``unknown``, not retried: a duplicate push is
worse than a missing one.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from liquid.exceptions import LiquidError

from accounts.services import audit
from audiences.models import Profile
from delivery.models import App, Delivery, Device, Dispatch, Platform
from delivery.payloads import (
    APNS_LIMIT,
    RECIPIENT_CONTEXTS,
    apns_options,
    apns_payload,
    encode,
    fcm_message,
    fcm_payload_fits,
    message_render,
    recipient_context,
    spec_is_personalized,
)
from delivery.providers import Outcome, OutcomeKind
from delivery.providers.apns import ApnsClient, ApnsMessage
from delivery.providers.fcm import FcmClient, FcmMessage
from delivery.services.devices import devices_invalidate
from delivery.services.dispatches import (
    DS,
    NO_PLATFORM,
    _dt,
    _enqueue,
    dispatch_complete_if_done,
    platform_counts_add,
)
from delivery.throttle import throttle_acquire
from delivery.transport import Http2Transport
from operations.instance import instance_refuses
from operations.shutdown import stop_requested

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Claimed:
    id: int
    device_id: int | None
    profile_id: int | None
    attempts: int
    token: str = ""
    platform: str = ""
    profile: dict | None = None
    expires_at: datetime | None = None  # its own expiry (a held row, a stream's row); None: the dispatch's
    context: dict | None = None  # a stream's row: its call's context
    variant: int | None = None  # a campaign variant's number: the content it sends


@dataclass(slots=True)
class Result:
    """What to write back for one row."""

    id: int
    status: str
    reason: str = ""
    provider_id: str = ""
    next_attempt_at: datetime | None = None


@dataclass
class SendReport:
    """What one ``dispatch_send`` call did (for logs, tests and the benchmark)."""

    claimed: int = 0
    outcomes: Counter = field(default_factory=Counter)
    batches: int = 0


def _aware(value) -> datetime | None:
    """A datetime read by a raw query: SQLite gives naive UTC text, PostgreSQL aware values."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _claim(dispatch_id: int, *, limit: int, now: datetime, with_profiles: bool = False) -> list[Claimed]:
    """Atomically move up to ``limit`` ready queued rows to ``sending`` under a lease.

    On PostgreSQL one statement claims (``FOR UPDATE SKIP LOCKED``) and returns each row with
    its device's token and platform (and its profile when ``with_profiles``).
    """
    # On PostgreSQL the lease runs on the database's clock, the one the watchdog judges it by:
    # a worker whose clock is behind cannot stamp a lease that is over before it starts. (The
    # embedded SQLite mode runs on one machine.)
    lease = now + timedelta(seconds=settings.PUSHDESK_SEND_LEASE_SECONDS)
    ready = "dispatch_id = %s AND status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= %s)"
    if connection.vendor == "postgresql":
        profile_columns = ", p.external_id, p.locale, p.timezone, p.attributes" if with_profiles else ""
        profile_join = " LEFT JOIN audiences_profile p ON p.id = c.profile_id" if with_profiles else ""
        sql = (
            f"WITH picked AS (SELECT id FROM delivery_delivery WHERE {ready} ORDER BY id LIMIT %s "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
            "FOR UPDATE SKIP LOCKED), "
            "claimed AS (UPDATE delivery_delivery d SET status = 'sending', attempts = d.attempts + 1, "
            "lease_expires_at = now() + %s * interval '1 second' FROM picked WHERE d.id = picked.id "
            "RETURNING d.id, d.device_id, d.profile_id, d.attempts, d.expires_at, d.context, d.variant) "
            "SELECT c.id, c.device_id, c.profile_id, c.attempts, dev.token, dev.platform, c.expires_at, c.context, "
            f"c.variant{profile_columns} "
            f"FROM claimed c LEFT JOIN delivery_device dev ON dev.id = c.device_id{profile_join}"
        )
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [dispatch_id, _dt(now), limit, settings.PUSHDESK_SEND_LEASE_SECONDS])
            fetched = cursor.fetchall()
        rows = []
        for values in fetched:
            row = Claimed(*values[:4], token=values[4] or "", platform=values[5] or "", expires_at=values[6])
            row.context = json.loads(values[7]) if isinstance(values[7], str) else values[7]
            row.variant = values[8]
            if with_profiles and values[9] is not None:
                attributes = values[12]
                if isinstance(attributes, str):
                    attributes = json.loads(attributes)
                row.profile = {
                    "external_id": values[9],
                    "locale": values[10],
                    "timezone": values[11],
                    "attributes": attributes or {},
                }
            rows.append(row)
        rows.sort(key=lambda r: r.id)
        return rows
    sql = (
        "UPDATE delivery_delivery SET status = 'sending', attempts = attempts + 1, lease_expires_at = %s "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
        f"WHERE id IN (SELECT id FROM delivery_delivery WHERE {ready} ORDER BY id LIMIT %s) "
        "RETURNING id, device_id, profile_id, attempts, expires_at, context, variant"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [_dt(lease), dispatch_id, _dt(now), limit])
        rows = [
            Claimed(
                *row[:4],
                expires_at=_aware(row[4]),
                context=json.loads(row[5]) if isinstance(row[5], str) else row[5],
                variant=row[6],
            )
            for row in cursor.fetchall()
        ]
    if rows:
        devices = {
            d[0]: d[1:]
            for d in Device.objects.filter(pk__in=[r.device_id for r in rows if r.device_id]).values_list(
                "id", "token", "platform"
            )
        }
        profiles = _profiles_for(rows) if with_profiles else {}
        for row in rows:
            row.token, row.platform = devices.get(row.device_id, ("", ""))
            row.profile = profiles.get(row.profile_id)
    return rows


def _write_back(
    dispatch_id: int, results: list[Result], *, now: datetime, platforms: dict[int, str] | None = None
) -> Counter:
    """Write outcomes in bulk, only over rows still ``sending``; return the final statuses written.

    The dispatch's counters move by what was written, and so do its counts per platform
    (``platforms``: row id -> platform) in ``by_platform``.

    Holds the dispatch row (``FOR NO KEY UPDATE``, the lock its counters take anyway): a stop
    either committed before, and a retry becomes ``skipped`` / ``stopped`` instead of ``queued``
    (nothing would ever pick it up), or waits for this write and then stops the requeued rows.
    """
    if not results:
        return Counter()
    finals = set(Delivery.FINAL_STATUSES)
    platforms = platforms or {}
    written: Counter = Counter()
    retried: Counter = Counter()
    per_platform: Counter = Counter()  # (platform, final status) -> rows written
    with transaction.atomic(), connection.cursor() as cursor:
        status, by_platform = (
            Dispatch.objects.select_for_update(no_key=True).values_list("status", "by_platform").get(pk=dispatch_id)
        )
        if status != Dispatch.Status.SENDING:
            results = [Result(r.id, DS.SKIPPED, reason="stopped") if r.status == DS.QUEUED else r for r in results]
        if connection.vendor == "postgresql":
            cursor.execute(
                "UPDATE delivery_delivery d SET status = v.status, reason = v.reason, provider_message_id = v.pid, "
                "next_attempt_at = v.next_at, finished_at = CASE WHEN v.status = 'queued' THEN NULL ELSE %s END, "
                "lease_expires_at = NULL "
                "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::timestamptz[]) "
                "AS v(id, status, reason, pid, next_at) "
                "WHERE d.id = v.id AND d.status = 'sending' RETURNING d.id, d.status, d.reason",
                [
                    now,
                    [r.id for r in results],
                    [r.status for r in results],
                    [r.reason[:100] for r in results],
                    [r.provider_id[:200] for r in results],
                    [r.next_attempt_at for r in results],
                ],
            )
            for row_id, status, reason in cursor.fetchall():
                written[status] += 1
                if status == DS.QUEUED:
                    retried[reason] += 1
                else:
                    per_platform[platforms.get(row_id, NO_PLATFORM), status] += 1
        else:
            for r in results:
                cursor.execute(
                    "UPDATE delivery_delivery SET status = %s, reason = %s, provider_message_id = %s, "
                    "next_attempt_at = %s, finished_at = %s, lease_expires_at = NULL "
                    "WHERE id = %s AND status = 'sending'",
                    [
                        r.status,
                        r.reason[:100],
                        r.provider_id[:200],
                        _dt(r.next_attempt_at),
                        None if r.status == DS.QUEUED else _dt(now),
                        r.id,
                    ],
                )
                if cursor.rowcount:
                    written[r.status] += 1
                    if r.status == DS.QUEUED:
                        retried[r.reason[:100]] += 1
                    else:
                        per_platform[platforms.get(r.id, NO_PLATFORM), r.status] += 1
        increments = {status: F(status) + n for status, n in written.items() if status in finals}
        if increments:
            Dispatch.objects.filter(pk=dispatch_id).update(
                **increments, by_platform=platform_counts_add(by_platform or {}, per_platform)
            )
        if retried:
            counts = Dispatch.objects.select_for_update().values_list("retries", flat=True).get(pk=dispatch_id)
            for reason, n in retried.items():
                counts[reason] = counts.get(reason, 0) + n
            Dispatch.objects.filter(pk=dispatch_id).update(retries=counts)
    return written


class _Clients:
    """The provider clients of this worker process, kept per app so connections stay open."""

    def __init__(self):
        self._by_key: dict[tuple, object] = {}

    def get(self, app: App, platform: str):

        fingerprint = (
            app.apns_private_key_fingerprint if platform == Platform.IOS else app.fcm_service_account_fingerprint
        )
        key = (app.pk, platform, fingerprint, app.uses_simulator, app.apns_environment, app.apns_bundle_id)
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


def _needs_profiles(spec: dict) -> bool:
    return spec_is_personalized(spec) or bool(spec.get("variants"))


def dispatch_needs_profiles(dispatch: Dispatch) -> bool:
    """Whether any content the dispatch sends (each variant's) renders per profile."""
    return any(_needs_profiles(spec) for spec in dispatch.all_specs())


def _profiles_for(rows: list[Claimed]) -> dict[int, dict]:
    ids = {r.profile_id for r in rows if r.profile_id}
    return {
        pid: {"external_id": ext, "locale": locale, "timezone": tz, "attributes": attributes or {}}
        for pid, ext, locale, tz, attributes in Profile.objects.filter(pk__in=ids).values_list(
            "id", "external_id", "locale", "timezone", "attributes"
        )
    }


def _send_platform(app: App, platform: str, messages: list, rows: list[Claimed]) -> list[Outcome]:

    try:
        client = CLIENTS.get(app, platform)
    except ValueError:
        return [Outcome(OutcomeKind.CREDENTIALS, reason=f"not_configured:{platform}") for _ in rows]
    if platform == Platform.IOS:
        return client.send([ApnsMessage(token=r.token, **m) for r, m in zip(rows, messages, strict=True)])
    return client.send([FcmMessage(message=m) for m in messages])


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
    platforms: dict[int, str] = field(default_factory=dict)  # row id -> its device's platform
    futures: dict = field(default_factory=dict)


class _Contents:
    """What a batch renders per content: a dispatch sends one, or one per campaign variant."""

    def __init__(self, dispatch: Dispatch, own_contexts: bool, now: datetime):
        self.dispatch, self.own_contexts, self.now = dispatch, own_contexts, now
        self._by_variant: dict[int | None, tuple] = {}

    def get(self, variant: int | None) -> tuple[dict, int, datetime, dict, object]:
        """(spec, ttl, the dispatch's expiry, APNs options, the message shared by all or None)."""
        found = self._by_variant.get(variant)
        if found is None:
            dispatch = self.dispatch
            spec = dispatch.spec_for(variant)
            ttl = int(spec.get("ttl_seconds") or 0)
            shared = (
                None
                if _needs_profiles(spec) or self.own_contexts
                else message_render(spec, profile={}, context=recipient_context(dispatch.context, None))
            )
            expires = (dispatch.started_at or self.now) + timedelta(seconds=ttl)
            found = self._by_variant[variant] = (spec, ttl, expires, apns_options(spec), shared)
        return found


def _batch_prepare(dispatch: Dispatch, rows: list[Claimed]) -> _Batch:
    """Render every claimed row and build its provider message; rows that cannot be sent fail here."""
    now = timezone.now()
    batch = _Batch(
        rows={Platform.IOS: [], Platform.ANDROID: []},
        messages={Platform.IOS: [], Platform.ANDROID: []},
        results=[],
        expires={},
    )
    results = batch.results
    own_contexts = bool((dispatch.context or {}).get(RECIPIENT_CONTEXTS)) or any(r.context for r in rows)
    contents = _Contents(dispatch, own_contexts, now)
    batch.platforms = {row.id: row.platform or NO_PLATFORM for row in rows}
    for row in rows:
        if not row.token:
            results.append(Result(row.id, DS.FAILED, reason="device_deleted"))
            continue
        spec, ttl, dispatch_expires, options, shared = contents.get(row.variant)
        # The TTL runs once per delivery, from the dispatch's start or the end of the row's hold:
        # each attempt sends what remains. A TTL of 0 is "now or never" (APNs 0, FCM "0s").
        expires = batch.expires[row.id] = row.expires_at or dispatch_expires
        remaining = int((expires - now).total_seconds())
        if ttl and remaining <= 0:
            results.append(Result(row.id, DS.FAILED, reason="expired (TTL over before it could be sent)"))
            continue
        expiration, ttl_left = (int(expires.timestamp()), remaining) if ttl else (0, 0)
        try:
            message = shared or message_render(
                spec,
                profile=row.profile or {"attributes": {}},
                context={**(dispatch.context or {}), **row.context}
                if row.context
                else recipient_context(dispatch.context, row.profile_id),
            )
        except LiquidError as exc:
            results.append(Result(row.id, DS.FAILED, reason=f"render_error: {exc.message}"[:100]))
            continue
        if row.platform == Platform.IOS:
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
    written = _write_back(dispatch.pk, results, now=now, platforms=batch.platforms)
    log.info(
        "dispatch %s batch: %s",
        dispatch.pk,
        ", ".join(f"{status} {n}" for status, n in sorted(written.items())) or "nothing written",
        extra={"dispatch": dispatch.pk, "app": dispatch.app_id, "outcomes": dict(written)},
    )
    if dead:
        devices_invalidate(reasons=dead)
    for platform, reason in credentials.items():
        _fail_platform(dispatch, platform, reason)


def _fail_platform(dispatch: Dispatch, platform: str, reason: str) -> None:
    """The app's credentials for a platform were refused: fail its queued rows at once (no retry storm)."""
    failed = Delivery.objects.filter(dispatch_id=dispatch.pk, status=DS.QUEUED, device__platform=platform).update(
        status=DS.FAILED, reason=f"credentials: {reason}"[:100], finished_at=timezone.now(), next_attempt_at=None
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


def dispatch_send(*, dispatch_id: int, time_budget: float | None = None) -> SendReport:
    """Claim and send this dispatch's queued rows until none is ready or the time budget is spent.

    Safe to run in any number of workers at once (claims are atomic) and to run again
    (idempotent). Waits for rows whose retry is due soon; hands over to a fresh task when the
    budget is spent with work left, or when the worker is asked to stop (SIGTERM): then the
    batch in flight is finished first, so a planned stop leaves no row ``unknown``. Finishes the
    dispatch when no row is left to send. Sends nothing on a copy of another instance's database.
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
    limits = [(f"app:{app.pk}", app.rate_limit_per_second)]
    if dispatch.rate_limit_per_second:
        limits.append((f"dispatch:{dispatch.pk}", dispatch.rate_limit_per_second))
    with_profiles = dispatch_needs_profiles(dispatch)
    # One batch sends (in the send threads) while the next is claimed and rendered here.
    in_flight: _Batch | None = None

    def write_back_in_flight() -> None:
        # Before waiting for tokens: the batch's rows are leased, and the wait may outlast it.
        nonlocal in_flight
        if in_flight is not None:
            _batch_finish(dispatch, in_flight, report)
            in_flight = None

    try:
        while time.monotonic() < deadline and not stop_requested():
            granted = throttle_acquire(
                limits=limits,
                count=settings.PUSHDESK_SEND_BATCH,
                deadline=deadline,
                before_waiting=write_back_in_flight,
            )
            if not granted:
                break
            if not Dispatch.objects.filter(pk=dispatch_id, status=Dispatch.Status.SENDING).exists():
                return report
            rows = _claim(dispatch_id, limit=granted, now=timezone.now(), with_profiles=with_profiles)
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
            next_retry = (
                Delivery.objects.filter(dispatch_id=dispatch_id, status=DS.QUEUED)
                .order_by("next_attempt_at")
                .values_list("next_attempt_at", flat=True)
                .first()
            )
            if next_retry is None:
                break
            wait = (next_retry - timezone.now()).total_seconds()
            if time.monotonic() + wait >= deadline:
                break
            time.sleep(max(0.0, min(wait, 5.0)))
    finally:
        if in_flight is not None:
            _batch_finish(dispatch, in_flight, report)
    if Delivery.objects.filter(dispatch_id=dispatch_id, status=DS.QUEUED).exists():
        handing_over = time.monotonic() >= deadline or stop_requested()
        if handing_over or not _only_future_retries(dispatch_id, now=timezone.now()):
            _enqueue("delivery.tasks.dispatch_send_task", dispatch_id)
        else:
            _schedule_retry(dispatch_id)
    else:
        dispatch_complete_if_done(dispatch_id=dispatch_id)
    return report


def _only_future_retries(dispatch_id: int, *, now: datetime) -> bool:
    """True when every queued row waits for a retry still to come (none is ready now)."""
    ready = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    return not Delivery.objects.filter(ready, dispatch_id=dispatch_id, status=DS.QUEUED).exists()


def _schedule_retry(dispatch_id: int) -> None:
    """Run the send task again when the earliest retry is due (one one-off django-q schedule per dispatch)."""
    from django_q.models import Schedule

    when = (
        Delivery.objects.filter(dispatch_id=dispatch_id, status=DS.QUEUED)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
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
