"""Quiet hours are judged again when a row is claimed for sending, not only when its audience was
resolved: a throttled send resolved at 21:55 is still sending at 23:00. A row the quiet hours
reach on its way is held until they end (``queued`` / ``quiet_hours``), or skipped in discard mode,
as the resolve does; the claim stays one statement. So do the stream senders: a marketing stream's
row appended at 21:59 (or one that waited: a stopped sender, a backlog, a retry) is claimed in them."""

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.conf import Conf

from accounts.services import access_grant
from delivery.models import Delivery, DeliveryRules, Dispatch
from delivery.reports import dispatch_held
from delivery.rules import quiet_at_claim, quiet_until
from delivery.services.claims import deliveries_claim
from delivery.services.sending import dispatch_send
from delivery.services.stream_senders import streams_send
from delivery.services.streams import Recipient, stream_append, stream_open
from tests.delivery.test_pipeline import fast_retries  # noqa: F401 (a fixture used below)
from tests.delivery.test_sending_expiry import prepared
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("open_gate")]


def _quiet_from_now_on(app, zone: str, *, mode: str = "delay", default_timezone: str = "UTC") -> DeliveryRules:
    """Quiet hours that started a minute ago in ``zone`` and last two hours: set after the resolve."""
    local = timezone.now().astimezone(ZoneInfo(zone))
    return DeliveryRules.objects.create(
        app=app,
        quiet_start=(local - timedelta(minutes=1)).time().replace(second=0, microsecond=0),
        quiet_end=(local + timedelta(hours=2)).time().replace(second=0, microsecond=0),
        quiet_mode=mode,
        default_timezone=default_timezone,
    )


def _until(rules: DeliveryRules, zone: str):
    local = timezone.now().astimezone(ZoneInfo(zone))
    return quiet_until(start=rules.quiet_start, end=rules.quiet_end, local=local).astimezone(ZoneInfo("UTC"))


def test_a_send_resolved_before_the_quiet_hours_holds_the_rows_they_reach_when_it_claims_them(
    pushsim_app, pushsim, django_capture_on_commit_callbacks, monkeypatch
):
    monkeypatch.setattr(Conf, "SYNC", False)  # the held row's next send is scheduled, not awaited here
    content = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    paris, tokyo = ProfileFactory(timezone="Europe/Paris"), ProfileFactory(timezone="Asia/Tokyo")
    sleeping = DeviceFactory(profile=paris, app=pushsim_app, platform="android")
    awake = DeviceFactory(profile=tokyo, app=pushsim_app, platform="ios")
    dispatch = prepared(content, [paris, tokyo], django_capture_on_commit_callbacks, purpose="marketing")
    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "reason")) == {("queued", "")}
    rules = _quiet_from_now_on(pushsim_app, "Europe/Paris")  # the send is still going when they start

    dispatch_send(dispatch_id=dispatch.pk)

    held = Delivery.objects.get(dispatch=dispatch, profile_id=paris.pk)
    until = _until(rules, "Europe/Paris")
    assert (held.status, held.reason, held.attempts, held.lease_expires_at) == ("queued", "quiet_hours", 0, None)
    assert (held.next_attempt_at, held.expires_at) == (until, until + timedelta(seconds=3600))
    assert pushsim.state.count(sleeping.token) == 0
    assert Delivery.objects.get(dispatch=dispatch, profile_id=tokyo.pk).status == "accepted"
    assert pushsim.state.count(awake.token) == 1
    dispatch.refresh_from_db()
    assert (dispatch.status, dispatch.accepted, dispatch.skipped) == ("sending", 1, 0)
    assert dispatch.retries == {}  # a hold is no retry

    # They ended: the row goes, its TTL counted from their end.
    Delivery.objects.filter(pk=held.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    Delivery.objects.filter(pk=held.pk).update(expires_at=timezone.now() + timedelta(seconds=3600))
    DeliveryRules.objects.filter(pk=rules.pk).update(quiet_start=rules.quiet_end, quiet_end=rules.quiet_start)
    dispatch_send(dispatch_id=dispatch.pk)
    held.refresh_from_db()
    assert (held.status, held.reason, held.attempts) == ("accepted", "", 1)


def test_quiet_hours_that_discard_skip_the_rows_they_reach_and_transactional_sends_pass(
    pushsim_app, pushsim, django_capture_on_commit_callbacks
):
    content = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    profile = ProfileFactory(timezone="Europe/Paris")
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    marketing = prepared(content, [profile], django_capture_on_commit_callbacks, purpose="marketing")
    transactional = prepared(content, [profile], django_capture_on_commit_callbacks, purpose="transactional")
    _quiet_from_now_on(pushsim_app, "Europe/Paris", mode="discard")

    dispatch_send(dispatch_id=marketing.pk)
    dispatch_send(dispatch_id=transactional.pk)

    assert Delivery.objects.filter(dispatch=marketing).values_list("status", "reason").get() == (
        "skipped",
        "quiet_hours",
    )
    marketing.refresh_from_db()
    assert (marketing.status, marketing.skipped, marketing.by_platform) == ("done", 1, {"android": {"skipped": 1}})
    assert Delivery.objects.filter(dispatch=transactional).values_list("status", flat=True).get() == "accepted"
    assert pushsim.state.count(device.token) == 1


def test_a_now_or_never_push_the_quiet_hours_reach_is_skipped_as_expired_in_the_rules_zone_without_its_own(
    pushsim_app, pushsim, django_capture_on_commit_callbacks
):
    never = PushContentFactory(app=pushsim_app, ttl_seconds=0)
    zoneless, unknown_zone = ProfileFactory(timezone=""), ProfileFactory(timezone="Mars/Olympus_Mons")
    for profile in (zoneless, unknown_zone):
        DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    dispatch = prepared(never, [zoneless, unknown_zone], django_capture_on_commit_callbacks, purpose="marketing")
    _quiet_from_now_on(pushsim_app, "America/Chicago", default_timezone="America/Chicago")

    dispatch_send(dispatch_id=dispatch.pk)

    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", "reason", "attempts")) == {
        ("skipped", "expired", 1)
    }
    dispatch.refresh_from_db()
    assert (dispatch.status, dispatch.skipped) == ("done", 2)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="one statement on PostgreSQL")
