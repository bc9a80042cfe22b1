"""What an operator watches, read in one place: ``manage.py status`` and the metrics endpoint use it."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone
from redis.exceptions import RedisError


@dataclass
class DispatchProgress:
    id: int
    label: str
    status: str
    total: int
    done: int
    accepted: int
    failed: int
    unknown: int
    per_second: float
    # A stream (standing: open all day) is rated on its last minute, a run on its average since it started.
    standing: bool = False


def late_seconds() -> int:
    """How late a beat may be, and how long the queue's oldest task may wait, before ``status
    --check`` fails: Q_CLUSTER's timeout (300 s), the longest a task holds a worker, so a beat's
    task waiting behind long ones is not called late, and one waiting longer than any task runs is."""
    return int(settings.Q_CLUSTER["timeout"])


# A stream sender slot silent for longer fails ``status --check``: the delivery watchdog, every
# minute, starts a sender task for a slot without a heartbeat (15 s), so a slot silent for two
# minutes has neither a ``send_stream`` process nor a task the watchdog started.
SENDER_SILENT_SECONDS = 120


@dataclass
class WorkerSeen:
    host: str
    pid: int
    status: str


@dataclass
class Snapshot:
    instance: str
    instance_problem: str | None
    queue_depth: int | None  # None when the queue cannot be read (queue_problem says why)
    oldest_task_age_seconds: float | None
    queue_problem: str | None = None
    dispatches: list[DispatchProgress] = field(default_factory=list)
    failures_last_hour: dict[str, int] = field(default_factory=dict)
    beat: dict[str, dict] = field(default_factory=dict)
    # Stored events whose listener (journeys' entries and exits) failed, waiting to run it again.
    event_replays: int = 0
    oldest_event_replay_age_seconds: float | None = None
    # Segments and journeys counting events further back than PUSHDESK_RETENTION_EVENT_DAYS:
    # retention refuses to run while there is one.
    retention_problems: list[str] = field(default_factory=list)
    # Imports whose worker stopped (audiences.services.imports.imports_stalled), and how many
    # imports of their segment wait for them: the imports watchdog takes them up or ends them.
    stalled_imports: list[StalledImport] = field(default_factory=list)
    # Imports the watchdog queued again after a run whose worker stopped before it wrote a batch
    # (under way on their one more run), and those it ended failed in the last day as a second run
    # in a row wrote nothing either (their file may be what stops the worker).
    imports_run_again: list[ImportLine] = field(default_factory=list)
    imports_failed_stalling: list[ImportLine] = field(default_factory=list)
    # Queued imports no worker has taken up for twice PUSHDESK_IMPORT_STALL_SECONDS since they were
    # queued or last wrote a batch (audiences.services.imports.imports_not_taken_up), however often
    # the watchdog queued them again: no worker runs, or none reads their queue.
    imports_not_taken_up: list[ImportWait] = field(default_factory=list)
    # The qclusters reporting to this queue now (their statistics, kept 3 s), None when it cannot be
    # read or tasks run in the caller's process (PUSHDESK_TASKS_SYNC); and when the last task ended.
    workers: list[WorkerSeen] | None = None
    last_task_ended: dt.datetime | None = None
    # Each stream sender slot (delivery.services.stream_senders.SenderSlot), None when it cannot be
    # read or tasks run in the caller's process.
    senders: list | None = None


@dataclass
class ImportLine:
    id: int
    name: str


@dataclass
class ImportWait:
    id: int
    name: str
    since: dt.datetime  # queued, or its last batch written
    minutes: int


@dataclass
class StalledImport:
    id: int
    name: str
    minutes: int
    waiting: int
    seconds: float  # since its last batch (its last heartbeat)
    # Stalled past twice PUSHDESK_IMPORT_STALL_SECONDS: the imports watchdog, which takes a stalled
    # import up within a minute, is not running (or fails on it), so an operator is needed.
    overdue: bool = False


def queue_depth_and_oldest_age(*, now: dt.datetime) -> tuple[int, float | None]:
    """The tasks waiting in this instance's queue, and how long the oldest has waited (seconds)."""
    from django_q.brokers import get_broker
    from django_q.signing import SignedPackage

    broker = get_broker()
    depth = broker.queue_size() or 0
    started = None
    if "redis" in settings.Q_CLUSTER:
        raw = broker.connection.lindex(broker.list_key, 0)
        if raw is not None:
            try:
                started = SignedPackage.loads(raw).get("started")
            except Exception:  # a package signed with another SECRET_KEY: its age is unknown
                started = None
    else:
        from django_q.models import OrmQ

        oldest = OrmQ.objects.using(settings.Q_CLUSTER["orm"]).filter(key=broker.list_key).order_by("id").first()
        if oldest is not None:  # its package, or {"id": "*Error"} when it cannot be read
            started = oldest.task.get("started")
    age = (now - started).total_seconds() if started is not None else None
    return depth, age


