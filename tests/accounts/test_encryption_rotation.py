"""Rotating PUSHDESK_ENCRYPTION_KEY: new key first, `manage.py rotate_encryption_key`, then drop the old one."""

import io
import json

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import TextField, Value

from accounts.models import AuditEvent
from delivery.models import App
from delivery.services.apps import app_create, service_account_parse
from tests.fakes.pushsim import make_apns_credentials, make_fcm_credentials

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def stored_tokens(app_id):
    with connection.cursor() as cursor:
        cursor.execute("SELECT apns_private_key, fcm_service_account FROM delivery_app WHERE id = %s", [app_id])
        return cursor.fetchone()


@pytest.fixture
def apns_credentials():
    return make_apns_credentials()


@pytest.fixture
def fcm_credentials():
    return make_fcm_credentials(token_uri="https://oauth2.example.test/token")


@pytest.fixture
def old_key(settings):
    settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()
    return settings.PUSHDESK_ENCRYPTION_KEY


def test_rotation_re_encrypts_every_secret_under_the_new_key(
    settings, old_key, admin_erin, apns_credentials, fcm_credentials
):
    app = app_create(
        name="Shop",
        by=admin_erin,
        **apns_credentials.app_fields(),
        fcm_service_account=service_account_parse(raw=fcm_credentials.json_bytes),
    )
    empty = app_create(name="No channels yet", by=admin_erin)
    before = stored_tokens(app.pk)
    new_key = Fernet.generate_key().decode()
    settings.PUSHDESK_ENCRYPTION_KEY = f"{new_key},{old_key}"

    out = io.StringIO()
    call_command("rotate_encryption_key", stdout=out)
    assert "delivery.App.apns_private_key: 1 secret re-encrypted" in out.getvalue()
    after = stored_tokens(app.pk)
    assert all(a != b for a, b in zip(after, before, strict=True))
    assert stored_tokens(empty.pk) == ("", "")

    # The old key can go: everything reads with the new one alone.
    settings.PUSHDESK_ENCRYPTION_KEY = new_key
    app = App.objects.get(pk=app.pk)
    assert app.apns_private_key.strip() == apns_credentials.private_key_pem.strip()
    assert json.loads(app.fcm_service_account)["private_key"] == fcm_credentials.info["private_key"]
    event = AuditEvent.objects.filter(action="encryption_key_rotated").first()
    assert event is not None and apns_credentials.private_key_pem[40:80] not in str(event.summary)


def test_without_rotation_dropping_the_old_key_says_what_to_check(settings, old_key, admin_erin, apns_credentials):
    app = app_create(
        name="Shop",
        by=admin_erin,
        **apns_credentials.app_fields(),
    )
    settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(ImproperlyConfigured, match="rotation"):
        App.objects.get(pk=app.pk).apns_private_key  # noqa: B018
    with pytest.raises(CommandError, match="keep the old key"):  # one line from the command, no traceback
        call_command("rotate_encryption_key", stdout=io.StringIO())


def test_a_rotation_meeting_a_secret_no_key_opens_refuses_changing_nothing(
    settings, old_key, admin_erin, apns_credentials, fcm_credentials
):
    """The APNs key saved under the new key, the FCM account's key dropped before rotating: the
    rotation re-encrypted the first and wrote its audit event, then refused."""
    new_key = Fernet.generate_key().decode()
    settings.PUSHDESK_ENCRYPTION_KEY = new_key
    app = app_create(name="Shop", by=admin_erin, **apns_credentials.app_fields())
    under_old_key = Fernet(old_key.encode()).encrypt(fcm_credentials.json_bytes).decode()
    App.objects.filter(pk=app.pk).update(fcm_service_account=Value(under_old_key, output_field=TextField()))
    before = stored_tokens(app.pk)

    with pytest.raises(CommandError, match="keep the old key") as refused:
        call_command("rotate_encryption_key", stdout=io.StringIO())
    # Which secret: the operator looks for the key that opens it (status names it too).
    assert f"delivery.App.fcm_service_account of #{app.pk}" in str(refused.value), refused.value
    assert "apns_private_key" not in str(refused.value) and "\n" not in str(refused.value)
    assert stored_tokens(app.pk) == before
    assert not AuditEvent.objects.filter(action="encryption_key_rotated").exists()
