"""django-q2 entry points of the send pipeline: thin wrappers that take ids and are idempotent."""

from django.conf import settings

from delivery.services.dispatches import dispatch_prepare, dispatches_watch
from delivery.services.sending import dispatch_send
from delivery.services.stream_senders import streams_send, streams_sender_hand_over
from delivery.services.streams import streams_watch
from operations.instance import instance_refuses


def dispatch_prepare_task(dispatch_id: int) -> None:
    # A small dispatch (an API trigger, a test send) is sent by this same task: one queue trip less.
    if dispatch_prepare(dispatch_id=dispatch_id, send_inline=True):
        dispatch_send(dispatch_id=dispatch_id)


def dispatch_send_task(dispatch_id: int) -> dict:
    report = dispatch_send(dispatch_id=dispatch_id)
    return {"claimed": report.claimed, "batches": report.batches}


def dispatches_watch_task() -> list[int]:
    """Every minute: expire leases, finish dispatches, restart those whose send tasks were lost;
    refresh and finish streams, and restart their senders."""
    restarted = dispatches_watch()
    streams_watch()
    return restarted


def streams_send_task(slot: int) -> dict:
    """A stream sender in the queue (when no ``send_stream`` process holds its slot): drains the
    open streams for a task's time, then hands over to a fresh task, unless such a process took
    the slot meanwhile."""
    if instance_refuses(action="send the open streams"):
        return {"claimed": 0, "batches": 0, "handed_over": False}  # a copy not claimed: no successor
    report = streams_send(budget=settings.PUSHDESK_SEND_TASK_SECONDS, slot=slot)
    handed_over = streams_sender_hand_over(slot)
    return {"claimed": report.claimed, "batches": report.batches, "handed_over": handed_over}
