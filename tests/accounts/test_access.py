import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied

from accounts.models import AuditEvent
from accounts.selectors import can, visible_to
from accounts.services import access_grant, access_revoke
from delivery.models import App


def test_user_sees_only_the_apps_granted(manager_alice, shop, bank):
    access_grant(obj=shop, to=manager_alice, by=None)
    assert list(visible_to(manager_alice, App.objects.all())) == [shop]


def test_access_through_a_group(viewer_carol, shop, bank):
    team = Group.objects.create(name="Shop team")
    viewer_carol.groups.add(team)
    access_grant(obj=bank, to=team, by=None)
    assert list(visible_to(viewer_carol, App.objects.all())) == [bank]


def test_revoked_access_hides_again(admin_erin, manager_alice, shop):
    access_grant(obj=shop, to=manager_alice, by=admin_erin)
    access_revoke(obj=shop, to=manager_alice, by=admin_erin)
    assert not visible_to(manager_alice, App.objects.all()).exists()
    assert list(AuditEvent.objects.filter(object_id=str(shop.pk)).values_list("action", flat=True)) == [
        "access_revoked",
        "access_granted",
    ]


def test_a_grant_records_who_granted_it_and_when(admin_erin, manager_alice, shop):
    from django.utils import timezone

    from delivery.models import AppGroupObjectPermission, AppUserObjectPermission

    before = timezone.now()
    access_grant(obj=shop, to=manager_alice, by=admin_erin)
    grant = AppUserObjectPermission.objects.get(user=manager_alice, content_object=shop)
    assert grant.granted_by == admin_erin and before <= grant.granted_at <= timezone.now()

    team = Group.objects.create(name="Shop team")
    access_grant(obj=shop, to=team, by=None)  # the system's grant names no one
    grant = AppGroupObjectPermission.objects.get(group=team, content_object=shop)
    assert grant.granted_by is None and grant.granted_at is not None


def test_administrator_sees_every_app(admin_erin, shop, bank):
    assert set(visible_to(admin_erin, App.objects.all())) == {shop, bank}


def test_user_without_a_role_sees_nothing_even_when_granted(outsider_dave, shop):
    access_grant(obj=shop, to=outsider_dave, by=None)
    assert not visible_to(outsider_dave, App.objects.all()).exists()


def test_role_decides_what_access_decides_where(manager_alice, admin_erin, shop):
    access_grant(obj=shop, to=manager_alice, by=None)
    assert can(manager_alice, "delivery.view_app", shop)
    assert not can(manager_alice, "delivery.change_app", shop)  # apps are Administrator-only
    assert can(admin_erin, "delivery.change_app", shop)


def test_only_administrators_manage_access(manager_alice, approver_bob, shop):
    with pytest.raises(PermissionDenied):
        access_grant(obj=shop, to=approver_bob, by=manager_alice)


def test_visible_to_is_one_query(manager_alice, shop, bank, django_assert_num_queries):
    access_grant(obj=shop, to=manager_alice, by=None)
    manager_alice = type(manager_alice).objects.get(pk=manager_alice.pk)
    manager_alice.has_perm("delivery.view_app")  # warm the role cache
    manager_alice.groups.filter(name="Administrator").exists()
    with django_assert_num_queries(2):  # the administrator check, then the filtered list
        assert list(visible_to(manager_alice, App.objects.all())) == [shop]


# --- through the admin ------------------------------------------------------------------


def test_admin_list_hides_apps_outside_access_and_their_pages_answer_404(client, manager_alice, shop, bank):
    access_grant(obj=shop, to=manager_alice, by=None)
    client.force_login(manager_alice)
    listing = client.get("/admin/delivery/app/")
    assert listing.status_code == 200
    assert b"Shop" in listing.content
    assert b"Bank" not in listing.content
    assert client.get(f"/admin/delivery/app/{shop.pk}/change/").status_code == 200
    assert client.get(f"/admin/delivery/app/{bank.pk}/change/").status_code == 404
    assert client.get(f"/admin/delivery/app/{bank.pk}/access/").status_code == 404
    assert client.get(f"/admin/delivery/app/{bank.pk}/history/").status_code == 404


def test_administrator_grants_and_revokes_access_in_the_admin(client, admin_erin, manager_alice, shop):
    client.force_login(admin_erin)
    page = client.get(f"/admin/delivery/app/{shop.pk}/access/")
    assert page.status_code == 200
    response = client.post(f"/admin/delivery/app/{shop.pk}/access/", {"user": manager_alice.pk})
    assert response.status_code == 302
    assert list(visible_to(manager_alice, App.objects.all())) == [shop]
    client.post(f"/admin/delivery/app/{shop.pk}/access/", {"revoke": f"user:{manager_alice.pk}"})
    assert not visible_to(manager_alice, App.objects.all()).exists()


