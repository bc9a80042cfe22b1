"""The rule language against hand-checked members, on PostgreSQL and (marked embedded) on SQLite."""

import datetime as dt
import re

import pytest

from audiences.models import Event, Profile, Segment, SegmentMember
from audiences.rules.compiler import rules_compile
from audiences.rules.schema import RulesInvalid, device_model
from audiences.rules.validation import rules_validate
from audiences.services.segments import segment_preview
from tests.factories import ProfileFactory

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=dt.UTC)


def at(*args):
    return dt.datetime(*args, tzinfo=dt.UTC)


@pytest.fixture
def people(db):
    """Five profiles whose attributes, columns and events cover every operator and type."""
    ann = ProfileFactory(
        external_id="ann",
        attributes={"plan": "pro", "age": 34, "vip": True, "signup": "2026-06-10", "city": "Paris", "score": 7.5},
        locale="fr-FR",
        timezone="Europe/Paris",
        created_at=at(2026, 6, 14, 10),
        last_seen_at=at(2026, 6, 15, 9),
    )
    bob = ProfileFactory(
        external_id="bob",
        attributes={"plan": "free", "age": 17, "vip": False, "signup": "2026-01-31T23:30:00Z", "city": "paris-sud"},
        locale="en-US",
        created_at=at(2026, 1, 1),
    )
    cid = ProfileFactory(
        external_id="cid",
        attributes={"plan": "team", "age": "forty", "signup": "not a date", "score": 3},
        created_at=at(2026, 6, 8, 12),
        last_seen_at=at(2026, 3, 1),
    )
    dee = ProfileFactory(
        external_id="dee",
        attributes={"plan": "Pro", "age": 65, "vip": "true", "signup": "2026-06-15T08:00:00+02:00"},
        locale="de",
        created_at=at(2025, 12, 31, 23, 59),
    )
    eve = ProfileFactory(external_id="eve", attributes={}, created_at=at(2026, 6, 15))
    day = dt.timedelta(days=1)
    Event.objects.bulk_create(
        [
            Event(profile=ann, name="purchase", properties={"amount": 120}, occurred_at=NOW - 2 * day),
            Event(profile=ann, name="purchase", properties={"amount": 20}, occurred_at=NOW - 10 * day),
            Event(profile=ann, name="purchase", properties={"amount": 60}, occurred_at=NOW - 40 * day),
            Event(profile=ann, name="app_open", occurred_at=NOW - dt.timedelta(hours=1)),
            Event(profile=bob, name="purchase", properties={"amount": 5}, occurred_at=NOW - day),
            Event(profile=cid, name="app_open", occurred_at=NOW - 100 * day),
            Event(
                profile=dee, name="purchase", properties={"amount": 70, "currency": "EUR"}, occurred_at=NOW - 5 * day
            ),
            Event(profile=dee, name="purchase", properties={"amount": 80}, occurred_at=NOW - 6 * day),
        ]
    )
    return {p.external_id: p for p in (ann, bob, cid, dee, eve)}


def members(tree) -> set[str]:
    rules_validate(tree)
    return set(Profile.objects.filter(rules_compile(tree, now=NOW)).values_list("external_id", flat=True))


def attr(name, type_, op, value=None):
    node = {"attribute": name, "type": type_, "op": op}
    if value is not None:
        node["value"] = value
    return node


def col(name, op, value=None):
    node = {"field": name, "op": op}
    if value is not None:
        node["value"] = value
    return node


ALL = {"ann", "bob", "cid", "dee", "eve"}

STRING_CASES = [
    (attr("plan", "string", "eq", "pro"), {"ann"}),  # exact: "Pro" does not match
    (attr("plan", "string", "ne", "pro"), {"bob", "cid", "dee", "eve"}),  # a missing attribute is "not pro"
    (attr("plan", "string", "in", ["pro", "team"]), {"ann", "cid"}),
    (attr("plan", "string", "not_in", ["pro", "team"]), {"bob", "dee", "eve"}),
    (attr("plan", "string", "contains", "R"), {"ann", "bob", "dee"}),  # case-insensitive
    (attr("plan", "string", "starts_with", "p"), {"ann", "dee"}),
    (attr("plan", "string", "exists"), {"ann", "bob", "cid", "dee"}),
    (attr("plan", "string", "not_exists"), {"eve"}),
    (attr("city", "string", "contains", "PARIS"), {"ann", "bob"}),
    (attr("age", "string", "eq", "forty"), {"cid"}),
    (attr("age", "string", "eq", "34"), set()),  # ann's age is the number 34, not the string
    (attr("age", "string", "contains", "4"), set()),  # contains looks at strings only
]

NUMBER_CASES = [
    (attr("age", "number", "eq", 34), {"ann"}),
    (attr("age", "number", "eq", 34.0), {"ann"}),
    (attr("age", "number", "ne", 34), {"bob", "cid", "dee", "eve"}),
    (attr("age", "number", "lt", 34), {"bob"}),  # cid's "forty" is not a number: no match, no error
    (attr("age", "number", "lte", 34), {"ann", "bob"}),
    (attr("age", "number", "gt", 34), {"dee"}),
    (attr("age", "number", "gte", 17), {"ann", "bob", "dee"}),
    (attr("age", "number", "between", [17, 34]), {"ann", "bob"}),
    (attr("age", "number", "in", [17, 65]), {"bob", "dee"}),
    (attr("age", "number", "not_in", [17, 65]), {"ann", "cid", "eve"}),
    (attr("age", "number", "exists"), {"ann", "bob", "cid", "dee"}),
    (attr("age", "number", "not_exists"), {"eve"}),
    (attr("score", "number", "gt", 5), {"ann"}),
    (attr("score", "number", "lt", 7.5), {"cid"}),
    (attr("score", "number", "between", [3, 7.5]), {"ann", "cid"}),
]

BOOLEAN_CASES = [
    (attr("vip", "boolean", "eq", True), {"ann"}),  # dee's "true" is a string
    (attr("vip", "boolean", "eq", False), {"bob"}),
    (attr("vip", "boolean", "ne", True), {"bob", "cid", "dee", "eve"}),
    (attr("vip", "boolean", "ne", False), {"ann", "cid", "dee", "eve"}),
    (attr("vip", "boolean", "exists"), {"ann", "bob", "dee"}),
    (attr("vip", "boolean", "not_exists"), {"cid", "eve"}),
]

DATE_CASES = [  # today is 2026-06-15; dates compare by calendar day
    (attr("signup", "date", "eq", "2026-06-10"), {"ann"}),
    (attr("signup", "date", "ne", "2026-06-10"), {"bob", "cid", "dee", "eve"}),
    (attr("signup", "date", "lt", "2026-06-10"), {"bob"}),
    (attr("signup", "date", "lte", "2026-06-10"), {"ann", "bob"}),
    (attr("signup", "date", "gt", "2026-06-10"), {"dee"}),
    (attr("signup", "date", "gte", {"ago": 7, "unit": "days"}), {"ann", "dee"}),  # in the last 7 days
    (attr("signup", "date", "gte", {"ago": 1, "unit": "weeks"}), {"ann", "dee"}),
    (attr("signup", "date", "eq", {"ago": 0}), {"dee"}),  # today
    (attr("signup", "date", "between", ["2026-01-31", "2026-06-10"]), {"ann", "bob"}),
    (attr("signup", "date", "exists"), {"ann", "bob", "cid", "dee"}),
    (attr("signup", "date", "not_exists"), {"eve"}),
]

