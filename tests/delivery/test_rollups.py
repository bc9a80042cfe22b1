"""The rollup the reports read is what a count over the deliveries says, after every kind of change:
a bulk send with mixed outcomes and retries, an open, a stream's appends with skips, a stopped
stream, a crash's rows left ``unknown``, refused credentials, and retention deleting rows."""

import datetime as dt
from collections import Counter

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from delivery.models import Delivery, DeliveryRollup, DeviceTombstone, Dispatch
from delivery.services.claims import deliveries_claim
from delivery.services.dispatches import (
    deliveries_expire_leases,
    dispatch_create,
    dispatch_prepare,
    dispatch_stop,
)
from delivery.services.opens import delivery_open_report
from delivery.services.rollups import rollup_rebuild
from delivery.services.sending import dispatch_send
from delivery.services.stream_senders import streams_send
from delivery.services.streams import Recipient, stream_append, streams_close
from delivery.variants import variant_for
from operations.services import retention_apply
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory, orders_stream

# The rollup is kept on SQLite too.
pytestmark = [pytest.mark.django_db, pytest.mark.embedded, pytest.mark.usefixtures("stream_gates_open")]


def _quarter(moment: dt.datetime) -> dt.datetime:
    moment = moment.astimezone(dt.UTC)
    return moment.replace(minute=moment.minute // 15 * 15, second=0, microsecond=0)


def counted(dispatch_ids) -> Counter:
    """The rollup as a count over the deliveries would make it, row by row in Python: each row
    under its device's platform, or, the device deleted before the row was final, the one its
    tombstone keeps."""
    made_at = dict(Dispatch.objects.filter(pk__in=dispatch_ids).values_list("pk", "created_at"))
    gone = dict(DeviceTombstone.objects.exclude(platform="").values_list("device_id", "platform"))
    expected: Counter = Counter()
    for row in Delivery.objects.filter(dispatch_id__in=dispatch_ids).select_related("device"):
        platform = row.device.platform if row.device else gone.get(row.device_id, "none")
        variant = -1 if row.variant is None else row.variant
        key = (row.dispatch_id, platform, variant)
        expected[(*key, _quarter(row.queued_at or made_at[row.dispatch_id]), "targeted", "")] += 1
        if row.status in Delivery.FINAL_STATUSES:
            expected[(*key, _quarter(row.finished_at), row.status, row.reason)] += 1
        if row.opened_at is not None:
            expected[(*key, _quarter(row.opened_at), "opened", "")] += 1
    return expected


def rolled_up(dispatch_ids) -> Counter:
    rows = DeliveryRollup.objects.filter(dispatch_id__in=dispatch_ids).values_list(
        "dispatch_id", "platform", "variant", "period", "outcome", "reason", "rows"
    )
    summed: Counter = Counter()  # over the shards
    for d, p, v, period, o, r, n in rows:
        summed[(d, p, v, period.astimezone(dt.UTC), o, r)] += n
    return Counter({key: n for key, n in summed.items() if n})


def assert_rollup_is_the_count(*dispatches):
    ids = [d.pk for d in dispatches]
    expected = counted(ids)
    assert expected, "nothing to compare"
    assert rolled_up(ids) == expected


def test_a_send_and_the_watchdog_run_with_every_statement_logged(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    """DEBUG's cursor logs each statement with its parameters formatted in by ``%``: a bare ``%``
    in SQL of ours (SQLite's date functions take them) made that raise, and the request a 500."""
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(3)
    devices = [DeviceFactory(profile=profile, app=pushsim_app, platform="android") for profile in profiles]
    stale = Dispatch.objects.create(app=pushsim_app, kind="api_trigger", content_spec=content.spec(), status="sending")
    left = Delivery.objects.create(
        dispatch=stale,
        device=devices[0],
        profile_id=profiles[0].pk,
        status="sending",
        lease_expires_at=timezone.now() - dt.timedelta(minutes=1),
    )
    with CaptureQueriesContext(connection) as logged, django_capture_on_commit_callbacks(execute=True):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=content.spec(),
            profile_ids=[p.pk for p in profiles],
        )
        deliveries_expire_leases()  # by the database's clock
    dispatch.refresh_from_db()
    assert (dispatch.status, dispatch.accepted) == ("done", 3)
    assert_rollup_is_the_count(dispatch)
    left.refresh_from_db()
    assert (left.status, left.reason) == ("unknown", "lease_expired")
    assert any("delivery_deliveryrollup" in query["sql"] for query in logged.captured_queries)


def test_a_bulk_send_with_failures_retries_skips_variants_and_an_open_is_rolled_up_exactly(
    pushsim_app, pushsim, open_gate, admin_erin, settings, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_SEND_BACKOFF_SECONDS = 0.05
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(12)
    devices = [
        DeviceFactory(profile=p, app=pushsim_app, platform="ios" if n % 2 else "android")
        for n, p in enumerate(profiles[:9])
    ]
    DeviceFactory(profile=profiles[9], app=pushsim_app, push_enabled=False)
    variants = [
        {"number": n, "label": label, "content_id": content.pk, "share": 40, "spec": content.spec()}
        for n, label in ((1, "A"), (2, "B"))
    ]
    # The failures go to devices that are sent to: a profile in the holdout is never sent to, and
    # which profiles fall in it depends on their ids (the salt of a dispatch without a campaign is 0).
    # Each failure is the one its provider answers: an FCM error code on an Android phone, an
    # APNs reason on an iPhone.
    while len(
        sent := [d for d in devices if variant_for(d.profile_id, salt=0, variants=variants, holdout_share=20)]
    ) < 4 or {d.platform for d in sent} != {"ios", "android"}:
        devices.append(DeviceFactory(app=pushsim_app, platform="android" if len(devices) % 2 else "ios"))
        profiles.append(devices[-1].profile)
    android = next(d for d in sent if d.platform == "android")
    iphone = next(d for d in sent if d.platform == "ios")
    third = next(d for d in sent if d not in (android, iphone))
    pushsim.state.fail_token(token=android.token, failures=[(400, "INVALID_ARGUMENT")])
    pushsim.state.fail_token(token=iphone.token, failures=[(410, "Unregistered")])
    pushsim.state.fail_token(token=third.token, failures=[429])  # retried, then accepted
    with django_capture_on_commit_callbacks(execute=True):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=content.spec(),
            profile_ids=[p.pk for p in profiles],
            variants=variants,
            holdout_share=20,
        )
    dispatch.refresh_from_db()
    assert dispatch.status == Dispatch.Status.DONE
    assert dispatch.retries, "a send was retried"
    statuses = set(Delivery.objects.filter(dispatch=dispatch).values_list("status", flat=True))
    assert {"accepted", "failed", "skipped"} <= statuses
    assert_rollup_is_the_count(dispatch)

    accepted = Delivery.objects.filter(dispatch=dispatch, status="accepted").first()
    delivery_open_report(
        delivery_id=accepted.pk, app_id=pushsim_app.pk, by=admin_erin, when=timezone.now() + dt.timedelta(hours=2)
    )
    assert_rollup_is_the_count(dispatch)
    assert DeliveryRollup.objects.filter(dispatch=dispatch, outcome="opened").get().rows == 1


def test_a_stopped_dispatch_and_rows_a_crash_left_unknown_are_rolled_up_exactly(
    pushsim_app, pushsim, open_gate, manager_alice, django_capture_on_commit_callbacks
):
    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(4)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks(execute=False):
        crashed = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=crashed.pk)
        stopped = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=stopped.pk)
    assert len(deliveries_claim(crashed.pk, limit=2, now=timezone.now())) == 2  # a worker dies with these
    dispatch_send(dispatch_id=crashed.pk)
    assert deliveries_expire_leases(now=timezone.now() + dt.timedelta(hours=1)) == 2
    dispatch_stop(dispatch_id=stopped.pk, by=manager_alice)

    assert Counter(Delivery.objects.filter(dispatch=crashed).values_list("status", flat=True)) == {
        "accepted": 2,
        "unknown": 2,
    }
    assert set(Delivery.objects.filter(dispatch=stopped).values_list("reason", flat=True)) == {"stopped"}
    assert_rollup_is_the_count(crashed, stopped)


