"""Apps and their channel credentials: validation, secrecy, the admin, Test connection, the demo app."""

import json
import logging
import sys
import threading

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import RequestFactory
from django.urls import reverse
from django.views.debug import technical_500_response

from accounts.models import AuditEvent
from accounts.services import access_grant
from delivery.models import App, Device, Dispatch
from delivery.services.apps import apns_key_parse, app_create, app_test_connection, app_update, service_account_parse
from tests.factories import AppFactory, DeviceFactory
from tests.fakes.pushsim import make_apns_credentials, make_fcm_credentials


def secret_fragments(apns_credentials, fcm_credentials) -> list[str]:
    """Lines from the middle of each private key: none may appear anywhere but the encrypted column."""
    p8_lines = apns_credentials.private_key_pem.strip().splitlines()
    rsa_lines = fcm_credentials.info["private_key"].strip().splitlines()
    return [p8_lines[1], p8_lines[2], rsa_lines[5], rsa_lines[10]]


def form_data(apns_credentials, fcm_credentials, **overrides):
    data = {
        "name": "Shop",
        "rate_limit_per_second": "500",
        "apns_team_id": apns_credentials.team_id,
        "apns_key_id": apns_credentials.key_id,
        "apns_bundle_id": apns_credentials.bundle_id,
        "apns_environment": "production",
        "apns_private_key_file": SimpleUploadedFile("AuthKey.p8", apns_credentials.private_key_pem.encode()),
        "fcm_service_account_file": SimpleUploadedFile("sa.json", fcm_credentials.json_bytes),
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.embedded
@pytest.mark.django_db
def test_an_rsa_key_is_refused_as_a_p8_naming_the_rule(fcm_credentials):
    with pytest.raises(ValidationError) as exc:
        apns_key_parse(raw=fcm_credentials.info["private_key"].encode())
    assert exc.value.message_dict == {
        "apns_private_key": ["The .p8 key must be an EC P-256 key (APNs signs with ES256)."]
    }


@pytest.mark.embedded
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"hello", "The .p8 file must be a PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----)."),
        (
            b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----",
            "The .p8 file is not a readable private key.",
        ),
        (b"\xff\xfe", "The .p8 file is not a text PEM file."),
    ],
)
def test_garbage_is_refused_as_a_p8(raw, message):
    with pytest.raises(ValidationError) as exc:
        apns_key_parse(raw=raw)
    assert exc.value.message_dict["apns_private_key"] == [message]


@pytest.mark.embedded
@pytest.mark.django_db
def test_a_p8_saved_with_a_byte_order_mark_or_windows_line_ends_is_read(apns_credentials):
    # What an editor may leave of Apple's file once it was opened and saved again.
    pem = apns_credentials.private_key_pem.encode()
    for raw in (b"\xef\xbb\xbf" + pem, pem.replace(b"\n", b"\r\n")):
        assert apns_key_parse(raw=raw).value == apns_key_parse(raw=pem).value


@pytest.mark.embedded
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"private_key": None}, "The service-account JSON has no private_key."),
        ({"client_email": None, "token_uri": None}, "The service-account JSON has no client_email, token_uri."),
        ({"type": "authorized_user"}, 'The JSON is not a service account ("type" must be "service_account").'),
        (
            {"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            "The service account's private_key is not a readable PEM private key.",
        ),
        ({"token_uri": "http://tokens.example.com/token"}, "The service account's token_uri must be an https:// URL."),
        # Cleartext only to this machine: a name that merely starts like it is another host.
        (
            {"token_uri": "http://localhost@tokens.example.com/t"},
            "The service account's token_uri must be an https:// URL.",
        ),
        (
            {"token_uri": "http://localhost.example.com/token"},
            "The service account's token_uri must be an https:// URL.",
        ),
        (
            {"token_uri": "http://127.0.0.1.example.com/token"},
            "The service account's token_uri must be an https:// URL.",
        ),
        ({"token_uri": "https://"}, "The service account's token_uri must be an https:// URL."),
        # It goes into the FCM URL's path: /v1/projects/<project_id>/messages:send.
        ({"project_id": "my project"}, "The service account's project_id is not a Google Cloud project id."),
        ({"project_id": "pushdesk-test\n"}, "The service account's project_id is not a Google Cloud project id."),
        ({"project_id": "a/../../b"}, "The service account's project_id is not a Google Cloud project id."),
    ],
)
def test_a_broken_service_account_is_refused_naming_what_is_wrong(fcm_credentials, change, message):
    info = {k: v for k, v in {**fcm_credentials.info, **change}.items() if v is not None}
    with pytest.raises(ValidationError) as exc:
        service_account_parse(raw=json.dumps(info).encode())
    assert exc.value.message_dict["fcm_service_account"] == [message]


@pytest.mark.embedded
@pytest.mark.django_db
@pytest.mark.parametrize("project_id", ["pushdesk-test", "example.com:my-project", "a12345"])
def test_a_service_account_of_any_google_cloud_project_id_is_taken(fcm_credentials, project_id):
    info = {**fcm_credentials.info, "project_id": project_id}
    assert service_account_parse(raw=json.dumps(info).encode()).project_id == project_id


def test_not_json_is_refused_as_a_service_account():
    with pytest.raises(ValidationError) as exc:
        service_account_parse(raw=b"{not json")
    assert exc.value.message_dict["fcm_service_account"] == ["The service-account file is not JSON."]


@pytest.mark.django_db
def test_a_wrong_bundle_id_saves_nothing(apns_credentials):
    with pytest.raises(ValidationError) as exc:
        app_create(
            name="Shop",
            by=None,
            **apns_credentials.app_fields(apns_bundle_id="my shop app"),
        )
    assert "apns_bundle_id" in exc.value.message_dict
    assert not App.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["apns_team_id", "apns_key_id", "apns_bundle_id"])
