"""Retention: old deliveries go, their dispatch's counters stay; audit events stay append-only,
and only retention may remove those more than a year old."""

# ruff: noqa: F811 (the campaigns' ``live_trigger`` fixture, imported, is named by a test's arguments)

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.services import audit
from delivery.models import Delivery, Dispatch
from operations.services import retention_apply
from tests.campaigns.conftest import live_trigger  # noqa: F401 (an API-triggered campaign, live)
from tests.factories import AppFactory, DeviceFactory

NOW = timezone.now()


def _dispatch(finished_days_ago: int, rows: int = 3) -> Dispatch:
    app = AppFactory()
    dispatch = Dispatch.objects.create(
        app=app,
        kind="campaign",
        content_spec={},
        status="done",
        total=rows,
        accepted=rows,
        finished_at=NOW - dt.timedelta(days=finished_days_ago),
    )
    for device in DeviceFactory.create_batch(rows, app=app):
        Delivery.objects.create(dispatch=dispatch, device=device, status="accepted")
    return dispatch


def _old_event(days: int) -> AuditEvent:
    event = audit(actor=None, action="old_thing")
    with connection.cursor() as cursor:  # an event written long ago (the trigger refuses UPDATE)
        cursor.execute("ALTER TABLE accounts_auditevent DISABLE TRIGGER accounts_auditevent_append_only")
        cursor.execute(
            "UPDATE accounts_auditevent SET created_at = %s WHERE id = %s", [NOW - dt.timedelta(days=days), event.pk]
        )
        cursor.execute("ALTER TABLE accounts_auditevent ENABLE TRIGGER accounts_auditevent_append_only")
    return event


def test_deliveries_of_old_dispatches_go_and_the_counters_stay(db):
    old, recent = _dispatch(200), _dispatch(10)
    out = io.StringIO()
    call_command("retention_apply", stdout=out)
    assert not Delivery.objects.filter(dispatch=old).exists()
    assert Delivery.objects.filter(dispatch=recent).count() == 3
    old.refresh_from_db()
    assert (old.total, old.accepted) == (3, 3)
    assert "Deleted 3 deliveries" in out.getvalue()
    assert AuditEvent.objects.filter(action="retention_applied").exists()


def test_delivery_days_0_keeps_deliveries_forever_and_says_so(db, settings):
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 0
    old = _dispatch(2000)
    out = io.StringIO()
    call_command("retention_apply", stdout=out)
    assert Delivery.objects.filter(dispatch=old).count() == 3
    assert out.getvalue().startswith("Deleted 0 deliveries (kept forever)"), out.getvalue()


def test_audit_events_are_kept_forever_by_default(db):
    event = _old_event(800)
    assert retention_apply()["audit_events"] == 0
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_command_refuses_audit_days_under_a_year_in_a_sentence_deleting_nothing(db, settings):
    settings.PUSHDESK_RETENTION_AUDIT_DAYS = 200
    old = _dispatch(2000)
    with pytest.raises(CommandError, match=r"kept 365 days at least\. Set PUSHDESK_RETENTION_AUDIT_DAYS"):
        call_command("retention_apply", stdout=io.StringIO())
    assert Delivery.objects.filter(dispatch=old).count() == 3


def test_retention_deletes_audit_events_past_their_days_only(db):
    ancient, last_year = _old_event(800), _old_event(300)
    assert retention_apply(audit_days=700)["audit_events"] == 1
    assert not AuditEvent.objects.filter(pk=ancient.pk).exists()
    assert AuditEvent.objects.filter(pk=last_year.pk).exists()


def test_the_database_refuses_to_delete_a_recent_event_even_for_retention(db):
    event = _old_event(300)
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL pushdesk.audit_retention = 'on'")
        cursor.execute("DELETE FROM accounts_auditevent WHERE id = %s", [event.pk])
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_the_database_refuses_to_delete_an_old_event_outside_retention(db):
    event = _old_event(800)
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM accounts_auditevent WHERE id = %s", [event.pk])
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_retention_reads_an_old_dispatch_s_rows_through_an_index_not_the_whole_table(db):
    """It runs daily over every old dispatch: a scan of the biggest table for each would never end."""
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's plans")
    _dispatch(200)
    with CaptureQueriesContext(connection) as run:
        assert retention_apply()["deliveries"] == 3
    reads = [q["sql"] for q in run.captured_queries if q["sql"].startswith('SELECT "delivery_delivery"."id"')]
    assert reads
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a plan that could use an index does
        for sql in reads:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "Index Cond: (dispatch_id = " in plan, plan  # its rows found by their dispatch