def test_a_streams_appends_with_skips_its_sends_and_its_close_are_rolled_up_exactly(pushsim, pushsim_app):
    content = PushContentFactory(app=pushsim_app)
    stream = orders_stream(content, source_id=777)
    source = ("SELECT id FROM delivery_app WHERE id = %s FOR SHARE", [pushsim_app.pk])
    reachable = ProfileFactory.create_batch(3)
    for profile in reachable:
        DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    muted, lonely = ProfileFactory(), ProfileFactory()
    DeviceFactory(profile=muted, app=pushsim_app, push_enabled=False)

    def append(profiles):
        stream_append(
            dispatch_id=stream.pk,
            kind=stream.kind,
            app_id=pushsim_app.pk,
            recipients=[Recipient(p.pk) for p in profiles],
            source_lock=source,
        )

    append([*reachable, muted, lonely])
    streams_send(budget=0)
    append(reachable[:2])  # still queued when the stream closes
    assert streams_close(kind=stream.kind, source_id=777, by=None, reason="stopped") == 1

    reasons = Counter(Delivery.objects.filter(dispatch=stream).values_list("status", "reason"))
    assert reasons == {
        ("accepted", ""): 3,
        ("skipped", "not_opted_in"): 1,
        ("skipped", "no_device"): 1,
        ("skipped", "stopped"): 2,
    }
    assert_rollup_is_the_count(stream)


