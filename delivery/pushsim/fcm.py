"""The simulator's FCM HTTP v1: the OAuth token endpoint and messages:send (push-protocols.md §2.8).

Error bodies are the ``google.rpc.Status`` JSON FCM sends, with the ``FcmError``,
``BadRequest``, ``ErrorInfo``, ``QuotaFailure`` and ``ApnsError`` details captured from the
live service.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from urllib.parse import parse_qs

import jwt

from delivery.pushsim.state import FCM_ERRORS, Answer, Exchange, Received, SimState, parse_json

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)
SCOPES = ("https://www.googleapis.com/auth/firebase.messaging", "https://www.googleapis.com/auth/cloud-platform")
_SEND_PATH = re.compile(r"^/v1/projects/([^/?]+)/messages:send(?:\?.*)?\Z", re.DOTALL)  # ?alt=json...
_FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{20,4096}\Z")
_TOPIC = re.compile(r"^[a-zA-Z0-9\-_.~%]+\Z")
_DURATION_TEXT = re.compile(r"^[0-9]+(\.[0-9]{1,9})?s\Z")
_AUTH_HELP = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_SEND_METHOD = {"method": "google.firebase.fcm.v1.FcmService.SendMessage", "service": "fcm.googleapis.com"}
_ids = itertools.count(1_717_673_451_795_380)


def _names(*names: str) -> set[str]:
    """Each field name in snake_case and lowerCamelCase (proto3 JSON accepts both)."""
    out = set()
    for name in names:
        out.add(name)
        head, *rest = name.split("_")
        out.add(head + "".join(p.capitalize() for p in rest))
    return out


# The fields FCM knows, per object path; an unknown one answers "Unknown name".
FIELDS: dict[str, set[str]] = {
    "": _names("message", "validate_only"),
    "message": _names(
        "name",
        "token",
        "topic",
        "condition",
        "fid",
        "data",
        "notification",
        "android",
        "apns",
        "webpush",
        "fcm_options",
    ),
    "message.notification": _names("title", "body", "image"),
    "message.android": _names(
        "collapse_key",
        "priority",
        "ttl",
        "restricted_package_name",
        "data",
        "notification",
        "fcm_options",
        "direct_boot_ok",
        "bandwidth_constrained_ok",
        "restricted_satellite_ok",
    ),
    "message.android.notification": _names(
        "title",
        "body",
        "icon",
        "color",
        "sound",
        "tag",
        "click_action",
        "body_loc_key",
        "body_loc_args",
        "title_loc_key",
        "title_loc_args",
        "channel_id",
        "ticker",
        "sticky",
        "event_time",
        "local_only",
        "notification_priority",
        "default_sound",
        "default_vibrate_timings",
        "default_light_settings",
        "vibrate_timings",
        "visibility",
        "notification_count",
        "light_settings",
        "image",
        "proxy",
    ),
    "message.apns": _names("headers", "payload", "fcm_options", "live_activity_token"),
    "message.webpush": _names("headers", "data", "notification", "fcm_options"),
    "message.fcm_options": _names("analytics_label"),
    "message.android.fcm_options": _names("analytics_label"),
    "message.apns.fcm_options": _names("analytics_label", "image"),
}
_CAMEL_TO_SNAKE = {
    "fcmOptions": "fcm_options",
    "validateOnly": "validate_only",
}

# What FCM's JSON parser takes for each field, checked before the message's own rules: the JSON
# form ("string", "bool", "int32", "object", a "map" of strings, or a "list" of another form)
# and the type its error names.
_V1 = "type.googleapis.com/google.firebase.fcm.v1."
_STRING = ("string", "TYPE_STRING")
_BOOL = ("bool", "TYPE_BOOL")
_DURATION = ("string", "type.googleapis.com/google.protobuf.Duration")
_TIMESTAMP = ("string", "type.googleapis.com/google.protobuf.Timestamp")
_STRUCT = ("object", "type.googleapis.com/google.protobuf.Struct")
_ANDROID_NOTIFICATION = f"{_V1}AndroidNotification"
FIELD_TYPES: dict[str, tuple] = {
    "validate_only": _BOOL,
    "message": ("object", f"{_V1}Message"),
    **{f"message.{name}": _STRING for name in ("name", "token", "topic", "condition", "fid")},
    "message.data": ("map", f"{_V1}Message.DataEntry"),
    "message.notification": ("object", f"{_V1}Notification"),
    "message.android": ("object", f"{_V1}AndroidConfig"),
    "message.apns": ("object", f"{_V1}ApnsConfig"),
    "message.webpush": ("object", f"{_V1}WebpushConfig"),
    "message.fcm_options": ("object", f"{_V1}FcmOptions"),
    **{f"message.notification.{name}": _STRING for name in ("title", "body", "image")},
    "message.android.collapse_key": _STRING,
    "message.android.priority": ("string", f"{_V1}AndroidConfig.AndroidMessagePriority"),
    "message.android.ttl": _DURATION,
    "message.android.restricted_package_name": _STRING,
    "message.android.data": ("map", f"{_V1}AndroidConfig.DataEntry"),
    "message.android.notification": ("object", _ANDROID_NOTIFICATION),
    "message.android.fcm_options": ("object", f"{_V1}AndroidFcmOptions"),
    **{
        f"message.android.{name}": _BOOL
        for name in ("direct_boot_ok", "bandwidth_constrained_ok", "restricted_satellite_ok")
    },
    **{
        f"message.android.notification.{name}": _STRING
        for name in (
            "title",
            "body",
            "icon",
            "color",
            "sound",
            "tag",
            "click_action",
            "body_loc_key",
            "title_loc_key",
            "channel_id",
            "ticker",
            "image",
        )
    },
    **{
        f"message.android.notification.{name}": _BOOL
        for name in ("sticky", "local_only", "default_sound", "default_vibrate_timings", "default_light_settings")
    },
    "message.android.notification.body_loc_args": ("list", _STRING),
    "message.android.notification.title_loc_args": ("list", _STRING),
    "message.android.notification.event_time": _TIMESTAMP,
    "message.android.notification.notification_priority": ("string", f"{_ANDROID_NOTIFICATION}.NotificationPriority"),
    "message.android.notification.vibrate_timings": ("list", _DURATION),
    "message.android.notification.visibility": ("string", f"{_ANDROID_NOTIFICATION}.Visibility"),
    "message.android.notification.notification_count": ("int32", "TYPE_INT32"),
    "message.android.notification.light_settings": ("object", f"{_V1}LightSettings"),
    "message.android.notification.proxy": ("string", f"{_ANDROID_NOTIFICATION}.Proxy"),
    "message.apns.headers": ("map", f"{_V1}ApnsConfig.HeadersEntry"),
    "message.apns.payload": _STRUCT,
    "message.apns.fcm_options": ("object", f"{_V1}ApnsFcmOptions"),
    "message.apns.live_activity_token": _STRING,
    "message.webpush.headers": ("map", f"{_V1}WebpushConfig.HeadersEntry"),
    "message.webpush.data": ("map", f"{_V1}WebpushConfig.DataEntry"),
    "message.webpush.notification": _STRUCT,
    "message.webpush.fcm_options": ("object", f"{_V1}WebpushFcmOptions"),
    "message.fcm_options.analytics_label": _STRING,
    "message.android.fcm_options.analytics_label": _STRING,
    "message.apns.fcm_options.analytics_label": _STRING,
    "message.apns.fcm_options.image": _STRING,
}


def _error(code: int, status: str, message: str, *details: dict, retry_after: int = 0) -> Answer:
    error: dict = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    headers = [("content-type", "application/json; charset=UTF-8")]
    if retry_after:
        headers.append(("retry-after", str(retry_after)))
    return Answer(code, headers, json.dumps({"error": error}, separators=(",", ":")).encode())


def _fcm_error(code: str) -> dict:
    return {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}


def _bad_request(field: str, description: str) -> dict:
    return {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": field, "description": description}],
    }


def _invalid(message: str, field: str = "message", *, fcm: bool = True) -> Answer:
    details = [_bad_request(field, message)]
    if fcm:
        details.append(_fcm_error("INVALID_ARGUMENT"))
    return _error(400, "INVALID_ARGUMENT", message, *details)


def _invalid_token() -> Answer:
    """FCM's answer to a malformed or unknown registration token: an FcmError detail only."""
    message = "The registration token is not a valid FCM registration token"
    return _error(400, "INVALID_ARGUMENT", message, _fcm_error("INVALID_ARGUMENT"))


