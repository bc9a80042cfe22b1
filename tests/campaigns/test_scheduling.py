"""Occurrences fire exactly once: with an injectable clock, racing workers, and after downtime."""

import datetime as dt
import re
import socket
import threading
from html import unescape

import pytest
from django.db import connection, connections
from django.utils import timezone

from campaigns.models import Campaign, Occurrence
from campaigns.services.lifecycle import campaign_approve, campaign_submit, campaign_update
from campaigns.services.scheduling import campaign_fire_due, campaigns_tick
from delivery.models import Dispatch
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def approve(manager_alice, approver_bob):
    def run(campaign, now=T0 - dt.timedelta(hours=1)):
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=now)
        return Campaign.objects.get(pk=campaign.pk)

    return run


def test_an_occurrence_fires_once_at_its_time(make_campaign, approve):
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    assert campaigns_tick(now=T0 - dt.timedelta(seconds=1))["occurrences"] == 0
    assert campaigns_tick(now=T0 + dt.timedelta(seconds=20))["occurrences"] == 1
    assert campaigns_tick(now=T0 + dt.timedelta(seconds=80))["occurrences"] == 0
    occurrence = Occurrence.objects.get()
    assert occurrence.outcome == "sent"
    assert occurrence.dispatch.kind == "campaign"
    assert occurrence.dispatch.source_id == campaign.pk
    assert occurrence.dispatch.content_spec == campaign.content.spec()


def test_send_now_fires_on_approval(make_campaign, manager_alice, approver_bob, django_capture_on_commit_callbacks):
    campaign = make_campaign(schedule_kind="now")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    with django_capture_on_commit_callbacks(execute=True):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    assert Occurrence.objects.filter(campaign=campaign, outcome="sent").count() == 1
    assert Dispatch.objects.filter(source_id=campaign.pk, kind="campaign").count() == 1


def test_recurring_campaign_moves_to_its_next_occurrence(make_campaign, approve):
    campaign = approve(
        make_campaign(
            schedule_kind="recurring", send_at=T0, recurrence="daily", ends_at=T0 + dt.timedelta(days=1, hours=1)
        )
    )
    assert campaign.status == "scheduled"
    campaigns_tick(now=T0)
    campaign.refresh_from_db()
    assert campaign.status == "live"
    assert campaign.next_occurrence_at == T0 + dt.timedelta(days=1)
    campaigns_tick(now=T0 + dt.timedelta(days=1))
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at is None
    assert Occurrence.objects.filter(campaign=campaign).count() == 2


def test_missed_occurrences_during_downtime_send_the_latest_once(make_campaign, approve):
    campaign = approve(
        make_campaign(schedule_kind="recurring", send_at=T0, recurrence="daily", missed_window_minutes=120)
    )
    # Down for three days; back one hour after the fourth occurrence.
    fired = campaign_fire_due(campaign_id=campaign.pk, now=T0 + dt.timedelta(days=3, hours=1))
    assert [o.outcome for o in fired] == ["skipped_missed", "skipped_missed", "skipped_missed", "sent_late"]
    assert fired[-1].due_at == T0 + dt.timedelta(days=3)
    assert fired[-1].note == "sent 60 minutes late, within its window of 120 minutes"
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at == T0 + dt.timedelta(days=4)


def test_an_occurrence_older_than_the_window_is_skipped_and_said(make_campaign, approve):
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0, missed_window_minutes=30))
    fired = campaign_fire_due(campaign_id=campaign.pk, now=T0 + dt.timedelta(hours=2))
    assert [o.outcome for o in fired] == ["skipped_missed"]
    assert "window" in fired[0].note
    assert not Dispatch.objects.exists()


def test_a_window_changed_on_a_live_campaign_waits_for_its_approval(
    make_campaign, approve, manager_alice, approver_bob
):
    # The window decides whether a missed occurrence goes out late or not at all: an approver signs
    # it off. Until the revision is approved, the approved window judges a late send.
    campaign = approve(make_campaign(schedule_kind="recurring", send_at=T0, recurrence="daily"))
    campaign_update(campaign_id=campaign.pk, by=manager_alice, missed_window_minutes=240)
    campaign.refresh_from_db()
    assert campaign.has_pending_revision
    assert campaign.approved().missed_window_minutes == 60
    fired = campaign_fire_due(campaign_id=campaign.pk, now=T0 + dt.timedelta(hours=3))
    assert [o.outcome for o in fired] == ["skipped_missed"]
    assert not Dispatch.objects.exists()
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 + dt.timedelta(hours=4))
    campaign.refresh_from_db()
    assert not campaign.has_pending_revision and campaign.approved().missed_window_minutes == 240
    fired = campaign_fire_due(campaign_id=campaign.pk, now=T0 + dt.timedelta(days=1, hours=3))
    assert [o.outcome for o in fired] == ["sent_late"]


def test_a_campaign_approved_before_the_window_was_covered_keeps_its_approval(make_campaign, approve, manager_alice):
    """Upgrading keeps what was approved: a version approved when the fingerprint left the window out
    is still the campaign as it stands, and sends; a change of its window is then a revision."""
    campaign = approve(
        make_campaign(schedule_kind="recurring", send_at=T0, recurrence="daily", missed_window_minutes=240)
    )
    legacy = campaign.fingerprint(missed_window=False)
    version = {k: v for k, v in campaign.approved_version.items() if k != "covers_missed_window"}
    Campaign.objects.filter(pk=campaign.pk).update(
        approved_version={**version, "fingerprint": legacy}, approved_fingerprint=legacy
    )
    campaign.refresh_from_db()
    assert not campaign.has_pending_revision
    assert [o.outcome for o in campaign_fire_due(campaign_id=campaign.pk, now=T0 + dt.timedelta(hours=3))] == [
        "sent_late"
    ]
    campaign_update(campaign_id=campaign.pk, by=manager_alice, missed_window_minutes=30)
    campaign.refresh_from_db()
    assert campaign.has_pending_revision and campaign.approved().missed_window_minutes == 240


def test_a_request_submitted_before_the_window_was_covered_is_approved_as_it_stands(
    make_campaign, manager_alice, approver_bob
):
    """A request waiting at the upgrade holds a fingerprint without the window: approving it was
    refused as changed since it was submitted. Its approval now covers the window it shows."""
    from accounts.models import ApprovalRequest

    campaign = make_campaign(schedule_kind="recurring", send_at=T0, recurrence="daily", missed_window_minutes=240)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign.refresh_from_db()
    ApprovalRequest.objects.filter(status="pending").update(fingerprint=campaign.fingerprint(missed_window=False))
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 - dt.timedelta(hours=1))
    campaign.refresh_from_db()
    assert campaign.approved().snapshot["covers_missed_window"] and not campaign.has_pending_revision
    assert campaign.approved().missed_window_minutes == 240


def test_content_edited_after_approval_sends_the_approved_content(make_campaign, approve, content):
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    approved_spec = content.spec()
    content.body = "Edited after approval"
    content.save()
    fired = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    assert [o.outcome for o in fired] == ["sent"]
    assert fired[0].dispatch.content_spec == approved_spec
    campaign.refresh_from_db()
    assert campaign.status == "live" and campaign.has_pending_revision