def test_an_id_with_a_line_end_after_it_is_refused_naming_it(apns_credentials, field):
    # The bundle id is the apns-topic header, the team and key ids go into the provider token.
    values = {
        "apns_team_id": apns_credentials.team_id,
        "apns_key_id": apns_credentials.key_id,
        "apns_bundle_id": apns_credentials.bundle_id,
    }
    values[field] += "\n"
    with pytest.raises(ValidationError) as exc:
        app_create(
            name="Shop",
            by=None,
            apns_private_key=apns_key_parse(raw=apns_credentials.private_key_pem.encode()),
            **values,
        )
    assert list(exc.value.message_dict) == [field]
    assert not App.objects.exists()


@pytest.mark.django_db
def test_apns_is_all_or_nothing(apns_credentials):
    with pytest.raises(ValidationError) as exc:
        app_create(name="Shop", by=None, apns_team_id=apns_credentials.team_id)
    assert set(exc.value.message_dict) == {"apns_key_id", "apns_bundle_id", "apns_private_key"}


# --- storage and secrecy ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_secrets_are_encrypted_at_rest_and_only_fingerprinted_in_the_audit_log(
    admin_erin, apns_credentials, fcm_credentials
):
    app = app_create(
        name="Shop",
        by=admin_erin,
        **apns_credentials.app_fields(),
        fcm_service_account=service_account_parse(raw=fcm_credentials.json_bytes),
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT apns_private_key, fcm_service_account FROM delivery_app WHERE id = %s", [app.pk])
        stored = cursor.fetchone()
    assert all(value.startswith("gAAAA") for value in stored)
    assert all(fragment not in " ".join(stored) for fragment in secret_fragments(apns_credentials, fcm_credentials))
    app.refresh_from_db()
    assert app.apns_private_key.strip() == apns_credentials.private_key_pem.strip()
    assert (app.fcm_project_id, app.fcm_client_email) == ("pushdesk-test", fcm_credentials.info["client_email"])
    assert app.apns_private_key_fingerprint.startswith("SHA256:") and app.apns_configured and app.fcm_configured
    event = AuditEvent.objects.get(action="app_created")
    assert event.summary["apns_key"] == app.apns_private_key_fingerprint
    assert all(f not in json.dumps(event.summary) for f in secret_fragments(apns_credentials, fcm_credentials))


@pytest.mark.django_db
def test_replacing_a_key_changes_its_fingerprint_and_removing_a_channel_clears_it(apns_credentials, fcm_credentials):
    app = app_create(
        name="Shop",
        by=None,
        **apns_credentials.app_fields(),
        fcm_service_account=service_account_parse(raw=fcm_credentials.json_bytes),
    )
    before = app.apns_private_key_fingerprint
    replacement = make_apns_credentials()
    app = app_update(app_id=app.pk, by=None, apns_private_key=apns_key_parse(raw=replacement.private_key_pem.encode()))
    assert app.apns_private_key_fingerprint not in ("", before)
    app = app_update(app_id=app.pk, by=None, remove_fcm=True)
    assert not app.fcm_configured and app.fcm_service_account == "" and app.apns_configured


@pytest.mark.django_db
def test_only_an_administrator_may_create_or_change_apps(manager_alice, admin_erin):
    with pytest.raises(PermissionDenied):
        app_create(name="Shop", by=manager_alice)
    app = app_create(name="Shop", by=admin_erin)
    with pytest.raises(PermissionDenied):
        app_update(app_id=app.pk, by=manager_alice, name="Mine")


def _error_page_of(read_upload) -> str:
    """Parse an upload that fails and render Django's debug error page of it (this frame holds no secret)."""
    try:
        apns_key_parse(raw=read_upload())
    except ValidationError:
        return technical_500_response(RequestFactory().get("/"), *sys.exc_info()).content.decode()
    raise AssertionError("the upload was accepted")


def test_no_secret_reaches_the_error_page_of_a_failing_parse(fcm_credentials, apns_credentials):
    page = _error_page_of(lambda: fcm_credentials.info["private_key"].encode())
    assert "apns_key_parse" in page  # the frame is there, its secret locals are not
    assert all(fragment not in page for fragment in secret_fragments(apns_credentials, fcm_credentials))


# --- the admin ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_administrator_adds_an_app_with_uploads_and_never_sees_the_secrets_again(
    client, admin_erin, apns_credentials, fcm_credentials, caplog
):
    caplog.set_level(logging.DEBUG)
    client.force_login(admin_erin)
    response = client.post(reverse("admin:delivery_app_add"), form_data(apns_credentials, fcm_credentials))
    assert response.status_code == 302, response.content.decode()[:2000]
    app = App.objects.get(name="Shop")
    assert app.apns_configured and app.fcm_configured and app.created_by == admin_erin
    pages = [
        client.get(reverse("admin:delivery_app_change", args=[app.pk])).content.decode(),
        client.get(reverse("admin:delivery_app_changelist")).content.decode(),
    ]
    assert f"fingerprint {app.apns_private_key_fingerprint}" in pages[0]
    assert "Set on " in pages[0] and "pushdesk-test" in pages[0]
    fragments = secret_fragments(apns_credentials, fcm_credentials)
    for text in [*pages, caplog.text, json.dumps(list(AuditEvent.objects.values_list("summary", flat=True)))]:
        assert all(fragment not in text for fragment in fragments)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "field_error"),
    [
        ({"apns_private_key_file": "rsa"}, "The .p8 key must be an EC P-256 key"),
        ({"fcm_service_account_file": "no-private-key"}, "The service-account JSON has no private_key."),
        ({"apns_bundle_id": "my shop app"}, "A bundle id is reverse-DNS"),
        ({"apns_team_id": "team"}, "A team id is 10 capital letters or digits"),
    ],
)
def test_bad_uploads_show_a_clear_error_and_save_nothing(
    client, admin_erin, apns_credentials, fcm_credentials, overrides, field_error, caplog
):
    caplog.set_level(logging.DEBUG)
    if overrides.get("apns_private_key_file") == "rsa":
        overrides["apns_private_key_file"] = SimpleUploadedFile("k.p8", fcm_credentials.info["private_key"].encode())
    if overrides.get("fcm_service_account_file") == "no-private-key":
        info = {k: v for k, v in fcm_credentials.info.items() if k != "private_key"}
        overrides["fcm_service_account_file"] = SimpleUploadedFile("sa.json", json.dumps(info).encode())
    client.force_login(admin_erin)
    response = client.post(reverse("admin:delivery_app_add"), form_data(apns_credentials, fcm_credentials, **overrides))
    page = response.content.decode()
    assert response.status_code == 200 and field_error in page
    assert not App.objects.exists()
    assert all(f not in page + caplog.text for f in secret_fragments(apns_credentials, fcm_credentials))


