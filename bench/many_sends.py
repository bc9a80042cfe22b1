"""Benchmark: reports over many settled sends (an API-triggered campaign live for months, a journey
whose push step sends a batch at each run of the engine).

    .venv/bin/python bench/many_sends.py [--sends 180] [--rows 5000] [--batches 2000] [--batch-rows 250]
                                         [--profiles 200000] [--events 2000000] [--rebuild]
                                         [--anchor accepted|opened]

Uses its own PostgreSQL database (``BENCH_DATABASE_URL``, default
postgres://postgres@127.0.0.1:5432/pushdesk_bench_many_sends), created and migrated if missing,
and fills it once, set-based with generate_series: ``--profiles`` profiles; an API-triggered
campaign with variants A and B and a 10% holdout, a conversion goal (purchase within 24 h of
acceptance), and ``--sends`` finished daily standing dispatches of ``--rows`` rows each (the
profiles drawn again each day, so most recur); a journey version with a goal and two push steps
whose ``--batches`` finished dispatches hold ``--batch-rows`` rows each; ``--events`` events over
the whole span, a tenth of them purchases; a tenth of the accepted rows opened within two hours.
The goal's anchor is ``--anchor`` for the run: the acceptance, or the open.

Then, for the campaign's report (``campaigns.reports.campaign_report``) and the journey version's
step conversions (``journeys.selectors.version_step_conversions``), in milliseconds:

- ``first_view_ever``: nothing counted yet (the cache cleared, no figure kept on a dispatch);
- ``warm``: the median of 5 views after it, nothing changed;
- ``after_event``: the first view after a goal event is posted (as a live campaign's keep coming);
- ``after_new_send``: the first view after one more send settles (a day's dispatch, a batch),
  what each new day (or each run of the engine) costs the first reader, checked against a count
  from nothing over the same sends (``recount_ms``, ``grown_equals_recount``);
- ``after_outcome``: the first view after a new outcome of a send still under way (an open
  dispatch of one batch's size beside the settled ones);
- ``after_open``: the first view after a push of a settled send is opened (with ``--anchor opened``,
  the goal's anchor, opens keep coming long after a send settles), checked against a count from
  nothing (``open_equals_recount``), the open then taken back;
- ``charts``: the median of 5 reads of the report pages' charts (``delivery.reports.report_charts``:
  the timeline per day over the whole span, from the rollup's ``rollup_rows`` rows).

The sends added are deleted at the end (the data stays for the next run). Prints one JSON line,
with the figures of each view (they must not change but by what was added) and the load average.
"""

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support.opens import record_open  # noqa: E402

from bench.segments import indexes_dropped, setup_django  # noqa: E402

DATABASE = "pushdesk_bench_many_sends"  # its own (``setup_django``)

NAME = "bench many sends"
START = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
STEPS = ("welcome", "reminder")

