"""The journey's graph drawn: what a step's box says."""

from journeys.diagram import BOX_CHARS, _description, condition_text


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


def test_a_push_boxs_notes_are_cut_to_the_box_the_whole_in_their_tooltip():
    """A push box's notes ("skipped 132 (no phone registered for the app 132)") ran out of the box,
    over the edge beside it and into the next step's box."""
    import re

    from journeys.diagram import version_svg
    from journeys.models import JourneyVersion

    graph = {"steps": [{"id": "hello", "type": "push", "content": 1, "next": "end"}, {"id": "end", "type": "exit"}]}
    version = JourneyVersion(number=1, graph=graph, entry_kind="event", entry_event="signed_up")
    stats = {"hello": {"type": "push", "entered": 140, "sent": 8, "accepted": 8, "targeted": 140}}
    stats["hello"]["skipped"] = {"no_device": 130, "not_opted_in": 2}
    svg = str(version_svg(version, stats=stats, names={("content", 1): "Welcome"}))
    shown, tooltip = re.search(r'data-step="hello".*?class="notes">([^<]*)<title>([^<]*)</title>', svg, re.S).groups()
    assert len(shown) <= BOX_CHARS and shown.endswith("…")
    assert tooltip.startswith("skipped 132 (no phone registered for the app 130, ")
    assert tooltip.startswith(shown[:-1])


def test_a_long_line_of_any_box_is_cut_with_an_ellipsis_and_said_whole_in_its_tooltip():
    """An entry's words or a content's name longer than a box were cut mid-word ("… read o") and
    the rest was said nowhere."""
    entry = {"id": "entry", "type": "entry", "text": "Profiles who read our newsletter twice this month"}
    line = _description(entry, {})
    shown = line.split('class="description">', 1)[1].split("<title>", 1)[0]
    assert shown.endswith("…") and len(shown) <= BOX_CHARS
    assert "<title>Profiles who read our newsletter twice this month</title>" in line
    push = {"id": "p", "type": "push", "content": 7}
    assert _description(push, {("content", 7): "Hello"}) == '<text x="8" y="34" class="description">Hello</text>'


def test_a_wait_or_split_box_says_how_many_of_its_profiles_failed_there():
    """A wait or a split whose profiles failed there (a graph that loops, saved past the checks: the
    engine gives them up where they came last) said entered and waiting, and nothing of those ended:
    its figures did not add up."""
    from journeys.diagram import _counters

    for kind in ("wait", "split"):
        _, notes = _counters(kind, {"entered": 3, "waiting": 1, "failed": 2})
        assert notes.startswith("failed 2 (see its enrollments)"), kind
    assert "failed" not in _counters("wait", {"entered": 3, "waiting": 3})[1]
