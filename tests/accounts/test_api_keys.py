from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.urls import path
from django.utils import timezone
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from accounts.models import ApiKey
from accounts.services import api_key_create, api_key_revoke
from tests.factories import UserFactory


class TriggerOnlyView(APIView):
    required_scope = "trigger"

    def get(self, request):
        return Response({"ok": True})


class NoScopeDeclaredView(APIView):
    def get(self, request):
        return Response({"ok": True})


urlpatterns = [
    path("trigger-only/", TriggerOnlyView.as_view()),
    path("undeclared/", NoScopeDeclaredView.as_view()),
]


def _client(raw):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_valid_key_says_who_it_belongs_to(manager_alice):
    key, raw = api_key_create(user=manager_alice, name="backend", scopes=["read", "ingest"], by=manager_alice)
    response = _client(raw).get("/api/v1/me/")
    assert response.status_code == 200
    body = response.json()
    assert body["username"] == "manager_alice"
    assert body["roles"] == ["Manager"]
    assert body["key"]["scopes"] == ["ingest", "read"]
    assert body["key"]["prefix"] == key.prefix
    assert "audiences.add_segment" in body["permissions"]


def test_stored_key_is_a_hash_not_the_key(manager_alice):
    key, raw = api_key_create(user=manager_alice, name="backend", scopes=["read"], by=manager_alice)
    key.refresh_from_db()
    assert raw.startswith(f"pdk_{key.prefix}_")
    assert raw not in key.key_hash
    assert key.key_hash == ApiKey.hash_key(raw)
    stored = ApiKey.objects.filter(pk=key.pk).values().get()
    assert all(raw not in str(value) for value in stored.values())


def test_use_records_last_used_time(manager_alice):
    key, raw = api_key_create(user=manager_alice, name="backend", scopes=["read"], by=manager_alice)
    assert key.last_used_at is None
    _client(raw).get("/api/v1/me/")
    key.refresh_from_db()
    assert key.last_used_at is not None


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Bearer", "malformed_authorization"),
        ("Token abc def", "malformed_authorization"),
        ("Basic dXNlcjpwYXNz", "malformed_authorization"),
        ("Bearer not-a-pushdesk-key", "api_key_invalid"),
        ("Bearer pdk_0123abcd_" + "x" * 43, "api_key_invalid"),
    ],
)
def test_bad_authorization_header_is_refused_with_json(db, header, code):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["code"] == code
    assert response.json()["detail"]


def test_no_key_answers_401_with_challenge(db):
    response = APIClient().get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_unknown_key_with_known_prefix_is_refused(manager_alice):
    key, raw = api_key_create(user=manager_alice, name="backend", scopes=["read"], by=manager_alice)
    forged = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    response = _client(forged).get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["code"] == "api_key_invalid"


def test_revoked_key_is_refused(manager_alice):
    key, raw = api_key_create(user=manager_alice, name="backend", scopes=["read"], by=manager_alice)
    api_key_revoke(key_id=key.pk, by=manager_alice)
    response = _client(raw).get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["code"] == "api_key_revoked"


def test_expired_key_is_refused(manager_alice):
    key, raw = api_key_create(
        user=manager_alice,
        name="backend",
        scopes=["read"],
        by=manager_alice,
        expires_at=timezone.now() + timedelta(hours=1),
    )
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = _client(raw).get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["code"] == "api_key_expired"


def test_key_of_disabled_user_is_refused(manager_alice):
    _, raw = api_key_create(user=manager_alice, name="backend", scopes=["read"], by=manager_alice)
    manager_alice.is_active = False
    manager_alice.save()
    response = _client(raw).get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["code"] == "account_disabled"


def test_key_of_a_user_since_made_a_viewer_is_refused_at_once(manager_alice):
    """Viewers may not own API keys: a key made while its user was a Manager stops working when
    the user becomes a Viewer (its reads went on)."""
    from django.contrib.auth.models import Group

    _, raw = api_key_create(user=manager_alice, name="backend", scopes=["read"], by=manager_alice)
    assert _client(raw).get("/api/v1/me/").status_code == 200
    manager_alice.groups.set([Group.objects.get(name="Viewer")])
    response = _client(raw).get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["code"] == "account_role"
    manager_alice.groups.set([Group.objects.get(name="Manager")])
    assert _client(raw).get("/api/v1/me/").status_code == 200


@pytest.mark.urls("tests.accounts.test_api_keys")
def test_key_without_the_scope_gets_403(manager_alice):
    _, read_only = api_key_create(user=manager_alice, name="r", scopes=["read"], by=manager_alice)
    _, trigger = api_key_create(user=manager_alice, name="t", scopes=["trigger"], by=manager_alice)
    refused = _client(read_only).get("/trigger-only/")
    assert refused.status_code == 403
    assert refused.json() == {"code": "insufficient_scope", "detail": "This API key lacks the 'trigger' scope."}
    assert _client(trigger).get("/trigger-only/").status_code == 200


@pytest.mark.urls("tests.accounts.test_api_keys")
def test_view_that_declares_no_scope_refuses_everyone(manager_alice):
    _, raw = api_key_create(user=manager_alice, name="all", scopes=["read", "trigger", "ingest"], by=manager_alice)
    assert _client(raw).get("/undeclared/").status_code == 403


