"""Event-entered journeys push through a standing dispatch, like API triggers."""

import datetime as dt

import pytest
from django.utils import timezone

from delivery.models import Delivery, Dispatch
from journeys.services.lifecycle import journey_stop
from tests.factories import DeviceFactory, ProfileFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def paid_journey(sim_journey, sim_welcome, publish):
    graph = {
        "steps": [
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    return publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))


def _post_event(client, *external_ids):
    now = timezone.now().isoformat()
    return client.post(
        "/api/v1/events/bulk/",
        {"events": [{"external_id": e, "name": "order_paid", "occurred_at": now} for e in external_ids]},
        format="json",
    )


def _replay_stored_minutes_ago(minutes: int = 15, *, enrollments: bool = False) -> None:
    """Time passes before a replay: the events, their replay and the journey's versions (and, with
    ``enrollments``, the enrollments) are dated ``minutes`` earlier."""
    from django.db.models import F

    from audiences.models import Event, EventReplay
    from journeys.models import Enrollment, JourneyVersion

    ago = dt.timedelta(minutes=minutes)
    if enrollments:
        Enrollment.objects.update(entered_at=F("entered_at") - ago, finished_at=F("finished_at") - ago)
    Event.objects.update(occurred_at=F("occurred_at") - ago, received_at=F("received_at") - ago)
    EventReplay.objects.update(created_at=F("created_at") - ago, next_attempt_at=F("next_attempt_at") - ago)
    JourneyVersion.objects.update(live_at=F("live_at") - ago)


def _zoe_and_a_journey_reentered_after_ten_minutes(sim_journey, sim_welcome, publish, sim_team, api_key_for, user):
    """A live journey entered on order_paid, pushing at once, that a profile re-enters after 10
    minutes; Zoe's phone on the simulator's app. Returns her phone's token and an ingest client."""
    graph = {
        "steps": [
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    publish(
        sim_journey(
            graph=graph,
            entry_kind="event",
            entry_event="order_paid",
            entry_segment=None,
            reentry="after_wait",
            reentry_wait_seconds=600,
        )
    )
    token = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    return token, api_key_for(user, scopes=["ingest"])


def test_an_event_entering_a_journey_that_pushes_first_joins_its_stream(
    paid_journey, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    phones = {}
    for name in ("zoe", "max"):
        phones[name] = DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team).token
    client = api_key_for(manager_alice, scopes=["ingest"])
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "max").status_code == 200
    stream = Dispatch.objects.get(kind="journey")
    assert stream.standing and stream.stream_version == "thanks" and stream.status == "sending"
    assert list(Delivery.objects.filter(dispatch=stream).values_list("status", flat=True)) == ["accepted"] * 2
    assert pushsim.state.count(phones["zoe"]) == pushsim.state.count(phones["max"]) == 1


def test_stopping_the_journey_closes_its_stream_with_a_push_held_for_quiet_hours(
    paid_journey, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    import datetime as dt

    from delivery.models import DeliveryRules

    now = timezone.now()
    DeliveryRules.objects.create(
        app=sim_team, quiet_start=(now - dt.timedelta(hours=1)).time(), quiet_end=(now + dt.timedelta(hours=1)).time()
    )
    DeviceFactory(profile=ProfileFactory(external_id="zoe", timezone="UTC"), app=sim_team)
    client = api_key_for(manager_alice, scopes=["ingest"])
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    assert Delivery.objects.get().status == "queued"  # held until the quiet hours end
    journey_stop(journey_id=paid_journey.pk, by=manager_alice)
    stream = Dispatch.objects.get(kind="journey")
    assert stream.status == "stopped"
    assert list(Delivery.objects.filter(dispatch=stream).values_list("status", "reason")) == [("skipped", "stopped")]


def test_an_event_enters_and_pushes_within_its_own_call_once(
    paid_journey, pushsim, sim_team, api_key_for, manager_alice, monkeypatch, django_capture_on_commit_callbacks
):
    """No queue trip: when the events call answers, the entry ran past its first push, whose row
    waits in the stream for the sender; the same event again, or the engine, pushes nothing more."""
    from django_q.conf import Conf

    from delivery.services.stream_senders import streams_send
    from journeys.models import Enrollment
    from journeys.services.engine import journeys_run_due

    token = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    client = api_key_for(manager_alice, scopes=["ingest"])
    monkeypatch.setattr(Conf, "SYNC", False)  # tasks would go to a queue no worker reads
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe", "zoe").status_code == 200
    enrollment = Enrollment.objects.get()
    assert enrollment.status == "completed" and [step for step, _, _ in enrollment.history] == ["thanks", "done"]
    (row,) = Delivery.objects.filter(dispatch__kind="journey").values_list("status", flat=True)
    assert row == "queued"
    assert streams_send(budget=0).claimed == 1  # the sender (woken through Redis once the call committed)
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200  # enters once (re-entry: never)
    journeys_run_due()
    streams_send(budget=0)
    assert list(Delivery.objects.filter(dispatch__kind="journey").values_list("status", flat=True)) == ["accepted"]
    assert pushsim.state.count(token) == 1


def test_an_entry_failing_in_the_database_stores_the_events_and_enters_them_when_replayed(
    paid_journey, pushsim, sim_team, api_key_for, manager_alice, enrollments_refused, django_capture_on_commit_callbacks
):
    """PostgreSQL refusing the entry undoes the entry alone: the call stores its events and its new
    profile (200), records the batch for a replay, and sends nothing; the replay, once due and
    once the database takes enrollments again, enters them and sends the first push, once."""
    from audiences.models import Event, EventReplay, Profile
    from audiences.services.events import events_replay_due
    from journeys.models import Enrollment

    token = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    client = api_key_for(manager_alice, scopes=["ingest"])
    with enrollments_refused(), django_capture_on_commit_callbacks(execute=True):
        answer = _post_event(client, "zoe", "newcomer")
    assert answer.status_code == 200, answer.content
    assert answer.json()["accepted"] == 2
    assert Event.objects.count() == 2 and Profile.objects.filter(external_id="newcomer").exists()
    assert not Enrollment.objects.exists() and not Delivery.objects.exists()
    replay = EventReplay.objects.get()
    assert replay.listener == "journeys.services.entries.journeys_on_events"
    assert replay.event_ids == sorted(Event.objects.values_list("id", flat=True)) and replay.attempts == 1
    assert "journeys_enrollment: writes refused" in replay.error
    assert events_replay_due() == {
        "replayed": 0,
        "failed": 0,
        "dropped": 0,
        "events": {"replayed": 0, "failed": 0, "dropped": 0},
    }  # due in a minute
    with django_capture_on_commit_callbacks(execute=True):
        later = timezone.now() + dt.timedelta(minutes=1, seconds=1)
        assert events_replay_due(now=later) == {
            "replayed": 1,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 2, "failed": 0, "dropped": 0},
        }
    assert not EventReplay.objects.exists()
    assert Enrollment.objects.count() == 2
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"completed"}
    assert pushsim.state.count(token) == 1


