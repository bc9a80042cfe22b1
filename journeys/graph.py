"""The step graph of a journey version: its shape, its validation, where each step leads.

A graph is ``{"steps": [step, ...]}``; each step has an ``id`` (letters, digits, ``_``/``-``)
and a ``type``:

- ``wait``: ``{"seconds": N, "next": id}`` or ``{"until": "HH:MM", "next": id}`` (the next
  such time of day in the profile's time zone, the app's default one for a profile without one);
  a wait of whole days (N a multiple of 86,400) ends at the time of day it began in that zone,
  23 or 25 hours a day across a clock change;
- ``condition``: ``{"branches": [{"label", one of "segment": id | "rules": tree | "event": name,
  "next": id}, ...], "else": id}``: the first branch that holds wins, everyone else takes ``else``;
- ``split``: ``{"branches": [{"label", "percent": N, "next": id}, ...]}`` (percentages sum to 100,
  a profile always takes the same branch of a journey);
- ``push``: ``{"content": PushContent id, "next": id}``;
- ``exit``: the end.

The entry is the one step nothing leads to. Errors name the step they are about.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.template.defaultfilters import pluralize

STEP_TYPES = ("wait", "condition", "split", "push", "exit")
# Each step type in words, as the pages name it (the graph's boxes); the API and the JSON keep the type.
STEP_TYPE_LABELS = {
    "wait": "Wait",
    "condition": "Condition",
    "split": "Random split",
    "push": "Push",
    "exit": "Exit",
}
# The condition's last branch, the profiles no branch holds for: "else" in the graph, in words on the pages.
ELSE_LABEL = "all others"
STEP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
TIME_OF_DAY = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])\Z")  # ASCII digits: \d matches "٩" too
MAX_STEPS = 50
MAX_BRANCHES = 20  # per condition or split: each is a query for every batch of profiles that reaches it
DAY_SECONDS = 86400
MAX_WAIT_SECONDS = 90 * DAY_SECONDS  # AJO's longest wait
MAX_LABEL = 80  # a branch's counter is "passed:<label>", at most 100 characters
EVENT_NAME_MAX = 100  # an event's name (audiences.Event.name): a longer one is no event's


# The units a wait is typed and shown in, largest first: (seconds, as typed, as shown for one and
# for more, as ``pluralize`` takes them).
WAIT_UNITS = (
    (DAY_SECONDS, "days", "day,days"),
    (3600, "hours", "hour,hours"),
    (60, "minutes", "minute,minutes"),
    (1, "seconds", "s,s"),
)


def duration_parts(seconds: int) -> tuple[int, int]:
    """A wait as (amount, unit in seconds), in the largest unit it is a whole number of: as the
    marketer typed it (no wait at all reads as 0 seconds)."""
    unit = next(unit for unit, _, _ in WAIT_UNITS if seconds % unit == 0) if seconds else 1
    return seconds // unit, unit


def duration_text(seconds: int) -> str:
    """A wait as the marketer typed it: "1 day", "90 minutes", "45 s"."""
    amount, unit = duration_parts(seconds)
    return f"{amount:,} {pluralize(amount, next(shown for u, _, shown in WAIT_UNITS if u == unit))}"


def whole_days(seconds: int) -> bool:
    """A wait of whole days, which the engine counts in calendar days of the profile's zone (the
    app's default one for a profile without one)."""
    return seconds > 0 and seconds % DAY_SECONDS == 0


def branch_label(branch: dict, index: int) -> str:
    """A branch's label, the name its profiles are counted under: as typed, else "branch N"."""
    return str(branch.get("label") or f"branch {index + 1}")


def _exits_with_fields(step: dict) -> list[tuple[str, str | None, str]]:
    """``exits_of(step)`` with the key each exit is written under: (label, next step id, field)."""
    kind = step.get("type")
    if kind in ("wait", "push"):
        return [("next", step.get("next"), "next")]
    if kind not in ("condition", "split"):
        return []
    branches = step.get("branches") or []
    pairs = [
        (branch_label(branch, i), branch.get("next"), f"branches.{i}.next")
        for i, branch in enumerate(branches if isinstance(branches, list) else [])
        if isinstance(branch, dict)
    ]
    if kind == "condition":
        pairs.append(("else", step.get("else"), "else"))
    return pairs