def test_an_approved_content_the_settings_no_longer_allow_is_refused_and_the_tick_goes_on(
    make_campaign, approve, content, settings
):
    # The deep link's scheme was allowed when the content was approved; the operator has since
    # taken it off the list. That occurrence is refused with the reason, and the campaigns due
    # after it still fire.
    content.tap_action, content.tap_url = "deep_link", "shop://sale"
    content.save()
    settings.PUSHDESK_DEEP_LINK_SCHEMES = ["https", "shop"]
    stale = approve(make_campaign(schedule_kind="at", send_at=T0 - dt.timedelta(minutes=1)))
    fine = approve(
        make_campaign(name="Fine", content=PushContentFactory(app=content.app), schedule_kind="at", send_at=T0)
    )
    settings.PUSHDESK_DEEP_LINK_SCHEMES = ["https"]

    assert campaigns_tick(now=T0 + dt.timedelta(seconds=20))["occurrences"] == 2
    refused = Occurrence.objects.get(campaign=stale)
    assert refused.outcome == "refused" and "URL scheme 'shop' is not allowed" in refused.note
    assert Occurrence.objects.get(campaign=fine).outcome == "sent"
    stale.refresh_from_db()
    assert stale.status == "failed" and stale.next_occurrence_at is None  # nothing of it was sent


def test_segment_rules_edited_after_approval_are_refused_at_send_time(make_campaign, approve, segment, manager_alice):
    from audiences.services.segments import segment_update

    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    segment_update(segment_id=segment.pk, by=manager_alice, rules={"all": [{"field": "locale", "op": "not_exists"}]})
    fired = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    assert [o.outcome for o in fired] == ["refused"]
    campaign.refresh_from_db()
    assert campaign.status == "scheduled" and campaign.has_pending_revision  # on the air, awaiting approval
    assert not Dispatch.objects.exists()


def test_a_nested_segment_edited_after_approval_is_refused_at_send_time(make_campaign, approve, segment, manager_alice):
    from accounts.services import access_grant
    from audiences.services.segments import segment_update
    from tests.factories import SegmentFactory

    buyers = SegmentFactory(name="Buyers", created_by=manager_alice)
    access_grant(obj=buyers, to=manager_alice, by=None)
    segment_update(segment_id=segment.pk, by=manager_alice, rules={"all": [{"segment": buyers.pk, "member": True}]})
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    segment_update(segment_id=buyers.pk, by=manager_alice, rules={"all": [{"field": "locale", "op": "not_exists"}]})
    assert [o.outcome for o in campaign_fire_due(campaign_id=campaign.pk, now=T0)] == ["refused"]
    assert not Dispatch.objects.exists()


def test_static_members_changed_after_approval_are_refused_at_send_time(make_campaign, approve, manager_alice):
    from accounts.services import access_grant
    from audiences.services.segments import segment_members_change
    from tests.factories import SegmentFactory, SegmentMemberFactory

    vips = SegmentFactory(name="VIPs", kind="static", rules=None, created_by=manager_alice)
    access_grant(obj=vips, to=manager_alice, by=None)
    SegmentMemberFactory(segment=vips, profile=ProfileFactory(external_id="vip-1"))
    ProfileFactory(external_id="vip-2")
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0, segment=vips))
    segment_members_change(segment_id=vips.pk, by=manager_alice, add=["vip-2"])
    assert [o.outcome for o in campaign_fire_due(campaign_id=campaign.pk, now=T0)] == ["refused"]
    assert not Dispatch.objects.exists()


def test_members_added_after_the_occurrence_fired_and_before_its_audience_is_read_get_nothing(
    make_campaign, approve, team, manager_alice
):
    """The gate reads the audience's definition when the occurrence makes its dispatch; the rows are
    written later, by the prepare task (a busy queue, or the watchdog queueing it again after a
    worker died). A list changed in between is not what was approved: the send is refused then,
    saying why, and nobody on the list gets it."""
    from audiences.services.segments import segment_members_change
    from delivery.models import Delivery
    from delivery.services.dispatches import dispatch_prepare

    vips, _ = _kept_list(team, manager_alice, ["vip-1"])
    DeviceFactory(profile=ProfileFactory(external_id="vip-2", attributes={}), app=team)
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0, segment=vips))
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    assert occurrence.outcome == "sent"
    segment_members_change(segment_id=vips.pk, by=manager_alice, add=["vip-2"])
    dispatch_prepare(dispatch_id=occurrence.dispatch.pk)
    assert not Delivery.objects.filter(dispatch=occurrence.dispatch).exists()
    dispatch = Dispatch.objects.get(pk=occurrence.dispatch.pk)
    assert dispatch.status == "failed"
    assert "defined otherwise than when it was approved" in dispatch.error


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("nested", [False, True], ids=["the list", "a segment of the list"])
def test_members_added_while_the_audience_is_read_wait_for_the_rows_and_get_nothing(
    make_campaign, approve, team, manager_alice, monkeypatch, nested
):
    """The prepare task checks the audience's definition, then writes the rows from it: a list
    changed between the two (committed by another session once the check had passed) was not
    approved. The segments it reads are held from the check until the rows are written, so the
    change waits for them and its member gets nothing."""
    from audiences.services.segments import segment_members_change
    from delivery.services import dispatches
    from tests.locks import eventually

    vips, (first,) = _kept_list(team, manager_alice, ["vip-1"])
    DeviceFactory(profile=ProfileFactory(external_id="vip-2", attributes={}), app=team)
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0, segment=_audience(vips, nested, manager_alice)))
    check, refused = dispatches._AUDIENCE_CHECKS["campaign"]
    added = threading.Event()

    def add() -> None:
        try:
            segment_members_change(segment_id=vips.pk, by=manager_alice, add=["vip-2"])
            added.set()
        finally:
            connections.close_all()

    def lock_waited() -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return cursor.fetchone()[0] > 0

    adding = []

    def checked_then_changed(dispatch) -> None:
        check(dispatch)
        adding.append(threading.Thread(target=add))
        adding[0].start()
        assert eventually(lambda: added.is_set() or lock_waited())

    monkeypatch.setitem(dispatches._AUDIENCE_CHECKS, "campaign", (checked_then_changed, refused))
    try:
        (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)  # its prepare task runs on commit
        assert _recipients(occurrence) == {first.pk}
    finally:
        for thread in adding:
            thread.join(30)
    assert added.is_set()  # once the rows were written


def test_an_occurrence_whose_audience_is_refused_when_read_says_so_and_not_sent(
    client, make_campaign, approve, team, manager_alice
):
    """The occurrence read 'Send started' when its dispatch was made; refused by the prepare task, nothing
    went: its row says so, with the reason, on the campaign's page and in the list of occurrences,
    and the campaign, whose only send it was, ends failed."""
    from accounts.models import AuditEvent
    from audiences.services.segments import segment_members_change
    from delivery.services.dispatches import dispatch_prepare

    vips, _ = _kept_list(team, manager_alice, ["vip-1"])
    ProfileFactory(external_id="vip-2", attributes={})
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0, segment=vips))
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0 + dt.timedelta(minutes=10))
    assert occurrence.outcome == "sent_late"
    segment_members_change(segment_id=vips.pk, by=manager_alice, add=["vip-2"])
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)

    occurrence.refresh_from_db()
    assert occurrence.outcome == "refused"
    assert occurrence.note.startswith("Refused when its audience was read: The audience of 'Spring sale'")
    assert "defined otherwise than when it was approved" in occurrence.note
    assert occurrence.dispatch_id is not None  # the failed dispatch, saying the same
    refused = AuditEvent.objects.get(action="campaign_occurrence_refused")
    assert refused.summary["due_at"] == T0.isoformat() and refused.summary["note"] == occurrence.note

    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    listed = client.get(
        f"/admin/campaigns/occurrence/?campaign__id__exact={campaign.pk}&outcome__exact=refused"
    ).content.decode()
    for html in (page, listed):
        assert _cells(html, "outcome") == ["Refused by the gate"]
        (note,) = _cells(html, "note")
        assert note.startswith("Refused when its audience was read")
    campaigns_tick(now=T0 + dt.timedelta(minutes=11))
    campaign.refresh_from_db()
    assert campaign.status == "failed"
    failed = AuditEvent.objects.get(action="campaign_failed")
    assert (
        failed.summary["reason"]
        == f"Every send of it failed: its last occurrence was refused by the gate: {occurrence.note}"
    )


