"""The admin's login form, throttled: repeated failures for an account or from an address wait."""

import logging

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from redis.exceptions import RedisError

from accounts.services import audit
from config.requestlog import client_address

logger = logging.getLogger("pushdesk.signin")

LOCKOUT_UNAVAILABLE = "lockout_unavailable"


def _keys(request, username: str) -> list[str]:
    address = client_address(request)
    return [f"login-failures:user:{username.lower()}", f"login-failures:ip:{address}"]


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    """After ``PUSHDESK_LOGIN_MAX_FAILURES`` failures in ``PUSHDESK_LOGIN_LOCKOUT_SECONDS`` for a
    username or an address, further attempts are refused (even with the right password) until
    the window passes. The messages speak of roles, not of Django's staff flag.

    The failures are counted in the cache (Redis). While it does not answer, the lockout cannot be
    checked, so no one signs in: the form fails with the code ``lockout_unavailable`` (the admin
    site answers 503 with it) instead of letting guesses through uncounted."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "invalid_login": "Enter a correct username and password (both are case-sensitive).",
    }

    def confirm_login_allowed(self, user):
        if not user.is_active:
            raise ValidationError(self.error_messages["inactive"], code="inactive")
        if not user.is_staff:
            raise ValidationError(
                "This account has no role yet: ask an Administrator to give you one (Manager, Approver, Viewer).",
                code="no_role",
            )

    def clean(self):
        username = (self.cleaned_data.get("username") or "").strip()
        keys = _keys(self.request, username)
        limit = settings.PUSHDESK_LOGIN_MAX_FAILURES
        try:
            failures = max((cache.get(key) or 0) for key in keys)
        except RedisError as exc:
            raise self._lockout_unavailable(exc) from exc
        if failures >= limit:
            self._said("sign-in refused for %r from %s: locked out after %d failures", username, failures)
            raise ValidationError(
                "Too many failed sign-ins: wait %(minutes)d minutes and try again.",
                code="throttled",
                params={"minutes": max(1, settings.PUSHDESK_LOGIN_LOCKOUT_SECONDS // 60)},
            )
        try:
            return super().clean()
        except ValidationError:
            audit(actor=None, action="login_failed", summary={"username": username[:150]})
            try:
                failures = self._count_failure(keys)
            except RedisError as exc:
                raise self._lockout_unavailable(exc) from exc
            minutes = max(1, settings.PUSHDESK_LOGIN_LOCKOUT_SECONDS // 60)
            if failures >= limit:
                outcome = f"{failures} of {limit} failures: locked out for {minutes} minutes"
            else:
                outcome = f"{failures} of {limit} failures before a {minutes}-minute lockout"
            self._said("sign-in failed for %r from %s (%s)", username, outcome)
            raise

    def _said(self, message: str, username: str, *args) -> None:
        """A line for the operator's log tools (fail2ban, an alert on lockouts): the name typed
        (quoted, so no line can be forged in it) and the client's address; never the password."""
        address = client_address(self.request)
        logger.warning(
            message,
            username[:150],
            address or "an unknown address",
            *args,
            extra={"username": username[:150], "client": address},
        )

    @staticmethod
    def _count_failure(keys: list[str]) -> int:
        """Count a failure against each key; return the most any of them now holds."""
        counts = []
        for key in keys:
            cache.add(key, 0, timeout=settings.PUSHDESK_LOGIN_LOCKOUT_SECONDS)
            try:
                counts.append(cache.incr(key))
            except ValueError:  # expired between add and incr
                cache.set(key, 1, timeout=settings.PUSHDESK_LOGIN_LOCKOUT_SECONDS)
                counts.append(1)
        return max(counts)

    @staticmethod
    def _lockout_unavailable(exc: RedisError) -> ValidationError:
        logger.error(
            "sign-in refused: the cache counting failed sign-ins (Redis) does not answer (%s)", exc.__class__.__name__
        )
        return ValidationError(
            "Signing in is unavailable for now: the service that counts failed sign-ins (Redis) does not "
            "answer, and without it no one may sign in. Try again in a few minutes; if this lasts, tell "
            "your operators.",
            code=LOCKOUT_UNAVAILABLE,
        )
