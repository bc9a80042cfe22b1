"""Prometheus metrics, read from the database and the queue at each scrape.

One endpoint on any web process sees the whole installation (every worker's sends, the queue, the
beat), so no per-process registry is needed. Served at ``/metrics`` when ``PUSHDESK_METRICS_TOKEN``
is set, to requests bearing it.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import math
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import BooleanField, Count, DurationField, ExpressionWrapper, F, Max, Q, QuerySet
from django.http import HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from redis.exceptions import RedisError

from config.reporting import SaidOnceAMinute

OUTCOMES = ("accepted", "failed", "skipped", "unknown")
_DATABASE_UP_HELP = "1 when the database answers, else 0 (and only the queue's figures are served)"
_QUEUE_UP_HELP = "1 when the queue (Redis) answers, else 0"
_OLDEST_HELP = "How long the oldest waiting task has waited (0 when none waits)"

logger = logging.getLogger("pushdesk.metrics")


# A finished dispatch's figures no longer change an hour after it finished (rows in flight when it
# stopped land within their lease): from then on they are read from the stored sums (SendTotals).
SUM_AFTER = dt.timedelta(hours=1)
# The stored sums move forward when they are this far behind: a write every few scrapes, not each.
SUM_STEP = dt.timedelta(minutes=5)


@dataclass
class SendFigures:
    """Dispatches' figures summed: by (app id, outcome), by (app id, platform, outcome), by retry reason."""

    sends: dict[tuple[int, str], int] = field(default_factory=dict)
    platform_sends: dict[tuple[int, str, str], int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)

    def add(self, other: SendFigures) -> None:
        for mine, theirs in (
            (self.sends, other.sends),
            (self.platform_sends, other.platform_sends),
            (self.retries, other.retries),
        ):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n


# The three sums of ``_figures`` in one statement over the dispatches read once (a materialized
# CTE): (what, app id, key, platform, n) rows, "sends" by outcome, "platform" by platform and
# outcome, "retries" by reason.
_OUTCOME_VALUES = ", ".join(f"('{o}', d.{o})" for o in OUTCOMES)
_FIGURES_SQL = (
    "WITH d AS MATERIALIZED ({dispatches}) "
    "SELECT 'sends', d.app_id, o.k, NULL, SUM(o.n) FROM d CROSS JOIN LATERAL (VALUES {outcomes}) AS o(k, n) "
    "GROUP BY 2, 3 "
    "UNION ALL SELECT 'platform', d.app_id, o.key, p.key, SUM(o.value::bigint) "
    "FROM d, jsonb_each(d.by_platform) p, jsonb_each_text(p.value) o WHERE d.by_platform <> '{{}}'::jsonb "
    "GROUP BY 2, 3, 4 "
    "UNION ALL SELECT 'retries', NULL, r.key, NULL, SUM(r.value::bigint) "
    "FROM d, jsonb_each_text(d.retries) r WHERE d.retries <> '{{}}'::jsonb GROUP BY 3"
)


def _figures(dispatches: QuerySet) -> SendFigures:
    """Sum the outcomes, the outcomes per platform (``by_platform``) and the retries of ``dispatches``
    (on PostgreSQL in one statement, each dispatch read once)."""
    figures = SendFigures()
    columns = ("app_id", *OUTCOMES, "by_platform", "retries")
    if connection.vendor == "postgresql":
        sql, params = dispatches.values(*columns).order_by().query.sql_with_params()
        with connection.cursor() as cursor:
            statement = _FIGURES_SQL.format(dispatches=sql, outcomes=_OUTCOME_VALUES)  # noqa: S608 (a queryset's SQL, constants)
            cursor.execute(statement, params)
            for what, app_id, key, platform, n in cursor.fetchall():
                if what == "sends":
                    figures.sends[app_id, key] = int(n or 0)
                elif what == "platform":
                    figures.platform_sends[app_id, platform, key] = int(n)
                else:
                    figures.retries[key] = int(n)
        return figures
    for app_id, *counts, by_platform, retries in dispatches.values_list(*columns).order_by():
        for outcome, n in zip(OUTCOMES, counts, strict=True):
            figures.sends[app_id, outcome] = figures.sends.get((app_id, outcome), 0) + (n or 0)
        for platform, outcomes in (by_platform or {}).items():
            for outcome, n in outcomes.items():
                key = (app_id, platform, outcome)
                figures.platform_sends[key] = figures.platform_sends.get(key, 0) + int(n)
        for reason, n in (retries or {}).items():
            figures.retries[reason] = figures.retries.get(reason, 0) + int(n)
    return figures


