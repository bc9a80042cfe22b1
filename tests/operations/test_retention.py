"""Retention: old deliveries go, their dispatch's counters stay; audit events stay append-only,
and only retention may remove those more than a year old."""

import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.services import audit
from delivery.models import Delivery, Dispatch
from operations.services import retention_apply
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
