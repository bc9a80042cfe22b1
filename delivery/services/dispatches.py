"""Dispatches: the gate, create, prepare, stop, recount, complete and the watchdog.

The path of a send (DESIGN.md, "The send pipeline"):

1. ``dispatch_create`` asks the gate of its kind (campaigns plug approval in with
   ``dispatch_gate_register``), freezes the content on the Dispatch and queues ``dispatch_prepare``.
2. ``dispatch_prepare`` resolves the audience to deliveries with one ``INSERT … SELECT`` (for a
   large segment, one per range of profile ids, written at once on connections of their own;
   skips recorded with their reason) and starts ``PUSHDESK_SEND_TASKS`` send tasks.
3. ``dispatch_send`` (``delivery.services.sending``) claims, sends and writes back in batches.
4. A claimed row carries a lease: a worker that dies leaves rows ``sending``;
   ``deliveries_expire_leases`` turns them ``unknown`` once the lease is over. They are never
   sent again: a duplicate push is worse than a missing one. ``dispatches_watch`` runs every
   minute, finishes dispatches and restarts those whose send tasks were lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import Now
from django.utils import timezone

from accounts.models import User
from accounts.selectors import can, visible_named
from accounts.services import audit
from audiences.models import Profile
from audiences.rules.schema import RulesInvalid
from config.labels import numbered
from delivery.models import App, Delivery, DeliveryRollup, Device, DeviceTombstone, Dispatch, PushContent
from delivery.payloads import (
    spec_validate,
)
from delivery.rules import SKIPPING_RULES, local_time_apply, rules_apply
from delivery.services.rollups import deliveries_finish, rollup_add_made, rollup_made_sql
from delivery.variants import HOLDOUT, bucket_sql, in_sample_sql, variant_sql
from operations.instance import ensure_instance_claimed, instance_refuses

DS = Delivery.Status


class GateClosed(PermissionDenied):
    """The gate of a dispatch's kind refused it (not approved, not live, outside its schedule...)."""


DispatchGate = Callable[..., None]
_GATES: dict[str, DispatchGate] = {}


def dispatch_gate_register(*, kind: str, gate: DispatchGate) -> None:
    """Plug the gate of a dispatch kind: ``gate(app=, source_id=, spec=, by=, context=, sends=)``
    raises GateClosed to refuse. ``context`` is what the dispatch gives its content (a journey's
    names its push step, whose approved content alone it may send); ``sends`` how and to whom it
    sends it (``segment_id``, ``profile_ids``, ``purpose``, ``rate_limit_per_second``,
    ``time_zone``, ``local_time``, ``local_default_timezone``, ``local_late_minutes``), which an
    approval covers as much as the content (a campaign's audience, purpose, throttle, schedule's
    zone, and whether, and when, it sends at each profile's local time).

    Campaigns register theirs (approved, live, fingerprint unchanged) when their app loads.
    A kind without a gate is refused: the send path fails closed.
    """
    _GATES[kind] = gate


def _test_gate(
    *, app: App, source_id: int | None, spec: dict, by: User | None, context: dict, sends: dict | None = None
) -> None:
    # ``sends`` is not read: a test goes to the app's test devices alone, whatever else is asked.
    if by is None or not by.has_perm("delivery.test_send_pushcontent"):
        raise GateClosed("Your role may not send tests.")
    content = PushContent.objects.filter(pk=source_id, app=app).first()
    if content is None or not can(by, "delivery.test_send_pushcontent", content):
        raise GateClosed("You have no access to this push content.")


_GATES[Dispatch.Kind.TEST] = _test_gate

AudienceCheck = Callable[[Dispatch], None]
RefusalHook = Callable[[Dispatch, str], None]
# kind → (its audience check, what it records when the check refuses)
_AUDIENCE_CHECKS: dict[str, tuple[AudienceCheck, RefusalHook | None]] = {}


def dispatch_audience_check_register(*, kind: str, check: AudienceCheck, refused: RefusalHook | None = None) -> None:
    """Plug how a kind tells, when a dispatch's segment is about to be read, that it is still the
    audience its gate let through: ``check(dispatch)`` raises GateClosed to refuse (campaigns: the
    segment's definition is still the approved one). The gate judged it when the dispatch was made;
    the rows are written later, by the prepare task, and a segment may be edited in between.
    ``refused(dispatch, reason)`` records the refusal in the transaction that ends the dispatch
    ``failed``, before any row is written (campaigns: the occurrence that made the dispatch, which
    said it was sent, says it was refused)."""
    _AUDIENCE_CHECKS[kind] = (check, refused)


AcceptedLateHook = Callable[[Dispatch], None]
# kind → what follows a dispatch of it judged done by late answers (``dispatch_accepted_late``)
_ACCEPTED_LATE: dict[str, AcceptedLateHook] = {}


def dispatch_accepted_late_register(*, kind: str, then: AcceptedLateHook) -> None:
    """Plug what a kind does when a dispatch of it, ended ``failed`` for having none accepted, is
    judged ``done`` by answers that came after their rows' lease ran out: ``then(dispatch)``, once
    that is committed, without the dispatch's lock (campaigns: a campaign the tick ended ``failed``
    on that send completes)."""
    _ACCEPTED_LATE[kind] = then


def content_reference_kept(content_id: int | None) -> int | None:
    """``content_id`` while that push content exists, else None: what a new dispatch may refer to.

    A dispatch sends its frozen copy of the content; the content itself may have been deleted since
    it was frozen (a journey's step content once the journey was approved), and a deletion empties
    the reference of the dispatches made before it. Call it inside the transaction that creates the
    dispatch: the content's row is held until it commits, so a deletion waits for it.
    """
    if content_id is None:
        return None
    kept = PushContent.objects.select_for_update(no_key=True).filter(pk=content_id).values_list("pk", flat=True)
    return content_id if kept.exists() else None


