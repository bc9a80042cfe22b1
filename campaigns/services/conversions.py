"""A campaign's conversion goal: the one entry point that sets it.

The goal is a report setting: it changes what the report counts, never what is sent, so it is not
part of what an approval covers (``Campaign.fingerprint``) and may be set in any state.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import User
from accounts.services import lock_for
from campaigns.models import Campaign
from delivery.conversions import conversion_goal_write


def campaign_conversion_set(
    *,
    campaign_id: int,
    by: User,
    event: str,
    where: list | None = None,
    window_hours: int = 24,
    anchor: str = "accepted",
) -> Campaign:
    """Set (or, with an empty ``event``, clear) the campaign's conversion goal.

    Raises Http404 outside ``by``'s access, PermissionDenied when their role may not change
    campaigns, ValidationError naming the field and the rule broken.
    """
    with transaction.atomic():
        campaign = lock_for(Campaign, campaign_id, by=by, perm="campaigns.change_campaign")
        if not event and campaign.winner_mode and campaign.winner_metric == Campaign.WinnerMetric.CONVERSION_RATE:
            raise ValidationError(
                {"event": "Winner mode picks by this goal's conversion rate: choose the open rate there first."}
            )
        conversion_goal_write(
            campaign,
            by=by,
            action="campaign_conversion_set",
            event=event,
            where=where or [],
            window_hours=window_hours,
            anchor=anchor,
        )
    return campaign
