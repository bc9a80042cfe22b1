"""Object access everywhere: every admin page, admin action, autocomplete, export and API view.

``world`` holds one object of each kind, all in manager_alice's scope. manager_mallory has the
same role but no access to any of it, outsider_dave has no role at all: to both, every object
answers 404, as if it did not exist, and nothing of it shows in lists, searches or exports.
"""

import re

import pytest
from django.contrib import admin
from django.urls import reverse

from accounts.services import access_grant
from tests.factories import DeviceFactory, ProfileFactory
from tests.pages import listed_rows

OBJECT_KWARGS = {"object_id", "request_id", "campaign_id", "journey_id"}
ACTIONS = {"campaigns.campaign": "approve", "journeys.journey": "approve"}


def object_urls(world):
    """Every admin URL that names one object of ``world``: (label, url)."""
    urls = []
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        obj = world.get(label)
        if obj is None:
            continue
        for pattern in model_admin.urls:
            params = set(re.findall(r"<(?:\w+:)?(\w+)>", str(pattern.pattern)))
            if not params or not params & OBJECT_KWARGS or pattern.name is None:
                continue
            kwargs = {name: obj.pk for name in params & OBJECT_KWARGS}
            if "action" in params:
                kwargs["action"] = ACTIONS[label]
            if label == "accounts.approvalrequest" and "request_id" in kwargs:
                kwargs["request_id"] = obj.pk
            urls.append((f"{label}:{pattern.name}", reverse(f"admin:{pattern.name}", kwargs=kwargs)))
    return urls


def test_every_admin_url_of_the_world_is_covered(world):
    names = {name for name, _ in object_urls(world)}
    for expected in (
        "campaigns.campaign:campaigns_campaign_report_csv",
        "campaigns.campaign:campaigns_campaign_transition",
        "audiences.import:audiences_import_errors",
        "audiences.segment:audiences_segment_preview",
        "accounts.approvalrequest:accounts_approvalrequest_review",
        "journeys.journey:journeys_journey_transition",
        "delivery.app:delivery_app_access",
        "delivery.delivery:delivery_delivery_change",
        "journeys.enrollment:journeys_enrollment_change",
    ):
        assert any(name.startswith(expected) for name in names), expected


@pytest.mark.presses("audiences.import:status", "audiences.import:errors", "campaigns.campaign:report_csv")
@pytest.mark.parametrize("who", ["manager_mallory", "outsider_dave"])
def test_every_admin_page_of_an_object_outside_access_answers_404(client, world, who, request, manager_alice):
    user = request.getfixturevalue(who)
    client.force_login(user)
    wrong = {}
    for name, url in object_urls(world):
        status = client.get(url).status_code
        if status != 404:
            wrong[name] = (url, status)
    assert not wrong, "\n".join(f"{name} {url} answered {status}" for name, (url, status) in sorted(wrong.items()))


def test_the_owner_reaches_those_pages(client, world, manager_alice):
    """The same URLs work for alice, so the 404s above are about access, not broken URLs."""
    client.force_login(manager_alice)
    found = [name for name, url in object_urls(world) if client.get(url).status_code != 404]
    assert any("report_csv" in name for name in found)
    assert any("campaign_change" in name for name in found)
    assert any("segment_preview" in name for name in found)
    assert any("delivery_delivery_change" in name for name in found)


@pytest.mark.parametrize("who", ["manager_mallory", "outsider_dave"])
def test_a_forged_post_to_an_object_outside_access_changes_nothing(client, world, who, request):
    from campaigns.models import Campaign

    user = request.getfixturevalue(who)
    client.force_login(user)
    campaign = world["campaigns.campaign"]
    before = Campaign.objects.get(pk=campaign.pk)
    for name, url in object_urls(world):
        if name.endswith(("_changelist", "_add", "_segment_preview")):
            continue  # the preview's POST previews a posted rule tree: below
        status = client.post(url, {"name": "forged", "comment": "forged", "_approve": "1", "post": "yes"}).status_code
        assert status in (403, 404), (name, url, status)
    after = Campaign.objects.get(pk=campaign.pk)
    assert (after.name, after.status) == (before.name, before.status)


def test_the_rule_preview_refuses_a_segment_outside_access(client, world, manager_mallory):
    segment = world["audiences.segment"]
    client.force_login(manager_mallory)
    response = client.post(
        "/admin/audiences/segment/preview/", {"segment": segment.pk}, content_type="application/json"
    )
    assert response.status_code == 404
    assert b"zoe" not in response.content


