"""The one check of every JSON value Pushdesk stores (attributes, properties, trigger contexts, rules, graphs...).

PostgreSQL's ``jsonb`` cannot hold a NUL character or a lone UTF-16 surrogate, JSON has no
infinity, a whole number beyond a 64-bit float's range fails every reader that takes numbers as
floats (Python's ``float()``, PostgreSQL's ``float8``), and a value nested thousands deep
overflows Python's recursion in every function that walks it. Each API serializer and admin form
that accepts a JSON value checks it here first, so bad input answers a 4xx naming the field
instead of failing when it is written or read.
"""

from __future__ import annotations

import json
import math
import re

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

MAX_DEPTH = 32
MAX_BYTES = 64 * 1024
# Strings DRF's text fields refuse, and PostgreSQL cannot store: a NUL or a lone surrogate (the
# API's shortcuts for usual bodies send any string with one to the serializer, which words the
# error; ``storable_text`` replaces them in text recorded from outside).
TEXT_REFUSED = re.compile("[\x00\ud800-\udfff]")
# The smallest whole number a 64-bit float cannot hold: ``float()`` (and PostgreSQL's ``float8``,
# both rounding to nearest) round anything below it to at most 1.7976931348623157e308.
FLOAT_LIMIT = 2**1024 - 2**970
# A request body wraps the stored values in a few levels of its own (``{"profiles": [{"attributes": …}]}``).
BODY_MAX_DEPTH = MAX_DEPTH + 8


def storable_text(text: str) -> str:
    """``text`` with each NUL or lone surrogate replaced by U+FFFD: what PostgreSQL can store.

    For text from outside that is recorded, not judged: a provider's answer (``Outcome``) must not
    fail the write-back of a whole batch (its rows would end ``unknown`` though the provider
    accepted them). Cheap for the usual ASCII text."""
    if "\x00" in text or (not text.isascii() and TEXT_REFUSED.search(text)):
        return TEXT_REFUSED.sub("\ufffd", text)
    return text


# Compact ASCII JSON (the size the checks limit, and what the bulk writes send to PostgreSQL as one
# parameter): one encoder built once, where json.dumps with options builds a new one on each call.
json_compact = json.JSONEncoder(separators=(",", ":"), default=str).encode
# The same in UTF-8 text (letters beyond ASCII as themselves, not \uXXXX): a push's wire body, an
# import's JSON cells. No ``default``: a value that is not JSON is refused, not turned into text.
json_compact_utf8 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


_SURROGATE = re.compile("[\ud800-\udfff]")


def _string_problem(text: str, *, nul_ok: bool = False) -> str | None:
    found = (_SURROGATE if nul_ok else TEXT_REFUSED).search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "The NUL character (\\u0000) is not allowed."
    return "A lone UTF-16 surrogate is not allowed: send valid Unicode."


def number_problem(number: int | float) -> str | None:
    """Why ``number`` (a JSON number, not a boolean) cannot be stored, or None when it can: it must
    be finite, and a whole number must be one a 64-bit float holds (at most about 1.8e308 in
    magnitude).

    The bound is a float's range, not 2**53: segments compare numbers exactly (``numeric``) and
    equal ones through ``jsonb`` containment, so a 64-bit id sent as a number matches as it did;
    a reader that takes numbers as floats (a browser's JavaScript) rounds it."""
    if isinstance(number, float):
        return None if math.isfinite(number) else "Numbers must be finite (this one overflows a 64-bit float)."
    if -FLOAT_LIMIT < number < FLOAT_LIMIT:
        return None
    return "Numbers must fit a 64-bit float (at most about 1.8e308 in magnitude): this whole number is too large."


