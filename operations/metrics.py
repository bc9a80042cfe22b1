"""Prometheus metrics, read from the database and the queue at each scrape.

One endpoint on any web process sees the whole installation (every worker's sends, the queue, the
beat), so no per-process registry is needed. Served at ``/metrics`` when ``PUSHDESK_METRICS_TOKEN``
is set, to requests bearing it.
"""

from __future__ import annotations

import datetime as dt
import hmac

from django.conf import settings
from django.db import connection
from django.db.models import Count, DurationField, ExpressionWrapper, F, Max, Q, Sum
from django.http import HttpResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

OUTCOMES = ("accepted", "failed", "skipped", "unknown")


def _retries_by_reason() -> dict[str, int]:
    from delivery.models import Dispatch

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT r.key, SUM(r.value::bigint) FROM delivery_dispatch d, jsonb_each_text(d.retries) r "
                "WHERE d.retries <> '{}'::jsonb GROUP BY r.key"
            )
            return {key: int(total) for key, total in cursor.fetchall()}
    totals: dict[str, int] = {}
    for retries in Dispatch.objects.exclude(retries={}).values_list("retries", flat=True):
        for reason, n in (retries or {}).items():
            totals[reason] = totals.get(reason, 0) + int(n)
    return totals


def _sends_by_platform() -> dict[tuple[int, str, str], int]:
    """Final outcomes summed over every dispatch's ``by_platform``: {(app id, platform, outcome): n}."""
    from delivery.models import Dispatch

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT d.app_id, p.key, o.key, SUM(o.value::bigint) "
                "FROM delivery_dispatch d, jsonb_each(d.by_platform) p, jsonb_each_text(p.value) o "
                "WHERE d.by_platform <> '{}'::jsonb GROUP BY 1, 2, 3"
            )
            return {(app_id, platform, outcome): int(n) for app_id, platform, outcome, n in cursor.fetchall()}
    totals: dict[tuple[int, str, str], int] = {}
    for app_id, by_platform in Dispatch.objects.exclude(by_platform={}).values_list("app_id", "by_platform"):
        for platform, outcomes in (by_platform or {}).items():
            for outcome, n in outcomes.items():
                totals[app_id, platform, outcome] = totals.get((app_id, platform, outcome), 0) + int(n)
    return totals


def _trigger_latency_seconds(*, now: dt.datetime) -> float:
    """The slowest API trigger, request to send: among the rows of trigger streams sent (accepted or
    failed) in the last minute, and the rows due at once (neither held back nor waiting for a retry)
    still waiting. A stream is opened once a day, so its own start says nothing of a trigger's wait."""
    from delivery.models import Delivery, Dispatch

    since = now - dt.timedelta(seconds=60)
    streams = list(
        Dispatch.objects.filter(kind=Dispatch.Kind.API_TRIGGER, standing=True)
        .filter(Q(status=Dispatch.Status.SENDING) | Q(finished_at__gte=since))
        .values_list("pk", flat=True)
    )
    if not streams:
        return 0.0
    rows = Delivery.objects.filter(dispatch_id__in=streams, queued_at__isnull=False)
    sent = rows.filter(finished_at__gte=since, status__in=(Delivery.Status.ACCEPTED, Delivery.Status.FAILED)).aggregate(
        slowest=Max(ExpressionWrapper(F("finished_at") - F("queued_at"), output_field=DurationField()))
    )
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


class PushdeskCollector:
    """Every series, computed when Prometheus scrapes."""

    def collect(self):
        from audiences.models import Import
        from delivery.models import App, Device, Dispatch
        from operations.status import snapshot

        now = timezone.now()
        s = snapshot(now=now)
        yield GaugeMetricFamily(
            "pushdesk_instance_claimed",
            "1 when the database is this instance's (it may send), else 0",
            value=0 if s.instance_problem else 1,
        )
        yield GaugeMetricFamily(
            "pushdesk_queue_up", "1 when the queue (Redis) answers, else 0", value=0 if s.queue_problem else 1
        )
        if not s.queue_problem:  # absent rather than a made-up 0 while the queue cannot be read
            yield GaugeMetricFamily("pushdesk_queue_depth", "Tasks waiting in the queue", value=s.queue_depth)
            yield GaugeMetricFamily(
                "pushdesk_queue_oldest_task_age_seconds",
                "How long the oldest waiting task has waited (0 when none waits)",
                value=s.oldest_task_age_seconds or 0,
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
        beat = GaugeMetricFamily(
            "pushdesk_beat_last_run_age_seconds",
            "Seconds since each schedule of the beat last ran; one that never ran counts from when it was due",
            labels=["schedule"],
        )
        for name, run in s.beat.items():
            if run["age_seconds"] is not None:
                beat.add_metric([name], run["age_seconds"])
            elif run["next_run"] is not None:  # no series would leave the alert nothing to fire on
                beat.add_metric([name], max((now - run["next_run"]).total_seconds(), 0.0))
        yield beat

        names = dict(App.objects.values_list("pk", "name"))
        sends = CounterMetricFamily(
            "pushdesk_sends", "Deliveries that reached an outcome, by app and outcome", labels=["app", "outcome"]
        )
        totals = Dispatch.objects.values("app_id").annotate(**{o: Sum(o) for o in OUTCOMES}).order_by()
        for row in totals:
            for outcome in OUTCOMES:
                sends.add_metric([names.get(row["app_id"], str(row["app_id"])), outcome], row[outcome] or 0)
        yield sends
        by_platform = CounterMetricFamily(
            "pushdesk_platform_sends",
            "Deliveries that reached an outcome, by app, platform (ios, android; none: no device) and outcome. "
            "Accepted and failed move with each batch; skipped and unknown when a dispatch finishes",
            labels=["app", "platform", "outcome"],
        )
        for (app_id, platform, outcome), n in sorted(_sends_by_platform().items()):
            by_platform.add_metric([names.get(app_id, str(app_id)), platform, outcome], n)
        yield by_platform
        retries = CounterMetricFamily(
            "pushdesk_send_retries", "Sends retried, by the provider's reason", labels=["reason"]
        )
        for reason, n in sorted(_retries_by_reason().items()):
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
        for status, n in (
            Dispatch.objects.filter(status__in=Dispatch.RUNNING_STATUSES)
            .values_list("status")
            .annotate(n=Count("id"))
            .order_by()
        ):
            active.add_metric([status], n)
        yield active
        latency = GaugeMetricFamily(
            "pushdesk_trigger_latency_seconds",
            "API triggers: seconds from the request to the send, the slowest of those sent in the last minute "
            "and of those due and still waiting",
        )
        latency.add_metric([], _trigger_latency_seconds(now=now))
        yield latency
        imports = GaugeMetricFamily(
            "pushdesk_import_rows", "Rows of running imports: done so far, and failed", labels=["import", "kind"]
        )
        for pk, done, failed in Import.objects.filter(status__in=("queued", "running")).values_list(
            "pk", "rows_done", "rows_failed"
        ):
            imports.add_metric([str(pk), "done"], done)
            imports.add_metric([str(pk), "failed"], failed)
        yield imports


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
    response = HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response