PROFILES = """
INSERT INTO audiences_profile (external_id, attributes, locale, timezone, created_at, updated_at)
SELECT 'many-' || n, '{}'::jsonb, '', '', now(), now() FROM generate_series(1, %(n)s) n
"""
# One row per (send, n): each send's profiles spread over all of them from an offset of its own, none
# twice in a send (a step of 7919, a prime, while the profiles are not a multiple of it). A profile's
# variant is its own in every send, as the split draws it: profile % 10 = 0 the holdout (campaign
# only), else 1 + profile % 2; row n % 20 = 1 failed, the others accepted.
ROWS = """
INSERT INTO delivery_delivery (dispatch_id, device_id, profile_id, status, reason, provider_message_id,
                               attempts, finished_at, queued_at, variant)
SELECT r.id, NULL, r.profile,
  CASE WHEN %(holdout)s AND r.profile %% 10 = 0 THEN 'skipped' WHEN r.n %% 20 = 1 THEN 'failed' ELSE 'accepted' END,
  CASE WHEN %(holdout)s AND r.profile %% 10 = 0 THEN 'holdout' WHEN r.n %% 20 = 1 THEN 'Unregistered' ELSE '' END,
  '', 1, r.created_at + make_interval(secs => r.n * %(spread)s / %(n)s),
  CASE WHEN %(standing)s THEN r.created_at END,
  CASE WHEN NOT %(holdout)s THEN NULL WHEN r.profile %% 10 = 0 THEN 0 ELSE 1 + r.profile %% 2 END
FROM (SELECT d.id, d.created_at, n, %(first)s + (n * 7919 + d.id * 104729) %% %(profiles)s AS profile
      FROM delivery_dispatch d, generate_series(1, %(n)s) n WHERE d.id = ANY(%(dispatches)s)) r
"""
EVENTS = """
INSERT INTO audiences_event (profile_id, name, properties, occurred_at, received_at)
SELECT %(first)s + floor(random() * %(profiles)s)::bigint,
  CASE WHEN random() < 0.1 THEN 'purchase' ELSE 'app_open' END, '{}'::jsonb,
  %(start)s + random() * (%(end)s - %(start)s), now()
FROM generate_series(1, %(n)s)
"""


# A tenth of the accepted rows opened, within two hours of their acceptance; each dispatch's counter.
OPENS = """
WITH opened AS (
  UPDATE delivery_delivery SET opened_at = finished_at + make_interval(mins => (id %% 120)::int)
  WHERE dispatch_id = ANY(%(dispatches)s) AND status = 'accepted' AND abs(hashint8(id)) %% 10 = 3
  RETURNING dispatch_id
)
UPDATE delivery_dispatch d SET opened = o.n FROM (SELECT dispatch_id, count(*) n FROM opened GROUP BY 1) o
WHERE d.id = o.dispatch_id
"""