def test_lists_and_searches_hold_nothing_outside_access(client, world, manager_mallory):
    client.force_login(manager_mallory)
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        obj = world.get(label)
        if obj is None:
            continue
        url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        response = client.get(url, {"q": str(obj)[:20]} if model_admin.search_fields else {})
        assert response.status_code in (200, 403), (label, response.status_code)
        if response.status_code == 200:
            listed = response.context["cl"].result_list
            assert obj.pk not in [row.pk for row in listed], label


@pytest.mark.parametrize(
    ("action", "model", "label"),
    [
        ("stop", "delivery/dispatch", "delivery.dispatch"),
        ("send_test", "delivery/pushcontent", "delivery.pushcontent"),
        ("test_connection", "delivery/app", "delivery.app"),
        ("delete_segments", "audiences/segment", "audiences.segment"),
        ("restart_imports", "audiences/import", "audiences.import"),
        ("revoke_keys", "accounts/apikey", "accounts.apikey"),
        ("mark_test", "delivery/device", "delivery.device"),
    ],
)
def test_an_admin_action_on_an_object_outside_access_does_nothing(client, world, manager_mallory, action, model, label):
    from accounts.models import AuditEvent

    client.force_login(manager_mallory)
    obj = world[label]
    before = AuditEvent.objects.count()
    client.post(f"/admin/{model}/", {"action": action, "_selected_action": [obj.pk], "post": "yes"})
    obj.refresh_from_db()
    assert not AuditEvent.objects.filter(pk__gt=0).order_by("-pk")[: AuditEvent.objects.count() - before].exists()
    if label == "accounts.apikey":
        assert obj.revoked_at is None
    if label == "delivery.dispatch":
        assert obj.status != "stopped"


def foreign_keys_to_searchable_admins():
    """(app_label, model_name, field_name, remote label) of every FK whose target admin can be searched."""
    found = []
    for model in list(admin.site._registry):
        for field in model._meta.get_fields():
            remote = getattr(getattr(field, "remote_field", None), "model", None)
            if not getattr(field, "concrete", False) or remote is None or remote not in admin.site._registry:
                continue
            if admin.site._registry[remote].search_fields:
                found.append((model._meta.app_label, model._meta.model_name, field.name, remote._meta.label_lower))
    return found


def test_autocomplete_offers_nothing_outside_access(client, world, manager_mallory, manager_alice):
    fields = foreign_keys_to_searchable_admins()
    assert fields, "no autocomplete-able foreign key found"
    client.force_login(manager_alice)
    offered = client.get(
        "/admin/autocomplete/",
        {"app_label": "delivery", "model_name": "pushcontent", "field_name": "app", "term": ""},
    ).json()["results"]
    assert str(world["delivery.app"].pk) in [row["id"] for row in offered]  # the owner is offered it
    for app_label, model_name, field_name, remote in fields:
        obj = world.get(remote)
        if obj is None:
            continue
        params = {"app_label": app_label, "model_name": model_name, "field_name": field_name, "term": ""}
        client.force_login(manager_mallory)
        response = client.get("/admin/autocomplete/", params)
        if response.status_code == 200:
            ids = [row["id"] for row in response.json()["results"]]
            assert str(obj.pk) not in ids, (app_label, model_name, field_name)
        else:
            assert response.status_code in (403, 404)


API_PATHS = [
    ("get", "/api/v1/campaigns/{campaigns.campaign}/", None),
    ("get", "/api/v1/campaigns/{campaigns.campaign}/report/", None),
    ("post", "/api/v1/campaigns/{campaigns.campaign}/trigger/", {"recipients": [{"external_id": "zoe"}]}),
    ("put", "/api/v1/campaigns/{campaigns.campaign}/winner/", {"winner_mode": False}),
    ("get", "/api/v1/segments/{audiences.segment}/", None),
    ("get", "/api/v1/segments/{audiences.segment}/preview/", None),
    ("get", "/api/v1/imports/{audiences.import}/", None),
    ("get", "/api/v1/imports/{audiences.import}/errors/", None),
    ("get", "/api/v1/dispatches/{delivery.dispatch}/", None),
    ("get", "/api/v1/dispatches/{delivery.dispatch}/deliveries/", None),
    ("get", "/api/v1/journeys/{journeys.journey}/", None),
    ("post", "/api/v1/journeys/{journeys.journey}/discard-draft/", None),
    ("post", "/api/v1/opens/", {"app": "{delivery.app}", "delivery": "{delivery.delivery}"}),
]


