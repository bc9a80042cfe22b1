"""What an approver reads through a pending review (the app, segments and push contents it shows)
is read-only and reaches those pages alone: no write, no use in their own work, no read of other
objects through them. Only what is in their scope (their grants) does.

approver_pat holds the Approver and Manager roles and was granted manager_alice's campaign, not its
app, segment or content: he reads those while the campaign waits for his decision, and nothing more.
"""

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import ApprovalRequest, User
from accounts.selectors import in_scope, visible_to
from accounts.services import access_grant
from audiences.models import Import, Segment, SegmentReference
from audiences.rules.schema import RulesInvalid
from audiences.services.segments import segment_create
from campaigns.models import Campaign
from campaigns.services.lifecycle import campaign_approve, campaign_create, campaign_submit, campaign_update
from delivery.models import App, Delivery, Device, Dispatch, PushContent
from delivery.selectors import devices_visible_to
from delivery.services.contents import pushcontent_save
from delivery.services.devices import device_register
from journeys.models import Journey
from journeys.services.lifecycle import journey_create
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, PushContentFactory, SegmentFactory, UserFactory

ROUTE = "accounts.api_route.ApiRouteMiddleware"
IOS_TOKEN = "ab" * 32
EXIT_ONLY = {"steps": [{"id": "done", "type": "exit"}]}


@dataclass
class Review:
    app: App
    segment: Segment
    content: PushContent
    campaign: Campaign
    request: ApprovalRequest


@pytest.fixture
def approver_pat(db):
    """An Approver who is a Manager too: he may write what is in his scope."""
    pat = UserFactory(username="approver_pat", role="Approver")
    pat.groups.add(Group.objects.get(name="Manager"))
    return User.objects.get(pk=pat.pk)


