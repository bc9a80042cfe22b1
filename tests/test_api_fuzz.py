"""The API fuzzed against its committed OpenAPI schema (schemathesis): no 5xx, every answer as documented.

Each operation of ``docs/openapi.yaml`` gets a bounded number of generated requests (valid and
invalid bodies, parameters and ids), sent through the real WSGI application with an API key of
each scope. Every answer must be a non-5xx response whose status, content type and body the
schema documents. The generation is derandomized, so a run is reproducible.
"""

import os
from pathlib import Path

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.services import access_grant
from tests.factories import AppFactory, DeviceFactory, ProfileFactory, SegmentFactory

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
SCHEMA = schemathesis.openapi.from_path(str(SCHEMA_PATH))
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = int(os.environ.get("PUSHDESK_FUZZ_EXAMPLES", "12"))

SCOPE_SETS = {"read": ["read"], "ingest": ["ingest"], "trigger": ["trigger"], "all": ["read", "ingest", "trigger"]}


@pytest.fixture
def wsgi_app(db):
    """The project's WSGI application, called in the test's own transaction.

    Django closes "old" connections at each request's start and end; inside the test's
    transaction that would roll it back, so (as Django's test client does) that is switched off.
    """
    from config.wsgi import application

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
    from delivery.models import PushContent

    app = AppFactory(name="Fuzz app")
    access_grant(obj=app, to=manager_alice, by=None)
    segment = SegmentFactory(name="Fuzz segment", created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    profile = ProfileFactory(external_id="fuzz-1", attributes={"plan": "pro"})
    DeviceFactory(profile=profile, app=app, platform="ios")
    content = PushContent.objects.create(app=app, name="Fuzz", title="Hello", body="World")
    campaign_create(by=manager_alice, name="Fuzz campaign", app=app, segment=segment, content=content, kind="scheduled")
    return app


@pytest.mark.parametrize("scope", list(SCOPE_SETS))
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_api_answers_every_generated_request_as_documented(
    operation, scope, wsgi_app, fuzz_world, manager_alice, api_key_for
):
    key = api_key_for(manager_alice, scopes=SCOPE_SETS[scope])
    headers = {"Authorization": f"Bearer {key.raw_key}"}

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def exercise(case):
        response = case.call(app=wsgi_app, headers=headers)
        case.validate_response(response, checks=CHECKS)

    exercise()


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


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_api_answers_every_invalid_request_with_a_documented_client_error(
    operation, wsgi_app, fuzz_world, manager_alice, api_key_for
):
    """Requests that break the schema (wrong types, missing fields, bad ids): a documented answer, never a 5xx."""
    from schemathesis import GenerationMode

    key = api_key_for(manager_alice, scopes=SCOPE_SETS["all"])
    headers = {"Authorization": f"Bearer {key.raw_key}"}

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
    def exercise(case):
        response = case.call(app=wsgi_app, headers=headers)
        case.validate_response(response, checks=CHECKS)

    exercise()
