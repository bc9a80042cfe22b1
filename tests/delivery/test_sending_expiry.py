"""The providers are told how long to keep a push: what remains of its TTL, counted once per delivery.

A delivery's expiry is its dispatch's start (or, for a row held by a rule or a local time, the
end of its hold) plus the content's TTL. Every attempt sends what remains of it: APNs gets that
instant as ``apns-expiration``, FCM the seconds left as ``android.ttl``. A TTL of 0 means "now or
never": ``apns-expiration: 0`` and ``ttl: "0s"``.
"""

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from delivery.models import Delivery, Dispatch
from delivery.services.dispatches import dispatch_create, dispatch_prepare
from delivery.services.sending import dispatch_send
from tests.delivery.test_pipeline import fast_retries, send  # noqa: F401 (a fixture used below)
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_gate", "fast_retries")]


def prepared(content, profiles, django_capture_on_commit_callbacks, **kwargs) -> Dispatch:
    """A dispatch resolved to its rows, its send not started."""
    with django_capture_on_commit_callbacks(execute=False):
        dispatch = dispatch_create(
            app_id=content.app_id,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=content.spec(),
            content_id=content.pk,
            profile_ids=[p.pk for p in profiles],
            **kwargs,
        )
        dispatch_prepare(dispatch_id=dispatch.pk)
    dispatch.refresh_from_db()
    return dispatch


def sent_expiry(pushsim, ios, android) -> tuple[int, int]:
    """(apns-expiration, FCM android.ttl seconds) of what each device received."""
    [apns] = pushsim.state.recent(token=ios.token)
    [fcm] = pushsim.state.recent(token=android.token)
    return int(apns["headers"]["apns-expiration"]), int(fcm["payload"]["android"]["ttl"].removesuffix("s"))


def test_a_retry_sends_what_remains_of_the_ttl_counted_from_the_dispatch_start(
    pushsim_app, pushsim, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    profile = ProfileFactory()
    ios = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    android = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    dispatch = prepared(content, [profile], django_capture_on_commit_callbacks)
    # The send started 20 minutes ago; both first attempts fail now and are retried.
    started = timezone.now() - timedelta(minutes=20)
    Dispatch.objects.filter(pk=dispatch.pk).update(started_at=started)
    pushsim.state.fail_token(token=ios.token, failures=[(500, "InternalServerError")])
    pushsim.state.fail_token(token=android.token, failures=[(500, "INTERNAL")])

    dispatch_send(dispatch_id=dispatch.pk)

    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "attempts")) == {("accepted", 2)}
    expiration, ttl = sent_expiry(pushsim, ios, android)
    assert expiration == int(started.timestamp()) + 3600
    assert 2390 <= ttl <= 2400  # 40 minutes left, not a fresh hour


def test_a_row_held_by_a_local_time_counts_its_ttl_from_the_end_of_its_hold(
    pushsim_app, pushsim, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app, ttl_seconds=1800)
    profile = ProfileFactory(timezone="UTC")
    ios = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    android = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    at = (timezone.now() + timedelta(hours=3)).replace(microsecond=0)
    local_time = at.astimezone(UTC).replace(tzinfo=None).isoformat()
    dispatch = prepared(content, [profile], django_capture_on_commit_callbacks, local_time=local_time)
    rows = Delivery.objects.filter(dispatch=dispatch)
    assert set(rows.values_list("next_attempt_at", "expires_at")) == {(at, at + timedelta(seconds=1800))}
    # Three hours and ten minutes later: the hold ended ten minutes ago, the dispatch started
    # (long past its own 30 minutes) before it.
    shift = timedelta(hours=3, minutes=10)
    Dispatch.objects.filter(pk=dispatch.pk).update(started_at=dispatch.started_at - shift)
    rows.update(next_attempt_at=at - shift, expires_at=at + timedelta(seconds=1800) - shift)
    hold_end = at - shift

    dispatch_send(dispatch_id=dispatch.pk)

    assert set(rows.values_list("status", flat=True)) == {"accepted"}
    expiration, ttl = sent_expiry(pushsim, ios, android)
    assert expiration == int(hold_end.timestamp()) + 1800
    assert 1190 <= ttl <= 1200  # 20 of its 30 minutes left


