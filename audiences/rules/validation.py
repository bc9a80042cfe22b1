"""Validation of a rule tree against the schema: every broken rule, with its path in the tree."""

from __future__ import annotations

import datetime as dt

from django.apps import apps
from django.utils import timezone

from accounts.json_values import number_problem
from audiences.models import Segment
from audiences.rules.schema import (
    COLUMNS,
    DATE_RE,
    GROUPS,
    KEY_RE,
    MAX_DEPTH,
    MAX_LIST,
    MAX_STRING,
    NO_VALUE_OPS,
    NODE_KEYS,
    NODE_KINDS,
    OPERATOR_LABELS,
    OPERATORS,
    PLATFORMS,
    RELATIVE_UNITS,
    TYPES,
    RuleError,
    RulesInvalid,
    SegmentLoader,
    _load_segments,
    app_references,
    device_model,
    resolve_date,
    segment_references,
)
from audiences.rules.words import operator_words
from config.db import ROW_IDS

# Rule trees kept outside segments that may name them (a journey's conditions): each holder,
# given segment ids and the user changing a segment, says which of its trees name any of them.
_TREE_HOLDERS: list = []


def rules_tree_holders_register(holders) -> None:
    """``holders(segment_ids, by) -> list[tuple[str, tree]]``: each rule tree held elsewhere naming
    any of ``segment_ids``, said as ``by`` may be told of what holds it. A segment change that would
    make one read segments deeper than the compiler does is refused naming it."""
    if holders not in _TREE_HOLDERS:
        _TREE_HOLDERS.append(holders)


