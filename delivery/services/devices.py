"""Devices: token checks, registration, opt-in, invalidation, the test flag and deleted devices' tombstones."""

from __future__ import annotations

import re
from datetime import datetime

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from accounts.models import User
from accounts.selectors import in_scope
from accounts.services import audit
from audiences.models import Profile
from delivery.models import App, Delivery, Device, DeviceTombstone, Dispatch, Platform

# \Z, not $: $ also matches before a final line end, and a token ending in one was taken.
_APNS_TOKEN = re.compile(r"^[0-9a-fA-F]{64,200}\Z")
_FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:\-.]{20,512}\Z")


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


def device_token_normal(*, platform: str, token: str) -> str:
    """The token as a device keeps it: an APNs token in lowercase, an FCM token as given.

    An APNs token is the hexadecimal form of the token's bytes, so its case says nothing: the same
    phone's token formatted in capitals (an app update, a second SDK) is the same device. FCM
    tokens are case-sensitive and are never changed.
    """
    return token.lower() if platform == Platform.IOS else token


# A change of a device's profile, activity or opt-in makes the reach trigger lock its profiles
# (``delivery_profiles_reach_refresh``), and a deletion of a profile (``profiles_delete``) locks it
# before it removes its devices: a device locked before its profile could wait for the profile
# while the deletion waited for the device ('deadlock detected'). So the profiles are locked first,
# in id order as every writer of profiles takes them, then the devices; the count of ``owners`` is
# read before any device, so that every owner is locked first. ``FOR KEY SHARE`` is enough to keep
# a deletion out, and holds up no other writer of the profile (an import's batch, an events call):
# the trigger takes the stronger lock after, when a device changes. A device moved meanwhile to
# another profile has that one locked by the trigger, after it.
_DEVICES_HOLDING = "app_id = %(app)s AND (token = %(token)s OR (token = %(lower)s AND platform = %(ios)s))"
DEVICES_BY_TOKEN_PG = f"""
WITH owners AS MATERIALIZED (
    SELECT id FROM audiences_profile
    WHERE id IN (SELECT profile_id FROM delivery_device WHERE {_DEVICES_HOLDING})
    ORDER BY id FOR KEY SHARE
)
SELECT d.* FROM delivery_device d CROSS JOIN (SELECT count(*) FROM owners) AS held
WHERE {_DEVICES_HOLDING}
ORDER BY d.id FOR UPDATE OF d
"""  # noqa: S608 (constants)
# The profile of an external id and the present owner of the app's token (``DEVICES_BY_TOKEN_PG``).
PROFILES_OF_REGISTRATION_PG = """
SELECT * FROM audiences_profile
WHERE external_id = %(external_id)s OR id = (SELECT profile_id FROM delivery_device WHERE app_id = %(app)s AND token = %(token)s)
ORDER BY id FOR KEY SHARE
"""
INVALIDATE_PG = """
WITH owners AS MATERIALIZED (
    SELECT id FROM audiences_profile
    WHERE id IN (SELECT profile_id FROM delivery_device WHERE id = ANY(%(ids)s) AND active)
    ORDER BY id FOR KEY SHARE
)
UPDATE delivery_device SET active = false, invalidated_at = %(when)s, invalidated_reason = %(reason)s
WHERE id = ANY(%(ids)s) AND active AND last_registered_at <= %(before)s AND (SELECT count(*) FROM owners) >= 0
"""


def _device_by_token(app_id: int, token: str) -> Device:
    """The app's device of ``token``, locked, its profile first (``DEVICES_BY_TOKEN_PG``): the one
    holding it as given, else the iOS device holding it in lowercase (the platform is not given:
    an FCM token keeps its case, so only an APNs token is found in another case). Raises
    Device.DoesNotExist."""
    if connection.vendor == "postgresql":
        params = {"app": app_id, "token": token, "lower": token.lower(), "ios": Platform.IOS}
        found = list(Device.objects.raw(DEVICES_BY_TOKEN_PG, params))
    else:
        found = list(
            Device.objects.select_for_update()
            .filter(Q(token=token) | Q(token=token.lower(), platform=Platform.IOS), app_id=app_id)
            .order_by("id")
        )
    for device in found:
        if device.token == token:
            return device
    if not found:
        raise Device.DoesNotExist("No device with this token for this app.")
    return found[0]


def _ensure_device_write(by: User, app_id: int) -> None:
    """The one read of the app a device call makes: ``by`` may write devices, and the app is in their
    scope (an app that does not exist is in nobody's). Raises PermissionDenied."""
    if not by.has_perm("delivery.change_device") or not in_scope(by, App.objects.filter(pk=app_id)).exists():
        raise PermissionDenied("You may not register devices for this app.")


