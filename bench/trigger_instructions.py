"""Benchmark: a trigger call's cost in the web process in CPU instructions, which the machine's load
and speed do not change, against the ceiling's call counted the same way.

    .venv/bin/python bench/trigger_instructions.py [--calls 100,400] [--content profile|context]
        [--count instructions,python_calls] [--var-dir DIR]

``bench/trigger.py`` measures requests per second against the ceiling (a bare DRF endpoint doing one
INSERT) with wrk, the web, PostgreSQL, the sender and the provider sharing two cores; on a shared
or drifting machine its turns move by more than a change to the path. This one counts what the web
process executes for a call: the WSGI application as a web worker serves it (``config.web``'s
``worker_application``: Django's handler, the middleware, the API's own route, the trigger's
services and its PostgreSQL and Redis clients) runs in a process of its own under valgrind's
callgrind, fed ready-made WSGI requests (no HTTP server: what the server costs is the same for
both endpoints), at two numbers of calls after a warm-up (each connection's prepared plans made,
the caches filled); the difference between the two runs divided by the difference in calls is the
instructions per call, the start-up and the warm-up cancelled out. The ceiling's endpoint
(``bench/trigger.py``'s) is counted the same way, in the same run. With ``--count python_calls``
the same calls run under cProfile (without valgrind): Python function calls per call, to tell
more work from slower work; the profiles stay in ``--var-dir`` when one is given.

The server's side of a call (PostgreSQL's backend) is not in the instructions. ``--count
postgres_us`` reads it instead: the CPU time of the backend serving the calls (from ``/proc``, so
the server must run on this machine), the same difference per call. It is time, not instructions:
the machine's speed moves it, so compare two commits by running it from each checkout in turns, in
one hour.

On PostgreSQL and Redis (``BENCH_DATABASE_URL``, default ``pushdesk_bench_trigger_instructions``,
dropped and created again; Redis db ``--redis-db``, 9, flushed). The setup is ``bench/trigger.py``'s
(the demo app, a live API-triggered transactional campaign, ``--content`` what it renders from).
Needs ``valgrind`` (apt). To compare two commits, run it from a checkout of each, each with its own
database. About a minute per run under valgrind.

Prints one JSON line: per call of the trigger and of the ceiling, what was counted, and the
trigger's count over the ceiling's.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from trigger import CEILING, CONTENT_BODIES, SETUP  # noqa: E402 (bench/trigger.py, beside this file)

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/pushdesk_bench_trigger_instructions"
WARM_CALLS = 50  # past the fifth execution PostgreSQL keeps each statement's generic plan

# What the measured process runs: argv[1] "trigger" or "ceiling", argv[2] the calls to count,
# argv[3] the most calls of any run (their requests are built in every run, so that building them
# cancels out), argv[4] a cProfile output file or "".
_CALLS = r"""
import io, json, os, sys
sys.path.insert(0, os.getcwd())
mode, calls, most, profile_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
campaign, key, profiles = int(os.environ["BENCH_CAMPAIGN"]), os.environ["BENCH_KEY"], int(os.environ["BENCH_PROFILES"])
if mode == "ceiling":
    from bench_ceiling import application
    path = "/bare/"
else:
    from config.web import worker_application
    application = worker_application()
    path = f"/api/v1/campaigns/{campaign}/trigger/"
from config.runtime import gc_tune
gc_tune()
bodies = [json.dumps({"recipients": [{"external_id": f"bench-{i % profiles}"}], "context": {"order": str(i)}}).encode()
          for i in range(most + 50)]


def environ(body):
    return {"REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1", "HTTP_AUTHORIZATION": f"Bearer {key}", "HTTP_ACCEPT": "*/*",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False}


answers = {}


def call(body):
    status = []
    result = application(environ(body), lambda line, headers, exc_info=None: status.append(line))
    for _ in result:
        pass
    result.close()
    answers[status[0]] = answers.get(status[0], 0) + 1


for body in bodies[most:most + 50]:
    call(body)
printed = {}
if profile_out == "postgres":
    from django.db import connection


    def backend_cpu():  # the CPU seconds of the PostgreSQL backend serving this process
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return pid, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


    pid, before = backend_cpu()
    for body in bodies[:calls]:
        call(body)
    same, after = backend_cpu()
    if same != pid:
        sys.exit("the calls' database connection changed: their backend's CPU cannot be read")
    printed["postgres_seconds"] = after - before
elif profile_out:
    import cProfile
    profiler = cProfile.Profile()
    profiler.runcall(lambda: [call(body) for body in bodies[:calls]])
    profiler.dump_stats(profile_out)
else:
    for body in bodies[:calls]:
        call(body)