def test_refused_credentials_and_retention_keep_the_rollup_exact(
    pushsim, open_gate, settings, django_capture_on_commit_callbacks
):
    from delivery.services.apps import app_create

    settings.PUSHDESK_SEND_BATCH = 1  # the first refusal fails the other queued rows of the platform at once
    app = app_create(name="No credentials", by=None, uses_simulator=True)
    content = PushContentFactory(app=app)
    profiles = ProfileFactory.create_batch(4)
    for profile in profiles:
        DeviceFactory(profile=profile, app=app, platform="ios")

    def send():
        with django_capture_on_commit_callbacks(execute=True):
            dispatch = dispatch_create(
                app_id=app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
            )
        dispatch.refresh_from_db()
        return dispatch

    old, recent = send(), send()
    assert Counter(Delivery.objects.filter(dispatch=old).values_list("status", "reason")) == {
        ("failed", "credentials: not_configured:ios"): 4
    }
    assert_rollup_is_the_count(old, recent)

    kept = rolled_up([old.pk])
    Dispatch.objects.filter(pk=old.pk).update(finished_at=timezone.now() - dt.timedelta(days=400))
    assert retention_apply(delivery_days=30)["deliveries"] == 4
    # The rows are gone, what they were stays: reports keep their totals.
    assert rolled_up([old.pk]) == kept and kept
    rollup_rebuild(dispatch_ids=[old.pk, recent.pk])  # a repair leaves a dispatch whose rows are gone
    assert rolled_up([old.pk]) == kept
    assert_rollup_is_the_count(recent)


def test_a_rebuild_counts_what_the_send_counted(pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks):
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(3)
    DeviceFactory(profile=profiles[0], app=pushsim_app, platform="ios")
    with django_capture_on_commit_callbacks(execute=True):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
    kept = rolled_up([dispatch.pk])
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    assert rolled_up([dispatch.pk]) == kept
    rollup_rebuild()
    assert rolled_up([dispatch.pk]) == kept == counted([dispatch.pk])


def pending_by_platform(dispatch) -> dict[str, int]:
    """Each platform's rows not final yet, as the rollup says them: its targeted less its final ones
    (a platform under which nothing is counted is left out)."""
    pending: Counter = Counter()
    for platform, outcome, n in DeliveryRollup.objects.filter(dispatch=dispatch).values_list(
        "platform", "outcome", "rows"
    ):
        if outcome == "targeted":
            pending[platform] += n
        elif outcome in Delivery.FINAL_STATUSES:
            pending[platform] -= n
    seen = set(DeliveryRollup.objects.filter(dispatch=dispatch, rows__gt=0).values_list("platform", flat=True))
    return {platform: pending[platform] for platform in sorted(seen)}


