"""Approval policies and requests, on their own (campaigns and journeys plug into them)."""

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from accounts.models import ApprovalPolicy, ApprovalRequest
from accounts.selectors import approvals_waiting_for
from accounts.services import (
    ApprovalError,
    access_grant,
    approval_policy_activate,
    approval_request_cancel,
    approval_request_decide,
    approval_request_open,
    approval_void,
)
from tests.factories import AppFactory, UserFactory
from tests.pages import listed_rows

APPROVE = "accounts.decide_approvalrequest"


def _open(subject, by, **context):
    with transaction.atomic():
        return approval_request_open(
            subject=subject,
            context={"type": "campaign", "app_id": subject.pk, "kind": "scheduled", "purpose": "marketing", **context},
            fingerprint="f" * 64,
            approve_perm=APPROVE,
            by=by,
        )


def _decide(request, by, approve=True, comment=""):
    with transaction.atomic():
        return approval_request_decide(request_id=request.pk, by=by, approve=approve, comment=comment)


def _policy(admin, *, users=(), groups=(), block_self_approval=True, **conditions):
    policy = ApprovalPolicy.objects.create(
        name=f"policy {ApprovalPolicy.objects.count()}", block_self_approval=block_self_approval, **conditions
    )
    policy.approver_users.set(users)
    policy.approver_groups.set(groups)
    approval_policy_activate(policy_id=policy.pk, by=admin)
    return policy


def test_without_a_policy_any_approver_with_access_decides(shop, manager_alice, approver_bob):
    access_grant(obj=shop, to=approver_bob, by=None)
    request = _open(shop, manager_alice)
    assert approvals_waiting_for(approver_bob) == [request]
    _decide(request, approver_bob)
    request.refresh_from_db()
    assert request.status == ApprovalRequest.Status.APPROVED
    assert request.decided_by == approver_bob


def test_manager_cannot_approve(shop, manager_alice, manager_mallory):
    access_grant(obj=shop, to=manager_mallory, by=None)
    request = _open(shop, manager_alice)
    assert approvals_waiting_for(manager_mallory) == []
    with pytest.raises(PermissionDenied, match="role"):
        _decide(request, manager_mallory)


def test_approver_cannot_approve_own_request_by_default(shop, approver_bob):
    access_grant(obj=shop, to=approver_bob, by=None)
    request = _open(shop, approver_bob)
    assert approvals_waiting_for(approver_bob) == []
    with pytest.raises(PermissionDenied, match="own request"):
        _decide(request, approver_bob)


def test_policy_may_allow_self_approval(shop, admin_erin, approver_bob):
    access_grant(obj=shop, to=approver_bob, by=None)
    _policy(admin_erin, users=[approver_bob], block_self_approval=False)
    request = _open(shop, approver_bob)
    _decide(request, approver_bob)
    assert ApprovalRequest.objects.get(pk=request.pk).status == "approved"


def test_approver_outside_the_object_access_cannot_decide(shop, manager_alice, approver_bob):
    request = _open(shop, manager_alice)
    assert approvals_waiting_for(approver_bob) == []
    with pytest.raises(PermissionDenied, match="access"):
        _decide(request, approver_bob)


def test_policy_routes_to_its_approvers_only(shop, admin_erin, manager_alice, approver_bob):
    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    for user in (approver_bob, approver_zoe):
        access_grant(obj=shop, to=user, by=None)
    reviewers = Group.objects.create(name="Shop reviewers")
    approver_zoe.groups.add(reviewers)
    _policy(admin_erin, groups=[reviewers])
    request = _open(shop, manager_alice)
    assert approvals_waiting_for(approver_bob) == []
    assert approvals_waiting_for(approver_zoe) == [request]
    with pytest.raises(PermissionDenied, match="not an approver"):
        _decide(request, approver_bob)
    _decide(request, approver_zoe)


