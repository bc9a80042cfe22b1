"""django-q2 entry points of audiences: thin, take ids, idempotent."""

from audiences.services.imports import import_process, imports_watch


def import_run(import_id: int) -> None:
    """Run an import, or resume it. A claimed or finished import makes this a no-op.

    A run hands over to a fresh task (queued by the service) before Q_CLUSTER's timeout, so
    the queue's retry never starts a second copy of a slow import.
    """
    import_process(import_id=import_id)


def imports_watch_task() -> dict:
    """Scheduled every minute (``operations.beats``): take up again, or end, the imports whose
    worker stopped, so the imports waiting for their segment's turn go on (``imports_watch``)."""
    return imports_watch()


def events_replay_task() -> dict:
    """Scheduled every minute (``operations.beats``): run the event listeners that failed again
    for their events, once due (see ``audiences.services.events.events_replay_due``)."""
    from audiences.services.events import events_replay_due
    from operations.instance import instance_refuses

    if instance_refuses(action="replay the event listeners"):  # they enter journeys, which send
        none = {"replayed": 0, "failed": 0, "dropped": 0}
        return {**none, "events": dict(none), "refused": True}
    return events_replay_due()
