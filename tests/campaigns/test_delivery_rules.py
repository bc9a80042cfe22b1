"""Delivery rules: the frequency cap and quiet hours hold back marketing pushes; transactional ones pass."""

import datetime as dt
import threading
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone
from django_q.conf import Conf

from delivery.models import Delivery, DeliveryRules, Dispatch
from delivery.rules import quiet_until
from delivery.services.dispatches import dispatch_prepare
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, PushContentFactory
from tests.locks import concurrently


@pytest.fixture
def app(db):
    return AppFactory(name="Shop")


def _dispatch(app, profiles, *, purpose="marketing", kind="api_trigger"):
    content = PushContentFactory(app=app)
    dispatch = Dispatch.objects.create(
        app=app, kind=kind, purpose=purpose, content_spec=content.spec(), profile_ids=[p.pk for p in profiles]
    )
    dispatch_prepare(dispatch_id=dispatch.pk)
    return {d.profile_id: d for d in Delivery.objects.filter(dispatch=dispatch)}


def _past_push(app, profile, *, hours_ago, devices=1, purpose="marketing"):
    dispatch = Dispatch.objects.create(app=app, kind="campaign", purpose=purpose, content_spec={}, status="done")
    for device in profile.devices.all()[:devices]:
        Delivery.objects.create(
            dispatch=dispatch,
            device=device,
            profile_id=profile.pk,
            status="accepted",
            finished_at=timezone.now() - dt.timedelta(hours=hours_ago),
        )


@pytest.mark.embedded  # the cap's SQL runs on SQLite too
def test_frequency_cap_skips_profiles_that_had_enough(app):
    DeliveryRules.objects.create(app=app, frequency_cap=1, frequency_window_hours=24)
    capped, fresh, long_ago = ProfileFactory.create_batch(3)
    for profile in (capped, fresh, long_ago):
        DeviceFactory(profile=profile, app=app)
    _past_push(app, capped, hours_ago=2)
    _past_push(app, long_ago, hours_ago=30)
    rows = _dispatch(app, [capped, fresh, long_ago])
    assert (rows[capped.pk].status, rows[capped.pk].reason) == ("skipped", "frequency_cap")
    assert rows[fresh.pk].status == rows[long_ago.pk].status == "queued"


@pytest.mark.embedded  # the cap's SQL runs on SQLite too
def test_a_push_to_several_phones_counts_once(app):
    DeliveryRules.objects.create(app=app, frequency_cap=2)
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=app, platform="ios")
    DeviceFactory(profile=profile, app=app, platform="android")
    _past_push(app, profile, hours_ago=1, devices=2)
    rows = Delivery.objects.filter(dispatch__in=Dispatch.objects.filter(purpose="marketing", kind="api_trigger"))
    _dispatch(app, [profile])
    assert set(rows.values_list("status", flat=True)) == {"queued"}


def test_transactional_pushes_ignore_the_cap_and_dont_count_toward_it(app):
    DeliveryRules.objects.create(app=app, frequency_cap=1)
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=app)
    _past_push(app, profile, hours_ago=1, purpose="transactional")
    assert _dispatch(app, [profile])[profile.pk].status == "queued"  # a transactional push does not count
    _past_push(app, profile, hours_ago=1)
    assert _dispatch(app, [profile], purpose="transactional")[profile.pk].status == "queued"


def test_test_sends_ignore_the_rules(app):
    DeliveryRules.objects.create(app=app, frequency_cap=1)
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=app, is_test=True)
    _past_push(app, profile, hours_ago=1)
    assert _dispatch(app, [], kind="test")[profile.pk].status == "queued"


@pytest.mark.embedded  # the cap's SQL runs on SQLite too
def test_a_row_stranded_in_a_stopped_dispatch_does_not_count_toward_the_cap(app):
    DeliveryRules.objects.create(app=app, frequency_cap=1, frequency_window_hours=24)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=app)
    stopped = Dispatch.objects.create(app=app, kind="campaign", purpose="marketing", content_spec={}, status="stopped")
    Delivery.objects.create(dispatch=stopped, device=device, profile_id=profile.pk, status="queued")
    assert _dispatch(app, [profile])[profile.pk].status == "queued"


@pytest.mark.embedded  # the cap's SQL runs on SQLite too
def test_a_push_still_on_its_way_counts_toward_the_cap(app):
    DeliveryRules.objects.create(app=app, frequency_cap=1, frequency_window_hours=24)
    profile = ProfileFactory()
    device = DeviceFactory(profile=profile, app=app)
    sending = Dispatch.objects.create(app=app, kind="campaign", purpose="marketing", content_spec={}, status="sending")
    Delivery.objects.create(dispatch=sending, device=device, profile_id=profile.pk, status="queued")
    row = _dispatch(app, [profile])[profile.pk]
    assert (row.status, row.reason) == ("skipped", "frequency_cap")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner settings")
