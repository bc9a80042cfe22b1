"""The migration that makes a row the sender found past its TTL ``skipped`` / ``expired``, the code a
held now-or-never push ends with, where it ended ``failed`` / ``expired (TTL over before it could be
sent)``: its rows, its dispatch's rollup and counters, and the status of a send that only had those."""

import datetime as dt
import importlib

import pytest
from django.apps import apps
from django.db import connection

from delivery.models import Delivery, DeliveryRollup, Dispatch
from delivery.services.dispatches import dispatch_counts
from delivery.services.rollups import rollup_rebuild
from tests.factories import AppFactory, DeviceFactory, ProfileFactory

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

forwards = importlib.import_module("delivery.migrations.0033_delivery_expired_skipped").expired_as_skipped
OLD = "expired (TTL over before it could be sent)"
T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.UTC)


class _Editor:
    connection = connection


def _sent(app, outcomes, **fields) -> Dispatch:
    """A finished dispatch with one row per (status, reason, platform) of ``outcomes``, counted as
    the code before counted them."""
    dispatch = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, started_at=T0, **fields)
    for status, reason, platform in outcomes:
        device = DeviceFactory(app=app, profile=ProfileFactory(), platform=platform)
        Delivery.objects.create(
            dispatch=dispatch,
            device=device,
            profile_id=device.profile_id,
            status=status,
            reason=reason,
            attempts=1,
            finished_at=T0 + dt.timedelta(minutes=5),
        )
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    Dispatch.objects.filter(pk=dispatch.pk).update(**dispatch_counts(dispatch_id=dispatch.pk))
    dispatch.refresh_from_db()
    return dispatch


def test_rows_the_sender_found_expired_become_skipped_expired_with_their_counters():
    app = AppFactory()
    only_expired = _sent(
        app,
        [("failed", OLD, "ios"), ("failed", OLD, "android"), ("skipped", "expired", "ios")],
        status="failed",
        error="The provider accepted none of its pushes.",
    )
    assert (only_expired.failed, only_expired.skipped) == (2, 1)
    mixed = _sent(
        app, [("accepted", "", "ios"), ("failed", OLD, "ios"), ("failed", "Unregistered", "ios")], status="done"
    )
    refused = _sent(
        app,
        [("failed", OLD, "ios"), ("failed", "BadDeviceToken", "ios")],
        status="failed",
        error="The provider accepted none of its pushes.",
    )
    untouched = _sent(app, [("failed", "Unregistered", "android")], status="failed", error="Credentials.")

    forwards(apps, _Editor())

    assert not Delivery.objects.filter(reason=OLD).exists()
    assert not DeliveryRollup.objects.filter(reason=OLD).exists()
    for dispatch in (only_expired, mixed, refused, untouched):
        rollup = sorted(
            DeliveryRollup.objects.filter(dispatch=dispatch).values_list("outcome", "reason", "platform", "rows")
        )
        rollup_rebuild(dispatch_ids=[dispatch.pk])  # what a count of the rows says
        assert rollup == sorted(
            DeliveryRollup.objects.filter(dispatch=dispatch).values_list("outcome", "reason", "platform", "rows")
        )
        dispatch.refresh_from_db()
        counts = dispatch_counts(dispatch_id=dispatch.pk)
        assert (dispatch.failed, dispatch.skipped, dispatch.by_platform) == (
            counts["failed"],
            counts["skipped"],
            counts["by_platform"],
        )
    assert set(Delivery.objects.filter(dispatch=only_expired).values_list("status", "reason")) == {
        ("skipped", "expired")
    }
    assert (only_expired.status, only_expired.error, only_expired.failed, only_expired.skipped) == ("done", "", 0, 3)
    assert (mixed.status, mixed.failed, mixed.skipped) == ("done", 1, 1)
    # The provider refused what it was sent: that send still failed.
    assert (refused.status, refused.failed, refused.skipped) == ("failed", 1, 1)
    assert (untouched.status, untouched.error, untouched.failed) == ("failed", "Credentials.", 1)

    forwards(apps, _Editor())  # run again: nothing more changes
    only_expired.refresh_from_db()
    assert (only_expired.failed, only_expired.skipped) == (0, 3)
