"""Standing dispatches: appending, the senders draining them, crashes, closing, the watchdog."""

import datetime as dt
import threading
import time

import pytest
from django.db import connection
from django.utils import timezone

from delivery.models import Delivery, DeliveryRules, Dispatch
from delivery.services.claims import deliveries_claim
from delivery.services.dispatches import deliveries_expire_leases, dispatch_complete_if_done, dispatches_watch
from delivery.services.sending import dispatch_send
from delivery.services.stream_senders import streams_send
from delivery.services.streams import (
    Recipient,
    StreamClosed,
    stream_append,
    stream_live_figures,
    stream_open,
    streams_close,
    streams_watch,
)
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory, orders_stream
from tests.locks import eventually

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stream_gates_open")]


def _source(app):
    """The app row stands for the stream's source (a campaign, a journey step) in these tests."""
    return ("SELECT id FROM delivery_app WHERE id = %s AND rate_limit_per_second > 0 FOR SHARE", [app.pk])


@pytest.fixture
def stream(pushsim_app):
    content = PushContentFactory(app=pushsim_app, title="Order {{ context.order | default: '?' }}", body="On its way")
    return orders_stream(content, source_id=12345)


def _people(app, n, **device):
    profiles = [ProfileFactory() for _ in range(n)]
    for profile in profiles:
        DeviceFactory(profile=profile, app=app, **device)
    return profiles


def _many_phones(app, n):
    """``n`` more profiles with a phone of ``app`` each, in two statements."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at) "
            "SELECT 'many-' || g, '{}', '', '', now(), now() FROM generate_series(1, %s) g",
            [n],
        )
        cursor.execute(
            "INSERT INTO delivery_device (profile_id, app_id, platform, token, active, push_enabled, is_test, "
            "invalidated_reason, last_registered_at, created_at) "
            "SELECT id, %s, 'android', 'many-' || id, true, true, false, '', now(), now() FROM audiences_profile "
            "WHERE external_id LIKE 'many-%%'",
            [app.pk],
        )


def _append(stream, profiles, context=None, **kwargs):
    return stream_append(
        dispatch_id=stream.pk,
        kind=stream.kind,
        app_id=stream.app_id,
        recipients=[Recipient(p.pk, context=context) for p in profiles],
        source_lock=_source(stream.app),
        **kwargs,
    )


def test_one_stream_is_open_per_source_version_and_day(pushsim_app, stream):
    again = stream_open(
        kind=Dispatch.Kind.API_TRIGGER,
        source_id=12345,
        version="v1",
        app_id=pushsim_app.pk,
        spec=stream.content_spec,
        content_id=None,
        label="Orders",
        purpose="transactional",
    )
    a_day_later = timezone.now() + dt.timedelta(days=1)
    tomorrow = stream_open(
        kind=Dispatch.Kind.API_TRIGGER,
        source_id=12345,
        version="v1",
        app_id=pushsim_app.pk,
        spec=stream.content_spec,
        content_id=None,
        label="Orders",
        purpose="transactional",
        now=a_day_later,
    )
    assert again == stream.pk and tomorrow != stream.pk
    assert stream.status == "sending" and stream.standing and stream.started_at is not None
    day = a_day_later.astimezone(dt.UTC).date()  # the day it was opened on, not one read again (past midnight)
    assert Dispatch.objects.get(pk=tomorrow).label == f"Orders · {day.isoformat()} (UTC)"  # its day named


def test_a_stream_of_content_deleted_since_it_was_approved_opens_and_sends_the_approved_copy(pushsim, pushsim_app):
    """A journey freezes its steps' contents when approved; the content itself may be deleted since.
    The step's stream opens without it (its reference emptied, as a deletion empties a dispatch's)
    and sends the frozen copy, where the insert failed on its foreign key and the engine run with it."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # as a commit checks them
    content = PushContentFactory(app=pushsim_app, title="Welcome", body="Aboard")
    spec, content_id = content.spec(), content.pk
    content.delete()
    opened = stream_open(
        kind=Dispatch.Kind.JOURNEY,
        source_id=777,
        version="push",
        app_id=pushsim_app.pk,
        spec=spec,
        content_id=content_id,
        label="Onboarding v1 · push",
        purpose="marketing",
    )
    stream = Dispatch.objects.get(pk=opened)
    assert (stream.content_id, stream.content_spec["title"]) == (None, "Welcome")
    (zoe,) = _people(pushsim_app, 1)
    _append(stream, [zoe])
    streams_send(budget=0)
    assert [r["title"] for r in pushsim.state.recent(token=zoe.devices.get().token)] == ["Welcome"]


def test_appended_rows_carry_their_calls_context_and_are_sent_by_a_sender(pushsim, pushsim_app, stream):
    zoe, max_ = _people(pushsim_app, 2)
    ProfileFactory(external_id="no-phone")
    first = _append(stream, [zoe], context={"order": "A-1"})
    second = _append(stream, [max_, zoe], context={"order": "B-2"})
    assert [r.status for r in first + second] == ["queued", "queued", "queued"]
    report = streams_send(budget=0)
    assert report.claimed == 3
    assert set(Delivery.objects.filter(dispatch=stream).values_list("status", flat=True)) == {"accepted"}
    titles = sorted(r["title"] for r in pushsim.state.recent(token=zoe.devices.get().token))
    assert titles == ["Order A-1", "Order B-2"]


