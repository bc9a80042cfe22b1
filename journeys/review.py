"""What an approver sees: the version in review drawn as a graph, its entry, exit and re-entry, its pushes."""

from django.utils.html import format_html, format_html_join

from accounts.models import ApprovalRequest, User
from journeys.diagram import duration_text, version_svg
from journeys.graph import contents_of
from journeys.models import Journey, JourneyVersion


def entry_text(version: JourneyVersion) -> str:
    if version.entry_kind == JourneyVersion.EntryKind.EVENT:
        text = f"When the event '{version.entry_event}' arrives"
    else:
        every = f", read again every {version.entry_every_hours} h" if version.entry_every_hours else ", read once"
        text = f"Everyone in '{version.entry_segment}'{every}"
    if version.reentry == JourneyVersion.Reentry.AFTER_WAIT:
        text += f"; re-entry after {duration_text(version.reentry_wait_seconds)}"
    else:
        text += "; a profile enters once"
    return text


def entry_audience_text(version: JourneyVersion, *, app_id: int) -> str:
    """Who enters the version, as the journey page and the approver's review both say it: the entry
    segment's size now as profiles → reachable in the journey's app → opted in (one count of the
    audience), or that profiles enter when the event arrives; then the app's frequency cap and
    quiet hours that may hold its pushes back, in a campaign's words (a journey's pushes are
    marketing pushes)."""
    from audiences.selectors import audience_reach
    from delivery.rules import rules_hold_text

    rules = rules_hold_text(app_id=app_id, purpose="marketing")
    if version.entry_kind != JourneyVersion.EntryKind.SEGMENT or version.entry_segment is None:
        return "; ".join(part for part in ("Profiles enter when the event arrives", rules) if part) + "."
    reach = audience_reach(segment=version.entry_segment, app_id=app_id).text()
    return "; ".join(part for part in (f"{version.entry_segment}: {reach}", rules) if part)


def content_names(version: JourneyVersion) -> dict:
    from delivery.models import PushContent

    ids = set(contents_of(version.graph).values())
    return {("content", c.pk): c.name for c in PushContent.objects.filter(pk__in=ids)}


def journey_review_html(journey: Journey, *, request: ApprovalRequest, user: User) -> str:
    """The review pane: the graph of the version in review and what it does."""
    from delivery.models import PushContent

    version = journey.versions.filter(status=JourneyVersion.Status.IN_REVIEW).first() or journey.live_version
    if version is None:
        return format_html("<p>{}</p>", "Nothing to review.")
    contents = {c.pk: c for c in PushContent.objects.filter(pk__in=set(contents_of(version.graph).values()))}
    # Each push step with its phones, as the content shows on them (the version's frozen copy once approved).
    frozen = version.frozen_specs or {}
    pushes = format_html_join(
        "",
        '<li class="journey-review-push" data-step="{}"><strong>{}</strong>: {}{}</li>',
        (
            (
                step,
                step,
                contents[cid].name if cid in contents else cid,
                _phones(
                    frozen.get(step, {}).get("spec") or (contents[cid].spec() if cid in contents else None), journey
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
            ("App", journey.app.name),
            ("Entry", entry_text(version)),
            ("Who enters", entry_audience_text(version, app_id=journey.app_id)),
            ("Exit criteria", f"the event '{version.exit_event}'" if version.exit_event else "none"),
        ],
    )
    return format_html(
        '<div class="journey-review"><table>{}</table><div style="display:flex;gap:16px;flex-wrap:wrap">'
        '<div style="flex:2 1 480px;min-width:0">{}</div><div style="flex:1 1 300px"><h3>Pushes</h3><ul>{}</ul></div>'
        "</div></div>",
        rows,
        version_svg(version, names=content_names(version)),
        pushes,
    )


def _phones(spec: dict | None, journey: Journey) -> str:
    if spec is None:
        return ""
    from delivery.admin.contents import _spec_previews_html

    return _spec_previews_html(spec, app_name=journey.app.name, profile=None, context={})


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
