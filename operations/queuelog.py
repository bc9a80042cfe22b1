"""What the workers log while the queue's Redis does not answer.

django-q2 logs it in each worker process as it meets it: the pusher's "Failed to pull task from
broker" with the client's traceback (each time the sentinel starts the pusher again), and the
sentinel's statistics failing every half second, the exception alone as the line. A Redis restart
of five minutes wrote some 600 lines and 30 tracebacks per worker machine. Each process now says it
once a minute at most, in one line, with how many it left out.
"""

import logging
import threading
import time

from redis.exceptions import RedisError

from operations.database import redis_problem

EVERY_SECONDS = 60.0


class _Said:
    def __init__(self):
        self.lock = threading.Lock()
        self.at: float | None = None
        self.left_out = 0


_said = _Said()


def _redis_error(record: logging.LogRecord) -> RedisError | None:
    if isinstance(record.msg, RedisError):  # django-q2's statistics: logger.error(exc)
        return record.msg
    exc = record.exc_info[1] if record.exc_info else None
    return exc if isinstance(exc, RedisError) else None


class QueueRedisDown(logging.Filter):
    """On the ``django-q`` logger: a line about Redis not answering is said once a minute at most,
    without its traceback; every other line passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = _redis_error(record)
        if exc is None:
            return True
        with _said.lock:
            now = time.monotonic()
            if _said.at is not None and now - _said.at < EVERY_SECONDS:
                _said.left_out += 1
                return False
            left_out, _said.at, _said.left_out = _said.left_out, now, 0
        since = f" ({left_out} such lines left out since the last)" if left_out else ""
        record.msg = "the queue's %s; check that it runs, or REDIS_URL: the workers take no task until it does%s"
        record.args = (redis_problem(exc), since)
        record.levelno, record.levelname = logging.ERROR, logging.getLevelName(logging.ERROR)
        record.exc_info, record.exc_text = None, None
        return True