def dispatch_gate_ask(
    *,
    kind: str,
    app: App,
    source_id: int | None,
    spec: dict,
    by: User | None,
    context: dict | None,
    sends: dict,
    variants: list[dict] | None = None,
    holdout_share: int = 0,
    sample: dict | None = None,
) -> None:
    """Ask the gate of ``kind`` about a send (``dispatch_create``'s, or a stream's as it opens).
    Raises GateClosed when it refuses, or when the kind has none: the send path fails closed."""
    gate = _GATES.get(kind)
    if gate is None:
        raise GateClosed(f"No gate is registered for '{kind}' dispatches: nothing is sent.")
    asked = {"app": app, "source_id": source_id, "spec": spec, "by": by, "context": context or {}, "sends": sends}
    if sample:
        gate(**asked, variants=variants or [], holdout_share=holdout_share, sample=sample)
    elif variants or holdout_share:
        gate(**asked, variants=variants or [], holdout_share=holdout_share)
    else:
        gate(**asked)


def dispatch_create(
    *,
    app_id: int,
    kind: str,
    spec: dict,
    by: User | None = None,
    content_id: int | None = None,
    segment_id: int | None = None,
    profile_ids: list[int] | None = None,
    context: dict | None = None,
    source_id: int | None = None,
    label: str = "",
    rate_limit_per_second: int | None = None,
    purpose: str = "marketing",
    local_time: str = "",
    local_default_timezone: str = "",
    local_late_minutes: int | None = None,
    time_zone: str = "",
    variants: list[dict] | None = None,
    holdout_share: int = 0,
    sample: dict | None = None,
) -> Dispatch:
    """Open a send run after its gate agrees; the audience is resolved and sent by worker tasks.

    ``spec`` (a PushContent's ``spec()``) is copied and frozen on the Dispatch. The audience is
    ``segment_id``, or ``profile_ids``, or, for a test send, the app's test devices.
    ``variants`` (``[{number, label, content_id, share, spec}]``, a campaign's) split the audience
    by a hash of profile and ``source_id``, and ``holdout_share`` percent get nothing; the gate is
    asked about them too. ``sample`` (``{part: 'sample' or 'rest', share, test}``, a winner-mode
    campaign's) narrows the audience to its sample of ``share`` percent, or to the rest, by a second
    hash of profile and ``source_id``; the gate is asked about it. ``time_zone`` (a campaign's) is
    the zone its content's ``now`` renders in (at a ``local_time``, each profile's own); "": UTC.
    ``local_time`` (a wall-clock time, ISO), ``local_default_timezone`` and ``local_late_minutes``
    hold each profile's rows until that time in its zone; the gate is asked about them too.
    Raises GateClosed when the kind's gate refuses (or the kind has none), ValidationError when
    the spec is not sendable, InstanceMismatch on a copy of another instance's database.
    """
    ensure_instance_claimed(action=f"open a {kind} dispatch")
    app = App.objects.get(pk=app_id)
    sends = {
        "segment_id": segment_id,
        "profile_ids": profile_ids,
        "purpose": purpose,
        "rate_limit_per_second": rate_limit_per_second,
        "time_zone": time_zone,
        "local_time": local_time,
        "local_default_timezone": local_default_timezone,
        "local_late_minutes": local_late_minutes,
    }
    dispatch_gate_ask(
        kind=kind,
        app=app,
        source_id=source_id,
        spec=spec,
        by=by,
        context=context,
        sends=sends,
        variants=variants,
        holdout_share=holdout_share,
        sample=sample,
    )
    spec_validate(spec)
    for variant in variants or []:
        spec_validate(variant["spec"])
    if kind != Dispatch.Kind.TEST and segment_id is None and profile_ids is None:
        raise ValidationError({"audience": "A dispatch needs a segment or a list of profiles."})
    if kind == Dispatch.Kind.TEST:
        _test_devices_check(app, by)
    with transaction.atomic():
        dispatch = Dispatch.objects.create(
            app=app,
            kind=kind,
            source_id=source_id,
            label=label[:300],
            content_id=content_reference_kept(content_id),
            content_spec=dict(spec),
            context=context or {},
            variants=list(variants or []),
            holdout_share=holdout_share,
            sample=dict(sample or {}),
            segment_id=segment_id,
            profile_ids=list(profile_ids) if profile_ids is not None else None,
            rate_limit_per_second=rate_limit_per_second,
            purpose=purpose,
            local_time=local_time,
            local_default_timezone=local_default_timezone,
            local_late_minutes=local_late_minutes,
            time_zone=time_zone,
            created_by=by if by is not None and by.pk else None,
        )
        audit(actor=by, action="dispatch_created", obj=dispatch, summary={"kind": kind, "source_id": source_id})
        _enqueue_on_commit("delivery.tasks.dispatch_prepare_task", dispatch.pk)
    return dispatch


def _test_devices_reached(app_id: int) -> int:
    """How many active test devices ``app_id`` has, counted through the (app, is_test) index no
    further than one past ``PUSHDESK_TEST_SEND_MAX_DEVICES``: enough to tell past the cap."""
    cap = settings.PUSHDESK_TEST_SEND_MAX_DEVICES
    return Device.objects.filter(app_id=app_id, is_test=True, active=True)[: cap + 1].count()


def _test_devices_check(app: App, by: User | None) -> None:
    """Raise ValidationError (on ``audience``) when a test send of ``app`` would reach no phone, or
    more than ``PUSHDESK_TEST_SEND_MAX_DEVICES``: a test is content not yet approved, and one to
    a test list grown to thousands of phones would be a campaign nobody approved."""
    reached = _test_devices_reached(app.pk)
    if 0 < reached <= settings.PUSHDESK_TEST_SEND_MAX_DEVICES:
        return
    # The app is named as the content's page names it: by number to a sender granted the content alone.
    named = f"'{app}'" if visible_named(by, App, [app.pk]) else numbered("app", app.pk)
    if not reached:  # a test send to nobody would complete at once and read as sent
        raise ValidationError(
            {
                "audience": f"{named} has no active test device: an Administrator marks a device of the app as a "
                "test device (Devices → Mark as test devices), then send the test."
            }
        )
    raise ValidationError({"audience": f"{named} {_test_devices_too_many(app.pk)} Nothing was sent."})


