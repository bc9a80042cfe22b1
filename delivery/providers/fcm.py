"""Firebase Cloud Messaging HTTP v1 over HTTP/2, with OAuth2 access tokens from google-auth.

The access token comes from the service account's ``token_uri`` (google-auth's JWT-bearer
flow, through a small httpx transport), is reused, and is refreshed ``refresh_margin``
seconds before it expires, on an injectable clock. A send that FCM refuses for the access
token itself (401 without an FcmError) is sent once more with a fresh token.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import google.auth.exceptions
import google.auth.transport
import httpx
from django.conf import settings
from django.views.decorators.debug import sensitive_variables
from google.auth import _helpers
from google.oauth2 import service_account

from delivery.payloads import encode
from delivery.providers import Outcome, OutcomeKind, parse_retry_after, transport_outcome
from delivery.transport import Http2Transport, Request, Response

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_decode = json.JSONDecoder().decode

# FcmError codes (push-protocols.md §2.4) and what they mean for the message: (kind, first backoff).
ERROR_CODES: dict[str, tuple[OutcomeKind, float | None]] = {
    "UNREGISTERED": (OutcomeKind.DEAD_TOKEN, None),
    "SENDER_ID_MISMATCH": (OutcomeKind.DEAD_TOKEN, None),  # the token lives in another project
    "INVALID_ARGUMENT": (OutcomeKind.PERMANENT_FAILURE, None),  # dead only when the token itself is named
    "QUOTA_EXCEEDED": (OutcomeKind.RETRY_LATER, 60.0),  # first delay at least a minute
    "UNAVAILABLE": (OutcomeKind.RETRY_LATER, 1.0),
    "INTERNAL": (OutcomeKind.RETRY_LATER, 1.0),
    "THIRD_PARTY_AUTH_ERROR": (OutcomeKind.CREDENTIALS, None),
    "APNS_AUTH_ERROR": (OutcomeKind.CREDENTIALS, None),
    "UNSPECIFIED_ERROR": (OutcomeKind.PERMANENT_FAILURE, None),
}
# google.rpc status, when FCM sent no FcmError.
STATUSES: dict[str, tuple[OutcomeKind, float | None]] = {
    "INVALID_ARGUMENT": (OutcomeKind.PERMANENT_FAILURE, None),
    "NOT_FOUND": (OutcomeKind.CREDENTIALS, None),  # no such project
    "PERMISSION_DENIED": (OutcomeKind.CREDENTIALS, None),
    "UNAUTHENTICATED": (OutcomeKind.CREDENTIALS, None),
    "RESOURCE_EXHAUSTED": (OutcomeKind.RETRY_LATER, 60.0),
    "UNAVAILABLE": (OutcomeKind.RETRY_LATER, 1.0),
    "INTERNAL": (OutcomeKind.RETRY_LATER, 1.0),
}
DEAD_TOKEN_MESSAGE = "not a valid FCM registration token"  # noqa: S105 (not a secret)


def fcm_base_url(*, uses_simulator: bool = False) -> str:
    return settings.PUSHDESK_PUSHSIM_FCM_URL if uses_simulator else settings.PUSHDESK_FCM_URL


class _HttpxResponse(google.auth.transport.Response):
    def __init__(self, response: httpx.Response):
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self):
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class HttpxAuthRequest(google.auth.transport.Request):
    """google-auth's HTTP transport, on httpx (google-auth ships only a requests-based one)."""

    def __init__(self, client: httpx.Client):
        self.client = client

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        try:
            response = self.client.request(method, url, content=body, headers=headers, timeout=timeout or 30)
        except httpx.HTTPError as exc:
            raise google.auth.exceptions.TransportError(f"{type(exc).__name__} talking to {url}") from None
        return _HttpxResponse(response)


def http_client() -> httpx.Client:
    """The httpx client for everything but the send path (token fetches, connection tests)."""
    verify = True
    if settings.PUSHDESK_CA_BUNDLE:
        verify = ssl.create_default_context(cafile=settings.PUSHDESK_CA_BUNDLE)
    return httpx.Client(http2=True, verify=verify, timeout=30)


class AccessToken:
    """An OAuth2 access token for a service account, reused until ``refresh_margin`` before expiry."""

    @sensitive_variables("service_account_info")
    def __init__(
        self,
        *,
        service_account_info: dict,
        http: httpx.Client,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = 5 * 60,
    ):
        self._credentials = service_account.Credentials.from_service_account_info(service_account_info, scopes=[SCOPE])
        self._request = HttpxAuthRequest(http)
        self.clock = clock
        self.refresh_margin = refresh_margin
        self._token = ""
        self.expires_at = 0.0
        self.refresh_count = 0

    def __repr__(self) -> str:
        return f"<AccessToken {self._credentials.service_account_email}>"

    def get(self, *, force: bool = False) -> str:
        """The current access token, fetched from the token URI when missing, expiring or ``force``.

        Raises google.auth.exceptions.GoogleAuthError when none can be had (``TransportError``
        when the endpoint could not be reached, ``RefreshError`` when it refused or answered
        something else than a token)."""
        if force or not self._token or self.clock() >= self.expires_at - self.refresh_margin:
            try:
                self._credentials.refresh(self._request)
            except google.auth.exceptions.GoogleAuthError:
                raise
            except (TypeError, ValueError, KeyError, OverflowError):
                # A 200 whose body is no token answer (a proxy's page, a list, an expires_in that
                # is not a number): google-auth reads it with plain indexing and int().
                raise google.auth.exceptions.RefreshError(
                    "The token endpoint answered without a usable access token."
                ) from None
            # google-auth computes the expiry on the real clock; keep its lifetime on ours.
            lifetime = (
                (self._credentials.expiry - _helpers.utcnow()).total_seconds() if self._credentials.expiry else 3600
            )
            self._token = self._credentials.token
            self.expires_at = self.clock() + lifetime
            self.refresh_count += 1
        return self._token


