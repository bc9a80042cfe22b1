"""The push simulator survives what a broken or hostile client sends, and answers it as APNs and FCM would.

Every test talks to a real simulator on loopback: raw sockets for HTTP/1.1 framing, the ``h2``
state machine with its own checks off (so it sends what a broken client sends) for HTTP/2, and
httpx where a well-behaved client will do. After each, the simulator still serves.
"""

import json
import logging
import socket
import time
from collections import defaultdict

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from delivery.pushsim import PushSimulator
from delivery.pushsim.state import Received
from delivery.pushsim.trust import trust_loader
from tests.fakes.pushsim import BUNDLE_ID, KEY_ID, PROJECT_ID, TEAM_ID, trust_apns

DEVICE = "0c" * 32
FCM_TOKEN = "fcm-token-" + "h" * 40
ALERT = b'{"aps":{"alert":"hi"}}'


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def bearer(private_key, *, kid=KEY_ID):
    return jwt.encode({"iss": TEAM_ID, "iat": int(time.time())}, private_key, "ES256", {"kid": kid})


class H2Client:
    """An HTTP/2 client that sends what it is told, well formed or not (h2's own checks off), and
    keeps every event per stream."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        config = h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.flush()
        self.events: dict[int, list] = defaultdict(list)
        self.connection_events: list = []
        self.terminated = False

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def request(self, headers: list[tuple[str, str]], body: bytes = b"", *, end: bool = True) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, headers, end_stream=end and not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=end)
        self.flush()
        return stream_id

    def read(self, until, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and not self.terminated and time.monotonic() < deadline:
            data = self.sock.recv(65536)
            if not data:
                self.terminated = True
                break
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.terminated = True
                stream_id = getattr(event, "stream_id", 0)
                (self.events[stream_id] if stream_id else self.connection_events).append(event)
            self.flush()

    def ended(self, stream_id: int) -> bool:
        return any(isinstance(e, h2.events.StreamEnded | h2.events.StreamReset) for e in self.events[stream_id])

    def wait(self, *stream_ids: int) -> None:
        self.read(lambda: all(self.ended(s) for s in stream_ids))

    def answer(self, stream_id: int) -> tuple[int, str]:
        """The status and APNs reason (or "") of a stream's answer."""
        headers = next(dict(e.headers) for e in self.events[stream_id] if isinstance(e, h2.events.ResponseReceived))
        body = b"".join(e.data for e in self.events[stream_id] if isinstance(e, h2.events.DataReceived))
        return int(headers[":status"]), json.loads(body)["reason"] if body else ""

    def reset_code(self, stream_id: int):
        return next((e.error_code for e in self.events[stream_id] if isinstance(e, h2.events.StreamReset)), None)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def client(pushsim):
    client = H2Client(port_of(pushsim.apns_url()))
    yield client
    client.close()


def apns_headers(token: str, *, device: str = DEVICE) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", f"/3/device/{device}"),
        (":authority", "127.0.0.1"),
        ("apns-topic", BUNDLE_ID),
        ("apns-push-type", "alert"),
        ("authorization", f"bearer {token}"),
    ]


def apns_send(pushsim, apns_credentials, body: bytes = ALERT, **headers) -> tuple[int, str]:
    """One APNs push on a connection of its own: its status and reason."""
    sent = {"authorization": f"bearer {bearer(apns_credentials.private_key_pem)}", "apns-topic": BUNDLE_ID}
    sent.update(headers)
    with httpx.Client(http1=False, http2=True) as http:
        answer = http.post(pushsim.apns_url() + f"/3/device/{DEVICE}", content=body, headers=sent)
    return answer.status_code, answer.json()["reason"] if answer.content else ""


def fcm_send(pushsim, body: bytes | dict, *, query: str = "") -> httpx.Response:
    access = pushsim.state.issue_access_token(PROJECT_ID)
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    url = pushsim.fcm_url() + f"/v1/projects/{PROJECT_ID}/messages:send{query}"
    headers = {"authorization": f"Bearer {access}", "content-type": "application/json"}
    with httpx.Client(http1=False, http2=True) as http:
        return http.post(url, content=content, headers=headers)


