"""What an approver sees: the version in review drawn as a graph, its entry, exit and re-entry, its pushes."""

from django.utils.html import format_html, format_html_join

from accounts.models import ApprovalRequest, User
from accounts.selectors import visible_named
from config.labels import numbered
from journeys.diagram import version_svg, wait_until_text, wait_zone
from journeys.graph import ELSE_LABEL, branch_label, contents_of, duration_text, rules_of, segments_of
from journeys.models import Journey, JourneyVersion


def entry_segment_names(user: User | None, versions) -> dict[int, str]:
    """The names of the versions' entry segments that ``user`` may see, by id (one query; none for
    no reader): ``entry_text`` names those, and the others by number."""
    from audiences.rules.words import names_visible_to

    ids = {version.entry_segment_id for version in versions if version is not None and version.entry_segment_id}
    return names_visible_to(user, segments=ids, apps=set())[0] if ids else {}


def entry_segment_text(version: JourneyVersion, *, segment_names: dict[int, str]) -> str:
    """The entry segment as the reader may be told it: by name when ``segment_names`` holds it
    (``entry_segment_names``), else "segment #12", as a condition's segment reads."""
    pk = version.entry_segment_id
    name = segment_names.get(pk)
    return f"'{name}'" if name is not None else numbered("segment", pk)


def entry_text(version: JourneyVersion, *, segment_names: dict[int, str]) -> str:
    """The version's entry and re-entry in words; its segment named as ``entry_segment_text`` says."""
    if version.entry_kind == JourneyVersion.EntryKind.EVENT:
        text = f"When the event '{version.entry_event}' arrives"
    else:
        every = f", read again every {version.entry_every_hours} h" if version.entry_every_hours else ", read once"
        text = f"Everyone in {entry_segment_text(version, segment_names=segment_names)}{every}"
    if version.reentry == JourneyVersion.Reentry.AFTER_WAIT:
        text += f"; re-entry after {duration_text(version.reentry_wait_seconds)}"
    else:
        text += "; a profile enters once"
    return text


def entry_audience_text(version: JourneyVersion, *, app_id: int, segment_names: dict[int, str]) -> str:
    """Who enters the version, as the journey page and the approver's review both say it: the entry
    segment's size now as profiles → reachable in the journey's app → opted in (one count of the
    audience), or that profiles enter when the event arrives; then the app's frequency cap and
    quiet hours that may hold its pushes back, in a campaign's words (a journey's pushes are
    marketing pushes). The segment is named as ``entry_segment_text`` says."""
    from audiences.selectors import audience_reach
    from delivery.rules import rules_hold_text

    rules = rules_hold_text(app_id=app_id, purpose="marketing")
    if version.entry_kind != JourneyVersion.EntryKind.SEGMENT or version.entry_segment is None:
        return "; ".join(part for part in ("Profiles enter when the event arrives", rules) if part) + "."
    reach = audience_reach(segment=version.entry_segment, app_id=app_id).text()
    segment = segment_names.get(version.entry_segment_id, numbered("segment", version.entry_segment_id))
    return "; ".join(part for part in (f"{segment}: {reach}", rules) if part)


def journey_enters_now_text(journey: Journey, *, user: User) -> str:
    """What approving the journey's version in review starts at once (its segment entry, read as
    soon as it is live), for its approver's confirmation: who enters now, as the review says it
    (``entry_audience_text``), the segment named as ``user`` may be told it."""
    version = journey.versions.filter(status=JourneyVersion.Status.IN_REVIEW).first()
    if version is None or version.entry_kind != JourneyVersion.EntryKind.SEGMENT:
        return f"'{journey.name}' goes live now."
    names = entry_segment_names(user, [version])
    segment = entry_segment_text(version, segment_names=names)
    who = entry_audience_text(version, app_id=journey.app_id, segment_names=names)
    return f"'{journey.name}' enters everyone in {segment} now, and its steps start: {who}"