def queue_figures(*, now: dt.datetime | None = None) -> dict:
    """``qinfo``'s figures of this instance's queue, each under a name of its own, for ``status
    --queue``: the queue's name and broker, the clusters reporting to it (their workers and
    restarts), the tasks waiting and how long the oldest has waited (seconds, None when none waits),
    the successes the queue keeps (``save_limit``) and the failures, the schedules, and the tasks
    that succeeded in the last 24 hours with their average time (seconds). Raises ``RedisError``
    while the queue's Redis does not answer, ``django.db.Error`` while the database does not."""
    from django_q.brokers import get_broker
    from django_q.models import Failure, Schedule, Success
    from django_q.status import Stat

    now = now or timezone.now()
    broker = get_broker()
    clusters = Stat.get_all(broker=broker)
    depth, age = queue_depth_and_oldest_age(now=now)
    # At most save_limit (1,000) rows: the queue keeps no more successes.
    times = [
        (stopped - started).total_seconds()
        for started, stopped in Success.objects.filter(stopped__gte=now - dt.timedelta(hours=24)).values_list(
            "started", "stopped"
        )
    ]
    return {
        "queue": settings.Q_CLUSTER["name"],
        "broker": broker.info(),
        "clusters": len(clusters),
        "workers": sum(len(cluster.workers) for cluster in clusters),
        "restarts": sum(cluster.reincarnations for cluster in clusters),
        "queued": depth,
        "oldest_task_age_seconds": round(age, 1) if age is not None else None,
        "successes": Success.objects.count(),
        "failures": Failure.objects.count(),
        "schedules": Schedule.objects.count(),
        "tasks_last_24h": len(times),
        "average_task_seconds_last_24h": round(sum(times) / len(times), 3) if times else 0.0,
    }


def queue_figures_lines(figures: dict) -> list[str]:
    """One line a figure, its name then its value (``none`` for no value): for ``awk``, ``grep`` and eyes."""
    width = max(len(name) for name in figures) + 1
    return [f"{name:<{width}}{'none' if value is None else value}" for name, value in figures.items()]


