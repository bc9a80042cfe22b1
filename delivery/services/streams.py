"""Streams: standing dispatches that calls append rows to, as they come.

A live API-triggered campaign (and a journey's push step reached by event entries) sends through
one *standing* dispatch per approved version and UTC day, instead of a dispatch per call:

1. ``stream_open`` finds or opens it (status ``sending`` at once), after its source's gate agreed.
2. ``stream_append`` adds one call's rows in one statement, in the transaction of the call: the
   source row is read under the conditions of its gate, behind a lock a stop or a voided approval
   takes exclusively (a journey's row ``FOR SHARE``, a campaign's gate advisory lock), so it waits
   for calls in flight and later calls see it, the dispatch
   ``FOR KEY SHARE`` while it is still sending; the recipients a kind admits to its streams
   (``stream_recipients_check_register``: a journey's, those enrolled at its step) are checked by
   the same statement. Once the call commits, it wakes the senders
   (``streams_wake``: a Redis message; not a ``NOTIFY`` in the statement, which would make
   every appending call's commit wait for the one before it: PostgreSQL serialises the commits
   of notifying transactions).
3. The senders (``delivery.services.stream_senders``) drain the ready rows of every open stream
   with the send engine's batches.
4. ``streams_close`` (stop, voided approval) skips the queued rows; ``streams_watch`` (every
   minute) refreshes the counters of open streams and finishes those of past days or replaced
   versions once they are drained.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import re

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import audit
from config.db import prepared_cursor
from delivery.models import App, Delivery, DeliveryRules, Dispatch
from delivery.rules import _CAP_LOCK_CLASS, CAP_DISPATCHES, CAP_ON_ITS_WAY, CAP_PUSHES, profile_zone, quiet_until
from delivery.services.dispatches import GateClosed, content_reference_kept, dispatch_gate_ask
from delivery.services.rollups import (
    STREAM_SHARD,
    deliveries_finish,
    rollup_add_appended,
    rollup_add_finished,
    rollup_insert_sql,
)
from delivery.services.stream_senders import streams_senders_ensure
from delivery.variants import VARIANT_OF_PROFILE_SQL, variant_bounds

log = logging.getLogger(__name__)

DS = Delivery.Status


@dataclasses.dataclass(frozen=True)
class Recipient:
    """One profile a call targets, with its context (shared merged with its own)."""

    profile_id: int
    timezone: str = ""
    context: dict | None = None
    variant: int | None = None  # its campaign variant (0: the holdout, which gets a skipped row)


@dataclasses.dataclass(frozen=True)
class Named:
    """One profile a call names by its external id, with its context: the append looks it up.

    ``budget``: the bytes its message has room for, with the append's ``bound`` (see there)."""

    external_id: str
    context: dict | None = None
    budget: int | None = None


@dataclasses.dataclass(frozen=True)
class AppendedRow:
    id: int
    profile_id: int
    device_id: int | None
    status: str
    reason: str
    external_id: str = ""  # the profile's, when the call named it (``Named``)


class OverBudget(Exception):
    """A named recipient's attributes might not fit its budget: nothing was written."""


