"""The admin's login form, throttled: repeated failures for an account or from an address wait."""

from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError

from accounts.services import audit


def _client_address(request) -> str:
    """The signing-in client's address: behind ``PUSHDESK_TRUSTED_PROXIES`` proxies, the one the
    outermost of them saw (entries further left in X-Forwarded-For can be forged by the client)."""
    if request is None:
        return ""
    proxies = settings.PUSHDESK_TRUSTED_PROXIES
    if proxies > 0:
        forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR", "")


def _keys(request, username: str) -> list[str]:
    address = _client_address(request)
    return [f"login-failures:user:{username.lower()}", f"login-failures:ip:{address}"]


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    """After ``PUSHDESK_LOGIN_MAX_FAILURES`` failures in ``PUSHDESK_LOGIN_LOCKOUT_SECONDS`` for a
    username or an address, further attempts are refused (even with the right password) until
    the window passes. The messages speak of roles, not of Django's staff flag."""

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
        if any((cache.get(key) or 0) >= limit for key in keys):
            raise ValidationError(
                "Too many failed sign-ins: wait %(minutes)d minutes and try again.",
                code="throttled",
                params={"minutes": max(1, settings.PUSHDESK_LOGIN_LOCKOUT_SECONDS // 60)},
            )
        try:
            return super().clean()
        except ValidationError:
            for key in keys:
                cache.add(key, 0, timeout=settings.PUSHDESK_LOGIN_LOCKOUT_SECONDS)
                try:
                    cache.incr(key)
                except ValueError:  # expired between add and incr
                    cache.set(key, 1, timeout=settings.PUSHDESK_LOGIN_LOCKOUT_SECONDS)
            audit(actor=None, action="login_failed", summary={"username": username[:150]})
            raise
