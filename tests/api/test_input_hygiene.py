"""Input the database cannot store, or that is too deep or too big, is a 400 on every door.

Lone UTF-16 surrogates (JSON ``"\\ud800"``) and NUL characters are refused wherever
a string is stored or echoed; ``properties`` are bounded in depth, keys and bytes.
Nothing hostile is ever half-written: each test asserts the ledger stayed empty.
"""

from __future__ import annotations

import json

import pytest

import kernia_billing
from kernia_billing.exceptions import InvalidRequest
from kernia_billing.models import UsageEvent
from kernia_billing.types import TrackRequest
from tests.api.entitlement_fixtures import *  # noqa: F403
from tests.api.test_entitlements_api import CHECK, TRACK, USAGE, assert_error

pytestmark = pytest.mark.django_db

BATCH = "/api/auth/billing/track/batch"
CHECKOUT = "/api/auth/billing/checkout"
PORTAL = "/api/auth/billing/portal"
SURROGATE = "\ud800"


def nested(depth: int) -> dict:
    """``properties`` whose innermost object sits ``depth`` levels deep."""
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def post_json(api, path: str, payload: dict):
    # json.dumps escapes a lone surrogate as \ud800, which is what a client sends.
    return api.generic("POST", path, json.dumps(payload), content_type="application/json")


HOSTILE_PROPERTIES = [
    pytest.param({"note": SURROGATE}, id="surrogate-value"),
    pytest.param({SURROGATE: 1}, id="surrogate-key"),
    pytest.param({"a": [{"b": ["x", f"y{SURROGATE}"]}]}, id="surrogate-nested"),
    pytest.param({"a": [{"b\x00": 1}]}, id="nul-nested-key"),
    pytest.param(nested(300), id="300-deep"),
    pytest.param(nested(17), id="over-default-depth"),
    pytest.param({f"k{i}": i for i in range(257)}, id="too-many-keys"),
    pytest.param({"blob": "x" * 9000}, id="too-many-bytes"),
]


@pytest.mark.parametrize("properties", HOSTILE_PROPERTIES)
def test_track_refuses_unstorable_properties_with_400(api, plan, properties):
    response = post_json(api, TRACK, {"feature": "messages", "properties": properties})

    error = assert_error(response, 400, "invalid_request")
    assert set(error["fields"]) == {"properties"}
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize("properties", HOSTILE_PROPERTIES)
def test_batch_track_refuses_the_event_with_unstorable_properties(api, plan, properties):
    events = [
        {"feature": "messages", "idempotencyKey": "bad", "properties": properties},
        {"feature": "messages", "idempotencyKey": "good", "properties": {"ok": True}},
    ]
    response = post_json(api, BATCH, {"events": events})

    assert response.status_code == 200, response.content
    bad, good = response.json()["results"]
    assert (bad["ok"], bad["status"], bad["error"]["code"]) == (False, 400, "invalid_request")
    assert set(bad["error"]["fields"]) == {"properties"}
    assert good["ok"] is True
    assert list(UsageEvent.objects.values_list("idempotency_key", flat=True)) == ["good"]


def test_properties_at_the_documented_limits_are_stored(api, plan):
    at_limits = {"deep": nested(15), **{f"k{i}": i for i in range(200)}}
    response = post_json(api, TRACK, {"feature": "messages", "properties": at_limits})

    assert response.status_code == 201, response.content
    assert UsageEvent.objects.get().properties == at_limits


def test_properties_limits_are_settings(api, plan, settings):
    settings.KERNIA_BILLING = {
        **settings.KERNIA_BILLING,
        "MAX_PROPERTIES_DEPTH": 2,
        "MAX_PROPERTIES_KEYS": 3,
        "MAX_PROPERTIES_BYTES": 40,
    }
    for properties, message in [
        ({"a": {"b": {}}}, "at most 2 levels"),
        ({"a": 1, "b": 2, "c": {"d": 3}}, "at most 3 keys"),
        ({"a": "x" * 40}, "at most 40 bytes"),
    ]:
        response = post_json(api, TRACK, {"feature": "messages", "properties": properties})
        assert message in assert_error(response, 400, "invalid_request")["message"]
    within = post_json(api, TRACK, {"feature": "messages", "properties": {"a": {}}})
    assert within.status_code == 201, within.content
    assert UsageEvent.objects.count() == 1