def test_appends_run_from_the_connections_kept_plan_whatever_the_recipients_count(pushsim_app, stream):
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    people = _people(pushsim_app, 12)
    _many_phones(pushsim_app, 20000)
    with connection.cursor() as cursor:  # an app of many phones, as the planner sees it
        cursor.execute("ANALYZE delivery_device")
    for n in range(1, 13):  # one to twelve recipients a call, on one connection
        rows = _append(stream, people[:n])
        assert [r.profile_id for r in rows] == [p.pk for p in people[:n]]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE '%jsonb_array_elements%INSERT INTO delivery_delivery%'"
        )
        ((generic, custom),) = cursor.fetchall()
    # Planned afresh for the first five runs only: the kept plan is cheap enough to run every call.
    assert (generic, custom) == (7, 5)


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's statistics and kept plans")
def test_an_append_reads_its_recipients_phones_only_whatever_the_statistics_say(pushsim_app, stream):
    """A kept plan made while the statistics say the app has a few phones (the table never
    analyzed, or analyzed when it was small and autovacuum not yet round after a bulk
    registration) must still look each recipient's phones up by profile: it read every phone of
    the app on every call."""
    with connection.cursor() as cursor:  # the table as a new install has it (another test may have analyzed it)
        cursor.execute("TRUNCATE delivery_device CASCADE")
        cursor.execute("DELETE FROM pg_statistic WHERE starelid = 'delivery_device'::regclass")
    people = _people(pushsim_app, 3)
    _many_phones(pushsim_app, 3000)

    def phones_read() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_force_next_flush()")
        with connection.cursor() as cursor:  # its own transaction: the flush happened when idle
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT COALESCE(sum(idx_tup_read), 0) + COALESCE(sum(seq_tup_read), 0) FROM pg_stat_user_indexes i "
                "JOIN pg_stat_user_tables t USING (relid) WHERE t.relname = 'delivery_device'"
            )
            return cursor.fetchone()[0]

    for _ in range(7):  # past the fifth run, the connection runs the kept generic plan
        _append(stream, people[:1])
    before = phones_read()
    for _ in range(5):
        rows = _append(stream, people[:1])
        assert [r.device_id for r in rows] == [people[0].devices.get().pk]
    assert phones_read() - before <= 5 * 5  # each call: its recipient's phone (and the rollup's platform)


def test_profiles_without_a_phone_or_opted_out_get_a_skipped_row(pushsim_app, stream):
    lonely = ProfileFactory()
    (muted,) = _people(pushsim_app, 1, push_enabled=False)
    rows = _append(stream, [lonely, muted])
    assert [(r.status, r.reason) for r in rows] == [("skipped", "no_device"), ("skipped", "not_opted_in")]


def test_an_append_is_refused_when_the_source_or_the_stream_is_closed(pushsim_app, stream):
    (zoe,) = _people(pushsim_app, 1)
    with pytest.raises(StreamClosed) as refused:
        stream_append(
            dispatch_id=stream.pk,
            kind=stream.kind,
            app_id=pushsim_app.pk,
            recipients=[Recipient(zoe.pk)],
            source_lock=("SELECT id FROM delivery_app WHERE id = %s AND false FOR SHARE", [pushsim_app.pk]),
        )
    assert refused.value.what == "source"
    assert streams_close(kind=stream.kind, source_id=stream.source_id, by=None, reason="stopped") == 1
    with pytest.raises(StreamClosed) as closed:
        _append(stream, [zoe])
    assert closed.value.what == "dispatch"
    assert not Delivery.objects.exists()


def test_closing_a_stream_stops_its_queued_rows(pushsim_app, stream):
    _append(stream, _people(pushsim_app, 3))
    streams_close(kind=stream.kind, source_id=stream.source_id, by=None, reason="stopped")
    stream.refresh_from_db()
    assert stream.status == "stopped"
    assert set(Delivery.objects.values_list("status", "reason")) == {("skipped", "stopped")}


def test_quiet_hours_and_the_frequency_cap_apply_to_marketing_streams(pushsim_app, stream):
    now = timezone.now()
    rules = DeliveryRules.objects.create(
        app=pushsim_app,
        frequency_cap=1,
        quiet_start=(now - dt.timedelta(hours=1)).time(),
        quiet_end=(now + dt.timedelta(hours=1)).time(),
        default_timezone="UTC",
    )
    Dispatch.objects.filter(pk=stream.pk).update(purpose="marketing")
    zoe, max_ = _people(pushsim_app, 2)
    held = _append(stream, [zoe], rules=rules, now=now)
    assert (held[0].status, held[0].reason) == ("queued", "quiet_hours")  # it says why it waits
    row = Delivery.objects.get(pk=held[0].id)
    assert (row.reason, row.next_attempt_at is not None) == ("quiet_hours", True)  # until the quiet hours end
    capped = _append(stream, [zoe], rules=rules, now=now)  # one marketing push already on its way
    assert [(r.status, r.reason) for r in capped] == [("skipped", "frequency_cap")]
    rules.quiet_mode = DeliveryRules.QuietMode.DISCARD
    assert [(r.status, r.reason) for r in _append(stream, [max_], rules=rules, now=now)] == [("skipped", "quiet_hours")]


