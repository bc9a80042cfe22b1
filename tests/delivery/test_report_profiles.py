"""The distinct profiles reports count per variant (the conversions' reached profiles, the variants'
profiles) are kept on a dispatch once it is settled, and are what a recount over its deliveries
says: after sends with failures, a retry and skips, profiles with two devices, opens, a stop with
rows in flight, several dispatches reaching the same profiles, a stream, and retention."""

import datetime as dt
from collections import Counter

import pytest
from django.db.models import F
from django.utils import timezone

from delivery.conversions import Goal, conversions_by
from delivery.models import Delivery, Dispatch, DispatchProfiles
from delivery.reports import profiles_by
from delivery.services.claims import deliveries_claim
from delivery.services.dispatches import (
    deliveries_expire_leases,
    dispatch_create,
    dispatch_prepare,
    dispatch_recount,
    dispatch_stop,
)
from delivery.services.opens import delivery_open_report
from delivery.services.rollups import rollup_rebuild
from delivery.services.sending import dispatch_send
from delivery.services.stream_senders import streams_send
from delivery.services.streams import Recipient, stream_append, streams_watch
from delivery.variants import variant_for
from operations.services import retention_apply
from tests.factories import DeviceFactory, EventFactory, ProfileFactory, PushContentFactory, orders_stream

pytestmark = [pytest.mark.django_db, pytest.mark.embedded, pytest.mark.usefixtures("stream_gates_open")]

GOAL = Goal(event="purchase", where=(), window_hours=24, anchor="opened")
REACHED = "conversions_reached2:variant"


def recounted_reached(ids) -> dict:
    """Profiles reached per variant, row by row in Python: accepted rows and the holdout's with a device."""
    pairs = {
        (variant, profile)
        for variant, profile, status, reason, device in Delivery.objects.filter(dispatch_id__in=ids).values_list(
            "variant", "profile_id", "status", "reason", "device_id"
        )
        if status == "accepted" or (variant == 0 and status == "skipped" and reason == "holdout" and device)
    }
    return dict(Counter(variant for variant, _ in pairs))


def recounted_profiles(ids) -> dict:
    """Profiles per variant among every row with a variant, row by row in Python."""
    pairs = set(
        Delivery.objects.filter(dispatch_id__in=ids, variant__isnull=False).values_list("variant", "profile_id")
    )
    return dict(Counter(variant for variant, _ in pairs))


def reached(ids) -> dict:
    return {
        variant: row["reached"]
        for variant, row in conversions_by(dispatch_ids=ids, goal=GOAL, group="variant", group_key="variant").items()
    }


def variant_profiles(ids) -> dict:
    return profiles_by(
        name="variant_profiles",
        dispatch_ids=ids,
        rows=lambda of: Delivery.objects.filter(dispatch_id__in=of, variant__isnull=False),
        group="variant",
    )


def kept(dispatch, name=REACHED):
    row = DispatchProfiles.objects.filter(dispatch=dispatch, name=name).first()
    return None if row is None else {group: n for group, n in row.counts}


def assert_figures_are_the_recount(*dispatches):
    ids = [d.pk for d in dispatches]
    expected = recounted_reached(ids)
    assert expected, "nothing to compare"
    assert reached(ids) == expected
    assert variant_profiles(ids) == recounted_profiles(ids)


def _variants(content):
    return [
        {"number": n, "label": label, "content_id": content.pk, "share": 40, "spec": content.spec()}
        for n, label in ((1, "A"), (2, "B"))
    ]


def _sent(app, content, audience, capture):
    """A dispatch of ``content`` with two variants to ``audience``, sent (its tasks run inline)."""
    with capture(execute=True):
        dispatch = dispatch_create(
            app_id=app.pk,
            kind="api_trigger",
            spec=content.spec(),
            profile_ids=[p.pk for p in audience],
            variants=_variants(content),
        )
    dispatch.refresh_from_db()
    return dispatch


