"""Tests that start the product's own processes: the checkout, a free port, `manage.py`, a process's children."""

import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A free port whose next one is free too (the push simulator's sandbox listens there)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port


def as_from_a_terminal() -> None:
    """A child's ``preexec_fn``: Ctrl-C's default action, as a command started from a terminal has.
    A suite run in the background of a shell hands its children SIGINT ignored, and Python then
    never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def manage(args, env, **kwargs) -> subprocess.CompletedProcess:
    """``manage.py`` with ``args`` in the checkout, under ``env``, as from a terminal; its output
    captured as text."""
    kwargs.setdefault("preexec_fn", as_from_a_terminal)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, **kwargs
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first, then theirs), as /proc lists them now."""
    found = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child, *descendants(child)]
    return found
