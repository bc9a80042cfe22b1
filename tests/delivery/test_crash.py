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
from delivery.services.dispatches import dispatch_prepare
from tests.factories import PushContentFactory
from tests.fakes.workers import (
    BATCH,
    WORKERS,
    Cluster,
    no_other_statement_running,
    push_task,
    rows_state,
    sending_devices,
    wait_for,
    watch_until,
)
from tests.locks import eventually

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not settings.REDIS_URL or connections["default"].vendor != "postgresql",
        reason="needs PostgreSQL and Redis (real worker processes)",
    ),
]


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
        assert eventually(no_other_statement_running), "a killed worker's statement still runs"
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


def _sleeping_statements() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'"
        )
        return cursor.fetchone()[0]


def test_worker_killed_mid_resolve_commits_none_of_its_unfinished_slice_and_the_next_prepare_sends_once(
    transactional_db, pushsim, pushsim_app, tmp_path, settings
):
    """A segment's resolve in two slices (README, "The send pipeline"), its worker killed with
    SIGKILL while the second slice still writes: the first slice's rows stay (the dispatch is
    still preparing: nothing is sent), the second's never commit, and the next prepare writes the
    dispatch whole and sends each device once."""
    from audiences.models import Segment, SegmentMember

    profiles = sending_devices(pushsim_app, "resolve", 60)
    segment = Segment.objects.create(name="Resolve crash", kind=Segment.Kind.STATIC)
    SegmentMember.objects.bulk_create(SegmentMember(segment=segment, profile=p) for p in profiles)
    content = PushContentFactory(app=pushsim_app)
    dispatch = Dispatch.objects.create(
        app=pushsim_app,
        kind=Dispatch.Kind.API_TRIGGER,
        source_id=content.pk,
        content_spec=content.spec(),
        segment_id=segment.pk,
        label="Resolve crash",
    )
    last = profiles[-1]  # in the second slice: the ids span 60, two slices of 30
    with connection.cursor() as cursor:  # the second slice stops a while at that profile's row
        cursor.execute(
            "CREATE FUNCTION delivery_slow() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN IF NEW.profile_id = {last.pk} THEN PERFORM pg_sleep(3); END IF; RETURN NEW; END $$"
        )
        cursor.execute(
            "CREATE TRIGGER delivery_slow BEFORE INSERT ON delivery_delivery FOR EACH ROW EXECUTE FUNCTION delivery_slow()"
        )
    queue = f"resolve-{uuid.uuid4().hex[:8]}"
    log = str(tmp_path / "qcluster.log")
    slices = {"PUSHDESK_RESOLVE_SLICES": "2", "PUSHDESK_RESOLVE_SLICE_PROFILES": "10"}
    connection.close()

    first = Cluster(queue, pushsim, log, env=slices)
    try:
        for _ in range(3):  # a queue in a shared Redis may be flushed by another test run: push again
            push_task(queue, "delivery.tasks.dispatch_prepare_task", dispatch.pk)
            if wait_for(lambda: _sleeping_statements() == 1, timeout=10, cluster=first):
                break
        else:
            raise AssertionError(open(log).read()[-3000:])
        assert wait_for(lambda: Delivery.objects.filter(dispatch=dispatch).count() == 30, timeout=10)
        first.kill()
        # The killed slice's server process ends its statement after the sleep; its transaction
        # never gets its COMMIT.
        assert eventually(no_other_statement_running, timeout=20), "a killed worker's statement still runs"
        assert Delivery.objects.filter(dispatch=dispatch).count() == 30  # the first slice's
        assert not Delivery.objects.filter(dispatch=dispatch, profile_id__gt=profiles[29].pk).exists()
        assert Dispatch.objects.get(pk=dispatch.pk).status == "preparing"
        assert sum(pushsim.state.snapshot_counts().values()) == 0
    finally:
        first.kill()
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS delivery_slow ON delivery_delivery")
            cursor.execute("DROP FUNCTION IF EXISTS delivery_slow()")

    # Prepared again (the watchdog queues it), here: in slices again, its send tasks run in-process.
    settings.PUSHDESK_RESOLVE_SLICES, settings.PUSHDESK_RESOLVE_SLICE_PROFILES = 2, 10
    dispatch_prepare(dispatch_id=dispatch.pk)
    rows = Delivery.objects.filter(dispatch=dispatch)
    assert rows.count() == 60 and set(rows.values_list("status", flat=True)) == {"accepted"}
    counts = pushsim.state.snapshot_counts()
    assert len(counts) == 60 and max(counts.values()) == 1, "a device got the dispatch twice"
    dispatch.refresh_from_db()
    assert (dispatch.total, dispatch.accepted) == (60, 60)
