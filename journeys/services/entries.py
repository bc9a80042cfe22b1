"""Entries and exits: segment entry, entry and exit on events, the beat, closing finished journeys."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from accounts.services import (
    audit,
    status_transition,
)
from config.db import int_array, prepared_cursor, text_array
from journeys.graph import entry_of
from journeys.models import Enrollment, Journey, JourneyPause, JourneyVersion
from journeys.services.engine import journeys_run_due, journeys_run_entered
from journeys.services.lifecycle import (
    SAVED_WITH_STATUS,
    SKIPPED_NOT_LIVE,
    SKIPPED_PAUSED,
    EStatus,
    Status,
    VStatus,
    _queue,
    segments_changed_text,
)
from journeys.services.step_stats import step_stats_add

if TYPE_CHECKING:
    from accounts.stamps import Stamps

log = logging.getLogger(__name__)


def _dt(value: dt.datetime | None):
    return connection.ops.adapt_datetimefield_value(value) if value is not None else None


# What a profile's earlier entries in the journey say (``n``: its last entry number, None when it
# never entered; ``last_at``; ``busy``: an enrollment still open). For a whole segment, every earlier
# entry of the journey grouped once; for an event's few profiles, each one's own entries through the
# (journey, profile) index, so an entry costs the same with a million enrollments behind it.
_PREV_GROUPED = (
    "LEFT JOIN (SELECT profile_id, MAX(entry_number) AS n, MAX(entered_at) AS last_at, "
    "MAX(CASE WHEN status IN ('active', 'waiting') THEN 1 ELSE 0 END) AS busy "
    "FROM journeys_enrollment WHERE journey_id = %s GROUP BY profile_id) prev ON prev.profile_id = p.id"
)
_PREV_EACH = (
    "LEFT JOIN LATERAL (SELECT MAX(e.entry_number) AS n, MAX(e.entered_at) AS last_at, "
    "MAX(CASE WHEN e.status IN ('active', 'waiting') THEN 1 ELSE 0 END) AS busy "
    "FROM journeys_enrollment e WHERE e.journey_id = %s AND e.profile_id = p.id) prev ON true"
)


def _enter(
    version: JourneyVersion,
    audience_sql: str,
    audience_params: list,
    *,
    now: dt.datetime,
    returning: bool = False,
    few: bool = False,
    as_of: dt.datetime | None = None,
    hold: bool = False,
):
    """Enroll the audience's profiles in one INSERT … SELECT, obeying the re-entry policy; return
    how many entered (``returning``: the new enrollments, ``(id, profile_id, its time zone)``, and
    whether they entered held, ``hold`` having found the journey paused).

    A profile enters when it never entered the journey, or (re-entry after a wait) when it has
    no open enrollment and its last entry is at least the wait old at ``as_of`` (``now`` unless
    given: the time events run late were stored, so that a profile that entered since they came
    is not entered again by them). The entry is dated ``as_of`` (``entered_at``), when the call
    would have entered it: a later event's re-entry wait counts from then, and an exit event
    that occurred since ends it; its first step is due ``now``. The partial unique index
    "one open enrollment per (journey, profile)" settles races between concurrent entries.
    ``few``: the audience is a handful of profiles (an event's), each looked up on its own.

    No one enters unless the journey is live on ``version``, read with its row held shared until
    commit: a stop waits for the entry, then exits whoever it entered; an entry after a stop (or
    a new version) waits for it, then enters no one (an event's caller then enters the new version,
    or counts the event, ``journeys_events_received``). ``hold``: a paused journey is entered too,
    its new enrollments held as the pause holds whoever is inside (no due time; ``held_due_at``,
    ``now``, given back at the resume); the caller runs none of them (but ends at once, with
    ``journeys_run_entered``'s ``held``, those whose exit event came since).

    The enrollments are written in profile id order: each one's foreign key check locks its
    profile (``FOR KEY SHARE``, at commit, in the order they were written), and a deletion of
    profiles (``profiles_delete``) locks them by id, as every writer of profiles does; in the
    audience's order, an entry could hold one profile the deletion waited for while it waited for
    one the deletion held.
    """
    entry = entry_of(version.steps())
    if entry is None:
        return ([], False) if returning else 0
    reentry = version.reentry == JourneyVersion.Reentry.AFTER_WAIT
    postgres = connection.vendor == "postgresql"
    empty = "'[]'::jsonb" if postgres else "'[]'"
    prev = _PREV_EACH if few and postgres else _PREV_GROUPED
    # The journey row under the stop's lock order (its open enrollments, then the journey): an
    # entry takes no enrollment before it, and a stop's exit reads the enrollments committed.
    lock = " FOR SHARE" if postgres else ""
    live = f"(SELECT id, status FROM journeys_journey WHERE id = %s AND status IN (%s, %s) AND live_version_id = %s{lock}) live"  # noqa: S608 (constants)
    sql = (
        "INSERT INTO journeys_enrollment (journey_id, version_id, profile_id, entry_number, step, status, "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
        "due_at, held_due_at, entered_at, updated_at, exit_reason, history) "
        f"SELECT %s, %s, p.id, COALESCE(prev.n, 0) + 1, %s, 'active', "
        "CASE WHEN live.status = %s THEN NULL ELSE %s END, CASE WHEN live.status = %s THEN %s END, "
        f"%s, %s, '', {empty} "
        f"FROM ({audience_sql}) p CROSS JOIN {live} {prev} "
        "WHERE prev.n IS NULL OR (%s AND prev.busy = 0 AND prev.last_at <= %s) "
        "ORDER BY p.id ON CONFLICT DO NOTHING" + (" RETURNING id, profile_id, held_due_at" if returning else "")
    )
    params = [
        version.journey_id,
        version.pk,
        entry,
        Status.PAUSED,
        _dt(now),
        Status.PAUSED,
        _dt(now),
        _dt(as_of or now),
        _dt(now),
        *audience_params,
        version.journey_id,
        Status.LIVE,
        Status.PAUSED if hold else Status.LIVE,
        version.pk,
        version.journey_id,
        reentry,
        _dt((as_of or now) - dt.timedelta(seconds=version.reentry_wait_seconds)),
    ]
    if returning and postgres:  # with each one's time zone, which its first steps need
        sql = (
            f"WITH entered AS ({sql}) SELECT entered.id, entered.profile_id, z.timezone, entered.held_due_at "  # noqa: S608 (constants)
            "FROM entered JOIN audiences_profile z ON z.id = entered.profile_id"
        )
    # An event's few profiles make the same statement every time: its plan is kept per connection.
    # A segment's audience is a statement of its own, built once per entry.
    with prepared_cursor() if few else connection.cursor() as cursor:
        cursor.execute(sql, params)
        if not returning:
            return max(cursor.rowcount, 0)
        entered = sorted(cursor.fetchall())
    # Its held time, not an expression over it: SQLite's RETURNING evaluated ``CASE WHEN held_due_at
    # IS NULL …`` as if it were set.
    held = any(row[-1] is not None for row in entered)
    if postgres:
        entered = [(pk, profile_id, zone) for pk, profile_id, zone, _ in entered]
    elif entered:
        from journeys.services.engine import _profile_zones

        zones = _profile_zones([row[1] for row in entered])
        entered = [(pk, profile_id, zones.get(profile_id, "")) for pk, profile_id, _ in entered]
    return entered, held


def journey_enter_segment(*, journey_id: int, now: dt.datetime | None = None) -> int:
    """Read a live segment-entry journey's segment now (if due): its profiles enter, set-based.

    The journey row is taken with SKIP LOCKED (another worker holding it is entering it); the
    next run is set from the version's recurrence (none for a one-off entry). Returns how many entered.
    """
    from audiences.models import segments_hold
    from audiences.rules.compiler import segment_profiles
    from audiences.rules.schema import RulesInvalid

    now = now or timezone.now()
    with transaction.atomic():
        journey = (
            Journey.objects.select_for_update(skip_locked=True)
            .filter(pk=journey_id, status=Status.LIVE, next_entry_at__lte=now)
            .first()
        )
        if journey is None or journey.live_version_id is None:
            return 0
        version = JourneyVersion.objects.select_related("journey", "entry_segment").get(pk=journey.live_version_id)
        entered, refused = 0, ""
        if version.entry_kind == JourneyVersion.EntryKind.SEGMENT and version.entry_segment is not None:
            # Who enters is the segment as approved: an edit since refuses the read (a recurring one is read again when due).
            # Held from the check to the insert: an edit committed between them would enter people no approver read.
            segments_hold({version.entry_segment_id})
            refused = segments_changed_text(version, {version.entry_segment_id})
            try:
                audience = segment_profiles(version.entry_segment, now=now, union=True)
            except RulesInvalid as exc:  # rules saved before a check (or by a migration) that no longer hold
                refused = refused or f"{exc.held_no_longer()}."
                audience = None
            if not refused and not audience.query.is_empty():
                sql, params = audience.order_by().values("id").query.sql_with_params()
                entered = _enter(version, sql, list(params), now=now)
        every = version.entry_every_hours
        if refused and not every:
            # A one-off's only read, refused: read again within the hour (an edit put back reads as
            # approved), the journey live meanwhile, not closed as done; a new version approved reads at once.
            every = 1
        journey.next_entry_at = now + dt.timedelta(hours=every) if every else None
        journey.save(update_fields=["next_entry_at"])
        summary = {"version": version.number, "entered": entered}
        if refused:
            summary["refused"] = refused
        audit(actor=None, action="journey_segment_read", obj=journey, summary=summary)
        if entered:
            transaction.on_commit(lambda: _queue("journeys.tasks.journeys_run_due_task"))
    return entered


def journeys_events_received(
    *,
    event_ids: list[int] | None = None,
    events: list[tuple[int, str, dt.datetime]] | None = None,
    live: _LiveForEvents | None = None,
    received_at: dt.datetime | None = None,
) -> dict:
    """Events arrived through the API: fire exit criteria, then enter event-entry journeys.

    An exit event ends the profile's open enrollments (entered before the event) of every live
    journey whose version names it. An entry event enrolls the profile in each live journey
    whose live version enters on it (re-entry policy applies), and runs the new enrollments to
    their first wait in the same transaction: a first push joins its stream as the entry commits,
    once (the entry and its rows commit together). A profile whose exit event for that version
    occurred, in the same call, at or after its entry event enters and ends at once ("exit event
    …"), before its first step: its first push is not sent. Inside a caller's transaction (the events
    call's), everything commits with it and a failure fails it whole; otherwise each exit and
    each entry is a transaction of its own. Safe to run again for the same events (an exit is
    final, an entry obeys the re-entry policy). ``events``: ``(profile id, name, occurred_at)``,
    when the caller has them (else they are read by ``event_ids``). ``live``: what live journeys
    do on events, when the caller read it already. ``received_at``: when the events were stored,
    given when they are run late (a replay): a re-entry wait is judged as of then, as the call
    would have judged it, so a late run enters no one who entered the journey since they came (by a
    later event): a passage missed is better than a push sent twice; and a profile whose exit
    event was stored since, at or after its entry event, enters and ends at once, as one in the
    same call would (``_exits_stored_since``; ``event_ids``, the replay's own, are not read
    again for it); and only the journeys live then on a version entering on the same event are
    entered, on the version live now (``_entering_when_received``); each other journey on the air
    now entering on it counts its profiles on its entry step, not entered (``skipped_not_live``,
    once per profile and call, as a pause counts its own). A replay's entries are dated
    when its events were stored, as the call would have dated them (their first steps run now).
    Returns the counts.

    A paused journey's entry event enters no one: it is counted on the journey's entry step
    (``skipped_paused``, once per profile and call); its exit event ends its profiles as a live one's.
    One paused after the call read it live (a pause committed before its entry is written) is
    entered all the same, its profiles held where the pause holds whoever is inside, to go on at
    the resume: every entry event is either entered or counted (the entry re-reads the journey's
    status in its own statement, no query more). One whose live version was replaced after the call
    read it (a new version's approval committed before its entry is written) enters the version
    live now when that one enters on the same event, as a replay takes a version approved since
    (an entry that entered no one reads the journey's live version once more, ``_replaced_since_read``);
    one that enters otherwise counts the event on the entry step of the version it came under, not
    entered (``skipped_not_live``: that version no longer live when its entry was written).
    Replayed after the resume, events stored during the pause enter no one either (counted so).
    Replayed during a pause, events stored before it enter their profiles held, as the pause holds
    whoever is inside (``_enter``'s ``hold``): they go on from the entry step at the resume.
    """
    from audiences.models import Event

    if events is None:
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT profile_id, name, occurred_at FROM audiences_event WHERE id = ANY(%s::bigint[])",
                    [int_array(event_ids or ())],
                )
                events = cursor.fetchall()
        else:
            events = list(Event.objects.filter(pk__in=event_ids or ()).values_list("profile_id", "name", "occurred_at"))
    if not events:
        return {"exited": 0, "entered": 0}
    now = timezone.now()
    as_of = min(now, received_at) if received_at is not None else now
    names = {name for _, name, _ in events}
    exited = entered = 0
    live = live or _live_for_events()
    # Names in order: two calls ending the same journeys take the counters' rows in the same order.
    by_name = sorted((name, ids) for name, ids in live.exits.items() if name in names)
    for name, version_ids in by_name:
        latest = {}
        for profile_id, event_name, occurred_at in events:
            if event_name == name:
                latest[profile_id] = max(latest.get(profile_id, occurred_at), occurred_at)
        # No savepoint in a caller's transaction: a failure fails it whole.
        with transaction.atomic(savepoint=False):
            rows = _open_enrollments_locked(version_ids, list(latest))
            ending = [
                (pk, version_id, step, status)
                for pk, profile_id, entered_at, version_id, step, status in rows
                if entered_at <= latest[profile_id]
            ]
            if ending:
                Enrollment.objects.filter(pk__in=[pk for pk, _, _, _ in ending]).update(
                    status=EStatus.EXITED,
                    exit_reason=f"exit event '{name}'",
                    finished_at=now,
                    updated_at=now,
                    due_at=None,
                    held_due_at=None,
                )
                counts = Counter((version_id, step, "exit_event") for _, version_id, step, _ in ending)
                # Not run yet (entered, due at the first step): the engine never counted it entered there.
                counts.update(
                    (version_id, step, "entered") for _, version_id, step, status in ending if status == EStatus.ACTIVE
                )
                step_stats_add(counts)
                exited += len(ending)
    entry_versions = sorted((v for name in names for v in live.entries.get(name, ())), key=lambda v: v.pk)
    paused = [v for name in names for v in live.paused.get(name, ())]
    # A call enters no one in a journey paused now; a replay, no one in those paused when its
    # events came (``held``). Its events that came while a journey now paused was live, the call
    # would have entered and the pause held inside: they enter now, held (``hold``), and go on at the resume.
    replay = received_at is not None
    on_air = sorted([*entry_versions, *(paused if replay else ())], key=lambda v: v.pk)
    candidates = _entering_when_received(on_air, received_at)
    not_live = [v for v in on_air if v not in candidates]
    held = _paused_when_received(candidates, received_at)
    candidates = [v for v in candidates if v not in held]
    _count_not_entered(events, {SKIPPED_PAUSED: held if replay else paused, SKIPPED_NOT_LIVE: not_live})
    stored_since = _exits_stored_since(candidates, events, event_ids, received_at)
    for version in candidates:
        entering = _latest(events, version.entry_event)
        audience, param = _event_audience(sorted(entering))
        stamp, stored = live.stamp, stored_since
        with transaction.atomic(savepoint=False):
            # ``hold``: a journey read live here may be paused by now (a pause committed since):
            # its profiles enter held, as the pause holds whoever is inside, counted as entered.
            enrolled, hold = _enter(
                version, audience, [param], now=now, returning=True, few=True, as_of=as_of, hold=True
            )
            while not enrolled and (replacing := _replaced_since_read(version)) is not None:
                # A version approved since this call read the journey: it takes the event in place
                # of the one it replaced when it enters on it, as it would a moment later (and as
                # a replay's version approved since does); else the event is counted not entered.
                if (replacing.entry_kind, replacing.entry_event) != (
                    JourneyVersion.EntryKind.EVENT,
                    version.entry_event,
                ):
                    _count_not_entered(events, {SKIPPED_NOT_LIVE: [version]})
                    break
                if replacing.exit_event != version.exit_event:
                    stored = _exits_stored_since([replacing], events, event_ids, received_at)
                version, stamp = replacing, None  # read after the call's stamp: its steps are opened afresh
                enrolled, hold = _enter(
                    version, audience, [param], now=now, returning=True, few=True, as_of=as_of, hold=True
                )
            ending = _exited_since_entering(version, entering, events, names, stored)
            if enrolled and not hold and version.journey.status != Status.LIVE:
                # A replay read it paused, and the resume committed since: the entry found it live
                # (and holds its row shared to the commit), so its run reads it so, not as the call
                # read it, which would hold them aside in a live journey that no resume releases.
                version = JourneyVersion.objects.select_related("journey__app__delivery_rules").get(pk=version.pk)
            journeys_run_entered(
                enrolled=enrolled, version=version, stamp=stamp, now=now, exits=ending, entered_at=as_of, held=hold
            )
        entered += len(enrolled)
        if ending:
            exited += sum(1 for _, profile_id, _ in enrolled if profile_id in ending)
    return {"exited": exited, "entered": entered}


def _replaced_since_read(version: JourneyVersion) -> JourneyVersion | None:
    """After an entry in ``version`` that entered no one: the version live on its journey now (with
    its journey, its app and the app's delivery rules, as ``_live_for_events`` reads them), when
    another one was approved since the call read ``version`` live and the journey is still on the
    air; None otherwise (the re-entry policy refused the entry, or the journey was taken off the
    air: a stop exits whoever an entry made before it, and an entry after it enters no one). One
    query, two when replaced; none for an entry that entered anyone."""
    live_id = (
        Journey.objects.filter(pk=version.journey_id, status__in=Journey.ON_AIR)
        .values_list("live_version_id", flat=True)
        .first()
    )
    if live_id is None or live_id == version.pk:
        return None
    return JourneyVersion.objects.select_related("journey__app__delivery_rules").get(pk=live_id)


def _entering_when_received(versions: list[JourneyVersion], received_at: dt.datetime | None) -> list[JourneyVersion]:
    """Of these versions of live journeys, those a replay's events (stored at ``received_at``;
    all of them for a call run as it comes) enter: their journey was on the air then, on a version
    that entered on the same event. A journey that went live since, or whose version then entered
    on another event (or read a segment), would have taken none of them then, and takes none now.
    A version that replaced the one live then, entering on the same event, takes them: the one
    they came under is retired and takes no one new, and its successor is what its approver wants
    sent now. One query for the whole replay."""
    if received_at is None or not versions:
        return versions
    then = set(
        JourneyVersion.objects.filter(
            journey_id__in={v.journey_id for v in versions},
            entry_kind=JourneyVersion.EntryKind.EVENT,
            status__in=(VStatus.LIVE, VStatus.RETIRED),
        )
        .filter(Q(live_at__isnull=True) | Q(live_at__lte=received_at))
        .filter(Q(retired_at__isnull=True) | Q(retired_at__gt=received_at))
        .values_list("journey_id", "entry_event")
    )
    return [v for v in versions if (v.journey_id, v.entry_event) in then]


def _paused_when_received(versions: list[JourneyVersion], received_at: dt.datetime | None) -> list[JourneyVersion]:
    """Of these versions of journeys on the air, those whose journey was paused when a replay's events
    were stored (``received_at``; none for a call run as it comes): a paused journey takes no
    entries, so events that came during the pause enter no one when replayed after the resume,
    as no call made during the pause did. One query for the whole replay."""
    if received_at is None or not versions:
        return []
    paused = set(
        JourneyPause.objects.filter(journey_id__in={v.journey_id for v in versions}, paused_at__lte=received_at)
        .filter(Q(ended_at__isnull=True) | Q(ended_at__gt=received_at))
        .values_list("journey_id", flat=True)
    )
    return [v for v in versions if v.journey_id in paused]


def _count_not_entered(events: list[tuple[int, str, dt.datetime]], skipped: dict[str, list[JourneyVersion]]) -> None:
    """Count, on the entry step of each version of ``skipped`` (counter → versions: ``skipped_paused``,
    the journeys paused when these events came; ``skipped_not_live``, a replay's journeys not live
    on the same event when its events came, ``_entering_when_received``), the profiles its entry
    event does not enter, once per profile and call. No query without any."""
    counts: Counter = Counter()
    for metric, versions in skipped.items():
        for version in versions:
            profiles = len({profile_id for profile_id, name, _ in events if name == version.entry_event})
            counts[(version.pk, entry_of(version.steps()), metric)] += profiles
    if counts:
        with transaction.atomic(savepoint=False):
            step_stats_add(counts)


PROFILE_DELETED = "deleted"  # the step counter of the profiles deleted while there


def journeys_profiles_deleting(*, profile_ids: list[int]) -> int:
    """Profiles are being deleted (``profiles_delete``, which holds them locked): count their open
    enrollments as ended at the step each was at (``deleted``), as a stop counts those it ends, so
    that each step's figures still add up once the enrollments go with their profiles; the
    counters keep a number, nothing of the profile. Waits for an engine batch running any of them
    (their rows locked, in id order), then counts them as that batch left them. Returns how many.

    An enrollment the engine has not run yet (``active``) is counted entered where it was too,
    as ``_exit_everyone_inside`` does: the engine counts a step's arrivals as it runs them."""
    rows = list(
        Enrollment.objects.select_for_update()
        .filter(profile_id__in=profile_ids, status__in=Enrollment.OPEN_STATUSES)
        .order_by("id")
        .values_list("version_id", "step", "status")
    )
    counts: Counter = Counter()
    for version_id, step, status in rows:
        counts[(version_id, step, PROFILE_DELETED)] += 1
        if status == EStatus.ACTIVE:
            counts[(version_id, step, "entered")] += 1
    step_stats_add(counts)
    return len(rows)


def _latest(events: list[tuple[int, str, dt.datetime]], name: str) -> dict[int, dt.datetime]:
    """Each profile's latest event called ``name`` among ``events``."""
    latest: dict[int, dt.datetime] = {}
    for profile_id, event_name, occurred_at in events:
        if event_name == name and (profile_id not in latest or occurred_at > latest[profile_id]):
            latest[profile_id] = occurred_at
    return latest


def _exited_since_entering(
    version: JourneyVersion,
    entering: dict[int, dt.datetime],
    events: list[tuple[int, str, dt.datetime]],
    names: set[str],
    stored_since: dict[str, dict[int, dt.datetime]] | None = None,
) -> dict[int, str]:
    """The profiles entering ``version`` whose exit event, in the same call, occurred at or after
    their entry event (each one's latest of both): by the events' own times they are out already,
    so they enter and end at once, before their first step (``journeys_run_entered``'s ``exits``),
    with the exit's reason. An exit event older than the entry does not end the new enrollment,
    as an exit only ends what was entered before it. A version that enters and exits on the same
    event enters as it did (the event cannot both start and end the same passage).
    ``stored_since``: a replay's exit events stored since its own (``_exits_stored_since``), which
    end its entries the same way."""
    name = version.exit_event
    if not name or name == version.entry_event:
        return {}
    latest = _latest(events, name) if name in names else {}
    for profile_id, exit_at in (stored_since or {}).get(name, {}).items():
        latest[profile_id] = max(latest.get(profile_id, exit_at), exit_at)
    reason = f"exit event '{name}'"
    return {
        profile_id: reason
        for profile_id, exit_at in latest.items()
        if profile_id in entering and exit_at >= entering[profile_id]
    }


def _exits_stored_since(
    versions: list[JourneyVersion],
    events: list[tuple[int, str, dt.datetime]],
    event_ids: list[int] | None,
    received_at: dt.datetime | None,
) -> dict[str, dict[int, dt.datetime]]:
    """For a replay (``received_at``: when its events were stored), the exit events of these
    versions stored since then by the profiles they enter, outside the replay's own events:
    exit name → profile id → the latest one's ``occurred_at``. One query for the whole replay,
    none for a call run as it comes (nothing was stored since its events).

    The call, had its entries worked, would have entered these profiles before their exit event
    came, and the exit would have ended the passage then; its first push, unless behind a wait,
    would have gone out at once. Run late, the entry is judged knowing the exit: a profile that
    has done what the journey stops for (bought, after the signup that enters it) enters and ends
    at once, as a call carrying both would, rather than getting a push the exit says is no longer
    wanted: a push missed is better than one that contradicts what the profile did."""
    from audiences.models import Event

    if received_at is None:
        return {}
    exits = {v.exit_event for v in versions if v.exit_event and v.exit_event != v.entry_event}
    entries = {v.entry_event for v in versions if v.exit_event in exits}
    profile_ids = {profile_id for profile_id, name, _ in events if name in entries}
    if not exits or not profile_ids:
        return {}
    rows = (
        Event.objects.filter(profile_id__in=profile_ids, name__in=exits, received_at__gte=received_at)
        .exclude(pk__in=event_ids or ())
        .values_list("name", "profile_id")
        .annotate(latest=Max("occurred_at"))
        .order_by()
    )
    found: dict[str, dict[int, dt.datetime]] = defaultdict(dict)
    for name, profile_id, latest in rows:
        found[name][profile_id] = latest
    return dict(found)


def _event_audience(profile_ids: list[int]) -> tuple[str, object]:
    """An events call's profiles as an entry's audience: (its statement, its one parameter). One
    profile, most calls, is ``= $n``, whose kept plan PostgreSQL runs; for ``= ANY`` it guesses ten
    ids, prices its kept plan above one for the values at hand, and plans every call again."""
    if connection.vendor != "postgresql":
        return "SELECT id FROM audiences_profile WHERE id IN (SELECT value FROM json_each(%s))", json.dumps(profile_ids)
    if len(profile_ids) == 1:
        return "SELECT id FROM audiences_profile WHERE id = %s", profile_ids[0]
    return "SELECT id FROM audiences_profile WHERE id = ANY(%s::bigint[])", int_array(profile_ids)


# The open enrollments of these versions and profiles, locked in id order. On PostgreSQL the ids
# and statuses travel as array literals: the ORM's `__in` over the few hundred profiles of an
# events call prepared each id in Python, a fifth of the events call's CPU when a live journey
# exits on one of its names.
_OPEN_ENROLLMENTS_PG = (
    "SELECT id, profile_id, entered_at, version_id, step, status FROM journeys_enrollment "
    "WHERE version_id = ANY(%s::bigint[]) AND profile_id = ANY(%s::bigint[]) AND status = ANY(%s::text[]) "
    "ORDER BY id FOR UPDATE"
)


def _open_enrollments_locked(version_ids: list[int], profile_ids: list[int]) -> list[tuple]:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                _OPEN_ENROLLMENTS_PG,
                [int_array(version_ids), int_array(profile_ids), text_array(Enrollment.OPEN_STATUSES)],
            )
            return cursor.fetchall()
    return list(
        Enrollment.objects.select_for_update()
        .filter(version_id__in=version_ids, profile_id__in=profile_ids, status__in=Enrollment.OPEN_STATUSES)
        .order_by("pk")
        .values_list("pk", "profile_id", "entered_at", "version_id", "step", "status")
    )


@dataclass(frozen=True)
class _LiveForEvents:
    """What live journeys do on events: ``entries``, the live versions (with their journey) each
    event name enters; ``exits``, the ids of the versions (live, or retired with profiles
    finishing; of a live or a paused journey) each name ends; ``paused``, the live versions of
    paused journeys each name would enter (their entries are counted, not taken)."""

    entries: dict[str, list]
    exits: dict[str, list[int]]
    stamp: str | None
    loaded_at: float
    paused: dict[str, list] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return set(self.entries) | set(self.exits) | set(self.paused)


# Replaced whole, never changed in place: the threads of a process read it without a lock.
_LIVE: _LiveForEvents | None = None


def _live_for_events(stamps: Stamps | None = None) -> _LiveForEvents:
    """What live journeys do on events, kept per process behind the journeys stamp (any save or
    deletion of a journey, a version or an app's rules) and for at most ``PUSHDESK_CACHE_SECONDS``.
    The entering versions are read with their journey, its app and the app's delivery rules: an
    entry's first wait reads the rules' default zone without a query (``journey_default_zone``),
    and a change of the rules, which moves the stamp, is read by the next call.
    ``stamps``: the stamps the caller read, when they hold the journeys stamp (else it is read)."""
    import time

    from django.conf import settings

    from accounts.stamps import stamps_read
    from journeys.services.engine import JOURNEYS_STAMP

    global _LIVE
    if stamps is None or JOURNEYS_STAMP not in stamps.values:
        stamps = stamps_read([JOURNEYS_STAMP])
    stamp = stamps[JOURNEYS_STAMP]
    kept = _LIVE
    if kept and kept.stamp == stamp and time.monotonic() - kept.loaded_at < settings.PUSHDESK_CACHE_SECONDS:
        return kept
    on_air = JourneyVersion.objects.filter(journey__status__in=Journey.ON_AIR)
    entries, exits, paused = defaultdict(list), defaultdict(list), defaultdict(list)
    # With the app's rules, which a wait until a time of day or of whole days reads (its default zone).
    entering = on_air.filter(entry_kind=JourneyVersion.EntryKind.EVENT, status=VStatus.LIVE).select_related(
        "journey__app__delivery_rules"
    )
    for version in entering:
        (entries if version.journey.status == Status.LIVE else paused)[version.entry_event].append(version)
    ending = on_air.filter(status__in=(VStatus.LIVE, VStatus.RETIRED)).exclude(exit_event="")
    for version_id, name in ending.values_list("pk", "exit_event"):
        exits[name].append(version_id)
    _LIVE = _LiveForEvents(dict(entries), dict(exits), stamp, time.monotonic(), dict(paused))
    return _LIVE


def journey_caches_forget() -> None:
    """Drop what this process keeps of live journeys (tests start each from nothing)."""
    from journeys.services.engine import _OPEN_STEPS

    global _LIVE
    _LIVE = None
    _OPEN_STEPS.clear()


def journeys_on_events(
    *,
    event_ids: list[int],
    events: list[tuple[int, str, dt.datetime]],
    names: set[str],
    stamps: Stamps | None = None,
    received_at: dt.datetime | None = None,
) -> None:
    """The audiences event listener, run inside the events call's transaction once its events are
    written: when a live journey cares about these events, exit and enter them now
    (``journeys_events_received``, from the ``(profile id, name, occurred_at)`` the call wrote), so
    that the entries and exits commit with the events and an entry's first push is on its way when
    the call answers (its stream is woken after the commit). A failure fails the events call: none
    of its events is stored, and the integrator's retry does both. ``stamps``: what the events
    call read with its key (the journeys stamp among them), or None. ``received_at``: when the
    events were stored, given when they are replayed (``journeys_events_received``)."""
    live = _live_for_events(stamps)
    if not names & live.names:
        return
    journeys_events_received(event_ids=event_ids, events=events, live=live, received_at=received_at)


def journeys_tick(*, now: dt.datetime | None = None, seconds: float = 40.0, batch: int = 1000) -> dict:
    """The scheduler's beat: read due segment entries, close finished one-off journeys, run the engine
    (for ``seconds``, ``batch`` enrollments at a time; ``out_of_time``: it stopped with more perhaps due).

    Safe on every worker at once (entries under the journey's row lock, the engine with SKIP LOCKED).
    Does nothing on a copy of another instance's database (see ``operations.instance``).
    """
    from operations.instance import instance_refuses

    if instance_refuses(action="run the journeys tick"):
        return {"entries": 0, "entered": 0, "closed": 0, "refused": True}
    now = now or timezone.now()
    due = list(Journey.objects.filter(status=Status.LIVE, next_entry_at__lte=now).values_list("pk", "name")[:200])
    entered = 0
    for pk, name in due:
        try:
            entered += journey_enter_segment(journey_id=pk, now=now)
        except Exception:  # one journey's entry failing (undone) holds back neither the others nor the engine
            log.exception(
                "The segment entry of journey %s ('%s') failed; it is tried again at the next beat.", pk, name
            )
    report = journeys_run_due(now=now, seconds=seconds, batch=batch)
    closed = journeys_close_finished(now=now)
    return {"entries": len(due), "entered": entered, "closed": closed, **report.as_dict()}


def journeys_close_finished(*, now: dt.datetime | None = None) -> int:
    """Close live journeys that will take no one new (a one-off segment entry, read) and have no one inside.

    A journey with a next version open (a draft, or one in review) stays live: closing it would
    leave that version neither editable nor submittable. Once it is approved (a new entry), the
    draft discarded (``journey_draft_discard``) or the journey stopped, the journey finishes as any other.
    """
    now = now or timezone.now()
    being_revised = JourneyVersion.objects.filter(status__in=(VStatus.DRAFT, VStatus.IN_REVIEW)).values("journey_id")
    candidates = (
        Journey.objects.filter(
            status=Status.LIVE,
            next_entry_at__isnull=True,
            live_version__entry_kind=JourneyVersion.EntryKind.SEGMENT,
            live_version__entry_every_hours=0,
        )
        .exclude(pk__in=Enrollment.objects.filter(status__in=Enrollment.OPEN_STATUSES).values("journey_id"))
        .exclude(pk__in=being_revised)  # in the query, so that they never fill the batch
    )
    closed = 0
    for pk in list(candidates.values_list("pk", flat=True)[:200]):
        with transaction.atomic():
            journey = Journey.objects.select_for_update(skip_locked=True).filter(pk=pk, status=Status.LIVE).first()
            if journey is None or journey.next_entry_at is not None:
                continue
            # Under the journey's lock, which an edit and a submission take: none opened since.
            if journey.versions.filter(status__in=(VStatus.DRAFT, VStatus.IN_REVIEW)).exists():
                continue
            if Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).exists():
                continue
            status_transition(journey, Status.CLOSED, by=None, action="closed", also_saved=SAVED_WITH_STATUS)
            closed += 1
    return closed