MARK_TEST_DEVICE = "delivery.mark_test_device"


def _ensure_test_flag_right(by: User) -> None:
    """``by``'s role may make and unmake test devices: an Administrator's right, since a test device
    gets test sends of content nobody approved (a Manager marking customers' phones could send them
    drafts). Raises PermissionDenied naming is_test."""
    if not by.has_perm(MARK_TEST_DEVICE):
        raise PermissionDenied(
            "is_test: only an Administrator may mark, unmark or register test devices "
            "(a test device gets test sends of content not yet approved)."
        )


def device_register(
    *,
    app_id: int,
    external_id: str,
    platform: str,
    token: str,
    by: User,
    push_enabled: bool | None = None,
    is_test: bool | None = None,
) -> tuple[Device, bool]:
    """Register (or re-register) a push token for the profile ``external_id``; return the device
    and whether this call created it (not another that registered the token meanwhile).

    The profile is created when it does not exist yet. An APNs token is kept in lowercase
    (``device_token_normal``): the same phone's token in capitals is the same device. A token
    already known for the app is moved to this profile and made active again (a dead token comes
    back to life only this way).
    ``push_enabled`` and ``is_test`` left out (None) keep a known token's own (the phone's opt-in
    as last reported, the test flag an admin set: an app registering at each launch sends
    neither), and are true and false for a new token.
    ``is_test`` true needs the role's right to make test devices (``_ensure_test_flag_right``);
    ``is_test`` false without it keeps a known token's mark as it is (an app sends false at each
    registration: the phone an Administrator marked stays a test device), and the device returned
    says which it holds.
    Raises ValidationError on a bad external id (``external_id_problem``), platform or token,
    PermissionDenied without device write access to the app (``_ensure_device_write``) or, for
    ``is_test`` true, without that right.
    """
    from audiences.services.profiles import external_id_problem, profile_upsert

    if problem := external_id_problem(external_id):
        raise ValidationError({"external_id": problem})
    device_token_check(platform=platform, token=token)
    token = device_token_normal(platform=platform, token=token)
    _ensure_device_write(by, app_id)
    if is_test:
        _ensure_test_flag_right(by)
    elif is_test is not None and not by.has_perm(MARK_TEST_DEVICE):
        is_test = None  # unmarking is the same right as marking
    now = timezone.now()
    with transaction.atomic():
        # The profile and the token's owner now, locked before the device (``DEVICES_BY_TOKEN_PG``);
        # a new profile is created after them.
        if connection.vendor == "postgresql":
            params = {"external_id": external_id, "app": app_id, "token": token}
            held = Profile.objects.raw(PROFILES_OF_REGISTRATION_PG, params)
        else:
            held = Profile.objects.filter(external_id=external_id)
        profile = next((p for p in held if p.external_id == external_id), None)
        if profile is None:
            profile_upsert(external_id=external_id, by=by)
            profile = Profile.objects.get(external_id=external_id)
        values = {
            "profile": profile,
            "platform": platform,
            "active": True,
            "invalidated_at": None,
            "invalidated_reason": "",
            "last_registered_at": now,
        }
        given = {
            name: value for name, value in (("push_enabled", push_enabled), ("is_test", is_test)) if value is not None
        }
        device, created = Device.objects.select_for_update().update_or_create(
            app_id=app_id,
            token=token,
            defaults={**values, **given},
            create_defaults={**values, "push_enabled": True, "is_test": False, **given},
        )
        audit(
            actor=by,
            action="device_registered" if created else "device_reregistered",
            obj=device,
            summary={"profile": external_id, "platform": platform, "push_enabled": device.push_enabled},
        )
    return device, created


def device_opt_in_set(*, app_id: int, token: str, push_enabled: bool, by: User) -> Device:
    """Record the phone's notification opt-in for a registered token (an APNs token in any case).

    Raises Device.DoesNotExist, PermissionDenied (``_ensure_device_write``)."""
    _ensure_device_write(by, app_id)
    with transaction.atomic():
        device = _device_by_token(app_id, token)
        if device.push_enabled != push_enabled:
            device.push_enabled = push_enabled
            device.save(update_fields=["push_enabled"])
            audit(actor=by, action="device_opt_in_changed", obj=device, summary={"push_enabled": push_enabled})
    return device


def device_unregister(*, app_id: int, token: str, by: User) -> Device:
    """Deactivate a token (an APNs token in any case) at the app's request (logout, uninstall).

    Raises Device.DoesNotExist, PermissionDenied (``_ensure_device_write``)."""
    _ensure_device_write(by, app_id)
    with transaction.atomic():
        device = _device_by_token(app_id, token)
        if device.active:
            device.active = False
            device.invalidated_at = timezone.now()
            device.invalidated_reason = "unregistered"
            device.save(update_fields=["active", "invalidated_at", "invalidated_reason"])
            audit(actor=by, action="device_unregistered", obj=device)
    return device


