"""The journeys API: list and detail with per-step counts, for the keys that may read them."""

import pytest

from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment
from tests.factories import ProfileFactory, SegmentMemberFactory
from tests.journeys.conftest import approved_before_segments_were_frozen


def _private_journey(make_journey, manager_alice, welcome, vips):
    """A journey on an app only Alice works on."""
    from accounts.services import access_grant
    from tests.factories import AppFactory, PushContentFactory
    from tests.journeys.conftest import simple_graph

    back_office = AppFactory(name="Back office")
    access_grant(obj=back_office, to=manager_alice, by=None)
    content = PushContentFactory(app=back_office)
    return make_journey(
        app=back_office, name="Private", graph=simple_graph(condition_segment=vips.pk, content=content.pk)
    )


def test_list_shows_only_journeys_the_user_may_see(
    make_journey, api_key_for, approver_bob, manager_alice, welcome, vips
):
    journey = make_journey()
    private = _private_journey(make_journey, manager_alice, welcome, vips)
    answer = api_key_for(approver_bob).get("/api/v1/journeys/")
    assert answer.status_code == 200
    assert [j["id"] for j in answer.json()["results"]] == [journey.pk]
    assert answer.json()["results"][0]["status"] == "draft"
    mine = {j["id"] for j in api_key_for(manager_alice).get("/api/v1/journeys/").json()["results"]}
    assert mine == {journey.pk, private.pk}


def test_detail_has_per_step_counts(
    make_journey, publish, api_key_for, approver_bob, vips, django_assert_max_num_queries
):
    vip, other = ProfileFactory.create_batch(2)
    SegmentMemberFactory(segment=vips, profile=vip)
    journey = publish(make_journey())
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    client = api_key_for(approver_bob)
    with django_assert_max_num_queries(20):
        answer = client.get(f"/api/v1/journeys/{journey.pk}/")
    assert answer.status_code == 200
    body = answer.json()
    assert body["version"]["number"] == 1 and body["live_version"] == 1
    assert body["enrollments"]["completed"] == 2
    steps = {s["id"]: s for s in body["steps"]}
    assert steps["check"]["passed"] == {"VIP": 1, "else": 1}
    assert steps["push"]["entered"] == 1
    assert steps["done"]["exited"] == 2


def test_detail_counts_the_profiles_of_a_push_batch_stopped_before_it_sent(
    make_journey, publish, api_key_for, manager_alice, welcome
):
    """The step's pushed profiles whose batch the journey's stop stopped before it made any row:
    in no rollup, they were counted nowhere the API answers."""
    from journeys.services.lifecycle import journey_stop

    ProfileFactory.create_batch(2)
    push = {"id": "push", "type": "push", "content": welcome.pk, "next": "done"}
    journey = publish(make_journey(graph={"steps": [push, {"id": "done", "type": "exit"}]}))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()  # its batch is left preparing: its rows are made once this commits
    journey_stop(journey_id=journey.pk, by=manager_alice)
    steps = {s["id"]: s for s in api_key_for(manager_alice).get(f"/api/v1/journeys/{journey.pk}/").json()["steps"]}
    assert steps["push"]["pushed"] == 2 and steps["push"]["targeted"] == 0
    assert steps["push"]["unsent"] == {"journey_stopped": 2}
    assert steps["done"]["unsent"] == {}


def test_detail_counts_a_profile_deleted_inside_as_ended_where_it_was(
    make_journey, publish, api_key_for, manager_alice
):
    from audiences.services.profiles import profiles_delete

    ann, ben = ProfileFactory.create_batch(2)
    graph = {
        "steps": [{"id": "pause", "type": "wait", "seconds": 3600, "next": "done"}, {"id": "done", "type": "exit"}]
    }
    journey = publish(make_journey(graph=graph))
    journey_enter_segment(journey_id=journey.pk)
    journeys_run_due()
    profiles_delete(profile_ids=[ben.pk], by=manager_alice)
    steps = {s["id"]: s for s in api_key_for(manager_alice).get(f"/api/v1/journeys/{journey.pk}/").json()["steps"]}
    assert (steps["pause"]["entered"], steps["pause"]["waiting"], steps["pause"]["exited"]) == (2, 1, 1)
    assert steps["pause"]["deleted"] == 1


