"""Erasing a profile through the API (``DELETE /api/v1/profiles/{external_id}/``): what it removes,
who may, and what it answers to ids no profile can have."""

import datetime as dt
from urllib.parse import quote

import pytest
from django.contrib.auth.models import Group

from accounts.models import AuditEvent
from accounts.services import access_grant
from audiences.models import Event, Profile, SegmentErasure, SegmentMember
from audiences.services.profiles import EXTERNAL_ID_PADDED
from delivery.models import Device
from tests.factories import (
    DeviceFactory,
    EventFactory,
    ProfileFactory,
    PushContentFactory,
    SegmentFactory,
    SegmentMemberFactory,
    UserFactory,
    app_granted,
)

pytestmark = pytest.mark.django_db

T0 = dt.datetime(2026, 11, 25, 9, 0, tzinfo=dt.UTC)
SECRET = "ann@example.com"


def _url(external_id: str) -> str:
    return f"/api/v1/profiles/{quote(external_id, safe='')}/"


@pytest.fixture
def team(manager_alice, approver_bob):
    return app_granted(manager_alice, approver_bob)


@pytest.fixture
def ann(team, manager_alice):
    """A profile with an attribute worth keeping out of logs, a phone, an event, in a kept list."""
    profile = ProfileFactory(external_id="ann", attributes={"email": SECRET, "plan": "pro"})
    DeviceFactory(profile=profile, app=team)
    EventFactory(profile=profile, name="purchase")
    access_grant(obj=SegmentMemberFactory(profile=profile).segment, to=manager_alice, by=None)
    return profile


def _what_is_kept() -> tuple:
    """Every row an erasure would remove or write, to check a refused call changed nothing."""
    return (
        list(Profile.objects.order_by("pk").values_list("pk", "external_id")),
        list(Device.objects.order_by("pk").values_list("pk", flat=True)),
        list(Event.objects.order_by("pk").values_list("pk", flat=True)),
        list(SegmentMember.objects.order_by("pk").values_list("pk", flat=True)),
        SegmentErasure.objects.count(),
        AuditEvent.objects.filter(action="profile_deleted").count(),
    )


@pytest.mark.embedded
def test_a_backend_key_erases_the_profile_with_its_devices_events_and_memberships(manager_alice, api_key_for, ann):
    other = ProfileFactory(external_id="bea")
    EventFactory(profile=other)
    backend = api_key_for(manager_alice, scopes=["ingest", "read"])

    response = backend.delete("/api/v1/profiles/ann/")

    assert response.status_code == 204, response.content
    assert response.content == b""
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["bea"]
    assert not Device.objects.exists()
    assert list(Event.objects.values_list("profile_id", flat=True)) == [other.pk]
    assert not SegmentMember.objects.exists()
    assert SegmentErasure.objects.get().members == 1
    (audited,) = AuditEvent.objects.filter(action="profile_deleted")  # as the admin's deletion
    assert (audited.actor, audited.object_id, audited.object_label) == (manager_alice, str(ann.pk), "ann")
    logged = AuditEvent.objects.filter(pk=audited.pk).values().get()
    assert not any(SECRET in str(value) or "pro" == value for value in logged.values())


def test_erasing_again_or_an_unknown_profile_answers_404_naming_it(manager_alice, api_key_for, ann):
    backend = api_key_for(manager_alice, scopes=["ingest", "read"])
    assert backend.delete("/api/v1/profiles/ann/").status_code == 204
    for external_id in ("ann", "nobody"):
        response = backend.delete(_url(external_id))
        assert response.status_code == 404, response.content
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"code": "not_found", "detail": f'No profile has the external id "{external_id}".'}
    assert AuditEvent.objects.filter(action="profile_deleted").count() == 1


@pytest.mark.parametrize("external_id", ["a/b", "bulk", "x/", "é 😀"])
def test_any_profile_written_can_be_erased_by_its_external_id(manager_alice, api_key_for, external_id):
    """The path takes what the profile's read takes: a slash, the bulk path's word, any text."""
    ProfileFactory(external_id=external_id)
    backend = api_key_for(manager_alice, scopes=["ingest", "read"])
    assert backend.delete(_url(external_id)).status_code == 204
    assert not Profile.objects.exists()
    assert backend.delete(_url(external_id)).status_code == 404


