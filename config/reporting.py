"""What error reports (the DEBUG page, emailed reports) may show of the settings, and the one line
a command or a log says of an error, once a minute (or once in a longer interval) at most when a
service down makes it at every call, task or scrape."""

import logging
import re
import threading
import time

from django.views.debug import SafeExceptionReporterFilter

# A service URL's user information: up to the last @ before the host (a password may hold an @).
_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^/@:\s]*:)(?P<password>[^/\s]+)(?=@[^@/\s]*(?:[/\s]|$))", re.IGNORECASE
)


def first_line(exc: BaseException) -> str:
    """The first line of what ``exc`` says ("" when it says nothing): a driver's error runs on for
    lines (the server's hint, the statement), where a one-line message wants its gist."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def reword(record: logging.LogRecord, level: int, message: str, *args) -> None:
    """Make ``record`` say ``message % args`` at ``level``, without its traceback."""
    record.msg, record.args = message, args
    record.levelno, record.levelname = level, logging.getLevelName(level)
    record.exc_info, record.exc_text = None, None


def left_out_said(count: int, *, what: str = "such lines left out since the last") -> str:
    """What a line said by ``SaidOnceEvery`` adds of those left out before it: `` (3 such lines left
    out since the last)``, or nothing for none."""
    return f" ({count} {what})" if count else ""


class SaidOnceEvery:
    """Lets a line about each key be said once every ``seconds`` at most, and counts the lines left
    out meanwhile: a service down is met by every call, task or scrape, a line each thousands a minute."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._said_at: dict[str, float] = {}
        self._saying: dict[str, str] = {}
        self._left_out: dict[str, int] = {}

    def now_or_never(self, key: str, *, counting_this: bool = False, saying: str = "") -> int | None:
        """How many lines about ``key`` were left out since the last one said, when one may be said
        now (0 at the first); None when this one must be left out too. With ``counting_this``, the
        one said now is counted too, after the first (a call refused is refused, said or not).
        ``saying``: what the line says of the key; one saying something else than the last said
        is said at once (what is wrong changed: the operator reads it now, not in an hour)."""
        with self._lock:
            now = time.monotonic()
            said_at = self._said_at.get(key)
            if said_at is not None and now - said_at < self.seconds and self._saying.get(key, "") == saying:
                self._left_out[key] = self._left_out.get(key, 0) + 1
                return None
            self._said_at[key] = now
            self._saying[key] = saying
            left_out = self._left_out.pop(key, 0)
        return left_out + 1 if counting_this and said_at is not None else left_out

    def forget(self, key: str) -> bool:
        """Forget the lines about ``key``, said and left out, so that the next is said at once;
        return whether one was said since the last ``forget``."""
        with self._lock:
            self._left_out.pop(key, None)
            self._saying.pop(key, None)
            return self._said_at.pop(key, None) is not None

    def forget_all(self) -> None:
        """Forget every key's lines: the next about each is said at once."""
        with self._lock:
            self._said_at.clear()
            self._saying.clear()
            self._left_out.clear()


class SaidOnceAMinute(SaidOnceEvery):
    """``SaidOnceEvery`` a minute: the lines of a service down met at every call, task or scrape."""

    def __init__(self):
        super().__init__(60.0)


class SettingsReportFilter(SafeExceptionReporterFilter):
    """Django's filter (keys, secrets, tokens, passwords), plus the password inside any service URL.

    ``DATABASE_URL``, ``REDIS_URL`` and the cache and queue settings built from them carry the
    servers' passwords in strings whose names Django's filter does not recognise.
    """

    def cleanse_setting(self, key, value):
        value = super().cleanse_setting(key, value)
        if isinstance(value, str):
            return _URL_PASSWORD.sub(lambda m: m["head"] + self.cleansed_substitute, value)
        return value