def test_a_replay_run_late_enters_no_one_who_entered_since_its_events_came(
    sim_journey,
    sim_welcome,
    publish,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    enrollments_refused,
    django_capture_on_commit_callbacks,
):
    """Re-entry after 10 minutes. Zoe's first order_paid could not enter her (replayed later); her
    second, a moment after, entered her and sent the push. The replay, run a quarter of an hour
    later, judged the re-entry wait by its own clock: her entry was 15 minutes old, so the first
    event entered her again and her phone got the push twice for two events the wait keeps to
    one passage. It is judged as of the call's time now: she entered since, and stays out."""

    from audiences.services.events import events_replay_due
    from delivery.services.stream_senders import streams_send
    from journeys.models import Enrollment

    token, client = _zoe_and_a_journey_reentered_after_ten_minutes(
        sim_journey, sim_welcome, publish, sim_team, api_key_for, manager_alice
    )
    with enrollments_refused(), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    assert pushsim.state.count(token) == 1
    # A quarter of an hour passes (the replay failed again meanwhile): everything written is older.
    _replay_stored_minutes_ago(15, enrollments=True)
    with django_capture_on_commit_callbacks(execute=True):
        assert events_replay_due() == {
            "replayed": 1,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 1, "failed": 0, "dropped": 0},
        }
    streams_send(budget=0)
    assert list(Enrollment.objects.values_list("entry_number", "status")) == [(1, "completed")]
    assert pushsim.state.count(token) == 1


def test_when_the_replay_cannot_be_recorded_nothing_of_the_call_is_stored(
    paid_journey,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    enrollments_refused,
    replays_refused,
    django_capture_on_commit_callbacks,
):
    """The entry failing and its replay refused too: the call answers a JSON 503 to retry, with no
    event, no new profile, no enrollment, no push row and no wake-up; the same call again stores
    the events and enters them, once."""
    from audiences.models import Event, EventReplay, Profile
    from journeys.models import Enrollment

    token = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    client = api_key_for(manager_alice, scopes=["ingest"])
    with enrollments_refused(), replays_refused(), django_capture_on_commit_callbacks(execute=True) as callbacks:
        answer = _post_event(client, "zoe", "newcomer")
    assert answer.status_code == 503, answer.content
    assert answer["Content-Type"] == "application/json" and answer["Retry-After"] == "1"
    assert answer.json()["code"] == "events_not_stored"
    assert not callbacks
    assert not Event.objects.exists() and not Profile.objects.filter(external_id="newcomer").exists()
    assert not Enrollment.objects.exists() and not Delivery.objects.exists() and not EventReplay.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe", "newcomer").status_code == 200  # the integrator's retry
    assert Event.objects.count() == Enrollment.objects.count() == 2
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"completed"}
    assert pushsim.state.count(token) == 1