def test_newest_activated_matching_policy_wins(shop, admin_erin, manager_alice, approver_bob):
    approver_zoe = UserFactory(username="approver_zoe", role="Approver")
    _policy(admin_erin, users=[approver_bob])
    newest = _policy(admin_erin, users=[approver_zoe], purposes=["marketing"])
    assert _open(shop, manager_alice).policy == newest
    other_app = AppFactory(name="Bank")
    access_grant(obj=other_app, to=approver_bob, by=None)  # a policy's approvers have access to its apps
    only_transactional = _policy(admin_erin, users=[approver_bob], purposes=["transactional"], app_ids=[other_app.pk])
    assert _open(other_app, manager_alice, purpose="transactional").policy == only_transactional


def test_policy_conditions_on_kind_and_journeys(admin_erin):
    policy = ApprovalPolicy(applies_to_campaigns=True, applies_to_journeys=False, campaign_kinds=["api_triggered"])
    assert policy.matches({"type": "campaign", "kind": "api_triggered"})
    assert not policy.matches({"type": "campaign", "kind": "scheduled"})
    assert not policy.matches({"type": "journey"})


def test_policy_without_approvers_cannot_be_activated(admin_erin):
    policy = ApprovalPolicy.objects.create(name="empty")
    with pytest.raises(ValidationError, match="approver"):
        approval_policy_activate(policy_id=policy.pk, by=admin_erin)


def test_only_administrators_activate_policies(manager_alice, approver_bob):
    policy = ApprovalPolicy.objects.create(name="p")
    policy.approver_users.set([approver_bob])
    with pytest.raises(PermissionDenied):
        approval_policy_activate(policy_id=policy.pk, by=manager_alice)


def test_requesting_changes_needs_a_comment_and_the_requester_sees_it(shop, manager_alice, approver_bob):
    access_grant(obj=shop, to=approver_bob, by=None)
    request = _open(shop, manager_alice)
    with pytest.raises(ValidationError):
        _decide(request, approver_bob, approve=False, comment="  ")
    _decide(request, approver_bob, approve=False, comment="Fix the title")
    request.refresh_from_db()
    assert (request.status, request.comment) == ("changes_requested", "Fix the title")


def test_one_pending_request_per_subject(shop, manager_alice):
    _open(shop, manager_alice)
    with pytest.raises(ApprovalError):
        _open(shop, manager_alice)


def test_decided_request_cannot_be_decided_again(shop, manager_alice, approver_bob):
    access_grant(obj=shop, to=approver_bob, by=None)
    request = _open(shop, manager_alice)
    _decide(request, approver_bob)
    with pytest.raises(ApprovalError):
        _decide(request, approver_bob, approve=False, comment="too late")


def test_requester_cancels_and_others_cannot(shop, manager_alice, manager_mallory):
    request = _open(shop, manager_alice)
    with pytest.raises(PermissionDenied), transaction.atomic():
        approval_request_cancel(request_id=request.pk, by=manager_mallory)
    with transaction.atomic():
        approval_request_cancel(request_id=request.pk, by=manager_alice)
    assert ApprovalRequest.objects.get(pk=request.pk).status == "cancelled"


def test_edit_after_approval_voids_it(shop, manager_alice, approver_bob):
    access_grant(obj=shop, to=approver_bob, by=None)
    request = _open(shop, manager_alice)
    _decide(request, approver_bob)
    with transaction.atomic():
        assert approval_void(subject=shop, by=manager_alice, reason="content edited") == 1
    assert ApprovalRequest.objects.get(pk=request.pk).status == "voided"


def test_inbox_page_lists_what_waits_for_me(client, shop, manager_alice, approver_bob):
    for user in (manager_alice, approver_bob):  # its requester names it only while they may see it
        access_grant(obj=shop, to=user, by=None)
    _open(shop, manager_alice)
    client.force_login(approver_bob)
    page = client.get("/admin/accounts/approvalrequest/")
    assert page.status_code == 200
    assert b"Waiting for my approval" in page.content
    assert b"Shop" in page.content
    client.force_login(manager_alice)
    mine = client.get("/admin/accounts/approvalrequest/", {"show": "my_requests"})
    assert b"Shop" in mine.content


