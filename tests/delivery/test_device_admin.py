"""A device's push token in the admin: shortened on its page and in the list, in full to an
Administrator who asks for it, each time audited."""

import pytest
from django.urls import reverse

from accounts.models import AuditEvent
from accounts.services import access_grant
from tests.factories import AppFactory, DeviceFactory

pytestmark = pytest.mark.django_db

APNS_TOKEN = "a1b2c3" + "d4" * 26 + "e5f6a7"  # 64 hexadecimal digits
FCM_TOKEN = "fcmHEAD" + "x" * 140 + "TAILfcm"


@pytest.fixture
def devices(admin_erin, manager_alice, approver_bob, viewer_carol):
    app = AppFactory(name="Shop")
    for user in (admin_erin, manager_alice, approver_bob, viewer_carol):
        access_grant(obj=app, to=user, by=None)
    return [
        DeviceFactory(app=app, platform="ios", token=APNS_TOKEN),
        DeviceFactory(app=app, platform="android", token=FCM_TOKEN),
    ]


def _token_url(device) -> str:
    return reverse("admin:delivery_device_token", args=[device.pk])


@pytest.mark.parametrize("role", ["admin_erin", "manager_alice", "approver_bob", "viewer_carol"])
def test_every_role_reads_a_token_shortened_on_the_device_s_page_and_in_the_list(client, request, devices, role):
    """Whoever holds a token with the app's key can push to that phone: pages show its first and
    last characters, enough to tell two phones apart, never the whole of it."""
    client.force_login(request.getfixturevalue(role))
    listed = client.get(reverse("admin:delivery_device_changelist")).content.decode()
    for device, shortened in zip(devices, ("a1b2c3…e5f6a7", "fcmHEA…AILfcm"), strict=True):
        page = client.get(reverse("admin:delivery_device_change", args=[device.pk])).content.decode()
        assert shortened in page and shortened in listed, role
        assert device.token not in page and device.token not in listed, role
        assert device.token[:20] not in page and device.token[-20:] not in page, role


@pytest.mark.presses("delivery.device:token")
def test_an_administrator_is_shown_the_full_token_on_request_and_it_is_audited(client, admin_erin, devices):
    device = devices[0]
    client.force_login(admin_erin)
    page = client.get(reverse("admin:delivery_device_change", args=[device.pk])).content.decode()
    assert _token_url(device) in page  # the link to ask for it
    asked = client.get(_token_url(device))
    assert asked.status_code == 200 and device.token not in asked.content.decode()  # a question, not the token
    assert not AuditEvent.objects.filter(action="device_token_shown").exists()

    shown = client.post(_token_url(device))
    assert shown.status_code == 200 and device.token in shown.content.decode()
    event = AuditEvent.objects.get(action="device_token_shown")
    assert (event.actor, event.object_id) == (admin_erin, str(device.pk))
    assert device.token not in str(event.summary) and device.token not in event.object_label


@pytest.mark.presses("delivery.device:token")
@pytest.mark.parametrize("role", ["manager_alice", "approver_bob", "viewer_carol"])
def test_other_roles_are_refused_the_full_token(client, request, devices, role):
    device = devices[1]
    client.force_login(request.getfixturevalue(role))
    page = client.get(reverse("admin:delivery_device_change", args=[device.pk])).content.decode()
    assert _token_url(device) not in page
    for answer in (client.get(_token_url(device)), client.post(_token_url(device))):
        assert answer.status_code == 403, role
        assert device.token not in answer.content.decode()
    assert not AuditEvent.objects.filter(action="device_token_shown").exists()


def test_a_device_that_is_not_there_answers_404(client, admin_erin, devices):
    client.force_login(admin_erin)
    gone = reverse("admin:delivery_device_token", args=[devices[-1].pk + 1000])
    assert client.get(gone).status_code == 404 and client.post(gone).status_code == 404
