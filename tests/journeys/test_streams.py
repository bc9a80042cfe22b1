"""Event-entered journeys push through a standing dispatch, like API triggers."""

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
