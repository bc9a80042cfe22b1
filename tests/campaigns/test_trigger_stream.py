"""API triggers through the campaign's standing dispatch: its life, the per-process caches and
their invalidation, the query count, and the races of the trigger path (idempotency, stop)."""

import datetime as dt
import threading

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import access_grant, access_revoke, api_key_revoke
from campaigns.models import Campaign, TriggerRequest
from campaigns.services.lifecycle import campaign_stop, campaign_update
from delivery.models import Delivery, DeliveryRules, Dispatch
from delivery.services.contents import pushcontent_save
from tests.campaigns.helpers import revision_moving_to
from tests.factories import DeviceFactory, ProfileFactory


def _url(campaign):
    return f"/api/v1/campaigns/{campaign.pk}/trigger/"


def _trigger(client, campaign, *external_ids, **extra):
    body = {"recipients": [{"external_id": e} for e in external_ids]}
    return client.post(_url(campaign), body, format="json", **extra)


@pytest.fixture
def zoe(pushsim_app):
    profile = ProfileFactory(external_id="zoe", timezone="Europe/Paris")
    DeviceFactory(profile=profile, app=pushsim_app, platform="ios")
    return profile


# --- the stream's life ---------------------------------------------------------------------------


def test_triggers_append_to_one_standing_dispatch_and_answer_their_deliveries(
    live_trigger, trigger_client, zoe, pushsim, pushsim_app, django_capture_on_commit_callbacks
):
    max_ = ProfileFactory(external_id="max")
    DeviceFactory(profile=max_, app=pushsim_app, platform="android")
    with django_capture_on_commit_callbacks(execute=True):
        first = _trigger(trigger_client, live_trigger, "zoe")
    with django_capture_on_commit_callbacks(execute=True):
        second = _trigger(trigger_client, live_trigger, "max", "zoe")
    assert first.status_code == second.status_code == 202
    assert first.json()["dispatch"] == second.json()["dispatch"]
    stream = Dispatch.objects.get(pk=first.json()["dispatch"])
    assert stream.standing and stream.status == "sending" and stream.kind == "api_trigger"
    assert stream.stream_version == live_trigger.approved_fingerprint
    assert stream.stream_day == timezone.now().astimezone(dt.UTC).date()
    answered = [d["id"] for d in first.json()["deliveries"] + second.json()["deliveries"]]
    assert [d["external_id"] for d in second.json()["deliveries"]] == ["max", "zoe"]
    # Zoé was triggered twice: two pushes, one per call (a stream is not unique per device).
    assert sorted(Delivery.objects.filter(dispatch=stream).values_list("id", flat=True)) == sorted(answered)
    assert pushsim.state.count(zoe.devices.get().token) == 2
    looked_up = trigger_client.get(f"/api/v1/deliveries/{answered[0]}/")
    assert looked_up.status_code == 200
    assert looked_up.json()["status"] == "accepted" and looked_up.json()["external_id"] == "zoe"
    assert looked_up.json()["queued_at"] is not None


def test_delivery_lookup_is_limited_to_the_keys_access(
    live_trigger, trigger_client, zoe, api_key_for, manager_alice, manager_mallory
):
    delivery_id = _trigger(trigger_client, live_trigger, "zoe").json()["deliveries"][0]["id"]
    outsider = api_key_for(manager_mallory, scopes=["read"])
    assert outsider.get(f"/api/v1/deliveries/{delivery_id}/").status_code == 404
    no_scope = api_key_for(manager_alice, scopes=["ingest"])
    assert no_scope.get(f"/api/v1/deliveries/{delivery_id}/").status_code == 403
    assert trigger_client.get("/api/v1/deliveries/999999999/").status_code == 404


def test_stopping_the_campaign_closes_the_stream_and_later_triggers_are_refused(
    live_trigger, trigger_client, zoe, manager_alice
):
    queued = _trigger(trigger_client, live_trigger, "zoe").json()  # not sent: nothing ran the wake-up
    campaign_stop(campaign_id=live_trigger.pk, by=manager_alice)
    stream = Dispatch.objects.get(pk=queued["dispatch"])
    assert stream.status == "stopped"
    assert list(Delivery.objects.filter(dispatch=stream).values_list("status", "reason")) == [("skipped", "stopped")]
    again = _trigger(trigger_client, live_trigger, "zoe")
    assert again.status_code == 409 and again.json()["code"] == "campaign_not_live"
    assert Delivery.objects.count() == 1


def test_an_edit_is_a_revision_the_stream_keeps_sending_until_it_is_approved(
    live_trigger, trigger_client, zoe, manager_alice, approver_bob
):
    from campaigns.services.lifecycle import campaign_approve, campaign_submit

    stream_id = _trigger(trigger_client, live_trigger, "zoe").json()["dispatch"]
    campaign_update(campaign_id=live_trigger.pk, by=manager_alice, throttle_per_second=5)
    assert Campaign.objects.get(pk=live_trigger.pk).status == "live"  # a pending revision, still on the air
    assert Dispatch.objects.get(pk=stream_id).status == "sending"
    again = _trigger(trigger_client, live_trigger, "zoe")
    assert again.status_code == 202 and again.json()["dispatch"] == stream_id  # the approved version sends

    campaign_submit(campaign_id=live_trigger.pk, by=manager_alice)
    campaign_approve(campaign_id=live_trigger.pk, by=approver_bob)
    revised = _trigger(trigger_client, live_trigger, "zoe")
    assert revised.status_code == 202
    assert revised.json()["dispatch"] != stream_id  # one stream per approved version


def test_a_stream_closed_by_hand_is_followed_by_a_new_one(live_trigger, trigger_client, zoe, manager_alice):
    from delivery.services.dispatches import dispatch_stop

    first = _trigger(trigger_client, live_trigger, "zoe").json()["dispatch"]
    dispatch_stop(dispatch_id=first, by=manager_alice)
    second = _trigger(trigger_client, live_trigger, "zoe")
    assert second.status_code == 202
    assert second.json()["dispatch"] != first
    assert Dispatch.objects.get(pk=second.json()["dispatch"]).status == "sending"


def test_a_renamed_campaigns_new_stream_gives_its_content_the_name_it_was_approved_with(
    live_trigger, trigger_client, zoe, manager_alice
):
    """Its content may show ``context.campaign.name``; a rename is no revision, so the streams its
    approved version opens after it (a stream stopped by hand, the next day's) send the approved name."""
    from delivery.services.dispatches import dispatch_stop

    first = _trigger(trigger_client, live_trigger, "zoe").json()["dispatch"]
    campaign_update(campaign_id=live_trigger.pk, by=manager_alice, name="Everything free, today only")
    dispatch_stop(dispatch_id=first, by=manager_alice)
    second = _trigger(trigger_client, live_trigger, "zoe").json()["dispatch"]
    assert second != first
    assert Dispatch.objects.get(pk=second).context == {"campaign": {"id": live_trigger.pk, "name": "Order shipped"}}


# --- caches and their invalidation ------------------------------------------------------------------


def test_a_revoked_key_is_refused_at_once(live_trigger, trigger_client, zoe, manager_alice):
    assert _trigger(trigger_client, live_trigger, "zoe").status_code == 202  # key cached
    api_key_revoke(key_id=manager_alice.api_keys.get().pk, by=manager_alice)
    refused = _trigger(trigger_client, live_trigger, "zoe")
    assert refused.status_code == 401 and refused.json()["code"] == "api_key_revoked"


