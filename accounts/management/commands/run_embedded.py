"""Start the embedded stack in one terminal: web, task worker and (when present) the push simulator."""

import os
import signal
import subprocess
import sys
import time

from django.core.management import get_commands
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the web app, a django-q2 worker and the push simulator until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")

    def handle(self, *args, addr, **options):
        manage = [sys.executable, "manage.py"]
        commands = [manage + ["runserver", "--noreload", addr], manage + ["qcluster"]]
        if "pushsim" in get_commands():
            commands.append(manage + ["pushsim"])
        procs = [subprocess.Popen(cmd, env=os.environ.copy()) for cmd in commands]
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
            failed = [" ".join(p.args[2:]) for p in procs if p.poll() not in (None, 0)]
            if failed:
                self.stderr.write(f"stopped because {', '.join(failed)} exited")
        except KeyboardInterrupt:
            pass
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