def content_names(version: JourneyVersion, *, user: User) -> dict:
    """The names of the version's push contents that ``user`` may see, by ("content", id): the
    steps name those, and the others by number ("content #12")."""
    from delivery.models import PushContent

    ids = set(contents_of(version.graph).values())
    return {("content", pk): name for pk, name in visible_named(user, PushContent, ids).items()}


def branch_text(branch: dict, *, segment_names: dict[int, str], app_names: dict[int, str]) -> str:
    """What a condition's branch tests, in words: its segment, its rules as ``rules_text`` says them,
    or its event. ``segment_names`` and ``app_names`` name what the reader may see; the others read
    as "segment #12", "app #3", as in a segment's rules."""
    from audiences.rules.words import rules_text

    if "segment" in branch:
        name = segment_names.get(branch["segment"])
        return f"in segment “{name}”" if name is not None else f"in {numbered('segment', branch['segment'])}"
    if "rules" in branch:
        return "matches " + rules_text(branch["rules"], segment_names=segment_names, app_names=app_names)
    return f"did “{branch.get('event')}” since entering"


def condition_lines(step: dict, *, segment_names: dict[int, str], app_names: dict[int, str]) -> list[str]:
    """A condition step's branches in words, each with where it leads, then its "all others"."""
    lines = [
        f"{branch_label(branch, index)}: "
        f"{branch_text(branch, segment_names=segment_names, app_names=app_names)} → {branch.get('next')}"
        for index, branch in enumerate(step.get("branches") or [])
        if isinstance(branch, dict)
    ]
    return [*lines, f"{ELSE_LABEL} → {step.get('else')}"]


def conditions_html(version: JourneyVersion, *, user: User) -> str:
    """The version's condition steps read-only, each branch in words: the segments and apps their
    rules name that ``user`` may see by name, the others by number (as the segment page does)."""
    from audiences.rules.schema import app_references, segment_references
    from audiences.rules.words import names_visible_to

    steps = [step for step in version.steps() if isinstance(step, dict) and step.get("type") == "condition"]
    if not steps:
        return format_html("{}", "No condition step.")
    trees = rules_of(version.graph)
    segments = segments_of(version.graph).union(*(segment_references(tree) for tree in trees))
    apps = set().union(*(app_references(tree) for tree in trees))
    segment_names, app_names = names_visible_to(user, segments=segments, apps=apps)
    return format_html(
        '<dl class="journey-conditions">{}</dl>',
        format_html_join(
            "",
            '<dt>Condition · {}</dt><dd><ul class="journey-condition" data-step="{}">{}</ul></dd>',
            (
                (
                    step["id"],
                    step["id"],
                    format_html_join(
                        "",
                        "<li>{}</li>",
                        ((line,) for line in condition_lines(step, segment_names=segment_names, app_names=app_names)),
                    ),
                )
                for step in steps
            ),
        ),
    )


def _step_text(
    step: dict, *, names: dict, segment_names: dict[int, str], app_names: dict[int, str], zone: str = "UTC"
) -> str:
    """A step in words, with where it leads: what the review compares of two versions. ``names``:
    the push contents' names (``content_names``); ``segment_names``, ``app_names``: as
    ``condition_lines`` takes them; ``zone``: the one a wait until a time of day reads for a
    profile without one (``wait_zone``)."""
    kind = step.get("type")
    if kind == "wait":
        wait = wait_until_text(step["until"], zone=zone) if "until" in step else duration_text(step.get("seconds", 0))
        return f"wait {wait} → {step.get('next')}"
    if kind == "push":
        name = names.get(("content", step.get("content")), numbered("content", step.get("content")))
        return f"push '{name}' → {step.get('next')}"
    if kind == "condition":
        return "; ".join(condition_lines(step, segment_names=segment_names, app_names=app_names))
    if kind == "split":
        return "; ".join(
            f"{branch_label(branch, index)}: {branch.get('percent')}% → {branch.get('next')}"
            for index, branch in enumerate(step.get("branches") or [])
        )
    return "exit"


