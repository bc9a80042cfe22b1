"""Apple Push Notification service: token-based (ES256 JWT) provider API over HTTP/2.

One ``ApnsClient`` per app (APNs binds a team to each connection, so clients never share
connections). The provider token is minted with PyJWT, reused, and re-minted after
``refresh_after`` seconds (20–50 minutes; never sooner than 20, which APNs punishes with
``TooManyProviderTokenUpdates``), on an injectable clock.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from delivery.payloads import encode
from delivery.providers import Outcome, OutcomeKind, parse_retry_after, transport_outcome
from delivery.transport import Http2Transport, Request, Response

TOPIC_SUFFIXES = {
    "alert": "",
    "background": "",
    "complication": ".complication",
    "controls": ".push-type.controls",
    "fileprovider": ".pushkit.fileprovider",
    "liveactivity": ".push-type.liveactivity",
    "location": ".location-query",
    "mdm": "",
    "pushtotalk": ".voip-ptt",
    "voip": ".voip",
    "widgets": ".push-type.widgets",
}

# Every documented reason (push-protocols.md §1.6) and what it means for the message.
# (kind, default seconds before a retry)
REASONS: dict[str, tuple[OutcomeKind, float | None]] = {
    # the token is dead
    "Unregistered": (OutcomeKind.DEAD_TOKEN, None),
    "ExpiredToken": (OutcomeKind.DEAD_TOKEN, None),
    "BadDeviceToken": (OutcomeKind.DEAD_TOKEN, None),  # the app's environment is part of its configuration
    # a code bug or a bad message: never retried unchanged
    "BadCollapseId": (OutcomeKind.PERMANENT_FAILURE, None),
    "BadExpirationDate": (OutcomeKind.PERMANENT_FAILURE, None),
    "BadMessageId": (OutcomeKind.PERMANENT_FAILURE, None),
    "BadPriority": (OutcomeKind.PERMANENT_FAILURE, None),
    "InvalidPushType": (OutcomeKind.PERMANENT_FAILURE, None),
    "DuplicateHeaders": (OutcomeKind.PERMANENT_FAILURE, None),
    "PayloadEmpty": (OutcomeKind.PERMANENT_FAILURE, None),
    "PayloadTooLarge": (OutcomeKind.PERMANENT_FAILURE, None),
    "BadPath": (OutcomeKind.PERMANENT_FAILURE, None),
    "MethodNotAllowed": (OutcomeKind.PERMANENT_FAILURE, None),
    "MissingDeviceToken": (OutcomeKind.PERMANENT_FAILURE, None),
    # the token belongs to another app: never retry, but do not delete it either (§1.7)
    "DeviceTokenNotForTopic": (OutcomeKind.PERMANENT_FAILURE, None),
    # the app's configuration: key, team, topic, environment
    "BadTopic": (OutcomeKind.CREDENTIALS, None),
    "TopicDisallowed": (OutcomeKind.CREDENTIALS, None),
    "MissingTopic": (OutcomeKind.CREDENTIALS, None),
    "BadCertificate": (OutcomeKind.CREDENTIALS, None),
    "BadCertificateEnvironment": (OutcomeKind.CREDENTIALS, None),
    "ExpiredProviderToken": (OutcomeKind.CREDENTIALS, None),  # only once a fresh token was refused too
    "Forbidden": (OutcomeKind.CREDENTIALS, None),
    "InvalidProviderToken": (OutcomeKind.CREDENTIALS, None),
    "MissingProviderToken": (OutcomeKind.CREDENTIALS, None),
    "BadEnvironmentKeyIdInToken": (OutcomeKind.CREDENTIALS, None),
    "BadEnvironmentKeyInToken": (OutcomeKind.CREDENTIALS, None),
    # transient
    "UnrelatedKeyIdInToken": (OutcomeKind.RETRY_LATER, 1.0),  # a new connection fixes it
    "IdleTimeout": (OutcomeKind.RETRY_LATER, 1.0),
    "TooManyProviderTokenUpdates": (OutcomeKind.RETRY_LATER, 60.0),
    "TooManyRequests": (OutcomeKind.RETRY_LATER, 60.0),
    "InternalServerError": (OutcomeKind.RETRY_LATER, 60.0),
    "ServiceUnavailable": (OutcomeKind.RETRY_LATER, 60.0),
    "Shutdown": (OutcomeKind.RETRY_LATER, 1.0),
}

MIN_TOKEN_AGE = 20 * 60
MAX_TOKEN_AGE = 50 * 60


def apns_base_url(*, environment: str, uses_simulator: bool = False) -> str:
    """The APNs base URL for an environment, from settings (the simulator's when asked)."""
    if uses_simulator:
        return (
            settings.PUSHDESK_PUSHSIM_APNS_SANDBOX_URL
            if environment == "sandbox"
            else settings.PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL
        )
    return settings.PUSHDESK_APNS_SANDBOX_URL if environment == "sandbox" else settings.PUSHDESK_APNS_PRODUCTION_URL


class ProviderToken:
    """One ES256 provider token per (team, key), reused and re-minted after ``refresh_after`` seconds."""

    @sensitive_variables("private_key_pem")
    def __init__(
        self,
        *,
        team_id: str,
        key_id: str,
        private_key_pem: str,
        clock: Callable[[], float] = time.time,
        refresh_after: float = 40 * 60,
    ):
        if not MIN_TOKEN_AGE <= refresh_after <= MAX_TOKEN_AGE:
            raise ValueError("refresh_after must be between 20 and 50 minutes")
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("the APNs key is not an EC P-256 private key")
        self._key = key
        self.team_id = team_id
        self.key_id = key_id
        self.clock = clock
        self.refresh_after = refresh_after
        self._token = ""
        self.issued_at = 0
        self.mint_count = 0

    def __repr__(self) -> str:
        return f"<ProviderToken team={self.team_id} key={self.key_id}>"

    def get(self) -> str:
        """The current token, minted anew when it is ``refresh_after`` old."""
        now = int(self.clock())
        if not self._token or now - self.issued_at >= self.refresh_after:
            self._mint(now)
        return self._token

    def force_refresh(self) -> bool:
        """Re-mint now (APNs said the token expired), unless the last mint is under 20 minutes old."""
        now = int(self.clock())
        if self._token and now - self.issued_at < MIN_TOKEN_AGE:
            return False
        self._mint(now)
        return True

    def _mint(self, now: int) -> None:
        self._token = jwt.encode(
            {"iss": self.team_id, "iat": now}, self._key, algorithm="ES256", headers={"kid": self.key_id}
        )
        self.issued_at = now
        self.mint_count += 1


@dataclass(slots=True)
class ApnsMessage:
    """One notification for one device. ``payload`` is the APNs JSON (a dict) or its encoded bytes."""

    token: str
    payload: dict | bytes
    push_type: str = "alert"
    priority: int | None = None  # default: 10, or 5 for background pushes (Apple requires it)
    expiration: int | None = None  # epoch seconds; 0 = deliver now or never
    collapse_id: str = ""
    apns_id: str = ""  # generated when empty


class ApnsClient:
    """Sends batches of notifications for one app (team, key, bundle id, environment)."""

    @sensitive_variables("private_key_pem")
    def __init__(
        self,
        *,
        team_id: str,
        key_id: str,
        private_key_pem: str,
        bundle_id: str,
        environment: str = "production",
        base_url: str = "",
        transport: Http2Transport | None = None,
        clock: Callable[[], float] = time.time,
        refresh_after: float = 40 * 60,
    ):
        self.token = ProviderToken(
            team_id=team_id, key_id=key_id, private_key_pem=private_key_pem, clock=clock, refresh_after=refresh_after
        )
        self.bundle_id = bundle_id
        self.environment = environment
        self.base_url = (base_url or apns_base_url(environment=environment)).rstrip("/")
        self.transport = transport or Http2Transport(ca_bundle=settings.PUSHDESK_CA_BUNDLE)
        # apns-ids: a random version-4 UUID prefix per client, then a counter: unique, and far
        # cheaper than a uuid4() per message.
        h = os.urandom(10).hex()
        self._id_prefix = f"{h[:8]}-{h[8:12]}-4{h[12:15]}-{'89ab'[int(h[15], 16) & 3]}{h[16:19]}-"
        self._id_counter = itertools.count(int(h[19], 16) << 40)

    def __repr__(self) -> str:
        return f"<ApnsClient {self.bundle_id} {self.environment}>"

    @classmethod
    def for_app(cls, app, **kwargs) -> ApnsClient:
        """A client for an App's APNs configuration (raises ValueError when it has none)."""
        if not app.apns_configured:
            raise ValueError(f"{app} has no APNs configuration")
        kwargs.setdefault(
            "base_url", apns_base_url(environment=app.apns_environment, uses_simulator=app.uses_simulator)
        )
        return cls(
            team_id=app.apns_team_id,
            key_id=app.apns_key_id,
            private_key_pem=app.apns_private_key,
            bundle_id=app.apns_bundle_id,
            environment=app.apns_environment,
            **kwargs,
        )

    def close(self) -> None:
        self.transport.close()

    def build_request(self, message: ApnsMessage) -> Request:
        """The HTTP/2 request for one message, with every APNs header set from it."""
        body = message.payload if isinstance(message.payload, bytes) else encode(message.payload)
        priority = (
            message.priority if message.priority is not None else (5 if message.push_type == "background" else 10)
        )
        apns_id = message.apns_id or f"{self._id_prefix}{next(self._id_counter):012x}"
        headers = [
            f"authorization: bearer {self.token.get()}",
            f"apns-topic: {self.bundle_id}{TOPIC_SUFFIXES.get(message.push_type, '')}",
            f"apns-push-type: {message.push_type}",
            f"apns-priority: {priority}",
            f"apns-id: {apns_id}",
            "content-type: application/json",
        ]
        if message.expiration is not None:
            headers.append(f"apns-expiration: {int(message.expiration)}")
        if message.collapse_id:
            headers.append(f"apns-collapse-id: {message.collapse_id}")
        return Request(url=f"{self.base_url}/3/device/{message.token}", headers=headers, body=body, tag=apns_id)

    def interpret(self, response: Response, request: Request | None = None) -> Outcome:
        """Map one APNs answer to an outcome (every documented reason; unknown ones by status).

        The provider id is the apns-id APNs answered with, else the one the request was sent with.
        """
        if response.error:
            return transport_outcome(response.error_kind, response.error)
        status = response.status
        apns_id = response.headers.get("apns-id") or (request.tag if request is not None else "")
        if status == 200:
            return Outcome(OutcomeKind.ACCEPTED, status=200, provider_id=apns_id)
        try:
            body = json.loads(response.body) if response.body else {}
        except ValueError:
            body = {}
        reason = str(body.get("reason", "")) if isinstance(body, dict) else ""
        kind, default_wait = REASONS.get(reason, (None, None))
        if kind is None:
            if status == 410:
                kind = OutcomeKind.DEAD_TOKEN
            elif status == 429 or status >= 500:
                kind, default_wait = OutcomeKind.RETRY_LATER, 60.0
            elif status == 403:
                kind = OutcomeKind.CREDENTIALS
            else:
                kind = OutcomeKind.PERMANENT_FAILURE
        outcome = Outcome(kind, reason=reason or f"HTTP {status}", status=status, provider_id=apns_id)
        if kind is OutcomeKind.RETRY_LATER:
            header = parse_retry_after(response.headers.get("retry-after"))
            outcome.retry_after = header if header is not None else default_wait
            outcome.retry_after_from_provider = header is not None
        if status == 410 and isinstance(body.get("timestamp"), int | float):
            outcome.invalidated_at = datetime.fromtimestamp(body["timestamp"] / 1000, tz=UTC)
        return outcome

    def send(self, messages: Sequence[ApnsMessage]) -> list[Outcome]:
        """Send every message; one outcome each, in order.

        A message refused with ``ExpiredProviderToken`` is sent once more with a freshly minted
        token (when the 20-minute floor allows one); a second refusal is a credentials problem.
        """
        requests = [self.build_request(m) for m in messages]
        responses = self.transport.send(requests)
        outcomes = [self.interpret(r, q) for r, q in zip(responses, requests, strict=True)]
        expired = [i for i, o in enumerate(outcomes) if o.reason == "ExpiredProviderToken"]
        if expired and self.token.force_refresh():
            retried = [self.build_request(messages[i]) for i in expired]
            for i, request, response in zip(expired, retried, self.transport.send(retried), strict=True):
                outcomes[i] = self.interpret(response, request)
        return outcomes