@pytest.mark.django_db
def test_an_empty_upload_keeps_the_key_and_a_new_one_replaces_it(client, admin_erin, apns_credentials, fcm_credentials):
    client.force_login(admin_erin)
    client.post(reverse("admin:delivery_app_add"), form_data(apns_credentials, fcm_credentials))
    app = App.objects.get()
    url = reverse("admin:delivery_app_change", args=[app.pk])
    keep = form_data(apns_credentials, fcm_credentials, apns_private_key_file=None, fcm_service_account_file=None)
    assert client.post(url, {**keep, "rate_limit_per_second": "50"}).status_code == 302
    app_after = App.objects.get()
    assert app_after.rate_limit_per_second == 50
    assert app_after.apns_private_key_fingerprint == app.apns_private_key_fingerprint
    new_key = make_apns_credentials()
    replace = form_data(
        apns_credentials,
        fcm_credentials,
        apns_private_key_file=SimpleUploadedFile("new.p8", new_key.private_key_pem.encode()),
        fcm_service_account_file=None,
    )
    assert client.post(url, replace).status_code == 302
    assert App.objects.get().apns_private_key_fingerprint != app.apns_private_key_fingerprint


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("remove", "upload", "channel"),
    [("remove_apns", "apns_private_key_file", "APNs"), ("remove_fcm", "fcm_service_account_file", "FCM")],
)
def test_removing_a_channel_and_uploading_its_credentials_at_once_is_refused_on_the_remove_box(
    client, admin_erin, apns_credentials, fcm_credentials, remove, upload, channel
):
    """Ticked with an upload, the box was obeyed for APNs (its fields emptied, then each named as
    missing beside the values the form still showed) and ignored for FCM (the upload replaced it)."""
    client.force_login(admin_erin)
    client.post(reverse("admin:delivery_app_add"), form_data(apns_credentials, fcm_credentials))
    before = App.objects.get()
    url = reverse("admin:delivery_app_change", args=[before.pk])
    new = {
        "apns_private_key_file": SimpleUploadedFile("new.p8", make_apns_credentials().private_key_pem.encode()),
        "fcm_service_account_file": SimpleUploadedFile(
            "new.json", make_fcm_credentials(token_uri=fcm_credentials.info["token_uri"]).json_bytes
        ),
    }
    kept = {"apns_private_key_file": None, "fcm_service_account_file": None}
    both = form_data(apns_credentials, fcm_credentials, **{**kept, remove: "on", upload: new[upload]})
    response = client.post(url, both)
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors == {remove: [f"Remove the {channel} configuration, or upload new credentials: not both."]}
    after = App.objects.get()
    assert (after.apns_private_key_fingerprint, after.fcm_service_account_fingerprint) == (
        before.apns_private_key_fingerprint,
        before.fcm_service_account_fingerprint,
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "lookup",
    [
        "apns_key_id__startswith",
        "apns_team_id",
        "apns_bundle_id__contains",
        "fcm_client_email__startswith",
        "fcm_project_id__startswith",
        "apns_private_key_fingerprint__startswith",
    ],
)
def test_the_app_list_cannot_be_filtered_by_its_configuration_by_roles_that_do_not_see_it(
    client, pushsim_tls_app, viewer_carol, manager_alice, admin_erin, lookup
):
    # One letter at a time, the list's count would read out what the page never shows them.
    field = lookup.split("__")[0]
    value = getattr(pushsim_tls_app, field)[:1]
    url = f"{reverse('admin:delivery_app_changelist')}?{lookup}={value}"
    for user in (viewer_carol, manager_alice):
        access_grant(obj=pushsim_tls_app, to=user, by=None)
        client.force_login(user)
        assert client.get(url).status_code == 400
        assert client.get(f"{reverse('admin:delivery_app_changelist')}?name={pushsim_tls_app.name}").status_code == 200
    client.force_login(admin_erin)
    assert client.get(url).status_code == 200


@pytest.mark.django_db
def test_nobody_filters_apps_by_their_encrypted_secrets(client, pushsim_tls_app, admin_erin):
    client.force_login(admin_erin)
    for lookup in ("apns_private_key__startswith", "fcm_service_account__contains"):
        assert client.get(f"{reverse('admin:delivery_app_changelist')}?{lookup}=x").status_code == 400


@pytest.mark.django_db
def test_managers_cannot_add_apps_nor_see_apps_outside_their_access(client, manager_alice, admin_erin):
    other = app_create(name="Not yours", by=admin_erin)
    client.force_login(manager_alice)
    assert client.get(reverse("admin:delivery_app_add")).status_code == 403
    assert client.get(reverse("admin:delivery_app_change", args=[other.pk])).status_code == 404


# --- test connection -----------------------------------------------------------------------------------


