"""A rule tree in words, for the pages that show rules read-only (an approval's review, a segment a
reader may not change): ``all of: plan is “pro”; member of “VIPs”; has an opted-in device on Shop
(iOS); did “purchase” at least 2 times in the last 30 days``.

The operators read as the rule builder names them (``OPERATOR_LABELS``): a label that serves
numbers and dates alike ("is less than / before") reads by the condition's type ("is less than
5", "is before 2026-03-01"). A node of no shape the schema defines reads as compact JSON: what
is shown read-only was saved, and is shown as it is rather than refused.
"""

from __future__ import annotations

import json
import re

from audiences.rules.schema import COLUMNS, GROUPS, NO_VALUE_OPS, OPERATOR_LABELS, OPERATORS, RELATIVE_UNITS
from config.labels import numbered

GROUP_WORDS = {"all": "all of", "any": "any of", "none": "none of"}
PLATFORM_WORDS = {"ios": "iOS", "android": "Android"}


class _Unreadable(Exception):
    """A node the schema does not define: it reads as JSON."""


def rules_text(rules, *, segment_names: dict[int, str], app_names: dict[int, str]) -> str:
    """The rule tree ``rules`` in words; ``segment_names`` and ``app_names`` name the segments and
    apps it uses by id (one it does not name reads as "segment #12", "app #3"). Never raises."""
    if rules is None:
        return "no rules"
    return _Words(segment_names=segment_names, app_names=app_names).node(rules, top=True)


# One step of a rule error's path: ".all", ".value" or "[2]".
_PATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def rule_error_place(rules, path: str) -> str:
    """Where the rule error at ``path`` (``rules.all[1].any[0].value``) is, in the words of the rule
    builder: ``Group 2, condition 1 (age is more than)``. Groups and conditions are numbered from 1
    by their place in their group, as the builder lists them; a condition is named by what it reads
    (its name and operator label, or its event, membership or device). A path into no condition
    reads "The rules". A tree whose top level is one condition reads as the builder shows it, a
    group of that one: its errors are condition 1's. Never raises: a node the tree does not hold
    ends the words there."""
    if _one_condition(rules) and path.startswith(("rules.", "rules[")):
        rules, path = {"all": [rules]}, "rules.all[0]" + path.removeprefix("rules")
    steps = [(key, int(index) if index else None) for key, index in _PATH_STEP.findall(path.removeprefix("rules"))]
    parts: list[str] = []
    node = rules
    for (key, _), (_, index) in zip(steps, steps[1:], strict=False):
        if not (key in GROUPS or key == "where") or index is None or not isinstance(node, dict):
            continue
        children = node.get(key)
        if not isinstance(children, list) or index >= len(children):
            break
        node = children[index]
        if key == "where":
            parts.append(_placed(f"where {index + 1}", _condition_label(node, name_key="property")))
        elif isinstance(node, dict) and any(g in node for g in GROUPS):
            parts.append(f"group {index + 1}")
        else:
            parts.append(_placed(f"condition {index + 1}", _condition_label(node)))
    words = ", ".join(parts) or "the rules"
    return words[0].upper() + words[1:]


def _one_condition(rules) -> bool:
    """Whether the tree's top level is a node with no group of children (the builder wraps it)."""
    return isinstance(rules, dict) and not any(isinstance(rules.get(g), list) for g in GROUPS)


def rules_invalid_text(rules, errors) -> str:
    """Each rule error of ``rules`` (``RulesInvalid.errors``) where the builder shows it, with its
    sentence: ``Condition 2 (age is more than): expected a number, got a string``, joined by "; "."""
    return "; ".join(f"{rule_error_place(rules, e.path)}: {e.message}" for e in errors)


def operator_words(op: str, value_type: str) -> str:
    """The builder's label of an operator; of one serving numbers and dates, the half for
    ``value_type`` ("gt": "is more than" of a number, "is after" of a date)."""
    label = OPERATOR_LABELS.get(op, op)
    if " / " not in label:
        return label
    number, date = label.split(" / ", 1)
    return f"is {date}" if value_type == "date" else number


def _placed(where: str, label: str | None) -> str:
    return f"{where} ({label})" if label else where


def _condition_label(node, *, name_key: str | None = None) -> str | None:
    """A condition as the builder's row names it: ``age is more than``, ``did “purchase”``."""
    if not isinstance(node, dict):
        return None
    keys = (name_key,) if name_key else ("attribute", "field")
    name = next((node[k] for k in keys if isinstance(node.get(k), str) and node[k]), None)
    if name is not None:
        value_type = COLUMNS.get(name, "string") if "field" in node else node.get("type") or "string"
        op = node.get("op")
        if value_type in OPERATORS and op in OPERATORS[value_type]:
            return f"{name} {_Words.operator(op, value_type)}"
        return name
    if isinstance(node.get("event"), str):
        return f"{'did not do' if node.get('did') is False else 'did'} “{node['event']}”"
    if "segment" in node:
        return "not a member of a segment" if node.get("member") is False else "member of a segment"
    if "reachable" in node:
        return "has an opted-in device"
    return None