def _fill(template, world):
    if isinstance(template, str):
        return re.sub(r"\{([a-z.]+)\}", lambda m: str(world[m.group(1)].pk), template)
    if isinstance(template, dict):
        return {k: _fill(v, world) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, world) for v in template]
    return template


@pytest.mark.parametrize(("method", "path", "body"), API_PATHS, ids=[f"{m} {p}" for m, p, _ in API_PATHS])
def test_every_api_view_of_an_object_outside_access_answers_404(
    world, manager_mallory, manager_alice, api_key_for, method, path, body
):
    url, data = _fill(path, world), _fill(body, world)
    if data and "delivery" in data:
        data = {key: int(value) for key, value in data.items()}
        data["token"] = world["delivery.delivery"].device.token  # the phone's own: the delivery is its
    outsider = api_key_for(manager_mallory, scopes=["read", "ingest", "trigger", "campaigns", "journeys"])
    response = getattr(outsider, method)(url, data, format="json")
    assert response.status_code == 404, response.content
    assert response.json()["code"] == "not_found"
    owner = api_key_for(manager_alice, scopes=["read", "ingest", "trigger", "campaigns", "journeys"])
    assert getattr(owner, method)(url, data, format="json").status_code != 404


def test_api_lists_hold_nothing_outside_access(world, manager_mallory, api_key_for):
    client = api_key_for(manager_mallory, scopes=["read"])
    for path in ("/api/v1/campaigns/", "/api/v1/segments/", "/api/v1/journeys/"):
        assert client.get(path).json()["results"] == [], path


def test_a_device_of_an_app_outside_access_cannot_be_changed_through_the_api(world, manager_mallory, api_key_for):
    device = world["delivery.device"]
    client = api_key_for(manager_mallory, scopes=["ingest"])
    ref = {"app": device.app_id, "token": device.token}
    for path, body in (
        ("/api/v1/devices/opt-in/", {**ref, "push_enabled": False}),
        ("/api/v1/devices/unregister/", ref),
    ):
        response = client.post(path, body, format="json")
        assert response.status_code in (403, 404), (path, response.content)
    device.refresh_from_db()
    assert device.push_enabled and device.active


def test_an_app_outside_access_in_a_body_is_named_as_one_that_does_not_exist(world, manager_mallory, api_key_for):
    """A device written for an app the key cannot reach, or for none: the same 404, naming the field."""
    device = world["delivery.device"]
    client = api_key_for(manager_mallory, scopes=["ingest"])
    answers = []
    for app in (device.app_id, 987654321):
        response = client.post(
            "/api/v1/devices/opt-in/", {"app": app, "token": device.token, "push_enabled": False}, format="json"
        )
        assert response.status_code == 404, response.content
        answers.append(response.json())
    assert answers[0] == answers[1]
    assert answers[0]["errors"] == [{"field": "app", "code": "not_found", "detail": "No app with this id."}]


ACCESS_PAGES = ["delivery.app", "delivery.pushcontent", "audiences.segment", "campaigns.campaign", "journeys.journey"]


@pytest.mark.presses(*(f"{label}:access" for label in ACCESS_PAGES))
@pytest.mark.parametrize("label", ACCESS_PAGES)
def test_every_access_page_grants_for_an_administrator_and_refuses_everyone_else(
    client, world, label, admin_erin, manager_alice, manager_mallory, viewer_carol
):
    from accounts.selectors import grants_on

    obj = world[label]
    app_label, model_name = label.split(".")
    url = reverse(f"admin:{app_label}_{model_name}_access", args=[obj.pk])
    # alice works on it but is no Administrator: 403; mallory does not even know it exists: 404.
    for user, refusal in ((manager_alice, 403), (manager_mallory, 404)):
        client.force_login(user)
        assert client.post(url, {"user": viewer_carol.pk}).status_code == refusal, user
    assert viewer_carol not in grants_on(obj)
    client.force_login(admin_erin)
    assert client.post(url, {"user": viewer_carol.pk}).status_code == 302
    assert viewer_carol in grants_on(obj)
    assert client.post(url, {"revoke": f"user:{viewer_carol.pk}"}).status_code == 302
    assert viewer_carol not in grants_on(obj)


def _profile_rows(profile) -> tuple[int, int, int]:
    from delivery.models import Device
    from journeys.models import Enrollment

    return (
        type(profile).objects.filter(pk=profile.pk).count(),
        Device.objects.filter(profile_id=profile.pk).count(),
        Enrollment.objects.filter(profile_id=profile.pk).count(),
    )


