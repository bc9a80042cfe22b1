"""Benchmark: the send pipeline end to end, 100,000 devices (half iOS, half Android), 2 worker processes.

    .venv/bin/python bench/delivery.py [--devices 100000[,1000000]] [--targets sim,nginx] [--workers 2]

On PostgreSQL and Redis (``BENCH_DATABASE_URL``, default a ``pushdesk_bench_delivery`` database it
creates and migrates; ``REDIS_URL``, default db 7). A static segment of N profiles, each with
one device, is sent a personalized push through the whole pipeline: ``dispatch_create`` (gate,
frozen content), the resolving ``INSERT … SELECT``, send tasks in a real ``qcluster`` with 2
workers (``--workers``) that claim, render, send over HTTP/2 and write outcomes back in bulk. The clock runs
from ``dispatch_create`` until the dispatch is ``done``.

Targets: (a) ``sim``, the push simulator (h2c on loopback, JWT and OAuth checked); (b)
``nginx``, an nginx HTTP/2 + TLS endpoint answering as APNs and FCM do, with h2load's rate on
the same endpoint in the same run for reference. Prints one JSON line: messages/s per target,
the ratio to h2load, and the workers' peak memory (VmHWM).

Per message, for the resolve and for the whole run: the workers' CPU, PostgreSQL's CPU (the
server processes of this database, read from /proc, sampled while the run goes; the shared
WAL writer, checkpointer and background writer apart) and the WAL written
(``pg_current_wal_lsn()`` before and after: the whole cluster's, so exact on a quiet machine).
With several sizes (``--devices 100000,1000000``) each runs in turn, and ``growth`` gives the
time of each against the first's, beside the ratio of their sizes.
"""

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/pushdesk_bench_delivery"
os.environ["DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/7")
os.environ.pop("PUSHDESK_TASKS_SYNC", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from support.send_setup import (  # noqa: E402 (after the environment it reads)
    cpu_seconds,
    ensure_database,
    make_app,
    peak_memory_mb,
    sim_trust,
    start_workers,
    stop_workers,
)

WAL_BY_DATABASE = False  # --wal-by-database
WORKERS = 2  # --workers


def ensure_audience(devices: int):
    """N profiles in a static segment, each with one device (half iOS): made once, reused."""
    from django.db import connection

    from audiences.models import Profile, Segment, SegmentMember
    from delivery.models import App, Device

    segment, _ = Segment.objects.get_or_create(name=f"Bench {devices}", defaults={"kind": Segment.Kind.STATIC})
    if SegmentMember.objects.filter(segment=segment).count() == devices:
        return segment
    holder, _ = App.objects.get_or_create(name="Bench devices")
    batch = 20_000
    for start in range(0, devices, batch):
        profiles = Profile.objects.bulk_create(
            Profile(external_id=f"bench-{devices}-{n}", attributes={"first_name": f"User{n}"}, locale="en")
            for n in range(start, min(start + batch, devices))
        )
        SegmentMember.objects.bulk_create(SegmentMember(segment=segment, profile=p) for p in profiles)
        Device.objects.bulk_create(
            Device(
                profile=p,
                app=holder,
                platform="ios" if p.pk % 2 else "android",
                token=f"{p.pk:064x}" if p.pk % 2 else f"bench-fcm-{p.pk:012d}:" + "x" * 140,
            )
            for p in profiles
        )
    with connection.cursor() as cursor:  # the statistics an autovacuum'd server has after such a load
        cursor.execute("ANALYZE audiences_profile, audiences_segmentmember")
    return segment


def _proc_cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])