class StreamClosed(Exception):
    """The stream or its source refused the rows: the source is no longer what its gate approved
    (``source``), or the dispatch was closed (``dispatch``). Nothing was written."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _today(now: dt.datetime) -> dt.date:
    return now.astimezone(dt.UTC).date()


def stream_open(
    *,
    kind: str,
    source_id: int,
    version: str,
    app_id: int,
    spec: dict,
    content_id: int | None,
    label: str,
    purpose: str,
    rate_limit_per_second: int | None = None,
    context: dict | None = None,
    by: User | None = None,
    now: dt.datetime | None = None,
    variants: list[dict] | None = None,
    holdout_share: int = 0,
    time_zone: str = "",
) -> int:
    """The id of the open standing dispatch of (kind, source, version) for today, opened if needed.

    The caller has run its source's gate; opening asks it again (``dispatch_gate_ask``), as a
    dispatch's creation does, since every later call of the day appends to what is opened here:
    a direct call opening it first with content or settings of its own is refused (GateClosed).
    ``spec`` (already validated when it was approved) is frozen on the dispatch. Safe to race: one stream per source, version and day is open at a
    time (a unique index), and the loser reads the winner's. Raises InstanceMismatch on a copy
    of another instance's database. ``variants`` and ``holdout_share`` (a campaign's) are frozen
    with it; each call names its recipients' variants. ``time_zone`` (a campaign's) is the zone its
    content's ``now`` renders in; "": UTC.
    """
    from operations.instance import ensure_instance_claimed

    ensure_instance_claimed(action=f"open a {kind} stream")
    now = now or timezone.now()
    day = _today(now)
    existing = Dispatch.objects.filter(
        standing=True,
        kind=kind,
        source_id=source_id,
        stream_version=version,
        stream_day=day,
        status=Dispatch.Status.SENDING,
    )
    found = existing.values_list("pk", flat=True).first()
    if found is not None:
        return found
    dispatch_gate_ask(
        kind=kind,
        app=App.objects.get(pk=app_id),
        source_id=source_id,
        spec=spec,
        by=by,
        context=context,
        sends={
            "segment_id": None,
            "profile_ids": None,
            "purpose": purpose,
            "rate_limit_per_second": rate_limit_per_second,
            "time_zone": time_zone,
            # A stream sends each call's rows as they come, never held to a local time.
            "local_time": "",
            "local_default_timezone": "",
            "local_late_minutes": None,
        },
        variants=variants,
        holdout_share=holdout_share,
    )
    try:
        with transaction.atomic():
            dispatch = Dispatch.objects.create(
                app_id=app_id,
                kind=kind,
                source_id=source_id,
                label=f"{label} · {day.isoformat()} (UTC)"[:300],  # a stream's day is UTC's
                content_id=content_reference_kept(content_id),
                content_spec=dict(spec),
                variants=list(variants or []),
                holdout_share=holdout_share,
                context=context or {},
                rate_limit_per_second=rate_limit_per_second,
                purpose=purpose,
                status=Dispatch.Status.SENDING,
                started_at=now,
                standing=True,
                stream_version=version,
                stream_day=day,
                time_zone=time_zone,
                created_by=by if by is not None and by.pk else None,
            )
            audit(
                actor=by,
                action="dispatch_stream_opened",
                obj=dispatch,
                summary={"kind": kind, "source_id": source_id, "version": version[:12], "day": day.isoformat()},
            )
    except IntegrityError:
        return existing.values_list("pk", flat=True).get()
    transaction.on_commit(streams_senders_ensure)
    return dispatch.pk


def _held(recipients: list[Recipient], rules: DeliveryRules | None, now: dt.datetime):
    """Quiet hours per recipient: (hold until, skip) arrays. Only for marketing streams with rules."""
    hold: list[dt.datetime | None] = []
    skip: list[bool] = []
    for recipient in recipients:
        until = None
        if rules is not None and rules.has_quiet_hours:
            local = now.astimezone(profile_zone(recipient.timezone, rules.default_timezone))
            until = quiet_until(start=rules.quiet_start, end=rules.quiet_end, local=local)
        if until is None:
            hold.append(None)
            skip.append(False)
        elif rules.quiet_mode == DeliveryRules.QuietMode.DISCARD:
            hold.append(None)
            skip.append(True)
        else:
            hold.append(until.astimezone(dt.UTC))
            skip.append(False)
    return hold, skip


# A row held until the quiet hours end whose content has a TTL of 0 ("now or never"): expired by then.
_NOW_OR_NEVER = "(v.hold_until IS NOT NULL AND t.ttl = 0)"
# A row that is not sent: the holdout, no device, not opted in, quiet hours that discard, a
# now-or-never push they would hold.
_SKIP = f"COALESCE(v.variant, -1) = 0 OR dev.id IS NULL OR NOT dev.push_enabled OR v.quiet_skip OR {_NOW_OR_NEVER}"


def stream_append(
    *,
    dispatch_id: int,
    kind: str,
    app_id: int,
    source_lock: tuple[str, list],
    recipients: list[Recipient] | None = None,
    named: list[Named] | None = None,
    rules: DeliveryRules | None = None,
    now: dt.datetime | None = None,
    bound: dict[str, int] | None = None,
    split: tuple[int, list[dict], int] | None = None,
) -> list[AppendedRow]:
    """Append one call's rows to an open stream, in one statement; returns them in recipient order.

    Call inside the transaction that records the call (its idempotency record commits with the
    rows). ``source_lock`` is a ``SELECT`` of the source row under its gate's conditions that
    holds what a stop waits for (the row ``FOR SHARE``, or a shared advisory lock); no row is written unless it returns one and the dispatch is still sending.
    Every recipient gets a row per active device of the app (``queued``, or ``skipped`` with
    ``not_opted_in``), or one ``skipped`` / ``no_device`` row; in the holdout (variant 0), the
    rows that would be queued are ``skipped`` / ``holdout``. ``rules`` (the app's, for marketing
    streams) hold rows in quiet hours and skip those over the frequency cap.
    The recipients are ``Recipient`` profiles, or (``named``, PostgreSQL only) distinct external
    ids that the statement itself looks up: a name no profile has gets no row, and each row
    carries its name. Named recipients get their variant from ``split`` (the salt, the variants and
    the holdout's share, as ``delivery.variants.variant_for`` takes them; None: no variants),
    computed by the statement, and ``rules`` may not have quiet hours (which need each profile's
    time zone before its rows are made). With ``bound`` (attribute
    name -> bytes per byte of its value), each named profile's attributes must fit its ``budget``
    (the bound of its message's growth: strings by their UTF-8 bytes, other values by twice
    their JSON text's and 32 more: a template shows a list or an object as Python writes it,
    whose characters are printable or escaped in ASCII, so that JSON escapes them to at most
    twice their count, where ``bound`` counts six); if one might not, nothing is written and
    OverBudget is raised.
    ``kind`` is the stream's (``Dispatch.Kind``): the statement is built for it, and a dispatch of
    another kind takes no row (StreamClosed).
    Raises StreamClosed when the source or the dispatch refuses, GateClosed when a recipient is not
    one the stream's kind admits (``stream_recipients_check_register``): then nothing is written.
    """
    if kind not in Dispatch.Kind.values:
        raise ValueError(f"not a dispatch kind: {kind!r}")
    if named is not None:
        if connection.vendor != "postgresql" or recipients is not None:
            raise ValueError("named recipients are appended on PostgreSQL, instead of profiles")
        if rules is not None and rules.has_quiet_hours:
            raise ValueError("named recipients cannot be held for quiet hours")
    elif connection.vendor != "postgresql":
        return _append_portable(
            dispatch_id=dispatch_id,
            kind=kind,
            app_id=app_id,
            recipients=recipients,
            source_lock=source_lock,
            rules=rules,
            now=now,
        )
    now = now or timezone.now()
    lock_sql, lock_params = source_lock
    if named is not None:
        values = json.dumps(
            [{"external_id": r.external_id, "context": r.context or None, "budget": r.budget} for r in named]
        )
        # ``_BY_EXTERNAL_ID``'s parameters in its placeholders' order: the split's bounds and salt
        # (``VARIANT_OF_PROFILE_SQL``), the attributes' bound, then the recipients and their count.
        salt, variants, holdout_share = split or (0, [], 0)
        recipients_params = [
            json.dumps(variant_bounds(variants, holdout_share) if variants else []),
            str(salt),
            json.dumps([{"name": k, "times": t} for k, t in (bound or {}).items()]),
            values,
            len(named),
        ]
    else:
        hold, skip = _held(recipients, rules, now)
        values = json.dumps(
            [
                {
                    "profile_id": r.profile_id,
                    "context": r.context or None,
                    "hold_until": until.isoformat() if until else None,
                    "quiet_skip": quiet,
                    "variant": r.variant,
                }
                for r, until, quiet in zip(recipients, hold, skip, strict=True)
            ]
        )
        recipients_params = [values, len(recipients)]  # ``_BY_PROFILE``'s
    # In the statement's order: the source's lock, the dispatch, the recipients' CTE, the insert.
    params = [*lock_params, dispatch_id, *recipients_params, now, now, now, app_id]
    with prepared_cursor() as cursor:
        cursor.execute(_append_sql(lock_sql, named=named is not None, kind=kind), params)
        fetched = cursor.fetchall()
    marker = next(row for row in fetched if row[0] == -1)
    if not marker[1]:
        raise StreamClosed("source")
    if not marker[2]:
        raise StreamClosed("dispatch")
    if marker[4]:
        _refuse_recipients(kind, int(marker[4]), len(named if named is not None else recipients))
    if marker[3] == "over":
        raise OverBudget
    rows = [AppendedRow(*row) for row in fetched if row[0] != -1]
    if named is not None:
        order = {r.external_id: i for i, r in enumerate(named)}
        rows.sort(key=lambda r: (order[r.external_id], r.id))
    else:
        order = {r.profile_id: i for i, r in enumerate(recipients)}
        rows.sort(key=lambda r: (order[r.profile_id], r.id))
    if rules is not None and rules.frequency_cap:
        rows = _frequency_cap(dispatch_id, app_id, rows, rules, now)
    return rows


# kind → (the SQL condition each recipient appended to its streams meets, why the others are refused)
_RECIPIENT_CHECKS: dict[str, tuple[str, str]] = {}


def stream_recipients_check_register(*, kind: str, condition: str, refusal: str) -> None:
    """Plug whom a kind's streams take rows for, whoever appends: ``condition`` is a SQL condition
    (constants only) on the stream's dispatch ``d`` (its ``source_id`` and ``stream_version``) and
    a recipient's ``v.profile_id``, checked by the append's own statement (no query more). A call
    naming a profile that does not meet it writes nothing and raises GateClosed, saying
    "N of the M profiles of the call" and ``refusal``. A journey's: each profile is enrolled in the
    version at the stream's push step, where the engine brings those it pushes."""
    _RECIPIENT_CHECKS[kind] = (condition, refusal)
    _append_sql.cache_clear()


def _refuse_recipients(kind: str, refused: int, of: int) -> None:
    why = _RECIPIENT_CHECKS.get(kind, ("", "may not be sent this stream's push"))[1]
    raise GateClosed(f"{refused} of the {of} profiles of the call {why}: nothing was appended.")


# The recipients of the call, as profiles (with their hold, quiet-hours skip and variant, decided
# by the caller) or as external ids the statement looks up (one statement instead of two: the
# profiles' index is read in the append).
_BY_PROFILE = (
    "v AS (SELECT r.*, u.n, true AS fits FROM unnest(ARRAY(SELECT jsonb_array_elements(%s::jsonb))) WITH ORDINALITY "
    "AS u(e, n) CROSS JOIN LATERAL jsonb_to_record(u.e) "
    "AS r(profile_id bigint, context jsonb, hold_until timestamptz, quiet_skip boolean, variant int) LIMIT %s)"
)
_BY_EXTERNAL_ID = (
    "v AS (SELECT p.id AS profile_id, r.context, NULL::timestamptz AS hold_until, false AS quiet_skip, "  # noqa: S608 (constants; values are bound)
    f"{VARIANT_OF_PROFILE_SQL} AS variant, u.n, p.external_id, r.budget IS NULL OR (SELECT COALESCE(sum(b.times::bigint * "
    "CASE WHEN a.t IS NULL OR a.t = 'null' THEN 0 WHEN a.t = 'string' THEN octet_length(p.attributes ->> b.name) "
    "ELSE 2 * octet_length((p.attributes -> b.name)::text) + 32 END), 0) "
    "FROM jsonb_to_recordset(%s::jsonb) AS b(name text, times int) "
    "CROSS JOIN LATERAL (SELECT jsonb_typeof(p.attributes -> b.name) AS t) a) <= r.budget AS fits "
    "FROM unnest(ARRAY(SELECT jsonb_array_elements(%s::jsonb))) "
    "WITH ORDINALITY AS u(e, n) CROSS JOIN LATERAL jsonb_to_record(u.e) AS r(external_id text, context jsonb, budget int) "
    "JOIN audiences_profile p ON p.external_id = r.external_id LIMIT %s)"
)


@functools.lru_cache(maxsize=16)
def _append_sql(lock_sql: str, *, named: bool, kind: str) -> str:
    """The append statement for a source's lock and a stream's kind (built once per process: it is
    the same every call). A kind with a recipients' check (``stream_recipients_check_register``)
    counts the call's recipients it does not admit in a CTE, ``refused``, and writes nothing
    unless none is; the others' statement has no such CTE (a campaign's trigger pays nothing for
    a journey's check)."""
    check = _RECIPIENT_CHECKS.get(kind)
    # Constants: the kind is one of Dispatch.Kind's values (stream_append checks), the condition
    # a registered one.
    refused_cte = (
        f"refused AS (SELECT count(*) AS n FROM d CROSS JOIN v WHERE ({check[0]}) IS NOT TRUE), "  # noqa: S608
        if check
        else ""
    )
    admitted = "AND (SELECT n FROM refused) = 0 " if check else ""
    refused_count = "NULLIF((SELECT n FROM refused), 0)::text" if check else "NULL::text"
    return (
        f"WITH src AS ({lock_sql}), "  # noqa: S608 (constants and the callers' fixed SQL; values are bound)
        "d AS (SELECT x.id, COALESCE((x.content_spec->>'ttl_seconds')::int, 0) AS ttl, x.variants, "
        "x.kind, x.source_id, x.stream_version "
        "FROM delivery_dispatch x "
        f"WHERE x.id = %s AND x.kind = '{kind}' AND x.status = 'sending' AND EXISTS (SELECT 1 FROM src) "
        "FOR KEY SHARE OF x), "
        # LIMIT (the recipients' count, so it cuts nothing) makes the kept generic plan count on
        # a few rows, as the plan made for a one-recipient call does: PostgreSQL then runs every
        # call from the kept plan instead of planning it again (0.6 ms, four times the run).
        # The recipients travel as one JSON array: psycopg adapts a list parameter value by value in
        # Python, and five lists of one recipient cost about 30 µs more of the caller's CPU than
        # one JSON text. They are unnested from an array, whose length a kept plan guesses at 10,
        # as it did the lists' (a set-returning JSON function counts on 100 rows, and PostgreSQL
        # then plans every call again).
        f"{_BY_EXTERNAL_ID if named else _BY_PROFILE}, {refused_cte}"
        "ins AS (INSERT INTO delivery_delivery (dispatch_id, device_id, profile_id, status, reason, "
        "provider_message_id, attempts, finished_at, next_attempt_at, held_until, queued_at, context, expires_at, variant) "
        "SELECT d.id, dev.id, v.profile_id, "
        f"CASE WHEN {_SKIP} THEN 'skipped' ELSE 'queued' END, "
        # The holdout takes only rows that would be sent (delivery.services.dispatches says why).
        "CASE WHEN dev.id IS NULL THEN 'no_device' WHEN NOT dev.push_enabled THEN 'not_opted_in' "
        # A row held until the quiet hours end says so too, as a queued row (until it is sent).
        "WHEN v.variant = 0 THEN 'holdout' WHEN v.quiet_skip THEN 'quiet_hours' "
        f"WHEN {_NOW_OR_NEVER} THEN 'expired' WHEN v.hold_until IS NOT NULL THEN 'quiet_hours' "
        "ELSE '' END, '', 0, "
        f"CASE WHEN {_SKIP} THEN %s END, CASE WHEN {_SKIP} THEN NULL ELSE v.hold_until END, "
        f"CASE WHEN {_SKIP} THEN NULL ELSE v.hold_until END, %s, v.context, "
        # The TTL runs from the call (or from the end of a quiet-hours hold), not from the stream's start;
        # a variant's own content says how long.
        "CASE WHEN t.ttl > 0 THEN COALESCE(v.hold_until, %s) + t.ttl * interval '1 second' END, v.variant "
        "FROM d CROSS JOIN v "
        "CROSS JOIN LATERAL (SELECT COALESCE((SELECT (e->'spec'->>'ttl_seconds')::int "
        "FROM jsonb_array_elements(d.variants) e WHERE (e->>'number')::int = v.variant), d.ttl) AS ttl) t "
        # Each recipient's phones looked up by its profile, whatever the statistics say: a join
        # let a plan made while they said the app had few phones (a new install, autovacuum not
        # yet round) read every phone of the app on every call, and keep doing so. OFFSET 0 keeps
        # the planner from making the lookup a join again.
        "LEFT JOIN LATERAL (SELECT dev.id, dev.push_enabled FROM delivery_device dev "
        "WHERE dev.profile_id = v.profile_id AND dev.app_id = %s AND dev.active OFFSET 0) dev ON true "
        f"WHERE NOT EXISTS (SELECT 1 FROM v WHERE NOT v.fits) {admitted}"
        "ORDER BY v.n, dev.id "
        "RETURNING id, profile_id, device_id, status, reason, dispatch_id, variant, finished_at, queued_at), "
        # The rows are counted into the rollup by the statement that makes them.
        f"counted AS ({rollup_insert_sql(where='true', outcomes=('targeted', 'final'), source='ins d', shard=STREAM_SHARD)}) "
        + (
            # Each name once (the caller's), so each row joins its one name.
            "SELECT ins.id, ins.profile_id, ins.device_id, ins.status, ins.reason, v.external_id "  # noqa: S608
            "FROM ins JOIN v ON v.profile_id = ins.profile_id "
            # The marker: the source's and the dispatch's rows, whether a profile might not fit, and
            # how many recipients the stream's kind refused.
            "UNION ALL SELECT -1, (SELECT count(*) FROM src), (SELECT count(*) FROM d), "
            f"CASE WHEN EXISTS (SELECT 1 FROM v WHERE NOT v.fits) THEN 'over' END, {refused_count}, ''"
            if named
            else "SELECT id, profile_id, device_id, status, reason FROM ins "  # noqa: S608
            f"UNION ALL SELECT -1, (SELECT count(*) FROM src), (SELECT count(*) FROM d), NULL, {refused_count}"
        )
    )


def _append_portable(*, dispatch_id, kind, app_id, recipients, source_lock, rules, now) -> list[AppendedRow]:
    """The same append for SQLite (the embedded mode): the write lock serialises it with a stop."""
    from delivery.models import Device

    now = now or timezone.now()
    lock_sql, lock_params = source_lock
    with connection.cursor() as cursor:
        cursor.execute(re.sub(r"\s+FOR SHARE(\s+OF\s+\w+)?", "", lock_sql), lock_params)  # SQLite locks the file
        if cursor.fetchone() is None:
            raise StreamClosed("source")
    dispatch = (
        Dispatch.objects.filter(pk=dispatch_id, kind=kind, status=Dispatch.Status.SENDING)
        .only("content_spec", "variants")
        .first()
    )
    if dispatch is None:
        raise StreamClosed("dispatch")
    if kind in _RECIPIENT_CHECKS and recipients:
        condition, _ = _RECIPIENT_CHECKS[kind]
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM (SELECT kind, source_id, stream_version FROM delivery_dispatch WHERE id = %s) d "  # noqa: S608 (a registered constant; values are bound)
                f"CROSS JOIN (SELECT value AS profile_id FROM json_each(%s)) v WHERE ({condition}) IS NOT TRUE",
                [dispatch_id, json.dumps([r.profile_id for r in recipients])],
            )
            refused = cursor.fetchone()[0]
        if refused:
            _refuse_recipients(kind, refused, len(recipients))
    hold, skip = _held(recipients, rules, now)
    devices: dict[int, list] = {}
    for device in Device.objects.filter(
        profile_id__in=[r.profile_id for r in recipients], app_id=app_id, active=True
    ).order_by("pk"):
        devices.setdefault(device.profile_id, []).append(device)
    made = []
    for recipient, until, quiet in zip(recipients, hold, skip, strict=True):
        ttl = int(dispatch.spec_for(recipient.variant).get("ttl_seconds") or 0)
        expired = until is not None and not ttl  # "now or never", held until the quiet hours end
        for device in devices.get(recipient.profile_id) or [None]:
            if recipient.variant == 0 or device is None or not device.push_enabled or quiet or expired:
                if device is None:
                    reason = "no_device"
                elif not device.push_enabled:
                    reason = "not_opted_in"
                elif recipient.variant == 0:
                    reason = "holdout"
                else:
                    reason = "quiet_hours" if quiet else "expired"
                status, finished = DS.SKIPPED, now
            else:
                # Held until the quiet hours end, it says why it waits (until it is sent).
                status, reason, finished = DS.QUEUED, "quiet_hours" if until else "", None
            made.append(
                Delivery(
                    dispatch_id=dispatch_id,
                    device=device,
                    profile_id=recipient.profile_id,
                    status=status,
                    reason=reason,
                    finished_at=finished,
                    next_attempt_at=None if finished else until,
                    held_until=None if finished else until,
                    queued_at=now,
                    context=recipient.context,
                    variant=recipient.variant,
                    expires_at=(until or now) + dt.timedelta(seconds=ttl) if ttl else None,
                )
            )
    Delivery.objects.bulk_create(made)
    rollup_add_appended(ids=[d.pk for d in made])
    rows = [AppendedRow(d.pk, d.profile_id, d.device_id, d.status, d.reason) for d in made]
    if rules is not None and rules.frequency_cap:
        rows = _frequency_cap(dispatch_id, app_id, rows, rules, now)
    return rows