# --- profiles' events and failed tasks ------------------------------------------------------------


def _events(name: str, *, days_ago: int, n: int = 2):
    from tests.factories import EventFactory

    return EventFactory.create_batch(n, name=name, occurred_at=NOW - dt.timedelta(days=days_ago))


def _task(*, success: bool, days_ago: int):
    import uuid

    from django_q.models import Task

    stopped = NOW - dt.timedelta(days=days_ago)
    return Task.objects.create(
        id=uuid.uuid4().hex,
        name=f"task {uuid.uuid4().hex[:8]}",
        func="audiences.tasks.events_replay_task",
        started=stopped - dt.timedelta(seconds=1),
        stopped=stopped,
        success=success,
    )


def _rules_segment(name: str, rules: dict):
    from tests.factories import SegmentFactory

    return SegmentFactory(name=name, kind="rules", rules=rules)


@pytest.mark.embedded
def test_events_older_than_their_days_go_and_recent_ones_stay(db, settings):
    settings.PUSHDESK_RETENTION_EVENT_DAYS = 90
    _rules_segment("Recent buyers", {"all": [{"event": "purchase", "did": True, "min_count": 1, "within_days": 30}]})
    old = _events("purchase", days_ago=200, n=3) + _events("app_open", days_ago=91)
    recent = _events("purchase", days_ago=10) + _events("app_open", days_ago=89)
    from audiences.models import Event

    result = retention_apply(delivery_days=0)
    assert result["events"] == 5
    assert not Event.objects.filter(pk__in=[e.pk for e in old]).exists()
    assert Event.objects.filter(pk__in=[e.pk for e in recent]).count() == 4
    summary = AuditEvent.objects.get(action="retention_applied").summary
    assert (summary["events"], summary["event_days"]) == (5, 90)


@pytest.mark.embedded
def test_an_event_a_replay_waits_for_stays(db, settings):
    from audiences.models import Event, EventReplay

    settings.PUSHDESK_RETENTION_EVENT_DAYS = 30
    held, gone = _events("purchase", days_ago=40)
    EventReplay.objects.create(
        listener="journeys.services.entries.journeys_on_events", event_ids=[held.pk], next_attempt_at=NOW
    )
    assert retention_apply()["events"] == 1
    assert list(Event.objects.values_list("pk", flat=True)) == [held.pk]


@pytest.mark.embedded
def test_events_are_kept_forever_by_default(db):
    from audiences.models import Event

    _events("purchase", days_ago=3000)
    assert retention_apply()["events"] == 0
    assert Event.objects.count() == 2


@pytest.mark.embedded
@pytest.mark.parametrize(
    ("condition", "window"),
    [({"within_days": 365}, "over the last 365 days"), ({}, "over all time")],
    ids=["longer", "all time"],
)
def test_retention_refuses_while_a_segment_counts_events_further_back(db, settings, condition, window):
    from audiences.models import Event
    from operations.services import RetentionRefused

    settings.PUSHDESK_RETENTION_EVENT_DAYS = 90
    _rules_segment(
        "Loyal customers", {"any": [{"all": [{"event": "purchase", "did": True, "min_count": 5, **condition}]}]}
    )
    events = _events("purchase", days_ago=200)
    failure = _task(success=False, days_ago=400)
    old = _dispatch(2000)
    with pytest.raises(RetentionRefused) as refused:
        retention_apply()
    message = str(refused.value)
    assert message.startswith("Nothing was deleted: PUSHDESK_RETENTION_EVENT_DAYS=90 would delete events these count")
    assert "The segment 'Loyal customers'" in message and f"'purchase' events {window}" in message, message
    assert "PUSHDESK_RETENTION_EVENT_DAYS=90" in message
    assert Event.objects.filter(pk__in=[e.pk for e in events]).count() == 2
    assert type(failure).objects.filter(pk=failure.pk).exists()
    assert Delivery.objects.filter(dispatch=old).count() == 3
    assert not AuditEvent.objects.filter(action="retention_applied").exists()

    out = io.StringIO()
    call_command("status", stdout=out)
    assert "retention  REFUSES TO RUN" in out.getvalue() and "'Loyal customers'" in out.getvalue()
    with pytest.raises(CommandError, match="The segment 'Loyal customers'"):
        call_command("retention_apply", stdout=io.StringIO())

    settings.PUSHDESK_RETENTION_EVENT_DAYS = 400 if condition else 0  # kept as long as it counts: it runs
    assert retention_apply()["events"] == 0
    out = io.StringIO()
    call_command("status", stdout=out)
    assert "retention" not in out.getvalue()