def exits_of(step: dict) -> list[tuple[str, str | None]]:
    """Where a step leads: (branch label, next step id) pairs, in order; the last of a condition is "else"."""
    return [(label, target) for label, target, _ in _exits_with_fields(step)]


def entry_of(steps: list[dict]) -> str | None:
    """The id of the only step no other step leads to, or None when there is not exactly one."""
    ids = [s.get("id") for s in steps if isinstance(s, dict)]
    targets = {target for s in steps if isinstance(s, dict) for _, target in exits_of(s)}
    entries = [i for i in ids if i not in targets]
    return entries[0] if len(entries) == 1 else None


class GraphInvalid(ValidationError):
    """The graph breaks one or more rules; ``messages`` each name the step. ``faults`` says where,
    for the step editor to mark: ``{"step": id, "field": name}`` per error about a step, the field
    a step's key (``content``, ``next``, ``else``, ``seconds``, ``until``, ``type``, ``id``), a
    branch's (``branches.0.next``, ``branches.1.percent``), ``branches`` for a step's branches
    together (too few, too many, a split's percentages not summing to 100), or "" for the step as a
    whole."""

    def __init__(self, errors: list[str], faults: list[dict] | None = None):
        self.errors_list = errors
        self.faults = faults or []
        super().__init__({"graph": errors})


def graph_validate(graph, *, check_segment=None, check_content=None, check_rules=None) -> None:
    """Check a graph's shape and references; raise GraphInvalid listing every problem, each naming its step.

    ``check_segment(id)``, ``check_content(id)`` and ``check_rules(tree)`` return an error message
    (or "") for a referenced segment, push content and rule tree; the services pass functions
    that know the author's access and the journey's app.
    """
    errors: list[str] = []
    faults: list[dict] = []

    def fault(step_id: str, field: str, message: str) -> None:
        errors.append(f"Step '{step_id}': {message}")
        faults.append({"step": step_id, "field": field})

    if not isinstance(graph, dict) or not isinstance(graph.get("steps"), list):
        raise GraphInvalid(['The graph must be {"steps": [...]}.'])
    steps = graph["steps"]
    if not steps:
        raise GraphInvalid(["A journey needs at least one step (and an exit)."])
    if len(steps) > MAX_STEPS:
        # Alone: checking each step's references would cost a query or two per step.
        raise GraphInvalid([f"A journey has at most {MAX_STEPS} steps; this one has {len(steps)}."])
    by_id: dict[str, dict] = {}
    for index, step in enumerate(steps):
        if not isinstance(step, dict):
            errors.append(f"Step #{index + 1}: a step is an object with an id and a type.")
            continue
        step_id = step.get("id")
        if not isinstance(step_id, str) or not STEP_ID.match(step_id):
            errors.append(f"Step #{index + 1}: its id must be 1 to 64 letters, digits, '_' or '-'.")
            continue
        if step_id in by_id:
            fault(step_id, "id", "this id is used by two steps.")
            continue
        by_id[step_id] = step
        for field, message in _check_step(step, check_segment, check_content, check_rules):
            fault(step_id, field, message)
    for step_id, step in by_id.items():
        for label, target, field in _exits_with_fields(step):
            if target is None or target == "":
                fault(step_id, field, f"{_which(step, label)} leads nowhere; every branch must end with an exit.")
            elif not isinstance(target, str) or target not in by_id:
                fault(step_id, field, f"{_which(step, label)} leads to '{target}', which is not a step.")
    if errors:
        raise GraphInvalid(errors, faults)
    targets = {target for step in by_id.values() for _, target in exits_of(step)}
    entries = [step_id for step_id in by_id if step_id not in targets]
    if not entries:
        errors.append("Every step has a way in, so there is no entry: the steps form a loop.")
    elif len(entries) > 1:
        names = ", ".join(f"'{e}'" for e in entries)
        faults += [{"step": e, "field": ""} for e in entries[1:]]
        errors.append(
            f"Steps {names} have no way in: a journey has exactly one entry ('{entries[0]}'); "
            f"connect or remove the others (dangling steps)."
        )
    cycle = _find_cycle(by_id)
    if cycle:
        fault(cycle[0], "", f"it leads back to itself ({' → '.join(cycle)}); journeys cannot loop.")
    if not errors and entries:
        reached = _reachable(by_id, entries[0])
        for step_id in by_id:
            if step_id not in reached:
                fault(step_id, "", f"it cannot be reached from the entry '{entries[0]}'.")
    if errors:
        raise GraphInvalid(errors, faults)


