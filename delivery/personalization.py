"""Liquid personalization of push content: a sandboxed environment, checks at save time, rendering.

Templates see three names: ``profile`` (``external_id``, ``locale``, ``timezone``,
``attributes.*``), ``context`` (the trigger's payload) and nothing else. A missing attribute
renders as an empty string, so ``{{ profile.attributes.first_name | default: "there" }}`` is
how a default is written. Everything that is wrong with a template whatever the profile is
caught when the content is saved (``template_check``), not when it is sent; what fails only for
some values (a filter on an odd attribute) fails that recipient's message alone.

The sandbox: no ``include``/``render`` (no file or template access), loops capped at
``LOOP_LIMIT`` iterations, output capped, every filter's text and lists capped (a filter's
result never reaches the output when a later filter shrinks it: ``replace: "", …`` then
``size``), and values are plain dicts and strings, so a template cannot reach any Python
attribute.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache

from django.core.exceptions import ValidationError
from liquid import BoundTemplate, Environment, RenderContext
from liquid.builtin.expressions import Filter, KeywordArgument
from liquid.exceptions import (
    FilterArgumentError,
    LiquidError,
    LoopIterationLimitError,
    OutputStreamLimitError,
    ResourceLimitError,
)
from liquid.filter import num_arg
from liquid.token import TOKEN_CONTENT, TOKEN_EXPRESSION, TOKEN_OUTPUT, TOKEN_TAG

# The fields of ``profile`` a template may use; anything else must go through ``profile.attributes``.
PROFILE_FIELDS = ("external_id", "locale", "timezone", "attributes")
TOP_LEVEL_NAMES = ("profile", "context")
# The most times a loop body may render; also what the worst-case size estimate assumes.
LOOP_LIMIT = 20
# What one ``{{ variable }}`` is assumed to produce at most, in bytes of JSON, when the
# worst-case payload size is estimated (the rendered size is checked again at send time).
VALUE_BYTES = 100
MAX_OUTPUT_CHARS = 8192
# The most text a filter may take in one value or make, and the most items of a list it may take or
# make: as much as the largest value a profile or a call holds (64 KB of JSON), so any such value
# passes through the filters, and no chain of them grows past it (the output limit sees only what
# is written: "replace" by "" inserts its text between every character, and a "size" after it
# writes a few digits).
MAX_FILTER_CHARS = 65_536
MAX_FILTER_ITEMS = 65_536

_STRING_LITERAL = re.compile(r'"([^"]*)"|\'([^\']*)\'')


class FilterLimitError(ResourceLimitError):
    """A filter would take or make more text or items than the sandbox allows (``MAX_FILTER_CHARS``,
    ``MAX_FILTER_ITEMS``)."""


def _text_size(value, limit: int) -> int:
    """At least as many characters as ``str(value)`` has, counted no further than just past ``limit``
    (a list's text is not made to be measured). A string inside a list counts four times over, what
    its ``repr`` may take."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, range):
        return 2 + len(value) * (len(str(value[-1])) + 2) if value else 2
    if not isinstance(value, list | tuple | dict):
        return len(str(value))
    total, stack = 2, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | range):
            stack.extend(item[: limit + 1])
        else:
            total += 4 * len(item) + 4 if isinstance(item, str) else len(str(item)) + 2
    return total


def _replace_size(val, seq="", sub="", *_args, **_kwargs) -> int:
    """The length of ``replace``'s text, counted without making it."""
    text, seq, sub = ("" if val is None else str(val)), str(seq), str(sub)
    count = len(text) + 1 if not seq else text.count(seq)
    return len(text) + count * (len(sub) - len(seq))


def _join_size(left, separator=" ", *_args, **_kwargs) -> int:
    """At least the length of ``join``'s text (its items flattened, as it flattens them), counted
    no further than just past ``MAX_FILTER_CHARS``."""
    step = _text_size(separator, MAX_FILTER_CHARS)
    total, stack = -step, [left] if not isinstance(left, list | tuple | range) else [iter(left)]
    while stack and total <= MAX_FILTER_CHARS:
        top = stack[-1]
        if not hasattr(top, "__next__"):
            stack.pop()
            total += step + _text_size(top, MAX_FILTER_CHARS)
            continue
        item = next(top, _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list | tuple):
            stack.append(iter(item))
        else:
            total += step + _text_size(item, MAX_FILTER_CHARS)
    return total


