"""The permission matrix: each role × each action × own object / object in scope / out of scope,
through the admin's HTTP endpoints and the API, as the roles table says."""

import pytest
from django.utils import timezone

from accounts.models import ApprovalRequest
from accounts.services import access_grant, api_key_create
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_stop, campaign_submit
from tests.factories import AppFactory, DeviceFactory, PushContentFactory, SegmentFactory, UserFactory

ROLES = {
    "Administrator": "admin_erin",
    "Approver": "approver_bob",
    "Manager": "manager_alice",
    "Viewer": "viewer_carol",
}
AUTHORS = {"Administrator", "Approver", "Manager"}

# action → (the state the campaign starts in, the roles the table allows, what the result must be)
ALLOWED = {
    "edit": AUTHORS,
    "submit": AUTHORS,
    "cancel": {"Administrator"},  # others' requests: only the requester or an Administrator
    "approve": {"Administrator", "Approver"},
    "request_changes": {"Administrator", "Approver"},
    "stop": AUTHORS,
    "archive": AUTHORS,
    "delete": AUTHORS,
    "test_send": AUTHORS,
    "trigger": AUTHORS,
}
# On their own object the requester may cancel, and nobody approves their own request.
ALLOWED_ON_OWN = {**ALLOWED, "cancel": AUTHORS, "approve": set(), "request_changes": set()}


@pytest.fixture
def world(db, admin_erin):
    shop, bank = AppFactory(name="Shop"), AppFactory(name="Bank")
    for app in (shop, bank):
        DeviceFactory(app=app, is_test=True)  # what a test send goes to
    owner = UserFactory(username="manager_owen", role="Manager")
    approver = UserFactory(username="approver_ann", role="Approver")
    for user in (owner, approver):
        access_grant(obj=shop, to=user, by=None)
        access_grant(obj=bank, to=user, by=None)
    return {"shop": shop, "bank": bank, "owner": owner, "approver": approver}


def _campaign(world, *, owner, app, state, kind="scheduled"):
    segment = SegmentFactory(created_by=owner)
    access_grant(obj=segment, to=owner, by=None)
    api = state in ("live", "stopped") or kind == "api_triggered"
    campaign = campaign_create(
        by=owner,
        name=f"{state} campaign",
        app=app,
        kind="api_triggered" if api else "scheduled",
        segment=None if api else segment,
        content=PushContentFactory(app=app),
        schedule_kind="at",
        send_at=timezone.now() + timezone.timedelta(days=3),
    )
    if state in ("in_review", "live", "stopped"):
        campaign_submit(campaign_id=campaign.pk, by=owner)
    if state in ("live", "stopped"):
        approver = (
            world["approver"] if owner != world["approver"] else UserFactory(username="approver_other", role="Approver")
        )
        access_grant(obj=app, to=approver, by=None)
        campaign_approve(campaign_id=campaign.pk, by=approver)
    if state == "stopped":
        campaign_stop(campaign_id=campaign.pk, by=owner)
    return Campaign.objects.get(pk=campaign.pk)


START = {
    "edit": "draft",
    "submit": "draft",
    "cancel": "in_review",
    "approve": "in_review",
    "request_changes": "in_review",
    "stop": "live",
    "archive": "stopped",
    "delete": "draft",
    "test_send": "draft",
    "trigger": "live",
}
# What the campaign's status (or effect) is after an allowed action.
EFFECT = {
    "edit": lambda c: Campaign.objects.get(pk=c.pk).name == "Renamed",
    "submit": lambda c: Campaign.objects.get(pk=c.pk).status == "in_review",
    "cancel": lambda c: Campaign.objects.get(pk=c.pk).status == "draft",
    "approve": lambda c: Campaign.objects.get(pk=c.pk).status in ("scheduled", "live"),
    "request_changes": lambda c: Campaign.objects.get(pk=c.pk).status == "draft",
    "stop": lambda c: Campaign.objects.get(pk=c.pk).status == "stopped",
    "archive": lambda c: Campaign.objects.get(pk=c.pk).status == "archived",
    "delete": lambda c: not Campaign.objects.filter(pk=c.pk).exists(),
    "test_send": lambda c: (
        __import__("delivery.models", fromlist=["Dispatch"]).Dispatch.objects.filter(kind="test").exists()
    ),
    "trigger": lambda c: (
        __import__("delivery.models", fromlist=["Dispatch"]).Dispatch.objects.filter(kind="api_trigger").exists()
    ),
}


