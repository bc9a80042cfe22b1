"""The admin of the send pipeline: content with previews and test sends, dispatches, deliveries, devices."""

import datetime as dt
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.services import access_grant
from delivery.admin.devices import token_shortened
from delivery.models import Delivery, Dispatch, PushContent
from delivery.services.dispatches import dispatch_recount
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, PushContentFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def app(manager_alice, viewer_carol):
    app = AppFactory()
    access_grant(obj=app, to=manager_alice, by=None)
    access_grant(obj=app, to=viewer_carol, by=None)
    return app


def content_form(app, **changes) -> dict:
    data = {
        "app": app.pk,
        "name": "Spring sale",
        "title": "Hi {{ profile.attributes.first_name | default: 'there' }}",
        "subtitle": "",
        "body": "Sale starts today",
        "image_url": "",
        "tap_action": "open_app",
        "tap_url": "",
        "data": "{}",
        "ios_sound": "default",
        "ios_badge": "",
        "ios_category": "",
        "ios_thread_id": "",
        "ios_interruption_level": "",
        "android_channel_id": "",
        "android_icon": "",
        "android_color": "",
        "android_priority": "high",
        "ttl_seconds": "3600",
        "collapse_key": "",
        "default_locale": "en",
        "variants": "{}",
    }
    data.update(changes)
    return data


def test_manager_writes_content_through_the_admin(client, manager_alice, app):
    client.force_login(manager_alice)
    response = client.post(reverse("admin:delivery_pushcontent_add"), content_form(app))
    assert response.status_code == 302, response.context["adminform"].form.errors
    content = PushContent.objects.get()
    assert content.created_by == manager_alice and content.version == 1


def test_bad_template_is_shown_on_its_field_and_nothing_is_saved(client, manager_alice, app):
    client.force_login(manager_alice)
    response = client.post(reverse("admin:delivery_pushcontent_add"), content_form(app, body="Hi {{ user.name }}"))
    assert response.status_code == 200
    assert "Unknown variable" in str(response.context["adminform"].form.errors["body"])
    assert not PushContent.objects.exists()


def test_a_fixed_loop_past_the_limit_is_refused_on_its_field(client, manager_alice, app):
    client.force_login(manager_alice)
    body = "Hi {{ profile.attributes.name }} {% for i in (1..40) %}*{% endfor %}"
    response = client.post(reverse("admin:delivery_pushcontent_add"), content_form(app, body=body))
    assert response.status_code == 200
    assert "A loop here runs more than 20 times" in str(response.context["adminform"].form.errors["body"])
    assert not PushContent.objects.exists()


def test_oversize_variant_is_refused_on_the_variants_field(client, manager_alice, app):
    client.force_login(manager_alice)
    response = client.post(
        reverse("admin:delivery_pushcontent_add"), content_form(app, variants='{"de": {"body": "' + "x" * 4200 + '"}}')
    )
    assert response.status_code == 200
    assert "over the 4,096-byte limit" in str(response.context["adminform"].form.errors["variants"])


def test_previews_render_for_the_chosen_profile(client, manager_alice, app):
    content = PushContentFactory(app=app, image_url="https://img.example/a.png")
    ProfileFactory(external_id="zoe", attributes={"first_name": "Zoé"})
    client.force_login(manager_alice)
    url = reverse("admin:delivery_pushcontent_change", args=[content.pk])
    page = client.get(url + "?preview_profile=zoe").content.decode()
    assert "Hello Zoé" in page and "iOS" in page and "Android" in page
    assert "Hello there" in client.get(url).content.decode()


def _send_test(client, pks: list[int], **more):
    """The list's Send a test pressed on ``pks``; its Yes (``post="yes"``) answered on the question a
    person reads first, carrying the question's one-time token unless ``form_token`` is given."""
    press = {"action": "send_test", "_selected_action": pks}
    if more.get("post") == "yes" and "form_token" not in more:
        more["form_token"] = _send_test_token(client, pks)
    return client.post(reverse("admin:delivery_pushcontent_changelist"), {**press, **more}, follow=True)


def _messages(response) -> str:
    """The messages a page shows, as one text."""
    return " ".join(str(message) for message in response.context["messages"])


def _send_test_token(client, pks: list[int]) -> str:
    """The one-time token of the question Send a test asks first, as the page draws it."""
    from tests.pages import form_token_of

    return form_token_of(_send_test(client, pks).content)


@pytest.mark.presses("delivery.pushcontent:send_test")
def test_test_send_action_creates_a_test_dispatch(client, manager_alice, app, django_capture_on_commit_callbacks):
    content = PushContentFactory(app=app)
    client.force_login(manager_alice)
    # Without a test device the test is refused, saying what to do: a send to nobody read as sent.
    answer = _send_test(client, [content.pk], post="yes")
    assert "has no active test device" in answer.content.decode() and not Dispatch.objects.exists()
    # Said as a sentence, not as the field's errors in Python's words ("{'audience': [...]}").
    assert re.search(r": '[^']+' has no active test device: an Administrator marks", _messages(answer))
    DeviceFactory(app=app, is_test=True)
    asked = _send_test(client, [content.pk])  # asked first: nothing sent yet
    assert "Send a test of 1 push content?" in asked.content.decode() and not Dispatch.objects.exists()
    # Its breadcrumbs end with what is asked, not a verb cut at "of".
    crumbs = re.search(r'<div class="breadcrumbs">(.*?)</div>', asked.content.decode(), re.S).group(1)
    assert crumbs.rstrip().endswith("&rsaquo; Send a test of push content"), crumbs
    with django_capture_on_commit_callbacks(execute=False):
        response = _send_test(client, [content.pk], post="yes")
    assert response.redirect_chain[0][1] == 302
    assert Dispatch.objects.get().kind == "test"