def test_removing_the_grant_on_the_app_hides_the_campaign_at_once(live_trigger, trigger_client, zoe, manager_alice):
    assert _trigger(trigger_client, live_trigger, "zoe").status_code == 202
    access_revoke(obj=live_trigger.app, to=manager_alice, by=None)
    # Its creator keeps a grant on the campaign itself: take that one too.
    access_revoke(obj=live_trigger, to=manager_alice, by=None)
    assert _trigger(trigger_client, live_trigger, "zoe").status_code == 404


def test_removing_the_role_refuses_at_once(live_trigger, trigger_client, zoe, manager_alice):
    assert _trigger(trigger_client, live_trigger, "zoe").status_code == 202
    manager_alice.groups.remove(Group.objects.get(name="Manager"))
    refused = _trigger(trigger_client, live_trigger, "zoe")  # on the API's own route
    assert refused.status_code == 401 and refused.json()["code"] == "account_role"


def test_disabling_the_user_refuses_at_once(live_trigger, trigger_client, zoe, manager_alice):
    assert _trigger(trigger_client, live_trigger, "zoe").status_code == 202
    manager_alice.is_active = False
    manager_alice.save()
    refused = _trigger(trigger_client, live_trigger, "zoe")
    assert refused.status_code == 401 and refused.json()["code"] == "account_disabled"


def test_editing_the_live_campaigns_content_sends_the_approved_content_until_the_revision_is_approved(
    live_trigger, trigger_client, zoe, manager_alice
):
    first = _trigger(trigger_client, live_trigger, "zoe")
    assert first.status_code == 202  # campaign cached
    approved_title = Dispatch.objects.get(pk=first.json()["dispatch"]).content_spec["title"]
    content = live_trigger.content
    content.title = "Something the approver never saw"
    pushcontent_save(content=content, by=manager_alice)
    again = _trigger(trigger_client, live_trigger, "zoe")
    assert again.status_code == 202
    stream = Dispatch.objects.get(pk=again.json()["dispatch"])
    assert stream.content_spec["title"] == approved_title != "Something the approver never saw"


def test_new_delivery_rules_reach_a_cached_marketing_campaign(
    live_trigger, trigger_client, zoe, pushsim_app, manager_alice, approver_bob, django_capture_on_commit_callbacks
):
    from campaigns.services.lifecycle import campaign_approve, campaign_submit

    campaign_update(campaign_id=live_trigger.pk, by=manager_alice, purpose="marketing")
    campaign_submit(campaign_id=live_trigger.pk, by=manager_alice)
    campaign_approve(campaign_id=live_trigger.pk, by=approver_bob)
    with django_capture_on_commit_callbacks(execute=True):
        assert _trigger(trigger_client, live_trigger, "zoe").json()["queued"] == 1
    DeliveryRules.objects.create(app=pushsim_app, frequency_cap=1, frequency_window_hours=24)
    capped = _trigger(trigger_client, live_trigger, "zoe").json()
    assert capped["queued"] == 0
    assert capped["deliveries"][0]["reason"] == "frequency_cap"


# --- the hot path -----------------------------------------------------------------------------------


class RedisTrips:
    """Counts what this process sends to Redis, each a round trip (a pipeline's commands go
    together), on whatever path: the client's commands and pipelines, or a connection used
    directly (the stamps' read). Each trip is named by its commands."""

    def __init__(self, monkeypatch):
        import re

        import redis.connection

        self.count = 0
        self.commands = []
        original = redis.connection.AbstractConnection.send_packed_command
        name = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")

        def send(connection, command, *args, **kwargs):
            packed = command if isinstance(command, bytes | str) else b"".join(command)
            packed = packed.encode() if isinstance(packed, str) else packed
            self.count += 1
            self.commands.append(" ".join(found.decode().upper() for found in name.findall(packed)))
            return original(connection, command, *args, **kwargs)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("idempotency", [False, True])
def test_a_trigger_costs_at_most_4_queries_and_one_redis_round_trip_before_its_rows(
    live_trigger, trigger_client, zoe, monkeypatch, settings, idempotency
):
    """Before the rows: one script (rate limit and stamps). After they commit: the senders' wake-up,
    published by a thread of the process (the answer does not wait for it)."""
    if not settings.REDIS_URL:
        pytest.skip("the one round trip is to Redis")
    from django_q.conf import Conf

    import delivery.services.stream_senders
    from delivery.services.stream_senders import streams_wake_flush

    monkeypatch.setattr(Conf, "SYNC", False)  # as in production: the senders run elsewhere
    headers = lambda n: {"HTTP_IDEMPOTENCY_KEY": f"order-{n}"} if idempotency else {}  # noqa: E731
    assert _trigger(trigger_client, live_trigger, "zoe", **headers(0)).status_code == 202  # warm the caches
    assert streams_wake_flush()
    release, publish = threading.Event(), delivery.services.stream_senders.streams_wake_now
    monkeypatch.setattr(
        delivery.services.stream_senders, "streams_wake_now", lambda ids: release.wait(10) and publish(ids)
    )
    trips = RedisTrips(monkeypatch)
    with CaptureQueriesContext(connection) as captured:
        response = _trigger(trigger_client, live_trigger, "zoe", **headers(1))
    assert response.status_code == 202
    queries = [q["sql"] for q in captured if q["sql"] not in ("BEGIN", "COMMIT")]
    assert len(queries) <= (4 if idempotency else 2), [q[:120] for q in queries]
    assert trips.commands == ["EVALSHA"]  # the answer did not wait for the wake-up, held back here
    release.set()
    assert streams_wake_flush()
    assert trips.count == 2 and trips.commands[-1] == "PUBLISH", trips.commands
    assert Delivery.objects.filter(dispatch_id=response.json()["dispatch"]).count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_connection_plans_the_hot_paths_statements_once_not_per_call(
    lookup_trigger, trigger_client, zoe, pushsim, django_capture_on_commit_callbacks
):
    """PostgreSQL keeps a plan for each prepared statement of a trigger and of its send once it priced
    it no worse than one made for the values at hand; a statement it planned again on every call
    (the profiles' ``= ANY``, when one recipient is looked up) paid its planning each time. (The
    content reads the profile through a filter, so each call looks its profile up first.)"""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's prepared statements")
    for _ in range(10):
        with django_capture_on_commit_callbacks(execute=True):  # the send runs here, on this connection
            assert _trigger(trigger_client, lookup_trigger, "zoe").status_code == 202
    assert pushsim.state.count(zoe.devices.get().token) == 10
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        statements = cursor.fetchall()
    hot = [(sql, generic, custom) for sql, generic, custom in statements if generic + custom >= 10]
    looked_up = [row for row in hot if "FROM audiences_profile p WHERE p.external_id" in row[0]]
    appended = [row for row in hot if "INSERT INTO delivery_delivery" in row[0]]
    assert looked_up and appended, [sql[:80] for sql, _, _ in statements]
    assert all(generic > 0 and custom <= 5 for _, generic, custom in hot), [
        (sql[:80], generic, custom) for sql, generic, custom in hot
    ]


