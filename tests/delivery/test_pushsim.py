"""The push simulator refuses what APNs and FCM refuse, and is controlled and watched over HTTP."""

import io
import json
import re
import ssl
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from delivery.transport import Http2Transport, Request
from tests.fakes.pushsim import BUNDLE_ID, KEY_ID, TEAM_ID, make_apns_credentials, trust_apns

DEVICE = "0f" * 32


def bearer(private_key, *, iss=TEAM_ID, kid=KEY_ID, iat=None, alg="ES256"):
    return jwt.encode({"iss": iss, "iat": int(iat if iat is not None else time.time())}, private_key, alg, {"kid": kid})


def apns_post(base_url, token, *, device=DEVICE, topic=BUNDLE_ID, body=b'{"aps":{"alert":"hi"}}', extra=()):
    headers = [f"apns-topic: {topic}", "apns-push-type: alert", f"apns-id: {uuid.uuid4()}", *extra]
    if token is not None:
        headers.append(f"authorization: bearer {token}")
    return Request(url=f"{base_url}/3/device/{device}", headers=headers, body=body)


@pytest.fixture
def transport(pushsim):
    # Every header of each answer: these tests read what the simulator says, headers included.
    with Http2Transport(ca_bundle=pushsim.ca_path, max_connections_per_host=1, all_headers=True) as t:
        yield t


def reasons(responses):
    return [(r.status, json.loads(r.body)["reason"] if r.body else "") for r in responses]


def test_apns_refuses_bad_provider_tokens(pushsim, transport, apns_credentials):
    base = pushsim.apns_url(tls=True)
    key = apns_credentials.private_key_pem
    other_key = ec.generate_private_key(ec.SECP256R1())
    cases = [
        apns_post(base, None),
        apns_post(base, "not.a.jwt"),
        apns_post(base, bearer(other_key)),  # signed by another key
        apns_post(base, bearer(key, kid="NOSUCHKEY0")),
        apns_post(base, bearer(key, iat=time.time() - 3700)),
        apns_post(base, bearer(key, iss="OTHERTEAM0")),
    ]
    answers = [reasons(transport.send([r])) for r in cases]  # one at a time: a bad token binds nothing
    assert answers == [
        [(403, "MissingProviderToken")],
        [(403, "InvalidProviderToken")],
        [(403, "InvalidProviderToken")],
        [(403, "InvalidProviderToken")],
        [(403, "ExpiredProviderToken")],
        [(403, "InvalidProviderToken")],
    ]
    assert pushsim.state.snapshot_counts() == {}


def test_apns_refuses_wrong_topics_tokens_and_payloads(pushsim, transport, apns_credentials):
    base = pushsim.apns_url(tls=True)
    token = bearer(apns_credentials.private_key_pem)
    pushsim.state.add_device(token="1a" * 32, platform="ios", state="unregistered")
    responses = transport.send(
        [
            apns_post(base, token, topic="com.someone.else"),
            apns_post(base, token, topic=""),
            apns_post(base, token, device="xyz"),
            apns_post(base, token, body=b""),
            apns_post(base, token, body=b'{"aps":{"alert":"' + b"x" * 4100 + b'"}}'),
            apns_post(base, token, device="1a" * 32),
            apns_post(base, token, extra=["apns-priority: 3"]),
            apns_post(base, token, extra=["apns-expiration: soon"]),
            apns_post(base, token, extra=["apns-collapse-id: " + "c" * 65]),
            apns_post(base, token, extra=["apns-topic: " + BUNDLE_ID]),  # a second apns-topic header
        ]
    )
    assert reasons(responses[:5]) + reasons(responses[6:]) == [
        (400, "TopicDisallowed"),
        (400, "MissingTopic"),
        (400, "BadDeviceToken"),
        (400, "PayloadEmpty"),
        (413, "PayloadTooLarge"),
        (400, "BadPriority"),
        (400, "BadExpirationDate"),
        (400, "BadCollapseId"),
        (400, "DuplicateHeaders"),
    ]
    gone = json.loads(responses[5].body)
    assert responses[5].status == 410 and gone["reason"] == "Unregistered"
    assert abs(gone["timestamp"] - time.time() * 1000) < 60_000  # milliseconds, not seconds
    assert all(r.headers["content-type"] == "application/json" and r.headers["apns-id"] for r in responses)