def _test_devices_too_many(app_id: int) -> str:
    """What refuses a test send of ``app_id`` for its count of active test devices, past the cap."""
    counted = Device.objects.filter(app_id=app_id, is_test=True, active=True).count()
    return (
        f"has {counted} active test devices, more than a test send reaches "
        f"({settings.PUSHDESK_TEST_SEND_MAX_DEVICES}, PUSHDESK_TEST_SEND_MAX_DEVICES): an Administrator unmarks the "
        "phones not used for tests (Devices → Unmark as test devices), then send the test."
    )


def _test_devices_recheck(dispatch: Dispatch) -> None:
    """Raise GateClosed when the test send's app has more active test devices than the cap now: it
    was checked when the test was asked (``_test_devices_check``), and devices marked before its
    resolve would have made it reach more."""
    if _test_devices_reached(dispatch.app_id) > settings.PUSHDESK_TEST_SEND_MAX_DEVICES:
        raise GateClosed(f"The app {_test_devices_too_many(dispatch.app_id)} Nothing was sent.")


def _enqueue_on_commit(func: str, *args) -> None:
    """Queue the task once the transaction commits. A broker that fails then is logged, not raised:
    what committed stays committed, the caller's loop goes on, and the watchdog queues it again."""
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task(func, *args, q_options={"timeout": _task_timeout()}), robust=True)


def _enqueue(func: str, *args) -> None:
    from django_q.tasks import async_task

    async_task(func, *args, q_options={"timeout": _task_timeout()})


def _task_timeout() -> int:
    return int(settings.PUSHDESK_SEND_TASK_SECONDS + settings.PUSHDESK_SEND_LEASE_SECONDS)


def _dt(value: datetime | None):
    return connection.ops.adapt_datetimefield_value(value) if value is not None else None


def _audience_sql(dispatch: Dispatch) -> tuple[str, list]:
    """The SELECT of the profiles targeted (one column, ``id``) and its parameters."""
    if dispatch.segment_id is not None:
        from audiences.models import Segment
        from audiences.rules.compiler import segment_profiles

        segment = Segment.objects.filter(pk=dispatch.segment_id).first()
        audience: QuerySet = segment_profiles(segment, union=True) if segment is not None else Profile.objects.none()
    else:
        audience = Profile.objects.filter(pk__in=dispatch.profile_ids or [])
    if audience.query.is_empty():
        return "SELECT id FROM audiences_profile WHERE 1 = 0", []
    sql, params = audience.order_by().values("id").query.sql_with_params()
    return sql, list(params)


_RESOLVE_COLUMNS = (
    "dispatch_id, device_id, profile_id, status, reason, provider_message_id, attempts, finished_at, variant"
)


def _sent_in_sample_sql(dispatch: Dispatch) -> str:
    """A SQL condition on ``dev``: the device was sent the push of the sample this dispatch is the
    rest of (a winner-mode campaign's), or false. The rest leaves out the sample's profiles by a
    hash of their ids, not their phones: a phone moved since from a profile of the sample to one of
    the rest (registered again under another profile, or its profile merged into another) would
    get the campaign twice. A row of the sample sent, or that may have been (any but ``skipped``),
    counts; one skipped (the holdout, a phone moved before its turn) never reached the phone.
    A phone whose device was deleted since and registered again (same token, a new device) is
    known by its ``DeviceTombstone``: the device holding the token now is its successor. Both sets
    are one hashed subquery, read once: no cost per row of the rest beyond the lookup it had."""
    if not dispatch.sample or dispatch.sample.get("part") != "rest":
        return "(1 = 0)"
    sample_id = (
        Dispatch.objects.filter(
            kind=dispatch.kind,
            source_id=dispatch.source_id,
            sample__part="sample",
            sample__test=dispatch.sample.get("test"),
        )
        .values_list("pk", flat=True)
        .first()
    )
    if sample_id is None:
        return "(1 = 0)"
    # Integers of ours: the subquery is read once (hashed), through the (dispatch, device) index.
    sample_id, app_id = int(sample_id), int(dispatch.app_id)
    return (
        f"(dev.id IN (SELECT s.device_id FROM delivery_delivery s WHERE s.dispatch_id = {sample_id} "  # noqa: S608
        f"AND s.device_id IS NOT NULL AND s.status <> '{DS.SKIPPED}' "
        f"UNION ALL SELECT t.successor_id FROM {DeviceTombstone._meta.db_table} t "
        f"WHERE t.app_id = {app_id} AND t.successor_id IS NOT NULL AND EXISTS (SELECT 1 FROM delivery_delivery s "
        f"WHERE s.dispatch_id = {sample_id} AND s.device_id = t.device_id AND s.queued_at IS NULL "
        f"AND s.status <> '{DS.SKIPPED}')))"
    )