def fcm_error(answer: httpx.Response) -> tuple[int, str, str, str]:
    """Status, RPC status, message and the field its BadRequest detail names."""
    error = answer.json()["error"]
    violations = [d for d in error.get("details", []) if d["@type"].endswith("google.rpc.BadRequest")]
    field = violations[0]["fieldViolations"][0].get("field", "") if violations else ""
    return answer.status_code, error["status"], error["message"], field


def still_serves(pushsim, apns_credentials) -> bool:
    """A new connection gets a push accepted and the page of phones."""
    page = httpx.get(pushsim.url() + "/")
    return apns_send(pushsim, apns_credentials) == (200, "") and page.status_code == 200


# --- HTTP/1.1 framing ------------------------------------------------------------------------------


def h1_exchange(pushsim, request: bytes) -> bytes:
    """Send raw bytes over HTTP/1.1; what comes back until the simulator closes the connection."""
    with socket.create_connection(("127.0.0.1", port_of(pushsim.url())), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:  # closed with some of the request unread: the answer came first
            pass
    return answer


@pytest.mark.parametrize("length", [b"-1", b"-60", b"abc", b"0_2", b"+2", b"2, 2", "\u0662".encode()])
def test_http1_refuses_a_content_length_that_is_not_digits_and_closes(pushsim, apns_credentials, length):
    # What follows the head is another request; with a negative length it was read again and again.
    request = b"POST /control/faults HTTP/1.1\r\nhost: x\r\ncontent-length: " + length + b"\r\n\r\n{}"
    answer = h1_exchange(pushsim, request + b"GET /control/counts HTTP/1.1\r\nhost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.count(b"HTTP/1.1 ") == 1
    assert still_serves(pushsim, apns_credentials)


def test_http1_refuses_two_different_content_lengths(pushsim):
    answer = h1_exchange(pushsim, b"POST /control/reset HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 2\r\n\r\n{}")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /control/counts HTTP/1.1\r\nx-filler: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /control/counts HTTP/1.1\r\nx-filler: " + b"a" * 20_000,  # and no end of head in sight
        b"\x16\x03\x01\x00\xa5" + b"\xaa" * 20_000,  # not HTTP at all
    ],
)
def test_http1_refuses_a_head_over_16_kb_with_431_and_closes(pushsim, apns_credentials, request_bytes):
    answer = h1_exchange(pushsim, request_bytes)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert still_serves(pushsim, apns_credentials)


def test_http1_refuses_a_body_over_1_mb_with_413_before_reading_it(pushsim):
    answer = h1_exchange(pushsim, b"POST /control/faults HTTP/1.1\r\ncontent-length: 1048577\r\n\r\n{")
    assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n") or answer.startswith(
        b"HTTP/1.1 413 Request Entity Too Large\r\n"  # the phrase before Python 3.13
    )
    answer = h1_exchange(pushsim, b"POST /control/faults HTTP/1.1\r\ncontent-length: " + b"9" * 5000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /\r\n\r\n",  # no version
        b"GET / HTTP/1.1\r\nhost : x\r\n\r\n",  # space before the colon
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\n folded\r\n\r\n",
    ],
)
def test_http1_refuses_a_malformed_head_with_400(pushsim, request_bytes):
    assert h1_exchange(pushsim, request_bytes).startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_http1_refuses_a_chunked_body_it_cannot_read(pushsim):
    request = b"POST /token HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    assert h1_exchange(pushsim, request).startswith(b"HTTP/1.1 501 Not Implemented\r\n")


def test_http1_status_lines_carry_the_real_reason_phrases(pushsim):
    pushsim.state.fail_token(token=FCM_TOKEN, failures=[429])
    access = pushsim.state.issue_access_token(PROJECT_ID)
    with httpx.Client(http1=True, http2=False) as http:
        not_allowed = http.put(pushsim.url() + "/")  # APNs answers anything else, and 405 for a PUT
        throttled = http.post(
            pushsim.fcm_url() + f"/v1/projects/{PROJECT_ID}/messages:send",
            json={"message": {"token": FCM_TOKEN}},
            headers={"authorization": f"Bearer {access}"},
        )
        head = http.head(pushsim.url() + "/control/counts")
    assert (not_allowed.status_code, not_allowed.reason_phrase) == (405, "Method Not Allowed")
    assert (throttled.status_code, throttled.reason_phrase) == (429, "Too Many Requests")
    assert head.content == b""  # HEAD: the length of the answer, not the answer


