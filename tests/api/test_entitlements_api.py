"""POST billing/check, POST billing/track, GET billing/usage through REST."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from django.db import transaction
from django.test import override_settings
from django.utils.dateparse import parse_datetime

from kernia_billing.models import Entitlement, UsageEvent
from kernia_billing.services.usage.rollups import rebuild_rollups
from tests.api.entitlement_fixtures import *  # noqa: F403
from tests.api.entitlement_fixtures import CHECK_FIELDS, SEED, TRACK_FIELDS
from tests.factories import PlanFactory, UserFactory

CHECK = "/api/auth/billing/check"
TRACK = "/api/auth/billing/track"
USAGE = "/api/auth/billing/usage"

pytestmark = pytest.mark.django_db


def assert_error(response, status: int, code: str | None = None) -> dict:
    """A 4xx in the spec's shape: JSON, ``{"error": {"code", "message", "fields"}}``."""
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "fields"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["fields"], dict)
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def usage_of(user_or_customer_feature: str) -> int:
    return Entitlement.objects.get(feature__key=user_or_customer_feature).usage


# --- check -------------------------------------------------------------------------------


def test_check_the_seed_feature_answers_every_field(api, plan):
    response = api.post(CHECK, {"feature": "messages"}, format="json")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == CHECK_FIELDS
    assert body["allowed"] is True
    assert body["reason"] is None
    assert body["feature"] == "messages"
    assert body["kind"] == "metered"
    assert (body["balance"], body["included"], body["usage"]) == (10000, 10000, 0)
    assert body["unlimited"] is False
    assert body["allowOverage"] is False
    assert body["resetPeriod"] == "month"
    assert parse_datetime(body["nextResetAt"]) > datetime.now(UTC)
    assert body["plan"] == "free"


def test_check_never_records_usage(api, plan):
    for _ in range(3):
        assert api.post(CHECK, {"feature": "messages", "required": 5}, format="json").json()[
            "allowed"
        ]

    assert UsageEvent.objects.count() == 0
    assert usage_of("messages") == 0


def test_check_denied_for_more_than_the_balance_is_200_with_a_reason(api, plan):
    response = api.post(CHECK, {"feature": "messages", "required": 10001}, format="json")

    assert response.status_code == 200
    assert response.json()["allowed"] is False
    assert response.json()["reason"] == "insufficient_balance"
    assert response.json()["balance"] == 10000


def test_check_required_zero_is_allowed(api, plan):
    response = api.post(CHECK, {"feature": "messages", "required": 0}, format="json")
    assert response.json()["allowed"] is True


def test_check_a_feature_the_plan_lacks_is_not_included(api, plan):
    response = api.post(CHECK, {"feature": "exports"}, format="json")

    assert response.status_code == 200
    assert response.json()["allowed"] is False
    assert response.json()["reason"] == "not_included"
    assert response.json()["plan"] == "free"


def test_check_without_any_plan_is_no_plan(api, messages):
    response = api.post(CHECK, {"feature": "messages"}, format="json")

    assert response.status_code == 200
    assert response.json()["allowed"] is False
    assert response.json()["reason"] == "no_plan"
    assert response.json()["plan"] is None


def test_check_boolean_feature(api, plan):
    body = api.post(CHECK, {"feature": "sso"}, format="json").json()

    assert body["allowed"] is True
    assert body["kind"] == "boolean"
    assert body["balance"] is None


def test_check_unknown_feature_is_404(api, plan):
    error = assert_error(api.post(CHECK, {"feature": "nope"}, format="json"), 404)
    assert error["code"] == "unknown_feature"


# --- track -------------------------------------------------------------------------------