# --- races ----------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_answer_stored_with_its_rows_is_replayed_even_after_the_request_died(
    live_trigger, trigger_client, zoe, monkeypatch
):
    """Issue 12, finding 2: the request fails right after its rows committed (here: in the wake-up),
    as a killed worker or a failed statement after the commit would leave it."""
    import delivery.services.stream_senders

    def die(dispatch_id):
        raise RuntimeError("the request dies here")

    monkeypatch.setattr(delivery.services.stream_senders, "streams_wake", die)
    with pytest.raises(RuntimeError):
        _trigger(trigger_client, live_trigger, "zoe", HTTP_IDEMPOTENCY_KEY="order-7")
    record = TriggerRequest.objects.get(idempotency_key="order-7")
    assert record.finished and record.dispatch_id is not None and record.response_status == 202
    # Six minutes later the client retries: the stored answer, and nothing appended again.
    TriggerRequest.objects.filter(pk=record.pk).update(created_at=timezone.now() - dt.timedelta(minutes=6))
    retry = _trigger(trigger_client, live_trigger, "zoe", HTTP_IDEMPOTENCY_KEY="order-7")
    assert retry.status_code == 202 and retry["Idempotent-Replayed"] == "true"
    assert retry.json() == record.response_body
    assert Delivery.objects.count() == 1


