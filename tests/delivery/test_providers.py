"""What a provider's answer comes back as, whichever provider sent it."""

import pytest

from delivery.providers import MAX_RETRY_AFTER_SECONDS, Outcome, OutcomeKind, parse_retry_after


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # a date in the past: now
        ("", None),
        ("soon", None),
        ("-5", None),
        ("\u00b2", None),  # a digit to str.isdigit(), which float() cannot read
        ("1\u0663", None),  # digits of another script: not HTTP's
    ],
)
def test_retry_after_is_read_as_delta_seconds_or_an_http_date(header, seconds):
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now=now) == seconds


@pytest.mark.parametrize("header", ["9" * 400, "99999999999999", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_huge_retry_after_is_capped_at_a_day(header):
    assert parse_retry_after(header) == MAX_RETRY_AFTER_SECONDS


def test_a_providers_words_are_storable_text_whatever_it_sent():
    """An outcome is where a provider's words enter: a NUL or a lone surrogate becomes U+FFFD there,
    the rest of the text as sent."""
    outcome = Outcome(OutcomeKind.PERMANENT_FAILURE, reason="Bad\x00Topic", provider_id="id-\ud800", detail="é 🎉")
    assert (outcome.reason, outcome.provider_id, outcome.detail) == ("Bad\ufffdTopic", "id-\ufffd", "é 🎉")
