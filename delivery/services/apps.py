"""Apps and their channel credentials: parsing, create, update, connection checks.

Credentials are validated before anything is written, so a bad upload saves nothing. They
are encrypted at rest (``EncryptedTextField``), and only their fingerprint and the time they
were set are ever shown again. No secret appears in an audit event, a log line or an
exception message: errors name the field and the rule broken, never the value.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import google.auth.exceptions
import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, PermissionDenied, ValidationError
from django.db import connection, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from accounts.encryption import fingerprint, secret_decrypts
from accounts.json_values import storable_text
from accounts.models import User
from accounts.selectors import can
from accounts.services import access_grant, audit
from delivery.models import App
from delivery.providers.apns import ApnsClient, ApnsMessage
from delivery.providers.fcm import FcmClient, FcmMessage
from delivery.transport import Request, Response

# \Z, not $: $ also matches before a final line end (a bundle id is a header, the ids go in a JWT).
TEAM_ID = re.compile(r"^[A-Z0-9]{10}\Z")
KEY_ID = re.compile(r"^[A-Z0-9]{10}\Z")
BUNDLE_ID = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z")
# A Google Cloud project id (6 to 30 lower-case letters, digits and hyphens; an older one may
# carry its domain, "example.com:my-project"): it goes into the FCM URL's path.
PROJECT_ID = re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,61}[a-z0-9]\Z")
SERVICE_ACCOUNT_FIELDS = ("type", "project_id", "private_key", "client_email", "token_uri")
MAX_UPLOAD = 64 * 1024
# Not a device token (not hex): APNs answers BadDeviceToken once the provider token passed.
PROBE_DEVICE_TOKEN = "pushdeskconnectiontest"  # noqa: S105


class Secret:
    """An uploaded secret on its way to the database: its repr never shows the value."""

    __slots__ = ("value",)

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


@dataclass(frozen=True)
class ServiceAccountInfo:
    """What is read from a validated service-account JSON (the private key stays inside ``secret``)."""

    secret: Secret
    project_id: str
    client_email: str


@sensitive_variables("raw", "text", "key")
def apns_key_parse(*, raw: bytes) -> Secret:
    """Check an uploaded ``.p8`` file is an unencrypted EC P-256 private key in PKCS#8 PEM.

    Raises ValidationError on ``apns_private_key`` naming what is wrong (never the content).
    """
    if len(raw) > MAX_UPLOAD:
        raise ValidationError({"apns_private_key": "The .p8 file is too large to be an APNs key."})
    try:
        # An editor that saved Apple's file again may have added a byte order mark or CRLF line
        # ends: the same key reads, and keeps its fingerprint, either way.
        text = raw.removeprefix(b"\xef\xbb\xbf").decode("ascii").replace("\r\n", "\n").strip()
    except UnicodeDecodeError:
        raise ValidationError({"apns_private_key": "The .p8 file is not a text PEM file."}) from None
    if not text.startswith("-----BEGIN PRIVATE KEY-----"):
        raise ValidationError(
            {"apns_private_key": "The .p8 file must be a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)."}
        )
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError):
        raise ValidationError({"apns_private_key": "The .p8 file is not a readable private key."}) from None
    except UnsupportedAlgorithm:
        key = None  # a key of another algorithm (GOST, say): the rule below names what is needed
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValidationError({"apns_private_key": "The .p8 key must be an EC P-256 key (APNs signs with ES256)."})
    return Secret(text + "\n")


@sensitive_variables("raw", "data", "key")
def service_account_parse(*, raw: bytes) -> ServiceAccountInfo:
    """Check an uploaded service-account JSON: its fields, and that ``private_key`` is an RSA key.

    Raises ValidationError on ``fcm_service_account`` naming the missing or wrong field.
    """
    field = "fcm_service_account"
    if len(raw) > MAX_UPLOAD:
        raise ValidationError({field: "The service-account file is too large."})
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested thousands deep
        raise ValidationError({field: "The service-account file is not JSON."}) from None
    if not isinstance(data, dict):
        raise ValidationError({field: "The service-account JSON must be an object."})
    missing = [name for name in SERVICE_ACCOUNT_FIELDS if not isinstance(data.get(name), str) or not data.get(name)]
    if missing:
        raise ValidationError({field: f"The service-account JSON has no {', '.join(missing)}."})
    if data["type"] != "service_account":
        raise ValidationError({field: 'The JSON is not a service account ("type" must be "service_account").'})
    if not PROJECT_ID.match(data["project_id"]):
        raise ValidationError({field: "The service account's project_id is not a Google Cloud project id."})
    try:
        key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        raise ValidationError({field: "The service account's private_key is not a readable PEM private key."}) from None
    except UnsupportedAlgorithm:
        key = None  # a key of another algorithm: the rule below names what is needed
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValidationError({field: "The service account's private_key must be an RSA key."})
    if "@" not in data["client_email"]:
        raise ValidationError({field: "The service account's client_email is not an email address."})
    if not _token_uri_allowed(data["token_uri"]):
        raise ValidationError({field: "The service account's token_uri must be an https:// URL."})
    return ServiceAccountInfo(
        secret=Secret(json.dumps(data)), project_id=data["project_id"], client_email=data["client_email"]
    )


def _token_uri_allowed(uri: str) -> bool:
    """An https:// URL with a host, or http:// to this machine itself (the simulator): the signed
    assertion goes there, and must not cross a network in clear."""
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number)
    except ValueError:
        return False
    if parts.scheme == "https":
        return bool(host)
    return parts.scheme == "http" and host in ("127.0.0.1", "localhost", "::1")


def _apns_errors(*, team_id: str, key_id: str, bundle_id: str, environment: str, has_key: bool) -> dict[str, str]:
    """APNs is all or nothing: team id, key id, bundle id and a key, each well-formed."""
    errors: dict[str, str] = {}
    if team_id and not TEAM_ID.match(team_id):
        errors["apns_team_id"] = "A team id is 10 capital letters or digits (Apple Developer account, Membership)."
    if key_id and not KEY_ID.match(key_id):
        errors["apns_key_id"] = "A key id is 10 capital letters or digits (shown beside the key in Apple's portal)."
    if bundle_id and not BUNDLE_ID.match(bundle_id):
        errors["apns_bundle_id"] = "A bundle id is reverse-DNS: letters, digits and hyphens in dot-separated parts."
    if environment not in App.ApnsEnvironment.values:
        errors["apns_environment"] = "Choose production or sandbox."
    given = {"apns_team_id": team_id, "apns_key_id": key_id, "apns_bundle_id": bundle_id, "apns_private_key": has_key}
    if any(given.values()):
        labels = {
            "apns_team_id": "a team id",
            "apns_key_id": "a key id",
            "apns_bundle_id": "a bundle id",
            "apns_private_key": "a .p8 key",
        }
        for name, value in given.items():
            if not value and name not in errors:
                errors[name] = f"APNs needs {labels[name]} as well (or leave every APNs field empty)."
    return errors


# The app's own fields a create or an update sets; None keeps a field.
APP_FIELDS = (
    "name",
    "rate_limit_per_second",
    "uses_simulator",
    "apns_team_id",
    "apns_key_id",
    "apns_bundle_id",
    "apns_environment",
    "identity_verification_required",
)


def _app_changes_apply(
    app: App,
    *,
    fields: Mapping[str, object],
    remove_apns: bool,
    remove_fcm: bool,
    apns_key_given: bool,
    fcm_given: bool,
) -> tuple[list[str], dict[str, str]]:
    """Set the given fields and removals on ``app`` (not saved) and check the app they make.

    Returns the names changed and every rule broken, by field, all at once. A removal that comes
    with its channel's new credentials is not applied: it is the error, not the fields it would empty.
    """
    errors = {
        field: f"Remove the {channel} configuration, or upload new credentials: not both."
        for field, channel, removed, uploaded in (
            ("remove_apns", "APNs", remove_apns, apns_key_given),
            ("remove_fcm", "FCM", remove_fcm, fcm_given),
        )
        if removed and uploaded
    }
    changed_fields = []
    for field in APP_FIELDS:
        value = fields.get(field)
        if value is not None and getattr(app, field) != value:
            setattr(app, field, value)
            changed_fields.append(field)
    if remove_apns and "remove_apns" not in errors:
        app.apns_team_id = app.apns_key_id = app.apns_bundle_id = ""
        app.apns_private_key = app.apns_private_key_fingerprint = ""
        app.apns_private_key_set_at = None
        changed_fields.append("apns_removed")
    if remove_fcm and "remove_fcm" not in errors:
        app.fcm_service_account = app.fcm_service_account_fingerprint = ""
        app.fcm_project_id = app.fcm_client_email = ""
        app.fcm_service_account_set_at = None
        changed_fields.append("fcm_removed")
    errors |= _apns_errors(
        team_id=app.apns_team_id,
        key_id=app.apns_key_id,
        bundle_id=app.apns_bundle_id,
        environment=app.apns_environment,
        has_key=bool(app.apns_private_key_fingerprint) or apns_key_given,
    )
    if app.rate_limit_per_second < 1:
        errors["rate_limit_per_second"] = "The rate limit must be at least 1 message per second."
    if app.identity_verification_required and not app.identity_secret_fingerprint:  # a new app has none yet
        errors["identity_verification_required"] = VERIFICATION_REQUIRED_TOO_SOON
    if App.objects.filter(name=app.name).exclude(pk=app.pk).exists():
        errors["name"] = "An app with this name already exists."
    return changed_fields, errors


def _ensure_may_write(by: User | None, app: App) -> None:
    if by is None:
        return
    if app.pk is None and not by.has_perm("delivery.add_app"):
        raise PermissionDenied("Only an Administrator can add apps.")
    if app.pk is not None and not can(by, "delivery.change_app", app):
        raise PermissionDenied("Only an Administrator with access to this app can change it.")


def app_check(
    *,
    app_id: int | None,
    by: User | None,
    fields: Mapping[str, object],
    apns_key_given: bool,
    fcm_given: bool,
    remove_apns: bool = False,
    remove_fcm: bool = False,
) -> None:
    """Check a create (``app_id=None``) or an update as ``app_create``/``app_update`` would, saving nothing.

    For a form whose uploads were refused already: it names every other wrong field in the same
    answer. ``fields`` maps names of APP_FIELDS to values (None keeps a field); ``*_given`` say a
    key or JSON was uploaded, valid or not. Raises PermissionDenied as the write would, and
    ValidationError naming each wrong field.
    """
    app = App() if app_id is None else App.objects.get(pk=app_id)
    _ensure_may_write(by, app)
    _, errors = _app_changes_apply(
        app,
        fields=fields,
        remove_apns=remove_apns,
        remove_fcm=remove_fcm,
        apns_key_given=apns_key_given,
        fcm_given=fcm_given,
    )
    if errors:
        raise ValidationError(errors)


@sensitive_variables("apns_private_key", "fcm_service_account")
def app_create(
    *,
    name: str,
    by: User | None,
    rate_limit_per_second: int = 1000,
    uses_simulator: bool = False,
    apns_team_id: str = "",
    apns_key_id: str = "",
    apns_bundle_id: str = "",
    apns_environment: str = App.ApnsEnvironment.PRODUCTION,
    apns_private_key: Secret | None = None,
    fcm_service_account: ServiceAccountInfo | None = None,
    identity_verification_required: bool = False,
) -> App:
    """Create an app with its channel credentials; the creator gets access to it.

    Credentials come already parsed (``apns_key_parse``, ``service_account_parse``). Raises
    PermissionDenied when ``by`` may not add apps (Administrators only; ``by=None`` is the
    system), ValidationError naming every wrong field at once; nothing is saved then.
    """
    app = App(created_by=by if by is not None and by.pk else None)
    _ensure_may_write(by, app)
    _, errors = _app_changes_apply(
        app,
        fields={
            "name": name,
            "rate_limit_per_second": rate_limit_per_second,
            "uses_simulator": uses_simulator,
            "apns_team_id": apns_team_id,
            "apns_key_id": apns_key_id,
            "apns_bundle_id": apns_bundle_id,
            "apns_environment": apns_environment,
            "identity_verification_required": identity_verification_required,
        },
        remove_apns=False,
        remove_fcm=False,
        apns_key_given=apns_private_key is not None,
        fcm_given=fcm_service_account is not None,
    )
    if errors:
        raise ValidationError(errors)
    changed = _set_secrets(app, apns_private_key=apns_private_key, fcm_service_account=fcm_service_account)
    with transaction.atomic():
        app.save()
        audit(actor=by, action="app_created", obj=app, summary={"credentials": changed, **_credential_labels(app)})
        if by is not None and by.pk:
            access_grant(obj=app, to=by, by=None)
    return app


@sensitive_variables("apns_private_key", "fcm_service_account")
def app_update(
    *,
    app_id: int,
    by: User | None,
    name: str | None = None,
    rate_limit_per_second: int | None = None,
    uses_simulator: bool | None = None,
    apns_team_id: str | None = None,
    apns_key_id: str | None = None,
    apns_bundle_id: str | None = None,
    apns_environment: str | None = None,
    apns_private_key: Secret | None = None,
    fcm_service_account: ServiceAccountInfo | None = None,
    remove_apns: bool = False,
    remove_fcm: bool = False,
    identity_verification_required: bool | None = None,
) -> App:
    """Change an app: the fields given (None keeps a field), a replaced key or JSON, or a removed channel.

    Locks the app row. Raises PermissionDenied when ``by`` may not change this app,
    ValidationError naming every wrong field at once (nothing is saved then), among them the
    channel's remove flag when it comes with that channel's new credentials.
    """
    with transaction.atomic():
        app = App.objects.select_for_update().get(pk=app_id)
        _ensure_may_write(by, app)
        changed_fields, errors = _app_changes_apply(
            app,
            fields={
                "name": name,
                "rate_limit_per_second": rate_limit_per_second,
                "uses_simulator": uses_simulator,
                "apns_team_id": apns_team_id,
                "apns_key_id": apns_key_id,
                "apns_bundle_id": apns_bundle_id,
                "apns_environment": apns_environment,
                "identity_verification_required": identity_verification_required,
            },
            remove_apns=remove_apns,
            remove_fcm=remove_fcm,
            apns_key_given=apns_private_key is not None,
            fcm_given=fcm_service_account is not None,
        )
        if errors:
            raise ValidationError(errors)
        replaced = _set_secrets(app, apns_private_key=apns_private_key, fcm_service_account=fcm_service_account)
        app.save()
        audit(
            actor=by,
            action="app_changed",
            obj=app,
            summary={"fields": changed_fields, "credentials": replaced, **_credential_labels(app)},
        )
    return app


# --- identity verification -------------------------------------------------------------------------

VERIFICATION_REQUIRED_TOO_SOON = (
    "Generate the app's identity secret first (the list's action 'Generate a new identity secret'), and "
    "have your backend hand each signed-in phone its identity_hash, before requiring it."
)


@sensitive_variables("secret")
def app_identity_secret_rotate(*, app_id: int, by: User) -> str:
    """Generate a new identity secret for an app, store it encrypted, and return it: the only time
    it is seen. The one before stops verifying at once.

    Locks the app row. Audits its fingerprint, never the secret. Raises PermissionDenied when ``by``
    may not change this app (an Administrator with access to it).
    """
    secret = secrets.token_hex(32)
    with transaction.atomic():
        app = App.objects.select_for_update().get(pk=app_id)
        if not can(by, "delivery.change_app", app):
            raise PermissionDenied("Only an Administrator with access to this app can change its identity secret.")
        replaced = bool(app.identity_secret_fingerprint)
        app.identity_secret = secret
        app.identity_secret_fingerprint = fingerprint(secret)
        app.identity_secret_set_at = timezone.now()
        app.save(
            update_fields=["identity_secret", "identity_secret_fingerprint", "identity_secret_set_at", "updated_at"]
        )
        audit(
            actor=by,
            action="app_identity_secret_rotated" if replaced else "app_identity_secret_generated",
            obj=app,
            summary={"identity_secret": app.identity_secret_fingerprint},
        )
    return secret


class IdentityUnverified(Exception):
    """The identity_hash sent is not the app's HMAC of the external id (or the app has no secret)."""