def _oauth_error(description: str, error: str = "invalid_grant") -> Answer:
    body = json.dumps({"error": error, "error_description": description}).encode()
    return Answer(400, [("content-type", "application/json")], body)


def handle_token(state: SimState, ex: Exchange) -> Answer:
    """The OAuth2 token endpoint: verify a service account's signed JWT assertion, issue an access token."""
    if ex.method != "POST":
        return _oauth_error("Only POST is supported.", "invalid_request")
    form = parse_qs(ex.body.decode("utf-8", "replace"))
    if form.get("grant_type", [""])[0] != "urn:ietf:params:oauth:grant-type:jwt-bearer":
        return _oauth_error("Invalid grant_type.", "unsupported_grant_type")
    assertion = form.get("assertion", [""])[0]
    try:
        unverified = jwt.decode(assertion, options={"verify_signature": False})
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        return _oauth_error("Invalid JWT: the assertion is not a JWT.")
    account = state.account(str(unverified.get("iss", "")))
    if account is None:
        return _oauth_error("Invalid JWT Signature.")
    if header.get("alg") != "RS256" or header.get("kid") not in (None, account.private_key_id):
        return _oauth_error("Invalid JWT Signature.")
    try:
        claims = jwt.decode(
            assertion,
            account.public_key,
            algorithms=["RS256"],
            audience=[GOOGLE_TOKEN_AUDIENCE],
            options={"require": ["iat", "exp", "iss", "aud"]},
            leeway=30,
        )
    except jwt.InvalidAudienceError:
        return _oauth_error("Invalid JWT: Invalid audience.")
    except jwt.InvalidSignatureError:
        return _oauth_error("Invalid JWT Signature.")
    except jwt.PyJWTError:
        return _oauth_error(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
            "Check your iat and exp values in the JWT claim."
        )
    if claims["exp"] - claims["iat"] > 3600:
        return _oauth_error(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
            "Check your iat and exp values in the JWT claim."
        )
    scopes = str(claims.get("scope", "")).split()
    if not any(s in SCOPES for s in scopes):
        return _oauth_error("Invalid OAuth scope or ID token audience provided.", "invalid_scope")
    token = state.issue_access_token(account.project_id)
    body = json.dumps({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).encode()
    return Answer(200, [("content-type", "application/json")], body)


def _check_fields(obj: dict, path: str) -> Answer | None:
    """Unknown names, and values of the wrong JSON form (FIELD_TYPES), at any depth."""
    allowed = FIELDS.get(path)
    if allowed is None:
        return None  # free-form maps (data, headers, payload, light_settings)
    for name, value in obj.items():
        if name not in allowed:
            if not path:  # at the root FCM names no path, and its violation no field
                message = f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
                violation = {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"description": message}],
                }
                return _error(400, "INVALID_ARGUMENT", message, violation)
            message = f"Invalid JSON payload received. Unknown name \"{name}\" at '{path}': Cannot find field."
            return _invalid(message, path, fcm=False)
        child = _CAMEL_TO_SNAKE.get(name) or re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)
        field = f"{path}.{child}" if path else child
        found = _check_form(field, value, FIELD_TYPES[field])
        if found is None and isinstance(value, dict):
            found = _check_fields(value, field)
        if found is not None:
            return found
    return None


