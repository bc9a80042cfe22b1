"""Admin sign-in throttling behind a reverse proxy: per client, not per proxy, and not evaded by forged headers."""

import pytest

from tests.factories import TEST_PASSWORD


def _login(client, username, password, forwarded_for):
    return client.post(
        "/admin/login/?next=/admin/",
        {"username": username, "password": password},
        REMOTE_ADDR="10.0.0.2",  # the proxy
        HTTP_X_FORWARDED_FOR=forwarded_for,
    )


def test_behind_a_proxy_one_clients_failures_do_not_lock_out_the_others(client, approver_bob, settings):
    settings.PUSHDESK_LOGIN_MAX_FAILURES = 2
    settings.PUSHDESK_TRUSTED_PROXIES = 1
    for name in ("someone", "someone-else"):
        _login(client, name, "x", "203.0.113.9")
    assert b"Too many failed sign-ins" in _login(client, "x", "x", "203.0.113.9").content
    assert _login(client, "approver_bob", TEST_PASSWORD, "198.51.100.7").status_code == 302


def test_a_forged_forwarded_address_does_not_escape_the_lockout(client, db, settings):
    settings.PUSHDESK_LOGIN_MAX_FAILURES = 2
    settings.PUSHDESK_TRUSTED_PROXIES = 1
    for forged in ("1.1.1.1", "2.2.2.2"):
        _login(client, f"guess-{forged}", "x", f"{forged}, 203.0.113.9")
    response = _login(client, "guess-3", "x", "3.3.3.3, 203.0.113.9")
    assert b"Too many failed sign-ins" in response.content


def test_without_a_trusted_proxy_the_header_is_ignored(client, db, settings):
    settings.PUSHDESK_LOGIN_MAX_FAILURES = 2
    settings.PUSHDESK_TRUSTED_PROXIES = 0
    _login(client, "a", "x", "1.1.1.1")
    _login(client, "b", "x", "2.2.2.2")
    assert b"Too many failed sign-ins" in _login(client, "c", "x", "3.3.3.3").content


def test_a_locked_out_username_and_an_unknown_one_read_the_same(client, manager_alice, settings):
    settings.PUSHDESK_LOGIN_MAX_FAILURES = 2
    settings.PUSHDESK_TRUSTED_PROXIES = 1
    for n in range(2):
        _login(client, "manager_alice", "wrong", f"192.0.2.{n}")
        _login(client, "nobody-here", "wrong", f"192.0.2.{n + 10}")
    known = _login(client, "manager_alice", TEST_PASSWORD, "192.0.2.50").content.decode()
    unknown = _login(client, "nobody-here", "whatever", "192.0.2.51").content.decode()
    assert "Too many failed sign-ins" in known and "Too many failed sign-ins" in unknown


# The cache's warning that a name with a line break could not be a memcached key (Redis takes it).
@pytest.mark.filterwarnings("ignore::django.core.cache.backends.base.CacheKeyWarning")
def test_failed_sign_ins_and_a_lockout_are_logged_with_the_client_never_the_password(
    client, manager_alice, settings, caplog
):
    """A guessing script left no line in the log (only audit events, without the address): the
    operator's log tools (fail2ban, an alert on lockouts) had nothing to read."""
    import logging

    settings.PUSHDESK_LOGIN_MAX_FAILURES = 2
    settings.PUSHDESK_LOGIN_LOCKOUT_SECONDS = 900
    settings.PUSHDESK_TRUSTED_PROXIES = 1
    caplog.set_level(logging.INFO, logger="pushdesk.signin")
    _login(client, "manager_alice", "secret-guess-1", "203.0.113.9")
    _login(client, "manager_alice", "secret-guess-2", "203.0.113.9")
    _login(client, "manager_alice", TEST_PASSWORD, "203.0.113.9")
    _login(client, "evil\n2026-12-05 INFO forged line", "secret-guess-3", "198.51.100.7")
    lines = [r for r in caplog.records if r.name == "pushdesk.signin"]
    assert [r.levelno for r in lines] == [logging.WARNING] * 4
    assert [r.getMessage() for r in lines] == [
        "sign-in failed for 'manager_alice' from 203.0.113.9 (1 of 2 failures before a 15-minute lockout)",
        "sign-in failed for 'manager_alice' from 203.0.113.9 (2 of 2 failures: locked out for 15 minutes)",
        "sign-in refused for 'manager_alice' from 203.0.113.9: locked out after 2 failures",
        "sign-in failed for 'evil\\n2026-12-05 INFO forged line' from 198.51.100.7 "
        "(1 of 2 failures before a 15-minute lockout)",
    ]
    assert all((r.username, r.client) == ("manager_alice", "203.0.113.9") for r in lines[:3])
    assert "secret-guess" not in caplog.text and TEST_PASSWORD not in caplog.text
