"""Devices through the API: register, re-register, opt-in, unregister, and bad input."""

import threading

import pytest
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction

from accounts.services import access_grant
from audiences.models import Profile
from audiences.services.profiles import profiles_delete
from delivery.models import Device
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, UserFactory
from tests.locks import concurrently, wait_for_a_blocked_writer

pytestmark = pytest.mark.django_db

IOS_TOKEN = "ab" * 32
FCM_TOKEN = "fcm-token-00000000000000000001:APA91b"


@pytest.fixture
def app(manager_alice):
    app = AppFactory()
    access_grant(obj=app, to=manager_alice, by=None)
    return app


@pytest.fixture
def ingest(api_key_for, manager_alice):
    return api_key_for(manager_alice, scopes=["ingest"])


def register(client, app, **changes):
    body = {"app": app.pk, "external_id": "user-1", "platform": "ios", "token": IOS_TOKEN, **changes}
    return client.post("/api/v1/devices/", body, format="json")


def test_mobile_app_registers_a_token_and_the_profile_is_created(ingest, app):
    response = register(ingest, app, push_enabled=False)
    assert response.status_code == 201, response.json()
    device = Device.objects.get()
    assert device.profile.external_id == "user-1"
    assert (device.platform, device.push_enabled, device.active) == ("ios", False, True)
    assert response.json()["external_id"] == "user-1"


def test_a_token_for_an_external_id_with_spaces_around_it_is_refused(ingest, app):
    """As a profile's call refuses it: " user-1" would have been a second profile holding the phone."""
    ProfileFactory(external_id="user-1")
    response = register(ingest, app, external_id=" user-1")
    assert response.status_code == 400, response.json()
    assert response.json()["errors"][0]["field"] == "external_id"
    assert not Device.objects.exists()
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["user-1"]


def test_re_registering_a_token_moves_it_to_the_new_profile_and_revives_it(ingest, app):
    old = ProfileFactory(external_id="old-owner")
    DeviceFactory(app=app, profile=old, token=IOS_TOKEN, active=False, invalidated_reason="Unregistered")
    response = register(ingest, app, external_id="new-owner")
    assert response.status_code == 200
    device = Device.objects.get()
    assert device.profile.external_id == "new-owner"
    assert device.active and device.invalidated_reason == "" and device.invalidated_at is None


def test_same_token_in_two_apps_is_two_devices(ingest, app, manager_alice):
    other = AppFactory()
    access_grant(obj=other, to=manager_alice, by=None)
    assert register(ingest, app).status_code == 201
    assert register(ingest, other).status_code == 201
    assert Device.objects.count() == 2


def test_opt_in_is_updated(ingest, app):
    register(ingest, app)
    response = ingest.post(
        "/api/v1/devices/opt-in/", {"app": app.pk, "token": IOS_TOKEN, "push_enabled": False}, format="json"
    )
    assert response.status_code == 200
    assert Device.objects.get().push_enabled is False


def test_registering_again_keeps_the_test_flag_an_admin_set(ingest, app, admin_erin):
    # The app registers its token at each launch, and knows nothing of test devices: that cleared the flag.
    from delivery.services.devices import devices_test_flag_set

    register(ingest, app)
    devices_test_flag_set(device_ids=[Device.objects.get().pk], is_test=True, by=admin_erin)
    assert register(ingest, app).status_code == 200
    assert Device.objects.get().is_test is True


@pytest.mark.parametrize(
    ("role", "scopes"),
    [("Manager", ["ingest"]), ("Manager", ["ingest", "test_devices"]), ("Administrator", ["ingest"])],
    ids=["manager_ingest", "manager_test_devices", "administrator_ingest"],
)
def test_is_test_false_from_a_key_that_may_not_mark_test_devices_keeps_the_mark_and_says_so(
    api_key_for, app, admin_erin, role, scopes
):
    """Apps send is_test: false at every registration: from any key, that unmarked the phone an
    Administrator had marked. A key that may not mark test devices (without the test_devices scope,
    or whose user is not an Administrator) registers the token and leaves its mark as it is; the
    answer's is_test says it is still a test device."""
    from delivery.services.devices import devices_test_flag_set

    user = admin_erin if role == "Administrator" else UserFactory(username="manager_pia", role=role)
    access_grant(obj=app, to=user, by=None)
    key = api_key_for(user, scopes=scopes)
    assert register(key, app, is_test=False).status_code == 201  # a new token: not a test device
    assert Device.objects.get().is_test is False
    devices_test_flag_set(device_ids=[Device.objects.get().pk], is_test=True, by=admin_erin)
    kept = register(key, app, is_test=False, external_id="user-2")
    assert kept.status_code == 200, kept.json()
    assert kept.json()["is_test"] is True and kept.json()["external_id"] == "user-2"  # registered, mark kept
    device = Device.objects.get()
    assert (device.is_test, device.profile.external_id) == (True, "user-2")


