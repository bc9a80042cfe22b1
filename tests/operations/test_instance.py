"""The instance guard: a copy of another instance's database says so, and sends nothing until claimed."""

import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.utils import timezone

from accounts.models import AuditEvent
from operations.instance import InstanceMismatch, ensure_instance_claimed, instance_problem
from operations.models import Instance


@pytest.fixture
def restored_copy(db):
    """The database of another deployment, as after a restore: it records that deployment's name."""
    Instance.objects.filter(pk=1).update(name="production-eu")


def test_the_first_migrate_records_this_instance(db, settings):
    assert Instance.objects.get().name == settings.PUSHDESK_INSTANCE
    assert instance_problem() is None
    ensure_instance_claimed(action="send")


def test_a_copy_of_another_instance_refuses_to_send_and_logs_why(restored_copy, caplog):
    with pytest.raises(InstanceMismatch) as refused:
        ensure_instance_claimed(action="send")
    assert "production-eu" in str(refused.value)
    assert "refused to send" in caplog.text and "instance_claim" in caplog.text


def test_the_admin_banner_says_sending_is_off_on_a_copy(restored_copy, client, admin_erin, viewer_carol):
    for user in (admin_erin, viewer_carol):
        client.force_login(user)
        page = client.get("/admin/")
        assert page.status_code == 200
        assert 'id="instance-problem"' in page.text
        assert "production-eu" in page.text


def test_no_banner_on_the_instance_s_own_database(db, client, admin_erin):
    client.force_login(admin_erin)
    assert 'id="instance-problem"' not in client.get("/admin/").text


def test_instance_claim_records_this_instance_and_audits_it(restored_copy, settings):
    out = io.StringIO()
    call_command("instance_claim", "--yes", stdout=out)
    assert Instance.objects.get().name == settings.PUSHDESK_INSTANCE
    assert instance_problem() is None
    assert "production-eu" in out.getvalue()
    event = AuditEvent.objects.get(action="instance_claimed")
    assert event.summary["previous"] == "production-eu"


def test_instance_claim_without_yes_asks_and_fails_changing_nothing_when_refused(restored_copy, monkeypatch):
    """A 'no' ends non-zero, as the claim did not happen: a script tells it from a claim."""
    from django.core.management import CommandError

    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    out = io.StringIO()
    with pytest.raises(CommandError, match=r"^Nothing changed\.$"):
        call_command("instance_claim", stdout=out)
    assert Instance.objects.get().name == "production-eu"
    assert "Nothing changed" not in out.getvalue()


def test_instance_claim_without_yes_and_without_a_terminal_changes_nothing_and_says_to_use_yes(
    restored_copy, monkeypatch
):
    from django.core.management import CommandError

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # run from a script: no one to answer
    with pytest.raises(CommandError, match="--yes"):
        call_command("instance_claim", stdout=io.StringIO())
    assert Instance.objects.get().name == "production-eu"


def test_instance_claim_voids_unfinished_dispatches_and_due_occurrences(restored_copy, make_campaign, approve):
    from campaigns.models import Campaign, Occurrence
    from delivery.models import Delivery, Dispatch
    from tests.factories import DeviceFactory

    now = timezone.now()
    campaign = approve(
        make_campaign(
            schedule_kind="recurring",
            send_at=now - dt.timedelta(days=2, minutes=5),
            recurrence="daily",
            missed_window_minutes=600,
        ),
        now=now - dt.timedelta(days=3),
    )
    assert campaign.next_occurrence_at < now
    dispatch = Dispatch.objects.create(
        app=campaign.app, kind="campaign", source_id=campaign.pk, content_spec={}, status="sending", total=3
    )
    devices = DeviceFactory.create_batch(3)
    Delivery.objects.create(dispatch=dispatch, device=devices[0], status="queued")
    Delivery.objects.create(dispatch=dispatch, device=devices[1], status="queued")
    Delivery.objects.create(dispatch=dispatch, device=devices[2], status="sending")

    call_command("instance_claim", "--yes", stdout=io.StringIO())

    dispatch.refresh_from_db()
    assert dispatch.status == "stopped" and "claimed" in dispatch.error
    assert (dispatch.skipped, dispatch.unknown) == (2, 1)
    assert set(Delivery.objects.values_list("status", "reason")) == {
        ("skipped", "voided:instance_claim"),
        ("unknown", "voided:instance_claim"),
    }
    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.next_occurrence_at > now
    assert Occurrence.objects.filter(campaign=campaign, outcome="skipped_missed").count() == 3


