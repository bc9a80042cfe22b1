"""The send pipeline end to end, against the push simulator over real HTTP/2 on loopback."""

import datetime as dt
import random
import threading
import time

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.utils import timezone

from audiences.services.profiles import profiles_delete
from delivery.models import App, Delivery, Device, Dispatch
from delivery.reasons import handed_over, reason_label
from delivery.services import sending
from delivery.services.claims import Result, deliveries_claim, deliveries_write_back
from delivery.services.contents import pushcontent_save, pushcontent_test_send
from delivery.services.dispatches import (
    _GATES,
    GateClosed,
    deliveries_expire_leases,
    dispatch_create,
    dispatch_gate_register,
    dispatch_prepare,
    dispatch_stop,
)
from delivery.services.sending import dispatch_send
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory, SegmentMemberFactory
from tests.fakes.pushsim import heal_after_the_first_drop
from tests.locks import eventually
from tests.pg_statistics import rows_read, statistics_say_empty

pytestmark = pytest.mark.django_db


@pytest.fixture
def fast_retries(settings):
    settings.PUSHDESK_SEND_BACKOFF_SECONDS = 0.05
    settings.PUSHDESK_SEND_MAX_ATTEMPTS = 4


def send(content, profiles, django_capture_on_commit_callbacks, **kwargs) -> Dispatch:
    with django_capture_on_commit_callbacks(execute=True):
        dispatch = dispatch_create(
            app_id=content.app_id,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=content.spec(),
            content_id=content.pk,
            profile_ids=[p.pk for p in profiles],
            **kwargs,
        )
    dispatch.refresh_from_db()
    return dispatch


def rows(dispatch) -> dict:
    return {d.profile_id: d for d in Delivery.objects.filter(dispatch=dispatch)}


