"""Benchmark: events ingest through the API, ``POST /api/v1/events/bulk/``, 1,000 events per call.

    .venv/bin/python bench/events.py [--events 400000] [--clients 4] [--profiles 100000]
        [--database pushdesk_bench_events] [--redis-db 14] [--profile-calls 20]

Uses its own database (``--database``, dropped and created afresh) and Redis database
(``--redis-db``, emptied). Creates ``--profiles`` profiles and an API key with the ``ingest``
scope, then starts the web server (``config.web``) in production mode (2 workers x 4 threads, as
behind a TLS proxy) and posts from ``--clients`` concurrent clients (threads, one keep-alive connection each). Half of each
call's events are for profiles that exist, half for profiles that do not exist yet (each call
brings 500 new ones). The request bodies are built before the clock starts; a few calls warm the
workers up first and are not counted.

Prints one JSON line: events/s, the latency of a call (p50, p99, max), the web's and PostgreSQL's
CPU per call during the run, and that every event was accepted and stored. Then (unless
``--profile-calls 0``) the same calls one at a time in one process, unloaded: the web's and its
PostgreSQL backend's CPU per call, and where the web's time goes (cProfile).
"""

import argparse
import http.client
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support.http_load import BackendCpu, free_port, tree_cpu

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PER_CALL = 1000
NAMES = ("app_open", "purchase", "add_to_cart", "page_view", "search")

SETUP = r"""
import json
from django.contrib.auth.models import Group
from audiences.models import Profile
from accounts.models import User
from accounts.services import api_key_create

manager = User.objects.create_user("bench_manager", is_staff=True)
manager.groups.add(Group.objects.get(name="Manager"))
for start in range(0, N, 10000):
    Profile.objects.bulk_create(
        [Profile(external_id=f"known-{i}", attributes={"plan": "free"}) for i in range(start, min(N, start + 10000))]
    )
_, raw = api_key_create(user=manager, name="bench", scopes=["ingest"], by=manager)
print(json.dumps({"key": raw}))
"""

# The calls one at a time in this process (Django's test client, the same middleware and view),
# first unprofiled for the CPU figures, then under cProfile for where the time goes.
PROFILE = r"""
import cProfile, json, os, pstats, time
from django.db import connection
from django.test import Client
bodies = [open(os.path.join(BODIES, name), "rb").read() for name in sorted(os.listdir(BODIES))]
half = len(bodies) // 2
client = Client(HTTP_AUTHORIZATION=f"Bearer {KEY}", HTTP_HOST="127.0.0.1", HTTP_X_FORWARDED_PROTO="https")
def post(body):
    response = client.post("/api/v1/events/bulk/", body, content_type="application/json", secure=True)
    assert response.status_code == 200 and response.json()["failed"] == 0, response.content[:300]
post(bodies[0])
with connection.cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid()")
    (backend,) = cursor.fetchone()
def backend_cpu():
    fields = open(f"/proc/{backend}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
calls = bodies[1:half]
cpu, pg_cpu, wall = time.process_time(), backend_cpu(), time.perf_counter()
for body in calls:
    post(body)
figures = {"calls": len(calls), "ms_per_call": round((time.perf_counter() - wall) / len(calls) * 1000, 1),
           "web_cpu_ms_per_call": round((time.process_time() - cpu) / len(calls) * 1000, 1),
           "postgresql_cpu_ms_per_call": round((backend_cpu() - pg_cpu) / len(calls) * 1000, 1)}
calls = bodies[half:]
profiler = cProfile.Profile()
profiler.enable()
for body in calls:
    post(body)
profiler.disable()
rows = []
HERE = os.getcwd() + "/"
for (filename, line, name), (cc, nc, tt, ct, callers) in pstats.Stats(profiler).stats.items():
    label = f"{filename.split('site-packages/')[-1].replace(HERE, '')}:{name}"
    rows.append((ct / len(calls) * 1000, tt / len(calls) * 1000, label))
def top(key, n):
    return [f"{label}: {c:.1f} ms cumulative, {t:.1f} ms own" for c, t, label in sorted(rows, key=key, reverse=True)[:n]]
print(json.dumps({**figures, "by_own_time": top(lambda r: r[1], 15),
                  "pushdesk_cumulative": [x for x in top(lambda r: r[0], 120) if x.startswith(("accounts/", "audiences/"))][:12]}))
"""