def _which(step: dict, label: str) -> str:
    if step.get("type") in ("wait", "push"):
        return "it"
    if label == "else":
        return f"'{ELSE_LABEL}' (else)"
    return f"branch '{label}'"


def _check_step(step: dict, check_segment, check_content, check_rules) -> list[tuple[str, str]]:
    """What is wrong with one step: (the field at fault, as ``GraphInvalid.faults`` names it, message) pairs."""
    kind = step.get("type")
    if kind not in STEP_TYPES:
        return [("type", f"unknown type {kind!r}; use one of {', '.join(STEP_TYPES)}.")]
    problems: list[tuple[str, str]] = []
    if kind == "wait":
        has_seconds, has_until = "seconds" in step, "until" in step
        if has_seconds == has_until:
            problems.append(("", 'a wait needs either "seconds" (a duration) or "until" (a time of day, HH:MM).'))
        elif has_seconds:
            seconds = step["seconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, int):
                problems.append(("seconds", "the wait's seconds must be a whole number."))
            elif seconds < 0:
                problems.append(("seconds", f"the wait is negative ({seconds} s); a wait is 0 seconds or more."))
            elif seconds > MAX_WAIT_SECONDS:
                problems.append(
                    (
                        "seconds",
                        f"the wait is {duration_text(seconds)}, longer than the {MAX_WAIT_SECONDS // DAY_SECONDS} "
                        "days a wait may last.",
                    )
                )
        elif not isinstance(step["until"], str) or not TIME_OF_DAY.match(step["until"]):
            problems.append(("until", f"the time of day {step['until']!r} is not HH:MM (00:00 to 23:59)."))
    elif kind == "condition":
        branches = step.get("branches")
        if not isinstance(branches, list) or not branches:
            return [("branches", "a condition needs at least one branch (plus 'else' for all others).")]
        if len(branches) > MAX_BRANCHES:
            return [("branches", f"a step has at most {MAX_BRANCHES} branches; this one has {len(branches)}.")]
        for index, branch in enumerate(branches):
            label = branch.get("label") if isinstance(branch, dict) else None
            name = f"branch '{label}'" if label else f"branch #{index + 1}"
            if not isinstance(branch, dict):
                problems.append((f"branches.{index}", f"{name} must be an object."))
                continue
            if label == "else":
                problems.append(
                    (f"branches.{index}.label", f"{name}: 'else' is the label of all others; give this branch another.")
                )
            kinds = [key for key in ("segment", "rules", "event") if key in branch]
            if len(kinds) != 1:
                problems.append((f"branches.{index}", f"{name} needs exactly one of segment, rules or event."))
                continue
            if kinds[0] == "segment":
                segment_id = branch["segment"]
                if isinstance(segment_id, bool) or not isinstance(segment_id, int):
                    problems.append((f"branches.{index}.segment", f"{name}: the segment must be a segment id."))
                elif check_segment is not None and (message := check_segment(segment_id)):
                    problems.append((f"branches.{index}.segment", f"{name}: {message}"))
            elif kinds[0] == "rules":
                if check_rules is not None and (message := check_rules(branch["rules"])):
                    problems.append((f"branches.{index}.rules", f"{name}: {message}"))
            elif not isinstance(branch["event"], str) or not branch["event"].strip():
                problems.append(
                    (f"branches.{index}.event", f"{name}: name the event (did it happen since the profile entered?).")
                )
            elif len(branch["event"]) > EVENT_NAME_MAX:
                problems.append(
                    (
                        f"branches.{index}.event",
                        f"{name}: an event's name is at most {EVENT_NAME_MAX} characters "
                        f"(this one has {len(branch['event']):,}): no event could match it.",
                    )
                )
        problems += _label_problems(branches)
    elif kind == "split":
        branches = step.get("branches")
        if not isinstance(branches, list) or len(branches) < 2:
            return [("branches", "a split needs at least two branches.")]
        if len(branches) > MAX_BRANCHES:
            return [("branches", f"a step has at most {MAX_BRANCHES} branches; this one has {len(branches)}.")]
        problems += _label_problems(branches)
        total = 0
        for index, branch in enumerate(branches):
            label = branch.get("label") if isinstance(branch, dict) else None
            name = f"branch '{label}'" if label else f"branch #{index + 1}"
            percent = branch.get("percent") if isinstance(branch, dict) else None
            if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
                problems.append(
                    (f"branches.{index}.percent", f"{name}: the percentage must be a whole number from 0 to 100.")
                )
            else:
                total += percent
        if not problems and total != 100:
            problems.append(("branches", f"the percentages sum to {total}, not 100."))
    elif kind == "push":
        content_id = step.get("content")
        if isinstance(content_id, bool) or not isinstance(content_id, int):
            problems.append(("content", "choose the push content to send."))
        elif check_content is not None and (message := check_content(content_id)):
            problems.append(("content", message))
    elif kind == "exit":
        if any(key in step for key in ("next", "branches", "else")):
            problems.append(("", "an exit ends the journey: it leads nowhere."))
    return problems


def _label_problems(branches: list) -> list[tuple[str, str]]:
    """Each branch's profiles are counted under its label: labels that are not text, too long to
    count under, or shared by two branches (whose profiles would be counted together)."""
    problems, seen = [], set()
    for index, branch in enumerate(branches):
        if not isinstance(branch, dict):
            continue
        label = branch.get("label")
        if label is not None and not isinstance(label, str):
            problems.append((f"branches.{index}.label", f"branch #{index + 1}: its label must be text."))
            continue
        if label and len(label) > MAX_LABEL:
            problems.append(
                (f"branches.{index}.label", f"branch #{index + 1}: its label is longer than {MAX_LABEL} characters.")
            )
            continue
        name = branch_label(branch, index)
        if name in seen:
            problems.append(
                (
                    f"branches.{index}.label",
                    f"two branches are labelled '{name}'; each branch's label counts its profiles, give each its own.",
                )
            )
        seen.add(name)
    return problems


def _find_cycle(by_id: dict[str, dict]) -> list[str] | None:
    """A loop in the graph, as the list of step ids around it (first = last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in by_id:
        if state.get(start):
            continue
        stack: list[tuple[str, list[str]]] = [(start, [t for _, t in exits_of(by_id[start])])]
        path = [start]
        state[start] = 1
        while stack:
            node, pending = stack[-1]
            if not pending:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            target = pending.pop()
            if target not in by_id:
                continue
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if not state.get(target):
                state[target] = 1
                path.append(target)
                stack.append((target, [t for _, t in exits_of(by_id[target])]))
    return None


def _reachable(by_id: dict[str, dict], entry: str) -> set[str]:
    seen, todo = set(), [entry]
    while todo:
        node = todo.pop()
        if node in seen or node not in by_id:
            continue
        seen.add(node)
        todo += [t for _, t in exits_of(by_id[node])]
    return seen


def condition_branches(graph: dict):
    """Each branch of the graph's conditions, as (the step's id, the branch), well-formed ones only
    (a graph read back from a version may predate a check)."""
    for step in (graph or {}).get("steps") or []:
        if isinstance(step, dict) and step.get("type") == "condition":
            for branch in step.get("branches") or []:
                if isinstance(branch, dict):
                    yield step.get("id"), branch


def branch_segments(branch: dict) -> set[int]:
    """The segments a condition's branch reads: the one it tests, and those its rule names."""
    from audiences.rules.schema import segment_references

    named = branch.get("segment")
    return ({named} if isinstance(named, int) else set()) | segment_references(branch.get("rules"))


def segments_of(graph: dict) -> set[int]:
    """The segments the graph's conditions refer to."""
    return {branch["segment"] for _, branch in condition_branches(graph) if isinstance(branch.get("segment"), int)}


def rules_of(graph: dict) -> list:
    """The rule trees of the graph's conditions."""
    return [branch["rules"] for _, branch in condition_branches(graph) if "rules" in branch]


def contents_of(graph: dict) -> dict[str, int]:
    """Each push step's content id, by step id."""
    return {
        step["id"]: step["content"]
        for step in (graph or {}).get("steps") or []
        if isinstance(step, dict) and step.get("type") == "push" and isinstance(step.get("content"), int)
    }
