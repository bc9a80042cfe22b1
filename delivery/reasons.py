"""What a delivery's reason means, in words: the one table of labels the admin shows beside a code.

A row's ``reason`` is a stable code (a skip rule's, the pipeline's, or the provider's own answer),
which the API and the CSV exports keep as it is. The admin shows ``reason_label`` beside it.
"""

from __future__ import annotations

from django.utils.html import format_html
from django.utils.safestring import SafeString

REASON_LABELS: dict[str, str] = {
    # Skipped before a send: the audience, the rules, the campaign.
    "no_device": "no phone registered for the app",
    "not_opted_in": "notifications are turned off on the phone",
    "frequency_cap": "the profile had its share of pushes (frequency cap)",
    "quiet_hours": "held back by the quiet hours",
    "missed_local_time": "its local time had passed too long ago",
    "holdout": "in the holdout, kept from the send to measure it",
    "stopped": "the send was stopped before it went",
    # Winner mode's rest: the phone moved from a profile of the sample to one of the rest after it.
    "sent_in_sample": "the phone had this campaign's push already, in its winner test's sample",
    # Skipped, never sent: a now-or-never push that quiet hours would hold, or one whose TTL ran out
    # before its turn (a slow send, a hold); rows of before 0033 said "expired (TTL over …)", failed.
    "expired": "its TTL ran out before it could be sent: never sent",
    # Skipped or failed at the send: the phone changed since the row was made.
    "device_inactive": "the phone logged out or its token died since",
    "device_moved": "the phone now belongs to another profile",
    "device_deleted": "the phone was deleted",
    "not_test_device": "the phone was taken off the test devices before its test went",
    # The pipeline's own.
    "lease_expired": "a worker was lost while sending: it may have been delivered",
    "voided": "voided when another instance claimed the database",
    "render_error": "the message could not be personalised",
    "payload_too_large": "the message is over the provider's size limit",
    "invalid_collapse_key": "the collapse key is not one APNs takes",
    "image_on_this_machine": "its image is over http on this machine, which only the push simulator's phones load",
    "credentials": "the app's credentials were refused or are missing",
    "not_configured": "the app's credentials for the platform are missing",
    "transport": "no answer in time: it may have been delivered",
    "oauth": "Google refused or could not give an access token",
    # The providers' answers.
    "Unregistered": "the app was uninstalled or the token is no longer valid (APNs)",
    "ExpiredToken": "the token expired (APNs)",
    "BadDeviceToken": "the token is not one of the app's environment (APNs)",
    "DeviceTokenNotForTopic": "the token belongs to another app (APNs)",
    "PayloadTooLarge": "the message is over the size limit (APNs)",
    "TooManyRequests": "too many pushes to this phone (APNs)",
    "UNREGISTERED": "the app was uninstalled or the token is no longer valid (FCM)",
    "SENDER_ID_MISMATCH": "the token belongs to another Firebase project (FCM)",
    "INVALID_ARGUMENT": "the message or the token was refused (FCM)",
    "QUOTA_EXCEEDED": "over the sending quota (FCM)",
    "THIRD_PARTY_AUTH_ERROR": "the APNs credentials in Firebase were refused (FCM)",
}


# Failures the pipeline decides before any request goes to APNs or FCM: such a row was never handed
# to a provider, so a report's "sent" leaves it out. (After a refusal of the app's credentials, the
# batch that met it was handed over; the rows still queued fail with its reason and ``NOT_SENT``.)
NOT_HANDED_OVER = frozenset(
    {"device_deleted", "render_error", "invalid_collapse_key", "image_on_this_machine", "payload_too_large"}
)
# Said after a reason a row failed with unsent, as one handed over failed with that reason.
NOT_SENT = " (not sent)"


def handed_over(code: str) -> bool:
    """Whether a failed row with this reason was handed to a provider (which then refused it or
    gave no answer): not for the pipeline's own failures before a request (``NOT_HANDED_OVER``, and
    an app without credentials for the platform, ``credentials: not_configured:…``, and a reason
    ending ``NOT_SENT``: a row still queued when the app's credentials were refused)."""
    if code.startswith("credentials: not_configured") or code.endswith(NOT_SENT):
        return False
    return _head(code) not in NOT_HANDED_OVER


def _head(code: str) -> str:
    """A code without its details: ``payload_too_large (4200 bytes)``, ``render_error: …`` → their first word."""
    return code.split(" (", 1)[0].split(":", 1)[0].strip()


def reason_label(code: str) -> str:
    """The label of a reason code, or of its head when the code carries details
    (``payload_too_large (4200 bytes)``, ``credentials: …``, ``transport:timeout``); "" when none."""
    if not code:
        return ""
    label = REASON_LABELS.get(code)
    if label is None:
        label = REASON_LABELS.get(_head(code), "")
    return label


def reason_html(code: str) -> SafeString:
    """A reason as the admin shows it: its label, then its code (the code alone when it has none)."""
    if not code:
        return format_html("{}", "—")
    label = reason_label(code)
    if not label:
        return format_html("<code>{}</code>", code)
    return format_html("{} <code>{}</code>", label, code)