@pytest.mark.parametrize("bad", [SURROGATE, "\x00"], ids=["surrogate", "nul"])
@pytest.mark.parametrize(
    ("path", "field", "extra"),
    [
        (TRACK, "feature", {}),
        (TRACK, "idempotencyKey", {"feature": "messages"}),
        (TRACK, "organizationId", {"feature": "messages"}),
        (TRACK, "customerId", {"feature": "messages"}),
        (CHECK, "feature", {}),
        (CHECK, "organizationId", {"feature": "messages"}),
        (CHECKOUT, "plan", {}),
        (CHECKOUT, "price", {}),
        (CHECKOUT, "successUrl", {"plan": "pro"}),
        (CHECKOUT, "cancelUrl", {"plan": "pro"}),
        (PORTAL, "returnUrl", {}),
    ],
)
def test_every_stored_or_echoed_string_refuses_unstorable_characters(
    api, plan, org, path, field, extra, bad
):
    response = post_json(api, path, {**extra, field: f"x{bad}"})

    error = assert_error(response, 400)
    assert field in error["fields"]
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize("field", ["feature", "idempotencyKey"])
def test_batch_refuses_unstorable_strings_in_events(api, plan, field):
    event = {"feature": "messages", field: f"x{SURROGATE}"}
    response = post_json(api, BATCH, {"events": [event]})

    error = assert_error(response, 400, "invalid_request")
    assert field in error["fields"]["events"]["0"]
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    "params",
    [
        {"organizationId": "1\x00"},
        {"customerId": "1\x00"},
        {"feature": "mes\x00sages"},
        {"from": "2024-01-01T00:00:00Z\x00"},
        {"to": "\x002024-01-01T00:00:00Z"},
    ],
)
def test_usage_query_values_with_nul_are_400(api, plan, org, params):
    error = assert_error(api.get(USAGE, params), 400)
    assert set(error["fields"]) == set(params)


# --- the Python API raises the same validation error ---------------------------------------


@pytest.mark.parametrize("properties", HOSTILE_PROPERTIES)
def test_python_track_raises_invalid_request(user, plan, properties):
    with pytest.raises(InvalidRequest) as caught:
        kernia_billing.track(user, "messages", 1, properties=properties)

    assert set(caught.value.fields) == {"properties"}
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"feature": f"m{SURROGATE}"}, "feature"),
        ({"feature": "m\x00"}, "feature"),
        ({"feature": "messages", "idempotency_key": f"k{SURROGATE}"}, "idempotencyKey"),
    ],
)
def test_python_track_and_check_refuse_unstorable_strings(user, plan, kwargs, field):
    with pytest.raises(InvalidRequest) as caught:
        kernia_billing.track(user, amount=1, **kwargs)
    assert field in caught.value.fields
    with pytest.raises(InvalidRequest):
        kernia_billing.check(user, kwargs["feature"] + "\x00")
    assert UsageEvent.objects.count() == 0


def test_python_track_batch_refuses_each_hostile_event(user, plan):
    results = kernia_billing.track_batch(
        user,
        [
            TrackRequest(feature="messages", amount=1, properties={"a": SURROGATE}),
            TrackRequest(feature="messages", amount=1, properties=nested(500)),
            TrackRequest(feature=f"m{SURROGATE}", amount=1),
            TrackRequest(feature="messages", amount=1, idempotency_key="ok"),
        ],
    )

    assert [(r.ok, r.status) for r in results] == [
        (False, 400),
        (False, 400),
        (False, 400),
        (True, 201),
    ]
    assert list(UsageEvent.objects.values_list("idempotency_key", flat=True)) == ["ok"]
