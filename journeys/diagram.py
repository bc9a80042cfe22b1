"""The journey drawn as a graph: server-rendered SVG, one box per step with its counts, laid out again
by dagre in the browser (journeys/static/journeys/canvas.js)."""

from __future__ import annotations

from collections.abc import Callable

from django.templatetags.static import static
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

from config.labels import numbered
from delivery.reasons import reason_label
from journeys.graph import ELSE_LABEL, STEP_TYPE_LABELS, branch_label, duration_text, entry_of, exits_of

BOX_W, BOX_H, GAP_X, GAP_Y = 190, 86, 70, 26
BOX_CHARS = 34  # the characters a box's line holds at its width and font size
NAME_CHARS = 8  # the fewest characters a branch's name is cut to in a box: fewer, and it is counted instead
ENTRY_ID = "(entry)"
COLORS = {
    "entry": "#dbeafe",
    "wait": "#e8f0fe",
    "condition": "#fff4e5",
    "split": "#f3e8fd",
    "push": "#e6f4ea",
    "exit": "#eeeeee",
}


# Why a push step's batch sent nothing (``selectors.version_push_unsent``), as its box says it.
UNSENT_WORDS = {
    "journey_stopped": "journey stopped before its batch sent",
    "batch_stopped": "batch stopped before it sent",
}


def wait_until_text(until: str, *, zone: str = "UTC", short: bool = False) -> str:
    """A wait until a time of day, saying in which zone it is read: the engine waits in each
    profile's zone, and in ``zone`` for a profile without one, the app's default
    (``journeys.services.engine.journey_default_zone``). ``short``: as a graph's box holds it
    (``BOX_CHARS``), the default zone left to its tooltip when it does not fit."""
    if short:
        text = f"until {until}, profile's zone or {zone}"
        return text if len(text) <= BOX_CHARS else f"until {until}, each profile's zone"
    return f"until {until} in each profile's time zone ({zone} for a profile without one)"


def wait_zone(version) -> str:
    """The zone ``wait_until_text`` names for the version's waits until a time of day (its app's
    default: ``journey_default_zone``); "UTC" without reading it when it has no such wait."""
    from journeys.services.engine import journey_default_zone

    waits = [s for s in version.steps() if isinstance(s, dict) and s.get("type") == "wait" and "until" in s]
    return journey_default_zone(version.journey) if waits else "UTC"


def _describe(step: dict, names: dict, zone: str = "UTC") -> str:
    """What a step other than a condition does, in words (a condition's line: ``_description``)."""
    kind = step.get("type")
    if kind == "wait":
        if "until" in step:
            return wait_until_text(step["until"], zone=zone)
        return duration_text(step.get("seconds", 0))
    if kind == "entry":
        return step.get("text", "")
    if kind == "push":
        return names.get(("content", step.get("content")), numbered("content", step.get("content")))
    if kind == "split":
        return " / ".join(f"{b.get('percent')}%" for b in step.get("branches") or [])
    return "end"


def condition_text(step: dict, width: int = BOX_CHARS) -> tuple[str, str]:
    """A condition's branches as its box names them, then "all others": (as shown, in full).

    The names are the marketer's labels (the journey's own text, the same for every reader). When
    they do not fit in ``width`` characters, the longest are cut first, with an ellipsis, none to
    fewer than ``NAME_CHARS``; what still does not fit is counted ("+3 more"). "all others" is
    always shown; the full text is the box's tooltip."""
    names = [branch_label(b, i) for i, b in enumerate(step.get("branches") or []) if isinstance(b, dict)]
    full = " / ".join([*names, ELSE_LABEL])
    if len(full) <= width:
        return full, full
    for shown in range(len(names), 0, -1):
        more = len(names) - shown
        tail = [f"+{more} more"] if more else []
        room = width - len(" / ".join(["", *tail, ELSE_LABEL])) - 3 * (shown - 1)
        kept = names[:shown]
        cap = max((c for c in range(NAME_CHARS, room + 1) if sum(min(len(n), c) for n in kept) <= room), default=0)
        if cap:
            cut = [n if len(n) <= cap else n[: cap - 1].rstrip() + "…" for n in kept]
            return " / ".join([*cut, *tail, ELSE_LABEL]), full
    return f"{len(names)} branches / {ELSE_LABEL}", full


