"""Claims: queued deliveries taken under a lease for sending, and their outcomes written back.

``deliveries_claim`` moves ready ``queued`` rows to ``sending`` in one statement (``SKIP LOCKED``
on PostgreSQL), each under a lease the watchdog judges by the database's clock;
``deliveries_write_back`` writes the outcomes in bulk over the rows still ``sending`` (and over
those the watchdog ended ``unknown`` while the claim that sent them waited for their answers) and
moves the dispatch's counters by what was written. The send engine (``delivery.services.sending``)
and the stream senders (``delivery.services.stream_senders``) send what lies between.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F

from accounts.json_values import json_compact
from audiences.models import Profile
from delivery.models import Delivery, Device, DeviceTombstone, Dispatch
from delivery.rules import QuietAtClaim
from delivery.services.dispatches import DS, NO_PLATFORM, _dt, dispatch_accepted_late, platform_counts_add
from delivery.services.rollups import (
    FINAL,
    gone_platform_sql,
    late_platform_sql,
    rollup_add_finished,
    rollup_insert_sql,
    rollup_take_finished,
)

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
    skip: str = ""  # why it is not sent after all (``unsendable_reason``, quiet hours); "" to send
    held: bool = False  # held by quiet hours when claimed: still queued, not to be sent now

    @property
    def goes(self) -> bool:
        """Sent to a provider now: its device has a token and nothing skips it (held rows are left out before)."""
        return bool(self.token) and not self.skip


@dataclass(slots=True)
class Result:
    """What to write back for one row."""

    id: int
    status: str
    reason: str = ""
    provider_id: str = ""
    next_attempt_at: datetime | None = None


def _aware(value) -> datetime | None:
    """A datetime read by a raw query: SQLite gives naive UTC text, PostgreSQL aware values."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# A row is resolved ahead of its sending (a throttled send runs for hours, quiet hours hold a row
# until they end): its device's state when it goes is the one that counts. A phone logged out
# (unregistered) or declared dead since, handed to another user (its token registered for another
# profile: the row's message is the first one's, rendered with their attributes) or opted out
# since gets nothing; its row is skipped saying why. (A row whose device was deleted has no token:
# it fails as ``device_deleted``.)
_UNSENDABLE_SQL = (
    "CASE WHEN dev.id IS NULL THEN '' WHEN NOT dev.active THEN 'device_inactive' "
    "WHEN dev.profile_id IS DISTINCT FROM c.profile_id THEN 'device_moved' "
    "WHEN NOT dev.push_enabled THEN 'not_opted_in' ELSE '' END"
)


def unsendable_reason(row: Claimed, *, active: bool, owner: int | None, push_enabled: bool) -> str:
    """Why the row's device may no longer get it, as ``_UNSENDABLE_SQL`` says it; "" to send."""
    if not active:
        return "device_inactive"
    if owner != row.profile_id:
        return "device_moved"
    return "" if push_enabled else "not_opted_in"


# A claim's lease: its seconds bound, on the database's clock (``deliveries_claim``).
_LEASE_SQL = "now() + %s * interval '1 second'"


