"""Events: checks, ingestion and the listeners of apps further down the chain."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import User
from audiences.models import Event, Profile
from audiences.rules.schema import KEY_RE
from audiences.services.profiles import _ensure_perm, _json_dumps, text_problem

if TYPE_CHECKING:
    from accounts.stamps import Stamps

MAX_PROPERTIES_BYTES = 8 * 1024

log = logging.getLogger(__name__)


def event_check(data: dict, *, now: dt.datetime | None = None) -> dict[str, str]:
    """Check one event's fields; return {field: message} for each problem (empty: fine)."""
    errors: dict[str, str] = {}
    if problem := text_problem(data.get("external_id"), max_length=255):
        errors["external_id"] = problem
    if problem := text_problem(data.get("name"), max_length=100):
        errors["name"] = problem
    properties = data.get("properties")
    if properties is not None:
        if not isinstance(properties, dict):
            errors["properties"] = "Must be an object of name → value."
        elif any(not KEY_RE.match(k) for k in properties):
            errors["properties"] = "Property names use letters, digits, _ . : - (at most 100 characters)."
        elif len(_json_dumps(properties)) > MAX_PROPERTIES_BYTES:
            errors["properties"] = f"Properties take at most {MAX_PROPERTIES_BYTES} bytes as JSON."
    occurred_at = data.get("occurred_at")
    if not isinstance(occurred_at, dt.datetime) or timezone.is_naive(occurred_at):
        errors["occurred_at"] = "This field is required: an ISO 8601 time with a time zone."
    elif occurred_at > (now or timezone.now()) + dt.timedelta(days=1):
        errors["occurred_at"] = "This time is more than a day in the future."
    return errors


def events_ingest(*, items: list[dict], by: User, stamps: Stamps | None = None) -> list[int]:
    """Store events (``external_id``, ``name``, ``properties``, ``occurred_at``); return their ids, in order.

    A profile unknown so far is created (events may arrive before the profile upsert). Each
    profile's ``last_seen_at`` moves forward to its newest event. Events are data, not changes
    of configuration: they are not written to the audit log. Raises PermissionDenied when the
    role may not write events, ValidationError on bad items (``event_check``). ``stamps``: the
    version stamps the caller read already (an API call reads the listeners' with its key's).
    """
    _ensure_perm(by, "audiences.add_event", "Your role may not write events.")
    if len(items) > settings.AUDIENCES_BULK_MAX_ITEMS:
        raise ValidationError(f"At most {settings.AUDIENCES_BULK_MAX_ITEMS} events per call.")
    now = timezone.now()
    for index, item in enumerate(items):
        problems = event_check(item, now=now)
        if problems:
            raise ValidationError({f"[{index}].{k}": v for k, v in problems.items()})
    if not items:
        return []
    ids = sorted({item["external_id"] for item in items})
    seen: dict[str, dt.datetime] = {}
    for item in items:
        when = min(item["occurred_at"], now)
        previous = seen.get(item["external_id"])
        if previous is None or previous < when:
            seen[item["external_id"]] = when
    with transaction.atomic():
        if connection.vendor == "postgresql":
            event_ids = _events_write_pg(items, ids=ids, seen=seen, now=now)
        else:
            event_ids = _events_write(items, ids=ids, seen=seen, now=now)
        if _EVENT_LISTENERS:
            names = {item["name"] for item in items}
            transaction.on_commit(lambda: _events_notify(event_ids=event_ids, names=names, stamps=stamps))
    return event_ids


# KEY SHARE keeps the profiles from being deleted until the events are in, and does not make
# concurrent calls for the same profiles wait for each other (the foreign-key checks take the same
# lock at commit). Only the profiles whose last_seen_at moves are locked for update, last, in id
# order: two calls never hold those in opposite orders.
LOCK_PROFILES_PG = """
SELECT external_id, id, last_seen_at FROM audiences_profile
WHERE external_id = ANY(%s) ORDER BY external_id FOR KEY SHARE
"""
# Only unknown ids are inserted, so no sequence values are burnt on known profiles; they are born
# seen at their newest event. A profile created meanwhile by another call conflicts, and is locked
# and read by the next query.
CREATE_PROFILES_PG = """
INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at, last_seen_at)
SELECT x, '{}', '', '', %(now)s, %(now)s, seen
FROM unnest(%(ids)s::text[], %(seen)s::timestamptz[]) AS v(x, seen) ORDER BY x
ON CONFLICT (external_id) DO NOTHING
RETURNING external_id, id, last_seen_at
"""
# The events travel as one JSON array (one encode in C, no per-value adaptation); rows come back
# in the array's order, as Django's bulk_create relies on for a VALUES list.
INSERT_EVENTS_PG = """
INSERT INTO audiences_event (profile_id, name, properties, occurred_at, received_at)
SELECT e.p, e.n, coalesce(e.x, '{}'), e.t, %(now)s
FROM jsonb_to_recordset(%(events)s::jsonb) AS e(p bigint, n text, x jsonb, t timestamptz)
RETURNING id
"""
LOCK_MOVING_PG = "SELECT id FROM audiences_profile WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
MOVE_LAST_SEEN_PG = """
UPDATE audiences_profile AS p SET last_seen_at = v.seen
FROM unnest(%(ids)s::bigint[], %(seen)s::timestamptz[]) AS v(id, seen)
WHERE p.id = v.id AND (p.last_seen_at IS NULL OR p.last_seen_at < v.seen)
"""


