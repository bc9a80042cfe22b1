"""A rule tree in words, as the read-only pages show it: every node kind and operator, and nesting."""

import pytest

from audiences.rules.schema import NODE_KINDS, OPERATORS
from audiences.rules.words import rule_error_place, rules_text

pytestmark = pytest.mark.embedded

SEGMENTS = {12: "VIPs"}
APPS = {3: "Shop"}


def words(node) -> str:
    return rules_text(node, segment_names=SEGMENTS, app_names=APPS)


def attr(name, type_, op, value=None):
    node = {"attribute": name, "type": type_, "op": op}
    return node if value is None else {**node, "value": value}


CONDITIONS = [
    # strings
    (attr("plan", "string", "eq", "pro"), "plan is “pro”"),
    (attr("plan", "string", "ne", "pro"), "plan is not “pro”"),
    (attr("plan", "string", "in", ["pro", "team"]), "plan is one of “pro”, “team”"),
    (attr("plan", "string", "not_in", ["free"]), "plan is none of “free”"),
    (attr("city", "string", "contains", "par"), "city contains “par”"),
    (attr("city", "string", "starts_with", "Pa"), "city starts with “Pa”"),
    (attr("plan", "string", "exists"), "plan is set"),
    (attr("plan", "string", "not_exists"), "plan is not set"),
    # numbers
    (attr("age", "number", "eq", 34), "age is 34"),
    (attr("age", "number", "ne", 34), "age is not 34"),
    (attr("age", "number", "lt", 18), "age is less than 18"),
    (attr("age", "number", "lte", 18), "age is at most 18"),
    (attr("score", "number", "gt", 7.5), "score is more than 7.5"),
    (attr("age", "number", "gte", 21), "age is at least 21"),
    (attr("age", "number", "between", [18, 30]), "age is between 18 and 30"),
    (attr("age", "number", "in", [1, 2]), "age is one of 1, 2"),
    (attr("age", "number", "not_in", [3]), "age is none of 3"),
    (attr("age", "number", "exists"), "age is set"),
    (attr("age", "number", "not_exists"), "age is not set"),
    # booleans
    (attr("vip", "boolean", "eq", True), "vip is true"),
    (attr("vip", "boolean", "ne", False), "vip is not false"),
    (attr("vip", "boolean", "exists"), "vip is set"),
    (attr("vip", "boolean", "not_exists"), "vip is not set"),
    # dates, absolute and relative
    (attr("signup", "date", "eq", "2026-03-01"), "signup is 2026-03-01"),
    (attr("signup", "date", "ne", {"ago": 0, "unit": "days"}), "signup is not today"),
    (attr("signup", "date", "lt", "2026-03-01"), "signup is before 2026-03-01"),
    (attr("signup", "date", "lte", {"ago": 1, "unit": "weeks"}), "signup is on or before 1 week ago"),
    (attr("signup", "date", "gt", {"ago": 1, "unit": "days"}), "signup is after 1 day ago"),
    (attr("signup", "date", "gte", {"ago": 7}), "signup is on or after 7 days ago"),
    (
        attr("signup", "date", "between", [{"ago": 30, "unit": "days"}, "2026-06-01"]),
        "signup is between 30 days ago and 2026-06-01",
    ),
    (attr("signup", "date", "exists"), "signup is set"),
    (attr("signup", "date", "not_exists"), "signup is not set"),
    # an attribute without its type is a string, as the compiler reads it
    ({"attribute": "plan", "op": "eq", "value": "pro"}, "plan is “pro”"),
    # profile fields: the column's own type
    ({"field": "locale", "op": "starts_with", "value": "fr"}, "locale starts with “fr”"),
    ({"field": "external_id", "op": "exists"}, "external_id is set"),
    (
        {"field": "last_seen_at", "op": "gte", "value": {"ago": 2, "unit": "weeks"}},
        "last_seen_at is on or after 2 weeks ago",
    ),
    ({"field": "created_at", "op": "lt", "value": "2026-01-01"}, "created_at is before 2026-01-01"),
    # events
    ({"event": "purchase"}, "did “purchase”"),
    (
        {"event": "purchase", "did": True, "min_count": 2, "within_days": 30},
        "did “purchase” at least 2 times in the last 30 days",
    ),
    ({"event": "purchase", "did": False, "within_days": 1}, "did not do “purchase” in the last 1 day"),
    (
        {
            "event": "purchase",
            "min_count": 3,
            "where": [
                {"property": "amount", "type": "number", "op": "gte", "value": 50},
                {"property": "currency", "op": "in", "value": ["EUR", "USD"]},
            ],
        },
        "did “purchase” at least 3 times, where amount is at least 50 and currency is one of “EUR”, “USD”",
    ),
    # membership
    ({"segment": 12}, "member of “VIPs”"),
    ({"segment": 12, "member": False}, "not a member of “VIPs”"),
    ({"segment": 99, "member": True}, "member of segment #99"),  # one it is not given a name for
    # reachability
    ({"reachable": {"app": 3, "platform": "ios"}}, "has an opted-in device on Shop (iOS)"),
    ({"reachable": {"app": 3, "platform": "android"}}, "has an opted-in device on Shop (Android)"),
    ({"reachable": {"app": 3}}, "has an opted-in device on Shop"),
    ({"reachable": {"app": 7}}, "has an opted-in device on app #7"),
]