def _resolve_rows_sql(
    dispatch: Dispatch, *, now: datetime, profiles_between: tuple[int, int] | None = None
) -> tuple[str, list]:
    """The SELECT of the rows a resolve writes (``_RESOLVE_COLUMNS``, and each row's device's
    platform, for the rollup) and its parameters: the app's test devices for a test send, else
    each profile of the audience with its devices of the app (or none); only the profiles whose
    ids are ``profiles_between`` (inclusive) when given, for a slice of a resolve."""
    # The holdout (the control group) gets nothing, and is counted. Only a row that would be sent
    # is held out: a row without a device or with a phone not opted in keeps that reason, as in
    # every variant. A variant's profiles count as reached only when a push was accepted, so a
    # holdout that kept the unreachable would weigh profiles no push could reach against profiles
    # one did, and the reports' funnel ("opted in") would count them.
    holdout = f"COALESCE(p.variant, -1) = {HOLDOUT}"
    sent = _sent_in_sample_sql(dispatch)
    status_sql = (
        f"CASE WHEN dev.id IS NULL OR {holdout} OR {sent} THEN '{DS.SKIPPED}' "
        f"WHEN dev.push_enabled THEN '{DS.QUEUED}' ELSE '{DS.SKIPPED}' END"
    )
    reason_sql = (
        f"CASE WHEN dev.id IS NULL THEN 'no_device' WHEN NOT dev.push_enabled THEN 'not_opted_in' "
        f"WHEN {sent} THEN 'sent_in_sample' WHEN {holdout} THEN 'holdout' ELSE '' END"
    )
    finished_sql = (
        f"CASE WHEN dev.id IS NOT NULL AND dev.push_enabled AND NOT {holdout} AND NOT {sent} THEN NULL ELSE %s END"
    )

    def rows(profile: str) -> str:  # (constants and the ORM's own SQL; values are bound)
        return (
            f"%s AS dispatch_id, dev.id AS device_id, {profile} AS profile_id, {status_sql} AS status, "
            f"{reason_sql} AS reason, '' AS provider_message_id, 0 AS attempts, {finished_sql} AS finished_at, "
            "p.variant AS variant, dev.platform"
        )

    if dispatch.kind == Dispatch.Kind.TEST:
        source = (
            f"SELECT {rows('dev.profile_id')} "  # noqa: S608
            "FROM delivery_device dev, (SELECT CAST(NULL AS integer) AS variant) p "
            "WHERE dev.app_id = %s AND dev.is_test AND dev.active"
        )
        return source, [dispatch.pk, _dt(now), dispatch.app_id]
    audience_sql, audience_params = _audience_sql(dispatch)
    # Each profile's variant from a hash of it and the campaign: stable across retries and occurrences.
    bucket = bucket_sql("a.id", vendor=connection.vendor, salt=dispatch.source_id or 0)
    variant = variant_sql("a.bucket", variants=dispatch.variants, holdout_share=dispatch.holdout_share)
    # (Integers formatted by delivery.variants and the ORM's own SQL; values are bound.)
    # A winner-mode campaign's sample (or the rest): a second hash, independent of the variant's.
    conditions = []
    if dispatch.sample:
        conditions.append(
            in_sample_sql(
                "a.id",
                vendor=connection.vendor,
                salt=dispatch.source_id or 0,
                share=dispatch.sample["share"],
                rest=dispatch.sample.get("part") == "rest",
            )
        )
    device_between = ""
    if profiles_between is not None:
        # Integers of ours. The devices' side of the join gets its own bound: PostgreSQL carries
        # an equality over a join, not a range, and would read every device for each slice.
        low, high = (int(bound) for bound in profiles_between)
        conditions.append(f"a.id BETWEEN {low} AND {high}")
        device_between = f" AND dev.profile_id BETWEEN {low} AND {high}"
    where = "WHERE " + " AND ".join(conditions) if conditions else ""
    profiles = (
        f"SELECT a.id, {variant} AS variant FROM (SELECT a.id, {bucket} AS bucket FROM ({audience_sql}) a {where}) a"  # noqa: S608
        if dispatch.variants
        else f"SELECT a.id, CAST(NULL AS integer) AS variant FROM ({audience_sql}) a {where}"  # noqa: S608
    )
    source = (
        f"SELECT {rows('p.id')} FROM ({profiles}) p "  # noqa: S608
        f"LEFT JOIN delivery_device dev ON dev.profile_id = p.id AND dev.app_id = %s AND dev.active{device_between}"
    )
    return source, [dispatch.pk, _dt(now), *audience_params, dispatch.app_id]


# What a slice counts when another slice took some of its devices: its rows that were written
# (those without a device, which no other slice writes, and those whose device it inserted). Each
# branch is guarded by one comparison of two counts, made once (a one-time filter): the common case
# (every row written) counts ``src`` as it is, without a join.
_SLICE_MADE = (
    "whole AS MATERIALIZED (SELECT (SELECT count(*) FROM ins) = (SELECT count(*) FROM src) AS yes), "
    "made AS (SELECT * FROM src WHERE (SELECT yes FROM whole) "
    "UNION ALL SELECT * FROM src WHERE NOT (SELECT yes FROM whole) "
    "AND (device_id IS NULL OR device_id IN (SELECT device_id FROM ins))) "
)


def _resolve_insert(
    cursor, dispatch: Dispatch, *, now: datetime, profiles_between=None, shard: int = 0, skip_taken: bool = False
) -> Counter:
    """PostgreSQL: write the dispatch's rows (those of ``profiles_between`` only, when given) and
    count them into the rollup's ``shard`` in one statement; return their counts by outcome.

    No row of these profiles exists yet for the dispatch: it is still preparing, under its lock,
    and leftovers of a resolve that died were deleted first. In one statement (one snapshot) the
    audience holds each profile once and a device has one profile, so no two rows share a device.
    The statements of a sliced resolve each read in a snapshot of their own: a device moved
    meanwhile from a profile of one slice to a profile of another is seen by both, and the unique
    index on (dispatch, device) refuses the later one's statement. That slice runs again with
    ``skip_taken``: it leaves such rows out (ON CONFLICT DO NOTHING on that index) and counts only
    the rows it wrote (``_SLICE_MADE``), so the device is targeted once, under the profile that held
    it when the first slice read it. Only then: ON CONFLICT DO NOTHING cost a third of the insert
    at 1M."""
    source, params = _resolve_rows_sql(dispatch, now=now, profiles_between=profiles_between)
    insert = f"INSERT INTO delivery_delivery ({_RESOLVE_COLUMNS}) SELECT {_RESOLVE_COLUMNS} FROM src"  # noqa: S608 (constants)
    if skip_taken:
        insert += " ON CONFLICT (dispatch_id, device_id) WHERE queued_at IS NULL DO NOTHING RETURNING device_id"
    # In profile order: the rows' index entries (device, profile) then go in in order. A hash
    # join's order, which fresh statistics choose at a million rows, scattered them over indexes
    # larger than PostgreSQL's buffers: 22 s against 12 s, sort included.
    cursor.execute(
        f"WITH src AS MATERIALIZED ({source} ORDER BY profile_id), "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
        f"ins AS ({insert}) "
        + (", " + _SLICE_MADE if skip_taken else "")
        + rollup_made_sql(source="made" if skip_taken else "src", shard=shard),
        [*params, dispatch.pk, _dt(dispatch.created_at), _dt(dispatch.created_at)],
    )
    counts = Counter()
    for outcome, n in cursor.fetchall():
        counts[outcome] += n
    return counts


