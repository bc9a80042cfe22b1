"""Numbers, ids and times read from a client's text are written with ASCII digits, and only those.

Python's ``int()``, ``float()`` and ``Decimal()`` read the decimal digits of every script ("٣" is
3, "１９７０" is 1970), and Django's ISO 8601 readers (``parse_datetime``, ``parse_date``) match
them with ``\\d``, as does ``strptime``: a time, an id or an amount typed in other digits was read
as a number, an id in another form named the same row. The first three also read an underscore
between digits ("1_000" is 1000, "1_0.5" is 10.5, "0_3" the id 3), which PostgreSQL's ``numeric``,
JSON, a number rule and a CSV import's cells do not: the same text was a number to one reader and
text to another. Each reader of such text (the API's fields, the admin's forms, ids in URLs and
list filters) asks ``digits_plain`` first and refuses the rest as it refuses any text that is not
a number. Text of ASCII characters only has ASCII digits only; no number, id or time holds an
underscore.
"""

import argparse
from collections.abc import Callable

from django import forms
from django.core.exceptions import ValidationError


def digits_plain(value) -> bool:
    """Whether ``value`` may be read as a number, an id or a time: anything but text, or text of
    ASCII characters only, without an underscore."""
    return not isinstance(value, str) or (value.isascii() and "_" not in value)


def ascii_int(text: str) -> int:
    """``int(text)`` for text whose digits are ASCII, with no underscore between them; ValueError
    otherwise, as ``int()`` raises for text that is no number."""
    if not digits_plain(text):
        raise ValueError(f"Not a number of ASCII digits: {text[:20]!r}")
    return int(text)


def command_number(noun: str, *, give: str, most: int | None = None) -> Callable[[str], int]:
    """A command-line option's ``type``: a whole number of ASCII digits, up to ``most``. ``int()``
    read '٣' and '３' as 3 and '1_0' as 10, so a typo in a unit named another slot or port than the
    one it showed; anything else (a sign, a space, another script's digit) is refused in one line:
    "'x' is not a <noun>: give its number in ASCII digits, <give>"."""

    def read(value: str) -> int:
        if value.isascii() and value.isdigit() and (most is None or int(value) <= most):
            return int(value)
        raise argparse.ArgumentTypeError(f"{value!r} is not a {noun}: give its number in ASCII digits, {give}")

    return read


# --- form fields ----------------------------------------------------------------------------------


class _PlainDigits:
    """A form field that refuses text with other digits, or an underscore, as it refuses any text
    it cannot read: its own message for an invalid value (``invalid_code``)."""

    invalid_code = "invalid"

    def to_python(self, value):
        if not digits_plain(value):
            raise ValidationError(
                self.error_messages[self.invalid_code], code=self.invalid_code, params={"value": value}
            )
        return super().to_python(value)


class IntegerField(_PlainDigits, forms.IntegerField):
    pass


class DecimalField(_PlainDigits, forms.DecimalField):
    pass


class FloatField(_PlainDigits, forms.FloatField):
    pass


class DateField(_PlainDigits, forms.DateField):
    pass


class TimeField(_PlainDigits, forms.TimeField):
    pass


class DateTimeField(_PlainDigits, forms.DateTimeField):
    pass


class DurationField(_PlainDigits, forms.DurationField):
    pass


class ModelChoiceField(_PlainDigits, forms.ModelChoiceField):
    invalid_code = "invalid_choice"


class SplitDateTimeField(forms.SplitDateTimeField):
    """The admin's date and time boxes: a date or a time with other digits is refused as one that
    is no date or time (each box's own message)."""

    def clean(self, value):
        if isinstance(value, list | tuple):
            for text, code in zip(value, ("invalid_date", "invalid_time"), strict=False):
                if not digits_plain(text):
                    raise ValidationError(self.error_messages[code], code=code)
        return super().clean(value)