def test_an_events_call_sent_again_with_its_idempotency_key_enters_and_pushes_once(
    paid_journey, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    """The integrator's retry after a timeout: the same call with the same Idempotency-Key
    replays the first answer, and stores no event, enters no journey and sends no push again."""
    from audiences.models import Event
    from journeys.models import Enrollment

    token = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    client = api_key_for(manager_alice, scopes=["ingest"])
    body = {"events": [{"external_id": "zoe", "name": "order_paid", "occurred_at": timezone.now().isoformat()}]}
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post("/api/v1/events/bulk/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-42-paid")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = client.post("/api/v1/events/bulk/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-42-paid")
    assert first.status_code == again.status_code == 200, again.content[:300]
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert not callbacks  # no wake-up, no task
    assert Event.objects.count() == Enrollment.objects.count() == 1
    assert Delivery.objects.filter(dispatch__kind="journey").count() == 1
    assert pushsim.state.count(token) == 1


def test_a_call_answered_503_is_not_replayed_its_retry_with_the_key_runs(
    paid_journey,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    enrollments_refused,
    replays_refused,
    django_capture_on_commit_callbacks,
):
    """A 503 events_not_stored stored nothing, so it is no answer to replay: the key is freed and
    the retry with it stores the events and enters the journey, once; a third call replays that."""
    from audiences.models import Event, EventBulkRequest
    from journeys.models import Enrollment

    token = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    client = api_key_for(manager_alice, scopes=["ingest"])
    body = {"events": [{"external_id": "zoe", "name": "order_paid", "occurred_at": timezone.now().isoformat()}]}

    def post():
        with django_capture_on_commit_callbacks(execute=True):
            return client.post("/api/v1/events/bulk/", body, format="json", HTTP_IDEMPOTENCY_KEY="order-7-paid")

    with enrollments_refused(), replays_refused():
        failed = post()
    assert failed.status_code == 503 and failed.json()["code"] == "events_not_stored"
    assert not EventBulkRequest.objects.exists() and not Event.objects.exists()
    retry = post()
    assert retry.status_code == 200 and not retry.has_header("Idempotent-Replayed"), retry.content[:300]
    third = post()
    assert third.json() == retry.json() and third["Idempotent-Replayed"] == "true"
    assert Event.objects.count() == Enrollment.objects.count() == 1
    assert pushsim.state.count(token) == 1


def _entered(client, name, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, name).status_code == 200


def test_entries_keep_the_steps_stream_and_open_it_again_once_it_closed(
    paid_journey, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from delivery.services.streams import streams_close

    for name in ("zoe", "max", "ada", "bob"):
        DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team)
    client = api_key_for(manager_alice, scopes=["ingest"])
    with CaptureQueriesContext(connection) as first:
        _entered(client, "zoe", django_capture_on_commit_callbacks)
    with CaptureQueriesContext(connection) as second:
        _entered(client, "max", django_capture_on_commit_callbacks)
    # The second entry neither runs the gate nor opens the stream again (nor asks which journeys care).
    assert len(second.captured_queries) <= len(first.captured_queries) - 5
    stream = Dispatch.objects.get(kind="journey")
    assert Delivery.objects.filter(dispatch=stream).count() == 2
    # Closed behind the kept copy's back (no stamp moved): the next entry opens a new stream.
    streams_close(kind="journey", source_id=paid_journey.versions.get().pk, by=None, reason="test")
    _entered(client, "ada", django_capture_on_commit_callbacks)
    fresh = Dispatch.objects.exclude(pk=stream.pk).get(kind="journey")
    assert fresh.status == "sending" and Delivery.objects.get(dispatch=fresh).status == "accepted"
    _entered(client, "bob", django_capture_on_commit_callbacks)
    assert Delivery.objects.filter(dispatch=fresh).count() == 2


def test_an_entry_after_the_first_is_a_few_statements_whatever_the_journeys_history(
    paid_journey, pushsim, sim_team, api_key_for, manager_alice, monkeypatch, django_capture_on_commit_callbacks
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django_q.conf import Conf

    from accounts import authentication, stamps
    from journeys.models import Enrollment

    for name in ("zoe", "max", "ada"):
        DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team)
    version = paid_journey.versions.get()
    Enrollment.objects.bulk_create(  # others' finished stays: nothing the entry has to read
        Enrollment(journey=paid_journey, version=version, profile=p, step="done", status="completed")
        for p in ProfileFactory.create_batch(30)
    )
    client = api_key_for(manager_alice, scopes=["ingest"])
    monkeypatch.setattr(Conf, "SYNC", False)  # the sender is woken, not run here
    _entered(client, "zoe", django_capture_on_commit_callbacks)
    with CaptureQueriesContext(connection) as second:
        _entered(client, "max", django_capture_on_commit_callbacks)
    # Read now: the next request clears Django's query log, which the capture reads from.
    statements = [q["sql"] for q in second.captured_queries if "SAVEPOINT" not in q["sql"]]
    read = []
    for module in (authentication, stamps):
        monkeypatch.setattr(
            module,
            "stamps_read",
            lambda names, _read=stamps.stamps_read, **kw: read.append(names) or _read(names, **kw),
        )
    _entered(client, "ada", django_capture_on_commit_callbacks)
    assert read == [["access", "journeys"]]  # one round trip to Redis: the key's stamps and the journeys'
    # The events' three statements (the profile is known), then the entry, in their transaction
    # and from the rows they wrote (the events are not read back): one statement entering with the
    # profiles' zones, the append, and one writing the enrollments and the counters.
    assert len(statements) <= 6, statements
    assert not any("FROM audiences_event" in sql for sql in statements)
    assert not any("GROUP BY profile_id" in sql for sql in statements)  # not the journey's whole history
    entered = Enrollment.objects.get(profile__external_id="max")
    assert (entered.status, [step for step, _, _ in entered.history]) == ("completed", ["thanks", "done"])
    assert Delivery.objects.get(profile__external_id="max").status == "queued"


def test_a_rules_change_reaches_the_next_entry_at_once(
    paid_journey, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    import datetime as dt

    from delivery.models import DeliveryRules

    for name in ("zoe", "max"):
        DeviceFactory(profile=ProfileFactory(external_id=name, timezone="UTC"), app=sim_team)
    client = api_key_for(manager_alice, scopes=["ingest"])
    _entered(client, "zoe", django_capture_on_commit_callbacks)  # the step's stream is kept, without rules
    now = timezone.now()
    DeliveryRules.objects.create(
        app=sim_team,
        quiet_start=(now - dt.timedelta(hours=1)).time(),
        quiet_end=(now + dt.timedelta(hours=1)).time(),
        quiet_mode=DeliveryRules.QuietMode.DISCARD,
    )
    _entered(client, "max", django_capture_on_commit_callbacks)
    rows = dict(Delivery.objects.values_list("profile__external_id", "reason"))
    assert rows == {"zoe": "", "max": "quiet_hours"}


def test_a_journey_going_live_is_entered_by_the_next_event_and_a_stopped_one_by_none(
    sim_journey, sim_welcome, publish, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    from journeys.models import Enrollment

    for name in ("zoe", "max", "ada"):
        DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team)
    client = api_key_for(manager_alice, scopes=["ingest"])
    _entered(client, "zoe", django_capture_on_commit_callbacks)  # no journey cares: kept as such
    graph = {
        "steps": [
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    _entered(client, "max", django_capture_on_commit_callbacks)
    assert list(Enrollment.objects.values_list("profile__external_id", flat=True)) == ["max"]
    journey_stop(journey_id=journey.pk, by=manager_alice)
    _entered(client, "ada", django_capture_on_commit_callbacks)
    assert list(Enrollment.objects.values_list("profile__external_id", flat=True)) == ["max"]
    assert Delivery.objects.filter(profile__external_id="ada").count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_stop_pressed_while_the_engine_pushes_a_batch_waits_for_it_instead_of_deadlocking(
    sim_journey, sim_welcome, sim_team, publish, manager_alice, monkeypatch
):
    """The engine holds the batch's enrollments and then the journey (shared, to append to its
    stream); the stop held the journey and then waited for the enrollments: one of them was aborted
    (the stop, most often: the journey went on live)."""
    import threading

    from journeys.models import Enrollment, Journey
    from journeys.services import engine
    from journeys.services.entries import journeys_events_received
    from tests.locks import concurrently, wait_for_a_blocked_writer

    graph = {
        "steps": [
            {"id": "pause", "type": "wait", "seconds": 60, "next": "thanks"},
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=sim_team)
    journeys_events_received(events=[(zoe.pk, "order_paid", timezone.now())])
    claimed, open_step = threading.Event(), engine._open_step

    def open_step_once_the_stop_waits(*args, **kwargs):
        claimed.set()
        wait_for_a_blocked_writer()
        return open_step(*args, **kwargs)

    monkeypatch.setattr(engine, "_open_step", open_step_once_the_stop_waits)

    def stop():
        assert claimed.wait(10)
        journey_stop(journey_id=journey.pk, by=manager_alice)

    assert concurrently(lambda: engine.journeys_run_due(now=timezone.now() + dt.timedelta(minutes=2)), stop) == []
    assert Journey.objects.get(pk=journey.pk).status == "stopped"
    assert Enrollment.objects.get().status == "completed"  # the batch went first, the stop after it
    assert Dispatch.objects.get(kind="journey").status == "stopped"


def test_a_push_whose_approved_content_the_settings_no_longer_allow_is_refused_naming_the_field(
    sim_journey,
    sim_welcome,
    publish,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    settings,
    django_capture_on_commit_callbacks,
):
    """As a segment entry's dispatch and an API trigger are: the deep link's scheme was allowed when
    the journey was approved and has since been taken off the list; the stream is not opened."""
    from journeys.models import Enrollment

    settings.PUSHDESK_DEEP_LINK_SCHEMES = ["https", "shop"]
    sim_welcome.tap_action, sim_welcome.tap_url = "deep_link", "shop://welcome"
    sim_welcome.save()
    graph = {
        "steps": [
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    phone = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    settings.PUSHDESK_DEEP_LINK_SCHEMES = ["https"]
    client = api_key_for(manager_alice, scopes=["ingest"])
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    assert not Dispatch.objects.exists() and not Delivery.objects.exists()
    assert pushsim.state.count(phone) == 0
    enrollment = Enrollment.objects.get()
    assert enrollment.status == "failed"
    assert "tap_url" in enrollment.exit_reason and "shop" in enrollment.exit_reason


@pytest.fixture
def signup_journey(sim_journey, sim_welcome, publish):
    """Enters on signup, sends its welcome push at once, and ends for whoever purchases."""
    graph = {
        "steps": [
            {"id": "welcome", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    return publish(
        sim_journey(graph=graph, entry_kind="event", entry_event="signup", entry_segment=None, exit_event="purchase")
    )


def _post_events(client, *events):
    return client.post(
        "/api/v1/events/bulk/",
        {"events": [{"external_id": e, "name": n, "occurred_at": at.isoformat()} for e, n, at in events]},
        format="json",
    )


def test_a_signup_and_a_later_purchase_in_one_call_exit_the_profile_before_its_first_push(
    signup_journey, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    """The events' own times decide, not the order exits and entries are run in: the profile that
    already purchased when the call arrives is not welcomed as a new signup."""
    from journeys.models import Enrollment
    from journeys.selectors import version_step_stats

    phone = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    signed_up = timezone.now() - dt.timedelta(minutes=10)
    client = api_key_for(manager_alice, scopes=["ingest"])
    with django_capture_on_commit_callbacks(execute=True):
        answer = _post_events(
            client, ("zoe", "signup", signed_up), ("zoe", "purchase", signed_up + dt.timedelta(minutes=5))
        )
    assert answer.status_code == 200 and answer.json()["accepted"] == 2
    enrollment = Enrollment.objects.get(journey=signup_journey)
    assert (enrollment.status, enrollment.exit_reason, enrollment.step) == (
        "exited",
        "exit event 'purchase'",
        "welcome",
    )
    assert enrollment.finished_at is not None and enrollment.due_at is None
    assert not Delivery.objects.exists() and pushsim.state.count(phone) == 0
    stats = version_step_stats(signup_journey.live_version)
    assert (stats["welcome"]["entered"], stats["welcome"]["exit_event"], stats["welcome"]["exited"]) == (1, 1, 1)
    assert stats["welcome"]["pushed"] == 0 and stats["done"]["entered"] == 0


def test_a_purchase_at_the_very_time_of_the_signup_exits_too_whatever_the_order_in_the_call(
    signup_journey, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    from journeys.models import Enrollment

    phone = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    at = timezone.now() - dt.timedelta(minutes=1)
    client = api_key_for(manager_alice, scopes=["ingest"])
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_events(client, ("zoe", "purchase", at), ("zoe", "signup", at)).status_code == 200
    assert Enrollment.objects.get(journey=signup_journey).status == "exited"
    assert pushsim.state.count(phone) == 0


def test_a_purchase_older_than_the_signup_in_the_same_call_does_not_exit_the_new_enrollment(
    signup_journey, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    """An exit ends only what was entered before it: a profile that purchased, then signed up, is welcomed."""
    from journeys.models import Enrollment

    phone = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    signed_up = timezone.now() - dt.timedelta(minutes=10)
    client = api_key_for(manager_alice, scopes=["ingest"])
    with django_capture_on_commit_callbacks(execute=True):
        answer = _post_events(
            client, ("zoe", "signup", signed_up), ("zoe", "purchase", signed_up - dt.timedelta(seconds=1))
        )
    assert answer.status_code == 200
    enrollment = Enrollment.objects.get(journey=signup_journey)
    assert (enrollment.status, enrollment.exit_reason) == ("completed", "")
    assert pushsim.state.count(phone) == 1


def test_in_one_call_the_profile_that_purchased_after_signing_up_exits_and_the_other_is_welcomed(
    signup_journey, pushsim, sim_team, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    from journeys.models import Enrollment
    from journeys.selectors import version_step_stats

    phones = {
        name: DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team).token for name in ("zoe", "max")
    }
    signed_up = timezone.now() - dt.timedelta(minutes=10)
    client = api_key_for(manager_alice, scopes=["ingest"])
    with django_capture_on_commit_callbacks(execute=True):
        answer = _post_events(
            client,
            ("zoe", "purchase", signed_up - dt.timedelta(minutes=5)),
            ("zoe", "signup", signed_up),
            ("max", "signup", signed_up),
            ("max", "purchase", signed_up + dt.timedelta(seconds=1)),
        )
    assert answer.status_code == 200
    enrollments = {e.profile.external_id: e for e in Enrollment.objects.filter(journey=signup_journey)}
    assert (enrollments["zoe"].status, enrollments["zoe"].exit_reason) == ("completed", "")
    assert (enrollments["max"].status, enrollments["max"].exit_reason) == ("exited", "exit event 'purchase'")
    assert (pushsim.state.count(phones["zoe"]), pushsim.state.count(phones["max"])) == (1, 0)
    stats = version_step_stats(signup_journey.live_version)
    assert (stats["welcome"]["entered"], stats["welcome"]["pushed"], stats["welcome"]["exit_event"]) == (2, 1, 1)
    assert (stats["done"]["entered"], stats["done"]["exited"]) == (1, 1)


def test_the_events_call_counts_an_entry_ended_by_its_exit_event_as_entered_and_exited(signup_journey, sim_team):
    from journeys.services.entries import journeys_events_received

    zoe, max_ = ProfileFactory.create_batch(2)
    at = timezone.now() - dt.timedelta(minutes=10)
    events = [(zoe.pk, "signup", at), (zoe.pk, "purchase", at + dt.timedelta(minutes=5)), (max_.pk, "signup", at)]
    assert journeys_events_received(events=events) == {"exited": 1, "entered": 2}


def test_a_journey_that_enters_and_exits_on_the_same_event_still_enters_on_it(make_journey, publish):
    from journeys.models import Enrollment
    from journeys.services.entries import journeys_events_received

    graph = {
        "steps": [{"id": "pause", "type": "wait", "seconds": 3600, "next": "done"}, {"id": "done", "type": "exit"}]
    }
    journey = publish(
        make_journey(graph=graph, entry_kind="event", entry_event="visit", entry_segment=None, exit_event="visit")
    )
    zoe = ProfileFactory()
    assert journeys_events_received(events=[(zoe.pk, "visit", timezone.now())]) == {"exited": 0, "entered": 1}
    assert Enrollment.objects.get(journey=journey).status == "waiting"


@pytest.mark.embedded
def test_a_journey_steps_stream_takes_rows_only_for_profiles_the_journey_brought_to_that_step(
    sim_journey, sim_welcome, sim_team, vips, publish
):
    """Whoever appends to a push step's stream, each profile of the call must be enrolled in the
    version at that step, where the engine brings those it pushes: not one that never entered,
    one that had its push, or one the condition sent to wait an hour before the same push. A
    call naming any of them writes nothing and is refused, as the gate refuses a batch; the
    journey's own pushes join the stream, each when its profile gets to the step."""
    from delivery.services.dispatches import GateClosed
    from delivery.services.streams import Recipient, StreamClosed, stream_append
    from journeys.models import Enrollment
    from journeys.services.engine import journeys_run_due
    from journeys.services.entries import journeys_events_received
    from tests.factories import SegmentMemberFactory

    graph = {
        "steps": [
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "VIP", "segment": vips.pk, "next": "thanks"}],
                "else": "later",
            },
            {"id": "later", "type": "wait", "seconds": 3600, "next": "thanks"},
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    vip, other, outsider = ProfileFactory.create_batch(3)
    for profile in (vip, other, outsider):
        DeviceFactory(profile=profile, app=sim_team)
    SegmentMemberFactory(segment=vips, profile=vip)
    journey = publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    version = journey.live_version
    now = timezone.now()
    journeys_events_received(events=[(vip.pk, "order_paid", now), (other.pk, "order_paid", now)])
    stream = Dispatch.objects.get(kind="journey", standing=True)
    assert list(Delivery.objects.filter(dispatch=stream).values_list("profile_id", flat=True)) == [vip.pk]
    assert Enrollment.objects.get(profile=other).status == "waiting"
    # The journey's own lock, as its engine appends under it.
    lock = (
        "SELECT j.id FROM journeys_journey j JOIN journeys_journeyversion v ON v.journey_id = j.id "
        "WHERE v.id = %s AND j.status = 'live' FOR SHARE OF j",
        [version.pk],
    )
    for forged in ([outsider], [other], [vip], [other, outsider]):
        with pytest.raises(GateClosed, match="not enrolled"):
            stream_append(
                dispatch_id=stream.pk,
                kind=stream.kind,
                app_id=sim_team.pk,
                recipients=[Recipient(p.pk) for p in forged],
                source_lock=lock,
            )
    # Naming another kind passes by no check: the statement takes no row for a journey's stream then.
    with pytest.raises(StreamClosed, match="dispatch"):
        stream_append(
            dispatch_id=stream.pk,
            kind=Dispatch.Kind.API_TRIGGER,
            app_id=sim_team.pk,
            recipients=[Recipient(outsider.pk)],
            source_lock=lock,
        )
    assert list(Delivery.objects.filter(dispatch__kind="journey").values_list("profile_id", flat=True)) == [vip.pk]
    journeys_run_due(now=now + dt.timedelta(hours=2))
    sent = Delivery.objects.filter(dispatch__kind="journey").order_by("id").values_list("profile_id", flat=True)
    assert list(sent) == [vip.pk, other.pk]
    assert set(Enrollment.objects.filter(journey=journey).values_list("status", flat=True)) == {"completed"}


def test_a_replay_enters_and_ends_at_once_a_profile_whose_exit_event_came_since_its_entry_event(
    signup_journey,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    enrollments_refused,
    django_capture_on_commit_callbacks,
):
    """Zoe's signup could not enter her (kept for a replay); her purchase came in a later call,
    ending nothing (she was not in). The replay entered her and welcomed her, though she had
    already done what the journey stops for. It now ends her passage at once, as a call carrying
    both would (counted entered and exited by the exit event), and her phone gets nothing. Max's
    purchase, stored since too but older than his signup, ends nothing: he is welcomed."""
    from audiences.services.events import events_replay_due
    from journeys.models import Enrollment
    from journeys.selectors import version_step_stats

    phones = {
        name: DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team).token for name in ("zoe", "max")
    }
    signed_up = timezone.now() - dt.timedelta(minutes=10)
    client = api_key_for(manager_alice, scopes=["ingest"])
    with enrollments_refused(), django_capture_on_commit_callbacks(execute=True):
        assert _post_events(client, ("zoe", "signup", signed_up), ("max", "signup", signed_up)).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        answer = _post_events(
            client,
            ("zoe", "purchase", signed_up + dt.timedelta(minutes=5)),
            ("max", "purchase", signed_up - dt.timedelta(minutes=5)),
        )
    assert answer.status_code == 200 and not Enrollment.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        later = timezone.now() + dt.timedelta(minutes=1, seconds=1)
        assert events_replay_due(now=later) == {
            "replayed": 1,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 2, "failed": 0, "dropped": 0},
        }
    enrollments = {e.profile.external_id: e for e in Enrollment.objects.filter(journey=signup_journey)}
    assert (enrollments["zoe"].status, enrollments["zoe"].exit_reason) == ("exited", "exit event 'purchase'")
    assert (enrollments["max"].status, enrollments["max"].exit_reason) == ("completed", "")
    assert (pushsim.state.count(phones["zoe"]), pushsim.state.count(phones["max"])) == (0, 1)
    stats = version_step_stats(signup_journey.live_version)
    assert (stats["welcome"]["entered"], stats["welcome"]["pushed"], stats["welcome"]["exit_event"]) == (2, 1, 1)


def test_a_replay_run_after_the_resume_does_not_enter_an_event_that_came_while_the_journey_was_paused(
    paid_journey,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    django_capture_on_commit_callbacks,
):
    """A paused journey takes no entries: Zoe's order_paid, come while it was paused, is counted
    "not entered while paused". That count failing, the call kept the events for a replay, run
    after the resume: it entered her and pushed, as no call during the pause would have. It is
    judged as of when the event was stored now: counted, not entered. Max's, stored before the
    pause and replayed after the resume, enters him."""
    from audiences.services.events import events_replay_due
    from journeys.models import Enrollment
    from journeys.selectors import version_step_stats
    from journeys.services.lifecycle import journey_pause, journey_resume
    from tests.journeys.conftest import writes_refused

    phones = {
        name: DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team).token for name in ("zoe", "max")
    }
    client = api_key_for(manager_alice, scopes=["ingest"])
    with writes_refused("journeys_enrollment"), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "max").status_code == 200
    journey_pause(journey_id=paid_journey.pk, by=manager_alice)
    with writes_refused("journeys_stepstat"), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    journey_resume(journey_id=paid_journey.pk, by=manager_alice)
    with django_capture_on_commit_callbacks(execute=True):
        later = timezone.now() + dt.timedelta(minutes=1, seconds=1)
        assert events_replay_due(now=later) == {
            "replayed": 2,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 2, "failed": 0, "dropped": 0},
        }
    assert list(Enrollment.objects.values_list("profile__external_id", "status")) == [("max", "completed")]
    assert (pushsim.state.count(phones["zoe"]), pushsim.state.count(phones["max"])) == (0, 1)
    assert version_step_stats(paid_journey.live_version)["thanks"]["skipped_paused"] == 1


def test_a_replay_enters_only_the_journeys_and_versions_live_when_its_events_were_stored(
    paid_journey,
    sim_journey,
    sim_welcome,
    publish,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    enrollments_refused,
    django_capture_on_commit_callbacks,
):
    """Zoe's order_paid could not enter her (kept for a replay). Before the replay ran, a journey
    entering on order_paid went live, another's new version came to enter on it (its first entered
    on signup), and the paid journey's version 2 replaced version 1, on order_paid still. The
    replay entered all three and pushed three times, though the call, when the event came, would
    have entered the paid journey alone. It now enters that one, on the version live now (version
    1 takes no one new; version 2 enters on the same event), and no journey that did not take
    order_paid then."""
    from audiences.services.events import events_replay_due
    from journeys.models import Enrollment
    from journeys.services.lifecycle import journey_version_edit

    graph = {
        "steps": [
            {"id": "hello", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    switched = publish(sim_journey(graph=graph, entry_kind="event", entry_event="signup", entry_segment=None))
    token = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    client = api_key_for(manager_alice, scopes=["ingest"])
    with enrollments_refused(), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    late = publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    journey_version_edit(journey_id=switched.pk, by=manager_alice, entry_event="order_paid")
    publish(switched)
    journey_version_edit(journey_id=paid_journey.pk, by=manager_alice, exit_event="refund")
    paid_journey = publish(paid_journey)
    assert paid_journey.live_version.number == 2
    with django_capture_on_commit_callbacks(execute=True):
        later = timezone.now() + dt.timedelta(minutes=1, seconds=1)
        assert events_replay_due(now=later) == {
            "replayed": 1,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 1, "failed": 0, "dropped": 0},
        }
    entered = Enrollment.objects.values_list("journey_id", "version__number", "status")
    assert list(entered) == [(paid_journey.pk, 2, "completed")]
    assert not Enrollment.objects.filter(journey__in=(late, switched)).exists()
    assert pushsim.state.count(token) == 1


def test_a_replay_run_while_the_journey_is_paused_holds_inside_whom_its_events_entered_before_the_pause(
    paid_journey,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    enrollments_refused,
    django_capture_on_commit_callbacks,
):
    """Zoe's order_paid came while the journey was live; her entry failed and was kept for a
    replay, which ran after the journey was paused: it counted her "not entered while paused" and
    she was lost, though the call would have entered her and the pause would have held her. The
    replay now enters her held, as the pause holds whoever is inside: nothing of her passage runs
    (no push) until the resume, when she goes on from the entry step. Max's order_paid, come
    during the pause, is counted not entered, as before."""
    from audiences.services.events import events_replay_due
    from delivery.services.stream_senders import streams_send
    from journeys.models import Enrollment
    from journeys.selectors import version_step_stats
    from journeys.services.engine import journeys_run_due
    from journeys.services.lifecycle import journey_pause, journey_resume
    from tests.journeys.conftest import writes_refused

    phones = {
        name: DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team).token for name in ("zoe", "max")
    }
    client = api_key_for(manager_alice, scopes=["ingest"])
    with enrollments_refused(), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    journey_pause(journey_id=paid_journey.pk, by=manager_alice)
    with writes_refused("journeys_stepstat"), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "max").status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        later = timezone.now() + dt.timedelta(minutes=1, seconds=1)
        assert events_replay_due(now=later) == {
            "replayed": 2,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 2, "failed": 0, "dropped": 0},
        }
    zoe = Enrollment.objects.get()
    assert (zoe.profile.external_id, zoe.status, zoe.step, zoe.due_at) == ("zoe", "active", "thanks", None)
    assert zoe.held_due_at is not None
    assert journeys_run_due(now=later).enrollments == 0
    streams_send(budget=0)
    assert pushsim.state.count(phones["zoe"]) == 0
    assert version_step_stats(paid_journey.live_version)["thanks"]["skipped_paused"] == 1  # Max's alone
    with django_capture_on_commit_callbacks(execute=True):
        journey_resume(journey_id=paid_journey.pk, by=manager_alice)
    journeys_run_due(now=later)
    streams_send(budget=0)
    assert list(Enrollment.objects.values_list("profile__external_id", "status")) == [("zoe", "completed")]
    assert (pushsim.state.count(phones["zoe"]), pushsim.state.count(phones["max"])) == (1, 0)
    stats = version_step_stats(paid_journey.live_version)["thanks"]
    assert (stats["entered"], stats["pushed"], stats["skipped_paused"]) == (1, 1, 1)


def test_a_replay_dates_its_entries_when_their_events_were_stored_so_a_later_events_wait_counts_from_then(
    sim_journey,
    sim_welcome,
    publish,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    enrollments_refused,
    django_capture_on_commit_callbacks,
):
    """Re-entry after 10 minutes. Zoe's order_paid could not enter her; the replay ran a quarter
    of an hour later and entered her, dated at its own time, so her next order_paid, a moment
    after, found her entry a moment old and did not enter her, though the call would have entered
    her a quarter of an hour before and the wait was over. The entry is dated when its event was
    stored now (it runs, and pushes, at the replay's time): her next order_paid enters her again."""

    from audiences.models import Event
    from audiences.services.events import events_replay_due
    from delivery.services.stream_senders import streams_send
    from journeys.models import Enrollment

    token, client = _zoe_and_a_journey_reentered_after_ten_minutes(
        sim_journey, sim_welcome, publish, sim_team, api_key_for, manager_alice
    )
    with enrollments_refused(), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    _replay_stored_minutes_ago(15)
    with django_capture_on_commit_callbacks(execute=True):
        assert events_replay_due() == {
            "replayed": 1,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 1, "failed": 0, "dropped": 0},
        }
    first = Enrollment.objects.get()
    assert first.entered_at == Event.objects.get().received_at
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    streams_send(budget=0)
    assert list(Enrollment.objects.order_by("entry_number").values_list("entry_number", "status")) == [
        (1, "completed"),
        (2, "completed"),
    ]
    assert pushsim.state.count(token) == 2


def test_a_replays_entry_reads_a_condition_on_an_event_since_entering_from_when_its_event_was_stored(
    sim_journey,
    sim_welcome,
    publish,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    enrollments_refused,
    django_capture_on_commit_callbacks,
):
    """Zoe's order_paid could not enter her; she opened the app five minutes after it. The replay,
    run a quarter of an hour after her order, dates her entry then, and its first step, a condition
    on an app_open since entering, reads from that date, as it would once the enrollment is read
    back: she opened the app since, and gets the push."""

    from audiences.services.events import events_replay_due
    from journeys.models import Enrollment
    from tests.factories import EventFactory

    graph = {
        "steps": [
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "opened", "event": "app_open", "next": "thanks"}],
                "else": "quiet",
            },
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "quiet", "type": "exit"},
            {"id": "done", "type": "exit"},
        ]
    }
    publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    zoe = ProfileFactory(external_id="zoe")
    token = DeviceFactory(profile=zoe, app=sim_team).token
    client = api_key_for(manager_alice, scopes=["ingest"])
    with enrollments_refused(), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    _replay_stored_minutes_ago(15)
    EventFactory(profile=zoe, name="app_open", occurred_at=timezone.now() - dt.timedelta(minutes=10))
    with django_capture_on_commit_callbacks(execute=True):
        assert events_replay_due() == {
            "replayed": 1,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 1, "failed": 0, "dropped": 0},
        }
    enrollment = Enrollment.objects.get()
    assert (enrollment.status, [step for step, _, _ in enrollment.history]) == (
        "completed",
        ["check", "thanks", "done"],
    )
    assert pushsim.state.count(token) == 1