class PostgresMeter:
    """PostgreSQL's CPU and WAL over a run, from /proc and ``pg_current_wal_lsn()``.

    The backends of the benchmark's database (the workers', autovacuum's) come and go: each is
    read at every ``sample()``, and a backend first seen after ``start()`` counts from zero (it
    was born in the run). The meter's own connection is left out. The WAL writer, checkpointer
    and background writer serve every database of the server: counted apart (``background``).
    """

    BACKGROUND = ("walwriter", "checkpointer", "background writer")

    def __init__(self, dsn_kwargs: dict, *, wal_by_database: bool = False):
        import psycopg

        self.conn = psycopg.connect(**dsn_kwargs, autocommit=True)
        self.own = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        # On a busy server the cluster's WAL is everyone's: pg_walinspect sorts out this database's
        # records (those touching its relations), read every second while the run goes.
        self.wal_by_database = wal_by_database
        self.wal_ours = 0
        self.wal_read_to = None
        self.wal_read_at = 0.0
        if wal_by_database:
            self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            self.db_oid = self.conn.execute(
                "SELECT oid FROM pg_database WHERE datname = current_database()"
            ).fetchone()[0]
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.background_first: dict[int, int] = {}
        self.background_last: dict[int, int] = {}
        self.lsn_start = None

    def _pids(self) -> tuple[list[int], list[int]]:
        rows = self.conn.execute(
            "SELECT pid, datname = current_database(), backend_type FROM pg_stat_activity WHERE pid <> %s",
            [self.own],
        ).fetchall()
        ours = [pid for pid, same_db, _ in rows if same_db]
        background = [pid for pid, _, kind in rows if kind in self.BACKGROUND]
        return ours, background

    def start(self) -> None:
        ours, background = self._pids()
        for pid in ours:
            ticks = _proc_cpu_ticks(pid)
            if ticks is not None:
                self.first[pid] = self.last[pid] = ticks
        for pid in background:
            ticks = _proc_cpu_ticks(pid)
            if ticks is not None:
                self.background_first[pid] = self.background_last[pid] = ticks
        self.lsn_start = self.conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        self.wal_read_to = self.conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()[0]

    def _read_wal(self, *, force: bool = False) -> None:
        if not self.wal_by_database or (not force and time.monotonic() - self.wal_read_at < 1.0):
            return
        self.wal_read_at = time.monotonic()
        # pg_walinspect reads what is flushed; the start is read the same way.
        end, ahead = self.conn.execute(
            "SELECT pg_current_wal_flush_lsn(), pg_current_wal_flush_lsn() > %s", [self.wal_read_to]
        ).fetchone()
        if not ahead:
            return
        ours = self.conn.execute(
            "SELECT coalesce(sum(record_length), 0) FROM pg_get_wal_records_info(%s, %s) WHERE block_ref LIKE %s",
            [self.wal_read_to, end, f"%/{self.db_oid}/%"],
        ).fetchone()[0]
        self.wal_ours += int(ours)
        self.wal_read_to = end

    def sample(self) -> None:
        self._read_wal()
        ours, background = self._pids()
        for pid in ours:
            ticks = _proc_cpu_ticks(pid)
            if ticks is not None:
                self.first.setdefault(pid, 0)
                self.last[pid] = ticks
        for pid in background:
            ticks = _proc_cpu_ticks(pid)
            if ticks is not None:
                self.background_first.setdefault(pid, ticks)
                self.background_last[pid] = ticks

    def read(self) -> dict:
        """CPU seconds (this database's backends, and the shared background processes) and WAL bytes so far."""
        self.sample()
        self._read_wal(force=True)
        tick = os.sysconf("SC_CLK_TCK")
        wal = self.conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [self.lsn_start]).fetchone()[0]
        if self.wal_by_database:
            wal = self.wal_ours
        return {
            "cpu_s": sum(self.last[p] - self.first[p] for p in self.last) / tick,
            "background_cpu_s": sum(self.background_last[p] - self.background_first[p] for p in self.background_last)
            / tick,
            "wal_bytes": int(wal),
        }

    def close(self) -> None:
        self.conn.close()


def _dsn_kwargs() -> dict:
    import dj_database_url

    db = dj_database_url.parse(os.environ["DATABASE_URL"])
    return {
        "host": db["HOST"] or "127.0.0.1",
        "port": db["PORT"] or 5432,
        "user": db["USER"],
        "password": db["PASSWORD"] or None,
        "dbname": db["NAME"],
    }


def _per_message(before: dict, after: dict, messages: int) -> dict:
    n = max(messages, 1)
    return {
        "pg_cpu_us_per_message": round((after["cpu_s"] - before["cpu_s"]) / n * 1e6, 1),
        "pg_background_cpu_us_per_message": round(
            (after["background_cpu_s"] - before["background_cpu_s"]) / n * 1e6, 1
        ),
        "wal_bytes_per_message": round((after["wal_bytes"] - before["wal_bytes"]) / n),
    }


def bench_content(app):
    """The benchmark's push: a title greeting each profile by an attribute, the rest plain text."""
    from delivery.models import PushContent
    from delivery.payloads import spec_validate

    content = PushContent(
        app=app,
        name="Bench",
        title="Hello {{ profile.attributes.first_name | default: 'there' }}",
        body="Our spring sale starts today: 30% off everything.",
        tap_action="deep_link",
        tap_url="pushdesk://sale",
        data={"campaign": "bench"},
    )
    spec_validate(content.spec())
    content.save()
    return content


