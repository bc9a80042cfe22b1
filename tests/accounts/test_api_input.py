"""Malformed input answers a JSON 4xx naming the field, never a 500: the API's parser, the JSON value
check every stored JSON value passes (``accounts.json_values``), NUL in paths and queries, body size."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audiences.models import Event, Import, Profile

pytestmark = pytest.mark.django_db


def _post(client, path, raw: str):
    return client.post(path, data=raw.encode("utf-8", "surrogatepass"), content_type="application/json")


def _fields(response) -> list[str]:
    return [error["field"] for error in response.json()["errors"]]


# A whole number no 64-bit float holds (1 and 400 zeros): stored, it failed every segment comparing it.
BEYOND_FLOAT = "1" + "0" * 400
# More digits than Python's int() reads (4,300): its parser raised a ValueError that named no field
# and told the client to call sys.set_int_max_str_digits().
BEYOND_INT_DIGITS = "1" + "0" * 5000


@pytest.fixture
def ingest(manager_alice, api_key_for):
    return api_key_for(manager_alice, scopes=["ingest", "read", "trigger"])


@pytest.mark.parametrize(
    ("raw_value", "message"),
    [
        ('"a\\u0000b"', "NUL"),
        ('"a\\ud800b"', "surrogate"),
        ("1e400", "finite"),
        (BEYOND_FLOAT, "fit a 64-bit float"),
        ("-" + BEYOND_FLOAT, "fit a 64-bit float"),
        (BEYOND_INT_DIGITS, "fit a 64-bit float"),
        ("-" + BEYOND_INT_DIGITS, "fit a 64-bit float"),
        ("[" * 35 + "]" * 35, "Nested deeper than 32"),
        ("[" * 20000 + "]" * 20000, "Nested deeper than"),
    ],
    ids=[
        "nul",
        "lone-surrogate",
        "1e400",
        "integer-beyond-float",
        "negative-beyond-float",
        "integer-beyond-int-digits",
        "negative-beyond-int-digits",
        "depth-35",
        "depth-20000",
    ],
)
def test_a_profile_attribute_that_cannot_be_stored_answers_400_naming_it(ingest, raw_value, message):
    response = _post(ingest, "/api/v1/profiles/", '{"external_id": "x", "attributes": {"v": ' + raw_value + "}}")
    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["code"] == "invalid"
    assert body["errors"][0]["field"].startswith("attributes.v")
    assert message in body["errors"][0]["detail"]
    assert not Profile.objects.exists()


def test_a_nul_in_a_key_is_refused_too(ingest):
    response = _post(ingest, "/api/v1/profiles/", '{"external_id": "x", "attributes": {"a": {"k\\u0000": 1}}}')
    assert response.status_code == 400
    assert _fields(response)[0].startswith("attributes.a")


def test_an_event_property_that_cannot_be_stored_fails_its_item_alone(ingest):
    good = {"external_id": "u1", "name": "open", "occurred_at": "2026-01-01T00:00:00Z"}
    raw = json.dumps({"events": [good, {**good, "properties": {"p": "x\x00y"}}]})
    response = _post(ingest, "/api/v1/events/bulk/", raw)
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["failed"]) == (1, 1)
    assert body["results"][1]["errors"][0]["field"] == "properties.p"
    assert Event.objects.count() == 1


@pytest.mark.parametrize("raw_value", ["1e400", BEYOND_FLOAT, "-" + BEYOND_FLOAT, BEYOND_INT_DIGITS])
def test_an_event_property_no_float_holds_answers_400_naming_it(ingest, raw_value):
    good = '{"external_id": "u1", "name": "open", "occurred_at": "2026-01-01T00:00:00Z"'
    raw = '{"events": [' + good + "}, " + good + ', "properties": {"p": ' + raw_value + "}}]}"
    response = _post(ingest, "/api/v1/events/bulk/", raw)
    assert response.status_code == 400, response.content[:300]
    assert _fields(response) == ["events[1].properties.p"]
    assert not Event.objects.exists()


@pytest.mark.parametrize(
    "raw_context",
    [
        '{"v": "\\u0000"}',
        '{"v": 1e400}',
        '{"v": ' + BEYOND_FLOAT + "}",
        '{"v": ' + BEYOND_INT_DIGITS + "}",
        '{"v": ' + "[" * 20000 + "]" * 20000 + "}",
    ],
)
def test_a_trigger_context_that_cannot_be_stored_answers_400_naming_it(ingest, raw_context):
    raw = '{"recipients": [{"external_id": "u1", "context": ' + raw_context + "}]}"
    response = _post(ingest, "/api/v1/campaigns/1/trigger/", raw)
    assert response.status_code == 400, response.content[:300]
    field = _fields(response)[0]
    assert field.startswith("recipients[0].context"), field


@pytest.mark.parametrize(
    "raw_external_id",
    ['"a\\u0000b"', '"a\\ud800b"', "1e400", '"' + "x" * 300 + '"', "17"],
    ids=["nul", "lone-surrogate", "1e400", "too-long", "a-number"],
)
def test_a_field_in_a_list_is_named_alike_whichever_check_refuses_it(ingest, raw_external_id):
    # DRF's field checks and the JSON value check both name a list position in brackets.
    raw = '{"recipients": [{"external_id": "u0"}, {"external_id": ' + raw_external_id + "}]}"
    response = _post(ingest, "/api/v1/campaigns/1/trigger/", raw)
    assert response.status_code == 400, response.content[:300]
    assert _fields(response) == ["recipients[1].external_id"]
    assert response.json()["detail"].startswith("recipients[1].external_id: ")


def test_deep_nesting_in_the_import_columns_answers_400_naming_them(ingest, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\nann,pro\n", content_type="text/csv")
    columns = '{"plan": ' + "[" * 20000 + "]" * 20000 + "}"
    response = ingest.post("/api/v1/imports/", {"file": upload, "columns": columns}, format="multipart")
    assert response.status_code == 400, response.content[:300]
    assert _fields(response)[0].startswith("columns")
    assert not Import.objects.exists()


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/api/v1/profiles/", '{"external_id": "a", "external_id": "b"}', "external_id"),
        ("/api/v1/profiles/", '{"external_id": "a", "attributes": {"plan": "pro", "plan": "free"}}', "attributes.plan"),
        (
            "/api/v1/profiles/bulk/",
            '{"profiles": [{"external_id": "a"}, {"external_id": "b", "attributes": {"k\\u0000": 1, "k\\u0000": 2}}]}',
            "profiles[1].attributes.k\\x00",
        ),
        (
            "/api/v1/events/bulk/",
            '{"events": [{"external_id": "u1", "name": "buy", "occurred_at": "2026-01-01T00:00:00Z",'
            ' "properties": {"sku": "a", "sku": "b"}}]}',
            "events[0].properties.sku",
        ),
        (
            "/api/v1/campaigns/1/trigger/",
            '{"recipients": [{"external_id": "u1", "external_id": "u2"}]}',
            "recipients[0].external_id",
        ),
        ("/api/v1/devices/", '{"app": 1, "app": 2, "external_id": "u1", "platform": "ios", "token": "t"}', "app"),
    ],
)
def test_a_key_given_twice_in_an_object_answers_400_naming_it(ingest, path, raw, field):
    # JSON leaves a repeated key's meaning to each reader (Python's kept the last one, silently).
    response = _post(ingest, path, raw)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"] == [
        {"field": field, "code": "invalid", "detail": "This key is given more than once in its object."}
    ]
    assert not Profile.objects.exists() and not Event.objects.exists()


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/api/v1/profiles/", "1e400"),
        ("/api/v1/profiles/", '"\\ud800"'),
        ("/api/v1/events/bulk/", "1e400"),
        ("/api/v1/campaigns/1/trigger/", '"\\udfff"'),
    ],
)
def test_a_body_that_cannot_be_stored_as_a_whole_names_no_field(ingest, path, raw):
    """The body itself (a number no float holds, a lone surrogate) is named as the body, a null
    field, as the errors' schema says: it was named "value", a field no body has."""
    response = _post(ingest, path, raw)
    assert response.status_code == 400, response.content[:300]
    [error] = response.json()["errors"]
    assert error["field"] is None, error
    assert not response.json()["detail"].startswith("value:")


