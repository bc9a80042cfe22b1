"""Benchmark: the journey engine, 100,000 profiles through entry → wait(0) → condition (segment) →
push / exit, with 2 worker processes, pushing to the push simulator (or to nginx).

    .venv/bin/python bench/journeys.py [--profiles 100000] [--targets sim|nginx]

On PostgreSQL and Redis (``BENCH_DATABASE_URL``, default a ``pushdesk_bench_journeys`` database
it creates and migrates; ``REDIS_URL``, default db 11). The audience is made once and reused: N
profiles with one device each (half iOS, half Android), a static entry segment of all of them
and a static "VIP" segment of half of them. Each run makes a fresh app, content and journey,
submits and approves it (the gate is the real one), reads the segment in (one ``INSERT …
SELECT``) and hands the due enrollments to a real ``qcluster`` with 2 workers, each running the
engine (``SELECT … FOR UPDATE SKIP LOCKED`` batches). The clock runs from the first engine task
until no enrollment is open; the pushes then finish through the send pipeline to the simulator,
or with ``--targets nginx`` to the nginx HTTP/2 + TLS endpoint of ``bench/support/nginx.py``, which
answers as APNs and FCM do without checking anything (for sizes where the simulator's own pace
would hold the pushes back).

Prints one JSON line: transitions/s (steps passed, from the enrollments' histories), the entry
time, the time until every push was answered, and the double-processing checks: enrollments
whose history is not exactly their path, devices with more than one journey delivery, tokens the
simulator received more than once (``null`` with nginx, which keeps no count of what it received).
"""

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/pushdesk_bench_journeys"
os.environ["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/11")
os.environ.pop("PUSHDESK_TASKS_SYNC", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from support.send_setup import (  # noqa: E402
    ensure_database,
    make_app,
    peak_memory_mb,
    sim_trust,
    start_workers,
    stop_workers,
)

PUSHES_WAIT_SECONDS = 600  # at least: a minute more per 100,000 profiles above 600,000


def ensure_audience(profiles: int):
    """N profiles with one device each in an entry segment; the even half also in a VIP segment."""
    from django.db import connection

    from audiences.models import Profile, Segment, SegmentMember
    from delivery.models import App, Device

    entry, _ = Segment.objects.get_or_create(name=f"Journey bench {profiles}", defaults={"kind": "static"})
    vips, _ = Segment.objects.get_or_create(name=f"Journey bench {profiles} VIPs", defaults={"kind": "static"})
    if SegmentMember.objects.filter(segment=entry).count() == profiles:
        return entry, vips
    holder, _ = App.objects.get_or_create(name="Bench devices")
    batch = 20_000
    for start in range(0, profiles, batch):
        made = Profile.objects.bulk_create(
            Profile(external_id=f"jbench-{profiles}-{n}", attributes={"first_name": f"User{n}"}, locale="en")
            for n in range(start, min(start + batch, profiles))
        )
        SegmentMember.objects.bulk_create(SegmentMember(segment=entry, profile=p) for p in made)
        SegmentMember.objects.bulk_create(SegmentMember(segment=vips, profile=p) for p in made if p.pk % 2 == 0)
        Device.objects.bulk_create(
            Device(
                profile=p,
                app=holder,
                platform="ios" if p.pk % 2 else "android",
                token=f"{p.pk:064x}" if p.pk % 2 else f"jbench-fcm-{p.pk:012d}:" + "x" * 140,
            )
            for p in made
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return entry, vips


def bench_users():
    from accounts.models import User

    users = []
    for name in ("bench-author", "bench-approver"):
        user, made = User.objects.get_or_create(username=name, defaults={"is_staff": True, "is_superuser": True})
        users.append(user)
    return users


def run(*, profiles: int, target: dict, log: Path) -> dict:
    """One run. ``target``: ``token_uri``, the workers' environment, and ``sim`` (the simulator) or None."""
    from django.db import connection
    from django.utils import timezone
    from django_q.conf import Conf
    from django_q.tasks import async_task

    from delivery.models import Dispatch, PushContent
    from delivery.payloads import spec_validate
    from journeys.models import Enrollment, Journey
    from journeys.services.entries import journey_enter_segment
    from journeys.services.lifecycle import journey_approve, journey_create, journey_submit

    entry, vips = ensure_audience(profiles)
    author, approver = bench_users()
    app, apns_public, fcm_public, info = make_app(token_uri=target["token_uri"], segment=entry)
    sim = target["sim"]
    if sim is not None:
        sim_trust(sim, apns_public, fcm_public, info)
    with connection.cursor() as cursor:
        # The devices' statistics after their move to the new app, and the room earlier runs left:
        # each run moves the devices and deletes its deliveries, and a server without autovacuum
        # (as on the test machines) would make every later run scan the dead rows (a claim of 500
        # rows took 2.2 s, the 100k run's pushes 78 s instead of 10).
        for table in ("delivery_device", "delivery_delivery", "journeys_enrollment", "audiences_profile"):
            cursor.execute(f"VACUUM ANALYZE {table}")  # noqa: S608 (constants)
    content = PushContent(app=app, name="Journey bench", title="Hello {{ profile.attributes.first_name }}", body="Hi")
    spec_validate(content.spec())
    content.save()
    graph = {
        "steps": [
            {"id": "start", "type": "wait", "seconds": 0, "next": "check"},
            {
                "id": "check",
                "type": "condition",
                "branches": [{"label": "VIP", "segment": vips.pk, "next": "push"}],
                "else": "done",
            },
            {"id": "push", "type": "push", "content": content.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    queue = f"jbench-{secrets.token_hex(3)}"
    os.environ["PUSHDESK_QUEUE_NAME"] = queue
    Conf.PREFIX = Conf.CLUSTER_NAME = queue
    journey = journey_create(
        by=author, name=f"Bench {queue}", app=app, entry_kind="segment", entry_segment=entry, graph=graph
    )
    journey_submit(journey_id=journey.pk, by=author)
    journey_approve(journey_id=journey.pk, by=approver)
    Journey.objects.filter(pk=journey.pk).update(next_entry_at=None)  # the queued entry task finds nothing due

    entry_started = time.perf_counter()
    Journey.objects.filter(pk=journey.pk).update(next_entry_at=timezone.now())
    entered = journey_enter_segment(journey_id=journey.pk)  # queues one engine task on commit
    entry_seconds = time.perf_counter() - entry_started
    env = {
        "PUSHDESK_QUEUE_NAME": queue,
        "PUSHDESK_WORKERS": "2",
        "PUSHDESK_SEND_TASKS": "2",
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        **target["env"],
    }
    async_task("journeys.tasks.journeys_run_due_task", q_options={"timeout": 240})  # the second engine
    workers = start_workers(env, log)
    finished = [status for status in Enrollment.Status.values if status not in Enrollment.OPEN_STATUSES]
    version_id = Journey.objects.values_list("live_version_id", flat=True).get(pk=journey.pk)
    try:
        # The clock starts when the first batch lands (the cluster takes a few seconds to start).
        # A finished enrollment is looked up through the (version, status) index: "not open" read
        # the journey's million open rows on every poll.
        while not Enrollment.objects.filter(version_id=version_id, status__in=finished).exists():
            if workers.poll() is not None:
                sys.exit(f"the workers stopped: {log.read_text()[-2000:]}")
            time.sleep(0.005)
        started = time.perf_counter()
        while Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES).exists():
            time.sleep(0.02)
        engine_seconds = time.perf_counter() - started
        deadline = time.perf_counter() + max(PUSHES_WAIT_SECONDS, profiles * 60 // 100_000)
        while Dispatch.objects.filter(kind="journey", app=app).exclude(status__in=Dispatch.FINAL_STATUSES).exists():
            if workers.poll() is not None:
                sys.exit(f"the workers stopped: {log.read_text()[-2000:]}")
            if time.perf_counter() > deadline:
                break  # reported below as dispatches not finished
            time.sleep(0.05)
        pushes_seconds = time.perf_counter() - started
        memory = peak_memory_mb(workers.pid)
    finally:
        stop_workers(workers)

    with connection.cursor() as cursor:
        cursor.execute(
            # A VIP's path is start, check, push, done; everyone else's start, check, done.
            "SELECT COALESCE(SUM(jsonb_array_length(history)), 0), "
            "COUNT(*) FILTER (WHERE jsonb_array_length(history) <> CASE WHEN profile_id %% 2 = 0 THEN 4 ELSE 3 END "
            "OR (history -> 2 ->> 0 = 'push') <> (profile_id %% 2 = 0)), "
            "COUNT(*) FILTER (WHERE status <> 'completed') "
            "FROM journeys_enrollment WHERE journey_id = %s",
            [journey.pk],
        )
        transitions, wrong_history, not_completed = cursor.fetchone()
        cursor.execute(
            "SELECT COUNT(*) FROM (SELECT d.device_id FROM delivery_delivery d JOIN delivery_dispatch x "
            "ON x.id = d.dispatch_id WHERE x.kind = 'journey' AND x.app_id = %s AND d.device_id IS NOT NULL "
            "GROUP BY d.device_id HAVING COUNT(*) > 1) twice",
            [app.pk],
        )
        (devices_twice,) = cursor.fetchone()
    dispatches = list(Dispatch.objects.filter(kind="journey", app=app).values_list("accepted", "failed", "unknown"))
    unfinished = Dispatch.objects.filter(kind="journey", app=app).exclude(status__in=Dispatch.FINAL_STATUSES).count()
    # nginx answers every request alike and counts nothing: a token received twice cannot be seen there.
    twice = sum(1 for n in sim.state.snapshot_counts().values() if n > 1) if sim is not None else None
    result = {
        "entered": entered,
        "entry_seconds": round(entry_seconds, 2),
        "transitions": transitions,
        "engine_seconds": round(engine_seconds, 2),
        "transitions_per_s": round(transitions / engine_seconds),
        "enrollments_per_s": round(entered / engine_seconds),
        "dispatches": len(dispatches),
        "dispatches_not_finished": unfinished,
        "pushes_accepted": sum(a for a, _, _ in dispatches),
        "pushes_failed": sum(f for _, f, _ in dispatches),
        "pushes_unknown": sum(u for _, _, u in dispatches),
        "until_pushes_answered_seconds": round(pushes_seconds, 2),
        "enrollments_not_completed": not_completed,
        "enrollments_with_wrong_history": wrong_history,
        "devices_with_two_journey_deliveries": devices_twice,
        "tokens_received_twice_at_simulator": twice,
        "worker_peak_mb": memory,
        "machine_load_1min": round(os.getloadavg()[0], 2),
    }
    result["processed_twice"] = bool(wrong_history or devices_twice or twice or not_completed)
    result["_dispatch_ids"] = list(Dispatch.objects.filter(kind="journey", app=app).values_list("pk", flat=True))
    return result


def cleanup(dispatch_ids: list[int]) -> None:
    """Drop this run's deliveries (the audience is reused; deliveries are not)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM delivery_delivery WHERE dispatch_id = ANY(%s)", [dispatch_ids])
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument(
        "--targets", choices=("sim", "nginx"), default="sim", help="where the pushes go: the simulator or nginx"
    )
    args = parser.parse_args()

    ensure_database()
    import django

    django.setup()

    workdir = Path(tempfile.mkdtemp(prefix="pushdesk-bench-"))
    os.chmod(workdir, 0o755)
    log = workdir / "workers.log"
    print(f"workers' log: {log}", file=sys.stderr)
    if args.targets == "nginx":
        from support.nginx import start_nginx

        proc, base, ca_path = start_nginx(workdir)
        target = {
            "sim": None,
            "token_uri": f"{base}/token",
            "env": {
                "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": base,
                "PUSHDESK_PUSHSIM_FCM_URL": base,
                "PUSHDESK_CA_BUNDLE": ca_path,
            },
        }
        stop = lambda: (proc.terminate(), proc.wait(10))  # noqa: E731
    else:
        from delivery.pushsim import PushSimulator

        sim = PushSimulator().start()
        target = {
            "sim": sim,
            "token_uri": sim.token_uri,
            "env": {
                "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": sim.apns_url("production"),
                "PUSHDESK_PUSHSIM_FCM_URL": sim.fcm_url(),
            },
        }
        stop = sim.stop
    try:
        result = run(profiles=args.profiles, target=target, log=log)
    finally:
        stop()
    dispatch_ids = result.pop("_dispatch_ids")
    print(
        json.dumps(
            {
                "benchmark": "journeys",
                "profiles": args.profiles,
                "targets": args.targets,
                "workers": 2,
                "batch": 1000,
                **result,
            }
        )
    )
    sys.stdout.flush()
    cleanup(dispatch_ids)


if __name__ == "__main__":
    main()