class IdentitySecretUnreadable(Exception):
    """The app's identity secret cannot be decrypted with PUSHDESK_ENCRYPTION_KEY: no hash can be
    checked until the key that sealed it is back (``status`` names the app)."""


@sensitive_variables("secret", "expected")
def app_identity_verify(*, app_id: int, external_id: str, identity_hash: str | None) -> None:
    """Check that ``identity_hash`` is the lowercase hex HMAC-SHA256 of ``external_id`` under the
    app's identity secret, when the app requires identity verification (compared in constant
    time); an app that does not require it takes anything.

    Raises ValidationError on ``identity_hash`` when it is required and missing, IdentityUnverified
    when it does not match. Only for calls made with a key without the read scope: a backend's key
    is trusted with any external id.
    """
    app = App.objects.only("identity_verification_required", "identity_secret").get(pk=app_id)
    if not app.identity_verification_required:
        return
    if not identity_hash:
        raise ValidationError(
            {
                "identity_hash": "This app requires identity verification: send identity_hash, the HMAC-SHA256 of "
                "external_id under the app's identity secret, computed by your backend."
            }
        )
    try:
        secret = app.identity_secret
    except ImproperlyConfigured:
        raise IdentitySecretUnreadable() from None
    expected = hmac.new(secret.encode(), external_id.encode(), hashlib.sha256).hexdigest() if secret else ""
    if not expected or not hmac.compare_digest(expected.encode(), identity_hash.lower().encode()):
        raise IdentityUnverified()


