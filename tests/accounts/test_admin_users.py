"""The user page: its app access rows, who may change an account, and a superuser's out of others' reach;
the group page's deletions and a team's members, and what neither may take from an approval policy."""

import html

import pytest
from django.contrib.auth.models import Group

from accounts.models import AuditEvent, User
from accounts.selectors import visible_to
from accounts.services import access_grant
from delivery.models import App, AppUserObjectPermission
from tests.factories import TEST_PASSWORD, UserFactory

ROWS = "appuserobjectpermission_set"  # the "Access to apps" rows' prefix
NEW_PASSWORD = {
    "password1": "a-brand-new-long-passphrase-42",
    "password2": "a-brand-new-long-passphrase-42",
    "usable_password": "true",
}


@pytest.fixture
def superuser_sam(db):
    return UserFactory(username="superuser_sam", is_superuser=True)


def change_form(user: User, *, roles: list[str] | None = None, **changes) -> dict:
    """The user page's form as the browser posts it: the account's fields, then one row per app
    grant (a granted row shows its app read-only, so it posts only its id). ``roles`` replaces the
    user's roles; a change of None leaves the field out, as an unticked checkbox is."""
    grants = AppUserObjectPermission.objects.filter(user=user, permission__codename="view_app").order_by("pk")
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "groups": [
            group.pk for group in (Group.objects.filter(name__in=roles) if roles is not None else user.groups.all())
        ],
        **{flag: "on" for flag in ("is_active", "is_staff", "is_service_account") if getattr(user, flag)},
        f"{ROWS}-TOTAL_FORMS": len(grants),
        f"{ROWS}-INITIAL_FORMS": len(grants),
        f"{ROWS}-MIN_NUM_FORMS": 0,
        f"{ROWS}-MAX_NUM_FORMS": 1000,
    }
    for i, grant in enumerate(grants):
        data[f"{ROWS}-{i}-id"] = grant.pk
        data[f"{ROWS}-{i}-user"] = user.pk
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def _account(user: User) -> tuple:
    """What an account is made of, as the database holds it."""
    user = User.objects.get(pk=user.pk)
    return (
        user.username,
        user.email,
        user.password,
        user.is_active,
        user.is_staff,
        user.is_superuser,
        sorted(user.groups.values_list("name", flat=True)),
    )


# --- the "Access to apps" rows ------------------------------------------------------------------


def test_administrator_revokes_an_app_by_ticking_delete_on_the_user_page(client, admin_erin, manager_alice, shop):
    access_grant(obj=shop, to=manager_alice, by=admin_erin)
    client.force_login(admin_erin)
    response = client.post(
        f"/admin/accounts/user/{manager_alice.pk}/change/", change_form(manager_alice, **{f"{ROWS}-0-DELETE": "on"})
    )
    assert response.status_code == 302
    assert not AppUserObjectPermission.objects.filter(user=manager_alice).exists()
    assert not visible_to(manager_alice, App.objects.all()).exists()
    revoked = AuditEvent.objects.get(action="access_revoked")
    assert (revoked.actor, revoked.object_id, revoked.summary) == (
        admin_erin,
        str(shop.pk),
        {"from": "user:manager_alice"},
    )


def test_an_app_access_row_reads_in_words_not_as_a_permission_code(
    client, admin_erin, manager_alice, shop, django_assert_max_num_queries
):
    access_grant(obj=shop, to=manager_alice, by=admin_erin)
    client.force_login(admin_erin)
    with django_assert_max_num_queries(60):
        page = client.get(f"/admin/accounts/user/{manager_alice.pk}/change/").content.decode()
    assert "view_app" not in page
    assert "manager_alice&#x27;s access to Shop" in page


def test_granted_objects_say_whether_none_means_nothing_or_everything(client, admin_erin, manager_alice):
    """A Manager granted nothing sees nothing: the page says so, not that Administrators see everything,
    which an Administrator's own page says instead."""
    client.force_login(admin_erin)
    page = client.get(f"/admin/accounts/user/{manager_alice.pk}/change/").content.decode()
    assert "None: this user sees no app or object until given access" in html.unescape(page)
    page = client.get(f"/admin/accounts/user/{admin_erin.pk}/change/").content.decode()
    assert "None needed: as an Administrator, this user sees everything." in html.unescape(page)


def test_the_staff_box_says_a_role_keeps_it_and_active_is_what_stops_a_sign_in(client, admin_erin, manager_alice):
    """Unticked for a user with a role, Staff status comes back on save (a role lets one sign in):
    the box says so, and names the one that stops a sign-in."""
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{manager_alice.pk}/change/"
    page = html.unescape(client.get(url).content.decode())
    assert "Set while the user has a role (a role lets one sign in); to stop a sign-in, untick Active." in page
    form = change_form(manager_alice)
    form.pop("is_staff")
    assert client.post(url, form).status_code == 302
    assert User.objects.get(pk=manager_alice.pk).is_staff


def test_a_deleted_row_revokes_its_own_app_never_one_posted_with_it(client, admin_erin, manager_alice, shop, bank):
    access_grant(obj=shop, to=manager_alice, by=admin_erin)
    access_grant(obj=bank, to=manager_alice, by=admin_erin)
    client.force_login(admin_erin)
    data = change_form(manager_alice, **{f"{ROWS}-0-DELETE": "on", f"{ROWS}-0-content_object": bank.pk})
    assert client.post(f"/admin/accounts/user/{manager_alice.pk}/change/", data).status_code == 302
    assert list(visible_to(manager_alice, App.objects.all())) == [bank]
    assert list(AuditEvent.objects.filter(action="access_revoked").values_list("object_id", flat=True)) == [
        str(shop.pk)
    ]


def test_administrator_grants_an_app_on_the_user_page_and_a_new_row_ticked_delete_grants_nothing(
    client, admin_erin, manager_alice, shop, bank
):
    client.force_login(admin_erin)
    data = change_form(
        manager_alice,
        **{
            f"{ROWS}-TOTAL_FORMS": 2,
            f"{ROWS}-0-user": manager_alice.pk,
            f"{ROWS}-0-content_object": shop.pk,
            f"{ROWS}-1-user": manager_alice.pk,
            f"{ROWS}-1-content_object": bank.pk,
            f"{ROWS}-1-DELETE": "on",
        },
    )
    assert client.post(f"/admin/accounts/user/{manager_alice.pk}/change/", data).status_code == 302
    assert list(visible_to(manager_alice, App.objects.all())) == [shop]
    assert list(AuditEvent.objects.filter(action__startswith="access_").values_list("action", "object_id")) == [
        ("access_granted", str(shop.pk))
    ]


@pytest.mark.parametrize("role_user", ["manager_alice", "approver_bob", "viewer_carol"])
def test_roles_that_may_not_manage_users_cannot_revoke_an_app_on_the_user_page(
    request, client, admin_erin, manager_mallory, shop, role_user
):
    access_grant(obj=shop, to=manager_mallory, by=admin_erin)
    client.force_login(request.getfixturevalue(role_user))
    data = change_form(manager_mallory, **{f"{ROWS}-0-DELETE": "on"})
    assert client.post(f"/admin/accounts/user/{manager_mallory.pk}/change/", data).status_code == 403
    assert list(visible_to(manager_mallory, App.objects.all())) == [shop]
    assert not AuditEvent.objects.filter(action="access_revoked").exists()


# --- who may change an account ------------------------------------------------------------------


