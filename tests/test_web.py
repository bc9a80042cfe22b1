"""The web server (``python -m config.web``, granian): its options, the secrets kept out of each
request, a graceful stop on SIGTERM, a dead worker replaced."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from cryptography.fernet import Fernet

from config.web import SECRETS, parse
from tests.fakes.workers import database_url, wait_for
from tests.processes import ROOT, free_port


def _serve(tmp_path, *options, app="tests.fakes.web_app:factory"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDESK_")}
    env.update(
        PUSHDESK_VAR_DIR=str(tmp_path),
        DATABASE_URL=database_url(),
        SECRET_KEY="a-test-only-secret-key-" + "s3" * 20,
        PUSHDESK_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        PUSHDESK_METRICS_TOKEN="a-test-only-metrics-token",
    )
    port = free_port()
    command = [sys.executable, "-m", "config.web", "--bind", f"127.0.0.1:{port}", "--app", app, *options]
    log = open(tmp_path / "web.log", "wb")  # noqa: SIM115 (closed with the process)
    web = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    web.log = log
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/pid", timeout=5)
            return web, url
        except httpx.TransportError:
            time.sleep(0.1)
    web.kill()
    raise AssertionError((tmp_path / "web.log").read_text())


def _stop(web):
    if web.poll() is None:
        os.killpg(web.pid, signal.SIGKILL)
    web.wait(30)
    web.log.close()


def test_options_have_production_defaults_and_bad_ones_are_refused_in_a_sentence():
    args = parse([])
    assert (args.bind, args.workers, args.threads, args.stop_seconds) == (("127.0.0.1", 8000), 2, 16, 30)
    assert args.thread_idle_seconds == 30
    assert parse(["--bind", "[::]:8080"]).bind == ("::", 8080)
    bad_options = {
        ("--bind", "8000"): "HOST:PORT",
        ("--bind", "0.0.0.0:http"): "HOST:PORT",
        ("--bind", "0.0.0.0:²"): "HOST:PORT",  # a digit to isdigit(), argparse's "invalid _bind value" to int()
        ("--bind", "0.0.0.0:99999"): "HOST:PORT",
        ("--workers", "0"): "a whole number, 1 or more",
        ("--threads", "x"): "a whole number, 1 or more",
        ("--workers", "²"): "a whole number, 1 or more",  # a digit to isdigit(), a traceback to int()
        ("--threads", "١٦"): "a whole number, 1 or more",
        ("--thread-idle-seconds", "²"): "a whole number of seconds from 5 to 600",
        ("--thread-idle-seconds", "4"): "a whole number of seconds from 5 to 600",
        ("--thread-idle-seconds", "601"): "a whole number of seconds from 5 to 600",
        ("--app", "config.web"): "give MODULE:FUNCTION",
        # Refused before any worker starts, not respawned in a loop of tracebacks:
        ("--app", "nosuch.module:factory"): "the module 'nosuch.module' cannot be imported",
        ("--app", "config.web:nothing"): "the module 'config.web' has no function 'nothing'",
    }
    for bad, sentence in bad_options.items():
        result = subprocess.run(
            [sys.executable, "-m", "config.web", *bad], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, bad
        assert sentence in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_web_unit_runs_the_server_with_options_it_takes():
    unit = (ROOT / "docs" / "deploy" / "pushdesk-web.service").read_text()
    command = next(line for line in unit.splitlines() if line.startswith("ExecStart=")).split()
    assert command[1:3] == ["-m", "config.web"]
    args = parse(command[3:])
    stop_timeout = int(next(line for line in unit.splitlines() if line.startswith("TimeoutStopSec=")).split("=")[1])
    assert args.bind == ("0.0.0.0", 8000) and args.stop_seconds < stop_timeout  # noqa: S104 (the unit's)


def test_a_request_s_environ_holds_no_secret(tmp_path):
    """granian copies the process's environment into each request's environ (``request.META``);
    the secrets the settings read are gone from a worker's environment before it serves."""
    web, url = _serve(tmp_path, "--workers", "1")
    try:
        names = set(httpx.get(f"{url}/environ", timeout=10).json())
    finally:
        _stop(web)
    assert {"PATH", "PATH_INFO", "REQUEST_METHOD"} <= names  # the environment is copied in
    assert not names & set(SECRETS)
    assert {"SECRET_KEY", "PUSHDESK_ENCRYPTION_KEY", "DATABASE_URL", "PUSHDESK_METRICS_TOKEN"} <= set(SECRETS)


