"""The engine: entries, every step type and branch kind, pushes through the pipeline to the simulator,
re-entry, exit criteria, versions, stopping, the gate, and two engines racing."""

import datetime as dt
import threading
from zoneinfo import ZoneInfo

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from audiences.services.events import events_ingest
from delivery.models import Delivery, Dispatch
from delivery.services.dispatches import GateClosed, dispatch_create
from journeys.models import Enrollment, Journey
from journeys.selectors import version_step_stats
from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment
from journeys.services.lifecycle import journey_stop, journey_version_edit
from tests.factories import DeviceFactory, EventFactory, ProfileFactory, SegmentMemberFactory
from tests.locks import ProfileHeld, concurrently, eventually, wait_for_blocked_writers
from tests.pg_statistics import rows_read, statistics_say_empty

EXIT = {"id": "done", "type": "exit"}


def _profiles(n, app, vips=None, vip_count=0, **kwargs):
    profiles = ProfileFactory.create_batch(n, **kwargs)
    for profile in profiles:
        DeviceFactory(profile=profile, app=app, platform="android")
    for profile in profiles[:vip_count]:
        SegmentMemberFactory(segment=vips, profile=profile)
    return profiles


def _enrollment(journey, profile):
    return Enrollment.objects.get(journey=journey, profile=profile)


def test_segment_entry_runs_each_profile_through_condition_to_push_or_exit(
    sim_journey, sim_team, vips, publish, pushsim, django_capture_on_commit_callbacks
):
    profiles = _profiles(5, sim_team, vips=vips, vip_count=2)
    with django_capture_on_commit_callbacks(execute=True):
        journey = publish(sim_journey())
    enrollments = Enrollment.objects.filter(journey=journey)
    assert enrollments.count() == 5
    assert set(enrollments.values_list("status", flat=True)) == {"completed"}
    vip = _enrollment(journey, profiles[0])
    assert [h[0] for h in vip.history] == ["start", "check", "push", "done"]
    assert vip.history[1][2] == "branch:VIP"
    other = _enrollment(journey, profiles[4])
    assert [h[2] for h in other.history] == ["passed", "branch:else", "exit"]
    (dispatch,) = Dispatch.objects.filter(kind="journey")
    assert sorted(dispatch.profile_ids) == sorted(p.pk for p in profiles[:2])
    assert dispatch.status == "done" and dispatch.accepted == 2
    tokens = {d.token for p in profiles[:2] for d in p.devices.all()}
    assert {r["token"] for r in pushsim.state.recent(limit=10)} == tokens
    stats = version_step_stats(journey.live_version)
    assert stats["check"]["passed"] == {"VIP": 2, "else": 3}
    assert stats["push"]["pushed"] == 2 and stats["done"]["exited"] == 5
    assert Journey.objects.get(pk=journey.pk).status == "live"


def test_one_off_journey_closes_when_everyone_is_through(
    sim_journey, sim_team, vips, publish, django_capture_on_commit_callbacks
):
    from journeys.services.entries import journeys_tick

    _profiles(2, sim_team)
    with django_capture_on_commit_callbacks(execute=True):
        journey = publish(sim_journey())
    journeys_tick()
    assert Journey.objects.get(pk=journey.pk).status == "closed"


def test_a_one_off_journey_with_a_new_version_open_stays_live_until_that_version_is_decided(
    sim_journey, sim_team, vips, publish, manager_alice, approver_bob, django_capture_on_commit_callbacks
):
    """Everyone is through the first version, and a colleague drafts the next one: closing the
    journey then left the draft neither editable nor submittable."""
    from journeys.services.entries import journeys_tick
    from journeys.services.lifecycle import journey_approve, journey_submit

    _profiles(2, sim_team)
    with django_capture_on_commit_callbacks(execute=True):
        journey = publish(sim_journey())
        finished = publish(sim_journey(name="Finished"))
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph={"steps": [EXIT]})
    journeys_tick()
    assert Journey.objects.get(pk=finished.pk).status == "closed"  # nothing open in it: closed as before
    assert Journey.objects.get(pk=journey.pk).status == "live"
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="unsubscribed")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journeys_tick()
    assert Journey.objects.get(pk=journey.pk).status == "live"
    with django_capture_on_commit_callbacks(execute=True):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    journeys_tick()
    journey = Journey.objects.get(pk=journey.pk)
    assert (journey.status, journey.live_version.number) == ("closed", 2)


def test_a_one_off_journey_whose_draft_is_discarded_closes_once_everyone_is_through(
    sim_journey, sim_team, publish, manager_alice, django_capture_on_commit_callbacks
):
    """A forgotten draft kept a finished one-off journey live until someone stopped it: discarded,
    the next beat closes the journey on the version that ran."""
    from journeys.services.entries import journeys_close_finished
    from journeys.services.lifecycle import journey_draft_discard

    _profiles(2, sim_team)
    with django_capture_on_commit_callbacks(execute=True):
        journey = publish(sim_journey())
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph={"steps": [EXIT]})
    assert journeys_close_finished() == 0
    assert Journey.objects.get(pk=journey.pk).status == "live"
    journey_draft_discard(journey_id=journey.pk, by=manager_alice)
    assert journeys_close_finished() == 1
    journey = Journey.objects.get(pk=journey.pk)
    assert (journey.status, journey.live_version.number) == ("closed", 1)
    assert Enrollment.objects.filter(journey=journey, status="completed").count() == 2


def _wait_graph(seconds=None, until=None, content=None):
    wait = {"id": "pause", "type": "wait", "next": "push" if content else "done"}
    wait.update({"seconds": seconds} if seconds is not None else {"until": until})
    steps = [wait, EXIT]
    if content:
        steps.insert(1, {"id": "push", "type": "push", "content": content, "next": "done"})
    return {"steps": steps}


@pytest.mark.embedded
def test_a_deleted_profile_inside_a_journey_is_counted_as_ended_where_it_was(
    make_journey, publish, manager_alice, welcome
):
    """A profile deleted while waiting (or not yet run) vanished from the step's figures with its
    enrollment: its step had entered it, and neither waited, passed on nor ended it any more. It
    is counted ended there ("deleted"), nothing of the profile kept; one that finished keeps counting."""
    from audiences.services.profiles import profiles_delete

    waiting, gone_before, finished, late = ProfileFactory.create_batch(4)
    graph = {
        "steps": [
            {"id": "pause", "type": "wait", "seconds": 3600, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = publish(make_journey(graph=graph))
    t0 = timezone.now()
    journey_enter_segment(journey_id=journey.pk, now=t0)
    profiles_delete(profile_ids=[gone_before.pk], by=manager_alice)  # entered, not run yet
    journeys_run_due(now=t0)
    Enrollment.objects.filter(profile=finished).update(due_at=t0)
    journeys_run_due(now=t0 + dt.timedelta(seconds=1))  # 'finished' passes the wait and ends
    profiles_delete(profile_ids=[waiting.pk, finished.pk], by=manager_alice)

    stats = version_step_stats(journey.live_version)
    pause, done = stats["pause"], stats["done"]
    assert (pause["entered"], pause["waiting"], pause["passed"]["next"]) == (4, 1, 1)
    assert pause["deleted"] == 2 and pause["exited"] == 2
    assert pause["entered"] == pause["waiting"] + pause["passed"]["next"] + pause["exited"]
    assert done["entered"] == done["exited"] == 1 and done["deleted"] == 0  # it had finished: counted as it was
    assert not Enrollment.objects.filter(profile_id__in=[waiting.pk, gone_before.pk, finished.pk]).exists()
    assert list(Enrollment.objects.values_list("profile_id", "status")) == [(late.pk, "waiting")]


def test_wait_for_a_duration_holds_profiles_until_due(make_journey, publish, team):
    ProfileFactory.create_batch(3)
    t0 = timezone.now()
    journey = publish(make_journey(graph=_wait_graph(seconds=3600)), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"waiting"}
    assert version_step_stats(journey.live_version)["pause"]["waiting"] == 3
    journeys_run_due(now=t0 + dt.timedelta(minutes=59))
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"waiting"}
    report = journeys_run_due(now=t0 + dt.timedelta(minutes=61))
    assert report.enrollments == 3
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"completed"}


def test_wait_until_a_time_of_day_uses_the_profiles_time_zone(make_journey, publish):
    tokyo = ProfileFactory(timezone="Asia/Tokyo")
    paris = ProfileFactory(timezone="Europe/Paris")
    nowhere = ProfileFactory(timezone="")
    t0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)  # 21:00 in Tokyo, 13:00 in Paris
    journey = publish(make_journey(graph=_wait_graph(until="09:00")), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    due = {e.profile_id: e.due_at for e in Enrollment.objects.all()}
    assert due[tokyo.pk] == dt.datetime(2026, 11, 26, 0, 0, tzinfo=dt.UTC)  # 09:00 next day, Tokyo
    assert due[paris.pk] == dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)
    assert due[nowhere.pk] == dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)  # no zone: UTC


@pytest.mark.embedded
def test_a_wait_until_a_time_of_day_reads_a_profile_without_a_zone_in_the_apps_default_zone(
    make_journey, publish, team, django_assert_num_queries
):
    """An app whose default time zone is Europe/Paris (its delivery rules, read for a profile
    without a zone, as its quiet hours are) waits "until 09:00" to 09:00 in Paris for a profile
    without a zone or with one it does not know, not 09:00 UTC; a profile's own zone still wins.
    The app's zone is read with the batch's versions: a batch costs as many queries as before,
    however many profiles it runs."""
    from django.test.utils import CaptureQueriesContext

    from delivery.models import DeliveryRules

    DeliveryRules.objects.create(app=team, default_timezone="Europe/Paris")
    tokyo = ProfileFactory(timezone="Asia/Tokyo")
    nowhere = ProfileFactory(timezone="")
    unknown = ProfileFactory(timezone="Mars/Olympus_Mons")
    t0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)  # 21:00 in Tokyo, 13:00 in Paris
    journey = publish(make_journey(graph=_wait_graph(until="09:00")), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    with CaptureQueriesContext(connection) as first:
        journeys_run_due(now=t0)
    due = {e.profile_id: e.due_at for e in Enrollment.objects.all()}
    assert due[tokyo.pk] == dt.datetime(2026, 11, 26, 0, 0, tzinfo=dt.UTC)  # 09:00 next day, Tokyo
    assert due[nowhere.pk] == dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)  # 09:00 in Paris (UTC+1)
    assert due[unknown.pk] == due[nowhere.pk]
    assert not [q for q in first.captured_queries if "delivery_deliveryrules" in q["sql"] and "JOIN" not in q["sql"]]

    ProfileFactory.create_batch(10, timezone="")
    more = publish(make_journey(name="More", graph=_wait_graph(until="09:00")), now=t0)
    journey_enter_segment(journey_id=more.pk, now=t0)
    with django_assert_num_queries(len(first.captured_queries)):
        journeys_run_due(now=t0)
    assert set(Enrollment.objects.filter(journey=more, profile__timezone="").values_list("due_at", flat=True)) == {
        dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)
    }


@pytest.mark.embedded
def test_an_event_entry_waits_until_a_time_of_day_in_the_apps_default_zone_for_a_profile_without_one(
    make_journey, publish, team, manager_alice, django_capture_on_commit_callbacks
):
    """An event's entries run their first steps at once: a wait until 09:00 there reads a profile
    without a zone in the app's default zone too."""
    from delivery.models import DeliveryRules

    DeliveryRules.objects.create(app=team, default_timezone="America/New_York")
    nowhere = ProfileFactory(timezone="")
    journey = publish(
        make_journey(graph=_wait_graph(until="09:00"), entry_kind="event", entry_event="visit", entry_segment=None)
    )
    with django_capture_on_commit_callbacks(execute=True):
        events_ingest(
            items=[{"external_id": nowhere.external_id, "name": "visit", "occurred_at": timezone.now()}],
            by=manager_alice,
        )
    entry = Enrollment.objects.get(journey=journey, profile=nowhere)
    due = entry.due_at.astimezone(ZoneInfo("America/New_York"))
    assert (due.hour, due.minute) == (9, 0) and entry.entered_at < entry.due_at


