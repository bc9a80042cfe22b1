"""The crash test: a real ``qcluster`` worker killed with SIGKILL mid-send, then a new one started.

No device gets the dispatch twice, every row reaches a final status, and ``unknown`` rows
(claimed by the dead worker, never re-sent) are at most its in-flight window.
"""

import time
import uuid

import pytest
from django.conf import settings
from django.db import connection, connections
from django.db.models import Count

from accounts.services import access_grant
from delivery.models import Delivery, Dispatch
from tests.factories import PushContentFactory
from tests.fakes.workers import BATCH, WORKERS, Cluster, push_task, rows_state, sending_devices, wait_for, watch_until
from tests.locks import eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not settings.REDIS_URL or connections["default"].vendor != "postgresql",
        reason="needs PostgreSQL and Redis (real worker processes)",
    ),
]


def _no_other_statement_running() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else read once per transaction
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'active'"
        )
        return cursor.fetchone()[0] == 0


def test_worker_killed_mid_send_never_sends_twice_and_every_row_ends(
    transactional_db, pushsim, pushsim_app, manager_alice, tmp_path
):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    sending_devices(pushsim_app, "crash", 1500, is_test=True)
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
            push_task(queue, "delivery.tasks.dispatch_prepare_task", dispatch.pk)
            if wait_for(lambda: Dispatch.objects.get(pk=dispatch.pk).status != "preparing", timeout=10, cluster=first):
                break
        assert wait_for(
            lambda: Delivery.objects.filter(dispatch=dispatch, status="accepted").count() >= 200,
            timeout=60,
            cluster=first,
        ), open(log).read()[-3000:]
        first.kill()
        # A killed worker's last statement (a claim) may still run in its server process and commit:
        # count the rows in flight once no other session of the database is running one.
        assert eventually(_no_other_statement_running), "a killed worker's statement still runs"
        in_flight = Delivery.objects.filter(dispatch=dispatch, status="sending").count()
        assert Delivery.objects.filter(dispatch=dispatch, status="queued").exists(), "killed too late to matter"
        assert in_flight <= WORKERS * BATCH * 2  # per worker: one batch sending, the next one claimed

        pushsim.state.faults.latency_ms = 0
        second = Cluster(queue, pushsim, log)
        time.sleep(3.5)  # the dead worker's lease runs out
        watch_until(
            queue,
            second,
            lambda: Dispatch.objects.get(pk=dispatch.pk).status == Dispatch.Status.DONE,
            log,
            what=lambda: rows_state(dispatch, log),
        )
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