COLUMN_CASES = [
    (col("locale", "eq", "fr-FR"), {"ann"}),
    (col("locale", "ne", "fr-FR"), {"bob", "cid", "dee", "eve"}),
    (col("locale", "in", ["de", "en-US"]), {"bob", "dee"}),
    (col("locale", "not_in", ["de", "en-US"]), {"ann", "cid", "eve"}),
    (col("locale", "contains", "us"), {"bob"}),
    (col("locale", "starts_with", "F"), {"ann"}),
    (col("locale", "exists"), {"ann", "bob", "dee"}),
    (col("locale", "not_exists"), {"cid", "eve"}),
    (col("timezone", "eq", "Europe/Paris"), {"ann"}),
    (col("external_id", "starts_with", "a"), {"ann"}),
    (col("created_at", "eq", "2026-06-14"), {"ann"}),
    (col("created_at", "ne", "2026-06-14"), {"bob", "cid", "dee", "eve"}),
    (col("created_at", "gte", {"ago": 7}), {"ann", "cid", "eve"}),
    (col("created_at", "lt", "2026-01-01"), {"dee"}),
    (col("created_at", "lte", "2026-01-01"), {"bob", "dee"}),
    (col("created_at", "gt", "2026-06-14"), {"eve"}),
    (col("created_at", "between", ["2026-01-01", "2026-06-08"]), {"bob", "cid"}),
    (col("last_seen_at", "exists"), {"ann", "cid"}),
    (col("last_seen_at", "not_exists"), {"bob", "dee", "eve"}),
    (col("last_seen_at", "gte", {"ago": 30}), {"ann"}),
    (col("last_seen_at", "ne", "2026-06-15"), {"bob", "cid", "dee", "eve"}),  # never seen: not that day
    (col("last_seen_at", "lt", "2026-06-01"), {"cid"}),
]


def ev(name="purchase", **kw):
    return {"event": name, **kw}


def prop(name, type_, op, value=None):
    node = {"property": name, "type": type_, "op": op}
    if value is not None:
        node["value"] = value
    return node


EVENT_CASES = [
    (ev(), {"ann", "bob", "dee"}),
    (ev(did=False), {"cid", "eve"}),
    (ev(within_days=7), {"ann", "bob", "dee"}),
    (ev(within_days=3), {"ann", "bob"}),
    (ev(min_count=2), {"ann", "dee"}),
    (ev(min_count=2, within_days=7), {"dee"}),
    (ev(min_count=3), {"ann"}),
    (ev(did=False, min_count=2), {"bob", "cid", "eve"}),
    (ev(where=[prop("amount", "number", "gte", 50)]), {"ann", "dee"}),
    (ev(where=[prop("amount", "number", "gte", 50)], within_days=30), {"ann", "dee"}),
    (ev(where=[prop("amount", "number", "gte", 50)], min_count=2), {"ann", "dee"}),
    (ev(where=[prop("amount", "number", "gte", 50)], min_count=2, within_days=30), {"dee"}),
    (ev(where=[prop("currency", "string", "eq", "EUR")]), {"dee"}),
    (ev(where=[prop("currency", "string", "not_exists")]), {"ann", "bob", "dee"}),
    (ev(where=[prop("amount", "number", "between", [1, 10])]), {"bob"}),
    (ev("app_open", within_days=30), {"ann"}),
    (ev("never_happens"), set()),
]

GROUP_CASES = [
    ({"all": [attr("plan", "string", "eq", "pro"), attr("vip", "boolean", "eq", True)]}, {"ann"}),
    ({"all": [attr("plan", "string", "eq", "pro"), attr("plan", "string", "eq", "free")]}, set()),
    (
        {"all": [attr("plan", "string", "eq", "free"), attr("age", "number", "eq", 17), col("locale", "exists")]},
        {"bob"},
    ),
    ({"any": [attr("plan", "string", "eq", "pro"), attr("age", "number", "gt", 60)]}, {"ann", "dee"}),
    ({"all": [attr("plan", "string", "exists"), attr("age", "number", "lt", 40)]}, {"ann", "bob"}),
    ({"none": [attr("plan", "string", "eq", "pro"), attr("age", "number", "gt", 60)]}, {"bob", "cid", "eve"}),
    ({"none": [attr("age", "number", "gt", 30)]}, {"bob", "cid", "eve"}),  # "forty" and missing count as not > 30
    ({"none": [attr("signup", "date", "gte", "2026-06-01")]}, {"bob", "cid", "eve"}),
    (
        {
            "all": [
                {"any": [ev(min_count=2), col("locale", "eq", "en-US")]},
                {"none": [attr("vip", "boolean", "eq", True)]},
            ]
        },
        {"bob", "dee"},
    ),
    ({"all": [{"any": [{"none": [col("external_id", "eq", "eve")]}]}]}, ALL - {"eve"}),
]