@pytest.mark.embedded
@pytest.mark.django_db
def test_events_enter_each_profile_by_its_own_history_and_wait_in_its_own_zone(
    make_journey, publish, manager_alice, django_capture_on_commit_callbacks
):
    """An event's entries look up each profile's earlier entries on their own (not the journey's
    whole history), and run their first steps with the zones read by the entry."""
    from journeys.services.engine import _next_time_of_day

    tokyo = ProfileFactory(timezone="Asia/Tokyo")
    paris = ProfileFactory(timezone="Europe/Paris")
    graph = _wait_graph(until="09:00")
    journey = publish(
        make_journey(graph=graph, entry_kind="event", entry_event="visit", entry_segment=None, reentry="after_wait")
    )
    Enrollment.objects.create(  # an earlier stay of Paris's, finished: it enters again as its second
        journey=journey,
        version=journey.live_version,
        profile=paris,
        entry_number=1,
        step="done",
        status="completed",
        entered_at=timezone.now() - dt.timedelta(days=2),
        finished_at=timezone.now() - dt.timedelta(days=2),
    )

    def visit(*profiles):
        with django_capture_on_commit_callbacks(execute=True):
            events_ingest(
                items=[
                    {"external_id": p.external_id, "name": "visit", "occurred_at": timezone.now()} for p in profiles
                ],
                by=manager_alice,
            )

    visit(tokyo, paris, tokyo)
    inside = {e.profile_id: e for e in Enrollment.objects.filter(status="waiting")}
    assert {pk: e.entry_number for pk, e in inside.items()} == {tokyo.pk: 1, paris.pk: 2}
    for profile in (tokyo, paris):
        entry = inside[profile.pk]
        assert entry.due_at == _next_time_of_day("09:00", profile.timezone, entry.entered_at)
    visit(tokyo, paris)  # both are inside (waiting): nobody enters twice at once
    assert Enrollment.objects.count() == 3
    journeys_run_due(now=max(e.due_at for e in inside.values()) + dt.timedelta(seconds=1))
    for entry in Enrollment.objects.filter(pk__in=[e.pk for e in inside.values()]):
        # each run added its steps to what the enrollment had
        assert entry.status == "completed"
        assert [(step, outcome) for step, _, outcome in entry.history] == [
            ("pause", "waiting"),
            ("pause", "waited"),
            ("done", "exit"),
        ]


def _condition_graph(branches):
    return {
        "steps": [
            {"id": "check", "type": "condition", "branches": branches, "else": "others"},
            *[{"id": b["next"], "type": "exit"} for b in branches],
            {"id": "others", "type": "exit"},
        ]
    }


def test_condition_on_a_rule_of_the_audience_language(make_journey, publish):
    french = ProfileFactory(locale="fr-FR")
    german = ProfileFactory(locale="de-DE")
    rule = {"all": [{"field": "locale", "op": "starts_with", "value": "fr"}]}
    journey = publish(make_journey(graph=_condition_graph([{"label": "French", "rules": rule, "next": "fr"}])))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    assert _enrollment(journey, french).step == "fr"
    assert _enrollment(journey, german).step == "others"


def test_condition_compares_a_number_no_float_holds_stored_before_it_was_refused(make_journey, publish):
    big = ProfileFactory(attributes={"n": 10**400})
    small = ProfileFactory(attributes={"n": 3})
    rule = {"all": [{"attribute": "n", "type": "number", "op": "gt", "value": 5}]}
    journey = publish(make_journey(graph=_condition_graph([{"label": "Large", "rules": rule, "next": "large"}])))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    assert _enrollment(journey, big).step == "large"
    assert _enrollment(journey, small).step == "others"


def test_condition_did_event_since_entering_ignores_older_events(make_journey, publish):
    t0 = timezone.now()
    before, after, never = ProfileFactory.create_batch(3)
    EventFactory(profile=before, name="purchase", occurred_at=t0 - dt.timedelta(days=1))
    graph = {
        "steps": [
            {"id": "pause", "type": "wait", "seconds": 3600, "next": "check"},
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "bought", "event": "purchase", "next": "yes"}],
                "else": "no",
            },
            {"id": "yes", "type": "exit"},
            {"id": "no", "type": "exit"},
        ]
    }
    journey = publish(make_journey(graph=graph), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    EventFactory(profile=after, name="purchase", occurred_at=t0 + dt.timedelta(minutes=5))
    journeys_run_due(now=t0 + dt.timedelta(hours=2))
    assert _enrollment(journey, after).step == "yes"
    assert _enrollment(journey, before).step == "no"
    assert _enrollment(journey, never).step == "no"


def test_condition_with_several_branches_takes_the_first_that_holds(make_journey, publish, vips):
    vip_fr = ProfileFactory(locale="fr-FR")
    fr = ProfileFactory(locale="fr-CA")
    SegmentMemberFactory(segment=vips, profile=vip_fr)
    rule = {"all": [{"field": "locale", "op": "starts_with", "value": "fr"}]}
    branches = [{"label": "VIP", "segment": vips.pk, "next": "vip"}, {"label": "French", "rules": rule, "next": "fr"}]
    journey = publish(make_journey(graph=_condition_graph(branches)))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    assert _enrollment(journey, vip_fr).step == "vip"
    assert _enrollment(journey, fr).step == "fr"


def test_split_is_reproducible_per_profile_and_near_its_percentages(make_journey, publish, manager_alice):
    from journeys.services.engine import _split_bucket

    ProfileFactory.create_batch(200)
    graph = {
        "steps": [
            {
                "id": "ab",
                "type": "split",
                "branches": [{"label": "A", "percent": 25, "next": "a"}, {"label": "B", "percent": 75, "next": "b"}],
            },
            {"id": "a", "type": "exit"},
            {"id": "b", "type": "exit"},
        ]
    }
    journey = publish(make_journey(graph=graph))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    steps = dict(Enrollment.objects.values_list("profile_id", "step"))
    assert 25 <= list(steps.values()).count("a") <= 75
    for profile_id, step in steps.items():
        assert step == ("a" if _split_bucket(journey.pk, "ab", profile_id) < 25 else "b")


def test_no_reentry_means_a_profile_enters_once(make_journey, publish):
    profile = ProfileFactory()
    journey = publish(make_journey(graph={"steps": [EXIT]}, entry_every_hours=1))
    t0 = timezone.now()
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    Journey.objects.filter(pk=journey.pk).update(next_entry_at=t0)
    assert journey_enter_segment(journey_id=journey.pk, now=t0 + dt.timedelta(hours=2)) == 0
    assert Enrollment.objects.filter(profile=profile).count() == 1


def test_reentry_after_a_wait_and_never_twice_at_once(make_journey, publish):
    profile = ProfileFactory()
    graph = _wait_graph(seconds=7200)
    journey = publish(make_journey(graph=graph, entry_every_hours=1, reentry="after_wait", reentry_wait_seconds=1800))
    t0 = timezone.now()
    assert journey_enter_segment(journey_id=journey.pk, now=t0) == 1
    journeys_run_due(now=t0)
    # still inside (waiting): no second instance, even though the re-entry wait passed
    Journey.objects.filter(pk=journey.pk).update(next_entry_at=t0)
    assert journey_enter_segment(journey_id=journey.pk, now=t0 + dt.timedelta(hours=1)) == 0
    journeys_run_due(now=t0 + dt.timedelta(hours=3))
    Journey.objects.filter(pk=journey.pk).update(next_entry_at=t0)
    assert journey_enter_segment(journey_id=journey.pk, now=t0 + dt.timedelta(hours=3)) == 1
    assert sorted(Enrollment.objects.filter(profile=profile).values_list("entry_number", flat=True)) == [1, 2]


@pytest.mark.embedded
@pytest.mark.django_db
def test_exit_event_from_the_events_api_ends_the_journey_for_that_profile(
    make_journey, publish, manager_alice, django_capture_on_commit_callbacks
):
    leaving, staying = ProfileFactory.create_batch(2)
    journey = publish(make_journey(graph=_wait_graph(seconds=86400), exit_event="purchase"))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    with django_capture_on_commit_callbacks(execute=True):
        events_ingest(
            items=[
                {
                    "external_id": leaving.external_id,
                    "name": "purchase",
                    "occurred_at": timezone.now(),
                    "properties": {},
                }
            ],
            by=manager_alice,
        )
    gone = _enrollment(journey, leaving)
    assert (gone.status, gone.exit_reason) == ("exited", "exit event 'purchase'")
    assert _enrollment(journey, staying).status == "waiting"
    assert version_step_stats(journey.live_version)["pause"]["exit_event"] == 1


def test_an_exit_event_before_the_engine_ran_an_entry_counts_it_entered_where_it_ended(make_journey, publish):
    """A segment read, and a profile's exit event before the engine took it up: the first step said
    "entered 2" and "exit event 1" of the three that came in."""
    from journeys.services.entries import journeys_events_received

    leaving, *staying = ProfileFactory.create_batch(3)
    journey = publish(make_journey(graph=_wait_graph(seconds=86400), exit_event="purchase"))
    journey_enter_segment(journey_id=journey.pk)
    assert journeys_events_received(events=[(leaving.pk, "purchase", timezone.now())])["exited"] == 1
    journeys_run_due()
    pause = version_step_stats(journey.live_version)["pause"]
    assert (pause["entered"], pause["waiting"], pause["exited"], pause["exit_event"]) == (3, 2, 1, 1)


def test_event_from_the_api_enters_an_event_journey(
    sim_journey, sim_team, publish, manager_alice, pushsim, django_capture_on_commit_callbacks
):
    (profile,) = _profiles(1, sim_team)
    graph = {"steps": [{"id": "hello", "type": "push", "content": None, "next": "done"}, EXIT]}
    from tests.factories import PushContentFactory

    content = PushContentFactory(app=sim_team, title="Thanks", body="for signing up")
    graph["steps"][0]["content"] = content.pk
    with django_capture_on_commit_callbacks(execute=True):
        journey = publish(sim_journey(graph=graph, entry_kind="event", entry_event="signed_up", entry_segment=None))
    assert not Enrollment.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        events_ingest(
            items=[{"external_id": profile.external_id, "name": "signed_up", "occurred_at": timezone.now()}],
            by=manager_alice,
        )
    assert _enrollment(journey, profile).status == "completed"
    assert [r["title"] for r in pushsim.state.recent(limit=5)] == ["Thanks"]


def test_profiles_inside_finish_on_the_version_they_entered(make_journey, publish, manager_alice, vips):
    first, later = ProfileFactory.create_batch(2)
    graph_v1 = {
        "steps": [{"id": "pause", "type": "wait", "seconds": 3600, "next": "v1_end"}, {"id": "v1_end", "type": "exit"}]
    }
    t0 = timezone.now()
    journey = publish(make_journey(graph=graph_v1, entry_every_hours=1), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    Enrollment.objects.filter(profile=later).delete()  # `later` joins after the new version
    journeys_run_due(now=t0)
    graph_v2 = {"steps": [{"id": "v2_end", "type": "exit"}]}
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph=graph_v2)
    journey = publish(journey, now=t0 + dt.timedelta(minutes=1))
    journey_enter_segment(journey_id=journey.pk, now=t0 + dt.timedelta(minutes=1))
    journeys_run_due(now=t0 + dt.timedelta(hours=2))
    old = _enrollment(journey, first)
    new = _enrollment(journey, later)
    assert (old.version.number, old.step, old.status) == (1, "v1_end", "completed")
    assert (new.version.number, new.step, new.status) == (2, "v2_end", "completed")


def _send_journey_pushes():
    """Send what the journey's pushes made: each batch's dispatch, and the standing streams."""
    from delivery.services.dispatches import dispatch_prepare
    from delivery.services.sending import dispatch_send
    from delivery.services.stream_senders import streams_send

    for dispatch in Dispatch.objects.filter(kind="journey", standing=False):
        dispatch_prepare(dispatch_id=dispatch.pk)
        dispatch_send(dispatch_id=dispatch.pk)
    streams_send(budget=0)


@pytest.mark.parametrize("entry_kind", ["segment", "event"])
def test_a_profile_waiting_before_a_push_when_a_new_version_goes_live_gets_the_old_push_once(
    entry_kind, sim_journey, sim_team, sim_welcome, publish, pushsim, manager_alice, django_capture_on_commit_callbacks
):
    """Zoe waits before the push of version 1 when version 2 (another push, re-entry at once) is
    approved; version 2's read or her next entry event comes while she is inside. She finishes on
    version 1: its push reaches her phone once, through its batch or its stream, and version 2's
    push never does."""
    from tests.factories import PushContentFactory

    zoe = ProfileFactory(external_id="zoe")
    phone = DeviceFactory(profile=zoe, app=sim_team, platform="android").token
    other = PushContentFactory(app=sim_team, title="Version 2", body="Another push")
    event = {"entry_kind": "event", "entry_event": "visit", "entry_segment": None} if entry_kind == "event" else {}

    def visit():
        with django_capture_on_commit_callbacks(execute=True):
            events_ingest(
                items=[{"external_id": "zoe", "name": "visit", "occurred_at": timezone.now()}], by=manager_alice
            )

    t0 = timezone.now()
    journey = publish(sim_journey(graph=_wait_graph(seconds=3600, content=sim_welcome.pk), **event), now=t0)
    if entry_kind == "event":
        visit()
    else:
        journey_enter_segment(journey_id=journey.pk, now=t0)
        journeys_run_due(now=t0)
    assert list(Enrollment.objects.values_list("step", "status")) == [("pause", "waiting")]
    journey_version_edit(
        journey_id=journey.pk,
        by=manager_alice,
        graph=_wait_graph(seconds=0, content=other.pk),
        reentry="after_wait",
        reentry_wait_seconds=0,
    )
    journey = publish(journey, now=t0 + dt.timedelta(minutes=1))
    if entry_kind == "event":
        visit()
    else:
        assert journey_enter_segment(journey_id=journey.pk, now=t0 + dt.timedelta(minutes=1)) == 0
    with django_capture_on_commit_callbacks(execute=True):
        journeys_run_due(now=t0 + dt.timedelta(minutes=2))
        journeys_run_due(now=t0 + dt.timedelta(hours=2))
    _send_journey_pushes()
    _send_journey_pushes()
    (enrollment,) = Enrollment.objects.all()
    assert (enrollment.version.number, enrollment.status) == (1, "completed")
    assert [step for step, _, _ in enrollment.history] == ["pause", "pause", "push", "done"]
    assert pushsim.state.count(phone) == 1
    assert [r["title"] for r in pushsim.state.recent(limit=5)] == ["Hello zoe"]
    (delivery,) = Delivery.objects.filter(dispatch__kind="journey")
    assert delivery.dispatch.source_id == enrollment.version_id


def test_profiles_read_in_at_a_push_step_when_a_new_version_goes_live_get_the_old_push_once(
    sim_journey, sim_team, sim_welcome, publish, pushsim, manager_alice
):
    """A segment read puts its profiles at the push step that begins version 1; version 2 (another
    push, re-entry at once) is approved and read before the engine took them up. They are inside
    still, so version 2 enters no one; each gets version 1's push, once."""
    from tests.factories import PushContentFactory

    profiles = _profiles(3, sim_team)
    other = PushContentFactory(app=sim_team, title="Version 2", body="Another push")
    t0 = timezone.now()

    def pushing(content):
        return {"steps": [{"id": "hello", "type": "push", "content": content, "next": "done"}, EXIT]}

    journey = publish(sim_journey(graph=pushing(sim_welcome.pk), entry_every_hours=1), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    assert set(Enrollment.objects.values_list("step", "status")) == {("hello", "active")}
    journey_version_edit(
        journey_id=journey.pk, by=manager_alice, graph=pushing(other.pk), reentry="after_wait", reentry_wait_seconds=0
    )
    journey = publish(journey, now=t0)
    assert journey_enter_segment(journey_id=journey.pk, now=t0) == 0
    journeys_run_due(now=t0 + dt.timedelta(minutes=1))
    journeys_run_due(now=t0 + dt.timedelta(minutes=2))
    _send_journey_pushes()
    assert set(Enrollment.objects.values_list("version__number", "entry_number", "status")) == {(1, 1, "completed")}
    for profile in profiles:
        (device,) = profile.devices.all()
        assert pushsim.state.count(device.token) == 1
    assert sorted(r["title"] for r in pushsim.state.recent(limit=10)) == sorted(
        f"Hello {p.external_id}" for p in profiles
    )


def test_stopping_a_journey_exits_everyone_inside_and_closes_the_gate(make_journey, publish, manager_alice, welcome):
    ProfileFactory.create_batch(3)
    journey = publish(make_journey(graph=_wait_graph(seconds=3600, content=welcome.pk)))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    journey_stop(journey_id=journey.pk, by=manager_alice)
    assert set(Enrollment.objects.values_list("status", "exit_reason")) == {("exited", "journey stopped")}
    assert journeys_run_due(now=timezone.now() + dt.timedelta(hours=2)).enrollments == 0
    with pytest.raises(GateClosed, match="not live"):
        dispatch_create(
            app_id=journey.app_id,
            kind="journey",
            spec=welcome.spec(),
            profile_ids=[],
            source_id=journey.live_version_id,
        )


def test_gate_refuses_a_draft_version_and_content_that_was_not_approved(make_journey, publish, welcome):
    journey = make_journey()
    version = journey.versions.get()
    with pytest.raises(GateClosed, match="not live"):
        dispatch_create(
            app_id=journey.app_id, kind="journey", spec=welcome.spec(), profile_ids=[], source_id=version.pk
        )
    journey = publish(journey)
    forged = {**welcome.spec(), "body": "Not what was approved"}
    context = journey.send_context(version=version, step="push")
    with pytest.raises(GateClosed, match="not the content approved for step 'push'"):
        dispatch_create(
            app_id=journey.app_id, kind="journey", spec=forged, profile_ids=[], source_id=version.pk, context=context
        )
    from journeys.models import JourneyVersion

    JourneyVersion.objects.filter(pk=version.pk).update(graph={"steps": [EXIT]})  # a forged row
    with pytest.raises(GateClosed, match="changed since it was approved"):
        dispatch_create(
            app_id=journey.app_id, kind="journey", spec=welcome.spec(), profile_ids=[], source_id=version.pk
        )
    assert not Dispatch.objects.filter(kind="journey").exists()


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param({"purpose": "transactional"}, id="transactional (no caps, no quiet hours)"),
        pytest.param({"segment_id": "everyone", "profile_ids": None}, id="a whole segment for its batch"),
        pytest.param({"rate_limit_per_second": 100_000}, id="a throttle of its own"),
    ],
)
def test_gate_refuses_a_push_steps_content_sent_otherwise_than_the_engine_sends_it(
    make_journey, publish, welcome, everyone, forged
):
    """A journey's push step sends to the profiles of its batch, as marketing, at the app's rate:
    the approved content of the step as transactional (past the frequency caps and quiet hours), to
    a whole segment or at a rate of its own is refused by the gate."""
    first_push = {"steps": [{"id": "push", "type": "push", "content": welcome.pk, "next": "done"}, EXIT]}
    journey = publish(make_journey(graph=first_push))
    version = journey.versions.get()
    asked = {"profile_ids": [ProfileFactory().pk], **forged}
    if asked.get("segment_id") == "everyone":
        asked["segment_id"] = everyone.pk
    context = journey.send_context(version=version, step="push")
    with pytest.raises(GateClosed, match="as the journey sends it"):
        dispatch_create(
            app_id=journey.app_id, kind="journey", spec=welcome.spec(), source_id=version.pk, context=context, **asked
        )
    assert not Dispatch.objects.filter(kind="journey").exists()
    # As the engine sends it, to a profile the journey has entered at the step, the gate lets it through.
    journey_enter_segment(journey_id=journey.pk)
    dispatch_create(
        app_id=journey.app_id,
        kind="journey",
        spec=welcome.spec(),
        source_id=version.pk,
        context=context,
        profile_ids=asked["profile_ids"] or [],
    )


