"""What error reports (the DEBUG page, emailed reports) may show of the settings, and the one line
a command or a log says of an error."""

import re

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
