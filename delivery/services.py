"""Every write of the delivery app. Apps and their channel credentials come first.

Credentials are validated before anything is written, so a bad upload saves nothing. They
are encrypted at rest (``EncryptedTextField``), and only their fingerprint and the time they
were set are ever shown again. No secret appears in an audit event, a log line or an
exception message: errors name the field and the rule broken, never the value.
"""

from __future__ import annotations

import json
import logging
import random
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import google.auth.exceptions
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables
from liquid.exceptions import LiquidError

from accounts.encryption import fingerprint
from accounts.models import User
from accounts.selectors import can
from accounts.services import access_grant, audit
from audiences.models import Profile
from delivery.models import App, Delivery, Device, Dispatch, Platform, PushContent
from delivery.payloads import (
    APNS_LIMIT,
    RECIPIENT_CONTEXTS,
    apns_options,
    apns_payload,
    encode,
    fcm_message,
    fcm_payload_fits,
    message_render,
    recipient_context,
    spec_is_personalized,
    spec_validate,
)
from delivery.providers import Outcome, OutcomeKind
from delivery.providers.apns import ApnsClient, ApnsMessage
from delivery.providers.fcm import FcmClient, FcmMessage
from delivery.rules import local_time_apply, rules_apply
from delivery.throttle import throttle_acquire
from delivery.transport import Http2Transport, Request, Response

TEAM_ID = re.compile(r"^[A-Z0-9]{10}$")
KEY_ID = re.compile(r"^[A-Z0-9]{10}$")
BUNDLE_ID = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
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


# --- validation ------------------------------------------------------------------------------


@sensitive_variables("raw", "text", "key")
def apns_key_parse(*, raw: bytes) -> Secret:
    """Check an uploaded ``.p8`` file is an unencrypted EC P-256 private key in PKCS#8 PEM.

    Raises ValidationError on ``apns_private_key`` naming what is wrong (never the content).
    """
    if len(raw) > MAX_UPLOAD:
        raise ValidationError({"apns_private_key": "The .p8 file is too large to be an APNs key."})
    try:
        text = raw.decode("ascii").strip()
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
    except (ValueError, UnicodeDecodeError):
        raise ValidationError({field: "The service-account file is not JSON."}) from None
    if not isinstance(data, dict):
        raise ValidationError({field: "The service-account JSON must be an object."})
    missing = [name for name in SERVICE_ACCOUNT_FIELDS if not isinstance(data.get(name), str) or not data.get(name)]
    if missing:
        raise ValidationError({field: f"The service-account JSON has no {', '.join(missing)}."})
    if data["type"] != "service_account":
        raise ValidationError({field: 'The JSON is not a service account ("type" must be "service_account").'})
    try:
        key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        raise ValidationError({field: "The service account's private_key is not a readable PEM private key."}) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValidationError({field: "The service account's private_key must be an RSA key."})
    if "@" not in data["client_email"]:
        raise ValidationError({field: "The service account's client_email is not an email address."})
    token_uri = data["token_uri"]
    if not (token_uri.startswith("https://") or token_uri.startswith(("http://127.0.0.1", "http://localhost"))):
        raise ValidationError({field: "The service account's token_uri must be an https:// URL."})
    return ServiceAccountInfo(
        secret=Secret(json.dumps(data)), project_id=data["project_id"], client_email=data["client_email"]
    )


def _check_apns_fields(*, team_id: str, key_id: str, bundle_id: str, environment: str, has_key: bool) -> None:
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
    if errors:
        raise ValidationError(errors)


# --- apps ------------------------------------------------------------------------------------------


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
) -> App:
    """Create an app with its channel credentials; the creator gets access to it.

    Credentials come already parsed (``apns_key_parse``, ``service_account_parse``). Raises
    PermissionDenied when ``by`` may not add apps (Administrators only; ``by=None`` is the
    system), ValidationError naming each wrong field; nothing is saved then.
    """
    if by is not None and not by.has_perm("delivery.add_app"):
        raise PermissionDenied("Only an Administrator can add apps.")
    _check_apns_fields(
        team_id=apns_team_id,
        key_id=apns_key_id,
        bundle_id=apns_bundle_id,
        environment=apns_environment,
        has_key=apns_private_key is not None,
    )
    if rate_limit_per_second < 1:
        raise ValidationError({"rate_limit_per_second": "The rate limit must be at least 1 message per second."})
    if App.objects.filter(name=name).exists():
        raise ValidationError({"name": "An app with this name already exists."})
    app = App(
        name=name,
        rate_limit_per_second=rate_limit_per_second,
        uses_simulator=uses_simulator,
        apns_team_id=apns_team_id,
        apns_key_id=apns_key_id,
        apns_bundle_id=apns_bundle_id,
        apns_environment=apns_environment,
        created_by=by if by is not None and by.pk else None,
    )
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
) -> App:
    """Change an app: the fields given (None keeps a field), a replaced key or JSON, or a removed channel.

    Locks the app row. Raises PermissionDenied when ``by`` may not change this app,
    ValidationError naming each wrong field (nothing is saved then).
    """
    with transaction.atomic():
        app = App.objects.select_for_update().get(pk=app_id)
        if by is not None and not can(by, "delivery.change_app", app):
            raise PermissionDenied("Only an Administrator with access to this app can change it.")
        changed_fields = []
        for field, value in (
            ("name", name),
            ("rate_limit_per_second", rate_limit_per_second),
            ("uses_simulator", uses_simulator),
            ("apns_team_id", apns_team_id),
            ("apns_key_id", apns_key_id),
            ("apns_bundle_id", apns_bundle_id),
            ("apns_environment", apns_environment),
        ):
            if value is not None and getattr(app, field) != value:
                setattr(app, field, value)
                changed_fields.append(field)
        if remove_apns:
            app.apns_team_id = app.apns_key_id = app.apns_bundle_id = ""
            app.apns_private_key = app.apns_private_key_fingerprint = ""
            app.apns_private_key_set_at = None
            changed_fields.append("apns_removed")
        if remove_fcm:
            app.fcm_service_account = app.fcm_service_account_fingerprint = ""
            app.fcm_project_id = app.fcm_client_email = ""
            app.fcm_service_account_set_at = None
            changed_fields.append("fcm_removed")
        _check_apns_fields(
            team_id=app.apns_team_id,
            key_id=app.apns_key_id,
            bundle_id=app.apns_bundle_id,
            environment=app.apns_environment,
            has_key=bool(app.apns_private_key_fingerprint) or apns_private_key is not None,
        )
        if app.rate_limit_per_second < 1:
            raise ValidationError({"rate_limit_per_second": "The rate limit must be at least 1 message per second."})
        if App.objects.filter(name=app.name).exclude(pk=app.pk).exists():
            raise ValidationError({"name": "An app with this name already exists."})
        replaced = _set_secrets(app, apns_private_key=apns_private_key, fcm_service_account=fcm_service_account)
        app.save()
        audit(
            actor=by,
            action="app_changed",
            obj=app,
            summary={"fields": changed_fields, "credentials": replaced, **_credential_labels(app)},
        )
    return app


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