@dataclass(slots=True)
class FcmMessage:
    """One FCM v1 ``message`` object (with its ``token``, ``topic`` or ``condition``)."""

    message: dict
    validate_only: bool = False


class FcmClient:
    """Sends batches of FCM v1 messages for one service account (one Firebase project)."""

    @sensitive_variables("service_account_info")
    def __init__(
        self,
        *,
        service_account_info: dict,
        base_url: str = "",
        transport: Http2Transport | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = 5 * 60,
    ):
        self.project_id = service_account_info["project_id"]
        self.http = http or http_client()
        self.access_token = AccessToken(
            service_account_info=service_account_info, http=self.http, clock=clock, refresh_margin=refresh_margin
        )
        self.base_url = (base_url or fcm_base_url()).rstrip("/")
        self.transport = transport or Http2Transport(ca_bundle=settings.PUSHDESK_CA_BUNDLE)

    def __repr__(self) -> str:
        return f"<FcmClient {self.project_id}>"

    @classmethod
    def for_app(cls, app, **kwargs) -> FcmClient:
        """A client for an App's FCM configuration (raises ValueError when it has none)."""
        if not app.fcm_configured:
            raise ValueError(f"{app} has no FCM configuration")
        kwargs.setdefault("base_url", fcm_base_url(uses_simulator=app.uses_simulator))
        return cls(service_account_info=json.loads(app.fcm_service_account), **kwargs)

    def close(self) -> None:
        self.transport.close()
        self.http.close()

    @property
    def send_url(self) -> str:
        return f"{self.base_url}/v1/projects/{self.project_id}/messages:send"

    def build_request(self, message: FcmMessage, access_token: str) -> Request:
        body: dict = {"message": message.message}
        if message.validate_only:
            body["validate_only"] = True
        return Request(
            url=self.send_url,
            headers=[f"authorization: Bearer {access_token}", "content-type: application/json"],
            body=encode(body),
        )

    def interpret(self, response: Response) -> Outcome:
        """Map one FCM answer to an outcome: FcmError code first, then the rpc status, then HTTP status."""
        if response.error:
            return transport_outcome(response.error_kind, response.error)
        status = response.status
        try:  # decoded first: json.loads would look for the text's encoding on every answer
            body = _decode(response.body.decode()) if response.body else {}
        except ValueError:
            body = {}
        if status == 200:
            return Outcome(OutcomeKind.ACCEPTED, status=200, provider_id=str(body.get("name", "")))
        error = body.get("error", {}) if isinstance(body, dict) else {}
        error = error if isinstance(error, dict) else {}
        message = str(error.get("message", ""))
        code = ""
        for detail in error.get("details", []) or []:
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.firebase.fcm.v1.FcmError"):
                code = str(detail.get("errorCode", ""))
        rpc_status = str(error.get("status", ""))
        kind, default_wait = ERROR_CODES.get(code) or STATUSES.get(rpc_status) or (None, None)
        if kind is None:
            if status == 429 or status >= 500:
                kind, default_wait = OutcomeKind.RETRY_LATER, 1.0 if status >= 500 else 60.0
            elif status in (401, 403):
                kind = OutcomeKind.CREDENTIALS
            else:
                kind = OutcomeKind.PERMANENT_FAILURE
        if code == "INVALID_ARGUMENT" and DEAD_TOKEN_MESSAGE in message:
            kind = OutcomeKind.DEAD_TOKEN
        outcome = Outcome(kind, reason=code or rpc_status or f"HTTP {status}", status=status, detail=message[:300])
        if kind is OutcomeKind.RETRY_LATER:
            header = parse_retry_after(response.headers.get("retry-after"))
            outcome.retry_after = header if header is not None else default_wait
            outcome.retry_after_from_provider = header is not None
        return outcome

    @staticmethod
    def _access_refused(response: Response) -> bool:
        """401 about the access token itself (no FcmError: not the APNs credentials behind FCM)."""
        if response.error or response.status != 401:
            return False
        return b"FcmError" not in response.body

    def send(self, messages: Sequence[FcmMessage]) -> list[Outcome]:
        """Send every message; one outcome each, in order.

        When the access token cannot be had (the token URI refuses the service account), every
        message comes back as a credentials problem, with the OAuth error as its reason.
        """
        try:
            token = self.access_token.get()
        except google.auth.exceptions.GoogleAuthError as exc:
            return [self._oauth_failure(exc) for _ in messages]
        responses = self.transport.send([self.build_request(m, token) for m in messages])
        refused = [i for i, r in enumerate(responses) if self._access_refused(r)]
        if refused:
            try:
                token = self.access_token.get(force=True)
            except google.auth.exceptions.GoogleAuthError as exc:
                return [
                    self._oauth_failure(exc) if i in refused else self.interpret(r) for i, r in enumerate(responses)
                ]
            again = self.transport.send([self.build_request(messages[i], token) for i in refused])
            for i, response in zip(refused, again, strict=True):
                responses[i] = response
        return [self.interpret(r) for r in responses]

    @staticmethod
    def _oauth_failure(exc: Exception) -> Outcome:
        kind = (
            OutcomeKind.RETRY_LATER
            if isinstance(exc, google.auth.exceptions.TransportError)
            else OutcomeKind.CREDENTIALS
        )
        detail = str(exc.args[0]) if exc.args else type(exc).__name__
        return Outcome(
            kind, reason="oauth", detail=detail[:300], retry_after=5.0 if kind is OutcomeKind.RETRY_LATER else None
        )
