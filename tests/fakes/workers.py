"""Real worker processes for the crash and stop tests: ``manage.py qcluster`` (or another worker
command) started in a process group of its own on a queue of its own, tasks pushed to it as a web
process would, and the waits around them."""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from audiences.models import Profile
from delivery.models import Delivery, Device, Dispatch
from tests.fakes.pushsim import pushsim_environment

BATCH = 50
WORKERS = 2


def database_url() -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def worker_environment(queue: str, pushsim, **extra) -> dict:
    """A worker process's environment: this test's database and Redis, its own queue, WORKERS send
    tasks of BATCH rows with 3-second leases, test sends to up to 10,000 phones, the push simulator
    as both providers; ``extra`` over it."""
    env = {k: v for k, v in os.environ.items() if k != "PUSHDESK_TASKS_SYNC"}
    env.update(
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        PUSHDESK_QUEUE_NAME=queue,
        PUSHDESK_WORKERS=str(WORKERS),
        PUSHDESK_SEND_TASKS=str(WORKERS),
        PUSHDESK_SEND_BATCH=str(BATCH),
        PUSHDESK_SEND_LEASE_SECONDS="3",
        # These tests send test dispatches to thousands of phones, their way of sending without a
        # campaign; the test send's cap on test devices is another matter (tests/delivery/test_pipeline.py).
        PUSHDESK_TEST_SEND_MAX_DEVICES="10000",
        **pushsim_environment(pushsim),
        LOG_LEVEL="WARNING",
        **extra,
    )
    return env


class Cluster:
    """``manage.py qcluster`` (or another worker ``command``) in its own process group, on a queue of its own."""

    def __init__(
        self, queue: str, pushsim, log_path: str, command: tuple[str, ...] = ("qcluster",), env: dict | None = None
    ):
        env = worker_environment(queue, pushsim, **(env or {}))
        self.log = open(log_path, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", *command],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.log.close()


def push_task(queue: str, func: str, *args) -> None:
    """Put a task on the workers' queue (signed for it), as ``async_task`` does from a web process."""
    from django_q.brokers import get_broker
    from django_q.conf import Conf
    from django_q.humanhash import uuid as task_uuid
    from django_q.signing import SignedPackage

    name, task_id = task_uuid()
    task = {"id": task_id, "name": name, "func": func, "args": args, "kwargs": {}, "started": timezone.now()}
    prefix, Conf.PREFIX = Conf.PREFIX, queue
    try:
        package = SignedPackage.dumps(task)
    finally:
        Conf.PREFIX = prefix
    get_broker(list_key=queue).enqueue(package)


def rows_state(dispatch, log: str) -> str:
    """What to show when the workers did not get there: the rows by status and the workers' log."""
    counts = dict(Delivery.objects.filter(dispatch=dispatch).values_list("status").annotate(n=Count("id")).order_by())
    status = Dispatch.objects.get(pk=dispatch.pk).status
    with open(log) as fh:
        return f"dispatch {status}, rows {counts}\n{fh.read()[-4000:]}"


def no_other_statement_running() -> bool:
    """Whether no other session of the test database is running a statement. A killed worker's last
    statement (a claim, a write-back) may still run in its server process and commit: count the rows
    in flight once this holds."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else read once per transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'active'"
        )
        return cursor.fetchone()[0] == 0


def wait_for(condition, *, timeout: float, step: float = 0.02, cluster: "Cluster | None" = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster is not None and cluster.process.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(step)
    return False


def watch_until(queue: str, cluster: Cluster, condition, log: str, *, what=None) -> None:
    """Push the watchdog (every minute in production) until ``condition`` holds; again if a task was lost."""
    for _ in range(3):
        push_task(queue, "delivery.tasks.dispatches_watch_task")
        if wait_for(condition, timeout=30, step=0.2, cluster=cluster):
            return
    raise AssertionError(what() if what else open(log).read()[-3000:])


def sending_devices(app, prefix: str, count: int, **fields) -> list[Profile]:
    """``count`` profiles named ``<prefix>-<n>``, each with one device in ``app``: iOS and Android in turn."""
    profiles = Profile.objects.bulk_create(Profile(external_id=f"{prefix}-{n}") for n in range(count))
    Device.objects.bulk_create(
        Device(
            profile=p,
            app=app,
            platform="ios" if n % 2 else "android",
            token=f"{n + 1:064x}" if n % 2 else f"{prefix}-fcm-token-{n:08d}:android",
            **fields,
        )
        for n, p in enumerate(profiles)
    )
    return profiles