def _cells(html: str, field: str) -> list[str]:
    """The text of an admin page's cells of ``field`` (a list's or an inline's), in their order."""
    found = re.findall(rf'<t[dh] class="field-{field}"[^>]*>(.*?)</t[dh]>', html, flags=re.S)
    return [unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cell))).strip() for cell in found]


def _kept_list(team, manager_alice, names):
    """A static segment 'VIPs' of profiles named ``names``, each with a phone on ``team``: (segment, profiles)."""
    from accounts.services import access_grant
    from tests.factories import SegmentFactory, SegmentMemberFactory

    vips = SegmentFactory(name="VIPs", kind="static", rules=None, created_by=manager_alice)
    access_grant(obj=vips, to=manager_alice, by=None)
    profiles = [ProfileFactory(external_id=name, attributes={}) for name in names]
    for profile in profiles:
        SegmentMemberFactory(segment=vips, profile=profile)
        DeviceFactory(profile=profile, app=team)
    return vips, profiles


def _audience(vips, nested, manager_alice):
    """The kept list itself, or a rules segment of its members (the list read through another)."""
    if not nested:
        return vips
    from accounts.services import access_grant
    from tests.factories import SegmentFactory

    audience = SegmentFactory(
        name="VIPs, read through rules", rules={"all": [{"segment": vips.pk, "member": True}]}, created_by=manager_alice
    )
    access_grant(obj=audience, to=manager_alice, by=None)
    return audience


def _recipients(occurrence) -> set[int]:
    from delivery.models import Delivery
    from delivery.services.dispatches import dispatch_prepare

    dispatch_prepare(dispatch_id=occurrence.dispatch.pk)
    return set(Delivery.objects.filter(dispatch=occurrence.dispatch).values_list("profile_id", flat=True))


@pytest.mark.parametrize("nested", [False, True], ids=["the list", "a segment of the list"])
def test_erasing_a_member_of_an_approved_kept_list_leaves_the_approval_and_sends_to_the_others(
    make_campaign, approve, team, manager_alice, nested
):
    """Erasing a profile (``profiles_delete``) removes its memberships, and with them changed the
    list's member count (and here its newest member) that the approval's fingerprint holds: every
    campaign on the list was refused as defined otherwise until approved again. An erasure chooses
    no one to target: the approval stands, the others get the push, the erased profiles nothing."""
    from audiences.services.profiles import profiles_delete

    vips, (kept, erased, newest) = _kept_list(team, manager_alice, ["vip-1", "vip-2", "vip-3"])
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0, segment=_audience(vips, nested, manager_alice)))
    profiles_delete(profile_ids=[erased.pk, newest.pk], by=manager_alice)
    assert not Campaign.objects.get(pk=campaign.pk).has_pending_revision
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    assert occurrence.outcome == "sent"
    assert _recipients(occurrence) == {kept.pk}