def test_nan_and_infinity_literals_are_not_json(ingest):
    response = _post(ingest, "/api/v1/profiles/", '{"external_id": "x", "attributes": {"v": NaN}}')
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/profiles/%00/", 404),
        ("/api/v1/campaigns/?status=%00", 400),
        ("/api/v1/journeys/?status=%00", 400),
        ("/api/v1/segments/?limit=%00", 400),
    ],
)
def test_a_nul_in_a_path_or_query_answers_json_not_500(ingest, path, status):
    response = ingest.get(path)
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    if status == 400:
        assert response.json()["errors"][0]["field"] in {"status", "limit"}


def test_a_nul_in_an_admin_search_answers_400_not_500(client, admin_erin):
    client.force_login(admin_erin)
    assert client.get("/admin/audiences/profile/", {"q": "a\x00b"}).status_code == 400
    assert client.get("/admin/audiences/profile/%00/change/").status_code == 404


def test_a_full_bulk_call_of_the_documented_maximum_fits(ingest):
    profiles = [{"external_id": f"p{i}", "attributes": {"bio": "x" * 3000}} for i in range(1000)]
    raw = json.dumps({"profiles": profiles})
    assert len(raw) > 3_000_000
    response = _post(ingest, "/api/v1/profiles/bulk/", raw)
    assert response.status_code == 200, response.content[:300]
    assert response.json()["accepted"] == 1000


