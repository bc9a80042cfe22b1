"""The OpenAPI schema generates cleanly (no warning, valid OpenAPI) and the committed copy is current."""

from pathlib import Path

import pytest
from django.core.management import call_command

COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def test_openapi_schema_validates_without_warnings(tmp_path, db):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    assert "/api/v1/campaigns/{campaign_id}/trigger/" in text
    assert "securitySchemes" in text


def test_committed_schema_equals_the_generated_one(tmp_path, db):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert COMMITTED.read_text() == out.read_text(), (
        "docs/openapi.yaml is stale: regenerate it with `make schema` (generated for PostgreSQL)"
    )


def test_every_operation_documents_the_error_answers(db):
    import yaml

    schema = yaml.safe_load(COMMITTED.read_text())
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            for status in ("400", "401", "403", "404"):
                assert status in operation["responses"], f"{method.upper()} {path} lacks {status}"


# The codes every operation may answer with, whatever the view (README's table of errors): the
# docs an integrator reads name each, as the answers an operation adds name theirs.
COMMON_CODES = {
    "400": ["invalid", "parse_error"],
    "401": [
        "not_authenticated",
        "malformed_authorization",
        "api_key_invalid",
        "api_key_revoked",
        "api_key_expired",
        "account_disabled",
        "account_role",
    ],
    "403": ["insufficient_scope", "permission_denied"],
    "404": ["not_found"],
}


def test_the_common_error_answers_name_their_codes(db):
    import yaml

    schema = yaml.safe_load(COMMITTED.read_text())
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            for status, codes in COMMON_CODES.items():
                description = operation["responses"][status]["description"]
                for code in codes:
                    assert f"`{code}`" in description, f"{method.upper()} {path}: its {status} lacks `{code}`"


def _schema() -> dict:
    import yaml

    return yaml.safe_load(COMMITTED.read_text())


def _output_serializers():
    """Every model serializer the API answers with, and the schema component it becomes."""
    from rest_framework import serializers

    import audiences.api
    import campaigns.api
    import delivery.api
    import journeys.api

    for module in (audiences.api, campaigns.api, delivery.api, journeys.api):
        for name, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, serializers.ModelSerializer)
                and value.__module__ == module.__name__
                and name.endswith("OutSerializer") | name.endswith("DetailSerializer")
            ):
                yield value, name.removesuffix("Serializer")


def _may_be_null(model, source: str) -> bool:
    """Whether following ``source`` (a dotted path of model fields) from a row can end in None."""
    for part in source.split("."):
        try:
            field = model._meta.get_field(part)
        except Exception:
            return False  # a property or method: its own annotation documents it
        if field.one_to_many or field.many_to_many:
            return False  # a list of related rows: empty, never null
        if field.null:
            return True
        model = field.related_model
        if model is None:
            return False
    return False


def test_every_answer_field_that_can_be_null_is_nullable_in_the_schema(db):
    components = _schema()["components"]["schemas"]
    checked = 0
    for serializer_class, component in _output_serializers():
        if component not in components:
            continue  # nested in another answer as a free-form object
        properties = components[component]["properties"]
        for name, field in serializer_class().fields.items():
            if field.write_only or not _may_be_null(serializer_class.Meta.model, field.source):
                continue
            checked += 1
            declared = properties[name]
            nullable = declared.get("nullable") or any(
                option.get("$ref", "").endswith("/NullEnum") for option in declared.get("oneOf", [])
            )
            assert nullable, f"{component}.{name} can be null but the schema does not say so"
    assert checked >= 20


