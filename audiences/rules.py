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
from django.db.models import Count, Exists, OuterRef, Q, Subquery, Value
from django.db.models.expressions import Expression
from django.db.models.functions import Coalesce
from django.db.models.lookups import (
    Exact,
    GreaterThan,
    GreaterThanOrEqual,
    IContains,
    In,
    IStartsWith,
    LessThan,
    LessThanOrEqual,
)
from django.utils import timezone

from audiences.models import Event, Profile, Segment, SegmentMember

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
KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
NODE_KEYS = {
    "field": {"field", "op", "value"},
    "attribute": {"attribute", "type", "op", "value"},
    "event": {"event", "did", "min_count", "within_days", "where"},
    "segment": {"segment", "member"},
    "reachable": {"reachable"},
}
NODE_KINDS = (*GROUPS, *NODE_KEYS)
NO_VALUE_OPS = ("exists", "not_exists")


# --- errors ----------------------------------------------------------------------------------


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


# --- validation ------------------------------------------------------------------------------


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


class _Validator:
    def __init__(self, *, segment_id: int | None, allowed_segment_ids: set[int] | None, load: SegmentLoader):
        self.segment_id = segment_id
        self.allowed_segment_ids = allowed_segment_ids
        self.load = load
        self.errors: list[RuleError] = []
        self.segment_refs: dict[int, str] = {}  # referenced segment id -> path of its first use
        self.app_refs: dict[int, str] = {}

    def fail(self, path: str, code: str, message: str) -> None:
        self.errors.append(RuleError(path, code, message))

    def node(self, node, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.fail(path, "too_deep", f"the tree is nested deeper than {MAX_DEPTH} levels")
            return
        if not isinstance(node, dict):
            self.fail(path, "wrong_type", f"a node must be an object, not {_json_type(node)}")
            return
        kinds = [k for k in NODE_KINDS if k in node]
        if len(kinds) != 1:
            if not kinds:
                unknown = sorted(set(node) - {"op", "value", "type"})
                hint = f" (unknown key {unknown[0]!r})" if unknown else ""
                self.fail(path, "unknown_node", f"a node needs one of {', '.join(NODE_KINDS)}{hint}")
            else:
                self.fail(path, "ambiguous_node", f"a node has exactly one of {', '.join(kinds)}, not several")
            return
        kind = kinds[0]
        if kind in GROUPS:
            self.group(node, kind, path, depth)
            return
        unknown = sorted(set(node) - NODE_KEYS[kind])
        for key in unknown:
            self.fail(f"{path}.{key}", "unknown_key", f"unknown key {key!r} in a {kind} condition")
        getattr(self, kind)(node, path)

    def group(self, node, kind: str, path: str, depth: int) -> None:
        extra = sorted(set(node) - {kind})
        for key in extra:
            self.fail(f"{path}.{key}", "unknown_key", f"unknown key {key!r} in a group")
        children = node[kind]
        here = f"{path}.{kind}"
        if not isinstance(children, list):
            self.fail(here, "wrong_type", f"a group's children must be a list, not {_json_type(children)}")
            return
        if not children:
            self.fail(here, "empty_group", f"the group '{kind}' is empty: add at least one condition")
            return
        for index, child in enumerate(children):
            self.node(child, f"{here}[{index}]", depth + 1)

    def field(self, node, path: str) -> None:
        name = node["field"]
        if not isinstance(name, str) or name not in COLUMNS:
            self.fail(
                f"{path}.field",
                "unknown_field",
                f"unknown field {name!r}; use one of {', '.join(COLUMNS)} (or 'attribute' for custom fields)",
            )
            return
        self.comparison(node, path, COLUMNS[name])

    def attribute(self, node, path: str, key_name: str = "attribute") -> None:
        name = node[key_name]
        if not isinstance(name, str) or not KEY_RE.match(name):
            self.fail(
                f"{path}.{key_name}",
                "invalid_name",
                f"{name!r} is not a valid {key_name} name (letters, digits, _ . : -; at most 100)",
            )
            return
        op = node.get("op")
        value_type = node.get("type")
        if value_type is None and op in NO_VALUE_OPS:
            value_type = "string"  # presence does not depend on the type
        if value_type not in TYPES:
            self.fail(
                f"{path}.type",
                "unknown_type" if value_type is not None else "required",
                f"unknown type {value_type!r}; use one of {', '.join(TYPES)}"
                if value_type is not None
                else f"the type is required; use one of {', '.join(TYPES)}",
            )
            return
        self.comparison(node, path, value_type)

    def comparison(self, node, path: str, value_type: str) -> None:
        op = node.get("op")
        if op not in OPERATORS[value_type]:
            self.fail(
                f"{path}.op",
                "unknown_operator" if op is not None else "required",
                f"unknown operator {op!r} for a {value_type}; use one of {', '.join(OPERATORS[value_type])}"
                if op is not None
                else f"the operator is required; use one of {', '.join(OPERATORS[value_type])}",
            )
            return
        where = f"{path}.value"
        value = node.get("value")
        if op in NO_VALUE_OPS:
            if value is not None:
                self.fail(where, "unexpected_value", f"'{op}' takes no value")
            return
        if "value" not in node:
            self.fail(where, "required", f"'{op}' needs a value")
            return
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                self.fail(where, "wrong_type", f"'{op}' needs a non-empty list of {value_type}s")
                return
            if len(value) > MAX_LIST:
                self.fail(where, "too_long", f"'{op}' takes at most {MAX_LIST} values")
                return
            for index, item in enumerate(value):
                self.scalar(item, f"{where}[{index}]", value_type)
            return
        if op == "between":
            if not isinstance(value, list) or len(value) != 2:
                self.fail(where, "wrong_type", "'between' needs a list of two values: [low, high]")
                return
            ok = self.scalar(value[0], f"{where}[0]", value_type) and self.scalar(value[1], f"{where}[1]", value_type)
            if ok and _order_key(value[0], value_type) > _order_key(value[1], value_type):
                self.fail(where, "wrong_order", "'between' needs the low end first")
            return
        self.scalar(value, where, value_type)

    def scalar(self, value, path: str, value_type: str) -> bool:
        if value_type == "string":
            if not isinstance(value, str):
                self.fail(path, "wrong_type", f"expected a string, got {_json_type(value)}")
                return False
            if len(value) > MAX_STRING:
                self.fail(path, "too_long", f"a string value has at most {MAX_STRING} characters")
                return False
            return True
        if value_type == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self.fail(path, "wrong_type", f"expected a number, got {_json_type(value)}")
                return False
            return True
        if value_type == "boolean":
            if not isinstance(value, bool):
                self.fail(path, "wrong_type", f"expected true or false, got {_json_type(value)}")
                return False
            return True
        # date
        if isinstance(value, str):
            if DATE_RE.match(value):
                try:
                    dt.date.fromisoformat(value)
                    return True
                except ValueError:
                    pass
            self.fail(
                path, "wrong_type", f"expected a date 'YYYY-MM-DD' or {{'ago': N, 'unit': 'days'}}, got {value!r}"
            )
            return False
        if isinstance(value, dict):
            ago, unit = value.get("ago"), value.get("unit", "days")
            extra = sorted(set(value) - {"ago", "unit"})
            if extra:
                self.fail(path, "unknown_key", f"unknown key {extra[0]!r} in a relative date; use 'ago' and 'unit'")
                return False
            if isinstance(ago, bool) or not isinstance(ago, int) or not 0 <= ago <= 36500:
                self.fail(path, "wrong_type", "a relative date needs 'ago': a whole number of units, 0 to 36500")
                return False
            if unit not in RELATIVE_UNITS:
                self.fail(path, "unknown_unit", f"unknown unit {unit!r}; use one of {', '.join(RELATIVE_UNITS)}")
                return False
            return True
        self.fail(
            path, "wrong_type", f"expected a date 'YYYY-MM-DD' or {{'ago': N, 'unit': 'days'}}, got {_json_type(value)}"
        )
        return False

    def event(self, node, path: str) -> None:
        name = node["event"]
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            self.fail(
                f"{path}.event", "wrong_type", "the event name must be a non-empty string of at most 100 characters"
            )
        did = node.get("did", True)
        if not isinstance(did, bool):
            self.fail(f"{path}.did", "wrong_type", f"'did' must be true or false, got {_json_type(did)}")
        min_count = node.get("min_count", 1)
        if isinstance(min_count, bool) or not isinstance(min_count, int) or not 1 <= min_count <= 1_000_000:
            self.fail(f"{path}.min_count", "wrong_type", "'min_count' must be a whole number from 1 to 1000000")
        within = node.get("within_days")
        if within is not None and (isinstance(within, bool) or not isinstance(within, int) or not 1 <= within <= 36500):
            self.fail(
                f"{path}.within_days", "wrong_type", "'within_days' must be a whole number of days from 1 to 36500"
            )
        where = node.get("where", [])
        if not isinstance(where, list):
            self.fail(
                f"{path}.where", "wrong_type", f"'where' must be a list of property conditions, not {_json_type(where)}"
            )
            return
        for index, cond in enumerate(where):
            here = f"{path}.where[{index}]"
            if not isinstance(cond, dict) or "property" not in cond:
                self.fail(
                    here, "wrong_type", "a property condition is an object with 'property', 'type', 'op', 'value'"
                )
                continue
            for key in sorted(set(cond) - {"property", "type", "op", "value"}):
                self.fail(f"{here}.{key}", "unknown_key", f"unknown key {key!r} in a property condition")
            self.attribute(cond, here, key_name="property")

    def segment(self, node, path: str) -> None:
        segment_id = node["segment"]
        member = node.get("member", True)
        if not isinstance(member, bool):
            self.fail(f"{path}.member", "wrong_type", f"'member' must be true or false, got {_json_type(member)}")
        if isinstance(segment_id, bool) or not isinstance(segment_id, int):
            self.fail(f"{path}.segment", "wrong_type", f"'segment' must be a segment id, got {_json_type(segment_id)}")
            return
        if self.segment_id is not None and segment_id == self.segment_id:
            self.fail(f"{path}.segment", "cycle", "a segment cannot use its own membership (cycle between segments)")
            return
        self.segment_refs.setdefault(segment_id, f"{path}.segment")

    def reachable(self, node, path: str) -> None:
        spec = node["reachable"]
        here = f"{path}.reachable"
        if not isinstance(spec, dict):
            self.fail(here, "wrong_type", "'reachable' must be an object: {'app': id, 'platform': 'ios'|'android'}")
            return
        for key in sorted(set(spec) - {"app", "platform"}):
            self.fail(f"{here}.{key}", "unknown_key", f"unknown key {key!r} in 'reachable'")
        app_id = spec.get("app")
        if isinstance(app_id, bool) or not isinstance(app_id, int):
            self.fail(f"{here}.app", "wrong_type", f"'app' must be an app id, got {_json_type(app_id)}")
        else:
            self.app_refs.setdefault(app_id, f"{here}.app")
        platform = spec.get("platform")
        if platform is not None and platform not in PLATFORMS:
            self.fail(f"{here}.platform", "unknown_platform", f"unknown platform {platform!r}; use ios or android")
        if device_model() is None:
            self.fail(
                here,
                "unavailable",
                "reachability needs devices, which this installation does not have yet (delivery.Device)",
            )

    def references(self) -> None:
        """Check referenced segments exist, may be used, and do not lead back to this segment."""
        if not self.segment_refs:
            return
        found = self.load(self.segment_refs)
        for segment_id, path in self.segment_refs.items():
            allowed = self.allowed_segment_ids is None or segment_id in self.allowed_segment_ids
            if segment_id not in found or not allowed:
                self.fail(path, "unknown_segment", f"there is no segment {segment_id} you may use")
        if self.segment_id is None:
            return  # a segment not saved yet cannot be referenced by anything
        for segment_id, path in self.segment_refs.items():
            if segment_id in found:
                chain = _path_to(self.segment_id, found[segment_id], self.load)
                if chain:
                    names = " → ".join(str(i) for i in [self.segment_id, *chain])
                    self.fail(path, "cycle", f"cycle between segments: {names}")

    def apps(self) -> None:
        if not self.app_refs:
            return
        try:
            app_model = apps.get_model("delivery", "App")
        except LookupError:
            return
        known = set(app_model.objects.filter(pk__in=list(self.app_refs)).values_list("pk", flat=True))
        for app_id, path in self.app_refs.items():
            if app_id not in known:
                self.fail(path, "unknown_app", f"there is no app {app_id}")


def _path_to(goal: int, start: Segment, load: SegmentLoader) -> list[int]:
    """The chain of segment ids from ``start`` to ``goal`` through membership conditions, or []."""
    frontier: list[tuple[Segment, list[int]]] = [(start, [start.pk])]
    seen = {start.pk}
    while frontier:
        wanted: dict[int, list[int]] = {}
        for segment, chain in frontier:
            if segment.kind != Segment.Kind.RULES or not segment.rules:
                continue
            for ref in segment_references(segment.rules):
                if ref == goal:
                    return [*chain, goal]
                if ref not in seen:
                    seen.add(ref)
                    wanted[ref] = [*chain, ref]
        loaded = load(wanted) if wanted else {}
        frontier = [(loaded[i], wanted[i]) for i in wanted if i in loaded]
    return []


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _order_key(value, value_type: str):
    if value_type == "date":
        return resolve_date(value, today=timezone.now().date())
    return value


def segment_references(tree) -> set[int]:
    """The ids of the segments whose membership the tree uses (well-formed nodes only)."""
    found: set[int] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        for group in GROUPS:
            if isinstance(node.get(group), list):
                stack.extend(node[group])
        ref = node.get("segment")
        if isinstance(ref, int) and not isinstance(ref, bool):
            found.add(ref)
    return found


def rules_validate(
    tree,
    *,
    segment_id: int | None = None,
    allowed_segment_ids: set[int] | None = None,
    load: SegmentLoader = _load_segments,
) -> set[int]:
    """Check a rule tree against the schema; return the ids of the segments it references.

    ``segment_id`` is the segment the tree belongs to (for cycle detection);
    ``allowed_segment_ids``, when given, are the segments the author may use.
    Raises RulesInvalid listing every broken rule with its path in the tree.
    """
    validator = _Validator(segment_id=segment_id, allowed_segment_ids=allowed_segment_ids, load=load)
    validator.node(tree, "rules", 1)
    if not validator.errors:
        validator.references()
        validator.apps()
    if validator.errors:
        raise RulesInvalid(validator.errors)
    return set(validator.segment_refs)


# --- compiler --------------------------------------------------------------------------------


def resolve_date(value, *, today: dt.date) -> dt.date:
    """A rule's date value ("YYYY-MM-DD" or {"ago": N, "unit": "days"}) as a calendar day."""
    if isinstance(value, str):
        return dt.date.fromisoformat(value)
    return today - dt.timedelta(days=value["ago"] * RELATIVE_UNITS[value.get("unit", "days")])


class JsonValue(Expression):
    """The value under ``key`` of a JSON column, as an SQL value of ``value_type``.

    NULL when the key is missing or holds another JSON type, so "age > 30" never matches the
    string "forty" (and never fails on it). Dates are the first ten characters (the day) of
    an ISO 8601 string.
    """

    def __init__(self, column: str, key: str, value_type: str):
        output = {
            "string": models.TextField(),
            "number": models.FloatField(),
            "boolean": models.BooleanField(),
            "date": models.TextField(),
        }[value_type]
        super().__init__(output_field=output)
        self.column = models.F(column)
        self.key = key
        self.value_type = value_type

    def get_source_expressions(self):
        return [self.column]

    def set_source_expressions(self, exprs):
        (self.column,) = exprs

    def as_postgresql(self, compiler, connection):
        col, params = compiler.compile(self.column)
        key = [self.key]
        if self.value_type == "string":
            sql = f"(CASE WHEN jsonb_typeof({col} -> %s) = 'string' THEN {col} ->> %s END)"
            return sql, [*params, *key, *params, *key]
        if self.value_type == "number":
            sql = f"(CASE WHEN jsonb_typeof({col} -> %s) = 'number' THEN ({col} ->> %s)::float8 END)"
            return sql, [*params, *key, *params, *key]
        if self.value_type == "boolean":
            sql = f"(CASE WHEN jsonb_typeof({col} -> %s) = 'boolean' THEN ({col} ->> %s)::boolean END)"
            return sql, [*params, *key, *params, *key]
        sql = (
            f"(CASE WHEN jsonb_typeof({col} -> %s) = 'string' AND ({col} ->> %s) ~ '^\\d{{4}}-\\d{{2}}-\\d{{2}}' "
            f"THEN left({col} ->> %s, 10) END)"
        )
        return sql, [*params, *key, *params, *key, *params, *key]

    def as_sqlite(self, compiler, connection):
        col, params = compiler.compile(self.column)
        path = [_sqlite_path(self.key)]
        if self.value_type == "string":
            sql = f"(CASE WHEN json_type({col}, %s) = 'text' THEN json_extract({col}, %s) END)"
            return sql, [*params, *path, *params, *path]
        if self.value_type == "number":
            sql = f"(CASE WHEN json_type({col}, %s) IN ('integer', 'real') THEN json_extract({col}, %s) END)"
            return sql, [*params, *path, *params, *path]
        if self.value_type == "boolean":
            sql = f"(CASE json_type({col}, %s) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)"
            return sql, [*params, *path]
        sql = (
            f"(CASE WHEN json_type({col}, %s) = 'text' AND json_extract({col}, %s) "
            "GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*' "
            f"THEN substr(json_extract({col}, %s), 1, 10) END)"
        )
        return sql, [*params, *path, *params, *path, *params, *path]


class JsonHasKey(Expression):
    """True when the JSON column holds a non-null value under ``key`` (never NULL itself)."""

    conditional = True

    def __init__(self, column: str, key: str):
        super().__init__(output_field=models.BooleanField())
        self.column = models.F(column)
        self.key = key

    def get_source_expressions(self):
        return [self.column]

    def set_source_expressions(self, exprs):
        (self.column,) = exprs

    def as_postgresql(self, compiler, connection):
        col, params = compiler.compile(self.column)
        return f"(coalesce(jsonb_typeof({col} -> %s), 'null') <> 'null')", [*params, self.key]

    def as_sqlite(self, compiler, connection):
        col, params = compiler.compile(self.column)
        return f"(coalesce(json_type({col}, %s), 'null') <> 'null')", [*params, _sqlite_path(self.key)]


class JsonContains(Expression):
    """PostgreSQL ``column @> {key: value, ...}``: exact JSON equality that the GIN index serves."""

    conditional = True

    def __init__(self, column: str, document: dict):
        super().__init__(output_field=models.BooleanField())
        self.column = models.F(column)
        self.document = document

    def get_source_expressions(self):
        return [self.column]

    def set_source_expressions(self, exprs):
        (self.column,) = exprs

    def as_sql(self, compiler, connection):
        import json

        col, params = compiler.compile(self.column)
        return f"({col} @> %s::jsonb)", [*params, json.dumps(self.document)]


def _merge_equalities(children: list) -> tuple[dict, list]:
    """Fold an 'all' group's attribute equalities into one containment document (one GIN probe).

    Returns ({} , children) when fewer than two conditions can be folded.
    """
    document: dict = {}
    rest = []
    for child in children:
        mergeable = (
            isinstance(child, dict)
            and "attribute" in child
            and child.get("op") == "eq"
            and child.get("type") in ("string", "number", "boolean")
            and child["attribute"] not in document
        )
        if mergeable:
            document[child["attribute"]] = child["value"]
        else:
            rest.append(child)
    if len(document) < 2:
        return {}, children
    return document, rest


def _sqlite_path(key: str) -> str:
    return f'$."{key}"'  # KEY_RE allows no quote, so the key cannot break out of the path


def _total(condition) -> Q:
    """Make a condition that may be NULL plainly true or false, so NOT and 'none' behave."""
    return Q(Coalesce(condition, Value(False), output_field=models.BooleanField()))


class Compiler:
    """Turns a validated rule tree into a Q over Profile. Segment references are loaded up front."""

    def __init__(
        self, *, now: dt.datetime | None = None, load: SegmentLoader = _load_segments, correlated: bool = False
    ):
        # correlated: count events per outer profile (cheap for one profile, e.g. its admin page)
        # instead of grouping every matching event once (cheap for a whole segment).
        self.correlated = correlated
        self.now = now or timezone.now()
        self.today = self.now.astimezone(dt.UTC).date()
        self.load = load
        self.segments: dict[int, Segment] = {}

    def prepare(self, tree) -> None:
        """Load every segment the tree uses, level by level (one query per level of nesting)."""
        wanted = segment_references(tree) - set(self.segments)
        depth = 0
        while wanted:
            depth += 1
            if depth > MAX_DEPTH:
                raise RulesInvalid([RuleError("rules", "too_deep", "segments reference each other too deeply")])
            loaded = self.load(wanted)
            self.segments.update(loaded)
            wanted = set()
            for segment in loaded.values():
                if segment.kind == Segment.Kind.RULES and segment.rules:
                    wanted |= segment_references(segment.rules)
            wanted -= set(self.segments)

    def compile(self, tree, *, stack: tuple[int, ...] = ()) -> Q:
        self.prepare(tree)
        return self.node(tree, stack)

    def node(self, node: dict, stack: tuple[int, ...]) -> Q:
        for group in GROUPS:
            if group in node:
                children = node[group]
                parts = []
                if group == "all" and self._vendor() == "postgresql":
                    merged, children = _merge_equalities(children)
                    if merged:
                        parts.append(Q(JsonContains("attributes", merged)))
                parts += [self.node(child, stack) for child in children]
                combined = parts[0]
                for part in parts[1:]:
                    combined = (combined & part) if group == "all" else (combined | part)
                return ~combined if group == "none" else combined
        if "field" in node:
            return self.column(node)
        if "attribute" in node:
            return self.json_condition("attributes", node["attribute"], node)
        if "event" in node:
            return self.event(node)
        if "segment" in node:
            return self.membership(node, stack)
        if "reachable" in node:
            return self.reachable(node["reachable"])
        raise RulesInvalid([RuleError("rules", "unknown_node", f"cannot compile {node!r}")])

    # profile columns: plain lookups (Django keeps NOT right on the nullable last_seen_at)
    def column(self, node: dict) -> Q:
        name, op, value = node["field"], node["op"], node.get("value")
        if COLUMNS[name] == "string":
            if op == "exists":
                return ~Q(**{name: ""})
            if op == "not_exists":
                return Q(**{name: ""})
            lookup = {"eq": "exact", "ne": "exact", "in": "in", "not_in": "in"}.get(op) or {
                "contains": "icontains",
                "starts_with": "istartswith",
            }[op]
            q = Q(**{f"{name}__{lookup}": value})
            return ~q if op in ("ne", "not_in") else q
        # dates: by calendar day, UTC
        if op == "exists":
            return Q(**{f"{name}__isnull": False})
        if op == "not_exists":
            return Q(**{f"{name}__isnull": True})

        def start(day: dt.date) -> dt.datetime:
            return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)

        if op == "between":
            low, high = (resolve_date(v, today=self.today) for v in value)
            return Q(**{f"{name}__gte": start(low), f"{name}__lt": start(high + dt.timedelta(days=1))})
        day = resolve_date(value, today=self.today)
        next_day = start(day + dt.timedelta(days=1))
        if op in ("eq", "ne"):
            q = Q(**{f"{name}__gte": start(day), f"{name}__lt": next_day})
            return ~q if op == "ne" else q
        return {
            "lt": Q(**{f"{name}__lt": start(day)}),
            "lte": Q(**{f"{name}__lt": next_day}),
            "gt": Q(**{f"{name}__gte": next_day}),
            "gte": Q(**{f"{name}__gte": start(day)}),
        }[op]

    # attributes (and event properties): typed JSON values
    def json_condition(self, column: str, key: str, node: dict) -> Q:
        op, value = node["op"], node.get("value")
        value_type = node.get("type") or "string"
        if op == "exists":
            return Q(JsonHasKey(column, key))
        if op == "not_exists":
            return ~Q(JsonHasKey(column, key))
        if op in ("ne", "not_in"):
            return ~self.json_condition(column, key, {**node, "op": {"ne": "eq", "not_in": "in"}[op]})
        postgres = self._vendor() == "postgresql"
        if value_type != "date" and postgres and op in ("eq", "in"):
            values = [value] if op == "eq" else value
            combined = Q(JsonContains(column, {key: values[0]}))
            for item in values[1:]:
                combined |= Q(JsonContains(column, {key: item}))
            return combined
        expr = JsonValue(column, key, value_type)
        if value_type == "date":
            return self.json_date(expr, op, value)
        if op == "eq":
            return _total(Exact(expr, value))
        if op == "in":
            return _total(In(expr, list(value)))
        if op == "contains":
            return _total(IContains(expr, value))
        if op == "starts_with":
            return _total(IStartsWith(expr, value))
        if op == "between":
            return _total(GreaterThanOrEqual(expr, value[0])) & _total(LessThanOrEqual(expr, value[1]))
        cls = {"lt": LessThan, "lte": LessThanOrEqual, "gt": GreaterThan, "gte": GreaterThanOrEqual}[op]
        return _total(cls(expr, value))

    def json_date(self, expr: JsonValue, op: str, value) -> Q:
        if op == "between":
            low, high = (resolve_date(v, today=self.today).isoformat() for v in value)
            return _total(GreaterThanOrEqual(expr, low)) & _total(LessThanOrEqual(expr, high))
        day = resolve_date(value, today=self.today).isoformat()
        cls = {
            "eq": Exact,
            "lt": LessThan,
            "lte": LessThanOrEqual,
            "gt": GreaterThan,
            "gte": GreaterThanOrEqual,
        }[op]
        return _total(cls(expr, day))

    def event(self, node: dict) -> Q:
        events = Event.objects.filter(name=node["event"]).order_by()
        if node.get("within_days"):
            events = events.filter(occurred_at__gte=self.now - dt.timedelta(days=node["within_days"]))
        for cond in node.get("where", []):
            events = events.filter(self.json_condition("properties", cond["property"], cond))
        min_count = node.get("min_count", 1)
        if min_count <= 1:
            q = Q(Exists(events.filter(profile=OuterRef("pk"))))
        elif self.correlated:
            counted = events.filter(profile=OuterRef("pk")).values("profile_id").annotate(n=Count("*")).values("n")
            q = _total(GreaterThanOrEqual(Subquery(counted), min_count))
        else:
            counted = events.values("profile_id").annotate(n=Count("*")).filter(n__gte=min_count)
            q = Q(pk__in=counted.values("profile_id"))
        return q if node.get("did", True) else ~q

    def membership(self, node: dict, stack: tuple[int, ...]) -> Q:
        segment_id = node["segment"]
        segment = self.segments.get(segment_id)
        if segment is None:
            raise RulesInvalid([RuleError("rules", "unknown_segment", f"there is no segment {segment_id}")])
        if segment_id in stack:
            chain = " → ".join(str(i) for i in [*stack, segment_id])
            raise RulesInvalid([RuleError("rules", "cycle", f"cycle between segments: {chain}")])
        if segment.kind == Segment.Kind.RULES:
            q = self.node(segment.rules, (*stack, segment_id)) if segment.rules else Q(pk__in=[])
        else:
            q = Q(Exists(SegmentMember.objects.filter(segment_id=segment_id, profile=OuterRef("pk"))))
        return q if node.get("member", True) else ~q

    def reachable(self, spec: dict) -> Q:
        device = device_model()
        if device is None:
            raise RulesInvalid(
                [RuleError("rules", "unavailable", "reachability needs devices (delivery.Device), not installed yet")]
            )
        devices = device._default_manager.filter(
            profile=OuterRef("pk"), app_id=spec["app"], push_enabled=True, active=True
        )
        if spec.get("platform"):
            devices = devices.filter(platform=spec["platform"])
        return Q(Exists(devices))

    @staticmethod
    def _vendor() -> str:
        from django.db import connection

        return connection.vendor