@pytest.mark.embedded  # the cap's SQL runs on SQLite too
def test_a_marketing_stream_counts_the_pushes_on_their_way_in_running_sends_of_the_app(pushsim_app, stream):
    """On their way: a row of a running bulk send, a row of another running stream; not a row of
    a stopped send, nor a push accepted before the window."""
    now = timezone.now()
    rules = DeliveryRules.objects.create(app=pushsim_app, frequency_cap=1, frequency_window_hours=24)
    Dispatch.objects.filter(pk=stream.pk).update(purpose="marketing")
    bulk_one, streamed_one, stopped_one, long_ago, fresh = profiles = _people(pushsim_app, 5)

    def send(status, *, standing=False, source=0):
        return Dispatch.objects.create(
            app=pushsim_app,
            kind="campaign",
            purpose="marketing",
            content_spec={},
            status=status,
            standing=standing,
            source_id=source,
        )

    bulk, other_stream, stopped, done = (
        send("sending"),
        send("sending", standing=True, source=7),
        send("stopped"),
        send("done"),
    )

    def row(dispatch, profile, status, **fields):
        Delivery.objects.create(
            dispatch=dispatch, device=profile.devices.get(), profile_id=profile.pk, status=status, **fields
        )

    row(bulk, bulk_one, "sending")
    row(other_stream, streamed_one, "queued", queued_at=now)
    row(stopped, stopped_one, "queued")
    row(done, long_ago, "accepted", finished_at=now - dt.timedelta(hours=25))

    appended = _append(stream, profiles, rules=rules, now=now)

    assert {r.profile_id: (r.status, r.reason) for r in appended} == {
        bulk_one.pk: ("skipped", "frequency_cap"),
        streamed_one.pk: ("skipped", "frequency_cap"),
        stopped_one.pk: ("queued", ""),
        long_ago.pk: ("queued", ""),
        fresh.pk: ("queued", ""),
    }


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's statistics")
def test_the_cap_of_a_call_reads_no_row_of_a_running_bulk_send_but_its_profiles_own(pushsim_app, stream):
    """A trigger's cap reads its own profiles' rows through an index, never by walking a running
    bulk send's rows (a million of them while a campaign sends)."""
    from tests.pg_statistics import rows_read

    rules = DeliveryRules.objects.create(app=pushsim_app, frequency_cap=1, frequency_window_hours=24)
    Dispatch.objects.filter(pk=stream.pk).update(purpose="marketing")
    bulk = Dispatch.objects.create(
        app=pushsim_app, kind="campaign", purpose="marketing", content_spec={}, status="sending"
    )
    Delivery.objects.bulk_create(
        Delivery(dispatch=bulk, device=d, profile_id=d.profile_id, status="queued")
        for d in DeviceFactory.create_batch(300, app=pushsim_app)
    )
    [caller] = _people(pushsim_app, 1)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE delivery_delivery")
        cursor.execute("SET LOCAL enable_seqscan = off")  # what an index path reads, whatever the table's size
    before = rows_read("delivery_delivery")

    [row] = _append(stream, [caller], rules=rules)

    assert row.status == "queued"
    assert rows_read("delivery_delivery") - before < 20


def test_a_sender_takes_one_row_when_one_waits_and_full_batches_under_load(pushsim, pushsim_app, stream, settings):
    settings.PUSHDESK_SEND_BATCH = 100
    _append(stream, _people(pushsim_app, 1))
    assert streams_send(budget=0).batches == 1
    _append(stream, _people(pushsim_app, 250))
    report = streams_send(budget=0)
    assert report.claimed == 250 and report.batches == 3  # 100 + 100 + 50


def test_rows_a_dead_sender_claimed_end_unknown_and_are_never_sent_again(pushsim, pushsim_app, stream, settings):
    people = _people(pushsim_app, 5)
    _append(stream, people)
    # A sender claims two rows (they are `sending` under its lease) and is killed before sending.
    dead = deliveries_claim(stream.pk, limit=2, now=timezone.now())
    assert len(dead) == 2
    report = streams_send(budget=0)  # a new sender: the three others
    assert report.claimed == 3
    expired = deliveries_expire_leases(
        now=timezone.now() + dt.timedelta(seconds=settings.PUSHDESK_SEND_LEASE_SECONDS + 1)
    )
    assert expired == 2
    assert streams_send(budget=0).claimed == 0
    statuses = dict(Delivery.objects.filter(dispatch=stream).values_list("id", "status"))
    assert sorted(statuses.values()) == ["accepted"] * 3 + ["unknown"] * 2
    assert all(statuses[row.id] == "unknown" for row in dead)
    received = pushsim.state.snapshot_counts()
    assert all(count == 1 for count in received.values()) and len(received) == 3
    stream.refresh_from_db()
    assert stream.status == "sending"  # a stream stays open while calls may come


def test_the_bulk_engine_leaves_streams_to_their_senders(pushsim_app, stream):
    _append(stream, _people(pushsim_app, 1))
    assert dispatch_send(dispatch_id=stream.pk).claimed == 0
    assert dispatch_complete_if_done(dispatch_id=stream.pk) is False
    Dispatch.objects.filter(pk=stream.pk).update(started_at=timezone.now() - dt.timedelta(hours=1))
    assert stream.pk not in dispatches_watch()


def test_the_watchdog_finishes_a_past_days_stream_once_drained(pushsim, pushsim_app, stream):
    _append(stream, _people(pushsim_app, 2))
    Dispatch.objects.filter(pk=stream.pk).update(stream_day=timezone.now().date() - dt.timedelta(days=1))
    assert streams_watch()["finished"] == 0  # rows still queued
    streams_send(budget=0)
    assert streams_watch()["finished"] == 1
    stream.refresh_from_db()
    assert stream.status == "done" and stream.accepted == 2 and stream.total == 2


def test_the_watchdog_refreshes_an_open_streams_counters(pushsim, pushsim_app, stream, monkeypatch):
    from delivery.services.streams import _CURRENT_CHECKS

    monkeypatch.setitem(_CURRENT_CHECKS, stream.kind, lambda source_id, version: version == "v1")
    _append(stream, _people(pushsim_app, 2))
    _append(stream, [ProfileFactory()])
    streams_send(budget=0)
    assert streams_watch()["refreshed"] == 1
    stream.refresh_from_db()
    assert (stream.status, stream.total, stream.accepted, stream.skipped) == ("sending", 3, 2, 1)


def test_live_figures_show_the_last_minutes_rate_and_latency(pushsim, pushsim_app, stream):
    _append(stream, _people(pushsim_app, 6))
    streams_send(budget=0)
    figures = stream_live_figures(stream)
    assert figures["rate_per_second"] == 0.1
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p99_ms"] < 60_000