# An app's deletion removes its devices, and the reach trigger then locks their profiles
# (``delivery_profiles_reach_refresh``): holding a device, it could wait for a profile that a
# profile's deletion held while that deletion waited for the device ('deadlock detected'). So the
# profiles are locked first, in id order, ``FOR UPDATE`` as a profile's deletion locks them: a
# device call holding one ``FOR KEY SHARE`` (``delivery.services.devices``) is waited for before
# any device goes, and waits for the deletion after.
APPS_PROFILES_LOCK_PG = """
SELECT count(*) FROM (
    SELECT id FROM audiences_profile
    WHERE id IN (SELECT profile_id FROM delivery_device WHERE app_id = ANY(%s))
    ORDER BY id FOR UPDATE
) AS held
"""


def apps_delete(*, app_ids: list[int], by: User) -> int:
    """Delete apps with their devices and delivery rules; return how many there were.

    Locks their devices' profiles first (``APPS_PROFILES_LOCK_PG``), then deletes each app.
    Raises PermissionDenied when ``by`` may not delete one of them (nothing is deleted then),
    ProtectedError while a send, a content, a campaign or a journey uses one.
    """
    with transaction.atomic():
        apps = list(App.objects.filter(pk__in=app_ids).order_by("id"))
        for app in apps:
            if not can(by, "delivery.delete_app", app):
                raise PermissionDenied("Only an Administrator with access to this app can delete it.")
        if apps and connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(APPS_PROFILES_LOCK_PG, [[app.pk for app in apps]])
        for app in apps:
            audit(actor=by, action="app_deleted", obj=app, summary={"name": app.name})
            app.delete()
    return len(apps)


