"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with the key(s) in PUSHDESK_ENCRYPTION_KEY.

The setting may hold several comma-separated keys: the first encrypts, every one decrypts,
so a key is rotated by putting the new one first and running ``manage.py rotate_encryption_key``.
"""

import hashlib
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models
from django.db.models.query_utils import DeferredAttribute


@lru_cache(maxsize=4)
def _fernet(keys: str) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.strip().encode()) for k in keys.split(",") if k.strip()])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured("PUSHDESK_ENCRYPTION_KEY must hold Fernet keys (32 url-safe base64 bytes).") from exc


def encrypt(plaintext: str) -> str:
    return _fernet(settings.PUSHDESK_ENCRYPTION_KEY).encrypt(plaintext.encode()).decode()


def _opened(token: str) -> str | None:
    """The text a stored token holds, or None when no key of PUSHDESK_ENCRYPTION_KEY opens it (another
    key, one dropped before rotating, a damaged token) or what it holds is not text."""
    try:
        return _fernet(settings.PUSHDESK_ENCRYPTION_KEY).decrypt(token.encode()).decode()
    except (InvalidToken, UnicodeDecodeError):
        return None


def secret_decrypts(token: str) -> bool:
    """Whether a stored token can be read: empty (no secret set) or opened by a key of
    PUSHDESK_ENCRYPTION_KEY. ``manage.py status``, the metric of credentials that cannot be decrypted
    and ``rotate_encryption_key`` judge a secret by this, as the field reads it."""
    return not token or _opened(token) is not None


def decrypt(token: str) -> str:
    plaintext = _opened(token)
    if plaintext is None:
        # Never echo the token or the key: say what to check.
        raise ImproperlyConfigured(
            "A stored secret cannot be decrypted with PUSHDESK_ENCRYPTION_KEY: was the key changed without rotation?"
        )
    return plaintext


UNREADABLE_IN_ROTATION = (
    "A stored secret cannot be decrypted with any key of PUSHDESK_ENCRYPTION_KEY: "
    "keep the old key after the new one until the rotation has run."
)


def reencrypt(token: str) -> str:
    """Re-encrypt a stored token under the first (newest) key; one that ``secret_decrypts`` refuses
    raises ImproperlyConfigured."""
    if not secret_decrypts(token):
        raise ImproperlyConfigured(UNREADABLE_IN_ROTATION)
    return _fernet(settings.PUSHDESK_ENCRYPTION_KEY).rotate(token.encode()).decode()


def fingerprint(plaintext: str) -> str:
    """A short, non-reversible label for a secret ("SHA256:ab12…"), safe to show in the admin."""
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    return f"SHA256:{digest[:16]}"


class Sealed:
    """A stored token as loaded, not decrypted yet: what an ``EncryptedTextField`` holds until the
    attribute is read. Never a str, so it cannot be sent or shown as the secret; says nothing of it."""

    __slots__ = ("token",)

    def __init__(self, token: str):
        self.token = token

    def __repr__(self) -> str:
        return "<encrypted>"

    def __reduce__(self):
        return (Sealed, (self.token,))


class _DecryptedOnRead(DeferredAttribute):
    """The attribute of an ``EncryptedTextField``: the loaded token is decrypted the first time it is
    read, and the text kept in its place."""

    def __get__(self, instance, cls=None):
        if instance is None:
            return self
        value = super().__get__(instance, cls)
        if isinstance(value, Sealed):
            value = instance.__dict__[self.field.attname] = decrypt(value.token)
        return value

    def __set__(self, instance, value):
        instance.__dict__[self.field.attname] = value


class EncryptedTextField(models.TextField):
    """A text column stored encrypted; decrypted in Python, never in SQL.

    A row is loaded with its token still encrypted (``Sealed``), whichever way it is loaded (its own
    queryset, ``select_related``, a related object's attribute), and the token is decrypted the first
    time the attribute is read: a row no key of PUSHDESK_ENCRYPTION_KEY opens loads and shows, and
    only reading its secret raises ImproperlyConfigured. A reader about to use a secret reads it
    first, to say which cannot be decrypted before it starts anything
    (``delivery.services.apps.app_secrets_read``). Saving a row whose secret was never read stores
    its token back as it was. ``values()`` and ``values_list()`` give the ``Sealed`` token, not the
    text. Empty strings stay empty (an unset secret).
    """

    description = "Text encrypted at rest"
    descriptor_class = _DecryptedOnRead

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return value
        return Sealed(value)

    def pre_save(self, model_instance, add):
        value = model_instance.__dict__.get(self.attname)
        if isinstance(value, Sealed):
            return value  # never read: stored back as it was, without decrypting it
        return super().pre_save(model_instance, add)

    def get_prep_value(self, value):
        if isinstance(value, Sealed):
            return value.token
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return encrypt(value)
