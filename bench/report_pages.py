"""Benchmark: the home page and the report pages (campaign, dispatch, journey) at 10,000,000 deliveries.

    .venv/bin/python bench/report_pages.py [--deliveries 10000000]

Uses the benchmark database (``BENCH_DATABASE_URL``, as bench/segments.py), created and migrated
if missing. Makes once per size, with generate_series: an API-triggered campaign whose stream
dispatch holds 90% of ``--deliveries`` rows, and a live journey whose push step's dispatch holds
the other 10%; 2,000 devices (half iOS, half Android), profiles spread over 1,000,000 ids, 5% of
rows without a device, 80% accepted, 5% failed, 15% skipped over three reasons, 10% opened, over
the last 30 hours. Their rollup is then counted as the migration's backfill does
(``rollup_rebuild``). Times, warm, the median of 5 requests through Django's test client, signed
in as an administrator: the home page, the campaign's page (its report and charts), the stream
dispatch's page, the journey's page, and the charts' figures alone. Prints one JSON line in
milliseconds, with the generation's seconds when it made the data and the load average.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("ALLOWED_HOSTS", "testserver")
os.environ.setdefault("DEBUG", "0")

from bench.segments import setup_django  # noqa: E402

NAME = "bench reports"
SPAN_SECONDS = 30 * 3600
PROFILE_IDS = 1_000_000


def _users():
    from accounts.models import User

    users = []
    for name in ("bench", "bench-approver"):
        user, _ = User.objects.get_or_create(username=name, defaults={"is_superuser": True, "is_staff": True})
        if not user.is_superuser:
            user.is_superuser = user.is_staff = True
            user.save()
        users.append(user)
    return users


def _fill(cursor, *, dispatch_id: int, first_device: int, rows: int, offset: int, start) -> None:
    """``rows`` deliveries of one dispatch, spread over the span; ``offset`` shifts the outcome pattern."""
    from delivery.models import Delivery

    cursor.execute(
        f"""
        INSERT INTO {Delivery._meta.db_table}
          (dispatch_id, device_id, profile_id, status, reason, provider_message_id, attempts,
           finished_at, opened_at, queued_at)
        SELECT %s,
               CASE WHEN m %% 20 = 0 THEN NULL ELSE %s + m %% 2000 END,
               1 + m %% {PROFILE_IDS},
               CASE WHEN m %% 20 = 0 OR m %% 20 IN (1, 2) THEN 'skipped'
                    WHEN m %% 20 = 3 THEN 'failed' ELSE 'accepted' END,
               CASE WHEN m %% 20 = 0 THEN 'no_device' WHEN m %% 20 = 1 THEN 'not_opted_in'
                    WHEN m %% 20 = 2 THEN 'frequency_cap' WHEN m %% 20 = 3 THEN 'Unregistered' ELSE '' END,
               '', 1,
               %s + make_interval(secs => n * {SPAN_SECONDS}.0 / %s + 2),
               CASE WHEN m %% 10 = 5 THEN %s + make_interval(secs => n * {SPAN_SECONDS}.0 / %s + 600) END,
               %s + make_interval(secs => n * {SPAN_SECONDS}.0 / %s)
        FROM generate_series(1, %s) AS n, LATERAL (SELECT n + %s AS m) AS shifted
        """,  # noqa: S608 (the table name is the model's, the numbers constants)
        [dispatch_id, first_device, start, rows, start, rows, start, rows, rows, offset],
    )


def ensure_send(deliveries: int, log) -> tuple:
    """The campaign, its stream, the journey and its push step's dispatch, filled once per size."""
    from django.db import connection
    from django.utils import timezone

    from audiences.models import Profile
    from campaigns.models import Campaign
    from delivery.models import App, Delivery, Device, Dispatch, PushContent
    from delivery.services.rollups import rollup_rebuild
    from journeys.models import Journey
    from journeys.services.lifecycle import journey_approve, journey_create, journey_submit

    user, approver = _users()
    name = f"{NAME} {deliveries}"
    campaign = Campaign.objects.filter(name=name).first()
    journey = Journey.objects.filter(name=name).first()
    if campaign is not None and journey is not None:
        stream = Dispatch.objects.filter(label=name, kind=Dispatch.Kind.API_TRIGGER).first()
        if stream is not None:
            return user, campaign, stream, journey, {}
    log(f"making {deliveries:,} deliveries")
    timings = {}
    app = App.objects.create(name=name)
    content = PushContent.objects.create(app=app, name=name, title="Hello", body="Bench")
    campaign = Campaign.objects.create(
        name=name, app=app, kind=Campaign.Kind.API_TRIGGERED, segment=None, content=content, owner=user
    )
    journey = journey_create(
        by=user,
        name=name,
        app=app,
        entry_kind="event",
        entry_event="bench_report_order",
        graph={
            "steps": [
                {"id": "push", "type": "push", "content": content.pk, "next": "done"},
                {"id": "done", "type": "exit"},
            ]
        },
    )
    journey_submit(journey_id=journey.pk, by=user)
    version = journey_approve(journey_id=journey.pk, by=approver)
    profiles = Profile.objects.bulk_create([Profile(external_id=f"{name}-{n}") for n in range(2_000)])
    devices = Device.objects.bulk_create(
        [
            Device(profile=p, app=app, platform="ios" if n % 2 else "android", token=f"{deliveries:08x}{n:056x}")
            for n, p in enumerate(profiles)
        ]
    )
    in_journey = deliveries // 10
    stream = Dispatch.objects.create(
        app=app,
        kind=Dispatch.Kind.API_TRIGGER,
        source_id=campaign.pk,
        label=name,
        content_spec=content.spec(),
        status=Dispatch.Status.DONE,
        standing=True,
        total=deliveries - in_journey,
    )
    step = Dispatch.objects.create(
        app=app,
        kind=Dispatch.Kind.JOURNEY,
        source_id=version.pk,
        label=f"{name} · push",
        content_spec=content.spec(),
        context={"journey": {"id": journey.pk, "name": name, "version": version.number, "step": "push"}},
        status=Dispatch.Status.DONE,
        standing=True,
        total=in_journey,
    )
    start = timezone.now() - timezone.timedelta(seconds=SPAN_SECONDS + 3600)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        _fill(
            cursor,
            dispatch_id=stream.pk,
            first_device=devices[0].pk,
            rows=deliveries - in_journey,
            offset=0,
            start=start,
        )
        _fill(cursor, dispatch_id=step.pk, first_device=devices[0].pk, rows=in_journey, offset=7, start=start)
        timings["insert_s"] = round(time.perf_counter() - started, 1)
        log(f"inserted in {timings['insert_s']} s")
        started = time.perf_counter()
        rollup_rebuild(dispatch_ids=[stream.pk, step.pk])
        timings["rollup_s"] = round(time.perf_counter() - started, 1)
        log(f"rolled up in {timings['rollup_s']} s")
        cursor.execute(f"ANALYZE {Delivery._meta.db_table}")
    return user, campaign, stream, journey, timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    args = parser.parse_args()
    setup_django()
    from django.test import Client
    from django.utils import timezone

    from delivery.models import Delivery, DeliveryRollup
    from delivery.reports import report_charts

    made_at = time.perf_counter()
    user, campaign, stream, journey, timings = ensure_send(args.deliveries, log=lambda m: print(m, file=sys.stderr))
    client = Client()
    client.force_login(user)

    def median_ms(call) -> float:
        call()
        times = []
        for _ in range(5):
            started = time.perf_counter()
            call()
            times.append((time.perf_counter() - started) * 1000)
        return round(statistics.median(times), 1)

    def page(url: str):
        def get():
            response = client.get(url)
            assert response.status_code == 200, (url, response.status_code)

        return get

    result = {"benchmark": "report_pages", "deliveries": Delivery.objects.count()}
    if timings:
        result["generated_s"] = round(time.perf_counter() - made_at, 1)
        result.update(timings)
    result["rollup_rows"] = DeliveryRollup.objects.count()
    pages = {
        "home_page_ms": "/admin/",
        "campaign_page_ms": f"/admin/campaigns/campaign/{campaign.pk}/change/",
        "dispatch_page_ms": f"/admin/delivery/dispatch/{stream.pk}/change/",
        "journey_page_ms": f"/admin/journeys/journey/{journey.pk}/change/",
    }
    for key, url in pages.items():
        result[key] = median_ms(page(url))
    result["report_charts_ms"] = median_ms(
        lambda: report_charts(dispatch_ids=[stream.pk], tz=timezone.get_current_timezone())
    )
    result["load_average"] = Path("/proc/loadavg").read_text().split()[:3]
    result["goal"] = "each page < 300 ms"
    result["met"] = all(result[key] < 300 for key in pages)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
