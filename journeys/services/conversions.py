"""A journey's conversion goal: the one entry point that sets it.

The goal is a report setting: it changes what the report counts, never what is sent, so it is not
part of what an approval covers (the version fingerprint) and may be set in any state.
"""

from __future__ import annotations

from django.db import transaction

from accounts.models import User
from accounts.services import lock_for
from delivery.conversions import conversion_goal_write
from journeys.models import Journey


def journey_conversion_set(
    *,
    journey_id: int,
    by: User,
    event: str,
    where: list | None = None,
    window_hours: int = 24,
    anchor: str = "accepted",
) -> Journey:
    """Set (or, with an empty ``event``, clear) the journey's conversion goal.

    Raises Http404 outside ``by``'s access, PermissionDenied when their role may not change
    journeys, ValidationError naming the field and the rule broken.
    """
    with transaction.atomic():
        journey = lock_for(Journey, journey_id, by=by, perm="journeys.change_journey")
        conversion_goal_write(
            journey,
            by=by,
            action="journey_conversion_set",
            event=event,
            where=where or [],
            window_hours=window_hours,
            anchor=anchor,
        )
    return journey