_END = object()
# The filters whose text would grow past what they take by more than a few times: measured first.
_SIZE_FIRST: dict[str, Callable[..., int]] = {"replace": _replace_size, "join": _join_size}
# The filters that read their values as text (``str()`` of a list included): Liquid's string
# filters (but ``slice``, which slices a list as a list) and these; ``join`` measures its own.
_TEXT_FILTERS = ("date", "escapejs", "safe")
_STRING_FILTERS = "liquid.builtin.filters.string"


def _too_much(name: str, value, reads_text: bool) -> FilterLimitError | None:
    """The error for a value a filter may not take (a list too long, text too long for a filter
    that reads it as text), or None."""
    if isinstance(value, list | tuple | range) and len(value) > MAX_FILTER_ITEMS:
        return FilterLimitError(f"{name} takes lists of at most {MAX_FILTER_ITEMS} items", token=None)
    if reads_text and _text_size(value, MAX_FILTER_CHARS) > MAX_FILTER_CHARS:
        return FilterLimitError(f"{name} takes texts of at most {MAX_FILTER_CHARS} characters", token=None)
    return None


def _made_too_long(name: str) -> FilterLimitError:
    return FilterLimitError(f"{name} would make a text longer than {MAX_FILTER_CHARS} characters", token=None)


_PLAIN = (int, float, bool, type(None))
_INJECTED = ("context", "environment")  # what Liquid passes a filter that asks for it


def _bounded(name: str, func: Callable) -> Callable:
    """``func``, the filter ``name``, refusing (``FilterLimitError``) a list of more than
    ``MAX_FILTER_ITEMS`` items taken or made, text of more than ``MAX_FILTER_CHARS`` characters
    taken (by a filter that reads its values as text) or made, the latter measured before it is
    made where it could grow by more than a few times. Cheap for the usual short strings and numbers."""
    reads_text = name in _TEXT_FILTERS or (getattr(func, "__module__", "") == _STRING_FILTERS and name != "slice")
    size_first = _SIZE_FIRST.get(name)
    injected = sum(1 for flag in ("with_context", "with_environment") if getattr(func, flag, False))

    def refuse_taken(value) -> None:
        kind = type(value)
        if kind is str:
            if reads_text and len(value) > MAX_FILTER_CHARS:
                raise FilterLimitError(f"{name} takes texts of at most {MAX_FILTER_CHARS} characters", token=None)
        elif kind not in _PLAIN and (error := _too_much(name, value, reads_text)) is not None:
            raise error

    @functools.wraps(func)
    def bounded(left, *args, **kwargs):
        if type(left) is not str or len(left) > MAX_FILTER_CHARS:
            refuse_taken(left)
        for value in args:
            if type(value) is not str or len(value) > MAX_FILTER_CHARS:
                refuse_taken(value)
        if len(kwargs) > injected:
            for key, value in kwargs.items():
                if key not in _INJECTED:
                    refuse_taken(value)
        if size_first is not None:
            try:
                size = size_first(left, *args, **kwargs)
            except TypeError:
                size = 0  # arguments the filter itself refuses: it says so
            if size > MAX_FILTER_CHARS:
                raise _made_too_long(name)
        result = func(left, *args, **kwargs)
        if type(result) in _PLAIN:
            return result
        if isinstance(result, str) and len(result) > MAX_FILTER_CHARS:
            raise _made_too_long(name)
        if isinstance(result, list | tuple) and len(result) > MAX_FILTER_ITEMS:
            raise FilterLimitError(f"{name} would make a list of more than {MAX_FILTER_ITEMS} items", token=None)
        return result

    for flag in ("with_context", "with_environment"):  # how Liquid calls it
        if getattr(func, flag, False):
            setattr(bounded, flag, True)
    return bounded


# The moment a preview renders ``now`` and ``today`` as of (``rendered_as_of``); None, as at every
# send: the real now. And the zone they render in (``rendered_in``): a send's; None: UTC.
_RENDERED_AS_OF: ContextVar[dt.datetime | None] = ContextVar("rendered_as_of", default=None)
_RENDERED_IN: ContextVar[dt.tzinfo | None] = ContextVar("rendered_in", default=None)
_NOW_WORDS = ("now", "today")  # what Liquid's ``date`` filter reads as the moment it runs


@contextmanager
def rendered_as_of(moment: dt.datetime | None) -> Iterator[None]:
    """Inside the block, templates render ``now`` and ``today`` (``'now' | date: …``) as of
    ``moment`` (aware): a preview of a send to come shows the text its phones will get. None: the
    real now, as a send renders it."""
    token = _RENDERED_AS_OF.set(moment)
    try:
        yield
    finally:
        _RENDERED_AS_OF.reset(token)


