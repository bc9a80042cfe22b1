"""Events: checks, ingestion and the listeners of apps further down the chain."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, OperationalError, connection, transaction
from django.utils import timezone

from accounts.json_values import json_compact
from accounts.models import User
from audiences.models import Event, EventReplay, Profile
from audiences.rules.schema import KEY_RE
from audiences.services.profiles import FUTURE_LIMIT, FUTURE_PROBLEM, _ensure_perm, external_id_problem, text_problem
from config.db import prepared_cursor

if TYPE_CHECKING:
    from accounts.stamps import Stamps

MAX_PROPERTIES_BYTES = 8 * 1024
PROPERTY_NAMES_PROBLEM = "Property names use letters, digits, _ . : - (at most 100 characters)."
PROPERTIES_SIZE_PROBLEM = f"Properties take at most {MAX_PROPERTIES_BYTES} bytes as JSON."

log = logging.getLogger(__name__)


def event_check(data: dict, *, now: dt.datetime | None = None) -> dict[str, str]:
    """Check one event's fields; return {field: message} for each problem (empty: fine)."""
    errors: dict[str, str] = {}
    if problem := external_id_problem(data.get("external_id")):
        errors["external_id"] = problem
    if problem := text_problem(data.get("name"), max_length=100):
        errors["name"] = problem
    properties = data.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            errors["properties"] = "Must be an object of name → value."
        elif any(not KEY_RE.match(k) for k in properties):
            errors["properties"] = PROPERTY_NAMES_PROBLEM
        elif len(json_compact(properties)) > MAX_PROPERTIES_BYTES:
            errors["properties"] = PROPERTIES_SIZE_PROBLEM
    occurred_at = data.get("occurred_at")
    if not isinstance(occurred_at, dt.datetime) or timezone.is_naive(occurred_at):
        errors["occurred_at"] = "This field is required: an ISO 8601 time with a time zone."
    elif occurred_at > (now or timezone.now()) + FUTURE_LIMIT:
        errors["occurred_at"] = FUTURE_PROBLEM
    return errors


def events_ingest(
    *,
    items: list[dict],
    by: User,
    stamps: Stamps | None = None,
    checked: bool = False,
    on_stored: Callable[[list[int]], None] | None = None,
) -> list[int]:
    """Store events (``external_id``, ``name``, ``properties``, ``occurred_at``); return their ids, in order.

    A profile unknown so far is created (events may arrive before the profile upsert). Each
    profile's ``last_seen_at`` moves forward to its newest event. The event listeners (journeys'
    entries and exits) run in the same transaction: the events and what they caused commit
    together. Events are data, not changes of configuration: they are not written to the audit
    log. A listener that fails is run again for the events later (``EventReplay``); the events are
    stored. Raises PermissionDenied when the role may not write events, ValidationError on bad items
    (``event_check``), EventsNotStored when even that could not be recorded (the connection
    failed: nothing of the call is stored, so sending it again stores the events once). ``stamps``: the
    version stamps the caller read already (an API call reads the listeners' with its key's).
    ``checked``: every item already passed ``event_check`` (the API checks each item once, at the
    boundary) and is not checked again. ``on_stored(event_ids)`` runs in the events' transaction once
    they and what they caused are written (the API stores an Idempotency-Key's answer there: it
    commits with the events, or neither does).
    """
    _ensure_perm(by, "audiences.add_event", "Your role may not write events.")
    if len(items) > settings.AUDIENCES_BULK_MAX_ITEMS:
        raise ValidationError(f"At most {settings.AUDIENCES_BULK_MAX_ITEMS} events per call.")
    now = timezone.now()
    if not checked:
        for index, item in enumerate(items):
            problems = event_check(item, now=now)
            if problems:
                raise ValidationError({f"[{index}].{k}": v for k, v in problems.items()})
    if not items:
        return []
    seen: dict[str, dt.datetime] = {}  # each profile's newest event, never later than now
    for item in items:
        external_id, when = item["external_id"], item["occurred_at"]
        if when > now:
            when = now
        previous = seen.get(external_id)
        if previous is None or previous < when:
            seen[external_id] = when
    ids = sorted(seen)
    names = {item["name"] for item in items}
    # A listener that fails rolls the whole transaction back, and the call is written again
    # without it, its replay recorded (no savepoint on the way that succeeds: two round trips per
    # call, a tenth of the web's CPU for a one-event call); a transient database failure of a
    # listener (a deadlock's victim, a lock timeout) is first tried again once, as a caller would.
    deferred: dict[Callable[..., None], BaseException] = {}
    retried: set[Callable[..., None]] = set()
    while True:
        try:
            with transaction.atomic():
                if connection.vendor == "postgresql":
                    event_ids, profiles = _events_write_pg(items, ids=ids, seen=seen, now=now)
                else:
                    event_ids, profiles = _events_write(items, ids=ids, seen=seen, now=now)
                if _EVENT_LISTENERS:
                    # In the events' transaction: what the listeners write commits with the events,
                    # or neither does (a worker killed after the events' commit would lose their entries).
                    events = [(profiles[item["external_id"]], item["name"], item["occurred_at"]) for item in items]
                    _events_notify(event_ids=event_ids, events=events, names=names, stamps=stamps, deferred=deferred)
                if on_stored is not None:
                    on_stored(event_ids)
            return event_ids
        except _ListenerFailed as failure:
            fn, exc = failure.fn, failure.__cause__
            if isinstance(exc, OperationalError) and fn not in retried:
                retried.add(fn)
                log.warning("Event listener %s: a transient database failure, tried again", _listener_name(fn))
                continue
            log.error(
                "Event listener %s failed for %s events: they are stored, and it runs again for them later",
                _listener_name(fn),
                len(items),
                exc_info=exc,
            )
            deferred[fn] = exc


