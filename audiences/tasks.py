"""django-q2 entry points of audiences: thin, take ids, idempotent."""

from audiences.services.imports import import_process


def import_run(import_id: int) -> None:
    """Run an import, or resume it. A claimed or finished import makes this a no-op.

    A run hands over to a fresh task (queued by the service) before Q_CLUSTER's timeout, so
    the queue's retry never starts a second copy of a slow import.
    """
    import_process(import_id=import_id)