@pytest.mark.embedded
def test_gate_sends_a_push_steps_content_only_to_profiles_enrolled_in_its_version_at_that_step(
    make_journey, publish, vips, welcome
):
    """A push step's batch is of profiles enrolled in its version at that step: the engine's own
    batch passes, as it is made (the rows written at the step before it), and the step's approved
    content sent to anyone else is refused, a profile never enrolled, one that finished the
    journey, or one of them slipped into a batch of enrolled profiles."""
    from tests.journeys.conftest import simple_graph

    first, second = ProfileFactory.create_batch(2)
    for profile in (first, second):
        SegmentMemberFactory(segment=vips, profile=profile)
    journey = publish(make_journey(graph=simple_graph(condition_segment=vips.pk, content=welcome.pk, wait=3600)))
    version = journey.live_version
    t0 = timezone.now()
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    outsider = ProfileFactory()  # entered nothing
    assert {e.step for e in Enrollment.objects.filter(journey=journey)} == {"start"}

    def batch(*profiles):
        return dispatch_create(
            app_id=journey.app_id,
            kind="journey",
            spec=welcome.spec(),
            profile_ids=sorted(p.pk for p in profiles),
            source_id=version.pk,
            context=journey.send_context(version=version, step="push"),
        )

    for forged in ([outsider], [first, outsider]):
        with pytest.raises(GateClosed, match="not enrolled"):
            batch(*forged)
    assert not Dispatch.objects.filter(kind="journey").exists()
    journeys_run_due(now=t0 + dt.timedelta(hours=2))
    (sent,) = Dispatch.objects.filter(kind="journey")
    assert sorted(sent.profile_ids) == sorted([first.pk, second.pk])
    assert {_enrollment(journey, p).status for p in (first, second)} == {"completed"}
    with pytest.raises(GateClosed, match="not enrolled"):
        batch(first)  # past the step: it had its push
    assert Dispatch.objects.filter(kind="journey").count() == 1


@pytest.mark.embedded
def test_gate_refuses_a_batch_naming_profiles_the_journey_has_not_brought_to_its_push_step(
    make_journey, publish, vips, welcome
):
    """A push step's batch goes to the profiles the engine brings to that step in its run, no one
    else: not one still at the condition before it (which may take it the other way), nor one the
    condition took the other way and that waits there for an hour before the same push. Each is
    refused as long as it is not at the step; the engine's own batches pass, each when its profiles
    get there."""
    vip, other = ProfileFactory.create_batch(2)
    SegmentMemberFactory(segment=vips, profile=vip)
    graph = {
        "steps": [
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "VIP", "segment": vips.pk, "next": "push"}],
                "else": "later",
            },
            {"id": "later", "type": "wait", "seconds": 3600, "next": "push"},
            {"id": "push", "type": "push", "content": welcome.pk, "next": "done"},
            EXIT,
        ]
    }
    journey = publish(make_journey(graph=graph))
    version = journey.live_version
    t0 = timezone.now()

    def batch(*profiles):
        return dispatch_create(
            app_id=journey.app_id,
            kind="journey",
            spec=welcome.spec(),
            profile_ids=sorted(p.pk for p in profiles),
            source_id=version.pk,
            context=journey.send_context(version=version, step="push"),
        )

    journey_enter_segment(journey_id=journey.pk, now=t0)
    assert {(e.step, e.status) for e in Enrollment.objects.filter(journey=journey)} == {("check", "active")}
    for forged in ([other], [vip], [vip, other]):  # at the condition: not yet, or never this run
        with pytest.raises(GateClosed, match="not enrolled in version 1 of 'Onboarding' at step 'push'"):
            batch(*forged)
    assert not Dispatch.objects.filter(kind="journey").exists()
    journeys_run_due(now=t0)
    (first,) = Dispatch.objects.filter(kind="journey")
    assert first.profile_ids == [vip.pk]
    assert (_enrollment(journey, other).step, _enrollment(journey, other).status) == ("later", "waiting")
    with pytest.raises(GateClosed, match="not enrolled in version 1 of 'Onboarding' at step 'push'"):
        batch(other)  # the other way, waiting an hour before the push
    assert Dispatch.objects.filter(kind="journey").count() == 1
    journeys_run_due(now=t0 + dt.timedelta(hours=2))
    second = Dispatch.objects.filter(kind="journey").exclude(pk=first.pk).get()
    assert second.profile_ids == [other.pk]
    assert {_enrollment(journey, p).status for p in (vip, other)} == {"completed"}
    assert version_step_stats(version)["push"]["pushed"] == 2


