"""Fixtures for the send-pipeline tests: the push simulator on loopback and an app pointed at it.

Import the fixtures into a test module (``from tests.delivery.sending import sim, sim_app``).
The simulator is the real thing over HTTP/2 (h2c prior knowledge on loopback): nothing in the
send path is patched.
"""

import json
import secrets
import threading
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from delivery.pushsim import PushSimulator

TEAM_ID = "TESTTEAM01"
KEY_ID = "TESTKEY001"
BUNDLE_ID = "com.pushdesk.tests"
PROJECT_ID = "pushdesk-tests"


def _public_pem(key) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class Keys:
    """Keys made for this test session; the simulator trusts their public halves."""

    def __init__(self):
        self.apns = ec.generate_private_key(ec.SECP256R1())
        self.fcm = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.private_key_id = secrets.token_hex(20)
        self.client_email = f"tests@{PROJECT_ID}.iam.gserviceaccount.com"

    def p8(self) -> bytes:
        return self.apns.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def service_account(self, token_uri: str) -> bytes:
        return json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT_ID,
                "private_key_id": self.private_key_id,
                "private_key": self.fcm.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ).decode(),
                "client_email": self.client_email,
                "client_id": "100000000000000000002",
                "token_uri": token_uri,
            }
        ).encode()


@pytest.fixture(scope="session")
def sim_session():
    keys = Keys()
    sim = PushSimulator().start()
    sim.keys = keys
    yield sim
    sim.stop()


@pytest.fixture
def sim(sim_session, settings):
    """The push simulator, reset, with the test keys trusted; settings point the clients at it."""
    from delivery.services.sending import CLIENTS

    sim = sim_session
    sim.state.reset()
    sim.state.add_apns_key(
        key_id=KEY_ID, team_id=TEAM_ID, public_key_pem=_public_pem(sim.keys.apns), topics=[BUNDLE_ID]
    )
    sim.state.add_service_account(
        client_email=sim.keys.client_email,
        private_key_id=sim.keys.private_key_id,
        project_id=PROJECT_ID,
        public_key_pem=_public_pem(sim.keys.fcm),
    )
    settings.PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL = sim.apns_url("production")
    settings.PUSHDESK_PUSHSIM_APNS_SANDBOX_URL = sim.apns_url("sandbox")
    settings.PUSHDESK_PUSHSIM_FCM_URL = sim.fcm_url()
    yield sim
    CLIENTS.close()


@pytest.fixture
def sim_app(sim, db):
    """An app with APNs and FCM credentials, sending to the simulator, with a high rate limit."""
    from delivery.services.apps import apns_key_parse, app_create, service_account_parse

    return app_create(
        name=f"Sim app {secrets.token_hex(3)}",
        by=None,
        rate_limit_per_second=100_000,
        uses_simulator=True,
        apns_team_id=TEAM_ID,
        apns_key_id=KEY_ID,
        apns_bundle_id=BUNDLE_ID,
        apns_environment="production",
        apns_private_key=apns_key_parse(raw=sim.keys.p8()),
        fcm_service_account=service_account_parse(raw=sim.keys.service_account(sim.token_uri)),
    )


def heal_after_the_first_drop(pushsim) -> threading.Thread:
    """Stop dropping connections once the first one was dropped and a new one opened."""

    def heal() -> None:
        deadline = time.monotonic() + 10
        while pushsim.state.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        pushsim.state.faults.drop_after_streams = 0

    thread = threading.Thread(target=heal, daemon=True)
    thread.start()
    return thread