def test_the_claim_judging_quiet_hours_is_one_statement(django_capture_on_commit_callbacks, django_assert_num_queries):
    app = AppFactory()
    content = PushContentFactory(app=app, ttl_seconds=600)
    variant = PushContentFactory(app=app, ttl_seconds=7200)
    asleep, awake = ProfileFactory(timezone="Europe/Paris"), ProfileFactory(timezone="Asia/Tokyo")
    for profile in (asleep, awake):
        DeviceFactory(profile=profile, app=app)
    dispatch = prepared(
        content,
        [asleep, awake],
        django_capture_on_commit_callbacks,
        purpose="marketing",
        source_id=1,
        variants=[{"number": 1, "label": "A", "content_id": variant.pk, "share": 100, "spec": variant.spec()}],
    )
    rules = _quiet_from_now_on(app, "Europe/Paris")
    quiet = quiet_at_claim(dispatch)

    with django_assert_num_queries(1):
        rows = deliveries_claim(dispatch.pk, limit=10, now=timezone.now(), quiet=quiet)

    assert [(r.profile_id, r.held) for r in rows] == sorted([(asleep.pk, True), (awake.pk, False)])
    held = Delivery.objects.get(dispatch=dispatch, profile_id=asleep.pk)
    until = _until(rules, "Europe/Paris")
    # The variant's TTL (two hours), from the end of the hold.
    assert (held.status, held.next_attempt_at, held.expires_at) == ("queued", until, until + timedelta(hours=2))


@pytest.mark.embedded
def test_the_embedded_claim_holds_the_rows_the_quiet_hours_reach(django_capture_on_commit_callbacks):
    app = AppFactory()
    content = PushContentFactory(app=app, ttl_seconds=600)
    asleep, awake = ProfileFactory(timezone="Europe/Paris"), ProfileFactory(timezone="Asia/Tokyo")
    for profile in (asleep, awake):
        DeviceFactory(profile=profile, app=app)
    dispatch = prepared(content, [asleep, awake], django_capture_on_commit_callbacks, purpose="marketing")
    rules = _quiet_from_now_on(app, "Europe/Paris")

    rows = deliveries_claim(dispatch.pk, limit=10, now=timezone.now(), quiet=quiet_at_claim(dispatch))

    assert sorted((r.profile_id, r.held) for r in rows) == sorted([(asleep.pk, True), (awake.pk, False)])
    held = Delivery.objects.get(dispatch=dispatch, profile_id=asleep.pk)
    until = _until(rules, "Europe/Paris")
    assert (held.status, held.reason, held.attempts, held.next_attempt_at, held.expires_at) == (
        "queued",
        "quiet_hours",
        0,
        until,
        until + timedelta(seconds=600),
    )
    assert Delivery.objects.get(dispatch=dispatch, profile_id=awake.pk).status == "sending"
    assert Dispatch.objects.get(pk=dispatch.pk).status == "sending"


