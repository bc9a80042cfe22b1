"""A restored copy of another instance's database sends nothing: not the beat, not the send tasks
it inherits, not a test send, not an API trigger; `instance_claim` voids what was queued before."""

import datetime as dt
import io

import pytest
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.utils import timezone

from accounts.services import access_grant
from campaigns.models import Campaign, Occurrence
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit
from campaigns.services.scheduling import campaigns_tick
from delivery.models import Delivery, Dispatch
from delivery.services.contents import pushcontent_test_send
from delivery.services.dispatches import dispatch_create, dispatch_prepare, dispatches_watch
from delivery.services.sending import dispatch_send
from journeys.services.entries import journeys_tick
from operations.models import Instance
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory, SegmentMemberFactory


@pytest.fixture
def production_state(pushsim_app, manager_alice, approver_bob, django_capture_on_commit_callbacks):
    """What a backup holds: a campaign send half-way (tasks queued, not run), a scheduled campaign
    about to be due, an API-triggered campaign, and phones that would receive all of them."""
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    members = SegmentMemberFactory.create_batch(3)
    segment = members[0].segment
    for member in members[1:]:
        member.segment = segment
        member.save()
    access_grant(obj=segment, to=manager_alice, by=None)
    phones = [DeviceFactory(profile=m.profile, app=pushsim_app, platform="ios") for m in members]
    tester = DeviceFactory(app=pushsim_app, is_test=True, platform="ios")
    phones.append(tester)
    content = PushContentFactory(app=pushsim_app)

    def approved(**fields):
        campaign = campaign_create(by=manager_alice, app=pushsim_app, content=content, **fields)
        campaign_submit(campaign_id=campaign.pk, by=manager_alice)
        campaign_approve(campaign_id=campaign.pk, by=approver_bob)
        return Campaign.objects.get(pk=campaign.pk)

    now = timezone.now()
    scheduled = approved(
        name="Weekly news", segment=segment, kind="scheduled", schedule_kind="at", send_at=now + dt.timedelta(minutes=2)
    )
    triggered = approved(name="Order shipped", kind="api_triggered", purpose="transactional")
    with django_capture_on_commit_callbacks(execute=False):  # the backup is taken before the tasks run
        half_sent = dispatch_create(
            app_id=pushsim_app.pk,
            kind=Dispatch.Kind.CAMPAIGN,
            spec=content.spec(),
            content_id=content.pk,
            segment_id=segment.pk,
            source_id=scheduled.pk,
            context=scheduled.send_context(),
        )
    return {
        "phones": phones,
        "content": content,
        "scheduled": scheduled,
        "triggered": triggered,
        "half_sent": half_sent,
        "due": now + dt.timedelta(minutes=2),
    }


def _received(pushsim, phones) -> int:
    return sum(pushsim.state.count(phone.token) for phone in phones)


def test_a_restored_copy_sends_nothing_until_claimed_and_then_not_what_the_original_queued(
    production_state, pushsim, manager_alice, api_key_for, monkeypatch
):
    state = production_state
    Instance.objects.filter(pk=1).update(name="production-eu")  # restored from the other instance
    dispatches_before = Dispatch.objects.count()

    # Everything a worker of the copy would run: the beat once the occurrence is due, the tasks it
    # inherited, the watchdog that restarts lost sends.
    later = state["due"] + dt.timedelta(seconds=10)
    assert campaigns_tick(now=later)["refused"] is True
    assert journeys_tick(now=later)["refused"] is True
    assert dispatches_watch() == []
    assert dispatch_prepare(dispatch_id=state["half_sent"].pk) is False
    Dispatch.objects.filter(pk=state["half_sent"].pk).update(status="sending")  # as if prepared before the backup
    dispatch_send(dispatch_id=state["half_sent"].pk)
    # And what people would do on it: a test send, an API trigger.
    with pytest.raises(PermissionDenied, match="production-eu"):
        pushcontent_test_send(content_id=state["content"].pk, by=manager_alice)
    profile = ProfileFactory(external_id="buyer")
    DeviceFactory(profile=profile, app=state["content"].app, platform="ios")
    trigger = api_key_for(manager_alice, scopes=["trigger"]).post(
        f"/api/v1/campaigns/{state['triggered'].pk}/trigger/", {"recipients": [{"external_id": "buyer"}]}, format="json"
    )
    assert trigger.status_code == 503, trigger.content
    assert trigger.json()["code"] == "instance_not_claimed" and "production-eu" in trigger.json()["detail"]

    assert _received(pushsim, state["phones"]) == 0
    assert Dispatch.objects.count() == dispatches_before
    assert not Occurrence.objects.exists()
    assert not Delivery.objects.exclude(status="queued").exists()

    # The operator claims the copy once the occurrence was due: what the original had queued
    # (the half-sent dispatch, the occurrence it fired or will fire) is voided, not sent.
    monkeypatch.setattr(timezone, "now", lambda: later)
    call_command("instance_claim", "--yes", stdout=io.StringIO())
    half_sent = Dispatch.objects.get(pk=state["half_sent"].pk)
    assert half_sent.status == "stopped"
    assert Occurrence.objects.get(campaign=state["scheduled"]).outcome == "skipped_missed"
    assert campaigns_tick(now=later)["occurrences"] == 0
    dispatches_watch(now=later)
    assert _received(pushsim, state["phones"]) == 0
    assert Dispatch.objects.count() == dispatches_before
    monkeypatch.undo()

    # From now on this copy is an instance of its own and sends.
    test = pushcontent_test_send(content_id=state["content"].pk, by=manager_alice)
    assert test.kind == "test"