def test_a_row_whose_ttl_ran_out_before_its_turn_is_not_sent(pushsim_app, pushsim, django_capture_on_commit_callbacks):
    content = PushContentFactory(app=pushsim_app, ttl_seconds=600)
    profile = ProfileFactory()
    ios = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    dispatch = prepared(content, [profile], django_capture_on_commit_callbacks)
    Dispatch.objects.filter(pk=dispatch.pk).update(started_at=timezone.now() - timedelta(minutes=11))

    dispatch_send(dispatch_id=dispatch.pk)

    row = Delivery.objects.get(dispatch=dispatch)
    # Never sent, as a held now-or-never push is never sent: skipped / expired, the one code for both.
    assert (row.status, row.reason) == ("skipped", "expired")
    assert pushsim.state.count(ios.token) == 0
    dispatch.refresh_from_db()
    # Nothing reached the provider, nothing was refused by it: the send is done, its row skipped.
    assert (dispatch.status, dispatch.failed, dispatch.skipped, dispatch.error) == ("done", 0, 1, "")
    assert dispatch.by_platform == {"ios": {"skipped": 1}}


def test_ttl_0_is_sent_as_now_or_never(pushsim_app, pushsim, django_capture_on_commit_callbacks):
    content = PushContentFactory(app=pushsim_app, ttl_seconds=0)
    profile = ProfileFactory()
    ios = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    android = DeviceFactory(profile=profile, app=pushsim_app, platform="android")

    send(content, [profile], django_capture_on_commit_callbacks)

    assert sent_expiry(pushsim, ios, android) == (0, 0)
    [fcm] = pushsim.state.recent(token=android.token)
    assert fcm["payload"]["android"]["ttl"] == "0s"


def test_a_full_ttl_on_the_first_attempt(pushsim_app, pushsim, django_capture_on_commit_callbacks):
    content = PushContentFactory(app=pushsim_app, ttl_seconds=86400)
    profile = ProfileFactory()
    ios = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    android = DeviceFactory(profile=profile, app=pushsim_app, platform="android")

    dispatch = send(content, [profile], django_capture_on_commit_callbacks)

    expiration, ttl = sent_expiry(pushsim, ios, android)
    assert expiration == int(dispatch.started_at.timestamp()) + 86400
    assert 86390 <= ttl <= 86400
    assert datetime.fromtimestamp(expiration, tz=UTC) > timezone.now()


def _quiet_now(app, **fields):
    """Quiet hours (UTC) from an hour ago to an hour from now, pushes held until they end."""
    from delivery.models import DeliveryRules

    now = timezone.now()
    return DeliveryRules.objects.create(
        app=app,
        quiet_start=(now - timedelta(hours=1)).time().replace(second=0, microsecond=0),
        quiet_end=(now + timedelta(hours=1)).time().replace(second=0, microsecond=0),
        quiet_mode="delay",
        default_timezone="UTC",
        **fields,
    )


def test_a_now_or_never_push_held_for_quiet_hours_is_skipped_as_expired_and_never_sent(
    pushsim_app, pushsim, django_capture_on_commit_callbacks
):
    """A TTL of 0 is "now or never": held until the quiet hours end, hours after its moment, it
    would reach the phone long after it meant anything. Its row ends skipped / expired at once."""
    _quiet_now(pushsim_app)
    content = PushContentFactory(app=pushsim_app, ttl_seconds=0)
    later = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    profile = ProfileFactory(timezone="UTC")
    ios = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")

    dispatch = prepared(content, [profile], django_capture_on_commit_callbacks, purpose="marketing")
    kept = prepared(later, [profile], django_capture_on_commit_callbacks, purpose="marketing")

    row = Delivery.objects.get(dispatch=dispatch)
    assert (row.status, row.reason, row.next_attempt_at) == ("skipped", "expired", None)
    assert (dispatch.skipped, dispatch.total) == (1, 1)
    # A push with a TTL is still held, its TTL counted from the end of the quiet hours.
    assert Delivery.objects.filter(dispatch=kept).values_list("status", "reason").get() == ("queued", "quiet_hours")
    # The quiet hours are over: nothing of the now-or-never push goes out.
    Delivery.objects.filter(dispatch=dispatch).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    dispatch_send(dispatch_id=dispatch.pk)
    assert pushsim.state.count(ios.token) == 0
    dispatch.refresh_from_db()
    assert dispatch.status == "done"