@pytest.mark.parametrize(
    ("csv", "target", "outcome"),
    [
        (b"external_id\nvip-1\nvip-3\n", "add_to_segment", "refused"),  # one added
        (b"external_id\nvip-1\n", "replace_segment", "refused"),  # one removed
        (b"external_id\nvip-1\nvip-2\n", "add_to_segment", "sent"),  # the same members: nothing changed
    ],
    ids=["an add", "a replace", "the same list again"],
)
def test_an_import_into_an_approved_kept_list_after_an_erasure_still_refuses_its_send(
    make_campaign,
    approve,
    team,
    manager_alice,
    settings,
    tmp_path,
    django_capture_on_commit_callbacks,
    csv,
    target,
    outcome,
):
    """An import changing the list's members is a choice of whom to target: refused until approved
    again, an erasure before it or not. One naming the members it has changes nothing."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from audiences.services.imports import import_create
    from audiences.services.profiles import profiles_delete

    settings.MEDIA_ROOT = tmp_path / "media"
    vips, (_, _, erased) = _kept_list(team, manager_alice, ["vip-1", "vip-2", "gone"])
    ProfileFactory(external_id="vip-3", attributes={})
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0, segment=vips))
    profiles_delete(profile_ids=[erased.pk], by=manager_alice)
    upload = SimpleUploadedFile("vips.csv", csv, content_type="text/csv")
    with django_capture_on_commit_callbacks(execute=True):
        import_create(upload=upload, by=manager_alice, target=target, segment_id=vips.pk)
    assert [o.outcome for o in campaign_fire_due(campaign_id=campaign.pk, now=T0)] == [outcome]


def test_an_approval_holding_a_kept_lists_member_count_stays_valid_after_an_erasure(
    make_campaign, approve, team, manager_alice
):
    """Approvals made before erasures were told apart hold a kept list as its kind, rules and
    [member count, newest member id]. The list as it stands reads the same until a member is added
    or removed, so the upgrade voids none of them, and an erasure since leaves them standing."""
    import hashlib
    import json

    from audiences.services.profiles import profiles_delete

    vips, (kept, erased) = _kept_list(team, manager_alice, ["vip-1", "vip-2"])
    before = {str(vips.pk): {"kind": "static", "rules": None, "members": [2, vips.members.latest("pk").pk]}}
    legacy = hashlib.sha256(json.dumps(before, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0, segment=vips))
    assert campaign.approved().snapshot["audience_fingerprint"] == legacy
    profiles_delete(profile_ids=[erased.pk], by=manager_alice)
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    assert occurrence.outcome == "sent"
    assert _recipients(occurrence) == {kept.pk}


def test_an_unchanged_audience_still_sends(make_campaign, approve, segment, manager_alice):
    from audiences.services.segments import segment_update

    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    segment_update(segment_id=segment.pk, by=manager_alice, name="Everyone, renamed")  # the name is not who
    assert [o.outcome for o in campaign_fire_due(campaign_id=campaign.pk, now=T0)] == ["sent"]


def test_edit_of_the_schedule_waits_for_its_approval(make_campaign, approve, manager_alice, approver_bob):
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0 + dt.timedelta(hours=1)))
    campaign_update(campaign_id=campaign.pk, by=manager_alice, send_at=T0 + dt.timedelta(hours=3))
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at == T0 + dt.timedelta(hours=1)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0)
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at == T0 + dt.timedelta(hours=3)
    assert campaigns_tick(now=T0 + dt.timedelta(hours=2))["occurrences"] == 0
    assert campaigns_tick(now=T0 + dt.timedelta(hours=3))["occurrences"] == 1


def _revise(campaign, manager, approver, *, now, **changes):
    campaign_update(campaign_id=campaign.pk, by=manager, **changes)
    campaign_submit(campaign_id=campaign.pk, by=manager)
    campaign_approve(campaign_id=campaign.pk, by=approver, now=now)
    return Campaign.objects.get(pk=campaign.pk)


def test_a_schedule_revision_approved_while_an_occurrence_is_due_still_sends_it_once(
    make_campaign, approve, manager_alice, approver_bob
):
    # Approved 30 seconds after 09:00, before the beat's next minute: the revision (a later end)
    # keeps 09:00, which is due and was not sent yet.
    campaign = approve(make_campaign(schedule_kind="recurring", send_at=T0, recurrence="daily"))
    campaign = _revise(
        campaign, manager_alice, approver_bob, now=T0 + dt.timedelta(seconds=30), ends_at=T0 + dt.timedelta(days=30)
    )
    assert campaign.next_occurrence_at == T0
    campaigns_tick(now=T0 + dt.timedelta(minutes=1))
    campaigns_tick(now=T0 + dt.timedelta(minutes=2))
    assert list(Occurrence.objects.filter(campaign=campaign).values_list("due_at", "outcome")) == [(T0, "sent")]
    assert Dispatch.objects.filter(source_id=campaign.pk, kind="campaign").count() == 1
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at == T0 + dt.timedelta(days=1)


def test_a_weekly_revision_moving_its_day_while_one_is_due_says_that_one_was_not_sent(
    make_campaign, approve, manager_alice, approver_bob
):
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    monday = dt.datetime(2026, 11, 23, 9, 0, tzinfo=paris)
    campaign = approve(
        make_campaign(schedule_kind="recurring", send_at=monday, recurrence="weekly", time_zone="Europe/Paris"),
        now=monday - dt.timedelta(days=1),
    )
    # Approved at 09:00:30 on Monday, the revision sends on Tuesdays from tomorrow.
    campaign = _revise(
        campaign,
        manager_alice,
        approver_bob,
        now=monday + dt.timedelta(seconds=30),
        send_at=monday + dt.timedelta(days=1),
    )
    assert campaign.next_occurrence_at == monday + dt.timedelta(days=1)
    (skipped,) = Occurrence.objects.filter(campaign=campaign)
    assert (skipped.due_at, skipped.outcome, skipped.dispatch_id) == (monday, "skipped_missed", None)
    assert skipped.note == "not sent: version 2, approved before it was, has no send at that time"
    campaigns_tick(now=monday + dt.timedelta(minutes=1))
    assert not Dispatch.objects.filter(source_id=campaign.pk).exists()
    campaigns_tick(now=monday + dt.timedelta(days=1, seconds=10))
    assert list(Occurrence.objects.filter(campaign=campaign).order_by("due_at").values_list("due_at", "outcome")) == [
        (monday, "skipped_missed"),
        (monday + dt.timedelta(days=1), "sent"),
    ]
    assert Dispatch.objects.filter(source_id=campaign.pk, kind="campaign").count() == 1


def test_a_schedule_revision_approved_after_downtime_records_what_it_missed_once(
    make_campaign, approve, manager_alice, approver_bob
):
    # Down for three hours across 09:00: the revision keeps 09:00, now older than the window.
    campaign = approve(make_campaign(schedule_kind="recurring", send_at=T0, recurrence="daily"))
    campaign = _revise(
        campaign, manager_alice, approver_bob, now=T0 + dt.timedelta(hours=3), ends_at=T0 + dt.timedelta(days=30)
    )
    campaigns_tick(now=T0 + dt.timedelta(hours=3, minutes=1))
    (missed,) = Occurrence.objects.filter(campaign=campaign)
    assert (missed.due_at, missed.outcome) == (T0, "skipped_missed")
    assert missed.note == "missed by 180 minutes, more than its window of 60 minutes"
    assert not Dispatch.objects.filter(source_id=campaign.pk).exists()
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at == T0 + dt.timedelta(days=1)


def test_a_one_off_moved_while_due_is_sent_at_its_new_time_once(make_campaign, approve, manager_alice, approver_bob):
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    campaign = _revise(
        campaign, manager_alice, approver_bob, now=T0 + dt.timedelta(seconds=30), send_at=T0 + dt.timedelta(hours=2)
    )
    assert campaign.next_occurrence_at == T0 + dt.timedelta(hours=2)
    campaigns_tick(now=T0 + dt.timedelta(hours=2))
    assert list(Occurrence.objects.filter(campaign=campaign).order_by("due_at").values_list("due_at", "outcome")) == [
        (T0, "skipped_missed"),
        (T0 + dt.timedelta(hours=2), "sent"),
    ]
    assert Dispatch.objects.filter(source_id=campaign.pk, kind="campaign").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_fire_an_occurrence_once(make_campaign, approve):
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    barrier = threading.Barrier(4)
    results = []

    def worker():
        try:
            barrier.wait()
            results.append(len(campaign_fire_due(campaign_id=campaign.pk, now=T0 + dt.timedelta(seconds=5))))
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0, 0, 0, 1]
    assert Occurrence.objects.filter(campaign=campaign).count() == 1
    assert Dispatch.objects.filter(source_id=campaign.pk).count() == 1


def test_completed_when_nothing_is_left(make_campaign, approve, django_capture_on_commit_callbacks):
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    with django_capture_on_commit_callbacks(execute=True):
        campaigns_tick(now=T0)
    assert Dispatch.objects.get().status == "done"  # nobody in the audience has a device
    campaigns_tick(now=T0 + dt.timedelta(minutes=1))
    campaign.refresh_from_db()
    assert campaign.status == "completed"


def test_send_at_each_profiles_local_time(make_campaign, approve, team, segment):
    from zoneinfo import ZoneInfo

    from delivery.models import Delivery
    from delivery.services.dispatches import dispatch_prepare
    from tests.factories import DeviceFactory, ProfileFactory

    paris = ZoneInfo("Europe/Paris")
    day = (dt.datetime.now(paris) + dt.timedelta(days=3)).date()
    nine = dt.datetime.combine(day, dt.time(9), tzinfo=paris)
    tokyo, new_york, unknown = (
        ProfileFactory(timezone="Asia/Tokyo", attributes={}),
        ProfileFactory(timezone="America/New_York", attributes={}),
        ProfileFactory(timezone="", attributes={}),
    )
    for profile in (tokyo, new_york, unknown):
        DeviceFactory(profile=profile, app=team)
    segment.rules = {
        "all": [
            {
                "field": "external_id",
                "op": "in",
                "value": [tokyo.external_id, new_york.external_id, unknown.external_id],
            }
        ]
    }
    segment.save()
    campaign = approve(
        make_campaign(schedule_kind="at", send_at=nine, time_zone="Europe/Paris", at_local_time=True),
        now=dt.datetime.now(dt.UTC),
    )
    # It starts when UTC+14 reaches 09:00.
    assert campaign.next_occurrence_at == dt.datetime.combine(day, dt.time(9), tzinfo=dt.UTC) - dt.timedelta(hours=14)
    fired = campaign_fire_due(campaign_id=campaign.pk, now=campaign.next_occurrence_at)
    dispatch = fired[0].dispatch
    assert dispatch.local_time == f"{day.isoformat()}T09:00:00"
    dispatch_prepare(dispatch_id=dispatch.pk)
    when = {d.profile_id: d.next_attempt_at for d in Delivery.objects.filter(dispatch=dispatch)}
    assert when[tokyo.pk] == dt.datetime.combine(day, dt.time(9), tzinfo=ZoneInfo("Asia/Tokyo"))
    assert when[new_york.pk] == dt.datetime.combine(day, dt.time(9), tzinfo=ZoneInfo("America/New_York"))
    assert when[unknown.pk] == nine  # no time zone: the campaign's


def test_a_local_time_the_clocks_skip_in_a_profiles_zone_is_held_until_the_first_minute_after_the_jump(
    make_campaign, approve, team, segment
):
    """A daily send at 02:30 at each profile's local time: on the night Paris goes from 02:00 to 03:00,
    a profile in Paris gets it at 03:00, as a campaign in Paris's own zone sends then (not 03:30)."""
    from zoneinfo import ZoneInfo

    from delivery.models import Delivery
    from delivery.services.dispatches import dispatch_prepare

    paris = ZoneInfo("Europe/Paris")
    profiles = _local_profiles(team, segment, ["Europe/Paris", "America/New_York"])
    campaign = approve(
        make_campaign(
            schedule_kind="recurring",
            recurrence="daily",
            send_at=dt.datetime(2027, 3, 20, 2, 30, tzinfo=paris),
            time_zone="Europe/Paris",
            at_local_time=True,
        ),
        now=dt.datetime(2027, 3, 27, 12, 0, tzinfo=dt.UTC),
    )
    campaign_fire_due(campaign_id=campaign.pk, now=dt.datetime(2027, 3, 27, 12, 0, tzinfo=dt.UTC))  # the day before's
    began = dt.datetime(2027, 3, 28, 2, 30, tzinfo=ZoneInfo("Etc/GMT-14"))  # UTC+14 gets to the night's 02:30
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at == began
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=began)
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)
    when = {d.profile_id: d.next_attempt_at for d in Delivery.objects.filter(dispatch=occurrence.dispatch)}
    assert when[profiles["Europe/Paris"].pk] == dt.datetime(2027, 3, 28, 3, 0, tzinfo=paris)
    assert when[profiles["America/New_York"].pk] == dt.datetime(2027, 3, 28, 2, 30, tzinfo=ZoneInfo("America/New_York"))