def test_detail_of_a_journey_out_of_reach_is_404(
    make_journey, api_key_for, manager_alice, manager_mallory, welcome, vips
):
    journey = _private_journey(make_journey, manager_alice, welcome, vips)
    answer = api_key_for(manager_mallory).get(f"/api/v1/journeys/{journey.pk}/")
    assert answer.status_code == 404
    assert answer.json()["code"] == "not_found"


def test_a_key_without_read_scope_is_refused(make_journey, api_key_for, manager_alice):
    make_journey()
    answer = api_key_for(manager_alice, scopes=["ingest"]).get("/api/v1/journeys/")
    assert answer.status_code == 403


def test_events_sent_to_the_events_api_enter_and_end_journeys(
    make_journey, publish, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    from django.utils import timezone

    from journeys.models import Enrollment

    graph = {
        "steps": [{"id": "pause", "type": "wait", "seconds": 86400, "next": "done"}, {"id": "done", "type": "exit"}]
    }
    journey = publish(
        make_journey(
            graph=graph, entry_kind="event", entry_event="cart_abandoned", entry_segment=None, exit_event="purchase"
        )
    )
    client = api_key_for(manager_alice, scopes=["ingest"])
    when = timezone.now().isoformat()
    with django_capture_on_commit_callbacks(execute=True):
        answer = client.post(
            "/api/v1/events/bulk/",
            {"events": [{"external_id": "shopper", "name": "cart_abandoned", "occurred_at": when}]},
            format="json",
        )
    assert answer.status_code == 200, answer.content
    enrollment = Enrollment.objects.get(journey=journey, profile__external_id="shopper")
    assert enrollment.status == "waiting"
    with django_capture_on_commit_callbacks(execute=True):
        client.post(
            "/api/v1/events/bulk/",
            {"events": [{"external_id": "shopper", "name": "purchase", "occurred_at": timezone.now().isoformat()}]},
            format="json",
        )
    enrollment.refresh_from_db()
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "exit event 'purchase'")


def test_an_exit_failing_in_the_database_stores_the_event_and_ends_the_enrollment_when_replayed(
    make_journey, publish, api_key_for, manager_alice, enrollments_refused, django_capture_on_commit_callbacks
):
    """The exit refused by PostgreSQL: the event is stored (200) and the enrollment keeps waiting
    until the replay, which ends it; a replay run again finds nothing to do."""
    from django.utils import timezone

    from audiences.models import Event, EventReplay
    from audiences.services.events import events_replay_due
    from journeys.models import Enrollment

    graph = {
        "steps": [{"id": "pause", "type": "wait", "seconds": 86400, "next": "done"}, {"id": "done", "type": "exit"}]
    }
    publish(
        make_journey(
            graph=graph, entry_kind="event", entry_event="cart_abandoned", entry_segment=None, exit_event="purchase"
        )
    )
    client = api_key_for(manager_alice, scopes=["ingest"])

    def send(name):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(
                "/api/v1/events/bulk/",
                {"events": [{"external_id": "shopper", "name": name, "occurred_at": timezone.now().isoformat()}]},
                format="json",
            )

    assert send("cart_abandoned").status_code == 200
    with enrollments_refused():
        answer = send("purchase")
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    assert sorted(Event.objects.values_list("name", flat=True)) == ["cart_abandoned", "purchase"]
    assert Enrollment.objects.get().status == "waiting"
    replay = EventReplay.objects.get()
    assert replay.event_ids == [Event.objects.get(name="purchase").pk]
    with enrollments_refused():  # still refused when it is due: tried again later, waiting twice as long
        due = timezone.now() + timezone.timedelta(minutes=2)
        assert events_replay_due(now=due) == {
            "replayed": 0,
            "failed": 1,
            "dropped": 0,
            "events": {"replayed": 0, "failed": 1, "dropped": 0},
        }
    replay.refresh_from_db()
    assert replay.attempts == 2
    assert replay.next_attempt_at == due + timezone.timedelta(minutes=2)
    with django_capture_on_commit_callbacks(execute=True):
        assert events_replay_due(now=due + timezone.timedelta(minutes=2)) == {
            "replayed": 1,
            "failed": 0,
            "dropped": 0,
            "events": {"replayed": 1, "failed": 0, "dropped": 0},
        }
    assert Enrollment.objects.get().status == "exited"
    assert not EventReplay.objects.exists()
    assert Event.objects.filter(name="purchase").count() == 1
    assert (Enrollment.objects.get().status, Enrollment.objects.get().exit_reason) == (
        "exited",
        "exit event 'purchase'",
    )


