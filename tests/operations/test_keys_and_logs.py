"""Redis keys carry the instance's name; logs can be JSON, with one line per batch of a send."""

import json
import logging
import os
import subprocess
import sys

import pytest
import redis
from django.conf import settings
from django.core.cache import cache
from django_q.brokers import get_broker

from delivery.models import Dispatch
from delivery.services.dispatches import _GATES, dispatch_create, dispatch_gate_register
from delivery.throttle import RedisThrottle
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = pytest.mark.skipif(not settings.REDIS_URL, reason="needs Redis")


def test_cache_broker_and_rate_limiter_keys_are_prefixed_with_the_instance(db):
    instance = settings.PUSHDESK_INSTANCE
    server = redis.Redis.from_url(settings.REDIS_URL)
    cache.set("sign-in-failures", 3)
    assert server.keys(f"{instance}:*sign-in-failures")
    RedisThrottle(settings.REDIS_URL).take(key="app:41", rate=10, count=1)
    assert server.exists(f"{instance}:throttle:app:41")
    assert get_broker().list_key == f"django_q:{instance}:q"


def test_json_logs_are_one_object_a_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDESK_")}
    env.update(LOG_FORMAT="json", PUSHDESK_VAR_DIR=str(tmp_path))
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); import logging; logging.getLogger('pushdesk.x').warning('hello %s', 'there')",
        ],
        cwd=settings.BASE_DIR,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert (line["level"], line["logger"], line["message"]) == ("WARNING", "pushdesk.x", "hello there")


def _send_to_three_phones(pushsim, pushsim_app, caplog, capture, *, unregistered: int) -> Dispatch:
    """A send to three phones of the simulator's app, the first ``unregistered`` of them unregistered
    there, its batches' lines captured (the gate opened for the send alone)."""
    saved = dict(_GATES)
    dispatch_gate_register(kind=Dispatch.Kind.API_TRIGGER, gate=lambda **kwargs: None)
    try:
        content = PushContentFactory(app=pushsim_app)
        profiles = [ProfileFactory() for _ in range(3)]
        phones = [DeviceFactory(profile=p, app=pushsim_app, platform="ios") for p in profiles]
        for phone in phones[:unregistered]:
            pushsim.state.add_device(token=phone.token, platform="ios", state="unregistered")
        caplog.set_level(logging.INFO, logger="delivery.services.sending")
        with capture(execute=True):
            return dispatch_create(
                app_id=pushsim_app.pk,
                kind=Dispatch.Kind.API_TRIGGER,
                spec=content.spec(),
                content_id=content.pk,
                profile_ids=[p.pk for p in profiles],
            )
    finally:
        _GATES.clear()
        _GATES.update(saved)


def test_each_batch_of_a_send_logs_its_outcomes(pushsim, pushsim_app, caplog, django_capture_on_commit_callbacks):
    dispatch = _send_to_three_phones(pushsim, pushsim_app, caplog, django_capture_on_commit_callbacks, unregistered=1)
    batches = [r for r in caplog.records if getattr(r, "dispatch", None) == dispatch.pk]
    assert batches and sum(r.outcomes.get("accepted", 0) for r in batches) == 2
    assert sum(r.outcomes.get("failed", 0) for r in batches) == 1


def test_json_logs_of_the_web_are_json_the_server_s_own_lines_too(tmp_path):
    """A log pipeline reading the web unit's output gets one JSON object a line from start to stop."""
    import signal
    import time

    import httpx

    from tests.fakes.workers import database_url
    from tests.processes import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHDESK_")}
    env.update(LOG_FORMAT="json", PUSHDESK_VAR_DIR=str(tmp_path), DATABASE_URL=database_url())
    port = free_port()
    web = subprocess.Popen(
        # --stop-seconds within the 30 s it is waited for.
        [sys.executable, "-m", "config.web", "--workers", "1", "--stop-seconds", "10", "--bind", f"127.0.0.1:{port}"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    answered = False
    try:
        for _ in range(600):  # a minute: a worker loading the app takes seconds on a busy machine
            try:
                if answered := httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        output, _ = web.communicate(timeout=30)
    assert answered, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert any("Started worker-1" in line for line in lines), output  # granian's own lines
    assert any("shutdown completed" in line for line in lines), output
    for line in lines:
        entry = json.loads(line)  # fails on a plain line
        assert {"time", "level", "logger", "message"} <= set(entry), line


def test_a_batch_s_line_says_why_rows_failed_or_wait_for_a_retry(
    pushsim, pushsim_app, caplog, django_capture_on_commit_callbacks
):
    """'dispatch 7 batch: failed 1, queued 1' left the operator to look up each row in the admin to
    learn that a provider refused a token, or could not be reached."""
    dispatch = _send_to_three_phones(pushsim, pushsim_app, caplog, django_capture_on_commit_callbacks, unregistered=2)
    [line] = [r for r in caplog.records if getattr(r, "dispatch", None) == dispatch.pk]
    assert line.getMessage() == f"dispatch {dispatch.pk} batch: accepted 1, failed 2 (failed: Unregistered 2)"
    assert line.reasons == {"failed": {"Unregistered": 2}}


def test_a_batch_s_reasons_are_said_most_first_and_a_few_at_most():
    from delivery.services.claims import Result
    from delivery.services.sending import _reasons_said

    results = [Result(1, "accepted")]
    results += [Result(n, "queued", reason="transport:connect") for n in range(2, 5)]
    results += [Result(n, "failed", reason=f"reason {n}") for n in range(5, 11)] + [Result(11, "failed", reason="")]
    said, reasons = _reasons_said(results)
    assert said == "failed: reason 5 1, reason 6 1, reason 7 1 and 4 more; queued: transport:connect 3"
    assert reasons["queued"] == {"transport:connect": 3} and sum(reasons["failed"].values()) == 7
    # A template's error may quote what it read of a profile: the line names the kind of error only.
    said, reasons = _reasons_said([Result(1, "failed", reason="render_error: cannot read 'Jane Doe' as a date")])
    assert said == "failed: render_error 1" and reasons == {"failed": {"render_error": 1}}