def test_a_body_over_the_limit_answers_json_413_stating_it(ingest, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000
    raw = json.dumps({"profiles": [{"external_id": f"p{i}", "attributes": {"bio": "x" * 1000}} for i in range(200)]})
    response = _post(ingest, "/api/v1/profiles/bulk/", raw)
    assert response.status_code == 413
    body = response.json()
    assert body["code"] == "request_too_large"
    assert "100000 bytes" in body["detail"]
    assert not Profile.objects.exists()


@pytest.mark.parametrize(
    "raw_rules",
    [
        "[" * 20000 + "]" * 20000,
        '{"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "a\\u0000b"}]}',
        '{"all": [{"attribute": "age", "type": "number", "op": "gt", "value": 1e400}]}',
        '{"all": [{"attribute": "age", "type": "number", "op": "gt", "value": ' + BEYOND_FLOAT + "}]}",
    ],
    ids=["depth-20000", "nul", "1e400", "integer-beyond-float"],
)
def test_the_admin_rule_preview_answers_400_for_rules_that_cannot_be_stored(client, manager_alice, raw_rules):
    client.force_login(manager_alice)
    response = _post(client, "/admin/audiences/segment/preview/", '{"rules": ' + raw_rules + "}")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"][0]["path"].startswith("rules")


@pytest.mark.parametrize(
    "raw_rules",
    [
        "[" * 20000 + "]" * 20000,
        '{"all": [{"attribute": "plan", "type": "string", "op": "eq", "value": "a\\u0000b"}]}',
        '{"all": [{"attribute": "age", "type": "number", "op": "gt", "value": 1e400}]}',
        '{"all": [{"attribute": "age", "type": "number", "op": "gt", "value": ' + BEYOND_FLOAT + "}]}",
    ],
    ids=["depth-20000", "nul", "1e400", "integer-beyond-float"],
)
def test_the_admin_segment_form_refuses_rules_that_cannot_be_stored(client, manager_alice, raw_rules):
    from audiences.models import Segment

    client.force_login(manager_alice)
    response = client.post(
        "/admin/audiences/segment/add/", {"name": "Bad", "kind": "rules", "description": "", "rules": raw_rules}
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["rules"]
    assert not Segment.objects.filter(name="Bad").exists()


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/profiles/", {"external_id": 0}, "external_id"),
        ("/api/v1/profiles/", {"external_id": "x", "locale": 5}, "locale"),
        ("/api/v1/devices/", {"app": "1", "external_id": "x", "platform": "ios", "token": "t"}, "app"),
        ("/api/v1/devices/", {"app": 1, "external_id": "x", "platform": "ios", "token": "t", "is_test": 1}, "is_test"),
        ("/api/v1/devices/opt-in/", {"app": 1, "token": "t", "push_enabled": "true"}, "push_enabled"),
        ("/api/v1/devices/unregister/", {"app": 1.0, "token": "t"}, "app"),
        ("/api/v1/opens/", {"app": 1, "delivery": True, "token": "t"}, "delivery"),
        ("/api/v1/devices/", {"app": 1, "external_id": "x", "platform": "windows", "token": "t"}, "platform"),
    ],
)
def test_a_json_value_of_the_wrong_type_is_refused_not_converted(ingest, path, body, field):
    response = _post(ingest, path, json.dumps(body))
    assert response.status_code == 400, response.content[:300]
    assert _fields(response) == [field]
    assert not Profile.objects.exists()