def test_gate_lets_a_batch_through_only_with_its_own_steps_approved_content(make_journey, publish, team, welcome):
    """A push step's batch names its step (its context): the content of another approved step of the
    same version, or of no step, is not the content approved for it."""
    from tests.factories import PushContentFactory

    reminder = PushContentFactory(app=team, name="Reminder", title="Still there?", body="Come back")
    graph = {
        "steps": [
            {"id": "first", "type": "push", "content": welcome.pk, "next": "second"},
            {"id": "second", "type": "push", "content": reminder.pk, "next": "done"},
            EXIT,
        ]
    }
    journey = publish(make_journey(graph=graph))
    version = journey.live_version

    def batch(spec, step):
        context = journey.send_context(version=version, step=step) if step else {}
        return dispatch_create(
            app_id=journey.app_id, kind="journey", spec=spec, profile_ids=[], source_id=version.pk, context=context
        )

    with pytest.raises(GateClosed, match="not the content approved for step 'first'"):
        batch(reminder.spec(), "first")
    with pytest.raises(GateClosed, match="not the content approved for step 'second'"):
        batch(welcome.spec(), "second")
    with pytest.raises(GateClosed, match="names no push step"):
        batch(welcome.spec(), None)
    with pytest.raises(GateClosed, match="names no push step"):
        batch(welcome.spec(), "done")
    assert not Dispatch.objects.filter(kind="journey").exists()
    assert batch(welcome.spec(), "first").context["journey"]["step"] == "first"
    assert batch(reminder.spec(), "second").context["journey"]["step"] == "second"


def test_gate_refuses_a_frozen_spec_that_is_not_the_one_approved(make_journey, publish, welcome):
    from journeys.models import JourneyVersion

    journey = publish(make_journey())
    version = JourneyVersion.objects.get(pk=journey.live_version_id)
    frozen = version.frozen_specs
    frozen["push"]["spec"] = {**frozen["push"]["spec"], "body": "Frozen but never approved"}
    JourneyVersion.objects.filter(pk=version.pk).update(frozen_specs=frozen)  # what a lost race leaves
    with pytest.raises(GateClosed, match="changed since it was approved"):
        dispatch_create(
            app_id=journey.app_id, kind="journey", spec=frozen["push"]["spec"], profile_ids=[], source_id=version.pk
        )
    assert not Dispatch.objects.filter(kind="journey").exists()


def test_content_edited_after_approval_does_not_reach_the_phones(
    sim_journey, sim_team, sim_welcome, vips, publish, pushsim, django_capture_on_commit_callbacks
):
    _profiles(1, sim_team, vips=vips, vip_count=1)
    journey = publish(sim_journey())
    sim_welcome.title = "Edited after approval"
    sim_welcome.save()
    with django_capture_on_commit_callbacks(execute=True):
        journey_enter_segment(journey_id=journey.pk)
    assert [r["title"] for r in pushsim.state.recent(limit=5)] != ["Edited after approval"]
    assert Delivery.objects.filter(status="accepted").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_engines_racing_run_each_enrollment_once_and_push_once(
    sim_journey, sim_team, vips, publish, pushsim, monkeypatch
):
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    from audiences.models import Profile
    from delivery.services.dispatches import dispatch_prepare
    from delivery.services.sending import dispatch_send
    from delivery.services.stream_senders import streams_send
    from journeys.services.entries import _enter

    profiles = _profiles(60, sim_team, vips=vips, vip_count=60)
    journey = publish(sim_journey(entry_kind="event", entry_event="race", entry_segment=None))
    sql, params = Profile.objects.order_by().values("id").query.sql_with_params()
    _enter(journey.live_version, sql, list(params), now=timezone.now())
    barrier = threading.Barrier(2)
    reports, errors = [], []

    def engine():
        try:
            barrier.wait()
            reports.append(journeys_run_due(batch=7))
        except Exception as exc:  # shown by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    # The engines queue their sends to the broker as in production (the send path's HTTP/2 clients
    # belong to one worker process); the sends are then run here, once per dispatch.
    monkeypatch.setattr(Conf, "SYNC", False)
    threads = [threading.Thread(target=engine) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    get_broker().purge_queue()
    monkeypatch.setattr(Conf, "SYNC", True)
    for dispatch in Dispatch.objects.filter(kind="journey"):
        dispatch_prepare(dispatch_id=dispatch.pk)
        dispatch_send(dispatch_id=dispatch.pk)
    streams_send(budget=0)  # an event-entered journey pushes through its stream
    assert not errors
    assert sum(r.enrollments for r in reports) == 60
    assert all(r.enrollments for r in reports), "both engines took a share"
    assert all(len(e.history) == 4 for e in Enrollment.objects.all())
    dispatches = Dispatch.objects.filter(kind="journey")
    assert Delivery.objects.filter(dispatch__in=dispatches).count() == 60
    assert Delivery.objects.filter(dispatch__in=dispatches, status="accepted").count() == 60
    for profile in profiles:
        for device in profile.devices.all():
            assert pushsim.state.count(device.token) == 1


@pytest.mark.django_db(transaction=True)
def test_two_events_calls_entering_one_profile_at_once_enter_it_once(make_journey, publish, manager_alice):
    """An events call holds its profiles' locks through its entries: a second call for the same
    profile waits for it (no deadlock), then finds it inside and does not enter it again."""
    from audiences.models import Event
    from audiences.services import events as service
    from tests.locks import concurrently, wait_for_a_blocked_writer

    publish(make_journey(graph=_wait_graph(seconds=3600), entry_kind="event", entry_event="visit", entry_segment=None))
    ProfileFactory(external_id="zoe")
    entered, release, blocked = threading.Event(), threading.Event(), []

    def hold_the_first_call(**kwargs):  # runs after the journeys' listener, in the call's transaction
        if not entered.is_set():
            entered.set()
            release.wait(10)

    def visit():
        events_ingest(items=[{"external_id": "zoe", "name": "visit", "occurred_at": timezone.now()}], by=manager_alice)

    def second_visit():
        entered.wait(10)
        visit()

    def watch():
        entered.wait(10)
        blocked.append(wait_for_a_blocked_writer())
        release.set()

    service.event_listeners_register(hold_the_first_call)
    try:
        assert not concurrently(visit, second_visit, watch)  # a deadlock would abort one of them
    finally:
        service._EVENT_LISTENERS.remove(hold_the_first_call)
    assert blocked == [True]
    assert Event.objects.filter(name="visit").count() == 2
    assert list(Enrollment.objects.values_list("status", flat=True)) == ["waiting"]


@pytest.mark.django_db(transaction=True)
def test_an_event_entry_committing_just_after_a_stop_leaves_no_one_inside(
    make_journey, publish, manager_alice, monkeypatch
):
    """The entry wrote its enrollment and had not committed when the stop was pressed: the stop found
    no one inside, and the entry then committed an open enrollment in a stopped journey."""
    from journeys.services import entries
    from tests.locks import concurrently, wait_for_a_blocked_writer

    journey = publish(
        make_journey(graph=_wait_graph(seconds=3600), entry_kind="event", entry_event="visit", entry_segment=None)
    )
    zoe = ProfileFactory(external_id="zoe")
    entered, stopped, run_entered = threading.Event(), threading.Event(), entries.journeys_run_entered

    def run_entered_then_let_the_stop_in(**kwargs):
        report = run_entered(**kwargs)
        entered.set()
        assert stopped.wait(1) or wait_for_a_blocked_writer()  # the stop went through, or waits
        return report

    monkeypatch.setattr(entries, "journeys_run_entered", run_entered_then_let_the_stop_in)

    def enter():
        with transaction.atomic():
            entries.journeys_events_received(events=[(zoe.pk, "visit", timezone.now())])

    def stop():
        assert entered.wait(10)
        journey_stop(journey_id=journey.pk, by=manager_alice)
        stopped.set()

    assert concurrently(enter, stop) == []
    assert Journey.objects.get(pk=journey.pk).status == "stopped"
    assert list(Enrollment.objects.values_list("status", "exit_reason")) == [("exited", "journey stopped")]


def test_an_event_read_with_the_journey_still_live_enters_no_one_once_it_is_stopped(
    make_journey, publish, manager_alice
):
    """What live journeys do on events is kept per process: a view read before the stop still names it."""
    from journeys.services.entries import _live_for_events, journeys_events_received

    journey = publish(
        make_journey(graph=_wait_graph(seconds=3600), entry_kind="event", entry_event="visit", entry_segment=None)
    )
    zoe = ProfileFactory(external_id="zoe")
    read_before = _live_for_events()
    journey_stop(journey_id=journey.pk, by=manager_alice)
    counts = journeys_events_received(events=[(zoe.pk, "visit", timezone.now())], live=read_before)
    assert counts["entered"] == 0
    assert not Enrollment.objects.exists()


def test_a_segment_deleted_while_live_holds_for_no_one(make_journey, publish, vips):
    from audiences.models import Segment

    member = ProfileFactory()
    SegmentMemberFactory(segment=vips, profile=member)
    journey = publish(make_journey(graph=_condition_graph([{"label": "VIP", "segment": vips.pk, "next": "vip"}])))
    Segment.objects.filter(pk=vips.pk).delete()
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    assert _enrollment(journey, member).step == "others"


def test_a_rule_naming_a_segment_deleted_while_live_holds_for_no_one_and_the_engine_goes_on(
    make_journey, publish, manager_alice, vips
):
    """A segment gone under a live version (its deletion through the product is refused now, but one
    deleted before that, or by hand, is still met): the rule failed to compile in every batch that
    held the journey's profiles, which stopped the engine for every journey."""
    from audiences.models import Segment

    member = ProfileFactory()
    SegmentMemberFactory(segment=vips, profile=member)
    branch = {"label": "VIP", "rules": {"all": [{"segment": vips.pk}]}, "next": "vip"}
    journey = publish(make_journey(graph=_condition_graph([branch])))
    other = publish(make_journey(name="Other", graph={"steps": [EXIT]}))
    Segment.objects.filter(pk=vips.pk).delete()
    journey_enter_segment(journey_id=journey.pk)
    journey_enter_segment(journey_id=other.pk)
    journeys_run_due()
    assert _enrollment(journey, member).step == "others"
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"completed"}


def test_a_condition_segment_whose_saved_rules_no_longer_hold_fails_its_profiles_and_the_engine_goes_on(
    make_journey, publish, vips
):
    """Rules saved before a check existed (or by a migration: a number condition holding a word) on a
    segment a condition branches on, under a version approved before its segments were frozen: the
    read raised out of the engine's batch, which was undone and claimed again first at every run,
    so no journey's profiles in it ever moved on."""
    from audiences.models import Segment
    from journeys.diagram import _counters
    from journeys.models import JourneyVersion

    member = ProfileFactory()
    SegmentMemberFactory(segment=vips, profile=member)
    journey = publish(make_journey(graph=_condition_graph([{"label": "VIP", "segment": vips.pk, "next": "vip"}])))
    other = publish(make_journey(name="Other", graph={"steps": [EXIT]}))
    JourneyVersion.objects.filter(pk=journey.live_version_id).update(approved_segments={})
    Segment.objects.filter(pk=vips.pk).update(
        kind="rules", rules={"all": [{"attribute": "age", "type": "number", "op": "gt", "value": "old"}]}
    )
    journey_enter_segment(journey_id=journey.pk)
    journey_enter_segment(journey_id=other.pk)
    journeys_run_due()
    ended = _enrollment(journey, member)
    assert (ended.status, ended.step) == ("failed", "check")
    assert "no longer hold" in ended.exit_reason and "rules.all[0].value" in ended.exit_reason
    assert set(Enrollment.objects.filter(journey=other).values_list("status", flat=True)) == {"completed"}
    counts = version_step_stats(journey.live_version)["check"]
    assert counts["failed"] == counts["entered"] == Enrollment.objects.filter(journey=journey).count()
    assert "saved rules no longer hold" in _counters("condition", counts)[1]  # its box says why


