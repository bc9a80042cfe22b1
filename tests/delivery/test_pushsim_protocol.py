"""The push simulator keeps to Apple's and Google's protocols where a client could tell the difference.

These tests speak HTTP/2 frame by frame (the ``h2`` state machine over a plain socket), so
they see what a client library sees: which frame ends a stream, what a connection without
ALPN gets, which headers an answer carries.
"""

import json
import socket
import ssl
import time
import uuid

import h2.config
import h2.connection
import h2.events
import httpx
import jwt
import pytest

from tests.fakes.pushsim import BUNDLE_ID, KEY_ID, PROJECT_ID, TEAM_ID

DEVICE = "0e" * 32


class RawH2:
    """A minimal HTTP/2 client: sends requests, records every event per stream."""

    def __init__(self, host: str, port: int, *, tls_context: ssl.SSLContext | None = None):
        sock = socket.create_connection((host, port), timeout=5)
        self.sock = tls_context.wrap_socket(sock, server_hostname="localhost") if tls_context else sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())
        self.events: dict[int, list] = {}
        self.terminated = False

    def request(self, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> int:
        stream_id = self.conn.get_next_available_stream_id()
        pseudo = [(":method", "POST"), (":scheme", "https"), (":path", path), (":authority", "localhost")]
        self.conn.send_headers(stream_id, pseudo + headers, end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        self.events[stream_id] = []
        return stream_id

    def wait(self, stream_ids, timeout: float = 5.0) -> None:
        """Read until every stream in ``stream_ids`` has ended (or the connection is closed)."""
        deadline = time.monotonic() + timeout
        pending = set(stream_ids)
        while pending and not self.terminated and time.monotonic() < deadline:
            data = self.sock.recv(65536)
            if not data:
                self.terminated = True
                break
            for event in self.conn.receive_data(data):
                stream_id = getattr(event, "stream_id", None)
                if stream_id in self.events:
                    self.events[stream_id].append(event)
                if isinstance(event, h2.events.StreamEnded):
                    pending.discard(event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.terminated = True
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.sock.sendall(self.conn.data_to_send())

    def answer(self, stream_id: int) -> tuple[int, dict[str, str], bytes]:
        headers: dict[str, str] = {}
        body = b""
        for event in self.events[stream_id]:
            if isinstance(event, h2.events.ResponseReceived):
                headers = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
        return int(headers.get(":status", 0)), headers, body

    def close(self) -> None:
        self.sock.close()


def bearer(private_key, *, iss=TEAM_ID, kid=KEY_ID):
    return jwt.encode({"iss": iss, "iat": int(time.time())}, private_key, "ES256", {"kid": kid})


def apns_headers(token: str, *, topic: str = BUNDLE_ID, push_type: str = "alert", extra=()) -> list:
    headers = [("apns-topic", topic), ("apns-push-type", push_type), ("apns-id", str(uuid.uuid4()))]
    if token:
        headers.append(("authorization", f"bearer {token}"))
    return headers + list(extra)


ALERT = b'{"aps":{"alert":"hi"}}'


@pytest.fixture
def h2c(pushsim):
    port = int(pushsim.apns_url().rsplit(":", 1)[1])
    client = RawH2("127.0.0.1", port)
    yield client
    client.close()


def post(client: RawH2, headers, body=ALERT, device=DEVICE):
    stream_id = client.request(f"/3/device/{device}", headers, body)
    client.wait([stream_id])
    return client.answer(stream_id)


# --- gap 1: an error answer ends its stream on the DATA frame that carries the body ----------------


def test_an_error_answer_ends_the_stream_on_the_frame_carrying_its_body(pushsim, h2c, apns_credentials):
    token = bearer(apns_credentials.private_key_pem)
    pushsim.state.add_device(token="1a" * 32, platform="ios", state="unregistered")
    stream_id = h2c.request("/3/device/" + "1a" * 32, apns_headers(token), ALERT)
    h2c.wait([stream_id])
    data_frames = [e for e in h2c.events[stream_id] if isinstance(e, h2.events.DataReceived)]
    assert len(data_frames) == 1, "one DATA frame: the JSON body, with END_STREAM"
    assert json.loads(data_frames[0].data)["reason"] == "Unregistered"
    assert data_frames[0].stream_ended is not None


def test_every_data_frame_of_many_error_answers_is_a_whole_json_body(pushsim, h2c, apns_credentials):
    token = bearer(apns_credentials.private_key_pem)
    streams = [
        h2c.request(f"/3/device/{'zz' if i % 2 else '0d'}{i:062x}", apns_headers(token), ALERT) for i in range(20)
    ]
    h2c.wait(streams)
    for stream_id in streams:
        status, _, _ = h2c.answer(stream_id)
        frames = [e.data for e in h2c.events[stream_id] if isinstance(e, h2.events.DataReceived)]
        assert [json.loads(data)["reason"] for data in frames] == (["BadDeviceToken"] if status == 400 else [])


# --- gap 2: TLS without ALPN still speaks HTTP/2 when the client sends its preface ------------------


def test_tls_without_alpn_accepts_the_http2_preface(pushsim, apns_credentials):
    context = ssl.create_default_context(cafile=pushsim.ca_path)  # no ALPN offered
    port = int(pushsim.apns_url(tls=True).rsplit(":", 1)[1])
    client = RawH2("127.0.0.1", port, tls_context=context)
    try:
        assert client.sock.selected_alpn_protocol() is None
        status, headers, _ = post(client, apns_headers(bearer(apns_credentials.private_key_pem)))
    finally:
        client.close()
    assert status == 200 and headers["apns-id"]
    assert pushsim.state.count(DEVICE) == 1


def test_tls_without_alpn_still_serves_http1_requests(pushsim):
    context = ssl.create_default_context(cafile=pushsim.ca_path)
    port = int(pushsim.apns_url(tls=True).rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"GET /control/state HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200")


# --- gap 3: push types that need a topic suffix get refused without it ------------------------------


@pytest.mark.parametrize(
    ("push_type", "topic", "expected"),
    [
        ("voip", BUNDLE_ID, (400, "DeviceTokenNotForTopic")),
        ("liveactivity", BUNDLE_ID, (400, "DeviceTokenNotForTopic")),
        ("complication", BUNDLE_ID, (400, "DeviceTokenNotForTopic")),
        ("fileprovider", BUNDLE_ID, (400, "DeviceTokenNotForTopic")),
        ("alert", BUNDLE_ID + ".voip", (400, "DeviceTokenNotForTopic")),
        ("voip", BUNDLE_ID + ".push-type.liveactivity", (400, "DeviceTokenNotForTopic")),
        ("voip", "com.someone.else.voip", (400, "TopicDisallowed")),
        ("voip", BUNDLE_ID + ".voip", (200, "")),
        ("liveactivity", BUNDLE_ID + ".push-type.liveactivity", (200, "")),
        ("complication", BUNDLE_ID + ".complication", (200, "")),
        ("fileprovider", BUNDLE_ID + ".pushkit.fileprovider", (200, "")),
    ],
)
def test_a_push_type_is_accepted_only_on_its_own_topic(pushsim, h2c, apns_credentials, push_type, topic, expected):
    token = bearer(apns_credentials.private_key_pem)
    body = b'{"aps":{"content-state":{},"event":"update","timestamp":1}}' if push_type == "liveactivity" else ALERT
    status, _, answer = post(h2c, apns_headers(token, topic=topic, push_type=push_type), body)
    assert (status, json.loads(answer)["reason"] if answer else "") == expected


# --- gap 4: APNs answers 429 and 503 without Retry-After; FCM keeps it --------------------------------


@pytest.mark.parametrize(("status", "reason"), [(429, "TooManyRequests"), (503, "ServiceUnavailable")])
def test_apns_throttling_and_unavailability_carry_no_retry_after(pushsim, h2c, apns_credentials, status, reason):
    pushsim.state.faults.retry_after = 7
    pushsim.state.fail_token(token=DEVICE, failures=[status])
    answer_status, headers, body = post(h2c, apns_headers(bearer(apns_credentials.private_key_pem)))
    assert (answer_status, json.loads(body)["reason"]) == (status, reason)
    assert "retry-after" not in headers


@pytest.mark.parametrize(("status", "code"), [(429, "QUOTA_EXCEEDED"), (503, "UNAVAILABLE")])
def test_fcm_throttling_and_unavailability_carry_retry_after(pushsim, status, code):
    pushsim.state.faults.retry_after = 7
    pushsim.state.fail_token(token="f" * 40, failures=[status])
    access = pushsim.state.issue_access_token(PROJECT_ID)
    url = pushsim.fcm_url() + f"/v1/projects/{PROJECT_ID}/messages:send"
    with httpx.Client(http1=False, http2=True, headers={"authorization": f"Bearer {access}"}) as client:
        answer = client.post(url, json={"message": {"token": "f" * 40}})
    assert answer.status_code == status
    assert answer.json()["error"]["details"][0]["errorCode"] == code
    assert answer.headers["retry-after"] == "7"


# --- gap 8: authentication comes before injected faults; reset returns to the start-up state ---------


@pytest.mark.parametrize("fault", ["rate_429", "rate_503", "rate_500"])
def test_a_bad_provider_token_is_refused_before_any_injected_fault(pushsim, h2c, fault):
    setattr(pushsim.state.faults, fault, 1.0)
    status, _, body = post(h2c, apns_headers("not.a.jwt"))
    assert (status, json.loads(body)["reason"]) == (403, "InvalidProviderToken")
    status, _, body = post(h2c, apns_headers(""))
    assert (status, json.loads(body)["reason"]) == (403, "MissingProviderToken")


def test_a_forced_failure_waits_for_a_valid_provider_token(pushsim, h2c, apns_credentials):
    pushsim.state.fail_token(token=DEVICE, failures=[429])
    status, _, body = post(h2c, apns_headers("not.a.jwt"))
    assert (status, json.loads(body)["reason"]) == (403, "InvalidProviderToken")
    status, _, body = post(h2c, apns_headers(bearer(apns_credentials.private_key_pem)))
    assert (status, json.loads(body)["reason"]) == (429, "TooManyRequests")


def test_fcm_refuses_bad_credentials_before_any_injected_fault(pushsim):
    pushsim.state.faults.rate_503 = 1.0
    url = pushsim.fcm_url() + f"/v1/projects/{PROJECT_ID}/messages:send"
    with httpx.Client(http1=False, http2=True, headers={"authorization": "Bearer ya29.nothing"}) as client:
        answer = client.post(url, json={"message": {"token": "f" * 40}})
    assert (answer.status_code, answer.json()["error"]["status"]) == (401, "UNAUTHENTICATED")


def test_reset_returns_to_the_start_up_faults_and_tokens(apns_credentials):
    from delivery.pushsim import PushSimulator
    from tests.fakes.pushsim import trust_apns

    sim = PushSimulator()
    sim.state.faults.update({"rate_503": 0.25, "retry_after": 9})
    sim.state.add_device(token="3c" * 32, platform="ios", state="unregistered")
    sim.start()
    try:
        trust_apns(sim, apns_credentials)
        sim.state.add_device(token="4d" * 32, platform="ios", state="expired")
        sim.state.faults.rate_503 = 1.0
        with httpx.Client(base_url=sim.url()) as control:
            assert control.post("/control/reset").status_code == 200
            state = control.get("/control/state").json()
        assert (state["faults"]["rate_503"], state["faults"]["retry_after"], state["devices"]) == (0.25, 9, 1)
        assert sim.state.device("3c" * 32).state == "unregistered"
        assert sim.state.device("4d" * 32) is None
        assert state["apns_keys"] == [KEY_ID]
    finally:
        sim.stop()


# --- gap 5: FCM checks the message's documented field formats -----------------------------------


def fcm_send(pushsim, request: dict) -> httpx.Response:
    access = pushsim.state.issue_access_token(PROJECT_ID)
    url = pushsim.fcm_url() + f"/v1/projects/{PROJECT_ID}/messages:send"
    with httpx.Client(http1=False, http2=True, headers={"authorization": f"Bearer {access}"}) as client:
        return client.post(url, json=request)


FCM_TOKEN = "fcm-token-" + "x" * 40


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"condition": "'a' in topics &&"}, "message.condition"),
        ({"condition": "'a' in topics && 'b' in"}, "message.condition"),
        ({"condition": "('a' in topics"}, "message.condition"),
        ({"condition": "a in topics"}, "message.condition"),
        ({"condition": " || ".join(f"'t{i}' in topics" for i in range(6))}, "message.condition"),
        ({"token": FCM_TOKEN, "android": {"notification": {"color": "red"}}}, "message.android.notification.color"),
        ({"token": FCM_TOKEN, "android": {"notification": {"color": "#12345"}}}, "message.android.notification.color"),
        ({"token": FCM_TOKEN, "android": {"ttl": "-1s"}}, "message.android.ttl"),
        ({"token": FCM_TOKEN, "android": {"ttl": "3600"}}, "message.android.ttl"),
        ({"token": FCM_TOKEN, "android": {"priority": "urgent"}}, "message.android.priority"),
        (
            {"token": FCM_TOKEN, "android": {"notification": {"notification_priority": "PRIORITY_URGENT"}}},
            "message.android.notification.notification_priority",
        ),
        (
            {"token": FCM_TOKEN, "android": {"notification": {"visibility": "HIDDEN"}}},
            "message.android.notification.visibility",
        ),
        (
            {"token": FCM_TOKEN, "android": {"notification": {"vibrate_timings": ["1 second"]}}},
            "message.android.notification.vibrate_timings[0]",
        ),
        (
            {"token": FCM_TOKEN, "android": {"notification": {"event_time": "yesterday"}}},
            "message.android.notification.event_time",
        ),
        ({"token": FCM_TOKEN, "data": {"google.key": "v"}}, "message.data[0].key"),
        ({"token": FCM_TOKEN, "data": {"gcm_x": "v"}}, "message.data[0].key"),
        ({"token": FCM_TOKEN, "data": {"ok": "v", "from": "v"}}, "message.data[1].key"),
        ({"token": FCM_TOKEN, "android": {"data": {"message_type": "v"}}}, "message.android.data[0].key"),
    ],
)
def test_fcm_refuses_malformed_fields_as_invalid_argument(pushsim, message, field):
    answer = fcm_send(pushsim, {"message": message})
    error = answer.json()["error"]
    assert (answer.status_code, error["status"]) == (400, "INVALID_ARGUMENT")
    violations = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert violations[0]["fieldViolations"][0]["field"] == field
    assert pushsim.state.snapshot_counts() == {}


