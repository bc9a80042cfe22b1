"""The push content page's live preview: the form as it stands, rendered without saving, for those who may see it."""

import re

import pytest

from accounts.services import access_grant
from audiences.models import Profile
from delivery.models import Dispatch, PushContent
from tests.factories import AppFactory, DeviceFactory, ProfileFactory
from tests.pages import form_token_of, listed_rows


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
    assert "The content does not render: the title: a filter failed on a value (ValueError)" in answer.content.decode()


def test_live_preview_of_a_broken_text_names_the_field_and_its_line(client, db, manager_alice):
    """The phones said "The content does not render: expected '}}', found end of file" as a body of
    three lines was typed, with no word of which field or line; saving named both. The place is
    said in the words the form's errors use ("the French title"), not by its path ("variants.fr.title")."""
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager_alice)
    url = f"/admin/delivery/pushcontent/{content.pk}/live-preview/"
    broken = "Your picks\nfor the {{ profile.attributes.plan | upcase\nSee you"
    answer = client.post(url, _form(content, body=broken)).content.decode().replace("&#x27;", "'")
    assert "The content does not render: the body: expected '}}', found end of file (line 2)" in answer
    french = _form(content, variants='{"fr": {"title": "{% if %}"}}', preview_locale="fr")
    answer = client.post(url, french).content.decode().replace("&#x27;", "'")
    assert "The content does not render: the French title: " in answer


def _saved_with(client, manager, changes):
    """Sale, in an app ``manager`` may write to, saved on its page with ``changes``: (content, answer)."""
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager, by=None)
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager)
    return content, client.post(f"/admin/delivery/pushcontent/{content.pk}/change/", _form(content, **changes))


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
    content, answer = _saved_with(client, manager_alice, changes)
    assert answer.status_code == 200
    assert message in str(answer.context["adminform"].form.errors[field])
    assert "Hello" in answer.content.decode()  # the phones show the content as saved
    preview = client.post(
        f"/admin/delivery/pushcontent/{content.pk}/live-preview/", {**_form(content, **changes), "preview_locale": "fr"}
    )
    assert preview.status_code == 200 and "Hello" in preview.content.decode()
    assert PushContent.objects.get(pk=content.pk).version == content.version


@pytest.mark.presses("delivery.pushcontent:send_test", "delivery.pushcontent:live_preview")
def test_a_profile_of_the_default_language_gets_the_default_texts_in_the_preview_and_on_the_phone(
    client, manager_alice, viewer_carol, pushsim_app, pushsim, django_capture_on_commit_callbacks
):
    """Texts written in English with a British variant: an American gets the English texts, not the
    British ones (the variant of another region comes only when the default is another language),
    and the preview of the default tab and of the profile show what the phone receives."""
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    access_grant(obj=pushsim_app, to=viewer_carol, by=None)
    content = PushContent.objects.create(
        app=pushsim_app,
        name="Sale",
        title="Color sale",
        body="Hi {{ profile.attributes.name }}",
        default_locale="en",
        variants={"en-GB": {"title": "Colour sale"}, "fr": {"title": "Soldes"}},
    )
    ProfileFactory(external_id="sam", locale="en-US", attributes={"name": "Sam"})
    american = DeviceFactory(profile=Profile.objects.get(external_id="sam"), app=pushsim_app, is_test=True)
    briton = DeviceFactory(profile=ProfileFactory(locale="en_GB"), app=pushsim_app, is_test=True, platform="android")
    preview_url = f"/admin/delivery/pushcontent/{content.pk}/live-preview/"
    form = _form(content, variants='{"en-GB": {"title": "Colour sale"}, "fr": {"title": "Soldes"}}')

    client.force_login(viewer_carol)  # a Viewer previews, and may not send a test
    default_tab = client.post(preview_url, {**form, "preview_locale": "en"}).content.decode()
    assert "Color sale" in default_tab and "Colour sale" not in default_tab
    assert client.post(
        "/admin/delivery/pushcontent/", {"action": "send_test", "_selected_action": [content.pk]}
    ).status_code in (200, 302, 403)
    assert not Dispatch.objects.exists()

    client.force_login(manager_alice)
    for_sam = client.post(preview_url, {**form, "preview_profile": "sam"}).content.decode()
    assert "Color sale" in for_sam and "Hi Sam" in for_sam
    asked = client.post("/admin/delivery/pushcontent/", {"action": "send_test", "_selected_action": [content.pk]})
    with django_capture_on_commit_callbacks(execute=True):  # the question's Yes
        answer = client.post(
            "/admin/delivery/pushcontent/",
            {
                "action": "send_test",
                "_selected_action": [content.pk],
                "post": "yes",
                "form_token": form_token_of(asked.content),
            },
        )
    assert answer.status_code == 302 and Dispatch.objects.get().kind == "test"
    received = {r["token"]: r for r in pushsim.state.recent(limit=10)}
    assert (received[american.token]["title"], received[american.token]["body"]) == ("Color sale", "Hi Sam")
    assert received[briton.token]["title"] == "Colour sale"


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"image_url": "https://cdn.example/spring sale.png"}, "image_url", "write a space as %20"),
        ({"tap_action": "url", "tap_url": "https:shop.example"}, "tap_url", "A web address needs a host"),
        ({"variants": '{"fr": {"title": "Salut"}, "FR": {"title": "Bonjour"}}'}, "variants", "are the same locale"),
        ({"variants": '{"en": {"title": "Hi"}}'}, "variants", "is the default locale (en)"),
        ({"default_locale": "english!"}, "default_locale", "is not a locale"),
        ({"ios_thread_id": "order-{{ context.order }}"}, "ios_thread_id", "Liquid is not rendered here"),
    ],
)
def test_a_link_or_locale_a_phone_would_misread_is_refused_on_its_field(
    client, db, manager_alice, changes, field, message
):
    content, answer = _saved_with(client, manager_alice, changes)
    assert answer.status_code == 200
    assert message in str(answer.context["adminform"].form.errors[field])
    content.refresh_from_db()
    assert (content.version, content.image_url, content.variants, content.default_locale) == (1, "", {}, "en")
    assert content.ios_thread_id == ""