def test_track_records_usage_and_answers_201(api, plan):
    response = api.post(
        TRACK,
        {"feature": "messages", "amount": 3, "properties": {"channel": "email"}},
        format="json",
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == TRACK_FIELDS
    assert body["feature"] == "messages"
    assert (body["amount"], body["balance"], body["usage"], body["included"]) == (
        3,
        9997,
        3,
        10000,
    )
    assert body["unlimited"] is False
    assert body["replayed"] is False
    event = UsageEvent.objects.get(pk=body["eventId"])
    assert event.properties == {"channel": "email"}
    assert parse_datetime(body["createdAt"]) == event.created_at
    check = api.post(CHECK, {"feature": "messages"}, format="json").json()
    assert (check["usage"], check["balance"]) == (3, 9997)


def test_track_amount_defaults_to_one(api, plan):
    response = api.post(TRACK, {"feature": "messages"}, format="json")
    assert response.status_code == 201
    assert response.json()["amount"] == 1


def test_track_replay_returns_the_first_result_and_counts_once(api, plan):
    payload = {"feature": "messages", "amount": 2, "idempotencyKey": "msg-1"}
    first = api.post(TRACK, payload, format="json")
    again = api.post(TRACK, payload, format="json")

    assert first.status_code == again.status_code == 201
    assert again.json() == {**first.json(), "replayed": True}
    assert again["Idempotent-Replayed"] == "true"
    assert UsageEvent.objects.count() == 1
    assert usage_of("messages") == 2


def test_track_same_key_other_payload_is_409_and_records_nothing(api, plan):
    api.post(TRACK, {"feature": "messages", "amount": 2, "idempotencyKey": "k"}, format="json")

    response = api.post(
        TRACK, {"feature": "messages", "amount": 3, "idempotencyKey": "k"}, format="json"
    )

    assert_error(response, 409, "idempotency_conflict")
    assert UsageEvent.objects.count() == 1
    assert usage_of("messages") == 2


def test_idempotency_keys_are_per_owner(api, plan):
    other = UserFactory()
    from rest_framework.test import APIClient

    other_client = APIClient()
    other_client.force_authenticate(other)
    payload = {"feature": "messages", "idempotencyKey": "same"}

    assert api.post(TRACK, payload, format="json").json()["replayed"] is False
    assert other_client.post(TRACK, payload, format="json").json()["replayed"] is False
    assert UsageEvent.objects.count() == 2


def test_track_beyond_the_balance_is_402_and_records_nothing(api, plan):
    api.post(TRACK, {"feature": "messages", "amount": 9999}, format="json")

    error = assert_error(api.post(TRACK, {"feature": "messages", "amount": 2}, format="json"), 402)

    assert error["code"] == "insufficient_balance"
    assert error["fields"]["balance"] == 1
    assert UsageEvent.objects.count() == 1
    assert usage_of("messages") == 9999
    # The last unit is still there.
    assert api.post(TRACK, {"feature": "messages", "amount": 1}, format="json").status_code == 201
    assert api.post(CHECK, {"feature": "messages"}, format="json").json()["reason"] == (
        "insufficient_balance"
    )


def test_track_a_feature_the_plan_lacks_is_402_not_included(api, plan):
    assert_error(api.post(TRACK, {"feature": "exports"}, format="json"), 402, "not_included")
    assert UsageEvent.objects.count() == 0


def test_track_without_a_plan_is_402_no_plan(api, messages):
    assert_error(api.post(TRACK, {"feature": "messages"}, format="json"), 402, "no_plan")


def test_track_a_boolean_feature_is_400_not_trackable(api, plan):
    assert_error(api.post(TRACK, {"feature": "sso"}, format="json"), 400, "not_trackable")
    assert UsageEvent.objects.count() == 0


def test_track_unknown_feature_is_404(api, plan):
    assert_error(api.post(TRACK, {"feature": "nope"}, format="json"), 404, "unknown_feature")


def test_metered_amount_must_be_positive(api, plan):
    api.post(TRACK, {"feature": "messages", "amount": 5}, format="json")

    error = assert_error(api.post(TRACK, {"feature": "messages", "amount": -1}, format="json"), 400)

    assert "amount" in error["fields"]
    assert usage_of("messages") == 5


@pytest.mark.parametrize("feature", ["members", "projects"])
def test_seats_and_quantities_go_up_and_down_never_below_zero(api, plan, feature):
    def track(amount):
        return api.post(TRACK, {"feature": feature, "amount": amount}, format="json")

    assert track(3).json()["usage"] == 3
    assert track(-2).json()["usage"] == 1
    assert track(4).json()["usage"] == 5
    # The plan includes 5: no room left without overage.
    assert_error(track(1), 402, "insufficient_balance")
    assert_error(track(-6), 409, "usage_below_zero")
    assert track(-5).json()["usage"] == 0
    assert_error(track(-1), 409, "usage_below_zero")
    assert usage_of(feature) == 0
    assert UsageEvent.objects.filter(feature__key=feature).count() == 4


# --- bad input: always 4xx in the error shape, never a 500 or HTML ------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "feature"),
        ({"feature": ""}, "feature"),
        ({"feature": None}, "feature"),
        ({"feature": 12}, "feature"),
        ({"feature": "x" * 101}, "feature"),
        ({"feature": "messages", "amount": 0}, "amount"),
        ({"feature": "messages", "amount": -3}, "amount"),
        ({"feature": "messages", "amount": 1.5}, "amount"),
        ({"feature": "messages", "amount": 1.0}, "amount"),
        ({"feature": "messages", "amount": "1"}, "amount"),
        ({"feature": "messages", "amount": True}, "amount"),
        ({"feature": "messages", "amount": None}, "amount"),
        ({"feature": "messages", "amount": [1]}, "amount"),
        ({"feature": "messages", "amount": 10**12}, "amount"),
        ({"feature": "messages", "amount": 10**30}, "amount"),
        ({"feature": "messages", "amount": -(10**30)}, "amount"),
        ({"feature": "messages", "idempotencyKey": "k" * 256}, "idempotencyKey"),
        ({"feature": "messages", "idempotencyKey": 42}, "idempotencyKey"),
        ({"feature": "messages", "properties": [1, 2]}, "properties"),
        ({"feature": "messages", "properties": "text"}, "properties"),
        ({"feature": "messages", "properties": {"blob": "x" * 9000}}, "properties"),
        ({"feature": "messages", "organizationId": "abc"}, "organizationId"),
        ({"feature": "messages", "organizationId": 1.5}, "organizationId"),
        ({"feature": "messages", "organizationId": True}, "organizationId"),
        ({"feature": "messages", "organizationId": 10**30}, "organizationId"),
        ({"feature": "messages", "organizationId": "9" * 65}, "organizationId"),
        ({"feature": "messages", "organizationId": {"id": 1}}, "organizationId"),
    ],
)
def test_bad_track_input_is_400(api, plan, payload, field):
    error = assert_error(api.post(TRACK, payload, format="json"), 400)

    assert field in error["fields"]
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "feature"),
        ({"feature": "messages", "required": -1}, "required"),
        ({"feature": "messages", "required": 2.5}, "required"),
        ({"feature": "messages", "required": "2"}, "required"),
        ({"feature": "messages", "required": False}, "required"),
        ({"feature": "messages", "required": 10**40}, "required"),
    ],
)
def test_bad_check_input_is_400(api, plan, payload, field):
    error = assert_error(api.post(CHECK, payload, format="json"), 400, "invalid_request")
    assert field in error["fields"]


