"""A world of objects that manager_alice works on; manager_mallory (a Manager) and outsider_dave were granted none of it."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.services import access_grant
from tests.factories import DeviceFactory, ProfileFactory, SegmentFactory


@pytest.fixture
def world(pushsim_app, manager_alice, approver_bob, django_capture_on_commit_callbacks):
    """One object of every kind an admin page, action, export or API view shows, all in alice's scope."""
    run_queued = django_capture_on_commit_callbacks
    from accounts.models import ApiKey, ApprovalRequest, AuditEvent
    from accounts.services import api_key_create
    from audiences.models import Import
    from audiences.services.imports import import_create
    from campaigns.services.lifecycle import campaign_create, campaign_submit
    from campaigns.services.scheduling import campaign_test_send
    from delivery.models import Delivery, Dispatch, PushContent
    from delivery.services.contents import pushcontent_save
    from journeys.models import Enrollment
    from journeys.services.lifecycle import journey_approve, journey_create, journey_submit

    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    segment = SegmentFactory(
        name="Alice's segment",
        created_by=manager_alice,
        rules={"all": [{"field": "external_id", "op": "eq", "value": "zoe"}]},
    )
    access_grant(obj=segment, to=manager_alice, by=None)
    profile = ProfileFactory(external_id="zoe", attributes={"plan": "pro"})
    device = DeviceFactory(profile=profile, app=pushsim_app, platform="ios", is_test=True)
    content = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Spring", title="Hi", body="Sale"), by=manager_alice
    )
    campaign = campaign_create(
        by=manager_alice, name="Spring sale", app=pushsim_app, segment=segment, content=content, kind="scheduled"
    )
    with run_queued(execute=True):
        campaign_test_send(campaign_id=campaign.pk, by=manager_alice)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    journey = journey_create(
        by=manager_alice,
        name="Onboarding",
        app=pushsim_app,
        entry_kind="segment",
        entry_segment=segment,
        graph={
            "steps": [
                {"id": "start", "type": "wait", "seconds": 3600, "next": "done"},
                {"id": "done", "type": "exit"},
            ]
        },
    )
    journey_submit(journey_id=journey.pk, by=manager_alice)
    with run_queued(execute=True):
        journey_approve(journey_id=journey.pk, by=approver_bob)
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\nann,pro\n,broken\n", content_type="text/csv")
    with run_queued(execute=True):
        record = import_create(upload=upload, by=manager_alice, target="new_segment", segment_name="Imported by alice")
    api_key_create(user=manager_alice, name="alice's key", scopes=["read"], by=manager_alice)
    dispatch = Dispatch.objects.filter(deliveries__isnull=False).latest("pk")
    enrollment = Enrollment.objects.filter(journey=journey).first()
    return {
        "delivery.app": pushsim_app,
        "audiences.segment": segment,
        "audiences.import": Import.objects.get(pk=record.pk),
        "delivery.device": device,
        "delivery.pushcontent": content,
        "delivery.dispatch": dispatch,
        "delivery.delivery": Delivery.objects.filter(dispatch=dispatch).first(),
        "campaigns.campaign": campaign,
        "journeys.journey": journey,
        "journeys.enrollment": enrollment,
        "accounts.approvalrequest": ApprovalRequest.objects.order_by("pk").first(),
        "accounts.apikey": ApiKey.objects.get(name="alice's key"),
        "accounts.auditevent": AuditEvent.objects.latest("pk"),
        "profile": profile,
    }