def snapshot(*, now: dt.datetime | None = None) -> Snapshot:
    """Read the queue, the workers reporting to it, the stream sender slots' heartbeats, the
    unfinished dispatches, the last hour's failed tasks, the event replays waiting, what stops event
    retention and the beat: for ``manage.py status`` and each scrape of the metrics, so no read walks
    Redis' keys (the workers are found through the broker's registry, operations.broker; the slots
    by their keys). A queue Redis does not answer for is reported in ``queue_problem``; the database
    not answering raises ``django.db.Error``."""
    from django.db.models import Count, Max, Min, Q
    from django_q.conf import Conf
    from django_q.models import Schedule, Task

    from audiences.models import EventReplay, Import
    from audiences.services.imports import import_stalled_minutes, imports_not_taken_up, imports_stalled
    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatches_counted_now
    from delivery.services.stream_senders import streams_senders_seen
    from delivery.services.streams import stream_live_figures
    from operations.instance import instance_problem
    from operations.services import retention_problems

    now = now or timezone.now()
    problem = None
    workers = senders = None
    try:
        depth, age = queue_depth_and_oldest_age(now=now)
        if not Conf.SYNC:
            workers = _workers_seen()
            senders = streams_senders_seen()
    except RedisError as exc:  # Redis down or restarting: everything else can still be read
        depth, age, problem = None, None, f"Redis does not answer ({exc.__class__.__name__})"
        workers = senders = None  # one may have been read before the other failed
    result = Snapshot(
        instance=settings.PUSHDESK_INSTANCE,
        instance_problem=instance_problem(),
        queue_depth=depth,
        oldest_task_age_seconds=age,
        queue_problem=problem,
        workers=workers,
        senders=senders,
    )
    if workers == []:  # said only beside "no worker seen": not read on every scrape (no index on it)
        result.last_task_ended = Task.objects.aggregate(last=Max("stopped"))["last"]
    # An open stream's counters on its row are kept once a minute: summed now, as its page does.
    for d in dispatches_counted_now(list(Dispatch.objects.running().order_by("id"))):
        elapsed = (now - d.started_at).total_seconds() if d.started_at else 0.0
        done = d.accepted + d.failed + d.skipped + d.unknown
        if d.standing:
            per_second = stream_live_figures(d, now=now)["rate_per_second"]
        else:
            per_second = round(done / elapsed, 1) if elapsed > 0 else 0.0
        result.dispatches.append(
            DispatchProgress(
                id=d.pk,
                label=str(d),
                status=d.status,
                total=d.total,
                done=done,
                accepted=d.accepted,
                failed=d.failed,
                unknown=d.unknown,
                per_second=per_second,
                standing=d.standing,
            )
        )
    failures = (
        Task.objects.filter(success=False, stopped__gte=now - dt.timedelta(hours=1))
        .values_list("func")
        .annotate(n=Count("id"))
        .order_by("func")
    )
    result.failures_last_hour = dict(failures)
    replays = EventReplay.objects.aggregate(n=Count("id"), oldest=Min("created_at"))
    result.event_replays = replays["n"]
    if replays["oldest"] is not None:
        result.oldest_event_replay_age_seconds = (now - replays["oldest"]).total_seconds()
    result.retention_problems = retention_problems()
    stalled = list(imports_stalled(now=now).order_by("pk"))
    waiting = dict(
        Import.objects.filter(waiting_for__in=stalled, status=Import.Status.QUEUED)
        .values_list("waiting_for")
        .annotate(n=Count("id"))
        .order_by()
    )
    result.stalled_imports = [
        StalledImport(
            id=record.pk,
            name=record.original_name,
            minutes=import_stalled_minutes(record, now=now),
            waiting=waiting.get(record.pk, 0),
            seconds=(now - record.heartbeat_at).total_seconds(),
            overdue=record.heartbeat_at < now - dt.timedelta(seconds=2 * settings.PUSHDESK_IMPORT_STALL_SECONDS),
        )
        for record in stalled
    ]
    stalled_ids = {record.pk for record in stalled}
    under_way = Q(status=Import.Status.RUNNING) | Q(status=Import.Status.QUEUED, run_started_at__isnull=False)
    result.imports_run_again = [
        ImportLine(id=pk, name=name)
        for pk, name in Import.objects.filter(under_way, stalled_runs__gte=1)
        .order_by("pk")
        .values_list("pk", "original_name")
        if pk not in stalled_ids
    ]
    result.imports_failed_stalling = [
        ImportLine(id=pk, name=name)
        for pk, name in Import.objects.filter(
            status=Import.Status.FAILED, stalled_runs__gte=2, finished_at__gte=now - dt.timedelta(days=1)
        )
        .order_by("pk")
        .values_list("pk", "original_name")
    ]
    result.imports_not_taken_up = [
        ImportWait(id=pk, name=name, since=since.astimezone(dt.UTC), minutes=int((now - since).total_seconds() // 60))
        for pk, name, since in imports_not_taken_up(now=now)
        .order_by("pk")
        .values_list("pk", "original_name", "progressed_at")
    ]
    last_runs = dict(
        Task.objects.filter(pk__in=Schedule.objects.exclude(task=None).values("task")).values_list("id", "stopped")
    )
    for schedule in Schedule.objects.order_by("name"):
        last = last_runs.get(schedule.task)
        due = _beat_due_since(schedule, last, now=now)
        result.beat[schedule.name or schedule.func] = {
            "last_run": last,
            "age_seconds": (now - last).total_seconds() if last else None,
            "next_run": schedule.next_run,
            "due_since": due,
            "late_since": due if due is not None and (now - due).total_seconds() > late_seconds() else None,
        }
    from operations.beats import BEATS

    for name in BEATS.keys() - result.beat.keys():  # deleted: `migrate` makes it again
        result.beat[name] = {"last_run": None, "age_seconds": math.inf, "next_run": None, "missing": True}
    return result


def _every_seconds(schedule) -> int | None:
    """How often ``schedule`` runs, for those that run at a fixed interval."""
    from django_q.models import Schedule

    if schedule.schedule_type == Schedule.MINUTES:
        return (schedule.minutes or 1) * 60
    return {Schedule.HOURLY: 3600, Schedule.DAILY: 86400, Schedule.WEEKLY: 7 * 86400}.get(schedule.schedule_type)


def _beat_due_since(schedule, last: dt.datetime | None, *, now: dt.datetime) -> dt.datetime | None:
    """When ``schedule`` was due and has not run since, if it is due now: its next run the scheduler
    has not fired (no qcluster runs), or its interval after its last run (its task not run). It is
    late once that is more than ``late_seconds()`` ago."""
    if schedule.repeats == 0:  # done: it runs no more
        return None
    due = [schedule.next_run] if schedule.next_run else []
    every = _every_seconds(schedule)
    if last and every:
        due.append(last + dt.timedelta(seconds=every))
    if not due or min(due) > now:
        return None
    return min(due)


def _workers_seen() -> list[WorkerSeen]:
    """The qclusters whose statistics (saved every half second, kept 3 s) are in this queue's broker."""
    from django_q.status import Stat

    return [
        WorkerSeen(host=str(stat.host), pid=int(stat.pid), status=str(stat.status))
        for stat in sorted(Stat.get_all(), key=lambda stat: (str(stat.host), int(stat.pid)))
    ]