@pytest.mark.parametrize(
    "message",
    [
        {"condition": "'a' in topics && ('b' in topics || 'c' in topics)"},
        {"condition": "!('a' in topics) && \"b_c-d.e~f%20\" in topics"},
        {"topic": "news"},
        {
            "token": FCM_TOKEN,
            "android": {
                "priority": "HIGH",
                "ttl": "0s",
                "notification": {
                    "color": "#A1b2C3",
                    "notification_priority": "PRIORITY_MAX",
                    "visibility": "PUBLIC",
                    "vibrate_timings": ["0.5s", "1s"],
                    "event_time": "2024-01-01T00:00:00.5Z",
                    "proxy": "DENY",
                },
            },
            "data": {"goo": "v", "fromage": "v", "gc": "v"},
        },
    ],
)
def test_fcm_accepts_well_formed_fields(pushsim, message):
    answer = fcm_send(pushsim, {"message": message})
    assert answer.status_code == 200, answer.text


# --- gap 6: APNs refuses a body that is not JSON and a background push at priority 10 ---------------


@pytest.mark.parametrize("body", [b"hello", b'{"aps":', b"[1, 2]", b'"aps"'])
def test_apns_refuses_a_payload_that_is_not_a_json_object(pushsim, h2c, apns_credentials, body):
    status, _, answer = post(h2c, apns_headers(bearer(apns_credentials.private_key_pem)), body)
    assert (status, json.loads(answer)["reason"]) == (400, "BadPayload")
    assert pushsim.state.count(DEVICE) == 0


