"""Benchmark: API triggers (and event-entered journeys) through the standing send stream.

    .venv/bin/python bench/trigger.py [--only ceiling,throughput,e2e,profile,journey,soak,crash]
        [--seconds 15] [--rounds 1] [--connections 32] [--rate 200] [--e2e-seconds 60] [--soak-seconds 600]
        [--provider sim|nginx] [--content profile|context]

Sets up a database of its own (``--database``, ``pushdesk_bench_trigger``; Redis db ``--redis-db``,
12) with the demo app pointed at the push simulator, ``--profiles`` profiles with a device each,
a live API-triggered campaign (``--content``: its body greets the profile, the default, or is
plain; its title renders the call's context either way), a live journey entered by the event ``order_paid`` whose first
step is a push, and API keys; starts
the simulator, ``qcluster`` (``--workers`` processes), the stream sender (``manage.py
send_stream``, a process of its own) and the web app as production runs it (``python -m config.web``:
granian, 2 workers x ``--threads`` threads; ``--server gunicorn``: gunicorn's threaded workers
instead, to compare). Then, each phase on demand:

- ``ceiling``: wrk against a bare DRF endpoint under the same server and settings that
  authenticates nothing and does one INSERT: this stack's ceiling on this machine (like the
  throughput, after ``--warmup-seconds`` of the same load, unmeasured: the first requests of each
  server thread open its database connection and fill its caches, 0.4–0.7 s each, which put
  the cold start, not the steady state, in a 15 s run's p99);
- ``throughput``: wrk POSTs one-recipient triggers as fast as it can: requests/s, p50 / p99 of
  the answer, non-2xx; with ``--rounds N`` the ceiling and the triggers take turns N times
  (``rounds``, and ``of_ceiling_median``: on a machine whose speed drifts, each ratio compares runs
  a few seconds apart);
- ``e2e``: ``--rate`` triggers/s for ``--e2e-seconds``; each answer names its delivery; from the
  request sent to the provider's acceptance at the simulator (``finished_at``): p50 / p99, and
  how many were accepted before the run ended;
- ``journey``: the same with one event per call to ``POST /api/v1/events/bulk/``;
- ``soak``: ``--rate`` triggers/s for ``--soak-seconds``: errors, web and worker RSS after the
  first minute and at the end, queued rows sampled every 10 s;
- ``crash``: ``--rate`` triggers/s for 40 s, each to a profile of its own; the sender process is
  killed with SIGKILL after 10 s and started again 2 s later (as systemd's ``Restart=always``
  does); then no token may have received a push twice, and every delivery must end ``accepted``
  or ``unknown`` (the lease, 15 s here, then the watchdog's minute).

With ``--provider nginx`` an nginx HTTP/2 + TLS endpoint (``bench/support/nginx.py``) answers as APNs
and FCM instead of the simulator: it accepts every push for a few microseconds of CPU, so the
machine's two cores go to Pushdesk alone, as when the provider is Apple's or Google's (the
simulator, in Python, spends about as much per push as the sender). Every phase but ``crash``,
which counts what each token received at the simulator.

Prints one JSON line, with the load average of the machine when each phase ran.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from support.http_load import BackendCpu, Paced, free_port, load, rss_mb, tree_cpu, tree_rss, wrk
from support.nginx import start_nginx

ROOT = Path(__file__).resolve().parent.parent
# The campaign's body (its title renders the call's context): from the profile, as most
# transactional pushes greet their reader, or plain (a call to an open stream is then one statement).
CONTENT_BODIES = {"profile": "Hi {{ profile.attributes.first_name }}", "context": "It is on its way"}
PY = sys.executable
EVENT = "order_paid"

SETUP = r"""
import json
from django.contrib.auth.models import Group
from django.db import connection
from accounts.models import User
from accounts.services import access_grant, api_key_create
from audiences.models import Profile
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit
from delivery.models import App, Device, PushContent
from delivery.services.contents import pushcontent_save
from journeys.services.lifecycle import journey_approve, journey_create, journey_submit