def test_a_finished_sends_profiles_are_kept_once_and_are_the_recount_after_retries_devices_and_opens(
    pushsim_app, pushsim, open_gate, admin_erin, settings, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_SEND_BACKOFF_SECONDS = 0.05
    content = PushContentFactory(app=pushsim_app)
    variants = _variants(content)
    profiles = ProfileFactory.create_batch(14)
    devices = []
    for n, profile in enumerate(profiles):
        devices.append(DeviceFactory(profile=profile, app=pushsim_app, platform="ios" if n % 2 else "android"))
        if n % 3 == 0:  # a second device: the profile counts once
            devices.append(DeviceFactory(profile=profile, app=pushsim_app, platform="android"))
    DeviceFactory(profile=ProfileFactory(), app=pushsim_app, push_enabled=False)
    # Who falls in the holdout depends on the profiles' ids: more iPhones until someone does.
    while (
        len(sent := [d for d in devices if variant_for(d.profile_id, salt=0, variants=variants, holdout_share=20)])
        == len(devices)
        or len([d for d in sent if d.platform == "ios"]) < 2
    ):
        devices.append(DeviceFactory(app=pushsim_app, platform="ios"))
    assert len(sent) < len(devices), "some held out"
    sent = [d for d in sent if d.platform == "ios"]  # APNs' reasons below
    assert len(sent) >= 2
    pushsim.state.fail_token(token=sent[0].token, failures=[(410, "Unregistered")])
    pushsim.state.fail_token(token=sent[1].token, failures=[429])  # retried, then accepted
    with django_capture_on_commit_callbacks(execute=True):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=content.spec(),
            profile_ids=sorted({d.profile_id for d in devices}),
            variants=variants,
            holdout_share=20,
        )
    dispatch.refresh_from_db()
    assert dispatch.status == Dispatch.Status.DONE and dispatch.retries
    assert {"accepted", "failed", "skipped"} <= set(
        Delivery.objects.filter(dispatch=dispatch).values_list("status", flat=True)
    )
    assert kept(dispatch) is None
    assert_figures_are_the_recount(dispatch)
    assert kept(dispatch) == recounted_reached([dispatch.pk])
    assert kept(dispatch, "variant_profiles") == recounted_profiles([dispatch.pk])

    # Opens come after the send: they change nothing counted here, and the kept figure is read.
    for row in Delivery.objects.filter(dispatch=dispatch, status="accepted")[:2]:
        delivery_open_report(delivery_id=row.pk, app_id=pushsim_app.pk, by=admin_erin, when=timezone.now())
    assert_figures_are_the_recount(dispatch)
    DispatchProfiles.objects.filter(dispatch=dispatch, name=REACHED).update(counts=[[1, 999]])
    assert reached([dispatch.pk]) == {1: 999}, "the kept figure is read, not counted again"


def test_a_stopped_dispatch_is_counted_while_rows_are_in_flight_and_kept_once_they_end(
    pushsim_app, pushsim, open_gate, manager_alice, django_capture_on_commit_callbacks
):
    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(6)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk,
            kind="api_trigger",
            spec=content.spec(),
            profile_ids=[p.pk for p in profiles],
            variants=_variants(content),
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    in_flight = deliveries_claim(dispatch.pk, limit=2, now=timezone.now())  # a worker dies with these
    dispatch_send(dispatch_id=dispatch.pk)
    dispatch_stop(dispatch_id=dispatch.pk, by=manager_alice)
    dispatch.refresh_from_db()
    assert dispatch.status == Dispatch.Status.STOPPED and len(in_flight) == 2
    assert_figures_are_the_recount(dispatch)
    assert kept(dispatch) is None, "rows in flight may still be accepted"

    assert deliveries_expire_leases(now=timezone.now() + dt.timedelta(hours=1)) == 2
    assert_figures_are_the_recount(dispatch)
    assert kept(dispatch) == recounted_reached([dispatch.pk])


def test_dispatches_reaching_the_same_profiles_count_each_profile_once(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(5)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="ios")

    def send(audience):
        return _sent(pushsim_app, content, audience, django_capture_on_commit_callbacks)

    first, second = send(profiles), send(profiles[:3])
    assert_figures_are_the_recount(first)
    assert_figures_are_the_recount(second)
    both = recounted_reached([first.pk, second.pk])
    assert sum(both.values()) == 5 < sum(kept(first).values()) + sum(kept(second).values())
    assert_figures_are_the_recount(first, second)


def test_a_stream_is_counted_while_calls_append_and_kept_once_it_is_finished(pushsim, pushsim_app):
    content = PushContentFactory(app=pushsim_app)
    stream = orders_stream(content, source_id=778, variants=_variants(content))
    profiles = ProfileFactory.create_batch(4)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    source = ("SELECT id FROM delivery_app WHERE id = %s FOR SHARE", [pushsim_app.pk])

    def append(audience, variant):
        stream_append(
            dispatch_id=stream.pk,
            kind=stream.kind,
            app_id=pushsim_app.pk,
            recipients=[Recipient(p.pk, variant=variant) for p in audience],
            source_lock=source,
        )

    append(profiles[:2], 1)
    streams_send(budget=0)
    assert_figures_are_the_recount(stream)
    append(profiles, 2)  # the same profiles again, and more: the figure follows
    streams_send(budget=0)
    dispatch_recount(dispatch_id=stream.pk)  # its counters follow the rows, as at each watch
    assert_figures_are_the_recount(stream)
    assert kept(stream) is None, "calls may still append"

    streams_watch(now=timezone.now() + dt.timedelta(days=1))  # a new day: calls go to another stream
    stream.refresh_from_db()
    assert stream.status == Dispatch.Status.DONE
    assert_figures_are_the_recount(stream)
    assert kept(stream) == {1: 2, 2: 4}


