"""Benchmark: the report charts of a campaign and of its dispatch, at 1,000,000 deliveries.

    .venv/bin/python bench/report_pages.py [--deliveries 1000000]

Uses the benchmark database (``BENCH_DATABASE_URL``, as bench/segments.py), created and migrated
if missing. Makes once an API-triggered campaign whose stream dispatch holds ``--deliveries``
rows (generate_series): 2,000 devices (half iOS, half Android) and 5% of profiles without one,
80% accepted, 5% failed, 15% skipped over three reasons, 10% opened, finished over 30 hours.
Then times, warm, the median of 5 requests through Django's test client, signed in as an
administrator: the campaign's page (its report and charts), the dispatch's page, and the charts'
figures alone (``delivery.reports.report_charts``, from the cache), then once computed again (as
after a new outcome). Prints one JSON line in milliseconds.
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


def ensure_send(deliveries: int, log) -> tuple:
    """The campaign and its dispatch, filled once (a different size makes them again)."""
    from django.db import connection
    from django.utils import timezone

    from accounts.models import User
    from audiences.models import Profile, Segment
    from campaigns.models import Campaign
    from delivery.models import App, Delivery, Device, Dispatch, PushContent

    user, _ = User.objects.get_or_create(username="bench", defaults={"is_superuser": True, "is_staff": True})
    if not user.is_superuser:
        user.is_superuser = user.is_staff = True
        user.save()
    campaign = Campaign.objects.filter(name=NAME).first()
    dispatch = Dispatch.objects.filter(label=NAME).first()
    if campaign is not None and dispatch is not None and dispatch.total == deliveries:
        return user, campaign, dispatch
    log(f"making {deliveries:,} deliveries")
    app = App.objects.create(name=NAME)
    content = PushContent.objects.create(app=app, name=NAME, title="Hello", body="Bench")
    campaign = Campaign.objects.create(
        name=NAME, app=app, kind=Campaign.Kind.API_TRIGGERED, segment=None, content=content, owner=user
    )
    Segment.objects.get_or_create(name=NAME, defaults={"kind": Segment.Kind.STATIC})
    profiles = Profile.objects.bulk_create([Profile(external_id=f"bench-report-{n}") for n in range(2_000)])
    devices = Device.objects.bulk_create(
        [
            Device(profile=p, app=app, platform="ios" if n % 2 else "android", token=f"{n:064x}")
            for n, p in enumerate(profiles)
        ]
    )
    dispatch = Dispatch.objects.create(
        app=app,
        kind=Dispatch.Kind.API_TRIGGER,
        source_id=campaign.pk,
        label=NAME,
        content_spec=content.spec(),
        status=Dispatch.Status.DONE,
        standing=True,
        total=deliveries,
    )
    first_device = devices[0].pk
    start = timezone.now() - timezone.timedelta(hours=31)
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {Delivery._meta.db_table}
              (dispatch_id, device_id, profile_id, status, reason, provider_message_id, attempts,
               finished_at, opened_at, queued_at)
            SELECT %s,
                   CASE WHEN n %% 20 = 0 THEN NULL ELSE %s + n %% 2000 END,
                   n,
                   CASE WHEN n %% 20 = 0 OR n %% 20 IN (1, 2) THEN 'skipped'
                        WHEN n %% 20 = 3 THEN 'failed' ELSE 'accepted' END,
                   CASE WHEN n %% 20 = 0 THEN 'no_device' WHEN n %% 20 = 1 THEN 'not_opted_in'
                        WHEN n %% 20 = 2 THEN 'frequency_cap' WHEN n %% 20 = 3 THEN 'Unregistered' ELSE '' END,
                   '', 1,
                   %s + make_interval(secs => n * 108000.0 / %s),
                   CASE WHEN n %% 10 = 5 THEN %s + make_interval(secs => n * 108000.0 / %s + 600) END,
                   %s + make_interval(secs => n * 108000.0 / %s)
            FROM generate_series(1, %s) AS n
            """,  # noqa: S608 (the table name is the model's)
            [dispatch.pk, first_device, start, deliveries, start, deliveries, start, deliveries, deliveries],
        )
        cursor.execute(f"ANALYZE {Delivery._meta.db_table}")
    log(f"inserted in {time.perf_counter() - started:.1f} s")
    return user, campaign, dispatch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    args = parser.parse_args()
    setup_django()
    from django.test import Client
    from django.utils import timezone

    from delivery.reports import _charts, report_charts

    user, campaign, dispatch = ensure_send(args.deliveries, log=lambda m: print(m, file=sys.stderr))
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

    result = {"benchmark": "report_pages", "deliveries": args.deliveries}
    result["campaign_page_ms"] = median_ms(page(f"/admin/campaigns/campaign/{campaign.pk}/change/"))
    result["dispatch_page_ms"] = median_ms(page(f"/admin/delivery/dispatch/{dispatch.pk}/change/"))
    result["report_charts_ms"] = median_ms(lambda: report_charts(dispatch_ids=[dispatch.pk]))
    started = time.perf_counter()  # once a row has finished or been opened: computed again
    _charts([dispatch.pk], timezone.get_current_timezone())
    result["report_charts_recomputed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    result["goal"] = "each page < 300 ms"
    result["met"] = result["campaign_page_ms"] < 300 and result["dispatch_page_ms"] < 300
    print(json.dumps(result))


if __name__ == "__main__":
    main()