def test_a_request_that_fails_before_its_rows_frees_its_key(live_trigger, trigger_client, zoe, monkeypatch):
    import delivery.services.streams

    original = delivery.services.streams.stream_append

    def broken(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(delivery.services.streams, "stream_append", broken)
    with pytest.raises(RuntimeError):
        _trigger(trigger_client, live_trigger, "zoe", HTTP_IDEMPOTENCY_KEY="order-8")
    assert not TriggerRequest.objects.filter(idempotency_key="order-8").exists()
    monkeypatch.setattr(delivery.services.streams, "stream_append", original)
    assert _trigger(trigger_client, live_trigger, "zoe", HTTP_IDEMPOTENCY_KEY="order-8").status_code == 202


def _in_thread(target):
    """Run ``target`` on its own connection; returns (thread, outcome dict)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = target()
        except Exception as exc:  # noqa: BLE001 (reported to the test)
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.mark.django_db(transaction=True)
def test_a_stop_that_commits_between_the_checks_and_the_append_refuses_the_trigger(
    live_trigger, trigger_client, zoe, manager_alice, monkeypatch
):
    """Issue 12, finding 5: the trigger passed its (cached) checks; the stop commits; then it appends."""
    from django_q.conf import Conf

    import delivery.services.streams

    monkeypatch.setattr(Conf, "SYNC", False)  # the senders are elsewhere: nothing is sent in-process
    assert _trigger(trigger_client, live_trigger, "zoe").status_code == 202  # everything cached
    checked, go = threading.Event(), threading.Event()
    original = delivery.services.streams.stream_append

    def paused(**kwargs):
        checked.set()
        go.wait(10)
        return original(**kwargs)

    monkeypatch.setattr(delivery.services.streams, "stream_append", paused)
    thread, outcome = _in_thread(lambda: _trigger(trigger_client, live_trigger, "zoe"))
    assert checked.wait(10)
    campaign_stop(campaign_id=live_trigger.pk, by=manager_alice)
    go.set()
    thread.join(20)
    response = outcome["value"]
    assert response.status_code == 409 and response.json()["code"] == "campaign_not_live"
    assert Delivery.objects.count() == 1  # the first call's row, stopped
    assert not Delivery.objects.filter(status__in=("queued", "sending", "accepted")).exists()


@pytest.mark.django_db(transaction=True)
def test_a_stop_waits_for_a_trigger_appending_and_then_stops_its_rows(
    live_trigger, trigger_client, zoe, manager_alice, monkeypatch
):
    """Issue 12, finding 5: the trigger holds the campaign row shared; the stop waits, then stops its rows.

    With an Idempotency-Key the append shares a transaction with the stored answer, which stays open
    here; without one the append is a single statement (autocommit), its locks held just as long."""
    from django_q.conf import Conf

    import delivery.services.streams

    monkeypatch.setattr(Conf, "SYNC", False)
    appended, go = threading.Event(), threading.Event()
    original = delivery.services.streams.stream_append

    def paused(**kwargs):
        rows = original(**kwargs)
        appended.set()
        go.wait(10)  # rows written, transaction still open
        return rows

    monkeypatch.setattr(delivery.services.streams, "stream_append", paused)
    trigger, triggered = _in_thread(
        lambda: _trigger(trigger_client, live_trigger, "zoe", HTTP_IDEMPOTENCY_KEY="order-1")
    )
    assert appended.wait(20)
    stop, stopped = _in_thread(lambda: campaign_stop(campaign_id=live_trigger.pk, by=manager_alice))
    stop.join(1.0)
    assert stop.is_alive(), "the stop must wait for the trigger holding the campaign row"
    go.set()
    trigger.join(20)
    stop.join(20)
    assert triggered["value"].status_code == 202 and "error" not in stopped
    assert list(Delivery.objects.values_list("status", "reason")) == [("skipped", "stopped")]
    assert Dispatch.objects.get().status == "stopped"


@pytest.mark.django_db(transaction=True)
def test_a_trigger_queued_behind_a_stop_reads_the_stopped_stream_and_writes_nothing(
    live_trigger, trigger_client, zoe, manager_alice, pushsim_app, monkeypatch
):
    """The gate is an advisory lock the stop's update takes exclusively: a call whose statement
    began while the stop waited reads the campaign as it was (live), yet finds its stream closed
    once the stop committed, so it writes nothing and answers 409."""
    from django_q.conf import Conf

    import delivery.services.streams

    monkeypatch.setattr(Conf, "SYNC", False)
    DeviceFactory(profile=ProfileFactory(external_id="yann"), app=pushsim_app, platform="android")
    assert _trigger(trigger_client, live_trigger, "zoe").status_code == 202  # everything cached
    appended, go = threading.Event(), threading.Event()
    original = delivery.services.streams.stream_append
    calls = []

    def paused(**kwargs):
        calls.append(kwargs)
        rows = original(**kwargs)
        if len(calls) == 1:
            appended.set()
            go.wait(10)  # rows written, transaction (with its gate lock) still open
        return rows

    monkeypatch.setattr(delivery.services.streams, "stream_append", paused)
    first, first_outcome = _in_thread(
        lambda: _trigger(trigger_client, live_trigger, "zoe", HTTP_IDEMPOTENCY_KEY="order-1")
    )
    assert appended.wait(20)
    stop, stopped = _in_thread(lambda: campaign_stop(campaign_id=live_trigger.pk, by=manager_alice))
    stop.join(1.0)
    assert stop.is_alive(), "the stop waits for the call holding the gate"
    late, late_outcome = _in_thread(lambda: _trigger(trigger_client, live_trigger, "yann"))
    late.join(1.0)
    assert late.is_alive(), "a call after the stop began waits behind it"
    go.set()
    for thread in (first, stop, late):
        thread.join(20)
    assert first_outcome["value"].status_code == 202 and "error" not in stopped
    response = late_outcome["value"]
    assert response.status_code == 409 and response.json()["code"] == "campaign_not_live"
    assert len(calls) >= 2  # the late call did reach its append
    assert not Delivery.objects.filter(profile__external_id="yann").exists()
    assert not Delivery.objects.filter(status__in=("queued", "sending", "accepted")).exists()


def test_a_stream_opened_by_a_direct_call_with_other_content_is_refused_and_triggers_send_the_approved_one(
    live_trigger, trigger_client, zoe, pushsim, django_capture_on_commit_callbacks
):
    """Today's stream is opened by the first call that needs it, and every later call appends to
    it: a direct service call opening it first with content nobody approved (or another purpose, or
    another zone for the time it may show) is refused by the campaign's gate, so the triggers'
    recipients get the approved content."""
    from delivery.services.dispatches import GateClosed
    from delivery.services.streams import stream_open

    approved = live_trigger.approved()
    opened = {
        "kind": Dispatch.Kind.API_TRIGGER,
        "source_id": live_trigger.pk,
        "version": live_trigger.approved_fingerprint,
        "app_id": live_trigger.app_id,
        "content_id": approved.content_id,
        "label": "Order shipped: API triggers",
        "context": live_trigger.send_context(),
    }
    with pytest.raises(GateClosed, match="approved"):
        stream_open(**opened, spec={**approved.spec, "body": "Words nobody approved"}, purpose=approved.purpose)
    with pytest.raises(GateClosed, match="approved"):
        stream_open(**opened, spec=approved.spec, purpose="marketing")
    with pytest.raises(GateClosed, match="approved"):
        stream_open(**opened, spec=approved.spec, purpose=approved.purpose, time_zone="Pacific/Kiritimati")
    assert not Dispatch.objects.filter(standing=True).exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert _trigger(trigger_client, live_trigger, "zoe").status_code == 202
    (received,) = pushsim.state.recent(token=zoe.devices.get().token)
    assert "Hi there" in str(received) and "Words nobody approved" not in str(received)


def test_a_stream_opened_by_a_direct_call_with_another_context_is_refused_and_triggers_show_the_approved_name(
    pushsim_app, manager_alice, approver_bob, trigger_client, zoe, pushsim, django_capture_on_commit_callbacks
):
    """The stream's context is what every row's content reads ``context.campaign`` from (a call may
    not name it): a direct service call opening today's stream first with a name nobody approved is
    refused by the campaign's gate, as another content is, so the triggers' phones show the approved name."""
    from delivery.services.dispatches import GateClosed
    from delivery.services.streams import stream_open
    from tests.campaigns.conftest import _live_trigger

    campaign = _live_trigger(
        pushsim_app, manager_alice, approver_bob, title="{{ context.campaign.name }}", body="It is on its way"
    )
    approved = campaign.approved()
    with pytest.raises(GateClosed, match="context"):
        stream_open(
            kind=Dispatch.Kind.API_TRIGGER,
            source_id=campaign.pk,
            version=campaign.approved_fingerprint,
            app_id=campaign.app_id,
            content_id=approved.content_id,
            label="Order shipped: API triggers",
            spec=approved.spec,
            purpose=approved.purpose,
            context={"campaign": {"id": campaign.pk, "name": "Everything free, today only"}},
        )
    assert not Dispatch.objects.filter(standing=True).exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert _trigger(trigger_client, campaign, "zoe").status_code == 202
    (received,) = pushsim.state.recent(token=zoe.devices.get().token)
    assert received["title"] == "Order shipped"


def test_a_row_appended_by_a_direct_call_with_a_context_naming_the_campaign_shows_the_approved_name(
    pushsim_app, manager_alice, approver_bob, trigger_client, zoe, pushsim, django_capture_on_commit_callbacks
):
    """A call may not name ``context.campaign`` (the API refuses it); a row a direct service call
    appends to the stream with one of its own shows the phone the approved name all the same: the
    stream's context, which its gate holds to the approved version's, is laid over the row's, whose
    other values the content still reads."""
    from campaigns.services.triggers import _approved_for, _recipient_source_lock
    from delivery.services.stream_senders import streams_wake
    from delivery.services.streams import Recipient, stream_append
    from tests.campaigns.conftest import _live_trigger

    campaign = _live_trigger(
        pushsim_app, manager_alice, approver_bob, title="{{ context.campaign.name }}", body="{{ context.order }}"
    )
    with django_capture_on_commit_callbacks(execute=True):
        body = {"recipients": [{"external_id": "zoe"}], "context": {"order": "A-1"}}
        stream = trigger_client.post(_url(campaign), body, format="json").json()["dispatch"]
    entry = _approved_for(campaign.pk, stamp=None, by=manager_alice, now=timezone.now())
    forged = {"campaign": {"id": campaign.pk, "name": "Everything free, today only"}, "order": "A-2"}
    stream_append(
        dispatch_id=stream,
        kind=Dispatch.Kind.API_TRIGGER,
        app_id=campaign.app_id,
        recipients=[Recipient(zoe.pk, context=forged)],
        source_lock=_recipient_source_lock(entry),
    )
    streams_wake(stream)
    received = pushsim.state.recent(token=zoe.devices.get().token)
    assert sorted((r["title"], r["body"]) for r in received) == [("Order shipped", "A-1"), ("Order shipped", "A-2")]


@pytest.mark.parametrize("revised", ["kind", "app"])
def test_a_revision_moving_the_campaigns_kind_or_app_leaves_the_approved_version_triggerable(
    live_trigger, trigger_client, zoe, pushsim_app, manager_alice, revised
):
    """The kind and the app are the approved version's: while a revision making the campaign a
    scheduled one, or moving it to another app, waits for approval, the approved version's calls
    still append to its stream, in its app (a new process too: it loads the campaign afresh)."""
    from campaigns.services.triggers import campaign_caches_forget
    from delivery.models import PushContent
    from tests.factories import AppFactory, SegmentFactory

    stream_id = _trigger(trigger_client, live_trigger, "zoe").json()["dispatch"]
    if revised == "kind":
        segment = SegmentFactory(created_by=manager_alice)
        access_grant(obj=segment, to=manager_alice, by=None)
        campaign_update(campaign_id=live_trigger.pk, by=manager_alice, kind="scheduled", segment=segment)
    else:
        other_app = AppFactory(name="Other app")
        access_grant(obj=other_app, to=manager_alice, by=None)
        theirs = PushContent.objects.create(app=other_app, name="Theirs", title="Hi", body="There")
        campaign_update(campaign_id=live_trigger.pk, by=manager_alice, app=other_app, content=theirs)
    revision = Campaign.objects.get(pk=live_trigger.pk)
    assert revision.status == "live" and revision.has_pending_revision
    for _ in range(2):
        again = _trigger(trigger_client, live_trigger, "zoe")
        assert again.status_code == 202, again.content
        assert again.json()["dispatch"] == stream_id and again.json()["queued"] == 1
        campaign_caches_forget()
    assert Dispatch.objects.get(pk=stream_id).app_id == pushsim_app.pk
    assert Delivery.objects.filter(dispatch_id=stream_id).count() == 3


# --- access: judged on the approved version's app ----------------------------------------------------


@pytest.fixture
def integrator(api_key_for, pushsim_app):
    """A service account's key with access to the campaign's (approved) app alone, not granted the
    campaign itself as its creator is."""
    from tests.factories import UserFactory

    user = UserFactory(username="integrator", role="Manager")
    access_grant(obj=pushsim_app, to=user, by=None)
    client = api_key_for(user, scopes=["trigger", "read"])
    client.user = user
    return client


@pytest.fixture
def new_integrator(api_key_for, new_app):
    from tests.factories import UserFactory

    user = UserFactory(username="new_integrator", role="Manager")
    access_grant(obj=new_app, to=user, by=None)
    client = api_key_for(user, scopes=["trigger", "read"])
    client.user = user
    return client


def test_a_key_of_the_approved_versions_app_triggers_while_a_revision_moving_it_waits(
    live_trigger, integrator, zoe, pushsim_app, new_app, manager_alice
):
    """The calls send the approved version, to its app's devices: the key's access is judged on
    that app, not on the app the revision waiting for approval names. Its deliveries are read
    through that app too."""
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    for idempotency in ({}, {"HTTP_IDEMPOTENCY_KEY": "order-1"}):
        answered = _trigger(integrator, live_trigger, "zoe", **idempotency)
        assert answered.status_code == 202, answered.content
        (delivery,) = answered.json()["deliveries"]
        assert Dispatch.objects.get(pk=answered.json()["dispatch"]).app_id == pushsim_app.pk
        looked_up = integrator.get(f"/api/v1/deliveries/{delivery['id']}/")
        assert looked_up.status_code == 200 and looked_up.json()["external_id"] == "zoe"


def test_a_key_of_the_app_a_pending_revision_names_cannot_send_the_approved_version_into_the_old_app(
    live_trigger, new_integrator, zoe, new_app, manager_alice
):
    """The approved version sends to its own app's devices: a key with no access to that app is
    answered as for any campaign outside its access (404), whichever app the row names, and
    nothing is written, with an Idempotency-Key or without."""
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    for idempotency in ({}, {"HTTP_IDEMPOTENCY_KEY": "order-1"}):
        refused = _trigger(new_integrator, live_trigger, "zoe", **idempotency)
        assert refused.status_code == 404, refused.content
    assert not Delivery.objects.exists() and not TriggerRequest.objects.exists()


def test_the_access_verdicts_follow_the_move_its_approval_and_a_grants_removal_at_once(
    live_trigger, integrator, new_integrator, zoe, pushsim_app, new_app, manager_alice, approver_bob
):
    """The verdicts are kept per process behind the stamps: each key's answer before the move, once
    the revision waits, once it is approved, and once a grant is taken away, on warm caches."""
    from campaigns.services.lifecycle import campaign_approve

    newcomer = DeviceFactory(profile=zoe, app=new_app, platform="android")
    assert _trigger(integrator, live_trigger, "zoe").status_code == 202
    assert _trigger(new_integrator, live_trigger, "zoe").status_code == 404
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    assert _trigger(integrator, live_trigger, "zoe").status_code == 202
    assert _trigger(new_integrator, live_trigger, "zoe").status_code == 404
    access_revoke(obj=pushsim_app, to=integrator.user, by=None)
    assert _trigger(integrator, live_trigger, "zoe").status_code == 404
    access_grant(obj=pushsim_app, to=integrator.user, by=None)
    assert _trigger(integrator, live_trigger, "zoe").status_code == 202
    campaign_approve(campaign_id=live_trigger.pk, by=approver_bob)
    assert _trigger(integrator, live_trigger, "zoe").status_code == 404
    moved = _trigger(new_integrator, live_trigger, "zoe")
    assert moved.status_code == 202, moved.content
    assert Delivery.objects.get(pk=moved.json()["deliveries"][0]["id"]).device_id == newcomer.pk
    access_revoke(obj=new_app, to=new_integrator.user, by=None)
    assert _trigger(new_integrator, live_trigger, "zoe").status_code == 404


def test_new_delivery_rules_of_the_approved_versions_app_reach_a_cached_campaign_a_revision_moves(
    live_trigger, trigger_client, zoe, pushsim_app, new_app, manager_alice, approver_bob
):
    """The calls of a marketing campaign apply its approved version's app's rules, kept with the
    campaign per process: new rules of that app reach them at once while a revision moving the
    campaign to another app waits, as they do for any campaign of the app."""
    from campaigns.services.lifecycle import campaign_approve, campaign_submit

    campaign_update(campaign_id=live_trigger.pk, by=manager_alice, purpose="marketing")
    campaign_submit(campaign_id=live_trigger.pk, by=manager_alice)
    campaign_approve(campaign_id=live_trigger.pk, by=approver_bob)
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    assert _trigger(trigger_client, live_trigger, "zoe").json()["queued"] == 1  # cached, with no rules
    DeliveryRules.objects.create(app=pushsim_app, frequency_cap=1, frequency_window_hours=24)
    capped = _trigger(trigger_client, live_trigger, "zoe").json()
    assert capped["queued"] == 0 and capped["deliveries"][0]["reason"] == "frequency_cap"


def test_both_apps_keys_read_a_campaign_a_revision_moves_until_it_is_approved(
    live_trigger, integrator, new_integrator, zoe, new_app, manager_alice, approver_bob
):
    """While a revision moving it waits, the campaign sends to its approved version's app and will
    send to the revision's: the keys of either app read it (its page, the list, its report); once
    the move is approved, the old app's keys read it no more, and the deliveries its calls made
    there are still theirs, read through their app."""
    from campaigns.services.lifecycle import campaign_approve

    delivery_id = _trigger(integrator, live_trigger, "zoe").json()["deliveries"][0]["id"]
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    for client in (integrator, new_integrator):
        read = client.get(f"/api/v1/campaigns/{live_trigger.pk}/")
        assert read.status_code == 200 and read.json()["app"] == new_app.pk  # the row: what waits
        assert [c["id"] for c in client.get("/api/v1/campaigns/").json()["results"]] == [live_trigger.pk]
        assert client.get(f"/api/v1/campaigns/{live_trigger.pk}/report/").json()["targeted"] == 1
    campaign_approve(campaign_id=live_trigger.pk, by=approver_bob)
    assert integrator.get(f"/api/v1/campaigns/{live_trigger.pk}/").status_code == 404
    assert integrator.get("/api/v1/campaigns/").json()["results"] == []
    assert integrator.get(f"/api/v1/deliveries/{delivery_id}/").status_code == 200
    assert new_integrator.get(f"/api/v1/campaigns/{live_trigger.pk}/").status_code == 200


def test_a_key_of_the_app_a_revision_moves_a_campaign_to_reads_none_of_its_deliveries_in_the_old_app(
    live_trigger, integrator, new_integrator, zoe, pushsim_app, new_app, manager_alice
):
    """Both apps' keys read the campaign while a revision moving it waits, and the new app's key read
    the rows its calls make in the old app too, those of its approved version's phones: whoever saw
    the campaign read its sends' rows. The rows are their app's, read by that app's keys alone; the
    new app's key still reads the stream's counts, as the campaign's report gives them."""
    before = _trigger(integrator, live_trigger, "zoe").json()
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    after = _trigger(integrator, live_trigger, "zoe").json()
    stream_id = after["dispatch"]
    made = [before["deliveries"][0]["id"], after["deliveries"][0]["id"]]
    assert before["dispatch"] == stream_id

    rows = integrator.get(f"/api/v1/dispatches/{stream_id}/deliveries/").json()["results"]
    assert [r["id"] for r in rows] == made
    for delivery_id in made:
        assert integrator.get(f"/api/v1/deliveries/{delivery_id}/").status_code == 200

    assert new_integrator.get(f"/api/v1/dispatches/{stream_id}/").json()["total"] == 2
    refused = new_integrator.get(f"/api/v1/dispatches/{stream_id}/deliveries/")
    assert refused.status_code == 403, refused.content
    assert refused.json()["detail"] == (
        f"You may read this dispatch's counts, not its deliveries. Its deliveries are those of app #{pushsim_app.pk}, "
        "which you have no access to."
    )
    for delivery_id in made:
        assert new_integrator.get(f"/api/v1/deliveries/{delivery_id}/").status_code == 404


def test_a_user_of_the_app_a_revision_moves_a_campaign_to_finds_none_of_its_deliveries_in_the_old_app_in_the_admin(
    client, live_trigger, integrator, new_integrator, zoe, pushsim_app, new_app, manager_alice
):
    """The admin's deliveries list and pages, as the API: the old app's people read the stream's rows;
    a Manager of the new app alone reads the stream's page with its outcomes unlinked, no row listed
    and each row's page answering 404, as one outside their access."""
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    answered = _trigger(integrator, live_trigger, "zoe").json()
    stream_id, delivery_id = answered["dispatch"], answered["deliveries"][0]["id"]
    listed = f"/admin/delivery/delivery/?dispatch__id__exact={stream_id}"
    row = f"/admin/delivery/delivery/{delivery_id}/change/"
    stream = f"/admin/delivery/dispatch/{stream_id}/change/"

    client.force_login(integrator.user)
    assert [d.pk for d in client.get(listed).context["cl"].result_list] == [delivery_id]
    assert client.get(row).status_code == 200
    assert f'href="/admin/delivery/delivery/?dispatch__id__exact={stream_id}' in client.get(stream).content.decode()

    client.force_login(new_integrator.user)
    assert list(client.get(listed).context["cl"].result_list) == []
    assert list(client.get("/admin/delivery/delivery/").context["cl"].result_list) == []
    assert client.get(row).status_code == 404
    page = client.get(stream)
    assert page.status_code == 200
    text = page.content.decode()
    assert "/admin/delivery/delivery/?dispatch__id__exact=" not in text
    assert f"Its deliveries are those of app #{pushsim_app.pk}, which you have no access to." in text


def test_the_approved_versions_apps_people_read_a_campaign_a_revision_moves_in_the_admin_and_may_stop_it(
    client, live_trigger, integrator, new_app, manager_alice
):
    """Reading the campaign, and stopping what it sends to their app's phones, is all the old app's
    access gives: the page without a save, with Stop as its one button (a change, a duplicate or a
    test send is the row's app's people's), its edit and its duplicate refused."""
    import re

    revision_moving_to(live_trigger, new_app, by=manager_alice)
    client.force_login(integrator.user)
    assert b"Order shipped" in client.get("/admin/campaigns/campaign/").content
    page = client.get(f"/admin/campaigns/campaign/{live_trigger.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert re.findall(rb'name="campaign_action" value="(\w+)"', page.content) == [b"stop"]
    for action in ("duplicate", "test_send", "cancel_request"):
        refused = client.post(f"/admin/campaigns/campaign/{live_trigger.pk}/transition/{action}/")
        assert refused.status_code in (403, 404), (action, refused.status_code)
    assert Campaign.objects.get(pk=live_trigger.pk).status == "live" and Campaign.objects.count() == 1


# --- stopping a campaign a pending revision moves ---------------------------------------------------


def test_a_manager_of_the_approved_versions_app_stops_a_campaign_a_revision_moves_from_its_page(
    client, live_trigger, integrator, zoe, pushsim_app, new_app, manager_alice
):
    """While a revision moving it to another app waits, the campaign still sends to the approved
    version's app's phones: a Manager of that app stops it (stopping only ever sends less), its
    stream in their app with it, and the revision's request is closed."""
    from accounts.models import ApprovalRequest

    stream_id = _trigger(integrator, live_trigger, "zoe").json()["dispatch"]
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    client.force_login(integrator.user)
    url = f"/admin/campaigns/campaign/{live_trigger.pk}/transition/stop/"
    asked = client.post(url)
    assert asked.status_code == 200 and b'name="confirmed" value="yes"' in asked.content
    done = client.post(url, {"confirmed": "yes"}, follow=True)
    assert "sends nothing more" in done.content.decode()
    assert Campaign.objects.get(pk=live_trigger.pk).status == "stopped"
    assert Dispatch.objects.get(pk=stream_id).status == "stopped"
    assert (
        ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="cancelled").decided_by == integrator.user
    )
    assert _trigger(integrator, live_trigger, "zoe").status_code == 409


def test_a_manager_of_the_app_a_pending_revision_moves_a_campaign_to_stops_it_and_its_sends_in_the_old_app(
    live_trigger, integrator, new_integrator, zoe, new_app, manager_alice
):
    """The row is the new app's people's: they stop the campaign as before the move, and stopping it
    stops its sends under way, its stream in the approved version's app included, which they were
    refused (no access to that app's dispatches) and the whole stop with it."""
    stream_id = _trigger(integrator, live_trigger, "zoe").json()["dispatch"]
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    campaign_stop(campaign_id=live_trigger.pk, by=new_integrator.user)
    assert Campaign.objects.get(pk=live_trigger.pk).status == "stopped"
    stream = Dispatch.objects.get(pk=stream_id)
    assert stream.status == "stopped" and stream.app_id != new_app.pk


def test_stopping_a_campaign_a_revision_moves_still_needs_the_role_and_access_to_one_of_its_apps(
    client, live_trigger, integrator, zoe, pushsim_app, new_app, manager_alice, approver_bob
):
    """A Viewer of the approved version's app reads the campaign and may not stop it (403); a Manager
    of neither app does not find it (404); once the move is approved, the old app's Manager no more."""
    from django.core.exceptions import PermissionDenied
    from django.http import Http404

    from campaigns.services.lifecycle import campaign_approve
    from tests.factories import UserFactory

    viewer = UserFactory(username="viewer_vic", role="Viewer")
    access_grant(obj=pushsim_app, to=viewer, by=None)
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    client.force_login(viewer)
    page = client.get(f"/admin/campaigns/campaign/{live_trigger.pk}/change/")
    assert page.status_code == 200 and b'value="stop"' not in page.content
    refused = client.post(f"/admin/campaigns/campaign/{live_trigger.pk}/transition/stop/", {"confirmed": "yes"})
    assert refused.status_code == 403
    with pytest.raises(PermissionDenied):
        campaign_stop(campaign_id=live_trigger.pk, by=viewer)
    with pytest.raises(Http404):
        campaign_stop(campaign_id=live_trigger.pk, by=UserFactory(username="manager_nina", role="Manager"))
    campaign_approve(campaign_id=live_trigger.pk, by=approver_bob)
    with pytest.raises(Http404):
        campaign_stop(campaign_id=live_trigger.pk, by=integrator.user)
    assert Campaign.objects.get(pk=live_trigger.pk).status == "live"


# --- deciding a revision that moves the campaign to another app ------------------------------------


@pytest.fixture
def approvers(pushsim_app, new_app):
    """An Approver of each app alone, and one of both."""
    from tests.factories import UserFactory

    made = {}
    for name, apps in (("old", [pushsim_app]), ("new", [new_app]), ("both", [pushsim_app, new_app])):
        made[name] = UserFactory(username=f"approver_{name}", role="Approver")
        for app in apps:
            access_grant(obj=app, to=made[name], by=None)
    return made


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("new", "moves the campaign out of the app its approved version sends to, which you have no access to"),
        ("old", "moves the campaign into an app you have no access to"),
    ],
)
def test_an_approver_without_access_to_both_apps_may_not_decide_a_revision_moving_the_campaign(
    client, live_trigger, approvers, new_app, manager_alice, pushsim_app, who, reason
):
    """A revision moving a live campaign to another app takes what it sends out of one app and into
    another: only an approver with access to both decides it. Either one alone finds it neither in
    the inbox nor on the review's page, and the decision is refused in the service, saying why; the
    campaign goes on sending its approved version to its app."""
    from django.core.exceptions import PermissionDenied

    from accounts.models import ApprovalRequest
    from accounts.selectors import approvals_waiting_for, approver_standing
    from campaigns.services.lifecycle import campaign_approve, campaign_request_changes

    revision_moving_to(live_trigger, new_app, by=manager_alice)
    request = ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="pending")
    approver = approvers[who]
    assert approvals_waiting_for(approver) == []
    allowed, said = approver_standing(approver, request)
    assert not allowed and reason in said and "an approver with access to both apps decides it" in said
    for decide in (campaign_approve, campaign_request_changes):
        with pytest.raises(PermissionDenied, match=reason):
            decide(campaign_id=live_trigger.pk, by=approver, comment="Looks fine", request_id=request.pk)
    client.force_login(approver)
    assert client.get("/admin/accounts/approvalrequest/").content.count(b"/review/") == 0
    review = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    assert client.get(review).status_code == 404
    assert client.post(review, {"_approve": "1", "comment": ""}).status_code == 404
    campaign = Campaign.objects.get(pk=live_trigger.pk)
    assert campaign.approved_version["fields"]["app_id"] == pushsim_app.pk and campaign.has_pending_revision
    assert ApprovalRequest.objects.get(pk=request.pk).status == "pending"


