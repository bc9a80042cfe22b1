"""The crash test: a real ``qcluster`` worker killed with SIGKILL mid-send, then a new one started.

No device gets the dispatch twice, every row reaches a final status, and ``unknown`` rows
(claimed by the dead worker, never re-sent) are at most its in-flight window.
"""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from accounts.services import access_grant
from audiences.models import Profile
from delivery.models import Delivery, Device, Dispatch
from tests.factories import PushContentFactory
from tests.fakes.pushsim import pushsim_environment

BATCH = 50
WORKERS = 2

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not settings.REDIS_URL or settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
        reason="needs PostgreSQL and Redis (real worker processes)",
    ),
]


def _database_url() -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Cluster:
    """``manage.py qcluster`` (or another worker ``command``) in its own process group, on a queue of its own."""

    def __init__(self, queue: str, pushsim, log_path: str, command: tuple[str, ...] = ("qcluster",)):
        env = {k: v for k, v in os.environ.items() if k != "PUSHDESK_TASKS_SYNC"}
        env.update(
            DATABASE_URL=_database_url(),
            REDIS_URL=settings.REDIS_URL,
            PUSHDESK_QUEUE_NAME=queue,
            PUSHDESK_WORKERS=str(WORKERS),
            PUSHDESK_SEND_TASKS=str(WORKERS),
            PUSHDESK_SEND_BATCH=str(BATCH),
            PUSHDESK_SEND_LEASE_SECONDS="3",
            **pushsim_environment(pushsim),
            LOG_LEVEL="WARNING",
        )
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


def _push(queue: str, func: str, *args) -> None:
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


def _state(dispatch, log: str) -> str:
    """What to show when the workers did not get there: the rows by status and the workers' log."""
    counts = dict(Delivery.objects.filter(dispatch=dispatch).values_list("status").annotate(n=Count("id")).order_by())
    status = Dispatch.objects.get(pk=dispatch.pk).status
    with open(log) as fh:
        return f"dispatch {status}, rows {counts}\n{fh.read()[-4000:]}"


def _wait_for(condition, *, timeout: float, step: float = 0.02, cluster: "Cluster | None" = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster is not None and cluster.process.poll() is not None:
            return False
        if condition():
            return True
        time.sleep(step)
    return False


def test_worker_killed_mid_send_never_sends_twice_and_every_row_ends(
    transactional_db, pushsim, pushsim_app, manager_alice, tmp_path
):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    profiles = Profile.objects.bulk_create(Profile(external_id=f"crash-{n}") for n in range(1500))
    Device.objects.bulk_create(
        Device(
            profile=p,
            app=pushsim_app,
            platform="ios" if n % 2 else "android",
            token=f"{n + 1:064x}" if n % 2 else f"crash-fcm-token-{n:08d}:android",
            is_test=True,
        )
        for n, p in enumerate(profiles)
    )
    content = PushContentFactory(app=pushsim_app)
    dispatch = Dispatch.objects.create(
        app=pushsim_app, kind=Dispatch.Kind.TEST, source_id=content.pk, content_spec=content.spec(), label="Crash test"
    )
    pushsim.state.faults.latency_ms = 100  # each batch stays in flight a while: a kill lands mid-send
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    log = str(tmp_path / "qcluster.log")
    connection.close()

    first = Cluster(queue, pushsim, log)
    second = None
    try:
        for _ in range(3):  # a queue in a shared Redis may be flushed by another test run: push again
            _push(queue, "delivery.tasks.dispatch_prepare_task", dispatch.pk)
            if _wait_for(lambda: Dispatch.objects.get(pk=dispatch.pk).status != "preparing", timeout=10, cluster=first):
                break
        assert _wait_for(
            lambda: Delivery.objects.filter(dispatch=dispatch, status="accepted").count() >= 200,
            timeout=60,
            cluster=first,
        ), open(log).read()[-3000:]
        first.kill()
        in_flight = Delivery.objects.filter(dispatch=dispatch, status="sending").count()
        assert Delivery.objects.filter(dispatch=dispatch, status="queued").exists(), "killed too late to matter"
        assert in_flight <= WORKERS * BATCH * 2  # per worker: one batch sending, the next one claimed

        pushsim.state.faults.latency_ms = 0
        second = Cluster(queue, pushsim, log)
        time.sleep(3.5)  # the dead worker's lease runs out
        done = False
        for _ in range(3):  # the watchdog (every minute in production), pushed now; again if its task was lost
            _push(queue, "delivery.tasks.dispatches_watch_task")
            done = _wait_for(
                lambda: Dispatch.objects.get(pk=dispatch.pk).status == Dispatch.Status.DONE,
                timeout=30,
                step=0.2,
                cluster=second,
            )
            if done:
                break
        assert done, _state(dispatch, log)
    finally:
        first.kill()
        if second is not None:
            second.kill()

    rows = Delivery.objects.filter(dispatch=dispatch)
    assert rows.count() == 1500
    statuses = dict(rows.values_list("status").annotate(n=Count("id")).order_by())
    assert set(statuses) <= {"accepted", "unknown", "failed"}
    assert statuses.get("unknown", 0) <= WORKERS * BATCH * 2
    assert statuses.get("unknown", 0) == in_flight
    counts = pushsim.state.snapshot_counts()
    assert max(counts.values()) == 1, "a device got the dispatch twice"
    accepted_tokens = set(rows.filter(status="accepted").values_list("device__token", flat=True))
    assert all(counts.get(token) == 1 for token in accepted_tokens)
    dispatch.refresh_from_db()
    assert (dispatch.accepted, dispatch.unknown) == (statuses.get("accepted", 0), statuses.get("unknown", 0))
