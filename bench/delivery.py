"""Benchmark: the send pipeline end to end, 100,000 devices (half iOS, half Android), 2 worker processes.

    .venv/bin/python bench/delivery.py [--devices 100000] [--targets sim,nginx]

On PostgreSQL and Redis (``BENCH_DATABASE_URL``, default a ``pushdesk_bench_delivery`` database it
creates and migrates; ``REDIS_URL``, default db 7). A static segment of N profiles, each with
one device, is sent a personalized push through the whole pipeline: ``dispatch_create`` (gate,
frozen content), the resolving ``INSERT … SELECT``, send tasks in a real ``qcluster`` with 2
workers that claim, render, send over HTTP/2 and write outcomes back in bulk. The clock runs
from ``dispatch_create`` until the dispatch is ``done``.

Targets: (a) ``sim``, the push simulator (h2c on loopback, JWT and OAuth checked); (b)
``nginx``, an nginx HTTP/2 + TLS endpoint answering as APNs and FCM do, with h2load's rate on
the same endpoint in the same run for reference. Prints one JSON line: messages/s per target,
the ratio to h2load, and the workers' peak memory (VmHWM).
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
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

TEAM_ID, KEY_ID, BUNDLE_ID, PROJECT_ID = "BENCHTEAM1", "BENCHKEY01", "com.pushdesk.bench", "pushdesk-bench"


def ensure_database() -> None:
    import dj_database_url
    import psycopg

    db = dj_database_url.parse(os.environ["DATABASE_URL"])
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname="postgres", autocommit=True
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone():
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, check=True)


def ensure_audience(devices: int):
    """N profiles in a static segment, each with one device (half iOS): made once, reused."""
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
    return segment


def make_app(*, token_uri: str):
    """A fresh app with freshly made credentials; the bench devices move to it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from delivery.models import Device
    from delivery.services.apps import apns_key_parse, app_create, service_account_parse

    apns_key = ec.generate_private_key(ec.SECP256R1())
    fcm_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    info = {
        "type": "service_account",
        "project_id": PROJECT_ID,
        "private_key_id": secrets.token_hex(20),
        "private_key": fcm_key.private_bytes(pem, pkcs8, serialization.NoEncryption()).decode(),
        "client_email": f"bench@{PROJECT_ID}.iam.gserviceaccount.com",
        "token_uri": token_uri,
    }
    app = app_create(
        name=f"Bench {secrets.token_hex(4)}",
        by=None,
        rate_limit_per_second=1_000_000,
        uses_simulator=True,
        apns_team_id=TEAM_ID,
        apns_key_id=KEY_ID,
        apns_bundle_id=BUNDLE_ID,
        apns_private_key=apns_key_parse(raw=apns_key.private_bytes(pem, pkcs8, serialization.NoEncryption())),
        fcm_service_account=service_account_parse(raw=json.dumps(info).encode()),
    )
    Device.objects.filter(app__name__startswith="Bench").exclude(app=app).update(app=app)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    return app, apns_key.public_key().public_bytes(pem, public), fcm_key.public_key().public_bytes(pem, public), info