def deliveries_claim(
    dispatch_id: int,
    *,
    limit: int,
    now: datetime,
    with_profiles: bool = False,
    after: int = 0,
    quiet: QuietAtClaim | None = None,
) -> list[Claimed]:
    """Atomically move up to ``limit`` ready queued rows to ``sending`` under a lease.

    On PostgreSQL one statement claims (``FOR UPDATE SKIP LOCKED``) and returns each row with
    its device's token and platform (and its profile when ``with_profiles``). Only rows whose id
    is above ``after`` are taken: a sender going through a big dispatch passes its last claimed
    id, so each claim starts where the last one ended instead of stepping again over the index
    entries of every row sent before it (which stay until a vacuum removes them).

    With ``quiet`` (``delivery.rules.quiet_at_claim``), the app's quiet hours are judged again
    in each row's profile's zone at ``now``, as the resolve judged them: a send resolved before they
    started may still be going inside them. A row they reach is held in the same statement (left
    ``queued`` / ``quiet_hours`` until they end, its TTL from then, not leased; returned with
    ``held``), or, in discard mode or with a TTL of 0, claimed with ``skip`` saying why
    (``quiet_hours`` / ``expired``), for its write-back to skip it.
    """
    # On PostgreSQL the lease runs on the database's clock, the one the watchdog judges it by:
    # a worker whose clock is behind cannot stamp a lease that is over before it starts. (The
    # embedded SQLite mode runs on one machine.)
    lease = now + timedelta(seconds=settings.PUSHDESK_SEND_LEASE_SECONDS)
    ready = (
        "dispatch_id = %s AND id > %s AND finished_at IS NULL AND status = 'queued' "
        "AND (next_attempt_at IS NULL OR next_attempt_at <= %s)"
    )
    if connection.vendor == "postgresql":
        if quiet is None:
            sql = (
                f"WITH picked AS (SELECT id FROM delivery_delivery WHERE {ready} ORDER BY id LIMIT %s "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
                "FOR UPDATE SKIP LOCKED), "
                "claimed AS (UPDATE delivery_delivery d SET status = 'sending', attempts = d.attempts + 1, "
                f"lease_expires_at = {_LEASE_SQL} WHERE d.id = ANY(ARRAY(SELECT id FROM picked)) "
                "RETURNING d.id, d.device_id, d.profile_id, d.attempts, d.expires_at, d.context, d.variant) "
                + _claimed_select(_UNSENDABLE_SQL, with_profiles=with_profiles)
            )
            params = [dispatch_id, after, _dt(now), limit, settings.PUSHDESK_SEND_LEASE_SECONDS]
        else:
            sql = _quiet_claim_sql(ready, quiet, with_profiles=with_profiles)
            params = [
                dispatch_id,
                after,
                _dt(now),
                limit,
                quiet.zones_json(now),
                settings.PUSHDESK_SEND_LEASE_SECONDS,
            ]
        # The update finds the picked rows by their ids as an array, an index condition whatever
        # the statistics say (see _WRITE_BACK_SQL). One statement: alone in autocommit (no BEGIN
        # and COMMIT round trips before the send; its commit still waits for the disk, so a
        # claimed row is never sent again after a crash), from a plan the connection keeps.
        from config.db import prepared_cursor

        with prepared_cursor() as cursor:
            cursor.execute(sql, params)
            fetched = cursor.fetchall()
        rows = []
        at = 10 if quiet is None else 11  # the profile's columns (after ``held`` when quiet hours are judged)
        for values in fetched:
            row = Claimed(*values[:4], token=values[4] or "", platform=values[5] or "", expires_at=values[6])
            row.context = json.loads(values[7]) if isinstance(values[7], str) else values[7]
            row.variant, row.skip = values[8], values[9]
            if quiet is not None:
                row.held = values[10]
            if with_profiles and values[at] is not None:
                attributes = values[at + 3]
                if isinstance(attributes, str):
                    attributes = json.loads(attributes)
                row.profile = {
                    "external_id": values[at],
                    "locale": values[at + 1],
                    "timezone": values[at + 2],
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
        cursor.execute(sql, [_dt(lease), dispatch_id, after, _dt(now), limit])
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
                "id", "token", "platform", "active", "profile_id", "push_enabled"
            )
        }
        profiles = _profiles_for(rows) if with_profiles else {}
        gone = _gone_platforms([r.device_id for r in rows if r.device_id and r.device_id not in devices])
        for row in rows:
            device = devices.get(row.device_id)
            if device is not None:
                row.token, row.platform, active, owner, push_enabled = device
                row.skip = unsendable_reason(row, active=active, owner=owner, push_enabled=push_enabled)
            else:
                row.platform = gone.get(row.device_id, "")
            row.profile = profiles.get(row.profile_id)
        if quiet is not None:
            _quiet_judge(rows, quiet, now=now)
    return rows


def _gone_platforms(device_ids: list[int]) -> dict[int, str]:
    """The platforms the tombstones of these deleted devices keep (``gone_platform_sql``), by device."""
    if not device_ids:
        return {}
    return dict(
        DeviceTombstone.objects.filter(device_id__in=device_ids)
        .exclude(platform="")
        .values_list("device_id", "platform")
    )


