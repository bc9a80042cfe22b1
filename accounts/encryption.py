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


class EncryptedTextField(models.TextField):
    """A text column stored encrypted; decrypted in Python, never in SQL.

    A row loaded with the column decrypts it then (``from_db_value``), and one no key opens raises
    ImproperlyConfigured: a reader that may meet such a row and does not need the secret defers the
    column (``.defer(...)``), as the apps' admin list and ``manage.py status`` do. Empty strings stay
    empty (an unset secret).
    """

    description = "Text encrypted at rest"

    def from_db_value(self, value, expression, connection):
        if value in (None, ""):
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if value in (None, ""):
            return value
        return encrypt(value)
