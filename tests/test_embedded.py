"""`make run`'s set-up on SQLite in a temporary folder: migrate, demo data, the admin answers."""

import re
import subprocess
import sys
import time

import httpx

from tests.processes import ROOT, free_port, manage


def test_embedded_setup_brings_up_the_admin_with_demo_users(embedded_env, tmp_path):
    migrate = manage(["migrate", "--noinput"], embedded_env, timeout=300)
    assert migrate.returncode == 0, migrate.stderr
    assert (tmp_path / "pushdesk.sqlite3").exists()
    journal = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sqlite3; print(sqlite3.connect('{tmp_path / 'pushdesk.sqlite3'}').execute('pragma journal_mode').fetchone()[0])",
        ],
        capture_output=True,
        text=True,
    )
    assert journal.stdout.strip() == "wal"

    demo = manage(["demo_setup"], embedded_env, timeout=300)
    assert demo.returncode == 0, demo.stderr
    passwords = dict(re.findall(r"^\s+\w+\s+(\w+)\s+(\S+)$", demo.stdout, re.MULTILINE))
    assert set(passwords) >= {"admin", "approver", "manager", "viewer"}, demo.stdout
    # Its campaign and journey approved by the demo, over what the demo wrote and nobody changed.
    assert "Flash sale alert (live, API-triggered" in demo.stdout, demo.stdout
    assert "'Welcome back (demo)': live" in demo.stdout, demo.stdout

    again = manage(["demo_setup"], embedded_env, timeout=300)
    assert again.returncode == 0
    assert passwords["manager"] not in again.stdout  # printed once only

    # The worker takes tasks from django-q2's ORM broker.
    enqueue = manage(
        ["shell", "-c", "from django_q.tasks import async_task; print(async_task('math.copysign', 2, -1))"],
        embedded_env,
        timeout=60,
    )
    assert enqueue.returncode == 0, enqueue.stderr
    task_id = enqueue.stdout.strip().splitlines()[-1]
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env=embedded_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # One process waits for the result (each `manage.py` start costs seconds on a busy machine).
        waiting = (
            "import time\n"
            "from django_q.tasks import result\n"
            "deadline = time.monotonic() + 60\n"
            f"while result('{task_id}') is None and time.monotonic() < deadline:\n"
            "    time.sleep(0.2)\n"
            f"print(result('{task_id}'))"
        )
        check = manage(["shell", "-c", waiting], embedded_env, timeout=120)
        outcome = check.stdout.strip().splitlines()[-1] if check.stdout.strip() else ""
        assert outcome == "-2.0", check.stderr
    finally:
        worker.terminate()
        try:
            output, _ = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # a busy machine: the cluster's shutdown is slow, not wrong
            worker.kill()
            output, _ = worker.communicate(timeout=30)
    assert "ERROR" not in output, output

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=embedded_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as http:
            for _ in range(600):  # a busy machine starts Django slowly
                try:
                    login_page = http.get("/admin/login/")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert login_page.status_code == 200
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text).group(1)
            response = http.post(
                "/admin/login/?next=/admin/",
                data={"username": "manager", "password": passwords["manager"], "csrfmiddlewaretoken": token},
                headers={"Referer": f"{base}/admin/login/"},
            )
            assert response.status_code == 302, response.text[:500]
            index = http.get("/admin/")
            assert index.status_code == 200
            assert "Pushdesk" in index.text
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_ctrl_c_before_a_command_sets_up_its_own_stop_ends_it_without_a_traceback(embedded_env):
    """Ctrl-C while Django loads (as when `make run` is stopped right after it starts) is reported
    the way a shell reports it, exit 130, not as a traceback (``manage`` starts it as from a
    terminal, Ctrl-C's default action in place)."""
    interrupted = manage(
        ["shell", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGINT)"], embedded_env, timeout=120
    )
    assert interrupted.returncode == 130
    assert "Traceback" not in interrupted.stderr + interrupted.stdout


# A journey engine run over 8,000 profiles while another connection writes a row every 0.2 s.
_ENGINE_BESIDE_A_WRITER = """
import json, threading, time
from django.db import connections
from accounts.services import access_grant
from audiences.models import Profile
from journeys.services.engine import journeys_run_due
from journeys.services.entries import journey_enter_segment
from journeys.services.lifecycle import journey_approve, journey_create, journey_submit
from tests.factories import AppFactory, SegmentFactory, UserFactory

alice, bob = UserFactory(role="Manager"), UserFactory(role="Approver")
app = AppFactory()
everyone = SegmentFactory(rules={"all": [{"field": "external_id", "op": "exists"}]})
for user in (alice, bob):
    access_grant(obj=app, to=user, by=None)
    access_grant(obj=everyone, to=user, by=None)
Profile.objects.bulk_create([Profile(external_id=f"p{i}") for i in range(8000)], batch_size=2000)
graph = {"steps": [{"id": "w", "type": "wait", "seconds": 0, "next": "done"}, {"id": "done", "type": "exit"}]}
journey = journey_create(by=alice, name="J", app=app, graph=graph, entry_kind="segment", entry_segment=everyone)
journey_submit(journey_id=journey.pk, by=alice)
journey_approve(journey_id=journey.pk, by=bob)
journey_enter_segment(journey_id=journey.pk)
result = {}

def run():
    started = time.monotonic()
    result["enrollments"] = journeys_run_due(batch=200).enrollments
    result["seconds"] = time.monotonic() - started
    connections.close_all()

engine = threading.Thread(target=run)
engine.start()
waits = []
while engine.is_alive():
    started = time.monotonic()
    Profile.objects.filter(external_id="p1").update(locale="fr")
    waits.append(time.monotonic() - started)
    time.sleep(0.2)
engine.join()
print(json.dumps({**result, "waits": waits}))
"""


def test_a_long_journey_run_on_sqlite_lets_other_writers_in(embedded_env_migrated):
    """SQLite has one writer at a time, and a waiting one polls: a loop of back-to-back write
    transactions kept every other writer (the admin, the task queue) waiting for the whole run,
    then "database is locked". The engine now pauses between its batches (``config.db.write_pacer``):
    a write beside it waits for about a batch."""
    import json

    ran = manage(["shell", "-c", _ENGINE_BESIDE_A_WRITER], embedded_env_migrated, timeout=300)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["enrollments"] == 8000
    assert result["seconds"] > 2 and len(result["waits"]) > 5, result  # the writer wrote during the run
    # A write waits for a batch at most (a few on a loaded machine, where a batch takes seconds),
    # never the whole run: without the pauses it waited until the run ended, or for SQLite's busy
    # timeout (20 s) and then failed.
    batch_seconds = result["seconds"] / (result["enrollments"] / 200)
    assert max(result["waits"]) < max(2.5, 3 * batch_seconds), result