def test_is_test_false_from_an_administrators_test_devices_key_unmarks_the_device(api_key_for, app, admin_erin):
    from delivery.services.devices import devices_test_flag_set

    tester = api_key_for(admin_erin, scopes=["ingest", "test_devices"])
    register(tester, app)
    devices_test_flag_set(device_ids=[Device.objects.get().pk], is_test=True, by=admin_erin)
    unmarked = register(tester, app, is_test=False)
    assert unmarked.status_code == 200 and unmarked.json()["is_test"] is False
    assert Device.objects.get().is_test is False


def test_the_service_keeps_the_mark_when_a_manager_registers_a_test_device_with_is_test_false(app, manager_alice):
    from delivery.services.devices import device_register

    marked = DeviceFactory(app=app, token=IOS_TOKEN, is_test=True)
    device, created = device_register(
        app_id=app.pk, external_id="user-9", platform="ios", token=IOS_TOKEN, is_test=False, by=manager_alice
    )
    assert (device.pk, created, device.is_test) == (marked.pk, False, True)
    assert Device.objects.get(pk=marked.pk).is_test is True


def test_an_ingest_key_cannot_make_a_device_a_test_device_one_of_the_test_devices_scope_can(
    ingest, app, api_key_for, admin_erin
):
    """A key an app ships is public: with ingest alone, anyone's phone registered itself as a test
    device and was sent every draft's test send, before any approval."""
    refused = register(ingest, app, is_test=True)
    assert refused.status_code == 403
    assert refused.json()["code"] == "insufficient_scope"
    assert refused.json()["detail"].startswith("is_test: a test device is registered only with a key of the")
    assert not Device.objects.exists()  # nothing written, the profile neither
    assert not Profile.objects.filter(external_id="user-1").exists()
    register(ingest, app)
    assert register(ingest, app, is_test=True).status_code == 403
    assert Device.objects.get().is_test is False

    tester = api_key_for(admin_erin, scopes=["ingest", "test_devices"])
    assert register(tester, app, is_test=True).status_code == 200
    assert Device.objects.get().is_test is True


@pytest.mark.parametrize("role", ["Manager", "Approver"])
def test_a_test_devices_key_of_a_manager_or_an_approver_registers_no_test_device(api_key_for, app, role):
    """The key's scope is not enough: a test device gets drafts nobody approved, and only an
    Administrator's role may make one (delivery.mark_test_device). A Viewer owns no key."""
    user = UserFactory(username=f"{role.lower()}_pia", role=role)
    access_grant(obj=app, to=user, by=None)
    tester = api_key_for(user, scopes=["ingest", "test_devices"])
    refused = register(tester, app, is_test=True)
    assert refused.status_code == 403
    assert refused.json()["code"] == "permission_denied"
    assert refused.json()["errors"][0]["field"] == "is_test"
    assert refused.json()["detail"].startswith("is_test: only an Administrator's key"), refused.json()
    assert not Device.objects.exists()
    assert not Profile.objects.filter(external_id="user-1").exists()


@pytest.mark.parametrize("role", ["Manager", "Viewer"])
def test_the_service_refuses_a_manager_or_a_viewer_marking_or_unmarking_test_devices(app, role):
    from accounts.models import AuditEvent
    from delivery.services.devices import device_register, devices_test_flag_set

    user = UserFactory(username=f"{role.lower()}_pia", role=role)
    access_grant(obj=app, to=user, by=None)
    plain, tester = DeviceFactory(app=app), DeviceFactory(app=app, is_test=True)
    for ids, flag in (([plain.pk], True), ([tester.pk], False)):
        with pytest.raises(PermissionDenied):
            devices_test_flag_set(device_ids=ids, is_test=flag, by=user)
    with pytest.raises(PermissionDenied):
        device_register(app_id=app.pk, external_id="user-9", platform="ios", token=IOS_TOKEN, is_test=True, by=user)
    assert set(Device.objects.values_list("pk", "is_test")) == {(plain.pk, False), (tester.pk, True)}
    assert not AuditEvent.objects.filter(action="device_test_flag_set").exists()


