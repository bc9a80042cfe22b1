"""The migration that keeps APNs tokens in lowercase and merges the devices that then hold one token."""

import datetime as dt
import importlib

import pytest
from django.apps import apps
from django.db import connection

from accounts.models import AuditEvent
from delivery.models import Delivery, Device, Dispatch
from delivery.selectors import device_deliveries
from tests.factories import AppFactory, DeviceFactory, ProfileFactory

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

forwards = importlib.import_module("delivery.migrations.0029_device_ios_token_lowercase").lowercase_ios_tokens
T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)
PHONE = "0a1b2c3d4e5f" * 5 + "9e8f"


class _Editor:
    """What the migration reads of its schema editor: the connection."""

    connection = connection


@pytest.fixture
def tokens_as_registered_before():
    """The devices table as it was before the migration: iOS tokens in any case (the check
    constraint the migration adds is put back afterwards, which validates every row)."""
    constraint = next(c for c in Device._meta.constraints if c.name == "device_ios_token_lowercase")
    postgresql = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if postgresql:
            cursor.execute(f"ALTER TABLE delivery_device DROP CONSTRAINT {constraint.name}")
        else:
            cursor.execute("PRAGMA ignore_check_constraints = ON")
    yield
    tokens = list(Device.objects.filter(platform="ios").values_list("token", flat=True))
    assert tokens == [token.lower() for token in tokens]
    if postgresql:
        with connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the rows' foreign keys, checked before the ALTER
        with connection.schema_editor() as editor:
            editor.add_constraint(Device, constraint)  # validates every row
    else:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA ignore_check_constraints = OFF")


def device(app, token, registered, **fields):
    return DeviceFactory(app=app, token=token, last_registered_at=T0 + dt.timedelta(days=registered), **fields)


def dispatch(app, **fields):
    return Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="done", **fields)


def delivered(run, device, **fields):
    return Delivery.objects.create(
        dispatch=run, device=device, profile_id=device.profile_id, status="accepted", finished_at=T0, **fields
    )


def test_a_phone_registered_in_both_cases_becomes_one_device_keeping_its_history(tokens_as_registered_before):
    app = AppFactory()
    old = device(app, PHONE.upper(), 0, is_test=True, created_at=T0 - dt.timedelta(days=30))
    new = device(app, PHONE, 5, profile=ProfileFactory(external_id="new-owner"), push_enabled=False)
    twice, before, stream = dispatch(app), dispatch(app), dispatch(app, standing=True)
    duplicate = delivered(twice, old)  # the push the phone got twice
    kept_row = delivered(twice, new)
    moved = delivered(before, old)
    appended = [delivered(stream, d, queued_at=T0) for d in (old, new)]

    forwards(apps, _Editor())

    (phone,) = Device.objects.filter(app=app)
    assert phone.pk == new.pk  # registered last: its profile is the phone's owner now
    assert phone.token == PHONE
    assert phone.profile.external_id == "new-owner"
    assert (phone.push_enabled, phone.is_test, phone.active) == (False, True, True)
    assert phone.created_at == old.created_at
    assert phone.last_registered_at == new.last_registered_at
    # Every row is still there: the send that reached it twice counts both, the others moved.
    assert Delivery.objects.filter(dispatch=twice).count() == 2
    rows = dict(Delivery.objects.values_list("pk", "device_id"))
    assert rows[kept_row.pk] == rows[moved.pk] == rows[appended[0].pk] == rows[appended[1].pk] == phone.pk
    assert rows[duplicate.pk] == old.pk  # a device gone, as a deleted device's rows name it
    event = AuditEvent.objects.get(action="device_merged")
    assert event.object_id == str(phone.pk) and event.summary["merged_devices"] == [old.pk]


def test_tokens_only_in_capitals_are_lowercased_and_merged_with_each_other_once_per_send(tokens_as_registered_before):
    app, owner = AppFactory(), ProfileFactory()
    first = device(app, PHONE.upper(), 0, profile=owner)
    second = device(app, PHONE[:10].upper() + PHONE[10:], 1, profile=owner)
    third = device(app, PHONE[:20].upper() + PHONE[20:], 2, profile=owner)
    run = dispatch(app)
    rows = [delivered(run, d) for d in (first, second)]  # none for the one kept: one of them moves to it

    forwards(apps, _Editor())

    (phone,) = Device.objects.filter(app=app)
    assert (phone.pk, phone.token) == (third.pk, PHONE)
    assert dict(Delivery.objects.filter(pk__in=[r.pk for r in rows]).values_list("pk", "device_id")) == {
        rows[0].pk: phone.pk,
        rows[1].pk: second.pk,
    }
    assert [d.pk for d in device_deliveries(phone)] == [rows[0].pk]


def test_a_token_alone_is_lowercased_and_other_apps_and_fcm_tokens_are_left_alone(tokens_as_registered_before):
    app, other = AppFactory(), AppFactory()
    alone = device(app, PHONE.upper(), 0)
    elsewhere = device(other, PHONE, 0)  # the same phone in another app is another device
    fcm = DeviceFactory(app=app, platform="android", token="fcm-Token-ABCDEF0000000000:APA91b")
    run = dispatch(app)
    row = delivered(run, alone)

    forwards(apps, _Editor())

    assert dict(Device.objects.values_list("pk", "token")) == {
        alone.pk: PHONE,
        elsewhere.pk: PHONE,
        fcm.pk: "fcm-Token-ABCDEF0000000000:APA91b",
    }
    assert Delivery.objects.get(pk=row.pk).device_id == alone.pk
    assert not AuditEvent.objects.filter(action="device_merged").exists()


@pytest.mark.parametrize(
    ("invalidated", "active"),
    [
        (6, False),  # the provider called the token dead after the last registration: dead
        (4, True),  # the last registration came after: alive
    ],
)
def test_a_token_called_dead_stays_dead_unless_registered_after(tokens_as_registered_before, invalidated, active):
    app = AppFactory()
    when = T0 + dt.timedelta(days=invalidated)
    device(app, PHONE.upper(), 0, active=False, invalidated_at=when, invalidated_reason="Unregistered")
    new = device(app, PHONE, 5)

    forwards(apps, _Editor())

    phone = Device.objects.get(app=app)
    assert phone.pk == new.pk
    assert (phone.active, phone.invalidated_at, phone.invalidated_reason) == (
        (True, None, "") if active else (False, when, "Unregistered")
    )


def test_running_it_again_changes_nothing(tokens_as_registered_before):
    app = AppFactory()
    device(app, PHONE.upper(), 0)
    device(app, PHONE, 1)
    forwards(apps, _Editor())
    before = list(Device.objects.values())

    forwards(apps, _Editor())

    assert list(Device.objects.values()) == before
    assert AuditEvent.objects.filter(action="device_merged").count() == 1