def test_manager_cannot_grant_access_through_a_forged_post(client, manager_alice, approver_bob, shop):
    access_grant(obj=shop, to=manager_alice, by=None)
    client.force_login(manager_alice)
    page = client.get(f"/admin/delivery/app/{shop.pk}/access/")
    assert page.status_code == 200
    assert b"Grant access" not in page.content
    assert client.post(f"/admin/delivery/app/{shop.pk}/access/", {"user": approver_bob.pk}).status_code == 403
    assert not visible_to(approver_bob, App.objects.all()).exists()


def test_manager_cannot_revoke_access_through_a_forged_post(client, manager_alice, approver_bob, shop):
    for user in (manager_alice, approver_bob):
        access_grant(obj=shop, to=user, by=None)
    client.force_login(manager_alice)
    for whom in (approver_bob, manager_alice):  # a colleague's access, or her own
        answer = client.post(f"/admin/delivery/app/{shop.pk}/access/", {"revoke": f"user:{whom.pk}"})
        assert answer.status_code == 403, whom
        assert list(visible_to(whom, App.objects.all())) == [shop], whom


def test_user_page_shows_roles_and_object_access(client, admin_erin, manager_alice, shop):
    access_grant(obj=shop, to=manager_alice, by=None)
    client.force_login(admin_erin)
    page = client.get(f"/admin/accounts/user/{manager_alice.pk}/change/")
    assert page.status_code == 200
    assert b"submit for review" in page.content  # the Manager role's capabilities
    assert b"Shop" in page.content


def test_each_write_of_what_grants_access_bumps_the_access_stamp_and_a_profile_s_does_not(
    admin_erin, manager_alice, shop
):
    from accounts.stamps import stamps_read
    from tests.factories import ProfileFactory, UserFactory

    def access_stamp():
        return stamps_read(["access"]).values["access"]

    steps = [
        lambda: access_grant(obj=shop, to=manager_alice, by=admin_erin),  # an object grant saved
        lambda: access_revoke(obj=shop, to=manager_alice, by=admin_erin),  # and deleted
        lambda: Group.objects.create(name="Temporary").delete(),
        lambda: UserFactory(username="leaver").delete(),
    ]
    for step in steps:
        before = access_stamp()
        step()
        assert access_stamp() != before
    before = access_stamp()
    ProfileFactory().delete()
    assert access_stamp() == before


# --- a revoke that would strand an approval policy ---------------------------------------------


def _policy_naming(admin, app, *approvers, name="Shop marketing"):
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate

    policy = ApprovalPolicy.objects.create(name=name, app_ids=[app.pk], applies_to_campaigns=True)
    policy.approver_users.set(approvers)
    approval_policy_activate(policy_id=policy.pk, by=admin)
    return policy


def test_revoking_the_only_approver_of_an_active_policy_is_refused_naming_it(admin_erin, approver_bob, shop):
    from django.core.exceptions import ValidationError

    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob)
    with pytest.raises(ValidationError) as refused:
        access_revoke(obj=shop, to=approver_bob, by=admin_erin)
    said = " ".join(refused.value.messages)
    assert "'Shop marketing'" in said and "could not be decided" in said
    assert list(visible_to(approver_bob, App.objects.all())) == [shop]  # nothing revoked
    assert not AuditEvent.objects.filter(action="access_revoked").exists()


def test_revoking_one_of_two_approvers_with_access_is_allowed(admin_erin, approver_bob, shop):
    from tests.factories import UserFactory

    approver_fay = UserFactory(username="approver_fay", role="Approver")
    for approver in (approver_bob, approver_fay):
        access_grant(obj=shop, to=approver, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob, approver_fay)
    access_revoke(obj=shop, to=approver_bob, by=admin_erin)
    assert not visible_to(approver_bob, App.objects.all()).exists()


def test_a_policy_of_another_app_or_inactive_does_not_stop_a_revoke(admin_erin, approver_bob, shop, bank):
    from accounts.services import approval_policy_deactivate

    for app in (shop, bank):
        access_grant(obj=app, to=approver_bob, by=admin_erin)
    _policy_naming(admin_erin, bank, approver_bob, name="Bank")
    policy = _policy_naming(admin_erin, shop, approver_bob)
    approval_policy_deactivate(policy_id=policy.pk, by=admin_erin)
    access_revoke(obj=shop, to=approver_bob, by=admin_erin)
    assert list(visible_to(approver_bob, App.objects.all())) == [bank]


