"""The APNs provider against the simulator: outcomes for every reason, headers, provider-token lifetime."""

import pytest

from delivery.providers import OutcomeKind
from delivery.providers.apns import ApnsClient, ApnsMessage
from delivery.transport import Http2Transport
from tests.fakes.pushsim import FakeClock, make_apns_credentials, trust_apns

DEAD, PERMANENT, RETRY, CREDENTIALS = (
    OutcomeKind.DEAD_TOKEN,
    OutcomeKind.PERMANENT_FAILURE,
    OutcomeKind.RETRY_LATER,
    OutcomeKind.CREDENTIALS,
)

# Every reason of push-protocols.md §1.6 with its status, and the class §1.7 gives it.
DOCUMENTED = [
    (400, "BadCollapseId", PERMANENT),
    (400, "BadDeviceToken", DEAD),
    (400, "BadExpirationDate", PERMANENT),
    (400, "BadMessageId", PERMANENT),
    (400, "BadPriority", PERMANENT),
    (400, "BadTopic", CREDENTIALS),
    (400, "DeviceTokenNotForTopic", PERMANENT),
    (400, "DuplicateHeaders", PERMANENT),
    (400, "IdleTimeout", RETRY),
    (400, "InvalidPushType", PERMANENT),
    (400, "MissingDeviceToken", PERMANENT),
    (400, "MissingTopic", CREDENTIALS),
    (400, "PayloadEmpty", PERMANENT),
    (400, "TopicDisallowed", CREDENTIALS),
    (403, "BadCertificate", CREDENTIALS),
    (403, "BadCertificateEnvironment", CREDENTIALS),
    (403, "ExpiredProviderToken", CREDENTIALS),  # a fresh token cannot be minted within 20 minutes
    (403, "Forbidden", CREDENTIALS),
    (403, "InvalidProviderToken", CREDENTIALS),
    (403, "MissingProviderToken", CREDENTIALS),
    (403, "UnrelatedKeyIdInToken", RETRY),
    (403, "BadEnvironmentKeyIdInToken", CREDENTIALS),
    (403, "BadEnvironmentKeyInToken", CREDENTIALS),
    (404, "BadPath", PERMANENT),
    (405, "MethodNotAllowed", PERMANENT),
    (410, "ExpiredToken", DEAD),
    (410, "Unregistered", DEAD),
    (413, "PayloadTooLarge", PERMANENT),
    (429, "TooManyProviderTokenUpdates", RETRY),
    (429, "TooManyRequests", RETRY),
    (500, "InternalServerError", RETRY),
    (503, "ServiceUnavailable", RETRY),
    (503, "Shutdown", RETRY),
    (400, "SomeFutureReason", PERMANENT),
    (503, "SomeFutureOverload", RETRY),
    (403, "SomeFutureAuthProblem", CREDENTIALS),
]

TOKEN = "ab" * 32


def alert(token=TOKEN, **kwargs):
    return ApnsMessage(token=token, payload={"aps": {"alert": {"title": "Hi", "body": "There"}}}, **kwargs)


@pytest.fixture
def client(pushsim, apns_credentials):
    clock = FakeClock()
    c = ApnsClient(
        team_id=apns_credentials.team_id,
        key_id=apns_credentials.key_id,
        private_key_pem=apns_credentials.private_key_pem,
        bundle_id=apns_credentials.bundle_id,
        base_url=pushsim.apns_url("production", tls=True),
        transport=Http2Transport(ca_bundle=pushsim.ca_path),
        clock=clock,
    )
    c.clock = clock
    yield c
    c.close()


@pytest.mark.parametrize(("status", "reason", "kind"), DOCUMENTED, ids=[r for _, r, _ in DOCUMENTED])
def test_every_documented_reason_maps_to_its_outcome(client, pushsim, status, reason, kind):
    pushsim.state.fail_token(token=TOKEN, failures=[(status, reason)])
    [outcome] = client.send([alert()])
    assert (outcome.kind, outcome.status) == (kind, status)
    assert outcome.reason == reason
    if kind is RETRY:
        assert outcome.retry_after and outcome.retry_after > 0


def test_accepted_keeps_the_apns_id_and_sends_every_header(client, pushsim):
    message = alert(push_type="background", collapse_id="score", expiration=1_900_000_000, apns_id="")
    message.payload = {"aps": {"content-available": 1}}
    [outcome] = client.send([message])
    assert outcome.kind is OutcomeKind.ACCEPTED and len(outcome.provider_id) == 36
    [received] = pushsim.state.recent(token=TOKEN)
    assert received["headers"] == {
        "apns-topic": "com.example.pushdesk",
        "apns-push-type": "background",
        "apns-priority": "5",
        "apns-id": outcome.provider_id,
        "apns-expiration": "1900000000",
        "apns-collapse-id": "score",
    }


@pytest.mark.parametrize(
    ("push_type", "topic"),
    [
        ("voip", "com.example.pushdesk.voip"),
        ("liveactivity", "com.example.pushdesk.push-type.liveactivity"),
        ("complication", "com.example.pushdesk.complication"),
        ("fileprovider", "com.example.pushdesk.pushkit.fileprovider"),
        ("pushtotalk", "com.example.pushdesk.voip-ptt"),
        ("widgets", "com.example.pushdesk.push-type.widgets"),
        ("alert", "com.example.pushdesk"),
    ],
)
def test_push_types_with_a_topic_suffix_get_it(client, pushsim, push_type, topic):
    # The simulator refuses a push type sent to another push type's topic (DeviceTokenNotForTopic).
    [outcome] = client.send([ApnsMessage(token=TOKEN, payload={"aps": {}}, push_type=push_type)])
    assert outcome.accepted, outcome.reason
    assert pushsim.state.recent(token=TOKEN)[0]["headers"]["apns-topic"] == topic


