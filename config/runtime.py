"""The garbage collector of the long-running processes: the web's, the workers' and the stream sender's.

Python's cyclic collector runs each time 700 more container objects were made than freed, and now
and then walks every object the process holds: Django's and the app's modules, models and caches,
which live as long as the process. On the send path that was 7–13 % of the CPU of a request to a
provider (``bench/gateway.py``). ``gc_tune`` collects once, then freezes what the process holds
(``gc.freeze``: the collector no longer walks it; what is frozen is never collected, so it runs
once, when the process is ready) and sets the thresholds to ``PUSHDESK_GC_THRESHOLD``. Objects
freed by their reference counts (nearly all of them) are freed at once as before; only cycles wait
longer. ``PUSHDESK_GC_THRESHOLD`` empty keeps Python's defaults.
"""

from __future__ import annotations

import gc
import os

from django.conf import settings

_tuned_in: int | None = None  # the process that tuned its collector (a forked child tunes its own)


def gc_tune() -> bool:
    """Tune this process's collector, once per process; True when it did it now."""
    global _tuned_in
    thresholds = settings.PUSHDESK_GC_THRESHOLD
    if not thresholds or _tuned_in == os.getpid():
        return False
    _tuned_in = os.getpid()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    return True


def gc_tune_worker(*, task: dict | None = None, **_signal) -> bool:
    """django-q2's ``pre_execute``: a worker process tunes its collector before its first task. A
    task run synchronously in the calling process (the tests, ``PUSHDESK_TASKS_SYNC``) leaves that
    process as it is: it is not a worker, and what it would freeze (its connections among them)
    would never be collected."""
    if task and task.get("sync"):
        return False
    return gc_tune()
