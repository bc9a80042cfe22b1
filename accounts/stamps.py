"""Version stamps: what lets a process cache API keys, permissions and approved content safely.

A stamp is a named random token, kept in Redis (``<PUSHDESK_INSTANCE>:stamp:<name>``) or, in the embedded
mode, in the database (``VersionStamp``). A cache entry remembers the stamp it was loaded under;
a change bumps the stamp, and the next request that reads it reloads. Names:

- ``access``: API keys, users (active, roles), group permissions and object access grants;
- ``campaign:<id>``: a campaign's state, approval and content (and its app's delivery rules).

A request reads every stamp it needs in one round trip (``stamps_read``), together with its
API key's rate limit when it has one. Bumps happen after the change commits, so a reader that
sees the new stamp loads the new data; a cache entry is also dropped after
``PUSHDESK_CACHE_SECONDS``, which bounds what a process that died between the two could leave.
"""

from __future__ import annotations

import os
import secrets
import threading
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.db import transaction

# GCRA token bucket (``delivery.throttle`` runs the same): KEYS[1] the bucket, ARGV rate, want,
# burst. Sets the locals ``grant`` and ``wait``, which the script around it declares.
RATE_LUA = """
do
  local rate = tonumber(ARGV[1])
  local want = tonumber(ARGV[2])
  local burst = tonumber(ARGV[3])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local horizon = now + burst / rate
  grant = math.min(want, math.max(math.floor((horizon - tat) * rate + 1e-3), 0))
  if grant > 0 then
    tat = tat + grant / rate
    redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
  end
  if grant < want then wait = tat + 1 / rate - horizon end
end
"""

# One round trip: take from the rate bucket (when ARGV[1] > 0), then read the stamps KEYS[2..].
_TAKE_AND_READ = (
    "local grant, wait = 0, 0\nif tonumber(ARGV[1]) > 0 then\n"
    + RATE_LUA
    + """end
local stamps = {}
for i = 2, #KEYS do stamps[i - 1] = redis.call('GET', KEYS[i]) or false end
return {grant, string.format('%.6f', math.max(wait, 0)), stamps}
"""
)


@dataclass
class Stamps:
    """What one ``stamps_read`` returned: each stamp (None when never bumped) and the rate decision."""

    values: dict[str, str | None]
    rate_granted: bool | None = None  # None: no rate limit was taken here
    rate_wait: float = 0.0

    def __getitem__(self, name: str) -> str | None:
        return self.values.get(name)


class _Redis:
    def __init__(self, url: str, instance: str):
        import redis

        self.client = redis.Redis.from_url(url)
        self.script = self.client.register_script(_TAKE_AND_READ)
        # The instance's, as the cache, the queue and the send rate limiters: deployments sharing a
        # Redis neither take from each other's buckets nor bump each other's stamps.
        self.stamp_prefix = f"{instance}:stamp:"
        self.throttle_prefix = f"{instance}:throttle:"
        self.no_bucket = f"{instance}:throttle:-"
        pool = self.client.connection_pool
        self._connect = lambda: pool.connection_class(**pool.connection_kwargs)
        self._packed = lru_cache(maxsize=1024)(self._connect().pack_command)
        self._own = threading.local()

    def take_and_read(self, keys: list[str], args: list) -> list:
        """The script's answer, in one round trip on this thread's own connection.

        redis-py's command path (the pool's checkout and return, its retry wrapper and its
        observability hooks, the command packed again) cost about as much of a request's CPU as
        the round trip itself, on every API call; the command's bytes are kept per keys and
        arguments (a key's bucket and a view's stamps: a few per process). Any failure (a
        server restarted, the script flushed from its cache) closes the thread's connection and
        goes the client's way, with its retries and its loading of the script."""
        own = self._own
        connection = getattr(own, "connection", None)
        if connection is None or own.pid != os.getpid():  # a forked process makes its own
            connection, own.connection, own.pid = (made := self._connect()), made, os.getpid()
        command = self._packed("EVALSHA", self.script.sha, len(keys), *keys, *args)
        try:
            connection.send_packed_command(command, check_health=False)
            return connection.read_response()
        except Exception:  # noqa: BLE001 (whatever it was, the client's path answers or raises it)
            connection.disconnect()
            return self.script(keys=keys, args=args)