def ensure_data(args, log) -> dict:
    """The campaign, the journey version, their sends and the events, made once per size."""
    from django.db import connection

    from accounts.models import User
    from audiences.models import Profile
    from campaigns.models import Campaign
    from delivery.models import App, Delivery, Dispatch, PushContent
    from delivery.services.rollups import rollup_rebuild
    from journeys.models import Journey, JourneyVersion

    size = {k: getattr(args, k) for k in ("sends", "rows", "batches", "batch_rows", "profiles", "events")}
    campaign = Campaign.objects.filter(name=NAME).first()
    journey = Journey.objects.filter(name=NAME).first()
    if (
        not args.rebuild
        and campaign is not None
        and journey is not None
        and _size_of(campaign, journey, events_wanted=args.events) == size
    ):
        if not Delivery.objects.filter(opened_at__isnull=False).exists():  # made before the opens were
            log("opening a tenth of the accepted rows...")
            ids = list(Dispatch.objects.filter(label__startswith=NAME).values_list("pk", flat=True))
            with connection.cursor() as cursor:
                cursor.execute(OPENS, {"dispatches": ids})
            rollup_rebuild()  # every dispatch's, in one pass: the database is the benchmark's own
        return {"campaign": campaign, "version": journey.versions.get(), "generated": False}
    log(f"generating {size}...")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("TRUNCATE delivery_delivery, audiences_event, audiences_profile RESTART IDENTITY CASCADE")
    Dispatch.objects.filter(label__startswith=NAME).delete()
    Campaign.objects.filter(name=NAME).delete()
    Journey.objects.filter(name=NAME).delete()
    user, _ = User.objects.get_or_create(username="bench")
    app, _ = App.objects.get_or_create(name=NAME)
    content, _ = PushContent.objects.get_or_create(app=app, name=NAME, defaults={"title": "Hello", "body": "Bench"})
    goal = {"conversion_event": "purchase", "conversion_window_hours": 24, "conversion_anchor": "accepted"}
    campaign = Campaign.objects.create(
        name=NAME,
        app=app,
        content=content,
        owner=user,
        holdout_share=10,
        kind=Campaign.Kind.API_TRIGGERED,
        **goal,
    )
    journey = Journey.objects.create(name=NAME, app=app, owner=user, **goal)
    version = JourneyVersion.objects.create(journey=journey, number=1, graph={"steps": []})
    spec = content.spec()
    days = [
        Dispatch(
            app=app,
            kind=Dispatch.Kind.API_TRIGGER,
            source_id=campaign.pk,
            label=f"{NAME}: day {day}",
            content_spec=spec,
            status=Dispatch.Status.DONE,
            standing=True,
            total=args.rows,
            holdout_share=10,
            created_at=START + dt.timedelta(days=day),
        )
        for day in range(args.sends)
    ]
    batch_seconds = args.sends * 86400 / max(args.batches, 1)
    batches = [
        Dispatch(
            app=app,
            kind=Dispatch.Kind.JOURNEY,
            source_id=version.pk,
            label=f"{NAME}: batch {batch}",
            content_spec=spec,
            context={"journey": {"id": journey.pk, "version": 1, "step": STEPS[batch % 2]}},
            status=Dispatch.Status.DONE,
            total=args.batch_rows,
            created_at=START + dt.timedelta(seconds=batch * batch_seconds),
        )
        for batch in range(args.batches)
    ]
    Dispatch.objects.bulk_create(days + batches, batch_size=2000)
    with connection.cursor() as cursor:
        with indexes_dropped(cursor, ["audiences_profile", "audiences_event", "delivery_delivery"]):
            cursor.execute("SELECT setseed(0.23)")
            cursor.execute(PROFILES, {"n": args.profiles})
            first = Profile.objects.order_by("pk").values_list("pk", flat=True).first()
            common = {"first": first, "profiles": args.profiles}
            cursor.execute(
                ROWS,
                {
                    **common,
                    "holdout": True,
                    "standing": True,
                    "spread": 86000.0,
                    "n": args.rows,
                    "dispatches": [d.pk for d in days],
                },
            )
            cursor.execute(
                ROWS,
                {
                    **common,
                    "holdout": False,
                    "standing": False,
                    "spread": 60.0,
                    "n": args.batch_rows,
                    "dispatches": [d.pk for d in batches],
                },
            )
            end = START + dt.timedelta(days=args.sends + 1)
            cursor.execute(EVENTS, {**common, "start": START, "end": end, "n": args.events})
        cursor.execute(OPENS, {"dispatches": [d.pk for d in days + batches]})
        rollup_rebuild()  # every dispatch's, in one pass: the database is the benchmark's own
        for table in ("audiences_profile", "audiences_event", "delivery_delivery", "delivery_dispatch"):
            cursor.execute(f"VACUUM ANALYZE {table}")
    log(f"generated in {time.perf_counter() - started:.1f} s")
    return {
        "campaign": campaign,
        "version": version,
        "generated": True,
        "generated_s": round(time.perf_counter() - started, 1),
    }


def _size_of(campaign, journey, *, events_wanted: int) -> dict:
    """The sizes the data was made with (events estimated: within 5% counts as the same)."""
    from django.db import connection

    from audiences.models import Profile
    from delivery.models import Dispatch

    def sends(kind, source_id) -> tuple[int, int]:
        totals = list(Dispatch.objects.filter(kind=kind, source_id=source_id).values_list("total", flat=True)[:1])
        return Dispatch.objects.filter(kind=kind, source_id=source_id).count(), (totals or [0])[0]

    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'audiences_event'")
        events = cursor.fetchone()[0]
    (days, rows), (batches, batch_rows) = (
        sends(Dispatch.Kind.API_TRIGGER, campaign.pk),
        sends(Dispatch.Kind.JOURNEY, journey.versions.get().pk),
    )
    return {
        "sends": days,
        "rows": rows,
        "batches": batches,
        "batch_rows": batch_rows,
        "profiles": Profile.objects.count(),
        "events": events if abs(events - events_wanted) > events_wanted * 0.05 else events_wanted,
    }