def test_a_condition_rule_naming_a_segment_whose_saved_rules_no_longer_hold_fails_its_profiles(
    make_journey, publish, vips
):
    """A rule naming a segment whose saved rules no longer hold read as if the segment were deleted:
    holding for no one, it sent its members down "all others", to a push the approver meant for the
    others; a branch on that segment itself fails its profiles at the condition, saying why."""
    from audiences.models import Segment
    from journeys.models import JourneyVersion

    member = ProfileFactory()
    SegmentMemberFactory(segment=vips, profile=member)
    branch = {"label": "VIP", "rules": {"all": [{"segment": vips.pk}]}, "next": "vip"}
    journey = publish(make_journey(graph=_condition_graph([branch])))
    JourneyVersion.objects.filter(pk=journey.live_version_id).update(approved_segments={})
    Segment.objects.filter(pk=vips.pk).update(
        kind="rules", rules={"all": [{"attribute": "age", "type": "number", "op": "gt", "value": "old"}]}
    )
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    ended = _enrollment(journey, member)
    assert (ended.status, ended.step) == ("failed", "check")
    assert f"segment {vips.pk} uses a rule saved before it was checked" in ended.exit_reason
    assert not version_step_stats(journey.live_version)["check"]["passed"]["else"]


PRO = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}]}


def _segment_chain(by, length: int) -> list:
    """Segments each using the one before: the first holds the pro profiles."""
    from audiences.services.segments import segment_create

    chain = [segment_create(name="s0", rules=PRO, by=by)]
    for n in range(1, length):
        chain.append(segment_create(name=f"s{n}", rules={"all": [{"segment": chain[-1].pk}]}, by=by))
    return chain


def test_a_segment_change_making_a_journey_rule_too_deep_is_refused_naming_the_journey(
    make_journey, publish, manager_alice
):
    """A condition's rule naming a segment reads one level more than the segment does: a change below
    it that kept every segment within ten levels was saved, and the rule then failed to compile in
    every run, holding for no one (its profiles took "all others")."""
    from accounts.services import access_grant
    from audiences.rules.schema import RulesInvalid
    from audiences.services.segments import segment_create, segment_update
    from tests.factories import UserFactory

    pro = ProfileFactory(attributes={"plan": "pro"})
    chain = _segment_chain(manager_alice, 10)  # the top reads nine levels; a rule naming it, ten
    branch = {"label": "Deep", "rules": {"all": [{"segment": chain[-1].pk}]}, "next": "deep"}
    journey = publish(make_journey(graph=_condition_graph([branch])))
    kept = segment_create(name="kept", kind="static", by=manager_alice)
    with pytest.raises(RulesInvalid) as info:
        segment_update(segment_id=chain[0].pk, rules={"all": [{"segment": kept.pk}]}, by=manager_alice)
    assert info.value.errors[0].code == "too_deep"
    assert info.value.errors[0].message == (
        "journey “Onboarding”, version 1 (live): step 'check', which uses this one, would go 11 levels deep"
        " through segments' rules (at most 10)"
    )
    # A colleague granted the segment but not the journey is refused without its name.
    trent = UserFactory(username="manager_trent", role="Manager")
    access_grant(obj=chain[0], to=trent, by=None)
    own = segment_create(name="own", kind="static", by=trent)
    with pytest.raises(RulesInvalid) as info:
        segment_update(segment_id=chain[0].pk, rules={"all": [{"segment": own.pk}]}, by=trent)
    assert info.value.errors[0].message.startswith("a journey you cannot see, which uses this one, would go 11")
    chain[0].refresh_from_db()
    assert chain[0].rules == PRO
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    assert _enrollment(journey, pro).step == "deep"
    # Shorter below the top: allowed.
    segment_update(segment_id=chain[1].pk, rules={"all": [{"segment": kept.pk}]}, by=manager_alice)


def test_a_journey_entering_from_or_branching_on_a_segment_reads_no_level_more_than_the_segment(
    make_journey, publish, manager_alice
):
    """The entry and a condition's segment branch read the segment as the segment itself does: one
    at the ten levels allowed is read whole, and the change that made it so was saved."""
    from audiences.services.segments import segment_create, segment_update

    pro = ProfileFactory(attributes={"plan": "pro"})
    chain = _segment_chain(manager_alice, 10)
    branch = {"label": "Deep", "segment": chain[-1].pk, "next": "deep"}
    journey = make_journey(graph=_condition_graph([branch]), entry_segment=chain[-1])
    kept = segment_create(name="kept", rules=PRO, by=manager_alice)
    segment_update(segment_id=chain[0].pk, rules={"all": [{"segment": kept.pk}]}, by=manager_alice)  # ten levels
    journey = publish(journey)  # approved as the segments now are
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    assert _enrollment(journey, pro).step == "deep"


def test_the_beat_runs_the_engine_every_minute(db):
    from django_q.models import Schedule

    beat = Schedule.objects.get(name="journeys tick")
    assert (beat.func, beat.schedule_type, beat.minutes) == ("journeys.tasks.journeys_tick_task", "I", 1)


def test_push_refused_by_the_gate_fails_the_enrollment_with_the_reason(make_journey, publish, welcome):
    from journeys.models import JourneyVersion

    profile = ProfileFactory()
    journey = publish(make_journey(graph=_wait_graph(seconds=0, content=welcome.pk)))
    JourneyVersion.objects.filter(pk=journey.live_version_id).update(exit_event="forged")  # not what was approved
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    failed = _enrollment(journey, profile)
    assert failed.status == "failed" and "changed since it was approved" in failed.exit_reason
    assert not Dispatch.objects.filter(kind="journey").exists()


def _waiting_on_locks() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_step_counters_added_by_concurrent_sessions_are_summed_over_their_shards(make_journey):
    from collections import Counter

    from journeys.models import StepStat
    from journeys.services.step_stats import STEP_STAT_SHARDS, step_stats_add
    from tests.locks import concurrently

    version = make_journey().versions.get()
    step = version.steps()[0]["id"]
    pids = []

    def add() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pids.append(cursor.fetchone()[0])
        step_stats_add(Counter({(version.pk, step, "entered"): 1}))

    assert concurrently(add, add, add) == []
    shards = set(StepStat.objects.filter(version=version).values_list("shard", flat=True))
    assert shards == {pid % STEP_STAT_SHARDS for pid in pids}  # each session its own shard's row
    assert version_step_stats(version)[step]["entered"] == 3


@pytest.mark.django_db(transaction=True)
def test_two_engine_batches_adding_to_the_same_step_counters_do_not_deadlock(make_journey, monkeypatch):
    """Batch B has its counters in the order (b, a), batch A in (a, b); a third holds b until both wait
    (one shard per counter here: every session adds to the same rows)."""
    from collections import Counter

    from django.db import transaction

    from journeys.models import StepStat
    from journeys.services import step_stats
    from journeys.services.step_stats import step_stats_add

    monkeypatch.setattr(step_stats, "STEP_STAT_SHARDS", 1)

    version_id = make_journey().versions.get().pk
    a, b = (version_id, "a", "entered"), (version_id, "b", "entered")
    for key in (a, b):
        StepStat.objects.create(version_id=key[0], step=key[1], metric=key[2], count=0)
    held, release = threading.Event(), threading.Event()
    errors = []

    def hold_b() -> None:
        try:
            with transaction.atomic():
                StepStat.objects.select_for_update().get(version_id=version_id, step="b")
                held.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    def batch(order) -> None:
        try:
            with transaction.atomic():
                step_stats_add(Counter({key: 1 for key in order}))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_b)
    holder.start()
    assert held.wait(timeout=20)
    batches = [threading.Thread(target=batch, args=(order,)) for order in ((b, a), (a, b))]
    batches[0].start()
    assert eventually(lambda: _waiting_on_locks() >= 1, timeout=20.0, step=0.02), "batch B never waited"
    batches[1].start()
    assert eventually(lambda: _waiting_on_locks() >= 2, timeout=20.0, step=0.02), "batch A never waited"
    release.set()
    for thread in (holder, *batches):
        thread.join(timeout=30)

    assert not errors, errors
    assert dict(StepStat.objects.values_list("step", "count")) == {"a": 2, "b": 2}


def test_the_claim_reads_the_due_time_index_in_order_when_statistics_say_nothing_is_open(make_journey, publish):
    """Statistics taken over finished runs count on one open enrollment; a big entry since then must
    not make each batch read every open enrollment through the unique index and sort them."""
    from journeys.services.engine import _claim

    journey = publish(make_journey(entry_kind="event", entry_event="later", entry_segment=None))
    version = journey.live_version
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at) "
            "SELECT 'claim-' || n, '{}', '', '', now(), now() FROM generate_series(1, 30000) n"
        )
        enroll = (
            "INSERT INTO journeys_enrollment (journey_id, version_id, profile_id, entry_number, step, status, "
            "due_at, entered_at, updated_at, finished_at, exit_reason, history) "
            "SELECT %s, %s, p.id, 1, 'wait', %s, {due}, now(), now(), {finished}, '', '[]' "
            "FROM audiences_profile p WHERE p.external_id LIKE 'claim-%%' AND p.id %% 3 {which} 0"
        )
        # A finished run, and statistics taken then; then an entry the statistics have not seen.
        cursor.execute(enroll.format(due="NULL", finished="now()", which="<>"), [journey.pk, version.pk, "completed"])
        cursor.execute("ANALYZE journeys_enrollment")
        cursor.execute(
            enroll.format(due="now() - interval '1 minute'", finished="NULL", which="="),
            [journey.pk, version.pk, "waiting"],
        )
    plans = []

    def explain(execute, sql, params, many, context):
        if "SKIP LOCKED" in sql:
            raw = context["cursor"].cursor  # psycopg's own: no wrapper, the claim's settings
            raw.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            plans.append(raw.fetchone()[0])
        return execute(sql, params, many, context)

    with transaction.atomic(), connection.execute_wrapper(explain):
        rows = _claim(batch=100, now=timezone.now())
        with connection.cursor() as cursor:
            cursor.execute("SHOW enable_sort")
            assert cursor.fetchone()[0] == "on", "sorting is off for the claim alone"
    assert len(rows) == 100

    def nodes(node):
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    (plan,) = plans
    found = list(nodes(plan[0]["Plan"]))
    assert [n.get("Index Name") for n in found if "Index Name" in n] == ["enrollment_due_idx"]
    assert not [n for n in found if n["Node Type"] == "Sort"]


