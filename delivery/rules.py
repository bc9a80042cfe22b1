"""Delivery rules, applied when a dispatch resolves its audience: the frequency cap and quiet hours.

Both work on the dispatch's freshly inserted ``queued`` rows, set-based: one UPDATE for the cap,
one per time zone present for quiet hours. A row held back records the rule as its reason
(``frequency_cap`` / ``quiet_hours``): skipped, or, for quiet hours in *delay* mode, queued with its
``next_attempt_at`` at the end of the quiet hours in the profile's time zone (its outcome's reason
replaces it when it is sent).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from django.conf import settings
from django.db import connection
from django.db.models import Case, DateTimeField, Q, Value, When

from config.db import COUNT_WORK_MEM
from config.zones import wall_clock
from delivery.models import App, Delivery, DeliveryRules, Dispatch
from delivery.services.rollups import deliveries_finish

DS = Delivery.Status
# The reasons ``rules_apply`` reports for rows it made final (``skipped``): the others are held back.
SKIPPING_RULES = ("frequency_cap", "quiet_hours", "missed_local_time", "expired")


def rules_apply(*, dispatch: Dispatch, now: dt.datetime) -> dict[str, int]:
    """Apply the app's rules to the dispatch's queued rows; returns {reason: rows held back}.

    Call inside the transaction that inserted the rows. Test and transactional dispatches pass.
    """
    if dispatch.kind == Dispatch.Kind.TEST or dispatch.purpose == "transactional":
        return {}
    rules = DeliveryRules.objects.filter(app_id=dispatch.app_id).first()
    if rules is None:
        return {}
    held: dict[str, int] = {}
    if rules.frequency_cap:
        held["frequency_cap"] = _frequency_cap(dispatch, rules, now)
    if rules.has_quiet_hours:
        held.update(_quiet_hours(dispatch, rules, now))
    return {reason: n for reason, n in held.items() if n}


def rules_text(rules: DeliveryRules | None) -> str:
    """The app's rules in words, naming their values: "the app's frequency cap (at most 1 push per
    profile in 24 h) and quiet hours (22:00–08:00 in each profile's time zone, UTC without one;
    held until they end)"; "" when the app has neither."""
    if rules is None:
        return ""
    parts = []
    if rules.frequency_cap:
        pushes = "push" if rules.frequency_cap == 1 else "pushes"
        parts.append(
            f"frequency cap (at most {rules.frequency_cap:,} {pushes} per profile in {rules.frequency_window_hours:,} h)"
        )
    if rules.has_quiet_hours:
        mode = "held until they end" if rules.quiet_mode == DeliveryRules.QuietMode.DELAY else "skipped"
        parts.append(
            f"quiet hours ({rules.quiet_start:%H:%M}–{rules.quiet_end:%H:%M} in each profile's time zone, "
            f"{rules.default_timezone} without one; pushes {mode})"
        )
    return "the app's " + " and ".join(parts) if parts else ""


def rules_hold_text(*, app_id: int, purpose: str) -> str:
    """What the app's rules may do to a send of ``purpose``, as a campaign's and a journey's page
    and their reviews say it: for a marketing send, the rules named with their values "may hold some
    back" (their effect is not counted: it depends on the time of the send and on the sends before
    it); a transactional send bypasses them, and says so. "" when the app has no rules."""
    rules = rules_text(DeliveryRules.objects.filter(app_id=app_id).first())
    if not rules:
        return ""
    if purpose == "transactional":
        return f"transactional: it bypasses {rules}"
    return f"{rules} may hold some back"


# The longest window a cap may count over: a year (a leap one). A cap counts from now minus its
# window, and a window of millions of hours is a date before year 1: every send of the app failed.
FREQUENCY_WINDOW_MAX_HOURS = 366 * 24