def test_http1_connections_idle_longer_than_the_idle_timeout_are_closed(pushsim):
    pushsim.state.faults.idle_timeout_s = 0.2
    port = port_of(pushsim.url())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
        start = time.monotonic()
        assert silent.recv(100) == b""
        assert time.monotonic() - start < 3
    with socket.create_connection(("127.0.0.1", port), timeout=5) as stalled:
        stalled.sendall(b"GET /control/counts HTTP/1.1\r\nhost: x\r\n")  # and never the end of its head
        assert stalled.recv(100) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
        idle.sendall(b"GET /control/counts HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        while chunk := idle.recv(65536):  # the answer, then the close once idle
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")


# --- UTF-8, surrogates and JSON numbers ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        rb'{"aps":{"alert":{"title":"\ud800"}}}',  # a lone surrogate escape
        rb'{"aps":{"alert":{"title":"x\udc00"}}}',
        b'{"aps":{"alert":{"title":"\xed\xa0\x80"}}}',  # a surrogate encoded as UTF-8
        b'{"aps":{"alert":"\xff"}}',
        b'\xef\xbb\xbf{"aps":{"alert":"hi"}}',  # a byte order mark
        '{"aps":{"alert":"hi"}}'.encode("utf-16"),
        '{"aps":{"alert":"hi"}}'.encode("utf-16-le"),
        b'{"aps":{"alert":"hi"},"n":NaN}',
        b'{"aps":{"alert":"hi"},"n":-Infinity}',
        b'{"aps":{"alert":"hi"},"n":1e400}',
        b'{"aps":{"alert":1}}',
        b'{"aps":{"alert":["x"]}}',
        b'{"aps":{"alert":"hi"},"deep":' + b"[" * 2000 + b"]" * 2000 + b"}",
    ],
)
def test_apns_refuses_a_payload_that_is_not_strict_utf8_json_with_an_alert_of_its_form(pushsim, apns_credentials, body):
    assert apns_send(pushsim, apns_credentials, body) == (400, "BadPayload")
    assert pushsim.state.count(DEVICE) == 0
    assert still_serves(pushsim, apns_credentials)


def test_apns_takes_a_surrogate_pair_escape_and_a_null_alert(pushsim, apns_credentials):
    assert apns_send(pushsim, apns_credentials, rb'{"aps":{"alert":{"title":"\ud83d\ude00 party"}}}') == (200, "")
    assert apns_send(pushsim, apns_credentials, b'{"aps":{"alert":null,"badge":1}}') == (200, "")
    page = httpx.get(pushsim.url() + "/").text
    assert "\U0001f600 party" in page and ">2 notifications received ·" in page


def test_the_page_counts_one_notification_in_the_singular(pushsim, apns_credentials):
    assert apns_send(pushsim, apns_credentials) == (200, "")
    assert ">1 notification received ·" in httpx.get(pushsim.url() + "/").text


@pytest.mark.parametrize(
    "body",
    [
        b'{"message":{"token":"%s","notification":{"title":"\\udc00x"}}}' % FCM_TOKEN.encode(),
        b'{"message":{"token":"%s","notification":{"title":"\xed\xb0\x80x"}}}' % FCM_TOKEN.encode(),
        b'\xef\xbb\xbf{"message":{"token":"%s"}}' % FCM_TOKEN.encode(),
        b'{"message":{"token":"%s"},"validate_only":NaN}' % FCM_TOKEN.encode(),
        b'{"message":{"token":"%s","apns":{"payload":{"n":Infinity}}}}' % FCM_TOKEN.encode(),
        b'{"message":{"token":"%s","apns":{"payload":{"n":1e400}}}}' % FCM_TOKEN.encode(),
        b'{"message":' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"message":{"token":"%s","apns":{"payload":%s}}}' % (FCM_TOKEN.encode(), b'{"a":' * 200 + b"1" + b"}" * 200),
    ],
)
def test_fcm_refuses_a_body_that_is_not_strict_utf8_json_as_an_invalid_payload(pushsim, apns_credentials, body):
    status, rpc_status, message, _ = fcm_error(fcm_send(pushsim, body))
    assert (status, rpc_status) == (400, "INVALID_ARGUMENT")
    assert message.startswith("Invalid JSON payload received.")
    assert pushsim.state.snapshot_counts() == {}
    assert still_serves(pushsim, apns_credentials)