def version_rows(
    version: JourneyVersion,
    *,
    specs: dict[str, dict],
    names: dict,
    segment_names: dict[int, str],
    app_names: dict[int, str],
    name: str = "",
) -> list[tuple[str, str]]:
    """What an approval of ``version`` covers, as (label, text) rows: the journey's ``name`` when a
    push shows it (the version sends it: ``approved_name``), its entry and re-entry, its exit
    criteria, each step with where it leads, and each push step's texts per locale (``specs``: by
    step, the content as the version sends it). The names as ``_step_text`` takes them (the entry
    segment's among ``segment_names``)."""
    from campaigns.review import locale_texts
    from delivery.payloads import spec_reads
    from journeys.services.lifecycle import NAME_READ

    rows = [("Entry", entry_text(version, segment_names=segment_names)), ("Exit criteria", exit_text(version))]
    if any(spec_reads(spec, NAME_READ) for spec in specs.values()):
        rows.insert(0, ("Name (its pushes show it)", name or "—"))
    zone = wait_zone(version)
    rows += [
        (
            f"Step '{step['id']}'",
            _step_text(step, names=names, segment_names=segment_names, app_names=app_names, zone=zone),
        )
        for step in version.steps()
    ]
    for step, spec in specs.items():
        for locale, texts in locale_texts(spec).items():
            shown = " · ".join(texts[key] for key in ("title", "subtitle", "body") if texts[key])
            rows.append((f"Push '{step}' ({locale})", shown or "—"))
    return rows


def exit_text(version: JourneyVersion) -> str:
    return f"the event '{version.exit_event}'" if version.exit_event else "none"


# What a version's review compares, beside its pushes' texts (``version_rows``): what its approval covers.
SUBMITTED_FIELDS = JourneyVersion.FINGERPRINT_FIELDS


def submitted_snapshot(journey: Journey, version: JourneyVersion) -> dict:
    """What ``version`` is submitted as, kept by its request (``approval_request_open``): what its
    review compares (``version_rows``), each push step's content as it is now, the journey's name."""
    from delivery.models import PushContent

    steps = contents_of(version.graph)
    contents = PushContent.objects.in_bulk(set(steps.values()))
    return {
        "fields": {field: getattr(version, field) for field in SUBMITTED_FIELDS},
        "number": version.number,
        "name": journey.name,
        "specs": {step: contents[cid].spec() for step, cid in steps.items() if cid in contents},
    }


def _submitted_version(journey: Journey, snapshot: dict) -> JourneyVersion:
    """The version a request was submitted as (``submitted_snapshot``), never saved."""
    return JourneyVersion(journey=journey, number=snapshot["number"], **snapshot["fields"])


