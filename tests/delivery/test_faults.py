"""The fault test: a flaky provider never makes a device get a dispatch twice, and every row ends."""

import pytest
from django.db.models import Count

from delivery.models import Delivery, Dispatch
from delivery.services.dispatches import dispatch_create
from tests.factories import DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = pytest.mark.django_db


def test_ten_percent_transient_faults_end_in_one_accepted_send_or_a_reasoned_failure(
    pushsim_app, pushsim, open_gate, settings, django_capture_on_commit_callbacks
):
    settings.PUSHDESK_SEND_BACKOFF_SECONDS = 0.05
    settings.PUSHDESK_SEND_MAX_ATTEMPTS = 5
    settings.PUSHDESK_SEND_BATCH = 100
    faults = pushsim.state.faults
    faults.rate_429, faults.rate_500, faults.rate_503 = 0.03, 0.04, 0.03
    faults.retry_after = 1
    faults.goaway_after_streams = 60  # the server sends GOAWAY every 60 streams on a connection
    profiles = ProfileFactory.create_batch(300)
    devices = [
        DeviceFactory(profile=p, app=pushsim_app, platform="ios" if i % 2 else "android")
        for i, p in enumerate(profiles)
    ]
    content = PushContentFactory(app=pushsim_app)

    with django_capture_on_commit_callbacks(execute=True):
        dispatch = dispatch_create(
            app_id=pushsim_app.pk,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=content.spec(),
            profile_ids=[p.pk for p in profiles],
        )

    dispatch.refresh_from_db()
    assert dispatch.status == Dispatch.Status.DONE
    rows = list(Delivery.objects.filter(dispatch=dispatch))
    assert len(rows) == 300
    assert {r.status for r in rows} <= {"accepted", "failed"}
    assert all(r.reason for r in rows if r.status == "failed")
    retried = [r for r in rows if r.attempts > 1]
    assert retried, "the faults should have forced some retries"
    counts = pushsim.state.snapshot_counts()
    assert max(counts.values()) == 1, "a device got the dispatch twice"
    accepted = {r.device_id for r in rows if r.status == "accepted"}
    assert all(counts.get(d.token, 0) == (1 if d.pk in accepted else 0) for d in devices)
    by_status = dict(Delivery.objects.filter(dispatch=dispatch).values_list("status").annotate(n=Count("id")))
    assert (dispatch.accepted, dispatch.failed) == (by_status.get("accepted", 0), by_status.get("failed", 0))
