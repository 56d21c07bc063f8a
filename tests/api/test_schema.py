"""The served OpenAPI schema documents the entitlement endpoints and the error shape."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from tests.api.entitlement_fixtures import CHECK_FIELDS, TRACK_FIELDS

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema(django_db_blocker):
    from rest_framework.test import APIClient

    with django_db_blocker.unblock():
        response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def resolve(schema: dict, ref_holder: dict) -> dict:
    name = ref_holder["$ref"].rsplit("/", 1)[-1]
    return schema["components"]["schemas"][name]


def json_schema(operation: dict, status: str) -> dict:
    return operation["responses"][status]["content"]["application/json"]["schema"]


def test_check_is_documented(schema):
    operation = schema["paths"]["/api/auth/billing/check"]["post"]
    request = resolve(schema, operation["requestBody"]["content"]["application/json"]["schema"])
    response = resolve(schema, json_schema(operation, "200"))

    assert {"feature", "required", "organizationId", "customerId", "userId"} <= set(
        request["properties"]
    )
    assert request["required"] == ["feature"]
    # The breakdown fields are only present when asked for ("breakdown": true);
    # overage only for features that allow it.
    optional = {"nextExpiry", "grants", "creditBalance", "creditCost", "overage"}
    assert set(response["properties"]) == CHECK_FIELDS | optional
    assert not optional & set(response.get("required", []))
    for status in ("400", "401", "403", "404", "429"):
        assert json_schema(operation, status)["$ref"].endswith("/Error")


def test_track_is_documented(schema):
    operation = schema["paths"]["/api/auth/billing/track"]["post"]
    request = resolve(schema, operation["requestBody"]["content"]["application/json"]["schema"])
    response = resolve(schema, json_schema(operation, "201"))

    assert set(request["properties"]) >= {"feature", "amount", "idempotencyKey", "properties"}
    assert request["properties"]["idempotencyKey"]["maxLength"] == 255
    assert request["properties"]["amount"]["type"] == "integer"
    assert request["properties"]["properties"]["type"] == "object"
    assert set(response["properties"]) == TRACK_FIELDS | {"creditBalance", "creditCost"}
    for status in ("400", "402", "404", "409", "415", "429"):
        assert json_schema(operation, status)["$ref"].endswith("/Error")


def test_usage_is_documented(schema):
    operation = schema["paths"]["/api/auth/billing/usage"]["get"]
    parameters = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    page = resolve(schema, json_schema(operation, "200"))

    assert {"feature", "from", "to", "daily", "limit", "offset", "organizationId"} <= parameters
    assert {"count", "next", "previous", "results", "daily"} <= set(page["properties"])


def test_the_error_shape_is_a_component(schema):
    error = schema["components"]["schemas"]["Error"]
    detail = resolve(schema, error["properties"]["error"])

    assert error["required"] == ["error"]
    assert set(detail["properties"]) == {"code", "message", "fields"}


def test_schema_generation_validates_without_warnings(tmp_path):
    # Fails on any drf-spectacular warning or an invalid OpenAPI document, for every view.
    call_command(
        "spectacular",
        "--validate",
        "--fail-on-warn",
        "--urlconf",
        "example_project.api_urls",
        "--file",
        str(tmp_path / "s.yml"),
    )
    assert (tmp_path / "s.yml").read_text().count("/api/auth/billing/") >= 3


def test_the_schema_needs_no_project_wide_schema_class(settings):
    from drf_spectacular.generators import SchemaGenerator

    settings.REST_FRAMEWORK = {
        k: v for k, v in settings.REST_FRAMEWORK.items() if k != "DEFAULT_SCHEMA_CLASS"
    }
    from example_project.api_urls import urlpatterns as billing_api

    assert "DEFAULT_SCHEMA_CLASS" not in settings.REST_FRAMEWORK  # as the example runs
    generated = SchemaGenerator(patterns=billing_api).get_schema(request=None, public=True)
    assert "/api/auth/billing/check" in generated["paths"]
    assert "/api/auth/billing/track" in generated["paths"]


def test_swagger_ui_is_served_without_a_cdn(client):
    page = client.get("/api/docs/").content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "cdn.jsdelivr.net" not in page and "unpkg.com" not in page