def _frequency_cap(
    dispatch_id: int, app_id: int, rows: list[AppendedRow], rules: DeliveryRules, now: dt.datetime
) -> list[AppendedRow]:
    """Skip the new queued rows of profiles that already had ``frequency_cap`` marketing pushes of the
    app (accepted in the window, or on their way in a running dispatch). A bulk dispatch counts once
    per profile, a stream once per call. Serialised per app, so two calls cannot both pass."""
    queued = [r.id for r in rows if r.status == DS.QUEUED]
    if not queued:
        return rows
    since = now - dt.timedelta(hours=rules.frequency_window_hours)
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_CAP_LOCK_CLASS, app_id])
        rows_in = ", ".join(["%s"] * len(queued))
        profile_ids = sorted({r.profile_id for r in rows if r.status == DS.QUEUED})
        profiles_in = ", ".join(["%s"] * len(profile_ids))
        on_its_way = CAP_ON_ITS_WAY.format(row="d")
        # Accepted in the window: the profiles' index of finished rows. On their way: a running
        # bulk dispatch's row of one of the profiles' devices (its (dispatch, device) index), or
        # a running stream's unfinished row; never a walk over a bulk send's million rows.
        cursor.execute(
            "UPDATE delivery_delivery SET status = 'skipped', reason = 'frequency_cap', finished_at = %s "  # noqa: S608 (constants and placeholders; values are bound)
            f"WHERE id IN ({rows_in}) AND profile_id IN (SELECT c.profile_id FROM ("
            " SELECT d.profile_id, d.dispatch_id, d.queued_at FROM delivery_delivery d"
            f" JOIN delivery_dispatch x ON x.id = d.dispatch_id WHERE {CAP_DISPATCHES} AND d.profile_id IN ({profiles_in})"
            " AND d.status = 'accepted' AND d.finished_at >= %s"
            " UNION ALL SELECT d.profile_id, d.dispatch_id, d.queued_at FROM delivery_device dev"
            " JOIN delivery_dispatch x ON x.app_id = dev.app_id"
            " JOIN delivery_delivery d ON d.dispatch_id = x.id AND d.device_id = dev.id AND d.queued_at IS NULL"
            f" WHERE dev.profile_id IN ({profiles_in}) AND {CAP_DISPATCHES} AND {on_its_way} AND d.profile_id = dev.profile_id"
            " UNION ALL SELECT d.profile_id, d.dispatch_id, d.queued_at FROM delivery_dispatch x"
            " JOIN delivery_delivery d ON d.dispatch_id = x.id AND d.queued_at IS NOT NULL"
            f" WHERE {CAP_DISPATCHES} AND {on_its_way} AND d.profile_id IN ({profiles_in}) AND d.id NOT IN ({rows_in})"
            f") c GROUP BY c.profile_id HAVING {CAP_PUSHES} >= %s)"
            " RETURNING id",
            [
                adapt(now),
                *queued,
                app_id,
                *profile_ids,
                adapt(since),
                *profile_ids,
                app_id,
                app_id,
                *profile_ids,
                *queued,
                rules.frequency_cap,
            ],
        )
        capped = {row[0] for row in cursor.fetchall()}
    rollup_add_finished(ids=sorted(capped))
    return [dataclasses.replace(r, status=DS.SKIPPED, reason="frequency_cap") if r.id in capped else r for r in rows]


