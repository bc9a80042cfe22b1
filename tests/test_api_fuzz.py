"""The API fuzzed against its committed OpenAPI schema (schemathesis) with every check it has.

What it covers: every operation of ``docs/openapi.yaml``, through the real WSGI application, in
schemathesis' three phases: the schema's examples, its coverage phase (each parameter's
boundaries and invalid values: ``?status=AAA``, ``?offset=null``, a missing field, a wrong type,
an undeclared method) and random generation of valid and invalid requests. Every answer passes
every check schemathesis registers: no 5xx; status code, content type, headers and body as the
schema documents; invalid requests rejected, valid ones accepted; required headers and
authentication enforced; ``Allow`` on 405s (the stateful checks find no links to follow here).

With the key of each scope: the coverage phase and 80 generated requests per operation with a
key of every scope, then 12 generated requests with a key of each single scope, where most
answers are 403 (each operation has some 110-140 requests in all). The single scopes check that a
key's scope is enforced before anything else reads the request: a few requests per operation and
scope show that as well as forty did, at a third of the suite's fuzzing time. Generation is
derandomized, so a run is reproducible. ``PUSHDESK_FUZZ_EXAMPLES`` scales the generated requests
(40 is the default; 200 runs five times as many). Some 3,200 requests take about a minute of CPU,
hence the ``slow`` marker.

Strings carry no NUL and no lone surrogate: JSON Schema cannot say that a free-form object
refuses them, and the API does (``tests/accounts/test_api_input.py`` sends them).
"""

import os
from pathlib import Path

import pytest
import schemathesis
import yaml
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, load_all_checks

from accounts.models import ApiKey
from accounts.services import access_grant
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, SegmentFactory

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
SCALE = float(os.environ.get("PUSHDESK_FUZZ_EXAMPLES", "40")) / 40
SCOPE_SETS = {
    "read": ["read"],
    "ingest": ["ingest"],
    "trigger": ["trigger"],
    "campaigns": ["campaigns"],
    "journeys": ["journeys"],
    "all": ["read", "ingest", "trigger", "campaigns", "journeys"],
}
# Every request carries this key; each test gives it the scope under test (see ``fuzz_key``).
FUZZ_KEY_PREFIX = "f0220000"
FUZZ_KEY = f"pdk_{FUZZ_KEY_PREFIX}_key-of-the-fuzz-tests-valid-in-their-database-only"

load_all_checks()
ALL_CHECKS = [CHECKS.get_one(name) for name in CHECKS.get_all_names()]


# Each entry names its one operation ("include-name": method and path; an entry's include-path and
# include-method would each select on its own, every POST for one).
# Rules the schema cannot state, so a request it calls valid may still be refused with 400: a
# profile's time zone must be a known IANA name, an import's file must read as CSV, winner mode
# must fit the campaign, and an external id has no white space around it (a profile's, a device's).
def _accepting(operation: str, statuses: list[str]) -> dict:
    """One operation's entry: the statuses its valid requests may answer with."""
    return {"include-name": operation, "checks": {"positive_data_acceptance": {"expected-statuses": statuses}}}


def _with_parameter(method: str, name: str) -> list[str]:
    """The paths whose ``method`` operation takes the parameter ``name``."""
    paths = yaml.safe_load(SCHEMA_PATH.read_text())["paths"]
    return [
        path
        for path, operations in paths.items()
        if any(parameter["name"] == name for parameter in operations.get(method, {}).get("parameters", []))
    ]


SEMANTIC = ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
SEMANTIC_400 = {
    "operations": [
        _accepting(f"POST {path}", SEMANTIC) for path in ("/api/v1/profiles/", "/api/v1/imports/", "/api/v1/devices/")
    ]
    # An erasure names its profile by external id in the path: white space around it, or more than
    # 255 characters, is refused (400) as when the profile is written.
    + [_accepting("DELETE /api/v1/profiles/{external_id}/", SEMANTIC)]
    # A list's cursor is a value the server signed, and cursor, offset and paging=offset exclude
    # one another: the schema cannot state either.
    + [_accepting(f"GET {path}", SEMANTIC) for path in _with_parameter("get", "cursor")]
    # Generated requests share Idempotency-Key values between bodies: the same key with another body
    # is 422 idempotency_key_reused, and one of a call still running 409, whatever the body.
    + [
        _accepting(f"POST {path}", ["2xx", "400", "401", "403", "404", "409", "422", "429", "503"])
        for path in _with_parameter("post", "Idempotency-Key")
    ]
    # Winner mode's rules depend on the campaign (its variants, kind and schedule), which the schema cannot state.
    + [_accepting("PUT /api/v1/campaigns/{campaign_id}/winner/", ["2xx", "400", "401", "403", "404", "409", "429"])]
}


