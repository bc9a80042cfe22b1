"""The instance guard: a database restored elsewhere, or cloned for staging, sends nothing.

The database holds the name of the deployment it belongs to (``operations.Instance``); every
process has ``PUSHDESK_INSTANCE``. The beat, the send engine, test sends and API triggers call
``ensure_instance_claimed`` before anything leaves; where the names differ it raises
``InstanceMismatch`` (and logs why) until an operator runs ``manage.py instance_claim``.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError
from django.utils import timezone

logger = logging.getLogger("pushdesk.instance")


class InstanceMismatch(PermissionDenied):
    """This process's ``PUSHDESK_INSTANCE`` is not the instance the database belongs to.

    A ``PermissionDenied``: the admin and the API refuse the action with the reason.
    """

    code = "instance_not_claimed"


def instance_problem() -> str | None:
    """Say why this process may not send, or return None when the database is this instance's."""
    from operations.models import Instance

    here = settings.PUSHDESK_INSTANCE
    recorded = Instance.objects.filter(pk=1).values_list("name", flat=True).first()
    if recorded is None:
        return (
            f"the database records no instance; run `manage.py instance_claim` on {here!r} "
            "to let it send (it voids whatever was queued before)"
        )
    if recorded != here:
        return (
            f"the database belongs to instance {recorded!r} but this process is {here!r} "
            "(a restored or copied database?); nothing is sent until `manage.py instance_claim` "
            "is run here (it voids whatever was queued before)"
        )
    return None


def instance_refuses(*, action: str) -> bool:
    """Return True when this process may not send; for the beat's ticks and the send tasks.

    The refusal is logged once for the installation, not at each call: on a copy not claimed the
    beat refuses every minute (the delivery watchdog twice), every worker alike, and the line said
    nothing new after the first. A different problem (another name recorded) is said again, and
    ``instance_claim`` forgets what was said (``instance_refusal_forget``), so a copy restored
    after a claim says it again.
    """
    problem = instance_problem()
    if problem is None:
        return False
    if _refusal_first_said(problem):
        logger.warning("refused to %s: %s (said once; quiet until this changes)", action, problem)
    return True


# The problem last said by ``instance_refuses``, in the cache every process of the instance shares
# (its keys carry the instance's name).
_REFUSAL_SAID = "pushdesk:instance-refusal-said"


def _refusal_first_said(problem: str) -> bool:
    """Record ``problem`` as said; return True when it was not said before (or the cache cannot tell)."""
    from django.core.cache import cache
    from redis.exceptions import RedisError

    try:
        if cache.add(_REFUSAL_SAID, problem, timeout=None):
            return True
        if cache.get(_REFUSAL_SAID) == problem:
            return False
        cache.set(_REFUSAL_SAID, problem, timeout=None)
    except (RedisError, DatabaseError):  # the cache does not answer: say it rather than stay silent
        pass
    return True


def instance_refusal_forget() -> None:
    """Forget the refusal said, so the next one is logged (after a claim). Quiet when the cache is down."""
    from django.core.cache import cache
    from redis.exceptions import RedisError

    try:
        cache.delete(_REFUSAL_SAID)
    except (RedisError, DatabaseError):
        pass


def ensure_instance_claimed(*, action: str) -> None:
    """Raise ``InstanceMismatch`` (and log it) when this process may not send.

    ``action`` names what was refused, for the log line: "send", "campaigns tick", "trigger"…
    """
    problem = instance_problem()
    if problem is not None:
        logger.warning("refused to %s: %s", action, problem)
        raise InstanceMismatch(problem)


def instance_record_on_first_migrate(sender, using="default", **kwargs) -> None:
    """Record ``PUSHDESK_INSTANCE`` in a database that names no instance yet (a new installation)."""
    from operations.models import Instance

    if sender.name != "operations":
        return
    try:
        Instance.objects.using(using).get_or_create(
            pk=1, defaults={"name": settings.PUSHDESK_INSTANCE, "claimed_at": timezone.now()}
        )
    except DatabaseError:  # the table is not there yet (migrating backwards)
        pass