@pytest.fixture
def review(manager_alice, approver_pat):
    """manager_alice's campaign in her app, granted to approver_pat alone (not its app, segment or
    content), waiting for his decision."""
    app = AppFactory(name="Alice's app")
    access_grant(obj=app, to=manager_alice, by=None)
    segment = SegmentFactory(name="Alice's buyers", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    content = PushContentFactory(app=app, name="Alice's promo")
    campaign = campaign_create(by=manager_alice, name="Promo", app=app, segment=segment, content=content)
    access_grant(obj=campaign, to=approver_pat, by=None)
    request = campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    return Review(app=app, segment=segment, content=content, campaign=campaign, request=request)


@pytest.fixture
def own_app(approver_pat):
    """An app of approver_pat's own."""
    app = AppFactory(name="Pat's app")
    access_grant(obj=app, to=approver_pat, by=None)
    return app


def test_the_approver_sees_what_the_review_shows_but_none_of_it_is_in_his_scope(approver_pat, review):
    for model, obj in ((App, review.app), (Segment, review.segment), (PushContent, review.content)):
        assert list(visible_to(approver_pat, model.objects.all())) == [obj]
        assert not in_scope(approver_pat, model.objects.all()).exists()


# --- review visibility still reads ----------------------------------------------------------------


def test_the_approver_reads_the_review_and_the_pages_of_its_app_segment_and_content(
    client, approver_pat, review, api_key_for
):
    client.force_login(approver_pat)
    page = client.get(f"/admin/accounts/approvalrequest/{review.request.pk}/review/")
    assert page.status_code == 200 and "Promo" in page.content.decode()
    for url, name in (
        (f"/admin/delivery/app/{review.app.pk}/change/", "Alice's app"),
        (f"/admin/audiences/segment/{review.segment.pk}/change/", "Alice's buyers"),
        (f"/admin/delivery/pushcontent/{review.content.pk}/change/", "Alice's promo"),
    ):
        page = client.get(url)
        assert page.status_code == 200, url
        assert name in page.content.decode().replace("&#x27;", "'")
        assert b'name="_save"' not in page.content  # read-only
    answer = api_key_for(approver_pat, scopes=["read"]).get(f"/api/v1/segments/{review.segment.pk}/")
    assert answer.status_code == 200 and answer.json()["name"] == "Alice's buyers"


def test_the_reviewed_apps_devices_stay_out_of_the_approvers_lists(client, approver_pat, review):
    DeviceFactory(profile=ProfileFactory(external_id="vic"), app=review.app, platform="ios", token=IOS_TOKEN)
    assert not devices_visible_to(approver_pat).exists()
    client.force_login(approver_pat)
    listing = client.get("/admin/delivery/device/")
    assert listing.status_code == 200 and list(listing.context["cl"].result_list) == []


# --- devices --------------------------------------------------------------------------------------


def test_devices_of_a_reviewed_app_are_not_written_by_its_approver(approver_pat, review, api_key_for):
    victim = DeviceFactory(profile=ProfileFactory(external_id="vic"), app=review.app, platform="ios", token=IOS_TOKEN)
    client = api_key_for(approver_pat, scopes=["ingest"])
    register = {"app": review.app.pk, "external_id": "pat", "platform": "android", "token": "t" * 30}
    assert client.post("/api/v1/devices/", register, format="json").status_code == 404
    opt_out = {"app": review.app.pk, "token": IOS_TOKEN, "push_enabled": False}
    assert client.post("/api/v1/devices/opt-in/", opt_out, format="json").status_code == 404
    unregister = {"app": review.app.pk, "token": IOS_TOKEN}
    assert client.post("/api/v1/devices/unregister/", unregister, format="json").status_code == 404
    with pytest.raises(PermissionDenied):
        device_register(app_id=review.app.pk, external_id="pat", platform="android", token="t" * 30, by=approver_pat)
    assert list(Device.objects.filter(app=review.app)) == [victim]
    victim.refresh_from_db()
    assert (victim.push_enabled, victim.active) == (True, True)


def test_devices_of_an_app_granted_to_the_approver_are_written(approver_pat, review, api_key_for):
    access_grant(obj=review.app, to=approver_pat, by=None)
    victim = DeviceFactory(profile=ProfileFactory(external_id="vic"), app=review.app, platform="ios", token=IOS_TOKEN)
    client = api_key_for(approver_pat, scopes=["ingest"])
    register = {"app": review.app.pk, "external_id": "pat", "platform": "android", "token": "t" * 30}
    assert client.post("/api/v1/devices/", register, format="json").status_code == 201
    opt_out = {"app": review.app.pk, "token": IOS_TOKEN, "push_enabled": False}
    assert client.post("/api/v1/devices/opt-in/", opt_out, format="json").json()["push_enabled"] is False
    unregister = {"app": review.app.pk, "token": IOS_TOKEN}
    assert client.post("/api/v1/devices/unregister/", unregister, format="json").json()["active"] is False
    assert Device.objects.filter(app=review.app, profile__external_id="pat", token="t" * 30).exists()
    victim.refresh_from_db()
    assert (victim.push_enabled, victim.active) == (False, False)


# --- triggers -------------------------------------------------------------------------------------


@pytest.fixture
def live_trigger_in_review(pushsim_app, manager_alice, approver_bob, approver_pat):
    """A live API-triggered campaign of alice's, granted to approver_pat (not its app), whose
    revision waits for a decision."""
    for user in (manager_alice, approver_bob):
        access_grant(obj=pushsim_app, to=user, by=None)
    content = PushContentFactory(app=pushsim_app, title="Shipped", body="On its way")
    campaign = campaign_create(
        by=manager_alice, name="Order shipped", app=pushsim_app, kind="api_triggered", purpose="transactional",
        content=content,
    )  # fmt: skip
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    campaign_approve(campaign_id=campaign.pk, by=approver_bob)
    access_grant(obj=campaign, to=approver_pat, by=None)
    campaign_update(campaign_id=campaign.pk, by=manager_alice, purpose="marketing")
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)
    return Campaign.objects.get(pk=campaign.pk)