def _two_phones_resolved(app, django_capture_on_commit_callbacks):
    """A dispatch resolved to an iPhone and an Android phone, its rows queued; and the phones."""
    content = PushContentFactory(app=app)
    profiles = ProfileFactory.create_batch(2)
    phones = [DeviceFactory(profile=p, app=app, platform=k) for p, k in zip(profiles, ("ios", "android"), strict=True)]
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    return dispatch, phones


def test_a_phone_deleted_while_its_row_is_leased_is_counted_under_the_platform_it_was_targeted_on(
    pushsim_app, open_gate, django_capture_on_commit_callbacks
):
    """The watchdog counted the row of a phone deleted while a worker held it under ``none``, its
    targeted count staying under the phone's platform: that platform kept a row pending for ever,
    ``none`` a final row it never targeted; the late answer then moved the count under the claim's
    platform, out of an ``unknown`` it never held. Every outcome of the row is counted under the
    platform it was targeted on."""
    from delivery.models import Device
    from delivery.services.claims import Result, deliveries_write_back
    from delivery.services.dispatches import dispatch_recount

    dispatch, phones = _two_phones_resolved(pushsim_app, django_capture_on_commit_callbacks)
    claimed = deliveries_claim(dispatch.pk, limit=2, now=timezone.now())
    Device.objects.filter(pk=phones[0].pk).delete()  # while the worker holds its row

    assert deliveries_expire_leases(now=timezone.now() + dt.timedelta(hours=1)) == 2
    assert pending_by_platform(dispatch) == {"android": 0, "ios": 0}
    dispatch.refresh_from_db()
    assert dispatch.by_platform == {"ios": {"unknown": 1}, "android": {"unknown": 1}}

    written = deliveries_write_back(
        dispatch.pk,
        [Result(row.id, "accepted", provider_id=f"late-{row.id}") for row in claimed],
        now=timezone.now(),
        platforms={row.id: row.platform for row in claimed},
        claims={row.id: row.attempts for row in claimed},
    )
    assert written == {"accepted": 2}
    said = {"ios": {"accepted": 1}, "android": {"accepted": 1}}
    dispatch.refresh_from_db()
    assert (dispatch.accepted, dispatch.unknown, dispatch.by_platform) == (2, 0, said)
    assert dispatch_recount(dispatch_id=dispatch.pk).by_platform == said
    assert pending_by_platform(dispatch) == {"android": 0, "ios": 0}
    assert_rollup_is_the_count(dispatch)


def test_a_phone_deleted_before_its_row_is_claimed_fails_under_the_platform_it_was_targeted_on(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    """A row whose phone was deleted before its turn fails as ``device_deleted``: it was counted
    under ``none``, its platform's targeted row left pending."""
    from delivery.models import Device

    dispatch, phones = _two_phones_resolved(pushsim_app, django_capture_on_commit_callbacks)
    Device.objects.filter(pk=phones[0].pk).delete()
    dispatch_send(dispatch_id=dispatch.pk)

    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "reason")) == {
        ("failed", "device_deleted"),
        ("accepted", ""),
    }
    assert pending_by_platform(dispatch) == {"android": 0, "ios": 0}
    dispatch.refresh_from_db()
    assert dispatch.status == "done"
    assert dispatch.by_platform == {"ios": {"failed": 1}, "android": {"accepted": 1}}
    assert_rollup_is_the_count(dispatch)


def test_the_watchdog_given_a_time_finishes_the_rows_it_ends_then(
    pushsim_app, open_gate, django_capture_on_commit_callbacks
):
    """``deliveries_expire_leases(now=...)`` judged the leases at the time given but stamped the
    rows it ended with the database's clock, and counted them at its quarter hour."""
    dispatch, _ = _two_phones_resolved(pushsim_app, django_capture_on_commit_callbacks)
    deliveries_claim(dispatch.pk, limit=2, now=timezone.now())
    later = timezone.now() + dt.timedelta(hours=1)

    assert deliveries_expire_leases(now=later) == 2
    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("finished_at", flat=True)) == {later}
    assert set(
        DeliveryRollup.objects.filter(dispatch=dispatch, outcome="unknown").values_list("period", flat=True)
    ) == {_quarter(later)}
    assert_rollup_is_the_count(dispatch)