def _join(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def json_value_problem(
    value, *, max_depth: int = MAX_DEPTH, max_bytes: int | None = MAX_BYTES, nul_ok: bool = False
) -> tuple[str, str] | None:
    """Return ``(path, message)`` for the first reason ``value`` cannot be stored, or None when it can.

    The path is relative to the value (``""`` for the value itself, ``"a.b[2]"`` inside it).
    Refused: a string or key with a NUL or a lone surrogate, a key that is not a string, a
    number that is not finite or a whole number beyond a 64-bit float (``number_problem``), a
    type JSON does not have, containers nested deeper than ``max_depth``, and more than
    ``max_bytes`` once encoded as compact JSON. Walks without recursion, so any depth is safe to
    check. ``nul_ok`` lets NUL pass (for a whole request body, whose fields report it themselves).
    """
    if not _looks_storable(value, max_depth=max_depth, nul_ok=nul_ok):
        found = _first_problem(value, max_depth=max_depth, nul_ok=nul_ok)
        if found is not None:
            return found
    if max_bytes is not None:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
        if size > max_bytes:
            return "", f"At most {max_bytes} bytes as JSON, got {size}."
    return None


def _looks_storable(value, *, max_depth: int, nul_ok: bool) -> bool:
    """True when ``value`` certainly passes the checks of ``_first_problem``.

    The same walk without building a path for every node (the costly part on large bodies):
    anything unusual, a subclass included, answers False and gets the full walk.
    """
    forbidden = _SURROGATE if nul_ok else TEXT_REFUSED
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            if forbidden.search(item):
                return False
        elif kind is dict:
            if depth >= max_depth:
                return False
            for key, child in item.items():
                if type(key) is not str or forbidden.search(key):
                    return False
                stack.append((child, depth + 1))
        elif kind is list:
            if depth >= max_depth:
                return False
            stack.extend((child, depth + 1) for child in item)
        elif kind is int:
            if not -FLOAT_LIMIT < item < FLOAT_LIMIT:
                return False
        elif kind is bool or item is None:
            continue
        elif kind is float:
            if not math.isfinite(item):
                return False
        else:
            return False
    return True


def _first_problem(value, *, max_depth: int, nul_ok: bool) -> tuple[str, str] | None:
    stack: list[tuple[str, object, int]] = [("", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if isinstance(item, str):
            problem = _string_problem(item, nul_ok=nul_ok)
            if problem:
                return path, problem
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int | float):
            problem = number_problem(item)
            if problem:
                return path, problem
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return path, f"Nested deeper than {max_depth} levels."
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str):
                        return path, "Object keys must be strings."
                    problem = _string_problem(key, nul_ok=nul_ok)
                    if problem:
                        return _join(path, key.encode("unicode_escape").decode()), f"Key: {problem}"
                    stack.append((_join(path, key), child, depth + 1))
            else:
                for index, child in enumerate(item):
                    stack.append((_join(path, index), child, depth + 1))
        else:
            return path, f"Not a JSON value ({type(item).__name__})."
    return None


def _where(field: str, path: str) -> str:
    if not field:
        return path or NON_FIELD_ERRORS  # the value as a whole (an API body: no field)
    if not path:
        return field
    return f"{field}{path}" if path.startswith("[") else f"{field}.{path}"


def json_value_check(value, *, field: str, max_depth: int = MAX_DEPTH, max_bytes: int | None = MAX_BYTES) -> None:
    """Raise ValidationError ``{"<field>.<path>": message}`` when ``value`` cannot be stored (``json_value_problem``)."""
    found = json_value_problem(value, max_depth=max_depth, max_bytes=max_bytes)
    if found is not None:
        path, message = found
        raise ValidationError({_where(field, path): message})


def json_text_problem(text: str) -> str | None:
    """A NUL or lone surrogate in a plain text value (a path segment, a query parameter): its message, or None."""
    return _string_problem(text)


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\],:]')


def _deep_path(text: str, limit: int) -> str:
    """The path of the first container nested deeper than ``limit`` in JSON text (which may not even parse)."""
    frames: list[list] = []  # [kind, key or index, last string seen]
    for match in _TOKEN.finditer(text):
        lexeme = match.group()
        if lexeme in "{[":
            if len(frames) >= limit:
                break
            frames.append(["{" if lexeme == "{" else "[", 0 if lexeme == "[" else None, None])
        elif lexeme in "}]":
            if frames:
                frames.pop()
        elif not frames:
            continue
        elif lexeme == ",":
            if frames[-1][0] == "[":
                frames[-1][1] += 1
        elif lexeme == ":":
            frames[-1][1] = frames[-1][2]
        else:
            try:
                frames[-1][2] = json.loads(lexeme)
            except ValueError:
                frames[-1][2] = "?"
    path = ""
    for kind, key, _ in frames[:-1] if frames else []:
        path = _join(path, key if kind == "[" else str(key).encode("unicode_escape").decode())
    if len(path) > 200:
        path = path[:200] + "…"
    return path


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# A surrogate reaches a parsed string only as itself in the text or as a \u escape.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _plain_within(value, max_depth: int) -> bool:
    """True when no container in ``value`` (parsed JSON) is nested ``max_depth`` deep or more and
    no whole number in it is beyond a 64-bit float.

    A walk over the containers' children alone: on parsed JSON whose text holds no surrogate and
    whose floats are finite, the only checks of ``_looks_storable`` left to make.
    """
    if type(value) is int:
        return -FLOAT_LIMIT < value < FLOAT_LIMIT
    stack: list[tuple[object, int]] = [(value, 0)] if type(value) is dict or type(value) is list else []
    while stack:
        item, depth = stack.pop()
        if depth >= max_depth:
            return False
        for child in item.values() if type(item) is dict else item:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
            elif kind is int and not -FLOAT_LIMIT < child < FLOAT_LIMIT:
                return False
    return True


class _RepeatedKeys(dict):
    """An object of the parsed text that gives ``repeated`` more than once (``json_parse``)."""

    repeated: str = ""


