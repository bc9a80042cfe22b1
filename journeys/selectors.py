"""Permission-filtered reads of journeys, their versions, step counts and enrollments."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from django.db.models import Count, Func, IntegerField, Q, QuerySet, Sum
from django.http import Http404

from accounts.models import ApprovalRequest, User
from accounts.selectors import approval_current, can, granted_to, in_scope, may_cancel_approval_request, visible_to
from delivery.conversions import rate_figures
from journeys.graph import exits_of
from journeys.models import Enrollment, Journey, JourneyVersion, StepStat

Status = Journey.Status


def journeys_visible_to(user: User, *, perm: str | None = None) -> QuerySet[Journey]:
    """Every journey the user may see: through its app's scope or a grant on the journey itself."""
    return visible_to(user, Journey.objects.select_related("app", "owner", "live_version"), perm=perm)


def journey_for(user: User, journey_id: int, *, perm: str | None = None) -> Journey:
    journey = journeys_visible_to(user, perm=perm).filter(pk=journey_id).first()
    if journey is None:
        raise Http404(f"No journey {journey_id}.")
    return journey


def journey_versions_visible_to(user: User) -> QuerySet:
    """The ids of the versions of the journeys the user may see: whose sends they read, their app
    granted or not (``delivery.selectors.dispatch_source_readers_register``)."""
    return JourneyVersion.objects.filter(journey__in=journeys_visible_to(user).values("pk")).values("pk")


def journey_versions_granted_to(user: User) -> QuerySet:
    """The ids of the versions of the journeys granted to the user on themselves, not through an app:
    whose sends' rows they read wherever they were sent (``delivery.selectors.dispatches_with_rows_visible_to``)."""
    return JourneyVersion.objects.filter(journey__in=granted_to(user, Journey.objects.all()).values("pk")).values("pk")


def enrollments_visible_to(user: User) -> QuerySet[Enrollment]:
    """Enrollments of the journeys the user may see (needs the role's view_enrollment)."""
    if not user.has_perm("journeys.view_enrollment"):
        return Enrollment.objects.none()
    return Enrollment.objects.filter(journey__in=journeys_visible_to(user).values("pk"))


def enrollments_in_scope(user: User) -> QuerySet[Enrollment]:
    """Enrollments of the journeys in the user's scope (``in_scope``): not those of a journey read
    through a review only, which a profile's erasure may not reach."""
    if not user.has_perm("journeys.view_enrollment"):
        return Enrollment.objects.none()
    return Enrollment.objects.filter(journey__in=in_scope(user, Journey.objects.all()).values("pk"))


def journey_shown_version(journey: Journey) -> JourneyVersion | None:
    """The version to show: the live one, else the newest."""
    return journey.live_version or journey.versions.order_by("-number").first()


def journeys_with_a_draft(journeys: QuerySet[Journey]) -> QuerySet[Journey]:
    """Those of ``journeys`` with a draft version to submit (a draft thrown away leaves none)."""
    from django.db.models import Exists, OuterRef

    drafts = JourneyVersion.objects.filter(journey=OuterRef("pk"), status=JourneyVersion.Status.DRAFT)
    return journeys.filter(Exists(drafts))


def journey_open_version(journey: Journey) -> JourneyVersion | None:
    return journey.versions.filter(status__in=("draft", "in_review")).order_by("-number").first()


