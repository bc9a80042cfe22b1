"""The compiler of a rule tree to one SQL query over profiles.

Profile attributes and event properties are compiled to PostgreSQL JSONB (``@>`` for equality,
served by the GIN index) or SQLite JSON1 (``json_extract``), each in the same single query.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

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

from accounts.json_values import FLOAT_LIMIT
from audiences.models import Event, Profile, Segment, SegmentMember
from audiences.rules.schema import (
    COLUMNS,
    DAY_PATTERN,
    GROUPS,
    MAX_DEPTH,
    NO_VALUE_OPS,
    RuleError,
    RulesInvalid,
    SegmentLoader,
    _load_segments,
    device_model,
    resolve_date,
    segment_references,
)
from audiences.rules.validation import (
    event_problems,
    field_problem,
    list_problem,
    member_problem,
    operator_problem,
    reachable_problems,
    type_problem,
    value_problem,
)
from config.db import count_session


class _OnJsonColumn(Expression):
    """An expression over one JSON column (``self.column``), its only source expression."""

    def __init__(self, column: str, *, output_field):
        super().__init__(output_field=output_field)
        self.column = models.F(column)

    def get_source_expressions(self):
        return [self.column]

    def set_source_expressions(self, exprs):
        (self.column,) = exprs


# Text a number rule reads as the number it writes: an optional minus, digits without a leading
# zero, a decimal part not ending in 0 ("42", "-7", "4.5"; not "042", "42.0", " 42", "1e3", "-0").
# Each number has one such writing (``number_text``), so an equality stays a containment the GIN
# index serves, and agrees with the ranges' reading. The same pattern in PostgreSQL's regular
# expressions and Python's (SQLite's REGEXP, which Django provides): \A and \Z are the text's ends.
NUMBER_TEXT_PATTERN = r"\A(0|-?[1-9][0-9]*|-?(0|[1-9][0-9]*)\.[0-9]*[1-9])\Z"


def number_text(number: int | float) -> str:
    """How a rule's number is written as text a number rule reads (``NUMBER_TEXT_PATTERN``)."""
    if isinstance(number, int):
        return str(number)
    text = format(Decimal(repr(number)).normalize(), "f")
    return "0" if text == "-0" else text


