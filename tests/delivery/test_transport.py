"""The HTTP/2 transport against the push simulator over real HTTP/2 on loopback."""

import socket
import time
import uuid

import jwt
import pytest
import trustme

from delivery.transport import Http2Transport, Request
from tests.fakes.pushsim import BUNDLE_ID, KEY_ID, PROJECT_ID, TEAM_ID, heal_after_the_first_drop


@pytest.fixture
def bearer(apns_credentials):
    return jwt.encode(
        {"iss": TEAM_ID, "iat": int(time.time())},
        apns_credentials.private_key_pem,
        algorithm="ES256",
        headers={"kid": KEY_ID},
    )


def apns_requests(base_url, bearer, count, prefix="a"):
    body = b'{"aps":{"alert":{"title":"Hello","body":"from the transport test"}}}'
    return [
        Request(
            url=f"{base_url}/3/device/{prefix}{i:063x}",
            headers=[
                f"authorization: bearer {bearer}",
                f"apns-topic: {BUNDLE_ID}",
                "apns-push-type: alert",
                f"apns-id: {uuid.uuid4()}",
            ],
            body=body,
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("tls", [True, False], ids=["tls-alpn", "h2c"])
def test_a_batch_multiplexes_over_http2_and_answers_each_request_in_order(pushsim, bearer, tls):
    requests = apns_requests(pushsim.apns_url(tls=tls), bearer, 300)
    with Http2Transport(ca_bundle=pushsim.ca_path, max_connections_per_host=2, all_headers=True) as transport:
        responses = transport.send(requests)
    assert [r.status for r in responses] == [200] * 300
    sent_ids = [r.headers[3].split(": ")[1] for r in requests]
    assert [r.headers["apns-id"] for r in responses] == sent_ids
    assert all(pushsim.state.count(r.url.rsplit("/", 1)[1]) == 1 for r in requests)


def test_connections_are_reused_between_batches(pushsim, bearer):
    with Http2Transport(ca_bundle=pushsim.ca_path, max_connections_per_host=1) as transport:
        transport.send(apns_requests(pushsim.apns_url(tls=True), bearer, 5, prefix="b"))
        transport.send(apns_requests(pushsim.apns_url(tls=True), bearer, 5, prefix="c"))
    assert sum(pushsim.state.snapshot_counts().values()) == 10
    assert pushsim.state.connections == 1


def test_tls_verification_fails_closed_on_a_wrong_ca(pushsim, bearer, tmp_path):
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with Http2Transport(ca_bundle=str(other_ca)) as transport:
        responses = transport.send(apns_requests(pushsim.apns_url(tls=True), bearer, 3))
    assert all(r.status == 0 and r.error_kind == "tls" for r in responses)
    assert pushsim.state.snapshot_counts() == {}


def test_goaway_is_recovered_without_losing_or_duplicating_a_request(pushsim, bearer):
    pushsim.state.faults.goaway_after_streams = 40
    requests = apns_requests(pushsim.apns_url(tls=True), bearer, 150)
    with Http2Transport(ca_bundle=pushsim.ca_path, max_connections_per_host=1) as transport:
        responses = transport.send(requests)
    assert [r.status for r in responses] == [200] * 150
    counts = pushsim.state.snapshot_counts()
    assert len(counts) == 150 and set(counts.values()) == {1}


def test_a_dropped_connection_is_never_sent_again(pushsim, bearer):
    pushsim.state.faults.drop_after_streams = 50
    requests = apns_requests(pushsim.apns_url(), bearer, 120)
    with Http2Transport(ca_bundle=pushsim.ca_path, max_connections_per_host=1) as transport:
        responses = transport.send(requests)
    counts = pushsim.state.snapshot_counts()
    assert set(counts.values()) == {1}
    lost = [r for r in responses if r.status != 200]
    assert lost, "the connection was never dropped"
    # Nothing proves the server did not act on what was in flight: none of it is sent again.
    assert all(r.error_kind == "connection" and r.maybe_sent and r.attempts == 1 for r in lost)
    # What libcurl had not yet put on the wire when the connection dropped may go on a new one
    # (how much depends on timing), but each device is reached once and every answer is true.
    assert sum(r.status == 200 for r in responses) <= len(counts)


def test_a_connection_dropped_after_the_provider_acted_is_not_sent_again(pushsim, bearer):
    # The simulator records (acts on) each request, then answers 300 ms later; the 41st stream
    # drops the connection with the first 40 acted on but unanswered. A request libcurl had not
    # yet written when the connection dropped is safe on a new connection: how many there are
    # depends on timing, so the check is that exactly those were answered.
    pushsim.state.faults.latency_ms = 300
    pushsim.state.faults.drop_after_streams = 40
    healer = heal_after_the_first_drop(pushsim)
    requests = apns_requests(pushsim.apns_url(), bearer, 80)
    with Http2Transport(ca_bundle=pushsim.ca_path, max_connections_per_host=1) as transport:
        responses = transport.send(requests)
    healer.join()
    counts = pushsim.state.snapshot_counts()
    assert set(counts.values()) == {1}, "a device got the push twice"
    answered = [r for r in responses if r.status == 200]
    assert len(counts) == 40 + len(answered)
    assert len(answered) < 40, "the connection was dropped before most requests were written"
    assert all(r.status == 0 and r.maybe_sent and r.attempts == 1 for r in responses if r.status != 200)


def test_a_timeout_comes_back_as_an_error_that_may_have_been_sent(pushsim, bearer):
    pushsim.state.faults.latency_ms = 1500
    with Http2Transport(ca_bundle=pushsim.ca_path, timeout=0.3) as transport:
        responses = transport.send(apns_requests(pushsim.apns_url(), bearer, 2))
    assert all(r.error_kind == "timeout" and r.maybe_sent for r in responses)


class _CountedWaits:
    """The transport's libcurl multi handle, counting the waits for a socket (its loop's rounds)."""

    def __init__(self, multi):
        self.multi, self.waits = multi, 0

    def select(self, timeout):
        self.waits += 1
        return self.multi.select(timeout)

    def __getattr__(self, name):
        return getattr(self.multi, name)


def test_while_a_server_takes_its_time_the_transport_sleeps_until_an_answer_comes(pushsim, bearer):
    """No spinning: a round when a socket is ready or libcurl's own timer is due, not every few
    milliseconds (the loop used to wake every 0.5 to 10 ms: about 60 rounds for this answer)."""
    pushsim.state.faults.latency_ms = 600
    with Http2Transport(ca_bundle=pushsim.ca_path) as transport:
        transport._multi = counted = _CountedWaits(transport._multi)
        started = time.monotonic()
        responses = transport.send(apns_requests(pushsim.apns_url(), bearer, 2))
        took = time.monotonic() - started
    assert [r.status for r in responses] == [200, 200]
    assert 0.6 <= took < 1.5
    assert counted.waits <= 20, counted.waits


def test_a_refused_connection_is_a_connect_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Http2Transport(connect_timeout=1) as transport:
        [response] = transport.send([Request(url=f"http://127.0.0.1:{port}/3/device/00", headers=[], body=b"{}")])
    assert response.error_kind == "connect" and not response.maybe_sent


def test_handles_are_reused_across_methods(pushsim, bearer):
    base = pushsim.apns_url()
    with Http2Transport(max_connections_per_host=1, max_streams_per_connection=1) as transport:
        answers = [
            transport.send([Request(url=f"{base}/3/device/{'ab' * 32}", headers=[], method=method)])[0].status
            for method in ("DELETE", "GET", "PUT")
        ]
        [post] = transport.send(apns_requests(base, bearer, 1))
    assert answers == [405, 405, 405]
    assert post.status == 200


def test_an_idle_connection_closed_by_goaway_is_replaced_by_a_new_one(pushsim, bearer):
    pushsim.state.faults.idle_timeout_s = 0.2
    with Http2Transport(ca_bundle=pushsim.ca_path, max_connections_per_host=1) as transport:
        first = transport.send(apns_requests(pushsim.apns_url(tls=True), bearer, 5, prefix="d"))
        time.sleep(0.5)  # the simulator says GOAWAY IdleTimeout meanwhile
        second = transport.send(apns_requests(pushsim.apns_url(tls=True), bearer, 5, prefix="e"))
    assert [r.status for r in first + second] == [200] * 10
    assert pushsim.state.connections == 2


def test_without_all_headers_an_error_still_carries_its_retry_after(pushsim):
    pushsim.state.faults.rate_503 = 1.0
    pushsim.state.faults.retry_after = 4  # FCM sends Retry-After (APNs does not)
    access = pushsim.state.issue_access_token(PROJECT_ID)
    request = Request(
        url=f"{pushsim.fcm_url(tls=True)}/v1/projects/{PROJECT_ID}/messages:send",
        headers=[f"authorization: Bearer {access}", "content-type: application/json"],
        body=b'{"message":{"token":"' + b"f" * 40 + b'"}}',
    )
    with Http2Transport(ca_bundle=pushsim.ca_path) as transport:
        [response] = transport.send([request])
    assert response.status == 503
    assert response.headers == {"content-type": "application/json; charset=UTF-8", "retry-after": "4"}
