"""Reading a CSV import: the header check done at upload, the streamed row reader, typed cells,
the spreadsheet-safe error file, and the batch writers (PostgreSQL COPY + one upsert; SQLite upsert).

The services in ``audiences.services.imports`` drive these; nothing here checks permissions.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from json.encoder import encode_basestring
from operator import itemgetter

from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone as dj_timezone

from accounts.json_values import json_compact_utf8
from audiences.models import Import, Profile, SegmentMember
from audiences.rules.schema import KEY_RE
from audiences.services.profiles import (
    MAX_ATTRIBUTES,
    MAX_ATTRIBUTES_BYTES,
    attributes_limit_problem,
    profile_check,
)

SNIFF_BYTES = 64 * 1024
CELL_TYPES = ("auto", "string", "number", "boolean", "date", "skip")
PROFILE_COLUMNS = ("locale", "timezone")
MAX_CELL = 1000
CELL_CACHE_SIZE = 4096
_UNTYPED = object()
INT_RE = re.compile(r"^-?(0|[1-9][0-9]{0,17})\Z")
FLOAT_RE = re.compile(r"^-?(0|[1-9][0-9]*)?\.[0-9]+([eE][-+]?[0-9]+)?\Z|^-?(0|[1-9][0-9]*)[eE][-+]?[0-9]+\Z")
DECLARED_NUMBER_RE = re.compile(r"^[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\Z")
TRUE_WORDS = {"true", "yes", "y", "1"}
FALSE_WORDS = {"false", "no", "n", "0"}
BINARY_SIGNATURES = {
    b"PK\x03\x04": "a zip archive (an Excel .xlsx file?)",
    b"\xd0\xcf\x11\xe0": "an Office document (an Excel .xls file?)",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\x1f\x8b": "a gzip archive",
}
# Longest first: the UTF-32 LE mark starts as the UTF-16 LE one does.
WIDE_TEXT_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Bytes that do not decode are read as lone surrogates (U+DC80-U+DCFF, Python's "surrogateescape"),
# which no valid text decodes to; a U+FFFD that the file spells in valid UTF-8 is an ordinary character.
UNDECODABLE_RE = re.compile("[\udc80-\udcff]")
SUSPECT_RE = re.compile("[\x00\udc80-\udcff]")  # a column holding neither needs no row-by-row look
COPY_SPECIAL_RE = re.compile("[\\\\\t\n\r]")
QUOTED_RE = re.compile('[^"]*(?:""[^"]*)*')  # the inside of a quoted CSV field, up to its closing quote
KEPT_LINES = 1024


class ImportRefused(ValidationError):
    """The whole file is refused before any row lands (not CSV, no external_id column, too big...).

    ``field`` is what the API's error names: ``file``, or ``columns`` when the mapping sent with
    the file is what is wrong."""

    def __init__(self, message: str, *, field: str = "file"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Column:
    index: int
    header: str
    to: str  # "external_id", "locale", "timezone" or an attribute name
    type: str  # one of CELL_TYPES


@dataclass
class Plan:
    """What to do with each column of the file."""

    columns: list[Column]
    id_index: int
    width: int

    @property
    def fields(self) -> list[tuple[int, str, str, str, dict]]:
        """(index, target, type, header, typed cells) of every column but the external id, computed once.

        The last item maps a cell's text to its typed value for the column (``parse_cell`` is a
        function of the two): columns repeat their values (plans, countries, yes/no), and a
        lookup costs a fraction of typing the cell again. Each holds at most CELL_CACHE_SIZE.
        """
        cached = self.__dict__.get("_fields")
        if cached is None:
            cached = [(c.index, c.to, c.type, c.header, {}) for c in self.columns if c.to != "external_id"]
            self.__dict__["_fields"] = cached
        return cached

    @property
    def fragment_caches(self) -> list[dict]:
        """For each of ``fields``, its distinct cells as ``parse_rows`` renders them (see ``_type_cells``)."""
        cached = self.__dict__.get("_fragments")
        if cached is None:
            cached = self.__dict__["_fragments"] = [{} for _ in self.fields]
        return cached


def python_encoding(encoding: str) -> str:
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else "latin-1"


def attribute_name(header: str) -> str:
    """A header as an attribute name: trimmed, inner spaces as underscores."""
    return re.sub(r"\s+", "_", header.strip())


def columns_problem(columns: dict) -> tuple[str, str] | None:
    """What is wrong with the shape of a column mapping, as (path, message); None when nothing is.

    Each column maps to null or an object with an optional ``to`` (a name, as text) and ``type``
    (one of CELL_TYPES). The names themselves are checked against the header by ``plan_columns``.
    """
    for name, spec in columns.items():
        if spec is None:
            continue
        if not isinstance(spec, dict):
            return name, f"The mapping of column {name!r} must be an object with 'to' and/or 'type'."
        for key in spec:
            if key not in ("to", "type"):
                return f"{name}.{key}", f"Column {name!r}: unknown key {key!r}; a mapping has 'to' and/or 'type'."
        to = spec.get("to")
        if to is not None and not isinstance(to, str):
            return (
                f"{name}.to",
                f"Column {name!r}: 'to' must be a name (text): an attribute, external_id, locale or timezone.",
            )
        kind = spec.get("type")
        if kind is not None and (not isinstance(kind, str) or kind not in CELL_TYPES):
            return f"{name}.type", f"Column {name!r}: unknown type {kind!r}; use one of {', '.join(CELL_TYPES)}."
    return None


def plan_columns(header: list[str], columns: dict | None) -> Plan:
    """Map the header to profile fields and typed attributes, or refuse the file (ImportRefused).

    ``columns`` maps a CSV header to ``{"to": name, "type": type}`` (either optional) or
    ``{"type": "skip"}`` (``columns_problem`` says what else is refused). Unmapped columns become
    attributes of the header's name, typed by inference ("auto"). The external id comes from the
    column named ``external_id`` or mapped to it; without one the file is refused.
    """
    columns = columns or {}
    names = [h.strip() for h in header]
    if not any(names):
        raise ImportRefused("The file has no header row: the first line must name the columns, e.g. external_id.")
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise ImportRefused(f"The column {name!r} appears twice in the header.")
        seen.add(name)
    unknown = sorted(set(columns) - set(names))
    if unknown:
        raise ImportRefused(
            f"The column mapping names {unknown[0]!r}, which is not in the file's header.", field="columns"
        )
    found = columns_problem(columns)
    if found is not None:
        raise ImportRefused(found[1], field="columns")
    plan: list[Column] = []
    id_index = None
    targets: set[str] = set()
    for index, name in enumerate(names):
        spec = columns.get(name) or {}
        kind = spec.get("type") or "auto"
        if kind == "skip" or (not name and not spec.get("to")):
            continue
        to = spec.get("to") or (name if name in ("external_id", *PROFILE_COLUMNS) else attribute_name(name))
        if to in targets:
            raise ImportRefused(f"Two columns fill {to!r}; map one of them elsewhere or skip it.")
        targets.add(to)
        if to == "external_id":
            id_index = index
        elif to not in PROFILE_COLUMNS and not KEY_RE.match(to):
            raise ImportRefused(
                f"Column {name!r} cannot be an attribute name (letters, digits, _ . : -); map it to another name."
            )
        plan.append(Column(index=index, header=name, to=to, type=kind))
    if id_index is None:
        raise ImportRefused(
            "The file has no external_id column: name a column external_id (or map one to it). No row was imported."
        )
    return Plan(columns=plan, id_index=id_index, width=len(names))


# The separators a file's columns may have, by the name an import records: Excel writes semicolons
# where the decimal separator is a comma, tabs as "Text", and may name it on a first ``sep=`` line.
SEPARATORS = {"comma": ",", "semicolon": ";", "tab": "\t"}
SEP_LINE_RE = re.compile(r"sep=(.?)[\r\n]*\Z", re.IGNORECASE)


@dataclass(frozen=True)
class Header:
    """A file's header as ``sniff_header`` found it: its cells, the separator of its columns (a key
    of SEPARATORS) and whether a ``sep=`` line comes before it (read, and skipped, as a record)."""

    cells: list[str]
    separator: str = "comma"
    sep_line: bool = False

    @property
    def delimiter(self) -> str:
        return SEPARATORS[self.separator]


def _detect_header(text: str, *, id_columns: set[str]) -> Header:
    """The header of the decoded start of a file, and the separator of its columns.

    A first line ``sep=X`` (Excel's) names it. Otherwise the header line is read with each
    separator, and the one wins whose reading names the external id column (``id_columns``), then
    the one that makes the most columns, then comma, semicolon, tab in that order: a file of one
    column is comma-separated. Only the header is read: the file's rows are not looked at.
    """
    first = next((line for line in io.StringIO(text, newline="") if line.strip()), "")
    if line := SEP_LINE_RE.match(first.lstrip("\ufeff")):
        named = line.group(1)
        separator = next((name for name, char in SEPARATORS.items() if char == named), None)
        if separator is None:
            shown = named or "nothing"
            raise ImportRefused(
                f"The file starts with a 'sep={named}' line, naming {shown!r} as its separator: imports read "
                "columns separated by commas, semicolons or tabs. Export it with one of those and upload it again."
            )
        rest = text[text.index(first) + len(first) :]
        cells = _first_record(rest, SEPARATORS[separator])
        return Header(cells=cells, separator=separator, sep_line=True)
    best: Header | None = None
    best_rank = None
    for order, (separator, char) in enumerate(SEPARATORS.items()):
        cells = _first_record(text, char)
        names = {cell.strip() for cell in cells}
        rank = (bool(names & id_columns), len(cells), -order)
        if best_rank is None or rank > best_rank:
            best, best_rank = Header(cells=cells, separator=separator), rank
    return best


def _first_record(text: str, delimiter: str) -> list[str]:
    """The first record of ``text`` that is not blank, read with ``delimiter`` ([] when none)."""
    for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
        if row and any(cell.strip() for cell in row):
            return row
    return []


def sniff_header(fileobj, *, encoding: str, columns: dict | None = None) -> Header:
    """Read the start of the file and return its header and separator (``_detect_header``), or
    refuse a file that is not CSV text.

    ``columns``: the import's column mapping, where a column may be mapped to the external id.
    A NUL byte in the header (the first line that is not blank) marks a binary file, or UTF-16
    text without its byte order mark, and refuses it; in a later row it fails that row alone.
    """
    fileobj.seek(0)
    head = fileobj.read(SNIFF_BYTES)
    fileobj.seek(0)
    if isinstance(head, str):
        head = head.encode()
    if not head.strip():
        raise ImportRefused("The file is empty.")
    for signature, what in BINARY_SIGNATURES.items():
        if head.startswith(signature):
            raise ImportRefused(f"This is not a CSV file: it looks like {what}. Export it as CSV first.")
    for bom, name in WIDE_TEXT_BOMS:
        if head.startswith(bom):
            raise ImportRefused(
                f"The file is {name} text (it starts with a {name} byte order mark), which imports do not read: "
                "export it as CSV UTF-8 and upload it again."
            )
    if head.startswith(codecs.BOM_UTF8) and python_encoding(encoding) != "utf-8-sig":
        raise ImportRefused(
            "The file starts with a UTF-8 byte order mark, so it is UTF-8 text: choose the UTF-8 encoding."
        )
    first_line = re.split(rb"[\r\n]", head.lstrip(b"\r\n"), maxsplit=1)[0]
    if b"\x00" in first_line:
        raise ImportRefused(_nul_refusal(first_line))
    decoder = codecs.getincrementaldecoder(python_encoding(encoding))(errors="strict")
    try:
        text = decoder.decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError as exc:
        raise ImportRefused(
            f"The file is not valid {encoding.upper()} text (byte {exc.start}): choose the Latin-1 encoding "
            "if it comes from an older spreadsheet."
        ) from exc
    id_columns = {"external_id"} | {
        name for name, spec in (columns or {}).items() if isinstance(spec, dict) and spec.get("to") == "external_id"
    }
    try:
        header = _detect_header(text, id_columns=id_columns)
    except csv.Error as exc:
        raise ImportRefused(f"This is not a readable CSV file: {exc}.") from exc
    if not header.cells:
        raise ImportRefused("The file has no header row: the first line must name the columns, e.g. external_id.")
    if "\x00" in "".join(header.cells):
        raise ImportRefused(_nul_refusal(b""))
    return header


def _nul_refusal(line: bytes) -> str:
    """The refusal of a header holding NUL bytes; UTF-16 text without its mark has one beside each ASCII letter."""
    sample = line[:512]
    if len(sample) >= 4 and max(sample[0::2].count(0), sample[1::2].count(0)) >= len(sample) // 2 - 1:
        return (
            "This is not a CSV file as it stands: it looks like UTF-16 text (a NUL byte beside each letter). "
            "Export it as CSV UTF-8 and upload it again."
        )
    return "This is not a CSV file: it holds binary data (NUL bytes)."


@dataclass
class Record:
    line: int  # the line the record starts on (the header is line 1)
    cells: list[str] | None  # None: the record could not be read (see error)
    error: str = ""


class RecordReader:
    """The records of a CSV file after its header, read in chunks, with the line each starts on.

    Blank lines are skipped. Quoted fields may hold commas and newlines; CRLF and LF both end
    lines. Undecodable bytes become lone surrogates (see UNDECODABLE_RE) and fail only their row.
    A record the csv module gives up on partway (a field over its size limit) is unreadable as a
    whole: reading goes on after its end, never inside one of its quoted fields.
    """

    def __init__(self, binary, *, encoding: str, header: Header | None = None):
        # UTF-8 is read without "-sig" so that a byte order mark, dropped by ``_lines``, is counted.
        self.single_byte = python_encoding(encoding) != "utf-8-sig"
        text = io.TextIOWrapper(
            binary, encoding="latin-1" if self.single_byte else "utf-8", errors="surrogateescape", newline=""
        )
        self.kept: list[str] = []  # the lines read lately, the current record's at least
        self.reopen: list[bool] = []  # not empty: the next line continues a quoted field
        header = header or Header(cells=[])
        self.delimiter = header.delimiter
        self.reader = csv.reader(self._lines(text), delimiter=self.delimiter)
        self.last_line = 0
        self.bytes_read = 0  # the file's bytes up to the end of the last record read
        self.to_skip = 1 + header.sep_line  # the records before the rows: a 'sep=' line, the header
        self.finished = False

    def _lines(self, text) -> Iterator[str]:
        """The file's lines, each counted in ``bytes_read`` as the csv reader takes it.

        The reader takes no line past the end of the record it returns, so after each record
        ``bytes_read`` is where the file's next record starts: what a batch read, exactly.
        """
        kept, reopen, single_byte = self.kept, self.reopen, self.single_byte
        first = text.readline()
        if first.startswith("\ufeff"):  # the UTF-8 byte order mark: counted, not read
            self.bytes_read = len(codecs.BOM_UTF8)
            first = first[1:]
        for line in itertools.chain((first,), text) if first else ():
            if single_byte or line.isascii():
                self.bytes_read += len(line)
            else:  # the bytes that did not decode are given back as they were
                self.bytes_read += len(line.encode("utf-8", "surrogateescape"))
            if reopen:
                reopen.clear()
                line = '"' + line
            kept.append(line)
            if len(kept) > KEPT_LINES:
                # The record under way began after last_line; its lines (this one too) stay.
                del kept[: -(self.reader.line_num - self.last_line + 1)]
            yield line

    def read(self, count: int) -> tuple[list[list[str]], list[int], list[tuple[int, str]]]:
        """Up to ``count`` records: their cells, their lines, and those that could not be read (line, reason).

        Unreadable records count toward ``count`` like the others (each is a row of the file).
        """
        rows: list[list[str]] = []
        lines: list[int] = []
        unreadable: list[tuple[int, str]] = []
        reader = self.reader
        while not self.finished and len(rows) + len(unreadable) < count:
            want = count - len(rows) - len(unreadable)
            try:
                for row in reader:
                    start = self.last_line + 1
                    self.last_line = reader.line_num
                    if not row or (not row[0].strip() and not "".join(row).strip()):
                        continue
                    if self.to_skip:
                        self.to_skip -= 1
                        continue
                    rows.append(row)
                    lines.append(start)
                    want -= 1
                    if not want:
                        break
                else:
                    self.finished = True
            except csv.Error as exc:
                unreadable.append((self.last_line + 1, f"unreadable CSV ({exc})"))
                self._skip_rest_of_record()
                self.last_line = reader.line_num
        return rows, lines, unreadable

    def _skip_rest_of_record(self) -> None:
        """After the reader gave up on a record, drop what is left of it.

        The reader starts afresh on the next line, which is right unless the record stopped inside a
        quoted field that goes on there: then that line is read as opening a quoted field, so the
        reader finds the field's real end and the record's, and the record thus read is dropped.
        """
        reader = self.reader
        while True:
            record_lines = self.kept[-max(1, reader.line_num - self.last_line) :]
            if not _ends_inside_quotes("".join(record_lines), self.delimiter):
                return
            self.last_line = reader.line_num
            self.reopen.append(True)
            try:
                next(reader)
                return
            except StopIteration:
                self.finished = True
                return
            except csv.Error:
                continue  # the rest is too long as well: look where it stopped


def _ends_inside_quotes(text: str, delimiter: str = ",") -> bool:
    """Whether the csv module, reading ``text`` from the start of a record, ends inside a quoted field.

    Its rules: a field opening with a quote runs to the next quote not doubled; after that, or in
    a field that opens otherwise, a quote is an ordinary character and the delimiter ends the field.
    """
    at, end = 0, len(text)
    while at < end:
        if text[at] == '"':
            at = QUOTED_RE.match(text, at + 1).end()
            if at >= end:
                return True
            at += 1  # the closing quote
        ends = text.find(delimiter, at)
        if ends < 0:
            return False
        at = ends + 1
    return False


class _Bad:
    """A cell that fails its row (the reason is worded by ``parse_record``)."""


_BAD = _Bad()


@dataclass
class ParsedRows:
    """The good rows of a chunk, a list per column: external ids, attributes as JSON text, locale, time zone."""

    lines: list[int]
    external_ids: list[str]
    attributes: list[str]
    locales: list[str | None]
    timezones: list[str | None]
    keys: int = 0  # the most attributes a row gives: the file's attribute columns


def parse_rows(
    rows: list[list[str]], lines: list[int], plan: Plan, *, timezones: set[str]
) -> tuple[ParsedRows, list[tuple[int, str, str]]]:
    """What ``parse_record`` does for each row, a column at a time; returns the good rows and the bad ones.

    The bad ones as (line, raw external_id, reason), the reason from ``parse_record``. Each distinct
    cell of a column is typed once per chunk (and kept for later chunks up to CELL_CACHE_SIZE), and
    the checks run over whole columns, so the per-row Python work is a few C-level list passes.
    """
    width = plan.width
    bad: set[int] = set()  # indexes into rows
    keep = range(len(rows))
    if set(map(len, rows)) - {width}:
        bad.update(i for i, r in enumerate(rows) if len(r) != width)
        keep = [i for i in keep if i not in bad]
        cols = _columns([rows[i] for i in keep], width)
    else:
        cols = _columns(rows, width)
    for col in cols:
        if SUSPECT_RE.search("".join(col)):
            bad.update(keep[j] for j, cell in enumerate(col) if SUSPECT_RE.search(cell))
    ids = cols[plan.id_index]
    if ids and ("" in ids or max(map(len, ids)) > 255 or ids != list(map(str.strip, ids))):
        bad.update(keep[j] for j, value in enumerate(ids) if not value or len(value) > 255 or value != value.strip())
    fragments: list[list] = []
    locales = timezones_col = None
    for (index, to, kind, _header, _typed), typed in zip(plan.fields, plan.fragment_caches, strict=True):
        col = cols[index]
        distinct = set(col)
        missing = distinct.difference(typed)
        if missing:
            typed = {**typed, **_type_cells(missing, to, kind, timezones=timezones, cache=typed)}
        values = list(map(typed.__getitem__, col))
        if _BAD in values:
            bad.update(keep[j] for j, value in enumerate(values) if value is _BAD)
        if to == "locale":
            locales = values
        elif to == "timezone":
            timezones_col = values
        else:
            fragments.append(values)
    if bad:
        good = [j for j, i in enumerate(keep) if i not in bad]
        ids = [ids[j] for j in good]
        fragments = [[values[j] for j in good] for values in fragments]
        locales = None if locales is None else [locales[j] for j in good]
        timezones_col = None if timezones_col is None else [timezones_col[j] for j in good]
        good_rows = [keep[j] for j in good]
        good_lines = [lines[i] for i in good_rows]
    else:
        good_rows, good_lines = keep, lines
    count = len(ids)
    if not fragments:
        attributes = ["{}"] * count
    else:
        tuples = zip(*fragments, strict=True)
        if any("" in values for values in fragments):  # an empty cell leaves its attribute out
            tuples = map(partial(filter, None), tuples)
        attributes = list(map("{{{}}}".format, map(",".join, tuples)))
    over = _over_profile_limits(attributes, len(fragments))
    if over:
        bad.update(good_rows[j] for j in over)
        left = [j for j in range(count) if j not in over]
        ids = [ids[j] for j in left]
        attributes = [attributes[j] for j in left]
        locales = None if locales is None else [locales[j] for j in left]
        timezones_col = None if timezones_col is None else [timezones_col[j] for j in left]
        good_lines = [good_lines[j] for j in left]
        count = len(ids)
    failures = []
    for i in sorted(bad):
        cells = rows[i]
        reason = parse_record(Record(line=lines[i], cells=cells), plan, timezones=timezones)
        if not isinstance(reason, str):  # parse_record words every reason; it never disagrees
            raise AssertionError(f"line {lines[i]}: a row found bad by column is good row by row")
        failures.append((lines[i], cells[plan.id_index] if len(cells) > plan.id_index else "", reason))
    parsed = ParsedRows(
        lines=good_lines,
        external_ids=ids,
        attributes=attributes,
        locales=locales or [None] * count,
        timezones=timezones_col or [None] * count,
        keys=len(fragments),
    )
    return parsed, failures


def _over_profile_limits(attributes: list[str], columns: int) -> set[int]:
    """The positions of the rows whose attributes break the profile API's limits (``profile_check``).

    Only a row that could break them is checked: any row when there are more attribute columns than
    MAX_ATTRIBUTES, else one whose JSON text could reach MAX_ATTRIBUTES_BYTES escaped as ASCII (the
    size the limit measures: 12 bytes a character at most).
    """
    longest = MAX_ATTRIBUTES_BYTES // 12
    if columns > MAX_ATTRIBUTES:
        suspects = range(len(attributes))
    elif attributes and max(map(len, attributes)) > longest:
        suspects = [j for j, text in enumerate(attributes) if len(text) > longest]
    else:
        return set()
    return {j for j in suspects if _profile_problem("attributes", json.loads(attributes[j]))}


def _columns(rows: list[list[str]], width: int) -> list[list[str]]:
    """Rows of ``width`` cells as columns (much faster than ``zip(*rows)`` for many rows)."""
    return [list(map(itemgetter(index), rows)) for index in range(width)]


_JSON_TEXT = {str: encode_basestring, bool: lambda v: "true" if v else "false", int: int.__repr__}


def _json_value(value) -> str:
    """``json_compact_utf8`` of a typed cell, without the encoder's machinery for the usual types."""
    text = _JSON_TEXT.get(type(value))
    if text is not None:
        return text(value)
    if type(value) is float and math.isfinite(value):
        return float.__repr__(value)
    return json_compact_utf8(value)


def _type_cells(cells, to: str, kind: str, *, timezones: set[str], cache: dict) -> dict:
    """Each distinct cell of a column as what a row holds of it: a JSON ``"name":value`` fragment
    (the profile's locale or time zone for those), "" / None when empty, or _BAD.

    The same rules as ``parse_record``; the good ones join the column's cache while it has room.
    """
    prefix = json_compact_utf8(to) + ":"
    out = {}
    for raw in cells:
        value = raw.strip()
        if not value:
            out[raw] = None if to in PROFILE_COLUMNS else ""
            continue
        if len(raw) > MAX_CELL:
            out[raw] = _BAD
            continue
        if to == "locale":
            out[raw] = _BAD if _profile_problem("locale", value) else value
        elif to == "timezone":
            out[raw] = value if value in timezones else _BAD
        else:
            try:
                out[raw] = prefix + _json_value(parse_cell(raw, kind))
            except ValueError:
                out[raw] = _BAD
    room = CELL_CACHE_SIZE - len(cache)
    if room > 0:
        for raw, value in out.items():
            if value is not _BAD:
                cache[raw] = value
                room -= 1
                if not room:
                    break
    return out


@dataclass
class ParsedRow:
    line: int
    external_id: str
    attributes: dict
    locale: str | None = None
    timezone: str | None = None


def parse_cell(raw: str, kind: str):
    """A CSV cell as a JSON value of its declared (or inferred) type; ValueError when it is not one.

    Text is kept without the white space around it, as every other type is read: a cell "pro "
    (a spreadsheet's padding, a space after the separator) is "pro", which a rule 'is pro' matches.
    """
    value = raw.strip()
    if kind == "string":
        return value
    if kind == "number":  # declared: leading zeros and a leading + are fine ("007" is 7)
        if DECLARED_NUMBER_RE.match(value):
            if "." not in value and "e" not in value.lower() and len(value.lstrip("+-")) <= 18:
                return int(value)
            number = float(value)
            if number != number or number in (float("inf"), float("-inf")):
                raise ValueError("is not a finite number")
            return int(number) if number.is_integer() and abs(number) < 2**53 and "." not in value else number
        raise ValueError("is not a number")
    if kind == "boolean":
        lowered = value.lower()
        if lowered in TRUE_WORDS:
            return True
        if lowered in FALSE_WORDS:
            return False
        raise ValueError("is not true/false (or yes/no, 1/0)")
    if kind == "date":
        try:
            if len(value) == 10:
                return dt.date.fromisoformat(value).isoformat()
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
        except ValueError:
            raise ValueError("is not a date (YYYY-MM-DD or ISO 8601 time)") from None
    # auto: numbers without a leading zero, true/false, else the text. The cheap
    # checks come first: this runs for every cell of every row.
    if not value:
        return value
    first = value[0]
    if "0" <= first <= "9" or first == "-":
        if value.isdigit() and value.isascii():  # other scripts' digits (², ①, ٣) stay text
            if first != "0" or len(value) == 1:
                return int(value) if len(value) < 19 else value
            return value
        if INT_RE.match(value):
            return int(value)
        if FLOAT_RE.match(value):
            return _finite_or(float(value), value)
        return value
    if first == "." and FLOAT_RE.match(value):
        return _finite_or(float(value), value)
    if len(value) in (4, 5):
        lowered = value.lower()
        if lowered == "true":
            return True
        if lowered == "false":
            return False
    return value


def _finite_or(number: float, raw: str):
    """A number too big for JSON (1e999 reads as infinity) stays text, as JSON has no infinity."""
    return number if math.isfinite(number) else raw


def parse_record(record: Record, plan: Plan, *, timezones: set[str]) -> ParsedRow | str:
    """Turn a record into a row to write, or return the reason it fails."""
    if record.cells is None:
        return record.error
    cells = record.cells
    if len(cells) != plan.width:
        return f"has {len(cells)} fields where the header has {plan.width}"
    joined = "".join(cells)
    if UNDECODABLE_RE.search(joined):
        return "holds bytes that are not valid text in this encoding (is the file Latin-1?)"
    if "\x00" in joined:
        return "holds a NUL character"
    external_id = cells[plan.id_index]
    if not external_id.strip():
        return "external_id is empty"
    if len(external_id) > 255:
        return "external_id is longer than 255 characters"
    if external_id != external_id.strip():  # as the profile API refuses it (``external_id_problem``)
        return f"external_id {_shorten(external_id)!r} begins or ends with white space"
    row = ParsedRow(line=record.line, external_id=external_id, attributes={})
    attributes = row.attributes
    for index, to, kind, header, typed in plan.fields:
        raw = cells[index]
        value = typed.get(raw, _UNTYPED)
        if value is not _UNTYPED:  # a cell seen before in this column, fine then
            attributes[to] = value
            continue
        value = raw.strip()
        if not value:
            continue  # an empty cell leaves the attribute as it is
        if len(raw) > MAX_CELL:
            return f"column {header!r} is longer than {MAX_CELL} characters"
        if to == "locale":
            if problem := _profile_problem("locale", value):
                return f"column {header!r}: {_shorten(value)!r}: {problem}"
            row.locale = value
        elif to == "timezone":
            if value not in timezones:
                return f"column {header!r}: {value!r} is not a time zone (e.g. Europe/Paris)"
            row.timezone = value
        else:
            try:
                attributes[to] = typed_value = parse_cell(raw, kind)
            except ValueError as exc:
                return f"column {header!r}: {_shorten(raw)!r} {exc}"
            if len(typed) < CELL_CACHE_SIZE:
                typed[raw] = typed_value
    if attributes and (problem := _profile_problem("attributes", attributes)):
        return f"attributes: {problem}"
    return row


def _profile_problem(name: str, value) -> str | None:
    """What the profile API says of this field's value (``profile_check``): imports keep the same rules."""
    return profile_check({name: value}).get(name)


def _shorten(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def spreadsheet_safe(value) -> str:
    """A cell that a spreadsheet will show as text, never run as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


def spreadsheet_read(value: str) -> str:
    """A cell ``spreadsheet_safe`` wrote, as the row had it: without the quote it put before a formula's start."""
    return value[1:] if value.startswith("'") and value[1:].startswith(FORMULA_STARTS) else value


class ErrorFile:
    """The downloadable report of failed and duplicate rows: line, external_id, reason.

    A batch's rows are written here before the batch commits, and the file's length then
    (``tell``) commits with the batch: that length is where the committed rows end. Whoever
    opens the file again (a resumed import) or ends the import cuts it back there first
    (``cut_back``), so it never lists a row of a batch that did not land.
    """

    HEADER = ("line", "external_id", "reason")

    def __init__(self, path, *, resume_at: int):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = self.cut_back(path, resume_at)
        self.raw = open(path, "r+b" if kept else "wb")  # noqa: SIM115 - closed by close()
        self.raw.seek(kept)
        self.text = io.TextIOWrapper(self.raw, encoding="utf-8", newline="", write_through=True)
        self.writer = csv.writer(self.text)
        if not kept:
            self.text.write("\ufeff")  # so spreadsheets open it as UTF-8
            self.writer.writerow(self.HEADER)

    @staticmethod
    def cut_back(path, committed: int) -> int:
        """Cut the file at ``path`` back to its first ``committed`` bytes, the rows of the committed
        batches, or remove it when none were committed (0). Returns the length it keeps."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return 0
        if not committed:
            path.unlink(missing_ok=True)
            return 0
        if size > committed:
            with open(path, "r+b") as fh:
                fh.truncate(committed)
        return min(size, committed)

    def add(self, line: int, external_id: str, reason: str) -> None:
        external_id = UNDECODABLE_RE.sub("\ufffd", external_id)  # the undecodable bytes of a failed row
        self.writer.writerow([line, spreadsheet_safe(external_id), spreadsheet_safe(reason)])

    def tell(self) -> int:
        self.text.flush()
        return self.raw.tell()

    def rewind(self, to: int) -> None:
        """Forget the rows written after ``to`` bytes (``tell``): those of a batch rolled back."""
        self.text.flush()
        self.raw.seek(to)
        self.raw.truncate()

    def close(self) -> None:
        self.text.flush()
        self.text.close()

    @staticmethod
    def open_committed(record: Import) -> io.BufferedReader:
        """The error file of ``record`` open (binary) for reading as far as its committed rows go: its
        first ``record.error_bytes`` bytes.

        Past them are the rows of a batch not committed yet, or of one rolled back by a worker that
        died in it (left there until the import resumes and cuts them off), which no reader lists.
        Raises FileNotFoundError when the file is missing from storage; the caller closes what it gets.
        """
        fh = record.error_file.open("rb")
        return io.BufferedReader(_FirstBytes(fh, min(record.error_bytes, record.error_file.size)))

    @staticmethod
    def first_rows(fh, count: int) -> list[tuple[str, str, str]]:
        """The first ``count`` rows of the error file open in ``fh`` (binary), as (line, external_id,
        reason) with their cells as the import's rows had them (``spreadsheet_read``).

        Only those rows are read, however long the file; a row the csv module refuses (a cell over
        its limit) ends them. ``fh`` is left open for its caller to close.
        """
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="replace", newline="")
        rows = []
        try:
            reader = csv.reader(text)
            next(reader, None)  # the header
            for cells in itertools.islice(reader, count):
                line, external_id, reason = (*cells, "", "", "")[:3]
                rows.append((line, spreadsheet_read(external_id), spreadsheet_read(reason)))
        except csv.Error:
            pass
        finally:
            text.detach()
        return rows


class _FirstBytes(io.RawIOBase):
    """The first ``length`` bytes of a binary file, read and sought as a file of their own; closing
    it closes the file."""

    def __init__(self, fh, length: int):
        self.fh, self.length, self.at = fh, length, 0
        fh.seek(0)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.fh.read(max(0, min(len(buffer), self.length - self.at)))
        buffer[: len(data)] = data
        self.at += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        start = {io.SEEK_SET: 0, io.SEEK_CUR: self.at, io.SEEK_END: self.length}[whence]
        self.at = max(0, start + offset)
        self.fh.seek(self.at)
        return self.at

    def tell(self) -> int:
        return self.at

    def close(self) -> None:
        if not self.closed:
            self.fh.close()
        super().close()


# A row as a batch holds it: its line, its attributes as JSON text, its locale and time zone (None: empty).
Row = tuple[int, str, str | None, str | None]
# The shortest an attribute takes in a profile's JSON text as the database writes it: ``"": 0`` and
# its ", " on PostgreSQL (jsonb's text), ``"":0`` and its comma on SQLite.
KEY_CHARS = {"postgresql": 7, "sqlite": 5}


@dataclass
class Batch:
    """Rows to write in one transaction, a list per column (attributes as JSON text); ids are unique.

    The ids that several rows of the batch give are held apart, with their rows (``repeats``):
    each of those rows is measured against the profile limits on the profile as the rows before
    it leave it.
    """

    external_ids: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    locales: list[str | None] = field(default_factory=list)
    timezones: list[str | None] = field(default_factory=list)
    copy_text: str | None = None
    lines: list[int] = field(default_factory=list)  # each row's line in the file (empty: not known)
    keys: int | None = None  # the most attributes a row gives (None: not known, counted from the text)
    repeats: dict[str, list[Row]] = field(default_factory=dict)
    longest: int | None = None  # see ``room``

    @classmethod
    def of(cls, parsed: ParsedRows) -> Batch:
        """The batch of a chunk's good rows. Rows repeating an external id apply in file order as two
        imports would write them: each cell that is not empty replaces the earlier one, so the
        profile ends the same whatever the batch size."""
        ids = parsed.external_ids
        if len(set(ids)) == len(ids):
            return cls(ids, parsed.attributes, parsed.locales, parsed.timezones, lines=parsed.lines, keys=parsed.keys)
        given = Counter(ids)
        batch = cls(keys=parsed.keys)
        for row in zip(parsed.lines, ids, parsed.attributes, parsed.locales, parsed.timezones, strict=True):
            line, external_id, text, locale, tz = row
            if given[external_id] > 1:
                batch.repeats.setdefault(external_id, []).append((line, text, locale, tz))
            else:
                batch.add(external_id, text, locale, tz, line=line)
        return batch

    def add(self, external_id: str, attributes: str, locale: str | None, tz: str | None, *, line: int = 0) -> None:
        self.external_ids.append(external_id)
        self.attributes.append(attributes)
        self.locales.append(locale)
        self.timezones.append(tz)
        self.lines.append(line)

    def row(self, index: int) -> Row:
        line = self.lines[index] if self.lines else 0
        return line, self.attributes[index], self.locales[index], self.timezones[index]

    def __len__(self) -> int:
        return len(self.external_ids) + len(self.repeats)

    def room(self, *, key_chars: int) -> int:
        """How long a profile's attributes may be, in bytes of the database's JSON text, for any row of
        the batch to be sure to leave it within the profile limits; a longer one is measured.

        A profile of n attributes takes at least ``key_chars`` × n bytes, so one of at most
        ``key_chars`` × (MAX_ATTRIBUTES - the row's attributes) holds too few names to pass the
        limit. A character takes at most three times its UTF-8 bytes as ASCII JSON (``é`` is
        ``\\u00e9``), the size the limit measures; the row's own at most twelve times its characters
        (a character beyond U+FFFF is two escapes); and what two objects make together is no bigger
        than both.
        """
        if not self.attributes:
            return MAX_ATTRIBUTES_BYTES
        keys = self.keys if self.keys is not None else max(text.count(":") for text in self.attributes)
        if self.longest is None:
            self._measure_longest("".join(self.attributes))
        return min(key_chars * (MAX_ATTRIBUTES - keys), (MAX_ATTRIBUTES_BYTES - self.longest) // 3)

    def _measure_longest(self, joined: str) -> None:
        """Set ``longest``: the most bytes a row's attributes may take as ASCII JSON."""
        longest = max(map(len, self.attributes), default=0)
        self.longest = longest if joined.isascii() else 12 * longest

    def prepare_copy(self) -> None:
        """Render the rows as PostgreSQL COPY text now, so the writer only streams one string.

        Whole columns are checked for the characters COPY escapes; JSON text holds no tab or
        newline of its own, only backslashes. The longest row is measured here too (``room``).
        """
        joined = "".join(self.attributes)
        self._measure_longest(joined)
        self.copy_text = "".join(
            map(
                "{}\t{}\t{}\t{}\n".format,
                _copy_column(self.external_ids),
                self.attributes if "\\" not in joined else [a.replace("\\", "\\\\") for a in self.attributes],
                _copy_column(self.locales),
                _copy_column(self.timezones),
            )
        )


def _copy_column(values: list[str | None]) -> list[str]:
    """A column as COPY text fields: escaped where needed, None as NULL."""
    nulls = values.count(None)
    if nulls == len(values):
        return ["\\N"] * nulls
    present = [v for v in values if v is not None] if nulls else values
    if COPY_SPECIAL_RE.search("".join(present)):
        return list(map(_copy_escape, values))
    return ["\\N" if v is None else v for v in values] if nulls else values


def _copy_escape(value: str | None) -> str:
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value


# ``hold``: a row that only locks its profile (an id the batch repeats, ``Batch.repeats``), or
# creates it empty, so that the batch takes every lock of its profiles in its first statement.
STAGE_SQL = (
    "CREATE TEMP TABLE IF NOT EXISTS audiences_import_stage (external_id text NOT NULL, attributes jsonb NOT NULL, "
    "locale text, timezone text, hold boolean NOT NULL DEFAULT false) ON COMMIT DELETE ROWS"
)
# Rows that would change nothing are left out before the upsert: ON CONFLICT DO UPDATE locks
# (writes) every conflicting row even when its WHERE is false, so a re-import would rewrite the
# whole table. The rows are locked in the order every writer of profiles takes them in: the known
# profiles by id, then the new ones by external id (COLLATE "C": as Python sorts them, whatever
# the database's collation); a new profile's index insert then stays local.
UPSERT_PG = """
INSERT INTO audiences_profile AS p (external_id, attributes, locale, timezone, created_at, updated_at)
SELECT s.external_id, s.attributes, coalesce(s.locale, ''), coalesce(s.timezone, ''), %(now)s, %(now)s
FROM {source}
WHERE {changes}
ORDER BY s.known_id, s.external_id COLLATE "C"
ON CONFLICT (external_id) DO UPDATE SET
    attributes = p.attributes || EXCLUDED.attributes,
    locale = CASE WHEN EXCLUDED.locale = '' THEN p.locale ELSE EXCLUDED.locale END,
    timezone = CASE WHEN EXCLUDED.timezone = '' THEN p.timezone ELSE EXCLUDED.timezone END,
    updated_at = EXCLUDED.updated_at
{guard}"""
CHANGES = """(o.id IS NULL
   OR NOT (o.attributes @> s.attributes)
   OR (s.locale <> '' AND s.locale <> o.locale)
   OR (s.timezone <> '' AND s.timezone <> o.timezone))"""
# The profile limits (``attributes_limit_problem``) on the rows that change a profile: a profile
# whose JSON text is no longer than the batch's ``room`` cannot pass them by any row of the batch.
# A longer one is left alone by the upsert, which it locks all the same, so its length cannot change
# before it is measured: the statement returns how many rows it left alone, and ``write_batch``
# finds and measures those. Only the rows updating a profile pay for the length, never an insert
# or a row that changes nothing (a re-import).
LIMITS_GUARD = "octet_length(p.attributes::text) <= %(room)s"
PROFILES_GUARD = """WHERE (NOT (p.attributes @> EXCLUDED.attributes)
   OR (EXCLUDED.locale <> '' AND EXCLUDED.locale <> p.locale)
   OR (EXCLUDED.timezone <> '' AND EXCLUDED.timezone <> p.timezone))
"""
# Profiles only: the WHERE leaves alone a row another transaction changed to the same values
# meanwhile (counted as left alone: the rows found then are measured, and change nothing). A hold
# row gives nothing, so the WHERE leaves its profile alone too, locked; a new one is inserted.
PROFILES_PG = """
WITH staged AS (
    SELECT s.external_id, s.attributes, s.locale, s.timezone, s.hold, o.id AS known_id
    FROM audiences_import_stage s LEFT JOIN audiences_profile o ON o.external_id = s.external_id
    WHERE s.hold OR {changes}
), written AS ({upsert}RETURNING 1
)
SELECT (SELECT count(*) FROM staged WHERE NOT hold OR known_id IS NULL) - (SELECT count(*) FROM written)
"""  # noqa: S608 (constants)
# With a segment, one statement: the staged rows are matched to their profiles once, the rows
# that change are upserted, and the members are the ids the upsert returns plus the profiles
# that needed no write (``changes`` is NULL, not false, for a row without locale or time zone
# cells). Every row the upsert reaches within the limits' room is written, so each one returns
# its id, even one changed meanwhile to the same values. Members have no database constraint on
# their profile: every known profile of the batch is locked ``FOR KEY SHARE`` first (``known``), in
# id order, before the upsert writes any: a deletion (which locks its profiles first, by id) waits
# for the batch, and the batch never holds a profile it writes while it waits for one it leaves
# alone (a deletion holding that one and waiting for the other would wait in a circle). Locked,
# each row's changes are measured on its profile as it is now; one deleted meanwhile is no longer
# known: a row that changed it creates it again, one that left it alone is skipped (as measured
# before the deletion). A hold row goes through the upsert, which gives nothing to a known profile
# (``GIVES_SOMETHING``) and locks it, and inserts a new one: its first row lands in any case (a row
# is within the limits by itself), so it is a member; a known one's rows are measured first.
MEMBERS_PG = """
WITH known AS MATERIALIZED (
    SELECT s.external_id, s.attributes, s.locale, s.timezone, s.hold, o.id AS known_id, {changes} AS changes
    FROM audiences_import_stage s JOIN audiences_profile o ON o.external_id = s.external_id
    ORDER BY o.id
    FOR KEY SHARE OF o
), staged AS MATERIALIZED (
    SELECT * FROM known
    UNION ALL
    SELECT s.external_id, s.attributes, s.locale, s.timezone, s.hold, NULL, TRUE
    FROM audiences_import_stage s LEFT JOIN audiences_profile o ON o.external_id = s.external_id
    WHERE s.external_id NOT IN (SELECT external_id FROM known) AND (s.hold OR {changes})
), written AS ({upsert}RETURNING p.id
), kept AS (
    SELECT known_id AS id FROM staged
    WHERE changes IS NOT TRUE AND NOT hold AND known_id IS NOT NULL
), members AS (
    INSERT INTO audiences_segmentmember (segment_id, profile_id, added_at, source_import_id)
    SELECT %(segment)s, m.id, %(now)s, %(import)s
    FROM (SELECT id FROM written UNION ALL SELECT id FROM kept) m
    ORDER BY m.id
    ON CONFLICT (segment_id, profile_id) DO {{conflict}}
)
SELECT (SELECT count(*) FROM staged WHERE changes) - (SELECT count(*) FROM written)
"""  # noqa: S608 (constants)


# A row giving nothing changes nothing: a hold row leaves its known profile as it is.
GIVES_SOMETHING = "(EXCLUDED.attributes <> '{}' OR EXCLUDED.locale <> '' OR EXCLUDED.timezone <> '')"


def _statement_pg(*, segment: bool, measured: bool) -> str:
    """The batch's upsert on PostgreSQL; ``measured``: its rows were measured against the limits
    under the profiles' locks (``measured_rows``), so it writes them without the limits' guard."""
    if segment:
        gives = GIVES_SOMETHING.replace("{}", "{{}}")  # the statement is formatted once more, with its conflict
        guard = f"WHERE {gives}\n" if measured else f"WHERE {gives} AND {LIMITS_GUARD}\n"
        upsert = UPSERT_PG.format(source="staged s", changes="(s.changes OR s.hold)", guard=guard)
        return MEMBERS_PG.format(changes=CHANGES, upsert=upsert)
    guard = PROFILES_GUARD if measured else f"{PROFILES_GUARD}   AND {LIMITS_GUARD}\n"
    return PROFILES_PG.format(changes=CHANGES, upsert=UPSERT_PG.format(source="staged s", changes="TRUE", guard=guard))


STATEMENTS_PG = {
    (segment, measured): _statement_pg(segment=segment, measured=measured)
    for segment in (False, True)
    for measured in (False, True)
}
# The staged rows whose profile the limits' guard may have left alone (and those of others as long;
# profiles only: that would change it, the others were neither written nor locked). With a
# segment, also those whose profile is no member: one another writer created after the statement
# began, which the upsert found and, the row giving it nothing, left alone without returning it
# (and which the statement could not see to add it); measured and written again, it is known.
LEFT_ALONE_PG = """
SELECT s.external_id FROM audiences_import_stage s JOIN audiences_profile o ON o.external_id = s.external_id
WHERE NOT s.hold AND (octet_length(o.attributes::text) > %(room)s{also})
"""
LEFT_ALONE_ALSO = {
    "profiles": f" AND {CHANGES}",
    "segment": " OR NOT EXISTS (SELECT 1 FROM audiences_segmentmember m WHERE m.segment_id = %(segment)s "
    "AND m.profile_id = o.id)",
}
UPSERT_SQLITE = """
INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at)
VALUES (%s, %s, coalesce(%s, ''), coalesce(%s, ''), %s, %s)
ON CONFLICT (external_id) DO UPDATE SET
    attributes = json_patch(audiences_profile.attributes, excluded.attributes),
    locale = CASE WHEN excluded.locale = '' THEN audiences_profile.locale ELSE excluded.locale END,
    timezone = CASE WHEN excluded.timezone = '' THEN audiences_profile.timezone ELSE excluded.timezone END,
    updated_at = excluded.updated_at
WHERE json_patch(audiences_profile.attributes, excluded.attributes) <> json(audiences_profile.attributes)
   OR (excluded.locale <> '' AND excluded.locale <> audiences_profile.locale)
   OR (excluded.timezone <> '' AND excluded.timezone <> audiences_profile.timezone)
"""
MEMBERS_SQLITE = """
INSERT INTO audiences_segmentmember (segment_id, profile_id, added_at, source_import_id)
SELECT %s, id, %s, %s FROM audiences_profile WHERE external_id = %s
ON CONFLICT (segment_id, profile_id) DO {conflict}
"""
MEMBERS_TAKE_OVER = (
    "UPDATE SET source_import_id = excluded.source_import_id "
    "WHERE audiences_segmentmember.source_import_id IS DISTINCT FROM excluded.source_import_id"
)


SEGMENT_GONE = "The import's segment was deleted while the import ran."


def segment_members_lock(segment_id: int) -> None:
    """Hold the segment whose members a transaction writes (an import's batch, a replace import's
    removal of the members its file did not list) until it commits; ImportRefused when it no
    longer exists.

    Members reference their segment without a database constraint (its check cost a query per
    member): this one lock per batch stands for it. Deleting a segment locks it first
    (``segment_delete``), so a deletion waits for the batch and then removes its members too. The
    lock keeps the batches of other imports into the segment out until this one commits (``FOR NO
    KEY UPDATE``): a batch may add its members in two statements (its repeated ids and those it
    measured after the others), so two batches at once could each wait for a member the other
    added ('deadlock detected'). The key is left alone: rows referring to the segment are not held up.
    """
    # An UPDATE of a column outside the key takes the same lock (``FOR NO KEY UPDATE``) and marks the
    # segment changed as each batch lands: a journey reading it then sees at once that its members
    # are no longer the approved ones (``journeys.services.engine``), not when the import ends.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audiences_segment SET updated_at = %s WHERE id = %s", [dj_timezone.now(), segment_id])
        if cursor.rowcount == 0:
            raise ImportRefused(SEGMENT_GONE)


def write_batch(
    batch: Batch, *, now: dt.datetime, segment_id: int | None, import_id: int, replace: bool
) -> list[tuple[int, str, str]]:
    """Upsert the batch's profiles (attributes merged; unchanged rows untouched) and their memberships;
    return the rows refused by the profile limits as (line, external_id, reason).

    Runs inside the caller's transaction. On PostgreSQL: COPY into a temporary table, then one
    statement: INSERT ... ON CONFLICT for profiles, and with a segment its members from the ids
    that upsert returns. A row that would grow its profile past the limits the profile API holds
    (``attributes_limit_problem``) changes nothing and adds no member: the profiles a row may grow
    that far (the batch's ``room``), and those of ids given by several rows, are measured under
    their locks (``measured_rows``) and their good rows written after the others. That statement
    locks every profile the batch names (``UPSERT_PG``), ids it repeats included, so those
    written after it wait for no other writer: a batch never holds a lock another writer of
    profiles takes before one it still waits for (no deadlock).
    """
    if not len(batch):
        return []
    conflict = MEMBERS_TAKE_OVER if replace else "NOTHING"
    if segment_id is not None:
        segment_members_lock(segment_id)
    write = _write_pg if connection.vendor == "postgresql" else _write_sqlite
    options = {"now": now, "segment_id": segment_id, "import_id": import_id, "conflict": conflict}
    to_measure = write(batch, measured=False, **options)
    if not to_measure:
        return []
    good, refused = measured_rows(to_measure)
    write(good, measured=True, **options)
    return refused


def named_external_id(raw: str) -> str | None:
    """The external id a failed row names, or None when it names none readable (empty, too long,
    holding a NUL or bytes that did not decode)."""
    value = raw.strip()
    if not value or len(value) > 255 or SUSPECT_RE.search(value):
        return None
    return value


def segment_members_named(external_ids: list[str], *, segment_id: int, import_id: int) -> None:
    """Mark the members among ``external_ids`` as named by the replace import ``import_id``, so that
    its end keeps them; a profile that is no member is not added.

    For the rows of a replace import that failed: a row with a mistyped cell still names a profile
    the file meant to keep. Runs in the batch's transaction, the segment already held
    (``segment_members_lock``): the member rows it changes are those the import's own batches write.
    """
    ids = sorted(set(external_ids))
    for at in range(0, len(ids), 5000):  # within SQLite's parameters of one query
        profiles = Profile.objects.filter(external_id__in=ids[at : at + 5000]).values("id")
        SegmentMember.objects.filter(segment_id=segment_id, profile_id__in=profiles).exclude(
            source_import_id=import_id
        ).update(source_import_id=import_id)


def measured_rows(rows: dict[str, list[Row]]) -> tuple[Batch, list[tuple[int, str, str]]]:
    """Measure each row against the profile limits on its profile as the database holds it (locked
    until the transaction ends) and as the rows before it leave it, in order.

    Returns a batch of the good rows (those of one id given as one row, merged in order) and the
    refused ones as (line, external_id, reason), which change nothing, as the API's.
    """
    ids = sorted(rows)
    held: dict[str, dict] = {}
    for at in range(0, len(ids), 5000):  # within SQLite's parameters of one query
        # On PostgreSQL the batch's first statement locked them already; the key is left alone.
        profiles = Profile.objects.select_for_update(no_key=True).filter(external_id__in=ids[at : at + 5000])
        held.update(profiles.order_by("id").values_list("external_id", "attributes"))
    good = Batch()
    refused: list[tuple[int, str, str]] = []
    for external_id in ids:
        current = held.get(external_id) or {}
        given_all: dict = {}
        locale = tz = None
        landed = False
        for line, text, row_locale, row_tz in rows[external_id]:
            given = json.loads(text)
            if given:
                merged = {**current, **given}
                if problem := attributes_limit_problem(current, merged, given):
                    refused.append((line, external_id, f"attributes: {problem}."))
                    continue
                current = merged
                given_all.update(given)
            landed = True
            locale = row_locale or locale
            tz = row_tz or tz
        if landed:
            good.add(external_id, json_compact_utf8(given_all), locale, tz)
    refused.sort()
    return good, refused


def _write_pg(
    batch: Batch, *, measured: bool, now: dt.datetime, segment_id: int | None, import_id: int, conflict: str
) -> dict[str, list[Row]]:
    """Write the batch's rows on PostgreSQL; return the rows to measure (``measured_rows``) before
    writing them: those the limits' guard left alone and those of the ids the batch repeats."""
    to_measure = {} if measured else dict(batch.repeats)
    if not batch.external_ids and not to_measure:
        return to_measure
    with connection.cursor() as cursor:
        cursor.execute(STAGE_SQL)
        # The staging table has no statistics: without these the planner joins it to
        # profiles by hashing the whole profiles table, once per batch.
        cursor.execute("SET LOCAL enable_hashjoin = off")
        cursor.execute("SET LOCAL enable_mergejoin = off")
        # The batch's sort and the GIN index's pending-list merge (ten entries a row) each
        # spill to disk in the default 4 MB: measured, a third of the upsert's time.
        cursor.execute("SET LOCAL work_mem = '64MB'")
        if batch.copy_text is None:
            batch.prepare_copy()
        with cursor.cursor.copy(
            "COPY audiences_import_stage (external_id, attributes, locale, timezone) FROM STDIN"
        ) as copy:
            copy.write(batch.copy_text)
        if not measured and batch.repeats:
            with cursor.cursor.copy("COPY audiences_import_stage (external_id, attributes, hold) FROM STDIN") as copy:
                copy.write("".join(f"{_copy_escape(external_id)}\t{{}}\tt\n" for external_id in batch.repeats))
        room = None if measured else batch.room(key_chars=KEY_CHARS["postgresql"])
        statement = STATEMENTS_PG[segment_id is not None, measured]
        if segment_id is not None:
            statement = statement.format(conflict=conflict)
        cursor.execute(statement, {"now": now, "room": room, "segment": segment_id, "import": import_id})
        if cursor.fetchone()[0] and room is not None:
            also = LEFT_ALONE_ALSO["segment" if segment_id else "profiles"]
            cursor.execute(LEFT_ALONE_PG.format(also=also), {"room": room, "segment": segment_id})
            left_alone = [external_id for (external_id,) in cursor.fetchall()]
            if left_alone:
                index = {external_id: at for at, external_id in enumerate(batch.external_ids)}
                to_measure.update((external_id, [batch.row(index[external_id])]) for external_id in left_alone)
        cursor.execute("TRUNCATE audiences_import_stage")
    return to_measure


# The batch's profiles that a row may grow past the limits (as ``LIMITS_GUARD``): SQLite writes
# one transaction at a time, so they are measured before the upsert, which then leaves them out.
NEAR_LIMITS_SQLITE = """
SELECT external_id FROM audiences_profile
WHERE external_id IN (SELECT value FROM json_each(%s)) AND length(CAST(attributes AS BLOB)) > %s
"""


def _write_sqlite(
    batch: Batch, *, measured: bool, now: dt.datetime, segment_id: int | None, import_id: int, conflict: str
) -> dict[str, list[Row]]:
    """Write the batch's rows on SQLite; return the rows to measure (``measured_rows``) before
    writing them: those of profiles near the limits and those of the ids the batch repeats."""
    to_measure = {} if measured else dict(batch.repeats)
    rows = list(zip(batch.external_ids, batch.attributes, batch.locales, batch.timezones, strict=True))
    if not rows:
        return to_measure
    now = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        if not measured:
            room = batch.room(key_chars=KEY_CHARS["sqlite"])
            cursor.execute(NEAR_LIMITS_SQLITE, [json.dumps(batch.external_ids), room])
            near = {external_id for (external_id,) in cursor.fetchall()}
            if near:
                to_measure.update((row[0], [batch.row(at)]) for at, row in enumerate(rows) if row[0] in near)
                rows = [row for row in rows if row[0] not in near]
        cursor.executemany(UPSERT_SQLITE, [(*row, now, now) for row in rows])
        if segment_id is not None:
            cursor.executemany(
                MEMBERS_SQLITE.format(conflict=conflict),
                [(segment_id, now, import_id, row[0]) for row in rows],
            )
    return to_measure