def version_step_stats(version: JourneyVersion) -> dict[str, dict]:
    """Per step: entered, waiting (now), passed per branch, pushed, exited (at an exit, on the exit
    event, when the journey stopped, or as the profile was deleted: ``exit_event``, ``stopped``,
    ``deleted``); ``held``: of those inside (waiting or due), the ones a pause holds; on the entry
    step, the entries a pause held back (``skipped_paused``: entry events; ``reads_skipped_paused``:
    segment reads), and a replay's entry events stored before the journey took them, or a call's
    read just before a version entering otherwise replaced this one (``skipped_not_live``)."""
    from journeys.services.lifecycle import READS_SKIPPED_PAUSED, SKIPPED_NOT_LIVE, SKIPPED_PAUSED

    stats: dict[str, dict] = defaultdict(dict)
    for step, metric, count in StepStat.objects.filter(version=version).values_list("step", "metric", "count"):
        stats[step][metric] = stats[step].get(metric, 0) + count  # the sum of the counter's shards
    waiting = (
        Enrollment.objects.filter(version=version, status__in=Enrollment.OPEN_STATUSES)
        .values("step", "status")
        .annotate(n=Count("id"), held=Count("id", filter=Q(held_due_at__isnull=False)))
        .order_by()
    )
    for row in waiting:
        key = "waiting" if row["status"] == Enrollment.Status.WAITING else "due"
        stats[row["step"]][key] = stats[row["step"]].get(key, 0) + row["n"]
        stats[row["step"]]["held"] = stats[row["step"]].get("held", 0) + row["held"]
    sends = version_push_outcomes(version)
    unsent = version_push_unsent(version)
    converted = version_step_conversions(version)
    result = {}
    for step in version.steps():
        counts = stats.get(step["id"], {})
        outcomes = sends.get(step["id"], {})
        result[step["id"]] = {
            "type": step["type"],
            "entered": counts.get("entered", 0),
            "waiting": counts.get("waiting", 0),
            "due": counts.get("due", 0),
            "held": counts.get("held", 0),
            "pushed": counts.get("pushed", 0),
            "failed": counts.get("failed", 0),
            "exited": counts.get("exited", 0)
            + counts.get("exit_event", 0)
            + counts.get("stopped", 0)
            + counts.get("deleted", 0),
            "exit_event": counts.get("exit_event", 0),
            "stopped": counts.get("stopped", 0),
            "deleted": counts.get("deleted", 0),
            "passed": {label: _passed(step["type"], label, counts) for label, _ in exits_of(step)},
            "targeted": outcomes.get("targeted", 0),
            "sent": outcomes.get("sent", 0),
            "accepted": outcomes.get("accepted", 0),
            "send_failed": outcomes.get("failed", 0),
            "send_unknown": outcomes.get("unknown", 0),
            "skipped": outcomes.get("skipped", {}),
            "unsent": unsent.get(step["id"], {}),
            "skipped_paused": counts.get(SKIPPED_PAUSED, 0),
            "reads_skipped_paused": counts.get(READS_SKIPPED_PAUSED, 0),
            "skipped_not_live": counts.get(SKIPPED_NOT_LIVE, 0),
        }
        if converted is not None and step["type"] == "push":
            result[step["id"]]["conversions"] = converted.get(step["id"]) or rate_figures(0, 0)
    return result


def version_dispatches(version: JourneyVersion):
    """The dispatches the version's push steps sent (one per step and batch of entries)."""
    from delivery.models import Dispatch

    return Dispatch.objects.filter(kind=Dispatch.Kind.JOURNEY, source_id=version.pk)


def version_others_sent(version: JourneyVersion) -> list[tuple[int, int, int]]:
    """What the journey's other versions sent, as (version number, targeted, accepted) by number,
    from their dispatches' rollup as a report counts them; versions that sent nothing are left out.
    At most three queries."""
    from delivery.models import DeliveryRollup, Dispatch
    from delivery.reports import rollup_of

    numbers = dict(
        JourneyVersion.objects.filter(journey_id=version.journey_id).exclude(pk=version.pk).values_list("pk", "number")
    )
    if not numbers:
        return []
    sent: dict[int, dict[str, int]] = defaultdict(lambda: {"targeted": 0, "accepted": 0})
    others = Dispatch.objects.filter(kind=Dispatch.Kind.JOURNEY, source_id__in=list(numbers))
    rows = (
        DeliveryRollup.objects.filter(rollup_of(others), outcome__in=("targeted", "accepted"))
        .values("dispatch__source_id", "outcome")
        .annotate(n=Sum("rows"))
        .order_by()
    )
    for row in rows:
        sent[numbers[row["dispatch__source_id"]]][row["outcome"]] += row["n"]
    return [(number, n["targeted"], n["accepted"]) for number, n in sorted(sent.items()) if n["targeted"]]


JOURNEY_STEP = "journey_step"  # a journey's per-profile figures are grouped by the step that sent


def journey_step():
    """The push step a journey dispatch's row was sent by (its dispatch's context), as a Delivery expression."""
    from django.db.models.fields.json import KeyTextTransform, KeyTransform

    return KeyTextTransform("step", KeyTransform("journey", "dispatch__context"))


def journey_step_of_dispatch():
    """The push step a journey dispatch sent (its context), as a Dispatch expression."""
    from django.db.models.fields.json import KeyTextTransform, KeyTransform

    return KeyTextTransform("step", KeyTransform("journey", "context"))