def test_a_now_or_never_push_of_a_stream_held_for_quiet_hours_is_skipped_as_expired(pushsim_app, pushsim):
    from delivery.services.stream_senders import streams_send
    from delivery.services.streams import Recipient, stream_append
    from tests.factories import orders_stream

    rules = _quiet_now(pushsim_app)
    stream = orders_stream(PushContentFactory(app=pushsim_app, ttl_seconds=0), source_id=77)
    Dispatch.objects.filter(pk=stream.pk).update(purpose="marketing")
    profile = ProfileFactory(timezone="UTC")
    ios = DeviceFactory(profile=profile, app=pushsim_app, platform="ios")

    [appended] = stream_append(
        dispatch_id=stream.pk,
        kind=stream.kind,
        app_id=pushsim_app.pk,
        recipients=[Recipient(profile.pk)],
        source_lock=("SELECT id FROM delivery_app WHERE id = %s FOR SHARE", [pushsim_app.pk]),
        rules=rules,
    )

    assert (appended.status, appended.reason) == ("skipped", "expired")
    row = Delivery.objects.get(pk=appended.id)
    assert (row.status, row.reason, row.next_attempt_at, row.finished_at is not None) == (
        "skipped",
        "expired",
        None,
        True,
    )
    streams_send(budget=0, dispatch_ids=[stream.pk])
    assert pushsim.state.count(ios.token) == 0


def _one_variant(content) -> list[dict]:
    """Every profile in variant 1, which sends ``content``."""
    return [{"number": 1, "label": "A", "content_id": content.pk, "share": 100, "spec": content.spec()}]


def test_a_variants_row_held_for_quiet_hours_counts_its_own_ttl_from_their_end(
    pushsim_app, pushsim, django_capture_on_commit_callbacks
):
    """An A/B test's held row expires by its variant's TTL (a day), not the main content's (a minute)."""
    rules = _quiet_now(pushsim_app)
    main = PushContentFactory(app=pushsim_app, ttl_seconds=60)
    variant = PushContentFactory(app=pushsim_app, ttl_seconds=86400)
    profile = ProfileFactory(timezone="UTC")
    android = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    dispatch = prepared(
        main,
        [profile],
        django_capture_on_commit_callbacks,
        purpose="marketing",
        source_id=1,
        variants=_one_variant(variant),
    )
    rows = Delivery.objects.filter(dispatch=dispatch)
    [(until, expires, number)] = rows.values_list("next_attempt_at", "expires_at", "variant")
    assert (number, expires) == (1, until + timedelta(seconds=86400))
    # The quiet hours ended ten minutes ago: the variant's day has not run out.
    shift = until - timezone.now() + timedelta(minutes=10)
    rows.update(next_attempt_at=until - shift, expires_at=expires - shift)
    rules.quiet_start, rules.quiet_end = rules.quiet_end, rules.quiet_start  # as the send judges them again
    rules.save()

    dispatch_send(dispatch_id=dispatch.pk)

    assert rows.values_list("status", flat=True).get() == "accepted"
    [fcm] = pushsim.state.recent(token=android.token)
    assert 86390 - 600 <= int(fcm["payload"]["android"]["ttl"].removesuffix("s")) <= 86400 - 600


def test_a_variants_row_held_by_a_local_time_counts_its_own_ttl(pushsim_app, django_capture_on_commit_callbacks):
    main = PushContentFactory(app=pushsim_app, ttl_seconds=60)
    variant = PushContentFactory(app=pushsim_app, ttl_seconds=7200)
    profile = ProfileFactory(timezone="UTC")
    DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    at = (timezone.now() + timedelta(hours=3)).replace(microsecond=0)
    dispatch = prepared(
        main,
        [profile],
        django_capture_on_commit_callbacks,
        source_id=1,
        variants=_one_variant(variant),
        local_time=at.astimezone(UTC).replace(tzinfo=None).isoformat(),
    )
    assert Delivery.objects.filter(dispatch=dispatch).values_list("next_attempt_at", "expires_at").get() == (
        at,
        at + timedelta(seconds=7200),
    )