print(json.dumps({"answers": answers, **printed}))
"""


def _measure(mode: str, calls: int, most: int, workdir: Path, env: dict, *, unit: str) -> int:
    script = workdir / "calls.py"
    script.write_text(_CALLS)
    stats = workdir / f"calls.{mode}.{calls}"
    command = [sys.executable, str(script), mode, str(calls), str(most)]
    if unit == "python_calls":
        command.append(str(stats))
    elif unit == "postgres_us":
        command.append("postgres")
    else:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={stats}", *command, ""]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the {mode} calls failed: {done.stderr[-3000:]}")
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    answers = printed["answers"]
    if set(answers) != {"202 Accepted"} or sum(answers.values()) != calls + WARM_CALLS:
        sys.exit(f"the {mode} calls were answered {answers}: every one should be 202")
    if unit == "postgres_us":
        return round(printed["postgres_seconds"] * 1_000_000)
    if unit == "python_calls":
        import pstats

        return sum(entry[1] for entry in pstats.Stats(str(stats)).stats.values())
    collected = re.search(r"Collected : (\d+)", done.stderr)
    if not collected:
        sys.exit(f"callgrind printed no total: {done.stderr[-2000:]}")
    return int(collected[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="100,400", help="two numbers of calls, counted after the warm-up")
    parser.add_argument("--content", choices=sorted(CONTENT_BODIES), default="profile")
    parser.add_argument("--profiles", type=int, default=2000)
    parser.add_argument("--redis-db", type=int, default=9, help="flushed first")
    parser.add_argument(
        "--count",
        default="instructions",
        help="what to count, one or more of: instructions (valgrind), python_calls (cProfile), "
        "postgres_us (the CPU microseconds of the PostgreSQL backend serving the calls, read from /proc: "
        "the server must run on this machine; give --calls of a few thousand, the clock ticks 10 ms)",
    )
    parser.add_argument(
        "--var-dir", help="keep the keys, the script and what it counted here (default: a temporary folder, removed)"
    )
    args = parser.parse_args()
    small, large = (int(n) for n in args.calls.split(","))
    if not 0 < small < large:
        parser.error("--calls: two numbers, the first smaller")
    counted = args.count.split(",")
    if not counted or set(counted) - {"instructions", "python_calls", "postgres_us"}:
        parser.error("--count: one or more of instructions, python_calls and postgres_us")
    if "instructions" in counted and not shutil.which("valgrind"):
        sys.exit("valgrind is missing: apt-get install valgrind")

    database = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    workdir = Path(args.var_dir) if args.var_dir else Path(tempfile.mkdtemp(prefix="pushdesk-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": database,
        "REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
        "PUSHDESK_VAR_DIR": str(workdir),
        "DEBUG": "0",
        "ALLOWED_HOSTS": "127.0.0.1",
        "LOG_LEVEL": "WARNING",
        "PUSHDESK_TRIGGER_RATE_PER_KEY": "100000000",
        # The process's cached keys and campaign are dropped after this many seconds and loaded
        # again: a run under valgrind lasts minutes, and a reload in one run and not in the other
        # would count as the calls' work.
        "PUSHDESK_CACHE_SECONDS": "86400",
        "PYTHONPATH": str(workdir),
    }
    env.pop("PUSHDESK_TASKS_SYNC", None)
    name = database.rsplit("/", 1)[1]
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", "--force", name], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", name], check=True)
    subprocess.run(["redis-cli", "-n", str(args.redis_db), "flushdb"], check=True, capture_output=True)
    try:
        for command in (["migrate", "--noinput"], ["demo_setup"]):
            subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True)
        code = f"N = {args.profiles}\nBODY = {CONTENT_BODIES[args.content]!r}\n" + SETUP
        setup = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, check=True, capture_output=True
        )
        info = json.loads(setup.stdout.decode().strip().splitlines()[-1])
        (workdir / "bench_ceiling.py").write_text(CEILING)
        env.update(BENCH_CAMPAIGN=str(info["campaign"]), BENCH_KEY=info["key"], BENCH_PROFILES=str(args.profiles))
        if args.var_dir:  # to run calls.py again by hand: env $(cat bench.env) python calls.py trigger 100 100 ""
            names = ("DATABASE_URL", "REDIS_URL", "PUSHDESK_VAR_DIR", "DEBUG", "ALLOWED_HOSTS", "LOG_LEVEL")
            names += ("PUSHDESK_TRIGGER_RATE_PER_KEY", "PUSHDESK_CACHE_SECONDS", "PYTHONPATH")
            names += ("BENCH_CAMPAIGN", "BENCH_KEY", "BENCH_PROFILES")
            (workdir / "bench.env").write_text("".join(f"{name}={env[name]}\n" for name in names))

        result: dict = {"benchmark": "trigger_instructions", "content": args.content, "calls": [small, large]}
        for unit in counted:
            for mode in ("trigger", "ceiling"):
                counts = {n: _measure(mode, n, large, workdir, env, unit=unit) for n in (small, large)}
                per_call = (counts[large] - counts[small]) / (large - small)
                result[f"{mode}_{unit}_per_call"] = round(per_call, 1) if unit == "postgres_us" else round(per_call)
                if unit == "instructions":
                    result[f"{mode}_instructions"] = {str(n): counts[n] for n in (small, large)}
        for unit in counted:
            result[f"trigger_over_ceiling_{unit}"] = round(
                result[f"trigger_{unit}_per_call"] / result[f"ceiling_{unit}_per_call"], 2
            )
    finally:
        if not args.var_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