def _claimed_select(skip: str, *, held: bool = False, with_profiles: bool) -> str:
    """The claim statements' last SELECT (``deliveries_claim``), over their ``claimed`` rows: each
    with its device's token and platform (a deleted device's as its tombstone keeps it: the one
    the row was targeted on and its outcome counts under, though it has no token to send to),
    ``skip`` (why it is not sent, "" to send), then with ``held`` whether quiet hours held it (the
    quiet-hours claim's ``c.hold``) and with ``with_profiles`` its profile's columns. A shape's text is the same at every call: the
    connection keeps the statement's plan by its text."""
    profile_columns = ", p.external_id, p.locale, p.timezone, p.attributes" if with_profiles else ""
    profile_join = " LEFT JOIN audiences_profile p ON p.id = c.profile_id" if with_profiles else ""
    return (
        "SELECT c.id, c.device_id, c.profile_id, c.attempts, dev.token, "  # noqa: S608 (constants)
        f"COALESCE(dev.platform, {gone_platform_sql('c.device_id')}), c.expires_at, c.context, "
        f"c.variant, {skip}{', c.hold' if held else ''}{profile_columns} "
        f"FROM claimed c LEFT JOIN delivery_device dev ON dev.id = c.device_id{profile_join}"
    )


def _quiet_claim_sql(ready: str, quiet: QuietAtClaim, *, with_profiles: bool) -> str:
    """The claim's statement judging quiet hours (``deliveries_claim``): ``judged`` reads each
    picked row's profile's zone in the zones' answers (a JSON object, bound: when their quiet hours
    end, or null; "" for the rules' default zone, which an unknown or empty zone falls back to), the
    update holds or claims each row, and ``held`` says which it did."""
    ttl = quiet.ttl_sql("pk.variant")
    quiet_until = "(COALESCE(z.m -> NULLIF(qp.timezone, ''), z.m -> '') #>> '{}')::timestamptz"
    if quiet.discard:
        hold, skip = "false", f"CASE WHEN {quiet_until} IS NOT NULL THEN 'quiet_hours' ELSE '' END"
    else:
        # A TTL of 0 is "now or never": held until they end, it would be expired then.
        hold = f"({quiet_until} IS NOT NULL AND {ttl} > 0)"
        skip = f"CASE WHEN {quiet_until} IS NOT NULL AND {ttl} = 0 THEN 'expired' ELSE '' END"
    return (
        f"WITH picked AS (SELECT id, profile_id, variant FROM delivery_delivery WHERE {ready} ORDER BY id "  # noqa: S608 (constants, integers of ours and the ORM's own SQL; values are bound)
        "LIMIT %s FOR UPDATE SKIP LOCKED), "
        f"judged AS (SELECT pk.id, {hold} AS hold, {quiet_until} AS until, {ttl} AS ttl, {skip} AS quiet_skip "
        "FROM picked pk CROSS JOIN (SELECT %s::jsonb AS m) z LEFT JOIN audiences_profile qp ON qp.id = pk.profile_id), "
        "claimed AS (UPDATE delivery_delivery d SET "
        "status = CASE WHEN j.hold THEN 'queued' ELSE 'sending' END, "
        "attempts = d.attempts + CASE WHEN j.hold THEN 0 ELSE 1 END, "
        f"lease_expires_at = CASE WHEN j.hold THEN NULL ELSE {_LEASE_SQL} END, "
        "next_attempt_at = CASE WHEN j.hold THEN j.until ELSE d.next_attempt_at END, "
        "held_until = CASE WHEN j.hold THEN j.until ELSE d.held_until END, "
        "expires_at = CASE WHEN j.hold THEN j.until + j.ttl * interval '1 second' ELSE d.expires_at END, "
        "reason = CASE WHEN j.hold THEN 'quiet_hours' ELSE d.reason END "
        "FROM judged j WHERE d.id = ANY(ARRAY(SELECT id FROM picked)) AND j.id = d.id "
        "RETURNING d.id, d.device_id, d.profile_id, d.attempts, d.expires_at, d.context, d.variant, j.hold, "
        "j.quiet_skip) "
        + _claimed_select(
            f"COALESCE(NULLIF({_UNSENDABLE_SQL}, ''), c.quiet_skip)", held=True, with_profiles=with_profiles
        )
    )