def _local_profiles(team, segment, zones):
    """A profile with a phone in each of ``zones``, all in ``segment``; {zone: profile}."""
    profiles = {name: ProfileFactory(timezone=name, attributes={}) for name in zones}
    for profile in profiles.values():
        DeviceFactory(profile=profile, app=team)
    segment.rules = {"all": [{"field": "external_id", "op": "in", "value": [p.external_id for p in profiles.values()]}]}
    segment.save()
    return profiles


def test_local_time_approved_late_sends_to_the_zones_behind_and_skips_those_past_the_window(
    make_campaign, approve, team, segment
):
    """Approved after UTC+14 reached the time of day: the zones that have not reached it wait for it,
    those past it within the campaign's window get it now, those further past are skipped, saying why."""
    from zoneinfo import ZoneInfo

    from delivery.models import Delivery
    from delivery.services.dispatches import dispatch_prepare

    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    tokyo = ZoneInfo("Asia/Tokyo")
    wall = (now.astimezone(tokyo) - dt.timedelta(hours=3)).replace(tzinfo=None)  # Tokyo got there 3 hours ago
    send_at = wall.replace(tzinfo=ZoneInfo("Europe/Paris"))
    profiles = _local_profiles(team, segment, ["Asia/Tokyo", "Asia/Yangon", "America/New_York", "Etc/GMT-12"])
    campaign = approve(
        make_campaign(schedule_kind="at", send_at=send_at, time_zone="Europe/Paris", at_local_time=True), now=now
    )
    began = wall.replace(tzinfo=dt.UTC) - dt.timedelta(hours=14)  # UTC+14 got there 8 hours ago
    assert campaign.next_occurrence_at == began
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=now)
    # Approved after its time, no downtime: sent at the approval, saying which zones it skips.
    assert occurrence.outcome == "sent_at_approval", occurrence.note
    assert "more than 60 minutes are skipped (missed_local_time)" in occurrence.note
    assert occurrence.dispatch.local_late_minutes == 60
    dispatch_prepare(dispatch_id=occurrence.dispatch.pk)
    rows = {
        d.profile.timezone: d for d in Delivery.objects.filter(dispatch=occurrence.dispatch).select_related("profile")
    }
    for late in ("Asia/Tokyo", "Etc/GMT-12"):  # 3 and 6 hours past it
        assert (rows[late].status, rows[late].reason) == ("skipped", "missed_local_time")
    # Yangon (UTC+6:30) got there 30 minutes ago, within the window: sent now.
    assert rows["Asia/Yangon"].status == "queued"
    assert rows["Asia/Yangon"].next_attempt_at is None or rows["Asia/Yangon"].next_attempt_at <= now + dt.timedelta(
        minutes=1
    )
    # New York has not got there: it waits for its own 09:00 (whatever the time of day is).
    assert rows["America/New_York"].status == "queued"
    assert rows["America/New_York"].next_attempt_at == wall.replace(tzinfo=ZoneInfo("America/New_York"))
    assert Dispatch.objects.get(pk=occurrence.dispatch.pk).skipped == 2
    assert {row.profile_id for row in rows.values()} == {p.pk for p in profiles.values()}


def test_local_time_missed_in_every_zone_is_skipped_whole(make_campaign, approve, team, segment):
    """More than 26 hours and the window after UTC+14 got there, the last zone too is past it."""
    from zoneinfo import ZoneInfo

    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    paris = ZoneInfo("Europe/Paris")
    send_at = (now + dt.timedelta(days=2)).astimezone(paris)
    campaign = approve(
        make_campaign(schedule_kind="at", send_at=send_at, time_zone="Europe/Paris", at_local_time=True), now=now
    )
    began = campaign.next_occurrence_at
    late = began + dt.timedelta(hours=26, minutes=61)
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=late)
    assert occurrence.outcome == "skipped_missed"
    assert occurrence.note == "missed by 61 minutes, more than its window of 60 minutes in every time zone"
    # Within 26 hours and the window, it is still sent (to the zones behind).
    campaign2 = approve(
        make_campaign(
            name="Spring sale 2", schedule_kind="at", send_at=send_at, time_zone="Europe/Paris", at_local_time=True
        ),
        now=now,
    )
    (occurrence2,) = campaign_fire_due(campaign_id=campaign2.pk, now=began + dt.timedelta(hours=26, minutes=59))
    assert occurrence2.outcome == "sent_late"


def test_daily_local_time_approved_mid_day_starts_with_the_day_under_way(make_campaign, approve):
    """A daily send at 09:00 local time, approved when UTC+14 is past 09:00 but the west is not: today's
    occurrence is due (for the zones behind); after it fired, a revision does not fire it again."""
    from zoneinfo import ZoneInfo

    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    plus14 = ZoneInfo("Etc/GMT-14")
    wall = (now.astimezone(plus14) - dt.timedelta(hours=2)).replace(tzinfo=None)
    paris = ZoneInfo("Europe/Paris")
    send_at = wall.replace(tzinfo=paris) - dt.timedelta(days=3)  # a schedule that began days ago
    campaign = approve(
        make_campaign(
            schedule_kind="recurring", recurrence="daily", send_at=send_at, time_zone="Europe/Paris", at_local_time=True
        ),
        now=now,
    )
    today = wall.replace(tzinfo=dt.UTC) - dt.timedelta(hours=14)
    assert campaign.next_occurrence_at == today
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=now)
    assert occurrence.due_at == today
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at == today + dt.timedelta(days=1)