def test_retention_refuses_while_a_journey_condition_counts_events_further_back(
    db, settings, team, segment, content, manager_alice
):
    from journeys.services.lifecycle import journey_create
    from operations.services import RetentionRefused, event_retention_problems

    graph = {
        "steps": [
            {"id": "start", "type": "wait", "seconds": 60 * 24 * 3600, "next": "check"},
            {
                "id": "check",
                "type": "condition",
                "branches": [
                    {
                        "label": "Buyers",
                        "rules": {"all": [{"event": "purchase", "did": True, "within_days": 120}]},
                        "next": "done",
                    },
                    {"label": "Openers", "event": "app_open", "next": "done"},
                ],
                "else": "done",
            },
            {"id": "done", "type": "exit"},
        ]
    }
    rules = {"all": [{"field": "external_id", "op": "exists"}]}
    segment.kind, segment.rules = "rules", rules
    segment.save()
    journey = journey_create(
        by=manager_alice, name="Win back", app=team, graph=graph, entry_kind="segment", entry_segment=segment
    )
    settings.PUSHDESK_RETENTION_EVENT_DAYS = 30
    with pytest.raises(RetentionRefused) as refused:
        retention_apply()
    assert refused.value.problems[1:] == [
        f"The journey 'Win back' (id {journey.pk}, version 1) counts 'purchase' events over the last 120 days, "
        "longer than PUSHDESK_RETENTION_EVENT_DAYS=30.",
        f"The journey 'Win back' (id {journey.pk}, version 1), step 'check', asks whether 'app_open' happened since "
        "entry, up to 60 days after it, longer than PUSHDESK_RETENTION_EVENT_DAYS=30.",
    ]
    assert event_retention_problems(event_days=120) == []


@pytest.mark.embedded
def test_failed_tasks_older_than_their_days_go(db, settings):
    from django_q.models import Task

    old_failure, recent_failure = _task(success=False, days_ago=31), _task(success=False, days_ago=29)
    old_success = _task(success=True, days_ago=300)  # the queue keeps its own save_limit of those
    out = io.StringIO()
    call_command("retention_apply", stdout=out)
    assert set(Task.objects.values_list("pk", flat=True)) == {recent_failure.pk, old_success.pk}
    assert "and 0 audit events" in out.getvalue()
    assert "1 failed task (stopped more than 30 days ago)" in out.getvalue(), out.getvalue()
    assert "0 events (kept forever)" in out.getvalue()
    assert AuditEvent.objects.get(action="retention_applied").summary["failed_tasks"] == 1
    assert old_failure.pk not in set(Task.objects.values_list("pk", flat=True))

    settings.PUSHDESK_RETENTION_TASK_DAYS = 0
    _task(success=False, days_ago=3000)
    assert retention_apply()["failed_tasks"] == 0


def test_the_command_says_how_many_events_went(db, settings):
    settings.PUSHDESK_RETENTION_EVENT_DAYS = 30
    _events("app_open", days_ago=45, n=4)
    out = io.StringIO()
    call_command("retention_apply", stdout=out)
    assert "4 events (occurred more than 30 days ago)" in out.getvalue(), out.getvalue()


