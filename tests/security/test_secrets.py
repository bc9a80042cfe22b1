"""Secrets (app credentials, API keys, the installation's own keys) never leave where they are kept.

Not in API answers, log lines, audit events, exports, admin pages of any role, or error reports.
The admin pages of the credentials themselves are tested in tests/delivery/test_apps.py.
"""

import json
import logging

import pytest
from django.urls import reverse
from django.views.debug import SafeExceptionReporterFilter

from delivery.admin.devices import token_shortened


def fragments_of(apns_credentials, fcm_credentials):
    """Pieces of the simulator app's APNs key and FCM private key that must never show."""
    apns = [line for line in apns_credentials.private_key_pem.splitlines() if "-----" not in line]
    account = fcm_credentials.info
    fcm = [line for line in account["private_key"].splitlines() if "-----" not in line]
    return [apns[1], fcm[2], fcm[-2], account["private_key_id"]]


def everything_a_user_can_read(client, api, world):
    """The text of every API answer and admin page about ``world`` one user can reach."""
    texts = []
    for path in (
        f"/api/v1/campaigns/{world['campaigns.campaign'].pk}/",
        f"/api/v1/campaigns/{world['campaigns.campaign'].pk}/report/",
        f"/api/v1/dispatches/{world['delivery.dispatch'].pk}/",
        f"/api/v1/dispatches/{world['delivery.dispatch'].pk}/deliveries/",
        f"/api/v1/journeys/{world['journeys.journey'].pk}/",
        "/api/v1/me/",
        "/api/v1/schema/",
    ):
        texts.append(api.get(path).content.decode())
    app = world["delivery.app"]
    for path in (
        f"/admin/delivery/app/{app.pk}/change/",
        "/admin/delivery/app/",
        f"/admin/delivery/dispatch/{world['delivery.dispatch'].pk}/change/",
        f"/admin/campaigns/campaign/{world['campaigns.campaign'].pk}/change/",
        f"/admin/campaigns/campaign/{world['campaigns.campaign'].pk}/report.csv",
        "/admin/accounts/auditevent/",
        f"/admin/accounts/auditevent/?q={app.name}",
    ):
        response = client.get(path)
        texts.append(b"".join(response.streaming_content if response.streaming else [response.content]).decode())
    return texts


@pytest.mark.parametrize("who", ["admin_erin", "manager_alice"])
def test_app_credentials_are_in_no_answer_page_export_log_or_audit_event(
    client, world, apns_credentials, fcm_credentials, api_key_for, caplog, request, who
):
    caplog.set_level(logging.DEBUG)
    user = request.getfixturevalue(who)
    client.force_login(user)
    texts = everything_a_user_can_read(client, api_key_for(user, scopes=["read"]), world)
    from accounts.models import AuditEvent

    texts.append(json.dumps(list(AuditEvent.objects.values_list("summary", flat=True))))
    texts.append(caplog.text)
    for fragment in fragments_of(apns_credentials, fcm_credentials):
        assert all(fragment not in text for text in texts)


def test_a_send_and_a_connection_test_log_no_credential(world, apns_credentials, fcm_credentials, caplog, admin_erin):
    from delivery.services.apps import app_test_connection

    caplog.set_level(logging.DEBUG)
    app = world["delivery.app"]
    app_test_connection(app_id=app.pk, by=admin_erin)
    text = caplog.text
    assert text  # something was logged at DEBUG
    for fragment in fragments_of(apns_credentials, fcm_credentials):
        assert fragment not in text


def test_a_send_and_a_connection_test_log_no_provider_token_even_at_debug(
    world, apns_credentials, fcm_credentials, caplog, admin_erin, manager_alice, django_capture_on_commit_callbacks
):
    """hpack logs each HTTP/2 header block it encodes at DEBUG, the providers' bearer tokens among
    them (Huffman-coded, which anyone can decode): the settings keep it at INFO at any LOG_LEVEL."""
    import logging.config

    from django.conf import settings

    from campaigns.services.scheduling import campaign_test_send
    from delivery.services.apps import app_test_connection

    # As in a web process or a worker, where no simulator ran in-process (it quiets hpack itself).
    logging.getLogger("hpack").setLevel(logging.NOTSET)
    logging.config.dictConfig({"version": 1, "incremental": True, "loggers": settings.LOGGING["loggers"]})
    caplog.set_level(logging.DEBUG)
    app_test_connection(app_id=world["delivery.app"].pk, by=admin_erin)
    with django_capture_on_commit_callbacks(execute=True):
        campaign_test_send(campaign_id=world["campaigns.campaign"].pk, by=manager_alice)
    assert caplog.records  # DEBUG was on
    assert [r.getMessage() for r in caplog.records if r.name.startswith("hpack")] == []
    assert "bearer" not in caplog.text.lower()
    for fragment in fragments_of(apns_credentials, fcm_credentials):
        assert fragment not in caplog.text