def test_live_preview_for_an_external_id_holding_a_nul_shows_a_profile_without_attributes(client, db, manager_alice):
    """No profile's external id holds a NUL (PostgreSQL text cannot): the preview looks none up."""
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    ProfileFactory(external_id="zoe", attributes={"name": "Zoé"})
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager_alice)
    title = "Hi {{ profile.attributes.name | default: 'you' }}"
    url = f"/admin/delivery/pushcontent/{content.pk}/live-preview/"
    answer = client.post(url, {**_form(content, title=title), "preview_profile": "zoe\x00"})
    assert answer.status_code == 200 and "Hi you" in answer.content.decode()
    assert "Hi Zoé" in client.post(url, {**_form(content, title=title), "preview_profile": "zoe"}).content.decode()


def _saved_in_shop(client, manager, changes):
    """Sale, in the app Shop whose audience (profiles with a device of it) holds first_name and
    plan, saved by ``manager`` with ``changes``; a profile of another app holds tier: (content, warnings)."""
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager, by=None)
    DeviceFactory(app=shop, profile=ProfileFactory(attributes={"first_name": "Zoe", "plan": "gold"}))
    DeviceFactory(profile=ProfileFactory(attributes={"tier": "gold"}))  # another app's audience
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager)
    answer = client.post(f"/admin/delivery/pushcontent/{content.pk}/change/", _form(content, **changes))
    assert answer.status_code == 302
    content.refresh_from_db()
    return content, [str(m) for m in answer.wsgi_request._messages if m.level_tag == "warning"]


def test_saving_content_that_reads_a_misspelt_attribute_warns_with_the_closest_known_one(client, db, manager_alice):
    """A misspelt attribute renders empty for everyone: the save names it, where it is read, and
    the attribute meant; and saves (a later import may bring the attribute)."""
    changes = {
        "title": "Hi {{ profile.attributes.first_name }}",
        "body": "Your {{ profile.attributes.plan }} plan, {{ profile.attributes.tier }}",
        "variants": '{"fr": {"title": "Bonjour {{ profile.attributes.frist_name }}"}, '
        '"de": {"body": "Hallo {{ profile.attributes.frist_name }}"}}',
    }
    content, warnings = _saved_in_shop(client, manager_alice, changes)
    assert content.variants["fr"] == {"title": "Bonjour {{ profile.attributes.frist_name }}"}
    assert warnings == [
        # Held by another app's profiles alone, and like no known one: no suggestion.
        "No recent profile in Shop's audience has the attribute 'tier' (read in the body): "
        "it renders empty until one has it.",
        "No recent profile in Shop's audience has the attribute 'frist_name' (read in the French title "
        "and the German body): did you mean 'first_name'? It renders empty until one has it.",
    ]