def test_the_command_says_one_of_each_and_one_day_in_the_singular(db, settings):
    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 1
    settings.PUSHDESK_RETENTION_EVENT_DAYS = 1
    settings.PUSHDESK_RETENTION_TASK_DAYS = 1
    settings.PUSHDESK_RETENTION_IDEMPOTENCY_DAYS = 1
    settings.PUSHDESK_RETENTION_AUDIT_DAYS = 365
    _dispatch(2, rows=1)
    _events("app_open", days_ago=2, n=1)
    _task(success=False, days_ago=2)
    _old_event(400)
    out = io.StringIO()
    call_command("retention_apply", stdout=out)
    assert out.getvalue().strip() == (
        "Deleted 1 delivery (dispatches finished more than 1 day ago), 1 event (occurred more than 1 day ago), "
        "1 failed task (stopped more than 1 day ago), Idempotency-Key records of 0 trigger calls and 0 events "
        "calls (claimed more than 1 day ago), 0 deleted phones' token digests (needed by no winner test waiting "
        "for its rest), 0 used form tokens (past their day) and 1 audit event (older than 365 days)."
    )


def test_retention_reads_old_events_through_the_name_and_time_index_not_the_whole_table(db, settings):
    """Events come by the million: no index on the time alone (each event would pay for it), the
    (name, occurred_at) one serves each name's old events."""
    from django.test.utils import CaptureQueriesContext

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's plans")
    settings.PUSHDESK_RETENTION_EVENT_DAYS = 30
    _events("app_open", days_ago=45)
    with CaptureQueriesContext(connection) as run:
        assert retention_apply(delivery_days=0)["events"] == 2
    reads = [q["sql"] for q in run.captured_queries if q["sql"].startswith('SELECT "audiences_event"."id"')]
    assert reads
    reads += [q["sql"] for q in run.captured_queries if q["sql"].lstrip().startswith("WITH RECURSIVE names")]
    assert len(reads) == 3  # two chunks of app_open (the second finds none), and the names
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for sql in reads:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "event_name_time_idx" in plan, plan


def test_retention_refuses_while_a_conversion_window_outlasts_the_events(
    db, settings, team, segment, content, manager_alice
):
    """A campaign still to send whose conversion goal counts 'purchase' for 30 days after each send:
    with events kept 14 days, the window's first events would go while it is open. A sent one (or
    one with a window within the setting) does not hold retention back."""
    from campaigns.models import Campaign
    from campaigns.services.lifecycle import campaign_create
    from operations.services import RetentionRefused, event_retention_problems

    campaign = campaign_create(by=manager_alice, name="Spring sale", app=team, segment=segment, content=content)
    Campaign.objects.filter(pk=campaign.pk).update(conversion_event="purchase", conversion_window_hours=30 * 24)
    settings.PUSHDESK_RETENTION_EVENT_DAYS = 14
    with pytest.raises(RetentionRefused) as refused:
        retention_apply()
    assert refused.value.problems[1:] == [
        f"The campaign 'Spring sale' (id {campaign.pk}) counts 'purchase' events as conversions up to 30 days "
        "after each send, longer than PUSHDESK_RETENTION_EVENT_DAYS=14."
    ]
    assert event_retention_problems(event_days=30) == []
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.COMPLETED)
    assert event_retention_problems(event_days=14) == []


def test_retention_refuses_while_a_frequency_cap_counts_deliveries_further_back(db, settings):
    from delivery.models import DeliveryRules
    from operations.services import RetentionRefused

    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 7
    sent = _dispatch(10)  # a marketing send ten days ago
    DeliveryRules.objects.create(app=sent.app, frequency_cap=1, frequency_window_hours=720)  # one per 30 days
    with pytest.raises(RetentionRefused) as refused:
        retention_apply()
    message = str(refused.value)
    assert message.startswith(
        "Nothing was deleted: PUSHDESK_RETENTION_DELIVERY_DAYS=7 would delete deliveries these frequency caps count"
    )
    assert f"The app '{sent.app.name}' (id {sent.app_id}) caps marketing pushes at 1 per 720 hours" in message
    assert Delivery.objects.filter(dispatch=sent).count() == 3  # the cap still counts them

    out = io.StringIO()
    call_command("status", stdout=out)
    assert "retention  REFUSES TO RUN" in out.getvalue() and "1 per 720 hours" in out.getvalue()
    with pytest.raises(CommandError, match="PUSHDESK_RETENTION_DELIVERY_DAYS=7"):
        call_command("retention_apply", stdout=io.StringIO())

    settings.PUSHDESK_RETENTION_DELIVERY_DAYS = 30  # kept as long as the cap counts: it runs, and keeps them
    assert retention_apply()["deliveries"] == 0
    assert Delivery.objects.filter(dispatch=sent).count() == 3