def test_campaign_whose_every_send_failed_ends_failed(make_campaign, approve, django_capture_on_commit_callbacks):
    # The Shop app has no provider credentials: every push to its phones fails.
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    DeviceFactory(profile=ProfileFactory(locale="fr"), app=campaign.app, platform="android")
    with django_capture_on_commit_callbacks(execute=True):  # prepare and send, here
        campaigns_tick(now=T0)
    dispatch = Dispatch.objects.get(source_id=campaign.pk, kind="campaign")
    assert (dispatch.status, dispatch.accepted, dispatch.failed) == ("failed", 0, 1)
    campaigns_tick(now=T0 + dt.timedelta(minutes=1))
    campaign.refresh_from_db()
    assert campaign.status == "failed"


@pytest.mark.django_db(transaction=True)
def test_a_broker_down_after_a_commit_neither_stops_the_tick_nor_strands_the_dispatch(
    make_campaign, approve, monkeypatch
):
    from django_q.conf import Conf

    from delivery.services.dispatches import _task_timeout, dispatches_watch

    first, second = (approve(make_campaign(name=name, schedule_kind="at", send_at=T0)) for name in ("A", "B"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}/0"  # nothing listens there any more
    with monkeypatch.context() as broker_down:
        broker_down.setattr(Conf, "SYNC", False)
        broker_down.setattr(Conf, "REDIS", dead)
        broker_down.setattr(Conf, "DJANGO_REDIS", None)
        assert campaigns_tick(now=T0)["occurrences"] == 2

    dispatches = Dispatch.objects.filter(kind="campaign", source_id__in=[first.pk, second.pk])
    assert [d.status for d in dispatches] == ["preparing", "preparing"]  # their prepare tasks were never queued
    dispatches_watch(now=timezone.now() + dt.timedelta(seconds=_task_timeout() + 1))
    assert not dispatches.filter(status="preparing").exists()


def test_campaign_page_shows_the_phones(client, make_campaign, manager_alice):
    campaign = make_campaign()
    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert b"phone-ios" in page.content and b"Hello there" in page.content


def test_a_weekly_local_time_send_approved_in_the_last_zone_s_window_still_reaches_it(
    make_campaign, approve, team, segment
):
    """Approved 26½ hours after UTC+14 reached this week's time: UTC−12 got there 30 minutes ago,
    within the 60-minute window, so this week's occurrence is still due for it (not next week's),
    and every zone further past is skipped, saying why."""
    from zoneinfo import ZoneInfo

    from delivery.models import Delivery
    from delivery.services.dispatches import dispatch_prepare

    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    began = now - dt.timedelta(hours=26, minutes=30)  # when UTC+14 reached the wall time
    wall = began.astimezone(ZoneInfo("Etc/GMT-14")).replace(tzinfo=None)
    send_at = wall.replace(tzinfo=ZoneInfo("Europe/Paris")) - dt.timedelta(weeks=2)  # began weeks ago
    profiles = _local_profiles(team, segment, ["Etc/GMT+12", "America/New_York"])
    campaign = approve(
        make_campaign(
            schedule_kind="recurring",
            recurrence="weekly",
            send_at=send_at,
            time_zone="Europe/Paris",
            at_local_time=True,
        ),
        now=now,
    )
    assert campaign.next_occurrence_at == began
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=now)
    assert (occurrence.due_at, occurrence.outcome) == (began, "sent_at_approval")
    dispatch_prepare(dispatch_id=occurrence.dispatch.pk)
    rows = {d.profile_id: d for d in Delivery.objects.filter(dispatch=occurrence.dispatch)}
    assert rows[profiles["Etc/GMT+12"].pk].status == "queued"
    assert (rows[profiles["America/New_York"].pk].status, rows[profiles["America/New_York"].pk].reason) == (
        "skipped",
        "missed_local_time",
    )
    campaign.refresh_from_db()
    assert campaign.next_occurrence_at == began + dt.timedelta(weeks=1)


def test_the_migration_labels_the_dispatches_sent_before_as_their_schedule_was_entered(make_campaign, approve):
    """Dispatches labelled with their occurrence's moment in UTC (for a local-time send, when UTC+14
    got there) are labelled as the schedule was entered; a label written otherwise is left alone."""
    import importlib
    from zoneinfo import ZoneInfo

    from django.apps import apps

    forwards = importlib.import_module("campaigns.migrations.0012_dispatch_labels_as_entered").forwards
    paris = ZoneInfo("Europe/Paris")
    zoned = approve(make_campaign(name="Paris v2 sale", schedule_kind="at", send_at=T0, time_zone="Europe/Paris"))
    ten = dt.datetime(2026, 11, 25, 10, 0, tzinfo=paris)
    local = make_campaign(name="Local", schedule_kind="at", send_at=ten, time_zone="Europe/Paris", at_local_time=True)
    local = approve(local, now=ten - dt.timedelta(days=2))
    dispatches = {}
    for campaign in (zoned, local):
        (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=campaign.next_occurrence_at)
        old = f"{campaign.name} v1 @ {occurrence.due_at:%Y-%m-%d %H:%M} UTC"  # as they were labelled
        Dispatch.objects.filter(pk=occurrence.dispatch_id).update(label=old)
        dispatches[campaign.name] = occurrence.dispatch_id
    assert Dispatch.objects.get(pk=dispatches["Local"]).label == "Local v1 @ 2026-11-24 20:00 UTC"
    renamed = Occurrence.objects.get(campaign=zoned).dispatch
    mismatched = Dispatch.objects.create(
        app=renamed.app,
        kind="campaign",
        source_id=zoned.pk,
        content_spec={},
        label="Paris v2 sale v1 @ 2026-11-25 10:00 UTC",
    )

    forwards(apps, None)

    assert (
        Dispatch.objects.get(pk=dispatches["Paris v2 sale"]).label
        == "Paris v2 sale v1 @ 2026-11-25 10:00 (Europe/Paris)"
    )
    assert (
        Dispatch.objects.get(pk=dispatches["Local"]).label == "Local v1 @ 2026-11-25 10:00 at each profile's local time"
    )
    assert (
        Dispatch.objects.get(pk=mismatched.pk).label == "Paris v2 sale v1 @ 2026-11-25 10:00 UTC"
    )  # no occurrence of it
    forwards(apps, None)  # run again: nothing left to rewrite
    assert (
        Dispatch.objects.get(pk=dispatches["Local"]).label == "Local v1 @ 2026-11-25 10:00 at each profile's local time"
    )