# A GOST R 34.10-2012 private key in PKCS#8: readable PEM, of an algorithm nothing here can load.
GOST_KEY = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MDMCAQAwCgYIKoUDBwEBAQEEIgQgAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n"
    "-----END PRIVATE KEY-----\n"
)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("upload", "field_error"),
    [
        ("p8_gost", "The .p8 key must be an EC P-256 key (APNs signs with ES256)."),
        ("json_gost", "The service account&#x27;s private_key must be an RSA key."),
        ("json_deep", "The service-account file is not JSON."),
    ],
)
def test_a_key_of_an_unknown_algorithm_or_json_nested_too_deep_is_refused_on_its_field(
    client, admin_erin, apns_credentials, fcm_credentials, upload, field_error, caplog
):
    overrides = {
        "p8_gost": {"apns_private_key_file": SimpleUploadedFile("AuthKey.p8", GOST_KEY.encode())},
        "json_gost": {
            "fcm_service_account_file": SimpleUploadedFile(
                "sa.json", json.dumps({**fcm_credentials.info, "private_key": GOST_KEY}).encode()
            )
        },
        "json_deep": {"fcm_service_account_file": SimpleUploadedFile("sa.json", b"[" * 30_000 + b"]" * 30_000)},
    }[upload]
    client.force_login(admin_erin)
    response = client.post(reverse("admin:delivery_app_add"), form_data(apns_credentials, fcm_credentials, **overrides))
    page = response.content.decode()
    assert response.status_code == 200 and field_error in page
    assert not App.objects.exists()
    assert "MDMCAQAwCgYIKoUDBwEBAQEEIgQg" not in page + caplog.text


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("upload", "message"),
    [
        ("apns_private_key_file", "The .p8 file is too large to be an APNs key."),
        ("fcm_service_account_file", "The service-account file is too large."),
    ],
)
def test_a_huge_upload_is_refused_without_being_read_whole(apns_credentials, fcm_credentials, upload, message):
    import tracemalloc

    from django.core.files.uploadedfile import TemporaryUploadedFile

    from delivery.admin.apps import AppForm

    data = form_data(apns_credentials, fcm_credentials)
    files = {name: data.pop(name) for name in ("apns_private_key_file", "fcm_service_account_file")}
    # As Django keeps an upload over FILE_UPLOAD_MAX_MEMORY_SIZE: in a file on disk.
    big = TemporaryUploadedFile("big", "application/octet-stream", 20 * 1024 * 1024, None)
    for _ in range(20):
        big.write(b"x" * 1024 * 1024)
    big.seek(0)
    files[upload] = big
    tracemalloc.start()
    try:
        form = AppForm(data, files)
        assert not form.is_valid()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert form.errors[upload] == [message]
    assert peak < 2 * 1024 * 1024, f"{peak:,} bytes held to refuse it"


@pytest.mark.django_db
def test_test_connection_reports_what_apns_and_fcm_answered(
    pushsim_tls_app, admin_erin, pushsim, caplog, apns_credentials, fcm_credentials
):
    caplog.set_level(logging.DEBUG)
    checks = app_test_connection(app_id=pushsim_tls_app.pk, by=admin_erin)
    fragments = secret_fragments(apns_credentials, fcm_credentials)
    assert all(f not in caplog.text + repr(checks) for f in fragments)
    assert "token" in caplog.text  # the token fetch was logged, without the assertion or the key
    assert pushsim.state.access_tokens and all(t not in caplog.text for t in pushsim.state.access_tokens)
    assert [(c.provider, c.ok) for c in checks] == [("APNs", True), ("FCM", True)]
    assert "BadDeviceToken" in checks[0].message
    assert "fake_message_id" in checks[1].message
    assert pushsim.state.token_grants == 1 and pushsim.state.recent() == []  # validate-only: nothing delivered
    assert AuditEvent.objects.filter(action="app_connection_tested", object_id=str(pushsim_tls_app.pk)).exists()


@pytest.mark.django_db
def test_test_connection_reads_and_decrypts_each_credential_once(pushsim_tls_app, admin_erin, pushsim):
    """Whether the credentials decrypt is learnt by reading them for the checks: they were read and
    decrypted once to see that they decrypt, then again (a query each) to be used."""
    import re

    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        checks = app_test_connection(app_id=pushsim_tls_app.pk, by=admin_erin)
    assert [(c.provider, c.ok) for c in checks] == [("APNs", True), ("FCM", True)]
    reads = [q["sql"] for q in queries if re.search(r"\b(apns_private_key|fcm_service_account)\b", q["sql"])]
    assert len(reads) == 1, reads


@pytest.mark.django_db
def test_test_connection_reports_refused_credentials(pushsim, admin_erin):
    stranger_apns = make_apns_credentials(key_id="KEYSTRANGE")
    stranger_fcm = make_fcm_credentials(token_uri=pushsim.url(tls=True) + "/token", name="stranger")
    app = app_create(
        name="Untrusted",
        by=None,
        apns_team_id=stranger_apns.team_id,
        apns_key_id=stranger_apns.key_id,
        apns_bundle_id=stranger_apns.bundle_id,
        apns_private_key=apns_key_parse(raw=stranger_apns.private_key_pem.encode()),
        fcm_service_account=service_account_parse(raw=stranger_fcm.json_bytes),
    )
    checks = app_test_connection(app_id=app.pk, by=admin_erin)
    assert [(c.provider, c.ok) for c in checks] == [("APNs", False), ("FCM", False)]
    assert checks[0].message == (
        "APNs answered 403 InvalidProviderToken: check the team id, the key id and the .p8 key (one key, of that team)."
    )
    assert "invalid_grant" in checks[1].message and stranger_fcm.info["private_key"][40:80] not in checks[1].message


@pytest.mark.django_db
def test_test_connection_names_the_bundle_id_when_apns_refuses_the_topic(pushsim, admin_erin, apns_credentials):
    app = app_create(
        name="Other bundle",
        by=None,
        **apns_credentials.app_fields(apns_bundle_id="com.example.someoneelse"),
    )
    (check,) = app_test_connection(app_id=app.pk, by=admin_erin)
    assert not check.ok
    assert check.message == (
        "APNs answered 400 TopicDisallowed: check the bundle id (the key's team may not push to it)."
    )