def frequency_window_outlasts_retention(*, frequency_cap: int | None, window_hours: int) -> str | None:
    """Say why a cap of ``frequency_cap`` per ``window_hours`` counts deliveries that retention
    deletes (its window is longer than PUSHDESK_RETENTION_DELIVERY_DAYS keeps them), naming both
    figures; None when it does not (no cap, deliveries kept forever, or the window within).

    Retention refuses to run while such a cap exists (``operations.services``): the cap would
    let through pushes it should hold back once the older deliveries it counts were deleted."""
    days = settings.PUSHDESK_RETENTION_DELIVERY_DAYS
    if not frequency_cap or days <= 0 or window_hours <= days * 24:
        return None
    return (
        f"A window of {window_hours:,} hours counts deliveries further back than they are kept: "
        f"PUSHDESK_RETENTION_DELIVERY_DAYS={days} ({days * 24:,} hours). Retention refuses to run "
        "(deleting nothing) while a cap counts past it."
    )


# The advisory lock class of the frequency cap (its object id is the app's): a constant of ours.
_CAP_LOCK_CLASS = 0x50C4
# What the cap counts, in a resolve's cap (below) and a trigger's (delivery.services.streams), over
# a dispatch ``x`` and its rows: the app's marketing dispatches (the app's id bound); a row on its
# way while its dispatch runs (rows ``d``, or ``e`` in the resolve's); and, over the rows ``c``
# counted, one push per dispatch, or per call on a stream.
CAP_DISPATCHES = "x.app_id = %s AND x.purpose = 'marketing' AND x.kind <> 'test'"
CAP_ON_ITS_WAY = (
    "x.status IN ('preparing', 'sending') AND {row}.finished_at IS NULL AND {row}.status IN ('queued', 'sending')"
)
CAP_PUSHES = "COUNT(DISTINCT CAST(c.dispatch_id AS text) || ':' || COALESCE(CAST(c.queued_at AS text), ''))"


def _frequency_cap(dispatch: Dispatch, rules: DeliveryRules, now: dt.datetime) -> int:
    """Skip profiles that already had ``frequency_cap`` marketing pushes (accepted in the window,
    or still on their way in a dispatch that is preparing or sending) from other dispatches of the
    app. A dispatch counts once per profile, however many of their phones it reached; a standing
    dispatch (a stream) once per call that reached them.

    Serialised per app by a transaction-level advisory lock held until the caller's transaction
    commits: two dispatches resolving at once could not see each other's uncommitted rows, so the
    second waits and then counts the first's. (SQLite serialises writers by itself.)
    """
    postgresql = connection.vendor == "postgresql"
    if postgresql:
        with connection.cursor() as cursor:
            # The lock, and the settings of the count below: the dispatch's rows, written in this
            # transaction (a million at once), are unknown to the planner's statistics, which count
            # on one; it would then run the grouped count once per row of the other side. For that
            # statement only: hash joins, with the memory of a count (the profile ids hashed once).
            cursor.execute(
                "SELECT current_setting('enable_nestloop'), current_setting('work_mem'), "
                "pg_advisory_xact_lock(%s, %s), set_config('enable_nestloop', 'off', true), "
                "set_config('work_mem', %s, true)",
                [_CAP_LOCK_CLASS, dispatch.app_id, COUNT_WORK_MEM],
            )
            saved = cursor.fetchone()[:2]
    since = now - dt.timedelta(hours=rules.frequency_window_hours)
    adapt = connection.ops.adapt_datetimefield_value
    # Pushes accepted in the window are read through the profiles' index of finished rows; those
    # on their way are the unfinished rows of the app's other running dispatches (a stopped or
    # finished dispatch's stranded row is no push on its way), read through their claim index.
    others = (
        f" JOIN delivery_dispatch x ON x.id = e.dispatch_id WHERE {CAP_DISPATCHES} AND x.id <> %s"  # noqa: S608 (constants)
        " AND e.profile_id IN (SELECT profile_id FROM delivery_delivery WHERE dispatch_id = %s)"
    )
    where = (
        "d.dispatch_id = %s AND d.status = %s AND d.profile_id IN ("  # noqa: S608 (constants; values are bound)
        " SELECT c.profile_id FROM ("
        f" SELECT e.profile_id, e.dispatch_id, e.queued_at FROM delivery_delivery e{others}"
        " AND e.status = 'accepted' AND e.finished_at >= %s"
        f" UNION ALL SELECT e.profile_id, e.dispatch_id, e.queued_at FROM delivery_delivery e{others}"
        f" AND {CAP_ON_ITS_WAY.format(row='e')}"
        f") c GROUP BY c.profile_id HAVING {CAP_PUSHES} >= %s)"
    )
    ours = [dispatch.app_id, dispatch.pk, dispatch.pk]
    params = [dispatch.pk, DS.QUEUED, *ours, adapt(since), *ours, rules.frequency_cap]
    capped = deliveries_finish(where=where, params=params, status=DS.SKIPPED, reason="frequency_cap", now=now)
    if postgresql:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('enable_nestloop', %s, true), set_config('work_mem', %s, true)", saved)
    return capped