@pytest.mark.presses("delivery.pushcontent:send_test")
def test_send_a_test_answered_twice_on_one_question_sends_once_and_links_the_first(
    client, manager_alice, pushsim_app, pushsim, django_capture_on_commit_callbacks
):
    """A double click posts the question's Yes twice: the second sends nothing and links the test send."""
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    content = PushContentFactory(app=pushsim_app, name="Sale", title="Spring sale")
    testers = [DeviceFactory(app=pushsim_app, is_test=True, platform=p) for p in ("ios", "android")]
    client.force_login(manager_alice)
    token = _send_test_token(client, [content.pk])
    with django_capture_on_commit_callbacks(execute=True):
        first = _send_test(client, [content.pk], post="yes", form_token=token)
        again = _send_test(client, [content.pk], post="yes", form_token=token)
    (dispatch,) = Dispatch.objects.filter(kind="test")
    link = f'<a href="/admin/delivery/dispatch/{dispatch.pk}/change/">'
    assert link in first.content.decode()
    page = again.content.decode()
    assert again.status_code == 200 and "This test send was started already" in page
    assert "Nothing was sent again" in page and link in page
    for tester in testers:
        assert pushsim.state.count(tester.token) == 1, tester.platform


@pytest.mark.presses("delivery.pushcontent:send_test")
def test_send_a_test_answered_on_two_questions_sends_twice(client, manager_alice, app):
    content = PushContentFactory(app=app)
    DeviceFactory(app=app, is_test=True)
    client.force_login(manager_alice)
    for _ in range(2):
        _send_test(client, [content.pk], post="yes")
    assert Dispatch.objects.filter(kind="test").count() == 2


@pytest.mark.presses("delivery.pushcontent:send_test")
def test_send_a_test_of_several_answered_twice_links_each_first_send(client, manager_alice, app):
    sale, news = PushContentFactory(app=app, name="Sale"), PushContentFactory(app=app, name="News")
    DeviceFactory(app=app, is_test=True)
    client.force_login(manager_alice)
    token = _send_test_token(client, [sale.pk, news.pk])
    _send_test(client, [sale.pk, news.pk], post="yes", form_token=token)
    _send_test(client, [sale.pk], post="yes")  # a later question's send of one of them
    page = _send_test(client, [sale.pk, news.pk], post="yes", form_token=token).content.decode()
    *firsts, later = Dispatch.objects.filter(kind="test").order_by("pk")
    assert {d.content_id for d in firsts} == {sale.pk, news.pk} and later.content_id == sale.pk
    assert "This test send was started already" in page
    for dispatch in firsts:
        assert f'<a href="/admin/delivery/dispatch/{dispatch.pk}/change/">' in page
    assert f"/admin/delivery/dispatch/{later.pk}/change/" not in page
    assert Dispatch.objects.filter(kind="test").count() == 3


def test_a_content_granted_alone_names_no_app_its_reader_may_not_see(client, manager_alice, manager_mallory):
    """alice was granted mallory's content alone, not its app: the content list's App column and
    the page's phones (their app line) named it; they say it by number ("app #3"), as a campaign
    granted alone says its app, and by name to whoever may see it."""
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_mallory, by=None)
    content = PushContentFactory(app=shop, name="Teaser")
    access_grant(obj=content, to=manager_alice, by=None)
    client.force_login(manager_alice)
    listed = client.get(reverse("admin:delivery_pushcontent_changelist")).content.decode()
    page = client.get(reverse("admin:delivery_pushcontent_change", args=[content.pk])).content.decode()
    preview = client.post(
        reverse("admin:delivery_pushcontent_live_preview", args=[content.pk]), content_form(shop, name="Teaser")
    ).content.decode()
    for html in (listed, page, preview):
        assert "Teaser" in html or html is preview
        assert f"app #{shop.pk}" in html and "Shop" not in html
    client.force_login(manager_mallory)
    assert ">Shop<" in client.get(reverse("admin:delivery_pushcontent_changelist")).content.decode()
    assert "Shop" in client.get(reverse("admin:delivery_pushcontent_change", args=[content.pk])).content.decode()


@pytest.mark.presses("delivery.pushcontent:send_test")
def test_send_a_test_asks_first_saying_how_many_phones_it_reaches(client, manager_alice, app):
    """Its question said "its app's test devices" whether that was one QA phone or a thousand
    customers' phones: it says how many phones each test send reaches (active test devices)."""
    other = AppFactory()
    access_grant(obj=other, to=manager_alice, by=None)
    first, second = PushContentFactory(app=app), PushContentFactory(app=other)
    for device_app, count in ((app, 3), (other, 1)):
        for _ in range(count):
            DeviceFactory(app=device_app, is_test=True)
    DeviceFactory(app=app, is_test=True, active=False)  # a dead phone gets nothing: not counted
    DeviceFactory(app=app)  # not a test device
    client.force_login(manager_alice)
    page = _send_test(client, [first.pk]).content.decode()
    assert "It reaches 3 phones: the active test devices of its app." in page
    page = _send_test(client, [first.pk, second.pk]).content.decode()
    assert "They reach 4 phones in all: each its app&#x27;s active test devices." in page
    assert not Dispatch.objects.exists()


