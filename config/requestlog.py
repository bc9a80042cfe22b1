"""What the web logs of a request the client got wrong, and from where it came.

Django logs a request for a host outside ``ALLOWED_HOSTS`` as an error with its whole traceback
(``django.security.DisallowedHost``): every probe of a scanner, which sends made-up ``Host``
headers or the server's IP address, wrote some twenty lines, and a log pipeline alerting on
errors alerted on each. Nothing in the application failed; the line an operator needs is which host
was asked for, from which address.
"""

import logging

from django.conf import settings

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
        record.msg = "refused a request for the host %s (not in ALLOWED_HOSTS) from %s: %s"
        record.args = (repr(record.host), _escaped(client, 64) or "an unknown address", _requested(request))
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.exc_info, record.exc_text = None, None
        return True
