"""Identity verification: where an app requires it, the key an app ships (public) registers a token
for an external id only with the HMAC its backend computed; a backend's key is not asked."""

import hashlib
import hmac
import json
import logging

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import reverse

from accounts.models import AuditEvent
from accounts.services import access_grant
from delivery.models import App, Device
from delivery.services.apps import app_identity_secret_rotate, app_update
from tests.factories import AppFactory

pytestmark = pytest.mark.django_db

IOS_TOKEN = "cd" * 32


def identity_hash(secret: str, external_id: str) -> str:
    return hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def app(manager_alice, admin_erin):
    app = AppFactory()
    access_grant(obj=app, to=manager_alice, by=None)
    access_grant(obj=app, to=admin_erin, by=None)
    return app


@pytest.fixture
def secret(app, admin_erin):
    secret = app_identity_secret_rotate(app_id=app.pk, by=admin_erin)
    app_update(app_id=app.pk, by=admin_erin, identity_verification_required=True)
    return secret


@pytest.fixture
def app_key(api_key_for, manager_alice):
    return api_key_for(manager_alice, scopes=["ingest"])


def register(client, app, external_id="user-1", **more):
    body = {"app": app.pk, "external_id": external_id, "platform": "ios", "token": IOS_TOKEN, **more}
    return client.post("/api/v1/devices/", body, format="json")


def test_an_app_that_does_not_require_it_registers_without_a_hash(app_key, app):
    assert register(app_key, app).status_code == 201


def test_the_public_key_without_identity_hash_is_refused_naming_the_field(app_key, app, secret):
    response = register(app_key, app)
    assert response.status_code == 400, response.json()
    assert [e["field"] for e in response.json()["errors"]] == ["identity_hash"]
    assert not Device.objects.exists()


@pytest.mark.parametrize("which", ["another external id", "garbage", "another secret"])
def test_the_public_key_with_a_wrong_identity_hash_is_refused_as_unverified(app_key, app, secret, which):
    """Anyone holding the app's key registered a token for any external id and got that profile's pushes."""
    sent = {
        "another external id": identity_hash(secret, "user-2"),
        "garbage": "0" * 64,
        "another secret": identity_hash("x" * 64, "user-1"),
    }[which]
    response = register(app_key, app, identity_hash=sent)
    assert (response.status_code, response.json()["code"]) == (403, "identity_unverified"), response.json()
    assert [e["field"] for e in response.json()["errors"]] == ["identity_hash"]
    assert not Device.objects.exists()


def test_the_public_key_with_the_backends_hash_registers_the_token(app_key, app, secret):
    response = register(app_key, app, identity_hash=identity_hash(secret, "user-1"))
    assert response.status_code == 201, response.json()
    assert Device.objects.get().profile.external_id == "user-1"
    assert "identity_hash" not in response.json()


@pytest.mark.parametrize("scopes", [["ingest", "read"], ["ingest", "trigger"]])
def test_a_backends_key_is_not_asked_for_the_hash(api_key_for, manager_alice, app, secret, scopes):
    response = register(api_key_for(manager_alice, scopes=scopes), app)
    assert response.status_code == 201, response.json()


def test_a_new_secret_stops_the_old_hashes_at_once(app_key, app, secret, admin_erin):
    old = identity_hash(secret, "user-1")
    new = app_identity_secret_rotate(app_id=app.pk, by=admin_erin)
    assert new != secret
    assert register(app_key, app, identity_hash=old).json()["code"] == "identity_unverified"
    assert register(app_key, app, identity_hash=identity_hash(new, "user-1")).status_code == 201


def test_the_secret_is_stored_encrypted_and_audited_by_its_fingerprint(app, secret):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT identity_secret FROM delivery_app WHERE id = %s", [app.pk])
        (stored,) = cursor.fetchone()
    assert stored and secret not in stored
    assert App.objects.get(pk=app.pk).identity_secret == secret
    summaries = json.dumps(list(AuditEvent.objects.values_list("summary", flat=True)))
    assert secret not in summaries and App.objects.get(pk=app.pk).identity_secret_fingerprint in summaries


def test_only_an_administrator_with_access_generates_the_secret(app, manager_alice):
    with pytest.raises(PermissionDenied):
        app_identity_secret_rotate(app_id=app.pk, by=manager_alice)
    assert not App.objects.get(pk=app.pk).identity_secret_fingerprint