@pytest.mark.parametrize("path", [CHECK, TRACK])
@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        ("{not json", "application/json", 400, "invalid_json"),
        ('{"feature": "messages", "amount": NaN}', "application/json", 400, "invalid_json"),
        (
            '{"feature": "messages", "amount": 1e400, "required": 1e400}',
            "application/json",
            400,
            None,
        ),
        ('{"feature": "messages", "amount": ' + "9" * 5000 + "}", "application/json", 400, None),
        ("", "application/json", 400, "invalid_request"),
        ("[1, 2]", "application/json", 400, "invalid_request"),
        ('"messages"', "application/json", 400, "invalid_request"),
        ("null", "application/json", 400, "invalid_request"),
        ('{"feature": "messages"}', "text/plain", 415, "unsupported_media_type"),
        ("feature=messages", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ('{"feature": "messages"}', "application/xml", 415, "unsupported_media_type"),
        (b"\xff\xfe\x00garbage", "application/json", 400, "invalid_json"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_refused_in_the_error_shape(
    api, plan, path, body, content_type, status, code
):
    response = api.generic("POST", path, body, content_type=content_type)

    assert_error(response, status, code)
    assert UsageEvent.objects.count() == 0


def test_multipart_form_is_415(api, plan):
    response = api.post(TRACK, {"feature": "messages"}, format="multipart")
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", [CHECK, TRACK])
def test_wrong_method_is_405_in_the_error_shape(api, plan, path):
    assert_error(api.get(path), 405, "method_not_allowed")


def test_asking_for_html_still_gets_json(api, plan):
    response = api.post(
        CHECK, {"feature": "messages"}, format="json", HTTP_ACCEPT="text/html,*/*;q=0.8"
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")

    only_html = api.post(CHECK, {"feature": "nope"}, format="json", HTTP_ACCEPT="text/html")
    assert only_html["Content-Type"].startswith("application/json")
    assert "error" in only_html.json()


def test_unknown_organization_is_refused_in_the_error_shape(api, plan, org):
    response = api.post(
        TRACK, {"feature": "messages", "organizationId": org.pk + 1000}, format="json"
    )
    assert_error(response, 403)


# --- throttling --------------------------------------------------------------------------


@override_settings(
    REST_FRAMEWORK={
        "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
        "DEFAULT_THROTTLE_RATES": {"kernia_billing": "3/minute"},
        "EXCEPTION_HANDLER": "kernia_billing.api.exceptions.exception_handler",
    }
)
def test_throttled_callers_get_429_in_the_error_shape(api, plan):
    for _ in range(3):
        assert api.post(CHECK, {"feature": "messages"}, format="json").status_code == 200

    response = api.post(TRACK, {"feature": "messages"}, format="json")

    assert_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0
    assert UsageEvent.objects.count() == 0


def test_no_throttling_without_a_configured_rate(api, plan):
    for _ in range(20):
        assert api.post(CHECK, {"feature": "messages"}, format="json").status_code == 200


# --- usage history -----------------------------------------------------------------------


def _track_at(api, when: datetime, feature: str = "messages", amount: int = 1) -> int:
    response = api.post(TRACK, {"feature": feature, "amount": amount}, format="json")
    assert response.status_code == 201, response.content
    event_id = response.json()["eventId"]
    # History only: move the ledger row in time to test the filters (and its rollup).
    UsageEvent.objects.filter(pk=event_id).update(created_at=when)
    with transaction.atomic():
        rebuild_rollups([UsageEvent.objects.get(pk=event_id).customer_id])
    return event_id


def test_usage_lists_events_newest_first_with_limit_offset_pagination(api, plan):
    ids = [
        _track_at(api, datetime(2025, 3, day, 12, tzinfo=UTC), amount=day) for day in range(1, 6)
    ]

    page = api.get(USAGE, {"limit": 2})

    assert page.status_code == 200
    body = page.json()
    assert body["count"] == 5
    assert (body["limit"], body["offset"]) == (2, 0)
    assert [event["id"] for event in body["results"]] == [ids[4], ids[3]]
    assert body["previous"] is None
    first = body["results"][0]
    assert set(first) == {
        "id",
        "feature",
        "amount",
        "balanceAfter",
        "usageAfter",
        "idempotencyKey",
        "properties",
        "createdAt",
    }
    assert (first["feature"], first["amount"]) == ("messages", 5)
    assert "daily" not in body

    second = api.get(body["next"]).json()
    assert [event["id"] for event in second["results"]] == [ids[2], ids[1]]
    last = api.get(second["next"]).json()
    assert [event["id"] for event in last["results"]] == [ids[0]]
    assert last["next"] is None
    assert api.get(last["previous"]).json()["results"] == second["results"]


def test_usage_pages_of_all_features_interleave_them_newest_first(api, plan):
    # Two features, their events interleaved in time, two on one instant (the id decides).
    times = [datetime(2025, 3, 1 + i // 2, 8 + i % 3, tzinfo=UTC) for i in range(9)]
    times[5] = times[4]
    ids = [
        _track_at(api, when, feature="members" if i % 3 == 0 else "messages")
        for i, when in enumerate(times)
    ]
    newest_first = [i for _, i in sorted(zip(times, ids, strict=True), reverse=True)]

    pages, body = [], api.get(USAGE, {"limit": 2}).json()
    while True:
        pages.append([event["id"] for event in body["results"]])
        if body["next"] is None:
            break
        body = api.get(body["next"]).json()
    assert [i for page in pages for i in page] == newest_first
    assert [len(page) for page in pages] == [2, 2, 2, 2, 1]
    # Back again with the keyset cursor's previous links, and by offset.
    backwards = []
    while body["previous"] is not None:
        body = api.get(body["previous"]).json()
        backwards.append([event["id"] for event in body["results"]])
    assert backwards == pages[-2::-1]
    offset = api.get(USAGE, {"limit": 3, "offset": 4}).json()
    assert [event["id"] for event in offset["results"]] == newest_first[4:7]


def test_usage_filters_by_feature_and_time(api, plan):
    march = _track_at(api, datetime(2025, 3, 10, tzinfo=UTC))
    april = _track_at(api, datetime(2025, 4, 10, tzinfo=UTC))
    _track_at(api, datetime(2025, 4, 11, tzinfo=UTC), feature="members")

    def ids(**params):
        return [event["id"] for event in api.get(USAGE, params).json()["results"]]

    assert ids(feature="messages") == [april, march]
    assert ids(**{"from": "2025-04-01T00:00:00Z"}, feature="messages") == [april]
    assert ids(to="2025-04-10T00:00:00Z") == [march]
    assert ids(**{"from": "2025-03-10T00:00:00Z", "to": "2025-03-10T00:00:01Z"}) == [march]
    assert len(ids()) == 3


def test_usage_daily_totals_cover_all_matching_events(api, plan):
    _track_at(api, datetime(2025, 3, 1, 1, tzinfo=UTC), amount=2)
    _track_at(api, datetime(2025, 3, 1, 23, 59, tzinfo=UTC), amount=3)
    _track_at(api, datetime(2025, 3, 2, 0, 0, tzinfo=UTC), amount=4)
    _track_at(api, datetime(2025, 3, 2, 8, tzinfo=UTC), feature="members", amount=2)
    _track_at(api, datetime(2025, 3, 2, 9, tzinfo=UTC), feature="members", amount=-1)

    body = api.get(USAGE, {"daily": "true", "limit": 1}).json()

    assert len(body["results"]) == 1
    assert body["daily"] == [
        {"date": "2025-03-01", "feature": "messages", "amount": 5, "events": 2},
        {"date": "2025-03-02", "feature": "members", "amount": 1, "events": 2},
        {"date": "2025-03-02", "feature": "messages", "amount": 4, "events": 1},
    ]
    filtered = api.get(USAGE, {"daily": "true", "feature": "members"}).json()
    assert filtered["daily"] == [
        {"date": "2025-03-02", "feature": "members", "amount": 1, "events": 2}
    ]


def test_usage_of_an_owner_without_a_customer_is_empty_and_creates_nothing(api, plan):
    from kernia_billing.models import BillingCustomer

    body = api.get(USAGE).json()

    assert body["count"] == 0 and body["results"] == []
    assert BillingCustomer.objects.count() == 0


def test_usage_only_shows_the_callers_events(api, plan):
    from rest_framework.test import APIClient

    other = APIClient()
    other.force_authenticate(UserFactory())
    other.post(TRACK, {"feature": "messages"}, format="json")
    mine = api.post(TRACK, {"feature": "messages"}, format="json").json()["eventId"]

    assert [e["id"] for e in api.get(USAGE).json()["results"]] == [mine]


def test_usage_unknown_feature_filter_is_404(api, plan):
    assert_error(api.get(USAGE, {"feature": "nope"}), 404, "unknown_feature")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "9" * 400}, "offset"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2025-13-45"}, "to"),
        ({"from": "2025-04-02T00:00:00Z", "to": "2025-04-01T00:00:00Z"}, "to"),
        ({"daily": "maybe"}, "daily"),
        ({"feature": "x" * 101}, "feature"),
        ({"organizationId": "abc"}, "organizationId"),
    ],
)
def test_bad_usage_queries_are_400(api, plan, params, field):
    error = assert_error(api.get(USAGE, params), 400)
    assert field in error["fields"]


def test_seed_plan_in_json_form(plan):
    """The fixture is the seed's feature, as its JSON form says."""
    plan_feature = plan.plan_features.get(feature__key="messages")
    seed = plan_feature.as_seed_dict()
    assert {k: seed[k] for k in SEED} == SEED


def test_another_plan_does_not_leak_into_check(api, plan, messages):
    PlanFactory(key="pro", name="Pro")
    assert api.post(CHECK, {"feature": "messages"}, format="json").json()["plan"] == "free"


def test_error_bodies_are_json_parseable_for_huge_payloads(api, plan):
    body = json.dumps({"feature": "messages", "properties": {"k": "v" * 100_000}})
    response = api.generic("POST", TRACK, body, content_type="application/json")
    assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "payload",
    [
        {"feature": "mes\u0000sages"},
        {"feature": "messages", "idempotencyKey": "k\u0000"},
        {"feature": "messages", "properties": {"note": "a\u0000b"}},
        {"feature": "messages", "properties": {"a\u0000": 1}},
        {"feature": "messages", "organizationId": "1\u0000"},
    ],
)
def test_nul_characters_are_400_not_a_database_error(api, plan, payload):
    # PostgreSQL cannot store NUL in text or jsonb: refuse it at the door.
    error = assert_error(api.post(TRACK, payload, format="json"), 400)
    assert set(error["fields"]) & set(payload)
    assert UsageEvent.objects.count() == 0


def test_nul_in_a_usage_filter_is_400(api, plan):
    assert_error(api.get(USAGE, {"feature": "mes\u0000sages"}), 400)


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"feature": "messages", "properties": ' + '{"a":' * 50_000 + "1" + "}" * 50_001,
    ],
)
def test_absurdly_nested_json_is_400(api, plan, body):
    response = api.generic("POST", TRACK, body, content_type="application/json")
    assert_error(response, 400)
