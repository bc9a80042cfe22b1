"""Each role's permissions, as the roles table says, checked through the admin's HTTP endpoints."""

import pytest

from accounts.models import User
from accounts.roles import ROLES, role_permissions
from delivery.models import App
from tests.factories import AppFactory

APP_FORM = {"rate_limit_per_second": 100, "apns_environment": "production"}
ROLE_USERS = {
    "Administrator": "admin_erin",
    "Approver": "approver_bob",
    "Manager": "manager_alice",
    "Viewer": "viewer_carol",
}


@pytest.fixture
def as_role(request, client, db):
    def login(role):
        user = request.getfixturevalue(ROLE_USERS[role])
        client.force_login(user)
        return user

    return login


@pytest.mark.parametrize("role", ROLES)
def test_every_role_reaches_the_admin(client, as_role, role):
    as_role(role)
    assert client.get("/admin/").status_code == 200


@pytest.mark.parametrize(
    ("role", "allowed"), [("Administrator", True), ("Approver", False), ("Manager", False), ("Viewer", False)]
)
def test_only_administrators_create_apps(client, as_role, role, allowed):
    as_role(role)
    response = client.post("/admin/delivery/app/add/", {**APP_FORM, "name": "New app"})
    assert (response.status_code == 302) is allowed
    if not allowed:
        assert response.status_code == 403
    assert App.objects.filter(name="New app").exists() is allowed


@pytest.mark.parametrize(
    ("role", "allowed"), [("Administrator", True), ("Approver", False), ("Manager", False), ("Viewer", False)]
)
def test_only_administrators_change_and_delete_apps(client, as_role, role, allowed):
    from accounts.services import access_grant

    user = as_role(role)
    app = AppFactory(name="Shop")
    access_grant(obj=app, to=user, by=None)
    change = client.post(f"/admin/delivery/app/{app.pk}/change/", {**APP_FORM, "name": "Renamed"})
    assert (change.status_code == 302) is allowed
    assert App.objects.filter(name="Renamed").exists() is allowed
    delete = client.post(f"/admin/delivery/app/{app.pk}/delete/", {"post": "yes"})
    assert (delete.status_code == 302) is allowed
    if not allowed:
        assert change.status_code == 403 and delete.status_code == 403


@pytest.mark.parametrize(
    ("role", "allowed"), [("Administrator", True), ("Approver", False), ("Manager", False), ("Viewer", False)]
)
def test_only_administrators_manage_users_and_roles(client, as_role, role, allowed):
    as_role(role)
    response = client.post(
        "/admin/accounts/user/add/",
        {
            "username": "newbie",
            "password1": "a-long-pass-phrase-1",
            "password2": "a-long-pass-phrase-1",
            "usable_password": "true",
        },
    )
    assert User.objects.filter(username="newbie").exists() is allowed
    assert (client.get("/admin/auth/group/").status_code == 200) is allowed
    if not allowed:
        assert response.status_code == 403


def test_administrator_cannot_make_a_superuser(client, admin_erin, viewer_carol):
    client.force_login(admin_erin)
    page = client.get(f"/admin/accounts/user/{viewer_carol.pk}/change/")
    assert b'name="is_superuser"' not in page.content


def test_role_permissions_are_read_only_in_the_admin(client, admin_erin):
    from django.contrib.auth.models import Group

    client.force_login(admin_erin)
    viewer = Group.objects.get(name="Viewer")
    before = set(viewer.permissions.values_list("pk", flat=True))
    client.post(f"/admin/auth/group/{viewer.pk}/change/", {"name": "Viewer", "permissions": []})
    assert set(viewer.permissions.values_list("pk", flat=True)) == before


@pytest.mark.parametrize("role", ROLES)
def test_role_groups_hold_exactly_the_table(db, role):
    from django.contrib.auth.models import Group

    group = Group.objects.get(name=role)
    held = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
    existing = {p for p in role_permissions(role) if _exists(p)}
    assert held == existing


def _exists(dotted):
    from django.contrib.auth.models import Permission

    app_label, codename = dotted.split(".")
    return Permission.objects.filter(content_type__app_label=app_label, codename=codename).exists()


@pytest.mark.parametrize(
    ("capability", "roles"),
    [
        ("view", {"Administrator", "Approver", "Manager", "Viewer"}),
        ("author", {"Administrator", "Approver", "Manager"}),
        ("submit", {"Administrator", "Approver", "Manager"}),
        ("approve", {"Administrator", "Approver"}),
        ("operate", {"Administrator", "Approver", "Manager"}),
        ("administer", {"Administrator"}),
        ("test_devices", {"Administrator"}),
    ],
)
def test_roles_table_matches_the_specification(capability, roles):
    from accounts.roles import CAPABILITIES

    assert set(CAPABILITIES[capability]["roles"]) == roles


