"""Every list's query parameters are checked as the schema states them (``accounts.pagination``):
an unknown enum value, a malformed or out-of-range number, or a parameter given twice answers a
JSON 400 naming the parameter, never a silent 200."""

import pytest

from accounts.services import access_grant
from delivery.models import Dispatch
from tests.factories import AppFactory, PushContentFactory, SegmentFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(manager_alice):
    app = AppFactory()
    access_grant(obj=app, to=manager_alice, by=None)
    segment = SegmentFactory(created_by=manager_alice)
    access_grant(obj=segment, to=manager_alice, by=None)
    dispatch = Dispatch.objects.create(
        app=app, kind="api_trigger", content_spec=PushContentFactory(app=app).spec(), status="done"
    )
    return {"segment": segment.pk, "dispatch": dispatch.pk}


@pytest.fixture
def reader(manager_alice, api_key_for):
    return api_key_for(manager_alice, scopes=["read"])


PAGED = ["/api/v1/campaigns/", "/api/v1/segments/", "/api/v1/journeys/", "/api/v1/dispatches/"]
# (path, parameter, a value the schema refuses)
REFUSED = [
    *[(path, "limit", value) for path in PAGED for value in ("null", "0", "-1", "1001", "1.0", "1e3", "ten", "")],
    *[(path, "offset", value) for path in PAGED for value in ("null", "-1", "1.5", "x", "")],
    ("/api/v1/campaigns/", "status", "AAA"),
    ("/api/v1/campaigns/", "status", ""),
    ("/api/v1/journeys/", "status", "AAA"),
    ("/api/v1/dispatches/", "status", "AAA"),
    ("/api/v1/dispatches/", "kind", "broadcast"),
    ("/api/v1/dispatches/", "app", "null"),
    ("/api/v1/dispatches/", "app", "0"),
    ("/dispatches/{dispatch}/deliveries/", "status", "lost"),
    ("/dispatches/{dispatch}/deliveries/", "after", "null"),
    ("/dispatches/{dispatch}/deliveries/", "after", "-1"),
    ("/dispatches/{dispatch}/deliveries/", "limit", "0"),
    ("/dispatches/{dispatch}/deliveries/", "limit", "1001"),
    ("/segments/{segment}/preview/", "sample", "101"),
    ("/segments/{segment}/preview/", "sample", "-1"),
    ("/segments/{segment}/preview/", "sample", "some"),
]


def _url(path: str, world: dict) -> str:
    return path if path.startswith("/api/") else "/api/v1" + path.format(**world)


@pytest.mark.parametrize(("path", "name", "value"), REFUSED)
def test_a_value_the_schema_refuses_answers_400_naming_the_parameter(reader, world, path, name, value):
    response = reader.get(_url(path, world), {name: value})
    assert response.status_code == 400, (response.status_code, response.content[:300])
    body = response.json()
    assert body["code"] == "invalid"
    assert [error["field"] for error in body["errors"]] == [name]
    assert body["detail"].startswith(f"{name}: ")


def test_an_unknown_status_lists_the_known_ones(reader, world):
    body = reader.get("/api/v1/campaigns/", {"status": "AAA"}).json()
    assert "AAA" in body["detail"] and "draft" in body["detail"] and "live" in body["detail"]


def test_a_parameter_given_twice_is_refused(reader, world):
    response = reader.get("/api/v1/campaigns/?status=live&status=draft")
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "status"


@pytest.mark.parametrize("path", PAGED)
def test_the_limit_range_and_any_offset_are_accepted(reader, world, path):
    for query in ({"limit": 1}, {"limit": 1000}, {"offset": 0}, {"offset": 10**30}, {"limit": "7", "offset": "2"}):
        response = reader.get(path, query)
        assert response.status_code == 200, (query, response.content[:300])
    assert reader.get(path, {"offset": 10**30}).json()["results"] == []


@pytest.mark.parametrize("path", PAGED)
def test_a_page_past_the_end_links_back_to_the_last_page(reader, world, path):
    """An offset past the list's end gives an empty page whose previous link is the last page with
    rows, whatever the offset given (10**30 linked back to offset 4611686018427387804: the cap's)."""
    count = reader.get(path).json()["count"]  # campaigns and journeys: none; segments and dispatches: some
    for offset in {10**30, count + 500, count} - {0}:
        body = reader.get(path, {"offset": offset, "limit": 1}).json()
        assert body["results"] == [] and body["next"] is None
        previous = reader.get(body["previous"]).json()
        assert len(previous["results"]) == min(count, 1) and previous["next"] is None, (offset, body["previous"])
    body = reader.get(path, {"offset": 10**30}).json()
    assert "offset" not in body["previous"]  # the last page of a list under 100 rows is its first


def test_known_values_filter_and_unknown_parameter_names_are_ignored(reader, world):
    assert reader.get("/api/v1/dispatches/", {"status": "done", "kind": "api_trigger"}).json()["count"] == 1
    assert reader.get("/api/v1/dispatches/", {"status": "sending"}).json()["count"] == 0
    assert reader.get("/api/v1/dispatches/", {"colour": "blue"}).json()["count"] == 1
    preview = reader.get(f"/api/v1/segments/{world['segment']}/preview/", {"sample": 100})
    assert preview.status_code == 200, preview.content[:300]
    deliveries = reader.get(f"/api/v1/dispatches/{world['dispatch']}/deliveries/", {"after": 10**30, "limit": 1000})
    assert deliveries.status_code == 200 and deliveries.json()["results"] == []


@pytest.mark.parametrize("path", [*PAGED, "/api/v1/me/", "/dispatches/{dispatch}/", "/segments/{segment}/preview/"])
@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("format=xml", "Unknown value “xml”; use json."),
        ("format=csv", "Unknown value “csv”; use json."),
        ("format=", "Unknown value “”; use json."),
        ("format=json&format=xml", "Give one value."),
    ],
)
def test_a_format_the_api_does_not_answer_in_is_refused_naming_it(reader, world, path, query, detail):
    """``?format=`` was ignored: ``?format=csv`` answered JSON as if it were what was asked."""
    response = reader.get(f"{_url(path, world)}?{query}")
    assert (response.status_code, response["Content-Type"]) == (400, "application/json"), response.content[:300]
    assert response.json()["errors"] == [
        {"field": "format", "code": "invalid_choice" if "Unknown" in detail else "invalid", "detail": detail}
    ]


@pytest.mark.parametrize("path", [*PAGED, "/api/v1/me/"])
def test_format_json_answers_as_without_it(reader, world, path):
    response = reader.get(path, {"format": "json"})
    assert (response.status_code, response["Content-Type"]) == (200, "application/json")
    assert response.json() == reader.get(path).json()


@pytest.mark.parametrize(("value", "content_type"), [("json", "application/vnd.oai.openapi+json"), ("yaml", "openapi")])
def test_the_schema_answers_in_the_format_asked(client, value, content_type):
    """drf-spectacular's way to ask for the schema in JSON, ``?format=json``, answered YAML."""
    response = client.get("/api/v1/schema/", {"format": value})
    assert response.status_code == 200, response.content[:300]
    assert content_type in response["Content-Type"]
    if value == "json":
        assert response.json()["openapi"].startswith("3.")