def version_step_conversions(version: JourneyVersion) -> dict[str, dict] | None:
    """Per push step of the version, its conversions against the journey's goal (profiles reached,
    converted, rate and its 95% interval). One grouped query; None when the journey names no goal."""
    from delivery.conversions import Goal, conversions_by
    from delivery.kept import Scope

    goal = Goal.of(version.journey)
    if goal is None:
        return None
    counts = conversions_by(
        dispatch_ids=version_dispatches(version),  # read by the database: a batch per run of the engine
        goal=goal,
        group=journey_step(),
        group_key=JOURNEY_STEP,
        scope=Scope.journey_version(version.pk),
    )
    return {step: rate_figures(row["converted"], row["reached"]) for step, row in counts.items()}


def version_push_outcomes(version: JourneyVersion) -> dict[str, dict]:
    """Per push step, what its sends became, summed from the dispatches' rollup as a campaign's
    report is: targeted (rows made), sent (handed to a provider: accepted, unknown, or failed once
    it went, ``delivery.reasons.handed_over``), accepted, failed, unknown, and skipped by reason (no
    device, not opted in, frequency cap...). One grouped query: the rollup joined to the version's dispatches (a batch per run of the engine,
    thousands of them), summed by the step each dispatch sent."""
    from delivery.models import DeliveryRollup
    from delivery.reasons import handed_over
    from delivery.reports import rollup_of

    rows = (
        DeliveryRollup.objects.filter(rollup_of(version_dispatches(version)))
        .annotate(step=journey_step())  # the dispatch's, as for its deliveries
        .values("step", "outcome", "reason")
        .annotate(n=Sum("rows"))
        .order_by()
    )
    result: dict[str, dict] = defaultdict(
        lambda: {"targeted": 0, "sent": 0, "accepted": 0, "failed": 0, "unknown": 0, "skipped": {}}
    )
    for row in rows:
        counts, outcome, n = result[row["step"]], row["outcome"], row["n"]
        if outcome in ("targeted", "accepted", "failed", "unknown"):
            counts[outcome] += n
        if outcome in ("accepted", "unknown") or (outcome == "failed" and handed_over(row["reason"] or "")):
            counts["sent"] += n
        elif outcome == "skipped":
            reason = row["reason"] or "unknown"
            counts["skipped"][reason] = counts["skipped"].get(reason, 0) + n
    return dict(result)


class _ListLength(Func):
    """The length of a JSON list (a dispatch's ``profile_ids``)."""

    function = "jsonb_array_length"
    output_field = IntegerField()

    def as_sqlite(self, compiler, connection, **extra):
        return super().as_sql(compiler, connection, function="json_array_length", **extra)


# Why a push step's batch sent nothing: the journey's stop stopped it, or someone did from its page.
UNSENT_JOURNEY_STOPPED = "journey_stopped"
UNSENT_BATCH_STOPPED = "batch_stopped"


def version_push_unsent(version: JourneyVersion) -> dict[str, dict[str, int]]:
    """Per push step, the profiles its batches took and never sent to, as the batch was stopped
    before it made any row (they are in no rollup, so ``version_push_outcomes`` cannot count them),
    by why: the journey's stop (a batch it stopped as it stopped) or a stop of the batch itself.
    One grouped query over the version's stopped batches."""
    from delivery.models import Dispatch

    journey = version.journey
    stopped = version_dispatches(version).filter(
        status=Dispatch.Status.STOPPED, total=0, standing=False, profile_ids__isnull=False
    )
    figures = {"profiles": Sum(_ListLength("profile_ids"))}
    stopped_at = journey_stopped_at(journey)
    if stopped_at is not None:
        # ``journey_stop`` stops its running batches after it set the journey's status.
        figures["with_journey"] = Sum(_ListLength("profile_ids"), filter=Q(finished_at__gte=stopped_at))
    rows = stopped.annotate(step=journey_step_of_dispatch()).values("step").annotate(**figures).order_by()
    result: dict[str, dict[str, int]] = {}
    for row in rows:
        with_journey = row.get("with_journey") or 0
        reasons = {UNSENT_JOURNEY_STOPPED: with_journey, UNSENT_BATCH_STOPPED: (row["profiles"] or 0) - with_journey}
        result[row["step"]] = {why: n for why, n in reasons.items() if n}
    return result


def journey_stopped_at(journey: Journey):
    """When the journey was stopped, or None when it was not: its last change of status while it
    is stopped; once archived (or closed), its stop's audit event (the archive moved that change)."""
    from django.contrib.contenttypes.models import ContentType

    from accounts.models import AuditEvent

    if journey.status == Status.STOPPED:
        return journey.status_changed_at
    if journey.status not in (Status.CLOSED, Status.ARCHIVED):
        return None
    stops = AuditEvent.objects.filter(
        object_type=ContentType.objects.get_for_model(Journey), object_id=str(journey.pk), action="journey_stopped"
    )
    return stops.order_by("-created_at").values_list("created_at", flat=True).first()


