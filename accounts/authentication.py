"""API keys on the wire: ``Authorization: Bearer pdk_<prefix>_<secret>``, and scope checks."""

import re

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from accounts.models import ApiKey
from accounts.services import api_key_touch

KEY_RE = re.compile(
    rf"^{re.escape(settings.PUSHDESK_API_KEY_PREFIX)}_(?P<prefix>[0-9a-f]{{8}})_[A-Za-z0-9_-]{{20,100}}$"
)


class ApiKeyFailed(exceptions.AuthenticationFailed):
    def __init__(self, detail: str, code: str):
        super().__init__(detail=detail, code=code)


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticate as the key's user; ``request.auth`` is the ApiKey (its scopes narrow the user)."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower():
            raise ApiKeyFailed(
                "Malformed Authorization header: expected 'Bearer <api key>'.", "malformed_authorization"
            )
        raw_key = parts[1]
        match = KEY_RE.match(raw_key)
        if not match:
            raise ApiKeyFailed("This is not a Pushdesk API key.", "api_key_invalid")
        key = ApiKey.objects.select_related("user").filter(prefix=match["prefix"]).first()
        if key is None or not key.matches(raw_key):
            raise ApiKeyFailed("Unknown API key.", "api_key_invalid")
        if key.is_revoked:
            raise ApiKeyFailed("This API key was revoked.", "api_key_revoked")
        if key.is_expired():
            raise ApiKeyFailed("This API key has expired.", "api_key_expired")
        if not key.user.is_active:
            raise ApiKeyFailed("The account this API key belongs to is disabled.", "account_disabled")
        api_key_touch(key=key)
        return key.user, key

    def authenticate_header(self, request):
        return f'{self.keyword} realm="api"'


class HasRequiredScope(BasePermission):
    """Every API view names the scope it needs (``required_scope``); a key without it gets 403.

    Fails closed: a view that names no scope refuses everyone. ``required_scope = None`` is
    for the few views any valid key may call (e.g. /me/).
    """

    message = "This API key lacks the scope this endpoint needs."

    def has_permission(self, request, view):
        if request.user is None or not request.user.is_authenticated:
            raise exceptions.NotAuthenticated("Send an API key: 'Authorization: Bearer <api key>'.")
        if not hasattr(view, "required_scope"):
            return False
        scope = view.required_scope
        if scope is None:
            return True
        key = request.auth
        if not isinstance(key, ApiKey) or scope not in key.scopes:
            self.message = f"This API key lacks the '{scope}' scope."
            self.code = "insufficient_scope"
            return False
        return True


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes API keys in the OpenAPI schema as an HTTP bearer scheme."""

    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "pdk_<prefix>_<secret>"}