# Each id is looked up through the unique index by a subquery of its own (its LIMIT keeps the
# planner from making it a join): a join or `= ANY` over a thousand ids is planned as a scan of the
# whole table on a table of a few hundred thousand profiles (76 ms at 355,000). The profiles found
# are then locked in id order, each through the primary key (the outer rows come sorted, and the
# lateral subquery reads them in order): the order every writer of profiles takes,
# ``profiles_delete`` among them. Locked by external id, a call could hold a profile a deletion
# waits for while it waits for one the deletion holds. KEY SHARE keeps the profiles from being
# deleted until the events are in (events have no database constraint on their profile:
# ``profiles_delete`` locks the profiles first, so it waits for them), and does not make
# concurrent calls for the same profiles wait for each other. One deleted meanwhile is not returned.
LOCK_PROFILES_PG = """
SELECT o.external_id, p.id
FROM (SELECT x.external_id, f.id FROM jsonb_array_elements_text(%s::jsonb) AS x(external_id)
      CROSS JOIN LATERAL (SELECT id FROM audiences_profile WHERE external_id = x.external_id LIMIT 1) AS f
      ORDER BY f.id) AS o
CROSS JOIN LATERAL (SELECT id FROM audiences_profile WHERE id = o.id FOR KEY SHARE) AS p
"""
# Only unknown ids are inserted, so no sequence values are burnt on known profiles; they are born
# seen at their newest event. A profile created meanwhile by another call conflicts, and is locked
# and read by the next query. They are inserted by external id as Python sorts them (COLLATE "C"),
# after the known profiles are locked: the order every writer of profiles takes (an import's
# batch, ``profiles_upsert``), so none waits for another in a circle.
CREATE_PROFILES_PG = """
INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at, last_seen_at)
SELECT v.e->>0, '{}', '', '', %(now)s, %(now)s, TIMESTAMPTZ 'epoch' + (v.e->>1)::bigint * INTERVAL '1 microsecond'
FROM jsonb_array_elements(%(profiles)s::jsonb) AS v(e) ORDER BY (v.e->>0) COLLATE "C"
ON CONFLICT (external_id) DO NOTHING
RETURNING external_id, id
"""
# The events travel as one JSON array of [profile, name, properties, time] (one encode in C, no
# per-value adaptation); rows come back in the array's order, as Django's bulk_create relies on for
# a VALUES list. Times travel as microseconds since the epoch (``_epoch_us``): exact, and cheaper
# to write and to read than ISO 8601 text (a thousand isoformat() calls and timestamp parses).
INSERT_EVENTS_PG = """
INSERT INTO audiences_event (profile_id, name, properties, occurred_at, received_at)
SELECT (e->>0)::bigint, e->>1, e->2, TIMESTAMPTZ 'epoch' + (e->>3)::bigint * INTERVAL '1 microsecond', %(now)s
FROM jsonb_array_elements(%(events)s::jsonb) AS e
RETURNING id
"""
# Only the profiles whose last_seen_at moves are locked for update, in id order (the lateral
# subquery reads the array in order, by the primary key): two calls never hold those in opposite
# orders. The array is read through a scalar subquery, so the update's join is planned for a few
# rows, through the primary key, whatever the number of profiles; and the update finds them by
# their ids as an array (an index condition), not by the join alone, which a plan made while the
# statistics say the table is empty (a vacuum of an emptied table) joined to every profile.
MOVE_LAST_SEEN_PG = """
WITH moving AS MATERIALIZED (
    SELECT p.id, v.seen
    FROM (SELECT (e->>0)::bigint AS id, TIMESTAMPTZ 'epoch' + (e->>1)::bigint * INTERVAL '1 microsecond' AS seen
          FROM jsonb_array_elements((SELECT %(profiles)s::jsonb)) AS e) AS v
    CROSS JOIN LATERAL (
        SELECT id FROM audiences_profile
        WHERE id = v.id AND (last_seen_at IS NULL OR last_seen_at < v.seen)
        FOR NO KEY UPDATE
    ) AS p
)
UPDATE audiences_profile AS p SET last_seen_at = m.seen FROM moving AS m
WHERE p.id = ANY(ARRAY(SELECT id FROM moving)) AND p.id = m.id
"""
# The same at the end of a call, taking only the rows no other transaction holds (SKIP LOCKED): it
# never waits, so a call that has created profiles never waits for a profile another writer holds
# (which may wait for one it created: a circle), and the rows it locks are held only to its commit.
# It returns the ids it had to leave (still older than the call's events as its snapshot reads
# them): moved after the commit, in a statement of their own (``MOVE_LAST_SEEN_PG``).
MOVE_LAST_SEEN_FREE_PG = """
WITH v AS MATERIALIZED (
    SELECT (e->>0)::bigint AS id, TIMESTAMPTZ 'epoch' + (e->>1)::bigint * INTERVAL '1 microsecond' AS seen
    FROM jsonb_array_elements((SELECT %(profiles)s::jsonb)) AS e
), moving AS MATERIALIZED (
    SELECT p.id, v.seen FROM v
    CROSS JOIN LATERAL (
        SELECT id FROM audiences_profile
        WHERE id = v.id AND (last_seen_at IS NULL OR last_seen_at < v.seen)
        FOR NO KEY UPDATE SKIP LOCKED
    ) AS p
), moved AS (
    UPDATE audiences_profile AS p SET last_seen_at = m.seen FROM moving AS m
    WHERE p.id = ANY(ARRAY(SELECT id FROM moving)) AND p.id = m.id
)
SELECT v.id FROM v CROSS JOIN LATERAL (
    SELECT 1 FROM audiences_profile WHERE id = v.id AND (last_seen_at IS NULL OR last_seen_at < v.seen)
) AS older
WHERE v.id <> ALL(ARRAY(SELECT id FROM moving))
"""


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def _epoch_us(when: dt.datetime) -> int:
    """An aware time as whole microseconds since the epoch (exact, where a float's seconds are not)."""
    return (when - _EPOCH) // _MICROSECOND


