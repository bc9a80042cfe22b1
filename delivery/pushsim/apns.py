"""The simulator's APNs: validates a provider request the way APNs does (push-protocols.md §1.11).

Checks run in the order of pushy's MockApnsServer where one exists, Apple's table otherwise:
method, path, duplicate headers, apns-id, priority, expiration, collapse id, push type, the
provider token (signature, key id, team binding, age, environment, update rate), topic (and its
suffix for the push type), injected faults, device token, payload. A topic the key may not push to answers 400 ``TopicDisallowed`` (pushy says
``InvalidProviderToken``; Apple's table has the more useful reason).
"""

from __future__ import annotations

import json
import re
import uuid

import jwt

from delivery.pushsim.state import APNS_TOKEN, Answer, Exchange, Received, SimState, parse_json

PUSH_TYPES = {
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
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_DIGITS = re.compile(r"[0-9]+")  # str.isdigit() takes "²" and Arabic-Indic digits too
BAD_ENVIRONMENT_REASON = "BadEnvironmentKeyInToken"  # the string seen on the wire (§1.4)
TOKEN_UPDATE_FLOOR = 20 * 60
TOKEN_MAX_AGE = 60 * 60


def _reject(status: int, reason: str, apns_id: str, **extra) -> Answer:
    body = json.dumps({"reason": reason, **extra}, separators=(",", ":")).encode()
    return Answer(status, [("apns-id", apns_id), ("content-type", "application/json")], body)


def _check_topic(topic: str, push_type: str, allowed: frozenset[str]) -> tuple[str, str]:
    """The bundle id a topic names, and the reason to refuse it ("" when it fits the push type).

    A push type with a suffix (``voip``: ``<bundle>.voip``...) is sent to the suffixed topic,
    and the others to the bare bundle id: a device token is registered for one of them, so the
    wrong one answers ``DeviceTokenNotForTopic``. A bundle id the key may not push to answers
    ``TopicDisallowed``.
    """
    bundle_id = topic
    for suffix in sorted({s for s in PUSH_TYPES.values() if s}, key=len, reverse=True):
        if topic.endswith(suffix) and topic[: -len(suffix)] in allowed:
            bundle_id = topic[: -len(suffix)]
            break
    if bundle_id not in allowed:
        return bundle_id, "TopicDisallowed"
    if topic != bundle_id + PUSH_TYPES[push_type]:
        return bundle_id, "DeviceTokenNotForTopic"
    return bundle_id, ""


def handle_apns(state: SimState, ex: Exchange) -> Answer:
    """Answer one APNs request: 200 with apns-id, or the status and reason APNs would give."""
    sent_id = ex.header("apns-id")
    apns_id = sent_id if sent_id and _UUID.match(sent_id) else str(uuid.uuid4())
    if ex.method != "POST":
        return _reject(405, "MethodNotAllowed", apns_id)
    if ex.path == "/3/device/" or ex.path == "/3/device":
        return _reject(400, "MissingDeviceToken", apns_id)
    if not ex.path.startswith("/3/device/"):
        return _reject(404, "BadPath", apns_id)
    names = [name for name, _ in ex.headers if not name.startswith(":")]
    if len(names) != len(set(names)):
        return _reject(400, "DuplicateHeaders", apns_id)
    if sent_id is not None and not _UUID.match(sent_id):
        return _reject(400, "BadMessageId", apns_id)
    priority = ex.header("apns-priority")
    if priority is not None and priority not in ("1", "5", "10"):
        return _reject(400, "BadPriority", apns_id)
    expiration = ex.header("apns-expiration")
    if expiration is not None and not _DIGITS.fullmatch(expiration):
        return _reject(400, "BadExpirationDate", apns_id)
    collapse_id = ex.header("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > 64:
        return _reject(400, "BadCollapseId", apns_id)
    push_type = ex.header("apns-push-type")
    if push_type is None:
        push_type = "alert"  # absent: APNs takes an alert; present, it must name a push type
    elif push_type not in PUSH_TYPES:
        return _reject(400, "InvalidPushType", apns_id)

    rejected, key = _check_provider_token(state, ex, apns_id)
    if rejected is not None:
        return rejected

    topic = ex.header("apns-topic")
    if not topic:
        return _reject(400, "MissingTopic", apns_id)
    bundle_id, refusal = _check_topic(topic, push_type, key.topics)
    if refusal:
        return _reject(400, refusal, apns_id)

    # Injected faults answer only a request that got past authentication: a bad provider
    # token is refused first, as by APNs.
    token = ex.path[len("/3/device/") :]
    status, reason = state.take_forced_failure(token)
    if status:
        return _fault(state, status, apns_id, reason)
    status = state.random_fault()
    if status:
        return _fault(state, status, apns_id)

    if not APNS_TOKEN.match(token):
        return _reject(400, "BadDeviceToken", apns_id)
    device = state.device(token)
    environment = ex.connection.environment
    if device is None:
        if state.faults.strict_tokens:
            return _reject(400, "BadDeviceToken", apns_id)
        if state.is_dead_by_rate(token):
            return _reject(410, "Unregistered", apns_id, timestamp=int(state.now() * 1000) - 86_400_000)
    else:
        if device.platform != "ios" or (device.environment and device.environment != environment):
            return _reject(400, "BadDeviceToken", apns_id)
        if device.topic and device.topic != bundle_id:
            return _reject(400, "DeviceTokenNotForTopic", apns_id)
        if device.state == "unregistered":
            return _reject(410, "Unregistered", apns_id, timestamp=device.invalidated_at_ms)
        if device.state == "expired":
            return _reject(410, "ExpiredToken", apns_id, timestamp=device.invalidated_at_ms)

    if not ex.body:
        return _reject(400, "PayloadEmpty", apns_id)
    if len(ex.body) > (5120 if push_type == "voip" else 4096):
        return _reject(413, "PayloadTooLarge", apns_id)

    try:
        payload = parse_json(ex.body)
    except ValueError:
        payload = None
    aps = payload.get("aps", {}) if isinstance(payload, dict) else {}
    aps = aps if isinstance(aps, dict) else {}
    alert = {} if aps.get("alert") is None else aps["alert"]
    if not isinstance(payload, dict) or not isinstance(alert, str | dict):
        # Apple documents the payload as a JSON dictionary, and its alert as a string or a
        # dictionary, but no reason for anything else.
        return _reject(400, "BadPayload", apns_id)
    if priority == "10" and _is_background(push_type, aps):
        # "Using priority 10 is an error" for a background push (no reason documented).
        return _reject(400, "BadPriority", apns_id)
    if isinstance(alert, str):
        alert = {"body": alert}
    state.record(
        Received(
            id=0,
            platform="ios",
            token=token,
            received_at=state.now(),
            title=str(alert.get("title", "")),
            subtitle=str(alert.get("subtitle", "")),
            body=str(alert.get("body", "")),
            app=bundle_id,
            push_type=push_type,
            payload=payload,
            headers={k: v for k, v in ex.headers if k.startswith("apns-")},
        )
    )
    headers = [("apns-id", apns_id)]
    if environment == "sandbox":
        headers.append(("apns-unique-id", str(uuid.uuid4())))
    return Answer(200, headers)


def _is_background(push_type: str, aps: dict) -> bool:
    """A background update: push type ``background``, or only ``content-available`` (no alert,
    badge or sound) in an ``alert`` push."""
    if push_type == "background":
        return True
    return push_type == "alert" and bool(aps.get("content-available")) and not ({"alert", "badge", "sound"} & set(aps))


def internal_error(ex: Exchange) -> Answer:
    """What APNs answers when it fails itself: 500 InternalServerError, for this request alone."""
    sent_id = ex.header("apns-id")
    return _reject(500, "InternalServerError", sent_id if sent_id and _UUID.match(sent_id) else str(uuid.uuid4()))


def _fault(state: SimState, status: int, apns_id: str, reason: str = "") -> Answer:
    reason = reason or {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}.get(status, "")
    extra = {"timestamp": int(state.now() * 1000)} if status == 410 else {}
    # No Retry-After: APNs does not send one (FCM does); clients fall back on their own backoff.
    return _reject(status, reason, apns_id, **extra)


def _check_provider_token(state: SimState, ex: Exchange, apns_id: str):
    """Verify the bearer JWT and the connection's binding. Returns (rejection or None, key)."""
    authorization = ex.header("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _reject(403, "MissingProviderToken", apns_id), None
    token = token.strip()
    conn = ex.connection
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return _reject(403, "InvalidProviderToken", apns_id), None
    if header.get("alg") != "ES256":
        return _reject(403, "InvalidProviderToken", apns_id), None
    key = state.apns_key(str(header.get("kid", "")))
    if key is None:
        return _reject(403, "InvalidProviderToken", apns_id), None
    if token == conn.last_jwt:
        claims = conn.jwt_claims
    else:
        try:
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=["ES256"],
                options={"require": ["iat", "iss"], "verify_iat": False},
            )
        except jwt.PyJWTError:
            return _reject(403, "InvalidProviderToken", apns_id), None
    if claims.get("iss") != key.team_id:
        return _reject(403, "InvalidProviderToken", apns_id), None
    now = state.now()
    iat = claims.get("iat")
    if not isinstance(iat, int) or iat > now + 60:
        return _reject(403, "InvalidProviderToken", apns_id), None
    if now - iat > TOKEN_MAX_AGE:
        return _reject(403, "ExpiredProviderToken", apns_id), None
    if conn.team_id and conn.team_id != key.team_id:
        return _reject(403, "InvalidProviderToken", apns_id), None
    if conn.key_id and conn.key_id != key.key_id:
        return _reject(403, "UnrelatedKeyIdInToken", apns_id), None
    if conn.environment not in key.environments:
        return _reject(403, BAD_ENVIRONMENT_REASON, apns_id), None
    if token != conn.last_jwt:
        if conn.last_jwt and now - conn.last_jwt_at < TOKEN_UPDATE_FLOOR:
            return _reject(429, "TooManyProviderTokenUpdates", apns_id), None
        conn.last_jwt, conn.last_jwt_at, conn.jwt_claims = token, now, claims
    conn.team_id, conn.key_id = key.team_id, key.key_id
    return None, key