def test_the_platform_enum_and_the_list_ranges_are_in_the_schema(db):
    schema = _schema()
    components = schema["components"]["schemas"]
    assert components["PlatformEnum"]["enum"] == ["ios", "android"]
    assert components["DeviceInRequest"]["properties"]["platform"] == {"$ref": "#/components/schemas/PlatformEnum"}
    lists = ["/api/v1/campaigns/", "/api/v1/segments/", "/api/v1/journeys/", "/api/v1/dispatches/"]
    for path in [*lists, "/api/v1/dispatches/{dispatch_id}/deliveries/"]:
        parameters = {p["name"]: p["schema"] for p in schema["paths"][path]["get"]["parameters"]}
        assert (parameters["limit"]["minimum"], parameters["limit"]["maximum"]) == (1, 1000), path
    for path in lists:
        parameters = {p["name"]: p["schema"] for p in schema["paths"][path]["get"]["parameters"]}
        assert parameters["offset"]["minimum"] == 0
    for path in ["/api/v1/campaigns/", "/api/v1/journeys/", "/api/v1/dispatches/"]:
        parameters = {p["name"]: p["schema"] for p in schema["paths"][path]["get"]["parameters"]}
        assert "AAA" not in parameters["status"]["enum"] and len(parameters["status"]["enum"]) >= 5


@pytest.mark.parametrize(
    ("path", "method", "status", "code"),
    [
        ("/api/v1/opens/", "post", "409", "already_opened"),
        ("/api/v1/opens/", "post", "409", "not_accepted"),
        ("/api/v1/campaigns/{campaign_id}/trigger/", "post", "409", "idempotency_in_progress"),
        ("/api/v1/campaigns/{campaign_id}/trigger/", "post", "422", "idempotency_key_reused"),
        ("/api/v1/campaigns/{campaign_id}/trigger/", "post", "409", "campaign_not_live"),
        ("/api/v1/campaigns/{campaign_id}/trigger/", "post", "409", "not_api_triggered"),
        ("/api/v1/campaigns/{campaign_id}/trigger/", "post", "409", "gate_closed"),
        ("/api/v1/campaigns/{campaign_id}/trigger/", "post", "429", "throttled"),
        ("/api/v1/campaigns/{campaign_id}/trigger/", "post", "503", "instance_not_claimed"),
    ],
)
def test_the_error_codes_an_operation_answers_are_documented(path, method, status, code, db):
    response = _schema()["paths"][path][method]["responses"][status]
    assert f"`{code}`" in response["description"]
    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_every_operation_with_a_body_documents_request_too_large(db):
    for path, methods in _schema()["paths"].items():
        for method, operation in methods.items():
            if "requestBody" in operation:
                assert "`request_too_large`" in operation["responses"]["413"]["description"], f"{method} {path}"


@pytest.mark.parametrize(("component", "items"), [("ProfileBulkRequest", "profiles"), ("EventBulkRequest", "events")])
def test_a_bulk_call_documents_any_item_as_accepted_and_answered_alone(component, items, db):
    """Each item is checked alone and answered in `results` (200): the schema may not call a bad item invalid."""
    declared = _schema()["components"]["schemas"][component]["properties"][items]
    assert declared["items"] == {} and declared["maxItems"] == 1000
    assert "answered in `results`" in declared["description"]


def test_an_import_segment_is_a_positive_id_and_never_null(db):
    declared = _schema()["components"]["schemas"]["ImportInRequest"]["properties"]["segment"]
    assert declared.get("nullable") is not True and declared["minimum"] == 1


@pytest.mark.parametrize(
    ("path", "method", "status", "header"),
    [
        ("/api/v1/campaigns/{campaign_id}/trigger/", "post", "429", "Retry-After"),
        ("/api/v1/events/bulk/", "post", "503", "Retry-After"),
        ("/api/v1/campaigns/{campaign_id}/trigger/", "post", "202", "Idempotent-Replayed"),
    ],
)
def test_the_headers_an_answer_carries_are_documented(path, method, status, header, db):
    """A client generated from the schema reads only the headers it declares: the wait of a 429, a replay."""
    declared = _schema()["paths"][path][method]["responses"][status].get("headers", {})
    assert header in declared, f"{method.upper()} {path} {status} does not declare {header}"
    assert declared[header]["schema"]["type"] == ("integer" if header == "Retry-After" else "string")


def test_every_operation_documents_the_refusals_of_its_content_types(db):
    """An Accept leaving out JSON answers 406 on every path, a body of another type 415: a client
    generated from the schema met them as undeclared statuses, without the error body."""
    for path, methods in _schema()["paths"].items():
        for method, operation in methods.items():
            responses = operation["responses"]
            assert "`not_acceptable`" in responses["406"]["description"], f"{method} {path}"
            if "requestBody" in operation:
                assert "`unsupported_media_type`" in responses["415"]["description"], f"{method} {path}"
            for status in ("406", "415"):
                if status in responses:
                    assert responses[status]["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"
                    }