def test_an_occurrence_keeps_how_it_fired_and_the_migration_says_it_for_those_recorded_before(make_campaign, approve):
    """The scheduler records whether the approved version sent the occurrence at each profile's
    local time. Rows recorded before: from their dispatch when they made one, else from the
    approved version (the campaign's row when it was approved before versions were kept)."""
    import importlib
    from zoneinfo import ZoneInfo

    from django.apps import apps

    forwards = importlib.import_module("campaigns.migrations.0013_occurrence_at_local_time").forwards
    ten = dt.datetime(2026, 11, 25, 10, 0, tzinfo=ZoneInfo("Europe/Paris"))
    zoned = approve(make_campaign(name="Zoned", schedule_kind="at", send_at=T0, time_zone="Europe/Paris"))
    local = make_campaign(name="Local", schedule_kind="at", send_at=ten, time_zone="Europe/Paris", at_local_time=True)
    local = approve(local, now=ten - dt.timedelta(days=2))
    sent = {}
    for campaign in (zoned, local):
        (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=campaign.next_occurrence_at)
        assert occurrence.dispatch_id is not None
        sent[campaign.name] = occurrence
    assert (sent["Zoned"].at_local_time, sent["Local"].at_local_time) == (False, True)
    # Skipped, no dispatch: of the approved local campaign, and of one approved before versions were kept.
    legacy = make_campaign(name="Legacy", schedule_kind="at", send_at=ten, time_zone="Europe/Paris", at_local_time=True)
    Campaign.objects.filter(pk=legacy.pk).update(status="scheduled", approved_version={})
    for campaign in (local, legacy):
        Occurrence.objects.create(campaign=campaign, due_at=ten + dt.timedelta(days=7), outcome="skipped_missed")
    Occurrence.objects.update(at_local_time=None)  # as recorded before

    forwards(apps, None)

    kept = Occurrence.objects.values_list("campaign__name", "dispatch_id", "at_local_time")
    assert {(name, "sent" if dispatch else "missed"): local for name, dispatch, local in kept} == {
        ("Zoned", "sent"): False,
        ("Local", "sent"): True,
        ("Local", "missed"): True,
        ("Legacy", "missed"): True,
    }


def _refuse_its_audience(segment, manager_alice):
    """Edit the approved segment's rules: the gate refuses every send of it until a revision is approved."""
    from audiences.services.segments import segment_update

    segment_update(segment_id=segment.pk, by=manager_alice, rules={"all": [{"field": "locale", "op": "not_exists"}]})


def _listed(client, query: str) -> list[str]:
    return _cells(client.get(f"/admin/campaigns/campaign/?{query}").content.decode(), "name")


def test_a_one_off_whose_only_occurrence_is_refused_ends_failed_saying_why(
    client, make_campaign, approve, segment, manager_alice, viewer_carol, api_key_for
):
    """Refused when it fired, it has nothing left to send: it read 'Scheduled' for ever (the tick
    finished only live campaigns). It ends failed, its audit line and its page saying why, and the
    lists, the home page and the API say so alike."""
    from accounts.models import AuditEvent
    from config.home import home_for

    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    _refuse_its_audience(segment, manager_alice)
    tick = campaigns_tick(now=T0 + dt.timedelta(seconds=20))
    assert tick["occurrences"] == 1 and tick["completed"] == 1
    campaign.refresh_from_db()
    assert (campaign.status, campaign.next_occurrence_at) == ("failed", None)
    (occurrence,) = Occurrence.objects.filter(campaign=campaign)
    assert occurrence.outcome == "refused" and "defined otherwise" in occurrence.note
    failed = AuditEvent.objects.get(action="campaign_failed")
    assert failed.summary["from"] == "scheduled" and failed.summary["to"] == "failed"
    assert (
        failed.summary["reason"]
        == f"Nothing of it was sent: its last occurrence was refused by the gate: {occurrence.note}"
    )

    for user in (manager_alice, viewer_carol):
        client.force_login(user)
        page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
        assert re.search(r'<div class="readonly">\s*Failed\s*</div>', page), user
        assert _cells(page, "outcome") == ["Refused by the gate"]
        assert "defined otherwise than when it was approved" in _cells(page, "note")[0]
        assert _listed(client, "status=failed") == ["Spring sale"]
        assert _listed(client, "status=scheduled") == _listed(client, "") == []  # not among those worked on
        home = home_for(user, now=T0 + dt.timedelta(minutes=1))
        assert not any(item.label.endswith("Spring sale") for section in home["sections"] for item in section.items)
    answer = api_key_for(manager_alice).get(f"/api/v1/campaigns/{campaign.pk}/")  # a Viewer owns no key
    assert answer.status_code == 200, answer.content
    assert (answer.json()["status"], answer.json()["next_occurrence_at"]) == ("failed", None)
    listed = api_key_for(manager_alice).get("/api/v1/campaigns/?status=scheduled").json()
    assert listed["results"] == []


@pytest.mark.embedded
def test_a_one_off_missed_beyond_its_window_ends_failed(make_campaign, approve):
    from accounts.models import AuditEvent

    campaign = approve(make_campaign(schedule_kind="at", send_at=T0, missed_window_minutes=30))
    campaigns_tick(now=T0 + dt.timedelta(hours=2))
    campaign.refresh_from_db()
    assert campaign.status == "failed"
    (occurrence,) = Occurrence.objects.filter(campaign=campaign)
    assert occurrence.outcome == "skipped_missed"
    reason = AuditEvent.objects.get(action="campaign_failed").summary["reason"]
    assert reason == f"Nothing of it was sent: its last occurrence was skipped: {occurrence.note}"


def test_a_one_off_approved_after_its_time_and_refused_ends_failed_not_completed(
    make_campaign, approve, segment, manager_alice
):
    # Approved after its time, it went live at once; refused, it sent nothing: not "completed".
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0), now=T0 + dt.timedelta(minutes=5))
    assert campaign.status == "live"
    _refuse_its_audience(segment, manager_alice)
    campaigns_tick(now=T0 + dt.timedelta(minutes=5, seconds=20))
    campaign.refresh_from_db()
    assert campaign.status == "failed"
    assert Occurrence.objects.get(campaign=campaign).outcome == "refused"


def test_a_recurring_campaign_whose_last_occurrence_is_refused_ends_completed(
    make_campaign, approve, segment, manager_alice, django_capture_on_commit_callbacks
):
    campaign = approve(
        make_campaign(
            schedule_kind="recurring", send_at=T0, recurrence="daily", ends_at=T0 + dt.timedelta(days=1, hours=1)
        )
    )
    with django_capture_on_commit_callbacks(execute=True):
        campaigns_tick(now=T0)
    _refuse_its_audience(segment, manager_alice)
    campaigns_tick(now=T0 + dt.timedelta(days=1))
    campaign.refresh_from_db()
    assert campaign.status == "completed"  # its first occurrence sent
    assert [o.outcome for o in campaign.occurrences.order_by("due_at")] == ["sent", "refused"]


@pytest.mark.embedded
def test_a_recurring_campaign_whose_every_occurrence_is_refused_ends_failed(
    make_campaign, approve, segment, manager_alice
):
    campaign = approve(
        make_campaign(
            schedule_kind="recurring", send_at=T0, recurrence="daily", ends_at=T0 + dt.timedelta(days=1, hours=1)
        )
    )
    _refuse_its_audience(segment, manager_alice)
    campaigns_tick(now=T0)
    campaign.refresh_from_db()
    assert campaign.status == "scheduled"  # its second occurrence is still to come
    campaigns_tick(now=T0 + dt.timedelta(days=1))
    campaign.refresh_from_db()
    assert campaign.status == "failed"