def test_retention_takes_the_kept_figures_with_the_rows(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(4)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    dispatch = _sent(pushsim_app, content, profiles, django_capture_on_commit_callbacks)
    assert_figures_are_the_recount(dispatch)
    assert kept(dispatch) and kept(dispatch, "variant_profiles")

    Dispatch.objects.filter(pk=dispatch.pk).update(finished_at=timezone.now() - dt.timedelta(days=400))
    assert retention_apply(delivery_days=30)["deliveries"] == 4
    assert not DispatchProfiles.objects.filter(dispatch=dispatch).exists()
    assert reached([dispatch.pk]) == recounted_reached([dispatch.pk]) == {}
    assert variant_profiles([dispatch.pk]) == {}


def test_conversions_read_events_up_to_the_latest_anchors_window_and_no_further(
    pushsim_app, pushsim, open_gate, admin_erin, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(3)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    with django_capture_on_commit_callbacks(execute=True):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
    # Sent 30 hours ago: the rows' times moved back, and the rollup counted again from them.
    back = dt.timedelta(hours=30)
    Dispatch.objects.filter(pk=dispatch.pk).update(created_at=F("created_at") - back)
    Delivery.objects.filter(dispatch=dispatch).update(finished_at=F("finished_at") - back)
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    rows = {row.profile_id: row for row in Delivery.objects.filter(dispatch=dispatch, status="accepted")}
    assert len(rows) == 3
    late, early, other = (rows[p.pk] for p in profiles)
    opened = timezone.now() - dt.timedelta(hours=3)  # opened a day after it was accepted
    delivery_open_report(delivery_id=late.pk, app_id=pushsim_app.pk, by=admin_erin, when=opened)
    delivery_open_report(delivery_id=early.pk, app_id=pushsim_app.pk, by=admin_erin, when=early.finished_at)
    EventFactory(profile=profiles[0], name="purchase", occurred_at=opened + dt.timedelta(hours=2, seconds=-1))
    EventFactory(profile=profiles[1], name="purchase", occurred_at=early.finished_at + dt.timedelta(hours=23))
    EventFactory(profile=profiles[2], name="purchase", occurred_at=other.finished_at + dt.timedelta(hours=24))

    def converted(anchor, hours):
        goal = Goal(event="purchase", where=(), window_hours=hours, anchor=anchor)
        counts = conversions_by(dispatch_ids=[dispatch.pk], goal=goal, group="variant", group_key="variant")
        return counts[None]["converted"]

    assert converted("opened", 2) == 1  # the late open's window, though acceptance's ended long before
    assert converted("accepted", 24) == 1  # 23 h after acceptance counts, 24 h does not
    assert converted("accepted", 25) == 2


def test_a_dispatch_still_sending_adds_only_the_profiles_the_settled_ones_did_not_reach(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(8)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="ios")

    def send(audience, *, variants=None, sent=True):
        with django_capture_on_commit_callbacks(execute=sent):
            dispatch = dispatch_create(
                app_id=pushsim_app.pk,
                kind="api_trigger",
                spec=content.spec(),
                profile_ids=[p.pk for p in audience],
                variants=variants or [],
            )
            if not sent:
                dispatch_prepare(dispatch_id=dispatch.pk)
        dispatch.refresh_from_db()
        return dispatch

    for variants in (_variants(content), None):  # with variants, and without (the group is empty)
        first, second = send(profiles[:5], variants=variants), send(profiles[3:], variants=variants)
        sending = send(profiles, variants=variants, sent=False)
        assert [first.status, second.status, sending.status] == ["done", "done", "sending"]
        in_flight = deliveries_claim(sending.pk, limit=5, now=timezone.now())
        dispatch_send(dispatch_id=sending.pk)  # some of its rows are accepted, some still in flight
        assert len(in_flight) == 5 and Delivery.objects.filter(dispatch=sending, status="accepted").count() == 3
        dispatch_recount(dispatch_id=sending.pk)
        ids = [first.pk, second.pk, sending.pk]
        assert reached(ids) == recounted_reached(ids)
        assert sum(recounted_reached(ids).values()) == 8  # each profile once, in the one variant it has
        assert variant_profiles(ids) == recounted_profiles(ids)
        assert kept(sending) is None

        deliveries_expire_leases(now=timezone.now() + dt.timedelta(hours=1))  # the rest never answered
        assert reached(ids) == recounted_reached(ids)
        assert variant_profiles(ids) == recounted_profiles(ids)


def test_retention_voids_the_figures_kept_over_several_dispatches(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(4)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="ios")

    def send(audience):
        return _sent(pushsim_app, content, audience, django_capture_on_commit_callbacks)

    old, recent = send(profiles[:3]), send(profiles[2:])
    ids = [old.pk, recent.pk]
    assert reached(ids) == recounted_reached(ids)
    Dispatch.objects.filter(pk=old.pk).update(finished_at=timezone.now() - dt.timedelta(days=400))
    assert retention_apply(delivery_days=30)["deliveries"] == 3
    assert reached(ids) == recounted_reached(ids) == recounted_reached([recent.pk])
    assert variant_profiles(ids) == recounted_profiles(ids)
