"""Graph validation: every broken rule is refused with a message naming the step."""

import pytest

from journeys.graph import GraphInvalid, duration_text, entry_of, graph_validate


def _steps(*steps):
    return {"steps": list(steps)}


EXIT = {"id": "done", "type": "exit"}


def _errors(graph, **checks) -> list[str]:
    with pytest.raises(GraphInvalid) as info:
        graph_validate(graph, **checks)
    return info.value.messages


def test_a_complete_graph_with_every_step_type_is_valid():
    graph = _steps(
        {"id": "w", "type": "wait", "until": "09:30", "next": "c"},
        {
            "id": "c",
            "type": "condition",
            "branches": [
                {"label": "vip", "segment": 1, "next": "s"},
                {"label": "fr", "rules": {"all": []}, "next": "p"},
                {"label": "bought", "event": "purchase", "next": "done"},
            ],
            "else": "done",
        },
        {
            "id": "s",
            "type": "split",
            "branches": [{"label": "A", "percent": 30, "next": "p"}, {"label": "B", "percent": 70, "next": "done"}],
        },
        {"id": "p", "type": "push", "content": 3, "next": "done"},
        EXIT,
    )
    graph_validate(graph)
    assert entry_of(graph["steps"]) == "w"


def test_negative_wait_is_refused_naming_the_step():
    errors = _errors(_steps({"id": "pause", "type": "wait", "seconds": -5, "next": "done"}, EXIT))
    assert errors == ["Step 'pause': the wait is negative (-5 s); a wait is 0 seconds or more."]


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(91 * 86400, "91 days"), (2200 * 3600, "2,200 hours"), (90 * 86400 + 60, "129,601 minutes")],
)
def test_a_wait_over_90_days_is_refused_in_the_unit_it_was_typed_in(seconds, said):
    """The message quoted seconds ("7862400 s") for a wait typed as 91 days."""
    errors = _errors(_steps({"id": "pause", "type": "wait", "seconds": seconds, "next": "done"}, EXIT))
    assert errors == [f"Step 'pause': the wait is {said}, longer than the 90 days a wait may last."]


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(86400, "1 day"), (3 * 86400, "3 days"), (3600, "1 hour"), (60, "1 minute"), (1, "1 s"), (45, "45 s"), (0, "0 s")],
)
def test_a_wait_reads_one_unit_in_the_singular_and_more_in_the_plural(seconds, said):
    assert duration_text(seconds) == said


def test_bad_time_of_day_is_refused():
    (error,) = _errors(_steps({"id": "morning", "type": "wait", "until": "25:00", "next": "done"}, EXIT))
    assert error.startswith("Step 'morning': the time of day '25:00' is not HH:MM")


@pytest.mark.parametrize("until", ["0٩:30", "０９:３０"])
def test_a_time_of_day_written_with_digits_of_another_script_is_refused(until):
    """The engine reads the hours and minutes with int(), which took "٩" as 9."""
    (error,) = _errors(_steps({"id": "morning", "type": "wait", "until": until, "next": "done"}, EXIT))
    assert error.startswith(f"Step 'morning': the time of day {until!r} is not HH:MM")


def test_split_percentages_must_sum_to_100():
    graph = _steps(
        {
            "id": "ab",
            "type": "split",
            "branches": [{"label": "A", "percent": 50, "next": "done"}, {"label": "B", "percent": 40, "next": "done"}],
        },
        EXIT,
    )
    assert _errors(graph) == ["Step 'ab': the percentages sum to 90, not 100."]


def test_a_loop_is_refused_naming_the_steps_around_it():
    graph = _steps(
        {"id": "start", "type": "wait", "seconds": 0, "next": "a"},
        {"id": "a", "type": "wait", "seconds": 60, "next": "b"},
        {
            "id": "b",
            "type": "condition",
            "branches": [{"label": "again", "event": "open", "next": "a"}],
            "else": "done",
        },
        EXIT,
    )
    errors = _errors(graph)
    assert any(e.startswith("Step 'a': it leads back to itself (a → b → a)") or "b → a → b" in e for e in errors)


def test_dangling_step_means_two_entries_and_is_refused():
    graph = _steps(
        {"id": "start", "type": "wait", "seconds": 0, "next": "done"},
        {"id": "orphan", "type": "push", "content": 1, "next": "done"},
        EXIT,
    )
    (error,) = _errors(graph)
    assert "'start', 'orphan' have no way in" in error and "dangling" in error


def test_a_branch_that_leads_nowhere_is_refused():
    graph = _steps(
        {"id": "check", "type": "condition", "branches": [{"label": "vip", "segment": 1, "next": "done"}]}, EXIT
    )
    assert _errors(graph) == ["Step 'check': 'all others' (else) leads nowhere; every branch must end with an exit."]


def test_a_branch_to_a_missing_step_is_refused():
    graph = _steps({"id": "send", "type": "push", "content": 1, "next": "nowhere"}, EXIT)
    assert _errors(graph) == ["Step 'send': it leads to 'nowhere', which is not a step."]


def test_an_exit_cannot_lead_on():
    assert _errors(_steps({"id": "done", "type": "exit", "next": "done"})) == [
        "Step 'done': an exit ends the journey: it leads nowhere."
    ]


def test_references_are_checked_by_the_callers_functions():
    graph = _steps(
        {
            "id": "check",
            "type": "condition",
            "branches": [{"label": "gone", "segment": 99, "next": "done"}],
            "else": "done",
        },
        EXIT,
    )
    errors = _errors(graph, check_segment=lambda sid: f"segment {sid} does not exist (was it deleted?).")
    assert errors == ["Step 'check': branch 'gone': segment 99 does not exist (was it deleted?)."]


