"""The send pipeline's permission-filtered reads: what a role and an app grant let one see."""

import pytest

from accounts.services import access_grant
from delivery.models import Delivery, Dispatch
from delivery.selectors import (
    apps_visible_to,
    deliveries_visible_to,
    devices_visible_to,
    dispatch_for,
    dispatches_visible_to,
)
from tests.factories import AppFactory, DeviceFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_apps():
    """An app with a device and a delivery of a dispatch, and another app with the same."""
    made = []
    for name in ("Granted", "Other"):
        app = AppFactory(name=name)
        device = DeviceFactory(app=app)
        dispatch = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="done")
        delivery = Delivery.objects.create(dispatch=dispatch, device=device, profile=device.profile, status="accepted")
        made.append((app, device, dispatch, delivery))
    return made


@pytest.mark.parametrize("user", ["manager_alice", "viewer_carol"])
def test_a_role_sees_the_devices_dispatches_and_deliveries_of_its_granted_app_only(request, two_apps, user):
    user = request.getfixturevalue(user)
    (app, device, dispatch, delivery), (_, _, other_dispatch, _) = two_apps
    access_grant(obj=app, to=user, by=None)
    assert list(apps_visible_to(user)) == [app]
    assert list(devices_visible_to(user)) == [device]
    assert list(dispatches_visible_to(user)) == [dispatch]
    assert list(deliveries_visible_to(user)) == [delivery]
    assert dispatch_for(user, dispatch.pk) == dispatch
    with pytest.raises(Dispatch.DoesNotExist):
        dispatch_for(user, other_dispatch.pk)  # answered 404, as if it did not exist


def test_a_user_without_a_role_sees_nothing_even_with_an_app_granted(two_apps, outsider_dave):
    (app, _, dispatch, _), _ = two_apps
    access_grant(obj=app, to=outsider_dave, by=None)
    assert not apps_visible_to(outsider_dave).exists()
    assert not devices_visible_to(outsider_dave).exists()
    assert not dispatches_visible_to(outsider_dave).exists()
    assert not deliveries_visible_to(outsider_dave).exists()
    with pytest.raises(Dispatch.DoesNotExist):
        dispatch_for(outsider_dave, dispatch.pk)