def test_an_administrator_marks_and_unmarks_test_devices_audited(app, admin_erin):
    from accounts.models import AuditEvent
    from delivery.services.devices import devices_test_flag_set

    device = DeviceFactory(app=app)
    assert devices_test_flag_set(device_ids=[device.pk], is_test=True, by=admin_erin) == 1
    device.refresh_from_db()
    assert device.is_test
    assert devices_test_flag_set(device_ids=[device.pk], is_test=False, by=admin_erin) == 1
    device.refresh_from_db()
    assert not device.is_test
    assert AuditEvent.objects.filter(actor=admin_erin, action="device_test_flag_set").count() == 2


def test_registering_again_without_the_opt_in_keeps_the_one_reported(ingest, app):
    register(ingest, app)
    ingest.post("/api/v1/devices/opt-in/", {"app": app.pk, "token": IOS_TOKEN, "push_enabled": False}, format="json")
    response = register(ingest, app, external_id="user-2")  # moved to another profile, the phone's opt-in unchanged
    assert response.status_code == 200 and response.json()["push_enabled"] is False
    device = Device.objects.get()
    assert (device.profile.external_id, device.push_enabled) == ("user-2", False)
    assert register(ingest, app, push_enabled=True).json()["push_enabled"] is True
    assert Device.objects.get().push_enabled is True


def test_a_new_token_without_opt_in_or_test_flag_is_opted_in_and_not_a_test_device(ingest, app):
    assert register(ingest, app).status_code == 201
    device = Device.objects.get()
    assert (device.push_enabled, device.is_test) == (True, False)


def test_unregister_deactivates_the_device(ingest, app):
    register(ingest, app, platform="android", token=FCM_TOKEN)
    response = ingest.post("/api/v1/devices/unregister/", {"app": app.pk, "token": FCM_TOKEN}, format="json")
    assert response.status_code == 200
    device = Device.objects.get()
    assert not device.active and device.invalidated_reason == "unregistered"


def test_unregistering_an_unknown_token_answers_404(ingest, app):
    response = ingest.post("/api/v1/devices/unregister/", {"app": app.pk, "token": IOS_TOKEN}, format="json")
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"platform": "windows"}, "platform"),
        ({"token": ""}, "token"),
        ({"token": "not-hex-at-all"}, "token"),
        ({"token": "abc"}, "token"),
        ({"platform": "android", "token": "short"}, "token"),
        ({"platform": "android", "token": "has spaces in it, which FCM never sends"}, "token"),
        # A line end after the token: no provider takes it (APNs' URL cannot hold it).
        ({"token": IOS_TOKEN + "a\n"}, "token"),
        ({"platform": "android", "token": FCM_TOKEN + "\n"}, "token"),
        # Blank: no profile may have it (the profile's check named it "[0].external_id").
        ({"external_id": "   "}, "external_id"),
    ],
)
def test_bad_device_input_is_refused_naming_the_field_and_nothing_is_saved(ingest, app, changes, field):
    response = register(ingest, app, **changes)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert [error["field"] for error in body["errors"]] == [field]
    assert body["detail"].startswith(f"{field}: ")
    assert not Device.objects.exists() and not Profile.objects.exists()


def test_app_outside_the_keys_access_answers_404(ingest):
    other = AppFactory()
    assert register(ingest, other).status_code == 404
    assert not Device.objects.exists()


def test_read_only_key_cannot_register(api_key_for, manager_alice, app):
    client = api_key_for(manager_alice, scopes=["read"])
    assert register(client, app).status_code == 403


def test_approver_cannot_register_devices(api_key_for, approver_bob, app):
    access_grant(obj=app, to=approver_bob, by=None)
    client = api_key_for(approver_bob, scopes=["ingest"])
    assert register(client, app).status_code == 403
    assert not Device.objects.exists()


def send_to(app, external_id, capture):
    """Send a push to the profile ``external_id`` of ``app``, as the pipeline tests do."""
    from audiences.models import Profile
    from delivery.models import Dispatch
    from delivery.services.dispatches import dispatch_create
    from tests.factories import PushContentFactory

    content = PushContentFactory(app=app)
    with capture(execute=True):
        dispatch = dispatch_create(
            app_id=app.pk,
            kind=Dispatch.Kind.API_TRIGGER,
            spec=content.spec(),
            content_id=content.pk,
            profile_ids=[Profile.objects.get(external_id=external_id).pk],
        )
    dispatch.refresh_from_db()
    return dispatch


