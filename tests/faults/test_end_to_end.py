"""Faults end to end, with real ``qcluster`` workers, PostgreSQL, Redis and the push simulator.

PostgreSQL restarted during a send; Redis restarted during a send; the simulator unreachable for
a while; a worker killed during a journey run. Each time: every row reaches a final status,
no device gets a message twice (counted at the simulator), rows the workers could not account
for end ``unknown`` (never re-sent) and stay within the in-flight window, and the dispatch's
admin page says what happened.

Everything here runs on a PostgreSQL and a Redis of their own, started for these tests on free
ports and thrown away afterwards (``conftest.py``, ``servers.py``): the tests restart those, never
the servers the rest of the suite (or anything else on the machine) uses, and the last test shows
that a connection to those and a key in their Redis outlived the faults.
"""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, connections
from django.db.models import Count

from accounts.services import access_grant
from delivery.models import App, Delivery, Dispatch
from delivery.pushsim import PushSimulator
from tests.factories import PushContentFactory
from tests.fakes.workers import BATCH, WORKERS, database_url, push_task, sending_devices, wait_for, worker_environment

DEVICES = 1200

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not settings.REDIS_URL or connections["default"].vendor != "postgresql",
        reason="needs PostgreSQL and Redis (real worker processes)",
    ),
    pytest.mark.usefixtures("own_servers"),
]


class Workers:
    """``manage.py qcluster`` in its own process group on its own queue; restarted if it dies (as a supervisor would)."""

    def __init__(self, queue: str, pushsim, log_path: Path, **env):
        self.queue, self.log_path = queue, log_path
        self.env = worker_environment(queue, pushsim, **env)
        self.process = None
        self.restarts = -1
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=settings.BASE_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.restarts += 1

    def keep_alive(self) -> None:
        if self.process.poll() is not None:
            self.start()

    def kill(self) -> None:
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def reconnect() -> None:
    """Drop the test's own connection (dead after a PostgreSQL restart) and wait until a new one works."""
    deadline = time.monotonic() + 60
    while True:
        try:
            connection.close()
        except Exception:  # noqa: S110 (a dead connection may fail to close: it is gone either way)
            pass
        try:
            connection.ensure_connection()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def make_dispatch(pushsim_app, manager_alice, prefix: str) -> Dispatch:
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    sending_devices(pushsim_app, prefix, DEVICES, is_test=True)
    content = PushContentFactory(app=pushsim_app)
    return Dispatch.objects.create(
        app=pushsim_app,
        kind=Dispatch.Kind.TEST,
        source_id=content.pk,
        content_spec=content.spec(),
        label=f"{prefix} test",
    )