def _check_form(field: str, value, expected: tuple) -> Answer | None:
    """A value of the wrong JSON form for its field: ``"android": "x"``, ``"validate_only": "false"``..."""
    form, of = expected
    if value is None:  # proto3 JSON: null is the field's default
        return None
    if form == "list":
        if not isinstance(value, list):
            return _bad_value(field, of[1], value)
        for i, item in enumerate(value):
            found = _check_form(f"{field}[{i}]", item, of)
            if found is not None:
                return found
        return None
    if form == "map":
        if not isinstance(value, dict):
            return _bad_value(field, of, value)
        for i, item in enumerate(value.values()):
            if not isinstance(item, str):
                return _bad_value(f"{field}[{i}].value", "TYPE_STRING", item)
        return None
    if form == "string":
        fits = isinstance(value, str)
    elif form == "bool":
        fits = isinstance(value, bool)
    elif form == "int32":
        fits = isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31
    else:
        fits = isinstance(value, dict)
    return None if fits else _bad_value(field, of, value)


def _get(obj: dict, name: str):
    if name in obj:
        return obj[name]
    head, *rest = name.split("_")
    return obj.get(head + "".join(p.capitalize() for p in rest))


def _check_data(data: dict | None, field: str) -> Answer | None:
    """Reserved ``data`` keys (their values are strings: checked with the message's form)."""
    for i, key in enumerate(data or {}):
        if key in ("from", "message_type") or key.startswith(("google", "gcm")):
            return _invalid(f"Invalid data key: {key} is a reserved word.", f"{field}[{i}].key")
    return None


