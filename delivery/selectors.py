"""Permission-filtered reads of the send pipeline: every admin list and API view goes through these."""

from dataclasses import dataclass

from django.db.models import QuerySet

from accounts.models import User
from accounts.selectors import visible_to
from delivery.models import App, Delivery, Device, Dispatch, PushContent


def apps_visible_to(user: User) -> QuerySet[App]:
    return visible_to(user, App.objects.all())


def devices_visible_to(user: User) -> QuerySet[Device]:
    """Devices of the apps the user has access to (devices belong to an app's scope)."""
    if not user.has_perm("delivery.view_device"):
        return Device.objects.none()
    return Device.objects.filter(app__in=apps_visible_to(user).values("pk"))


def pushcontents_visible_to(user: User) -> QuerySet[PushContent]:
    return visible_to(user, PushContent.objects.all())


def dispatches_visible_to(user: User) -> QuerySet[Dispatch]:
    return visible_to(user, Dispatch.objects.all())


def deliveries_visible_to(user: User) -> QuerySet[Delivery]:
    """Deliveries of the dispatches the user may see."""
    if not user.has_perm("delivery.view_delivery"):
        return Delivery.objects.none()
    return Delivery.objects.filter(dispatch__in=dispatches_visible_to(user).values("pk"))


def dispatch_for(user: User, dispatch_id: int) -> Dispatch:
    """One dispatch the user may see; raises Dispatch.DoesNotExist otherwise (404, not 403)."""
    return dispatches_visible_to(user).get(pk=dispatch_id)


def dispatch_outcomes(dispatch: Dispatch) -> list[dict]:
    """Counts by (status, reason) of a dispatch's rows: one GROUP BY on its index; then the sends
    retried on the way, by the provider's reason (status ``retried``)."""
    from django.db.models import Count

    rows = (
        Delivery.objects.filter(dispatch_id=dispatch.pk)
        .values("status", "reason")
        .annotate(count=Count("id"))
        .order_by("status", "-count")
    )
    retried = [
        {"status": "retried", "reason": reason, "count": count}
        for reason, count in sorted((dispatch.retries or {}).items(), key=lambda item: -item[1])
    ]
    return list(rows) + retried


def device_deliveries(device: Device, *, limit: int = 50) -> list[Delivery]:
    """A device's most recent deliveries, newest first."""
    return list(Delivery.objects.filter(device=device).select_related("dispatch").order_by("-id")[:limit])


@dataclass(frozen=True)
class Reach:
    """An audience's size as the send will meet it: profiles → reachable in the app → opted in."""

    profiles: int
    reachable: int
    ios: int
    android: int
    opted_in: int

    def text(self) -> str:
        return (
            f"{self.profiles:,} profiles → {self.reachable:,} reachable "
            f"(iOS {self.ios:,} / Android {self.android:,}) → {self.opted_in:,} opted in"
        )


REACH_SQL = """
WITH reach AS (
    SELECT profile_id,
           max(CASE WHEN platform = 'ios' THEN 1 ELSE 0 END) AS ios,
           max(CASE WHEN platform = 'android' THEN 1 ELSE 0 END) AS android,
           max(CASE WHEN push_enabled THEN 1 ELSE 0 END) AS opted_in
    FROM delivery_device
    WHERE app_id = %s AND active
    GROUP BY profile_id
)
SELECT count(*), count(reach.profile_id), coalesce(sum(reach.ios), 0), coalesce(sum(reach.android), 0),
       coalesce(sum(reach.opted_in), 0)
FROM ({profiles}) AS audience LEFT JOIN reach ON reach.profile_id = audience.id
"""


def audience_reach(*, segment, app_id: int) -> Reach:
    """How many profiles the segment holds, how many have an active device of the app (and on
    which platform), and how many of those allow notifications: one query.

    Reachable counts a profile once even with several phones; iOS and Android each count the
    profiles with a device of that platform (a profile with both counts in both). On PostgreSQL
    the query runs with JIT compilation off, like the segment counts.
    """
    from django.core.exceptions import EmptyResultSet
    from django.db import connection, transaction

    from audiences.rules.compiler import segment_profiles

    try:
        profiles_sql, profiles_params = segment_profiles(segment).values("id").query.sql_with_params()
    except EmptyResultSet:  # a segment without rules holds nobody
        return Reach(0, 0, 0, 0, 0)
    sql = REACH_SQL.format(profiles=profiles_sql)
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL jit = off")
        cursor.execute(sql, [app_id, *profiles_params])
        return Reach(*cursor.fetchone())
