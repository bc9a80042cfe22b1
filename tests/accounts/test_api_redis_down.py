"""The API while Redis does not answer: 503 with when to try again, and a line a minute in the log."""

import logging
import shutil

import pytest
from django.conf import settings

from accounts import api, stamps
from config import reporting

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="the stamps are in the database here")


@pytest.fixture
def own_redis(db, settings, monkeypatch):
    """The stamps' Redis (each API call's key check and rate): a server of the test's own, to stop."""
    from tests.faults.servers import ThrowawayRedis

    if not shutil.which("redis-server"):
        pytest.skip("needs redis-server")
    server = ThrowawayRedis().start()
    settings.REDIS_URL = server.url(0)
    stamps._redis.cache_clear()
    monkeypatch.setattr(api, "_calls_refused", reporting.SaidOnceAMinute())
    yield server
    server.stop()
    stamps._redis.cache_clear()


def _errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_calls_answer_503_with_a_retry_and_the_log_says_it_once(own_redis, api_key_for, manager_alice, caplog):
    """A mobile app's registrations and an integrator's calls, while Redis is down, answered 500
    and logged a traceback of a hundred lines each: thousands a minute from the phones alone."""
    caplog.set_level(logging.INFO)
    client = api_key_for(manager_alice, scopes=("ingest", "read", "trigger"))
    own_redis.stop()
    calls = [
        client.post("/api/v1/devices/", {"app": 1, "platform": "ios", "token": "a" * 64}, format="json"),
        client.get("/api/v1/me/"),
        # The trigger's own route (before DRF's view) reads the same stamps first.
        client.post("/api/v1/campaigns/1/trigger/", {"recipients": [{"external_id": "x"}]}, format="json"),
    ]
    for answer in calls:
        assert answer.status_code == 503, answer.content
        assert answer.json()["code"] == "service_unavailable"
        assert answer.json()["detail"] == "Pushdesk cannot take calls for a moment (its Redis does not answer)."
        assert answer["Retry-After"] == "10" and answer.json()["retry_after"] == 10
    [line] = _errors(caplog)
    assert line.exc_info is None and "Traceback" not in caplog.text
    assert line.getMessage().startswith("API calls answer 503: Redis does not answer (ConnectionError: ")
    assert line.getMessage().endswith("; check that it runs, or REDIS_URL")
    assert f"127.0.0.1:{own_redis.port}" in line.getMessage()  # where it was looked for


def test_the_line_comes_again_a_minute_later_with_the_calls_refused_meanwhile(
    own_redis, api_key_for, manager_alice, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)
    client = api_key_for(manager_alice, scopes=("read",))
    own_redis.stop()
    clock = [1000.0]
    monkeypatch.setattr(reporting.time, "monotonic", lambda: clock[0])
    for _ in range(3):
        assert client.get("/api/v1/me/").status_code == 503
    clock[0] += 61
    assert client.get("/api/v1/me/").status_code == 503
    first, second = (r.getMessage() for r in _errors(caplog))
    assert "since the last line" not in first
    assert second.startswith("API calls answer 503: Redis does not answer (")
    assert "(3 calls refused since the last line)" in second
