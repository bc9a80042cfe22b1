"""What the push simulator knows and remembers: keys, accounts, device tokens, faults, deliveries.

Every method takes the state's lock: the server thread and the test (or control endpoint)
read and change it concurrently.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.core.exceptions import ValidationError

from accounts.json_values import json_parse

ENVIRONMENTS = ("production", "sandbox")
TOKEN_STATES = ("active", "unregistered", "expired", "other_sender", "third_party_auth_error")
APNS_TOKEN = re.compile(r"^(?:[0-9a-fA-F]{2}){32,100}\Z")
# Every FCM error code (push-protocols.md §2.4): the HTTP status, RPC status and message FCM sends it with.
FCM_ERRORS = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send messages'."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
    "APNS_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS"),
    "UNSPECIFIED_ERROR": (400, "INVALID_ARGUMENT", "Unspecified error."),
}
FAULT_STATUSES = (429, 500, 503)  # what a bare status injects: each provider has its usual reason for these
MAX_JSON_DEPTH = 100  # protobuf's JSON parser stops there too; no push nests nearly as deep


class InvalidField(ValueError):
    """A value the simulator refuses, and the field (of a control request, or a keyword) it came in."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def shown(value: Any) -> str:
    """A value as JSON, cut short, for an error message."""
    text = json.dumps(value, default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_json(body: bytes) -> Any:
    """Parse a request body as APNs and FCM read JSON: strict UTF-8 (no BOM, no UTF-16, no encoded
    surrogate), then as every JSON field of the product is read (``accounts.json_values.json_parse``:
    no lone surrogate escape, no ``NaN`` or ``1e400``, at most MAX_JSON_DEPTH deep, without ever
    hitting Python's recursion limit). Raises ValueError saying what is wrong, in a few words."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"Not UTF-8 at byte {exc.start}") from None
    try:
        return json_parse(text, max_depth=MAX_JSON_DEPTH)
    except ValidationError as exc:
        raise ValueError(" ".join(exc.messages)) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"Unexpected token at line {exc.lineno} column {exc.colno}") from None


@dataclass
class Faults:
    """Faults the simulator injects; rates are fractions (0.0–1.0) of provider requests."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    retry_after: int = 1  # seconds, sent as Retry-After on FCM's injected 429 and 503 (APNs sends none)
    latency_ms: float = 0.0
    goaway_after_streams: int = 0  # 0: never; N: GOAWAY (last stream = the Nth) when the N+1th arrives
    drop_after_streams: int = 0  # 0: never; N: close the connection, unanswered, when the N+1th arrives
    idle_timeout_s: float = 0.0  # 0: never; else GOAWAY {"reason":"IdleTimeout"} after that long idle
    dead_rate: float = 0.0  # fraction of unknown tokens that answer "unregistered"
    strict_tokens: bool = False  # unknown tokens answer BadDeviceToken / invalid registration token

    def update(self, values: dict[str, Any]) -> None:
        """Set the faults named in ``values``: all of them, or none when one is refused.

        Each must be a declared fault with a value of its type: true or false for a switch, a
        whole number for counts and ``retry_after``, a finite number for the others, from 0
        (to 1 for a rate). Raises InvalidField naming the first refused.
        """
        if not isinstance(values, dict):
            raise InvalidField("", 'the faults are a JSON object: {"rate_503": 0.1, ...}')
        checked = {name: _fault_value(name, value) for name, value in values.items()}
        for name, value in checked.items():
            setattr(self, name, value)


FAULT_TYPES = {f.name: f.type for f in fields(Faults)}  # "float", "int" or "bool"
FAULT_RATES = ("rate_429", "rate_500", "rate_503", "dead_rate")


def _fault_value(name: str, value: Any) -> float | int | bool:
    kind = FAULT_TYPES.get(name)
    if kind is None:
        raise InvalidField(name, f"unknown fault {shown(name)}; the faults are {', '.join(FAULT_TYPES)}")
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidField(name, f"{name} is true or false, not {shown(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int if kind == "int" else int | float):
        raise InvalidField(name, f"{name} is {'a whole' if kind == 'int' else 'a'} number, not {shown(value)}")
    if kind == "float":
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
    if name in FAULT_RATES and not 0 <= value <= 1:
        raise InvalidField(name, f"{name} is a fraction from 0 to 1, not {shown(value)}")
    if value < 0 or (kind == "float" and not math.isfinite(value)):
        raise InvalidField(name, f"{name} is a finite number, 0 or more, not {shown(value)}")
    return value


def _load_public_key(pem: bytes | str) -> Any:
    try:
        return serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidField("public_key_pem", f"not a PEM public key this simulator can read: {exc}") from None


@dataclass
class ApnsKey:
    key_id: str
    team_id: str
    public_key: Any
    topics: frozenset[str]  # bundle ids this key may push to
    environments: frozenset[str] = frozenset(ENVIRONMENTS)


@dataclass
class ServiceAccount:
    client_email: str
    private_key_id: str
    project_id: str
    public_key: Any


@dataclass
class Device:
    token: str
    platform: str  # "ios" or "android"
    state: str = "active"
    environment: str = ""  # ios: "production" / "sandbox"; "" = any
    topic: str = ""  # ios: the bundle id it belongs to; "" = any
    project_id: str = ""  # android: the FCM project it belongs to; "" = any
    invalidated_at_ms: int = 0


@dataclass
class Received:
    id: int
    platform: str
    token: str
    received_at: float
    title: str = ""
    subtitle: str = ""
    body: str = ""
    app: str = ""  # bundle id or FCM project
    push_type: str = ""
    payload: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)  # the provider headers it came with (not authorization)


class SimState:
    """The simulator's world; safe to use from several threads."""

    def __init__(self, *, seed: int | None = None, keep_received: int = 500):
        self.lock = threading.RLock()
        self.faults = Faults()
        self.clock_offset = 0.0
        self.apns_keys: dict[str, ApnsKey] = {}
        self.accounts: dict[str, ServiceAccount] = {}  # by client_email
        self.devices: dict[str, Device] = {}
        self.access_tokens: dict[str, tuple[str, float]] = {}  # token -> (project_id, expires_at)
        self.counts: Counter[str] = Counter()
        self.received: deque[Received] = deque(maxlen=keep_received)
        self.token_grants = 0
        self.connections = 0  # client connections accepted
        self.requests = Counter()  # status -> count
        self.fail_next: dict[str, list[tuple[int, str]]] = {}  # device token -> (status, reason), in order
        self.random = random.Random(seed)
        self._ids = itertools.count(1)
        self.trust_file_loader = None  # set by the command: reloads public keys on an unknown id
        self._start_faults = Faults()
        self._start_devices: dict[str, Device] = {}

    # --- clock -------------------------------------------------------------------------------
    def now(self) -> float:
        return time.time() + self.clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Move the simulator's clock (JWT ages) forward, for tests of token refresh."""
        with self.lock:
            self.clock_offset += seconds

    # --- keys and accounts ----------------------------------------------------------------------
    def add_apns_key(
        self,
        *,
        key_id: str,
        team_id: str,
        public_key_pem: bytes | str,
        topics: list[str] | tuple[str, ...],
        environments: tuple[str, ...] = ENVIRONMENTS,
    ) -> None:
        """Trust an APNs signing key (its public half) for a team and bundle ids.

        Raises InvalidField when ``public_key_pem`` is not an EC P-256 public key (APNs signs ES256).
        """
        public_key = _load_public_key(public_key_pem)
        if not (isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, ec.SECP256R1)):
            raise InvalidField("public_key_pem", "an APNs key is an EC P-256 key (the .p8's public half)")
        key = ApnsKey(
            key_id=key_id,
            team_id=team_id,
            public_key=public_key,
            topics=frozenset(topics),
            environments=frozenset(environments),
        )
        with self.lock:
            self.apns_keys[key_id] = key

    def add_service_account(
        self, *, client_email: str, private_key_id: str, project_id: str, public_key_pem: bytes | str
    ) -> None:
        """Trust an FCM service account (its public key) for a project.

        Raises InvalidField when ``public_key_pem`` is not an RSA public key (Google signs RS256).
        """
        public_key = _load_public_key(public_key_pem)
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise InvalidField("public_key_pem", "a service account's key is an RSA key")
        account = ServiceAccount(
            client_email=client_email,
            private_key_id=private_key_id,
            project_id=project_id,
            public_key=public_key,
        )
        with self.lock:
            self.accounts[client_email] = account

    def apns_key(self, key_id: str) -> ApnsKey | None:
        with self.lock:
            key = self.apns_keys.get(key_id)
        if key is None and self.trust_file_loader is not None:
            self.trust_file_loader()
            with self.lock:
                key = self.apns_keys.get(key_id)
        return key

    def account(self, client_email: str) -> ServiceAccount | None:
        with self.lock:
            account = self.accounts.get(client_email)
        if account is None and self.trust_file_loader is not None:
            self.trust_file_loader()
            with self.lock:
                account = self.accounts.get(client_email)
        return account

    # --- devices -----------------------------------------------------------------------------------
    def add_device(
        self,
        *,
        token: str,
        platform: str,
        state: str = "active",
        environment: str = "",
        topic: str = "",
        project_id: str = "",
    ) -> None:
        """Register a device token and its state ("active", "unregistered", "expired", "other_sender"...)."""
        if state not in TOKEN_STATES:
            raise InvalidField("state", f"unknown token state {shown(state)}; use one of {', '.join(TOKEN_STATES)}")
        device = Device(
            token=token, platform=platform, state=state, environment=environment, topic=topic, project_id=project_id
        )
        if state in ("unregistered", "expired"):
            device.invalidated_at_ms = int(self.now() * 1000)
        with self.lock:
            self.devices[token] = device

    def device(self, token: str) -> Device | None:
        with self.lock:
            return self.devices.get(token)

    def is_dead_by_rate(self, token: str) -> bool:
        rate = self.faults.dead_rate
        if rate <= 0:
            return False
        bucket = int.from_bytes(hashlib.sha256(token.encode()).digest()[:4], "big") % 10_000
        return bucket < rate * 10_000

    def fail_token(self, *, token: str, failures: list[int | tuple[int, str]]) -> None:
        """Answer the next requests for ``token`` with these failures, then normally.

        A failure is a status (429, 500, 503: the usual reason) or (status, reason): the APNs
        reason string, or the FCM error code (``"UNREGISTERED"``, ``"QUOTA_EXCEEDED"``...).
        The token's provider is its device's platform when the simulator knows the device; else
        APNs for a token shaped as APNs's (64 or more hex digits), FCM for any other.

        Raises InvalidField (a ValueError), naming the failure, when it is neither, or its
        provider could not answer it: another bare status, an FCM code for an APNs token, and
        for an FCM token a code FCM does not have or a status FCM does not send it with. Any
        other APNs reason is taken (APNs adds reasons; a client must cope with one it does not
        know). Nothing is injected then.

        The failures are kept by token alone: the next requests for it take them, through either
        provider. An APNs reason that reaches FCM (an unknown token shaped as APNs's, sent there)
        answers 400 ``INVALID_ARGUMENT`` naming the reason; an FCM code that reaches APNs is sent
        as the APNs reason.
        """
        device = self.device(token)
        if device is not None:
            provider = "APNs" if device.platform == "ios" else "FCM"
        else:
            provider = "APNs" if APNS_TOKEN.match(token) else "FCM"
        queue = []
        for failure in failures:
            status, reason = failure if isinstance(failure, tuple | list) and len(failure) == 2 else (failure, "")
            if isinstance(status, bool) or not isinstance(status, int) or not isinstance(reason, str):
                raise InvalidField("failures", f"a failure is a status or [status, reason], not {shown(failure)}")
            if not reason:
                if status not in FAULT_STATUSES:
                    raise InvalidField("failures", f"a bare status {status} has no usual reason: give (status, reason)")
            elif provider == "FCM" and reason not in FCM_ERRORS:
                raise InvalidField("failures", f"FCM has no error code {reason!r}; use one of {', '.join(FCM_ERRORS)}")
            elif provider == "FCM" and FCM_ERRORS[reason][0] != status:
                raise InvalidField("failures", f"FCM answers {reason!r} with {FCM_ERRORS[reason][0]}, not {status}")
            elif provider == "APNs" and reason in FCM_ERRORS:
                raise InvalidField("failures", f"{reason!r} is an FCM error code and {token!r} an APNs device token")
            elif not 400 <= status <= 599:
                raise InvalidField("failures", f"{reason!r} with {status}: a failure is a 4xx or 5xx status")
            queue.append((status, reason))
        with self.lock:
            self.fail_next[token] = queue

    def take_forced_failure(self, token: str) -> tuple[int, str]:
        with self.lock:
            queue = self.fail_next.get(token)
            if not queue:
                return (0, "")
            failure = queue.pop(0)
            if not queue:
                del self.fail_next[token]
            return failure

    def random_fault(self) -> int:
        """An injected status (429, 500, 503) for this request, or 0."""
        f = self.faults
        if not (f.rate_429 or f.rate_500 or f.rate_503):
            return 0
        with self.lock:
            roll = self.random.random()
        if roll < f.rate_429:
            return 429
        if roll < f.rate_429 + f.rate_500:
            return 500
        if roll < f.rate_429 + f.rate_500 + f.rate_503:
            return 503
        return 0

    # --- FCM access tokens ----------------------------------------------------------------------
    def issue_access_token(self, project_id: str, lifetime: int = 3599) -> str:
        token = "ya29.sim-" + hashlib.sha256(f"{next(self._ids)}{random.random()}".encode()).hexdigest()[:40]
        with self.lock:
            self.access_tokens[token] = (project_id, time.time() + lifetime)
            self.token_grants += 1
        return token

    def expire_access_tokens(self) -> None:
        """Make every access token issued so far expired (FCM then answers ACCESS_TOKEN_EXPIRED)."""
        with self.lock:
            self.access_tokens = {t: (p, 0.0) for t, (p, _) in self.access_tokens.items()}

    # --- deliveries -------------------------------------------------------------------------------
    def record(self, item: Received) -> None:
        with self.lock:
            item.id = next(self._ids)
            self.counts[item.token] += 1
            self.received.append(item)

    def count(self, token: str) -> int:
        with self.lock:
            return self.counts.get(token, 0)

    def snapshot_counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)

    def recent(self, *, token: str = "", limit: int = 100) -> list[dict]:
        """The notifications received, newest first."""
        with self.lock:
            items = [r for r in reversed(self.received) if not token or r.token == token]
        return [asdict(r) for r in items[:limit]]

    def keep_start_state(self) -> None:
        """Remember the faults and devices set so far (at start-up) as what ``reset`` returns to."""
        with self.lock:
            self._start_faults = replace(self.faults)
            self._start_devices = {token: replace(device) for token, device in self.devices.items()}

    def reset(self) -> None:
        """Go back to the start-up state: its faults and devices; forget deliveries, counts, forced
        failures and everything set since. Keys and accounts stay."""
        with self.lock:
            self.faults = replace(self._start_faults)
            self.clock_offset = 0.0
            self.devices = {token: replace(device) for token, device in self._start_devices.items()}
            self.counts.clear()
            self.received.clear()
            self.fail_next.clear()
            self.requests.clear()
            self.token_grants = 0
            self.connections = 0


@dataclass
class Connection:
    """What the simulator remembers about one client connection (APNs binds a team to it)."""

    id: int
    environment: str
    protocol: str  # "h2" or "http/1.1"
    streams: int = 0
    team_id: str = ""
    key_id: str = ""
    last_jwt: str = ""
    last_jwt_at: float = 0.0
    jwt_claims: dict = field(default_factory=dict)


@dataclass
class Exchange:
    """One request as the simulator's handlers see it, and the answer they give."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: Connection

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