def stream_of(content, *, purpose: str) -> Dispatch:
    """An API-triggered campaign's stream of ``content``, opened as a trigger opens it."""
    return Dispatch.objects.get(
        pk=stream_open(
            kind=Dispatch.Kind.API_TRIGGER,
            source_id=4242,
            version="v1",
            app_id=content.app_id,
            spec=content.spec(),
            content_id=content.pk,
            label="Cart reminders",
            purpose=purpose,
        )
    )


def append_to(stream, profiles) -> None:
    """A call's rows, appended before the app had quiet hours (none to judge then)."""
    stream_append(
        dispatch_id=stream.pk,
        kind=stream.kind,
        app_id=stream.app_id,
        recipients=[Recipient(p.pk) for p in profiles],
        source_lock=("SELECT id FROM delivery_app WHERE id = %s FOR SHARE", [stream.app_id]),
    )


@pytest.mark.embedded
def test_a_marketing_stream_row_appended_before_the_quiet_hours_is_held_when_claimed_in_them_and_sent_after(
    pushsim_app, pushsim
):
    content = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    paris, tokyo = ProfileFactory(timezone="Europe/Paris"), ProfileFactory(timezone="Asia/Tokyo")
    sleeping = DeviceFactory(profile=paris, app=pushsim_app, platform="android")
    awake = DeviceFactory(profile=tokyo, app=pushsim_app, platform="ios")
    stream = stream_of(content, purpose="marketing")
    append_to(stream, [paris, tokyo])
    assert set(Delivery.objects.filter(dispatch=stream).values_list("status", "reason")) == {("queued", "")}
    rules = _quiet_from_now_on(pushsim_app, "Europe/Paris")  # they started before a sender claimed the rows

    report = streams_send(budget=0, dispatch_ids=[stream.pk])

    held = Delivery.objects.get(dispatch=stream, profile_id=paris.pk)
    until = _until(rules, "Europe/Paris")
    assert (held.status, held.reason, held.attempts, held.lease_expires_at) == ("queued", "quiet_hours", 0, None)
    assert (held.next_attempt_at, held.expires_at) == (until, until + timedelta(seconds=3600))  # TTL from their end
    assert pushsim.state.count(sleeping.token) == 0
    assert Delivery.objects.get(dispatch=stream, profile_id=tokyo.pk).status == "accepted"
    assert pushsim.state.count(awake.token) == 1
    assert report.claimed == 1  # the row sent; the held one is not leased
    stream.refresh_from_db()
    assert (stream.status, stream.accepted, stream.skipped, stream.retries) == ("sending", 1, 0, {})
    assert dispatch_held(stream) == (1, until)  # the dispatch's page counts it apart, as a bulk send's

    streams_send(budget=0, dispatch_ids=[stream.pk])  # a sender claiming again leaves it until they end
    assert pushsim.state.count(sleeping.token) == 0

    # They ended: the next claim sends it.
    Delivery.objects.filter(pk=held.pk).update(next_attempt_at=timezone.now() - timedelta(seconds=1))
    DeliveryRules.objects.filter(pk=rules.pk).update(quiet_start=rules.quiet_end, quiet_end=rules.quiet_start)
    streams_send(budget=0, dispatch_ids=[stream.pk])
    held.refresh_from_db()
    assert (held.status, held.reason, held.attempts) == ("accepted", "", 1)
    assert pushsim.state.count(sleeping.token) == 1


@pytest.fixture
def paris_row(pushsim_app):
    """``make(ttl_seconds=, platform=, purpose=)``: a stream's one row (a marketing stream's unless
    told), for a profile in Paris with a phone of ``platform``, appended before the app had quiet
    hours; returns (stream, device)."""

    def make(*, ttl_seconds: int, platform: str, purpose: str = "marketing"):
        content = PushContentFactory(app=pushsim_app, ttl_seconds=ttl_seconds)
        profile = ProfileFactory(timezone="Europe/Paris")
        device = DeviceFactory(profile=profile, app=pushsim_app, platform=platform)
        stream = stream_of(content, purpose=purpose)
        append_to(stream, [profile])
        return stream, device

    return make


@pytest.mark.embedded
def test_quiet_hours_that_discard_skip_a_marketing_streams_rows_they_reach_when_claimed(
    pushsim_app, pushsim, paris_row
):
    stream, device = paris_row(ttl_seconds=3600, platform="android")
    _quiet_from_now_on(pushsim_app, "Europe/Paris", mode="discard")

    streams_send(budget=0, dispatch_ids=[stream.pk])

    assert Delivery.objects.filter(dispatch=stream).values_list("status", "reason").get() == ("skipped", "quiet_hours")
    assert pushsim.state.count(device.token) == 0
    stream.refresh_from_db()
    assert (stream.status, stream.skipped, stream.by_platform) == ("sending", 1, {"android": {"skipped": 1}})