def _quiet_judge(rows: list[Claimed], quiet: QuietAtClaim, *, now: datetime) -> None:
    """The embedded mode's ``_quiet_claim_sql``, over rows claimed already: those the quiet hours
    reach are put back (``queued`` / ``quiet_hours`` until they end, one update per end) or get
    their ``skip``."""
    zones = quiet.zones(now)
    own_ttl, variants = quiet.ttls
    names = dict(Profile.objects.filter(pk__in={r.profile_id for r in rows}).values_list("pk", "timezone"))
    held: dict[datetime, list[int]] = {}
    for row in rows:
        name = names.get(row.profile_id) or ""
        until = zones[name] if name in zones else zones[""]
        if until is None:
            continue
        if quiet.discard:
            row.skip = row.skip or "quiet_hours"
        elif not variants.get(row.variant, own_ttl):
            row.skip = row.skip or "expired"
        else:
            row.held = True
            held.setdefault(datetime.fromisoformat(until), []).append(row.id)
    for until, ids in held.items():
        Delivery.objects.filter(pk__in=ids, status=DS.SENDING).update(
            status=DS.QUEUED,
            attempts=F("attempts") - 1,
            lease_expires_at=None,
            next_attempt_at=until,
            held_until=until,
            expires_at=quiet.expiry(until),
            reason="quiet_hours",
        )


# A late answer asking for a retry: the row the watchdog ended is never sent again, so it fails.
LATE_RETRY = " (lease over before a retry)"


def deliveries_write_back(
    dispatch_id: int,
    results: list[Result],
    *,
    now: datetime,
    platforms: dict[int, str] | None = None,
    claims: dict[int, int] | None = None,
) -> Counter:
    """Write outcomes in bulk, only over rows still ``sending``; return the final statuses written.

    The dispatch's counters move by what was written, and so do its counts per platform
    (``platforms``: row id -> platform) in ``by_platform``.

    ``claims`` (row id -> its ``attempts`` as its claim returned it) names the claim that sent each
    row. A row whose lease ran out while the provider held it (a slow worker, not a dead one), ended
    ``unknown`` (``lease_expired``) by the watchdog, takes its claim's answer all the same: accepted
    with its id, failed with its reason, and a retry as failed (``LATE_RETRY``: it is never sent
    again); its count moves from ``unknown`` to it, where it finished. Nothing else is written
    over: a row claimed again since (its attempts differ), finished by anything else, or answered
    without its claim. Such rows are looked up only when some row was not ``sending``.

    Holds the dispatch row (``FOR NO KEY UPDATE``, the lock its counters take anyway): a stop
    either committed before, and a retry becomes ``skipped`` / ``stopped`` instead of ``queued``
    (nothing would ever pick it up), or waits for this write and then stops the requeued rows.
    The watchdog takes the same lock before it ends rows ``unknown``.
    """
    if not results:
        return Counter()
    platforms = platforms or {}
    claims = claims or {}
    if connection.vendor == "postgresql":
        return _write_back_one_statement(dispatch_id, results, now=now, platforms=platforms, claims=claims)
    finals = set(Delivery.FINAL_STATUSES)
    written: Counter = Counter()
    moved: Counter = Counter()  # final status -> rows, less those a late answer took from unknown
    retried: Counter = Counter()
    per_platform: Counter = Counter()  # (platform, final status) -> rows written
    finished: list[int] = []  # rows made final: counted into the rollup
    unanswered: list[Result] = []  # not sending: perhaps ended unknown while their answer came
    with transaction.atomic(), connection.cursor() as cursor:
        status, by_platform, retries = (
            Dispatch.objects.select_for_update(no_key=True)
            .values_list("status", "by_platform", "retries")
            .get(pk=dispatch_id)
        )
        asked = results
        if status != Dispatch.Status.SENDING:
            results = [Result(r.id, DS.SKIPPED, reason="stopped") if r.status == DS.QUEUED else r for r in results]
        for r, answer in zip(results, asked, strict=True):
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
                    moved[r.status] += 1
                    per_platform[platforms.get(r.id, NO_PLATFORM), r.status] += 1
                    finished.append(r.id)
            elif claims.get(r.id) is not None:
                unanswered.append(answer)
        late = _late_answers(unanswered, claims)
        # Counted where the watchdog counted them, their claim's platform should the device be gone.
        late_by_platform: dict[str, list[int]] = {}
        for r in late:
            late_by_platform.setdefault(platforms.get(r.id, NO_PLATFORM), []).append(r.id)
        for platform, ids in late_by_platform.items():
            rollup_take_finished(ids=ids, gone_as=platform)
        for r in late:
            cursor.execute(
                "UPDATE delivery_delivery SET status = %s, reason = %s, provider_message_id = %s WHERE id = %s",
                [r.status, r.reason[:100], r.provider_id[:200], r.id],
            )
            written[r.status] += 1
            moved[r.status] += 1
            moved[DS.UNKNOWN] -= 1
            per_platform[platforms.get(r.id, NO_PLATFORM), r.status] += 1
            per_platform[platforms.get(r.id, NO_PLATFORM), DS.UNKNOWN] -= 1
        rollup_add_finished(ids=finished)
        for platform, ids in late_by_platform.items():
            rollup_add_finished(ids=ids, gone_as=platform)
        # One update of the row already held: the counters, the counts per platform, the retries.
        changes = {status: F(status) + n for status, n in moved.items() if status in finals and n}
        if changes:
            changes["by_platform"] = platform_counts_add(by_platform or {}, per_platform)
        if retried:
            retries = dict(retries or {})
            for reason, n in retried.items():
                retries[reason] = retries.get(reason, 0) + n
            changes["retries"] = retries
        if changes:
            Dispatch.objects.filter(pk=dispatch_id).update(**changes)
    if late:
        _late_landed(dispatch_id, Counter(r.status for r in late))
    return written