@sensitive_variables("apns_private_key", "fcm_service_account")
def _set_secrets(
    app: App, *, apns_private_key: Secret | None, fcm_service_account: ServiceAccountInfo | None
) -> list[str]:
    now = timezone.now()
    replaced = []
    if apns_private_key is not None:
        app.apns_private_key = apns_private_key.value
        app.apns_private_key_fingerprint = fingerprint(apns_private_key.value)
        app.apns_private_key_set_at = now
        replaced.append("apns_private_key")
    if fcm_service_account is not None:
        app.fcm_service_account = fcm_service_account.secret.value
        app.fcm_service_account_fingerprint = fingerprint(fcm_service_account.secret.value)
        app.fcm_service_account_set_at = now
        app.fcm_project_id = fcm_service_account.project_id
        app.fcm_client_email = fcm_service_account.client_email
        replaced.append("fcm_service_account")
    return replaced


def _credential_labels(app: App) -> dict:
    """Non-secret labels of the credentials, for the audit log: fingerprints, never values."""
    return {
        "apns_key": app.apns_private_key_fingerprint or None,
        "fcm_service_account": app.fcm_service_account_fingerprint or None,
    }


@dataclass(frozen=True)
class ConnectionCheck:
    """What one provider answered to "Test connection"."""

    provider: str  # "APNs" or "FCM"
    ok: bool
    message: str

    def __post_init__(self):
        # It quotes the provider's (or its token endpoint's) words, which may hold a NUL or a lone
        # surrogate: the admin's page could not be encoded with them.
        object.__setattr__(self, "message", storable_text(self.message))