def test_apns_refuses_strict_unknown_tokens_wrong_method_and_path(pushsim, transport, apns_credentials):
    pushsim.state.faults.strict_tokens = True
    base = pushsim.apns_url()
    token = bearer(apns_credentials.private_key_pem)
    get = Request(url=f"{base}/3/device/{DEVICE}", headers=[f"authorization: bearer {token}"], method="GET")
    wrong_path = Request(url=f"{base}/2/device/{DEVICE}", headers=[f"authorization: bearer {token}"], body=b"{}")
    responses = transport.send([apns_post(base, token), get, wrong_path])
    assert reasons(responses) == [(400, "BadDeviceToken"), (405, "MethodNotAllowed"), (404, "BadPath")]


def test_apns_binds_a_team_and_its_token_updates_to_the_connection(pushsim, transport, apns_credentials):
    other_team = make_apns_credentials(team_id="TEAM000002", key_id="KEY0000002")
    trust_apns(pushsim, other_team)
    base = pushsim.apns_url()
    first = bearer(apns_credentials.private_key_pem, iat=time.time() - 5)
    refreshed = bearer(apns_credentials.private_key_pem)
    assert reasons(transport.send([apns_post(base, first)])) == [(200, "")]
    assert reasons(transport.send([apns_post(base, refreshed)])) == [(429, "TooManyProviderTokenUpdates")]
    assert reasons(
        transport.send([apns_post(base, bearer(other_team.private_key_pem, iss="TEAM000002", kid="KEY0000002"))])
    ) == [(403, "InvalidProviderToken")]
    # A new connection is a new binding: the other team is welcome there.
    with Http2Transport() as fresh:
        answer = fresh.send([apns_post(base, bearer(other_team.private_key_pem, iss="TEAM000002", kid="KEY0000002"))])
    assert reasons(answer) == [(200, "")]


def test_apns_over_http1_is_refused(pushsim, apns_credentials):
    ctx = ssl.create_default_context(cafile=pushsim.ca_path)
    with httpx.Client(verify=ctx, http2=False) as client, pytest.raises(httpx.RemoteProtocolError):
        client.post(
            pushsim.apns_url(tls=True) + f"/3/device/{DEVICE}",
            headers={"authorization": f"bearer {bearer(apns_credentials.private_key_pem)}", "apns-topic": BUNDLE_ID},
            content=b'{"aps":{}}',
        )


def test_sandbox_answers_carry_a_unique_id(pushsim, transport, apns_credentials):
    [response] = transport.send([apns_post(pushsim.apns_url("sandbox"), bearer(apns_credentials.private_key_pem))])
    assert response.status == 200 and len(response.headers["apns-unique-id"]) == 36


def assertion(info, **overrides):
    now = int(time.time())
    claims = {
        "iss": info["client_email"],
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": now,
        "exp": now + 3600,
        **overrides,
    }
    return jwt.encode(claims, info["private_key"], "RS256", {"kid": info["private_key_id"]})


