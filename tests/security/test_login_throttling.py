"""Admin sign-in throttling behind a reverse proxy: per client, not per proxy, and not evaded by forged headers."""

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