def _events_write_pg(items: list[dict], *, ids: list[str], seen: dict, now: dt.datetime) -> list[int]:
    """Write the events of one call in at most six statements (PostgreSQL); return their ids."""
    with connection.cursor() as cursor:
        cursor.execute(LOCK_PROFILES_PG, [ids])
        profiles = {external_id: (pk, last) for external_id, pk, last in cursor.fetchall()}
        missing = [x for x in ids if x not in profiles]
        if missing:
            cursor.execute(CREATE_PROFILES_PG, {"now": now, "ids": missing, "seen": [seen[x] for x in missing]})
            profiles.update((external_id, (pk, last)) for external_id, pk, last in cursor.fetchall())
            raced = [x for x in missing if x not in profiles]
            if raced:
                cursor.execute(LOCK_PROFILES_PG, [raced])
                profiles.update((external_id, (pk, last)) for external_id, pk, last in cursor.fetchall())
        rows = [
            {
                "p": profiles[item["external_id"]][0],
                "n": item["name"],
                "x": item.get("properties"),
                "t": item["occurred_at"],
            }
            for item in items
        ]
        cursor.execute(INSERT_EVENTS_PG, {"now": now, "events": _json_dumps(rows)})
        event_ids = [row[0] for row in cursor.fetchall()]
        moved = [(profiles[x][0], when) for x, when in seen.items() if profiles[x][1] is None or profiles[x][1] < when]
        if moved:  # read without a write lock: the update checks again that the time moves forward
            moved.sort()
            cursor.execute(LOCK_MOVING_PG, [[pk for pk, _ in moved]])
            cursor.execute(MOVE_LAST_SEEN_PG, {"ids": [pk for pk, _ in moved], "seen": [when for _, when in moved]})
    return event_ids


def _events_write(items: list[dict], *, ids: list[str], seen: dict, now: dt.datetime) -> list[int]:
    """Write the events of one call through the ORM (SQLite, the embedded mode); return their ids."""

    def locked(external_ids):
        return {
            p.external_id: p
            for p in Profile.objects.select_for_update()
            .filter(external_id__in=external_ids)
            .order_by("external_id")
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
    return [e.pk for e in events]


# Apps further down the chain (journeys) react to events without audiences importing them.
_EVENT_LISTENERS: list[Callable[..., None]] = []
_LISTENER_STAMPS: list[str] = []


def event_listeners_register(fn: Callable[..., None], *, stamps: tuple[str, ...] = ()) -> None:
    """Call ``fn(event_ids=[id, ...], names={name, ...}, stamps=...)`` after each batch of ingested
    events is committed.

    Listeners run inside the request that sent the events, after its events committed: they do
    short work in transactions of their own (the journeys enter event-entered journeys there),
    or queue it. A listener that raises is logged and the others still run. ``stamps``: the
    version stamps (``accounts.stamps``) the listener reads; an API call reads them in the same
    round trip as its key's, and listeners get what it read (or None: they read them themselves).
    """
    if fn not in _EVENT_LISTENERS:
        _EVENT_LISTENERS.append(fn)
    _LISTENER_STAMPS.extend(name for name in stamps if name not in _LISTENER_STAMPS)


def event_listener_stamps() -> list[str]:
    """The version stamps the event listeners read (an events call reads them with its key's)."""
    return list(_LISTENER_STAMPS)


def _events_notify(*, event_ids: list[int], names: set[str], stamps: Stamps | None = None) -> None:
    for fn in list(_EVENT_LISTENERS):
        try:
            fn(event_ids=event_ids, names=names, stamps=stamps)
        except Exception:
            log.exception("Event listener %r failed", fn)


def event_record(
    *, external_id: str, name: str, by: User, occurred_at: dt.datetime, properties: dict | None = None
) -> int:
    """Store one event (see ``events_ingest``)."""
    item = {"external_id": external_id, "name": name, "occurred_at": occurred_at, "properties": properties}
    return events_ingest(items=[item], by=by)[0]