def test_a_batch_answers_each_message_in_order(client, pushsim):
    pushsim.state.add_device(token="cd" * 32, platform="ios", state="unregistered")
    pushsim.state.add_device(token="ef" * 32, platform="ios", topic="com.other.app")
    outcomes = client.send([alert(), alert(token="cd" * 32), alert(token="ef" * 32), alert(token="not-hex")])
    assert [(o.kind, o.reason) for o in outcomes] == [
        (OutcomeKind.ACCEPTED, ""),
        (DEAD, "Unregistered"),
        (PERMANENT, "DeviceTokenNotForTopic"),
        (DEAD, "BadDeviceToken"),
    ]
    assert outcomes[1].invalidated_at is not None and outcomes[1].invalidated_at.year >= 2026


def test_bad_messages_are_permanent_failures(client, pushsim):
    outcomes = client.send(
        [
            alert(collapse_id="x" * 65),
            alert(priority=7),
            alert(push_type="telepathy"),
            alert(apns_id="not-a-uuid"),
            ApnsMessage(token=TOKEN, payload={"aps": {"alert": "x" * 5000}}),
            ApnsMessage(token=TOKEN, payload=b""),
        ]
    )
    assert [o.reason for o in outcomes] == [
        "BadCollapseId",
        "BadPriority",
        "InvalidPushType",
        "BadMessageId",
        "PayloadTooLarge",
        "PayloadEmpty",
    ]
    assert {o.kind for o in outcomes} == {PERMANENT}
    assert pushsim.state.count(TOKEN) == 0


def test_injected_503_without_retry_after_is_retried_after_the_documented_backoff(client, pushsim):
    pushsim.state.faults.rate_503 = 1.0
    pushsim.state.faults.retry_after = 7  # FCM's; APNs sends no Retry-After
    [outcome] = client.send([alert()])
    assert (outcome.kind, outcome.reason, outcome.retry_after, outcome.retry_after_from_provider) == (
        RETRY,
        "ServiceUnavailable",
        60.0,
        False,
    )


def test_a_key_the_provider_does_not_know_is_a_credentials_problem(pushsim):
    stranger = make_apns_credentials(key_id="KEYUNKNOWN")
    c = ApnsClient(
        team_id=stranger.team_id,
        key_id=stranger.key_id,
        private_key_pem=stranger.private_key_pem,
        bundle_id=stranger.bundle_id,
        base_url=pushsim.apns_url(tls=True),
        transport=Http2Transport(ca_bundle=pushsim.ca_path),
    )
    [outcome] = c.send([alert()])
    assert (outcome.kind, outcome.reason) == (CREDENTIALS, "InvalidProviderToken")


def test_a_key_restricted_to_production_is_refused_by_the_sandbox(pushsim):
    creds = make_apns_credentials(key_id="KEYPRODONL")
    trust_apns(pushsim, creds, environments=("production",))
    c = ApnsClient(
        team_id=creds.team_id,
        key_id=creds.key_id,
        private_key_pem=creds.private_key_pem,
        bundle_id=creds.bundle_id,
        environment="sandbox",
        base_url=pushsim.apns_url("sandbox", tls=True),
        transport=Http2Transport(ca_bundle=pushsim.ca_path),
    )
    [outcome] = c.send([alert()])
    assert (outcome.kind, outcome.reason) == (CREDENTIALS, "BadEnvironmentKeyInToken")


def test_the_provider_token_is_reused_then_reminted_after_forty_minutes(client, pushsim):
    assert client.send([alert()])[0].accepted
    first = client.token.get()
    for minutes in (10, 15, 14):  # 39 minutes in all: still the same token
        client.clock.advance(minutes * 60)
        pushsim.state.advance_clock(minutes * 60)
        assert client.send([alert()])[0].accepted
    assert client.token.get() == first and client.token.mint_count == 1
    client.clock.advance(60)
    pushsim.state.advance_clock(60)
    [outcome] = client.send([alert()])
    assert outcome.accepted  # a new token on the same connection, 40 minutes on: allowed
    assert client.token.mint_count == 2 and client.token.get() != first


def test_an_expired_provider_token_is_reminted_once_and_the_message_resent(client, pushsim):
    assert client.send([alert()])[0].accepted
    client.clock.advance(25 * 60)  # our clock says 25 minutes: no re-mint due yet
    pushsim.state.advance_clock(61 * 60)  # APNs's says the token is over an hour old
    [outcome] = client.send([alert()])
    assert outcome.accepted
    assert client.token.mint_count == 2
    assert pushsim.state.count(TOKEN) == 2


def test_the_refresh_interval_stays_within_apples_bounds(apns_credentials):
    for minutes in (10, 55):
        with pytest.raises(ValueError):
            ApnsClient(
                team_id=apns_credentials.team_id,
                key_id=apns_credentials.key_id,
                private_key_pem=apns_credentials.private_key_pem,
                bundle_id=apns_credentials.bundle_id,
                base_url="http://127.0.0.1:9",
                refresh_after=minutes * 60,
            )


def test_a_client_for_an_app_uses_its_settings_and_environment(pushsim_tls_app, pushsim):
    client = ApnsClient.for_app(pushsim_tls_app)
    try:
        assert client.base_url == pushsim.apns_url("production", tls=True)
        assert client.send([alert()])[0].accepted
    finally:
        client.close()


def test_a_batch_survives_goaway_without_losing_or_duplicating_a_notification(client, pushsim):
    pushsim.state.faults.goaway_after_streams = 30
    tokens = [f"{i:064x}" for i in range(100)]
    outcomes = client.send([alert(token=t) for t in tokens])
    assert all(o.accepted for o in outcomes)
    assert [pushsim.state.count(t) for t in tokens] == [1] * 100
