"""The rule language of segments: its schema, its validation and its compiler to one SQL query.

A rule tree is JSON. Every node is one of:

* a group: ``{"all": [...]}``, ``{"any": [...]}`` or ``{"none": [...]}`` (at least one child);
* a profile column: ``{"field": "locale", "op": "eq", "value": "fr-FR"}``
  (``external_id``, ``locale``, ``timezone``: strings; ``created_at``, ``updated_at``,
  ``last_seen_at``: dates);
* a profile attribute: ``{"attribute": "plan", "type": "string", "op": "in", "value": ["pro", "team"]}``;
* an event: ``{"event": "purchase", "did": true, "min_count": 2, "within_days": 30,
  "where": [{"property": "amount", "type": "number", "op": "gte", "value": 50}]}``
  ("did / did not do ``purchase`` [where ...] at least 2 times in the last 30 days");
* membership of another segment: ``{"segment": 12, "member": true}``;
* reachability: ``{"reachable": {"app": 3, "platform": "ios"}}`` (an active, opted-in device
  of that app; ``platform`` may be omitted for any platform).

Types and their operators:

=========  ======================================================================
string     eq ne in not_in contains starts_with exists not_exists
number     eq ne lt lte gt gte between in not_in exists not_exists
boolean    eq ne exists not_exists
date       eq ne lt lte gt gte between exists not_exists
=========  ======================================================================

Semantics, chosen so that every condition is plainly true or false for every profile:

* ``ne``, ``not_in`` and ``not_exists`` are the negations of ``eq``, ``in`` and ``exists``: a
  profile without the attribute matches them. Every other operator needs the attribute to be
  present *with the condition's type* (the string ``"42"`` is not the number 42).
* ``eq`` is exact; ``contains`` and ``starts_with`` ignore case.
* Dates compare by calendar day (UTC). A date value is ``"YYYY-MM-DD"`` or relative:
  ``{"ago": 7, "unit": "days"}`` (``days`` or ``weeks``), so "in the last 7 days" is
  ``{"op": "gte", "value": {"ago": 7, "unit": "days"}}``. Date attributes are ISO 8601 strings
  (``2026-03-01`` or ``2026-03-01T10:00:00Z``); ``between`` includes both ends.

Profile attributes and event properties are compiled to PostgreSQL JSONB (``@>`` for equality,
served by the GIN index) or SQLite JSON1 (``json_extract``), each in the same single query.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.apps import apps
from django.core.exceptions import ValidationError
from django.db import models

from audiences.models import Segment

MAX_DEPTH = 10
MAX_LIST = 1000
MAX_STRING = 1000
GROUPS = ("all", "any", "none")
TYPES = ("string", "number", "boolean", "date")
OPERATORS: dict[str, tuple[str, ...]] = {
    "string": ("eq", "ne", "in", "not_in", "contains", "starts_with", "exists", "not_exists"),
    "number": ("eq", "ne", "lt", "lte", "gt", "gte", "between", "in", "not_in", "exists", "not_exists"),
    "boolean": ("eq", "ne", "exists", "not_exists"),
    "date": ("eq", "ne", "lt", "lte", "gt", "gte", "between", "exists", "not_exists"),
}
OPERATOR_LABELS = {
    "eq": "is",
    "ne": "is not",
    "in": "is one of",
    "not_in": "is none of",
    "contains": "contains",
    "starts_with": "starts with",
    "lt": "is less than / before",
    "lte": "is at most / on or before",
    "gt": "is more than / after",
    "gte": "is at least / on or after",
    "between": "is between",
    "exists": "is set",
    "not_exists": "is not set",
}
COLUMNS: dict[str, str] = {
    "external_id": "string",
    "locale": "string",
    "timezone": "string",
    "created_at": "date",
    "updated_at": "date",
    "last_seen_at": "date",
}
RELATIVE_UNITS = {"days": 1, "weeks": 7}
PLATFORMS = ("ios", "android")
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}\Z")
# A day as ISO 8601 writes it, in ASCII digits: \d takes every script's digits in Python, and in
# PostgreSQL under an ICU locale ("٢٠٢٦-٠٦-١٠", "２０２６-06-10"), which no date reader takes. The
# same pattern in both; the compiler's PostgreSQL guard is the start of a value (a time may follow).
DAY_PATTERN = "[0-9]{4}-[0-9]{2}-[0-9]{2}"
DATE_RE = re.compile(rf"^{DAY_PATTERN}\Z")
NODE_KEYS = {
    "field": {"field", "op", "value"},
    "attribute": {"attribute", "type", "op", "value"},
    "event": {"event", "did", "min_count", "within_days", "where"},
    "segment": {"segment", "member"},
    "reachable": {"reachable"},
}
NODE_KINDS = (*GROUPS, *NODE_KEYS)
NO_VALUE_OPS = ("exists", "not_exists")


@dataclass(frozen=True)
class RuleError:
    """One broken rule: where in the tree (``rules.all[1].value``), which rule, and a sentence."""

    path: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RulesInvalid(ValidationError):
    """A rule tree that breaks the schema. ``errors`` lists every broken rule, path first."""

    def __init__(self, errors: list[RuleError]):
        self.errors = errors
        super().__init__([ValidationError(str(e), code=e.code) for e in errors])

    def held_no_longer(self) -> str:
        """Why a segment's saved rules read no one (saved before a check existed, or written by a
        migration), each broken rule by its path: what a send or a journey's entry records."""
        return f"The segment's rules no longer hold ({'; '.join(map(str, self.errors))})"


SegmentLoader = Callable[[Iterable[int]], dict[int, Segment]]


def _load_segments(ids: Iterable[int]) -> dict[int, Segment]:
    return {s.pk: s for s in Segment.objects.filter(pk__in=list(ids)).only("id", "name", "kind", "rules")}


def device_model() -> type[models.Model] | None:
    """The delivery app's Device model, or None while it does not exist yet.

    Reachability expects: ``profile`` (FK to Profile, related_name ``devices``), ``app`` (FK to
    delivery.App), ``platform`` ("ios" / "android"), ``push_enabled`` and ``active`` (booleans).
    """
    try:
        return apps.get_model("delivery", "Device")
    except LookupError:
        return None


def rule_nodes(tree):
    """Every node of a rule tree that is an object (groups and conditions), in no particular order."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        for group in GROUPS:
            if isinstance(node.get(group), list):
                stack.extend(node[group])
        yield node


def segment_references(tree) -> set[int]:
    """The ids of the segments whose membership the tree uses (well-formed nodes only)."""
    found: set[int] = set()
    for node in rule_nodes(tree):
        ref = node.get("segment")
        if isinstance(ref, int) and not isinstance(ref, bool):
            found.add(ref)
    return found


def app_references(tree) -> set[int]:
    """The ids of the apps the tree's reachability conditions name (well-formed nodes only)."""
    found: set[int] = set()
    for node in rule_nodes(tree):
        reachable = node.get("reachable")
        if isinstance(reachable, dict) and type(reachable.get("app")) is int:
            found.add(reachable["app"])
    return found


def resolve_date(value, *, today: dt.date) -> dt.date:
    """A rule's date value ("YYYY-MM-DD" or {"ago": N, "unit": "days"}) as a calendar day."""
    if isinstance(value, str):
        return dt.date.fromisoformat(value)
    return today - dt.timedelta(days=value["ago"] * RELATIVE_UNITS[value.get("unit", "days")])