@pytest.mark.parametrize("role_user", ["manager_alice", "approver_bob", "viewer_carol"])
def test_roles_that_may_not_manage_users_cannot_change_roles_or_accounts(request, client, manager_mallory, role_user):
    actor = request.getfixturevalue(role_user)
    client.force_login(actor)
    for user in (manager_mallory, actor):  # a colleague's account, and one's own
        before = _account(user)
        data = change_form(user, roles=["Administrator"], email="taken@example.test", is_active=None)
        assert client.post(f"/admin/accounts/user/{user.pk}/change/", data).status_code == 403
        assert _account(user) == before


def test_a_forged_is_superuser_post_by_an_administrator_makes_no_superuser(client, admin_erin, viewer_carol):
    client.force_login(admin_erin)
    for user in (viewer_carol, admin_erin):
        data = change_form(user, is_superuser="on", first_name="Renamed")
        assert client.post(f"/admin/accounts/user/{user.pk}/change/", data).status_code == 302
        user = User.objects.get(pk=user.pk)
        assert user.first_name == "Renamed"  # the form was saved, without the flag
        assert not user.is_superuser


# --- a superuser's account ----------------------------------------------------------------------


@pytest.mark.presses("accounts.user:auth_user_password_change")
def test_an_administrator_cannot_set_a_superusers_password(client, admin_erin, superuser_sam):
    hashed = superuser_sam.password
    client.force_login(admin_erin)
    assert client.get(f"/admin/accounts/user/{superuser_sam.pk}/password/").status_code == 403
    assert client.post(f"/admin/accounts/user/{superuser_sam.pk}/password/", NEW_PASSWORD).status_code == 403
    unset = {"usable_password": "false", "unset-password": "1"}
    assert client.post(f"/admin/accounts/user/{superuser_sam.pk}/password/", unset).status_code == 403
    superuser_sam.refresh_from_db()
    assert superuser_sam.password == hashed and superuser_sam.check_password(TEST_PASSWORD)
    assert not AuditEvent.objects.filter(actor=admin_erin).exists()


@pytest.mark.parametrize(
    "changes",
    [
        {"username": "sam-taken"},
        {"email": "taken@example.test"},
        {"is_active": None},
        {"roles": ["Viewer"]},
        {"password": "pbkdf2_sha256$1$salt$forged"},
    ],
    ids=["username", "email", "active", "roles", "password"],
)
def test_an_administrator_cannot_change_a_superusers_account(client, admin_erin, superuser_sam, changes):
    before = _account(superuser_sam)
    client.force_login(admin_erin)
    page = client.get(f"/admin/accounts/user/{superuser_sam.pk}/change/")
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert "Only a superuser changes a superuser's account" in html.unescape(page.content.decode())
    url = f"/admin/accounts/user/{superuser_sam.pk}/change/"
    assert client.post(url, change_form(superuser_sam, is_superuser="on", **changes)).status_code == 403
    assert _account(superuser_sam) == before


def test_an_administrator_cannot_delete_a_superuser(client, admin_erin, superuser_sam):
    client.force_login(admin_erin)
    assert client.post(f"/admin/accounts/user/{superuser_sam.pk}/delete/", {"post": "yes"}).status_code == 403
    listed = {"action": "delete_selected", "_selected_action": [superuser_sam.pk], "post": "yes"}
    assert client.post("/admin/accounts/user/", listed).status_code == 403
    assert User.objects.filter(pk=superuser_sam.pk).exists()


def test_a_superuser_changes_a_superusers_password_and_account(client, superuser_sam):
    other = UserFactory(username="superuser_tess", is_superuser=True)
    client.force_login(superuser_sam)
    assert client.post(f"/admin/accounts/user/{other.pk}/password/", NEW_PASSWORD).status_code == 302
    other.refresh_from_db()
    assert other.check_password(NEW_PASSWORD["password1"])
    data = change_form(other, email="tess@example.test", is_superuser="on")
    assert client.post(f"/admin/accounts/user/{other.pk}/change/", data).status_code == 302
    other.refresh_from_db()
    assert other.email == "tess@example.test" and other.is_superuser


# --- a change that would leave an approval policy with no one to decide --------------------------


def _policy_naming(admin, app, *approvers, name="Shop marketing"):
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate

    policy = ApprovalPolicy.objects.create(name=name, app_ids=[app.pk], applies_to_campaigns=True)
    policy.approver_users.set(approvers)
    approval_policy_activate(policy_id=policy.pk, by=admin)
    return policy


STRANDING_CHANGES = {
    "deactivated": {"is_active": None},
    "left with no role": {"roles": []},
    "made a Manager": {"roles": ["Manager"]},
}


@pytest.mark.parametrize("change", STRANDING_CHANGES, ids=list(STRANDING_CHANGES))
def test_a_change_leaving_an_active_policy_with_no_approver_is_refused_naming_it(
    client, admin_erin, approver_bob, shop, change
):
    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob)
    before, events = _account(approver_bob), AuditEvent.objects.count()
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{approver_bob.pk}/change/"
    answer = client.post(url, change_form(approver_bob, email="new@example.test", **STRANDING_CHANGES[change]))
    page = html.unescape(client.get(answer.url).content.decode()) if answer.status_code == 302 else ""
    assert "'Shop marketing'" in page and "could not be decided" in page and "not saved" in page
    assert "changed successfully" not in page
    assert _account(approver_bob) == before  # nothing saved, the email neither
    assert AuditEvent.objects.count() == events


@pytest.mark.parametrize("change", STRANDING_CHANGES, ids=list(STRANDING_CHANGES))
def test_the_change_goes_through_while_another_approver_may_decide(client, admin_erin, approver_bob, shop, change):
    approver_fay = UserFactory(username="approver_fay", role="Approver")
    for approver in (approver_bob, approver_fay):
        access_grant(obj=shop, to=approver, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob, approver_fay)
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{approver_bob.pk}/change/"
    answer = client.post(url, change_form(approver_bob, **STRANDING_CHANGES[change]))
    assert answer.status_code == 302
    bob = User.objects.get(pk=approver_bob.pk)
    assert (bob.is_active, bob.role_names()) != (True, ["Approver"])


def test_an_inactive_policy_does_not_stop_deactivating_its_only_approver(client, admin_erin, approver_bob, shop):
    from accounts.services import approval_policy_deactivate

    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    policy = _policy_naming(admin_erin, shop, approver_bob)
    approval_policy_deactivate(policy_id=policy.pk, by=admin_erin)
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{approver_bob.pk}/change/"
    answer = client.post(url, change_form(approver_bob, is_active=None, roles=[]))
    assert answer.status_code == 302
    bob = User.objects.get(pk=approver_bob.pk)
    assert (bob.is_active, bob.role_names()) == (False, [])


def test_an_administrator_approver_losing_the_role_is_refused_too(client, admin_erin, shop):
    admin_ann = UserFactory(username="admin_ann", role="Administrator")
    _policy_naming(admin_erin, shop, admin_ann)  # an Administrator sees every app
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{admin_ann.pk}/change/"
    answer = client.post(url, change_form(admin_ann, roles=["Viewer"]), follow=True)
    assert "'Shop marketing'" in html.unescape(answer.content.decode())
    assert User.objects.get(pk=admin_ann.pk).role_names() == ["Administrator"]