def test_an_events_journey_entry_runs_from_a_plan_the_connection_keeps(
    make_journey, publish, api_key_for, manager_alice, django_capture_on_commit_callbacks
):
    """An event's entry is the same statement for every call: PostgreSQL plans it once per connection."""
    from django.db import connection
    from django.utils import timezone

    from journeys.models import Enrollment

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's prepared statements")
    graph = {
        "steps": [{"id": "pause", "type": "wait", "seconds": 86400, "next": "done"}, {"id": "done", "type": "exit"}]
    }
    journey = publish(make_journey(graph=graph, entry_kind="event", entry_event="cart_abandoned", entry_segment=None))
    client = api_key_for(manager_alice, scopes=["ingest"])
    for call in range(10):
        events = [
            {"external_id": f"shopper-{call}", "name": "cart_abandoned", "occurred_at": timezone.now().isoformat()}
        ]
        with django_capture_on_commit_callbacks(execute=True):
            assert client.post("/api/v1/events/bulk/", {"events": events}, format="json").status_code == 200
    assert Enrollment.objects.filter(journey=journey, status="waiting").count() == 10
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
        prepared = cursor.fetchall()
    [(generic, custom)] = [(g, c) for sql, g, c in prepared if "INSERT INTO journeys_enrollment" in sql] or [(0, 0)]
    assert generic > 0 and custom <= 5, (generic, custom)


def test_a_stopped_journey_has_no_live_version_and_says_which_one_was(
    make_journey, publish, api_key_for, approver_bob, manager_alice
):
    from journeys.services.lifecycle import journey_stop

    journey = publish(make_journey())
    client = api_key_for(approver_bob)
    live = client.get(f"/api/v1/journeys/{journey.pk}/").json()
    assert (live["live_version"], live["last_live_version"], live["version"]["status"]) == (1, 1, "live")
    journey_stop(journey_id=journey.pk, by=manager_alice)
    body = client.get(f"/api/v1/journeys/{journey.pk}/").json()
    assert (body["status"], body["live_version"], body["last_live_version"]) == ("stopped", None, 1)
    assert (body["version"]["number"], body["version"]["status"]) == (1, "was_live")
    (listed,) = client.get("/api/v1/journeys/").json()["results"]
    assert (listed["status"], listed["live_version"], listed["last_live_version"]) == ("stopped", None, 1)


def _live_with_a_draft(make_journey, publish, manager_alice):
    from journeys.services.lifecycle import journey_version_edit

    journey = publish(make_journey())
    journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="purchase")
    return journey


def test_discarding_a_draft_through_the_api_answers_the_journey_on_its_live_version(
    make_journey, publish, api_key_for, manager_alice
):
    journey = _live_with_a_draft(make_journey, publish, manager_alice)
    client = api_key_for(manager_alice, scopes=["journeys", "read"])
    assert client.get(f"/api/v1/journeys/{journey.pk}/").json()["draft_version"] == {"number": 2, "status": "draft"}
    answer = client.post(f"/api/v1/journeys/{journey.pk}/discard-draft/")
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert (body["status"], body["live_version"], body["draft_version"]) == ("live", 1, None)
    assert (body["version"]["number"], body["version"]["status"], body["version"]["exit_event"]) == (1, "live", "")
    assert client.get(f"/api/v1/journeys/{journey.pk}/").json() == body
    assert [v.number for v in journey.versions.all()] == [1]