def run(cmd, env) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def wait_http(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/v1/me/", headers={"X-Forwarded-Proto": "https"})
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the web server did not answer")


def make_bodies(calls: int, profiles: int, first_call: int) -> list[bytes]:
    rng = random.Random(first_call)
    now = datetime.now(UTC)
    bodies = []
    for call in range(first_call, first_call + calls):
        events = []
        for i in range(PER_CALL):
            external_id = f"known-{rng.randrange(profiles)}" if i % 2 == 0 else f"new-{call}-{i}"
            when = now - timedelta(seconds=rng.randrange(86400 * 30))
            events.append(
                {
                    "external_id": external_id,
                    "name": NAMES[i % len(NAMES)],
                    "properties": {"amount": rng.randrange(1, 500), "currency": "EUR", "sku": f"sku-{i % 97}"},
                    "occurred_at": when.isoformat(),
                }
            )
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


def post_all(port: int, key: str, bodies: list[bytes], clients: int) -> tuple[list[float], int, list[str]]:
    """Post every body, ``clients`` at a time; return each call's seconds, events accepted, errors."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", "X-Forwarded-Proto": "https"}
    latencies: list[float] = []
    accepted = [0]
    errors: list[str] = []
    lock = threading.Lock()
    todo = iter(bodies)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                body = next(todo, None)
            if body is None:
                break
            began = time.perf_counter()
            conn.request("POST", "/api/v1/events/bulk/", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            seconds = time.perf_counter() - began
            with lock:
                latencies.append(seconds)
                if response.status != 200:
                    errors.append(f"{response.status}: {payload[:200]!r}")
                else:
                    accepted[0] += json.loads(payload)["accepted"]
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, accepted[0], errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=400_000, help="events posted while measured")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--profiles", type=int, default=100_000, help="profiles that exist before the run")
    parser.add_argument("--warmup-calls", type=int, default=8)
    parser.add_argument("--database", default="pushdesk_bench_events", help="dropped and created again")
    parser.add_argument("--redis-db", type=int, default=14, help="flushed first")
    parser.add_argument(
        "--profile-calls", type=int, default=20, help="calls profiled in process after the run (0: none)"
    )
    args = parser.parse_args()
    calls = max(1, args.events // PER_CALL)
    tmp = Path(tempfile.mkdtemp(prefix="pushdesk-bench-events-"))
    try:
        measure(args, calls, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args, calls: int, tmp: Path) -> None:
    db = args.database
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{db}",
        "REDIS_URL": redis_url,
        "PUSHDESK_MODE": "production",
        "PUSHDESK_INSTANCE": "bench-events",
        "PUSHDESK_VAR_DIR": str(tmp),
        "SECRET_KEY": secrets.token_urlsafe(50),
        "PUSHDESK_ENCRYPTION_KEY": "",
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
    }
    from cryptography.fernet import Fernet

    env["PUSHDESK_ENCRYPTION_KEY"] = Fernet.generate_key().decode()
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", db], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", db], check=True)
    subprocess.run(["redis-cli", "-u", redis_url, "flushdb"], check=True, capture_output=True)
    run([PY, "manage.py", "migrate", "--noinput"], env)
    # The benchmark runs the web in production mode on a database of its own, made above.
    run([PY, "manage.py", "demo_setup", "--in-production"], env)
    setup = run([PY, "manage.py", "shell", "-c", f"N = {args.profiles}\n" + SETUP], env)
    key = json.loads(setup.stdout.strip().splitlines()[-1])["key"]

    warmup = make_bodies(args.warmup_calls, args.profiles, first_call=0)
    bodies = make_bodies(calls, args.profiles, first_call=args.warmup_calls)
    port = free_port()
    command = [PY, "-m", "config.web", "--workers", "2", "--threads", "4", "--bind", f"127.0.0.1:{port}"]
    web = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(port)
        post_all(port, key, warmup, args.clients)
        pg = BackendCpu(db)
        pg.start()
        web_before = tree_cpu(web.pid)
        load_before = os.getloadavg()[0]
        began = time.perf_counter()
        latencies, accepted, errors = post_all(port, key, bodies, args.clients)
        seconds = time.perf_counter() - began
        load_after = os.getloadavg()[0]
        web_cpu = tree_cpu(web.pid) - web_before
        pg_cpu = pg.stop()
    finally:
        web.terminate()
        web.wait(30)
    counted = (
        run(
            [
                PY,
                "manage.py",
                "shell",
                "-c",
                "from audiences.models import Event, Profile; "
                "print(Event.objects.count(), Profile.objects.filter(external_id__startswith='new-').count())",
            ],
            env,
        )
        .stdout.strip()
        .splitlines()[-1]
        .split()
    )
    rate = calls * PER_CALL / seconds
    p99 = percentile(latencies, 99)
    result = {
        "benchmark": "events",
        "web": "config.web (granian), 2 workers x 4 threads, production mode",
        "clients": args.clients,
        "calls": calls,
        "events": calls * PER_CALL,
        "seconds": round(seconds, 2),
        "events_per_s": round(rate),
        "call_p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "call_p99_ms": round(p99 * 1000, 1),
        "call_max_ms": round(max(latencies) * 1000, 1),
        "web_cpu_ms_per_call": round(web_cpu / calls * 1000, 1),
        "postgresql_cpu_ms_per_call": round(pg_cpu / calls * 1000, 1),
        "accepted": accepted,
        "errors": errors[:3],
        "events_stored": int(counted[0]),
        "new_profiles": int(counted[1]),
        "load_average": [round(load_before, 1), round(load_after, 1)],
        "goal": ">= 50000 events/s, p99 per call < 300 ms",
        "met": rate >= 50_000 and p99 < 0.3 and not errors,
    }
    if args.profile_calls:
        folder = tmp / "profile-bodies"
        folder.mkdir()
        for n, body in enumerate(make_bodies(2 * args.profile_calls + 1, args.profiles, first_call=10_000_000)):
            (folder / f"{n:05}.json").write_bytes(body)
        code = f"KEY = {key!r}\nBODIES = {str(folder)!r}\n" + PROFILE
        result["in_process"] = json.loads(
            run([PY, "manage.py", "shell", "-c", code], env).stdout.strip().splitlines()[-1]
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
