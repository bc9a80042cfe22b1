"""Whether a stored secret decrypts: `manage.py status` (through ``app_secret_problems``), the
``pushdesk_credentials_undecryptable`` gauge and `manage.py rotate_encryption_key` judge each
stored token alike, by ``secret_decrypts``."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command
from django.db import models

from accounts.encryption import secret_decrypts
from delivery.models import App
from delivery.services.apps import app_secret_problems
from operations.metrics import undecryptable_credentials
from tests.factories import AppFactory

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

NEW, OLD, RETIRED = (Fernet.generate_key() for _ in range(3))


def _damaged(token: bytes) -> str:
    """A token with one byte of its ciphertext changed: its HMAC no longer holds."""
    text = token.decode()
    middle = len(text) // 2
    return text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :]


STORED = {
    "empty (no secret set)": ("", True),
    "under the first key": (Fernet(NEW).encrypt(b"-----BEGIN PRIVATE KEY-----").decode(), True),
    "under the old key kept after it": (Fernet(OLD).encrypt(b"-----BEGIN PRIVATE KEY-----").decode(), True),
    "under a retired key": (Fernet(RETIRED).encrypt(b"-----BEGIN PRIVATE KEY-----").decode(), False),
    "damaged": (_damaged(Fernet(NEW).encrypt(b"-----BEGIN PRIVATE KEY-----")), False),
    "not a token": ("-----BEGIN PRIVATE KEY-----", False),
    # A key opens it, but what it holds is not text: the field could not be read to send with it.
    "opened but not text": (Fernet(NEW).encrypt(b"\xff\xfe\x00 DER bytes").decode(), False),
}


@pytest.mark.parametrize(("token", "decrypts"), STORED.values(), ids=STORED.keys())
def test_status_the_gauge_and_the_rotation_judge_a_stored_secret_alike(settings, token, decrypts):
    settings.PUSHDESK_ENCRYPTION_KEY = f"{NEW.decode()},{OLD.decode()}"
    app = AppFactory(name="Restored")
    App.objects.filter(pk=app.pk).update(apns_private_key=models.Value(token, output_field=models.TextField()))

    assert secret_decrypts(token) is decrypts
    problems = app_secret_problems()
    assert problems == ({} if decrypts else {app.pk: [f"app 'Restored' (id {app.pk}): the APNs .p8 key {_SAID}"]})
    assert undecryptable_credentials() == (0 if decrypts else 1)
    if decrypts:
        out = io.StringIO()
        call_command("rotate_encryption_key", stdout=out)
        assert f"delivery.App.apns_private_key: {'1 secret' if token else '0 secrets'} re-encrypted" in out.getvalue()
        settings.PUSHDESK_ENCRYPTION_KEY = NEW.decode()  # the old key can go
        assert app_secret_problems() == {} and undecryptable_credentials() == 0
    else:
        with pytest.raises(CommandError, match="cannot be decrypted with any key of PUSHDESK_ENCRYPTION_KEY"):
            call_command("rotate_encryption_key", stdout=io.StringIO())


_SAID = "cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY (a different key, or one dropped before rotating?)"


@pytest.mark.parametrize(("token", "decrypts"), STORED.values(), ids=STORED.keys())
def test_a_row_loads_whatever_its_secret_and_only_reading_the_secret_judges_it(settings, token, decrypts):
    """The field judges a token as ``secret_decrypts`` does, when its attribute is read: loading the row
    (its own queryset, a related row's ``select_related``) decrypted it, and one no key opened raised there."""
    from django.core.exceptions import ImproperlyConfigured

    from delivery.models import Device
    from delivery.services.apps import app_secrets_read
    from tests.factories import DeviceFactory

    settings.PUSHDESK_ENCRYPTION_KEY = f"{NEW.decode()},{OLD.decode()}"
    app = AppFactory(name="Restored")
    App.objects.filter(pk=app.pk).update(apns_private_key=models.Value(token, output_field=models.TextField()))
    device = DeviceFactory(app=app)

    loaded = Device.objects.select_related("app").get(pk=device.pk).app
    assert (loaded.name, repr(loaded.__dict__["apns_private_key"]) if token else "") == (
        "Restored",
        "<encrypted>" if token else "",
    )
    assert app_secrets_read(loaded) == ([] if decrypts else [f"app 'Restored' (id {app.pk}): the APNs .p8 key {_SAID}"])
    if decrypts:
        assert loaded.apns_private_key == ("-----BEGIN PRIVATE KEY-----" if token else "")
    else:
        with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
            _ = App.objects.get(pk=app.pk).apns_private_key


def test_an_app_saved_without_its_secret_read_keeps_the_token_it_was_stored_under(settings):
    """A restored database under the wrong key: renaming the app stores its key back untouched, so
    it opens again once the right key is set; a secret set anew is encrypted under the current key."""
    settings.PUSHDESK_ENCRYPTION_KEY = OLD.decode()
    app = AppFactory(name="Restored")
    App.objects.filter(pk=app.pk).update(apns_private_key="a .p8 key")  # through the field: encrypted
    stored = App.objects.values_list("apns_private_key", flat=True).get(pk=app.pk).token

    settings.PUSHDESK_ENCRYPTION_KEY = NEW.decode()
    app = App.objects.get(pk=app.pk)
    app.name = "Renamed"
    app.fcm_service_account = "a service account"
    app.save()
    raw = App.objects.annotate(token=models.functions.Cast("apns_private_key", models.TextField()))
    assert raw.values_list("name", "token").get(pk=app.pk) == ("Renamed", stored)
    assert App.objects.get(pk=app.pk).fcm_service_account == "a service account"

    settings.PUSHDESK_ENCRYPTION_KEY = OLD.decode()
    assert App.objects.get(pk=app.pk).apns_private_key == "a .p8 key"