@pytest.mark.parametrize(
    ("push_type", "body"),
    [("background", b'{"aps":{"content-available":1}}'), ("alert", b'{"aps":{"content-available":1},"k":"v"}')],
)
def test_apns_refuses_a_background_push_at_priority_10(pushsim, h2c, apns_credentials, push_type, body):
    token = bearer(apns_credentials.private_key_pem)
    headers = apns_headers(token, push_type=push_type, extra=[("apns-priority", "10")])
    status, _, answer = post(h2c, headers, body)
    assert (status, json.loads(answer)["reason"]) == (400, "BadPriority")
    headers = apns_headers(token, push_type=push_type, extra=[("apns-priority", "5")])
    assert post(h2c, headers, body)[0] == 200


def test_apns_accepts_an_alert_with_content_available_at_priority_10(pushsim, h2c, apns_credentials):
    headers = apns_headers(bearer(apns_credentials.private_key_pem), extra=[("apns-priority", "10")])
    body = b'{"aps":{"alert":{"title":"t"},"content-available":1}}'
    assert post(h2c, headers, body)[0] == 200


# --- gap 7: FCM's error bodies, word for word ---------------------------------------------------


def test_an_unknown_nested_field_is_reported_at_its_full_path(pushsim):
    answer = fcm_send(pushsim, {"message": {"token": FCM_TOKEN, "notification": {"titel": "x"}}})
    message = "Invalid JSON payload received. Unknown name \"titel\" at 'message.notification': Cannot find field."
    assert answer.json() == {
        "error": {
            "code": 400,
            "message": message,
            "status": "INVALID_ARGUMENT",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "message.notification", "description": message}],
                }
            ],
        }
    }