def test_a_batch_writes_back_only_its_enrollments_when_the_statistics_say_the_table_is_empty(make_journey, publish):
    """A vacuum of an emptied table leaves it pages and no rows until the next analyze: a plan made
    then for the batch's update joined it to every enrollment through the primary key."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's statistics and plans")
    journey = publish(
        make_journey(graph=_wait_graph(seconds=60), entry_kind="event", entry_event="later", entry_segment=None)
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at) "
            "SELECT 'back-' || n, '{}', '', '', now(), now() FROM generate_series(1, 5000) n"
        )
        cursor.execute(
            "INSERT INTO journeys_enrollment (journey_id, version_id, profile_id, entry_number, step, status, "
            "due_at, entered_at, updated_at, finished_at, exit_reason, history) "
            "SELECT %s, %s, p.id, 1, 'pause', 'waiting', now() - interval '1 minute', now(), now(), NULL, '', '[]' "
            "FROM audiences_profile p WHERE p.external_id LIKE 'back-%%'",
            [journey.pk, journey.live_version.pk],
        )
    statistics_say_empty("journeys_enrollment")
    before = rows_read("journeys_enrollment")
    report = journeys_run_due(batch=50, max_batches=1)
    read = rows_read("journeys_enrollment") - before
    assert report.enrollments == 50
    assert Enrollment.objects.filter(journey=journey, status="completed").count() == 50
    assert read < 500, read  # the batch's claim and its write-back, not the 5,000 enrollments


def test_a_segment_entry_reads_an_any_group_as_the_union_of_its_branches(make_journey, publish, vips, manager_alice):
    """The entry reads a whole audience as its count does: an 'any' group whose branches read
    other tables (members, events) is the union of their profile ids, not each branch tested on
    every profile (README, "segments")."""
    from django.test.utils import CaptureQueriesContext

    from accounts.services import access_grant
    from audiences.models import Segment

    kept = ProfileFactory.create_batch(2)
    for profile in kept:
        SegmentMemberFactory(segment=vips, profile=profile)
    opened = ProfileFactory()
    EventFactory(profile=opened, name="app_open")
    ProfileFactory.create_batch(3)  # neither
    segment = Segment.objects.create(
        name="Kept or opened", rules={"any": [{"segment": vips.pk}, {"event": "app_open"}]}
    )
    access_grant(obj=segment, to=manager_alice, by=None)
    wait_an_hour = {
        "steps": [{"id": "pause", "type": "wait", "seconds": 3600, "next": "done"}, {"id": "done", "type": "exit"}]
    }
    journey = publish(make_journey(entry_segment=segment, graph=wait_an_hour))

    with CaptureQueriesContext(connection) as queries:
        assert journey_enter_segment(journey_id=journey.pk) == 3
    assert set(Enrollment.objects.filter(journey=journey).values_list("profile_id", flat=True)) == {
        p.pk for p in (*kept, opened)
    }
    (entry,) = [
        q["sql"] for q in queries.captured_queries if "INSERT INTO" in q["sql"] and "journeys_enrollment" in q["sql"]
    ]
    assert " UNION " in entry


def test_a_segment_read_again_as_rarely_as_allowed_is_read_and_its_next_read_set(make_journey, publish):
    from django.core.exceptions import ValidationError

    from journeys.services.entries import journeys_tick

    # Hours a date cannot be counted in (past the year 9999) are refused when saved, naming the field...
    with pytest.raises(ValidationError) as refused:
        make_journey(name="Every 2**31 - 1 hours", entry_every_hours=2**31 - 1)
    assert "entry_every_hours" in refused.value.message_dict
    # ...and the longest interval saved is read, and the beat goes on for every journey.
    ProfileFactory()
    now = timezone.now()
    journey = publish(make_journey(entry_every_hours=365 * 24), now=now)
    assert journeys_tick(now=now)["entered"] == 1
    journey.refresh_from_db()
    assert journey.next_entry_at == now + dt.timedelta(days=365)


def test_a_split_whose_branches_have_no_label_counts_each_branch_as_the_page_names_it(make_journey, publish):
    ProfileFactory.create_batch(40)
    graph = {
        "steps": [
            {
                "id": "ab",
                "type": "split",
                "branches": [{"percent": 50, "next": "a"}, {"label": "", "percent": 50, "next": "b"}],
            },
            {"id": "a", "type": "exit"},
            {"id": "b", "type": "exit"},
        ]
    }
    journey = publish(make_journey(graph=graph))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    stats = version_step_stats(journey.live_version)
    assert stats["ab"]["passed"] == {"branch 1": stats["a"]["exited"], "branch 2": stats["b"]["exited"]}
    assert stats["a"]["exited"] + stats["b"]["exited"] == 40 and stats["a"]["exited"] > 0


def test_stopping_a_journey_counts_each_profile_inside_as_exited_at_the_step_it_was_at(
    make_journey, publish, manager_alice, client
):
    """Profiles waiting on a retired version and on the live one: each version's wait step says how
    many left there when the journey stopped (the steps said entered 3, waiting 0, and nothing of them)."""
    from journeys.models import JourneyVersion
    from tests.factories import TEST_PASSWORD

    first = ProfileFactory()
    journey = publish(make_journey(graph=_wait_graph(seconds=3600), entry_every_hours=1))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    journey_version_edit(journey_id=journey.pk, by=manager_alice, graph=_wait_graph(seconds=7200))
    ProfileFactory.create_batch(2)
    journey = publish(journey)
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    assert Enrollment.objects.get(profile=first).version.number == 1
    journey_stop(journey_id=journey.pk, by=manager_alice)
    for number, inside in ((1, 1), (2, 2)):
        pause = version_step_stats(JourneyVersion.objects.get(journey=journey, number=number))["pause"]
        assert (pause["entered"], pause["waiting"], pause["exited"], pause["stopped"]) == (inside, 0, inside, inside)
    assert client.login(username=manager_alice.username, password=TEST_PASSWORD)
    page = client.get(f"/admin/journeys/journey/{journey.pk}/change/").content.decode()
    assert "entered 2 · waiting 0" in page and "journey stopped 2" in page


def test_stopping_a_journey_before_the_engine_ran_its_entries_counts_them_entered_where_they_stopped(
    make_journey, publish, manager_alice, welcome
):
    """A segment read, then stopped before the engine took its profiles up: the first step said
    "entered 0" and "journey stopped 3", more profiles leaving it than had come in."""
    ProfileFactory.create_batch(3)
    journey = publish(make_journey(graph=_wait_graph(seconds=3600, content=welcome.pk)))
    journey_enter_segment(journey_id=journey.pk)
    assert set(Enrollment.objects.values_list("status", flat=True)) == {"active"}
    journey_stop(journey_id=journey.pk, by=manager_alice)
    pause = version_step_stats(journey.live_version)["pause"]
    assert (pause["entered"], pause["due"], pause["exited"], pause["stopped"]) == (3, 0, 3, 3)
    assert version_step_stats(journey.live_version)["push"]["entered"] == 0


def test_a_journey_whose_segment_entry_fails_holds_back_no_other_journey(make_journey, publish, caplog):
    """A version saved before a rule it breaks (here, a segment read again every 2**31 - 1 hours,
    whose next read cannot be dated): its entry fails each beat, the other journeys go on."""
    from journeys.models import JourneyVersion
    from journeys.services.entries import journeys_tick

    profile = ProfileFactory()
    now = timezone.now()
    broken = publish(make_journey(name="Broken", entry_every_hours=1), now=now)
    JourneyVersion.objects.filter(pk=broken.live_version_id).update(entry_every_hours=2**31 - 1)
    fine = publish(make_journey(name="Fine", graph={"steps": [EXIT]}), now=now)
    report = journeys_tick(now=now)
    assert report["entered"] == 1 and report["enrollments"] == 1
    assert _enrollment(fine, profile).status == "completed"
    assert not broken.enrollments.exists()
    assert "Broken" in caplog.text and "OverflowError" in caplog.text


def test_a_wait_of_whole_days_keeps_the_profile_s_time_of_day_across_a_clock_change(make_journey, publish):
    """New York moves its clocks forward on 2027-03-14: a day's wait begun at 10:00 the day before
    ends at 10:00 again, 23 hours later; in UTC it is 24 hours, and a wait of hours stays exact."""
    new_york = ProfileFactory(timezone="America/New_York")
    nowhere = ProfileFactory(timezone="")
    t0 = dt.datetime(2027, 3, 13, 15, 0, tzinfo=dt.UTC)  # 10:00 in New York (UTC-5)
    journey = publish(make_journey(graph=_wait_graph(seconds=2 * 86400)), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    due = {e.profile_id: e.due_at for e in Enrollment.objects.filter(journey=journey)}
    assert due[new_york.pk] == dt.datetime(2027, 3, 15, 14, 0, tzinfo=dt.UTC)  # 10:00 EDT (UTC-4): 47 h
    assert due[nowhere.pk] == t0 + dt.timedelta(days=2)
    journeys_run_due(now=dt.datetime(2027, 3, 15, 14, 0, 1, tzinfo=dt.UTC))
    assert Enrollment.objects.get(journey=journey, profile=new_york).status == "completed"

    hours = publish(make_journey(name="Hours", graph=_wait_graph(seconds=36 * 3600)), now=t0)
    journey_enter_segment(journey_id=hours.pk, now=t0)
    journeys_run_due(now=t0)
    assert Enrollment.objects.get(journey=hours, profile=new_york).due_at == t0 + dt.timedelta(hours=36)


def test_a_wait_of_whole_days_keeps_the_apps_default_zone_s_time_of_day_for_a_profile_without_one(
    make_journey, publish, team
):
    """A profile without a zone counts a wait of whole days in the app's default zone, as it waits
    until a time of day: begun at 10:00 in New York the day before its clocks go forward, two days
    end at 10:00 there again (47 hours), not 48 hours later as in UTC."""
    from delivery.models import DeliveryRules

    DeliveryRules.objects.create(app=team, default_timezone="America/New_York")
    nowhere = ProfileFactory(timezone="")
    t0 = dt.datetime(2027, 3, 13, 15, 0, tzinfo=dt.UTC)  # 10:00 in New York (UTC-5)
    journey = publish(make_journey(graph=_wait_graph(seconds=2 * 86400)), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    assert _enrollment(journey, nowhere).due_at == dt.datetime(2027, 3, 15, 14, 0, tzinfo=dt.UTC)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks between two sessions")
@pytest.mark.django_db(transaction=True)
def test_a_segment_entry_and_a_deletion_of_its_profiles_do_not_deadlock(make_journey, publish, manager_alice):
    """An enrollment's check of its profile locks it (KEY SHARE) at commit, in the order the
    enrollments were written: as the audience query read the profiles, here 'b' before 'a' (moved
    to the end of the table by an update). A deletion locks them by id ('a' then 'b'): each held
    one the other waited for ('deadlock detected'). The enrollments are now written in profile
    id order: the entry waits for the deletion, then finds the profiles it read gone and enters no
    one (its next run reads the segment again)."""
    from audiences.models import Profile
    from audiences.services.profiles import profiles_delete

    journey = publish(make_journey())
    a, b = ProfileFactory(external_id="a"), ProfileFactory(external_id="b")
    Profile.objects.filter(pk=a.pk).update(attributes={"plan": "pro"})  # a new row version after 'b'
    Journey.objects.filter(pk=journey.pk).update(next_entry_at=timezone.now())
    held = ProfileHeld(b.pk)  # a third writer's lock on it
    holding, released = held.holding, held.released

    def deletion():
        holding.wait(10)
        profiles_delete(profile_ids=[a.pk, b.pk], by=manager_alice)

    def entry():
        assert wait_for_blocked_writers(1)  # the deletion holds 'a' and waits for 'b'
        journey_enter_segment(journey_id=journey.pk)

    def release():
        holding.wait(10)
        wait_for_blocked_writers(2)
        released.set()

    errors = concurrently(held.holder, deletion, entry, release)
    assert [type(e) for e in errors] == [IntegrityError], errors  # the entry's check, not a deadlock
    assert not Profile.objects.exists()
    assert not Enrollment.objects.exists()
    assert journey_enter_segment(journey_id=journey.pk) == 0


def test_a_condition_segment_edited_after_approval_branches_no_one_and_says_why(
    make_journey, publish, vips, manager_alice
):
    """The condition's segment is read live: an edit after the approval would change who takes which
    branch without an approval. Its profiles end there, refused with the reason, as a campaign's
    send to an audience defined otherwise is refused."""
    from audiences.services.segments import segment_members_change

    member, other = ProfileFactory(external_id="m-1"), ProfileFactory(external_id="m-2")
    SegmentMemberFactory(segment=vips, profile=member)
    journey = publish(make_journey(graph=_condition_graph([{"label": "VIP", "segment": vips.pk, "next": "vip"}])))
    segment_members_change(segment_id=vips.pk, by=manager_alice, add=["m-2"])
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    for profile in (member, other):
        refused = _enrollment(journey, profile)
        assert refused.status == "failed" and refused.step == "check"
        # by number: whoever reads the enrollment may not see the segment (the journey's page names it to who may)
        assert f"segment #{vips.pk} is defined otherwise than when version 1 was approved" in refused.exit_reason
        assert "VIPs" not in refused.exit_reason
    assert version_step_stats(journey.live_version)["check"]["failed"] == 2


@pytest.mark.embedded
def test_erasing_a_member_of_a_kept_list_a_journey_reads_leaves_its_approval(
    make_journey, publish, vips, manager_alice
):
    """Erasing a profile removed its memberships, and the list's member count the version's approved
    segments hold with them: the journey entered no one from the list, and branched no one on it once
    the engine read the list again (another process, or a change mark moved), until a new version was
    approved. An erasure chooses no one to target: the others enter and branch as approved, in this
    process and a fresh one alike; a member added after is a change, refused."""
    from audiences.services.profiles import profiles_delete
    from audiences.services.segments import segment_members_change
    from journeys.services import engine

    kept, erased, newest = (ProfileFactory(external_id=f"vip-{i}") for i in range(3))
    for profile in (kept, erased, newest):
        SegmentMemberFactory(segment=vips, profile=profile)
    graph = _condition_graph([{"label": "VIP", "segment": vips.pk, "next": "vip"}])
    journey = publish(make_journey(graph=graph, entry_segment=vips, entry_every_hours=1))
    now = timezone.now()
    assert journey_enter_segment(journey_id=journey.pk, now=now) == 3
    journeys_run_due(now=now)
    assert _enrollment(journey, kept).step == "vip"
    profiles_delete(profile_ids=[erased.pk, newest.pk], by=manager_alice)
    for later in (2, 4):  # the engine's kept verdict, then one read afresh
        Enrollment.objects.filter(journey=journey).delete()
        assert journey_enter_segment(journey_id=journey.pk, now=now + dt.timedelta(hours=later)) == 1
        journeys_run_due(now=now + dt.timedelta(hours=later))
        assert (_enrollment(journey, kept).status, _enrollment(journey, kept).step) == ("completed", "vip")
        engine._FROZEN_CHECKED.clear()
    ProfileFactory(external_id="vip-late")
    segment_members_change(segment_id=vips.pk, by=manager_alice, add=["vip-late"])
    Enrollment.objects.filter(journey=journey).delete()
    assert journey_enter_segment(journey_id=journey.pk, now=now + dt.timedelta(hours=6)) == 0


def test_an_entry_segment_edited_after_approval_enters_no_one_and_says_why(
    make_journey, publish, everyone, manager_alice
):
    from accounts.models import AuditEvent
    from audiences.services.segments import segment_update

    ProfileFactory.create_batch(2)
    journey = publish(make_journey(graph={"steps": [EXIT]}, entry_every_hours=1))
    segment_update(segment_id=everyone.pk, by=manager_alice, rules={"all": [{"field": "locale", "op": "exists"}]})
    now = timezone.now()
    assert journey_enter_segment(journey_id=journey.pk, now=now) == 0
    assert not Enrollment.objects.exists()
    read = AuditEvent.objects.filter(action="journey_segment_read").latest("pk")
    assert "'Everyone' is defined otherwise than when version 1 was approved" in read.summary["refused"]
    journey.refresh_from_db()
    assert journey.next_entry_at == now + dt.timedelta(hours=1)  # the next read stays due


def test_an_entry_segment_whose_saved_rules_no_longer_hold_enters_no_one_and_says_why(make_journey, publish, everyone):
    """Rules saved before a check existed (or by a migration: a number condition holding a word),
    under a version approved before its segments were frozen: the read raised out of the worker's
    task, and the journey's entry stayed due, failing again each minute, with nothing said."""
    from accounts.models import AuditEvent
    from audiences.models import Segment
    from journeys.models import JourneyVersion

    ProfileFactory.create_batch(2)
    journey = publish(make_journey(graph={"steps": [EXIT]}, entry_every_hours=1))
    JourneyVersion.objects.filter(pk=journey.live_version_id).update(approved_segments={})
    Segment.objects.filter(pk=everyone.pk).update(
        kind="rules", rules={"all": [{"attribute": "age", "type": "number", "op": "gt", "value": "old"}]}
    )
    now = timezone.now()
    assert journey_enter_segment(journey_id=journey.pk, now=now) == 0
    assert not Enrollment.objects.exists()
    read = AuditEvent.objects.filter(action="journey_segment_read").latest("pk")
    assert "rules.all[0].value" in read.summary["refused"] and "number" in read.summary["refused"]
    journey.refresh_from_db()
    assert journey.next_entry_at == now + dt.timedelta(hours=1)  # read again when due


