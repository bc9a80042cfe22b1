"""A planned stop of a worker: asked for by SIGTERM, seen by the long tasks between batches.

``manage.py qcluster`` (``operations.management.commands.qcluster``) installs the handlers: in a
worker process, SIGTERM only sets the flag read by ``stop_requested``; the send engine then
finishes the batch it has in flight, hands the rest of the dispatch over to a fresh task on
the queue, and returns, so a planned stop leaves no row ``unknown``.
"""

_requested = False


def stop_requested() -> bool:
    """True once this process was asked to stop (SIGTERM in a worker)."""
    return _requested


def request_stop() -> None:
    """Mark this process as stopping (async-signal safe: it only sets a flag)."""
    global _requested
    _requested = True