def test_unknown_scope_is_refused(manager_alice):
    with pytest.raises(ValidationError, match="Unknown scope: admin; use "):
        api_key_create(user=manager_alice, name="x", scopes=["admin"], by=manager_alice)
    with pytest.raises(ValidationError, match="Unknown scopes: admin, write; use "):
        api_key_create(user=manager_alice, name="x", scopes=["write", "admin"], by=manager_alice)


def test_manager_cannot_create_a_key_for_someone_else(manager_alice, approver_bob):
    with pytest.raises(PermissionDenied):
        api_key_create(user=approver_bob, name="x", scopes=["read"], by=manager_alice)


def test_viewer_cannot_create_keys(viewer_carol):
    with pytest.raises(PermissionDenied):
        api_key_create(user=viewer_carol, name="x", scopes=["read"], by=viewer_carol)


def test_administrator_creates_a_key_for_a_service_account(admin_erin):
    service = UserFactory(username="crm-sync", role="Manager")
    key, raw = api_key_create(user=service, name="reporting", scopes=["read"], by=admin_erin)
    assert key.user == service
    assert _client(raw).get("/api/v1/me/").json()["username"] == "crm-sync"


@pytest.mark.parametrize("owner", ["viewer_carol", "outsider_dave"])
def test_a_viewer_or_a_user_without_role_cannot_own_a_key(admin_erin, owner, request):
    user = request.getfixturevalue(owner)
    with pytest.raises(ValidationError, match="may not own API keys"):
        api_key_create(user=user, name="reporting", scopes=["read"], by=admin_erin)
    assert not ApiKey.objects.filter(user=user).exists()


def test_administrator_cannot_create_a_key_for_a_superuser(admin_erin):
    root = UserFactory(username="root_rita", is_superuser=True)
    with pytest.raises(PermissionDenied, match="Only a superuser"):
        api_key_create(user=root, name="x", scopes=["read", "ingest"], by=admin_erin)
    assert not ApiKey.objects.filter(user=root).exists()
    other_root = UserFactory(username="root_sam", is_superuser=True)
    key, raw = api_key_create(user=root, name="ops", scopes=["read"], by=other_root)
    assert key.user == root and key.created_by == other_root
    assert _client(raw).get("/api/v1/me/").json()["username"] == "root_rita"


def test_administrator_may_still_revoke_a_superusers_key(admin_erin):
    root = UserFactory(username="root_rita", is_superuser=True)
    key, _ = api_key_create(user=root, name="ops", scopes=["read"], by=root)
    api_key_revoke(key_id=key.pk, by=admin_erin)  # taking a key away gives nobody a superuser's power
    key.refresh_from_db()
    assert key.is_revoked


def test_manager_cannot_revoke_someone_elses_key(admin_erin, manager_alice, approver_bob):
    key, _ = api_key_create(user=approver_bob, name="x", scopes=["read"], by=approver_bob)
    with pytest.raises(PermissionDenied):
        api_key_revoke(key_id=key.pk, by=manager_alice)
    api_key_revoke(key_id=key.pk, by=admin_erin)
    key.refresh_from_db()
    assert key.is_revoked


def test_a_method_an_accept_or_a_content_type_the_api_does_not_take_answers_its_documented_code(
    manager_alice, api_key_for
):
    """The README's status table: 405, 406 and 415, each as JSON with its code."""
    client = api_key_for(manager_alice, scopes=["read", "ingest"])
    wrong_method = client.delete("/api/v1/profiles/")
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")
    assert "POST" in wrong_method["Allow"]
    xml_only = client.get("/api/v1/me/", HTTP_ACCEPT="application/xml")
    assert (xml_only.status_code, xml_only.json()["code"]) == (406, "not_acceptable")
    form = client.post("/api/v1/profiles/", "external_id=a", content_type="application/x-www-form-urlencoded")
    assert (form.status_code, form.json()["code"]) == (415, "unsupported_media_type")


def test_calls_with_a_key_s_prefix_and_a_wrong_secret_spend_nothing_of_its_trigger_rate(
    pushsim_app, manager_alice, approver_bob, settings
):
    """A key's prefix is no secret (the admin's list, /me/ and the audit log show it): refused
    calls naming it took from the key's rate bucket, so anyone could hold its triggers at 429."""
    from delivery.models import Dispatch
    from tests.campaigns.conftest import _live_trigger
    from tests.factories import DeviceFactory, ProfileFactory

    settings.PUSHDESK_TRIGGER_RATE_PER_KEY = 1
    campaign = _live_trigger(pushsim_app, manager_alice, approver_bob, title="Shipped", body="On its way")
    DeviceFactory(profile=ProfileFactory(external_id="zoe"), app=pushsim_app)
    _, raw = api_key_create(user=manager_alice, name="backend", scopes=["trigger"], by=manager_alice)
    forged = raw[:-4] + ("AAAA" if not raw.endswith("AAAA") else "BBBB")
    url, body = f"/api/v1/campaigns/{campaign.pk}/trigger/", {"recipients": [{"external_id": "zoe"}]}
    for _ in range(3):
        refused = _client(forged).post(url, body, format="json")
        assert (refused.status_code, refused.json()["code"]) == (401, "api_key_invalid")
    answer = _client(raw).post(url, body, format="json")
    assert answer.status_code == 202, answer.json()
    assert Dispatch.objects.get(pk=answer.json()["dispatch"]).source_id == campaign.pk
    assert answer.json()["queued"] == 1
    throttled = _client(raw).post(url, body, format="json")  # the key's own calls still count
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) >= 1