def test_an_approver_of_both_apps_reviews_and_approves_a_revision_moving_the_campaign(
    client, live_trigger, approvers, new_app, manager_alice
):
    """The approver with access to both apps finds the revision in the inbox, reviews it and
    approves it from the review's page: the campaign sends to the new app from then on."""
    from accounts.models import ApprovalRequest
    from accounts.selectors import approvals_waiting_for

    revision_moving_to(live_trigger, new_app, by=manager_alice)
    request = ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="pending")
    assert approvals_waiting_for(approvers["both"]) == [request]
    client.force_login(approvers["both"])
    review = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    assert f'href="{review}"'.encode() in client.get("/admin/accounts/approvalrequest/").content
    page = client.get(review)
    assert page.status_code == 200 and b'name="_approve"' in page.content
    assert client.post(review, {"_approve": "1", "comment": ""}).status_code == 302
    assert ApprovalRequest.objects.get(pk=request.pk).status == "approved"
    assert Campaign.objects.get(pk=live_trigger.pk).approved_version["fields"]["app_id"] == new_app.pk


# --- the approval policies of both apps govern a move ----------------------------------------------


def _active_policy(name, *, apps, users=(), groups=(), block_self_approval=True):
    from accounts.models import ApprovalPolicy
    from accounts.services import approval_policy_activate
    from tests.factories import UserFactory

    policy = ApprovalPolicy.objects.create(
        name=name, app_ids=[app.pk for app in apps], block_self_approval=block_self_approval
    )
    policy.approver_users.set(users)
    policy.approver_groups.set(groups)
    approval_policy_activate(policy_id=policy.pk, by=UserFactory(username=f"admin {name}", role="Administrator"))
    return policy