# --- test connection ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionCheck:
    """What one provider answered to "Test connection"."""

    provider: str  # "APNs" or "FCM"
    ok: bool
    message: str


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
    return ConnectionCheck("APNs", False, f"APNs answered {response.status} {outcome.reason}.")


def _check_fcm(app: App) -> ConnectionCheck:
    """Obtain an OAuth access token, then ask FCM to validate (not send) a message to a topic."""
    info = json.loads(app.fcm_service_account)
    with _httpx_client(info["token_uri"]) as token_http:
        client = FcmClient.for_app(app, transport=_NoTransport(), http=token_http)
        try:
            token = client.access_token.get()
        except google.auth.exceptions.GoogleAuthError as exc:
            detail = str(exc.args[0]) if exc.args else type(exc).__name__
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


# --- the send pipeline -------------------------------------------------------------------------------
#
# Every write of the send pipeline: devices, push content, dispatches and their deliveries.
#
# The path of a send (DESIGN.md, "The send pipeline"):
#
# 1. ``dispatch_create`` asks the gate of its kind (campaigns plug approval in with
#    ``dispatch_gate_register``), freezes the content on the Dispatch and queues ``dispatch_prepare``.
# 2. ``dispatch_prepare`` resolves the audience to deliveries with one ``INSERT … SELECT``
#    (skips recorded with their reason) and starts ``PUSHDESK_SEND_TASKS`` send tasks.
# 3. ``dispatch_send`` claims ``queued`` rows in batches (``UPDATE … RETURNING``, ``SKIP LOCKED`` on
#    PostgreSQL), under the app's and the dispatch's rate limits, renders and sends them through
#    the providers (APNs and FCM batches at once), and writes the outcomes back in bulk.
# 4. Transient failures go back to ``queued`` with a backoff that honours ``Retry-After``, within
#    the attempts limit and the TTL; dead tokens deactivate their device.
# 5. A claimed row carries a lease: a worker that dies leaves rows ``sending``;
#    ``deliveries_expire_leases`` turns them ``unknown`` once the lease is over. They are never
#    sent again: a duplicate push is worse than a missing one. For the same reason a request that
#    timed out after it was sent (the provider may have it) ends ``unknown``, not retried.

log = logging.getLogger(__name__)

DS = Delivery.Status


class GateClosed(PermissionDenied):
    """The gate of a dispatch's kind refused it (not approved, not live, outside its schedule...)."""


# --- devices -------------------------------------------------------------------------------------

_APNS_TOKEN = re.compile(r"^[0-9a-fA-F]{64,200}$")
_FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:\-.]{20,512}$")


def device_token_check(*, platform: str, token: str) -> None:
    """Raise ValidationError naming the field when the platform or the token is not acceptable."""
    if platform not in Platform.values:
        raise ValidationError({"platform": f"Unknown platform '{platform}'; use {' or '.join(Platform.values)}."})
    if not token:
        raise ValidationError({"token": "The token is empty."})
    if platform == Platform.IOS and (not _APNS_TOKEN.match(token) or len(token) % 2):
        raise ValidationError({"token": "An APNs device token is hexadecimal: an even number of 64 to 200 digits."})
    if platform == Platform.ANDROID and not _FCM_TOKEN.match(token):
        raise ValidationError(
            {"token": "An FCM registration token is 20 to 512 characters of letters, digits and _ : - ."}
        )


def _ensure_device_write(by: User, app: App) -> None:
    if not by.has_perm("delivery.change_device") or not can(by, "delivery.view_app", app):
        raise PermissionDenied("You may not register devices for this app.")


def device_register(
    *,
    app_id: int,
    external_id: str,
    platform: str,
    token: str,
    by: User,
    push_enabled: bool = True,
    is_test: bool = False,
) -> Device:
    """Register (or re-register) a push token for the profile ``external_id``.

    The profile is created when it does not exist yet. A token already known for the app is
    moved to this profile and made active again (a dead token comes back to life only this way).
    Raises ValidationError on a bad platform or token, PermissionDenied without device write
    access to the app.
    """
    from audiences.services import profile_upsert

    device_token_check(platform=platform, token=token)
    app = App.objects.get(pk=app_id)
    _ensure_device_write(by, app)
    now = timezone.now()
    with transaction.atomic():
        profile = Profile.objects.filter(external_id=external_id).first()
        if profile is None:
            profile_upsert(external_id=external_id, by=by)
            profile = Profile.objects.get(external_id=external_id)
        device, created = Device.objects.select_for_update().update_or_create(
            app=app,
            token=token,
            defaults={
                "profile": profile,
                "platform": platform,
                "push_enabled": push_enabled,
                "is_test": is_test,
                "active": True,
                "invalidated_at": None,
                "invalidated_reason": "",
                "last_registered_at": now,
            },
        )
        audit(
            actor=by,
            action="device_registered" if created else "device_reregistered",
            obj=device,
            summary={"profile": external_id, "platform": platform, "push_enabled": push_enabled},
        )
    return device


def device_opt_in_set(*, app_id: int, token: str, push_enabled: bool, by: User) -> Device:
    """Record the phone's notification opt-in for a registered token. Raises Device.DoesNotExist."""
    app = App.objects.get(pk=app_id)
    _ensure_device_write(by, app)
    with transaction.atomic():
        device = Device.objects.select_for_update().get(app=app, token=token)
        if device.push_enabled != push_enabled:
            device.push_enabled = push_enabled
            device.save(update_fields=["push_enabled"])
            audit(actor=by, action="device_opt_in_changed", obj=device, summary={"push_enabled": push_enabled})
    return device