@pytest.mark.parametrize("nested", [False, True], ids=["the list", "a segment of the list"])
def test_an_erasure_leaves_the_approval_of_a_campaign_on_a_kept_list_it_was_in(
    team, manager_alice, approver_bob, api_key_for, nested
):
    from campaigns.models import Campaign
    from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit
    from campaigns.services.scheduling import campaign_fire_due
    from delivery.models import Delivery
    from delivery.services.dispatches import dispatch_prepare

    vips = SegmentFactory(name="VIPs", kind="static", rules=None, created_by=manager_alice)
    access_grant(obj=vips, to=manager_alice, by=None)
    kept, erased = ProfileFactory(external_id="vip-1"), ProfileFactory(external_id="vip-2")
    for profile in (kept, erased):
        SegmentMemberFactory(segment=vips, profile=profile)
        DeviceFactory(profile=profile, app=team)
    audience = vips
    if nested:
        audience = SegmentFactory(name="Of VIPs", rules={"all": [{"segment": vips.pk, "member": True}]})
        access_grant(obj=audience, to=manager_alice, by=None)
    campaign = campaign_create(
        by=manager_alice,
        name="Spring sale",
        app=team,
        segment=audience,
        content=PushContentFactory(app=team),
        kind="scheduled",
        schedule_kind="at",
        send_at=T0,
    )
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob, now=T0 - dt.timedelta(hours=1))

    assert api_key_for(manager_alice, scopes=["ingest", "read"]).delete("/api/v1/profiles/vip-2/").status_code == 204

    campaign = Campaign.objects.get(pk=campaign.pk)
    assert campaign.status == "scheduled" and not campaign.has_pending_revision
    (occurrence,) = campaign_fire_due(campaign_id=campaign.pk, now=T0)
    assert occurrence.outcome == "sent"
    dispatch_prepare(dispatch_id=occurrence.dispatch.pk)
    assert set(Delivery.objects.filter(dispatch=occurrence.dispatch).values_list("profile_id", flat=True)) == {kept.pk}


@pytest.mark.parametrize(
    ("scopes", "missing"),
    [
        (["ingest"], "read"),  # the key an app ships: public
        (["read"], "ingest"),
        (["trigger", "campaigns", "journeys", "test_devices"], "ingest"),
    ],
    ids=["the app's public key", "read alone", "neither"],
)
def test_a_key_without_ingest_and_read_erases_no_one(manager_alice, api_key_for, ann, scopes, missing):
    before = _what_is_kept()
    response = api_key_for(manager_alice, scopes=scopes).delete("/api/v1/profiles/ann/")
    assert response.status_code == 403, response.content
    assert response.json()["code"] == "insufficient_scope"
    assert f"'{missing}'" in response.json()["detail"]
    assert _what_is_kept() == before


def test_a_role_that_may_not_delete_profiles_erases_no_one_and_learns_nothing(approver_bob, api_key_for, ann):
    """An Approver reads profiles but deletes none (the admin refuses them too): 403 whether the
    profile exists or not."""
    before = _what_is_kept()
    key = api_key_for(approver_bob, scopes=["ingest", "read"])
    for path in ("/api/v1/profiles/ann/", "/api/v1/profiles/nobody/"):
        response = key.delete(path)
        assert response.status_code == 403, response.content
        assert response.json() == {"code": "permission_denied", "detail": "Your role may not delete profiles."}
    assert _what_is_kept() == before


def test_a_viewers_key_erases_no_one(api_key_for, ann):
    """A key made while its user was a Manager stops working once they are a Viewer (who own none)."""
    demoted = UserFactory(username="manager_erin", role="Manager")
    key = api_key_for(demoted, scopes=["ingest", "read"])
    demoted.groups.set([Group.objects.get(name="Viewer")])
    before = _what_is_kept()
    response = key.delete("/api/v1/profiles/ann/")
    assert (response.status_code, response.json()["code"]) == (401, "account_role")
    assert _what_is_kept() == before