def test_retention_deletes_idempotency_records_past_their_window_and_a_retry_after_it_is_a_new_call(
    live_trigger, api_key_for, manager_alice, pushsim, pushsim_app, settings, django_capture_on_commit_callbacks
):
    from campaigns.models import TriggerRequest
    from operations.services import idempotent_requests_delete
    from tests.factories import ProfileFactory

    trigger_client = api_key_for(manager_alice, scopes=["trigger"])
    url = f"/api/v1/campaigns/{live_trigger.pk}/trigger/"

    now = timezone.now()
    DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=pushsim_app, platform="ios")
    body = {"recipients": [{"external_id": "zoe"}]}
    with django_capture_on_commit_callbacks(execute=True):
        first = trigger_client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert first.status_code == 202, first.content[:300]
    key = manager_alice.api_keys.get()

    def record(name, *, days_ago, finished):
        return TriggerRequest.objects.create(
            api_key=key,
            user=key.user,
            idempotency_key=name,
            campaign=live_trigger,
            body_hash="-",
            finished=finished,
            created_at=now - dt.timedelta(days=days_ago),
        )

    TriggerRequest.objects.filter(idempotency_key="old").update(created_at=now - dt.timedelta(days=31))
    record("abandoned", days_ago=31, finished=False)  # its request died long ago
    record("recent", days_ago=1, finished=True)
    record("running", days_ago=0, finished=False)  # claimed just now, in progress
    settings.PUSHDESK_RETENTION_IDEMPOTENCY_DAYS = 30

    assert retention_apply()["trigger_requests"] == 2
    assert set(TriggerRequest.objects.values_list("idempotency_key", flat=True)) == {"recent", "running"}
    with django_capture_on_commit_callbacks(execute=True):
        again = trigger_client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert again.status_code == 202 and again.json() != first.json()  # a new call, not a replay
    assert Delivery.objects.count() == 2

    # However short the window, a claim still in progress stays.
    idempotent_requests_delete(TriggerRequest, before=timezone.now() + dt.timedelta(days=1))
    assert list(TriggerRequest.objects.values_list("idempotency_key", flat=True)) == ["running"]