def test_viewer_changes_nothing_anywhere_in_the_admin(client, as_role):
    """Every admin page a Viewer reaches is read-only: no add links, no save buttons."""
    user = as_role("Viewer")
    from accounts.services import access_grant

    app = AppFactory(name="Shop")
    access_grant(obj=app, to=user, by=None)
    index = client.get("/admin/models/")
    assert b"addlink" not in index.content
    page = client.get(f"/admin/delivery/app/{app.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content


def test_a_colleague_opening_an_owner_link_gets_a_read_only_card(client, manager_alice, viewer_carol, approver_bob):
    from accounts.services import access_grant
    from tests.factories import SegmentFactory

    manager_alice.email = "alice@example.com"
    manager_alice.save()
    client.force_login(viewer_carol)
    # Nothing of Alice's is in Carol's reach yet: her id answers as a missing one would.
    assert client.get(f"/admin/accounts/user/{manager_alice.pk}/change/").status_code == 404
    access_grant(obj=SegmentFactory(created_by=manager_alice), to=viewer_carol, by=None)
    assert client.get(f"/admin/accounts/user/{approver_bob.pk}/change/").status_code == 404
    page = client.get(f"/admin/accounts/user/{manager_alice.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert 'id="user-card"' in text and "alice@example.com" in text and "Manager" in text
    assert 'name="username"' not in text  # nothing to edit
    assert client.post(f"/admin/accounts/user/{manager_alice.pk}/change/", {"username": "x"}).status_code == 403


@pytest.mark.django_db(transaction=True)
def test_after_a_flush_each_role_holds_exactly_its_tables_permissions_set_once(monkeypatch):
    """Django sends post_migrate once per app (a migrate, and the flush between transactional
    tests): the roles are set once, after the last app's, with every app's permissions."""
    from django.contrib.auth.models import Group
    from django.core.management import call_command

    import accounts.roles

    calls = []
    sync = accounts.roles.roles_sync
    monkeypatch.setattr(accounts.roles, "roles_sync", lambda: calls.append(1) or sync())
    Group.objects.all().delete()
    call_command("flush", verbosity=0, interactive=False)
    assert calls == [1]
    for role in ROLES:
        held = {
            f"{app_label}.{codename}"
            for app_label, codename in Group.objects.get(name=role).permissions.values_list(
                "content_type__app_label", "codename"
            )
        }
        assert held == set(role_permissions(role)), role


def test_a_team_s_permissions_give_its_members_nothing_their_role_s_and_own_still_do(viewer_carol, approver_bob):
    """Group permissions are read from roles alone; a permission given to the user is kept."""
    from django.contrib.auth.models import Group, Permission

    team = Group.objects.create(name="Shop deciders")
    team.permissions.set(Permission.objects.filter(codename="decide_approvalrequest"))
    for user in (viewer_carol, approver_bob):
        user.groups.add(team)
    assert not User.objects.get(pk=viewer_carol.pk).has_perm("accounts.decide_approvalrequest")
    assert User.objects.get(pk=approver_bob.pk).has_perm("accounts.decide_approvalrequest")
    viewer_carol.user_permissions.add(Permission.objects.get(codename="decide_approvalrequest"))
    assert User.objects.get(pk=viewer_carol.pk).has_perm("accounts.decide_approvalrequest")


def test_who_holds_a_permission_is_read_from_roles_and_own_permissions_alone(viewer_carol, approver_bob):
    """``User.objects.with_perm`` through the permission backend agrees with ``has_perm``: a team's
    permissions give its members nothing."""
    from django.contrib.auth.models import Group, Permission

    decide = Permission.objects.get(codename="decide_approvalrequest")
    team = Group.objects.create(name="Shop deciders")
    team.permissions.set([decide])
    viewer_carol.groups.add(team)
    root = User.objects.create(username="root_rita", is_superuser=True)
    backend = "accounts.backends.RoleBackend"
    for perm in ("accounts.decide_approvalrequest", decide):
        holders = User.objects.with_perm(perm, backend=backend)
        assert sorted(holders.values_list("username", flat=True)) == ["approver_bob", "root_rita"]
        assert all(user.has_perm("accounts.decide_approvalrequest") for user in holders)
    assert list(User.objects.with_perm(decide, backend=backend, include_superusers=False)) == [approver_bob]
    viewer_carol.user_permissions.add(decide)
    assert set(User.objects.with_perm(decide, backend=backend)) == {approver_bob, viewer_carol, root}
    assert not User.objects.with_perm(decide, backend=backend, obj=team).exists()