def _repeated_key_path(value) -> str:
    """The path of the first key given twice in ``value`` (parsed with ``unique_keys``), as
    ``json_value_problem`` names paths."""
    stack: list[tuple[str, object]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _RepeatedKeys):
            return _join(path, item.repeated.encode("unicode_escape").decode())
        if isinstance(item, dict):
            stack.extend((_join(path, key), child) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((_join(path, index), child) for index, child in reversed(list(enumerate(item))))
    return ""


def _int_read(number: str) -> int:
    """A whole number as ``json_parse`` reads it when some has more digits than ``int()`` reads
    (``sys.get_int_max_str_digits()``): one of more digits than ``FLOAT_LIMIT`` is beyond any
    float, and read as ``FLOAT_LIMIT`` with its sign, which the check refuses at its path."""
    if len(number.lstrip("-")) > len(str(FLOAT_LIMIT)):
        return -FLOAT_LIMIT if number.startswith("-") else FLOAT_LIMIT
    return int(number)


def json_parse(text: str, *, field: str = "", max_depth: int = BODY_MAX_DEPTH, unique_keys: bool = False):
    """Parse JSON text and refuse what no field may hold; return the value.

    Raises ValidationError naming the path (under ``field``) of a container nested deeper than
    ``max_depth`` (without ever hitting Python's recursion limit), a number that overflows to
    infinity (``1e400``) or a whole number a 64-bit float cannot hold (``1`` and 400 zeros), a lone
    surrogate, and with ``unique_keys`` a key an object gives twice (JSON leaves what it means to
    each reader: Python's keeps the last, others the first); ValueError when the text is not JSON
    (``NaN`` and ``Infinity`` are not). NUL characters pass: the field that holds one reports it.
    """
    overflowed = repeated = False

    def parse_float(number: str) -> float:
        nonlocal overflowed
        value = float(number)
        if math.isinf(value):
            overflowed = True
        return value

    def unique(pairs: list[tuple[str, object]], dict=dict, len=len) -> dict:
        nonlocal repeated
        value = dict(pairs)
        if len(value) == len(pairs):
            return value
        repeated = True
        value = _RepeatedKeys(value)
        seen: set[str] = set()
        value.repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        return value

    hooks = {"parse_constant": _refuse_constant, "parse_float": parse_float}
    try:
        try:
            value = json.loads(text, object_pairs_hook=unique if unique_keys else None, **hooks)
        except json.JSONDecodeError:
            raise
        except ValueError:  # a whole number of more digits than int() reads: read again, to name it
            value = json.loads(text, object_pairs_hook=unique if unique_keys else None, parse_int=_int_read, **hooks)
            overflowed = True
    except RecursionError:
        value = None
        found = (_deep_path(text, max_depth), f"Nested deeper than {max_depth} levels.")
    else:
        # The whole walk (which words the problem and its path) only when something may be wrong:
        # for a large body it costs several times the parse.
        found = None
        may_hold_surrogate = not text.isascii() and _SURROGATE.search(text) or _SURROGATE_ESCAPE.search(text)
        if overflowed or may_hold_surrogate or not _plain_within(value, max_depth):
            found = json_value_problem(value, max_depth=max_depth, max_bytes=None, nul_ok=True)
        if found is None and repeated:
            found = (_repeated_key_path(value), "This key is given more than once in its object.")
    if found is not None:
        path, message = found
        raise ValidationError({_where(field, path): message})
    return value


class JsonValueFormField(forms.JSONField):
    """The admin's JSON form field: parsed by ``json_parse`` (no RecursionError, no infinity) and
    refused unless ``json_value_problem`` finds nothing; the error names the path inside the value."""

    def __init__(self, *args, max_bytes: int | None = MAX_BYTES, **kwargs):
        self.max_bytes = max_bytes
        super().__init__(*args, **kwargs)

    def _parse(self, text: str):
        try:
            return json_parse(text, max_depth=MAX_DEPTH, unique_keys=True)
        except ValidationError as exc:
            path, messages = next(iter(exc.message_dict.items()))
            where = "" if path == NON_FIELD_ERRORS else f"{path}: "
            raise ValidationError(f"{where}{messages[0]}", code="invalid") from exc
        except ValueError as exc:
            raise ValidationError(self.error_messages["invalid"], code="invalid", params={"value": text}) from exc

    def to_python(self, value):
        if self.disabled:
            return value
        if value in self.empty_values:
            return None
        if isinstance(value, list | dict | int | float | forms.fields.JSONString):
            return value
        parsed = self._parse(value)
        return forms.fields.JSONString(parsed) if isinstance(parsed, str) else parsed

    def bound_data(self, data, initial):
        if self.disabled:
            return initial
        if data is None:
            return None
        try:
            return self._parse(data)
        except ValidationError:
            return forms.fields.InvalidJSONInput(data)

    def validate(self, value):
        super().validate(value)
        found = json_value_problem(value, max_bytes=self.max_bytes)
        if found is not None:
            path, message = found
            raise ValidationError(f"{path}: {message}" if path else message, code="invalid")