def _test_connection_against(client, admin_erin, settings, tmp_path, *, status: int, body: bytes):
    """An Administrator presses Test connection for an app whose service account's token endpoint
    (HTTPS, on loopback) answers ``status`` with ``body``: the page that follows."""
    from tests.fakes.token_endpoint import token_endpoint

    with token_endpoint(status=status, body=body, ca_path=str(tmp_path / "ca.pem")) as url:
        settings.PUSHDESK_CA_BUNDLE = str(tmp_path / "ca.pem")
        fcm = make_fcm_credentials(token_uri=url, name="endpoint")
        app = app_create(name="Endpoint", by=None, fcm_service_account=service_account_parse(raw=fcm.json_bytes))
        client.force_login(admin_erin)
        return client.post(
            reverse("admin:delivery_app_changelist"),
            {"action": "test_connection", "_selected_action": [app.pk]},
            follow=True,
        )


@pytest.mark.django_db
@pytest.mark.presses("delivery.app:test_connection")
def test_a_token_endpoints_odd_characters_reach_the_admins_page_as_replacement_characters(
    client, admin_erin, settings, tmp_path
):
    # A token endpoint (HTTPS, on loopback) whose refusal holds a NUL and a lone surrogate, as
    # JSON escapes: the page that quotes it could not be encoded, and the action ended in a 500.
    body = b'{"error": "invalid_grant", "error_description": "no \\u0000 such \\ud800 key"}'
    response = _test_connection_against(client, admin_erin, settings, tmp_path, status=400, body=body)
    assert response.status_code == 200
    page = response.content.decode()
    assert "The token endpoint refused the service account" in page
    assert "no \ufffd such \ufffd key" in page


@pytest.mark.django_db
def test_test_connection_says_a_token_endpoint_that_does_not_answer_was_not_reached(admin_erin):
    fcm = make_fcm_credentials(token_uri="https://127.0.0.1:1/token", name="unreachable")
    app = app_create(name="Unreachable", by=None, fcm_service_account=service_account_parse(raw=fcm.json_bytes))
    (check,) = app_test_connection(app_id=app.pk, by=admin_erin)
    assert not check.ok
    assert check.message == "Could not reach the token endpoint: ConnectError talking to https://127.0.0.1:1/token."


@pytest.mark.django_db
@pytest.mark.presses("delivery.app:test_connection")
def test_test_connection_reports_a_token_endpoint_answering_without_a_token(client, admin_erin, settings, tmp_path):
    body = b"<html>Sign in</html>"
    response = _test_connection_against(client, admin_erin, settings, tmp_path, status=200, body=body)
    assert response.status_code == 200
    assert (
        "The token endpoint refused the service account: "
        "The token endpoint answered without a usable access token." in response.content.decode()
    )


@pytest.mark.django_db
@pytest.mark.presses("delivery.app:test_connection")
def test_the_admin_action_tests_the_connection(client, pushsim_tls_app, admin_erin, pushsim):
    client.force_login(admin_erin)
    response = client.post(
        reverse("admin:delivery_app_changelist"),
        {"action": "test_connection", "_selected_action": [pushsim_tls_app.pk]},
        follow=True,
    )
    page = response.content.decode()
    assert "APNs: APNs (production) accepted the provider token" in page
    assert "FCM: FCM accepted a validate-only message" in page


@pytest.mark.django_db
@pytest.mark.presses("delivery.app:test_connection")
def test_the_connection_test_audits_for_an_administrator_and_is_refused_to_a_manager(
    client, pushsim_tls_app, admin_erin, manager_alice, pushsim
):
    from accounts.services import access_grant

    access_grant(obj=pushsim_tls_app, to=manager_alice, by=None)
    url = reverse("admin:delivery_app_changelist")
    client.force_login(manager_alice)
    refused = client.post(url, {"action": "test_connection", "_selected_action": [pushsim_tls_app.pk]})
    assert refused.status_code in (200, 302, 403)
    assert not AuditEvent.objects.filter(action__startswith="app_connection").exists()
    client.force_login(admin_erin)
    assert client.post(url, {"action": "test_connection", "_selected_action": [pushsim_tls_app.pk]}).status_code == 302
    assert AuditEvent.objects.filter(action__startswith="app_connection", object_id=str(pushsim_tls_app.pk)).exists()


@pytest.mark.django_db
def test_a_manager_cannot_test_a_connection(pushsim_tls_app, manager_alice):
    with pytest.raises(PermissionDenied):
        app_test_connection(app_id=pushsim_tls_app.pk, by=manager_alice)


# --- the demo app ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_demo_campaigns_note_to_the_approvers_names_the_day_and_time_it_sends(settings, tmp_path):
    """The note said "Tuesdays 9:00 Paris time" whatever day the demo was set up, under a schedule
    starting the next day at 10:00 Paris time in winter."""
    import zoneinfo
    from io import StringIO

    from django.core.management import call_command

    from accounts.models import ApprovalRequest
    from campaigns.models import Campaign

    settings.VAR_DIR = tmp_path
    call_command("demo_setup", stdout=StringIO())
    campaign = Campaign.objects.get(name="Win back lapsed users")
    sends = campaign.send_at.astimezone(zoneinfo.ZoneInfo(campaign.time_zone))
    assert campaign.time_zone == "Europe/Paris" and (sends.hour, sends.minute) == (9, 0)
    note = ApprovalRequest.objects.get(subject_id=campaign.pk, subject_type__model="campaign").message
    assert note == f"Weekly win-back, {sends:%A}s 9:00 Paris time."


@pytest.mark.embedded
@pytest.mark.django_db
def test_demo_setup_again_under_another_encryption_key_adds_nothing_and_says_the_app_cannot_send(
    settings, tmp_path, another_encryption_key
):
    """A database kept while the key was made anew (another var/ folder, the key file deleted):
    reading the demo app to add what is missing decrypted its credentials, and the command failed
    with a traceback."""
    from io import StringIO

    from django.core.management import call_command

    settings.VAR_DIR = tmp_path
    call_command("demo_setup", stdout=StringIO())
    app = App.objects.get(name="Pushdesk Demo")
    devices = Device.objects.filter(app=app).count()
    another_encryption_key()

    out = StringIO()
    call_command("demo_setup", stdout=out)
    text = out.getvalue()
    assert "Demo app 'Pushdesk Demo' already exists." in text
    assert f"app 'Pushdesk Demo' (id {app.pk}): the APNs .p8 key cannot be decrypted" in text
    assert "Demo campaigns: already there" in text
    assert Device.objects.filter(app=app).count() == devices


