"""One-time tokens of the admin forms that act once and show a secret once: an API key's creation,
an app's new identity secret.

Such a page answers its POST with the secret; a browser reloading it posts the form again, which
would make a second key, or replace the secret just copied. The form page, when drawn, carries a
token (``form_token_issue``) signed for its user, its purpose and what it acts on; the POST uses it
(``form_token_use``) in the transaction of what it does: a row unique on the token, so that a POST
sent again, or at the same time (it waits for the first's transaction), is told the form acted
already. No secret is kept with it: the answer to a form sent again says what was done, never the
secret, which was shown once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from django.core import signing
from django.db import IntegrityError, transaction

from accounts.models import FormTokenUse

FORM_TOKEN_FIELD = "form_token"  # noqa: S105 (a form field's name)
# A form left open longer is drawn again: its token is refused, the page says so and gives a new one.
FORM_TOKEN_MAX_AGE = dt.timedelta(days=1)
_SALT = "pushdesk.form-token"


class FormTokenRefused(Exception):
    """The POST carries no token of this form for this user: it is drawn again, with a new one."""


class FormTokenUsed(Exception):
    """A POST with this token acted already (``use`` says what and when)."""

    def __init__(self, use: FormTokenUse):
        super().__init__(f"The form was sent already ({use}).")
        self.use = use


def form_token_subject(pks) -> str:
    """What an action acts on, as a token names it: a digest of the chosen objects' ids."""
    return hashlib.sha256(",".join(str(pk) for pk in sorted(pks)).encode()).hexdigest()


def form_token_issue(*, user, purpose: str, subject: str = "") -> str:
    """A new token for a form drawn for ``user``, to do ``purpose`` on ``subject``."""
    return signing.dumps([user.pk, purpose, subject, secrets.token_hex(16)], salt=_SALT, compress=True)


def form_token_use(*, token: str, user, purpose: str, subject: str = "") -> FormTokenUse:
    """Mark ``token`` used by ``user`` for ``purpose`` on ``subject``; call it in the transaction of
    what the form does, so that the token is used if, and only if, that commits. A POST with the same
    token at the same time waits for that transaction, then is told it acted.

    Raises FormTokenRefused when the token is missing, forged, older than ``FORM_TOKEN_MAX_AGE``,
    or drawn for another user, purpose or subject; FormTokenUsed when a POST with it acted already.
    """
    if not token:
        raise FormTokenRefused(
            "This form was sent without its one-time token (a page saved or built by hand?): nothing was done. "
            "Check the form and send it again."
        )
    try:
        user_id, token_purpose, token_subject, nonce = signing.loads(
            token, salt=_SALT, max_age=FORM_TOKEN_MAX_AGE.total_seconds()
        )
    except signing.SignatureExpired:
        raise FormTokenRefused(
            "This form was drawn more than a day ago: nothing was done. Check it and send it again."
        ) from None
    except (signing.BadSignature, ValueError, TypeError):
        raise FormTokenRefused("This form's one-time token is not one Pushdesk gave: nothing was done.") from None
    if user_id != user.pk:
        raise FormTokenRefused("This form was drawn for another user: nothing was done. Send it again from here.")
    if (token_purpose, token_subject) != (purpose, subject):
        raise FormTokenRefused(
            "This form was drawn for something else (other objects chosen since?): nothing was done. "
            "Check it and send it again."
        )
    try:
        with transaction.atomic():
            return FormTokenUse.objects.create(token=nonce, user=user, purpose=purpose, subject=subject)
    except IntegrityError:
        raise FormTokenUsed(FormTokenUse.objects.get(token=nonce)) from None


def form_token_done(use: FormTokenUse, *, result_id: int) -> None:
    """Note what the form made (the key's id), for the answer to the form sent again to link it."""
    FormTokenUse.objects.filter(pk=use.pk).update(result_id=result_id)
    use.result_id = result_id


def form_tokens_delete(*, now: dt.datetime) -> int:
    """Delete the uses of tokens past ``FORM_TOKEN_MAX_AGE`` at ``now``: a form sent with one is
    refused for its age whether its use is kept or not (retention, ``operations.services``)."""
    return FormTokenUse.objects.filter(used_at__lt=now - FORM_TOKEN_MAX_AGE).delete()[0]
