"""django-q2 entry points of the send pipeline: thin wrappers that take ids and are idempotent."""

from delivery.services.dispatches import dispatch_prepare, dispatches_watch
from delivery.services.sending import dispatch_send


def dispatch_prepare_task(dispatch_id: int) -> None:
    # A small dispatch (an API trigger, a test send) is sent by this same task: one queue trip less.
    if dispatch_prepare(dispatch_id=dispatch_id, send_inline=True):
        dispatch_send(dispatch_id=dispatch_id)


def dispatch_send_task(dispatch_id: int) -> dict:
    report = dispatch_send(dispatch_id=dispatch_id)
    return {"claimed": report.claimed, "batches": report.batches}


def dispatches_watch_task() -> list[int]:
    """Every minute: expire leases, finish dispatches, restart those whose send tasks were lost."""
    return dispatches_watch()