def device_unregister(*, app_id: int, token: str, by: User) -> Device:
    """Deactivate a token at the app's request (logout, uninstall). Raises Device.DoesNotExist."""
    app = App.objects.get(pk=app_id)
    _ensure_device_write(by, app)
    with transaction.atomic():
        device = Device.objects.select_for_update().get(app=app, token=token)
        if device.active:
            device.active = False
            device.invalidated_at = timezone.now()
            device.invalidated_reason = "unregistered"
            device.save(update_fields=["active", "invalidated_at", "invalidated_reason"])
            audit(actor=by, action="device_unregistered", obj=device)
    return device


def devices_invalidate(*, reasons: dict[int, str], when: datetime | None = None) -> int:
    """Deactivate devices whose token a provider called dead; return how many changed."""
    when = when or timezone.now()
    changed = 0
    by_reason: dict[str, list[int]] = {}
    for device_id, reason in reasons.items():
        by_reason.setdefault(reason, []).append(device_id)
    for reason, ids in by_reason.items():
        changed += Device.objects.filter(pk__in=ids, active=True).update(
            active=False, invalidated_at=when, invalidated_reason=reason[:100]
        )
    return changed


def devices_test_flag_set(*, device_ids: list[int], is_test: bool, by: User) -> int:
    """Mark devices as test devices (or not); return how many changed. Only devices of apps ``by`` may write."""
    from delivery.selectors import devices_visible_to

    if not by.has_perm("delivery.change_device"):
        raise PermissionDenied("You may not change devices.")
    with transaction.atomic():
        rows = devices_visible_to(by).filter(pk__in=device_ids).exclude(is_test=is_test)
        changed = list(rows.values_list("pk", flat=True))
        Device.objects.filter(pk__in=changed).update(is_test=is_test)
        for device in Device.objects.filter(pk__in=changed):
            audit(actor=by, action="device_test_flag_set", obj=device, summary={"is_test": is_test})
    return len(changed)


# --- push content ---------------------------------------------------------------------------------


def pushcontent_save(*, content: PushContent, by: User) -> PushContent:
    """Validate and save push content (new or changed); the creator gets access to it.

    Validation (``delivery.payloads.spec_validate``): templates parse and use known names,
    URLs use allowed schemes, options are valid, and every variant's worst-case payload fits
    APNs' and FCM's 4,096 bytes. Raises ValidationError naming the field, PermissionDenied
    when ``by`` may not write content for the app.
    """
    creating = content.pk is None
    perm = "delivery.add_pushcontent" if creating else "delivery.change_pushcontent"
    if not by.has_perm(perm) or not can(by, "delivery.view_app", App.objects.get(pk=content.app_id)):
        raise PermissionDenied("You may not write push content for this app.")
    if not creating and not can(by, "delivery.change_pushcontent", content):
        raise PermissionDenied("You may not change this push content.")
    spec_validate(content.spec())
    with transaction.atomic():
        content.updated_at = timezone.now()
        if creating:
            content.created_by = by
            content.save()
        else:
            locked = PushContent.objects.select_for_update().get(pk=content.pk)
            content.version = locked.version + 1
            content.save()
        audit(
            actor=by,
            action="pushcontent_created" if creating else "pushcontent_changed",
            obj=content,
            summary={"version": content.version},
        )
        if creating:
            access_grant(obj=content, to=by, by=None)
    return content


# --- dispatches -------------------------------------------------------------------------------------

DispatchGate = Callable[..., None]
_GATES: dict[str, DispatchGate] = {}


def dispatch_gate_register(*, kind: str, gate: DispatchGate) -> None:
    """Plug the gate of a dispatch kind: ``gate(app=, source_id=, spec=, by=)`` raises GateClosed to refuse.

    Campaigns register theirs (approved, live, fingerprint unchanged) when their app loads.
    A kind without a gate is refused: the send path fails closed.
    """
    _GATES[kind] = gate


def _test_gate(*, app: App, source_id: int | None, spec: dict, by: User | None) -> None:
    if by is None or not by.has_perm("delivery.test_send_pushcontent"):
        raise GateClosed("Your role may not send tests.")
    content = PushContent.objects.filter(pk=source_id, app=app).first()
    if content is None or not can(by, "delivery.test_send_pushcontent", content):
        raise GateClosed("You have no access to this push content.")


_GATES[Dispatch.Kind.TEST] = _test_gate


def dispatch_create(
    *,
    app_id: int,
    kind: str,
    spec: dict,
    by: User | None = None,
    content_id: int | None = None,
    segment_id: int | None = None,
    profile_ids: list[int] | None = None,
    context: dict | None = None,
    source_id: int | None = None,
    label: str = "",
    rate_limit_per_second: int | None = None,
    purpose: str = "marketing",
    local_time: str = "",
    local_default_timezone: str = "",
) -> Dispatch:
    """Open a send run after its gate agrees; the audience is resolved and sent by worker tasks.

    ``spec`` (a PushContent's ``spec()``) is copied and frozen on the Dispatch. The audience is
    ``segment_id``, or ``profile_ids``, or, for a test send, the app's test devices.
    Raises GateClosed when the kind's gate refuses (or the kind has none), ValidationError when
    the spec is not sendable.
    """
    app = App.objects.get(pk=app_id)
    gate = _GATES.get(kind)
    if gate is None:
        raise GateClosed(f"No gate is registered for '{kind}' dispatches: nothing is sent.")
    gate(app=app, source_id=source_id, spec=spec, by=by)
    spec_validate(spec)
    if kind != Dispatch.Kind.TEST and segment_id is None and profile_ids is None:
        raise ValidationError({"audience": "A dispatch needs a segment or a list of profiles."})
    with transaction.atomic():
        dispatch = Dispatch.objects.create(
            app=app,
            kind=kind,
            source_id=source_id,
            label=label[:300],
            content_id=content_id,
            content_spec=dict(spec),
            context=context or {},
            segment_id=segment_id,
            profile_ids=list(profile_ids) if profile_ids is not None else None,
            rate_limit_per_second=rate_limit_per_second,
            purpose=purpose,
            local_time=local_time,
            local_default_timezone=local_default_timezone,
            created_by=by if by is not None and by.pk else None,
        )
        audit(actor=by, action="dispatch_created", obj=dispatch, summary={"kind": kind, "source_id": source_id})
        _enqueue_on_commit("delivery.tasks.dispatch_prepare_task", dispatch.pk)
    return dispatch


