import re

import pytest

from accounts.models import ApiKey
from accounts.services import access_grant
from tests.factories import AppFactory

pytestmark = pytest.mark.browser


def test_administrator_creates_an_api_key_and_sees_it_once(login, page, live_server, admin_erin, screenshot):
    login(admin_erin)
    screenshot("admin-index")
    page.goto(f"{live_server.url}/admin/accounts/apikey/add/")
    page.fill("#id_name", "mobile backend")
    page.check("input[name=scopes][value=ingest]")
    page.check("input[name=scopes][value=read]")
    page.click("input[name=_save]")
    shown = page.locator("#new-api-key").inner_text()
    screenshot("api-key-created")
    assert re.fullmatch(r"pdk_[0-9a-f]{8}_\S+", shown)
    key = ApiKey.objects.get(name="mobile backend")
    assert key.matches(shown)
    page.goto(f"{live_server.url}/admin/accounts/apikey/{key.pk}/change/")
    assert shown not in page.content()


def test_administrator_grants_a_manager_access_to_an_app(login, page, live_server, admin_erin, manager_alice):
    app = AppFactory(name="Shop")
    login(admin_erin)
    page.goto(f"{live_server.url}/admin/delivery/app/{app.pk}/change/")
    page.click("text=manage access")
    page.select_option("#id_user", label="manager_alice")
    page.click("input[value='Grant access']")
    assert page.locator("#object-access").inner_text().count("manager_alice") == 1
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/delivery/app/")
    assert "Shop" in page.locator("#result_list").inner_text()


def test_viewer_browses_and_finds_no_way_to_change(login, page, live_server, viewer_carol, screenshot):
    app = AppFactory(name="Shop")
    access_grant(obj=app, to=viewer_carol, by=None)
    login(viewer_carol)
    assert page.locator(".addlink").count() == 0
    page.goto(f"{live_server.url}/admin/delivery/app/{app.pk}/change/")
    screenshot("viewer-app-page")
    assert page.locator("input[name=_save]").count() == 0
    assert page.locator(".deletelink").count() == 0


def test_administrator_sets_up_an_app_with_credentials_and_a_manager(
    login, page, live_server, admin_erin, pushsim, apns_credentials, fcm_credentials, screenshot
):
    from accounts.models import User
    from delivery.models import App

    login(admin_erin)
    page.goto(f"{live_server.url}/admin/delivery/app/add/")
    page.fill("#id_name", "Shop")
    page.fill("#id_apns_team_id", apns_credentials.team_id)
    page.fill("#id_apns_key_id", apns_credentials.key_id)
    page.fill("#id_apns_bundle_id", apns_credentials.bundle_id)
    page.set_input_files(
        "#id_apns_private_key_file",
        files=[{"name": "AuthKey.p8", "mimeType": "text/plain", "buffer": apns_credentials.private_key_pem.encode()}],
    )
    page.set_input_files(
        "#id_fcm_service_account_file",
        files=[
            {
                "name": "sa.json",
                "mimeType": "application/json",
                "buffer": fcm_credentials.json_bytes_for(token_uri=pushsim.token_uri),
            }
        ],
    )
    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    app = App.objects.get(name="Shop")
    assert app.apns_configured and app.fcm_configured
    text = page.content()
    assert "fingerprint" in text and "PRIVATE KEY" not in text
    screenshot("admin-app-credentials")

    # A new colleague, given the Manager role and access to the app.
    page.goto(f"{live_server.url}/admin/accounts/user/add/")
    page.fill("#id_username", "manager_nina")
    page.fill("#id_password1", "a-long-enough-pass-phrase")
    page.fill("#id_password2", "a-long-enough-pass-phrase")
    page.click("input[name=_continue]")
    page.wait_for_url("**/change/**")
    page.dblclick("#id_groups_from option:has-text('Manager')")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")
    nina = User.objects.get(username="manager_nina")
    assert nina.role_names() == ["Manager"]
    page.goto(f"{live_server.url}/admin/delivery/app/{app.pk}/access/")
    page.select_option("#id_user", label="manager_nina")
    page.click("input[value='Grant access']")
    assert "manager_nina" in page.locator("#object-access").inner_text()
    screenshot("admin-object-access")


def test_administrator_adds_a_colleague_to_a_team_who_then_sees_its_segment(
    login, page, live_server, admin_erin, approver_bob, viewer_carol, screenshot
):
    from django.contrib.auth.models import Group

    from accounts.models import AuditEvent
    from tests.factories import SegmentFactory

    team = Group.objects.create(name="Shop reviewers")
    approver_bob.groups.add(team)
    segment = SegmentFactory(name="Shop loyal buyers")
    access_grant(obj=segment, to=team, by=admin_erin)
    login(admin_erin)
    page.goto(f"{live_server.url}/admin/auth/group/{team.pk}/change/")
    page.dblclick("#id_members_from option:has-text('viewer_carol')")
    screenshot("team-members")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist .success")
    assert sorted(team.user_set.values_list("username", flat=True)) == ["approver_bob", "viewer_carol"]
    assert AuditEvent.objects.get(action="team_members_changed").summary == {"added": ["viewer_carol"], "removed": []}
    login(viewer_carol)
    page.goto(f"{live_server.url}/admin/audiences/segment/")
    assert "Shop loyal buyers" in page.locator("#result_list").inner_text()