def test_one_iphone_registered_in_upper_and_lower_case_receives_a_send_once(
    ingest, manager_alice, pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    """APNs tokens are hexadecimal, their case meaningless: an app update (or a second SDK) that
    formats the same token in capitals registered the phone twice, and every send reached it twice."""
    from collections import Counter

    from delivery.models import Dispatch

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    token = "0a1b2c3d4e5f" * 5 + "9e8f"
    response = register(ingest, pushsim_app, token=token.upper())
    assert response.status_code == 201 and response.json()["token"] == token
    response = register(ingest, pushsim_app, token=token)
    assert response.status_code == 200, response.json()  # the phone it knew

    dispatch = send_to(pushsim_app, "user-1", django_capture_on_commit_callbacks)

    assert (dispatch.status, dispatch.total, dispatch.accepted) == (Dispatch.Status.DONE, 1, 1)
    assert Counter(item.token.lower() for item in pushsim.state.received) == {token: 1}
    assert list(Device.objects.values_list("token", flat=True)) == [token]


def test_apns_calling_the_token_dead_deactivates_the_phone_whatever_case_it_registered_in(
    ingest, manager_alice, pushsim_app, pushsim, open_gate, django_capture_on_commit_callbacks
):
    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    token = "0a1b2c3d4e5f" * 5 + "9e8f"
    pushsim.state.add_device(token=token, platform="ios", state="unregistered")
    register(ingest, pushsim_app, token=token.upper())

    dispatch = send_to(pushsim_app, "user-1", django_capture_on_commit_callbacks)

    assert (dispatch.total, dispatch.failed) == (1, 1)
    device = Device.objects.get()
    assert (device.active, device.invalidated_reason) == (False, "Unregistered")
    # The app registering it again, in capitals, brings the same device back.
    assert register(ingest, pushsim_app, token=token.upper()).status_code == 200
    assert Device.objects.get().active


@pytest.mark.parametrize("path", ["/api/v1/devices/opt-in/", "/api/v1/devices/unregister/"])
def test_opt_in_and_unregister_find_an_apns_token_in_any_case(ingest, app, path):
    register(ingest, app, token=IOS_TOKEN.upper())
    response = ingest.post(path, {"app": app.pk, "token": IOS_TOKEN.upper(), "push_enabled": False}, format="json")
    assert response.status_code == 200, response.json()
    device = Device.objects.get()
    assert device.token == IOS_TOKEN
    assert not device.push_enabled if "opt-in" in path else not device.active


def test_fcm_tokens_keep_their_case(ingest, app):
    upper = FCM_TOKEN.replace("fcm-token", "FCM-Token")
    assert register(ingest, app, platform="android", token=FCM_TOKEN).status_code == 201
    assert register(ingest, app, platform="android", token=upper).status_code == 201
    assert set(Device.objects.values_list("token", flat=True)) == {FCM_TOKEN, upper}
    Device.objects.filter(token=upper).delete()
    response = ingest.post("/api/v1/devices/unregister/", {"app": app.pk, "token": upper}, format="json")
    assert response.status_code == 404  # another token, not the one in lowercase
    assert Device.objects.get().active


@pytest.mark.parametrize("change", ["register", "opt-in", "unregister"])
def test_a_device_change_reads_its_app_once(app, manager_alice, change):
    """The app's access is the one read of it: each change also loaded the whole row (its encrypted
    credentials among its columns) for its id alone."""
    from django.test.utils import CaptureQueriesContext

    from delivery.services.devices import device_opt_in_set, device_register, device_unregister

    DeviceFactory(app=app, token=IOS_TOKEN)
    with CaptureQueriesContext(connection) as queries:
        if change == "register":
            device_register(app_id=app.pk, external_id="user-1", platform="ios", token=IOS_TOKEN, by=manager_alice)
        elif change == "opt-in":
            device_opt_in_set(app_id=app.pk, token=IOS_TOKEN, push_enabled=False, by=manager_alice)
        else:
            device_unregister(app_id=app.pk, token=IOS_TOKEN, by=manager_alice)
    assert len([q for q in queries.captured_queries if 'FROM "delivery_app"' in q["sql"]]) == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks between two sessions")
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("change", ["unregister", "opt-in", "register", "invalidate"])
def test_a_device_change_and_a_deletion_of_its_profile_do_not_deadlock(manager_alice, monkeypatch, change):
    """A deletion locks its profile, then removes its devices. A device change locked the device,
    and the reach trigger its profile after it: holding the device, it waited for the profile the
    deletion held, while the deletion waited for the device ('deadlock detected'). A device change
    now locks its profiles first, as every writer of profiles does: it waits for the deletion."""
    from audiences.services import profiles as profile_services
    from delivery.services.devices import device_opt_in_set, device_register, device_unregister, devices_invalidate

    app = AppFactory()
    access_grant(obj=app, to=manager_alice, by=None)
    ann = ProfileFactory(external_id="ann")
    device = DeviceFactory(app=app, profile=ann, token=IOS_TOKEN, push_enabled=True)
    audit, locked, blocked = profile_services.audit, threading.Event(), []

    def audited_once_the_device_change_waits(**kwargs):
        audit(**kwargs)
        if kwargs["action"] == "profile_deleted":  # the deletion holds the profile now
            locked.set()
            blocked.append(wait_for_a_blocked_writer())

    monkeypatch.setattr(profile_services, "audit", audited_once_the_device_change_waits)

    def deletion():
        profiles_delete(profile_ids=[ann.pk], by=manager_alice)

    def device_change():
        locked.wait(10)
        if change == "unregister":
            device_unregister(app_id=app.pk, token=IOS_TOKEN, by=manager_alice)
        elif change == "opt-in":
            device_opt_in_set(app_id=app.pk, token=IOS_TOKEN, push_enabled=False, by=manager_alice)
        elif change == "register":
            device_register(app_id=app.pk, external_id="bob", platform="ios", token=IOS_TOKEN, by=manager_alice)
        else:
            devices_invalidate(reasons={device.pk: "Unregistered"})

    errors = concurrently(deletion, lambda: transaction.atomic(device_change)())
    assert not [e for e in errors if not isinstance(e, Device.DoesNotExist)], errors
    assert blocked == [True]
    assert not Profile.objects.filter(pk=ann.pk).exists()
    if change == "register":  # registered anew, once the deletion took the device with its profile
        assert list(Device.objects.values_list("profile__external_id", flat=True)) == ["bob"]
    else:
        assert not Device.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_token_another_call_registered_meanwhile_is_answered_200_not_201(ingest, app):
    """The call looked the token up before it registered it: one whose insert waited for another
    call's and gave way answered 201, as if it had created the device (three at once all did)."""
    from django.db import connections

    answers = []

    def register_in_its_own_connection():
        try:
            answers.append(register(ingest, app, external_id="second"))
        finally:
            connections.close_all()

    with transaction.atomic():
        Device.objects.create(app=app, profile=ProfileFactory(external_id="first"), platform="ios", token=IOS_TOKEN)
        call = threading.Thread(target=register_in_its_own_connection)
        call.start()
        assert wait_for_a_blocked_writer()  # its insert waits for this one's
    call.join()
    [answer] = answers
    assert answer.status_code == 200, answer.json()
    assert list(Device.objects.values_list("profile__external_id", flat=True)) == ["second"]


@pytest.mark.embedded
def test_a_phone_logged_out_opted_out_or_handed_to_another_user_after_a_send_was_resolved_gets_nothing(
    ingest, manager_alice, pushsim_app, pushsim, open_gate
):
    """A send's rows are resolved ahead of their sending (a throttled send runs for hours, quiet
    hours hold a row until morning): the phone's state when the row goes is the one that counts.
    A logout (unregister), an opt-out, or another user logging in on the phone (its token
    registered for them) took nothing off a row already queued: the old profile's push, rendered
    with its attributes, reached the phone the next user now holds."""
    from delivery.models import Delivery, Dispatch
    from delivery.services.dispatches import dispatch_create, dispatch_prepare
    from delivery.services.sending import dispatch_send
    from tests.factories import PushContentFactory

    access_grant(obj=pushsim_app, to=manager_alice, by=None)
    tokens = {name: f"{n:02x}" * 32 for n, name in enumerate(["logged_out", "opted_out", "handed_over", "kept"], 1)}
    for name, token in tokens.items():
        assert register(ingest, pushsim_app, external_id=name, token=token).status_code == 201
    content = PushContentFactory(app=pushsim_app)
    dispatch = dispatch_create(
        app_id=pushsim_app.pk,
        kind=Dispatch.Kind.API_TRIGGER,
        spec=content.spec(),
        content_id=content.pk,
        profile_ids=list(Profile.objects.filter(external_id__in=tokens).values_list("pk", flat=True)),
    )
    dispatch_prepare(dispatch_id=dispatch.pk)
    assert set(Delivery.objects.filter(dispatch=dispatch).values_list("status", flat=True)) == {"queued"}

    app = pushsim_app.pk
    unregister = {"app": app, "token": tokens["logged_out"]}
    assert ingest.post("/api/v1/devices/unregister/", unregister, format="json").status_code == 200
    opt_out = {"app": app, "token": tokens["opted_out"], "push_enabled": False}
    assert ingest.post("/api/v1/devices/opt-in/", opt_out, format="json").status_code == 200
    assert register(ingest, pushsim_app, external_id="next-user", token=tokens["handed_over"]).status_code == 200

    dispatch_send(dispatch_id=dispatch.pk)

    outcomes = {d.profile.external_id: (d.status, d.reason) for d in Delivery.objects.filter(dispatch=dispatch)}
    assert outcomes == {
        "logged_out": ("skipped", "device_inactive"),
        "opted_out": ("skipped", "not_opted_in"),
        "handed_over": ("skipped", "device_moved"),
        "kept": ("accepted", ""),
    }
    assert [r["token"] for r in pushsim.state.recent(limit=10)] == [tokens["kept"]]
    dispatch.refresh_from_db()
    assert (dispatch.status, dispatch.accepted, dispatch.skipped) == ("done", 1, 3)


@pytest.mark.embedded
@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/v1/devices/", {"external_id": "user-1", "platform": "ios", "token": IOS_TOKEN}),
        ("/api/v1/devices/opt-in/", {"token": IOS_TOKEN, "push_enabled": False}),
        ("/api/v1/devices/unregister/", {"token": IOS_TOKEN}),
        ("/api/v1/opens/", {"delivery": 1, "token": IOS_TOKEN}),
        ("/api/v1/profiles/", {"external_id": "user-1"}),
        ("/api/v1/profiles/bulk/", {"profiles": [{"external_id": "user-1"}]}),
        ("/api/v1/events/bulk/", {"events": []}),
    ],
)
def test_a_keys_ingest_calls_beyond_its_rate_answer_429_with_retry_after(
    settings, api_key_for, manager_alice, app, path, body
):
    """The key a mobile app ships is public: its calls were never limited, so one script holding
    it could write as fast as the server takes. Each key's ingest calls share one rate
    (PUSHDESK_INGEST_RATE_PER_KEY a second); beyond it, 429 with Retry-After, as triggers."""
    settings.PUSHDESK_INGEST_RATE_PER_KEY = 1  # a burst of one call
    key, other = api_key_for(manager_alice, scopes=["ingest"]), api_key_for(manager_alice, scopes=["ingest"])
    DeviceFactory(app=app, token=IOS_TOKEN)
    body = {"app": app.pk, **body} if path.startswith(("/api/v1/devices/", "/api/v1/opens/")) else body
    first = key.post(path, body, format="json")
    assert first.status_code != 429, first.json()
    throttled = key.post(path, body, format="json")
    assert throttled.status_code == 429, throttled.json()
    assert throttled.json()["code"] == "throttled" and throttled.json()["retry_after"] >= 1
    assert int(throttled["Retry-After"]) >= 1
    assert other.post(path, body, format="json").status_code != 429  # each key its own rate


