import re

import pytest

from accounts.models import ApiKey, AuditEvent
from tests.factories import TEST_PASSWORD
from tests.pages import form_token_of


def _token(client) -> str:
    """The one-time token of an add form drawn for the client's user."""
    return form_token_of(client.get("/admin/accounts/apikey/add/").content)


def test_key_is_shown_once_on_creation_in_the_admin(client, manager_alice):
    client.force_login(manager_alice)
    response = client.post(
        "/admin/accounts/apikey/add/",
        {
            "user": manager_alice.pk,
            "name": "mobile backend",
            "scopes": ["ingest", "read"],
            "form_token": _token(client),
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


def test_a_viewer_in_a_team_carrying_the_key_permission_is_not_offered_as_an_owner(client, admin_erin, viewer_carol):
    """A team's permissions give its members nothing: the choices read roles alone, as the key's creation does."""
    from django.contrib.auth.models import Group, Permission

    team = Group.objects.create(name="Integrations")
    team.permissions.set(Permission.objects.filter(codename="add_apikey"))
    viewer_carol.groups.add(team)
    client.force_login(admin_erin)
    choices = client.get("/admin/accounts/apikey/add/").context["adminform"].form.fields["user"].queryset
    assert viewer_carol not in set(choices) and admin_erin in set(choices)


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
        {
            "user": root.pk,
            "name": "ops",
            "scopes": ["read"],
            "expires_at_0": "",
            "expires_at_1": "",
            "form_token": _token(client),
        },
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
            "form_token": form_token_of(form),
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
    typed = {
        "user": manager_alice.pk,
        "name": "expired already",
        "scopes": ["read"],
        "expires_at_0": "2020-01-01",
        "expires_at_1": "10:00",
        "form_token": _token(client),
    }
    response = client.post("/admin/accounts/apikey/add/", typed)
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors == {"expires_at": ["The expiry must be in the future."]}
    assert form["name"].value() == "expired already"
    assert not ApiKey.objects.exists() and not AuditEvent.objects.filter(action="api_key_created").exists()
    # The form refused did nothing: its token, drawn again with it, makes the key once corrected.
    corrected = {**typed, "expires_at_0": "", "expires_at_1": "", "form_token": form_token_of(response.content)}
    assert b"new-api-key" in client.post("/admin/accounts/apikey/add/", corrected).content
    assert ApiKey.objects.count() == 1


# --- the add form acts once: a reloaded answer makes no second key -----------------------------

ADD = "/admin/accounts/apikey/add/"


def _key_form(client, **more):
    token = form_token_of(client.get(ADD).content)
    return {
        "name": "mobile backend",
        "scopes": ["ingest"],
        "expires_at_0": "",
        "expires_at_1": "",
        "form_token": token,
        **more,
    }


def test_the_created_page_posted_again_makes_no_second_key_and_shows_no_secret(client, manager_alice):
    client.force_login(manager_alice)
    form = _key_form(client, user=manager_alice.pk)
    first = client.post(ADD, form)
    raw = re.search(rb'id="new-api-key"[^>]*>([^<]+)<', first.content).group(1).decode()
    again = client.post(ADD, form)  # the browser's reload of the page showing the key
    assert ApiKey.objects.filter(name="mobile backend").count() == 1
    key = ApiKey.objects.get()
    page = again.content.decode()
    assert again.status_code == 200 and "no-store" in again["Cache-Control"]
    assert "was created already" in page and "shown once and cannot be shown again" in page
    assert raw not in page and raw.rsplit("_", 1)[1] not in page and 'id="new-api-key"' not in page
    assert f'href="/admin/accounts/apikey/{key.pk}/change/"' in page
    assert 'href="/admin/accounts/apikey/add/"' in page  # another key, made deliberately


def test_two_forms_drawn_make_two_keys(client, manager_alice):
    client.force_login(manager_alice)
    for _ in range(2):
        assert b"new-api-key" in client.post(ADD, _key_form(client, user=manager_alice.pk)).content
    assert ApiKey.objects.filter(name="mobile backend", revoked_at=None).count() == 2


def test_a_form_drawn_for_another_user_is_refused_and_drawn_again(client, manager_alice, admin_erin):
    client.force_login(manager_alice)
    form = _key_form(client, user=manager_alice.pk)
    client.force_login(admin_erin)
    answer = client.post(ADD, form)
    page = answer.content.decode()
    assert answer.status_code == 200 and "This form was drawn for another user" in page
    assert not ApiKey.objects.exists()
    assert client.post(ADD, {**form, "form_token": form_token_of(page)}).content.count(b"new-api-key") == 1
    assert ApiKey.objects.get().created_by == admin_erin


def test_a_form_without_its_token_is_drawn_again_saying_so(client, manager_alice):
    client.force_login(manager_alice)
    form = _key_form(client, user=manager_alice.pk)
    for token in ("", "forged"):
        answer = client.post(ADD, {**form, "form_token": token})
        page = answer.content.decode()
        assert answer.status_code == 200 and 'id="new-api-key"' not in page
        assert "nothing was done" in page and 'value="mobile backend"' in page  # what was typed is kept
        assert 'name="form_token"' in page
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("button", ["_addanother", "_continue"])
def test_save_and_add_another_or_continue_shows_the_key_once_and_leads_on(client, manager_alice, button):
    client.force_login(manager_alice)
    form = _key_form(client, user=manager_alice.pk, **{button: "1"})
    page = client.post(ADD, form).content.decode()
    key = ApiKey.objects.get()
    assert key.matches(re.search(r'id="new-api-key"[^>]*>([^<]+)<', page).group(1))
    leads_to = ADD if button == "_addanother" else f"/admin/accounts/apikey/{key.pk}/change/"
    assert f'id="then" href="{leads_to}"' in page
    assert client.post(ADD, form).content.count(b"was created already") == 1
    assert ApiKey.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_posts_of_one_form_at_once_make_one_key(client, manager_alice):
    """The second waits for the first's transaction on the token's row, then is told it acted."""
    import threading

    from django.db import transaction

    from accounts.form_tokens import form_token_use
    from accounts.services import api_key_create
    from tests.locks import concurrently, wait_for_a_blocked_writer

    client.force_login(manager_alice)
    form = _key_form(client, user=manager_alice.pk)
    claimed = threading.Event()
    answers = []

    def first():
        with transaction.atomic():
            form_token_use(token=form["form_token"], user=manager_alice, purpose="accounts.apikey:add")
            api_key_create(user=manager_alice, name="mobile backend", scopes=["ingest"], by=manager_alice)
            claimed.set()
            assert wait_for_a_blocked_writer()

    def second():
        assert claimed.wait(10)
        answers.append(client.post(ADD, form))

    assert concurrently(first, second) == []
    assert ApiKey.objects.count() == 1
    assert b"was created already" in answers[0].content and b"new-api-key" not in answers[0].content


@pytest.mark.parametrize("lookup", ["key_hash__startswith", "key_hash"])
def test_the_key_list_asked_by_a_key_s_hash_is_refused_and_does_not_spell_it_out(
    client, admin_erin, manager_alice, lookup
):
    """The list takes a lookup on any field in its address, as Django's lists do: asked whether a
    key's hash starts with a letter, then the next, it spelt out the hash the admin never shows (a
    guess at the key checked against it without a request). Nobody asks the list by it: 400."""
    from accounts.services import api_key_create

    key, _ = api_key_create(user=manager_alice, name="backend", scopes=["read"], by=admin_erin)
    client.force_login(admin_erin)
    asked = key.key_hash[:3] if lookup.endswith("startswith") else key.key_hash
    answer = client.get("/admin/accounts/apikey/", {lookup: asked})
    assert answer.status_code == 400
    assert "backend" not in answer.content.decode()