def test_an_api_key_is_shown_once_and_then_never_again(client, admin_erin, caplog):
    from accounts.models import ApiKey, AuditEvent

    caplog.set_level(logging.DEBUG)
    client.force_login(admin_erin)
    from tests.pages import form_token_of

    token = form_token_of(client.get("/admin/accounts/apikey/add/").content)
    response = client.post(
        "/admin/accounts/apikey/add/",
        {"user": admin_erin.pk, "name": "backend", "scopes": ["read"], "form_token": token},
        follow=True,
    )
    page = response.content.decode()
    key = ApiKey.objects.get(name="backend")
    raw = next(word for word in page.replace("<", " ").replace(">", " ").split() if word.startswith("pdk_"))
    assert key.matches(raw)
    secret = raw.split("_", 2)[2]
    later = [
        client.get(f"/admin/accounts/apikey/{key.pk}/change/").content.decode(),
        client.get("/admin/accounts/apikey/").content.decode(),
        client.get("/admin/accounts/auditevent/").content.decode(),
        json.dumps(list(AuditEvent.objects.values_list("summary", flat=True))),
        json.dumps(list(ApiKey.objects.values()), default=str),
    ]
    # The key is used, refused once for a scope it lacks: still nowhere.
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/api/v1/me/").status_code == 200
    assert api.post("/api/v1/profiles/", {"external_id": "x"}, format="json").status_code == 403
    later.append(caplog.text)
    assert all(secret not in text for text in later)


def test_error_reports_hide_the_keys_and_the_passwords_in_service_urls(settings):
    settings.DATABASE_URL = "postgres://pushdesk:db-password-123@db.internal:5432/pushdesk"
    settings.REDIS_URL = "redis://:redis-password-456@cache.internal:6379/0"
    settings.CACHES = {"default": {"BACKEND": "x", "LOCATION": settings.REDIS_URL}}
    settings.Q_CLUSTER = {"name": "pushdesk", "redis": settings.REDIS_URL}
    from django.views.debug import get_default_exception_reporter_filter

    reporter = get_default_exception_reporter_filter()
    assert isinstance(reporter, SafeExceptionReporterFilter)
    shown = repr(reporter.get_safe_settings())
    for secret in (
        settings.SECRET_KEY,
        settings.PUSHDESK_ENCRYPTION_KEY,
        "db-password-123",
        "redis-password-456",
    ):
        assert secret not in shown
    assert "db.internal" in shown  # where it runs still helps whoever debugs


def test_error_reports_hide_a_password_with_an_at_sign_in_it_whole(settings):
    """Redis and PostgreSQL take the host after the last @: a password holding an @ still works."""
    settings.REDIS_URL = "redis://:p@ss-word-789@cache.internal:6379/0"
    settings.DATABASE_URL = "postgres://pushdesk:db@pass-012@db.internal:5432/pushdesk"
    from django.views.debug import get_default_exception_reporter_filter

    shown = repr(get_default_exception_reporter_filter().get_safe_settings())
    assert "ss-word-789" not in shown and "pass-012" not in shown
    assert "@cache.internal:6379/0" in shown and "pushdesk:" in shown


@pytest.fixture
def restored_under_another_key(settings):
    """The process now runs with a key other than the one the credentials were stored under (a backup
    restored with the wrong key, or the old key dropped before ``rotate_encryption_key`` ran)."""
    from cryptography.fernet import Fernet

    def switch():
        settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()

    return switch


@pytest.mark.parametrize("who", ["admin_erin", "manager_alice"])
def test_every_page_and_answer_about_an_app_whose_credentials_cannot_be_decrypted_still_shows(
    client, world, api_key_for, request, who, restored_under_another_key, apns_credentials, fcm_credentials
):
    """Loading the app's row (a campaign's, a device's, a dispatch's) decrypted its credentials, and a
    key that could not answered 500 on every page of its objects; only a send reads them now."""
    user = request.getfixturevalue(who)
    client.force_login(user)
    api = api_key_for(user, scopes=["read"])
    app = world["delivery.app"]
    restored_under_another_key()
    pages = {"/admin/": ["Spring sale"]}
    for key, shown in (
        ("campaigns.campaign", "Spring sale"),
        ("journeys.journey", "Onboarding"),
        ("audiences.segment", "Alice&#x27;s segment"),
        ("delivery.pushcontent", "Spring"),
        ("delivery.device", token_shortened(world["delivery.device"].token)),
        ("delivery.dispatch", "Test of Spring"),
        ("delivery.app", app.name),
    ):
        label = key.replace(".", "_")
        pages[reverse(f"admin:{label}_changelist")] = [shown] if key == "audiences.segment" else [shown, app.name]
        pages[reverse(f"admin:{label}_change", args=[world[key].pk])] = [shown, app.name]
    texts = []
    for path, shown in pages.items():
        response = client.get(path)
        assert response.status_code == 200, path
        texts.append(response.content.decode())
        assert all(text in texts[-1] for text in shown), path
    campaign, journey = world["campaigns.campaign"], world["journeys.journey"]
    for path, expected in (
        ("/api/v1/campaigns/", {"name": "Spring sale", "app": app.pk}),
        (f"/api/v1/campaigns/{campaign.pk}/", {"name": "Spring sale", "app": app.pk}),
        (f"/api/v1/campaigns/{campaign.pk}/report/", {"targeted": 0}),
        ("/api/v1/journeys/", {"name": "Onboarding"}),
        (f"/api/v1/journeys/{journey.pk}/", {"name": "Onboarding"}),
    ):
        response = api.get(path)
        assert response.status_code == 200, path
        answer = response.json()
        answer = answer["results"][0] if "results" in answer else answer
        assert {name: answer[name] for name in expected} == expected, path
        texts.append(response.content.decode())
    for fragment in fragments_of(apns_credentials, fcm_credentials):
        assert all(fragment not in text for text in texts)