def _exits(step: dict) -> list[tuple[str, str | None]]:
    """Where a drawn box leads: the entry box to the first step, a step as the graph says."""
    return [("next", step.get("next"))] if step.get("type") == "entry" else exits_of(step)


def _layout(steps: list[dict]) -> dict[str, tuple[int, int]]:
    """Column = longest path from the entry; row = order within the column."""
    by_id = {s["id"]: s for s in steps}
    depth: dict[str, int] = {}
    entry = steps[0]["id"] if steps[0].get("type") == "entry" else entry_of(steps)
    order = [entry] if entry else []
    if entry:
        depth[entry] = 0
    # Relax edges in passes (the graph is a DAG of at most 50 steps).
    for _ in range(len(steps)):
        changed = False
        for step in steps:
            if step["id"] not in depth:
                continue
            for _, target in _exits(step):
                if target in by_id and depth.get(target, -1) < depth[step["id"]] + 1:
                    depth[target] = depth[step["id"]] + 1
                    changed = True
                    if target not in order:
                        order.append(target)
        if not changed:
            break
    for step in steps:  # unreachable steps of a draft still show, in a last column
        if step["id"] not in depth:
            depth[step["id"]] = max(depth.values(), default=-1) + 1
            order.append(step["id"])
    rows: dict[int, int] = {}
    positions = {}
    for step_id in order:
        column = depth[step_id]
        positions[step_id] = (column, rows.get(column, 0))
        rows[column] = rows.get(column, 0) + 1
    return positions