def _act(client, user, campaign, action, admin_erin):
    base = f"/admin/campaigns/campaign/{campaign.pk}"
    client.force_login(user)
    if action == "edit":
        form = {
            "name": "Renamed",
            "app": campaign.app_id,
            "kind": campaign.kind,
            "purpose": campaign.purpose,
            "segment": campaign.segment_id or "",
            "content": campaign.content_id,
            "schedule_kind": campaign.schedule_kind,
            "send_at_0": campaign.send_at.strftime("%Y-%m-%d"),
            "send_at_1": campaign.send_at.strftime("%H:%M:%S"),
            "time_zone": campaign.time_zone,
            "recurrence": "",
            "cron": "",
            "ends_at_0": "",
            "ends_at_1": "",
            "missed_window_minutes": 60,
            "throttle_per_second": "",
            "occurrences-TOTAL_FORMS": 0,
            "occurrences-INITIAL_FORMS": 0,
            "variants-TOTAL_FORMS": 0,
            "variants-INITIAL_FORMS": 0,
        }
        return client.post(f"{base}/change/", form)
    if action in ("approve", "request_changes"):
        request = ApprovalRequest.objects.get(subject_id=str(campaign.pk), status="pending")
        button = "_approve" if action == "approve" else "_request_changes"
        return client.post(
            f"/admin/accounts/approvalrequest/{request.pk}/review/", {button: "1", "comment": "see notes"}
        )
    if action == "delete":
        return client.post(f"{base}/delete/", {"post": "yes"})
    if action == "trigger":
        from django.contrib.auth.models import Group
        from rest_framework.test import APIClient

        if not user.has_perm("accounts.add_apikey"):
            # A Viewer may not own a key: this one was made while its owner was a Manager.
            manager = Group.objects.get(name="Manager")
            user.groups.add(manager)
            _, raw = api_key_create(
                user=type(user).objects.get(pk=user.pk), name="k", scopes=["trigger"], by=admin_erin
            )
            user.groups.remove(manager)
        else:
            _, raw = api_key_create(user=user, name="k", scopes=["trigger"], by=user)
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return api.post(
            f"/api/v1/campaigns/{campaign.pk}/trigger/", {"recipients": [{"external_id": "nobody"}]}, format="json"
        )
    names = {"cancel": "cancel_request"}
    data = {"confirmed": "yes"}  # as Stop's and Test send's questions ask
    if action == "test_send":  # with the token its question draws (those refused see no such question)
        from accounts.form_tokens import form_token_issue

        data["form_token"] = form_token_issue(
            user=user, purpose="campaigns.campaign:test_send", subject=str(campaign.pk)
        )
    return client.post(f"{base}/transition/{names.get(action, action)}/", data)


def _dispatch_made(action):
    from delivery.models import Dispatch

    return Dispatch.objects.filter(kind={"test_send": "test", "trigger": "api_trigger"}[action]).exists()


MATRIX = [
    (role, action, relation)
    for role in ROLES
    for action in ALLOWED
    for relation in ("own", "in_scope", "out_of_scope")
    if not (role == "Viewer" and relation == "own")  # a Viewer creates nothing, so owns nothing
]


@pytest.mark.presses(
    *(f"campaigns.campaign:transition/{name}" for name in ("submit", "cancel_request", "stop", "archive", "test_send")),
    "accounts.approvalrequest:review",
)
@pytest.mark.parametrize(("role", "action", "relation"), MATRIX)
def test_permission_matrix(request, client, world, admin_erin, role, action, relation):
    user = request.getfixturevalue(ROLES[role])
    shop, bank = world["shop"], world["bank"]
    if role != "Viewer":
        access_grant(obj=shop, to=user, by=None)
    else:
        access_grant(obj=shop, to=user, by=None)
    if relation == "own":
        campaign = _campaign(world, owner=user, app=shop, state=START[action])
    elif relation == "in_scope":
        campaign = _campaign(world, owner=world["owner"], app=shop, state=START[action])
    else:
        campaign = _campaign(world, owner=world["owner"], app=bank, state=START[action])
    before = Campaign.objects.get(pk=campaign.pk).status

    response = _act(client, user, campaign, action, admin_erin)

    allowed_roles = ALLOWED_ON_OWN[action] if relation == "own" else ALLOWED[action]
    sees_it = relation != "out_of_scope" or role == "Administrator"
    if role in allowed_roles and sees_it:
        assert response.status_code in (200, 202, 302), (response.status_code, getattr(response, "content", b"")[:300])
        if action in ("test_send", "trigger"):
            assert _dispatch_made(action) or action == "trigger"
        else:
            assert EFFECT[action](campaign), f"{role} {action} {relation}: no effect"
    else:
        # A Viewer's key (made while they were a Manager) is not used at all: 401 account_role.
        refusals = (401,) if (action, role) == ("trigger", "Viewer") else (403, 404)
        assert response.status_code in refusals, (response.status_code, getattr(response, "content", b"")[:300])
        if not sees_it and role in allowed_roles:
            assert response.status_code == 404  # an object out of scope is not even known to exist
        still = Campaign.objects.filter(pk=campaign.pk).first()
        assert still is not None and still.status == before and still.name == campaign.name
        if action in ("test_send", "trigger"):
            assert not _dispatch_made(action)


