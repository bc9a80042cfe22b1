"""/healthz and /readyz: plain HTTP, any Host, no redirect, no log line; /readyz names what is wrong."""

import logging

import pytest

from operations.models import Instance


@pytest.fixture
def behind_a_proxy(settings):
    """Production's request handling: HTTPS redirect, one allowed host."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.ALLOWED_HOSTS = ["push.example.com"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probe_answers_plain_http_with_an_ip_host_without_redirect_or_log(client, db, behind_a_proxy, caplog, path):
    caplog.set_level(logging.DEBUG)
    response = client.get(path, HTTP_HOST="10.0.0.7:8000")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    assert [r for r in caplog.records if r.name.startswith("django")] == []


def test_other_paths_still_redirect_and_refuse_unknown_hosts(client, db, behind_a_proxy):
    assert client.get("/admin/", HTTP_HOST="push.example.com").status_code == 301
    assert client.get("/admin/", HTTP_HOST="10.0.0.7", secure=True).status_code == 400


def test_readyz_reports_ready_when_database_redis_migrations_and_instance_are_fine(client, db):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


def test_readyz_is_unavailable_on_a_copy_of_another_instance_and_says_why(client, db, caplog):
    Instance.objects.filter(pk=1).update(name="production-eu")
    caplog.set_level(logging.DEBUG)
    response = client.get("/readyz", HTTP_HOST="192.168.1.5")
    assert response.status_code == 503
    problem = response.json()["problems"]["instance"]
    assert "production-eu" in problem and "instance_claim" in problem
    assert [r for r in caplog.records if r.name.startswith("django")] == []


def test_readyz_is_unavailable_when_redis_does_not_answer(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert set(response.json()["problems"]) == {"redis"}


def test_healthz_answers_even_when_the_database_is_unreachable(client, settings):
    # No database access at all (no `db` fixture): pytest-django refuses any query.
    assert client.get("/healthz").status_code == 200