def _late_answers(answers: list[Result], claims: dict[int, int]) -> list[Result]:
    """The embedded mode's late answers (``deliveries_write_back``): those of ``answers`` whose row
    the watchdog ended ``unknown`` under the claim that sent it, as they are to be written."""
    if not answers:
        return []
    ended = dict(
        Delivery.objects.filter(pk__in=[r.id for r in answers], status=DS.UNKNOWN, reason="lease_expired").values_list(
            "pk", "attempts"
        )
    )
    return [
        Result(r.id, DS.FAILED, reason=f"{r.reason}{LATE_RETRY}") if r.status == DS.QUEUED else r
        for r in answers
        if r.id in ended and ended[r.id] == claims[r.id]
    ]


def _late_landed(dispatch_id: int, late: Counter) -> None:
    """After answers that came once their rows' lease had run out were written: a log line for the
    operator who saw them ``unknown``, and a dispatch the watchdog finished ``failed`` for having
    none accepted judged again when some were."""
    if late[DS.ACCEPTED]:
        dispatch_accepted_late(dispatch_id=dispatch_id)
    log.warning(
        "dispatch %s: %s answered after the watchdog had ended them unknown (their lease ran out): %s",
        dispatch_id,
        "a row" if late.total() == 1 else f"{late.total()} rows",
        ", ".join(f"{status} {n}" for status, n in sorted(late.items())),
        extra={"dispatch": dispatch_id, "late": dict(late)},
    )


def _json_counts_add(column: str, counts: str) -> str:
    """SQL for the JSON object ``column`` ({key: n}) plus the rows of ``counts`` (key, n)."""
    return (
        "(SELECT COALESCE(jsonb_object_agg(k, n), '{}'::jsonb) FROM (SELECT k, sum(n) AS n FROM ("  # noqa: S608 (constants)
        f"SELECT key AS k, value::bigint AS n FROM jsonb_each_text(COALESCE({column}, '{{}}'::jsonb)) "
        f"UNION ALL {counts}) AS s GROUP BY k) AS t)"
    )