def streams_close(*, kind: str, source_id: int, by: User | None, reason: str) -> int:
    """Close the open streams of a source (it was stopped, or its approval voided): their queued rows
    become ``skipped`` / ``stopped``; rows in flight finish. Call with the source row locked
    ``FOR UPDATE`` (calls in flight have committed, later ones see the new state). Returns the
    number of streams closed."""
    now = timezone.now()
    closed = 0
    for dispatch in Dispatch.objects.select_for_update().filter(
        standing=True, kind=kind, source_id=source_id, status=Dispatch.Status.SENDING
    ):
        stopped = deliveries_finish(
            where="d.dispatch_id = %s AND d.finished_at IS NULL AND d.status = 'queued'",
            params=[dispatch.pk],
            status=DS.SKIPPED,
            reason="stopped",
            now=now,
        )
        dispatch.status = Dispatch.Status.STOPPED
        dispatch.finished_at = now
        dispatch.rows_close()  # calls in flight have committed; later ones see it stopped
        dispatch.save(update_fields=["status", "finished_at", "rows_until_id"])
        audit(actor=by, action="dispatch_stream_closed", obj=dispatch, summary={"stopped": stopped, "reason": reason})
        transaction.on_commit(lambda pk=dispatch.pk: _recount(pk))
        closed += 1
    return closed