class JsonValue(_OnJsonColumn):
    """The value under ``key`` of a JSON column, as an SQL value of ``value_type``.

    NULL when the key is missing or holds another JSON type, so "age > 30" never matches the
    string "forty" (and never fails on it). A number is also read from text that writes it
    plainly (``NUMBER_TEXT_PATTERN``: "42" as sent by an integrator is 42). Dates are the first
    ten characters (the day) of an ISO 8601 string.

    On PostgreSQL a number is read as ``numeric``, as ``jsonb`` holds it (``number_param`` gives
    the values it is compared with): exact at any size, and never an error. The ``float8`` cast it
    replaces failed the whole query ("out of range for type double precision") on one whole number
    beyond a float's range, which the JSON check let through before it refused them, and rounded
    whole numbers past 2**53. The index use is the same (equality is ``@>``, a range a filter); a
    comparison over every profile costs about a tenth more, the counts of ``bench/segments.py``
    nothing measurable.
    """

    def __init__(self, column: str, key: str, value_type: str, *, postgres: bool):
        output = {
            "string": models.TextField(),
            "number": models.DecimalField() if postgres else models.FloatField(),
            "boolean": models.BooleanField(),
            "date": models.TextField(),
        }[value_type]
        super().__init__(column, output_field=output)
        self.key = key
        self.value_type = value_type

    def as_postgresql(self, compiler, connection):
        col, params = compiler.compile(self.column)
        key = [self.key]
        if self.value_type == "string":
            sql = f"(CASE WHEN jsonb_typeof({col} -> %s) = 'string' THEN {col} ->> %s END)"
            return sql, [*params, *key, *params, *key]
        if self.value_type == "number":
            sql = (
                f"(CASE jsonb_typeof({col} -> %s) WHEN 'number' THEN ({col} -> %s)::numeric "
                f"WHEN 'string' THEN CASE WHEN ({col} ->> %s) ~ %s THEN ({col} ->> %s)::numeric END END)"
            )
            return sql, [*params, *key, *params, *key, *params, *key, NUMBER_TEXT_PATTERN, *params, *key]
        if self.value_type == "boolean":
            sql = f"(CASE WHEN jsonb_typeof({col} -> %s) = 'boolean' THEN ({col} ->> %s)::boolean END)"
            return sql, [*params, *key, *params, *key]
        sql = (
            f"(CASE WHEN jsonb_typeof({col} -> %s) = 'string' AND ({col} ->> %s) ~ '^{DAY_PATTERN}' "
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
            sql = (
                f"(CASE json_type({col}, %s) WHEN 'integer' THEN json_extract({col}, %s) "
                f"WHEN 'real' THEN json_extract({col}, %s) "
                f"WHEN 'text' THEN CASE WHEN json_extract({col}, %s) REGEXP %s "
                f"THEN CAST(json_extract({col}, %s) AS REAL) END END)"
            )
            return sql, [
                *params,
                *path,
                *params,
                *path,
                *params,
                *path,
                *params,
                *path,
                NUMBER_TEXT_PATTERN,
                *params,
                *path,
            ]
        if self.value_type == "boolean":
            sql = f"(CASE json_type({col}, %s) WHEN 'true' THEN 1 WHEN 'false' THEN 0 END)"
            return sql, [*params, *path]
        sql = (
            f"(CASE WHEN json_type({col}, %s) = 'text' AND json_extract({col}, %s) "
            "GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*' "
            f"THEN substr(json_extract({col}, %s), 1, 10) END)"
        )
        return sql, [*params, *path, *params, *path, *params, *path]


class JsonHasKey(_OnJsonColumn):
    """True when the JSON column holds a non-null value under ``key`` (never NULL itself)."""

    conditional = True

    def __init__(self, column: str, key: str):
        super().__init__(column, output_field=models.BooleanField())
        self.key = key

    def as_postgresql(self, compiler, connection):
        col, params = compiler.compile(self.column)
        return f"(coalesce(jsonb_typeof({col} -> %s), 'null') <> 'null')", [*params, self.key]

    def as_sqlite(self, compiler, connection):
        col, params = compiler.compile(self.column)
        return f"(coalesce(json_type({col}, %s), 'null') <> 'null')", [*params, _sqlite_path(self.key)]


class JsonContains(_OnJsonColumn):
    """PostgreSQL ``column @> {key: value, ...}``: exact JSON equality that the GIN index serves."""

    conditional = True

    def __init__(self, column: str, document: dict):
        super().__init__(column, output_field=models.BooleanField())
        self.document = document

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
            and child.get("type") in ("string", "boolean")  # a number's equality is two: see json_condition
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


def number_param(number: int | float, *, exact: bool) -> Decimal | float:
    """A rule's number as a comparison with ``JsonValue`` takes it. ``exact`` (PostgreSQL, where
    numbers compare as ``numeric``): a Decimal of the number as written (0.1 is 0.1, not the
    float's binary value). Otherwise (SQLite) a float; a whole number beyond a float's range, which
    a rule saved before they were refused may hold, is the infinity of its sign."""
    if exact:
        return Decimal(repr(number)) if isinstance(number, float) else Decimal(number)
    if isinstance(number, int) and not -FLOAT_LIMIT < number < FLOAT_LIMIT:
        return math.inf if number > 0 else -math.inf
    return float(number)


def values_refused(tree, path: str = "rules") -> list[RuleError]:
    """Every condition of the tree (not of the segments it uses) holding a value not of its type,
    named by its path as ``rules_validate`` names it: a number, date, string or boolean value, an
    'in' without a list, an operator or type of no name, an event's count or window not a whole
    number, a 'did' or 'member' not true or false, a platform of no name. Rules saved before a
    check existed, or written by a data migration, may hold one ("value": "yes" in a boolean
    condition): compiled, it failed as an error no one can read, or matched no one (or someone
    else) without a word. One look at each condition when a tree is compiled, nothing per profile."""
    errors: list[RuleError] = []
    _values_refused(tree, path, errors)
    return errors


def _values_refused(node, path: str, errors: list[RuleError]) -> None:
    if not isinstance(node, dict):
        return
    for group in GROUPS:
        if isinstance(node.get(group), list):
            for index, child in enumerate(node[group]):
                _values_refused(child, f"{path}.{group}[{index}]", errors)
    if "field" in node:
        problem = field_problem(node, path)
        if problem:
            errors.append(problem)
        else:
            _value_refused(node, COLUMNS[node["field"]], path, errors)
    elif "attribute" in node:
        _typed_value_refused(node, path, errors)
    elif "event" in node:
        errors += event_problems(node, path)
        for index, cond in enumerate(node.get("where") if isinstance(node.get("where"), list) else []):
            if isinstance(cond, dict) and "property" in cond:
                _typed_value_refused(cond, f"{path}.where[{index}]", errors)
    elif "segment" in node:
        problem = member_problem(node, path)
        if problem:
            errors.append(problem)
    elif "reachable" in node:
        errors += reachable_problems(node, path)


def _typed_value_refused(node: dict, path: str, errors: list[RuleError]) -> None:
    if node.get("type") is None:  # read as a string, as the compiler reads it (the validator wants it said)
        _value_refused(node, "string", path, errors)
        return
    problem = type_problem(node, path)
    if problem:
        errors.append(problem)
    else:
        _value_refused(node, node["type"], path, errors)


def _value_refused(node: dict, value_type: str, path: str, errors: list[RuleError]) -> None:
    op = node.get("op")
    problem = operator_problem(node, path, value_type)
    if problem:
        errors.append(problem)
        return
    if op in NO_VALUE_OPS:
        return
    value, where = node.get("value"), f"{path}.value"
    if op in ("in", "not_in", "between"):
        problem = list_problem(op, value, value_type)
        if problem:
            errors.append(RuleError(where, "wrong_type", problem))
            return
        items = [(f"{where}[{i}]", item) for i, item in enumerate(value)]
    else:
        items = [(where, value)]
    for here, item in items:
        problem = value_problem(item, value_type)
        # A whole number beyond a float's range compares (``number_param``), as a long string
        # does: refused on a save only.
        if problem and problem[0] not in ("out_of_range", "too_long"):
            errors.append(RuleError(here, *problem))


def _total(condition) -> Q:
    """Make a condition that may be NULL plainly true or false, so NOT and 'none' behave."""
    return Q(Coalesce(condition, Value(False), output_field=models.BooleanField()))


class Compiler:
    """Turns a validated rule tree into a Q over Profile. Segment references are loaded up front."""

    def __init__(
        self,
        *,
        now: dt.datetime | None = None,
        load: SegmentLoader = _load_segments,
        correlated: bool = False,
        union: bool = False,
    ):
        # correlated: count events per outer profile (cheap for one profile, e.g. its admin page)
        # instead of grouping every matching event once (cheap for a whole segment).
        self.correlated = correlated
        # union (PostgreSQL): an 'any' group with a branch that reads another table (events,
        # members, devices) is the UNION of its branches' profile ids, each branch planned alone
        # (an index for an attribute, a join of members and events), instead of one scan of
        # every profile testing each branch on each row. For a whole audience (a count): the
        # union is made whole even when the query wants only a few profiles.
        self.union = union
        self.now = now or timezone.now()
        self.today = self.now.astimezone(dt.UTC).date()
        self.load = load
        self.segments: dict[int, Segment] = {}
        self.refused: dict[int, list[RuleError]] = {}  # a loaded segment's values not of their type

    def prepare(self, tree) -> None:
        """Load every segment the tree uses, level by level (one query per level of nesting).

        Raises RulesInvalid when a value of the tree is not of its condition's type
        (``values_refused``); a segment it uses holding one is refused where its membership is
        compiled, as a cycle is."""
        errors = values_refused(tree)
        if errors:
            raise RulesInvalid(errors)
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
                    errors = values_refused(segment.rules)
                    if errors:
                        self.refused[segment.pk] = errors
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
                if group != "all" and self._unites(children, stack):
                    combined = Q(pk__in=self._branch_union(children, parts, stack))
                    return ~combined if group == "none" else combined
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

        # A day runs from its first to its last microsecond (what the columns hold), so no bound is
        # the next day's start: there is none after 9999-12-31, the last day a rule may name.
        def start(day: dt.date) -> dt.datetime:
            return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)

        def end(day: dt.date) -> dt.datetime:
            return dt.datetime.combine(day, dt.time.max, tzinfo=dt.UTC)

        if op == "between":
            low, high = (resolve_date(v, today=self.today) for v in value)
            return Q(**{f"{name}__gte": start(low), f"{name}__lte": end(high)})
        day = resolve_date(value, today=self.today)
        if op in ("eq", "ne"):
            q = Q(**{f"{name}__gte": start(day), f"{name}__lte": end(day)})
            return ~q if op == "ne" else q
        return {
            "lt": Q(**{f"{name}__lt": start(day)}),
            "lte": Q(**{f"{name}__lte": end(day)}),
            "gt": Q(**{f"{name}__gt": end(day)}),
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
            if value_type == "number":  # the number, or the text writing it: two probes of the index
                values = [form for number in values for form in (number, number_text(number))]
            combined = Q(JsonContains(column, {key: values[0]}))
            for item in values[1:]:
                combined |= Q(JsonContains(column, {key: item}))
            return combined
        expr = JsonValue(column, key, value_type, postgres=postgres)
        if value_type == "date":
            return self.json_date(expr, op, value)
        if value_type == "number":
            value = (
                [number_param(v, exact=postgres) for v in value]
                if isinstance(value, list)
                else number_param(value, exact=postgres)
            )
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
        events = self._events(node)
        min_count = node.get("min_count", 1)
        if min_count <= 1:
            q = Q(Exists(events.filter(profile=OuterRef("pk"))))
        elif self.correlated:
            counted = events.filter(profile=OuterRef("pk")).values("profile_id").annotate(n=Count("*")).values("n")
            q = _total(GreaterThanOrEqual(Subquery(counted), min_count))
        else:
            q = Q(pk__in=self._repeated(events, min_count))
        return q if node.get("did", True) else ~q

    def _events(self, node: dict) -> models.QuerySet[Event]:
        events = Event.objects.filter(name=node["event"]).order_by()
        if node.get("within_days"):
            events = events.filter(occurred_at__gte=self.now - dt.timedelta(days=node["within_days"]))
        for cond in node.get("where", []):
            events = events.filter(self.json_condition("properties", cond["property"], cond))
        return events

    @staticmethod
    def _repeated(events: models.QuerySet[Event], min_count: int) -> models.QuerySet:
        """The profile ids with at least ``min_count`` of these events, each once."""
        return events.values("profile_id").annotate(n=Count("*")).filter(n__gte=min_count).values("profile_id")

    def membership(self, node: dict, stack: tuple[int, ...]) -> Q:
        segment_id = node["segment"]
        segment = self.segments.get(segment_id)
        if segment is None:
            raise RulesInvalid([RuleError("rules", "unknown_segment", f"there is no segment {segment_id}")])
        if segment_id in stack:
            chain = " → ".join(str(i) for i in [*stack, segment_id])
            raise RulesInvalid([RuleError("rules", "cycle", f"cycle between segments: {chain}")])
        if segment_id in self.refused:
            said = "; ".join(str(e) for e in self.refused[segment_id])
            # By number alone, as a cycle is said: the message reaches readers who may not see the
            # segment (a page compiling a segment that uses it, a send's reason).
            message = f"segment {segment_id} uses a rule saved before it was checked: {said}"
            raise RulesInvalid([RuleError("rules", "segment_rules_invalid", message)])
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

    def profile_ids(self, tree, *, stack: tuple[int, ...] = ()) -> models.QuerySet:
        """The ids of the tree's profiles as one query: the union itself when the tree is an 'any'
        group made a union (see ``union``), counted without a scan of every profile around it."""
        self.prepare(tree)
        group = next((g for g in GROUPS if g in tree), None)
        if group in ("all", "any") and len(tree[group]) == 1 and isinstance(tree[group][0], dict):
            return self.profile_ids(tree[group][0], stack=stack)  # a group of one is its child
        if group == "any" and self._unites(tree["any"], stack):
            children = tree["any"]
            return self._branch_union(children, [self.node(child, stack) for child in children], stack)
        if "event" in tree and tree.get("did", True) and tree.get("min_count", 1) > 1 and not self.correlated:
            # The profile ids of the events themselves, without a join to every profile: every
            # event's profile exists (events are written with their profile locked, and
            # ``profiles_delete`` removes a profile's events with it), so each id is a profile's.
            return self._repeated(self._events(tree), tree["min_count"])
        return Profile.objects.filter(self.node(tree, stack)).order_by().values("pk")

    def _unites(self, children: list, stack: tuple[int, ...]) -> bool:
        return (
            self.union
            and not self.correlated
            and len(children) > 1
            and self._vendor() == "postgresql"
            and any(self._reads_other_tables(child, stack) for child in children)
        )

    def _reads_other_tables(self, node: dict, stack: tuple[int, ...]) -> bool:
        """Whether the node's condition reads events, segment members or devices."""
        if "event" in node or "reachable" in node:
            return True
        if "segment" in node:
            segment = self.segments.get(node["segment"])
            if segment is None or segment.kind != Segment.Kind.RULES:
                return True
            if node["segment"] in stack or not segment.rules:
                return False  # node() raises the cycle / matches nobody: no table either way
            return self._reads_other_tables(segment.rules, (*stack, node["segment"]))
        return any(self._reads_other_tables(child, stack) for group in GROUPS for child in node.get(group, ()))

    def _branch_union(self, children: list, parts: list[Q], stack: tuple[int, ...]) -> models.QuerySet:
        """UNION of the branches' profile ids: each branch's events when it has them (``_event_ids``),
        else its profiles."""
        branches = []
        for child, part in zip(children, parts, strict=True):
            ids = self._event_ids(child, stack)
            branches.append(ids if ids is not None else Profile.objects.filter(part).order_by().values("pk"))
        return branches[0].union(*branches[1:])

    def _event_ids(self, node: dict, stack: tuple[int, ...]) -> models.QuerySet | None:
        """The node's profile ids read from its events alone, or None when it is not made only of
        events done and static or imported segments' members, with at least one event.

        Every event's profile exists (see ``Event``: its writer and ``profiles_delete`` lock the
        profile), so these ids are profiles' without a join to the profiles; members only narrow
        events down. Ids may repeat
        (a union removes them).
        """
        if "event" in node:
            if not node.get("did", True):
                return None
            events = self._events(node)
            min_count = node.get("min_count", 1)
            return self._repeated(events, min_count) if min_count > 1 else events.values("profile_id")
        if not isinstance(node.get("all"), list):
            return None
        events = [child for child in node["all"] if "event" in child]
        members = [child for child in node["all"] if "segment" in child]
        if not events or len(events) + len(members) != len(node["all"]):
            return None
        for child in members:
            self.membership(child, stack)  # refuses an unknown segment or a cycle, as the per-row form does
            segment = self.segments[child["segment"]]
            if segment.kind == Segment.Kind.RULES or not child.get("member", True):
                return None
        ids = self._event_ids(events[0], stack)
        if ids is None:
            return None
        for child in events[1:]:
            more = self._event_ids(child, stack)
            if more is None:
                return None
            ids = ids.filter(profile_id__in=more)
        for child in members:
            ids = ids.filter(
                profile_id__in=SegmentMember.objects.filter(segment_id=child["segment"]).values("profile_id")
            )
        return ids

    @staticmethod
    def _vendor() -> str:
        from django.db import connection

        return connection.vendor


def rules_compile(tree, *, now: dt.datetime | None = None, segment_id: int | None = None, union: bool = False) -> Q:
    """Compile a *validated* tree to one condition over Profile (segment references inlined);
    ``union``: see ``segment_profiles``."""
    stack = (segment_id,) if segment_id is not None else ()
    return Compiler(now=now, union=union).compile(tree, stack=stack)


def segment_profiles(
    segment: Segment, *, now: dt.datetime | None = None, union: bool = False
) -> models.QuerySet[Profile]:
    """The profiles of a segment as one queryset (one SQL query when evaluated).

    ``union``: for a reader of the whole audience (its reach, a send's resolve, a journey's
    entry), an 'any' group reading events, members or devices is the union of its branches'
    profile ids, as a count reads it (``Compiler(union=True)``), not a scan of every profile
    testing each branch on each row; a reader of a few profiles (a page of them, a probe of some
    ids) leaves it False, since the union is made whole whatever it wants."""
    if segment.kind == Segment.Kind.RULES:
        if not segment.rules:
            return Profile.objects.none()
        return Profile.objects.filter(rules_compile(segment.rules, now=now, segment_id=segment.pk, union=union))
    return Profile.objects.filter(Exists(SegmentMember.objects.filter(segment_id=segment.pk, profile=OuterRef("pk"))))


def segment_count(segment: Segment, *, now: dt.datetime | None = None) -> int:
    """How many profiles the segment holds now: one query.

    On PostgreSQL the query runs with the count's session settings (``config.db.count_session``:
    JIT off, room to hash a large static segment's or an event rule's profile ids once), and an
    'any' group reading events or members counts the union of its branches' ids
    (``Compiler(union=True)``).
    """
    from django.db import connection, transaction

    if connection.vendor != "postgresql":
        return segment_profiles(segment, now=now).count()
    if segment.kind == Segment.Kind.RULES and segment.rules:
        stack = (segment.pk,) if segment.pk is not None else ()
        profiles = Compiler(now=now, union=True).profile_ids(segment.rules, stack=stack)
    else:
        profiles = segment_profiles(segment, now=now)
    with transaction.atomic():
        with connection.cursor() as cursor:
            count_session(cursor)
        return profiles.count()