def _added(like, *, rows: int, status: str, label: str):
    """One more send of ``like``'s report: a dispatch a day (or a batch) after the last, with ``rows`` rows."""
    from django.db import connection

    from audiences.models import Profile
    from delivery.models import Dispatch
    from delivery.services.rollups import rollup_rebuild

    last = Dispatch.objects.filter(kind=like.kind, source_id=like.source_id).order_by("-created_at").first()
    dispatch = Dispatch.objects.create(
        app_id=like.app_id,
        kind=like.kind,
        source_id=like.source_id,
        label=f"{NAME}: {label}",
        content_spec=like.content_spec,
        context=like.context,
        status=status,
        standing=like.standing,
        total=rows,
        holdout_share=like.holdout_share,
        created_at=last.created_at + dt.timedelta(hours=1),
    )
    first = Profile.objects.order_by("pk").values_list("pk", flat=True).first()
    with connection.cursor() as cursor:
        cursor.execute(
            ROWS,
            {
                "first": first,
                "profiles": Profile.objects.count(),
                "holdout": like.kind != Dispatch.Kind.JOURNEY,
                "standing": like.standing,
                "spread": 60.0,
                "n": rows,
                "dispatches": [dispatch.pk],
            },
        )
    rollup_rebuild(dispatch_ids=[dispatch.pk])
    return dispatch


def _new_outcome(dispatch) -> None:
    """A row of a send under way settles, as the send tasks record it (the row, the counters)."""
    from django.db.models import F
    from django.utils import timezone

    from delivery.models import Delivery, Dispatch

    row = Delivery.objects.filter(dispatch_id=dispatch.pk, status="queued").values_list("pk", flat=True).first()
    Delivery.objects.filter(pk=row).update(status="accepted", finished_at=timezone.now())
    Dispatch.objects.filter(pk=dispatch.pk).update(accepted=F("accepted") + 1)


def _timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    value = call()
    return round((time.perf_counter() - started) * 1000, 1), value


def measure(view, *, like, rows: int) -> dict:
    """The four views of one report (see the module's docstring)."""
    from django.core.cache import cache
    from django.db import connection

    from audiences.models import Event
    from delivery.models import Delivery, Dispatch, DispatchProfiles

    DispatchProfiles.objects.filter(dispatch__kind=like.kind, dispatch__source_id=like.source_id).delete()
    cache.clear()
    out = {}
    out["first_view_ever_ms"], figures = _timed(view)
    warm = [_timed(view)[0] for _ in range(5)]
    out["warm_ms"] = statistics.median(warm)
    out["figures"] = figures
    added, opened = [], None
    try:
        # A goal event posted now (a live campaign's purchases keep coming): its conversions counted again.
        reached = Delivery.objects.filter(dispatch_id=like.pk, status="accepted").values_list("profile_id", flat=True)[
            0
        ]
        event = Event.objects.create(
            profile_id=reached, name="purchase", properties={}, occurred_at=like.created_at + dt.timedelta(hours=1)
        )
        out["after_event_ms"], grown = _timed(view)
        cache.clear()
        out["event_grown_equals_recount"] = view() == grown
        event.delete()
        view()  # the deletion counted (whole: a deleted event cannot be grown from)
        added.append(_added(like, rows=rows, status=Dispatch.Status.DONE, label="new send"))
        out["after_new_send_ms"], out["figures_after_new_send"] = _timed(view)
        out["after_new_send_warm_ms"] = _timed(view)[0]
        # The figures grown from the last ones must be those of a count from nothing.
        DispatchProfiles.objects.filter(dispatch__kind=like.kind, dispatch__source_id=like.source_id).delete()
        cache.clear()
        out["recount_ms"], recounted = _timed(view)
        out["grown_equals_recount"] = recounted == out["figures_after_new_send"]
        sending = _added(like, rows=rows, status=Dispatch.Status.SENDING, label="sending")
        added.append(sending)
        Delivery.objects.filter(dispatch_id=sending.pk).update(status="queued", finished_at=None, reason="")
        view()  # the send under way counted once
        _new_outcome(sending)
        out["after_outcome_ms"], figures = _timed(view)
        cache.clear()
        out["outcome_equals_recount"] = view() == figures
        view()  # kept again
        opened = record_open(like)
        out["after_open_ms"], figures = _timed(view)
        cache.clear()
        out["open_equals_recount"] = view() == figures
    finally:
        with connection.cursor() as cursor:
            for dispatch in added:
                cursor.execute("DELETE FROM delivery_delivery WHERE dispatch_id = %s", [dispatch.pk])
        Dispatch.objects.filter(pk__in=[d.pk for d in added]).delete()
        if opened is not None:
            _open_taken_back(like, opened)
    return out