def _recount(dispatch_id: int) -> None:
    from delivery.services.dispatches import dispatch_recount

    dispatch_recount(dispatch_id=dispatch_id)


def streams_watch(*, now: dt.datetime | None = None) -> dict:
    """Every minute: refresh open streams' counters, and finish those no call appends to any more
    (an earlier day, or a version that is no longer the approved one) once nothing is queued or
    in flight. A stream is finished under its row lock, which a call appending holds shared.

    On a database this instance has not claimed (a restored copy), does nothing: the streams it
    inherited are left as they are, and no sender is started."""
    from delivery.services.dispatches import dispatch_recount
    from operations.instance import instance_refuses

    if instance_refuses(action="run the stream watchdog"):
        return {"refreshed": 0, "finished": 0}
    now = now or timezone.now()
    today = _today(now)
    finished = refreshed = 0
    for dispatch in Dispatch.objects.filter(standing=True, status=Dispatch.Status.SENDING).only(
        "id", "stream_day", "kind", "source_id", "stream_version"
    ):
        if dispatch.stream_day is not None and dispatch.stream_day >= today and _is_current(dispatch):
            dispatch_recount(dispatch_id=dispatch.pk)
            refreshed += 1
            continue
        with transaction.atomic():
            locked = Dispatch.objects.select_for_update().get(pk=dispatch.pk)
            busy = Delivery.objects.filter(
                dispatch_id=dispatch.pk, finished_at__isnull=True, status__in=(DS.QUEUED, DS.SENDING)
            ).exists()
            if locked.status != Dispatch.Status.SENDING or busy:
                continue
            locked.status = Dispatch.Status.DONE
            locked.finished_at = now
            locked.rows_close()  # appending calls hold its row shared: none is in flight now
            locked.save(update_fields=["status", "finished_at", "rows_until_id"])
        dispatch = dispatch_recount(dispatch_id=dispatch.pk)
        audit(actor=None, action="dispatch_done", obj=dispatch, summary={"accepted": dispatch.accepted})
        finished += 1
    streams_senders_ensure()
    return {"refreshed": refreshed, "finished": finished}