def test_the_page_and_received_list_survive_whatever_was_stored(pushsim):
    # Nothing that arrives can carry a lone surrogate any more; the page must not depend on it.
    pushsim.state.record(Received(id=0, platform="ios", token=DEVICE, received_at=time.time(), title="a\ud800b"))
    page = httpx.get(pushsim.url() + "/")
    received = httpx.get(pushsim.url() + "/control/received")
    assert page.status_code == 200 and "a?b" in page.text
    assert received.status_code == 200 and received.json()[0]["title"] == "a\ud800b"


def test_received_payloads_come_back_as_strict_json(pushsim, apns_credentials):
    # NaN once went in, and came out of /control/received as NaN: not JSON.
    assert apns_send(pushsim, apns_credentials, b'{"aps":{"alert":"hi"},"n":NaN}') == (400, "BadPayload")
    assert apns_send(pushsim, apns_credentials, b'{"aps":{"alert":"hi"},"big":1e308,"small":-1e-308}') == (200, "")
    text = httpx.get(pushsim.url() + "/control/received").text

    def refuse(name):
        raise AssertionError(f"{name} in /control/received")

    [item] = json.loads(text, parse_constant=refuse)
    assert item["payload"]["big"] == 1e308


# --- a failing handler answers its own stream alone ------------------------------------------------


def test_a_failing_handler_answers_500_on_its_stream_alone_and_logs_one_line(apns_credentials, tmp_path, caplog):
    # A trust file someone broke (a key without its team or PEM): loading it raises. The
    # simulator's own failure is APNs's 500 for that request, not a reset of the connection.
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"apns_keys": [{"key_id": "BROKEN0001"}], "service_accounts": []}))
    sim = PushSimulator()
    sim.state.trust_file_loader = trust_loader(sim.state, trust)
    sim.start()
    caplog.set_level(logging.ERROR, logger="delivery.pushsim")
    client = H2Client(port_of(sim.apns_url()))
    try:
        trust_apns(sim, apns_credentials)
        token = bearer(apns_credentials.private_key_pem)
        held = client.request(apns_headers(token), ALERT[:10], end=False)  # in flight throughout
        broken = client.request(apns_headers(bearer(apns_credentials.private_key_pem, kid="BROKEN0001")), ALERT)
        client.wait(broken)
        client.conn.send_data(held, ALERT[10:], end_stream=True)
        client.flush()
        after = client.request(apns_headers(token), ALERT)
        client.wait(held, after)
    finally:
        client.close()
        sim.stop()
    assert client.answer(broken) == (500, "InternalServerError")
    assert client.answer(held) == (200, "") and client.answer(after) == (200, "")
    assert not client.terminated
    [record] = [r for r in caplog.records if r.name == "delivery.pushsim"]
    assert "KeyError" in record.getMessage() and "\n" not in record.getMessage() and record.exc_info is None


# --- FCM: values of the wrong JSON form, conditions, sizes, the URL ------------------------------

_V1 = "type.googleapis.com/google.firebase.fcm.v1."