def _held_by_quiet_hours_then_sent(app, stream, *, hours: int = 3) -> tuple[Delivery, list[Delivery]]:
    """A marketing stream's row sent at once, and three appended ``hours`` ago inside quiet hours that
    ended a few seconds ago (one held as it was appended, two by its sender's claim: the held are
    most of the rows, so each figure would show them), all sent now: (the prompt one, the held ones)."""
    from delivery.rules import quiet_at_claim

    now = timezone.now()
    then = now - dt.timedelta(hours=hours)
    rules = DeliveryRules.objects.create(
        app=app,
        quiet_start=(then - dt.timedelta(hours=1)).time(),
        quiet_end=(now - dt.timedelta(seconds=5)).time(),
        default_timezone="UTC",
    )
    Dispatch.objects.filter(pk=stream.pk).update(purpose="marketing")
    late, *claimed_late, prompt = _people(app, 4)
    [held] = _append(stream, [late], rules=rules, now=then)
    assert (held.status, held.reason) == ("queued", "quiet_hours")
    appended = _append(stream, claimed_late, now=then)  # appended without the rules, claimed then
    marketing = Dispatch.objects.get(pk=stream.pk)
    assert all(r.held for r in deliveries_claim(stream.pk, limit=10, now=then, quiet=quiet_at_claim(marketing)))
    assert {r.reason for r in Delivery.objects.filter(pk__in=[r.id for r in appended])} == {"quiet_hours"}
    _append(stream, [prompt])
    streams_send(budget=0)
    rows = {r.profile_id: r for r in Delivery.objects.filter(dispatch_id=stream.pk)}
    assert {r.status for r in rows.values()} == {"accepted"}
    waited = [rows[p.pk] for p in (late, *claimed_late)]
    assert all(r.finished_at - r.queued_at > dt.timedelta(hours=hours) for r in waited)
    return rows[prompt.pk], waited


@pytest.mark.embedded  # the hold and the figures have SQLite's ways too
def test_the_live_latency_leaves_out_rows_quiet_hours_held(pushsim, pushsim_app, stream, client, viewer_carol):
    """Hours held by quiet hours are the app's rules, not the system's speed: the page's p50/p99
    are the prompt row's alone, the rate counts them all, and the page says so."""
    from django.urls import reverse

    from accounts.services import access_grant

    prompt, _held = _held_by_quiet_hours_then_sent(pushsim_app, stream)
    figures = stream_live_figures(stream)
    alone = round((prompt.finished_at - prompt.queued_at).total_seconds() * 1000, 1)
    assert figures["latency_p50_ms"] == figures["latency_p99_ms"] == alone
    assert figures["accepted"] == 4
    access_grant(obj=pushsim_app, to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    html = client.get(reverse("admin:delivery_dispatch_change", args=[stream.pk])).content.decode()
    assert "(rows held by quiet hours are left out)" in html


@pytest.mark.embedded
def test_a_retried_rows_wait_stays_in_the_live_latency(pushsim, pushsim_app, stream):
    """A retry's wait (its next attempt set by a provider's 503) is the system's: it counts."""
    _append(stream, _people(pushsim_app, 1))
    pushsim.state.faults.rate_503 = 1.0
    streams_send(budget=0)
    row = Delivery.objects.get(dispatch_id=stream.pk)
    assert (row.status, row.next_attempt_at is not None) == ("queued", True)  # to be retried
    pushsim.state.faults.rate_503 = 0.0
    now = timezone.now()  # its backoff over, as if its trigger came 30 s ago
    Delivery.objects.filter(pk=row.pk).update(queued_at=now - dt.timedelta(seconds=30), next_attempt_at=now)
    streams_send(budget=0)
    figures = stream_live_figures(stream)
    assert figures["latency_p99_ms"] >= 30_000


@pytest.fixture
def woken_senders(settings, monkeypatch):
    """Senders woken through Redis as in production (no in-process sending), with no poll within a
    test's few seconds: only wake-ups make them claim."""
    if not settings.REDIS_URL:
        pytest.skip("senders are woken through Redis")
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)
    settings.PUSHDESK_STREAM_POLL_SECONDS = 10


def _sender_of(stream, monkeypatch):
    """A sender of ``stream`` alone in a thread, until ``finish()`` stops it (the way SIGTERM does,
    then a wake-up of another stream for it to look): ``finish``, its report (``report["value"]``
    once it ends) and the times of its claims (each taken as it starts)."""
    from delivery.services import claims as claims_module
    from delivery.services import stream_senders
    from delivery.services.stream_senders import streams_wake_now

    claims, report, stop = [], {}, threading.Event()
    claim = claims_module.deliveries_claim
    monkeypatch.setattr(
        claims_module, "deliveries_claim", lambda *a, **kw: claims.append(time.monotonic()) or claim(*a, **kw)
    )
    monkeypatch.setattr(stream_senders, "stop_requested", stop.is_set)

    def sender():
        try:
            report["value"] = streams_send(budget=60.0, dispatch_ids=[stream.pk])
        finally:
            connection.close()

    thread = threading.Thread(target=sender)
    thread.start()

    def finish():
        stop.set()
        streams_wake_now([stream.pk + 1000])
        thread.join(30)
        assert not thread.is_alive()

    return finish, report, claims


def _waiting_sender(stream, monkeypatch):
    """A sender of ``stream`` (as ``_sender_of``) once it waits for a wake-up: its first claim, at its
    start, is taken (a wake-up from then on is heard: it listens before it claims)."""
    finish, report, claims = _sender_of(stream, monkeypatch)
    assert eventually(lambda: claims, timeout=30)
    time.sleep(0.2)  # its first claim ends (a row appended meanwhile is claimed by a wake-up instead)
    return finish, report, claims


