"""API keys: random enough, stored only as a hash, compared in constant time, useless once altered."""

import hashlib
import hmac

from accounts.models import ApiKey
from accounts.services import api_key_create


def test_a_key_is_long_random_and_stored_only_as_its_sha256(manager_alice):
    key, raw = api_key_create(user=manager_alice, name="k", scopes=["read"], by=manager_alice)
    secret = raw.split("_", 2)[2]
    assert len(secret) >= 43  # 32 random bytes
    stored = ApiKey.objects.filter(pk=key.pk).values().get()
    assert secret not in repr(stored) and raw not in repr(stored)
    assert stored["key_hash"] == hashlib.sha256(raw.encode()).hexdigest()


def test_the_key_is_checked_with_a_constant_time_comparison(manager_alice, api_key_for, monkeypatch):
    client = api_key_for(manager_alice, scopes=["read"])
    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr("accounts.models.hmac.compare_digest", spy)
    assert client.get("/api/v1/me/").status_code == 200
    assert compared and compared[0][0] == ApiKey.objects.get().key_hash


def test_a_key_with_one_character_changed_is_refused(manager_alice, api_key_for):
    client = api_key_for(manager_alice, scopes=["read"])
    raw = client.raw_key
    altered = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {altered}")
    response = client.get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["code"] == "api_key_invalid"


def test_a_session_cookie_does_not_authenticate_the_api(client, admin_erin):
    """The API takes API keys only: a signed-in admin's browser cannot be driven into it cross-site."""
    client.force_login(admin_erin)
    response = client.post("/api/v1/profiles/", {"external_id": "x"}, content_type="application/json")
    assert response.status_code == 401