def test_an_unknown_top_level_field_names_no_path(pushsim):
    answer = fcm_send(pushsim, {"message": {"token": FCM_TOKEN}, "mesage": {}})
    message = 'Invalid JSON payload received. Unknown name "mesage": Cannot find field.'
    assert answer.json()["error"]["message"] == message
    assert answer.json()["error"]["details"] == [
        {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"description": message}]}
    ]


def test_an_invalid_registration_token_carries_only_the_fcm_error_detail(pushsim):
    answer = fcm_send(pushsim, {"message": {"token": "short"}})
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "code": 400,
            "message": "The registration token is not a valid FCM registration token",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}
            ],
        }
    }


# --- injected failures: refused when their provider could not answer them; never fatal -----------


@pytest.mark.parametrize(
    ("token", "failure", "named"),
    [
        (FCM_TOKEN, (410, "Unregistered"), "'Unregistered'"),  # an APNs reason for an FCM token
        (FCM_TOKEN, (400, "NO_SUCH_CODE"), "'NO_SUCH_CODE'"),
        (FCM_TOKEN, (410, "UNREGISTERED"), "'UNREGISTERED'"),  # FCM answers it with 404
        (DEVICE, (400, "INVALID_ARGUMENT"), "'INVALID_ARGUMENT'"),  # an FCM code for an APNs token
        (DEVICE, 410, "410"),  # a bare status has no usual reason
    ],
)
def test_a_failure_its_provider_cannot_answer_is_refused_when_injected(pushsim, token, failure, named):
    with pytest.raises(ValueError, match=named):
        pushsim.state.fail_token(token=token, failures=[503, failure])
    assert pushsim.state.take_forced_failure(token) == (0, "")