@schemathesis.auth(refresh_interval=None, retry_on=[])
class _FuzzKey:
    """Every request carries ``FUZZ_KEY`` as the authentication schemathesis knows it sets, so its
    ``ignored_auth`` check sends each accepted request again without it and with a wrong one, and
    expects 401. Sent as a plain header instead, the key read as generated by schemathesis on a
    request that also carries a header parameter (the events' Idempotency-Key), and an accepted
    answer was taken for invalid authentication accepted."""

    def get(self, case, context):
        return FUZZ_KEY

    def set(self, case, data, context):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _schema(*, phases: list[str]):
    config = schemathesis.config.SchemathesisConfig.from_dict(SEMANTIC_400)
    schema = schemathesis.openapi.from_path(str(SCHEMA_PATH), config=config)
    schema.app = get_wsgi_application()
    schema.config.update(base_url="http://localhost")
    schema.config.generation.update(allow_x00=False, codec="utf-8")
    schema.config.phases.update(phases=phases)
    return schema


EVERY_SCOPE = _schema(phases=["examples", "coverage", "fuzzing"])
ONE_SCOPE = _schema(phases=["fuzzing"])
FUZZ_SETTINGS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": list(HealthCheck),
}


@pytest.fixture
def wsgi_app(db):
    """The project's WSGI application, called in the test's own transaction (built as config.wsgi
    builds it, without tuning this process's garbage collector as a web process does).

    Django closes "old" connections at each request's start and end; inside the test's
    transaction that would roll it back, so (as Django's test client does) that is switched off.
    """
    application = get_wsgi_application()
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield application
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_world(manager_alice):
    """A little of everything the API reads, reachable by the key's user."""
    from campaigns.services.lifecycle import campaign_create
    from delivery.models import Delivery, Dispatch, PushContent

    app = AppFactory(name="Fuzz app")
    access_grant(obj=app, to=manager_alice, by=None)
    segment = SegmentFactory(name="Fuzz segment", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    profile = ProfileFactory(external_id="fuzz-1", attributes={"plan": "pro"})
    device = DeviceFactory(profile=profile, app=app, platform="ios")
    content = PushContent.objects.create(app=app, name="Fuzz", title="Hello", body="World")
    campaign_create(by=manager_alice, name="Fuzz campaign", app=app, segment=segment, content=content, kind="scheduled")
    # Answers with nulls: a campaign without a segment, a delivery without a device.
    campaign_create(by=manager_alice, name="Fuzz trigger", app=app, segment=None, content=content, kind="api_triggered")
    dispatch = Dispatch.objects.create(app=app, kind="api_trigger", content_spec=content.spec(), status="done")
    Delivery.objects.create(dispatch=dispatch, device=device, profile=profile, status="accepted")
    Delivery.objects.create(dispatch=dispatch, profile=profile, status="skipped", reason="no_device")
    return app


@pytest.mark.parametrize("path", ["/api/v1/campaigns/", "/api/v1/segments/", "/api/v1/journeys/"])
def test_an_offset_past_bigint_answers_an_empty_page_and_a_limit_past_the_range_a_400(
    path, fuzz_world, manager_alice, api_key_for
):
    client = api_key_for(manager_alice, scopes=["read"])
    response = client.get(path, {"limit": 1000, "offset": 10**30})
    assert response.status_code == 200, response.content
    assert response.json()["results"] == []
    response = client.get(path, {"limit": 10**30})
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "limit"


@pytest.fixture
def fuzz_key(request, manager_alice, api_key_for):
    """Give ``FUZZ_KEY`` (the key every generated request carries) the scopes of ``scope``."""
    client = api_key_for(manager_alice, scopes=SCOPE_SETS[request.param])
    ApiKey.objects.filter(key_hash=ApiKey.hash_key(client.raw_key)).update(
        prefix=FUZZ_KEY_PREFIX, key_hash=ApiKey.hash_key(FUZZ_KEY)
    )
    return request.param


@pytest.mark.slow
@pytest.mark.parametrize("fuzz_key", ["all"], indirect=True)
@EVERY_SCOPE.parametrize()
@settings(max_examples=max(1, int(80 * SCALE)), **FUZZ_SETTINGS)
def test_every_check_holds_with_a_key_of_every_scope(case, fuzz_key, wsgi_app, fuzz_world):
    case.call_and_validate(checks=ALL_CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("fuzz_key", ["read", "ingest", "trigger", "campaigns", "journeys"], indirect=True)
@ONE_SCOPE.parametrize()
@settings(max_examples=max(1, int(12 * SCALE)), **FUZZ_SETTINGS)
def test_every_check_holds_with_a_key_of_each_single_scope(case, fuzz_key, wsgi_app, fuzz_world):
    case.call_and_validate(checks=ALL_CHECKS)