def test_every_problem_is_listed_at_once():
    graph = _steps(
        {"id": "w", "type": "wait", "seconds": -1, "next": "s"},
        {"id": "s", "type": "split", "branches": [{"percent": 10, "next": "done"}, {"percent": 10, "next": "done"}]},
        {"id": "x", "type": "teleport"},
        EXIT,
    )
    errors = _errors(graph)
    assert [e.split(":")[0] for e in errors] == ["Step 'w'", "Step 's'", "Step 'x'"]


def test_empty_graph_is_refused():
    assert _errors({"steps": []}) == ["A journey needs at least one step (and an exit)."]


def test_a_graph_of_thousands_of_steps_is_refused_before_any_step_is_looked_up():
    steps = [{"id": f"s{i}", "type": "push", "content": 7, "next": f"s{i + 1}"} for i in range(3000)]
    looked_up = []
    errors = _errors(_steps(*steps, {"id": "s3000", "type": "exit"}), check_content=looked_up.append)
    assert errors == ["A journey has at most 50 steps; this one has 3001."]
    assert looked_up == []  # a query per step, thousands per refused save


@pytest.mark.parametrize(
    ("kind", "branches", "error"),
    [
        (
            "condition",
            [{"label": "VIP", "event": "buy", "next": "done"}, {"label": "VIP", "event": "cart", "next": "done"}],
            "Step 'c': two branches are labelled 'VIP'; each branch's label counts its profiles, give each its own.",
        ),
        (
            "condition",
            [{"label": "else", "event": "buy", "next": "done"}],
            "Step 'c': branch 'else': 'else' is the label of all others; give this branch another.",
        ),
        (
            "split",
            [{"percent": 50, "next": "done"}, {"label": "branch 1", "percent": 50, "next": "done"}],
            "Step 'c': two branches are labelled 'branch 1'; each branch's label counts its profiles, give each its own.",
        ),
        (
            "split",
            [{"label": "x" * 81, "percent": 50, "next": "done"}, {"label": "B", "percent": 50, "next": "done"}],
            "Step 'c': branch #1: its label is longer than 80 characters.",
        ),
        (
            "split",
            [{"label": 7, "percent": 50, "next": "done"}, {"label": "B", "percent": 50, "next": "done"}],
            "Step 'c': branch #1: its label must be text.",
        ),
    ],
    ids=["same-label", "else", "same-as-unlabelled", "too-long", "not-text"],
)
def test_branch_labels_that_would_count_together_or_not_at_all_are_refused(kind, branches, error):
    step = {"id": "c", "type": kind, "branches": branches}
    if kind == "condition":
        step["else"] = "done"
    assert _errors(_steps(step, EXIT)) == [error]


@pytest.mark.parametrize("kind", ["condition", "split"])
def test_a_step_of_more_than_20_branches_is_refused_before_its_branches_are_looked_up(kind):
    branches = [{"label": f"b{i}", "segment": 7, "percent": 0, "next": "done"} for i in range(21)]
    step = {"id": "many", "type": kind, "branches": branches}
    if kind == "condition":
        step["else"] = "done"
    looked_up = []
    errors = _errors(_steps(step, EXIT), check_segment=looked_up.append)
    assert errors == ["Step 'many': a step has at most 20 branches; this one has 21."]
    assert looked_up == []  # a query or two per branch, and one per branch in every engine batch


def _faults(graph, **checks) -> list[dict]:
    with pytest.raises(GraphInvalid) as info:
        graph_validate(graph, **checks)
    assert len(info.value.faults) <= len(info.value.messages)
    return info.value.faults


def test_each_error_about_a_step_says_which_of_its_fields_is_at_fault():
    """The step editor marks the inputs the errors name: a step's key, a branch's, the branches of a
    split whose percentages do not sum to 100 (a field the editor has, not one only it knew)."""
    faults = _faults(
        _steps(
            {"id": "w", "type": "wait", "seconds": -5, "next": "c"},
            {
                "id": "c",
                "type": "condition",
                "branches": [
                    {"label": "vip", "segment": "gold", "next": "p"},
                    {"label": "bought", "event": "", "next": ""},
                ],
                "else": "nowhere",
            },
            {"id": "p", "type": "push", "content": None, "next": "s"},
            {"id": "s", "type": "split", "branches": [{"percent": 30, "next": EXIT["id"]}, {"percent": 30}]},
            EXIT,
        )
    )
    assert faults == [
        {"step": "w", "field": "seconds"},
        {"step": "c", "field": "branches.0.segment"},
        {"step": "c", "field": "branches.1.event"},
        {"step": "p", "field": "content"},
        {"step": "s", "field": "branches"},
        {"step": "c", "field": "branches.1.next"},
        {"step": "c", "field": "else"},
        {"step": "s", "field": "branches.1.next"},
    ]


def test_a_step_at_fault_as_a_whole_is_named_without_a_field():
    loop = _steps(
        {"id": "a", "type": "wait", "seconds": 60, "next": "b"},
        {"id": "b", "type": "wait", "seconds": 60, "next": "c"},
        {"id": "c", "type": "wait", "seconds": 60, "next": "b"},
    )
    assert _faults(loop) == [{"step": "b", "field": ""}]
    dangling = _steps(
        {"id": "a", "type": "wait", "seconds": 60, "next": "done"},
        {"id": "lost", "type": "wait", "seconds": 60, "next": "done"},
        EXIT,
    )
    assert _faults(dangling) == [{"step": "lost", "field": ""}]