def test_the_inbox_opens_on_what_each_role_can_act_on(client, shop, manager_alice, approver_bob, viewer_carol):
    """An approver's inbox opens on what waits for them; a manager, who decides nothing, on their
    own requests; a viewer, who does neither, on all they can see."""
    for user in (manager_alice, approver_bob, viewer_carol):
        access_grant(obj=shop, to=user, by=None)
    _open(shop, manager_alice)
    for user, selected in (
        (approver_bob, "Waiting for my approval"),
        (manager_alice, "My requests"),
        (viewer_carol, "All I can see"),
    ):
        client.force_login(user)
        page = client.get("/admin/accounts/approvalrequest/").content.decode()
        chosen = page.split('<li class="selected">')[1].split("</li>")[0]
        assert selected in chosen, user
        if user is not viewer_carol:
            assert "Shop" in page.split('id="result_list"')[1], user


def test_policy_admin_is_for_administrators(client, admin_erin, manager_alice, approver_bob):
    client.force_login(manager_alice)
    assert client.get("/admin/accounts/approvalpolicy/").status_code == 403
    client.force_login(admin_erin)
    response = client.post(
        "/admin/accounts/approvalpolicy/add/",
        {
            "name": "Marketing",
            "applies_to_campaigns": "on",
            "purposes": ["marketing"],
            "approver_users": [approver_bob.pk],
            "block_self_approval": "on",
        },
    )
    assert response.status_code == 302, response.content[:3000]
    policy = ApprovalPolicy.objects.get(name="Marketing")
    assert policy.purposes == ["marketing"]
    client.post("/admin/accounts/approvalpolicy/", {"action": "activate", "_selected_action": [policy.pk]})
    policy.refresh_from_db()
    assert policy.is_active
    # An active policy is locked.
    locked = client.post(
        f"/admin/accounts/approvalpolicy/{policy.pk}/change/", {"name": "Renamed", "applies_to_campaigns": "on"}
    )
    assert locked.status_code == 403


@pytest.mark.presses("accounts.approvalpolicy:activate", "accounts.approvalpolicy:deactivate")
def test_policy_activation_buttons_work_for_an_administrator_only(client, admin_erin, manager_alice, approver_bob):
    policy = ApprovalPolicy.objects.create(name="Marketing")
    policy.approver_users.add(approver_bob)
    url = "/admin/accounts/approvalpolicy/"
    for action, before, after in (("activate", False, True), ("deactivate", True, False)):
        client.force_login(manager_alice)
        assert client.post(url, {"action": action, "_selected_action": [policy.pk]}).status_code == 403
        policy.refresh_from_db()
        assert policy.is_active is before
        client.force_login(admin_erin)
        assert client.post(url, {"action": action, "_selected_action": [policy.pk]}).status_code == 302
        policy.refresh_from_db()
        assert policy.is_active is after


def test_policy_whose_only_approver_is_a_viewer_cannot_be_activated(admin_erin, viewer_carol, shop):
    access_grant(obj=shop, to=viewer_carol, by=None)
    policy = ApprovalPolicy.objects.create(name="viewers")
    policy.approver_users.set([viewer_carol])
    with pytest.raises(ValidationError, match=r"None of its approvers \(viewer_carol\) has a role that may approve"):
        approval_policy_activate(policy_id=policy.pk, by=admin_erin)
    assert not ApprovalPolicy.objects.get(pk=policy.pk).is_active


def test_policy_whose_approvers_lack_access_to_its_app_cannot_be_activated(admin_erin, approver_bob, shop):
    other = AppFactory(name="Other")
    access_grant(obj=other, to=approver_bob, by=None)
    policy = ApprovalPolicy.objects.create(name="shop only", app_ids=[shop.pk])
    policy.approver_users.set([approver_bob])
    with pytest.raises(ValidationError, match="access to the app 'Shop'"):
        approval_policy_activate(policy_id=policy.pk, by=admin_erin)
    access_grant(obj=shop, to=approver_bob, by=None)
    assert approval_policy_activate(policy_id=policy.pk, by=admin_erin).is_active


