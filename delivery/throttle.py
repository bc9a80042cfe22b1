"""Send-rate limits shared by every worker: Redis when ``REDIS_URL`` is set, the database otherwise.

One limiter per key (``app:<id>``, ``dispatch:<id>``), a GCRA token bucket: ``rate`` tokens a
second with a burst of a tenth of a second's worth. ``take`` grants up to ``count`` tokens at
once and says how long to wait for more; all workers of all machines draw from the same bucket.
``give_back`` returns tokens taken for messages that were not sent after all (a claim that found
fewer rows, rows held by quiet hours, a slower limit that granted less), so they serve the app's
other sends instead of being spent on nothing: only those whose time is still to come (a token
is a slot of 1/rate s in the bucket's schedule; one whose slot has passed was spent by the clock,
and giving it back would let another send take it twice, over the rate).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings
from django.db import transaction

from accounts.stamps import RATE_LUA, burst_of

# Also returns where the grant's slots end (the bucket's theoretical arrival time after it).
_GCRA = (
    "local grant, wait = 0, 0\n"
    + RATE_LUA
    + "return {grant, string.format('%.6f', math.max(wait, 0)), redis.call('GET', KEYS[1]) or '0'}"
)

# KEYS[1] the bucket, ARGV rate, count, ends (where the grant's slots ended): its theoretical
# arrival time moves back by the part of count tokens' worth still to come, never before now (a
# bucket holds at most its burst).
_GIVE_BACK = """
local rate = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local back = math.min(tonumber(ARGV[2]) / rate, tonumber(ARGV[3]) - now)
if tat <= now or back <= 0 then return 0 end
tat = math.max(tat - back, now)
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return 1
"""


def _burst(rate: float) -> float:
    return burst_of(rate)


class RedisThrottle:
    """The limiter on Redis: one Lua script call per ``take``, Redis' own clock."""

    def __init__(self, url: str):
        import redis

        self._redis = redis.Redis.from_url(url)
        self._script = self._redis.register_script(_GCRA)
        self._give_back = self._redis.register_script(_GIVE_BACK)

    def take(self, *, key: str, rate: float, count: int) -> tuple[int, float]:
        """Grant up to ``count`` tokens now; return (granted, seconds until the next token)."""
        return self.take_until(key=key, rate=rate, count=count)[:2]

    def take_until(self, *, key: str, rate: float, count: int) -> tuple[int, float, float]:
        """As ``take``, and where the granted tokens' slots end (Redis' clock), for ``give_back``."""
        # Prefixed with the instance: deployments sharing a Redis keep their own limits.
        granted, wait, ends = self._script(
            keys=[f"{settings.PUSHDESK_INSTANCE}:throttle:{key}"], args=[rate, count, _burst(rate)]
        )
        return int(granted), float(wait), float(ends)

    def give_back(self, *, key: str, rate: float, count: int, ends: float) -> None:
        """Return ``count`` tokens taken and not used, those of their slots (ending at ``ends``)
        still to come (the bucket holds at most its burst)."""
        self._give_back(keys=[f"{settings.PUSHDESK_INSTANCE}:throttle:{key}"], args=[rate, count, f"{ends:.6f}"])