def _events_write_pg(
    items: list[dict], *, ids: list[str], seen: dict, now: dt.datetime
) -> tuple[list[int], dict[str, int]]:
    """Write the events of one call in at most six statements (PostgreSQL); return their ids, and
    the profiles' ids by external id. The known profiles are locked by id (those whose last visit
    moves, for update) before the unknown ones are created, as every writer of profiles locks them.

    Lists travel as JSON text, encoded in C: psycopg adapts a list parameter value by value in
    Python (for a call's thousand ids and five hundred times, about 3.5 ms of the web's CPU)."""
    with prepared_cursor() as cursor:
        cursor.execute(LOCK_PROFILES_PG, [json_compact(ids)])
        profiles = dict(cursor.fetchall())
        known = list(profiles.items())
        missing = [x for x in ids if x not in profiles]
        if missing:
            born = json_compact([(x, _epoch_us(seen[x])) for x in missing])
            cursor.execute(CREATE_PROFILES_PG, {"now": now, "profiles": born})
            profiles.update(cursor.fetchall())
            raced = [x for x in missing if x not in profiles]
            if raced:  # created by another call meanwhile: known, and perhaps seen earlier
                cursor.execute(LOCK_PROFILES_PG, [json_compact(raced)])
                found = cursor.fetchall()
                profiles.update(found)
                known += found
        rows = [
            [profiles[item["external_id"]], item["name"], item.get("properties") or {}, _epoch_us(item["occurred_at"])]
            for item in items
        ]
        cursor.execute(INSERT_EVENTS_PG, {"now": now, "events": json_compact(rows)})
        event_ids = [row[0] for row in cursor.fetchall()]
        left = _last_seen_move(cursor, known, seen, free=True)
    if left:
        # Held by another writer now: moved once this call's transaction is over, holding nothing.
        transaction.on_commit(lambda: _last_seen_move_left(left, seen=seen))
    return event_ids, profiles