def test_sigterm_finishes_the_request_in_progress_then_stops(tmp_path):
    web, url = _serve(tmp_path, "--workers", "1", "--stop-seconds", "10")
    answers = []
    slow = threading.Thread(target=lambda: answers.append(httpx.get(f"{url}/slow", timeout=30)))
    try:
        slow.start()
        for _ in range(300):  # until the request is in progress
            if (tmp_path / "slow-started").exists():
                break
            time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "web.log").read_text())
        os.kill(web.pid, signal.SIGTERM)  # the main process only, as systemd's KillMode=mixed does
        slow.join(30)
        assert web.wait(30) == 0
    finally:
        _stop(web)
    assert [a.status_code for a in answers] == [200] and answers[0].text == "done"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/pid", timeout=5)


def test_a_worker_that_dies_is_started_again(tmp_path):
    web, url = _serve(tmp_path, "--workers", "1")
    try:
        first = int(httpx.get(f"{url}/pid", timeout=10).text)
        os.kill(first, signal.SIGKILL)
        for _ in range(300):
            try:
                second = int(httpx.get(f"{url}/pid", timeout=5).text)
                break
            except (httpx.TransportError, ValueError):
                time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "web.log").read_text())
    finally:
        _stop(web)
    assert second != first


def _peak_rss_kb(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()  # noqa: SIM115
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])


def test_a_large_upload_streams_through_the_worker(tmp_path):
    """A CSV import's body (up to 1 GB) reaches the app as it arrives: reading 200 MB, 1 MB at a
    time, grows the worker's peak memory by a few MB, not by the body."""
    web, url = _serve(tmp_path, "--workers", "1")
    size = 200 * 1024 * 1024
    try:
        worker = int(httpx.get(f"{url}/pid", timeout=10).text)
        before = _peak_rss_kb(worker)
        chunks = (b"x" * (1024 * 1024) for _ in range(size // (1024 * 1024)))
        answer = httpx.post(f"{url}/upload", content=chunks, timeout=120)
        after = _peak_rss_kb(worker)
    finally:
        _stop(web)
    assert answer.status_code == 200 and int(answer.text) == size
    assert after - before < 50 * 1024, (before, after)


def test_the_server_s_start_logs_no_warning_of_the_measured_thread_count(tmp_path):
    # More threads than granian's threshold (twice the cores, plus one) on any machine: it warns.
    threads = 2 * (os.cpu_count() or 1) + 2
    web, url = _serve(tmp_path, "--workers", "1", "--threads", str(threads))
    _stop(web)
    log = (tmp_path / "web.log").read_text()
    assert "Started worker-1" in log
    assert "WARNING" not in log and "quite high" not in log, log


def _backends_alive(pids: set[int]) -> set[int]:
    import psycopg

    with psycopg.connect(database_url(), autocommit=True) as db:
        rows = db.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)]).fetchall()
    return {pid for (pid,) in rows}


def _burst(url: str, requests: int) -> set[int]:
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=requests)) as client:
        answers = []
        threads = [
            threading.Thread(target=lambda: answers.append(client.get(f"{url}/backend"))) for _ in range(requests)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert [a.status_code for a in answers] == [200] * requests
    return {int(a.text) for a in answers}


def test_a_thread_that_ends_idle_closes_its_database_connection(tmp_path):
    """The server ends a thread idle for --thread-idle-seconds; the PostgreSQL connection that thread
    held is closed with it, so a burst after a quiet spell does not add connections to the old ones."""
    web, url = _serve(tmp_path, "--workers", "1", "--threads", "4", "--thread-idle-seconds", "5")
    try:
        first = _burst(url, 12)
        assert 2 <= len(first) <= 4
        deadline = time.monotonic() + 30
        while len(_backends_alive(first)) == len(first) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(_backends_alive(first)) < len(first), "no connection closed after its thread ended"
        # The other threads end too, idle as long (the server may keep one): waited for, up to 10 s
        # more (the burst below holds the same bound either way).
        wait_for(lambda: len(_backends_alive(first)) <= 1, timeout=10, step=0.2)
        second = _burst(url, 12)
        assert len(_backends_alive(first | second)) <= 4  # one connection a thread, never more
    finally:
        _stop(web)


def test_an_address_already_in_use_is_said_in_one_line(tmp_path):
    """Granian's own refusal was a Python traceback and a Rust backtrace, some sixty lines."""
    import socket

    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDESK_")}
    env.update(PUSHDESK_VAR_DIR=str(tmp_path), DATABASE_URL=database_url())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "config.web", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"python -m config.web: error: 127.0.0.1:{port} is in use: stop what listens there, or choose another --bind"
    ], result.stderr