def pushcontent_test_send(*, content_id: int, by: User) -> Dispatch:
    """Send the content as it is now to its app's test devices (no approval needed).

    Raises GateClosed when ``by`` may not send tests of this content, ValidationError when the
    content is not sendable.
    """
    content = PushContent.objects.get(pk=content_id)
    return dispatch_create(
        app_id=content.app_id,
        kind=Dispatch.Kind.TEST,
        spec=content.spec(),
        by=by,
        content_id=content.pk,
        source_id=content.pk,
        label=f"Test of {content.name}",
        context={},
    )


def _enqueue_on_commit(func: str, *args) -> None:
    from django_q.tasks import async_task

    transaction.on_commit(lambda: async_task(func, *args, q_options={"timeout": _task_timeout()}))


def _enqueue(func: str, *args) -> None:
    from django_q.tasks import async_task

    async_task(func, *args, q_options={"timeout": _task_timeout()})


def _task_timeout() -> int:
    return int(settings.PUSHDESK_SEND_TASK_SECONDS + settings.PUSHDESK_SEND_LEASE_SECONDS)


def _dt(value: datetime | None):
    return connection.ops.adapt_datetimefield_value(value) if value is not None else None


def _audience_sql(dispatch: Dispatch) -> tuple[str, list]:
    """The SELECT of the profiles targeted (one column, ``id``) and its parameters."""
    if dispatch.segment_id is not None:
        from audiences.models import Segment
        from audiences.rules import segment_profiles

        segment = Segment.objects.filter(pk=dispatch.segment_id).first()
        audience: QuerySet = segment_profiles(segment) if segment is not None else Profile.objects.none()
    else:
        audience = Profile.objects.filter(pk__in=dispatch.profile_ids or [])
    if audience.query.is_empty():
        return "SELECT id FROM audiences_profile WHERE 1 = 0", []
    sql, params = audience.order_by().values("id").query.sql_with_params()
    return sql, list(params)