@pytest.fixture
def guardian(pushsim_app, new_app, approvers):
    """The old app's policy names a group ("Old app's guardians"), whose one member has access to
    both apps; the new app's policy names every approver of it, the guardian too."""
    from django.contrib.auth.models import Group

    from tests.factories import UserFactory

    guardians = Group.objects.create(name="Old app's guardians")
    keeper = UserFactory(username="approver_keeper", role="Approver")
    keeper.groups.add(guardians)
    for app in (pushsim_app, new_app):
        access_grant(obj=app, to=keeper, by=None)
    _active_policy("Old app's", apps=[pushsim_app], groups=[guardians])
    _active_policy("New app's", apps=[new_app], users=[approvers["new"], approvers["both"], keeper])
    return keeper


def test_a_revision_moving_the_campaign_out_of_an_app_needs_an_approver_of_that_apps_policy_too(
    client, live_trigger, approvers, guardian, new_app, manager_alice, pushsim_app
):
    """The move takes what the campaign sends out of the old app: the old app's policy governs it as
    the new app's does. An approver of both apps named by the new app's policy alone finds it in
    neither the inbox nor the review's page, and is refused the decision, naming the old app's
    policy; the old app's guardian, named by both, decides it."""
    from django.core.exceptions import PermissionDenied

    from accounts.models import ApprovalRequest
    from accounts.selectors import approvals_waiting_for, approver_standing
    from campaigns.services.lifecycle import campaign_approve, campaign_request_changes

    revision_moving_to(live_trigger, new_app, by=manager_alice)
    request = ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="pending")
    lax = approvers["both"]
    assert approvals_waiting_for(lax) == []
    assert approver_standing(lax, request) == (False, "You are not an approver of the policy 'Old app's'.")
    for decide in (campaign_approve, campaign_request_changes):
        with pytest.raises(PermissionDenied, match="Old app's"):
            decide(campaign_id=live_trigger.pk, by=lax, comment="Fine", request_id=request.pk)
    client.force_login(lax)
    assert client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").status_code == 404
    assert ApprovalRequest.objects.get(pk=request.pk).status == "pending"

    assert approvals_waiting_for(guardian) == [request]
    client.force_login(guardian)
    inbox = client.get("/admin/accounts/approvalrequest/").content.decode()
    assert "New app&#x27;s" in inbox and "Old app&#x27;s" in inbox
    page = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert "under the policies <em>New app&#x27;s</em> and <em>Old app&#x27;s</em>" in page
    assert client.post(f"/admin/accounts/approvalrequest/{request.pk}/review/", {"_approve": "1"}).status_code == 302
    assert ApprovalRequest.objects.get(pk=request.pk).status == "approved"
    assert Campaign.objects.get(pk=live_trigger.pk).approved_version["fields"]["app_id"] == new_app.pk


