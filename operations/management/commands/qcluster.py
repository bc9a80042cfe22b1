"""django-q2's ``qcluster``, stopping within a bounded time on SIGTERM or SIGINT.

django-q2's own stop hangs or kills work in flight: its main process stops the cluster from
inside the signal handler (a second signal re-enters it), its sentinel dies at once on SIGTERM
(so with SIGTERM sent to the whole group, as systemd's default ``KillMode`` and Ctrl-C do, the
workers are orphaned and never told to stop), and the workers run every task they had already
taken before their stop order.

Here a signal, whether it reaches the main process alone or the whole process group:

* in the main process, is passed to the sentinel once; the main process then waits for the
  cluster, at most ``PUSHDESK_STOP_SECONDS``, and kills what is left after that;
* in the sentinel, sets the cluster's stop event and passes SIGTERM to its workers;
* in a worker, only sets ``operations.shutdown``'s flag: a send task finishes its batch in
  flight, hands the rest over to a fresh task on the queue and returns; tasks taken but not
  started hand over at once.
"""

import logging
import os
import signal
import threading
import time

import django_q.cluster
from django.conf import settings
from django.core.management.base import CommandError
from django_q.cluster import Cluster, Sentinel
from django_q.management.commands.qcluster import Command as QclusterCommand

from config.reporting import first_line
from operations.database import database_errors_said, migrations_pending
from operations.shutdown import request_stop

logger = logging.getLogger("pushdesk.worker")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


class GracefulSentinel(Sentinel):
    """The sentinel, stopping its cluster in order on SIGTERM instead of dying at once."""

    def __init__(self, stop_event, start_event, cluster_id, broker=None, timeout=None, start=True):
        super().__init__(stop_event, start_event, cluster_id, broker, timeout, start=False)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGINT, self._on_sigterm)
        if start:
            self.start()

    def _on_sigterm(self, signum, frame):
        # Inherited by the workers, pusher and monitor (forked from here): there it only marks
        # the process as stopping; they stop when the sentinel tells them to.
        request_stop()
        if os.getpid() != self.pid:
            return
        # Setting a multiprocessing Event takes a lock the interrupted code may hold: not here.
        threading.Thread(target=self.stop_event.set, daemon=True).start()
        for process in self.pool:
            if process.pid:
                _signal(process.pid, signal.SIGTERM)


def _ensure_queue_and_database_answer() -> None:
    """Refuse to start, in one line, when Redis or the database does not answer: the unit starts
    the worker again every 2 s, and each failed start would otherwise log pages of tracebacks."""
    from django.db import Error as DatabaseError
    from django.db import connection

    if settings.REDIS_URL:
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=5).ping()
        except redis.RedisError as exc:
            raise CommandError(f"the queue's Redis does not answer ({exc}); start it, or check REDIS_URL.") from None
    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        reason = first_line(exc) or exc.__class__.__name__
        raise CommandError(f"the database does not answer ({reason}); start it, or check DATABASE_URL.") from None
    with database_errors_said():
        pending = migrations_pending()
    if pending:  # the workers start (a release may migrate after), but their tasks fail until then
        logger.error("%s migrations are not applied to the database: run `manage.py migrate`", pending)
    else:
        _say_frequency_caps_outlasting_retention()
    connection.close()  # the workers are forked: none inherits this connection


def _say_frequency_caps_outlasting_retention() -> None:
    """Log each frequency cap that counts deliveries further back than PUSHDESK_RETENTION_DELIVERY_DAYS
    keeps them. The setting is read when a process starts, so this start is the first moment a
    lowered retention can be said, rather than at the next run of ``retention_apply`` (which then
    refuses, deleting nothing)."""
    from operations.services import delivery_retention_problems

    with database_errors_said():
        problems = delivery_retention_problems()
    for problem in problems:
        logger.error(
            "retention will refuse to run: %s Shorten the cap's window in the app's delivery rules, "
            "or keep deliveries longer.",
            problem,
        )


class Command(QclusterCommand):
    help = (
        "Start the task workers, taking the tasks of the queue PUSHDESK_QUEUE_NAME names; SIGTERM or SIGINT "
        "stops them within PUSHDESK_STOP_SECONDS."
    )

    def add_arguments(self, parser):
        # Not django-q2's --name: it chose another cluster's settings, read before the option was
        # seen, so it did nothing; every process of an installation shares one queue.
        parser.add_argument(
            "--run-once",
            action="store_true",
            dest="run_once",
            help="Start the workers and stop them again at once (a start-up check).",
        )

    def handle(self, *args, **options):
        _ensure_queue_and_database_answer()
        django_q.cluster.Sentinel = GracefulSentinel
        cluster = Cluster()
        asked_at: list[float] = []

        def on_signal(signum, frame):
            if asked_at:
                return  # already stopping; systemd and terminals often signal more than once
            asked_at.append(time.monotonic())
            if cluster.sentinel is not None and cluster.sentinel.pid:
                _signal(cluster.sentinel.pid, signal.SIGTERM)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        cluster.start()
        if options.get("run_once"):
            on_signal(signal.SIGTERM, None)
        while cluster.sentinel.is_alive():
            if asked_at and time.monotonic() - asked_at[0] > settings.PUSHDESK_STOP_SECONDS:
                stuck = _children(cluster.sentinel.pid)
                logger.error(
                    "workers did not stop within %s s (PUSHDESK_STOP_SECONDS): killing them",
                    settings.PUSHDESK_STOP_SECONDS,
                )
                for pid in [*stuck, cluster.sentinel.pid]:
                    _signal(pid, signal.SIGKILL)
                cluster.sentinel.join(5)
                raise SystemExit(1)
            cluster.sentinel.join(0.2)
        if asked_at:
            logger.info("workers stopped in %.1f s", time.monotonic() - asked_at[0])