def test_the_token_endpoint_refuses_bad_assertions(pushsim, fcm_credentials):
    info = fcm_credentials.info
    forged = dict(info, private_key=make_rsa_pem())
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    cases = {
        "signed with another key": {"grant_type": grant, "assertion": assertion(forged)},
        "too long-lived": {"grant_type": grant, "assertion": assertion(info, exp=int(time.time()) + 7200)},
        "expired": {
            "grant_type": grant,
            "assertion": assertion(info, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
        },
        "wrong audience": {"grant_type": grant, "assertion": assertion(info, aud="https://example.com/")},
        "no scope": {"grant_type": grant, "assertion": assertion(info, scope="email")},
        "wrong grant": {"grant_type": "password", "assertion": assertion(info)},
    }
    with httpx.Client() as client:
        answers = {name: client.post(pushsim.token_uri, data=form) for name, form in cases.items()}
        good = client.post(pushsim.token_uri, data={"grant_type": grant, "assertion": assertion(info)})
    assert {name: (r.status_code, r.json()["error"]) for name, r in answers.items()} == {
        "signed with another key": (400, "invalid_grant"),
        "too long-lived": (400, "invalid_grant"),
        "expired": (400, "invalid_grant"),
        "wrong audience": (400, "invalid_grant"),
        "no scope": (400, "invalid_scope"),
        "wrong grant": (400, "unsupported_grant_type"),
    }
    assert good.status_code == 200 and good.json()["token_type"] == "Bearer" and good.json()["expires_in"] == 3599


def make_rsa_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def test_fcm_send_refuses_missing_and_unknown_credentials_with_real_bodies(pushsim):
    url = pushsim.fcm_url() + "/v1/projects/pushdesk-test/messages:send"
    body = {"message": {"token": "t" * 40}}
    with httpx.Client(http1=False, http2=True) as client:
        missing = client.post(url, json=body)
        unknown = client.post(url, json=body, headers={"authorization": "Bearer ya29.nothing"})
    assert missing.status_code == 401
    assert missing.json()["error"]["details"][0]["reason"] == "CREDENTIALS_MISSING"
    assert unknown.status_code == 401 and unknown.json()["error"]["status"] == "UNAUTHENTICATED"
    assert "details" not in unknown.json()["error"]


def test_fcm_send_refuses_a_token_of_another_project_and_messages_without_target(pushsim):
    token = pushsim.state.issue_access_token("pushdesk-test")
    with httpx.Client(http1=False, http2=True, headers={"authorization": f"Bearer {token}"}) as client:
        other = client.post(pushsim.fcm_url() + "/v1/projects/other/messages:send", json={"message": {"topic": "a"}})
        untargeted = client.post(
            pushsim.fcm_url() + "/v1/projects/pushdesk-test/messages:send", json={"message": {"data": {}}}
        )
        oversize = client.post(
            pushsim.fcm_url() + "/v1/projects/pushdesk-test/messages:send",
            json={"message": {"token": "t" * 40, "data": {"big": "x" * 5000}}},
        )
    assert (other.status_code, other.json()["error"]["status"]) == (403, "PERMISSION_DENIED")
    assert untargeted.json()["error"]["message"] == "Recipient of the message is not set."
    assert oversize.status_code == 400 and oversize.json()["error"]["message"] == "Message is too big."


def test_faults_and_tokens_are_set_over_the_control_endpoint(pushsim, transport, apns_credentials):
    with httpx.Client(base_url=pushsim.url()) as control:
        assert control.post("/control/faults", json={"rate_500": 1.0}).status_code == 200
        assert control.post("/control/tokens", json={"token": "2b" * 32, "state": "expired"}).status_code == 200
        assert control.post("/control/faults", json={"no_such_fault": 1}).status_code == 400
        state = control.get("/control/state").json()
    assert state["faults"]["rate_500"] == 1.0
    token = bearer(apns_credentials.private_key_pem)
    assert reasons(transport.send([apns_post(pushsim.apns_url(), token)])) == [(500, "InternalServerError")]
    pushsim.state.faults.rate_500 = 0.0
    assert reasons(transport.send([apns_post(pushsim.apns_url(), token, device="2b" * 32)])) == [(410, "ExpiredToken")]


def test_counts_received_and_the_phone_page_show_deliveries_newest_first(pushsim, transport, apns_credentials):
    token = bearer(apns_credentials.private_key_pem)
    for title in ("First", "Second"):
        body = json.dumps({"aps": {"alert": {"title": title, "body": "<b>hello</b>"}}}).encode()
        transport.send([apns_post(pushsim.apns_url(), token, body=body)])
    with httpx.Client(base_url=pushsim.url()) as control:
        counts = control.get("/control/counts").json()
        received = control.get("/control/received", params={"token": DEVICE}).json()
        page = control.get("/").text
    assert counts == {DEVICE: 2} and pushsim.state.count(DEVICE) == 2
    assert [r["title"] for r in received] == ["Second", "First"]
    assert page.index("Second") < page.index("First")
    assert "&lt;b&gt;hello&lt;/b&gt;" in page and "<b>hello</b>" not in page
    assert "iOS" in page and "Android" in page


def test_the_pushsim_command_starts_with_faults_and_dead_tokens_from_its_flags(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    env = {**os.environ, "PUSHDESK_VAR_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}
    env["PYTHONUNBUFFERED"] = "1"
    manage = str(Path(__file__).resolve().parents[2] / "manage.py")
    command = [sys.executable, manage, "pushsim", "--port", str(ports[0]), "--sandbox-port", str(ports[1])]
    command += ["--rate-503", "0.25", "--retry-after", "9", "--dead-token", "3c" * 32]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "Push simulator:" in process.stdout.readline()
        with httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}") as control:
            state = control.get("/control/state").json()
            page = control.get("/")
    finally:
        process.terminate()
        process.wait(10)
    assert (state["faults"]["rate_503"], state["faults"]["retry_after"], state["devices"]) == (0.25, 9, 1)
    assert page.status_code == 200 and "Push simulator" in page.text


@pytest.mark.parametrize(
    ("flags", "said", "status"),
    [
        (["--rate-429", "2"], "--rate-429: rate_429 is a fraction from 0 to 1", 1),
        # A whole number's option is read by argparse, which refuses with a usage error (status 2).
        (
            ["--drop-after", "-1"],
            "argument --drop-after: '-1' is not a count of streams: give its number in ASCII digits, 0 (never) or more",
            2,
        ),
    ],
)
def test_the_pushsim_command_refuses_a_fault_out_of_range_naming_its_flag(tmp_path, flags, said, status):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PUSHDESK_VAR_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3"}
    manage = str(Path(__file__).resolve().parents[2] / "manage.py")
    refused = subprocess.run(
        [sys.executable, manage, "pushsim", "--port", "0", "--sandbox-port", "0", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == status
    assert said in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("option", ["--port", "--sandbox-port", "--tls-port", "--sandbox-tls-port"])
@pytest.mark.parametrize("port", ["٨٤٤٠", "８４４０", "8_440", "-1", "+8440", " 8440", "65536", "http", ""])
def test_a_pushsim_port_is_a_number_of_ascii_digits_else_refused_in_a_sentence(monkeypatch, option, port):
    """int() read '٨٤٤٠' (Arabic-Indic) and '８４４０' (full-width) as 8440 and '8_440' as 8440, so
    the simulator listened on a port no script or unit named as typed; 65536 failed with a traceback
    once it tried to listen. Each port is read as send_stream's --slot is."""
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from delivery.management.commands import pushsim

    monkeypatch.setattr(pushsim, "PushSimulator", lambda **kwargs: pytest.fail(f"started: {kwargs}"))
    with pytest.raises(CommandError) as refused:
        call_command("pushsim", f"{option}={port}")
    assert str(refused.value) == (
        f"Error: argument {option}: {port!r} is not a port: give its number in ASCII digits, "
        "0 to 65535 (0: any free one)"
    )


@pytest.mark.parametrize(
    ("option", "refusal"),
    [
        ("--retry-after", "a number of seconds: give its number in ASCII digits, 0 or more"),
        ("--goaway-after", "a count of streams: give its number in ASCII digits, 0 (never) or more"),
        ("--drop-after", "a count of streams: give its number in ASCII digits, 0 (never) or more"),
    ],
)
@pytest.mark.parametrize("number", ["٣", "３", "1_0", "-1", "+3", " 3", "3.5", "lots", ""])
def test_pushsim_s_fault_counts_are_numbers_of_ascii_digits_else_refused_in_a_sentence(
    monkeypatch, option, refusal, number
):
    """int() read '٣' (Arabic-Indic) and '３' (full-width) as 3 and '1_0' as 10, so the simulator
    injected a fault no script named as typed. Each is read as the ports are."""
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from delivery.management.commands import pushsim

    monkeypatch.setattr(pushsim, "PushSimulator", lambda **kwargs: pytest.fail(f"started: {kwargs}"))
    with pytest.raises(CommandError) as refused:
        call_command("pushsim", f"{option}={number}")
    assert str(refused.value) == f"Error: argument {option}: {number!r} is not {refusal}"


@pytest.mark.parametrize(
    ("option", "fault"),
    [
        ("--retry-after", "retry_after"),
        ("--goaway-after", "goaway_after_streams"),
        ("--drop-after", "drop_after_streams"),
    ],
)
def test_pushsim_s_fault_counts_in_ascii_digits_are_taken(monkeypatch, option, fault):
    from django.core.management import call_command

    from delivery.management.commands import pushsim

    class Started(Exception):
        pass

    class Simulator(pushsim.PushSimulator):
        def start(self):
            raise Started(self.state.faults)

    monkeypatch.setattr(pushsim, "PushSimulator", Simulator)
    with pytest.raises(Started) as started:
        call_command("pushsim", "--port=0", "--sandbox-port=0", f"{option}=007")
    assert getattr(started.value.args[0], fault) == 7


def test_the_phone_page_shows_a_notifications_image_as_the_phone_would(pushsim, transport, apns_credentials):
    """The page drew a notification's texts and left its image out: the demo's Flash sale read as
    text alone. It shows the image a phone would download (Pushdesk's ``pushdesk.image`` on iOS),
    and nothing for a value that is no web address."""
    token = bearer(apns_credentials.private_key_pem)
    image = "http://127.0.0.1:8000/static/delivery/demo/flash-sale.jpg?a=1&b=2"
    for title, shown in (("Sale", image), ("Odd", "javascript:alert(1)")):
        body = {
            "aps": {"alert": {"title": title, "body": "30% off"}, "mutable-content": 1},
            "pushdesk": {"image": shown},
        }
        transport.send([apns_post(pushsim.apns_url(), token, body=json.dumps(body).encode())])
    with httpx.Client(base_url=pushsim.url()) as control:
        page = control.get("/").text
    cards = page.split('<div class="card"')[1:]
    assert '<img class="image" src="http://127.0.0.1:8000/static/delivery/demo/flash-sale.jpg?a=1&amp;b=2"' in cards[1]
    assert "<img" not in cards[0] and "javascript:" not in page


def test_the_phone_page_says_its_times_are_utc(pushsim, transport, apns_credentials):
    """The page's clock and each notification's time were UTC's, named nowhere: a marketer in New
    York trying a campaign read a push sent at 14:05 as received at 19:05. Each says UTC."""
    token = bearer(apns_credentials.private_key_pem)
    body = {"aps": {"alert": {"title": "Sale", "body": "30% off"}}}
    transport.send([apns_post(pushsim.apns_url(), token, body=json.dumps(body).encode())])
    with httpx.Client(base_url=pushsim.url()) as control:
        page = control.get("/").text
    assert re.search(r'<div class="clock">\d\d:\d\d</div><div class="zone">UTC</div>', page), page
    card = page.split('<div class="card"')[1]
    assert re.search(r"<span>\d\d:\d\d:\d\d UTC</span>", card), card


@pytest.mark.parametrize("option", ["--port", "--sandbox-port"])
def test_pushsim_on_a_port_already_in_use_says_which_option_in_one_line(option):
    """asyncio's refusal to listen ended the command in a traceback."""
    import socket

    from django.core.management import call_command
    from django.core.management.base import CommandError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"--port": "0", "--sandbox-port": "0", option: str(port)}
        with pytest.raises(CommandError) as refused:
            call_command("pushsim", *(f"{name}={value}" for name, value in ports.items()), stdout=io.StringIO())
    assert str(refused.value) == (
        f"{option} {port}: 127.0.0.1:{port} is in use: stop what listens there, or choose another {option}"
    )
