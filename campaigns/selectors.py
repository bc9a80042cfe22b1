"""Permission-filtered reads of campaigns."""

from collections.abc import Callable

from django.db.models import Q, QuerySet
from django.http import Http404

from accounts.models import ApprovalRequest, User
from accounts.selectors import (
    approval_current,
    can,
    granted_to,
    may_cancel_approval_request,
    visible_to,
)
from campaigns.models import Campaign, Occurrence, TriggerRequest

Status = Campaign.Status


def campaigns_visible_to(user: User, *, perm: str | None = None) -> QuerySet[Campaign]:
    """Every campaign the user may see: through its app's scope or a grant on the campaign itself."""
    return visible_to(user, Campaign.objects.select_related("app", "segment", "content", "owner"), perm=perm)


def campaign_ids_visible_to(user: User) -> QuerySet:
    """The ids of the campaigns the user may see: whose sends (its runs, its API triggers' streams)
    they read, their app granted or not (``delivery.selectors.dispatch_source_readers_register``)."""
    return visible_to(user, Campaign.objects.all()).values("pk")


def campaign_ids_granted_to(user: User) -> QuerySet:
    """The ids of the campaigns granted to the user on themselves, not through an app: whose sends'
    rows they read wherever they were sent (``delivery.selectors.dispatches_with_rows_visible_to``)."""
    return granted_to(user, Campaign.objects.all()).values("pk")


def trigger_requests_visible_to(user: User) -> QuerySet[TriggerRequest]:
    """The trigger calls' Idempotency-Key records (needs the role's view_triggerrequest) of the
    campaigns the user may see."""
    if user is None or not user.is_active or not user.has_perm("campaigns.view_triggerrequest"):
        return TriggerRequest.objects.none()
    return TriggerRequest.objects.filter(campaign_id__in=campaign_ids_visible_to(user))


def occurrences_visible_to(user: User) -> QuerySet[Occurrence]:
    """The occurrences of the campaigns the user may see (needs the role's view_occurrence): whoever
    may not see a campaign sees none of its occurrences, in a list or by id."""
    if not user.has_perm("campaigns.view_occurrence"):
        return Occurrence.objects.none()
    return Occurrence.objects.filter(campaign__in=campaigns_visible_to(user).values("pk"))


def campaign_for(user: User, campaign_id: int, *, perm: str | None = None) -> Campaign:
    campaign = campaigns_visible_to(user, perm=perm).filter(pk=campaign_id).first()
    if campaign is None:
        raise Http404(f"No campaign {campaign_id}.")
    return campaign


STOP = "campaigns.stop_campaign"


# Which transitions each state allows, and the role permission each needs.
TRANSITIONS = {
    "submit": ((Status.DRAFT,), "campaigns.submit_campaign", "Submit for review"),
    "cancel_request": ((Status.IN_REVIEW,), "campaigns.submit_campaign", "Cancel request"),
    "stop": ((Status.SCHEDULED, Status.LIVE), STOP, "Stop"),
    "archive": ((Status.COMPLETED, Status.STOPPED, Status.FAILED), "campaigns.archive_campaign", "Archive"),
    "duplicate": (tuple(Status.values), "campaigns.add_campaign", "Duplicate"),
    "test_send": (tuple(Status.values), "delivery.test_send_pushcontent", "Test send"),
}


def campaign_actions(
    user: User,
    campaign: Campaign,
    *,
    answers: dict | None = None,
    approval_of: Callable[[Campaign], ApprovalRequest | None] = approval_current,
) -> list[tuple[str, str]]:
    """The (action, label) buttons this user may use on this campaign in its current state.

    A scheduled or live campaign with a pending revision offers to submit it, and, while it
    waits, to cancel the request; its approved version keeps sending either way. Cancel request
    is offered only to whom ``campaign_cancel_request`` lets withdraw it: its requester or an
    Administrator (``may_cancel_approval_request``). ``answers`` keeps a page's permission
    checks (``accounts.selectors.can``); ``approval_of`` reads the campaign's current request
    (``approval_current``), a page's own reading where it has one (the admin's ``approval_of``).
    """
    actions = []
    for name, (states, perm, label) in TRANSITIONS.items():
        if campaign.status not in states:
            continue
        if name == "cancel_request":
            request = approval_of(campaign)
            if request is None or not may_cancel_approval_request(user, request):
                continue
        if can(user, perm, campaign, answers=answers):
            actions.append((name, label))
    if campaign.is_active and campaign.has_pending_revision:
        request = approval_of(campaign)
        waiting = request is not None and request.status == request.Status.PENDING
        name, label = ("cancel_request", "Cancel request") if waiting else ("submit", "Submit revision for review")
        if can(user, "campaigns.submit_campaign", campaign, answers=answers) and (
            not waiting or may_cancel_approval_request(user, request)
        ):
            actions.insert(0, (name, label))
    return actions


def campaigns_sending_to(segment_ids: set[int], by: User | None) -> list[str]:
    """The campaigns still to send whose audience is any of ``segment_ids`` (``_campaigns_said``).
    (Registered with ``audiences.services.segments``: the segment's page names them.)"""
    return _campaigns_said(Campaign.objects.filter(segment_id__in=segment_ids), by)


def campaigns_sending_contents(content_ids: set[int], by: User | None) -> list[str]:
    """The campaigns still to send sending any of ``content_ids``, as their content or a variant's
    (``_campaigns_said``). (Registered with ``delivery.services.contents``: the content's page
    names them.)"""
    from campaigns.models import CampaignVariant

    variants = CampaignVariant.objects.filter(content_id__in=content_ids).values("campaign_id")
    return _campaigns_said(Campaign.objects.filter(Q(content_id__in=content_ids) | Q(pk__in=variants)), by)


def _campaigns_said(campaigns: QuerySet[Campaign], by: User | None) -> list[str]:
    """Those of ``campaigns`` still to send (``Campaign.STILL_TO_SEND``), each said with its
    status, those ``by`` may not see counted (None: the system sees all)."""
    campaigns = campaigns.filter(status__in=Campaign.STILL_TO_SEND)
    seen = campaigns if by is None else visible_to(by, campaigns)
    said = [
        f"campaign “{name}” ({Campaign.Status(status).label.lower()})"
        for name, status in seen.order_by("name", "pk").values_list("name", "status")
    ]
    if hidden := campaigns.count() - len(said):
        said.append("a campaign you cannot see" if hidden == 1 else f"{hidden} campaigns you cannot see")
    return said