@pytest.mark.presses("delivery.pushcontent:send_test")
def test_a_test_send_to_more_test_devices_than_the_cap_is_refused_saying_how_many(client, manager_alice, app, settings):
    """A test send is unapproved content: one to a test list grown to thousands of phones would be
    a campaign nobody approved. Past PUSHDESK_TEST_SEND_MAX_DEVICES it is refused, nothing sent."""
    settings.PUSHDESK_TEST_SEND_MAX_DEVICES = 2
    content = PushContentFactory(app=app)
    testers = [DeviceFactory(app=app, is_test=True) for _ in range(3)]
    DeviceFactory(app=app, is_test=True, active=False)  # a dead phone gets nothing: not counted
    client.force_login(manager_alice)
    said = _messages(_send_test(client, [content.pk], post="yes"))
    assert "has 3 active test devices, more than a test send reaches (2, PUSHDESK_TEST_SEND_MAX_DEVICES)" in said
    assert not Dispatch.objects.exists()
    testers[0].is_test = False
    testers[0].save(update_fields=["is_test"])
    assert "test sent" in _messages(_send_test(client, [content.pk], post="yes"))
    assert Dispatch.objects.filter(kind=Dispatch.Kind.TEST).count() == 1


@pytest.mark.presses("delivery.pushcontent:send_test")
def test_a_test_send_refused_for_want_of_test_devices_names_no_app_its_presser_may_not_see(
    client, manager_alice, manager_mallory
):
    """alice was granted mallory's content alone, not its app (its page says "app #3"): the refusal
    of its test send named the app ("'Shop' has no active test device"); it says it by number."""
    shop = AppFactory(name="Shop")
    access_grant(obj=shop, to=manager_mallory, by=None)
    content = PushContentFactory(app=shop)
    access_grant(obj=content, to=manager_alice, by=None)
    client.force_login(manager_alice)
    said = _messages(_send_test(client, [content.pk], post="yes"))
    assert f"app #{shop.pk} has no active test device" in said and "Shop" not in said
    assert not Dispatch.objects.exists()
    client.force_login(manager_mallory)
    assert "'Shop' has no active test device" in _messages(_send_test(client, [content.pk], post="yes"))


@pytest.mark.presses("delivery.pushcontent:send_test")
def test_send_a_test_refused_then_answered_again_says_it_sent_nothing(client, manager_alice, app):
    content = PushContentFactory(app=app)  # its app has no test device: refused, saying why
    client.force_login(manager_alice)
    token = _send_test_token(client, [content.pk])
    first = _send_test(client, [content.pk], post="yes", form_token=token).content.decode()
    DeviceFactory(app=app, is_test=True)
    again = _send_test(client, [content.pk], post="yes", form_token=token).content.decode()
    assert "has no active test device" in first
    assert "was asked already" in again and "sent nothing" in again and "try again" in again
    assert not Dispatch.objects.exists()


@pytest.mark.parametrize("token", ["", "forged", "other content's"])
def test_send_a_test_without_its_questions_token_is_asked_again_saying_so(client, manager_alice, app, token):
    content, other = PushContentFactory(app=app), PushContentFactory(app=app)
    DeviceFactory(app=app, is_test=True)
    client.force_login(manager_alice)
    if token == "other content's":
        token = _send_test_token(client, [other.pk])
    answer = _send_test(client, [content.pk], post="yes", form_token=token)
    page = answer.content.decode()
    assert answer.status_code == 200 and "nothing was done" in page
    assert "Send a test of 1 push content?" in page and 'name="form_token"' in page  # asked again
    assert not Dispatch.objects.exists()


def make_dispatch(app, n=3) -> Dispatch:
    dispatch = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="sending", label="Run 1")
    for i in range(n):
        device = DeviceFactory(app=app)
        Delivery.objects.create(
            dispatch=dispatch, device=device, profile=device.profile, status="accepted" if i else "failed", reason=""
        )
    return dispatch_recount(dispatch_id=dispatch.pk)


def test_dispatch_page_shows_progress_and_outcomes(client, viewer_carol, app):
    dispatch = make_dispatch(app)
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_dispatch_change", args=[dispatch.pk])).content.decode()
    assert "Outcomes by reason" in page and "accepted" in page
    assert "location.reload" in page  # live while sending


def test_dispatch_and_delivery_lists_are_cheap(client, viewer_carol, app, django_assert_max_num_queries):
    dispatch = make_dispatch(app, n=20)
    client.force_login(viewer_carol)
    with django_assert_max_num_queries(15):
        assert client.get(reverse("admin:delivery_dispatch_changelist")).status_code == 200
    with django_assert_max_num_queries(15):
        url = reverse("admin:delivery_delivery_changelist") + f"?dispatch__id__exact={dispatch.pk}"
        assert client.get(url).status_code == 200


NINE_IN_NEW_YORK = dt.datetime(2027, 1, 5, 14, 0, tzinfo=dt.UTC)  # 09:00 in New York, 15:00 in Paris


