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
