"""What the workers log while the queue's Redis does not answer: a line a minute, not two a second."""

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from operations import queuelog

_REFUSED = "Error 111 connecting to 127.0.0.1:6390. Connection refused."


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(queuelog.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(queuelog, "_said", queuelog._Said())
    return now


def _outage(queue: logging.Logger) -> None:
    """What django-q2 logs in a few seconds of Redis down: the pusher's failure with its traceback,
    then the sentinel's statistics failing every half second (the exception alone as the message)."""
    try:
        raise RedisConnectionError(_REFUSED)
    except RedisConnectionError:
        queue.exception("Failed to pull task from broker")
    for _ in range(10):
        queue.error(RedisConnectionError(_REFUSED))


def test_a_redis_outage_is_a_line_a_minute_in_the_workers_log(clock, caplog):
    queue = logging.getLogger("django-q")
    caplog.set_level(logging.INFO, logger="django-q")
    _outage(queue)
    clock[0] += 61
    _outage(queue)
    lines = [r for r in caplog.records if r.name == "django-q"]
    assert [r.getMessage() for r in lines] == [
        f"the queue's Redis does not answer (ConnectionError: {_REFUSED}); check that it runs, or REDIS_URL: "
        "the workers take no task until it does",
        f"the queue's Redis does not answer (ConnectionError: {_REFUSED}); check that it runs, or REDIS_URL: "
        "the workers take no task until it does (10 such lines left out since the last)",
    ]
    assert all(r.exc_info is None and r.levelno == logging.ERROR for r in lines)
    assert "Traceback" not in caplog.text


def test_the_queue_s_other_lines_pass_as_they_are(clock, caplog):
    queue = logging.getLogger("django-q")
    caplog.set_level(logging.INFO, logger="django-q")
    queue.info("Q Cluster three-diet-white-india starting.")
    try:
        raise ValueError("a task's bug")
    except ValueError:
        queue.exception("Failed to push task to queue")
    lines = [r for r in caplog.records if r.name == "django-q"]
    assert [r.getMessage() for r in lines] == [
        "Q Cluster three-diet-white-india starting.",
        "Failed to push task to queue",
    ]
    assert lines[1].exc_info[0] is ValueError


def test_a_database_outage_is_a_line_a_minute_too(clock, caplog):
    """While PostgreSQL restarts, django-q2's monitor logged each result it could not save with the
    driver's traceback."""
    import psycopg
    from django.db import connection

    queue = logging.getLogger("django-q")
    caplog.set_level(logging.INFO, logger="django-q")
    for _ in range(3):
        try:
            with connection.wrap_database_errors:
                psycopg.connect("host=127.0.0.1 port=1 dbname=pushdesk connect_timeout=5")
        except Exception:
            queue.exception("Could not save task result")
    lines = [r for r in caplog.records if r.name == "django-q"]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert (
        lines[0]
        .getMessage()
        .startswith("Could not save task result: the database does not answer (OperationalError: connection failed: ")
    )
    assert lines[0].getMessage().endswith("start it, or check DATABASE_URL")
