"""The journeys' queue entry points: the engine's task and the minute's beat hand what is due after
their budget to an engine task."""

import pytest
from django.utils import timezone

from journeys.models import Enrollment
from journeys.services.entries import journey_enter_segment
from journeys.tasks import BEAT_CHAIN_KEY, RUN_DUE_SECONDS, journeys_run_due_task, journeys_tick_task
from tests.factories import ProfileFactory

WAIT_AN_HOUR = {
    "steps": [{"id": "pause", "type": "wait", "seconds": 3600, "next": "done"}, {"id": "done", "type": "exit"}]
}


def test_a_run_stopped_by_its_budget_hands_the_due_rest_to_a_successor(make_journey, publish):
    ProfileFactory.create_batch(7)
    journey = publish(make_journey(graph=WAIT_AN_HOUR))
    assert journey_enter_segment(journey_id=journey.pk) == 7  # its own run is queued on commit: not run here
    # No time budget: each run stops after one full batch of 3. Tasks run in-process here, so the
    # successors run in turn before this call returns: 3 + 3 + 1.
    report = journeys_run_due_task(seconds=0, batch=3)
    assert (report["enrollments"], report["handed_over"]) == (3, True)
    assert not _due(journey)
    assert set(Enrollment.objects.filter(journey=journey).values_list("status", flat=True)) == {"waiting"}


def test_a_run_that_empties_what_is_due_hands_nothing_over(make_journey, publish):
    ProfileFactory.create_batch(2)
    journey = publish(make_journey(graph=WAIT_AN_HOUR))
    journey_enter_segment(journey_id=journey.pk)
    report = journeys_run_due_task(seconds=0, batch=3)
    assert (report["enrollments"], report["handed_over"]) == (2, False)
    assert set(Enrollment.objects.filter(journey=journey).values_list("status", flat=True)) == {"waiting"}


@pytest.fixture
def broker(monkeypatch):
    """The real broker (Redis), as in production: queued tasks wait there, nobody runs them here."""
    from django.core.cache import cache
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    broker = get_broker()
    broker.purge_queue()
    cache.delete(BEAT_CHAIN_KEY)
    monkeypatch.setattr(Conf, "SYNC", False)
    yield broker
    broker.purge_queue()
    cache.delete(BEAT_CHAIN_KEY)


def _queued(broker) -> list[dict]:
    from django_q.signing import SignedPackage

    tasks = []
    while broker.queue_size():
        tasks += [SignedPackage.loads(payload) for _, payload in broker.dequeue()]
    return tasks


def test_a_beat_stopped_by_its_budget_queues_the_engine_task_for_the_due_rest(make_journey, publish, broker):
    ProfileFactory.create_batch(7)
    journey = publish(make_journey(graph=WAIT_AN_HOUR))
    assert journey_enter_segment(journey_id=journey.pk) == 7  # its own run is queued on commit: not run here
    report = journeys_tick_task(seconds=0, batch=3)  # no time budget: one full batch of 3, then out of time
    assert (report["enrollments"], report["out_of_time"], report["handed_over"]) == (3, True, True)
    (task,) = _queued(broker)
    assert (task["func"], task["args"]) == ("journeys.tasks.journeys_run_due_task", (RUN_DUE_SECONDS, 3, True))
    assert _due(journey) == 4
    rest = journeys_run_due_task(*task["args"])  # what a worker does with it: 3 + 1, nothing handed on
    assert (rest["enrollments"], rest["handed_over"]) == (4, False)
    assert not _due(journey) and not _queued(broker)
    assert set(Enrollment.objects.filter(journey=journey).values_list("status", flat=True)) == {"waiting"}


def test_beats_start_one_chain_of_engine_runs_at_a_time(make_journey, publish, broker):
    """A backlog of several minutes: the next beats leave the rest to the chain the first started,
    which holds its place while it hands over and lets it go once nothing is left."""
    ProfileFactory.create_batch(12)
    journey = publish(make_journey(graph=WAIT_AN_HOUR))
    journey_enter_segment(journey_id=journey.pk)
    assert journeys_tick_task(seconds=0, batch=3)["handed_over"] is True
    assert journeys_tick_task(seconds=0, batch=3)["handed_over"] is False  # the chain goes on: none more
    (task,) = _queued(broker)
    assert task["args"] == (RUN_DUE_SECONDS, 3, True)
    link = journeys_run_due_task(0, 3, True)  # a link stopped by its budget queues the next one
    (task,) = _queued(broker)
    assert link["handed_over"] and task["args"] == (0, 3, True)
    assert journeys_tick_task(seconds=0, batch=3)["handed_over"] is False
    assert _due(journey) == 0
    last = journeys_run_due_task(RUN_DUE_SECONDS, 3, True)  # nothing left: the chain ends
    assert last["handed_over"] is False and not _queued(broker)
    ProfileFactory.create_batch(4)
    another = publish(make_journey(graph=WAIT_AN_HOUR))
    assert journey_enter_segment(journey_id=another.pk) == 16
    assert journeys_tick_task(seconds=0, batch=3)["handed_over"] is True  # a new backlog, a new chain


def test_a_beat_that_empties_what_is_due_queues_nothing(make_journey, publish, broker):
    ProfileFactory.create_batch(3)
    journey = publish(make_journey(graph=WAIT_AN_HOUR))
    journey_enter_segment(journey_id=journey.pk)
    report = journeys_tick_task(seconds=0, batch=4)
    assert (report["enrollments"], report["handed_over"]) == (3, False)
    assert not _due(journey) and not _queued(broker)


def _due(journey) -> int:
    return Enrollment.objects.filter(
        journey=journey, status__in=Enrollment.OPEN_STATUSES, due_at__lte=timezone.now()
    ).count()
