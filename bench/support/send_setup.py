"""What the send benchmarks (``bench/delivery.py``, ``bench/journeys.py``) set up alike: their
database, an app with fresh credentials that the push simulator trusts, the worker cluster, and
its CPU time and peak memory read from /proc."""

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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


def sim_trust(sim, apns_public: str, fcm_public: str, info: dict) -> None:
    """Make the push simulator accept the benchmark app's APNs key and FCM service account."""
    sim.state.add_apns_key(key_id=KEY_ID, team_id=TEAM_ID, public_key_pem=apns_public, topics=[BUNDLE_ID])
    sim.state.add_service_account(
        client_email=info["client_email"],
        private_key_id=info["private_key_id"],
        project_id=PROJECT_ID,
        public_key_pem=fcm_public,
    )


def make_app(*, token_uri: str, segment):
    """A fresh app with freshly made credentials; the devices of the segment's profiles move to it
    (those of another size's audience stay behind: the app holds this run's devices only)."""
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
    from audiences.models import SegmentMember

    members = SegmentMember.objects.filter(segment=segment).values("profile_id")
    Device.objects.filter(app__name__startswith="Bench", profile_id__in=members).exclude(app=app).update(app=app)
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


def _process_tree(pid: int, name: str):
    """Each live process of the tree under ``pid`` (itself included), as its /proc file ``name``."""
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            text = Path(f"/proc/{current}/{name}").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        yield text
        todo += [int(c) for c in children]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (the worker processes), in seconds."""
    ticks = 0
    for stat in _process_tree(pid, "stat"):
        fields = stat.rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def peak_memory_mb(pid: int) -> float:
    """The largest VmHWM among a process and its descendants, in MB."""
    peak = 0
    for status in _process_tree(pid, "status"):
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return round(peak / 1024, 1)
