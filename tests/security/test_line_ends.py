"""A value with a line end after it is refused wherever a pattern says what a value may be (a
pattern's `$` also matches before a final line end; each one ends at the value's end instead)."""

import datetime as dt

import pytest

from audiences.services.events import event_check
from audiences.services.profiles import profile_check
from journeys.graph import GraphInvalid, graph_validate

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"external_id": "u-1", "locale": "fr-FR\n"}, "locale"),
        ({"external_id": "u-1", "attributes": {"plan\n": "gold"}}, "attributes"),
    ],
)
def test_a_profile_field_with_a_line_end_after_it_is_refused(data, field):
    assert field in profile_check(data)
    assert profile_check({**data, field: {"plan": "gold"} if field == "attributes" else "fr-FR"}) == {}


def test_an_event_property_name_with_a_line_end_after_it_is_refused():
    event = {"external_id": "u-1", "name": "purchase", "occurred_at": NOW}
    assert "properties" in event_check({**event, "properties": {"amount\n": 5}}, now=NOW)
    assert event_check({**event, "properties": {"amount": 5}}, now=NOW) == {}


def _graph(*, step_id="wait", until="09:00") -> dict:
    return {
        "steps": [
            {"id": step_id, "type": "wait", "until": until, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }


@pytest.mark.parametrize("changes", [{"step_id": "wait\n"}, {"until": "09:00\n"}])
def test_a_journey_step_id_or_time_of_day_with_a_line_end_after_it_is_refused(changes):
    graph_validate(_graph())
    with pytest.raises(GraphInvalid):
        graph_validate(_graph(**changes))


def test_the_api_route_does_not_take_a_path_with_a_line_end_after_it(api_key_for, manager_alice):
    client = api_key_for(manager_alice, scopes=["ingest"])
    answer = client.post("/api/v1/events/bulk/%0A", {"events": []}, format="json")
    assert answer.status_code == 404
