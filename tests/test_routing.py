"""The API's routes, one flat list, and what the middleware leaves out of an API request."""

from django.urls import resolve, reverse


def test_api_routes_resolve_by_name_and_an_unknown_path_gets_the_apis_json_404(client, db):
    assert reverse("api:campaign-trigger", args=[7]) == "/api/v1/campaigns/7/trigger/"
    assert resolve("/api/v1/campaigns/7/trigger/").url_name == "campaign-trigger"
    assert resolve("/api/v1/events/bulk/").route == "api/v1/events/bulk/"
    assert resolve("/api/v1/me/").url_name == "me"
    assert resolve("/api/v1/schema/").url_name == "schema"
    response = client.get("/api/v1/campaigns/-1/")
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


def test_an_api_request_builds_no_message_store_and_an_admin_page_does(client, db):
    api = client.get("/api/v1/me/")
    assert api.status_code in (401, 403)
    assert not hasattr(api.wsgi_request, "_messages")
    page = client.get("/admin/login/")
    assert page.status_code == 200 and hasattr(page.wsgi_request, "_messages")


def test_an_accept_the_api_cannot_answer_still_gets_406(client, db):
    response = client.get("/api/v1/me/", HTTP_ACCEPT="text/html")
    assert response.status_code == 406


def test_a_refused_page_keeps_the_signed_in_users_links_and_a_missing_one_for_no_one(client, viewer_carol):
    """The admin's frame drew its user links (change password, log out) only on its own pages: a
    403 left a signed-in user without a way to sign out."""
    client.force_login(viewer_carol)
    refused = client.get("/admin/campaigns/campaign/add/")
    assert refused.status_code == 403
    page = refused.content.decode()
    assert 'id="logout-form"' in page and "/admin/password_change/" in page and "viewer_carol" in page
    client.logout()
    missing = client.get("/no-such-page/").content.decode()
    assert 'id="logout-form"' not in missing and "/admin/password_change/" not in missing


def test_the_icon_browsers_ask_every_site_for_is_found(client, db):
    """Browsers ask each site for /favicon.ico: it answered 404, and logged a warning, on every page."""
    answer = client.get("/favicon.ico")
    assert answer.status_code == 302 and answer.url.endswith(".svg")
    icon = client.get(answer.url)
    assert icon.status_code == 200 and icon["Content-Type"].startswith("image/svg+xml")
    page = client.get("/admin/login/").content.decode()
    assert f'<link rel="icon" href="{answer.url}" type="image/svg+xml">' in page