@pytest.mark.embedded
def test_a_now_or_never_push_of_a_marketing_stream_the_quiet_hours_reach_is_skipped_as_expired(
    pushsim_app, pushsim, paris_row
):
    stream, device = paris_row(ttl_seconds=0, platform="ios")
    _quiet_from_now_on(pushsim_app, "Europe/Paris")

    streams_send(budget=0, dispatch_ids=[stream.pk])

    assert Delivery.objects.filter(dispatch=stream).values_list("status", "reason").get() == ("skipped", "expired")
    assert pushsim.state.count(device.token) == 0


def test_a_transactional_stream_sends_through_the_quiet_hours_with_the_claim_that_judges_none(
    pushsim_app, pushsim, paris_row
):
    stream, device = paris_row(ttl_seconds=3600, platform="android", purpose="transactional")
    _quiet_from_now_on(pushsim_app, "Europe/Paris")

    with CaptureQueriesContext(connection) as queries:
        streams_send(budget=0, dispatch_ids=[stream.pk])

    assert Delivery.objects.filter(dispatch=stream).values_list("status", "reason").get() == ("accepted", "")
    assert pushsim.state.count(device.token) == 1
    assert not [q for q in queries.captured_queries if "judged AS" in q["sql"]]  # the claim of before


@pytest.mark.skipif(connection.vendor != "postgresql", reason="one statement a claim on PostgreSQL")
@pytest.mark.parametrize("quiet", [False, True], ids=["no quiet hours", "quiet hours not now"])
def test_a_stream_sender_reads_the_quiet_hours_with_its_open_streams_not_at_each_claim(
    pushsim_app, pushsim, settings, django_assert_num_queries, quiet
):
    """Three rows claimed one at a time: the instance, the open streams, five claims (two find
    none), three write-backs; as many with quiet hours to judge (outside them now) as without."""
    settings.PUSHDESK_SEND_BATCH = 1
    content = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    profiles = [ProfileFactory(timezone="Europe/Paris") for _ in range(3)]
    for profile in profiles:
        DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    stream = stream_of(content, purpose="marketing")
    append_to(stream, profiles)
    if quiet:
        _quiet_from_now_on(pushsim_app, "Europe/Paris")
        DeliveryRules.objects.filter(app=pushsim_app).update(
            quiet_start=F("quiet_end"), quiet_end=F("quiet_start")
        )  # the hours left of the day: outside them now
    else:
        DeliveryRules.objects.create(app=pushsim_app, frequency_cap=5)  # rules, without quiet hours

    with django_assert_num_queries(10):
        report = streams_send(budget=0, dispatch_ids=[stream.pk])

    assert report.claimed == 3
    assert set(Delivery.objects.filter(dispatch=stream).values_list("status", flat=True)) == {"accepted"}


def test_a_held_rows_page_and_the_api_say_until_when_the_quiet_hours_held_it(
    pushsim_app,
    pushsim,
    django_capture_on_commit_callbacks,
    monkeypatch,
    client,
    admin_erin,
    api_key_for,
    manager_alice,
):
    monkeypatch.setattr(Conf, "SYNC", False)  # the held row's next send is scheduled, not awaited here
    content = PushContentFactory(app=pushsim_app, ttl_seconds=3600)
    paris = ProfileFactory(timezone="Europe/Paris")
    DeviceFactory(profile=paris, app=pushsim_app, platform="android")
    dispatch = prepared(content, [paris], django_capture_on_commit_callbacks, purpose="marketing")
    rules = _quiet_from_now_on(pushsim_app, "Europe/Paris")

    dispatch_send(dispatch_id=dispatch.pk)

    held = Delivery.objects.get(dispatch=dispatch)
    assert held.held_until == _until(rules, "Europe/Paris")
    client.force_login(admin_erin)
    page = client.get(f"/admin/delivery/delivery/{held.pk}/change/").content.decode()
    assert "Held by quiet hours until" in page
    assert f"{held.held_until:%Y-%m-%d %H:%M} (UTC)" in page
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    answer = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/deliveries/{held.pk}/").json()
    assert (answer["status"], answer["reason"]) == ("queued", "quiet_hours")
    assert answer["held_until"] == held.held_until.isoformat().replace("+00:00", "Z")