def _stored(totals) -> SendFigures:
    return SendFigures(
        sends={(int(app), o): n for app, outcomes in totals.sends.items() for o, n in outcomes.items()},
        platform_sends={
            (int(app), p, o): n
            for app, platforms in totals.platform_sends.items()
            for p, outcomes in platforms.items()
            for o, n in outcomes.items()
        },
        retries=dict(totals.retries),
    )


def _send_totals_move(*, through: dt.datetime):
    """Add the dispatches finished before ``through`` (and not yet summed) to the stored sums.

    Under the row's lock: of two web processes scraping at once, the second finds it done."""
    from delivery.models import Dispatch
    from operations.models import SendTotals

    with transaction.atomic():
        SendTotals.objects.bulk_create([SendTotals(pk=1)], ignore_conflicts=True)
        totals = SendTotals.objects.select_for_update().get(pk=1)
        if totals.through is not None and totals.through >= through - SUM_STEP:
            return totals
        finished = Dispatch.objects.filter(finished_at__lt=through)
        if totals.through is not None:
            finished = finished.filter(finished_at__gte=totals.through)
        figures = _stored(totals)
        figures.add(_figures(finished))
        totals.sends, totals.platform_sends = {}, {}
        for (app, outcome), n in figures.sends.items():
            totals.sends.setdefault(str(app), {})[outcome] = n
        for (app, platform, outcome), n in figures.platform_sends.items():
            totals.platform_sends.setdefault(str(app), {}).setdefault(platform, {})[outcome] = n
        totals.retries = figures.retries
        totals.through = through
        totals.save()
    return totals


def send_totals(*, now: dt.datetime) -> SendFigures:
    """Every dispatch's figures, summed: the stored sums of those finished more than an hour ago
    (moved forward here when due), plus the dispatches not in them, the running and the recent,
    read through their indexes. A scrape reads no more as the finished dispatches pile up."""
    from delivery.models import Dispatch
    from operations.models import SendTotals

    totals = SendTotals.objects.filter(pk=1).first()
    if totals is None or totals.through is None or totals.through < now - SUM_AFTER - SUM_STEP:
        totals = _send_totals_move(through=now - SUM_AFTER)
    figures = _stored(totals)
    figures.add(_figures(Dispatch.objects.filter(Q(finished_at__isnull=True) | Q(finished_at__gte=totals.through))))
    return figures


def _trigger_latency_seconds(*, now: dt.datetime) -> float:
    """The slowest API trigger, request to send: among the rows of trigger streams sent (accepted or
    failed) in the last minute, and the rows due at once (neither held back nor waiting for a retry)
    still waiting. A stream is opened once a day, so its own start says nothing of a trigger's wait.
    Rows quiet hours held (``Delivery.held_until``) are left out: their wait is the app's rules."""
    from delivery.models import Delivery, Dispatch

    since = now - dt.timedelta(seconds=60)
    streams = list(
        Dispatch.objects.filter(kind=Dispatch.Kind.API_TRIGGER, standing=True)
        .filter(Q(finished_at__isnull=True, status=Dispatch.Status.SENDING) | Q(finished_at__gte=since))
        .values_list("pk", flat=True)
    )
    if not streams:
        return 0.0
    rows = Delivery.objects.filter(dispatch_id__in=streams, queued_at__isnull=False)
    sent = rows.filter(
        finished_at__gte=since, held_until__isnull=True, status__in=(Delivery.Status.ACCEPTED, Delivery.Status.FAILED)
    ).aggregate(slowest=Max(ExpressionWrapper(F("finished_at") - F("queued_at"), output_field=DurationField())))
    slowest = sent["slowest"].total_seconds() if sent["slowest"] is not None else 0.0
    # The first row not finished, through the claim index: rows are appended in the order of their requests.
    waiting = (
        rows.filter(finished_at__isnull=True, next_attempt_at__isnull=True)
        .order_by("id")
        .values_list("queued_at", flat=True)
        .first()
    )
    if waiting is not None:
        slowest = max(slowest, (now - waiting).total_seconds())
    return max(slowest, 0.0)


# Whether a stored credential decrypts, by a digest of its token and of the keys tried: the same
# token under the same keys decrypts the same, so a scrape decrypts only a credential saved (or
# rotated) since the last one. A process's keys change only when it restarts (tests override them).
_DECRYPTS: dict[tuple[str, str], bool] = {}
_DECRYPTS_MAX = 10_000  # forgotten at once past this: a process that saw that many tokens starts over


