"""The FCM provider against the simulator: outcomes for every error code, OAuth token lifetime."""

import pytest

from delivery.providers import OutcomeKind
from delivery.providers.fcm import FcmClient, FcmMessage, http_client
from delivery.transport import Http2Transport, Response
from tests.fakes.pushsim import FakeClock, make_fcm_credentials
from tests.fakes.token_endpoint import token_endpoint

DEAD, PERMANENT, RETRY, CREDENTIALS = (
    OutcomeKind.DEAD_TOKEN,
    OutcomeKind.PERMANENT_FAILURE,
    OutcomeKind.RETRY_LATER,
    OutcomeKind.CREDENTIALS,
)
TOKEN = "fcm-token-" + "x" * 140

# Every FcmError code of push-protocols.md §2.4 and what the reference says to do.
DOCUMENTED = [
    ("UNREGISTERED", 404, DEAD),
    ("SENDER_ID_MISMATCH", 403, DEAD),
    ("INVALID_ARGUMENT", 400, PERMANENT),
    ("QUOTA_EXCEEDED", 429, RETRY),
    ("UNAVAILABLE", 503, RETRY),
    ("INTERNAL", 500, RETRY),
    ("THIRD_PARTY_AUTH_ERROR", 401, CREDENTIALS),
    ("APNS_AUTH_ERROR", 401, CREDENTIALS),
    ("UNSPECIFIED_ERROR", 400, PERMANENT),
]


def to(token=TOKEN, **message):
    return FcmMessage(message={"token": token, "notification": {"title": "Hi", "body": "There"}, **message})


@pytest.fixture
def client(pushsim, fcm_credentials, settings):
    clock = FakeClock()
    c = FcmClient(
        service_account_info=fcm_credentials.info,
        base_url=pushsim.fcm_url(tls=True),
        transport=Http2Transport(ca_bundle=pushsim.ca_path),
        http=http_client(),
        clock=clock,
    )
    c.clock = clock
    yield c
    c.close()


@pytest.mark.parametrize(("code", "status", "kind"), DOCUMENTED, ids=[c for c, _, _ in DOCUMENTED])
def test_every_documented_error_code_maps_to_its_outcome(client, pushsim, code, status, kind):
    pushsim.state.fail_token(token=TOKEN, failures=[(status, code)])
    [outcome] = client.send([to()])
    assert (outcome.kind, outcome.status, outcome.reason) == (kind, status, code)
    if kind is RETRY:
        assert outcome.retry_after and outcome.retry_after > 0


def test_accepted_keeps_the_message_name(client, pushsim):
    [outcome] = client.send([to(data={"order": "42"}, android={"priority": "high", "ttl": "3600s"})])
    assert outcome.accepted and outcome.provider_id.startswith("projects/pushdesk-test/messages/")
    [received] = pushsim.state.recent(token=TOKEN)
    assert (received["platform"], received["title"], received["payload"]["data"]) == ("android", "Hi", {"order": "42"})


def test_the_simulators_real_error_bodies_map_to_outcomes(client, pushsim):
    pushsim.state.add_device(token="gone-" + "y" * 60, platform="android", state="unregistered")
    pushsim.state.add_device(token="elsewhere-" + "y" * 60, platform="android", state="other_sender")
    pushsim.state.add_device(token="ios-via-fcm-" + "y" * 60, platform="ios", state="third_party_auth_error")
    outcomes = client.send(
        [
            to(token="gone-" + "y" * 60),
            to(token="elsewhere-" + "y" * 60),
            to(token="ios-via-fcm-" + "y" * 60),
            to(token="bad token!"),
            to(data={"count": 3}),
            to(toen="typo"),
            to(android={"ttl": "forever"}),
        ]
    )
    assert [(o.kind, o.reason) for o in outcomes] == [
        (DEAD, "UNREGISTERED"),
        (DEAD, "SENDER_ID_MISMATCH"),
        (CREDENTIALS, "THIRD_PARTY_AUTH_ERROR"),
        (DEAD, "INVALID_ARGUMENT"),  # "not a valid FCM registration token": the token is dead
        (PERMANENT, "INVALID_ARGUMENT"),
        (PERMANENT, "INVALID_ARGUMENT"),
        (PERMANENT, "INVALID_ARGUMENT"),
    ]
    assert "Invalid value at 'message.data[0].value'" in outcomes[4].detail
    assert 'Unknown name "toen"' in outcomes[5].detail


def test_quota_exceeded_is_retried_after_the_providers_retry_after(client, pushsim):
    pushsim.state.faults.rate_429 = 1.0
    pushsim.state.faults.retry_after = 90
    [outcome] = client.send([to()])
    assert (outcome.kind, outcome.reason, outcome.retry_after, outcome.retry_after_from_provider) == (
        RETRY,
        "QUOTA_EXCEEDED",
        90.0,
        True,
    )


