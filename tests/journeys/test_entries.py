"""Entries on events run late (a replay): what they count, how they read, what they cost."""

import datetime as dt
import re

import pytest
from django.utils import timezone

from tests.factories import DeviceFactory, ProfileFactory
from tests.journeys.test_streams import _post_event

pytestmark = pytest.mark.django_db


def _push_then_exit(content_id: int, step: str = "thanks") -> dict:
    return {
        "steps": [
            {"id": step, "type": "push", "content": content_id, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


def _text(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


def _replay_due(capture) -> dict:
    from audiences.services.events import events_replay_due

    with capture(execute=True):
        return events_replay_due(now=timezone.now() + dt.timedelta(minutes=1, seconds=1))


def test_a_replays_event_a_journey_took_only_since_it_was_stored_is_counted_not_live_then(
    sim_journey,
    sim_welcome,
    publish,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    approver_bob,
    login,
    enrollments_refused,
    django_capture_on_commit_callbacks,
):
    """Zoe's and Max's order_paid could not enter them (kept for a replay). Before the replay ran,
    a second journey entering on order_paid went live: the replay rightly entered them in the paid
    journey alone, but counted the other's passing over them nowhere, so its entry step read as
    though no order_paid had reached it. They are counted there now, "not live then", as a pause's
    are counted "not entered while paused": in its figures, the API's and the journey's page."""
    from journeys.models import Enrollment
    from journeys.selectors import version_step_stats

    paid = publish(
        sim_journey(
            graph=_push_then_exit(sim_welcome.pk), entry_kind="event", entry_event="order_paid", entry_segment=None
        )
    )
    for name in ("zoe", "max"):
        DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team)
    client = api_key_for(manager_alice, scopes=["ingest"])
    with enrollments_refused(), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe", "max", "zoe").status_code == 200
    late = publish(
        sim_journey(
            name="Late",
            graph=_push_then_exit(sim_welcome.pk, "hello"),
            entry_kind="event",
            entry_event="order_paid",
            entry_segment=None,
        )
    )
    assert _replay_due(django_capture_on_commit_callbacks) == {
        "replayed": 1,
        "failed": 0,
        "dropped": 0,
        "events": {"replayed": 3, "failed": 0, "dropped": 0},
    }
    assert set(Enrollment.objects.values_list("journey_id", flat=True)) == {paid.pk}
    assert version_step_stats(late.live_version)["hello"]["skipped_not_live"] == 2  # once a profile
    assert version_step_stats(paid.live_version)["thanks"]["skipped_not_live"] == 0

    steps = {s["id"]: s for s in api_key_for(approver_bob).get(f"/api/v1/journeys/{late.pk}/").json()["steps"]}
    assert steps["hello"]["skipped_not_live"] == 2
    page = _text(login(approver_bob).get(f"/admin/journeys/journey/{late.pk}/change/"))
    assert "Replayed entry events not taken, the journey not live when they were stored: 2." in page
    assert "not entered, not live then 2" in page


def test_a_replayed_entrys_page_says_its_steps_ran_when_the_replay_entered_it_after_its_entered_at(
    sim_journey,
    sim_welcome,
    publish,
    pushsim,
    sim_team,
    api_key_for,
    manager_alice,
    viewer_carol,
    login,
    enrollments_refused,
    django_capture_on_commit_callbacks,
):
    """Zoe's order_paid could not enter her; the replay, a quarter of an hour later, dated her entry
    when the event was stored, and ran her steps (the push went out) at its own time: the page read
    "Entered at 20:50", then "thanks 21:05", a quarter of an hour at a push step nothing explained.
    The steps keep the times they ran (the push's send says so too); the page now says the entry was
    made late, by the replay, and from when its steps ran. An entry made when its event came
    says nothing of the kind."""
    from django.db.models import F

    from audiences.models import Event, EventReplay
    from config.zones import zoned
    from journeys.models import Enrollment, JourneyVersion

    publish(
        sim_journey(
            graph=_push_then_exit(sim_welcome.pk), entry_kind="event", entry_event="order_paid", entry_segment=None
        )
    )
    token = DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=sim_team).token
    DeviceFactory(profile=ProfileFactory(external_id="max"), app=sim_team)
    client = api_key_for(manager_alice, scopes=["ingest"])
    with enrollments_refused(), django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "zoe").status_code == 200
    ago = dt.timedelta(minutes=15)
    Event.objects.update(occurred_at=F("occurred_at") - ago, received_at=F("received_at") - ago)
    EventReplay.objects.update(created_at=F("created_at") - ago, next_attempt_at=F("next_attempt_at") - ago)
    JourneyVersion.objects.update(live_at=F("live_at") - ago)
    assert _replay_due(django_capture_on_commit_callbacks)["replayed"] == 1
    with django_capture_on_commit_callbacks(execute=True):
        assert _post_event(client, "max").status_code == 200
    zoe = Enrollment.objects.get(profile__external_id="zoe")
    assert zoe.entered_at == Event.objects.get(profile__external_id="zoe").received_at
    ran = dt.datetime.fromisoformat(zoe.history[0][1])
    assert ran - zoe.entered_at > dt.timedelta(minutes=14)  # the steps keep the replay's time
    assert pushsim.state.count(token) == 1

    page = _text(login(viewer_carol).get(f"/admin/journeys/enrollment/{zoe.pk}/change/"))
    entered, replayed = zoned(zoe.entered_at, "UTC"), zoned(ran, "UTC")
    assert (
        f"{entered}, when its entry event was stored. Its entry failed then and was made later, when the event "
        f"was replayed: its steps ran from {replayed}."
    ) in page
    # Had the journey been paused meanwhile (the replay holds inside whom it enters until the
    # resume), the page names the pause: the steps ran from the resume, not the replay.
    from journeys.models import JourneyPause

    paused, resumed = zoe.entered_at + dt.timedelta(minutes=2), ran - dt.timedelta(seconds=30)
    JourneyPause.objects.create(journey=zoe.journey, paused_at=paused, ended_at=resumed)
    page = _text(login(viewer_carol).get(f"/admin/journeys/enrollment/{zoe.pk}/change/"))
    assert (
        f"was replayed: its steps ran from {replayed}. The journey was paused meanwhile, from "
        f"{zoned(paused, 'UTC')} to {zoned(resumed, 'UTC')}."
    ) in page
    max_ = Enrollment.objects.get(profile__external_id="max")
    page = _text(login(viewer_carol).get(f"/admin/journeys/enrollment/{max_.pk}/change/"))
    assert zoned(max_.entered_at, "UTC") in page and "replayed" not in page


def _wait_then_exit(wait: dict) -> dict:
    return {"steps": [{"id": "pause", "type": "wait", "next": "done", **wait}, {"id": "done", "type": "exit"}]}


def _wall_time(moment: dt.datetime, zone_name: str) -> tuple[int, int]:
    from zoneinfo import ZoneInfo

    local = moment.astimezone(ZoneInfo(zone_name))
    return local.hour, local.minute


@pytest.mark.embedded
def test_an_events_call_reads_the_apps_rules_with_the_live_journeys_not_once_a_version_a_call(
    make_journey, publish, team, django_assert_num_queries
):
    """Two journeys entered on a visit wait, one until 09:00, one two whole days, each read in the
    app's default zone for a profile without one. The live journeys an events call reads are kept
    per process; their app's rules were not read with them, so each call read them once per
    journey. They are read with the journeys now: no call reads them."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from delivery.models import DeliveryRules
    from journeys.models import Enrollment
    from journeys.services.engine import journey_default_zone
    from journeys.services.entries import _live_for_events, journeys_events_received

    DeliveryRules.objects.create(app=team, default_timezone="America/New_York")
    morning, later = (
        publish(
            make_journey(
                name=name, graph=_wait_then_exit(wait), entry_kind="event", entry_event="visit", entry_segment=None
            )
        )
        for name, wait in (("Morning", {"until": "09:00"}), ("Later", {"seconds": 2 * 86400}))
    )
    live = _live_for_events()
    with django_assert_num_queries(0):
        zones = [journey_default_zone(version.journey) for version in live.entries["visit"]]
    assert zones == ["America/New_York"] * 2

    nowhere = ProfileFactory(timezone="")
    now = timezone.now()
    with CaptureQueriesContext(connection) as call:
        assert journeys_events_received(events=[(nowhere.pk, "visit", now)], live=live)["entered"] == 2
    assert not [q["sql"] for q in call.captured_queries if "delivery_deliveryrules" in q["sql"]]
    due = dict(Enrollment.objects.values_list("journey_id", "due_at"))
    assert _wall_time(due[morning.pk], "America/New_York") == (9, 0)
    assert _wall_time(due[later.pk], "America/New_York") == _wall_time(now, "America/New_York")


@pytest.mark.embedded
def test_a_change_of_the_apps_default_zone_reaches_the_next_events_call_at_once(
    make_journey, publish, team, admin_erin
):
    """The app's rules are kept with the live journeys (for a minute): their first save and each
    change of them moves the journeys stamp, so the next events call reads them afresh, not a
    minute later."""
    from accounts.services import access_grant
    from delivery.services.rules import delivery_rules_save
    from journeys.models import Enrollment
    from journeys.services.entries import _live_for_events, journeys_events_received

    access_grant(obj=team, to=admin_erin, by=None)
    journey = publish(
        make_journey(
            graph=_wait_then_exit({"until": "09:00"}), entry_kind="event", entry_event="visit", entry_segment=None
        )
    )

    def due_of_a_visit() -> dt.datetime:
        profile = ProfileFactory(timezone="")
        journeys_events_received(events=[(profile.pk, "visit", timezone.now())])
        return Enrollment.objects.get(journey=journey, profile=profile).due_at

    assert _wall_time(due_of_a_visit(), "UTC") == (9, 0)  # no rules: UTC
    kept = _live_for_events()
    delivery_rules_save(app_id=team.pk, by=admin_erin, default_timezone="America/New_York")
    assert _live_for_events() is not kept
    assert _wall_time(due_of_a_visit(), "America/New_York") == (9, 0)
    delivery_rules_save(app_id=team.pk, by=admin_erin, default_timezone="Asia/Tokyo")
    assert _wall_time(due_of_a_visit(), "Asia/Tokyo") == (9, 0)


def _approve_between_the_read_and_the_entry(monkeypatch, journey, manager_alice, approver_bob, events, **changes):
    """Run an events call whose read of the live journeys is followed, before its entry is
    written, by the approval of a new version (``changes``) in another session; return its counts."""
    import threading

    from journeys.services import entries
    from journeys.services.lifecycle import journey_approve, journey_submit, journey_version_edit
    from tests.locks import concurrently

    read, approved = threading.Event(), threading.Event()
    live_for_events = entries._live_for_events

    def read_then_wait_for_the_approval(*args, **kwargs):
        live = live_for_events(*args, **kwargs)
        read.set()
        assert approved.wait(10)
        return live

    monkeypatch.setattr(entries, "_live_for_events", read_then_wait_for_the_approval)
    counts = {}

    def events_call():
        counts.update(entries.journeys_events_received(events=events))

    def approve():
        assert read.wait(10)
        journey_version_edit(journey_id=journey.pk, by=manager_alice, **changes)
        journey_submit(journey_id=journey.pk, by=manager_alice)
        journey_approve(journey_id=journey.pk, by=approver_bob)
        approved.set()

    assert concurrently(events_call, approve) == []
    monkeypatch.setattr(entries, "_live_for_events", live_for_events)
    return counts


@pytest.mark.django_db(transaction=True)
def test_an_entry_event_read_live_just_before_a_new_version_enters_that_version(
    sim_journey, sim_welcome, sim_team, publish, manager_alice, approver_bob, monkeypatch
):
    """The events call reads the live versions, then a new version entering on the same event is
    approved before the entry is written: the entry found the version it read retired and entered
    no one, counted nowhere. It enters the version now live, as a replay takes a version approved
    since, once, and its first push goes out once."""
    from delivery.models import Delivery
    from journeys.models import Enrollment
    from journeys.selectors import version_step_stats

    journey = publish(
        sim_journey(
            graph=_push_then_exit(sim_welcome.pk), entry_kind="event", entry_event="order_paid", entry_segment=None
        )
    )
    first = journey.live_version
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=sim_team)
    counts = _approve_between_the_read_and_the_entry(
        monkeypatch,
        journey,
        manager_alice,
        approver_bob,
        [(zoe.pk, "order_paid", timezone.now())],
        graph=_push_then_exit(sim_welcome.pk, step="hello"),
    )
    journey.refresh_from_db()
    assert journey.live_version.number == 2
    enrollment = Enrollment.objects.get(profile=zoe)
    assert (enrollment.version_id, enrollment.status) == (journey.live_version_id, "completed")
    assert counts["entered"] == 1
    assert version_step_stats(journey.live_version)["hello"]["entered"] == 1
    assert not version_step_stats(first).get("thanks", {}).get("entered")
    assert Delivery.objects.filter(profile=zoe).count() == 1


@pytest.mark.django_db(transaction=True)
def test_an_entry_event_read_live_just_before_a_new_version_on_another_event_is_counted(
    sim_journey, sim_welcome, sim_team, publish, manager_alice, approver_bob, monkeypatch
):
    """The new version approved between the read and the entry enters on another event: the
    event enters no one, counted nowhere. It is counted on the entry step of the version it came
    under, not entered (``skipped_not_live``: that version was no longer live when its entry was
    written), as a replay counts an event stored before the journey took it."""
    from journeys.models import Enrollment
    from journeys.selectors import version_step_stats

    journey = publish(
        sim_journey(
            graph=_push_then_exit(sim_welcome.pk), entry_kind="event", entry_event="order_paid", entry_segment=None
        )
    )
    first = journey.live_version
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=sim_team)
    counts = _approve_between_the_read_and_the_entry(
        monkeypatch,
        journey,
        manager_alice,
        approver_bob,
        [(zoe.pk, "order_paid", timezone.now())],
        entry_event="signup",
    )
    assert counts["entered"] == 0
    assert not Enrollment.objects.exists()
    assert version_step_stats(first)["thanks"]["skipped_not_live"] == 1