def undecryptable_credentials() -> int:
    """How many stored app secrets (an APNs key, an FCM service account, an identity secret) the keys of
    PUSHDESK_ENCRYPTION_KEY cannot decrypt: ``status``'s secrets line, counted for every scrape.

    On PostgreSQL one statement reads each token's SHA-256, not the token (a service account's is
    about 3 KB), and a token is read and decrypted only the first time its digest is seen."""
    import hashlib

    from accounts.encryption import secret_decrypts
    from delivery.models import App
    from delivery.services.apps import STORED_SECRETS

    keys = hashlib.sha256(settings.PUSHDESK_ENCRYPTION_KEY.encode()).hexdigest()
    table, postgresql = App._meta.db_table, connection.vendor == "postgresql"
    if postgresql:  # the columns are Django's own names (constants)
        digests = ", ".join(f"encode(sha256(convert_to(NULLIF({c}, ''), 'UTF8')), 'hex')" for c in STORED_SECRETS)
    else:  # SQLite (the embedded mode: a few apps) has no digest: the tokens, digested here
        digests = ", ".join(STORED_SECRETS)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, {digests} FROM {table}")  # noqa: S608 (constants)
        stored = cursor.fetchall()
    if len(_DECRYPTS) > _DECRYPTS_MAX:
        _DECRYPTS.clear()
    failing = 0
    for pk, *values in stored:
        for column, value in zip(STORED_SECRETS, values, strict=True):
            if not value:
                continue
            token = None if postgresql else value
            digest = value if postgresql else hashlib.sha256(value.encode()).hexdigest()
            known = _DECRYPTS.get((keys, digest))
            if known is None:
                if token is None:
                    with connection.cursor() as cursor:
                        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])  # noqa: S608 (constants)
                        token = (cursor.fetchone() or [""])[0]
                    if not token:  # cleared, or the app deleted, since the digests were read
                        continue
                known = secret_decrypts(token)
                _DECRYPTS[keys, digest] = known
            failing += not known
    return failing