def _winner_sample(app, *, test: int, reached: dict, status: str = "done"):
    """A winner sample's dispatch of ``app`` with a row per device of ``reached`` ({device: row status})."""
    from delivery.models import Delivery, Dispatch

    sample = Dispatch.objects.create(
        app=app,
        kind="campaign",
        source_id=test,
        content_spec={},
        status=status,
        sample={"part": "sample", "share": 20, "test": test},
    )
    for device, row in reached.items():
        Delivery.objects.create(dispatch=sample, device=device, profile_id=device.profile_id, status=row)
    return sample


@pytest.mark.embedded
def test_a_deleted_device_a_waiting_sample_reached_leaves_its_token_digest_and_its_successor_is_found(app):
    """A deletion (here one set-based statement) leaves a tombstone for each deleted device a winner
    sample waiting for its rest sent to (or may have), with its token's SHA-256, never the token;
    one the sample skipped, or did not reach, leaves none. A device registered again with that
    token is linked to the tombstone as its successor."""
    import hashlib

    from delivery.models import DeviceTombstone

    sent, unknown, held_out, outside = DeviceFactory.create_batch(4, app=app, platform="ios")
    _winner_sample(app, test=7, reached={sent: "accepted", unknown: "unknown", held_out: "skipped"})
    ids = {d.pk: d for d in (sent, unknown, held_out, outside)}

    Device.objects.filter(pk__in=ids).delete()

    tombstones = {t.device_id: t for t in DeviceTombstone.objects.all()}
    assert set(tombstones) == {sent.pk, unknown.pk}
    for device_id, tombstone in tombstones.items():
        token = ids[device_id].token
        assert (tombstone.app_id, tombstone.successor_id) == (app.pk, None)
        assert tombstone.token_digest == hashlib.sha256(token.encode()).hexdigest() != token
    again = DeviceFactory(app=app, platform="ios", token=sent.token)
    DeviceFactory(app=AppFactory(), platform="ios", token=unknown.token)  # the same token in another app
    assert DeviceTombstone.objects.get(device_id=sent.pk).successor_id == again.pk
    assert DeviceTombstone.objects.get(device_id=unknown.pk).successor_id is None