def test_verification_is_required_only_once_a_secret_exists(app, admin_erin):
    with pytest.raises(ValidationError) as caught:
        app_update(app_id=app.pk, by=admin_erin, identity_verification_required=True)
    assert "identity_verification_required" in caught.value.message_dict
    assert not App.objects.get(pk=app.pk).identity_verification_required


# --- the admin ---------------------------------------------------------------------------------


def _press(client, app, **more):
    """The action pressed; its Yes (``post="yes"``) answered on the question a person reads first,
    carrying the question's one-time token unless ``form_token`` is given."""
    press = {"action": "rotate_identity_secret", "_selected_action": [app.pk]}
    if more.get("post") == "yes" and "form_token" not in more:
        more["form_token"] = _token_asked(client, app)
    return client.post(reverse("admin:delivery_app_changelist"), {**press, **more})


def _token_asked(client, app) -> str:
    """The one-time token of the question the action asks first ("" when it asks none)."""
    from tests.pages import form_token_of

    asked = _press(client, app)
    return form_token_of(asked.content) if b'name="form_token"' in asked.content else ""


@pytest.mark.presses("delivery.app:rotate_identity_secret")
def test_an_administrator_generates_the_secret_and_sees_it_once(client, app, admin_erin, caplog):
    caplog.set_level(logging.DEBUG)
    client.force_login(admin_erin)
    asked = _press(client, app)
    assert asked.status_code == 200 and "Generate a new identity secret for" in asked.content.decode()
    assert not App.objects.get(pk=app.pk).identity_secret_fingerprint  # asked again first
    shown = _press(client, app, post="yes")
    assert shown.status_code == 200 and "no-store" in shown["Cache-Control"]
    stored = App.objects.get(pk=app.pk)
    assert stored.identity_secret and stored.identity_secret in shown.content.decode()
    page = client.get(reverse("admin:delivery_app_change", args=[app.pk])).content.decode()
    assert f"fingerprint {stored.identity_secret_fingerprint}" in page
    assert stored.identity_secret not in page
    assert stored.identity_secret not in caplog.text
    assert AuditEvent.objects.filter(action="app_identity_secret_generated", object_id=str(app.pk)).exists()


@pytest.mark.presses("delivery.app:rotate_identity_secret")
def test_the_page_showing_the_secret_names_its_own_fingerprint(client, app, admin_erin):
    """The fingerprint beside a new secret is the new one's, as the app's page shows it after: not
    the app's as it was read before (none on a first secret, the replaced one's on a rotation)."""
    client.force_login(admin_erin)
    for _ in range(2):  # generated, then rotated
        shown = _press(client, app, post="yes").content.decode()
        stored = App.objects.get(pk=app.pk)
        assert f"{stored.identity_secret}</code> (fingerprint {stored.identity_secret_fingerprint})" in shown


@pytest.mark.presses("delivery.app:rotate_identity_secret")
def test_a_manager_cannot_generate_the_secret(client, app, manager_alice):
    client.force_login(manager_alice)
    response = _press(client, app, post="yes")
    assert response.status_code in (200, 302, 403)
    assert not App.objects.get(pk=app.pk).identity_secret_fingerprint
    assert not AuditEvent.objects.filter(action__startswith="app_identity_secret").exists()


@pytest.mark.presses("delivery.app:rotate_identity_secret")
def test_the_page_showing_the_secret_posted_again_rotates_it_no_more_and_says_so(client, app, admin_erin):
    """A reload of the page showing the new secret posts its Yes again: the secret just copied stays."""
    client.force_login(admin_erin)
    token = _token_asked(client, app)
    shown = _press(client, app, post="yes", form_token=token).content.decode()
    secret = App.objects.get(pk=app.pk).identity_secret
    assert secret in shown
    again = _press(client, app, post="yes", form_token=token)
    page = again.content.decode()
    stored = App.objects.get(pk=app.pk)
    assert stored.identity_secret == secret  # still the one copied
    assert again.status_code == 200 and "no-store" in again["Cache-Control"]
    assert "was generated already" in page and "not shown again" in page and app.name in page
    assert secret not in page and 'class="identity-secret"' not in page
    assert f"fingerprint {stored.identity_secret_fingerprint}" in page
    assert AuditEvent.objects.filter(action__startswith="app_identity_secret").count() == 1


