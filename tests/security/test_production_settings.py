"""The session, cookie, password and transport settings a production deployment runs with."""

import json
import subprocess
import sys

from tests.test_settings import PRODUCTION_ENV, ROOT

SHOW = """
import json, django
django.setup()
from django.conf import settings as s
from django.contrib.auth.password_validation import get_default_password_validators
print(json.dumps({
    "DEBUG": s.DEBUG,
    "SESSION_COOKIE_SECURE": s.SESSION_COOKIE_SECURE,
    "SESSION_COOKIE_HTTPONLY": s.SESSION_COOKIE_HTTPONLY,
    "SESSION_COOKIE_SAMESITE": s.SESSION_COOKIE_SAMESITE,
    "SESSION_COOKIE_AGE": s.SESSION_COOKIE_AGE,
    "CSRF_COOKIE_SECURE": s.CSRF_COOKIE_SECURE,
    "SECURE_SSL_REDIRECT": s.SECURE_SSL_REDIRECT,
    "SECURE_HSTS_SECONDS": s.SECURE_HSTS_SECONDS,
    "SECURE_PROXY_SSL_HEADER": s.SECURE_PROXY_SSL_HEADER,
    "SECURE_CONTENT_TYPE_NOSNIFF": s.SECURE_CONTENT_TYPE_NOSNIFF,
    "X_FRAME_OPTIONS": s.X_FRAME_OPTIONS,
    "PASSWORD_HASHER": s.PASSWORD_HASHERS[0],
    "VALIDATORS": [type(v).__name__ for v in get_default_password_validators()],
    "MIN_LENGTH": [getattr(v, "min_length", None) for v in get_default_password_validators()],
    "LOGIN_MAX_FAILURES": s.PUSHDESK_LOGIN_MAX_FAILURES,
}))
"""


def production_settings(tmp_path) -> dict:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PUSHDESK_", "DATABASE_URL"))}
    env.update({"PUSHDESK_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings", **PRODUCTION_ENV})
    env.pop("DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-c", SHOW], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_sessions_and_cookies_are_secure_and_short_lived(tmp_path):
    s = production_settings(tmp_path)
    assert s["DEBUG"] is False
    assert s["SESSION_COOKIE_SECURE"] and s["CSRF_COOKIE_SECURE"] and s["SESSION_COOKIE_HTTPONLY"]
    assert s["SESSION_COOKIE_SAMESITE"] in ("Lax", "Strict")
    assert s["SESSION_COOKIE_AGE"] <= 12 * 3600
    assert s["SECURE_SSL_REDIRECT"] and s["SECURE_HSTS_SECONDS"] >= 31536000
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert s["SECURE_CONTENT_TYPE_NOSNIFF"] and s["X_FRAME_OPTIONS"] == "DENY"


def test_production_passwords_are_hashed_slowly_and_must_be_strong(tmp_path):
    s = production_settings(tmp_path)
    assert s["PASSWORD_HASHER"] in (
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.Argon2PasswordHasher",
        "django.contrib.auth.hashers.ScryptPasswordHasher",
    )
    assert {"MinimumLengthValidator", "CommonPasswordValidator", "UserAttributeSimilarityValidator"} <= set(
        s["VALIDATORS"]
    )
    assert max(length or 0 for length in s["MIN_LENGTH"]) >= 12
    assert 1 <= s["LOGIN_MAX_FAILURES"] <= 10


def test_a_weak_password_is_refused_by_the_admin(client, admin_erin, manager_alice):
    client.force_login(admin_erin)
    response = client.post(
        f"/admin/accounts/user/{manager_alice.pk}/password/",
        {"password1": "password123", "password2": "password123", "usable_password": "true"},
    )
    assert response.status_code == 200
    assert response.context["form"].errors
    manager_alice.refresh_from_db()
    assert not manager_alice.check_password("password123")
