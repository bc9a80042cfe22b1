"""Benchmark: the send path's cost per message in CPU instructions, which the machine's load and speed
do not change.

    .venv/bin/python bench/send_instructions.py [--devices 1000,3000] [--python-calls]

``bench/delivery.py`` measures the send pipeline's rate and CPU seconds; on a shared or slower
machine those drift by more than a change under test. This one counts what a worker executes:
``dispatch_send`` (claim, render, send over HTTP/2 and TLS to nginx, write back) runs in a process
of its own under valgrind's callgrind, once per audience size, and the difference between two sizes
divided by the difference in messages is the instructions per message, the process's start-up and
each send's fixed work cancelled out. The process's garbage collector is tuned as a worker's is
(``config.runtime.gc_tune``). With ``--python-calls`` the same sends run again under cProfile
(without valgrind): Python function calls per message, the same way, to tell more work from slower
work.

On PostgreSQL and Redis (``BENCH_DATABASE_URL``, default ``pushdesk_bench_instructions``, which it
creates and migrates; ``REDIS_URL``, default db 7). The audience is ``bench/delivery.py``'s (a static
segment of N profiles, each with one device). Needs ``valgrind`` (apt) and nginx (``nginx-light``).
To compare two commits, run it from a checkout of each, each with its own database: the count per
message varies by about 2 % from run to run (the threads' interleaving), so a change smaller than
that needs several runs a side. About a minute per size.

Prints one JSON line: instructions per message, and with ``--python-calls`` calls per message.
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
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/pushdesk_bench_instructions"
os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"] = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/7")
os.environ.pop("PUSHDESK_TASKS_SYNC", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Batches of 500 rows; a lease and a provider timeout that a run under valgrind (about fifty
# times slower) stays inside, so no row is retried or left to the watchdog.
os.environ["PUSHDESK_SEND_BATCH"] = "500"
os.environ["PUSHDESK_SEND_LEASE_SECONDS"] = "200"
os.environ["PUSHDESK_SEND_TIMEOUT_SECONDS"] = "60"
os.environ.setdefault("LOG_LEVEL", "WARNING")

# What the measured process runs: argv[1] the dispatch, argv[2] a cProfile output file or "".
_SEND = """
import os, sys
sys.path.insert(0, os.getcwd())
import django
django.setup()
from config.runtime import gc_tune
from delivery.services.sending import dispatch_send
gc_tune()
if sys.argv[2]:
    import cProfile
    profile = cProfile.Profile()
    report = profile.runcall(dispatch_send, dispatch_id=int(sys.argv[1]))
    profile.dump_stats(sys.argv[2])
else:
    report = dispatch_send(dispatch_id=int(sys.argv[1]))
print(dict(report.outcomes), file=sys.stderr)
print(report.claimed, sum(report.outcomes.values()), report.outcomes.get("accepted", 0))
"""


def _resolved_dispatch(devices: int, base: str) -> int:
    """A dispatch of ``devices`` rows resolved and waiting for its sender (no worker runs here)."""
    from bench_delivery import bench_content, ensure_audience  # bench/delivery.py, loaded by main()
    from support.send_setup import make_app

    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_create, dispatch_prepare

    segment = ensure_audience(devices)
    app, *_ = make_app(token_uri=f"{base}/token", segment=segment)
    content = bench_content(app)
    dispatch = dispatch_create(
        app_id=app.pk, kind=Dispatch.Kind.API_TRIGGER, spec=content.spec(), segment_id=segment.pk, label="bench"
    )
    dispatch_prepare(dispatch_id=dispatch.pk)  # its send task is queued, and never taken: sent below
    return dispatch.pk


def _measure(dispatch_id: int, workdir: Path, *, python_calls: bool) -> dict:
    from django.db import connection

    connection.close()  # the measured process opens its own
    script = workdir / "send.py"
    script.write_text(_SEND)
    if python_calls:
        stats = workdir / f"calls.{dispatch_id}"
        command = [sys.executable, str(script), str(dispatch_id), str(stats)]
    else:
        out = workdir / f"callgrind.{dispatch_id}"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(script)]
        command += [str(dispatch_id), ""]
    done = subprocess.run(command, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the send failed: {done.stderr[-2000:]}")
    claimed, outcomes, accepted = (int(n) for n in done.stdout.split()[-3:])
    found = {"claimed": claimed, "accepted": accepted, "outcomes": outcomes, "said": done.stderr.strip()[-300:]}
    if python_calls:
        import pstats

        found["python_calls"] = sum(entry[1] for entry in pstats.Stats(str(stats)).stats.values())
    else:
        collected = re.search(r"Collected : (\d+)", done.stderr)
        if not collected:
            sys.exit(f"callgrind printed no total: {done.stderr[-2000:]}")
        found["instructions"] = int(collected[1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="1000,3000", help="two audience sizes")
    parser.add_argument("--python-calls", action="store_true", help="also count Python calls per message")
    args = parser.parse_args()
    small, large = (int(n) for n in args.devices.split(","))
    if not shutil.which("valgrind"):
        sys.exit("valgrind is missing: apt-get install valgrind")

    import importlib.util

    from support.nginx import start_nginx
    from support.send_setup import ensure_database

    workdir = Path(tempfile.mkdtemp(prefix="pushdesk-bench-"))
    os.chmod(workdir, 0o755)
    proc, base, ca_path = start_nginx(workdir)
    os.environ.update(
        {"PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": base, "PUSHDESK_PUSHSIM_FCM_URL": base, "PUSHDESK_CA_BUNDLE": ca_path}
    )
    spec = importlib.util.spec_from_file_location("bench_delivery", ROOT / "bench" / "delivery.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_delivery"] = module
    spec.loader.exec_module(module)
    ensure_database()
    import django

    django.setup()
    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_gate_register

    dispatch_gate_register(kind=Dispatch.Kind.API_TRIGGER, gate=lambda **kwargs: None)
    result: dict = {"benchmark": "send_instructions", "devices": [small, large]}
    try:
        kinds = [False, True] if args.python_calls else [False]
        runs = {
            (devices, calls): _measure(_resolved_dispatch(devices, base), workdir, python_calls=calls)
            for calls in kinds
            for devices in (small, large)
        }
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    for (devices, _), found in runs.items():
        if found["accepted"] != devices:
            sys.exit(
                f"{devices} rows, {found['accepted']} accepted: a retried row makes the counts unequal ({found['said']})"
            )
    messages = large - small
    result["instructions_per_message"] = round(
        (runs[(large, False)]["instructions"] - runs[(small, False)]["instructions"]) / messages
    )
    result["instructions"] = {str(devices): runs[(devices, False)]["instructions"] for devices in (small, large)}
    if args.python_calls:
        result["python_calls_per_message"] = round(
            (runs[(large, True)]["python_calls"] - runs[(small, True)]["python_calls"]) / messages, 2
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
