"""When a campaign's occurrences fall: pure functions of the campaign's schedule fields.

Times are computed in the campaign's time zone (so 09:00 stays 09:00 across daylight-saving
changes) and returned as aware UTC datetimes.
"""

import calendar
import datetime as dt
import functools
from zoneinfo import ZoneInfo, available_timezones

from croniter import CroniterBadDateError, croniter
from django.core.exceptions import ValidationError

from config.zones import clocks_jump, wall_clock, zone, zoned

UTC = dt.UTC


@functools.cache
def _iana_names() -> frozenset[str]:
    # Not 'localtime' (the server's own zone, which may differ between hosts); available_timezones()
    # already leaves out right/ (leap seconds counted) and posix/ copies.
    return frozenset(available_timezones() - {"localtime", "posixrules"})


def zone_known(name: str) -> bool:
    """Is ``name`` a time zone a schedule takes (``zone_check``)?"""
    return name in _iana_names()


def zone_names() -> list[str]:
    """Every time zone a schedule takes, by name, sorted: what the form offers as it is typed."""
    return sorted(_iana_names())


def zone_check(name: str) -> None:
    """Refuse a time zone that is not an IANA name, naming the field. Raises ValidationError."""
    zone(name)
    if name not in _iana_names():
        raise ValidationError({"time_zone": f"Unknown time zone '{name}': use an IANA name such as Europe/Paris."})


def _add_months(local: dt.datetime, months: int, day: int) -> dt.datetime:
    month0 = local.month - 1 + months
    year, month = local.year + month0 // 12, month0 % 12 + 1
    # The 31st in a 30-day month falls on its last day, and comes back to the 31st after.
    return local.replace(year=year, month=month, day=min(day, calendar.monthrange(year, month)[1]))


