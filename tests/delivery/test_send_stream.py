"""``manage.py send_stream``: a real sender process drains what API triggers append, stops cleanly on
SIGTERM, and when killed with SIGKILL mid-send leaves its claimed rows ``unknown``, never sent again."""

# ruff: noqa: F811 (the campaigns' ``live_trigger`` fixture, imported, is named by the tests' arguments)

import signal
import threading
import time
import uuid

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.db.models import Count

from delivery.models import Delivery, Dispatch
from delivery.services.dispatches import deliveries_expire_leases
from tests.campaigns.conftest import live_trigger  # noqa: F401 (a live API-triggered campaign)
from tests.factories import DeviceFactory, ProfileFactory
from tests.fakes.workers import BATCH, Cluster, no_other_statement_running, rows_state, wait_for
from tests.locks import eventually

pytestmark = pytest.mark.skipif(
    not settings.REDIS_URL or connections["default"].vendor != "postgresql",
    reason="needs PostgreSQL and Redis (a real sender process)",
)

HEARTBEAT = "pushdesk:stream-sender:0"


@pytest.fixture
def phones(pushsim_app):
    """200 profiles with a phone each (iOS and Android in turn): their external id -> token."""
    tokens = {}
    for n in range(200):
        profile = ProfileFactory(external_id=f"buyer-{n}")
        tokens[profile.external_id] = DeviceFactory(
            profile=profile, app=pushsim_app, platform="ios" if n % 2 else "android"
        ).token
    return tokens


@pytest.fixture
def sender_client(api_key_for, manager_alice, monkeypatch):
    """An API client whose triggers leave the sending to the sender process (no in-process tasks)."""
    from django_q.conf import Conf

    monkeypatch.setattr(Conf, "SYNC", False)
    return api_key_for(manager_alice, scopes=["trigger", "read"])


def _start(pushsim, log: str) -> Cluster:
    """Start ``send_stream`` and wait until it beats its slot (so no queue task is started for it)."""
    connection.close()
    sender = Cluster(f"sender-{uuid.uuid4().hex[:8]}", pushsim, log, command=("send_stream",))
    beating = wait_for(
        lambda: (cache.get(HEARTBEAT) or {}).get("pid") == sender.process.pid, timeout=60, step=0.1, cluster=sender
    )
    assert beating, open(log).read()[-3000:]
    return sender


def _trigger(client, campaign, external_ids):
    answer = client.post(
        f"/api/v1/campaigns/{campaign.pk}/trigger/",
        {"recipients": [{"external_id": e} for e in external_ids], "context": {"order_id": "A-1"}},
        format="json",
    )
    assert answer.status_code == 202, answer.content
    return answer.json()


def _statuses(dispatch_id: int) -> dict:
    return dict(
        Delivery.objects.filter(dispatch_id=dispatch_id).values_list("status").annotate(n=Count("id")).order_by()
    )


def test_the_sender_process_sends_triggers_as_they_come_and_stops_cleanly_on_sigterm(
    transactional_db, pushsim, live_trigger, sender_client, phones, tmp_path
):
    log = str(tmp_path / "send_stream.log")
    sender = _start(pushsim, log)
    try:
        buyers = list(phones)[:10]
        for external_id in buyers:
            started = time.monotonic()
            answer = _trigger(sender_client, live_trigger, [external_id])
            token = phones[external_id]
            assert wait_for(lambda t=token: pushsim.state.count(t) == 1, timeout=10, step=0.005, cluster=sender), (
                rows_state(Dispatch.objects.get(pk=answer["dispatch"]), log)
            )
            assert time.monotonic() - started < 5  # woken by the append, not by a task's turn
        stream = answer["dispatch"]
        assert wait_for(lambda: _statuses(stream) == {"accepted": 10}, timeout=10, cluster=sender)

        asked = time.monotonic()
        sender.process.send_signal(signal.SIGTERM)
        assert sender.process.wait(timeout=30) == 0
        assert time.monotonic() - asked < 10
    finally:
        sender.kill()
    output = open(log).read()
    assert "Stream sender 0 stopped: 10 rows" in output and "Traceback" not in output, output[-3000:]
    assert cache.get(HEARTBEAT) is None  # the slot is free at once (the watchdog may fill it)
    assert all(pushsim.state.count(token) == 1 for token in (phones[b] for b in buyers))
    assert Dispatch.objects.get(pk=stream).status == "sending"  # a stream stays open for the next calls