def rules_compile(tree, *, now: dt.datetime | None = None, segment_id: int | None = None) -> Q:
    """Compile a *validated* tree to one condition over Profile (segment references inlined)."""
    stack = (segment_id,) if segment_id is not None else ()
    return Compiler(now=now).compile(tree, stack=stack)


def segment_profiles(segment: Segment, *, now: dt.datetime | None = None) -> models.QuerySet[Profile]:
    """The profiles of a segment as one queryset (one SQL query when evaluated)."""
    if segment.kind == Segment.Kind.RULES:
        if not segment.rules:
            return Profile.objects.none()
        return Profile.objects.filter(rules_compile(segment.rules, now=now, segment_id=segment.pk))
    return Profile.objects.filter(Exists(SegmentMember.objects.filter(segment_id=segment.pk, profile=OuterRef("pk"))))


def segment_count(segment: Segment, *, now: dt.datetime | None = None) -> int:
    """How many profiles the segment holds now: one query.

    On PostgreSQL the query runs with JIT compilation off: for these sub-second counts, JIT's
    100–200 ms of compiling is more than it saves.
    """
    from django.db import connection, transaction

    profiles = segment_profiles(segment, now=now)
    if connection.vendor != "postgresql":
        return profiles.count()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")
        return profiles.count()