def app_rules(owner) -> DeliveryRules | None:
    """The delivery rules of ``owner``'s app (``owner``: a row with an ``app`` foreign key, such
    as a dispatch or a journey), or None when the app has none. No query when they were read with
    it (``select_related("app__delivery_rules")``); one else."""
    if type(owner).app.is_cached(owner) and App.delivery_rules.is_cached(owner.app):
        return getattr(owner.app, "delivery_rules", None)  # read with it: None when the app has none
    return DeliveryRules.objects.filter(app_id=owner.app_id).first()


@lru_cache(maxsize=1024)
def profile_zone(name: str | None, default: str) -> ZoneInfo:
    """The zone of a profile whose zone is ``name``: that, else ``default`` (the app's
    ``DeliveryRules.default_timezone``, or a local-time send's own zone), else UTC. A blank or
    unknown name is passed over. Kept once found: a send asks it per message."""
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def quiet_until(*, start: dt.time, end: dt.time, local: dt.datetime) -> dt.datetime | None:
    """When the quiet hours around ``local`` end (aware, local), or None outside quiet hours."""
    t = local.time().replace(tzinfo=None)
    overnight = start > end
    inside = (t >= start or t < end) if overnight else (start <= t < end)
    if not inside:
        return None
    day = local.date() if (not overnight or t < end) else local.date() + dt.timedelta(days=1)
    until = dt.datetime.combine(day, end, tzinfo=local.tzinfo)
    if until.astimezone(dt.UTC) <= local.astimezone(dt.UTC):
        # The clock went back and shows the quiet hours again: they end when it shows their end again.
        until = until.replace(fold=1)
    return until


def _ttls(dispatch: Dispatch) -> tuple[int, dict[int, int]]:
    """The TTL in seconds of the dispatch's own content, and of each variant's by its number."""
    variants = {v["number"]: int(v["spec"].get("ttl_seconds") or 0) for v in dispatch.variants or [] if v["number"]}
    return int(dispatch.content_spec.get("ttl_seconds") or 0), variants


def _held_expiry(ttls: tuple[int, dict[int, int]], until: dt.datetime):
    own, variants = ttls
    expiries = [When(variant=n, then=Value(until + dt.timedelta(seconds=ttl))) for n, ttl in variants.items()]
    default = until + dt.timedelta(seconds=own)
    return Case(*expiries, default=Value(default), output_field=DateTimeField()) if expiries else default


def held_expiry(dispatch: Dispatch, until: dt.datetime):
    """The expiry of a row held until ``until``: its TTL runs from the end of its hold
    (``Delivery.expires_at``), and a variant's row's TTL is its variant's (``Dispatch.spec_for``)."""
    return _held_expiry(_ttls(dispatch), until)


