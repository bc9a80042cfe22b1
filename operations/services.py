"""Operator actions on the deployment itself."""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.template.defaultfilters import pluralize
from django.utils import timezone
from redis.exceptions import RedisError

from accounts.models import User
from accounts.services import audit
from config.db import write_pacer
from operations.database import redis_problem
from operations.instance import instance_refusal_forget

logger = logging.getLogger("pushdesk.instance")

VOID_REASON = "voided:instance_claim"


def instance_claim(*, name: str | None = None) -> dict:
    """Make the database this instance's (``PUSHDESK_INSTANCE``), voiding what was queued before.

    A database restored from a backup or cloned holds the original's work in progress: its
    dispatches being prepared or sent, queued deliveries, campaign occurrences already due,
    journey steps already due and queued tasks. The original sent (or will send) them; sending
    them here again would reach every recipient twice. So, in one transaction: unfinished
    dispatches are stopped, their queued rows end ``skipped`` and their ``sending`` rows
    ``unknown`` (reason ``voided:instance_claim``); scheduled campaigns' due occurrences are
    recorded as skipped and their next one is the first after now; journey enrollments already
    due exit (a paused journey's too: its resume would run them); tasks in the database broker are dropped. Future schedules are kept.

    Returns the counts of what was voided; writes an audit event.
    """
    from campaigns.models import Campaign, Occurrence
    from campaigns.schedule import at_local_time, next_occurrence
    from delivery.models import Delivery, Dispatch
    from delivery.services.rollups import deliveries_finish
    from journeys.models import Enrollment
    from operations.models import Instance

    name = name or settings.PUSHDESK_INSTANCE
    now = timezone.now()
    counts = {"dispatches": 0, "deliveries_skipped": 0, "deliveries_unknown": 0, "occurrences": 0, "enrollments": 0}
    with transaction.atomic():
        instance = Instance.objects.select_for_update().filter(pk=1).first()
        previous = instance.name if instance else None
        open_ids = list(Dispatch.objects.select_for_update().running().values_list("pk", flat=True))
        for dispatch_id in open_ids:
            skipped, unknown = (
                deliveries_finish(
                    where="d.dispatch_id = %s AND d.status = %s",
                    params=[dispatch_id, was],
                    status=status,
                    reason=VOID_REASON,
                    now=now,
                )
                for was, status in (
                    (Delivery.Status.QUEUED, Delivery.Status.SKIPPED),
                    (Delivery.Status.SENDING, Delivery.Status.UNKNOWN),
                )
            )
            dispatch = Dispatch.objects.get(pk=dispatch_id)
            dispatch.skipped += skipped
            dispatch.unknown += unknown
            dispatch.status = Dispatch.Status.STOPPED
            dispatch.error = f"Voided when instance {name!r} claimed this database (it was queued before)."
            dispatch.finished_at = now
            dispatch.save(update_fields=["skipped", "unknown", "status", "error", "finished_at"])
            counts["dispatches"] += 1
            counts["deliveries_skipped"] += skipped
            counts["deliveries_unknown"] += unknown
        due = Campaign.objects.select_for_update().filter(
            status__in=(Campaign.Status.SCHEDULED, Campaign.Status.LIVE), next_occurrence_at__lte=now
        )
        for campaign in due:
            # The schedule that sends is the approved version's, whatever revision is pending
            # (as the scheduler reads it): its occurrences are voided and its next one is kept.
            approved = campaign.approved()
            if approved is None:  # nothing approved sends: the scheduler skips it too
                continue
            when = campaign.next_occurrence_at
            while when is not None and when <= now:
                Occurrence.objects.get_or_create(
                    campaign=campaign,
                    due_at=when,
                    defaults={
                        "outcome": Occurrence.Outcome.SKIPPED_MISSED,
                        "note": f"voided when instance {name!r} claimed this database",
                        "at_local_time": at_local_time(approved),
                    },
                )
                counts["occurrences"] += 1
                when = next_occurrence(approved, after=when)
            campaign.next_occurrence_at = when
            campaign.save(update_fields=["next_occurrence_at"])
        # A paused journey's profiles hold their due time aside (``held_due_at``): due as much.
        due_steps = Q(due_at__lte=now) | Q(held_due_at__lte=now)
        counts["enrollments"] = Enrollment.objects.filter(due_steps, status__in=Enrollment.OPEN_STATUSES).update(
            status=Enrollment.Status.EXITED,
            exit_reason=f"voided when instance {name!r} claimed this database",
            finished_at=now,
            updated_at=now,
            due_at=None,
            held_due_at=None,
        )
        if "orm" in settings.Q_CLUSTER:
            from django_q.models import OrmQ

            counts["tasks"] = OrmQ.objects.all().delete()[0]
        Instance.objects.update_or_create(pk=1, defaults={"name": name, "claimed_at": now})
        audit(actor=None, action="instance_claimed", summary={"name": name, "previous": previous, **counts})
    logger.warning("instance %r claimed the database (it was %r); voided %s", name, previous, counts)
    instance_refusal_forget()
    result = {"previous": previous, "name": name, **counts, "queue_purge_failed": None}
    if "redis" in settings.Q_CLUSTER:
        try:
            result["tasks"] = instance_queue_purge()
        except RedisError as exc:  # the claim stands; the purge is run again with --purge-queue
            result["queue_purge_failed"] = redis_problem(exc)
            logger.error("instance %r: the task queue could not be purged: %s", name, result["queue_purge_failed"])
    return result