_CURRENT_CHECKS: dict[str, object] = {}


def stream_current_check_register(*, kind: str, check) -> None:
    """Plug how a kind tells whether a stream's version is still the one calls append to:
    ``check(source_id, version) -> bool`` (campaigns: the approved fingerprint)."""
    _CURRENT_CHECKS[kind] = check


def _is_current(dispatch: Dispatch) -> bool:
    check = _CURRENT_CHECKS.get(dispatch.kind)
    return True if check is None else bool(check(dispatch.source_id, dispatch.stream_version))


def stream_live_figures(dispatch: Dispatch, *, now: dt.datetime | None = None) -> dict:
    """A stream's last minute: messages accepted (in all, and per second), and trigger-to-accepted
    latency p50/p99 (ms), None when no row counts in it.

    The latency leaves out rows quiet hours held (``Delivery.held_until``): their hours of waiting
    are the app's rules, not the system's speed. A retry's wait stays in it."""
    now = now or timezone.now()
    since = now - dt.timedelta(seconds=60)
    recent = Delivery.objects.filter(
        dispatch_id=dispatch.pk, queued_at__isnull=False, finished_at__gte=since, status=DS.ACCEPTED
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), "
                "percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FROM (SELECT "  # NULLs are left out
                "CASE WHEN held_until IS NULL THEN EXTRACT(EPOCH FROM finished_at - queued_at) * 1000 END AS ms "
                "FROM delivery_delivery "
                "WHERE dispatch_id = %s AND queued_at IS NOT NULL AND finished_at >= %s AND status = 'accepted') t",
                [dispatch.pk, since],
            )
            count, p50, p99 = cursor.fetchone()
    else:
        rows = list(recent.values_list("queued_at", "finished_at", "held_until"))
        spans = sorted((f - q).total_seconds() * 1000 for q, f, held in rows if held is None)
        count = len(rows)
        p50 = spans[int(0.5 * (len(spans) - 1))] if spans else None
        p99 = spans[int(0.99 * (len(spans) - 1))] if spans else None
    return {
        "accepted": count,
        "rate_per_second": round(count / 60.0, 1),
        "latency_p50_ms": round(p50, 1) if p50 is not None else None,
        "latency_p99_ms": round(p99, 1) if p99 is not None else None,
    }