@pytest.mark.parametrize(
    ("request_body", "message", "field"),
    [
        (
            {"message": {"token": FCM_TOKEN, "android": "x"}},
            f"Invalid value at 'message.android' ({_V1}AndroidConfig), \"x\"",
            "message.android",
        ),
        (
            {"message": {"token": FCM_TOKEN, "android": [1]}},
            f"Invalid value at 'message.android' ({_V1}AndroidConfig), [1]",
            "message.android",
        ),
        (
            {"message": {"token": FCM_TOKEN, "notification": "hi"}},
            f"Invalid value at 'message.notification' ({_V1}Notification), \"hi\"",
            "message.notification",
        ),
        (
            {"message": {"token": FCM_TOKEN, "android": {"notification": "hi"}}},
            f"Invalid value at 'message.android.notification' ({_V1}AndroidNotification), \"hi\"",
            "message.android.notification",
        ),
        (
            {"message": {"token": FCM_TOKEN, "android": {"notification": {"visibility": [1]}}}},
            f"Invalid value at 'message.android.notification.visibility' ({_V1}AndroidNotification.Visibility), [1]",
            "message.android.notification.visibility",
        ),
        (
            {"message": {"token": FCM_TOKEN, "android": {"notification": {"vibrateTimings": "1s"}}}},
            "Invalid value at 'message.android.notification.vibrate_timings' "
            '(type.googleapis.com/google.protobuf.Duration), "1s"',
            "message.android.notification.vibrate_timings",
        ),
        ({"message": {"topic": True}}, "Invalid value at 'message.topic' (TYPE_STRING), true", "message.topic"),
        ({"message": {"topic": 123}}, "Invalid value at 'message.topic' (TYPE_STRING), 123", "message.topic"),
        ({"message": {"token": 12345}}, "Invalid value at 'message.token' (TYPE_STRING), 12345", "message.token"),
        (
            {"message": {"token": FCM_TOKEN, "apns": "x"}},
            f"Invalid value at 'message.apns' ({_V1}ApnsConfig), \"x\"",
            "message.apns",
        ),
        (
            {"message": {"token": FCM_TOKEN, "webpush": "x"}},
            f"Invalid value at 'message.webpush' ({_V1}WebpushConfig), \"x\"",
            "message.webpush",
        ),
        (
            {"message": {"token": FCM_TOKEN, "fcm_options": "x"}},
            f"Invalid value at 'message.fcm_options' ({_V1}FcmOptions), \"x\"",
            "message.fcm_options",
        ),
        (
            {"message": {"token": FCM_TOKEN, "apns": {"headers": {"apns-priority": 10}}}},
            "Invalid value at 'message.apns.headers[0].value' (TYPE_STRING), 10",
            "message.apns.headers[0].value",
        ),
        (
            {"message": {"token": FCM_TOKEN, "data": ["a"]}},
            f"Invalid value at 'message.data' ({_V1}Message.DataEntry), [\"a\"]",
            "message.data",
        ),
        (
            {"message": {"token": FCM_TOKEN}, "validate_only": "false"},
            "Invalid value at 'validate_only' (TYPE_BOOL), \"false\"",
            "validate_only",
        ),
        (
            {"message": []},
            f"Invalid value at 'message' ({_V1}Message), []",
            "message",
        ),
    ],
)
def test_fcm_refuses_a_value_of_the_wrong_json_form_naming_its_field(pushsim, request_body, message, field):
    assert fcm_error(fcm_send(pushsim, request_body)) == (400, "INVALID_ARGUMENT", message, field)
    assert pushsim.state.snapshot_counts() == {}


def test_fcm_validate_only_is_a_dry_run_only_when_true(pushsim):
    dry = fcm_send(pushsim, {"message": {"token": FCM_TOKEN}, "validateOnly": True})
    real = fcm_send(pushsim, {"message": {"token": FCM_TOKEN}, "validate_only": False})
    assert dry.json()["name"].endswith("/fake_message_id") and real.status_code == 200
    assert pushsim.state.count(FCM_TOKEN) == 1


@pytest.mark.parametrize(
    "condition",
    [
        "!" * 2000 + "'a' in topics",
        "(" * 1000 + "'a' in topics" + ")" * 1000,
        "!(" * 40 + "'a' in topics" + ")" * 40,
    ],
)
def test_fcm_refuses_a_condition_nested_too_deep(pushsim, apns_credentials, condition):
    answer = fcm_send(pushsim, {"message": {"condition": condition}})
    assert fcm_error(answer)[:3] == (400, "INVALID_ARGUMENT", "Invalid condition expression provided.")
    assert still_serves(pushsim, apns_credentials)


def test_fcm_takes_a_condition_nested_a_few_levels(pushsim):
    condition = "!(!('a' in topics) && (('b' in topics || 'c' in topics) && !!('d' in topics)))"
    assert fcm_send(pushsim, {"message": {"condition": condition}}).status_code == 200