def instance_queue_purge() -> int:
    """Drop the tasks waiting in this instance's queue in Redis (``instance_claim`` does it after
    it commits; run on its own when Redis did not answer then). Only this instance's queue: a
    shared Redis also holds the original's. Returns the number dropped. Raises ``RedisError``."""
    from django_q.brokers import get_broker

    broker = get_broker()
    waiting = broker.queue_size() or 0
    broker.purge_queue()
    return waiting


AUDIT_MINIMUM_DAYS = 365  # the database's own floor (operations migration 0002)


class RetentionRefused(Exception):
    """Retention would delete what something still reads; ``problems`` each name that thing."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(" ".join(problems))


RETENTION_CHUNK = 10_000


def _event_windows(tree) -> list[tuple[str, int | None]]:
    """The event conditions of a rule tree: (event name, the days they count over; None: all time)."""
    from audiences.rules.schema import rule_nodes

    return [(str(node["event"]), node.get("within_days") or None) for node in rule_nodes(tree) if "event" in node]


def _window_problems(what: str, tree, event_days: int) -> list[str]:
    """The event conditions of ``tree`` that count further back than ``event_days``, each said."""
    problems = []
    for event, days in _event_windows(tree):
        if days is None or days > event_days:
            window = "over all time (no within_days)" if days is None else f"over the last {days} days"
            problems.append(
                f"{what} counts '{event}' events {window}, longer than PUSHDESK_RETENTION_EVENT_DAYS={event_days}."
            )
    return problems


def _journey_reach_days(graph: dict) -> int:
    """How long after entry a profile may still be in a journey version, in whole days, at most: its
    waits added up (a wait until a time of day, a day each)."""
    from journeys.graph import DAY_SECONDS

    seconds = 0
    for step in (graph or {}).get("steps") or []:
        if isinstance(step, dict) and step.get("type") == "wait":
            seconds += step["seconds"] if isinstance(step.get("seconds"), int) else DAY_SECONDS
    return -(-seconds // DAY_SECONDS)


def _conversion_window_problems(event_days: int) -> list[str]:
    """Campaigns and journeys still to send (or sending) whose conversion goal counts events longer
    after a send than events are kept: the window's first events would be deleted while it is open."""
    from campaigns.models import Campaign
    from journeys.models import Journey

    problems = []
    for model, noun in ((Campaign, "campaign"), (Journey, "journey")):
        goals = model.objects.filter(status__in=model.STILL_TO_SEND).exclude(conversion_event="")
        goals = goals.filter(conversion_window_hours__gt=event_days * 24).order_by("name", "pk")
        for pk, name, event, hours in goals.values_list("pk", "name", "conversion_event", "conversion_window_hours"):
            problems.append(
                f"The {noun} '{name}' (id {pk}) counts '{event}' events as conversions up to {-(-hours // 24)} days "
                f"after each send, longer than PUSHDESK_RETENTION_EVENT_DAYS={event_days}."
            )
    return problems


