"""The OpenAPI schema generates cleanly: no warning, valid OpenAPI."""

from django.core.management import call_command


def test_openapi_schema_validates_without_warnings(tmp_path, db):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    text = out.read_text()
    assert "/api/v1/campaigns/{campaign_id}/trigger/" in text
    assert "securitySchemes" in text
