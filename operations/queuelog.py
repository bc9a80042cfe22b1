"""What the workers log while the queue's Redis, or the database, does not answer.

django-q2 logs it in each worker process as it meets it: the pusher's "Failed to pull task from
broker" with the client's traceback (each time the sentinel starts the pusher again), and the
sentinel's statistics failing every half second, the exception alone as the line. A Redis restart
of five minutes wrote some 600 lines and 30 tracebacks per worker machine. While PostgreSQL
restarts, its monitor logs each task result it cannot save with the driver's traceback. Each process
now says each once a minute at most, in one line, with how many it left out.

The sentinel starts the pusher again each time it stops (every 10 s while Redis does not answer:
the pusher waits 10 s after it failed to pull a task, then stops), saying "reincarnated pusher …
after sudden death" at CRITICAL each time: the first is said as it is, the next once a minute at
most, with how many were left out. The monitor's line for a failed task carried the task's
traceback as text (the Task queue's Failed tasks keep it); it names the error in one line, and a
task failed as Redis does not answer is said once a minute at most too.
"""

import logging
import re

from redis.exceptions import RedisError

from config.reporting import SaidOnceAMinute, left_out_said, reword
from operations.database import database_gone, redis_problem

_said = SaidOnceAMinute()


def _redis_error(record: logging.LogRecord) -> RedisError | None:
    if isinstance(record.msg, RedisError):  # django-q2's statistics: logger.error(exc)
        return record.msg
    exc = record.exc_info[1] if record.exc_info else None
    return exc if isinstance(exc, RedisError) else None


# django-q2's sentinel, for the pusher or the monitor it started again (a worker's lines, each a
# task killed or a process lost, are said each time).
_REINCARNATED = re.compile(r"reincarnated (pusher|monitor) \S+ after sudden death")
# django-q2's monitor: "Failed '<func>' (<name>) - <the error> : <its traceback>".
_FAILED = re.compile(r"(Failed '.*?' \(.*?\)) - .*? : Traceback \(most recent call last\):\n(.*)", re.DOTALL)
# The last line of a traceback whose error is Redis not answering.
_REDIS_GONE = re.compile(r"redis\.exceptions\.(ConnectionError|TimeoutError|BusyLoadingError)\b")


def _error_of(traceback: str) -> str:
    """The traceback's last line, its error ('TypeError: must be real number, not str'), with the
    error's module left out."""
    lines = [line for line in traceback.splitlines() if line.strip() and not line.startswith(" ")]
    last = lines[-1] if lines else "an error"
    kind, _, detail = last.partition(": ")
    kind = kind.rsplit(".", 1)[-1]
    return f"{kind}: {detail}" if detail else kind


class QueueServiceDown(logging.Filter):
    """On the ``django-q`` logger: a line about Redis or the database not answering is said once a
    minute at most, without its traceback, and so is the pusher or the monitor started again after
    the first time; a failed task's line names its error without its traceback; every other line
    passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(("reincarnated ", "Failed '")):
            return self._said_of_django_q(record)
        exc = _redis_error(record)
        if exc is not None:
            left_out = _said.now_or_never("redis")
            if left_out is None:
                return False
            reword(
                record,
                logging.ERROR,
                "the queue's %s; check that it runs, or REDIS_URL: the workers take no task until it does%s",
                redis_problem(exc),
                left_out_said(left_out),
            )
            return True
        gone = database_gone(record.exc_info[1]) if record.exc_info and record.exc_info[1] else None
        if gone is None:
            return True
        left_out = _said.now_or_never("database")
        if left_out is None:
            return False
        reword(record, logging.ERROR, "%s: %s%s", record.getMessage(), gone, left_out_said(left_out))
        return True

    def _said_of_django_q(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        started_again = _REINCARNATED.fullmatch(message)
        if started_again:
            left_out = _said.now_or_never(f"reincarnated {started_again.group(1)}")
            if left_out is None:
                return False
            record.msg, record.args = message + left_out_said(left_out), None
            return True
        failed = _FAILED.fullmatch(message)
        if failed is None:
            return True
        task, traceback = failed.groups()
        error = _error_of(traceback)
        if _REDIS_GONE.search(traceback.rstrip().splitlines()[-1]):
            left_out = _said.now_or_never("failed as redis")
            if left_out is None:
                return False
            said = (
                f"{task} - Redis does not answer ({error}); check that it runs, or REDIS_URL{left_out_said(left_out)}"
            )
        else:
            said = f"{task} - {error} (its traceback: Task queue → Failed tasks)"
        record.msg, record.args = said, None
        return True