def _last_seen_move(cursor, known: list[tuple[str, int]], seen: dict, *, free: bool = False) -> list[tuple[str, int]]:
    """Move the last visit of these known profiles, (external id, id), to their newest event, each
    one that moves locked in id order (``MOVE_LAST_SEEN_PG``). ``free``: only those no other
    transaction holds (``MOVE_LAST_SEEN_FREE_PG``); returns the others, to move later."""
    if not known:
        return []
    known = sorted(known, key=lambda row: row[1])
    moving = json_compact([(pk, _epoch_us(seen[x])) for x, pk in known])
    if not free:
        cursor.execute(MOVE_LAST_SEEN_PG, {"profiles": moving})
        return []
    cursor.execute(MOVE_LAST_SEEN_FREE_PG, {"profiles": moving})
    left = {row[0] for row in cursor.fetchall()}
    return [(x, pk) for x, pk in known if pk in left]


def _last_seen_move_left(left: list[tuple[str, int]], *, seen: dict) -> None:
    """After a call's commit: move the last visits its transaction found held by another writer,
    waiting for them now that it holds nothing. A failure here loses no event (they are in): it is
    logged, and the next event of those profiles moves them."""
    try:
        with transaction.atomic(), prepared_cursor() as cursor:
            _last_seen_move(cursor, left, seen)
    except DatabaseError:
        log.exception("Moving the last visits of %s profiles after an events call failed", len(left))


def _events_write(
    items: list[dict], *, ids: list[str], seen: dict, now: dt.datetime
) -> tuple[list[int], dict[str, int]]:
    """Write the events of one call through the ORM (SQLite, the embedded mode); return their ids,
    and the profiles' ids by external id."""

    def locked(external_ids):
        return {
            p.external_id: p
            for p in Profile.objects.select_for_update()
            .filter(external_id__in=external_ids)
            .order_by("id")
            .only("id", "external_id", "last_seen_at")
        }

    profiles = locked(ids)
    missing = [x for x in ids if x not in profiles]
    if missing:  # only unknown ids are inserted: no sequence values burnt on known profiles
        Profile.objects.bulk_create(
            [Profile(external_id=x, created_at=now, updated_at=now) for x in missing], ignore_conflicts=True
        )
        profiles.update(locked(missing))
    events = Event.objects.bulk_create(
        [
            Event(
                profile_id=profiles[item["external_id"]].pk,
                name=item["name"],
                properties=item.get("properties") or {},
                occurred_at=item["occurred_at"],
                received_at=now,
            )
            for item in items
        ]
    )
    moved = []
    for external_id, when in seen.items():
        profile = profiles[external_id]
        if profile.last_seen_at is None or profile.last_seen_at < when:
            profile.last_seen_at = when
            moved.append(profile)
    if moved:
        Profile.objects.bulk_update(moved, ["last_seen_at"])
    return [e.pk for e in events], {x: p.pk for x, p in profiles.items()}