_FINAL_COLUMNS = ", ".join(
    f"{s} = x.{s} + (SELECT COALESCE(sum(n), 0) FROM outcomes WHERE status = '{s}')"  # noqa: S608 (constants)
    for s in FINAL
)
_PER_PLATFORM = (
    # {platform: {outcome: n}} plus the final rows written, by platform and status (a late answer's
    # row taken from unknown); an outcome that comes to 0 is left out, as a recount leaves it.
    "(SELECT COALESCE(jsonb_object_agg(p, o), '{}'::jsonb) FROM (SELECT p, jsonb_object_agg(k, n) AS o FROM ("
    "SELECT p, k, sum(n) AS n FROM ("
    "SELECT e.key AS p, i.key AS k, i.value::bigint AS n "
    "FROM jsonb_each(COALESCE(x.by_platform, '{}'::jsonb)) AS e CROSS JOIN LATERAL jsonb_each_text(e.value) AS i "
    "UNION ALL SELECT platform, status, sum(n) FROM outcomes WHERE status <> 'queued' GROUP BY 1, 2"
    ") AS s GROUP BY p, k HAVING sum(n) <> 0) AS t GROUP BY p) AS u)"
)
_RETRIES = _json_counts_add("x.retries", "SELECT reason, count(*) FROM written WHERE status = 'queued' GROUP BY 1")
_ROW = "d.id, d.dispatch_id, d.device_id, d.variant, d.status, d.reason, d.finished_at, d.queued_at, v.platform"

# The whole write-back as one statement, alone in its transaction: one round trip.
# - the outcomes travel as one JSON array of [id, status, reason, provider id, next attempt,
#   platform, claim]: encoded in C, where psycopg adapts a list parameter value by value in Python
#   (six lists of a 2,000-row batch: 13.7 ms of the worker's CPU, against 0.8 ms as JSON);
# - the rows are found by their ids as an array (an index condition), not by the join alone: a
#   plan made while the statistics say the table is empty (a vacuum of an emptied table, until
#   the next analyze) read every row of the table through the primary key for each batch;
# - `held` locks the dispatch row first: every row written below is joined to it, so no delivery
#   row is touched before the lock is taken (the order a stop and the watchdog take them in too);
# - a queued retry of a dispatch that is no longer sending becomes skipped / stopped;
# - `late`: a row the watchdog ended unknown (lease_expired) while the provider held it takes the
#   answer of the claim that sent it (the same attempts), its retry failing (LATE_RETRY); looked
#   up only for rows `written` did not find, once it found fewer than it was given (on the usual
#   path two counts of rows in memory, then an empty array: no probe of the table). It keeps its
#   finished_at, so the rollup's row it leaves is the one the watchdog counted it in, and its
#   platform (`gone_as`: its claim's, should its device be deleted since) the one it counted;
# - the commit need not wait for the disk (set_config(..., true) is SET LOCAL): an outcome lost
#   with the server (the last moments before a crash of PostgreSQL itself) leaves its row
#   `sending`, and it ends `unknown` when its lease runs out, never sent again. The claim's
#   commit does wait. Inside a caller's transaction, its setting is left as it is;
# - `outcomes`: the rows' final statuses, a late row's also taken from unknown (n = -1), counted
#   into the rollup and into the dispatch's counters.
_WRITE_BACK_SQL = (
    "WITH held AS MATERIALIZED (SELECT id, status <> 'sending' AS closed FROM delivery_dispatch "  # noqa: S608 (constants; values are bound)
    "WHERE id = %s FOR NO KEY UPDATE), "
    "commit_mode AS MATERIALIZED (SELECT set_config('synchronous_commit', "
    "CASE WHEN %s THEN 'off' ELSE current_setting('synchronous_commit') END, true) AS setting), "
    "v AS (SELECT r.id, r.platform, r.claim, r.status AS asked, r.reason AS said, "
    "CASE WHEN held.closed AND r.status = 'queued' THEN 'skipped' ELSE r.status END AS status, "
    "CASE WHEN held.closed AND r.status = 'queued' THEN 'stopped' ELSE r.reason END AS reason, "
    "CASE WHEN held.closed AND r.status = 'queued' THEN '' ELSE r.pid END AS pid, "
    "CASE WHEN held.closed AND r.status = 'queued' THEN NULL ELSE r.next_at END AS next_at "
    "FROM held CROSS JOIN (SELECT (e->>0)::bigint AS id, e->>1 AS status, e->>2 AS reason, e->>3 AS pid, "
    "(e->>4)::timestamptz AS next_at, e->>5 AS platform, (e->>6)::integer AS claim "
    "FROM jsonb_array_elements(%s::jsonb) AS e) AS r), "
    "written AS (UPDATE delivery_delivery d SET status = v.status, reason = v.reason, "
    "provider_message_id = v.pid, next_attempt_at = v.next_at, "
    "finished_at = CASE WHEN v.status = 'queued' THEN NULL ELSE %s END, lease_expires_at = NULL "
    "FROM v WHERE d.id = ANY(ARRAY(SELECT id FROM v)) AND d.id = v.id AND d.status = 'sending' "
    f"RETURNING {_ROW}), "
    "late AS (UPDATE delivery_delivery d SET "
    "status = CASE WHEN v.asked = 'queued' THEN 'failed' ELSE v.asked END, "
    f"reason = CASE WHEN v.asked = 'queued' THEN left(v.said || '{LATE_RETRY}', 100) ELSE v.said END, "
    "provider_message_id = v.pid "
    "FROM v WHERE d.id = ANY(ARRAY(SELECT id FROM v WHERE (SELECT count(*) FROM written) < (SELECT count(*) FROM v) "
    "AND claim IS NOT NULL AND id NOT IN (SELECT id FROM written))) "
    "AND d.id = v.id AND d.status = 'unknown' AND d.reason = 'lease_expired' AND d.attempts = v.claim "
    f"RETURNING {_ROW}), "
    "outcomes AS (SELECT *, NULL AS gone_as, 1 AS n FROM written UNION ALL SELECT *, platform, 1 FROM late "
    "UNION ALL SELECT id, dispatch_id, device_id, variant, 'unknown', 'lease_expired', finished_at, queued_at, "
    "platform, platform, -1 FROM late), "
    f"counted AS ({rollup_insert_sql(where='true', outcomes=['final'], source='outcomes d', rows='SUM(d.n)', platform=late_platform_sql('d.gone_as'))}), "
    f"moved AS (UPDATE delivery_dispatch x SET {_FINAL_COLUMNS}, "
    "by_platform = CASE WHEN EXISTS (SELECT 1 FROM outcomes WHERE status <> 'queued') "
    f"THEN {_PER_PLATFORM} ELSE x.by_platform END, "
    "retries = CASE WHEN EXISTS (SELECT 1 FROM written WHERE status = 'queued') "
    f"THEN {_RETRIES} ELSE x.retries END "
    "FROM held WHERE x.id = held.id AND EXISTS (SELECT 1 FROM outcomes)) "
    "SELECT status, '' FROM written UNION ALL SELECT status, 'late' FROM late "
    "UNION ALL SELECT NULL, setting FROM commit_mode CROSS JOIN held"
)