def test_the_token_s_platform_decides_which_failures_it_takes(pushsim):
    pushsim.state.add_device(token=DEVICE, platform="android")
    with pytest.raises(ValueError, match="'Unregistered'"):
        pushsim.state.fail_token(token=DEVICE, failures=[(410, "Unregistered")])
    pushsim.state.fail_token(token=DEVICE, failures=[(404, "UNREGISTERED")])
    assert pushsim.state.take_forced_failure(DEVICE) == (404, "UNREGISTERED")


def test_failures_are_injected_over_the_control_endpoint_which_refuses_an_unknown_code(pushsim):
    with httpx.Client(base_url=pushsim.url()) as control:
        refused = control.post("/control/fail-token", json={"token": FCM_TOKEN, "failures": [[410, "Unregistered"]]})
        injected = control.post(
            "/control/fail-token", json={"token": FCM_TOKEN, "failures": [[404, "UNREGISTERED"], 503]}
        )
    assert refused.status_code == 400 and "'Unregistered'" in refused.json()["error"]
    assert injected.status_code == 200
    answers = [fcm_send(pushsim, {"message": {"token": FCM_TOKEN}}) for _ in range(3)]
    assert [a.status_code for a in answers] == [404, 503, 200]
    assert answers[0].json()["error"]["details"][0]["errorCode"] == "UNREGISTERED"


def test_an_apns_reason_sent_through_fcm_answers_a_named_invalid_argument_and_the_connection_serves_on(pushsim):
    # An APNs reason injected for an APNs-shaped token reaches FCM when that token is sent there.
    pushsim.state.fail_token(token=DEVICE, failures=[(410, "Unregistered")])
    access = pushsim.state.issue_access_token(PROJECT_ID)
    headers = [("authorization", f"Bearer {access}"), ("content-type", "application/json")]
    path = f"/v1/projects/{PROJECT_ID}/messages:send"
    client = RawH2("127.0.0.1", int(pushsim.fcm_url().rsplit(":", 1)[1]))
    try:
        faulty = client.request(path, headers, json.dumps({"message": {"token": DEVICE}}).encode())
        fine = client.request(path, headers, json.dumps({"message": {"token": FCM_TOKEN}}).encode())
        client.wait([faulty, fine])
        again = client.request(path, headers, json.dumps({"message": {"token": DEVICE}}).encode())
        client.wait([again])
    finally:
        client.close()
    status, _, body = client.answer(faulty)
    error = json.loads(body)["error"]
    # A client's error, not a server's: no client retries it, so the test sees the mistake.
    assert (status, error["status"]) == (400, "INVALID_ARGUMENT")
    assert "'Unregistered'" in error["message"] and "APNs reason" in error["message"]
    assert {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"} in (
        error["details"]
    )
    assert error["details"][0]["fieldViolations"][0]["field"] == "message.token"
    assert client.answer(fine)[0] == 200 and not client.terminated
    assert client.answer(again)[0] == 200  # the failure is used up, as any injected one
    assert pushsim.state.count(FCM_TOKEN) == 1 and pushsim.state.count(DEVICE) == 1
