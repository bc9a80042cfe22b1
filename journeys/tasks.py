"""django-q2 entry points: thin, idempotent wrappers over the journeys services."""

from django.core.cache import cache

from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment, journeys_events_received, journeys_tick
from journeys.services.lifecycle import _queue

# The budget of an engine run queued to drain what is due (a beat's share is 40 s).
RUN_DUE_SECONDS = 200
# Held while a chain of engine runs that a beat started goes on: the next beats start none.
BEAT_CHAIN_KEY = "journeys:beat-chain"


def journeys_tick_task(seconds: float = 40.0, batch: int = 1000) -> dict:
    """Scheduled every minute (see the journeys migration that creates the schedule). When its
    engine run stopped by its budget with batches still full, queue ``journeys_run_due_task`` for
    the rest and say so (``handed_over``), as that task does for its own successor: a backlog left
    to the beats would go at 40 s a minute, its tail waiting many beats.

    One such chain at a time (``BEAT_CHAIN_KEY``, held while it goes on and for twice its budget
    at most, should a worker die with it): a backlog of many minutes would otherwise start one
    chain a minute, and the chains would fill the workers ahead of the journeys' own sends.
    """
    report = journeys_tick(seconds=seconds, batch=batch)
    handed_over = bool(report.get("out_of_time")) and cache.add(BEAT_CHAIN_KEY, 1, timeout=2 * RUN_DUE_SECONDS)
    if handed_over:
        _queue("journeys.tasks.journeys_run_due_task", RUN_DUE_SECONDS, batch, True)
    return {**report, "handed_over": handed_over}


def journeys_run_due_task(seconds: float = RUN_DUE_SECONDS, batch: int = 1000, beat_chain: bool = False) -> dict:
    """Run due enrollments until none is left; stopped by its time budget with batches still full,
    queue a successor (with the same budget) for the rest and say so (``handed_over``).

    The minute's beat also runs the engine, but for 40 s a minute: a backlog left to it would go
    at two thirds of a worker, its tail waiting many beats. The successor queues behind what is
    already waiting (the journey's sends among them), so a long backlog never holds a worker for
    good. It may find nothing left (the last full batch was the last); it then ends at once.
    ``beat_chain``: a beat started the chain; it holds ``BEAT_CHAIN_KEY`` until it ends.
    """
    report = journeys_run_due(batch=batch, seconds=seconds)
    if report.out_of_time:
        if beat_chain:
            cache.set(BEAT_CHAIN_KEY, 1, timeout=2 * max(seconds, RUN_DUE_SECONDS))
        _queue("journeys.tasks.journeys_run_due_task", seconds, batch, beat_chain)
    elif beat_chain:
        cache.delete(BEAT_CHAIN_KEY)
    return {**report.as_dict(), "handed_over": report.out_of_time}


def journey_enter_task(journey_id: int) -> int:
    return journey_enter_segment(journey_id=journey_id)


def journeys_events_task(event_ids: list[int]) -> dict:
    """Exit and enter these events (``journeys_events_received``). Events calls now do it in their
    own transaction and queue nothing; kept for tasks queued before, and safe to run again."""
    return journeys_events_received(event_ids=event_ids)