def names_visible_to(reader, *, segments, apps) -> tuple[dict[int, str], dict[int, str]]:
    """The names of these segments and apps that ``reader`` may see, by id (a rule's words name
    those; the others read "segment #12", "app #3"). None reads none. A query for each kind asked."""
    if reader is None:
        return {}, {}
    from django.apps import apps as django_apps

    from accounts.selectors import visible_named

    return (
        visible_named(reader, django_apps.get_model("audiences", "Segment"), segments),
        visible_named(reader, django_apps.get_model("delivery", "App"), apps),
    )


def _json(node) -> str:
    return json.dumps(node, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Words:
    def __init__(self, *, segment_names: dict[int, str], app_names: dict[int, str]):
        self.segment_names = segment_names
        self.app_names = app_names

    def node(self, node, *, top: bool = False) -> str:
        try:
            return self._node(node, top=top)
        except _Unreadable:
            return _json(node)

    def _node(self, node, *, top: bool) -> str:
        if not isinstance(node, dict):
            raise _Unreadable
        groups = [g for g in GROUPS if g in node]
        if groups:
            if len(node) != 1 or not isinstance(node[groups[0]], list):
                raise _Unreadable
            children = "; ".join(self.node(child) for child in node[groups[0]]) or "nothing"
            words = GROUP_WORDS[groups[0]]
            return f"{words}: {children}" if top else f"{words} ({children})"
        if "attribute" in node and set(node) <= {"attribute", "type", "op", "value"}:
            return self.condition(node["attribute"], node, node.get("type") or "string")
        if "field" in node and set(node) <= {"field", "op", "value"}:
            if node["field"] not in COLUMNS:
                raise _Unreadable
            return self.condition(node["field"], node, COLUMNS[node["field"]])
        if "event" in node and set(node) <= {"event", "did", "min_count", "within_days", "where"}:
            return self.event(node)
        if "segment" in node and set(node) <= {"segment", "member"}:
            return self.membership(node)
        if set(node) == {"reachable"}:
            return self.reachable(node["reachable"])
        raise _Unreadable

    def condition(self, name, node: dict, value_type: str) -> str:
        """``name op value`` of an attribute, a profile field or an event's property."""
        op = node.get("op")
        if not isinstance(name, str) or value_type not in OPERATORS or op not in OPERATORS[value_type]:
            raise _Unreadable
        label = self.operator(op, value_type)
        if op in NO_VALUE_OPS:
            return f"{name} {label}"
        value = node.get("value")
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                raise _Unreadable
            return f"{name} {label} {', '.join(self.value(v, value_type) for v in value)}"
        if op == "between":
            if not isinstance(value, list) or len(value) != 2:
                raise _Unreadable
            return f"{name} {label} {self.value(value[0], value_type)} and {self.value(value[1], value_type)}"
        return f"{name} {label} {self.value(value, value_type)}"

    @staticmethod
    def operator(op: str, value_type: str) -> str:
        return operator_words(op, value_type)

    @staticmethod
    def value(value, value_type: str) -> str:
        if value_type == "string":
            if not isinstance(value, str):
                raise _Unreadable
            return f"“{value}”"
        if value_type == "number":
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise _Unreadable
            return str(value)
        if value_type == "boolean":
            if not isinstance(value, bool):
                raise _Unreadable
            return "true" if value else "false"
        # a date: "YYYY-MM-DD" or {"ago": N, "unit": "days"}
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and set(value) <= {"ago", "unit"} and _is_int(value.get("ago")):
            unit = value.get("unit", "days")
            if unit not in RELATIVE_UNITS:
                raise _Unreadable
            if value["ago"] == 0:
                return "today"
            return f"{_plural(value['ago'], unit[:-1])} ago"
        raise _Unreadable

    def event(self, node: dict) -> str:
        name, did = node["event"], node.get("did", True)
        count, within, where = node.get("min_count", 1), node.get("within_days"), node.get("where") or []
        if not isinstance(name, str) or not isinstance(did, bool) or not _is_int(count) or not isinstance(where, list):
            raise _Unreadable
        if within is not None and not _is_int(within):
            raise _Unreadable
        words = f"{'did' if did else 'did not do'} “{name}”"
        if count != 1:
            words += f" at least {count} times"
        if within is not None:
            words += f" in the last {_plural(within, 'day')}"
        conditions = []
        for cond in where:
            if (
                not isinstance(cond, dict)
                or "property" not in cond
                or not set(cond) <= {"property", "type", "op", "value"}
            ):
                raise _Unreadable
            conditions.append(self.condition(cond["property"], cond, cond.get("type") or "string"))
        if conditions:
            words += ", where " + " and ".join(conditions)
        return words

    def membership(self, node: dict) -> str:
        pk, member = node["segment"], node.get("member", True)
        if not _is_int(pk) or not isinstance(member, bool):
            raise _Unreadable
        name = self.segment_names.get(pk)
        named = f"“{name}”" if name is not None else numbered("segment", pk)
        return f"member of {named}" if member else f"not a member of {named}"

    def reachable(self, spec) -> str:
        if not isinstance(spec, dict) or not _is_int(spec.get("app")) or not set(spec) <= {"app", "platform"}:
            raise _Unreadable
        platform = spec.get("platform")
        if platform is not None and platform not in PLATFORM_WORDS:
            raise _Unreadable
        name = self.app_names.get(spec["app"])
        if name is None:
            name = numbered("app", spec["app"])
        words = f"has an opted-in device on {name}"
        return f"{words} ({PLATFORM_WORDS[platform]})" if platform else words