@lru_cache(maxsize=1)
def _redis() -> _Redis | None:
    return _Redis(settings.REDIS_URL, settings.PUSHDESK_INSTANCE) if settings.REDIS_URL else None


def burst_of(rate: float) -> float:
    """A bucket's burst: a tenth of a second's worth of tokens, at least one."""
    return max(1.0, rate * 0.1)


def stamps_read(names: list[str], *, rate_key: str | None = None, rate: float = 0.0) -> Stamps:
    """Read the stamps ``names``; with ``rate_key``, take one token from that rate bucket too.

    On Redis this is one round trip (one script). In the embedded mode the stamps are one query
    and the rate limit is left to the caller (``rate_granted`` is None).
    """
    server = _redis()
    if server is None:
        from accounts.models import VersionStamp

        found = dict(VersionStamp.objects.filter(name__in=names).values_list("name", "value"))
        return Stamps({name: found.get(name) for name in names})
    take = rate_key is not None and rate > 0
    stamp = server.stamp_prefix
    keys = [server.throttle_prefix + rate_key if take else server.no_bucket] + [stamp + n for n in names]
    granted, wait, values = server.take_and_read(keys, [rate if take else 0, 1, burst_of(rate) if take else 0])
    decoded = {name: (v.decode() if isinstance(v, bytes) else None) for name, v in zip(names, values, strict=True)}
    if not take:
        return Stamps(decoded)
    return Stamps(decoded, rate_granted=bool(int(granted)), rate_wait=float(wait))


def stamps_bump(*names: str) -> None:
    """Mark what ``names`` stand for as changed: every process reloads it on its next read.

    Redis stamps are bumped at once and again when the transaction commits (a reader that
    reloaded in between read the old rows); database stamps are written in the transaction itself.
    """
    if not names:
        return
    server = _redis()
    if server is None:
        from accounts.models import VersionStamp

        for name in sorted(set(names)):  # a fixed order: two bumpers never deadlock
            VersionStamp.objects.update_or_create(name=name, defaults={"value": secrets.token_hex(8)})
        return

    def bump() -> None:
        with server.client.pipeline(transaction=False) as pipe:
            for name in set(names):
                pipe.set(server.stamp_prefix + name, secrets.token_hex(8))
            pipe.execute()

    # Now, so that no process goes on trusting what is changing, and again once it commits, so
    # that a process that reloaded in between (and read the old rows) reloads once more.
    bump()
    transaction.on_commit(bump)


def access_changed(**kwargs) -> None:
    """Signal receiver: a key, a user, a role or an object grant changed. Kept as a receiver so that
    every writer (services, the admin's user form, data migrations) invalidates the caches."""
    stamps_bump("access")


def access_granting_models() -> tuple[type, ...]:
    """The models whose rows grant access: keys, users, roles and object grants (each app's
    grant models derive from guardian's bases)."""
    from django.contrib.auth.models import Group
    from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

    from accounts.models import ApiKey, User

    return (ApiKey, User, Group, UserObjectPermissionBase, GroupObjectPermissionBase)


def access_rows_changed(sender, instance=None, **kwargs) -> None:
    """Signal receiver for saves and deletes of the models that grant access: bumps ``access``.
    ``accounts.apps`` connects it to ``access_granting_models`` only, so every sender grants."""
    from accounts.models import User

    if isinstance(instance, User) and set(kwargs.get("update_fields") or ()) == {"last_login"}:
        return  # signing in to the admin changes nothing an API key can do
    stamps_bump("access")