def devices_invalidate(
    *, reasons: dict[int, str], when: datetime | None = None, registered_before: datetime | None = None
) -> int:
    """Deactivate devices whose token a provider called dead; return how many changed.

    ``registered_before``: when the requests so answered left (``when`` if None); a device
    registered again since (the app alive on the phone, or the phone handed to another user) is
    newer than the answer and stays active."""
    when = when or timezone.now()
    before = registered_before or when
    changed = 0
    by_reason: dict[str, list[int]] = {}
    for device_id, reason in reasons.items():
        by_reason.setdefault(reason, []).append(device_id)
    for reason, ids in by_reason.items():
        if connection.vendor == "postgresql":  # their profiles locked first (``INVALIDATE_PG``)
            with connection.cursor() as cursor:
                cursor.execute(
                    INVALIDATE_PG, {"ids": sorted(ids), "when": when, "reason": reason[:100], "before": before}
                )
                changed += cursor.rowcount
            continue
        changed += Device.objects.filter(pk__in=ids, active=True, last_registered_at__lte=before).update(
            active=False, invalidated_at=when, invalidated_reason=reason[:100]
        )
    return changed


def devices_test_flag_set(*, device_ids: list[int], is_test: bool, by: User) -> int:
    """Mark devices as test devices (or not); return how many changed, each audited. Only devices
    of apps ``by`` may write.

    Raises PermissionDenied when ``by`` may not change devices, or their role may not make and
    unmake test devices (``_ensure_test_flag_right``: an Administrator's)."""
    from delivery.selectors import devices_visible_to

    if not by.has_perm("delivery.change_device"):
        raise PermissionDenied("You may not change devices.")
    _ensure_test_flag_right(by)
    with transaction.atomic():
        rows = devices_visible_to(by).filter(pk__in=device_ids).exclude(is_test=is_test)
        changed = list(rows.values_list("pk", flat=True))
        Device.objects.filter(pk__in=changed).update(is_test=is_test)
        for device in Device.objects.filter(pk__in=changed):
            audit(actor=by, action="device_test_flag_set", obj=device, summary={"is_test": is_test})
    return len(changed)


# Who may see a device's push token in full: whoever administers apps and their credentials (the
# Administrators). The token, with the app's key, pushes to the phone: every other page shortens it.
SEE_DEVICE_TOKEN = "delivery.change_app"  # noqa: S105 (a permission, not a secret)


def device_token_show(*, device_id: int, by: User) -> str:
    """Return a device's push token in full, for a user who asked to see it, and audit that they did.

    Raises PermissionDenied unless ``by`` may see tokens (``SEE_DEVICE_TOKEN``), Device.DoesNotExist
    when the device is not of an app in their scope. The audit event names the device, never its token.
    """
    if not by.has_perm(SEE_DEVICE_TOKEN):
        raise PermissionDenied("Only an Administrator may see a device's push token in full.")
    device = Device.objects.select_related("app").get(
        pk=device_id, app__in=in_scope(by, App.objects.all()).values("pk")
    )
    audit(actor=by, action="device_token_shown", obj=device, summary={"app": device.app.name})
    return device.token


def device_tombstones_delete(*, needed_since: datetime | None) -> int:
    """Delete the tombstones of deleted devices (``DeviceTombstone``) that no winner test and no
    running dispatch can need; return how many went.

    A tombstone matters to a sample that reached its device before it was deleted, until that
    sample's rest is resolved: ``needed_since`` is when the oldest sample still waiting for its rest
    was made (None: there is none), and every tombstone of a device deleted before it goes. One
    keeping a platform matters too while a running dispatch has rows of its device not final yet:
    their outcomes count under it (the rows are read through the indexes that lead with the
    dispatch, for the few tombstones that keep one). One statement through the deletion time's
    index: the table holds only the deletions since then.
    """
    gone = DeviceTombstone.objects.all()
    if needed_since is not None:
        gone = gone.filter(deleted_at__lt=needed_since)
    running = list(
        Dispatch.objects.filter(finished_at__isnull=True, status__in=Dispatch.RUNNING_STATUSES).values_list(
            "pk", flat=True
        )
    )
    if running:
        pending = Delivery.objects.filter(
            Delivery.of_dispatches(running), device_id=OuterRef("device_id"), finished_at__isnull=True
        )
        gone = gone.filter(Q(platform="") | ~Exists(pending))
    return gone.delete()[0]
