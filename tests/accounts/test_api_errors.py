"""What the API answers when Django refuses a request before any view runs, or a view fails: JSON
with a ``code`` and a ``detail``, as every other answer of the API; the admin keeps its pages."""

import pytest
from django.test import Client
from django.urls import path

import config.urls

pytestmark = pytest.mark.django_db


def _fails(request):
    raise RuntimeError("a failure no handler answers")


# This module is the URLconf of the tests that need a view that fails (``pytest.mark.urls``): the
# project's routes and error handlers, and one failing view under /api/ and one in the admin's place.
urlpatterns = [path("api/v1/failing/", _fails), path("failing/", _fails), *config.urls.urlpatterns]
handler400 = config.urls.handler400
handler500 = config.urls.handler500

MANY = "&".join(f"p{i}=1" for i in range(1001))


@pytest.mark.parametrize("path", ["/api/v1/campaigns/", "/api/v1/campaigns/1/trigger/", "/api/v1/nothing/"])
def test_more_query_parameters_than_django_reads_answer_a_json_400(manager_alice, api_key_for, path):
    client = api_key_for(manager_alice, scopes=["read", "trigger"])
    for response in (client.get(f"{path}?{MANY}"), client.post(f"{path}?{MANY}", {}, format="json")):
        assert response.status_code == 400
        assert response["Content-Type"] == "application/json"
        assert response.json() == {
            "code": "too_many_parameters",
            "detail": "The query has more than 1000 parameters.",
        }


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/api", "/api/", "/api/v2/campaigns/", "/api//v1/campaigns/"])
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_a_path_under_the_api_outside_its_version_answers_a_json_404(client, settings, path, method, debug):
    # Not a route of /api/v1/: the API's JSON, with DEBUG too (Django's debug 404 page answered it).
    settings.DEBUG = debug
    response = getattr(client, method)(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"code": "not_found", "detail": "Not found."}


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(
    "path", ["/api/v1/campaigns/1/trigger", "/api/v1/campaigns", "/api/v1/devices", "/api/v1/profiles/ext-1"]
)
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete", "options"])
def test_a_call_without_the_trailing_slash_of_its_route_answers_a_json_404_naming_the_path(
    manager_alice, api_key_for, settings, path, method, debug
):
    # A redirect would lose the method and the body (Django's, with DEBUG, raises instead: a 500).
    settings.DEBUG = debug
    client = api_key_for(manager_alice, scopes=["read", "trigger", "ingest"])
    response = getattr(client, method)(f"{path}?limit=5", {"recipients": []}, format="json")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"code": "not_found", "detail": f"Not found. The path ends with a slash: {path}/"}


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize(
    ("path", "slashed"),
    [
        ("/api/v1/campaigns", "/api/v1/campaigns/"),
        ("/api/v1/campaigns?limit=5&status=live", "/api/v1/campaigns/?limit=5&status=live"),
        ("/api/v1/docs", "/api/v1/docs/"),
        ("/api/v1/profiles/ext 1", "/api/v1/profiles/ext%201/"),
    ],
)
@pytest.mark.parametrize("method", ["get", "head"])
def test_a_read_without_the_trailing_slash_of_its_route_is_redirected_to_it(
    client, settings, path, slashed, method, debug
):
    settings.DEBUG = debug
    response = getattr(client, method)(path)
    assert response.status_code == 301
    assert response["Location"] == slashed


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/api/v1", "/api/v1/devices/tok-1", "/api/v1/nothing", "/api/v2"])
@pytest.mark.parametrize("method", ["get", "head", "post", "put", "patch", "delete"])
def test_a_path_whose_slashed_form_is_no_route_either_answers_the_plain_json_404(settings, path, method, debug):
    # /api/v1/ is no route: Django redirected /api/v1 there (a 301 to a 404), and a POST with DEBUG raised.
    settings.DEBUG = debug
    response = getattr(Client(raise_request_exception=False), method)(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    if method != "head":
        assert response.json() == {"code": "not_found", "detail": "Not found."}


@pytest.mark.parametrize("path", ["//api/v1/me/", "///api/v1/campaigns/", "//api/v1/nothing"])
def test_an_api_path_written_with_two_slashes_before_it_is_told_so_in_json(api_key_for, manager_alice, path):
    """A base URL ending in a slash joined to '/api/v1/…' asks for '//api/v1/…', which no route holds:
    an integrator got the admin's HTML page, and now the API's JSON 404 saying where the path went wrong."""
    response = api_key_for(manager_alice).get(f"http://testserver{path}")  # else '//api' names a host
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {
        "code": "not_found",
        "detail": f"Not found. The path starts with more than one slash: /{path.lstrip('/')}",
    }


def test_the_admin_keeps_its_404_page(client, admin_erin):
    client.force_login(admin_erin)
    response = client.get("/admin/nothing-here/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert client.get("/nothing-here/")["Content-Type"].startswith("text/html")


def test_the_admin_keeps_its_400_page(client, admin_erin):
    client.force_login(admin_erin)
    response = client.get(f"/admin/?{MANY}")
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")


@pytest.mark.urls(__name__)
def test_a_view_that_fails_answers_a_json_500_under_the_api_and_the_page_elsewhere(admin_erin):
    client = Client(raise_request_exception=False)
    response = client.get("/api/v1/failing/")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json()["code"] == "server_error"
    assert "failure" not in response.json()["detail"]  # nothing of the error itself
    page = client.get("/failing/")
    assert page.status_code == 500 and page["Content-Type"].startswith("text/html")
    assert b"Something went wrong" in page.content


@pytest.mark.parametrize("path", ["/api/v1/schema/", "/api/v1/docs/"])
@pytest.mark.parametrize("method", ["post", "put", "delete"])
def test_the_schema_and_the_docs_refuse_a_method_in_json(client, path, method):
    """They answered the refusal as the schema's YAML, and the docs' as an HTML page."""
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"code": "method_not_allowed", "detail": f'Method "{method.upper()}" not allowed.'}
    assert "GET" in response["Allow"]


@pytest.mark.parametrize(("path", "content_type"), [("/api/v1/schema/", "openapi"), ("/api/v1/docs/", "text/html")])
def test_the_schema_and_the_docs_still_answer_a_get_in_their_own_format(client, path, content_type):
    response = client.get(path)
    assert response.status_code == 200 and content_type in response["Content-Type"]


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/api/v1/docs/", "text/html"),
        ("/api/v1/imports/1/errors/", "text/csv"),
        ("/api/v1/schema/", "application/vnd.oai.openapi"),
    ],
)
def test_an_options_call_to_a_view_of_its_own_format_is_answered_in_json(manager_alice, api_key_for, path, accept):
    """DRF describes a view to OPTIONS with the renderer the request accepted: the docs' HTML one
    had no template for it, the error file's CSV one renders nothing (both a 500), the schema's
    answered in YAML."""
    client = api_key_for(manager_alice, scopes=["read"])
    response = client.options(path, HTTP_ACCEPT=accept)
    assert (response.status_code, response["Content-Type"]) == (200, "application/json")
    assert response.json()["name"]  # DRF's description of the view