def _passed(kind: str, label: str, counts: dict) -> int:
    if kind == "wait":
        return counts.get("passed", 0)
    if kind == "push":
        return counts.get("pushed", 0)
    return counts.get(f"passed:{label}", 0)


def version_totals(version: JourneyVersion) -> dict[str, int]:
    """Enrollments of the version by status."""
    counts = dict(Enrollment.objects.filter(version=version).values_list("status").annotate(n=Count("id")).order_by())
    return {status: counts.get(status, 0) for status in Enrollment.Status.values}


# Which transitions each state allows, and the role permission each needs.
TRANSITIONS = {
    "submit": ((Status.DRAFT, Status.LIVE, Status.PAUSED), "journeys.submit_journey", "Submit for review"),
    "cancel_request": ((Status.IN_REVIEW, Status.LIVE, Status.PAUSED), "journeys.submit_journey", "Cancel request"),
    "discard_draft": (
        (Status.LIVE, Status.PAUSED, Status.STOPPED, Status.CLOSED, Status.ARCHIVED),
        "journeys.change_journey",
        "Discard draft",
    ),
    "pause": ((Status.LIVE,), "journeys.pause_journey", "Pause"),
    "resume": ((Status.PAUSED,), "journeys.pause_journey", "Resume"),
    "stop": ((Status.LIVE, Status.PAUSED), "journeys.stop_journey", "Stop"),
    "archive": ((Status.STOPPED, Status.CLOSED), "journeys.archive_journey", "Archive"),
}


def journey_actions(
    user: User,
    journey: Journey,
    *,
    answers: dict | None = None,
    approval_of: Callable[[Journey], ApprovalRequest | None] = approval_current,
) -> list[tuple[str, str]]:
    """The (action, label) buttons this user may use on this journey in its current state;
    Cancel request only to whom ``journey_cancel_request`` lets withdraw it: its requester or an
    Administrator (``may_cancel_approval_request``). ``answers`` keeps a page's permission checks
    (``accounts.selectors.can``); ``approval_of`` reads the journey's current request
    (``approval_current``), a page's own reading where it has one (the admin's ``approval_of``)."""
    open_version = journey_open_version(journey)
    actions = []
    for name, (states, perm, label) in TRANSITIONS.items():
        if journey.status not in states or not can(user, perm, journey, answers=answers):
            continue
        if name == "submit" and (open_version is None or open_version.status != "draft"):
            continue
        if name == "cancel_request":
            if open_version is None or open_version.status != "in_review":
                continue
            request = approval_of(journey)
            if request is None or not may_cancel_approval_request(user, request):
                continue
        if name == "discard_draft" and (
            open_version is None or open_version.status != "draft" or journey.live_version_id is None
        ):
            continue
        actions.append((name, label))
    return actions


def _versions_that_may_run() -> QuerySet[JourneyVersion]:
    """A draft or a version in review (approving it runs it), the live one, and a retired one with
    profiles still inside."""
    open_versions = Enrollment.objects.filter(status__in=Enrollment.OPEN_STATUSES).values("version_id")
    versions = JourneyVersion.objects.exclude(status=JourneyVersion.Status.RETIRED) | JourneyVersion.objects.filter(
        status=JourneyVersion.Status.RETIRED, pk__in=open_versions
    )
    return versions.select_related("journey").order_by("journey__name", "number")


HIDDEN_JOURNEY = "a journey you cannot see"


def _hidden_said(journeys: set[int]) -> list[str]:
    """The journeys of ``journeys`` (ids) a reader may not see, counted without a name: "a journey
    you cannot see", "3 journeys you cannot see"; nothing when there are none."""
    if not journeys:
        return []
    return [HIDDEN_JOURNEY if len(journeys) == 1 else f"{len(journeys)} journeys you cannot see"]


def _version_labels(versions: list[JourneyVersion], by: User | None) -> dict[int, str | None]:
    """Each version said as "journey “X”, version N (live)", by version id; None for one of a
    journey ``by`` may not see (None: the system sees all)."""
    journeys = {version.journey_id for version in versions}
    if by is not None:
        journeys = set(visible_to(by, Journey.objects.filter(pk__in=journeys)).values_list("pk", flat=True))
    labels = {}
    for version in versions:
        status = version.get_status_display().split(" (")[0].lower()
        labels[version.pk] = (
            f"journey “{version.journey}”, version {version.number} ({status})"
            if version.journey_id in journeys
            else None
        )
    return labels


