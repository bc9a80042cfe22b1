"""Image and tap URLs of push content: only allowed schemes, written out, in every variant and every way in."""

import pytest
from django.core.exceptions import ValidationError

from accounts.services import access_grant
from delivery.models import PushContent
from delivery.services.contents import pushcontent_save

HOSTILE = [
    "javascript:alert(document.cookie)",
    "JavaScript:alert(1)",
    "  javascript:alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "http://plain.example/a.png",
    "{{ context.url }}",
    "//evil.example/a.png",
]


@pytest.fixture
def app(pushsim_app, manager_alice):
    """An app in alice's scope: what these saves need (the admin form's test takes ``world``)."""
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    return pushsim_app


@pytest.mark.parametrize("url", HOSTILE)
@pytest.mark.parametrize("field", ["image_url", "tap_url"])
def test_a_url_outside_the_allow_list_is_refused(app, manager_alice, url, field):
    extra = {"tap_action": "url"} if field == "tap_url" else {}
    content = PushContent(app=app, name="Bad", title="Hi", body="Body", **extra, **{field: url})
    with pytest.raises(ValidationError) as exc:
        pushcontent_save(content=content, by=manager_alice)
    assert field in str(exc.value)
    assert not PushContent.objects.filter(name="Bad").exists()


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:,x", "{{ context.link }}"])
def test_a_deep_link_outside_the_allow_list_is_refused(app, manager_alice, url):
    content = PushContent(app=app, name="Bad", title="Hi", body="Body", tap_action="deep_link", tap_url=url)
    with pytest.raises(ValidationError):
        pushcontent_save(content=content, by=manager_alice)


def test_a_locale_variant_cannot_smuggle_a_hostile_url(app, manager_alice):
    content = PushContent(
        app=app,
        name="Bad",
        title="Hi",
        body="Body",
        variants={"fr": {"image_url": "javascript:alert(1)"}},
    )
    with pytest.raises(ValidationError) as exc:
        pushcontent_save(content=content, by=manager_alice)
    assert "image_url" in str(exc.value)


def test_a_forged_admin_post_with_a_hostile_url_saves_nothing(client, world, manager_alice):
    client.force_login(manager_alice)
    content = world["delivery.pushcontent"]
    response = client.get(f"/admin/delivery/pushcontent/{content.pk}/change/")
    form = response.context["adminform"].form
    data = {
        name: ("" if value is None else value) for name, value in form.initial.items() if not isinstance(value, dict)
    }
    data.update({"name": content.name, "title": "Hi", "body": "Body", "image_url": "javascript:alert(1)"})
    response = client.post(f"/admin/delivery/pushcontent/{content.pk}/change/", data)
    content.refresh_from_db()
    assert content.image_url == ""
    assert response.status_code == 200


def test_https_with_a_personalised_path_is_allowed(app, manager_alice):
    content = PushContent(
        app=app,
        name="Good",
        title="Hi",
        body="Body",
        image_url="https://cdn.example/{{ profile.external_id }}.png",
        tap_action="deep_link",
        tap_url="pushdesk://orders/{{ context.order }}",
    )
    pushcontent_save(content=content, by=manager_alice)
    assert PushContent.objects.filter(name="Good").exists()