class _Validator:
    def __init__(
        self,
        *,
        segment_id: int | None,
        allowed_segment_ids: set[int] | None,
        load: SegmentLoader,
        allowed_app_ids: set[int] | None = None,
        by=None,
    ):
        self.segment_id = segment_id
        self.by = by
        self.allowed_segment_ids = allowed_segment_ids
        self.allowed_app_ids = allowed_app_ids
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
            self.fail(here, "empty_group", "the group is empty: add at least one condition")
            return
        for index, child in enumerate(children):
            self.node(child, f"{here}[{index}]", depth + 1)

    def field(self, node, path: str) -> None:
        problem = field_problem(node, path)
        if problem:
            self.errors.append(problem)
            return
        self.comparison(node, path, COLUMNS[node["field"]])

    def attribute(self, node, path: str, key_name: str = "attribute") -> None:
        name = node[key_name]
        if not isinstance(name, str) or not KEY_RE.match(name):
            self.fail(
                f"{path}.{key_name}",
                "invalid_name",
                f"{name!r} is not a valid {key_name} name (letters, digits, _ . : -; at most 100)",
            )
            return
        problem = type_problem(node, path)
        if problem:
            self.errors.append(problem)
            return
        self.comparison(node, path, node.get("type") or "string")  # presence does not depend on the type

    def comparison(self, node, path: str, value_type: str) -> None:
        op = node.get("op")
        problem = operator_problem(node, path, value_type)
        if problem:
            self.errors.append(problem)
            return
        where = f"{path}.value"
        value = node.get("value")
        label = operator_words(op, value_type)
        if op in NO_VALUE_OPS:
            if value is not None:
                self.fail(where, "unexpected_value", f"'{label}' takes no value")
            return
        if "value" not in node:
            self.fail(where, "required", f"'{label}' needs a value")
            return
        items = value if isinstance(value, list) else [value]
        if value_type != "string" and any(item is None or item == "" for item in items):
            self.fail(where, "empty", f"the value is empty: enter a {value_type} (an empty value is never 0)")
            return
        if op in ("in", "not_in", "between"):
            problem = list_problem(op, value, value_type)
            if problem:
                self.fail(where, "wrong_type", problem)
                return
        if op in ("in", "not_in"):
            if len(value) > MAX_LIST:
                self.fail(where, "too_long", f"'{label}' takes at most {MAX_LIST} values")
                return
            for index, item in enumerate(value):
                if self.scalar(item, f"{where}[{index}]", value_type) and value_type == "string":
                    self.whole_text(item, f"{where}[{index}]", op)
            return
        if op == "between":
            ok = self.scalar(value[0], f"{where}[0]", value_type) and self.scalar(value[1], f"{where}[1]", value_type)
            if ok and _order_key(value[0], value_type) > _order_key(value[1], value_type):
                self.fail(where, "wrong_order", f"'{label}' needs the low end first")
            return
        if self.scalar(value, where, value_type) and value_type == "string" and op in ("eq", "ne"):
            self.whole_text(value, where, op)

    def whole_text(self, value: str, path: str, op: str) -> None:
        """Refuse text compared whole (is, is not, is one of, is none of) with white space around it.

        Every evaluator compares it as written (the containment PostgreSQL's index serves, JSON1 on
        SQLite, a profile's own reading), so "pro " matches no "pro": a space pasted or typed by
        mistake made the rule match nobody, with nothing to show why. Imports keep text without
        the spaces around it. ``contains`` and ``starts_with`` keep them: a space may be meant there.
        """
        if value != value.strip():
            label = OPERATOR_LABELS.get(op, op)
            self.fail(
                path, "padded", f"{value!r} begins or ends with white space, which '{label}' compares too: remove it"
            )

    def scalar(self, value, path: str, value_type: str) -> bool:
        problem = value_problem(value, value_type)
        if problem:
            self.fail(path, *problem)
            return False
        return True

    def event(self, node, path: str) -> None:
        name = node["event"]
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            self.fail(
                f"{path}.event", "wrong_type", "the event name must be a non-empty string of at most 100 characters"
            )
        self.errors += event_problems(node, path)
        where = node.get("where", [])
        if not isinstance(where, list):
            return
        for index, cond in enumerate(where):
            here = f"{path}.where[{index}]"
            if not isinstance(cond, dict) or "property" not in cond:
                continue
            for key in sorted(set(cond) - {"property", "type", "op", "value"}):
                self.fail(f"{here}.{key}", "unknown_key", f"unknown key {key!r} in a property condition")
            self.attribute(cond, here, key_name="property")

    def segment(self, node, path: str) -> None:
        segment_id = node["segment"]
        problem = member_problem(node, path)
        if problem:
            self.errors.append(problem)
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
        problems = reachable_problems(node, path)
        self.errors += problems
        if not isinstance(spec, dict):
            return
        for key in sorted(set(spec) - {"app", "platform"}):
            self.fail(f"{here}.{key}", "unknown_key", f"unknown key {key!r} in 'reachable'")
        if not any(e.path == f"{here}.app" for e in problems):
            self.app_refs.setdefault(spec["app"], f"{here}.app")
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
        found = self.load([i for i in self.segment_refs if i in ROW_IDS])
        for segment_id, path in self.segment_refs.items():
            allowed = self.allowed_segment_ids is None or segment_id in self.allowed_segment_ids
            if segment_id not in found or not allowed:
                self.fail(path, "unknown_segment", f"there is no segment {segment_id} you may use")
        if self.segment_id is not None:  # a segment not saved yet cannot be referenced by anything
            for segment_id, path in self.segment_refs.items():
                if segment_id in found:
                    chain = _path_to(self.segment_id, found[segment_id], self.load)
                    if chain:
                        names = " → ".join(str(i) for i in [self.segment_id, *chain])
                        self.fail(path, "cycle", f"cycle between segments: {names}")
        if not self.errors:
            self.reference_depth()

    def reference_depth(self) -> None:
        """Refuse a tree that makes segments use others deeper than MAX_DEPTH levels, counted as the
        compiler loads them (each level the segments the one before uses, not yet loaded), from this
        tree, from every segment using this one and from every tree held elsewhere using either (a
        journey's condition, which reads the segments it names as one more level): the compiler
        refuses such a chain, so it was saved and then failed every count, preview and send of the
        segment at its top, or held for no one in the journey."""
        from audiences.models import SegmentReference

        uses: dict[int, set[int]] = {}
        for source, target in SegmentReference.objects.values_list("source_id", "target_id"):
            uses.setdefault(source, set()).add(target)
        mine = set(self.segment_refs)
        tops: list[int | None] = [None]  # None: this tree itself
        above: set[int] = set()
        if self.segment_id is not None:
            uses[self.segment_id] = mine
            users: dict[int, set[int]] = {}
            for source, targets in uses.items():
                for target in targets:
                    users.setdefault(target, set()).add(source)
            pending = [self.segment_id]
            while pending:
                for source in users.get(pending.pop(), ()):
                    if source not in above and source != self.segment_id:
                        above.add(source)
                        pending.append(source)
            tops += sorted(above)
        first_use = next(iter(self.segment_refs.values()))
        for top in tops:
            depth = _levels(mine if top is None else uses.get(top, set()), uses, exclude=top)
            if depth <= MAX_DEPTH:
                continue
            if top is None:
                message = f"the segments this rule uses go {depth} levels deep through their own rules"
            else:
                message = f"segment {top}, which uses this one, would go {depth} levels deep through segments' rules"
            self.fail(first_use, "too_deep", f"{message} (at most {MAX_DEPTH})")
            return
        if self.segment_id is None:
            return  # a segment not saved yet is named by no tree held elsewhere
        reached = {self.segment_id} | above
        for holders in _TREE_HOLDERS:
            for said, tree in holders(reached, self.by):
                depth = _levels(segment_references(tree), uses)
                if depth > MAX_DEPTH:
                    message = f"{said}, which uses this one, would go {depth} levels deep through segments' rules"
                    self.fail(first_use, "too_deep", f"{message} (at most {MAX_DEPTH})")
                    return

    def apps(self) -> None:
        if not self.app_refs:
            return
        try:
            app_model = apps.get_model("delivery", "App")
        except LookupError:
            return
        ids = [i for i in self.app_refs if i in ROW_IDS]
        known = set(app_model.objects.filter(pk__in=ids).values_list("pk", flat=True))
        for app_id, path in self.app_refs.items():
            allowed = self.allowed_app_ids is None or app_id in self.allowed_app_ids
            # One message for "missing" and "outside your access": app ids cannot be enumerated.
            if app_id not in known or not allowed:
                self.fail(path, "unknown_app", f"there is no app {app_id} you may use")


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