def test_a_request_nobody_may_decide_is_stuck(admin_erin, approver_bob, manager_alice, shop):
    from accounts.selectors import approval_request_stuck, approval_requests_stuck

    access_grant(obj=shop, to=approver_bob, by=None)
    policy = _policy(admin_erin, users=[approver_bob])
    request = _open(shop, manager_alice)
    assert request.policy == policy and not approval_request_stuck(request)
    approver_bob.groups.clear()  # the only approver loses the role
    approver_bob = type(approver_bob).objects.get(pk=approver_bob.pk)
    assert approval_request_stuck(request)
    assert approval_requests_stuck() == [request]


def test_a_team_s_permissions_make_no_one_asked_to_decide_a_request_without_a_policy(
    approver_bob, manager_alice, viewer_carol, shop
):
    """A request no policy governs is decided by whoever's role may: a member of a team that was
    given the permission is not among those asked, so nobody stops it in their name."""
    from django.contrib.auth.models import Permission

    from accounts.selectors import approval_request_stuck, approval_requests_undecidable

    team = Group.objects.create(name="Shop deciders")
    team.permissions.set(Permission.objects.filter(codename="decide_approvalrequest"))
    viewer_carol.groups.add(team)
    for user in (approver_bob, viewer_carol):
        access_grant(obj=shop, to=user, by=None)
    request = _open(shop, manager_alice)
    assert request.policy is None and not approval_request_stuck(request)
    approver_bob.groups.clear()  # the only one whose role may decide
    assert approval_requests_undecidable([request]) == {request.pk: {}}


def _campaign_submitted(app, by, name):
    """A campaign of ``app`` that ``by`` created (and so was granted) and submitted, and its request."""
    from campaigns.services.lifecycle import campaign_create, campaign_submit
    from tests.factories import PushContentFactory, SegmentFactory

    segment = SegmentFactory(created_by=by)
    access_grant(obj=segment, to=by, by=None)
    campaign = campaign_create(
        by=by, name=name, app=app, segment=segment, content=PushContentFactory(app=app), kind="scheduled"
    )
    return campaign, campaign_submit(campaign_id=campaign.pk, by=by)


def _revoke_everything(user, *objects):
    from accounts.services import access_revoke

    for obj in objects:
        access_revoke(obj=obj, to=user, by=None)


def _rows(page) -> str:
    return page.content.decode().split('id="result_list"')[1]


def test_the_request_list_names_a_campaign_only_to_a_reader_who_may_see_it_now(
    client, manager_alice, approver_bob, admin_erin
):
    """A request keeps the name its campaign was submitted with: its requester and its decider, who
    lost access to the campaign's app since, read it by number on the list, the request's page and
    its review, as a page names what its reader may not see; an Administrator still reads the name."""
    from campaigns.services.lifecycle import campaign_request_changes
    from tests.factories import app_granted

    shop = app_granted(manager_alice, approver_bob)
    sent_back, decided = _campaign_submitted(shop, manager_alice, "Secret sale")
    campaign_request_changes(campaign_id=sent_back.pk, by=approver_bob, comment="Shorter", request_id=decided.pk)
    waiting, pending = _campaign_submitted(shop, manager_alice, "Hidden launch")
    _revoke_everything(manager_alice, shop, sent_back, waiting)
    _revoke_everything(approver_bob, shop)

    for user, show in ((manager_alice, "my_requests"), (approver_bob, "all")):
        client.force_login(user)
        page = client.get("/admin/accounts/approvalrequest/", {"show": show})
        rows = _rows(page)
        assert f"campaign #{sent_back.pk}" in rows, user
        assert "Secret sale" not in page.content.decode() and "Hidden launch" not in page.content.decode(), user
        record = client.get(f"/admin/accounts/approvalrequest/{decided.pk}/change/").content.decode()
        assert f"campaign #{sent_back.pk}" in record and "Secret sale" not in record, user
    client.force_login(manager_alice)
    rows = _rows(client.get("/admin/accounts/approvalrequest/", {"show": "my_requests"}))
    # Its review would show the campaign: the line leads to the request's own page.
    assert f'href="/admin/accounts/approvalrequest/{pending.pk}/change/">campaign #{waiting.pk}</a>' in rows
    assert f"/admin/accounts/approvalrequest/{pending.pk}/review/" not in rows
    review = client.get(f"/admin/accounts/approvalrequest/{pending.pk}/review/", follow=True)
    assert review.redirect_chain == [(f"/admin/accounts/approvalrequest/{pending.pk}/change/", 302)]
    html = review.content.decode()
    assert "Hidden launch" not in html and f"You have no access to campaign #{waiting.pk}" in html

    client.force_login(admin_erin)
    rows = _rows(client.get("/admin/accounts/approvalrequest/", {"show": "all"}))
    assert ">Secret sale</a>" in rows and ">Hidden launch</a>" in rows
    record = client.get(f"/admin/accounts/approvalrequest/{decided.pk}/change/").content.decode()
    assert "Secret sale" in record