@pytest.mark.django_db(transaction=True)
def test_a_waiting_sender_is_woken_by_the_append_and_sends_before_its_poll(
    pushsim, pushsim_app, stream, woken_senders, monkeypatch
):
    from delivery.services.stream_senders import streams_wake

    (zoe,) = _people(pushsim_app, 1)
    finish, report, claims = _waiting_sender(stream, monkeypatch)
    started = time.monotonic()
    _append(stream, [zoe])  # autocommit: committed
    streams_wake(stream.pk)  # what a call does once its rows committed
    token = zoe.devices.get().token
    while pushsim.state.count(token) == 0 and time.monotonic() - started < 8:
        time.sleep(0.005)
    latency = time.monotonic() - started
    time.sleep(0.3)  # its write-back, and whatever the sender does next
    around_the_send = [at for at in claims if at >= started and at <= time.monotonic()]
    finish()
    assert pushsim.state.count(token) == 1
    assert latency < 5, latency  # woken (within milliseconds when unloaded), not by its poll (10 s)
    assert report["value"].claimed == 1
    assert len(around_the_send) == 1  # the wake-up's: none while the row sent, nor after its write-back


@pytest.mark.django_db(transaction=True)
def test_rows_that_come_while_a_batch_sends_go_together_in_the_next(
    pushsim, pushsim_app, stream, woken_senders, monkeypatch
):
    from delivery.services.stream_senders import streams_wake, streams_wake_flush

    pushsim.state.faults.latency_ms = 1500  # the provider holds each batch a while
    first, *rest = _people(pushsim_app, 6)
    finish, report, _ = _waiting_sender(stream, monkeypatch)
    _append(stream, [first])
    streams_wake(stream.pk)
    streams_wake_flush()
    token = first.devices.get().token
    assert eventually(lambda: pushsim.state.count(token) == 1)  # the first row is sending: the provider holds it
    for profile in rest:  # a steady flow, one row at a time, while the first batch is held
        _append(stream, [profile])
        streams_wake(stream.pk)
        time.sleep(0.01)
    assert eventually(lambda: sum(pushsim.state.snapshot_counts().values()) == 6, timeout=30)
    time.sleep(0.3)  # its write-back, and whatever the sender does next
    finish()
    assert report["value"].claimed == 6
    assert report["value"].batches == 2  # the five that came while the first sent went out together
    assert all(count == 1 for count in pushsim.state.snapshot_counts().values())


@pytest.mark.django_db(transaction=True)
def test_a_sender_of_one_stream_sleeps_through_other_streams_wake_ups(
    pushsim, pushsim_app, stream, woken_senders, monkeypatch
):
    """The wake-up channel is the instance's: another stream's message wakes a sender limited to its
    own streams, which goes back to waiting without claiming; its own stream's message still sends."""
    from delivery.services.stream_senders import streams_wake_now

    (zoe,) = _people(pushsim_app, 1)
    finish, report, claims = _waiting_sender(stream, monkeypatch)
    before = len(claims)
    for _ in range(5):
        streams_wake_now([stream.pk + 1000])  # another stream's
        time.sleep(0.05)
    time.sleep(0.2)
    assert len(claims) == before
    _append(stream, [zoe])
    streams_wake_now([stream.pk])
    token = zoe.devices.get().token
    assert eventually(lambda: pushsim.state.count(token) == 1, timeout=8)  # woken, not by its poll (10 s)
    time.sleep(0.3)  # its write-back
    finish()
    assert report["value"].claimed == 1


def test_a_streams_admin_page_shows_its_live_rate_and_latency(
    client, pushsim, pushsim_app, stream, viewer_carol, manager_mallory
):
    from django.urls import reverse

    from accounts.services import access_grant

    access_grant(obj=pushsim_app, to=viewer_carol, by=None)
    _append(stream, _people(pushsim_app, 3))
    page = reverse("admin:delivery_dispatch_change", args=[stream.pk])
    client.force_login(viewer_carol)
    quiet = client.get(page).content.decode()  # nothing sent yet: said so, not "trigger to accepted no push accepted"
    assert "Last minute: 0.0 accepted messages/s, no push accepted in it, so no time from trigger to accepted." in quiet
    streams_send(budget=0)
    html = client.get(page).content.decode()
    assert "Last minute: 0.1 accepted messages/s, trigger to accepted p50" in html
    # Its counters as they are now, not as the last minute's watch kept them.
    assert Dispatch.objects.get(pk=stream.pk).total == 0
    response = client.get(page)
    shown = response.context["original"]
    assert (shown.total, shown.accepted, shown.percent) == (3, 3, 100.0)
    assert "100.0% · 3 of 3" in response.content.decode()
    listing = client.get(reverse("admin:delivery_dispatch_changelist"))
    (listed,) = [d for d in listing.context["cl"].result_list if d.pk == stream.pk]
    assert (listed.total, listed.accepted) == (3, 3)
    client.force_login(manager_mallory)  # no access to this app
    assert client.get(page).status_code in (302, 404)


def _claimed_row(stream, app, platform="android"):
    (person,) = _people(app, 1, platform=platform)
    _append(stream, [person])
    (row,) = deliveries_claim(stream.pk, limit=10, now=timezone.now())
    return row


