"""/metrics: Prometheus' format behind a token, and its series moving during a send with faults."""

from contextlib import contextmanager

import pytest
from django.db import transaction
from prometheus_client.parser import text_string_to_metric_families

from delivery.models import Dispatch
from delivery.services.dispatches import _GATES, dispatch_create, dispatch_gate_register
from delivery.services.stream_senders import streams_send
from delivery.services.streams import Recipient, stream_append
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory, orders_stream

TOKEN = "metrics-token-for-the-tests-0123456789"


@pytest.fixture
def metrics_on(settings):
    settings.PUSHDESK_METRICS_TOKEN = TOKEN


def scrape(client) -> dict:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_HOST="10.1.2.3")
    assert response.status_code == 200, response.content
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_waiting_event_replays_are_counted_with_the_age_of_the_oldest(client, db, metrics_on):
    import datetime as dt

    from django.utils import timezone

    from audiences.models import EventReplay

    assert scrape(client)[("pushdesk_event_replays", ())] == 0
    assert scrape(client)[("pushdesk_event_replay_oldest_age_seconds", ())] == 0
    now = timezone.now()
    for minutes in (30, 3):
        EventReplay.objects.create(
            listener="x.y", event_ids=[1], created_at=now - dt.timedelta(minutes=minutes), next_attempt_at=now
        )
    samples = scrape(client)
    assert samples[("pushdesk_event_replays", ())] == 2
    assert 1800 <= samples[("pushdesk_event_replay_oldest_age_seconds", ())] < 1860


def test_what_stops_event_retention_is_counted(client, db, metrics_on, settings):
    from tests.factories import SegmentFactory

    settings.PUSHDESK_RETENTION_EVENT_DAYS = 30
    assert scrape(client)[("pushdesk_retention_refusals", ())] == 0
    SegmentFactory(name="Ever bought", kind="rules", rules={"all": [{"event": "purchase", "did": True}]})
    SegmentFactory(name="Bought lately", kind="rules", rules={"all": [{"event": "purchase", "within_days": 7}]})
    assert scrape(client)[("pushdesk_retention_refusals", ())] == 1


def test_the_help_of_retention_refusals_names_everything_it_counts(client, db, metrics_on):
    """The series counts ``retention_problems``: conversion goals as well as segments, journey
    conditions and frequency caps, and its help, which Prometheus shows, says so."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_HOST="10.1.2.3")
    family = next(
        f for f in text_string_to_metric_families(response.content.decode()) if f.name == "pushdesk_retention_refusals"
    )
    for counted in ("segments", "journey conditions", "conversion", "frequency caps"):
        assert counted in family.documentation.lower(), family.documentation


def test_the_bearer_scheme_is_read_in_any_case(client, db, metrics_on):
    """HTTP's authentication schemes are case-insensitive: a scraper may send 'bearer'."""
    for scheme in ("bearer", "BEARER", "Bearer"):
        assert client.get("/metrics", HTTP_AUTHORIZATION=f"{scheme} {TOKEN}").status_code == 200
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 404


def test_metrics_need_the_token(client, db, metrics_on, settings):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token-wrong-token").status_code == 404
    settings.PUSHDESK_METRICS_TOKEN = ""
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