@pytest.mark.presses("delivery.app:rotate_identity_secret")
def test_two_questions_answered_rotate_twice(client, app, admin_erin):
    client.force_login(admin_erin)
    secrets = set()
    for _ in range(2):
        _press(client, app, post="yes")
        secrets.add(App.objects.get(pk=app.pk).identity_secret)
    assert len(secrets) == 2
    assert AuditEvent.objects.filter(action__startswith="app_identity_secret").count() == 2


@pytest.mark.parametrize("token", ["", "forged", "another user's"])
def test_a_yes_without_its_own_token_is_asked_again_saying_so(client, app, admin_erin, token):
    from tests.factories import UserFactory

    if token == "another user's":
        admin_frank = UserFactory(username="admin_frank", role="Administrator")
        access_grant(obj=app, to=admin_frank, by=None)
        client.force_login(admin_frank)
        token = _token_asked(client, app)
    client.force_login(admin_erin)
    answer = _press(client, app, post="yes", form_token=token)
    page = answer.content.decode()
    assert answer.status_code == 200 and "nothing was done" in page
    assert "Generate a new identity secret for 1 app?" in page and 'name="form_token"' in page  # asked again
    assert not App.objects.get(pk=app.pk).identity_secret_fingerprint
    assert not AuditEvent.objects.filter(action__startswith="app_identity_secret").exists()
    assert App.objects.get(pk=app.pk).identity_secret not in page or not App.objects.get(pk=app.pk).identity_secret


@pytest.mark.django_db(transaction=True)
def test_two_yeses_of_one_question_at_once_rotate_once(client, app, admin_erin):
    """The second waits for the first's transaction on the token's row, then is told it acted."""
    import threading

    from django.db import transaction

    from accounts.form_tokens import form_token_subject, form_token_use
    from tests.locks import concurrently, wait_for_a_blocked_writer

    client.force_login(admin_erin)
    token = _token_asked(client, app)
    claimed = threading.Event()
    answers = []

    def first():
        with transaction.atomic():
            form_token_use(
                token=token,
                user=admin_erin,
                purpose="delivery.app:rotate_identity_secret",
                subject=form_token_subject([app.pk]),
            )
            app_identity_secret_rotate(app_id=app.pk, by=admin_erin)
            claimed.set()
            assert wait_for_a_blocked_writer()

    def second():
        assert claimed.wait(10)
        answers.append(_press(client, app, post="yes", form_token=token))

    assert concurrently(first, second) == []
    assert AuditEvent.objects.filter(action__startswith="app_identity_secret").count() == 1
    page = answers[0].content.decode()
    assert "was generated already" in page and App.objects.get(pk=app.pk).identity_secret not in page


def test_the_admin_requires_verification_once_the_secret_exists(client, app, admin_erin):
    client.force_login(admin_erin)
    url = reverse("admin:delivery_app_change", args=[app.pk])
    form = {
        "name": app.name,
        "rate_limit_per_second": "1000",
        "apns_environment": "production",
        "identity_verification_required": "on",
    }
    refused = client.post(url, form)
    assert refused.status_code == 200 and "Generate the app&#x27;s identity secret first" in refused.content.decode()
    assert not App.objects.get(pk=app.pk).identity_verification_required
    app_identity_secret_rotate(app_id=app.pk, by=admin_erin)
    assert client.post(url, form).status_code == 302
    assert App.objects.get(pk=app.pk).identity_verification_required


@pytest.fixture
def secret_under_another_key(settings, secret):
    """The server now runs with a key other than the one the identity secret was sealed under."""
    from cryptography.fernet import Fernet

    settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()
    return secret


def test_a_secret_the_key_cannot_open_answers_503_saying_so_never_a_500(app_key, app, secret_under_another_key):
    response = register(app_key, app, identity_hash=identity_hash(secret_under_another_key, "user-1"))
    assert response.status_code == 503, response.content
    assert response.json()["code"] == "identity_secret_unreadable"
    assert secret_under_another_key not in response.content.decode()
    assert not Device.objects.filter(app=app).exists()


def test_status_and_the_apps_page_name_an_identity_secret_the_key_cannot_open(
    client, app, admin_erin, secret_under_another_key
):
    import io

    from django.core.management import call_command

    out = io.StringIO()
    call_command("status", stdout=out)
    text = out.getvalue()
    assert f"app '{app.name}' (id {app.pk}): the identity secret cannot be decrypted" in text
    assert secret_under_another_key not in text

    client.force_login(admin_erin)
    page = client.get(reverse("admin:delivery_app_change", args=[app.pk])).content.decode()
    assert "no identity_hash can be checked" in page
    assert secret_under_another_key not in page
