"""Winner mode under a crash: a real ``qcluster`` worker picks the winner and is killed with SIGKILL
while it sends the rest; a new one is started and picks again. The remainder exists once, and no
device gets a push twice (the sample's and the rest's profiles are apart; rows the dead worker held
end ``unknown``, never re-sent)."""

import datetime as dt
import time
import uuid

import pytest
from django.conf import settings
from django.db import connection, connections
from django.db.models import Count
from django.utils import timezone

from accounts.services import access_grant
from campaigns.models import Campaign, WinnerTest
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit
from campaigns.services.scheduling import campaign_fire_due
from campaigns.services.variants import VariantInput, campaign_variants_set
from campaigns.services.winner import WinnerInput, campaign_winner_set
from delivery.models import Delivery, Dispatch
from delivery.services.dispatches import dispatch_prepare
from delivery.services.sending import dispatch_send
from tests.factories import PushContentFactory, SegmentFactory
from tests.fakes.workers import (
    BATCH,
    WORKERS,
    Cluster,
    no_other_statement_running,
    push_task,
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


def test_a_worker_killed_between_the_pick_and_the_rest_sends_nothing_twice(
    transactional_db, pushsim, pushsim_app, manager_alice, approver_bob, tmp_path
):
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    sending_devices(pushsim_app, "wc", 1500)
    contents = [PushContentFactory(app=pushsim_app, name=f"Sale {x}", title=f"Title {x}") for x in "AB"]
    segment = SegmentFactory(
        name="Crash cohort", rules={"all": [{"field": "external_id", "op": "starts_with", "value": "wc-"}]}
    )
    access_grant(obj=segment, to=manager_alice, by=None)
    campaign = campaign_create(
        by=manager_alice, name="Crash test", app=pushsim_app, kind="scheduled", segment=segment, content=contents[0]
    )
    campaign_variants_set(
        campaign_id=campaign.pk,
        by=manager_alice,
        variants=[VariantInput(content_id=c.pk, share=45) for c in contents],
        holdout_share=10,
    )
    campaign_winner_set(
        campaign_id=campaign.pk, by=manager_alice, settings=WinnerInput(sample_share=20, wait_minutes=0)
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    now = timezone.now()
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=now)
    campaign_fire_due(campaign_id=campaign.pk, now=now)  # if the approval's own task has not fired it
    sample_id = WinnerTest.objects.get(campaign=campaign).sample_dispatch_id
    dispatch_prepare(dispatch_id=sample_id)  # both idempotent: done already when tasks run inline
    dispatch_send(dispatch_id=sample_id, time_budget=60)
    sample = Dispatch.objects.get(pk=sample_id)
    assert sample.status == "done" and sample.accepted > 200
    opened = Delivery.objects.filter(dispatch=sample, variant=2, status="accepted")
    opened.update(opened_at=timezone.now())  # B is opened, A is not: B wins

    pushsim.state.faults.latency_ms = 100  # each batch stays in flight a while: a kill lands mid-send
    queue = f"winner-{uuid.uuid4().hex[:8]}"
    log = str(tmp_path / "qcluster.log")
    connection.close()
    first = Cluster(queue, pushsim, log)
    second = None
    remainder_rows = Delivery.objects.filter(dispatch__sample__part="rest", dispatch__source_id=campaign.pk)
    try:
        for _ in range(3):  # a queue in a shared Redis may be flushed by another test run: push again
            push_task(queue, "campaigns.tasks.winner_pick_task", campaign.pk)
            if wait_for(lambda: remainder_rows.filter(status="accepted").count() >= 150, timeout=20, cluster=first):
                break
        assert remainder_rows.filter(status="accepted").count() >= 150, open(log).read()[-3000:]
        first.kill()
        assert eventually(no_other_statement_running), "a killed worker's statement still runs"
        in_flight = remainder_rows.filter(status="sending").count()
        assert remainder_rows.filter(status="queued").exists(), "killed too late to matter"

        pushsim.state.faults.latency_ms = 0
        second = Cluster(queue, pushsim, log)
        push_task(queue, "campaigns.tasks.winner_pick_task", campaign.pk)  # a second pick, after the kill
        time.sleep(3.5)  # the dead worker's lease runs out
        test = WinnerTest.objects.get(campaign=campaign)
        watch_until(
            queue,
            second,
            lambda: Dispatch.objects.get(pk=test.remainder_dispatch_id).status == Dispatch.Status.DONE,
            log,
        )
    finally:
        first.kill()
        if second is not None:
            second.kill()

    test = WinnerTest.objects.get(campaign=campaign)
    assert (test.outcome, test.winner) == ("winner", 2)
    rests = Dispatch.objects.filter(source_id=campaign.pk, sample__part="rest")
    assert list(rests.values_list("pk", flat=True)) == [test.remainder_dispatch_id]
    statuses = dict(remainder_rows.values_list("status").annotate(n=Count("id")).order_by())
    assert set(statuses) <= {"accepted", "unknown", "failed", "skipped"}
    assert statuses.get("unknown", 0) == in_flight <= WORKERS * BATCH * 2
    counts = pushsim.state.snapshot_counts()
    assert max(counts.values()) == 1, "a device got a push twice"
    sample_profiles = set(Delivery.objects.filter(dispatch=sample).values_list("profile_id", flat=True))
    assert not sample_profiles & set(remainder_rows.values_list("profile_id", flat=True))
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.LIVE
    assert test.picked_at is not None and test.picked_at > timezone.now() - dt.timedelta(minutes=10)
