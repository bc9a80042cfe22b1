"""Stream senders: the processes that drain the open streams as calls append to them.

``streams_send`` claims the ready rows of every open stream (``delivery.services.streams``) and
sends them with the send engine's batches: one row when one is waiting, up to
``PUSHDESK_SEND_BATCH`` under load, one batch in flight while the next is claimed (the rows
that came while it sent go together in the next). A marketing stream's claim judges its app's
quiet hours again, as a bulk send's does: a row appended before they started, or one that waited
(a stopped sender, a backlog, a retry), is held until they end or skipped. Leases,
``unknown`` and never re-sending are the engine's (``delivery.services.sending``). A call that
appended wakes the senders once it commits (``streams_wake``: a message on a Redis channel);
without Redis (the embedded mode), or should a message be lost, they poll every
``PUSHDESK_STREAM_POLL_SECONDS``.

It runs in one of two homes, per slot (``PUSHDESK_STREAM_SENDERS`` of them), each beating a
heartbeat in the cache:

* ``manage.py send_stream --slot N`` (``streams_sender_run``), a process of its own that runs
  until SIGTERM: nothing else shares its process, and it never waits behind other tasks;
* a worker task (``delivery.tasks.streams_send_task``), started by the watchdog for a slot
  whose heartbeat is missing, which hands over to a fresh task every
  ``PUSHDESK_SEND_TASK_SECONDS`` and yields as soon as a ``send_stream`` process beats its slot.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config.reporting import SaidOnceEvery, left_out_said
from delivery.models import Dispatch
from delivery.rules import QuietAtClaim, quiet_at_claim
from operations.shutdown import stop_requested

if TYPE_CHECKING:
    from delivery.services.sending import SendReport

log = logging.getLogger(__name__)

_HEARTBEAT = "pushdesk:stream-sender:{slot}"


def streams_wake(dispatch_id: int) -> None:
    """After a call committed rows: in-process tasks (tests, ``PUSHDESK_TASKS_SYNC``) send them at
    once; otherwise a message on Redis wakes the senders (without Redis they poll).

    The message is published by a thread of the process (``_Waker``), so the call answers without
    waiting for that round trip, and wake-ups that pile up while one is published go out together,
    once per stream. A wake-up that fails, or that a process exiting leaves unsent, is logged or
    lost, never raised: the rows are in, and the senders' poll finds them."""
    from django_q.conf import Conf

    if Conf.SYNC:
        streams_send(budget=0.0, dispatch_ids=[dispatch_id])
        return
    if not settings.REDIS_URL:
        return
    _Waker.get().put(dispatch_id)


def streams_wake_now(dispatch_ids) -> None:
    """Publish the wake-ups of these streams now, in this thread (one round trip for them all)."""
    try:
        client = _redis(settings.REDIS_URL)
        channel = _channel()
        with client.pipeline(transaction=False) as pipe:
            for dispatch_id in dispatch_ids:
                pipe.publish(channel, str(dispatch_id))
            pipe.execute()
    except Exception:
        log.warning("could not wake the stream senders for %s: they will poll", dispatch_ids, exc_info=True)


class _Waker:
    """One thread per process publishing the wake-ups handed to it (started at the first, and again
    in a forked child)."""

    _current: _Waker | None = None
    _lock = threading.Lock()

    def __init__(self):
        self.pid = os.getpid()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = 0  # handed over, not yet published
        self.published = threading.Condition()
        threading.Thread(target=self._run, name="stream-waker", daemon=True).start()

    @classmethod
    def get(cls) -> _Waker:
        waker = cls._current
        if waker is None or waker.pid != os.getpid():
            with cls._lock:
                waker = cls._current
                if waker is None or waker.pid != os.getpid():
                    waker = cls._current = cls()
        return waker

    def put(self, dispatch_id: int) -> None:
        with self.published:
            self.pending += 1
        self.queue.put(dispatch_id)

    def _run(self) -> None:
        while True:
            taken = [self.queue.get()]
            while True:
                try:
                    taken.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            streams_wake_now(set(taken))
            with self.published:
                self.pending -= len(taken)
                self.published.notify_all()