def dispatch_prepare(*, dispatch_id: int, send_inline: bool = False) -> bool:
    """Resolve the audience to deliveries (one INSERT … SELECT) and start the send tasks.

    Idempotent: runs only while the dispatch is ``preparing``; the insert skips rows that exist.
    Every targeted profile gets a row: its devices (``queued``, or ``skipped`` / ``not_opted_in``)
    or one ``skipped`` / ``no_device`` row. With ``send_inline``, a dispatch small enough for one
    send task is left to the caller (returns True), which saves a trip through the queue.
    """
    inline = False
    now = timezone.now()
    with transaction.atomic():
        dispatch = Dispatch.objects.select_for_update().filter(pk=dispatch_id).first()
        if dispatch is None or dispatch.status != Dispatch.Status.PREPARING:
            return False
        status_sql = (
            f"CASE WHEN dev.id IS NULL THEN '{DS.SKIPPED}' WHEN dev.push_enabled THEN '{DS.QUEUED}' "
            f"ELSE '{DS.SKIPPED}' END"
        )
        reason_sql = "CASE WHEN dev.id IS NULL THEN 'no_device' WHEN dev.push_enabled THEN '' ELSE 'not_opted_in' END"
        finished_sql = "CASE WHEN dev.id IS NOT NULL AND dev.push_enabled THEN NULL ELSE %s END"
        columns = "dispatch_id, device_id, profile_id, status, reason, provider_message_id, attempts, finished_at"
        if dispatch.kind == Dispatch.Kind.TEST:
            sql = (
                f"INSERT INTO delivery_delivery ({columns}) "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
                f"SELECT %s, dev.id, dev.profile_id, {status_sql}, {reason_sql}, '', 0, {finished_sql} "
                "FROM delivery_device dev WHERE dev.app_id = %s AND dev.is_test AND dev.active "
                "ON CONFLICT DO NOTHING"
            )
            params = [dispatch.pk, _dt(now), dispatch.app_id]
        else:
            audience_sql, audience_params = _audience_sql(dispatch)
            sql = (
                f"INSERT INTO delivery_delivery ({columns}) "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
                f"SELECT %s, dev.id, p.id, {status_sql}, {reason_sql}, '', 0, {finished_sql} "
                f"FROM ({audience_sql}) p "
                "LEFT JOIN delivery_device dev ON dev.profile_id = p.id AND dev.app_id = %s AND dev.active "
                "WHERE 1 = 1 ON CONFLICT DO NOTHING"
            )
            params = [dispatch.pk, _dt(now), *audience_params, dispatch.app_id]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
        local_time_apply(dispatch=dispatch, now=now)
        held = rules_apply(dispatch=dispatch, now=now)
        if held:
            audit(actor=None, action="dispatch_rules_applied", obj=dispatch, summary=held)
        counts = dict(
            Delivery.objects.filter(dispatch_id=dispatch.pk).values_list("status").annotate(n=Count("id")).order_by()
        )
        dispatch.total = sum(counts.values())
        dispatch.skipped = counts.get(DS.SKIPPED, 0)
        dispatch.status = Dispatch.Status.SENDING
        dispatch.started_at = now
        dispatch.save(update_fields=["total", "skipped", "status", "started_at"])
        audit(actor=None, action="dispatch_started", obj=dispatch, summary={"total": dispatch.total})
        if counts.get(DS.QUEUED, 0):
            tasks = max(1, min(settings.PUSHDESK_SEND_TASKS, -(-counts[DS.QUEUED] // settings.PUSHDESK_SEND_BATCH)))
            inline = send_inline and tasks == 1
            for _ in range(0 if inline else tasks):
                _enqueue_on_commit("delivery.tasks.dispatch_send_task", dispatch.pk)
    if not counts.get(DS.QUEUED, 0):
        dispatch_complete_if_done(dispatch_id=dispatch_id)
    return inline


def dispatch_stop(*, dispatch_id: int, by: User) -> Dispatch:
    """Stop a dispatch: its queued rows become ``skipped`` / ``stopped``; rows in flight finish.

    Raises PermissionDenied without ``delivery.stop_dispatch`` on it; stopping a finished
    dispatch changes nothing.
    """
    with transaction.atomic():
        dispatch = Dispatch.objects.select_for_update().get(pk=dispatch_id)
        if not can(by, "delivery.stop_dispatch", dispatch):
            raise PermissionDenied("You may not stop this dispatch.")
        if dispatch.status in Dispatch.FINAL_STATUSES:
            return dispatch
        stopped = Delivery.objects.filter(dispatch_id=dispatch.pk, status=DS.QUEUED).update(
            status=DS.SKIPPED, reason="stopped", finished_at=timezone.now(), next_attempt_at=None
        )
        dispatch.status = Dispatch.Status.STOPPED
        dispatch.finished_at = timezone.now()
        dispatch.skipped = F("skipped") + stopped
        dispatch.save(update_fields=["status", "finished_at", "skipped"])
        audit(actor=by, action="dispatch_stopped", obj=dispatch, summary={"stopped": stopped})
    dispatch.refresh_from_db()
    return dispatch


def dispatch_recount(*, dispatch_id: int) -> Dispatch:
    """Set a dispatch's counters from its rows (one GROUP BY); used when it finishes."""
    counts = dict(
        Delivery.objects.filter(dispatch_id=dispatch_id).values_list("status").annotate(n=Count("id")).order_by()
    )
    opened = Delivery.objects.filter(dispatch_id=dispatch_id, opened_at__isnull=False).count()
    Dispatch.objects.filter(pk=dispatch_id).update(
        total=sum(counts.values()),
        accepted=counts.get(DS.ACCEPTED, 0),
        failed=counts.get(DS.FAILED, 0),
        skipped=counts.get(DS.SKIPPED, 0),
        unknown=counts.get(DS.UNKNOWN, 0),
        opened=opened,
    )
    return Dispatch.objects.get(pk=dispatch_id)


def dispatch_complete_if_done(*, dispatch_id: int) -> bool:
    """Mark a sending dispatch ``done`` once no row is queued or in flight; True when it is final."""
    busy = Delivery.objects.filter(dispatch_id=dispatch_id, status__in=(DS.QUEUED, DS.SENDING)).exists()
    if busy:
        return False
    with transaction.atomic():
        dispatch = Dispatch.objects.select_for_update().get(pk=dispatch_id)
        if dispatch.status == Dispatch.Status.SENDING:
            dispatch.status = Dispatch.Status.DONE
            dispatch.finished_at = timezone.now()
            dispatch.save(update_fields=["status", "finished_at"])
            dispatch = dispatch_recount(dispatch_id=dispatch_id)
            audit(
                actor=None,
                action="dispatch_done",
                obj=dispatch,
                summary={"accepted": dispatch.accepted, "failed": dispatch.failed, "unknown": dispatch.unknown},
            )
    if Dispatch.objects.filter(pk=dispatch_id, status=Dispatch.Status.STOPPED).exists():
        dispatch_recount(dispatch_id=dispatch_id)
    return True


def deliveries_expire_leases(*, now: datetime | None = None) -> int:
    """Turn rows whose lease ran out while ``sending`` into ``unknown`` (never re-sent); return how many.

    Also finishes the dispatches this completes, and restarts sending for dispatches whose
    send tasks were lost (queued rows ready, nobody claiming them).
    """
    now = now or timezone.now()
    expired = list(
        Delivery.objects.filter(status=DS.SENDING, lease_expires_at__lt=now)
        .values_list("dispatch_id")
        .annotate(n=Count("id"))
        .order_by()
    )
    total = 0
    for dispatch_id, _ in expired:
        changed = Delivery.objects.filter(dispatch_id=dispatch_id, status=DS.SENDING, lease_expires_at__lt=now).update(
            status=DS.UNKNOWN, reason="lease_expired", lease_expires_at=None, finished_at=now
        )
        Dispatch.objects.filter(pk=dispatch_id).update(unknown=F("unknown") + changed)
        total += changed
        dispatch_complete_if_done(dispatch_id=dispatch_id)
    return total


def dispatches_watch(*, now: datetime | None = None) -> list[int]:
    """The watchdog (every minute): expire leases, and restart dispatches whose tasks were lost.

    A dispatch is restarted when it is ``sending`` with queued rows ready to go and none in
    flight, a lease's length after it started. Returns the restarted dispatch ids.
    """
    now = now or timezone.now()
    deliveries_expire_leases(now=now)
    restarted = []
    quiet_since = now - timedelta(seconds=settings.PUSHDESK_SEND_LEASE_SECONDS)
    for dispatch in Dispatch.objects.filter(status=Dispatch.Status.SENDING, started_at__lt=quiet_since).only("id"):
        rows = Delivery.objects.filter(dispatch_id=dispatch.pk)
        if rows.filter(status=DS.SENDING).exists():
            continue
        queued = rows.filter(status=DS.QUEUED)
        if queued.filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)).exists():
            _enqueue("delivery.tasks.dispatch_send_task", dispatch.pk)
            restarted.append(dispatch.pk)
        elif not queued.exists():
            dispatch_complete_if_done(dispatch_id=dispatch.pk)
        # Rows held for later (a retry, quiet hours, local time) wait for their own schedule.
    return restarted


# --- sending ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class Claimed:
    id: int
    device_id: int | None
    profile_id: int | None
    attempts: int
    token: str = ""
    platform: str = ""
    profile: dict | None = None


@dataclass(slots=True)
class Result:
    """What to write back for one row."""

    id: int
    status: str
    reason: str = ""
    provider_id: str = ""
    next_attempt_at: datetime | None = None


@dataclass
class SendReport:
    """What one ``dispatch_send`` call did (for logs, tests and the benchmark)."""

    claimed: int = 0
    outcomes: Counter = field(default_factory=Counter)
    batches: int = 0


def _claim(dispatch_id: int, *, limit: int, now: datetime, with_profiles: bool = False) -> list[Claimed]:
    """Atomically move up to ``limit`` ready queued rows to ``sending`` under a lease.

    On PostgreSQL one statement claims (``FOR UPDATE SKIP LOCKED``) and returns each row with
    its device's token and platform (and its profile when ``with_profiles``).
    """
    lease = now + timedelta(seconds=settings.PUSHDESK_SEND_LEASE_SECONDS)
    ready = "dispatch_id = %s AND status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= %s)"
    if connection.vendor == "postgresql":
        profile_columns = ", p.external_id, p.locale, p.timezone, p.attributes" if with_profiles else ""
        profile_join = " LEFT JOIN audiences_profile p ON p.id = c.profile_id" if with_profiles else ""
        sql = (
            f"WITH picked AS (SELECT id FROM delivery_delivery WHERE {ready} ORDER BY id LIMIT %s "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
            "FOR UPDATE SKIP LOCKED), "
            "claimed AS (UPDATE delivery_delivery d SET status = 'sending', attempts = d.attempts + 1, "
            "lease_expires_at = %s FROM picked WHERE d.id = picked.id "
            "RETURNING d.id, d.device_id, d.profile_id, d.attempts) "
            f"SELECT c.id, c.device_id, c.profile_id, c.attempts, dev.token, dev.platform{profile_columns} "
            f"FROM claimed c LEFT JOIN delivery_device dev ON dev.id = c.device_id{profile_join}"
        )
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, [dispatch_id, _dt(now), limit, _dt(lease)])
            fetched = cursor.fetchall()
        rows = []
        for values in fetched:
            row = Claimed(*values[:4], token=values[4] or "", platform=values[5] or "")
            if with_profiles and values[6] is not None:
                attributes = values[9]
                if isinstance(attributes, str):
                    attributes = json.loads(attributes)
                row.profile = {
                    "external_id": values[6],
                    "locale": values[7],
                    "timezone": values[8],
                    "attributes": attributes or {},
                }
            rows.append(row)
        rows.sort(key=lambda r: r.id)
        return rows
    sql = (
        "UPDATE delivery_delivery SET status = 'sending', attempts = attempts + 1, lease_expires_at = %s "  # noqa: S608 (constants and the ORM's own SQL; values are bound)
        f"WHERE id IN (SELECT id FROM delivery_delivery WHERE {ready} ORDER BY id LIMIT %s) "
        "RETURNING id, device_id, profile_id, attempts"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [_dt(lease), dispatch_id, _dt(now), limit])
        rows = [Claimed(*row) for row in cursor.fetchall()]
    if rows:
        devices = {
            d[0]: d[1:]
            for d in Device.objects.filter(pk__in=[r.device_id for r in rows if r.device_id]).values_list(
                "id", "token", "platform"
            )
        }
        profiles = _profiles_for(rows) if with_profiles else {}
        for row in rows:
            row.token, row.platform = devices.get(row.device_id, ("", ""))
            row.profile = profiles.get(row.profile_id)
    return rows


