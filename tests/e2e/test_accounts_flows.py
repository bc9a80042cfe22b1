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
