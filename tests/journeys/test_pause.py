"""Pause and resume: a live journey held where everyone is, and put back on the air on the same
approved version; through the services, the engine, entries, the admin and the API."""

import datetime as dt
import re

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.utils import timezone

from accounts.models import ApprovalRequest
from accounts.services import TransitionError
from delivery.models import Delivery, Dispatch
from journeys.models import Enrollment, Journey
from journeys.selectors import version_step_stats
from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment, journeys_events_received, journeys_tick
from journeys.services.lifecycle import (
    journey_approve,
    journey_archive,
    journey_pause,
    journey_resume,
    journey_stop,
    journey_submit,
    journey_version_edit,
)
from tests.factories import DeviceFactory, ProfileFactory, SegmentMemberFactory, UserFactory
from tests.journeys.conftest import simple_graph

HOUR = dt.timedelta(hours=1)


def _text(response) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode()))


def _waiting_then_push(content_id: int, *, seconds: int = 3600) -> dict:
    return {
        "steps": [
            {"id": "later", "type": "wait", "seconds": seconds, "next": "push"},
            {"id": "push", "type": "push", "content": content_id, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


def _inside(journey) -> list[tuple[str, str]]:
    return sorted(
        Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).values_list("step", "status")
    )


def test_a_pause_holds_a_due_wait_and_its_push_and_the_resume_sends_it_once(
    sim_journey, sim_team, sim_welcome, publish, manager_alice, pushsim, django_capture_on_commit_callbacks
):
    """A wait that ends while the journey is paused runs nothing and sends nothing; at the resume it
    goes on where it was, and its push reaches each phone once, however often the engine runs."""
    phones = []
    for name in ("ann", "ben"):
        phones.append(DeviceFactory(profile=ProfileFactory(external_id=name), app=sim_team).token)
    t0 = timezone.now()
    journey = publish(sim_journey(graph=_waiting_then_push(sim_welcome.pk)), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    assert _inside(journey) == [("later", "waiting")] * 2

    journey_pause(journey_id=journey.pk, by=manager_alice, now=t0 + dt.timedelta(minutes=10))
    assert Journey.objects.get(pk=journey.pk).status == "paused"
    with django_capture_on_commit_callbacks(execute=True):
        assert journeys_run_due(now=t0 + 3 * HOUR).enrollments == 0  # the wait ended at t0 + 1h
        journeys_tick(now=t0 + 3 * HOUR, seconds=5)
    assert _inside(journey) == [("later", "waiting")] * 2  # no one lost, no one moved
    assert not Dispatch.objects.filter(kind="journey").exists()
    assert [pushsim.state.count(phone) for phone in phones] == [0, 0]
    assert version_step_stats(journey.live_version)["later"]["held"] == 2

    journey_resume(journey_id=journey.pk, by=manager_alice)
    assert set(Enrollment.objects.values_list("due_at", flat=True)) == {t0 + HOUR}  # due as they were
    with django_capture_on_commit_callbacks(execute=True):
        assert journeys_run_due(now=t0 + 3 * HOUR).enrollments == 2
    with django_capture_on_commit_callbacks(execute=True):
        assert journeys_run_due(now=t0 + 4 * HOUR).enrollments == 0
        journeys_tick(now=t0 + 4 * HOUR, seconds=5)
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"completed"}
    (dispatch,) = Dispatch.objects.filter(kind="journey")
    assert dispatch.accepted == 2
    assert [pushsim.state.count(phone) for phone in phones] == [1, 1]


@pytest.mark.embedded
def test_on_sqlite_the_engine_holds_a_paused_journeys_profiles_and_runs_them_at_the_resume(
    make_journey, publish, manager_alice, welcome
):
    ProfileFactory.create_batch(3)
    t0 = timezone.now()
    journey = publish(make_journey(graph=_waiting_then_push(welcome.pk)), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    journey_pause(journey_id=journey.pk, by=manager_alice)
    assert journeys_run_due(now=t0 + 2 * HOUR).enrollments == 0
    assert not Dispatch.objects.filter(kind="journey").exists()
    assert _inside(journey) == [("later", "waiting")] * 3
    journey_resume(journey_id=journey.pk, by=manager_alice)
    assert journeys_run_due(now=t0 + 2 * HOUR).enrollments == 3
    assert journeys_run_due(now=t0 + 3 * HOUR).enrollments == 0
    assert Dispatch.objects.filter(kind="journey").count() == 1
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"completed"}


def test_held_profiles_run_in_due_order_a_batch_at_a_time_at_the_resume(make_journey, publish, manager_alice):
    """Not all at once: the engine takes them by when each was due, within its usual batches."""
    graph = {"steps": [{"id": "later", "type": "wait", "seconds": 60, "next": "done"}, {"id": "done", "type": "exit"}]}
    ProfileFactory.create_batch(3)
    t0 = timezone.now()
    journey = publish(make_journey(graph=graph, entry_every_hours=0), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    firsts = list(Enrollment.objects.order_by("pk"))
    for minutes, enrollment in zip((3, 1, 2), firsts, strict=True):  # due at different times
        Enrollment.objects.filter(pk=enrollment.pk).update(due_at=t0 + dt.timedelta(minutes=minutes))
    journey_pause(journey_id=journey.pk, by=manager_alice)
    journey_resume(journey_id=journey.pk, by=manager_alice)
    report = journeys_run_due(now=t0 + HOUR, batch=1, max_batches=1)
    assert report.enrollments == 1
    assert Enrollment.objects.get(status="completed") == firsts[1]  # the one due first
    journeys_run_due(now=t0 + HOUR, batch=1)
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"completed"}


def test_event_entries_while_paused_are_counted_not_taken_and_resume_takes_them_again(
    sim_journey, sim_team, sim_welcome, publish, manager_alice, approver_bob, api_key_for, login, pushsim
):
    graph = {
        "steps": [
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    zoe, max_ = (ProfileFactory(external_id=name) for name in ("zoe", "max"))
    journey_pause(journey_id=journey.pk, by=manager_alice)
    now = timezone.now()
    events = [{"external_id": p.external_id, "name": "order_paid", "occurred_at": now.isoformat()} for p in (zoe, max_)]
    answer = api_key_for(manager_alice, scopes=["ingest"]).post(
        "/api/v1/events/bulk/", {"events": events}, format="json"
    )
    assert answer.status_code == 200
    assert journeys_events_received(events=[(zoe.pk, "order_paid", now)])["entered"] == 0
    assert not Enrollment.objects.exists()
    assert version_step_stats(journey.live_version)["thanks"]["skipped_paused"] == 3

    steps = {s["id"]: s for s in api_key_for(approver_bob).get(f"/api/v1/journeys/{journey.pk}/").json()["steps"]}
    assert steps["thanks"]["skipped_paused"] == 3
    page = _text(login(approver_bob).get(f"/admin/journeys/journey/{journey.pk}/change/"))
    assert "Entries not taken while paused: 3 (entry events)." in page
    assert "not entered while paused 3" in page

    journey_resume(journey_id=journey.pk, by=manager_alice)
    assert journeys_events_received(events=[(zoe.pk, "order_paid", timezone.now())])["entered"] == 1


def test_an_exit_event_still_ends_a_profile_held_by_the_pause(make_journey, publish, manager_alice, welcome):
    ada = ProfileFactory(external_id="ada")
    journey = publish(make_journey(graph=_waiting_then_push(welcome.pk), exit_event="purchase"))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    journey_pause(journey_id=journey.pk, by=manager_alice)
    assert journeys_events_received(events=[(ada.pk, "purchase", timezone.now())])["exited"] == 1
    enrollment = Enrollment.objects.get(profile=ada)
    assert (enrollment.status, enrollment.exit_reason, enrollment.held_due_at) == (
        "exited",
        "exit event 'purchase'",
        None,
    )


@pytest.mark.embedded
def test_a_replay_held_by_the_pause_ends_at_once_whom_its_exit_event_came_after_and_holds_the_others(
    sim_journey, sim_welcome, publish, manager_alice, pushsim
):
    """A replay run during a pause, of events stored before it, enters their profiles held; one
    whose exit event came at or after their entry event ends at once, before the entry step, as a
    live journey's entry run ends them: counted entered and exited there, nothing held for the
    resume. The others stay held, and go on at the resume."""
    graph = {
        "steps": [
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = publish(
        sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None, exit_event="refund")
    )
    zoe, max_ = (ProfileFactory(external_id=name) for name in ("zoe", "max"))
    stored = timezone.now()
    journey_pause(journey_id=journey.pk, by=manager_alice)
    events = [(zoe.pk, "order_paid", stored), (zoe.pk, "refund", stored), (max_.pk, "order_paid", stored)]

    assert journeys_events_received(events=events, received_at=stored) == {"exited": 1, "entered": 2}

    rows = {e.profile_id: e for e in Enrollment.objects.all()}
    ended, held = rows[zoe.pk], rows[max_.pk]
    assert (ended.status, ended.step, ended.exit_reason, ended.due_at, ended.held_due_at) == (
        "exited",
        "thanks",
        "exit event 'refund'",
        None,
        None,
    )
    assert ended.finished_at is not None
    assert (held.status, held.step, held.due_at, held.finished_at) == ("active", "thanks", None, None)
    assert held.held_due_at is not None
    stats = version_step_stats(journey.live_version)["thanks"]
    assert (stats["entered"], stats["exit_event"]) == (1, 1)

    journey_resume(journey_id=journey.pk, by=manager_alice)
    journeys_run_due(now=timezone.now() + HOUR)
    assert dict(Enrollment.objects.values_list("profile_id", "status")) == {zoe.pk: "exited", max_.pk: "completed"}
    stats = version_step_stats(journey.live_version)["thanks"]
    assert (stats["entered"], stats["exit_event"], stats["pushed"]) == (2, 1, 1)


@pytest.mark.embedded
def test_a_replay_that_read_the_journey_paused_and_enters_it_resumed_runs_its_entries_as_a_live_ones(
    sim_journey, sim_welcome, sim_team, publish, manager_alice, pushsim
):
    """A replay read the journey paused (its version kept with the journey as it was), and the
    resume committed before its entry was written: the entry found the journey live and did not
    hold its profiles, but the run read the journey paused and held them aside, in a live journey
    no resume would release: never run, never pushed. The entry runs them as a live journey's does,
    and the push goes out once."""
    from journeys.services.entries import _live_for_events

    graph = {
        "steps": [
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=sim_team)
    stored = timezone.now()
    journey_pause(journey_id=journey.pk, by=manager_alice)
    read_paused = _live_for_events()
    journey_resume(journey_id=journey.pk, by=manager_alice)

    events = [(zoe.pk, "order_paid", stored)]
    assert journeys_events_received(events=events, received_at=stored, live=read_paused)["entered"] == 1

    enrollment = Enrollment.objects.get(profile=zoe)
    assert (enrollment.status, enrollment.held_due_at) == ("completed", None)
    journeys_run_due(now=timezone.now() + HOUR)
    assert Delivery.objects.filter(device__profile=zoe).count() == 1
    stats = version_step_stats(journey.live_version)["thanks"]
    assert (stats["entered"], stats["pushed"], stats["held"], stats["due"]) == (1, 1, 0, 0)


def test_a_recurring_segment_read_missed_while_paused_is_skipped_counted_and_moved_after_the_resume(
    make_journey, publish, manager_alice
):
    t0 = timezone.now().replace(microsecond=0)
    journey = publish(make_journey(entry_every_hours=1), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journey_pause(journey_id=journey.pk, by=manager_alice, now=t0 + dt.timedelta(minutes=10))
    late = ProfileFactory(external_id="late")  # joins the segment during the pause
    assert journey_enter_segment(journey_id=journey.pk, now=t0 + 3 * HOUR) == 0
    journeys_tick(now=t0 + 3 * HOUR, seconds=1)
    resumed_at = t0 + 3 * HOUR + dt.timedelta(minutes=30)
    journey = journey_resume(journey_id=journey.pk, by=manager_alice, now=resumed_at)
    assert journey.next_entry_at == t0 + 4 * HOUR  # reads at t0 + 1h, 2h and 3h skipped, not fired at once
    assert version_step_stats(journey.live_version)["start"]["reads_skipped_paused"] == 3
    assert journey_enter_segment(journey_id=journey.pk, now=resumed_at) == 0
    assert journey_enter_segment(journey_id=journey.pk, now=t0 + 4 * HOUR) == 1
    assert Enrollment.objects.filter(profile=late).exists()


def test_a_one_off_segment_read_not_made_before_the_pause_is_made_at_the_resume(make_journey, publish, manager_alice):
    ProfileFactory.create_batch(2)
    t0 = timezone.now()
    journey = publish(make_journey(), now=t0)  # its read is due at t0, not made yet
    journey_pause(journey_id=journey.pk, by=manager_alice, now=t0)
    journeys_tick(now=t0 + HOUR, seconds=1)
    assert not Enrollment.objects.exists()
    assert Journey.objects.get(pk=journey.pk).status == "paused"  # not closed: nobody read yet
    journey = journey_resume(journey_id=journey.pk, by=manager_alice, now=t0 + 2 * HOUR)
    assert journey.next_entry_at == t0
    assert journey_enter_segment(journey_id=journey.pk, now=t0 + 2 * HOUR) == 2


def test_stop_works_from_paused_and_ends_everyone_held(make_journey, publish, manager_alice, welcome):
    ProfileFactory.create_batch(2)
    journey = publish(make_journey(graph=_waiting_then_push(welcome.pk)))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    journey_pause(journey_id=journey.pk, by=manager_alice)
    journey_stop(journey_id=journey.pk, by=manager_alice)
    journey = Journey.objects.get(pk=journey.pk)
    assert (journey.status, journey.paused_at) == ("stopped", None)
    assert set(Enrollment.objects.values_list("status", "exit_reason", "held_due_at")) == {
        ("exited", "journey stopped", None)
    }
    assert version_step_stats(journey.live_version)["later"]["stopped"] == 2
    with pytest.raises(TransitionError):
        journey_resume(journey_id=journey.pk, by=manager_alice)
    journey_archive(journey_id=journey.pk, by=manager_alice)


def test_pause_and_resume_refuse_the_wrong_state_and_the_wrong_people(
    make_journey, publish, manager_alice, approver_bob, viewer_carol, outsider_dave
):
    journey = make_journey()
    with pytest.raises(TransitionError, match="Only a live journey can be paused"):
        journey_pause(journey_id=journey.pk, by=manager_alice)
    journey = publish(journey)
    with pytest.raises(TransitionError, match="Only a paused journey can be resumed"):
        journey_resume(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(PermissionDenied):
        journey_pause(journey_id=journey.pk, by=viewer_carol)
    with pytest.raises(Http404):
        journey_pause(journey_id=journey.pk, by=outsider_dave)
    journey_pause(journey_id=journey.pk, by=approver_bob)
    with pytest.raises(TransitionError):
        journey_pause(journey_id=journey.pk, by=manager_alice)
    with pytest.raises(PermissionDenied):
        journey_resume(journey_id=journey.pk, by=viewer_carol)
    with pytest.raises(Http404):
        journey_resume(journey_id=journey.pk, by=outsider_dave)
    journey_resume(journey_id=journey.pk, by=approver_bob)
    assert Journey.objects.get(pk=journey.pk).status == "live"
    assert _audit_actions(journey)[-2:] == ["journey_paused", "journey_resumed"]


def _audit_actions(journey) -> list[str]:
    from django.contrib.contenttypes.models import ContentType

    from accounts.models import AuditEvent

    return list(
        AuditEvent.objects.filter(object_type=ContentType.objects.get_for_model(Journey), object_id=str(journey.pk))
        .order_by("pk")
        .values_list("action", flat=True)
    )


def test_a_new_version_approved_while_paused_runs_at_the_resume_without_another_approval(
    make_journey, publish, manager_alice, approver_bob, welcome
):
    ProfileFactory(external_id="ann")
    t0 = timezone.now()
    journey = publish(make_journey(graph=_waiting_then_push(welcome.pk), entry_every_hours=24), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    journey_pause(journey_id=journey.pk, by=manager_alice, now=t0)
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph={"steps": [{"id": "end", "type": "exit"}]})
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_approve(journey_id=journey.pk, by=approver_bob, now=t0 + HOUR)
    journey = Journey.objects.get(pk=journey.pk)
    assert (journey.status, journey.live_version.number) == ("paused", 2)
    requests = ApprovalRequest.objects.count()
    journey = journey_resume(journey_id=journey.pk, by=manager_alice, now=t0 + 2 * HOUR)
    assert (journey.status, journey.live_version.number) == ("live", 2)
    assert ApprovalRequest.objects.count() == requests
    assert journey.next_entry_at == t0 + HOUR  # the new version's first read is made, not skipped
    journeys_run_due(now=t0 + 2 * HOUR)  # ann finishes on the version she entered
    ann = Enrollment.objects.get()
    assert (ann.version.number, ann.status) == (1, "completed")


@pytest.mark.django_db(transaction=True)
def test_a_pause_pressed_while_the_engine_pushes_a_batch_waits_for_it_and_nothing_goes_twice(
    sim_journey, sim_welcome, sim_team, publish, manager_alice, monkeypatch
):
    """The batch holds its enrollments and then the journey (shared, to append to its stream); the
    pause takes the enrollments first, as a stop does: it waits for the batch, whose push goes once,
    then holds the rest. After the resume nothing is run or appended again."""
    import threading

    from journeys.services import engine
    from tests.locks import concurrently, wait_for_a_blocked_writer

    graph = {
        "steps": [
            {"id": "pause", "type": "wait", "seconds": 60, "next": "thanks"},
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "later"},
            {"id": "later", "type": "wait", "seconds": 3600, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=sim_team)
    journeys_events_received(events=[(zoe.pk, "order_paid", timezone.now())])
    claimed, open_step = threading.Event(), engine._open_step

    def open_step_once_the_pause_waits(*args, **kwargs):
        claimed.set()
        wait_for_a_blocked_writer()
        return open_step(*args, **kwargs)

    monkeypatch.setattr(engine, "_open_step", open_step_once_the_pause_waits)

    def pause():
        assert claimed.wait(10)
        journey_pause(journey_id=journey.pk, by=manager_alice)

    soon = timezone.now() + dt.timedelta(minutes=2)
    assert concurrently(lambda: engine.journeys_run_due(now=soon), pause) == []
    monkeypatch.setattr(engine, "_open_step", open_step)
    assert Journey.objects.get(pk=journey.pk).status == "paused"
    enrollment = Enrollment.objects.get()
    assert (enrollment.step, enrollment.status, enrollment.due_at) == ("later", "waiting", None)
    stream = Dispatch.objects.get(kind="journey")
    assert Delivery.objects.filter(dispatch=stream).count() == 1
    journey_resume(journey_id=journey.pk, by=manager_alice)
    assert engine.journeys_run_due(now=soon).enrollments == 0
    assert engine.journeys_run_due(now=soon + 2 * HOUR).enrollments == 1
    assert Enrollment.objects.get().status == "completed"
    assert Delivery.objects.count() == 1
    assert [h[0] for h in Enrollment.objects.get().history].count("thanks") == 1


def test_a_paused_journeys_stream_stays_open_and_takes_its_pushes_again_at_the_resume(
    sim_journey, sim_team, sim_welcome, publish, manager_alice, pushsim, django_capture_on_commit_callbacks
):
    from delivery.services.streams import streams_watch

    graph = {
        "steps": [
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    zoe, max_ = (ProfileFactory(external_id=name) for name in ("zoe", "max"))
    phones = [DeviceFactory(profile=p, app=sim_team).token for p in (zoe, max_)]
    with django_capture_on_commit_callbacks(execute=True):
        journeys_events_received(events=[(zoe.pk, "order_paid", timezone.now())])
    journey_pause(journey_id=journey.pk, by=manager_alice)
    streams_watch()
    stream = Dispatch.objects.get(kind="journey")
    assert stream.status == "sending"  # kept for the resume, not finished as a version no longer live
    journey_resume(journey_id=journey.pk, by=manager_alice)
    with django_capture_on_commit_callbacks(execute=True):
        journeys_events_received(events=[(max_.pk, "order_paid", timezone.now())])
    assert list(Dispatch.objects.filter(kind="journey").values_list("pk", flat=True)) == [stream.pk]
    assert [pushsim.state.count(phone) for phone in phones] == [1, 1]


# --- the admin ------------------------------------------------------------------------------------


@pytest.mark.presses("journeys.journey:transition/pause", "journeys.journey:transition/resume")
def test_pause_and_resume_ask_again_saying_who_is_inside_and_what_holds(
    login, manager_alice, viewer_carol, make_journey, publish, everyone, welcome
):
    for name in ("ann", "ben", "cy"):
        SegmentMemberFactory(segment=everyone, profile=ProfileFactory(external_id=name))
    journey = publish(make_journey(graph=simple_graph(condition_segment=everyone.pk, content=welcome.pk, wait=3600)))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    inside = Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).count()
    pause = f"/admin/journeys/journey/{journey.pk}/transition/pause/"
    resume = f"/admin/journeys/journey/{journey.pk}/transition/resume/"

    assert login(viewer_carol).post(pause, {"confirmed": "yes"}).status_code == 403  # a forged press
    client = login(manager_alice)
    page = _text(client.get(f"/admin/journeys/journey/{journey.pk}/change/"))
    assert "Pause" in page and "Resume" not in page
    asked = client.post(pause)
    text = _text(asked)
    assert asked.status_code == 200
    assert "Pause journey “Onboarding”?" in text and "cannot be undone" not in text
    assert f"{inside:,} profiles inside stay where they are" in text
    assert "Its push steps start no new batch" in text
    assert Journey.objects.get(pk=journey.pk).status == "live"
    assert client.post(pause, {"confirmed": "yes"}).status_code == 302
    assert Journey.objects.get(pk=journey.pk).status == "paused"

    page = _text(client.get(f"/admin/journeys/journey/{journey.pk}/change/"))
    assert "Resume" in page and "Paused since" in page and f"{inside:,} profiles held where they are" in page
    listed = _text(client.get("/admin/journeys/journey/"))
    assert "Paused" in listed and "v1 live, paused" in listed
    assert "Journey: Onboarding paused" in _text(client.get("/admin/"))

    assert login(viewer_carol).post(resume, {"confirmed": "yes"}).status_code == 403
    client = login(manager_alice)
    text = _text(client.post(resume))
    assert "Resume journey “Onboarding”?" in text and "without a new approval" in text
    assert Journey.objects.get(pk=journey.pk).status == "paused"
    assert client.post(resume, {"confirmed": "yes"}).status_code == 302
    assert Journey.objects.get(pk=journey.pk).status == "live"
    assert _inside(journey) == [("start", "waiting")] * inside


def test_stop_is_offered_on_a_paused_journey_and_asked_again(login, manager_alice, make_journey, publish):
    journey = publish(make_journey())
    journey_pause(journey_id=journey.pk, by=manager_alice)
    client = login(manager_alice)
    url = f"/admin/journeys/journey/{journey.pk}/transition/stop/"
    assert "This cannot be undone." in _text(client.post(url))
    assert client.post(url, {"confirmed": "yes"}).status_code == 302
    assert Journey.objects.get(pk=journey.pk).status == "stopped"


# --- the API --------------------------------------------------------------------------------------


def test_the_api_pauses_and_resumes_with_the_journeys_scope(make_journey, publish, api_key_for, manager_alice):
    journey = publish(make_journey())
    pause, resume = f"/api/v1/journeys/{journey.pk}/pause/", f"/api/v1/journeys/{journey.pk}/resume/"
    assert api_key_for(manager_alice, scopes=["read"]).post(pause).status_code == 403  # not its scope
    elsewhere = UserFactory(username="manager_erik", role="Manager")  # no access to the Shop app
    assert api_key_for(elsewhere, scopes=["journeys"]).post(pause).status_code == 404
    client = api_key_for(manager_alice, scopes=["journeys"])
    conflict = client.post(resume)
    assert (conflict.status_code, conflict.json()["code"]) == (409, "journey_not_paused")
    answer = client.post(pause)
    assert answer.status_code == 200
    assert (answer.json()["status"], answer.json()["live_version"]) == ("paused", 1)
    assert answer.json()["paused_at"] is not None
    assert answer.json()["version"]["status"] == "live"
    conflict = client.post(pause)
    assert (conflict.status_code, conflict.json()["code"]) == (409, "journey_not_live")
    assert "Only a live journey can be paused" in conflict.json()["detail"]
    answer = client.post(resume)
    assert (answer.status_code, answer.json()["status"], answer.json()["paused_at"]) == (200, "live", None)
    assert Journey.objects.get(pk=journey.pk).status == "live"


def test_a_key_whose_user_is_now_a_viewer_cannot_pause_or_resume(
    make_journey, publish, api_key_for, manager_alice, manager_mallory
):
    """Every role that may own a key may pause: the refused role is the Viewer, who owns no key. A
    key made while its user was a Manager is refused once the user is a Viewer, the journey untouched."""
    from django.contrib.auth.models import Group

    journey = publish(make_journey())
    client = api_key_for(manager_mallory, scopes=["journeys"])
    manager_mallory.groups.set([Group.objects.get(name="Viewer")])
    assert client.post(f"/api/v1/journeys/{journey.pk}/pause/").status_code == 401
    assert Journey.objects.get(pk=journey.pk).status == "live"
    journey_pause(journey_id=journey.pk, by=manager_alice)
    assert client.post(f"/api/v1/journeys/{journey.pk}/resume/").status_code == 401
    assert Journey.objects.get(pk=journey.pk).status == "paused"


def test_claiming_a_restored_copy_voids_a_paused_journeys_due_steps_as_a_live_ones(
    make_journey, publish, manager_alice, welcome
):
    """The original sends what was due when its copy was taken: a profile held by a pause whose wait
    ended is voided with the live ones (its resume on the copy sent it a second time); a wait not
    ended yet is kept, held, as a live journey's is kept."""
    from operations.services import instance_claim

    ProfileFactory.create_batch(2)
    t0 = timezone.now() - 3 * HOUR
    journey = publish(make_journey(graph=_waiting_then_push(welcome.pk)), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    ended, later = Enrollment.objects.order_by("pk")
    Enrollment.objects.filter(pk=later.pk).update(due_at=timezone.now() + HOUR)
    journey_pause(journey_id=journey.pk, by=manager_alice)
    assert instance_claim()["enrollments"] == 1
    ended.refresh_from_db()
    later.refresh_from_db()
    assert (ended.status, ended.held_due_at) == ("exited", None)
    assert (later.status, later.due_at) == ("waiting", None) and later.held_due_at is not None
    journey_resume(journey_id=journey.pk, by=manager_alice)
    assert journeys_run_due(now=timezone.now() + 2 * HOUR).enrollments == 1
    assert Dispatch.objects.get(kind="journey").profile_ids == [later.profile_id]


def test_the_pauses_made_before_they_were_kept_are_read_back_from_the_resumes_audit_events(
    make_journey, publish, manager_alice
):
    """The migration that starts keeping pauses finds the earlier ones (each resume's audit event
    says when its pause began) and the one under way, so that events stored during them and still
    waiting for a replay enter no one."""
    import importlib

    from django.apps import apps

    from journeys.models import JourneyPause

    journey = publish(make_journey(entry_kind="event", entry_event="order_paid", entry_segment=None))
    t0 = timezone.now() - 5 * HOUR
    for hours in (0, 2):
        journey_pause(journey_id=journey.pk, by=manager_alice, now=t0 + hours * HOUR)
        journey_resume(journey_id=journey.pk, by=manager_alice)
    journey_pause(journey_id=journey.pk, by=manager_alice, now=t0 + 4 * HOUR)
    kept = list(JourneyPause.objects.filter(journey=journey).values_list("paused_at", "ended_at"))
    assert [paused_at for paused_at, _ in kept] == [t0, t0 + 2 * HOUR, t0 + 4 * HOUR] and kept[2][1] is None
    JourneyPause.objects.all().delete()

    importlib.import_module("journeys.migrations.0010_journey_pauses").pauses_known(apps, None)
    found = list(JourneyPause.objects.filter(journey=journey).values_list("paused_at", "ended_at"))
    assert [paused_at for paused_at, _ in found] == [paused_at for paused_at, _ in kept]
    assert found[2][1] is None
    for (_, ended), (_, was) in zip(found[:2], kept[:2], strict=True):
        assert abs(ended - was) < dt.timedelta(seconds=1)  # the resume's audit event, written with it


@pytest.mark.django_db(transaction=True)
def test_an_entry_event_read_live_just_before_a_pause_enters_held_and_is_accounted_for(
    sim_journey, sim_welcome, sim_team, publish, manager_alice, monkeypatch
):
    """The events call reads the live journeys, then a pause commits before the entry is written:
    the profile enters held where the pause holds everyone (no push while paused), and goes on at
    the resume; it is never lost between the two figures."""
    import threading

    from journeys.services import entries
    from tests.locks import concurrently

    graph = {
        "steps": [
            {"id": "thanks", "type": "push", "content": sim_welcome.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = publish(sim_journey(graph=graph, entry_kind="event", entry_event="order_paid", entry_segment=None))
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=sim_team)
    read, paused = threading.Event(), threading.Event()
    live_for_events = entries._live_for_events

    def read_then_wait_for_the_pause(*args, **kwargs):
        live = live_for_events(*args, **kwargs)
        read.set()
        assert paused.wait(10)
        return live

    monkeypatch.setattr(entries, "_live_for_events", read_then_wait_for_the_pause)
    counts = {}

    def events_call():
        counts.update(journeys_events_received(events=[(zoe.pk, "order_paid", timezone.now())]))

    def pause():
        assert read.wait(10)
        journey_pause(journey_id=journey.pk, by=manager_alice)
        paused.set()

    assert concurrently(events_call, pause) == []
    monkeypatch.setattr(entries, "_live_for_events", live_for_events)
    stats = version_step_stats(journey.live_version)["thanks"]
    entered = Enrollment.objects.filter(profile=zoe).count()
    assert entered + stats.get("skipped_paused", 0) == 1
    enrollment = Enrollment.objects.get(profile=zoe)
    assert (enrollment.step, enrollment.status, enrollment.due_at) == ("thanks", "active", None)
    assert enrollment.held_due_at is not None
    assert counts["entered"] == 1
    assert not Delivery.objects.exists()

    journey_resume(journey_id=journey.pk, by=manager_alice)
    journeys_run_due(now=timezone.now() + dt.timedelta(seconds=5))
    assert Enrollment.objects.get(profile=zoe).status == "completed"
    assert Delivery.objects.count() == 1