@pytest.mark.embedded
@pytest.mark.django_db
def test_the_demo_app_sends_to_the_simulator_with_credentials_made_at_setup(pushsim, settings, tmp_path, admin_erin):
    from io import StringIO

    from delivery import demo
    from delivery.pushsim.trust import trust_file_path, trust_loader

    settings.VAR_DIR = tmp_path
    demo.populate(stdout=StringIO())
    demo.populate(stdout=StringIO())  # a second run adds nothing
    app = App.objects.get(name=demo.DEMO_APP)
    assert app.uses_simulator and app.apns_configured and app.fcm_configured
    trusted = trust_file_path().read_text()
    assert "PRIVATE KEY" not in trusted and "PUBLIC KEY" in trusted
    pushsim.state.trust_file_loader = trust_loader(pushsim.state, trust_file_path())
    try:
        checks = app_test_connection(app_id=app.pk, by=admin_erin)
    finally:
        pushsim.state.trust_file_loader = None
    assert [(c.provider, c.ok) for c in checks] == [("APNs", True), ("FCM", True)]


@pytest.mark.django_db
def test_a_viewer_with_access_sees_the_app_but_not_its_credentials_nor_a_way_to_change_them(
    client, viewer_carol, pushsim_tls_app
):
    from accounts.services import access_grant

    access_grant(obj=pushsim_tls_app, to=viewer_carol, by=None)
    client.force_login(viewer_carol)
    page = client.get(reverse("admin:delivery_app_change", args=[pushsim_tls_app.pk])).content.decode()
    assert pushsim_tls_app.name in page
    assert pushsim_tls_app.apns_private_key_fingerprint not in page  # other roles see only the app's name
    assert 'type="file"' not in page and "Test connection" not in page


@pytest.mark.parametrize("who", ["manager_alice", "approver_bob", "viewer_carol"])
def test_other_roles_see_only_the_name_of_the_apps_they_may_use(client, request, admin_erin, who):
    from accounts.services import access_grant

    apns_credentials = make_apns_credentials()
    app = app_create(
        name="Shop",
        by=admin_erin,
        apns_team_id="TEAM123456",
        apns_key_id="KEYID12345",
        apns_private_key=apns_key_parse(raw=apns_credentials.private_key_pem.encode()),
        apns_bundle_id="com.example.shop",
    )
    user = request.getfixturevalue(who)
    access_grant(obj=app, to=user, by=None)
    client.force_login(user)
    for url in ("/admin/delivery/app/", f"/admin/delivery/app/{app.pk}/change/"):
        page = client.get(url)
        assert page.status_code == 200 and b"Shop" in page.content
        for detail in (b"TEAM123456", b"KEYID12345", app.apns_private_key_fingerprint.encode(), b"com.example.shop"):
            assert detail not in page.content, (url, detail)
    client.force_login(admin_erin)
    assert b"TEAM123456" in client.get(f"/admin/delivery/app/{app.pk}/change/").content


def test_an_apps_delete_page_counts_its_devices_and_the_deletion_takes_them(client, admin_erin):
    app = AppFactory()
    devices = DeviceFactory.create_batch(30, app=app)
    kept = DeviceFactory()  # another app's
    client.force_login(admin_erin)
    url = reverse("admin:delivery_app_delete", args=[app.pk])
    page = client.get(url)
    assert page.status_code == 200
    text = page.content.decode()
    assert "<li>Devices: 30</li>" in text
    assert not [d for d in devices if reverse("admin:delivery_device_change", args=[d.pk]) in text]  # counted only
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not App.objects.filter(pk=app.pk).exists()
    assert list(Device.objects.values_list("pk", flat=True)) == [kept.pk]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks between two sessions")
@pytest.mark.django_db(transaction=True)
def test_an_apps_deletion_and_a_deletion_of_a_profile_with_a_device_in_it_do_not_deadlock(admin_erin, monkeypatch):
    """A profile's deletion locks the profile, then removes its devices. An app's deletion removed
    its devices, and the reach trigger locked their profiles after them: holding ann's device, it
    waited for ann while her deletion waited for the device ('deadlock detected'). An app's
    deletion now locks its devices' profiles first, in id order, as every writer of profiles does."""
    from django.test import Client

    from audiences.models import Profile
    from audiences.services import profiles as profile_services
    from audiences.services.profiles import profiles_delete
    from tests.factories import ProfileFactory
    from tests.locks import concurrently, wait_for_a_blocked_writer

    app, other = AppFactory(), AppFactory()
    ann, bob = ProfileFactory(external_id="ann"), ProfileFactory(external_id="bob")
    DeviceFactory(app=app, profile=ann)
    DeviceFactory(app=other, profile=ann)
    DeviceFactory(app=app, profile=bob)
    audit, locked, blocked = profile_services.audit, threading.Event(), []

    def audited_once_the_apps_deletion_waits(**kwargs):
        audit(**kwargs)
        if kwargs["action"] == "profile_deleted":  # the deletion holds ann now
            locked.set()
            blocked.append(wait_for_a_blocked_writer())

    monkeypatch.setattr(profile_services, "audit", audited_once_the_apps_deletion_waits)

    def profile_deletion():
        profiles_delete(profile_ids=[ann.pk], by=admin_erin)

    def apps_deletion():
        locked.wait(10)
        browser = Client()
        browser.force_login(admin_erin)
        assert browser.post(reverse("admin:delivery_app_delete", args=[app.pk]), {"post": "yes"}).status_code == 302

    assert concurrently(profile_deletion, apps_deletion) == []
    assert blocked == [True]
    assert list(App.objects.values_list("pk", flat=True)) == [other.pk]
    assert list(Profile.objects.values_list("external_id", flat=True)) == ["bob"]
    assert not Device.objects.exists()
    assert AuditEvent.objects.filter(action="app_deleted", actor=admin_erin).count() == 1