def start_workers(env_extra: dict, log: Path) -> subprocess.Popen:
    env = {**os.environ, **env_extra}
    return subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=env,
        stdout=open(log, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_workers(workers: subprocess.Popen) -> None:
    """Stop the cluster's whole process group: politely, then for good."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(workers.pid, sig)
            workers.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (the worker processes), in seconds."""
    total = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        todo += [int(c) for c in children]
    return total / os.sysconf("SC_CLK_TCK")


def peak_memory_mb(pid: int) -> float:
    """The largest VmHWM among a process and its descendants, in MB."""
    peak = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
        todo += [int(c) for c in children]
    return round(peak / 1024, 1)


def run(target: str, segment, devices: int, workers_env: dict, log: Path, ca: str = "") -> dict:
    from django.db import connection

    from delivery.models import Delivery, Dispatch, PushContent
    from delivery.payloads import spec_validate
    from delivery.services.dispatches import dispatch_create, dispatch_gate_register, dispatch_recount

    token_uri = workers_env.pop("_token_uri")
    app, apns_public, fcm_public, info = make_app(token_uri=token_uri)
    if target == "sim":
        sim = workers_env.pop("_sim")
        sim.state.add_apns_key(key_id=KEY_ID, team_id=TEAM_ID, public_key_pem=apns_public, topics=[BUNDLE_ID])
        sim.state.add_service_account(
            client_email=info["client_email"],
            private_key_id=info["private_key_id"],
            project_id=PROJECT_ID,
            public_key_pem=fcm_public,
        )
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
    with connection.cursor() as cursor:  # a fair start: no dead rows left by an earlier run
        cursor.execute("VACUUM ANALYZE delivery_delivery")
    queue = f"bench-{secrets.token_hex(3)}"
    env = {
        "PUSHDESK_QUEUE_NAME": queue,
        "PUSHDESK_WORKERS": "2",
        "PUSHDESK_SEND_TASKS": "2",
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
    try:
        cpu_before = cpu_seconds(workers.pid)
        started = time.perf_counter()
        dispatch = dispatch_create(
            app_id=app.pk, kind=Dispatch.Kind.API_TRIGGER, spec=content.spec(), segment_id=segment.pk, label="bench"
        )
        sending_at = None
        while True:
            status = Dispatch.objects.filter(pk=dispatch.pk).values_list("status", flat=True).get()
            if status == Dispatch.Status.SENDING and sending_at is None:
                sending_at = time.perf_counter()
            if status in Dispatch.FINAL_STATUSES:
                break
            if workers.poll() is not None:
                sys.exit(f"the workers stopped: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        memory = peak_memory_mb(workers.pid)
        worker_cpu = cpu_seconds(workers.pid) - cpu_before
    finally:
        stop_workers(workers)
    dispatch = dispatch_recount(dispatch_id=dispatch.pk)
    Delivery.objects.filter(dispatch=dispatch).delete()
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
        "machine_load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--targets", default="sim,nginx")
    args = parser.parse_args()
    targets = args.targets.split(",")

    ensure_database()
    import django

    django.setup()
    segment = ensure_audience(args.devices)
    workdir = Path(tempfile.mkdtemp(prefix="pushdesk-bench-"))
    os.chmod(workdir, 0o755)
    log = workdir / "workers.log"
    result: dict = {"benchmark": "delivery", "devices": args.devices, "workers": 2}
    print(f"workers' log: {log}", file=sys.stderr)
    try:
        if "sim" in targets:
            from delivery.pushsim import PushSimulator

            sim = PushSimulator().start()
            try:
                result["simulator"] = run(
                    "sim",
                    segment,
                    args.devices,
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
            import importlib.util

            spec = importlib.util.spec_from_file_location("bench_gateway", ROOT / "bench" / "gateway.py")
            gateway = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(gateway)
            h2load, start_nginx = gateway.h2load, gateway.start_nginx

            proc, base, ca_path = start_nginx(workdir)
            try:
                before = h2load(base, args.devices, workdir)
                result["nginx"] = run(
                    "nginx",
                    segment,
                    args.devices,
                    {
                        "_token_uri": f"{base}/token",
                        "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": base,
                        "PUSHDESK_PUSHSIM_FCM_URL": base,
                        "PUSHDESK_CA_BUNDLE": ca_path,
                    },
                    log,
                )
                reference = (before + h2load(base, args.devices, workdir)) / 2
                result["nginx"]["h2load_requests_per_s"] = round(reference)
                result["nginx"]["ratio_to_h2load"] = round(result["nginx"]["messages_per_s"] / reference, 3)
            finally:
                proc.terminate()
                proc.wait(10)
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(workdir, ignore_errors=True)
    result["goal"] = {"messages_per_s": 10000, "worker_peak_mb_at_1m": 300}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
