"""Version stamps and the per-key rate buckets in Redis: each instance's own keys."""

import pytest
import redis
from django.conf import settings

from accounts import stamps

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="the stamps are in the database here")


@pytest.fixture
def staging_copy(db, settings):
    """A second deployment on the same Redis (a staging copy with production's API keys)."""

    def switch(name: str) -> None:
        settings.PUSHDESK_INSTANCE = name
        stamps._redis.cache_clear()

    yield switch
    stamps._redis.cache_clear()


def test_instances_sharing_a_redis_neither_take_from_each_others_buckets_nor_bump_each_others_stamps(staging_copy):
    server = redis.Redis.from_url(settings.REDIS_URL)
    server.delete(
        "production:throttle:trigger:deadbeef",
        "staging:throttle:trigger:deadbeef",
        "pushdesk:throttle:trigger:deadbeef",
    )

    staging_copy("production")
    assert stamps.stamps_read(["access"], rate_key="trigger:deadbeef", rate=1).rate_granted
    stamps.stamps_bump("access")
    production_stamp = stamps.stamps_read(["access"])["access"]

    staging_copy("staging")
    assert stamps.stamps_read(["access"], rate_key="trigger:deadbeef", rate=1).rate_granted  # a bucket of its own
    stamps.stamps_bump("access")

    staging_copy("production")
    assert stamps.stamps_read(["access"])["access"] == production_stamp
    assert not stamps.stamps_read(["access"], rate_key="trigger:deadbeef", rate=1).rate_granted  # its own is spent
    assert server.exists("production:throttle:trigger:deadbeef", "staging:throttle:trigger:deadbeef") == 2


@pytest.fixture
def own_redis(db, settings):
    """A Redis of the test's own (it flushes scripts and restarts it), the stamps pointed at it."""
    import shutil

    from tests.faults.servers import ThrowawayRedis

    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server")
    server = ThrowawayRedis().start()
    settings.REDIS_URL = server.url(2)
    stamps._redis.cache_clear()
    yield server
    stamps._redis.cache_clear()
    server.stop()


def test_a_read_is_one_round_trip_on_the_threads_own_connection(own_redis, monkeypatch):
    """A request's read goes on a connection its thread keeps, with the command's bytes kept: not
    through the client's pool, retry and observability wrappers, which cost as much CPU as the
    round trip. What it reads and takes is the script's, as before."""
    first = stamps.stamps_read(["access", "campaign:7"], rate_key="trigger:k", rate=2)
    assert first.values == {"access": None, "campaign:7": None} and first.rate_granted
    stamps.stamps_bump("campaign:7")
    bumped = redis.Redis.from_url(settings.REDIS_URL).get(stamps._redis().stamp_prefix + "campaign:7").decode()
    through_client = []
    monkeypatch.setattr(redis.Redis, "execute_command", lambda *args, **kwargs: through_client.append(args))
    again = stamps.stamps_read(["access", "campaign:7"], rate_key="trigger:k", rate=2)
    assert again.values == {"access": None, "campaign:7": bumped} and not again.rate_granted  # burst of 1
    assert again.rate_wait > 0
    assert through_client == []


def test_a_read_after_the_script_was_flushed_or_the_server_restarted_answers(own_redis):
    stamps.stamps_bump("access")
    before = stamps.stamps_read(["access"])["access"]
    assert before is not None
    redis.Redis.from_url(settings.REDIS_URL).script_flush()
    assert stamps.stamps_read(["access"])["access"] == before  # the client loads the script again
    own_redis.restart(down_for=0.2)  # it kept nothing: the stamp is gone, and the thread's socket dead
    assert stamps.stamps_read(["access"])["access"] is None
    stamps.stamps_bump("access")
    assert stamps.stamps_read(["access"])["access"] not in (None, before)


def test_a_forked_process_reads_on_a_connection_of_its_own(own_redis):
    import os

    stamps.stamps_bump("access")
    value = stamps.stamps_read(["access"])["access"]
    parent_connection = stamps._redis()._own.connection
    child = os.fork()
    if child == 0:  # the child never shares the parent's socket: its answers would mix with the parent's
        ok = (
            stamps.stamps_read(["access"])["access"] == value
            and stamps._redis()._own.connection is not parent_connection
        )
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert stamps.stamps_read(["access"])["access"] == value
    assert stamps._redis()._own.connection is parent_connection