def test_a_refused_revoke_on_the_user_page_saves_nothing_else_nor_says_it_changed(
    client, admin_erin, approver_bob, shop
):
    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob)
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{approver_bob.pk}/change/"
    data = change_form(approver_bob, email="new@example.test", **{f"{ROWS}-0-DELETE": "on"})
    page = html.unescape(client.post(url, data, follow=True).content.decode())
    assert "not revoked" in page and "not saved" in page and "changed successfully" not in page
    assert User.objects.get(pk=approver_bob.pk).email != "new@example.test"
    assert list(visible_to(approver_bob, App.objects.all())) == [shop]


# --- deleting a policy's last approver ------------------------------------------------------------


def test_deleting_the_only_approver_of_an_active_policy_is_refused_naming_it(client, admin_erin, approver_bob, shop):
    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob)
    events = AuditEvent.objects.count()
    client.force_login(admin_erin)
    answer = client.post(f"/admin/accounts/user/{approver_bob.pk}/delete/", {"post": "yes"}, follow=True)
    page = html.unescape(answer.content.decode())
    assert answer.status_code == 200 and "'Shop marketing'" in page and "could not be decided" in page
    assert "Deleting approver_bob" in page and "not deleted" in page and "deleted successfully" not in page
    assert User.objects.filter(pk=approver_bob.pk).exists()
    assert list(visible_to(approver_bob, App.objects.all())) == [shop]
    assert AuditEvent.objects.count() == events


