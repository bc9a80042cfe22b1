"""`make run`'s whole stack (web, worker, push simulator) on SQLite in a temporary folder, and its
stop. A file of its own: the suite runs a file on one worker (``--dist loadfile``), and this test
and the set-up's in ``tests/test_embedded.py`` are the suite's two longest."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.processes import ROOT, as_from_a_terminal, descendants, free_port, free_port_pair


def _start(embedded_env, tmp_path) -> tuple[subprocess.Popen, Path, int, int]:
    """`make run`'s stack on the migrated SQLite database in ``tmp_path`` (``embedded_env_migrated``),
    on free ports: its process, its log, the web app's port and the simulator's."""
    sim_port = free_port_pair()  # and its next, the sandbox's
    port = next(p for p in iter(free_port, None) if p not in (sim_port, sim_port + 1))
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        stack = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "run_embedded",
                "--addr",
                f"127.0.0.1:{port}",
                "--pushsim-port",
                str(sim_port),
            ],
            cwd=ROOT,
            env=embedded_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a process group of its own, as a terminal gives `make run`
            preexec_fn=as_from_a_terminal,
        )
    return stack, log, port, sim_port


def test_make_run_looks_like_the_product_and_ctrl_c_stops_everything_cleanly(embedded_env_migrated, tmp_path):
    """`make run`'s stack: no debug pages, error pages inside the admin's frame, static files
    served; Ctrl-C (SIGINT to the whole process group) stops web, worker, stream sender and simulator
    cleanly."""
    stack, log, port, _ = _start(embedded_env_migrated, tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as http:
            for _ in range(300):
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            missing = http.get("/no/such/page/")
            assert missing.status_code == 404
            assert "URLconf" not in missing.text and "Traceback" not in missing.text
            assert 'id="back-to-admin"' in missing.text and 'id="site-name"' in missing.text
            login = http.get("/admin/login/")
            css = re.search(r'href="(/static/admin/css/base[^"]*\.css)"', login.text).group(1)
            assert http.get(css).status_code == 200
        # Wait for the worker, the stream sender and the simulator to be running before stopping them.
        deadline = time.monotonic() + 60
        ready = ("running", "stream sender 0 started", "Push simulator:")
        while time.monotonic() < deadline and not all(mark in log.read_text() for mark in ready):
            time.sleep(0.2)
        family = descendants(stack.pid)
        # web, worker (its sentinel and workers), stream sender, simulator
        assert len(family) >= 5, (family, log.read_text()[-3000:])
        started = time.monotonic()
        os.killpg(stack.pid, signal.SIGINT)
        assert stack.wait(timeout=60) == 0, log.read_text()[-3000:]
        assert time.monotonic() - started < 60
    finally:
        if stack.poll() is None:
            os.killpg(stack.pid, signal.SIGKILL)
    output = log.read_text()
    for bad in ("Traceback", "RecursionError", "Segmentation fault", "ERROR"):
        assert bad not in output, output[-3000:]
    assert "Stopped." in output
    assert "Stream sender 0 stopped" in output
    # Nothing is left behind.
    time.sleep(0.5)
    assert [pid for pid in family if Path(f"/proc/{pid}").exists()] == []


def test_the_stack_stops_when_make_run_is_killed_outright(embedded_env_migrated, tmp_path):
    """SIGKILL to `make run`'s process (which cannot stop anything then): its web app, worker,
    stream sender and simulator, each asked to stop when their parent dies, stop too, and leave
    the ports for the next `make run`."""
    stack, log, _, sim_port = _start(embedded_env_migrated, tmp_path)
    family = []
    try:
        deadline = time.monotonic() + 120
        ready = ("running", "stream sender 0 started", "Push simulator:")
        while time.monotonic() < deadline and not all(mark in log.read_text() for mark in ready):
            time.sleep(0.2)
        family = descendants(stack.pid)
        assert len(family) >= 5, (family, log.read_text()[-3000:])
        # The senders send to this simulator's port, not the default one.
        environ = Path(f"/proc/{family[0]}/environ").read_bytes().split(b"\0")
        assert f"PUSHDESK_PUSHSIM_FCM_URL=http://127.0.0.1:{sim_port}".encode() in environ
        stack.kill()
        stack.wait(timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in family):
            time.sleep(0.2)
        assert [pid for pid in family if Path(f"/proc/{pid}").exists()] == [], log.read_text()[-3000:]
    finally:
        for pid in [*family, stack.pid]:
            try:
                os.kill(pid, signal.SIGKILL)  # whatever is left, if the test failed
            except ProcessLookupError:
                pass
        stack.wait(timeout=10)
