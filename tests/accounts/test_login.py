import socket
import threading
import time

import pytest
from django.conf import settings as conf

from accounts.models import AuditEvent
from tests.factories import TEST_PASSWORD
from tests.locks import eventually
from tests.processes import free_port


def _login(client, username, password):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


def test_repeated_failures_lock_the_account_for_a_while(client, manager_alice, settings):
    settings.PUSHDESK_LOGIN_MAX_FAILURES = 3
    for _ in range(3):
        assert _login(client, "manager_alice", "wrong").status_code == 200
    refused = _login(client, "manager_alice", TEST_PASSWORD)
    assert refused.status_code == 200
    assert b"Too many failed sign-ins" in refused.content
    assert "_auth_user_id" not in client.session
    assert AuditEvent.objects.filter(action="login_failed").count() == 3


def test_a_good_password_still_works_below_the_limit(client, manager_alice, settings):
    settings.PUSHDESK_LOGIN_MAX_FAILURES = 3
    _login(client, "manager_alice", "wrong")
    assert _login(client, "manager_alice", TEST_PASSWORD).status_code == 302


def test_failures_from_one_address_lock_other_usernames_too(client, manager_alice, approver_bob, settings):
    settings.PUSHDESK_LOGIN_MAX_FAILURES = 2
    _login(client, "someone", "x")
    _login(client, "someone-else", "x")
    assert b"Too many failed sign-ins" in _login(client, "approver_bob", TEST_PASSWORD).content


def _cache_on_a_closed_port(settings):
    """The cache (the sign-in lockout's counts) pointed at a port no Redis listens on."""
    location = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": location}}


def test_while_redis_does_not_answer_no_one_signs_in_and_the_page_says_why(client, manager_alice, settings):
    _cache_on_a_closed_port(settings)
    for password in (TEST_PASSWORD, "wrong"):
        response = _login(client, "manager_alice", password)
        assert response.status_code == 503
        assert response["Retry-After"] == "60"
        html = response.content.decode()
        assert "Signing in is unavailable for now" in html and "(Redis) does not answer" in html
        assert 'id="login-form"' in html
        assert "Enter a correct username" not in html  # the password is not checked
        assert "_auth_user_id" not in client.session
    assert client.get("/admin/login/").status_code == 200


@pytest.mark.skipif(not conf.REDIS_URL, reason="the cache is the database here")
def test_a_redis_that_takes_the_connection_and_never_answers_fails_sign_in_in_seconds(client, manager_alice, settings):
    """The production cache's options (its socket timeouts), against a server that accepts and says nothing."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted, held = [], {}

    def serve():
        """Take the connection, and time it from the first command to the client's hanging up."""
        try:
            connection = silent.accept()[0]
            accepted.append(connection)
            connection.recv(4096)
            asked = time.monotonic()
            while connection.recv(4096):
                pass
            held["seconds"] = time.monotonic() - asked
        except OSError:
            pass  # closed by the test

    threading.Thread(target=serve, daemon=True).start()
    try:
        location = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        settings.CACHES = {"default": {**conf.CACHES["default"], "LOCATION": location}}
        started = time.monotonic()
        response = _login(client, "manager_alice", TEST_PASSWORD)
        assert response.status_code == 503 and "Signing in is unavailable for now" in response.content.decode()
        assert time.monotonic() - started < 30  # in seconds, even on a loaded machine
        # The client gave up on its command after the 3 s set in the settings, not its 5 s default;
        # timed where it waited, apart from the rest of the request (seconds more on a loaded machine).
        assert eventually(lambda: "seconds" in held, timeout=10), "the client kept the connection open"
        assert held["seconds"] < 4.5, held
    finally:
        silent.close()
        for connection in accepted:
            connection.close()


@pytest.mark.presses("accounts.user:auth_user_password_change")
def test_an_administrator_sets_a_password_in_the_admin_and_a_manager_cannot(
    client, admin_erin, manager_alice, viewer_carol
):
    url = f"/admin/accounts/user/{viewer_carol.pk}/password/"
    new = {
        "password1": "a-brand-new-long-passphrase-42",
        "password2": "a-brand-new-long-passphrase-42",
        "usable_password": "true",
    }
    client.force_login(manager_alice)
    assert client.post(url, new).status_code in (403, 404)
    viewer_carol.refresh_from_db()
    assert viewer_carol.check_password(TEST_PASSWORD)
    client.force_login(admin_erin)
    assert client.post(url, new).status_code == 302
    viewer_carol.refresh_from_db()
    assert viewer_carol.check_password("a-brand-new-long-passphrase-42")