def test_discarding_a_draft_through_the_api_in_a_wrong_state_is_a_409_naming_the_problem(
    make_journey, publish, api_key_for, manager_alice
):
    from journeys.services.lifecycle import journey_submit

    client = api_key_for(manager_alice, scopes=["journeys"])
    never_live = make_journey(name="Never live")
    answer = client.post(f"/api/v1/journeys/{never_live.pk}/discard-draft/")
    assert answer.status_code == 409
    assert answer.json()["code"] == "conflict" and "Delete the journey instead" in answer.json()["detail"]
    journey = _live_with_a_draft(make_journey, publish, manager_alice)
    journey_submit(journey_id=journey.pk, by=manager_alice)
    answer = client.post(f"/api/v1/journeys/{journey.pk}/discard-draft/")
    assert answer.status_code == 409
    assert "Version 2 is in review: cancel the request first" in answer.json()["detail"]
    assert journey.versions.get(number=2).status == "in_review"
    no_draft = publish(make_journey(name="No draft"))
    answer = client.post(f"/api/v1/journeys/{no_draft.pk}/discard-draft/")
    assert answer.status_code == 409 and "no draft version to discard" in answer.json()["detail"]
    assert client.post("/api/v1/journeys/999999/discard-draft/").status_code == 404


def test_the_api_refuses_discarding_a_draft_to_keys_and_users_that_may_not(
    make_journey, publish, api_key_for, manager_alice
):
    from django.contrib.auth.models import Group

    from accounts.services import access_grant
    from tests.factories import UserFactory

    journey = _live_with_a_draft(make_journey, publish, manager_alice)
    url = f"/api/v1/journeys/{journey.pk}/discard-draft/"
    read_only = api_key_for(manager_alice, scopes=["read"]).post(url)
    assert read_only.status_code == 403 and read_only.json()["code"] == "insufficient_scope"
    # A key made while its user was a Manager stops working once they are a Viewer (who own none).
    demoted = UserFactory(username="manager_erin", role="Manager")
    access_grant(obj=journey.app, to=demoted, by=None)
    key = api_key_for(demoted, scopes=["journeys"])
    demoted.groups.set([Group.objects.get(name="Viewer")])
    refused = key.post(url)
    assert refused.status_code == 401 and refused.json()["code"] == "account_role"
    stranger = UserFactory(username="manager_stranger", role="Manager")  # no access to the journey's app
    assert api_key_for(stranger, scopes=["journeys"]).post(url).status_code == 404
    assert [(v.number, v.status) for v in journey.versions.order_by("number")] == [(1, "live"), (2, "draft")]


def test_a_key_granted_the_journey_but_not_its_app_reads_its_sends_as_its_counts_say(
    make_journey, publish, api_key_for, welcome
):
    """The journey's detail counted its push step's sends, and the dispatches API answered none of
    them: dispatches were seen through their app only. Nothing else of the app is shown."""
    from accounts.services import access_grant
    from delivery.models import Dispatch
    from tests.delivery.reporting import sent_dispatch
    from tests.factories import UserFactory

    push = {"id": "push", "type": "push", "content": welcome.pk, "next": "done"}
    journey = publish(make_journey(graph={"steps": [push, {"id": "done", "type": "exit"}]}))
    context = {"journey": {"id": journey.pk, "name": journey.name, "version": 1, "step": "push"}}
    batch = sent_dispatch(journey.app, kind="journey", source_id=journey.live_version_id, context=context)
    other = Dispatch.objects.create(app=journey.app, kind="campaign", source_id=1, content_spec={"title": "Hi"})
    reader = UserFactory(username="approver_ann", role="Approver")  # a Viewer owns no key
    access_grant(obj=journey, to=reader, by=None)
    client = api_key_for(reader)
    steps = {s["id"]: s for s in client.get(f"/api/v1/journeys/{journey.pk}/").json()["steps"]}
    assert steps["push"]["targeted"] == 7 and steps["push"]["accepted"] == 3
    assert [d["id"] for d in client.get("/api/v1/dispatches/").json()["results"]] == [batch.pk]
    assert client.get(f"/api/v1/dispatches/{batch.pk}/").json()["total"] == 7
    assert len(client.get(f"/api/v1/dispatches/{batch.pk}/deliveries/").json()["results"]) == 7
    assert client.get(f"/api/v1/dispatches/{other.pk}/").status_code == 404