class DatabaseThrottle:
    """The limiter on the database (the embedded mode): one locked row per key."""

    def take(self, *, key: str, rate: float, count: int) -> tuple[int, float]:
        """Grant up to ``count`` tokens now; return (granted, seconds until the next token)."""
        return self.take_until(key=key, rate=rate, count=count)[:2]

    def take_until(self, *, key: str, rate: float, count: int) -> tuple[int, float, float]:
        """As ``take``, and where the granted tokens' slots end (this machine's clock), for ``give_back``."""
        from delivery.models import RateBucket

        burst = _burst(rate)
        with transaction.atomic():
            RateBucket.objects.get_or_create(key=key)
            bucket = RateBucket.objects.select_for_update().get(key=key)
            now = time.time()
            tat = max(bucket.tat, now)
            horizon = now + burst / rate
            granted = min(count, max(math.floor((horizon - tat) * rate + 1e-3), 0))
            if granted:
                tat += granted / rate
                RateBucket.objects.filter(key=key).update(tat=tat)
        wait = max(tat + 1 / rate - horizon, 0.0) if granted < count else 0.0
        return granted, wait, tat

    def give_back(self, *, key: str, rate: float, count: int, ends: float) -> None:
        """Return ``count`` tokens taken and not used, those of their slots (ending at ``ends``)
        still to come (the bucket holds at most its burst)."""
        from delivery.models import RateBucket

        with transaction.atomic():
            bucket = RateBucket.objects.select_for_update().filter(key=key).first()
            now = time.time()
            back = min(count / rate, ends - now)
            if bucket is not None and bucket.tat > now and back > 0:
                RateBucket.objects.filter(key=key).update(tat=max(bucket.tat - back, now))


@lru_cache(maxsize=1)
def throttle() -> RedisThrottle | DatabaseThrottle:
    """The limiter this installation uses (Redis if configured)."""
    if settings.REDIS_URL:
        return RedisThrottle(settings.REDIS_URL)
    return DatabaseThrottle()


class Grant(int):
    """What ``throttle_acquire`` granted: a count of tokens, and under which limits, each with where
    its tokens' slots end (``ends``: key → (rate, the limiter's clock)), for ``throttle_release``."""

    ends: dict[str, tuple[float, float]]


def throttle_acquire(
    *,
    limits: list[tuple[str, float]],
    count: int,
    deadline: float | None = None,
    before_waiting: Callable[[], None] | None = None,
) -> Grant:
    """Block until at least one token is granted under every ``(key, rate)`` limit; return how many.

    Grants at most ``count``. Returns 0 only when ``deadline`` (a ``time.monotonic()`` value)
    passes first. A limit with a rate of 0 or less is no limit. ``before_waiting`` is called
    once, before the first wait (work that must not wait for tokens, e.g. a write-back).

    The slowest limit is asked first and the others for what it granted; what a later one grants
    less goes back to those before it. (Asked the other way round, a campaign throttled to 50
    messages/s took a tenth of a second of its app's 1,000/s at each grant of 5: its app's whole
    rate, starving the app's other sends.)
    """
    limits = sorted(((key, rate) for key, rate in limits if rate and rate > 0), key=lambda limit: limit[1])
    if not limits:
        return _grant(count, {})
    limiter = throttle()
    want = count
    ends: dict[str, tuple[float, float]] = {}
    for key, rate in limits:
        while True:
            granted, wait, until = limiter.take_until(key=key, rate=rate, count=want)
            if granted:
                break
            if deadline is not None and time.monotonic() + wait > deadline:
                _give_back(limiter, ends, want)
                return _grant(0, {})
            if before_waiting is not None:
                before_waiting()
                before_waiting = None
            time.sleep(min(max(wait, 0.001), 1.0))
        if granted < want:
            _give_back(limiter, ends, want - granted)
        ends[key] = (rate, until)
        want = granted
    return _grant(want, ends)


def _grant(count: int, ends: dict[str, tuple[float, float]]) -> Grant:
    grant = Grant(count)
    grant.ends = ends
    return grant


def throttle_release(grant: Grant, count: int) -> None:
    """Give back ``count`` tokens of ``grant`` (``throttle_acquire``'s) that no message used (the
    claim found fewer rows, quiet hours held them, the send was stopped): those whose slots are
    still to come, so a claim slower than its tokens' time gives back only what the clock has not spent."""
    if count > 0 and grant.ends:
        _give_back(throttle(), grant.ends, count)


def _give_back(limiter, ends: dict[str, tuple[float, float]], count: int) -> None:
    for key, (rate, until) in ends.items():
        limiter.give_back(key=key, rate=rate, count=count, ends=until)
