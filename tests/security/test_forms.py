"""CSRF on every admin form and action, and no framing of any page (clickjacking)."""

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from tests.security.test_object_access import object_urls


def admin_post_urls(world):
    """Every add form and every URL naming an object of ``world``, plus the changelists (actions)."""
    urls = [url for _, url in object_urls(world)]
    for model in admin.site._registry:
        prefix = f"admin:{model._meta.app_label}_{model._meta.model_name}"
        urls.append(reverse(f"{prefix}_changelist"))
        urls.append(reverse(f"{prefix}_add"))
    return urls + ["/admin/audiences/segment/preview/", "/admin/password_change/", "/admin/logout/"]


def test_every_admin_post_without_a_csrf_token_is_refused(world, admin_erin):
    from campaigns.models import Campaign

    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_erin)
    client.get("/admin/")  # the CSRF cookie is set; the token is still not sent
    refused = {}
    for url in admin_post_urls(world):
        response = client.post(url, {"name": "forged", "action": "delete_selected", "_approve": "1", "post": "yes"})
        refused[url] = response.status_code
    assert {url: status for url, status in refused.items() if status != 403} == {}
    assert Campaign.objects.filter(name="forged").count() == 0


def test_the_login_form_needs_its_csrf_token(admin_erin):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/admin/login/", {"username": "admin_erin", "password": "whatever"})
    assert response.status_code == 403


def test_admin_forms_carry_a_csrf_token(client, world, manager_alice):
    client.force_login(manager_alice)
    for url in (
        "/admin/campaigns/campaign/add/",
        f"/admin/campaigns/campaign/{world['campaigns.campaign'].pk}/change/",
        "/admin/audiences/segment/add/",
        "/admin/audiences/import/add/",
        "/admin/delivery/pushcontent/add/",
        "/admin/journeys/journey/add/",
    ):
        page = client.get(url).content.decode()
        assert page.count("<form") >= 1, url
        assert page.count('name="csrfmiddlewaretoken"') >= page.count('method="post"'), url


@pytest.mark.parametrize("who", ["admin_erin", "viewer_carol"])
def test_no_page_may_be_framed(client, world, who, request):
    user = request.getfixturevalue(who)
    client.force_login(user)
    paths = ["/admin/", "/admin/login/", "/api/v1/docs/", "/api/v1/me/"] + [url for _, url in object_urls(world)]
    for path in paths:
        response = client.get(path)
        assert response.headers.get("X-Frame-Options") == "DENY", (path, response.status_code)