@dataclass(frozen=True)
class QuietAtClaim:
    """What a claim needs to judge the app's quiet hours again as it takes a dispatch's rows: a send
    resolved before they started (a throttled one, going for hours) is still sending inside them."""

    start: dt.time
    end: dt.time
    discard: bool
    default_timezone: str
    ttls: tuple[int, dict[int, int]]  # the dispatch's own TTL, each variant's (``_ttls``)

    def zones(self, now: dt.datetime) -> dict[str, str | None]:
        """{zone name: when its quiet hours end (UTC, ISO), or None outside them} for every zone
        known, "" for the rules' default zone (a profile without a zone, or with an unknown one)."""
        return _quiet_zones(self.start, self.end, self.default_timezone, _zones_instant(self, now))

    def zones_json(self, now: dt.datetime) -> str:
        """``zones`` as a JSON object, for a claim's statement."""
        return _quiet_zones_json(self.start, self.end, self.default_timezone, _zones_instant(self, now))

    def ttl_sql(self, column: str) -> str:
        """SQL for the TTL in seconds of a row whose variant is ``column`` (integers of ours)."""
        own, variants = self.ttls
        if not variants:
            return str(own)
        cases = " ".join(f"WHEN {int(n)} THEN {int(ttl)}" for n, ttl in variants.items())
        return f"CASE {column} {cases} ELSE {int(own)} END"

    def expiry(self, until: dt.datetime):
        """A held row's expiry, as ``held_expiry`` gives it (an expression over its variant)."""
        return _held_expiry(self.ttls, until)


def quiet_at_claim(dispatch: Dispatch) -> QuietAtClaim | None:
    """The quiet hours a claim of the dispatch's rows judges again (``deliveries_claim``), or None:
    a test or transactional send, or an app without quiet hours. One query (the app's rules,
    ``app_rules``), none when they were read with the dispatch, as the stream senders read their
    open streams: once for many claims."""
    if dispatch.kind == Dispatch.Kind.TEST or dispatch.purpose == "transactional":
        return None
    rules = app_rules(dispatch)
    if rules is None or not rules.has_quiet_hours:
        return None
    return QuietAtClaim(
        start=rules.quiet_start,
        end=rules.quiet_end,
        discard=rules.quiet_mode == DeliveryRules.QuietMode.DISCARD,
        default_timezone=rules.default_timezone,
        ttls=_ttls(dispatch),
    )


def _zones_instant(quiet: QuietAtClaim, now: dt.datetime) -> dt.datetime:
    """The instant the zones are judged at: the minute of ``now`` when the quiet hours start and end
    on a whole minute (zones' offsets are whole minutes, so the answer holds for the whole minute and
    is computed once a minute), else ``now``."""
    whole = not (quiet.start.second or quiet.start.microsecond or quiet.end.second or quiet.end.microsecond)
    return now.replace(second=0, microsecond=0) if whole else now


@lru_cache(maxsize=1)
def _known_zones() -> dict[str, ZoneInfo]:
    return {name: ZoneInfo(name) for name in sorted(available_timezones())}


@lru_cache(maxsize=16)
def _quiet_zones_json(start: dt.time, end: dt.time, default: str, at: dt.datetime) -> str:
    return json.dumps(_quiet_zones(start, end, default, at), separators=(",", ":"))


@lru_cache(maxsize=16)
def _quiet_zones(start: dt.time, end: dt.time, default: str, at: dt.datetime) -> dict[str, str | None]:
    def ends(zone: ZoneInfo) -> str | None:
        until = quiet_until(start=start, end=end, local=at.astimezone(zone))
        return until.astimezone(dt.UTC).isoformat() if until is not None else None

    found = {name: ends(zone) for name, zone in _known_zones().items()}
    found[""] = ends(profile_zone(default, "UTC"))
    return found


def _now_or_never(dispatch: Dispatch) -> Q | None:
    """The rows whose content has a TTL of 0, "now or never" (a variant's row: its variant's); None: no row."""
    variants = {v["number"]: v["spec"] for v in dispatch.variants or []}
    never = [number for number, spec in variants.items() if not int(spec.get("ttl_seconds") or 0)]
    found = Q(variant__in=never) if never else None
    if not int(dispatch.content_spec.get("ttl_seconds") or 0):  # the rows of no variant (``spec_for``)
        own = Q(variant__isnull=True) | ~Q(variant__in=list(variants)) if variants else Q()
        found = own if found is None else found | own
    return found