@pytest.mark.parametrize("route", ["route", "view"])
def test_a_campaign_whose_app_the_approver_reads_through_a_review_is_not_triggered_by_him(
    route, live_trigger_in_review, approver_pat, pushsim_app, api_key_for, settings
):
    if route == "view":
        settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != ROUTE]
    zoe = ProfileFactory(external_id="zoe")
    DeviceFactory(profile=zoe, app=pushsim_app, platform="android")
    assert pushsim_app in visible_to(approver_pat, App.objects.all())  # the review shows it
    dispatches = Dispatch.objects.count()
    client = api_key_for(approver_pat, scopes=["trigger", "read"])
    url = f"/api/v1/campaigns/{live_trigger_in_review.pk}/trigger/"
    refused = client.post(url, {"recipients": [{"external_id": "zoe"}]}, format="json")
    assert refused.status_code == 403, refused.content
    assert "needs access to its app" in refused.json()["detail"]
    assert (refused.wsgi_request.resolver_match is None) is (route == "route")
    assert Dispatch.objects.count() == dispatches and not Delivery.objects.exists()

    access_grant(obj=pushsim_app, to=approver_pat, by=None)
    sent = api_key_for(approver_pat, scopes=["trigger", "read"]).post(
        url, {"recipients": [{"external_id": "zoe"}]}, format="json"
    )
    assert sent.status_code == 202, sent.content
    (delivery,) = sent.json()["deliveries"]
    assert Delivery.objects.get(pk=delivery["id"]).profile_id == zoe.pk


# --- imports --------------------------------------------------------------------------------------


