"""django-q2 entry points: thin, idempotent wrappers over the journeys services."""

import time

from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment, journeys_events_received, journeys_tick
from journeys.services.lifecycle import _queue


def journeys_tick_task() -> dict:
    """Scheduled every minute (see the journeys migration that creates the schedule)."""
    return journeys_tick()


def journeys_run_due_task(seconds: float = 200, batch: int = 1000) -> dict:
    """Run due enrollments until none is left; stopped by its time budget with batches still full,
    queue a successor (with the same budget) for the rest and say so (``handed_over``).

    The minute's beat also runs the engine, but for 40 s a minute: a backlog left to it would go
    at two thirds of a worker, its tail waiting many beats. The successor queues behind what is
    already waiting (the journey's sends among them), so a long backlog never holds a worker for
    good. It may find nothing left (the last full batch was the last); it then ends at once.
    """
    started = time.monotonic()
    report = journeys_run_due(batch=batch, seconds=seconds)
    batches_full = report.batches > 0 and report.enrollments == report.batches * batch
    handed_over = batches_full and time.monotonic() - started >= seconds
    if handed_over:
        _queue("journeys.tasks.journeys_run_due_task", seconds, batch)
    return {**report.as_dict(), "handed_over": handed_over}


def journey_enter_task(journey_id: int) -> int:
    return journey_enter_segment(journey_id=journey_id)


def journeys_events_task(event_ids: list[int]) -> dict:
    """Exit and enter these events (``journeys_events_received``). Events calls now do it in their
    own transaction and queue nothing; kept for tasks queued before, and safe to run again."""
    return journeys_events_received(event_ids=event_ids)