def test_the_caps_planner_settings_end_with_its_statement(app):
    """The cap's count runs with hash joins and a count's memory (the new rows have no statistics);
    the rest of the resolve's transaction runs with the server's settings."""
    DeliveryRules.objects.create(app=app, frequency_cap=1, frequency_window_hours=24)
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=app)
    _past_push(app, profile, hours_ago=1)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('enable_nestloop'), current_setting('work_mem')")
        before = cursor.fetchone()

        assert _dispatch(app, [profile])[profile.pk].reason == "frequency_cap"

        cursor.execute("SELECT current_setting('enable_nestloop'), current_setting('work_mem')")
        assert cursor.fetchone() == before


@pytest.mark.django_db(transaction=True)
def test_two_dispatches_resolving_at_once_respect_a_cap_of_one(app, monkeypatch):
    """Both insert their rows, meet at a barrier, then apply the cap: only one may send."""
    from delivery.services.dispatches import rules_apply

    DeliveryRules.objects.create(app=app, frequency_cap=1, frequency_window_hours=24)
    profile = ProfileFactory()
    DeviceFactory(profile=profile, app=app)
    content = PushContentFactory(app=app)
    ids = [
        Dispatch.objects.create(
            app=app, kind="api_trigger", purpose="marketing", content_spec=content.spec(), profile_ids=[profile.pk]
        ).pk
        for _ in range(2)
    ]
    both_inserted = threading.Barrier(2, timeout=10)

    def rules_apply_after_the_other_inserted(**kwargs):
        both_inserted.wait()
        return rules_apply(**kwargs)

    monkeypatch.setattr("delivery.services.dispatches.rules_apply", rules_apply_after_the_other_inserted)
    monkeypatch.setattr(Conf, "SYNC", False)  # the send tasks go to the broker: nobody runs them here
    errors = concurrently(*(lambda pk=pk: dispatch_prepare(dispatch_id=pk) for pk in ids))
    assert not errors, errors
    statuses = sorted(Delivery.objects.filter(dispatch_id__in=ids).values_list("status", "reason"))
    assert statuses == [("queued", ""), ("skipped", "frequency_cap")]


def _window_around_now(zone: str, *, inside: bool):
    local = timezone.now().astimezone(ZoneInfo(zone))
    shift = dt.timedelta(hours=0 if inside else 3)
    start = (local - dt.timedelta(hours=1) + shift).time().replace(second=0, microsecond=0)
    end = (local + dt.timedelta(hours=1) + shift).time().replace(second=0, microsecond=0)
    return start, end


def test_quiet_hours_in_the_profiles_time_zone_discard(app):
    start, end = _window_around_now("Asia/Tokyo", inside=True)
    DeliveryRules.objects.create(app=app, quiet_start=start, quiet_end=end, quiet_mode="discard")
    sleeping = ProfileFactory(timezone="Asia/Tokyo")
    awake = ProfileFactory(timezone="America/New_York")  # 13–14 hours apart from Tokyo
    for profile in (sleeping, awake):
        DeviceFactory(profile=profile, app=app)
    rows = _dispatch(app, [sleeping, awake])
    assert (rows[sleeping.pk].status, rows[sleeping.pk].reason) == ("skipped", "quiet_hours")
    assert rows[awake.pk].status == "queued"


def test_quiet_hours_delay_until_they_end(app):
    start, end = _window_around_now("Europe/Paris", inside=True)
    DeliveryRules.objects.create(app=app, quiet_start=start, quiet_end=end, quiet_mode="delay")
    profile = ProfileFactory(timezone="Europe/Paris")
    DeviceFactory(profile=profile, app=app)
    row = _dispatch(app, [profile])[profile.pk]
    assert row.status == "queued"
    local_end = row.next_attempt_at.astimezone(ZoneInfo("Europe/Paris"))
    assert local_end.time() == end
    assert dt.timedelta(0) < row.next_attempt_at - timezone.now() <= dt.timedelta(hours=1, minutes=1)


def test_profiles_without_a_time_zone_use_the_apps_default(app):
    start, end = _window_around_now("Australia/Sydney", inside=True)
    DeliveryRules.objects.create(
        app=app, quiet_start=start, quiet_end=end, quiet_mode="discard", default_timezone="Australia/Sydney"
    )
    profile = ProfileFactory(timezone="")
    DeviceFactory(profile=profile, app=app)
    assert _dispatch(app, [profile])[profile.pk].reason == "quiet_hours"


