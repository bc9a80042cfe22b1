"""Conversions of a journey, per push step: its goal set through its service and the journey form,
counted on the journey page and in the API; a Viewer changes nothing."""

import datetime as dt
import json

import pytest
from django.core.exceptions import PermissionDenied

from delivery.models import Delivery, Dispatch
from journeys.models import Journey
from journeys.selectors import journey_shown_version, version_step_stats
from journeys.services.conversions import journey_conversion_set
from tests.factories import EventFactory, ProfileFactory

T0 = dt.datetime(2026, 11, 2, 10, 0, tzinfo=dt.UTC)


def two_pushes(content: int) -> dict:
    """A 50/50 split into two push steps."""
    return {
        "steps": [
            {
                "id": "ab",
                "type": "split",
                "branches": [
                    {"label": "A", "percent": 50, "next": "push_a"},
                    {"label": "B", "percent": 50, "next": "push_b"},
                ],
            },
            {"id": "push_a", "type": "push", "content": content, "next": "done"},
            {"id": "push_b", "type": "push", "content": content, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


@pytest.fixture
def pushed(make_journey, welcome):
    """A journey whose two push steps sent: push_a to 4 profiles (3 buy within the day, 1 after),
    push_b to 2 (1 buys)."""
    journey = make_journey(graph=two_pushes(welcome.pk))
    version = journey_shown_version(journey)
    for step, buyers, others, late in (("push_a", 3, 0, 1), ("push_b", 1, 1, 0)):
        dispatch = Dispatch.objects.create(
            app=journey.app,
            kind=Dispatch.Kind.JOURNEY,
            source_id=version.pk,
            content_spec=welcome.spec(),
            context={"journey": {"id": journey.pk, "step": step}},
            created_at=T0 - dt.timedelta(minutes=5),
        )
        for index in range(buyers + others + late):
            profile = ProfileFactory()
            Delivery.objects.create(dispatch=dispatch, profile=profile, status="accepted", finished_at=T0)
            if index < buyers:
                EventFactory(profile=profile, name="purchase", occurred_at=T0 + dt.timedelta(hours=3))
            elif index >= buyers + others:
                EventFactory(profile=profile, name="purchase", occurred_at=T0 + dt.timedelta(hours=30))
    return journey


def test_conversions_are_counted_per_push_step_inside_the_window(pushed, manager_alice):
    assert "conversions" not in version_step_stats(journey_shown_version(pushed))["push_a"]  # no goal yet
    journey_conversion_set(journey_id=pushed.pk, by=manager_alice, event="purchase", window_hours=24)
    stats = version_step_stats(journey_shown_version(Journey.objects.get(pk=pushed.pk)))
    a, b = stats["push_a"]["conversions"], stats["push_b"]["conversions"]
    assert (a["reached"], a["conversions"], a["conversion_rate"]) == (4, 3, 0.75)
    assert (b["reached"], b["conversions"], b["conversion_rate"]) == (2, 1, 0.5)
    assert a["rate_low"] < 0.75 < a["rate_high"]
    assert "conversions" not in stats["ab"]  # only push steps convert


def test_journey_page_and_api_show_each_steps_conversions(client, pushed, manager_alice, approver_bob, api_key_for):
    journey_conversion_set(journey_id=pushed.pk, by=manager_alice, event="purchase", window_hours=48)
    client.force_login(approver_bob)
    page = client.get(f"/admin/journeys/journey/{pushed.pk}/change/").content.decode()
    assert 'id="journey-conversions"' in page
    assert '<tr data-group="push_a"><th>push_a</th><td>4</td><td>4</td><td>100.0%</td>' in page
    assert '<tr data-group="push_b"><th>push_b</th><td>2</td><td>1</td><td>50.0%</td>' in page
    body = api_key_for(approver_bob).get(f"/api/v1/journeys/{pushed.pk}/").json()
    assert body["conversion"] == {"event": "purchase", "where": [], "window_hours": 48, "anchor": "accepted"}
    steps = {s["id"]: s for s in body["steps"]}
    assert steps["push_b"]["conversions"]["conversions"] == 1


def _form(journey, **extra):
    version = journey_shown_version(journey)
    data = {
        "name": journey.name,
        "entry_kind": "segment",
        "entry_segment": version.entry_segment_id,
        "entry_every_hours": 0,
        "entry_event": "",
        "reentry": "never",
        "reentry_wait_seconds_0": 0,
        "reentry_wait_seconds_1": 60,
        "exit_event": "",
        "graph": json.dumps(version.graph),
        "conversion_event": "",
        "conversion_window_hours": 24,
        "conversion_anchor": "accepted",
    }
    for row in (1, 2, 3):
        data.update({f"conversion_type_{row}": "string", f"conversion_op_{row}": "eq"})
    data.update(extra)
    return data


def test_manager_sets_the_goal_with_the_journey_form(client, pushed, manager_alice):
    client.force_login(manager_alice)
    answer = client.post(
        f"/admin/journeys/journey/{pushed.pk}/change/",
        _form(
            pushed,
            conversion_event="purchase",
            conversion_anchor="opened",
            conversion_window_hours=6,
            conversion_property_1="plan",
            conversion_op_1="in",
            conversion_value_1="pro, team",
        ),
    )
    assert answer.status_code == 302, answer.content.decode()[:3000]
    journey = Journey.objects.get(pk=pushed.pk)
    assert (journey.conversion_event, journey.conversion_anchor, journey.conversion_window_hours) == (
        "purchase",
        "opened",
        6,
    )
    assert journey.conversion_where == [{"property": "plan", "type": "string", "op": "in", "value": ["pro", "team"]}]
    assert journey.versions.count() == 1  # a report setting: no new version


def test_a_number_condition_that_is_not_finite_is_answered_on_the_journey_form(client, pushed, manager_alice):
    client.force_login(manager_alice)
    answer = client.post(
        f"/admin/journeys/journey/{pushed.pk}/change/",
        _form(
            pushed,
            conversion_event="purchase",
            conversion_property_1="amount",
            conversion_type_1="number",
            conversion_op_1="gt",
            conversion_value_1="nan",
        ),
    )
    assert answer.status_code == 200
    assert "Condition 1 (amount): &#x27;nan&#x27; is not a finite number." in answer.content.decode()
    assert Journey.objects.get(pk=pushed.pk).conversion_event == ""


def test_a_viewer_cannot_set_a_journeys_goal(client, pushed, viewer_carol):
    with pytest.raises(PermissionDenied):
        journey_conversion_set(journey_id=pushed.pk, by=viewer_carol, event="purchase")
    client.force_login(viewer_carol)
    page = client.get(f"/admin/journeys/journey/{pushed.pk}/change/").content.decode()
    assert 'name="conversion_event"' not in page and "No conversion event." in page
    answer = client.post(f"/admin/journeys/journey/{pushed.pk}/change/", _form(pushed, conversion_event="purchase"))
    assert answer.status_code == 403
    assert Journey.objects.get(pk=pushed.pk).conversion_event == ""


@pytest.mark.embedded  # the kept profiles' SQL runs on SQLite too
def test_a_steps_conversions_outlive_retention_under_the_same_goal(pushed, manager_alice, client, api_key_for):
    """Retention deletes the push steps' rows but keeps the profiles they reached and converted for
    the version's report: the figures stay what they were. A goal set after the rows went counts the
    rows still there only (none here): no rate over profiles another goal's rows reached."""
    from delivery.models import KeptProfile
    from operations.services import retention_apply

    journey_conversion_set(journey_id=pushed.pk, by=manager_alice, event="purchase", window_hours=24)
    version = journey_shown_version(Journey.objects.get(pk=pushed.pk))

    def conversions():
        stats = version_step_stats(journey_shown_version(Journey.objects.get(pk=pushed.pk)))
        return {step: stats[step]["conversions"] for step in ("push_a", "push_b")}

    before = conversions()
    assert (before["push_a"]["reached"], before["push_a"]["conversions"]) == (4, 3)
    assert api_key_for(manager_alice).get(f"/api/v1/journeys/{pushed.pk}/").json()["rows_deleted"] is None
    dispatches = Dispatch.objects.filter(kind=Dispatch.Kind.JOURNEY, source_id=version.pk)
    dispatches.update(status="done", total=4, finished_at=T0 - dt.timedelta(days=400))
    assert retention_apply(delivery_days=180)["deliveries"] == 6
    assert not Delivery.objects.filter(dispatch__in=dispatches).exists()
    assert (
        KeptProfile.objects.filter(figure__scope=f"journey_version:{version.pk}").count() == 6 + 4
    )  # reached, converted
    assert conversions() == before
    client.force_login(manager_alice)
    page = client.get(f"/admin/journeys/journey/{pushed.pk}/change/").content.decode()
    assert "The per-device rows of 2 sends, the latest finished 2025-09-28 10:00 (UTC), were deleted" in page
    assert '<tr data-group="push_a"><th>push_a</th><td>4</td><td>3</td><td>75.0%</td>' in page
    api = api_key_for(manager_alice).get(f"/api/v1/journeys/{pushed.pk}/").json()
    assert api["rows_deleted"] == {"sends": 2, "last_finished_at": "2025-09-28T10:00:00Z"}
    assert {s["id"]: s["conversions"]["conversions"] for s in api["steps"] if "conversions" in s} == {
        "push_a": 3,
        "push_b": 1,
    }

    journey_conversion_set(journey_id=pushed.pk, by=manager_alice, event="purchase", window_hours=48)
    after = conversions()
    assert (after["push_a"]["reached"], after["push_a"]["conversions"], after["push_a"]["conversion_rate"]) == (
        0,
        0,
        None,
    )


def test_event_retention_waits_until_the_steps_rows_are_gone(pushed, manager_alice):
    """A journey's conversions, like a campaign's, are counted from its sends' rows and the events:
    while the rows are kept, retention deletes no event their windows hold."""
    from audiences.models import Event
    from operations.services import RetentionRefused, retention_apply

    journey_conversion_set(journey_id=pushed.pk, by=manager_alice, event="purchase", window_hours=24)
    version = journey_shown_version(Journey.objects.get(pk=pushed.pk))
    Dispatch.objects.filter(kind=Dispatch.Kind.JOURNEY, source_id=version.pk).update(
        status="done", total=4, finished_at=T0
    )
    before = version_step_stats(version)["push_a"]["conversions"]
    later = T0 + dt.timedelta(days=40)
    with pytest.raises(RetentionRefused) as refused:
        retention_apply(now=later, delivery_days=180, event_days=30)
    assert (
        f"The journey '{pushed.name}' (id {pushed.pk}) counts 'purchase' events as conversions of 2 sends whose rows "
        "are still kept, the oldest from 2026-11-02" in refused.value.problems[1]
    )
    assert Event.objects.count() == 5
    assert retention_apply(now=later, delivery_days=35, event_days=30)["events"] == 5
    assert (
        version_step_stats(journey_shown_version(Journey.objects.get(pk=pushed.pk)))["push_a"]["conversions"] == before
    )


def test_the_conversion_goals_help_speaks_of_what_each_page_reports(client, manager_alice):
    """A journey's Conversions said its reports show conversions "per variant, against the holdout,
    and per journey step", a campaign's the same: a journey has no holdout, a campaign no step."""
    import re

    client.force_login(manager_alice)
    helps = {}
    for page in ("journeys/journey", "campaigns/campaign"):
        html = client.get(f"/admin/{page}/add/").content.decode().replace("&#x27;", "'")
        (helps[page],) = re.findall(r'<div class="description">(A conversion counts[^<]*)</div>', html)
    assert "per push step" in helps["journeys/journey"]
    assert "variant" not in helps["journeys/journey"] and "holdout" not in helps["journeys/journey"]
    assert "per variant and against the holdout" in helps["campaigns/campaign"]
    assert "step" not in helps["campaigns/campaign"]