def _httpx_client(url: str) -> httpx.Client:
    verify: bool | ssl.SSLContext = True
    if settings.PUSHDESK_CA_BUNDLE:
        verify = ssl.create_default_context(cafile=settings.PUSHDESK_CA_BUNDLE)
    if url.startswith("http://"):
        return httpx.Client(http1=False, http2=True, timeout=15)  # h2c: the simulator on loopback
    return httpx.Client(http2=True, verify=verify, timeout=15)


def _post(url: str, request: Request) -> Response:
    """Send one provider request through httpx (HTTP/2; h2c for http:// URLs) and read it as the transport would."""
    headers = dict(line.split(": ", 1) for line in request.headers)
    with _httpx_client(url) as http:
        answer = http.post(request.url, headers=headers, content=request.body)
    return Response(status=answer.status_code, headers=dict(answer.headers), body=answer.content)


def _check_apns(app: App) -> ConnectionCheck:
    """Mint a provider token and post it with a probe token: APNs checks the token before the device."""
    client = ApnsClient.for_app(app, transport=_NoTransport())
    request = client.build_request(ApnsMessage(token=PROBE_DEVICE_TOKEN, payload={"aps": {}}))
    try:
        response = _post(request.url, request)
    except httpx.HTTPError as exc:
        return ConnectionCheck("APNs", False, f"Could not reach APNs at {client.base_url}: {type(exc).__name__}.")
    outcome = client.interpret(response)
    if outcome.reason in ("BadDeviceToken", "Unregistered") or outcome.accepted:
        return ConnectionCheck(
            "APNs",
            True,
            f"APNs ({app.apns_environment}) accepted the provider token for team {app.apns_team_id}, "
            f"key {app.apns_key_id}, topic {app.apns_bundle_id} (it answered {response.status} "
            f"{outcome.reason or 'OK'} for a probe device token, as expected).",
        )
    hint = _APNS_REFUSALS.get(outcome.reason)
    return ConnectionCheck(
        "APNs", False, f"APNs answered {response.status} {outcome.reason}" + (f": {hint}." if hint else ".")
    )