def test_outside_quiet_hours_nothing_is_held(app):
    start, end = _window_around_now("UTC", inside=False)
    DeliveryRules.objects.create(app=app, quiet_start=start, quiet_end=end, quiet_mode="discard")
    profile = ProfileFactory(timezone="UTC")
    DeviceFactory(profile=profile, app=app)
    assert _dispatch(app, [profile])[profile.pk].status == "queued"


@pytest.mark.parametrize(
    ("now", "until"),
    [
        ("23:30", "2026-01-02 07:00"),  # overnight window, before midnight
        ("06:00", "2026-01-01 07:00"),  # overnight window, after midnight
        ("12:00", None),
    ],
)
def test_quiet_until_handles_windows_across_midnight(now, until):
    local = dt.datetime.fromisoformat(f"2026-01-01 {now}").replace(tzinfo=ZoneInfo("Europe/Paris"))
    end = quiet_until(start=dt.time(22), end=dt.time(7), local=local)
    assert (end.strftime("%Y-%m-%d %H:%M") if end else None) == until


@pytest.mark.parametrize(
    ("zone", "start", "end", "now_utc", "until_utc"),
    [
        # The clock goes back at 03:00 CEST to 02:00 CET: 02:10 and 02:20 are shown twice.
        ("Europe/Paris", "22:00", "02:30", "2027-10-31 00:10", "2027-10-31 00:30"),  # 02:10 CEST
        ("Europe/Paris", "22:00", "02:30", "2027-10-31 01:10", "2027-10-31 01:30"),  # 02:10 CET, again quiet
        ("Europe/Paris", "02:15", "02:45", "2027-10-31 01:20", "2027-10-31 01:45"),  # 02:20 CET
        ("America/New_York", "23:00", "01:30", "2027-11-07 06:10", "2027-11-07 06:30"),  # 01:10 EST
        # Spring forward: 02:30 does not exist; the quiet hours end when the clock jumps past it.
        ("Europe/Paris", "22:00", "02:30", "2027-03-28 00:50", "2027-03-28 01:30"),
    ],
)
def test_quiet_hours_ending_in_an_hour_the_clock_repeats_hold_until_the_clock_shows_their_end(
    zone, start, end, now_utc, until_utc
):
    now = dt.datetime.fromisoformat(now_utc).replace(tzinfo=dt.UTC)
    until = quiet_until(
        start=dt.time.fromisoformat(start), end=dt.time.fromisoformat(end), local=now.astimezone(ZoneInfo(zone))
    )
    assert until.astimezone(dt.UTC) == dt.datetime.fromisoformat(until_utc).replace(tzinfo=dt.UTC)
    assert until.astimezone(dt.UTC) > now


def test_only_administrators_change_delivery_rules(client, app, admin_erin, manager_alice):
    from accounts.services import access_grant

    access_grant(obj=app, to=manager_alice, by=None)
    form = {
        "app": app.pk,
        "frequency_cap": 3,
        "frequency_window_hours": 24,
        "quiet_mode": "delay",
        "default_timezone": "UTC",
    }
    client.force_login(manager_alice)
    assert client.post("/admin/delivery/deliveryrules/add/", form).status_code == 403
    client.force_login(admin_erin)
    assert client.post("/admin/delivery/deliveryrules/add/", form).status_code == 302
    assert DeliveryRules.objects.get(app=app).frequency_cap == 3


@pytest.mark.parametrize(
    ("typed", "field"),
    [
        ({"default_timezone": "Paris"}, "default_timezone"),
        ({"default_timezone": "GMT+2"}, "default_timezone"),
        ({"quiet_start": "22:00"}, "quiet_end"),
        ({"quiet_end": "07:00"}, "quiet_start"),
    ],
)
def test_quiet_hours_that_would_not_apply_as_meant_are_refused_naming_the_field(client, app, admin_erin, typed, field):
    form = {"app": app.pk, "frequency_window_hours": 24, "quiet_mode": "delay", "default_timezone": "UTC", **typed}
    client.force_login(admin_erin)
    answer = client.post("/admin/delivery/deliveryrules/add/", form)
    assert answer.status_code == 200
    page = answer.content.decode()
    assert "errorlist" in page[page.index(f"field-{field}") :][:600]
    assert not DeliveryRules.objects.filter(app=app).exists()


def _rollup(dispatch_id: int) -> dict:
    """The dispatch's rollup by (outcome, reason, platform), its shards summed."""
    from collections import Counter

    from delivery.models import DeliveryRollup

    counts = Counter()
    for row in DeliveryRollup.objects.filter(dispatch_id=dispatch_id):
        counts[(row.outcome, row.reason, row.platform)] += row.rows
    return {key: n for key, n in counts.items() if n}