def test_the_access_page_refuses_the_revoke_saying_which_policy_to_change(client, admin_erin, approver_bob, shop):
    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob)
    client.force_login(admin_erin)
    url = f"/admin/delivery/app/{shop.pk}/access/"
    answer = client.post(url, {"revoke": f"user:{approver_bob.pk}"}, follow=True)
    page = answer.content.decode()
    assert answer.status_code == 200 and "Access revoked" not in page
    assert "Shop marketing" in page and "not revoked" in page
    assert list(visible_to(approver_bob, App.objects.all())) == [shop]


def test_the_user_page_keeps_the_grant_whose_revoke_would_strand_a_policy(client, admin_erin, approver_bob, shop):
    """The same refusal when the grant is deleted on the user's page (its app access rows)."""
    from tests.pages import page_form

    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob)
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{approver_bob.pk}/change/"
    form = page_form(client.get(url).content.decode()).data
    deleting = next(name for name in form if name.endswith("-0-id")).replace("-id", "-DELETE")
    answer = client.post(url, {**form, deleting: "on", "_continue": "1"}, follow=True)
    page = answer.content.decode()
    assert answer.status_code == 200 and "Shop marketing" in page and "not revoked" in page
    assert list(visible_to(approver_bob, App.objects.all())) == [shop]


def test_revoking_a_group_whose_member_is_the_policy_s_only_approver_with_access_is_refused(
    admin_erin, approver_bob, shop
):
    from django.core.exceptions import ValidationError

    team = Group.objects.create(name="Shop team")
    approver_bob.groups.add(team)
    access_grant(obj=shop, to=team, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob)
    with pytest.raises(ValidationError, match="Revoking the group Shop team's access .* 'Shop marketing'"):
        access_revoke(obj=shop, to=team, by=admin_erin)
    assert list(visible_to(approver_bob, App.objects.all())) == [shop]


# A policy naming no app governs the requests of every app: an approver decides one of an app they
# have access to, so a revoke may leave it with no one to decide that app's requests.


def _policy_of_every_app(admin, *approvers, name="Every app"):
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate

    policy = ApprovalPolicy.objects.create(name=name, app_ids=[], applies_to_campaigns=True)
    policy.approver_users.set(approvers)
    approval_policy_activate(policy_id=policy.pk, by=admin)
    return policy


def test_revoking_the_only_approver_of_a_policy_naming_no_app_is_refused_for_that_app(
    admin_erin, approver_bob, shop, bank
):
    from django.core.exceptions import ValidationError

    for app in (shop, bank):
        access_grant(obj=app, to=approver_bob, by=admin_erin)
    _policy_of_every_app(admin_erin, approver_bob)
    with pytest.raises(ValidationError) as refused:
        access_revoke(obj=shop, to=approver_bob, by=admin_erin)
    said = " ".join(refused.value.messages)
    assert "'Every app'" in said and f"for '{shop}'" in said and "could not be decided" in said
    assert set(visible_to(approver_bob, App.objects.all())) == {shop, bank}  # nothing revoked
    assert not AuditEvent.objects.filter(action="access_revoked").exists()


def test_a_policy_naming_no_app_lets_a_revoke_through_while_another_approver_has_access(admin_erin, approver_bob, shop):
    from tests.factories import UserFactory

    approver_fay = UserFactory(username="approver_fay", role="Approver")
    for approver in (approver_bob, approver_fay):
        access_grant(obj=shop, to=approver, by=admin_erin)
    _policy_of_every_app(admin_erin, approver_bob, approver_fay)
    access_revoke(obj=shop, to=approver_bob, by=admin_erin)
    assert not visible_to(approver_bob, App.objects.all()).exists()


def test_an_inactive_policy_naming_no_app_does_not_stop_a_revoke(admin_erin, approver_bob, shop):
    from accounts.services import approval_policy_deactivate

    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    policy = _policy_of_every_app(admin_erin, approver_bob)
    approval_policy_deactivate(policy_id=policy.pk, by=admin_erin)
    access_revoke(obj=shop, to=approver_bob, by=admin_erin)
    assert not visible_to(approver_bob, App.objects.all()).exists()


def test_a_policy_naming_no_app_whose_approvers_had_no_access_there_does_not_stop_a_revoke(
    admin_erin, approver_bob, manager_alice, shop
):
    """Nobody of the policy could decide the app's requests before: the revoke strands nothing more."""
    access_grant(obj=shop, to=manager_alice, by=admin_erin)
    _policy_of_every_app(admin_erin, approver_bob)
    access_revoke(obj=shop, to=manager_alice, by=admin_erin)
    assert not visible_to(manager_alice, App.objects.all()).exists()