def _write_back(dispatch_id: int, results: list[Result], *, now: datetime) -> Counter:
    """Write outcomes in bulk, only over rows still ``sending``; return the final statuses written."""
    if not results:
        return Counter()
    finals = set(Delivery.FINAL_STATUSES)
    written: Counter = Counter()
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "UPDATE delivery_delivery d SET status = v.status, reason = v.reason, provider_message_id = v.pid, "
                "next_attempt_at = v.next_at, finished_at = CASE WHEN v.status = 'queued' THEN NULL ELSE %s END, "
                "lease_expires_at = NULL "
                "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::timestamptz[]) "
                "AS v(id, status, reason, pid, next_at) "
                "WHERE d.id = v.id AND d.status = 'sending' RETURNING d.status",
                [
                    now,
                    [r.id for r in results],
                    [r.status for r in results],
                    [r.reason[:100] for r in results],
                    [r.provider_id[:200] for r in results],
                    [r.next_attempt_at for r in results],
                ],
            )
            for (status,) in cursor.fetchall():
                written[status] += 1
        else:
            for r in results:
                cursor.execute(
                    "UPDATE delivery_delivery SET status = %s, reason = %s, provider_message_id = %s, "
                    "next_attempt_at = %s, finished_at = %s, lease_expires_at = NULL "
                    "WHERE id = %s AND status = 'sending'",
                    [
                        r.status,
                        r.reason[:100],
                        r.provider_id[:200],
                        _dt(r.next_attempt_at),
                        None if r.status == DS.QUEUED else _dt(now),
                        r.id,
                    ],
                )
                if cursor.rowcount:
                    written[r.status] += 1
        increments = {status: F(status) + n for status, n in written.items() if status in finals}
        if increments:
            Dispatch.objects.filter(pk=dispatch_id).update(**increments)
    return written


class _Clients:
    """The provider clients of this worker process, kept per app so connections stay open."""

    def __init__(self):
        self._by_key: dict[tuple, object] = {}

    def get(self, app: App, platform: str):
        from delivery.providers.apns import ApnsClient
        from delivery.providers.fcm import FcmClient

        fingerprint = (
            app.apns_private_key_fingerprint if platform == Platform.IOS else app.fcm_service_account_fingerprint
        )
        key = (app.pk, platform, fingerprint, app.uses_simulator, app.apns_environment, app.apns_bundle_id)
        client = self._by_key.get(key)
        if client is None:
            for old_key in [k for k in self._by_key if k[:2] == key[:2]]:
                self._by_key.pop(old_key).close()
            transport = Http2Transport(
                timeout=settings.PUSHDESK_SEND_TIMEOUT_SECONDS,
                max_connections_per_host=settings.PUSHDESK_SEND_CONNECTIONS,
                ca_bundle=settings.PUSHDESK_CA_BUNDLE,
            )
            client = (ApnsClient if platform == Platform.IOS else FcmClient).for_app(app, transport=transport)
            self._by_key[key] = client
        return client

    def close(self) -> None:
        for client in self._by_key.values():
            client.close()
        self._by_key.clear()


CLIENTS = _Clients()
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="pushdesk-send")


def _needs_profiles(spec: dict) -> bool:
    return spec_is_personalized(spec) or bool(spec.get("variants"))