def test_an_app_that_sent_is_not_deleted_and_its_delete_page_says_what_protects_it(client, admin_erin):
    app = AppFactory()
    Dispatch.objects.create(app=app, kind="api_trigger", content_spec={}, status="done", label="Run 1")
    client.force_login(admin_erin)
    url = reverse("admin:delivery_app_delete", args=[app.pk])
    text = client.get(url).content.decode()
    assert "protected related objects" in text and "Run 1" in text
    client.post(url, {"post": "yes"})
    assert App.objects.filter(pk=app.pk).exists()


def test_the_delete_action_takes_the_chosen_apps_with_their_devices_and_a_manager_may_not(
    client, admin_erin, manager_alice
):
    from delivery.services.apps import apps_delete

    first, second, kept = AppFactory(), AppFactory(), AppFactory()
    DeviceFactory.create_batch(3, app=first)
    DeviceFactory(app=second)
    kept_device = DeviceFactory(app=kept)
    access_grant(obj=first, to=manager_alice, by=None)
    with pytest.raises(PermissionDenied):
        apps_delete(app_ids=[first.pk], by=manager_alice)
    assert App.objects.filter(pk=first.pk).exists()
    client.force_login(admin_erin)
    chosen = {"action": "delete_selected", "_selected_action": [first.pk, second.pk], "post": "yes"}
    assert client.post(reverse("admin:delivery_app_changelist"), chosen).status_code == 302
    assert list(App.objects.values_list("pk", flat=True)) == [kept.pk]
    assert list(Device.objects.values_list("pk", flat=True)) == [kept_device.pk]
    assert AuditEvent.objects.filter(action="app_deleted", actor=admin_erin).count() == 2


def test_a_manager_cannot_delete_an_app_in_the_admin(client, manager_alice):
    app = AppFactory()
    access_grant(obj=app, to=manager_alice, by=None)
    client.force_login(manager_alice)
    url = reverse("admin:delivery_app_delete", args=[app.pk])
    assert client.get(url).status_code == 403
    assert client.post(url, {"post": "yes"}).status_code == 403
    assert App.objects.filter(pk=app.pk).exists()


@pytest.mark.django_db
def test_an_administrator_removes_a_channel_on_the_apps_page_and_a_manager_may_not(
    client, admin_erin, manager_alice, apns_credentials, fcm_credentials
):
    client.force_login(admin_erin)
    client.post(reverse("admin:delivery_app_add"), form_data(apns_credentials, fcm_credentials))
    app = App.objects.get()
    access_grant(obj=app, to=manager_alice, by=None)
    url = reverse("admin:delivery_app_change", args=[app.pk])
    keep = form_data(apns_credentials, fcm_credentials, apns_private_key_file=None, fcm_service_account_file=None)

    client.force_login(manager_alice)
    for box in ("remove_apns", "remove_fcm"):
        assert client.post(url, {**keep, box: "on"}).status_code == 403, box
    untouched = App.objects.get()
    assert untouched.apns_configured and untouched.fcm_configured
    assert untouched.apns_private_key_fingerprint == app.apns_private_key_fingerprint

    client.force_login(admin_erin)
    assert client.post(url, {**keep, "remove_fcm": "on"}).status_code == 302
    app = App.objects.get()
    assert not app.fcm_configured and app.fcm_service_account == "" and app.fcm_project_id == ""
    assert app.apns_configured
    # The form still carries the APNs ids as shown: the box clears them with the key.
    assert client.post(url, {**keep, "remove_apns": "on"}).status_code == 302
    app = App.objects.get()
    assert not app.apns_configured and app.apns_private_key == "" and app.apns_team_id == ""
    audited = AuditEvent.objects.filter(action="app_changed").order_by("pk").values_list("summary", flat=True)
    assert [summary["fields"] for summary in audited] == [["fcm_removed"], ["apns_removed"]]


@pytest.fixture
def another_encryption_key(settings):
    """The process runs with a key other than the one the credentials were stored under."""
    from cryptography.fernet import Fernet

    def switch():
        settings.PUSHDESK_ENCRYPTION_KEY = Fernet.generate_key().decode()

    return switch


@pytest.mark.django_db
def test_test_connection_under_another_encryption_key_says_the_credentials_cannot_be_decrypted(
    client, admin_erin, apns_credentials, another_encryption_key
):
    app = app_create(
        name="Restored",
        by=None,
        **apns_credentials.app_fields(),
    )
    access_grant(obj=app, to=admin_erin, by=None)
    another_encryption_key()

    (check,) = app_test_connection(app_id=app.pk, by=admin_erin)
    assert not check.ok and "cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY" in check.message
    client.force_login(admin_erin)
    page = client.post("/admin/delivery/app/", {"action": "test_connection", "_selected_action": [app.pk]}, follow=True)
    assert page.status_code == 200
    assert "the APNs .p8 key cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY" in page.content.decode()


@pytest.mark.django_db
def test_the_apps_page_under_another_encryption_key_says_what_cannot_be_decrypted_and_an_upload_replaces_it(
    client, admin_erin, apns_credentials, fcm_credentials, another_encryption_key
):
    """The page says which credential no key opens; uploading it again saves (the change loaded the app,
    decrypting its credentials, and answered 500) and keeps the other as it was stored."""
    from delivery.services.apps import app_secrets_unreadable

    app = app_create(
        name="Shop",
        by=None,
        **apns_credentials.app_fields(),
        fcm_service_account=service_account_parse(raw=fcm_credentials.json_bytes),
    )
    access_grant(obj=app, to=admin_erin, by=None)
    another_encryption_key()
    client.force_login(admin_erin)
    url = reverse("admin:delivery_app_change", args=[app.pk])
    said = "It cannot be decrypted with this PUSHDESK_ENCRYPTION_KEY (a different key, or one dropped before rotating?)"
    page = client.get(url).content.decode()
    assert page.count(said) == 2

    response = client.post(url, form_data(apns_credentials, fcm_credentials, fcm_service_account_file=None))
    assert response.status_code == 302
    assert app_secrets_unreadable(app_id=app.pk) == ["fcm_service_account"]
    assert App.objects.get(pk=app.pk).apns_private_key.startswith("-----BEGIN PRIVATE KEY-----")
    page = client.get(url).content.decode()
    assert page.count(said) == 1 and "fingerprint " + app.fcm_service_account_fingerprint + ". " + said in page
    assert all(fragment not in page for fragment in secret_fragments(apns_credentials, fcm_credentials))