def _revision_diff_html(
    journey: Journey,
    version: JourneyVersion,
    *,
    contents: dict,
    names: dict,
    user: User,
    request: ApprovalRequest | None = None,
) -> str:
    """What the version in review changes of the live one (what is sent now: its pushes as
    approved), as a campaign's revision shows it; for a first version, everything the approval
    covers in words, as a campaign's first review shows it (the graph names a condition's
    branches, not what each tests). ``contents`` and ``names``: the version's push contents by id
    and their names (``content_names``). The segments and apps the conditions use are named as
    ``conditions_html`` names them, the entry segments too: those ``user`` may see, the others by
    number. For a ``request`` answering one sent back for changes, what changed since that one was
    submitted (``resubmission_diff_html``)."""
    from accounts.selectors import approval_sent_back_before
    from audiences.rules.schema import app_references, segment_references
    from audiences.rules.words import names_visible_to
    from campaigns.review import resubmission_diff_html, rows_diff, rows_diff_html

    live = journey.live_version
    if live == version:
        live = None
    sent_back = approval_sent_back_before(request) if request is not None else None
    kept = sent_back.snapshot if sent_back is not None else None
    submitted = _submitted_version(journey, kept) if kept else None
    for other in (live, submitted):
        if other is not None:
            names = {**content_names(other, user=user), **names}
    others = [v for v in (version, live, submitted) if v is not None]
    graphs = [v.graph for v in others]
    trees = [tree for graph in graphs for tree in rules_of(graph)]
    segments = set().union(*(segments_of(graph) for graph in graphs), *(segment_references(tree) for tree in trees))
    segments |= {v.entry_segment_id for v in others if v.entry_segment_id}
    apps = set().union(*(app_references(tree) for tree in trees))
    segment_names, app_names = names_visible_to(user, segments=segments, apps=apps)
    named = {"names": names, "segment_names": segment_names, "app_names": app_names}
    after = {step: contents[cid].spec() for step, cid in contents_of(version.graph).items() if cid in contents}
    # Approved, the version sends the name the journey has then; the live one, the name it was approved with.
    after_rows = version_rows(version, specs=after, name=journey.name, **named)
    live_rows = sending = None
    if live is not None:
        before = {step: item["spec"] for step, item in (live.frozen_specs or {}).items()}
        live_rows = version_rows(live, specs=before, name=live.approved_name or journey.name, **named)
        sending = {Journey.Status.LIVE: "live, sending now", Journey.Status.PAUSED: "live, paused"}.get(
            journey.status, "the last live one"
        )
    if sent_back is not None:
        kept_rows = None
        if submitted is not None:
            kept_rows = version_rows(submitted, specs=kept["specs"], name=kept["name"], **named)
        return resubmission_diff_html(
            kept_rows,
            after_rows,
            sent_back=sent_back,
            subject=journey,
            live_rows=live_rows,
            live_title=f"Version {live.number} ({sending})" if live is not None else "",
        )
    if live is None:
        return rows_diff_html(rows_diff(None, after_rows), first=True, before_title="")
    return rows_diff_html(
        rows_diff(live_rows, after_rows), first=False, before_title=f"Version {live.number} ({sending})"
    )


def journey_review_html(journey: Journey, *, request: ApprovalRequest, user: User) -> str:
    """The review pane: the version in review, its graph and what it does, and for a new version of a
    journey that went live, what it changes."""
    from delivery.models import App, PushContent

    version = journey.versions.filter(status=JourneyVersion.Status.IN_REVIEW).first() or journey.live_version
    if version is None:
        return format_html("<p>{}</p>", "Nothing to review.")
    contents = {c.pk: c for c in PushContent.objects.filter(pk__in=set(contents_of(version.graph).values()))}
    # The steps name the contents, and the entry its segment, only to a reader who may see them.
    names = {("content", pk): name for pk, name in visible_named(user, PushContent, set(contents)).items()}
    entry_names = entry_segment_names(user, [version])
    # A journey granted without its app (the approver once he decided): "app #3", as its page says it.
    app_name = visible_named(user, App, {journey.app_id}).get(journey.app_id, numbered("app", journey.app_id))
    # Each push step with its phones, as the content shows on them (the version's frozen copy once approved).
    frozen = version.frozen_specs or {}
    pushes = format_html_join(
        "",
        '<li class="journey-review-push" data-step="{}"><strong>{}</strong>: {}{}</li>',
        (
            (
                step,
                step,
                names.get(("content", cid), numbered("content", cid)),
                _phones(
                    frozen.get(step, {}).get("spec") or (contents[cid].spec() if cid in contents else None),
                    app_name=app_name,
                    context=journey.send_context(version=version, step=step),
                ),
            )
            for step, cid in contents_of(version.graph).items()
        ),
    )
    replaces = (
        f" (replaces live v{journey.live_version.number})"
        if journey.live_version and journey.live_version != version
        else ""
    )
    rows = format_html_join(
        "",
        "<tr><th>{}</th><td>{}</td></tr>",
        [
            ("Journey", f"{journey.name} — version {version.number}{replaces}"),
            ("App", app_name),
            ("Entry", entry_text(version, segment_names=entry_names)),
            ("Who enters", entry_audience_text(version, app_id=journey.app_id, segment_names=entry_names)),
            ("Exit criteria", exit_text(version)),
            ("Segment definitions", segment_definitions_text(version, user=user)),
            *_segments_changed_rows(journey, user=user),
        ],
    )
    return format_html(
        '<div class="journey-review"><table>{}</table>{}<div style="display:flex;gap:16px;flex-wrap:wrap">'
        '<div style="flex:2 1 480px;min-width:0">{}</div><div style="flex:1 1 300px"><h3>Pushes</h3><ul>{}</ul></div>'
        "</div></div>",
        rows,
        _revision_diff_html(journey, version, contents=contents, names=names, user=user, request=request),
        version_svg(version, names=names, segment_names=entry_names),
        pushes,
    )