@pytest.mark.parametrize(("node", "said"), CONDITIONS, ids=[said for _, said in CONDITIONS])
def test_each_condition_reads_in_words(node, said):
    assert words({"all": [node]}) == f"all of: {said}"


def test_every_type_and_operator_of_the_schema_is_read():
    read = {(n.get("type") or "string", n["op"]) for n, _ in CONDITIONS if "attribute" in n}
    assert read == {(type_, op) for type_, ops in OPERATORS.items() for op in ops}
    kinds = {next(k for k in NODE_KINDS if k in n) for n, _ in CONDITIONS} | {"all", "any", "none"}
    assert kinds == set(NODE_KINDS)


@pytest.mark.parametrize("group", ["all", "any", "none"])
def test_each_group_reads_in_words(group):
    tree = {group: [attr("plan", "string", "eq", "pro"), {"segment": 12}]}
    assert words(tree) == f"{group} of: plan is “pro”; member of “VIPs”"


def test_nested_groups_read_in_brackets():
    tree = {
        "all": [
            attr("plan", "string", "eq", "pro"),
            {"any": [{"field": "locale", "op": "eq", "value": "fr"}, {"none": [{"segment": 12}, {"event": "churn"}]}]},
            {"reachable": {"app": 3, "platform": "ios"}},
        ]
    }
    assert words(tree) == (
        "all of: plan is “pro”; any of (locale is “fr”; none of (member of “VIPs”; did “churn”)); "
        "has an opted-in device on Shop (iOS)"
    )


@pytest.mark.parametrize(
    "node",
    [
        {"some": "thing"},
        {"attribute": "plan", "type": "string", "op": "gt", "value": "pro"},  # no such operator for strings
        {"attribute": "plan", "type": "colour", "op": "eq", "value": "red"},
        {"attribute": "age", "type": "number", "op": "eq", "value": "old"},
        {"attribute": "age", "type": "number", "op": "between", "value": [1]},
        {"attribute": "plan", "op": "in", "value": "pro"},
        {"field": "height", "op": "eq", "value": "tall"},
        {"field": "locale", "op": "eq", "value": "fr", "extra": 1},
        {"event": "purchase", "min_count": "two"},
        {"event": "purchase", "where": [{"property": "x", "op": "nope", "value": 1}]},
        {"segment": "VIPs"},
        {"reachable": {"app": 3, "platform": "windows"}},
        {"reachable": 3},
        {"all": "everyone"},
        {"all": [], "any": []},
        ["a list"],
        42,
    ],
)
def test_a_node_of_no_known_shape_reads_as_compact_json(node):
    import json

    said = json.dumps(node, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert words({"all": [attr("plan", "string", "exists"), node]}) == f"all of: plan is set; {said}"


def test_a_tree_of_no_known_shape_or_none_never_raises():
    assert words({"whatever": True}) == '{"whatever":true}'
    assert words(None) == "no rules"
    assert words({"all": []}) == "all of: nothing"


def test_a_rule_errors_place_reads_as_the_builder_lists_its_groups_and_conditions():
    tree = {
        "all": [
            {"field": "created_at", "op": "lt", "value": 3},
            {"none": [{"segment": 4, "member": False}, {"attribute": "age", "type": "number", "op": "between"}]},
            {"event": "purchase", "where": [{"property": "amount", "type": "number", "op": "gte"}]},
            {"attribute": "plan", "op": "nope"},
        ]
    }
    assert rule_error_place(tree, "rules.all[0].value") == "Condition 1 (created_at is before)"
    assert rule_error_place(tree, "rules.all[1].none[0].segment") == "Group 2, condition 1 (not a member of a segment)"
    assert rule_error_place(tree, "rules.all[1].none[1].value[0]") == "Group 2, condition 2 (age is between)"
    assert rule_error_place(tree, "rules.all[1].none") == "Group 2"
    assert (
        rule_error_place(tree, "rules.all[2].where[0].value")
        == "Condition 3 (did “purchase”), where 1 (amount is at least)"
    )
    assert rule_error_place(tree, "rules.all[3].type") == "Condition 4 (plan)"
    # A path the tree does not hold (the compiler's, about the whole tree) reads as the rules.
    assert rule_error_place(tree, "rules") == "The rules"
    assert rule_error_place(tree, "rules.all[9].value") == "The rules"
    assert rule_error_place(None, "rules.all[0]") == "The rules"


def test_a_rule_errors_place_in_a_tree_whose_top_level_is_one_condition_is_its_condition_1():
    """The builder shows such a tree as a group of one condition: its errors are at that condition."""
    age = {"attribute": "age", "type": "number", "op": "gt", "value": "old"}
    assert rule_error_place(age, "rules.value") == "Condition 1 (age is more than)"
    assert rule_error_place({"segment": 4}, "rules.segment") == "Condition 1 (member of a segment)"
    event = {"event": "purchase", "where": [{"property": "amount", "type": "number", "op": "gte"}]}
    assert (
        rule_error_place(event, "rules.where[0].value") == "Condition 1 (did “purchase”), where 1 (amount is at least)"
    )
    assert rule_error_place(age, "rules") == "The rules"  # the compiler's, about the whole tree