@pytest.mark.presses("audiences.profile:delete_selected")
def test_a_profile_holding_what_its_reader_cannot_see_is_neither_counted_nor_erased_by_them(
    client, world, manager_mallory, manager_alice, api_key_for
):
    """zoe (profiles are everyone's) has a phone in alice's app and an enrollment in her journey:
    mallory is told neither how many nor of which kind, and may not erase them with the profile."""
    profile = world["profile"]
    before = _profile_rows(profile)
    assert before == (1, 1, 1)
    url = reverse("admin:audiences_profile_delete", args=[profile.pk])
    press = {"action": "delete_selected", "_selected_action": [profile.pk]}
    client.force_login(manager_mallory)
    for page in (client.get(url), client.post("/admin/audiences/profile/", press)):
        assert page.status_code == 200
        html = page.content.decode()
        assert "Devices:" not in html and "nrollments:" not in html
        assert "outside your access" in html
    assert client.post(url, {"post": "yes"}).status_code == 403
    client.post("/admin/audiences/profile/", {**press, "post": "yes"})
    response = api_key_for(manager_mallory, scopes=["ingest", "read"]).delete("/api/v1/profiles/zoe/")
    assert response.status_code == 403, response.content
    assert response.json()["code"] == "permission_denied"
    assert _profile_rows(profile) == before

    client.force_login(manager_alice)  # all of it is within hers: counted, and erased
    html = client.get(url).content.decode()
    assert "<li>Devices: 1</li>" in html and "<li>Enrollments: 1</li>" in html
    assert "outside your access" not in html
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert _profile_rows(profile) == (0, 0, 0)


def test_the_profile_page_offers_delete_only_to_a_reader_whose_deletion_would_go_through(
    client, world, manager_mallory, manager_alice, viewer_carol, django_assert_max_num_queries
):
    """The page offered Delete to mallory, whose deletion is refused (zoe holds a phone and an
    enrollment outside her access): it now says why in its place; alice, who reaches all of it, is
    offered Delete, and carol, whose role may not delete profiles, neither."""
    profile = world["profile"]
    url = reverse("admin:audiences_profile_change", args=[profile.pk])
    delete_url = reverse("admin:audiences_profile_delete", args=[profile.pk])
    client.force_login(manager_mallory)
    with django_assert_max_num_queries(20):  # the check: two counts per kind of row, whatever their number
        html = client.get(url).content.decode()
    assert delete_url not in html
    assert (
        "You cannot delete this profile: it holds data in apps, segments or journeys outside your access."
        " Only someone with access to all of it (an Administrator) can delete it."
    ) in html
    client.force_login(manager_alice)
    html = client.get(url).content.decode()
    assert delete_url in html and "outside your access" not in html
    client.force_login(viewer_carol)
    html = client.get(url).content.decode()
    assert delete_url not in html and "outside your access" not in html


@pytest.fixture
def moved_campaign_send(
    pushsim, apns_credentials, fcm_credentials, manager_mallory, viewer_carol, django_capture_on_commit_callbacks
):
    """A test send of mallory's campaign from the app carol reads, the campaign moved since to an
    app carol has no access to: carol reads the send (its app's), not the campaign."""
    from campaigns.services.lifecycle import campaign_create, campaign_update
    from campaigns.services.scheduling import campaign_test_send
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save
    from tests.fakes.pushsim import simulated_app

    shared = simulated_app("Shared app", pushsim, apns_credentials, fcm_credentials)
    other = simulated_app("Other app", pushsim, apns_credentials, fcm_credentials)
    for app in (shared, other):
        access_grant(obj=app, to=manager_mallory, by=None)
    access_grant(obj=shared, to=viewer_carol, by=None)
    DeviceFactory(profile=ProfileFactory(external_id="tess"), app=shared, platform="ios", is_test=True)
    contents = [
        pushcontent_save(
            content=PushContent(app=app, name="Teaser", title="Soon", body="{{ context.campaign.name }} is coming"),
            by=manager_mallory,
        )
        for app in (shared, other)
    ]
    campaign = campaign_create(
        by=manager_mallory,
        name="Merger announcement",
        app=shared,
        kind="api_triggered",
        purpose="transactional",
        content=contents[0],
    )
    with django_capture_on_commit_callbacks(execute=True):
        (dispatch,) = campaign_test_send(campaign_id=campaign.pk, by=manager_mallory)
    campaign_update(campaign_id=campaign.pk, by=manager_mallory, app=other, content=contents[1])
    return dispatch