def sent_by_each_source(app, owner, *, runs=1) -> dict[str, list[Dispatch]]:
    """Finished dispatches of a campaign in New York, a local-time campaign in Paris, a journey and
    a test send, ``runs`` of each, all created at 09:00 in New York and finished 30 minutes later."""
    from campaigns.models import Campaign
    from journeys.models import Journey, JourneyVersion

    content = PushContentFactory(app=app)
    new_york = Campaign.objects.create(
        name="NY sale", app=app, content=content, kind="scheduled", owner=owner, time_zone="America/New_York"
    )
    paris = Campaign.objects.create(
        name="Paris morning",
        app=app,
        content=content,
        kind="scheduled",
        owner=owner,
        time_zone="Europe/Paris",
        schedule_kind="at",
        send_at=NINE_IN_NEW_YORK,
        at_local_time=True,
    )
    journey = Journey.objects.create(name="Onboarding", app=app, owner=owner)
    version = JourneyVersion.objects.create(journey=journey, number=1)
    sources = {
        "new_york": ("campaign", new_york.pk),
        "paris": ("campaign", paris.pk),
        "journey": ("journey", version.pk),
        "test": ("test", content.pk),
    }
    made = {}
    for name, (kind, source_id) in sources.items():
        made[name] = [
            Dispatch.objects.create(
                app=app,
                kind=kind,
                source_id=source_id,
                content_spec={},
                status="done",
                label=f"{name} {run}",
                created_at=NINE_IN_NEW_YORK,
                started_at=NINE_IN_NEW_YORK,
                finished_at=NINE_IN_NEW_YORK + dt.timedelta(minutes=30),
            )
            for run in range(runs)
        ]
    return made


def test_dispatch_pages_show_their_times_in_the_campaigns_zone_named(client, viewer_carol, app, manager_alice):
    made = sent_by_each_source(app, manager_alice)
    client.force_login(viewer_carol)
    shown = {
        "new_york": ("2027-01-05 09:00 (America/New_York)", "2027-01-05 09:30 (America/New_York)"),
        "paris": ("2027-01-05 15:00 (Europe/Paris)", "2027-01-05 15:30 (Europe/Paris)"),
        "journey": ("2027-01-05 14:00 (UTC)", "2027-01-05 14:30 (UTC)"),  # a journey has no zone of its own
        "test": ("2027-01-05 14:00 (UTC)", "2027-01-05 14:30 (UTC)"),
    }
    listing = client.get(reverse("admin:delivery_dispatch_changelist")).content.decode()
    for name, (started, finished) in shown.items():
        (dispatch,) = made[name]
        row = listing[listing.index(f">{dispatch.label}</a>") :]
        assert row[: row.index("</tr>")].count(started) == 1, name  # created at
        page = client.get(reverse("admin:delivery_dispatch_change", args=[dispatch.pk])).content.decode()
        for label, value in (("Created at", started), ("Started at", started), ("Finished at", finished)):
            field = page[page.index(f"<label>{label}:</label>") :]
            assert value in field[: field.index("</div>")], (name, label)


def test_delivery_pages_and_device_history_show_times_in_the_dispatchs_campaign_zone_named(
    client, viewer_carol, app, manager_alice
):
    made = sent_by_each_source(app, manager_alice)
    device = DeviceFactory(app=app)
    rows = {
        name: Delivery.objects.create(
            dispatch=made[name][0],
            device=device,
            profile=device.profile,
            status="accepted",
            finished_at=NINE_IN_NEW_YORK,
            opened_at=NINE_IN_NEW_YORK + dt.timedelta(hours=1),
        )
        for name in ("new_york", "journey")
    }
    client.force_login(viewer_carol)
    listing = client.get(reverse("admin:delivery_delivery_changelist")).content.decode()
    for name, finished, opened in (
        ("new_york", "2027-01-05 09:00 (America/New_York)", "2027-01-05 10:00 (America/New_York)"),
        ("journey", "2027-01-05 14:00 (UTC)", "2027-01-05 15:00 (UTC)"),
    ):
        link = f'href="{reverse("admin:delivery_delivery_change", args=[rows[name].pk])}"'
        row = listing[listing.index(link) :]
        assert finished in row[: row.index("</tr>")] and opened in row[: row.index("</tr>")], name
        page = client.get(reverse("admin:delivery_delivery_change", args=[rows[name].pk])).content.decode()
        field = page[page.index("<label>Opened at:</label>") :]
        assert opened in field[: field.index("</div>")], name
    history = client.get(reverse("admin:delivery_device_change", args=[device.pk])).content.decode()
    assert "opened 2027-01-05 10:00 (America/New_York)" in history
    assert "opened 2027-01-05 15:00 (UTC)" in history


