"""POST billing/track/batch: each event answered as single track would, in far fewer statements."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models import Sum
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from kernia_billing.models import BillingCustomer, Entitlement, FeatureKind, ResetPeriod, UsageEvent
from tests.api.entitlement_fixtures import *  # noqa: F403
from tests.api.test_entitlements_api import TRACK, TRACK_FIELDS, assert_error
from tests.factories import (
    FeatureFactory,
    OrganizationFactory,
    PlanFeatureFactory,
    StaffFactory,
    UserFactory,
)

BATCH = "/api/auth/billing/track/batch"

pytestmark = pytest.mark.django_db


def post_batch(client, events, **extra):
    return client.post(BATCH, {"events": events, **extra}, format="json")


def results_of(response) -> list[dict]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("application/json")
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(len(results)))
    return results


def assert_refused(item: dict, status: int, code: str) -> None:
    assert item["ok"] is False
    assert item["status"] == status
    assert set(item["error"]) == {"code", "message", "fields"}
    assert item["error"]["code"] == code
    assert item["error"]["message"]


def test_events_are_answered_in_order_with_balances(api, plan):
    results = results_of(post_batch(api, [{"feature": "messages", "amount": 4000}] * 3))

    assert [r["ok"] for r in results] == [True, True, False]
    assert [r["balance"] for r in results[:2]] == [6000, 2000]
    assert {"index", "ok", "status"} | TRACK_FIELDS == set(results[0])
    assert results[0]["status"] == 201 and results[0]["replayed"] is False
    assert_refused(results[2], 402, "insufficient_balance")
    assert Entitlement.objects.get(feature__key="messages").usage == 8000
    assert UsageEvent.objects.count() == 2


def test_each_refusal_carries_the_code_single_track_gives(api, plan):
    events = [
        {"feature": "sso"},  # boolean: not trackable
        {"feature": "nope"},  # unknown feature
        {"feature": "exports"},  # not on the plan
        {"feature": "messages", "amount": -2},  # metered amounts are positive
        {"feature": "members", "amount": -1},  # seats below zero
    ]
    results = results_of(post_batch(api, events))

    for event, item in zip(events, results, strict=True):
        single = api.post(TRACK, event, format="json")
        assert item["status"] == single.status_code, (event, item)
        assert item["error"]["code"] == single.json()["error"]["code"], (event, item)
    assert UsageEvent.objects.count() == 0


def test_an_event_of_the_wrong_shape_fails_the_request_naming_it(api, plan):
    events = [
        {"feature": "messages"},
        {"feature": "messages", "amount": "3"},  # not an integer
        {"amount": 1},  # feature missing
        {"feature": "messages", "amount": 10**12},  # beyond MAX_TRACK_AMOUNT
        {"feature": "messages", "idempotencyKey": "k" * 256},
    ]
    error = assert_error(post_batch(api, events), 400, "invalid_request")

    assert set(error["fields"]["events"]) == {"1", "2", "3", "4"}
    assert set(error["fields"]["events"]["1"]) == {"amount"}
    assert set(error["fields"]["events"]["2"]) == {"feature"}
    assert UsageEvent.objects.count() == 0


def test_idempotency_within_the_batch_and_against_single_track(api, plan):
    first = api.post(TRACK, {"feature": "messages", "idempotencyKey": "a"}, format="json")
    events = [
        {"feature": "messages", "idempotencyKey": "a"},  # replay of the single track
        {"feature": "messages", "amount": 2, "idempotencyKey": "a"},  # conflict
        {"feature": "messages", "amount": 5, "idempotencyKey": "b"},
        {"feature": "messages", "amount": 5, "idempotencyKey": "b"},  # replay in the batch
    ]
    results = results_of(post_batch(api, events))

    assert results[0]["replayed"] is True and results[0]["eventId"] == first.json()["eventId"]
    assert_refused(results[1], 409, "idempotency_conflict")
    assert results[2]["replayed"] is False
    assert results[3]["replayed"] is True and results[3]["eventId"] == results[2]["eventId"]

    again = results_of(post_batch(api, events))  # the whole batch retried: counted once
    assert [r.get("eventId") for r in again] == [r.get("eventId") for r in results]
    assert all(r["replayed"] for r in again if r["ok"])
    assert Entitlement.objects.get(feature__key="messages").usage == 6
    assert UsageEvent.objects.count() == 2


def test_a_full_batch_is_exact_in_a_handful_of_statements(api, plan):
    api.post(TRACK, {"feature": "messages"}, format="json")  # the customer exists now
    events = [{"feature": "messages", "idempotencyKey": f"k{i}"} for i in range(1000)]
    with CaptureQueriesContext(connection) as queries:
        results = results_of(post_batch(api, events))

    assert all(r["ok"] for r in results)
    assert results[-1]["balance"] == 8999
    # SQLite's bulk INSERT goes in chunks of ~100 rows (its parameter limit); PG in two.
    assert len(queries) < 25, [q["sql"][:60] for q in queries]
    assert UsageEvent.objects.aggregate(total=Sum("amount"))["total"] == 1001
    assert Entitlement.objects.get(feature__key="messages").usage == 1001


def test_over_the_limit_is_refused_whole(api, plan):
    with override_settings(KERNIA_BILLING={"MAX_BATCH_SIZE": 3}):
        error = assert_error(post_batch(api, [{"feature": "messages"}] * 4), 400, "invalid_request")
    assert "events" in error["fields"]
    assert UsageEvent.objects.count() == 0


@pytest.mark.parametrize(
    "body",
    [{}, {"events": "x"}, {"events": [1, 2]}, {"events": None}, [{"feature": "messages"}]],
    ids=["missing", "string", "not-objects", "null", "bare-list"],
)
def test_bad_envelopes_are_400_in_the_error_shape(api, plan, body):
    assert_error(api.post(BATCH, body, format="json"), 400, "invalid_request")


def test_non_json_is_refused(api, plan):
    assert_error(api.post(BATCH, "{", content_type="application/json"), 400, "invalid_json")
    assert_error(api.post(BATCH, {"events": "x"}), 415, "unsupported_media_type")


def test_anonymous_callers_get_no_data(anon, plan):
    response = post_batch(anon, [{"feature": "messages"}])
    assert response.status_code in (401, 403)
    assert "error" in response.json()
    assert UsageEvent.objects.count() == 0


def test_organization_members_bill_their_organization(api, plan, org):
    results = results_of(post_batch(api, [{"feature": "messages"}], organizationId=org.pk))

    assert results[0]["ok"]
    assert BillingCustomer.objects.get().owner == org


def test_non_members_and_per_event_owners_are_forbidden_to_users(api, plan, user):
    stranger = OrganizationFactory()
    assert_error(post_batch(api, [{"feature": "messages"}], organizationId=stranger.pk), 403)

    other = UserFactory()
    results = results_of(
        post_batch(api, [{"feature": "messages", "userId": other.pk}, {"feature": "messages"}])
    )
    assert_refused(results[0], 403, "permission_denied")
    assert results[1]["ok"]
    assert BillingCustomer.objects.get().owner == user


def test_staff_name_an_owner_per_event(plan):
    staff = StaffFactory()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff).key}")
    alice, bob = UserFactory(), UserFactory()
    organization = OrganizationFactory()

    results = results_of(
        post_batch(
            client,
            [
                {"feature": "messages", "amount": 3, "userId": alice.pk},
                {"feature": "messages", "amount": 5, "userId": bob.pk},
                {"feature": "messages", "amount": 7, "organizationId": organization.pk},
                {"feature": "messages", "userId": 999999},
                {"feature": "messages", "userId": "x"},
                {"feature": "messages", "amount": 1, "userId": alice.pk},
            ],
        )
    )

    assert [r["usage"] for r in results if r["ok"]] == [3, 5, 7, 4]
    assert_refused(results[3], 404, "unknown_owner")
    assert_refused(results[4], 400, "invalid_request")
    usage = {
        e.customer.owner: e.usage
        for e in Entitlement.objects.filter(feature__key="messages").select_related("customer")
    }
    assert usage == {alice: 4, bob: 5, organization: 7}


def test_a_pool_feature_is_answered_in_its_units_with_the_pools_credits(api, plan, messages):
    credits = FeatureFactory(key="credits", kind=FeatureKind.CREDITS)
    FeatureFactory(key="images", kind=FeatureKind.METERED, credit_pool=credits, credit_cost=20)
    PlanFeatureFactory(plan=plan, feature=credits, included=100, reset_period=ResetPeriod.MONTH)
    events = [
        {"feature": "images", "amount": 2, "idempotencyKey": "img-1"},  # 40 credits
        {"feature": "messages", "amount": 1},  # a plain feature: no credit fields
        {"feature": "images", "amount": 4},  # 80 credits, 60 left: refused
    ]
    results = results_of(post_batch(api, events))

    assert results[0]["ok"] is True and results[0]["status"] == 201
    assert {k: results[0][k] for k in ("feature", "amount", "balance", "replayed")} == {
        "feature": "images",
        "amount": 2,
        "balance": 3,
        "replayed": False,
    }
    assert (results[0]["creditBalance"], results[0]["creditCost"]) == (60, 20)
    assert "creditCost" not in results[1]
    assert_refused(results[2], 402, "insufficient_balance")
    single = api.post(TRACK, {"feature": "images", "amount": 4}, format="json")
    assert results[2]["error"] == single.json()["error"]

    again = results_of(post_batch(api, events[:1]))
    assert again[0]["replayed"] is True and again[0]["eventId"] == results[0]["eventId"]
    assert (again[0]["balance"], again[0]["creditBalance"]) == (3, 60)
    assert Entitlement.objects.get(feature=credits).usage == 40