app = App.objects.get(name="Pushdesk Demo")
App.objects.filter(pk=app.pk).update(rate_limit_per_second=100000)
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
                                               body=BODY), by=manager)
campaign = campaign_create(by=manager, name="Order shipped", app=app, kind="api_triggered",
                           purpose="transactional", content=content)
campaign_submit(campaign_id=campaign.pk, by=manager)
campaign_approve(campaign_id=campaign.pk, by=approver)
paid = pushcontent_save(content=PushContent(app=app, name="Payment received", title="Thanks {{ profile.attributes.first_name }}",
                                            body="Your payment arrived"), by=manager)
graph = {"steps": [{"id": "push", "type": "push", "content": paid.pk, "next": "done"}, {"id": "done", "type": "exit"}]}
journey = journey_create(by=manager, name="Payment received", app=app, entry_kind="event", entry_event="order_paid",
                         entry_segment=None, graph=graph)
journey_submit(journey_id=journey.pk, by=manager)
journey_approve(journey_id=journey.pk, by=approver)
_, raw = api_key_create(user=manager, name="bench", scopes=["trigger", "read", "ingest"], by=manager)
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE bench_ceiling (id bigserial PRIMARY KEY, body text, at timestamptz DEFAULT now())")
    # The statistics a running install has (autovacuum analyzes a table once a tenth of it has
    # changed; where it is off, as on some benchmark machines, plans were made from none).
    cursor.execute("VACUUM ANALYZE")
print(json.dumps({"campaign": campaign.pk, "journey": journey.pk, "key": raw}))
"""

# The ceiling: a DRF view that authenticates nothing and does one INSERT, same server and settings.
CEILING = r"""
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
import django
from django.conf import settings
django.setup()
from django.db import connection
from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView


class Bare(APIView):
    authentication_classes = []
    permission_classes = []

    def post(self, request):
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO bench_ceiling (body) VALUES (%s) RETURNING id", [request.body.decode()[:200]])
            (row_id,) = cursor.fetchone()
        return Response({"id": row_id}, status=202)


urlpatterns = [path("bare/", Bare.as_view())]
settings.ROOT_URLCONF = __name__
from django.core.wsgi import get_wsgi_application
application = get_wsgi_application()


def factory():
    return application
"""

RESULTS = r"""
import json, sys
from delivery.models import Delivery
wanted = json.loads(open(PATH).read())
rows = Delivery.objects.filter(pk__in=[int(k) for k in wanted]).values_list("id", "status", "finished_at")
print(json.dumps({str(i): [s, f.timestamp() if f else None] for i, s, f in rows}))
"""

JOURNEY_RESULTS = r"""
import json
from delivery.models import Delivery
wanted = json.loads(open(PATH).read())
rows = Delivery.objects.filter(dispatch__kind="journey", profile__external_id__in=list(wanted)).values_list(
    "profile__external_id", "status", "finished_at")
print(json.dumps({e: [s, f.timestamp() if f else None] for e, s, f in rows}))
"""

COUNTS = r"""
import json
from django.db.models import Count
from delivery.models import Delivery
print(json.dumps(dict(Delivery.objects.filter(queued_at__isnull=False).values_list("status").annotate(n=Count("id")).order_by())))
"""


def web_command(server: list[str], port: int, module: str) -> list[str]:
    """The web's command line: Pushdesk's own (``config.web``, granian) or gunicorn's, to compare."""
    if server[0] == PY:
        factory = "config.web:worker_application" if module == "config.wsgi" else f"{module}:factory"
        return [*server, "--bind", f"127.0.0.1:{port}", "--app", factory]
    return [*server, "--bind", f"127.0.0.1:{port}", module]


def run(cmd, env, **kwargs):
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{result.stderr[-3000:]}")
    return result


