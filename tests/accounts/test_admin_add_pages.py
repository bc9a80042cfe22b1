"""The admin's add pages: what is not made yet shows no dates or version of its own."""

import re

import pytest
from django.contrib import admin
from django.urls import reverse

pytestmark = pytest.mark.django_db

_SAID_OF_A_SAVED_OBJECT = ("Created at", "Updated at", "Version:")


def _content(html: str) -> str:
    """The page's own part (not the header, the sidebar or the footer), without its tags."""
    main = re.search(r'<div id="content"[^>]*>(.*)', html, re.S).group(1)
    return re.sub(r"<[^>]+>", " ", main)


def test_no_add_page_shows_the_dates_or_version_of_what_is_not_made_yet(client, admin_erin):
    """A push content's add page showed a History of version 1, created and updated a moment ago,
    and an app's its Dates: taken from the defaults of an object not saved, as though it were."""
    client.force_login(admin_erin)
    opened = []
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        request = type("Request", (), {"user": admin_erin})()
        if not model_admin.has_add_permission(request):
            continue
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_add")
        response = client.get(url)
        assert response.status_code == 200, url
        text = _content(response.content.decode())
        assert not [said for said in _SAID_OF_A_SAVED_OBJECT if said in text], url
        opened.append(opts.label_lower)
    assert {"delivery.pushcontent", "delivery.app", "campaigns.campaign", "journeys.journey"} <= set(opened)