_COLOR = re.compile(r"^#[0-9a-fA-F]{6}\Z")
_TIMESTAMP_TEXT = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})\Z"
)
_ENUMS = {
    "notification_priority": {
        "PRIORITY_UNSPECIFIED",
        "PRIORITY_MIN",
        "PRIORITY_LOW",
        "PRIORITY_DEFAULT",
        "PRIORITY_HIGH",
        "PRIORITY_MAX",
    },
    "visibility": {"VISIBILITY_UNSPECIFIED", "PRIVATE", "PUBLIC", "SECRET"},
    "proxy": {"PROXY_UNSPECIFIED", "ALLOW", "DENY", "IF_PRIORITY_LOWERED"},
}


def _bad_value(field: str, type_name: str, value) -> Answer:
    """The proto JSON parser's answer to a value of the wrong form (no FcmError detail)."""
    return _invalid(f"Invalid value at '{field}' ({type_name}), {json.dumps(value)}", field, fcm=False)


def _check_android_notification(notification: dict) -> Answer | None:
    """``android.notification``: color ``#rrggbb``, the enums, durations and the event time."""
    base = "message.android.notification"
    color = notification.get("color")
    if color is not None and not _COLOR.match(color):
        return _invalid("Invalid color format. Color should be in the form #RRGGBB.", f"{base}.color")
    for name, values in _ENUMS.items():
        value = _get(notification, name)
        if value is not None and value not in values:
            return _bad_value(f"{base}.{name}", FIELD_TYPES[f"{base}.{name}"][1], value)
    for i, timing in enumerate(_get(notification, "vibrate_timings") or []):
        if not _DURATION_TEXT.match(timing):
            return _bad_value(f"{base}.vibrate_timings[{i}]", _DURATION[1], timing)
    event_time = _get(notification, "event_time")
    if event_time is not None and not _TIMESTAMP_TEXT.match(event_time):
        return _bad_value(f"{base}.event_time", _TIMESTAMP[1], event_time)
    return None


_CONDITION_TOKEN = re.compile(
    r"\s*(?:(&&|\|\||!|\(|\))|'([a-zA-Z0-9\-_.~%]+)'|\"([a-zA-Z0-9\-_.~%]+)\"|(in)\b|(topics)\b)"
)
MAX_CONDITION_TOPICS = 5
MAX_CONDITION_DEPTH = 32  # "!" and "(" nested in one another; five topics need a handful


def _condition_ok(condition: str) -> bool:
    """A topic condition: ``'name' in topics`` terms joined by ``&&``, ``||``, ``!`` and parentheses,
    naming at most five topics (FCM's documented limit), nested at most MAX_CONDITION_DEPTH deep
    (which also bounds the parser's recursion)."""
    tokens, position = [], 0
    text = condition.rstrip()
    while position < len(text):
        match = _CONDITION_TOKEN.match(text, position)
        if match is None:
            return False
        operator, single, double, keyword_in, keyword_topics = match.groups()
        if operator:
            tokens.append(operator)
        elif single or double:
            tokens.append(("topic", single or double))
        else:
            tokens.append(keyword_in or keyword_topics)
        position = match.end()
    topics = 0

    def expression(i: int, depth: int) -> int:  # or-expression; returns the next index or -1
        i = conjunction(i, depth)
        while i >= 0 and i < len(tokens) and tokens[i] == "||":
            i = conjunction(i + 1, depth)
        return i

    def conjunction(i: int, depth: int) -> int:
        i = unary(i, depth)
        while i >= 0 and i < len(tokens) and tokens[i] == "&&":
            i = unary(i + 1, depth)
        return i

    def unary(i: int, depth: int) -> int:
        nonlocal topics
        if i >= len(tokens) or depth > MAX_CONDITION_DEPTH:
            return -1
        if tokens[i] == "!":
            return unary(i + 1, depth + 1)
        if tokens[i] == "(":
            i = expression(i + 1, depth + 1)
            return i + 1 if i >= 0 and i < len(tokens) and tokens[i] == ")" else -1
        if isinstance(tokens[i], tuple) and tokens[i + 1 : i + 3] == ["in", "topics"]:
            topics += 1
            return i + 3
        return -1

    end = expression(0, 0)
    return end == len(tokens) and 0 < topics <= MAX_CONDITION_TOPICS