# Apps further down the chain (journeys) react to events without audiences importing them.
_EVENT_LISTENERS: list[Callable[..., None]] = []
_LISTENER_STAMPS: list[str] = []


class EventsNotStored(Exception):
    """A listener failed and its replay could not be recorded: the call's transaction rolled back,
    and none of its events is stored."""


# A failed listener runs again after a minute, then after twice as long each time, at most an hour.
REPLAY_FIRST_WAIT = dt.timedelta(minutes=1)
REPLAY_LONGEST_WAIT = dt.timedelta(hours=1)


def event_listeners_register(fn: Callable[..., None], *, stamps: tuple[str, ...] = ()) -> None:
    """Call ``fn(event_ids=[id, ...], events=[(profile id, name, occurred_at), ...], names={name, ...},
    stamps=...)`` for each batch of ingested events, in the call's order.

    Listeners run inside the transaction that writes the events, once they are written: what a
    listener writes there commits with them (the journeys enter event-entered journeys and end
    enrollments there). A listener writes only in that transaction and leaves what must wait for
    the commit (queued tasks, wake-ups, Redis) to ``transaction.on_commit``. A listener that
    raises rolls that transaction back; the events are written again without it (the other
    listeners run again) and it is recorded to run again for them later (``EventReplay``,
    ``events_replay_due``), with ``stamps=None`` and ``received_at`` (when the events were stored):
    it must be safe to run late, and again for events it saw; what it judges by the clock (a
    journey's re-entry wait) it judges as of ``received_at``, as it would have then, not as of the
    replay's time. ``stamps``: the version stamps (``accounts.stamps``) the listener reads; an
    API call reads them in the same round trip as its key's, and listeners
    get what it read (or None: they read them themselves).
    """
    if fn not in _EVENT_LISTENERS:
        _EVENT_LISTENERS.append(fn)
    _LISTENER_STAMPS.extend(name for name in stamps if name not in _LISTENER_STAMPS)


def event_listener_stamps() -> list[str]:
    """The version stamps the event listeners read (an events call reads them with its key's)."""
    return list(_LISTENER_STAMPS)