def _resolve_leftovers_delete(cursor, dispatch_id: int) -> None:
    """Delete what a sliced resolve of the dispatch that died part-way committed: its rows and
    their rollup rows, in one statement.

    A slice of it whose server process still runs (its worker killed) holds rows not committed,
    which this does not see; it never commits (its transaction never gets its COMMIT), and a row
    written now for one of its devices waits on the unique index until it has rolled back."""
    cursor.execute(
        "WITH gone AS (DELETE FROM delivery_delivery WHERE dispatch_id = %s AND queued_at IS NULL) "  # noqa: S608 (a constant)
        f"DELETE FROM {DeliveryRollup._meta.db_table} WHERE dispatch_id = %s",
        [dispatch_id, dispatch_id],
    )


def _resolve_slices(dispatch: Dispatch) -> tuple[list[tuple[int, int]], bool]:
    """How a resolve is written: the ranges of profile ids a segment's resolve is split into, each
    written by its own connection at once (PostgreSQL runs one statement on one core), or none
    (one statement: a test send, a list of profiles, a table of few profiles, SQLite); and whether
    rows of a sliced resolve that died part-way are there to delete first. One query, asked for
    a segment's dispatch on PostgreSQL only (no other is ever sliced).

    The ranges split the profiles' ids evenly, not the audience: a segment of the newest profiles
    (an import's, say) is written by the last slice alone, no faster than by one statement."""
    if connection.vendor != "postgresql" or dispatch.segment_id is None or dispatch.kind == Dispatch.Kind.TEST:
        return [], False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT min(id) FROM audiences_profile), (SELECT max(id) FROM audiences_profile), "
            "EXISTS (SELECT FROM delivery_delivery WHERE dispatch_id = %s AND queued_at IS NULL)",
            [dispatch.pk],
        )
        low, high, leftovers = cursor.fetchone()
    count = settings.PUSHDESK_RESOLVE_SLICES
    if count < 2 or low is None or high - low + 1 < count * settings.PUSHDESK_RESOLVE_SLICE_PROFILES:
        return [], leftovers
    step = -(-(high - low + 1) // count)
    return [(start, min(high, start + step - 1)) for start in range(low, high + 1, step)], leftovers


def _in_own_transaction(work: Callable[[], Counter | None]) -> Counter | None:
    """Run ``work`` in a transaction on this thread's own connection, then close that connection
    (a pool thread's connection would otherwise outlive the resolve)."""
    try:
        with transaction.atomic():
            return work()
    finally:
        connection.close()


def _resolve_in_slices(
    dispatch: Dispatch, *, slices: list[tuple[int, int]], now: datetime, leftovers: bool = False
) -> Counter:
    """Write a dispatch's rows as ``slices`` statements at once, one per range of profile ids,
    each committed on a connection of its own; return their counts by outcome.

    The rows of a dispatch still preparing are sent by no one, so a slice may commit before the
    others. A resolve that dies part-way leaves the slices that committed: the next one (the
    watchdog queues it again) deletes them, and their rollup rows, before writing. Each slice
    counts into a rollup shard of its own, so none waits for another's rollup rows."""

    def leftovers_delete() -> None:
        with connection.cursor() as cursor:
            _resolve_leftovers_delete(cursor, dispatch.pk)

    def writer(shard: int, between: tuple[int, int]) -> Callable[[], Counter]:
        def work() -> Counter:
            with connection.cursor() as cursor:
                try:
                    with transaction.atomic():  # a savepoint: the statement again if it fails
                        return _resolve_insert(cursor, dispatch, now=now, profiles_between=between, shard=shard)
                except IntegrityError:
                    # A device another slice took (it moved between their snapshots): this slice's
                    # statement again, leaving such devices out. Only then, as it costs the insert
                    # about a third at 1M (a race of seconds, against every large send).
                    return _resolve_insert(
                        cursor, dispatch, now=now, profiles_between=between, shard=shard, skip_taken=True
                    )

        return work

    with ThreadPoolExecutor(max_workers=len(slices)) as pool:
        if leftovers:
            # Committed before the slices start: a row deleted but not yet committed would make a
            # slice's row of the same device wait on the unique index for this transaction, which
            # waits for the slices.
            pool.submit(_in_own_transaction, leftovers_delete).result()
        written = [pool.submit(_in_own_transaction, writer(shard, between)) for shard, between in enumerate(slices)]
    # Leaving the pool waited for every slice; a slice's exception is raised here, after all ended.
    return sum((slice_.result() for slice_ in written), Counter())


def dispatch_prepare(*, dispatch_id: int, send_inline: bool = False) -> bool:
    """Resolve the audience to deliveries (one INSERT … SELECT, or one per slice of a large
    segment's profiles: ``_resolve_in_slices``) and start the send tasks.

    Idempotent: runs only while the dispatch is ``preparing``, under its lock; nothing is sent
    before the dispatch is ``sending``, which this commits whole (the rows of a sliced resolve
    that died part-way are deleted and written again). The rows are counted into the rollup as
    they are written (on PostgreSQL, by the same statement).
    Every targeted profile gets a row: its devices (``queued``, or ``skipped`` / ``not_opted_in``)
    or one ``skipped`` / ``no_device`` row; in the holdout, the rows that would be queued are
    ``skipped`` / ``holdout``. With ``send_inline``, a dispatch small enough for one
    send task is left to the caller (returns True), which saves a trip through the queue.
    """
    if instance_refuses(action=f"prepare dispatch {dispatch_id}"):
        return False
    inline = False
    now = timezone.now()
    with transaction.atomic():
        # FOR NO KEY UPDATE: a slice's rollup rows check their dispatch with FOR KEY SHARE, which
        # FOR UPDATE would make wait for this transaction, and this one waits for the slices.
        dispatch = Dispatch.objects.select_for_update(no_key=True).filter(pk=dispatch_id).first()
        if dispatch is None or dispatch.status != Dispatch.Status.PREPARING:
            return False
        check, refused = _AUDIENCE_CHECKS.get(dispatch.kind, (None, None))
        try:
            if check is not None and dispatch.segment_id is not None:
                check(dispatch)
            if dispatch.kind == Dispatch.Kind.TEST:
                _test_devices_recheck(dispatch)
            # A segment's rules that no longer hold (saved before a check, or by a migration) are
            # refused as they are compiled, before any statement of the resolve runs.
            slices, leftovers = _resolve_slices(dispatch)
            if slices:
                counts = _resolve_in_slices(dispatch, slices=slices, now=now, leftovers=leftovers)
            elif connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    if leftovers:  # of a sliced resolve, when the settings or the profiles were different
                        _resolve_leftovers_delete(cursor, dispatch.pk)
                    counts = _resolve_insert(cursor, dispatch, now=now)
            else:
                source, params = _resolve_rows_sql(dispatch, now=now)
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"INSERT INTO delivery_delivery ({_RESOLVE_COLUMNS}) SELECT {_RESOLVE_COLUMNS} FROM ({source}) src",  # noqa: S608
                        params,
                    )
                counts = rollup_add_made(dispatch_id=dispatch.pk)  # by outcome: targeted, and those final already
        except (GateClosed, RulesInvalid) as exc:
            reason = str(exc) if isinstance(exc, GateClosed) else f"{exc.held_no_longer()}: correct them on its page."
            _refuse_unresolved(dispatch, reason=reason, now=now)
            if refused is not None:
                refused(dispatch, reason)
            return False
        held = local_time_apply(dispatch=dispatch, now=now)
        held.update(rules_apply(dispatch=dispatch, now=now))  # its skips are counted as they are made
        if held:
            audit(actor=None, action="dispatch_rules_applied", obj=dispatch, summary=held)
        counts[DS.SKIPPED] += sum(n for reason, n in held.items() if reason in SKIPPING_RULES)
        counts[DS.QUEUED] = counts["targeted"] - sum(counts[status] for status in Delivery.FINAL_STATUSES)
        dispatch.total = counts["targeted"]
        dispatch.skipped = counts.get(DS.SKIPPED, 0)
        dispatch.status = Dispatch.Status.SENDING
        dispatch.started_at = now
        dispatch.rows_close()  # every row is written (a sliced resolve's slices have committed theirs)
        dispatch.save(update_fields=["total", "skipped", "status", "started_at", "rows_until_id"])
        audit(actor=None, action="dispatch_started", obj=dispatch, summary={"total": dispatch.total})
        if counts.get(DS.QUEUED, 0):
            tasks = max(1, min(settings.PUSHDESK_SEND_TASKS, -(-counts[DS.QUEUED] // settings.PUSHDESK_SEND_BATCH)))
            inline = send_inline and tasks == 1
            for _ in range(0 if inline else tasks):
                _enqueue_on_commit("delivery.tasks.dispatch_send_task", dispatch.pk)
    if not counts.get(DS.QUEUED, 0):
        dispatch_complete_if_done(dispatch_id=dispatch_id)
    return inline


def _refuse_unresolved(dispatch: Dispatch, *, reason: str, now: datetime) -> None:
    """End a preparing dispatch, held locked, as ``failed`` with ``reason`` before any row is written."""
    dispatch.status = Dispatch.Status.FAILED
    dispatch.error = reason
    dispatch.finished_at = now
    dispatch.rows_close()
    dispatch.save(update_fields=["status", "error", "finished_at", "rows_until_id"])
    audit(actor=None, action="dispatch_failed", obj=dispatch, summary={"refused": reason})


def dispatch_stop(*, dispatch_id: int, by: User, source_stopped: bool = False) -> Dispatch:
    """Stop a dispatch: its queued rows become ``skipped`` / ``stopped``; rows in flight finish.

    Raises PermissionDenied without ``delivery.stop_dispatch`` on it; stopping a finished
    dispatch changes nothing. ``source_stopped``: the campaign or journey that sent it is being
    stopped by ``by``, who its stop found may (``campaign_stop``, ``journey_stop``): its sends stop
    with it whichever app they went to (a campaign a pending revision moves to another app still
    sends to its approved version's; a journey's stopper may hold a grant on the journey alone),
    without asking for access to the dispatch's app.
    """
    with transaction.atomic():
        dispatch = Dispatch.objects.select_for_update().get(pk=dispatch_id)
        if not source_stopped and not can(by, "delivery.stop_dispatch", dispatch):
            raise PermissionDenied("You may not stop this dispatch.")
        if dispatch.status in Dispatch.FINAL_STATUSES:
            return dispatch
        stopped = deliveries_finish(
            where="d.dispatch_id = %s AND d.finished_at IS NULL AND d.status = 'queued'",
            params=[dispatch.pk],
            status=DS.SKIPPED,
            reason="stopped",
            now=timezone.now(),
        )
        dispatch.status = Dispatch.Status.STOPPED
        dispatch.finished_at = timezone.now()
        if dispatch.rows_until_id is None:  # a stream's calls wait for this lock, or see it stopped
            dispatch.rows_close()
        dispatch.save(update_fields=["status", "finished_at", "rows_until_id"])
        # Its counters from the rollup the stop just counted into, under the dispatch's lock (a
        # stream's were kept once a minute; rows in flight add their outcomes as they finish).
        dispatch_recount(dispatch_id=dispatch.pk)
        audit(actor=by, action="dispatch_stopped", obj=dispatch, summary={"stopped": stopped})
    dispatch.refresh_from_db()
    return dispatch


# The platform counted for a row without a device (a profile skipped for having none).
NO_PLATFORM = "none"


def platform_counts_add(by_platform: dict, counts) -> dict:
    """Return ``by_platform`` ({platform: {outcome: n}}) plus ``counts`` ({(platform, outcome): n});
    an outcome that comes to 0 (a late answer's row taken from ``unknown``) is left out, as a
    recount from the rollup leaves it."""
    merged = {platform: dict(outcomes) for platform, outcomes in by_platform.items()}
    for (platform, outcome), n in counts.items():
        if n:
            outcomes = merged.setdefault(platform or NO_PLATFORM, {})
            outcomes[outcome] = outcomes.get(outcome, 0) + n
            if not outcomes[outcome]:
                del outcomes[outcome]
    return {platform: outcomes for platform, outcomes in merged.items() if outcomes}


def dispatch_recount(*, dispatch_id: int) -> Dispatch:
    """Set a dispatch's counters, and its final outcomes per platform, from its rollup
    (``dispatch_counts``). Used when it finishes, and for a stream at each watch."""
    Dispatch.objects.filter(pk=dispatch_id).update(**dispatch_counts(dispatch_id=dispatch_id))
    return Dispatch.objects.get(pk=dispatch_id)


def dispatch_counted_now(dispatch: Dispatch) -> Dispatch:
    """``dispatch`` with its counters as they are now, for a page or an answer: an open stream's
    are kept once a minute (``streams_watch``; calls append without touching the dispatch's row),
    so they are summed from its rollup (a few rows); any other dispatch's are current."""
    return dispatches_counted_now([dispatch])[0]


def dispatches_counted_now(dispatches: list[Dispatch]) -> list[Dispatch]:
    """Each of ``dispatches`` as ``dispatch_counted_now`` gives it, the open streams among them
    summed in one query (a list's page, whatever its length). One counted already is left as it is."""
    streams = {
        d.pk: d
        for d in dispatches
        if d.standing and d.status in Dispatch.RUNNING_STATUSES and not getattr(d, "counted_now", False)
    }
    if streams:
        for dispatch_id, counts in _rollup_counts(streams).items():
            for name, value in counts.items():
                setattr(streams[dispatch_id], name, value)
        for dispatch in streams.values():
            dispatch.counted_now = True
    return dispatches


def dispatch_counts(*, dispatch_id: int) -> dict:
    """A dispatch's counters (its fields ``total``, ``accepted``… ``by_platform``) summed from its
    rollup. The rollup is written in the transactions that change the rows, so its sums are what a
    count of the rows would say (``tests/delivery/test_rollups.py`` holds it to that), at the cost
    of a few rows read however many deliveries the dispatch has."""
    return _rollup_counts([dispatch_id])[dispatch_id]


def _rollup_counts(dispatch_ids) -> dict[int, dict]:
    """``dispatch_counts`` of each of ``dispatch_ids``, in one query."""
    rows = (
        DeliveryRollup.objects.filter(dispatch_id__in=list(dispatch_ids))
        .values_list("dispatch_id", "outcome", "platform")
        .annotate(n=Sum("rows"))
        .order_by()
    )
    counts: dict[int, Counter] = {dispatch_id: Counter() for dispatch_id in dispatch_ids}
    per_platform: dict[int, Counter] = {dispatch_id: Counter() for dispatch_id in dispatch_ids}
    for dispatch_id, outcome, platform, n in rows:
        counts[dispatch_id][outcome] += n
        if outcome in Delivery.FINAL_STATUSES:
            per_platform[dispatch_id][platform or NO_PLATFORM, outcome] += n
    return {
        dispatch_id: {
            "total": found.get(DeliveryRollup.Outcome.TARGETED, 0),
            "accepted": found.get(DS.ACCEPTED, 0),
            "failed": found.get(DS.FAILED, 0),
            "skipped": found.get(DS.SKIPPED, 0),
            "unknown": found.get(DS.UNKNOWN, 0),
            "opened": found.get(DeliveryRollup.Outcome.OPENED, 0),
            "by_platform": platform_counts_add({}, per_platform[dispatch_id]),
        }
        for dispatch_id, found in counts.items()
    }


# Why a dispatch ended failed: it had rows to send and the provider accepted none of them.
NONE_ACCEPTED = "The provider accepted none of its pushes."


def dispatch_complete_if_done(*, dispatch_id: int) -> bool:
    """Finish a sending dispatch once no row is queued or in flight; True when it is final.

    It ends ``failed`` when it had rows to send and the provider accepted none of them (every
    one failed or ended unknown), else ``done``. A standing dispatch (a stream) is finished by
    ``streams_watch`` instead: calls may still append.
    """
    if Dispatch.objects.filter(pk=dispatch_id, standing=True, status=Dispatch.Status.SENDING).exists():
        return False
    busy = Delivery.objects.filter(
        dispatch_id=dispatch_id, finished_at__isnull=True, status__in=(DS.QUEUED, DS.SENDING)
    ).exists()
    if busy:
        return False
    with transaction.atomic():
        dispatch = Dispatch.objects.select_for_update().get(pk=dispatch_id)
        if dispatch.status == Dispatch.Status.SENDING:
            dispatch = dispatch_recount(dispatch_id=dispatch_id)
            failed = dispatch.accepted == 0 and dispatch.failed + dispatch.unknown > 0
            dispatch.status = Dispatch.Status.FAILED if failed else Dispatch.Status.DONE
            dispatch.error = NONE_ACCEPTED if failed else dispatch.error
            dispatch.finished_at = timezone.now()
            dispatch.save(update_fields=["status", "error", "finished_at"])
            audit(
                actor=None,
                action="dispatch_failed" if failed else "dispatch_done",
                obj=dispatch,
                summary={"accepted": dispatch.accepted, "failed": dispatch.failed, "unknown": dispatch.unknown},
            )
    if Dispatch.objects.filter(pk=dispatch_id, status=Dispatch.Status.STOPPED).exists():
        dispatch_recount(dispatch_id=dispatch_id)
    return True


def dispatch_accepted_late(*, dispatch_id: int) -> bool:
    """Judge again a dispatch that ended ``failed`` for having none accepted, now that answers
    which came after their rows' lease ran out were accepted (``deliveries_write_back``): it is
    ``done``, as it would have ended had they come in time, and the audit log says so; then what
    its kind registered (``dispatch_accepted_late_register``) follows it. Locks the dispatch; True
    when it changed."""
    with transaction.atomic():
        dispatch = Dispatch.objects.select_for_update().filter(pk=dispatch_id).first()
        if (
            dispatch is None
            or dispatch.status != Dispatch.Status.FAILED
            or dispatch.error != NONE_ACCEPTED
            or not dispatch.accepted
        ):
            return False
        dispatch.status, dispatch.error = Dispatch.Status.DONE, ""
        dispatch.save(update_fields=["status", "error"])
        audit(
            actor=None,
            action="dispatch_done",
            obj=dispatch,
            summary={
                "accepted": dispatch.accepted,
                "failed": dispatch.failed,
                "unknown": dispatch.unknown,
                "answered_late": True,
            },
        )
    then = _ACCEPTED_LATE.get(dispatch.kind)
    if then is not None:
        then(dispatch)
    return True


def deliveries_expire_leases(*, now: datetime | None = None) -> int:
    """Turn rows whose lease ran out while ``sending`` into ``unknown`` (never re-sent); return how many.

    Leases are judged by the database's clock (``now`` only for tests), the one that stamped
    them: a worker's clock running ahead cannot expire rows another worker is sending. The rows
    ended are finished at the same moment (``now`` when given). Each
    dispatch's row is held first, in the order write-back takes its locks, and its counters,
    per platform too, are counted again from its rollup: the answers that may still come for
    these rows (a slow worker's, ``deliveries_write_back``) move them from ``unknown`` there.
    Also finishes the dispatches this completes.
    """
    deadline = now if now is not None else Now()
    expired = list(
        Delivery.objects.filter(finished_at__isnull=True, status=DS.SENDING, lease_expires_at__lt=deadline)
        .values_list("dispatch_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    total = 0
    for dispatch_id, _ in expired:
        with transaction.atomic():
            Dispatch.objects.select_for_update(no_key=True).filter(pk=dispatch_id).values_list("pk").first()
            changed = deliveries_finish(
                where="d.dispatch_id = %s AND d.finished_at IS NULL AND d.status = 'sending' AND d.lease_expires_at < "
                + ("%s" if now is not None else _DB_NOW[connection.vendor == "postgresql"]),
                params=[dispatch_id, *([_dt(now)] if now is not None else [])],
                status=DS.UNKNOWN,
                reason="lease_expired",
                now=now,
            )
            dispatch_recount(dispatch_id=dispatch_id)
        total += changed
        dispatch_complete_if_done(dispatch_id=dispatch_id)
    return total


# The database's clock in SQL, as Django's Now() writes it (its '%' doubled: the statement has
# parameters): SQLite's, then PostgreSQL's.
_DB_NOW = ("STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'NOW')", "CURRENT_TIMESTAMP")


def dispatches_watch(*, now: datetime | None = None) -> list[int]:
    """The watchdog (every minute): expire leases, and restart dispatches whose tasks were lost.

    A dispatch still ``preparing`` a task timeout after it was created lost its prepare task (a
    worker killed, a broker restarted, an enqueue that failed): it is queued again (prepare is
    idempotent, and the queue has killed any run that old). A ``sending`` one is restarted when
    it has queued rows ready to go and none in flight, a lease's length after it started.
    Returns the restarted dispatch ids.
    """
    if instance_refuses(action="run the delivery watchdog"):
        return []
    # Leases by the database's clock, the one that stamped them, unless a time is given (a test's):
    # this machine's clock running ahead must not end rows a live worker is sending.
    deliveries_expire_leases(now=now)
    now = now or timezone.now()
    restarted = []
    lost_since = now - timedelta(seconds=_task_timeout())
    for dispatch_id in Dispatch.objects.filter(status=Dispatch.Status.PREPARING, created_at__lt=lost_since).values_list(
        "pk", flat=True
    ):
        _enqueue("delivery.tasks.dispatch_prepare_task", dispatch_id)
        restarted.append(dispatch_id)
    quiet_since = now - timedelta(seconds=settings.PUSHDESK_SEND_LEASE_SECONDS)
    sending = Dispatch.objects.filter(status=Dispatch.Status.SENDING, started_at__lt=quiet_since, standing=False)
    for dispatch in sending.only("id"):
        rows = Delivery.objects.filter(dispatch_id=dispatch.pk, finished_at__isnull=True)
        if rows.filter(status=DS.SENDING).exists():
            continue
        queued = rows.filter(status=DS.QUEUED)
        if queued.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)).exists():
            _enqueue("delivery.tasks.dispatch_send_task", dispatch.pk)
            restarted.append(dispatch.pk)
        elif not queued.exists():
            dispatch_complete_if_done(dispatch_id=dispatch.pk)
        # Rows held for later (a retry, quiet hours, local time) wait for their own schedule.
    return restarted
