"""The push content page's live preview: the form as it stands, rendered without saving, for those who may see it."""

import pytest

from accounts.services import access_grant
from delivery.models import PushContent
from tests.factories import AppFactory, ProfileFactory


def _form(content, **changes):
    data = {
        "app": content.app_id,
        "name": content.name,
        "title": content.title,
        "subtitle": "",
        "body": content.body,
        "tap_action": "open_app",
        "data": "{}",
        "ios_sound": "default",
        "ios_interruption_level": "active",
        "android_priority": "high",
        "ttl_seconds": 86400,
        "default_locale": "en",
        "variants": "{}",
        "preview_locale": "",
        **changes,
    }
    return data


@pytest.mark.presses("delivery.pushcontent:live_preview", "delivery.pushcontent:live_preview_new")
def test_live_preview_renders_the_form_unsaved_in_the_locale_of_the_tab(client, db, manager_alice):
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager_alice)
    url = f"/admin/delivery/pushcontent/{content.pk}/live-preview/"
    answer = client.post(url, _form(content, title="Hi {{ profile.attributes.name | default: 'you' }}"))
    assert answer.status_code == 200 and "Hi you" in answer.content.decode()
    french = _form(content, variants='{"fr": {"title": "Bonjour", "body": "Soldes"}}', preview_locale="fr")
    assert "Bonjour" in client.post(url, french).content.decode()
    assert PushContent.objects.get(pk=content.pk).title == "Hello"  # nothing saved
    assert client.post("/admin/delivery/pushcontent/live-preview/", _form(content, title="New")).status_code == 200


@pytest.mark.presses("delivery.pushcontent:live_preview", "delivery.pushcontent:live_preview_new")
def test_live_preview_is_refused_outside_ones_access_and_without_a_post(
    client, db, manager_alice, manager_mallory, viewer_carol
):
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager_mallory)
    assert client.post(f"/admin/delivery/pushcontent/{content.pk}/live-preview/", _form(content)).status_code == 404
    client.force_login(manager_alice)
    assert client.get(f"/admin/delivery/pushcontent/{content.pk}/live-preview/").status_code == 405
    client.force_login(viewer_carol)  # a Viewer may not write content: no preview of a new one
    assert client.post("/admin/delivery/pushcontent/live-preview/", _form(content)).status_code == 403


def test_live_preview_of_a_profile_whose_value_breaks_a_filter_says_so(client, db, manager_alice):
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    ProfileFactory(external_id="odd", attributes={"score": "nan"})
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager_alice)
    answer = client.post(
        f"/admin/delivery/pushcontent/{content.pk}/live-preview/",
        {**_form(content, title="Score {{ profile.attributes.score | round }}"), "preview_profile": "odd"},
    )
    assert answer.status_code == 200
    assert "The content does not render: a filter failed on a value (ValueError)" in answer.content.decode()


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"data": '{"order": 1234}'}, "data", "Custom data must map keys to strings."),
        ({"data": '{"order": {"id": "7"}}'}, "data", "Custom data must map keys to strings."),
        ({"variants": '{"fr": "Bonjour"}'}, "variants", "Variant &#x27;fr&#x27; must be an object of texts."),
        ({"variants": '{"fr": {"title": 5}}'}, "variants", "Variant &#x27;fr&#x27;: its title must be text."),
    ],
)
def test_custom_data_or_a_variant_that_is_not_text_is_refused_on_its_field_and_previews_as_saved(
    client, db, manager_alice, changes, field, message
):
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager_alice)
    answer = client.post(f"/admin/delivery/pushcontent/{content.pk}/change/", _form(content, **changes))
    assert answer.status_code == 200
    assert message in str(answer.context["adminform"].form.errors[field])
    assert "Hello" in answer.content.decode()  # the phones show the content as saved
    preview = client.post(
        f"/admin/delivery/pushcontent/{content.pk}/live-preview/", {**_form(content, **changes), "preview_locale": "fr"}
    )
    assert preview.status_code == 200 and "Hello" in preview.content.decode()
    assert PushContent.objects.get(pk=content.pk).version == content.version