def test_validate_only_checks_without_delivering(client, pushsim):
    [outcome] = client.send([FcmMessage(message={"topic": "news", "notification": {"title": "T"}}, validate_only=True)])
    assert outcome.accepted and outcome.provider_id == "projects/pushdesk-test/messages/fake_message_id"
    assert pushsim.state.recent() == []


def test_the_access_token_is_reused_then_refreshed_before_it_expires(client, pushsim):
    assert client.send([to()])[0].accepted
    client.clock.advance(50 * 60)
    assert client.send([to()])[0].accepted
    assert pushsim.state.token_grants == 1
    client.clock.advance(5 * 60)  # 55 minutes: within five minutes of the expiry
    assert client.send([to()])[0].accepted
    assert pushsim.state.token_grants == 2 and client.access_token.refresh_count == 2


def test_an_access_token_fcm_calls_expired_is_refreshed_once_and_the_message_resent(client, pushsim):
    assert client.send([to()])[0].accepted
    pushsim.state.expire_access_tokens()
    [outcome] = client.send([to()])
    assert outcome.accepted
    assert pushsim.state.token_grants == 2 and pushsim.state.count(TOKEN) == 2


def _send_two(pushsim, service_account_info) -> list:
    """Two messages through a client of this service account, to the simulator over TLS."""
    c = FcmClient(
        service_account_info=service_account_info,
        base_url=pushsim.fcm_url(tls=True),
        transport=Http2Transport(ca_bundle=pushsim.ca_path),
        http=http_client(),
    )
    try:
        return c.send([to(), to()])
    finally:
        c.close()


def test_a_service_account_the_token_endpoint_refuses_is_a_credentials_problem(pushsim):
    stranger = make_fcm_credentials(token_uri=pushsim.url(tls=True) + "/token", name="stranger")
    outcomes = _send_two(pushsim, stranger.info)
    assert [(o.kind, o.reason) for o in outcomes] == [(CREDENTIALS, "oauth")] * 2
    assert "invalid_grant" in outcomes[0].detail
    assert stranger.info["private_key"] not in outcomes[0].detail


@pytest.mark.parametrize(
    "body",
    [
        b"<html>Sign in to the proxy</html>",
        b"[]",
        b'{"access_token": "ya29.x", "expires_in": "soon"}',
        b'{"access_token": "ya29.x", "expires_in": 1e400}',
    ],
)
def test_a_token_endpoint_answering_200_without_a_usable_token_is_a_credentials_problem(
    pushsim, settings, tmp_path, body
):
    with token_endpoint(status=200, body=body, ca_path=str(tmp_path / "ca.pem")) as url:
        settings.PUSHDESK_CA_BUNDLE = str(tmp_path / "ca.pem")
        account = make_fcm_credentials(token_uri=url, name="proxied")
        outcomes = _send_two(pushsim, account.info)
    assert [(o.kind, o.reason) for o in outcomes] == [(CREDENTIALS, "oauth")] * 2
    assert outcomes[0].detail == "The token endpoint answered without a usable access token."


def test_a_client_for_an_app_reads_its_project_and_settings(pushsim_tls_app, pushsim):
    client = FcmClient.for_app(pushsim_tls_app)
    try:
        assert client.send_url == f"{pushsim.fcm_url(tls=True)}/v1/projects/pushdesk-test/messages:send"
        assert client.send([to()])[0].accepted
    finally:
        client.close()


def test_a_dropped_connection_duplicates_no_message_and_says_which_may_have_arrived(client, pushsim):
    pushsim.state.faults.drop_after_streams = 40
    tokens = [f"fcm-token-{i:04d}-" + "z" * 100 for i in range(90)]
    outcomes = client.send([to(token=t) for t in tokens])
    assert max(pushsim.state.count(t) for t in tokens) == 1
    lost = [o for o in outcomes if not o.accepted]
    assert lost and all(o.reason == "transport:connection" for o in lost)


@pytest.mark.parametrize(
    ("status", "body", "kind", "provider_id"),
    [
        (200, b'{"name": "projects/p/messages/0:17"}', OutcomeKind.ACCEPTED, "projects/p/messages/0:17"),
        (200, b"", OutcomeKind.ACCEPTED, ""),
        (502, b"<html><body>Bad gateway</body></html>", RETRY, ""),  # a proxy's page, not JSON
        (500, b"\xff\xfe not text", RETRY, ""),  # not even UTF-8
        (400, b'{"error": "not an object"}', PERMANENT, ""),
    ],
)
def test_an_answer_is_read_whatever_its_body(client, status, body, kind, provider_id):
    outcome = client.interpret(Response(status=status, body=body))
    assert outcome.kind is kind
    if kind is OutcomeKind.ACCEPTED:
        assert outcome.provider_id == provider_id
    else:
        assert outcome.reason == f"HTTP {status}"