@contextmanager
def rendered_in(zone: dt.tzinfo | None) -> Iterator[None]:
    """Inside the block, templates render ``now`` and ``today`` as the wall-clock time of ``zone``
    (the zone a send is scheduled in, a profile's at its local time): "Monday" at 00:30 in Paris,
    not UTC's "Sunday", its offset +0100. None: the server's clock, UTC (a journey's send, or one
    made before sends had a zone)."""
    token = _RENDERED_IN.set(zone)
    try:
        yield
    finally:
        _RENDERED_IN.reset(token)


def _date_as_of(date: Callable) -> Callable:
    """Liquid's ``date`` filter, reading "now" and "today" as the moment a preview renders as of
    (``rendered_as_of``; else the real now) in the zone rendered in (``rendered_in``; else UTC, the
    server's clock), an aware time: a send shows its zone's day and hour and its offset (``%z``,
    ``%Z``), a preview the ones the send will. Liquid's own now is naive, and ``%z`` wrote nothing."""

    @functools.wraps(date)
    def dated(dat, *args, **kwargs):
        fmt = args[0] if args else kwargs.get("fmt")
        if isinstance(dat, str) and dat in _NOW_WORDS and isinstance(fmt, str):
            moment, zone = _RENDERED_AS_OF.get(), _RENDERED_IN.get()
            moment = (moment or dt.datetime.now(dt.UTC)).astimezone(zone or dt.UTC)
            # Formatted here: Liquid keeps the times it is given in a cache keyed by equality, where
            # one instant in two zones is one key, and would print the first zone it saw.
            try:
                return moment.strftime(fmt)
            except ValueError as exc:
                raise FilterArgumentError(str(exc), token=None) from exc
        return date(dat, *args, **kwargs)

    return dated


class _SandboxEnvironment(Environment):
    loop_iteration_limit = LOOP_LIMIT
    local_namespace_limit = 4096
    output_stream_limit = MAX_OUTPUT_CHARS
    context_depth_limit = 10

    def setup_tags_and_filters(self, extra: bool = False) -> None:
        super().setup_tags_and_filters(extra=extra)
        for tag in ("include", "render"):
            self.tags.pop(tag, None)
        self.filters["date"] = _date_as_of(self.filters["date"])
        self.filters = {name: _bounded(name, func) for name, func in self.filters.items()}


ENVIRONMENT = _SandboxEnvironment()
_TOKENIZER = ENVIRONMENT.tokenizer()


def is_templated(source: str) -> bool:
    """True when ``source`` holds Liquid markup (and so must be rendered per profile)."""
    return "{{" in source or "{%" in source


@lru_cache(maxsize=512)
def _parse(source: str) -> BoundTemplate:
    return ENVIRONMENT.from_string(source)


def template_check(source: str, *, field: str) -> BoundTemplate:
    """Parse ``source`` and check every name it uses; return the compiled template.

    Raises ValidationError({field: message}) on a syntax error, an unknown filter, a filter
    given arguments it does not take, an unknown top-level variable, an unknown ``profile``
    field, a division by a literal 0, a
    failure to render a template that reads neither the profile nor the context (it would fail
    for everyone), or a sandbox limit (loop, output) that a template reading them reaches even
    for empty values.
    """
    try:
        template = _parse(source)
        analysis = template.analyze(include_partials=False)
    except LiquidError as exc:
        raise ValidationError({field: f"Template error: {liquid_message(exc)}."}) from exc
    unknown_filters = sorted(name for name in analysis.filters if name not in ENVIRONMENT.filters)
    if unknown_filters:
        name = unknown_filters[0]
        raise ValidationError({field: f"Unknown filter '{name}'{_line_said(source, analysis.filters[name])}."})
    _filter_arguments_check(template, field=field)
    for name, uses in analysis.globals.items():
        if name not in TOP_LEVEL_NAMES:
            raise ValidationError(
                {
                    field: f"Unknown variable '{name}'{_line_said(source, uses)}: "
                    "use profile.*, profile.attributes.* or context.*."
                }
            )
        if name == "profile":
            for use in uses:
                segments = [str(s) for s in use.segments]
                if len(segments) > 1 and segments[1] not in PROFILE_FIELDS:
                    raise ValidationError(
                        {
                            field: f"Unknown profile field '{segments[1]}'{_line_said(source, [use.span])}: "
                            f"profiles have {', '.join(PROFILE_FIELDS)}; "
                            f"write profile.attributes.{segments[1]} for a custom attribute."
                        }
                    )
    _zero_divisor_check(source, field=field)
    try:
        template_render(source, profile={}, context={})
    except LiquidError as exc:
        if not analysis.globals:
            # It reads neither the profile nor the context, so it renders the same for every
            # recipient: failing now, it would fail every message at send time.
            raise ValidationError({field: f"This text cannot be rendered for anyone: {exc.message}."}) from exc
        # It reads the profile or the context: rendered for a profile and a call that have nothing,
        # a missing value renders empty and a loop over it runs no time. A sandbox limit reached even
        # so (a loop over a fixed range longer than LOOP_LIMIT, an output too long) comes from the
        # text itself, and would be reached for (nearly) every recipient at send time; any other
        # failure is for empty values only (a recipient with values may render it).
        if isinstance(exc, ResourceLimitError):
            raise ValidationError({field: f"{liquid_message(exc, _limit_message(exc))}."}) from exc
    return template


