"""A campaign's conversion goal: the one entry point that sets it.

The goal is a report setting: it changes what the report counts, not what is sent, and may be set
in any state, unless winner mode picks the winner by the goal's conversion rate. Then the goal
decides what the rest of the audience gets, and the approval covers it (``Campaign.fingerprint``,
``Campaign.approval_covers_goal``): setting it is an edit like any other.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import User
from accounts.services import lock_for
from campaigns.models import Campaign
from campaigns.services.lifecycle import editable_check
from delivery.conversions import conversion_goal_write


def _audit_action(campaign: Campaign) -> str:
    """The audit line of a goal just saved: a revision's when it made the approved campaign's one."""
    if campaign.approval_covers_goal() and campaign.is_active and campaign.has_pending_revision:
        return "campaign_revision_edited"
    return "campaign_conversion_set"


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

    While winner mode picks by the goal's conversion rate, the approval covers the goal: as any
    edit, it is refused in review (or while a revision waits for approval), and on a scheduled or
    live campaign it is a pending revision, the approved version (its goal with it) sending and
    picking the winner until the revision is approved. Otherwise any state takes it.

    Raises Http404 outside ``by``'s access, PermissionDenied when their role may not change
    campaigns, TransitionError when the approval covers the goal and the state forbids edits,
    ValidationError naming the field and the rule broken.
    """
    with transaction.atomic():
        campaign = lock_for(Campaign, campaign_id, by=by, perm="campaigns.change_campaign")
        if campaign.approval_covers_goal():
            editable_check(campaign)
            if not event:
                raise ValidationError(
                    {"event": "Winner mode picks by this goal's conversion rate: choose the open rate there first."}
                )
        conversion_goal_write(
            campaign,
            by=by,
            action=_audit_action,
            event=event,
            where=where or [],
            window_hours=window_hours,
            anchor=anchor,
        )
    return campaign
