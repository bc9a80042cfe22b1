"""Benchmark: the campaign trigger endpoint under load, and trigger-to-accepted latency end to end.

    .venv/bin/python bench/trigger.py [--seconds 15] [--connections 32] [--rate 200]

Sets up a database of its own (``pushdesk_bench_trigger`` on the local PostgreSQL) with the
demo app pointed at the push simulator, 2,000 profiles with a device each, a live API-triggered
campaign and an API key; starts the simulator, two ``qcluster`` workers (Redis broker) and the
web app under gunicorn with two workers. Then:

1. ``wrk`` (a separate process) POSTs one-recipient triggers as fast as it can: requests/s and
   p50 / p99 latency of the answer (202);
2. a Python load generator sends 200 triggers/s for a few seconds; for each, the time from
   sending the request to the provider's acceptance at the simulator (the delivery's
   ``finished_at``): p50 / p99.

Prints one JSON line. Needs Debian's ``wrk``.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
DB = "pushdesk_bench_trigger"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB}"
REDIS_URL = "redis://127.0.0.1:6379/12"

SETUP = r"""
import json, secrets
from django.contrib.auth.models import Group
from accounts.models import User
from accounts.services import access_grant, api_key_create
from audiences.models import Profile
from campaigns.services import campaign_approve, campaign_create, campaign_submit
from delivery.models import App, Device, PushContent
from delivery.services.contents import pushcontent_save

app = App.objects.get(name="Pushdesk Demo")
manager = User.objects.create_user("bench_manager", is_staff=True)
manager.groups.add(Group.objects.get(name="Manager"))
approver = User.objects.create_user("bench_approver", is_staff=True)
approver.groups.add(Group.objects.get(name="Approver"))
for user in (manager, approver):
    access_grant(obj=app, to=user, by=None)
Profile.objects.bulk_create([Profile(external_id=f"bench-{i}", attributes={"first_name": f"P{i}"}) for i in range(N)])
ids = dict(Profile.objects.filter(external_id__startswith="bench-").values_list("external_id", "id"))
Device.objects.bulk_create([
    Device(profile_id=ids[f"bench-{i}"], app=app, platform="ios" if i % 2 else "android",
           token=(f"be{i:062x}" if i % 2 else f"fcm-bench-token-{i:012d}"))
    for i in range(N)
])
content = pushcontent_save(content=PushContent(app=app, name="Order shipped", title="Order {{ context.order }}",
                                               body="Hi {{ profile.attributes.first_name }}"), by=manager)
campaign = campaign_create(by=manager, name="Order shipped", app=app, kind="api_triggered",
                           purpose="transactional", content=content)
