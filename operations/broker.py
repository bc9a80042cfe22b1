"""The task queue's Redis broker: django-q2's, with a registry of the qclusters' statistics.

django-q2 finds the clusters reporting to a queue with ``KEYS django_q:<queue>:cluster:*``, a walk
over every key of the Redis database (the cache's and the sessions' too, when they share it). Each
qcluster saves its statistics every half second (kept 3 s); here it also names the key in a sorted
set, scored by when that statistic runs out, so ``Stat.get_all`` (``manage.py status``, the
metrics, the admin's cluster page) reads the few keys named there instead.
"""

import time

from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf

# How long a registered key is kept past the expiry its cluster gave it: room for clocks a little
# apart between the machines; a key gone by then reads as nothing (MGET's nil), never as a cluster.
_KEPT_PAST_EXPIRY = 60


class RegisteredStatsRedis(Redis):
    @staticmethod
    def stats_registry() -> str:
        """The sorted set naming the clusters' statistics; not under ``Q_STAT:``, which is theirs."""
        return f"{Conf.Q_STAT}s"

    def set_stat(self, key: str, value: str, timeout: int):
        now = time.time()
        registry = self.stats_registry()
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.set(key, value, timeout)
            pipe.zadd(registry, {key: now + timeout})
            pipe.zremrangebyscore(registry, "-inf", now - _KEPT_PAST_EXPIRY)
            pipe.expire(registry, timeout + _KEPT_PAST_EXPIRY)
            pipe.execute()

    def get_stats(self, pattern: str):
        """The statistics of the clusters registered in the last minute whose key is still there.

        ``pattern`` is django-q2's ``Q_STAT:*``, the only one it asks for; the registry holds those keys."""
        keys = self.connection.zrangebyscore(self.stats_registry(), time.time() - _KEPT_PAST_EXPIRY, "+inf")
        if not keys:
            return []
        return [value for value in self.connection.mget(keys) if value is not None]