@pytest.mark.embedded
def test_retention_deletes_events_calls_idempotency_records_as_the_triggers_and_the_command_says_so(
    manager_alice, api_key_for, settings
):
    """The events API's Idempotency-Key records go after the same PUSHDESK_RETENTION_IDEMPOTENCY_DAYS:
    finished or abandoned ones past it, never one in progress; a retry after that stores the events again."""
    from audiences.models import Event, EventBulkRequest
    from operations.services import idempotent_requests_delete

    client = api_key_for(manager_alice, scopes=["ingest"])
    body = {"events": [{"external_id": "zoe", "name": "app_open", "occurred_at": "2026-06-01T10:00:00Z"}]}
    first = client.post("/api/v1/events/bulk/", body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert first.status_code == 200, first.content[:300]
    key, now = manager_alice.api_keys.get(), timezone.now()
    for name, days_ago, finished in (("abandoned", 31, False), ("recent", 1, True), ("running", 0, False)):
        EventBulkRequest.objects.create(
            api_key=key,
            user=key.user,
            idempotency_key=name,
            body_hash="-",
            finished=finished,
            created_at=now - dt.timedelta(days=days_ago),
        )
    EventBulkRequest.objects.filter(idempotency_key="old").update(created_at=now - dt.timedelta(days=31))
    settings.PUSHDESK_RETENTION_IDEMPOTENCY_DAYS = 30

    out = io.StringIO()
    call_command("retention_apply", stdout=out)
    assert (
        "Idempotency-Key records of 0 trigger calls and 2 events calls (claimed more than 30 days ago)"
        in out.getvalue()
    )
    assert AuditEvent.objects.get(action="retention_applied").summary["event_requests"] == 2
    assert set(EventBulkRequest.objects.values_list("idempotency_key", flat=True)) == {"recent", "running"}
    again = client.post("/api/v1/events/bulk/", body, format="json", HTTP_IDEMPOTENCY_KEY="old")
    assert again.status_code == 200 and not again.has_header("Idempotent-Replayed")
    assert Event.objects.count() == 2  # a new call, not a replay

    idempotent_requests_delete(EventBulkRequest, before=timezone.now() + dt.timedelta(days=1))
    assert list(EventBulkRequest.objects.values_list("idempotency_key", flat=True)) == ["running"]
    settings.PUSHDESK_RETENTION_IDEMPOTENCY_DAYS = 0
    assert retention_apply()["event_requests"] == 0


def test_retention_keeps_deleted_phones_token_digests_only_while_a_winner_test_may_need_them(db, admin_erin):
    """A deleted device's tombstone matters to a winner sample made before the deletion, until its
    rest is resolved: retention deletes those older than the oldest such sample, and all of them
    once no test waits for its rest."""
    from campaigns.models import WinnerTest
    from campaigns.services.lifecycle import campaign_create
    from delivery.models import DeviceTombstone
    from tests.factories import PushContentFactory

    app = AppFactory()
    campaign = campaign_create(
        by=admin_erin, name="Spring test", app=app, kind="api_triggered", content=PushContentFactory(app=app)
    )
    sample = Dispatch.objects.create(
        app=app, kind="campaign", source_id=campaign.pk, content_spec={}, status="done", sample={"part": "sample"}
    )
    Dispatch.objects.filter(pk=sample.pk).update(created_at=NOW - dt.timedelta(days=3))
    test = WinnerTest.objects.create(
        campaign=campaign, version=1, fingerprint="-", settings={}, sample_dispatch=sample, due_at=NOW
    )
    for device_id, days_ago in ((1, 10), (2, 4), (3, 2), (4, 0)):
        DeviceTombstone.objects.create(
            app=app, token_digest="0" * 64, device_id=device_id, deleted_at=NOW - dt.timedelta(days=days_ago)
        )

    assert retention_apply(now=NOW)["device_tombstones"] == 2
    assert set(DeviceTombstone.objects.values_list("device_id", flat=True)) == {3, 4}
    # The pick made the rest and its dispatch is still resolving: still needed.
    rest = Dispatch.objects.create(app=app, kind="campaign", source_id=campaign.pk, content_spec={})
    WinnerTest.objects.filter(pk=test.pk).update(outcome="winner", remainder_dispatch=rest)
    assert retention_apply(now=NOW)["device_tombstones"] == 0
    Dispatch.objects.filter(pk=rest.pk).update(status="sending")
    assert retention_apply(now=NOW)["device_tombstones"] == 2
    assert not DeviceTombstone.objects.exists()
    assert AuditEvent.objects.filter(action="retention_applied").latest("pk").summary["device_tombstones"] == 2


def test_the_admin_forms_used_tokens_go_once_no_token_that_old_is_taken(manager_alice):
    """The one-time tokens of the forms that show a secret once (``accounts.form_tokens``) were kept
    forever: a row each, past the day after which a form sent with its token is drawn again anyway."""
    from accounts.form_tokens import FORM_TOKEN_MAX_AGE
    from accounts.models import FormTokenUse

    for token, age in (("old", FORM_TOKEN_MAX_AGE + dt.timedelta(minutes=1)), ("recent", dt.timedelta(hours=1))):
        FormTokenUse.objects.create(token=token, user=manager_alice, purpose="api_key_create", used_at=NOW - age)
    assert retention_apply(now=NOW)["form_tokens"] == 1
    assert list(FormTokenUse.objects.values_list("token", flat=True)) == ["recent"]
    assert AuditEvent.objects.filter(action="retention_applied").latest("pk").summary["form_tokens"] == 1