def test_dispatch_list_reads_every_zone_in_its_own_query(client, viewer_carol, app, manager_alice):
    """No query per row: the zones come with the dispatches."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    sent_by_each_source(app, manager_alice)
    client.force_login(viewer_carol)
    url = reverse("admin:delivery_dispatch_changelist")
    client.get(url)  # warm: the session, content types
    with CaptureQueriesContext(connection) as few:
        assert "(America/New_York)" in client.get(url).content.decode()
    sent_by_each_source(app, manager_alice, runs=5)
    with CaptureQueriesContext(connection) as many:
        page = client.get(url).content.decode()
    assert page.count("(America/New_York)") == 6 and page.count("(Europe/Paris)") == 6
    assert len(many) == len(few)


@pytest.mark.presses("delivery.dispatch:stop")
def test_viewer_cannot_stop_a_dispatch_from_the_admin(client, viewer_carol, app):
    dispatch = make_dispatch(app)
    client.force_login(viewer_carol)
    answer = client.post(
        reverse("admin:delivery_dispatch_changelist"),
        {"action": "stop", "_selected_action": [dispatch.pk], "post": "yes"},
    )
    assert "Stop 1 dispatch?" not in answer.content.decode()
    assert Dispatch.objects.get(pk=dispatch.pk).status == "sending"


@pytest.mark.presses("delivery.dispatch:stop")
def test_manager_stops_a_dispatch_from_the_admin(client, manager_alice, app):
    dispatch = make_dispatch(app)
    client.force_login(manager_alice)
    url = reverse("admin:delivery_dispatch_changelist")
    asked = client.post(url, {"action": "stop", "_selected_action": [dispatch.pk]})
    html = asked.content.decode()
    assert asked.status_code == 200 and "Stop 1 dispatch? This cannot be undone." in html
    assert str(dispatch) in html
    assert Dispatch.objects.get(pk=dispatch.pk).status == "sending"  # asked, not done
    answer = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html)
    data: dict = {}
    for name, value in answer:
        data.setdefault(name, []).append(value)
    assert data["post"] == ["yes"] and data["_selected_action"] == [str(dispatch.pk)]
    client.post(url, data)
    assert Dispatch.objects.get(pk=dispatch.pk).status == "stopped"


def test_device_page_shows_its_delivery_history(client, viewer_carol, app):
    dispatch = make_dispatch(app, n=1)
    device = Delivery.objects.get(dispatch=dispatch).device
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_device_change", args=[device.pk])).content.decode()
    assert "Run 1" in page


def test_deliveries_of_a_deleted_device_show_in_the_admin_without_it(client, viewer_carol, app):
    dispatch = make_dispatch(app, n=1)
    delivery = Delivery.objects.get(dispatch=dispatch)
    delivery.device.delete()
    client.force_login(viewer_carol)
    listed = client.get(reverse("admin:delivery_delivery_changelist"), {"dispatch__id__exact": dispatch.pk})
    assert listed.status_code == 200 and f">{delivery.pk}<" in listed.content.decode()
    page = client.get(reverse("admin:delivery_delivery_change", args=[delivery.pk]))
    assert page.status_code == 200 and "Run 1" in page.content.decode()


def test_device_page_shows_the_deliveries_of_its_profile_only(client, viewer_carol, app):
    dispatch = make_dispatch(app, n=1)
    device = Delivery.objects.get(dispatch=dispatch).device
    earlier = make_dispatch(app, n=1)
    # The token was registered by someone else before: that delivery is the other profile's history.
    Delivery.objects.filter(dispatch=earlier).update(device=device, profile=ProfileFactory())
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_device_change", args=[device.pk])).content.decode()
    assert f"#{Delivery.objects.get(dispatch=dispatch).pk}<" in page
    assert f"#{Delivery.objects.get(dispatch=earlier).pk}<" not in page


@pytest.mark.embedded
def test_device_page_lists_its_finished_deliveries_and_those_on_their_way_newest_first(client, viewer_carol, app):
    device = DeviceFactory(app=app)
    now = timezone.now()

    def row(status, dispatch_status, **fields):
        dispatch = Dispatch.objects.create(
            app=app, kind="campaign", content_spec={}, status=dispatch_status, standing="queued_at" in fields
        )
        if status in ("accepted", "failed"):
            fields["finished_at"] = now
        return Delivery.objects.create(
            dispatch=dispatch, device=device, profile_id=device.profile_id, status=status, **fields
        )

    rows = [
        row("accepted", "done"),
        row("failed", "done"),
        row("queued", "sending"),  # a bulk send's row not sent yet
        row("sending", "sending", queued_at=now),  # a stream's row in flight
        row("queued", "sending", queued_at=now),
    ]
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_device_change", args=[device.pk])).content.decode()
    shown = [int(n) for n in re.findall(r">#(\d+)<", page)]
    assert shown == sorted((r.pk for r in rows), reverse=True)


def test_devices_of_other_apps_are_not_listed(client, viewer_carol, app):
    mine = DeviceFactory(app=app)
    theirs = DeviceFactory(app=AppFactory())
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_device_changelist")).content.decode()
    assert token_shortened(mine.token) in page and token_shortened(theirs.token) not in page
    assert client.get(reverse("admin:delivery_device_change", args=[theirs.pk])).status_code == 404


def _found(client, term: str) -> list[int]:
    answer = client.get(reverse("admin:delivery_device_changelist"), {"q": term})
    assert answer.status_code == 200
    return sorted(d.pk for d in answer.context["cl"].result_list)


def test_a_device_is_found_by_its_exact_token_an_apns_one_in_either_case_within_the_apps_one_may_see(
    client, manager_alice, manager_mallory, app
):
    """An APNs token is kept in lowercase, so one pasted in capitals finds its iPhone; an FCM token is
    case-sensitive: its lowercase is another phone's. A profile's devices by its exact external id."""
    iphone = DeviceFactory(app=app, platform="ios", token="a1b2" * 16)
    android = DeviceFactory(app=app, platform="android", token="fQ9:APA91bXyZ")
    other_android = DeviceFactory(app=app, platform="android", token="fq9:apa91bxyz")
    same_token_elsewhere = DeviceFactory(app=AppFactory(), platform="ios", token=iphone.token)
    ann = ProfileFactory(external_id="Ann-1")
    anns = [DeviceFactory(app=app, profile=ann).pk, DeviceFactory(app=app, profile=ann, platform="android").pk]
    client.force_login(manager_alice)
    assert _found(client, iphone.token) == [iphone.pk]
    assert _found(client, iphone.token.upper()) == [iphone.pk]
    assert _found(client, f"  {iphone.token.upper()} ") == [iphone.pk]  # pasted with spaces around
    assert _found(client, "fQ9:APA91bXyZ") == [android.pk]
    assert _found(client, "fq9:apa91bxyz") == [other_android.pk]
    assert _found(client, "FQ9:APA91BXYZ") == []
    assert _found(client, "Ann-1") == sorted(anns)
    assert _found(client, "ann-1") == []  # external ids are exact, as the profiles' search finds them
    assert same_token_elsewhere.pk not in _found(client, iphone.token.upper())

    client.force_login(manager_mallory)  # a Manager without access to the app
    for term in (iphone.token, iphone.token.upper(), "fQ9:APA91bXyZ", "Ann-1"):
        assert _found(client, term) == [], term


def test_the_device_search_reads_the_unique_indexes_not_every_device(client, manager_alice, admin_erin, app):
    """The token through (app, token) in the apps the user may see (all of them for an
    administrator), the external id through the profiles' unique index: Django's case-insensitive
    match read every device and every profile."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from delivery.models import Device

    iphone = DeviceFactory(app=app, platform="ios", token="c3d4" * 16)
    # An app of many devices, its statistics known: on a handful of rows the planner may as well
    # filter the app's rows through another index, which says nothing of the search.
    Device.objects.bulk_create(
        Device(app=app, profile=iphone.profile, platform="android", token=f"fcm-{n:06}") for n in range(2_000)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE delivery_device")
    for user in (manager_alice, admin_erin):
        client.force_login(user)
        with CaptureQueriesContext(connection) as page:
            assert _found(client, iphone.token.upper()) == [iphone.pk]
        reads = [
            q["sql"] for q in page.captured_queries if 'FROM "delivery_device"' in q["sql"] and iphone.token in q["sql"]
        ]
        assert len(reads) == 2, reads  # the page and its count
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")  # a plan that could use an index does
            for sql in reads:
                cursor.execute(f"EXPLAIN {sql}")
                plan = "\n".join(row[0] for row in cursor.fetchall())
                assert "device_app_token_unique" in plan and "upper(" not in plan, plan
                assert "Seq Scan on delivery_device" not in plan and "Seq Scan on audiences_profile" not in plan, plan


def test_administrator_marks_test_devices_from_the_admin(client, admin_erin, app):
    device, other = DeviceFactory(app=app), DeviceFactory(app=app, is_test=True)
    client.force_login(admin_erin)
    url = reverse("admin:delivery_device_changelist")
    answer = client.post(url, {"action": "mark_test", "_selected_action": [device.pk]}, follow=True)
    device.refresh_from_db()
    assert device.is_test
    assert "1 device changed." in answer.content.decode()
    answer = client.post(url, {"action": "unmark_test", "_selected_action": [device.pk, other.pk]}, follow=True)
    assert "2 devices changed." in answer.content.decode()


def test_a_manager_is_not_offered_the_test_device_marks(client, manager_alice, app):
    """A test device gets drafts nobody approved: a Manager who could mark any customer's phone
    could send them unapproved text with Send a test."""
    DeviceFactory(app=app)
    client.force_login(manager_alice)
    page = client.get(reverse("admin:delivery_device_changelist")).content.decode()
    assert 'value="mark_test"' not in page and 'value="unmark_test"' not in page


def _press(client, model: str, action: str, pks: list[int]):
    return client.post(reverse(f"admin:delivery_{model}_changelist"), {"action": action, "_selected_action": pks})


@pytest.mark.presses("delivery.device:mark_test", "delivery.device:unmark_test")
@pytest.mark.parametrize(("action", "before", "after"), [("mark_test", False, True), ("unmark_test", True, False)])
def test_test_device_marks_change_for_an_administrator_and_not_for_a_manager_or_a_viewer(
    client, admin_erin, manager_alice, viewer_carol, app, action, before, after
):
    device = DeviceFactory(app=app, is_test=before)
    for user in (manager_alice, viewer_carol):  # both with access to the app
        client.force_login(user)
        assert _press(client, "device", action, [device.pk]).status_code in (200, 302, 403)
        device.refresh_from_db()
        assert device.is_test is before, user
    client.force_login(admin_erin)
    assert _press(client, "device", action, [device.pk]).status_code == 302
    device.refresh_from_db()
    assert device.is_test is after


@pytest.mark.presses("delivery.pushcontent:send_test")
def test_send_test_is_refused_to_a_viewer_and_outside_access(client, viewer_carol, manager_mallory, app):
    from accounts.form_tokens import form_token_issue, form_token_subject

    content = PushContentFactory(app=app)
    DeviceFactory(app=app, is_test=True)
    for user in (viewer_carol, manager_mallory):
        client.force_login(user)
        assert _press(client, "pushcontent", "send_test", [content.pk]).status_code in (200, 302, 403)
        # Nor with a question's Yes, pressed twice, its token drawn for them as if they had been asked.
        token = form_token_issue(
            user=user, purpose="delivery.pushcontent:send_test", subject=form_token_subject([content.pk])
        )
        for _ in range(2):
            answer = _send_test(client, [content.pk], post="yes", form_token=token)
            assert answer.status_code in (200, 403) and "started already" not in answer.content.decode()
    assert not Dispatch.objects.exists()


def _held_and_not(app):
    """A dispatch resolved under quiet hours (UTC, around now, held until they end): one profile's
    push held, another's (its zone 12 hours away) queued to go now."""
    from delivery.models import DeliveryRules
    from delivery.services.dispatches import dispatch_prepare

    now = timezone.now()
    DeliveryRules.objects.create(
        app=app,
        quiet_start=(now - dt.timedelta(hours=1)).time().replace(second=0, microsecond=0),
        quiet_end=(now + dt.timedelta(hours=1)).time().replace(second=0, microsecond=0),
        quiet_mode="delay",
        default_timezone="UTC",
    )
    sleeping, awake = ProfileFactory(timezone="UTC"), ProfileFactory(timezone="Pacific/Kiritimati")
    for profile in (sleeping, awake):
        DeviceFactory(profile=profile, app=app)
    dispatch = Dispatch.objects.create(
        app=app,
        kind="api_trigger",
        purpose="marketing",
        content_spec={"title": "Hi", "ttl_seconds": 3600},
        profile_ids=[sleeping.pk, awake.pk],
    )
    dispatch_prepare(dispatch_id=dispatch.pk)
    held = Delivery.objects.get(dispatch=dispatch, profile_id=sleeping.pk)
    assert (held.status, held.reason) == ("queued", "quiet_hours")
    return dispatch, held.next_attempt_at


def test_dispatch_page_shows_pushes_held_for_quiet_hours_apart_with_when_the_first_is_due(
    client, viewer_carol, app, django_assert_max_num_queries
):
    """A push held until the quiet hours end waits for hours: the page says so, and when the first
    goes, instead of counting it among those queued or in flight."""
    from delivery.reports import dispatch_held

    dispatch, until = _held_and_not(app)
    with django_assert_max_num_queries(1):
        assert dispatch_held(dispatch) == (1, until)
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_dispatch_change", args=[dispatch.pk])).content.decode()
    assert re.search(r"held until quiet hours end, the first at " + re.escape(f"{until:%Y-%m-%d %H:%M} (UTC)"), page)
    cells = re.findall(r"<tr><td>(?:<a [^>]*>)?Pending(?:</a>)?</td><td>([^<]*)</td><td>(\d+)</td></tr>", page)
    assert sorted(cells) == [
        ("held until quiet hours end, the first at " + f"{until:%Y-%m-%d %H:%M} (UTC)", "1"),
        ("queued or in flight", "1"),
    ]


def test_dispatch_page_shows_each_reason_with_its_label_and_the_api_its_code(client, viewer_carol, app):
    dispatch = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="done", label="Run 1")
    for reason in ("quiet_hours", "frequency_cap"):
        device = DeviceFactory(app=app)
        Delivery.objects.create(
            dispatch=dispatch, device=device, profile=device.profile, status="skipped", reason=reason
        )
    from delivery.services.rollups import rollup_rebuild

    rollup_rebuild(dispatch_ids=[dispatch.pk])
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_dispatch_change", args=[dispatch.pk])).content.decode()
    outcomes = page[page.index("Outcomes by reason") :]
    assert re.search(r"held back by the quiet hours\s*<code>quiet_hours</code>", outcomes)
    assert re.search(r"the profile had its share of pushes \(frequency cap\)\s*<code>frequency_cap</code>", outcomes)
    # The report's table of reasons, below, too.
    assert re.search(r"<td>held back by the quiet hours <code>quiet_hours</code></td>", page)