def streams_wake_flush(timeout: float = 5.0) -> bool:
    """Wait until this process's wake-ups are published (tests; a process that exits does not wait:
    the senders' poll finds what it left)."""
    waker = _Waker._current
    if waker is None or waker.pid != os.getpid():
        return True
    with waker.published:
        return waker.published.wait_for(lambda: waker.pending == 0, timeout)


@lru_cache(maxsize=4)
def _redis(url: str):
    import redis

    return redis.Redis.from_url(url)


def _channel() -> str:
    # The instance's and its Redis database's: Redis keeps a channel for the whole server, not
    # per database as the rest (the queue, the cache, the stamps), so deployments sharing a
    # server wake their own senders only, whatever database or instance name each one uses.
    db = _redis(settings.REDIS_URL).connection_pool.connection_kwargs.get("db", 0)
    return f"{settings.PUSHDESK_INSTANCE}:{db}:stream-wake"


def streams_senders_ensure() -> list[int]:
    """Start a sender task for every slot whose sender (a process or a task) is not beating; returns
    the slots started."""
    from django_q.conf import Conf
    from django_q.tasks import async_task

    if Conf.SYNC:
        return []
    started = []
    for slot in range(settings.PUSHDESK_STREAM_SENDERS):
        key = _HEARTBEAT.format(slot=slot)
        if cache.get(key) is None and cache.add(f"{key}:starting", 1, timeout=30):
            async_task("delivery.tasks.streams_send_task", slot, q_options={"timeout": _sender_timeout()})
            started.append(slot)
    return started


def streams_sender_hand_over(slot: int) -> bool:
    """A sender task whose time is up starts its successor at once (its heartbeat still holds the
    slot), unless a ``send_stream`` process holds the slot now. Returns whether it handed over."""
    from django_q.tasks import async_task

    if not _beat(slot, dedicated=False):
        return False
    async_task("delivery.tasks.streams_send_task", slot, q_options={"timeout": _sender_timeout()})
    return True


def _beat(slot: int, *, dedicated: bool) -> bool:
    """Beat the slot's heartbeat. A task yields to a ``send_stream`` process beating the slot
    (returns False and beats nothing); a process always beats."""
    key = _HEARTBEAT.format(slot=slot)
    if not dedicated:
        held = cache.get(key)
        if isinstance(held, dict) and held.get("process") and held.get("pid") != os.getpid():
            return False
    beat = {"pid": os.getpid(), "at": time.time(), "process": dedicated}
    cache.set(key, beat, timeout=15)
    # Kept for a week: `manage.py status` says since when a slot is silent, once its heartbeat ran out.
    cache.set(f"{key}:seen", beat, timeout=7 * 24 * 3600)
    return True


@dataclass
class SenderSlot:
    slot: int
    beating: bool  # its heartbeat (15 s) holds
    process: bool  # beaten by a ``send_stream`` process, not a worker task
    pid: int | None
    seen_at: float | None  # its last beat (time.time()), None when not in the last week


def streams_senders_seen() -> list[SenderSlot]:
    """Each of the ``PUSHDESK_STREAM_SENDERS`` slots: whether its sender beats, and its last beat."""
    keys = {slot: _HEARTBEAT.format(slot=slot) for slot in range(settings.PUSHDESK_STREAM_SENDERS)}
    held = cache.get_many([*keys.values(), *(f"{key}:seen" for key in keys.values())])
    slots = []
    for slot, key in keys.items():
        beat = held.get(key)
        last = beat if isinstance(beat, dict) else held.get(f"{key}:seen")
        last = last if isinstance(last, dict) else {}
        slots.append(
            SenderSlot(
                slot=slot,
                beating=isinstance(beat, dict),
                process=bool(last.get("process")),
                pid=last.get("pid"),
                seen_at=last.get("at"),
            )
        )
    return slots