def test_a_version_approved_before_segments_were_frozen_says_so_in_the_detail(
    make_journey, publish, api_key_for, approver_bob
):
    """It reads its segments as they are now, an edit of one reaching it unapproved, until a new
    version is approved: the detail said nothing of it."""
    journey = publish(make_journey())
    approved_before_segments_were_frozen(journey)
    body = api_key_for(approver_bob).get(f"/api/v1/journeys/{journey.pk}/").json()
    assert (body["version"]["status"], body["version"]["segments_unfrozen"]) == ("live", True)


def test_a_version_whose_approval_froze_its_segments_is_not_unfrozen(make_journey, publish, api_key_for, approver_bob):
    journey = make_journey()
    client = api_key_for(approver_bob)
    assert client.get(f"/api/v1/journeys/{journey.pk}/").json()["version"]["segments_unfrozen"] is False  # a draft
    publish(journey)
    assert client.get(f"/api/v1/journeys/{journey.pk}/").json()["version"]["segments_unfrozen"] is False


def test_a_renamed_journey_answers_the_name_its_pushes_give_as_approved(
    make_journey, publish, api_key_for, approver_bob, manager_alice
):
    """A rename of a live journey whose pushes do not show its name makes no version: its pushes give
    the name the live version was approved with, which the API says beside the journey's; a stopped
    journey, the name its last live version gave; a journey never approved, none."""
    from journeys.services.lifecycle import journey_rename, journey_stop

    journey = publish(make_journey())
    journey_rename(journey_id=journey.pk, by=manager_alice, name="Welcome series")
    draft = make_journey(name="Later")
    client = api_key_for(approver_bob)

    detail = client.get(f"/api/v1/journeys/{journey.pk}/").json()
    assert (detail["name"], detail["approved_name"], detail["draft_version"]) == ("Welcome series", "Onboarding", None)
    listed = {j["id"]: (j["name"], j["approved_name"]) for j in client.get("/api/v1/journeys/").json()["results"]}
    assert listed == {journey.pk: ("Welcome series", "Onboarding"), draft.pk: ("Later", None)}
    journey_stop(journey_id=journey.pk, by=manager_alice)
    assert client.get(f"/api/v1/journeys/{journey.pk}/").json()["approved_name"] == "Onboarding"


def test_the_list_costs_the_same_queries_for_one_live_journey_or_four(make_journey, publish, api_key_for, approver_bob):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = api_key_for(approver_bob)
    publish(make_journey())
    client.get("/api/v1/journeys/")  # the key and its access are read once, then kept
    with CaptureQueriesContext(connection) as one:
        assert client.get("/api/v1/journeys/").status_code == 200
    for number in range(3):
        publish(make_journey(name=f"Onboarding {number}"))
    client.get("/api/v1/journeys/")
    with CaptureQueriesContext(connection) as four:
        answer = client.get("/api/v1/journeys/")
    assert sorted(j["approved_name"] for j in answer.json()["results"]) == [
        "Onboarding",
        "Onboarding 0",
        "Onboarding 1",
        "Onboarding 2",
    ]
    assert len(four) == len(one)
