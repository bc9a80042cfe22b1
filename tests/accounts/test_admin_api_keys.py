import re

import pytest

from accounts.models import ApiKey, AuditEvent
from tests.factories import TEST_PASSWORD


def test_key_is_shown_once_on_creation_in_the_admin(client, manager_alice):
    client.force_login(manager_alice)
    response = client.post(
        "/admin/accounts/apikey/add/",
        {
            "user": manager_alice.pk,
            "name": "mobile backend",
            "scopes": ["ingest", "read"],
            "expires_at_0": "",
            "expires_at_1": "",
        },
    )
    assert response.status_code == 200, response.content[:2000]
    raw = re.search(rb'id="new-api-key"[^>]*>([^<]+)<', response.content).group(1).decode()
    key = ApiKey.objects.get(user=manager_alice)
    assert key.matches(raw)
    assert "no-store" in response["Cache-Control"]
    # The key page never shows it again.
    page = client.get(f"/admin/accounts/apikey/{key.pk}/change/")
    assert page.status_code == 200
    assert raw.encode() not in page.content
    assert raw.encode() not in client.get("/admin/accounts/apikey/").content
    assert AuditEvent.objects.filter(action="api_key_created", object_id=str(key.pk)).exists()
    assert raw not in str(AuditEvent.objects.get(action="api_key_created").summary)


def test_manager_sees_only_own_keys(client, manager_alice, manager_mallory, admin_erin):
    from accounts.services import api_key_create

    mine, _ = api_key_create(user=manager_alice, name="mine", scopes=["read"], by=manager_alice)
    theirs, _ = api_key_create(user=manager_mallory, name="theirs", scopes=["read"], by=manager_mallory)
    client.force_login(manager_alice)
    listing = client.get("/admin/accounts/apikey/")
    assert b"mine" in listing.content and b"theirs" not in listing.content
    assert client.get(f"/admin/accounts/apikey/{theirs.pk}/change/").status_code == 404
    client.force_login(admin_erin)
    listing = client.get("/admin/accounts/apikey/")
    assert b"mine" in listing.content and b"theirs" in listing.content