def _levels(first: set[int], uses: dict[int, set[int]], *, exclude: int | None = None) -> int:
    """How many levels of segments a tree whose segment conditions name ``first`` loads to compile,
    as ``Compiler.prepare`` counts them: each level the segments the one before uses (``uses``)
    that no earlier level loaded. Stops once past MAX_DEPTH."""
    seen = set(first) | ({exclude} if exclude is not None else set())
    level, frontier = (1, set(first)) if first else (0, set())
    while frontier and level <= MAX_DEPTH:
        frontier = {ref for pk in frontier for ref in uses.get(pk, ())} - seen
        seen |= frontier
        if frontier:
            level += 1
    return level


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


def field_problem(node: dict, path: str) -> RuleError | None:
    """A profile column condition naming no column. This check and the ones below are the
    validator's, and the compiler's of rules saved before a check existed (``values_refused``)."""
    name = node["field"]
    if isinstance(name, str) and name in COLUMNS:
        return None
    return RuleError(
        f"{path}.field",
        "unknown_field",
        f"unknown field {name!r}; use one of {', '.join(COLUMNS)} (or 'attribute' for custom fields)",
    )


def type_problem(node: dict, path: str) -> RuleError | None:
    """An attribute or property condition of no type (none needed to test presence)."""
    value_type = node.get("type")
    if value_type in TYPES or (value_type is None and node.get("op") in NO_VALUE_OPS):
        return None
    if value_type is None:
        return RuleError(f"{path}.type", "required", f"the type is required; use one of {', '.join(TYPES)}")
    return RuleError(f"{path}.type", "unknown_type", f"unknown type {value_type!r}; use one of {', '.join(TYPES)}")


