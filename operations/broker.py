"""The task queue's Redis broker: django-q2's, with a registry of the qclusters' statistics.

django-q2 finds the clusters reporting to a queue with ``KEYS django_q:<queue>:cluster:*``, a walk
over every key of the Redis database (the cache's and the sessions' too, when they share it). Each
qcluster saves its statistics every half second (kept 3 s); here it also names the key in a sorted
set, scored by when that statistic runs out, so ``Stat.get_all`` (``manage.py status``, the
metrics, the admin's cluster page) reads the few keys named there instead.

The workers of a release before the registry save their statistics as django-q2 does, in no
registry, and an upgrade restarts the web machines before the workers: while the registry does not
exist (no worker of this release has reported for a week: an upgrade under way, a queue no worker
ever ran for, or a Redis emptied by a restart), the clusters are found as django-q2 finds them.
Once one has reported, the registry alone is read: until the last worker is restarted, the workers
still on the release before are not counted. A walk that found none is remembered for
``NONE_FOUND_KEPT`` seconds in one key, so that scrapes of a Redis emptied with no worker running
read that key rather than walk the database each time; a worker of the release before that starts
meanwhile is counted once the key has run out, one of this release at once.
"""

import time

from django_q.brokers.redis_broker import Redis
from django_q.conf import Conf

# How long a registered key is kept past the expiry its cluster gave it: room for clocks a little
# apart between the machines; a key gone by then reads as nothing (MGET's nil), never as a cluster.
_KEPT_PAST_EXPIRY = 60
# How long the registry outlives its last report: while it exists, no read walks the keys, however
# long the workers have been stopped.
_REGISTRY_KEPT = 7 * 86400
# How long a walk that found no cluster stands for every process's reads: shorter than a minute, so
# a probe of ``status --check`` and the next one, a minute apart, never both rest on one walk.
NONE_FOUND_KEPT = 30


class RegisteredStatsRedis(Redis):
    @staticmethod
    def stats_registry() -> str:
        """The sorted set naming the clusters' statistics; not under ``Q_STAT:``, which is theirs."""
        return f"{Conf.Q_STAT}s"

    @staticmethod
    def stats_none_found() -> str:
        """The key saying that a walk of the keys, without a registry, found no cluster a moment ago."""
        return f"{Conf.Q_STAT}s:none-found"

    def set_stat(self, key: str, value: str, timeout: int):
        now = time.time()
        registry = self.stats_registry()
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.set(key, value, timeout)
            pipe.zadd(registry, {key: now + timeout})
            pipe.zremrangebyscore(registry, "-inf", now - _KEPT_PAST_EXPIRY)
            pipe.expire(registry, _REGISTRY_KEPT)
            pipe.execute()

    def get_stats(self, pattern: str):
        """The statistics of the clusters registered in the last minute whose key is still there.

        ``pattern`` is django-q2's ``Q_STAT:*``, the only one it asks for; the registry holds those keys.
        Without a registry (no worker of this release has reported), django-q2's own walk finds them,
        unless a walk in the last ``NONE_FOUND_KEPT`` seconds found none."""
        registry = self.stats_registry()
        with self.connection.pipeline(transaction=False) as pipe:
            pipe.exists(registry)
            pipe.zrangebyscore(registry, time.time() - _KEPT_PAST_EXPIRY, "+inf")
            pipe.exists(self.stats_none_found())
            exists, keys, none_found = pipe.execute()
        if not exists:
            if none_found:
                return []
            found = [value for value in super().get_stats(pattern) or () if value is not None]
            if not found:
                self.connection.set(self.stats_none_found(), 1, ex=NONE_FOUND_KEPT)
            return found
        if not keys:
            return []
        return [value for value in self.connection.mget(keys) if value is not None]