def _sender_timeout() -> int:
    return int(settings.PUSHDESK_SEND_TASK_SECONDS + settings.PUSHDESK_SEND_LEASE_SECONDS)


class _Listener:
    """A Redis connection of its own subscribed to the wake-ups; ``wait`` returns the woken stream ids."""

    def __init__(self):
        import redis

        self.client = redis.Redis.from_url(settings.REDIS_URL)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(_channel())

    def wait(self, timeout: float) -> set[int]:
        woken = set()
        message = self.pubsub.get_message(timeout=max(timeout, 0.0))
        while message is not None:
            if message.get("type") == "message":
                woken.add(int(message["data"]))
            message = self.pubsub.get_message(timeout=0.0)
        return woken

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


@dataclass
class _Stream:
    dispatch: Dispatch
    limits: list[tuple[str, float]]
    with_profiles: bool
    limit: int  # rows a claim takes at most: a batch, and at most a second's worth under its limits
    quiet: QuietAtClaim | None  # the quiet hours its claims judge (``quiet_at_claim``); None: none to judge


# What this process has said of the streams it does not send (their app's credentials cannot be
# decrypted), by stream: the senders open the streams every few seconds, and run for weeks, so a
# stream is named once an hour while it lasts (a line missed, or rotated away, comes again), and
# at once when it comes again after its credentials were read, or names other credentials than
# its last line did.
_UNREADABLE_LOG_SECONDS = 3600.0
_UNREADABLE_SAID = SaidOnceEvery(_UNREADABLE_LOG_SECONDS)


def _open_streams(ids: list[int] | None = None) -> dict[int, _Stream]:
    """The open streams to send, their app's credentials decrypted; a stream whose app's credentials
    cannot be decrypted is left out, its rows queued, and said in the log once an hour at most (the
    others go on), and said once more when its credentials are read again.
    Each carries the quiet hours its claims judge, read with it (its app's rules, in the same
    query): the senders read the open streams again every few seconds, so a change to the rules
    reaches their claims then, and a claim costs no query of its own for them."""
    from delivery.services.apps import app_secrets_read
    from delivery.services.sending import credentials_unreadable_said, dispatch_needs_profiles

    found = Dispatch.objects.select_related("app", "app__delivery_rules").filter(
        standing=True, status=Dispatch.Status.SENDING
    )
    if ids is not None:
        found = found.filter(pk__in=ids)
    streams = {}
    apps = {}
    for dispatch in found:
        dispatch.app = apps.setdefault(dispatch.app_id, dispatch.app)  # each app decrypted once
        unreadable = app_secrets_read(dispatch.app)
        if unreadable:
            said = credentials_unreadable_said(dispatch, unreadable)
            left_out = _UNREADABLE_SAID.now_or_never(str(dispatch.pk), saying=said)
            if left_out is not None:
                log.error(said + left_out_said(left_out), extra={"dispatch": dispatch.pk, "app": dispatch.app_id})
            continue
        if _UNREADABLE_SAID.forget(str(dispatch.pk)):
            log.warning(
                "Dispatch %s is sent again: its app's credentials can be decrypted",
                dispatch.pk,
                extra={"dispatch": dispatch.pk, "app": dispatch.app_id},
            )
        limits = [(f"app:{dispatch.app_id}", dispatch.app.rate_limit_per_second)]
        if dispatch.rate_limit_per_second:
            limits.append((f"dispatch:{dispatch.pk}", dispatch.rate_limit_per_second))
        limit = settings.PUSHDESK_SEND_BATCH
        rates = [rate for _, rate in limits if rate]
        if rates:
            limit = max(1, min(limit, int(min(rates))))
        streams[dispatch.pk] = _Stream(
            dispatch, limits, dispatch_needs_profiles(dispatch), limit, quiet_at_claim(dispatch)
        )
    return streams