def run(target: str, segment, devices: int, workers_env: dict, log: Path, ca: str = "") -> dict:
    from django.db import connection

    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_create, dispatch_gate_register, dispatch_recount

    token_uri = workers_env.pop("_token_uri")
    app, apns_public, fcm_public, info = make_app(token_uri=token_uri, segment=segment)
    if target == "sim":
        sim_trust(workers_env.pop("_sim"), apns_public, fcm_public, info)
    content = bench_content(app)
    with connection.cursor() as cursor:  # a fair start: no dead rows left by an earlier run,
        cursor.execute("VACUUM ANALYZE delivery_delivery")
        # The devices were just moved to this run's app: their old versions are dead rows the
        # resolve's scan would step over (and set hints on) unless vacuumed; and fresh statistics.
        cursor.execute("VACUUM ANALYZE delivery_device")
        # Moving them rewrote each of their profiles' reach (a trigger): the same for the profiles,
        # whose old versions the resolve's read of the audience would otherwise prune as it goes.
        cursor.execute("VACUUM ANALYZE audiences_profile")
        # And the setup's writes on disk before the clock starts (as pgbench does), not in a
        # checkpoint the run pays for.
        cursor.execute("CHECKPOINT")
    queue = f"bench-{secrets.token_hex(3)}"
    env = {
        "PUSHDESK_QUEUE_NAME": queue,
        "PUSHDESK_WORKERS": str(WORKERS),
        "PUSHDESK_SEND_TASKS": str(WORKERS),
        "PUSHDESK_SEND_BATCH": os.environ.get("PUSHDESK_SEND_BATCH", "2000"),
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        **workers_env,
    }
    workers = start_workers(env, log)
    time.sleep(3)  # the cluster starts its processes
    os.environ["PUSHDESK_QUEUE_NAME"] = queue
    from django_q.conf import Conf

    Conf.PREFIX = Conf.CLUSTER_NAME = queue
    dispatch_gate_register(kind=Dispatch.Kind.API_TRIGGER, gate=lambda **kwargs: None)
    meter = PostgresMeter(_dsn_kwargs(), wal_by_database=WAL_BY_DATABASE)
    try:
        meter.start()
        pg_start = meter.read()
        cpu_before = cpu_seconds(workers.pid)
        started = time.perf_counter()
        dispatch = dispatch_create(
            app_id=app.pk, kind=Dispatch.Kind.API_TRIGGER, spec=content.spec(), segment_id=segment.pk, label="bench"
        )
        sending_at = None
        pg_resolved = worker_cpu_resolved = None
        while True:
            status = Dispatch.objects.filter(pk=dispatch.pk).values_list("status", flat=True).get()
            if status != Dispatch.Status.PREPARING and sending_at is None:
                sending_at = time.perf_counter()
                pg_resolved, worker_cpu_resolved = meter.read(), cpu_seconds(workers.pid)
            if status in Dispatch.FINAL_STATUSES:
                break
            if workers.poll() is not None:
                sys.exit(f"the workers stopped: {log.read_text()[-2000:]}")
            meter.sample()
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        pg_end = meter.read()
        memory = peak_memory_mb(workers.pid)
        worker_cpu = cpu_seconds(workers.pid) - cpu_before
    finally:
        stop_workers(workers)
        meter.close()
    dispatch = dispatch_recount(dispatch_id=dispatch.pk)
    with connection.cursor() as cursor:  # the next run starts from an empty table, as this one did
        cursor.execute("DELETE FROM delivery_delivery WHERE dispatch_id = %s", [dispatch.pk])
    connection.close()
    return {
        "messages_per_s": round(dispatch.accepted / elapsed),
        "seconds": round(elapsed, 2),
        "resolve_seconds": round((sending_at or started) - started, 2),
        "accepted": dispatch.accepted,
        "failed": dispatch.failed,
        "unknown": dispatch.unknown,
        "worker_peak_mb": memory,
        # The workers' own CPU per message: what they need whatever else runs on the machine.
        "worker_cpu_us_per_message": round(worker_cpu / max(dispatch.accepted, 1) * 1e6, 1),
        **_per_message(pg_start, pg_end, dispatch.accepted),
        # The resolving INSERT … SELECT alone (PostgreSQL's side of it), per row it wrote.
        "resolve": {
            "worker_cpu_us_per_message": round((worker_cpu_resolved - cpu_before) / max(dispatch.total, 1) * 1e6, 1),
            **_per_message(pg_start, pg_resolved, dispatch.total),
        },
        "machine_load_1min": round(os.getloadavg()[0], 2),
    }


