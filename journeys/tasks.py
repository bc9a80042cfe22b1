"""django-q2 entry points: thin, idempotent wrappers over the journeys services."""

from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment, journeys_events_received, journeys_tick


def journeys_tick_task() -> dict:
    """Scheduled every minute (see the journeys migration that creates the schedule)."""
    return journeys_tick()


def journeys_run_due_task() -> dict:
    """Run due enrollments until none is left (or 200 s pass: the beat picks up the rest)."""
    return journeys_run_due(seconds=200).as_dict()


def journey_enter_task(journey_id: int) -> int:
    return journey_enter_segment(journey_id=journey_id)


def journeys_events_task(event_ids: list[int]) -> dict:
    return journeys_events_received(event_ids=event_ids)