def test_a_write_back_is_one_statement_that_moves_the_streams_counters(pushsim_app, stream):
    if connection.vendor != "postgresql":
        pytest.skip("the portable path writes row by row")
    from django.test.utils import CaptureQueriesContext

    from delivery.services.claims import Result, deliveries_write_back

    rows = [_claimed_row(stream, pushsim_app) for _ in range(3)]
    now = timezone.now()
    # The outcomes travel as JSON text: what a provider says comes back exactly, whatever its
    # characters, and a retry's time keeps its microseconds whatever the zone it was made in.
    retry_at = (now + dt.timedelta(seconds=30, microseconds=1)).astimezone(dt.timezone(dt.timedelta(hours=-7)))
    reason = 'Bad "token" \\ ünïcödé, {x}'
    results = [
        Result(rows[0].id, "accepted", provider_id='p-1 "é"'),
        Result(rows[1].id, "failed", reason=reason),
        Result(rows[2].id, "queued", reason="Unavailable", next_attempt_at=retry_at),
    ]
    with CaptureQueriesContext(connection) as queries:
        written = deliveries_write_back(stream.pk, results, now=now, platforms={r.id: "android" for r in rows})
    assert len(queries) == 1
    stored = {d.pk: d for d in Delivery.objects.filter(pk__in=[r.id for r in rows])}
    assert stored[rows[0].id].provider_message_id == 'p-1 "é"'
    assert stored[rows[0].id].finished_at == now
    assert stored[rows[1].id].reason == reason
    assert (stored[rows[2].id].status, stored[rows[2].id].next_attempt_at) == ("queued", retry_at)
    assert stored[rows[2].id].finished_at is None
    assert written == {"accepted": 1, "failed": 1, "queued": 1}
    stream.refresh_from_db()
    assert (stream.accepted, stream.failed, stream.skipped, stream.unknown) == (1, 1, 0, 0)
    assert stream.by_platform == {"android": {"accepted": 1, "failed": 1}}
    assert stream.retries == {"Unavailable": 1}
    with connection.cursor() as cursor:  # the caller's transaction keeps its own commit setting
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
    again = deliveries_write_back(stream.pk, [Result(rows[0].id, "accepted")], now=now)
    assert not again  # only rows still sending are written, and nothing moves
    stream.refresh_from_db()
    assert stream.accepted == 1 and stream.retries == {"Unavailable": 1}


@pytest.mark.django_db(transaction=True)
def test_a_stop_waiting_for_a_write_back_stops_the_retry_it_requeued(pushsim_app, stream):
    """The write-back holds the dispatch row before it writes any delivery: a stop that comes while
    it runs waits for it, then finds the requeued row and stops it (it is never left queued)."""
    if connection.vendor != "postgresql":
        pytest.skip("SQLite's write lock serialises them")
    import psycopg

    from delivery.services.claims import Result, deliveries_write_back

    row = _claimed_row(stream, pushsim_app)
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    blocker = psycopg.connect(**params)  # holds the delivery row: the write-back waits there
    blocker.execute("SELECT 1 FROM delivery_delivery WHERE id = %s FOR UPDATE", [row.id])
    watcher = psycopg.connect(**params, autocommit=True)  # (a transaction would see one snapshot of the activity)

    def waiting(count: int) -> bool:
        found = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return found.fetchone()[0] >= count

    def in_a_thread(work):
        def run():
            try:
                work()
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def stop():
        from django.db import transaction

        with transaction.atomic():
            streams_close(kind=Dispatch.Kind.API_TRIGGER, source_id=12345, by=None, reason="stopped")

    retry = Result(row.id, "queued", reason="Unavailable", next_attempt_at=timezone.now() + dt.timedelta(seconds=30))
    try:
        writing = in_a_thread(lambda: deliveries_write_back(stream.pk, [retry], now=timezone.now()))
        assert eventually(lambda: waiting(1)), "the write-back should wait for the delivery row"
        stopping = in_a_thread(stop)
        eventually(lambda: waiting(2), timeout=2.0)  # the stop waits for the dispatch row (if it does not, it wins)
    finally:
        blocker.commit()
        blocker.close()
        watcher.close()
    writing.join(10)
    stopping.join(10)
    delivery = Delivery.objects.get(pk=row.id)
    assert (delivery.status, delivery.reason, delivery.next_attempt_at) == ("skipped", "stopped", None)
    assert Dispatch.objects.get(pk=stream.pk).status == "stopped"


def test_a_wake_up_reaches_the_senders_of_its_own_redis_database_only(settings):
    """Redis keeps a channel for the whole server: senders of another database of the same server
    (another deployment, another test process) are not woken by this one's calls."""
    if not settings.REDIS_URL:
        pytest.skip("senders are woken through Redis")
    from urllib.parse import urlsplit

    from delivery.services.stream_senders import _Listener, streams_wake_now

    own = settings.REDIS_URL
    parts = urlsplit(own)
    other = parts._replace(path=f"/{(int(parts.path.strip('/') or 0) + 1) % 16}").geturl()
    settings.REDIS_URL = other
    elsewhere = _Listener()
    settings.REDIS_URL = own
    here = _Listener()
    try:
        here.wait(0.2), elsewhere.wait(0.2)  # each reads its subscription's confirmation
        streams_wake_now([4242])
        assert here.wait(2.0) == {4242}
        # The other database may be another test process's, whose own wake-ups this one hears.
        assert 4242 not in elsewhere.wait(0.3)
    finally:
        here.close()
        elsewhere.close()


def test_a_streams_counters_read_through_the_api_are_current_and_set_for_good_when_stopped(
    pushsim, pushsim_app, stream, manager_alice, admin_erin, api_key_for
):
    """Calls append without touching the stream's row, whose counters the minute's watch keeps:
    the API sums an open stream's from its rollup (its percent went past 100), and a stop sets
    them for good (a stopped stream is no longer watched: they stayed as the last watch left them)."""
    from accounts.services import access_grant
    from delivery.services.dispatches import dispatch_stop

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    client = api_key_for(manager_alice, scopes=["read"])
    _append(stream, _people(pushsim_app, 3))
    streams_send(budget=0)
    _append(stream, _people(pushsim_app, 2))  # queued
    assert Dispatch.objects.get(pk=stream.pk).total == 0  # not watched yet
    shown = client.get(f"/api/v1/dispatches/{stream.pk}/").json()
    assert (shown["total"], shown["accepted"], shown["percent"]) == (5, 3, 60.0)
    (listed,) = [d for d in client.get("/api/v1/dispatches/").json()["results"] if d["id"] == stream.pk]
    assert (listed["total"], listed["accepted"]) == (5, 3)

    dispatch_stop(dispatch_id=stream.pk, by=admin_erin)
    stopped = Dispatch.objects.get(pk=stream.pk)
    assert (stopped.status, stopped.total, stopped.accepted, stopped.skipped) == ("stopped", 5, 3, 2)
    assert stopped.percent == 100.0
    assert client.get(f"/api/v1/dispatches/{stream.pk}/").json()["total"] == 5