def _filters_of(expression) -> list[Filter]:
    """The filters an expression applies, those of the expressions inside it included."""
    found = [*(getattr(expression, "filters", None) or ()), *(getattr(expression, "tail_filters", None) or ())]
    for child in expression.children():
        found += _filters_of(child)
    return found


# What Liquid passes a filter itself, by keyword, when its signature asks for it.
_PASSED_BY_LIQUID = ("environment", "context")


def _filter_arguments_check(template: BoundTemplate, *, field: str) -> None:
    """Refuse a filter given arguments it does not take (``upcase: 1``, ``append`` without its
    text, ``date`` without its format, a keyword it has not): it fails whatever it filters, so for
    every recipient who reaches it, in a branch or not."""
    static, nodes = RenderContext(template), list(template.nodes)
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children(static, include_partials=False))
        for expression in node.expressions():
            for used in _filters_of(expression):
                func = ENVIRONMENT.filters.get(used.name)
                try:
                    signature = inspect.signature(func)
                except (TypeError, ValueError):
                    continue  # not a function Python can describe: Liquid says what is wrong when it runs
                positional = [arg for arg in used.args if not isinstance(arg, KeywordArgument)]
                keywords = {arg.name for arg in used.args if isinstance(arg, KeywordArgument)}
                passed = {name for name in _PASSED_BY_LIQUID if name in signature.parameters} - keywords
                try:
                    signature.bind(None, *positional, **dict.fromkeys(keywords | passed))
                except TypeError:
                    line = used.token.source.count("\n", 0, used.token.start_index) + 1
                    raise ValidationError(
                        {field: f"{_arguments_said(used.name, signature, positional, keywords)} (line {line})."}
                    ) from None


