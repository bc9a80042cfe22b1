"""A new colleague: given a role and an app on their user page, they sign in and find their work;
without a role, the sign-in and the home page say what to ask an Administrator for."""

import pytest
from django.utils import timezone

from accounts.models import AuditEvent, User
from accounts.selectors import visible_to
from delivery.models import App

pytestmark = pytest.mark.browser

PASSWORD = "a-long-enough-passphrase-42"


def _sign_in(page, live_server, username, password=PASSWORD):
    page.context.clear_cookies()
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")


def test_administrator_creates_a_manager_who_signs_in_to_their_app(
    login, page, live_server, admin_erin, outsider_dave, pushsim_app, screenshot
):
    login(admin_erin)
    page.goto(f"{live_server.url}/admin/accounts/user/add/")
    page.fill("#id_username", "marketer2")
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("input[name=_continue]")
    page.wait_for_url("**/change/**")
    marketer = User.objects.get(username="marketer2")
    assert not marketer.is_staff

    # Before any role: the sign-in says what to ask for, not "staff account".
    _sign_in(page, live_server, "marketer2")
    error = page.locator(".errornote").inner_text()
    assert "no role yet: ask an Administrator" in error and "staff" not in error.lower()

    # The Administrator gives the Manager role and the app, on the user page.
    login(admin_erin)
    page.goto(f"{live_server.url}/admin/accounts/user/{marketer.pk}/change/")
    page.select_option("#id_groups_from", label="Manager")
    page.click("#id_groups_add")
    page.select_option("select[name$='-0-content_object']", str(pushsim_app.pk))
    screenshot("user-roles-and-app-access")
    granted_after = timezone.now()
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    marketer.refresh_from_db()
    assert marketer.is_staff and marketer.role_names() == ["Manager"]
    assert visible_to(marketer, App.objects.filter(pk=pushsim_app.pk)).exists()
    assert AuditEvent.objects.filter(action="access_granted", actor=admin_erin).exists()
    # The inline says who granted the app and when.
    granted = page.locator(".field-granted").first.inner_text()
    assert page.locator(".field-content_object").first.inner_text().strip() == pushsim_app.name
    days = {f"{at:%Y-%m-%d}" for at in (granted_after, timezone.now())}  # the same day, unless midnight came between
    assert granted.startswith("by admin_erin on ") and any(day in granted for day in days), granted

    _sign_in(page, live_server, "marketer2")
    page.wait_for_url(f"{live_server.url}/admin/")
    assert page.locator("#no-access").count() == 0
    assert page.locator("a", has_text="Campaigns").count() >= 1

    # Someone signed in without a role is told what to ask for, not shown an empty admin.
    login(outsider_dave)
    hint = page.locator("#no-access").inner_text()
    assert "no role yet" in hint and "Ask an Administrator for a role" in hint
    screenshot("no-access-home")