def test_the_dispatches_app_filter_past_any_id_is_a_400_naming_it(manager_alice, api_key_for):
    answer = api_key_for(manager_alice, scopes=["read"]).get("/api/v1/dispatches/", {"app": str(2**63)})
    assert answer.status_code == 400 and answer.json()["errors"][0]["field"] == "app"


@pytest.fixture
def restored_copy(db):
    """A database restored from another instance and not claimed here yet."""
    from operations.models import Instance

    Instance.objects.filter(pk=1).update(name="production-eu")


def test_a_restored_copys_watchdog_leaves_inherited_streams_alone_and_starts_no_sender(
    pushsim_app, stream, restored_copy, monkeypatch
):
    import django_q.tasks
    from django.core.cache import cache
    from django_q.conf import Conf

    from delivery import tasks

    _append(stream, _people(pushsim_app, 1))
    Delivery.objects.filter(dispatch_id=stream.pk).update(status="accepted", finished_at=timezone.now())
    Dispatch.objects.filter(pk=stream.pk).update(stream_day=timezone.now().date() - dt.timedelta(days=1))
    monkeypatch.setattr(Conf, "SYNC", False)
    queued = []
    monkeypatch.setattr(django_q.tasks, "async_task", lambda func, *args, **kwargs: queued.append(func))
    cache.delete_many(["pushdesk:stream-sender:0", "pushdesk:stream-sender:0:starting"])

    tasks.dispatches_watch_task()
    assert tasks.streams_send_task(0) == {"claimed": 0, "batches": 0, "handed_over": False}

    assert queued == []  # no sender started, none handed over to
    stream.refresh_from_db()
    assert (stream.status, stream.total) == ("sending", 0)  # neither finished nor recounted


def test_a_restored_copys_sender_process_waits_quietly_until_claimed(transactional_db, monkeypatch, caplog):
    from delivery.services import stream_senders
    from operations import instance
    from operations.models import Instance

    Instance.objects.update_or_create(pk=1, defaults={"name": "production-eu", "claimed_at": timezone.now()})
    checks = []
    real_problem = instance.instance_problem
    monkeypatch.setattr(instance, "instance_problem", lambda: checks.append(1) or real_problem())
    until = time.monotonic() + 3.5
    monkeypatch.setattr(stream_senders, "stop_requested", lambda: time.monotonic() > until)

    stream_senders.streams_sender_run(slot=0)

    assert 2 <= len(checks) <= 4, len(checks)  # it backs off (1 s, 2 s, …): not thousands of checks a second
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1, lines  # the refusal, once
    assert "refused to send the open streams" in lines[0] and "production-eu" in lines[0]


class _Clock:
    """The clock of a sender left to run for half an hour: a sleep moves it on, at once."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def time(self) -> float:
        return time.time()


def test_a_restored_copys_sender_says_its_refusal_every_ten_minutes_and_again_at_once_after_a_claim(
    transactional_db, monkeypatch, settings
):
    """It checks again every minute once backed off, and says so once every ten minutes; the claim
    is said, and a copy restored over the claimed database is said at once, not ten minutes after
    the last line."""
    import logging

    from delivery.services import stream_senders
    from operations import instance
    from operations.models import Instance

    Instance.objects.update_or_create(pk=1, defaults={"name": "production-eu", "claimed_at": timezone.now()})
    clock = _Clock()
    monkeypatch.setattr(time, "monotonic", clock.monotonic)
    monkeypatch.setattr(stream_senders, "time", clock)
    monkeypatch.setattr(stream_senders, "stop_requested", lambda: clock.now > 1000.0 + 1400)
    checks, real_problem = [], instance.instance_problem

    def problem():
        checks.append(clock.now - 1000.0)
        if checks[-1] >= 1300:  # claimed here, then another copy restored over it
            claimed = len([at for at in checks if at >= 1300]) == 1
            Instance.objects.filter(pk=1).update(name=settings.PUSHDESK_INSTANCE if claimed else "production-eu")
        return real_problem()

    monkeypatch.setattr(instance, "instance_problem", problem)
    said = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: said.append((clock.now - 1000.0, record.getMessage()))
    stream_senders.log.addHandler(handler)
    try:
        stream_senders.streams_sender_run(slot=0)
    finally:
        stream_senders.log.removeHandler(handler)

    kinds = ["sending" if "is this instance's now" in line else line.split(":")[0] for _, line in said]
    assert kinds == ["stream sender 0 refused to send the open streams"] * 3 + ["sending"] + kinds[:1], said
    at = [seconds for seconds, _ in said]
    assert at[0] == 0
    assert 600 <= at[1] < 600 + 61 and 600 <= at[2] - at[1] < 600 + 61  # at the first check ten minutes on
    assert at[4] == at[3] >= 1300  # said again at once
    assert len([c for c in checks if 63 < c < 1300]) >= 18  # checked every minute meanwhile, said or not


def test_the_senders_leave_a_stream_whose_apps_credentials_cannot_be_decrypted_queued_and_send_the_others(
    pushsim, pushsim_app, stream, settings, apns_credentials, fcm_credentials, caplog
):
    """The old key dropped before the rotation ran: one app's stream waits (said once in the log) and
    the other apps' streams go on; its rows go once the key is back."""
    from cryptography.fernet import Fernet

    from delivery.services.apps import app_create, service_account_parse

    old = settings.PUSHDESK_ENCRYPTION_KEY
    waiting = _append(stream, _people(pushsim_app, 2))
    settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()
    other_app = app_create(
        name="Stored under the new key",
        by=None,
        rate_limit_per_second=100_000,
        uses_simulator=True,
        fcm_service_account=service_account_parse(raw=fcm_credentials.json_bytes_for(token_uri=pushsim.token_uri)),
    )
    other = orders_stream(PushContentFactory(app=other_app), source_id=678)
    _append(other, _people(other_app, 1, platform="android"))

    assert streams_send(budget=0).claimed == 1
    assert streams_send(budget=0).claimed == 0
    assert list(Delivery.objects.filter(dispatch=other).values_list("status", flat=True)) == ["accepted"]
    statuses = Delivery.objects.filter(dispatch=stream).values_list("status", "attempts")
    assert list(statuses) == [("queued", 0)] * len(waiting)
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said == [
        f"Dispatch {stream.pk} is not sent: app '{pushsim_app.name}' (id {pushsim_app.pk}): the APNs .p8 key "
        "cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY (a different key, or one dropped before rotating?); "
        f"app '{pushsim_app.name}' (id {pushsim_app.pk}): the FCM service account cannot be decrypted with this "
        "PUSHDESK_ENCRYPTION_KEY (a different key, or one dropped before rotating?). Its rows stay queued and are "
        "sent once PUSHDESK_ENCRYPTION_KEY holds the key they were stored under (manage.py status names them)."
    ]

    settings.PUSHDESK_ENCRYPTION_KEY = f"{settings.PUSHDESK_ENCRYPTION_KEY},{old}"
    assert streams_send(budget=0).claimed == 2
    assert set(Delivery.objects.filter(dispatch=stream).values_list("status", flat=True)) == {"accepted"}