def test_a_bulk_item_of_the_wrong_type_fails_alone(ingest):
    good = {"external_id": "u1", "name": "open", "occurred_at": "2026-01-01T00:00:00Z"}
    raw = json.dumps({"events": [good, {**good, "external_id": 7}]})
    body = _post(ingest, "/api/v1/events/bulk/", raw).json()
    assert (body["accepted"], body["failed"]) == (1, 1)
    assert body["results"][1]["errors"][0]["field"] == "external_id"


@pytest.mark.parametrize("segment", ["null", "0", "seven"])
def test_an_import_names_its_segment_by_a_positive_id(ingest, segment):
    upload = SimpleUploadedFile("people.csv", b"external_id\nu1\n", content_type="text/csv")
    response = ingest.post(
        "/api/v1/imports/", {"file": upload, "target": "add_to_segment", "segment": segment}, format="multipart"
    )
    assert response.status_code == 400, response.content[:300]
    assert _fields(response) == ["segment"]
    assert not Import.objects.exists()


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2.5, "x", null, true, {"b": {}}]}',
        "[" * 39 + "]" * 39,
        "[" * 40 + "]" * 40,
        "[" * 41 + "]" * 41,
        '{"a": ' * 39 + "1" + "}" * 39,
        '{"a": ' * 40 + "1" + "}" * 40,
        '{"a": "x\\ud800"}',
        '{"a\\uDC00": 1}',
        '{"a": "\\ud83d\\ude00 \\u00e9"}',
        '{"a": "\ud800"}',
        '{"a": "caf\u00e9"}',
        '{"a": "\\\\ud800"}',
        '{"a": 1e400}',
        '{"a": [-1E+400]}',
        '{"a": 1e308, "b": 12345678901234567890}',
        '{"a": ' + BEYOND_FLOAT + "}",
        '{"a": [0, -' + BEYOND_FLOAT + "]}",
        '{"a": ' + str(2**1024 - 2**970 - 1) + ', "b": -' + str(2**1024 - 2**970 - 1) + "}",
        '{"a": ' + str(2**1024 - 2**970) + "}",
        BEYOND_FLOAT,
        '{"a": "nul \\u0000"}',
        "5",
        '"text"',
        "null",
    ],
)
def test_the_body_check_refuses_exactly_what_the_whole_walk_refuses(text):
    """``json_parse`` walks the whole value only when its text may hold a problem; what it answers
    is what the whole walk answers."""
    from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

    from accounts.json_values import BODY_MAX_DEPTH, json_parse, json_value_problem

    expected = json_value_problem(
        json.loads(text, parse_constant=float), max_depth=BODY_MAX_DEPTH, max_bytes=None, nul_ok=True
    )
    try:
        json_parse(text)
    except ValidationError as exc:
        found = next(iter(exc.message_dict.items()))
        assert expected is not None
        assert found == (expected[0] or NON_FIELD_ERRORS, [expected[1]])  # the body as a whole: no field
    else:
        assert expected is None


@pytest.mark.parametrize(
    ("method", "path", "raw", "field"),
    [
        ("post", "/api/v1/profiles/", '{"external_id": "a\\u0000b"}', "external_id"),
        ("post", "/api/v1/profiles/", '{"external_id": "a", "locale": "fr\\u0000"}', "locale"),
        (
            "post",
            "/api/v1/campaigns/1/trigger/",
            '{"recipients": [{"external_id": "a\\u0000"}]}',
            "recipients[0].external_id",
        ),
        ("post", "/api/v1/profiles/", '{"external_id": "a", "attributes": {"plan": "a\\u0000b"}}', "attributes.plan"),
        ("get", "/api/v1/campaigns/?status=a%00b", None, "status"),
    ],
    ids=["text-field", "optional-text-field", "text-field-in-a-list", "json-value", "query-parameter"],
)
def test_a_nul_is_refused_with_one_code_and_wording_wherever_it_is(ingest, method, path, raw, field):
    """A text field's NUL was DRF's 'null_characters_not_allowed' ("Null characters are not allowed."),
    a JSON value's or a query's 'invalid' ("The NUL character (\\u0000) is not allowed.")."""
    response = _post(ingest, path, raw) if method == "post" else ingest.get(path)
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": field, "code": "invalid", "detail": "The NUL character (\\u0000) is not allowed."}
    ]
    assert not Profile.objects.exists()


