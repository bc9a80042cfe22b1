"""The journey engine: runs due enrollments to their next wait.

``journeys_run_due`` takes due enrollments with ``SELECT … FOR UPDATE SKIP LOCKED``
in batches, so any number of workers share the work and an enrollment is only ever run by the
worker holding its row lock. It runs each enrollment to its next wait, evaluating each step for
the whole batch at once (one query per condition branch, one Dispatch per push step), and
writes the batch back in one statement; pushes are created in the same transaction as the
enrollments that move past them, so a push is sent once per enrollment, whoever crashes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from audiences.rules.schema import RulesInvalid
from config.db import int_array, write_pacer
from delivery.rules import app_rules, profile_zone
from journeys.graph import DAY_SECONDS, branch_label, entry_of, whole_days
from journeys.models import Enrollment, Journey, JourneyVersion
from journeys.services.lifecycle import EStatus, Status, segments_changed_text
from journeys.services.step_stats import step_stats_add, step_stats_statement

log = logging.getLogger(__name__)


@dataclass
class RunReport:
    batches: int = 0
    enrollments: int = 0
    transitions: int = 0
    pushed: int = 0
    dispatches: list[int] = field(default_factory=list)
    # Stopped by its time budget, its last batch full: more may be due (for whoever runs next).
    out_of_time: bool = False

    def as_dict(self) -> dict:
        return {
            "batches": self.batches,
            "enrollments": self.enrollments,
            "transitions": self.transitions,
            "pushed": self.pushed,
            "out_of_time": self.out_of_time,
        }


def journeys_run_due(
    *, batch: int = 1000, now: dt.datetime | None = None, seconds: float | None = None, max_batches: int | None = None
) -> RunReport:
    """Run due enrollments, a batch at a time, each to its next wait (or its end).

    Each batch is one transaction holding its enrollments' row locks (SKIP LOCKED: workers never
    wait on, or run, each other's rows). Stops when nothing is due, after ``seconds`` (then says
    so: ``out_of_time``), or after ``max_batches``. ``now`` fixes the clock (tests); by default
    each batch reads the time.
    """
    report = RunReport()
    started = time.monotonic()
    pace = write_pacer()
    while True:
        pace()
        moment = now or timezone.now()
        taken = _run_batch(batch=batch, now=moment, report=report)
        if taken:
            report.batches += 1
        if taken < batch:
            break
        if seconds is not None and time.monotonic() - started >= seconds:
            report.out_of_time = True
            break
        if max_batches is not None and report.batches >= max_batches:
            break
    return report


_ROW_FIELDS = (
    "id",
    "journey_id",
    "version_id",
    "profile_id",
    "step",
    "status",
    "due_at",
    "entered_at",
    "finished_at",
    "exit_reason",
    "history",
)


# What the engine reads of a due enrollment: an open one has no end yet, and its due time and
# history are only written (the history by appending, on PostgreSQL; SQLite reads it to rewrite it).
_READ_FIELDS = ("id", "journey_id", "version_id", "profile_id", "step", "status", "entered_at")


class _Row:
    """The columns of an enrollment the engine reads and writes (cheaper than model instances)."""

    __slots__ = _ROW_FIELDS

    def __init__(self, values: tuple, fields: tuple[str, ...] = _READ_FIELDS):
        self.due_at = self.finished_at = None
        self.exit_reason = ""
        self.history = []
        for name, value in zip(fields, values, strict=True):
            setattr(self, name, value)

    @property
    def pk(self) -> int:
        return self.id


@dataclass
class _Run:
    """One enrollment being run in this batch."""

    row: _Row
    history: list  # the steps of this run (added to what the enrollment has)
    running: bool = True
    changed: bool = False
    # Where its row says it is in the database (step, status): where it was claimed or entered,
    # until the run moves it to a push step to send it the push (``_move_to_push``).
    stored: tuple[str, str] = ("", "")


def journeys_run_entered(
    *,
    enrolled: list[tuple[int, int, str]],
    version: JourneyVersion,
    stamp: str | None,
    now: dt.datetime,
    exits: dict[int, str] | None = None,
    entered_at: dt.datetime | None = None,
    held: bool = False,
) -> RunReport:
    """Run enrollments the caller just wrote in its transaction (an event's entries, ``(id, profile
    id, its time zone)``, in ``version``, read with its journey) to their next wait, now.
    ``entered_at``: their entry's date as written, when not ``now`` (a replay's, dated when its
    events were stored): a condition on an event "since entering" reads from then, as it does
    once the enrollment is read back.

    Their first steps, pushes included, commit with the entry, and no other worker ever sees them
    at the entry step: they are not read again, nor their profiles' zones, nor (``stamp``, the
    journeys stamp the caller read) the stamp. ``exits``: the profiles whose exit event came at or
    after their entry (profile id → exit reason); they end at the entry step before it runs,
    counted there as entered and exited (``exit_event``), written with the others. ``held``: they
    entered a paused journey, held as the pause holds whoever is inside (``_enter``'s ``hold``):
    only ``exits`` end (held no more); the others stay held, unrun, for the resume.
    """
    report = RunReport()
    if held:
        enrolled = [entry for entry in enrolled if exits and entry[1] in exits]
    if not enrolled:
        return report
    entry = entry_of(version.steps())
    rows = [
        _Row((pk, version.journey_id, version.pk, profile_id, entry, EStatus.ACTIVE, entered_at or now))
        for pk, profile_id, _ in enrolled
    ]
    known = _Known(zones={profile_id: zone or "" for _, profile_id, zone in enrolled}, stamp=stamp)
    ended = {row.pk: exits[row.profile_id] for row in rows if exits and row.profile_id in exits}
    _run_batch(
        batch=len(rows), now=now, report=report, rows=rows, versions={version.pk: version}, known=known, exits=ended
    )
    report.batches += 1
    return report


@dataclass
class _Known:
    """What the caller of a run knows already: the profiles' time zones, the journeys stamp."""

    zones: dict[int, str]
    stamp: str | None


def _run_batch(
    *,
    batch: int,
    now: dt.datetime,
    report: RunReport,
    rows: list[_Row] | None = None,
    versions: dict | None = None,
    known: _Known | None = None,
    exits: dict[int, str] | None = None,
) -> int:
    """``exits``: enrollments (id → exit reason) that end where they are before running, as an exit
    event ends them (``journeys_run_entered``)."""
    # No savepoint inside a caller's transaction (an event's entry): a failure here fails the entry.
    with transaction.atomic(savepoint=False):
        if rows is None:
            rows = _claim(batch=batch, now=now)
        if not rows:
            return 0
        versions = dict(versions or {})
        missing = {r.version_id for r in rows} - set(versions)
        if missing:
            versions.update(
                (v.pk, v)
                for v in JourneyVersion.objects.select_related("journey__app__delivery_rules").filter(pk__in=missing)
            )
        stats: Counter = Counter()
        runs_by_version: dict[int, list[_Run]] = defaultdict(list)
        for row in rows:
            run = _Run(row=row, history=[], stored=(row.step, row.status))
            if exits and row.pk in exits:
                _finish(run, EStatus.EXITED, now, reason=exits[row.pk])
                stats[(row.version_id, row.step, "entered")] += 1
                stats[(row.version_id, row.step, "exit_event")] += 1
            runs_by_version[row.version_id].append(run)
        for version_id, runs in runs_by_version.items():
            _run_version(versions[version_id], runs, now=now, stats=stats, report=report, known=known)
        _write_back([run for runs in runs_by_version.values() for run in runs], now=now, stats=stats)
        report.enrollments += len(rows)
    return len(rows)


def _claim(*, batch: int, now: dt.datetime) -> list[_Row]:
    """Lock the ``batch`` enrollments due first, skipping those another batch holds.

    On PostgreSQL the claim reads the due-time index in order, whatever the statistics say. Two
    partial indexes cover the open enrollments (``enrollment_due_idx`` and the unique
    ``enrollment_one_open``). Statistics taken while no enrollment was open (a table of finished
    runs: autovacuum's last ANALYZE, or none yet) count on one open row. With that estimate the
    planner may read every open enrollment through the unique index and sort them, for each batch.
    A million enrollments entered since then make every batch read and sort a million rows. Sorting
    is turned off for this statement alone, which leaves one plan that needs no sort: the due-time
    index, read in order up to the batch.
    """
    due = Enrollment.objects.select_for_update(skip_locked=True, of=("self",)).filter(
        status__in=Enrollment.OPEN_STATUSES, due_at__lte=now
    )
    if connection.vendor != "postgresql":
        fields = (*_READ_FIELDS, "history")
        return [_Row(values, fields) for values in due.order_by("due_at").values_list(*fields)[:batch]]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        rows = [_Row(values) for values in due.order_by("due_at").values_list(*_READ_FIELDS)[:batch]]
        cursor.execute("RESET enable_sort")
    return rows


def _split_bucket(journey_id: int, step_id: str, profile_id: int) -> int:
    """0–99, the same for a profile at a split of a journey every time (A/B groups are stable)."""
    digest = hashlib.sha256(f"{journey_id}:{step_id}:{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def journey_default_zone(journey: Journey) -> str:
    """The time zone a journey's waits read for a profile without one (or with one unknown): its
    app's default (``DeliveryRules.default_timezone``), as the app's quiet hours read it; "UTC"
    when the app has no rules. No query when the rules were read with the journey (a batch's
    versions are); one else (``app_rules``)."""
    rules = app_rules(journey)
    return rules.default_timezone if rules else "UTC"


def _days_later(days: int, tz_name: str, now: dt.datetime, *, default: str = "") -> dt.datetime:
    """``days`` calendar days after ``now`` in the profile's zone (``tz_name``, else the app's
    ``default``, else UTC): the same time of day, so across a clock change a day lasts 23 or 25
    hours (a push sent at 10:00 and followed "2 days later" goes at 10:00 again). Waits of whole
    days end so; other waits are exact."""
    # An aware datetime plus days moves its wall time; its offset is then the zone's on that day.
    return (now.astimezone(profile_zone(tz_name, default)) + dt.timedelta(days=days)).astimezone(dt.UTC)


def _next_time_of_day(until: str, tz_name: str, now: dt.datetime, *, default: str = "") -> dt.datetime:
    """The next ``HH:MM`` (now included) in the profile's zone ``tz_name``, else the app's
    ``default`` (``journey_default_zone``), else UTC: blank or unknown names are passed over, as quiet hours
    pass them over (``delivery.rules``)."""
    tz = profile_zone(tz_name, default)
    hour, minute = (int(part) for part in until.split(":"))
    local = now.astimezone(tz)
    target = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if target < local:
        target = (local + dt.timedelta(days=1)).replace(hour=hour, minute=minute, second=0, microsecond=0)
    # Round-trip through UTC so a wall time skipped by a DST change still lands after now.
    return target.astimezone(dt.UTC)


def _run_version(
    version: JourneyVersion,
    runs: list[_Run],
    *,
    now: dt.datetime,
    stats: Counter,
    report: RunReport,
    known: _Known | None = None,
) -> None:
    journey = version.journey
    stamp = now.isoformat(timespec="seconds")
    if journey.status == Status.PAUSED:
        # A pause holds its enrollments once it has the rows (``journey_pause``), so a batch does
        # not see one due; should it, it holds it as the pause does: nothing runs, no one leaves.
        # Those still running: held entries ended at once (``journeys_run_entered``'s ``held``) ask no query.
        Enrollment.objects.filter(pk__in=[run.row.pk for run in runs if run.running], due_at__isnull=False).update(
            held_due_at=F("due_at"), due_at=None
        )
        for run in runs:
            run.running = False
        return
    if journey.status != Status.LIVE:
        # Off the air with profiles still due (a stop ends everyone inside, so a batch should not
        # see one): ended where they are and counted there as a stop counts them (``stopped``); one
        # not run yet (``active``) is counted entered there too, as the engine counts arrivals.
        for run in runs:
            if run.running:
                if run.row.status != EStatus.WAITING:
                    stats[(version.pk, run.row.step, "entered")] += 1
                stats[(version.pk, run.row.step, "stopped")] += 1
                _finish(run, EStatus.EXITED, now, reason=f"journey {journey.get_status_display().lower()}")
        return
    steps = version.step_map()
    refusals: dict[str, str] = {}  # by condition step: why it may not read its segments ("" when it may)
    read_zone: list[str] = []  # the app's default zone, once a wait needs it (``journey_default_zone``)

    def app_zone() -> str:
        if not read_zone:
            read_zone.append(journey_default_zone(journey))
        return read_zone[0]

    def move(run: _Run, step_id: str, outcome: str, to: str | None) -> None:
        run.history.append([step_id, stamp, outcome])
        run.changed = True
        report.transitions += 1
        if to is not None:
            run.row.step = to
            run.row.status = EStatus.ACTIVE

    for _ in range(len(steps) + 2):
        active = [run for run in runs if run.running]
        if not active:
            break
        at_step: dict[str, list[_Run]] = defaultdict(list)
        for run in active:
            at_step[run.row.step].append(run)
        for step_id, group in at_step.items():
            step = steps.get(step_id)
            resuming = [r for r in group if r.row.status == EStatus.WAITING]
            arriving = [r for r in group if r.row.status != EStatus.WAITING]
            if arriving:
                stats[(version.pk, step_id, "entered")] += len(arriving)
            if step is None:  # counted there all the same, so that each profile that ends is counted
                for run in group:
                    run.history.append([step_id, stamp, "failed"])
                    report.transitions += 1
                    _finish(run, EStatus.FAILED, now, reason=f"step '{step_id}' is not in version {version.number}")
                stats[(version.pk, step_id, "failed")] += len(group)
                continue
            kind = step["type"]
            if kind == "wait":
                for run in resuming:
                    move(run, step_id, "waited", step["next"])
                    stats[(version.pk, step_id, "passed")] += 1
                if not arriving:
                    continue
                if "until" in step:
                    zones = known.zones if known else _profile_zones([r.row.profile_id for r in arriving])
                    default = app_zone()
                    due = {
                        r.row.pk: _next_time_of_day(
                            step["until"], zones.get(r.row.profile_id, ""), now, default=default
                        )
                        for r in arriving
                    }
                elif whole_days(step["seconds"]):  # ends at a time of day in each profile's zone
                    zones = known.zones if known else _profile_zones([r.row.profile_id for r in arriving])
                    days, default = step["seconds"] // DAY_SECONDS, app_zone()
                    due = {
                        r.row.pk: _days_later(days, zones.get(r.row.profile_id, ""), now, default=default)
                        for r in arriving
                    }
                else:
                    due = {r.row.pk: now + dt.timedelta(seconds=step["seconds"]) for r in arriving}
                for run in arriving:
                    when = due[run.row.pk]
                    if when <= now:
                        move(run, step_id, "passed", step["next"])
                        stats[(version.pk, step_id, "passed")] += 1
                    else:
                        run.history.append([step_id, stamp, "waiting"])
                        report.transitions += 1
                        run.row.status = EStatus.WAITING
                        run.row.due_at = when
                        run.running = False
                        run.changed = True
            elif kind == "condition":
                refused = _condition_refused(version, step, refusals)
                if refused:
                    for run in group:
                        run.history.append([step_id, stamp, "failed"])
                        report.transitions += 1
                        _finish(run, EStatus.FAILED, now, reason=refused[:200])
                    stats[(version.pk, step_id, "failed")] += len(group)
                    continue
                remaining = {r.row.profile_id: r for r in group}
                try:
                    taken = _branches_taken(step, remaining)
                except RulesInvalid as exc:  # a segment's saved rules that no longer hold: read no one
                    log.warning("Journey %s condition %r read no one: %s", journey.pk, step_id, exc)
                    for run in group:
                        run.history.append([step_id, stamp, "failed"])
                        report.transitions += 1
                        _finish(run, EStatus.FAILED, now, reason=f"{exc.held_no_longer()}."[:200])
                    stats[(version.pk, step_id, "failed")] += len(group)
                    continue
                for label, target, runs_taken in taken:
                    for run in runs_taken:
                        move(run, step_id, f"branch:{label}", target)
                        stats[(version.pk, step_id, f"passed:{label}")] += 1
                for run in remaining.values():
                    move(run, step_id, "branch:else", step["else"])
                    stats[(version.pk, step_id, "passed:else")] += 1
            elif kind == "split":
                for run in group:
                    bucket = _split_bucket(journey.pk, step_id, run.row.profile_id)
                    branches = step["branches"]
                    chosen, edge = len(branches) - 1, 0
                    for index, branch in enumerate(branches):
                        edge += branch["percent"]
                        if bucket < edge:
                            chosen = index
                            break
                    label = branch_label(branches[chosen], chosen)
                    chosen = branches[chosen]
                    move(run, step_id, f"branch:{label}", chosen["next"])
                    stats[(version.pk, step_id, f"passed:{label}")] += 1
            elif kind == "push":
                _move_to_push(step_id, group)
                dispatch_id, error = _push(version, step_id, [r.row.profile_id for r in group], known)
                for run in group:
                    if error:
                        run.history.append([step_id, stamp, "failed"])
                        report.transitions += 1
                        _finish(run, EStatus.FAILED, now, reason=error[:200])
                    else:
                        move(run, step_id, f"pushed:{dispatch_id}", step["next"])
                if error:
                    stats[(version.pk, step_id, "failed")] += len(group)
                else:
                    stats[(version.pk, step_id, "pushed")] += len(group)
                    report.pushed += len(group)
                    report.dispatches.append(dispatch_id)
            elif kind == "exit":
                for run in group:
                    move(run, step_id, "exit", None)
                    _finish(run, EStatus.COMPLETED, now, reason="")
                stats[(version.pk, step_id, "exited")] += len(group)
    for run in runs:
        if run.running:  # a graph longer than it should be: never leave a row due forever
            # It came to this step in the last round, not counted there yet.
            run.history.append([run.row.step, stamp, "failed"])
            report.transitions += 1
            _finish(run, EStatus.FAILED, now, reason="ran more steps than the journey has")
            stats[(version.pk, run.row.step, "entered")] += 1
            stats[(version.pk, run.row.step, "failed")] += 1


def _move_to_push(step_id: str, group: list[_Run]) -> None:
    """Write the enrollments about to be pushed at ``step_id`` there (active), in the batch's
    transaction, before their push is made: the gate sends a step's content only to profiles whose
    enrollment is at that step (``_batch_gate``), not to those still before it, which may wait or
    take another branch. One statement, for those not there already (an entry at a push step is);
    the write-back moves them on past it."""
    moving = [run for run in group if run.stored != (step_id, EStatus.ACTIVE)]
    if not moving:
        return
    Enrollment.objects.filter(_among([run.row.pk for run in moving])).update(step=step_id, status=EStatus.ACTIVE)
    for run in moving:
        run.stored = (step_id, EStatus.ACTIVE)


def _finish(run: _Run, status: str, now: dt.datetime, *, reason: str) -> None:
    run.row.status = status
    run.row.due_at = None
    run.row.finished_at = now
    run.row.exit_reason = reason
    run.running = False
    run.changed = True


def _profile_zones(profile_ids: list[int]) -> dict[int, str]:
    from audiences.models import Profile

    return dict(Profile.objects.filter(_among(profile_ids)).values_list("pk", "timezone"))


# By (version, condition step): the segments' change marks when their definitions were last
# compared with the approved ones, and what that said. A kept list's definition counts its members
# (tens of milliseconds at 500,000), too much for every batch; a change of a segment's rules or
# members marks it (``updated_at``: an edit, a member added or removed in the admin, each import
# batch), so the comparison runs again only once one of them is marked. Per process. The deletion
# of a member's profile marks nothing, and leaves the definition as it was too (a kept list counts
# its erased members back, ``Segment.members_stamp``): a verdict kept and one read afresh agree.
# Not ``definition_version``: an import's batch leaves it until the import ends, its members landed.
_FROZEN_CHECKED: dict[tuple[int, str], tuple[tuple, str]] = {}
_FROZEN_CHECKED_MAX = 10_000


def _segments_marks(ids: set[int]) -> tuple:
    """The change marks (id, ``updated_at``) of these segments and of those their rules use, at any
    depth: a query per level of nesting."""
    from audiences.models import segments_closure

    return tuple(sorted((pk, values[0]) for pk, values in segments_closure(ids, "updated_at").items()))


def _condition_refused(version: JourneyVersion, step: dict, refusals: dict[str, str]) -> str:
    """Why the condition step may not branch now: a segment its branches read was edited since the
    version was approved (``segments_changed_text``), "" when none was. Read once per step and batch:
    its segments' change marks, and their definitions again only when a mark moved. The segments
    checked stay held until the batch commits (``segments_hold``): an edit committed between the
    check and the branches' read would branch people as no approver read."""
    from audiences.models import segments_hold, segments_used

    if step["id"] not in refusals:
        ids: set[int] = set()
        for branch in step.get("branches") or []:
            if isinstance(branch.get("segment"), int):
                ids.add(branch["segment"])
            elif "rules" in branch:
                ids |= segments_used(branch["rules"])
        if not ids or not version.approved_segments:
            refusals[step["id"]] = ""
        else:
            segments_hold(ids)
            key, marks = (version.pk, step["id"]), _segments_marks(ids)
            checked = _FROZEN_CHECKED.get(key)
            if checked is None or checked[0] != marks:
                if len(_FROZEN_CHECKED) >= _FROZEN_CHECKED_MAX:
                    _FROZEN_CHECKED.clear()
                # By number: the reason is kept on the enrollments, read by whoever sees the journey.
                checked = _FROZEN_CHECKED[key] = (marks, segments_changed_text(version, ids, by_number=True))
            refusals[step["id"]] = checked[1]
    return refusals[step["id"]]


def _branches_taken(step: dict, remaining: dict[int, _Run]) -> list[tuple[str, str, list[_Run]]]:
    """Each branch of the condition step with the runs it takes (the first that holds wins), read
    before any run moves: (label, next step, runs); those left in ``remaining`` take all others.
    Raises RulesInvalid when a segment a branch is on, or one its rule names, holds rules that no
    longer hold."""
    taken = []
    for index, branch in enumerate(step["branches"]):
        holding = _branch_holds(branch, remaining)
        taken.append((branch_label(branch, index), branch["next"], [remaining.pop(pid) for pid in holding]))
    return taken


def _branch_holds(branch: dict, remaining: dict[int, _Run]) -> set[int]:
    """The profiles among ``remaining`` for which the condition branch holds (one query)."""
    from audiences.models import Event, Profile, Segment
    from audiences.rules.compiler import rules_compile, segment_profiles

    ids = list(remaining)
    if not ids:
        return set()
    if "segment" in branch:
        segment = Segment.objects.filter(pk=branch["segment"]).first()
        if segment is None:
            return set()  # a deleted segment holds for no one: they take "all others"
        return set(segment_profiles(segment).filter(_among(ids)).values_list("pk", flat=True))
    if "rules" in branch:
        try:
            condition = rules_compile(branch["rules"])
        except RulesInvalid as exc:
            if any(error.code != "unknown_segment" for error in exc.errors):
                raise  # a segment it names holds rules that no longer hold: as a branch on that segment
            # A segment it names was deleted since: as a deleted segment's branch.
            log.warning("Journey condition %r holds for no one: %s", branch.get("label"), exc)
            return set()
        return set(Profile.objects.filter(condition).filter(_among(ids)).values_list("pk", flat=True))
    earliest = min(run.row.entered_at for run in remaining.values())
    latest = dict(
        Event.objects.filter(_among(ids, "profile_id"), name=branch["event"], occurred_at__gte=earliest)
        .values("profile_id")
        .annotate(last=Max("occurred_at"))
        .values_list("profile_id", "last")
    )
    return {pid for pid, last in latest.items() if last >= remaining[pid].row.entered_at}


def _push(
    version: JourneyVersion, step_id: str, profile_ids: list[int], known: _Known | None = None
) -> tuple[int | None, str]:
    """One Dispatch for every profile of the batch at this push step, with the approved content.

    Returns (dispatch id, "") or (None, the reason it was refused).
    """
    from delivery.models import Dispatch
    from delivery.services.dispatches import GateClosed, dispatch_create

    frozen = (version.frozen_specs or {}).get(step_id)
    if frozen is None:
        return None, f"step '{step_id}' has no approved content"
    journey = version.journey
    if version.entry_kind == JourneyVersion.EntryKind.EVENT:
        return _push_stream(version, step_id, frozen, profile_ids, known)
    try:
        with transaction.atomic():
            dispatch = dispatch_create(
                app_id=journey.app_id,
                kind=Dispatch.Kind.JOURNEY,
                spec=frozen["spec"],
                content_id=frozen["content_id"],
                profile_ids=sorted(profile_ids),
                source_id=version.pk,
                label=f"{journey.name} v{version.number} · {step_id}",
                context=journey.send_context(version=version, step=step_id),
            )
    except (GateClosed, ValidationError) as exc:
        log.warning("Journey %s step %s refused: %s", journey.pk, step_id, exc)
        return None, f"refused at send time: {exc}"
    return dispatch.pk, ""


# Everything a live journey's event entries read to push: changed when a journey, a version or an
# app's delivery rules are saved or deleted (``journeys_changed``), whoever writes them.
JOURNEYS_STAMP = "journeys"


def journeys_changed(sender, instance, **kwargs) -> None:
    from accounts.stamps import stamps_bump

    stamps_bump(JOURNEYS_STAMP)


@dataclass
class _OpenStep:
    """A push step's stream as the engine last opened it in this process, behind the journeys stamp."""

    stream_id: int
    rules: object
    day: dt.date
    stamp: str | None
    loaded_at: float


_OPEN_STEPS: dict[tuple[int, str], _OpenStep] = {}


def _open_step(version: JourneyVersion, step_id: str, frozen: dict, *, stamp: str | None, now: dt.datetime):
    """Today's stream of this push step after the full gate (``journey_gate``), and the app's
    delivery rules: kept per process until the journeys stamp moves, the UTC day turns, or
    ``PUSHDESK_CACHE_SECONDS`` pass. Raises GateClosed or ValidationError when the gate refuses."""
    from django.conf import settings

    from delivery.models import DeliveryRules, Dispatch
    from delivery.payloads import spec_validate
    from delivery.services.streams import stream_open
    from journeys.services.lifecycle import journey_gate

    day = now.astimezone(dt.UTC).date()
    kept = _OPEN_STEPS.get((version.pk, step_id))
    if (
        kept
        and (kept.stamp, kept.day) == (stamp, day)
        and time.monotonic() - kept.loaded_at < settings.PUSHDESK_CACHE_SECONDS
    ):
        return kept
    journey = version.journey
    context = journey.send_context(version=version, step=step_id)
    journey_gate(app=journey.app, source_id=version.pk, spec=frozen["spec"], by=None, context=context)
    # The send's checks, as a segment entry's dispatch has them (a URL scheme since taken off the
    # settings, say): once per opening, not per batch.
    spec_validate(frozen["spec"])
    stream_id = stream_open(
        kind=Dispatch.Kind.JOURNEY,
        source_id=version.pk,
        version=step_id,
        app_id=journey.app_id,
        spec=frozen["spec"],
        content_id=frozen["content_id"],
        label=f"{journey.name} v{version.number} · {step_id}",
        purpose="marketing",
        context=context,
        now=now,
    )
    rules = DeliveryRules.objects.filter(app_id=journey.app_id).first()
    kept = _OPEN_STEPS[(version.pk, step_id)] = _OpenStep(stream_id, rules, day, stamp, time.monotonic())
    return kept


def _push_stream(
    version: JourneyVersion, step_id: str, frozen: dict, profile_ids: list[int], known: _Known | None = None
) -> tuple[int | None, str]:
    """Event-entered journeys push through a standing dispatch per version, step and day (like API
    triggers): the batch's rows are appended in the engine's transaction, with the journey row
    held shared under the gate's conditions (a stop waits for it), and the senders are woken.

    The gate's full check, the stream's opening and the app's rules are kept per process
    (``_open_step``); the append itself refuses a journey or version no longer live and a stream
    closed since, and then the step is opened afresh once (the gate decides), and a profile not
    enrolled at the step (GateClosed: the batch's were written there, ``_move_to_push``).
    Returns (dispatch id, "") or (None, the reason it was refused).
    """
    from accounts.stamps import stamps_read
    from delivery.models import Dispatch
    from delivery.services.dispatches import GateClosed
    from delivery.services.stream_senders import streams_wake
    from delivery.services.streams import Recipient, StreamClosed, stream_append
    from journeys.services.lifecycle import VStatus

    now = timezone.now()
    stamp = known.stamp if known else stamps_read([JOURNEYS_STAMP])[JOURNEYS_STAMP]
    zones = known.zones if known else _profile_zones(profile_ids)
    recipients = [Recipient(pid, timezone=zones.get(pid) or "") for pid in sorted(profile_ids) if pid in zones]
    source_lock = (
        "SELECT j.id FROM journeys_journey j JOIN journeys_journeyversion v ON v.journey_id = j.id "
        "WHERE v.id = %s AND j.status = %s AND v.status IN (%s, %s) FOR SHARE OF j",
        [version.pk, Status.LIVE, VStatus.LIVE, VStatus.RETIRED],
    )
    for attempt in (1, 2):
        try:
            step = _open_step(version, step_id, frozen, stamp=stamp, now=now)
            # A refused append wrote nothing and raised no database error: the transaction goes on.
            stream_append(
                dispatch_id=step.stream_id,
                kind=Dispatch.Kind.JOURNEY,
                app_id=version.journey.app_id,
                recipients=recipients,
                source_lock=source_lock,
                rules=step.rules,
                now=now,
            )
            break
        except (GateClosed, ValidationError, StreamClosed) as exc:
            _OPEN_STEPS.pop((version.pk, step_id), None)
            if isinstance(exc, StreamClosed) and attempt == 1:
                continue  # closed since it was kept: opened afresh, through the gate
            log.warning("Journey %s step %s refused: %s", version.journey_id, step_id, exc)
            return None, f"refused at send time: {exc}"
    stream_id = step.stream_id
    transaction.on_commit(lambda: streams_wake(stream_id))
    return stream_id, ""


# Whom a push step's stream takes rows for, whoever appends (``stream_recipients_check_register``):
# profiles enrolled in its version (``d.source_id``) at its step (``d.stream_version``), active, as
# ``_move_to_push`` leaves those the engine pushes; one before the step may wait or take another
# branch, one past it had its push. Checked by the append's statement, through the open enrollment
# of the journey and profile (a unique index, partial: its condition written out lets the planner
# take it).
STREAM_RECIPIENTS_SQL = (
    "EXISTS (SELECT 1 FROM journeys_enrollment e "
    "WHERE e.journey_id = (SELECT jv.journey_id FROM journeys_journeyversion jv WHERE jv.id = d.source_id) "
    "AND e.profile_id = v.profile_id AND e.status IN ('active', 'waiting') AND e.status = 'active' "
    "AND e.version_id = d.source_id AND e.step = d.stream_version)"
)
STREAM_RECIPIENTS_REFUSAL = (
    "are not enrolled in the journey's version at the stream's push step (the journey sends its push to those "
    "it brings there)"
)


def journey_stream_is_current(source_id: int, version: str) -> bool:
    """A journey step's stream takes pushes while its version is live (or retired, finishing) in a live
    journey; a paused journey's is kept for its resume (the day's stream is not finished meanwhile)."""
    from journeys.services.lifecycle import VStatus

    return JourneyVersion.objects.filter(
        pk=source_id, status__in=(VStatus.LIVE, VStatus.RETIRED), journey__status__in=Journey.ON_AIR
    ).exists()


def _write_back(runs: list[_Run], *, now: dt.datetime, stats: Counter) -> None:
    """Save the batch's enrollments (their history: the steps of this run added) and add to its step
    counters: on PostgreSQL one statement (UPDATE … FROM jsonb_to_recordset in a WITH, then the
    counters' INSERT). None keeps a due time held aside (``held_due_at``): a claimed row was due,
    and a held entry ended at once (``journeys_run_entered``'s ``held``) is held no more."""
    changed = [run for run in runs if run.changed]
    if connection.vendor != "postgresql":
        for run in changed:
            run.row.history = [*(run.row.history or []), *run.history]
        if changed:
            Enrollment.objects.bulk_update(
                [
                    Enrollment(**{name: getattr(run.row, name) for name in _ROW_FIELDS}, updated_at=now)
                    for run in changed
                ],
                ["step", "status", "due_at", "held_due_at", "history", "updated_at", "finished_at", "exit_reason"],
                batch_size=500,
            )
        step_stats_add(stats)
        return
    # The batch as one JSON document: thousands of placeholders, or arrays of strings, cost more
    # to send than the update itself.
    document = json.dumps(
        [
            {
                "id": run.row.pk,
                "step": run.row.step,
                "status": run.row.status,
                "due_at": run.row.due_at.isoformat() if run.row.due_at else None,
                "history": run.history,
                "finished_at": run.row.finished_at.isoformat() if run.row.finished_at else None,
                "exit_reason": run.row.exit_reason or "",
            }
            for run in changed
        ],
        separators=(",", ":"),
    )
    # The rows are found by their ids as an array (an index condition), not by the join alone: a
    # plan made while the statistics say the table is empty (a vacuum of an emptied table, until
    # the next analyze) would read every enrollment through the primary key for each batch.
    sql = (
        "WITH v AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, step text, status text, "
        "due_at timestamptz, history jsonb, finished_at timestamptz, exit_reason text)) "
        "UPDATE journeys_enrollment e SET step = v.step, status = v.status, due_at = v.due_at, held_due_at = NULL, "
        "history = e.history || v.history, updated_at = %s, finished_at = v.finished_at, exit_reason = v.exit_reason "
        "FROM v WHERE e.id = ANY(ARRAY(SELECT id FROM v)) AND e.id = v.id"
    )
    params = [document, now]
    counters = step_stats_statement(stats)
    if counters is not None:
        sql = f"WITH written AS ({sql}) {counters[0]}"
        params += counters[1]
    if changed or counters is not None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)


def _among(ids: list[int], field: str = "pk") -> Q:
    """``field`` is one of ``ids``: one array parameter on PostgreSQL, not one placeholder per id."""
    if connection.vendor == "postgresql":
        from django.db.models.expressions import RawSQL

        return Q(**{f"{field}__in": RawSQL("SELECT unnest(%s::bigint[])", [int_array(ids)])})
    return Q(**{f"{field}__in": list(ids)})