def test_a_segment_renamed_after_approval_changes_nobody_s_branch(make_journey, publish, vips, manager_alice):
    from audiences.services.segments import segment_update

    member = ProfileFactory()
    SegmentMemberFactory(segment=vips, profile=member)
    journey = publish(make_journey(graph=_condition_graph([{"label": "VIP", "segment": vips.pk, "next": "vip"}])))
    segment_update(segment_id=vips.pk, by=manager_alice, name="Very important")
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    assert (_enrollment(journey, member).step, _enrollment(journey, member).status) == ("vip", "completed")


def test_a_version_approved_before_its_segments_were_covered_keeps_its_approval(make_journey, publish, welcome):
    """Upgrading keeps what was approved sending: a version approved when the fingerprint did not
    cover the segments froze none, and its fingerprint is checked as it was made."""
    from journeys.models import JourneyVersion

    journey = publish(make_journey(graph=_wait_graph(seconds=0, content=welcome.pk)))
    version = JourneyVersion.objects.get(pk=journey.live_version_id)
    contents = {step: item["fingerprint"] for step, item in version.frozen_specs.items()}
    JourneyVersion.objects.filter(pk=version.pk).update(
        approved_segments={}, approved_fingerprint=version.fingerprint(content_fingerprints=contents)
    )
    profile = ProfileFactory()
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    assert _enrollment(journey, profile).status == "completed"
    assert Dispatch.objects.filter(kind="journey").count() == 1


def test_a_one_off_entry_refused_for_an_edited_segment_stays_live_and_reads_once_approved_again(
    make_journey, publish, everyone, manager_alice
):
    """A one-off entry read once: refused for a segment edited since the approval, the journey was
    then empty with no read to come, and the next beat closed it, so the new version the page asks
    for could never be approved. It stays live, its read due again within the hour (an edit put
    back reads as approved); a new version approved reads at once."""
    from audiences.services.segments import segment_update
    from journeys.services.entries import journeys_close_finished

    ProfileFactory.create_batch(2)
    journey = publish(make_journey(graph={"steps": [EXIT]}))
    segment_update(segment_id=everyone.pk, by=manager_alice, rules={"all": [{"field": "locale", "op": "exists"}]})
    now = timezone.now()
    assert journey_enter_segment(journey_id=journey.pk, now=now) == 0
    journey.refresh_from_db()
    assert journey.next_entry_at == now + dt.timedelta(hours=1)
    assert journeys_close_finished(now=now) == 0
    journey.refresh_from_db()
    assert journey.status == "live"
    segment_update(segment_id=everyone.pk, by=manager_alice, rules={"all": [{"field": "external_id", "op": "exists"}]})
    later = now + dt.timedelta(hours=1)
    assert journey_enter_segment(journey_id=journey.pk, now=later) == 2
    journey.refresh_from_db()
    assert journey.next_entry_at is None  # read: a one-off's only read


def test_a_request_submitted_before_segments_were_covered_is_approved_covering_them(
    make_journey, manager_alice, approver_bob, vips
):
    """A request waiting at the upgrade holds a fingerprint without the segments: approving it was
    refused as changed since it was submitted. Approved now, it covers the segments as they stand."""
    from accounts.models import ApprovalRequest
    from audiences.services.segments import segment_members_change
    from journeys.models import Journey, JourneyVersion
    from journeys.services.lifecycle import _content_fingerprints, journey_approve, journey_submit, version_fingerprint

    journey = make_journey(graph=_condition_graph([{"label": "VIP", "segment": vips.pk, "next": "vip"}]))
    journey_submit(journey_id=journey.pk, by=manager_alice)
    version = JourneyVersion.objects.get(journey=journey, status="in_review")
    legacy = version.fingerprint(content_fingerprints=_content_fingerprints(version))
    assert legacy != version_fingerprint(version)
    ApprovalRequest.objects.filter(status="pending").update(fingerprint=legacy)
    journey_approve(journey_id=journey.pk, by=approver_bob)
    version.refresh_from_db()
    assert version.status == "live" and version.approved_segments
    assert version_fingerprint(version) == version.approved_fingerprint
    member = ProfileFactory(external_id="m-1")
    segment_members_change(segment_id=vips.pk, by=manager_alice, add=["m-1"])  # edited after: refused
    journey_enter_segment(journey_id=Journey.objects.get(pk=journey.pk).pk)
    journeys_run_due()
    assert _enrollment(journey, member).status == "failed"


def test_a_condition_compares_its_kept_lists_definition_again_only_once_it_is_marked_changed(
    make_journey, publish, vips, manager_alice
):
    """A kept list's definition counts its members (tens of milliseconds at 500,000 members): read
    for every batch, it made the engine three times slower at 1,000,000 profiles. Its change mark is
    read instead, and the definition again once the mark moves: an import's batch moves it."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from audiences.imports import segment_members_lock
    from audiences.models import Segment

    first, second, third = (ProfileFactory(external_id=f"k-{i}") for i in range(3))
    for profile in (first, second):
        SegmentMemberFactory(segment=vips, profile=profile)
    graph = _condition_graph([{"label": "VIP", "segment": vips.pk, "next": "vip"}])
    journey = publish(make_journey(graph=graph, entry_every_hours=1))
    now = timezone.now()
    journey_enter_segment(journey_id=journey.pk, now=now)
    journeys_run_due()
    assert _enrollment(journey, first).step == "vip"
    marked = Segment.objects.get(pk=vips.pk).updated_at
    # Nothing changed: another batch reads the mark, not the members' count.
    Enrollment.objects.filter(journey=journey).delete()
    with CaptureQueriesContext(connection) as seen:
        assert journey_enter_segment(journey_id=journey.pk, now=now + dt.timedelta(hours=2)) == 3
        journeys_run_due(now=now + dt.timedelta(hours=2))
    assert _enrollment(journey, first).step == "vip" and _enrollment(journey, third).status == "completed"
    assert not [q["sql"] for q in seen.captured_queries if "COUNT(" in q["sql"] and "segmentmember" in q["sql"]]
    # An import's batch into it marks it: its members are no longer the approved ones, refused at once.
    with transaction.atomic():
        segment_members_lock(vips.pk)
        SegmentMemberFactory(segment=vips, profile=third)
    assert Segment.objects.get(pk=vips.pk).updated_at > marked
    Enrollment.objects.filter(journey=journey).delete()
    assert journey_enter_segment(journey_id=journey.pk, now=now + dt.timedelta(hours=4)) == 3
    journeys_run_due(now=now + dt.timedelta(hours=4))
    assert _enrollment(journey, third).status == "failed"
    assert f"segment #{vips.pk} is defined otherwise" in _enrollment(journey, third).exit_reason


def test_a_rename_of_a_live_journey_does_not_reach_the_words_its_approved_version_sends(
    make_journey, publish, sim_team, manager_alice, pushsim, django_capture_on_commit_callbacks
):
    """Every push gives its content the journey's name (``context.journey.name``), and the approver
    read the phones showing it. A rename is no new version (nothing to approve), so the approved
    version goes on sending under the name it was approved with, not words nobody approved."""
    from journeys.services.lifecycle import journey_rename
    from tests.factories import PushContentFactory

    named = PushContentFactory(app=sim_team, title="{{ context.journey.name }}", body="Welcome")
    (profile,) = _profiles(1, sim_team)
    t0 = timezone.now()
    journey = publish(make_journey(app=sim_team, graph=_wait_graph(seconds=3600, content=named.pk)), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    journey_rename(journey_id=journey.pk, by=manager_alice, name="Everything free, today only")
    with django_capture_on_commit_callbacks(execute=True):
        journeys_run_due(now=t0 + dt.timedelta(minutes=61))
    (dispatch,) = Dispatch.objects.filter(kind="journey")
    assert dispatch.context["journey"]["name"] == "Onboarding"
    token = profile.devices.get().token
    assert [push["title"] for push in pushsim.state.recent(token=token)] == ["Onboarding"]


def test_the_gate_refuses_a_journey_push_naming_the_journey_otherwise_than_as_approved(
    make_journey, publish, welcome, manager_alice
):
    journey = publish(make_journey(graph=_wait_graph(seconds=3600, content=welcome.pk)))
    version = journey.live_version
    journey = Journey.objects.get(pk=journey.pk)
    renamed = {"journey": {**journey.send_context(version=version, step="push")["journey"], "name": "Free"}}
    for context in (renamed, {"journey": {"id": journey.pk, "version": version.number, "step": "push"}}):
        with pytest.raises(GateClosed, match="as version 1 was approved"):
            dispatch_create(
                app_id=journey.app_id,
                kind="journey",
                spec=version.frozen_specs["push"]["spec"],
                profile_ids=[],
                source_id=version.pk,
                context=context,
            )


def test_the_migration_keeps_the_name_of_versions_approved_before_it_was_kept(make_journey, publish):
    """Versions approved before keep the name the journey has now; a draft's is left empty."""
    import importlib

    from django.apps import apps

    from journeys.models import JourneyVersion

    forwards = importlib.import_module("journeys.migrations.0011_version_approved_name").forwards
    live = publish(make_journey(name="Onboarding")).live_version
    draft = make_journey(name="Later").versions.get()
    JourneyVersion.objects.update(approved_name="")

    forwards(apps, None)

    assert JourneyVersion.objects.get(pk=live.pk).approved_name == "Onboarding"
    assert JourneyVersion.objects.get(pk=draft.pk).approved_name == ""