def test_saving_content_that_reads_only_known_attributes_says_nothing(client, db, manager_alice):
    changes = {
        "title": "Hi {{ profile.attributes.first_name | default: 'there' }}",
        "data": '{"p": "{{ profile.attributes.plan }}"}',
    }
    assert _saved_in_shop(client, manager_alice, changes)[1] == []


def test_saving_content_that_reads_a_misspelt_attribute_with_a_default_warns_it_renders_the_default(
    client, db, manager_alice
):
    """A default hides the misspelling: everyone gets the default, which still deserves a word."""
    changes = {
        "title": "Hi {{ profile.attributes.frist_name | default: 'there' }}",
        "subtitle": "{% if profile.attributes.vipp %}VIP{% endif %}",
        "data": '{"plan": "{{ profile.attributes.plna | default: \'free\' }}"}',
    }
    warnings = _saved_in_shop(client, manager_alice, changes)[1]
    assert warnings == [
        "No recent profile in Shop's audience has the attribute 'frist_name' (read in the title): "
        "did you mean 'first_name'? It renders its default ('there') for everyone until one has it.",
        "No recent profile in Shop's audience has the attribute 'vipp' (read in the subtitle): "
        "it reads as empty (or renders its default) until one has it.",
        "No recent profile in Shop's audience has the attribute 'plna' (read in the custom data 'plan'): "
        "did you mean 'plan'? It renders its default ('free') for everyone until one has it.",
    ]


def test_the_delete_page_of_content_a_campaign_uses_names_no_campaign_its_reader_may_not_see(
    client, manager_alice, manager_mallory
):
    """Content granted without its app (as its creator keeps it): Django's confirmation listed a
    variant of a colleague's campaign the reader was never granted, share and all, and told of a
    campaign sending it only as a kind of object the reader "may not delete". Each is said as a
    segment's are: named to whom may see the campaign, without its name to anyone else."""
    from campaigns.services.lifecycle import campaign_create
    from campaigns.services.variants import VariantInput, campaign_variants_set
    from tests.factories import PushContentFactory, SegmentFactory

    app = AppFactory(name="Theirs")
    access_grant(obj=app, to=manager_mallory, by=None)
    segment = SegmentFactory(name="Everyone")
    access_grant(obj=segment, to=manager_mallory, by=None)
    sent, tested = PushContentFactory(app=app, name="Sent"), PushContentFactory(app=app, name="Tested")
    campaign = campaign_create(by=manager_mallory, name="Secret launch", app=app, segment=segment, content=sent)
    campaign_variants_set(
        campaign_id=campaign.pk,
        by=manager_mallory,
        variants=[VariantInput(content_id=sent.pk, share=60), VariantInput(content_id=tested.pk, share=40)],
    )
    for content in (sent, tested):
        access_grant(obj=content, to=manager_alice, by=None)  # the content, not its app

    client.force_login(manager_alice)
    for content, use in ((sent, "the content"), (tested, "a variant")):
        delete = f"/admin/delivery/pushcontent/{content.pk}/delete/"
        for page in (
            client.get(delete),
            client.post(
                "/admin/delivery/pushcontent/", {"action": "delete_selected", "_selected_action": [content.pk]}
            ),
        ):
            html = page.content.decode()
            assert page.status_code == 200
            assert "Secret launch" not in html and f"/admin/campaigns/campaign/{campaign.pk}/" not in html
            assert "Campaign variant" not in html and "(40%)" not in html
            assert f"{use} of a campaign you cannot see" in html
        client.post(delete, {"post": "yes"})
        assert PushContent.objects.filter(pk=content.pk).exists()

    client.force_login(manager_mallory)
    html = client.get(f"/admin/delivery/pushcontent/{tested.pk}/delete/").content.decode()
    assert "variant B of campaign &#x27;Secret launch&#x27;" in html
    html = client.get(f"/admin/delivery/pushcontent/{sent.pk}/delete/").content.decode()
    assert "the content of campaign &#x27;Secret launch&#x27;" in html


