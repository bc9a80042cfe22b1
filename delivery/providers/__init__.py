"""The push providers (APNs, FCM): what a send comes back as.

Both clients take a batch of messages and return one ``Outcome`` per message, in order. The
send pipeline acts on ``Outcome.kind`` alone:

=================  ====================================================================
accepted           the provider took it; ``provider_id`` is the apns-id / FCM message name
dead_token         the device token is gone: deactivate the device, never target it again
permanent_failure  this message will never be accepted as it is: do not retry it
retry_later        transient: retry after ``retry_after`` seconds (the provider's
                   Retry-After when it sent one, else its documented first backoff; the
                   pipeline grows it exponentially with jitter on later attempts)
credentials        the app's configuration is wrong (key, team, topic, project, CA):
                   stop sending for the app and tell an Administrator; tokens are fine
=================  ====================================================================
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from accounts.json_values import storable_text


class OutcomeKind(StrEnum):
    ACCEPTED = "accepted"
    DEAD_TOKEN = "dead_token"  # noqa: S105 (not a secret)
    PERMANENT_FAILURE = "permanent_failure"
    RETRY_LATER = "retry_later"
    CREDENTIALS = "credentials"


@dataclass(slots=True)
class Outcome:
    """What became of one message."""

    kind: OutcomeKind
    reason: str = ""  # the provider's reason ("BadDeviceToken", "UNREGISTERED") or "transport:<kind>"
    status: int = 0  # the HTTP status (0 for a transport error)
    provider_id: str = ""
    retry_after: float | None = None
    retry_after_from_provider: bool = False
    invalidated_at: datetime | None = None  # APNs 410: when the token stopped being valid
    detail: str = ""  # the provider's human message, when it sent one (never a secret)

    def __post_init__(self) -> None:
        # What a provider says is outside input, recorded as it is: a NUL or a lone surrogate in it
        # (JSON escapes PostgreSQL refuses in text) becomes U+FFFD here, where every one of its
        # words enters, so no write of it (a batch's write-back, a dead device, an audit) fails.
        self.reason = storable_text(self.reason)
        self.provider_id = storable_text(self.provider_id)
        self.detail = storable_text(self.detail)

    @property
    def accepted(self) -> bool:
        return self.kind is OutcomeKind.ACCEPTED


# The longest wait a Retry-After may ask for: a provider asking for more is taken at this word
# (a push is worth nothing a day late, and the pipeline's TTL check fails it before then).
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), at most a day; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # HTTP's digits: str.isdigit() takes "²" too, which float() refuses
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    seconds = when.timestamp() - (now if now is not None else time.time())
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


def transport_outcome(error_kind: str, error: str) -> Outcome:
    """The outcome of a request that got no HTTP answer."""
    if error_kind == "tls":
        # The provider's certificate does not chain to the configured CA: an operator problem.
        return Outcome(OutcomeKind.CREDENTIALS, reason="transport:tls", detail=error)
    return Outcome(
        OutcomeKind.RETRY_LATER, reason=f"transport:{error_kind or 'connection'}", retry_after=5.0, detail=error
    )