def test_fcm_measures_the_size_limit_in_utf8_bytes(pushsim):
    # 1,000 "é" are 2,000 bytes, 1,000 "😀" 4,000: under 4,096 (their \u escapes would be 6,000 and 12,000).
    for text in ("é" * 1000, "\U0001f600" * 1000):
        assert fcm_send(pushsim, {"message": {"token": FCM_TOKEN, "data": {"k": text}}}).status_code == 200
    too_big = fcm_send(pushsim, {"message": {"token": FCM_TOKEN, "data": {"k": "\U0001f600" * 1030}}})
    assert fcm_error(too_big)[:3] == (400, "INVALID_ARGUMENT", "Message is too big.")


def test_fcm_measures_the_size_as_compact_json_as_the_content_check_does(pushsim):
    """220 data keys: 3,961 bytes compact (what Pushdesk's save check counts), 4,401 with a space
    after each ':' and ','. A message the check let through is not refused for the spaces."""
    data = {f"k{i:03}": f"{i:08}" for i in range(220)}
    compact = len(json.dumps(data, separators=(",", ":")))
    assert compact <= 4096 < len(json.dumps(data))
    assert fcm_send(pushsim, {"message": {"token": FCM_TOKEN, "data": data}}).status_code == 200


def test_fcm_send_takes_a_query_string(pushsim):
    assert fcm_send(pushsim, {"message": {"token": FCM_TOKEN}}, query="?alt=json").status_code == 200


# --- APNs headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("expiration", ["\u0661\u0662\u0663", "\u00b2", "-1", "1e3", ""])
def test_apns_takes_only_ascii_digits_as_an_expiration(pushsim, apns_credentials, expiration):
    answer = apns_send(pushsim, apns_credentials, **{"apns-expiration": expiration.encode()})
    assert answer == (400, "BadExpirationDate")


def test_apns_refuses_an_empty_push_type_and_takes_a_missing_one_as_alert(pushsim, apns_credentials):
    assert apns_send(pushsim, apns_credentials, **{"apns-push-type": ""}) == (400, "InvalidPushType")
    assert apns_send(pushsim, apns_credentials) == (200, "")
    assert pushsim.state.recent()[0]["push_type"] == "alert"


# --- HTTP/2 framing --------------------------------------------------------------------------------


def with_pseudo(*extra):
    return lambda headers: headers[:4] + list(extra) + headers[4:]


def with_fields(*extra):
    return lambda headers: headers + list(extra)


@pytest.mark.parametrize(
    "malform",
    [
        pytest.param(with_pseudo((":path", "/control/reset")), id="a second :path"),
        pytest.param(with_pseudo((":protocol", "websocket")), id="a pseudo-header requests do not have"),
        pytest.param(with_fields((":authority", "localhost")), id="a pseudo-header after the fields"),
        pytest.param(lambda headers: [h for h in headers if h[0] != ":path"], id="no :path"),
        pytest.param(lambda headers: [h for h in headers if h[0] != ":method"], id="no :method"),
        pytest.param(with_fields(("APNS-Priority", "10")), id="uppercase in a field name"),
        pytest.param(with_fields(("connection", "keep-alive")), id="connection"),
        pytest.param(with_fields(("transfer-encoding", "chunked")), id="transfer-encoding"),
        pytest.param(with_fields(("te", "gzip")), id="te other than trailers"),
        pytest.param(with_fields(("apns-collapse-id", " padded ")), id="a value with surrounding whitespace"),
        pytest.param(with_fields(("apns-collapse-id", "a\x00b")), id="a value with NUL"),
    ],
)
def test_a_malformed_request_has_its_stream_reset_and_the_connection_serves_on(
    pushsim, client, apns_credentials, malform
):
    pushsim.state.add_device(token="5e" * 32, platform="ios")
    token = bearer(apns_credentials.private_key_pem)
    malformed = client.request(malform(apns_headers(token)), ALERT)
    fine = client.request(apns_headers(token), ALERT)
    client.wait(malformed, fine)
    assert client.reset_code(malformed) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    assert client.answer(fine) == (200, "") and not client.terminated
    assert pushsim.state.count(DEVICE) == 1  # the malformed request was never processed
    assert pushsim.state.device("5e" * 32) is not None  # nor its second :path (/control/reset)