def _profiles_for(rows: list[Claimed]) -> dict[int, dict]:
    ids = {r.profile_id for r in rows if r.profile_id}
    return {
        pid: {"external_id": ext, "locale": locale, "timezone": tz, "attributes": attributes or {}}
        for pid, ext, locale, tz, attributes in Profile.objects.filter(pk__in=ids).values_list(
            "id", "external_id", "locale", "timezone", "attributes"
        )
    }


def _send_platform(app: App, platform: str, messages: list, rows: list[Claimed]) -> list[Outcome]:
    from delivery.providers.apns import ApnsMessage
    from delivery.providers.fcm import FcmMessage

    try:
        client = CLIENTS.get(app, platform)
    except ValueError:
        return [Outcome(OutcomeKind.CREDENTIALS, reason=f"not_configured:{platform}") for _ in rows]
    if platform == Platform.IOS:
        return client.send([ApnsMessage(token=r.token, **m) for r, m in zip(rows, messages, strict=True)])
    return client.send([FcmMessage(message=m) for m in messages])


# Transport errors after which the provider may hold the message: never sent again.
_MAYBE_DELIVERED = ("transport:timeout", "transport:connection")


def _retry_or_fail(row: Claimed, outcome: Outcome, *, now: datetime, deadline: datetime) -> Result:
    if outcome.reason in _MAYBE_DELIVERED:
        return Result(row.id, DS.UNKNOWN, reason=f"{outcome.reason} (may have been delivered)")
    if row.attempts >= settings.PUSHDESK_SEND_MAX_ATTEMPTS:
        return Result(row.id, DS.FAILED, reason=f"{outcome.reason} (gave up after {row.attempts} attempts)")
    backoff = settings.PUSHDESK_SEND_BACKOFF_SECONDS * 2 ** (row.attempts - 1)
    delay = backoff * random.uniform(1.0, 1.25)
    if outcome.retry_after_from_provider and outcome.retry_after is not None:
        delay = max(delay, outcome.retry_after)
    when = now + timedelta(seconds=delay)
    if when > deadline:
        return Result(row.id, DS.FAILED, reason=f"{outcome.reason} (TTL over before a retry)")
    return Result(row.id, DS.QUEUED, reason=outcome.reason, next_attempt_at=when)


@dataclass
class _Batch:
    """Claimed rows on their way: rendered messages per platform, sends in flight, results so far."""

    rows: dict[str, list[Claimed]]
    messages: dict[str, list]
    results: list[Result]
    deadline: datetime
    futures: dict = field(default_factory=dict)


def _batch_prepare(dispatch: Dispatch, rows: list[Claimed]) -> _Batch:
    """Render every claimed row and build its provider message; rows that cannot be sent fail here."""
    spec = dispatch.content_spec
    now = timezone.now()
    batch = _Batch(
        rows={Platform.IOS: [], Platform.ANDROID: []},
        messages={Platform.IOS: [], Platform.ANDROID: []},
        results=[],
        deadline=(dispatch.started_at or now) + timedelta(seconds=int(spec.get("ttl_seconds") or 0)),
    )
    results = batch.results
    own_contexts = bool((dispatch.context or {}).get(RECIPIENT_CONTEXTS))
    shared = (
        None
        if _needs_profiles(spec) or own_contexts
        else message_render(spec, profile={}, context=recipient_context(dispatch.context, None))
    )
    options = apns_options(spec, now=time.time())
    for row in rows:
        if not row.token:
            results.append(Result(row.id, DS.FAILED, reason="device_deleted"))
            continue
        try:
            message = shared or message_render(
                spec,
                profile=row.profile or {"attributes": {}},
                context=recipient_context(dispatch.context, row.profile_id),
            )
        except LiquidError as exc:
            results.append(Result(row.id, DS.FAILED, reason=f"render_error: {exc.message}"[:100]))
            continue
        if row.platform == Platform.IOS:
            body = encode(apns_payload(spec, message, delivery_id=row.id))
            if len(body) > APNS_LIMIT:
                results.append(Result(row.id, DS.FAILED, reason=f"payload_too_large ({len(body)} bytes)"))
                continue
            batch.messages[Platform.IOS].append({"payload": body, **options})
        else:
            fcm = fcm_message(spec, message, token=row.token, delivery_id=row.id)
            size = fcm_payload_fits(fcm)
            if size is not None:
                results.append(Result(row.id, DS.FAILED, reason=f"payload_too_large ({size} bytes)"))
                continue
            batch.messages[Platform.ANDROID].append(fcm)
        batch.rows[row.platform].append(row)
    return batch


def _batch_submit(batch: _Batch, app: App) -> None:
    """Start sending (APNs and FCM at once, in the send threads); returns without waiting."""
    batch.futures = {
        platform: _POOL.submit(_send_platform, app, platform, batch.messages[platform], platform_rows)
        for platform, platform_rows in batch.rows.items()
        if platform_rows
    }


def _batch_finish(dispatch: Dispatch, batch: _Batch, report: SendReport) -> None:
    """Wait for the batch's sends, then write every outcome back in bulk and act on dead tokens."""
    results = batch.results
    dead: dict[int, str] = {}
    credentials: dict[str, str] = {}
    outcomes = {platform: future.result() for platform, future in batch.futures.items()}
    now = timezone.now()
    for platform, platform_outcomes in outcomes.items():
        for row, outcome in zip(batch.rows[platform], platform_outcomes, strict=True):
            report.outcomes[outcome.kind] += 1
            if outcome.kind is OutcomeKind.ACCEPTED:
                results.append(Result(row.id, DS.ACCEPTED, provider_id=outcome.provider_id))
            elif outcome.kind is OutcomeKind.DEAD_TOKEN:
                results.append(Result(row.id, DS.FAILED, reason=outcome.reason))
                dead[row.device_id] = outcome.reason
            elif outcome.kind is OutcomeKind.PERMANENT_FAILURE:
                results.append(Result(row.id, DS.FAILED, reason=outcome.reason))
            elif outcome.kind is OutcomeKind.CREDENTIALS:
                results.append(Result(row.id, DS.FAILED, reason=f"credentials: {outcome.reason}"))
                credentials[platform] = outcome.reason
            else:
                results.append(_retry_or_fail(row, outcome, now=now, deadline=batch.deadline))
    _write_back(dispatch.pk, results, now=now)
    if dead:
        devices_invalidate(reasons=dead)
    for platform, reason in credentials.items():
        _fail_platform(dispatch, platform, reason)