def test_a_send_names_no_campaign_its_reader_may_not_see(client, moved_campaign_send, viewer_carol, manager_mallory):
    url = reverse("admin:delivery_dispatch_change", args=[moved_campaign_send.pk])
    client.force_login(viewer_carol)
    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Merger announcement" not in html
    campaign_id = moved_campaign_send.context["campaign"]["id"]
    assert f"A test send of campaign #{campaign_id}" in html  # by its number, as a campaign one may not see
    client.force_login(manager_mallory)  # the campaign's owner reads its name as a field, not as JSON
    html = client.get(url).content.decode()
    assert re.search(r"A test send of <a [^>]+>campaign “Merger announcement”</a>", html)
    assert "<td>Merger announcement</td>" in html
    assert "&quot;campaign&quot;" not in html


def test_a_send_s_deliveries_name_no_campaign_their_reader_may_not_see(client, moved_campaign_send, viewer_carol):
    from delivery.models import Delivery

    delivery = Delivery.objects.get(dispatch=moved_campaign_send)
    client.force_login(viewer_carol)
    for url in (
        reverse("admin:delivery_delivery_change", args=[delivery.pk]),
        reverse("admin:delivery_delivery_changelist"),
        reverse("admin:delivery_device_change", args=[delivery.device_id]),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        assert "Merger announcement" not in response.content.decode(), url


def test_the_api_names_no_campaign_a_send_s_reader_may_not_see(moved_campaign_send, manager_alice, api_key_for):
    """alice reads the send's app, not the campaign moved away: the send's label is its number."""
    access_grant(obj=moved_campaign_send.app, to=manager_alice, by=None)
    client = api_key_for(manager_alice, scopes=["read"])
    detail = client.get(f"/api/v1/dispatches/{moved_campaign_send.pk}/")
    listed = client.get("/api/v1/dispatches/")
    assert detail.status_code == listed.status_code == 200
    assert detail.json()["label"] == f"Dispatch #{moved_campaign_send.pk}"
    assert [row["label"] for row in listed.json()["results"]] == [f"Dispatch #{moved_campaign_send.pk}"]


def test_the_api_says_what_sent_a_send_naming_no_campaign_its_reader_may_not_see(
    moved_campaign_send, manager_alice, manager_mallory, api_key_for
):
    """Its Sent by, as the send's page says it: the campaign a test send tested, by its number alone
    to a reader who may not see it (alice), by its name to its owner (mallory)."""
    access_grant(obj=moved_campaign_send.app, to=manager_alice, by=None)
    campaign_id = moved_campaign_send.context["campaign"]["id"]
    withheld = {"kind": "test", "campaign_id": campaign_id, "journey_id": None, "journey_version": None, "name": None}
    for reader, expected in ((manager_alice, withheld), (manager_mallory, {**withheld, "name": "Merger announcement"})):
        client = api_key_for(reader, scopes=["read"])
        assert client.get(f"/api/v1/dispatches/{moved_campaign_send.pk}/").json()["sent_by"] == expected
        assert [row["sent_by"] for row in client.get("/api/v1/dispatches/").json()["results"]] == [expected]


@pytest.mark.parametrize(
    "lookup", ["label__icontains", "label__startswith", "context__campaign__name__icontains", "context__icontains"]
)
def test_a_send_s_list_asked_by_what_it_withholds_does_not_spell_out_the_campaign(
    client, moved_campaign_send, viewer_carol, admin_erin, lookup
):
    """The list takes a lookup on any of its fields in its address, as Django's lists do: asked
    whether the send's label (or its context) starts with a letter, then the next, it spelt out the
    name of the campaign it withholds from carol. Those lookups are refused to a reader who may not
    see every object; an Administrator still asks them."""
    label = moved_campaign_send.label
    assert "Merger" in label
    said = {"label__icontains": "Merger", "label__startswith": label[: label.index("Merger") + 6]}
    asked = {lookup: said.get(lookup, "Merger announcement")}
    client.force_login(viewer_carol)
    response = client.get("/admin/delivery/dispatch/", asked)
    assert response.status_code == 400
    assert f"Dispatch #{moved_campaign_send.pk}" not in response.content.decode()
    client.force_login(admin_erin)
    response = client.get("/admin/delivery/dispatch/", asked)
    assert response.status_code == 200
    assert [row.pk for row in response.context["cl"].result_list] == [moved_campaign_send.pk]


def test_a_send_s_list_sorted_by_name_does_not_place_one_by_the_campaign_it_withholds(
    client, moved_campaign_send, viewer_carol, manager_mallory, admin_erin, django_capture_on_commit_callbacks
):
    """Sorted by its Dispatch column (?o=), the list placed a send whose campaign it withholds among
    the reader's others by that campaign's name: between "Alpha" and "Zulu", campaigns named letter
    by letter narrowed it down. That column is not sortable to whoever does not see every object;
    an Administrator still sorts by it."""
    from campaigns.services.lifecycle import campaign_create
    from campaigns.services.scheduling import campaign_test_send

    app, content = moved_campaign_send.app, moved_campaign_send.content
    sends = {"Merger": moved_campaign_send.pk}
    for name in ("Alpha", "Zulu"):
        campaign = campaign_create(
            by=manager_mallory, name=name, app=app, kind="api_triggered", purpose="transactional", content=content
        )
        with django_capture_on_commit_callbacks(execute=True):
            sends[name] = campaign_test_send(campaign_id=campaign.pk, by=manager_mallory)[0].pk

    def order(user, sort: bool) -> list[int]:
        client.force_login(user)
        return [
            row.pk for row in listed_rows(client, "/admin/delivery/dispatch/", sorted_by="name_shown" if sort else None)
        ]

    unsorted = order(viewer_carol, sort=False)
    assert sorted(unsorted) == sorted(sends.values())
    assert order(viewer_carol, sort=True) == unsorted
    assert order(admin_erin, sort=True) == [sends[name] for name in ("Alpha", "Merger", "Zulu")]


def test_a_send_s_list_sorted_by_app_does_not_place_one_by_an_app_its_reader_may_not_see(
    client, manager_mallory, viewer_carol, admin_erin
):
    """Sorted by its App column (?o=), the list placed a send of a campaign granted without its app
    among the reader's others by the name of the app it says by number: between "Alpha" and "Zulu",
    apps named letter by letter narrowed it down. That column is not sortable to whoever does not see
    every object; an Administrator still sorts by it."""
    from campaigns.services.lifecycle import campaign_create
    from delivery.models import Dispatch
    from tests.factories import AppFactory, PushContentFactory

    sends = {}
    for name in ("Merger", "Alpha", "Zulu"):
        app = AppFactory(name=name)
        access_grant(obj=app, to=manager_mallory, by=None)
        content = PushContentFactory(app=app)
        campaign = campaign_create(
            by=manager_mallory,
            name=f"Sale in {name}",
            app=app,
            kind="api_triggered",
            purpose="transactional",
            content=content,
        )
        sends[name] = Dispatch.objects.create(
            app=app,
            kind=Dispatch.Kind.API_TRIGGER,
            source_id=campaign.pk,
            content_spec=content.spec(),
            status="done",
            label="Sale",
        ).pk
        access_grant(obj=app if name != "Merger" else campaign, to=viewer_carol, by=None)

    def order(user, sort: bool) -> list[int]:
        client.force_login(user)
        return [
            row.pk for row in listed_rows(client, "/admin/delivery/dispatch/", sorted_by="app_shown" if sort else None)
        ]

    unsorted = order(viewer_carol, sort=False)
    assert sorted(unsorted) == sorted(sends.values())
    assert order(viewer_carol, sort=True) == unsorted
    assert order(admin_erin, sort=True) == [sends[name] for name in ("Alpha", "Merger", "Zulu")]


@pytest.mark.presses("delivery.dispatch:stop")
def test_stopping_a_send_names_no_campaign_its_reader_may_not_see(client, moved_campaign_send, manager_alice):
    from django.contrib.messages import get_messages

    from delivery.models import Dispatch

    Dispatch.objects.filter(pk=moved_campaign_send.pk).update(status=Dispatch.Status.SENDING, finished_at=None)
    access_grant(obj=moved_campaign_send.app, to=manager_alice, by=None)
    client.force_login(manager_alice)
    press = {"action": "stop", "_selected_action": [moved_campaign_send.pk]}
    asked = client.post("/admin/delivery/dispatch/", press).content.decode()
    assert f"Dispatch #{moved_campaign_send.pk}</a>" in asked and "Merger announcement" not in asked
    response = client.post("/admin/delivery/dispatch/", {**press, "post": "yes"})
    said = [str(message) for message in get_messages(response.wsgi_request)]
    assert said == [f"Dispatch #{moved_campaign_send.pk}: stopped."]
    assert Dispatch.objects.get(pk=moved_campaign_send.pk).status == Dispatch.Status.STOPPED


def test_a_refused_profile_deletion_says_plainly_why_and_offers_no_confirmation(client, world, manager_mallory):
    """Django's sentence ("your account doesn't have permission to delete the following types of
    objects:") listed a reason as if it were a type of object: the page and Delete selected now
    say the profiles cannot be deleted and why, offer a way back and no confirmation, and the
    service refuses in a sentence of its own."""
    from django.core.exceptions import PermissionDenied

    from audiences.services.profiles import profiles_delete
    from tests.factories import ProfileFactory

    profile = world["profile"]
    client.force_login(manager_mallory)
    press = {"action": "delete_selected", "_selected_action": [profile.pk, ProfileFactory().pk]}
    pages = {
        "page": client.get(reverse("admin:audiences_profile_delete", args=[profile.pk])),
        "action": client.post("/admin/audiences/profile/", press),
    }
    for name, page in pages.items():
        html = page.content.decode()
        assert "types of objects" not in html and "permission to delete" not in html, name
        assert 'name="post"' not in html and "I’m sure" not in html, name
        assert "cancel-link" in html, name
    reach = (
        "in apps, segments or journeys outside your access. Only someone with access to all of it (an Administrator)"
    )
    assert (
        f"You cannot delete the profile “{profile}”: it holds data {reach} can delete it."
        in pages["page"].content.decode()
    )
    assert (
        f"You cannot delete the selected profiles: one or more of them hold data {reach} can delete them."
        in pages["action"].content.decode()
    )
    with pytest.raises(PermissionDenied) as refused:
        profiles_delete(profile_ids=[profile.pk], by=manager_mallory)
    assert str(refused.value) == (
        "These profiles hold data in apps, segments or journeys outside your access: only someone with access"
        " to all of it (an Administrator) can delete them. Nothing was deleted."
    )


def test_a_send_s_context_says_what_it_withholds_from_a_reader_who_may_not_see_its_campaign(
    client, moved_campaign_send, viewer_carol, manager_mallory
):
    """The context read 'context.campaign.name: campaign #5', and the preview 'campaign #5 is coming',
    as though the send had given its content that text: carol read a value no phone received. The
    line now says the value is not shown and why, and the preview says what it put in its place."""
    url = reverse("admin:delivery_dispatch_change", args=[moved_campaign_send.pk])
    campaign_id = moved_campaign_send.context["campaign"]["id"]
    client.force_login(viewer_carol)
    html = client.get(url).content.decode()
    assert f"<td>campaign #{campaign_id}</td>" not in html
    assert (
        "<tr><th><code>context.campaign.name</code></th>"
        "<td><em>not shown: it names a campaign you have no access to</em></td></tr>"
    ) in html
    assert f"<tr><th><code>context.campaign.id</code></th><td>{campaign_id}</td></tr>" in html
    assert (
        f"The preview reads “campaign #{campaign_id}” where this send gave its content the campaign’s name,"
        " which you have no access to."
    ) in html
    client.force_login(manager_mallory)
    html = client.get(url).content.decode()
    assert "not shown" not in html and "The preview reads" not in html
    assert "<tr><th><code>context.campaign.name</code></th><td>Merger announcement</td></tr>" in html


@pytest.fixture
def granted_trigger(manager_alice, manager_mallory):
    """mallory's API-triggered campaign, its content showing the call's context, granted to alice
    alone (not its app, not its content); alice has an app and a segment of her own."""
    from audiences.services.segments import segment_create
    from campaigns.services.lifecycle import campaign_create
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save
    from tests.factories import app_granted

    secret_app = app_granted(manager_mallory, name="Mallory's app")
    app_granted(manager_alice, name="Alice's app")
    receipt = pushcontent_save(
        content=PushContent(app=secret_app, name="Merger receipt", title="Order {{ context.order_id }}", body="Sent"),
        by=manager_mallory,
    )
    campaign = campaign_create(
        by=manager_mallory, name="Order shipped", app=secret_app, kind="api_triggered", content=receipt
    )
    access_grant(obj=campaign, to=manager_alice, by=None)
    segment = segment_create(name="Alice's list", by=manager_alice, kind="static")
    return campaign, segment


def test_a_refused_campaign_edit_names_no_content_its_author_may_not_see(granted_trigger, manager_alice):
    """alice, granted mallory's campaign alone, makes it scheduled: the content shows the call's
    context, which a scheduled send has not. The refusal names the content by its number, as the
    campaign's page does, never by its name."""
    from django.core.exceptions import ValidationError

    from campaigns.services.lifecycle import campaign_update

    campaign, segment = granted_trigger
    with pytest.raises(ValidationError) as refused:
        campaign_update(campaign_id=campaign.pk, by=manager_alice, kind="scheduled", segment=segment)
    (message,) = refused.value.message_dict["content"]
    assert "Merger receipt" not in message
    assert message.startswith(f"content #{campaign.content_id} shows {{{{ context.order_id }}}} in its title")


def test_a_refused_journey_edit_names_no_content_its_author_may_not_see(manager_alice, manager_mallory):
    """alice, granted mallory's journey alone, edits it after mallory made its push content show a
    call's context, which a journey's push has not: the refusal names the content by its number."""
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save
    from journeys.graph import GraphInvalid
    from journeys.services.lifecycle import journey_create, journey_version_edit
    from tests.factories import app_granted

    secret_app = app_granted(manager_mallory, name="Mallory's app")
    teaser = pushcontent_save(
        content=PushContent(app=secret_app, name="Merger teaser", title="Soon", body="Stay tuned"), by=manager_mallory
    )
    graph = {
        "steps": [
            {"id": "start", "type": "push", "content": teaser.pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = journey_create(
        by=manager_mallory, name="Launch", app=secret_app, entry_kind="event", entry_event="app_open", graph=graph
    )
    access_grant(obj=journey, to=manager_alice, by=None)
    teaser.body = "Code {{ context.code }}"
    pushcontent_save(content=teaser, by=manager_mallory)
    with pytest.raises(GraphInvalid) as refused:
        journey_version_edit(journey_id=journey.pk, by=manager_alice, exit_event="unsubscribed")
    said = str(refused.value)
    assert "Merger teaser" not in said
    assert f"content #{teaser.pk} shows {{{{ context.code }}}} in its body" in said


def test_a_content_of_another_app_is_refused_naming_no_app_its_author_may_not_see(granted_trigger, manager_alice):
    """alice, granted mallory's campaign alone, chooses a content of her own app for it: the refusal
    names the campaign's app by its number, as the campaign's page does."""
    from django.core.exceptions import ValidationError

    from campaigns.services.lifecycle import campaign_update
    from delivery.models import App, PushContent
    from delivery.services.contents import pushcontent_save

    campaign, _ = granted_trigger
    mine = pushcontent_save(
        content=PushContent(app=App.objects.get(name="Alice's app"), name="Alice's receipt", title="Hi", body="Sent"),
        by=manager_alice,
    )
    with pytest.raises(ValidationError) as refused:
        campaign_update(campaign_id=campaign.pk, by=manager_alice, content=mine)
    assert refused.value.message_dict["content"] == [
        f"This content belongs to another app than app #{campaign.app_id}."
    ]


def test_the_campaign_form_refuses_naming_no_content_its_author_may_not_see(client, granted_trigger, manager_alice):
    """The refusal of a content showing a call's context, posted from the campaign's page: said at
    the content field, the content by its number."""
    from tests.pages import page_form

    campaign, segment = granted_trigger
    client.force_login(manager_alice)
    url = reverse("admin:campaigns_campaign_change", args=[campaign.pk])
    page = client.get(url)
    assert page.status_code == 200
    data = page_form(page.content.decode()).data
    data.update(kind=["scheduled"], segment=[str(segment.pk)], schedule_kind=["now"])
    html = client.post(url, data).content.decode()
    assert f"content #{campaign.content_id} shows" in html
    assert "Merger receipt" not in html


def test_a_refused_variant_names_no_content_its_author_may_not_see(granted_trigger, manager_alice, manager_mallory):
    """The same refusal of a variant's content: "Variant B's content #7", never its name."""
    from django.core.exceptions import ValidationError

    from campaigns.services.lifecycle import campaign_update
    from campaigns.services.variants import VariantInput, campaign_variants_set
    from delivery.models import PushContent
    from delivery.services.contents import pushcontent_save

    campaign, segment = granted_trigger
    receipt_id = campaign.content_id
    plain = pushcontent_save(
        content=PushContent(app=campaign.app, name="Merger plain", title="Hi", body="Sent"), by=manager_mallory
    )
    campaign_variants_set(
        campaign_id=campaign.pk,
        by=manager_mallory,
        variants=[VariantInput(content_id=plain.pk, share=50), VariantInput(content_id=receipt_id, share=50)],
    )
    with pytest.raises(ValidationError) as refused:
        campaign_update(campaign_id=campaign.pk, by=manager_alice, kind="scheduled", segment=segment)
    (message,) = refused.value.message_dict["variants"]
    assert "Merger" not in message
    assert message.startswith(f"Variant B's content #{receipt_id} shows {{{{ context.order_id }}}} in its title")
