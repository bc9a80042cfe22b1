"""The web server for the admin and the API: ``python -m config.web``, granian serving ``config.wsgi``.

    python -m config.web --bind 0.0.0.0:8000 --workers 2

- ``--workers``: processes (about one per core: the HTTP work runs in granian's own threads, outside
  Python); each runs ``--threads`` requests at once (16), each thread with its own PostgreSQL
  connection, and keeps more waiting in the server.
- ``--thread-idle-seconds``: a thread idle this long (30) ends, and the PostgreSQL connection it held
  is closed with it.
- ``--stop-seconds``: on SIGTERM a worker stops taking requests and finishes those in progress within
  this many seconds (30), then is killed.
- A worker that dies is started again.
- Its own lines (start, workers, stop) are written as the application's are (``LOG_FORMAT``,
  ``LOG_LEVEL``): with ``LOG_FORMAT=json`` one JSON object a line, like every other line.

Why granian (a Rust HTTP server running the WSGI app in threads) rather than gunicorn's threaded
workers: on the same two cores a trigger call costs 0.81–0.92 ms of the web's CPU under it against
1.22–1.26 ms under gunicorn, and triggers go 888–1,080 requests/s against 678–834 (``bench/trigger.py
--server``; README, "Performance").
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import weakref
from pathlib import Path

SERVER_LOGGERS = ("_granian", "granian.access")  # granian's own loggers (its Rust side logs as _granian)

# granian puts the process's environment into every request's environ (``request.META``), as CGI did.
# Once the settings have read them, these leave a web worker's environment, so that nothing showing a
# request's META (an error report, a debugging page) can show them.
SECRETS = ("SECRET_KEY", "PUSHDESK_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL", "PUSHDESK_METRICS_TOKEN", "SENTRY_DSN")

logger = logging.getLogger("pushdesk.web")


def worker_application():
    """What a worker serves (granian calls it in each worker process): the WSGI app, its settings read,
    then the secrets out of the environment granian copies into each request."""
    from config.wsgi import application

    for name in SECRETS:
        os.environ.pop(name, None)
    close_connections_of_ended_threads()
    return application


# granian ends a thread idle for --thread-idle-seconds but never frees its Python thread state, so the
# thread's Django connections (thread-local) stayed open for the life of the worker, and each burst
# after a quiet spell opened as many again. Each connection is noted with the thread that opened it,
# and one closed as soon as that thread is gone (Linux: the thread left /proc/self/task).
_OPENED_BY: dict[int, tuple[weakref.ref, int]] = {}
_OPENED_LOCK = threading.Lock()
ENDED_THREADS_CHECK_SECONDS = 2.0


def _note_connection(sender, connection, **kwargs) -> None:
    with _OPENED_LOCK:
        _OPENED_BY[id(connection)] = (weakref.ref(connection), threading.get_native_id())


def close_ended_threads_connections(tasks: Path = Path("/proc/self/task")) -> int:
    """Close the database connections whose thread has ended; return how many."""
    try:
        alive = {int(name) for name in os.listdir(tasks)}
    except OSError:
        return 0  # no /proc: nothing can be told, nothing is closed
    with _OPENED_LOCK:
        ended = [key for key, (_, thread) in _OPENED_BY.items() if thread not in alive]
        wrappers = [_OPENED_BY.pop(key)[0]() for key in ended]
    closed = 0
    for wrapper in wrappers:
        if wrapper is None or wrapper.connection is None:
            continue
        wrapper.inc_thread_sharing()  # its thread has ended: no one else uses it
        try:
            wrapper.close()
            closed += 1
        except Exception:  # a connection already broken: closing it is all that was wanted
            logger.debug("closing an ended thread's database connection failed", exc_info=True)
        finally:
            wrapper.dec_thread_sharing()
    return closed


def close_connections_of_ended_threads() -> None:
    """Note each database connection a thread opens, and close it once the thread has ended (checked
    every ENDED_THREADS_CHECK_SECONDS by a daemon thread of this worker)."""
    from django.db.backends.signals import connection_created

    connection_created.connect(_note_connection, dispatch_uid="config.web.note_connection")

    def watch() -> None:
        while True:
            time.sleep(ENDED_THREADS_CHECK_SECONDS)
            try:
                close_ended_threads_connections()
            except Exception:
                logger.exception("closing the database connections of ended threads failed")

    threading.Thread(target=watch, name="ended-threads-connections", daemon=True).start()


class MeasuredThreads(logging.Filter):
    """Drops granian's warning, at each start, that more Python threads than twice the cores "seems
    quite high": a web thread spends most of a request waiting on PostgreSQL and Redis, and 16 a
    worker was measured against fewer (``bench/trigger.py --threads``; README, "Performance")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Configuration allows spawning up to")


