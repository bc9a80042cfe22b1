"""How the admin shows a stored time where a page has no zone of its own to show it in: in the
server's zone (``TIME_ZONE``, UTC), the zone named, as ``config.zones.zoned`` words the times that
have one (a campaign's in its zone): ``2026-12-03 22:30 UTC``, never a bare ``Dec. 3, 2026, 10:30 p.m.``."""

DATETIME_FORMAT = "Y-m-d H:i T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
