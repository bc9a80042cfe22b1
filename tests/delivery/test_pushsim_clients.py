"""Client libraries nobody here wrote, pointed at the push simulator, get what APNs and FCM give them.

aioapns (an asyncio APNs client on raw h2, over TLS without ALPN) and firebase-admin (Google's
SDK: google-auth for the OAuth token, requests and httpx for messages:send) are what integrators
use; if they work against the simulator, "point your client library at the simulator" holds.
Each library is pointed at it the only way it allows: aioapns by its protocol class's host and
port, firebase-admin by the service account's ``token_uri`` and its messaging URL.
"""

import asyncio
import ssl
import time
import uuid

import firebase_admin
import pytest
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol
from firebase_admin import credentials, exceptions, messaging

from delivery.providers.apns import REASONS
from delivery.providers.fcm import ERROR_CODES

# firebase-admin 7 steers towards Firebase installation ids; registration tokens are what FCM
# and our devices use.
pytestmark = pytest.mark.filterwarnings("ignore:Message.token is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _no_running_loop():
    """Both clients run their own event loop (`asyncio.run`, also inside firebase-admin's
    `delete_app`). A library used earlier in the same process (Playwright's sync API, for one)
    may leave this thread marked as running a loop; these tests start from none."""
    running = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    yield
    asyncio.events._set_running_loop(running)


# The status APNs sends each reason with (push-protocols.md §1.6).
APNS_STATUS = {
    **dict.fromkeys(
        [
            "BadCollapseId",
            "BadDeviceToken",
            "BadExpirationDate",
            "BadMessageId",
            "BadPriority",
            "BadTopic",
            "DeviceTokenNotForTopic",
            "DuplicateHeaders",
            "IdleTimeout",
            "InvalidPushType",
            "MissingDeviceToken",
            "MissingTopic",
            "PayloadEmpty",
            "TopicDisallowed",
        ],
        400,
    ),
    **dict.fromkeys(
        [
            "BadCertificate",
            "BadCertificateEnvironment",
            "ExpiredProviderToken",
            "Forbidden",
            "InvalidProviderToken",
            "MissingProviderToken",
            "UnrelatedKeyIdInToken",
            "BadEnvironmentKeyIdInToken",
            "BadEnvironmentKeyInToken",
        ],
        403,
    ),
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "ExpiredToken": 410,
    "Unregistered": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}


def device(i: int) -> str:
    return f"{i:064x}"


# --- aioapns -------------------------------------------------------------------------------------


def run_aioapns(pushsim, creds, requests: list[NotificationRequest], *, attempts: int = 1) -> list:
    """Send with one aioapns client on one connection (no re-sends on a new one), all in flight."""
    port = int(pushsim.apns_url(tls=True).rsplit(":", 1)[1])
    protocol = type(
        "SimulatorProtocol", (APNsProductionClientProtocol,), {"APNS_SERVER": "localhost", "APNS_PORT": port}
    )

    async def main():
        client = APNs(
            key=creds.private_key_pem,
            key_id=creds.key_id,
            team_id=creds.team_id,
            topic=creds.bundle_id,
            max_connections=1,
            max_connection_attempts=attempts,
            # aioapns offers no ALPN: the simulator must take its HTTP/2 preface, as APNs does.
            ssl_context=ssl.create_default_context(cafile=pushsim.ca_path),
        )
        client.pool.protocol_class = protocol
        try:
            return await asyncio.wait_for(
                asyncio.gather(*(client.send_notification(r) for r in requests), return_exceptions=True), 30
            )
        finally:
            client.pool.close()

    return asyncio.run(main())


def alert(token: str, **kwargs) -> NotificationRequest:
    return NotificationRequest(
        device_token=token,
        message={"aps": {"alert": {"title": "Hi", "body": "there"}}},
        notification_id=str(uuid.uuid4()),
        **kwargs,
    )


def test_aioapns_push_is_accepted(pushsim, apns_credentials):
    request = alert(device(1), push_type=PushType.ALERT, priority=10, time_to_live=3600, collapse_key="c")
    [result] = run_aioapns(pushsim, apns_credentials, [request])
    assert (result.is_successful, result.notification_id) == (True, request.notification_id)
    [received] = pushsim.state.recent(token=device(1))
    assert received["title"] == "Hi" and received["headers"]["apns-collapse-id"] == "c"


def test_aioapns_voip_push_to_its_suffixed_topic_is_accepted(pushsim, apns_credentials):
    voip = NotificationRequest(
        device_token=device(2),
        message={"aps": {}, "call": "1"},
        push_type=PushType.VOIP,
        apns_topic=apns_credentials.bundle_id + ".voip",
    )
    bare = NotificationRequest(device_token=device(3), message={"aps": {}}, push_type=PushType.VOIP)
    results = run_aioapns(pushsim, apns_credentials, [voip, bare])
    assert [(r.status, r.description) for r in results] == [("200", None), ("400", "DeviceTokenNotForTopic")]


def test_aioapns_gets_every_reason_our_provider_maps(pushsim, apns_credentials):
    assert set(REASONS) == set(APNS_STATUS), "give each mapped reason its status here"
    reasons = sorted(REASONS)
    for i, reason in enumerate(reasons):
        pushsim.state.fail_token(token=device(100 + i), failures=[(APNS_STATUS[reason], reason)])
    results = run_aioapns(pushsim, apns_credentials, [alert(device(100 + i)) for i in range(len(reasons))])
    assert [(r.status, r.description) for r in results] == [(str(APNS_STATUS[r]), r) for r in reasons]
    for reason, result in zip(reasons, results, strict=True):
        if APNS_STATUS[reason] == 410:
            assert abs(result.timestamp / 1000 - time.time()) < 60, "410 carries a millisecond timestamp"
    assert pushsim.state.connections == 1, "error answers leave the connection usable"


def test_aioapns_unregistered_token_gets_410_with_its_timestamp(pushsim, apns_credentials):
    pushsim.state.add_device(token=device(4), platform="ios", state="unregistered")
    invalidated_at = pushsim.state.device(device(4)).invalidated_at_ms
    [result] = run_aioapns(pushsim, apns_credentials, [alert(device(4))])
    assert (result.status, result.description, result.timestamp) == ("410", "Unregistered", invalidated_at)


def test_aioapns_gets_429_without_retry_after(pushsim, apns_credentials):
    pushsim.state.fail_token(token=device(5), failures=[429])
    [result] = run_aioapns(pushsim, apns_credentials, [alert(device(5))])
    assert (result.status, result.description) == ("429", "TooManyRequests")


def test_aioapns_31_pushes_in_flight_on_one_connection_with_one_bad_token(pushsim, apns_credentials):
    pushsim.state.add_device(token=device(66), platform="ios", state="unregistered")
    requests = [alert(device(50 + i)) for i in range(31)]
    results = run_aioapns(pushsim, apns_credentials, requests)
    statuses = [r.status if not isinstance(r, BaseException) else type(r).__name__ for r in results]
    assert statuses == ["410" if 50 + i == 66 else "200" for i in range(31)]
    assert pushsim.state.connections == 1
    assert sum(pushsim.state.snapshot_counts().values()) == 30


# --- firebase-admin ------------------------------------------------------------------------------


@pytest.fixture
def firebase(pushsim, fcm_credentials, monkeypatch):
    """A firebase-admin app whose credentials' token_uri is the simulator's; its sends go there too."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", pushsim.ca_path)  # google-auth and requests trust the simulator's CA
    monkeypatch.setenv("SSL_CERT_FILE", pushsim.ca_path)  # httpx (send_each_async) too
    app = firebase_admin.initialize_app(credentials.Certificate(dict(fcm_credentials.info)), name=str(uuid.uuid4()))
    service = messaging._get_messaging_service(app)
    # firebase-admin has no setting for the FCM endpoint: its URL is the one thing replaced.
    service._fcm_url = f"{pushsim.fcm_url(tls=True)}/v1/projects/{fcm_credentials.project_id}/messages:send"
    yield app
    firebase_admin.delete_app(app)


FCM_TOKEN = "fcm-device-token-" + "a" * 40


def fcm_message(token: str = FCM_TOKEN) -> messaging.Message:
    return messaging.Message(
        token=token,
        notification=messaging.Notification(title="Hello", body="from firebase-admin"),
        data={"k": "v"},
        android=messaging.AndroidConfig(
            ttl=3600,
            priority="high",
            collapse_key="c",
            notification=messaging.AndroidNotification(color="#ff0000", channel_id="news", event_timestamp=None),
        ),
        apns=messaging.APNSConfig(
            headers={"apns-priority": "10"}, payload=messaging.APNSPayload(aps=messaging.Aps(badge=1))
        ),
    )


def test_firebase_admin_push_is_accepted(pushsim, firebase):
    name = messaging.send(fcm_message(), app=firebase)
    assert name.startswith("projects/pushdesk-test/messages/")
    [received] = pushsim.state.recent(token=FCM_TOKEN)
    assert received["title"] == "Hello" and received["payload"]["android"]["ttl"] == "3600s"
    assert pushsim.state.token_grants == 1


def test_firebase_admin_dry_run_and_topic_and_condition(pushsim, firebase):
    assert messaging.send(fcm_message(), dry_run=True, app=firebase).endswith("/fake_message_id")
    assert messaging.send(messaging.Message(topic="news", data={"k": "v"}), app=firebase)
    condition = "'news' in topics && ('sports' in topics || !('weather' in topics))"
    assert messaging.send(messaging.Message(condition=condition, data={"k": "v"}), app=firebase)


# The status FCM sends each code with, and the exception firebase-admin raises for it.
FCM_ERRORS = {
    "UNREGISTERED": (404, messaging.UnregisteredError),
    "SENDER_ID_MISMATCH": (403, messaging.SenderIdMismatchError),
    "INVALID_ARGUMENT": (400, exceptions.InvalidArgumentError),
    "QUOTA_EXCEEDED": (429, messaging.QuotaExceededError),
    "UNAVAILABLE": (503, exceptions.UnavailableError),
    "INTERNAL": (500, exceptions.InternalError),
    "THIRD_PARTY_AUTH_ERROR": (401, messaging.ThirdPartyAuthError),
    "APNS_AUTH_ERROR": (401, messaging.ThirdPartyAuthError),
    "UNSPECIFIED_ERROR": (400, exceptions.InvalidArgumentError),
}


@pytest.mark.parametrize("code", sorted(FCM_ERRORS))
def test_firebase_admin_raises_its_exception_for_each_code_our_provider_maps(pushsim, firebase, code):
    assert set(ERROR_CODES) == set(FCM_ERRORS), "give each mapped code its status and exception here"
    status, exception = FCM_ERRORS[code]
    pushsim.state.fail_token(token=FCM_TOKEN, failures=[(status, code)] * 5)  # firebase-admin re-sends 500/503 4 times
    with pytest.raises(exception) as raised:
        messaging.send(fcm_message(), app=firebase)
    assert type(raised.value) is exception
    assert raised.value.http_response.status_code == status
    assert pushsim.state.count(FCM_TOKEN) == 0


def test_firebase_admin_unregistered_and_invalid_tokens(pushsim, firebase):
    pushsim.state.add_device(token=FCM_TOKEN, platform="android", state="unregistered")
    with pytest.raises(messaging.UnregisteredError):
        messaging.send(fcm_message(), app=firebase)
    with pytest.raises(exceptions.InvalidArgumentError, match="not a valid FCM registration token"):
        messaging.send(fcm_message("short"), app=firebase)


def test_firebase_admin_gets_an_apns_reason_injected_for_its_token_as_an_invalid_argument_not_retried(
    pushsim, firebase
):
    # An unknown token shaped as APNs's takes APNs reasons; sent through FCM, the failure is still
    # the next answer: one firebase-admin does not re-send (it re-sends a 500, which then succeeds).
    token = "ab" * 32
    pushsim.state.fail_token(token=token, failures=[(410, "Unregistered")])
    with pytest.raises(exceptions.InvalidArgumentError, match="'Unregistered'.*an APNs reason") as raised:
        messaging.send(fcm_message(token), app=firebase)
    assert raised.value.http_response.status_code == 400
    assert pushsim.state.count(token) == 0


def test_firebase_admin_waits_the_retry_after_of_a_429_then_sends(pushsim, firebase):
    pushsim.state.faults.retry_after = 1
    pushsim.state.fail_token(token=FCM_TOKEN, failures=[429])
    started = time.monotonic()
    assert messaging.send(fcm_message(), app=firebase)
    assert time.monotonic() - started >= 1.0
    assert pushsim.state.count(FCM_TOKEN) == 1


def test_firebase_admin_raises_on_a_429_without_retry_after(pushsim, firebase):
    pushsim.state.faults.retry_after = 0
    pushsim.state.fail_token(token=FCM_TOKEN, failures=[429])
    with pytest.raises(messaging.QuotaExceededError) as raised:
        messaging.send(fcm_message(), app=firebase)
    assert raised.value.http_response.status_code == 429
    assert "retry-after" not in raised.value.http_response.headers


def test_firebase_admin_waits_the_retry_after_of_a_503_then_sends(pushsim, firebase):
    pushsim.state.faults.retry_after = 1
    pushsim.state.fail_token(token=FCM_TOKEN, failures=[503])
    started = time.monotonic()
    assert messaging.send(fcm_message(), app=firebase)
    assert time.monotonic() - started >= 1.0
    assert pushsim.state.count(FCM_TOKEN) == 1


def test_firebase_admin_many_sends_in_flight_on_http2_with_one_bad_token(pushsim, firebase):
    pushsim.state.add_device(token=FCM_TOKEN + "-dead", platform="android", state="unregistered")
    tokens = [f"{FCM_TOKEN}-{i}" for i in range(30)] + [FCM_TOKEN + "-dead"]

    async def main():
        try:
            return await messaging.send_each_async([fcm_message(t) for t in tokens], dry_run=False, app=firebase)
        finally:  # its connections belong to this event loop
            await messaging._get_messaging_service(firebase)._async_client.aclose()

    batch = asyncio.run(main())
    assert (batch.success_count, batch.failure_count) == (30, 1)
    assert isinstance(batch.responses[-1].exception, messaging.UnregisteredError)
    assert all(pushsim.state.count(t) == 1 for t in tokens[:30])
    assert pushsim.state.connections == 2, "one for the OAuth token, one HTTP/2 connection for the 31 sends"