def operator_problem(node: dict, path: str, value_type: str) -> RuleError | None:
    """A condition whose operator is not one of its type's (``OPERATORS``)."""
    op, ops = node.get("op"), ", ".join(OPERATORS[value_type])
    if op in OPERATORS[value_type]:
        return None
    if op is None:
        return RuleError(f"{path}.op", "required", f"the operator is required; use one of {ops}")
    return RuleError(f"{path}.op", "unknown_operator", f"unknown operator {op!r} for a {value_type}; use one of {ops}")


def event_problems(node: dict, path: str) -> list[RuleError]:
    """An event condition's 'did', 'min_count', 'within_days' and 'where' not of their types (its
    name and its property conditions are checked apart)."""
    errors = []
    did = node.get("did", True)
    if not isinstance(did, bool):
        errors.append(RuleError(f"{path}.did", "wrong_type", f"'did' must be true or false, got {_json_type(did)}"))
    min_count = node.get("min_count", 1)
    if isinstance(min_count, bool) or not isinstance(min_count, int) or not 1 <= min_count <= 1_000_000:
        errors.append(
            RuleError(f"{path}.min_count", "wrong_type", "'min_count' must be a whole number from 1 to 1000000")
        )
    within = node.get("within_days")
    if within is not None and (isinstance(within, bool) or not isinstance(within, int) or not 1 <= within <= 36500):
        errors.append(
            RuleError(
                f"{path}.within_days", "wrong_type", "'within_days' must be a whole number of days from 1 to 36500"
            )
        )
    where = node.get("where", [])
    if not isinstance(where, list):
        errors.append(
            RuleError(
                f"{path}.where", "wrong_type", f"'where' must be a list of property conditions, not {_json_type(where)}"
            )
        )
        return errors
    for index, cond in enumerate(where):
        if not isinstance(cond, dict) or "property" not in cond:
            errors.append(
                RuleError(
                    f"{path}.where[{index}]",
                    "wrong_type",
                    "a property condition is an object with 'property', 'type', 'op', 'value'",
                )
            )
    return errors


def member_problem(node: dict, path: str) -> RuleError | None:
    """A membership condition whose 'member' is not true or false."""
    member = node.get("member", True)
    if isinstance(member, bool):
        return None
    return RuleError(f"{path}.member", "wrong_type", f"'member' must be true or false, got {_json_type(member)}")


def reachable_problems(node: dict, path: str) -> list[RuleError]:
    """A reachability condition that is not an object, or whose app is not an id or platform not
    one of ``PLATFORMS`` (its other keys are checked apart)."""
    spec, here = node["reachable"], f"{path}.reachable"
    if not isinstance(spec, dict):
        return [
            RuleError(here, "wrong_type", "'reachable' must be an object: {'app': id, 'platform': 'ios'|'android'}")
        ]
    errors = []
    app_id = spec.get("app")
    if isinstance(app_id, bool) or not isinstance(app_id, int):
        errors.append(RuleError(f"{here}.app", "wrong_type", f"'app' must be an app id, got {_json_type(app_id)}"))
    platform = spec.get("platform")
    if platform is not None and platform not in PLATFORMS:
        errors.append(
            RuleError(f"{here}.platform", "unknown_platform", f"unknown platform {platform!r}; use ios or android")
        )
    return errors


def list_problem(op: str, value, value_type: str) -> str | None:
    """Why the value of an 'in', 'not_in' or 'between' condition is not the list it needs, or None."""
    label = operator_words(op, value_type)
    if op == "between":
        if isinstance(value, list) and len(value) == 2:
            return None
        return f"'{label}' needs a list of two values: [low, high]"
    if isinstance(value, list) and value:
        return None
    return f"'{label}' needs a non-empty list of {value_type}s"