def _listener_name(fn: Callable[..., None]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _failure_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _replay_wait(attempts: int) -> dt.timedelta:
    return min(REPLAY_FIRST_WAIT * 2 ** max(attempts - 1, 0), REPLAY_LONGEST_WAIT)


class _ListenerFailed(Exception):
    """A listener raised (the cause): the events' transaction is rolled back and written again without it."""

    def __init__(self, fn: Callable[..., None]):
        super().__init__(_listener_name(fn))
        self.fn = fn


def _events_notify(
    *,
    event_ids: list[int],
    events: list[tuple],
    names: set[str],
    stamps: Stamps | None,
    deferred: dict[Callable[..., None], BaseException],
) -> None:
    """Run each listener, but those ``deferred`` (they failed on this call's first try): a replay
    is recorded for each of those instead, in the events' transaction."""
    for fn in list(_EVENT_LISTENERS):
        if fn in deferred:
            try:
                EventReplay.objects.create(
                    listener=_listener_name(fn),
                    event_ids=list(event_ids),
                    error=_failure_text(deferred[fn]),
                    next_attempt_at=timezone.now() + REPLAY_FIRST_WAIT,
                )
            except Exception as unrecorded:  # the database failed: nothing of the call stays
                raise EventsNotStored(
                    f"{len(event_ids)} events not stored: {type(unrecorded).__name__}"
                ) from unrecorded
            continue
        try:
            fn(event_ids=event_ids, events=events, names=names, stamps=stamps)
        except Exception as exc:
            raise _ListenerFailed(fn) from exc


def _events_by_ids(event_ids: list[int]) -> tuple[list[int], list[tuple], dt.datetime | None]:
    """The events of these ids that still exist (a deleted profile took its own), in the ids' order:
    their ids, ``(profile id, name, occurred_at)``, and when the first of them was stored (None
    when none is left)."""
    rows = {
        row[0]: row[1:]
        for row in Event.objects.filter(pk__in=event_ids).values_list(
            "id", "profile_id", "name", "occurred_at", "received_at"
        )
    }
    kept = [event_id for event_id in event_ids if event_id in rows]
    received = min((rows[event_id][3] for event_id in kept), default=None)
    return kept, [rows[event_id][:3] for event_id in kept], received


def events_replay_due(*, now: dt.datetime | None = None, ids: list[int] | None = None, limit: int = 100) -> dict:
    """Run each failed listener again for its events, once its replay is due (or those of ``ids``,
    due or not), each in a transaction of its own with the replay's row locked: what the listener
    writes commits with the row's deletion, or its failure is recorded and the next attempt waits
    twice as long (a minute, then two... at most an hour). A replay whose listener no longer
    exists (its app was removed) is dropped. Safe on every worker at once (``SKIP LOCKED``).
    Returns the counts of batches, ``replayed``, ``failed``, ``dropped``, and of the events they
    held, under ``events`` (the same keys)."""
    now = now or timezone.now()
    listeners = {_listener_name(fn): fn for fn in _EVENT_LISTENERS}
    counts = {"replayed": 0, "failed": 0, "dropped": 0}
    held = dict.fromkeys(counts, 0)
    remaining = None if ids is None else set(ids)
    for _ in range(limit):
        with transaction.atomic():
            if remaining is None:
                due = EventReplay.objects.filter(next_attempt_at__lte=now)
            else:
                due = EventReplay.objects.filter(pk__in=remaining)
            if connection.features.has_select_for_update_skip_locked:
                due = due.select_for_update(skip_locked=True)
            replay = due.order_by("next_attempt_at", "id").first()
            if replay is None:
                break
            if remaining is not None:
                remaining.discard(replay.pk)
            fn = listeners.get(replay.listener)
            if fn is None:
                log.warning("Event replay %s dropped: no event listener %s is registered", replay.pk, replay.listener)
                replay.delete()
                counts["dropped"] += 1
                held["dropped"] += len(replay.event_ids)
                continue
            try:
                with transaction.atomic():
                    event_ids, events, received_at = _events_by_ids(replay.event_ids)
                    if events:
                        names = {name for _, name, _ in events}
                        fn(event_ids=event_ids, events=events, names=names, stamps=None, received_at=received_at)
            except Exception as exc:
                log.exception("Event replay %s failed again (attempt %s)", replay.pk, replay.attempts + 1)
                replay.attempts += 1
                replay.error = _failure_text(exc)
                replay.next_attempt_at = now + _replay_wait(replay.attempts)
                replay.save(update_fields=["attempts", "error", "next_attempt_at"])
                counts["failed"] += 1
                held["failed"] += len(replay.event_ids)
            else:
                replay.delete()
                counts["replayed"] += 1
                held["replayed"] += len(replay.event_ids)
    return {**counts, "events": held}


def events_replay_now(*, ids: list[int], by: User) -> dict:
    """Replay these failed listeners now, due or not (the admin's "Replay now"); audited. Raises
    PermissionDenied without the role (Administrators)."""
    from accounts.services import audit

    _ensure_perm(by, "audiences.change_eventreplay", "Only an Administrator may replay events.")
    for replay in EventReplay.objects.filter(pk__in=ids).order_by("pk"):
        audit(
            actor=by,
            action="events_replayed",
            obj=replay,
            summary={"listener": replay.listener, "events": len(replay.event_ids), "attempts": replay.attempts},
        )
    return events_replay_due(ids=ids)


def event_record(
    *, external_id: str, name: str, by: User, occurred_at: dt.datetime, properties: dict | None = None
) -> int:
    """Store one event (see ``events_ingest``)."""
    item = {"external_id": external_id, "name": name, "occurred_at": occurred_at, "properties": properties}
    return events_ingest(items=[item], by=by)[0]