def test_a_move_into_an_app_without_a_policy_keeps_the_old_apps_policy(
    live_trigger, approvers, new_app, manager_alice, pushsim_app
):
    """No policy of the new app: any Approver of it would do, but the old app's policy still names
    who decides a move out of it."""
    from accounts.models import ApprovalRequest
    from accounts.selectors import approvals_waiting_for

    policy = _active_policy("Old app's", apps=[pushsim_app], users=[approvers["old"]])
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    request = ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="pending")
    assert request.policy == policy
    assert approvals_waiting_for(approvers["both"]) == []
    assert ApprovalRequest.objects.get(pk=request.pk).status == "pending"


def test_a_move_blocks_self_approval_when_either_apps_policy_does(
    live_trigger, approvers, new_app, pushsim_app, manager_alice
):
    """The new app's policy lets an approver approve their own request; the old app's does not: the
    stricter stands for the move, so the approver who asked for it may not decide it."""
    from accounts.models import ApprovalRequest
    from accounts.selectors import approver_standing
    from campaigns.services.lifecycle import campaign_submit
    from delivery.models import PushContent

    both = approvers["both"]
    both.groups.add(*manager_alice.groups.all())
    _active_policy("Old app's", apps=[pushsim_app], users=[both])
    _active_policy("New app's", apps=[new_app], users=[both], block_self_approval=False)
    theirs = PushContent.objects.create(app=new_app, name="Theirs", title="Words for the new app", body="There")
    campaign_update(campaign_id=live_trigger.pk, by=both, app=new_app, content=theirs)
    campaign_submit(campaign_id=live_trigger.pk, by=both)
    request = ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="pending")
    assert request.block_self_approval
    assert approver_standing(both, request) == (False, "You cannot approve your own request.")