def test_delivery_list_and_page_show_each_reason_with_its_label_beside_its_code(client, viewer_carol, app):
    dispatch = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="done", label="Run 1")
    device = DeviceFactory(app=app)
    row = Delivery.objects.create(
        dispatch=dispatch, device=device, profile=device.profile, status="skipped", reason="not_opted_in"
    )
    client.force_login(viewer_carol)
    listing = client.get(reverse("admin:delivery_delivery_changelist")).content.decode()
    assert "notifications are turned off on the phone <code>not_opted_in</code>" in listing
    page = client.get(reverse("admin:delivery_delivery_change", args=[row.pk])).content.decode()
    assert "notifications are turned off on the phone <code>not_opted_in</code>" in page


def test_delivery_page_names_its_profile_by_external_id_and_leads_to_it(client, viewer_carol, app):
    dispatch = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="done", label="Run 1")
    profile = ProfileFactory(external_id="user-42")
    gone = ProfileFactory(external_id="user-43")
    row = Delivery.objects.create(dispatch=dispatch, profile=profile, status="skipped", reason="no_device")
    orphan = Delivery.objects.create(dispatch=dispatch, profile=gone, status="skipped", reason="no_device")
    gone_id = gone.pk
    gone.delete()
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_delivery_change", args=[row.pk])).content.decode()
    url = reverse("admin:audiences_profile_change", args=[profile.pk])
    assert f'<a href="{url}">user-42</a>' in page
    assert client.get(url).status_code == 200
    page = client.get(reverse("admin:delivery_delivery_change", args=[orphan.pk])).content.decode()
    assert f"a deleted profile (#{gone_id})" in page