class PushdeskCollector:
    """Every series, computed when Prometheus scrapes."""

    def collect(self):
        from audiences.models import Import
        from audiences.services.imports import WAITING_FOR_A_WORKER
        from delivery.models import App, Device, Dispatch
        from operations.status import snapshot

        now = timezone.now()
        s = snapshot(now=now)
        yield GaugeMetricFamily("pushdesk_database_up", _DATABASE_UP_HELP, value=1)
        yield GaugeMetricFamily(
            "pushdesk_instance_claimed",
            "1 when the database is this instance's (it may send), else 0",
            value=0 if s.instance_problem else 1,
        )
        yield GaugeMetricFamily("pushdesk_queue_up", _QUEUE_UP_HELP, value=0 if s.queue_problem else 1)
        if not s.queue_problem:  # absent rather than a made-up 0 while the queue cannot be read
            yield GaugeMetricFamily("pushdesk_queue_depth", "Tasks waiting in the queue", value=s.queue_depth)
            yield GaugeMetricFamily(
                "pushdesk_queue_oldest_task_age_seconds", _OLDEST_HELP, value=s.oldest_task_age_seconds or 0
            )
        yield GaugeMetricFamily(
            "pushdesk_failed_tasks_last_hour",
            "Tasks that failed in the last hour",
            value=sum(s.failures_last_hour.values()),
        )
        yield GaugeMetricFamily(
            "pushdesk_event_replays",
            "Batches of stored events whose listener (journeys' entries and exits) failed, waiting to run it again",
            value=s.event_replays,
        )
        yield GaugeMetricFamily(
            "pushdesk_event_replay_oldest_age_seconds",
            "How long the oldest waiting event replay has waited (0 when none waits)",
            value=s.oldest_event_replay_age_seconds or 0,
        )
        yield GaugeMetricFamily(
            "pushdesk_retention_refusals",
            "What stops retention, which deletes nothing while there is one: segments, journey conditions and "
            "the conversion goals of campaigns and journeys that count events further back than "
            "PUSHDESK_RETENTION_EVENT_DAYS, and frequency caps that count deliveries further back than "
            "PUSHDESK_RETENTION_DELIVERY_DAYS (manage.py status names each)",
            value=len(s.retention_problems),
        )
        yield GaugeMetricFamily(
            "pushdesk_credentials_undecryptable",
            "App secrets (an APNs key, an FCM service account, an identity secret) that PUSHDESK_ENCRYPTION_KEY "
            "cannot decrypt: nothing is sent with them (manage.py status names them)",
            value=undecryptable_credentials(),
        )
        beat = GaugeMetricFamily(
            "pushdesk_beat_last_run_age_seconds",
            "Seconds since each schedule of the beat last ran; one that never ran counts from when it was due, "
            "one that is missing (deleted) is +Inf",
            labels=["schedule"],
        )
        for name, run in s.beat.items():
            if run["age_seconds"] is not None:
                beat.add_metric([name], run["age_seconds"])
            elif run["next_run"] is not None:  # no series would leave the alert nothing to fire on
                beat.add_metric([name], max((now - run["next_run"]).total_seconds(), 0.0))
        yield beat
        overdue = GaugeMetricFamily(
            "pushdesk_beat_overdue_seconds",
            "Seconds each schedule of the beat has been due without running (0 while it is not due): its next run "
            "not fired, or its interval since its last run passed; past Q_CLUSTER's timeout, 300 s, manage.py status "
            "calls it LATE; one that is missing (deleted) is +Inf",
            labels=["schedule"],
        )
        for name, run in s.beat.items():
            if run.get("missing"):
                overdue.add_metric([name], math.inf)
            else:
                due = run["due_since"]
                overdue.add_metric([name], max((now - due).total_seconds(), 0.0) if due is not None else 0.0)
        yield overdue
        # None while the queue cannot be read, or with PUSHDESK_TASKS_SYNC (no workers): no series, not a 0.
        workers = GaugeMetricFamily(
            "pushdesk_workers_seen",
            "qclusters reporting to this queue now (each saves its statistics every half second, kept 3 s); "
            "0: no worker runs tasks or the beat (manage.py status: NONE SEEN)",
        )
        if s.workers is not None:
            workers.add_metric([], len(s.workers))
        yield workers
        senders = GaugeMetricFamily(
            "pushdesk_sender_slot_heartbeat_age_seconds",
            "Seconds since each stream sender slot's last heartbeat (a send_stream process or a worker task beats "
            "every few seconds); +Inf when none in the last week; past 120 s manage.py status says NO HEARTBEAT",
            labels=["slot"],
        )
        for slot in s.senders or ():
            age = max(time.time() - slot.seen_at, 0.0) if slot.seen_at is not None else math.inf
            senders.add_metric([str(slot.slot)], age)
        yield senders

        names = dict(App.objects.values_list("pk", "name"))
        figures = send_totals(now=now)
        sends = CounterMetricFamily(
            "pushdesk_sends", "Deliveries that reached an outcome, by app and outcome", labels=["app", "outcome"]
        )
        for (app_id, outcome), n in sorted(figures.sends.items()):
            if app_id in names:  # the sums keep a deleted app's dispatches, as its series went with them
                sends.add_metric([names[app_id], outcome], n)
        yield sends
        by_platform = CounterMetricFamily(
            "pushdesk_platform_sends",
            "Deliveries that reached an outcome, by app, platform (ios, android; none: no device) and outcome. "
            "Accepted and failed move with each batch; skipped and unknown when a dispatch finishes",
            labels=["app", "platform", "outcome"],
        )
        for (app_id, platform, outcome), n in sorted(figures.platform_sends.items()):
            if app_id in names:
                by_platform.add_metric([names[app_id], platform, outcome], n)
        yield by_platform
        retries = CounterMetricFamily(
            "pushdesk_send_retries", "Sends retried, by the provider's reason", labels=["reason"]
        )
        for reason, n in sorted(figures.retries.items()):
            retries.add_metric([reason], n)
        yield retries
        # A gauge: a refused token registered again is alive, and the figure goes down. A token the
        # app itself unregistered (a sign-out: device_unregister's reason) was refused by no provider.
        dead = GaugeMetricFamily(
            "pushdesk_dead_tokens", "Devices whose token a provider refused for good, now", labels=["app"]
        )
        for app_id, n in (
            Device.objects.filter(invalidated_at__isnull=False)
            .exclude(invalidated_reason="unregistered")
            .values_list("app_id")
            .annotate(n=Count("id"))
            .order_by()
        ):
            dead.add_metric([names.get(app_id, str(app_id))], n)
        yield dead
        active = GaugeMetricFamily("pushdesk_dispatches", "Dispatches by status (unfinished ones)", labels=["status"])
        for status, n in Dispatch.objects.running().values_list("status").annotate(n=Count("id")).order_by():
            active.add_metric([status], n)
        yield active
        latency = GaugeMetricFamily(
            "pushdesk_trigger_latency_seconds",
            "API triggers: seconds from the request to the send, the slowest of those sent in the last minute "
            "and of those due and still waiting; rows held by quiet hours are left out",
        )
        latency.add_metric([], _trigger_latency_seconds(now=now))
        yield latency
        imports = GaugeMetricFamily(
            "pushdesk_import_rows", "Rows of running imports: done so far, and failed", labels=["import", "kind"]
        )
        # The same rows say which imports wait for a worker, and since when: no query more.
        oldest_wait = None
        for pk, done, failed, progressed_at, waits in (
            Import.objects.filter(status__in=("queued", "running"))
            .annotate(waits=ExpressionWrapper(WAITING_FOR_A_WORKER, output_field=BooleanField()))
            .values_list("pk", "rows_done", "rows_failed", "progressed_at", "waits")
        ):
            imports.add_metric([str(pk), "done"], done)
            imports.add_metric([str(pk), "failed"], failed)
            if waits and (oldest_wait is None or progressed_at < oldest_wait):
                oldest_wait = progressed_at
        yield imports
        # The counts are `manage.py status`' imports lines, from its snapshot: no query more.
        yield GaugeMetricFamily(
            "pushdesk_imports_not_taken_up",
            "Queued imports no worker has taken up for twice PUSHDESK_IMPORT_STALL_SECONDS since they were queued "
            "or last wrote a batch, however often the imports watchdog queued them again: no worker runs, or none "
            "reads their queue (manage.py status: NOT TAKEN UP)",
            value=len(s.imports_not_taken_up),
        )
        yield GaugeMetricFamily(
            "pushdesk_import_oldest_wait_seconds",
            "How long the queued import that has waited longest for a worker has waited since it was queued or "
            "last wrote a batch (0 when none waits); one waiting for its segment's turn behind another is left out",
            value=max((now - oldest_wait).total_seconds(), 0.0) if oldest_wait is not None else 0,
        )
        yield GaugeMetricFamily(
            "pushdesk_imports_stalled",
            "Imports under way whose worker stopped (no batch written for PUSHDESK_IMPORT_STALL_SECONDS): the "
            "imports watchdog takes each up again, or ends it, within a minute",
            value=len(s.stalled_imports),
        )
        yield GaugeMetricFamily(
            "pushdesk_import_oldest_stall_seconds",
            "How long the import stalled longest has written no batch (0 when none is stalled); past twice "
            "PUSHDESK_IMPORT_STALL_SECONDS the imports watchdog is not taking it up (manage.py status: NOT TAKEN UP)",
            value=max((record.seconds for record in s.stalled_imports), default=0),
        )