@pytest.mark.django_db
def test_status_names_each_app_whose_credentials_the_key_cannot_decrypt(
    apns_credentials, fcm_credentials, another_encryption_key
):
    import io

    from django.core.management import call_command

    app = app_create(
        name="Restored",
        by=None,
        fcm_service_account=service_account_parse(raw=fcm_credentials.json_bytes),
    )
    out = io.StringIO()
    call_command("status", stdout=out)
    assert "every app's stored credentials decrypt" in out.getvalue()

    another_encryption_key()
    out = io.StringIO()
    call_command("status", stdout=out)
    text = out.getvalue()
    assert "secrets    CANNOT BE DECRYPTED" in text
    assert f"app 'Restored' (id {app.pk}): the FCM service account cannot be decrypted" in text
    assert all(fragment not in text for fragment in secret_fragments(apns_credentials, fcm_credentials))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("overrides", "errors"),
    [
        (
            {"apns_private_key_file": "malformed", "apns_team_id": "team"},
            {
                "apns_private_key_file": ["The .p8 file is not a readable private key."],
                "apns_team_id": ["A team id is 10 capital letters or digits (Apple Developer account, Membership)."],
            },
        ),
        (
            {"fcm_service_account_file": "no-private-key", "apns_key_id": "key"},
            {
                "fcm_service_account_file": ["The service-account JSON has no private_key."],
                "apns_key_id": ["A key id is 10 capital letters or digits (shown beside the key in Apple's portal)."],
            },
        ),
        (
            {"apns_private_key_file": "malformed", "rate_limit_per_second": "0", "apns_bundle_id": "my shop"},
            {
                "apns_private_key_file": ["The .p8 file is not a readable private key."],
                "rate_limit_per_second": ["The rate limit must be at least 1 message per second."],
                "apns_bundle_id": ["A bundle id is reverse-DNS: letters, digits and hyphens in dot-separated parts."],
            },
        ),
    ],
)
@pytest.mark.parametrize("change", [False, True], ids=["add", "change"])
def test_a_bad_upload_and_a_bad_field_are_both_reported_in_one_answer_and_nothing_is_saved(
    client, admin_erin, apns_credentials, fcm_credentials, overrides, errors, change, caplog
):
    """The upload's error used to hide the other fields' errors until the next save."""
    caplog.set_level(logging.DEBUG)
    overrides = dict(overrides)
    marker = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCpushdeskmarker"
    if overrides.get("apns_private_key_file") == "malformed":
        pem = f"-----BEGIN PRIVATE KEY-----\n{marker}\n-----END PRIVATE KEY-----\n"
        overrides["apns_private_key_file"] = SimpleUploadedFile("AuthKey.p8", pem.encode())
    if overrides.get("fcm_service_account_file") == "no-private-key":
        info = {k: v for k, v in fcm_credentials.info.items() if k != "private_key"}
        overrides["fcm_service_account_file"] = SimpleUploadedFile("sa.json", json.dumps(info).encode())
    client.force_login(admin_erin)
    url = reverse("admin:delivery_app_add")
    if change:
        client.post(url, form_data(apns_credentials, fcm_credentials))
        url = reverse("admin:delivery_app_change", args=[App.objects.get().pk])
    kept = ["name", "rate_limit_per_second", "apns_team_id", "apns_key_id", "apns_bundle_id"]
    kept += ["apns_private_key_fingerprint", "fcm_service_account_fingerprint"]
    before = list(App.objects.values_list(*kept))
    response = client.post(url, form_data(apns_credentials, fcm_credentials, **overrides))
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert form.errors == errors
    assert list(App.objects.values_list(*kept)) == before
    page = response.content.decode()
    assert marker not in page + caplog.text
    assert all(f not in page + caplog.text for f in secret_fragments(apns_credentials, fcm_credentials))
    assert 'name="apns_private_key_file" value' not in page


@pytest.mark.django_db
def test_good_values_still_save_on_the_apps_page(client, admin_erin, apns_credentials, fcm_credentials):
    client.force_login(admin_erin)
    assert (
        client.post(reverse("admin:delivery_app_add"), form_data(apns_credentials, fcm_credentials)).status_code == 302
    )
    app = App.objects.get()
    url = reverse("admin:delivery_app_change", args=[app.pk])
    new_key = make_apns_credentials(key_id="NEWKEY1234")
    changed = form_data(
        apns_credentials,
        fcm_credentials,
        apns_key_id=new_key.key_id,
        apns_private_key_file=SimpleUploadedFile("new.p8", new_key.private_key_pem.encode()),
        fcm_service_account_file=None,
    )
    assert client.post(url, changed).status_code == 302
    after = App.objects.get()
    assert after.apns_key_id == new_key.key_id
    assert after.apns_private_key_fingerprint != app.apns_private_key_fingerprint


@pytest.mark.django_db
def test_the_service_names_every_wrong_field_at_once():
    with pytest.raises(ValidationError) as raised:
        app_create(
            name="Shop",
            by=None,
            rate_limit_per_second=0,
            apns_team_id="team",
            apns_key_id="KEY1234567",
            apns_bundle_id="com.example.shop",
            identity_verification_required=True,
        )
    assert set(raised.value.message_dict) == {
        "rate_limit_per_second",
        "apns_team_id",
        "apns_private_key",
        "identity_verification_required",
    }
