"""Error pages look like the product: inside the admin's frame, with a way back, no debug details."""

import pytest

pytestmark = pytest.mark.browser


def test_a_missing_page_is_drawn_in_the_admin_with_a_way_back(login, page, live_server, manager_alice, screenshot):
    login(manager_alice)
    response = page.goto(f"{live_server.url}/admin/no/such/page/")
    assert response.status == 404
    assert page.locator("#site-name").inner_text() == "Pushdesk"
    assert page.locator("h1").inner_text() == "Not found"
    assert "ask an Administrator" in page.locator("#content-main").inner_text()
    assert "URLconf" not in page.content() and "Traceback" not in page.content()
    screenshot("error-404")
    page.click("#back-to-admin")
    page.wait_for_url(f"{live_server.url}/admin/")


def test_a_refused_page_says_what_to_ask_for_and_leads_back(login, page, live_server, viewer_carol):
    login(viewer_carol)
    response = page.goto(f"{live_server.url}/admin/campaigns/campaign/add/")
    assert response.status == 403
    assert page.locator("h1").inner_text() == "Not allowed"
    assert "ask an Administrator" in page.locator("#content-main").inner_text()
    page.click("#back-to-admin")
    page.wait_for_url(f"{live_server.url}/admin/")


def test_a_site_page_outside_the_admin_is_a_framed_404_too(page, live_server):
    response = page.goto(f"{live_server.url}/no-such-page/")
    assert response.status == 404
    assert page.locator("#site-name").inner_text() == "Pushdesk"
    assert page.locator("#back-to-admin").count() == 1