@pytest.mark.parametrize("may_see", [True, False])
def test_what_keeps_content_reads_each_campaign_s_visibility_once_however_many_variants_it_has(
    manager_alice, manager_mallory, may_see
):
    """A content held by many variants of one campaign: the campaign is read, and its visibility
    asked, once for all of them (the same number of queries for two variants as for six), and it is
    named only to a reader who may see it."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from campaigns.models import CampaignVariant
    from campaigns.services.lifecycle import campaign_create
    from delivery.services.contents import pushcontent_uses_described
    from tests.factories import PushContentFactory, SegmentFactory

    app = AppFactory(name="Theirs")
    access_grant(obj=app, to=manager_mallory, by=None)
    segment = SegmentFactory(name="Everyone")
    access_grant(obj=segment, to=manager_mallory, by=None)
    content = PushContentFactory(app=app, name="Sent")
    campaign = campaign_create(by=manager_mallory, name="Secret launch", app=app, segment=segment, content=content)
    reader = manager_mallory if may_see else manager_alice

    def described(variants: int) -> tuple[list[str], int]:
        CampaignVariant.objects.filter(campaign=campaign).delete()
        for number in range(1, variants + 1):
            CampaignVariant.objects.create(campaign=campaign, number=number, content=content, share=100 // variants)
        holders = list(CampaignVariant.objects.filter(campaign=campaign))  # as a ProtectedError gives them
        with CaptureQueriesContext(connection) as queries:
            uses = pushcontent_uses_described(objects=holders, by=reader)
        return uses, len(queries)

    described(1)  # the reader's role and groups, read once per user object
    few, few_queries = described(2)
    many, many_queries = described(6)
    assert many_queries == few_queries
    expected = "variant A of campaign 'Secret launch'" if may_see else "a variant of a campaign you cannot see"
    assert few[0] == many[0] == expected
    assert all("Secret launch" not in use for use in many) or may_see


def test_saving_content_reads_whether_its_app_sends_to_the_simulator_once(client, db, manager_alice):
    """The form judges an image over http on this machine by whether the app sends to the push
    simulator; the save it hands the content to was reading it again."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    shop = AppFactory(name="Shop", uses_simulator=True)
    access_grant(obj=shop, to=manager_alice, by=None)
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager_alice)
    image = "http://127.0.0.1:8000/static/delivery/demo/flash-sale.jpg"
    with CaptureQueriesContext(connection) as queries:
        answer = client.post(f"/admin/delivery/pushcontent/{content.pk}/change/", _form(content, image_url=image))
    assert answer.status_code == 302
    assert PushContent.objects.get(pk=content.pk).image_url == image
    where = [q["sql"].split(" WHERE ", 1)[1] for q in queries.captured_queries if " WHERE " in q["sql"]]
    assert sum('"delivery_app"."uses_simulator"' in sql for sql in where) == 1, where


def test_the_form_asks_to_correct_the_errors_when_one_field_holds_two(client, db, manager_alice):
    """Django's note counts the fields in error: two reserved keys in the custom data, both on that
    one field, read 'Please correct the error below.'; every admin form counts the errors."""
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    client.force_login(manager_alice)
    url = f"/admin/delivery/pushcontent/{content.pk}/change/"
    two = client.post(url, _form(content, data='{"aps": "x", "from": "y"}')).content.decode()
    assert "&#x27;aps&#x27; is a reserved data key." in two and "&#x27;from&#x27; is a reserved data key." in two
    assert "Please correct the errors below." in two and "Please correct the error below." not in two
    one = client.post(url, _form(content, data='{"aps": "x"}')).content.decode()
    assert "Please correct the error below." in one and "Please correct the errors below." not in one