def test_a_claim_while_redis_is_down_says_the_queue_was_not_purged_and_purge_queue_does_it_later(
    restored_copy, monkeypatch, settings
):
    from django.core.management.base import CommandError
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    from tests.processes import free_port

    if "redis" not in settings.Q_CLUSTER:
        pytest.skip("the queue is the database here: the claim purges it in its transaction")
    broker = get_broker()
    broker.purge_queue()
    broker.enqueue("a task the original queued")
    up = Conf.REDIS
    monkeypatch.setattr(Conf, "REDIS", f"redis://:hunter2@127.0.0.1:{free_port()}/0")

    with pytest.raises(CommandError) as failed:
        call_command("instance_claim", "--yes", stdout=io.StringIO())
    message = str(failed.value)
    assert "claim is made" in message and "instance_claim --purge-queue" in message
    assert "\n" not in message and "hunter2" not in message
    assert instance_problem() is None  # claimed all the same
    out = io.StringIO()
    call_command("instance_claim", stdout=out)
    assert "nothing to do" in out.getvalue()
    with pytest.raises(CommandError, match="Redis does not answer"):
        call_command("instance_claim", "--purge-queue", stdout=io.StringIO())
    assert broker.queue_size() == 1

    monkeypatch.setattr(Conf, "REDIS", up)
    out = io.StringIO()
    call_command("instance_claim", "--purge-queue", stdout=out)
    assert "1 tasks dropped" in out.getvalue()
    assert broker.queue_size() == 0


def test_an_unclaimed_copys_watchdog_says_why_once_then_stays_quiet_until_it_changes(restored_copy, caplog):
    from delivery.tasks import dispatches_watch_task

    def said():
        lines = [r.getMessage() for r in caplog.records if r.name == "pushdesk.instance"]
        caplog.clear()
        return lines

    for _minute in range(3):  # the beat runs it every minute, on whichever worker
        assert dispatches_watch_task() == []
    lines = said()
    assert len(lines) == 1, lines  # once, not twice a minute (its dispatches' pass and its streams')
    assert "refused to run the delivery watchdog" in lines[0] and "production-eu" in lines[0]

    Instance.objects.filter(pk=1).update(name="staging-eu")  # another copy: a new problem, said
    dispatches_watch_task()
    dispatches_watch_task()
    lines = said()
    assert len(lines) == 1 and "staging-eu" in lines[0], lines

    call_command("instance_claim", "--yes", stdout=io.StringIO())
    said()
    dispatches_watch_task()
    assert said() == []  # claimed: nothing refused
    Instance.objects.filter(pk=1).update(name="staging-eu")  # restored again after the claim: said again
    dispatches_watch_task()
    lines = said()
    assert len(lines) == 1 and "staging-eu" in lines[0], lines


def test_instance_claim_moves_a_schedule_on_by_its_approved_version_not_a_pending_edit(
    restored_copy, make_campaign, approve
):
    """A revision waiting for approval moved the daily time and turned local time on: the next send
    the claim sets is the approved schedule's, and the voided occurrences read as it sent them."""
    from campaigns.models import Campaign, Occurrence

    now = timezone.now().replace(second=0, microsecond=0)
    send_at = now - dt.timedelta(days=2, minutes=5)
    campaign = approve(
        make_campaign(schedule_kind="recurring", send_at=send_at, recurrence="daily", missed_window_minutes=600),
        now=now - dt.timedelta(days=3),
    )
    Campaign.objects.filter(pk=campaign.pk).update(send_at=send_at + dt.timedelta(hours=3), at_local_time=True)
    assert Campaign.objects.get(pk=campaign.pk).has_pending_revision

    call_command("instance_claim", "--yes", stdout=io.StringIO())

    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.next_occurrence_at == send_at + dt.timedelta(days=3)  # the approved time of day, tomorrow
    voided = Occurrence.objects.filter(campaign=campaign).order_by("due_at")
    assert [o.due_at for o in voided] == [send_at + dt.timedelta(days=n) for n in range(3)]
    assert {(o.outcome, o.at_local_time) for o in voided} == {("skipped_missed", False)}
