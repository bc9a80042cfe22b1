"""Every write done through the admin leaves an audit event: a walk over every registered model admin."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType
from django.test import RequestFactory
from django.urls import reverse

from accounts.models import ApprovalPolicy, AuditEvent
from delivery.models import DeliveryRules
from tests.factories import (
    AppFactory,
    DeviceFactory,
    ProfileFactory,
    PushContentFactory,
    SegmentFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db


def _campaign(by):
    from campaigns.services.lifecycle import campaign_create

    app = AppFactory(name="Campaign app")
    return campaign_create(
        by=by,
        name="Spring sale",
        app=app,
        kind="scheduled",
        segment=SegmentFactory(name="Everyone"),
        content=PushContentFactory(app=app, name="Welcome"),
    )


def _journey(by):
    from journeys.models import Journey

    return Journey.objects.create(name="Onboarding", app=AppFactory(name="Journey app"), owner=by)


MAKERS = {
    "accounts.User": lambda by: UserFactory(username="leaver", role="Viewer"),
    "auth.Group": lambda by: Group.objects.create(name="Night shift"),
    "accounts.ApprovalPolicy": lambda by: ApprovalPolicy.objects.create(name="Marketing"),
    "audiences.Segment": lambda by: SegmentFactory(name="Old segment"),
    "audiences.Profile": lambda by: ProfileFactory(external_id="u1"),
    "delivery.App": lambda by: AppFactory(name="Old app"),
    "delivery.PushContent": lambda by: PushContentFactory(name="Old content"),
    "delivery.Device": lambda by: DeviceFactory(),
    "delivery.DeliveryRules": lambda by: DeliveryRules.objects.create(app=AppFactory(name="Ruled")),
    "campaigns.Campaign": _campaign,
    "journeys.Journey": _journey,
    "audiences.EventReplay": lambda by: _event_replay(),
}


def _event_replay():
    from django.utils import timezone

    from audiences.models import EventReplay

    return EventReplay.objects.create(listener="x.y", event_ids=[1], next_attempt_at=timezone.now())


def _events_on(obj, pk) -> int:
    content_type = ContentType.objects.get_for_model(obj, for_concrete_model=False)
    return AuditEvent.objects.filter(object_type=content_type, object_id=str(pk)).count()


def test_every_admin_that_deletes_writes_an_audit_event(client, admin_erin):
    request = RequestFactory().get("/")
    request.user = admin_erin
    client.force_login(admin_erin)
    walked, skipped = [], {}
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label
        if not model_admin.has_delete_permission(request):
            skipped[label] = "read-only for an Administrator: nothing to delete through the admin"
            continue
        assert label in MAKERS, f"{label} may be deleted in the admin: add it to this walk"
        obj = MAKERS[label](admin_erin)
        pk = obj.pk
        before = _events_on(obj, pk)
        opts = model._meta
        response = client.post(reverse(f"admin:{opts.app_label}_{opts.model_name}_delete", args=[pk]), {"post": "yes"})
        assert response.status_code == 302, label
        assert not model._default_manager.filter(pk=pk).exists(), label
        assert _events_on(obj, pk) == before + 1, label  # one event, never two
        walked.append(label)
    assert set(walked) == set(MAKERS)
    assert "accounts.AuditEvent" in skipped


def test_deleting_a_device_in_the_admin_is_audited_with_its_actor(client, admin_erin):
    device = DeviceFactory()
    client.force_login(admin_erin)
    client.post(reverse("admin:delivery_device_delete", args=[device.pk]), {"post": "yes"})
    event = AuditEvent.objects.get(action="device_deleted")
    assert (event.actor, event.object_id, event.summary) == (admin_erin, str(device.pk), {"through": "admin"})


def test_a_change_in_the_admin_is_audited_once(client, admin_erin):
    group = Group.objects.create(name="Night shift")
    client.force_login(admin_erin)
    url = reverse("admin:auth_group_change", args=[group.pk])
    response = client.post(url, {"name": "Day shift", "permissions": []})
    assert response.status_code == 302
    assert _events_on(group, group.pk) == 1