def test_a_contents_page_names_what_sends_it_and_that_an_edit_needs_their_approval_again(
    client, manager_alice, manager_mallory
):
    """An edit of push content makes every campaign and journey sending it wait for a new approval
    before it sends it again, and its page did not say which: it names those still to send (as its
    content or a variant), counts those the reader may not see, and says what an edit does."""
    from campaigns.models import Campaign
    from campaigns.services.lifecycle import campaign_create
    from campaigns.services.variants import VariantInput, campaign_variants_set
    from tests.factories import PushContentFactory, SegmentFactory

    app = AppFactory(name="Shop")
    access_grant(obj=app, to=manager_alice, by=None)
    segment = SegmentFactory(name="Everyone")
    access_grant(obj=segment, to=manager_alice, by=None)
    sent, other = PushContentFactory(app=app, name="Sent"), PushContentFactory(app=app, name="Other")
    campaign_create(by=manager_alice, name="Spring sale", app=app, segment=segment, content=sent)
    tested = campaign_create(by=manager_alice, name="A/B launch", app=app, segment=segment, content=other)
    campaign_variants_set(
        campaign_id=tested.pk,
        by=manager_alice,
        variants=[VariantInput(content_id=other.pk, share=60), VariantInput(content_id=sent.pk, share=40)],
    )
    done = campaign_create(by=manager_alice, name="Last year", app=app, segment=segment, content=sent)
    Campaign.objects.filter(pk=done.pk).update(status="completed")

    client.force_login(manager_alice)
    page = client.get(f"/admin/delivery/pushcontent/{sent.pk}/change/").content.decode()
    text = " ".join(
        re.sub(r"<[^>]+>", " ", re.search(r'<div id="content-sent-by">(.*?)</div>', page, re.S).group(1)).split()
    )
    assert "campaign “Spring sale” (draft)" in text and "campaign “A/B launch” (draft)" in text
    assert "Last year" not in text
    assert "An edit of it (a renaming aside) reaches each of them only once approved for it." in text
    nobody = PushContentFactory(app=app, name="Unused")
    page = client.get(f"/admin/delivery/pushcontent/{nobody.pk}/change/").content.decode()
    assert "Nothing still to send sends it." in page
    # A colleague granted the content, not its app, reads the campaigns counted, not named.
    access_grant(obj=sent, to=manager_mallory, by=None)
    client.force_login(manager_mallory)
    page = client.get(f"/admin/delivery/pushcontent/{sent.pk}/change/").content.decode()
    assert "Spring sale" not in page and "2 campaigns you cannot see" in page


@pytest.mark.presses("delivery.pushcontent:live_preview")
def test_a_contents_own_previews_render_now_as_the_moment_they_are_shown(client, db, manager_alice):
    """A content is sent by campaigns at times of their own: its page shows it as of now (a
    campaign's previews show it as of the campaign's send)."""
    import datetime as dt

    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    body = "Your picks for {{ 'now' | date: '%A' }} are waiting."
    content = PushContent.objects.create(app=shop, name="Picks", title="Picks", body=body)
    today = f"Your picks for {dt.datetime.now(dt.UTC):%A} are waiting."
    client.force_login(manager_alice)
    page = client.get(f"/admin/delivery/pushcontent/{content.pk}/change/").content.decode()
    assert today in page and "as of its send" not in page
    live = client.post(f"/admin/delivery/pushcontent/{content.pk}/live-preview/", _form(content)).content.decode()
    assert today in live and "as of its send" not in live


def test_a_contents_own_preview_says_its_now_is_utc(client, db, manager_alice):
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    content = PushContent.objects.create(
        app=shop, name="Picks", title="Picks", body="Sent at {{ 'now' | date: '%z' }}."
    )
    client.force_login(manager_alice)
    page = client.get(f"/admin/delivery/pushcontent/{content.pk}/change/").content.decode()
    assert "Sent at +0000." in page
    live = client.post(f"/admin/delivery/pushcontent/{content.pk}/live-preview/", _form(content)).content.decode()
    assert "Sent at +0000." in live


def test_the_content_form_spells_url_and_time_to_live_as_they_are_said(client, db, manager_alice):
    """The form's labels read "Image url", "Tap url" and "Ttl seconds", the fields' names made words."""
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_alice, by=None)
    client.force_login(manager_alice)
    page = client.get("/admin/delivery/pushcontent/add/").content.decode()
    labels = dict(re.findall(r'<label[^>]*for="id_(\w+)">([^<]*)</label>', page))
    assert labels["image_url"] == "Image URL:"
    assert labels["tap_url"] == "Tap URL:"
    assert labels["ttl_seconds"] == "Time to live (seconds):"


def _errors_of(answer) -> dict[str, list[str]]:
    """The form's errors on the page: each field's messages, as shown."""
    form = answer.context["adminform"].form
    return {field: [error["message"] for error in errors] for field, errors in form.errors.get_json_data().items()}