def test_a_body_stalled_on_a_closed_window_leaves_when_settings_open_it(pushsim, client, apns_credentials):
    # A client may open its streams' windows by SETTINGS (INITIAL_WINDOW_SIZE), not WINDOW_UPDATE.
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    client.flush()
    client.read(lambda: any(isinstance(e, h2.events.SettingsAcknowledged) for e in client.connection_events))
    token = bearer(apns_credentials.private_key_pem)
    stream = client.request(apns_headers(token, device="zz" * 32), ALERT)  # BadDeviceToken: a body
    client.read(lambda: any(isinstance(e, h2.events.ResponseReceived) for e in client.events[stream]))
    assert not any(isinstance(e, h2.events.DataReceived) for e in client.events[stream])
    client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65_535})
    client.flush()
    client.wait(stream)
    assert client.answer(stream) == (400, "BadDeviceToken")


def test_a_stream_over_the_concurrency_limit_alone_is_refused(pushsim, client, apns_credentials):
    client.read(lambda: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in client.connection_events))
    assert client.conn.remote_settings.max_concurrent_streams == 1000
    del client.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS]  # a client that ignores it
    token = bearer(apns_credentials.private_key_pem)
    held = [client.request(apns_headers(token), ALERT[:10], end=False) for _ in range(1000)]
    over = client.request(apns_headers(token), ALERT)
    client.wait(over)
    assert client.reset_code(over) == h2.errors.ErrorCodes.REFUSED_STREAM
    for stream in held[:3]:
        client.conn.send_data(stream, ALERT[10:], end_stream=True)
    client.flush()
    client.wait(*held[:3])
    assert [client.answer(stream) for stream in held[:3]] == [(200, "")] * 3
    assert not client.terminated and pushsim.state.count(DEVICE) == 3


# --- control requests ------------------------------------------------------------------------------


def public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


UNKNOWN_KEY_TYPE_PEM = "-----BEGIN PUBLIC KEY-----\nMA0wBQYDKgMEAwQAAQID\n-----END PUBLIC KEY-----\n"  # OID 1.2.3.4


def apns_key(**fields) -> dict:
    key = {"key_id": "KEY0000009", "team_id": TEAM_ID, "topics": [BUNDLE_ID]}
    key["public_key_pem"] = public_pem(ec.generate_private_key(ec.SECP256R1()))
    return {**key, **fields}


def service_account(**fields) -> dict:
    account = {"client_email": "x@p.iam.gserviceaccount.com", "private_key_id": "k1", "project_id": "p"}
    account["public_key_pem"] = public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return {**account, **fields}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/control/faults", b"[1]", ""),
        ("/control/faults", b"null", ""),
        ("/control/faults", b'{"retry_after":1e400}', ""),
        ("/control/faults", b"[" * 10_000 + b"]" * 10_000, ""),
        ("/control/faults", {"__dict__": {"rate_503": 1}}, "__dict__"),
        ("/control/faults", {"strict_tokens": "false"}, "strict_tokens"),
        ("/control/faults", {"rate_503": 1.5}, "rate_503"),
        ("/control/faults", {"latency_ms": -1}, "latency_ms"),
        ("/control/faults", {"retry_after": 2.5}, "retry_after"),
        ("/control/faults", {"goaway_after_streams": True}, "goaway_after_streams"),
        ("/control/faults", {"idle_timeout_s": "5"}, "idle_timeout_s"),
        ("/control/fail-token", b'{"token":"x","failures":[1e400]}', ""),
        ("/control/fail-token", {"token": FCM_TOKEN, "failures": [1.5]}, "failures"),
        ("/control/fail-token", {"token": FCM_TOKEN, "failures": [[404, "UNREGISTERED", 1]]}, "failures"),
        ("/control/fail-token", {"token": FCM_TOKEN, "failures": 503}, "failures"),
        ("/control/fail-token", {"token": 7, "failures": [503]}, "token"),
        ("/control/tokens", {"token": ["x"]}, "token"),
        ("/control/tokens", {"token": DEVICE, "state": "zombie"}, "state"),
        ("/control/tokens", {"token": DEVICE, "platform": "windows"}, "platform"),
        ("/control/apns-keys", apns_key(public_key_pem=UNKNOWN_KEY_TYPE_PEM), "public_key_pem"),
        ("/control/apns-keys", apns_key(public_key_pem="not a key"), "public_key_pem"),
        ("/control/apns-keys", apns_key(public_key_pem=service_account()["public_key_pem"]), "public_key_pem"),
        ("/control/apns-keys", apns_key(topics="com.x"), "topics"),
        ("/control/apns-keys", apns_key(environments="production"), "environments"),
        ("/control/apns-keys", apns_key(environments=["staging"]), "environments"),
        ("/control/apns-keys", apns_key(team_id=None), "team_id"),
        ("/control/service-accounts", service_account(public_key_pem=UNKNOWN_KEY_TYPE_PEM), "public_key_pem"),
        ("/control/service-accounts", service_account(public_key_pem=apns_key()["public_key_pem"]), "public_key_pem"),
        ("/control/service-accounts", service_account(project_id=1), "project_id"),
    ],
)
def test_a_control_request_it_cannot_take_is_refused_naming_its_field(pushsim, apns_credentials, path, body, field):
    before = httpx.get(pushsim.url() + "/control/state").json()
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(pushsim.url() + path, content=content)
    assert answer.status_code == 400
    assert answer.json()["field"] == field and answer.json()["error"]
    assert httpx.get(pushsim.url() + "/control/state").json() == before  # nothing changed
    assert pushsim.state.take_forced_failure(FCM_TOKEN) == (0, "") and pushsim.state.device(DEVICE) is None
    assert still_serves(pushsim, apns_credentials)