# Properties an answer may leave out: a push step's conversions (only with a goal), an error's
# per-field list (only for bad input) and its wait (only for an answer to retry later), a list's
# count and previous link (only paging by offset: a cursor walk counts nothing and goes forward).
# A profile upsert's answer carries the profile as stored only to a key that may read profiles.
MAY_BE_ABSENT = {("StepStats", "conversions"), ("Error", "errors"), ("Error", "retry_after")} | {
    ("ProfileUpsertOut", field)
    for field in ("attributes", "timezone", "locale", "created_at", "updated_at", "last_seen_at")
}
PAGE_MAY_BE_ABSENT = {"count", "previous"}  # of each list's page (``accounts.pagination.page_schema``)


def test_every_field_an_answer_always_carries_is_required_in_the_schema(db):
    """A client generated from the schema made them optional (``status?: ...``): a delivery's
    status, a device's opt-in, a campaign's kind, a profile's attributes."""
    schema = _schema()
    components = schema["components"]["schemas"]

    def referenced(node, found):
        if isinstance(node, dict):
            name = node.get("$ref", "").rsplit("/", 1)[-1]
            if name and name not in found:
                found.add(name)
                referenced(components[name], found)
            for value in node.values():
                referenced(value, found)
        elif isinstance(node, list):
            for value in node:
                referenced(value, found)
        return found

    answers, bodies = set(), set()
    for methods in schema["paths"].values():
        for operation in methods.values():
            referenced(operation["responses"], answers)
            referenced(operation.get("requestBody", {}), bodies)
    checked = 0
    for name in sorted(answers - bodies):
        properties = components[name].get("properties", {})
        for field in properties:
            if (name, field) not in MAY_BE_ABSENT and not (
                name.startswith("Paginated") and field in PAGE_MAY_BE_ABSENT
            ):
                checked += 1
                assert field in components[name].get("required", []), f"{name}.{field} is always answered"
    assert checked > 150


def test_every_operation_names_the_api_key_once_and_the_scheme_says_its_shape(db):
    """Each operation listed the scheme twice (the settings' SECURITY and the authentication's),
    and the scheme's format was the settings' "pdk_…" over the authentication's."""
    schema = _schema()
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            assert operation["security"] == [{"ApiKey": []}], f"{method} {path}"
    assert schema["components"]["securitySchemes"] == {
        "ApiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "pdk_<prefix>_<secret>"}
    }


def test_the_events_call_says_which_fields_of_an_event_are_required(db):
    """An event's items are any JSON in the schema (each is checked alone), so its description is
    all an integrator reads of them: it names the fields the item's serializer requires."""
    from audiences.api import EventInSerializer

    description = _schema()["components"]["schemas"]["EventBulkRequest"]["properties"]["events"]["description"]
    required = [name for name, field in EventInSerializer().fields.items() if field.required]
    optional = [name for name, field in EventInSerializer().fields.items() if not field.required]
    assert "required: " + ", ".join(f"`{name}`" for name in required) in description, description
    assert "optional: " + ", ".join(f"`{name}`" for name in optional) in description, description


def test_a_triggers_recipient_problems_are_documented_with_their_codes():
    """An integrator reads a recipient the trigger could not reach by its problem's code: the
    docs name every code the trigger answers with."""
    from campaigns.services.triggers import _PROBLEMS

    problem = _schema()["components"]["schemas"]["RecipientProblem"]["properties"]
    for code in _PROBLEMS:
        assert f"`{code}`" in problem["code"].get("description", ""), code
    assert "recipients" in problem["index"].get("description", "")


def test_a_recipients_own_context_says_how_it_meets_the_shared_one():
    """Both a trigger and each of its recipients take a context; the docs say which wins where both
    name a key (the recipient's, one level deep), as the trigger merges them."""
    schemas = _schema()["components"]["schemas"]
    own = schemas["RecipientRequest"]["properties"]["context"].get("description", "")
    assert "merged over the call's `context`" in own and "its keys win" in own, own