def test_a_nul_in_an_import_form_field_is_refused_with_the_same_code_and_wording(ingest, settings, tmp_path):
    """A multipart text field's NUL (the new segment's name) was DRF's 'null_characters_not_allowed'
    ("Null characters are not allowed."), not the code and wording of every other field's."""
    settings.MEDIA_ROOT = tmp_path
    upload = SimpleUploadedFile("people.csv", b"external_id\nann\n", content_type="text/csv")
    response = ingest.post(
        "/api/v1/imports/",
        {"file": upload, "target": "new_segment", "segment_name": "Spring\x00sale"},
        format="multipart",
    )
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "segment_name", "code": "invalid", "detail": "The NUL character (\\u0000) is not allowed."}
    ]
    assert not Import.objects.exists()


@pytest.mark.parametrize(
    ("columns", "field"),
    [
        ("[1e400]", "columns[0]"),
        ("[" * 40 + "]" * 40, "columns" + "[0]" * 32),
        ('{"plan": [1e400]}', "columns.plan[0]"),
    ],
)
def test_an_import_columns_path_inside_a_list_is_named_as_every_other_path(ingest, settings, tmp_path, columns, field):
    """A path that starts with a list position was joined to ``columns`` by a dot (``columns.[0]``)."""
    settings.MEDIA_ROOT = tmp_path
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\nann,pro\n", content_type="text/csv")
    response = ingest.post("/api/v1/imports/", {"file": upload, "columns": columns}, format="multipart")
    assert response.status_code == 400, response.content[:300]
    assert _fields(response) == [field]
    assert response.json()["detail"].startswith(f"{field}: ")
    assert not Import.objects.exists()


def test_a_key_given_twice_in_the_import_columns_answers_400_naming_it(ingest, settings, tmp_path):
    """The columns' JSON text kept the last of a repeated key, silently, where a JSON body refuses it."""
    settings.MEDIA_ROOT = tmp_path
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\nann,pro\n", content_type="text/csv")
    columns = '{"plan": {"to": "plan"}, "plan": {"type": "skip"}}'
    response = ingest.post("/api/v1/imports/", {"file": upload, "columns": columns}, format="multipart")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"] == [
        {"field": "columns.plan", "code": "invalid", "detail": "This key is given more than once in its object."}
    ]
    assert not Import.objects.exists()


@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("target", ["add_to_segment", "profiles"]),
        ("encoding", ["utf-8", "latin-1"]),
        ("segment_name", ["Spring", "Autumn"]),
        ("columns", ['{"plan": {"type": "skip"}}', "{}"]),
    ],
)
def test_an_import_form_field_given_twice_answers_400_naming_it(ingest, settings, tmp_path, field, values):
    """The last of a form field given twice was taken, silently: ``target`` given as add_to_segment,
    then profiles, imported profiles. A query's parameter given twice is refused so, and a JSON key."""
    settings.MEDIA_ROOT = tmp_path
    upload = SimpleUploadedFile("people.csv", b"external_id,plan\nann,pro\n", content_type="text/csv")
    response = ingest.post("/api/v1/imports/", {"file": upload, field: values}, format="multipart")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"] == [{"field": field, "code": "invalid", "detail": "Give one value."}]
    assert not Import.objects.exists()


def test_an_import_of_two_files_answers_400_naming_the_field(ingest, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    uploads = [SimpleUploadedFile(name, b"external_id\nann\n", content_type="text/csv") for name in ("a.csv", "b.csv")]
    response = ingest.post("/api/v1/imports/", {"file": uploads}, format="multipart")
    assert response.status_code == 400, response.content[:300]
    assert response.json()["errors"] == [{"field": "file", "code": "invalid", "detail": "Give one value."}]
    assert not Import.objects.exists()