def test_a_failed_one_off_is_duplicated_not_edited_and_its_waiting_revision_is_closed(
    client, make_campaign, approve, segment, manager_alice, approver_bob
):
    """A failed campaign is finished, as the lifecycle has it: not edited into a new schedule (its
    approval would revive what an approver closed) but duplicated into a draft, or archived. A
    revision that waited for approval when it failed is closed, saying so: no approver is left
    with a request nothing can approve."""
    from accounts.models import ApprovalRequest
    from accounts.services import TransitionError
    from campaigns.services.lifecycle import campaign_archive, campaign_duplicate

    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    _refuse_its_audience(segment, manager_alice)
    campaign_update(campaign_id=campaign.pk, by=manager_alice, send_at=T0 + dt.timedelta(days=1))
    revision = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaigns_tick(now=T0 + dt.timedelta(seconds=20))
    campaign.refresh_from_db()
    assert campaign.status == "failed"
    revision.refresh_from_db()
    assert revision.status == ApprovalRequest.Status.CANCELLED
    assert revision.comment == "The campaign failed: nothing of it was sent."
    with pytest.raises(TransitionError, match="Duplicate it to make a new draft"):
        campaign_update(campaign_id=campaign.pk, by=manager_alice, send_at=T0 + dt.timedelta(days=2))
    with pytest.raises(TransitionError):
        campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 + dt.timedelta(minutes=1))

    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert 'name="_save"' not in page  # read only
    copy = campaign_duplicate(campaign_id=campaign.pk, by=manager_alice)
    assert copy.status == "draft"
    assert campaign_archive(campaign_id=campaign.pk, by=manager_alice).status == "archived"


@pytest.mark.parametrize(
    "rule, said",
    [
        ({"attribute": "age", "type": "number", "op": "gt", "value": "old"}, "rules.all[0].value: expected a number"),
        # It compiled to a condition matching no one: the send went out to nobody, done, nothing said.
        (
            {"attribute": "vip", "type": "boolean", "op": "eq", "value": "yes"},
            "rules.all[0].value: expected true or false, got a string",
        ),
    ],
    ids=["number holding a word", "boolean holding text"],
)
def test_a_send_to_a_segment_whose_saved_rules_no_longer_hold_fails_saying_so(
    make_campaign, segment, manager_alice, approver_bob, rule, said
):
    """Rules written before a check existed (or by a migration), under a version approved before its
    audience was frozen: the resolve raised out of the worker's task and left the dispatch preparing,
    its audience without an outcome. It fails before any row, naming the condition."""
    from audiences.models import Segment
    from delivery.models import Delivery
    from delivery.services.dispatches import dispatch_prepare

    campaign = make_campaign(schedule_kind="at", send_at=timezone.now() + dt.timedelta(days=1))
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    Segment.objects.filter(pk=segment.pk).update(kind="rules", rules={"all": [rule]})
    campaign.refresh_from_db()
    legacy = {k: v for k, v in campaign.approved_version.items() if k != "audience_fingerprint"}
    Campaign.objects.filter(pk=campaign.pk).update(approved_version=legacy)
    run = Dispatch.objects.create(
        app=campaign.app,
        kind=Dispatch.Kind.CAMPAIGN,
        source_id=campaign.pk,
        content_spec=campaign.content.spec(),
        segment_id=segment.pk,
    )
    assert dispatch_prepare(dispatch_id=run.pk) is False
    run.refresh_from_db()
    assert run.status == Dispatch.Status.FAILED
    assert said in run.error, run.error
    assert not Delivery.objects.filter(dispatch=run).exists()


@pytest.mark.embedded
def test_a_campaign_failed_for_want_of_an_accepted_push_completes_when_its_late_answers_land(
    client, make_campaign, approve, team, manager_alice, api_key_for
):
    """A worker slow, not dead: its lease ran out while the provider held its pushes, so its send
    ended failed (none accepted, every row unknown) and the tick ended the campaign failed. The
    answers that come after say accepted: the send is done, and the campaign completed, as they
    would be had the answers come in time; its page, its audit log and the API say so."""
    from accounts.models import AuditEvent
    from delivery.services.claims import Result, deliveries_claim, deliveries_write_back
    from delivery.services.dispatches import deliveries_expire_leases, dispatch_prepare

    DeviceFactory(app=team, platform="android", profile=ProfileFactory(locale="en"))  # in the segment
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)
    claimed = deliveries_claim(occurrence.dispatch_id, limit=10, now=timezone.now())
    assert deliveries_expire_leases(now=timezone.now() + dt.timedelta(hours=1)) == len(claimed) == 1
    assert Dispatch.objects.get(pk=occurrence.dispatch_id).status == "failed"
    campaigns_tick(now=T0 + dt.timedelta(minutes=1))
    campaign.refresh_from_db()
    assert campaign.status == "failed"

    deliveries_write_back(
        occurrence.dispatch_id,
        [Result(row.id, "accepted", provider_id=f"late-{row.id}") for row in claimed],
        now=timezone.now(),
        platforms={row.id: "android" for row in claimed},
        claims={row.id: row.attempts for row in claimed},
    )
    dispatch = Dispatch.objects.get(pk=occurrence.dispatch_id)
    assert (dispatch.status, dispatch.accepted, dispatch.unknown) == ("done", 1, 0)
    campaign.refresh_from_db()
    assert campaign.status == "completed"
    completed = AuditEvent.objects.get(action="campaign_completed")
    assert (completed.summary["from"], completed.summary["to"]) == ("failed", "completed")
    assert completed.summary["answered_late"] == [dispatch.pk]

    client.force_login(manager_alice)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert re.search(r'<div class="readonly">\s*Completed\s*</div>', page)
    assert _listed(client, "status=completed") == ["Spring sale"]
    answer = api_key_for(manager_alice).get(f"/api/v1/campaigns/{campaign.pk}/")
    assert answer.json()["status"] == "completed"
    campaigns_tick(now=T0 + dt.timedelta(minutes=2))  # the tick leaves it so
    assert Campaign.objects.get(pk=campaign.pk).status == "completed"


def test_a_failed_campaign_whose_send_was_judged_done_before_a_crash_completes_at_the_next_tick(
    make_campaign, approve, team
):
    """The late answers made its send done, and the worker died before the campaign followed (two
    commits): the tick finds the campaign failed with a send that did not fail, and completes it."""
    from accounts.models import AuditEvent
    from delivery.services.dispatches import dispatch_prepare

    DeviceFactory(app=team, platform="android", profile=ProfileFactory(locale="en"))
    campaign = approve(make_campaign(schedule_kind="at", send_at=T0))
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    dispatch_prepare(dispatch_id=occurrence.dispatch_id)
    sends = Dispatch.objects.filter(pk=occurrence.dispatch_id)
    sends.update(status="failed")
    campaigns_tick(now=T0 + dt.timedelta(minutes=1))
    assert Campaign.objects.get(pk=campaign.pk).status == "failed"
    campaigns_tick(now=T0 + dt.timedelta(minutes=2))
    assert Campaign.objects.get(pk=campaign.pk).status == "failed"  # its send failed: it stays so

    sends.update(status="done", accepted=1)  # what dispatch_accepted_late committed before the crash
    campaigns_tick(now=T0 + dt.timedelta(minutes=3))
    assert Campaign.objects.get(pk=campaign.pk).status == "completed"
    completed = AuditEvent.objects.get(action="campaign_completed")
    assert (completed.summary["from"], completed.summary["answered_late"]) == ("failed", [occurrence.dispatch_id])
