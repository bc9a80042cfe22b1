"""Time zones by IANA name, and how a stored (UTC) time is shown: in a zone, the zone named.

Below every app, so that each page (campaigns, journeys, dispatches, deliveries) words its times alike.
"""

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError


def zone(name: str) -> ZoneInfo:
    """The zone of an IANA name; ValidationError naming ``time_zone`` when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            {"time_zone": f"Unknown time zone '{name}': use an IANA name such as Europe/Paris."}
        ) from None


def wall_clock(naive: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """The moment a wall-clock time shows in ``tz``, aware. A time the clocks skip (02:30 on the night
    Paris goes from 02:00 to 03:00) is the first moment after the jump (03:00), as cron and most
    schedulers have it; a time shown twice (the night the clocks go back) is its first showing."""
    aware = naive.replace(tzinfo=tz, fold=0)
    if aware.astimezone(dt.UTC).astimezone(tz).replace(tzinfo=None) == naive:
        return aware
    # In the gap: read with the offset before the jump it falls after it, with the one after it
    # before it; the jump is between, where the offset changes (found to the second).
    early, late = naive.replace(tzinfo=tz, fold=1).astimezone(dt.UTC), aware.astimezone(dt.UTC)
    after = late.astimezone(tz).utcoffset()
    while late - early > dt.timedelta(seconds=1):
        middle = early + (late - early) // 2
        middle -= dt.timedelta(microseconds=middle.microsecond)
        if middle <= early:
            break
        if middle.astimezone(tz).utcoffset() == after:
            late = middle
        else:
            early = middle
    return late.astimezone(tz)


def clocks_jump(moment: dt.datetime, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime] | None:
    """When ``moment`` is the first moment after the clocks of ``tz`` jumped forward: the wall-clock
    times they skipped, as [first, end) naive (02:00 and 03:00); None otherwise."""
    moment = moment.astimezone(dt.UTC)  # a second before, in UTC: aware arithmetic in a zone is its wall clock's
    before, after = (moment - dt.timedelta(seconds=1)).astimezone(tz), moment.astimezone(tz)
    jump = after.utcoffset() - before.utcoffset()
    if jump <= dt.timedelta(0):
        return None
    end = after.replace(tzinfo=None)
    return end - jump, end


def zoned(value: dt.datetime | None, time_zone: str) -> str:
    """A stored (UTC) time as the wall-clock time of ``time_zone``, the zone named: the form every
    page and message shows a time in (a campaign's dates in its zone, a journey's in UTC)."""
    if value is None:
        return "—"
    return f"{value.astimezone(zone(time_zone)):%Y-%m-%d %H:%M} ({time_zone})"


def zoned_column(field: str, description: str, *, time_zone: str | None = None, zone_field: str = "shown_zone"):
    """An admin column showing the stored time ``field`` with ``zoned``: in ``time_zone``, or, when
    None, in the zone the row names in ``zone_field`` (a campaign's own ``time_zone``, or the zone
    the admin's queryset annotates each row with, ``shown_zone``)."""
    from django.contrib import admin  # the admin only where a page asks: this module is below the apps

    @admin.display(description=description, ordering=field)
    def column(self, obj):
        return zoned(getattr(obj, field), time_zone or getattr(obj, zone_field))

    return column