def _acquire_all(limits: list[tuple[str, float]], count: int, before_waiting=None) -> None:
    """Wait until ``count`` messages may go under every limit (the rows are claimed: under their lease;
    a claim is at most a second's worth). ``before_waiting`` runs once, before any wait."""
    from delivery.throttle import throttle_acquire

    left = count
    while left > 0:
        left -= throttle_acquire(limits=limits, count=left, before_waiting=before_waiting)
        before_waiting = None


def streams_send(*, budget: float, slot: int = 0, dispatch_ids: list[int] | None = None, dedicated: bool = False):
    """Drain the open streams until ``budget`` seconds are spent (0: until nothing is ready;
    ``math.inf``: until the process is asked to stop).

    Claims what is ready in each stream (one row when one waits, up to ``PUSHDESK_SEND_BATCH``
    under load), sends it through the engine's batches with one batch in flight while the next is
    claimed, and otherwise sleeps until a call that appended wakes it (Redis) or the poll interval
    passes. Any number of senders may run (claims are atomic). Stops early, after writing back
    the batch in flight, when the process is asked to stop (SIGTERM), or when it is a task
    (``dedicated`` False) and a ``send_stream`` process beats its slot. Returns a SendReport.
    """
    from delivery.services.claims import deliveries_claim
    from delivery.services.sending import SendReport, _batch_finish, _batch_prepare, _batch_submit

    report = SendReport()
    from operations.instance import instance_refuses

    if instance_refuses(action="send the open streams"):
        return report
    deadline = time.monotonic() + budget
    listener = _Listener() if budget > 0 and settings.REDIS_URL else None
    streams = _open_streams(dispatch_ids)
    refreshed = time.monotonic()
    beat = 0.0
    in_flight = []

    def write_back_in_flight() -> None:
        # Before waiting for tokens: the batch in flight is leased, and the wait may outlast it.
        nonlocal in_flight
        for dispatch, previous in in_flight:
            _batch_finish(dispatch, previous, report)
        in_flight = []

    try:
        ready = True  # claim: at the start, after a wake-up or a poll, and while batches come full
        while not stop_requested():
            now_mono = time.monotonic()
            if budget > 0 and now_mono - beat > 3:
                if not _beat(slot, dedicated=dedicated):
                    break  # a send_stream process holds the slot: this task yields to it
                beat = now_mono
            if dispatch_ids is None and now_mono - refreshed > 2:
                streams, refreshed = _open_streams(), now_mono
            if ready:
                claimed, full = 0, False
                for stream in streams.values():
                    rows = deliveries_claim(
                        stream.dispatch.pk,
                        limit=stream.limit,
                        now=timezone.now(),
                        with_profiles=stream.with_profiles,
                        quiet=stream.quiet,
                    )
                    if not rows:
                        continue
                    claimed += len(rows)
                    full = full or len(rows) >= stream.limit
                    if stream.quiet is not None:
                        rows = [row for row in rows if not row.held]  # held until the quiet hours end
                        if not rows:
                            continue
                    report.claimed += len(rows)
                    report.batches += 1
                    # Tokens for the messages that go: a row held above, or skipped (quiet hours that
                    # discard, a phone logged out since), takes none from its app's other sends.
                    going = sum(row.goes for row in rows)
                    _acquire_all(stream.limits, going, before_waiting=write_back_in_flight)
                    batch = _batch_prepare(stream.dispatch, rows)
                    write_back_in_flight()
                    _batch_submit(batch, stream.dispatch.app)
                    in_flight = [(stream.dispatch, batch)]
                if full or (claimed and listener is None):
                    continue  # more may be ready: claim again while this batch sends
            woken: set[int] = set()
            if in_flight:
                # Rows that came while this batch sends have woken us already: claim them at once,
                # while it is in flight. Otherwise nothing is ready: write it back now (its latency
                # counts) and look again (without wake-ups, claim at once; with them, wait for one).
                woken = listener.wait(0.0) if listener is not None else set()
                if not woken:
                    write_back_in_flight()
                    ready = listener is None
                    if ready:
                        continue
            if not woken:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait = min(left, settings.PUSHDESK_STREAM_POLL_SECONDS)
                woken = listener.wait(wait) if listener is not None else (time.sleep(wait) or set())
            if dispatch_ids is not None and woken and not woken & set(streams):
                ready = False  # another stream's wake-up (every stream of the instance shares the channel)
                continue
            ready = True  # a wake-up, or the poll: rows may be ready (a retry's time may have come)
            if woken - set(streams) and dispatch_ids is None:
                streams, refreshed = _open_streams(), time.monotonic()
    finally:
        write_back_in_flight()
        if listener is not None:
            listener.close()
    return report