# Which of the app's fields an APNs refusal of the connection test points to.
_APNS_REFUSALS = {
    "InvalidProviderToken": "check the team id, the key id and the .p8 key (one key, of that team)",
    "ExpiredProviderToken": "check this server's clock (the provider token's time)",
    "BadEnvironmentKeyInToken": "check the environment (the key is for the other one)",
    "BadEnvironmentKeyIdInToken": "check the environment (the key is for the other one)",
    "TopicDisallowed": "check the bundle id (the key's team may not push to it)",
    "BadTopic": "check the bundle id",
    "MissingTopic": "check the bundle id",
}


def _check_fcm(app: App) -> ConnectionCheck:
    """Obtain an OAuth access token, then ask FCM to validate (not send) a message to a topic."""
    info = json.loads(app.fcm_service_account)
    with _httpx_client(info["token_uri"]) as token_http:
        client = FcmClient.for_app(app, transport=_NoTransport(), http=token_http)
        try:
            token = client.access_token.get()
        except google.auth.exceptions.GoogleAuthError as exc:
            detail = str(exc.args[0]) if exc.args else type(exc).__name__
            if isinstance(exc, google.auth.exceptions.TransportError):  # no answer: nothing was refused
                return ConnectionCheck("FCM", False, f"Could not reach the token endpoint: {detail[:200]}.")
            return ConnectionCheck("FCM", False, f"The token endpoint refused the service account: {detail[:200]}")
    probe = FcmMessage(
        message={"topic": "pushdesk-connection-test", "notification": {"title": "Connection test"}}, validate_only=True
    )
    request = client.build_request(probe, token)
    try:
        response = _post(request.url, request)
    except httpx.HTTPError as exc:
        return ConnectionCheck("FCM", False, f"Could not reach FCM at {client.base_url}: {type(exc).__name__}.")
    outcome = client.interpret(response)
    if outcome.accepted:
        return ConnectionCheck(
            "FCM",
            True,
            f"FCM accepted a validate-only message for project {app.fcm_project_id} "
            f"as {app.fcm_client_email} ({outcome.provider_id}).",
        )
    return ConnectionCheck(
        "FCM", False, f"FCM answered {response.status} {outcome.reason}: {outcome.detail or 'no detail'}"
    )