def handle_send(state: SimState, ex: Exchange) -> Answer:
    """messages:send: authenticate, validate the message, look the target up, deliver (or not)."""
    match = _SEND_PATH.match(ex.path)
    if ex.method != "POST" or match is None:
        return _error(404, "NOT_FOUND", "The requested URL was not found on this server.")
    project_id = match.group(1)

    authorization = ex.header("authorization") or ""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _error(
            401,
            "UNAUTHENTICATED",
            f"Request is missing required authentication credential. {_AUTH_HELP}",
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "CREDENTIALS_MISSING",
                "domain": "googleapis.com",
                "metadata": _SEND_METHOD,
            },
        )
    with state.lock:
        grant = state.access_tokens.get(token.strip())
    if grant is None:
        return _error(401, "UNAUTHENTICATED", f"Request had invalid authentication credentials. {_AUTH_HELP}")
    granted_project, expires_at = grant
    if time.time() >= expires_at:
        return _error(
            401,
            "UNAUTHENTICATED",
            f"Request had invalid authentication credentials. {_AUTH_HELP}",
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "ACCESS_TOKEN_EXPIRED",
                "domain": "googleapis.com",
                "metadata": _SEND_METHOD,
            },
        )
    if granted_project != project_id:
        return _error(403, "PERMISSION_DENIED", "The caller does not have permission")

    try:
        request = parse_json(ex.body)
    except ValueError as exc:
        return _invalid(f"Invalid JSON payload received. {exc}.", "", fcm=False)
    if not isinstance(request, dict):
        return _invalid("Invalid JSON payload received. Expected an object.", "", fcm=False)
    rejected = _check_fields(request, "")
    if rejected is not None:
        return rejected
    message = request.get("message")
    validate_only = bool(_get(request, "validate_only"))
    if message is None:
        return _invalid("Recipient of the message is not set.")
    targets = [t for t in ("token", "topic", "condition", "fid") if message.get(t)]
    if not targets:
        return _invalid("Recipient of the message is not set.")
    if len(targets) > 1:
        return _invalid(
            f"Invalid value at 'message' (oneof), oneof field 'target' is already set. Cannot set '{targets[1]}'",
            fcm=False,
        )
    android = message.get("android") or {}
    for data, field in ((message.get("data"), "message.data"), (android.get("data"), "message.android.data")):
        rejected = _check_data(data, field)
        if rejected is not None:
            return rejected
    ttl = android.get("ttl")
    if ttl is not None and (not _DURATION_TEXT.match(ttl) or float(ttl[:-1]) > 2_419_200):
        return _bad_value("message.android.ttl", FIELD_TYPES["message.android.ttl"][1], ttl)
    priority = android.get("priority")
    if priority is not None and priority.lower() not in ("normal", "high"):
        return _bad_value("message.android.priority", FIELD_TYPES["message.android.priority"][1], priority)
    rejected = _check_android_notification(android.get("notification") or {})
    if rejected is not None:
        return rejected
    topic = message.get("topic")
    if topic is not None and not _TOPIC.match(topic):
        return _invalid("Invalid topic name.", "message.topic")
    condition = message.get("condition")
    if condition is not None and not _condition_ok(condition):
        return _invalid("Invalid condition expression provided.", "message.condition")
    # FCM counts bytes: UTF-8, not the \u escapes json.dumps would write for "é"; compact, as sent
    # (a space after each ':' and ',' would count two bytes a key that no client sends).
    size = sum(
        len(json.dumps(message.get(part) or {}, ensure_ascii=False, separators=(",", ":")).encode())
        for part in ("data", "notification")
    )
    size_limit = 4096 if "token" in targets or "fid" in targets else 2048
    if size > size_limit:
        return _invalid("Message is too big.", "message")

    registration = message.get("token")
    if registration is not None:
        status, code = state.take_forced_failure(registration)
        if status:
            return _fault(state, status, code)
        status = state.random_fault()
        if status:
            return _fault(state, status)
        if not _FCM_TOKEN.match(registration):
            return _invalid_token()
        device = state.device(registration)
        if device is None:
            if state.faults.strict_tokens:
                return _invalid_token()
            if state.is_dead_by_rate(registration):
                return _error(404, "NOT_FOUND", "Requested entity was not found.", _fcm_error("UNREGISTERED"))
        else:
            if device.state in ("unregistered", "expired"):
                return _error(404, "NOT_FOUND", "Requested entity was not found.", _fcm_error("UNREGISTERED"))
            if device.state == "other_sender" or (device.project_id and device.project_id != project_id):
                return _error(403, "PERMISSION_DENIED", "SenderId mismatch", _fcm_error("SENDER_ID_MISMATCH"))
            if device.state == "third_party_auth_error":
                return _error(
                    401,
                    "UNAUTHENTICATED",
                    "Auth error from APNS or Web Push Service",
                    _fcm_error("THIRD_PARTY_AUTH_ERROR"),
                    {
                        "@type": "type.googleapis.com/google.firebase.fcm.v1.ApnsError",
                        "statusCode": 403,
                        "reason": "InvalidProviderToken",
                    },
                )
    else:
        forced = state.random_fault()
        if forced:
            return _fault(state, forced)

    ok = [("content-type", "application/json; charset=UTF-8")]
    if validate_only:
        return Answer(200, ok, json.dumps({"name": f"projects/{project_id}/messages/fake_message_id"}).encode())
    notification = message.get("notification") or {}
    android_notification = android.get("notification") or {}
    state.record(
        Received(
            id=0,
            platform="android",
            token=registration or f"/topics/{topic or message.get('condition')}",
            received_at=state.now(),
            title=android_notification.get("title") or notification.get("title") or "",
            body=android_notification.get("body") or notification.get("body") or "",
            app=project_id,
            push_type="data" if not (notification or android_notification) else "notification",
            payload=message,
        )
    )
    name = f"projects/{project_id}/messages/{next(_ids)}"
    return Answer(200, ok, json.dumps({"name": name}).encode())


