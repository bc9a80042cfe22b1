"""Dispatch results through the API (``read``), and opens reported by the mobile app."""

import pytest

from accounts.services import access_grant
from audiences.services.profiles import profiles_delete
from delivery.models import Delivery, Device, Dispatch
from delivery.services.dispatches import dispatch_recount
from delivery.services.rollups import rollup_rebuild
from tests.factories import AppFactory, DeviceFactory, PushContentFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def app(manager_alice):
    app = AppFactory()
    access_grant(obj=app, to=manager_alice, by=None)
    return app


def make_dispatch(app, statuses) -> Dispatch:
    dispatch = Dispatch.objects.create(
        app=app, kind="api_trigger", content_spec=PushContentFactory(app=app).spec(), status="done"
    )
    for status, reason in statuses:
        device = DeviceFactory(app=app)
        Delivery.objects.create(dispatch=dispatch, device=device, profile=device.profile, status=status, reason=reason)
    rollup_rebuild(dispatch_ids=[dispatch.pk])  # as the send pipeline would have counted them
    return dispatch_recount(dispatch_id=dispatch.pk)


def test_dispatch_status_counters_and_reasons(api_key_for, manager_alice, app, django_assert_max_num_queries):
    dispatch = make_dispatch(
        app, [("accepted", ""), ("accepted", ""), ("failed", "Unregistered"), ("skipped", "no_device")]
    )
    client = api_key_for(manager_alice, scopes=["read"])
    with django_assert_max_num_queries(12):
        response = client.get(f"/api/v1/dispatches/{dispatch.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["total"], body["accepted"], body["failed"], body["skipped"]) == ("done", 4, 2, 1, 1)
    assert {"status": "failed", "reason": "Unregistered", "count": 1} in body["outcomes"]


def test_deliveries_filter_by_status_and_page_by_id(api_key_for, manager_alice, app):
    dispatch = make_dispatch(app, [("accepted", "")] * 3 + [("failed", "BadDeviceToken")])
    client = api_key_for(manager_alice, scopes=["read"])
    first = client.get(f"/api/v1/dispatches/{dispatch.pk}/deliveries/?status=accepted&limit=2").json()
    assert [d["status"] for d in first["results"]] == ["accepted", "accepted"]
    rest = client.get(
        f"/api/v1/dispatches/{dispatch.pk}/deliveries/?status=accepted&limit=2&after={first['next_after']}"
    ).json()
    assert len(rest["results"]) == 1 and rest["next_after"] is None
    failed = client.get(f"/api/v1/dispatches/{dispatch.pk}/deliveries/?status=failed").json()["results"]
    assert [(d["status"], d["reason"]) for d in failed] == [("failed", "BadDeviceToken")]
    bad = client.get(f"/api/v1/dispatches/{dispatch.pk}/deliveries/?status=lost")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "status"


def test_a_delivery_whose_profile_and_device_were_deleted_keeps_their_ids(api_key_for, manager_alice, app):
    dispatch = make_dispatch(app, [("accepted", ""), ("accepted", "")])
    gone, kept = Delivery.objects.filter(dispatch=dispatch).order_by("id")
    profiles_delete(profile_ids=[gone.profile_id], by=manager_alice)  # its device goes with it
    assert not Device.objects.filter(pk=gone.device_id).exists()
    client = api_key_for(manager_alice, scopes=["read"])
    detail = client.get(f"/api/v1/deliveries/{gone.pk}/")
    assert detail.status_code == 200
    body = detail.json()
    assert (body["device"], body["platform"], body["profile"], body["external_id"], body["status"]) == (
        gone.device_id,
        None,
        gone.profile_id,
        None,
        "accepted",
    )
    assert client.get(f"/api/v1/deliveries/{kept.pk}/").json()["platform"] == kept.device.platform
    listed = client.get(f"/api/v1/dispatches/{dispatch.pk}/deliveries/").json()["results"]
    assert [d["device"] for d in listed] == [gone.device_id, kept.device_id]


def test_dispatch_of_an_app_without_access_is_404(api_key_for, outsider_dave, manager_mallory):
    dispatch = make_dispatch(AppFactory(), [("accepted", "")])
    client = api_key_for(manager_mallory, scopes=["read"])
    assert client.get(f"/api/v1/dispatches/{dispatch.pk}/").status_code == 404
    assert client.get(f"/api/v1/dispatches/{dispatch.pk}/deliveries/").status_code == 404


def test_open_is_recorded_once(api_key_for, manager_alice, app):
    dispatch = make_dispatch(app, [("accepted", "")])
    delivery = Delivery.objects.get(dispatch=dispatch)
    client = api_key_for(manager_alice, scopes=["ingest"])
    first = client.post(
        "/api/v1/opens/", {"app": app.pk, "delivery": delivery.pk, "token": delivery.device.token}, format="json"
    )
    assert first.status_code == 200 and first.json()["opened_at"]
    opened_at = Delivery.objects.get(pk=delivery.pk).opened_at
    again = client.post(
        "/api/v1/opens/", {"app": app.pk, "delivery": delivery.pk, "token": delivery.device.token}, format="json"
    )
    assert again.status_code == 409 and again.json()["code"] == "already_opened"
    assert Delivery.objects.get(pk=delivery.pk).opened_at == opened_at
    assert Dispatch.objects.get(pk=dispatch.pk).opened == 1


def test_an_open_is_taken_only_from_the_phone_the_push_was_sent_to(api_key_for, manager_alice, app):
    """The key an app ships is public and delivery ids count upwards: anyone reported opens of others'
    pushes, swaying open rates and a winner picked by them."""
    dispatch = make_dispatch(app, [("accepted", ""), ("accepted", "")])
    Device.objects.filter(pk=Delivery.objects.filter(dispatch=dispatch).order_by("pk").last().device_id).update(
        platform="ios", token="ab" * 32
    )
    mine, theirs = Delivery.objects.filter(dispatch=dispatch).select_related("device").order_by("pk")
    client = api_key_for(manager_alice, scopes=["ingest"])
    forged = client.post(
        "/api/v1/opens/", {"app": app.pk, "delivery": theirs.pk, "token": mine.device.token}, format="json"
    )
    assert forged.status_code == 404 and forged.json()["code"] == "not_found"
    missing = client.post("/api/v1/opens/", {"app": app.pk, "delivery": theirs.pk}, format="json")
    assert missing.status_code == 400 and missing.json()["errors"][0]["field"] == "token"
    assert Delivery.objects.get(pk=theirs.pk).opened_at is None
    assert Dispatch.objects.get(pk=dispatch.pk).opened == 0
    own = {"app": app.pk, "delivery": theirs.pk, "token": "AB" * 32}  # an APNs token in capitals: the same phone
    assert client.post("/api/v1/opens/", own, format="json").status_code == 200
    assert Delivery.objects.get(pk=theirs.pk).opened_at is not None


def test_open_for_another_apps_delivery_is_404(api_key_for, manager_alice, app):
    other = AppFactory()
    access_grant(obj=other, to=manager_alice, by=None)
    delivery = Delivery.objects.get(dispatch=make_dispatch(other, [("accepted", "")]))
    client = api_key_for(manager_alice, scopes=["ingest"])
    response = client.post(
        "/api/v1/opens/", {"app": app.pk, "delivery": delivery.pk, "token": delivery.device.token}, format="json"
    )
    assert response.status_code == 404
    assert Delivery.objects.get(pk=delivery.pk).opened_at is None


@pytest.mark.parametrize("status", ["failed", "skipped", "queued", "unknown"])
def test_an_open_on_a_delivery_that_was_not_accepted_is_409_not_accepted(api_key_for, manager_alice, app, status):
    delivery = Delivery.objects.get(dispatch=make_dispatch(app, [(status, "")]))
    response = api_key_for(manager_alice, scopes=["ingest"]).post(
        "/api/v1/opens/", {"app": app.pk, "delivery": delivery.pk, "token": delivery.device.token}, format="json"
    )
    assert response.status_code == 409 and response.json()["code"] == "not_accepted"
    assert Delivery.objects.get(pk=delivery.pk).opened_at is None


def test_opens_need_a_role_that_writes_profiles(api_key_for, approver_bob, manager_alice, app):
    from django.contrib.auth.models import Group

    access_grant(obj=app, to=approver_bob, by=None)
    delivery = Delivery.objects.get(dispatch=make_dispatch(app, [("accepted", "")]))
    approver = api_key_for(approver_bob, scopes=["ingest"])
    response = approver.post(
        "/api/v1/opens/", {"app": app.pk, "delivery": delivery.pk, "token": delivery.device.token}, format="json"
    )
    assert response.status_code == 403 and response.json()["code"] == "permission_denied"
    # A key made while its user was a Manager stops working once the user becomes a Viewer.
    manager = api_key_for(manager_alice, scopes=["ingest"])
    manager_alice.groups.set([Group.objects.get(name="Viewer")])
    response = manager.post(
        "/api/v1/opens/", {"app": app.pk, "delivery": delivery.pk, "token": delivery.device.token}, format="json"
    )
    assert response.status_code == 401 and response.json()["code"] == "account_role"
    assert Delivery.objects.get(pk=delivery.pk).opened_at is None


def test_dispatch_list_filters_by_status_and_hides_other_apps(
    api_key_for, manager_alice, app, django_assert_max_num_queries
):
    done = make_dispatch(app, [("accepted", "")])
    sending = make_dispatch(app, [("queued", "")])
    Dispatch.objects.filter(pk=sending.pk).update(status="sending")
    elsewhere = make_dispatch(AppFactory(), [("accepted", "")])
    client = api_key_for(manager_alice, scopes=["read"])
    with django_assert_max_num_queries(12):
        everything = client.get("/api/v1/dispatches/")
    assert everything.status_code == 200
    assert [d["id"] for d in everything.json()["results"]] == [sending.pk, done.pk]
    assert elsewhere.pk not in [d["id"] for d in everything.json()["results"]]
    in_progress = client.get("/api/v1/dispatches/?status=sending").json()
    assert in_progress["count"] == 1 and in_progress["results"][0]["id"] == sending.pk
    assert in_progress["results"][0]["total"] == 1
    by_app = client.get(f"/api/v1/dispatches/?app={app.pk}&kind=api_trigger").json()
    assert by_app["count"] == 2


@pytest.mark.parametrize(("query", "field"), [("status=lost", "status"), ("kind=fax", "kind"), ("app=x", "app")])
def test_dispatch_list_names_the_bad_filter(api_key_for, manager_alice, query, field):
    response = api_key_for(manager_alice, scopes=["read"]).get(f"/api/v1/dispatches/?{query}")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == field


def test_dispatch_list_needs_the_read_scope_and_shows_only_what_is_in_access(
    api_key_for, manager_alice, manager_mallory, app
):
    make_dispatch(app, [("accepted", "")])
    assert api_key_for(manager_alice, scopes=["ingest"]).get("/api/v1/dispatches/").status_code == 403
    assert api_key_for(manager_alice, scopes=["read"]).get("/api/v1/dispatches/").json()["count"] == 1
    assert api_key_for(manager_mallory, scopes=["read"]).get("/api/v1/dispatches/").json()["count"] == 0


def test_the_list_sums_its_open_streams_in_one_query(api_key_for, manager_alice, app, django_assert_num_queries):
    """Each open stream's counters were summed with a query of its own: a page of a thousand
    dispatches asked up to a thousand and one."""
    client = api_key_for(manager_alice, scopes=["read"])

    def open_stream(statuses):
        stream = make_dispatch(app, statuses)
        Dispatch.objects.filter(pk=stream.pk).update(status="sending", standing=True, total=0, accepted=0, failed=0)
        return stream

    for _ in range(5):
        open_stream([("accepted", ""), ("failed", "BadDeviceToken")])
    client.get("/api/v1/dispatches/")  # the key and its user, loaded once
    with django_assert_num_queries(3):  # the count, the page, and the sums of its open streams
        answer = client.get("/api/v1/dispatches/")
    streams = answer.json()["results"]
    assert len(streams) == 5
    assert {(d["total"], d["accepted"], d["failed"]) for d in streams} == {(2, 1, 1)}  # summed now, not the row's 0


def test_a_dispatchs_answer_names_the_zone_its_now_renders_in(api_key_for, manager_alice, app):
    paris = make_dispatch(app, [("accepted", "")])
    Dispatch.objects.filter(pk=paris.pk).update(time_zone="Europe/Paris")
    older = make_dispatch(app, [("accepted", "")])
    client = api_key_for(manager_alice, scopes=["read"])
    assert client.get(f"/api/v1/dispatches/{paris.pk}/").json()["time_zone"] == "Europe/Paris"
    assert client.get(f"/api/v1/dispatches/{older.pk}/").json()["time_zone"] == "UTC"
    listed = {d["id"]: d["time_zone"] for d in client.get("/api/v1/dispatches/").json()["results"]}
    assert listed == {paris.pk: "Europe/Paris", older.pk: "UTC"}


def test_a_dispatch_says_the_campaign_that_sent_it(api_key_for, manager_alice, app):
    """The admin's Sent by (the campaign or the journey that sent a send) was not in the API."""
    from campaigns.services.lifecycle import campaign_create
    from tests.factories import SegmentFactory

    campaign = campaign_create(
        by=manager_alice,
        name="Order shipped",
        app=app,
        kind="api_triggered",
        segment=SegmentFactory(),
        content=PushContentFactory(app=app),
    )
    sent = make_dispatch(app, [("accepted", "")])
    Dispatch.objects.filter(pk=sent.pk).update(source_id=campaign.pk)
    unsourced = make_dispatch(app, [("accepted", "")])
    client = api_key_for(manager_alice, scopes=["read"])
    expected = {"kind": "campaign", "campaign_id": campaign.pk, "journey_id": None, "journey_version": None}
    assert client.get(f"/api/v1/dispatches/{sent.pk}/").json()["sent_by"] == {**expected, "name": "Order shipped"}
    listed = {d["id"]: d["sent_by"] for d in client.get("/api/v1/dispatches/").json()["results"]}
    assert listed == {sent.pk: {**expected, "name": "Order shipped"}, unsourced.pk: None}


def test_a_journey_s_dispatch_says_the_journey_and_its_version(api_key_for, manager_alice, app):
    from journeys.services.lifecycle import journey_create

    graph = {
        "steps": [
            {"id": "push", "type": "push", "content": PushContentFactory(app=app).pk, "next": "done"},
            {"id": "done", "type": "exit"},
        ]
    }
    journey = journey_create(
        by=manager_alice, name="Welcome", app=app, graph=graph, entry_kind="event", entry_event="signed_up"
    )
    version = journey.versions.get()
    sent = make_dispatch(app, [("accepted", "")])
    Dispatch.objects.filter(pk=sent.pk).update(kind="journey", source_id=version.pk)
    expected = {
        "kind": "journey",
        "campaign_id": None,
        "journey_id": journey.pk,
        "journey_version": version.number,
        "name": "Welcome",
    }
    client = api_key_for(manager_alice, scopes=["read"])
    assert client.get(f"/api/v1/dispatches/{sent.pk}/").json()["sent_by"] == expected
    assert [d["sent_by"] for d in client.get("/api/v1/dispatches/").json()["results"]] == [expected]
