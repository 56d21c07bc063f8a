"""Every error the request layer can raise answers in the error shape, as JSON.

The test client can hide what a real server does with raw bytes, so the body and
encoding cases also go over a socket to a live server.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest
from rest_framework.authtoken.models import Token

from kernia_billing.models import UsageEvent
from tests.api.entitlement_fixtures import *  # noqa: F403
from tests.api.test_entitlements_api import CHECK, TRACK, USAGE, assert_error
from tests.factories import UserFactory

BATCH = "/api/auth/billing/track/batch"
CHECKOUT = "/api/auth/billing/checkout"
PORTAL = "/api/auth/billing/portal"
POSTS = [TRACK, BATCH, CHECK, CHECKOUT, PORTAL]


@pytest.mark.django_db
@pytest.mark.parametrize("path", POSTS)
def test_a_body_over_the_upload_limit_is_413_in_the_error_shape(api, plan, path):
    body = json.dumps({"feature": "messages", "events": [], "blob": "x" * 3_000_000})

    response = api.generic("POST", path, body, content_type="application/json")

    error = assert_error(response, 413, "request_too_large")
    assert "2621440 bytes" in error["message"]
    assert UsageEvent.objects.count() == 0


@pytest.mark.django_db
@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize(
    "body",
    [b'{"feature": "m\xed\xa0\x80"}', b'{"feature": "\xff"}', b"\xc3"],
    ids=["utf8-encoded-surrogate", "invalid-byte", "truncated"],
)
def test_bytes_that_are_not_utf8_are_400_in_the_error_shape(api, plan, path, body):
    response = api.generic("POST", path, body, content_type="application/json")

    assert_error(response, 400, "invalid_json")
    assert UsageEvent.objects.count() == 0


@pytest.mark.django_db
def test_too_many_query_parameters_is_400_in_the_error_shape(api, plan):
    response = api.get(USAGE + "?" + "&".join(f"p{i}=1" for i in range(1100)))

    assert "DATA_UPLOAD_MAX_NUMBER_FIELDS" in assert_error(response, 400, "bad_request")["message"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "path",
    [
        "/api/auth/billing/nope",
        "/api/auth/billing/track/",
        "/api/auth/billing/track/batch/extra",
        "/api/auth/billing",
        "/api/auth/stripe/catalog/nope",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_an_unknown_path_under_the_api_is_a_json_404(api, anon, plan, path, method):
    for client in (api, anon):
        assert_error(client.generic(method, path), 404, "not_found")


@pytest.mark.django_db
@pytest.mark.parametrize("path", POSTS)
def test_media_type_accept_and_method_errors_keep_the_error_shape(api, plan, path):
    assert_error(api.generic("POST", path, "feature=x", content_type="text/csv"), 415)
    assert_error(api.post(path, {}, format="json", HTTP_ACCEPT="text/html"), 406)
    assert_error(api.put(path, {}, format="json"), 405, "method_not_allowed")
    assert_error(api.generic("POST", path, "{", content_type="application/json"), 400)


# --- over a real socket -----------------------------------------------------------------


@pytest.fixture
def raw_post(live_server, transactional_db, plan):
    """POST raw bytes to the live server as a token-authenticated user: (status, type, body)."""
    token = Token.objects.create(user=UserFactory())
    netloc = urlsplit(live_server.url).netloc

    def send(path: str, body: bytes, content_type: str = "application/json"):
        connection = http.client.HTTPConnection(netloc, timeout=10)
        try:
            connection.request(
                "POST",
                path,
                body=body,
                headers={"Content-Type": content_type, "Authorization": f"Token {token.key}"},
            )
            response = connection.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            connection.close()

    return send


def error_code(content_type: str, body: bytes) -> str:
    assert content_type.startswith("application/json"), body[:200]
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message", "fields"}
    return str(error["code"])


@pytest.mark.parametrize("path", [TRACK, BATCH, CHECK])
def test_over_a_socket_a_body_too_big_is_413_json(raw_post, settings, path):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"feature": "messages", "properties": {"x": "y" * 5000}}).encode()

    status, content_type, answer = raw_post(path, body)

    assert (status, error_code(content_type, answer)) == (413, "request_too_large")
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize("path", [TRACK, BATCH, CHECK])
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"feature": "m\xed\xa0\x80"}', "application/json"),
        (b'{"feature": "\xff\xfe"}', "application/json; charset=utf-8"),
        ('{"feature": "messages"}'.encode("utf-16-le"), "application/json"),
    ],
)
def test_over_a_socket_bad_encodings_are_400_json(raw_post, path, body, content_type):
    status, answer_type, answer = raw_post(path, body, content_type)

    assert (status, error_code(answer_type, answer)) == (400, "invalid_json")
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    "payload",
    [
        {"feature": "messages", "properties": {"note": "\ud800"}},
        {"events": [{"feature": "messages", "properties": {"\udfff": 1}}]},
    ],
)
def test_over_a_socket_a_lone_surrogate_records_nothing(raw_post, payload):
    path = BATCH if "events" in payload else TRACK
    status, content_type, answer = raw_post(path, json.dumps(payload).encode())

    if path == TRACK:
        assert (status, error_code(content_type, answer)) == (400, "invalid_request")
    else:
        assert status == 200
        assert json.loads(answer)["results"][0]["status"] == 400
    assert UsageEvent.objects.count() == 0