def _fault(state: SimState, status: int, code: str = "") -> Answer:
    """An injected failure: by status (429, 500, 503), or by FCM error code."""
    retry_after = state.faults.retry_after
    if code and code not in FCM_ERRORS:
        # An APNs reason, injected for a token ``fail_token`` took for an APNs one, and the token
        # sent through FCM: a 400 that names it, which no client retries (a 500 is retried, and
        # the retry then succeeds, hiding the mistake). The failure is used up, as any other.
        message = (
            f"The push simulator was told to fail this token with {code!r} ({status}), an APNs reason: "
            f"FCM has no such error code. Inject one of {', '.join(FCM_ERRORS)} for a token sent through FCM."
        )
        return _invalid(message, "message.token")
    if code:
        code_status, rpc_status, message = FCM_ERRORS[code]
        wait = retry_after if code_status in (429, 503) else 0
        return _error(code_status, rpc_status, message, _fcm_error(code), retry_after=wait)
    if status == 429:
        return _error(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Send messages' of service 'fcm.googleapis.com'.",
            _fcm_error("QUOTA_EXCEEDED"),
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"subject": "project", "description": "Message rate exceeded."}],
            },
            retry_after=retry_after,
        )
    if status == 503:
        return _error(
            503,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            _fcm_error("UNAVAILABLE"),
            retry_after=retry_after,
        )
    return internal_error()


def internal_error() -> Answer:
    """What FCM answers when it fails itself: 500 INTERNAL, for this request alone."""
    return _error(500, "INTERNAL", "Internal error encountered.", _fcm_error("INTERNAL"))