def version_svg(
    version,
    *,
    stats: dict | None = None,
    names: dict | None = None,
    segment_names: dict[int, str] | None = None,
    step_url: Callable[[str], str | None] | None = None,
) -> SafeString:
    """The version's graph as a canvas: an inline SVG, laid out again in the browser by dagre
    (journeys/canvas.js, which also pans and zooms it); without scripts, the columns drawn here.

    ``stats`` (from selectors.version_step_stats) adds each step's counters; ``step_url`` gives
    the page a click on a step opens (its editor, its enrollments), or None for no link.
    ``names``: the push contents' names the reader may see (``review.content_names``);
    ``segment_names``: the entry segment's, if they may see it (``review.entry_segment_names``).
    """
    steps = [s for s in version.steps() if isinstance(s, dict) and "id" in s]
    if not steps:
        return format_html("<p>{}</p>", "No steps yet.")
    stats = stats or {}
    names = names or {}
    zone = wait_zone(version)
    first = entry_of(steps)
    if first is not None:  # the entry is drawn as a step of its own, leading to the first one
        from journeys.review import entry_text

        text = entry_text(version, segment_names=segment_names or {})
        steps = [{"id": ENTRY_ID, "type": "entry", "next": first, "text": text}, *steps]
        counts = stats.get(first) or {}
        kept = ("entered", "skipped_paused", "reads_skipped_paused", "skipped_not_live")
        entry = {name: counts.get(name, 0) for name in kept}
        stats = {**stats, ENTRY_ID: entry}
    positions = _layout(steps)
    width = (max(c for c, _ in positions.values()) + 1) * (BOX_W + GAP_X) + 20
    height = (max(r for _, r in positions.values()) + 1) * (BOX_H + GAP_Y) + 20

    def xy(step_id):
        column, row = positions[step_id]
        return 10 + column * (BOX_W + GAP_X), 10 + row * (BOX_H + GAP_Y)

    parts = [
        f'<svg class="journey-graph" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" data-box="{BOX_W} {BOX_H}">',
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="7" refY="4" orient="auto">'
        '<path d="M0,0 L8,4 L0,8 z" fill="#777"/></marker></defs>',
    ]
    for step in steps:
        x, y = xy(step["id"])
        edges = _exits(step)
        for index, (label, target) in enumerate(edges):
            if target not in positions:
                continue
            tx, ty = xy(target)
            sy = y + BOX_H * (index + 1) / (len(edges) + 1)
            passed = (stats.get(step["id"]) or {}).get("passed", {}).get(label)
            shown = ELSE_LABEL if step["type"] == "condition" and label == "else" else label
            text = shown if label != "next" else ""
            if passed is not None and step["type"] in ("condition", "split"):
                text = f"{shown}: {passed:,}"
            parts.append(
                f'<g class="edge" data-from="{escape(step["id"])}" data-to="{escape(target)}">'
                f'<path d="M{x + BOX_W},{sy:.0f} C{x + BOX_W + GAP_X / 2},{sy:.0f} {tx - GAP_X / 2},{ty + BOX_H / 2} '
                f'{tx},{ty + BOX_H / 2}" fill="none" stroke="#777" marker-end="url(#arrow)"/>'
            )
            if text:
                parts.append(
                    f'<text x="{x + BOX_W + 4}" y="{sy - 3:.0f}" fill="#555" class="edge-label">{escape(text)}</text>'
                )
            parts.append("</g>")
    for step in steps:
        x, y = xy(step["id"])
        kind = step.get("type", "?")
        line, extra = _counters(kind, stats.get(step["id"]) or {})
        url = step_url(step["id"]) if step_url is not None and kind != "entry" else None
        box = (
            f'<rect x="0" y="0" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{COLORS.get(kind, "#fff")}" '
            'stroke="#888"/>'
            f'<text x="8" y="16" font-weight="bold">{escape(_title(step))}</text>'
            f"{_description(step, names, zone)}"
            f'<text x="8" y="54" class="counts">{escape(line)}</text>'
            f'<text x="8" y="72" fill="#a33" class="notes">{escape(_cut(extra))}<title>{escape(extra)}</title></text>'
        )
        if url:
            box = f'<a href="{escape(url)}" class="step-link">{box}</a>'
        parts.append(
            f'<g class="step step-{escape(kind)}" data-step="{escape(step["id"])}" transform="translate({x},{y})">'
            f"{box}</g>"
        )
    parts.append("</svg>")
    return format_html(
        '<div class="journey-canvas" style="display:inline-block;max-width:100%"><div class="journey-canvas-tools">'
        '<button type="button" class="button" data-zoom="out" title="Zoom out">−</button> '
        '<button type="button" class="button" data-zoom="in" title="Zoom in">+</button> '
        '<button type="button" class="button" data-zoom="fit" title="Fit the width">Fit</button> '
        '<span class="journey-canvas-scale">100%</span> <span class="journey-canvas-hint">{}</span></div>'
        '<div class="journey-canvas-view" style="overflow:auto;max-width:100%;max-height:640px;cursor:grab">{}</div>'
        '<script src="{}"></script><script src="{}"></script></div>',
        "Drag to pan; click a step to open it." if step_url else "Drag to pan.",
        mark_safe("".join(parts)),  # noqa: S308 (every text in it is escaped above)
        static("pushdesk/vendor/dagre/dagre.min.js"),
        static("journeys/canvas.js"),
    )


def _description(step: dict, names: dict, zone: str = "UTC") -> str:
    """A box's second line, escaped: what the step does; a condition's whole names in its tooltip.
    ``zone``: the one a wait until a time of day reads for a profile without one (``wait_zone``)."""
    if step.get("type") == "condition":
        shown, full = condition_text(step)
        tooltip = f"<title>{escape(full)}</title>" if shown != full else ""
        return f'<text x="8" y="34" class="description">{escape(shown)}{tooltip}</text>'
    if step.get("type") == "wait" and "until" in step:
        shown, full = wait_until_text(step["until"], zone=zone, short=True), wait_until_text(step["until"], zone=zone)
        return f'<text x="8" y="34" class="description">{escape(shown)}<title>{escape(full)}</title></text>'
    # An entry's words or a content's name may be longer than a box: cut with an ellipsis, the whole
    # in its tooltip (it was cut mid-word, "profiles who read o", and the rest was nowhere).
    whole = _describe(step, names, zone)
    shown = _cut(whole)
    tooltip = f"<title>{escape(whole)}</title>" if shown != whole else ""
    return f'<text x="8" y="34" class="description">{escape(shown)}{tooltip}</text>'