def run_until_done(dispatch, workers: Workers, *, timeout: float) -> bool:
    """Push the watchdog (every minute in production) until the dispatch ends; restart dead workers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers.keep_alive()
        try:
            push_task(workers.queue, "delivery.tasks.dispatches_watch_task")
            if wait_for(
                lambda: Dispatch.objects.get(pk=dispatch.pk).status in Dispatch.FINAL_STATUSES, timeout=8, step=0.2
            ):
                return True
        except Exception:  # a server still coming back: try again
            reconnect()
            time.sleep(1)
    return False


def start_sending(dispatch, workers: Workers, *, accepted_at_least: int) -> None:
    for _ in range(3):  # a queue in a shared Redis may be flushed by another run: push again
        push_task(workers.queue, "delivery.tasks.dispatch_prepare_task", dispatch.pk)
        if wait_for(lambda: Dispatch.objects.get(pk=dispatch.pk).status != "preparing", timeout=15):
            break
    assert wait_for(
        lambda: Delivery.objects.filter(dispatch=dispatch, status="accepted").count() >= accepted_at_least,
        timeout=90,
    ), workers.log()


def assert_each_device_got_it_at_most_once(dispatch, pushsim, *, unknown_at_most: int) -> dict:
    rows = Delivery.objects.filter(dispatch=dispatch)
    assert rows.count() == DEVICES, "rows were lost"
    statuses = dict(rows.values_list("status").annotate(n=Count("id")).order_by())
    assert set(statuses) <= {"accepted", "unknown", "failed"}, statuses
    assert statuses.get("unknown", 0) <= unknown_at_most, statuses
    counts = pushsim.state.snapshot_counts()
    assert max(counts.values()) == 1, "a device got the dispatch twice"
    accepted = set(rows.filter(status="accepted").values_list("device__token", flat=True))
    assert all(counts.get(token) == 1 for token in accepted), "an accepted row the simulator never received"
    dispatch.refresh_from_db()
    assert (dispatch.accepted, dispatch.unknown) == (statuses.get("accepted", 0), statuses.get("unknown", 0))
    return statuses


def assert_the_admin_says_what_happened(client, admin_erin, dispatch, statuses) -> None:
    client.force_login(admin_erin)
    page = client.get(f"/admin/delivery/dispatch/{dispatch.pk}/change/").content.decode()
    assert dispatch.get_status_display() in page
    from django.utils.html import escape

    for status, count in statuses.items():  # each status in words, as the page says it
        label = escape(Delivery.Status(status).label)
        assert f">{label}</a></td>" in page and f"<td>{count}</td>" in page, (status, count)

    reasons = set(Delivery.objects.filter(dispatch=dispatch).exclude(reason="").values_list("reason", flat=True))
    for reason in reasons:  # e.g. why rows ended unknown: the lease of a worker that went away ran out
        assert escape(reason) in page, reason


def test_postgresql_restarted_during_a_send_loses_and_duplicates_nothing(
    transactional_db, pushsim, pushsim_app, manager_alice, admin_erin, client, postgres_server, tmp_path
):
    dispatch = make_dispatch(pushsim_app, manager_alice, "pg")
    pushsim.state.faults.latency_ms = 60  # batches stay in flight while the server goes down
    workers = Workers(f"pg-{uuid.uuid4().hex[:8]}", pushsim, tmp_path / "qcluster.log")
    connection.close()
    try:
        start_sending(dispatch, workers, accepted_at_least=150)
        postgres_server()
        reconnect()
        assert Delivery.objects.filter(dispatch=dispatch, status="queued").exists(), "restarted too late to matter"
        pushsim.state.faults.latency_ms = 0
        time.sleep(3.5)  # the lease of rows a failed task held runs out
        assert run_until_done(dispatch, workers, timeout=180), workers.log()
    finally:
        workers.kill()
    statuses = assert_each_device_got_it_at_most_once(dispatch, pushsim, unknown_at_most=WORKERS * BATCH * 2)
    assert_the_admin_says_what_happened(client, admin_erin, dispatch, statuses)


def test_redis_restarted_during_a_send_loses_and_duplicates_nothing(
    transactional_db, pushsim, pushsim_app, manager_alice, admin_erin, client, redis_server, tmp_path
):
    dispatch = make_dispatch(pushsim_app, manager_alice, "redis")
    pushsim.state.faults.latency_ms = 60
    workers = Workers(f"redis-{uuid.uuid4().hex[:8]}", pushsim, tmp_path / "qcluster.log")
    connection.close()
    try:
        start_sending(dispatch, workers, accepted_at_least=150)
        redis_server()  # the queued tasks and the rate limiter's state are gone with it
        assert Delivery.objects.filter(dispatch=dispatch, status="queued").exists(), "restarted too late to matter"
        pushsim.state.faults.latency_ms = 0
        time.sleep(3.5)
        assert run_until_done(dispatch, workers, timeout=180), workers.log()
    finally:
        workers.kill()
    statuses = assert_each_device_got_it_at_most_once(dispatch, pushsim, unknown_at_most=WORKERS * BATCH * 2)
    assert_the_admin_says_what_happened(client, admin_erin, dispatch, statuses)


def provider_outage(pushsim, pushsim_app, manager_alice, tmp_path, *, answering_late: bool):
    """Send while the providers' hosts go away for 8 s, then come back; return the dispatch.

    ``answering_late``: the provider has acted on the requests in flight but not yet answered
    them when it goes away (its connections are reset, as when a server dies).
    """
    dispatch = make_dispatch(pushsim_app, manager_alice, "gone")
    # 100 messages/s: the 1,200 sends take 12 s, so the outage surely falls in the middle of them.
    App.objects.filter(pk=pushsim_app.pk).update(rate_limit_per_second=100)
    provider = PushSimulator(state=pushsim.state).start()  # the send endpoints; the token endpoint stays up
    ports = [listener.port for listener in provider.listeners]
    pushsim.state.faults.latency_ms = 40
    workers = Workers(
        f"gone-{uuid.uuid4().hex[:8]}",
        provider,
        tmp_path / "qcluster.log",
        # The backoff doubles from 1 s (in production 2 s: the outage is as long for the sends, counted
        # in their retries, at half the time): half an hour of outage before giving up.
        PUSHDESK_SEND_BACKOFF_SECONDS="1",
        PUSHDESK_SEND_MAX_ATTEMPTS="12",
    )
    connection.close()
    try:
        start_sending(dispatch, workers, accepted_at_least=150)
        if not answering_late:
            pushsim.state.faults.latency_ms = 0  # every request taken is answered at once
            time.sleep(0.2)
        provider.stop()
        time.sleep(8)
        assert Delivery.objects.filter(dispatch=dispatch, status="queued").exists(), "went away too late to matter"
        pushsim.state.faults.latency_ms = 0
        provider = PushSimulator(state=pushsim.state, port=ports[0], sandbox_port=ports[1]).start()
        assert run_until_done(dispatch, workers, timeout=180), workers.log()
    finally:
        workers.kill()
        provider.stop()
    return dispatch


def test_the_simulator_unreachable_for_a_while_delays_but_loses_and_duplicates_nothing(
    transactional_db, pushsim, pushsim_app, manager_alice, admin_erin, client, tmp_path
):
    """Connections refused for 8 s: sends back off and retry (the real path), then all arrive once."""
    dispatch = provider_outage(pushsim, pushsim_app, manager_alice, tmp_path, answering_late=False)
    statuses = assert_each_device_got_it_at_most_once(dispatch, pushsim, unknown_at_most=WORKERS * BATCH * 2)
    retried = Delivery.objects.filter(dispatch=dispatch, status="accepted", attempts__gt=1).count()
    assert retried > 0, "no send met the outage"
    assert statuses.get("failed", 0) == 0, statuses
    assert_the_admin_says_what_happened(client, admin_erin, dispatch, statuses)


def _journey_state(journey, app) -> dict:
    """What a journey run that did not settle left open: enrollments, dispatches and their rows."""
    from journeys.models import Enrollment

    enrollments = Enrollment.objects.filter(journey=journey).values_list("status", "step").annotate(n=Count("id"))
    dispatches = Dispatch.objects.filter(kind="journey", app=app).values_list("pk", "status", "total")
    rows = (
        Delivery.objects.filter(dispatch__kind="journey", dispatch__app=app)
        .values_list("status")
        .annotate(n=Count("id"))
    )
    return {
        "enrollments": sorted(enrollments.order_by()),
        "dispatches": list(dispatches),
        "rows": dict(rows.order_by()),
    }


def test_a_worker_killed_during_a_journey_run_loses_and_duplicates_nothing(
    transactional_db, pushsim, pushsim_app, manager_alice, approver_bob, admin_erin, client, tmp_path
):
    from django_q.conf import Conf

    from journeys.models import Enrollment, Journey
    from journeys.services.lifecycle import journey_approve, journey_create, journey_submit
    from tests.factories import SegmentFactory

    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    # The devices. Its own test dispatch is never sent: it is stopped, or the watchdog would prepare
    # it (a dispatch still `preparing` a task timeout after it was made) once the run outlasts that.
    Dispatch.objects.filter(pk=make_dispatch(pushsim_app, manager_alice, "journey").pk).update(
        status=Dispatch.Status.STOPPED
    )
    entry = SegmentFactory(
        name="Journey crowd",
        created_by=manager_alice,
        rules={"all": [{"field": "external_id", "op": "starts_with", "value": "journey-"}]},
    )
    access_grant(obj=entry, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app, title="Welcome", body="Aboard")
    graph = {
        "steps": [
            {"id": "start", "type": "wait", "seconds": 0, "next": "push"},
            {"id": "push", "type": "push", "content": content.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    queue = f"journey-{uuid.uuid4().hex[:8]}"
    sync, prefix, name = Conf.SYNC, Conf.PREFIX, Conf.CLUSTER_NAME
    Conf.SYNC, Conf.PREFIX, Conf.CLUSTER_NAME = False, queue, queue  # the approval queues to the workers
    pushsim.state.faults.latency_ms = 60
    workers = None
    try:
        journey = journey_create(
            by=manager_alice, name="Welcome", app=pushsim_app, entry_kind="segment", entry_segment=entry, graph=graph
        )
        journey_submit(journey_id=journey.pk, by=manager_alice)
        journey_approve(journey_id=journey.pk, by=approver_bob)
        connection.close()
        # The watchdog queues a lost prepare task again a task's timeout after its dispatch was made
        # (the send task's length plus a lease: 203 s by default); the kill may lose one, so the
        # workers here hand over every 10 s and the watchdog restarts a lost prepare within 13 s.
        workers = Workers(queue, pushsim, tmp_path / "qcluster.log", PUSHDESK_SEND_TASK_SECONDS="10")
        assert wait_for(
            lambda: Delivery.objects.filter(dispatch__kind="journey", status="accepted").count() >= 150, timeout=90
        ), workers.log()
        workers.kill()
        pushsim.state.faults.latency_ms = 0
        workers.start()
        time.sleep(3.5)

        def settled() -> bool:
            open_enrollments = Enrollment.objects.filter(journey=journey, status__in=Enrollment.OPEN_STATUSES)
            open_dispatches = Dispatch.objects.filter(kind="journey", app=pushsim_app).exclude(
                status__in=Dispatch.FINAL_STATUSES
            )
            return not open_enrollments.exists() and not open_dispatches.exists()

        deadline = time.monotonic() + 180
        while not settled() and time.monotonic() < deadline:
            workers.keep_alive()
            push_task(queue, "journeys.tasks.journeys_run_due_task")
            push_task(queue, "delivery.tasks.dispatches_watch_task")
            wait_for(settled, timeout=8, step=0.2)
        assert settled(), (_journey_state(journey, pushsim_app), workers.log())
    finally:
        Conf.SYNC, Conf.PREFIX, Conf.CLUSTER_NAME = sync, prefix, name
        if workers is not None:
            workers.kill()

    enrollments = Enrollment.objects.filter(journey=journey)
    assert enrollments.count() == DEVICES
    statuses = dict(enrollments.values_list("status").annotate(n=Count("id")).order_by())
    assert set(statuses) <= {"completed", "exited", "failed"}, statuses
    for enrollment in enrollments:
        steps = [entry[0] for entry in enrollment.history]
        assert len(steps) == len(set(steps)), f"enrollment {enrollment.pk} passed a step twice: {steps}"
    rows = Delivery.objects.filter(dispatch__kind="journey", dispatch__app=pushsim_app)
    per_device = rows.values("device").annotate(n=Count("id")).order_by("-n").first()
    assert per_device["n"] == 1, "a device got two journey deliveries"
    counts = pushsim.state.snapshot_counts()
    assert max(counts.values()) == 1, "a device got the push twice"
    assert rows.filter(status="accepted").count() + rows.filter(status="unknown").count() == rows.count()
    assert rows.filter(status="unknown").count() <= WORKERS * BATCH * 2
    client.force_login(admin_erin)
    page = client.get(f"/admin/journeys/journey/{Journey.objects.get(pk=journey.pk).pk}/change/").content.decode()
    # The journey's diagram counts what its push step sent, from the dispatches' rollup.
    assert f"entered {DEVICES:,} · sent {rows.count():,} · accepted" in page


def test_web_requests_after_a_postgresql_restart_get_no_error(
    transactional_db, manager_alice, api_key_for, postgres_server, tmp_path
):
    """A production web worker keeps its connection (CONN_MAX_AGE); after a restart cut it, the health
    check (CONN_HEALTH_CHECKS) replaces it before the next request uses it: no 500."""
    import httpx
    from cryptography.fernet import Fernet

    from tests.faults.servers import free_port

    raw_key = api_key_for(manager_alice).raw_key
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUSHDESK_", "DEBUG"))}
    env.update(
        PUSHDESK_MODE="production",
        PUSHDESK_INSTANCE=settings.PUSHDESK_INSTANCE,
        SECRET_KEY="a-test-only-secret-key-" + uuid.uuid4().hex * 2,
        PUSHDESK_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        ALLOWED_HOSTS="127.0.0.1",
        PUSHDESK_VAR_DIR=str(tmp_path),
    )
    log_path = tmp_path / "web.log"
    with open(log_path, "ab") as log:
        web = subprocess.Popen(
            # --stop-seconds within the 30 s the teardown waits for it.
            [
                sys.executable,
                "-m",
                "config.web",
                "--workers",
                "1",
                "--stop-seconds",
                "10",
                "--bind",
                f"127.0.0.1:{port}",
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def me() -> int:
        headers = {"Authorization": f"Bearer {raw_key}", "X-Forwarded-Proto": "https"}
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/me/", headers=headers, timeout=30).status_code

    def answers() -> bool:
        try:
            return me() == 200
        except httpx.TransportError:
            return False

    try:
        assert wait_for(answers, timeout=60, step=0.5), log_path.read_text(errors="replace")[-4000:]
        assert me() == 200  # the worker now holds a connection
        postgres_server()
        statuses = [me() for _ in range(3)]
        assert statuses == [200, 200, 200], log_path.read_text(errors="replace")[-4000:]
    finally:
        import signal

        os.killpg(web.pid, signal.SIGTERM)
        web.wait(30)


def test_the_servers_the_suite_shares_outlive_the_fault_tests(transactional_db, machine_servers, own_servers):
    """Runs last: the connection opened before the faults still answers, from the same server process,
    and the key written to the shared Redis is still there."""
    assert own_servers.postgres.port not in machine_servers.ports
    assert own_servers.redis.port not in machine_servers.ports
    pid, started = machine_servers.database.execute("SELECT pg_backend_pid(), pg_postmaster_start_time()").fetchone()
    assert (pid, started) == (machine_servers.backend_pid, machine_servers.postmaster_started)
    assert machine_servers.redis.get(machine_servers.key) == machine_servers.value.encode()
    assert machine_servers.redis.info("server")["run_id"] == machine_servers.redis_run_id