campaign_submit(campaign_id=campaign.pk, by=manager)
campaign_approve(campaign_id=campaign.pk, by=approver)
_, raw = api_key_create(user=manager, name="bench", scopes=["trigger", "read"], by=manager)
print(json.dumps({"campaign": campaign.pk, "key": raw}))
"""

LATENCIES = r"""
import json, sys
from delivery.models import Delivery
sent = json.loads(open(sys.argv[-1]).read())
rows = Delivery.objects.filter(dispatch_id__in=[int(k) for k in sent], status="accepted").values_list("dispatch_id", "finished_at")
out = [(f.timestamp() - sent[str(d)]) for d, f in rows if f is not None]
print(json.dumps({"latencies": out, "expected": len(sent)}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, env, **kwargs):
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{result.stderr[-3000:]}")
    return result


def percentile(values, p):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def wait_http(url, timeout=30):
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--profiles", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16, help="threads per gunicorn worker")
    parser.add_argument("--var-dir", help="keep the keys and files here (default: a temporary folder, removed)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")

    tmp = Path(args.var_dir) if args.var_dir else Path(tempfile.mkdtemp(prefix="pushdesk-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    sim_port, sandbox_port, web_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "PUSHDESK_VAR_DIR": str(tmp),
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": f"http://127.0.0.1:{sim_port}",
        "PUSHDESK_PUSHSIM_APNS_SANDBOX_URL": f"http://127.0.0.1:{sandbox_port}",
        "PUSHDESK_PUSHSIM_FCM_URL": f"http://127.0.0.1:{sim_port}",
        "PUSHDESK_TRIGGER_RATE_PER_KEY": "100000",
        "PUSHDESK_WORKERS": "2",
    }
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    subprocess.run(["redis-cli", "-n", "12", "flushdb"], check=True, capture_output=True)
    run([PY, "manage.py", "migrate", "--noinput"], env)
    run([PY, "manage.py", "demo_setup"], env)
    setup = run([PY, "manage.py", "shell", "-c", f"N = {args.profiles}\n" + SETUP], env)
    info = json.loads(setup.stdout.strip().splitlines()[-1])
    campaign, key = info["campaign"], info["key"]

    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [PY, "manage.py", "pushsim", "--port", str(sim_port), "--sandbox-port", str(sandbox_port)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        procs.append(
            subprocess.Popen(
                [PY, "manage.py", "qcluster"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    str(Path(PY).parent / "gunicorn"),
                    "config.wsgi",
                    "--workers",
                    "2",
                    "--worker-class",
                    "gthread",
                    "--threads",
                    str(args.threads),
                    "--bind",
                    f"127.0.0.1:{web_port}",
                    "--access-logfile",
                    "/dev/null",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        base = f"http://127.0.0.1:{web_port}"
        wait_http(f"{base}/api/v1/schema/")
        url = f"{base}/api/v1/campaigns/{campaign}/trigger/"

        # 1. Throughput and latency of the answer, wrk from a separate process.
        script = tmp / "trigger.lua"
        script.write_text(
            "counter = 0\n"
            'wrk.method = "POST"\n'
            f'wrk.headers["Authorization"] = "Bearer {key}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            "request = function()\n"
            "  counter = counter + 1\n"
            f'  local body = string.format(\'{{"recipients": [{{"external_id": "bench-%d"}}], '
            f'"context": {{"order": "%d"}}}}\', counter % {args.profiles}, counter)\n'
            "  return wrk.format(nil, nil, nil, body)\n"
            "end\n"
            "done = function(summary, latency, requests)\n"
            '  io.write(string.format("STATUS non2xx=%d\\n", summary.errors.status))\n'
            "end\n"
        )
        wrk = subprocess.run(
            ["wrk", "-t2", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        )
        out = wrk.stdout
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

        def lat(label):
            m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
            value, unit = float(m.group(1)), m.group(2)
            return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

        non2xx = int(re.search(r"STATUS non2xx=(\d+)", out).group(1))

        # Let the workers drain what wrk queued before measuring end-to-end latency.
        time.sleep(5)
        drain = run(
            [
                PY,
                "manage.py",
                "shell",
                "-c",
                "from delivery.models import Dispatch; print(Dispatch.objects.exclude(status='done').count())",
            ],
            env,
        )
        deadline = time.time() + 300
        while int(drain.stdout.strip().splitlines()[-1]) and time.time() < deadline:
            time.sleep(2)
            drain = run(
                [
                    PY,
                    "manage.py",
                    "shell",
                    "-c",
                    "from delivery.models import Dispatch; print(Dispatch.objects.exclude(status='done').count())",
                ],
                env,
            )
        backlog_drained = int(drain.stdout.strip().splitlines()[-1]) == 0

        # 2. End to end at a steady rate: request sent → accepted at the simulator.
        import httpx

        sent: dict[str, float] = {}
        lock = threading.Lock()
        interval = 1.0 / args.rate
        total = args.rate * 5

        def fire(i, client):
            started = time.time()
            r = client.post(
                url,
                json={"recipients": [{"external_id": f"bench-{i % args.profiles}"}], "context": {"order": str(i)}},
                headers={"Authorization": f"Bearer {key}"},
            )
            if r.status_code == 202 and r.json()["dispatch"]:
                with lock:
                    sent[str(r.json()["dispatch"])] = started

        clients = [httpx.Client(timeout=10) for _ in range(16)]
        threads = []
        t0 = time.time()
        for i in range(total):
            delay = t0 + i * interval - time.time()
            if delay > 0:
                time.sleep(delay)
            th = threading.Thread(target=fire, args=(i, clients[i % 16]))
            th.start()
            threads.append(th)
        for th in threads:
            th.join()
        time.sleep(5)
        (tmp / "sent.json").write_text(json.dumps(sent))
        result = run(
            [PY, "manage.py", "shell", "-c", LATENCIES.replace("sys.argv[-1]", repr(str(tmp / "sent.json")))], env
        )
        data = json.loads(result.stdout.strip().splitlines()[-1])
        e2e = data["latencies"]
        print(
            json.dumps(
                {
                    "benchmark": "trigger",
                    "web": f"gunicorn, 2 workers x {args.threads} threads",
                    "wrk_connections": args.connections,
                    "requests_per_s": round(rps, 1),
                    "p50_ms": round(lat(50), 1),
                    "p99_ms": round(lat(99), 1),
                    "non_2xx": non2xx,
                    "goal_requests_per_s": 1000,
                    "goal_p99_ms": 100,
                    "backlog_drained": backlog_drained,
                    "e2e_rate_per_s": args.rate,
                    "e2e_sent": data["expected"],
                    "e2e_accepted": len(e2e),
                    "e2e_p50_ms": round(percentile(e2e, 50) * 1000, 1) if e2e else None,
                    "e2e_p99_ms": round(percentile(e2e, 99) * 1000, 1) if e2e else None,
                    "goal_e2e_p99_ms": 1000,
                }
            )
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.var_dir:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