def _quiet_hours(dispatch: Dispatch, rules: DeliveryRules, now: dt.datetime) -> dict[str, int]:
    queued = Delivery.objects.filter(dispatch_id=dispatch.pk, finished_at__isnull=True, status=DS.QUEUED)
    zones = set(queued.values_list("profile__timezone", flat=True).distinct())
    held = {"quiet_hours": 0, "quiet_hours_delayed": 0, "expired": 0}
    now_or_never = _now_or_never(dispatch) if rules.quiet_mode == DeliveryRules.QuietMode.DELAY else None
    wall = dt.datetime.fromisoformat(dispatch.local_time) if dispatch.local_time else None
    for name in zones:
        zone = profile_zone(name, rules.default_timezone)
        # A local-time send is judged at the moment it goes out (``local_time_apply``: the wall time
        # in the profile's zone, else the campaign's), read in the quiet hours' zone; others now.
        if wall:
            goes_at = wall_clock(wall, profile_zone(name, dispatch.local_default_timezone))
            local = max(goes_at, now).astimezone(zone)
        else:
            local = now.astimezone(zone)
        until = quiet_until(start=rules.quiet_start, end=rules.quiet_end, local=local)
        if until is None:
            continue
        rows = _rows_in_zone(queued, name)
        if rules.quiet_mode == DeliveryRules.QuietMode.DISCARD:
            sql, params = rows.values("id").query.sql_with_params()
            held["quiet_hours"] += deliveries_finish(
                where=f"d.id IN ({sql})", params=list(params), status=DS.SKIPPED, reason="quiet_hours", now=now
            )
        else:
            if now_or_never is not None:
                # A TTL of 0 is "now or never": held until the quiet hours end, it would be expired
                # then, so it is never sent and its row says so at once.
                sql, params = rows.filter(now_or_never).values("id").query.sql_with_params()
                held["expired"] += deliveries_finish(
                    where=f"d.id IN ({sql})", params=list(params), status=DS.SKIPPED, reason="expired", now=now
                )
            until = until.astimezone(dt.UTC)
            # The row says why it waits, as a skipped one does; its outcome replaces it when it is sent.
            held["quiet_hours_delayed"] += rows.update(
                next_attempt_at=until, held_until=until, expires_at=held_expiry(dispatch, until), reason="quiet_hours"
            )
    return held


def local_time_apply(*, dispatch: Dispatch, now: dt.datetime) -> dict[str, int]:
    """For a send at a local time of day: hold each queued row until that wall-clock time in its
    profile's time zone (one UPDATE per time zone present); a zone already past it is sent now, or,
    past it by more than the dispatch's ``local_late_minutes``, skipped (``missed_local_time``).
    Returns {"local_time_held": rows, "missed_local_time": rows}, without zeros."""
    if not dispatch.local_time:
        return {}
    wall = dt.datetime.fromisoformat(dispatch.local_time)
    late = dt.timedelta(minutes=dispatch.local_late_minutes) if dispatch.local_late_minutes is not None else None
    queued = Delivery.objects.filter(dispatch_id=dispatch.pk, finished_at__isnull=True, status=DS.QUEUED)
    counts = {"local_time_held": 0, "missed_local_time": 0}
    for name in set(queued.values_list("profile__timezone", flat=True).distinct()):
        at = wall_clock(wall, profile_zone(name, dispatch.local_default_timezone))
        if at <= now:
            if late is not None and now - at > late:
                sql, params = _rows_in_zone(queued, name).values("id").query.sql_with_params()
                counts["missed_local_time"] += deliveries_finish(
                    where=f"d.id IN ({sql})",
                    params=list(params),
                    status=DS.SKIPPED,
                    reason="missed_local_time",
                    now=now,
                )
            continue  # that time zone is there: send now
        at = at.astimezone(dt.UTC)
        counts["local_time_held"] += _rows_in_zone(queued, name).update(
            next_attempt_at=at, expires_at=held_expiry(dispatch, at)
        )
    return {reason: n for reason, n in counts.items() if n}


def _rows_in_zone(queued, name: str | None):
    if name:
        return queued.filter(profile__timezone=name)
    return queued.filter(Q(profile__timezone="") | Q(profile__timezone__isnull=True))