def test_manager_cannot_create_a_key_for_someone_else_through_a_forged_post(client, manager_alice, manager_mallory):
    client.force_login(manager_alice)
    response = client.post(
        "/admin/accounts/apikey/add/",
        {"user": manager_mallory.pk, "name": "x", "scopes": ["read"], "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 200  # form redisplayed with an error: mallory is not a choice
    assert b"Select a valid choice" in response.content
    assert not ApiKey.objects.exists()


@pytest.mark.presses("accounts.apikey:revoke_keys")
def test_revoke_action_revokes(client, manager_alice):
    from accounts.services import api_key_create

    key, _ = api_key_create(user=manager_alice, name="mine", scopes=["read"], by=manager_alice)
    client.force_login(manager_alice)
    press = {"action": "revoke_keys", "_selected_action": [key.pk]}
    asked = client.post("/admin/accounts/apikey/", press)  # asked again first: a revoked key stays revoked
    assert "Revoke 1 API key? This cannot be undone." in asked.content.decode()
    key.refresh_from_db()
    assert not key.is_revoked
    response = client.post("/admin/accounts/apikey/", {**press, "post": "yes"}, follow=True)
    assert response.status_code == 200
    assert "1 key revoked." in response.content.decode()
    key.refresh_from_db()
    assert key.is_revoked


def test_viewer_has_no_api_key_pages(client, viewer_carol):
    client.force_login(viewer_carol)
    assert client.get("/admin/accounts/apikey/").status_code == 403
    assert client.post("/admin/accounts/apikey/add/", {"name": "x", "scopes": ["read"]}).status_code == 403


def test_admin_login_page_uses_password(client, manager_alice):
    assert client.login(username="manager_alice", password=TEST_PASSWORD)


def test_the_owner_choices_hold_only_users_whose_role_may_own_a_key(
    client, admin_erin, approver_bob, manager_alice, viewer_carol, outsider_dave
):
    client.force_login(admin_erin)
    choices = client.get("/admin/accounts/apikey/add/").context["adminform"].form.fields["user"].queryset
    assert set(choices) == {admin_erin, approver_bob, manager_alice}
    for user in (viewer_carol, outsider_dave):
        response = client.post(
            "/admin/accounts/apikey/add/",
            {"user": user.pk, "name": "x", "scopes": ["ingest"], "expires_at_0": "", "expires_at_1": ""},
        )
        assert response.status_code == 200 and b"Select a valid choice" in response.content
    assert not ApiKey.objects.exists()


def test_an_administrator_is_not_offered_a_superuser_and_a_forged_post_makes_no_key(client, admin_erin, manager_alice):
    from tests.factories import UserFactory

    root = UserFactory(username="root_rita", is_superuser=True)
    client.force_login(admin_erin)
    choices = client.get("/admin/accounts/apikey/add/").context["adminform"].form.fields["user"].queryset
    assert set(choices) == {admin_erin, manager_alice}
    response = client.post(
        "/admin/accounts/apikey/add/",
        {"user": root.pk, "name": "x", "scopes": ["read", "ingest"], "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 200 and b"Select a valid choice" in response.content
    assert not ApiKey.objects.exists()
    client.force_login(root)
    choices = client.get("/admin/accounts/apikey/add/").context["adminform"].form.fields["user"].queryset
    assert set(choices) == {root, admin_erin, manager_alice}
    response = client.post(
        "/admin/accounts/apikey/add/",
        {"user": root.pk, "name": "ops", "scopes": ["read"], "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 200 and b"new-api-key" in response.content
    assert ApiKey.objects.get().user == root


@pytest.mark.presses("accounts.apikey:revoke_keys")
def test_revoke_action_is_refused_to_a_viewer_and_reaches_no_one_elses_key(
    client, manager_alice, manager_mallory, viewer_carol
):
    from accounts.services import api_key_create

    key, _ = api_key_create(user=manager_alice, name="mine", scopes=["read"], by=manager_alice)
    client.force_login(viewer_carol)
    assert (
        client.post(
            "/admin/accounts/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk], "post": "yes"}
        ).status_code
        == 403
    )
    client.force_login(manager_mallory)  # another Manager: alice's key is not in her list
    client.post("/admin/accounts/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk], "post": "yes"})
    key.refresh_from_db()
    assert not key.is_revoked


def test_a_key_s_times_are_typed_and_shown_in_utc_the_zone_named(client, manager_alice):
    """The expiry is typed in UTC, which the form says; the list and the key's page show each time
    with its zone, not a bare "Dec. 24, 2026, 1:25 a.m."."""
    import datetime as dt

    client.force_login(manager_alice)
    form = client.get("/admin/accounts/apikey/add/").content.decode()
    assert "In UTC (the server&#x27;s zone)" in form or "In UTC (the server's zone)" in form
    response = client.post(
        "/admin/accounts/apikey/add/",
        {
            "user": manager_alice.pk,
            "name": "expiring",
            "scopes": ["read"],
            "expires_at_0": "2027-12-24",
            "expires_at_1": "01:25",
        },
    )
    assert response.status_code == 200
    key = ApiKey.objects.get(user=manager_alice)
    assert key.expires_at == dt.datetime(2027, 12, 24, 1, 25, tzinfo=dt.UTC)
    listing = client.get("/admin/accounts/apikey/").content.decode()
    page = client.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode()
    for text in (listing, page):
        assert "2027-12-24 01:25 UTC" in text
        assert f"{key.created_at:%Y-%m-%d %H:%M} UTC" in text
        assert "a.m." not in text and "p.m." not in text


def test_an_expiry_in_the_past_is_refused_on_its_field_not_as_a_page_not_allowed(client, admin_erin, manager_alice):
    """The service's refusal of the input came back as a 403 "Not allowed" page, saying neither
    what was wrong nor keeping what was typed: it is the form again, its error on the field."""
    client.force_login(admin_erin)
    response = client.post(
        "/admin/accounts/apikey/add/",
        {
            "user": manager_alice.pk,
            "name": "expired already",
            "scopes": ["read"],
            "expires_at_0": "2020-01-01",
            "expires_at_1": "10:00",
        },
    )
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors == {"expires_at": ["The expiry must be in the future."]}
    assert form["name"].value() == "expired already"
    assert not ApiKey.objects.exists() and not AuditEvent.objects.filter(action="api_key_created").exists()
