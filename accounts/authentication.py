"""API keys on the wire: ``Authorization: Bearer pdk_<prefix>_<secret>``, and scope checks.

Keys (with their user, whose permissions Django caches on the object) are kept per process,
behind the ``access`` version stamp (``accounts.stamps``): each request reads the stamps it needs
in one round trip, with its key's rate limit when the view has one, and reloads what changed.
"""

import re
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission

from accounts.models import ApiKey
from accounts.selectors import may_own_api_keys
from accounts.services import api_key_touch
from accounts.stamps import Stamps, stamps_read

KEY_RE = re.compile(
    rf"^{re.escape(settings.PUSHDESK_API_KEY_PREFIX)}_(?P<prefix>[0-9a-f]{{8}})_[A-Za-z0-9_-]{{20,100}}\Z"
)


class ApiKeyFailed(exceptions.AuthenticationFailed):
    def __init__(self, detail: str, code: str):
        super().__init__(detail=detail, code=code)


@dataclass
class _CachedKey:
    key: ApiKey
    stamp: str | None
    loaded_at: float


_KEYS: dict[str, _CachedKey] = {}
_KEYS_LOCK = threading.Lock()


def api_keys_forget() -> None:
    """Drop this process's cached keys (tests that change rows behind the services' back)."""
    with _KEYS_LOCK:
        _KEYS.clear()


def request_stamps(request) -> Stamps | None:
    """The stamps read for this request by the authentication (None for other authentications)."""
    return getattr(request._request, "pushdesk_stamps", None)


def rate_bucket_of(match: re.Match) -> str:
    """The name of the rate buckets of the key in ``match`` (``bearer_key``'s): its prefix and a
    digest of the whole key. The rate is taken before the key is checked (in the round trip that
    reads the stamps the check needs), and a prefix is no secret (the admin, /me/ and the audit
    log show it): a call with a key's prefix and a wrong secret takes from a bucket of its own,
    never from that key's."""
    return f"{match['prefix']}:{ApiKey.hash_key(match[0])[:16]}"


class IngestRateLimited:
    """A view whose calls take from their key's ingest rate (``PUSHDESK_INGEST_RATE_PER_KEY`` a
    second, shared by every ingest endpoint; 0: none): beyond it, 429 with ``Retry-After``. The
    rate is taken with the stamps (one round trip to Redis), else from the database's limiter
    (the embedded mode). ``rate_limited_methods`` names the methods it limits; the API's own
    route (``accounts.api_route``) calls ``rate_check`` as the view's ``initial`` does."""

    rate_limited_methods = ("POST",)

    def rate_limit(self) -> tuple[str | None, float]:
        """The per-key rate limit the authentication takes with the stamps: (bucket name, per second)."""
        request = getattr(self, "request", None)  # none yet on the API's own route, which takes POSTs
        if request is not None and request.method not in self.rate_limited_methods:
            return None, 0.0
        return "ingest", settings.PUSHDESK_INGEST_RATE_PER_KEY

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # the key and its scope first
        self.rate_check(request)

    def rate_check(self, request) -> None:
        """Raise Throttled when the call's key is over its rate (taken with the stamps, or here)."""
        name, rate = self.rate_limit()
        if name is None or rate <= 0 or not isinstance(request.auth, ApiKey):
            return
        stamps = request_stamps(request)
        if stamps is not None and stamps.rate_granted is not None:
            granted, wait = stamps.rate_granted, stamps.rate_wait
        else:
            from delivery.throttle import throttle

            taken, wait = throttle().take(key=f"{name}:{request.auth.prefix}", rate=rate, count=1)
            granted = bool(taken)
        if not granted:
            raise exceptions.Throttled(wait=max(wait, 0.001), detail="Too many ingest calls for this API key.")


def view_stamps_read(view, kwargs: dict, match: re.Match) -> Stamps:
    """Read ``access`` and the stamps ``view`` names, and take its per-key rate limit, in one trip.

    ``match`` is the request's key as ``bearer_key`` found it."""
    names = ["access", *(view.stamp_names(kwargs) if hasattr(view, "stamp_names") else [])]
    rate_name, rate = view.rate_limit() if hasattr(view, "rate_limit") else (None, 0.0)
    return stamps_read(names, rate_key=f"{rate_name}:{rate_bucket_of(match)}" if rate_name else None, rate=rate)


def _stamps_for(request, match: re.Match) -> Stamps:
    """The request's stamps: read once, here or by the API's own route when it hands the call on."""
    stamps = getattr(request._request, "pushdesk_stamps", None)
    if stamps is None:
        context = request.parser_context or {}
        stamps = view_stamps_read(context.get("view"), context.get("kwargs") or {}, match)
        request._request.pushdesk_stamps = stamps
    return stamps


def bearer_key(header: str) -> re.Match:
    """The API key in an ``Authorization: Bearer <key>`` header (the match's ``prefix`` names it).

    Raises ApiKeyFailed for a header of another shape or a value that is no Pushdesk key.
    """
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise ApiKeyFailed("Malformed Authorization header: expected 'Bearer <api key>'.", "malformed_authorization")
    match = KEY_RE.match(parts[1])
    if not match:
        raise ApiKeyFailed("This is not a Pushdesk API key.", "api_key_invalid")
    return match


def cached_key(prefix: str, stamp: str | None) -> ApiKey | None:
    """The key with this prefix, kept per process while the ``access`` stamp it was loaded under holds."""
    cached = _KEYS.get(prefix)
    now = time.monotonic()
    if cached is not None and cached.stamp == stamp and now - cached.loaded_at < settings.PUSHDESK_CACHE_SECONDS:
        return cached.key
    key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    with _KEYS_LOCK:
        if key is None:
            _KEYS.pop(prefix, None)
        else:
            _KEYS[prefix] = _CachedKey(key, stamp, now)
    return key


def key_refusal(key: ApiKey | None, raw_key: str) -> tuple[str, str] | None:
    """Why ``raw_key`` (whose prefix found ``key``, or nothing) cannot be used: (detail, code), or None."""
    if key is None or not key.matches(raw_key):
        return "Unknown API key.", "api_key_invalid"
    if key.is_revoked:
        return "This API key was revoked.", "api_key_revoked"
    if key.is_expired():
        return "This API key has expired.", "api_key_expired"
    if not key.user.is_active:
        return "The account this API key belongs to is disabled.", "account_disabled"
    if not may_own_api_keys(key.user):  # its role changed since (a Viewer, or none)
        return "The role of the account this API key belongs to may not use API keys.", "account_role"
    return None


class ApiKeyAuthentication(BaseAuthentication):
    """Authenticate as the key's user; ``request.auth`` is the ApiKey (its scopes narrow the user)."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        match = bearer_key(header)
        stamps = _stamps_for(request, match)
        key = cached_key(match["prefix"], stamps["access"])
        refusal = key_refusal(key, match[0])
        if refusal is not None:
            raise ApiKeyFailed(*refusal)
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
