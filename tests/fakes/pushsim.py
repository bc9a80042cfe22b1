"""The push simulator as pytest fixtures: the outside world (APNs, FCM) on loopback, one set for every test.

``tests/conftest.py`` makes them available to every test package. One simulator runs per test
session, over real HTTP/2: nothing in the send path is patched.

* ``pushsim`` (per test): the running ``PushSimulator``, its state reset (devices, counts,
  faults, clock; trusted keys stay), and Django settings pointed at it:
  ``PUSHDESK_APNS_PRODUCTION_URL`` / ``_SANDBOX_URL`` and ``PUSHDESK_FCM_URL`` are its TLS
  listeners, ``PUSHDESK_PUSHSIM_*`` its h2c ones, ``PUSHDESK_CA_BUNDLE`` its CA
  (``pushsim.ca_path``). ``pushsim.state`` is the Python API: ``add_device``,
  ``fail_token``, ``faults``, ``count(token)``, ``recent()``, ``advance_clock``...
  ``pushsim_server`` is the same simulator, per session, before any reset or setting.
* ``apns_credentials`` / ``fcm_credentials`` (per session): an EC P-256 ``.p8`` and an RSA
  service-account JSON generated at start, trusted by the simulator (team ``TEAM000001``,
  key ``KEY0000001``, bundle ``com.example.pushdesk``; project ``pushdesk-test``, whose
  ``token_uri`` is the simulator's). They work nowhere else.
* ``pushsim_app``: the app that sends: both channels, marked ``uses_simulator`` (so it sends to
  the h2c listeners, as workers started in their own processes do too), a rate limit no test
  reaches, saved through ``app_create``.
* ``pushsim_tls_app``: an app holding the same credentials that sends over TLS to the URLs a
  real installation uses (``PUSHDESK_APNS_*_URL``, ``PUSHDESK_FCM_URL``).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from delivery.pushsim import PushSimulator

TEAM_ID = "TEAM000001"
KEY_ID = "KEY0000001"
BUNDLE_ID = "com.example.pushdesk"
PROJECT_ID = "pushdesk-test"


class FakeClock:
    """An injectable clock (``time.time``-like) that moves only when told to."""

    def __init__(self, start: float | None = None):
        self.now = start if start is not None else time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ApnsCredentials:
    team_id: str
    key_id: str
    bundle_id: str
    private_key_pem: str  # the .p8 content
    public_key_pem: str

    def app_fields(self, **overrides) -> dict:
        """The APNs fields of ``app_create`` / ``app_update`` for these credentials (``overrides``
        replace some, e.g. ``apns_bundle_id``)."""
        from delivery.services.apps import apns_key_parse

        return {
            "apns_team_id": self.team_id,
            "apns_key_id": self.key_id,
            "apns_bundle_id": self.bundle_id,
            "apns_private_key": apns_key_parse(raw=self.private_key_pem.encode()),
            **overrides,
        }


@dataclass
class FcmCredentials:
    info: dict
    public_key_pem: str

    @property
    def json_bytes(self) -> bytes:
        return json.dumps(self.info).encode()

    def json_bytes_for(self, *, token_uri: str) -> bytes:
        """The same service account, fetching its OAuth tokens from ``token_uri``."""
        return json.dumps({**self.info, "token_uri": token_uri}).encode()

    @property
    def project_id(self) -> str:
        return self.info["project_id"]


def make_apns_credentials(*, team_id: str = TEAM_ID, key_id: str = KEY_ID, bundle_id: str = BUNDLE_ID):
    key = ec.generate_private_key(ec.SECP256R1())
    return ApnsCredentials(
        team_id=team_id,
        key_id=key_id,
        bundle_id=bundle_id,
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        public_key_pem=key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
    )


def make_fcm_credentials(*, token_uri: str, project_id: str = PROJECT_ID, name: str = "pushdesk-sender"):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
        "client_email": f"{name}@{project_id}.iam.gserviceaccount.com",
        "client_id": "100000000000000000002",
        "token_uri": token_uri,
    }
    public = (
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    ).decode()
    return FcmCredentials(info=info, public_key_pem=public)


def trust_apns(sim: PushSimulator, creds: ApnsCredentials, **kwargs) -> None:
    sim.state.add_apns_key(
        key_id=creds.key_id,
        team_id=creds.team_id,
        public_key_pem=creds.public_key_pem,
        topics=[creds.bundle_id],
        **kwargs,
    )


def trust_fcm(sim: PushSimulator, creds: FcmCredentials) -> None:
    sim.state.add_service_account(
        client_email=creds.info["client_email"],
        private_key_id=creds.info["private_key_id"],
        project_id=creds.project_id,
        public_key_pem=creds.public_key_pem,
    )


def pushsim_environment(sim: PushSimulator) -> dict[str, str]:
    """The settings that send an app marked ``uses_simulator`` to ``sim``'s h2c listeners: the
    ``pushsim`` fixture sets them in this process, and a test passes them in the environment of
    the workers it starts."""
    return {
        "PUSHDESK_PUSHSIM_APNS_PRODUCTION_URL": sim.apns_url("production"),
        "PUSHDESK_PUSHSIM_APNS_SANDBOX_URL": sim.apns_url("sandbox"),
        "PUSHDESK_PUSHSIM_FCM_URL": sim.fcm_url(),
    }


@pytest.fixture(scope="session")
def pushsim_server():
    sim = PushSimulator(tls=True).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def apns_credentials(pushsim_server) -> ApnsCredentials:
    creds = make_apns_credentials()
    trust_apns(pushsim_server, creds)
    return creds


@pytest.fixture(scope="session")
def fcm_credentials(pushsim_server) -> FcmCredentials:
    creds = make_fcm_credentials(token_uri=pushsim_server.url(tls=True) + "/token")
    trust_fcm(pushsim_server, creds)
    return creds


@pytest.fixture
def pushsim(pushsim_server, settings, apns_credentials, fcm_credentials):
    from delivery.services.sending import CLIENTS

    sim = pushsim_server
    sim.state.reset()
    settings.PUSHDESK_APNS_PRODUCTION_URL = sim.apns_url("production", tls=True)
    settings.PUSHDESK_APNS_SANDBOX_URL = sim.apns_url("sandbox", tls=True)
    settings.PUSHDESK_FCM_URL = sim.fcm_url(tls=True)
    for name, value in pushsim_environment(sim).items():
        setattr(settings, name, value)
    settings.PUSHDESK_CA_BUNDLE = sim.ca_path
    yield sim
    CLIENTS.close()  # the send engine's pooled connections point at this test's settings
    sim.state.reset()


@pytest.fixture
def pushsim_app(db, pushsim, apns_credentials, fcm_credentials):
    """An app with APNs and FCM credentials, sending to the simulator's h2c listeners, with a high rate limit."""
    return simulated_app(f"Sim app {secrets.token_hex(3)}", pushsim, apns_credentials, fcm_credentials)


