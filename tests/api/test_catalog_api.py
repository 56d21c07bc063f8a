"""POST stripe/catalog/sync and GET billing/plans."""

from __future__ import annotations

import pytest
import stripe
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from kernia_billing.models import CatalogPrice, CatalogProduct
from kernia_billing.services import catalog
from tests.catalog_support import EXAMPLE_CATALOG, seed_example_stripe, table_snapshot
from tests.factories import PlanFactory, StaffFactory, UserFactory

pytestmark = pytest.mark.django_db

SYNC = reverse("kernia_billing:stripe-catalog-sync")
PLANS = reverse("kernia_billing:billing-plans")
COUNT_KEYS = {
    "productsCreated",
    "productsUpdated",
    "productsUnchanged",
    "pricesCreated",
    "pricesUpdated",
    "pricesUnchanged",
    "created",
    "updated",
    "unchanged",
    "pendingReview",
    "flagged",
}


@pytest.fixture
def api():
    return APIClient()


def test_paths_are_under_the_example_prefix():
    assert SYNC == "/api/auth/stripe/catalog/sync"
    assert PLANS == "/api/auth/billing/plans"


def test_sync_refuses_anonymous_and_non_staff(api, fake_stripe):
    seed_example_stripe(fake_stripe)

    anonymous = api.post(SYNC)
    assert anonymous.status_code in (401, 403)
    assert anonymous.json()["error"]["code"] == "not_authenticated"

    token = Token.objects.create(user=UserFactory())
    api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    as_user = api.post(SYNC)
    assert as_user.status_code == 403
    assert as_user.json()["error"]["code"] == "permission_denied"

    api.credentials(HTTP_AUTHORIZATION="Token wrong")
    bad_token = api.post(SYNC)
    assert bad_token.status_code in (401, 403)
    assert bad_token.json()["error"]["code"] == "authentication_failed"

    assert not CatalogPrice.objects.exists()
    assert not [r for r in fake_stripe.requests if r.method == "GET"]


def test_staff_sync_returns_camel_case_counts(api, fake_stripe):
    seed_example_stripe(fake_stripe)
    api.force_authenticate(StaffFactory())

    first = api.post(SYNC)
    second = api.post(SYNC)

    assert first.status_code == 200
    assert set(first.json()) == COUNT_KEYS
    assert first.json() | {} == {
        "productsCreated": 4,
        "productsUpdated": 0,
        "productsUnchanged": 0,
        "pricesCreated": 7,
        "pricesUpdated": 0,
        "pricesUnchanged": 0,
        "created": 11,
        "updated": 0,
        "unchanged": 0,
        "pendingReview": 7,
        "flagged": 0,
    }
    assert second.json()["unchanged"] == 11 and second.json()["created"] == 0
    assert CatalogProduct.objects.count() == 4


def test_sync_stripe_failure_is_a_502_in_the_error_shape(api, fake_stripe):
    seed_example_stripe(fake_stripe)
    api.force_authenticate(StaffFactory())
    api.post(SYNC)
    fake_stripe.create_product(name="Later")
    before = table_snapshot()
    fake_stripe.inject_fault("/v1/products", status=500, times=5)

    response = api.post(SYNC)

    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "stripe_error"
    assert "HTTP 500" in error["message"]
    assert table_snapshot() == before


def test_plans_is_a_public_pricing_table(api, fake_stripe, django_assert_max_num_queries):
    import json

    prices = seed_example_stripe(fake_stripe)
    catalog.sync_catalog()
    catalog.load_catalog(json.loads(EXAMPLE_CATALOG.read_text()), approve=True)
    PlanFactory(key="retired", active=False)
    stripe.Price.modify(prices["team_annual"], active=False)  # grandfathered, not offered
    catalog.sync_catalog()

    with django_assert_max_num_queries(4):
        response = api.get(PLANS)

    assert response.status_code == 200
    plans = response.json()["plans"]
    assert [p["key"] for p in plans] == ["free", "pro", "team"]
    free, pro, team = plans
    assert free["isDefault"] is True and free["prices"] == []
    assert pro["prices"] == [
        {
            "id": prices["pro_monthly"],
            "amount": 1200,
            "currency": "usd",
            "interval": "month",
            "intervalCount": 1,
            "lookupKey": "pro_monthly",
            "display": "$12.00 / month",
        },
        {
            "id": prices["pro_annual"],
            "amount": 12000,
            "currency": "usd",
            "interval": "year",
            "intervalCount": 1,
            "lookupKey": "pro_annual",
            "display": "$120.00 / year",
        },
    ]
    assert [p["lookupKey"] for p in team["prices"]] == ["team_monthly"]
    messages = next(f for f in pro["features"] if f["key"] == "messages")
    assert messages == {
        "key": "messages",
        "name": "Messages",
        "kind": "metered",
        "unit": "messages",
        "included": 10000,
        "unlimited": False,
        "resetPeriod": "month",
        "allowOverage": False,
        "includedFromQuantity": False,
    }
    seats = next(f for f in team["features"] if f["key"] == "seats")
    assert seats["includedFromQuantity"] is True


def test_plans_ignores_a_bad_session_or_token(api):
    PlanFactory(key="free")
    api.credentials(HTTP_AUTHORIZATION="Token not-a-token")
    assert api.get(PLANS).status_code == 200
    assert api.post(PLANS, {}, format="json").status_code == 405


def test_schema_documents_both_endpoints(client):
    response = client.get("/api/schema/")
    assert response.status_code == 200
    text = response.content.decode()
    assert "/api/auth/stripe/catalog/sync" in text and "/api/auth/billing/plans" in text
    assert "pendingReview" in text and "intervalCount" in text


def test_sync_needs_the_manage_permission_not_just_staff(api, fake_stripe):
    from django.contrib.auth.models import Permission

    seed_example_stripe(fake_stripe)
    staff = UserFactory(is_staff=True)
    api.force_authenticate(staff)

    refused = api.post(SYNC)

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"
    assert not CatalogPrice.objects.exists()

    staff.user_permissions.add(
        Permission.objects.get(content_type__app_label="kernia_billing", codename="manage_billing")
    )
    staff = type(staff).objects.get(pk=staff.pk)  # a fresh permission cache
    api.force_authenticate(staff)
    assert api.post(SYNC).status_code == 200
    assert CatalogPrice.objects.count() == 7