def test_a_renamed_journeys_new_version_once_approved_sends_the_new_name(
    make_journey, publish, sim_team, manager_alice, approver_bob, pushsim, django_capture_on_commit_callbacks
):
    """The rename of a live journey whose pushes show its name opens a new version: the profiles
    inside the approved one finish on it under the name it was approved with, and those entering
    the new one, once it is approved, read the new name."""
    from journeys.services.lifecycle import journey_approve, journey_rename, journey_submit
    from tests.factories import PushContentFactory

    named = PushContentFactory(app=sim_team, title="{{ context.journey.name }}", body="Welcome")
    (first,) = _profiles(1, sim_team)
    t0 = timezone.now()
    journey = publish(make_journey(app=sim_team, graph=_wait_graph(seconds=3600, content=named.pk)), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    journey_rename(journey_id=journey.pk, by=manager_alice, name="Everything free, today only")
    journey_submit(journey_id=journey.pk, by=manager_alice)
    journey_approve(journey_id=journey.pk, by=approver_bob, now=t0 + dt.timedelta(minutes=1))
    (second,) = _profiles(1, sim_team)
    journey_enter_segment(journey_id=journey.pk, now=t0 + dt.timedelta(minutes=2))
    journeys_run_due(now=t0 + dt.timedelta(minutes=2))
    with django_capture_on_commit_callbacks(execute=True):
        journeys_run_due(now=t0 + dt.timedelta(minutes=63))
    titles = {p: [push["title"] for push in pushsim.state.recent(token=p.devices.get().token)] for p in (first, second)}
    assert titles == {first: ["Onboarding"], second: ["Everything free, today only"]}


def _steps_not_adding_up(version) -> dict[str, tuple[int, int]]:
    """Each step of the version's counters where those who came in (entered) are not those who went
    on, ended or are still there: step → (in, out and inside); and under "*", when the version's
    enrollments are not those its counters ended and those still open: (enrollments, ended and open)."""
    from collections import Counter

    from journeys.models import StepStat

    ends = ("failed", "exited", "exit_event", "stopped", "deleted")
    came, went, ended = Counter(), Counter(), 0
    for step, metric, count in StepStat.objects.filter(version=version).values_list("step", "metric", "count"):
        if metric == "entered":
            came[step] += count
        elif metric.split(":")[0] in ("passed", "pushed", *ends):
            went[step] += count
        ended += count if metric in ends else 0
    enrollments = Enrollment.objects.filter(version=version)
    for step in enrollments.filter(status__in=Enrollment.OPEN_STATUSES).values_list("step", flat=True):
        went[step] += 1
        ended += 1
    wrong = {step: (came[step], went[step]) for step in came | went if came[step] != went[step]}
    if enrollments.count() != ended:
        wrong["*"] = (enrollments.count(), ended)
    return wrong


@pytest.mark.embedded
def test_a_profile_at_a_step_its_version_does_not_have_fails_counted_there(make_journey, publish):
    """An enrollment at a step its version does not have (a row written by hand, or by a migration)
    ended failed, counted nowhere: its profile left the journey's figures."""
    lost, kept = ProfileFactory.create_batch(2)
    journey = publish(make_journey(graph=_wait_graph(seconds=0)))
    journey_enter_segment(journey_id=journey.pk)
    Enrollment.objects.filter(profile=lost).update(step="gone")
    journeys_run_due()
    ended = _enrollment(journey, lost)
    assert (ended.status, ended.exit_reason) == ("failed", "step 'gone' is not in version 1")
    assert [(at, outcome) for at, _, outcome in ended.history] == [("gone", "failed")]  # as its counters say
    assert _enrollment(journey, kept).status == "completed"
    assert _steps_not_adding_up(journey.live_version) == {}
    counted = journey.live_version.stats.filter(step="gone").values_list("metric", "count")
    assert sorted(counted) == [("entered", 1), ("failed", 1)]


@pytest.mark.embedded
def test_a_profile_running_more_steps_than_its_version_has_fails_counted_where_it_stopped(make_journey, publish):
    """A graph that loops (saved past the checks, by hand or by a migration) ran its profiles until
    the engine gave up on them, failed, counted nowhere: the step where they stopped had not counted
    them entered, nor ended."""
    from journeys.models import JourneyVersion

    (profile,) = ProfileFactory.create_batch(1)
    journey = publish(make_journey(graph=_wait_graph(seconds=0)))
    journey_enter_segment(journey_id=journey.pk)
    loop = {
        "steps": [
            {"id": "pause", "type": "wait", "seconds": 0, "next": "again"},
            {"id": "again", "type": "wait", "seconds": 0, "next": "pause"},
        ]
    }
    JourneyVersion.objects.filter(pk=journey.live_version_id).update(graph=loop)
    journeys_run_due()
    ended = _enrollment(journey, profile)
    assert (ended.status, ended.exit_reason) == ("failed", "ran more steps than the journey has")
    assert ended.history[-1][0] == ended.step and ended.history[-1][2] == "failed"  # as its counters say
    version = JourneyVersion.objects.get(pk=journey.live_version_id)
    assert _steps_not_adding_up(version) == {}
    assert sum(counts["failed"] for counts in version_step_stats(version).values()) == 1


@pytest.mark.embedded
def test_profiles_the_engine_finds_in_a_journey_no_longer_on_the_air_are_counted_stopped_where_they_were(
    make_journey, publish
):
    """A journey off the air with profiles still due (its status written by hand, or a copy of a
    database taken mid-stop): the engine ended them ("journey stopped") but counted them nowhere,
    neither the one waiting nor the one it had not run yet, which its step never counted entered."""
    t0 = timezone.now()
    ProfileFactory()
    journey = publish(make_journey(graph=_wait_graph(seconds=3600), entry_every_hours=1), now=t0)
    journey_enter_segment(journey_id=journey.pk, now=t0)
    journeys_run_due(now=t0)
    entered = ProfileFactory()
    journey_enter_segment(journey_id=journey.pk, now=t0 + dt.timedelta(hours=2))
    assert _enrollment(journey, entered).status == "active"
    Journey.objects.filter(pk=journey.pk).update(status="stopped")
    journeys_run_due(now=t0 + dt.timedelta(hours=2))
    assert set(Enrollment.objects.values_list("status", "exit_reason")) == {("exited", "journey stopped")}
    pause = version_step_stats(journey.live_version)["pause"]
    assert (pause["entered"], pause["waiting"], pause["exited"], pause["stopped"]) == (2, 0, 2, 2)
    assert _steps_not_adding_up(journey.live_version) == {}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("edited", ["the entry kept list", "a list its rules nest"])
def test_a_list_change_between_the_entry_check_and_its_insert_enters_no_one_unapproved(
    edited, make_journey, publish, vips, manager_alice, monkeypatch
):
    """A member added to the entry segment's kept list (or to a list its rules use) commits between
    the entry's check that the segment is defined as approved and the INSERT … SELECT that reads it:
    the entry is to read the definition it checked, the change waiting for it (then read as an edit)."""
    from audiences.rules import compiler
    from audiences.services.segments import segment_create, segment_members_change

    first = ProfileFactory(external_id="vip-1")
    ProfileFactory(external_id="vip-late")
    entry = vips
    if edited == "a list its rules nest":
        entry = segment_create(name="Regulars", rules={"all": [{"segment": vips.pk}]}, by=manager_alice)
    SegmentMemberFactory(segment=vips, profile=first)
    journey = publish(make_journey(graph={"steps": [EXIT]}, entry_segment=entry, entry_every_hours=1))
    Enrollment.objects.filter(journey=journey).delete()
    Journey.objects.filter(pk=journey.pk).update(next_entry_at=timezone.now())
    failed = []

    def add() -> None:
        try:
            segment_members_change(segment_id=vips.pk, by=manager_alice, add=["vip-late"])
        except Exception as exc:
            failed.append(exc)
        finally:
            connection.close()

    editor = threading.Thread(target=add)
    read = compiler.segment_profiles

    def read_while_the_list_changes(*args, **kwargs):
        editor.start()
        editor.join(timeout=3)  # it commits here, unless the entry holds the lists
        return read(*args, **kwargs)

    monkeypatch.setattr(compiler, "segment_profiles", read_while_the_list_changes)
    assert journey_enter_segment(journey_id=journey.pk) == 1
    editor.join(timeout=30)
    assert not failed
    assert list(Enrollment.objects.filter(journey=journey).values_list("profile__external_id", flat=True)) == ["vip-1"]
    assert vips.members.filter(profile__external_id="vip-late").exists()  # added after


@pytest.mark.django_db(transaction=True)
def test_a_list_change_between_the_condition_check_and_its_read_branches_no_one_unapproved(
    make_journey, publish, vips, manager_alice, monkeypatch
):
    """A member added to the kept list a condition tests commits between the engine's check that the
    segment is defined as approved and the branch's read of it: the branch is to read the definition
    it checked, the change waiting for the batch (then read as an edit)."""
    from audiences.services.segments import segment_members_change
    from journeys.services import engine

    member, late = ProfileFactory(external_id="m-1"), ProfileFactory(external_id="m-2")
    SegmentMemberFactory(segment=vips, profile=member)
    graph = _condition_graph([{"label": "VIP", "segment": vips.pk, "next": "vip"}])
    journey = publish(make_journey(graph=graph, entry_every_hours=1))
    Enrollment.objects.filter(journey=journey).delete()
    Journey.objects.filter(pk=journey.pk).update(next_entry_at=timezone.now())
    engine._FROZEN_CHECKED.clear()
    failed = []

    def add() -> None:
        try:
            segment_members_change(segment_id=vips.pk, by=manager_alice, add=["m-2"])
        except Exception as exc:
            failed.append(exc)
        finally:
            connection.close()

    editor = threading.Thread(target=add)
    taken = engine._branches_taken

    def branch_while_the_list_changes(*args, **kwargs):
        if not editor.is_alive() and editor.ident is None:
            editor.start()
            editor.join(timeout=3)  # it commits here, unless the engine holds the list
        return taken(*args, **kwargs)

    monkeypatch.setattr(engine, "_branches_taken", branch_while_the_list_changes)
    assert journey_enter_segment(journey_id=journey.pk) == 2
    journeys_run_due()
    editor.join(timeout=30)
    assert not failed
    assert _enrollment(journey, member).step == "vip"
    assert _enrollment(journey, late).step == "others"
    assert vips.members.filter(profile=late).exists()  # added after