def test_a_stream_whose_unreadable_credentials_change_is_said_again_at_once(
    pushsim_app, stream, settings, monkeypatch, caplog
):
    """The hourly line named what cannot be decrypted when it was first said: one credential saved
    again under the new key, the other still lost, waited up to an hour to be said as it now is."""
    from cryptography.fernet import Fernet

    from config import reporting
    from delivery.models import App
    from delivery.services import stream_senders

    clock = _Clock()
    monkeypatch.setattr(reporting, "time", clock)
    monkeypatch.setattr(stream_senders, "_UNREADABLE_SAID", reporting.SaidOnceEvery(3600))  # a fresh process's
    old = settings.PUSHDESK_ENCRYPTION_KEY
    new = Fernet.generate_key().decode()

    def said_at(seconds: float) -> list[str]:
        clock.now = 1000.0 + seconds
        caplog.clear()
        streams_send(budget=0)
        return [r.getMessage() for r in caplog.records if r.name == stream_senders.__name__]

    settings.PUSHDESK_ENCRYPTION_KEY = new
    (first,) = said_at(0)
    assert "the APNs .p8 key" in first and "the FCM service account" in first
    assert said_at(60) == []
    settings.PUSHDESK_ENCRYPTION_KEY = f"{new},{old}"  # the APNs key saved again, under the new key
    app = App.objects.get(pk=pushsim_app.pk)
    app.apns_private_key = app.apns_private_key
    app.save(update_fields=["apns_private_key"])
    settings.PUSHDESK_ENCRYPTION_KEY = new
    (now,) = said_at(120)
    assert "the APNs .p8 key" not in now and "the FCM service account" in now
    assert said_at(180) == []  # then once an hour again


def test_a_stream_whose_apps_credentials_cannot_be_decrypted_is_said_again_every_hour_and_at_once_after_a_mend(
    pushsim_app, stream, settings, monkeypatch, caplog
):
    """A sender runs for weeks: a stream that stays unsent is named again each hour (with the lines
    left out meanwhile), not once in the process's life; its key put back is said, and its key lost
    again is said at once."""
    from cryptography.fernet import Fernet

    from config import reporting
    from delivery.services import stream_senders

    clock = _Clock()
    monkeypatch.setattr(reporting, "time", clock)
    monkeypatch.setattr(stream_senders, "_UNREADABLE_SAID", reporting.SaidOnceEvery(3600))  # a fresh process's
    old = settings.PUSHDESK_ENCRYPTION_KEY
    new = Fernet.generate_key().decode()
    settings.PUSHDESK_ENCRYPTION_KEY = new

    def said_at(seconds: float) -> list[str]:
        clock.now = 1000.0 + seconds
        caplog.clear()
        streams_send(budget=0)
        return [r.getMessage() for r in caplog.records if r.name == stream_senders.__name__]

    not_sent = f"Dispatch {stream.pk} is not sent: app '{pushsim_app.name}' (id {pushsim_app.pk}): "
    first = said_at(0)
    assert len(first) == 1 and first[0].startswith(not_sent) and first[0].endswith("(manage.py status names them).")
    assert [said_at(seconds) for seconds in (2, 4, 1800, 3599)] == [[]] * 4
    again = said_at(3600)
    assert again == [first[0] + " (4 such lines left out since the last)"]
    assert said_at(3602) == []

    settings.PUSHDESK_ENCRYPTION_KEY = f"{new},{old}"
    assert said_at(3604) == [f"Dispatch {stream.pk} is sent again: its app's credentials can be decrypted"]
    assert said_at(3606) == []
    settings.PUSHDESK_ENCRYPTION_KEY = new
    assert said_at(3608) == first  # at once, not an hour after the last line