@pytest.mark.embedded
def test_a_deletion_after_the_rest_was_resolved_leaves_no_tombstone(app):
    """Once the rest of a sample is resolved (past preparing), no send needs the sample's phones
    told apart by token: deleting them leaves nothing."""
    from delivery.models import DeviceTombstone, Dispatch

    resolving, gone = DeviceFactory.create_batch(2, app=app)
    _winner_sample(app, test=8, reached={resolving: "accepted", gone: "accepted"})
    rest = Dispatch.objects.create(
        app=app, kind="campaign", source_id=8, content_spec={}, sample={"part": "rest", "share": 20, "test": 8}
    )
    kept = resolving.pk
    resolving.delete()  # the rest is still resolving: its tombstone is kept
    Dispatch.objects.filter(pk=rest.pk).update(status="sending")
    gone.delete()

    assert list(DeviceTombstone.objects.values_list("device_id", flat=True)) == [kept]


@pytest.mark.embedded
def test_a_device_deleted_with_rows_of_a_running_send_not_final_leaves_its_platform_while_the_send_runs(app):
    """Rows not final yet (queued, held by a worker, a stream's) were counted as targeted under their
    phone's platform: deleting the phone leaves a tombstone keeping it, for their outcomes, which
    come once it is gone, to be counted there too. A phone whose rows are all final leaves none.
    Retention keeps such a tombstone while a running dispatch has rows of its device not final yet."""
    from django.utils import timezone

    from delivery.models import Delivery, DeviceTombstone, Dispatch
    from delivery.services.devices import device_tombstones_delete

    queued, leased, streamed = DeviceFactory.create_batch(3, app=app, platform="android")
    answered = DeviceFactory(app=app, platform="ios")
    running = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="sending")
    stream = Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="sending", standing=True)
    for device, status in ((queued, "queued"), (leased, "sending"), (answered, "accepted")):
        finished = timezone.now() if status == "accepted" else None
        Delivery.objects.create(
            dispatch=running, device=device, profile_id=device.profile_id, status=status, finished_at=finished
        )
    Delivery.objects.create(dispatch=stream, device=streamed, profile_id=streamed.profile_id, queued_at=timezone.now())

    Device.objects.filter(pk__in=[queued.pk, leased.pk, streamed.pk, answered.pk]).delete()

    kept = dict(DeviceTombstone.objects.values_list("device_id", "platform"))
    assert kept == {queued.pk: "android", leased.pk: "android", streamed.pk: "android"}
    assert device_tombstones_delete(needed_since=None) == 0  # their rows are not final yet
    Delivery.objects.filter(device_id=queued.pk).update(status="failed", finished_at=timezone.now())
    assert device_tombstones_delete(needed_since=None) == 1
    Dispatch.objects.filter(pk=running.pk).update(status="stopped", finished_at=timezone.now())
    assert device_tombstones_delete(needed_since=None) == 1  # the stream still runs
    assert list(DeviceTombstone.objects.values_list("device_id", flat=True)) == [streamed.pk]