def test_phones_register_opt_out_and_unregister_on_an_app_whose_credentials_cannot_be_decrypted(
    api_key_for, manager_alice, restored_under_another_key
):
    """The phones go on registering (the app's row loaded its credentials, and answered 500): only a send
    needs them."""
    from accounts.services import access_grant
    from delivery.models import App, Device
    from tests.factories import AppFactory

    app = AppFactory()
    access_grant(obj=app, to=manager_alice, by=None)
    App.objects.filter(pk=app.pk).update(apns_private_key="a .p8 key", fcm_service_account="a service account")
    ingest = api_key_for(manager_alice, scopes=["ingest"])
    restored_under_another_key()

    token = "ab" * 32
    body = {"app": app.pk, "external_id": "user-1", "platform": "ios", "token": token}
    assert ingest.post("/api/v1/devices/", body, format="json").status_code == 201
    body = {"app": app.pk, "token": token, "push_enabled": False}
    assert ingest.post("/api/v1/devices/opt-in/", body, format="json").status_code == 200
    assert (Device.objects.get().profile.external_id, Device.objects.get().push_enabled) == ("user-1", False)
    assert ingest.post("/api/v1/devices/unregister/", {"app": app.pk, "token": token}, format="json").status_code == 200
    assert (Device.objects.get().active, Device.objects.get().invalidated_reason) == (False, "unregistered")


def test_a_send_with_credentials_the_providers_refuse_logs_no_credential_or_token_even_at_debug(
    pushsim, manager_alice, admin_erin, caplog, django_capture_on_commit_callbacks
):
    """A key APNs does not know (403 InvalidProviderToken) and a service account Google refuses
    (the token endpoint's 400): the test of the connection and a send fail, and what the web and the
    worker log then, with every logger at DEBUG, names the reasons, never the keys or the tokens."""
    import logging.config

    from django.conf import settings

    from accounts.services import access_grant
    from campaigns.services.lifecycle import campaign_create
    from campaigns.services.scheduling import campaign_test_send
    from delivery.models import Delivery, PushContent
    from delivery.services.apps import app_test_connection
    from delivery.services.contents import pushcontent_save
    from tests.factories import DeviceFactory, ProfileFactory, SegmentFactory
    from tests.fakes.pushsim import make_apns_credentials, make_fcm_credentials, simulated_app

    apns, fcm = make_apns_credentials(), make_fcm_credentials(token_uri=pushsim.token_uri)  # trusted by no one
    app = simulated_app("Refused", pushsim, apns, fcm)
    access_grant(obj=app, to=manager_alice, by=None)
    profile = ProfileFactory(external_id="zoe")
    for platform in ("ios", "android"):
        DeviceFactory(profile=profile, app=app, platform=platform, is_test=True)
    segment = SegmentFactory(name="Zoe", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    content = pushcontent_save(content=PushContent(app=app, name="Spring", title="Hi", body="Sale"), by=manager_alice)
    campaign = campaign_create(
        by=manager_alice, name="Sale", app=app, segment=segment, content=content, kind="scheduled"
    )

    logging.getLogger("hpack").setLevel(logging.NOTSET)  # as in a web process or a worker
    logging.config.dictConfig({"version": 1, "incremental": True, "loggers": settings.LOGGING["loggers"]})
    caplog.set_level(logging.DEBUG)
    app_test_connection(app_id=app.pk, by=admin_erin)
    with django_capture_on_commit_callbacks(execute=True):
        campaign_test_send(campaign_id=campaign.pk, by=manager_alice)

    reasons = sorted(Delivery.objects.filter(device__app=app).values_list("reason", flat=True))
    assert reasons == ["credentials: InvalidProviderToken", "credentials: oauth"], reasons
    text = caplog.text
    assert "InvalidProviderToken" in text  # the batch's line says why
    apns_lines = [line for line in apns.private_key_pem.splitlines() if "-----" not in line]
    fcm_lines = [line for line in fcm.info["private_key"].splitlines() if "-----" not in line]
    for fragment in (*apns_lines, *fcm_lines, fcm.info["private_key_id"]):
        assert fragment not in text
    assert "eyJ" not in text and "bearer" not in text.lower() and "assertion=" not in text  # no JWT, no token
