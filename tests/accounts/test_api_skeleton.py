from rest_framework.test import APIClient


def test_openapi_schema_is_served(db):
    response = APIClient().get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["info"]["title"] == "Pushdesk API"
    assert "/api/v1/me/" in schema["paths"]
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_docs_are_served_offline(client, db):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui" in html
    # The docs' scripts come from the sidecar's static files, never from a CDN.
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in html
    assert "cdn." not in html and "unpkg" not in html


def test_unknown_api_path_is_a_json_404(manager_alice, api_key_for):
    response = api_key_for(manager_alice).get("/api/v1/nothing-here/")
    assert response.status_code == 404