def metrics_response(request) -> HttpResponse:
    """The metrics in Prometheus' text format; 404 unless the token is configured and presented."""
    token = settings.PUSHDESK_METRICS_TOKEN
    scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
    if (
        not token
        or scheme.lower() != "bearer"  # HTTP's authentication schemes are case-insensitive
        or not hmac.compare_digest(presented.strip().encode(), token.encode())
    ):
        response = HttpResponse(status=404)
        response._has_been_logged = True
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PushdeskCollector())
    try:
        body = generate_latest(registry)
    except DatabaseError as exc:
        from operations.database import database_problem

        problem = database_problem(exc)
        if problem is None:  # the database answers: a collector's own error keeps its traceback
            raise
        body = _database_down_metrics(problem)
    response = HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


# Every scrape meets the database gone (Prometheus scrapes every 15 s or so): a line a minute says it.
_scrapes_down = SaidOnceAMinute()


def _database_down_metrics(problem: str) -> bytes:
    """What a scrape gets while the database cannot be read: ``pushdesk_database_up 0`` and the
    queue's figures that Redis alone gives, as exporters answer when what they watch is down (a
    failed scrape would say the web process is down). Logs a line a minute at most."""
    from operations.status import queue_depth_and_oldest_age

    if _scrapes_down.now_or_never("database") is not None:
        logger.error("/metrics: %s; serving pushdesk_database_up 0", problem)
    registry = CollectorRegistry(auto_describe=False)
    families = [GaugeMetricFamily("pushdesk_database_up", _DATABASE_UP_HELP, value=0)]
    if "redis" in settings.Q_CLUSTER:
        try:
            depth, age = queue_depth_and_oldest_age(now=timezone.now())
        except RedisError:  # Redis down too
            depth = age = None
        families.append(GaugeMetricFamily("pushdesk_queue_up", _QUEUE_UP_HELP, value=0 if depth is None else 1))
        if depth is not None:
            families.append(GaugeMetricFamily("pushdesk_queue_depth", "Tasks waiting in the queue", value=depth))
            families.append(GaugeMetricFamily("pushdesk_queue_oldest_task_age_seconds", _OLDEST_HELP, value=age or 0))

    class _Down:
        def collect(self):
            yield from families

    registry.register(_Down())
    return generate_latest(registry)