def _cut(text: str, width: int = BOX_CHARS) -> str:
    """A line as a box holds it: cut with an ellipsis when longer (its tooltip says it whole)."""
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _title(step: dict) -> str:
    """A box's title: the step's type in words and its id (the entry box: "Entry")."""
    kind = step.get("type", "?")
    if kind == "entry":
        return "Entry"
    return f"{STEP_TYPE_LABELS.get(kind, kind)} · {step['id']}"


def _counters(kind: str, counts: dict) -> tuple[str, str]:
    """A step's live counters (entered, waiting, sent, accepted, exited) and its notes (a push
    refused at send time, profiles of a batch stopped before it sent, failures (at a wait or a split
    too, where the engine gives up profiles of a graph that loops), skips by reason,
    rows still to send, exits on the exit event, when the journey stopped or as the profile was deleted).
    A push step's sent are the rows handed to a provider; with those failed before a provider had
    them, the skipped and those still to send they make every row targeted; the profiles it refused
    end there, failed."""
    if kind == "exit":
        ended_here = counts.get("exited", 0) - sum(counts.get(why, 0) for why in ("exit_event", "stopped", "deleted"))
        return f"exited {ended_here:,}", ""
    line = f"entered {counts.get('entered', 0):,}"
    if kind == "wait":
        line += f" · waiting {counts.get('waiting', 0):,}"
    elif kind == "push":
        line += f" · sent {counts.get('sent', 0):,} · accepted {counts.get('accepted', 0):,}"
    ended = (
        ("exit event", counts.get("exit_event")),
        ("journey stopped", counts.get("stopped")),
        ("profile deleted", counts.get("deleted")),
    )
    notes = [f"{why} {n:,}" for why, n in ended if n]
    if kind == "entry":  # what a pause held back (entry events not taken, segment reads skipped), or a replay
        if counts.get("skipped_paused"):
            notes.append(f"not entered while paused {counts['skipped_paused']:,}")
        if counts.get("reads_skipped_paused"):
            notes.append(f"reads skipped while paused {counts['reads_skipped_paused']:,}")
        if counts.get("skipped_not_live"):
            notes.append(f"not entered, not live then {counts['skipped_not_live']:,}")
    if counts.get("held"):
        notes.insert(0, f"held by the pause {counts['held']:,}")
    if kind == "condition" and counts.get("failed"):  # a segment it reads changed since the approval, or broke
        notes.insert(
            0,
            f"refused {counts['failed']:,} (a segment changed since the approval, or its saved rules no longer hold; "
            "see its enrollments)",
        )
    if kind in ("wait", "split") and counts.get("failed"):  # given up there by the engine (a graph that loops)
        notes.insert(0, f"failed {counts['failed']:,} (see its enrollments)")
    if kind == "push":
        skipped = counts.get("skipped") or {}
        if counts.get("failed"):  # refused at send time (the gate): those profiles end here, failed
            # The box opens the step's enrollments when it refused everyone, else its sends.
            where = "its enrollments ended failed" if counts.get("pushed") else "see its enrollments"
            notes.insert(0, f"refused {counts['failed']:,} ({where})")
        for why, n in (counts.get("unsent") or {}).items():  # their batch stopped before it made any row
            notes.append(f"not sent {n:,} ({UNSENT_WORDS.get(why, why)})")
        if counts.get("send_failed"):
            notes.append(f"failed {counts['send_failed']:,}")
        if skipped:
            reasons = ", ".join(
                f"{reason_label(reason) or reason} {n:,}" for reason, n in sorted(skipped.items(), key=lambda r: -r[1])
            )
            notes.append(f"skipped {sum(skipped.values()):,} ({reasons})")
        # Every row not final yet: a row failed before a provider had it is final, not sent.
        final = sum(counts.get(key, 0) for key in ("accepted", "send_failed", "send_unknown"))
        to_send = counts.get("targeted", 0) - final - sum(skipped.values())
        if to_send > 0:
            notes.append(f"to send {to_send:,}")
    return line, " · ".join(notes)
