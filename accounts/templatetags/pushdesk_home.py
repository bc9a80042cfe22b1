"""Template tags of the admin's home page: stuck approval requests, and what a user without access should ask for."""

from django import template

from accounts.approvals import approvals_asked_at
from accounts.selectors import approval_requests_stuck

register = template.Library()


@register.filter
def reason_shown(code: str):
    """A reason in words with its code beside (``delivery.reasons.reason_html``), as the reports say it."""
    from delivery.reasons import reason_html

    return reason_html(code)


@register.filter
def platform_shown(platform: str) -> str:
    """A platform in words ("iOS", "Android"), as the reports name it."""
    from delivery.reports import PLATFORM_NAMES

    return PLATFORM_NAMES.get(platform, platform)


@register.simple_tag
def stuck_approval_requests(user) -> list:
    """Pending requests nobody may decide, for those who can unblock them (Administrators), each
    with ``asked_at``: when it was asked, as its requester's home page says it (in the subject's zone)."""
    if not user.is_authenticated or not user.has_perm("accounts.change_approvalpolicy"):
        return []
    stuck = approval_requests_stuck()
    asked = approvals_asked_at(stuck)
    for request in stuck:
        request.asked_at = asked[request.pk]
    return stuck


@register.simple_tag
def access_hint(user) -> str:
    """What a signed-in user who can do nothing yet should ask an Administrator for ("" when nothing)."""
    from accounts.selectors import has_every_scope, object_access_of

    if not user.is_authenticated or user.is_superuser:
        return ""
    if not user.role_names():
        return (
            "Your account has no role yet, so there is nothing here for you. Ask an Administrator for a role "
            "(Manager to build campaigns, Approver to approve them, Viewer to read) and for access to the apps "
            "you work on."
        )
    if not has_every_scope(user) and not object_access_of(user):
        return (
            "You have no access to any app yet, so the lists are empty. Ask an Administrator for access to the "
            "apps (or the segments, campaigns, journeys) you work on."
        )
    return ""
