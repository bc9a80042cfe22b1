"""A planned stop of `qcluster` during a send: SIGTERM to the whole process group (systemd's default
KillMode, Ctrl-C) or to the main process alone (KillMode=mixed) stops it within a minute, the
batches in flight finish, nothing ends `unknown`, and the rest is sent once by the next worker."""

import os
import signal
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection, connections
from django.db.models import Count

from delivery.models import Delivery, Device, Dispatch
from tests.factories import ProfileFactory, PushContentFactory
from tests.fakes.workers import Cluster, push_task, rows_state, wait_for

pytestmark = pytest.mark.skipif(
    not settings.REDIS_URL or connections["default"].vendor != "postgresql",
    reason="needs PostgreSQL and Redis (real worker processes)",
)
ROWS = 600


@pytest.mark.parametrize("target", ["group", "main"])
def test_sigterm_during_a_send_stops_the_worker_within_a_minute_with_nothing_unknown(
    transactional_db, pushsim, pushsim_app, tmp_path, monkeypatch, target
):
    monkeypatch.setenv("PUSHDESK_STOP_SECONDS", "50")
    # The worker runs without coverage's measurement: its SIGTERM handler saves and closes its data
    # file while the worker goes on finishing its batch, and then fails inside the tracer.
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    profiles = ProfileFactory.create_batch(ROWS)
    Device.objects.bulk_create(
        Device(profile=p, app=pushsim_app, platform="ios", token=f"{n + 1:064x}", is_test=True)
        for n, p in enumerate(profiles)
    )
    content = PushContentFactory(app=pushsim_app)
    dispatch = Dispatch.objects.create(
        app=pushsim_app, kind=Dispatch.Kind.TEST, source_id=content.pk, content_spec=content.spec(), label="Stop test"
    )
    pushsim.state.faults.latency_ms = 300  # each batch stays in flight a while: the stop lands mid-send
    queue = f"stop-{uuid.uuid4().hex[:8]}"
    log = str(tmp_path / "qcluster.log")
    connection.close()

    first = Cluster(queue, pushsim, log)
    second = None
    try:
        for _ in range(3):
            push_task(queue, "delivery.tasks.dispatch_prepare_task", dispatch.pk)
            if wait_for(lambda: Dispatch.objects.get(pk=dispatch.pk).status != "preparing", timeout=10, cluster=first):
                break
        assert wait_for(
            lambda: Delivery.objects.filter(dispatch=dispatch, status="sending").exists(), timeout=60, cluster=first
        ), rows_state(dispatch, log)

        asked = time.monotonic()
        if target == "group":
            os.killpg(first.process.pid, signal.SIGTERM)
        else:
            first.process.send_signal(signal.SIGTERM)
        first.process.wait(timeout=60)
        took = time.monotonic() - asked
        assert took < 60, rows_state(dispatch, log)
        # Every process of the cluster is gone (none orphaned, still holding rows).
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):
            os.killpg(first.process.pid, 0)

        statuses = dict(
            Delivery.objects.filter(dispatch=dispatch).values_list("status").annotate(n=Count("id")).order_by()
        )
        assert statuses.get("unknown", 0) == 0 and statuses.get("sending", 0) == 0, rows_state(dispatch, log)
        assert statuses.get("queued", 0) > 0, "stopped too late to matter"
        output = open(log).read()
        assert "Traceback" not in output and "RecursionError" not in output, output[-3000:]

        # The next worker sends the rest (the stopped one handed its dispatch over on the queue).
        pushsim.state.faults.latency_ms = 0
        second = Cluster(queue, pushsim, log)
        assert wait_for(
            lambda: Dispatch.objects.get(pk=dispatch.pk).status == Dispatch.Status.DONE,
            timeout=90,
            step=0.2,
            cluster=second,
        ), rows_state(dispatch, log)
    finally:
        first.kill()
        if second is not None:
            second.kill()

    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", flat=True)) == {"accepted"}
    counts = pushsim.state.snapshot_counts()
    assert len(counts) == ROWS and max(counts.values()) == 1, "a device got the dispatch twice"


@pytest.mark.parametrize("down", ["REDIS_URL", "DATABASE_URL"])
def test_a_worker_whose_redis_or_database_does_not_answer_says_so_in_one_line(down):
    """systemd starts it again every 2 s: one line each time, not a page of tracebacks."""
    import subprocess
    import sys

    from tests.processes import ROOT, as_from_a_terminal, free_port

    port = free_port()
    url = {
        "REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/0",
        "DATABASE_URL": f"postgres://postgres:hunter2@127.0.0.1:{port}/pushdesk",
    }[down]
    worker = subprocess.Popen(  # a group of its own: a cluster that started anyway is stopped whole
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        env={**os.environ, down: url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_from_a_terminal,
        start_new_session=True,
    )
    try:
        _, stderr = worker.communicate(timeout=60)
    finally:
        try:
            os.killpg(worker.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert worker.returncode == 1, stderr
    assert "Traceback" not in stderr and "hunter2" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and ("Redis" if down == "REDIS_URL" else "database") in lines[0], stderr
