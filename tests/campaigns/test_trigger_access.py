"""Who may trigger a campaign (``campaign_trigger_allowed``): the verdicts, judged on the app its
approved version sends to, and what a verdict costs when a process reads it anew."""

from django.core.exceptions import PermissionDenied
from django.http import Http404

from accounts.services import access_grant
from accounts.stamps import Stamps
from campaigns.services.triggers import campaign_trigger_allowed
from tests.campaigns.helpers import revision_moving_to
from tests.factories import UserFactory

ALLOWED = "allowed"
NOT_FOUND = "not found"
ROLE = "Your role may not trigger campaigns."
APP = "Triggering a campaign needs access to its app, through which its deliveries are read."


def _verdict(user, campaign, *, stamp="1"):
    """The verdict on ``user`` triggering ``campaign`` under the campaign stamp ``stamp``."""
    stamps = Stamps({"access": None, f"campaign:{campaign.pk}": stamp})
    try:
        campaign_trigger_allowed(campaign_id=campaign.pk, by=user, stamps=stamps)
    except Http404:
        return NOT_FOUND
    except PermissionDenied as exc:
        return str(exc)
    return ALLOWED


def _granted(role, *objects):
    user = UserFactory(role=role)
    for obj in objects:
        access_grant(obj=obj, to=user, by=None)
    return user


def test_the_verdicts_by_role_and_access(live_trigger, pushsim_app, manager_alice, admin_erin, outsider_dave):
    assert _verdict(manager_alice, live_trigger) == ALLOWED  # its creator
    assert _verdict(admin_erin, live_trigger) == ALLOWED
    assert _verdict(_granted("Manager", pushsim_app), live_trigger) == ALLOWED
    assert _verdict(_granted("Approver", pushsim_app), live_trigger) == ALLOWED
    assert _verdict(_granted("Viewer", pushsim_app), live_trigger) == ROLE
    assert _verdict(_granted("Viewer", live_trigger), live_trigger) == ROLE
    assert _verdict(_granted("Manager", live_trigger), live_trigger) == APP
    assert _verdict(_granted("Manager"), live_trigger) == NOT_FOUND
    assert _verdict(_granted(None, pushsim_app), live_trigger) == NOT_FOUND
    assert _verdict(outsider_dave, live_trigger) == NOT_FOUND


def test_the_verdicts_on_a_campaign_a_revision_moves_are_judged_on_its_approved_versions_app(
    live_trigger, pushsim_app, new_app, manager_alice
):
    old_manager, old_viewer = _granted("Manager", pushsim_app), _granted("Viewer", pushsim_app)
    new_manager, new_viewer = _granted("Manager", new_app), _granted("Viewer", new_app)
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    assert _verdict(old_manager, live_trigger) == ALLOWED
    assert _verdict(old_viewer, live_trigger) == ROLE
    assert _verdict(new_manager, live_trigger) == NOT_FOUND
    assert _verdict(new_viewer, live_trigger) == NOT_FOUND


def test_a_verdict_read_anew_reads_the_role_from_the_users_permissions_not_the_database(
    live_trigger, pushsim_app, django_assert_num_queries
):
    """The user object is kept per process with its permissions: a verdict read again (the campaign
    was edited) asks the database whether the campaign is in the user's scope and whether its app
    is, and no more."""
    manager, viewer = _granted("Manager", pushsim_app), _granted("Viewer", pushsim_app)
    assert _verdict(manager, live_trigger, stamp="1") == ALLOWED
    assert _verdict(viewer, live_trigger, stamp="1") == ROLE
    with django_assert_num_queries(2):
        assert _verdict(manager, live_trigger, stamp="2") == ALLOWED
    with django_assert_num_queries(1):
        assert _verdict(viewer, live_trigger, stamp="2") == ROLE
    with django_assert_num_queries(0):
        assert _verdict(manager, live_trigger, stamp="2") == ALLOWED