def _arguments_said(name: str, signature: inspect.Signature, given: list, keywords: set[str]) -> str:
    """What a filter takes, against what it was given: "The filter 'append' takes 1 argument, not none"."""
    taken = list(signature.parameters.values())[1:]
    named = {p.name for p in taken if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown = sorted(keywords - named)
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in taken):
        return f"The filter '{name}' has no argument '{unknown[0]}'"
    positional = [p for p in taken if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    least = sum(1 for p in positional if p.default is p.empty)
    most = len(positional)
    takes = (
        "no argument"
        if most == 0
        else f"{least} argument{'s' if least != 1 else ''}"
        if least == most
        else f"{least} to {most} arguments"
    )
    return f"The filter '{name}' takes {takes}, not {len(given) or 'none'}"


def _limit_message(exc: ResourceLimitError) -> str:
    if isinstance(exc, LoopIterationLimitError):
        return f"A loop here runs more than {LOOP_LIMIT} times in all, whatever the profile"
    if isinstance(exc, OutputStreamLimitError):
        return f"This text is longer than {MAX_OUTPUT_CHARS} characters, whatever the profile"
    if isinstance(exc, FilterLimitError):
        return f"A filter here reaches a limit of the template sandbox, whatever the profile: {exc.message}"
    return f"This text reaches a limit of the template sandbox, whatever the profile: {exc.message}"


def _line_of(exc: LiquidError) -> int | None:
    """The line of the template the error points at; None when it points nowhere."""
    token = getattr(exc, "token", None)
    if token is None or not getattr(token, "source", None):
        return None
    return token.source.count("\n", 0, token.start_index) + 1


def _line_said(source: str, uses: list) -> str:
    """The line of ``source`` a name is first used on, said as in "Unknown filter 'x' (line 2)";
    ``uses`` are Liquid's spans, or the variables holding one. Empty when Liquid says nowhere."""
    spans = [getattr(use, "span", use) for use in uses]
    indexes = [span.index for span in spans if isinstance(getattr(span, "index", None), int)]
    if not indexes:
        return ""
    line = source.count("\n", 0, min(indexes)) + 1
    return f" (line {line})"


# ``| divided_by: 0`` or ``| modulo: 0`` (0.0, -0, '0', nil), once string literals are set aside.
_ZERO_DIVISOR = re.compile(r"\|\s*(divided_by|modulo)\s*:\s*(?:[-+]?0+(?:\.0*)?|nil)\s*(?=\||$)", re.M)
# A digit of Liquid's number literals: its lexer's \d, any script's ("٠" is 0, "١٠" 10).
_LIQUID_DIGIT = re.compile(r"\d")


def _liquid_reads_zero(text: str) -> bool:
    """Whether ``divided_by`` and ``modulo`` read the string ``text`` as 0: as Python's ``int()``
    and ``float()`` read it ("٠", " 0", "0e3"), and text that is no number ("", "none") as 0 too."""
    try:
        return num_arg(text, default=0) == 0
    except LiquidError:  # more digits than Liquid reads: no zero
        return False


def _zero_divisor_check(source: str, *, field: str) -> None:
    """Refuse a division by a literal zero: it fails whatever it divides, so for every recipient
    who reaches it (a branch taken only by some profiles included)."""
    if "divided_by" not in source and "modulo" not in source:
        return
    for token in _TOKENIZER(source):
        if token.kind not in (TOKEN_OUTPUT, TOKEN_EXPRESSION):
            continue
        # A string literal counts as 0 where Liquid reads it so, else as nothing; a number literal
        # of other digits as the ASCII one Liquid reads.
        expression = _STRING_LITERAL.sub(lambda m: "0" if _liquid_reads_zero(m.group(0)[1:-1]) else '""', token.value)
        if not expression.isascii():
            expression = _LIQUID_DIGIT.sub(lambda m: str(int(m.group(0))), expression)
        found = _ZERO_DIVISOR.search(expression)
        if found:
            line = source.count("\n", 0, max(token.start_index, 0)) + 1
            raise ValidationError(
                {field: f"'{found.group(1)}: 0' divides by 0, which fails for every value (line {line})."}
            )


def template_reads(source: str, name: str) -> bool:
    """True when ``source`` uses the variable ``name`` (``profile``, ``context``), or cannot be
    read: then assume it does. A dotted ``name`` (``context.campaign.name``) is a value under the
    variable: read by that path or further down it, through what holds it (``context.campaign``
    assigned, ``context`` looped over), or by a key computed when rendered, which may be it."""
    if not is_templated(source):
        return False
    variable, *path = name.split(".")
    try:
        uses = _parse(source).analyze(include_partials=False).globals
    except LiquidError:
        return True
    if not path:
        return variable in uses

    def may_be_it(segments: list) -> bool:
        """The path, further down it or short of it; a segment computed when rendered may be any key."""
        pairs = zip(segments[1:], path, strict=False)
        return all(not isinstance(segment, str) or segment == wanted for segment, wanted in pairs)

    return any(may_be_it(list(use.segments)) for use in uses.get(variable, []))


def template_reads_now(source: str) -> bool:
    """True when ``source`` renders the moment it is rendered at: Liquid's ``date`` filter and a
    "now" or "today" written in its markup (``{{ 'now' | date: '%A' }}``, or assigned first)."""
    if not is_templated(source) or not any(word in source for word in _NOW_WORDS):
        return False
    try:
        if "date" not in _parse(source).analyze(include_partials=False).filters:
            return False
        tokens = list(_TOKENIZER(source))
    except LiquidError:
        return False
    return any(
        (found.group(1) if found.group(1) is not None else found.group(2)) in _NOW_WORDS
        for token in tokens
        if token.kind in (TOKEN_OUTPUT, TOKEN_EXPRESSION)
        for found in _STRING_LITERAL.finditer(token.value)
    )


def template_reads_profile(source: str) -> bool:
    """True when ``source`` uses ``profile`` (or cannot be read: then assume it does)."""
    return template_reads(source, "profile")


_OPENS_GUARD = ("if", "unless", "case")
_ADDS_TO_GUARD = ("elsif", "when")
_CLOSES_GUARD = ("endif", "endunless", "endcase")
_DEFAULT_FILTER = re.compile(r"\|\s*default\s*:")


def _variable_uses(source: str, variable: str, *, hint: str) -> list:
    """Where ``source`` reads the global ``variable`` (its analysis' uses, each with its segments
    and place); none when ``hint`` is not in the text, the text is not a template, or it cannot be
    read (``template_check`` refuses it)."""
    if hint not in source or not is_templated(source):
        return []
    try:
        return list(_parse(source).analyze(include_partials=False).globals.get(variable, []))
    except LiquidError:
        return []


def template_context_gaps(source: str, *, given: dict) -> list[str]:
    """The outputs of ``source`` (``{{ … }}``, ``echo``) that a send whose context is ``given``
    shows empty, as written: each that reads a ``context.*`` value ``given`` does not hold, with no
    ``default`` and outside any ``if``, ``unless`` or ``case`` that reads that value (the
    template then says what shows without it). ``given`` holds what such a send puts in the
    context (``{"campaign": {"id": …, "name": …}}``). A template that cannot be read has none
    (``template_check`` refuses it)."""
    uses = _variable_uses(source, "context", hint="context")
    if not uses:
        return []

    def path(segments) -> tuple:
        found = []
        for segment in list(segments)[1:]:
            if not isinstance(segment, str):
                found.append(None)  # a key computed at render time: not one ``given`` holds
                break
            found.append(segment)
        return tuple(found)

    def held(read: tuple) -> bool:
        node = given
        for segment in read:
            if not isinstance(node, dict) or segment not in node:
                return False
            node = node[segment]
        return True

    reads = [(use.span.index, path(use.segments)) for use in uses]
    gaps, guards, tag, output = [], [], "", None
    for token in _TOKENIZER(source):
        start, end = token.start_index, token.start_index + len(token.value)
        inside = [read for index, read in reads if start <= index < end]
        if token.kind == TOKEN_TAG:
            tag = token.value.strip()
            if tag in _CLOSES_GUARD and guards:
                guards.pop()
            elif tag in _OPENS_GUARD:
                guards.append([])
            continue
        if token.kind == TOKEN_OUTPUT:
            output = token.value
            continue
        if token.kind == TOKEN_EXPRESSION and tag in _OPENS_GUARD + _ADDS_TO_GUARD and guards:
            guards[-1] += [read for read in inside if not held(read)]
        elif token.kind == TOKEN_EXPRESSION and (output is not None or tag == "echo"):
            written = output or f"{{% echo {token.value.strip()} %}}"
            defaulted = _DEFAULT_FILTER.search(_STRING_LITERAL.sub('""', token.value)) is not None
            for read in inside:
                guarded = any(read[: len(guard)] == guard for frame in guards for guard in frame)
                if not (held(read) or defaulted or guarded) and written not in gaps:
                    gaps.append(written)
        tag, output = "", None
    return gaps


def template_attributes_read(source: str) -> list[str]:
    """The names ``source`` reads as ``profile.attributes.<name>``, in order, once each (a name
    computed at render time is none of them). A template that cannot be read reads none
    (``template_check`` refuses it)."""
    names: list[str] = []
    for use in _variable_uses(source, "profile", hint="attributes"):
        segments = list(use.segments)
        if len(segments) > 2 and segments[1] == "attributes" and isinstance(segments[2], str):
            if segments[2] not in names:
                names.append(segments[2])
    return names


def template_attribute_outputs(source: str) -> list[tuple[str, str]] | None:
    """The ``(attribute, default)`` of each output through which ``source`` reads the profile, when
    every one is a plain ``{{ profile.attributes.<name> }}`` (with or without ``| default: '...'``)
    of a template otherwise simple (see ``template_render``); None when it reads the profile in any
    other way. A template that does not read the profile has none. What it renders is then its
    text around those outputs, each the attribute's value, or its default when the value is empty."""
    if not template_reads_profile(source):
        return []
    parts = _simple_parts(source)
    if parts is None:
        return None
    outputs = []
    for part in parts:
        if isinstance(part, str) or part[0][0] != "profile":
            continue
        path, default = part
        if len(path) != 3 or path[1] != "attributes":
            return None
        outputs.append((path[2], default or ""))
    return outputs


def liquid_message(exc: LiquidError, message: str | None = None) -> str:
    """``message`` (by default the error's own) with the line the error points at."""
    message = message or getattr(exc, "message", None) or str(exc).splitlines()[0]
    line = _line_of(exc)
    return message if line is None else f"{message} (line {line})"


class FilterValueError(LiquidError):
    """A filter failed on a value in a way Liquid does not report as its own error: ``round`` of
    "nan", ``base64_decode`` of bytes that are not UTF-8, ``sum`` of words, ``times`` of "1e400"."""


def template_render(source: str, *, profile: dict, context: dict) -> str:
    """Render ``source`` for one profile. Plain text (no markup) comes back as it is.

    The common shape, text with ``{{ path }}`` / ``{{ path | default: 'x' }}`` outputs over
    string values, is rendered by a short path with Liquid's result (about 20 times faster);
    anything else goes through Liquid. Raises LiquidError when rendering fails, whatever failed:
    one profile's odd value fails that profile's message, never its batch, preview or trigger.
    """
    if not is_templated(source):
        return source
    parts = _simple_parts(source)
    if parts is not None:
        fast = _render_simple(parts, profile, context)
        if fast is not None:
            return fast
    try:
        return _parse(source).render(profile=profile, context=context)
    except LiquidError:
        raise
    except Exception as exc:  # a filter's own Python error, on a value it was not written for
        raise FilterValueError(f"a filter failed on a value ({type(exc).__name__})", token=None) from exc


_MARKUP = re.compile(r"(\{\{.*?\}\}|\{%.*?%\})", re.S)
_SIMPLE_OUTPUT = re.compile(
    r"^\{\{\s*((?:profile|context)(?:\.[A-Za-z_][A-Za-z0-9_]*)+)\s*"
    r"(?:\|\s*default:\s*(?:'([^']*)'|\"([^\"]*)\"))?\s*\}\}$"
)


@lru_cache(maxsize=512)
def _simple_parts(source: str) -> tuple | None:
    """The template as literal strings and (path, default) outputs, or None when it uses more."""
    parts: list = []
    position = 0
    for match in _MARKUP.finditer(source):
        if match.start() > position:
            parts.append(source[position : match.start()])
        output = _SIMPLE_OUTPUT.match(match.group(0))
        if output is None:
            return None
        default = output.group(2) if output.group(2) is not None else output.group(3)
        parts.append((tuple(output.group(1).split(".")), default))
        position = match.end()
    rest = source[position:]
    if "{{" in rest or "{%" in rest:
        return None
    parts.append(rest)
    return tuple(parts)


def _render_simple(parts: tuple, profile: dict, context: dict) -> str | None:
    """Render simple parts; None when a value is not a plain string (Liquid then decides)."""
    out = []
    roots = {"profile": profile, "context": context}
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        path, default = part
        value = roots.get(path[0])
        for key in path[1:]:
            if value is None:
                break
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        if value is None or value == "":
            out.append(default or "")
        elif type(value) is str:
            out.append(value)
        else:
            return None
    return "".join(out)


def _json_bytes(text: str) -> int:
    """The bytes ``text`` takes inside a JSON string (UTF-8, escapes counted, no quotes)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def template_worst_case_bytes(source: str, *, value_bytes: int = VALUE_BYTES) -> int:
    """An upper estimate of what ``source`` renders to, in bytes of a JSON string.

    Literal text counts as itself in every branch; each output counts ``value_bytes`` plus
    its string literals; anything inside a loop counts ``LOOP_LIMIT`` times. It is never less
    than what the template renders for a profile without attributes and an empty context (a
    literal assigned once and shown many times is counted there). The rendered size is checked
    again at send time, so an estimate that is beaten fails that one message, never the payload
    limit at the provider.
    """
    if not is_templated(source):
        return _json_bytes(source)
    try:
        rendered = _json_bytes(template_render(source, profile={"attributes": {}}, context={}))
    except LiquidError:
        rendered = 0
    return max(rendered, _token_estimate(source, value_bytes=value_bytes))


def _token_estimate(source: str, *, value_bytes: int) -> int:
    total = 0
    loop_depth = 0
    last_tag = ""
    for token in _TOKENIZER(source):
        kind, value = token.kind, token.value
        factor = LOOP_LIMIT if loop_depth else 1
        if kind == TOKEN_CONTENT:
            total += _json_bytes(value) * factor
        elif kind == TOKEN_OUTPUT:
            total += (value_bytes + _literal_bytes(value)) * factor
        elif kind == TOKEN_TAG:
            last_tag = value.strip()
            if last_tag in ("for", "tablerow"):
                loop_depth += 1
            elif last_tag in ("endfor", "endtablerow"):
                loop_depth = max(0, loop_depth - 1)
            continue
        elif kind == TOKEN_EXPRESSION and last_tag == "echo":
            total += (value_bytes + _literal_bytes(value)) * factor
        elif kind == TOKEN_EXPRESSION and last_tag == "liquid":
            echoes = sum(1 for line in value.splitlines() if line.strip().startswith("echo"))
            total += (echoes * value_bytes + _literal_bytes(value)) * factor
        last_tag = ""
    return total


def _literal_bytes(expression: str) -> int:
    return sum(_json_bytes(m.group(1) or m.group(2) or "") for m in _STRING_LITERAL.finditer(expression))


def url_scheme_check(source: str, *, field: str, allowed: tuple[str, ...]) -> None:
    """Refuse a URL (possibly templated) whose scheme is not in ``allowed``.

    The scheme must be written out: a URL that starts with a variable could become anything.
    Raises ValidationError({field: message}).
    """
    if not source:
        return
    head = re.split(r"\{\{|\{%", source, maxsplit=1)[0]
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", head.strip())
    if match is None:
        if is_templated(source) and not head.strip():
            raise ValidationError(
                {field: "The URL's scheme must be written out, not come from a variable (e.g. https://.../{{ ... }})."}
            )
        raise ValidationError({field: f"Not a URL with a scheme; use one of: {', '.join(allowed)}."})
    scheme = match.group(1).lower()
    if scheme not in allowed:
        raise ValidationError({field: f"URL scheme '{scheme}' is not allowed; use one of: {', '.join(allowed)}."})


# An http address on this machine, its host written out before any Liquid: where the push
# simulator's phones and the admin's previews, on this machine too, load a local image from (as
# the demo's, offline). Browsers count http on it as secure (W3C Secure Contexts); a real phone's
# "this machine" is itself, so it is no image server for one (``spec_authoring_check``).
_LOOPBACK_HTTP = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?([/?#]|\Z)", re.IGNORECASE)


def loopback_http(source: str) -> bool:
    """Whether ``source`` is an http address on this machine (127.0.0.1, localhost, [::1])."""
    return bool(_LOOPBACK_HTTP.match(source or ""))


# A URL's text with its Liquid markup standing for one character of the value it renders.
_URL_MARKUP = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)


def url_form_check(source: str, *, field: str) -> None:
    """Refuse a URL a phone would not open, in the text written around its Liquid markup: a space,
    a tab, a line break or another control character (iOS reads no URL from such text), a web
    address (``http``, ``https``) without a host, or a scheme with nothing after it. The scheme
    is ``url_scheme_check``'s to judge. Raises ValidationError({field: message}).
    """
    if not source:
        return
    text = _URL_MARKUP.sub("v", source)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValidationError(
            {field: "A URL holds no space, tab or line break (none before or after it either); write a space as %20."}
        )
    scheme, _, rest = text.partition(":")
    if scheme.lower() in ("http", "https"):
        host = rest.removeprefix("//").split("/", 1)[0].split("?", 1)[0].split("#", 1)[0] if rest[:2] == "//" else ""
        if not host:
            raise ValidationError({field: f"A web address needs a host: {scheme}://example.com/..."})
    elif not rest:
        raise ValidationError({field: f"Nothing follows '{scheme}:': write the link's path (e.g. {scheme}://orders)."})


# An output of a whole object, bare or with a default: ``profile``, ``profile.attributes``, ``context``.
_WHOLE_OBJECT = re.compile(
    r"^\s*(profile|profile\.attributes|context)\s*(?:\|\s*default\s*:\s*(?:'[^']*'|\"[^\"]*\"|[\w.]+)\s*)?$"
)


def template_whole_object_outputs(source: str) -> list[str]:
    """The outputs of ``source`` (``{{ … }}``, ``echo``) that write a whole object (``profile``,
    ``profile.attributes``, ``context``), as written: Liquid renders one as every field it holds,
    in Python's notation. A template that cannot be read has none (``template_check`` refuses it)."""
    if not is_templated(source) or not re.search(r"profile|context", source):
        return []
    found, tag, output = [], "", None
    try:
        tokens = list(_TOKENIZER(source))
    except LiquidError:
        return []
    for token in tokens:
        if token.kind == TOKEN_TAG:
            tag, output = token.value.strip(), None
            continue
        if token.kind == TOKEN_OUTPUT:
            output = token.value
            continue
        if token.kind == TOKEN_EXPRESSION and (output is not None or tag == "echo"):
            if _WHOLE_OBJECT.match(token.value):
                found.append(output or f"{{% echo {token.value.strip()} %}}")
        elif token.kind == TOKEN_EXPRESSION and tag == "liquid":
            for line in token.value.splitlines():
                word, _, expression = line.strip().partition(" ")
                if word == "echo" and _WHOLE_OBJECT.match(expression):
                    found.append(f"{{% echo {expression.strip()} %}}")
        tag, output = "", None
    return found
