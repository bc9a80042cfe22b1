"""The journeys' queue entry points: the engine's task hands what is due after its budget to a successor."""

from django.utils import timezone

from journeys.models import Enrollment
from journeys.services.entries import journey_enter_segment
from journeys.tasks import journeys_run_due_task
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


def _due(journey) -> int:
    return Enrollment.objects.filter(
        journey=journey, status__in=Enrollment.OPEN_STATUSES, due_at__lte=timezone.now()
    ).count()