def _fail_platform(dispatch: Dispatch, platform: str, reason: str) -> None:
    """The app's credentials for a platform were refused: fail its queued rows at once (no retry storm)."""
    failed = Delivery.objects.filter(dispatch_id=dispatch.pk, status=DS.QUEUED, device__platform=platform).update(
        status=DS.FAILED, reason=f"credentials: {reason}"[:100], finished_at=timezone.now(), next_attempt_at=None
    )
    if failed:
        Dispatch.objects.filter(pk=dispatch.pk).update(failed=F("failed") + failed)
    audit(
        actor=None,
        action="dispatch_credentials_refused",
        obj=dispatch,
        summary={"platform": platform, "reason": reason, "failed": failed},
    )


def dispatch_send(*, dispatch_id: int, time_budget: float | None = None) -> SendReport:
    """Claim and send this dispatch's queued rows until none is ready or the time budget is spent.

    Safe to run in any number of workers at once (claims are atomic) and to run again
    (idempotent). Waits for rows whose retry is due soon; hands over to a fresh task when the
    budget is spent with work left. Finishes the dispatch when no row is left to send.
    """
    report = SendReport()
    budget = settings.PUSHDESK_SEND_TASK_SECONDS if time_budget is None else time_budget
    deadline = time.monotonic() + budget
    dispatch = Dispatch.objects.select_related("app").filter(pk=dispatch_id).first()
    if dispatch is None or dispatch.status != Dispatch.Status.SENDING:
        return report
    app = dispatch.app
    limits = [(f"app:{app.pk}", app.rate_limit_per_second)]
    if dispatch.rate_limit_per_second:
        limits.append((f"dispatch:{dispatch.pk}", dispatch.rate_limit_per_second))
    with_profiles = _needs_profiles(dispatch.content_spec)
    # One batch sends (in the send threads) while the next is claimed and rendered here.
    in_flight: _Batch | None = None
    try:
        while time.monotonic() < deadline:
            granted = throttle_acquire(limits=limits, count=settings.PUSHDESK_SEND_BATCH, deadline=deadline)
            if not granted:
                break
            if not Dispatch.objects.filter(pk=dispatch_id, status=Dispatch.Status.SENDING).exists():
                return report
            rows = _claim(dispatch_id, limit=granted, now=timezone.now(), with_profiles=with_profiles)
            if rows:
                report.claimed += len(rows)
                report.batches += 1
                batch = _batch_prepare(dispatch, rows)
                if in_flight is not None:
                    _batch_finish(dispatch, in_flight, report)
                _batch_submit(batch, app)
                in_flight = batch
                continue
            if in_flight is not None:
                _batch_finish(dispatch, in_flight, report)  # its retries may be due now
                in_flight = None
                continue
            next_retry = (
                Delivery.objects.filter(dispatch_id=dispatch_id, status=DS.QUEUED)
                .order_by("next_attempt_at")
                .values_list("next_attempt_at", flat=True)
                .first()
            )
            if next_retry is None:
                break
            wait = (next_retry - timezone.now()).total_seconds()
            if time.monotonic() + wait >= deadline:
                break
            time.sleep(max(0.0, min(wait, 5.0)))
    finally:
        if in_flight is not None:
            _batch_finish(dispatch, in_flight, report)
    if Delivery.objects.filter(dispatch_id=dispatch_id, status=DS.QUEUED).exists():
        if time.monotonic() >= deadline or not _only_future_retries(dispatch_id, now=timezone.now()):
            _enqueue("delivery.tasks.dispatch_send_task", dispatch_id)
        else:
            _schedule_retry(dispatch_id)
    else:
        dispatch_complete_if_done(dispatch_id=dispatch_id)
    return report


def _only_future_retries(dispatch_id: int, *, now: datetime) -> bool:
    """True when every queued row waits for a retry still to come (none is ready now)."""
    ready = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    return not Delivery.objects.filter(ready, dispatch_id=dispatch_id, status=DS.QUEUED).exists()


def _schedule_retry(dispatch_id: int) -> None:
    """Run the send task again when the earliest retry is due (a one-off django-q schedule)."""
    from django_q.models import Schedule

    when = (
        Delivery.objects.filter(dispatch_id=dispatch_id, status=DS.QUEUED)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    if when is None:
        return
    from django_q.conf import Conf

    if Conf.SYNC:
        time.sleep(max(0.0, (when - timezone.now()).total_seconds()))
        _enqueue("delivery.tasks.dispatch_send_task", dispatch_id)
        return
    Schedule.objects.update_or_create(
        name=f"dispatch-{dispatch_id}-retry",
        defaults={
            "func": "delivery.tasks.dispatch_send_task",
            "args": repr((dispatch_id,)),
            "schedule_type": Schedule.ONCE,
            "repeats": 1,
            "next_run": when,
        },
    )


# --- opens --------------------------------------------------------------------------------------------


class AlreadyOpened(ValidationError):
    """An open was already reported for this delivery."""


def delivery_open_report(*, delivery_id: int, app_id: int, by: User, when: datetime | None = None) -> Delivery:
    """Record that the user tapped the notification: sets ``opened_at`` once.

    Raises Delivery.DoesNotExist when the delivery is not one of ``app_id``'s (or not visible
    to ``by``), AlreadyOpened when an open was already reported.
    """
    from delivery.selectors import dispatches_visible_to

    with transaction.atomic():
        delivery = (
            Delivery.objects.select_for_update()
            .filter(
                pk=delivery_id,
                dispatch__app_id=app_id,
                dispatch__in=dispatches_visible_to(by).values("pk"),
            )
            .get()
        )
        if delivery.opened_at is not None:
            raise AlreadyOpened({"delivery": "An open was already reported for this delivery."}, code="already_opened")
        delivery.opened_at = when or timezone.now()
        delivery.save(update_fields=["opened_at"])
        Dispatch.objects.filter(pk=delivery.dispatch_id).update(opened=F("opened") + 1)
    return delivery
