"""The journey's graph drawn: what a step's box says."""

from journeys.diagram import BOX_CHARS, condition_text


def _condition(*labels: str | None) -> dict:
    branches = [{"event": "e", "next": "done"} | ({"label": label} if label else {}) for label in labels]
    return {"id": "check", "type": "condition", "branches": branches, "else": "done"}


def test_a_condition_names_its_branches_then_all_others():
    assert condition_text(_condition("VIP", "Pro")) == ("VIP / Pro / all others", "VIP / Pro / all others")


def test_an_unlabelled_branch_is_named_as_its_counters_are():
    assert condition_text(_condition("VIP", None))[0] == "VIP / branch 2 / all others"


def test_a_long_name_is_cut_with_an_ellipsis_the_short_ones_kept_whole():
    shown, full = condition_text(_condition("Bought twice this year", "VIP"))
    assert full == "Bought twice this year / VIP / all others"
    assert shown == "Bought twice t… / VIP / all others"
    assert len(shown) <= BOX_CHARS


def test_names_that_would_be_cut_too_short_are_counted_after_the_first_ones():
    shown, full = condition_text(_condition(*(f"Tier {n}" for n in range(1, 9))))
    assert shown == "Tier 1 / +7 more / all others"
    assert full.startswith("Tier 1 / Tier 2 / Tier 3 /") and full.endswith("Tier 8 / all others")


def test_one_very_long_name_keeps_all_others_in_view():
    shown, _ = condition_text(_condition("x" * 80))
    assert shown.endswith("… / all others") and len(shown) <= BOX_CHARS
