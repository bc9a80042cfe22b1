"""Start the embedded stack in one terminal: web, task worker, stream sender and (when present) the push simulator."""

import ctypes
import os
import signal
import subprocess
import sys
import time

from django.core.management import get_commands
from django.core.management.base import BaseCommand

_PR_SET_PDEATHSIG = 1
# Where `make run` serves the admin (and the static files: the demo content's image among them).
DEFAULT_ADDR = "127.0.0.1:8000"


def _stop_with_parent(parent: int):
    """Run in each child before it starts (Linux): SIGINT, its clean stop, when this process dies
    without stopping it (SIGKILL, say), so that nothing is left holding the ports for the next
    `make run`. Elsewhere nothing is asked."""

    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGINT)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # died before the request was made
            os.kill(os.getpid(), signal.SIGINT)

    return arm


class Command(BaseCommand):
    help = "Run the web app, a django-q2 worker, the stream sender and the push simulator until Ctrl-C (or SIGTERM)."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default=DEFAULT_ADDR)
        parser.add_argument(
            "--pushsim-port",
            type=int,
            default=8440,
            help="the simulator's port (sandbox: the next); the worker and the stream sender send there",
        )

    def handle(self, *args, addr, pushsim_port, **options):
        manage = [sys.executable, "manage.py"]
        commands = [manage + ["runserver", "--noreload", addr], manage + ["qcluster"]]
        if "send_stream" in get_commands():  # API triggers and event-entered journeys, as they come
            commands.append(manage + ["send_stream"])
        if "pushsim" in get_commands():
            commands.append(manage + ["pushsim", "--port", str(pushsim_port), "--sandbox-port", str(pushsim_port + 1)])
        stopping: list[int] = []

        def on_signal(signum, frame):
            stopping.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        # Each in a session of its own: Ctrl-C reaches this process only, which stops them in
        # order, once each (a worker signalled twice, by the terminal and by us, stops badly).
        # The senders send where this simulator listens, unless told otherwise. (An FCM service
        # account keeps the token URI it was given: the demo's names the port demo_setup saw.)
        env = os.environ.copy()
        env.setdefault("PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL", f"http://127.0.0.1:{pushsim_port}")
        env.setdefault("PUSHDESK_PUSHSIM_APNS_SANDBOX_URL", f"http://127.0.0.1:{pushsim_port + 1}")
        env.setdefault("PUSHDESK_PUSHSIM_FCM_URL", f"http://127.0.0.1:{pushsim_port}")
        procs = [
            subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_stop_with_parent(os.getpid()))
            for cmd in commands
        ]
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
        failed = [" ".join(p.args[2:]) for p in procs if p.poll() not in (None, 0)]
        if failed and not stopping:
            self.stderr.write(f"stopping: {', '.join(failed)} exited")
        self.stdout.write("Stopping the web app, the worker, the stream sender and the push simulator…")
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # what each expects from a terminal: a clean stop
        deadline = time.monotonic() + 60
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.stdout.write("Stopped.")
        if failed and not stopping:
            raise SystemExit(1)