def _filter_choices(page: str, parameter: str) -> dict[str, str]:
    """The list sidebar's choices of one filter: its value in the address → the words it shows."""
    return dict(re.findall(r'<a href="\?' + parameter + r'=([^"&]+)"[^>]*>([^<]+)</a>', page))


@pytest.mark.parametrize("who", ["manager_alice", "viewer_carol"])
def test_dispatch_and_delivery_lists_filter_and_show_statuses_in_words_not_codes(client, app, who, request):
    """The sidebars and the status columns read the statuses' labels; the address and the API keep
    the codes."""
    dispatch = Dispatch.objects.create(app=app, kind="test", content_spec={}, status="preparing", label="Run 1")
    device = DeviceFactory(app=app)
    Delivery.objects.create(dispatch=dispatch, device=device, profile=device.profile, status="unknown")
    client.force_login(request.getfixturevalue(who))
    dispatches = client.get(reverse("admin:delivery_dispatch_changelist")).content.decode()
    assert _filter_choices(dispatches, "status__exact") == {
        "preparing": "Preparing",
        "sending": "Sending",
        "done": "Done",
        "stopped": "Stopped",
        "failed": "Failed",
    }
    assert _filter_choices(dispatches, "kind__exact") == {
        "campaign": "Campaign",
        "api_trigger": "API trigger",
        "journey": "Journey step",
        "test": "Test send",
    }
    assert '<td class="field-status">Preparing</td>' in dispatches
    assert '<td class="field-kind">Test send</td>' in dispatches
    deliveries = client.get(reverse("admin:delivery_delivery_changelist")).content.decode()
    assert _filter_choices(deliveries, "status__exact") == {
        "queued": "Queued",
        "sending": "Sending",
        "accepted": "Accepted",
        "failed": "Failed",
        "skipped": "Skipped",
        "unknown": "Unknown (may have been delivered)",
    }
    assert '<td class="field-status">Unknown (may have been delivered)</td>' in deliveries
    filtered = client.get(reverse("admin:delivery_delivery_changelist") + "?status__exact=unknown")
    assert filtered.status_code == 200 and "1 delivery" in filtered.content.decode()