def _open_taken_back(dispatch, row: int) -> None:
    from django.db.models import F

    from delivery.models import Delivery, Dispatch
    from delivery.services.rollups import rollup_rebuild

    Delivery.objects.filter(pk=row).update(opened_at=None)
    Dispatch.objects.filter(pk=dispatch.pk).update(opened=F("opened") - 1)
    rollup_rebuild(dispatch_ids=[dispatch.pk])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sends", type=int, default=180, help="the campaign's daily dispatches")
    parser.add_argument("--rows", type=int, default=5000, help="rows per daily dispatch")
    parser.add_argument("--batches", type=int, default=2000, help="the journey version's dispatches")
    parser.add_argument("--batch-rows", type=int, default=250, help="rows per journey dispatch")
    parser.add_argument("--profiles", type=int, default=200_000)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--anchor", choices=("accepted", "opened"), default="accepted", help="the goal's anchor")
    args = parser.parse_args()
    setup_django(DATABASE)
    from campaigns.reports import campaign_report
    from delivery.models import DeliveryRollup, Dispatch
    from delivery.reports import report_charts
    from journeys.selectors import version_step_conversions

    made = ensure_data(args, log=lambda m: print(m, file=sys.stderr))
    campaign, version = made.pop("campaign"), made.pop("version")
    for owner in (campaign, version.journey):
        type(owner).objects.filter(pk=owner.pk).update(conversion_anchor=args.anchor)
        owner.refresh_from_db()
    result = {
        "benchmark": "many_sends",
        **{k: getattr(args, k) for k in ("sends", "rows", "batches", "batch_rows", "profiles", "events", "anchor")},
        **made,
    }

    def campaign_view():
        report = campaign_report(campaign)
        return {
            "variants": [v["profiles"] for v in report["variants"]],
            "holdout": report["holdout"],
            "conversions": report["conversions"]["overall"],
        }

    day = Dispatch.objects.filter(kind=Dispatch.Kind.API_TRIGGER, source_id=campaign.pk).first()
    result["campaign"] = measure(campaign_view, like=day, rows=args.rows)
    batch = Dispatch.objects.filter(kind=Dispatch.Kind.JOURNEY, source_id=version.pk).first()
    result["journey"] = measure(lambda: version_step_conversions(version), like=batch, rows=args.batch_rows)
    # The charts of both pages (the timeline per day over the whole span), from the rollup.
    for key, like in (("campaign", day), ("journey", batch)):
        ids = list(Dispatch.objects.filter(kind=like.kind, source_id=like.source_id).values_list("pk", flat=True))
        result[key]["charts_ms"] = statistics.median(
            _timed(lambda ids=ids: report_charts(dispatch_ids=ids))[0] for _ in range(5)
        )
        result[key]["rollup_rows"] = DeliveryRollup.objects.filter(dispatch_id__in=ids).count()
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