def test_errors_under_a_field_read_in_words_without_the_code_of_their_place(client, db, manager_alice):
    """Each message began with its place's code ("body: Template error…", "android.color: …") under
    the field that says it already; a variant's or a custom data value's names it in words."""
    changes = {
        "body": "Hi {{ profile.attributes.name | upcasee }}",
        "android_color": "red",
        "variants": '{"de": {"title": "Hallo {{ profile.plan }}", "body": "Angebote"}}',
        "data": '{"order": "{{ context.order_id }"}',
    }
    content, answer = _saved_with(client, manager_alice, changes)
    assert answer.status_code == 200
    assert _errors_of(answer) == {
        "body": ["Unknown filter 'upcasee' (line 1)."],
        "android_color": ["A color is written #rrggbb."],
        "variants": [
            "The German title: Unknown profile field 'plan' (line 1): profiles have external_id, locale, "
            "timezone, attributes; write profile.attributes.plan for a custom attribute.",
        ],
        "data": ["The custom data 'order': Template error: expected '}}', found end of file (line 1)."],
    }
    assert PushContent.objects.get(pk=content.pk).version == content.version


def test_every_wrong_field_is_refused_on_the_first_save_and_nothing_is_saved(client, db, manager_alice):
    """One stage at a time: a bad locale hid the image URL and the color, and those a broken filter;
    a field the form refuses itself (custom data not text) hid them all. The marketer fixed one,
    saved, and found the next."""
    changes = {
        "body": "Hi {{ profile.attributes.name | upcasee }}",
        "image_url": "https://cdn.example/spring sale.png",
        "android_color": "red",
        "default_locale": "english!",
        "variants": '{"fr!": {"title": "Salut", "body": "Soldes", "image_url": "https://cdn.example/fr.png"}}',
        "data": '{"order": 1234}',
    }
    content, answer = _saved_with(client, manager_alice, changes)
    assert answer.status_code == 200
    assert _errors_of(answer) == {
        "body": ["Unknown filter 'upcasee' (line 1)."],
        "image_url": [
            "A URL holds no space, tab or line break (none before or after it either); write a space as %20."
        ],
        "android_color": ["A color is written #rrggbb."],
        "default_locale": ["'english!' is not a locale (e.g. en or en-US)."],
        "variants": ["'fr!' is not a locale (e.g. fr or fr-CA)."],
        "data": ["Custom data must map keys to strings."],
    }
    saved = PushContent.objects.get(pk=content.pk)
    assert (saved.version, saved.body, saved.image_url, saved.variants) == (content.version, "Spring sale", "", {})


def test_a_content_granted_alone_is_saved_with_its_app_kept_and_never_named(client, db, manager_alice, manager_mallory):
    """alice was granted mallory's content alone, not its app: the form's App offered only the apps
    she may see, so her edit was refused ("Select a valid choice"). Its app is kept, offered as "an
    app you have no access to (#3)", and the save's warnings say it by number; she may not move the
    content to another app she may not see."""
    shop, other = AppFactory(name="Shop"), AppFactory(name="Elsewhere")
    access_grant(obj=shop, to=manager_mallory, by=None)
    DeviceFactory(app=shop, profile=ProfileFactory(attributes={"first_name": "Zoe"}))
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    access_grant(obj=content, to=manager_alice, by=None)  # the content, not its app
    client.force_login(manager_alice)
    url = f"/admin/delivery/pushcontent/{content.pk}/change/"
    page = client.get(url).content.decode()
    assert f"an app you have no access to (#{shop.pk})" in page and "Shop" not in page

    answer = client.post(url, _form(content, title="Hi {{ profile.attributes.frist_name }}"), follow=True)
    html = answer.content.decode()
    content.refresh_from_db()
    assert (content.title, content.app_id) == ("Hi {{ profile.attributes.frist_name }}", shop.pk)
    assert f"No recent profile in app #{shop.pk}&#x27;s audience has the attribute &#x27;frist_name&#x27;" in html
    assert "Shop" not in html

    moved = client.post(url, _form(content, app=other.pk))
    assert moved.status_code == 200 and "app" in moved.context["adminform"].form.errors
    assert PushContent.objects.get(pk=content.pk).app_id == shop.pk


def test_the_apps_links_are_offered_only_to_a_reader_they_work_for(client, db, manager_alice, manager_mallory):
    """Beside the app kept on a content granted alone, its reader read Django's view link, asked of
    the app's admin without an object, and the app's page answered 404 to them; each link is shown
    only when the reader may use it on every choice the field offers."""
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_mallory, by=None)
    content = PushContent.objects.create(app=shop, name="Sale", title="Hello", body="Spring sale")
    access_grant(obj=content, to=manager_alice, by=None)  # the content, not its app
    url = f"/admin/delivery/pushcontent/{content.pk}/change/"
    client.force_login(manager_alice)
    assert client.get(f"/admin/delivery/app/{shop.pk}/change/").status_code == 404
    assert 'id="view_id_app"' not in client.get(url).content.decode()
    client.force_login(manager_mallory)
    assert 'id="view_id_app"' in client.get(url).content.decode()