def test_the_api_keeps_the_status_codes(app, manager_alice, api_key_for):
    dispatch = Dispatch.objects.create(app=app, kind="test", content_spec={}, status="preparing", label="Run 1")
    answer = api_key_for(manager_alice).get(f"/api/v1/dispatches/{dispatch.pk}/")
    assert answer.status_code == 200, answer.content
    assert (answer.json()["status"], answer.json()["kind"]) == ("preparing", "test")


def test_dispatch_outcomes_and_device_history_say_statuses_in_words(client, viewer_carol, app):
    dispatch = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="done", label="Run 1")
    device = DeviceFactory(app=app, active=False, invalidated_reason="Unregistered")
    Delivery.objects.create(
        dispatch=dispatch,
        device=device,
        profile=device.profile,
        status="skipped",
        reason="frequency_cap",
        finished_at=timezone.now(),
    )
    from delivery.services.rollups import rollup_rebuild

    rollup_rebuild(dispatch_ids=[dispatch.pk])
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_dispatch_change", args=[dispatch.pk])).content.decode()
    outcomes = page[page.index("Outcomes by reason") :]
    assert re.search(r"status__exact=skipped\">Skipped</a></td><td>the profile had its share", outcomes)
    page = client.get(reverse("admin:delivery_device_change", args=[device.pk])).content.decode()
    assert re.search(
        r"Run 1 · Skipped the profile had its share of pushes \(frequency cap\) <code>frequency_cap</code>", page
    )
    assert "the app was uninstalled or the token is no longer valid (APNs) <code>Unregistered</code>" in page


def test_device_page_labels_its_invalidated_reason_and_its_delivery_history_once_each(client, viewer_carol, app):
    device = DeviceFactory(app=app, active=False, invalidated_reason="Unregistered")
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_device_change", args=[device.pk])).content.decode()
    labels = re.findall(r"<label>([^<]+):</label>", page)
    assert labels.count("Invalidated reason") == 1, labels
    assert labels.count("Delivery history") == 1, labels


def test_dispatch_page_shows_the_zone_its_now_renders_in(client, viewer_carol, app):
    """The zone a send renders ``now`` in was kept but shown nowhere."""
    paris = Dispatch.objects.create(
        app=app, kind="api_trigger", content_spec={}, status="done", time_zone="Europe/Paris"
    )
    older = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="done")
    local = Dispatch.objects.create(
        app=app,
        kind="api_trigger",
        content_spec={},
        status="done",
        time_zone="Europe/Paris",
        local_time="2027-01-05T09:00:00",
        local_default_timezone="Asia/Tokyo",
    )
    client.force_login(viewer_carol)
    shown = {
        paris: "Europe/Paris",
        older: "UTC",
        local: "Each profile&#x27;s own (for a profile without one: Asia/Tokyo)",
    }
    for dispatch, zone in shown.items():
        page = client.get(reverse("admin:delivery_dispatch_change", args=[dispatch.pk])).content.decode()
        field = page[page.index("<label>Time zone:</label>") :]
        assert zone in field[: field.index("</div>")]
