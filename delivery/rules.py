"""Delivery rules, applied when a dispatch resolves its audience: the frequency cap and quiet hours.

Both work on the dispatch's freshly inserted ``queued`` rows, set-based: one UPDATE for the cap,
one per time zone present for quiet hours. A row held back records the rule as its reason
(``frequency_cap`` / ``quiet_hours``) or, for quiet hours in *delay* mode, waits with its
``next_attempt_at`` at the end of the quiet hours in the profile's time zone.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db import connection
from django.db.models import Q

from delivery.models import Delivery, DeliveryRules, Dispatch

DS = Delivery.Status


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


def _frequency_cap(dispatch: Dispatch, rules: DeliveryRules, now: dt.datetime) -> int:
    """Skip profiles that already had ``frequency_cap`` marketing pushes (accepted in the window,
    or still on their way) from other dispatches of the app. A dispatch counts once per profile,
    however many of their phones it reached."""
    since = now - dt.timedelta(hours=rules.frequency_window_hours)
    adapt = connection.ops.adapt_datetimefield_value
    sql = (
        "UPDATE delivery_delivery SET status = %s, reason = 'frequency_cap', finished_at = %s "
        "WHERE dispatch_id = %s AND status = %s AND profile_id IN ("
        " SELECT d.profile_id FROM delivery_delivery d JOIN delivery_dispatch x ON x.id = d.dispatch_id"
        " WHERE x.app_id = %s AND x.purpose = 'marketing' AND x.kind <> 'test' AND x.id <> %s"
        " AND d.profile_id IN (SELECT profile_id FROM delivery_delivery WHERE dispatch_id = %s)"
        " AND ((d.status = 'accepted' AND d.finished_at >= %s) OR d.status IN ('queued', 'sending'))"
        " GROUP BY d.profile_id HAVING COUNT(DISTINCT d.dispatch_id) >= %s)"
    )
    params = [
        DS.SKIPPED,
        adapt(now),
        dispatch.pk,
        DS.QUEUED,
        dispatch.app_id,
        dispatch.pk,
        dispatch.pk,
        adapt(since),
        rules.frequency_cap,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def _zone(name: str | None, fallback: str) -> ZoneInfo:
    for candidate in (name, fallback, "UTC"):
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
    return dt.datetime.combine(day, end, tzinfo=local.tzinfo)


def _quiet_hours(dispatch: Dispatch, rules: DeliveryRules, now: dt.datetime) -> dict[str, int]:
    queued = Delivery.objects.filter(dispatch_id=dispatch.pk, status=DS.QUEUED)
    zones = set(queued.values_list("profile__timezone", flat=True).distinct())
    held = {"quiet_hours": 0, "quiet_hours_delayed": 0}
    for name in zones:
        local = now.astimezone(_zone(name, rules.default_timezone))
        until = quiet_until(start=rules.quiet_start, end=rules.quiet_end, local=local)
        if until is None:
            continue
        if name:
            rows = queued.filter(profile__timezone=name)
        else:
            rows = queued.filter(Q(profile__timezone="") | Q(profile__timezone__isnull=True))
        if rules.quiet_mode == DeliveryRules.QuietMode.DISCARD:
            held["quiet_hours"] += rows.update(status=DS.SKIPPED, reason="quiet_hours", finished_at=now)
        else:
            held["quiet_hours_delayed"] += rows.update(next_attempt_at=until.astimezone(dt.UTC))
    return held