def streams_sender_run(*, slot: int = 0, retry_seconds: float = 2.0) -> SendReport:
    """Run a stream sender in this process until it is asked to stop (``manage.py send_stream``).

    A lost database or Redis (a restart, a failover) does not end it: the error is logged, the
    connections are dropped and it starts again after ``retry_seconds``. Rows it had claimed then
    stay ``sending`` and end ``unknown`` after their lease, never sent again. Returns what it did.
    """
    from django.db import close_old_connections, connections

    from delivery.services.sending import SendReport
    from operations.instance import instance_problem

    total = SendReport()
    refusals = SaidOnceEvery(_REFUSED_LOG_SECONDS)  # a copy not claimed: said once every 10 minutes at most
    refused_wait = 0.0
    while not stop_requested():
        try:
            problem = instance_problem()
            if problem is not None:
                # A restored or copied database: wait for `instance_claim`, quietly and cheaply.
                if refusals.now_or_never("refused") is not None:
                    log.warning(
                        "stream sender %s refused to send the open streams: %s (checked again every %.0f s at most)",
                        slot,
                        problem,
                        _REFUSED_WAIT_MAX_SECONDS,
                    )
                refused_wait = min(
                    max(refused_wait * 2, settings.PUSHDESK_STREAM_POLL_SECONDS, 1.0), _REFUSED_WAIT_MAX_SECONDS
                )
                _idle(slot, refused_wait)
                continue
            if refusals.forget("refused"):
                log.warning("stream sender %s: the database is this instance's now: sending", slot)
                refused_wait = 0.0
            report = streams_send(budget=math.inf, slot=slot, dedicated=True)
        except Exception as exc:
            outage = _outage(exc)
            if outage:  # a restart, a failover: a line each time, not a traceback every 2 s
                log.error("stream sender %s: %s: starting again in %.0f s", slot, outage, retry_seconds)
            else:
                log.exception("stream sender %s failed: starting again in %.0f s", slot, retry_seconds)
            connections.close_all()
            _sleep_unless_stopped(retry_seconds)
            continue
        finally:
            close_old_connections()
        total.claimed += report.claimed
        total.batches += report.batches
        total.outcomes.update(report.outcomes)
    try:
        cache.delete(_HEARTBEAT.format(slot=slot))  # the watchdog may start a task for the slot at once
    except (RedisConnectionError, RedisTimeoutError):
        pass  # Redis is down: the heartbeat lapses on its own
    return total


def _outage(exc: Exception) -> str | None:
    """Say in a line what is wrong when ``exc`` is Redis or the database gone (a connection refused
    or lost, a shutdown) or the database not migrated, or return None for any other error (a
    deadlock, a bug)."""
    from operations.database import database_problem, redis_problem

    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return f"{redis_problem(exc)}: start it, or check REDIS_URL"
    return database_problem(exc)


_REFUSED_WAIT_MAX_SECONDS = 60.0
_REFUSED_LOG_SECONDS = 600.0


def _idle(slot: int, seconds: float) -> None:
    """Wait ``seconds`` (or until asked to stop), beating the slot so no task is started for it."""
    until = time.monotonic() + seconds
    while not stop_requested():
        _beat(slot, dedicated=True)
        left = until - time.monotonic()
        if left <= 0:
            return
        _sleep_unless_stopped(min(left, 5.0))


def _sleep_unless_stopped(seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until and not stop_requested():
        time.sleep(0.1)