def _write_back_one_statement(
    dispatch_id: int, results: list[Result], *, now: datetime, platforms, claims: dict[int, int]
) -> Counter:
    from config.db import prepared_cursor

    outcomes = [
        (
            r.id,
            r.status,
            r.reason[:100],
            r.provider_id[:200],
            None if r.next_attempt_at is None else r.next_attempt_at.isoformat(),
            platforms.get(r.id) or NO_PLATFORM,
            claims.get(r.id),
        )
        for r in results
    ]
    params = [dispatch_id, not connection.in_atomic_block, json_compact(outcomes), now]
    with prepared_cursor() as cursor:
        cursor.execute(_WRITE_BACK_SQL, params)
        fetched = cursor.fetchall()
    written: Counter = Counter()
    late: Counter = Counter()
    held = False
    for status, said in fetched:
        if status is None:
            held = True  # the marker row: the dispatch was there
        else:
            written[status] += 1
            if said == "late":
                late[status] += 1
    if not held:
        raise Dispatch.DoesNotExist(f"dispatch {dispatch_id} is gone: its outcomes were not written")
    if late:
        _late_landed(dispatch_id, late)
    return written


def _profiles_for(rows: list[Claimed]) -> dict[int, dict]:
    ids = {r.profile_id for r in rows if r.profile_id}
    return {
        pid: {"external_id": ext, "locale": locale, "timezone": tz, "attributes": attributes or {}}
        for pid, ext, locale, tz, attributes in Profile.objects.filter(pk__in=ids).values_list(
            "id", "external_id", "locale", "timezone", "attributes"
        )
    }