def test_series_move_during_a_send_with_faults(
    client, pushsim, pushsim_app, metrics_on, settings, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_SEND_BACKOFF_SECONDS = 0.05
    saved = dict(_GATES)
    dispatch_gate_register(kind=Dispatch.Kind.API_TRIGGER, gate=lambda **kwargs: None)
    try:
        before = scrape(client)
        assert before[("pushdesk_instance_claimed", ())] == 1
        content = PushContentFactory(app=pushsim_app)
        profiles = [ProfileFactory() for _ in range(4)]
        phones = [DeviceFactory(profile=p, app=pushsim_app, platform="ios") for p in profiles]
        pushsim.state.fail_token(token=phones[0].token, failures=[429])
        pushsim.state.add_device(token=phones[1].token, platform="ios", state="unregistered")
        with django_capture_on_commit_callbacks(execute=True):
            dispatch_create(
                app_id=pushsim_app.pk,
                kind=Dispatch.Kind.API_TRIGGER,
                spec=content.spec(),
                content_id=content.pk,
                profile_ids=[p.pk for p in profiles],
            )
        after = scrape(client)
    finally:
        _GATES.clear()
        _GATES.update(saved)
    app = (("app", pushsim_app.name),)
    accepted = ("pushdesk_sends_total", (*app, ("outcome", "accepted")))
    failed = ("pushdesk_sends_total", (*app, ("outcome", "failed")))
    assert before.get(accepted, 0) == 0 and after[accepted] == 3
    assert after[failed] == 1
    assert after[("pushdesk_send_retries_total", (("reason", "TooManyRequests"),))] == 1
    assert after[("pushdesk_dead_tokens", app)] == 1
    assert after[("pushdesk_trigger_latency_seconds", ())] >= 0
    assert ("pushdesk_queue_depth", ()) in after and ("pushdesk_failed_tasks_last_hour", ()) in after


def _platform_sends(samples: dict, app_name: str) -> dict:
    return {
        (labels["platform"], labels["outcome"]): value
        for (name, label_items), value in samples.items()
        if name == "pushdesk_platform_sends_total"
        for labels in [dict(label_items)]
        if labels["app"] == app_name
    }


@pytest.mark.usefixtures("stream_gates_open")
def test_sends_break_down_per_platform_as_batches_land(client, pushsim, pushsim_app, metrics_on):
    """A stream's batches move the per-platform series at once, before any recount."""
    content = PushContentFactory(app=pushsim_app)
    stream = orders_stream(content, source_id=1).pk
    profiles = [ProfileFactory() for _ in range(3)]
    iphones = [DeviceFactory(profile=p, app=pushsim_app, platform="ios") for p in profiles[:2]]
    DeviceFactory(profile=profiles[2], app=pushsim_app, platform="android")
    pushsim.state.add_device(token=iphones[1].token, platform="ios", state="unregistered")
    with transaction.atomic():
        stream_append(
            dispatch_id=stream,
            kind=Dispatch.Kind.API_TRIGGER,
            app_id=pushsim_app.pk,
            recipients=[Recipient(p.pk) for p in profiles],
            source_lock=("SELECT id FROM delivery_app WHERE id = %s FOR SHARE", [pushsim_app.pk]),
        )
    streams_send(budget=0)
    assert Dispatch.objects.get(pk=stream).status == Dispatch.Status.SENDING
    assert _platform_sends(scrape(client), pushsim_app.name) == {
        ("ios", "accepted"): 1,
        ("ios", "failed"): 1,
        ("android", "accepted"): 1,
    }


def test_a_finished_dispatch_is_recounted_per_platform(
    client, pushsim, pushsim_app, metrics_on, settings, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_SEND_BACKOFF_SECONDS = 0.05
    saved = dict(_GATES)
    dispatch_gate_register(kind=Dispatch.Kind.API_TRIGGER, gate=lambda **kwargs: None)
    try:
        content = PushContentFactory(app=pushsim_app)
        profiles = [ProfileFactory() for _ in range(6)]
        iphones = [DeviceFactory(profile=p, app=pushsim_app, platform="ios") for p in profiles[:3]]
        androids = [DeviceFactory(profile=p, app=pushsim_app, platform="android") for p in profiles[3:5]]
        pushsim.state.add_device(token=iphones[1].token, platform="ios", state="unregistered")
        pushsim.state.fail_token(token=androids[1].token, failures=[429])
        with django_capture_on_commit_callbacks(execute=True):
            dispatch = dispatch_create(
                app_id=pushsim_app.pk,
                kind=Dispatch.Kind.API_TRIGGER,
                spec=content.spec(),
                content_id=content.pk,
                profile_ids=[p.pk for p in profiles],
            )
        dispatch.refresh_from_db()
        assert dispatch.status == Dispatch.Status.DONE
        finished = scrape(client)
    finally:
        _GATES.clear()
        _GATES.update(saved)
    by_platform = _platform_sends(finished, pushsim_app.name)
    assert by_platform == {
        ("ios", "accepted"): 2,
        ("ios", "failed"): 1,
        ("android", "accepted"): 2,
        ("none", "skipped"): 1,  # the profile without a device
    }
    for outcome in ("accepted", "failed", "skipped"):
        per_app = finished[("pushdesk_sends_total", (("app", pushsim_app.name), ("outcome", outcome)))]
        assert per_app == sum(n for (_, o), n in by_platform.items() if o == outcome)


@pytest.mark.usefixtures("stream_gates_open")
def test_trigger_latency_is_the_slowest_request_to_send_of_the_streams_last_minute(client, db, metrics_on):
    """A trigger stream is opened once a day: its rows, not its opening, say how long a trigger waited."""
    import datetime as dt

    from django.utils import timezone

    from delivery.models import Delivery
    from tests.factories import AppFactory

    stream = orders_stream(PushContentFactory(app=AppFactory()), source_id=1)
    now = timezone.now()

    def row(*, queued: int, finished: int | None = None, status: str = "accepted", held: int | None = None):
        Delivery.objects.create(
            dispatch=stream,
            status=status if finished is not None else "queued",
            queued_at=now - dt.timedelta(seconds=queued),
            finished_at=None if finished is None else now - dt.timedelta(seconds=finished),
            next_attempt_at=None if held is None else now + dt.timedelta(seconds=held),
        )

    assert scrape(client)[("pushdesk_trigger_latency_seconds", ())] == 0
    row(queued=47, finished=5)  # sent 42 s after its request
    row(queued=3, finished=2)
    row(queued=900, finished=300)  # slow, but before the last minute
    row(queued=200, finished=10, status="unknown")  # never sent: its lease ran out
    row(queued=7200, held=3600)  # held back for quiet hours: not due yet
    assert 41.5 <= scrape(client)[("pushdesk_trigger_latency_seconds", ())] < 45
    row(queued=70)  # due at once, still waiting for the sender
    assert 70 <= scrape(client)[("pushdesk_trigger_latency_seconds", ())] < 75


@pytest.mark.embedded
@pytest.mark.usefixtures("stream_gates_open")
def test_trigger_latency_leaves_out_a_row_quiet_hours_held(client, pushsim, pushsim_app, metrics_on):
    """A marketing stream's row held three hours by quiet hours, then sent with a prompt one: the
    slowest trigger is the prompt one's, not the app's quiet hours."""
    import datetime as dt

    from django.utils import timezone

    from delivery.models import Delivery, DeliveryRules

    stream = orders_stream(PushContentFactory(app=pushsim_app), source_id=1)
    Dispatch.objects.filter(pk=stream.pk).update(purpose="marketing")
    now = timezone.now()
    then = now - dt.timedelta(hours=3)
    rules = DeliveryRules.objects.create(
        app=pushsim_app,
        quiet_start=(then - dt.timedelta(hours=1)).time(),
        quiet_end=(now - dt.timedelta(seconds=5)).time(),
        default_timezone="UTC",
    )
    late, prompt = ProfileFactory(), ProfileFactory()
    for profile, held_by in ((late, rules), (prompt, None)):
        DeviceFactory(profile=profile, app=pushsim_app)
        stream_append(
            dispatch_id=stream.pk,
            kind=stream.kind,
            app_id=pushsim_app.pk,
            recipients=[Recipient(profile.pk)],
            source_lock=("SELECT id FROM delivery_app WHERE id = %s FOR SHARE", [pushsim_app.pk]),
            rules=held_by,
            now=then if held_by else None,
        )
    assert Delivery.objects.get(profile=late).reason == "quiet_hours"  # held until they end
    streams_send(budget=0)
    rows = {r.profile_id: r for r in Delivery.objects.filter(dispatch_id=stream.pk)}
    assert {r.status for r in rows.values()} == {"accepted"}
    assert rows[late.pk].finished_at - rows[late.pk].queued_at > dt.timedelta(hours=3)
    prompt_seconds = (rows[prompt.pk].finished_at - rows[prompt.pk].queued_at).total_seconds()
    assert scrape(client)[("pushdesk_trigger_latency_seconds", ())] == pytest.approx(prompt_seconds, abs=1e-3)


def test_metrics_still_answer_while_redis_is_down_without_the_queue_series(client, db, metrics_on, monkeypatch):
    from django.conf import settings
    from django_q.conf import Conf

    from tests.processes import free_port

    if "redis" not in settings.Q_CLUSTER:
        pytest.skip("the queue is the database here")
    monkeypatch.setattr(Conf, "REDIS", f"redis://127.0.0.1:{free_port()}/0")
    samples = scrape(client)
    assert samples[("pushdesk_instance_claimed", ())] == 1
    assert samples[("pushdesk_queue_up", ())] == 0
    assert ("pushdesk_queue_depth", ()) not in samples
    assert ("pushdesk_queue_oldest_task_age_seconds", ()) not in samples


def test_a_schedule_that_never_ran_counts_from_when_it_was_due(client, db, metrics_on):
    """A new installation whose workers never started: the beat's alert must fire, not find no series."""
    import datetime as dt
    import uuid

    from django.utils import timezone
    from django_q.models import Schedule, Task

    now = timezone.now()
    Schedule.objects.all().delete()
    ran = Schedule.objects.create(name="campaigns tick", func="math.floor", minutes=1, next_run=now)
    last = Task.objects.create(
        id=uuid.uuid4().hex,
        name="n",
        func="math.floor",
        started=now,
        stopped=now - dt.timedelta(seconds=40),
        success=True,
    )
    Schedule.objects.filter(pk=ran.pk).update(task=last.pk)
    Schedule.objects.create(name="journeys tick", func="math.floor", minutes=1, next_run=now - dt.timedelta(minutes=10))
    Schedule.objects.create(name="events replay", func="math.floor", minutes=1, next_run=now + dt.timedelta(seconds=30))
    samples = scrape(client)
    age = {
        dict(labels)["schedule"]: v
        for (name, labels), v in samples.items()
        if name == "pushdesk_beat_last_run_age_seconds"
    }
    assert 40 <= age["campaigns tick"] < 45
    assert 600 <= age["journeys tick"] < 605
    assert age["events replay"] == 0


def test_a_deleted_schedule_of_the_beat_is_an_infinite_age_not_a_missing_series(client, db, metrics_on):
    import math

    from django_q.models import Schedule

    from operations.beats import BEATS

    Schedule.objects.filter(name="delivery watchdog").delete()
    samples = scrape(client)
    age = {
        dict(labels)["schedule"]: v
        for (name, labels), v in samples.items()
        if name == "pushdesk_beat_last_run_age_seconds"
    }
    assert set(BEATS) <= set(age)
    assert math.isinf(age["delivery watchdog"])


def test_dead_tokens_are_those_the_providers_refused_now_a_gauge(client, db, metrics_on):
    """A token the app itself unregistered (a sign-out) is not a provider's refusal, and a refused
    token registered again is alive: the figure goes down, so it is a gauge, not a counter."""
    from django.utils import timezone

    from delivery.models import Device
    from tests.factories import AppFactory

    app = AppFactory()
    refused = DeviceFactory(app=app, platform="ios")
    signed_out = DeviceFactory(app=app, platform="ios")
    Device.objects.filter(pk=refused.pk).update(
        active=False, invalidated_at=timezone.now(), invalidated_reason="Unregistered"
    )
    Device.objects.filter(pk=signed_out.pk).update(
        active=False, invalidated_at=timezone.now(), invalidated_reason="unregistered"
    )
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    assert families["pushdesk_dead_tokens"].type == "gauge"
    assert scrape(client)[("pushdesk_dead_tokens", (("app", app.name),))] == 1


def _finished_dispatch(app, *, finished_at, status="done"):
    return Dispatch(
        app=app,
        kind="campaign",
        content_spec={},
        status=status,
        accepted=2,
        failed=1,
        by_platform={"ios": {"accepted": 2, "failed": 1}},
        retries={"TooManyRequests": 1},
        finished_at=finished_at,
    )


def _sends_series(samples: dict) -> dict:
    names = ("pushdesk_sends_total", "pushdesk_platform_sends_total", "pushdesk_send_retries_total")
    return {key: value for key, value in samples.items() if key[0] in names}


def test_a_scrape_reads_the_running_and_recent_dispatches_and_the_dead_devices_not_the_history(
    client, db, metrics_on, django_assert_max_num_queries
):
    """Finished dispatches are summed once, an hour after they finished: a scrape then reads the
    running and recent ones (by their indexes), and the devices a provider refused, not all."""
    import datetime as dt

    from django.db import connection
    from django.utils import timezone

    from delivery.models import Device
    from operations.metrics import send_totals
    from tests.factories import AppFactory
    from tests.pg_statistics import rows_read

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's statistics")
    now = timezone.now()
    app = AppFactory(name="Shop")
    Dispatch.objects.bulk_create(
        [_finished_dispatch(app, finished_at=now - dt.timedelta(days=2)) for _ in range(300)]
        + [_finished_dispatch(app, finished_at=now - dt.timedelta(minutes=5), status="stopped")]
    )
    running = Dispatch.objects.create(
        app=app,
        kind="campaign",
        content_spec={},
        status="sending",
        accepted=1,
        by_platform={"android": {"accepted": 1}},
    )
    DeviceFactory.create_batch(60, app=app, platform="ios")
    refused = DeviceFactory.create_batch(2, app=app, platform="ios")
    Device.objects.filter(pk__in=[d.pk for d in refused]).update(
        active=False, invalidated_at=now, invalidated_reason="BadDeviceToken"
    )
    shop = (("app", "Shop"),)
    expected = {
        ("pushdesk_sends_total", (*shop, ("outcome", "accepted"))): 603,
        ("pushdesk_sends_total", (*shop, ("outcome", "failed"))): 301,
        ("pushdesk_platform_sends_total", (*shop, ("outcome", "accepted"), ("platform", "ios"))): 602,
        ("pushdesk_platform_sends_total", (*shop, ("outcome", "accepted"), ("platform", "android"))): 1,
        ("pushdesk_send_retries_total", (("reason", "TooManyRequests"),)): 301,
        ("pushdesk_dead_tokens", shop): 2,
        ("pushdesk_dispatches", (("status", "sending"),)): 1,
    }
    first = scrape(client)  # sums what finished more than an hour ago
    assert {key: first.get(key) for key in expected} == expected
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE delivery_dispatch")
        cursor.execute("ANALYZE delivery_device")
        cursor.execute("SET LOCAL enable_seqscan = off")  # what an index path reads, whatever the table's size
    dispatches, devices = rows_read("delivery_dispatch"), rows_read("delivery_device")
    with django_assert_max_num_queries(20):
        second = scrape(client)
    # The running one and the recent one, once for each series and for `manage.py status`' list.
    assert rows_read("delivery_dispatch") - dispatches < 20
    assert rows_read("delivery_device") - devices <= 2  # the refused ones
    assert _sends_series(second) == _sends_series(first)
    # Once finished and an hour old, the running dispatch is summed too: counted once, never twice.
    Dispatch.objects.filter(pk=running.pk).update(status="done", finished_at=now)
    moved = send_totals(now=now + dt.timedelta(hours=2))
    assert (moved.sends[app.pk, "accepted"], moved.platform_sends[app.pk, "android", "accepted"]) == (603, 1)
    assert send_totals(now=now + dt.timedelta(hours=2)) == send_totals(now=now)
    assert _sends_series(scrape(client)) == _sends_series(second)


@contextmanager
def _database_gone():
    """The database connection pointed at a port where no PostgreSQL answers."""
    from django.db import connection

    from tests.processes import free_port

    if connection.vendor != "postgresql":
        pytest.skip("points the database connection at a port where no PostgreSQL answers")
    saved = dict(connection.settings_dict)
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.update(saved)


def test_a_scrape_while_the_database_is_down_says_database_up_0_and_logs_a_line_a_minute(
    client, transactional_db, metrics_on, settings, monkeypatch, caplog
):
    """What exporters do when what they watch is down: the scrape succeeds and says so (a failed
    scrape would read as the web process down); the queue's figures, from Redis, still come."""
    from config import reporting
    from operations import metrics

    assert scrape(client)[("pushdesk_database_up", ())] == 1
    monkeypatch.setattr(metrics, "_scrapes_down", reporting.SaidOnceAMinute())
    with _database_gone():
        samples = [scrape(client) for _ in range(3)]
    for found in samples:
        assert found[("pushdesk_database_up", ())] == 0
        assert ("pushdesk_instance_claimed", ()) not in found
        if settings.REDIS_URL:
            assert found[("pushdesk_queue_up", ())] == 1 and ("pushdesk_queue_depth", ()) in found
    lines = [r for r in caplog.records if "/metrics" in r.getMessage()]
    assert len(lines) == 1 and "the database does not answer" in lines[0].getMessage()
    assert not any(r.exc_info for r in caplog.records)


def test_while_the_database_stays_down_the_scrape_s_line_comes_again_a_minute_later(
    client, transactional_db, metrics_on, monkeypatch, caplog
):
    from config import reporting
    from operations import metrics

    monkeypatch.setattr(metrics, "_scrapes_down", reporting.SaidOnceAMinute())
    clock = [1000.0]
    monkeypatch.setattr(reporting.time, "monotonic", lambda: clock[0])
    with _database_gone():
        for seconds in (0, 30, 29, 2, 1):  # said at the first, left out until a minute after it
            clock[0] += seconds
            assert scrape(client)[("pushdesk_database_up", ())] == 0
    lines = [r.getMessage() for r in caplog.records if "/metrics" in r.getMessage()]
    assert len(lines) == 2, lines
    assert all(line.startswith("/metrics: the database does not answer (OperationalError: ") for line in lines)
    assert all(line.endswith("; serving pushdesk_database_up 0") for line in lines)


def test_credentials_the_encryption_key_cannot_decrypt_are_counted_reading_each_token_once(
    client, db, metrics_on, settings
):
    """A wrong key, or the old key dropped from the rotation list before rotating: the gauge says
    how many credentials nothing can be sent with. A scrape reads the tokens' digests, and a token
    only the first time it is seen under these keys (a service account's is about 3 KB)."""
    from cryptography.fernet import Fernet
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from delivery.models import App
    from tests.factories import AppFactory

    def tokens_read(queries) -> int:
        return sum("apns_private_key" in q["sql"] and "sha256" not in q["sql"].lower() for q in queries)

    old, new = settings.PUSHDESK_ENCRYPTION_KEY.split(",")[0], Fernet.generate_key().decode()
    both = AppFactory(name="Shop")
    App.objects.filter(pk=both.pk).update(apns_private_key="an APNs key", fcm_service_account="a service account")
    fcm_only = AppFactory(name="News")
    App.objects.filter(pk=fcm_only.pk).update(fcm_service_account="another service account")
    AppFactory(name="Not configured")
    name = "pushdesk_credentials_undecryptable"

    assert scrape(client)[(name, ())] == 0
    settings.PUSHDESK_ENCRYPTION_KEY = new  # restarted under another key
    assert scrape(client)[(name, ())] == 3
    settings.PUSHDESK_ENCRYPTION_KEY = f"{new},{old}"  # the old key kept in the rotation list
    assert scrape(client)[(name, ())] == 0
    with CaptureQueriesContext(connection) as queries:
        assert scrape(client)[(name, ())] == 0
    if connection.vendor == "postgresql":
        assert tokens_read(queries) == 0, [q["sql"] for q in queries if "apns_private_key" in q["sql"]]
    settings.PUSHDESK_ENCRYPTION_KEY = new  # dropped before the rotation ran
    assert scrape(client)[(name, ())] == 3
    App.objects.filter(pk=fcm_only.pk).update(fcm_service_account="saved again under the new key")
    assert scrape(client)[(name, ())] == 2


def test_the_guide_s_prometheus_table_lists_every_series_a_scrape_exports_with_its_labels(client, db, metrics_on):
    """An operator writes alert rules from the operator's guide's table: each series a scrape
    exports has its row there, with the labels the scrape gives it, and no row names a series
    the scrape lacks."""
    import re
    from pathlib import Path

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_HOST="10.1.2.3")
    families = {}
    for family in text_string_to_metric_families(response.content.decode()):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        families[name] = family
    guide = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    table = guide[guide.index("| series | meaning | alert |") :].split("\n\n")[0]
    rows = dict(re.findall(r"^\| `(pushdesk_[a-z_]+)(?:\{([a-z_,]+)\})?`", table, re.MULTILINE))
    assert sorted(rows) == sorted(families)
    for family in families.values():
        for sample in family.samples:
            name = sample.name if sample.name in rows else f"{family.name}_total"
            assert set(sample.labels) == set(filter(None, rows[name].split(","))), sample


def _by_label(samples: dict, series: str, label: str) -> dict:
    return {dict(labels)[label]: v for (name, labels), v in samples.items() if name == series}


def test_a_running_deployment_shows_its_worker_beating_slots_and_no_beat_overdue(
    client, beat, workers_running, metrics_on, settings
):
    samples = scrape(client)
    assert samples[("pushdesk_workers_seen", ())] == 1
    ages = _by_label(samples, "pushdesk_sender_slot_heartbeat_age_seconds", "slot")
    assert set(ages) == {str(slot) for slot in range(settings.PUSHDESK_STREAM_SENDERS)}
    assert all(0 <= age < 5 for age in ages.values()), ages
    overdue = _by_label(samples, "pushdesk_beat_overdue_seconds", "schedule")
    assert overdue and set(overdue.values()) == {0}, overdue


def test_no_worker_and_silent_sender_slots_are_what_status_check_fails_on(
    client, db, tasks_queued, metrics_on, settings, capsys
):
    """The series an alert rule reads agree with ``status --check``: no qcluster, a slot silent
    since 10 minutes ago, and one never seen in the last week."""
    import time

    from django.core.cache import cache
    from django.core.management import call_command

    from delivery.services.stream_senders import _HEARTBEAT

    settings.PUSHDESK_STREAM_SENDERS = 2
    keys = [_HEARTBEAT.format(slot=slot) for slot in (0, 1)]
    cache.delete_many([*keys, *(f"{key}:seen" for key in keys)])
    cache.set(f"{keys[0]}:seen", {"pid": 77, "at": time.time() - 600, "process": True}, timeout=3600)
    samples = scrape(client)
    assert samples[("pushdesk_workers_seen", ())] == 0
    ages = _by_label(samples, "pushdesk_sender_slot_heartbeat_age_seconds", "slot")
    assert 600 <= ages["0"] < 610
    assert ages["1"] == float("inf")
    with pytest.raises(SystemExit) as exit_:
        call_command("status", "--check")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "no worker seen" in err and "slot 0 silent" in err and "slot 1 silent (never seen)" in err, err


def test_without_a_queue_to_run_tasks_for_there_are_no_workers_or_senders_to_count(client, db, metrics_on):
    """PUSHDESK_TASKS_SYNC runs each task where it is queued: no series, rather than a 0 that alerts."""
    samples = scrape(client)
    assert ("pushdesk_workers_seen", ()) not in samples
    assert not _by_label(samples, "pushdesk_sender_slot_heartbeat_age_seconds", "slot")


def test_a_beat_due_and_not_run_counts_since_it_was_due(client, db, metrics_on):
    import datetime as dt
    import math

    from django.utils import timezone
    from django_q.models import Schedule

    now = timezone.now()
    Schedule.objects.all().delete()
    Schedule.objects.create(
        name="campaigns tick", func="math.floor", minutes=1, next_run=now - dt.timedelta(minutes=12)
    )
    Schedule.objects.create(name="journeys tick", func="math.floor", minutes=1, next_run=now + dt.timedelta(seconds=30))
    overdue = _by_label(scrape(client), "pushdesk_beat_overdue_seconds", "schedule")
    assert 720 <= overdue["campaigns tick"] < 725
    assert overdue["journeys tick"] == 0
    assert math.isinf(overdue["delivery watchdog"])  # deleted: `status` says MISSING


def test_a_scrape_finds_the_workers_without_walking_redis_keys(client, db, workers_running, metrics_on):
    """Redis often holds the cache and the sessions too: a scrape reads the keys it names, never
    KEYS or SCAN over all of them, however many there are."""
    from django.conf import settings
    from django_q.brokers import get_broker
    from redis import Redis

    if "redis" not in settings.Q_CLUSTER:
        pytest.skip("the queue is the database here")
    connection = get_broker().connection
    unrelated = [f"pushdesk-test:unrelated:{n}" for n in range(20_000)]
    with connection.pipeline(transaction=False) as pipe:
        for start in range(0, len(unrelated), 1000):
            pipe.mset(dict.fromkeys(unrelated[start : start + 1000], "x"))
        pipe.execute()

    def walks(*args, **kwargs):
        raise AssertionError("a scrape walked Redis' keys")

    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in ("keys", "scan", "scan_iter"):
                patch.setattr(Redis, name, walks)
            samples = scrape(client)
    finally:
        for start in range(0, len(unrelated), 1000):
            connection.delete(*unrelated[start : start + 1000])
    assert samples[("pushdesk_workers_seen", ())] == 1


def test_a_worker_gone_is_not_seen_once_its_statistics_run_out(db, tasks_queued):
    """The registry keeps a cluster's key a minute past its expiry; the key itself says whether it runs."""
    import uuid

    from django.conf import settings
    from django_q.brokers import get_broker
    from django_q.signing import SignedPackage
    from django_q.status import Stat, Status

    if "redis" not in settings.Q_CLUSTER:
        pytest.skip("the queue is the database here")
    broker = get_broker()
    gone, running = Status(pid=1, cluster_id=uuid.uuid4()), Status(pid=2, cluster_id=uuid.uuid4())
    for cluster in (gone, running):
        broker.set_stat(Stat.get_key(cluster.cluster_id), SignedPackage.dumps(cluster, True), 60)
    try:
        broker.connection.delete(Stat.get_key(gone.cluster_id))  # as its 3 s ran out
        assert [stat.pid for stat in Stat.get_all()] == [2]
    finally:
        broker.connection.delete(Stat.get_key(running.cluster_id))


def test_workers_of_the_release_before_are_seen_until_a_worker_of_this_one_reports(
    client, db, tasks_queued, metrics_on
):
    """An upgrade restarts the web machines first, then the workers one machine at a time: the workers
    still on the release before save their statistics as django-q2 does, in no registry. Until a
    worker of this release has reported, they are found as django-q2 finds them; once one has, the
    registry is read alone, and it is kept for a week after its last report, so a queue whose workers
    stopped reads 0 without walking Redis' keys."""
    import uuid

    from django.conf import settings
    from django_q.brokers import get_broker
    from django_q.brokers.redis_broker import Redis as PlainRedis
    from django_q.signing import SignedPackage
    from django_q.status import Stat, Status
    from redis import Redis

    if "redis" not in settings.Q_CLUSTER:
        pytest.skip("the queue is the database here")
    broker = get_broker()
    broker.connection.delete(broker.stats_registry())  # no worker of this release has reported
    old = [Status(pid=pid, cluster_id=uuid.uuid4()) for pid in (11, 12)]
    for cluster in old:
        PlainRedis.set_stat(broker, Stat.get_key(cluster.cluster_id), SignedPackage.dumps(cluster, True), 3)
    new = Status(pid=21, cluster_id=uuid.uuid4())
    try:
        assert scrape(client)[("pushdesk_workers_seen", ())] == 2

        broker.set_stat(Stat.get_key(new.cluster_id), SignedPackage.dumps(new, True), 3)
        assert broker.connection.ttl(broker.stats_registry()) > 6 * 86400
        broker.connection.delete(*(Stat.get_key(cluster.cluster_id) for cluster in (*old, new)))  # all stopped

        def walks(*args, **kwargs):
            raise AssertionError("a scrape walked Redis' keys")

        with pytest.MonkeyPatch.context() as patch:
            for name in ("keys", "scan", "scan_iter"):
                patch.setattr(Redis, name, walks)
            assert scrape(client)[("pushdesk_workers_seen", ())] == 0
    finally:
        broker.connection.delete(*(Stat.get_key(cluster.cluster_id) for cluster in (*old, new)))
        broker.connection.delete(broker.stats_registry())


@contextmanager
def redis_commands_counted():
    """Every command the process sends Redis outside a pipeline, by name (KEYS, SCAN, MGET…)."""
    from collections import Counter

    from redis import Redis

    sent = Counter()
    execute = Redis.execute_command

    def counted(self, *args, **options):
        sent[str(args[0]).upper()] += 1
        return execute(self, *args, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Redis, "execute_command", counted)
        yield sent


def test_with_redis_emptied_and_no_worker_scrapes_walk_the_keys_once_in_a_while(client, db, tasks_queued, metrics_on):
    """Redis emptied (a restart) with no worker running leaves no registry: a scrape finds the
    workers of the release before, which keep none, by walking the keys. That none were found is
    remembered in one key for a short while, so the next scrapes read that key instead; a worker
    of this release reporting meanwhile is seen at once, one of the release before once it has run out."""
    import uuid

    from django.conf import settings
    from django_q.brokers import get_broker
    from django_q.brokers.redis_broker import Redis as PlainRedis
    from django_q.signing import SignedPackage
    from django_q.status import Stat, Status

    if "redis" not in settings.Q_CLUSTER:
        pytest.skip("the queue is the database here")
    broker = get_broker()
    assert not broker.connection.exists(broker.stats_registry())  # emptied before each test
    with redis_commands_counted() as sent:
        for _ in range(5):
            assert scrape(client)[("pushdesk_workers_seen", ())] == 0
    assert sent["KEYS"] + sent["SCAN"] == 1, sent

    old = Status(pid=11, cluster_id=uuid.uuid4())
    new = Status(pid=21, cluster_id=uuid.uuid4())
    try:
        PlainRedis.set_stat(broker, Stat.get_key(old.cluster_id), SignedPackage.dumps(old, True), 60)
        broker.connection.delete(broker.stats_none_found())  # as the short while runs out
        assert scrape(client)[("pushdesk_workers_seen", ())] == 1

        broker.connection.delete(Stat.get_key(old.cluster_id))
        assert scrape(client)[("pushdesk_workers_seen", ())] == 0
        broker.set_stat(Stat.get_key(new.cluster_id), SignedPackage.dumps(new, True), 60)
        assert scrape(client)[("pushdesk_workers_seen", ())] == 1
    finally:
        broker.connection.delete(*(Stat.get_key(cluster.cluster_id) for cluster in (old, new)))