def test_saving_a_content_requests_wait_on_warns_they_must_be_submitted_again(client, manager_alice, manager_mallory):
    """A campaign waiting for approval sends the content as it was submitted: a save of the content
    changes what it would send, and its request can no longer be approved as submitted (the approver
    is told it changed), yet the save said only that it was saved. It warns, naming the waiting
    requests the reader may see and counting the others, that they must be submitted again."""
    from django.contrib.messages import get_messages

    from campaigns.services.lifecycle import campaign_create, campaign_submit
    from tests.factories import PushContentFactory, SegmentFactory

    app = AppFactory(name="Shop")
    access_grant(obj=app, to=manager_alice, by=None)
    segment = SegmentFactory(name="Everyone")
    access_grant(obj=segment, to=manager_alice, by=None)
    sent = PushContentFactory(app=app, name="Sent", title="Hello", body="Spring sale")
    draft = campaign_create(by=manager_alice, name="Still a draft", app=app, segment=segment, content=sent)
    waiting = campaign_create(by=manager_alice, name="Spring sale", app=app, segment=segment, content=sent)
    hidden = campaign_create(by=manager_alice, name="Secret sale", app=app, segment=segment, content=sent)
    campaign_submit(campaign_id=waiting.pk, by=manager_alice)
    campaign_submit(campaign_id=hidden.pk, by=manager_alice)
    # mallory is granted the content and one of the campaigns waiting, not their app
    access_grant(obj=sent, to=manager_mallory, by=None)
    access_grant(obj=waiting, to=manager_mallory, by=None)

    client.force_login(manager_mallory)
    url = f"/admin/delivery/pushcontent/{sent.pk}/change/"
    response = client.post(url, _form(sent, title="Hello again"))
    assert response.status_code == 302
    said = [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]
    warnings = [text for level, text in said if level == "warning"]
    assert warnings == [
        "Campaign “Spring sale” and a campaign you cannot see wait for approval with this content as it was before "
        "this change: their approval would be refused. Each must be submitted again (its request cancelled "
        "or sent back for changes, then submitted) to be approved with it."
    ]
    assert "Still a draft" not in " ".join(warnings) and "Secret sale" not in " ".join(warnings)

    # A save changing nothing an approval covers (its name) warns of nothing.
    client.get(url)  # the messages above, read
    client.force_login(manager_alice)
    campaign_submit(campaign_id=draft.pk, by=manager_alice)
    response = client.post(url, _form(PushContent.objects.get(pk=sent.pk), name="Sent (renamed)"))
    assert response.status_code == 302
    assert [m for m in get_messages(response.wsgi_request) if m.level_tag == "warning"] == []


def test_the_list_sorted_by_app_does_not_place_a_content_by_an_app_its_reader_may_not_see(
    client, viewer_carol, admin_erin
):
    """Sorted by its App column (?o=), the list placed a content granted without its app among the
    reader's others by the name of the app it says by number: between "Alpha" and "Zulu", apps
    named letter by letter narrowed it down. That column is not sortable to whoever does not see
    every object; an Administrator still sorts by it."""
    from tests.factories import PushContentFactory

    contents = {}
    for name in ("Merger", "Alpha", "Zulu"):
        app = AppFactory(name=name)
        contents[name] = PushContentFactory(app=app, name=f"Hello from {name}")
        access_grant(obj=app if name != "Merger" else contents[name], to=viewer_carol, by=None)

    def order(user, sort: bool) -> list[int]:
        client.force_login(user)
        return [
            row.pk
            for row in listed_rows(client, "/admin/delivery/pushcontent/", sorted_by="app_shown" if sort else None)
        ]

    unsorted = order(viewer_carol, sort=False)
    assert sorted(unsorted) == sorted(c.pk for c in contents.values())
    assert order(viewer_carol, sort=True) == unsorted
    assert order(admin_erin, sort=True) == [contents[name].pk for name in ("Alpha", "Merger", "Zulu")]