@pytest.mark.embedded
def test_every_targeted_profile_gets_an_outcome_with_its_skip_reason(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    reachable, opted_out, no_device, dead_only = ProfileFactory.create_batch(4)
    ios = DeviceFactory(profile=reachable, app=pushsim_app, platform="ios")
    android = DeviceFactory(profile=reachable, app=pushsim_app, platform="android")
    DeviceFactory(profile=opted_out, app=pushsim_app, push_enabled=False)
    DeviceFactory(profile=dead_only, app=pushsim_app, active=False, invalidated_reason="Unregistered")
    DeviceFactory(profile=no_device)  # another app's device does not count

    dispatch = send(content, [reachable, opted_out, no_device, dead_only], django_capture_on_commit_callbacks)

    assert dispatch.status == Dispatch.Status.DONE
    by_device = {d.device_id: d for d in Delivery.objects.filter(dispatch=dispatch)}
    assert by_device[ios.pk].status == by_device[android.pk].status == Delivery.Status.ACCEPTED
    assert by_device[ios.pk].provider_message_id and by_device[android.pk].provider_message_id
    by_profile = rows(dispatch)
    assert (by_profile[opted_out.pk].status, by_profile[opted_out.pk].reason) == ("skipped", "not_opted_in")
    assert (by_profile[no_device.pk].status, by_profile[no_device.pk].reason) == ("skipped", "no_device")
    assert (by_profile[dead_only.pk].status, by_profile[dead_only.pk].reason) == ("skipped", "no_device")
    assert (dispatch.total, dispatch.accepted, dispatch.skipped, dispatch.failed) == (5, 2, 3, 0)
    assert pushsim.state.count(ios.token) == pushsim.state.count(android.token) == 1


def test_a_dispatch_of_content_deleted_since_it_was_frozen_is_created_and_sends_the_frozen_copy(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    """A journey's segment entry sends the copy frozen at approval: the content may be deleted since."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # as a commit checks them
    content = PushContentFactory(app=pushsim_app, title="Welcome", body="Aboard")
    spec, content_id = content.spec(), content.pk
    content.delete()
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks(execute=True):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=spec,
            content_id=content_id,
            profile_ids=[profile.pk],
        )
    dispatch.refresh_from_db()
    assert (dispatch.content_id, dispatch.status, dispatch.accepted) == (None, "done", 1)
    assert [r["title"] for r in pushsim.state.recent(token=device.token)] == ["Welcome"]


def test_segment_audience_is_resolved_in_one_insert(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks, django_assert_max_num_queries
):
    content = PushContentFactory(app=pushsim_app)
    members = [SegmentMemberFactory() for _ in range(3)]
    segment = members[0].segment
    for member in members[1:]:
        member.segment = segment
        member.save()
    for member in members:
        DeviceFactory(profile=member.profile, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind=Dispatch.Kind.API_TRIGGER, spec=content.spec(), segment_id=segment.pk
        )
    # The rows in one INSERT; the rest is the dispatch's lock, rules, counters, its rows' upper id.
    with django_assert_max_num_queries(11), django_capture_on_commit_callbacks(execute=False):
        dispatch_prepare(dispatch_id=dispatch.pk)
    assert Delivery.objects.filter(dispatch=dispatch, status="queued").count() == 3


def test_the_resolve_writes_its_rows_in_profile_order_whatever_order_the_audience_was_built_in(
    pushsim_app, open_gate, django_capture_on_commit_callbacks
):
    """The resolve's rows go in by profile (their index entries then go in in order; a join's own
    order scattered them over the indexes and doubled the resolve at a million rows)."""
    profiles = ProfileFactory.create_batch(40)
    joined, equipped = profiles[:], profiles[:]
    random.Random(7).shuffle(joined)
    random.Random(11).shuffle(equipped)
    segment = SegmentMemberFactory(profile=joined[0]).segment
    for profile in joined[1:]:
        SegmentMemberFactory(segment=segment, profile=profile)
    for profile in equipped:
        DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=PushContentFactory(app=pushsim_app).spec(),
            segment_id=segment.pk,
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    written = list(Delivery.objects.filter(dispatch=dispatch).order_by("pk").values_list("profile_id", flat=True))
    assert written == sorted(p.pk for p in profiles)


def test_personalized_and_localized_message_reaches_the_phone(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(
        app=pushsim_app,
        title="Hello {{ profile.attributes.first_name | default: 'there' }}",
        body="Code {{ context.code }}",
        variants={"fr": {"title": "Bonjour {{ profile.attributes.first_name | default: 'à vous' }}"}},
    )
    french = ProfileFactory(locale="fr-CA", attributes={"first_name": "Zoé"})
    anonymous = ProfileFactory(locale="de-DE")
    fr_device = DeviceFactory(profile=french, app=pushsim_app, platform="ios")
    de_device = DeviceFactory(profile=anonymous, app=pushsim_app, platform="android")

    send(content, [french, anonymous], django_capture_on_commit_callbacks, context={"code": "X7"})

    received = {r["token"]: r for r in pushsim.state.recent(limit=10)}
    assert received[fr_device.token]["title"] == "Bonjour Zoé"
    assert received[fr_device.token]["body"] == "Code X7"
    assert received[de_device.token]["title"] == "Hello there"


def test_a_profile_whose_value_grows_a_filter_past_its_limit_fails_alone(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    grown = '{{ profile.attributes.x | replace: "", profile.attributes.x | replace: "", profile.attributes.x | size }}'
    content = PushContentFactory(app=pushsim_app, title="Size " + grown)
    long, short = ProfileFactory(attributes={"x": "b" * 150}), ProfileFactory(attributes={"x": "ab"})
    DeviceFactory(profile=long, app=pushsim_app, platform="ios")
    short_device = DeviceFactory(profile=short, app=pushsim_app, platform="android")

    dispatch = send(content, [long, short], django_capture_on_commit_callbacks)

    outcome = rows(dispatch)
    assert outcome[long.pk].status == "failed"
    assert outcome[long.pk].reason == "render_error: replace would make a text longer than 65536 characters"
    assert outcome[short.pk].status == "accepted"
    assert {r["token"]: r["title"] for r in pushsim.state.recent(limit=10)} == {short_device.token: "Size 26"}


def test_a_profile_whose_value_breaks_a_filter_fails_alone_and_its_batch_is_sent(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app, title="Score {{ profile.attributes.score | round }}")
    odd, fine = ProfileFactory(attributes={"score": "nan"}), ProfileFactory(attributes={"score": "2.6"})
    DeviceFactory(profile=odd, app=pushsim_app, platform="ios")
    fine_device = DeviceFactory(profile=fine, app=pushsim_app, platform="android")

    dispatch = send(content, [odd, fine], django_capture_on_commit_callbacks)

    outcome = rows(dispatch)
    assert outcome[odd.pk].status == "failed"
    assert outcome[odd.pk].reason == "render_error: a filter failed on a value (ValueError)"
    assert outcome[fine.pk].status == "accepted"
    assert {r["token"]: r["title"] for r in pushsim.state.recent(limit=10)} == {fine_device.token: "Score 3"}
    assert dispatch.status == "done"


def test_dead_token_deactivates_the_device_and_it_is_never_targeted_again(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    pushsim.state.add_device(token=device.token, platform="ios", state="unregistered")

    dispatch = send(content, [profile], django_capture_on_commit_callbacks)

    delivery = Delivery.objects.get(dispatch=dispatch)
    assert (delivery.status, delivery.reason) == ("failed", "Unregistered")
    device.refresh_from_db()
    assert not device.active
    assert device.invalidated_reason == "Unregistered" and device.invalidated_at is not None

    again = send(content, [profile], django_capture_on_commit_callbacks)
    assert (Delivery.objects.get(dispatch=again).status, Delivery.objects.get(dispatch=again).reason) == (
        "skipped",
        "no_device",
    )


@pytest.mark.django_db(transaction=True)
def test_a_dead_token_answer_leaves_a_phone_registered_again_while_its_push_was_on_its_way(
    pushsim_app, pushsim, open_gate, manager_alice
):
    """The provider calls the token dead (APNs 410 Unregistered), but the app registered it again
    while the push was on its way, the phone handed to another user: that registration is newer
    than the answer's request, so the phone stays active for its new owner; the row says what the
    provider answered."""
    from accounts.services import access_grant
    from delivery.services.devices import device_register

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app)
    profile, new_owner = ProfileFactory(), ProfileFactory()
    phone = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    pushsim.state.add_device(token=phone.token, platform="ios", state="unregistered")
    pushsim.state.faults.latency_ms = 1500

    def send_in_a_worker() -> None:
        try:
            dispatch_create(app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[profile.pk])
        finally:
            connection.close()

    worker = threading.Thread(target=send_in_a_worker)
    try:
        worker.start()
        assert eventually(lambda: Delivery.objects.filter(status="sending").exists()), "never claimed"
        device_register(
            app_id=pushsim_app.pk,
            external_id=new_owner.external_id,
            platform="ios",
            token=phone.token,
            by=manager_alice,
        )
        worker.join(timeout=30)
    finally:
        pushsim.state.faults.latency_ms = 0
    assert not worker.is_alive()

    row = Delivery.objects.get()
    assert (row.status, row.reason) == ("failed", "Unregistered")
    phone.refresh_from_db()
    assert (phone.active, phone.profile_id, phone.invalidated_at) == (True, new_owner.pk, None)


def test_a_dead_token_answer_deactivates_a_phone_registered_before_its_push_was_sent(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    """A registration older than the request the provider answered dead does not keep it."""
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    phone = DeviceFactory(
        profile=profile, app=pushsim_app, platform="android", last_registered_at=timezone.now() - dt.timedelta(days=1)
    )
    pushsim.state.fail_token(token=phone.token, failures=[(404, "UNREGISTERED")])
    dispatch = send(content, [profile], django_capture_on_commit_callbacks)
    assert (Delivery.objects.get(dispatch=dispatch).status, dispatch.failed) == ("failed", 1)
    phone.refresh_from_db()
    assert not phone.active and phone.invalidated_reason == "UNREGISTERED"


def test_transient_failure_is_retried_after_retry_after_and_sent_once(
    pushsim_app, pushsim, open_gate, fast_retries, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    pushsim.state.fail_token(token=device.token, failures=[503])
    started = timezone.now()

    dispatch = send(content, [profile], django_capture_on_commit_callbacks)

    delivery = Delivery.objects.get(dispatch=dispatch)
    assert delivery.status == "accepted" and delivery.attempts == 2
    assert (timezone.now() - started).total_seconds() >= 1.0  # the simulator's Retry-After: 1
    assert pushsim.state.count(device.token) == 1


def test_retries_are_counted_by_reason_on_the_dispatch_and_in_its_outcomes(
    pushsim_app, pushsim, open_gate, fast_retries, django_capture_on_commit_callbacks, api_key_for, admin_erin
):
    content = PushContentFactory(app=pushsim_app)
    profiles = [ProfileFactory(), ProfileFactory()]
    first = DeviceFactory(profile=profiles[0], app=pushsim_app, platform="ios")
    second = DeviceFactory(profile=profiles[1], app=pushsim_app, platform="ios")
    pushsim.state.fail_token(token=first.token, failures=[429, 429])
    pushsim.state.fail_token(token=second.token, failures=[429])

    dispatch = send(content, profiles, django_capture_on_commit_callbacks)

    assert dispatch.accepted == 2
    assert dispatch.retries == {"TooManyRequests": 3}
    outcomes = api_key_for(admin_erin, scopes=["read"]).get(f"/api/v1/dispatches/{dispatch.pk}/").json()["outcomes"]
    assert {"status": "retried", "reason": "TooManyRequests", "count": 3} in outcomes


def test_retries_stop_after_the_attempts_limit_with_the_reason(
    pushsim_app, pushsim, open_gate, fast_retries, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    pushsim.state.fail_token(token=device.token, failures=[(500, "InternalServerError")] * 4)

    dispatch = send(content, [profile], django_capture_on_commit_callbacks)

    delivery = Delivery.objects.get(dispatch=dispatch)
    assert delivery.status == "failed" and delivery.attempts == 4
    assert delivery.reason == "InternalServerError (gave up after 4 attempts)"
    assert pushsim.state.count(device.token) == 0


def test_retry_that_would_land_after_the_ttl_fails_instead(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app, ttl_seconds=0)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    pushsim.state.fail_token(token=device.token, failures=[503])

    dispatch = send(content, [profile], django_capture_on_commit_callbacks)

    delivery = Delivery.objects.get(dispatch=dispatch)
    assert delivery.status == "failed" and "TTL" in delivery.reason


def test_edit_during_a_send_changes_nothing_in_flight(
    pushsim_app, pushsim, open_gate, manager_alice, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app, title="Original title")
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        dispatch = dispatch_create(
            app_id=pushsim_app.pk,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=content.spec(),
            content_id=content.pk,
            profile_ids=[profile.pk],
        )
        content.title = "Edited title"
        pushcontent_save(content=content, by=manager_alice)
    assert callbacks
    dispatch.refresh_from_db()
    assert dispatch.content_spec["title"] == "Original title"
    assert pushsim.state.recent(token=device.token)[0]["title"] == "Original title"


@pytest.mark.embedded
def test_stopping_a_dispatch_stops_its_queued_rows(
    pushsim_app, pushsim, open_gate, manager_alice, django_capture_on_commit_callbacks
):
    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(3)
    devices = [DeviceFactory(profile=p, app=pushsim_app, platform="ios") for p in profiles]
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=dispatch.pk)

    stopped = dispatch_stop(dispatch_id=dispatch.pk, by=manager_alice)
    dispatch_send(dispatch_id=dispatch.pk)

    assert stopped.status == Dispatch.Status.STOPPED
    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "reason")) == {("skipped", "stopped")}
    assert stopped.skipped == 3
    assert all(pushsim.state.count(d.token) == 0 for d in devices)


@pytest.mark.django_db(transaction=True)
def test_a_row_in_flight_when_its_dispatch_is_stopped_is_not_left_queued_by_a_retry(
    pushsim_app, pushsim, open_gate, manager_alice, settings
):
    """Stop lands while the provider holds the request; its answer, a 503, must not requeue the row."""
    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    pushsim.state.fail_token(token=device.token, failures=[503])
    pushsim.state.faults.latency_ms = 800

    def send_in_a_worker() -> None:
        try:
            dispatch_create(app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[profile.pk])
        finally:
            connection.close()

    worker = threading.Thread(target=send_in_a_worker)
    worker.start()
    rows = Delivery.objects.filter(device=device)
    assert eventually(lambda: rows.filter(status="sending").exists()), "the row was never claimed"
    dispatch_stop(dispatch_id=rows.get().dispatch_id, by=manager_alice)
    worker.join(timeout=30)

    row = rows.get()
    assert (row.status, row.reason, row.next_attempt_at) == ("skipped", "stopped", None)
    dispatch = Dispatch.objects.get(pk=row.dispatch_id)
    assert (dispatch.status, dispatch.skipped) == ("stopped", 1)
    assert pushsim.state.count(device.token) == 0


def test_viewer_cannot_stop_a_dispatch(pushsim_app, open_gate, viewer_carol, django_capture_on_commit_callbacks):
    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=viewer_carol, by=None)
    content = PushContentFactory(app=pushsim_app)
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[])
    with pytest.raises(PermissionDenied):
        dispatch_stop(dispatch_id=dispatch.pk, by=viewer_carol)


@pytest.mark.embedded
def test_rows_of_a_dead_worker_become_unknown_after_the_lease_and_are_never_resent(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(4)
    devices = [DeviceFactory(profile=p, app=pushsim_app, platform="android") for p in profiles]
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    # A worker claims two rows and dies before sending them.
    claimed = deliveries_claim(dispatch.pk, limit=2, now=timezone.now())
    assert len(claimed) == 2

    dispatch_send(dispatch_id=dispatch.pk)  # another worker sends the rest
    later = timezone.now() + timezone.timedelta(seconds=3600)
    assert deliveries_expire_leases(now=later) == 2
    dispatch_send(dispatch_id=dispatch.pk)

    statuses = dict(Delivery.objects.filter(dispatch=dispatch).values_list("device_id", "status"))
    claimed_devices = {c.device_id for c in claimed}
    assert {statuses[i] for i in claimed_devices} == {"unknown"}
    assert all(pushsim.state.count(d.token) == (0 if d.pk in claimed_devices else 1) for d in devices)
    dispatch.refresh_from_db()
    assert dispatch.status == Dispatch.Status.DONE
    assert (dispatch.accepted, dispatch.unknown) == (2, 2)


@pytest.mark.django_db(transaction=True)
def test_the_answers_of_a_slow_worker_land_on_the_rows_its_lease_left_unknown_and_none_is_sent_again(
    pushsim_app, pushsim, open_gate, settings
):
    """A worker slow, not dead: its lease runs out while the provider holds its requests, and the
    watchdog ends the rows ``unknown``. The answers that come after are what the rows, the
    dispatch's counters and the rollup say: accepted with its id, failed with its reason, a retry
    failed (never sent again)."""
    from accounts.models import AuditEvent
    from tests.delivery.test_rollups import assert_rollup_is_the_count

    settings.PUSHDESK_SEND_LEASE_SECONDS = 1
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(4)
    devices = [
        DeviceFactory(profile=p, app=pushsim_app, platform=platform)
        for p, platform in zip(profiles, ("ios", "android", "android", "ios"), strict=True)
    ]
    pushsim.state.fail_token(token=devices[2].token, failures=[(400, "INVALID_ARGUMENT")])
    pushsim.state.fail_token(token=devices[3].token, failures=[503])
    pushsim.state.faults.latency_ms = 2500

    def send_in_a_worker() -> None:
        try:
            dispatch_create(
                app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
            )
        finally:
            connection.close()

    worker = threading.Thread(target=send_in_a_worker)
    try:
        worker.start()
        # The simulator counts what reaches a phone: the two refused ones (400, 503) never do.
        sent = [1, 1, 0, 0]
        assert eventually(lambda: [pushsim.state.count(d.token) for d in devices] == sent), "never sent"
        dispatch = Dispatch.objects.get()
        rows = Delivery.objects.filter(dispatch=dispatch)
        time.sleep(1.2)  # the lease runs out, the answers still on their way
        assert deliveries_expire_leases() == 4  # the watchdog, by the database's clock
        assert set(rows.values_list("status", "reason")) == {("unknown", "lease_expired")}
        worker.join(timeout=30)
    finally:
        pushsim.state.faults.latency_ms = 0
    assert not worker.is_alive()

    by_device = {row.device_id: row for row in rows}
    landed = [(by_device[d.pk].status, by_device[d.pk].reason) for d in devices]
    assert landed == [
        ("accepted", ""),
        ("accepted", ""),
        ("failed", "INVALID_ARGUMENT"),
        ("failed", "ServiceUnavailable (lease over before a retry)"),
    ]
    assert all(by_device[d.pk].provider_message_id for d in devices[:2])
    dispatch.refresh_from_db()
    assert (dispatch.accepted, dispatch.failed, dispatch.unknown) == (2, 2, 0)
    assert dispatch.by_platform == {"ios": {"accepted": 1, "failed": 1}, "android": {"accepted": 1, "failed": 1}}
    assert_rollup_is_the_count(dispatch)
    # The watchdog finished it failed, none of its rows accepted then; two were.
    assert (dispatch.status, dispatch.error) == ("done", "")
    said = AuditEvent.objects.filter(object_id=str(dispatch.pk), action__in=("dispatch_failed", "dispatch_done"))
    assert list(said.order_by("pk").values_list("action", "summary__answered_late")) == [
        ("dispatch_failed", None),
        ("dispatch_done", True),
    ]
    dispatch_send(dispatch_id=dispatch.pk)  # a sender coming by sends nothing again
    assert [pushsim.state.count(d.token) for d in devices] == sent


@pytest.mark.embedded
def test_a_late_answer_lands_only_from_the_claim_the_watchdog_took_the_row_from(
    pushsim_app, open_gate, django_capture_on_commit_callbacks
):
    """Over a row the watchdog ended ``unknown``, only the claim that held it writes its answer:
    not an earlier claim of the row (a retry claimed it again since), not a write-back naming no
    claim; and nothing writes over a row ended ``unknown`` otherwise (a timeout)."""
    from tests.delivery.test_rollups import assert_rollup_is_the_count

    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(4)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    now = timezone.now()
    first = deliveries_claim(dispatch.pk, limit=3, now=now)
    claims = {row.id: row.attempts for row in first}
    retried, timed_out, slow = first
    deliveries_write_back(
        dispatch.pk,
        [
            Result(retried.id, "queued", reason="QUOTA_EXCEEDED", next_attempt_at=now),
            Result(timed_out.id, "unknown", reason="transport:timeout (may have been delivered)"),
        ],
        now=now,
        claims=claims,
    )
    [again] = deliveries_claim(dispatch.pk, limit=1, now=now + dt.timedelta(seconds=1))
    assert (again.id, again.attempts) == (retried.id, 2)
    assert deliveries_expire_leases(now=timezone.now() + dt.timedelta(hours=1)) == 2  # the fourth row waits

    android = {row.id: "android" for row in first}
    late = [Result(row.id, "accepted", provider_id=f"late-{row.id}") for row in first]
    written = deliveries_write_back(dispatch.pk, late, now=now, platforms=android, claims=claims)
    assert written == {"accepted": 1}  # the slow row's: the retried one was claimed again since
    assert not deliveries_write_back(dispatch.pk, [Result(again.id, "accepted")], now=now, platforms=android)
    written = deliveries_write_back(
        dispatch.pk,
        [Result(again.id, "failed", reason="UNREGISTERED")],
        now=now,
        platforms=android,
        claims={again.id: again.attempts},
    )
    assert written == {"failed": 1}

    rows = {row.pk: row for row in Delivery.objects.filter(dispatch=dispatch)}
    assert (rows[slow.id].status, rows[slow.id].provider_message_id) == ("accepted", f"late-{slow.id}")
    assert (rows[again.id].status, rows[again.id].reason) == ("failed", "UNREGISTERED")
    assert (rows[timed_out.id].status, rows[timed_out.id].provider_message_id) == ("unknown", "")
    dispatch.refresh_from_db()
    assert (dispatch.status, dispatch.accepted, dispatch.failed, dispatch.unknown) == ("sending", 1, 1, 1)
    assert dispatch.by_platform == {"android": {"accepted": 1, "failed": 1, "unknown": 1}}
    assert_rollup_is_the_count(dispatch)


@pytest.mark.embedded
def test_a_late_answer_for_a_phone_deleted_since_its_lease_ran_out_moves_its_platforms_unknown(
    pushsim_app, open_gate, django_capture_on_commit_callbacks
):
    """The watchdog counted the row ``unknown`` under its phone's platform; the phone is deleted
    before the answer comes. The answer moves the row's count out of that platform's ``unknown``,
    in the dispatch's counters and in the rollup it is counted again from: no platform keeps an
    ``unknown`` that is not one, nor a negative count."""
    from delivery.models import DeliveryRollup
    from delivery.services.dispatches import dispatch_recount

    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(2)
    phones = [
        DeviceFactory(profile=p, app=pushsim_app, platform=k) for p, k in zip(profiles, ("ios", "android"), strict=True)
    ]
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    claimed = deliveries_claim(dispatch.pk, limit=2, now=timezone.now())
    assert deliveries_expire_leases(now=timezone.now() + dt.timedelta(hours=1)) == 2
    dispatch.refresh_from_db()
    assert dispatch.by_platform == {"ios": {"unknown": 1}, "android": {"unknown": 1}}
    Device.objects.filter(pk=phones[0].pk).delete()

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
    rolled = DeliveryRollup.objects.filter(dispatch=dispatch).exclude(outcome="targeted")
    assert sorted((r.platform, r.outcome, r.rows) for r in rolled if r.rows) == [
        ("android", "accepted", 1),
        ("ios", "accepted", 1),
    ]


def test_dispatch_without_a_gate_for_its_kind_is_refused(pushsim_app):
    content = PushContentFactory(app=pushsim_app)
    with pytest.raises(GateClosed):
        dispatch_create(app_id=pushsim_app.pk, kind="journey_unknown", spec=content.spec(), profile_ids=[])


def test_closed_gate_sends_nothing(pushsim_app):
    def refuse(**kwargs):
        raise GateClosed("Not approved.")

    saved = dict(_GATES)
    dispatch_gate_register(kind="campaign", gate=refuse)
    try:
        with pytest.raises(GateClosed):
            dispatch_create(
                app_id=pushsim_app.pk, kind="campaign", spec=PushContentFactory(app=pushsim_app).spec(), profile_ids=[]
            )
    finally:
        _GATES.clear()
        _GATES.update(saved)
    assert not Dispatch.objects.exists()


def test_test_send_reaches_only_the_apps_test_devices(
    pushsim_app, pushsim, manager_alice, django_capture_on_commit_callbacks
):
    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app)
    tester = DeviceFactory(app=pushsim_app, is_test=True, platform="ios")
    regular = DeviceFactory(app=pushsim_app, platform="ios")
    with django_capture_on_commit_callbacks(execute=True):
        dispatch = pushcontent_test_send(content_id=content.pk, by=manager_alice)
    dispatch.refresh_from_db()
    assert dispatch.kind == "test" and dispatch.status == "done" and dispatch.accepted == 1
    assert pushsim.state.count(tester.token) == 1 and pushsim.state.count(regular.token) == 0


def test_a_test_send_whose_test_devices_grew_past_the_cap_before_its_resolve_is_refused_whole(
    pushsim_app, pushsim, manager_alice, settings, django_capture_on_commit_callbacks
):
    """The cap is checked when the test is asked; devices marked before its worker resolves it
    would have made it reach more than the cap. It fails saying why, before any row is written."""
    from accounts.services import access_grant

    settings.PUSHDESK_TEST_SEND_MAX_DEVICES = 2
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app)
    testers = [DeviceFactory(app=pushsim_app, is_test=True, platform="ios") for _ in range(2)]
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = pushcontent_test_send(content_id=content.pk, by=manager_alice)
    testers.append(DeviceFactory(app=pushsim_app, is_test=True, platform="ios"))  # marked meanwhile
    dispatch_prepare(dispatch_id=dispatch.pk)
    dispatch.refresh_from_db()
    assert dispatch.status == "failed"
    assert "3 active test devices, more than a test send reaches (2" in dispatch.error
    assert not Delivery.objects.filter(dispatch=dispatch).exists()
    assert all(pushsim.state.count(device.token) == 0 for device in testers)


def test_viewer_cannot_send_a_test(pushsim_app, viewer_carol):
    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=viewer_carol, by=None)
    content = PushContentFactory(app=pushsim_app)
    with pytest.raises(GateClosed):
        pushcontent_test_send(content_id=content.pk, by=viewer_carol)


def test_request_that_timed_out_after_sending_ends_unknown_and_is_not_resent(
    pushsim_app, pushsim, open_gate, settings, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_SEND_TIMEOUT_SECONDS = 0.3
    pushsim.state.faults.latency_ms = 1500
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")

    dispatch = send(content, [profile], django_capture_on_commit_callbacks)

    delivery = Delivery.objects.get(dispatch=dispatch)
    assert delivery.status == "unknown"
    assert delivery.reason.startswith("transport:timeout")
    assert delivery.attempts == 1
    assert pushsim.state.count(device.token) <= 1


def test_a_provider_going_down_between_acting_and_answering_gets_nothing_twice(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    # The provider acts on the first 40 requests, then its connection drops before it answers
    # them; the next connection is healthy.
    pushsim.state.faults.latency_ms = 300
    pushsim.state.faults.drop_after_streams = 40
    healer = heal_after_the_first_drop(pushsim)
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(80)
    devices = [DeviceFactory(profile=p, app=pushsim_app, platform="ios") for p in profiles]

    dispatch = send(content, profiles, django_capture_on_commit_callbacks)
    healer.join()

    counts = pushsim.state.snapshot_counts()
    assert max(counts.values()) == 1, "a device got the push twice"
    statuses = {d.device.token: d.status for d in Delivery.objects.filter(dispatch=dispatch).select_related("device")}
    assert set(statuses.values()) <= {"accepted", "unknown"}
    assert all(counts.get(token) == 1 for token, status in statuses.items() if status == "accepted")
    assert sum(status == "unknown" for status in statuses.values()) >= 40
    assert len(statuses) == len(devices)


@pytest.mark.parametrize(("field", "wrong"), [("apns_key_id", "KEYWRONG01"), ("apns_team_id", "TEAMWRONG1")])
def test_correcting_an_apps_key_or_team_id_reaches_the_next_send_without_a_restart(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks, field, wrong
):
    from delivery.services.apps import app_update

    right = getattr(pushsim_app, field)
    app_update(app_id=pushsim_app.pk, by=None, **{field: wrong})
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    refused = send(content, [profile], django_capture_on_commit_callbacks)
    assert Delivery.objects.get(dispatch=refused).reason.startswith("credentials: ")

    app_update(app_id=pushsim_app.pk, by=None, **{field: right})
    corrected = send(content, [profile], django_capture_on_commit_callbacks)
    assert Delivery.objects.get(dispatch=corrected).status == "accepted"


def test_rows_failed_unsent_after_the_apps_credentials_were_refused_are_not_counted_sent(
    pushsim_app, pushsim, open_gate, settings, django_capture_on_commit_callbacks
):
    """APNs refuses the app's key: the batch that met it was handed over, and the rows still queued
    fail at once with its reason, never sent. A report's "sent" (``handed_over``) counts the first
    and not the others: as many as the requests APNs got."""
    from delivery.services.apps import app_update

    settings.PUSHDESK_SEND_BATCH = 2
    app_update(app_id=pushsim_app.pk, by=None, apns_key_id="KEYWRONG01")
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(8)
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    dispatch = send(content, profiles, django_capture_on_commit_callbacks)

    reasons = list(Delivery.objects.filter(dispatch=dispatch).values_list("status", "reason"))
    assert {status for status, _ in reasons} == {"failed"} and len(reasons) == 8
    assert all(reason.startswith("credentials: ") for _, reason in reasons)
    refused = pushsim.state.requests[403]
    assert 0 < refused < 8
    assert sum(handed_over(reason) for _, reason in reasons) == refused
    assert reason_label(next(r for _, r in reasons if not handed_over(r))) == reason_label(reasons[0][1])


def test_a_collapse_key_apns_cannot_take_fails_the_ios_rows_alone(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    # Saved before collapse keys had to be ASCII: APNs takes it as a header, FCM in the body.
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks() as queued:
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind=Dispatch.Kind.API_TRIGGER, spec=content.spec(), profile_ids=[profile.pk]
        )
    Dispatch.objects.filter(pk=dispatch.pk).update(content_spec={**content.spec(), "collapse_key": "soldé"})
    for callback in queued:
        callback()

    outcomes = {d.device.platform: (d.status, d.reason) for d in Delivery.objects.filter(dispatch=dispatch)}
    assert outcomes == {
        "ios": ("failed", "invalid_collapse_key (APNs takes ASCII only)"),
        "android": ("accepted", ""),
    }


def test_app_without_apns_credentials_fails_ios_rows_with_the_reason(
    pushsim, open_gate, django_capture_on_commit_callbacks
):
    from delivery.services.apps import app_create

    app = app_create(name="No credentials", by=None, uses_simulator=True)
    content = PushContentFactory(app=app)
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=app, platform="ios")
    dispatch = send(content, [profile], django_capture_on_commit_callbacks)
    delivery = Delivery.objects.get(dispatch=dispatch)
    assert delivery.status == "failed" and delivery.reason == "credentials: not_configured:ios"


def test_device_deactivated_keeps_its_history(pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks):
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    send(content, [profile], django_capture_on_commit_callbacks)
    Device.objects.filter(pk=device.pk).update(active=False)
    assert Delivery.objects.filter(device=device).count() == 1


@pytest.mark.embedded
def test_a_profile_with_two_phones_in_a_dispatch_is_deleted_and_its_queued_rows_fail_unsent(
    pushsim_app, pushsim, open_gate, manager_alice
):
    """Its rows keep the devices' ids, as they keep the profile's: nulling them made two rows
    without a device for one profile, which the unique index refused (the deletion failed)."""
    content = PushContentFactory(app=pushsim_app)
    profile, other = ProfileFactory(), ProfileFactory()
    phones = [DeviceFactory(profile=profile, app=pushsim_app, platform=p) for p in ("ios", "android")]
    kept = DeviceFactory(profile=other, app=pushsim_app, platform="android")
    dispatch = dispatch_create(
        app_id=content.app_id,
        kind=Dispatch.Kind.API_TRIGGER,
        spec=content.spec(),
        content_id=content.pk,
        profile_ids=[profile.pk, other.pk],
    )
    dispatch_prepare(dispatch_id=dispatch.pk)
    before = {d.device_id: (d.profile_id, d.status) for d in Delivery.objects.filter(dispatch=dispatch)}
    assert len(before) == 3

    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=manager_alice, by=None)  # the phones' app: hers to erase them
    assert profiles_delete(profile_ids=[profile.pk], by=manager_alice) == 1
    assert not Device.objects.filter(pk__in=[p.pk for p in phones]).exists()
    # Deleting the devices wrote nothing in the deliveries.
    assert {d.device_id: (d.profile_id, d.status) for d in Delivery.objects.filter(dispatch=dispatch)} == before

    dispatch_send(dispatch_id=dispatch.pk)
    outcomes = {d.device_id: (d.status, d.reason) for d in Delivery.objects.filter(dispatch=dispatch)}
    assert outcomes == {
        phones[0].pk: ("failed", "device_deleted"),
        phones[1].pk: ("failed", "device_deleted"),
        kept.pk: ("accepted", ""),
    }
    assert [r["token"] for r in pushsim.state.recent(limit=10)] == [kept.token]
    dispatch.refresh_from_db()
    assert (dispatch.status, dispatch.failed, dispatch.accepted) == ("done", 2, 1)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's statistics and plans")
def test_a_claim_and_its_outcomes_read_only_their_rows_when_the_statistics_say_the_table_is_empty(pushsim_app):
    """A vacuum of an emptied table leaves it pages and no rows until the next analyze. A plan made
    then for the claim's or the outcomes' update joined the rows to every row of the table through
    the primary key: each batch read the whole dispatch (a 100k send took 12 minutes instead of 7 s)."""
    device = DeviceFactory(app=pushsim_app)
    dispatch = Dispatch.objects.create(
        app=pushsim_app, kind="api_trigger", content_spec=PushContentFactory(app=pushsim_app).spec(), status="sending"
    )
    now = timezone.now()
    Delivery.objects.bulk_create(
        [Delivery(dispatch=dispatch, device=device, profile=device.profile, queued_at=now) for _ in range(2000)]
    )
    statistics_say_empty("delivery_delivery")
    before = rows_read("delivery_delivery")
    claimed = deliveries_claim(dispatch.pk, limit=10, now=now)
    assert len(claimed) == 10
    claim_read = rows_read("delivery_delivery") - before
    written = deliveries_write_back(dispatch.pk, [Result(row.id, "accepted") for row in claimed], now=now)
    write_back_read = rows_read("delivery_delivery") - before - claim_read
    assert written == {"accepted": 10}
    assert claim_read < 50 and write_back_read < 50, (claim_read, write_back_read)


def test_watchdog_restarts_a_dispatch_whose_send_tasks_were_lost(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    from delivery.services.dispatches import dispatches_watch

    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(2)
    devices = [DeviceFactory(profile=p, app=pushsim_app, platform="android") for p in profiles]
    with django_capture_on_commit_callbacks(execute=False):  # the send tasks are lost
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=dispatch.pk)

    assert dispatches_watch() == []  # too early: its tasks may still be on their way
    later = timezone.now() + timezone.timedelta(minutes=5)
    assert dispatches_watch(now=later) == [dispatch.pk]

    dispatch.refresh_from_db()
    assert dispatch.status == Dispatch.Status.DONE and dispatch.accepted == 2
    assert all(pushsim.state.count(d.token) == 1 for d in devices)


def test_watchdog_prepares_again_a_dispatch_whose_prepare_task_was_lost(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    from delivery.services.dispatches import _task_timeout, dispatches_watch

    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks(execute=False):  # the prepare task is lost
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[profile.pk]
        )

    assert dispatches_watch() == []  # too early: its task may still be on its way or running
    later = timezone.now() + timezone.timedelta(seconds=_task_timeout() + 1)
    assert dispatches_watch(now=later) == [dispatch.pk]

    dispatch.refresh_from_db()
    assert dispatch.status == Dispatch.Status.DONE and dispatch.accepted == 1
    assert pushsim.state.count(device.token) == 1


def test_a_huge_retry_after_fails_the_row_at_its_ttl_instead_of_crashing_the_send(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    pushsim.state.faults.rate_429 = 1.0
    pushsim.state.faults.retry_after = 10**15

    dispatch = send(content, [profile], django_capture_on_commit_callbacks)

    row = Delivery.objects.get(dispatch=dispatch)
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.reason.endswith("(TTL over before a retry)")
    assert pushsim.state.count(device.token) == 0


def test_a_dispatch_whose_every_push_failed_ends_failed(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(2)
    for profile in profiles:
        device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
        pushsim.state.fail_token(token=device.token, failures=[(400, "INVALID_ARGUMENT")])

    dispatch = send(content, profiles, django_capture_on_commit_callbacks)

    assert (dispatch.status, dispatch.accepted, dispatch.failed) == ("failed", 0, 2)
    assert dispatch.error


def test_a_dispatch_with_one_push_accepted_is_done(pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks):
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(2)
    devices = [DeviceFactory(profile=p, app=pushsim_app, platform="android") for p in profiles]
    pushsim.state.fail_token(token=devices[0].token, failures=[(400, "INVALID_ARGUMENT")])

    dispatch = send(content, profiles, django_capture_on_commit_callbacks)

    assert (dispatch.status, dispatch.accepted, dispatch.failed) == ("done", 1, 1)


@pytest.mark.django_db(transaction=True)
def test_a_worker_clock_running_behind_cannot_stamp_a_lease_already_over(pushsim_app, open_gate):
    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    dispatch = Dispatch.objects.create(
        app=pushsim_app, kind="api_trigger", content_spec=content.spec(), profile_ids=[profile.pk], status="sending"
    )
    Delivery.objects.create(dispatch=dispatch, device=device, profile_id=profile.pk, status="queued")
    skewed = timezone.now() - timezone.timedelta(minutes=10)  # this worker's clock is 10 minutes behind

    [claimed] = deliveries_claim(dispatch.pk, limit=10, now=skewed)
    deliveries_expire_leases()  # the watchdog, on a machine whose clock is right

    assert Delivery.objects.get(pk=claimed.id).status == "sending"


@pytest.mark.django_db(transaction=True)
def test_two_send_tasks_scheduling_their_retry_at_once_make_one_schedule(pushsim_app, monkeypatch):
    """Both tasks decide to create the schedule; a hook holds each just before it is written."""
    from django.db.models.signals import pre_save
    from django_q.conf import Conf
    from django_q.models import Schedule

    from delivery.services.sending import _schedule_retry

    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    dispatch = Dispatch.objects.create(
        app=pushsim_app, kind="api_trigger", content_spec=content.spec(), status="sending"
    )
    Delivery.objects.create(
        dispatch=dispatch,
        device=device,
        profile_id=profile.pk,
        status="queued",
        next_attempt_at=timezone.now() + timezone.timedelta(hours=1),
    )
    monkeypatch.setattr(Conf, "SYNC", False)
    both_writing = threading.Barrier(2)

    def meet(sender, **kwargs):
        try:
            both_writing.wait(timeout=2)
        except threading.BrokenBarrierError:
            pass  # the other one is not writing now: it waits for the dispatch row

    pre_save.connect(meet, sender=Schedule, weak=False)
    errors = []

    def task() -> None:
        try:
            _schedule_retry(dispatch.pk)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connection.close()

    try:
        threads = [threading.Thread(target=task) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        pre_save.disconnect(meet, sender=Schedule)

    assert not errors, errors
    assert Schedule.objects.filter(name=f"dispatch-{dispatch.pk}-retry").count() == 1


def test_a_batch_is_written_back_before_the_sender_waits_for_the_throttle(
    pushsim_app, pushsim, open_gate, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """At 1 push/s the sender waits for a token after each batch. Whenever it sleeps, a watchdog
    runs as if the wait had outlasted the lease: a batch not yet written back would end unknown."""
    import types

    from delivery import throttle

    settings.PUSHDESK_SEND_BATCH = 1
    App.objects.filter(pk=pushsim_app.pk).update(rate_limit_per_second=1)
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(3)
    devices = [DeviceFactory(profile=p, app=pushsim_app, platform="android") for p in profiles]
    lease_over = timezone.timedelta(seconds=settings.PUSHDESK_SEND_LEASE_SECONDS + 1)

    def sleep_past_the_lease(seconds: float) -> None:
        deliveries_expire_leases(now=timezone.now() + lease_over)
        time.sleep(seconds)

    monkeypatch.setattr(
        throttle, "time", types.SimpleNamespace(monotonic=time.monotonic, time=time.time, sleep=sleep_past_the_lease)
    )

    dispatch = send(content, profiles, django_capture_on_commit_callbacks)

    statuses = list(Delivery.objects.filter(dispatch=dispatch).values_list("status", flat=True))
    assert statuses == ["accepted"] * 3
    assert all(pushsim.state.count(d.token) == 1 for d in devices)


def _prepared_android(app, count, capture):
    """A dispatch to ``count`` profiles with an Android device each, prepared (its rows queued), not sent."""
    content = PushContentFactory(app=app)
    profiles = ProfileFactory.create_batch(count)
    for p in profiles:
        DeviceFactory(profile=p, app=app, platform="android")
    with capture(execute=False):
        dispatch = dispatch_create(
            app_id=app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    return dispatch


def test_a_claim_takes_only_rows_after_the_id_it_is_given(pushsim_app, open_gate, django_capture_on_commit_callbacks):
    dispatch = _prepared_android(pushsim_app, 4, django_capture_on_commit_callbacks)
    ids = sorted(Delivery.objects.filter(dispatch=dispatch).values_list("id", flat=True))

    claimed = deliveries_claim(dispatch.pk, limit=10, now=timezone.now(), after=ids[1])

    assert [c.id for c in claimed] == ids[2:]
    assert deliveries_claim(dispatch.pk, limit=10, now=timezone.now(), after=ids[3]) == []
    assert [c.id for c in deliveries_claim(dispatch.pk, limit=10, now=timezone.now())] == ids[:2]


def test_a_sender_goes_back_for_a_retry_queued_below_its_last_claim(
    pushsim_app, pushsim, open_gate, fast_retries, settings, monkeypatch, django_capture_on_commit_callbacks
):
    """Each claim starts after the last one's rows; a row queued again before them is still sent, by the same task."""
    settings.PUSHDESK_SEND_BATCH = 1
    monkeypatch.setattr(sending, "_RESCAN_SECONDS", 3600.0)  # only running out of rows sends it back
    dispatch = _prepared_android(pushsim_app, 3, django_capture_on_commit_callbacks)
    first = Delivery.objects.filter(dispatch=dispatch).select_related("device").order_by("id").first()
    pushsim.state.fail_token(token=first.device.token, failures=[503])

    report = dispatch_send(dispatch_id=dispatch.pk, time_budget=10)

    assert report.claimed == 4  # three rows, and the first one again when its retry was due
    first.refresh_from_db()
    assert (first.status, first.attempts) == ("accepted", 2)
    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", flat=True)) == {"accepted"}


def test_a_provider_reason_postgresql_cannot_store_is_recorded_and_the_batch_written_back(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    """A provider's answer is outside input: a NUL or a lone surrogate in its reason (JSON escapes
    that PostgreSQL refuses in text) must not fail the write-back of the whole batch, which would
    leave the accepted rows ``unknown``. The text is kept with U+FFFD in their place."""
    from accounts.models import AuditEvent

    content = PushContentFactory(app=pushsim_app)
    refused, dead, fine = ProfileFactory(), ProfileFactory(), ProfileFactory()
    hostile = "Bad\x00Topic\ud800"
    devices = {p.pk: DeviceFactory(profile=p, app=pushsim_app, platform="ios") for p in (refused, dead, fine)}
    pushsim.state.fail_token(token=devices[refused.pk].token, failures=[(400, hostile)])
    pushsim.state.fail_token(token=devices[dead.pk].token, failures=[(410, hostile)])

    dispatch = send(content, [refused, dead, fine], django_capture_on_commit_callbacks)

    made = rows(dispatch)
    assert (made[refused.pk].status, made[refused.pk].reason) == ("failed", "Bad\ufffdTopic\ufffd")
    assert (made[dead.pk].status, made[dead.pk].reason) == ("failed", "Bad\ufffdTopic\ufffd")
    assert made[fine.pk].status == "accepted" and made[fine.pk].provider_message_id
    device = Device.objects.get(pk=devices[dead.pk].pk)
    assert not device.active and device.invalidated_reason == "Bad\ufffdTopic\ufffd"
    assert dispatch.status == "done" and (dispatch.accepted, dispatch.failed, dispatch.unknown) == (1, 2, 0)

    # Refused credentials carry the provider's words onto every queued row and into the audit.
    other = ProfileFactory()
    phone = DeviceFactory(profile=other, app=pushsim_app, platform="ios")
    pushsim.state.fail_token(token=phone.token, failures=[(403, "Key\x00Revoked")])
    dispatch = send(content, [other], django_capture_on_commit_callbacks)
    assert rows(dispatch)[other.pk].reason == "credentials: Key\ufffdRevoked"
    refusal = AuditEvent.objects.get(action="dispatch_credentials_refused", object_id=str(dispatch.pk))
    assert refusal.summary["reason"] == "Key\ufffdRevoked"


class _Clock:
    """``time`` for the send loop, whose every sleep calls ``on_sleep(seconds)`` first."""

    def __init__(self, on_sleep):
        self.on_sleep = on_sleep
        self.monotonic = time.monotonic

    def sleep(self, seconds):
        self.on_sleep(seconds)
        time.sleep(seconds)


def test_a_sender_waiting_for_the_next_retry_reads_no_row_until_it_is_due(
    pushsim_app, pushsim, open_gate, monkeypatch, django_capture_on_commit_callbacks
):
    """While every queued row waits for its retry (a provider's outage), the sender looks only at
    its dispatch, for a stop, until the earliest is due: no claim, no row read (there may be a
    million), then it sends them all."""
    monkeypatch.setattr(sending, "_IDLE_CHECK_SECONDS", 0.05)
    dispatch = _prepared_android(pushsim_app, 30, django_capture_on_commit_callbacks)
    Delivery.objects.filter(dispatch=dispatch).update(next_attempt_at=timezone.now() + dt.timedelta(seconds=2))
    read_at_each_sleep = []
    monkeypatch.setattr(
        sending, "time", _Clock(lambda seconds: read_at_each_sleep.append(rows_read("delivery_delivery")))
    )

    report = dispatch_send(dispatch_id=dispatch.pk, time_budget=30)

    assert report.outcomes["accepted"] == 30
    # Up to two seconds of waiting, looked at every 0.05 s and its queries: about forty times on a
    # quiet machine, fewer on a loaded one, and never one sleep until the retry is due.
    assert len(read_at_each_sleep) >= 3, read_at_each_sleep
    assert len(set(read_at_each_sleep)) == 1, read_at_each_sleep  # and not a row read meanwhile


def test_a_sender_waiting_for_the_next_retry_ends_when_its_dispatch_is_stopped(
    pushsim_app, pushsim, open_gate, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(sending, "_IDLE_CHECK_SECONDS", 0.05)
    dispatch = _prepared_android(pushsim_app, 2, django_capture_on_commit_callbacks)
    Delivery.objects.filter(dispatch=dispatch).update(next_attempt_at=timezone.now() + dt.timedelta(minutes=10))
    sleeps = []

    def stop_on_the_third(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 3:
            Dispatch.objects.filter(pk=dispatch.pk).update(status=Dispatch.Status.STOPPED)

    monkeypatch.setattr(sending, "time", _Clock(stop_on_the_third))
    started = time.monotonic()

    report = dispatch_send(dispatch_id=dispatch.pk, time_budget=1200)

    assert len(sleeps) == 3 and time.monotonic() - started < 5
    assert report.claimed == 0
    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "attempts")) == {("queued", 0)}


def test_a_dispatch_of_an_app_whose_credentials_cannot_be_decrypted_claims_nothing_and_says_why(
    pushsim_app, pushsim, open_gate, settings, django_capture_on_commit_callbacks
):
    """A database restored under another PUSHDESK_ENCRYPTION_KEY: the dispatch is prepared, and its send
    stops before claiming a row, naming the app and each credential; once the key is right, it goes."""
    from cryptography.fernet import Fernet
    from django.core.exceptions import ImproperlyConfigured

    right = settings.PUSHDESK_ENCRYPTION_KEY
    content = PushContentFactory(app=pushsim_app)
    profiles = ProfileFactory.create_batch(2)
    platforms = ["ios", "android"]
    devices = [DeviceFactory(profile=p, app=pushsim_app, platform=o) for p, o in zip(profiles, platforms, strict=True)]
    settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[p.pk for p in profiles]
        )
        dispatch_prepare(dispatch_id=dispatch.pk)

    with pytest.raises(ImproperlyConfigured) as refused:
        dispatch_send(dispatch_id=dispatch.pk)
    app = f"app '{pushsim_app.name}' (id {pushsim_app.pk})"
    unreadable = (
        "cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY (a different key, or one dropped before rotating?)"
    )
    assert str(refused.value) == (
        f"Dispatch {dispatch.pk} is not sent: {app}: the APNs .p8 key {unreadable}; "
        f"{app}: the FCM service account {unreadable}. Its rows stay queued and are sent once "
        "PUSHDESK_ENCRYPTION_KEY holds the key they were stored under (manage.py status names them)."
    )
    assert list(Delivery.objects.filter(dispatch=dispatch).values_list("status", "attempts")) == [("queued", 0)] * 2
    assert Dispatch.objects.get(pk=dispatch.pk).status == Dispatch.Status.SENDING
    assert all(pushsim.state.count(d.token) == 0 for d in devices)

    settings.PUSHDESK_ENCRYPTION_KEY = right
    dispatch_send(dispatch_id=dispatch.pk)
    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", flat=True)) == {"accepted"}
    assert all(pushsim.state.count(d.token) == 1 for d in devices)


@pytest.mark.parametrize(
    ("simulator", "outcome"),
    [
        (True, ("accepted", "")),
        (False, ("failed", "image_on_this_machine (over http: for the push simulator's phones only)")),
    ],
)
def test_an_image_over_http_on_this_machine_fails_the_rows_of_an_app_no_longer_sending_to_the_simulator(
    pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks, simulator, outcome
):
    """Saved while the app sent to the push simulator, whose phones load an image over http on this
    machine; switched to Apple and Google since, whose phones cannot, the app's rows fail with the
    reason, as the content would be refused if saved now, and no phone gets it."""
    content = PushContentFactory(app=pushsim_app, image_url="http://127.0.0.1:8000/static/delivery/demo/flash-sale.jpg")
    profile = ProfileFactory()
    phones = [DeviceFactory(profile=profile, app=pushsim_app, platform=p) for p in ("ios", "android")]
    App.objects.filter(pk=pushsim_app.pk).update(uses_simulator=simulator)

    dispatch = send(content, [profile], django_capture_on_commit_callbacks)

    outcomes = {d.device.platform: (d.status, d.reason) for d in Delivery.objects.filter(dispatch=dispatch)}
    assert outcomes == {"ios": outcome, "android": outcome}
    received = sum(pushsim.state.count(phone.token) for phone in phones)
    assert received == (2 if simulator else 0)
    if not simulator:  # the reports say why, and count no such row as sent
        assert (
            reason_label(outcome[1])
            == "its image is over http on this machine, which only the push simulator's phones load"
        )
        assert not handed_over(outcome[1])


def test_the_watchdog_on_a_machine_whose_clock_runs_ahead_leaves_rows_in_flight_alone(
    pushsim_app, open_gate, monkeypatch, django_capture_on_commit_callbacks
):
    """Leases are stamped by the database's clock, and the watchdog is to judge them by it: the
    minute's watch (``dispatches_watch``) gave ``deliveries_expire_leases`` its own machine's time
    instead, so a machine whose clock ran an hour ahead ended ``unknown`` a row a live worker was
    sending. It judges them by the database's clock; a time given (a test's) is still used."""
    from delivery.services.dispatches import dispatches_watch

    content = PushContentFactory(app=pushsim_app)
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk, kind="api_trigger", spec=content.spec(), profile_ids=[profile.pk]
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    [row] = deliveries_claim(dispatch.pk, limit=1, now=timezone.now())

    ahead = timezone.now() + dt.timedelta(hours=1)
    with monkeypatch.context() as clock:
        clock.setattr(timezone, "now", lambda: ahead)  # this machine's clock
        dispatches_watch()
    assert Delivery.objects.values_list("status", flat=True).get(pk=row.id) == "sending"
    dispatches_watch(now=ahead)
    assert Delivery.objects.values_list("status", "reason").get(pk=row.id) == ("unknown", "lease_expired")