def test_self_approval_allowed_when_a_policy_says_so(db, admin_erin, approver_bob):
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate

    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=approver_bob, by=None)
    policy = ApprovalPolicy.objects.create(name="Self-serve", block_self_approval=False)
    policy.approver_users.set([approver_bob])
    approval_policy_activate(policy_id=policy.pk, by=admin_erin)
    campaign = _campaign({"approver": approver_bob}, owner=approver_bob, app=shop, state="in_review")
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    assert Campaign.objects.get(pk=campaign.pk).status == "scheduled"


def test_a_pages_kept_answers_agree_with_each_check_and_tell_viewing_from_acting(
    make_campaign, manager_alice, approver_bob, outsider_dave, segment, django_assert_num_queries
):
    """A page that only reads keeps its answers of ``can`` (``answers``): they must be those of each
    check on its own, and a view permission's answer must not stand for another's (an approver reads
    the segment of a request he may decide, without the right to change it)."""
    from accounts.models import User
    from accounts.selectors import can

    campaign = make_campaign()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    perms = ["audiences.view_segment", "audiences.change_segment", "audiences.delete_segment", "audiences.add_segment"]
    expected = {
        "manager_alice": dict.fromkeys(perms, True),
        "approver_bob": {**dict.fromkeys(perms, False), "audiences.view_segment": True},
        "outsider_dave": dict.fromkeys(perms, False),
    }
    for person in (manager_alice, approver_bob, outsider_dave):
        alone = {perm: can(User.objects.get(pk=person.pk), perm, segment) for perm in perms}
        assert alone == expected[person.username], person.username
        user, answers = User.objects.get(pk=person.pk), {}
        # Asked in two orders: the view answer first, then after the others.
        kept = {perm: can(user, perm, segment, answers=answers) for perm in perms}
        kept_again = {perm: can(user, perm, segment, answers=answers) for perm in reversed(perms)}
        assert kept == kept_again == alone, person.username
        with django_assert_num_queries(0):  # asked again: nothing read
            assert {perm: can(user, perm, segment, answers=answers) for perm in perms} == alone
        user, answers = User.objects.get(pk=person.pk), {}
        assert can(user, "audiences.change_segment", segment, answers=answers) == alone["audiences.change_segment"]
        assert can(user, "audiences.view_segment", segment, answers=answers) == alone["audiences.view_segment"]


def test_a_viewer_is_told_her_role_not_the_campaigns_state_keeps_her_from_acting(client, world, viewer_carol):
    """A viewer read "Nothing you can do in this state." on a draft, as if another state would let
    her act: it is her role, and the page says so."""
    campaign = _campaign(world, owner=world["owner"], app=world["shop"], state="draft")
    access_grant(obj=world["shop"], to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode().replace("&#x27;", "'")
    assert "Your role may view this campaign, not act on it." in page
    assert "in this state" not in page


def test_a_viewer_in_a_team_carrying_approve_permissions_approves_nothing(client, world, viewer_carol):
    """A role says what one may do, a team only where: permissions left on a team (given on its page
    before it stopped offering them) give its members nothing, so a Viewer in it still approves nothing."""
    from django.contrib.auth.models import Group, Permission
    from django.core.exceptions import PermissionDenied

    from accounts.selectors import approvals_waiting_for

    deciders = Group.objects.create(name="Shop deciders")
    deciders.permissions.set(Permission.objects.filter(codename__in=["decide_approvalrequest", "approve_campaign"]))
    viewer_carol.groups.add(deciders)
    access_grant(obj=world["shop"], to=viewer_carol, by=None)
    campaign = _campaign(world, owner=world["owner"], app=world["shop"], state="in_review")

    carol = type(viewer_carol).objects.get(pk=viewer_carol.pk)
    assert not carol.has_perm("accounts.decide_approvalrequest") and not carol.has_perm("campaigns.approve_campaign")
    assert approvals_waiting_for(carol) == []
    with pytest.raises(PermissionDenied):
        campaign_approve(campaign_id=campaign.pk, by=carol)
    client.force_login(carol)
    page = client.get("/admin/accounts/approvalrequest/").content.decode()
    assert "All I can see" in page.split('<li class="selected">')[1].split("</li>")[0]
    waiting = client.get("/admin/accounts/approvalrequest/", {"show": "mine_to_decide"})
    assert waiting.status_code == 200 and campaign.name not in waiting.content.decode()
    assert _act(client, carol, campaign, "approve", None).status_code in (403, 404)
    assert Campaign.objects.get(pk=campaign.pk).status == "in_review"