class _NoTransport:
    """Test connection goes through httpx; the provider clients only build and read its requests."""

    def send(self, requests):
        raise RuntimeError("Test connection sends through httpx")

    def close(self) -> None:
        pass


# The credentials a send decrypts (``app_secrets_read``); the stored secrets a restore must bring
# back the key of (``status``, the metrics, the app's page) are those and the identity secret.
SECRET_FIELDS = {"apns_private_key": "the APNs .p8 key", "fcm_service_account": "the FCM service account"}
STORED_SECRETS = {**SECRET_FIELDS, "identity_secret": "the identity secret"}


def _unreadable(app_id: int, name: str, what: str) -> str:
    return (
        f"app '{name}' (id {app_id}): {what} cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY "
        "(a different key, or one dropped before rotating?)"
    )


def app_secret_problems(*, app_id: int | None = None) -> dict[int, list[str]]:
    """Try to decrypt each app's stored credentials (or ``app_id``'s) with PUSHDESK_ENCRYPTION_KEY;
    return {app id: [what cannot be decrypted, said]} for those that fail, never a secret. For
    ``manage.py status`` and the home page (a restore drill's check that the key came along)."""
    columns = ", ".join(STORED_SECRETS)
    sql = f"SELECT id, name, {columns} FROM {App._meta.db_table}"  # noqa: S608 (constants)
    params = []
    if app_id is not None:
        sql += " WHERE id = %s"
        params.append(app_id)
    problems: dict[int, list[str]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql + " ORDER BY name, id", params)
        for pk, name, *stored in cursor.fetchall():
            for what, token in zip(STORED_SECRETS.values(), stored, strict=True):
                if not secret_decrypts(token):
                    problems.setdefault(pk, []).append(_unreadable(pk, name, what))
    return problems


def app_secrets_unreadable(*, app_id: int) -> list[str]:
    """The names of an app's stored secrets (``STORED_SECRETS``) that are set and that no key of
    PUSHDESK_ENCRYPTION_KEY opens; one query, nothing kept decrypted. For the app's page."""
    stored = App.objects.filter(pk=app_id).values_list(*STORED_SECRETS).first()
    if stored is None:
        return []
    return [
        field
        for field, token in zip(STORED_SECRETS, stored, strict=True)
        if token and not secret_decrypts(token.token)  # as loaded: a Sealed token
    ]


def app_secrets_read(app: App) -> list[str]:
    """Decrypt a loaded app's credentials (kept on it for the send) and return what cannot be
    decrypted, said as ``app_secret_problems`` says it (never a secret); no query. Whoever is about to
    send, or to test the connection, reads them first: a send starts only when both are read."""
    problems = []
    for field, what in SECRET_FIELDS.items():
        try:
            getattr(app, field)
        except ImproperlyConfigured:
            problems.append(_unreadable(app.pk, app.name, what))
    return problems


def app_test_connection(*, app_id: int, by: User) -> list[ConnectionCheck]:
    """Check each configured channel of an app against its provider, and audit the answers.

    APNs: a freshly minted provider token, posted with a probe device token. FCM: an OAuth
    access token from the token URI, then a ``validate_only`` message. Raises
    PermissionDenied when ``by`` may not test this app's connection.
    """
    app = App.objects.get(pk=app_id)
    if not can(by, "delivery.test_connection_app", app):
        raise PermissionDenied("Only an Administrator with access to this app can test its connection.")
    checks = []
    unreadable = app_secrets_read(app)  # decrypted once, for the checks below
    if unreadable:  # a restored database under another key: say so, rather than fail
        checks.append(ConnectionCheck("-", False, f"{'; '.join(unreadable)}: nothing was tried."))
    else:
        if app.apns_configured:
            checks.append(_check_apns(app))
        if app.fcm_configured:
            checks.append(_check_fcm(app))
    if not checks:
        checks.append(ConnectionCheck("-", False, "This app has no APNs or FCM credentials yet."))
    audit(
        actor=by,
        action="app_connection_tested",
        obj=app,
        summary={c.provider: "ok" if c.ok else "failed" for c in checks},
    )
    return checks