def localize(naive: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """Attach the zone; a wall time the clocks skip is the first moment after the jump (02:30 on the
    night Paris goes from 02:00 to 03:00 sends at 03:00, as a cron at 02:30 does): ``wall_clock``."""
    return wall_clock(naive, tz)


def skipped_time_text(schedule, due: dt.datetime) -> str:
    """For a recurring schedule (a Campaign or its ApprovedVersion) whose time of day the clocks
    skipped on the day of ``due``, which fell then at the first minute after the jump: what the
    time became, said as "02:30 does not exist in Europe/Paris on 2027-03-28 (the clocks go from
    02:00 to 03:00): due at 03:00, the first minute after". "" for any other occurrence."""
    if schedule.schedule_kind != "recurring" or at_local_time(schedule) or schedule.send_at is None:
        return ""
    tz = zone(schedule.time_zone)
    jump = clocks_jump(due, tz)
    if jump is None:
        return ""
    first, end = jump
    if schedule.recurrence == "cron":
        if croniter.match(schedule.cron, end):
            return ""  # the end is a time of its own: what it had in the jump is dropped, not moved there
        walls = (first + dt.timedelta(minutes=n) for n in range(int((end - first).total_seconds() // 60)))
        wall = next((w for w in walls if croniter.match(schedule.cron, w)), None)
    else:
        time_of_day = schedule.send_at.astimezone(tz).time()
        days = sorted({first.date(), end.date()})
        wall = next((w for w in (dt.datetime.combine(d, time_of_day) for d in days) if first <= w < end), None)
    if wall is None:  # its time is the end of the jump: nothing skipped
        return ""
    return (
        f"{wall:%H:%M} does not exist in {schedule.time_zone} on {wall:%Y-%m-%d} (the clocks go from "
        f"{first:%H:%M} to {end:%H:%M}): due at {end:%H:%M}, the first minute after"
    )


def _repeated_wall_time(moment: dt.datetime, tz: ZoneInfo) -> bool:
    """Whether ``moment`` is the second time its wall-clock time is shown in ``tz`` (fall back)."""
    local = moment.astimezone(tz)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def occurrences_after(
    *,
    schedule_kind: str,
    send_at: dt.datetime | None,
    time_zone: str,
    recurrence: str = "",
    cron: str = "",
    ends_at: dt.datetime | None = None,
    after: dt.datetime,
    activated_at: dt.datetime | None = None,
):
    """Yield the occurrences strictly after ``after``, in order (UTC, aware).

    ``now`` campaigns have one occurrence, at activation; ``at`` campaigns one, at ``send_at``.
    """
    tz = zone(time_zone)
    if schedule_kind == "now":
        if activated_at is not None and activated_at > after:
            yield activated_at
        return
    if send_at is None:
        return
    if schedule_kind == "at":
        if send_at > after:
            yield send_at
        return
    start_local = send_at.astimezone(tz).replace(tzinfo=None)
    if recurrence == "cron":
        base = max(after, send_at - dt.timedelta(seconds=1)).astimezone(tz)
        it = croniter(cron, base)
        fields = cron.split()
        every_hour = fields[0] == "@hourly" or (len(fields) > 1 and fields[1].startswith("*"))
        while True:
            try:
                candidate = it.get_next(dt.datetime)
            except CroniterBadDateError:
                return  # a date the calendar never has (30 February): no occurrence left
            if candidate.tzinfo is None:
                candidate = localize(candidate, tz)
            candidate = candidate.astimezone(UTC)
            if ends_at is not None and candidate > ends_at:
                return
            if not every_hour and _repeated_wall_time(candidate, tz):
                # The clock went back: this wall time was already reached (and sent) an hour ago. A
                # cron at fixed hours fires once a day, as cron does; one running every hour keeps its pace.
                continue
            if candidate > after and candidate >= send_at:
                yield candidate
        return
    n = 0
    while True:
        if recurrence == "daily":
            local = start_local + dt.timedelta(days=n)
        elif recurrence == "weekly":
            local = start_local + dt.timedelta(weeks=n)
        elif recurrence == "monthly":
            local = _add_months(start_local, n, start_local.day)
        else:
            return
        candidate = localize(local, tz).astimezone(UTC)
        n += 1
        if ends_at is not None and candidate > ends_at:
            return
        if candidate > after:
            yield candidate


# A send at each profile's local time starts when the earliest time zone (UTC+14) gets there, and
# goes on until the last one (UTC−12) gets there, 26 hours later.
EARLIEST_ZONE = "Etc/GMT-14"
LOCAL_SPAN = dt.timedelta(hours=26)


def _rebased(send_at: dt.datetime | None, *, from_zone: str, to_zone: str) -> dt.datetime | None:
    """The same wall-clock time as ``send_at`` in ``from_zone``, in ``to_zone``."""
    if send_at is None:
        return None
    wall = send_at.astimezone(zone(from_zone)).replace(tzinfo=None)
    return localize(wall, zone(to_zone)).astimezone(UTC)


def local_wall_time(campaign, occurrence: dt.datetime) -> str:
    """For a local-time campaign, the wall-clock time its occurrence stands for (ISO, no zone)."""
    return occurrence.astimezone(zone(EARLIEST_ZONE)).replace(tzinfo=None).isoformat(timespec="seconds")


def occurrence_when(due: dt.datetime, *, time_zone: str, local: bool) -> str:
    """When an occurrence due at ``due`` sends, as its schedule was entered: in the campaign's zone,
    the zone named; at each profile's local time, the wall-clock time every zone sends at (not the
    moment UTC+14 gets there, when the send starts), said so."""
    if not local:
        return zoned(due, time_zone)
    wall = dt.datetime.fromisoformat(local_wall_time(None, due))
    return f"{wall:%Y-%m-%d %H:%M} at each profile's local time"


# The fields of a campaign that make its schedule.
SCHEDULE_FIELDS = ("schedule_kind", "send_at", "time_zone", "recurrence", "cron", "ends_at", "at_local_time")


def send_moment(schedule, *, due: dt.datetime | None) -> dt.datetime | None:
    """The moment a send of ``schedule`` (a Campaign or its ApprovedVersion) due at ``due`` (its
    next occurrence; None when it has none yet: its ``send_at``) renders its content at, which its
    previews render ``now`` as of. At each profile's local time: the schedule's wall-clock time in
    the campaign's zone (its profiles without a zone of their own), not when UTC+14 gets there.
    None for a campaign triggered through the API or sent when approved: the real now."""
    if schedule.kind == "api_triggered" or schedule.schedule_kind == "now":
        return None
    if due is not None and at_local_time(schedule):
        due = localize(dt.datetime.fromisoformat(local_wall_time(schedule, due)), zone(schedule.time_zone))
    return due or schedule.send_at


def at_local_time(campaign) -> bool:
    """Does the campaign send at each profile's local time (a schedule that is not "now")?"""
    return bool(getattr(campaign, "at_local_time", False)) and campaign.schedule_kind != "now"


# The scheduler beats every minute: an occurrence fired later than this was missed (downtime).
LATE_AFTER = dt.timedelta(minutes=5)

# The longest missed-send window a campaign takes (``missed_window_check``): an occurrence is sent at
# most a week late, and the look-back of a send at each profile's local time (``local_occurrence_open``)
# walks at most 26 hours and a week of a cron's minutes.
MAX_MISSED_WINDOW_MINUTES = 7 * 24 * 60
_LOCAL_LOOK_BACK_MINUTES = int((LOCAL_SPAN + dt.timedelta(minutes=MAX_MISSED_WINDOW_MINUTES)).total_seconds() // 60)


def lateness_allowed(campaign) -> dt.timedelta:
    """How late an occurrence (at each profile's local time: a time zone's) may still be sent: the
    campaign's missed window, which is for downtime, never under ``LATE_AFTER`` (a send on the beat
    is on time)."""
    return max(dt.timedelta(minutes=campaign.missed_window_minutes), LATE_AFTER)


def local_look_back(campaign) -> dt.timedelta:
    """How long after UTC+14 reached its time a local-time occurrence may still be sent somewhere:
    until UTC−12 got there (``LOCAL_SPAN``), and the campaign's missed window after that."""
    return LOCAL_SPAN + lateness_allowed(campaign)


def local_occurrence_open(campaign, *, now: dt.datetime, fired: set[dt.datetime] = frozenset()) -> dt.datetime | None:
    """For a local-time campaign, the latest occurrence begun by ``now`` that some time zone may still
    be sent (it began less than 26 hours and the campaign's missed window ago) and that is not in
    ``fired``; None when there is none. Approved after UTC+14 reached its time, it is still due for
    the zones behind, and for the last ones within the window."""
    if not at_local_time(campaign):
        return None
    found = None
    due = next_occurrence(campaign, after=now - local_look_back(campaign))
    for _ in range(_LOCAL_LOOK_BACK_MINUTES + 2):  # bounded: a cron fires at most once a minute
        if due is None or due > now:
            break
        found = due
        due = next_occurrence(campaign, after=due)
    return None if found in fired else found


def next_occurrence(campaign, *, after: dt.datetime) -> dt.datetime | None:
    """The campaign's first occurrence strictly after ``after``, or None when there is none left.

    For a send at each profile's local time, the occurrence is when UTC+14 reaches the wall-clock
    time (the send then holds each profile's rows until their own zone gets there).
    """
    local = at_local_time(campaign)
    time_zone = EARLIEST_ZONE if local else campaign.time_zone
    send_at = (
        _rebased(campaign.send_at, from_zone=campaign.time_zone, to_zone=EARLIEST_ZONE) if local else campaign.send_at
    )
    # The end too is a wall-clock time: no profile gets a send whose local time is after it.
    ends_at = (
        _rebased(campaign.ends_at, from_zone=campaign.time_zone, to_zone=EARLIEST_ZONE) if local else campaign.ends_at
    )
    return next(
        occurrences_after(
            schedule_kind=campaign.schedule_kind,
            send_at=send_at,
            time_zone=time_zone,
            recurrence=campaign.recurrence,
            cron=campaign.cron,
            ends_at=ends_at,
            after=after,
            activated_at=campaign.activated_at,
        ),
        None,
    )


def schedule_check(
    *,
    kind: str,
    schedule_kind: str,
    send_at: dt.datetime | None,
    time_zone: str,
    recurrence: str,
    cron: str,
    ends_at: dt.datetime | None,
) -> None:
    """Refuse a schedule that cannot fire, naming the field. Raises ValidationError."""
    zone_check(time_zone)
    if kind == "api_triggered":
        return  # sent when the API asks; no schedule
    errors = {}
    if schedule_kind in ("at", "recurring") and send_at is None:
        errors["send_at"] = "Choose when to send."
    if schedule_kind == "recurring":
        if recurrence not in ("daily", "weekly", "monthly", "cron"):
            errors["recurrence"] = "Choose daily, weekly, monthly or a cron expression."
        if recurrence == "cron" and not _cron_valid(cron):
            errors["cron"] = f"'{cron}' is not a valid five-field cron expression (e.g. '0 9 * * 1-5')."
        if ends_at is not None and send_at is not None and ends_at <= send_at:
            errors["ends_at"] = "The end must come after the first send."
    if errors:
        raise ValidationError(errors)
    if schedule_kind == "recurring":
        first = next(
            occurrences_after(
                schedule_kind=schedule_kind,
                send_at=send_at,
                time_zone=time_zone,
                recurrence=recurrence,
                cron=cron,
                after=send_at - dt.timedelta(microseconds=1),
            ),
            None,
        )
        if first is None:
            raise ValidationError({"cron": f"'{cron}' never fires: no calendar has that date (e.g. 30 February)."})
        if ends_at is not None and first > ends_at:
            raise ValidationError(
                {"ends_at": "No occurrence falls between the first send and the end: it would never send."}
            )


def _cron_valid(cron: str) -> bool:
    """Five fields (minute, hour, day, month, weekday) or an alias such as @daily: croniter also takes
    a sixth field of seconds, which would fire many times a minute."""
    cron = (cron or "").strip()
    return (cron.startswith("@") or len(cron.split()) == 5) and croniter.is_valid(cron)