@pytest.mark.parametrize(
    ("tree", "expected"),
    STRING_CASES + NUMBER_CASES + BOOLEAN_CASES + DATE_CASES,
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_attribute_condition_matches_hand_checked_profiles(people, tree, expected):
    assert members({"all": [tree]}) == expected


@pytest.mark.parametrize(("tree", "expected"), COLUMN_CASES, ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_column_condition_matches_hand_checked_profiles(people, tree, expected):
    assert members({"all": [tree]}) == expected


@pytest.mark.parametrize(("tree", "expected"), EVENT_CASES, ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_event_condition_matches_hand_checked_profiles(people, tree, expected):
    assert members({"all": [tree]}) == expected


@pytest.mark.parametrize(("tree", "expected"), GROUP_CASES, ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_groups_combine_conditions(people, tree, expected):
    assert members(tree) == expected


def test_membership_of_static_and_rules_segments(people):
    static = Segment.objects.create(name="hand-kept", kind=Segment.Kind.STATIC)
    SegmentMember.objects.bulk_create(
        [SegmentMember(segment=static, profile=people["bob"]), SegmentMember(segment=static, profile=people["cid"])]
    )
    paying = Segment.objects.create(name="paying", rules={"all": [attr("plan", "string", "in", ["pro", "team"])]})
    assert members({"all": [{"segment": static.pk}]}) == {"bob", "cid"}
    assert members({"all": [{"segment": static.pk, "member": False}]}) == {"ann", "dee", "eve"}
    assert members({"all": [{"segment": paying.pk}]}) == {"ann", "cid"}
    assert members({"none": [{"segment": paying.pk}]}) == {"bob", "dee", "eve"}
    assert members({"all": [{"segment": paying.pk}, {"segment": static.pk}]}) == {"cid"}


def test_nested_tree_with_segments_and_events_is_one_query(people, django_assert_num_queries):
    static = Segment.objects.create(name="hand-kept", kind=Segment.Kind.STATIC)
    SegmentMember.objects.create(segment=static, profile=people["dee"])
    inner = Segment.objects.create(name="adults", rules={"all": [attr("age", "number", "gte", 18)]})
    tree = {
        "any": [
            {"all": [attr("plan", "string", "eq", "free"), attr("city", "string", "contains", "paris")]},
            {
                "all": [
                    {"segment": static.pk},
                    ev(within_days=7, where=[prop("amount", "number", "gt", 10)]),
                    {"segment": inner.pk},
                    {"none": [col("locale", "eq", "fr-FR")]},
                ]
            },
        ]
    }
    rules_validate(tree)
    condition = rules_compile(tree, now=NOW)
    with django_assert_num_queries(1):
        found = set(Profile.objects.filter(condition).values_list("external_id", flat=True))
    assert found == {"bob", "dee"}


def test_relative_dates_follow_the_clock(people):
    tree = {"all": [attr("signup", "date", "gte", {"ago": 7})]}
    later = NOW + dt.timedelta(days=30)
    assert set(Profile.objects.filter(rules_compile(tree, now=later)).values_list("external_id", flat=True)) == set()


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (col("created_at", "lte", "9999-12-31"), ALL),
        (col("created_at", "gt", "9999-12-31"), set()),
        (col("created_at", "eq", "9999-12-31"), set()),
        (col("created_at", "ne", "9999-12-31"), ALL),
        (col("last_seen_at", "lte", "9999-12-31"), {"ann", "cid"}),
        (col("last_seen_at", "between", ["2026-06-01", "9999-12-31"]), {"ann"}),
    ],
    # Named by the rule and the sorted members: a set's order differs between test processes.
    ids=lambda value: repr(sorted(value)) if isinstance(value, set) else repr(value),
)
def test_the_last_day_a_date_holds_is_a_rule_that_counts(people, manager_alice, tree, expected):
    """9999-12-31 (the builder's date input takes it, the schema too) has no next day: its
    conditions compiled to the next day's start and failed every count, preview and send."""
    assert members({"all": [tree]}) == expected
    preview = segment_preview(by=manager_alice, rules={"all": [tree]}, reach=False)
    assert preview.count == len(expected)


def test_a_day_ends_at_its_last_microsecond(db):
    last = ProfileFactory(external_id="last", created_at=at(2026, 6, 14, 23, 59, 59, 999999))
    ProfileFactory(external_id="next", created_at=at(2026, 6, 15))
    assert members({"all": [col("created_at", "eq", "2026-06-14")]}) == {last.external_id}
    assert members({"all": [col("created_at", "lte", "2026-06-14")]}) == {"last"}
    assert members({"all": [col("created_at", "gt", "2026-06-14")]}) == {"next"}
    assert members({"all": [col("created_at", "between", ["2026-06-01", "2026-06-14"])]}) == {"last"}


# --- validation: every broken rule is named with its path --------------------------------------


def errors_of(tree, **kwargs) -> list[tuple[str, str]]:
    with pytest.raises(RulesInvalid) as info:
        rules_validate(tree, **kwargs)
    return [(e.path, e.code) for e in info.value.errors]


def test_unknown_field_is_named_with_its_path():
    assert errors_of({"all": [col("locale", "eq", "fr"), col("shoe_size", "eq", "42")]}) == [
        ("rules.all[1].field", "unknown_field")
    ]


def test_unknown_operator_for_the_type_is_refused():
    assert errors_of({"any": [{"all": [attr("vip", "boolean", "gt", True)]}]}) == [
        ("rules.any[0].all[0].op", "unknown_operator")
    ]
    assert errors_of({"all": [attr("plan", "string", "between", ["a", "b"])]}) == [
        ("rules.all[0].op", "unknown_operator")
    ]


@pytest.mark.parametrize(
    ("node", "path"),
    [
        (attr("age", "number", "gt", "30"), "rules.all[0].value"),
        (attr("age", "number", "gt", True), "rules.all[0].value"),
        (attr("vip", "boolean", "eq", "yes"), "rules.all[0].value"),
        (attr("plan", "string", "in", "pro"), "rules.all[0].value"),
        (attr("plan", "string", "in", ["pro", 3]), "rules.all[0].value[1]"),
        (attr("signup", "date", "gte", "15/06/2026"), "rules.all[0].value"),
        (attr("signup", "date", "gte", "2026-02-30"), "rules.all[0].value"),
        (attr("signup", "date", "gte", {"ago": -1}), "rules.all[0].value"),
        (attr("age", "number", "between", [40, 30]), "rules.all[0].value"),
        (attr("age", "number", "between", [30]), "rules.all[0].value"),
        (col("created_at", "gt", 5), "rules.all[0].value"),
        (ev(min_count=0), "rules.all[0].min_count"),
        (ev(within_days="7"), "rules.all[0].within_days"),
        ({"event": "purchase", "where": [prop("amount", "number", "gt", "ten")]}, "rules.all[0].where[0].value"),
        ({"segment": "paying"}, "rules.all[0].segment"),
        ("plan = pro", "rules.all[0]"),
    ],
)
def test_wrong_type_is_refused_with_its_path(node, path):
    found = errors_of({"all": [node]})
    assert found[0][0] == path
    assert found[0][1] in {"wrong_type", "wrong_order"}


def _holders(node, *, correlated=False) -> list[str]:
    from audiences.rules.compiler import Compiler

    condition = Compiler(correlated=correlated).compile({"all": [node]})
    return sorted(Profile.objects.filter(condition).values_list("external_id", flat=True))


def test_text_is_compared_as_written_by_every_evaluator_and_a_rule_text_with_spaces_around_it_is_refused(db):
    """'plan is "pro "' matched nobody a marketer could see: the text a rule compares whole (is, is
    not, in, not in) is refused when white space surrounds it, naming the value, and both
    databases, the count and the per-profile reading compare the text as written."""
    ProfileFactory(external_id="a", attributes={"plan": "pro", "tier": "gold"})
    ProfileFactory(external_id="b", attributes={"plan": "pro ", "tier": "gold"})
    ProfileFactory(external_id="c", attributes={"plan": " PRO"})
    for correlated in (False, True):
        assert _holders(attr("plan", "string", "eq", "pro"), correlated=correlated) == ["a"]
        assert _holders(attr("plan", "string", "in", ["pro", "x"]), correlated=correlated) == ["a"]
        assert _holders(attr("plan", "string", "ne", "pro"), correlated=correlated) == ["b", "c"]
        assert _holders(attr("plan", "string", "contains", "pro"), correlated=correlated) == ["a", "b", "c"]
        both = {"all": [attr("plan", "string", "eq", "pro"), attr("tier", "string", "eq", "gold")]}
        assert _holders(both, correlated=correlated) == ["a"]  # one containment on PostgreSQL
    for value in ("pro ", " pro", "pro\t", "\u00a0pro"):
        assert errors_of({"all": [attr("plan", "string", "eq", value)]}) == [("rules.all[0].value", "padded")]
    assert errors_of({"all": [attr("plan", "string", "not_in", ["pro", "team "])]}) == [
        ("rules.all[0].value[1]", "padded")
    ]
    assert errors_of({"all": [col("locale", "ne", "fr ")]}) == [("rules.all[0].value", "padded")]
    where = {"event": "purchase", "where": [prop("sku", "string", "eq", " x")]}
    assert errors_of({"all": [where]}) == [("rules.all[0].where[0].value", "padded")]
    with pytest.raises(RulesInvalid) as info:
        rules_validate({"all": [attr("plan", "string", "eq", "pro ")]})
    assert info.value.messages[0] == (
        "rules.all[0].value: 'pro ' begins or ends with white space, which 'is' compares too: remove it"
    )
    # Where a space may be meant, it is kept: "starts with 'Dr. '", "contains ' and '".
    rules_validate({"all": [attr("plan", "string", "starts_with", "pro "), attr("plan", "string", "contains", " ")]})


def test_a_number_rule_reads_a_number_written_plainly_as_text_on_every_evaluator(db):
    """'age is more than 30' left out every profile whose age an integrator sent as "42": a number
    rule reads text that is a number written plainly (an optional minus, digits, a decimal part
    not ending in 0), as the number it writes, on both databases, the count and a profile's own
    reading alike; other text ("042", "42.0", " 42", "1e3") is still no number."""
    from tests.factories import EventFactory

    ProfileFactory(external_id="n", attributes={"age": 42, "plan": "pro"})
    ProfileFactory(external_id="t", attributes={"age": "42", "plan": "pro"})
    ProfileFactory(external_id="f", attributes={"age": "4.5"})
    ProfileFactory(external_id="neg", attributes={"age": "-7"})
    ProfileFactory(external_id="big", attributes={"age": "10000000000000000"})
    for index, odd in enumerate(["042", "42.0", " 42", "1e3", "forty", "", "-0", "4.50", "42\n"]):
        ProfileFactory(external_id=f"odd{index}", attributes={"age": odd})
    odd = sorted(f"odd{index}" for index in range(9))
    for correlated in (False, True):
        assert _holders(attr("age", "number", "gt", 30), correlated=correlated) == ["big", "n", "t"]
        assert _holders(attr("age", "number", "eq", 42), correlated=correlated) == ["n", "t"]
        assert _holders(attr("age", "number", "eq", 42.0), correlated=correlated) == ["n", "t"]
        assert _holders(attr("age", "number", "in", [42, 4.5]), correlated=correlated) == ["f", "n", "t"]
        assert _holders(attr("age", "number", "eq", 1e16), correlated=correlated) == ["big"]
        assert _holders(attr("age", "number", "ne", 42), correlated=correlated) == sorted(["big", "f", "neg", *odd])
        assert _holders(attr("age", "number", "between", [-10, 5]), correlated=correlated) == ["f", "neg"]
        both = {"all": [attr("age", "number", "eq", 42), attr("plan", "string", "eq", "pro")]}
        assert _holders(both, correlated=correlated) == ["n", "t"]
    EventFactory(profile=Profile.objects.get(external_id="n"), name="purchase", properties={"amount": "50"})
    EventFactory(profile=Profile.objects.get(external_id="f"), name="purchase", properties={"amount": "5"})
    bought = {"event": "purchase", "where": [prop("amount", "number", "gte", 10)]}
    assert _holders(bought) == ["n"]


# Digits of other scripts: "\d" takes them in Python, and in PostgreSQL under an ICU locale.
ARABIC_DAY = "\u0662\u0660\u0662\u0666-\u0660\u0666-\u0661\u0660"  # 2026-06-10 in Arabic-Indic digits
WIDE_DAY = "\uff12\uff10\uff12\uff16-06-10"  # its year in full-width digits
OTHER_DIGITS = ["\u0664\u0662", "\uff14\uff12", ARABIC_DAY, WIDE_DAY]  # 42 twice, then the days


def test_a_date_or_a_number_written_in_other_digits_is_text_to_every_reader_of_a_segment(db):
    """A day or a number written with digits of another script is no date and no number, as any
    other text: the count, a send's resolve and a profile's own reading leave it out of 'after',
    'before', 'within days' and 'more than', and still count everyone else."""
    from audiences.rules.compiler import Compiler, segment_count, segment_profiles
    from tests.factories import EventFactory

    plain = ProfileFactory(external_id="plain", attributes={"signup": "2026-06-10", "age": 42})
    arabic = ProfileFactory(external_id="arabic", attributes={"signup": ARABIC_DAY, "age": "\u0664\u0662"})
    wide = ProfileFactory(external_id="wide", attributes={"signup": WIDE_DAY, "age": "\uff14\uff12"})
    ProfileFactory(external_id="text", attributes={"signup": "not a date", "age": "forty"})
    for profile, day, amount in (
        (plain, "2026-06-10", 42),
        (arabic, ARABIC_DAY, "\u0664\u0662"),
        (wide, WIDE_DAY, "\uff14\uff12"),
    ):
        EventFactory(profile=profile, name="purchase", properties={"on": day, "amount": amount})
    rules = [
        attr("signup", "date", "gt", "2026-01-01"),
        attr("signup", "date", "lt", "2027-01-01"),
        attr("signup", "date", "gte", {"ago": 30}),
        attr("signup", "date", "between", ["2026-06-01", "2026-06-30"]),
        attr("age", "number", "gt", 30),
        ev(where=[prop("on", "date", "gt", "2026-01-01")]),
        ev(where=[prop("amount", "number", "gt", 30)]),
    ]
    for index, rule in enumerate(rules):
        for correlated in (False, True):
            condition = Compiler(correlated=correlated, now=NOW).compile({"all": [rule]})
            assert list(Profile.objects.filter(condition).values_list("external_id", flat=True)) == ["plain"], rule
        segment = Segment.objects.create(name=f"other digits {index}", kind=Segment.Kind.RULES, rules={"all": [rule]})
        assert segment_count(segment, now=NOW) == 1, rule
        assert list(segment_profiles(segment, now=NOW, union=True).values_list("external_id", flat=True)) == ["plain"]
    # As text they are what 'is not a date' holds: everything but the plain day.
    outside = {"none": [attr("signup", "date", "gt", "2026-01-01")]}
    assert members(outside) == {"arabic", "wide", "text"}


def test_a_number_written_with_an_underscore_is_text_to_every_reader_of_a_segment(db):
    """Python's int() and float() read "1_000" as 1000, PostgreSQL's numeric refuses it: a number
    rule reads it as no number (text it does not read, which the builder's warning names), in the
    count, a send's resolve and a profile's own reading, on either database."""
    from audiences.rules.compiler import Compiler, segment_count, segment_profiles
    from audiences.selectors import NUMBER_AS_TEXT, rules_unread_warnings
    from tests.factories import EventFactory

    plain = ProfileFactory(external_id="plain", attributes={"age": "1000"})
    underscored = ProfileFactory(external_id="underscored", attributes={"age": "1_000"})
    EventFactory(profile=plain, name="purchase", properties={"amount": 10.5})
    EventFactory(profile=underscored, name="purchase", properties={"amount": "1_0.5"})
    for index, rule in enumerate(
        [
            attr("age", "number", "gt", 30),
            attr("age", "number", "eq", 1000),
            ev(where=[prop("amount", "number", "gt", 1)]),
        ]
    ):
        for correlated in (False, True):
            condition = Compiler(correlated=correlated, now=NOW).compile({"all": [rule]})
            assert list(Profile.objects.filter(condition).values_list("external_id", flat=True)) == ["plain"], rule
        segment = Segment.objects.create(name=f"underscore {index}", kind=Segment.Kind.RULES, rules={"all": [rule]})
        assert segment_count(segment, now=NOW) == 1, rule
        assert list(segment_profiles(segment, now=NOW, union=True).values_list("external_id", flat=True)) == ["plain"]
    warnings = rules_unread_warnings({"all": [attr("age", "number", "gt", 30)]})
    assert [(w["code"], w["example"]) for w in warnings] == [(NUMBER_AS_TEXT, "1_000")]


def test_the_date_guard_each_evaluator_runs_takes_ascii_digits_only(db):
    """PostgreSQL's \\d follows the collation's locale: under ICU it takes other scripts' digits,
    so a database made with an ICU locale read "٢٠٢٦-٠٦-١٠" as a day. The guard the compiled query
    runs is evaluated here under an ICU collation, whatever the test database's own locale."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite's guard is a GLOB of [0-9]")
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_collation WHERE collname = 'und-x-icu'")
        if not cursor.fetchone()[0]:
            pytest.skip("this PostgreSQL has no ICU collations")
        sql, _ = Profile.objects.filter(
            rules_compile({"all": [attr("signup", "date", "gt", "2026-01-01")]})
        ).query.sql_with_params()
        (guard,) = re.findall(r" ~ '([^']*)'", sql)
        for value, expected in [
            ("2026-06-10", True),
            ("2026-06-10T08:00:00Z", True),
            *((v, False) for v in OTHER_DIGITS),
        ]:
            cursor.execute('SELECT %s COLLATE "und-x-icu" ~ %s', [value, guard])
            assert cursor.fetchone()[0] is expected, value


@pytest.mark.parametrize("value", OTHER_DIGITS)
def test_a_rule_value_written_in_other_digits_is_no_date(value):
    assert errors_of({"all": [attr("signup", "date", "gt", value)]}) == [("rules.all[0].value", "wrong_type")]


def test_a_preview_says_how_many_profiles_hold_values_its_rules_read_as_nothing(manager_alice):
    """Text no number rule reads ("042") and text with white space around it (sent so by an
    integrator) matched no condition, with nothing to say why: the preview counts them among the
    newest profiles, per attribute, with an example."""
    ProfileFactory(external_id="a", attributes={"age": 42, "plan": "pro"})
    ProfileFactory(external_id="b", attributes={"age": "42", "plan": "pro "})
    ProfileFactory(external_id="c", attributes={"age": "042", "plan": " team"})
    ProfileFactory(external_id="d", attributes={"age": "42.0", "plan": "free"})
    ProfileFactory(external_id="e", attributes={"age": True, "city": " Paris"})
    rules = {
        "all": [
            attr("age", "number", "gte", 18),
            {"any": [attr("plan", "string", "in", ["pro", "team"]), attr("city", "string", "contains", "par")]},
        ]
    }
    preview = segment_preview(by=manager_alice, rules=rules, reach=False)
    assert preview.count == 1  # 42; "42" with a plan of "pro " is in neither
    assert preview.unread == [
        "2 of the 5 newest profiles hold 'age' as text a number rule does not read, such as '042': "
        "a number is read from text written plainly (42, -7, 4.5)",
        "2 of the 5 newest profiles hold 'plan' with white space around it, such as ' team', "
        "which 'is one of' compares too",
    ]
    # A rule reading every value (contains, exists) or none of these says nothing.
    plain = segment_preview(by=manager_alice, rules={"all": [attr("city", "string", "contains", "par")]}, reach=False)
    assert plain.unread == []


# White space around a value, each as the rule check reads it (str.strip()), and a look-alike.
PADDED = {"nbsp": "pro\u00a0", "em": "pro\u2003", "ideographic": "\u3000pro", "separator": "pro\x1c"}


def test_a_preview_warns_of_every_white_space_the_rule_check_refuses_whatever_the_locale(manager_alice):
    """The rule check refuses text with white space around it as Python reads it (U+00A0, U+2003
    and the others ``str.strip()`` removes); the preview's count on PostgreSQL asked \\s, which
    follows the database's locale: under C.UTF-8 "pro\u00a0" was no padded text, so a profile
    the rule 'is pro' leaves out went unnamed there and named on SQLite. A zero-width space is
    no white space to either."""
    for name, value in PADDED.items():
        ProfileFactory(external_id=name, attributes={"plan": value})
    ProfileFactory(external_id="zero-width", attributes={"plan": "pro\u200b"})
    ProfileFactory(external_id="plain", attributes={"plan": "pro"})
    preview = segment_preview(by=manager_alice, rules={"all": [attr("plan", "string", "eq", "pro")]}, reach=False)
    (message,) = preview.unread  # its example is the first in the collation's order
    assert message.startswith("4 of the 6 newest profiles hold 'plan' with white space around it, such as ")
    assert any(repr(value) in message for value in PADDED.values())


def test_the_white_space_the_preview_counts_is_pythons_on_every_evaluator_and_collation(db):
    """The pattern the preview sends is the white space of ``str.isspace()``, character for
    character, in Python (SQLite's REGEXP) and in PostgreSQL under its C and ICU collations."""
    from django.db import connection

    from audiences.selectors import _PADDED_PATTERN

    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    assert [c for c in map(chr, range(0x110000)) if re.search(_PADDED_PATTERN, c)] == spaces
    if connection.vendor != "postgresql":
        return
    collations = ['"C"', '"default"']
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_collation WHERE collname = 'und-x-icu'")
        collations += ['"und-x-icu"'] if cursor.fetchone()[0] else []
        for collation in collations:
            cursor.execute(
                f"SELECT array_agg(g ORDER BY g) FROM generate_series(1, 1114111) g "  # noqa: S608 (names above)
                f"WHERE g NOT BETWEEN 55296 AND 57343 AND chr(g) COLLATE {collation} ~ %s",
                [_PADDED_PATTERN],
            )
            assert cursor.fetchone()[0] == [ord(c) for c in spaces], collation


def test_missing_type_operator_and_value_are_required():
    assert errors_of({"all": [{"attribute": "plan", "op": "eq", "value": "x"}]}) == [("rules.all[0].type", "required")]
    assert errors_of({"all": [{"field": "locale", "value": "x"}]}) == [("rules.all[0].op", "required")]
    assert errors_of({"all": [{"field": "locale", "op": "eq"}]}) == [("rules.all[0].value", "required")]
    assert errors_of({"all": [{"field": "locale", "op": "exists", "value": "x"}]}) == [
        ("rules.all[0].value", "unexpected_value")
    ]


def test_empty_group_is_refused():
    assert errors_of({"all": [col("locale", "exists"), {"any": []}]}) == [("rules.all[1].any", "empty_group")]
    assert errors_of({"none": []}) == [("rules.none", "empty_group")]


@pytest.mark.parametrize("group", ["all", "any", "none"])
def test_an_empty_group_is_named_as_the_builder_does_never_by_its_code(group):
    """The admin read "The rules: the group 'all' is empty", the builder's group saying "Match ALL
    of"; the place before the message names the group, the message says what to do."""
    with pytest.raises(RulesInvalid) as info:
        rules_validate({group: []})
    assert [e.message for e in info.value.errors] == ["the group is empty: add at least one condition"]


def test_unknown_node_and_unknown_keys_are_refused():
    assert errors_of({"all": [{"colour": "red"}]}) == [("rules.all[0]", "unknown_node")]
    assert errors_of({"all": [{"all": [col("locale", "exists")], "any": [col("locale", "exists")]}]}) == [
        ("rules.all[0]", "ambiguous_node")
    ]
    assert errors_of({"all": [{**col("locale", "eq", "fr"), "weight": 2}]}) == [("rules.all[0].weight", "unknown_key")]
    assert errors_of({"all": [attr("bad name!", "string", "eq", "x")]}) == [("rules.all[0].attribute", "invalid_name")]


def test_depth_over_ten_is_refused():
    tree = col("locale", "exists")
    for _ in range(10):
        tree = {"all": [tree]}
    with pytest.raises(RulesInvalid) as info:
        rules_validate(tree)
    assert info.value.errors[0].code == "too_deep"
    assert info.value.errors[0].path == "rules" + ".all[0]" * 10
    rules_validate(tree["all"][0])  # ten levels are fine


def test_every_error_is_reported_at_once():
    found = errors_of({"all": [col("shoe", "eq", 1), {"any": []}, attr("age", "number", "gt", "x")]})
    assert found == [
        ("rules.all[0].field", "unknown_field"),
        ("rules.all[1].any", "empty_group"),
        ("rules.all[2].value", "wrong_type"),
    ]


def test_error_message_names_the_path_and_the_rule():
    with pytest.raises(RulesInvalid) as info:
        rules_validate({"all": [attr("age", "number", "greater", 3)]})
    message = info.value.messages[0]
    assert message.startswith("rules.all[0].op: unknown operator 'greater' for a number")
    assert "gte" in message


def test_cycle_between_segments_is_refused(db):
    a = Segment.objects.create(name="a", rules={"all": [col("locale", "exists")]})
    b = Segment.objects.create(name="b", rules={"all": [{"segment": a.pk}]})
    c = Segment.objects.create(name="c", rules={"all": [{"segment": b.pk}]})
    found = errors_of({"any": [col("locale", "exists"), {"segment": c.pk}]}, segment_id=a.pk)
    assert found == [("rules.any[1].segment", "cycle")]
    assert errors_of({"all": [{"segment": a.pk}]}, segment_id=a.pk) == [("rules.all[0].segment", "cycle")]
    with pytest.raises(RulesInvalid) as info:
        rules_validate({"all": [{"segment": c.pk}]}, segment_id=a.pk)
    assert f"{a.pk} → {c.pk} → {b.pk} → {a.pk}" in info.value.messages[0]


def test_unknown_or_inaccessible_segment_is_refused(db):
    hidden = Segment.objects.create(name="hidden", rules={"all": [col("locale", "exists")]})
    assert errors_of({"all": [{"segment": 999999}]}) == [("rules.all[0].segment", "unknown_segment")]
    assert errors_of({"all": [{"segment": hidden.pk}]}, allowed_segment_ids=set()) == [
        ("rules.all[0].segment", "unknown_segment")
    ]


@pytest.mark.skipif(device_model() is not None, reason="delivery.Device exists: reachability is available")
def test_reachability_is_refused_clearly_while_devices_do_not_exist(db):
    found = errors_of({"all": [{"reachable": {"app": 1, "platform": "ios"}}]})
    assert found == [("rules.all[0].reachable", "unavailable")]


def test_reachability_checks_its_platform(db):
    found = errors_of({"all": [{"reachable": {"app": 1, "platform": "windows"}}]})
    assert ("rules.all[0].reachable.platform", "unknown_platform") in found


@pytest.mark.skipif(device_model() is None, reason="needs delivery.Device")
def test_reachability_counts_active_opted_in_devices_of_the_app(people):
    from tests.factories import AppFactory, DeviceFactory

    app_a, app_b = AppFactory(), AppFactory()
    DeviceFactory(profile=people["ann"], app=app_a, platform="ios")
    DeviceFactory(profile=people["bob"], app=app_a, platform="android", push_enabled=False)
    DeviceFactory(profile=people["cid"], app=app_b, platform="ios")
    DeviceFactory(profile=people["dee"], app=app_a, platform="ios", active=False)
    DeviceFactory(profile=people["eve"], app=app_a, platform="android")
    assert members({"all": [{"reachable": {"app": app_a.pk, "platform": "ios"}}]}) == {"ann"}
    assert members({"all": [{"reachable": {"app": app_a.pk}}]}) == {"ann", "eve"}
    assert members({"all": [{"reachable": {"app": app_b.pk, "platform": "ios"}}]}) == {"cid"}
    assert members({"none": [{"reachable": {"app": app_a.pk}}]}) == {"bob", "cid", "dee"}
    assert errors_of({"all": [{"reachable": {"app": 987654}}]}) == [("rules.all[0].reachable.app", "unknown_app")]


@pytest.mark.parametrize(("tree", "expected"), EVENT_CASES, ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_per_profile_compilation_agrees_with_the_set_compilation(people, tree, expected):
    from audiences.rules.compiler import Compiler

    condition = Compiler(now=NOW, correlated=True).compile({"all": [tree]})
    assert set(Profile.objects.filter(condition).values_list("external_id", flat=True)) == expected


@pytest.mark.parametrize("value", ["", None, ["", 3]])
def test_an_empty_number_is_refused_naming_the_condition(value):
    op = "between" if isinstance(value, list) else "gt"
    tree = {"all": [{"attribute": "age", "type": "number", "op": op, "value": value}]}
    with pytest.raises(RulesInvalid) as info:
        rules_validate(tree)
    [error] = info.value.errors
    assert error.path.startswith("rules.all[0].value")
    assert error.message == "the value is empty: enter a number (an empty value is never 0)"


BEYOND_FLOAT = 10**400  # a whole number no 64-bit float holds


@pytest.mark.parametrize(
    "value",
    [BEYOND_FLOAT, -BEYOND_FLOAT, float("nan"), float("inf"), [1, BEYOND_FLOAT]],
    ids=["beyond-float", "negative", "nan", "inf", "between"],
)
def test_a_number_a_float_cannot_hold_is_refused_naming_the_condition(value):
    op = "between" if isinstance(value, list) else "gt"
    where = "rules.all[0].value[1]" if isinstance(value, list) else "rules.all[0].value"
    assert errors_of({"all": [attr("age", "number", op, value)]}) == [(where, "out_of_range")]
    assert errors_of({"all": [ev(where=[prop("amount", "number", op, value)])]}) == [
        (where.replace("value", "where[0].value"), "out_of_range")
    ]


def test_the_largest_whole_number_a_float_holds_is_a_valid_rule_value():
    largest = 2**1024 - 2**970 - 1
    rules_validate({"all": [attr("age", "number", "between", [-largest, largest])]})


@pytest.fixture
def stored_beyond_float(db):
    """Profiles and events holding whole numbers beyond a float, written as the API took them
    before it refused them (straight to the table), beside ordinary ones."""
    big = ProfileFactory(external_id="big", attributes={"n": BEYOND_FLOAT})
    ProfileFactory(external_id="small", attributes={"n": 3})
    ProfileFactory(external_id="negative", attributes={"n": -BEYOND_FLOAT})
    ProfileFactory(external_id="exact", attributes={"n": 2**53 + 1})
    Event.objects.create(profile=big, name="buy", properties={"amount": BEYOND_FLOAT}, occurred_at=NOW)
    return big


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (attr("n", "number", "gt", 1), {"big", "small", "exact"}),
        (attr("n", "number", "lt", 0), {"negative"}),
        (attr("n", "number", "between", [0, 10]), {"small"}),
        (attr("n", "number", "ne", 3), {"big", "negative", "exact"}),
        (attr("n", "number", "not_in", [3, 4]), {"big", "negative", "exact"}),
        (ev("buy", where=[prop("amount", "number", "gt", 1)]), {"big"}),
        (ev("buy", where=[prop("amount", "number", "lt", 1)]), set()),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_numbers_beyond_a_float_stored_before_they_were_refused_compare_without_failing(
    stored_beyond_float, tree, expected
):
    assert members({"all": [tree]}) == expected


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (attr("n", "number", "lt", BEYOND_FLOAT), {"small", "negative", "exact"}),
        (attr("n", "number", "gte", BEYOND_FLOAT), {"big"}),
        (attr("n", "number", "eq", BEYOND_FLOAT), {"big"}),
        (attr("n", "number", "gt", -BEYOND_FLOAT), {"big", "small", "exact"}),
    ],
    ids=["lt", "gte", "eq", "gt-negative"],
)
def test_a_saved_rule_whose_value_is_beyond_a_float_counts_without_failing(stored_beyond_float, tree, expected):
    from audiences.rules.compiler import segment_count, segment_profiles

    segment = Segment.objects.create(name="saved before", kind=Segment.Kind.RULES, rules={"all": [tree]})
    assert set(segment_profiles(segment, now=NOW).values_list("external_id", flat=True)) == expected
    assert segment_count(segment, now=NOW) == len(expected)


def test_whole_numbers_beyond_2_to_the_53_compare_exactly(stored_beyond_float):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("SQLite reads JSON numbers as 64-bit integers or floats")
    assert members({"all": [attr("n", "number", "gt", 2**53)]}) == {"big", "exact"}
    assert members({"all": [attr("n", "number", "between", [2**53 + 1, 2**53 + 1])]}) == {"exact"}


# --- counts: an 'any' group reading other tables counted as a union of profile ids ----------------


@pytest.fixture
def lists(people):
    """A static segment (bob, dee, and a member row whose profile is gone), an empty one, a rules
    segment reading events and one with no rules."""
    static = Segment.objects.create(name="hand-kept", kind=Segment.Kind.STATIC)
    SegmentMember.objects.bulk_create(
        [
            SegmentMember(segment=static, profile=people["bob"]),
            SegmentMember(segment=static, profile=people["dee"]),
            SegmentMember(segment=static, profile_id=max(p.pk for p in people.values()) + 1000),
        ]
    )
    empty = Segment.objects.create(name="nobody yet", kind=Segment.Kind.STATIC)
    buyers = Segment.objects.create(name="buyers", rules={"all": [ev(min_count=2)]})
    blank = Segment.objects.create(name="blank", rules=None)
    return {"static": static.pk, "empty": empty.pk, "buyers": buyers.pk, "blank": blank.pk}


UNION_CASES = [
    # the benchmark's shape: an attribute branch or members who did an event
    (
        lambda s: {
            "any": [
                {"all": [attr("plan", "string", "eq", "pro"), attr("vip", "boolean", "eq", True)]},
                {"all": [{"segment": s["static"]}, ev(within_days=7)]},
            ]
        },
        {"ann", "bob", "dee"},
    ),
    (lambda s: {"any": [{"segment": s["static"]}, ev("app_open")]}, {"ann", "bob", "cid", "dee"}),
    # a branch on an attribute the profile lacks or holds with another type (NULL in SQL)
    (lambda s: {"any": [attr("age", "number", "lt", 20), ev("app_open", within_days=30)]}, {"ann", "bob"}),
    (lambda s: {"any": [attr("age", "number", "ne", 34), {"segment": s["empty"]}]}, ALL - {"ann"}),
    # negations inside and around the union
    (lambda s: {"none": [{"segment": s["static"]}, attr("plan", "string", "eq", "pro")]}, {"cid", "eve"}),
    (lambda s: {"any": [{"segment": s["static"], "member": False}, ev(min_count=3)]}, {"ann", "cid", "eve"}),
    (lambda s: {"any": [ev(did=False), attr("plan", "string", "eq", "pro")]}, {"ann", "cid", "eve"}),
    (lambda s: {"any": [ev(did=False, min_count=2), col("locale", "eq", "de")]}, {"bob", "cid", "dee", "eve"}),
    # empty lists: an empty static segment, a rules segment without rules
    (lambda s: {"any": [{"segment": s["empty"]}, attr("vip", "boolean", "eq", True)]}, {"ann"}),
    (lambda s: {"any": [{"segment": s["empty"]}, {"segment": s["blank"]}]}, set()),
    (lambda s: {"none": [{"segment": s["empty"]}, {"segment": s["blank"]}]}, ALL),
    # a rules segment reading events, a union nested in a group, a group of one around a union
    (lambda s: {"any": [{"segment": s["buyers"]}, col("locale", "eq", "en-US")]}, {"ann", "bob", "dee"}),
    (
        lambda s: {"all": [attr("plan", "string", "exists"), {"any": [{"segment": s["static"]}, ev("app_open")]}]},
        {"ann", "bob", "cid", "dee"},
    ),
    (lambda s: {"all": [{"any": [{"segment": s["static"]}, ev(min_count=2)]}]}, {"ann", "bob", "dee"}),
    # members who did events, read from the events; mixes that keep the profiles' form
    (
        lambda s: {"any": [{"all": [{"segment": s["static"]}, ev(min_count=2)]}, col("locale", "eq", "en-US")]},
        {"bob", "dee"},
    ),
    (lambda s: {"any": [{"all": [ev(), ev("app_open")]}, {"segment": s["empty"]}]}, {"ann"}),
    (
        lambda s: {
            "any": [{"all": [{"segment": s["static"], "member": False}, ev()]}, attr("vip", "boolean", "eq", True)]
        },
        {"ann"},
    ),
    (lambda s: {"any": [{"all": [ev("app_open"), {"segment": s["buyers"]}]}, {"segment": s["empty"]}]}, {"ann"}),
    (lambda s: {"any": [{"all": [ev(did=False), {"segment": s["static"]}]}, {"segment": s["empty"]}]}, set()),
    # an event counted without the profiles around it
    (lambda s: {"all": [ev(min_count=2)]}, {"ann", "dee"}),
    (lambda s: {"all": [ev(min_count=2, within_days=7)]}, {"dee"}),
    (lambda s: {"all": [ev(where=[prop("amount", "number", "gte", 50)], min_count=2, within_days=30)]}, {"dee"}),
    (lambda s: {"all": [ev("never_happens", min_count=2)]}, set()),
]


UNION_IDS = [
    "attributes-or-members-with-event",
    "members-or-event",
    "number-on-strings-or-event",
    "negated-number-or-empty-list",
    "none-of-members-and-attribute",
    "not-a-member-or-event-3-times",
    "did-not-or-attribute",
    "did-not-twice-or-column",
    "empty-list-or-attribute",
    "empty-list-or-blank-rules",
    "none-of-empty-list-and-blank-rules",
    "rules-segment-with-event-or-column",
    "union-inside-all",
    "group-of-one-around-union",
    "members-with-event-twice-or-column",
    "two-events-or-empty-list",
    "not-a-member-with-event-or-attribute",
    "event-and-rules-segment-or-empty-list",
    "did-not-and-members-or-empty-list",
    "event-twice",
    "event-twice-in-7-days",
    "event-twice-with-property",
    "event-never-seen",
]


@pytest.mark.parametrize(("make", "expected"), UNION_CASES, ids=UNION_IDS)
def test_a_count_as_a_union_of_profile_ids_matches_the_per_row_condition(lists, make, expected):
    from audiences.rules.compiler import Compiler, segment_count

    tree = make(lists)
    assert members(tree) == expected  # one scan of the profiles, each branch tested per row
    united = Compiler(now=NOW, union=True).compile(tree)
    assert set(Profile.objects.filter(united).values_list("external_id", flat=True)) == expected
    assert segment_count(Segment(kind=Segment.Kind.RULES, rules=tree), now=NOW) == len(expected)


def test_a_count_unites_branches_that_read_other_tables_and_counts_events_without_every_profile(lists):
    """An 'any' group with members or events is counted as the UNION of its branches' ids, not a
    scan of every profile; members who did an event are read from the events, and an 'at least N
    times' event counts its events' profile ids alone. A group of attributes alone keeps its one
    scan."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from audiences.rules.compiler import segment_count

    if connection.vendor != "postgresql":
        pytest.skip("the union is PostgreSQL's shape")

    def count_sql(tree) -> str:
        with CaptureQueriesContext(connection) as queries:
            segment_count(Segment(kind=Segment.Kind.RULES, rules=tree), now=NOW)
        (sql,) = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"]]
        return sql

    nested = count_sql({"any": [attr("vip", "boolean", "eq", True), {"segment": lists["static"]}]})
    assert " UNION " in nested and not nested.startswith('SELECT COUNT(*) AS "__count" FROM "audiences_profile"')
    members_with_events = count_sql(
        {"any": [attr("vip", "boolean", "eq", True), {"all": [{"segment": lists["static"]}, ev(within_days=7)]}]}
    )
    branch = members_with_events.split(" UNION ")[1]
    assert 'FROM "audiences_event"' in branch and '"audiences_profile"' not in branch, members_with_events
    events = count_sql({"all": [ev(min_count=2, within_days=30)]})
    assert '"audiences_profile"' not in events, events
    attributes = count_sql({"any": [attr("vip", "boolean", "eq", True), attr("age", "number", "gt", 60)]})
    assert " UNION " not in attributes


@pytest.mark.parametrize(("make", "expected"), UNION_CASES, ids=UNION_IDS)
def test_the_profiles_of_a_whole_audience_read_as_a_union_are_the_segments(lists, make, expected):
    from audiences.rules.compiler import segment_profiles

    segment = Segment(kind=Segment.Kind.RULES, rules=make(lists))
    profiles = segment_profiles(segment, now=NOW, union=True)
    assert set(profiles.values_list("external_id", flat=True)) == expected


def test_the_reach_and_a_sends_resolve_read_the_audience_as_the_count_does(lists, people):
    """Readers of a whole audience (the reach an approver sees, a send's resolve, a journey's
    segment entry) unite an 'any' group's branches that read other tables, as the count does,
    instead of testing each branch on every profile (at 5,000,000 profiles: 0.7 s against 3 s)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from audiences.selectors import audience_reach
    from delivery.models import Dispatch
    from delivery.services.dispatches import _audience_sql
    from tests.factories import DeviceFactory

    segment = Segment.objects.create(
        name="kept or opened", rules={"any": [{"segment": lists["static"]}, ev("app_open")]}
    )
    phone = DeviceFactory(profile=people["ann"], platform="ios")
    DeviceFactory(profile=people["eve"], app=phone.app, platform="android")  # outside the segment
    with CaptureQueriesContext(connection) as queries:
        reach = audience_reach(segment=segment, app_id=phone.app_id)
    assert (reach.profiles, reach.reachable, reach.ios, reach.android) == (4, 1, 1, 0)
    sql, params = _audience_sql(Dispatch(segment_id=segment.pk))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        assert {row[0] for row in cursor.fetchall()} == {people[n].pk for n in ("ann", "bob", "cid", "dee")}
    if connection.vendor == "postgresql":
        (counted,) = [q["sql"] for q in queries.captured_queries if "GROUP BY bits" in q["sql"]]
        assert " UNION " in counted and " UNION " in sql


def _refused_at_compile_as_validated(condition: dict, path: str, message: str) -> None:
    """``condition``, beside a good one, saved without a check: the compiler, a segment's profiles and
    its count each refuse it with RulesInvalid at ``path``, in the validator's own words."""
    from audiences.rules.compiler import segment_count, segment_profiles

    rules = {"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "pro"}, condition]}
    with pytest.raises(RulesInvalid) as validated:
        rules_validate(rules)
    segment = Segment.objects.create(name="saved before", kind=Segment.Kind.RULES, rules=rules)
    for compile_it in (
        lambda: rules_compile(rules, now=NOW),
        lambda: segment_profiles(segment, now=NOW, union=True),
        lambda: segment_count(segment, now=NOW),
    ):
        with pytest.raises(RulesInvalid) as info:
            compile_it()
        assert [e.path for e in info.value.errors] == [path]
        assert message in info.value.errors[0].message
        assert info.value.errors[0].message == validated.value.errors[0].message
    assert [e.path for e in validated.value.errors] == [path]


@pytest.mark.parametrize(
    ("condition", "path", "message"),
    [
        ({"attribute": "age", "type": "number", "op": "gt", "value": "old"}, "rules.all[1].value", "expected a number"),
        (
            {"attribute": "age", "type": "number", "op": "between", "value": [1, "old"]},
            "rules.all[1].value[1]",
            "expected a number",
        ),
        (
            {"attribute": "age", "type": "number", "op": "in", "value": [1, "x"]},
            "rules.all[1].value[1]",
            "expected a number",
        ),
        (
            {"attribute": "age", "type": "number", "op": "between", "value": 5},
            "rules.all[1].value",
            "'is between' needs a list",
        ),
        ({"attribute": "signup", "type": "date", "op": "lt", "value": "soon"}, "rules.all[1].value", "expected a date"),
        ({"field": "created_at", "op": "gt", "value": "2026-02-30"}, "rules.all[1].value", "expected a date"),
        (
            {"field": "created_at", "op": "gt", "value": {"ago": "three", "unit": "days"}},
            "rules.all[1].value",
            "a relative date needs 'ago'",
        ),
        (
            {"attribute": "signup", "type": "date", "op": "gt", "value": {"ago": 3, "unit": "fortnights"}},
            "rules.all[1].value",
            "unknown unit",
        ),
        (
            {"event": "purchase", "where": [{"property": "amount", "type": "number", "op": "gte", "value": "lots"}]},
            "rules.all[1].where[0].value",
            "expected a number",
        ),
    ],
    ids=["number", "between", "in", "between-not-a-list", "date", "column-date", "relative", "unit", "property"],
)
def test_a_saved_rule_whose_value_is_not_of_its_type_is_refused_naming_its_path(people, condition, path, message):
    """Rules saved before a check existed (or written by a data migration) compile to RulesInvalid
    naming the condition, as the validator names it, never a Decimal's, a float's or a date's error."""
    _refused_at_compile_as_validated(condition, path, message)


def test_a_segment_using_one_whose_saved_rule_is_not_of_its_type_is_refused_naming_both(people):
    from audiences.rules.compiler import segment_count

    inner = Segment.objects.create(
        name="Old ages", kind=Segment.Kind.RULES, rules={"all": [{"attribute": "age", "type": "number", "op": "gt"}]}
    )
    Segment.objects.filter(pk=inner.pk).update(
        rules={"all": [{"attribute": "age", "type": "number", "op": "gt", "value": "old"}]}
    )
    outer = Segment.objects.create(
        name="Uses it", kind=Segment.Kind.RULES, rules={"any": [{"segment": inner.pk, "member": True}]}
    )
    with pytest.raises(RulesInvalid) as info:
        segment_count(outer, now=NOW)
    assert [e.path for e in info.value.errors] == ["rules"]
    assert f"segment {inner.pk}" in info.value.errors[0].message
    assert "rules.all[0].value: expected a number, got a string" in info.value.errors[0].message


@pytest.mark.parametrize(
    ("condition", "path", "message"),
    [
        ({"attribute": "vip", "type": "boolean", "op": "eq", "value": "yes"}, "rules.all[1].value", "expected true or"),
        ({"attribute": "vip", "type": "boolean", "op": "ne", "value": 1}, "rules.all[1].value", "expected true or"),
        ({"attribute": "vip", "type": "boolean", "op": "gt", "value": True}, "rules.all[1].op", "unknown operator"),
        ({"attribute": "vip", "type": "bool", "op": "eq", "value": True}, "rules.all[1].type", "unknown type"),
        ({"attribute": "city", "type": "string", "op": "eq", "value": 5}, "rules.all[1].value", "expected a string"),
        ({"attribute": "city", "type": "string", "op": "contains", "value": 5}, "rules.all[1].value", "a string"),
        ({"field": "locale", "op": "eq", "value": 5}, "rules.all[1].value", "expected a string"),
        ({"field": "country", "op": "eq", "value": "fr"}, "rules.all[1].field", "unknown field"),
        (
            {"attribute": "plan", "type": "string", "op": "in", "value": "pro"},
            "rules.all[1].value",
            "'is one of' needs a",
        ),
        ({"field": "locale", "op": "not_in", "value": []}, "rules.all[1].value", "'is none of' needs a non-empty list"),
        (
            {"attribute": "plan", "type": "string", "op": "in", "value": ["pro", 5]},
            "rules.all[1].value[1]",
            "expected a string",
        ),
        ({"event": "purchase", "min_count": "2"}, "rules.all[1].min_count", "'min_count' must be a whole number"),
        ({"event": "purchase", "within_days": "30"}, "rules.all[1].within_days", "'within_days' must be a whole"),
        ({"event": "purchase", "did": "no"}, "rules.all[1].did", "'did' must be true or false"),
        (
            {"event": "purchase", "where": [{"property": "paid", "type": "boolean", "op": "eq", "value": "yes"}]},
            "rules.all[1].where[0].value",
            "expected true or false",
        ),
        ({"event": "purchase", "where": {"property": "amount"}}, "rules.all[1].where", "'where' must be a list"),
        ({"segment": 987654, "member": "no"}, "rules.all[1].member", "'member' must be true or false"),
        ({"reachable": {"app": 1, "platform": "IOS"}}, "rules.all[1].reachable.platform", "unknown platform"),
    ],
    ids=[
        "boolean",
        "boolean-number",
        "boolean-operator",
        "unknown-type",
        "string",
        "contains",
        "column-string",
        "column",
        "in-not-a-list",
        "not-in-empty",
        "in-item",
        "min-count",
        "within-days",
        "did",
        "boolean-property",
        "where",
        "member",
        "platform",
    ],
)
def test_a_saved_rule_of_any_kind_whose_value_is_not_of_its_type_is_refused_naming_its_path(
    people, condition, path, message
):
    """A boolean condition holding "yes", a string one a number, an 'in' without a list, an event's
    count as text: saved before a check existed (or by a data migration), each compiled to a
    condition matching no one (or someone else) without an error. Each is refused as the
    validator refuses it, naming its path."""
    _refused_at_compile_as_validated(condition, path, message)


def test_a_saved_attribute_rule_without_its_type_still_reads_as_a_string(people):
    """The validator wants a type said; one saved without it compiles as a string, as ever, its
    value checked as one."""
    tree = {"all": [{"attribute": "plan", "op": "in", "value": ["pro", "team"]}]}
    assert set(Profile.objects.filter(rules_compile(tree, now=NOW)).values_list("external_id", flat=True)) == {
        "ann",
        "cid",
    }
    with pytest.raises(RulesInvalid) as info:
        rules_compile({"all": [{"attribute": "plan", "op": "eq", "value": True}]}, now=NOW)
    assert [str(e) for e in info.value.errors] == ["rules.all[0].value: expected a string, got a boolean"]


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (attr("age", "number", "gt", ""), "the value is empty: enter a number (an empty value is never 0)"),
        ({"attribute": "age", "type": "number", "op": "gte"}, "'is at least' needs a value"),
        ({"field": "created_at", "op": "lt"}, "'is before' needs a value"),
        ({"attribute": "plan", "type": "string", "op": "exists", "value": "pro"}, "'is set' takes no value"),
        (attr("plan", "string", "in", []), "'is one of' needs a non-empty list of strings"),
        (attr("plan", "string", "not_in", "pro"), "'is none of' needs a non-empty list of strings"),
        (attr("age", "number", "in", list(range(1001))), "'is one of' takes at most 1000 values"),
        (attr("age", "number", "between", [1]), "'is between' needs a list of two values: [low, high]"),
        (attr("age", "number", "between", [9, 1]), "'is between' needs the low end first"),
        (
            attr("plan", "string", "ne", " pro"),
            "' pro' begins or ends with white space, which 'is not' compares too: remove it",
        ),
    ],
    ids=["empty", "required", "required-date", "no-value", "in", "not-in", "too-many", "between", "order", "padded"],
)
def test_a_rule_error_names_its_operator_as_the_builder_does_never_by_its_code(condition, message):
    """The admin shows these sentences after the place in the builder's words ("Condition 1 (age
    is more than): ..."), the API after the JSON path: neither reads "gt" or "not_in"."""
    with pytest.raises(RulesInvalid) as info:
        rules_validate({"all": [condition]})
    assert [e.message for e in info.value.errors] == [message]
