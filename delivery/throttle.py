"""Send-rate limits shared by every worker: Redis when ``REDIS_URL`` is set, the database otherwise.

One limiter per key (``app:<id>``, ``dispatch:<id>``), a GCRA token bucket: ``rate`` tokens a
second with a burst of a tenth of a second's worth. ``take`` grants up to ``count`` tokens at
once and says how long to wait for more; all workers of all machines draw from the same bucket.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings
from django.db import transaction

from accounts.stamps import RATE_LUA, burst_of

_GCRA = "local grant, wait = 0, 0\n" + RATE_LUA + "return {grant, string.format('%.6f', math.max(wait, 0))}"


def _burst(rate: float) -> float:
    return burst_of(rate)


class RedisThrottle:
    """The limiter on Redis: one Lua script call per ``take``, Redis' own clock."""

    def __init__(self, url: str):
        import redis

        self._redis = redis.Redis.from_url(url)
        self._script = self._redis.register_script(_GCRA)

    def take(self, *, key: str, rate: float, count: int) -> tuple[int, float]:
        """Grant up to ``count`` tokens now; return (granted, seconds until the next token)."""
        # Prefixed with the instance: deployments sharing a Redis keep their own limits.
        granted, wait = self._script(
            keys=[f"{settings.PUSHDESK_INSTANCE}:throttle:{key}"], args=[rate, count, _burst(rate)]
        )
        return int(granted), float(wait)


class DatabaseThrottle:
    """The limiter on the database (the embedded mode): one locked row per key."""

    def take(self, *, key: str, rate: float, count: int) -> tuple[int, float]:
        """Grant up to ``count`` tokens now; return (granted, seconds until the next token)."""
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
        return granted, wait


@lru_cache(maxsize=1)
def throttle() -> RedisThrottle | DatabaseThrottle:
    """The limiter this installation uses (Redis if configured)."""
    if settings.REDIS_URL:
        return RedisThrottle(settings.REDIS_URL)
    return DatabaseThrottle()


def throttle_acquire(
    *,
    limits: list[tuple[str, float]],
    count: int,
    deadline: float | None = None,
    before_waiting: Callable[[], None] | None = None,
) -> int:
    """Block until at least one token is granted under every ``(key, rate)`` limit; return how many.

    Grants at most ``count``. Returns 0 only when ``deadline`` (a ``time.monotonic()`` value)
    passes first. A limit with a rate of 0 or less is no limit. ``before_waiting`` is called
    once, before the first wait (work that must not wait for tokens, e.g. a write-back).
    """
    limits = [(key, rate) for key, rate in limits if rate and rate > 0]
    if not limits:
        return count
    limiter = throttle()
    want = count
    for key, rate in limits:
        while True:
            granted, wait = limiter.take(key=key, rate=rate, count=want)
            if granted:
                want = granted
                break
            if deadline is not None and time.monotonic() + wait > deadline:
                return 0
            if before_waiting is not None:
                before_waiting()
                before_waiting = None
            time.sleep(min(max(wait, 0.001), 1.0))
    return want