def test_faults_are_set_all_or_none(pushsim):
    with httpx.Client(base_url=pushsim.url()) as control:
        refused = control.post("/control/faults", json={"rate_503": 1, "bogus": 1})
        taken = control.post("/control/faults", json={"rate_503": 1, "strict_tokens": True, "latency_ms": 0})
    assert (refused.status_code, refused.json()["field"]) == (400, "bogus")
    assert taken.status_code == 200
    assert taken.json()["faults"]["rate_503"] == 1.0 and taken.json()["faults"]["strict_tokens"] is True


@pytest.mark.parametrize("limit", ["-1", "abc", "9" * 5000, "\u0661"])
def test_received_refuses_a_limit_that_is_not_a_whole_number(pushsim, limit):
    answer = httpx.get(pushsim.url() + "/control/received", params={"limit": limit})
    assert (answer.status_code, answer.json()["field"]) == (400, "limit")


@pytest.mark.parametrize("path", [f"/3/device/{DEVICE}", "/control/faults"])
def test_an_http2_body_over_1_mb_is_answered_413_at_once_and_the_rest_dropped(pushsim, client, apns_credentials, path):
    """The body is not kept past 1 MB: the answer comes before it ends, and its end is taken quietly."""
    token = bearer(apns_credentials.private_key_pem)
    stream = client.request([(k, path if k == ":path" else v) for k, v in apns_headers(token)], end=False)
    chunk = b"x" * 16_384
    sent = 0
    while not client.ended(stream) and sent < 3 << 20:
        if client.conn.local_flow_control_window(stream) < len(chunk):  # the simulator's WINDOW_UPDATE
            client.read(lambda: client.ended(stream) or client.conn.local_flow_control_window(stream) >= len(chunk))
            continue
        client.conn.send_data(stream, chunk)
        client.flush()
        sent += len(chunk)
    client.read(lambda: client.ended(stream))
    assert client.ended(stream) and sent < 3 << 20, sent
    status = next(
        int(dict(e.headers)[":status"]) for e in client.events[stream] if isinstance(e, h2.events.ResponseReceived)
    )
    body = b"".join(e.data for e in client.events[stream] if isinstance(e, h2.events.DataReceived))
    assert status == 413
    assert body == (b'{"reason":"PayloadTooLarge"}' if path.startswith("/3/") else b"Request Entity Too Large")
    rest = chunk[: client.conn.local_flow_control_window(stream)]
    client.conn.send_data(stream, rest, end_stream=True)  # the rest of it: dropped
    client.flush()
    fine = client.request(apns_headers(token), ALERT)
    client.wait(fine)
    assert client.answer(fine) == (200, "") and not client.terminated
    assert pushsim.state.count(DEVICE) == 1
    assert still_serves(pushsim, apns_credentials)
