"""Push content without JSON: custom data as rows, a tab per locale, previews that follow the typing."""

import pytest

from accounts.services import access_grant
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save

pytestmark = pytest.mark.browser


def test_manager_writes_content_with_forms_and_watches_the_previews(
    login, page, live_server, manager_alice, pushsim_app, screenshot
):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = pushcontent_save(
        content=PushContent(app=pushsim_app, name="Sale", title="Hello", body="Spring sale", default_locale="en"),
        by=manager_alice,
    )
    login(manager_alice)
    page.goto(f"{live_server.url}/admin/delivery/pushcontent/{content.pk}/change/")
    assert page.locator("label[for=id_ios_sound]").inner_text().startswith("iOS sound")
    assert page.locator("label[for=id_android_channel_id]").inner_text().startswith("Android channel id")
    assert page.locator("#id_data").is_hidden()  # the JSON is one click away, behind "Edit as JSON"

    # The previews follow the typing, before anything is saved.
    page.fill("#id_title", "Hello {{ profile.attributes.first_name | default: 'friend' }}")
    page.wait_for_function("() => document.querySelector('.content-previews').textContent.includes('Hello friend')")
    assert PushContent.objects.get(pk=content.pk).title == "Hello"

    # Custom data as key/value rows.
    page.click(".kv-add")
    page.locator(".kv-row .kv-key").last.fill("campaign")
    page.locator(".kv-row .kv-value").last.fill("spring")

    # A French variant in its own tab; the previews switch with the tab.
    page.fill(".locale-new", "fr")
    page.click(".locale-add")
    page.fill(".locale-panel .locale-title", "Bonjour")
    page.fill(".locale-panel .locale-body", "Les soldes")
    page.wait_for_function("() => document.querySelector('.content-previews').textContent.includes('Bonjour')")
    screenshot("content-form-locale-tabs")
    page.click(".locale-tab[data-locale=en]")
    page.wait_for_function("() => document.querySelector('.content-previews').textContent.includes('Hello friend')")

    page.click("input[name=_continue]")
    page.wait_for_selector(".messagelist .success")
    content.refresh_from_db()
    assert content.data == {"campaign": "spring"}
    assert content.variants["fr"]["title"] == "Bonjour" and content.variants["fr"]["body"] == "Les soldes"