def segment_definitions_text(version: JourneyVersion, *, user: User) -> str:
    """Who the approval covers, as each segment the version reads is defined now (its entry's and its
    conditions'): the rules, the segments they use, a kept list's member count. An edit of any of
    them after the approval refuses the version's reads of it. The segments and apps ``user`` may
    see are named, the others read "segment #12", "app #3" (a condition's rules may use a segment
    the review does not show its reader)."""
    from audiences.models import Segment
    from audiences.rules.schema import app_references
    from audiences.rules.words import names_visible_to
    from campaigns.review import definition_text
    from journeys.services.lifecycle import segments_read

    definition: dict[str, dict] = {}
    for segment in Segment.objects.filter(pk__in=segments_read(version)).order_by("name"):
        definition.update({pk: entry for pk, entry in segment.definition().items() if pk not in definition})
    apps = set().union(*(app_references(entry.get("rules")) for entry in definition.values()))
    visible = names_visible_to(user, segments={int(pk) for pk in definition}, apps=apps)
    return definition_text(definition, names=visible)


def _segments_changed_rows(journey: Journey, *, user: User) -> list[tuple[str, str]]:
    """What the live version may no longer read, as the journey page says it (a segment edited since
    its approval, named only to a reader who may see it): the version in review, approved, reads
    them as they are now."""
    from journeys.services.lifecycle import segments_changed_text

    live = journey.live_version
    on_air = live is not None and journey.status in Journey.ON_AIR
    changed = segments_changed_text(live, reader=user) if on_air else ""
    return [(f"Live version {live.number}", changed)] if changed else []


def _phones(spec: dict | None, *, app_name: str, context: dict) -> str:
    """The push as phones show it, rendered with ``context``: what its step's sends give it; a content
    with locale variants, a pair of phones per locale, each under its language (the default texts
    first), as a campaign's review shows them."""
    if spec is None:
        return ""
    from campaigns.review import locale_previews_html
    from delivery.admin.contents import _spec_previews_html

    if not spec.get("variants") or spec.get("silent"):
        return _spec_previews_html(spec, app_name=app_name, profile=None, context=context)
    return locale_previews_html(
        spec,
        lambda locale: _spec_previews_html(
            spec, app_name=app_name, profile={"attributes": {}, "locale": locale}, context=context
        ),
    )


def journey_references(journeys: list[Journey]) -> dict[str, set[int]]:
    """What the journeys' reviews show (their app, the segments and contents of their live version
    and of the one in review): whoever may decide their requests may read them. Their versions in
    one query."""
    from journeys.services.lifecycle import segments_used

    segments, contents = set(), set()
    for version in JourneyVersion.objects.filter(journey__in=journeys, status__in=("in_review", "live")):
        segments |= segments_used(version)
        contents |= set(contents_of(version.graph).values())
    apps = {journey.app_id for journey in journeys}
    return {"delivery.app": apps, "audiences.segment": segments, "delivery.pushcontent": contents}