def run_size(devices: int, targets: list[str], workdir: Path, log: Path) -> dict:
    """Every target at one audience size."""
    segment = ensure_audience(devices)
    result: dict = {}
    if "sim" in targets:
        from delivery.pushsim import PushSimulator

        sim = PushSimulator().start()
        try:
            result["simulator"] = run(
                "sim",
                segment,
                devices,
                {
                    "_sim": sim,
                    "_token_uri": sim.token_uri,
                    "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": sim.apns_url("production"),
                    "PUSHDESK_PUSHSIM_FCM_URL": sim.fcm_url(),
                },
                log,
            )
        finally:
            sim.stop()
    if "nginx" in targets:
        from support.nginx import h2load, start_nginx

        proc, base, ca_path = start_nginx(workdir)
        try:
            before = h2load(base, min(devices, 1_000_000), workdir)
            result["nginx"] = run(
                "nginx",
                segment,
                devices,
                {
                    "_token_uri": f"{base}/token",
                    "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": base,
                    "PUSHDESK_PUSHSIM_FCM_URL": base,
                    "PUSHDESK_CA_BUNDLE": ca_path,
                },
                log,
            )
            reference = (before + h2load(base, min(devices, 1_000_000), workdir)) / 2
            result["nginx"]["h2load_requests_per_s"] = round(reference)
            result["nginx"]["ratio_to_h2load"] = round(result["nginx"]["messages_per_s"] / reference, 3)
        finally:
            proc.terminate()
            proc.wait(10)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="100000", help="audience sizes, run in turn: 100000,1000000")
    parser.add_argument("--targets", default="sim,nginx")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (qcluster), one send task each")
    parser.add_argument(
        "--wal-by-database",
        action="store_true",
        help="count only this database's WAL (pg_walinspect; costs CPU while the run goes): for a busy server",
    )
    args = parser.parse_args()
    global WAL_BY_DATABASE, WORKERS
    WAL_BY_DATABASE, WORKERS = args.wal_by_database, args.workers
    targets = args.targets.split(",")
    sizes = [int(n) for n in args.devices.split(",")]

    ensure_database()
    import django

    django.setup()
    workdir = Path(tempfile.mkdtemp(prefix="pushdesk-bench-"))
    os.chmod(workdir, 0o755)
    log = workdir / "workers.log"
    result: dict = {"benchmark": "delivery", "devices": sizes[0] if len(sizes) == 1 else sizes, "workers": WORKERS}
    result["wal"] = "this database's records" if WAL_BY_DATABASE else "the whole cluster's"
    print(f"workers' log: {log}", file=sys.stderr)
    try:
        runs = {devices: run_size(devices, targets, workdir, log) for devices in sizes}
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    if len(sizes) == 1:
        result.update(runs[sizes[0]])
    else:
        result["runs"] = {str(devices): found for devices, found in runs.items()}
        # Time of each size against the first's, in the same invocation; linear growth is the ratio of sizes.
        first = runs[sizes[0]]
        result["growth"] = {
            target: {
                str(devices): {
                    "size_ratio": round(devices / sizes[0], 2),
                    "time_ratio": round(runs[devices][target]["seconds"] / first[target]["seconds"], 2),
                    "resolve_ratio": round(
                        runs[devices][target]["resolve_seconds"] / max(first[target]["resolve_seconds"], 0.01), 2
                    ),
                }
                for devices in sizes[1:]
            }
            for target in first
        }
    result["goal"] = {
        "messages_per_s": 20000,
        "time_ratio_at_10x": 10.5,
        "resolve_seconds_at_1m": 5,
        "worker_peak_mb_at_1m": 300,
    }
    if "nginx" in targets:
        nginx = {devices: runs[devices]["nginx"] for devices in sizes}
        met = {
            "messages_per_s": all(r["messages_per_s"] >= 20000 for r in nginx.values()),
            "worker_peak_mb": all(r["worker_peak_mb"] < 300 for r in nginx.values()),
        }
        if 1_000_000 in nginx:
            met["resolve_seconds_at_1m"] = nginx[1_000_000]["resolve_seconds"] < 5
        if len(sizes) > 1:
            met["growth"] = all(g["time_ratio"] <= 1.05 * g["size_ratio"] for g in result["growth"]["nginx"].values())
        result["met"] = met
    print(json.dumps(result))


if __name__ == "__main__":
    main()