def test_an_import_into_a_reviewed_segment_is_not_read_by_its_approver(
    manager_alice, approver_pat, api_key_for, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.MEDIA_ROOT = tmp_path / "media"
    upload = SimpleUploadedFile(
        "people.csv", b"external_id,email\nann,ann@x.test\n,bad@x.test\n", content_type="text/csv"
    )
    with django_capture_on_commit_callbacks(execute=True):
        answer = api_key_for(manager_alice, scopes=["ingest"]).post(
            "/api/v1/imports/", {"file": upload, "target": "new_segment", "segment_name": "VIPs"}, format="multipart"
        )
    record = Import.objects.get(pk=answer.json()["id"])
    assert record.segment.name == "VIPs" and record.error_bytes
    app = AppFactory(name="Alice's app")
    access_grant(obj=app, to=manager_alice, by=None)
    content = PushContentFactory(app=app)
    campaign = campaign_create(by=manager_alice, name="Promo", app=app, segment=record.segment, content=content)
    access_grant(obj=campaign, to=approver_pat, by=None)
    campaign_submit(campaign_id=campaign.pk, by=manager_alice)

    reader = api_key_for(approver_pat, scopes=["read"])
    assert reader.get(f"/api/v1/segments/{record.segment_id}/").json()["name"] == "VIPs"  # the review shows it
    assert reader.get(f"/api/v1/imports/{record.pk}/").status_code == 404
    assert reader.get(f"/api/v1/imports/{record.pk}/errors/").status_code == 404

    access_grant(obj=record.segment, to=approver_pat, by=None)
    reader = api_key_for(approver_pat, scopes=["read"])
    assert reader.get(f"/api/v1/imports/{record.pk}/").json()["id"] == record.pk
    errors = reader.get(f"/api/v1/imports/{record.pk}/errors/")
    assert errors.status_code == 200 and b"external_id" in b"".join(errors.streaming_content)


# --- campaigns, journeys, segments, contents ---------------------------------------------------------


def test_a_campaign_is_not_made_with_what_the_approver_reads_through_a_review(approver_pat, review, own_app):
    with pytest.raises(ValidationError) as refused:
        campaign_create(by=approver_pat, name="Mine", app=review.app, segment=review.segment, content=review.content)
    assert set(refused.value.message_dict) >= {"app", "content", "segment"}
    mine = PushContentFactory(app=own_app)
    with pytest.raises(ValidationError) as refused:
        campaign_create(by=approver_pat, name="Mine", app=own_app, segment=review.segment, content=mine)
    assert set(refused.value.message_dict) == {"segment"}
    assert not Campaign.objects.filter(owner=approver_pat).exists()

    access_grant(obj=review.segment, to=approver_pat, by=None)
    campaign = campaign_create(by=approver_pat, name="Mine", app=own_app, segment=review.segment, content=mine)
    assert Campaign.objects.get(pk=campaign.pk).segment == review.segment


def test_a_journey_is_not_made_with_what_the_approver_reads_through_a_review(approver_pat, review, own_app):
    with pytest.raises(ValidationError) as refused:
        journey_create(by=approver_pat, name="Mine", app=review.app, graph=EXIT_ONLY)
    assert set(refused.value.message_dict) == {"app"}
    with pytest.raises(ValidationError) as refused:
        journey_create(
            by=approver_pat, name="Mine", app=own_app, graph=EXIT_ONLY, entry_kind="segment",
            entry_segment=review.segment,
        )  # fmt: skip
    assert set(refused.value.message_dict) == {"entry_segment"}
    branch = {
        "steps": [
            {"id": "check", "type": "condition", "branches": [{"segment": review.segment.pk, "next": "done"}],
             "else": "done"},
            {"id": "done", "type": "exit"},
        ]
    }  # fmt: skip
    with pytest.raises(ValidationError, match=f"there is no segment {review.segment.pk} you may use"):
        journey_create(by=approver_pat, name="Mine", app=own_app, graph=branch, entry_kind="event", entry_event="x")
    assert not Journey.objects.filter(owner=approver_pat).exists()

    access_grant(obj=review.segment, to=approver_pat, by=None)
    journey = journey_create(
        by=approver_pat, name="Mine", app=own_app, graph=branch, entry_kind="segment", entry_segment=review.segment
    )
    assert journey.versions.get().entry_segment == review.segment


def test_a_segment_s_rules_do_not_name_what_the_approver_reads_through_a_review(approver_pat, review):
    for rules in ({"all": [{"segment": review.segment.pk}]}, {"all": [{"reachable": {"app": review.app.pk}}]}):
        with pytest.raises(RulesInvalid):
            segment_create(name="Mine", rules=rules, by=approver_pat)
    assert not Segment.objects.filter(created_by=approver_pat).exists()
    access_grant(obj=review.segment, to=approver_pat, by=None)
    mine = segment_create(name="Mine", rules={"all": [{"segment": review.segment.pk}]}, by=approver_pat)
    assert SegmentReference.objects.get(source=mine).target == review.segment


def test_push_content_is_not_written_in_an_app_the_approver_reads_through_a_review(approver_pat, review):
    with pytest.raises(PermissionDenied):
        pushcontent_save(content=PushContent(app=review.app, name="Mine", title="Hi", body="Yo"), by=approver_pat)
    assert not PushContent.objects.filter(created_by=approver_pat).exists()
    access_grant(obj=review.app, to=approver_pat, by=None)
    mine = pushcontent_save(content=PushContent(app=review.app, name="Mine", title="Hi", body="Yo"), by=approver_pat)
    assert PushContent.objects.get(pk=mine.pk).created_by == approver_pat


def test_the_forms_offer_only_what_is_in_the_approvers_scope(client, approver_pat, review, own_app):
    client.force_login(approver_pat)
    for url in ("/admin/campaigns/campaign/add/", "/admin/delivery/pushcontent/add/", "/admin/journeys/journey/add/"):
        choices = client.get(url).context["adminform"].form.fields["app"].queryset
        assert list(choices) == [own_app], url
    fields = client.get("/admin/campaigns/campaign/add/").context["adminform"].form.fields
    assert review.segment not in fields["segment"].queryset and review.content not in fields["content"].queryset
    meta = client.get("/admin/audiences/segment/add/").context["adminform"].form.fields["rules"].widget.meta
    assert review.segment.pk not in [s["id"] for s in meta["segments"]]
    assert [a["id"] for a in meta["apps"]] == [own_app.pk]


def test_the_journey_review_names_only_the_segments_and_apps_its_reader_may_see(manager_alice, approver_pat, review):
    """A condition's rules may use a segment and an app that the review does not show (they are not
    what the approver reads through it): its table of what the approval covers names them to who may
    see them, and reads "segment #12", "app #3" to the others, as the journey's conditions do."""
    from django.utils.html import escape

    from journeys.review import journey_review_html
    from journeys.services.lifecycle import journey_submit

    secret = SegmentFactory(name="Secret buyers", created_by=manager_alice)
    access_grant(obj=secret, to=manager_alice, by=None)
    other = AppFactory(name="Secret app")
    access_grant(obj=other, to=manager_alice, by=None)
    rules = {"all": [{"segment": secret.pk}, {"reachable": {"app": other.pk}}]}
    graph = {
        "steps": [
            {"id": "check", "type": "condition", "else": "done",
             "branches": [{"segment": review.segment.pk, "next": "done"}, {"rules": rules, "next": "done"}]},
            {"id": "done", "type": "exit"},
        ]
    }  # fmt: skip
    journey = journey_create(
        by=manager_alice, name="Onboarding", app=review.app, graph=graph, entry_kind="event", entry_event="signup"
    )
    access_grant(obj=journey, to=approver_pat, by=None)
    request = journey_submit(journey_id=journey.pk, by=manager_alice)
    journey = Journey.objects.get(pk=journey.pk)

    html = journey_review_html(journey, request=request, user=approver_pat)
    assert "Secret" not in html
    assert f"matches all of: member of segment #{secret.pk}; has an opted-in device on app #{other.pk}" in html
    assert f"segment #{secret.pk}: all of: locale is set" in html  # who the approval covers
    assert escape(f"in segment “{review.segment.name}”") in html  # what the review shows him

    html = journey_review_html(journey, request=request, user=manager_alice)
    assert "matches all of: member of “Secret buyers”; has an opted-in device on Secret app" in html


def test_the_journey_review_names_its_entry_segment_and_contents_only_to_a_reader_who_may_see_them(
    manager_alice, manager_mallory, review
):
    """The entry segment and the push contents a journey's review shows are named to whoever may see
    them; a colleague who submitted the journey, granted it alone, reads "segment #12" and
    "content #12", as the segments and apps of its conditions read (the pushes' texts are the
    journey's, and shown)."""
    from django.utils.html import escape

    from journeys.review import journey_review_html
    from journeys.services.lifecycle import journey_submit

    secret = SegmentFactory(name="Secret buyers", created_by=manager_alice)
    access_grant(obj=secret, to=manager_alice, by=None)
    promo = PushContentFactory(app=review.app, name="Secret promo", title="Hello there")
    graph = {
        "steps": [
            {"id": "hello", "type": "push", "content": promo.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = journey_create(
        by=manager_alice, name="Onboarding", app=review.app, graph=graph, entry_kind="segment", entry_segment=secret
    )
    access_grant(obj=journey, to=manager_mallory, by=None)
    request = journey_submit(journey_id=journey.pk, by=manager_mallory)
    journey = Journey.objects.get(pk=journey.pk)

    html = journey_review_html(journey, request=request, user=manager_mallory)
    assert "Secret" not in html
    assert f"Everyone in segment #{secret.pk}, read once" in html
    assert f"segment #{secret.pk}: 0 profiles" in html  # who enters
    assert f"content #{promo.pk}" in html and "Hello there" in html

    html = journey_review_html(journey, request=request, user=manager_alice)
    assert escape("Everyone in 'Secret buyers', read once") in html
    assert "Secret buyers: 0 profiles" in html and "Secret promo" in html


def test_the_campaign_review_names_its_segment_and_content_only_to_a_reader_who_may_see_them(
    manager_alice, manager_mallory, approver_pat, review
):
    """Who reads a campaign's review besides its deciders (a colleague granted the campaign alone,
    the approver once he decided) is told its audience's segment and its content by number, neither
    named nor linked, as a journey's review says them; its deciders and its owner read their names."""
    from django.utils.html import escape

    from campaigns.review import campaign_review_html

    access_grant(obj=review.campaign, to=manager_mallory, by=None)
    html = campaign_review_html(review.campaign, request=review.request, user=manager_mallory)
    assert "Alice&#x27;s buyers" not in html and "Alice's buyers" not in html
    assert "Alice&#x27;s promo" not in html and "Alice's promo" not in html
    assert f"segment #{review.segment.pk}: " in html and f"content #{review.content.pk}" in html
    assert f"/admin/audiences/segment/{review.segment.pk}/" not in html
    assert f"/admin/delivery/pushcontent/{review.content.pk}/" not in html

    for reader in (approver_pat, manager_alice):
        html = campaign_review_html(review.campaign, request=review.request, user=reader)
        assert escape("Alice's buyers: ") in html and escape("Alice's promo") in html
        assert f"/admin/audiences/segment/{review.segment.pk}/change/" in html


def test_a_campaign_page_read_only_names_its_content_only_to_a_reader_who_may_see_it(
    client, manager_alice, viewer_carol, review
):
    """A Viewer granted the campaign alone reads its content as "content #7", not named, not
    linked to a page that answers 404; granted the content, named and linked."""
    access_grant(obj=review.campaign, to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    url = f"/admin/campaigns/campaign/{review.campaign.pk}/change/"
    page = client.get(url).content.decode()
    assert "Alice&#x27;s promo" not in page and f"content #{review.content.pk}" in page
    assert f"/admin/delivery/pushcontent/{review.content.pk}/" not in page
    access_grant(obj=review.content, to=viewer_carol, by=None)
    page = client.get(url).content.decode()
    assert "Alice&#x27;s promo" in page and f"/admin/delivery/pushcontent/{review.content.pk}/change/" in page


def test_a_colleague_s_variant_rows_offer_the_contents_they_may_not_see_by_number(
    client, manager_alice, manager_mallory, review
):
    """manager_mallory was granted alice's draft, not its app: its variants' rows keep alice's
    contents as "a push content you have no access to (#7)", and its phones say each variant's
    "content #7", never its name; alice reads the names."""
    from campaigns.services.variants import VariantInput, campaign_variants_set

    other = PushContentFactory(app=review.app, name="Alice's other promo")
    campaign = campaign_create(
        by=manager_alice, name="Draft", app=review.app, segment=review.segment, content=review.content
    )
    campaign_variants_set(
        campaign_id=campaign.pk,
        by=manager_alice,
        variants=[VariantInput(content_id=review.content.pk, share=50), VariantInput(content_id=other.pk, share=50)],
    )
    access_grant(obj=campaign, to=manager_mallory, by=None)
    client.force_login(manager_mallory)
    page = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "promo" not in text
    assert f"a push content you have no access to (#{other.pk})" in text
    assert f"Variant B — content #{other.pk} (50%)" in text
    client.force_login(manager_alice)
    text = client.get(f"/admin/campaigns/campaign/{campaign.pk}/change/").content.decode()
    assert "Variant B — Alice&#x27;s other promo (50%)" in text


def _sent(review, approver_pat, *, variants: bool) -> Dispatch:
    """The review's campaign approved and sent now, its send returned; with ``variants``, a campaign
    of alice's sending "Alice's promo" and "Alice's other promo" as variants A and B, and a holdout."""
    from campaigns.services.scheduling import campaign_fire_due
    from campaigns.services.variants import VariantInput, campaign_variants_set

    campaign = review.campaign
    if variants:
        other = PushContentFactory(app=review.app, name="Alice's other promo", title="Second hello", body="Also today")
        campaign = campaign_create(
            by=review.campaign.owner, name="Split", app=review.app, segment=review.segment, content=review.content
        )
        campaign_variants_set(
            campaign_id=campaign.pk,
            by=review.campaign.owner,
            variants=[
                VariantInput(content_id=review.content.pk, share=45),
                VariantInput(content_id=other.pk, share=45),
            ],
            holdout_share=10,
        )
        access_grant(obj=campaign, to=approver_pat, by=None)
        campaign_submit(campaign_id=campaign.pk, by=review.campaign.owner)
    campaign_approve(campaign_id=campaign.pk, by=approver_pat)
    campaign_fire_due(campaign_id=campaign.pk)
    return Dispatch.objects.get(kind=Dispatch.Kind.CAMPAIGN, source_id=campaign.pk)


def test_a_send_s_page_shows_what_it_sent_as_phones_naming_its_content_only_to_a_reader_who_may_see_it(
    client, manager_alice, viewer_carol, approver_pat, review
):
    """The send's page shows its frozen content as phones: its owner reads its title, body and its
    content's name; a Viewer granted the campaign alone reads the text it sent (the campaign's,
    which its page shows him too) and "content #7" for its content, never the name."""
    dispatch = _sent(review, approver_pat, variants=False)
    review.content.title = "Changed since"
    review.content.save(update_fields=["title"])
    url = f"/admin/delivery/dispatch/{dispatch.pk}/change/"
    client.force_login(manager_alice)
    page = client.get(url).content.decode()
    assert "Content sent" in page and "As JSON" in page
    assert review.content.body in page and "Changed since" not in page  # the frozen copy, not the content now
    assert "Hello there" in page  # its title as a phone shows it
    assert "Alice&#x27;s promo" in page and "Alice&#x27;s app" in page

    access_grant(obj=Campaign.objects.get(pk=review.campaign.pk), to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    page = client.get(url)
    assert page.status_code == 200
    page = page.content.decode()
    assert "Content sent" in page and "Hello there" in page and review.content.body in page
    assert "Alice&#x27;s promo" not in page and "Alice's promo" not in page
    assert f"content #{review.content.pk}" in page and f"app #{review.app.pk}" in page


def test_a_send_s_page_shows_each_variant_it_sent_naming_its_content_only_to_a_reader_who_may_see_it(
    client, manager_alice, viewer_carol, approver_pat, review
):
    """Each frozen variant is shown under its label and share, its content named to its owner and
    "content #7" to a Viewer granted the campaign alone, who reads what each variant sent."""
    dispatch = _sent(review, approver_pat, variants=True)
    other = dispatch.variants[1]["content_id"]
    url = f"/admin/delivery/dispatch/{dispatch.pk}/change/"
    client.force_login(manager_alice)
    page = client.get(url).content.decode()
    assert "Variant A — Alice&#x27;s promo (45%)" in page and "Variant B — Alice&#x27;s other promo (45%)" in page
    assert "Second hello" in page and "Holdout: 10%" in page

    access_grant(obj=Campaign.objects.get(pk=dispatch.source_id), to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    page = client.get(url).content.decode()
    assert "promo" not in page
    assert f"Variant A — content #{review.content.pk} (45%)" in page and f"Variant B — content #{other} (45%)" in page
    assert "Second hello" in page and "Also today" in page


def test_a_delivery_s_page_links_its_device_only_for_a_reader_who_may_open_the_device_s_page(
    client, manager_alice, viewer_carol, approver_pat, review
):
    """A Viewer granted the campaign alone reads its send's rows and each one's device ("iOS …1234"),
    not linked to the device's page, which answers him 404 (its app is not his); its owner follows it."""
    dispatch = _sent(review, approver_pat, variants=False)
    device = DeviceFactory(app=review.app, platform="ios", token=IOS_TOKEN)
    row = Delivery.objects.create(dispatch=dispatch, device=device, profile=device.profile, status="accepted")
    url = f"/admin/delivery/delivery/{row.pk}/change/"
    device_url = f"/admin/delivery/device/{device.pk}/change/"
    client.force_login(manager_alice)
    page = client.get(url).content.decode()
    assert f'<a href="{device_url}">{device}</a>' in page
    assert client.get(device_url).status_code == 200

    access_grant(obj=Campaign.objects.get(pk=review.campaign.pk), to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    page = client.get(url)
    assert page.status_code == 200
    page = page.content.decode()
    assert str(device) in page and device_url not in page
    assert client.get(device_url).status_code == 404
