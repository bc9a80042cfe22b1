"""What the web logs of a request the client got wrong, and from where it came.

Django logs a request for a host outside ``ALLOWED_HOSTS`` as an error with its whole traceback
(``django.security.DisallowedHost``): every probe of a scanner, which sends made-up ``Host``
headers or the server's IP address, wrote some twenty lines, and a log pipeline alerting on
errors alerted on each. Nothing in the application failed; the line an operator needs is which host
was asked for, from which address. So did a body Django refuses as it reads it (over
``PUSHDESK_MAX_REQUEST_BYTES``, too many form fields or files, a malformed multipart body): each
is one warning naming the client, the request and what was wrong with it.
"""

import logging

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http.multipartparser import MultiPartParserError

from config.reporting import first_line, reword

_HOST_LIMIT = 100
_PATH_LIMIT = 200


def client_address(request) -> str:
    """The client's address: behind ``PUSHDESK_TRUSTED_PROXIES`` proxies, the one the outermost of
    them saw (entries further left in X-Forwarded-For can be forged by the client)."""
    if request is None:
        return ""
    proxies = settings.PUSHDESK_TRUSTED_PROXIES
    if proxies > 0:
        forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR", "")


def _cut(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def _escaped(value: str, limit: int) -> str:
    """``value`` on one line: control and non-ASCII characters escaped, as Django's own request lines."""
    return _cut(value.encode("unicode_escape").decode("ascii"), limit)


def _requested(request) -> str:
    return f"{_escaped(request.method or '', 16)} {_escaped(request.path, _PATH_LIMIT)}"


def _refused_body(exc: BaseException) -> str | None:
    """What was wrong with a body Django refused as it read it, in words; None for any other error."""
    if isinstance(exc, RequestDataTooBig):
        return f"its body is over PUSHDESK_MAX_REQUEST_BYTES ({settings.DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes)"
    if isinstance(exc, TooManyFieldsSent):
        return f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} query parameters or form fields"
    if isinstance(exc, TooManyFilesSent):
        return f"more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES:,} files"
    if isinstance(exc, MultiPartParserError):
        return f"a malformed multipart body ({_escaped(first_line(exc), _PATH_LIMIT)})"
    return None


class RefusedBody(logging.Filter):
    """A body Django refused as it read it (``django.security.RequestDataTooBig``,
    ``TooManyFieldsSent``, ``TooManyFilesSent``; ``django.request``'s malformed multipart body):
    one warning naming the client, the request and what was wrong, without the traceback. Any
    other record passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        why = _refused_body(record.exc_info[1]) if record.exc_info and record.exc_info[1] else None
        if request is None or why is None:
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.WARNING):
            return False
        record.client = client_address(request)
        reword(
            record,
            logging.WARNING,
            "refused a request from %s: %s: %s",
            _escaped(record.client, 64) or "an unknown address",
            _requested(request),
            why,
        )
        return True


class UnknownHost(logging.Filter):
    """``django.security.DisallowedHost``: one warning naming the host asked for and the client,
    without the traceback (a client's mistake or a scanner's probe, not the application's error).
    Left out where the logger does not log warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not logging.getLogger(record.name).isEnabledFor(logging.WARNING):
            return False
        request = getattr(record, "request", None)
        if request is None:
            return True
        try:
            host = request._get_raw_host()
        except Exception:  # a malformed X-Forwarded-Host or port: what the header said, as Django's message does
            host = request.META.get("HTTP_HOST", "")
        client = client_address(request)
        record.host = _cut(host, _HOST_LIMIT)
        record.client = client
        reword(
            record,
            logging.WARNING,
            "refused a request for the host %s (not in ALLOWED_HOSTS) from %s: %s",
            repr(record.host),
            _escaped(client, 64) or "an unknown address",
            _requested(request),
        )
        return True