def test_deleting_an_approver_goes_through_while_another_may_decide(client, admin_erin, approver_bob, shop):
    approver_fay = UserFactory(username="approver_fay", role="Approver")
    for approver in (approver_bob, approver_fay):
        access_grant(obj=shop, to=approver, by=admin_erin)
    policy = _policy_naming(admin_erin, shop, approver_bob, approver_fay)
    client.force_login(admin_erin)
    assert client.post(f"/admin/accounts/user/{approver_bob.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not User.objects.filter(pk=approver_bob.pk).exists()
    assert list(policy.approver_users.all()) == [approver_fay]
    deleted = AuditEvent.objects.get(action="user_deleted")
    assert (deleted.actor, deleted.object_id) == (admin_erin, str(approver_bob.pk))


def test_an_inactive_policy_does_not_stop_deleting_its_only_approver(client, admin_erin, approver_bob, shop):
    from accounts.services import approval_policy_deactivate

    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    policy = _policy_naming(admin_erin, shop, approver_bob)
    approval_policy_deactivate(policy_id=policy.pk, by=admin_erin)
    client.force_login(admin_erin)
    assert client.post(f"/admin/accounts/user/{approver_bob.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not User.objects.filter(pk=approver_bob.pk).exists()


@pytest.mark.presses("accounts.user:delete_selected")
def test_delete_selected_deletes_the_others_and_names_a_policy_s_last_approver_not_deleted(
    client, admin_erin, approver_bob, viewer_carol, shop
):
    approver_fay = UserFactory(username="approver_fay", role="Approver")
    for approver in (approver_bob, approver_fay):
        access_grant(obj=shop, to=approver, by=admin_erin)
    # Either approver alone may go; not both: the first deleted, the second is the policy's last.
    policy = _policy_naming(admin_erin, shop, approver_bob, approver_fay)
    client.force_login(viewer_carol)
    chosen = {"action": "delete_selected", "_selected_action": [approver_bob.pk, approver_fay.pk], "post": "yes"}
    assert client.post("/admin/accounts/user/", chosen).status_code in (302, 403)
    assert User.objects.filter(pk__in=[approver_bob.pk, approver_fay.pk]).count() == 2

    client.force_login(admin_erin)
    chosen["_selected_action"].append(viewer_carol.pk)
    answer = client.post("/admin/accounts/user/", chosen, follow=True)
    said = [html.unescape(str(m)) for m in answer.context["messages"]]
    assert set(User.objects.filter(pk__in=chosen["_selected_action"]).values_list("username", flat=True)) == {
        "approver_fay"
    }
    refused = [m for m in said if m.startswith("approver_fay: ")]
    assert len(refused) == 1 and "'Shop marketing'" in refused[0] and "not deleted" in refused[0]
    assert "2 users deleted." in said and not any("Successfully deleted" in m for m in said)
    assert list(policy.approver_users.all()) == [approver_fay]
    assert set(
        AuditEvent.objects.filter(action="user_deleted", actor=admin_erin).values_list("object_id", flat=True)
    ) == {str(approver_bob.pk), str(viewer_carol.pk)}


# --- a superuser's account, deleted through the service ---------------------------------------------


def test_user_delete_refuses_a_superuser_s_account_to_an_administrator(admin_erin, superuser_sam):
    """The service, not only the admin's page, keeps a superuser's account out of others' reach."""
    from django.core.exceptions import PermissionDenied

    from accounts.services import user_delete

    with pytest.raises(PermissionDenied, match="Only a superuser deletes a superuser's account"):
        user_delete(user_id=superuser_sam.pk, by=admin_erin)
    assert User.objects.filter(pk=superuser_sam.pk).exists()
    assert not AuditEvent.objects.filter(action="user_deleted").exists()


def test_a_superuser_deletes_a_superuser_s_account_on_its_delete_page(client, superuser_sam):
    other = UserFactory(username="superuser_tess", is_superuser=True)
    client.force_login(superuser_sam)
    assert client.post(f"/admin/accounts/user/{other.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not User.objects.filter(pk=other.pk).exists()
    deleted = AuditEvent.objects.get(action="user_deleted")
    assert (deleted.actor, deleted.object_id) == (superuser_sam, str(other.pk))


# --- a policy naming no app: an approver for each app's requests ---------------------------------
# Such a policy governs every app's requests, and an approver decides one of an app they have access
# to: a user whose going leaves some app with no approver of it who may decide there strands it.


def _policy_of_every_app(admin, *approvers, name="Every app"):
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate

    policy = ApprovalPolicy.objects.create(name=name, app_ids=[], applies_to_campaigns=True)
    policy.approver_users.set(approvers)
    approval_policy_activate(policy_id=policy.pk, by=admin)
    return policy


@pytest.mark.parametrize("change", STRANDING_CHANGES, ids=list(STRANDING_CHANGES))
def test_a_change_leaving_an_app_with_no_approver_of_a_policy_naming_no_app_is_refused(
    client, admin_erin, approver_bob, shop, bank, change
):
    approver_fay = UserFactory(username="approver_fay", role="Approver")
    access_grant(obj=shop, to=approver_bob, by=admin_erin)  # bob alone decides Shop's requests
    access_grant(obj=bank, to=approver_fay, by=admin_erin)
    _policy_of_every_app(admin_erin, approver_bob, approver_fay)
    before, events = _account(approver_bob), AuditEvent.objects.count()
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{approver_bob.pk}/change/"
    answer = client.post(url, change_form(approver_bob, email="new@example.test", **STRANDING_CHANGES[change]))
    page = html.unescape(client.get(answer.url).content.decode()) if answer.status_code == 302 else ""
    assert "'Every app'" in page and f"access to the app '{shop}'" in page and "not saved" in page
    assert "changed successfully" not in page
    assert _account(approver_bob) == before
    assert AuditEvent.objects.count() == events


def test_deleting_an_app_s_only_approver_of_a_policy_naming_no_app_is_refused(
    client, admin_erin, approver_bob, shop, bank
):
    approver_fay = UserFactory(username="approver_fay", role="Approver")
    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    access_grant(obj=bank, to=approver_fay, by=admin_erin)
    _policy_of_every_app(admin_erin, approver_bob, approver_fay)
    client.force_login(admin_erin)
    answer = client.post(f"/admin/accounts/user/{approver_bob.pk}/delete/", {"post": "yes"}, follow=True)
    page = html.unescape(answer.content.decode())
    assert "'Every app'" in page and f"access to the app '{shop}'" in page and "not deleted" in page
    assert User.objects.filter(pk=approver_bob.pk).exists()


@pytest.mark.parametrize("change", STRANDING_CHANGES, ids=list(STRANDING_CHANGES))
def test_a_policy_naming_no_app_lets_a_change_through_while_each_app_keeps_an_approver(
    client, admin_erin, approver_bob, shop, bank, change
):
    """Fay decides both apps' requests; an app none of its approvers had access to strands nothing more."""
    approver_fay = UserFactory(username="approver_fay", role="Approver")
    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    access_grant(obj=shop, to=approver_fay, by=admin_erin)
    _policy_of_every_app(admin_erin, approver_bob, approver_fay)  # nobody of it has access to Bank
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{approver_bob.pk}/change/"
    assert client.post(url, change_form(approver_bob, **STRANDING_CHANGES[change])).status_code == 302
    bob = User.objects.get(pk=approver_bob.pk)
    assert (bob.is_active, bob.role_names()) != (True, ["Approver"])


# --- a group a policy names as its approvers ----------------------------------------------------


def _policy_naming_group(admin, app, group, *approvers, name="Shop marketing"):
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate

    policy = ApprovalPolicy.objects.create(name=name, app_ids=[app.pk], applies_to_campaigns=True)
    policy.approver_users.set(approvers)
    policy.approver_groups.set([group])
    approval_policy_activate(policy_id=policy.pk, by=admin)
    return policy


@pytest.fixture
def shop_reviewers(approver_bob, shop, admin_erin):
    """A team whose one member, approver_bob, has access to Shop."""
    team = Group.objects.create(name="Shop reviewers")
    approver_bob.groups.add(team)
    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    return team


def test_deleting_the_group_that_is_an_active_policy_s_only_approver_is_refused_naming_it(
    client, admin_erin, viewer_carol, shop, shop_reviewers
):
    _policy_naming_group(admin_erin, shop, shop_reviewers)
    events = AuditEvent.objects.count()
    url = f"/admin/auth/group/{shop_reviewers.pk}/delete/"
    client.force_login(viewer_carol)
    assert client.post(url, {"post": "yes"}).status_code in (302, 403, 404)
    assert Group.objects.filter(pk=shop_reviewers.pk).exists()

    client.force_login(admin_erin)
    answer = client.post(url, {"post": "yes"}, follow=True)
    page = html.unescape(answer.content.decode())
    assert answer.status_code == 200 and "'Shop marketing'" in page and "could not be decided" in page
    assert "Deleting the group Shop reviewers" in page and "not deleted" in page
    assert "deleted successfully" not in page
    assert Group.objects.filter(pk=shop_reviewers.pk).exists()
    assert shop_reviewers.user_set.count() == 1
    assert AuditEvent.objects.count() == events


def test_deleting_a_policy_s_group_goes_through_while_another_approver_may_decide(
    client, admin_erin, approver_bob, shop, shop_reviewers
):
    approver_fay = UserFactory(username="approver_fay", role="Approver")
    access_grant(obj=shop, to=approver_fay, by=admin_erin)
    policy = _policy_naming_group(admin_erin, shop, shop_reviewers, approver_fay)
    client.force_login(admin_erin)
    assert client.post(f"/admin/auth/group/{shop_reviewers.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Group.objects.filter(pk=shop_reviewers.pk).exists()
    assert not policy.approver_groups.exists()
    deleted = AuditEvent.objects.get(action="group_deleted")
    assert (deleted.actor, deleted.object_id) == (admin_erin, str(shop_reviewers.pk))


def test_group_delete_refuses_a_policy_s_only_approvers_and_anyone_but_an_administrator(
    admin_erin, manager_alice, shop, shop_reviewers
):
    from django.core.exceptions import PermissionDenied, ValidationError

    from accounts.services import group_delete

    _policy_naming_group(admin_erin, shop, shop_reviewers)
    with pytest.raises(PermissionDenied):
        group_delete(group_id=shop_reviewers.pk, by=manager_alice)
    with pytest.raises(ValidationError, match="Deleting the group Shop reviewers .* 'Shop marketing'"):
        group_delete(group_id=shop_reviewers.pk, by=admin_erin)
    assert Group.objects.filter(pk=shop_reviewers.pk).exists()


@pytest.mark.presses("auth.group:delete_selected")
def test_delete_selected_groups_deletes_the_others_and_names_a_policy_s_group_not_deleted(
    client, admin_erin, viewer_carol, shop, shop_reviewers
):
    policy = _policy_naming_group(admin_erin, shop, shop_reviewers)
    night_shift = Group.objects.create(name="Night shift")
    chosen = {"action": "delete_selected", "_selected_action": [shop_reviewers.pk, night_shift.pk], "post": "yes"}
    client.force_login(viewer_carol)
    assert client.post("/admin/auth/group/", chosen).status_code in (302, 403)
    assert Group.objects.filter(pk__in=chosen["_selected_action"]).count() == 2

    client.force_login(admin_erin)
    answer = client.post("/admin/auth/group/", chosen, follow=True)
    said = [html.unescape(str(m)) for m in answer.context["messages"]]
    assert list(Group.objects.filter(pk__in=chosen["_selected_action"])) == [shop_reviewers]
    refused = [m for m in said if m.startswith("Shop reviewers: ")]
    assert len(refused) == 1 and "'Shop marketing'" in refused[0] and "not deleted" in refused[0]
    assert "1 group deleted." in said and not any("Successfully deleted" in m for m in said)
    assert list(policy.approver_groups.all()) == [shop_reviewers]
    assert list(
        AuditEvent.objects.filter(action="group_deleted", actor=admin_erin).values_list("object_id", flat=True)
    ) == [str(night_shift.pk)]


def test_the_user_page_keeps_the_groups_its_roles_field_does_not_offer(
    client, admin_erin, approver_bob, shop_reviewers
):
    """The page offers roles alone: a save keeps the user's teams, never taking them out unseen."""
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{approver_bob.pk}/change/"
    answer = client.post(url, change_form(approver_bob, roles=["Approver", "Viewer"], email="new@example.test"))
    assert answer.status_code == 302
    bob = User.objects.get(pk=approver_bob.pk)
    assert sorted(bob.groups.values_list("name", flat=True)) == ["Approver", "Shop reviewers", "Viewer"]
    assert AuditEvent.objects.get(action="roles_changed").summary == {"roles": ["Approver", "Viewer"]}


def test_saving_the_page_of_a_policy_s_group_member_keeps_the_group_and_saves(
    client, admin_erin, approver_bob, shop, shop_reviewers
):
    policy = _policy_naming_group(admin_erin, shop, shop_reviewers)
    client.force_login(admin_erin)
    url = f"/admin/accounts/user/{approver_bob.pk}/change/"
    answer = client.post(url, change_form(approver_bob, roles=["Approver"], email="new@example.test"))
    assert answer.status_code == 302 and "not saved" not in html.unescape(client.get(answer.url).content.decode())
    bob = User.objects.get(pk=approver_bob.pk)
    assert bob.email == "new@example.test" and list(shop_reviewers.user_set.all()) == [bob]
    assert list(policy.approver_groups.all()) == [shop_reviewers]
    assert not AuditEvent.objects.filter(action="roles_changed").exists()


def test_a_team_s_page_offers_no_permissions_and_a_posted_one_changes_nothing(
    client, admin_erin, viewer_carol, shop_reviewers
):
    """A team carries no permissions, its members doing what their roles allow: its page says so
    and offers none; a role's page shows its permissions read-only."""
    from django.contrib.auth.models import Permission

    decide = Permission.objects.filter(codename__in=["decide_approvalrequest", "approve_campaign"])
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    client.force_login(viewer_carol)
    assert client.post(url, {"name": "Renamed", "permissions": [p.pk for p in decide]}).status_code in (403, 404)

    client.force_login(admin_erin)
    answer = client.get(url)
    assert "permissions" not in answer.context["adminform"].form.fields
    assert "a team&#x27;s members do what their roles allow" in answer.content.decode()
    posted = {**team_form(shop_reviewers, members=list(shop_reviewers.user_set.all())), "name": "Renamed"}
    assert client.post(url, {**posted, "permissions": [p.pk for p in decide]}).status_code == 302
    shop_reviewers.refresh_from_db()
    assert shop_reviewers.name == "Renamed" and not shop_reviewers.permissions.exists()

    role = client.get(f"/admin/auth/group/{Group.objects.get(name='Approver').pk}/change/")
    assert "permissions" not in role.context["adminform"].form.fields
    assert "Can approve or request changes" in html.unescape(role.content.decode())


# --- a team's members, set on its page ----------------------------------------------------------


def team_form(team: Group, *, members: list[User], shown: list[User] | None = None, **changes) -> dict:
    """The team page's form as the browser posts it: its name, its members, and (``shown``) the
    members the page showed when drawn, which it posts back with them."""
    data = {
        "name": team.name,
        "members": [user.pk for user in members],
    }
    if shown is not None:
        data["initial-members"] = [*(user.pk for user in shown), ""]
    data.update(changes)
    return data


def _sees_segment(client, user: User, segment) -> bool:
    """Whether ``user`` reaches the segment's page, as they would in the admin."""
    client.force_login(user)
    return client.get(f"/admin/audiences/segment/{segment.pk}/change/").status_code == 200


@pytest.fixture
def granted_segment(admin_erin, shop_reviewers):
    """A segment granted to the Shop reviewers team alone."""
    from tests.factories import SegmentFactory

    segment = SegmentFactory(name="Shop loyal buyers")
    access_grant(obj=segment, to=shop_reviewers, by=admin_erin)
    return segment


def test_an_administrator_adds_a_team_member_on_its_page_who_then_sees_what_the_team_was_granted(
    client, admin_erin, approver_bob, viewer_carol, shop_reviewers, granted_segment
):
    from audiences.models import Segment

    assert not _sees_segment(client, viewer_carol, granted_segment)
    client.force_login(admin_erin)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    answer = client.post(url, team_form(shop_reviewers, members=[approver_bob, viewer_carol]))
    assert answer.status_code == 302
    assert sorted(shop_reviewers.user_set.values_list("username", flat=True)) == ["approver_bob", "viewer_carol"]
    carol = User.objects.get(pk=viewer_carol.pk)
    assert list(visible_to(carol, Segment.objects.all())) == [granted_segment]
    assert _sees_segment(client, carol, granted_segment)
    event = AuditEvent.objects.get(action="team_members_changed")
    assert (event.actor, event.object_id) == (admin_erin, str(shop_reviewers.pk))
    assert event.summary == {"added": ["viewer_carol"], "removed": []}


def test_an_administrator_takes_a_member_out_of_a_team_who_then_no_longer_sees_what_it_was_granted(
    client, admin_erin, approver_bob, viewer_carol, shop_reviewers, granted_segment
):
    from audiences.models import Segment

    viewer_carol.groups.add(shop_reviewers)
    assert _sees_segment(client, viewer_carol, granted_segment)
    client.force_login(admin_erin)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    assert client.post(url, team_form(shop_reviewers, members=[approver_bob])).status_code == 302
    assert list(shop_reviewers.user_set.all()) == [approver_bob]
    carol = User.objects.get(pk=viewer_carol.pk)
    assert not visible_to(carol, Segment.objects.all()).exists()
    assert not _sees_segment(client, carol, granted_segment)
    event = AuditEvent.objects.get(action="team_members_changed")
    assert event.actor == admin_erin and event.summary == {"added": [], "removed": ["viewer_carol"]}


def test_a_save_leaving_a_team_s_members_as_they_were_audits_no_change_of_members(
    client, admin_erin, approver_bob, shop_reviewers
):
    client.force_login(admin_erin)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    assert client.post(url, team_form(shop_reviewers, members=[approver_bob], name="Shop checkers")).status_code == 302
    assert Group.objects.get(pk=shop_reviewers.pk).name == "Shop checkers"
    assert list(shop_reviewers.user_set.all()) == [approver_bob]
    assert not AuditEvent.objects.filter(action="team_members_changed").exists()
    assert AuditEvent.objects.filter(action="group_changed", object_id=str(shop_reviewers.pk)).exists()


def test_taking_a_policy_s_only_approver_out_of_its_team_is_refused_with_nothing_of_the_page_saved(
    client, admin_erin, approver_bob, viewer_carol, shop, shop_reviewers
):
    _policy_naming_group(admin_erin, shop, shop_reviewers)
    events = AuditEvent.objects.count()
    client.force_login(admin_erin)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    answer = client.post(url, team_form(shop_reviewers, members=[viewer_carol], name="Shop checkers"), follow=True)
    page = html.unescape(answer.content.decode())
    assert "Taking approver_bob out of the team Shop reviewers" in page and "'Shop marketing'" in page
    assert "could not be decided" in page and "not saved" in page and "changed successfully" not in page
    team = Group.objects.get(pk=shop_reviewers.pk)
    assert team.name == "Shop reviewers" and list(team.user_set.all()) == [approver_bob]  # carol not added either
    assert AuditEvent.objects.count() == events


def test_a_policy_s_only_approver_is_replaced_in_its_team_by_another_approver_in_one_save(
    client, admin_erin, approver_bob, shop, shop_reviewers
):
    approver_fay = UserFactory(username="approver_fay", role="Approver")
    access_grant(obj=shop, to=approver_fay, by=admin_erin)
    _policy_naming_group(admin_erin, shop, shop_reviewers)
    client.force_login(admin_erin)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    assert client.post(url, team_form(shop_reviewers, members=[approver_fay])).status_code == 302
    assert list(shop_reviewers.user_set.all()) == [approver_fay]
    assert AuditEvent.objects.get(action="team_members_changed").summary == {
        "added": ["approver_fay"],
        "removed": ["approver_bob"],
    }


@pytest.mark.parametrize("role_user", ["manager_alice", "approver_bob", "viewer_carol"])
def test_roles_that_may_not_change_groups_cannot_change_a_team_s_members(
    request, client, admin_erin, manager_mallory, shop_reviewers, granted_segment, role_user
):
    from django.core.exceptions import PermissionDenied

    from accounts.services import team_members_set

    member = request.getfixturevalue(role_user)
    client.force_login(member)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    assert client.get(url).status_code in (403, 404)
    answer = client.post(url, team_form(shop_reviewers, members=[member, manager_mallory]))
    assert answer.status_code in (403, 404)
    with pytest.raises(PermissionDenied):
        team_members_set(group_id=shop_reviewers.pk, members=[member, manager_mallory], by=member)
    assert sorted(shop_reviewers.user_set.values_list("username", flat=True)) == ["approver_bob"]
    assert not _sees_segment(client, manager_mallory, granted_segment)
    assert not AuditEvent.objects.filter(action="team_members_changed").exists()


def test_the_members_field_offers_active_users_with_a_role_and_the_team_s_own_members(
    client, admin_erin, approver_bob, viewer_carol, outsider_dave, shop_reviewers
):
    gone = UserFactory(username="gone_gus", role="Manager", is_active=False)
    left = UserFactory(username="left_lea", role="Viewer", is_active=False)
    left.groups.add(shop_reviewers)
    client.force_login(admin_erin)
    answer = client.get(f"/admin/auth/group/{shop_reviewers.pk}/change/")
    field = answer.context["adminform"].form.fields["members"]
    offered = set(field.queryset.values_list("username", flat=True))
    assert {"admin_erin", "approver_bob", "viewer_carol", "left_lea"} <= offered
    assert gone.username not in offered and outsider_dave.username not in offered
    assert set(answer.context["adminform"].form.initial["members"]) == {approver_bob.pk, left.pk}
    # The add page offers them too: a team is made with its members.
    answer = client.post(
        "/admin/auth/group/add/", {"name": "Night shift", "permissions": [], "members": [viewer_carol.pk]}
    )
    assert answer.status_code == 302
    assert list(Group.objects.get(name="Night shift").user_set.all()) == [viewer_carol]
    assert AuditEvent.objects.get(action="team_members_changed").summary == {"added": ["viewer_carol"], "removed": []}


def test_a_role_s_page_shows_its_members_read_only_and_its_save_changes_none(
    client, admin_erin, approver_bob, viewer_carol
):
    viewers = Group.objects.get(name="Viewer")
    client.force_login(admin_erin)
    url = f"/admin/auth/group/{viewers.pk}/change/"
    page = html.unescape(client.get(url).content.decode())
    assert "members" not in client.get(url).context["adminform"].form.fields
    listed = f"/admin/accounts/user/?groups__id__exact={viewers.pk}"
    assert listed in page and "1 user" in page
    assert list(client.get(listed).context["cl"].result_list) == [viewer_carol]
    assert client.post(url, {"members": [approver_bob.pk]}).status_code == 302
    assert list(viewers.user_set.all()) == [viewer_carol]
    assert not AuditEvent.objects.filter(action="team_members_changed").exists()


def test_team_members_set_refuses_a_role_and_a_policy_s_only_approver_taken_out(
    admin_erin, approver_bob, viewer_carol, shop, shop_reviewers
):
    from django.core.exceptions import ValidationError

    from accounts.services import team_members_set

    with pytest.raises(ValidationError, match="Approver is a role"):
        team_members_set(group_id=Group.objects.get(name="Approver").pk, members=[viewer_carol], by=admin_erin)
    _policy_naming_group(admin_erin, shop, shop_reviewers)
    with pytest.raises(ValidationError, match="Taking approver_bob out of the team Shop reviewers .* 'Shop marketing'"):
        team_members_set(group_id=shop_reviewers.pk, members=[viewer_carol], by=admin_erin)
    assert list(shop_reviewers.user_set.all()) == [approver_bob]
    assert list(Group.objects.get(name="Approver").user_set.all()) == [approver_bob]


def test_the_users_list_and_page_name_a_user_s_roles_and_teams_apart(client, admin_erin, approver_bob, shop_reviewers):
    client.force_login(admin_erin)
    answer = client.get("/admin/accounts/user/?q=approver_bob")
    row = html.unescape(answer.content.decode().split('class="field-roles"', 1)[1].split("</tr>", 1)[0])
    assert row.split("<", 1)[0] == ">Approver" and ">Shop reviewers<" in row  # the Teams column, not the roles
    page = html.unescape(client.get(f"/admin/accounts/user/{approver_bob.pk}/change/").content.decode())
    assert f'href="/admin/auth/group/{shop_reviewers.pk}/change/">Shop reviewers</a>' in page


# --- membership saved by two pages at once ---------------------------------------------------------


def test_the_team_and_user_pages_post_back_the_members_and_roles_they_showed(
    client, admin_erin, approver_bob, shop_reviewers
):
    client.force_login(admin_erin)
    team_page = client.get(f"/admin/auth/group/{shop_reviewers.pk}/change/").content.decode()
    assert f'name="initial-members" value="{approver_bob.pk}"' in team_page
    user_page = client.get(f"/admin/accounts/user/{approver_bob.pk}/change/").content.decode()
    approver = Group.objects.get(name="Approver")
    assert f'name="initial-groups" value="{approver.pk}"' in user_page
    assert f'name="initial-groups" value="{shop_reviewers.pk}"' not in user_page  # a team is no role


@pytest.mark.django_db(transaction=True)
def test_two_administrators_adding_members_to_one_team_at_once_both_take_effect(
    admin_erin, approver_bob, viewer_carol, manager_alice, shop_reviewers
):
    """Each page showed approver_bob alone: each save adds its own member, neither taking out the
    other's (a save applies what its page changed, never the whole list it posts)."""
    import threading

    from django.test import Client

    from tests.locks import concurrently

    admin_fay = UserFactory(username="admin_fay", role="Administrator")
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    both_ready = threading.Barrier(2)
    answers = []

    def save(admin, member):
        client = Client()
        client.force_login(admin)
        both_ready.wait(10)
        form = team_form(shop_reviewers, members=[approver_bob, member], shown=[approver_bob])
        answers.append(client.post(url, form))

    errors = concurrently(lambda: save(admin_erin, viewer_carol), lambda: save(admin_fay, manager_alice))
    assert errors == [] and [answer.status_code for answer in answers] == [302, 302]
    assert sorted(shop_reviewers.user_set.values_list("username", flat=True)) == [
        "approver_bob",
        "manager_alice",
        "viewer_carol",
    ]
    changes = AuditEvent.objects.filter(action="team_members_changed").order_by("pk")
    assert sorted((event.actor.username, tuple(event.summary["added"])) for event in changes) == [
        ("admin_erin", ("viewer_carol",)),
        ("admin_fay", ("manager_alice",)),
    ]
    assert all(event.summary["removed"] == [] for event in changes)


@pytest.mark.django_db(transaction=True)
def test_a_user_s_page_saved_while_a_team_takes_them_out_leaves_them_out(
    admin_erin, approver_bob, viewer_carol, shop_reviewers
):
    """The user page's save reads the user's teams, then waits for the user's row, which a team's
    save holds while taking them out: once that commits, the user page changes the roles it
    changed, and puts no one back in a team."""
    import threading

    from django.db import transaction
    from django.test import Client

    from accounts.services import team_members_set
    from tests.locks import concurrently, wait_for_a_blocked_writer

    viewer_carol.groups.add(shop_reviewers)
    holding = threading.Event()
    answers = []

    def take_carol_out():
        with transaction.atomic():
            User.objects.select_for_update().get(pk=viewer_carol.pk)
            team_members_set(group_id=shop_reviewers.pk, members=[approver_bob], by=admin_erin)
            holding.set()
            assert wait_for_a_blocked_writer()

    def save_carols_page():
        client = Client()
        client.force_login(admin_erin)
        assert holding.wait(10)
        form = change_form(viewer_carol, roles=["Viewer", "Manager"])
        form["initial-groups"] = [Group.objects.get(name="Viewer").pk, ""]
        answers.append(client.post(f"/admin/accounts/user/{viewer_carol.pk}/change/", form))

    assert concurrently(take_carol_out, save_carols_page) == []
    assert answers[0].status_code == 302
    carol = User.objects.get(pk=viewer_carol.pk)
    assert sorted(carol.groups.values_list("name", flat=True)) == ["Manager", "Viewer"]
    assert list(shop_reviewers.user_set.all()) == [approver_bob]


def test_a_user_s_page_changes_the_roles_it_changed_and_keeps_one_given_since_it_was_drawn(
    client, admin_erin, viewer_carol
):
    """Drawn with Viewer alone, the page adds Manager; an Approver role given meanwhile stays."""
    viewer_carol.groups.add(Group.objects.get(name="Approver"))  # given after the page was drawn
    client.force_login(admin_erin)
    form = change_form(viewer_carol, roles=["Viewer", "Manager"])
    form["initial-groups"] = [Group.objects.get(name="Viewer").pk, ""]
    assert client.post(f"/admin/accounts/user/{viewer_carol.pk}/change/", form).status_code == 302
    carol = User.objects.get(pk=viewer_carol.pk)
    assert sorted(carol.groups.values_list("name", flat=True)) == ["Approver", "Manager", "Viewer"]
    assert AuditEvent.objects.get(action="roles_changed").summary == {"roles": ["Approver", "Manager", "Viewer"]}


def test_a_team_s_page_drawn_before_a_member_left_does_not_put_them_back(
    client, admin_erin, approver_bob, viewer_carol, manager_alice, shop_reviewers
):
    """The page showed bob and carol; carol was taken out since; its save adds alice, carol left out."""
    viewer_carol.groups.add(shop_reviewers)
    shown = [approver_bob, viewer_carol]
    viewer_carol.groups.remove(shop_reviewers)  # taken out after the page was drawn
    client.force_login(admin_erin)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    form = team_form(shop_reviewers, members=[*shown, manager_alice], shown=shown)
    assert client.post(url, form).status_code == 302
    assert sorted(shop_reviewers.user_set.values_list("username", flat=True)) == ["approver_bob", "manager_alice"]
    assert AuditEvent.objects.get(action="team_members_changed").summary == {"added": ["manager_alice"], "removed": []}


def test_user_roles_change_gives_and_takes_roles_alone_and_only_for_an_administrator(
    admin_erin, manager_alice, viewer_carol, superuser_sam, shop_reviewers
):
    from django.core.exceptions import PermissionDenied, ValidationError

    from accounts.services import user_roles_change

    manager, viewer = Group.objects.get(name="Manager"), Group.objects.get(name="Viewer")
    with pytest.raises(PermissionDenied):
        user_roles_change(user_id=viewer_carol.pk, add=[manager], by=manager_alice)
    with pytest.raises(PermissionDenied, match="superuser"):
        user_roles_change(user_id=superuser_sam.pk, add=[manager], by=admin_erin)
    with pytest.raises(ValidationError, match="Only roles"):
        user_roles_change(user_id=viewer_carol.pk, add=[shop_reviewers], by=admin_erin)
    assert sorted(viewer_carol.groups.values_list("name", flat=True)) == ["Viewer"]
    assert user_roles_change(user_id=viewer_carol.pk, add=[manager], remove=[viewer], by=admin_erin)
    assert not user_roles_change(user_id=viewer_carol.pk, add=[manager], remove=[viewer], by=admin_erin)
    assert sorted(viewer_carol.groups.values_list("name", flat=True)) == ["Manager"]


# --- a superuser's teams -------------------------------------------------------------------------


@pytest.fixture
def root_rita(db):
    """A superuser who also holds the Approver role, so a team's page offers her."""
    return UserFactory(username="root_rita", role="Approver", is_superuser=True)


def test_an_administrator_cannot_put_a_superuser_in_or_out_of_a_team_and_the_page_says_why(
    client, admin_erin, approver_bob, viewer_carol, root_rita, shop_reviewers
):
    client.force_login(admin_erin)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    answer = client.post(url, team_form(shop_reviewers, members=[approver_bob, root_rita], shown=[approver_bob]))
    assert answer.status_code == 200
    assert answer.context["adminform"].form.errors["members"] == [
        "Only a superuser puts a superuser in a team or takes them out of one: root_rita."
    ]
    assert list(shop_reviewers.user_set.all()) == [approver_bob]

    root_rita.groups.add(shop_reviewers)
    shown = [approver_bob, root_rita]
    answer = client.post(url, team_form(shop_reviewers, members=[approver_bob, viewer_carol], shown=shown))
    assert answer.status_code == 200 and "root_rita" in answer.context["adminform"].form.errors["members"][0]
    assert sorted(shop_reviewers.user_set.values_list("username", flat=True)) == ["approver_bob", "root_rita"]
    # Other members are changed as before, the superuser kept.
    answer = client.post(url, team_form(shop_reviewers, members=[*shown, viewer_carol], shown=shown))
    assert answer.status_code == 302
    assert sorted(shop_reviewers.user_set.values_list("username", flat=True)) == [
        "approver_bob",
        "root_rita",
        "viewer_carol",
    ]
    assert not AuditEvent.objects.filter(action="team_members_changed", summary__added__contains=["root_rita"]).exists()


def test_team_members_change_refuses_an_administrator_a_superuser_and_lets_a_superuser(
    admin_erin, superuser_sam, approver_bob, root_rita, shop_reviewers
):
    from django.core.exceptions import PermissionDenied

    from accounts.services import team_members_change, team_members_set

    with pytest.raises(PermissionDenied, match="root_rita"):
        team_members_change(group_id=shop_reviewers.pk, add=[root_rita], by=admin_erin)
    with pytest.raises(PermissionDenied, match="root_rita"):
        team_members_set(group_id=shop_reviewers.pk, members=[approver_bob, root_rita], by=admin_erin)
    assert list(shop_reviewers.user_set.all()) == [approver_bob]
    assert team_members_change(group_id=shop_reviewers.pk, add=[root_rita], by=superuser_sam) == (["root_rita"], [])
    with pytest.raises(PermissionDenied, match="root_rita"):
        team_members_change(group_id=shop_reviewers.pk, remove=[root_rita], by=admin_erin)
    assert team_members_change(group_id=shop_reviewers.pk, remove=[root_rita], by=superuser_sam) == ([], ["root_rita"])


def test_a_superuser_puts_a_superuser_in_a_team_on_its_page(
    client, superuser_sam, approver_bob, root_rita, shop_reviewers
):
    client.force_login(superuser_sam)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    form = team_form(shop_reviewers, members=[approver_bob, root_rita], shown=[approver_bob])
    assert client.post(url, form).status_code == 302
    assert sorted(shop_reviewers.user_set.values_list("username", flat=True)) == ["approver_bob", "root_rita"]


@pytest.mark.parametrize("forged", ["abc", "9" * 30, "-1", "٣"])
def test_a_forged_list_of_the_members_a_page_showed_is_an_error_on_the_field_changing_nothing(
    client, admin_erin, approver_bob, viewer_carol, shop_reviewers, forged
):
    client.force_login(admin_erin)
    url = f"/admin/auth/group/{shop_reviewers.pk}/change/"
    form = team_form(shop_reviewers, members=[viewer_carol], **{"initial-members": [str(approver_bob.pk), forged]})
    answer = client.post(url, form)
    assert answer.status_code == 200
    [error] = answer.context["adminform"].form.errors["members"]
    assert error.startswith("The members the page showed are ids of rows:")
    assert list(shop_reviewers.user_set.all()) == [approver_bob]
    user_url = f"/admin/accounts/user/{viewer_carol.pk}/change/"
    answer = client.post(user_url, {**change_form(viewer_carol, roles=["Manager"]), "initial-groups": [forged]})
    assert answer.status_code == 200 and "groups" in answer.context["adminform"].form.errors
    assert sorted(User.objects.get(pk=viewer_carol.pk).groups.values_list("name", flat=True)) == ["Viewer"]


@pytest.mark.django_db(transaction=True)
def test_two_teams_taking_out_a_policy_s_last_two_approvers_at_once_refuse_one(
    admin_erin, approver_bob, shop, monkeypatch
):
    """A policy names two teams, each with one approver: taking each out of their team at the same
    time, each change alone leaves the other to decide; one waits for the other and is refused."""
    import threading

    from django.core.exceptions import ValidationError

    from accounts import services
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate, team_members_change
    from tests.locks import concurrently

    approver_fay = UserFactory(username="approver_fay", role="Approver")
    teams = [Group.objects.create(name=name) for name in ("Shop reviewers", "Shop legal")]
    for approver, team in zip((approver_bob, approver_fay), teams, strict=True):
        approver.groups.add(team)
        access_grant(obj=shop, to=approver, by=admin_erin)
    policy = ApprovalPolicy.objects.create(name="Shop marketing", app_ids=[shop.pk], applies_to_campaigns=True)
    policy.approver_groups.set(teams)
    approval_policy_activate(policy_id=policy.pk, by=admin_erin)

    # Each change is made before the other checks what it left: both wait here, after their change.
    both_changed, calls = threading.Barrier(2), threading.local()
    problems = services._active_policy_problems

    def checked_once_both_changed(*args, **kwargs):
        calls.n = getattr(calls, "n", 0) + 1
        if calls.n == 2:
            try:
                both_changed.wait(3)
            except threading.BrokenBarrierError:  # the other waits for this one's commit
                pass
        return problems(*args, **kwargs)

    monkeypatch.setattr(services, "_active_policy_problems", checked_once_both_changed)
    errors = concurrently(
        lambda: team_members_change(group_id=teams[0].pk, remove=[approver_bob], by=admin_erin),
        lambda: team_members_change(group_id=teams[1].pk, remove=[approver_fay], by=admin_erin),
    )
    monkeypatch.setattr(services, "_active_policy_problems", problems)
    assert [type(error) for error in errors] == [ValidationError]
    assert "'Shop marketing'" in str(errors[0])
    left = sorted(team.name for team in teams if team.user_set.exists())
    assert len(left) == 1
    assert not services._active_policy_problems()


@pytest.mark.django_db(transaction=True)
def test_a_team_and_a_user_s_page_taking_a_policy_s_last_two_deciders_at_once_refuse_one(
    admin_erin, approver_bob, shop, monkeypatch
):
    """A policy names approver_bob (access of his own) and approver_fay (access through a team):
    fay taken out of the team while bob's page makes him a Manager, at the same time; one of the
    two waits for the other and is refused, and the policy keeps someone to decide."""
    import threading

    from django.core.exceptions import ValidationError
    from django.test import Client

    from accounts import services
    from accounts.services import team_members_change
    from tests.locks import concurrently

    approver_fay = UserFactory(username="approver_fay", role="Approver")
    team = Group.objects.create(name="Shop reviewers")
    approver_fay.groups.add(team)
    access_grant(obj=shop, to=team, by=admin_erin)
    access_grant(obj=shop, to=approver_bob, by=admin_erin)
    _policy_naming(admin_erin, shop, approver_bob, approver_fay)
    both_changed, calls = threading.Barrier(2), threading.local()
    problems = services._active_policy_problems

    def checked_once_both_changed(*args, **kwargs):
        calls.n = getattr(calls, "n", 0) + 1
        if calls.n == 2:
            try:
                both_changed.wait(3)
            except threading.BrokenBarrierError:  # the other waits for this one's commit
                pass
        return problems(*args, **kwargs)

    monkeypatch.setattr(services, "_active_policy_problems", checked_once_both_changed)
    pages = []

    def make_bob_a_manager():
        client = Client()
        client.force_login(admin_erin)
        url = f"/admin/accounts/user/{approver_bob.pk}/change/"
        answer = client.post(url, change_form(approver_bob, roles=["Manager"]))
        pages.append(html.unescape(client.get(answer.url).content.decode()))

    errors = concurrently(
        lambda: team_members_change(group_id=team.pk, remove=[approver_fay], by=admin_erin), make_bob_a_manager
    )
    monkeypatch.setattr(services, "_active_policy_problems", problems)
    refused_page = "could not be decided" in pages[0]
    assert [type(error) for error in errors] == ([] if refused_page else [ValidationError])
    bob_kept = User.objects.get(pk=approver_bob.pk).role_names() == ["Approver"]
    fay_kept = team.user_set.filter(pk=approver_fay.pk).exists()
    assert (bob_kept, fay_kept) in ((True, False), (False, True))
    assert not services._active_policy_problems()


@pytest.mark.django_db(transaction=True)
def test_a_policy_activated_while_a_team_takes_out_its_only_decider_refuses_one_of_the_two(
    admin_erin, approver_bob, shop, monkeypatch
):
    """The activation checks approver_bob may decide (through his team) while the team takes him
    out, which checks only the policies active: one waits for the other and is refused."""
    import threading

    from django.core.exceptions import ValidationError

    from accounts import services
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate, team_members_change
    from tests.locks import concurrently

    team = Group.objects.create(name="Shop reviewers")
    approver_bob.groups.add(team)
    access_grant(obj=shop, to=team, by=admin_erin)
    policy = ApprovalPolicy.objects.create(name="Shop marketing", app_ids=[shop.pk], applies_to_campaigns=True)
    policy.approver_users.set([approver_bob])
    both_checked, calls = threading.Barrier(2), threading.local()
    approver_problems, active_problems = services.policy_approver_problems, services._active_policy_problems

    def meet():
        try:
            both_checked.wait(3)
        except threading.BrokenBarrierError:  # the other waits for this one's commit
            pass

    def activation_checked(*args, **kwargs):
        found = approver_problems(*args, **kwargs)
        if getattr(calls, "activating", False):
            meet()
        return found

    def removal_checked(*args, **kwargs):
        calls.n = getattr(calls, "n", 0) + 1
        if calls.n == 2:
            meet()
        return active_problems(*args, **kwargs)

    monkeypatch.setattr(services, "policy_approver_problems", activation_checked)
    monkeypatch.setattr(services, "_active_policy_problems", removal_checked)

    def activate():
        calls.activating = True
        approval_policy_activate(policy_id=policy.pk, by=admin_erin)

    errors = concurrently(activate, lambda: team_members_change(group_id=team.pk, remove=[approver_bob], by=admin_erin))
    monkeypatch.setattr(services, "policy_approver_problems", approver_problems)
    monkeypatch.setattr(services, "_active_policy_problems", active_problems)
    assert [type(error) for error in errors] == [ValidationError]
    assert not services._active_policy_problems()