def journeys_sending_contents(content_ids: set[int], by: User | None) -> list[str]:
    """The journey versions whose steps may still send any of ``content_ids`` (those that may still
    run: ``_versions_that_may_run``), each said with its steps, those ``by`` may not see counted ("2
    journeys you cannot see"). (Registered with ``delivery.services.contents``: content they name is
    not deleted.)"""
    from journeys.graph import contents_of

    found = []
    for version in _versions_that_may_run():
        steps = sorted(step for step, content in contents_of(version.graph).items() if content in content_ids)
        if steps:
            found.append((version, ", ".join(f"'{step}'" for step in steps)))
    labels = _version_labels([version for version, _ in found], by)
    said = [f"{labels[version.pk]}: step {named}" for version, named in found if labels[version.pk]]
    return said + _hidden_said({version.journey_id for version, _ in found if not labels[version.pk]})


def journeys_conditions_naming(segment_ids: set[int], by: User | None) -> list[str]:
    """The journey versions that may still run (``_versions_that_may_run``) whose conditions test any
    of ``segment_ids`` (a branch on the segment, or a rule naming it), each said with its steps,
    those ``by`` may not see counted ("2 journeys you cannot see"). (Registered with
    ``audiences.services.segments``: a segment they name is not deleted; a branch on a deleted
    segment would hold for no one, and its profiles would silently take the other way.)"""
    found = _conditions_naming(segment_ids, _versions_that_may_run())
    labels = _version_labels([version for version, _ in found], by)
    said = [f"{labels[version.pk]}: step {named}" for version, named in found if labels[version.pk]]
    return said + _hidden_said({version.journey_id for version, _ in found if not labels[version.pk]})


def _conditions_naming(segment_ids: set[int], versions) -> list[tuple[JourneyVersion, str]]:
    """Those of ``versions`` whose conditions test any of ``segment_ids``, each with its steps said."""
    from journeys.graph import branch_segments, condition_branches

    found = []
    for version in versions:
        steps = {
            step_id for step_id, branch in condition_branches(version.graph) if branch_segments(branch) & segment_ids
        }
        if steps:
            found.append((version, ", ".join(f"'{step}'" for step in sorted(map(str, steps)))))
    return found


def journeys_rule_trees_naming(segment_ids: set[int], by: User | None) -> list[tuple[str, dict]]:
    """The rule trees of the conditions of the journey versions that may still run naming any of
    ``segment_ids``, each said with its journey, version and step, or as "a journey you cannot see"
    to ``by`` (None: the system). (Registered with ``audiences.rules.validation``: a segment change
    making one too deep is refused.)"""
    from audiences.rules.schema import segment_references
    from journeys.graph import condition_branches

    found = []
    for version in _versions_that_may_run():
        for step_id, branch in condition_branches(version.graph):
            if segment_references(branch.get("rules")) & segment_ids:
                found.append((version, step_id, branch["rules"]))
    labels = _version_labels([version for version, _, _ in found], by)
    return [
        (f"{labels[version.pk]}: step '{step_id}'" if labels[version.pk] else HIDDEN_JOURNEY, tree)
        for version, step_id, tree in found
    ]


def journeys_reading_segments(segment_ids: set[int], by: User | None) -> list[str]:
    """The journey versions that may still run (``_versions_that_may_run``) entering from any of
    ``segment_ids`` or testing one in a condition, each said with its version and status (and the
    steps), those ``by`` may not see counted, each journey once. (Registered with
    ``audiences.services.segments``: the segment's page names them.)"""
    versions = list(_versions_that_may_run())  # read once for the entries and the conditions
    entering = [v for v in versions if v.entry_segment_id in segment_ids]
    testing = _conditions_naming(segment_ids, versions)
    labels = _version_labels(entering + [v for v, _ in testing], by)
    said = [f"the entry of {labels[v.pk]}" for v in entering if labels[v.pk]]
    said += [f"a condition of {labels[v.pk]}: step {named}" for v, named in testing if labels[v.pk]]
    hidden = {v.journey_id for v in entering if not labels[v.pk]} | {
        v.journey_id for v, _ in testing if not labels[v.pk]
    }
    return said + _hidden_said(hidden)