@pytest.mark.parametrize(
    ("path", "status", "detail"),
    [
        ("/api/v1/profiles/%20ann/", 400, EXTERNAL_ID_PADDED),
        ("/api/v1/profiles/ann%09/", 400, EXTERNAL_ID_PADDED),
        ("/api/v1/profiles/%20/", 400, "This field is required: a non-empty string."),
        (f"/api/v1/profiles/{'a' * 256}/", 400, "At most 255 characters."),
        (f"/api/v1/profiles/{'a' * 20000}/", 400, "At most 255 characters."),
        ("/api/v1/profiles/a%00b/", 404, None),
        ("/api/v1/profiles/%ED%A0%80/", 404, None),  # a lone surrogate, as UTF-8 would carry it: no text
    ],
    ids=["padded", "tab", "blank", "256 characters", "20,000 characters", "nul", "lone surrogate"],
)
def test_an_id_no_profile_may_have_answers_json_and_erases_nothing(
    manager_alice, api_key_for, ann, path, status, detail
):
    ProfileFactory(external_id="ann ")  # kept from before padded ids were refused: not what these name
    before = _what_is_kept()
    response = api_key_for(manager_alice, scopes=["ingest", "read"]).delete(path)
    assert response.status_code == status, response.content[:300]
    assert response["Content-Type"] == "application/json"
    if detail is not None:
        assert response.json()["errors"] == [{"field": "external_id", "code": "invalid", "detail": detail}]
    assert _what_is_kept() == before


@pytest.mark.embedded
@pytest.mark.parametrize("external_id", [" ann", "ann ", "\tann"])
def test_a_profile_kept_under_a_padded_id_from_before_is_erased_by_that_exact_id(
    manager_alice, api_key_for, ann, external_id
):
    """A profile written before padded ids were refused can still be erased (a privacy request
    names it as it is kept); its id is matched exactly, never trimmed."""
    kept = Profile.objects.create(external_id=external_id)  # as written before the rule
    backend = api_key_for(manager_alice, scopes=["ingest", "read"])

    response = backend.delete(_url(external_id))

    assert response.status_code == 204, response.content
    assert not Profile.objects.filter(pk=kept.pk).exists()
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["ann"]
    assert AuditEvent.objects.get(action="profile_deleted").object_id == str(kept.pk)
    again = backend.delete(_url(external_id))  # gone now: refused as any padded id, creating nothing
    assert again.status_code == 400, again.content
    assert again.json()["errors"] == [{"field": "external_id", "code": "invalid", "detail": EXTERNAL_ID_PADDED}]
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["ann"]


@pytest.mark.embedded
def test_a_padded_id_never_erases_the_profile_kept_under_its_trimmed_id(manager_alice, api_key_for, ann):
    before = _what_is_kept()
    backend = api_key_for(manager_alice, scopes=["ingest", "read"])
    for path in ("/api/v1/profiles/%20ann/", "/api/v1/profiles/ann%20/", "/api/v1/profiles/%20ann%20/"):
        response = backend.delete(path)
        assert response.status_code == 400, response.content
        assert response.json()["errors"] == [{"field": "external_id", "code": "invalid", "detail": EXTERNAL_ID_PADDED}]
    assert _what_is_kept() == before


def test_a_role_that_may_not_delete_profiles_erases_no_padded_profile_either(approver_bob, api_key_for):
    Profile.objects.create(external_id=" ann")
    before = _what_is_kept()
    response = api_key_for(approver_bob, scopes=["ingest", "read"]).delete(_url(" ann"))
    assert response.status_code == 403, response.content
    assert _what_is_kept() == before


def test_a_lone_surrogate_or_a_nul_reaching_the_view_is_refused_naming_the_field(manager_alice, api_key_for):
    """A path's text never holds one as the server decodes it; the view refuses it anyway, before
    the database sees it."""
    from rest_framework.test import APIRequestFactory, force_authenticate

    from accounts.models import ApiKey
    from audiences.api import ProfileDetailView

    api_key_for(manager_alice, scopes=["ingest", "read"])
    key = ApiKey.objects.get()
    for external_id in ("a\ud800b", "a\x00b"):
        request = APIRequestFactory().delete("/api/v1/profiles/x/")
        force_authenticate(request, user=manager_alice, token=key)
        response = ProfileDetailView.as_view()(request, external_id=external_id)
        assert response.status_code == 400, response.data
        assert response.data["errors"][0]["field"] == "external_id"