def test_a_form_body_of_too_many_fields_or_files_is_said_so(manager_alice, api_key_for, settings, tmp_path):
    """An import's multipart body past Django's counts was answered as a query of too many
    parameters, or a bare 'Bad request.'."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from audiences.models import Import

    settings.MEDIA_ROOT = tmp_path
    client = api_key_for(manager_alice, scopes=["ingest"])

    def csv(name):
        return SimpleUploadedFile(name, b"external_id\na\n", content_type="text/csv")

    fields = {f"x{i}": "1" for i in range(1001)}
    response = client.post("/api/v1/imports/", {**fields, "file": csv("people.csv")}, format="multipart")
    assert (response.status_code, response["Content-Type"]) == (400, "application/json")
    assert response.json() == {"code": "too_many_fields", "detail": "The body has more than 1000 fields."}
    files = {f"file{i}": csv(f"people{i}.csv") for i in range(101)}
    response = client.post("/api/v1/imports/", {**files, "file": csv("people.csv")}, format="multipart")
    assert (response.status_code, response["Content-Type"]) == (400, "application/json")
    assert response.json() == {"code": "too_many_files", "detail": "The body has more than 100 files."}
    assert not Import.objects.exists()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            "multipart/form-data; boundary=B; charset=idna",
            b'--B\r\nContent-Disposition: form-data; name="target"\r\n\r\nprofiles\r\n--B--\r\n',
        ),
        ("application/x-www-form-urlencoded; charset=punycode", b"target=new_segment&segment_name=Spring_sale"),
    ],
    ids=["multipart-idna", "form-punycode"],
)
def test_a_form_body_its_charset_cannot_read_is_a_parse_error(manager_alice, api_key_for, content_type, body):
    """A form body declaring a charset whose decoder fails rather than replacing what it cannot read
    (idna takes no 'replace', punycode refuses text that is not punycode) was a 500."""
    from audiences.models import Import

    client = api_key_for(manager_alice, scopes=["ingest"])
    response = client.generic("POST", "/api/v1/imports/", body, content_type=content_type)
    assert (response.status_code, response["Content-Type"]) == (400, "application/json")
    assert response.json()["code"] == "parse_error"
    charset = content_type.rpartition("=")[2]
    assert f"cannot be read as {charset}" in response.json()["detail"]
    assert not Import.objects.exists()


@pytest.mark.parametrize(("charset", "name"), [("idna", b"Spring%20sale"), ("punycode", b"Spring\xe9%E9")])
def test_a_form_body_in_a_charset_that_cannot_replace_is_not_said_to_have_too_many_fields(
    manager_alice, api_key_for, charset, name
):
    """Django reads a form's escapes with the 'replace' handler, which idna refuses, and punycode
    fails on a byte beyond ASCII even so (Django reads such a body as Latin-1 first): the error was taken for the body's fields passing
    Django's count ("The body has more than 1000 fields.")."""
    from audiences.models import Import

    client = api_key_for(manager_alice, scopes=["ingest"])
    response = client.generic(
        "POST",
        "/api/v1/imports/",
        b"target=new_segment&segment_name=" + name,
        content_type=f"application/x-www-form-urlencoded; charset={charset}",
    )
    assert (response.status_code, response["Content-Type"]) == (400, "application/json")
    assert response.json() == {
        "code": "parse_error",
        "detail": f"Form parse error - the body cannot be read as {charset}, the charset it declares: send it in UTF-8.",
    }
    assert not Import.objects.exists()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (
            "multipart/form-data; boundary=B",
            b'--B\r\nContent-Disposition: form-data; name="target"\r\n\r\nnew_segment\r\n'
            b'--B\r\nContent-Disposition: form-data; name="segment_name"\r\n\r\nSpring \xff sale\r\n'
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="people.csv"\r\n'
            b"Content-Type: text/csv\r\n\r\nexternal_id\r\nann\r\n--B--\r\n",
        ),
        ("application/x-www-form-urlencoded", b"target=new_segment&segment_name=Spring%20%FF%20sale"),
    ],
    ids=["multipart", "form"],
)
def test_a_form_field_its_charset_cannot_read_answers_400_naming_it(manager_alice, api_key_for, content_type, body):
    """Django reads a form's text with the 'replace' handler: a byte that is not UTF-8 in the new
    segment's name became U+FFFD, and the segment was made so named ("Spring � sale")."""
    from audiences.models import Import, Segment

    client = api_key_for(manager_alice, scopes=["ingest"])
    response = client.generic("POST", "/api/v1/imports/", body, content_type=content_type)
    assert (response.status_code, response["Content-Type"]) == (400, "application/json")
    assert response.json()["errors"] == [
        {
            "field": "segment_name",
            "code": "invalid",
            "detail": "Holds bytes that are not utf-8, the charset the body declares (or U+FFFD, which stands for "
            "them): send the text in UTF-8.",
        }
    ]
    assert not Import.objects.exists() and not Segment.objects.exists()
