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