def test_what_the_rules_skip_is_counted_on_the_dispatch_and_in_its_rollup(app):
    """The resolve counts its rows as it writes them; the cap and quiet hours then skip some, and
    the dispatch's figures and its rollup say so, as a count of the rows made again would."""
    from delivery.services.rollups import rollup_rebuild

    start, end = _window_around_now("Asia/Tokyo", inside=True)
    DeliveryRules.objects.create(app=app, frequency_cap=1, quiet_start=start, quiet_end=end, quiet_mode="discard")
    capped, sleeping, fresh = (ProfileFactory(timezone=zone) for zone in ("UTC", "Asia/Tokyo", "America/New_York"))
    phoneless = ProfileFactory()
    for profile in (capped, sleeping, fresh):
        DeviceFactory(profile=profile, app=app, platform="ios")
    _past_push(app, capped, hours_ago=2)
    rows = _dispatch(app, [capped, sleeping, fresh, phoneless])
    dispatch = Dispatch.objects.get(pk=rows[fresh.pk].dispatch_id)
    assert {p: (r.status, r.reason) for p, r in rows.items()} == {
        capped.pk: ("skipped", "frequency_cap"),
        sleeping.pk: ("skipped", "quiet_hours"),
        fresh.pk: ("queued", ""),
        phoneless.pk: ("skipped", "no_device"),
    }
    assert (dispatch.total, dispatch.skipped, dispatch.status) == (4, 3, "sending")
    made = _rollup(dispatch.pk)
    assert made == {
        ("targeted", "", "ios"): 3,
        ("targeted", "", "none"): 1,
        ("skipped", "frequency_cap", "ios"): 1,
        ("skipped", "quiet_hours", "ios"): 1,
        ("skipped", "no_device", "none"): 1,
    }
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    assert _rollup(dispatch.pk) == made


def test_a_push_held_for_quiet_hours_says_so_until_it_is_sent(app, pushsim_app, pushsim):
    """Held back, a row says why it waits, as a skipped one does (a delivery's page, the API);
    sent when the quiet hours end, it is accepted without it."""
    from delivery.services.sending import dispatch_send

    start, end = _window_around_now("Europe/Paris", inside=True)
    DeliveryRules.objects.create(app=pushsim_app, quiet_start=start, quiet_end=end, quiet_mode="delay")
    profile = ProfileFactory(timezone="Europe/Paris")
    DeviceFactory(profile=profile, app=pushsim_app, platform="android")
    row = _dispatch(pushsim_app, [profile])[profile.pk]
    assert (row.status, row.reason) == ("queued", "quiet_hours")

    # They ended (the send judges them again as it claims the row).
    Delivery.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now() - dt.timedelta(seconds=1))
    DeliveryRules.objects.filter(app=pushsim_app).update(quiet_start=end, quiet_end=start)
    dispatch_send(dispatch_id=row.dispatch_id)
    row.refresh_from_db()
    assert (row.status, row.reason) == ("accepted", "")


def test_quiet_hours_judge_a_local_time_send_without_a_profile_zone_at_the_moment_it_goes(app):
    """A profile without a time zone gets a local-time send at that time in the campaign's zone, and
    quiet hours in the rules' default zone: they are judged at that moment, read in their own zone."""
    now = timezone.now().replace(second=0, microsecond=0)
    goes_at = now + dt.timedelta(hours=2)  # 2 hours from now in Tokyo, the campaign's zone
    wall = goes_at.astimezone(ZoneInfo("Asia/Tokyo")).replace(tzinfo=None)
    # Quiet hours around that wall time read in UTC (11 hours from now), not around the moment it goes.
    misread = wall.replace(tzinfo=dt.UTC)
    start, end = (misread - dt.timedelta(hours=1)).time(), (misread + dt.timedelta(hours=1)).time()
    DeliveryRules.objects.create(app=app, quiet_start=start, quiet_end=end, quiet_mode="delay", default_timezone="UTC")
    profile = ProfileFactory(timezone="")
    DeviceFactory(profile=profile, app=app)
    content = PushContentFactory(app=app)
    dispatch = Dispatch.objects.create(
        app=app,
        kind="api_trigger",
        purpose="marketing",
        content_spec=content.spec(),
        profile_ids=[profile.pk],
        local_time=wall.isoformat(),
        local_default_timezone="Asia/Tokyo",
    )
    dispatch_prepare(dispatch_id=dispatch.pk)
    row = Delivery.objects.get(dispatch=dispatch)
    assert (row.status, row.reason, row.next_attempt_at) == ("queued", "", goes_at)