def shell(env, code: str, **values) -> dict:
    prelude = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    out = run([PY, "manage.py", "shell", "-c", prelude + code], env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def percentile(values, p):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def now_iso() -> str:
    import datetime as dt

    return dt.datetime.now(dt.UTC).isoformat()


def ms(value):
    return round(value * 1000, 1) if value is not None else None


def progress(report: dict, phase: str) -> None:
    """Each phase's figures as soon as it ends (stderr), so a run cut short keeps what it measured."""
    print(json.dumps({phase: report.get(phase)}), file=sys.stderr, flush=True)


def wait_http(url, timeout=180):
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


PROFILE = r"""
import cProfile, io, json, pstats, time
from rest_framework.test import APIClient
client = APIClient()
client.credentials(HTTP_AUTHORIZATION=f"Bearer {KEY}", HTTP_HOST="127.0.0.1")
url = f"/api/v1/campaigns/{CAMPAIGN}/trigger/"
body = lambda i: {"recipients": [{"external_id": f"bench-{i % PROFILES}"}], "context": {"order": str(i)}}
for i in range(20):
    client.post(url, body(i), format="json")
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid()")
    (backend,) = cursor.fetchone()
def backend_cpu():  # the connection's PostgreSQL process, user + system, in seconds
    fields = open(f"/proc/{backend}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / __import__("os").sysconf("SC_CLK_TCK")
cpu, pg_cpu, wall = time.process_time(), backend_cpu(), time.perf_counter()
for i in range(CALLS):
    client.post(url, body(i), format="json")
unprofiled = {"ms_per_call": round((time.perf_counter() - wall) / CALLS * 1000, 2),
              "web_cpu_ms_per_call": round((time.process_time() - cpu) / CALLS * 1000, 2),
              "postgresql_cpu_ms_per_call": round((backend_cpu() - pg_cpu) / CALLS * 1000, 2)}
profiler = cProfile.Profile()
started = time.perf_counter()
profiler.enable()
for i in range(CALLS):
    client.post(url, body(i), format="json")
profiler.disable()
per_call = (time.perf_counter() - started) / CALLS
stats = pstats.Stats(profiler)
rows = []
HERE = __import__("os").getcwd() + "/"  # the project's files are named from its root
for (filename, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():
    rows.append((ct / CALLS * 1000, tt / CALLS * 1000, f"{filename.split('site-packages/')[-1].replace(HERE, '')}:{name}"))
def top(key, n=12):
    return [f"{label}: {c:.2f} ms cumulative, {t:.2f} ms own" for c, t, label in sorted(rows, key=key, reverse=True)[:n]]
print(json.dumps({**unprofiled, "ms_per_call_in_process": round(per_call * 1000, 2), "by_own_time": top(lambda r: r[1]),
                  "pushdesk_cumulative": [x for x in top(lambda r: r[0], 80) if any(k in x for k in ("accounts/", "campaigns/", "delivery/"))][:10]}))
"""


def trigger_request(url, key, profile_of):
    def make(client, i):
        r = client.post(
            url,
            json={"recipients": [{"external_id": f"bench-{profile_of(i)}"}], "context": {"order": str(i)}},
            headers={"Authorization": f"Bearer {key}"},
        )
        if r.status_code != 202:
            return None
        return r.json()["deliveries"][0]["id"]

    return make


def e2e_figures(env, tmp: Path, paced: Paced, grace: float) -> dict:
    """Latency from each request sent to its delivery's acceptance; counts accepted by the end."""
    by_delivery = {str(d): paced.sent[i] for i, d in paced.answers.items()}
    deadline = paced.ended + grace
    while time.time() < deadline:
        time.sleep(1)
    path = tmp / "wanted.json"
    path.write_text(json.dumps(by_delivery))
    rows = shell(env, RESULTS, PATH=str(path))
    spans = [f - by_delivery[d] for d, (s, f) in rows.items() if s == "accepted" and f is not None]
    by_end = sum(1 for d, (s, f) in rows.items() if s == "accepted" and f is not None and f <= paced.ended + 1.0)
    return {
        "sent": paced.total,
        "answered_202": len(paced.answers),
        "errors": paced.errors,
        "accepted": len(spans),
        "accepted_within_1s_of_the_end": by_end,
        "p50_ms": ms(percentile(spans, 50)),
        "p99_ms": ms(percentile(spans, 99)),
        "max_ms": ms(max(spans) if spans else None),
    }


def main():  # noqa: C901 (one script, phase after phase)
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="ceiling,throughput,e2e,profile,journey,soak,crash")
    parser.add_argument("--seconds", type=int, default=15, help="wrk's run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--warmup-seconds", type=int, default=5, help="wrk's load before each measured run, not measured"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="ceiling and throughput runs, taking turns (the median ratio is printed)"
    )
    parser.add_argument(
        "--content",
        choices=sorted(CONTENT_BODIES),
        default="profile",
        help="what the campaign's content renders from: the profile and the call's context, or the context alone",
    )
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--e2e-seconds", type=int, default=60)
    parser.add_argument("--soak-seconds", type=int, default=600)
    parser.add_argument("--profiles", type=int, default=40000)
    parser.add_argument("--threads", type=int, default=16, help="threads per web worker")
    parser.add_argument(
        "--server", choices=("granian", "gunicorn"), default="granian", help="the web's (config.web) or gunicorn's"
    )
    parser.add_argument("--workers", type=int, default=2, help="qcluster processes (the sender runs beside them)")
    parser.add_argument("--database", default="pushdesk_bench_trigger", help="dropped and created again")
    parser.add_argument("--redis-db", type=int, default=12, help="flushed first")
    parser.add_argument("--var-dir", help="keep the keys and files here (default: a temporary folder, removed)")
    parser.add_argument("--sender-profile", help="run the stream sender under cProfile, its stats written to this file")
    parser.add_argument(
        "--provider",
        choices=("sim", "nginx"),
        default="sim",
        help="who answers as APNs and FCM: the push simulator, or nginx (a C server that accepts every push, "
        "so that the provider's CPU on this machine is next to nothing, as when it is Apple's or Google's)",
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    phases = set(args.only.split(","))
    if phases & {"ceiling", "throughput"} and not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    if args.provider == "nginx" and "crash" in phases:
        parser.error("--provider nginx: the crash phase counts what each token received at the simulator")

    tmp = Path(args.var_dir) if args.var_dir else Path(tempfile.mkdtemp(prefix="pushdesk-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    sim_port, sandbox_port, web_port, bare_port = free_port(), free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.database}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
        "PUSHDESK_VAR_DIR": str(tmp),
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": f"http://127.0.0.1:{sim_port}",
        "PUSHDESK_PUSHSIM_APNS_SANDBOX_URL": f"http://127.0.0.1:{sandbox_port}",
        "PUSHDESK_PUSHSIM_FCM_URL": f"http://127.0.0.1:{sim_port}",
        "PUSHDESK_TRIGGER_RATE_PER_KEY": "100000",
        "PUSHDESK_INGEST_RATE_PER_KEY": "100000",  # the journey mode sends one event per call
        "PUSHDESK_WORKERS": str(args.workers),
        "PUSHDESK_SEND_LEASE_SECONDS": "15",
        "PUSHDESK_QUEUE_NAME": "bench-trigger",
        "PYTHONPATH": str(tmp),
    }
    dropdb = ["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", args.database]
    subprocess.run(dropdb, check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", args.database], check=True)
    subprocess.run(["redis-cli", "-n", str(args.redis_db), "flushdb"], check=True, capture_output=True)
    procs = {}
    try:  # whatever has started is stopped below, even when the setup fails
        if args.provider == "nginx":
            procs["provider"], provider_url, ca_path = start_nginx(tmp)
            for name in ("APNS_PRODUCTION", "APNS_SANDBOX", "FCM"):
                env[f"PUSHDESK_PUSHSIM_{name}_URL"] = provider_url
            env["PUSHDESK_CA_BUNDLE"] = ca_path
        run([PY, "manage.py", "migrate", "--noinput"], env)
        run([PY, "manage.py", "demo_setup"], env)
        body = CONTENT_BODIES[args.content]
        setup = run([PY, "manage.py", "shell", "-c", f"N = {args.profiles}\nBODY = {body!r}\n" + SETUP], env)
        info = json.loads(setup.stdout.strip().splitlines()[-1])
        campaign, key = info["campaign"], info["key"]
        (tmp / "bench_ceiling.py").write_text(CEILING)

        web = [PY, "-m", "config.web", "--workers", "2", "--threads", str(args.threads)]
        if args.server == "gunicorn":  # the server before (requirements-dev.txt), to compare
            web = [str(Path(PY).parent / "gunicorn"), "--workers", "2", "--worker-class", "gthread"]
            web += ["--threads", str(args.threads)]
        report: dict = {"benchmark": "trigger", "web": f"{args.server}, 2 workers x {args.threads} threads"}
        report["provider"] = "push simulator" if args.provider == "sim" else "nginx"
        report["content"] = args.content
        provider_cpu = "simulator_cpu_ms_per_message" if args.provider == "sim" else "nginx_cpu_ms_per_message"
        report["qcluster_workers"] = args.workers
        report["senders"] = 1
        quiet = {"cwd": ROOT, "env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        if args.provider == "sim":
            procs["provider"] = subprocess.Popen(
                [PY, "manage.py", "pushsim", "--port", str(sim_port), "--sandbox-port", str(sandbox_port)], **quiet
            )
        procs["workers"] = subprocess.Popen([PY, "manage.py", "qcluster"], **quiet, start_new_session=True)
        profiled = ["-m", "cProfile", "-o", str(Path(args.sender_profile).resolve())] if args.sender_profile else []
        procs["sender"] = subprocess.Popen([PY, *profiled, "manage.py", "send_stream"], **quiet)
        procs["web"] = subprocess.Popen(web_command(web, web_port, "config.wsgi"), **quiet)
        base = f"http://127.0.0.1:{web_port}"
        wait_http(f"{base}/api/v1/me/")
        url = f"{base}/api/v1/campaigns/{campaign}/trigger/"
        one = f'\'{{"recipients": [{{"external_id": "bench-\' .. (counter % {args.profiles}) .. \'"}}], "context": {{"order": "\' .. counter .. \'"}}}}\''

        def cpu_now() -> dict[str, float]:
            sender = tree_cpu(procs["sender"].pid)
            return {
                "web_cpu_ms_per_call": tree_cpu(procs["web"].pid),
                "workers_cpu_ms_per_message": tree_cpu(procs["workers"].pid) + sender,
                "sender_cpu_ms_per_message": sender,
                provider_cpu: tree_cpu(procs["provider"].pid),
            }

        def cpu_per_call(before: dict[str, float], calls: int, read=cpu_now) -> dict[str, float]:
            return {name: round((cpu - before[name]) / max(calls, 1) * 1000, 2) for name, cpu in read().items()}

        def wrk_with_cpu(target: str, auth, script: str, cpu_read):
            """wrk's measured run, with ``cpu_read()`` and PostgreSQL's backends counted from its start;
            returns wrk's figures and a function giving the CPU per call spent since then."""
            start: dict = {}

            def begin():
                start.update(cpu=cpu_read(), postgres=BackendCpu(args.database))
                start["postgres"].start()

            result = wrk(
                target,
                auth,
                tmp / script,
                one,
                args.seconds,
                args.connections,
                warmup=args.warmup_seconds,
                on_start=begin,
            )
            calls = max(1, round(result["requests_per_s"] * args.seconds))

            def spent() -> dict[str, float]:
                figures = cpu_per_call(start["cpu"], calls, read=cpu_read)
                figures["postgres_cpu_ms_per_call"] = round(start["postgres"].stop() / calls * 1000, 2)
                return figures

            return result, spent

        if "ceiling" in phases:
            procs["bare"] = subprocess.Popen(web_command(web, bare_port, "bench_ceiling"), **quiet)
            wait_http(f"http://127.0.0.1:{bare_port}/bare/")
        # With --rounds N the ceiling and the triggers take turns N times: on a machine whose speed
        # drifts, each ratio compares runs a few seconds apart, and the median ratio is the figure.
        rounds = []
        wanted = args.rounds if phases & {"ceiling", "throughput"} else 0
        for number in range(1, wanted + 1):
            figures: dict = {}
            if "ceiling" in phases:
                figures["ceiling"], spent = wrk_with_cpu(
                    f"http://127.0.0.1:{bare_port}/bare/",
                    None,
                    "bare.lua",
                    lambda: {"web_cpu_ms_per_call": tree_cpu(procs["bare"].pid)},
                )
                figures["ceiling"].update(spent())
                progress({f"ceiling {number}": figures["ceiling"]}, f"ceiling {number}")
            if "throughput" in phases:
                figures["throughput"], spent = wrk_with_cpu(url, key, "trigger.lua", cpu_now)
                if "ceiling" in figures:
                    ratio = figures["throughput"]["requests_per_s"] / figures["ceiling"]["requests_per_s"]
                    figures["throughput"]["of_ceiling"] = round(ratio, 2)
                drained_by = time.time() + 300
                while shell(env, COUNTS).get("queued", 0) and time.time() < drained_by:
                    time.sleep(2)
                # Per call, the measured run's calls and the sending of what they queued (drained above).
                figures["throughput"].update(spent())
                progress({f"throughput {number}": figures["throughput"]}, f"throughput {number}")
            rounds.append(figures)
        if rounds:
            report.update(rounds[0])  # the first round's figures in full, as with one round
        if len(rounds) > 1:
            report["rounds"] = [
                {
                    phase: {
                        k: figures[phase][k] for k in ("requests_per_s", "p99_ms", "of_ceiling") if k in figures[phase]
                    }
                    for phase in figures
                }
                for figures in rounds
            ]
            ratios = [
                figures["throughput"]["of_ceiling"]
                for figures in rounds
                if "of_ceiling" in figures.get("throughput", {})
            ]
            if ratios:
                report["of_ceiling_median"] = round(statistics.median(ratios), 3)
        if "bare" in procs:
            procs.pop("bare").send_signal(signal.SIGTERM)

        if "e2e" in phases:
            started_load = load()
            cpu = cpu_now()
            paced = Paced(args.rate, args.e2e_seconds, trigger_request(url, key, lambda i: i % args.profiles))
            paced.run()
            spent = cpu_per_call(cpu, paced.total)
            report["e2e"] = {"rate": args.rate, "seconds": args.e2e_seconds, **e2e_figures(env, tmp, paced, 10)}
            report["e2e"].update(spent)
            report["e2e"]["load"] = [started_load, load()]
            progress(report, "e2e")

        if "profile" in phases:
            report["profile"] = shell(env, PROFILE, KEY=key, CAMPAIGN=campaign, PROFILES=args.profiles, CALLS=300)
            progress(report, "profile")

        if "journey" in phases:
            started_load = load()
            offset = args.profiles // 2  # profiles the journey has not seen (it enters each once)

            def event(client, i):
                external_id = f"bench-{offset + i % (args.profiles - offset)}"
                r = client.post(
                    f"{base}/api/v1/events/bulk/",
                    json={"events": [{"external_id": external_id, "name": EVENT, "occurred_at": now_iso()}]},
                    headers={"Authorization": f"Bearer {key}"},
                )
                return external_id if r.status_code == 200 else None

            cpu = cpu_now()
            paced = Paced(args.rate, min(args.e2e_seconds, (args.profiles - offset) / args.rate), event)
            paced.run()
            spent = cpu_per_call(cpu, paced.total)
            time.sleep(10)
            sent_at = {paced.answers[i]: paced.sent[i] for i in paced.answers}
            path = tmp / "journey.json"
            path.write_text(json.dumps(sent_at))
            rows = shell(env, JOURNEY_RESULTS, PATH=str(path))
            spans = [f - sent_at[e] for e, (s, f) in rows.items() if s == "accepted" and f is not None]
            report["journey"] = {
                "rate": args.rate,
                "sent": paced.total,
                "errors": paced.errors,
                "accepted": len(spans),
                "accepted_within_1s_of_the_end": sum(
                    1 for e, (s, f) in rows.items() if s == "accepted" and f and f <= paced.ended + 1
                ),
                "p50_ms": ms(percentile(spans, 50)),
                "p99_ms": ms(percentile(spans, 99)),
                **spent,
                "load": [started_load, load()],
            }
            progress(report, "journey")

        if "soak" in phases:
            started_load = load()
            paced = Paced(args.rate, args.soak_seconds, trigger_request(url, key, lambda i: i % args.profiles))
            samples = []

            def sample():
                t0 = time.time()
                while not getattr(paced, "ended", None):
                    samples.append(
                        {
                            "t": round(time.time() - t0),
                            "web_mb": round(tree_rss(procs["web"].pid), 1),
                            "workers_mb": round(tree_rss(procs["workers"].pid), 1),
                            "sender_mb": round(rss_mb(procs["sender"].pid), 1),
                            "queued": shell(env, COUNTS).get("queued", 0),
                            "load": load(),
                        }
                    )
                    time.sleep(10)

            sampler = threading.Thread(target=sample)
            sampler.start()
            paced.run()
            sampler.join()
            after_first = next((s for s in samples if s["t"] >= 60), samples[0])
            report["soak"] = {
                "rate": args.rate,
                "seconds": args.soak_seconds,
                "errors": paced.errors,
                "web_mb_after_1min": after_first["web_mb"],
                "web_mb_end": samples[-1]["web_mb"],
                "workers_mb_after_1min": after_first["workers_mb"],
                "workers_mb_end": samples[-1]["workers_mb"],
                "sender_mb_after_1min": after_first["sender_mb"],
                "sender_mb_end": samples[-1]["sender_mb"],
                "queued_samples": [s["queued"] for s in samples],
                "load": [started_load, load()],
            }
            progress(report, "soak")

        if "crash" in phases:
            started_load = load()
            base_profile = 0
            crash_seconds = 40
            if args.profiles < args.rate * crash_seconds:
                raise SystemExit("--profiles must cover one profile per crash-run trigger")
            import httpx

            before = httpx.get(f"http://127.0.0.1:{sim_port}/control/counts", timeout=30).json()
            paced = Paced(args.rate, crash_seconds, trigger_request(url, key, lambda i: base_profile + i))
            killed = {}

            def kill_sender():
                time.sleep(10)
                procs["sender"].send_signal(signal.SIGKILL)
                procs["sender"].wait()
                killed.update(pid=procs["sender"].pid, at=time.time())
                time.sleep(2)
                procs["sender"] = subprocess.Popen([PY, "manage.py", "send_stream"], **quiet)

            killer = threading.Thread(target=kill_sender)
            killer.start()
            paced.run()
            killer.join()
            settle_by = time.time() + 240
            while time.time() < settle_by:
                counts = shell(env, COUNTS)
                if not counts.get("queued") and not counts.get("sending"):
                    break
                time.sleep(3)
            counts = shell(env, COUNTS)
            received = httpx.get(f"http://127.0.0.1:{sim_port}/control/counts", timeout=30).json()
            report["crash"] = {
                "rate": args.rate,
                "seconds": crash_seconds,
                "killed_sender_pid": killed.get("pid"),
                "sent": paced.total,
                "errors": paced.errors,
                "deliveries_by_status": counts,
                "tokens_received_twice": sum(1 for t, n in received.items() if n - before.get(t, 0) > 1),
                "load": [started_load, load()],
            }
            progress(report, "crash")
    finally:
        for name, proc in procs.items():
            if name == "workers":
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if not args.var_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