def simulated_app(name, pushsim, apns_credentials, fcm_credentials):
    """An app named ``name`` sending to ``pushsim`` with these credentials (``pushsim_app``'s)."""
    from delivery.services.apps import apns_key_parse, app_create, service_account_parse

    return app_create(
        name=name,
        by=None,
        rate_limit_per_second=100_000,
        uses_simulator=True,
        apns_team_id=apns_credentials.team_id,
        apns_key_id=apns_credentials.key_id,
        apns_bundle_id=apns_credentials.bundle_id,
        apns_environment="production",
        apns_private_key=apns_key_parse(raw=apns_credentials.private_key_pem.encode()),
        fcm_service_account=service_account_parse(raw=fcm_credentials.json_bytes_for(token_uri=pushsim.token_uri)),
    )


@pytest.fixture
def pushsim_tls_app(db, pushsim, apns_credentials, fcm_credentials):
    """An App with both channels configured, sending to the simulator's TLS listeners."""
    from delivery.services.apps import app_create, service_account_parse

    return app_create(
        name="Simulated",
        by=None,
        **apns_credentials.app_fields(),
        fcm_service_account=service_account_parse(raw=fcm_credentials.json_bytes),
    )


class _Healer(threading.Thread):
    """Stops the simulator dropping connections once the first one was dropped and a new one opened,
    or once joined: the caller joins it when its sends are over, and a send whose every request was
    in flight on the dropped connection opens no new one (the wait then lasted its 10 s)."""

    def __init__(self, pushsim: PushSimulator):
        super().__init__(daemon=True)
        self.pushsim, self.over = pushsim, threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 10
        while self.pushsim.state.connections < 2 and not self.over.is_set() and time.monotonic() < deadline:
            time.sleep(0.001)
        self.pushsim.state.faults.drop_after_streams = 0

    def join(self, timeout: float | None = None) -> None:
        self.over.set()
        super().join(timeout)


def heal_after_the_first_drop(pushsim: PushSimulator) -> threading.Thread:
    """Stop dropping connections once the first one was dropped and a new one opened (see ``_Healer``)."""
    healer = _Healer(pushsim)
    healer.start()
    return healer