def test_the_request_list_names_hidden_campaigns_in_as_many_queries_for_many_rows_as_for_few(
    client, manager_alice, approver_bob, django_assert_max_num_queries
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.factories import app_granted

    shop = app_granted(manager_alice, approver_bob)
    other = app_granted(manager_alice, approver_bob, name="Other")
    _campaign_submitted(shop, manager_alice, "Seen 0")
    gone, _request = _campaign_submitted(other, manager_alice, "Gone 0")
    client.force_login(manager_alice)
    _revoke_everything(manager_alice, other, gone)
    url = "/admin/accounts/approvalrequest/?show=my_requests"
    client.get(url)  # the caches every page fills (content types)
    with CaptureQueriesContext(connection) as few:
        client.get(url)
    hidden = [gone]
    access_grant(obj=other, to=manager_alice, by=None)
    for i in range(1, 6):
        _campaign_submitted(shop, manager_alice, f"Seen {i}")
        hidden.append(_campaign_submitted(other, manager_alice, f"Gone {i}")[0])
    _revoke_everything(manager_alice, other, *hidden)
    with django_assert_max_num_queries(len(few.captured_queries)):
        rows = _rows(client.get(url))
    assert all(f">Seen {i}</a>" in rows for i in range(6))
    assert all(f">campaign #{campaign.pk}</a>" in rows for campaign in hidden) and "Gone" not in rows


@pytest.mark.parametrize("lookup", ["subject_label__startswith", "subject_label__icontains", "snapshot__icontains"])
def test_the_request_list_asked_by_a_hidden_campaign_s_name_does_not_spell_it_out(
    client, manager_alice, approver_bob, admin_erin, lookup
):
    """The list takes a lookup on any of its fields in its address, as Django's lists do: asked
    whether a request's subject (or its snapshot) starts with a letter, then the next, it spelt out
    the name of a campaign it says by number to its requester who lost access to it. Those lookups
    are refused to whoever does not see every object; an Administrator still asks them."""
    from tests.factories import app_granted

    other = app_granted(manager_alice, approver_bob, name="Other")
    gone, request = _campaign_submitted(other, manager_alice, "Gone launch")
    _revoke_everything(manager_alice, other, gone)
    client.force_login(manager_alice)
    assert f">campaign #{gone.pk}</a>" in _rows(client.get("/admin/accounts/approvalrequest/?show=my_requests"))
    answer = client.get("/admin/accounts/approvalrequest/", {"show": "my_requests", lookup: "Gone l"})
    assert answer.status_code == 400
    assert f"campaign #{gone.pk}" not in answer.content.decode()
    client.force_login(admin_erin)
    answer = client.get("/admin/accounts/approvalrequest/", {"show": "all", lookup: "Gone l"})
    assert answer.status_code == 200
    assert [row.pk for row in answer.context["cl"].result_list] == [request.pk]


def test_the_request_list_sorted_by_what_does_not_place_a_hidden_campaign_by_its_name(
    client, manager_alice, approver_bob, admin_erin
):
    """Sorted by its What column (?o=), the list placed a request whose campaign it names by number
    among the requester's others by the name it withholds: between "Secret a" and "Secret z",
    campaigns of their own named letter by letter narrowed it down. That column is not sortable to
    whoever does not see every object; an Administrator still sorts by it."""
    from tests.factories import app_granted

    shop = app_granted(manager_alice, approver_bob)
    other = app_granted(manager_alice, approver_bob, name="Other")
    gone, hidden = _campaign_submitted(other, manager_alice, "Secret m")
    requests = {"Secret m": hidden}
    for name in ("Secret a", "Secret z"):
        requests[name] = _campaign_submitted(shop, manager_alice, name)[1]
    _revoke_everything(manager_alice, other, gone)

    def order(user, sort: bool) -> list[int]:
        client.force_login(user)
        return [
            row.pk
            for row in listed_rows(
                client, "/admin/accounts/approvalrequest/", sorted_by="what" if sort else None, query={"show": "all"}
            )
        ]

    unsorted = order(manager_alice, sort=False)
    assert hidden.pk in unsorted
    assert order(manager_alice, sort=True) == unsorted
    assert order(admin_erin, sort=True) == [requests[name].pk for name in ("Secret a", "Secret m", "Secret z")]


def test_a_request_s_words_are_withheld_from_a_reader_who_may_no_longer_see_its_campaign(
    client, manager_alice, approver_bob, admin_erin
):
    """A request's message (its requester's words) and comment (its approver's) may name its
    campaign or quote its copy: the list and the request's page showed them to its requester and
    decider who lost access to the campaign since, while naming the campaign by number. They read
    them withheld, and the list is not filtered or sorted by them; an Administrator reads them."""
    from campaigns.services.lifecycle import campaign_create, campaign_request_changes, campaign_submit
    from tests.factories import PushContentFactory, SegmentFactory, app_granted

    shop = app_granted(manager_alice, approver_bob)
    segment = SegmentFactory(created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    campaign = campaign_create(
        by=manager_alice,
        name="Spring",
        app=shop,
        segment=segment,
        content=PushContentFactory(app=shop),
        kind="scheduled",
    )
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice, message="Launching Secret sale on Monday")
    campaign_request_changes(
        campaign_id=campaign.pk, by=approver_bob, comment="Secret sale is too loud", request_id=request.pk
    )
    _revoke_everything(manager_alice, shop, campaign)
    _revoke_everything(approver_bob, shop)
    withheld = f"withheld: you no longer have access to campaign #{campaign.pk}"

    for user, show in ((manager_alice, "my_requests"), (approver_bob, "all")):
        client.force_login(user)
        page = client.get("/admin/accounts/approvalrequest/", {"show": show}).content.decode()
        assert "Secret sale" not in page and withheld in page, user
        record = client.get(f"/admin/accounts/approvalrequest/{request.pk}/change/").content.decode()
        assert "Secret sale" not in record and withheld in record, user
        for lookup in ("comment__icontains", "message__icontains"):
            answer = client.get("/admin/accounts/approvalrequest/", {"show": show, lookup: "Secret"})
            assert answer.status_code == 400, (user, lookup)
        sortable = client.get("/admin/accounts/approvalrequest/", {"show": show}).context["cl"].sortable_by
        assert not {"comment", "comment_said"} & set(sortable), user

    client.force_login(admin_erin)
    page = client.get("/admin/accounts/approvalrequest/", {"show": "all"}).content.decode()
    assert "Secret sale is too loud" in page
    record = client.get(f"/admin/accounts/approvalrequest/{request.pk}/change/").content.decode()
    assert "Launching Secret sale on Monday" in record and "Secret sale is too loud" in record
    answer = client.get("/admin/accounts/approvalrequest/", {"show": "all", "comment__icontains": "Secret"})
    assert [row.pk for row in answer.context["cl"].result_list] == [request.pk]
    assert "comment_said" in answer.context["cl"].sortable_by