def test_a_sender_killed_mid_send_leaves_its_rows_unknown_and_the_next_one_sends_the_rest_once(
    transactional_db, pushsim, live_trigger, sender_client, phones, tmp_path
):
    log = str(tmp_path / "send_stream.log")
    pushsim.state.faults.latency_ms = 300  # each batch stays in flight a while: the kill lands mid-send
    first = _start(pushsim, log)
    second = None
    try:
        stream = _trigger(sender_client, live_trigger, list(phones))["dispatch"]
        assert wait_for(lambda: _statuses(stream).get("accepted", 0) >= BATCH, timeout=60, step=0.01, cluster=first), (
            rows_state(Dispatch.objects.get(pk=stream), log)
        )
        first.kill()  # SIGKILL
        assert eventually(no_other_statement_running), "the killed sender's statement still runs"
        in_flight = _statuses(stream).get("sending", 0)
        assert _statuses(stream).get("queued", 0) > 0, "killed too late to matter"
        assert 0 < in_flight <= 2 * BATCH  # one batch sending, the next one claimed

        pushsim.state.faults.latency_ms = 0
        second = _start(pushsim, log)
        assert wait_for(lambda: _statuses(stream).get("queued", 0) == 0, timeout=60, cluster=second), rows_state(
            Dispatch.objects.get(pk=stream), log
        )
        time.sleep(3.5)  # the dead sender's lease (3 s) runs out: the watchdog judges it
        assert deliveries_expire_leases() == in_flight
    finally:
        first.kill()
        if second is not None:
            second.kill()

    statuses = _statuses(stream)
    assert statuses == {"accepted": len(phones) - in_flight, "unknown": in_flight}
    counts = pushsim.state.snapshot_counts()
    assert max(counts.values()) == 1, "a phone got the push twice"
    accepted = Delivery.objects.filter(dispatch_id=stream, status="accepted").values_list("device__token", flat=True)
    assert all(counts.get(token) == 1 for token in accepted)


def test_a_sender_slot_outside_the_configured_ones_is_refused(db):
    with pytest.raises(CommandError, match="PUSHDESK_STREAM_SENDERS"):
        call_command("send_stream", "--slot", str(settings.PUSHDESK_STREAM_SENDERS))


@pytest.mark.parametrize("slot", ["٣", "３", "²", "1_0", "-1", "+1", " 1", "one", ""])
def test_a_sender_slot_is_a_number_of_ascii_digits_else_refused_in_a_sentence(db, settings, monkeypatch, slot):
    """int() read '٣' (Arabic-Indic) and '３' (full-width) as 3, '1_0' as 10: a unit's typo started
    another slot's sender, which then sent that slot's streams beside the one meant to."""
    from delivery.management.commands import send_stream

    settings.PUSHDESK_STREAM_SENDERS = 16
    monkeypatch.setattr(send_stream, "streams_sender_run", lambda **kwargs: pytest.fail(f"started: {kwargs}"))
    with pytest.raises(CommandError) as refused:
        call_command("send_stream", f"--slot={slot}")
    assert str(refused.value) == (
        f"Error: argument --slot: {slot!r} is not a slot: give its number in ASCII digits, "
        "0 to PUSHDESK_STREAM_SENDERS - 1"
    )


def test_a_sender_whose_redis_does_not_answer_says_so_in_a_line_each_time_it_starts_again(transactional_db):
    """A Redis restart of a few minutes: a line every 2 s, not a page of tracebacks every 2 s."""
    import os
    import subprocess
    import sys

    from django.utils import timezone

    from operations.models import Instance
    from tests.fakes.workers import database_url
    from tests.processes import ROOT, as_from_a_terminal, free_port

    Instance.objects.get_or_create(pk=1, defaults={"name": settings.PUSHDESK_INSTANCE, "claimed_at": timezone.now()})
    env = {**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"}
    sender = subprocess.Popen(
        [sys.executable, "manage.py", "send_stream", "--slot", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_from_a_terminal,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(sender.stdout), daemon=True)
    reader.start()
    try:
        # Until it has started again twice: a loaded machine can take several seconds to start Django.
        deadline = time.monotonic() + 90
        while sum("starting again in 2 s" in line for line in lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        sender.send_signal(signal.SIGTERM)
        sender.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        sender.kill()
    output = "".join(lines)
    failures = [line for line in output.splitlines() if "starting again in 2 s" in line]
    assert failures and all("Redis does not answer (ConnectionError" in line for line in failures), output[-3000:]
    assert all("start it, or check REDIS_URL: starting again" in line for line in failures), failures
    assert "Traceback" not in output and "hunter2" not in output, output[-3000:]