def server_logging(log_format: str, formatters: dict) -> dict:
    """granian's logging in the application's format (``LOGGING``'s formatter of that name)."""
    return {
        "formatters": {"pushdesk": formatters[log_format]},
        "filters": {"measured_threads": {"()": MeasuredThreads}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "pushdesk",
                "filters": ["measured_threads"],
                "stream": "ext://sys.stdout",
            }
        },
        "loggers": {name: {"handlers": ["console"], "level": "INFO", "propagate": False} for name in SERVER_LOGGERS},
    }


def _bind(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    number = _whole(port)
    if not host or number is None or number > 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: give HOST:PORT, e.g. 0.0.0.0:8000 (a port up to 65535)")
    return host.strip("[]"), number


def _whole(value: str) -> int | None:
    """``value`` as a whole number of ASCII digits, or None ("²" and "٣" are digits to isdigit(),
    and int() refused the first with a traceback)."""
    return int(value) if value.isascii() and value.isdigit() else None


def _positive(value: str) -> int:
    number = _whole(value)
    if number is None or number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number, 1 or more")
    return number


def _idle_seconds(value: str) -> int:
    number = _whole(value)
    if number is None or not 5 <= number <= 600:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number of seconds from 5 to 600")
    return number


def _app(value: str) -> str:
    module, _, function = value.partition(":")
    if not module or not function.isidentifier():
        raise argparse.ArgumentTypeError(f"{value!r}: give MODULE:FUNCTION, e.g. config.web:worker_application")
    return value


def _app_error(target: str) -> str | None:
    """Why ``MODULE:FUNCTION`` cannot be served, in a sentence; None when it can. Checked once,
    before any worker starts: a worker that cannot load it would be respawned again and again."""
    import importlib

    module, _, function = target.partition(":")
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        return f"--app {target!r}: the module {module!r} cannot be imported ({exc})"
    if not callable(getattr(loaded, function, None)):
        return f"--app {target!r}: the module {module!r} has no function {function!r}"
    return None


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m config.web", description="Serve the admin and the API.")
    parser.add_argument("--bind", type=_bind, default=("127.0.0.1", 8000), help="HOST:PORT (127.0.0.1:8000)")
    parser.add_argument("--workers", type=_positive, default=2, help="processes (2)")
    parser.add_argument("--threads", type=_positive, default=16, help="requests a worker runs at once (16)")
    parser.add_argument(
        "--app",
        type=_app,
        default="config.web:worker_application",
        help="MODULE:FUNCTION returning the WSGI application, called in each worker (Pushdesk's)",
    )
    parser.add_argument("--stop-seconds", type=_positive, default=30, help="SIGTERM: finish requests within (30)")
    parser.add_argument(
        "--thread-idle-seconds",
        type=_idle_seconds,
        default=30,
        help="a thread idle this long ends, its database connection closed with it: 5 to 600 (30)",
    )
    return parser.parse_args(argv)


def _bind_error(host: str, port: int) -> str | None:
    """Why the server could not listen on ``host:port``, tried as it will bind (the address reused,
    so a port a stopped server left in TIME_WAIT is free), or None."""
    import errno
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"{host}:{port} is in use: stop what listens there, or choose another --bind"
        if exc.errno == errno.EACCES:
            return f"{host}:{port} may not be bound by this user (a port below 1024?): choose another --bind"
        return f"{host}:{port} cannot be bound ({exc.strerror or exc}): choose another --bind"
    return None


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings  # the settings' checks refuse a bad configuration here, before any worker

    problem = _app_error(args.app)
    if problem:
        sys.stderr.write(f"python -m config.web: error: {problem}\n")
        raise SystemExit(2)
    problem = _bind_error(*args.bind)
    if problem:  # granian's own refusal is a traceback and a Rust backtrace
        sys.stderr.write(f"python -m config.web: error: {problem}\n")
        raise SystemExit(1)
    from granian import Granian
    from granian.constants import Interfaces
    from granian.log import LogLevels

    server = Granian(
        args.app,
        factory=True,
        address=args.bind[0],
        port=args.bind[1],
        interface=Interfaces.WSGI,
        workers=args.workers,
        blocking_threads=args.threads,
        blocking_threads_idle_timeout=args.thread_idle_seconds,
        websockets=False,
        log_level=LogLevels(settings.LOG_LEVEL.lower()),  # checked by the settings
        log_dictconfig=server_logging(settings.LOG_FORMAT, settings.LOGGING["formatters"]),
        respawn_failed_workers=True,
        workers_kill_timeout=args.stop_seconds,
    )
    server.serve()


if __name__ == "__main__":
    main()
