import pytest

from accounts.models import AuditEvent
from tests.factories import TEST_PASSWORD


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