def value_problem(value, value_type: str) -> tuple[str, str] | None:
    """Why ``value`` is not a value of ``value_type`` a condition may compare with, as (code,
    sentence), or None when it is one. The validator's check, and the compiler's of rules saved
    before a check existed (``Compiler.prepare``)."""
    if value_type == "string":
        if not isinstance(value, str):
            return "wrong_type", f"expected a string, got {_json_type(value)}"
        if len(value) > MAX_STRING:
            return "too_long", f"a string value has at most {MAX_STRING} characters"
        return None
    if value_type == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "wrong_type", f"expected a number, got {_json_type(value)}"
        if number_problem(value):
            return "out_of_range", "expected a finite number within a 64-bit float (about ±1.8e308)"
        return None
    if value_type == "boolean":
        if not isinstance(value, bool):
            return "wrong_type", f"expected true or false, got {_json_type(value)}"
        return None
    # date
    if isinstance(value, str):
        if DATE_RE.match(value):
            try:
                dt.date.fromisoformat(value)
                return None
            except ValueError:
                pass
        return "wrong_type", f"expected a date 'YYYY-MM-DD' or {{'ago': N, 'unit': 'days'}}, got {value!r}"
    if isinstance(value, dict):
        ago, unit = value.get("ago"), value.get("unit", "days")
        extra = sorted(set(value) - {"ago", "unit"})
        if extra:
            return "unknown_key", f"unknown key {extra[0]!r} in a relative date; use 'ago' and 'unit'"
        if isinstance(ago, bool) or not isinstance(ago, int) or not 0 <= ago <= 36500:
            return "wrong_type", "a relative date needs 'ago': a whole number of units, 0 to 36500"
        if unit not in RELATIVE_UNITS:
            return "unknown_unit", f"unknown unit {unit!r}; use one of {', '.join(RELATIVE_UNITS)}"
        return None
    return "wrong_type", f"expected a date 'YYYY-MM-DD' or {{'ago': N, 'unit': 'days'}}, got {_json_type(value)}"


def _order_key(value, value_type: str):
    if value_type == "date":
        return resolve_date(value, today=timezone.now().date())
    return value


def rules_validate(
    tree,
    *,
    segment_id: int | None = None,
    allowed_segment_ids: set[int] | None = None,
    load: SegmentLoader = _load_segments,
    allowed_app_ids: set[int] | None = None,
    by=None,
) -> set[int]:
    """Check a rule tree against the schema; return the ids of the segments it references.

    ``segment_id`` is the segment the tree belongs to (for cycle detection and depth);
    ``allowed_segment_ids`` and ``allowed_app_ids``, when given, are the segments and apps the
    author may use (``rules_validate_for`` computes them for a user); ``by``, the user told what
    holds a tree the change would make too deep (None: the system, told everything).
    Raises RulesInvalid listing every broken rule with its path in the tree.
    """
    validator = _Validator(
        segment_id=segment_id,
        allowed_segment_ids=allowed_segment_ids,
        load=load,
        allowed_app_ids=allowed_app_ids,
        by=by,
    )
    validator.node(tree, "rules", 1)
    if not validator.errors:
        validator.references()
        validator.apps()
    if validator.errors:
        raise RulesInvalid(validator.errors)
    return set(validator.segment_refs)


def rules_validate_for(tree, *, by, segment_id: int | None = None, kept=None) -> set[int]:
    """``rules_validate`` for a user: segment conditions and ``reachable`` may name only the segments
    and apps in ``by``'s scope (``in_scope``: not those read through a review); any other answers as
    if it did not exist. ``kept``, the rules saved before this edit: the segments and apps they name
    may stay, as a campaign or a journey keeps a colleague's choice its editor may not see; only one
    named anew needs access. ``by=None`` is the system."""
    if by is None:
        return rules_validate(tree, segment_id=segment_id)
    from accounts.selectors import in_scope

    kept_segments = segment_references(kept) if kept else set()
    allowed_segments = set(in_scope(by, Segment.objects.all()).values_list("pk", flat=True)) | kept_segments
    allowed_apps = None
    if device_model() is not None:
        app_model = apps.get_model("delivery", "App")
        kept_apps = app_references(kept) if kept else set()
        allowed_apps = set(in_scope(by, app_model.objects.all()).values_list("pk", flat=True)) | kept_apps
    return rules_validate(
        tree, segment_id=segment_id, allowed_segment_ids=allowed_segments, allowed_app_ids=allowed_apps, by=by
    )