def _kept_rows_conversion_problems(*, event_days: int, delivery_days: int, now: dt.datetime) -> list[str]:
    """Campaigns and journeys with a conversion goal whose sends keep their rows past this run but
    began before the events' cut: their conversions are counted from those rows and events, so
    deleting the events would take conversions out of their reports. (A send whose rows this run
    deletes has its converted profiles kept first, events still there: ``delivery.kept``.)"""
    from django.db.models import Count, Min

    from campaigns.models import Campaign
    from delivery.models import Dispatch
    from journeys.models import Journey, JourneyVersion

    cut = now - dt.timedelta(days=event_days)
    kept = Dispatch.objects.filter(rows_deleted_at__isnull=True, created_at__lt=cut, total__gt=0)
    if delivery_days > 0:  # those this run deletes the rows of keep their conversions first
        kept = kept.exclude(status__in=Dispatch.FINAL_STATUSES, finished_at__lt=now - dt.timedelta(days=delivery_days))
    sends: dict[tuple[str, int], list] = {}
    campaign_kinds = (Dispatch.Kind.CAMPAIGN, Dispatch.Kind.API_TRIGGER)
    for source_id, n, oldest in (
        kept.filter(kind__in=campaign_kinds).values_list("source_id").annotate(n=Count("pk"), oldest=Min("created_at"))
    ):
        sends[("campaign", source_id)] = [n, oldest]
    steps = list(
        kept.filter(kind=Dispatch.Kind.JOURNEY)
        .values_list("source_id")
        .annotate(n=Count("pk"), oldest=Min("created_at"))
    )
    journey_of = dict(JourneyVersion.objects.filter(pk__in=[row[0] for row in steps]).values_list("pk", "journey_id"))
    for source_id, n, oldest in steps:
        counted = sends.setdefault(("journey", journey_of.get(source_id)), [0, oldest])
        counted[0], counted[1] = counted[0] + n, min(counted[1], oldest)
    problems = []
    for model, noun in ((Campaign, "campaign"), (Journey, "journey")):
        ids = [pk for kind, pk in sends if kind == noun and pk is not None]
        goals = model.objects.filter(pk__in=ids).exclude(conversion_event="").order_by("name", "pk")
        for pk, name, event, hours in goals.values_list("pk", "name", "conversion_event", "conversion_window_hours"):
            n, oldest = sends[(noun, pk)]
            least = delivery_days + -(-hours // 24) if delivery_days > 0 else None
            problems.append(
                f"The {noun} '{name}' (id {pk}) counts '{event}' events as conversions of {n} send{pluralize(n)} whose rows are "
                f"still kept, the oldest from {oldest:%Y-%m-%d}: PUSHDESK_RETENTION_EVENT_DAYS={event_days} would "
                "delete events its report counts ("
                + (
                    f"keep events at least PUSHDESK_RETENTION_DELIVERY_DAYS plus its window, {least} days)."
                    if least
                    else "deliveries are kept forever: keep events forever too, or deliveries for less time)."
                )
            )
    return problems


def delivery_retention_problems(*, delivery_days: int | None = None) -> list[str]:
    """The apps whose frequency cap counts deliveries further back than ``delivery_days`` (default
    PUSHDESK_RETENTION_DELIVERY_DAYS): the cap reads the deliveries in its window, and once
    retention deleted the older ones it would let through pushes it should hold back. Empty when
    deliveries are kept forever (0) or no cap looks back that far."""
    from delivery.models import DeliveryRules

    delivery_days = settings.PUSHDESK_RETENTION_DELIVERY_DAYS if delivery_days is None else delivery_days
    if delivery_days <= 0:
        return []
    capping = DeliveryRules.objects.filter(frequency_cap__gt=0, frequency_window_hours__gt=delivery_days * 24)
    # The app's name only: this list needs nothing else of its row (whose credentials are decrypted
    # only when read: ``accounts.encryption.EncryptedTextField``).
    return [
        f"The app '{name}' (id {app_id}) caps marketing pushes at {cap} per "
        f"{hours} hours, longer than PUSHDESK_RETENTION_DELIVERY_DAYS={delivery_days} "
        f"({delivery_days * 24} hours)."
        for app_id, name, cap, hours in capping.order_by("app__name", "app_id").values_list(
            "app_id", "app__name", "frequency_cap", "frequency_window_hours"
        )
    ]


def retention_problems(*, event_days: int | None = None, delivery_days: int | None = None, now=None) -> list[str]:
    """Everything that stops ``retention_apply`` (for ``status`` and ``/metrics``), each naming
    the setting it outlasts: ``event_retention_problems`` and ``delivery_retention_problems``."""
    return event_retention_problems(
        event_days=event_days, delivery_days=delivery_days, now=now
    ) + delivery_retention_problems(delivery_days=delivery_days)


def event_retention_problems(
    *, event_days: int | None = None, delivery_days: int | None = None, now: dt.datetime | None = None
) -> list[str]:
    """What counts events further back than ``event_days`` (default PUSHDESK_RETENTION_EVENT_DAYS),
    and would count wrong once retention deleted them: rules segments whose event conditions look
    back longer or over all time, and journey versions that may still run (draft, in review, live,
    or retired with profiles inside) whose conditions do, through a rule tree or an "event since
    entry" branch (which looks back as long as a profile may stay); and campaigns and journeys still
    to send whose conversion window is longer, or with sent ones whose rows are kept past
    ``delivery_days`` (default PUSHDESK_RETENTION_DELIVERY_DAYS) and which began before the cut.
    Empty when events are kept forever (0) or nothing does."""
    from audiences.models import Segment
    from journeys.graph import rules_of
    from journeys.models import Enrollment, JourneyVersion

    event_days = settings.PUSHDESK_RETENTION_EVENT_DAYS if event_days is None else event_days
    if event_days <= 0:
        return []
    problems = []
    for segment in Segment.objects.filter(kind=Segment.Kind.RULES).order_by("name", "pk").only("name", "rules"):
        problems += _window_problems(f"The segment '{segment.name}' (id {segment.pk})", segment.rules, event_days)
    running = Enrollment.objects.filter(status__in=Enrollment.OPEN_STATUSES).values("version_id")
    versions = (
        JourneyVersion.objects.filter(
            Q(status__in=(JourneyVersion.Status.DRAFT, JourneyVersion.Status.IN_REVIEW, JourneyVersion.Status.LIVE))
            | Q(status=JourneyVersion.Status.RETIRED, pk__in=running)
        )
        .select_related("journey")
        .order_by("journey__name", "journey_id", "number")
    )
    problems += _conversion_window_problems(event_days)
    problems += _kept_rows_conversion_problems(
        event_days=event_days,
        delivery_days=settings.PUSHDESK_RETENTION_DELIVERY_DAYS if delivery_days is None else delivery_days,
        now=now or timezone.now(),
    )
    for version in versions:
        what = f"The journey '{version.journey.name}' (id {version.journey_id}, version {version.number})"
        for tree in rules_of(version.graph):
            problems += _window_problems(what, tree, event_days)
        reach = _journey_reach_days(version.graph)
        for step in (version.graph or {}).get("steps") or []:
            if not isinstance(step, dict) or step.get("type") != "condition":
                continue
            for branch in step.get("branches") or []:
                if isinstance(branch, dict) and "event" in branch and reach > event_days:
                    problems.append(
                        f"{what}, step '{step.get('id')}', asks whether '{branch['event']}' happened since entry, "
                        f"up to {reach} days after it, longer than PUSHDESK_RETENTION_EVENT_DAYS={event_days}."
                    )
    return problems


def _events_delete(*, before: dt.datetime) -> int:
    """Delete the events that occurred before ``before``, name by name through the (name,
    occurred_at) index, in chunks of ``RETENTION_CHUNK`` (one transaction each), except those an
    event replay waits to run a listener for. No index on the time alone: every ingested event
    would pay an entry in it, for this daily run."""
    from django.db import connection

    from audiences.models import Event, EventReplay

    # The events a journey listener has yet to run again for (a few, while it fails) stay for it.
    waiting = sorted({pk for ids in EventReplay.objects.values_list("event_ids", flat=True) for pk in ids})
    table, quote = Event._meta.db_table, connection.ops.quote_name
    with connection.cursor() as cursor:
        # The distinct names, one index probe each (PostgreSQL has no skip scan of its own).
        cursor.execute(
            f"""WITH RECURSIVE names(name) AS (
                    SELECT MIN(name) FROM {quote(table)}
                    UNION ALL
                    SELECT (SELECT MIN(e.name) FROM {quote(table)} e WHERE e.name > names.name)
                    FROM names WHERE names.name IS NOT NULL
                )
                SELECT name FROM names WHERE name IS NOT NULL"""  # noqa: S608 (the model's own table)
        )
        names = [row[0] for row in cursor.fetchall()]
    deleted = 0
    pace = write_pacer()
    for name in names:
        while True:
            pace()
            with transaction.atomic():
                chunk = list(
                    Event.objects.filter(name=name, occurred_at__lt=before)
                    .exclude(pk__in=waiting)
                    .order_by()
                    .values_list("pk", flat=True)[:RETENTION_CHUNK]
                )
                if not chunk:
                    break
                deleted += Event.objects.filter(pk__in=chunk).delete()[1].get(Event._meta.label, 0)
    return deleted


def retention_apply(
    *,
    now=None,
    delivery_days: int | None = None,
    audit_days: int | None = None,
    event_days: int | None = None,
    task_days: int | None = None,
    idempotency_days: int | None = None,
) -> dict:
    """Delete what the retention settings let go: old deliveries, profiles' events and failed
    tasks, and (if asked) old audit events. Each ``*_days`` defaults to its
    PUSHDESK_RETENTION_*_DAYS setting; 0 keeps that kind forever.

    Deliveries: the rows of dispatches finished more than ``delivery_days`` ago (the dispatch, its
    counters and its rollup stay, so reports and charts keep their totals), in chunks of 10,000 rows
    (one transaction each). With its first chunk, the profiles its report counts per profile
    (profiles per variant, reached, converted under the goal of the moment) are kept for the report
    (``delivery.kept``), so those figures keep counting its profiles; the profiles counted on the
    dispatch itself (``DispatchProfiles``) go, and its ``rows_deleted_at`` voids the figures the
    cache keeps over it.
    Events: those that occurred more than ``event_days`` ago, in chunks (``_events_delete``).
    Raises RetentionRefused, before deleting anything, when a segment or a journey counts events
    over a longer window, or an app's frequency cap counts deliveries over a longer window
    (``retention_problems``).
    Failed tasks: django-q's failures that stopped more than ``task_days`` ago (its successes are
    kept to ``save_limit`` by the queue itself).
    Idempotency-Key records of trigger and events calls: those claimed more than ``idempotency_days``
    ago, never one still in progress (``idempotent_requests_delete``).
    Deleted devices' tombstones: those no winner test still waiting to send its rest and no running
    dispatch can need (``device_tombstones_delete``); no setting, they go as soon as those are done.
    The admin forms' used one-time tokens: those past the age at which a form is refused anyway
    (``form_tokens_delete``); no setting either.
    Audit events: those older than ``audit_days`` (never under 365: the database refuses), through
    the one door the append-only trigger leaves open. Writes an audit event with the counts.
    Returns {"deliveries": n, "events": n, "failed_tasks": n, "trigger_requests": n, "event_requests": n,
    "device_tombstones": n, "form_tokens": n, "audit_events": n}.
    """
    from django.db import connection
    from django_q.models import Failure

    from delivery.kept import keep_profiles
    from delivery.models import Delivery, Dispatch, DispatchProfiles

    now = now or timezone.now()
    delivery_days = settings.PUSHDESK_RETENTION_DELIVERY_DAYS if delivery_days is None else delivery_days
    audit_days = settings.PUSHDESK_RETENTION_AUDIT_DAYS if audit_days is None else audit_days
    event_days = settings.PUSHDESK_RETENTION_EVENT_DAYS if event_days is None else event_days
    task_days = settings.PUSHDESK_RETENTION_TASK_DAYS if task_days is None else task_days
    if idempotency_days is None:
        idempotency_days = settings.PUSHDESK_RETENTION_IDEMPOTENCY_DAYS
    if 0 < audit_days < AUDIT_MINIMUM_DAYS:
        raise ValueError(f"Audit events are kept {AUDIT_MINIMUM_DAYS} days at least.")
    said = []
    problems = event_retention_problems(event_days=event_days, delivery_days=delivery_days, now=now)
    if problems:
        said += [
            f"PUSHDESK_RETENTION_EVENT_DAYS={event_days} would delete events these count "
            "(give each a window within it, or keep events longer):",
            *problems,
        ]
    problems = delivery_retention_problems(delivery_days=delivery_days)
    if problems:
        said += [
            f"PUSHDESK_RETENTION_DELIVERY_DAYS={delivery_days} would delete deliveries these frequency caps count "
            "(shorten the cap's window, or keep deliveries longer):",
            *problems,
        ]
    if said:
        raise RetentionRefused([f"Nothing was deleted: {said[0]}", *said[1:]])
    result = {
        "deliveries": 0,
        "events": 0,
        "failed_tasks": 0,
        "trigger_requests": 0,
        "event_requests": 0,
        "device_tombstones": 0,
        "form_tokens": 0,
        "audit_events": 0,
    }
    if delivery_days > 0:
        finished = Dispatch.objects.filter(
            status__in=Dispatch.FINAL_STATUSES, finished_at__lt=now - dt.timedelta(days=delivery_days)
        ).values_list("pk", flat=True)
        pace = write_pacer()
        for dispatch_id in finished.iterator():
            while True:
                pace()
                with transaction.atomic():
                    # The dispatch's row lock first: a report keeping its profiles holds a key-share
                    # lock while it counts, so no figure is kept from rows deleted meanwhile.
                    kind, source_id, total, cleared = (
                        Dispatch.objects.select_for_update()
                        .filter(pk=dispatch_id)
                        .values_list("kind", "source_id", "total", "rows_deleted_at")
                        .get()
                    )
                    # Through the indexes that lead with the dispatch, in no order: by the table's
                    # ordering (-id), or without the partial indexes' conditions, each chunk read
                    # the whole table.
                    chunk = list(
                        Delivery.objects.filter(Delivery.of_dispatches([dispatch_id]))
                        .order_by()
                        .values_list("pk", flat=True)[:RETENTION_CHUNK]
                    )
                    if not chunk:
                        break
                    # The rollup stays: reports and charts keep their totals (``DeliveryRollup``);
                    # before its first rows go, the profiles its report counts are kept for it.
                    if cleared is None:
                        keep_profiles(dispatch_id=dispatch_id, kind=kind, source_id=source_id, rows=total)
                    DispatchProfiles.objects.filter(dispatch_id=dispatch_id).delete()
                    Dispatch.objects.filter(pk=dispatch_id).update(rows_deleted_at=now)
                    result["deliveries"] += Delivery.objects.filter(pk__in=chunk).delete()[0]
    if event_days > 0:
        result["events"] = _events_delete(before=now - dt.timedelta(days=event_days))
    if task_days > 0:
        result["failed_tasks"] = Failure.objects.filter(stopped__lt=now - dt.timedelta(days=task_days)).delete()[0]
    if idempotency_days > 0:
        from audiences.models import EventBulkRequest
        from campaigns.models import TriggerRequest

        before = now - dt.timedelta(days=idempotency_days)
        result["trigger_requests"] = idempotent_requests_delete(TriggerRequest, before=before)
        result["event_requests"] = idempotent_requests_delete(EventBulkRequest, before=before)
    from campaigns.services.winner import winner_samples_waiting_since
    from delivery.services.devices import device_tombstones_delete

    result["device_tombstones"] = device_tombstones_delete(needed_since=winner_samples_waiting_since())
    from accounts.form_tokens import form_tokens_delete

    result["form_tokens"] = form_tokens_delete(now=now)
    if audit_days > 0:
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SET LOCAL pushdesk.audit_retention = 'on'")
            cursor.execute(
                "DELETE FROM accounts_auditevent WHERE created_at < %s", [now - dt.timedelta(days=audit_days)]
            )
            result["audit_events"] = cursor.rowcount
    audit(
        actor=None,
        action="retention_applied",
        summary={
            "delivery_days": delivery_days,
            "event_days": event_days,
            "task_days": task_days,
            "audit_days": audit_days,
            "idempotency_days": idempotency_days,
            **result,
        },
    )
    return result


def idempotent_requests_delete(model, *, before: dt.datetime) -> int:
    """Delete ``model``'s Idempotency-Key records (``accounts.idempotency``) claimed before
    ``before``, in chunks, through the ``created_at`` index; never one still in progress within its
    claim (an unfinished record is a live request until ``CLAIM_ABANDONED_AFTER``; a retry
    reclaiming it moves ``created_at``). Returns how many went."""
    from accounts.idempotency import CLAIM_ABANDONED_AFTER

    claimed_since = timezone.now() - CLAIM_ABANDONED_AFTER
    old = model.objects.filter(created_at__lt=before).filter(Q(finished=True) | Q(created_at__lt=claimed_since))
    deleted = 0
    pace = write_pacer()
    while True:
        pace()
        chunk = list(old.order_by().values_list("pk", flat=True)[:RETENTION_CHUNK])
        if not chunk:
            return deleted
        deleted += model.objects.filter(pk__in=chunk).delete()[0]


def task_resubmit(*, task_id: str, by: User) -> None:
    """Queue a finished task again with its function, arguments and hook, and audit it.

    A failed task leaves the failures list (its new run will say how it went); a successful one
    stays. Raises PermissionDenied when ``by`` may not change the queue's tasks (superusers only:
    the Administrator role reads the queue).
    """
    from django.core.exceptions import PermissionDenied
    from django_q.models import Task
    from django_q.tasks import async_task

    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task_id)
        if not by.has_perm(f"django_q.change_{'success' if task.success else 'failure'}"):
            raise PermissionDenied("Only a superuser resubmits the queue's tasks.")
        audit(actor=by, action="task_resubmitted", obj=task, summary={"func": task.func, "success": task.success})
        if not task.success:
            task.delete()
        args, kwargs = task.args or (), task.kwargs or {}
        transaction.on_commit(
            lambda: async_task(task.func, *args, hook=task.hook, group=task.group, cluster=task.cluster, **kwargs)
        )
