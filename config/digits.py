"""Numbers, ids and times read from a client's text are written with ASCII digits, and only those.

Python's ``int()``, ``float()`` and ``Decimal()`` read the decimal digits of every script ("٣" is
3, "１９７０" is 1970), and Django's ISO 8601 readers (``parse_datetime``, ``parse_date``) match
them with ``\\d``, as does ``strptime``: a time, an id or an amount typed in other digits was read
as a number, an id in another form named the same row. Each reader of such text (the API's fields,
the admin's forms, ids in URLs and list filters) asks ``digits_plain`` first and refuses the rest
as it refuses any text that is not a number. Text of ASCII characters only has ASCII digits only.
"""


def digits_plain(value) -> bool:
    """Whether ``value`` may be read as a number, an id or a time: anything but text, or text of
    ASCII characters only."""
    return not isinstance(value, str) or value.isascii()