def test_an_edit_that_keeps_the_app_is_governed_by_its_apps_policy_alone(
    live_trigger, approvers, new_app, pushsim_app, manager_alice
):
    """Only a move brings in another app's policy: a revision staying in the app has its policy."""
    from accounts.models import ApprovalRequest
    from campaigns.services.lifecycle import campaign_submit
    from delivery.models import PushContent

    old = _active_policy("Old app's", apps=[pushsim_app], users=[approvers["old"]])
    _active_policy("New app's", apps=[new_app], users=[approvers["new"]])
    reworded = PushContent.objects.create(app=pushsim_app, name="Reworded", title="Other words", body="Here")
    campaign_update(campaign_id=live_trigger.pk, by=manager_alice, content=reworded)
    campaign_submit(campaign_id=live_trigger.pk, by=manager_alice)
    request = ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="pending")
    assert (request.policy, request.source_policy) == (old, None)


def test_the_campaign_page_tells_an_approver_whether_they_may_decide_the_revision_moving_it(
    client, live_trigger, approvers, new_app, manager_alice
):
    """An Approver of one app found the move in no inbox, and the campaign's page said only that a
    revision waited: nothing told them it was not theirs to decide, nor who decides it. The page now
    says why they may not, and offers the review to the approver of both apps."""
    from accounts.models import ApprovalRequest

    revision_moving_to(live_trigger, new_app, by=manager_alice)
    request = ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="pending")
    url = f"/admin/campaigns/campaign/{live_trigger.pk}/change/"
    review = f"/admin/accounts/approvalrequest/{request.pk}/review/"
    said = {
        "old": "You may not decide it. This revision moves the campaign into an app you have no access to: an"
        " approver with access to both apps decides it.",
        "new": "You may not decide it. This revision moves the campaign out of the app its approved version sends"
        " to, which you have no access to: an approver with access to both apps decides it.",
    }
    for who, sentence in said.items():
        client.force_login(approvers[who])
        html = client.get(url).content.decode()
        assert sentence in html, who
        assert review not in html, who
    client.force_login(approvers["both"])
    html = client.get(url).content.decode()
    assert f'<a href="{review}">Review it</a>' in html and "You may not decide it" not in html
    client.force_login(manager_alice)  # no approver: told nothing of deciding
    html = client.get(url).content.decode()
    assert "You may not decide it" not in html and review not in html


def test_the_review_of_a_move_without_a_policy_says_an_approver_of_both_apps_decides_it(
    client, live_trigger, approvers, new_app, manager_alice
):
    """No policy matched, and the review said 'any Approver may decide', though an Approver of one of
    the two apps may not: it now says the approver needs access to both, naming them to its reader
    (who has that access)."""
    from accounts.models import ApprovalRequest

    revision_moving_to(live_trigger, new_app, by=manager_alice)
    request = ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="pending")
    client.force_login(approvers["both"])
    html = client.get(f"/admin/accounts/approvalrequest/{request.pk}/review/").content.decode()
    assert "any Approver may decide" not in html
    old_app = live_trigger.app.name
    assert (
        f"(no policy matched: any Approver with access to both apps may decide, as the revision moves the"
        f" campaign from “{old_app}” to “{new_app.name}”)"
    ) in html


def test_the_inbox_says_an_approver_of_both_apps_decides_a_move_without_a_policy(
    client, live_trigger, approvers, new_app, manager_alice
):
    """No policy matched, and the inbox's Policies column read 'None: any Approver', though an
    Approver of one of the two apps may not decide a move: it now says what the review says."""
    from accounts.models import ApprovalRequest

    revision_moving_to(live_trigger, new_app, by=manager_alice)
    ApprovalRequest.objects.get(subject_id=str(live_trigger.pk), status="pending")
    client.force_login(approvers["both"])
    html = client.get("/admin/accounts/approvalrequest/").content.decode()
    assert "None: any Approver with access to both apps" in html
    assert "None: any Approver<" not in html


def test_the_stop_question_says_the_revision_waiting_for_approval_is_cancelled_with_it(
    client, live_trigger, integrator, new_app, manager_alice
):
    """Stopping a campaign whose revision waits cancels its request, which the question did not say:
    a Manager of the app it sends to stopped it unaware the move asked for would never be decided."""
    client.force_login(integrator.user)
    url = f"/admin/campaigns/campaign/{live_trigger.pk}/transition/stop/"
    assert "revision" not in client.post(url).content.decode()  # nothing waits: nothing said
    revision_moving_to(live_trigger, new_app, by=manager_alice)
    asked = client.post(url).content.decode()
    assert ("Its revision waiting for approval, asked by manager_alice, is cancelled: it will not be decided.") in asked


@pytest.mark.django_db(transaction=True)
def test_a_slow_call_whose_key_a_retry_reclaimed_sends_nothing_twice(live_trigger, trigger_client, zoe, monkeypatch):
    """A call still running (not dead) past the claim's abandonment: the retry reclaims the key and
    appends; the slow call's rows, written before, must not commit beside the retry's."""
    from django_q.conf import Conf

    import delivery.services.streams

    monkeypatch.setattr(Conf, "SYNC", False)  # the senders are elsewhere: nothing is sent in-process
    appended, go = threading.Event(), threading.Event()
    original = delivery.services.streams.stream_append

    def paused(**kwargs):
        rows = original(**kwargs)
        if not appended.is_set():
            appended.set()
            go.wait(20)  # the slow call: rows written, its transaction still open
        return rows

    monkeypatch.setattr(delivery.services.streams, "stream_append", paused)
    slow, slowed = _in_thread(lambda: _trigger(trigger_client, live_trigger, "zoe", HTTP_IDEMPOTENCY_KEY="order-9"))
    assert appended.wait(20)
    TriggerRequest.objects.filter(idempotency_key="order-9").update(created_at=timezone.now() - dt.timedelta(minutes=6))
    retry = _trigger(trigger_client, live_trigger, "zoe", HTTP_IDEMPOTENCY_KEY="order-9")
    assert retry.status_code == 202
    go.set()
    slow.join(20)
    assert slowed["value"].status_code == 409 and slowed["value"].json()["code"] == "idempotency_in_progress"
    assert Delivery.objects.filter(profile=zoe).count() == 1
    again = _trigger(trigger_client, live_trigger, "zoe", HTTP_IDEMPOTENCY_KEY="order-9")
    assert again["Idempotent-Replayed"] == "true" and again.json() == retry.json()
